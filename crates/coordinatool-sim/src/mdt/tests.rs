//! Unit tests of the MDT model.

use coordinatool_lustre::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction, LuFid};

use super::*;

const T0: u64 = 0x6913_bb00;
const UUID_A: &str = "3185ca0b-2d34-47f6-b156-d6f9ee127a08";
const UUID_B: &str = "d19dc2fe-cec4-43a1-8996-c783b3a70e63";

struct Env {
    c: Cluster,
    now: u64,
}

impl Env {
    fn new(mdts: u32) -> Self {
        Env {
            c: Cluster::new_enabled("lustre", mdts, T0),
            now: T0,
        }
    }

    fn file(&mut self, mdt: u32) -> LuFid {
        let fid = self.c.alloc_fid(mdt);
        self.c.put_file(
            fid,
            FileAttrs {
                uid: 500,
                gid: 500,
                data_version: 1,
                ..FileAttrs::default()
            },
        );
        fid
    }

    fn req(&mut self, action: HsmUserAction, archive: u32, fids: &[LuFid]) -> Result<(), Errno> {
        let r = UserRequest::whole_files(action, archive, fids);
        self.c.request(self.now, Caller::ROOT, &r)
    }

    fn tick(&mut self) -> Vec<Dispatch> {
        self.c.tick(self.now);
        std::iter::from_fn(|| self.c.poll_dispatch()).collect()
    }

    fn advance(&mut self, s: u64) -> Vec<Dispatch> {
        self.now += s;
        self.tick()
    }

    fn end(&mut self, fid: LuFid, cookie: u64, errval: u16) -> Result<(), Errno> {
        let p = Progress {
            fid,
            cookie,
            extent: HsmExtent::WHOLE_FILE,
            flags: HsmProgressFlags::COMPLETED,
            errval,
            data_version: None,
        };
        self.c.progress(self.now, &p)
    }

    fn progress(&mut self, fid: LuFid, cookie: u64, offset: u64, length: u64) -> Result<(), Errno> {
        let p = Progress {
            fid,
            cookie,
            extent: HsmExtent { offset, length },
            flags: HsmProgressFlags::default(),
            errval: 0,
            data_version: None,
        };
        self.c.progress(self.now, &p)
    }

    fn status(&self, cookie: u64, mdt: u32) -> AgentReqStatus {
        self.c
            .mdt(mdt)
            .unwrap()
            .record_by_cookie(cookie)
            .unwrap()
            .status
    }

    fn archived(&mut self, mdt: u32) -> LuFid {
        let f = self.file(mdt);
        self.req(HsmUserAction::Archive, 1, &[f]).unwrap();
        let d = self.tick();
        let cookie = d.last().unwrap().items[0].cookie;
        self.end(f, cookie, 0).unwrap();
        f
    }
}

#[test]
fn cookies_start_at_epoch_and_collide_across_mdts() {
    let mut e = Env::new(2);
    let f0 = e.file(0);
    let f1 = e.file(1);
    assert_eq!(e.c.mdt_of(f0), 0);
    assert_eq!(e.c.mdt_of(f1), 1);
    assert_eq!(f1.seq, 0x2_4000_0400);
    e.req(HsmUserAction::Archive, 0, &[f0, f1]).unwrap();
    let c0 = e.c.mdt(0).unwrap().records().next().unwrap().item.cookie;
    let c1 = e.c.mdt(1).unwrap().records().next().unwrap().item.cookie;
    assert_eq!(c0, T0 + 1);
    assert_eq!(c0, c1, "two MDTs started together hand out the same cookie");
    // After a restart the counter continues from the llog's largest cookie, not the clock.
    let m = e.c.mdt_mut(0).unwrap();
    m.control(T0 + 5, "shutdown").unwrap();
    m.control(T0 + 100, "enabled").unwrap();
    e.now = T0 + 100;
    let g = e.file(0);
    e.req(HsmUserAction::Archive, 0, &[g]).unwrap();
    assert_eq!(
        e.c.mdt(0).unwrap().records().last().unwrap().item.cookie,
        T0 + 2
    );
}

#[test]
fn admission_errors() {
    let mut e = Env::new(1);
    let f = e.file(0);
    assert_eq!(e.req(HsmUserAction::Release, 0, &[f]), Err(Errno::EINVAL));
    assert_eq!(e.req(HsmUserAction::None, 0, &[f]), Err(Errno::EINVAL));
    assert_eq!(
        e.req(HsmUserAction::Archive, 0, &[LuFid::new(0, 0, 0)]),
        Err(Errno::EINVAL)
    );
    let ghost = LuFid::new(FID_SEQ_BASE, 999, 0);
    assert_eq!(
        e.req(HsmUserAction::Archive, 0, &[ghost]),
        Err(Errno::ENOENT)
    );
    // Admin REMOVE of a missing file is recorded anyway.
    e.req(HsmUserAction::Remove, 0, &[ghost]).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
    // Non-admin owner: RESTORE only by default.
    let user = Caller { uid: 500, gid: 1 };
    let r = UserRequest::whole_files(HsmUserAction::Archive, 0, &[f]);
    assert_eq!(e.c.request(e.now, user, &r), Err(Errno::EPERM));
    e.c.set_param(e.now, "mdt.*.hsm.user_request_mask", "archive restore");
    e.c.request(e.now, user, &r).unwrap();
    // Restoring a file that is not released: not needed, skipped silently.
    e.req(HsmUserAction::Restore, 0, &[f]).unwrap();
    // A DIRTY released file is needed but incompatible.
    let mut a = *e.c.file(f).unwrap();
    a.states = HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED | HsmStates::DIRTY;
    e.c.put_file(f, a);
    assert_eq!(e.req(HsmUserAction::Restore, 0, &[f]), Err(Errno::EPERM));
    // Restore not at offset 0.
    a.states = HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED;
    e.c.put_file(f, a);
    let mut r = UserRequest::whole_files(HsmUserAction::Restore, 0, &[f]);
    r.items[0].1.offset = 4096;
    assert_eq!(e.c.request(e.now, Caller::ROOT, &r), Err(Errno::EPROTO));
    // E2BIG from the client-side size check.
    let many: Vec<LuFid> = (0..60)
        .map(|i| LuFid::new(FID_SEQ_BASE, 5000 + i, 0))
        .collect();
    assert_eq!(e.req(HsmUserAction::Remove, 0, &many), Err(Errno::E2BIG));
    // Stopped coordinator.
    e.c.mdt_mut(0).unwrap().control(e.now, "shutdown").unwrap();
    assert_eq!(e.req(HsmUserAction::Archive, 0, &[f]), Err(Errno::EAGAIN));
}

#[test]
fn nbr_policy_returns_enodata_but_records() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.archived(0);
    let v = e.c.file(f).unwrap().data_version;
    e.c.release(f, v).unwrap();
    e.c.set_param(e.now, "mdt.*.hsm.policy", "+NBR");
    assert_eq!(e.req(HsmUserAction::Restore, 0, &[f]), Err(Errno::ENODATA));
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
    // An empty request is a no-op returning 0, even for RESTORE under NBR.
    assert_eq!(e.req(HsmUserAction::Restore, 0, &[]), Ok(()));
    // A second restore of the same file is dropped by the layout lock.
    assert_eq!(e.req(HsmUserAction::Restore, 0, &[f]), Err(Errno::ENODATA));
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
}

