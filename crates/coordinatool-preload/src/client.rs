//! One registered copytool: its handle, the state shared with the IO thread, and the IO thread
//! that owns the TCP connection to the server.
//!
//! Threads and processes involved:
//! * the copytool's threads call `recv` (takes a ready HAL), `action_end` (queues a done) and
//!   `get_fd` (the fd that is readable while a HAL is ready);
//! * the IO thread connects (exponential backoff), sends `ehlo` with every running action,
//!   keeps one `recv` long poll pending while no HAL waits for the copytool, sends the queued
//!   dones and drops each one only when the server answered it;
//! * forked children cannot use the parent's threads or locks: their dones go through a pipe
//!   inherited from the parent that the IO thread reads (see [`crate::actions`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, c_int};
use std::io::{self, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use coordinatool_lustre::ffi::bindings::hsm_copytool_private_layout;
use coordinatool_lustre::hal::{HsmActionItem, HsmActionList, HsmExtent};
use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    Decoder, DoneRequest, EhloRequest, PROTOCOL_VERSION, RecvRequest, Reply, Request, WireHai,
    WireHal,
};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::ct_log;

/// Magic of the preload's copytool handle (upstream's value; Lustre's is `0xC0BE2001`).
pub const CT_MAGIC: c_int = 0xC52C_9B6F_u32 as c_int;

/// How long `unregister` lets the IO thread deliver the last dones.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection timeout of one address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer `ehlo`.
const EHLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a done may wait to be sent with others while completions keep coming (see
/// [`Shared::push_done`]): one write and one server turn per batch instead of per done.
const DONE_LINGER: Duration = Duration::from_millis(1);

/// The request key: cookie and data fid.
pub type Key = (u64, LuFid);

/// The handle returned to the copytool. Its first fields have the layout of liblustreapi's
/// `struct hsm_copytool_private` because the real action functions read `mnt`, `mnt_fd` and
/// `open_by_fid_fd` from it.
#[repr(C)]
pub struct CtHandle {
    /// Lustre-compatible head (magic is [`CT_MAGIC`]).
    pub head: hsm_copytool_private_layout,
    /// State shared with the IO thread.
    pub shared: Arc<Shared>,
    /// Owner of `head.mnt`.
    _mnt: CString,
    /// Owner of `head.mnt_fd` and `head.open_by_fid_fd`.
    _fds: [OwnedFd; 2],
    io_thread: Option<std::thread::JoinHandle<()>>,
}

/// One done waiting for the server's answer.
#[derive(Debug, Clone)]
struct PendingDone {
    req: DoneRequest,
    /// The action as received, so a reconnect can declare it running until the done lands.
    hai: Option<WireHai>,
}

/// Mutable state, behind [`Shared::state`].
#[derive(Debug, Default)]
struct State {
    /// Actions received from the server and not yet done (CANCEL items excluded).
    running: HashMap<Key, WireHai>,
    /// Dones not yet answered by the server; the first `dones_sent` went out on this connection.
    dones: VecDeque<PendingDone>,
    dones_sent: usize,
    /// Encoded HALs waiting for the copytool's `recv` (one byte each in the ready pipe).
    hals: VecDeque<Vec<u8>>,
    /// A `recv` is pending at the server.
    recv_pending: bool,
    connected: bool,
    /// Counters for tests and debugging.
    stats: Stats,
}

/// Counters of one handle, logged at unregister.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Successful `ehlo`s.
    pub connections: u64,
    /// Dones acknowledged by the server.
    pub dones_acked: u64,
}

/// What the copytool's threads, the IO thread and forked children share.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The process that registered (and runs the IO thread).
    pub owner_pid: libc::pid_t,
    /// Local filesystem name (ehlo, and HALs whose server omitted it).
    pub fsname: String,
    /// Archive ids for ehlo (empty: any).
    pub archive_ids: Vec<u32>,
    state: Mutex<State>,
    /// HAL buffer handed to the copytool, valid until the next recv.
    hal_buf: Mutex<Vec<u64>>,
    /// Read end of the ready pipe: one byte per HAL waiting (returned by `get_fd`).
    ready_rd: OwnedFd,
    /// Wakes the IO thread (eventfd).
    wake: OwnedFd,
    /// Signalled by the IO thread when it exits (eventfd).
    exited: OwnedFd,
    /// Dones from forked children: read end (IO thread) and write end (children).
    child_rd: OwnedFd,
    /// Write end of the children's done pipe.
    pub child_wr: OwnedFd,
    /// `(st_dev, st_ino)` of the children's pipe, to recognise the fd in a child.
    pub child_pipe_id: (u64, u64),
    shutdown: AtomicBool,
    /// A wake-up is in the eventfd and not yet consumed: further ones need no syscall.
    wake_pending: AtomicBool,
    /// The IO thread will look at the done queue within [`DONE_LINGER`] on its own (it is
    /// batching a stream of completions): a new done needs no wake-up.
    linger_armed: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("owner_pid", &self.owner_pid)
            .field("fsname", &self.fsname)
            .finish_non_exhaustive()
    }
}

/// Locks, ignoring poisoning (a panic elsewhere must not take the copytool down).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cvt(rc: c_int) -> Result<c_int, i32> {
    if rc < 0 { Err(errno()) } else { Ok(rc) }
}

