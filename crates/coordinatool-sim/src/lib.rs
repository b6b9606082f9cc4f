//! A simulated Lustre HSM, so coordinatool runs and is tested without Lustre.
//!
//! # Layout
//! * [`mdt`]: a pure, sans-IO model of the MDT HSM coordinators ([`mdt::Cluster`] of
//!   [`mdt::Mdt`]s): request log, admission, agents, dispatch, progress, cancel, purge,
//!   tunables, file HSM flags, and the exact `lctl get_param` listing text.
//!
//! The behaviour set simulated is the one of Lustre **2.17+** (see [`mdt`]).

pub mod fs;
pub mod mdt;
