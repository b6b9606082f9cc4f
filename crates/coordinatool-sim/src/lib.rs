//! A simulated Lustre HSM, so coordinatool runs and is tested without Lustre.
//!
//! # Layout
//! * [`mdt`]: a pure, sans-IO model of the MDT HSM coordinators ([`mdt::Cluster`] of
//!   [`mdt::Mdt`]s): request log, admission, agents, dispatch, progress, cancel, purge,
//!   tunables, file HSM flags, and the exact `lctl get_param` listing text. Time is passed in.
//! * [`fs`]: the file side ([`fs::SimFs`]): a directory stands for the mount; FIDs kept in a
//!   hidden index, `.lustre/fid/<fid>` hard links for open-by-FID, fid2path, release,
//!   restore volatiles, dirty detection.
//! * [`rpc`]: the Unix-socket protocol between the daemon and its clients (the
//!   `liblustreapi.so.1` stand-in, the commands), including the copytool KUC streams.
//! * [`server`]: the daemon ([`server::Daemon`], [`server::serve`]).
//! * [`cli`]: `lfs`/`lctl`-compatible commands and the `coordinatool-sim` command line.
//!
//! The behaviour set simulated is the one of Lustre **2.17+** (see [`mdt`]).

pub mod cli;
pub mod fs;
mod hash;
pub mod mdt;
pub mod rpc;
pub mod server;