fn eventfd() -> Result<OwnedFd, i32> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe(flags: c_int) -> Result<(OwnedFd, OwnedFd), i32> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both are fresh, valid descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblock(fd: RawFd) -> Result<(), i32> {
    // SAFETY: fcntl on a descriptor we own.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) }).map(drop)
}

/// `(st_dev, st_ino)` of an open descriptor.
pub fn fd_identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: st is plain old data filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: 8-byte write of a local value; EAGAIN (counter saturated) is harmless.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

fn drain_eventfd(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: 8-byte read into a local value.
    unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
}

/// `poll` on `fds`, retried on EINTR with the remaining time.
fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<usize, i32> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        // ppoll, not poll: the done linger is shorter than poll's millisecond, and a
        // timeout rounded down to 0 would spin.
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            }
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: fds is a valid array of pollfd for its length; ts_ptr is NULL or points to
        // a local timespec; no signal mask change.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `send` with `MSG_NOSIGNAL` (a vanished server must not SIGPIPE the copytool), EINTR retried.
/// Returns the bytes written, 0 when the socket would block.
pub fn send_nosignal(fd: RawFd, buf: &[u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: buf is valid for its length.
        let rc = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(0),
            e => return Err(e),
        }
    }
}

/// Writes all of `buf`, polling for room (at most `timeout`).
fn send_all(fd: RawFd, mut buf: &[u8], timeout: Duration) -> Result<(), i32> {
    let deadline = Instant::now() + timeout;
    while !buf.is_empty() {
        let n = send_nosignal(fd, buf)?;
        buf = &buf[n..];
        if n == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(libc::ETIMEDOUT);
            }
            poll_fds(&mut [pollfd(fd, libc::POLLOUT)], Some(left))?;
        }
    }
    Ok(())
}

/// Converts a `recv` reply's list into Lustre's binary layout.
pub fn encode_hal(w: &WireHal, local_fsname: &str) -> Result<Vec<u8>, String> {
    let fsname = if w.fsname.is_empty() {
        local_fsname
    } else {
        &w.fsname
    };
    let archive_id = if w.archive_id != 0 {
        w.archive_id
    } else {
        w.list.first().map_or(0, |h| h.archive_id)
    };
    let mut hal = HsmActionList::new(fsname, archive_id, w.flags);
    hal.items = w
        .list
        .iter()
        .map(|h| HsmActionItem {
            action: h.action,
            fid: h.fid,
            dfid: h.dfid,
            extent: HsmExtent::new(h.extent_offset, h.extent_length),
            cookie: h.cookie,
            gid: h.gid,
            data: h.data.clone(),
        })
        .collect();
    hal.validate().map_err(|e| e.to_string())?;
    Ok(hal.encode())
}

impl Shared {
    /// Creates the shared state (pipes and eventfds included). `nonblocking` is the
    /// registration's `O_NONBLOCK`.
    pub fn new(
        config: Config,
        fsname: String,
        archive_ids: Vec<u32>,
        nonblocking: bool,
    ) -> Result<(Arc<Shared>, OwnedFd), i32> {
        let (ready_rd, ready_wr) = pipe(libc::O_CLOEXEC)?;
        set_nonblock(ready_wr.as_raw_fd())?;
        if nonblocking {
            set_nonblock(ready_rd.as_raw_fd())?;
        }
        let (child_rd, child_wr) = pipe(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        let child_pipe_id = fd_identity(child_wr.as_raw_fd()).ok_or_else(errno)?;
        let shared = Arc::new(Shared {
            config,
            // SAFETY: getpid cannot fail.
            owner_pid: unsafe { libc::getpid() },
            fsname,
            archive_ids,
            state: Mutex::new(State::default()),
            hal_buf: Mutex::new(Vec::new()),
            ready_rd,
            wake: eventfd()?,
            exited: eventfd()?,
            child_rd,
            child_wr,
            child_pipe_id,
            shutdown: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
            linger_armed: AtomicBool::new(false),
        });
        Ok((shared, ready_wr))
    }

    /// The fd `llapi_hsm_copytool_get_fd` returns: readable while a HAL is ready.
    pub fn ready_fd(&self) -> RawFd {
        self.ready_rd.as_raw_fd()
    }

    /// Counters (for logs).
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats
    }

