//! File owners for fair share by `uid`, `gid` or `projid` (`fair_share_key`): Lustre's
//! action items carry only fids, so the owner is looked up when a request comes in
//! (`llapi_fid2path`, then `lstat`, and for the project id `FS_IOC_FSGETXATTR` on the file).
//! Only done when the fair-share key needs it. Requests whose file cannot be looked up
//! (removed meanwhile, or a `remove` whose file is gone) get no owner and share one bucket.
//!
//! # Off the event loop
//!
//! A lookup is one or two metadata round trips; a slow or hung MDS must not stall the loop
//! (and with it every mover and client). [`Owners`] runs lookups on tokio's blocking pool, at
//! most [`MAX_LOOKUPS`] tasks at a time, each taking a chunk of fids, and caches the results
//! by fid: at most [`CACHE_SIZE`] entries (two generations: a full generation is dropped
//! whole, an entry found in the old one moves to the new one, so what is used stays), each
//! trusted for [`CACHE_TTL`] (a `chown` is seen after that). Failures are not cached: a file
//! not there yet or a transient error gets a new lookup next time. The same fid asked for
//! while its lookup runs waits for that lookup instead of starting another.
//!
//! # Held until known, not enqueued under a default share
//!
//! A request whose owner is not known yet is held here, out of the engine, and given to it
//! once the lookup ends. The alternative, enqueueing it at once under a default share key and
//! moving it when the owner is known, was rejected:
//!
//! * the engine has no way to move a queued request to another share, and a request queued
//!   under the default share could be dispatched under it meanwhile: the fair share would be
//!   wrong exactly when the MDS is slow, which is when queues are long;
//! * a held request is nowhere else: not in the engine, not in the store, in no reply. It
//!   enters the engine once, so it cannot be doubled, and the order "durable before
//!   acknowledged" is the engine's as for any request: a client's `queue` is answered in the
//!   turn its items enter the engine, after that turn's commit; Lustre's requests are not
//!   begun before then. A held request lost by a crash is in the same state as one taken from
//!   Lustre in the turn of the crash, before its commit (Lustre still has it as started);
//! * order is kept: what is held (a Lustre list's requests, a cancel from Lustre, a client's
//!   `queue`, the queue recovered from Redis) leaves in the order it came, so a cancel never
//!   overtakes its request and arrival order within a share holds. A connection whose `queue`
//!   is held has its later input held too ([`Owners::defer`]), so its replies stay in order.
//!
//! The price is head-of-line waiting: a slow lookup delays what came after it, while the loop
//! goes on serving movers and clients (`recv`, `done`, `status`). With every owner in the
//! cache and nothing held, a request goes to the engine at once, in the same turn.
//!
//! At start, the queue recovered from Redis (whose records are upstream's, without owners)
//! goes through the same lookups, in parallel, before the server listens; the embedded store
//! keeps owners. At a clean stop, what is held is waited for (a bounded time) so it is
//! committed with the last turn.

use super::conn::Event;
use crate::config::{FairShareKey, ServerConfig};
use coordinatool_lustre::{LuFid, Lustreapi};
use coordinatool_sched::{ClientId, Owner, Request};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Lookup tasks running at once on the blocking pool. Parallel lookups hide a slow MDS's
/// latency; more threads than this cost CPU (wake-ups, contention) on a small server when the
/// MDS is fast (measured with the simulated Lustre: bench-serverrobust.md).
pub(crate) const MAX_LOOKUPS: usize = 4;

/// Most fids one lookup task takes (fewer when there are free task slots to spread them over).
const CHUNK: usize = 64;

/// Fewest fids one lookup task takes when there are more: a task costs the loop a hand-off
/// to the blocking pool and a wake-up for its results, more than a fast lookup.
const MIN_CHUNK: usize = 16;

/// How long a looked-up owner is trusted.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(60);

/// Most owners cached.
pub(crate) const CACHE_SIZE: usize = 65_536;

/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
/// How long start-up waits without any owner lookup finishing before it gives up on the
/// rest (see [`Owners::resolve`]): well inside systemd's default start timeout (90 s).
pub(crate) const RECOVERY_LOOKUP_STALL: Duration = Duration::from_secs(30);

const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// Finds the owner of a fid's file (blocking; runs on the blocking pool).
pub(crate) type LookupFn = Arc<dyn Fn(&LuFid) -> Result<Owner, String> + Send + Sync>;