#[test]
fn registration_rules() {
    let mut e = Env::new(2);
    e.c.register(UUID_A, &[1, 2]).unwrap();
    // Second registration from the same client: list ignored, success.
    e.c.register(UUID_A, &[3]).unwrap();
    assert_eq!(&e.c.mdt(1).unwrap().agents()[0].archives, &[1, 2]);
    assert_eq!(
        e.c.mdt_mut(0).unwrap().register(UUID_A, &[]),
        Err(Errno::EEXIST)
    );
    e.c.register(UUID_B, &[0, 5]).unwrap();
    assert!(
        e.c.mdt(0).unwrap().agents()[1].archives.is_empty(),
        "0 = ANY"
    );
    // All or nothing: MDT1 stopped makes registration fail and be undone on MDT0.
    e.c.mdt_mut(1).unwrap().control(e.now, "shutdown").unwrap();
    assert_eq!(e.c.register("other", &[1]), Err(Errno::ENXIO));
    assert_eq!(e.c.mdt(0).unwrap().agents().len(), 2);
    assert_eq!(
        e.c.mdt_mut(0).unwrap().unregister("nobody"),
        Err(Errno::ENOENT)
    );
}

#[test]
fn unregister_keeps_running_requests() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let d = e.tick();
    let cookie = d[0].items[0].cookie;
    e.c.unregister(UUID_A);
    assert_eq!(e.status(cookie, 0), AgentReqStatus::Started);
    // Completion from any mount still works.
    e.end(f, cookie, 0).unwrap();
    assert_eq!(e.status(cookie, 0), AgentReqStatus::Succeed);
    let s = e.c.file(f).unwrap().states;
    assert!(s.contains(HsmStates::EXISTS | HsmStates::ARCHIVED));
}

#[test]
fn dispatch_respects_max_requests_and_batches_per_archive() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let fids: Vec<LuFid> = (0..5).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &fids[..3]).unwrap();
    e.req(HsmUserAction::Archive, 2, &fids[3..]).unwrap();
    let d = e.tick();
    // max_requests = 3: the first three, all archive 1, in one HAL.
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].items.len(), 3);
    assert_eq!(d[0].archive_id, 1);
    assert_eq!(&*d[0].agent, UUID_A);
    assert_eq!(d[0].hal_size(), 32 + 8 + 3 * 72);
    assert!(e.advance(1).is_empty());
    e.end(fids[0], d[0].items[0].cookie, 0).unwrap();
    let d2 = e.advance(1);
    assert_eq!(d2.len(), 1);
    assert_eq!(d2[0].archive_id, 2);
    assert_eq!(d2[0].items.len(), 1);
    // Raise the limit: the last one goes out in its own archive-2 HAL.
    e.c.set_param(e.now, "mdt.*.hsm.max_requests", "100");
    let fids2: Vec<LuFid> = (0..3).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &fids2).unwrap();
    let d3 = e.advance(1);
    let ids: Vec<(u32, usize)> = d3.iter().map(|d| (d.archive_id, d.items.len())).collect();
    assert_eq!(ids, vec![(2, 1), (1, 3)]);
}

#[test]
fn hal_is_split_at_5120_bytes() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.set_param(e.now, "mdt.*.hsm.max_requests", "1000");
    let fids: Vec<LuFid> = (0..150).map(|_| e.file(0)).collect();
    for chunk in fids.chunks(40) {
        e.req(HsmUserAction::Archive, 1, chunk).unwrap();
    }
    let d = e.tick();
    // (5120 - 40) / 72 = 70 items per HAL.
    let sizes: Vec<usize> = d.iter().map(|d| d.items.len()).collect();
    assert_eq!(sizes, vec![70, 70, 10]);
    assert!(d.iter().all(|d| d.hal_size() <= HAL_MAX_SIZE));
    assert_eq!(d[0].hal_size(), 40 + 70 * 72);
}

#[test]
fn least_loaded_agent_is_chosen_not_round_robin() {
    let mut e = Env::new(1);
    e.c.set_param(e.now, "mdt.*.hsm.max_requests", "100");
    e.c.register(UUID_A, &[1]).unwrap();
    e.c.register(UUID_B, &[1, 2]).unwrap();
    e.c.register("c", &[3]).unwrap();
    let f: Vec<LuFid> = (0..4).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &f[..1]).unwrap();
    let d = e.tick();
    assert_eq!(&*d[0].agent, UUID_A, "tie: earliest registered");
    e.req(HsmUserAction::Archive, 1, &f[1..2]).unwrap();
    let d = e.advance(1);
    assert_eq!(&*d[0].agent, UUID_B, "A is busy");
    e.req(HsmUserAction::Archive, 2, &f[2..3]).unwrap();
    let d = e.advance(1);
    assert_eq!(&*d[0].agent, UUID_B, "only B serves archive 2");
    // Archive 4: nobody serves it; stays WAITING.
    e.req(HsmUserAction::Archive, 4, &f[3..4]).unwrap();
    assert!(e.advance(1).is_empty());
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
    let agents = e.c.mdt(0).unwrap().agents();
    assert_eq!(
        (agents[0].current, agents[1].current, agents[2].current),
        (1, 2, 0)
    );
}

#[test]
fn progress_and_completion_errors() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.file(0);
    let other = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    assert_eq!(e.progress(f, c + 50, 0, 10), Err(Errno::ENOENT));
    assert_eq!(e.progress(other, c, 0, 10), Err(Errno::EINVAL));
    assert_eq!(
        e.progress(f, c, 10, u64::MAX),
        Err(Errno::EINVAL),
        "end overflows"
    );
    e.progress(f, c, 0, 100).unwrap();
    e.progress(f, c, 50, 100).unwrap();
    e.progress(f, c, 300, 10).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().active_requests()[0].done, 160);
    let mut p = Progress {
        fid: f,
        cookie: c,
        extent: HsmExtent::WHOLE_FILE,
        flags: HsmProgressFlags::default(),
        errval: 5,
        data_version: None,
    };
    assert_eq!(
        e.c.progress(e.now, &p),
        Err(Errno::EINVAL),
        "errval without COMPLETED"
    );
    p.flags = HsmProgressFlags::COMPLETED | HsmProgressFlags::RETRY;
    // NRA (default): FAILED despite RETRY.
    e.c.progress(e.now, &p).unwrap();
    assert_eq!(e.status(c, 0), AgentReqStatus::Failed);
    assert_eq!(e.end(f, c, 0), Err(Errno::ENOENT), "finished cookie");
    assert_eq!(e.c.mdt(0).unwrap().agents()[0].errors, 1);
}

