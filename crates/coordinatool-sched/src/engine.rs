//! The engine state machine.

use crate::action::{Action, Delivery, Locate, PersistOp, ReportEvent, ReportLine, RestoreLocator};
use crate::batch::{BatchSlot, Groups, NO_SLOT};
use crate::config::Config;
use crate::fxhash::{FxHashMap, FxHashSet};
use crate::hint::{Rng, parse_hint, valid_report_value};
use crate::index::KeyIndex;
use crate::policy::{ConfigPolicy, Placement, Policy, Share};
use crate::queue::{Fifo, Link, LinkStore, NIL, PartKey, QueueSet, Slot};
use crate::status::{BatchStatus, ClientDump, ClientStatus, DumpEntry, Status};
use crate::types::{
    ClientId, ClientState, Ehlo, Kind, LockState, MIN_RECV_BYTES, PerKind, RecvLimits, Request,
    RequestKey, Time,
};
use coordinatool_lustre::HsmAction;
use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
use tracing::{debug, info, warn};

/// Host name of the placeholder that holds restores whose locate failed (upstream's name).
pub const LOCATE_FAILED_HOST: &str = "phobos_error_dummy_host";

/// Set index of the global queue.
const GLOBAL: u32 = 0;

/// Where a dispatch candidate comes from: a queue set, or a batch slot of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Set(u32),
    Slot(u8),
}

/// Errors returned to the client that sent a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The handle does not name a live client record.
    #[error("unknown client {0}")]
    UnknownClient(ClientId),
    /// `ehlo` on a connection that already completed one.
    #[error("Client cannot send EHLO twice")]
    EhloTwice,
    /// An archive id outside 1..=i32::MAX in `ehlo`.
    #[error("Bad archive id in list: {0}")]
    BadArchiveId(u32),
    /// Another connected, handshaken client already uses this id.
    #[error("id already used by another client: {0}")]
    IdInUse(String),
    /// `recv` before `ehlo`, or while a `recv` is already pending.
    #[error("Client must send EHLO first and not already be in RECV")]
    NotReady,
    /// `recv` with a budget below [`MIN_RECV_BYTES`].
    #[error("Buffer too small: max_bytes {0} < 172")]
    BufferTooSmall(u32),
}

/// Why a request was refused at intake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    /// Only archive, restore and remove are scheduled (cancel goes to [`Engine::cancel`]).
    #[error("action {0:?} cannot be queued (only ARCHIVE, RESTORE, REMOVE)")]
    NotSchedulable(HsmAction),
    /// `hal_archive_id` 0 where a real archive id is required.
    #[error("hal_archive_id must not be 0")]
    ArchiveIdZero,
}

/// Invalid engine configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A host mapping with no host.
    #[error("host mapping for tag {0:?} lists no host")]
    NoHosts(String),
    /// A fair-share weight for a numeric key that is not a number.
    #[error("fair-share weight key {0:?} is not an integer id")]
    BadWeightKey(String),
    /// A zero fair-share weight.
    #[error("fair-share weight of {0:?} must be at least 1")]
    ZeroWeight(String),
    /// A config-file value that does not parse.
    #[error("config key {key}: bad value {value:?}: {reason}")]
    BadValue {
        /// The key (as written).
        key: String,
        /// The value (as written).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Result of registering a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intake {
    /// Registered and queued.
    New,
    /// A request with the same key exists: skipped (and counted).
    Duplicate,
}

/// Result of a `queue` command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// New requests registered.
    pub enqueued: u32,
    /// Items whose key already existed.
    pub skipped: u32,
    /// Items refused, with their position in the list.
    pub errors: Vec<(usize, IntakeError)>,
}

/// Result of a CANCEL from Lustre.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such request (probably just done): ignored.
    Unknown,
    /// It was queued: removed, and [`Action::ReportCancelled`] emitted.
    Cancelled,
    /// It is running: a CANCEL item will go to its mover.
    Forwarded,
}

/// Result of a `done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneOutcome {
    /// The request was found and finished.
    Finished,
    /// Unknown key (a double ack after a cancel, or already finished): harmless.
    Unknown,
}

/// Where a request is, as [`Engine::requests`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Waiting in the global queue, for any compatible mover.
    Queued,
    /// Waiting in one client's own queue (host mapping, restore locality, a placeholder).
    QueuedOn(ClientId),
    /// Waiting in a batch slot of a client (archive batching): only that client sends it.
    InSlot {
        /// The client owning the slot.
        client: ClientId,
        /// Slot index.
        slot: u8,
    },
    /// Running on a client.
    Running(ClientId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Detached,
    Queued {
        set: u32,
        slot: Slot,
    },
    Running {
        client: u32,
    },
    /// Waiting in a batch group.
    Grouped {
        group: u32,
        slot: Slot,
    },
}

#[derive(Debug)]
struct Req {
    r: Request,
    kind: Kind,
    loc: Loc,
    prio: i32,
    share: u64,
    weight: u32,
    /// Batch slot of the owning client it was sent from ([`NO_SLOT`] if none).
    slot: u8,
    /// Links in whichever list holds it (kept next to the request for cache locality).
    link: Link,
}

impl LinkStore for Vec<Option<Req>> {
    fn link(&self, id: u32) -> Link {
        self[id as usize].as_ref().expect("live request").link
    }
    fn set_link(&mut self, id: u32, link: Link) {
        self[id as usize].as_mut().expect("live request").link = link;
    }
    /// Two-deep: `id` is a flow's new head, served when the flow's turn comes again. Its
    /// record was prefetched when it became second in line, so reading it now is cheap: this
    /// starts loading its data (a separate allocation, cloned at dispatch) and the record of
    /// the request behind it.
    fn prefetch(&self, id: u32) {
        let Some(Some(r)) = self.get(id as usize) else {
            return;
        };
        prefetch_record(self, id);
        prefetch(r.r.data.as_ptr());
        if r.link.next != NIL {
            prefetch_record(self, r.link.next);
        }
    }
}

/// Prefetches every cache line of request slot `id` (the dispatch reads all of it: it
/// clones the request).
fn prefetch_record(reqs: &[Option<Req>], id: u32) {
    if let Some(slot) = reqs.get(id as usize) {
        let p = std::ptr::from_ref(slot).cast::<u8>();
        let last = std::mem::size_of::<Option<Req>>() - 1;
        for off in (0..last).step_by(64).chain(std::iter::once(last)) {
            prefetch(p.wrapping_add(off));
        }
    }
}

/// Hints the CPU to load the cache line holding `p` (no effect off x86_64).
#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch never faults nor reads
        // memory into the program, whatever the address (it is only a cache hint).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A cached [`RestoreLocator`] answer.
#[derive(Debug)]
struct Located {
    /// `None`: anywhere.
    host: Option<Box<str>>,
    /// [`Engine::loc_epoch`] when asked.
    epoch: u64,
    /// When asked.
    at: Time,
}

#[derive(Debug)]
struct Client {
    name: Box<str>,
    id_set: bool,
    state: ClientState,
    disconnected_at: Option<Time>,
    archives: Option<Vec<u32>>,
    limits: RecvLimits,
    current: [u32; 3],
    done: [u64; 3],
    running: Fifo,
    set: Option<u32>,
    cancels: VecDeque<Request>,
    slots: Vec<BatchSlot>,
    /// Ordering stamp for status (most recent first).
    order: u64,
}

impl Client {
    fn accepts(&self, archive_id: u32) -> bool {
        self.archives
            .as_ref()
            .is_none_or(|a| a.binary_search(&archive_id).is_ok())
    }

    fn connected(&self) -> bool {
        self.state != ClientState::Disconnected
    }
}

#[derive(Debug)]
struct ClientSlot {
    generation: u32,
    client: Option<Client>,
}

