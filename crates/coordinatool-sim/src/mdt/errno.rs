//! Positive errno values as the MDT returns them (negated on the wire by the caller).

use std::fmt;

/// A positive Linux errno, as the simulated MDT reports failures.
///
/// The real kernel returns `-errno`; the model keeps the positive value and lets the layer
/// that speaks C ABI negate it ([`Errno::neg`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `EPERM` (1): not allowed / incompatible file state.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// `ENOENT` (2): no such file or unknown cookie.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// `EINTR` (4).
    pub const EINTR: Errno = Errno(libc::EINTR);
    /// `ENXIO` (6): coordinator not running (registration).
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    /// `ENOMEM` (12): `max_requests` beyond what the RAM allows.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// `E2BIG` (7): user request too large.
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    /// `EAGAIN` (11): coordinator not able to take the call now / no agent.
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// `EACCES` (13): read-only parameter.
    pub const EACCES: Errno = Errno(libc::EACCES);
    /// `EBUSY` (16): file changed while archived / open by someone else.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// `EEXIST` (17): agent already registered.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// `EINVAL` (22): invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// `EROFS` (30): request from a read-only export.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// `EPIPE` (32): the copytool's pipe is gone.
    pub const EPIPE: Errno = Errno(libc::EPIPE);
    /// `ENOSYS` (38): copytool does not support the action.
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    /// `ENODATA` (61): restore recorded under the NonBlockingRestore policy.
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    /// `EPROTO` (71): malformed request (restore with a non-zero offset).
    pub const EPROTO: Errno = Errno(libc::EPROTO);
    /// `ENOTCONN` (107): no MDT reachable.
    pub const ENOTCONN: Errno = Errno(libc::ENOTCONN);
    /// `ESHUTDOWN` (108): filesystem being unmounted.
    pub const ESHUTDOWN: Errno = Errno(libc::ESHUTDOWN);
    /// `ETIMEDOUT` (110).
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    /// `EALREADY` (114): coordinator already stopping.
    pub const EALREADY: Errno = Errno(libc::EALREADY);
    /// `ECANCELED` (125): the request was canceled.
    pub const ECANCELED: Errno = Errno(libc::ECANCELED);

    /// The positive errno value.
    pub const fn code(self) -> i32 {
        self.0
    }

    /// The negative value the C API returns.
    pub const fn neg(self) -> i32 {
        -self.0
    }

    /// The C symbol name for the values this crate uses, `None` for others.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EINTR => "EINTR",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::ENOMEM => "ENOMEM",
            libc::EROFS => "EROFS",
            libc::EAGAIN => "EAGAIN",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EINVAL => "EINVAL",
            libc::EPIPE => "EPIPE",
            libc::ENOSYS => "ENOSYS",
            libc::ENODATA => "ENODATA",
            libc::EPROTO => "EPROTO",
            libc::ENOTCONN => "ENOTCONN",
            libc::ESHUTDOWN => "ESHUTDOWN",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EALREADY => "EALREADY",
            libc::ECANCELED => "ECANCELED",
            _ => return None,
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}
