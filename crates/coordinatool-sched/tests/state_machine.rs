//! Property tests: random sequences of events (requests, duplicates, cancels, clients that
//! connect, ask, finish, disconnect and come back, locks, time passing) against the engine,
//! with invariants checked after every step and a final drain proving nothing is lost.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_sched::*;
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

const SEC: u64 = 1_000_000_000;
const GRACE_MS: u64 = 5_000;
const SLOTS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    New {
        kind: u8,
        archive_id: u32,
        flags: bool,
        tag: u8,
        data_len: u8,
        big_cookie: bool,
    },
    Duplicate(usize),
    Cancel(usize),
    Connect {
        slot: usize,
        archives: u8,
    },
    Recv {
        slot: usize,
        max: [Option<u32>; 3],
        max_bytes: u32,
    },
    Done {
        slot: usize,
        pick: usize,
        truncate: bool,
    },
    Disconnect(usize),
    Advance(u64),
    Lock(u8),
    /// The restore locator now names this host for `tag=h` restores.
    Relocate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let limit = prop_oneof![Just(None), (0u32..4).prop_map(Some)];
    prop_oneof![
        6 => (0u8..3, 1u32..4, prop::bool::weighted(0.1), 0u8..4, 0u8..120, any::<bool>()).prop_map(
            |(kind, archive_id, flags, tag, data_len, big_cookie)| Op::New {
                kind,
                archive_id,
                flags,
                tag,
                data_len,
                big_cookie
            }
        ),
        1 => any::<usize>().prop_map(Op::Duplicate),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (0..SLOTS, 0u8..8).prop_map(|(slot, archives)| Op::Connect { slot, archives }),
        4 => (0..SLOTS, [limit.clone(), limit.clone(), limit], prop_oneof![Just(172u32), 172u32..2000, Just(1 << 20)])
            .prop_map(|(slot, max, max_bytes)| Op::Recv { slot, max, max_bytes }),
        4 => (0..SLOTS, any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(slot, pick, truncate)| Op::Done { slot, pick, truncate }),
        1 => (0..SLOTS).prop_map(Op::Disconnect),
        1 => (0u64..8).prop_map(Op::Advance),
        1 => (0u8..4).prop_map(Op::Lock),
        1 => (0usize..2).prop_map(Op::Relocate),
    ]
}

#[derive(Default)]
struct Mover {
    conn: Option<ClientId>,
    /// What the mover process is running (it keeps it across reconnects).
    running: Vec<Request>,
    limits: Option<RecvLimits>,
}

struct World {
    e: Engine,
    now: Time,
    movers: Vec<Mover>,
    all: Vec<Request>,
    next: u64,
    live: HashSet<RequestKey>,
    assigned: HashMap<RequestKey, String>,
    lock: LockState,
    peer: u32,
    host_mapped: bool,
    batching: bool,
    by_key: HashMap<RequestKey, Request>,
    archives: Vec<Vec<u32>>,
    /// Host (mover slot) the restore locator names for `tag=h` restores, if one is installed.
    locator: Option<Rc<Cell<usize>>>,
}

/// Restores whose data starts with `tag=h` belong to mover m0 or m1 (which one changes
/// during the run, as a tape moving between drives); any other restore runs anywhere.
struct TagLocator(Rc<Cell<usize>>);

impl RestoreLocator for TagLocator {
    fn locate(&mut self, r: &Request, _focus: Option<&str>) -> Locate {
        if r.data.starts_with(b"tag=h") {
            Locate::Host(name(self.0.get()))
        } else {
            Locate::Anywhere
        }
    }
    fn cache_ttl_ms(&self) -> u64 {
        3_000
    }
}

fn name(slot: usize) -> String {
    format!("m{slot}")
}