/// The scheduling engine: a deterministic, sans-IO state machine.
///
/// Methods come in four kinds, as in quinn-proto:
/// * inputs: [`connect`](Self::connect), [`ehlo`](Self::ehlo), [`recv`](Self::recv),
///   [`done`](Self::done), [`disconnect`](Self::disconnect), [`new_request`](Self::new_request),
///   [`new_requests`](Self::new_requests), [`queue`](Self::queue), [`recover`](Self::recover),
///   [`cancel`](Self::cancel), [`set_lock`](Self::set_lock), [`handle_timeout`](Self::handle_timeout);
/// * a reporting tick: [`report_progress`](Self::report_progress);
/// * getters: [`status`](Self::status), [`client_state`](Self::client_state), counters;
/// * outputs: [`poll_action`](Self::poll_action) and [`poll_timeout`](Self::poll_timeout).
///
/// After every input, drain `poll_action` until it returns `None`, then re-arm the timer with
/// `poll_timeout`. Every input takes `now`, which must never go backwards.
pub struct Engine {
    cfg: Config,
    reqs: Vec<Option<Req>>,
    free_reqs: Vec<u32>,
    index: KeyIndex,
    /// Original data of requests an upstream-mode consistent-hash mapping rewrote.
    orig_data: FxHashMap<u32, Box<[u8]>>,
    sets: Vec<QueueSet>,
    free_sets: Vec<u32>,
    clients: Vec<ClientSlot>,
    free_clients: Vec<u32>,
    by_name: FxHashMap<Box<str>, u32>,
    /// Clients with a pending `recv`, most recent first.
    waiting: VecDeque<u32>,
    expiries: BTreeSet<(Time, u32)>,
    groups: Groups,
    /// Batch slot deadlines: (when, client, slot).
    batch_deadlines: BTreeSet<(Time, u32, u8)>,
    /// Free batch slots of handshaken connected clients, in upstream's search order for a
    /// new slot: slot index, then newest client first.
    free_slots: BTreeSet<(u8, Reverse<u64>, u32)>,
    running: [u64; 3],
    pending: [u64; 3],
    done: [u64; 3],
    pending_cancel: u64,
    done_cancel: u64,
    duplicates: u64,
    connected: u32,
    lock: LockState,
    shutdown_sent: bool,
    actions: VecDeque<Action>,
    rng: Rng,
    order: u64,
    report_needle: Option<Vec<u8>>,
    report_refs: FxHashMap<Box<str>, u32>,
    locator: Option<Box<dyn RestoreLocator>>,
    /// Locator answers per request slot.
    locality: FxHashMap<u32, Located>,
    /// Bumped whenever a client connects (ehlo) or leaves: cached locator answers from an
    /// older epoch are asked again at dispatch.
    loc_epoch: u64,
    dirty: bool,
    policy: Box<dyn Policy>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pending", &self.pending)
            .field("running", &self.running)
            .field("done", &self.done)
            .field("connected", &self.connected)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine. `now` is unused today but keeps the constructor in line with the
    /// other inputs.
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        let policy = ConfigPolicy::new(&cfg)?;
        Ok(Self::with_policy(cfg, Box::new(policy)))
    }

    /// Builds an engine whose ordering and placement come from `policy` instead of the
    /// built-in [`ConfigPolicy`] (the config's host mappings, priorities and fair share are
    /// then unused; grace, batching, reporting, spread and aging still apply).
    pub fn with_policy(cfg: Config, policy: Box<dyn Policy>) -> Self {
        Engine {
            rng: Rng::new(cfg.seed),
            report_needle: cfg
                .reporting_hint
                .as_ref()
                .map(|h| format!("{h}=").into_bytes()),
            cfg,
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            index: KeyIndex::default(),
            orig_data: FxHashMap::default(),
            sets: vec![QueueSet::default()],
            free_sets: Vec::new(),
            clients: Vec::new(),
            free_clients: Vec::new(),
            by_name: FxHashMap::default(),
            waiting: VecDeque::new(),
            expiries: BTreeSet::new(),
            groups: Groups::default(),
            batch_deadlines: BTreeSet::new(),
            free_slots: BTreeSet::new(),
            running: [0; 3],
            pending: [0; 3],
            done: [0; 3],
            pending_cancel: 0,
            done_cancel: 0,
            duplicates: 0,
            connected: 0,
            lock: LockState::Unlocked,
            shutdown_sent: false,
            actions: VecDeque::new(),
            order: 0,
            report_refs: FxHashMap::default(),
            locator: None,
            locality: FxHashMap::default(),
            loc_epoch: 0,
            dirty: false,
            policy,
        }
    }

    /// Installs the restore-locality hook (upstream's Phobos locate).
    pub fn set_restore_locator(&mut self, locator: Box<dyn RestoreLocator>) {
        self.locator = Some(locator);
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ----------------------------------------------------------------- outputs

    /// The next action for the embedder, in the order they were produced.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.actions.pop_front();
        if a.is_none() && self.actions.capacity() > 4096 {
            // A burst (a big `queue`) must not pin its peak memory for good.
            self.actions.shrink_to(64);
        }
        a
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (`None`: no timer).
    /// Upstream never arms its timer less than a second ahead; rate-limiting is the embedder's choice.
    pub fn poll_timeout(&self) -> Option<Time> {
        let grace = self.expiries.first().map(|&(t, _)| t);
        let batch = self.batch_deadlines.first().map(|&(t, _, _)| t);
        match (grace, batch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----------------------------------------------------------------- getters

    /// Number of requests queued, per kind.
    pub fn pending(&self) -> PerKind<u64> {
        PerKind::from_array(self.pending)
    }

    /// Number of requests running on clients, per kind.
    pub fn running(&self) -> PerKind<u64> {
        PerKind::from_array(self.running)
    }

    /// Requests finished since start, per kind.
    pub fn done_count(&self) -> PerKind<u64> {
        PerKind::from_array(self.done)
    }

    /// Duplicate requests skipped since start.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The lock state.
    pub fn lock_state(&self) -> LockState {
        self.lock
    }

    /// State of a client record, `None` if the handle is stale.
    pub fn client_state(&self, client: ClientId) -> Option<ClientState> {
        self.client(client).ok().map(|c| self.cl(c).state)
    }

    /// Handle of the record currently holding this client id (connected, disconnected or
    /// placeholder).
    pub fn client_by_name(&self, name: &str) -> Option<ClientId> {
        self.by_name.get(name).map(|&idx| self.handle(idx))
    }

    /// The id string of a client record.
    pub fn client_name(&self, client: ClientId) -> Option<&str> {
        self.client(client).ok().map(|c| &*self.cl(c).name)
    }

    /// Where a request is: `Some(None)` queued, `Some(Some(client))` running, `None` unknown.
    pub fn request_owner(&self, key: RequestKey) -> Option<Option<ClientId>> {
        let id = self.lookup_exact(key)?;
        match self.rq(id).loc {
            Loc::Running { client } => Some(Some(self.handle(client))),
            _ => Some(None),
        }
    }

    /// Every live request (queued or running) with where it is, in no particular order.
    /// The data is what movers are sent (after an upstream-mode consistent-hash rewrite).
    /// O(requests); meant for status pages and for embedders rebuilding their own view.
    pub fn requests(&self) -> impl Iterator<Item = (&Request, Placed)> + '_ {
        self.reqs.iter().filter_map(move |r| {
            let r = r.as_ref()?;
            let placed = match r.loc {
                Loc::Running { client } => Placed::Running(self.handle(client)),
                Loc::Queued { set, .. } => self.placed_in_set(set),
                Loc::Grouped { group, .. } => {
                    let g = self.groups.get(group);
                    match g.owner {
                        Some((c, slot)) => Placed::InSlot {
                            client: self.handle(c),
                            slot,
                        },
                        None => self.placed_in_set(g.target),
                    }
                }
                Loc::Detached => unreachable!("requests are detached only inside an input"),
            };
            Some((&r.r, placed))
        })
    }

    /// The hsm data `key`'s request arrived with, which is what a store must keep: it differs
    /// from the data [`requests`](Self::requests) shows when an upstream-mode consistent-hash
    /// rewrite changed it (recovering the rewritten data would hash the hashed value again).
    /// `None` for an unknown key.
    pub fn stored_data(&self, key: RequestKey) -> Option<&[u8]> {
        self.lookup_exact(key).map(|id| self.data_of(id))
    }

    fn placed_in_set(&self, set: u32) -> Placed {
        if set == GLOBAL {
            Placed::Queued
        } else {
            Placed::QueuedOn(self.handle(self.sets[set as usize].owner))
        }
    }

    // ----------------------------------------------------------------- inputs: clients

    /// A new connection (upstream INIT state). `peer` (`host:port`) names it until `ehlo`
    /// and for good if it stays anonymous.
    pub fn connect(&mut self, peer: &str, _now: Time) -> ClientId {
        self.connected += 1;
        let idx = self.alloc_client(Client {
            name: peer.into(),
            id_set: false,
            state: ClientState::Init,
            disconnected_at: None,
            archives: None,
            limits: RecvLimits::default(),
            current: [0; 3],
            done: [0; 3],
            running: Fifo::default(),
            set: None,
            cancels: VecDeque::new(),
            slots: vec![BatchSlot::default(); self.slot_count()],
            order: 0,
        });
        self.handle(idx)
    }

    /// `ehlo`: handshake, takeover of a disconnected record with the same id, and
    /// reconciliation with the actions the client says it is running.
    pub fn ehlo(&mut self, client: ClientId, ehlo: Ehlo, now: Time) -> Result<(), EngineError> {
        let c = self.client(client)?;
        if self.cl(c).state != ClientState::Init {
            return Err(EngineError::EhloTwice);
        }
        let mut archives = Vec::with_capacity(ehlo.archive_ids.len());
        for &a in &ehlo.archive_ids {
            if a == 0 || a > i32::MAX as u32 {
                return Err(EngineError::BadArchiveId(a));
            }
            archives.push(a);
        }
        archives.sort_unstable();
        archives.dedup();
        let name: Box<str> = match &ehlo.id {
            Some(id) => id.as_str().into(),
            None => self.cl(c).name.clone(),
        };
        let existing = self.by_name.get(&name).copied();
        if let Some(e) = existing
            && e != c
            && self.cl(e).connected()
        {
            return Err(EngineError::IdInUse(name.into()));
        }
        let order = self.next_order();
        {
            let cl = self.cl_mut(c);
            cl.archives = (!archives.is_empty()).then_some(archives);
            cl.state = ClientState::Ready;
            cl.name = name.clone();
            cl.order = order;
        }
        self.loc_epoch += 1;
        if ehlo.id.is_none() {
            self.by_name.insert(name, c);
            self.list_slots(c);
            return Ok(());
        }
        self.cl_mut(c).id_set = true;
        if let Some(old) = existing {
            self.takeover(old, c);
        }
        self.list_slots(c);
        self.by_name.insert(name, c);
        self.reconcile(c, ehlo.running, now);
        self.dirty = true;
        self.flush(now);
        Ok(())
    }

    /// `recv`: store the limits, then answer now if work is available, else later
    /// (the client stays waiting; no reply is ever empty).
    pub fn recv(
        &mut self,
        client: ClientId,
        limits: RecvLimits,
        now: Time,
    ) -> Result<(), EngineError> {
        let c = self.client(client)?;
        let cl = self.cl_mut(c);
        // Unlike upstream, a refused recv leaves the limits of the pending one alone, so a
        // reply never exceeds the budget the client is waiting with.
        if cl.state != ClientState::Ready {
            return Err(EngineError::NotReady);
        }
        if limits.max_bytes < MIN_RECV_BYTES {
            return Err(EngineError::BufferTooSmall(limits.max_bytes));
        }
        cl.limits = limits;
        cl.state = ClientState::Waiting;
        self.waiting.push_front(c);
        self.dispatch(c, now);
        self.flush(now);
        Ok(())
    }

    /// `done` from a client: finish the request (crediting the client that owns it), or
    /// ignore an unknown key. A cookie truncated to 32 bits (old C clients) matches when only
    /// one request of that dfid has those low 32 bits.
    pub fn done(&mut self, from: ClientId, key: RequestKey, status: i32, now: Time) -> DoneOutcome {
        let Some(id) = self.lookup(key) else {
            debug!(cookie = key.cookie, dfid = %key.dfid, "done for unknown key (double ack on cancel?)");
            return DoneOutcome::Unknown;
        };
        let (dfid, owner, key_found) = {
            let r = self.rq(id);
            (r.r.dfid, r.loc, r.r.key())
        };
        self.report(id, ReportLine::Done { dfid, status });
        self.detach(id, false, now);
        let kind = self.rq(id).kind;
        self.done[kind.index()] += 1;
        if let Loc::Running { client } = owner {
            // A cancel still waiting for this request is moot now: drop it.
            let cl = self.cl_mut(client);
            let before = cl.cancels.len();
            cl.cancels.retain(|cn| cn.key() != key_found);
            let dropped = (before - cl.cancels.len()) as u64;
            self.pending_cancel -= dropped;
            self.done_cancel += dropped;
            self.cl_mut(client).done[kind.index()] += 1;
            if self.cl(client).state == ClientState::Waiting {
                self.dispatch(client, now);
            }
        }
        self.free_req(id);
        if let Ok(f) = self.client(from)
            && self.cl(f).state == ClientState::Waiting
        {
            self.dispatch(f, now);
        }
        self.check_quit();
        self.flush(now);
        DoneOutcome::Finished
    }

    /// The connection closed. Anonymous and not-yet-handshaken clients are freed at once
    /// (their work is re-queued); named clients keep their work for `client_grace_ms`.
    pub fn disconnect(&mut self, client: ClientId, now: Time) -> Result<(), EngineError> {
        let c = self.client(client)?;
        let cl = self.cl(c);
        if cl.state == ClientState::Disconnected {
            return Ok(());
        }
        if !cl.id_set || cl.state == ClientState::Init {
            self.free_client(c, now);
        } else {
            self.connected -= 1;
            self.loc_epoch += 1;
            self.unwait(c);
            self.unlist_slots(c);
            let order = self.next_order();
            let exp = now.add_nanos(self.grace_ns());
            let cl = self.cl_mut(c);
            cl.state = ClientState::Disconnected;
            cl.disconnected_at = Some(now);
            cl.order = order;
            self.expiries.insert((exp, c));
        }
        self.flush(now);
        Ok(())
    }

    // ----------------------------------------------------------------- inputs: requests

    /// One request from Lustre.
    pub fn new_request(&mut self, req: Request, now: Time) -> Result<Intake, IntakeError> {
        let r = self.register(req, true, now);
        self.flush(now);
        r
    }

    /// Every item of one `hal` from Lustre (dispatching once at the end). Returns the
    /// per-item outcomes.
    pub fn new_requests(
        &mut self,
        reqs: impl IntoIterator<Item = Request>,
        now: Time,
    ) -> Vec<Result<Intake, IntakeError>> {
        let out = reqs
            .into_iter()
            .map(|r| self.register(r, true, now))
            .collect();
        self.flush(now);
        out
    }

    /// The `queue` command: like Lustre intake, but `hal_archive_id` must not be 0 and a
    /// `timestamp` of 0 is replaced by `now`. Waiting clients are served right away (upstream
    /// waited for the next trigger).
    pub fn queue(&mut self, items: impl IntoIterator<Item = Request>, now: Time) -> QueueSummary {
        let mut s = QueueSummary::default();
        for (i, mut r) in items.into_iter().enumerate() {
            if r.archive_id == 0 {
                s.errors.push((i, IntakeError::ArchiveIdZero));
                continue;
            }
            if r.timestamp == Time(0) {
                r.timestamp = now;
            }
            match self.register(r, true, now) {
                Ok(Intake::New) => s.enqueued += 1,
                Ok(Intake::Duplicate) => s.skipped += 1,
                Err(e) => s.errors.push((i, e)),
            }
        }
        self.flush(now);
        s
    }

    /// A request read back from the store at startup, with the client it was assigned to.
    /// No [`PersistOp::New`] is emitted (the store has it). An assignment to an unknown
    /// client creates a disconnected placeholder for it, which expires after the grace period.
    pub fn recover(
        &mut self,
        req: Request,
        assigned: Option<&str>,
        now: Time,
    ) -> Result<Intake, IntakeError> {
        let kind = Kind::of(req.action).ok_or(IntakeError::NotSchedulable(req.action))?;
        if self.lookup_exact(req.key()).is_some() {
            self.duplicates += 1;
            return Ok(Intake::Duplicate);
        }
        let id = self.insert_req(req, kind);
        self.report_new(id);
        match assigned {
            Some(name) => {
                let c = self.client_for_host(name, now);
                self.attach_running(c, id);
            }
            None => self.place(id, false, now),
        }
        self.dirty = true;
        self.flush(now);
        Ok(Intake::New)
    }

    /// A CANCEL item from Lustre (its cookie and dfid name the request to cancel).
    pub fn cancel(&mut self, cancel: Request, now: Time) -> CancelOutcome {
        let Some(id) = self.lookup_exact(cancel.key()) else {
            warn!(cookie = cancel.cookie, dfid = %cancel.dfid, "cancel: not in queue -- just done?");
            return CancelOutcome::Unknown;
        };
        let dfid = cancel.dfid;
        self.report(id, ReportLine::Cancel { dfid });
        let out = match self.rq(id).loc {
            Loc::Running { client } => {
                self.cl_mut(client).cancels.push_back(cancel);
                self.pending_cancel += 1;
                if self.cl(client).state == ClientState::Waiting {
                    self.dispatch(client, now);
                }
                CancelOutcome::Forwarded
            }
            _ => {
                self.cancel_queued(id, cancel, now);
                CancelOutcome::Cancelled
            }
        };
        self.flush(now);
        out
    }

    /// `lock`: 0 unlock (and serve every waiting client), 1 lock, 2 lock and quit once
    /// nothing runs.
    pub fn set_lock(&mut self, state: LockState, now: Time) {
        self.lock = state;
        match state {
            LockState::Unlocked => self.dirty = true,
            LockState::Locked => {}
            LockState::LockAndQuit => self.check_quit(),
        }
        self.flush(now);
    }

    /// Time passed: free disconnected clients whose grace expired (re-queuing their work),
    /// then serve waiting clients. Extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(t, c)) = self.expiries.first() {
            if t > now {
                break;
            }
            self.expiries.pop_first();
            info!(client = %self.cl(c).name, "grace period expired, re-queuing its requests");
            self.free_client(c, now);
        }
        self.expire_slots(now);
        self.dirty = true;
        self.flush(now);
    }

    /// Reporting tick: a `progress` line for every reported request waiting in a connected
    /// client's queue or the global queue, for restores, removes and archives alike (upstream
    /// reports restores only, §9.4.17). Each (queue, kind) is one list, numbered from 1: a
    /// queue's archives include its unowned batch groups, and a client's also the archives
    /// held in its batch slots. O(queued requests).
    pub fn report_progress(&mut self, _now: Time) {
        if self.report_needle.is_none() {
            return;
        }
        let mut queues: Vec<(Option<String>, [Vec<u32>; 3])> = Vec::new();
        for slot in &self.clients {
            let Some(cl) = &slot.client else { continue };
            if !cl.connected() {
                continue;
            }
            let mut ids = self.waiting_ids(cl.set);
            for g in cl.slots.iter().filter_map(|sl| sl.group) {
                ids[Kind::Archive.index()]
                    .extend(self.groups.get(g).q.iter_kind(&self.reqs, Kind::Archive));
            }
            queues.push((Some(cl.name.to_string()), ids));
        }
        queues.push((None, self.waiting_ids(Some(GLOBAL))));
        for (queue, per_kind) in queues {
            for ids in per_kind {
                let total = ids.len() as u64;
                for (i, id) in ids.into_iter().enumerate() {
                    // Most queued requests are usually not reported: the line (and its queue
                    // name) is built only for those that are.
                    let Some(value) = self.report_value(id) else {
                        continue;
                    };
                    let dfid = self.rq(id).r.dfid;
                    self.actions.push_back(Action::Report(ReportEvent {
                        value,
                        line: ReportLine::Progress {
                            dfid,
                            queue: queue.clone(),
                            pos: i as u64 + 1,
                            total,
                        },
                    }));
                }
            }
        }
    }

    /// The requests waiting in queue set `set`, per kind (indexed by [`Kind::index`]); the
    /// archives include those of the set's unowned batch groups (an owned group belongs to
    /// its slot's client).
    fn waiting_ids(&self, set: Option<u32>) -> [Vec<u32>; 3] {
        let Some(s) = set else {
            return Default::default();
        };
        Kind::ALL.map(|k| {
            let mut v: Vec<u32> = self.sets[s as usize].iter_kind(&self.reqs, k).collect();
            if k == Kind::Archive {
                // Non-empty unowned groups of this set, oldest first (the order slots claim
                // them in).
                for &(_, _, g) in self
                    .groups
                    .unowned
                    .range((s, 0, 0)..=(s, u64::MAX, u32::MAX))
                {
                    v.extend(self.groups.get(g).q.iter_kind(&self.reqs, k));
                }
            }
            v
        })
    }

    // ----------------------------------------------------------------- status

    /// Runtime information (`status`). With `dump`, every queue is listed too
    /// (upstream's verbose ≥ 6).
    pub fn status(&self, dump: bool) -> Status {
        let mut connected: Vec<&Client> = Vec::new();
        let mut disconnected: Vec<&Client> = Vec::new();
        for cl in self.clients.iter().filter_map(|s| s.client.as_ref()) {
            if cl.connected() {
                connected.push(cl);
            } else {
                disconnected.push(cl);
            }
        }
        connected.sort_by_key(|c| std::cmp::Reverse(c.order));
        disconnected.sort_by_key(|c| std::cmp::Reverse(c.order));
        let entry = |id: u32| {
            let r = &self.rq(id).r;
            DumpEntry::new(r)
        };
        let dump_set = |s: Option<u32>| {
            PerKind::from_array(
                self.waiting_ids(s)
                    .map(|ids| ids.into_iter().map(entry).collect::<Vec<DumpEntry>>()),
            )
        };
        let batches = |cl: &Client| -> Vec<BatchStatus> {
            cl.slots
                .iter()
                .map(|sl| {
                    let group = sl.group.map(|g| self.groups.get(g));
                    BatchStatus {
                        hint: group.map(|g| {
                            let end = g.hint.iter().position(|&b| b == 0).unwrap_or(g.hint.len());
                            String::from_utf8_lossy(&g.hint[..end]).into_owned()
                        }),
                        current_count: sl.current,
                        expire_idle: group.map(|_| sl.expire_idle),
                        expire_max: group.and(sl.expire_max),
                        waiting_archive: dump.then(|| {
                            group.map_or_else(Vec::new, |g| {
                                g.q.iter_kind(&self.reqs, Kind::Archive)
                                    .map(entry)
                                    .collect()
                            })
                        }),
                    }
                })
                .collect()
        };
        let clients = connected
            .into_iter()
            .chain(disconnected)
            .map(|cl| ClientStatus {
                client_id: cl.name.to_string(),
                state: cl.state,
                current: PerKind::from_array(cl.current),
                done: PerKind::from_array(cl.done),
                batches: batches(cl),
                disconnected_at: cl.disconnected_at.filter(|_| !cl.connected()),
                dump: dump.then(|| ClientDump {
                    active: cl.running.iter(&self.reqs).map(entry).collect(),
                    waiting: dump_set(cl.set),
                    cancels: cl.cancels.iter().map(DumpEntry::new).collect(),
                }),
            })
            .collect();
        Status {
            running: PerKind::from_array(self.running),
            pending: PerKind::from_array(self.pending),
            done: PerKind::from_array(self.done),
            pending_cancel: self.pending_cancel,
            done_cancel: self.done_cancel,
            duplicates: self.duplicates,
            clients_connected: self.connected,
            locked: self.lock,
            clients,
            queues: dump.then(|| dump_set(Some(GLOBAL))),
        }
    }

    /// Recounts everything and checks the engine's indexes against each other: every request
    /// is in exactly one place, counters equal recounts, links are consistent. Meant for
    /// tests and debugging (O(everything)); returns the first inconsistency found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut pending = [0u64; 3];
        let mut running = [0u64; 3];
        let mut per_client: FxHashMap<u32, [u32; 3]> = FxHashMap::default();
        let mut per_set: FxHashMap<u32, u64> = FxHashMap::default();
        let mut per_slot: FxHashMap<(u32, u8), u32> = FxHashMap::default();
        let mut live = 0usize;
        for (id, r) in self.reqs.iter().enumerate() {
            let Some(r) = r else { continue };
            live += 1;
            let id = id as u32;
            if self.index.get(r.r.key()) != Some(id) {
                return Err(format!("request {id} missing from the index"));
            }
            match r.loc {
                Loc::Detached => return Err(format!("request {id} is detached")),
                Loc::Queued { set, .. } => {
                    pending[r.kind.index()] += 1;
                    *per_set.entry(set).or_default() += 1;
                }
                Loc::Running { client } => {
                    running[r.kind.index()] += 1;
                    if self
                        .clients
                        .get(client as usize)
                        .and_then(|s| s.client.as_ref())
                        .is_none()
                    {
                        return Err(format!("request {id} runs on freed client {client}"));
                    }
                    per_client.entry(client).or_default()[r.kind.index()] += 1;
                    if r.slot != NO_SLOT {
                        *per_slot.entry((client, r.slot)).or_default() += 1;
                    }
                }
                Loc::Grouped { group, .. } => {
                    pending[r.kind.index()] += 1;
                    if r.kind != Kind::Archive {
                        return Err(format!("non-archive request {id} in a batch group"));
                    }
                    match self.groups.slab.get(group as usize) {
                        Some(Some(g))
                            if g.q.iter_kind(&self.reqs, Kind::Archive).any(|x| x == id) => {}
                        _ => return Err(format!("request {id} not in its group {group}")),
                    }
                }
            }
        }
        for (g, group) in self.groups.slab.iter().enumerate() {
            let Some(group) = group else { continue };
            let g = g as u32;
            let mut n = 0;
            for id in group.q.iter_kind(&self.reqs, Kind::Archive) {
                n += 1;
                if !matches!(self.rq(id).loc, Loc::Grouped { group, .. } if group == g) {
                    return Err(format!("group {g} lists request {id} located elsewhere"));
                }
            }
            if n != group.len() || n != group.q.parts.iter().map(|p| p.len).sum::<u64>() {
                return Err(format!("group {g} length mismatch"));
            }
            let listed = self.groups.unowned.contains(&(group.target, group.seq, g));
            match group.owner {
                None if group.len() == 0 => return Err(format!("empty unowned group {g} kept")),
                None if !listed => return Err(format!("unowned group {g} not claimable")),
                Some(_) if listed => return Err(format!("owned group {g} listed as unowned")),
                Some((c, i)) => {
                    let ok = self
                        .clients
                        .get(c as usize)
                        .and_then(|s| s.client.as_ref())
                        .and_then(|cl| cl.slots.get(i as usize))
                        .is_some_and(|sl| sl.group == Some(g));
                    if !ok {
                        return Err(format!("group {g} owner ({c}, {i}) does not hold it"));
                    }
                }
                None => {}
            }
        }
        if live != self.index.len() {
            return Err(format!(
                "index holds {} keys for {live} requests",
                self.index.len()
            ));
        }
        if pending != self.pending || running != self.running {
            return Err(format!(
                "counters pending {:?} running {:?}, recount {pending:?} {running:?}",
                self.pending, self.running
            ));
        }
        let mut connected = 0;
        let mut cancels = 0u64;
        let mut used_sets = vec![GLOBAL];
        for (idx, slot) in self.clients.iter().enumerate() {
            let Some(cl) = &slot.client else { continue };
            let idx = idx as u32;
            if cl.connected() {
                connected += 1;
            }
            cancels += cl.cancels.len() as u64;
            let recount = per_client.get(&idx).copied().unwrap_or_default();
            if recount != cl.current {
                return Err(format!(
                    "client {} current {:?}, recount {recount:?}",
                    cl.name, cl.current
                ));
            }
            let mut n = 0;
            for id in cl.running.iter(&self.reqs) {
                n += 1;
                if self.rq(id).loc != (Loc::Running { client: idx }) {
                    return Err(format!(
                        "client {} lists request {id} it does not own",
                        cl.name
                    ));
                }
            }
            if n != cl.running.len || n != recount.iter().sum::<u32>() {
                return Err(format!("client {} running list length mismatch", cl.name));
            }
            if (cl.state == ClientState::Waiting) != self.waiting.contains(&idx) {
                return Err(format!("client {} waiting list mismatch", cl.name));
            }
            if let Some(s) = cl.set {
                used_sets.push(s);
            }
            for (i, sl) in cl.slots.iter().enumerate() {
                let n = per_slot.get(&(idx, i as u8)).copied().unwrap_or(0);
                if n != sl.current {
                    return Err(format!(
                        "client {} slot {i} current {} recount {n}",
                        cl.name, sl.current
                    ));
                }
                if let Some(g) = sl.group
                    && self
                        .groups
                        .slab
                        .get(g as usize)
                        .and_then(|x| x.as_ref())
                        .and_then(|x| x.owner)
                        != Some((idx, i as u8))
                {
                    return Err(format!(
                        "client {} slot {i} holds group {g} it does not own",
                        cl.name
                    ));
                }
                if sl
                    .deadline
                    .is_some_and(|t| !self.batch_deadlines.contains(&(t, idx, i as u8)))
                {
                    return Err(format!("client {} slot {i} deadline not armed", cl.name));
                }
            }
        }
        for &s in &used_sets {
            let qs = &self.sets[s as usize];
            let mut n = 0u64;
            for k in Kind::ALL {
                let mut nk = 0;
                for id in qs.iter_kind(&self.reqs, k) {
                    nk += 1;
                    match self.rq(id).loc {
                        Loc::Queued { set, .. } if set == s => {}
                        other => {
                            return Err(format!("set {s} lists request {id} located at {other:?}"));
                        }
                    }
                }
                if nk != qs.len_by_kind[k.index()] {
                    return Err(format!("set {s} kind {k:?} length mismatch"));
                }
                n += nk;
            }
            if n != per_set.get(&s).copied().unwrap_or(0) {
                return Err(format!("set {s} holds {n}, requests pointing at it differ"));
            }
        }
        if per_set.keys().any(|s| !used_sets.contains(s)) {
            return Err("a request points at an unused queue set".into());
        }
        if connected != self.connected {
            return Err(format!("connected {} recount {connected}", self.connected));
        }
        if cancels != self.pending_cancel {
            return Err(format!(
                "pending_cancel {} recount {cancels}",
                self.pending_cancel
            ));
        }
        let mut free_slots = BTreeSet::new();
        for (idx, slot) in self.clients.iter().enumerate() {
            let Some(cl) = &slot.client else { continue };
            if matches!(cl.state, ClientState::Ready | ClientState::Waiting) {
                for (i, sl) in cl.slots.iter().enumerate() {
                    if sl.group.is_none() {
                        free_slots.insert((i as u8, Reverse(cl.order), idx as u32));
                    }
                }
            }
        }
        if free_slots != self.free_slots {
            return Err(format!(
                "free slot list {:?}, recount {free_slots:?}",
                self.free_slots
            ));
        }
        for (name, &c) in &self.by_name {
            match self.clients.get(c as usize).and_then(|s| s.client.as_ref()) {
                Some(cl) if &cl.name == name => {}
                _ => return Err(format!("by_name {name} points at a wrong record")),
            }
        }
        Ok(())
    }

    // ================================================================= internals

    fn grace_ns(&self) -> u64 {
        self.cfg.client_grace_ms.saturating_mul(1_000_000)
    }

    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn handle(&self, idx: u32) -> ClientId {
        ClientId {
            idx,
            generation: self.clients[idx as usize].generation,
        }
    }

    fn client(&self, h: ClientId) -> Result<u32, EngineError> {
        match self.clients.get(h.idx as usize) {
            Some(s) if s.generation == h.generation && s.client.is_some() => Ok(h.idx),
            _ => Err(EngineError::UnknownClient(h)),
        }
    }

    fn cl(&self, c: u32) -> &Client {
        self.clients[c as usize]
            .client
            .as_ref()
            .expect("live client index")
    }

    fn cl_mut(&mut self, c: u32) -> &mut Client {
        self.clients[c as usize]
            .client
            .as_mut()
            .expect("live client index")
    }

    fn rq(&self, id: u32) -> &Req {
        self.reqs[id as usize].as_ref().expect("live request index")
    }

    fn rq_mut(&mut self, id: u32) -> &mut Req {
        self.reqs[id as usize].as_mut().expect("live request index")
    }

    fn alloc_client(&mut self, client: Client) -> u32 {
        match self.free_clients.pop() {
            Some(idx) => {
                self.clients[idx as usize].client = Some(client);
                idx
            }
            None => {
                self.clients.push(ClientSlot {
                    generation: 0,
                    client: Some(client),
                });
                (self.clients.len() - 1) as u32
            }
        }
    }

    fn lookup_exact(&self, key: RequestKey) -> Option<u32> {
        self.index.get(key)
    }

    fn lookup(&self, key: RequestKey) -> Option<u32> {
        if let Some(id) = self.lookup_exact(key) {
            return Some(id);
        }
        // Old C clients send the cookie as a signed 32-bit int: zero- or sign-extended.
        let high = key.cookie >> 32;
        if high != 0 && high != 0xffff_ffff {
            return None;
        }
        let found = self.index.get_truncated(key);
        if found.is_none() {
            warn!(cookie = key.cookie, dfid = %key.dfid, "done: truncated cookie matches no single request");
        }
        found
    }

    fn insert_req(&mut self, r: Request, kind: Kind) -> u32 {
        let prio = self.policy.priority(&r, kind);
        let Share { key: share, weight } = self.policy.share(&r);
        let key = r.key();
        let req = Req {
            r,
            kind,
            loc: Loc::Detached,
            prio,
            share,
            weight: weight.max(1),
            slot: NO_SLOT,
            link: Link::default(),
        };
        let id = match self.free_reqs.pop() {
            Some(id) => {
                self.reqs[id as usize] = Some(req);
                id
            }
            None => {
                self.reqs.push(Some(req));
                (self.reqs.len() - 1) as u32
            }
        };
        self.index.insert(key, id);
        id
    }

    /// The data as received (before any consistent-hash rewrite).
    fn data_of(&self, id: u32) -> &[u8] {
        match self.orig_data.get(&id) {
            Some(d) => d,
            None => &self.rq(id).r.data,
        }
    }

    fn register(&mut self, req: Request, persist: bool, now: Time) -> Result<Intake, IntakeError> {
        let kind = Kind::of(req.action).ok_or(IntakeError::NotSchedulable(req.action))?;
        if self.lookup_exact(req.key()).is_some() {
            self.duplicates += 1;
            return Ok(Intake::Duplicate);
        }
        if persist {
            self.actions
                .push_back(Action::Persist(PersistOp::New(req.clone())));
        }
        let id = self.insert_req(req, kind);
        self.report_new(id);
        self.place(id, false, now);
        self.wake_for(id, now);
        Ok(Intake::New)
    }

    /// Offers one newly queued request to the waiting clients that could take it.
    ///
    /// Every waiting client was offered everything queued before, so only this request can
    /// change what they get: a request pinned to a host wakes that host only, a shared one
    /// wakes waiting clients (most recent first, cheap checks before a full dispatch) until
    /// one takes it. This keeps intake O(1) in the number of blocked waiting clients in the
    /// pinned cases instead of re-running every waiting client.
    fn wake_for(&mut self, id: u32, now: Time) {
        if self.lock != LockState::Unlocked || self.waiting.is_empty() {
            return;
        }
        let (loc, kind, aid) = {
            let r = self.rq(id);
            (r.loc, r.kind, r.r.archive_id)
        };
        let shared = match loc {
            Loc::Queued { set, .. } if set != GLOBAL => {
                self.dispatch(self.sets[set as usize].owner, now);
                return;
            }
            Loc::Grouped { group, .. } => {
                // Placement offered an unowned group every free slot (expired ones were
                // released first): only the owner, if any, can send it now.
                if let Some((c, _)) = self.groups.get(group).owner {
                    self.dispatch(c, now);
                }
                return;
            }
            Loc::Queued { .. } => true,
            Loc::Running { .. } | Loc::Detached => return,
        };
        debug_assert!(shared);
        let k = kind.index();
        let mut i = 0;
        while i < self.waiting.len() {
            let c = self.waiting[i];
            let cl = self.cl(c);
            let could = cl.accepts(aid) && cl.limits.max(kind).is_none_or(|m| cl.current[k] < m);
            if could {
                self.dispatch(c, now);
                if !matches!(self.rq(id).loc, Loc::Queued { .. } | Loc::Grouped { .. }) {
                    return;
                }
            }
            // A served client left the list; otherwise move on.
            if self.waiting.get(i) == Some(&c) {
                i += 1;
            }
        }
    }

    fn report_value(&self, id: u32) -> Option<String> {
        let needle = self.report_needle.as_ref()?;
        let v = parse_hint(self.data_of(id), needle)?;
        if !valid_report_value(v) {
            return None;
        }
        Some(String::from_utf8_lossy(v).into_owned())
    }

    fn report_new(&mut self, id: u32) {
        let Some(value) = self.report_value(id) else {
            return;
        };
        *self.report_refs.entry(value.as_str().into()).or_insert(0) += 1;
        let dfid = self.rq(id).r.dfid;
        self.actions.push_back(Action::Report(ReportEvent {
            value,
            line: ReportLine::New { dfid },
        }));
    }

    fn report(&mut self, id: u32, line: ReportLine) {
        if let Some(value) = self.report_value(id) {
            self.actions
                .push_back(Action::Report(ReportEvent { value, line }));
        }
    }

    fn free_req(&mut self, id: u32) {
        debug_assert_eq!(self.rq(id).loc, Loc::Detached);
        if let Some(value) = self.report_value(id)
            && let Some(n) = self.report_refs.get_mut(value.as_str())
        {
            *n -= 1;
            if *n == 0 {
                self.report_refs.remove(value.as_str());
                self.actions.push_back(Action::Report(ReportEvent {
                    value,
                    line: ReportLine::Idle,
                }));
            }
        }
        let req = self.reqs[id as usize].take().expect("live request");
        let key = req.r.key();
        self.index.remove(key);
        self.orig_data.remove(&id);
        self.locality.remove(&id);
        self.free_reqs.push(id);
        self.actions
            .push_back(Action::Persist(PersistOp::Finished { key }));
    }

    /// Takes a request out of its queue or client; `served` charges fair share.
    fn detach(&mut self, id: u32, served: bool, now: Time) {
        let (loc, kind) = {
            let r = self.rq(id);
            (r.loc, r.kind)
        };
        match loc {
            Loc::Detached => {}
            Loc::Queued { set, slot } => {
                self.sets[set as usize].remove(&mut self.reqs, slot, id, served, now);
                self.pending[kind.index()] -= 1;
            }
            Loc::Running { client } => {
                let slot = self.rq(id).slot;
                let cl = self.clients[client as usize]
                    .client
                    .as_mut()
                    .expect("owner");
                cl.running.remove(&mut self.reqs, id);
                cl.current[kind.index()] -= 1;
                if let Some(s) = cl.slots.get_mut(slot as usize) {
                    s.current -= 1;
                }
                self.running[kind.index()] -= 1;
            }
            Loc::Grouped { group, slot } => {
                self.groups
                    .remove(&mut self.reqs, group, slot, id, served, now);
                self.pending[kind.index()] -= 1;
                // An owned slot whose list emptied may expire on its idle deadline again.
                if let Some(g) = self.groups.slab[group as usize].as_ref()
                    && g.len() == 0
                    && let Some((c, i)) = g.owner
                {
                    let next = self.cl(c).slots[i as usize].next_deadline();
                    self.set_slot_deadline(c, i, next);
                }
            }
        }
        let r = self.rq_mut(id);
        r.loc = Loc::Detached;
        r.slot = NO_SLOT;
    }

    /// The queue partition of a request, its fair-share flow and weight.
    fn part_key(&self, id: u32) -> (PartKey, u64, u32) {
        let r = self.rq(id);
        (
            PartKey {
                kind: r.kind,
                prio: r.prio,
                archive_id: r.r.archive_id,
                flags: r.r.hal_flags,
            },
            r.share,
            r.weight,
        )
    }

    fn enqueue(&mut self, set: u32, id: u32, front: bool, now: Time) {
        let (key, share, weight) = self.part_key(id);
        let slot =
            self.sets[set as usize].push(&mut self.reqs, key, (share, weight), id, front, now);
        self.pending[key.kind.index()] += 1;
        self.rq_mut(id).loc = Loc::Queued { set, slot };
    }

    fn attach_running(&mut self, c: u32, id: u32) {
        let kind = self.rq(id).kind;
        let cl = self.clients[c as usize].client.as_mut().expect("client");
        cl.running.push_back(&mut self.reqs, id);
        cl.current[kind.index()] += 1;
        self.running[kind.index()] += 1;
        let client = cl.name.to_string();
        let key = {
            let r = self.rq_mut(id);
            r.loc = Loc::Running { client: c };
            r.r.key()
        };
        self.actions
            .push_back(Action::Persist(PersistOp::Assigned { key, client }));
    }

    fn client_set(&mut self, c: u32) -> u32 {
        if let Some(s) = self.cl(c).set {
            return s;
        }
        let s = match self.free_sets.pop() {
            Some(s) => s,
            None => {
                self.sets.push(QueueSet::default());
                (self.sets.len() - 1) as u32
            }
        };
        self.cl_mut(c).set = Some(s);
        self.sets[s as usize].owner = c;
        s
    }

    /// The record for a host id: whatever its state, else a new disconnected placeholder.
    fn client_for_host(&mut self, name: &str, now: Time) -> u32 {
        if let Some(&c) = self.by_name.get(name) {
            return c;
        }
        let order = self.next_order();
        let c = self.alloc_client(Client {
            name: name.into(),
            id_set: false,
            state: ClientState::Disconnected,
            disconnected_at: Some(now),
            archives: None,
            limits: RecvLimits::default(),
            current: [0; 3],
            done: [0; 3],
            running: Fifo::default(),
            set: None,
            cancels: VecDeque::new(),
            slots: vec![BatchSlot::default(); self.slot_count()],
            order,
        });
        self.by_name.insert(name.into(), c);
        self.expiries.insert((now.add_nanos(self.grace_ns()), c));
        debug!(host = name, "placeholder client created");
        c
    }

    /// Placement (§4.8): host mapping for archives, restore locality, else the global queue.
    fn place(&mut self, id: u32, front: bool, now: Time) {
        let kind = self.rq(id).kind;
        // The policy always sees the original data (upstream re-hashed rewritten data).
        if let Some(orig) = self.orig_data.remove(&id) {
            self.rq_mut(id).r.data = orig;
        }
        let placement = {
            let by_name = &self.by_name;
            let clients = &self.clients;
            let view = |name: &str| {
                by_name
                    .get(name)
                    .and_then(|&c| clients[c as usize].client.as_ref())
                    .map(|cl| cl.state)
            };
            let r = &self.reqs[id as usize].as_ref().expect("live request").r;
            self.policy.place(r, kind, &view)
        };
        let target = match placement {
            Placement::Host { host, data } => {
                if let Some(d) = data {
                    let r = self.rq_mut(id);
                    let orig = std::mem::replace(&mut r.r.data, d);
                    self.orig_data.insert(id, orig);
                }
                Some(self.client_for_host(&host, now))
            }
            Placement::Anywhere if kind == Kind::Restore => self.locate_restore(id, now),
            Placement::Anywhere => None,
        };
        let set = match target {
            Some(c) => {
                if self.report_needle.is_some() {
                    let dfid = self.rq(id).r.dfid;
                    let client = self.cl(c).name.to_string();
                    self.report(id, ReportLine::Assign { dfid, client });
                }
                self.client_set(c)
            }
            None => GLOBAL,
        };
        if kind == Kind::Archive && self.slot_count() > 0 {
            self.enqueue_grouped(set, id, front, now);
        } else {
            self.enqueue(set, id, front, now);
        }
    }

    fn slot_count(&self) -> usize {
        let b = &self.cfg.batching;
        if b.idle_secs == 0 {
            0
        } else {
            b.slots_per_client.min(u32::from(NO_SLOT) - 1) as usize
        }
    }

    /// Batching (§4.8 steps 1 and 3): the archive joins the group of its hint in its target
    /// queue. A group a slot owns keeps that slot (its idle deadline is pushed back, or the
    /// slice restarts if it had expired); an unowned group reserves a free slot at once, as
    /// upstream does at placement: on the host for a host queue, else on the newest
    /// handshaken connected client (lowest slot index first) that accepts its archive id.
    fn enqueue_grouped(&mut self, set: u32, id: u32, front: bool, now: Time) {
        let (key, share, weight) = self.part_key(id);
        let hint = &self.reqs[id as usize]
            .as_ref()
            .expect("live request")
            .r
            .data;
        let g = self
            .groups
            .get_or_create(set, key.archive_id, key.flags, hint);
        let slot = self
            .groups
            .push(&mut self.reqs, g, key, (share, weight), id, front, now);
        self.pending[Kind::Archive.index()] += 1;
        self.rq_mut(id).loc = Loc::Grouped { group: g, slot };
        match self.groups.get(g).owner {
            Some((c, i)) => {
                let slot = &self.cl(c).slots[i as usize];
                if slot.expired(false, now) {
                    self.start_slice(c, i, now);
                } else {
                    self.touch_slot(c, i, now);
                }
            }
            None => self.reserve_slot(g, now),
        }
    }

    /// Gives unowned group `g` a slot if one is free (placement-time reservation).
    fn reserve_slot(&mut self, g: u32, now: Time) {
        // Slots whose slice ended are released first, so they count as free.
        self.expire_slots(now);
        let (target, aid) = {
            let group = self.groups.get(g);
            (group.target, group.archive_id)
        };
        let found = if target == GLOBAL {
            self.free_slots
                .iter()
                .map(|&(i, _, c)| (c, i))
                .find(|&(c, _)| self.cl(c).accepts(aid))
        } else {
            // A host's queue: that host's first free slot, whatever its state (as upstream).
            let c = self.sets[target as usize].owner;
            self.cl(c)
                .slots
                .iter()
                .position(|sl| sl.group.is_none())
                .map(|i| (c, i as u8))
        };
        if let Some((c, i)) = found {
            self.claim_slot(c, i, g, now);
        }
    }

    /// Slot `i` of client `c` (free) takes group `g` for a new slice.
    fn claim_slot(&mut self, c: u32, i: u8, g: u32, now: Time) {
        debug_assert!(self.cl(c).slots[i as usize].group.is_none());
        self.groups.claim(g, (c, i));
        let order = self.cl(c).order;
        self.free_slots.remove(&(i, Reverse(order), c));
        self.cl_mut(c).slots[i as usize].group = Some(g);
        self.start_slice(c, i, now);
    }

    /// (Re)starts the time slice of an owned slot.
    fn start_slice(&mut self, c: u32, i: u8, now: Time) {
        let b = self.cfg.batching;
        self.cl_mut(c).slots[i as usize].expire_max =
            (b.max_secs > 0).then(|| now.add_nanos(b.max_secs.saturating_mul(1_000_000_000)));
        self.touch_slot(c, i, now);
    }

    /// Whether client `c`'s free slots are offered to new groups (handshaken and connected).
    fn lists_slots(&self, c: u32) -> bool {
        matches!(self.cl(c).state, ClientState::Ready | ClientState::Waiting)
    }

    /// Takes client `c`'s slots out of the free-slot list (before its state or order changes).
    fn unlist_slots(&mut self, c: u32) {
        let order = self.cl(c).order;
        for i in 0..self.cl(c).slots.len() as u8 {
            self.free_slots.remove(&(i, Reverse(order), c));
        }
    }

    /// Puts client `c`'s free slots in the free-slot list if it may receive new groups.
    fn list_slots(&mut self, c: u32) {
        if !self.lists_slots(c) {
            return;
        }
        let cl = self.clients[c as usize].client.as_ref().expect("client");
        for (i, sl) in cl.slots.iter().enumerate() {
            if sl.group.is_none() {
                self.free_slots.insert((i as u8, Reverse(cl.order), c));
            }
        }
    }

    /// Releases every slot whose slice ended by `now` (batch deadlines that passed).
    fn expire_slots(&mut self, now: Time) {
        while let Some(&(t, c, i)) = self.batch_deadlines.first() {
            if t > now {
                break;
            }
            self.batch_deadlines.pop_first();
            let slot = &mut self.cl_mut(c).slots[i as usize];
            slot.deadline = None;
            let Some(g) = slot.group else { continue };
            let empty = self.groups.get(g).len() == 0;
            let slot = &self.cl(c).slots[i as usize];
            if slot.expired(empty, now) {
                // Released at once (upstream waited for the owner's next recv): other
                // movers may claim the leftovers, which keep their host routing and age.
                self.release_slot(c, i);
                self.dirty = true;
            } else {
                // The idle deadline passed while archives still wait: only the max counts now.
                let max = slot.expire_max;
                self.set_slot_deadline(c, i, max);
            }
        }
    }

    /// Pushes a slot's idle deadline to now + idle.
    fn touch_slot(&mut self, c: u32, i: u8, now: Time) {
        let idle = now.add_nanos(self.cfg.batching.idle_secs.saturating_mul(1_000_000_000));
        self.cl_mut(c).slots[i as usize].expire_idle = idle;
        let next = self.cl(c).slots[i as usize].next_deadline();
        self.set_slot_deadline(c, i, next);
    }

    fn set_slot_deadline(&mut self, c: u32, i: u8, when: Option<Time>) {
        let slot = &mut self.clients[c as usize]
            .client
            .as_mut()
            .expect("client")
            .slots[i as usize];
        if slot.deadline == when {
            return;
        }
        if let Some(old) = slot.deadline.take() {
            self.batch_deadlines.remove(&(old, c, i));
        }
        if let Some(t) = when {
            slot.deadline = Some(t);
            self.batch_deadlines.insert((t, c, i));
        }
    }

    fn release_slot(&mut self, c: u32, i: u8) {
        self.set_slot_deadline(c, i, None);
        let slot = &mut self.cl_mut(c).slots[i as usize];
        if let Some(g) = slot.group.take() {
            slot.expire_max = None;
            slot.expire_idle = Time(0);
            self.groups.release(g);
            if self.lists_slots(c) {
                let order = self.cl(c).order;
                self.free_slots.insert((i, Reverse(order), c));
            }
        }
    }

    /// Batch refill (§4.9 step 1) through the unowned-group index: each free or expired slot
    /// of `c` claims the oldest group it can run, from its own queue first, then the global one.
    fn refill_slots(&mut self, c: u32, now: Time) {
        let cl = self.cl(c);
        let k = Kind::Archive.index();
        if cl.limits.max_archive.is_some_and(|m| cl.current[k] >= m) {
            // It could not send any of it: do not hold a group others could run.
            return;
        }
        let own = cl.set;
        for i in 0..cl.slots.len() as u8 {
            let slot = &self.cl(c).slots[i as usize];
            if let Some(g) = slot.group {
                let empty = self.groups.get(g).len() == 0;
                if !slot.expired(empty, now) {
                    continue;
                }
                self.release_slot(c, i);
            }
            let cl = self.cl(c);
            let accept = |a: u32| cl.accepts(a);
            let found = own
                .and_then(|s| self.groups.oldest_unowned(s, accept))
                .or_else(|| self.groups.oldest_unowned(GLOBAL, accept));
            let Some(g) = found else { break };
            self.claim_slot(c, i, g, now);
        }
    }

    fn locate_restore(&mut self, id: u32, now: Time) -> Option<u32> {
        self.locator.as_ref()?;
        let host = match self.cached_locality(id, now) {
            Some(host) => host,
            None => {
                let focus = self.restore_focus();
                self.relocate(id, focus.as_deref(), now)
            }
        }?;
        Some(self.client_for_host(&host, now))
    }

    /// The locator's cached answer for restore `id` (`Some(None)`: anywhere), if it is still
    /// fresh: younger than the locator's TTL and no client connected or left since.
    fn cached_locality(&self, id: u32, now: Time) -> Option<Option<Box<str>>> {
        let ttl = self
            .locator
            .as_ref()?
            .cache_ttl_ms()
            .saturating_mul(1_000_000);
        let l = self.locality.get(&id)?;
        (l.epoch == self.loc_epoch && now.since(l.at) < ttl).then(|| l.host.clone())
    }

    /// Asks the locator where restore `id` runs and caches the answer (a failure is not
    /// cached: it parks the request on the [`LOCATE_FAILED_HOST`] placeholder).
    fn relocate(&mut self, id: u32, focus: Option<&str>, now: Time) -> Option<Box<str>> {
        let mut locator = self.locator.take()?;
        let ans = locator.locate(&self.rq(id).r, focus);
        self.locator = Some(locator);
        let host: Option<Box<str>> = match ans {
            Locate::Anywhere => None,
            Locate::Host(h) => Some(h.into()),
            Locate::Failed => {
                self.locality.remove(&id);
                return Some(LOCATE_FAILED_HOST.into());
            }
        };
        self.locality.insert(
            id,
            Located {
                host: host.clone(),
                epoch: self.loc_epoch,
                at: now,
            },
        );
        host
    }

    /// Upstream's dispatch-time locality check (§4.12): may restore `id` go to client `c`?
    /// The cached answer is used while fresh, else the locator is asked again with `c` as the
    /// focus. A restore that belongs elsewhere moves (keeping its turn) to the queue of the
    /// host it names, whatever that host's state, as at placement.
    fn restore_goes_to(&mut self, id: u32, c: u32, now: Time) -> bool {
        if self.locator.is_none() {
            return true;
        }
        let host = match self.cached_locality(id, now) {
            Some(host) => host,
            None => {
                let focus = self.cl(c).name.clone();
                self.relocate(id, Some(&focus), now)
            }
        };
        let Some(host) = host.filter(|h| *h != self.cl(c).name) else {
            return true;
        };
        debug!(host = %host, client = %self.cl(c).name, "restore belongs to another host now");
        self.detach(id, false, now);
        let target = self.client_for_host(&host, now);
        if self.report_needle.is_some() {
            let dfid = self.rq(id).r.dfid;
            let client = self.cl(target).name.to_string();
            self.report(id, ReportLine::Assign { dfid, client });
        }
        let set = self.client_set(target);
        self.enqueue(set, id, true, now);
        // That host may be waiting for work.
        self.dirty = true;
        false
    }

    fn restore_focus(&mut self) -> Option<String> {
        let min = self
            .clients
            .iter()
            .filter_map(|s| s.client.as_ref())
            .filter(|c| c.connected() && c.state != ClientState::Init)
            .map(|c| c.current[Kind::Restore.index()])
            .min()?;
        let ties: Vec<&Client> = self
            .clients
            .iter()
            .filter_map(|s| s.client.as_ref())
            .filter(|c| {
                c.connected()
                    && c.state != ClientState::Init
                    && c.current[Kind::Restore.index()] == min
            })
            .collect();
        let pick = self.rng.below(ties.len());
        Some(ties[pick].name.to_string())
    }

    fn cancel_queued(&mut self, id: u32, cancel: Request, now: Time) {
        self.detach(id, false, now);
        self.free_req(id);
        self.done_cancel += 1;
        self.actions.push_back(Action::ReportCancelled { cancel });
        // It may have been what blocked a waiting client (too big for its budget).
        self.dirty = true;
    }

    fn unwait(&mut self, c: u32) {
        if let Some(pos) = self.waiting.iter().position(|&w| w == c) {
            self.waiting.remove(pos);
        }
    }

    fn check_quit(&mut self) {
        if self.lock == LockState::LockAndQuit
            && self.running.iter().all(|&n| n == 0)
            && !self.shutdown_sent
        {
            self.shutdown_sent = true;
            self.actions.push_back(Action::Shutdown);
        }
    }

    /// Moves a disconnected record's work to the new connection `c` (fixes upstream's
    /// dangling owners and inexact counters: every moved request is re-owned and counted).
    fn takeover(&mut self, old: u32, c: u32) {
        let running: Vec<u32> = self.cl(old).running.iter(&self.reqs).collect();
        for id in running {
            let kind = self.rq(id).kind;
            let o = self.clients[old as usize].client.as_mut().expect("client");
            o.running.remove(&mut self.reqs, id);
            o.current[kind.index()] -= 1;
            let n = self.clients[c as usize].client.as_mut().expect("client");
            n.running.push_back(&mut self.reqs, id);
            n.current[kind.index()] += 1;
            self.rq_mut(id).loc = Loc::Running { client: c };
        }
        // Slots (hint, deadlines, running counts) move with their groups: counts stay exact.
        for i in 0..self.cl(old).slots.len() as u8 {
            let deadline = self.cl(old).slots[i as usize].deadline;
            self.set_slot_deadline(old, i, None);
            if let Some(g) = self.cl(old).slots[i as usize].group {
                self.groups.get_mut(g).owner = Some((c, i));
            }
            let slot = std::mem::take(&mut self.cl_mut(old).slots[i as usize]);
            if let Some(s) = self.cl_mut(c).slots.get_mut(i as usize) {
                *s = slot;
            }
            self.set_slot_deadline(c, i, deadline);
        }
        let o = self.cl_mut(old);
        let set = o.set.take();
        let cancels = std::mem::take(&mut o.cancels);
        let done = o.done;
        let n = self.cl_mut(c);
        debug_assert!(n.set.is_none());
        n.set = set;
        n.cancels = cancels;
        for (d, o) in n.done.iter_mut().zip(done) {
            *d += o;
        }
        if let Some(s) = set {
            self.sets[s as usize].owner = c;
        }
        self.expiries.retain(|&(_, e)| e != old);
        self.release_client_slot(old);
    }

    fn release_client_slot(&mut self, c: u32) {
        let slot = &mut self.clients[c as usize];
        slot.client = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_clients.push(c);
    }

    /// Reconciles the running list a client reports in `ehlo` with what the engine thinks it runs.
    fn reconcile(&mut self, c: u32, list: Vec<Request>, now: Time) {
        let mut aside: FxHashSet<u32> = self.cl(c).running.iter(&self.reqs).collect();
        for item in list {
            let Some(kind) = Kind::of(item.action) else {
                warn!(action = ?item.action, "ehlo: ignoring running item that cannot be scheduled");
                continue;
            };
            match self.lookup_exact(item.key()) {
                Some(id) => {
                    if aside.remove(&id) {
                        continue;
                    }
                    self.detach(id, false, now);
                    self.attach_running(c, id);
                }
                None => {
                    self.actions
                        .push_back(Action::Persist(PersistOp::New(item.clone())));
                    let id = self.insert_req(item, kind);
                    self.report_new(id);
                    self.attach_running(c, id);
                }
            }
        }
        let mut aside: Vec<u32> = aside.into_iter().collect();
        aside.sort_unstable();
        for id in aside {
            self.detach(id, false, now);
            let key = self.rq(id).r.key();
            self.actions
                .push_back(Action::Persist(PersistOp::Unassigned { key }));
            self.place(id, true, now);
        }
    }

    /// Frees a client record: its running requests go back to the queues ahead of others,
    /// its own queue is re-placed, then pending cancels are resolved.
    fn free_client(&mut self, c: u32, now: Time) {
        let name = self.cl(c).name.clone();
        if self.by_name.get(&name) == Some(&c) {
            self.by_name.remove(&name);
        }
        self.unwait(c);
        self.expiries.retain(|&(_, e)| e != c);
        if self.cl(c).connected() {
            self.connected -= 1;
            self.loc_epoch += 1;
        }
        let running: Vec<u32> = self.cl(c).running.iter(&self.reqs).collect();
        for &id in &running {
            self.detach(id, false, now);
            let key = self.rq(id).r.key();
            self.actions
                .push_back(Action::Persist(PersistOp::Unassigned { key }));
        }
        for i in 0..self.cl(c).slots.len() as u8 {
            self.release_slot(c, i);
        }
        self.unlist_slots(c);
        let mut queued: Vec<u32> = Vec::new();
        if let Some(s) = self.cl_mut(c).set.take() {
            for k in Kind::ALL {
                queued.extend(self.sets[s as usize].iter_kind(&self.reqs, k));
            }
            for g in self.groups.of_target(s) {
                queued.extend(self.groups.get(g).q.iter_kind(&self.reqs, Kind::Archive));
            }
            for &id in &queued {
                self.detach(id, false, now);
            }
            self.sets[s as usize] = QueueSet::default();
            self.free_sets.push(s);
        }
        let cancels = std::mem::take(&mut self.cl_mut(c).cancels);
        self.release_client_slot(c);
        // Requests that were running keep their turn: they go back to the front.
        for &id in running.iter().rev() {
            self.locality.remove(&id);
            self.place(id, true, now);
        }
        for id in queued {
            self.locality.remove(&id);
            self.place(id, false, now);
        }
        for cancel in cancels {
            self.pending_cancel -= 1;
            match self.lookup_exact(cancel.key()) {
                Some(id) if !matches!(self.rq(id).loc, Loc::Running { .. }) => {
                    self.cancel_queued(id, cancel, now);
                }
                _ => self.done_cancel += 1,
            }
        }
        self.dirty = true;
    }

    /// Serves every waiting client if something changed.
    fn flush(&mut self, now: Time) {
        if self.lock != LockState::Unlocked {
            return;
        }
        // Re-runs only while a delivery may have unblocked someone: each round serves at
        // least one waiting client, so this ends.
        while self.dirty {
            self.dirty = false;
            let waiting: Vec<u32> = self.waiting.iter().copied().collect();
            for c in waiting {
                self.dispatch(c, now);
            }
        }
    }

    /// Answers client `c`'s pending `recv` if anything can go to it (§4.9, without the
    /// 101-item scan cap: selection never scans queues).
    fn dispatch(&mut self, c: u32, now: Time) {
        if self.lock != LockState::Unlocked || self.cl(c).state != ClientState::Waiting {
            return;
        }
        let limits = self.cl(c).limits;
        let max_bytes = u64::from(limits.max_bytes);
        let margin = u64::from(MIN_RECV_BYTES);
        let mut bytes = 0u64;
        let mut fixed: Option<(u32, u64)> = None;
        let mut items: Vec<Request> = Vec::new();

        // Cancels first: they were already counted as running on this client.
        let mut kept = VecDeque::new();
        let mut cancels = std::mem::take(&mut self.cl_mut(c).cancels);
        while let Some(cn) = cancels.pop_front() {
            let cost = cn.budget_cost();
            let fits = fixed.is_none_or(|f| f == (cn.archive_id, cn.hal_flags))
                && bytes + cost <= max_bytes
                && bytes + margin <= max_bytes;
            if fits {
                fixed = Some((cn.archive_id, cn.hal_flags));
                bytes += cost;
                self.pending_cancel -= 1;
                self.done_cancel += 1;
                items.push(cn);
            } else {
                kept.push_back(cn);
            }
        }
        self.cl_mut(c).cancels = kept;

        let connected = u64::from(self.connected.max(1));
        let quota: [u64; 3] = std::array::from_fn(|k| {
            if self.cfg.spread {
                self.pending[k] / connected + 1
            } else {
                u64::MAX
            }
        });
        let mut taken = [0u64; 3];
        if self.slot_count() > 0 {
            self.refill_slots(c, now);
        }
        let own = self.cl(c).set;
        // Per-slot cap: max_archive spread over the slots (rounded up, never 0 for unlimited).
        let nslots = self.slot_count() as u32;
        let slot_cap = limits.max_archive.map(|m| m.div_ceil(nslots.max(1)));
        let aging = self.cfg.priorities.aging_ms.saturating_mul(1_000_000);
        // Higher is served first: priority (plus age when aging is on), then age, then the
        // client's own queue and slots before the global queue.
        let score = |prio: i32, since: Time, own: bool| {
            let age = now.since(since);
            if aging > 0 {
                (
                    i128::from(prio) * i128::from(aging) + i128::from(age),
                    0,
                    own,
                )
            } else {
                (i128::from(prio), age, own)
            }
        };
        // Partitions whose head is too big for what is left of this reply.
        let mut excluded: Vec<(Src, u32)> = Vec::new();
        while bytes + margin <= max_bytes {
            let mut best: Option<((i128, u64, bool), Src, u32)> = None;
            let cl = self.cl(c);
            for set in own.into_iter().chain(std::iter::once(GLOBAL)) {
                let qs = &self.sets[set as usize];
                for &p in &qs.active {
                    let part = &qs.parts[p as usize];
                    let k = part.key.kind.index();
                    if taken[k] >= quota[k]
                        || limits
                            .max(part.key.kind)
                            .is_some_and(|m| cl.current[k] >= m)
                        || !cl.accepts(part.key.archive_id)
                        || fixed.is_some_and(|f| f != (part.key.archive_id, part.key.flags))
                        || excluded.contains(&(Src::Set(set), p))
                    {
                        continue;
                    }
                    let sc = score(part.key.prio, part.since, set != GLOBAL);
                    if best.is_none_or(|(b, _, _)| sc > b) {
                        best = Some((sc, Src::Set(set), p));
                    }
                }
            }
            // Batch slots compete as archive sources; inside a slot's group, archives are
            // partitioned by priority and fair-share flow like any queue.
            let k = Kind::Archive.index();
            let archive_ok =
                taken[k] < quota[k] && limits.max_archive.is_none_or(|m| cl.current[k] < m);
            for (i, slot) in cl.slots.iter().enumerate().filter(|_| archive_ok) {
                let Some(g) = slot.group else { continue };
                let group = self.groups.get(g);
                if slot_cap.is_some_and(|cap| slot.current >= cap)
                    || !cl.accepts(group.archive_id)
                    || fixed.is_some_and(|f| f != (group.archive_id, group.flags))
                {
                    continue;
                }
                let src = Src::Slot(i as u8);
                for &p in &group.q.active {
                    if excluded.contains(&(src, p)) {
                        continue;
                    }
                    let sc = score(
                        group.q.parts[p as usize].key.prio,
                        group.q.parts[p as usize].since,
                        true,
                    );
                    if best.is_none_or(|(b, _, _)| sc > b) {
                        best = Some((sc, src, p));
                    }
                }
            }
            let Some((_, src, p)) = best else { break };
            let qs = match src {
                Src::Set(set) => &self.sets[set as usize],
                Src::Slot(i) => {
                    let g = self.cl(c).slots[i as usize].group.expect("slot group");
                    &self.groups.get(g).q
                }
            };
            let (id, _) = qs.parts[p as usize]
                .peek()
                .expect("active partition is non-empty");
            let (cost, kind, aid, flags) = {
                let r = self.rq(id);
                // The data is a separate allocation, cloned at the end of this step: start
                // loading it now, behind the bookkeeping.
                prefetch(r.r.data.as_ptr());
                (r.r.budget_cost(), r.kind, r.r.archive_id, r.r.hal_flags)
            };
            if kind == Kind::Restore && !self.restore_goes_to(id, c, now) {
                continue;
            }
            // An item larger than the client's whole budget goes alone in an otherwise empty
            // reply: waiting for a client with a bigger budget could take forever.
            let alone = bytes + cost > max_bytes;
            if alone && !items.is_empty() {
                excluded.push((src, p));
                continue;
            }
            fixed = Some((aid, flags));
            bytes += cost;
            taken[kind.index()] += 1;
            self.detach(id, true, now);
            self.attach_running(c, id);
            if let Src::Slot(i) = src {
                self.rq_mut(id).slot = i;
                self.cl_mut(c).slots[i as usize].current += 1;
                self.touch_slot(c, i, now);
            }
            if self.report_needle.is_some() {
                let dfid = self.rq(id).r.dfid;
                let client = self.cl(c).name.to_string();
                self.report(id, ReportLine::Sent { dfid, client });
            }
            items.push(self.rq(id).r.clone());
            if alone {
                debug!(
                    cost,
                    max_bytes, "item larger than the client's budget sent alone"
                );
                break;
            }
        }

        let Some((archive_id, hal_flags)) = fixed else {
            return;
        };
        debug_assert!(!items.is_empty());
        self.cl_mut(c).state = ClientState::Ready;
        self.unwait(c);
        let client = self.handle(c);
        self.actions.push_back(Action::Deliver(Delivery {
            client,
            archive_id,
            hal_flags,
            items,
        }));
    }
}
