//! Messages of the preload, through the host's liblustreapi log (`llapi_error`), so they obey
//! the copytool's llapi log level and callbacks; straight to stderr (one `write(2)`, no lock,
//! safe in forked children) when liblustreapi has no `llapi_error`.

use std::ffi::{CString, c_uint};
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use coordinatool_lustre::LlapiLogLevel;

use crate::real;

/// `LLAPI_MSG_NO_ERRNO`: do not append strerror.
const NO_ERRNO: c_uint = 0x10;

/// Level used when messages go to stderr (the host's llapi level applies otherwise).
static STDERR_LEVEL: AtomicU8 = AtomicU8::new(LlapiLogLevel::Normal as u8);

/// Sets the preload's level; with `apply_to_host` the host's llapi level is set too (as
/// upstream does when the config names a level).
pub fn set_level(level: LlapiLogLevel, apply_to_host: bool) {
    STDERR_LEVEL.store(level as u8, Ordering::Relaxed);
    if apply_to_host && let Some(f) = real::msg_set_level() {
        // SAFETY: plain C call with an int.
        unsafe { f(level as i32) };
    }
}

/// Logs `args` at `level`; `err` is a positive errno appended by liblustreapi (0 for none).
pub fn log(level: LlapiLogLevel, err: i32, args: fmt::Arguments<'_>) {
    let text = format!("coordinatool: {args}");
    if let Some(f) = real::llapi_error() {
        let msg = CString::new(text.replace('\0', " ")).unwrap_or_default();
        let flags = if err == 0 { NO_ERRNO } else { 0 };
        // SAFETY: "%s" consumes exactly the one C string passed.
        unsafe { f(level as c_uint | flags, err, c"%s".as_ptr(), msg.as_ptr()) };
        return;
    }
    if level as u8 > STDERR_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let mut line = text;
    if err != 0 {
        line.push_str(&format!(
            ": {} ({err})",
            std::io::Error::from_raw_os_error(err)
        ));
    }
    line.push('\n');
    let bytes = line.as_bytes();
    // SAFETY: writing an owned buffer to fd 2; a short or failed write only loses the message.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Logs with format arguments: `ct_log!(Level, errno, "fmt", args...)`.
#[macro_export]
#[doc(hidden)]
macro_rules! ct_log {
    ($level:ident, $err:expr, $($arg:tt)*) => {
        $crate::log::log(coordinatool_lustre::LlapiLogLevel::$level, $err, format_args!($($arg)*))
    };
}