/// What lookup tasks send back: each fid with its owner or why there is none.
pub(crate) type Results = Vec<(LuFid, Result<Owner, String>)>;

/// What to do with held requests once every owner is known.
#[derive(Debug)]
pub(crate) enum Then {
    /// New requests from a Lustre action list.
    Lustre,
    /// A cancel from Lustre (no requests of its own): after what came before it.
    Cancel(Request),
    /// A client's `queue` command: queue the items and answer it.
    Queue(ClientId),
}

/// Requests waiting for owners.
struct Held {
    requests: Vec<Request>,
    /// How many of `requests` still wait for their lookup.
    missing: usize,
    then: Then,
}

/// Owner lookups off the loop, their cache, and the requests waiting for them.
pub(crate) struct Owners {
    lookup: LookupFn,
    cache: Cache,
    /// Fids being looked up or waiting for a task, with the held requests (entry sequence
    /// number, index) that wait for each.
    waiters: HashMap<LuFid, Vec<(u64, u32)>>,
    /// Fids waiting for a free task.
    todo: VecDeque<LuFid>,
    /// Lookup tasks running.
    running: usize,
    tx: mpsc::UnboundedSender<Results>,
    rx: mpsc::UnboundedReceiver<Results>,
    held: VecDeque<Held>,
    /// Sequence number of `held[0]`.
    first: u64,
    /// Input of connections whose `queue` is held, in arrival order (see [`Owners::defer`]).
    deferred: HashMap<ClientId, Deferred>,
    failures: u64,
    lookups: u64,
    /// The loop is giving ready entries to the engine (see [`Owners::begin_release`]).
    releasing: bool,
}

/// The connection an event is from.
/// Requests a connection may send behind its held `queue` before it is dropped: its input
/// is not read into the engine meanwhile, so without a bound a client talking to a slow MDS
/// could grow the server's memory without limit (about the size of the reply buffer bound,
/// `OUTBOX_LIMIT`, at a few hundred bytes per parsed request).
pub(crate) const MAX_DEFERRED_REQUESTS: usize = 65_536;

/// Input of one connection waiting behind its held `queue`.
#[derive(Default)]
struct Deferred {
    events: VecDeque<Event>,
    /// Requests in `events` (a malformed input or a close counts as one).
    requests: usize,
}

pub(crate) fn client_of(ev: &Event) -> ClientId {
    match ev {
        Event::Requests(id, _) | Event::Malformed(id, _) | Event::Closed { id, .. } => *id,
    }
}

impl Owners {
    /// Lookups on `cfg`'s mount when its fair share needs owners, else `None`.
    pub(crate) fn for_config(cfg: &ServerConfig, api: &'static Lustreapi) -> Option<Self> {
        let projid = match cfg.sched.fair_share_key.as_ref()? {
            FairShareKey::Uid | FairShareKey::Gid => false,
            FairShareKey::ProjId => true,
            FairShareKey::ArchiveId | FairShareKey::DataTag(_) => return None,
        };
        let mnt = cfg.mount_point.clone();
        Some(Self::with_lookup(Arc::new(move |fid: &LuFid| {
            lookup(api, &mnt, fid, projid)
        })))
    }

