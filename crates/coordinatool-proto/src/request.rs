//! Client → server messages.

use coordinatool_lustre::LuFid;
use serde::de::{Deserializer, Unexpected};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::hai::WireHai;
use crate::wire::{self, errno, is_zero, opt_string, str_is_empty, u32_list, u64_image};

/// Protocol version this crate writes in `ehlo` ([`EhloRequest::version`]).
///
/// The C implementation has no version field and ignores it; version 1 is "the upstream
/// protocol plus the compatible extensions of this crate" (64-bit done cookies,
/// `hai_data_b64`, `fsname` in `queue`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Default `max_bytes` of a `recv` request when the key is absent.
pub const DEFAULT_MAX_BYTES: i32 = 1_048_576;

/// Default `verbose` of a `status` request when the key is absent (NORMAL log level).
pub const DEFAULT_STATUS_VERBOSE: i32 = 4;

/// The `"command"` name carried by every request and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// `ehlo`: handshake, first message of a connection.
    Ehlo,
    /// `recv`: ask for work (long poll).
    Recv,
    /// `done`: report completion of one action.
    Done,
    /// `queue`: inject requests.
    Queue,
    /// `status`: runtime information and debug dump.
    Status,
    /// `lock`: pause dispatching.
    Lock,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 6] = [
        Command::Ehlo,
        Command::Recv,
        Command::Done,
        Command::Queue,
        Command::Status,
        Command::Lock,
    ];

    /// The exact wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Ehlo => "ehlo",
            Command::Recv => "recv",
            Command::Done => "done",
            Command::Queue => "queue",
            Command::Status => "status",
            Command::Lock => "lock",
        }
    }

    /// Looks a wire name up (exact, case-sensitive).
    pub fn from_bytes(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"ehlo" => Command::Ehlo,
            b"recv" => Command::Recv,
            b"done" => Command::Done,
            b"queue" => Command::Queue,
            b"status" => Command::Status,
            b"lock" => Command::Lock,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a command name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command {0:?}")]
pub struct UnknownCommand(pub String);

impl FromStr for Command {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| UnknownCommand(s.to_owned()))
    }
}

/// A request from a client (mover, preload or CLI) to the server.
///
/// Decode with [`Request::decode`] (or a [`Decoder`](crate::Decoder)), encode with
/// [`Request::encode`]. The `"command"` key selects the variant and is always written first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// `ehlo`.
    Ehlo(EhloRequest),
    /// `recv`.
    Recv(RecvRequest),
    /// `done`.
    Done(DoneRequest),
    /// `queue`.
    Queue(QueueRequest),
    /// `status`.
    Status(StatusRequest),
    /// `lock`.
    Lock(LockRequest),
}

impl Request {
    /// The command of this request.
    pub const fn command(&self) -> Command {
        match self {
            Request::Ehlo(_) => Command::Ehlo,
            Request::Recv(_) => Command::Recv,
            Request::Done(_) => Command::Done,
            Request::Queue(_) => Command::Queue,
            Request::Status(_) => Command::Status,
            Request::Lock(_) => Command::Lock,
        }
    }
}

/// `ehlo` request: the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EhloRequest {
    /// `id`: the client id, unique among connected clients; absent for an anonymous client
    /// (which gets no reconnection support). An empty string reads as absent.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub id: Option<String>,
    /// `fsname`: sent by the preload, ignored by the server.
    #[serde(
        skip_serializing_if = "str_is_empty",
        deserialize_with = "opt_string::deserialize"
    )]
    pub fsname: Option<String>,
    /// `archive_ids`: archive ids this client accepts; empty means any.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "u32_list::deserialize"
    )]
    pub archive_ids: Vec<u32>,
    /// `hai_list`: on reconnect, every action the client is still running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hai_list: Vec<WireHai>,
    /// `version`: protocol version of the sender (absent from C peers). [`EhloRequest::new`]
    /// sets it to [`PROTOCOL_VERSION`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl EhloRequest {
    /// An ehlo from this implementation: the given id, [`PROTOCOL_VERSION`], nothing else.
    pub fn new(id: Option<String>) -> Self {
        Self {
            id,
            version: Some(PROTOCOL_VERSION),
            ..Self::default()
        }
    }
}

/// `recv` request: ask for work. Every key is always written because the C server's
/// defaults for absent keys (`-1`, 1 MiB) differ from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecvRequest {
    /// `max_archive`: max concurrently running archives on this client; `None` is unlimited
    /// (`-1` on the wire; a negative value or `u32::MAX` reads as unlimited).
    #[serde(with = "limit")]
    pub max_archive: Option<u32>,
    /// `max_restore`: same for restores.
    #[serde(with = "limit")]
    pub max_restore: Option<u32>,
    /// `max_remove`: same for removes.
    #[serde(with = "limit")]
    pub max_remove: Option<u32>,
    /// `max_bytes`: size budget of the reply; the server rejects values below 172.
    pub max_bytes: i32,
}

