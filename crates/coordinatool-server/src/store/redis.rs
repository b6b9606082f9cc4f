//! The Redis store, with upstream's key layout.
//!
//! * `coordinatool_requests`: field = [`field_from_key`] (48 hex characters), value = the
//!   compact JSON of the wire `hai` object (with `hal_archive_id`, `hal_flags`, `timestamp`).
//! * `coordinatool_assigned`: same field, value = the client id.
//! * `coordinatool_reports` (this project only; the C server never reads it): field = report
//!   file name, value `1`.
//! * `coordinatool_write_seq` (this project only): incremented by every write transaction.
//!   After an outage, a value other than the last one written means Redis lost acknowledged
//!   writes (restarted from an old snapshot, or empty): [`StoreHealth::needs_full_resync`] is
//!   set until the loop calls [`Store::full_resync`] with the whole queue.
//!
//! A private thread runs a current-thread tokio runtime with the async `redis` connection.
//! [`Store::commit`] merges the batch into a per-key overlay of pending changes, wakes the
//! writer and waits (bounded) for it: the writer sends the whole overlay as one pipelined
//! `MULTI`/`EXEC` transaction (`HSET`/`HDEL` with up to 1,000 fields per command). When Redis
//! is unreachable, the overlay stays in memory, coalesced per key, the writer retries with
//! backoff, and every commit returns [`CommitStatus::Buffered`] at once; when Redis returns, the
//! overlay is written (re-sync) and commits are durable again.

use super::codec::{
    KEY_LEN, field_from_key, key_bytes, key_from_field, request_from_wire, request_to_wire,
};
use super::{
    Batch, CommitStatus, CorruptEntry, Recovered, Recovery, ReportFileOp, Store, StoreError,
    StoreHealth,
};
use coordinatool_lustre::HsmAction;
use coordinatool_proto::WireHai;
use coordinatool_sched::PersistOp;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// Upstream's hash of requests.
pub const REQUESTS_HASH: &str = "coordinatool_requests";
/// Upstream's hash of assignments.
pub const ASSIGNED_HASH: &str = "coordinatool_assigned";
/// This project's hash of existing report files.
pub const REPORTS_HASH: &str = "coordinatool_reports";
/// This project's write counter: incremented by every write transaction, so that a Redis
/// that comes back with less than was acknowledged (restarted from an old snapshot, or
/// empty) is noticed.
pub const WRITE_SEQ_KEY: &str = "coordinatool_write_seq";

/// Connection settings.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one command or pipeline; past it the connection counts as lost.
    pub response_timeout: Duration,
    /// How long [`Store::commit`] waits for Redis before answering `Buffered`.
    pub commit_wait: Duration,
    /// `COUNT` of each `HSCAN` at load.
    pub scan_count: usize,
    /// Fields per `HSET`/`HDEL` command.
    pub fields_per_command: usize,
    /// Interval of the `PING` that notices a lost connection while idle.
    pub ping_interval: Duration,
}

impl RedisOptions {
    /// Default settings for `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RedisOptions {
            host: host.into(),
            port,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            commit_wait: Duration::from_secs(2),
            scan_count: 1_000,
            fields_per_command: 1_000,
            ping_interval: Duration::from_secs(1),
        }
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Pending changes of one key: outer `None` = unchanged, inner `None` = delete.
#[derive(Default, Debug)]
struct Pending {
    request: Option<Option<Vec<u8>>>,
    assigned: Option<Option<String>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<[u8; KEY_LEN], Pending>,
    reports: HashMap<String, bool>,
    submitted: u64,
    durable: u64,
    connected: bool,
    last_error: Option<String>,
    shutdown: bool,
    /// Redis lost acknowledged writes: the queue must be written again in full.
    needs_full_resync: bool,
    /// A full re-sync was requested: the next write replaces the hashes.
    resync: bool,
}

impl State {
    fn pending_keys(&self) -> usize {
        self.pending.len() + self.reports.len()
    }