#[test]
fn retry_without_nra_requeues_same_cookie() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.set_param(e.now, "mdt.*.hsm.policy", "-NRA");
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    let p = Progress {
        fid: f,
        cookie: c,
        extent: HsmExtent::WHOLE_FILE,
        flags: HsmProgressFlags::COMPLETED | HsmProgressFlags::RETRY,
        errval: libc::ETIMEDOUT as u16,
        data_version: None,
    };
    e.c.progress(e.now, &p).unwrap();
    assert_eq!(e.status(c, 0), AgentReqStatus::Waiting);
    let d = e.advance(1);
    assert_eq!(d[0].items[0].cookie, c);
    // ENOSYS always fails.
    e.end(f, c, libc::ENOSYS as u16).unwrap();
    assert_eq!(e.status(c, 0), AgentReqStatus::Failed);
}

#[test]
fn file_flags_through_the_life_cycle() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 3, &[f]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    // EXISTS and the archive id are set at dispatch.
    let a = *e.c.file(f).unwrap();
    assert_eq!(a.states, HsmStates::EXISTS);
    assert_eq!(a.archive_id, 3);
    assert_eq!(e.c.release(f, 1), Err(Errno::EPERM), "not archived yet");
    let p = Progress {
        fid: f,
        cookie: c,
        extent: HsmExtent::WHOLE_FILE,
        flags: HsmProgressFlags::COMPLETED,
        errval: 0,
        data_version: Some(1),
    };
    e.c.progress(e.now, &p).unwrap();
    let a = *e.c.file(f).unwrap();
    assert_eq!(a.states, HsmStates::EXISTS | HsmStates::ARCHIVED);
    assert_eq!(a.archive_version, 1);
    assert_eq!(e.c.release(f, 2), Err(Errno::EPERM), "data version differs");
    e.c.file_modified(f, 1).unwrap();
    assert!(!e.c.file(f).unwrap().states.contains(HsmStates::DIRTY));
    e.c.release(f, 1).unwrap();
    e.c.release(f, 1).unwrap();
    assert!(e.c.file(f).unwrap().states.contains(HsmStates::RELEASED));
    // Restore: swap called with the volatile FID learned from progress.
    e.req(HsmUserAction::Restore, 0, &[f]).unwrap();
    let d = e.advance(1);
    assert_eq!(d[0].archive_id, 3, "archive id from the file");
    let c = d[0].items[0].cookie;
    let vol = e.c.alloc_fid(0);
    e.progress(vol, c, 0, 4096).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().active_requests()[0].item.dfid, vol);
    let mut swapped = None;
    let p = Progress {
        fid: vol,
        cookie: c,
        extent: HsmExtent::WHOLE_FILE,
        flags: HsmProgressFlags::COMPLETED,
        errval: 0,
        data_version: Some(9),
    };
    e.c.progress_with(e.now, &p, |a, b| {
        swapped = Some((a, b));
        Ok(())
    })
    .unwrap();
    assert_eq!(swapped, Some((f, vol)));
    let a = *e.c.file(f).unwrap();
    assert_eq!(a.states, HsmStates::EXISTS | HsmStates::ARCHIVED);
    assert!(!e.c.mdt(0).unwrap().restore_locked(f));
    // Write after archive: dirty. Then a failed archive keeps it dirty, a remove clears all.
    e.c.file_modified(f, 10).unwrap();
    assert!(e.c.file(f).unwrap().states.contains(HsmStates::DIRTY));
    e.req(HsmUserAction::Remove, 0, &[f]).unwrap();
    let c = e.advance(1)[0].items[0].cookie;
    e.end(f, c, 0).unwrap();
    assert_eq!(e.c.file(f).unwrap().states, HsmStates::DIRTY);
}

#[test]
fn failed_archive_of_clean_archived_file_marks_dirty() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.archived(0);
    let r = UserRequest {
        flags: 1, // HSM_FORCE_ACTION: not needed otherwise
        ..UserRequest::whole_files(HsmUserAction::Archive, 0, &[f])
    };
    // Forced but incompatible (archived, not dirty) → EPERM.
    assert_eq!(e.c.request(e.now, Caller::ROOT, &r), Err(Errno::EPERM));
    // A failed archive of a file that is ARCHIVED and not DIRTY marks it DIRTY, except for
    // EALREADY. (Reached by clearing DIRTY while the archive runs.)
    for (errval, dirty) in [(libc::EALREADY, false), (libc::EIO, true)] {
        e.c.file_modified(f, e.now).unwrap();
        e.req(HsmUserAction::Archive, 0, &[f]).unwrap();
        let c = e.advance(1)[0].items[0].cookie;
        e.c.state_set(Caller::ROOT, f, 0, HsmStates::DIRTY.bits().into(), 0)
            .unwrap();
        e.end(f, c, errval as u16).unwrap();
        assert_eq!(e.status(c, 0), AgentReqStatus::Failed);
        assert_eq!(
            e.c.file(f).unwrap().states.contains(HsmStates::DIRTY),
            dirty
        );
    }
}

#[test]
fn incompatible_item_fails_and_rest_of_hal_is_sent() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f: Vec<LuFid> = (0..3).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &f).unwrap();
    // Between admission and dispatch the second file becomes never_archive, the third vanishes.
    e.c.state_set(Caller::ROOT, f[1], HsmStates::NOARCHIVE.bits().into(), 0, 0)
        .unwrap();
    e.c.unlink_file(e.now, f[2]).unwrap();
    let d = e.tick();
    assert_eq!(d[0].items.len(), 1);
    assert_eq!(d[0].items[0].fid, f[0]);
    let statuses: Vec<AgentReqStatus> = e.c.mdt(0).unwrap().records().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            AgentReqStatus::Started,
            AgentReqStatus::Failed,
            AgentReqStatus::Failed
        ]
    );
}

#[test]
fn timeout_cancels_started_and_grace_purges() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.set_param(e.now, "mdt.*.hsm.active_request_timeout", "100");
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    e.now += 90;
    e.progress(f, c, 0, 1).unwrap();
    // 100 s after the last progress, not after dispatch.
    e.advance(100);
    assert_eq!(e.status(c, 0), AgentReqStatus::Started);
    e.advance(10);
    assert_eq!(e.status(c, 0), AgentReqStatus::Canceled);
    assert_eq!(e.end(f, c, 0), Err(Errno::ENOENT));
    let ag = &e.c.mdt(0).unwrap().agents()[0];
    assert_eq!((ag.current, ag.errors), (0, 1));
    // grace_delay 60: deleted at the first housekeeping after change + 60.
    e.advance(60);
    assert!(e.c.mdt(0).unwrap().record_by_cookie(c).is_some());
    e.advance(10);
    assert!(e.c.mdt(0).unwrap().record_by_cookie(c).is_none());
    assert_eq!(e.c.mdt(0).unwrap().records().count(), 0);
}

