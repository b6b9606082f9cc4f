//! The daemon's event loop: one thread accepts the connections and serves the ordinary calls
//! of all of them (epoll, level-triggered).
//!
//! Each turn reads what every ready connection sent (one `recv` each), serves every complete
//! call read, from all connections, under one acquisition of the daemon's lock, then sends
//! each connection its replies (one `send` each). Under load one wake-up thus serves the
//! calls of many clients, where a thread per connection would wake once per call and contend
//! for the lock. The two calls that block or turn a connection into something else (a
//! copytool registration, a waiting purge) hand their connection over to a thread of its own
//! (`super::connection`), which serves it to its end.
//!
//! Bounds: a connection's input buffer holds at most one frame in progress plus one read (it
//! is not read again while it holds a complete call), at most [`CALLS_PER_TURN`] of its calls
//! are served per turn (the rest wait for the next turn, after the other connections), and a
//! connection whose replies the socket did not take is not read or served until they are
//! out. A client that stops reading, sends half a frame or vanishes therefore only holds its
//! own connection.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::{Shared, is_special, serve_call};
use crate::hash::FastMap;
use crate::rpc::{self, Request, Response, RpcError};

/// Epoll token of the listening socket.
const LISTENER: u64 = u64::MAX;
/// Epoll token of the wake-up eventfd.
const WAKE: u64 = u64::MAX - 1;

/// Bytes asked for by one read of a connection (more when a larger frame is in progress).
const READ_CHUNK: usize = 16 << 10;
/// Calls of one connection served per turn, so that a client with a long queue of one-way
/// messages does not delay the others, and its replies stay bounded.
const CALLS_PER_TURN: usize = 64;
/// How long new connections wait after `accept` failed (out of fds).
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 128;

/// An epoll instance.
pub(super) struct Epoll(OwnedFd);

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        // SAFETY: no pointer arguments.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid fds and an event struct that lives across the call.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Stops (`false`) or resumes (`true`) watching the listening socket.
    fn listen(&self, listener: &UnixListener, on: bool) -> io::Result<()> {
        let events = if on { libc::EPOLLIN as u32 } else { 0 };
        self.ctl(libc::EPOLL_CTL_MOD, listener.as_raw_fd(), LISTENER, events)
    }

    /// Registers the daemon's listening socket (made non-blocking) and wake-up eventfd.
    pub(super) fn watch(&self, listener: &UnixListener, waker: &Waker) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.add(listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
        self.add(waker.0.as_raw_fd(), WAKE, libc::EPOLLIN as u32)
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is writable for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                timeout_ms,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// An eventfd that wakes the loop (daemon stopping).
pub(super) struct Waker(OwnedFd);

impl Waker {
    pub(super) fn new() -> io::Result<Waker> {
        // SAFETY: no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn wake(&self) {
        let one = 1u64;
        // SAFETY: an 8-byte write from a local to an eventfd we own. A full counter
        // (EAGAIN) already means "wake up".
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn drain(&self) {
        let mut v = 0u64;
        // SAFETY: an 8-byte read into a local from an eventfd we own (non-blocking).
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }
}

/// One client connection served by the loop.
struct Conn {
    stream: UnixStream,
    /// Bytes read; those before `pos` were consumed.
    inbuf: Vec<u8>,
    pos: usize,
    /// Replies not yet taken by the socket; those before `out_pos` were sent.
    out: Vec<u8>,
    out_pos: usize,
    /// Events registered with epoll.
    events: u32,
    /// The client closed its end (or reading failed): closed once the calls it sent before
    /// are answered.
    eof: bool,
    /// A malformed frame: closed once the replies before it (and its `EPROTO`) are out.
    broken: bool,
    /// Sending failed: closed at once.
    dead: bool,
    /// A call the loop does not serve (see [`is_special`]): the connection goes to a thread.
    handoff: Option<Request>,
    /// In this turn's list of connections to settle.
    touched: bool,
}

/// The payload length in the 4-byte header at the start of `b`, once the header is there.
fn frame_len(b: &[u8]) -> Option<usize> {
    let h: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(h) as usize)
}

/// What a call of the batch is: a request, or a malformed frame answered `EPROTO`.
type Call = Option<Request>;

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            out_pos: 0,
            events: 0,
            eof: false,
            broken: false,
            dead: false,
            handoff: None,
            touched: false,
        }
    }

    fn out_pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// True if a complete frame waits in the input buffer.
    fn has_frame(&self) -> bool {
        let b = &self.inbuf[self.pos..];
        frame_len(b).is_some_and(|len| b.len() - 4 >= len)
    }

    /// One read into the input buffer (sized for the frame in progress).
    fn read(&mut self) {
        if self.pos == self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 4 * READ_CHUNK {
            // A large frame came and went: do not keep its buffer for small calls.
            self.inbuf = Vec::new();
        }
        let want = match frame_len(&self.inbuf) {
            // The rest of a large frame; a length beyond MAX_FRAME is refused by decoding,
            // before any buffer of that size exists.
            Some(len) if len <= rpc::MAX_FRAME => {
                (4 + len).saturating_sub(self.inbuf.len()).max(READ_CHUNK)
            }
            _ => READ_CHUNK,
        };
        self.inbuf.reserve(want);
        let spare = self.inbuf.capacity() - self.inbuf.len();
        // SAFETY: receiving into the vector's spare capacity, at most `spare` bytes.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                self.inbuf.as_mut_ptr().add(self.inbuf.len()).cast(),
                spare,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            // SAFETY: the kernel initialised those `n` bytes.
            unsafe { self.inbuf.set_len(self.inbuf.len() + n as usize) };
            return;
        }
        if n == 0 {
            self.eof = true;
            return;
        }
        let e = io::Error::last_os_error().raw_os_error();
        if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
            self.eof = true;
        }
    }

    /// Takes the complete calls of the input buffer (at most [`CALLS_PER_TURN`]) into
    /// `batch`, stopping at a call that needs a thread or at a malformed frame.
    fn parse(&mut self, token: u64, batch: &mut Vec<(u64, Call)>) {
        let mut n = 0;
        while n < CALLS_PER_TURN && self.handoff.is_none() && !self.broken {
            match rpc::decode_frame::<Request>(&self.inbuf[self.pos..]) {
                Ok(Some((req, len))) => {
                    self.pos += len;
                    if is_special(&req) {
                        self.handoff = Some(req);
                    } else {
                        batch.push((token, Some(req)));
                        n += 1;
                    }
                }
                Ok(None) => break,
                Err(e @ (RpcError::Json(_) | RpcError::Malformed(_))) => {
                    debug!(error = %e, "bad request");
                    batch.push((token, None));
                    self.broken = true;
                }
                Err(e) => {
                    debug!(error = %e, "bad request");
                    self.broken = true;
                    self.pos = self.inbuf.len();
                }
            }
        }
    }

    /// Sends what the socket takes of the pending replies.
    fn flush(&mut self) {
        while self.out_pending() {
            let buf = &self.out[self.out_pos..];
            // SAFETY: a socket we own and a readable buffer of buf.len() bytes.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.out_pos += n as usize;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => return,
                _ => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > 4 * READ_CHUNK {
            self.out = Vec::new();
        }
    }
}

