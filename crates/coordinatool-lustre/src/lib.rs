//! Lustre HSM building blocks for coordinatool.
//!
//! * [`fid`]: the Lustre file identifier ([`LuFid`]) and its text forms.
//! * [`action`]: copytool actions, HSM file states and progress flags.
//! * [`hal`]: `hsm_action_list` / `hsm_action_item`, owned and as a checked zero-copy view.
//! * [`active_requests`]: the parser for the MDT's `hsm.active_requests` listing.
//! * [`ffi`]: raw bindings to `liblustreapi.so.1`, loaded at run time.
//! * [`copytool`]: a safe copytool API on top of [`ffi`].
//!
//! Everything here is plain data and parsing; nothing touches a filesystem unless it is
//! explicitly part of the run-time binding to `liblustreapi.so.1`.

pub mod action;
pub mod active_requests;
pub mod copytool;
pub mod ffi;
pub mod fid;
pub mod hal;

pub use action::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction};
pub use active_requests::{ActionRecord, ActiveRequest, AgentReqStatus};
pub use copytool::{ActionHandle, Copytool, HsmCurrentAction, HsmProgressState, HsmUserState};
pub use ffi::log::LlapiLogLevel;
pub use ffi::{LoadError, LustreError, Lustreapi};
pub use fid::{FidParseError, LuFid};
pub use hal::{
    HaiView, HalError, HalView, HsmActionItem, HsmActionList, HsmExtent, HsmUserItem,
    HsmUserRequest, LUSTRE_EOF,
};
