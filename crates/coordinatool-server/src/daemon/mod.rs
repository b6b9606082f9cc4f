//! The event loop: a thin tokio shell around the [`coordinatool_sched::Engine`].
//!
//! One current-thread runtime. The loop task owns the engine, the store, the copytool
//! registration and the report files; each TCP connection has a reader task (framing with
//! [`coordinatool_proto::Decoder`]) and a writer task, which exchange messages with the loop
//! over channels and never touch the engine.
//!
//! One turn of the loop: wait for one input (Lustre's copytool fd readable, a connection
//! event, a new connection, the engine timer, the reporting tick, a signal), take every other
//! connection event already queued too, then
//!
//! 1. drain the engine's actions: store changes go into one [`Batch`], report events to the
//!    [`Reporter`], cancels to Lustre (`action_begin(is_error)` + `action_end(ECANCELED)`),
//!    replies and deliveries into an outbox;
//! 2. commit the batch once (group commit, on a blocking thread so connections keep being
//!    read meanwhile);
//! 3. only then write the report lines and send the outbox, so no reply announces a change
//!    that a crash could still lose.
//!
//! Malformed input (invalid JSON, unknown command, a key of the wrong type) is answered with
//! an error reply (`status` 22, the decoder's message) and that connection alone is closed
//! once the reply is written; upstream closed it too (§2.1), without a reply. A client that
//! leaves more than [`OUTBOX_LIMIT`] bytes of replies unread, or whose
//! socket accepts nothing for [`WRITE_STALL`], is disconnected; TCP
//! keepalive finds dead peers. A dropped named client keeps its work for the grace period.
//!
//! SIGTERM, SIGINT and SIGQUIT stop the loop after the current turn's commit: assignments
//! stay in the store (upstream wiped them), so after a restart every request is queued again
//! or still assigned to its mover, who gets its grace period to come back.

mod conn;
mod owner;
mod reply;
mod resolve;
#[cfg(test)]
mod tests;

use crate::config::{ServerConfig, Verbosity};
use crate::notify;
use crate::report::{ReportOutput, ReportWriter, Reporter};
use crate::store::{self, Batch, CommitStatus, Store, StoreError, request_from_wire};
use conn::{Conn, Event, SendError};
pub use conn::{OUTBOX_LIMIT, WRITE_STALL};
use coordinatool_lustre::{Copytool, HsmAction, LoadError, LuFid, LustreError, Lustreapi};
use coordinatool_proto::{Command, QueueReply, Reply, Request as WireRequest, StatusReply};
use coordinatool_sched::{
    Action, ClientId, Ehlo, Engine, EngineError, LockState, PersistOp, Placed, RecvLimits, Request,
    RequestKey, Time,
};
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, trace, warn};

/// Capacity of the channel from connection tasks to the loop: a full channel makes readers
/// wait, which pushes back on clients through TCP.
const EVENT_QUEUE: usize = 4096;

/// Connection events handled in one turn before committing and replying.
const EVENTS_PER_TURN: usize = 1024;

/// Lustre lists taken in one turn before giving other inputs a chance.
const LISTS_PER_TURN: usize = 256;

/// Period of the health check of a store that can go away (Redis).
const STORE_CHECK: Duration = Duration::from_secs(1);
/// How often the server tries to register with Lustre again after losing its registration
/// (`ESHUTDOWN`: the filesystem was unmounted under it).
const LUSTRE_RETRY: Duration = Duration::from_secs(5);

/// Least time between two engine timer wake-ups (upstream's rate limit, §4.17). A deadline
/// is honoured on time unless the timer already fired less than this long ago; then it
/// waits out the rest of the gap, together with every other deadline falling inside it.
/// Grace periods are minutes and batch slices whole seconds: one second late at most is
/// harmless, and bursts of expiries (movers dropping one after another) cost one wake-up.
const TIMER_MIN_GAP: Duration = Duration::from_secs(1);

/// How long a stopping server waits for the owner lookups of held requests.
const OWNER_DRAIN: Duration = Duration::from_secs(10);

