//! The simulator daemon: one per simulated filesystem, holding the MDT model and the file
//! side behind the Unix socket of [`crate::rpc`].
//!
//! Threads: an event loop (`evloop`) that accepts the connections and serves the ordinary
//! calls of all of them, a thread for each connection that registered a copytool (a stream
//! reader that notices the copytool going away) or waits on a purge, one writer per copytool
//! stream (so a copytool that stops reading blocks only its own pipe, as in the kernel), and a
//! ticker that runs the coordinators. The wall clock is read in one place, [`now_secs`]. The
//! ticker runs a scan soon after a request, completion or registration asks for one (the real
//! coordinator waits for its next 1-second wake-up), at most one per [`SCAN_COALESCE`] so
//! that a burst of calls makes one scan, and every second otherwise; it saves the FID index
//! (at most every 2 seconds, writing a snapshot without the lock) when something the index
//! records changed. A scanner thread rescans the mount every 10 seconds for new, renamed and
//! unlinked files: it lists and stats the tree without the lock and applies the difference
//! under it, so a large mount does not stall the calls.
//!
//! Each turn of the event loop serves every complete call read from every ready connection
//! under one acquisition of the lock, then sends each connection its replies with one write:
//! under load one wake-up serves the calls of many clients. A client that crashes mid-call,
//! stops reading or sends garbage only loses its own connection: its half-read request is
//! dropped, and a copytool stream that closes is removed from its mount's broadcast group.
//! In pipelined mode ([`ServeOptions::pipelined`]) a one-way copy start's failure is kept by
//! `(MDT, cookie)` and returned by the action's next progress or end, which then completes
//! the request with it (see [`crate::rpc`], "Pipelined mode").

use std::collections::HashMap;
use std::io::{self, BufRead as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction};
use tracing::{debug, info, warn};

use crate::fs::{FsError, SimFs};
use crate::mdt::{Caller, Cluster, Errno, HsmExtent, Progress, UserRequest};
use crate::rpc::{self, Fid, Reply, Request, Response, RpcError};

mod evloop;

/// Shortest interval between two coordinator scans woken by calls: calls arriving meanwhile
/// are served by the same scan (fewer, fuller HALs), for at most this much added latency.
pub const SCAN_COALESCE: Duration = Duration::from_millis(1);

/// Interval of the scanner thread's rescans of the mount.
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// Epoch seconds now: the daemon's only clock read.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Filesystem name (`lustre` by default; at most 8 characters like Lustre's).
    pub fsname: String,
    /// Number of MDTs (2 by default).
    pub mdts: u32,
    /// Start the coordinators enabled (`hsm_control=enabled`), the default.
    pub enabled: bool,
    /// The simulated client mount is read-only (`mount -o ro`): HSM requests other than
    /// RESTORE and releases get `EROFS`.
    pub read_only: bool,
    /// Pipelined mode (`serve --pipelined`), announced in the Hello reply: the stand-in sends
    /// copy starts one way and a failed start is reported by the action's next progress or
    /// end (see `crate::rpc`, "Pipelined mode"). Off by default (exact Lustre behaviour).
    pub pipelined: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            fsname: "lustre".to_owned(),
            mdts: 2,
            enabled: true,
            read_only: false,
            pipelined: false,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The mount directory could not be prepared.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The socket could not be bound.
    #[error("bind {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// Invalid option.
    #[error("invalid option: {0}")]
    Option(String),
    /// The event loop's epoll instance or wake-up eventfd could not be created.
    #[error("event loop: {0}")]
    EventLoop(io::Error),
}

struct StreamTx {
    id: u64,
    tx: Sender<Arc<Vec<u8>>>,
}

struct Core {
    cluster: Cluster,
    fs: SimFs,
    /// Copytool streams per client mount UUID.
    streams: HashMap<String, Vec<StreamTx>>,
    next_stream: u64,
    /// The FID index differs from the saved one.
    dirty: bool,
    /// Pipelined mode (announced by Hello).
    pipelined: bool,
    /// Errors of one-way copy starts by `(MDT, cookie)`, returned by the action's next
    /// progress or completion (pipelined mode).
    failed_starts: HashMap<(u32, u64), i32>,
}

/// Beyond this many kept start failures, those of requests no longer active are dropped (a
/// copytool that never ends its action must not grow the map forever).
const FAILED_STARTS_TRIM: usize = 4096;

struct Shared {
    core: Mutex<Core>,
    kick: Condvar,
    /// A call woke the ticker and it has not started its scan yet: later calls need not wake
    /// it again (one futex wake per scan instead of one per call).
    kicked: AtomicBool,
    stop: AtomicBool,
    mount: PathBuf,
    read_only: bool,
    /// The coordinator thread is frozen ([`Daemon::pause_coordinator`]).
    paused: AtomicBool,
    /// Live copytool-stream writer threads (stop lets them flush the shutdown message).
    writers: AtomicUsize,
    conns: Mutex<Conns>,
    /// Wakes the event loop (stop).
    waker: evloop::Waker,
}