#[test]
fn cancel_of_active_request() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.register(UUID_B, &[]).unwrap();
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    // A useless cancel (no request for that file) is not recorded.
    let g = e.file(0);
    e.req(HsmUserAction::Cancel, 0, &[g]).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().records().count(), 1);
    e.req(HsmUserAction::Cancel, 0, &[f]).unwrap();
    let d = e.advance(1);
    assert_eq!(d.len(), 1);
    assert_eq!(
        &*d[0].agent, UUID_A,
        "goes to the agent running it, not the idle one"
    );
    assert_eq!(d[0].items[0].action, HsmAction::Cancel);
    assert_eq!(d[0].items[0].cookie, c);
    assert_eq!(e.status(c, 0), AgentReqStatus::Canceled);
    assert_eq!(e.progress(f, c, 0, 10), Err(Errno::ECANCELED));
    assert!(e.c.mdt(0).unwrap().active_requests()[0].canceled);
    e.end(f, c, libc::ECANCELED as u16).unwrap();
    let st: Vec<(HsmAction, AgentReqStatus)> =
        e.c.mdt(0)
            .unwrap()
            .records()
            .map(|r| (r.item.action, r.status))
            .collect();
    assert_eq!(
        st,
        vec![
            (HsmAction::Archive, AgentReqStatus::Canceled),
            (HsmAction::Cancel, AgentReqStatus::Succeed)
        ]
    );
}

#[test]
fn cancel_of_waiting_request_leaves_target_alone() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.set_param(e.now, "mdt.*.hsm.max_requests", "1");
    let f = e.file(0);
    let g = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    e.req(HsmUserAction::Archive, 1, &[g]).unwrap();
    let d = e.tick();
    assert_eq!(d[0].items[0].fid, f);
    let cg = e.c.mdt(0).unwrap().records().nth(1).unwrap().item.cookie;
    e.req(HsmUserAction::Cancel, 0, &[g]).unwrap();
    e.end(f, d[0].items[0].cookie, 0).unwrap();
    // Next scan: g's archive is sent, then its CANCEL in the same HAL (target now active).
    e.c.set_param(e.now, "mdt.*.hsm.max_requests", "2");
    let d = e.advance(1);
    let acts: Vec<HsmAction> = d
        .iter()
        .flat_map(|d| d.items.iter().map(|i| i.action))
        .collect();
    assert_eq!(acts, vec![HsmAction::Archive, HsmAction::Cancel]);
    assert_eq!(e.status(cg, 0), AgentReqStatus::Canceled);
}

#[test]
fn restore_jumps_the_queue() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let r = e.archived(0);
    let v = e.c.file(r).unwrap().data_version;
    e.c.release(r, v).unwrap();
    let f: Vec<LuFid> = (0..3).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &f).unwrap();
    e.req(HsmUserAction::Restore, 0, &[r]).unwrap();
    let d = e.advance(1);
    let acts: Vec<(HsmAction, LuFid)> = d[0].items.iter().map(|i| (i.action, i.fid)).collect();
    assert_eq!(
        acts,
        vec![
            (HsmAction::Archive, f[0]),
            (HsmAction::Archive, f[1]),
            (HsmAction::Restore, r)
        ]
    );
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
}

#[test]
fn purge_cancels_everything() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.register(UUID_B, &[]).unwrap();
    let f: Vec<LuFid> = (0..4).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &f).unwrap();
    let d = e.tick();
    assert_eq!(d[0].items.len(), 3);
    let res =
        e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm_control", "purge");
    assert_eq!(res[0].1, Ok(()));
    let p: Vec<Dispatch> = std::iter::from_fn(|| e.c.poll_dispatch()).collect();
    assert_eq!(p.len(), 3);
    assert!(
        p.iter()
            .all(|d| d.items.len() == 1 && d.items[0].action == HsmAction::Cancel)
    );
    // Least-loaded agent for the archive: B (idle), not A which runs them.
    assert!(p.iter().all(|d| &*d.agent == UUID_B));
    assert!(
        e.c.mdt(0)
            .unwrap()
            .records()
            .all(|r| r.status == AgentReqStatus::Canceled)
    );
    assert_eq!(e.c.mdt(0).unwrap().state(), CdtState::Running);
    // Progress on a purged request: 0, completion still updates the file.
    let c = d[0].items[0].cookie;
    e.progress(f[0], c, 0, 1).unwrap();
    e.end(f[0], c, 0).unwrap();
    assert!(e.c.file(f[0]).unwrap().states.contains(HsmStates::ARCHIVED));
    assert_eq!(e.status(c, 0), AgentReqStatus::Canceled);
}

#[test]
fn hsm_control_transitions() {
    let mut e = Env::new(1);
    let m = e.c.mdt_mut(0).unwrap();
    assert_eq!(m.control(T0, "bogus"), Err(Errno::EINVAL));
    assert_eq!(m.control(T0, "enabledxxxx"), Err(Errno::EINVAL));
    m.control(T0, "disabled").unwrap();
    assert_eq!(m.state(), CdtState::Disable);
    m.control(T0, "help").unwrap();
    m.register(UUID_A, &[]).unwrap();
    e.now += 1;
    let f = e.file(0);
    // Disabled: requests accepted, nothing dispatched.
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    assert!(e.advance(20).is_empty());
    e.c.mdt_mut(0).unwrap().control(e.now, "enabled\n").unwrap();
    assert_eq!(e.advance(1).len(), 1);
    let m = e.c.mdt_mut(0).unwrap();
    m.control(T0, "shutdown").unwrap();
    assert_eq!(m.state(), CdtState::Stopped);
    assert!(m.agents().is_empty());
    assert_eq!(m.control(T0, "shutdown"), Err(Errno::EALREADY));
    m.control(T0, "disabled").unwrap();
    assert_eq!(
        m.state(),
        CdtState::Stopped,
        "disable of a stopped coordinator is a no-op"
    );
    assert_eq!(m.register(UUID_A, &[]), Err(Errno::ENXIO));
    assert_eq!(e.end(f, T0 + 1, 0), Err(Errno::EAGAIN));
}

#[test]
fn restart_requeues_started_restores() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.archived(0);
    let g = e.file(0);
    let v = e.c.file(f).unwrap().data_version;
    e.c.release(f, v).unwrap();
    e.req(HsmUserAction::Restore, 0, &[f]).unwrap();
    e.req(HsmUserAction::Archive, 0, &[g]).unwrap();
    let d = e.advance(1);
    assert_eq!(d[0].items.len(), 2);
    let (cr, ca) = (d[0].items[0].cookie, d[0].items[1].cookie);
    let m = e.c.mdt_mut(0).unwrap();
    m.control(e.now, "shutdown").unwrap();
    m.control(e.now, "enabled").unwrap();
    assert_eq!(e.status(cr, 0), AgentReqStatus::Waiting);
    assert_eq!(e.status(ca, 0), AgentReqStatus::Started);
    assert!(e.c.mdt(0).unwrap().restore_locked(f));
    assert_eq!(e.end(g, ca, 0), Err(Errno::ENOENT));
    // The orphaned STARTED archive times out from its change time.
    e.c.set_param(e.now, "mdt.*.hsm.active_request_timeout", "5");
    e.c.register(UUID_A, &[]).unwrap();
    let d = e.advance(6);
    assert_eq!(d[0].items[0].cookie, cr);
    assert_eq!(e.status(ca, 0), AgentReqStatus::Canceled);
}

#[test]
fn raolu_records_remove_on_last_unlink() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.archived(0);
    e.c.set_param(e.now, "mdt.*.hsm.remove_archive_on_last_unlink", "1");
    e.c.mdt_mut(0).unwrap().control(e.now, "shutdown").unwrap();
    e.c.unlink_file(e.now, f).unwrap();
    let last = e.c.mdt(0).unwrap().records().last().unwrap().clone();
    assert_eq!(last.item.action, HsmAction::Remove);
    assert_eq!(last.status, AgentReqStatus::Waiting);
    assert_eq!(last.archive_id, 1);
}