    /// Lookups done by `lookup`.
    pub(crate) fn with_lookup(lookup: LookupFn) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Owners {
            lookup,
            cache: Cache::default(),
            waiters: HashMap::new(),
            todo: VecDeque::new(),
            running: 0,
            tx,
            rx,
            held: VecDeque::new(),
            first: 0,
            deferred: HashMap::new(),
            failures: 0,
            lookups: 0,
            releasing: false,
        }
    }

    /// Holds `requests` until every owner is known (from the cache at once when it can),
    /// starting the lookups needed. A `queue` also holds its connection's later input.
    /// Must run inside the tokio runtime.
    pub(crate) fn hold(&mut self, mut requests: Vec<Request>, then: Then) {
        let seq = self.first + self.held.len() as u64;
        let now = Instant::now();
        let mut missing = 0;
        for (i, r) in requests.iter_mut().enumerate() {
            if r.owner.is_some() {
                continue;
            }
            if let Some(o) = self.cache.get(&r.fid, now) {
                r.owner = Some(o);
                continue;
            }
            missing += 1;
            let i = u32::try_from(i).expect("fewer than 2^32 requests at once");
            match self.waiters.entry(r.fid) {
                Entry::Occupied(mut e) => e.get_mut().push((seq, i)),
                Entry::Vacant(e) => {
                    e.insert(vec![(seq, i)]);
                    self.todo.push_back(r.fid);
                }
            }
        }
        if let Then::Queue(id) = &then {
            self.deferred.entry(*id).or_default();
        }
        self.held.push_back(Held {
            requests,
            missing,
            then,
        });
        self.start_lookups();
    }

    /// True when nothing is held.
    pub(crate) fn is_idle(&self) -> bool {
        self.held.is_empty()
    }

    /// Requests held, waiting for their owner or for what came before them.
    pub(crate) fn held_requests(&self) -> usize {
        self.held.iter().map(|h| h.requests.len()).sum()
    }

    /// Lookups started so far (fids sent to the lookup function).
    #[cfg(test)]
    pub(crate) fn lookups(&self) -> u64 {
        self.lookups
    }

    /// The oldest held entry, once every owner in it is known.
    pub(crate) fn ready(&mut self) -> Option<(Vec<Request>, Then)> {
        if self.held.front()?.missing > 0 {
            return None;
        }
        let h = self.held.pop_front()?;
        self.first += 1;
        Some((h.requests, h.then))
    }

    /// The next lookup results (never returns while no lookup runs).
    pub(crate) async fn next(&mut self) -> Results {
        match self.rx.recv().await {
            Some(r) => r,
            // `self` holds a sender: the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Takes a task's results: caches them, gives the held requests their owner, and starts
    /// the lookups waiting for a free task.
    pub(crate) fn apply(&mut self, results: Results) {
        self.running = self.running.saturating_sub(1);
        let now = Instant::now();
        for (fid, r) in results {
            let owner = match r {
                Ok(o) => {
                    self.cache.insert(fid, o, now);
                    Some(o)
                }
                Err(e) => {
                    self.failures += 1;
                    // The first failure and then every 1000th, so a flood of removes of
                    // deleted files does not flood the log.
                    if self.failures % 1000 == 1 {
                        warn!(%fid, failures = self.failures, "file owner for fair share: {e}");
                    } else {
                        debug!(%fid, "file owner for fair share: {e}");
                    }
                    None
                }
            };
            for (seq, i) in self.waiters.remove(&fid).unwrap_or_default() {
                // An entry given up by `resolve` is gone: its seq is below `first`.
                let Some(h) = seq
                    .checked_sub(self.first)
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| self.held.get_mut(k))
                else {
                    continue;
                };
                h.requests[i as usize].owner = owner;
                h.missing -= 1;
            }
        }
        self.start_lookups();
    }

    /// `requests` with their owners looked up (start-up: the queue recovered from Redis),
    /// in their order. Nothing else may be held.
    ///
    /// The server does not listen before this returns, so a hung MDS must not keep it from
    /// starting: once no lookup has finished for `stall`, the requests still waiting go on
    /// without an owner (the shared bucket, as for a failed lookup). Lookups still running
    /// then only fill the cache.
    pub(crate) async fn resolve(
        &mut self,
        requests: Vec<Request>,
        stall: Duration,
    ) -> Vec<Request> {
        debug_assert!(self.is_idle(), "resolve with held requests");
        self.hold(requests, Then::Lustre);
        loop {
            if let Some((requests, _)) = self.ready() {
                return requests;
            }
            match tokio::time::timeout(stall, self.next()).await {
                Ok(r) => self.apply(r),
                Err(_) => {
                    let h = self.held.pop_front().expect("held until ready");
                    self.first += 1;
                    warn!(
                        requests = h.missing,
                        "file owner lookups stalled for {stall:?} at start-up: those requests \
                         are scheduled without an owner (fair share's shared bucket)"
                    );
                    // Nothing else is held: every waiter was this entry's.
                    self.waiters.clear();
                    self.todo.clear();
                    return h.requests;
                }
            }
        }
    }

    /// Starts giving ready entries to the engine: false when that is already under way (the
    /// input it replays can hold and release again; the outer call takes it).
    pub(crate) fn begin_release(&mut self) -> bool {
        !std::mem::replace(&mut self.releasing, true)
    }

    /// Ends what [`Owners::begin_release`] began.
    pub(crate) fn end_release(&mut self) {
        self.releasing = false;
    }

    /// True when `id`'s input waits behind its held `queue`: new input of that connection
    /// goes to [`Owners::defer`].
    pub(crate) fn is_deferred(&self, id: ClientId) -> bool {
        self.deferred.contains_key(&id)
    }

    /// Keeps `ev` of a connection whose `queue` is held, to be handled after it. Returns how
    /// many requests that connection now has waiting (the loop bounds it with
    /// [`MAX_DEFERRED_REQUESTS`]).
    pub(crate) fn defer(&mut self, id: ClientId, ev: Event) -> usize {
        let d = self.deferred.entry(id).or_default();
        d.requests += match &ev {
            Event::Requests(_, r) => r.len(),
            Event::Malformed(..) | Event::Closed { .. } => 1,
        };
        d.events.push_back(ev);
        d.requests
    }

    /// The input `id` sent while its `queue` was held (its `queue` is answered now, or the
    /// connection is gone).
    pub(crate) fn undefer(&mut self, id: ClientId) -> VecDeque<Event> {
        self.deferred
            .remove(&id)
            .map(|d| d.events)
            .unwrap_or_default()
    }

    fn start_lookups(&mut self) {
        while self.running < MAX_LOOKUPS && !self.todo.is_empty() {
            let free = MAX_LOOKUPS - self.running;
            let n = self
                .todo
                .len()
                .div_ceil(free)
                .clamp(MIN_CHUNK, CHUNK)
                .min(self.todo.len());
            let chunk: Vec<LuFid> = self.todo.drain(..n).collect();
            self.running += 1;
            self.lookups += chunk.len() as u64;
            let f = Arc::clone(&self.lookup);
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || {
                let results = chunk
                    .into_iter()
                    .map(|fid| {
                        let start = Instant::now();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&fid)))
                            .unwrap_or_else(|_| Err("the owner lookup panicked".to_owned()));
                        slow_lookup(&fid, start.elapsed());
                        (fid, r)
                    })
                    .collect();
                // The loop owns the receiver; it is gone only when the server is.
                let _ = tx.send(results);
            });
        }
    }
}

