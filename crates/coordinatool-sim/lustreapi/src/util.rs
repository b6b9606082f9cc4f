//! Plumbing shared by the exported functions: panic containment, logging into the C part,
//! the daemon connection, mount lookup, the client UUID.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use coordinatool_sim::rpc::{self, Reply, Request, Response, RpcError};

/// `LLAPI_MSG_ERROR`.
pub(crate) const MSG_ERROR: c_int = 2;
/// `LLAPI_MSG_DEBUG`.
pub(crate) const MSG_DEBUG: c_int = 6;
/// `LLAPI_MSG_NO_ERRNO`.
pub(crate) const MSG_NO_ERRNO: c_int = 0x10;

/// Environment variable naming the simulated client node. Copytools on one mount with the
/// same value are one agent (one client mount UUID), as copytools of one Lustre client are;
/// give them different values to simulate several client nodes sharing a directory.
pub const CLIENT_ENV: &str = "COORDINATOOL_SIM_CLIENT";
/// Environment variable listing simulated mounts (`:`-separated) where functions given a
/// filesystem name instead of a path (`llapi_fid2path`) look for it.
pub const MOUNTS_ENV: &str = "COORDINATOOL_SIM_MOUNTS";

unsafe extern "C" {
    fn lsa_log_msg(level: c_int, err: c_int, msg: *const c_char);
}

/// Logs through the library's error callback (level and callback of `llapi_msg_set_level` and
/// `llapi_error_callback_set`), without going through an exported symbol.
pub(crate) fn log(level: c_int, err: i32, msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: a NUL-terminated string; the C function only formats it with "%s".
    unsafe { lsa_log_msg(level, err, c.as_ptr()) }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // This std is the shared object's own copy: the hook only sees panics of this library.
        std::panic::set_hook(Box::new(|info| {
            log(
                MSG_ERROR | MSG_NO_ERRNO,
                0,
                &format!("liblustreapi stand-in: internal error: {info}"),
            );
        }));
    });
}