#[test]
fn state_set_rules_and_current_action() {
    let mut e = Env::new(1);
    let f = e.file(0);
    let user = Caller { uid: 500, gid: 500 };
    assert_eq!(e.c.state_set(user, f, 0x8, 0, 0), Err(Errno::EPERM));
    assert_eq!(
        e.c.state_set(Caller::ROOT, f, 0x8, 0, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        e.c.state_set(Caller::ROOT, f, 0x1000, 0, 0),
        Err(Errno::EINVAL)
    );
    e.c.state_set(user, f, 0x10, 0, 0).unwrap();
    e.c.state_set(Caller::ROOT, f, 0x9, 0, 4).unwrap();
    let a = e.c.file(f).unwrap();
    assert_eq!((a.states.bits(), a.archive_id), (0x19, 4));
    let ca = e.c.current_action(f).unwrap();
    assert_eq!(
        (ca.state, ca.action),
        (ProgressState::None, HsmUserAction::None)
    );
    e.c.state_set(Caller::ROOT, f, 0x2, 0, 0).unwrap();
    e.req(HsmUserAction::Archive, 0, &[f]).unwrap();
    let ca = e.c.current_action(f).unwrap();
    assert_eq!(
        (ca.state, ca.action),
        (ProgressState::Waiting, HsmUserAction::Archive)
    );
    assert_eq!(ca.location, HsmExtent::WHOLE_FILE);
    e.c.register(UUID_A, &[]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    e.progress(f, c, 0, 1000).unwrap();
    let ca = e.c.current_action(f).unwrap();
    assert_eq!(ca.state, ProgressState::Running);
    assert_eq!(
        ca.location,
        HsmExtent {
            offset: 0,
            length: 1000
        }
    );
}

#[test]
fn send_failure_requeues_and_epipe_unregisters() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let d = e.tick();
    e.c.send_failed(e.now, &d[0], Errno::EAGAIN);
    let c = d[0].items[0].cookie;
    assert_eq!(e.status(c, 0), AgentReqStatus::Waiting);
    assert_eq!(e.c.mdt(0).unwrap().agents()[0].current, 0);
    let d = e.advance(1);
    assert_eq!(d.len(), 1);
    e.c.send_failed(e.now, &d[0], Errno::EPIPE);
    assert!(e.c.mdt(0).unwrap().agents().is_empty());
}

// ------------------------------------------------------------------ listings (golden)

#[test]
fn actions_line_matches_real_output() {
    let mut data = b"tag=m".to_vec();
    data.resize(50, b'x');
    let r = Record {
        llog: LlogIndex {
            catalog: 520,
            index: 36052,
        },
        status: AgentReqStatus::Started,
        archive_id: 1,
        flags: 0,
        create: 0,
        change: 0,
        item: HsmActionItem {
            action: HsmAction::Archive,
            fid: "[0x2000057b4:0x1d648:0x0]".parse().unwrap(),
            dfid: "[0x2000057b4:0x1d648:0x0]".parse().unwrap(),
            extent: HsmExtent::WHOLE_FILE,
            cookie: 0x6913bb97,
            gid: 0,
            data,
        },
    };
    let mut s = String::new();
    listing::action_line(&mut s, &r);
    assert_eq!(
        s,
        "lrh=[type=10680000 len=192 idx=520/36052] fid=[0x2000057b4:0x1d648:0x0] dfid=[0x2000057b4:0x1d648:0x0] compound/cookie=0x0/0x6913bb97 action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 datalen=50 status=STARTED data=[7461673D6D]\n"
    );
    // Field 13 is status=, field 6 compound/cookie= (what sanity-hsm parses).
    let fields: Vec<&str> = s.split_whitespace().collect();
    assert!(fields[12].starts_with("status="));
    assert!(fields[5].starts_with("compound/cookie="));
}

#[test]
fn active_requests_and_agents_lines_match_real_output() {
    let a = ActiveInfo {
        item: HsmActionItem {
            action: HsmAction::Archive,
            fid: "[0x200005223:0x1cce:0x0]".parse().unwrap(),
            dfid: "[0x200005223:0x1cce:0x0]".parse().unwrap(),
            extent: HsmExtent::WHOLE_FILE,
            cookie: 0x617d23ef,
            gid: 0,
            data: Vec::new(),
        },
        archive_id: 1,
        flags: 0,
        canceled: false,
        agent: UUID_A.into(),
        done: 0,
        last_progress: 0,
    };
    let mut s = String::new();
    listing::active_line(&mut s, &a);
    assert_eq!(
        s,
        "fid=[0x200005223:0x1cce:0x0] dfid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[] canceled=0 uuid=3185ca0b-2d34-47f6-b156-d6f9ee127a08 done=0\n"
    );
    let ag = AgentInfo {
        uuid: UUID_B.into(),
        archives: vec![1],
        current: 0,
        ok: 10,
        errors: 0,
    };
    let mut s = String::new();
    listing::agent_line(&mut s, &ag);
    assert_eq!(
        s,
        "uuid=d19dc2fe-cec4-43a1-8996-c783b3a70e63 archive_id=1 requests=[current:0 ok:10 errors:0]\n"
    );
    let mut s = String::new();
    listing::agent_line(
        &mut s,
        &AgentInfo {
            archives: vec![],
            ..ag.clone()
        },
    );
    assert!(s.contains(" archive_id=ANY requests="));
    let mut s = String::new();
    listing::agent_line(
        &mut s,
        &AgentInfo {
            archives: vec![1, 2, 30],
            ..ag
        },
    );
    assert!(s.contains(" archive_id=1,2,30 requests="));
}

/// The real 2.15.3 `lctl get_param mdt.*.hsm.*` dump (§9.1), reproduced by driving the model
/// to the same state: one agent with ten successful archives.
#[test]
fn full_dump_matches_real_lctl_output() {
    let mut c = Cluster::new_enabled("fs00", 1, T0);
    c.register(UUID_B, &[1]).unwrap();
    let mut now = T0;
    for _ in 0..10 {
        let f = c.alloc_fid(0);
        c.put_file(f, FileAttrs::default());
        c.request(
            now,
            Caller::ROOT,
            &UserRequest::whole_files(HsmUserAction::Archive, 1, &[f]),
        )
        .unwrap();
        c.tick(now);
        let d = c.poll_dispatch().unwrap();
        let p = Progress {
            fid: f,
            cookie: d.items[0].cookie,
            extent: HsmExtent::WHOLE_FILE,
            flags: HsmProgressFlags::COMPLETED,
            errval: 0,
            data_version: None,
        };
        c.progress(now, &p).unwrap();
        now += 100; // past grace_delay: the records get purged
    }
    c.tick(now);
    let out = c.get_param("mdt.*.hsm.*", true).unwrap();
    let expected = "\
mdt.fs00-MDT0000.hsm.active_request_timeout=3600
mdt.fs00-MDT0000.hsm.archive_count=0
mdt.fs00-MDT0000.hsm.default_archive_id=1
mdt.fs00-MDT0000.hsm.grace_delay=60
mdt.fs00-MDT0000.hsm.loop_period=10
mdt.fs00-MDT0000.hsm.max_requests=3
mdt.fs00-MDT0000.hsm.remove_archive_on_last_unlink=0
mdt.fs00-MDT0000.hsm.remove_count=0
mdt.fs00-MDT0000.hsm.restore_count=0
mdt.fs00-MDT0000.hsm.agents=
uuid=d19dc2fe-cec4-43a1-8996-c783b3a70e63 archive_id=1 requests=[current:0 ok:10 errors:0]
mdt.fs00-MDT0000.hsm.group_request_mask=RESTORE
mdt.fs00-MDT0000.hsm.other_request_mask=RESTORE
mdt.fs00-MDT0000.hsm.policy=NonBlockingRestore [NoRetryAction]
mdt.fs00-MDT0000.hsm.user_request_mask=RESTORE
";
    // The published dump leaves out the two (empty) listings; everything else is identical.
    let without: String = out
        .split_inclusive('\n')
        .filter(|l| {
            !l.starts_with("mdt.fs00-MDT0000.hsm.actions=")
                && !l.starts_with("mdt.fs00-MDT0000.hsm.active_requests=")
        })
        .collect();
    assert_eq!(without, expected);
    assert!(out.contains("mdt.fs00-MDT0000.hsm.actions=\nmdt.fs00-MDT0000.hsm.active_requests=\n"));
    assert_eq!(
        c.get_param("mdt.*.hsm_control", true).unwrap(),
        "mdt.fs00-MDT0000.hsm_control=enabled\n"
    );
    assert_eq!(
        c.get_param("mdt.fs00-MDT0000.hsm_control", false).unwrap(),
        "enabled\n"
    );
    assert_eq!(c.get_param("mdt.*.nothing", true), Err(Errno::ENOENT));
}

#[test]
fn lctl_multiline_values_go_after_a_newline() {
    let mut e = Env::new(2);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.register(UUID_B, &[2]).unwrap();
    let out =
        e.c.get_param("mdt.lustre-MDT0001.hsm.agents", true)
            .unwrap();
    assert_eq!(
        out,
        format!(
            "mdt.lustre-MDT0001.hsm.agents=\nuuid={UUID_A} archive_id=ANY requests=[current:0 ok:0 errors:0]\nuuid={UUID_B} archive_id=2 requests=[current:0 ok:0 errors:0]\n"
        )
    );
    let mut s = String::new();
    listing::lctl_format(&mut s, "a.b", "short\n", true);
    assert_eq!(s, "a.b=short\n");
    // Two MDTs: sysfs of both first, then debugfs of both.
    let names = e.c.param_names();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("mdt.lustre-MDT0001.hsm.restore_count") < pos("mdt.lustre-MDT0000.hsm.actions"));
    assert!(pos("mdt.lustre-MDT0000.hsm.restore_count") < pos("mdt.lustre-MDT0000.hsm_control"));
    assert!(
        pos("mdt.lustre-MDT0000.hsm_control")
            < pos("mdt.lustre-MDT0001.hsm.active_request_timeout")
    );
}