    /// Wakes the IO thread; one eventfd write until it has consumed it.
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            signal_eventfd(self.wake.as_raw_fd());
        }
    }

    /// IO thread: consumes the wake-ups. Called before looking at the state, so a wake-up
    /// that finds the flag still set is covered by that look.
    fn take_wake(&self) {
        drain_eventfd(self.wake.as_raw_fd());
        self.wake_pending.store(false, Ordering::SeqCst);
    }

    /// Records a completion in this (the owner) process for the IO thread. With
    /// `only_if_running` nothing happens unless the key is one the server gave us.
    ///
    /// The IO thread is woken unless it is lingering (it wrote to the server less than
    /// [`DONE_LINGER`] ago and will send this done with the others at the end of the period)
    /// and the copytool still has actions in hand (else it may be waiting for the next list,
    /// whose `recv` must go out at once). A done after a quiet period therefore goes out at
    /// once; in a stream of completions they go out together, once per period.
    pub fn push_done(&self, key: Key, status: i32, only_if_running: bool) {
        if let Some(idle) = self.enqueue_done(key, status, only_if_running)
            && (idle || !self.linger_armed.load(Ordering::SeqCst))
        {
            self.wake();
        }
    }

    /// Queues a done: `None` when nothing was queued (`only_if_running` and not running),
    /// else whether the copytool has no action left in hand.
    fn enqueue_done(&self, key: Key, status: i32, only_if_running: bool) -> Option<bool> {
        let idle;
        {
            let mut st = lock(&self.state);
            let hai = st.running.remove(&key);
            if only_if_running && hai.is_none() {
                return None;
            }
            idle = st.running.is_empty();
            if hai.is_none() {
                ct_log!(
                    Debug,
                    0,
                    "done for cookie {:#x} {} which is not running here (double ack?), forwarded",
                    key.0,
                    key.1
                );
            }
            st.dones.push_back(PendingDone {
                req: DoneRequest {
                    cookie: key.0,
                    dfid: key.1,
                    status: status.saturating_abs(),
                },
                hai,
            });
        }
        Some(idle)
    }

    /// `llapi_hsm_copytool_recv`: the next HAL, copied into the handle's buffer. Blocks
    /// unless registered with `O_NONBLOCK` (then `-EAGAIN` when nothing is ready).
    pub fn recv(&self, hal: *mut *mut u8, msgsize: *mut c_int) -> c_int {
        loop {
            let mut byte = 0u8;
            // SAFETY: one-byte read into a local.
            let rc = unsafe { libc::read(self.ready_rd.as_raw_fd(), (&raw mut byte).cast(), 1) };
            match rc {
                1 => {}
                0 => return -libc::ESHUTDOWN,
                // EINTR included: like Lustre's read of its pipe, a handler installed with
                // SA_RESTART (SIGCHLD of forking copytools) restarts the wait in the
                // kernel, one without it (a copytool's SIGTERM) gets -EINTR to see its flag.
                _ => return -errno(),
            }
            let (bytes, idle) = {
                let mut st = lock(&self.state);
                let Some(bytes) = st.hals.pop_front() else {
                    continue;
                };
                (bytes, st.running.is_empty())
            };
            // The queue is empty now: the IO thread asks the server for the next list, at once
            // or, when it is batching and the copytool has work in hand, at the end of its
            // period.
            if idle || !self.linger_armed.load(Ordering::SeqCst) {
                self.wake();
            }
            let mut buf = lock(&self.hal_buf);
            buf.clear();
            buf.resize(bytes.len().div_ceil(8), 0);
            // SAFETY: buf holds at least bytes.len() bytes; the regions are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    buf.as_mut_ptr().cast::<u8>(),
                    bytes.len(),
                );
                *hal = buf.as_mut_ptr().cast();
                *msgsize = bytes.len() as c_int;
            }
            return 0;
        }
    }

    fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

impl CtHandle {
    /// Builds the handle and starts the IO thread.
    pub fn start(
        shared: Arc<Shared>,
        ready_wr: OwnedFd,
        mnt: CString,
        mnt_fd: OwnedFd,
        fid_fd: OwnedFd,
    ) -> Result<Box<CtHandle>, i32> {
        let io_shared = Arc::clone(&shared);
        // The IO thread starts with every signal blocked, so the copytool's signals (SIGTERM,
        // SIGCHLD...) reach its own threads, as they would without the preload.
        // SAFETY: sigset_t is plain data initialised by sigfillset; masks of this thread only.
        let old_mask = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            old
        };
        let spawned = std::thread::Builder::new()
            .name("coordinatool-io".into())
            .spawn(move || io_thread_main(io_shared, ready_wr));
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
        let io_thread = spawned.map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))?;
        let mut h = Box::new(CtHandle {
            head: hsm_copytool_private_layout::default(),
            shared,
            _mnt: mnt,
            _fds: [mnt_fd, fid_fd],
            io_thread: Some(io_thread),
        });
        h.head.magic = CT_MAGIC;
        h.head.mnt = h._mnt.as_ptr().cast_mut();
        h.head.mnt_fd = h._fds[0].as_raw_fd();
        h.head.open_by_fid_fd = h._fds[1].as_raw_fd();
        Ok(h)
    }

    /// Stops the IO thread after it delivered the pending dones (bounded wait).
    pub fn stop(&mut self) {
        let shared = &self.shared;
        shared.shutdown.store(true, Ordering::Release);
        shared.wake();
        let mut fds = [pollfd(shared.exited.as_raw_fd(), libc::POLLIN)];
        let finished = matches!(
            poll_fds(&mut fds, Some(FLUSH_TIMEOUT + CONNECT_TIMEOUT)),
            Ok(n) if n > 0
        );
        let stats = shared.stats();
        ct_log!(
            Info,
            0,
            "unregistered after {} connection(s), {} done(s) acknowledged",
            stats.connections,
            stats.dones_acked
        );
        if let Some(t) = self.io_thread.take() {
            if finished {
                let _ = t.join();
            } else {
                ct_log!(Warn, 0, "IO thread did not stop in time, left behind");
            }
        }
    }
}

