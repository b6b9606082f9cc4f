//! What the engine asks its embedder to do ([`Action`]) and the hook it calls out to.

use crate::types::{ClientId, Request, RequestKey};
use coordinatool_lustre::LuFid;
use std::fmt;

/// One output of the engine, drained with [`Engine::poll_action`](crate::Engine::poll_action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer the client's pending `recv` with these items.
    Deliver(Delivery),
    /// Tell Lustre that a request was cancelled before it reached a mover: `action_begin`
    /// (is_error) then `action_end(HP_FLAG_COMPLETED, ECANCELED)` on this CANCEL item.
    ReportCancelled {
        /// The CANCEL item as Lustre sent it.
        cancel: Request,
    },
    /// A change for the persistent store.
    Persist(PersistOp),
    /// A line for a report file.
    Report(ReportEvent),
    /// Lock-and-quit reached zero running requests: shut down.
    Shutdown,
}

/// The reply to a `recv`: never empty, one archive id and one set of hal flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The client whose `recv` this answers.
    pub client: ClientId,
    /// `hal_archive_id` shared by every item.
    pub archive_id: u32,
    /// `hal_flags` shared by every item.
    pub hal_flags: u64,
    /// The items: cancels first, then requests, at least one.
    pub items: Vec<Request>,
}

/// A change to apply to the persistent store (upstream's two redis hashes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// A new request was registered (store it, with its original data).
    New(Request),
    /// The request now runs on this client.
    Assigned {
        /// Request key.
        key: RequestKey,
        /// Client id string.
        client: String,
    },
    /// The request is no longer assigned (it went back to a queue).
    Unassigned {
        /// Request key.
        key: RequestKey,
    },
    /// The request is gone (done or cancelled): delete it and its assignment.
    Finished {
        /// Request key.
        key: RequestKey,
    },
}

/// A report-file event: `line` is appended to the file named `value` in the reporting directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEvent {
    /// Value of the reporting hint in the request's data (the file name).
    pub value: String,
    /// What happened.
    pub line: ReportLine,
}

/// The report-file lines of upstream (§4.18), plus [`ReportLine::Idle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportLine {
    /// `new <dfid>`.
    New {
        /// Data fid.
        dfid: LuFid,
    },
    /// `assign <dfid> <client>`: placed on a specific host.
    Assign {
        /// Data fid.
        dfid: LuFid,
        /// Client id.
        client: String,
    },
    /// `sent <dfid> <client>`.
    Sent {
        /// Data fid.
        dfid: LuFid,
        /// Client id.
        client: String,
    },
    /// `progress <dfid> <client or global_queue> <pos>/<total>`.
    Progress {
        /// Data fid.
        dfid: LuFid,
        /// Client whose queue holds it, `None` for the global queue.
        queue: Option<String>,
        /// 1-based position.
        pos: u64,
        /// Queue length.
        total: u64,
    },
    /// `done <dfid> <status>`.
    Done {
        /// Data fid.
        dfid: LuFid,
        /// Status the mover gave.
        status: i32,
    },
    /// `cancel <dfid>` (with a newline, unlike upstream).
    Cancel {
        /// Data fid.
        dfid: LuFid,
    },
    /// No request uses this report file any more: the embedder may delete it after its
    /// cleanup delay (not a line).
    Idle,
}

impl fmt::Display for ReportLine {
    /// The line without its trailing newline (`Idle` prints nothing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportLine::New { dfid } => write!(f, "new {dfid}"),
            ReportLine::Assign { dfid, client } => write!(f, "assign {dfid} {client}"),
            ReportLine::Sent { dfid, client } => write!(f, "sent {dfid} {client}"),
            ReportLine::Progress {
                dfid,
                queue,
                pos,
                total,
            } => write!(
                f,
                "progress {dfid} {} {pos}/{total}",
                queue.as_deref().unwrap_or("global_queue")
            ),
            ReportLine::Done { dfid, status } => write!(f, "done {dfid} {status}"),
            ReportLine::Cancel { dfid } => write!(f, "cancel {dfid}"),
            ReportLine::Idle => Ok(()),
        }
    }
}

/// The answer of a [`RestoreLocator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locate {
    /// Any mover may run it.
    Anywhere,
    /// Only the client with this id should run it.
    Host(String),
    /// The lookup failed: the request is parked on the placeholder
    /// [`LOCATE_FAILED_HOST`](crate::LOCATE_FAILED_HOST) and located again after the grace period.
    Failed,
}

/// Restore locality hook (upstream's Phobos `locate`): which host should run a restore.
///
/// The engine calls it when it places a restore, and checks again when the restore is about
/// to be sent (upstream locates at every dispatch). Answers are cached per request, so the
/// hook is not called at every dispatch: a cached answer is reused until it is older than
/// [`cache_ttl_ms`](RestoreLocator::cache_ttl_ms) or a client connects or disconnects. When
/// the answer at dispatch names another host, the restore moves to that host's queue.
pub trait RestoreLocator {
    /// Where `request` should run. `focus` is a suggestion for locators that can choose
    /// between several copies: at placement the connected client with the fewest running
    /// restores, at dispatch the client about to receive it.
    fn locate(&mut self, request: &Request, focus: Option<&str>) -> Locate;

    /// How long an answer stays valid, in milliseconds (default one minute).
    fn cache_ttl_ms(&self) -> u64 {
        60_000
    }
}