#[test]
fn set_param_results() {
    let mut e = Env::new(2);
    let r = e.c.set_param(e.now, "mdt.*.hsm.max_requests", "0");
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|(_, r)| *r == Err(Errno::EINVAL)));
    let r = e.c.set_param(e.now, "mdt.*.hsm.archive_count", "5");
    assert!(r.iter().all(|(_, r)| *r == Err(Errno::EACCES)));
    let r =
        e.c.set_param(e.now, "mdt.lustre-MDT0001.hsm_control", "disabled");
    assert_eq!(
        r,
        vec![("mdt.lustre-MDT0001.hsm_control".to_owned(), Ok(()))]
    );
    assert_eq!(e.c.mdt(1).unwrap().state(), CdtState::Disable);
    assert_eq!(e.c.set_param(e.now, "nope.*", "1")[0].1, Err(Errno::ENOENT));
}

#[test]
fn listings_parse_back_with_the_lustre_parser() {
    use coordinatool_lustre::active_requests::{ActionRecord, ActiveRequest};
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.file(0);
    let mut r = UserRequest::whole_files(HsmUserAction::Archive, 7, &[f]);
    r.data = b"0123456789".to_vec();
    e.c.request(e.now, Caller::ROOT, &r).unwrap();
    let d = e.tick();
    e.progress(f, d[0].items[0].cookie, 0, 42).unwrap();
    let acts = e.c.get_param("mdt.*.hsm.actions", false).unwrap();
    let rec = ActionRecord::parse_line(acts.trim_end()).unwrap();
    assert_eq!(rec.datalen, 10);
    assert_eq!(rec.data, b"01234");
    assert_eq!(rec.lrh_len, 152);
    assert_eq!((rec.cat_idx, rec.rec_idx), (1, 1));
    assert_eq!(rec.status, AgentReqStatus::Started);
    let act = e.c.get_param("mdt.*.hsm.active_requests", false).unwrap();
    let a = ActiveRequest::parse_line(act.trim_end()).unwrap();
    assert_eq!(a.done, Some(42));
    assert_eq!(a.uuid.as_deref(), Some(UUID_A));
    assert_eq!(a.archive_id, 7);
    // The HAL encodes to exactly the size the batching accounted for.
    assert_eq!(d[0].to_hal().encode().len(), d[0].hal_size());
}

#[test]
fn restore_of_other_archive_jumps_only_in_housekeeping_scans() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let r = e.file(0);
    let mut a = *e.c.file(r).unwrap();
    a.states = HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED;
    a.archive_id = 2;
    e.c.put_file(r, a);
    e.tick(); // housekeeping at T0
    let f: Vec<LuFid> = (0..7).map(|_| e.file(0)).collect();
    e.req(HsmUserAction::Archive, 1, &f).unwrap();
    e.req(HsmUserAction::Restore, 0, &[r]).unwrap();
    // Event scan: the budget ends on an archive; the restore further down waits.
    let d = e.advance(1);
    assert_eq!(d.len(), 1);
    assert!(d[0].items.iter().all(|i| i.action == HsmAction::Archive));
    assert_eq!(d[0].items.len(), 3);
    for it in &d[0].items {
        e.end(it.fid, it.cookie, 0).unwrap();
    }
    // Housekeeping scan (loop_period 10): the archive-1 batch is dropped for the restore.
    e.now = T0 + 10;
    let d = e.tick();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].archive_id, 2);
    assert_eq!(d[0].items.len(), 1);
    assert_eq!(d[0].items[0].fid, r);
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 4);
}