/// What becomes of a connection at the end of a turn.
enum Next {
    /// Stays in the loop with these epoll events; `true` if complete calls remain buffered.
    Stay(u32, bool),
    Close,
    Handoff,
}

fn next_step(c: &Conn) -> Next {
    if c.dead {
        return Next::Close;
    }
    if c.out_pending() {
        // The client must read its replies before more of its calls are served.
        return Next::Stay(libc::EPOLLOUT as u32, false);
    }
    if c.broken {
        return Next::Close;
    }
    if c.handoff.is_some() {
        return Next::Handoff;
    }
    let more = c.has_frame();
    if c.eof {
        // Calls sent before the end are still answered (a write may then fail: closed).
        return if more {
            Next::Stay(0, true)
        } else {
            Next::Close
        };
    }
    Next::Stay(libc::EPOLLIN as u32, more)
}

/// Runs the loop until the daemon stops; every connection still in it is closed then.
pub(super) fn run(shared: &Arc<Shared>, epoll: &Epoll, listener: &UnixListener) {
    let mut conns: FastMap<u64, Conn> = FastMap::default();
    let mut next_token = 0u64;
    // Set while the listener is out of the loop after a failed `accept`.
    let mut accept_paused: Option<std::time::Instant> = None;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    // Connections with complete calls left in their buffer (beyond a turn's share).
    let mut backlog: Vec<u64> = Vec::new();
    let mut touched: Vec<u64> = Vec::new();
    let mut batch: Vec<(u64, Call)> = Vec::new();
    loop {
        if let Some(until) = accept_paused
            && std::time::Instant::now() >= until
        {
            accept_paused = None;
            if let Err(e) = epoll.listen(listener, true) {
                warn!(error = %e, "epoll_ctl (listener)");
            }
        }
        let timeout = if !backlog.is_empty() {
            0
        } else if let Some(until) = accept_paused {
            let left = until.saturating_duration_since(std::time::Instant::now());
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
        } else {
            -1
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "epoll_wait");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut accept = false;
        touched.clear();
        for token in backlog.drain(..) {
            if let Some(c) = conns.get_mut(&token)
                && !c.touched
            {
                c.touched = true;
                touched.push(token);
            }
        }
        for ev in &events[..n] {
            let token = ev.u64;
            match token {
                LISTENER => accept = true,
                WAKE => shared.waker.drain(),
                _ => {
                    let Some(c) = conns.get_mut(&token) else {
                        continue;
                    };
                    if c.out_pending() {
                        c.flush();
                    } else if !c.eof && !c.has_frame() {
                        // Calls still buffered are served first: a client that floods calls
                        // while reading its replies does not grow the buffer.
                        c.read();
                    }
                    if !c.touched {
                        c.touched = true;
                        touched.push(token);
                    }
                }
            }
        }
        for &token in &touched {
            let c = conns.get_mut(&token).expect("touched connection");
            if !c.out_pending() && !c.dead {
                c.parse(token, &mut batch);
            }
        }
        if !batch.is_empty() {
            let mut wake = false;
            {
                let mut core = shared.lock();
                for (token, call) in batch.drain(..) {
                    let c = conns.get_mut(&token).expect("batched connection");
                    match call {
                        Some(req) => {
                            // A bug in one call must not take the loop, and with it every
                            // client, down: that caller gets EIO and its connection is closed,
                            // as a panicking per-connection thread would have done.
                            let out = &mut c.out;
                            let served =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    serve_call(shared, &mut core, req, out)
                                }));
                            match served {
                                Ok(w) => wake |= w,
                                Err(_) => {
                                    error!(
                                        "a call panicked: answering EIO, closing its connection"
                                    );
                                    let _ =
                                        rpc::encode_frame(&mut c.out, &Response::Err(libc::EIO));
                                    c.broken = true;
                                }
                            }
                        }
                        None => {
                            let _ = rpc::encode_frame(&mut c.out, &Response::Err(libc::EPROTO));
                        }
                    }
                }
            }
            if wake {
                shared.kick_ticker();
            }
        }
        for &token in &touched {
            let c = conns.get_mut(&token).expect("touched connection");
            c.touched = false;
            if c.out_pending() {
                c.flush();
            }
            match next_step(c) {
                Next::Stay(want, more) => {
                    if want != c.events {
                        let op = if c.events == 0 {
                            libc::EPOLL_CTL_ADD
                        } else if want == 0 {
                            libc::EPOLL_CTL_DEL
                        } else {
                            libc::EPOLL_CTL_MOD
                        };
                        if let Err(e) = epoll.ctl(op, c.stream.as_raw_fd(), token, want) {
                            // Never woken again otherwise: better closed than hung.
                            warn!(error = %e, "epoll_ctl: connection closed");
                            conns.remove(&token);
                            continue;
                        }
                        c.events = want;
                    }
                    if more {
                        backlog.push(token);
                    }
                }
                Next::Close => {
                    let c = conns.remove(&token).expect("touched connection");
                    // The fd is closed just after: its epoll registration goes with it.
                    drop(c);
                }
                Next::Handoff => {
                    let c = conns.remove(&token).expect("touched connection");
                    handoff(shared, epoll, c);
                }
            }
        }
        if accept && !accept_all(epoll, listener, &mut conns, &mut next_token) {
            // Out of fds, typically: the listener stays readable, so it is left out of the
            // loop for a while rather than the loop sleeping (and every client with it).
            accept_paused = Some(std::time::Instant::now() + ACCEPT_PAUSE);
            if let Err(e) = epoll.listen(listener, false) {
                warn!(error = %e, "epoll_ctl (listener)");
            }
        }
    }
}