    /// Puts back changes whose write failed, under anything newer.
    fn merge_back(
        &mut self,
        failed: HashMap<[u8; KEY_LEN], Pending>,
        reports: HashMap<String, bool>,
    ) {
        for (k, p) in failed {
            let cur = self.pending.entry(k).or_default();
            if cur.request.is_none() {
                cur.request = p.request;
            }
            if cur.assigned.is_none() {
                cur.assigned = p.assigned;
            }
        }
        for (k, v) in reports {
            self.reports.entry(k).or_insert(v);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    wake: Notify,
    opts: RedisOptions,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the store; keep going with the data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Redis store (see the module documentation).
pub struct RedisStore {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.shared.opts.addr())
            .finish()
    }
}

async fn connect(opts: &RedisOptions) -> Result<MultiplexedConnection, String> {
    let info = redis::ConnectionAddr::Tcp(opts.host.clone(), opts.port);
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(opts.connect_timeout))
        .set_response_timeout(Some(opts.response_timeout));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    // The connection object can exist before the server answers anything: prove it does.
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .map_err(|e| e.to_string())?;
    Ok(con)
}

/// The current value of [`WRITE_SEQ_KEY`] (0 when absent).
async fn write_seq(con: &mut MultiplexedConnection) -> Result<i64, String> {
    redis::cmd("GET")
        .arg(WRITE_SEQ_KEY)
        .query_async::<Option<i64>>(con)
        .await
        .map(|v| v.unwrap_or(0))
        .map_err(|e| format!("GET {WRITE_SEQ_KEY}: {e}"))
}

impl RedisStore {
    /// Connects to Redis. Fails if Redis cannot be reached now (upstream refuses to start
    /// in that case too); later outages are survived.
    pub fn connect(opts: RedisOptions) -> Result<Self, StoreError> {
        let addr = opts.addr();
        let fail = |message: String| StoreError::Redis {
            addr: addr.clone(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the redis runtime: {e}")))?;
        let (con, seq) = rt
            .block_on(async {
                let mut con = connect(&opts).await?;
                let seq = write_seq(&mut con).await?;
                Ok::<_, String>((con, seq))
            })
            .map_err(&fail)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                connected: true,
                ..State::default()
            }),
            cond: Condvar::new(),
            wake: Notify::new(),
            opts,
        });
        let handle = rt.handle().clone();
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coordinatool-redis".into())
            .spawn(move || rt.block_on(writer(s2, con, seq)))
            .map_err(|e| fail(format!("cannot start the redis thread: {e}")))?;
        Ok(RedisStore {
            shared,
            handle,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the store's runtime and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| StoreError::Redis {
            addr: self.shared.opts.addr(),
            message: "the redis thread stopped".into(),
        })
    }
}

