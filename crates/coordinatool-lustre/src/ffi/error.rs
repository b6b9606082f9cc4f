//! Typed errors for liblustreapi calls (the library returns negative errnos).

use std::os::raw::c_int;

use crate::hal::HalError;

/// Why a liblustreapi call failed. Every variant names the call (`llapi_...`) that failed.
///
/// Built from the library's negative return values by [`LustreError::check`]; the errno
/// meanings follow lustre-hsm.md §5.3. [`errno`](Self::errno) gives the positive errno back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LustreError {
    /// `EINVAL`: the library rejected an argument (bad handle, bad extent, unknown FID, ...).
    #[error("{call}: invalid argument (EINVAL)")]
    InvalidArgument {
        /// The failing call.
        call: &'static str,
    },
    /// `ENOENT`: no such file, not a Lustre mount (no `.lustre/fid`), or the MDT no longer
    /// knows the request's cookie (timed out or purged).
    #[error(
        "{call}: not found (ENOENT): no such file or not a Lustre mount, or the MDT no longer knows the request"
    )]
    NotFound {
        /// The failing call.
        call: &'static str,
    },
    /// `EPERM` / `EACCES`: registering a copytool needs `CAP_SYS_ADMIN`.
    #[error("{call}: permission denied ({}; copytools must run as root)", errno_name(*errno))]
    PermissionDenied {
        /// The failing call.
        call: &'static str,
        /// `EPERM` or `EACCES`.
        errno: i32,
    },
    /// `EAGAIN`: non-blocking receive with nothing queued; poll the fd and try again.
    #[error("{call}: nothing to receive yet (EAGAIN)")]
    WouldBlock {
        /// The failing call.
        call: &'static str,
    },
    /// `ESHUTDOWN`: the Lustre client is being unmounted; the registration is gone.
    #[error("{call}: the Lustre filesystem is being unmounted (ESHUTDOWN)")]
    Shutdown {
        /// The failing call.
        call: &'static str,
    },
    /// `ECANCELED`: the request was canceled; stop and end the action with `ECANCELED`.
    #[error("{call}: the request was canceled (ECANCELED)")]
    Canceled {
        /// The failing call.
        call: &'static str,
    },
    /// `ENXIO`: the HSM coordinator is not running on an MDT.
    #[error(
        "{call}: the HSM coordinator is not running on the MDT (ENXIO); enable it with \
         `lctl set_param mdt.*.hsm_control=enabled`"
    )]
    CoordinatorNotRunning {
        /// The failing call.
        call: &'static str,
    },
    /// `ENOTCONN`: no MDT is reachable.
    #[error("{call}: no MDT reachable (ENOTCONN)")]
    NotConnected {
        /// The failing call.
        call: &'static str,
    },
    /// `EBUSY`: e.g. the file changed while it was being archived.
    #[error("{call}: busy (EBUSY), e.g. the file changed while it was being archived")]
    Busy {
        /// The failing call.
        call: &'static str,
    },
    /// Rejected before calling the library (a path with a NUL byte, an invalid archive id,
    /// a count that does not fit a C `int`, ...).
    #[error("{call}: {what}")]
    BadArgument {
        /// The call that was not made.
        call: &'static str,
        /// What was wrong.
        what: String,
    },
    /// The library returned an `hsm_action_list` that does not parse.
    #[error("{call}: malformed hsm_action_list: {source}")]
    Malformed {
        /// The failing call.
        call: &'static str,
        /// What is wrong with the list.
        source: HalError,
    },
    /// Any other errno.
    #[error("{call} failed: {} (errno {errno})", std::io::Error::from_raw_os_error(*errno))]
    Other {
        /// The failing call.
        call: &'static str,
        /// The positive errno.
        errno: i32,
    },
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        _ => "permission error",
    }
}

impl LustreError {
    /// The typed error for a positive `errno` returned by `call` (a negative value is taken
    /// as its absolute value).
    pub fn from_errno(call: &'static str, errno: i32) -> LustreError {
        let errno = errno.checked_abs().unwrap_or(i32::MAX);
        match errno {
            libc::EINVAL => LustreError::InvalidArgument { call },
            libc::ENOENT => LustreError::NotFound { call },
            libc::EPERM | libc::EACCES => LustreError::PermissionDenied { call, errno },
            libc::EAGAIN => LustreError::WouldBlock { call },
            libc::ESHUTDOWN => LustreError::Shutdown { call },
            libc::ECANCELED => LustreError::Canceled { call },
            libc::ENXIO => LustreError::CoordinatorNotRunning { call },
            libc::ENOTCONN => LustreError::NotConnected { call },
            libc::EBUSY => LustreError::Busy { call },
            _ => LustreError::Other { call, errno },
        }
    }

    /// Turns a liblustreapi return value into a result: non-negative values (0 or an fd) are
    /// success, negative values are `-errno`.
    pub fn check(call: &'static str, rc: c_int) -> Result<c_int, LustreError> {
        if rc >= 0 {
            Ok(rc)
        } else {
            Err(LustreError::from_errno(call, rc))
        }
    }

    /// The call that failed (or, for [`BadArgument`](Self::BadArgument), was not made).
    pub fn call(&self) -> &'static str {
        match self {
            LustreError::InvalidArgument { call }
            | LustreError::NotFound { call }
            | LustreError::PermissionDenied { call, .. }
            | LustreError::WouldBlock { call }
            | LustreError::Shutdown { call }
            | LustreError::Canceled { call }
            | LustreError::CoordinatorNotRunning { call }
            | LustreError::NotConnected { call }
            | LustreError::Busy { call }
            | LustreError::BadArgument { call, .. }
            | LustreError::Malformed { call, .. }
            | LustreError::Other { call, .. } => call,
        }
    }

    /// The positive errno this error stands for (`EINVAL` for
    /// [`BadArgument`](Self::BadArgument), `EPROTO` for [`Malformed`](Self::Malformed)), e.g.
    /// to report it to Lustre with `action_end`.
    pub fn errno(&self) -> i32 {
        match self {
            LustreError::InvalidArgument { .. } | LustreError::BadArgument { .. } => libc::EINVAL,
            LustreError::NotFound { .. } => libc::ENOENT,
            LustreError::PermissionDenied { errno, .. } | LustreError::Other { errno, .. } => {
                *errno
            }
            LustreError::WouldBlock { .. } => libc::EAGAIN,
            LustreError::Shutdown { .. } => libc::ESHUTDOWN,
            LustreError::Canceled { .. } => libc::ECANCELED,
            LustreError::CoordinatorNotRunning { .. } => libc::ENXIO,
            LustreError::NotConnected { .. } => libc::ENOTCONN,
            LustreError::Busy { .. } => libc::EBUSY,
            LustreError::Malformed { .. } => libc::EPROTO,
        }
    }
}