/// A lookup taking this long is logged: the MDS is slow, and new requests wait for it.
const SLOW_LOOKUP: Duration = Duration::from_secs(1);

/// Warns about a lookup that took `took` (at most one warning every [`SLOW_WARN_EVERY`] for
/// the whole server, so a hung MDS does not flood the log).
fn slow_lookup(fid: &LuFid, took: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    if took < SLOW_LOOKUP {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + SLOW_WARN_EVERY.as_secs()
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(
            %fid,
            took_ms = took.as_millis() as u64,
            "slow file owner lookup (fair share): new requests wait for their owner"
        );
    }
}

/// Least time between two slow-lookup warnings.
const SLOW_WARN_EVERY: Duration = Duration::from_secs(60);

/// Owners by fid: two generations of at most [`CACHE_SIZE`]` / 2` entries each.
#[derive(Default)]
struct Cache {
    new: HashMap<LuFid, (Owner, Instant)>,
    old: HashMap<LuFid, (Owner, Instant)>,
}

impl Cache {
    fn get(&mut self, fid: &LuFid, now: Instant) -> Option<Owner> {
        let fresh = |at: Instant| now.saturating_duration_since(at) < CACHE_TTL;
        if let Some(&(o, at)) = self.new.get(fid) {
            return fresh(at).then_some(o);
        }
        let (o, at) = self.old.remove(fid)?;
        if !fresh(at) {
            return None;
        }
        self.insert(*fid, o, at);
        Some(o)
    }

