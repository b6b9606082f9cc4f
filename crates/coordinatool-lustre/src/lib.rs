//! Lustre HSM building blocks for coordinatool.
//!
//! * [`fid`]: the Lustre file identifier ([`LuFid`]) and its text forms.
//! * [`action`]: copytool actions, HSM file states and progress flags.
//!
//! Everything here is plain data and parsing; nothing touches a filesystem unless it is
//! explicitly part of the run-time binding to `liblustreapi.so.1`.

pub mod action;
pub mod fid;

pub use action::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction};
pub use fid::{FidParseError, LuFid};