/// The IO thread: restarts its loop after a panic (logged) until shutdown.
fn io_thread_main(shared: Arc<Shared>, ready_wr: OwnedFd) {
    let mut io = Io {
        shared: &shared,
        ready_wr,
        backoff: Backoff::new(
            Duration::from_millis(shared.config.reconnect_min_ms),
            Duration::from_millis(shared.config.reconnect_max_ms),
            u64::from(shared.owner_pid.unsigned_abs())
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
        ),
        flush_deadline: None,
        scratch: Vec::new(),
    };
    loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| io.run()));
        if r.is_ok() || shared.is_shutdown() {
            break;
        }
        ct_log!(Error, 0, "IO thread panicked, restarting it");
        std::thread::sleep(Duration::from_secs(1));
    }
    signal_eventfd(shared.exited.as_raw_fd());
}

struct Io<'a> {
    shared: &'a Shared,
    ready_wr: OwnedFd,
    backoff: Backoff,
    flush_deadline: Option<Instant>,
    /// Dones being encoded (kept to reuse its allocation).
    scratch: Vec<DoneRequest>,
}

/// When the IO thread writes to the server. After a quiet period, at once; then, while there
/// is traffic, the dones and the next `recv` go out together once per period (one write, one
/// server turn, one reply read per period instead of one per done, and larger lists). The
/// copytool's threads do not wake the IO thread while it is armed (see
/// [`Shared::push_done`]), except when the copytool has nothing left in hand: then the next
/// `recv` goes out at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Linger {
    /// `None`: everything goes out at once.
    period: Option<Duration>,
    /// Armed: the end of the current period.
    deadline: Option<Instant>,
}

/// What [`Io::queue_output`] may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Everything waiting.
    All,
    /// Only a `recv` for a copytool with nothing in hand (and the dones with it).
    IfIdle,
}

impl Linger {
    fn new(period: Option<Duration>) -> Self {
        Linger {
            period,
            deadline: None,
        }
    }

    /// What may go out now: everything when not armed or when the period is over.
    fn flush(&self, now: Instant) -> Flush {
        if self.deadline.is_none_or(|d| now >= d) {
            Flush::All
        } else {
            Flush::IfIdle
        }
    }

    /// After a look at the queue with `flush` (as [`flush`](Self::flush) said at `now`),
    /// where something was (`sent`) or was not sent: `Some(armed)` when the IO thread must
    /// publish a new armed state.
    fn update(&mut self, now: Instant, flush: Flush, sent: bool) -> Option<bool> {
        let period = self.period?;
        match (self.deadline.is_some(), flush, sent) {
            // Traffic after a quiet period went out: batch what follows.
            (false, _, true) => {
                self.deadline = Some(now + period);
                Some(true)
            }
            // The period is over and had traffic: another one.
            (true, Flush::All, true) => {
                self.deadline = Some(now + period);
                None
            }
            // A period without traffic: back to sending at once.
            (true, Flush::All, false) => {
                self.deadline = None;
                Some(false)
            }
            _ => None,
        }
    }
}

/// Why a connection ended.
enum End {
    Lost,
    Shutdown,
}