/// How long a stopping server waits for its last replies to be written.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// At stop, how long the server waits for an unreachable store (Redis) to take the changes it
/// buffered: under the unit's TimeoutStopSec (2 min), long enough for a Redis restart.
const STOP_STORE_WAIT: Duration = Duration::from_secs(90);

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// `liblustreapi.so.1` could not be loaded.
    #[error("{0}")]
    Lustreapi(#[from] LoadError),
    /// The mount point is not a Lustre client mount.
    #[error("{}: not a Lustre mount point: {source}", mnt.display())]
    NotLustre {
        /// The mount point.
        mnt: PathBuf,
        /// What liblustreapi said.
        #[source]
        source: LustreError,
    },
    /// Registering as a copytool failed.
    #[error("cannot register as copytool on {}: {source}", mnt.display())]
    Register {
        /// The mount point.
        mnt: PathBuf,
        /// What liblustreapi said.
        #[source]
        source: LustreError,
    },
    /// The engine refused the configuration.
    #[error("scheduler configuration: {0}")]
    Engine(#[from] coordinatool_sched::ConfigError),
    /// The store failed (at start, or a commit that may have lost changes).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The reporting directory could not be opened or created.
    #[error("reporting directory {}: {source}", dir.display())]
    Reporting {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The listen address does not resolve.
    #[error("listen address {host}:{port}: {reason}")]
    Resolve {
        /// Host.
        host: String,
        /// Port or service name.
        port: String,
        /// Why.
        reason: String,
    },
    /// Binding the listen socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped while its store (Redis) was unreachable and still held changes:
    /// the queue in the store is behind the acknowledged one.
    #[error(
        "stopped with {keys} changes the {backend} store never took: recover the queue with `coordinatool-client -Q` from the MDTs' active_requests"
    )]
    StoreBehind {
        /// The store's backend.
        backend: &'static str,
        /// Changes (keys) that were not written.
        keys: usize,
    },
    /// The runtime, a signal handler or a blocking task could not be set up.
    #[error("{what}: {source}")]
    Runtime {
        /// What failed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The whole program for the binaries: configuration, logging, then [`run`]. Exit code 0
/// after a clean stop, 1 on any error (printed on stderr).
pub fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let prog = argv
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "coordinatool-server".into());
    let mut args = Vec::new();
    for (i, a) in argv.enumerate() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(a) => {
                eprintln!("{prog}: argument {} is not valid UTF-8: {a:?}", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    let env = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let loaded = match crate::config::load(&prog, &args, &env) {
        Ok(crate::config::Invocation::Run(l)) => l,
        Ok(crate::config::Invocation::Help(t) | crate::config::Invocation::Version(t)) => {
            print!("{t}");
            if !t.ends_with('\n') {
                println!();
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            if matches!(e, crate::config::ConfigError::Usage(_)) {
                eprint!("{}", crate::config::usage(&prog));
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(loaded.config.verbosity);
    for w in &loaded.warnings {
        warn!("{w}");
    }
    match run(loaded.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // On stderr whatever the log level (logs go to stderr too: once is enough).
            eprintln!("{prog}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(v: Verbosity) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(crate::config::level_filter(v))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Wall-clock time for the engine, never going backwards.
#[derive(Debug, Default)]
struct Clock {
    last: u64,
}

impl Clock {
    fn now(&mut self) -> Time {
        let ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last = self.last.max(ns);
        Time(self.last)
    }
}

/// Raises the soft limit on open files to the hard one. Every mover is a connection: under
/// a unit without `LimitNOFILE=` (upstream's) or a shell, the usual soft limit of 1024 would
/// refuse movers beyond about a thousand, and the hard limit is what the admin allows.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit for the calling process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            debug!(from = old, to = lim.rlim_max, "raised the open file limit");
        } else {
            warn!(
                limit = old,
                "cannot raise the open file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Runs the server until a signal or lock-and-quit: start-up (§4.3: Lustre check, store
/// recovery, listen, copytool registration, READY), then the loop.
pub fn run(cfg: ServerConfig) -> Result<(), DaemonError> {
    raise_open_file_limit();
    let api = Lustreapi::global()?;
    let mnt = cfg.mount_point.clone();
    let fsname = api
        .search_fsname(&mnt)
        .map_err(|source| DaemonError::NotLustre {
            mnt: mnt.clone(),
            source,
        })?;
    info!(mount = %mnt.display(), %fsname, "Lustre filesystem found");

    let mut clock = Clock::default();
    let mut engine = Engine::new(cfg.engine_config())?;
    let mut owners = owner::Owners::for_config(&cfg, api);

    let reporting = match cfg.reporting() {
        Some((dir, _hint)) => {
            let writer = ReportWriter::open(&dir)
                .map_err(|source| DaemonError::Reporting { dir, source })?;
            Some(writer)
        }
        None => None,
    };

    if cfg.store_choice == crate::config::StoreChoice::ImpliedByRedis {
        info!(
            host = %cfg.redis_host,
            port = cfg.redis_port,
            "store: Redis, as upstream (Redis is configured and no `store` key says otherwise)"
        );
        let db = cfg.state_dir().join(store::DB_FILE_NAME);
        if db.exists() {
            warn!(
                "an embedded store exists at {}: it is NOT used (add `store embedded` to use it)",
                db.display()
            );
        }
    }
    // The store is opened outside the runtime: the Redis store runs its own.
    let mut store = store::open(&cfg)?;
    let recovery = store.load()?;
    for c in &recovery.corrupt {
        warn!(table = c.table, key = %c.key, "skipped a stored entry: {}", c.reason);
    }
    if recovery.stale_assignments > 0 {
        info!(
            count = recovery.stale_assignments,
            "removed assignments of requests that no longer exist"
        );
    }
    let reporter = reporting.map(|w| {
        (
            Reporter::new(cfg.reporting_interval_ms, recovery.report_files.clone()),
            w,
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| DaemonError::Runtime {
            what: "cannot start the tokio runtime",
            source,
        })?;
    let now = clock.now();
    let total = recovery.requests.len();
    let assigned = recovery
        .requests
        .iter()
        .filter(|r| r.assigned.is_some())
        .count();
    // Backends that can lose acknowledged writes are watched, to write the queue again.
    let resyncable = store.health().backend == "redis";
    recover_queue(&mut engine, recovery.requests, owners.as_mut(), &rt, now);
    info!(
        requests = total,
        assigned,
        store = store.health().backend,
        "recovered the queue from the store"
    );

    let addrs = resolve(&cfg.host, &cfg.port)?;
    let mut last_err = None;
    let mut std_listener = None;
    for a in &addrs {
        match std::net::TcpListener::bind(a) {
            Ok(l) => {
                std_listener = Some(l);
                break;
            }
            Err(e) => last_err = Some((a.to_string(), e)),
        }
    }
    let std_listener = match std_listener {
        Some(l) => l,
        None => {
            let (addr, source) = last_err.unwrap_or_else(|| {
                (
                    format!("{}:{}", cfg.host, cfg.port),
                    std::io::Error::from(std::io::ErrorKind::AddrNotAvailable),
                )
            });
            return Err(DaemonError::Listen { addr, source });
        }
    };
    let local = std_listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: format!("{}:{}", cfg.host, cfg.port),
            source,
        })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| DaemonError::Listen {
            addr: local.to_string(),
            source,
        })?;

    let ct = Copytool::register(api, &mnt, &cfg.archive_ids, true).map_err(|source| {
        DaemonError::Register {
            mnt: mnt.clone(),
            source,
        }
    })?;
    info!(archive_ids = ?cfg.archive_ids, "registered as copytool");

    let result = serve(
        &rt,
        Parts {
            engine,
            store,
            reporter,
            fsname,
            ct: Some(ct),
            relink: Some(Relink {
                api,
                mnt: mnt.clone(),
                archive_ids: cfg.archive_ids.clone(),
            }),
            clock,
            listener: Some(std_listener),
            resyncable,
            owners,
            report_ms: cfg.reporting_interval_ms,
            signals: true,
        },
    );
    // Dropping the runtime would wait for every blocking task, forever: an owner lookup stuck
    // on a hung MDS must not keep a stopped server from exiting.
    rt.shutdown_timeout(FINAL_FLUSH);
    result
}

/// Gives the stored queue to the engine; when fair share needs owners that the store does
/// not keep (Redis), they are looked up first, in parallel off this thread (see [`owner`]).
fn recover_queue(
    engine: &mut Engine,
    recovered: Vec<store::Recovered>,
    owners: Option<&mut owner::Owners>,
    rt: &tokio::runtime::Runtime,
    now: Time,
) {
    let (mut requests, clients): (Vec<Request>, Vec<Option<String>>) = recovered
        .into_iter()
        .map(|r| (r.request, r.assigned))
        .unzip();
    if let Some(o) = owners {
        let missing = requests.iter().filter(|r| r.owner.is_none()).count();
        if missing > 0 {
            info!(
                requests = missing,
                "looking up the file owners of the recovered requests (fair share)"
            );
            requests = rt.block_on(o.resolve(requests, owner::RECOVERY_LOOKUP_STALL));
        }
    }
    for (r, client) in requests.into_iter().zip(clients) {
        let key = r.key();
        if let Err(e) = engine.recover(r, client.as_deref(), now) {
            warn!(cookie = format_args!("{:#x}", key.cookie), dfid = %key.dfid, "stored request not recovered: {e}");
        }
    }
}

/// What the loop is made of: built by [`run`] after start-up, or by a test.
struct Parts {
    engine: Engine,
    store: Box<dyn Store>,
    reporter: Option<(Reporter, ReportWriter)>,
    fsname: String,
    /// The copytool registration (`None`: no Lustre intake).
    ct: Option<Copytool<'static>>,
    /// How to register again when Lustre ends the registration (`None`: never).
    relink: Option<Relink>,
    clock: Clock,
    /// The bound, non-blocking listen socket (`None` once the loop took it).
    listener: Option<std::net::TcpListener>,
    resyncable: bool,
    owners: Option<owner::Owners>,
    report_ms: u64,
    /// Stop on SIGTERM, SIGINT and SIGQUIT (the daemon; an in-process test stops it with
    /// lock-and-quit instead of taking its test process's signals).
    signals: bool,
}

/// What registering with Lustre takes, to do it again.
struct Relink {
    api: &'static Lustreapi,
    mnt: std::path::PathBuf,
    archive_ids: Vec<u32>,
}

/// Runs the loop on `rt` until it stops, then the last commit and replies.
fn serve(rt: &tokio::runtime::Runtime, mut parts: Parts) -> Result<(), DaemonError> {
    let (ct, signals, report_ms) = (parts.ct.take(), parts.signals, parts.report_ms);
    let Some(std_listener) = parts.listener.take() else {
        return Err(DaemonError::Runtime {
            what: "no listen socket",
            source: std::io::Error::from(std::io::ErrorKind::NotConnected),
        });
    };
    rt.block_on(async move {
        let local = std_listener
            .local_addr()
            .map_err(|source| DaemonError::Listen {
                addr: "the listen socket".to_owned(),
                source,
            })?;
        let listener =
            TcpListener::from_std(std_listener).map_err(|source| DaemonError::Listen {
                addr: local.to_string(),
                source,
            })?;
        let ct = match ct {
            // SAFETY: the copytool's fd belongs to the registration, stays open and the same
            // until it is unregistered, which happens only after `into_inner`.
            Some(ct) => Some(
                unsafe { AsyncFd::register_with_interest(ct, tokio::io::Interest::READABLE) }
                    .map_err(|e| DaemonError::Runtime {
                        what: "cannot watch the copytool fd",
                        source: e.into_parts().1,
                    })?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut server = Server::new(parts, ct, tx);
        // Handlers first: a signal right after READY must stop the server cleanly.
        let mut signals = if signals {
            Signals {
                term: Some(sig(SignalKind::terminate(), "cannot handle SIGTERM")?),
                int: Some(sig(SignalKind::interrupt(), "cannot handle SIGINT")?),
                quit: Some(sig(SignalKind::quit(), "cannot handle SIGQUIT")?),
            }
        } else {
            Signals::none()
        };
        // The recovery's own changes (placeholders, report files) first.
        server.settle().await?;
        info!(address = %local, "listening on {local}");
        if let Err(e) = notify::ready(&format!("listening on {local}")) {
            warn!("sd_notify READY: {e}");
        }
        let result = server.run(listener, rx, &mut signals, report_ms).await;
        let flushed = server.finish(&mut signals).await;
        result.and(flushed)
    })
}

/// Resolves the listen address (`port` may be a service name, as with getaddrinfo).
fn resolve(host: &str, port: &str) -> Result<Vec<std::net::SocketAddr>, DaemonError> {
    let fail = |reason: String| DaemonError::Resolve {
        host: host.to_owned(),
        port: port.to_owned(),
        reason,
    };
    let num = match port.parse::<u16>() {
        Ok(p) => p,
        Err(_) => service_port(port).ok_or_else(|| fail("unknown port or service name".into()))?,
    };
    let addrs: Vec<_> = (host, num)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(fail("no address".into()));
    }
    Ok(addrs)
}

/// `getservbyname(name, "tcp")`.
fn service_port(name: &str) -> Option<u16> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: both strings are NUL-terminated; the result points to static storage of libc,
    // read at once (start-up is single-threaded here).
    let ent = unsafe { libc::getservbyname(cname.as_ptr(), c"tcp".as_ptr()) };
    if ent.is_null() {
        return None;
    }
    // SAFETY: non-NULL servent from libc.
    let port = unsafe { (*ent).s_port };
    Some(u16::from_be(port as u16))
}

/// What woke the loop.
enum Wake {
    Signal(&'static str),
    Lustre,
    Event(Option<Event>),
    Accept(std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>),
    Named(Option<resolve::Resolved>),
    Timer,
    ReportTick,
    Watchdog,
    StoreCheck,
    /// Time to try registering with Lustre again.
    LustreRetry,
    /// A registration attempt ended.
    Relinked(Result<Result<Copytool<'static>, String>, tokio::task::JoinError>),
    Committed(Result<Committed, tokio::task::JoinError>),
    Owners(owner::Results),
}

/// Something to do after the turn's commit.
enum Out {
    Send(ClientId, Vec<u8>),
    /// Close after what is queued is written.
    Close(ClientId),
}

/// The turn's replies: per connection, every reply of the turn in one buffer (sent with one
/// write), in the order connections are flushed and closed. A buffer is closed once it holds
/// [`OUT_SEGMENT`] bytes, so big replies stay separate messages for the outbox limit.
#[derive(Default)]
struct Outbox {
    /// Index in `order` of the open buffer of each connection.
    open: HashMap<ClientId, usize>,
    order: Vec<Out>,
}

/// Size after which a connection's reply buffer takes no more replies this turn.
const OUT_SEGMENT: usize = 64 * 1024;

impl Outbox {
    /// The buffer of `id` for this turn, to encode replies into.
    fn buf(&mut self, id: ClientId) -> &mut Vec<u8> {
        let i = match self.open.get(&id) {
            Some(&i) if matches!(&self.order[i], Out::Send(_, b) if b.len() < OUT_SEGMENT) => i,
            _ => {
                self.order.push(Out::Send(id, Vec::with_capacity(256)));
                self.open.insert(id, self.order.len() - 1);
                self.order.len() - 1
            }
        };
        match &mut self.order[i] {
            Out::Send(_, b) => b,
            Out::Close(_) => unreachable!("open buffers index Send entries"),
        }
    }

    fn push(&mut self, out: Out) {
        match out {
            Out::Send(id, msg) => {
                let b = self.buf(id);
                if b.is_empty() {
                    *b = msg;
                } else {
                    b.extend_from_slice(&msg);
                }
            }
            close @ Out::Close(_) => self.order.push(close),
        }
    }

    /// Everything to do, in order, with each connection's replies coalesced.
    fn take(&mut self) -> Vec<Out> {
        self.open.clear();
        std::mem::take(&mut self.order)
    }
}

struct Server {
    engine: Engine,
    /// `None` only while a commit runs on the blocking thread.
    store: Option<Box<dyn Store>>,
    batch: Batch,
    conns: HashMap<ClientId, Conn>,
    outbox: Outbox,
    reporter: Option<(Reporter, ReportWriter)>,
    report_out: Vec<ReportOutput>,
    fsname: String,
    ct: Option<AsyncFd<Copytool<'static>>>,
    relink: Option<Relink>,
    /// Why Lustre intake stopped, while it is stopped (the registration ended).
    lustre_lost: Option<String>,
    /// When to try registering again: set when the registration is lost and after a failed
    /// attempt, `None` while an attempt runs or intake works.
    relink_at: Option<tokio::time::Instant>,
    /// A registration attempt running on the blocking pool.
    relinking: Option<tokio::task::JoinHandle<Result<Copytool<'static>, String>>>,
    clock: Clock,
    /// Why the loop stops, once it must.
    stop: Option<&'static str>,
    events_tx: mpsc::Sender<Event>,
    store_buffered: bool,
    /// The store can lose acknowledged writes (Redis): watch it and write the whole queue
    /// again (from the engine) when it does.
    resyncable: bool,
    /// Writers of closed connections still writing their last bytes.
    flushing: Vec<tokio::task::JoinHandle<()>>,
    /// The group commit running on the blocking thread, and what waits for it.
    inflight: Option<Inflight>,
    /// A commit failed: the changes of that turn are not durable, so no later change may be
    /// committed and no held reply released (they could depend on the lost ones). The server
    /// stops; the next start recovers from what the store has.
    store_failed: bool,
    /// The store's health as of the last commit, for `status` while a commit runs.
    store_health: Option<crate::store::StoreHealth>,
    /// When the engine timer last fired (rate limit, [`TIMER_MIN_GAP`]).
    last_timer: Option<tokio::time::Instant>,
    /// Peer host names (reverse lookups off the loop, cached).
    names: resolve::Names,
    /// File owners of new requests, when fair share is by uid, gid or projid: looked up
    /// off the loop, new requests held meanwhile ([`owner`]).
    owners: Option<owner::Owners>,
}

/// What a group commit on the blocking thread gives back.
type Committed = (Box<dyn Store>, Batch, Result<CommitStatus, StoreError>);

/// A group commit in flight (stores with a backend). The loop goes on meanwhile: the next
/// turns' changes gather in the next batch and their replies wait for the next commit.
struct Inflight {
    handle: tokio::task::JoinHandle<Committed>,
    /// Replies of the turns whose changes this commit makes durable.
    outbox: Vec<Out>,
    report_out: Vec<ReportOutput>,
}

/// The stop signals, installed before the server says it is ready (`None`: not handled).
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    quit: Option<Signal>,
}

impl Signals {
    /// No signal handled.
    fn none() -> Signals {
        Signals {
            term: None,
            int: None,
            quit: None,
        }
    }

    /// Resolves when any of them fires.
    async fn any(&mut self) {
        tokio::select! {
            () = recv_sig(&mut self.term) => {}
            () = recv_sig(&mut self.int) => {}
            () = recv_sig(&mut self.quit) => {}
        }
    }
}

fn sig(kind: SignalKind, what: &'static str) -> Result<Signal, DaemonError> {
    signal(kind).map_err(|source| DaemonError::Runtime {
        what: if what.is_empty() {
            "cannot install a signal handler"
        } else {
            what
        },
        source,
    })
}

async fn recv_sig(s: &mut Option<Signal>) {
    // A closed signal stream never fires again.
    let fired = match s {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !fired {
        std::future::pending::<()>().await;
    }
}

impl Server {
    /// The loop's state from `parts` (whose copytool and listener the caller keeps), with
    /// the copytool fd watched as `ct` and connection events sent to `events_tx`.
    fn new(
        parts: Parts,
        ct: Option<AsyncFd<Copytool<'static>>>,
        events_tx: mpsc::Sender<Event>,
    ) -> Server {
        Server {
            engine: parts.engine,
            store: Some(parts.store),
            batch: Batch::new(),
            conns: HashMap::new(),
            outbox: Outbox::default(),
            reporter: parts.reporter,
            report_out: Vec::new(),
            fsname: parts.fsname,
            ct,
            relink: parts.relink,
            lustre_lost: None,
            relink_at: None,
            relinking: None,
            clock: parts.clock,
            stop: None,
            events_tx,
            store_buffered: false,
            resyncable: parts.resyncable,
            flushing: Vec::new(),
            inflight: None,
            store_failed: false,
            store_health: None,
            last_timer: None,
            names: resolve::Names::new(),
            owners: parts.owners,
        }
    }

    async fn run(
        &mut self,
        listener: TcpListener,
        mut rx: mpsc::Receiver<Event>,
        signals: &mut Signals,
        report_ms: u64,
    ) -> Result<(), DaemonError> {
        let Signals { term, int, quit } = signals;
        let report_period =
            (self.reporter.is_some() && report_ms > 0).then(|| Duration::from_millis(report_ms));
        let mut report_tick = report_period.map(|p| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        // A store that can go away is checked even when idle, so a re-sync does not wait
        // for the next change.
        let mut store_check = self.resyncable.then(|| tokio::time::interval(STORE_CHECK));
        let mut lustre_more = false;
        let mut listener = Some(listener);
        while self.stop.is_none() {
            let deadline = self.timer_deadline();
            let ct = &self.ct;
            let relink_at = self.relink_at;
            let relinking = &mut self.relinking;
            let inflight = &mut self.inflight;
            let owners = &mut self.owners;
            // Unbiased: a flood on one input (Lustre or clients) must not starve the others.
            let wake = tokio::select! {
                () = recv_sig(term) => Wake::Signal("SIGTERM"),
                () = recv_sig(int) => Wake::Signal("SIGINT"),
                () = recv_sig(quit) => Wake::Signal("SIGQUIT"),
                () = async {
                    if !lustre_more {
                        match ct {
                            Some(fd) => match fd.readable().await {
                                Ok(mut g) => g.clear_ready(),
                                Err(_) => std::future::pending().await,
                            },
                            None => std::future::pending().await,
                        }
                    }
                } => Wake::Lustre,
                ev = rx.recv() => Wake::Event(ev),
                r = async {
                    match &listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Accept(r),
                n = self.names.rx.recv() => Wake::Named(n),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Timer,
                _ = async {
                    match report_tick.as_mut() {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                } => Wake::ReportTick,
                _ = async {
                    match watchdog.as_mut() {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Watchdog,
                _ = async {
                    match store_check.as_mut() {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                } => Wake::StoreCheck,
                () = async {
                    match relink_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => Wake::LustreRetry,
                r = async {
                    match relinking {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                } => Wake::Relinked(r),
                r = async {
                    match inflight {
                        Some(i) => (&mut i.handle).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Committed(r),
                r = async {
                    match owners {
                        Some(o) => o.next().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Owners(r),
            };
            match wake {
                Wake::Signal(name) => {
                    info!("{name} received: stopping (assignments are kept for the next start)");
                    self.stop = Some(name);
                }
                Wake::Lustre => lustre_more = self.lustre_intake(),
                Wake::Event(Some(ev)) => {
                    self.handle_event(ev);
                    for _ in 1..EVENTS_PER_TURN {
                        match rx.try_recv() {
                            Ok(ev) => self.handle_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                // The loop holds a sender: the channel never closes.
                Wake::Event(None) => {}
                Wake::Accept(Ok((stream, addr))) => {
                    if let Some((stream, addr, name)) = self.names.name_or_park(stream, addr) {
                        self.accept(stream, addr, &name);
                    }
                }
                Wake::Named(Some(r)) => {
                    for (stream, addr, name) in self.names.resolved(r) {
                        self.accept(stream, addr, &name);
                    }
                }
                // `names` holds a sender: the channel never closes.
                Wake::Named(None) => {}
                Wake::Accept(Err(e)) => {
                    // EMFILE and friends: log, and back off a little so the loop does not spin.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Wake::Timer => {
                    self.last_timer = Some(tokio::time::Instant::now());
                    debug!("engine timer");
                    let now = self.clock.now();
                    self.engine.handle_timeout(now);
                }
                Wake::ReportTick => {
                    let now = self.clock.now();
                    self.engine.report_progress(now);
                    if let Some((r, _)) = &mut self.reporter {
                        r.tick(&mut self.report_out, &mut self.batch);
                    }
                }
                Wake::Watchdog => {
                    let _ = notify::watchdog();
                }
                Wake::StoreCheck => self.check_store(None).await?,
                Wake::LustreRetry => self.relink_lustre(),
                Wake::Relinked(r) => {
                    self.relinking = None;
                    self.relinked(r);
                }
                Wake::Committed(r) => self.committed(r).await?,
                Wake::Owners(r) => self.owner_results(r),
            }
            self.end_turn().await?;
            if self.stop.is_some() {
                // No new connections or Lustre lists while stopping.
                listener = None;
            }
        }
        Ok(())
    }

    /// The engine's next deadline as a tokio instant.
    fn timer_deadline(&mut self) -> Option<tokio::time::Instant> {
        let t = self.engine.poll_timeout()?;
        let now = self.clock.now();
        let at = tokio::time::Instant::now() + Duration::from_nanos(t.since(now));
        Some(match self.last_timer {
            Some(last) => at.max(last + TIMER_MIN_GAP),
            None => at,
        })
    }

    /// Takes the lists Lustre has queued. Returns true when more may be waiting (the turn's
    /// budget ran out before `EAGAIN`).
    fn lustre_intake(&mut self) -> bool {
        for _ in 0..LISTS_PER_TURN {
            let Some(ct) = &self.ct else { return false };
            match ct.get_ref().recv() {
                Ok(hal) => self.intake(hal),
                Err(LustreError::WouldBlock { .. }) => return false,
                Err(e @ LustreError::Shutdown { .. }) => {
                    // Upstream only logs and never gets requests again. Movers keep working
                    // on what is queued (they talk to the MDTs themselves) while the server
                    // tries to register again, so a remount resumes intake by itself.
                    error!(
                        "{e}: no more requests from Lustre; registering again every {}s",
                        LUSTRE_RETRY.as_secs()
                    );
                    let _ = notify::status("Lustre registration lost, retrying");
                    self.ct = None;
                    self.lustre_lost = Some(e.to_string());
                    self.relink_at = self.relink.as_ref().map(|_| Self::next_relink());
                    return false;
                }
                Err(e @ LustreError::Malformed { .. }) => warn!("dropping a list from Lustre: {e}"),
                Err(e) => {
                    error!("{e}");
                    return false;
                }
            }
        }
        true
    }

    /// When the next registration attempt is due, from now.
    fn next_relink() -> tokio::time::Instant {
        tokio::time::Instant::now() + LUSTRE_RETRY
    }

    /// Starts a registration attempt off the loop (registering opens the mount point,
    /// which can hang while Lustre recovers).
    fn relink_lustre(&mut self) {
        self.relink_at = None;
        let Some(r) = &self.relink else { return };
        let (api, mnt, ids) = (r.api, r.mnt.clone(), r.archive_ids.clone());
        let fsname = self.fsname.clone();
        self.relinking = Some(tokio::task::spawn_blocking(move || {
            // Another filesystem mounted at the same path must not feed this queue.
            let now = api.search_fsname(&mnt).map_err(|e| e.to_string())?;
            if now != fsname {
                return Err(format!(
                    "{} is now filesystem {now}, not {fsname}: not registering there",
                    mnt.display()
                ));
            }
            Copytool::register(api, &mnt, &ids, true).map_err(|e| e.to_string())
        }));
    }

    fn relinked(&mut self, r: Result<Result<Copytool<'static>, String>, tokio::task::JoinError>) {
        let ct = match r {
            Ok(Ok(ct)) => ct,
            Ok(Err(e)) => {
                debug!("registering with Lustre again: {e}");
                self.lustre_lost = Some(e);
                self.relink_at = Some(Self::next_relink());
                return;
            }
            Err(e) => {
                warn!("registering with Lustre again: {e}");
                self.relink_at = Some(Self::next_relink());
                return;
            }
        };
        // SAFETY: as at start-up: the fd stays open and the same until the registration is
        // dropped, after the AsyncFd.
        match unsafe { AsyncFd::register_with_interest(ct, tokio::io::Interest::READABLE) } {
            Ok(fd) => {
                self.ct = Some(fd);
                self.lustre_lost = None;
                info!("registered as copytool again: Lustre intake resumes");
                let _ = notify::status("Lustre registration back");
            }
            Err(e) => {
                warn!(
                    "registered again, but cannot watch the copytool fd: {}",
                    e.into_parts().1
                );
                self.relink_at = Some(Self::next_relink());
            }
        }
    }

    fn intake(&mut self, hal: coordinatool_lustre::HsmActionList) {
        let now = self.clock.now();
        if hal.version != coordinatool_proto::HAL_VERSION {
            // Upstream aborts the process here; one bad list is not worth the queue.
            error!(
                version = hal.version,
                "hsm_action_list with an unknown version: dropped"
            );
            return;
        }
        if hal.fsname != self.fsname {
            warn!(got = %hal.fsname, ours = %self.fsname, "hsm_action_list for another fsname (accepted)");
        }
        let (archive_id, flags) = (hal.archive_id, hal.flags);
        let mut batch: Vec<Request> = Vec::with_capacity(hal.items.len());
        for (i, item) in hal.items.into_iter().enumerate() {
            let r = store::request_from_item(item, archive_id, flags, now);
            // Upstream's LOG_INFO, shown from `verbose info` on (tracing DEBUG), not at the
            // default `normal`: a line per request costs more than the rest of the intake.
            debug!(
                "enqueued ({i}): {} on {} (cookie {:#x}, #{}, data {})",
                r.action,
                r.dfid,
                r.cookie,
                r.archive_id,
                printable(&r.data)
            );
            match r.action {
                HsmAction::Archive | HsmAction::Restore | HsmAction::Remove => batch.push(r),
                HsmAction::Cancel => {
                    self.new_requests(&mut batch, now);
                    match &mut self.owners {
                        // After the requests held before it, which it may cancel.
                        Some(o) if !o.is_idle() => o.hold(Vec::new(), owner::Then::Cancel(r)),
                        _ => {
                            let out = self.engine.cancel(r, now);
                            debug!(?out, "cancel from Lustre");
                        }
                    }
                }
                other => warn!(action = %other, "unexpected action from Lustre: ignored"),
            }
        }
        self.new_requests(&mut batch, now);
    }

    fn new_requests(&mut self, batch: &mut Vec<Request>, now: Time) {
        if batch.is_empty() {
            return;
        }
        if let Some(o) = &mut self.owners {
            o.hold(std::mem::take(batch), owner::Then::Lustre);
            self.release_held();
            return;
        }
        for r in self.engine.new_requests(batch.drain(..), now) {
            if let Err(e) = r {
                warn!("request from Lustre refused: {e}");
            }
        }
    }

    /// A new connection, named `name` (`"<host>:<port>"`, the id of an anonymous client).
    fn accept(&mut self, stream: tokio::net::TcpStream, addr: std::net::SocketAddr, name: &str) {
        let now = self.clock.now();
        let peer = addr.to_string();
        let id = self.engine.connect(name, now);
        debug!(%peer, client = %id, name, "new connection");
        let conn = Conn::spawn(stream, id, peer, self.events_tx.clone());
        self.conns.insert(id, conn);
    }

    fn handle_event(&mut self, ev: Event) {
        if let Some(o) = &mut self.owners {
            let id = owner::client_of(&ev);
            if o.is_deferred(id) {
                if !matches!(
                    ev,
                    Event::Closed {
                        graceful: false,
                        ..
                    }
                ) {
                    // Behind its held `queue`, so its replies keep their order.
                    if o.defer(id, ev) <= owner::MAX_DEFERRED_REQUESTS {
                        return;
                    }
                    warn!(
                        client = %id,
                        "over {} requests sent behind a queue waiting for owner lookups; \
                         closing this connection",
                        owner::MAX_DEFERRED_REQUESTS
                    );
                }
                // Gone (or dropped): none of its later input can be answered, and the engine
                // must hear of the disconnect now, not when the lookup ends. The held
                // `queue`'s requests are still queued when it is released.
                drop(o.undefer(id));
                if let Some(conn) = self.conns.remove(&id) {
                    conn.abort();
                }
                self.disconnect(id);
                return;
            }
        }
        match ev {
            Event::Requests(id, reqs) => {
                let mut reqs = reqs.into_iter();
                while let Some(req) = reqs.next() {
                    // A request may get its own connection dropped (a reply it cannot take).
                    if !self.conns.contains_key(&id) {
                        break;
                    }
                    self.handle_request(id, req);
                    if let Some(o) = &mut self.owners
                        && o.is_deferred(id)
                    {
                        let rest: Vec<WireRequest> = reqs.collect();
                        if !rest.is_empty() {
                            o.defer(id, Event::Requests(id, rest));
                        }
                        break;
                    }
                }
            }
            Event::Malformed(id, e) => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                warn!(peer = %conn.peer, "malformed message: {e}; closing this connection");
                let reply = match e.command() {
                    Some(c) => reply::error_reply(c, libc::EINVAL, &e.to_string()),
                    // No command to answer to: status and error alone.
                    None => format!(
                        r#"{{"status":{},"error":{}}}"#,
                        libc::EINVAL,
                        serde_json::Value::String(e.to_string())
                    )
                    .into_bytes(),
                };
                self.outbox.push(Out::Send(id, reply));
                self.outbox.push(Out::Close(id));
                self.disconnect(id);
            }
            Event::Closed {
                id,
                reason,
                graceful,
            } => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                debug!(peer = %conn.peer, client = %id, "{reason}");
                if graceful {
                    // Replies to its last requests are still in this turn's outbox.
                    self.outbox.push(Out::Close(id));
                } else if let Some(conn) = self.conns.remove(&id) {
                    conn.abort();
                }
                self.disconnect(id);
            }
        }
    }

    /// Tells the engine a connection is gone (named clients keep their work for the grace).
    fn disconnect(&mut self, id: ClientId) {
        let now = self.clock.now();
        if let Some(name) = self.engine.client_name(id) {
            debug!(client = %name, "disconnected");
        }
        let _ = self.engine.disconnect(id, now);
        self.drain_actions();
    }

    fn reply(&mut self, id: ClientId, r: &Reply) {
        coordinatool_proto::encode(r, self.outbox.buf(id));
    }

    fn handle_request(&mut self, id: ClientId, req: WireRequest) {
        if tracing::enabled!(tracing::Level::TRACE) {
            trace!(client = %id, "Got something from {}: {req:?}", self.engine.client_name(id).unwrap_or("?"));
        }
        let now = self.clock.now();
        match req {
            WireRequest::Ehlo(e) => {
                let ehlo = Ehlo {
                    id: e.id,
                    archive_ids: e.archive_ids,
                    running: e.hai_list.into_iter().map(request_from_wire).collect(),
                };
                let reply = match self.engine.ehlo(id, ehlo, now) {
                    Ok(()) => Reply::ok(Command::Ehlo),
                    Err(EngineError::EhloTwice) => {
                        Reply::error(Command::Ehlo, libc::EINVAL, "Client cannot send EHLO twice")
                    }
                    // Upstream answered with "command": "done" (§9.4 item 13): fixed.
                    Err(EngineError::BadArchiveId(_)) => {
                        Reply::error(Command::Ehlo, libc::EINVAL, "Bad archive id in list")
                    }
                    Err(EngineError::IdInUse(_)) => Reply::error(
                        Command::Ehlo,
                        libc::EEXIST,
                        "id already used by another client",
                    ),
                    Err(e) => Reply::error(Command::Ehlo, libc::EINVAL, e.to_string()),
                };
                self.reply(id, &reply);
            }
            WireRequest::Recv(r) => {
                let limits = RecvLimits {
                    max_archive: r.max_archive,
                    max_restore: r.max_restore,
                    max_remove: r.max_remove,
                    max_bytes: u32::try_from(r.max_bytes).unwrap_or(0),
                };
                match self.engine.recv(id, limits, now) {
                    Ok(()) => {}
                    Err(EngineError::BufferTooSmall(_)) => {
                        self.reply(
                            id,
                            &Reply::error(Command::Recv, libc::EINVAL, "Buffer too small"),
                        );
                    }
                    Err(EngineError::NotReady) => self.reply(
                        id,
                        &Reply::error(
                            Command::Recv,
                            libc::EINVAL,
                            "Client must send EHLO first and not already be in RECV",
                        ),
                    ),
                    Err(e) => self.reply(
                        id,
                        &Reply::error(Command::Recv, libc::EINVAL, e.to_string()),
                    ),
                }
            }
            WireRequest::Done(d) => {
                if d.cookie == 0 || d.dfid == LuFid::default() {
                    let reply = Reply::error(
                        Command::Done,
                        libc::EINVAL,
                        "cookie or fid not set -- old client?",
                    );
                    self.reply(id, &reply);
                } else {
                    let key = RequestKey {
                        cookie: d.cookie,
                        dfid: d.dfid,
                    };
                    let out = self.engine.done(id, key, d.status, now);
                    debug!(cookie = format_args!("{:#x}", d.cookie), dfid = %d.dfid, status = d.status, ?out, "done");
                    self.outbox.buf(id).extend_from_slice(reply::DONE_OK);
                }
            }
            WireRequest::Queue(q) => {
                let reply = if q.fsname.as_deref().is_some_and(|f| f != self.fsname) {
                    Reply::error(Command::Queue, libc::EINVAL, "Bad fsname")
                } else if q.items.is_empty() {
                    Reply::error(Command::Queue, libc::EINVAL, "No hsm_action_items set")
                } else if let Some(o) = &mut self.owners {
                    // Answered once its items are in the engine (`release_held`).
                    let items = q.items.into_iter().map(request_from_wire).collect();
                    o.hold(items, owner::Then::Queue(id));
                    self.release_held();
                    return;
                } else {
                    let s = self
                        .engine
                        .queue(q.items.into_iter().map(request_from_wire), now);
                    queue_reply(&s)
                };
                self.reply(id, &reply);
            }
            WireRequest::Status(s) => {
                let st = self.engine.status(s.verbose >= 6);
                let mut body: StatusReply = reply::status_reply(&st);
                // (While a commit runs, the health its start saw.)
                body.store = self
                    .store
                    .as_ref()
                    .map(|s| s.health())
                    .or(self.store_health.clone())
                    .map(|h| reply::store_status(&h));
                // Without a registration from the start (in-process tests), nothing to say.
                if self.relink.is_some() {
                    body.lustre = Some(coordinatool_proto::LustreStatus {
                        state: if self.lustre_lost.is_some() {
                            "down"
                        } else {
                            "ok"
                        }
                        .into(),
                        error: self.lustre_lost.clone(),
                    });
                }
                let msg = coordinatool_proto::to_vec(&Reply::Status(Box::new(body)));
                self.outbox.push(Out::Send(id, msg));
            }
            WireRequest::Lock(l) => match LockState::from_wire(i64::from(l.locked)) {
                Some(state) => {
                    // Upstream replies before the state changes.
                    self.reply(id, &Reply::ok(Command::Lock));
                    self.engine.set_lock(state, now);
                }
                None => self.reply(
                    id,
                    &Reply::error(Command::Lock, libc::EINVAL, "invalid locked value"),
                ),
            },
        }
        self.drain_actions();
    }

    /// Owner lookups ended: their requests go to the engine if nothing held is before them.
    fn owner_results(&mut self, r: owner::Results) {
        if let Some(o) = &mut self.owners {
            o.apply(r);
        }
        self.release_held();
    }

    /// Gives the engine every held entry whose owners are known, in arrival order; answers
    /// held `queue` commands and handles their connections' input that waited behind them.
    fn release_held(&mut self) {
        // Not re-entered from the input it replays: the outer call takes what that holds.
        if !self.owners.as_mut().is_some_and(|o| o.begin_release()) {
            return;
        }
        while let Some((requests, then)) = self.owners.as_mut().and_then(|o| o.ready()) {
            let now = self.clock.now();
            match then {
                owner::Then::Lustre => {
                    for r in self.engine.new_requests(requests, now) {
                        if let Err(e) = r {
                            warn!("request from Lustre refused: {e}");
                        }
                    }
                }
                owner::Then::Cancel(c) => {
                    let out = self.engine.cancel(c, now);
                    debug!(?out, "cancel from Lustre");
                }
                owner::Then::Queue(id) => {
                    let s = self.engine.queue(requests, now);
                    self.reply(id, &queue_reply(&s));
                    let mut later = self
                        .owners
                        .as_mut()
                        .map(|o| o.undefer(id))
                        .unwrap_or_default();
                    while let Some(ev) = later.pop_front() {
                        self.handle_event(ev);
                        if let Some(o) = &mut self.owners
                            && o.is_deferred(id)
                        {
                            // Held again by a later `queue`: the rest waits behind it.
                            for ev in later.drain(..) {
                                o.defer(id, ev);
                            }
                        }
                    }
                }
            }
            self.drain_actions();
        }
        if let Some(o) = &mut self.owners {
            o.end_release();
        }
    }

    /// Takes every pending engine action (deliveries into the outbox, store changes into the
    /// batch, report events, cancels to Lustre).
    fn drain_actions(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::Deliver(d) => {
                    reply::encode_recv(&d, &self.fsname, self.outbox.buf(d.client));
                }
                Action::ReportCancelled { cancel } => self.report_cancelled(&cancel),
                Action::Persist(op) => self.batch.push(op),
                Action::Report(ev) => {
                    if let Some((r, _)) = &mut self.reporter {
                        r.on_event(&ev, &mut self.report_out, &mut self.batch);
                    }
                }
                Action::Shutdown => {
                    info!("lock-and-quit: nothing is running any more, stopping");
                    self.stop.get_or_insert("lock-and-quit");
                }
            }
        }
    }

    /// `action_begin(is_error)` + `action_end(HP_FLAG_COMPLETED, ECANCELED)` on the CANCEL item.
    fn report_cancelled(&mut self, cancel: &Request) {
        let Some(ct) = &self.ct else {
            warn!(dfid = %cancel.dfid, "cannot report a cancel to Lustre: not registered any more");
            return;
        };
        let item = store::request_to_wire(cancel).to_item();
        match ct.get_ref().report_error(&item, libc::ECANCELED) {
            Ok(()) => {
                info!(dfid = %cancel.dfid, cookie = format_args!("{:#x}", cancel.cookie), "cancelled before dispatch, reported to Lustre")
            }
            Err(e) => {
                warn!(dfid = %cancel.dfid, cookie = format_args!("{:#x}", cancel.cookie), "reporting a cancel to Lustre: {e}")
            }
        }
    }

    /// Commits the turn's changes, then writes report lines and sends the outbox; repeats
    /// while sending produced new work (a dropped slow client re-queues its requests).
    ///
    /// With a store backend the commit runs on the blocking thread while the loop goes on
    /// (pipelined group commit): the turn's replies are held until it is durable, and
    /// whatever comes meanwhile goes into the next commit. Replies are never sent before
    /// every change up to their turn is durable.
    async fn end_turn(&mut self) -> Result<(), DaemonError> {
        loop {
            self.drain_actions();
            if self.store_failed {
                // Nothing after a lost commit is durable-ordered: drop it all (see the field).
                self.batch = Batch::new();
                self.outbox.take();
                self.report_out.clear();
                return Ok(());
            }
            if self.inflight.is_some() {
                // This turn's replies may depend on the running commit: they wait for the next.
                return Ok(());
            }
            if !self.batch.is_empty() {
                if self
                    .store
                    .as_ref()
                    .is_some_and(|s| s.health().backend != "none")
                {
                    self.start_commit();
                    return Ok(());
                }
                self.commit().await?;
            }
            let report_out = std::mem::take(&mut self.report_out);
            let outbox = self.outbox.take();
            if !self.release(report_out, outbox) {
                return Ok(());
            }
        }
    }

    /// Starts the group commit of the batch on the blocking thread; the turn's replies and
    /// report lines wait for it.
    fn start_commit(&mut self) {
        let Some(mut store) = self.store.take() else {
            return;
        };
        self.store_health = Some(store.health());
        let batch = std::mem::take(&mut self.batch);
        let handle = tokio::task::spawn_blocking(move || {
            let r = store.commit(&batch);
            (store, batch, r)
        });
        self.inflight = Some(Inflight {
            handle,
            outbox: self.outbox.take(),
            report_out: std::mem::take(&mut self.report_out),
        });
    }

    /// The commit in flight is over: its replies and report lines go out.
    async fn committed(
        &mut self,
        r: Result<Committed, tokio::task::JoinError>,
    ) -> Result<(), DaemonError> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let (store, mut batch, res) = r.map_err(|e| {
            self.store_failed = true;
            DaemonError::Runtime {
                what: "store task failed",
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        self.store = Some(store);
        if self.batch.is_empty() {
            // Keep the allocation.
            batch.clear();
            self.batch = batch;
        }
        let status = res.inspect_err(|e| self.commit_failed(e))?;
        self.check_store(Some(status)).await?;
        self.release(inflight.report_out, inflight.outbox);
        Ok(())
    }

    /// A commit failed: nothing after it may be committed or released (see `store_failed`);
    /// the caller returns the error, which stops the server.
    fn commit_failed(&mut self, e: &StoreError) {
        self.store_failed = true;
        error!(
            "store commit failed: {e}; stopping without acknowledging this turn's changes or \
             any later ones (the next start recovers what the store has)"
        );
    }

    /// Ends the turn and waits for every commit it starts (start-up and shutdown).
    async fn settle(&mut self) -> Result<(), DaemonError> {
        self.end_turn().await?;
        while let Some(i) = self.inflight.as_mut() {
            let r = (&mut i.handle).await;
            self.committed(r).await?;
            self.end_turn().await?;
        }
        Ok(())
    }

    /// Writes report lines and sends replies whose changes are durable; false when there
    /// was nothing to send.
    fn release(&mut self, report_out: Vec<ReportOutput>, outbox: Vec<Out>) -> bool {
        if !report_out.is_empty()
            && let Some((_, w)) = &self.reporter
        {
            w.apply(&report_out);
        }
        if outbox.is_empty() {
            return false;
        }
        for out in outbox {
            match out {
                Out::Send(id, msg) => self.send(id, msg),
                Out::Close(id) => {
                    if let Some(c) = self.conns.remove(&id)
                        && let Some(j) = c.close()
                    {
                        self.flushing.retain(|j| !j.is_finished());
                        self.flushing.push(j);
                    }
                }
            }
        }
        true
    }

    fn send(&mut self, id: ClientId, msg: Vec<u8>) {
        let Some(conn) = self.conns.get(&id) else {
            debug!(client = %id, "reply for a closed connection dropped");
            return;
        };
        if tracing::enabled!(tracing::Level::TRACE) {
            trace!(
                "Sending message to {}: {}",
                self.engine.client_name(id).unwrap_or(&conn.peer),
                String::from_utf8_lossy(&msg)
            );
        }
        match conn.send(msg) {
            Ok(()) => {}
            Err(SendError::Full(queued)) => {
                warn!(peer = %conn.peer, queued, "client does not read its replies: disconnecting it");
                if let Some(c) = self.conns.remove(&id) {
                    c.abort();
                }
                self.disconnect(id);
            }
            Err(SendError::Gone) => {
                if let Some(c) = self.conns.remove(&id) {
                    c.abort();
                }
                self.disconnect(id);
            }
        }
    }

    /// Runs `f` on the store, on a blocking thread unless there is no backend.
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> T + Send + 'static,
    ) -> Result<T, DaemonError> {
        let Some(mut store) = self.store.take() else {
            return Err(DaemonError::Runtime {
                what: "store busy",
                source: std::io::Error::other("the store is in use by another task"),
            });
        };
        if store.health().backend == "none" {
            let r = f(&mut *store);
            self.store = Some(store);
            return Ok(r);
        }
        let (store, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut *store);
            (store, r)
        })
        .await
        .map_err(|e| DaemonError::Runtime {
            what: "store task failed",
            source: std::io::Error::other(e.to_string()),
        })?;
        self.store = Some(store);
        Ok(r)
    }

    /// One group commit of the batch, on a blocking thread.
    async fn commit(&mut self) -> Result<(), DaemonError> {
        let batch = std::mem::take(&mut self.batch);
        let (mut batch, res) = self
            .with_store(move |store| {
                let r = store.commit(&batch);
                (batch, r)
            })
            .await?;
        batch.clear();
        self.batch = batch;
        let status = res.inspect_err(|e| self.commit_failed(e))?;
        self.check_store(Some(status)).await
    }

    /// Logs store outages and returns, and re-writes the whole queue when the backend lost
    /// acknowledged changes (Redis restarted empty or from an old snapshot).
    async fn check_store(&mut self, last: Option<CommitStatus>) -> Result<(), DaemonError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let health = store.health();
        let reachable = match last {
            Some(CommitStatus::Durable) => true,
            Some(CommitStatus::Buffered) => false,
            None => health.connected,
        };
        if reachable && self.store_buffered {
            info!(
                backend = health.backend,
                "store reachable again: buffered changes written"
            );
            let _ = notify::status("store reachable");
            self.store_buffered = false;
        } else if !reachable && !self.store_buffered {
            warn!(
                backend = health.backend,
                pending = health.pending_keys,
                error = health.last_error.as_deref().unwrap_or(""),
                "store unreachable: buffering changes until it returns"
            );
            let _ = notify::status("store unreachable, buffering changes");
            self.store_buffered = true;
        }
        if health.needs_full_resync {
            if !self.resyncable {
                warn!(
                    backend = health.backend,
                    "the store lost acknowledged changes and cannot be re-synced"
                );
                return Ok(());
            }
            let (mut snapshot, requests) = self.queue_snapshot();
            if let Some((r, _)) = &self.reporter {
                for f in r.tracked() {
                    snapshot.track_report_file(f);
                }
            }
            warn!(
                backend = health.backend,
                requests, "the store lost acknowledged changes: writing the whole queue again"
            );
            let status = self
                .with_store(move |store| store.full_resync(&snapshot))
                .await??;
            info!(?status, "store re-synced");
        }
        Ok(())
    }

    /// The queue as the store should hold it, from the engine: every request, and the client
    /// each running one runs on; with the number of requests. Changes of turns not committed
    /// yet are in it too: they are idempotent (a `New` or `Assigned` written twice, a
    /// `Finished` of a request already absent), so their commit after the re-sync is harmless.
    fn queue_snapshot(&self) -> (Batch, usize) {
        let mut b = Batch::new();
        let mut n = 0;
        for (r, placed) in self.engine.requests() {
            n += 1;
            // The data as it arrived: an upstream-mode consistent-hash rewrite is redone at
            // recovery, so storing the rewritten data would hash the hashed value again.
            let mut stored = r.clone();
            if let Some(d) = self.engine.stored_data(r.key())
                && *d != *r.data
            {
                stored.data = d.into();
            }
            b.push(PersistOp::New(stored));
            if let Placed::Running(c) = placed
                && let Some(client) = self.engine.client_name(c)
            {
                b.push(PersistOp::Assigned {
                    key: r.key(),
                    client: client.to_owned(),
                });
            }
        }
        (b, n)
    }

    /// Waits (at most [`OWNER_DRAIN`]) for held requests' owner lookups, so they are in the
    /// last commit. Not after a failed commit: nothing can be committed any more.
    async fn drain_held(&mut self) {
        let held = match &self.owners {
            Some(o) if !o.is_idle() && !self.store_failed => o.held_requests(),
            _ => return,
        };
        info!(
            requests = held,
            "waiting for file owner lookups before stopping"
        );
        let waited = tokio::time::timeout(OWNER_DRAIN, async {
            while let Some(o) = self.owners.as_mut().filter(|o| !o.is_idle()) {
                let r = o.next().await;
                self.owner_results(r);
            }
        })
        .await;
        if waited.is_err() {
            let left = self.owners.as_ref().map_or(0, |o| o.held_requests());
            warn!(
                requests = left,
                "file owner lookups did not end: stopping without these requests (Lustre \
                 still has them as started; a client's unanswered queue can be sent again)"
            );
        }
    }

    /// After the loop: last commit, last replies, unregistration. Fails when the store is left
    /// behind the acknowledged queue (Redis away through the whole [`STOP_STORE_WAIT`], or a
    /// second stop signal during that wait).
    async fn finish(&mut self, signals: &mut Signals) -> Result<(), DaemonError> {
        let _ = notify::stopping();
        self.drain_held().await;
        if let Err(e) = self.settle().await {
            error!("final commit: {e}");
        }
        for (_, c) in self.conns.drain() {
            if let Some(j) = c.close() {
                self.flushing.push(j);
            }
        }
        let writers = std::mem::take(&mut self.flushing);
        let _ = tokio::time::timeout(FINAL_FLUSH, async {
            for j in writers {
                let _ = j.await;
            }
        })
        .await;
        if let Some(ct) = self.ct.take() {
            match ct.into_inner().unregister() {
                Ok(()) => info!("unregistered from Lustre"),
                Err(e) => warn!("unregister: {e}"),
            }
        }
        if let Some(h) = self.relinking.take() {
            // A registration that succeeds now must not leave an agent nobody reads: its
            // result is dropped here, which unregisters it.
            let _ = tokio::time::timeout(FINAL_FLUSH, h).await;
        }
        let flushed = self.wait_for_store(signals).await;
        info!("stopped");
        flushed
    }

    /// Waits (at stop) until a store that can lose buffered changes has taken them all,
    /// re-syncing it if it came back empty, for at most [`STOP_STORE_WAIT`].
    async fn wait_for_store(&mut self, signals: &mut Signals) -> Result<(), DaemonError> {
        if !self.resyncable {
            return Ok(());
        }
        // Unreachable with nothing buffered is not behind: nothing would be lost.
        let behind = |h: &crate::store::StoreHealth| h.pending_keys > 0 || h.needs_full_resync;
        let deadline = tokio::time::Instant::now() + STOP_STORE_WAIT;
        let mut said = false;
        let mut interrupted = false;
        loop {
            let Some(h) = self.store.as_ref().map(|s| s.health()) else {
                return Ok(());
            };
            if !behind(&h) {
                if said {
                    info!(backend = h.backend, "store reachable: every change written");
                }
                return Ok(());
            }
            let give_up = tokio::time::Instant::now() >= deadline;
            if give_up || interrupted {
                error!(
                    backend = h.backend,
                    keys = h.pending_keys,
                    "stopping with changes the store never took"
                );
                return Err(DaemonError::StoreBehind {
                    backend: h.backend,
                    keys: h.pending_keys,
                });
            }
            if !said {
                warn!(
                    backend = h.backend,
                    keys = h.pending_keys,
                    "store unreachable at stop: waiting up to {}s for it to take the buffered changes",
                    STOP_STORE_WAIT.as_secs()
                );
                let _ = notify::status("stopping: waiting for the store");
                said = true;
            }
            if let Err(e) = self.check_store(None).await {
                warn!("store at stop: {e}");
            }
            // A second stop signal ends the wait (upstream: a second signal exits at once).
            tokio::select! {
                () = tokio::time::sleep(STORE_CHECK) => {}
                () = signals.any() => {
                    warn!("second stop signal: not waiting for the store");
                    interrupted = true;
                }
            }
        }
    }
}

/// The reply to a `queue` command.
fn queue_reply(s: &coordinatool_sched::QueueSummary) -> Reply {
    for (i, e) in &s.errors {
        warn!(item = i, "queue: item refused: {e}");
    }
    Reply::Queue(QueueReply {
        enqueued: u64::from(s.enqueued),
        skipped: u64::from(s.skipped),
        status: if s.errors.is_empty() { 0 } else { libc::EINVAL },
        error: (!s.errors.is_empty()).then(|| "Error while parsing hsm action items".to_owned()),
    })
}

/// Hsm data for logs: printable bytes, `_` for others, at most 127 characters.
fn printable(data: &[u8]) -> String {
    let end = data.len().min(127);
    data[..end]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod outbox_tests {
    use super::*;

    fn two_clients() -> (ClientId, ClientId) {
        let mut e = Engine::new(coordinatool_sched::Config::default()).expect("engine");
        (e.connect("a:1", Time(1)), e.connect("b:2", Time(1)))
    }

    fn sends(out: &[Out]) -> Vec<(ClientId, String)> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send(id, m) => Some((*id, String::from_utf8_lossy(m).into_owned())),
                Out::Close(_) => None,
            })
            .collect()
    }

    #[test]
    fn replies_of_a_turn_are_coalesced_per_connection_in_order() {
        let (a, b) = two_clients();
        let mut o = Outbox::default();
        o.buf(a).extend_from_slice(b"{1}");
        o.push(Out::Send(b, b"{x}".to_vec()));
        o.push(Out::Send(a, b"{2}".to_vec()));
        o.buf(b).extend_from_slice(b"{y}");
        o.push(Out::Close(b));
        let out = o.take();
        assert_eq!(
            sends(&out),
            vec![(a, "{1}{2}".to_owned()), (b, "{x}{y}".to_owned())]
        );
        assert!(matches!(out.last(), Some(Out::Close(id)) if *id == b));
        assert_eq!(out.len(), 3);
        // A new turn starts empty.
        assert!(o.take().is_empty());
        o.push(Out::Send(a, b"{3}".to_vec()));
        assert_eq!(sends(&o.take()), vec![(a, "{3}".to_owned())]);
    }

    #[test]
    fn a_full_buffer_is_closed_so_big_replies_stay_separate() {
        let (a, _) = two_clients();
        let mut o = Outbox::default();
        let big = vec![b'x'; OUT_SEGMENT];
        o.push(Out::Send(a, big.clone()));
        o.push(Out::Send(a, b"{s}".to_vec()));
        o.push(Out::Send(a, b"{t}".to_vec()));
        let s = sends(&o.take());
        assert_eq!(s.len(), 2, "the full buffer takes nothing more");
        assert_eq!(s[0].1.len(), OUT_SEGMENT);
        assert_eq!(s[1].1, "{s}{t}");
    }
}
