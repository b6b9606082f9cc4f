//! Plain data types the engine takes in and gives out.

use coordinatool_lustre::{HsmAction, LuFid};
use std::fmt;

/// A point in time, in nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
///
/// The engine never reads a clock: every input carries the embedder's `now`, which must not
/// go backwards between calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// Builds a time from milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Time(ms.saturating_mul(1_000_000))
    }

    /// Builds a time from seconds since the epoch.
    pub const fn from_secs(s: u64) -> Self {
        Time(s.saturating_mul(1_000_000_000))
    }

    /// This time plus `ns` nanoseconds (saturating).
    pub const fn add_nanos(self, ns: u64) -> Self {
        Time(self.0.saturating_add(ns))
    }

    /// Nanoseconds elapsed since `earlier` (0 if `earlier` is later).
    pub const fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The key of a request: the MDT cookie and the data fid, as in Lustre.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    /// `hai_cookie`.
    pub cookie: u64,
    /// `hai_dfid`.
    pub dfid: LuFid,
}

/// The owner of the file a request is about, when intake knows it (used for fair share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    /// File owner's user id.
    pub uid: u32,
    /// File owner's group id.
    pub gid: u32,
    /// File project id.
    pub projid: u32,
}

/// One HSM action item, in the engine's compact form (the server translates the wire `hai`
/// objects to and from this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do. Requests the engine schedules are archive, restore or remove; cancel
    /// items only travel to movers.
    pub action: HsmAction,
    /// `hai_cookie`.
    pub cookie: u64,
    /// `hai_dfid`.
    pub dfid: LuFid,
    /// `hai_fid`.
    pub fid: LuFid,
    /// `hai_extent.offset`.
    pub extent_offset: u64,
    /// `hai_extent.length` (`u64::MAX` = whole file).
    pub extent_length: u64,
    /// `hai_gid` (group lock id).
    pub gid: u64,
    /// Archive id of the `hal` the item came from (never 0).
    pub archive_id: u32,
    /// Flags of the `hal` the item came from.
    pub hal_flags: u64,
    /// Opaque user data (`hai_data`), which may contain NUL bytes.
    pub data: Box<[u8]>,
    /// When the coordinator first received the request.
    pub timestamp: Time,
    /// MDT index the request came from, if known.
    pub mdt_index: Option<u32>,
    /// File owner, if intake resolved it.
    pub owner: Option<Owner>,
}

/// Size of `struct hsm_action_item` without its data.
pub const HAI_HEADER_LEN: usize = 72;

/// The smallest accepted `recv` budget (`HAI_SIZE_MARGIN`: one header plus 100 bytes).
pub const MIN_RECV_BYTES: u32 = 172;

impl Request {
    /// The request key `(cookie, dfid)`.
    pub fn key(&self) -> RequestKey {
        RequestKey {
            cookie: self.cookie,
            dfid: self.dfid,
        }
    }

    /// `hai_len` as the server computes it: header plus exact data length.
    pub fn hai_len(&self) -> usize {
        HAI_HEADER_LEN + self.data.len()
    }

    /// Bytes this item costs in a `recv` reply budget: `72 + hai_len`, which conservatively
    /// covers the list header and padding (as upstream counts it).
    pub fn budget_cost(&self) -> u64 {
        (HAI_HEADER_LEN + self.hai_len()) as u64
    }
}

/// The three kinds of work the engine schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `HSMA_RESTORE`.
    Restore = 0,
    /// `HSMA_REMOVE`.
    Remove = 1,
    /// `HSMA_ARCHIVE`.
    Archive = 2,
}

impl Kind {
    /// Every kind, in index order.
    pub const ALL: [Kind; 3] = [Kind::Restore, Kind::Remove, Kind::Archive];

    /// The kind of an action, `None` for none/cancel.
    pub fn of(action: HsmAction) -> Option<Kind> {
        match action {
            HsmAction::Restore => Some(Kind::Restore),
            HsmAction::Remove => Some(Kind::Remove),
            HsmAction::Archive => Some(Kind::Archive),
            _ => None,
        }
    }

