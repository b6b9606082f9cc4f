//! One MDT's HSM coordinator: request log, admission, agents, dispatch, progress.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction, LuFid};
use tracing::{debug, trace};

use super::Errno;
use super::tunables::{Policy, Tunables};
use super::types::*;
use crate::hash::{FastMap, FastSet};

/// First sequence of MDT0000's FIDs; MDT n uses `FID_SEQ_BASE + n * FID_SEQ_STRIDE`, the way a
/// real DNE filesystem hands out `0x200000400` to MDT0000 and `0x240000400` to MDT0001.
pub const FID_SEQ_BASE: u64 = 0x2_0000_0400;
/// Sequence distance between two MDTs' FID ranges.
pub const FID_SEQ_STRIDE: u64 = 0x4000_0000;

/// True for FIDs the MDT accepts in a request (`fid_is_sane`: normal or IGIF FIDs).
pub fn fid_is_sane(fid: LuFid) -> bool {
    (fid.seq >= 0x2_0000_0000 && fid.ver == 0) || (12..=0xffff_ffff).contains(&fid.seq)
}

#[derive(Clone, Debug)]
struct Active {
    /// Insertion order, for the listing.
    order: u64,
    /// Key of the request's own record.
    key: u64,
    archive_id: u32,
    flags: u64,
    item: HsmActionItem,
    agent: Arc<str>,
    canceled: bool,
    /// Key of the CANCEL record linked to this request.
    cancel_key: Option<u64>,
    last: u64,
    /// Disjoint inclusive ranges covered by progress, sorted.
    done: Vec<(u64, u64)>,
}

