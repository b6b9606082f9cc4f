//! Server → client messages.
//!
//! Every reply carries the command name of the request it answers and, on error, a
//! positive errno in `status` and an optional message in `error`. A reply with no
//! `status` is a success.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

use crate::hai::{DumpEntry, WireHal};
use crate::request::Command;
use crate::wire::{errno, is_zero, opt_string, str_is_empty, u32_image, u64_image};

/// A reply from the server.
///
/// Decode with [`Reply::decode`] (or a [`Decoder`](crate::Decoder)), encode with
/// [`Reply::encode`]. Note that the C server answers a bad archive id in `ehlo` with
/// `"command": "done"`; that reply decodes as [`Reply::Done`] carrying the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Reply {
    /// `ehlo`.
    Ehlo(AckReply),
    /// `recv` (deferred until work is available).
    Recv(RecvReply),
    /// `done`.
    Done(AckReply),
    /// `queue`.
    Queue(QueueReply),
    /// `status`.
    Status(Box<StatusReply>),
    /// `lock`.
    Lock(AckReply),
}

impl Reply {
    /// The command this reply answers.
    pub const fn command(&self) -> Command {
        match self {
            Reply::Ehlo(_) => Command::Ehlo,
            Reply::Recv(_) => Command::Recv,
            Reply::Done(_) => Command::Done,
            Reply::Queue(_) => Command::Queue,
            Reply::Status(_) => Command::Status,
            Reply::Lock(_) => Command::Lock,
        }
    }

    /// A success reply with no payload (`{"command": "<command>"}`).
    pub fn ok(command: Command) -> Self {
        Self::with_status(command, 0, None)
    }

    /// An error reply for `command`: `status` is a positive errno (the sign of a negative
    /// one is dropped), `message` goes to the `error` key (omitted when empty).
    pub fn error(command: Command, status: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::with_status(command, status, (!message.is_empty()).then_some(message))
    }

    fn with_status(command: Command, status: i32, error: Option<String>) -> Self {
        let status = status.saturating_abs();
        match command {
            Command::Ehlo => Reply::Ehlo(AckReply { status, error }),
            Command::Done => Reply::Done(AckReply { status, error }),
            Command::Lock => Reply::Lock(AckReply { status, error }),
            Command::Recv => Reply::Recv(RecvReply {
                status,
                error,
                ..RecvReply::default()
            }),
            Command::Queue => Reply::Queue(QueueReply {
                status,
                error,
                ..QueueReply::default()
            }),
            Command::Status => Reply::Status(Box::new(StatusReply {
                status,
                error,
                ..StatusReply::default()
            })),
        }
    }

    /// The errno of an error reply, 0 for success.
    pub fn status(&self) -> i32 {
        match self {
            Reply::Ehlo(r) | Reply::Done(r) | Reply::Lock(r) => r.status,
            Reply::Recv(r) => r.status,
            Reply::Queue(r) => r.status,
            Reply::Status(r) => r.status,
        }
    }

    /// The `error` message, if any.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Reply::Ehlo(r) | Reply::Done(r) | Reply::Lock(r) => r.error.as_deref(),
            Reply::Recv(r) => r.error.as_deref(),
            Reply::Queue(r) => r.error.as_deref(),
            Reply::Status(r) => r.error.as_deref(),
        }
    }

    /// True when the reply has no error status.
    pub fn is_ok(&self) -> bool {
        self.status() == 0
    }
}

/// Reply with no payload beyond the outcome: used by `ehlo`, `done` and `lock`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AckReply {
    /// `status`: 0 for success, else a positive errno.
    #[serde(skip_serializing_if = "is_zero", with = "errno")]
    pub status: i32,
    /// `error`: human-readable reason.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub error: Option<String>,
}

/// `recv` reply: the work for the mover.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RecvReply {
    /// `hsm_action_list`: absent only in an error reply.
    #[serde(rename = "hsm_action_list", skip_serializing_if = "Option::is_none")]
    pub hal: Option<WireHal>,
    /// `status`: 0 for success, else a positive errno.
    #[serde(skip_serializing_if = "is_zero", with = "errno")]
    pub status: i32,
    /// `error`: human-readable reason.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub error: Option<String>,
}

/// `queue` reply: how many items were registered.
///
/// The C server reports a failed item with a negative status *and* the counters; the status
/// reads back positive here and the counters are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueReply {
    /// `enqueued`: number of new requests registered.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub enqueued: u64,
    /// `skipped`: number of items whose key already existed.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub skipped: u64,
    /// `status`: 0 for success, else a positive errno.
    #[serde(skip_serializing_if = "is_zero", with = "errno")]
    pub status: i32,
    /// `error`: human-readable reason.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub error: Option<String>,
}