/// Accepts every pending connection into the loop; false when `accept` failed for another
/// reason than no more pending connections.
fn accept_all(
    epoll: &Epoll,
    listener: &UnixListener,
    conns: &mut FastMap<u64, Conn>,
    next_token: &mut u64,
) -> bool {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                *next_token += 1;
                let token = *next_token;
                let mut c = Conn::new(stream);
                let events = libc::EPOLLIN as u32;
                if let Err(e) = epoll.add(c.stream.as_raw_fd(), token, events) {
                    warn!(error = %e, "epoll_ctl");
                    continue;
                }
                c.events = events;
                conns.insert(token, c);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "accept");
                return false;
            }
        }
    }
}

/// Gives connection `c` (its calls answered, a registration or waiting purge next) to a
/// thread of its own, with the bytes it sent beyond that call.
fn handoff(shared: &Arc<Shared>, epoll: &Epoll, c: Conn) {
    if c.events != 0 {
        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), 0, 0);
    }
    let Conn {
        stream,
        inbuf,
        pos,
        handoff,
        ..
    } = c;
    let Some(first) = handoff else {
        return;
    };
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let leftover = inbuf[pos..].to_vec();
    // Registered under the lock stop takes after setting `stop`: the connection is either
    // seen (and closed) by stop or dropped here.
    let mut conns = shared.conns();
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    conns.threads.retain(|t| !t.is_finished());
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    conns.next += 1;
    let id = conns.next;
    conns.open.insert(id, (clone, false));
    let s = shared.clone();
    let t = thread::Builder::new()
        .name("sim-conn".into())
        .spawn(move || {
            super::connection(&s, stream, id, first, leftover);
            s.conns().open.remove(&id);
        });
    match t {
        Ok(t) => conns.threads.push(t),
        Err(e) => {
            warn!(error = %e, "spawning a connection thread");
            conns.open.remove(&id);
        }
    }
}
