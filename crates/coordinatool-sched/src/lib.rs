//! The coordinatool scheduling engine: a sans-IO state machine (events in, actions out).
//!
//! The engine is fully deterministic: it has no networking code, no threads, and never reads
//! a clock. Each input carries `now` ([`Time`], nanoseconds since the epoch); "random" choices
//! come from a PRNG seeded by [`Config::seed`]. The embedder (the coordinatool server, or any
//! other HSM tool) translates its wire messages into calls on [`Engine`], then drains
//! [`Engine::poll_action`] and re-arms its timer with [`Engine::poll_timeout`].
//!
//! What it does (the behaviour of upstream coordinatool §4.6–§4.18, with its known bugs fixed):
//! requests keyed by `(cookie, dfid)`; per-client, per-kind limits; a byte budget per `recv`
//! reply with one archive id and one set of hal flags; long polls (a waiting client is answered
//! when work arrives, never with an empty list); client grace and takeover on reconnect with
//! exact counters; cancels; lock and lock-and-quit; host mappings (`archive_on_hosts`,
//! `archive_on_hosts_ch` with rendezvous hashing or upstream's exact mapping); a restore
//! locality hook ([`RestoreLocator`]); archive batching slots; priorities with aging, and
//! weighted fair share. Ordering and placement go through the [`Policy`] trait
//! ([`ConfigPolicy`] is the built-in one; [`Engine::with_policy`] plugs another).
//!
//! [`Engine::check_invariants`] recounts the whole state (tests use it after every step).
//!
//! Queues are intrusive lists grouped by (kind, priority, archive id, hal flags) and by
//! fair-share value; choosing the next request costs O(partitions + log flows), independent of
//! the number of queued requests.
//!
//! The crate README follows, with an embedding example.
//!
#![doc = include_str!("../README.md")]

mod action;
mod batch;
mod config;
mod engine;
mod fxhash;
pub mod hint;
mod index;
mod policy;
mod queue;
mod status;
mod types;

pub use action::{Action, Delivery, Locate, PersistOp, ReportEvent, ReportLine, RestoreLocator};
pub use config::{Batching, Config, FairShare, HashMode, HostMapping, Priorities, ShareKey};
pub use engine::{
    CancelOutcome, ConfigError, DoneOutcome, Engine, EngineError, Intake, IntakeError,
    LOCATE_FAILED_HOST, Placed, QueueSummary,
};
pub use policy::{ConfigPolicy, Placement, Policy, Share};
pub use status::{BatchStatus, ClientDump, ClientStatus, DumpEntry, Status};
pub use types::{
    ClientId, ClientState, Ehlo, HAI_HEADER_LEN, Kind, LockState, MIN_RECV_BYTES, Owner, PerKind,
    RecvLimits, Request, RequestKey, Time,
};

#[cfg(test)]
mod tests;