impl Active {
    fn merge(&mut self, first: u64, last: u64) {
        let (mut lo, mut hi) = (first, last);
        let mut out = Vec::with_capacity(self.done.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.done {
            if b.saturating_add(1) < lo {
                out.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        out.sort_unstable();
        self.done = out;
    }

    fn done_bytes(&self) -> u64 {
        self.done.iter().fold(0u64, |acc, (a, b)| {
            acc.saturating_add((b - a).saturating_add(1))
        })
    }
}

/// The simulated HSM coordinator of one MDT.
///
/// Sans-IO: every call that depends on time takes `now` (epoch seconds, non-decreasing);
/// nothing reads a clock or touches a file. Outputs (HALs for agents) are queued and pulled
/// with [`Mdt::poll_dispatch`]. Behaviour follows Lustre 2.17+ (see the crate docs).
///
/// Method kinds: getters (`state`, `records`, `agents`, `active_requests`, `file`, ...),
/// inputs (`request`, `register`, `unregister`, `progress`, `control`, file-side calls; lctl
/// parameters go through [`Cluster`](crate::mdt::Cluster)), the timer (`tick`, to call about once a second and whenever
/// [`Mdt::wants_scan`] is true), and the output [`Mdt::poll_dispatch`].
#[derive(Debug)]
pub struct Mdt {
    index: u32,
    name: String,
    fsname: Arc<str>,
    state: CdtState,
    tunables: Tunables,
    log: BTreeMap<u64, Record>,
    next_key: u64,
    next_llog: LlogIndex,
    /// Cookie → key of the non-CANCEL record carrying it.
    by_cookie: FastMap<u64, u64>,
    waiting: BTreeSet<u64>,
    /// The WAITING records that are RESTOREs (for the queue-jump rule).
    waiting_restores: BTreeSet<u64>,
    /// Keys of STARTED records (housekeeping checks only these for timeouts).
    started: BTreeSet<u64>,
    /// `(change time, key)` of records that became final, in time order (grace purge).
    finished: VecDeque<(u64, u64)>,
    active: FastMap<u64, Active>,
    active_order: u64,
    /// Active items per action: archive, restore, remove.
    counts: [u64; 3],
    agents: Vec<AgentInfo>,
    files: FastMap<LuFid, FileAttrs>,
    restore_locks: FastSet<LuFid>,
    cookie: u64,
    last_housekeeping: u64,
    /// Latest `now` passed in: the time of changelog records made by calls without one.
    clock: u64,
    wake: bool,
    next_oid: u32,
    outbox: VecDeque<Dispatch>,
    /// CL_HSM records not yet cleared by every changelog user.
    changelog: VecDeque<ChangelogRecord>,
    /// Number the next changelog record gets.
    changelog_next: u64,
    changelog_users: Vec<ChangelogUser>,
    changelog_next_user: u32,
    /// A `purge` waiting for the thread to be idle, with the state to go back to.
    purge_wait: Option<CdtState>,
}

fn count_slot(a: HsmAction) -> Option<usize> {
    match a {
        HsmAction::Archive => Some(0),
        HsmAction::Restore => Some(1),
        HsmAction::Remove => Some(2),
        _ => None,
    }
}

fn event_of(action: HsmAction) -> HsmEvent {
    match action {
        HsmAction::Archive => HsmEvent::Archive,
        HsmAction::Restore => HsmEvent::Restore,
        HsmAction::Remove => HsmEvent::Remove,
        HsmAction::Cancel | HsmAction::None => HsmEvent::Cancel,
    }
}

fn needed(action: HsmAction, s: HsmStates) -> bool {
    match action {
        HsmAction::Archive => s.contains(HsmStates::DIRTY) || !s.contains(HsmStates::ARCHIVED),
        HsmAction::Restore => s.intersects(HsmStates::RELEASED | HsmStates::DIRTY),
        HsmAction::Remove => s.intersects(HsmStates::ARCHIVED | HsmStates::EXISTS),
        _ => true,
    }
}

fn compatible(action: HsmAction, f: &FileAttrs, archive_id: u32) -> bool {
    let s = f.states;
    match action {
        HsmAction::Archive => {
            let other_archive = s.contains(HsmStates::EXISTS)
                && archive_id != 0
                && f.archive_id != 0
                && f.archive_id != archive_id;
            let stale = s.contains(HsmStates::DIRTY) || !s.contains(HsmStates::ARCHIVED);
            !s.contains(HsmStates::NOARCHIVE) && stale && !other_archive
        }
        HsmAction::Restore => {
            !s.contains(HsmStates::DIRTY)
                && s.contains(HsmStates::RELEASED)
                && s.contains(HsmStates::ARCHIVED)
                && !s.contains(HsmStates::LOST)
        }
        HsmAction::Remove => {
            !s.contains(HsmStates::RELEASED)
                && s.intersects(HsmStates::ARCHIVED | HsmStates::EXISTS)
        }
        HsmAction::Cancel => true,
        HsmAction::None => false,
    }
}

struct Batch {
    archive_id: u32,
    flags: u64,
    keys: Vec<u64>,
    size: usize,
}

impl Mdt {
    /// A new MDT `index` of filesystem `fsname`, coordinator stopped, empty log.
    pub fn new(fsname: &str, index: u32) -> Self {
        Mdt {
            index,
            name: format!("{fsname}-MDT{index:04x}"),
            fsname: Arc::from(fsname),
            state: CdtState::Stopped,
            tunables: Tunables::default(),
            log: BTreeMap::new(),
            next_key: 0,
            next_llog: LlogIndex {
                catalog: 1,
                index: 1,
            },
            by_cookie: FastMap::default(),
            waiting: BTreeSet::new(),
            waiting_restores: BTreeSet::new(),
            started: BTreeSet::new(),
            finished: VecDeque::new(),
            active: FastMap::default(),
            active_order: 0,
            counts: [0; 3],
            agents: Vec::new(),
            files: FastMap::default(),
            restore_locks: FastSet::default(),
            cookie: 0,
            last_housekeeping: 0,
            clock: 0,
            wake: false,
            next_oid: 1,
            outbox: VecDeque::new(),
            changelog: VecDeque::new(),
            changelog_next: 1,
            changelog_users: Vec::new(),
            changelog_next_user: 1,
            purge_wait: None,
        }
    }

    // ---------------------------------------------------------------- getters

    /// MDT index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Target name, `<fsname>-MDT0000`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Filesystem name.
    pub fn fsname(&self) -> &str {
        &self.fsname
    }

    /// Coordinator state.
    pub fn state(&self) -> CdtState {
        self.state
    }

    /// The tunables.
    pub fn tunables(&self) -> &Tunables {
        &self.tunables
    }

    /// Mutable tunables (no validation; use [`crate::mdt::Cluster::set_param`] for lctl semantics).
    pub fn tunables_mut(&mut self) -> &mut Tunables {
        &mut self.tunables
    }

    /// The request log in llog order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.log.values()
    }

    /// Record carrying `cookie` that is not a CANCEL.
    pub fn record_by_cookie(&self, cookie: u64) -> Option<&Record> {
        self.by_cookie.get(&cookie).and_then(|k| self.log.get(k))
    }

    /// Registered agents in registration order.
    pub fn agents(&self) -> &[AgentInfo] {
        &self.agents
    }

    /// Active (dispatched, unfinished) requests in dispatch order.
    pub fn active_requests(&self) -> Vec<ActiveInfo> {
        let mut v: Vec<&Active> = self.active.values().collect();
        v.sort_unstable_by_key(|a| a.order);
        v.into_iter()
            .map(|a| ActiveInfo {
                item: a.item.clone(),
                archive_id: a.archive_id,
                flags: a.flags,
                canceled: a.canceled,
                agent: a.agent.clone(),
                done: a.done_bytes(),
                last_progress: a.last,
            })
            .collect()
    }

    /// One active request by cookie.
    pub fn active_request(&self, cookie: u64) -> Option<ActiveInfo> {
        self.active.get(&cookie).map(|a| ActiveInfo {
            item: a.item.clone(),
            archive_id: a.archive_id,
            flags: a.flags,
            canceled: a.canceled,
            agent: a.agent.clone(),
            done: a.done_bytes(),
            last_progress: a.last,
        })
    }

    /// Number of active items.
    pub fn active_count(&self) -> u64 {
        self.active.len() as u64
    }

    /// Active ARCHIVE, RESTORE, REMOVE items (`archive_count`, `restore_count`, `remove_count`).
    pub fn action_counts(&self) -> [u64; 3] {
        self.counts
    }

    /// Number of WAITING records.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// True if a request, completion or registration asked the coordinator to look for work.
    pub fn wants_scan(&self) -> bool {
        (self.wake && self.state == CdtState::Running) || self.purge_wait.is_some()
    }

    /// HSM attributes of a file owned by this MDT.
    pub fn file(&self, fid: LuFid) -> Option<&FileAttrs> {
        self.files.get(&fid)
    }

    /// True if `fid` has a restore in progress (its layout lock is held).
    pub fn restore_locked(&self, fid: LuFid) -> bool {
        self.restore_locks.contains(&fid)
    }

    // ---------------------------------------------------------------- files

    /// Allocates a new FID in this MDT's sequence.
    pub fn alloc_fid(&mut self) -> LuFid {
        let fid = LuFid::new(
            FID_SEQ_BASE + u64::from(self.index) * FID_SEQ_STRIDE,
            self.next_oid,
            0,
        );
        self.next_oid = self.next_oid.wrapping_add(1).max(1);
        fid
    }

    /// Makes sure later [`Mdt::alloc_fid`] calls never return `fid` again (after a restart).
    pub fn reserve_fid(&mut self, fid: LuFid) {
        if fid.seq == FID_SEQ_BASE + u64::from(self.index) * FID_SEQ_STRIDE
            && fid.oid >= self.next_oid
        {
            self.next_oid = fid.oid.wrapping_add(1).max(1);
        }
    }

    /// Adds (or replaces) a file's HSM attributes.
    pub fn put_file(&mut self, fid: LuFid, attrs: FileAttrs) {
        self.reserve_fid(fid);
        self.files.insert(fid, attrs);
    }

    /// Reports the file's current data version; a change on an `HS_EXISTS` file sets `HS_DIRTY`
    /// (what closing a file written to does on a real MDT).
    pub fn file_modified(&mut self, fid: LuFid, data_version: u64) -> Result<(), Errno> {
        let f = self.files.get_mut(&fid).ok_or(Errno::ENOENT)?;
        if f.data_version != data_version {
            f.data_version = data_version;
            if f.states.contains(HsmStates::EXISTS) && !f.states.contains(HsmStates::DIRTY) {
                f.states.insert(HsmStates::DIRTY);
                // The HSM xattr changed: the MDD logs it as a state change.
                self.emit(self.clock, HsmEvent::State, 0, true, fid);
            }
        }
        Ok(())
    }

    /// Removes a file (last unlink). With `remove_archive_on_last_unlink` set and the file
    /// `HS_EXISTS`, records a REMOVE for its archive copy, even with the coordinator stopped.
    pub fn unlink_file(&mut self, now: u64, fid: LuFid) -> Result<(), Errno> {
        self.at(now);
        let f = self.files.remove(&fid).ok_or(Errno::ENOENT)?;
        if self.tunables.remove_archive_on_last_unlink && f.states.contains(HsmStates::EXISTS) {
            let archive_id = if f.archive_id != 0 {
                f.archive_id
            } else {
                self.tunables.default_archive_id
            };
            self.ensure_cookie_base(now);
            self.cookie += 1;
            let item = HsmActionItem {
                action: HsmAction::Remove,
                fid,
                dfid: fid,
                extent: HsmExtent::WHOLE_FILE,
                cookie: self.cookie,
                gid: 0,
                data: Vec::new(),
            };
            self.append(now, archive_id, 0, item);
            self.wake = true;
        }
        Ok(())
    }

    /// `MDS_HSM_RELEASE` close intent: the file must be ARCHIVED, not DIRTY/NORELEASE/LOST, and
    /// `data_version` must equal the archived version (`EPERM` otherwise); already released is 0.
    pub fn release(&mut self, fid: LuFid, data_version: u64) -> Result<(), Errno> {
        let f = self.files.get_mut(&fid).ok_or(Errno::ENOENT)?;
        if f.states.contains(HsmStates::RELEASED) {
            return Ok(());
        }
        if !f.states.contains(HsmStates::ARCHIVED)
            || f.states
                .intersects(HsmStates::DIRTY | HsmStates::NORELEASE | HsmStates::LOST)
            || f.archive_version != data_version
            || f.data_version != data_version
        {
            return Err(Errno::EPERM);
        }
        f.states.insert(HsmStates::RELEASED);
        self.emit(self.clock, HsmEvent::Release, 0, false, fid);
        Ok(())
    }

    /// `LL_IOC_HSM_STATE_SET`: non-admins may only touch `HSM_USER_MASK` bits (`EPERM`),
    /// unknown bits are `EINVAL`, and the result must be consistent (`RELEASED` needs
    /// `ARCHIVED`; `ARCHIVED`/`RELEASED`/`LOST` need `EXISTS`) or `EINVAL`.
    pub fn state_set(
        &mut self,
        caller: Caller,
        fid: LuFid,
        set: u64,
        clear: u64,
        archive_id: u32,
    ) -> Result<(), Errno> {
        const KNOWN: u64 = 0x7f;
        if (set | clear) & !u64::from(HsmStates::USER_MASK.bits()) != 0 && !caller.is_admin() {
            return Err(Errno::EPERM);
        }
        if (set | clear) & !KNOWN != 0 {
            return Err(Errno::EINVAL);
        }
        let f = self.files.get_mut(&fid).ok_or(Errno::ENOENT)?;
        let mut s = HsmStates((f.states.bits() | set as u32) & !(clear as u32));
        s.0 &= KNOWN as u32;
        if (s.contains(HsmStates::RELEASED) && !s.contains(HsmStates::ARCHIVED))
            || (s.intersects(HsmStates::ARCHIVED | HsmStates::RELEASED | HsmStates::LOST)
                && !s.contains(HsmStates::EXISTS))
        {
            return Err(Errno::EINVAL);
        }
        f.states = s;
        if archive_id != 0 {
            f.archive_id = archive_id;
        }
        let dirty = s.contains(HsmStates::DIRTY);
        self.emit(self.clock, HsmEvent::State, 0, dirty, fid);
        Ok(())
    }

    /// `LL_IOC_HSM_ACTION`: the first WAITING/STARTED record of the file.
    pub fn current_action(&self, fid: LuFid) -> Result<CurrentAction, Errno> {
        if !self.files.contains_key(&fid) {
            return Err(Errno::ENOENT);
        }
        for (key, r) in &self.log {
            if r.item.fid != fid || r.status.is_final() {
                continue;
            }
            let action = match r.item.action {
                HsmAction::Archive => HsmUserAction::Archive,
                HsmAction::Restore => HsmUserAction::Restore,
                HsmAction::Remove => HsmUserAction::Remove,
                HsmAction::Cancel => HsmUserAction::Cancel,
                HsmAction::None => HsmUserAction::None,
            };
            if r.status == AgentReqStatus::Waiting {
                return Ok(CurrentAction {
                    state: ProgressState::Waiting,
                    action,
                    location: r.item.extent,
                });
            }
            let done = self
                .active
                .get(&r.item.cookie)
                .filter(|a| a.key == *key)
                .map_or(0, Active::done_bytes);
            return Ok(CurrentAction {
                state: ProgressState::Running,
                action,
                location: HsmExtent {
                    offset: r.item.extent.offset,
                    length: done,
                },
            });
        }
        Ok(CurrentAction {
            state: ProgressState::None,
            action: HsmUserAction::None,
            location: HsmExtent::default(),
        })
    }

    // ---------------------------------------------------------------- control

    fn thread_up(&self) -> bool {
        matches!(self.state, CdtState::Running | CdtState::Disable)
    }

    /// Raises the cookie counter to the 2.17+ start value if it was never set.
    fn ensure_cookie_base(&mut self, now: u64) {
        if self.cookie == 0 {
            self.cookie = self.max_cookie().unwrap_or(now);
        }
    }

    fn max_cookie(&self) -> Option<u64> {
        self.log.values().map(|r| r.item.cookie).max()
    }

    fn start(&mut self, now: u64) {
        self.state = CdtState::Init;
        // 2.17+: counter = largest cookie in the llog, else epoch seconds; each record takes +1.
        self.cookie = self.max_cookie().unwrap_or(now);
        // mdt_hsm_pending_restore: STARTED restores are re-sent, all restore locks re-taken.
        let mut requeue = Vec::new();
        for (key, r) in &self.log {
            if r.item.action == HsmAction::Restore && !r.status.is_final() {
                self.restore_locks.insert(r.item.fid);
                if r.status == AgentReqStatus::Started {
                    requeue.push(*key);
                }
            }
        }
        for key in requeue {
            self.set_status(key, AgentReqStatus::Waiting, now);
        }
        self.last_housekeeping = 0;
        self.state = CdtState::Running;
        self.wake = true;
    }

    fn stop(&mut self) {
        // The thread passes its idle point on the way out: a waiting purge runs first.
        if let Some(saved) = self.purge_wait.take() {
            self.state = saved;
            self.purge(self.clock);
        }
        self.state = CdtState::Stopping;
        // The thread frees its in-memory requests and agent list on exit.
        for a in self.active.drain() {
            drop(a);
        }
        self.counts = [0; 3];
        self.agents.clear();
        self.restore_locks.clear();
        self.outbox.clear();
        self.state = CdtState::Stopped;
    }

    /// Writes `hsm_control`: `enabled`, `disabled`, `shutdown`, `purge` or `help` (a command
    /// word followed by anything, whole input shorter than 10 bytes); other input is `EINVAL`.
    /// `shutdown` of a stopped coordinator is `EALREADY` (the simulator stops instantly).
    /// `purge` may be left waiting for the coordinator thread: see [`Mdt::purge_status`].
    pub fn control(&mut self, now: u64, input: &str) -> Result<(), Errno> {
        self.at(now);
        let is = |w: &str| input.len() < 10 && input.starts_with(w);
        if is("enabled") {
            match self.state {
                CdtState::Stopped => self.start(now),
                CdtState::Disable => {
                    self.state = CdtState::Running;
                    self.wake = true;
                }
                _ => {}
            }
        } else if is("disabled") {
            if self.state == CdtState::Running {
                self.state = CdtState::Disable;
            }
        } else if is("shutdown") {
            match self.state {
                CdtState::Stopped | CdtState::Stopping => return Err(Errno::EALREADY),
                _ => self.stop(),
            }
        } else if is("purge") {
            self.purge_start(now);
        } else if is("help") {
            // The kernel prints the usage to its log only.
        } else {
            return Err(Errno::EINVAL);
        }
        debug!(mdt = %self.name, state = self.state.name(), "hsm_control");
        Ok(())
    }

    /// Starts a purge (§9.7): the coordinator is set DISABLE and the purge waits until its
    /// thread is idle. The thread is busy when it has a scan to run at `now` (work flagged, or
    /// housekeeping due); then the purge stays [`PurgeStatus::Waiting`] until the next
    /// [`Mdt::tick`], where the thread sees DISABLE, scans nothing and goes idle, and the
    /// purge runs and restores the previous state. An idle (or stopped) coordinator is purged
    /// at once. A purge asked while one waits joins it.
    fn purge_start(&mut self, now: u64) {
        if self.purge_wait.is_some() {
            return;
        }
        let saved = self.state;
        let busy = self.state == CdtState::Running
            && (self.wake || self.last_housekeeping + u64::from(self.tunables.loop_period) <= now);
        if self.thread_up() {
            self.state = CdtState::Disable;
        }
        if busy {
            debug!(mdt = %self.name, "purge waits for the coordinator to be idle");
            self.purge_wait = Some(saved);
            return;
        }
        self.purge(now);
        self.state = saved;
    }

    /// Whether a `purge` is waiting for the coordinator thread.
    pub fn purge_status(&self) -> PurgeStatus {
        if self.purge_wait.is_some() {
            PurgeStatus::Waiting
        } else {
            PurgeStatus::Idle
        }
    }

    /// The writer of a waiting `purge` was interrupted by a signal: the purge is abandoned
    /// (nothing canceled), the previous state restored, and the writer gets `EINTR`.
    /// `Ok(())` when no purge was waiting (it already ran).
    pub fn interrupt_purge(&mut self) -> Result<(), Errno> {
        match self.purge_wait.take() {
            Some(saved) => {
                self.state = saved;
                Err(Errno::EINTR)
            }
            None => Ok(()),
        }
    }

    /// `hsm_control=purge`: a one-item CANCEL HAL for every active request (to the least
    /// loaded agent of its archive id), then every WAITING/STARTED record becomes CANCELED.
    /// Active requests stay in memory, not flagged canceled (their completion still counts).
    fn purge(&mut self, now: u64) {
        let mut act: Vec<&Active> = self.active.values().collect();
        act.sort_unstable_by_key(|a| a.order);
        let mut out = Vec::new();
        for a in act {
            if let Some(i) = self.best_agent(a.archive_id) {
                let mut item = a.item.clone();
                item.action = HsmAction::Cancel;
                out.push(Dispatch {
                    mdt: self.index,
                    agent: self.agents[i].uuid.clone(),
                    archive_id: a.archive_id,
                    flags: a.flags,
                    fsname: self.fsname.clone(),
                    items: vec![item],
                });
            }
        }
        self.outbox.extend(out);
        let live: Vec<u64> = self.waiting.iter().chain(&self.started).copied().collect();
        for key in live {
            if let Some(r) = self.log.get(&key)
                && r.item.action == HsmAction::Restore
            {
                self.restore_locks.remove(&r.item.fid);
            }
            self.set_status(key, AgentReqStatus::Canceled, now);
        }
    }

    // ---------------------------------------------------------------- changelog

    fn at(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    /// Appends a CL_HSM record, if some changelog user is registered (an MDT records no
    /// changelog until the first `changelog_register`).
    #[inline]
    fn emit(&mut self, now: u64, event: HsmEvent, error: u32, dirty: bool, fid: LuFid) {
        if self.changelog_users.is_empty() {
            return;
        }
        let index = self.changelog_next;
        self.changelog_next += 1;
        self.changelog.push_back(ChangelogRecord {
            index,
            kind: CL_HSM,
            time: now.max(self.clock),
            flags: hsm_changelog_flags(event, error, dirty),
            tfid: fid,
        });
    }

    /// `lctl changelog_register`: a new changelog user (`cl<id>`); recording starts with the
    /// first one.
    pub fn changelog_register(&mut self) -> u32 {
        let id = self.changelog_next_user;
        self.changelog_next_user += 1;
        self.changelog_users.push(ChangelogUser {
            id,
            cleared: self.changelog_next - 1,
        });
        id
    }

    /// `lctl changelog_deregister cl<id>`: `ENOENT` for an unknown user. Records nobody
    /// needs any more are dropped; with the last user gone recording stops.
    pub fn changelog_deregister(&mut self, id: u32) -> Result<(), Errno> {
        let pos = self
            .changelog_users
            .iter()
            .position(|u| u.id == id)
            .ok_or(Errno::ENOENT)?;
        self.changelog_users.remove(pos);
        self.changelog_gc();
        Ok(())
    }

    /// The registered changelog users.
    pub fn changelog_users(&self) -> &[ChangelogUser] {
        &self.changelog_users
    }

    /// `lfs changelog_clear <mdt> cl<id> <endrec>`: user `id` no longer needs the records up
    /// to `endrec` (0 = every current record). `ENOENT` for an unknown user, `EINVAL` for an
    /// `endrec` past the last record. Records every user cleared are dropped.
    pub fn changelog_clear(&mut self, id: u32, endrec: u64) -> Result<(), Errno> {
        let last = self.changelog_next - 1;
        let end = if endrec == 0 { last } else { endrec };
        if end > last {
            return Err(Errno::EINVAL);
        }
        let u = self
            .changelog_users
            .iter_mut()
            .find(|u| u.id == id)
            .ok_or(Errno::ENOENT)?;
        u.cleared = u.cleared.max(end);
        self.changelog_gc();
        Ok(())
    }

    fn changelog_gc(&mut self) {
        let keep_from = self
            .changelog_users
            .iter()
            .map(|u| u.cleared)
            .min()
            .unwrap_or(u64::MAX);
        while self.changelog.front().is_some_and(|r| r.index <= keep_from) {
            self.changelog.pop_front();
        }
    }

    /// The changelog records numbered `start..=end` (`end` 0 = up to the last one).
    pub fn changelog(&self, start: u64, end: u64) -> impl Iterator<Item = &ChangelogRecord> {
        let end = if end == 0 { u64::MAX } else { end };
        self.changelog
            .iter()
            .filter(move |r| r.index >= start && r.index <= end)
    }

    // ---------------------------------------------------------------- agents

    /// `MDS_HSM_CT_REGISTER` from client mount `uuid`. Empty list or a 0 = ANY. `ENXIO` if the
    /// coordinator thread is not up, `EEXIST` if the client is already registered (its first
    /// list is kept).
    pub fn register(&mut self, uuid: &str, archives: &[u32]) -> Result<(), Errno> {
        if !self.thread_up() {
            return Err(Errno::ENXIO);
        }
        self.wake = true;
        if self.agents.iter().any(|a| &*a.uuid == uuid) {
            return Err(Errno::EEXIST);
        }
        let archives = if archives.contains(&0) {
            Vec::new()
        } else {
            archives.to_vec()
        };
        self.agents.push(AgentInfo {
            uuid: Arc::from(uuid),
            archives,
            current: 0,
            ok: 0,
            errors: 0,
        });
        Ok(())
    }

    /// `MDS_HSM_CT_UNREGISTER`: removes the client's agent; its running requests stay.
    pub fn unregister(&mut self, uuid: &str) -> Result<(), Errno> {
        let pos = self
            .agents
            .iter()
            .position(|a| &*a.uuid == uuid)
            .ok_or(Errno::ENOENT)?;
        self.agents.remove(pos);
        Ok(())
    }

    fn agent_mut(&mut self, uuid: &str) -> Option<&mut AgentInfo> {
        self.agents.iter_mut().find(|a| &*a.uuid == uuid)
    }

    /// Least-loaded agent for `archive_id`; ties go to the earliest registered.
    fn best_agent(&self, archive_id: u32) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, a) in self.agents.iter().enumerate() {
            if !a.serves(archive_id) {
                continue;
            }
            if best.is_none_or(|b| a.current < self.agents[b].current) {
                best = Some(i);
            }
            if a.current == 0 {
                break;
            }
        }
        best
    }

    // ---------------------------------------------------------------- admission

    fn append(&mut self, now: u64, archive_id: u32, flags: u64, item: HsmActionItem) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let llog = self.next_llog;
        self.next_llog = if llog.index >= LLOG_RECORDS_PER_PLAIN {
            LlogIndex {
                catalog: llog.catalog + 1,
                index: 1,
            }
        } else {
            LlogIndex {
                catalog: llog.catalog,
                index: llog.index + 1,
            }
        };
        if item.action != HsmAction::Cancel {
            self.by_cookie.insert(item.cookie, key);
        }
        self.log.insert(
            key,
            Record {
                llog,
                status: AgentReqStatus::Waiting,
                archive_id,
                flags,
                create: now,
                change: now,
                item,
            },
        );
        self.waiting.insert(key);
        if self.log[&key].item.action == HsmAction::Restore {
            self.waiting_restores.insert(key);
        }
        key
    }

