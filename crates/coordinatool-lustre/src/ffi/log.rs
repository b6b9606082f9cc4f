//! liblustreapi's log level and a log callback that routes its messages into `tracing`.

use std::os::raw::{c_char, c_int};

use super::Lustreapi;
use super::bindings::{self, __va_list_tag, llapi_message_level};

/// `tracing` target of the messages liblustreapi logs through [`Lustreapi::route_logs_to_tracing`].
pub const TRACING_TARGET: &str = "liblustreapi";

/// Bytes kept of one formatted library message (longer ones are cut and marked).
const MESSAGE_MAX: usize = 2048;

/// liblustreapi's message levels (`enum llapi_message_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LlapiLogLevel {
    /// `LLAPI_MSG_OFF` (0): nothing.
    Off = bindings::LLAPI_MSG_OFF,
    /// `LLAPI_MSG_FATAL` (1).
    Fatal = bindings::LLAPI_MSG_FATAL,
    /// `LLAPI_MSG_ERROR` (2).
    Error = bindings::LLAPI_MSG_ERROR,
    /// `LLAPI_MSG_WARN` (3).
    Warn = bindings::LLAPI_MSG_WARN,
    /// `LLAPI_MSG_NORMAL` (4), the library's default.
    Normal = bindings::LLAPI_MSG_NORMAL,
    /// `LLAPI_MSG_INFO` (5).
    Info = bindings::LLAPI_MSG_INFO,
    /// `LLAPI_MSG_DEBUG` (6).
    Debug = bindings::LLAPI_MSG_DEBUG,
}

impl LlapiLogLevel {
    /// The level in the low bits ([`LLAPI_MSG_MASK`](bindings::LLAPI_MSG_MASK)) of a raw level
    /// argument; 7 (`LLAPI_MSG_MAX`) counts as [`Debug`](Self::Debug).
    pub const fn from_raw(raw: u32) -> LlapiLogLevel {
        match raw & bindings::LLAPI_MSG_MASK {
            0 => LlapiLogLevel::Off,
            1 => LlapiLogLevel::Fatal,
            2 => LlapiLogLevel::Error,
            3 => LlapiLogLevel::Warn,
            4 => LlapiLogLevel::Normal,
            5 => LlapiLogLevel::Info,
            _ => LlapiLogLevel::Debug,
        }
    }

    /// The library level that lets through what a `tracing` filter at `filter` would show,
    /// so the library does not format messages that would be dropped anyway.
    pub fn from_tracing(filter: tracing::level_filters::LevelFilter) -> LlapiLogLevel {
        use tracing::level_filters::LevelFilter;
        if filter == LevelFilter::OFF {
            LlapiLogLevel::Off
        } else if filter <= LevelFilter::ERROR {
            LlapiLogLevel::Error
        } else if filter <= LevelFilter::WARN {
            LlapiLogLevel::Warn
        } else if filter <= LevelFilter::INFO {
            LlapiLogLevel::Info
        } else {
            LlapiLogLevel::Debug
        }
    }

    /// The `tracing` level a message of this level is logged at.
    pub fn tracing_level(self) -> tracing::Level {
        match self {
            LlapiLogLevel::Off | LlapiLogLevel::Fatal | LlapiLogLevel::Error => {
                tracing::Level::ERROR
            }
            LlapiLogLevel::Warn => tracing::Level::WARN,
            LlapiLogLevel::Normal | LlapiLogLevel::Info => tracing::Level::INFO,
            LlapiLogLevel::Debug => tracing::Level::DEBUG,
        }
    }
}

unsafe extern "C" {
    /// C99 `vsnprintf`. On x86_64 Linux `va_list` is `__va_list_tag[1]`, which a C callee
    /// receives as a pointer to its first element: exactly the `*mut __va_list_tag` the
    /// library hands to its log callback, so it can be passed on unchanged (once: it is
    /// consumed).
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        fmt: *const c_char,
        ap: *mut __va_list_tag,
    ) -> c_int;
}