impl World {
    fn new(cfg: Config, locator: bool) -> Self {
        let mut e = Engine::new(cfg.clone()).unwrap();
        let locator = locator.then(|| {
            let host = Rc::new(Cell::new(0));
            e.set_restore_locator(Box::new(TagLocator(host.clone())));
            host
        });
        World {
            locator,
            host_mapped: !cfg.host_mappings.is_empty(),
            batching: cfg.batching.idle_secs > 0,
            by_key: HashMap::new(),
            archives: vec![Vec::new(); SLOTS],
            e,
            now: Time(1_700_000_000 * SEC),
            movers: (0..SLOTS).map(|_| Mover::default()).collect(),
            all: Vec::new(),
            next: 0,
            live: HashSet::new(),
            assigned: HashMap::new(),
            lock: LockState::Unlocked,
            peer: 0,
        }
    }

    fn slot_of(&self, c: ClientId) -> Option<usize> {
        self.movers.iter().position(|m| m.conn == Some(c))
    }

    /// Drains the actions of one step and checks them.
    fn drain(&mut self, ehlo_reclaim: bool) -> Result<(), TestCaseError> {
        while let Some(a) = self.e.poll_action() {
            match a {
                Action::Persist(PersistOp::New(r)) => {
                    prop_assert!(self.live.insert(r.key()), "New for a live key");
                }
                Action::Persist(PersistOp::Finished { key }) => {
                    prop_assert!(self.live.remove(&key), "Finished for a dead key");
                    self.assigned.remove(&key);
                }
                Action::Persist(PersistOp::Assigned { key, client }) => {
                    prop_assert!(self.live.contains(&key));
                    if !ehlo_reclaim {
                        prop_assert!(
                            !self.assigned.contains_key(&key),
                            "{key:?} assigned to {client} while assigned to {:?}",
                            self.assigned.get(&key)
                        );
                    }
                    self.assigned.insert(key, client);
                }
                Action::Persist(PersistOp::Unassigned { key }) => {
                    prop_assert!(self.assigned.remove(&key).is_some());
                }
                Action::Deliver(d) => {
                    prop_assert!(!d.items.is_empty(), "empty reply");
                    prop_assert_eq!(self.lock, LockState::Unlocked, "delivered while locked");
                    let slot = self
                        .slot_of(d.client)
                        .expect("delivered to a live connection");
                    let lim = self.movers[slot].limits.expect("client had asked");
                    let bytes: u64 = d.items.iter().map(Request::budget_cost).sum();
                    // The one exception: an item larger than the whole budget goes alone.
                    let alone = d.items.len() == 1;
                    prop_assert!(
                        bytes <= u64::from(lim.max_bytes) || alone,
                        "budget {bytes} > {}",
                        lim.max_bytes
                    );
                    let mut kinds = HashSet::new();
                    for r in &d.items {
                        prop_assert_eq!(r.archive_id, d.archive_id);
                        prop_assert_eq!(r.hal_flags, d.hal_flags);
                        if r.action == HsmAction::Cancel {
                            continue;
                        }
                        prop_assert_eq!(self.assigned.get(&r.key()), Some(&name(slot)));
                        prop_assert!(
                            !self.movers.iter().any(|m| m.conn.is_some()
                                && m.running.iter().any(|x| x.key() == r.key())),
                            "{:?} delivered while a mover still runs it",
                            r.key()
                        );
                        if self.host_mapped
                            && r.action == HsmAction::Archive
                            && r.data.starts_with(b"tag=h")
                        {
                            prop_assert!(slot < 2, "archive for hosts m0/m1 delivered to m{slot}");
                        }
                        if self.locator.is_some()
                            && r.action == HsmAction::Restore
                            && r.data.starts_with(b"tag=h")
                        {
                            prop_assert!(slot < 2, "located restore delivered to m{slot}");
                        }
                        kinds.insert(Kind::of(r.action).unwrap());
                    }
                    let st = self.e.status(false);
                    let cs = st
                        .clients
                        .iter()
                        .find(|c| c.client_id == name(slot))
                        .unwrap();
                    for k in kinds {
                        if let Some(m) = lim.max(k) {
                            prop_assert!(cs.current.get(k) <= m, "limit {k:?} {m} exceeded");
                        }
                    }
                    let m = &mut self.movers[slot];
                    m.running.extend(
                        d.items
                            .into_iter()
                            .filter(|r| r.action != HsmAction::Cancel),
                    );
                }
                Action::ReportCancelled { cancel } => {
                    prop_assert_eq!(cancel.action, HsmAction::Cancel);
                }
                Action::Report(_) | Action::Shutdown => {}
            }
        }
        self.e.check_invariants().map_err(TestCaseError::fail)?;
        let (p, r) = (self.e.pending(), self.e.running());
        let total = p.restore + p.remove + p.archive + r.restore + r.remove + r.archive;
        prop_assert_eq!(
            total as usize,
            self.live.len(),
            "a request was lost or invented"
        );
        for k in &self.live {
            prop_assert!(self.e.request_owner(*k).is_some());
        }
        // `requests()` lists every live request once, where `request_owner` says it is.
        let mut listed = HashSet::new();
        for (r, placed) in self.e.requests() {
            prop_assert!(listed.insert(r.key()), "{:?} listed twice", r.key());
            let owner = self.e.request_owner(r.key()).flatten();
            match placed {
                Placed::Running(c) => prop_assert_eq!(owner, Some(c)),
                _ => prop_assert_eq!(owner, None),
            }
        }
        prop_assert_eq!(&listed, &self.live);
        self.check_work_conserving()
    }