impl RedisStore {
    /// Merges `batch` into the overlay (replacing it and the hashes when `replace_all`),
    /// wakes the writer and waits, bounded, for the write.
    fn submit(&mut self, batch: &Batch, replace_all: bool) -> CommitStatus {
        let mut st = self.shared.lock();
        if replace_all {
            st.pending.clear();
            st.reports.clear();
            st.resync = true;
        }
        for op in batch.ops() {
            match op {
                PersistOp::New(r) => {
                    let json = serde_json::to_vec(&request_to_wire(r))
                        .expect("a hai object always serializes");
                    st.pending.entry(key_bytes(&r.key())).or_default().request = Some(Some(json));
                }
                PersistOp::Assigned { key, client } => {
                    st.pending.entry(key_bytes(key)).or_default().assigned =
                        Some(Some(client.clone()));
                }
                PersistOp::Unassigned { key } => {
                    st.pending.entry(key_bytes(key)).or_default().assigned = Some(None);
                }
                PersistOp::Finished { key } => {
                    let p = st.pending.entry(key_bytes(key)).or_default();
                    p.request = Some(None);
                    p.assigned = Some(None);
                }
            }
        }
        for op in batch.report_ops() {
            match op {
                ReportFileOp::Track(n) => st.reports.insert(n.clone(), true),
                ReportFileOp::Untrack(n) => st.reports.insert(n.clone(), false),
            };
        }
        st.submitted += 1;
        let mine = st.submitted;
        self.shared.wake.notify_one();
        if !st.connected {
            return CommitStatus::Buffered;
        }
        let (st, _) = self
            .shared
            .cond
            .wait_timeout_while(st, self.shared.opts.commit_wait, |st| {
                st.durable < mine && st.connected
            })
            .unwrap_or_else(|p| p.into_inner());
        if st.durable >= mine {
            CommitStatus::Durable
        } else {
            CommitStatus::Buffered
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `HSCAN` page: which hash (0 requests, 1 assigned, 2 reports) and its items,
/// field and value alternating.
type Page = (u8, Vec<Vec<u8>>);

/// Fetches every page of the three hashes, in order, into `tx`. Runs on the store's
/// runtime while the caller's thread decodes, so fetching and decoding overlap.
async fn fetch_pages(opts: RedisOptions, tx: std::sync::mpsc::SyncSender<Result<Page, String>>) {
    let r = async {
        let mut con = connect(&opts).await?;
        for (i, hash) in [REQUESTS_HASH, ASSIGNED_HASH, REPORTS_HASH]
            .into_iter()
            .enumerate()
        {
            let mut cursor = "0".to_string();
            loop {
                let (next, items): (String, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(hash)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(opts.scan_count)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| format!("HSCAN {hash}: {e}"))?;
                if tx.send(Ok((i as u8, items))).is_err() {
                    return Ok(());
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = r {
        let _ = tx.send(Err(e));
    }
}

/// Builds the recovery from the pages (HSCAN may return an entry twice: de-duplicated by
/// key). Returns the stale assignment fields to delete.
fn decode_pages(
    rx: std::sync::mpsc::Receiver<Result<Page, String>>,
) -> Result<(Recovery, Vec<Vec<u8>>), String> {
    let mut out = Recovery::default();
    let mut index: HashMap<[u8; KEY_LEN], usize> = HashMap::new();
    let mut stale: Vec<Vec<u8>> = Vec::new();
    for page in rx {
        let (hash, items) = page?;
        let mut it = items.into_iter();
        while let (Some(field), Some(value)) = (it.next(), it.next()) {
            match hash {
                0 => decode_request(&mut out, &mut index, field, &value),
                1 => {
                    let slot =
                        key_from_field(&field).and_then(|k| index.get(&key_bytes(&k)).copied());
                    match (slot, String::from_utf8(value)) {
                        (Some(i), Ok(client)) => out.requests[i].assigned = Some(client),
                        (Some(_), Err(_)) => out.corrupt.push(CorruptEntry {
                            table: ASSIGNED_HASH,
                            key: String::from_utf8_lossy(&field).into_owned(),
                            reason: "client id is not UTF-8: request left unassigned".into(),
                        }),
                        (None, _) => stale.push(field),
                    }
                }
                _ => {
                    if let Ok(name) = String::from_utf8(field) {
                        out.report_files.push(name);
                    }
                }
            }
        }
    }
    stale.sort();
    stale.dedup();
    out.report_files.sort();
    out.report_files.dedup();
    out.stale_assignments = stale.len();
    Ok((out, stale))
}

fn decode_request(
    out: &mut Recovery,
    index: &mut HashMap<[u8; KEY_LEN], usize>,
    field: Vec<u8>,
    value: &[u8],
) {
    let shown = || String::from_utf8_lossy(&field).into_owned();
    let Some(key) = key_from_field(&field) else {
        out.corrupt.push(CorruptEntry {
            table: REQUESTS_HASH,
            key: shown(),
            reason: "field is not 48 hex characters".into(),
        });
        return;
    };
    let kb = key_bytes(&key);
    if index.contains_key(&kb) {
        return;
    }
    let reason = match serde_json::from_slice::<WireHai>(value) {
        Err(e) => format!("invalid JSON hai: {e}"),
        Ok(w)
            if !matches!(
                w.action,
                HsmAction::Archive | HsmAction::Restore | HsmAction::Remove
            ) =>
        {
            format!("action {} cannot be queued", w.action.code())
        }
        Ok(w) if w.archive_id == 0 => "hal_archive_id is 0".into(),
        Ok(w) if w.cookie != key.cookie || w.dfid != key.dfid => {
            "the value's cookie and dfid do not match the field".into()
        }
        Ok(w) => {
            index.insert(kb, out.requests.len());
            out.requests.push(Recovered {
                request: request_from_wire(w),
                assigned: None,
            });
            return;
        }
    };
    out.corrupt.push(CorruptEntry {
        table: REQUESTS_HASH,
        key: shown(),
        reason,
    });
}

async fn delete_fields(
    opts: RedisOptions,
    hash: &'static str,
    fields: Vec<Vec<u8>>,
) -> Result<(), String> {
    let mut con = connect(&opts).await?;
    for chunk in fields.chunks(opts.fields_per_command) {
        redis::cmd("HDEL")
            .arg(hash)
            .arg(chunk)
            .exec_async(&mut con)
            .await
            .map_err(|e| format!("HDEL {hash}: {e}"))?;
    }
    Ok(())
}

fn build_pipeline(
    pending: &HashMap<[u8; KEY_LEN], Pending>,
    reports: &HashMap<String, bool>,
    per_cmd: usize,
    replace_all: bool,
) -> redis::Pipeline {
    let mut req_set: Vec<(String, &[u8])> = Vec::new();
    let mut req_del: Vec<String> = Vec::new();
    let mut asg_set: Vec<(String, &str)> = Vec::new();
    let mut asg_del: Vec<String> = Vec::new();
    for (k, p) in pending {
        let field = || field_from_key(&super::codec::key_from_bytes(k));
        match &p.request {
            Some(Some(v)) => req_set.push((field(), v)),
            Some(None) => req_del.push(field()),
            None => {}
        }
        match &p.assigned {
            Some(Some(c)) => asg_set.push((field(), c)),
            Some(None) => asg_del.push(field()),
            None => {}
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    if replace_all {
        pipe.cmd("DEL")
            .arg(REQUESTS_HASH)
            .arg(ASSIGNED_HASH)
            .arg(REPORTS_HASH)
            .ignore();
    }
    for c in req_set.chunks(per_cmd) {
        pipe.cmd("HSET").arg(REQUESTS_HASH).arg(c).ignore();
    }
    for c in asg_set.chunks(per_cmd) {
        pipe.cmd("HSET").arg(ASSIGNED_HASH).arg(c).ignore();
    }
    for (hash, del) in [(REQUESTS_HASH, &req_del), (ASSIGNED_HASH, &asg_del)] {
        for c in del.chunks(per_cmd) {
            pipe.cmd("HDEL").arg(hash).arg(c).ignore();
        }
    }
    let (rep_set, rep_del): (Vec<_>, Vec<_>) = reports.iter().partition(|(_, t)| **t);
    for c in rep_set.chunks(per_cmd) {
        let pairs: Vec<(&str, u8)> = c.iter().map(|(n, _)| (n.as_str(), 1)).collect();
        pipe.cmd("HSET").arg(REPORTS_HASH).arg(pairs).ignore();
    }
    for c in rep_del.chunks(per_cmd) {
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        pipe.cmd("HDEL").arg(REPORTS_HASH).arg(names).ignore();
    }
    pipe.cmd("INCR").arg(WRITE_SEQ_KEY);
    pipe
}

/// The writer task: flushes the overlay, detects outages, reconnects, re-syncs.
async fn writer(shared: Arc<Shared>, con: MultiplexedConnection, seq: i64) {
    let opts = shared.opts.clone();
    let addr = opts.addr();
    let mut con = Some(con);
    // Last value of WRITE_SEQ_KEY this process wrote or accepted.
    let mut acked = seq;
    let mut backoff = Duration::from_millis(50);
    loop {
        let (pending, reports, seq, shutdown, replace_all) = {
            let mut st = shared.lock();
            let replace_all = std::mem::take(&mut st.resync);
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.reports),
                st.submitted,
                st.shutdown,
                replace_all,
            )
        };
        if pending.is_empty() && reports.is_empty() && !replace_all {
            {
                let mut st = shared.lock();
                st.durable = st.durable.max(seq);
            }
            shared.cond.notify_all();
            if shutdown {
                return;
            }
            let woken = tokio::time::timeout(opts.ping_interval, shared.wake.notified()).await;
            if woken.is_err() {
                // Idle: check that Redis is still there, so status tells the truth.
                let alive = match con.as_mut() {
                    Some(c) => redis::cmd("PING")
                        .query_async::<String>(c)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    None => reconnect(&shared, &opts, &addr, acked).await.map(|c| {
                        con = Some(c);
                    }),
                };
                set_connected(&shared, &addr, alive.err(), 0);
                if !shared.lock().connected {
                    con = None;
                }
            }
            continue;
        }
        let n = pending.len() + reports.len();
        let give_back = |pending, reports| {
            let mut st = shared.lock();
            st.merge_back(pending, reports);
            st.resync |= replace_all;
        };
        if con.is_none() {
            match reconnect(&shared, &opts, &addr, acked).await {
                Ok(c) => con = Some(c),
                Err(e) => {
                    give_back(pending, reports);
                    set_connected(&shared, &addr, Some(e), 0);
                    if shutdown {
                        error!(%addr, keys = n, "redis unreachable at shutdown: buffered changes are lost");
                        shared.cond.notify_all();
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let pipe = build_pipeline(&pending, &reports, opts.fields_per_command, replace_all);
        let c = con.as_mut().expect("connected above");
        match pipe.query_async::<Vec<i64>>(c).await {
            Ok(v) => {
                backoff = Duration::from_millis(50);
                acked = v.last().copied().unwrap_or(acked);
                let was = {
                    let mut st = shared.lock();
                    st.durable = st.durable.max(seq);
                    if replace_all {
                        st.needs_full_resync = false;
                        warn!(%addr, keys = n, "redis fully re-synced");
                    }
                    st.connected
                };
                set_connected(&shared, &addr, None, if was { 0 } else { n });
            }
            Err(e) => {
                con = None;
                give_back(pending, reports);
                set_connected(&shared, &addr, Some(e.to_string()), 0);
                if shutdown {
                    error!(%addr, keys = n, "redis write failed at shutdown: buffered changes are lost");
                    shared.cond.notify_all();
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Connects again after an outage and checks that Redis still has every acknowledged
/// write; if not, flags that a full re-sync is needed.
async fn reconnect(
    shared: &Shared,
    opts: &RedisOptions,
    addr: &str,
    acked: i64,
) -> Result<MultiplexedConnection, String> {
    let mut c = connect(opts).await?;
    let found = write_seq(&mut c).await?;
    if found != acked {
        error!(
            %addr, found, expected = acked,
            "redis came back without some acknowledged writes: a full re-sync is needed"
        );
        shared.lock().needs_full_resync = true;
    }
    Ok(c)
}

fn set_connected(shared: &Shared, addr: &str, err: Option<String>, resynced: usize) {
    {
        let mut st = shared.lock();
        match err {
            Some(e) => {
                if st.connected {
                    error!(%addr, error = %e, "redis connection lost: buffering writes until it returns");
                }
                st.connected = false;
                st.last_error = Some(e);
            }
            None => {
                if !st.connected {
                    warn!(%addr, resynced_keys = resynced, "redis is back: buffered writes re-synced");
                }
                st.connected = true;
                st.last_error = None;
            }
        }
    }
    shared.cond.notify_all();
}

impl Store for RedisStore {
    fn load(&mut self) -> Result<Recovery, StoreError> {
        let opts = self.shared.opts.clone();
        let fail = |message| StoreError::Redis {
            addr: opts.addr(),
            message,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        self.handle.spawn(fetch_pages(opts.clone(), tx));
        let (r, stale) = decode_pages(rx).map_err(fail)?;
        if !stale.is_empty() {
            self.run(delete_fields(opts.clone(), ASSIGNED_HASH, stale))?
                .map_err(fail)?;
        }
        info!(
            requests = r.requests.len(),
            corrupt = r.corrupt.len(),
            stale_assignments = r.stale_assignments,
            "loaded from redis"
        );
        Ok(r)
    }

    fn commit(&mut self, batch: &Batch) -> Result<CommitStatus, StoreError> {
        if batch.is_empty() {
            return Ok(CommitStatus::Durable);
        }
        Ok(self.submit(batch, false))
    }

    fn full_resync(&mut self, snapshot: &Batch) -> Result<CommitStatus, StoreError> {
        Ok(self.submit(snapshot, true))
    }

    fn health(&self) -> StoreHealth {
        let st = self.shared.lock();
        StoreHealth {
            backend: "redis",
            connected: st.connected,
            pending_keys: st.pending_keys(),
            last_error: st.last_error.clone(),
            needs_full_resync: st.needs_full_resync,
        }
    }
}

#[cfg(test)]
mod tests;
