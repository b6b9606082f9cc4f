//! Property tests of the MDT model: random admissions, registrations, dispatch, progress,
//! completions, cancels, purges and timeouts on a virtual clock, with invariants checked after
//! every step.

use std::collections::{HashMap, HashSet};

use coordinatool_lustre::{HsmAction, HsmProgressFlags, HsmUserAction, LuFid};
use coordinatool_sim::mdt::{
    AgentReqStatus, CL_HSM, Caller, Cluster, Dispatch, Errno, FileAttrs, HAL_MAX_SIZE, HsmExtent,
    Progress, UserRequest,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000;
const MDTS: u32 = 2;
const FILES_PER_MDT: usize = 6;
const AGENTS: [&str; 3] = ["agent-a", "agent-b", "agent-c"];

#[derive(Clone, Debug)]
enum Op {
    Request {
        action: u8,
        archive: u32,
        files: Vec<usize>,
    },
    Register {
        agent: usize,
        archives: Vec<u32>,
    },
    Unregister(usize),
    Tick(u64),
    Progress {
        pick: usize,
        offset: u64,
        length: u64,
    },
    Complete {
        pick: usize,
        errval: u16,
        retry: bool,
    },
    SendFailed {
        pick: usize,
        epipe: bool,
    },
    Release(usize),
    Modify(usize),
    SetParam(u8, u32),
    Control(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let files = prop::collection::vec(0..MDTS as usize * FILES_PER_MDT, 1..5);
    prop_oneof![
        4 => (0u8..4, 0u32..4, files).prop_map(|(action, archive, files)| Op::Request {
            action,
            archive,
            files
        }),
        1 => (0..AGENTS.len(), prop::collection::vec(0u32..4, 0..3))
            .prop_map(|(agent, archives)| Op::Register { agent, archives }),
        1 => (0..AGENTS.len()).prop_map(Op::Unregister),
        4 => prop_oneof![Just(0u64), Just(1), 1u64..30, Just(4000)].prop_map(Op::Tick),
        2 => (any::<usize>(), 0u64..1 << 20, prop_oneof![Just(0u64), 1u64..1 << 20, Just(u64::MAX)])
            .prop_map(|(pick, offset, length)| Op::Progress { pick, offset, length }),
        4 => (any::<usize>(), prop_oneof![Just(0u16), Just(5), Just(125), Just(38)], any::<bool>())
            .prop_map(|(pick, errval, retry)| Op::Complete { pick, errval, retry }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, epipe)| Op::SendFailed { pick, epipe }),
        1 => (0..MDTS as usize * FILES_PER_MDT).prop_map(Op::Release),
        1 => (0..MDTS as usize * FILES_PER_MDT).prop_map(Op::Modify),
        1 => (0u8..4, 1u32..8).prop_map(|(p, v)| Op::SetParam(p, v)),
        1 => (0u8..4).prop_map(Op::Control),
    ]
}

/// What a copytool holds: dispatched items not yet completed.
#[derive(Clone, Debug)]
struct Held {
    mdt: u32,
    cookie: u64,
    fid: LuFid,
}

struct World {
    c: Cluster,
    now: u64,
    files: Vec<LuFid>,
    held: Vec<Held>,
    sent: Vec<Dispatch>,
    /// (mdt, cookie) of non-CANCEL records → last status seen.
    known: HashMap<(u32, u64), AgentReqStatus>,
    dv: u64,
}

impl World {
    fn new() -> Self {
        let mut c = Cluster::new_enabled("lustre", MDTS, T0);
        for m in 0..MDTS {
            c.mdt_mut(m).unwrap().changelog_register();
        }
        let mut files = Vec::new();
        for m in 0..MDTS {
            for _ in 0..FILES_PER_MDT {
                let f = c.alloc_fid(m);
                c.put_file(
                    f,
                    FileAttrs {
                        data_version: 1,
                        ..FileAttrs::default()
                    },
                );
                files.push(f);
            }
        }
        World {
            c,
            now: T0,
            files,
            held: Vec::new(),
            sent: Vec::new(),
            known: HashMap::new(),
            dv: 1,
        }
    }

    fn drain(&mut self, max_before: &[(u64, u64)]) -> Result<(), TestCaseError> {
        let mut seen_now: HashSet<(u32, u64)> = HashSet::new();
        while let Some(d) = self.c.poll_dispatch() {
            prop_assert!(!d.items.is_empty());
            prop_assert!(
                d.hal_size() <= HAL_MAX_SIZE,
                "HAL too big: {}",
                d.hal_size()
            );
            prop_assert_eq!(d.to_hal().encode().len(), d.hal_size());
            let agents = self.c.mdt(d.mdt).unwrap().agents();
            prop_assert!(
                agents.iter().any(|a| a.uuid == d.agent),
                "sent to unknown agent"
            );
            for it in &d.items {
                if it.action == HsmAction::Cancel {
                    continue;
                }
                prop_assert!(
                    seen_now.insert((d.mdt, it.cookie)),
                    "cookie {:#x} dispatched twice in one tick",
                    it.cookie
                );
                prop_assert!(
                    !self.held.iter().any(|h| h.mdt == d.mdt
                        && h.cookie == it.cookie
                        && self
                            .c
                            .mdt(d.mdt)
                            .unwrap()
                            .active_requests()
                            .iter()
                            .any(|a| a.item.cookie == it.cookie && *a.agent != *d.agent)),
                    "cookie {:#x} active on two agents",
                    it.cookie
                );
                self.held.push(Held {
                    mdt: d.mdt,
                    cookie: it.cookie,
                    fid: it.fid,
                });
            }
            self.sent.push(d);
        }
        for (i, m) in self.c.mdts().iter().enumerate() {
            let (before, max) = max_before[i];
            prop_assert!(
                m.active_count() <= before.max(max),
                "active {} > max(before {}, max_requests {})",
                m.active_count(),
                before,
                max
            );
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        for m in self.c.mdts() {
            let idx = m.index();
            // Each cookie exactly once among the non-CANCEL records of one MDT.
            let mut cookies = HashSet::new();
            let mut waiting = 0;
            let mut in_log = HashSet::new();
            for r in m.records() {
                if r.status == AgentReqStatus::Waiting {
                    waiting += 1;
                }
                if r.item.action == HsmAction::Cancel {
                    continue;
                }
                prop_assert!(
                    cookies.insert(r.item.cookie),
                    "duplicate cookie {:#x}",
                    r.item.cookie
                );
                in_log.insert(r.item.cookie);
                self.known.insert((idx, r.item.cookie), r.status);
            }
            prop_assert_eq!(waiting, m.waiting_count());
            // No request lost: a record only leaves the log after it was seen final.
            let gone: Vec<(u32, u64)> = self
                .known
                .iter()
                .filter(|((mi, c), _)| *mi == idx && !in_log.contains(c))
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                let st = self.known.remove(&k).unwrap();
                prop_assert!(st.is_final(), "record {:#x} vanished while {:?}", k.1, st);
            }
            // Every active request: one entry per cookie, counted on at most its agent.
            let act = m.active_requests();
            let mut per_agent: HashMap<&str, u64> = HashMap::new();
            let mut act_cookies = HashSet::new();
            for a in &act {
                prop_assert!(act_cookies.insert(a.item.cookie));
                *per_agent.entry(&a.agent).or_default() += 1;
                prop_assert!(a.item.action != HsmAction::Cancel);
            }
            for ag in m.agents() {
                let n = per_agent.get(&*ag.uuid).copied().unwrap_or(0);
                prop_assert!(
                    ag.current <= n,
                    "agent {} current {} > {}",
                    ag.uuid,
                    ag.current,
                    n
                );
            }
            let counts = m.action_counts();
            prop_assert_eq!(counts.iter().sum::<u64>(), act.len() as u64);
            // The changelog: consecutive record numbers, CL_HSM records of known files.
            let cl: Vec<_> = m.changelog(0, 0).collect();
            for w in cl.windows(2) {
                prop_assert_eq!(w[1].index, w[0].index + 1);
            }
            for r in &cl {
                prop_assert_eq!(r.kind, CL_HSM);
                prop_assert!(r.event().is_some(), "bad event in {:#x}", r.flags);
                prop_assert!(self.files.contains(&r.tfid));
            }
        }
        Ok(())
    }

    fn changelog_len(&self, mdt: u32) -> usize {
        self.c.mdt(mdt).unwrap().changelog(0, 0).count()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Request {
                action,
                archive,
                files,
            } => {
                let action = [
                    HsmUserAction::Archive,
                    HsmUserAction::Restore,
                    HsmUserAction::Remove,
                    HsmUserAction::Cancel,
                ][*action as usize];
                let fids: Vec<LuFid> = files.iter().map(|i| self.files[*i]).collect();
                let r = UserRequest::whole_files(action, *archive, &fids);
                match self.c.request(self.now, Caller::ROOT, &r) {
                    Ok(()) | Err(Errno::EPERM) | Err(Errno::EAGAIN) | Err(Errno::ENODATA) => {}
                    Err(e) => prop_assert!(false, "unexpected admission error {e}"),
                }
            }
            Op::Register { agent, archives } => {
                let _ = self.c.register(AGENTS[*agent], archives);
            }
            Op::Unregister(a) => self.c.unregister(AGENTS[*a]),
            Op::Tick(s) => {
                self.now += s;
                let before: Vec<(u64, u64)> = self
                    .c
                    .mdts()
                    .iter()
                    .map(|m| (m.active_count(), m.tunables().max_requests))
                    .collect();
                self.c.tick(self.now);
                self.drain(&before)?;
            }
            Op::Progress {
                pick,
                offset,
                length,
            } => {
                if self.held.is_empty() {
                    return Ok(());
                }
                let h = self.held[pick % self.held.len()].clone();
                let p = Progress {
                    fid: h.fid,
                    cookie: h.cookie,
                    extent: HsmExtent {
                        offset: *offset,
                        length: *length,
                    },
                    flags: HsmProgressFlags::default(),
                    errval: 0,
                    data_version: None,
                };
                match self.c.progress(self.now, &p) {
                    Ok(()) | Err(Errno::ECANCELED) | Err(Errno::ENOENT) | Err(Errno::EAGAIN) => {}
                    Err(Errno::EINVAL) => {
                        prop_assert!(offset.checked_add(length - 1).is_none())
                    }
                    Err(e) => prop_assert!(false, "unexpected progress error {e}"),
                }
            }
            Op::Complete {
                pick,
                errval,
                retry,
            } => {
                if self.held.is_empty() {
                    return Ok(());
                }
                let h = self.held.remove(pick % self.held.len());
                let was_active = self
                    .c
                    .mdt(h.mdt)
                    .unwrap()
                    .active_requests()
                    .iter()
                    .any(|a| a.item.cookie == h.cookie);
                let mut flags = HsmProgressFlags::COMPLETED;
                if *retry {
                    flags |= HsmProgressFlags::RETRY;
                }
                self.dv += 1;
                let p = Progress {
                    fid: h.fid,
                    cookie: h.cookie,
                    extent: HsmExtent::WHOLE_FILE,
                    flags,
                    errval: *errval,
                    data_version: Some(self.dv),
                };
                let cl_before = self.changelog_len(h.mdt);
                let r = self.c.progress(self.now, &p);
                // One CL_HSM record per accepted completion (files are never unlinked here).
                let cl_added = self.changelog_len(h.mdt) - cl_before;
                prop_assert_eq!(cl_added, usize::from(r.is_ok()));
                if r.is_ok() {
                    let last = self.c.mdt(h.mdt).unwrap().changelog(0, 0).last().unwrap();
                    prop_assert_eq!(last.tfid, h.fid);
                    // ENOSYS (no cancel support) is logged as ECANCELED.
                    let logged = if *errval == 38 { 125 } else { *errval };
                    prop_assert_eq!(last.error(), logged);
                }
                let running = self.c.mdt(h.mdt).unwrap().state().name();
                match r {
                    Ok(()) => prop_assert!(was_active),
                    Err(Errno::ENOENT) => prop_assert!(!was_active),
                    Err(Errno::EAGAIN) => prop_assert!(running == "stopped"),
                    Err(e) => prop_assert!(false, "unexpected completion error {e}"),
                }
                // A second completion of the same cookie is always rejected.
                if r.is_ok() {
                    let again = self.c.progress(self.now, &p);
                    let still = self
                        .c
                        .mdt(h.mdt)
                        .unwrap()
                        .active_requests()
                        .iter()
                        .any(|a| a.item.cookie == h.cookie);
                    prop_assert!(still || again == Err(Errno::ENOENT));
                }
            }
            Op::SendFailed { pick, epipe } => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let d = self.sent.remove(pick % self.sent.len());
                let err = if *epipe { Errno::EPIPE } else { Errno::EAGAIN };
                self.c.send_failed(self.now, &d, err);
                // Only the requests themselves leave memory; a CANCEL (or purge) HAL that
                // could not be delivered leaves its target running.
                self.held.retain(|h| {
                    !(h.mdt == d.mdt
                        && d.items
                            .iter()
                            .any(|i| i.cookie == h.cookie && i.action != HsmAction::Cancel))
                });
            }
            Op::Release(i) => {
                let f = self.files[*i];
                let dv = self.c.file(f).unwrap().data_version;
                let _ = self.c.release(f, dv);
            }
            Op::Modify(i) => {
                self.dv += 1;
                self.c.file_modified(self.files[*i], self.dv).unwrap();
            }
            Op::SetParam(p, v) => {
                let (name, val) = match p {
                    0 => ("max_requests", v.to_string()),
                    1 => ("active_request_timeout", (v * 10).to_string()),
                    2 => ("grace_delay", (v * 5).to_string()),
                    _ => (
                        "policy",
                        if v % 2 == 0 { "-NRA" } else { "+NRA" }.to_owned(),
                    ),
                };
                for (_, r) in self
                    .c
                    .set_param(self.now, &format!("mdt.*.hsm.{name}"), &val)
                {
                    prop_assert_eq!(r, Ok(()));
                }
            }
            Op::Control(c) => {
                let cmd = ["purge", "disabled", "enabled", "shutdown"][*c as usize];
                for (_, r) in self.c.set_param(self.now, "mdt.*.hsm_control", cmd) {
                    prop_assert!(r.is_ok() || r == Err(Errno::EALREADY));
                }
                if cmd == "shutdown" {
                    // Copytools learn nothing; their later completions get EAGAIN/ENOENT.
                    for (_, r) in self.c.set_param(self.now, "mdt.*.hsm_control", "enabled") {
                        prop_assert_eq!(r, Ok(()));
                    }
                }
                let before: Vec<(u64, u64)> = self
                    .c
                    .mdts()
                    .iter()
                    .map(|m| (m.active_count(), m.tunables().max_requests))
                    .collect();
                self.drain(&before)?;
            }
        }
        Ok(())
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.

    #[test]
    fn model_invariants_hold(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op)?;
            w.check()?;
        }
        // Drain: with agents for every archive and time passing, every request ends. (A
        // client re-registering keeps its first archive list, so unregister first.)
        for a in AGENTS {
            w.c.unregister(a);
        }
        w.c.set_param(w.now, "mdt.*.hsm_control", "enabled");
        for a in AGENTS {
            w.c.register(a, &[]).unwrap();
        }
        w.c.set_param(w.now, "mdt.*.hsm_control", "enabled");
        for _ in 0..400 {
            w.now += 1;
            w.apply(&Op::Tick(0))?;
            while !w.held.is_empty() {
                w.apply(&Op::Complete { pick: 0, errval: 0, retry: false })?;
            }
            w.check()?;
            if w.c.mdts().iter().all(|m| m.waiting_count() == 0 && m.active_count() == 0) {
                break;
            }
        }
        for m in w.c.mdts() {
            prop_assert_eq!(m.waiting_count(), 0, "requests left waiting on {}", m.name());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Batching: whatever the data sizes and archive ids, every HAL is ≤ 5120 bytes, holds one
    /// archive id, and one scan sends each waiting record at most once (all of them when
    /// the budget allows).
    #[test]
    fn batching_respects_hal_limit(reqs in prop::collection::vec((1u32..4, 0usize..1600, 1usize..4), 1..40)) {
        let mut c = Cluster::new_enabled("lustre", 1, T0);
        c.register("a", &[]).unwrap();
        for (_, r) in c.set_param(T0, "mdt.*.hsm.max_requests", "100000") {
            prop_assert_eq!(r, Ok(()));
        }
        let mut total = 0;
        for (archive, dlen, n) in &reqs {
            let fids: Vec<LuFid> = (0..*n).map(|_| {
                let f = c.alloc_fid(0);
                c.put_file(f, FileAttrs::default());
                f
            }).collect();
            let mut r = UserRequest::whole_files(HsmUserAction::Archive, *archive, &fids);
            r.data = vec![b'x'; (*dlen).min(1600 - 32 * n)];
            c.request(T0, Caller::ROOT, &r).unwrap();
            total += n;
        }
        c.tick(T0);
        let mut cookies = HashSet::new();
        let mut sent = 0;
        let recs: HashMap<u64, u32> = c.mdt(0).unwrap().records().map(|r| (r.item.cookie, r.archive_id)).collect();
        while let Some(d) = c.poll_dispatch() {
            prop_assert!(d.hal_size() <= HAL_MAX_SIZE);
            for it in &d.items {
                prop_assert!(cookies.insert(it.cookie));
                prop_assert_eq!(recs[&it.cookie], d.archive_id);
            }
            sent += d.items.len();
        }
        prop_assert_eq!(sent, total);
        prop_assert_eq!(c.mdt(0).unwrap().waiting_count(), 0);
    }
}