/// Runs an exported function's body; a panic becomes `on_panic` instead of unwinding into C.
pub(crate) fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    install_panic_hook();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A C string argument as a path; `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn c_path(p: *const c_char) -> Option<PathBuf> {
    if p.is_null() {
        return None;
    }
    // SAFETY: caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    Some(PathBuf::from(OsStr::from_bytes(s.to_bytes())))
}

/// A path as a C string (paths from the OS never contain NUL).
pub(crate) fn path_cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// This process's id, cached: `getpid` is a system call, and the connection code checks it
/// several times per call. A fork's child clears the cache (`pthread_atfork`).
pub(crate) fn pid() -> u32 {
    static PID: AtomicU32 = AtomicU32::new(0);
    static ATFORK: Once = Once::new();
    extern "C" fn forget_pid() {
        PID.store(0, Ordering::Relaxed);
    }
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic (async-signal-safe).
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// One request/response exchange with the daemon of `mount`. Returns a positive errno.
///
/// Each thread keeps one connection (to the mount it used last), tagged with the process id:
/// a forked child never shares its parent's connection (it opens its own), so calls work
/// from any thread and from forked children. A kept connection found broken (daemon
/// restarted) is replaced once when the request could not have reached the daemon.
pub(crate) fn call(mount: &Path, req: &Request) -> Result<Reply, i32> {
    let (r, conn) = call_on_conn(take_conn(mount), mount, req);
    if let Some(c) = conn {
        put_conn(c);
    }
    r
}

/// [`call`] on `conn` (a connection an action keeps, or none): returns the outcome and the
/// connection to keep (none after a transport error).
pub(crate) fn call_on_conn(
    conn: Option<Conn>,
    mount: &Path,
    req: &Request,
) -> (Result<Reply, i32>, Option<Conn>) {
    call_after(conn, mount, &[], req)
}

/// [`call_on_conn`] sending the frames `queued` (one-way requests) first, in the same write.
pub(crate) fn call_after(
    conn: Option<Conn>,
    mount: &Path,
    queued: &[u8],
    req: &Request,
) -> (Result<Reply, i32>, Option<Conn>) {
    let pid = pid();
    if let Some(k) = conn
        && k.pid == pid
        && k.mount == mount
    {
        // Err(Unsent): nothing reached the daemon, safe to send again on a new connection.
        if let Ok(r) = exchange(&k.stream, queued, req) {
            let keep = !matches!(r, Err(e) if is_transport_errno(e));
            return (r, keep.then_some(k));
        }
    }
    let stream = match connect(mount) {
        Ok(s) => s,
        Err(e) => return (Err(e), None),
    };
    match exchange(&stream, queued, req) {
        Ok(r) => {
            let keep = !matches!(r, Err(e) if is_transport_errno(e));
            let conn = keep.then(|| Conn {
                pid,
                mount: mount.to_owned(),
                stream,
                pipelined: None,
            });
            (r, conn)
        }
        Err(Unsent) => (Err(libc::ENOTCONN), None),
    }
}

/// True if the daemon of `mount` runs in pipelined mode (asked once per connection).
pub(crate) fn pipelined(mount: &Path) -> bool {
    let conn = take_conn(mount);
    if let Some(c) = conn {
        if let Some(p) = c.pipelined {
            put_conn(c);
            return p;
        }
        return ask_mode(Some(c), mount);
    }
    ask_mode(None, mount)
}

fn ask_mode(conn: Option<Conn>, mount: &Path) -> bool {
    let (r, conn) = call_on_conn(conn, mount, &Request::Hello);
    let p = matches!(
        r,
        Ok(Reply::Hello {
            pipelined: true,
            ..
        })
    );
    if let Some(mut c) = conn {
        c.pipelined = Some(p);
        put_conn(c);
    }
    p
}

/// A daemon connection kept for the next calls: by a thread, or by an action between its
/// begin and end in pipelined mode (so its calls reach the daemon in order).
#[derive(Debug)]
pub(crate) struct Conn {
    pid: u32,
    mount: PathBuf,
    stream: UnixStream,
    /// The daemon's mode, once asked.
    pipelined: Option<bool>,
}

thread_local! {
    static CONN: std::cell::RefCell<Option<Conn>> = const { std::cell::RefCell::new(None) };
}

/// Takes the calling thread's connection to `mount`, if it has one.
pub(crate) fn take_conn(mount: &Path) -> Option<Conn> {
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref()
            .is_some_and(|k| k.mount == mount && k.pid == pid())
        {
            c.take()
        } else {
            None
        }
    })
}

/// Gives a connection back to the calling thread (replacing one to another mount; closed if
/// the thread already has one to this mount).
pub(crate) fn put_conn(k: Conn) {
    CONN.with(|c| {
        let mut c = c.borrow_mut();
        let pid = pid();
        if k.pid == pid
            && !c
                .as_ref()
                .is_some_and(|o| o.mount == k.mount && o.pid == pid)
        {
            *c = Some(k);
        }
    });
}

/// The request could not be written: nothing reached the daemon.
struct Unsent;

fn is_transport_errno(e: i32) -> bool {
    matches!(
        e,
        libc::ENOTCONN | libc::EPIPE | libc::ECONNRESET | libc::EPROTO
    )
}

/// Sends `req` and reads the response (a one-way request has none: `Unit` once sent);
/// `Err(Unsent)` if the send failed.
fn exchange(
    stream: &UnixStream,
    queued: &[u8],
    req: &Request,
) -> Result<Result<Reply, i32>, Unsent> {
    let mut frame = Vec::with_capacity(queued.len() + 64);
    frame.extend_from_slice(queued);
    if let Err(e) = rpc::encode_frame(&mut frame, req) {
        return Ok(Err(e.errno()));
    }
    if send_all(stream, &frame).is_err() {
        return Err(Unsent);
    }
    if !req.expects_reply() {
        return Ok(Ok(Reply::Unit));
    }
    // The registration's reply is followed by the copytool's KUC stream on the same socket:
    // no byte past the reply may be taken from it.
    let exact = matches!(req, Request::Register { .. });
    Ok(read_response(stream, exact))
}

/// Connects to the daemon of `mount`: `ENOTCONN` when it is not running.
pub(crate) fn connect(mount: &Path) -> Result<UnixStream, i32> {
    UnixStream::connect(rpc::socket_path(mount)).map_err(|e| {
        match e.raw_os_error() {
            // No socket, or nobody listening: the simulated MDTs are unreachable.
            Some(libc::ENOENT | libc::ECONNREFUSED) | None => libc::ENOTCONN,
            Some(n) => n,
        }
    })
}

/// Sends `req` on `stream` and reads the response.
pub(crate) fn call_on(stream: &UnixStream, req: &Request) -> Result<Reply, i32> {
    exchange(stream, &[], req).unwrap_or(Err(libc::ENOTCONN))
}

/// Reads the reply to the one call in flight. Unless `exact`, length and body come in one
/// `read` into a stack buffer (nothing follows a reply, so nothing read is lost).
fn read_response(stream: &UnixStream, exact: bool) -> Result<Reply, i32> {
    let frame = if exact {
        let mut r = stream;
        rpc::read_frame::<Response>(&mut r)
    } else {
        read_reply_frame(stream)
    };
    match frame {
        Ok(Some(Response::Ok(reply))) => Ok(reply),
        Ok(Some(Response::Err(e))) => Err(if e > 0 { e } else { libc::EPROTO }),
        Ok(None) => Err(libc::ENOTCONN),
        Err(e) => Err(match e {
            RpcError::Closed => libc::ENOTCONN,
            other => other.errno(),
        }),
    }
}

/// One reply frame: read into a stack buffer, spilling to the heap for a large reply.
fn read_reply_frame(stream: &UnixStream) -> Result<Option<Response>, RpcError> {
    let mut small = [0u8; 512];
    let mut big: Vec<u8> = Vec::new();
    let mut got = 0usize;
    loop {
        // Wait in poll, not in recv: the daemon taking the request off the socket wakes the
        // sleepers of a blocking recv (write space), poll's waiters only for input.
        wait_readable(stream.as_raw_fd());
        let buf: &mut [u8] = if big.is_empty() {
            &mut small[got..]
        } else {
            &mut big[got..]
        };
        let n = match std::io::Read::read(&mut &*stream, buf) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(RpcError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        got += n;
        let have: &[u8] = if big.is_empty() {
            &small[..got]
        } else {
            &big[..got]
        };
        if let Some((resp, _)) = rpc::decode_frame::<Response>(have)? {
            return Ok(Some(resp));
        }
        if got >= 4 {
            let len = 4 + u32::from_le_bytes(have[..4].try_into().expect("4 bytes")) as usize;
            if big.is_empty() && len > small.len() {
                big = vec![0; len];
                big[..got].copy_from_slice(&small[..got]);
            }
        }
    }
}

/// Writes with `MSG_NOSIGNAL`: a daemon gone away must not kill the host with SIGPIPE.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        // SAFETY: a valid socket and a readable buffer of buf.len() bytes.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(if e == libc::EPIPE { libc::ENOTCONN } else { e });
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes (retrying EINTR, polling on EAGAIN).
pub(crate) fn read_full(fd: c_int, buf: &mut [u8]) -> Result<(), i32> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
            continue;
        }
        if n == 0 {
            return Err(libc::EPROTO);
        }
        match errno() {
            libc::EINTR => {}
            libc::EAGAIN => wait_readable(fd),
            e => return Err(e),
        }
    }
    Ok(())
}

/// Blocks until `fd` is readable (or hung up).
pub(crate) fn wait_readable(fd: c_int) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// True if `dir` is the root of a simulated mount whose daemon socket exists.
pub(crate) fn is_mount_root(dir: &Path) -> bool {
    rpc::socket_path(dir).exists()
}

/// The simulated mount containing `path` (absolute or relative to the cwd).
pub(crate) fn mount_of(path: &Path) -> Option<PathBuf> {
    let m = rpc::find_mount(path)?;
    remember_mount(&m);
    Some(m)
}

fn known_mounts() -> &'static Mutex<Vec<PathBuf>> {
    static KNOWN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    &KNOWN
}

/// Keeps `mount` for later look-ups by filesystem name.
pub(crate) fn remember_mount(mount: &Path) {
    let mut k = known_mounts()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !k.iter().any(|m| m == mount) {
        k.push(mount.to_owned());
    }
}

/// The filesystem name served at `mount` (asks the daemon).
pub(crate) fn fsname_of(mount: &Path) -> Result<String, i32> {
    match call(mount, &Request::Hello)? {
        Reply::Hello { fsname, .. } => Ok(fsname),
        _ => Err(libc::EPROTO),
    }
}

/// The mount of `device`: a path inside a simulated mount, or a filesystem name looked up
/// among the mounts this process used and those of [`MOUNTS_ENV`].
pub(crate) fn mount_of_device(device: &Path) -> Option<PathBuf> {
    if device.as_os_str().as_bytes().contains(&b'/') {
        return mount_of(device);
    }
    let name = device.to_string_lossy().into_owned();
    let mut candidates: Vec<PathBuf> = known_mounts()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(v) = std::env::var_os(MOUNTS_ENV) {
        candidates.extend(std::env::split_paths(&v));
    }
    candidates
        .into_iter()
        .filter(|m| is_mount_root(m))
        .find(|m| fsname_of(m).is_ok_and(|f| f == name))
}

/// The path of an open fd (`/proc/self/fd/N`).
pub(crate) fn fd_path(fd: c_int) -> Result<PathBuf, i32> {
    if fd < 0 {
        return Err(libc::EBADF);
    }
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | None => libc::EBADF,
        Some(n) => n,
    })
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a writable buffer of the given length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The client mount UUID of this process for `mount`: derived from the client node name
/// ([`CLIENT_ENV`], else the host name) and the mount path, so every copytool of one
/// simulated client on one mount shares it (one agent), like on a real Lustre client.
pub(crate) fn client_uuid(mount: &Path) -> String {
    let node = std::env::var(CLIENT_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(hostname);
    let canon = mount.canonicalize().unwrap_or_else(|_| mount.to_owned());
    let mut key = node.into_bytes();
    key.push(0);
    key.extend_from_slice(canon.as_os_str().as_bytes());
    let a = fnv1a(0, &key);
    let b = fnv1a(0x9e37_79b9_7f4a_7c15, &key);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// The absolute form of `path` (for requests the daemon resolves).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