    fn insert(&mut self, fid: LuFid, o: Owner, at: Instant) {
        if self.new.len() >= CACHE_SIZE / 2 && !self.new.contains_key(&fid) {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(fid, (o, at));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

fn lookup(api: &Lustreapi, mnt: &Path, fid: &LuFid, projid: bool) -> Result<Owner, String> {
    let rel = api.fid2path(mnt, fid).map_err(|e| e.to_string())?;
    let path = mnt.join(rel);
    let md = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut owner = Owner {
        uid: md.uid(),
        gid: md.gid(),
        projid: 0,
    };
    if projid && (md.is_file() || md.is_dir()) {
        owner.projid = project_id(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(owner)
}

/// The project id of `path` (`FS_IOC_FSGETXATTR`).
fn project_id(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut x = FsXattr::default();
    // SAFETY: the fd is open for the call's duration; `x` has the kernel's fsxattr layout
    // and size (28 bytes), which the request number encodes.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            FS_IOC_FSGETXATTR as _,
            &mut x as *mut FsXattr,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(x.projid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::request;
    use coordinatool_lustre::HsmAction;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The owner the test lookups give: uid = the fid's oid + 1000.
    fn owner_of(fid: &LuFid) -> Owner {
        Owner {
            uid: fid.oid + 1000,
            gid: 7,
            projid: 0,
        }
    }

    fn counting(calls: &Arc<AtomicUsize>) -> LookupFn {
        let calls = Arc::clone(calls);
        Arc::new(move |fid: &LuFid| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(owner_of(fid))
        })
    }

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// A lookup whose call for fid `oid` waits until [`open_gate`]; the others answer at once.
    fn gated(oid: u32) -> (LookupFn, Gate) {
        let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = Arc::clone(&gate);
        let lookup: LookupFn = Arc::new(move |fid: &LuFid| {
            if fid.oid == oid {
                let (open, cv) = &*g;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            Ok(owner_of(fid))
        });
        (lookup, gate)
    }

    fn open_gate(gate: &Gate) {
        let (open, cv) = &**gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Takes results until the oldest entry is ready.
    async fn next_ready(o: &mut Owners) -> (Vec<Request>, Then) {
        loop {
            if let Some(r) = o.ready() {
                return r;
            }
            let r = o.next().await;
            o.apply(r);
        }
    }

    fn uids(rs: &[Request]) -> Vec<Option<u32>> {
        rs.iter().map(|r| r.owner.map(|o| o.uid)).collect()
    }

    #[test]
    fn a_cached_owner_needs_no_second_lookup() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut o = Owners::with_lookup(counting(&calls));
        let rt = rt();
        rt.block_on(async {
            let a = request(1, HsmAction::Archive, b"");
            let b = request(2, HsmAction::Archive, b"");
            // The same fid twice in one list: one lookup.
            o.hold(vec![a.clone(), b.clone(), a.clone()], Then::Lustre);
            assert!(o.ready().is_none(), "owners not known yet");
            let (got, then) = next_ready(&mut o).await;
            assert!(matches!(then, Then::Lustre));
            assert_eq!(uids(&got), vec![Some(1001), Some(1002), Some(1001)]);
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            // Known now: ready at once, no lookup.
            o.hold(vec![b.clone(), a.clone()], Then::Lustre);
            let (got, _) = o.ready().expect("from the cache, at once");
            assert_eq!(uids(&got), vec![Some(1002), Some(1001)]);
            assert_eq!(calls.load(Ordering::SeqCst), 2);
            assert_eq!(o.lookups(), 2);
            assert!(o.is_idle());
        });
    }

    #[test]
    fn held_entries_leave_in_arrival_order_behind_a_slow_lookup() {
        // Fid 1's lookup waits for the gate; the others answer at once.
        let (lookup, gate) = gated(1);
        let mut o = Owners::with_lookup(lookup);
        let client = {
            let mut e = coordinatool_sched::Engine::new(coordinatool_sched::Config::default())
                .expect("engine");
            e.connect("c:1", coordinatool_sched::Time(1))
        };
        rt().block_on(async {
            o.hold(vec![request(1, HsmAction::Archive, b"")], Then::Lustre);
            o.hold(
                vec![request(2, HsmAction::Archive, b"")],
                Then::Queue(client),
            );
            o.hold(Vec::new(), Then::Cancel(request(1, HsmAction::Cancel, b"")));
            assert!(
                o.is_deferred(client),
                "a held queue holds its connection's input"
            );
            assert_eq!(o.held_requests(), 2);
            // Fid 2's answer comes first, but the head still waits.
            let r = o.next().await;
            assert_eq!(r[0].0.oid, 2);
            o.apply(r);
            assert!(o.ready().is_none(), "nothing overtakes the head");
            open_gate(&gate);
            let (got, then) = next_ready(&mut o).await;
            assert!(matches!(then, Then::Lustre));
            assert_eq!(uids(&got), vec![Some(1001)]);
            let (got, then) = o.ready().expect("the queue, known already");
            assert!(matches!(then, Then::Queue(c) if c == client));
            assert_eq!(uids(&got), vec![Some(1002)]);
            let (got, then) = o.ready().expect("the cancel, after both");
            assert!(got.is_empty());
            assert!(matches!(then, Then::Cancel(c) if c.cookie == 1));
            assert!(o.is_idle());
            assert!(o.undefer(client).is_empty());
            assert!(!o.is_deferred(client));
        });
    }

    #[test]
    fn start_up_lookups_that_stall_give_up_and_keep_every_request_in_order() {
        // Fid 2's lookup hangs (until the end of the test); the others answer at once.
        let (lookup, gate) = gated(2);
        let mut o = Owners::with_lookup(lookup);
        let rt = rt();
        let reqs: Vec<Request> = (1..=3)
            .map(|c| request(c, HsmAction::Archive, b""))
            .collect();
        let got = rt.block_on(o.resolve(reqs.clone(), Duration::from_millis(200)));
        let cookies: Vec<u64> = got.iter().map(|r| r.cookie).collect();
        assert_eq!(cookies, vec![1, 2, 3], "every request, in order");
        assert_eq!(got[1].owner, None, "the stalled one has no owner");
        assert!(o.is_idle());
        // The hung lookup ends later: it only fills the cache.
        open_gate(&gate);
        rt.block_on(async {
            let r = o.next().await;
            o.apply(r);
            o.hold(vec![reqs[1].clone()], Then::Lustre);
            let (got, _) = o.ready().expect("from the cache");
            assert_eq!(uids(&got), vec![Some(1002)]);
        });
    }

    #[test]
    fn a_failed_lookup_gives_no_owner_and_is_not_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let lookup: LookupFn = Arc::new(move |fid: &LuFid| {
            c.fetch_add(1, Ordering::SeqCst);
            match fid.oid {
                3 => Err("no such file".to_owned()),
                4 => panic!("lookup bug"),
                _ => Ok(owner_of(fid)),
            }
        });
        let mut o = Owners::with_lookup(lookup);
        rt().block_on(async {
            let reqs = vec![
                request(3, HsmAction::Remove, b""),
                request(4, HsmAction::Archive, b""),
                request(5, HsmAction::Archive, b""),
            ];
            o.hold(reqs.clone(), Then::Lustre);
            let (got, _) = next_ready(&mut o).await;
            assert_eq!(uids(&got), vec![None, None, Some(1005)]);
            o.hold(reqs, Then::Lustre);
            let (got, _) = next_ready(&mut o).await;
            assert_eq!(uids(&got), vec![None, None, Some(1005)]);
            assert_eq!(calls.load(Ordering::SeqCst), 5, "failures looked up again");
        });
    }

    #[test]
    fn many_lookups_run_at_most_max_lookups_tasks_and_all_end() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut o = Owners::with_lookup(counting(&calls));
        rt().block_on(async {
            let n = 1000u64;
            let reqs: Vec<Request> = (1..=n)
                .map(|c| request(c, HsmAction::Archive, b""))
                .collect();
            o.hold(reqs, Then::Lustre);
            assert!(o.running <= MAX_LOOKUPS);
            let (got, _) = next_ready(&mut o).await;
            assert_eq!(got.len(), n as usize);
            for r in &got {
                assert_eq!(r.owner, Some(owner_of(&r.fid)));
            }
            assert_eq!(calls.load(Ordering::SeqCst), n as usize);
            assert_eq!(o.running, 0);
        });
    }

    #[test]
    fn the_cache_is_bounded_keeps_what_is_used_and_expires() {
        let now = Instant::now();
        let fid = |n: u32| LuFid::new(0x2_0000_0401, n, 0);
        let own = Owner::default();
        let mut c = Cache::default();
        c.insert(fid(0), own, now);
        for n in 1..(CACHE_SIZE / 2) as u32 {
            c.insert(fid(n), own, now);
        }
        // A full generation: the next insert makes it the old one.
        c.insert(fid(1_000_000), own, now);
        assert!(c.old.contains_key(&fid(0)));
        // Used: moves to the new generation and survives the next rotation.
        assert_eq!(c.get(&fid(0), now), Some(own));
        for n in 2_000_000..2_000_000 + (CACHE_SIZE / 2) as u32 {
            c.insert(fid(n), own, now);
        }
        assert!(c.len() <= CACHE_SIZE, "{}", c.len());
        assert_eq!(c.get(&fid(0), now), Some(own));
        assert_eq!(c.get(&fid(1), now), None, "unused: dropped");
        assert_eq!(c.get(&fid(0), now + CACHE_TTL), None, "expired");
    }

    #[test]
    fn fsxattr_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!((FS_IOC_FSGETXATTR >> 16) & 0x3fff, 28);
    }
}