impl Default for RecvRequest {
    fn default() -> Self {
        Self {
            max_archive: None,
            max_restore: None,
            max_remove: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// `max_*` limits of `recv`: `None` (unlimited) is `-1` on the wire.
mod limit {
    use super::*;

    pub(super) fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            Some(n) if n != u32::MAX => s.serialize_u32(n),
            _ => s.serialize_i32(-1),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let v = i64::deserialize(d)?;
        if v < 0 || v == i64::from(u32::MAX) {
            Ok(None)
        } else {
            u32::try_from(v).map(Some).map_err(|_| {
                serde::de::Error::invalid_value(
                    Unexpected::Signed(v),
                    &"a limit between -1 and 4294967295",
                )
            })
        }
    }
}

/// `done` request: completion of one action, identified by cookie and dfid.
///
/// # Cookies from old C clients
///
/// The C client packs the cookie with jansson's `int` format, so it arrives truncated to its
/// low 32 bits, sign-extended (a negative number once the real cookie passes 2^31). Read
/// back as u64, such a value still has the original low 32 bits. A cookie that may be
/// truncated ([`cookie_may_be_truncated`](Self::cookie_may_be_truncated)) should first be
/// looked up exactly, then by its low 32 bits ([`cookie_matches`](Self::cookie_matches)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DoneRequest {
    /// `hai_cookie`: full 64-bit cookie (0 when the key is missing: "not set").
    #[serde(rename = "hai_cookie", with = "u64_image")]
    pub cookie: u64,
    /// `hai_dfid`: data fid (all zero when the key is missing: "not set").
    #[serde(rename = "hai_dfid", with = "wire::fid")]
    pub dfid: LuFid,
    /// `status`: 0 for success, else a positive errno (a negative one reads as positive).
    #[serde(skip_serializing_if = "is_zero", with = "errno")]
    pub status: i32,
}

impl DoneRequest {
    /// True when the wire value could be a C client's sign-extended 32-bit truncation of a
    /// longer cookie, i.e. when it lies in `i32::MIN..=i32::MAX` read as i64.
    pub const fn cookie_may_be_truncated(&self) -> bool {
        let signed = self.cookie as i64;
        signed >= i32::MIN as i64 && signed <= i32::MAX as i64
    }

    /// The low 32 bits of the cookie: all an old C client reliably sends.
    pub const fn cookie_low32(&self) -> u32 {
        self.cookie as u32
    }

    /// True if this done designates a request whose full cookie is `full`: an exact match,
    /// or a match of the low 32 bits when [`cookie_may_be_truncated`](Self::cookie_may_be_truncated).
    pub const fn cookie_matches(&self, full: u64) -> bool {
        self.cookie == full || (self.cookie_may_be_truncated() && self.cookie as u32 == full as u32)
    }
}

/// `queue` request: inject requests (`coordinatool-client -Q`).
///
/// The fsname is read from `fsname` or, as the C CLI sends it, `hal_fsname` (`fsname` wins
/// when both are present); it is written as `fsname`, the key the C server checks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "RawQueue")]
pub struct QueueRequest {
    /// `hsm_action_items`: the items; each needs a non-zero `hal_archive_id`.
    #[serde(rename = "hsm_action_items")]
    pub items: Vec<WireHai>,
    /// `fsname`: optional sanity check against the server's fsname.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub fsname: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawQueue {
    hsm_action_items: Vec<WireHai>,
    #[serde(deserialize_with = "opt_string::deserialize")]
    fsname: Option<String>,
    #[serde(deserialize_with = "opt_string::deserialize")]
    hal_fsname: Option<String>,
}

impl From<RawQueue> for QueueRequest {
    fn from(r: RawQueue) -> Self {
        Self {
            items: r.hsm_action_items,
            fsname: r.fsname.or(r.hal_fsname),
        }
    }
}

/// `status` request. `verbose` is always written (the C server defaults it to 4, not 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusRequest {
    /// `verbose`: log level of the asker; at 6 (DEBUG) or more every queue is dumped.
    pub verbose: i32,
}

impl Default for StatusRequest {
    fn default() -> Self {
        Self {
            verbose: DEFAULT_STATUS_VERBOSE,
        }
    }
}

/// The lock states of the `lock` command and of the `status` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockState {
    /// 0: dispatching runs.
    Unlocked,
    /// 1: no new work goes to movers.
    Locked,
    /// 2: locked, and the server quits once nothing runs.
    LockAndQuit,
}

impl LockState {
    /// The wire value.
    pub const fn code(self) -> i32 {
        match self {
            LockState::Unlocked => 0,
            LockState::Locked => 1,
            LockState::LockAndQuit => 2,
        }
    }

    /// Maps a wire value back, `None` when it is not 0, 1 or 2.
    pub const fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => LockState::Unlocked,
            1 => LockState::Locked,
            2 => LockState::LockAndQuit,
            _ => return None,
        })
    }
}

/// `lock` request. `locked` is kept raw so the server can answer an invalid value with an
/// error reply; it is always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LockRequest {
    /// `locked`: see [`LockState`].
    pub locked: i32,
}

impl LockRequest {
    /// A lock request for `state`.
    pub const fn new(state: LockState) -> Self {
        Self {
            locked: state.code(),
        }
    }

    /// The requested state, `None` for an invalid value.
    pub const fn state(&self) -> Option<LockState> {
        LockState::from_code(self.locked)
    }
}
