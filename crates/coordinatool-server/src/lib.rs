//! The coordinatool server (`lhsmd_coordinatool`): the event loop, configuration, persistence
//! and reporting.
//!
//! The binaries (`coordinatool-server` and its upstream name `lhsmd_coordinatool`) are thin:
//! they call [`daemon::main`]. Everything else lives in modules usable from tests and benches:
//!
//! * [`daemon`]: the tokio shell around the scheduling engine: Lustre intake, client
//!   connections, one store commit per turn, reporting, signals.
//! * [`config`]: command line, config file, environment and sysconfig files, as upstream.
//! * [`store`]: the [`Store`](store::Store) trait with the embedded (redb) and Redis
//!   implementations; one group commit per turn of the event loop.
//! * [`report`]: report files (`new/assign/sent/progress/done/cancel`) and their deletion
//!   schedule.
//! * [`notify`]: `sd_notify` (READY, STATUS, WATCHDOG, STOPPING) for `Type=notify` units.

pub mod config;
pub mod daemon;
pub mod notify;
pub mod report;
pub mod store;