#[test]
fn multi_mdt_request_is_split_and_first_error_returned() {
    let mut e = Env::new(2);
    let a = e.file(0);
    let b = e.file(1);
    let ghost = LuFid::new(FID_SEQ_BASE + FID_SEQ_STRIDE, 999, 0);
    // MDT0 records its item; MDT1 fails on the unknown file after recording b.
    assert_eq!(
        e.req(HsmUserAction::Archive, 1, &[a, b, ghost]),
        Err(Errno::ENOENT)
    );
    assert_eq!(e.c.mdt(0).unwrap().waiting_count(), 1);
    assert_eq!(e.c.mdt(1).unwrap().waiting_count(), 1);
    // Progress is routed by FID: a cookie of MDT1 is unknown on MDT0 and vice versa.
    e.c.register(UUID_A, &[]).unwrap();
    let d = e.tick();
    assert_eq!(d.len(), 2);
    let on1 = d.iter().find(|d| d.mdt == 1).unwrap().items[0].clone();
    assert_eq!(on1.fid, b);
    assert_eq!(e.end(b, on1.cookie, 0), Ok(()));
    assert_eq!(e.end(a, on1.cookie + 1000, 0), Err(Errno::ENOENT));
}

fn cl(e: &Env, mdt: u32) -> Vec<(u64, Option<HsmEvent>, u16, bool, LuFid)> {
    e.c.mdt(mdt)
        .unwrap()
        .changelog(0, 0)
        .map(|r| (r.index, r.event(), r.error(), r.dirty(), r.tfid))
        .collect()
}

#[test]
fn changelog_flags_layout() {
    assert_eq!(hsm_changelog_flags(HsmEvent::Archive, 0, false), 0);
    assert_eq!(hsm_changelog_flags(HsmEvent::Restore, 0, false), 0x80);
    assert_eq!(hsm_changelog_flags(HsmEvent::State, 0, false), 0x280);
    assert_eq!(hsm_changelog_flags(HsmEvent::State, 0, true), 0x680);
    assert_eq!(hsm_changelog_flags(HsmEvent::Archive, 16, true), 0x410);
    assert_eq!(hsm_changelog_flags(HsmEvent::Remove, 0x7E, false), 0x27E);
    assert_eq!(hsm_changelog_flags(HsmEvent::Remove, 0x7F, false), 0x27F);
    assert_eq!(hsm_changelog_flags(HsmEvent::Cancel, 5000, false), 0x17F);
    let r = ChangelogRecord {
        index: 1,
        kind: CL_HSM,
        time: 0,
        flags: 0x6A3,
        tfid: LuFid::new(1, 2, 0),
    };
    assert_eq!(
        (r.event(), r.error(), r.dirty()),
        (Some(HsmEvent::State), 0x23, true)
    );
}

#[test]
fn changelog_records_hsm_events_for_registered_users_only() {
    let mut e = Env::new(2);
    e.c.register(UUID_A, &[]).unwrap();
    // No changelog user: nothing recorded.
    let quiet = e.archived(0);
    assert!(cl(&e, 0).is_empty());
    let user = e.c.mdt_mut(0).unwrap().changelog_register();
    assert_eq!(user, 1);
    let f = e.archived(0);
    e.c.release(f, 1).unwrap();
    // Already released: no second record.
    e.c.release(f, 1).unwrap();
    e.c.state_set(
        Caller::ROOT,
        quiet,
        u64::from(HsmStates::NORELEASE.bits()),
        0,
        0,
    )
    .unwrap();
    // A write to an archived file: HE_STATE with the dirty flag, once.
    e.c.file_modified(quiet, 7).unwrap();
    e.c.file_modified(quiet, 8).unwrap();
    // Failed archive of the dirty file: error and dirty flag.
    e.req(HsmUserAction::Archive, 0, &[quiet]).unwrap();
    let c = e.tick()[0].items[0].cookie;
    e.end(quiet, c, libc::EIO as u16).unwrap();
    // A copytool without cancel support: logged as canceled.
    e.req(HsmUserAction::Restore, 0, &[f]).unwrap();
    let c = e.advance(1)[0].items[0].cookie;
    e.end(f, c, libc::ENOSYS as u16).unwrap();
    assert_eq!(
        cl(&e, 0),
        vec![
            (1, Some(HsmEvent::Archive), 0, false, f),
            (2, Some(HsmEvent::Release), 0, false, f),
            (3, Some(HsmEvent::State), 0, false, quiet),
            (4, Some(HsmEvent::State), 0, true, quiet),
            (5, Some(HsmEvent::Archive), libc::EIO as u16, true, quiet),
            (6, Some(HsmEvent::Restore), libc::ECANCELED as u16, false, f),
        ]
    );
    assert!(cl(&e, 1).is_empty(), "each MDT has its own changelog");
    let r = e.c.mdt(0).unwrap().changelog(2, 3).collect::<Vec<_>>();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].kind, r[0].flags, r[0].time), (CL_HSM, 0x180, T0));
    // Clearing: unknown user ENOENT, past the end EINVAL; records every user cleared go.
    let m = e.c.mdt_mut(0).unwrap();
    assert_eq!(m.changelog_clear(9, 0), Err(Errno::ENOENT));
    assert_eq!(m.changelog_clear(user, 7), Err(Errno::EINVAL));
    // A user registered now only needs what comes next.
    let second = m.changelog_register();
    assert_eq!(m.changelog_users()[1].cleared, 6);
    m.changelog_clear(user, 4).unwrap();
    assert_eq!(
        m.changelog(0, 0).map(|r| r.index).collect::<Vec<_>>(),
        [5, 6]
    );
    m.changelog_clear(second, 0).unwrap();
    assert_eq!(m.changelog(0, 0).count(), 2, "user 1 still needs them");
    assert_eq!(m.changelog_deregister(second), Ok(()));
    assert_eq!(m.changelog_deregister(second), Err(Errno::ENOENT));
    m.changelog_deregister(user).unwrap();
    assert_eq!(m.changelog(0, 0).count(), 0);
}

#[test]
fn changelog_of_timeouts_and_oversized_errors() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.c.mdt_mut(0).unwrap().changelog_register();
    e.c.set_param(e.now, "mdt.*.hsm.active_request_timeout", "100");
    let f = e.file(0);
    let g = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[f, g]).unwrap();
    let d = e.tick();
    let (cf, cg) = (d[0].items[0].cookie, d[0].items[1].cookie);
    // An error that does not fit the 7-bit field: overflow in the log, EINVAL back.
    assert_eq!(e.end(g, cg, 200), Err(Errno::EINVAL));
    assert_eq!(e.status(cg, 0), AgentReqStatus::Failed);
    e.advance(110);
    assert_eq!(e.status(cf, 0), AgentReqStatus::Canceled);
    assert_eq!(
        cl(&e, 0),
        vec![
            (1, Some(HsmEvent::Archive), CLF_HSM_ERROVERFLOW, false, g),
            (2, Some(HsmEvent::Archive), libc::ECANCELED as u16, false, f),
        ]
    );
}

#[test]
fn read_only_export_refuses_everything_but_restore() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    let f = e.archived(0);
    e.c.release(f, 1).unwrap();
    let g = e.file(0);
    let ro = |e: &mut Env, a, fids: &[LuFid]| {
        let r = UserRequest::whole_files(a, 0, fids);
        e.c.request_from(e.now, Caller::ROOT, true, &r)
    };
    assert_eq!(ro(&mut e, HsmUserAction::Archive, &[g]), Err(Errno::EROFS));
    assert_eq!(ro(&mut e, HsmUserAction::Remove, &[f]), Err(Errno::EROFS));
    let before = e.c.mdt(0).unwrap().records().count();
    ro(&mut e, HsmUserAction::Restore, &[f]).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().records().count(), before + 1);
    assert_eq!(ro(&mut e, HsmUserAction::Cancel, &[f]), Err(Errno::EROFS));
    // Items before the refused one stay recorded.
    let h = e.file(0);
    e.req(HsmUserAction::Archive, 1, &[h]).unwrap();
    e.tick();
    let r = UserRequest::whole_files(HsmUserAction::Restore, 0, &[f]);
    assert_eq!(e.c.request_from(e.now, Caller::ROOT, false, &r), Ok(()));
}