    /// No waiting client is left waiting while a queued request it could take (its archive
    /// id, a free slot of that kind, within its budget) sits in the global queue or its own.
    /// Batch slots legitimately hold work back for a time slice, so batching runs skip this.
    fn check_work_conserving(&self) -> Result<(), TestCaseError> {
        if self.batching || self.lock != LockState::Unlocked {
            return Ok(());
        }
        let st = self.e.status(true);
        let global = st.queues.as_ref().unwrap();
        for (slot, m) in self.movers.iter().enumerate() {
            let Some(c) = m.conn else { continue };
            if self.e.client_state(c) != Some(ClientState::Waiting) {
                continue;
            }
            let lim = m.limits.unwrap();
            let cs = st
                .clients
                .iter()
                .find(|x| x.client_id == name(slot))
                .unwrap();
            let own = &cs.dump.as_ref().unwrap().waiting;
            for k in Kind::ALL {
                if lim.max(k).is_some_and(|mx| cs.current.get(k) >= mx) {
                    continue;
                }
                let queued: Vec<&Request> = global
                    .get_ref(k)
                    .iter()
                    .chain(own.get_ref(k))
                    .map(|e| {
                        &self.by_key[&RequestKey {
                            cookie: e.cookie,
                            dfid: e.dfid,
                        }]
                    })
                    .filter(|r| {
                        self.archives[slot].is_empty()
                            || self.archives[slot].contains(&r.archive_id)
                    })
                    .collect();
                if let Some(r) = queued.first() {
                    prop_assert!(
                        false,
                        "m{slot} waits while {:?} ({k:?}, archive {}) is queued",
                        r.key(),
                        r.archive_id
                    );
                }
            }
        }
        Ok(())
    }

    /// Slots are reserved at placement (upstream §4.8): a new archive for any mover is in a
    /// batch slot (or already sent) unless no handshaken connected mover that accepts its
    /// archive id has a free slot.
    fn check_slot_reserved(&self, key: RequestKey, archive_id: u32) -> Result<(), TestCaseError> {
        let placed = self
            .e
            .requests()
            .find(|(r, _)| r.key() == key)
            .map(|(_, p)| p)
            .expect("just queued");
        if matches!(placed, Placed::InSlot { .. } | Placed::Running(_)) {
            return Ok(());
        }
        let st = self.e.status(false);
        for (slot, m) in self.movers.iter().enumerate() {
            let Some(c) = m.conn else { continue };
            if !matches!(
                self.e.client_state(c),
                Some(ClientState::Ready | ClientState::Waiting)
            ) || !(self.archives[slot].is_empty() || self.archives[slot].contains(&archive_id))
            {
                continue;
            }
            let cs = st
                .clients
                .iter()
                .find(|x| x.client_id == name(slot))
                .unwrap();
            prop_assert!(
                cs.batches.iter().all(|b| b.hint.is_some()),
                "{key:?} left unreserved ({placed:?}) while m{slot} has a free slot"
            );
        }
        Ok(())
    }