    /// The one place a record's status changes: keeps the waiting/started/finished indexes.
    fn set_status(&mut self, key: u64, status: AgentReqStatus, now: u64) {
        let Some(r) = self.log.get_mut(&key) else {
            return;
        };
        let old = r.status;
        r.status = status;
        r.change = now;
        let restore = r.item.action == HsmAction::Restore;
        match old {
            AgentReqStatus::Waiting => {
                self.waiting.remove(&key);
                if restore {
                    self.waiting_restores.remove(&key);
                }
            }
            AgentReqStatus::Started => {
                self.started.remove(&key);
            }
            _ => {}
        }
        match status {
            AgentReqStatus::Waiting => {
                self.waiting.insert(key);
                if restore {
                    self.waiting_restores.insert(key);
                }
            }
            AgentReqStatus::Started => {
                self.started.insert(key);
            }
            _ => {
                if !old.is_final() {
                    self.finished.push_back((now, key));
                }
            }
        }
    }

    fn cancel_target(&self, fid: LuFid) -> Option<(u64, u32)> {
        self.log
            .values()
            .find(|r| {
                r.item.fid == fid && !r.status.is_final() && r.item.action != HsmAction::Cancel
            })
            .map(|r| (r.item.cookie, r.archive_id))
    }

    fn allowed(&self, caller: Caller, f: &FileAttrs, action: HsmAction) -> bool {
        if caller.is_admin() {
            return true;
        }
        let mask = if caller.uid == f.uid {
            self.tunables.user_request_mask
        } else if caller.gid == f.gid {
            self.tunables.group_request_mask
        } else {
            self.tunables.other_request_mask
        };
        mask.contains(action)
    }