impl Io<'_> {
    fn run(&mut self) {
        loop {
            if self.done_with_shutdown() {
                return;
            }
            match self.connect() {
                Ok((sock, dec)) => {
                    self.backoff.reset();
                    let end = self.serve(&sock, dec);
                    // Until the next connection, every done wakes this thread again.
                    self.shared.linger_armed.store(false, Ordering::SeqCst);
                    {
                        let mut st = lock(&self.shared.state);
                        st.connected = false;
                        st.dones_sent = 0;
                        st.recv_pending = false;
                    }
                    drop(sock);
                    if matches!(end, End::Shutdown) {
                        return;
                    }
                    ct_log!(
                        Warn,
                        0,
                        "connection to the coordinatool server lost, reconnecting"
                    );
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    ct_log!(
                        Warn,
                        0,
                        "cannot connect to {}:{}: {e}; retrying in {} ms",
                        self.shared.config.host,
                        self.shared.config.port,
                        delay.as_millis()
                    );
                    self.idle_wait(delay);
                }
            }
        }
    }

    /// True when unregistering and there is nothing left to deliver (or no time left).
    fn done_with_shutdown(&mut self) -> bool {
        if !self.shared.is_shutdown() {
            return false;
        }
        let deadline = *self
            .flush_deadline
            .get_or_insert_with(|| Instant::now() + FLUSH_TIMEOUT);
        lock(&self.shared.state).dones.is_empty() || Instant::now() >= deadline
    }

    /// Sleeps `delay` while still collecting children's dones; returns early on wake-ups
    /// that matter (shutdown).
    fn idle_wait(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let left = match self.flush_deadline {
                Some(d) => left.min(d.saturating_duration_since(Instant::now())),
                None => left,
            };
            if left.is_zero() {
                return;
            }
            let mut fds = [
                pollfd(self.shared.wake.as_raw_fd(), libc::POLLIN),
                pollfd(self.shared.child_rd.as_raw_fd(), libc::POLLIN),
            ];
            if poll_fds(&mut fds, Some(left)).is_err() {
                return;
            }
            if fds[0].revents != 0 {
                self.shared.take_wake();
                if self.done_with_shutdown() {
                    return;
                }
            }
            if fds[1].revents != 0 {
                self.read_child_dones();
            }
        }
    }

    /// Connects and completes the ehlo handshake.
    fn connect(&mut self) -> Result<(TcpStream, Decoder), String> {
        let cfg = &self.shared.config;
        let addrs = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", cfg.host))?;
        let mut last = String::from("no address");
        let mut sock = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let sock = sock.ok_or(last)?;
        let _ = sock.set_nodelay(true);
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let fd = sock.as_raw_fd();

        let ehlo = {
            let st = lock(&self.shared.state);
            let mut hai_list: Vec<WireHai> = st.running.values().cloned().collect();
            hai_list.extend(st.dones.iter().filter_map(|d| d.hai.clone()));
            EhloRequest {
                id: Some(cfg.client_id.clone()).filter(|s| !s.is_empty()),
                fsname: Some(self.shared.fsname.clone()).filter(|s| !s.is_empty()),
                archive_ids: self.shared.archive_ids.clone(),
                hai_list,
                version: Some(PROTOCOL_VERSION),
            }
        };
        let mut out = Vec::new();
        Request::Ehlo(ehlo).encode(&mut out);
        send_all(fd, &out, EHLO_TIMEOUT)
            .map_err(|e| format!("cannot send ehlo: {}", io::Error::from_raw_os_error(e)))?;

        let mut dec = Decoder::new();
        let deadline = Instant::now() + EHLO_TIMEOUT;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sock_ref = &sock;
        loop {
            match dec.next_message::<Reply>() {
                Ok(Some(Reply::Ehlo(r))) if r.status == 0 => break,
                Ok(Some(r)) => {
                    return Err(format!(
                        "server refused ehlo: {} (status {})",
                        r.error_message().unwrap_or("no message"),
                        r.status()
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad ehlo reply: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no ehlo reply from the server".into());
            }
            let mut fds = [pollfd(fd, libc::POLLIN)];
            poll_fds(&mut fds, Some(left))
                .map_err(|e| io::Error::from_raw_os_error(e).to_string())?;
            match sock_ref.read(&mut buf) {
                Ok(0) => return Err("server closed the connection during ehlo".into()),
                Ok(n) => dec.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        {
            let mut st = lock(&self.shared.state);
            st.connected = true;
            st.dones_sent = 0;
            st.recv_pending = false;
            st.stats.connections += 1;
        }
        ct_log!(
            Info,
            0,
            "connected to {}:{} as '{}'",
            cfg.host,
            cfg.port,
            cfg.client_id
        );
        // Replies that followed the ehlo reply in the same read are handled by `serve`.
        Ok((sock, dec))
    }

    /// Reads the children's done records and queues them.
    fn read_child_dones(&mut self) {
        let mut buf = [0u8; crate::actions::RECORD_LEN * 64];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::read(
                    self.shared.child_rd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            // Records are written atomically (smaller than PIPE_BUF), so reads return whole records.
            for rec in buf[..n as usize].chunks_exact(crate::actions::RECORD_LEN) {
                match crate::actions::DoneRecord::decode(rec) {
                    // This thread sends them: no wake-up needed.
                    Some(r) => {
                        self.shared.enqueue_done(r.key, r.status, r.only_if_running);
                    }
                    None => ct_log!(
                        Error,
                        0,
                        "corrupt done record from a child process, dropped"
                    ),
                }
            }
        }
    }

    /// Runs one established connection until it is lost or the copytool unregisters.
    fn serve(&mut self, sock: &TcpStream, mut dec: Decoder) -> End {
        let fd = sock.as_raw_fd();
        let mut out: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut linger = Linger::new(self.linger_period());
        loop {
            // Replies already buffered (possibly received together with the ehlo reply).
            loop {
                match dec.next_message::<Reply>() {
                    Ok(Some(reply)) => {
                        if let Err(e) = self.handle_reply(reply) {
                            ct_log!(Error, 0, "{e}; reconnecting");
                            return End::Lost;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        ct_log!(Error, 0, "bad message from the server: {e}; reconnecting");
                        return End::Lost;
                    }
                }
            }
            if self.done_with_shutdown() {
                return End::Shutdown;
            }
            let now = Instant::now();
            let flush = linger.flush(now);
            let sent = self.queue_output(&mut out, flush);
            match linger.update(now, flush, sent) {
                Some(true) => self.shared.linger_armed.store(true, Ordering::SeqCst),
                Some(false) => {
                    self.shared.linger_armed.store(false, Ordering::SeqCst);
                    // What was queued just before the store saw the flag set and did not
                    // wake this thread: look again, now that new work will.
                    if self.unsent_output() {
                        continue;
                    }
                }
                None => {}
            }
            if !out.is_empty() {
                match send_nosignal(fd, &out) {
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e) => {
                        ct_log!(Warn, e, "cannot write to the server");
                        return End::Lost;
                    }
                }
            }
            let mut fds = [
                pollfd(
                    fd,
                    libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT },
                ),
                pollfd(self.shared.wake.as_raw_fd(), libc::POLLIN),
                pollfd(self.shared.child_rd.as_raw_fd(), libc::POLLIN),
            ];
            let timeout = match (self.flush_deadline, linger.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = poll_fds(&mut fds, timeout) {
                ct_log!(Error, e, "poll failed");
                return End::Lost;
            }
            if fds[1].revents != 0 {
                self.shared.take_wake();
            }
            if fds[2].revents != 0 {
                self.read_child_dones();
            }
            if fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                let mut sock_ref = sock;
                loop {
                    match sock_ref.read(&mut buf) {
                        Ok(0) => {
                            if dec.is_mid_message() {
                                ct_log!(Warn, 0, "server closed the connection mid-message");
                            }
                            return End::Lost;
                        }
                        Ok(n) => {
                            dec.feed(&buf[..n]);
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            ct_log!(
                                Warn,
                                e.raw_os_error().unwrap_or(0),
                                "read from the server failed"
                            );
                            return End::Lost;
                        }
                    }
                }
            }
        }
    }

    /// Dones are batched for [`DONE_LINGER`] unless the copytool has limits: then a done
    /// may be what lets the server send more work, and it goes out at once.
    fn linger_period(&self) -> Option<Duration> {
        let c = &self.shared.config;
        let limited = [c.max_archive, c.max_restore, c.max_remove]
            .into_iter()
            .any(|v| Config::limit(v).is_some());
        (!limited).then_some(DONE_LINGER)
    }

    /// Appends what `flush` allows: the dones not yet sent on this connection and, when no
    /// list waits for the copytool and none is asked for, a `recv` (with [`Flush::IfIdle`],
    /// only a `recv` for a copytool with nothing in hand, and the dones with it). Everything
    /// goes at shutdown (no `recv` then). Returns true if something was appended.
    fn queue_output(&mut self, out: &mut Vec<u8>, flush: Flush) -> bool {
        let shutdown = self.shared.is_shutdown();
        // Copied under the lock, encoded after it: the copytool's threads queue dones meanwhile.
        let mut dones = std::mem::take(&mut self.scratch);
        let recv = {
            let mut st = lock(&self.shared.state);
            let mut recv = !shutdown && !st.recv_pending && st.hals.is_empty();
            let all = flush == Flush::All || shutdown;
            if !all {
                recv &= st.running.is_empty();
            }
            if all || recv {
                let from = st.dones_sent;
                dones.extend(st.dones.range(from..).map(|d| d.req));
                st.dones_sent = st.dones.len();
            }
            st.recv_pending |= recv;
            recv
        };
        let sent = recv || !dones.is_empty();
        for req in dones.drain(..) {
            Request::Done(req).encode(out);
        }
        self.scratch = dones;
        if recv {
            let cfg = &self.shared.config;
            Request::Recv(RecvRequest {
                max_archive: Config::limit(cfg.max_archive),
                max_restore: Config::limit(cfg.max_restore),
                max_remove: Config::limit(cfg.max_remove),
                max_bytes: cfg.max_bytes(),
            })
            .encode(out);
        }
        sent
    }

    /// True when some queued done has not been sent on this connection, or a `recv` is due.
    fn unsent_output(&self) -> bool {
        let st = lock(&self.shared.state);
        st.dones_sent < st.dones.len() || (!st.recv_pending && st.hals.is_empty())
    }

    fn handle_reply(&mut self, reply: Reply) -> Result<(), String> {
        match reply {
            Reply::Recv(r) => {
                if r.status != 0 {
                    return Err(format!(
                        "server refused recv: {} (status {})",
                        r.error.as_deref().unwrap_or("no message"),
                        r.status
                    ));
                }
                let Some(hal) = r.hal else {
                    return Err("recv reply without hsm_action_list".into());
                };
                self.deliver(hal)
            }
            Reply::Done(r) => {
                let mut st = lock(&self.shared.state);
                if st.dones_sent == 0 {
                    drop(st);
                    ct_log!(
                        Debug,
                        0,
                        "unexpected done reply (status {}), ignored",
                        r.status
                    );
                    return Ok(());
                }
                st.dones_sent -= 1;
                let d = st.dones.pop_front();
                st.stats.dones_acked += 1;
                drop(st);
                if r.status != 0
                    && let Some(d) = d
                {
                    ct_log!(
                        Error,
                        r.status,
                        "server refused done for cookie {:#x} {}: {}",
                        d.req.cookie,
                        d.req.dfid,
                        r.error.as_deref().unwrap_or("no message")
                    );
                }
                Ok(())
            }
            other => {
                ct_log!(Debug, 0, "unexpected {} reply, ignored", other.command());
                Ok(())
            }
        }
    }

    /// Queues a received list for the copytool and makes the ready fd readable.
    fn deliver(&mut self, hal: WireHal) -> Result<(), String> {
        if hal.list.is_empty() {
            // Nothing to hand over; the next loop asks again.
            lock(&self.shared.state).recv_pending = false;
            return Ok(());
        }
        // Encoded before taking the lock, which the copytool's threads need for their dones.
        let encoded = encode_hal(&hal, &self.shared.fsname);
        let mut st = lock(&self.shared.state);
        st.recv_pending = false;
        let bytes = match encoded {
            Ok(b) => b,
            Err(e) => {
                // Reconnecting would get the same list back: fail its items instead.
                drop(st);
                ct_log!(
                    Error,
                    libc::EINVAL,
                    "cannot build an hsm_action_list from the server's reply ({e}); failing its items"
                );
                for hai in hal.list.iter().filter(|h| h.action != HsmAction::Cancel) {
                    self.shared
                        .enqueue_done((hai.cookie, hai.dfid), libc::EINVAL, false);
                }
                return Ok(());
            }
        };
        for hai in &hal.list {
            if hai.action == HsmAction::Cancel {
                continue;
            }
            let mut hai = hai.clone();
            if hai.archive_id == 0 {
                hai.archive_id = hal.archive_id;
            }
            if hai.flags == 0 {
                hai.flags = hal.flags;
            }
            st.running.entry((hai.cookie, hai.dfid)).or_insert(hai);
        }
        ct_log!(
            Debug,
            0,
            "received {} action(s) for archive {}",
            hal.list.len(),
            hal.archive_id
        );
        st.hals.push_back(bytes);
        drop(st);
        let byte = 1u8;
        // SAFETY: one-byte write from a local; at most one list waits, so the pipe has room.
        unsafe { libc::write(self.ready_wr.as_raw_fd(), (&raw const byte).cast(), 1) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinatool_lustre::HsmActionList;
    use coordinatool_proto::AckReply;

    fn shared() -> (Arc<Shared>, OwnedFd) {
        Shared::new(Config::default(), "fs".into(), Vec::new(), false).unwrap()
    }

    /// Whether the IO thread's eventfd holds a wake-up (consumed like the IO thread does).
    fn woken(sh: &Shared) -> bool {
        let mut fds = [pollfd(sh.wake.as_raw_fd(), libc::POLLIN)];
        let n = poll_fds(&mut fds, Some(Duration::ZERO)).unwrap();
        sh.take_wake();
        n == 1
    }

    fn key(cookie: u64) -> Key {
        (cookie, LuFid::new(0x200000401, cookie as u32, 0))
    }

    /// Puts `cookies` in the running set, as a received list does.
    fn running(sh: &Shared, cookies: &[u64]) {
        let mut st = lock(&sh.state);
        for &c in cookies {
            let (cookie, fid) = key(c);
            st.running
                .insert((cookie, fid), WireHai::new(HsmAction::Archive, fid, cookie));
        }
    }

    fn io(sh: &Arc<Shared>, ready_wr: OwnedFd) -> Io<'_> {
        Io {
            shared: sh,
            ready_wr,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2), 1),
            flush_deadline: None,
            scratch: Vec::new(),
        }
    }

    fn decoded(out: &[u8]) -> Vec<Request> {
        let mut dec = Decoder::new();
        dec.feed(out);
        dec.messages::<Request>().map(Result::unwrap).collect()
    }

    #[test]
    fn linger_sends_at_once_after_a_quiet_period_then_once_per_period() {
        let p = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut l = Linger::new(Some(p));
        assert_eq!(l.flush(t0), Flush::All, "quiet: at once");
        assert_eq!(
            l.update(t0, Flush::All, false),
            None,
            "nothing sent: stays quiet"
        );
        assert_eq!(
            l.update(t0, Flush::All, true),
            Some(true),
            "traffic arms it"
        );
        assert_eq!(l.flush(t0 + p / 2), Flush::IfIdle, "within the period");
        assert_eq!(l.update(t0 + p / 2, Flush::IfIdle, true), None);
        assert_eq!(
            l.deadline,
            Some(t0 + p),
            "a piggybacked write keeps the period"
        );
        assert_eq!(l.flush(t0 + p), Flush::All, "period over");
        assert_eq!(l.update(t0 + p, Flush::All, true), None, "still armed");
        assert_eq!(l.deadline, Some(t0 + 2 * p));
        assert_eq!(
            l.update(t0 + 2 * p, Flush::All, false),
            Some(false),
            "a period without traffic disarms it"
        );
        assert_eq!(l.flush(t0 + 2 * p), Flush::All);

        let mut off = Linger::new(None);
        assert_eq!(
            off.update(t0, Flush::All, true),
            None,
            "no period: never armed"
        );
        assert_eq!(off.flush(t0), Flush::All);
    }

    #[test]
    fn dones_wake_the_io_thread_once_and_not_while_it_lingers() {
        let (sh, _ready) = shared();
        running(&sh, &[1, 2, 3, 4]);
        sh.push_done(key(1), 0, false);
        sh.push_done(key(2), 0, false);
        assert!(woken(&sh), "not armed: woken");
        assert!(
            !sh.wake_pending.load(Ordering::SeqCst),
            "consumed by take_wake"
        );
        sh.linger_armed.store(true, Ordering::SeqCst);
        sh.push_done(key(3), 0, false);
        assert!(
            !woken(&sh),
            "lingering: the IO thread sends it at the period's end"
        );
        sh.push_done(key(4), 0, false);
        assert!(
            woken(&sh),
            "nothing left in hand: the next recv must go out now"
        );
        assert_eq!(lock(&sh.state).dones.len(), 4);
        sh.linger_armed.store(false, Ordering::SeqCst);
        sh.push_done(key(9), 0, true);
        assert!(
            !woken(&sh),
            "only_if_running for an unknown key queues nothing"
        );
        assert_eq!(lock(&sh.state).dones.len(), 4);
    }

    #[test]
    fn coalesced_dones_are_each_sent_once_and_each_acknowledged() {
        let (sh, ready) = shared();
        let mut io = io(&sh, ready);
        let cookies: Vec<u64> = (1..=50).collect();
        running(&sh, &cookies);
        lock(&sh.state).recv_pending = true;
        for &c in &cookies {
            sh.push_done(key(c), (c % 3) as i32, false);
        }
        let mut out = Vec::new();
        assert!(
            !io.queue_output(&mut out, Flush::IfIdle),
            "lingering while the copytool has no free hand: nothing yet"
        );
        assert!(out.is_empty());
        assert!(io.queue_output(&mut out, Flush::All));
        let sent: Vec<u64> = decoded(&out)
            .into_iter()
            .map(|r| match r {
                Request::Done(d) => {
                    assert_eq!(d.status, (d.cookie % 3) as i32);
                    d.cookie
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sent, cookies, "one write, every done once, in order");
        out.clear();
        assert!(!io.queue_output(&mut out, Flush::All), "nothing sent twice");
        for _ in &cookies {
            io.handle_reply(Reply::Done(AckReply::default())).unwrap();
        }
        let st = lock(&sh.state);
        assert!(st.dones.is_empty());
        assert_eq!((st.dones_sent, st.stats.dones_acked), (0, 50));
    }

    #[test]
    fn recv_waits_for_the_period_unless_the_copytool_is_idle() {
        let (sh, ready) = shared();
        let mut io = io(&sh, ready);
        running(&sh, &[1, 2]);
        sh.push_done(key(1), 0, false);
        let mut out = Vec::new();
        assert!(
            !io.queue_output(&mut out, Flush::IfIdle),
            "one action in hand"
        );
        sh.push_done(key(2), 0, false);
        assert!(io.queue_output(&mut out, Flush::IfIdle), "idle copytool");
        let reqs = decoded(&out);
        assert_eq!(reqs.len(), 3, "{reqs:?}");
        assert!(matches!(reqs[2], Request::Recv(_)), "{reqs:?}");
        assert!(lock(&sh.state).recv_pending);
    }

    #[test]
    fn dones_queued_while_disconnected_go_out_on_the_next_connection() {
        let (sh, ready) = shared();
        let mut io = io(&sh, ready);
        running(&sh, &[1, 2]);
        sh.push_done(key(1), 0, false);
        let mut out = Vec::new();
        io.queue_output(&mut out, Flush::All);
        // The connection drops before the answer; 2 ends meanwhile.
        {
            let mut st = lock(&sh.state);
            st.dones_sent = 0;
            st.recv_pending = false;
        }
        sh.push_done(key(2), 0, false);
        out.clear();
        io.queue_output(&mut out, Flush::All);
        let cookies: Vec<u64> = decoded(&out)
            .into_iter()
            .filter_map(|r| match r {
                Request::Done(d) => Some(d.cookie),
                _ => None,
            })
            .collect();
        assert_eq!(
            cookies,
            vec![1, 2],
            "the unanswered one again, then the new one"
        );
    }

    #[test]
    fn writing_to_a_closed_peer_fails_without_sigpipe() {
        // In a child process with SIGPIPE's default action (fatal), as in a C copytool.
        // SAFETY: the child only makes async-signal-safe calls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut sv = [0; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                libc::close(sv[1]);
                let a = send_nosignal(sv[0], b"done");
                let b = send_nosignal(sv[0], b"done");
                libc::_exit(if a == Err(libc::EPIPE) && b == Err(libc::EPIPE) {
                    0
                } else {
                    3
                });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (signal {})",
            libc::WTERMSIG(status)
        );
    }

    #[test]
    fn wire_lists_become_lustre_layout() {
        let mut item = WireHai::new(HsmAction::Archive, LuFid::new(0x200000401, 1, 0), 1 << 40);
        item.data = b"tag=x".to_vec();
        item.archive_id = 3;
        let w = WireHal {
            archive_id: 3,
            flags: 4,
            fsname: String::new(),
            list: vec![item.clone(), WireHai::new(HsmAction::Cancel, item.fid, 9)],
        };
        let bytes = encode_hal(&w, "localfs").unwrap();
        let hal = HsmActionList::parse(&bytes).unwrap();
        assert_eq!(
            hal.fsname, "localfs",
            "local fsname when the server sent none"
        );
        assert_eq!((hal.archive_id, hal.flags), (3, 4));
        assert_eq!(hal.items.len(), 2);
        assert_eq!(hal.items[0].cookie, 1 << 40);
        assert_eq!(hal.items[0].data, b"tag=x");
        assert_eq!(
            hal.items[0].hai_len(),
            72 + 5,
            "hai_len unpadded like Lustre's"
        );
        assert_eq!(hal.items[1].action, HsmAction::Cancel);

        let mut long = w.clone();
        long.fsname = "x".repeat(100);
        assert!(encode_hal(&long, "").is_err());
    }
}