    fn connect(&mut self, slot: usize, archives: Vec<u32>) -> Result<(), TestCaseError> {
        if let Some(c) = self.movers[slot].conn.take() {
            self.e.disconnect(c, self.now).unwrap();
            self.drain(false)?;
        }
        self.peer += 1;
        let c = self
            .e
            .connect(&format!("10.0.0.{slot}:{}", self.peer), self.now);
        let running = self.movers[slot].running.clone();
        let archives_sent = archives.clone();
        self.e
            .ehlo(
                c,
                Ehlo {
                    id: Some(name(slot)),
                    archive_ids: archives.clone(),
                    running,
                },
                self.now,
            )
            .unwrap();
        self.movers[slot].conn = Some(c);
        self.archives[slot] = archives_sent;
        self.movers[slot].limits = None;
        // The mover keeps running what it listed; the engine now agrees it owns all of it.
        self.drain(true)?;
        let claimed: HashSet<RequestKey> =
            self.movers[slot].running.iter().map(Request::key).collect();
        for k in &claimed {
            prop_assert_eq!(self.e.request_owner(*k), Some(Some(c)));
        }
        // The engine gave these to the reconnecting mover: any other copy is now stale.
        for (i, m) in self.movers.iter_mut().enumerate() {
            if i != slot {
                m.running.retain(|r| !claimed.contains(&r.key()));
            }
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::New {
                kind,
                archive_id,
                flags,
                tag,
                data_len,
                big_cookie,
            } => {
                let n = self.next;
                self.next += 1;
                let action =
                    [HsmAction::Restore, HsmAction::Remove, HsmAction::Archive][kind as usize];
                let mut data = match tag {
                    0 => b"tag=h,".to_vec(),
                    1 => b"user=a,".to_vec(),
                    2 => b"user=b,".to_vec(),
                    _ => Vec::new(),
                };
                data.resize(data.len() + data_len as usize, b'x');
                let fid = LuFid::new(0x200000400, (n % 7) as u32, 0);
                let r = Request {
                    action,
                    cookie: if big_cookie {
                        ((n + 1) << 32) | 0x10
                    } else {
                        0x1000 + n
                    },
                    dfid: fid,
                    fid,
                    extent_offset: 0,
                    extent_length: u64::MAX,
                    gid: 0,
                    archive_id,
                    hal_flags: u64::from(flags),
                    data: data.into(),
                    timestamp: self.now,
                    mdt_index: None,
                    owner: None,
                };
                self.all.push(r.clone());
                self.by_key.insert(r.key(), r.clone());
                let key = r.key();
                let pinned = self.host_mapped && r.data.starts_with(b"tag=h");
                prop_assert_eq!(self.e.new_request(r, self.now), Ok(Intake::New));
                if self.batching && action == HsmAction::Archive && !pinned {
                    self.check_slot_reserved(key, archive_id)?;
                }
            }
            Op::Duplicate(i) => {
                if !self.all.is_empty() {
                    let r = self.all[i % self.all.len()].clone();
                    let live = self.live.contains(&r.key());
                    let got = self.e.new_request(r, self.now).unwrap();
                    prop_assert_eq!(got == Intake::Duplicate, live);
                }
            }
            Op::Cancel(i) => {
                if !self.all.is_empty() {
                    let r = self.all[i % self.all.len()].clone();
                    let before = self.e.request_owner(r.key());
                    let out = self.e.cancel(
                        Request {
                            action: HsmAction::Cancel,
                            ..r
                        },
                        self.now,
                    );
                    let expect = match before {
                        None => CancelOutcome::Unknown,
                        Some(None) => CancelOutcome::Cancelled,
                        Some(Some(_)) => CancelOutcome::Forwarded,
                    };
                    prop_assert_eq!(out, expect);
                }
            }
            Op::Connect { slot, archives } => {
                let ids: Vec<u32> = (1..4).filter(|a| archives & (1 << (a - 1)) != 0).collect();
                return self.connect(slot, ids);
            }
            Op::Recv {
                slot,
                max,
                max_bytes,
            } => {
                let Some(c) = self.movers[slot].conn else {
                    return Ok(());
                };
                let lim = RecvLimits {
                    max_restore: max[0],
                    max_remove: max[1],
                    max_archive: max[2],
                    max_bytes,
                };
                let state = self.e.client_state(c);
                let res = self.e.recv(c, lim, self.now);
                prop_assert_eq!(res.is_ok(), state == Some(ClientState::Ready));
                if res.is_ok() {
                    self.movers[slot].limits = Some(lim);
                }
            }
            Op::Done {
                slot,
                pick,
                truncate,
            } => {
                let Some(c) = self.movers[slot].conn else {
                    return Ok(());
                };
                let m = &mut self.movers[slot];
                if m.running.is_empty() {
                    return Ok(());
                }
                let r = m.running.remove(pick % m.running.len());
                let mut key = r.key();
                if truncate {
                    key.cookie = key.cookie as u32 as i32 as i64 as u64;
                }
                let known = self.e.request_owner(r.key()).is_some();
                let out = self.e.done(c, key, 0, self.now);
                if !truncate {
                    prop_assert_eq!(out == DoneOutcome::Finished, known);
                }
                if truncate && out == DoneOutcome::Finished {
                    // The fallback must have finished exactly this request.
                    prop_assert!(self.e.request_owner(r.key()).is_none());
                }
                if truncate && out == DoneOutcome::Unknown && known {
                    // Ambiguous (or no fallback for this cookie): the mover retries with the full key.
                    prop_assert_eq!(self.e.done(c, r.key(), 0, self.now), DoneOutcome::Finished);
                }
            }
            Op::Disconnect(slot) => {
                if let Some(c) = self.movers[slot].conn.take() {
                    self.e.disconnect(c, self.now).unwrap();
                }
            }
            Op::Advance(s) => {
                self.now = self.now.add_nanos(s * SEC);
                if self.e.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.e.handle_timeout(self.now);
                }
            }
            Op::Relocate(host) => {
                if let Some(l) = &self.locator {
                    l.set(host);
                }
            }
            Op::Lock(l) => {
                // Lock-and-quit would end the run; the test uses lock and unlock only.
                self.lock = if l == 0 {
                    LockState::Locked
                } else {
                    LockState::Unlocked
                };
                self.e.set_lock(self.lock, self.now);
            }
        }
        self.drain(false)
    }

    /// Everything still live must be delivered to willing movers and finish.
    fn drain_all(&mut self) -> Result<(), TestCaseError> {
        self.lock = LockState::Unlocked;
        self.e.set_lock(LockState::Unlocked, self.now);
        self.drain(false)?;
        for slot in 0..SLOTS {
            // Movers finish what they run (with the full key), then reconnect accepting anything.
            for r in std::mem::take(&mut self.movers[slot].running) {
                if let Some(c) = self.movers[slot].conn {
                    self.e.done(c, r.key(), 0, self.now);
                } else {
                    self.movers[slot].running.push(r);
                }
            }
            self.drain(false)?;
            self.connect(slot, Vec::new())?;
            for r in std::mem::take(&mut self.movers[slot].running) {
                self.e
                    .done(self.movers[slot].conn.unwrap(), r.key(), 0, self.now);
            }
            self.drain(false)?;
        }
        // Let placeholders and stale records expire.
        self.now = self.now.add_nanos(2 * GRACE_MS * 1_000_000);
        self.e.handle_timeout(self.now);
        self.drain(false)?;
        for _round in 0..200 {
            if self.live.is_empty() {
                break;
            }
            // Batch slices must be allowed to end for other hints to get a slot.
            self.now = self.now.add_nanos(3 * SEC);
            self.e.handle_timeout(self.now);
            self.drain(false)?;
            for slot in 0..SLOTS {
                let c = self.movers[slot].conn.unwrap();
                if self.e.client_state(c) == Some(ClientState::Ready) {
                    let lim = RecvLimits::default();
                    self.e.recv(c, lim, self.now).unwrap();
                    self.movers[slot].limits = Some(lim);
                }
                self.drain(false)?;
                for r in std::mem::take(&mut self.movers[slot].running) {
                    self.e.done(c, r.key(), 0, self.now);
                }
                self.drain(false)?;
            }
        }
        prop_assert!(
            self.live.is_empty(),
            "{} requests never delivered",
            self.live.len()
        );
        let st = self.e.status(false);
        prop_assert_eq!(st.pending_cancel, 0);
        Ok(())
    }
}