/// Client connections served by threads (those of the event loop close when it ends), so
/// that stopping the daemon closes them all.
#[derive(Default)]
struct Conns {
    next: u64,
    /// A clone of each open socket, and whether it became a copytool stream.
    open: HashMap<u64, (UnixStream, bool)>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panicking handler must not take the whole daemon down with a poisoned lock.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the ticker for a scan, unless a wake-up is already pending (the ticker clears
    /// `kicked` under the lock before it reads the model, so a change made after that is
    /// followed by a new wake-up).
    fn kick_ticker(&self) {
        if !self.kicked.swap(true, Ordering::AcqRel) {
            self.kick.notify_all();
        }
    }

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running daemon; [`Daemon::stop`] shuts it down (also on drop).
pub struct Daemon {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    socket: PathBuf,
    /// Dropped to stop the scanner thread at once.
    scanner_stop: Option<Sender<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("mount", &self.shared.mount)
            .finish()
    }
}

impl Daemon {
    /// Prepares `mount` (FID index, `.lustre/fid`), binds its socket and starts serving.
    pub fn start(mount: &Path, opts: &ServeOptions) -> Result<Daemon, ServeError> {
        if opts.fsname.is_empty() || opts.fsname.len() > 8 || opts.fsname.contains(['.', '/', '-'])
        {
            return Err(ServeError::Option(format!(
                "fsname {:?}: 1 to 8 characters, no '.', '/' or '-'",
                opts.fsname
            )));
        }
        if opts.mdts == 0 || opts.mdts > 16 {
            return Err(ServeError::Option(format!(
                "mdts {}: between 1 and 16",
                opts.mdts
            )));
        }
        let now = now_secs();
        let mut cluster = if opts.enabled {
            Cluster::new_enabled(&opts.fsname, opts.mdts, now)
        } else {
            Cluster::new(&opts.fsname, opts.mdts)
        };
        let fs = SimFs::open(mount, &mut cluster)?;
        let mount = fs.root().to_owned();
        let socket = rpc::socket_path(&mount);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|source| ServeError::Bind {
            path: socket.clone(),
            source,
        })?;
        let epoll = evloop::Epoll::new().map_err(ServeError::EventLoop)?;
        let waker = evloop::Waker::new().map_err(ServeError::EventLoop)?;
        epoll
            .watch(&listener, &waker)
            .map_err(ServeError::EventLoop)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                cluster,
                fs,
                streams: HashMap::new(),
                next_stream: 0,
                dirty: true,
                pipelined: opts.pipelined,
                failed_starts: HashMap::new(),
            }),
            kick: Condvar::new(),
            kicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            mount: mount.clone(),
            read_only: opts.read_only,
            paused: AtomicBool::new(false),
            writers: AtomicUsize::new(0),
            conns: Mutex::new(Conns::default()),
            waker,
        });
        info!(mount = %mount.display(), fsname = %opts.fsname, mdts = opts.mdts, "simulated Lustre serving");
        let s1 = shared.clone();
        let accept = thread::Builder::new()
            .name("sim-loop".into())
            .spawn(move || evloop::run(&s1, &epoll, &listener))
            .expect("spawning a thread");
        let s2 = shared.clone();
        let ticker = thread::Builder::new()
            .name("sim-cdt".into())
            .spawn(move || ticker_loop(&s2))
            .expect("spawning a thread");
        let (scanner_stop, stop_rx) = mpsc::channel();
        let s3 = shared.clone();
        let scanner = thread::Builder::new()
            .name("sim-scan".into())
            .spawn(move || scanner_loop(&s3, &stop_rx))
            .expect("spawning a thread");
        Ok(Daemon {
            shared,
            threads: vec![accept, ticker, scanner],
            socket,
            scanner_stop: Some(scanner_stop),
        })
    }

    /// The mount root served.
    pub fn mount(&self) -> &Path {
        &self.shared.mount
    }

    /// Runs `f` on the model and file side (tests, embedding).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut Cluster, &mut SimFs) -> R) -> R {
        let mut core = self.shared.lock();
        let core = &mut *core;
        let r = f(&mut core.cluster, &mut core.fs);
        core.dirty = true;
        self.shared.kick.notify_all();
        r
    }

    /// Freezes (`true`) or resumes the coordinator thread: while frozen no scan runs, so
    /// nothing is dispatched, timed out or purged (tests that need the coordinator busy or
    /// a purge left waiting; debugging).
    pub fn pause_coordinator(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
        self.shared.kick.notify_all();
    }

    /// Stops: copytools get `KUC_MSG_SHUTDOWN`, the index is saved, every client connection
    /// is closed (a stopped daemon answers nothing), the socket removed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut core = self.shared.lock();
            let msg = Arc::new(rpc::kuc_shutdown().to_vec());
            for s in core.streams.values().flatten() {
                let _ = s.tx.send(msg.clone());
            }
            core.streams.clear();
        }
        self.scanner_stop = None;
        self.shared.kick.notify_all();
        // Request/response connections: nothing more is answered (the event loop closes its
        // own as it ends).
        self.shared.waker.wake();
        for (s, copytool) in self.shared.conns().open.values() {
            if !*copytool {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        // Copytool streams: their writers flush the shutdown message first (bounded, for a
        // copytool that stopped reading), then they are closed too.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.shared.writers.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
        for (s, _) in self.shared.conns().open.values() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut self.shared.conns().threads);
        for t in conns {
            let _ = t.join();
        }
        // Every thread is gone: no snapshot of the ticker can overwrite this one.
        let core = self.shared.lock();
        if let Err(e) = core.fs.save(&core.cluster) {
            warn!(error = %e, "saving the FID index");
        }
        drop(core);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn ticker_loop(shared: &Arc<Shared>) {
    let mut last_save = 0u64;
    let mut last_scan = std::time::Instant::now();
    let mut core = shared.lock();
    while !shared.stop.load(Ordering::SeqCst) {
        let since = last_scan.elapsed();
        if since < SCAN_COALESCE {
            // Woken again right after a scan: let the calls of the next moment gather.
            drop(core);
            thread::sleep(SCAN_COALESCE - since);
            core = shared.lock();
        }
        // Under the lock, before reading the model: calls from now on wake the ticker again.
        shared.kicked.store(false, Ordering::Release);
        last_scan = std::time::Instant::now();
        let now = now_secs();
        let paused = shared.paused.load(Ordering::SeqCst);
        if !paused {
            let active = |c: &Cluster| c.mdts().iter().map(|m| m.active_count()).sum::<u64>();
            let before = active(&core.cluster);
            core.cluster.tick(now);
            let sent = deliver(&mut core, now);
            // A HAL sent marks its files `exists`; a timed-out request changes their state.
            if sent > 0 || active(&core.cluster) != before {
                core.dirty = true;
            }
            // A purge writer waits for the thread's idle point.
            shared.kick.notify_all();
        }
        if core.dirty && now >= last_save + 2 {
            last_save = now;
            core.dirty = false;
            let snapshot = core.fs.snapshot(&core.cluster);
            drop(core);
            let saved = snapshot.write();
            core = shared.lock();
            if let Err(e) = saved {
                warn!(error = %e, "saving the FID index");
                core.dirty = true;
            }
        }
        if !paused && core.cluster.wants_scan() {
            continue;
        }
        if shared.stop.load(Ordering::SeqCst) {
            // Set while the lock was released (coalescing, saving): its wake-up is gone.
            break;
        }
        // A call's wake-up sent while the lock was released for the save found nobody
        // waiting: the next one must be sent.
        shared.kicked.store(false, Ordering::Release);
        core = shared
            .kick
            .wait_timeout(core, Duration::from_millis(1000))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Rescans the mount every [`RESCAN_EVERY`] until `stop` is dropped: the walk (a stat per
/// file) runs without the lock, only the difference is applied under it.
fn scanner_loop(shared: &Arc<Shared>, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(RESCAN_EVERY) {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let walk = match SimFs::walk(&shared.mount) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "rescanning the mount");
                continue;
            }
        };
        let wake = {
            let mut core = shared.lock();
            let c = &mut *core;
            if let Err(e) = c.fs.apply_scan(now_secs(), walk, &mut c.cluster) {
                warn!(error = %e, "rescanning the mount");
            }
            if c.fs.take_changed() {
                c.dirty = true;
            }
            c.cluster.wants_scan()
        };
        if wake {
            shared.kick.notify_all();
        }
    }
}

/// Writes pending HALs into the copytool streams of their agent's mount (broadcast, §6);
/// returns how many were dispatched.
fn deliver(core: &mut Core, now: u64) -> usize {
    let mut n = 0;
    while let Some(d) = core.cluster.poll_dispatch() {
        n += 1;
        let msg = Arc::new(rpc::kuc_action_list(&d.to_hal().encode()));
        let streams = core.streams.entry(d.agent.to_string()).or_default();
        streams.retain(|s| s.tx.send(msg.clone()).is_ok());
        if streams.is_empty() {
            debug!(agent = %d.agent, "no copytool stream left: agent unregistered");
            core.cluster.send_failed(now, &d, Errno::EPIPE);
        }
    }
    n
}

/// Serves a connection the event loop handed over (blocking socket): `first` is its next
/// call (a registration or a waiting purge), `leftover` what the client sent after it.
fn connection(
    shared: &Arc<Shared>,
    mut stream: UnixStream,
    conn_id: u64,
    first: Request,
    leftover: Vec<u8>,
) {
    // One read per frame (length and body together). A client sends its next call only after
    // the reply, and a copytool nothing after its registration, so nothing buffered is lost.
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader =
        io::BufReader::with_capacity(8192, io::Read::chain(io::Cursor::new(leftover), read_half));
    let mut out = Vec::with_capacity(256);
    let mut first = Some(first);
    loop {
        let next = match first.take() {
            Some(r) => Ok(Some(r)),
            None => rpc::read_frame_buffered(&mut reader),
        };
        let req: Request = match next {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e @ (RpcError::Json(_) | RpcError::Malformed(_))) => {
                debug!(error = %e, "bad request");
                let _ = rpc::write_frame(&mut stream, &Response::Err(libc::EPROTO));
                return;
            }
            Err(_) => return,
        };
        if let Request::Register { uuid, archives } = &req {
            // The stream joins the broadcast group under the same lock as the registration,
            // before the reply: a HAL dispatched as soon as the client sees the reply must
            // find it (else the agent would look gone). Messages queue until the writer runs.
            let (tx, rx) = mpsc::channel::<Arc<Vec<u8>>>();
            let r = {
                let mut core = shared.lock();
                if shared.stop.load(Ordering::SeqCst) {
                    let _ = rpc::write_frame(&mut stream, &Response::Err(libc::ESHUTDOWN));
                    return;
                }
                let r = core.cluster.register(uuid, archives).map(|()| {
                    core.next_stream += 1;
                    let id = core.next_stream;
                    core.streams
                        .entry(uuid.clone())
                        .or_default()
                        .push(StreamTx { id, tx });
                    id
                });
                if r.is_ok() {
                    // Under the lock stop takes to send the shutdown message: a stopping
                    // daemon waits for this writer and does not close the socket as a plain
                    // connection before the message is out.
                    shared.writers.fetch_add(1, Ordering::SeqCst);
                    if let Some(c) = shared.conns().open.get_mut(&conn_id) {
                        c.1 = true;
                    }
                }
                r
            };
            shared.kick.notify_all();
            match r {
                Ok(id) => {
                    if rpc::write_frame(&mut stream, &Response::Ok(Reply::Unit)).is_ok() {
                        copytool_stream(shared, stream, uuid, id, rx);
                    } else {
                        remove_stream(shared, uuid, id);
                        shared.writers.fetch_sub(1, Ordering::SeqCst);
                    }
                    return;
                }
                Err(e) => {
                    if rpc::write_frame(&mut stream, &Response::Err(e.code())).is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if let Request::SetParam { pattern, value } = &req
            && value.starts_with("purge")
        {
            let resp = set_param_waiting(shared, &stream, pattern, value);
            if rpc::write_frame(&mut stream, &resp).is_err() {
                return;
            }
            continue;
        }
        // This call and every complete one queued behind it are served under one lock
        // acquisition, their replies sent with one write.
        out.clear();
        let mut wake = false;
        {
            let mut core = shared.lock();
            let mut req = req;
            loop {
                wake |= serve_call(shared, &mut core, req, &mut out);
                match rpc::decode_frame::<Request>(reader.buffer()) {
                    Ok(Some((next, n))) if !is_special(&next) => {
                        reader.consume(n);
                        req = next;
                    }
                    // Incomplete, special or bad: the next turn of the outer loop reads it.
                    _ => break,
                }
            }
        }
        if wake {
            shared.kick_ticker();
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Calls the connection loop serves itself (registration, waiting purge), not [`serve_call`].
fn is_special(req: &Request) -> bool {
    match req {
        Request::Register { .. } => true,
        Request::SetParam { value, .. } => value.starts_with("purge"),
        _ => false,
    }
}

/// Serves one ordinary call under the lock, appending its reply frame (if it has one) to
/// `out`; returns true when the coordinator thread should be woken.
fn serve_call(shared: &Shared, core: &mut Core, req: Request, out: &mut Vec<u8>) -> bool {
    let effect = Effect::of(&req);
    let reply = req.expects_reply();
    let r = handle(core, &shared.mount, shared.read_only, req);
    let model_changed = match effect {
        Effect::Attrs | Effect::Control => true,
        Effect::AttrsOnError => matches!(r, Response::Err(_)),
        Effect::Query => false,
    };
    if core.fs.take_changed() || model_changed {
        core.dirty = true;
    }
    if reply && let Err(e) = rpc::encode_frame(out, &r) {
        warn!(error = %e, "reply not sent");
        let _ = rpc::encode_frame(out, &Response::Err(libc::EOVERFLOW));
    }
    effect == Effect::Control || core.cluster.wants_scan()
}

/// What a call may change besides the file side (which [`SimFs::take_changed`] reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Nothing the coordinator or the index cares about.
    Query,
    /// HSM attributes of files, saved in the index.
    Attrs,
    /// HSM attributes, only when it fails (a failed archive start completes the request).
    AttrsOnError,
    /// Rare calls that may give the coordinator work without the model asking for a scan
    /// (tunables, agents, requests): the ticker is woken in any case.
    Control,
}

impl Effect {
    fn of(req: &Request) -> Effect {
        match req {
            Request::Progress { flags, .. }
                if HsmProgressFlags(*flags).contains(HsmProgressFlags::COMPLETED) =>
            {
                Effect::Attrs
            }
            Request::CopyStart { .. } => Effect::AttrsOnError,
            Request::StateSet { .. } | Request::Release { .. } | Request::Import { .. } => {
                Effect::Attrs
            }
            Request::HsmRequest { .. }
            | Request::ImplicitRestore { .. }
            | Request::SetParam { .. }
            | Request::Unregister { .. }
            | Request::Register { .. } => Effect::Control,
            _ => Effect::Query,
        }
    }
}

/// Serves one registered copytool: a writer thread feeds it KUC messages while this thread
/// waits for the connection to close. The caller counted the writer in `shared.writers`.
fn copytool_stream(
    shared: &Arc<Shared>,
    stream: UnixStream,
    uuid: &str,
    id: u64,
    rx: mpsc::Receiver<Arc<Vec<u8>>>,
) {
    let Ok(mut writer) = stream.try_clone() else {
        remove_stream(shared, uuid, id);
        shared.writers.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    debug!(uuid, id, "copytool stream registered");
    let sh = shared.clone();
    let w = thread::Builder::new()
        .name("sim-kuc".into())
        .spawn(move || {
            for msg in rx {
                if writer.write_all(&msg).is_err() {
                    break;
                }
            }
            // Out of the group (daemon stopping, or the copytool gone): the copytool reads
            // EOF after the last message, even if the stream was never sent a shutdown.
            let _ = writer.shutdown(std::net::Shutdown::Write);
            sh.writers.fetch_sub(1, Ordering::SeqCst);
        });
    if w.is_err() {
        shared.writers.fetch_sub(1, Ordering::SeqCst);
    }
    // Nothing more is expected from the copytool: EOF (or an error) means it is gone.
    let mut buf = [0u8; 64];
    let mut reader = &stream;
    while matches!(io::Read::read(&mut reader, &mut buf), Ok(n) if n > 0) {}
    remove_stream(shared, uuid, id);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if let Ok(w) = w {
        let _ = w.join();
    }
    debug!(uuid, id, "copytool stream closed");
}

/// Takes copytool stream `id` of `uuid` out of the broadcast group.
fn remove_stream(shared: &Shared, uuid: &str, id: u64) {
    let mut core = shared.lock();
    if let Some(v) = core.streams.get_mut(uuid) {
        v.retain(|s| s.id != id);
    }
}

fn fs_err(e: FsError) -> i32 {
    e.errno().code()
}

/// True if the peer of `stream` closed its end (the `lctl` waiting on a purge was killed).
fn peer_gone(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut b = 0u8;
    // SAFETY: a 1-byte peek into a local buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut b).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
        || (n < 0 && {
            let e = io::Error::last_os_error().raw_os_error();
            e != Some(libc::EAGAIN) && e != Some(libc::EINTR)
        })
}

/// `lctl set_param ...hsm_control=purge...`: each matching parameter is written in turn and
/// a purge blocks the writer until the coordinator thread was idle (§9.7). A writer that goes
/// away meanwhile (lctl interrupted) abandons the waiting purge: `EINTR`.
fn set_param_waiting(shared: &Shared, stream: &UnixStream, pattern: &str, value: &str) -> Response {
    let mut core = shared.lock();
    let names = core.cluster.matching_params(pattern);
    if names.is_empty() {
        return Response::Ok(Reply::SetParam {
            results: vec![(pattern.to_owned(), libc::ENOENT)],
        });
    }
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let mut r = core
            .cluster
            .set_param(now_secs(), &name, value)
            .into_iter()
            .next()
            .map_or(libc::ENOENT, |(_, r)| r.err().map_or(0, Errno::code));
        let mdt = name
            .strip_prefix("mdt.")
            .and_then(|n| n.split_once('.'))
            .and_then(|(m, _)| core.cluster.mdt_index(m));
        core.dirty = true;
        shared.kick.notify_all();
        let mut gone = false;
        while let Some(i) = mdt
            && r == 0
            && core
                .cluster
                .mdt(i)
                .is_some_and(|m| m.purge_status() == crate::mdt::PurgeStatus::Waiting)
        {
            gone = shared.stop.load(Ordering::SeqCst) || peer_gone(stream);
            if gone {
                if let Some(m) = core.cluster.mdt_mut(i)
                    && let Err(e) = m.interrupt_purge()
                {
                    r = e.code();
                }
                break;
            }
            core = shared
                .kick
                .wait_timeout(core, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        results.push((name, r));
        if gone {
            break;
        }
    }
    Response::Ok(Reply::SetParam { results })
}

fn handle(core: &mut Core, mount: &Path, read_only: bool, req: Request) -> Response {
    match handle_inner(core, mount, read_only, req) {
        Ok(r) => Response::Ok(r),
        Err(e) => Response::Err(e),
    }
}

fn handle_inner(
    core: &mut Core,
    mount: &Path,
    read_only: bool,
    req: Request,
) -> Result<Reply, i32> {
    let now = now_secs();
    let Core {
        cluster,
        fs,
        pipelined,
        failed_starts,
        ..
    } = core;
    match req {
        Request::Hello => Ok(Reply::Hello {
            fsname: cluster.fsname().to_owned(),
            mdts: cluster.mdts().len() as u32,
            pipelined: *pipelined,
        }),
        Request::Register { .. } => Err(libc::EPROTO),
        Request::Unregister { uuid } => {
            cluster.unregister(&uuid);
            Ok(Reply::Unit)
        }
        Request::CopyStart {
            fid: Fid(fid),
            cookie,
            offset,
            archive,
            one_way,
            stat_now,
        } => {
            // What the kernel sends at a copy start: progress at the start offset, no flags.
            let start = Progress {
                fid,
                cookie,
                extent: HsmExtent::new(offset, 0),
                flags: HsmProgressFlags::default(),
                errval: 0,
                data_version: None,
            };
            if one_way {
                // No data version to return: the copytool read its own stamp, compared at the
                // end. A failure waits for the action's next call.
                if let Err(e) = cluster.progress(now, &start) {
                    if failed_starts.len() >= FAILED_STARTS_TRIM {
                        failed_starts.retain(|&(m, c), _| {
                            cluster
                                .mdt(m)
                                .is_some_and(|m| m.active_request(c).is_some())
                        });
                    }
                    failed_starts.insert((cluster.mdt_of(fid), cookie), e.code());
                    return Err(e.code());
                }
                return Ok(Reply::Unit);
            }
            let mut version = 0;
            if archive {
                let refreshed = match stat_now {
                    Some(st) => fs.refresh_from(fid, st.mtime, st.mtime_nsec, st.size, cluster),
                    None => fs.refresh(fid, cluster),
                };
                match refreshed {
                    Ok(v) => version = v,
                    Err(e) => {
                        // The kernel reports the failure as a completed, retryable error.
                        let err = fs_err(e);
                        let p = Progress {
                            flags: HsmProgressFlags::COMPLETED | HsmProgressFlags::RETRY,
                            errval: err as u16,
                            ..start
                        };
                        let _ = cluster.progress(now, &p);
                        return Err(err);
                    }
                }
            }
            cluster.progress(now, &start).map_err(Errno::code)?;
            Ok(Reply::DataVersion { version })
        }
        Request::Progress {
            fid: Fid(fid),
            cookie,
            offset,
            length,
            flags,
            mut errval,
            start_data_version,
            start_stamp,
            stat_now,
        } => {
            let flags = HsmProgressFlags(flags);
            let completed = flags.contains(HsmProgressFlags::COMPLETED);
            let mdt = cluster.mdt_of(fid);
            // A one-way start that failed: its error is this call's, and an end completes
            // the request with it (what the copytool would have done after a failed begin).
            let failed_start = if completed {
                failed_starts.remove(&(mdt, cookie))
            } else {
                failed_starts.get(&(mdt, cookie)).copied()
            };
            if let Some(e) = failed_start {
                if !completed {
                    return Err(e);
                }
                if errval == 0 {
                    errval = u16::try_from(e).unwrap_or(libc::EIO as u16);
                }
            }
            let active = cluster.mdt(mdt).and_then(|m| m.active_request(cookie));
            let mut p = Progress {
                fid,
                cookie,
                extent: HsmExtent::new(offset, length),
                flags,
                errval,
                data_version: None,
            };
            let mut busy = false;
            if completed
                && errval == 0
                && let Some(a) = &active
                && a.item.action == HsmAction::Archive
            {
                let v = match stat_now {
                    Some(st) => {
                        fs.refresh_from(a.item.fid, st.mtime, st.mtime_nsec, st.size, cluster)
                    }
                    None => fs.refresh(a.item.fid, cluster),
                }
                .map_err(fs_err)?;
                let stamp_changed =
                    start_stamp.is_some_and(|s| fs.data_stamp(a.item.fid) != Some(s));
                if stamp_changed || start_data_version.is_some_and(|s| s != v) {
                    // File changed while being archived: EBUSY without RETRY.
                    p.errval = libc::EBUSY as u16;
                    p.flags = HsmProgressFlags::COMPLETED;
                    busy = true;
                } else {
                    p.data_version = Some(v);
                }
            }
            let is_restore = active
                .as_ref()
                .is_some_and(|a| a.item.action == HsmAction::Restore);
            let file = active.as_ref().map(|a| a.item.fid);
            let r = cluster.progress_with(now, &p, |f, vol| {
                if f == vol {
                    return Err(Errno::ENOENT);
                }
                fs.commit_volatile(f, vol).map_err(|e| e.errno())
            });
            if completed && is_restore && file != Some(fid) {
                // Failed restores leave their volatile behind; a committed one is gone already.
                fs.discard_volatile(fid);
            }
            if let Some(e) = failed_start {
                return Err(e);
            }
            r.map_err(Errno::code)?;
            if busy {
                return Err(libc::EBUSY);
            }
            Ok(Reply::Unit)
        }
        Request::HsmRequest {
            action,
            archive_id,
            flags,
            items,
            data,
            uid,
            gid,
        } => {
            let action = HsmUserAction::from_code(action).ok_or(libc::EINVAL)?;
            for (Fid(f), _, _) in &items {
                // Notice writes before deciding what is needed (dirty files).
                let _ = fs.refresh(*f, cluster);
            }
            let req = UserRequest {
                action,
                archive_id,
                flags,
                items: items
                    .iter()
                    .map(|(Fid(f), o, l)| (*f, HsmExtent::new(*o, *l)))
                    .collect(),
                data,
            };
            cluster
                .request_from(now, Caller { uid, gid }, read_only, &req)
                .map_err(Errno::code)?;
            Ok(Reply::Unit)
        }
        Request::ImplicitRestore { fid: Fid(fid) } => {
            let _ = fs.refresh(fid, cluster);
            let released = cluster
                .file(fid)
                .ok_or(libc::ENOENT)?
                .states
                .contains(HsmStates::RELEASED);
            if !released {
                return Ok(Reply::Unit);
            }
            let req = UserRequest {
                flags: u64::from(HsmRequestFlags::REQ_BLOCKING.bits()),
                ..UserRequest::whole_files(HsmUserAction::Restore, 0, &[fid])
            };
            cluster
                .request(now, Caller::ROOT, &req)
                .map_err(Errno::code)?;
            Ok(Reply::Unit)
        }
        Request::Release { fid: Fid(fid) } => {
            if read_only {
                // The write lease release needs cannot be taken on a read-only mount.
                return Err(libc::EROFS);
            }
            fs.release(fid, cluster).map_err(fs_err)?;
            Ok(Reply::Unit)
        }
        Request::Path2Fid { path } => {
            let p = if path.is_absolute() {
                path
            } else {
                mount.join(path)
            };
            let fid = fs.path2fid(&p, cluster).map_err(fs_err)?;
            Ok(Reply::Fid { fid: Fid(fid) })
        }
        Request::Fid2Path { fid: Fid(fid) } => {
            let path = fs.fid2path(fid).map_err(fs_err)?;
            Ok(Reply::Path { path })
        }
        Request::FidMdt { fid: Fid(fid) } => Ok(Reply::Index {
            index: cluster.mdt_of(fid),
        }),
        Request::StateGet { fid: Fid(fid) } => {
            if cluster.file(fid).is_none() {
                // Directories have no HSM attributes; unknown FIDs are ENOENT.
                fs.fid2path(fid).map_err(fs_err)?;
                return Ok(Reply::State {
                    states: 0,
                    archive_id: 0,
                });
            }
            fs.refresh(fid, cluster).map_err(fs_err)?;
            let a = cluster.file(fid).ok_or(libc::ENOENT)?;
            Ok(Reply::State {
                states: a.states.bits(),
                archive_id: a.archive_id,
            })
        }
        Request::StateSet {
            fid: Fid(fid),
            set,
            clear,
            archive_id,
            uid,
        } => {
            let _ = fs.refresh(fid, cluster);
            cluster
                .state_set(Caller { uid, gid: uid }, fid, set, clear, archive_id)
                .map_err(Errno::code)?;
            Ok(Reply::Unit)
        }
        Request::CurrentAction { fid: Fid(fid) } => {
            let a = cluster.current_action(fid).map_err(Errno::code)?;
            Ok(Reply::Action {
                state: a.state as u32,
                action: a.action.code(),
                offset: a.location.offset,
                length: a.location.length,
            })
        }
        Request::CreateVolatile { mdt } => {
            let fid = fs
                .create_volatile(u32::try_from(mdt).unwrap_or(0), cluster)
                .map_err(fs_err)?;
            Ok(Reply::Volatile {
                fid: Fid(fid),
                path: fs.volatile_path(fid),
            })
        }
        Request::DiscardVolatile { fid: Fid(fid) } => {
            fs.discard_volatile(fid);
            Ok(Reply::Unit)
        }
        Request::GetParam { pattern, show_name } => cluster
            .get_param(&pattern, show_name)
            .map(|text| Reply::Text { text })
            .map_err(Errno::code),
        Request::SetParam { pattern, value } => Ok(Reply::SetParam {
            results: cluster
                .set_param(now, &pattern, &value)
                .into_iter()
                .map(|(n, r)| (n, r.err().map_or(0, Errno::code)))
                .collect(),
        }),
        Request::Import {
            path,
            archive_id,
            size,
            atime,
            atime_ns,
            mtime,
            mtime_ns,
            uid,
            gid,
            mode,
        } => {
            if read_only {
                // Creating the file already fails on a read-only client mount.
                return Err(libc::EROFS);
            }
            let p = if path.is_absolute() {
                path
            } else {
                mount.join(path)
            };
            let attrs = crate::fs::ImportAttrs {
                archive_id,
                size,
                atime: (atime, atime_ns),
                mtime: (mtime, mtime_ns),
                uid,
                gid,
                mode,
            };
            let fid = fs.import(&p, &attrs, cluster).map_err(fs_err)?;
            Ok(Reply::Fid { fid: Fid(fid) })
        }
        Request::UserState { fid: Fid(fid) } => {
            if cluster.file(fid).is_none() {
                fs.fid2path(fid).map_err(fs_err)?;
                return Ok(Reply::UserState {
                    states: 0,
                    archive_id: 0,
                    in_progress_state: 0,
                    in_progress_action: HsmUserAction::None.code(),
                    in_progress_offset: 0,
                    in_progress_length: 0,
                });
            }
            fs.refresh(fid, cluster).map_err(fs_err)?;
            let a = *cluster.file(fid).ok_or(libc::ENOENT)?;
            let cur = cluster.current_action(fid).map_err(Errno::code)?;
            Ok(Reply::UserState {
                states: a.states.bits(),
                archive_id: a.archive_id,
                in_progress_state: cur.state as u32,
                in_progress_action: cur.action.code(),
                in_progress_offset: cur.location.offset,
                in_progress_length: cur.location.length,
            })
        }
        Request::Changelog { mdt, start, end } => {
            let i = cluster.mdt_index(&mdt).ok_or(libc::ENOENT)?;
            let m = cluster.mdt(i).ok_or(libc::ENOENT)?;
            Ok(Reply::Changelog {
                records: m
                    .changelog(start, end)
                    .map(|r| rpc::ChangelogEntry {
                        index: r.index,
                        kind: r.kind,
                        time: r.time,
                        flags: r.flags,
                        tfid: Fid(r.tfid),
                    })
                    .collect(),
            })
        }
        Request::ChangelogClear { mdt, user, endrec } => {
            let id = changelog_user_id(&user)?;
            let i = cluster.mdt_index(&mdt).ok_or(libc::ENOENT)?;
            let m = cluster.mdt_mut(i).ok_or(libc::ENOENT)?;
            m.changelog_clear(id, endrec).map_err(Errno::code)?;
            Ok(Reply::Unit)
        }
        Request::ChangelogRegister { mdt } => {
            let i = cluster.mdt_index(&mdt).ok_or(libc::ENOENT)?;
            let m = cluster.mdt_mut(i).ok_or(libc::ENOENT)?;
            Ok(Reply::Index {
                index: m.changelog_register(),
            })
        }
        Request::ChangelogDeregister { mdt, user } => {
            let id = changelog_user_id(&user)?;
            let i = cluster.mdt_index(&mdt).ok_or(libc::ENOENT)?;
            let m = cluster.mdt_mut(i).ok_or(libc::ENOENT)?;
            m.changelog_deregister(id).map_err(Errno::code)?;
            Ok(Reply::Unit)
        }
    }
}

/// `cl<N>` → N; anything else is `EINVAL`.
fn changelog_user_id(user: &str) -> Result<u32, i32> {
    user.strip_prefix("cl")
        .and_then(|n| n.parse().ok())
        .ok_or(libc::EINVAL)
}

/// Runs a daemon until SIGINT or SIGTERM (the `serve` command).
pub fn serve(mount: &Path, opts: &ServeOptions) -> Result<(), ServeError> {
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        // A copytool dying mid-write must not kill the daemon.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // A lease break (an open during a release) must not kill it either.
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    }
    let d = Daemon::start(mount, opts)?;
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
    }
    info!("stopping");
    d.stop();
    Ok(())
}