/// Formats one library message: the printf result, then `: <strerror> (<errno>)` like the
/// library's default output when `err` is non-zero and `LLAPI_MSG_NO_ERRNO` is not set.
///
/// # Safety
/// `fmt` is NULL or a printf format whose arguments are in `ap`, which is unused so far.
unsafe fn format_message(
    level: llapi_message_level,
    err: c_int,
    fmt: *const c_char,
    ap: *mut __va_list_tag,
) -> String {
    let mut msg = if fmt.is_null() {
        String::from("<no message>")
    } else {
        let mut buf = [0u8; MESSAGE_MAX];
        // SAFETY: the buffer is MESSAGE_MAX bytes; the caller guarantees fmt/ap match.
        let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, ap) };
        match usize::try_from(n) {
            Err(_) => String::from("<unformattable message>"),
            Ok(n) if n < MESSAGE_MAX => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Ok(_) => {
                let mut s = String::from_utf8_lossy(&buf[..MESSAGE_MAX - 1]).into_owned();
                s.push_str("...(truncated)");
                s
            }
        }
    };
    while msg.ends_with('\n') {
        msg.pop();
    }
    if err != 0 && level & bindings::LLAPI_MSG_NO_ERRNO == 0 {
        let err = err.checked_abs().unwrap_or(i32::MAX);
        msg.push_str(&format!(
            ": {} ({err})",
            std::io::Error::from_raw_os_error(err)
                .to_string()
                .split(" (os error")
                .next()
                .unwrap_or_default()
        ));
    }
    msg
}

/// The callback installed by [`Lustreapi::route_logs_to_tracing`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
unsafe extern "C" fn tracing_log_callback(
    level: llapi_message_level,
    err: c_int,
    fmt: *const c_char,
    ap: *mut __va_list_tag,
) {
    // SAFETY: the library calls its log callback with a format and its unused va_list.
    let msg = unsafe { format_message(level, err, fmt, ap) };
    match LlapiLogLevel::from_raw(level).tracing_level() {
        tracing::Level::ERROR => tracing::error!(target: TRACING_TARGET, errno = err, "{msg}"),
        tracing::Level::WARN => tracing::warn!(target: TRACING_TARGET, errno = err, "{msg}"),
        tracing::Level::INFO => tracing::info!(target: TRACING_TARGET, errno = err, "{msg}"),
        _ => tracing::debug!(target: TRACING_TARGET, errno = err, "{msg}"),
    }
}

impl Lustreapi {
    /// Sets the library's message level (`llapi_msg_set_level`): messages above it are dropped
    /// before they reach a callback.
    pub fn set_log_level(&self, level: LlapiLogLevel) {
        // SAFETY: takes a plain int.
        unsafe { (self.symbols().llapi_msg_set_level)(level as c_int) }
    }

    /// The library's message level (`llapi_msg_get_level`).
    pub fn log_level(&self) -> LlapiLogLevel {
        // SAFETY: no arguments.
        let raw = unsafe { (self.symbols().llapi_msg_get_level)() };
        LlapiLogLevel::from_raw(u32::try_from(raw).unwrap_or(0))
    }

    /// Routes the library's error and info messages (`llapi_error`, `llapi_printf`) into
    /// `tracing` under the target [`TRACING_TARGET`], instead of the library's stderr output.
    /// The callbacks are process-wide in the library; this replaces whatever was installed.
    ///
    /// Only on x86_64, whose `va_list` the bindings describe; elsewhere this logs a warning
    /// and leaves the library's own output in place.
    pub fn route_logs_to_tracing(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the callback has the exact `llapi_log_callback_t` signature and stays valid
        // for the life of the process (it is a plain function).
        unsafe {
            (self.symbols().llapi_error_callback_set)(Some(tracing_log_callback));
            (self.symbols().llapi_info_callback_set)(Some(tracing_log_callback));
        }
        #[cfg(not(target_arch = "x86_64"))]
        tracing::warn!("liblustreapi messages stay on stderr: va_list forwarding is x86_64 only");
    }
}
