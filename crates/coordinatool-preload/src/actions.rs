//! `llapi_hsm_action_begin`/`_end` wrappers: a side table from the action handle returned by
//! the real `action_begin` to the request key, and the delivery of completions.
//!
//! The table is never part of Lustre's private struct (whose layout changes between Lustre
//! versions). Completions go to the IO thread in memory when `action_end` runs in the process
//! that registered; a forked child writes a fixed-size record to a pipe inherited from that
//! process (one atomic `write`, no lock, no allocation beyond the message), or, when the pipe
//! is unusable (parent gone, fd closed or reused), sends the `done` over a short connection of
//! its own. The table's lock is held across `fork` (`pthread_atfork`) so a child never inherits
//! it locked.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void};
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{Decoder, DoneRequest, Reply, Request};

use crate::client::{Key, Shared, fd_identity, lock, send_nosignal};
use crate::config::Config;
use crate::ct_log;

/// Size of a child's done record.
pub const RECORD_LEN: usize = 40;
const RECORD_MAGIC: u32 = 0x454e_4f44; // "DONE"
/// How long a child waits for room in a full done pipe before connecting itself.
const PIPE_FULL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of each step of a child's own connection.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A completion sent by a forked child through the done pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneRecord {
    /// Request key.
    pub key: Key,
    /// Positive errno, 0 for success.
    pub status: i32,
    /// Report only if the key is running here (failed `action_begin`).
    pub only_if_running: bool,
}

impl DoneRecord {
    /// Fixed little-endian layout: magic, flags, cookie, dfid (seq, oid, ver), status, pad.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&u32::from(self.only_if_running).to_le_bytes());
        b[8..16].copy_from_slice(&self.key.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.1.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.key.1.oid.to_le_bytes());
        b[28..32].copy_from_slice(&self.key.1.ver.to_le_bytes());
        b[32..36].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// Decodes a record; `None` if the magic or the length is wrong.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; RECORD_LEN] = b.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        if u32_at(0) != RECORD_MAGIC {
            return None;
        }
        Some(Self {
            only_if_running: u32_at(4) & 1 != 0,
            key: (u64_at(8), LuFid::new(u64_at(16), u32_at(24), u32_at(28))),
            status: u32_at(32) as i32,
        })
    }
}

struct Entry {
    key: Key,
    shared: Arc<Shared>,
}

type Table = BTreeMap<usize, Entry>;

static TABLE: Mutex<Table> = Mutex::new(BTreeMap::new());

thread_local! {
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Table>>> = const { RefCell::new(None) };
}

extern "C" fn before_fork() {
    let g = lock(&TABLE);
    FORK_GUARD.with(|c| *c.borrow_mut() = Some(g));
}

extern "C" fn after_fork() {
    FORK_GUARD.with(|c| drop(c.borrow_mut().take()));
}

extern "C" fn after_fork_child() {
    // SAFETY: getpid is async-signal-safe and cannot fail.
    PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    after_fork();
}

/// This process's id, kept up to date by the fork handlers: `getpid` is a system call, and
/// the hot paths ask which process they run in. 0 until the handlers are installed. A child
/// made without fork() keeps its parent's value: where that would lose work (a completion)
/// the real pid is asked instead.
static PID: AtomicI32 = AtomicI32::new(0);

/// This process's id (cached once the fork handlers are installed).
pub fn current_pid() -> libc::pid_t {
    match PID.load(Ordering::Relaxed) {
        // SAFETY: getpid cannot fail.
        0 => unsafe { libc::getpid() },
        p => p,
    }
}

/// Registers the fork handlers (once per process).
pub fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are plain extern "C" functions that live as long as the process.
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork_child))
        };
        // From here on every fork() updates it in the child.
        // SAFETY: getpid cannot fail.
        PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    });
}

/// Reads action, dfid and cookie of a `struct hsm_action_item` (packed, so unaligned reads).
///
/// # Safety
/// `hai` must point to at least the 72-byte fixed part of an item.
unsafe fn read_hai(hai: *const c_void) -> (u32, Key) {
    let p = hai.cast::<u8>();
    // SAFETY: offsets inside the fixed part (lustre-hsm.md §2.3).
    unsafe {
        let action = p.add(4).cast::<u32>().read_unaligned();
        let seq = p.add(24).cast::<u64>().read_unaligned();
        let oid = p.add(32).cast::<u32>().read_unaligned();
        let ver = p.add(36).cast::<u32>().read_unaligned();
        let cookie = p.add(56).cast::<u64>().read_unaligned();
        (action, (cookie, LuFid::new(seq, oid, ver)))
    }
}

/// After the real `action_begin`: remember the handle's key, or report a failed begin.
///
/// # Safety
/// `phcp` and `hai` are the copytool's arguments (NULL tolerated).
pub unsafe fn after_begin(
    shared: &Arc<Shared>,
    rc: c_int,
    phcp: *mut *mut c_void,
    hai: *const c_void,
    is_error: bool,
) {
    if hai.is_null() {
        return;
    }
    // SAFETY: a non-NULL hai given to action_begin points to an item.
    let (action, key) = unsafe { read_hai(hai) };
    if rc == 0 && !phcp.is_null() {
        // SAFETY: phcp is valid (checked above); the real function stored the handle there.
        let hcp = unsafe { *phcp };
        if !hcp.is_null() {
            let entry = Entry {
                key,
                shared: Arc::clone(shared),
            };
            lock(&TABLE).insert(hcp as usize, entry);
        }
    } else if rc < 0 && !is_error && action != HsmAction::Cancel.code() {
        // The copytool may give up on this action: make sure the server does not keep it
        // running forever (a later done for the same key is harmless).
        report(shared, key, -rc, true);
    }
}

