//! The optional event FIFO (`llapi_hsm_register_event_fifo`): one JSON line per copytool
//! event, for monitoring tools.

use std::os::raw::{c_char, c_int};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use coordinatool_lustre::ffi::bindings::{
    HSMA_ARCHIVE, HSMA_CANCEL, HSMA_REMOVE, HSMA_RESTORE, hsm_action_item_fixed,
};
use coordinatool_sim::rpc::{Fid, Reply, Request};
use serde_json::{Map, Value, json};

use crate::action::to_fid;
use crate::util::{self, errno};

/// Write end of the FIFO, -1 when none is registered.
static FIFO: AtomicI32 = AtomicI32::new(-1);

unsafe extern "C" {
    fn lsa_set_event_sink(sink: Option<unsafe extern "C" fn(c_int, c_int, *const c_char)>);
}

fn event_time() -> String {
    let mut buf = [0u8; 64];
    // SAFETY: time/localtime_r/strftime with valid buffers.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y-%m-%d %T %z".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn write_event(event_type: &str, fields: Map<String, Value>) {
    let fd = FIFO.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let mut obj = Map::new();
    obj.insert("event_time".into(), json!(event_time()));
    obj.insert("event_type".into(), json!(event_type));
    obj.extend(fields);
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    // One write per line (atomic up to PIPE_BUF); a full or reader-less FIFO drops the event.
    // SAFETY: the FIFO's fd and a readable buffer.
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

fn fields(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `REGISTER`.
pub(crate) fn register(mount: &Path, archives: &[u32], uuid: &str) {
    write_event(
        "REGISTER",
        fields(vec![
            ("archive", json!(archives.first().copied().unwrap_or(0))),
            ("mount_point", json!(mount.display().to_string())),
            ("uuid", json!(uuid)),
        ]),
    );
}

/// `UNREGISTER`.
pub(crate) fn unregister(mount: &Path, uuid: &str) {
    write_event(
        "UNREGISTER",
        fields(vec![
            ("mount_point", json!(mount.display().to_string())),
            ("uuid", json!(uuid)),
        ]),
    );
}

/// `<ACTION>_<phase>` (START, RUNNING, FINISH, CANCEL, ERROR).
pub(crate) fn action(
    mount: &Path,
    hai: &hsm_action_item_fixed,
    phase: &str,
    bytes: Option<(u64, u64)>,
    err: i32,
) {
    if FIFO.load(Ordering::SeqCst) < 0 {
        return;
    }
    let name = match hai.hai_action {
        HSMA_ARCHIVE => "ARCHIVE",
        HSMA_RESTORE => "RESTORE",
        HSMA_REMOVE => "REMOVE",
        HSMA_CANCEL => "CANCEL",
        _ => "UNKNOWN",
    };
    let cookie = hai.hai_cookie;
    let mut f = fields(vec![
        ("cookie", json!(cookie)),
        ("source_fid", json!(to_fid(hai.hai_fid).to_string())),
        ("data_fid", json!(to_fid(hai.hai_dfid).to_string())),
        ("mount_point", json!(mount.display().to_string())),
    ]);
    if phase == "START" {
        // As lhsmtool_posix's monitors expect: where the file is, relative to the mount.
        let fid = Fid(to_fid(hai.hai_fid));
        if let Ok(Reply::Path { path }) = util::call(mount, &Request::Fid2Path { fid }) {
            f.insert(
                "lustre_path".into(),
                json!(path.to_string_lossy().into_owned()),
            );
        }
    }
    if let Some((current, total)) = bytes {
        f.insert("current_bytes".into(), json!(current));
        f.insert("total_bytes".into(), json!(total));
    }
    if err != 0 {
        f.insert("errno".into(), json!(err));
        f.insert(
            "error".into(),
            json!(std::io::Error::from_raw_os_error(err).to_string()),
        );
    }
    write_event(&format!("{name}_{phase}"), f);
}

unsafe extern "C" fn logged_message(level: c_int, rc: c_int, msg: *const c_char) {
    util::guard((), || {
        if msg.is_null() {
            return;
        }
        // SAFETY: the C part passes a NUL-terminated buffer.
        let text = unsafe { std::ffi::CStr::from_ptr(msg) }.to_string_lossy();
        let mut f = fields(vec![
            ("level", json!(level)),
            ("message", json!(text.trim_end())),
        ]);
        if rc != 0 {
            f.insert("errno".into(), json!(rc));
            f.insert(
                "error".into(),
                json!(std::io::Error::from_raw_os_error(rc).to_string()),
            );
        }
        write_event("LOGGED_MESSAGE", f);
    });
}

pub(crate) fn register_fifo(path: &Path) -> c_int {
    let c = util::path_cstring(path);
    // SAFETY: NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } < 0 && errno() != libc::EEXIST {
        return -errno();
    }
    // Hold a read end for a moment so the non-blocking write-only open succeeds without a
    // reader.
    // SAFETY: NUL-terminated path.
    let rfd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if rfd < 0 {
        return -errno();
    }
    // SAFETY: NUL-terminated path.
    let wfd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    let e = errno();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(rfd) };
    if wfd < 0 {
        return -e;
    }
    // A reader going away must not kill the copytool.
    // SAFETY: setting a signal disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let old = FIFO.swap(wfd, Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: the previous FIFO fd, owned here.
        unsafe { libc::close(old) };
    }
    // SAFETY: installs a function of the expected signature.
    unsafe { lsa_set_event_sink(Some(logged_message)) };
    0
}

pub(crate) fn unregister_fifo(_path: &Path) -> c_int {
    let old = FIFO.swap(-1, Ordering::SeqCst);
    if old < 0 {
        return -libc::EINVAL;
    }
    // SAFETY: removes the sink, then closes the fd owned here.
    unsafe {
        lsa_set_event_sink(None);
        libc::close(old);
    }
    0
}
