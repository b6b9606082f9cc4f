//! `coordinatool-client`: the operator CLI of coordinatool, and the pieces a client needs.
//!
//! * [`config`]: the client configuration (file, `COORDINATOOL_*` environment, K/M/G
//!   suffixes, `-1` for unlimited), shared with the movers' library.
//! * [`conn`]: connecting with exponential backoff, `ehlo`, request/reply.
//! * [`queue`]: an MDT `active_requests` listing to `queue` messages (parsed whole before
//!   anything is sent, then sent in chunks with every reply checked).
//! * [`render`]: upstream's indented JSON, status tables, the `watch` view.
//! * [`bench`](mod@bench): the load generator behind `coordinatool-client bench` (many movers, one thread).
//! * [`cli`] and [`app`]: the clap definition and the program ([`app::run`]), with exit
//!   statuses in [`app::exit`].

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod conn;
pub mod queue;
pub mod render;