fn config(variant: u8) -> Config {
    let mut cfg = Config {
        client_grace_ms: GRACE_MS,
        ..Config::default()
    };
    if variant & 1 != 0 {
        cfg.host_mappings = vec![HostMapping::Tag {
            tag: "tag=h".into(),
            hosts: vec!["m0".into(), "m1".into()],
        }];
    }
    if variant & 2 != 0 {
        cfg.fair_share = Some(FairShare {
            key: ShareKey::DataTag("user=".into()),
            weights: vec![("a".into(), 3)],
            default_weight: 1,
        });
    }
    if variant & 8 != 0 {
        cfg.batching = Batching {
            idle_secs: 2,
            max_secs: u64::from(variant & 1) * 4,
            slots_per_client: 1 + u32::from(variant & 2 != 0),
        };
    }
    if variant & 4 != 0 {
        cfg.spread = false;
        cfg.priorities.aging_ms = 0;
    }
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_invariants(variant in 0u8..32, ops in prop::collection::vec(op(), 1..120)) {
        let mut w = World::new(config(variant), variant & 16 != 0);
        for op in ops {
            w.step(op)?;
        }
        w.drain_all()?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Inside one batch slot (one hint, one mover), weighted fair share holds: while both
    /// users have archives waiting, user 1 (weight `w`) gets `w` archives for each of user
    /// 2's, within one archive of each, whatever the arrival order.
    #[test]
    fn fair_share_holds_inside_a_batch_slot(
        arrivals in prop::collection::vec(any::<bool>(), 2..150),
        w in 1u32..4,
    ) {
        let cfg = Config {
            spread: false,
            batching: Batching { idle_secs: 60, max_secs: 0, slots_per_client: 1 },
            fair_share: Some(FairShare {
                key: ShareKey::Uid,
                weights: vec![("1".into(), w)],
                default_weight: 1,
            }),
            ..Config::default()
        };
        let mut e = Engine::new(cfg).unwrap();
        let now = Time(1_700_000_000 * SEC);
        let mut left = [0u64; 2];
        for (n, &user1) in arrivals.iter().enumerate() {
            let fid = LuFid::new(0x200000400, n as u32, 0);
            let uid = if user1 { 1 } else { 2 };
            left[uid as usize - 1] += 1;
            let r = Request {
                action: HsmAction::Archive,
                cookie: 0x1000 + n as u64,
                dfid: fid,
                fid,
                extent_offset: 0,
                extent_length: u64::MAX,
                gid: 0,
                archive_id: 1,
                hal_flags: 0,
                data: b"tape=T1".as_slice().into(),
                timestamp: now,
                mdt_index: None,
                owner: Some(Owner { uid, gid: 0, projid: 0 }),
            };
            e.new_request(r, now).unwrap();
        }
        let c = e.connect("m:1", now);
        e.ehlo(c, Ehlo { id: Some("m".into()), ..Ehlo::default() }, now).unwrap();
        let one = RecvLimits { max_archive: Some(1), ..RecvLimits::default() };
        let mut served = [0u64; 2];
        while left.iter().sum::<u64>() > 0 {
            e.recv(c, one, now).unwrap();
            let mut got = Vec::new();
            while let Some(a) = e.poll_action() {
                if let Action::Deliver(d) = a {
                    got.extend(d.items);
                }
            }
            prop_assert_eq!(got.len(), 1);
            let uid = got[0].owner.unwrap().uid as usize;
            if left[0] > 0 && left[1] > 0 {
                served[uid - 1] += 1;
                let (a, b) = (served[0] as i64, served[1] as i64 * i64::from(w));
                prop_assert!(
                    (a - b).abs() <= i64::from(w),
                    "served {served:?} with weight {w}"
                );
            }
            left[uid - 1] -= 1;
            e.done(c, got[0].key(), 0, now);
            e.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
