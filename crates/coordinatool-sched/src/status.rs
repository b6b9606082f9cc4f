//! Typed `status` output (mirrors the wire `status` reply, §2.7).

use crate::types::{ClientState, LockState, PerKind, Request, Time};
use coordinatool_lustre::LuFid;

/// Engine-wide status. Every counter is exact (a recount of the engine's state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Requests running on clients (connected or within grace).
    pub running: PerKind<u64>,
    /// Requests waiting in any queue.
    pub pending: PerKind<u64>,
    /// Requests finished since start.
    pub done: PerKind<u64>,
    /// CANCEL items waiting to be sent to movers.
    pub pending_cancel: u64,
    /// Cancels resolved: sent to a mover, or reported to Lustre.
    pub done_cancel: u64,
    /// Duplicate requests skipped since start.
    pub duplicates: u64,
    /// Open connections (including ones without `ehlo`).
    pub clients_connected: u32,
    /// Lock state.
    pub locked: LockState,
    /// Connected clients (most recent first), then disconnected ones (most recent first).
    pub clients: Vec<ClientStatus>,
    /// The global queues, when a dump was asked for.
    pub queues: Option<PerKind<Vec<DumpEntry>>>,
}

/// One client record in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientStatus {
    /// Client id.
    pub client_id: String,
    /// State.
    pub state: ClientState,
    /// Requests running on it now.
    pub current: PerKind<u32>,
    /// Requests it finished.
    pub done: PerKind<u64>,
    /// Batch slots (one per configured slot).
    pub batches: Vec<BatchStatus>,
    /// When it disconnected (disconnected records only).
    pub disconnected_at: Option<Time>,
    /// Its lists, when a dump was asked for.
    pub dump: Option<ClientDump>,
}

/// One archive batch slot in [`ClientStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchStatus {
    /// Hint (hsm data) the slot is reserved for.
    pub hint: Option<String>,
    /// Archives running from this slot.
    pub current_count: u32,
    /// Idle deadline.
    pub expire_idle: Option<Time>,
    /// Max deadline.
    pub expire_max: Option<Time>,
    /// Archives waiting in the slot, when a dump was asked for.
    pub waiting_archive: Option<Vec<DumpEntry>>,
}

/// A client's lists in a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDump {
    /// Requests running on it.
    pub active: Vec<DumpEntry>,
    /// Requests queued for it alone.
    pub waiting: PerKind<Vec<DumpEntry>>,
    /// CANCEL items waiting to go to it.
    pub cancels: Vec<DumpEntry>,
}

/// One request in a dump (upstream writes the dfid under the key `hai_fid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpEntry {
    /// Data fid.
    pub dfid: LuFid,
    /// Cookie.
    pub cookie: u64,
    /// Hsm data, cut at its first NUL, lossily decoded.
    pub data: String,
}

impl DumpEntry {
    pub(crate) fn new(r: &Request) -> Self {
        let end = r.data.iter().position(|&b| b == 0).unwrap_or(r.data.len());
        DumpEntry {
            dfid: r.dfid,
            cookie: r.cookie,
            data: String::from_utf8_lossy(&r.data[..end]).into_owned(),
        }
    }
}