/// `status` reply: counters, clients and (verbose ≥ 6) queue dumps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReply {
    /// `running_restore`: restores assigned to clients.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub running_restore: u32,
    /// `running_archive`: archives assigned to clients.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub running_archive: u32,
    /// `running_remove`: removes assigned to clients.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub running_remove: u32,
    /// `pending_restore`: restores waiting in any queue.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub pending_restore: u32,
    /// `pending_archive`: archives waiting in any queue.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub pending_archive: u32,
    /// `pending_remove`: removes waiting in any queue.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub pending_remove: u32,
    /// `pending_cancel`: cancels waiting.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub pending_cancel: u32,
    /// `done_restore`: restores completed since start.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_restore: u64,
    /// `done_archive`: archives completed since start.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_archive: u64,
    /// `done_remove`: removes completed since start.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_remove: u64,
    /// `done_cancel`: cancels completed since start.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_cancel: u64,
    /// `clients_connected`: open connections (handshaken or not).
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub clients_connected: u32,
    /// `locked`: 0, 1 or 2 (see [`LockState`](crate::LockState)).
    #[serde(skip_serializing_if = "is_zero")]
    pub locked: i32,
    /// `clients`: connected clients (most recent first), then disconnected ones. Always written.
    pub clients: Vec<ClientStatus>,
    /// `waiting_restore`: the global restore queue (verbose ≥ 6 only; `None` when not dumped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_restore: Option<Vec<DumpEntry>>,
    /// `waiting_remove`: the global remove queue (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_remove: Option<Vec<DumpEntry>>,
    /// `waiting_archive`: the global archive queue (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_archive: Option<Vec<DumpEntry>>,
    /// `store`: health of the server's persistent store (extension: the C server does not send
    /// it, and C readers ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// `lustre`: the server's registration with Lustre (extension, like `store`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lustre: Option<LustreStatus>,
    /// `status`: 0 for success, else a positive errno.
    #[serde(skip_serializing_if = "is_zero", with = "errno")]
    pub status: i32,
    /// `error`: human-readable reason.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub error: Option<String>,
}

/// The `store` object of a `status` reply (extension).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreStatus {
    /// `kind`: `"embedded"`, `"redis"` or `"none"`.
    pub kind: String,
    /// `state`: `"ok"`, or `"down"` while the backend cannot be written (the server keeps
    /// working and buffers the changes).
    pub state: String,
    /// `buffered_ops`: changes waiting for the backend (omitted when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub buffered_ops: u64,
    /// `error`: the backend's last error while it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `lustre` object of a `status` reply (extension).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LustreStatus {
    /// `state`: `"ok"` while registered as the copytool, `"down"` while Lustre intake is
    /// stopped (the registration ended; the server keeps serving movers and registers again).
    pub state: String,
    /// `error`: why intake is stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// State of a client as shown in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientState {
    /// `"init"`: connected, no ehlo yet.
    #[default]
    Init,
    /// `"ready"`: handshaken, no `recv` pending.
    Ready,
    /// `"disconnected"`: gone, its requests are held for a grace period.
    Disconnected,
    /// `"waiting"`: a `recv` is pending.
    Waiting,
}

impl ClientState {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientState::Init => "init",
            ClientState::Ready => "ready",
            ClientState::Disconnected => "disconnected",
            ClientState::Waiting => "waiting",
        }
    }
}

impl Serialize for ClientState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ClientState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ClientState;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of \"init\", \"ready\", \"disconnected\", \"waiting\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClientState, E> {
                Ok(match v {
                    "init" => ClientState::Init,
                    "ready" => ClientState::Ready,
                    "disconnected" => ClientState::Disconnected,
                    "waiting" => ClientState::Waiting,
                    _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// One client in a `status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientStatus {
    /// `client_id`: the ehlo id, or `"<host>:<port>"` for anonymous clients.
    pub client_id: String,
    /// `current_restore`: restores running on this client (can be negative with the C server).
    #[serde(skip_serializing_if = "is_zero")]
    pub current_restore: i32,
    /// `current_archive`: archives running on this client.
    #[serde(skip_serializing_if = "is_zero")]
    pub current_archive: i32,
    /// `current_remove`: removes running on this client.
    #[serde(skip_serializing_if = "is_zero")]
    pub current_remove: i32,
    /// `done_restore`: restores this client completed.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_restore: u64,
    /// `done_archive`: archives this client completed.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_archive: u64,
    /// `done_remove`: removes this client completed.
    #[serde(skip_serializing_if = "is_zero", with = "u64_image")]
    pub done_remove: u64,
    /// `status`: the client state.
    pub status: ClientState,
    /// `batches`: one object per configured archive batch slot. Always written.
    pub batches: Vec<BatchStatus>,
    /// `disconnected_timestamp`: ns since the epoch, only in disconnected state (0 otherwise).
    #[serde(skip_serializing_if = "is_zero")]
    pub disconnected_timestamp: i64,
    /// `active_requests`: requests running on the client (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_requests: Option<Vec<DumpEntry>>,
    /// `waiting_restore`: the client's restore queue (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_restore: Option<Vec<DumpEntry>>,
    /// `waiting_remove`: the client's remove queue (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_remove: Option<Vec<DumpEntry>>,
    /// `waiting_archive`: the client's archive queue (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_archive: Option<Vec<DumpEntry>>,
    /// `cancels`: cancels sent to the client (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancels: Option<Vec<DumpEntry>>,
}

/// One archive batch slot of a client in a `status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchStatus {
    /// `hint`: the batch key (absent when the slot is free).
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub hint: Option<String>,
    /// `current_count`: requests sent in this batch.
    #[serde(skip_serializing_if = "is_zero", with = "u32_image")]
    pub current_count: u32,
    /// `expire_idle_s`: absolute epoch seconds of the idle expiry (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub expire_idle_s: i64,
    /// `expire_max_s`: absolute epoch seconds of the hard expiry (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub expire_max_s: i64,
    /// `waiting_archive`: archives queued in the slot (verbose ≥ 6 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_archive: Option<Vec<DumpEntry>>,
}