/// Takes the key of an action handle before the real `action_end` frees it.
pub fn take(hcp: *mut c_void) -> Option<(Key, Arc<Shared>)> {
    lock(&TABLE)
        .remove(&(hcp as usize))
        .map(|e| (e.key, e.shared))
}

/// Puts a key back when the real `action_end` refused the handle without freeing it.
pub fn put_back(hcp: *mut c_void, key: Key, shared: Arc<Shared>) {
    lock(&TABLE).insert(hcp as usize, Entry { key, shared });
}

/// Delivers a completion to the server through the right path for this process.
pub fn report(shared: &Arc<Shared>, key: Key, status: i32, only_if_running: bool) {
    // The real pid, not the cached one: a child made without fork() (_Fork, clone) runs no
    // fork handler, and its done queued in its copy of the shared state would be lost.
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } == shared.owner_pid {
        shared.push_done(key, status, only_if_running);
        return;
    }
    let rec = DoneRecord {
        key,
        status: status.saturating_abs(),
        only_if_running,
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let owner_alive = unsafe { libc::kill(shared.owner_pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let fd = shared.child_wr.as_raw_fd();
    if owner_alive && fd_identity(fd) == Some(shared.child_pipe_id) {
        match write_record(fd, &rec.encode()) {
            Ok(()) => return,
            Err(e) => ct_log!(Warn, e, "cannot pass a done to the registering process"),
        }
    }
    if only_if_running {
        // Without the parent's table we cannot tell; leave it to the parent's reconnect.
        return;
    }
    if let Err(e) = direct_done(&shared.config, rec) {
        ct_log!(
            Error,
            0,
            "cannot report done for cookie {:#x} {} to the server: {e}",
            key.0,
            key.1
        );
    }
}

fn write_record(fd: c_int, bytes: &[u8; RECORD_LEN]) -> Result<(), i32> {
    let deadline = Instant::now() + PIPE_FULL_TIMEOUT;
    loop {
        // SAFETY: bytes is valid for RECORD_LEN bytes; RECORD_LEN < PIPE_BUF so the write is atomic.
        let rc = unsafe { libc::write(fd, bytes.as_ptr().cast(), RECORD_LEN) };
        if rc == RECORD_LEN as isize {
            return Ok(());
        }
        if rc >= 0 {
            return Err(libc::EIO);
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match e {
            libc::EINTR => {}
            libc::EAGAIN => {
                if Instant::now() >= deadline {
                    return Err(libc::ETIMEDOUT);
                }
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            e => return Err(e),
        }
    }
}

/// Sends one `done` over a connection of its own (no ehlo: servers accept `done` from any
/// connection) and waits for the answer.
pub fn direct_done(config: &Config, rec: DoneRecord) -> Result<(), String> {
    let addrs = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", config.host))?;
    let mut last = String::from("no address");
    for addr in addrs {
        let mut sock = match TcpStream::connect_timeout(&addr, DIRECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let mut out = Vec::new();
        Request::Done(DoneRequest {
            cookie: rec.key.0,
            dfid: rec.key.1,
            status: rec.status,
        })
        .encode(&mut out);
        let mut sent = 0;
        while sent < out.len() {
            match send_nosignal(sock.as_raw_fd(), &out[sent..]) {
                Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                Ok(n) => sent += n,
                Err(e) => return Err(std::io::Error::from_raw_os_error(e).to_string()),
            }
        }
        let _ = sock.set_read_timeout(Some(DIRECT_TIMEOUT));
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            match dec.next_message::<Reply>() {
                Ok(Some(r @ Reply::Done(_))) => {
                    return if r.is_ok() {
                        Ok(())
                    } else {
                        Err(format!("server refused done (status {})", r.status()))
                    };
                }
                Ok(Some(_)) => {}
                Ok(None) => {}
                Err(e) => return Err(format!("bad reply: {e}")),
            }
            match sock.read(&mut buf) {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => dec.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_pid_follows_fork() {
        install_fork_handlers();
        // SAFETY: getpid cannot fail.
        assert_eq!(current_pid(), unsafe { libc::getpid() });
        // SAFETY: the child only makes async-signal-safe calls (an atomic load, getpid)
        // before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = current_pid() == unsafe { libc::getpid() };
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        assert_eq!(current_pid(), unsafe { libc::getpid() }, "parent unchanged");
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child saw its parent's pid ({status:#x})"
        );
    }

    #[test]
    fn record_round_trip() {
        let r = DoneRecord {
            key: (0xdead_beef_0000_0001, LuFid::new(0x2_0000_0401, 7, 1)),
            status: 95,
            only_if_running: true,
        };
        assert_eq!(DoneRecord::decode(&r.encode()), Some(r));
        let mut bad = r.encode();
        bad[0] ^= 1;
        assert_eq!(DoneRecord::decode(&bad), None);
        assert_eq!(DoneRecord::decode(&bad[..10]), None);
    }

    #[test]
    fn hai_fields_are_read_at_lustre_offsets() {
        let item = coordinatool_lustre::HsmActionItem::new(
            HsmAction::Restore,
            LuFid::new(0x200000401, 5, 0),
            0x1_2345_6789,
        );
        let mut item = item;
        item.dfid = LuFid::new(0x200000402, 6, 3);
        let mut buf = vec![0u8; 1];
        item.encode_into(&mut buf); // odd offset: reads must be unaligned
        // SAFETY: buf[1..] holds a full encoded item.
        let (action, key) = unsafe { read_hai(buf[1..].as_ptr().cast()) };
        assert_eq!(action, HsmAction::Restore.code());
        assert_eq!(key, (0x1_2345_6789, LuFid::new(0x200000402, 6, 3)));
    }
}