    /// `MDS_HSM_REQUEST` for the items this MDT owns (§9.2): records one WAITING entry per
    /// needed item. Errors: `EAGAIN` (coordinator stopped), `EINVAL` (RELEASE/NOOP, bad FID),
    /// `ENOENT` (no such file), `EPERM` (not allowed or incompatible state), `EPROTO` (restore
    /// not at offset 0); items before the failing one stay recorded. `ENODATA` means recorded
    /// under the NonBlockingRestore policy.
    pub fn request(&mut self, now: u64, caller: Caller, req: &UserRequest) -> Result<(), Errno> {
        self.request_from(now, caller, false, req)
    }

    /// [`Mdt::request`] from a client whose export is read-only (`read_only`): every item
    /// of an existing file is refused with `EROFS`, except RESTOREs (§9.2). An admin REMOVE
    /// or CANCEL of a file that no longer exists is recorded without any check, as the MDT
    /// does once the lookup failed.
    pub fn request_from(
        &mut self,
        now: u64,
        caller: Caller,
        read_only: bool,
        req: &UserRequest,
    ) -> Result<(), Errno> {
        self.at(now);
        if !self.thread_up() {
            return Err(Errno::EAGAIN);
        }
        let action = match req.action {
            HsmUserAction::Archive => HsmAction::Archive,
            HsmUserAction::Restore => HsmAction::Restore,
            HsmUserAction::Remove => HsmAction::Remove,
            HsmUserAction::Cancel => HsmAction::Cancel,
            HsmUserAction::Release | HsmUserAction::None => return Err(Errno::EINVAL),
        };
        if req.items.is_empty() {
            return Ok(());
        }
        if req.items.iter().any(|(f, _)| !fid_is_sane(*f)) {
            return Err(Errno::EINVAL);
        }
        self.ensure_cookie_base(now);
        let force = req.flags & u64::from(HsmRequestFlags::FORCE_ACTION.bits()) != 0;
        let mut seen: HashSet<LuFid> = HashSet::new();
        let small = req.items.len() <= 16;
        for (n, &(fid, extent)) in req.items.iter().enumerate() {
            let dup = if small {
                req.items[..n].iter().any(|(f, _)| *f == fid)
            } else {
                !seen.insert(fid)
            };
            if dup {
                continue;
            }
            let mut archive_id = req.archive_id;
            let mut cookie = 0;
            if action == HsmAction::Cancel {
                match self.cancel_target(fid) {
                    Some((c, a)) => {
                        cookie = c;
                        if archive_id == 0 {
                            archive_id = a;
                        }
                    }
                    // "Useless cancel must not be registered".
                    None => continue,
                }
            }
            let file = self.files.get(&fid).copied();
            match &file {
                None => {
                    if !(caller.is_admin()
                        && matches!(action, HsmAction::Remove | HsmAction::Cancel))
                    {
                        return Err(Errno::ENOENT);
                    }
                }
                Some(f) => {
                    if !self.allowed(caller, f, action) {
                        return Err(Errno::EPERM);
                    }
                    if read_only && action != HsmAction::Restore {
                        return Err(Errno::EROFS);
                    }
                    if action != HsmAction::Cancel {
                        if !force && !needed(action, f.states) {
                            continue;
                        }
                        if !compatible(action, f, req.archive_id) {
                            return Err(Errno::EPERM);
                        }
                    }
                }
            }
            // A missing file goes straight to the record: an admin REMOVE without archive id
            // keeps 0 (sent to every archive at dispatch, see `fan_out_remove`).
            if archive_id == 0
                && let Some(f) = file
            {
                archive_id = if f.archive_id != 0 {
                    f.archive_id
                } else {
                    self.tunables.default_archive_id
                };
            }
            if action == HsmAction::Restore {
                if extent.offset != 0 {
                    return Err(Errno::EPROTO);
                }
                if !self.restore_locks.insert(fid) {
                    continue;
                }
            }
            if action != HsmAction::Cancel {
                self.cookie += 1;
                cookie = self.cookie;
            }
            let item = HsmActionItem {
                action,
                fid,
                dfid: fid,
                extent,
                cookie,
                gid: 0,
                data: req.data.clone(),
            };
            trace!(mdt = %self.name, %fid, cookie, action = action.name(), "recorded");
            self.append(now, archive_id, req.flags, item);
        }
        self.wake = true;
        if action == HsmAction::Restore && self.tunables.policy.contains(Policy::NBR) {
            return Err(Errno::ENODATA);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- scheduling

    /// One wake-up of the coordinator thread (it wakes every second): a housekeeping scan if
    /// `loop_period` has elapsed since the last one (timeouts, purge of finished records,
    /// dispatch), else an event scan (dispatch only) if something asked for it. Nothing happens
    /// unless the coordinator is enabled. Produced HALs are queued for [`Mdt::poll_dispatch`].
    pub fn tick(&mut self, now: u64) {
        self.at(now);
        if let Some(saved) = self.purge_wait.take() {
            // The thread wakes, finds the coordinator disabled and goes idle: the waiting
            // purge runs now and gives the state back.
            self.purge(now);
            self.state = saved;
            return;
        }
        if self.state != CdtState::Running {
            return;
        }
        let housekeeping = self.last_housekeeping + u64::from(self.tunables.loop_period) <= now;
        if !housekeeping && !self.wake {
            return;
        }
        self.wake = false;
        if housekeeping {
            self.last_housekeeping = now;
            self.housekeep(now);
        }
        self.dispatch_scan(now, housekeeping);
    }

    /// Pops the next HAL to deliver.
    pub fn poll_dispatch(&mut self) -> Option<Dispatch> {
        self.outbox.pop_front()
    }

    fn housekeep(&mut self, now: u64) {
        let timeout = u64::from(self.tunables.active_request_timeout);
        let grace = u64::from(self.tunables.grace_delay);
        let mut expired = Vec::new();
        for key in &self.started {
            let r = &self.log[key];
            let last = self
                .active
                .get(&r.item.cookie)
                .filter(|a| a.key == *key || a.cancel_key == Some(*key))
                .map_or(r.change, |a| a.last);
            if now > last + timeout {
                expired.push(*key);
            }
        }
        for key in expired {
            self.time_out(now, key);
        }
        // Final records are queued in the order they became final, i.e. by change time.
        while let Some(&(t, key)) = self.finished.front() {
            if t + grace >= now {
                break;
            }
            self.finished.pop_front();
            if let Some(r) = self.log.get(&key)
                && r.status.is_final()
                && r.change == t
            {
                let cookie = r.item.cookie;
                self.log.remove(&key);
                if self.by_cookie.get(&cookie) == Some(&key) {
                    self.by_cookie.remove(&cookie);
                }
            }
        }
    }

    fn time_out(&mut self, now: u64, key: u64) {
        let Some(r) = self.log.get_mut(&key) else {
            return;
        };
        let cookie = r.item.cookie;
        let fid = r.item.fid;
        let action = r.item.action;
        self.set_status(key, AgentReqStatus::Canceled, now);
        debug!(mdt = %self.name, cookie, %fid, "request timed out");
        let linked = self
            .active
            .get(&cookie)
            .is_some_and(|a| a.key == key || a.cancel_key == Some(key));
        if linked && let Some(a) = self.active.remove(&cookie) {
            if let Some(s) = count_slot(a.item.action) {
                self.counts[s] -= 1;
            }
            // The coordinator completes it itself, logged as canceled.
            if let Some(dirty) = self
                .files
                .get(&a.item.fid)
                .map(|f| f.states.contains(HsmStates::DIRTY))
            {
                let event = event_of(a.item.action);
                self.emit(now, event, libc::ECANCELED as u32, dirty, a.item.fid);
            }
            if a.item.action == HsmAction::Restore {
                self.restore_locks.remove(&a.item.fid);
            }
            if let Some(ag) = self.agent_mut(&a.agent) {
                ag.errors += 1;
                ag.current = ag.current.saturating_sub(1);
            }
            self.wake = true;
        } else if action == HsmAction::Restore {
            self.restore_locks.remove(&fid);
        }
    }

    fn dispatch_scan(&mut self, now: u64, housekeeping: bool) {
        let max = self.tunables.max_requests;
        let active = self.active.len() as u64;
        if active >= max || self.agents.is_empty() || self.waiting.is_empty() {
            return;
        }
        let mut batches: Vec<Batch> = Vec::new();
        let mut picked = 0u64;
        let empty_hal = hal_size_for(&self.fsname, []);
        let mut limit_at = None;
        let any_agent = self.agents.iter().any(|a| a.archives.is_empty());
        let mut fan_out = Vec::new();
        for &key in &self.waiting {
            let r = &self.log[&key];
            let item_sz = align8(r.item.hai_len());
            if active + picked >= max {
                limit_at = Some(key);
                break;
            }
            if r.archive_id == 0 && r.item.action == HsmAction::Remove && !any_agent {
                fan_out.push(key);
                continue;
            }
            let slot = batches
                .iter()
                .position(|b| b.archive_id == r.archive_id && b.size + item_sz <= HAL_MAX_SIZE);
            let b = match slot {
                Some(i) => &mut batches[i],
                None => {
                    if batches.len() as u64 >= max {
                        continue;
                    }
                    batches.push(Batch {
                        archive_id: r.archive_id,
                        flags: r.flags,
                        keys: Vec::new(),
                        size: empty_hal,
                    });
                    batches.last_mut().expect("just pushed")
                }
            };
            b.keys.push(key);
            b.size += item_sz;
            b.flags = r.flags;
            picked += 1;
        }
        // The budget is used up: one RESTORE per scan still jumps the queue, the one at the
        // limit (any scan) or the next waiting one (housekeeping scans keep walking).
        let jumper = limit_at.and_then(|at| {
            if self.log[&at].item.action == HsmAction::Restore {
                Some(at)
            } else if housekeeping {
                self.waiting_restores.range(at..).next().copied()
            } else {
                None
            }
        });
        if let Some(key) = jumper {
            let r = &self.log[&key];
            let item_sz = align8(r.item.hai_len());
            if let Some(b) = batches
                .iter_mut()
                .rev()
                .find(|b| b.archive_id == r.archive_id && !b.keys.is_empty())
            {
                // It replaces the last picked item(s) of a batch of its archive id.
                while let Some(k) = b.keys.pop() {
                    b.size -= align8(self.log[&k].item.hai_len());
                    if b.size + item_sz <= HAL_MAX_SIZE {
                        break;
                    }
                }
                b.keys.push(key);
                b.size += item_sz;
                b.flags = r.flags;
            } else if housekeeping {
                // Otherwise a housekeeping scan drops the whole last batch to make room.
                batches.pop();
                batches.push(Batch {
                    archive_id: r.archive_id,
                    flags: r.flags,
                    keys: vec![key],
                    size: empty_hal + item_sz,
                });
            }
        }
        for key in fan_out {
            self.fan_out_remove(now, key);
        }
        for b in batches {
            if self.active.len() as u64 >= max {
                break;
            }
            if !b.keys.is_empty() {
                self.send(now, b);
            }
        }
    }

    /// A REMOVE for archive id 0 that no agent serving ANY can take: one new REMOVE per
    /// distinct archive id the registered agents serve (registration order), and the
    /// original record SUCCEEDs (§8).
    fn fan_out_remove(&mut self, now: u64, key: u64) {
        let mut ids: Vec<u32> = Vec::new();
        for a in &self.agents {
            for id in &a.archives {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
        }
        let Some(r) = self.log.get(&key) else {
            return;
        };
        let (flags, base) = (r.flags, r.item.clone());
        for id in ids {
            self.cookie += 1;
            let item = HsmActionItem {
                cookie: self.cookie,
                ..base.clone()
            };
            debug!(mdt = %self.name, fid = %item.fid, archive_id = id, cookie = item.cookie, "REMOVE for every archive");
            self.append(now, id, flags, item);
        }
        self.set_status(key, AgentReqStatus::Succeed, now);
        self.wake = true;
    }

    /// `mdt_hsm_agent_send` (2.17+): choose the agent, fail items the file no longer allows,
    /// send the rest, mark them STARTED.
    fn send(&mut self, now: u64, b: Batch) {
        // A CANCEL of an active request goes to the agent running it.
        let mut agent: Option<Arc<str>> = None;
        for k in &b.keys {
            let it = &self.log[k].item;
            if it.action == HsmAction::Cancel
                && let Some(a) = self.active.get(&it.cookie)
                && self.agents.iter().any(|g| g.uuid == a.agent)
            {
                agent = Some(a.agent.clone());
                break;
            }
        }
        let agent = match agent {
            Some(a) => a,
            None => match self.best_agent(b.archive_id) {
                Some(i) => self.agents[i].uuid.clone(),
                None => {
                    debug!(mdt = %self.name, archive_id = b.archive_id, "Cannot find agent for archive");
                    return;
                }
            },
        };
        let mut items = Vec::with_capacity(b.keys.len());
        let mut sent = 0u64;
        for key in b.keys {
            let r = self.log.get_mut(&key).expect("batched key is in the log");
            let fid = r.item.fid;
            let action = r.item.action;
            if action != HsmAction::Cancel {
                let ok = match self.files.get(&fid) {
                    None => action == HsmAction::Remove,
                    Some(f) => compatible(action, f, r.archive_id),
                };
                if !ok {
                    debug!(mdt = %self.name, %fid, cookie = r.item.cookie, "item failed at dispatch");
                    self.set_status(key, AgentReqStatus::Failed, now);
                    if action == HsmAction::Restore {
                        self.restore_locks.remove(&fid);
                    }
                    continue;
                }
            }
            let archive_id = r.archive_id;
            let flags = r.flags;
            let item = r.item.clone();
            self.set_status(key, AgentReqStatus::Started, now);
            match action {
                HsmAction::Cancel => {
                    if let Some(t) = self.active.get_mut(&item.cookie) {
                        t.canceled = true;
                        t.cancel_key = Some(key);
                        let tkey = t.key;
                        if self.log.get(&tkey).is_some_and(|tr| !tr.status.is_final()) {
                            self.set_status(tkey, AgentReqStatus::Canceled, now);
                        }
                    }
                }
                _ => {
                    if action == HsmAction::Archive
                        && let Some(f) = self.files.get_mut(&fid)
                    {
                        f.states.insert(HsmStates::EXISTS);
                        f.archive_id = archive_id;
                    }
                    if let Some(s) = count_slot(action) {
                        self.counts[s] += 1;
                    }
                    self.active_order += 1;
                    self.active.insert(
                        item.cookie,
                        Active {
                            order: self.active_order,
                            key,
                            archive_id,
                            flags,
                            item: item.clone(),
                            agent: agent.clone(),
                            canceled: false,
                            cancel_key: None,
                            last: now,
                            done: Vec::new(),
                        },
                    );
                    sent += 1;
                }
            }
            items.push(item);
        }
        if items.is_empty() {
            return;
        }
        if let Some(a) = self.agent_mut(&agent) {
            a.current += sent;
        }
        self.outbox.push_back(Dispatch {
            mdt: self.index,
            agent,
            archive_id: b.archive_id,
            flags: b.flags,
            fsname: self.fsname.clone(),
            items,
        });
    }

    /// The daemon could not deliver `d` (no copytool pipe on that mount: `EAGAIN`; copytool
    /// gone: `EPIPE`, which also unregisters the agent). Its requests leave memory and their
    /// records go back to WAITING (change time touched), to be sent again.
    pub fn send_failed(&mut self, now: u64, d: &Dispatch, err: Errno) {
        self.at(now);
        let mut n = 0u64;
        for it in &d.items {
            if it.action == HsmAction::Cancel {
                continue;
            }
            if let Some(a) = self.active.get(&it.cookie)
                && a.agent == d.agent
            {
                let a = self.active.remove(&it.cookie).expect("checked above");
                n += 1;
                if let Some(s) = count_slot(a.item.action) {
                    self.counts[s] -= 1;
                }
                if self
                    .log
                    .get(&a.key)
                    .is_some_and(|r| r.status == AgentReqStatus::Started)
                {
                    self.set_status(a.key, AgentReqStatus::Waiting, now);
                }
            }
        }
        if let Some(a) = self.agent_mut(&d.agent) {
            a.current = a.current.saturating_sub(n);
        }
        if err == Errno::EPIPE {
            let _ = self.unregister(&d.agent);
        }
        self.wake = true;
    }

    // ---------------------------------------------------------------- progress

    /// `MDS_HSM_PROGRESS` (progress or completion), matched by cookie only, from any client.
    /// Same as [`Mdt::progress_with`] with a layout swap that always succeeds.
    pub fn progress(&mut self, now: u64, p: &Progress) -> Result<(), Errno> {
        self.progress_with(now, p, |_, _| Ok(()))
    }

    /// `MDS_HSM_PROGRESS` (§9.4). `swap(fid, volatile)` is called for a successful RESTORE
    /// completion and performs the layout swap (the file side commits the volatile); its
    /// error fails the restore under NoRetryAction and is returned.
    ///
    /// Errors, in this order: `EAGAIN` (coordinator not up), `ENOENT` (cookie not active),
    /// `EINVAL` (extent end overflows, FID neither fid nor dfid, errval without COMPLETED);
    /// `ECANCELED` for a plain progress after a cancel was dispatched.
    pub fn progress_with<F>(&mut self, now: u64, p: &Progress, swap: F) -> Result<(), Errno>
    where
        F: FnOnce(LuFid, LuFid) -> Result<(), Errno>,
    {
        self.at(now);
        if !self.thread_up() {
            return Err(Errno::EAGAIN);
        }
        let a = self.active.get_mut(&p.cookie).ok_or(Errno::ENOENT)?;
        let completed = p.flags.contains(HsmProgressFlags::COMPLETED);
        let range = if p.errval == 0 && p.extent.length != 0 && a.item.action != HsmAction::Remove {
            Some((p.extent.offset, last_byte(p.extent).ok_or(Errno::EINVAL)?))
        } else {
            None
        };
        if a.item.action == HsmAction::Restore && a.item.dfid == a.item.fid {
            a.item.dfid = p.fid;
        }
        if matches!(a.item.action, HsmAction::Archive | HsmAction::Restore)
            && p.fid != a.item.fid
            && p.fid != a.item.dfid
        {
            return Err(Errno::EINVAL);
        }
        if p.errval != 0 && !completed {
            return Err(Errno::EINVAL);
        }
        a.last = now;
        if let Some((lo, hi)) = range {
            a.merge(lo, hi);
        }
        if !completed {
            return if a.canceled {
                Err(Errno::ECANCELED)
            } else {
                Ok(())
            };
        }
        let a = self.active.remove(&p.cookie).expect("looked up above");
        if let Some(s) = count_slot(a.item.action) {
            self.counts[s] -= 1;
        }
        let nra = self.tunables.policy.contains(Policy::NRA);
        let mut ret = Ok(());
        let errval = i32::from(p.errval);
        let mut status = match errval {
            0 => AgentReqStatus::Succeed,
            libc::ECANCELED => AgentReqStatus::Succeed,
            libc::ENOSYS => AgentReqStatus::Failed,
            _ => {
                if !nra
                    && p.flags.contains(HsmProgressFlags::RETRY)
                    && self.files.contains_key(&a.item.fid)
                {
                    AgentReqStatus::Waiting
                } else {
                    AgentReqStatus::Failed
                }
            }
        };
        let mut success = errval == 0;
        if success && a.item.action == HsmAction::Restore {
            if let Err(e) = swap(a.item.fid, a.item.dfid) {
                success = false;
                ret = Err(e);
                if nra {
                    status = AgentReqStatus::Failed;
                }
            }
        }
        if let Some(ag) = self.agent_mut(&a.agent) {
            ag.current = ag.current.saturating_sub(1);
            if status == AgentReqStatus::Succeed {
                ag.ok += 1;
            } else {
                ag.errors += 1;
            }
        }
        let mut file_dirty = None;
        if let Some(f) = self.files.get_mut(&a.item.fid) {
            match a.item.action {
                HsmAction::Archive => {
                    if success {
                        f.states.insert(HsmStates::ARCHIVED);
                        f.states.remove(HsmStates::DIRTY | HsmStates::LOST);
                        f.archive_version = p.data_version.unwrap_or(f.data_version);
                    } else if f.states.contains(HsmStates::ARCHIVED)
                        && !f.states.contains(HsmStates::DIRTY)
                        && errval != libc::EALREADY
                    {
                        f.states.insert(HsmStates::DIRTY);
                    }
                }
                HsmAction::Restore if success => {
                    f.states.remove(HsmStates::RELEASED | HsmStates::DIRTY);
                    if let Some(v) = p.data_version {
                        f.data_version = v;
                    }
                    f.archive_version = f.data_version;
                }
                HsmAction::Remove if success => {
                    f.states
                        .remove(HsmStates::ARCHIVED | HsmStates::EXISTS | HsmStates::LOST);
                }
                _ => {}
            }
            file_dirty = Some(f.states.contains(HsmStates::DIRTY));
        }
        // CL_HSM record of the completion: a copytool without cancel support (ENOSYS) is
        // logged as canceled, a failed layout swap with the swap's error; an error too large
        // for the 7-bit field is logged as overflow and refused (EINVAL to the copytool).
        let cl_error = match (&ret, errval) {
            (Err(e), _) => e.code() as u32,
            (Ok(()), libc::ENOSYS) => libc::ECANCELED as u32,
            (Ok(()), e) => e as u32,
        };
        if cl_error > u32::from(CLF_HSM_MAXERROR) && ret.is_ok() {
            ret = Err(Errno::EINVAL);
        }
        if let Some(dirty) = file_dirty {
            self.emit(now, event_of(a.item.action), cl_error, dirty, a.item.fid);
        }
        if a.item.action == HsmAction::Restore && status != AgentReqStatus::Waiting {
            self.restore_locks.remove(&a.item.fid);
        }
        let target = a.cancel_key.unwrap_or(a.key);
        if self.log.get(&target).is_some_and(|r| !r.status.is_final()) {
            self.set_status(target, status, now);
        }
        trace!(mdt = %self.name, cookie = p.cookie, status = status.name(), "completed");
        self.wake = true;
        ret
    }
}