#[test]
fn max_requests_sum_is_capped_at_an_eighth_of_ram() {
    let mut e = Env::new(2);
    // 64 MiB of RAM: 8 MiB for requests = 2048 four-KiB units over both MDTs.
    e.c.set_ram_bytes(64 << 20);
    assert_eq!(e.c.max_requests_cap(), 2048);
    let r =
        e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm.max_requests", "2045");
    assert_eq!(r[0].1, Ok(()));
    let r =
        e.c.set_param(e.now, "mdt.lustre-MDT0001.hsm.max_requests", "4");
    assert_eq!(r[0].1, Err(Errno::ENOMEM));
    assert_eq!(e.c.mdt(1).unwrap().tunables().max_requests, 3);
    let r = e.c.set_param(e.now, "mdt.*.hsm.max_requests", "1024");
    assert_eq!(r.iter().map(|x| x.1).collect::<Vec<_>>(), [Ok(()), Ok(())]);
    let r =
        e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm.max_requests", "0");
    assert_eq!(r[0].1, Err(Errno::EINVAL), "0 is still EINVAL, not ENOMEM");
    // The machine's RAM by default: the Lustre default fits anywhere.
    let c = Cluster::new("lustre", 1);
    assert!(c.ram_bytes() > 1 << 20);
}

#[test]
fn purge_waits_for_the_coordinator_thread_and_can_be_interrupted() {
    let mut e = Env::new(1);
    e.c.register(UUID_A, &[]).unwrap();
    e.tick();
    let f = e.file(0);
    // A request just flagged the thread: it is busy, the purge waits for its next wake-up.
    e.req(HsmUserAction::Archive, 1, &[f]).unwrap();
    let r =
        e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm_control", "purge");
    assert_eq!(r[0].1, Ok(()));
    let m = e.c.mdt(0).unwrap();
    assert_eq!(m.purge_status(), PurgeStatus::Waiting);
    assert_eq!(m.state(), CdtState::Disable);
    assert!(e.c.purge_waiting() && e.c.wants_scan());
    assert_eq!(m.records().next().unwrap().status, AgentReqStatus::Waiting);
    // The interrupted writer gets EINTR; nothing was canceled, the state is back.
    assert_eq!(e.c.mdt_mut(0).unwrap().interrupt_purge(), Err(Errno::EINTR));
    let m = e.c.mdt(0).unwrap();
    assert_eq!(
        (m.purge_status(), m.state()),
        (PurgeStatus::Idle, CdtState::Running)
    );
    assert_eq!(m.records().next().unwrap().status, AgentReqStatus::Waiting);
    // Again, and this time the thread wakes: it scans nothing, the purge runs.
    e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm_control", "purge");
    assert!(
        e.advance(1).is_empty(),
        "the flagged work is not dispatched"
    );
    let m = e.c.mdt(0).unwrap();
    assert_eq!(
        (m.purge_status(), m.state()),
        (PurgeStatus::Idle, CdtState::Running)
    );
    assert_eq!(m.records().next().unwrap().status, AgentReqStatus::Canceled);
    assert_eq!(e.c.mdt_mut(0).unwrap().interrupt_purge(), Ok(()));
    // A housekeeping scan due also keeps the thread busy; a disabled coordinator stays so.
    e.c.mdt_mut(0).unwrap().control(e.now, "disabled").unwrap();
    e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm_control", "purge");
    assert_eq!(e.c.mdt(0).unwrap().purge_status(), PurgeStatus::Idle);
    e.c.mdt_mut(0).unwrap().control(e.now, "enabled").unwrap();
    e.now += 30;
    e.c.set_param(e.now, "mdt.lustre-MDT0000.hsm_control", "purge");
    assert_eq!(e.c.mdt(0).unwrap().purge_status(), PurgeStatus::Waiting);
    e.c.mdt_mut(0).unwrap().control(e.now, "shutdown").unwrap();
    assert_eq!(e.c.mdt(0).unwrap().purge_status(), PurgeStatus::Idle);
    assert_eq!(e.c.mdt(0).unwrap().state(), CdtState::Stopped);
}

#[test]
fn admin_remove_of_a_gone_file_without_archive_id_goes_to_every_archive() {
    let mut e = Env::new(1);
    let ghost = LuFid::new(FID_SEQ_BASE, 4242, 0);
    e.req(HsmUserAction::Remove, 0, &[ghost]).unwrap();
    let r = e.c.mdt(0).unwrap().records().next().unwrap().clone();
    assert_eq!((r.archive_id, r.item.action), (0, HsmAction::Remove));
    // No agent: stays WAITING.
    assert!(e.advance(1).is_empty());
    e.c.register(UUID_A, &[3, 1]).unwrap();
    e.c.register(UUID_B, &[1, 7]).unwrap();
    // The scan that meets it records one REMOVE per archive served and closes it.
    assert!(e.advance(1).is_empty());
    let recs: Vec<(u32, AgentReqStatus, u64)> =
        e.c.mdt(0)
            .unwrap()
            .records()
            .map(|r| (r.archive_id, r.status, r.item.cookie))
            .collect();
    let c0 = r.item.cookie;
    assert_eq!(
        recs,
        vec![
            (0, AgentReqStatus::Succeed, c0),
            (3, AgentReqStatus::Waiting, c0 + 1),
            (1, AgentReqStatus::Waiting, c0 + 2),
            (7, AgentReqStatus::Waiting, c0 + 3),
        ]
    );
    let d = e.advance(1);
    let mut sent: Vec<(u32, &str)> = d.iter().map(|d| (d.archive_id, &*d.agent)).collect();
    sent.sort();
    assert_eq!(sent, vec![(1, UUID_B), (3, UUID_A), (7, UUID_B)]);
    assert!(d.iter().all(|d| d.items[0].fid == ghost));
    // With an agent serving ANY the record goes to it as is.
    let mut e = Env::new(1);
    e.req(HsmUserAction::Remove, 0, &[ghost]).unwrap();
    e.c.register(UUID_A, &[2]).unwrap();
    e.c.register(UUID_B, &[]).unwrap();
    let d = e.advance(1);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].archive_id, &*d[0].agent), (0, UUID_B));
    // An existing file never gets archive id 0.
    let f = e.file(0);
    e.c.put_file(
        f,
        FileAttrs {
            states: HsmStates::EXISTS | HsmStates::ARCHIVED,
            ..*e.c.file(f).unwrap()
        },
    );
    e.req(HsmUserAction::Remove, 0, &[f]).unwrap();
    assert_eq!(e.c.mdt(0).unwrap().records().last().unwrap().archive_id, 1);
}
