//! The coordinatool wire protocol: typed JSON messages and stream framing, with no IO.
//!
//! Clients (movers through the LD_PRELOAD library, and the CLI) talk to the coordinatool
//! server over TCP with JSON objects written back to back, with no delimiter. This crate
//! knows the messages and how to cut a byte stream into them; it never touches a socket,
//! a clock or a file, so the server, the clients and the tests drive it with plain bytes.
//!
//! # Layout
//!
//! * [`Request`] (client → server) and [`Reply`] (server → client): one variant per
//!   command ([`Command`]: `ehlo`, `recv`, `done`, `queue`, `status`, `lock`), dispatched on
//!   the `"command"` key wherever it sits in the object.
//! * [`WireHai`], [`WireHal`] and [`DumpEntry`]: the `hai`, `hsm_action_list` and status-dump
//!   objects. Fids are [`LuFid`](coordinatool_lustre::LuFid), actions
//!   [`HsmAction`](coordinatool_lustre::HsmAction).
//! * [`Decoder`]: incremental framing of the byte stream; [`encode`] / [`Message::encode`]:
//!   compact encoding, never any whitespace between messages.
//!
//! # Compatibility with the C implementation
//!
//! * Zero integers, empty strings and empty lists are omitted on write and read back as
//!   zero/empty; unknown keys are ignored. The `hai` and fid objects are always written in
//!   full; the fid object is strict (exactly `f_seq`, `f_oid`, `f_ver`).
//! * u64 values travel as their signed i64 image (`u64::MAX` is `-1`) and read back from
//!   either form.
//! * Extensions C peers ignore: full 64-bit `done` cookies (with helpers to match the
//!   32-bit truncated cookies of old C clients, see [`DoneRequest`]), `hai_data_b64` for
//!   non-UTF-8 data, an optional `version` in `ehlo`, `fsname` accepted as `hal_fsname` in
//!   `queue`, error statuses always positive.
//!
//! # Example
//!
//! ```
//! use coordinatool_proto::{Decoder, DoneRequest, Message, Reply, Request};
//! use coordinatool_lustre::LuFid;
//!
//! // Client side: encode two requests back to back.
//! let mut out = Vec::new();
//! let done = DoneRequest { cookie: 1764690165, dfid: LuFid::new(0x200000bd7, 0xb59, 0), status: 0 };
//! Request::Done(done).encode(&mut out);
//! Request::Status(Default::default()).encode(&mut out);
//!
//! // Server side: feed bytes as they arrive, in any chunks.
//! let mut dec = Decoder::new();
//! let mut got = Vec::new();
//! for chunk in out.chunks(7) {
//!     dec.feed(chunk);
//!     while let Some(req) = dec.next_message::<Request>()? {
//!         got.push(req);
//!     }
//! }
//! assert_eq!(got[0], Request::Done(done));
//!
//! // A C peer's reply, with its spacing and a negative errno.
//! let reply = Reply::decode(br#"{"command": "lock", "status": -22, "error": "invalid locked value"}"#)?;
//! assert_eq!(reply.status(), 22);
//! # Ok::<(), coordinatool_proto::DecodeError>(())
//! ```

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod codec;
mod frame;
mod hai;
mod reply;
mod request;
mod wire;

pub use codec::{DecodeError, Message, encode, to_vec};
pub use frame::{DEFAULT_MAX_MESSAGE_SIZE, Decoder, FrameError};
pub use hai::{DumpEntry, HAL_VERSION, WireHai, WireHal};
pub use reply::{
    AckReply, BatchStatus, ClientState, ClientStatus, LustreStatus, QueueReply, RecvReply, Reply,
    StatusReply, StoreStatus,
};
pub use request::{
    Command, DEFAULT_MAX_BYTES, DEFAULT_STATUS_VERBOSE, DoneRequest, EhloRequest, LockRequest,
    LockState, PROTOCOL_VERSION, QueueRequest, RecvRequest, Request, StatusRequest, UnknownCommand,
};