    /// Index into per-kind arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name used in status keys (`restore`, `remove`, `archive`).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Restore => "restore",
            Kind::Remove => "remove",
            Kind::Archive => "archive",
        }
    }
}

/// One counter per kind of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerKind<T> {
    /// Restores.
    pub restore: T,
    /// Removes.
    pub remove: T,
    /// Archives.
    pub archive: T,
}

impl<T> PerKind<T> {
    pub(crate) fn from_array(a: [T; 3]) -> Self {
        let [restore, remove, archive] = a;
        PerKind {
            restore,
            remove,
            archive,
        }
    }

    /// A reference to the value of one kind.
    pub fn get_ref(&self, kind: Kind) -> &T {
        match kind {
            Kind::Restore => &self.restore,
            Kind::Remove => &self.remove,
            Kind::Archive => &self.archive,
        }
    }
}

impl<T: Copy> PerKind<T> {
    /// The counter of one kind.
    pub fn get(&self, kind: Kind) -> T {
        match kind {
            Kind::Restore => self.restore,
            Kind::Remove => self.remove,
            Kind::Archive => self.archive,
        }
    }
}

/// A handle on a client record (a connection, or a disconnected or placeholder record).
///
/// Handles are never reused: a handle whose record was freed is rejected with
/// [`EngineError::UnknownClient`](crate::EngineError::UnknownClient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub(crate) idx: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}.{}", self.idx, self.generation)
    }
}

/// What a client sends in `ehlo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ehlo {
    /// Client id; `None` makes the client anonymous (named by its peer address, no takeover).
    pub id: Option<String>,
    /// Archive ids the client accepts; empty means any.
    pub archive_ids: Vec<u32>,
    /// On reconnect, every action the client is still running.
    pub running: Vec<Request>,
}

/// The limits a client sends with each `recv`. `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvLimits {
    /// Maximum concurrently running archives on this client.
    pub max_archive: Option<u32>,
    /// Maximum concurrently running restores.
    pub max_restore: Option<u32>,
    /// Maximum concurrently running removes.
    pub max_remove: Option<u32>,
    /// Reply budget in bytes (at least [`MIN_RECV_BYTES`]).
    pub max_bytes: u32,
}

impl Default for RecvLimits {
    fn default() -> Self {
        RecvLimits {
            max_archive: None,
            max_restore: None,
            max_remove: None,
            max_bytes: 1 << 20,
        }
    }
}

impl RecvLimits {
    /// The limit for one kind.
    pub fn max(&self, kind: Kind) -> Option<u32> {
        match kind {
            Kind::Restore => self.max_restore,
            Kind::Remove => self.max_remove,
            Kind::Archive => self.max_archive,
        }
    }
}

/// The lock state (`lock` command).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockState {
    /// Dispatching normally (wire value 0).
    #[default]
    Unlocked = 0,
    /// No new work is sent to movers (wire value 1).
    Locked = 1,
    /// Locked, and shut down once nothing is running (wire value 2).
    LockAndQuit = 2,
}

impl LockState {
    /// Maps the wire value (0, 1, 2) to a state.
    pub fn from_wire(v: i64) -> Option<Self> {
        match v {
            0 => Some(LockState::Unlocked),
            1 => Some(LockState::Locked),
            2 => Some(LockState::LockAndQuit),
            _ => None,
        }
    }
}

/// The state of a client record, as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Connected, no `ehlo` yet.
    Init,
    /// Handshaken, no `recv` pending.
    Ready,
    /// A `recv` is pending (long poll).
    Waiting,
    /// No connection: kept for the grace period (includes placeholders).
    Disconnected,
}

impl ClientState {
    /// The status string upstream uses.
    pub const fn name(self) -> &'static str {
        match self {
            ClientState::Init => "init",
            ClientState::Ready => "ready",
            ClientState::Waiting => "waiting",
            ClientState::Disconnected => "disconnected",
        }
    }
}
