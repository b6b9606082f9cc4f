//! Scenario tests of the engine, one behaviour each.

use crate::*;
use coordinatool_lustre::{HsmAction, LuFid};

const SEC: u64 = 1_000_000_000;

fn t(s: u64) -> Time {
    Time(1_700_000_000 * SEC + s * SEC)
}

fn req(action: HsmAction, n: u64, archive_id: u32, data: &[u8]) -> Request {
    let fid = LuFid::new(0x200000400 + n, n as u32, 0);
    Request {
        action,
        cookie: 0x1000 + n,
        dfid: fid,
        fid,
        extent_offset: 0,
        extent_length: u64::MAX,
        gid: 0,
        archive_id,
        hal_flags: 0,
        data: data.into(),
        timestamp: t(0),
        mdt_index: Some(0),
        owner: None,
    }
}

fn archive(n: u64) -> Request {
    req(HsmAction::Archive, n, 1, b"")
}

struct H {
    e: Engine,
    log: Vec<Action>,
}

impl H {
    fn new(cfg: Config) -> Self {
        H {
            e: Engine::new(cfg).unwrap(),
            log: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.e.poll_action() {
            out.push(a);
        }
        self.e.check_invariants().unwrap();
        self.log.extend(out.iter().cloned());
        out
    }

    fn deliveries(&mut self) -> Vec<Delivery> {
        self.drain()
            .into_iter()
            .filter_map(|a| match a {
                Action::Deliver(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn mover(&mut self, id: &str, archives: &[u32], now: Time) -> ClientId {
        let c = self.e.connect(&format!("{id}:1"), now);
        self.e
            .ehlo(
                c,
                Ehlo {
                    id: Some(id.into()),
                    archive_ids: archives.to_vec(),
                    running: Vec::new(),
                },
                now,
            )
            .unwrap();
        c
    }

    fn recv(&mut self, c: ClientId, limits: RecvLimits, now: Time) {
        self.e.recv(c, limits, now).unwrap();
    }

    fn add(&mut self, r: Request, now: Time) {
        assert_eq!(self.e.new_request(r, now), Ok(Intake::New));
    }
}

fn limits(archive: Option<u32>, restore: Option<u32>, remove: Option<u32>) -> RecvLimits {
    RecvLimits {
        max_archive: archive,
        max_restore: restore,
        max_remove: remove,
        max_bytes: 1 << 20,
    }
}

fn cookies(d: &Delivery) -> Vec<u64> {
    d.items.iter().map(|r| r.cookie).collect()
}

#[test]
fn duplicate_requests_are_skipped_and_counted() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    assert_eq!(h.e.new_request(archive(1), t(0)), Ok(Intake::Duplicate));
    let s = h.e.queue([archive(1), archive(2)], t(0));
    assert_eq!((s.enqueued, s.skipped), (1, 1));
    assert_eq!(h.e.duplicates(), 2);
    assert_eq!(h.e.pending().archive, 2);
    let news = h
        .drain()
        .into_iter()
        .filter(|a| matches!(a, Action::Persist(PersistOp::New(_))))
        .count();
    assert_eq!(news, 2);
}

#[test]
fn intake_rejects_cancel_and_zero_archive_id_in_queue() {
    let mut h = H::new(Config::default());
    assert_eq!(
        h.e.new_request(req(HsmAction::Cancel, 1, 1, b""), t(0)),
        Err(IntakeError::NotSchedulable(HsmAction::Cancel))
    );
    let s =
        h.e.queue([req(HsmAction::Archive, 2, 0, b""), archive(3)], t(0));
    assert_eq!(s.enqueued, 1);
    assert_eq!(s.errors, vec![(0, IntakeError::ArchiveIdZero)]);
}

#[test]
fn queue_fills_missing_timestamp() {
    let mut h = H::new(Config::default());
    let mut r = archive(1);
    r.timestamp = Time(0);
    h.e.queue([r], t(5));
    let m = h.mover("m", &[], t(5));
    h.recv(m, RecvLimits::default(), t(5));
    assert_eq!(h.deliveries()[0].items[0].timestamp, t(5));
}

#[test]
fn recv_long_poll_is_answered_when_work_arrives() {
    let mut h = H::new(Config::default());
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    assert!(h.deliveries().is_empty(), "no empty reply");
    assert_eq!(h.e.client_state(m), Some(ClientState::Waiting));
    h.add(archive(1), t(1));
    let d = h.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].client, m);
    assert_eq!(cookies(&d[0]), vec![0x1001]);
    assert_eq!(h.e.client_state(m), Some(ClientState::Ready));
    assert_eq!(h.e.running().archive, 1);
}

#[test]
fn queue_command_serves_waiting_clients() {
    let mut h = H::new(Config::default());
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.e.queue([archive(1)], t(0));
    assert_eq!(h.deliveries().len(), 1);
}

#[test]
fn recv_state_and_budget_errors() {
    let mut h = H::new(Config::default());
    let c = h.e.connect("x:1", t(0));
    assert_eq!(
        h.e.recv(c, RecvLimits::default(), t(0)),
        Err(EngineError::NotReady)
    );
    h.e.ehlo(c, Ehlo::default(), t(0)).unwrap();
    assert_eq!(
        h.e.ehlo(c, Ehlo::default(), t(0)),
        Err(EngineError::EhloTwice)
    );
    let small = RecvLimits {
        max_bytes: 171,
        ..RecvLimits::default()
    };
    assert_eq!(
        h.e.recv(c, small, t(0)),
        Err(EngineError::BufferTooSmall(171))
    );
    h.recv(c, RecvLimits::default(), t(0));
    assert_eq!(
        h.e.recv(c, RecvLimits::default(), t(0)),
        Err(EngineError::NotReady)
    );
}

#[test]
fn ehlo_rejects_bad_archive_ids_and_duplicate_ids() {
    let mut h = H::new(Config::default());
    let c = h.e.connect("x:1", t(0));
    let bad = Ehlo {
        archive_ids: vec![1, 0],
        ..Ehlo::default()
    };
    assert_eq!(h.e.ehlo(c, bad, t(0)), Err(EngineError::BadArchiveId(0)));
    h.mover("m", &[], t(0));
    let c2 = h.e.connect("y:1", t(0));
    let dup = Ehlo {
        id: Some("m".into()),
        ..Ehlo::default()
    };
    assert_eq!(
        h.e.ehlo(c2, dup, t(0)),
        Err(EngineError::IdInUse("m".into()))
    );
}

#[test]
fn per_kind_limits_are_respected_and_released_by_done() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    for n in 0..5 {
        h.add(archive(n), t(0));
    }
    let m = h.mover("m", &[], t(0));
    h.recv(m, limits(Some(2), None, None), t(0));
    let d = h.deliveries();
    assert_eq!(d[0].items.len(), 2);
    h.recv(m, limits(Some(2), None, None), t(0));
    assert!(h.deliveries().is_empty(), "at its limit: waits");
    let key = d[0].items[0].key();
    assert_eq!(h.e.done(m, key, 0, t(1)), DoneOutcome::Finished);
    let d2 = h.deliveries();
    assert_eq!(
        d2.len(),
        1,
        "the done freed one slot for the waiting client"
    );
    assert_eq!(d2[0].items.len(), 1);
    assert_eq!(h.e.status(false).clients[0].current.archive, 2);
    assert_eq!(h.e.done_count().archive, 1);
}

#[test]
fn byte_budget_is_never_exceeded() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    for n in 0..100 {
        h.add(req(HsmAction::Archive, n, 1, &[b'x'; 50]), t(0));
    }
    let m = h.mover("m", &[], t(0));
    let lim = RecvLimits {
        max_bytes: 1000,
        ..RecvLimits::default()
    };
    h.recv(m, lim, t(0));
    let d = h.deliveries();
    let bytes: u64 = d[0].items.iter().map(Request::budget_cost).sum();
    assert!(bytes <= 1000);
    // 194 bytes each: 5 fit (970), and the rest of the budget is below the 172 margin.
    assert_eq!(d[0].items.len(), 5);
}

#[test]
fn item_larger_than_whole_budget_is_sent_alone() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    h.add(req(HsmAction::Restore, 1, 1, &[b'x'; 500]), t(0));
    h.add(archive(2), t(0));
    let m = h.mover("m", &[], t(0));
    let lim = RecvLimits {
        max_bytes: 300,
        ..RecvLimits::default()
    };
    // 644 bytes never fit in 300: rather than wait forever for a bigger mover, it goes
    // alone (the restore first: it has the higher priority).
    h.recv(m, lim, t(0));
    let d = h.deliveries();
    assert_eq!(cookies(&d[0]), vec![0x1001]);
    assert_eq!(h.e.pending().restore, 0);
    h.recv(m, lim, t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1002]);
}

#[test]
fn item_too_big_for_the_rest_of_a_reply_waits_for_the_next() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    h.add(req(HsmAction::Restore, 1, 1, b""), t(0));
    h.add(req(HsmAction::Restore, 2, 1, &[b'x'; 800]), t(0));
    h.add(archive(3), t(0));
    let m = h.mover("m", &[], t(0));
    let lim = RecvLimits {
        max_bytes: 1000,
        ..RecvLimits::default()
    };
    // 144 + 944 > 1000 bytes: the big restore is skipped for this reply, the archive is not.
    h.recv(m, lim, t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001, 0x1003]);
    h.recv(m, lim, t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1002]);
}

#[test]
fn one_archive_id_and_flags_per_reply_and_client_filter() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    h.add(req(HsmAction::Archive, 1, 1, b""), t(0));
    h.add(req(HsmAction::Archive, 2, 2, b""), t(0));
    let mut flagged = req(HsmAction::Archive, 3, 1, b"");
    flagged.hal_flags = 4;
    h.add(flagged, t(0));
    h.add(req(HsmAction::Archive, 4, 3, b""), t(0));
    let m = h.mover("m", &[1, 2], t(0));
    let mut seen = Vec::new();
    for _ in 0..3 {
        h.recv(m, RecvLimits::default(), t(0));
        for d in h.deliveries() {
            assert!(
                d.items
                    .iter()
                    .all(|r| r.archive_id == d.archive_id && r.hal_flags == d.hal_flags)
            );
            assert!(d.archive_id == 1 || d.archive_id == 2);
            seen.extend(cookies(&d));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0x1001, 0x1002, 0x1003]);
    assert_eq!(h.e.pending().archive, 1, "archive id 3 stays queued");
}

#[test]
fn done_for_unknown_key_is_harmless_and_truncated_cookie_matches() {
    let mut h = H::new(Config::default());
    let m = h.mover("m", &[], t(0));
    assert_eq!(h.e.done(m, archive(9).key(), 0, t(0)), DoneOutcome::Unknown);
    let mut big = archive(1);
    big.cookie = 0x0000_0007_8000_0001;
    h.add(big.clone(), t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.drain();
    // Old C clients send the cookie as a signed 32-bit int, read back sign-extended.
    let truncated = RequestKey {
        cookie: 0x8000_0001u32 as i32 as i64 as u64,
        dfid: big.dfid,
    };
    assert_eq!(h.e.done(m, truncated, 0, t(1)), DoneOutcome::Finished);
    assert_eq!(h.e.running().archive, 0);
    assert_eq!(h.e.done(m, big.key(), 0, t(1)), DoneOutcome::Unknown);
}

#[test]
fn truncated_cookie_is_refused_when_ambiguous() {
    let mut h = H::new(Config::default());
    let mut a = archive(1);
    a.cookie = 0x1_0000_0005;
    let mut b = archive(1);
    b.cookie = 0x2_0000_0005;
    h.add(a.clone(), t(0));
    h.add(b, t(0));
    let m = h.mover("m", &[], t(0));
    let k = RequestKey {
        cookie: 5,
        dfid: a.dfid,
    };
    assert_eq!(h.e.done(m, k, 0, t(0)), DoneOutcome::Unknown);
    assert_eq!(h.e.pending().archive, 2);
}

#[test]
fn done_credits_the_owner_not_the_sender() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    let a = h.mover("a", &[], t(0));
    let b = h.mover("b", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    let d = h.deliveries();
    assert_eq!(d[0].client, a);
    h.e.done(b, d[0].items[0].key(), 0, t(1));
    h.drain();
    let st = h.e.status(false);
    let sa = st.clients.iter().find(|c| c.client_id == "a").unwrap();
    let sb = st.clients.iter().find(|c| c.client_id == "b").unwrap();
    assert_eq!((sa.current.archive, sa.done.archive), (0, 1));
    assert_eq!((sb.current.archive, sb.done.archive), (0, 0));
}

#[test]
fn done_for_a_queued_request_finishes_it_cleanly() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    let m = h.mover("m", &[], t(0));
    assert_eq!(
        h.e.done(m, archive(1).key(), 0, t(0)),
        DoneOutcome::Finished
    );
    h.drain();
    assert_eq!(h.e.pending().archive, 0);
    assert_eq!(h.e.done_count().archive, 1);
}

#[test]
fn disconnected_client_keeps_work_for_grace_then_requeues() {
    let mut h = H::new(Config {
        client_grace_ms: 10_000,
        ..Config::default()
    });
    h.add(archive(1), t(0));
    let a = h.mover("a", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    h.drain();
    h.e.disconnect(a, t(1)).unwrap();
    assert_eq!(h.e.running().archive, 1, "kept during grace");
    assert_eq!(h.e.poll_timeout(), Some(t(11)));
    let b = h.mover("b", &[], t(2));
    h.recv(b, RecvLimits::default(), t(2));
    assert!(h.deliveries().is_empty());
    h.e.handle_timeout(t(10));
    assert!(h.deliveries().is_empty(), "not yet expired");
    h.e.handle_timeout(t(11));
    let acts = h.drain();
    assert!(acts.contains(&Action::Persist(PersistOp::Unassigned {
        key: archive(1).key()
    })));
    let d: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].client, b);
    assert_eq!(h.e.client_state(a), None, "record freed");
    assert_eq!(h.e.poll_timeout(), None);
}

#[test]
fn reconnect_takes_over_with_exact_counters_and_reconciles() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    for n in 1..=3 {
        h.add(archive(n), t(0));
    }
    let a = h.mover("a", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    assert_eq!(h.deliveries()[0].items.len(), 3);
    h.e.disconnect(a, t(1)).unwrap();
    // Reconnects running 1 and 2 (not 3), and an item the engine never saw (4).
    let a2 = h.e.connect("a:2", t(2));
    h.e.ehlo(
        a2,
        Ehlo {
            id: Some("a".into()),
            archive_ids: vec![],
            running: vec![archive(1), archive(2), archive(4)],
        },
        t(2),
    )
    .unwrap();
    let acts = h.drain();
    assert!(acts.contains(&Action::Persist(PersistOp::Unassigned {
        key: archive(3).key()
    })));
    assert!(acts.contains(&Action::Persist(PersistOp::New(archive(4)))));
    let st = h.e.status(false);
    assert_eq!(st.clients.len(), 1);
    assert_eq!(st.clients[0].current.archive, 3);
    assert_eq!(h.e.running().archive, 3);
    assert_eq!(h.e.pending().archive, 1);
    // The three dones bring its counters to exactly zero.
    for n in [1, 2, 4] {
        assert_eq!(
            h.e.done(a2, archive(n).key(), 0, t(3)),
            DoneOutcome::Finished
        );
    }
    h.drain();
    let st = h.e.status(false);
    assert_eq!(st.clients[0].current.archive, 0);
    assert_eq!(h.e.poll_timeout(), None, "old record's expiry is gone");
}

/// What a reconnecting client no longer runs is re-queued by its ehlo and goes at once to a
/// client already waiting, without another trigger (upstream waited for the next recv,
/// §9.4.8).
#[test]
fn ehlo_leftovers_go_at_once_to_a_waiting_client() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    h.add(archive(1), t(0));
    h.add(archive(2), t(0));
    let a = h.mover("a", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001, 0x1002]);
    h.e.disconnect(a, t(1)).unwrap();
    let b = h.mover("b", &[], t(1));
    h.recv(b, RecvLimits::default(), t(1));
    assert!(
        h.deliveries().is_empty(),
        "both run on a (within its grace)"
    );
    let a2 = h.e.connect("a:2", t(2));
    h.e.ehlo(
        a2,
        Ehlo {
            id: Some("a".into()),
            archive_ids: vec![],
            running: vec![archive(1)],
        },
        t(2),
    )
    .unwrap();
    let d = h.deliveries();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].client, cookies(&d[0])), (b, vec![0x1002]));
    assert_eq!(h.e.client_state(b), Some(ClientState::Ready));
    assert_eq!(h.e.running().archive, 2);
    assert_eq!(h.e.pending().archive, 0);
}

#[test]
fn anonymous_disconnect_requeues_at_once_and_serves_others() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    let anon = h.e.connect("anon:1", t(0));
    h.e.ehlo(anon, Ehlo::default(), t(0)).unwrap();
    h.recv(anon, RecvLimits::default(), t(0));
    h.drain();
    let b = h.mover("b", &[], t(0));
    h.recv(b, RecvLimits::default(), t(0));
    assert!(h.deliveries().is_empty());
    h.e.disconnect(anon, t(1)).unwrap();
    let d = h.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].client, b);
}

#[test]
fn cancel_of_queued_request_reports_ecanceled() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    h.drain();
    let c = req(HsmAction::Cancel, 1, 1, b"");
    assert_eq!(h.e.cancel(c.clone(), t(1)), CancelOutcome::Cancelled);
    let acts = h.drain();
    assert!(acts.contains(&Action::ReportCancelled { cancel: c.clone() }));
    assert!(acts.contains(&Action::Persist(PersistOp::Finished { key: c.key() })));
    assert_eq!(h.e.pending().archive, 0);
    assert_eq!(h.e.cancel(c, t(2)), CancelOutcome::Unknown);
}

#[test]
fn cancel_of_running_request_goes_first_to_its_mover() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    h.add(archive(2), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, limits(Some(1), None, None), t(0));
    let first = h.deliveries()[0].items[0].clone();
    let c = Request {
        action: HsmAction::Cancel,
        ..first.clone()
    };
    assert_eq!(h.e.cancel(c, t(1)), CancelOutcome::Forwarded);
    assert_eq!(h.e.status(false).pending_cancel, 1);
    h.recv(m, limits(Some(1), None, None), t(1));
    let d = h.deliveries();
    assert_eq!(
        d[0].items.len(),
        1,
        "at its archive limit: only the cancel goes"
    );
    assert_eq!(d[0].items[0].action, HsmAction::Cancel);
    assert_eq!(d[0].items[0].cookie, first.cookie);
    let st = h.e.status(false);
    assert_eq!((st.pending_cancel, st.done_cancel), (0, 1));
    // The mover acks both the cancel and the request: the second is harmless.
    assert_eq!(h.e.done(m, first.key(), 125, t(2)), DoneOutcome::Finished);
    assert_eq!(h.e.done(m, first.key(), 125, t(2)), DoneOutcome::Unknown);
    h.recv(m, limits(Some(1), None, None), t(2));
    let d = h.deliveries();
    assert_eq!(
        cookies(&d[0]),
        vec![0x1002],
        "the second archive goes after the done"
    );
}

#[test]
fn pending_cancel_is_resolved_when_grace_expires() {
    let mut h = H::new(Config {
        client_grace_ms: 1000,
        ..Config::default()
    });
    h.add(archive(1), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.drain();
    h.e.disconnect(m, t(1)).unwrap();
    let c = req(HsmAction::Cancel, 1, 1, b"");
    assert_eq!(h.e.cancel(c.clone(), t(1)), CancelOutcome::Forwarded);
    h.e.handle_timeout(t(2));
    let acts = h.drain();
    assert!(acts.contains(&Action::ReportCancelled { cancel: c }));
    assert_eq!(h.e.pending().archive + h.e.running().archive, 0);
    assert_eq!(h.e.status(false).pending_cancel, 0);
}

#[test]
fn pending_cancel_follows_a_reconnecting_client() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.drain();
    h.e.disconnect(m, t(1)).unwrap();
    h.e.cancel(req(HsmAction::Cancel, 1, 1, b""), t(1));
    let m2 = h.e.connect("m:2", t(2));
    h.e.ehlo(
        m2,
        Ehlo {
            id: Some("m".into()),
            archive_ids: vec![],
            running: vec![archive(1)],
        },
        t(2),
    )
    .unwrap();
    h.recv(m2, RecvLimits::default(), t(2));
    let d = h.deliveries();
    assert_eq!(d[0].items[0].action, HsmAction::Cancel);
}

#[test]
fn lock_stops_dispatch_and_unlock_resumes() {
    let mut h = H::new(Config::default());
    let m = h.mover("m", &[], t(0));
    h.e.set_lock(LockState::Locked, t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.add(archive(1), t(0));
    assert!(h.deliveries().is_empty());
    h.e.set_lock(LockState::Unlocked, t(1));
    assert_eq!(h.deliveries().len(), 1);
}

#[test]
fn lock_and_quit_shuts_down_when_nothing_runs() {
    let mut h = H::new(Config::default());
    h.add(archive(1), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    h.drain();
    h.e.set_lock(LockState::LockAndQuit, t(1));
    assert!(!h.drain().contains(&Action::Shutdown));
    h.e.done(m, archive(1).key(), 0, t(2));
    let acts = h.drain();
    assert_eq!(acts.iter().filter(|a| **a == Action::Shutdown).count(), 1);
    let mut idle = H::new(Config::default());
    idle.e.set_lock(LockState::LockAndQuit, t(0));
    assert!(idle.drain().contains(&Action::Shutdown));
}

#[test]
fn restores_go_before_removes_before_archives() {
    let mut h = H::new(Config {
        spread: false,
        ..Config::default()
    });
    h.add(archive(1), t(0));
    h.add(req(HsmAction::Remove, 2, 1, b""), t(0));
    h.add(req(HsmAction::Restore, 3, 1, b""), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    let d = h.deliveries();
    assert_eq!(cookies(&d[0]), vec![0x1003, 0x1002, 0x1001]);
}

#[test]
fn aging_lets_a_starving_kind_through() {
    let mut strict = H::new(Config {
        spread: false,
        priorities: Priorities {
            aging_ms: 0,
            ..Priorities::default()
        },
        ..Config::default()
    });
    strict.add(archive(100), t(0));
    strict.add(req(HsmAction::Restore, 1, 1, b""), t(0));
    let m2 = strict.mover("m", &[], t(0));
    strict.recv(m2, limits(None, None, None), t(100));
    assert_eq!(strict.deliveries()[0].items[0].action, HsmAction::Restore);
    // With aging, after 30 s of waiting the archive partition outranks restores that were
    // just served (the restore partition's age restarts at each service).
    let mut aged = H::new(Config {
        spread: false,
        priorities: Priorities {
            aging_ms: 10_000,
            ..Priorities::default()
        },
        ..Config::default()
    });
    aged.add(archive(100), t(0));
    let m3 = aged.mover("m", &[], t(0));
    for n in 0..5 {
        aged.add(req(HsmAction::Restore, n, 1, b""), t(30));
    }
    aged.recv(
        m3,
        RecvLimits {
            // Room for exactly two 144-byte items with the 172-byte margin.
            max_bytes: 2 * 144 + 100,
            ..RecvLimits::default()
        },
        t(30),
    );
    let d = aged.deliveries();
    assert_eq!(d[0].items.len(), 2);
    assert_eq!(
        d[0].items[0].action,
        HsmAction::Archive,
        "aged 30 s > 2 levels of 10 s"
    );
}

#[test]
fn priority_tag_orders_within_a_kind() {
    let mut h = H::new(Config {
        spread: false,
        priorities: Priorities {
            tag: Some("prio=".into()),
            ..Priorities::default()
        },
        ..Config::default()
    });
    h.add(req(HsmAction::Archive, 1, 1, b"prio=1"), t(0));
    h.add(req(HsmAction::Archive, 2, 1, b"x=1,prio=5"), t(0));
    h.add(req(HsmAction::Archive, 3, 1, b""), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1002, 0x1001, 0x1003]);
}

#[test]
fn fair_share_serves_a_small_user_early() {
    let mut h = H::new(Config {
        spread: false,
        fair_share: Some(FairShare {
            key: ShareKey::Uid,
            weights: vec![],
            default_weight: 1,
        }),
        ..Config::default()
    });
    for n in 0..1000 {
        let mut r = archive(n);
        r.owner = Some(Owner {
            uid: 1,
            gid: 1,
            projid: 0,
        });
        h.add(r, t(0));
    }
    for n in 1000..1010 {
        let mut r = archive(n);
        r.owner = Some(Owner {
            uid: 2,
            gid: 1,
            projid: 0,
        });
        h.add(r, t(0));
    }
    let m = h.mover("m", &[], t(0));
    h.recv(m, limits(Some(20), None, None), t(0));
    let d = h.deliveries();
    let small = d[0]
        .items
        .iter()
        .filter(|r| r.owner.unwrap().uid == 2)
        .count();
    assert_eq!(small, 10, "uid 2's ten archives are in the first twenty");
}

#[test]
fn fair_share_weights_split_the_service() {
    let mut h = H::new(Config {
        spread: false,
        fair_share: Some(FairShare {
            key: ShareKey::DataTag("user=".into()),
            weights: vec![("alice".into(), 3)],
            default_weight: 1,
        }),
        ..Config::default()
    });
    for n in 0..200 {
        let data: &[u8] = if n % 2 == 0 {
            b"user=alice"
        } else {
            b"user=bob"
        };
        h.add(req(HsmAction::Archive, n, 1, data), t(0));
    }
    let m = h.mover("m", &[], t(0));
    h.recv(m, limits(Some(40), None, None), t(0));
    let d = h.deliveries();
    let alice = d[0]
        .items
        .iter()
        .filter(|r| &*r.data == b"user=alice")
        .count();
    assert!(
        (29..=31).contains(&alice),
        "alice got {alice} of 40 with weight 3:1"
    );
}

#[test]
fn spread_leaves_work_for_other_movers() {
    let mut h = H::new(Config::default());
    for n in 0..10 {
        h.add(archive(n), t(0));
    }
    let a = h.mover("a", &[], t(0));
    let _b = h.mover("b", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    // 10 pending / 2 connected + 1.
    assert_eq!(h.deliveries()[0].items.len(), 6);
}

fn hosts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn archive_on_hosts_pins_to_hosts_with_placeholder() {
    let mut h = H::new(Config {
        client_grace_ms: 1000,
        host_mappings: vec![HostMapping::Tag {
            tag: "tag=n0".into(),
            hosts: hosts(&["mover0"]),
        }],
        reporting_hint: Some("cr".into()),
        ..Config::default()
    });
    let other = h.mover("other", &[], t(0));
    h.recv(other, RecvLimits::default(), t(0));
    h.add(req(HsmAction::Archive, 1, 1, b"cr=r1,tag=n0"), t(0));
    let acts = h.drain();
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Deliver(_))),
        "strict: never to another host"
    );
    assert!(acts.iter().any(|a| matches!(a,
        Action::Report(ReportEvent { line: ReportLine::Assign { client, .. }, .. }) if client == "mover0")));
    let ph = h.e.client_by_name("mover0").unwrap();
    assert_eq!(h.e.client_state(ph), Some(ClientState::Disconnected));
    // The placeholder expires and is recreated: the request stays pinned.
    h.e.handle_timeout(t(1));
    assert!(h.deliveries().is_empty());
    assert!(h.e.client_by_name("mover0").is_some());
    let m0 = h.mover("mover0", &[], t(2));
    h.recv(m0, RecvLimits::default(), t(2));
    let d = h.deliveries();
    assert_eq!(d[0].client, m0);
}

#[test]
fn archive_on_hosts_prefers_connected_hosts_and_last_line_first() {
    let mut h = H::new(Config {
        host_mappings: vec![
            HostMapping::Tag {
                tag: "g".into(),
                hosts: hosts(&["x"]),
            },
            HostMapping::Tag {
                tag: "g=1".into(),
                hosts: hosts(&["a", "b", "c"]),
            },
        ],
        ..Config::default()
    });
    let b = h.mover("b", &[], t(0));
    for n in 0..20 {
        h.add(req(HsmAction::Archive, n, 1, b"g=1"), t(0));
    }
    h.recv(b, RecvLimits::default(), t(0));
    assert_eq!(h.deliveries()[0].items.len(), 20);
}

#[test]
fn consistent_hash_upstream_mode_rewrites_and_is_idempotent() {
    let mut h = H::new(Config {
        client_grace_ms: 1000,
        host_mappings: vec![HostMapping::ConsistentHash {
            tag: "grouping=".into(),
            hash_count: 10,
            hosts: hosts(&["mover0", "mover1", "mover2"]),
            mode: HashMode::Upstream,
        }],
        ..Config::default()
    });
    // djb2("test0") % 10 = 7, djb2("7") % 3 = 1.
    h.add(
        req(HsmAction::Archive, 1, 1, b"a=b,grouping=test0,c=d"),
        t(0),
    );
    let acts = h.drain();
    // The store keeps the original data.
    assert!(acts.iter().any(
        |a| matches!(a, Action::Persist(PersistOp::New(r)) if &*r.data == b"a=b,grouping=test0,c=d")
    ));
    // Re-placement after the placeholder expires must not hash the hashed value again.
    h.e.handle_timeout(t(1));
    h.e.handle_timeout(t(2));
    h.drain();
    let m = h.mover("mover1", &[], t(3));
    h.recv(m, RecvLimits::default(), t(3));
    let d = h.deliveries();
    assert_eq!(&*d[0].items[0].data, b"a=b,grouping=7,c=d");
    // A listing shows what movers get; the data to store stays the original.
    let (r, _) = h.e.requests().next().expect("one request");
    assert_eq!(&*r.data, b"a=b,grouping=7,c=d");
    assert_eq!(
        h.e.stored_data(r.key()),
        Some(&b"a=b,grouping=test0,c=d"[..])
    );
}

#[test]
fn consistent_hash_zero_count_and_missing_value_fall_through() {
    let mut h = H::new(Config {
        host_mappings: vec![HostMapping::ConsistentHash {
            tag: "grouping=".into(),
            hash_count: 0,
            hosts: hosts(&["mover0", "mover1", "mover2"]),
            mode: HashMode::Upstream,
        }],
        ..Config::default()
    });
    let m = h.mover("mover2", &[], t(0));
    // djb2("test2") % 3 = 2: mover2, data untouched.
    h.add(req(HsmAction::Archive, 1, 1, b"grouping=test2"), t(0));
    // Tag present (strstr) but not at a key position: no value, global queue.
    h.add(req(HsmAction::Archive, 2, 1, b"xgrouping=test0"), t(0));
    h.recv(m, RecvLimits::default(), t(0));
    let d = h.deliveries();
    let mut got = cookies(&d[0]);
    got.sort();
    assert_eq!(got, vec![0x1001, 0x1002]);
    assert!(d[0].items.iter().any(|r| &*r.data == b"grouping=test2"));
}

#[test]
fn consistent_hash_rendezvous_maps_stably() {
    let cfg = |hs: &[&str]| Config {
        host_mappings: vec![HostMapping::ConsistentHash {
            tag: "g=".into(),
            hash_count: 0,
            hosts: hosts(hs),
            mode: HashMode::Rendezvous,
        }],
        ..Config::default()
    };
    let owner = |hs: &[&str], v: &str| {
        let mut h = H::new(cfg(hs));
        h.add(
            req(HsmAction::Archive, 1, 1, format!("g={v}").as_bytes()),
            t(0),
        );
        h.drain();
        hs.iter()
            .find(|n| h.e.client_by_name(n).is_some())
            .map(|s| s.to_string())
            .unwrap()
    };
    for v in ["a", "b", "c", "d", "e", "f"] {
        let four = owner(&["h0", "h1", "h2", "h3"], v);
        if four != "h3" {
            assert_eq!(owner(&["h0", "h1", "h2"], v), four);
        }
    }
}

struct CountingLocator {
    calls: std::rc::Rc<std::cell::Cell<u32>>,
}

impl RestoreLocator for CountingLocator {
    fn locate(&mut self, r: &Request, _focus: Option<&str>) -> Locate {
        self.calls.set(self.calls.get() + 1);
        if &*r.data == b"fail" {
            Locate::Failed
        } else if r.data.is_empty() {
            Locate::Anywhere
        } else {
            Locate::Host(String::from_utf8(r.data.to_vec()).unwrap())
        }
    }
}

#[test]
fn restore_locator_routes_and_is_cached() {
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut h = H::new(Config {
        client_grace_ms: 1000,
        ..Config::default()
    });
    h.e.set_restore_locator(Box::new(CountingLocator {
        calls: calls.clone(),
    }));
    let a = h.mover("tapehost", &[], t(0));
    let b = h.mover("other", &[], t(0));
    h.recv(b, RecvLimits::default(), t(0));
    h.add(req(HsmAction::Restore, 1, 1, b"tapehost"), t(0));
    h.add(req(HsmAction::Restore, 2, 1, b""), t(0));
    h.add(req(HsmAction::Restore, 3, 1, b"fail"), t(0));
    let d = h.deliveries();
    assert_eq!(
        cookies(&d[0]),
        vec![0x1002],
        "only the unpinned restore goes to 'other'"
    );
    h.recv(a, RecvLimits::default(), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001]);
    assert_eq!(calls.get(), 3, "one call per restore, none at dispatch");
    assert!(h.e.client_by_name(LOCATE_FAILED_HOST).is_some());
    // The failed one is located again when its placeholder expires.
    h.e.handle_timeout(t(1));
    h.drain();
    assert_eq!(calls.get(), 4);
}

#[test]
fn recovery_reattaches_to_a_placeholder_of_the_mover() {
    let mut h = H::new(Config::default());
    assert_eq!(h.e.recover(archive(1), Some("m"), t(0)), Ok(Intake::New));
    assert_eq!(h.e.recover(archive(2), None, t(0)), Ok(Intake::New));
    assert_eq!(h.e.recover(archive(2), None, t(0)), Ok(Intake::Duplicate));
    let acts = h.drain();
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::Persist(PersistOp::New(_))))
    );
    assert_eq!(h.e.running().archive, 1);
    let m = h.e.connect("m:1", t(1));
    h.e.ehlo(
        m,
        Ehlo {
            id: Some("m".into()),
            archive_ids: vec![],
            running: vec![archive(1)],
        },
        t(1),
    )
    .unwrap();
    h.drain();
    assert_eq!(h.e.status(false).clients[0].current.archive, 1);
}

#[test]
fn persistence_and_report_events_follow_the_life_cycle() {
    let mut h = H::new(Config {
        reporting_hint: Some("cr".into()),
        ..Config::default()
    });
    let m = h.mover("m", &[], t(0));
    h.add(req(HsmAction::Restore, 1, 1, b"cr=job1"), t(0));
    h.add(req(HsmAction::Restore, 2, 1, b"cr=bad/value"), t(0));
    h.e.report_progress(t(0));
    h.recv(m, limits(None, Some(1), None), t(1));
    h.e.done(m, req(HsmAction::Restore, 1, 1, b"").key(), 0, t(2));
    h.drain();
    let lines: Vec<String> = h
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Report(ReportEvent { value, line }) => {
                assert_eq!(value, "job1");
                Some(line.to_string())
            }
            _ => None,
        })
        .collect();
    let dfid = LuFid::new(0x200000401, 1, 0);
    assert_eq!(
        lines,
        vec![
            format!("new {dfid}"),
            format!("progress {dfid} global_queue 1/2"),
            format!("sent {dfid} m"),
            format!("done {dfid} 0"),
            String::new(),
        ]
    );
    let persist: Vec<&PersistOp> = h
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Persist(p) => Some(p),
            _ => None,
        })
        .collect();
    let key = req(HsmAction::Restore, 1, 1, b"").key();
    assert!(matches!(persist[0], PersistOp::New(r) if r.key() == key));
    assert_eq!(
        persist[2],
        &PersistOp::Assigned {
            key,
            client: "m".into()
        }
    );
    assert_eq!(persist[3], &PersistOp::Finished { key });
}

#[test]
fn status_lists_clients_and_dumps_queues() {
    let mut h = H::new(Config::default());
    let a = h.mover("a", &[], t(0));
    let b = h.mover("b", &[], t(1));
    h.add(req(HsmAction::Archive, 1, 1, b"d\0hidden"), t(0));
    h.recv(a, limits(Some(0), None, None), t(2));
    h.e.disconnect(b, t(3)).unwrap();
    let st = h.e.status(true);
    assert_eq!(st.clients_connected, 1);
    assert_eq!(st.clients[0].client_id, "a");
    assert_eq!(st.clients[0].state, ClientState::Waiting);
    assert_eq!(st.clients[1].state, ClientState::Disconnected);
    assert_eq!(st.clients[1].disconnected_at, Some(t(3)));
    let q = st.queues.unwrap();
    assert_eq!(q.archive.len(), 1);
    assert_eq!(q.archive[0].data, "d");
    assert_eq!(st.pending.archive, 1);
}

#[test]
fn refused_recv_does_not_change_the_pending_limits() {
    let mut h = H::new(Config::default());
    let m = h.mover("m", &[], t(0));
    let lim = |max_restore| RecvLimits {
        max_restore,
        ..RecvLimits::default()
    };
    h.recv(m, lim(Some(0)), t(0));
    assert_eq!(h.e.recv(m, lim(None), t(0)), Err(EngineError::NotReady));
    h.add(req(HsmAction::Restore, 1, 1, b""), t(0));
    assert!(h.deliveries().is_empty(), "no restore for the pending recv");
    h.e.handle_timeout(t(1));
    assert!(
        h.deliveries().is_empty(),
        "still answering the recv with max_restore 0"
    );
}

fn batching(idle: u64, max: u64, slots: u32) -> Config {
    Config {
        spread: false,
        batching: Batching {
            idle_secs: idle,
            max_secs: max,
            slots_per_client: slots,
        },
        ..Config::default()
    }
}

fn datas(d: &Delivery) -> Vec<&[u8]> {
    d.items.iter().map(|r| &*r.data).collect()
}

#[test]
fn batching_keeps_one_hint_on_one_mover() {
    let mut h = H::new(batching(10, 0, 1));
    for n in 0..6 {
        let hint: &[u8] = if n % 2 == 0 { b"tape=A" } else { b"tape=B" };
        h.add(req(HsmAction::Archive, n, 1, hint), t(0));
    }
    let a = h.mover("a", &[], t(0));
    let b = h.mover("b", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    h.recv(b, RecvLimits::default(), t(0));
    let d = h.deliveries();
    assert_eq!(d.len(), 2);
    assert_eq!(datas(&d[0]), vec![b"tape=A"; 3]);
    assert_eq!(datas(&d[1]), vec![b"tape=B"; 3]);
    // A new A archive goes to the slot holding A, even though b is waiting.
    h.recv(b, RecvLimits::default(), t(1));
    h.add(req(HsmAction::Archive, 10, 1, b"tape=A"), t(1));
    assert!(h.deliveries().is_empty(), "b must not take A's archive");
    h.recv(a, RecvLimits::default(), t(1));
    let d = h.deliveries();
    assert_eq!((d[0].client, datas(&d[0])), (a, vec![&b"tape=A"[..]]));
    let st = h.e.status(false);
    let sa = st.clients.iter().find(|c| c.client_id == "a").unwrap();
    assert_eq!(sa.batches.len(), 1);
    assert_eq!(sa.batches[0].hint.as_deref(), Some("tape=A"));
    assert_eq!(sa.batches[0].current_count, 4);
    assert_eq!(sa.batches[0].expire_idle, Some(t(11)));
}

#[test]
fn batch_slot_idle_expiry_frees_it_for_another_hint() {
    let mut h = H::new(batching(10, 0, 1));
    h.add(req(HsmAction::Archive, 1, 1, b"A"), t(0));
    let a = h.mover("a", &[], t(0));
    h.recv(a, RecvLimits::default(), t(0));
    h.drain();
    h.add(req(HsmAction::Archive, 2, 1, b"B"), t(1));
    h.recv(a, RecvLimits::default(), t(1));
    assert!(
        h.deliveries().is_empty(),
        "slot reserved for A during its idle slice"
    );
    assert_eq!(h.e.poll_timeout(), Some(t(10)));
    h.e.handle_timeout(t(10));
    let d = h.deliveries();
    assert_eq!(datas(&d[0]), vec![&b"B"[..]]);
}

#[test]
fn batch_slot_max_slice_releases_leftovers_to_other_movers() {
    let mut h = H::new(batching(100, 5, 1));
    for n in 0..4 {
        h.add(req(HsmAction::Archive, n, 1, b"A"), t(0));
    }
    let a = h.mover("a", &[], t(0));
    h.recv(a, limits(Some(1), None, None), t(0));
    assert_eq!(h.deliveries()[0].items.len(), 1);
    let b = h.mover("b", &[], t(1));
    h.recv(b, RecvLimits::default(), t(1));
    assert!(h.deliveries().is_empty(), "A belongs to a's slot");
    h.e.handle_timeout(t(5));
    let d = h.deliveries();
    assert_eq!((d[0].client, d[0].items.len()), (b, 3));
}

#[test]
fn batch_per_slot_cap_splits_max_archive() {
    let mut h = H::new(batching(10, 0, 2));
    for n in 0..8 {
        let hint: &[u8] = if n < 4 { b"A" } else { b"B" };
        h.add(req(HsmAction::Archive, n, 1, hint), t(0));
    }
    let a = h.mover("a", &[], t(0));
    h.recv(a, limits(Some(4), None, None), t(0));
    let d = h.deliveries();
    let mut got = datas(&d[0]);
    got.sort();
    assert_eq!(got, vec![&b"A"[..], b"A", b"B", b"B"], "cap 2 per slot");
}

#[test]
fn batch_slots_follow_a_reconnecting_mover() {
    let mut h = H::new(batching(10, 0, 1));
    for n in 0..3 {
        h.add(req(HsmAction::Archive, n, 1, b"A"), t(0));
    }
    let a = h.mover("a", &[], t(0));
    h.recv(a, limits(Some(1), None, None), t(0));
    let first = h.deliveries()[0].items[0].clone();
    h.e.disconnect(a, t(1)).unwrap();
    let a2 = h.e.connect("a:2", t(2));
    h.e.ehlo(
        a2,
        Ehlo {
            id: Some("a".into()),
            archive_ids: vec![],
            running: vec![first.clone()],
        },
        t(2),
    )
    .unwrap();
    h.drain();
    let st = h.e.status(false);
    assert_eq!(st.clients[0].batches[0].current_count, 1);
    h.e.done(a2, first.key(), 0, t(3));
    h.recv(a2, limits(Some(1), None, None), t(3));
    let d = h.deliveries();
    assert_eq!(d[0].client, a2);
    assert_eq!(h.e.status(false).clients[0].batches[0].current_count, 1);
}

/// Progress lines cover archives (in batch slots and unowned groups too) and removes, not
/// only restores (upstream's §9.4.17): one numbered list per (queue, kind).
#[test]
fn progress_reports_every_kind_including_batched_archives() {
    let mut cfg = batching(10, 0, 1);
    cfg.reporting_hint = Some("cr".into());
    let mut h = H::new(cfg);
    let m = h.mover("m", &[], t(0));
    for n in 1..=3 {
        h.add(req(HsmAction::Archive, n, 1, b"cr=j"), t(0));
    }
    // m's only slot takes the "cr=j" group and sends one: two stay in the slot.
    h.recv(m, limits(Some(1), None, None), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001]);
    // A second hint finds no free slot: an unowned group of the global queue.
    h.add(req(HsmAction::Archive, 4, 1, b"cr=k"), t(1));
    h.add(req(HsmAction::Archive, 5, 1, b"cr=k"), t(1));
    h.add(req(HsmAction::Remove, 6, 1, b"cr=j"), t(1));
    h.add(req(HsmAction::Restore, 7, 1, b"cr=j"), t(1));
    h.drain();
    h.e.report_progress(t(2));
    let lines: Vec<(String, String)> = h
        .drain()
        .into_iter()
        .filter_map(|a| match a {
            Action::Report(ReportEvent { value, line }) => Some((value, line.to_string())),
            _ => None,
        })
        .collect();
    let fid = |n: u64| LuFid::new(0x200000400 + n, n as u32, 0);
    let l = |v: &str, n: u64, q: &str, pos: &str| {
        (v.to_string(), format!("progress {} {q} {pos}", fid(n)))
    };
    assert_eq!(
        lines,
        vec![
            l("j", 2, "m", "1/2"),
            l("j", 3, "m", "2/2"),
            l("j", 7, "global_queue", "1/1"),
            l("j", 6, "global_queue", "1/1"),
            l("k", 4, "global_queue", "1/2"),
            l("k", 5, "global_queue", "2/2"),
        ]
    );
}

#[test]
fn batching_with_host_mapping_keeps_routing() {
    let mut cfg = batching(10, 0, 1);
    cfg.host_mappings = vec![HostMapping::Tag {
        tag: "tag=n0".into(),
        hosts: hosts(&["mover0"]),
    }];
    let mut h = H::new(cfg);
    let other = h.mover("other", &[], t(0));
    h.recv(other, RecvLimits::default(), t(0));
    h.add(req(HsmAction::Archive, 1, 1, b"tag=n0"), t(0));
    assert!(h.deliveries().is_empty());
    let m0 = h.mover("mover0", &[], t(1));
    h.recv(m0, RecvLimits::default(), t(1));
    assert_eq!(h.deliveries()[0].client, m0);
}

mod fair_share_ratios {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// With every user backlogged, each user's share of the first K dispatches is its
        /// weight's share, within one request per user.
        #[test]
        fn service_follows_weights(weights in prop::collection::vec(1u32..6, 2..5), k in 20usize..120) {
            let users = weights.len();
            let mut h = H::new(Config {
                spread: false,
                fair_share: Some(FairShare {
                    key: ShareKey::Uid,
                    weights: weights.iter().enumerate().map(|(u, w)| (u.to_string(), *w)).collect(),
                    default_weight: 1,
                }),
                ..Config::default()
            });
            // Users arrive one after the other, each with a backlog larger than K.
            for u in 0..users {
                for i in 0..k as u64 {
                    let mut r = archive(u as u64 * 1000 + i);
                    r.owner = Some(Owner { uid: u as u32, gid: 0, projid: 0 });
                    h.add(r, t(0));
                }
            }
            let m = h.mover("m", &[], t(0));
            h.recv(m, limits(Some(k as u32), None, None), t(0));
            let d = h.deliveries();
            prop_assert_eq!(d[0].items.len(), k);
            let total: u32 = weights.iter().sum();
            for (u, w) in weights.iter().enumerate() {
                let got = d[0].items.iter().filter(|r| r.owner.unwrap().uid == u as u32).count() as f64;
                let want = k as f64 * f64::from(*w) / f64::from(total);
                // Start-time fair queuing bound: |W_i/w_i - W_j/w_j| <= 1/w_i + 1/w_j for any two
                // backlogged flows, hence a deviation below 1 + (n-1)·w_i/W requests.
                let bound = 1.0 + (users as f64 - 1.0) * f64::from(*w) / f64::from(total);
                prop_assert!((got - want).abs() <= bound + 1e-9, "user {u} weight {w}: {got} vs {want:.2}");
            }
        }
    }
}

/// A custom policy: removes run only on "cleaner", priority from the owner's uid.
struct CustomPolicy;

impl Policy for CustomPolicy {
    fn priority(&self, r: &Request, _kind: Kind) -> i32 {
        r.owner.map_or(0, |o| o.uid as i32)
    }
    fn share(&self, _r: &Request) -> Share {
        Share { key: 0, weight: 1 }
    }
    fn place(
        &mut self,
        _r: &Request,
        kind: Kind,
        client: &dyn Fn(&str) -> Option<ClientState>,
    ) -> Placement {
        if kind == Kind::Remove {
            // The view reports the state of known ids.
            let _ = client("cleaner");
            Placement::Host {
                host: "cleaner".into(),
                data: None,
            }
        } else {
            Placement::Anywhere
        }
    }
}

#[test]
fn custom_policy_orders_and_places() {
    let mut h = H {
        e: Engine::with_policy(
            Config {
                spread: false,
                ..Config::default()
            },
            Box::new(CustomPolicy),
        ),
        log: Vec::new(),
    };
    for (n, uid) in [(1, 1), (2, 5), (3, 3)] {
        let mut r = archive(n);
        r.owner = Some(Owner {
            uid,
            gid: 0,
            projid: 0,
        });
        h.add(r, t(0));
    }
    h.add(req(HsmAction::Remove, 4, 1, b""), t(0));
    let m = h.mover("m", &[], t(0));
    h.recv(m, RecvLimits::default(), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1002, 0x1003, 0x1001]);
    assert_eq!(h.e.pending().remove, 1, "the remove waits for 'cleaner'");
    let c = h.mover("cleaner", &[], t(1));
    h.recv(c, RecvLimits::default(), t(1));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1004]);
}

#[test]
fn requests_lists_every_request_with_its_place() {
    let mut cfg = batching(10, 0, 1);
    cfg.host_mappings = vec![HostMapping::Tag {
        tag: "host=b".into(),
        hosts: vec!["b".into()],
    }];
    let mut h = H::new(cfg);
    let a = h.mover("a", &[], t(0));
    h.add(req(HsmAction::Restore, 1, 1, b""), t(0));
    h.add(req(HsmAction::Archive, 2, 1, b"tape=A"), t(0));
    h.add(req(HsmAction::Archive, 3, 1, b"host=b"), t(0));
    h.add(req(HsmAction::Remove, 4, 1, b""), t(0));
    h.recv(a, limits(Some(0), Some(1), Some(0)), t(0));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001]);
    let b = h.e.client_by_name("b").expect("placeholder for b");
    let mut got: Vec<(u64, Placed)> = h.e.requests().map(|(r, p)| (r.cookie, p)).collect();
    got.sort_by_key(|&(c, _)| c);
    assert_eq!(
        got,
        vec![
            (0x1001, Placed::Running(a)),
            (0x1002, Placed::InSlot { client: a, slot: 0 }),
            (0x1003, Placed::InSlot { client: b, slot: 0 }),
            (0x1004, Placed::Queued),
        ]
    );
}

#[test]
fn batch_slot_is_reserved_at_placement_on_the_newest_client() {
    let mut h = H::new(batching(10, 0, 1));
    let a = h.mover("a", &[], t(0));
    let b = h.mover("b", &[], t(0));
    let c = h.mover("c", &[2], t(0));
    h.add(req(HsmAction::Archive, 1, 1, b"tape=A"), t(0));
    h.add(req(HsmAction::Archive, 2, 1, b"tape=B"), t(0));
    h.add(req(HsmAction::Archive, 3, 1, b"tape=C"), t(0));
    // Reserved before anyone asks: b is the newest client accepting archive id 1 (c only
    // takes id 2), then a; no slot is left for C.
    let st = h.e.status(false);
    let hint = |name: &str| {
        st.clients
            .iter()
            .find(|x| x.client_id == name)
            .unwrap()
            .batches[0]
            .hint
            .clone()
    };
    assert_eq!(hint("b").as_deref(), Some("tape=A"));
    assert_eq!(hint("a").as_deref(), Some("tape=B"));
    assert_eq!(hint("c"), None);
    // a asks first but only gets its own slot's hint.
    h.recv(a, RecvLimits::default(), t(1));
    let d = h.deliveries();
    assert_eq!((d[0].client, cookies(&d[0])), (a, vec![0x1002]));
    h.recv(c, RecvLimits::default(), t(1));
    assert!(h.deliveries().is_empty(), "c accepts archive id 2 only");
    h.recv(b, RecvLimits::default(), t(1));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001]);
    // C waits unreserved until a slice ends: a's slot (idle 10 s from t(1)) then takes it.
    h.recv(a, RecvLimits::default(), t(2));
    assert!(h.deliveries().is_empty());
    h.e.handle_timeout(t(11));
    let d = h.deliveries();
    assert_eq!((d[0].client, cookies(&d[0])), (a, vec![0x1003]));
}

/// Orders archives by the owner's gid (priority) and shares them by uid.
struct ByOwner;

impl Policy for ByOwner {
    fn priority(&self, r: &Request, _kind: Kind) -> i32 {
        r.owner.map_or(0, |o| o.gid as i32)
    }
    fn share(&self, r: &Request) -> Share {
        Share {
            key: r.owner.map_or(0, |o| u64::from(o.uid)),
            weight: 1,
        }
    }
    fn place(
        &mut self,
        _r: &Request,
        _kind: Kind,
        _client: &dyn Fn(&str) -> Option<ClientState>,
    ) -> Placement {
        Placement::Anywhere
    }
}

#[test]
fn batch_slot_sends_by_priority_then_fair_share() {
    let mut cfg = batching(10, 0, 1);
    cfg.priorities.aging_ms = 0;
    let mut h = H {
        e: Engine::with_policy(cfg, Box::new(ByOwner)),
        log: Vec::new(),
    };
    let owned = |n: u64, uid: u32, gid: u32| {
        let mut r = req(HsmAction::Archive, n, 1, b"tape=A");
        r.owner = Some(Owner {
            uid,
            gid,
            projid: 0,
        });
        r
    };
    // uid 1 queues six archives before uid 2's two; then one urgent archive (gid 5).
    for n in 0..6 {
        h.add(owned(n, 1, 0), t(0));
    }
    h.add(owned(6, 2, 0), t(0));
    h.add(owned(7, 2, 0), t(0));
    h.add(owned(8, 3, 5), t(0));
    let a = h.mover("a", &[], t(0));
    let mut got = Vec::new();
    for _ in 0..4 {
        h.recv(a, limits(Some(got.len() as u32 + 1), None, None), t(1));
        got.extend(cookies(&h.deliveries()[0]));
    }
    // All in a's one slot: the urgent one first, then uid 1 and uid 2 alternate.
    assert_eq!(got, vec![0x1008, 0x1000, 0x1006, 0x1001]);
}

type Shared<T> = std::rc::Rc<std::cell::RefCell<T>>;

/// A locator whose answers the test changes, recording each call's focus.
struct ScriptedLocator {
    answers: Shared<std::collections::HashMap<u64, Locate>>,
    calls: Shared<Vec<(u64, Option<String>)>>,
}

impl RestoreLocator for ScriptedLocator {
    fn locate(&mut self, r: &Request, focus: Option<&str>) -> Locate {
        self.calls
            .borrow_mut()
            .push((r.cookie, focus.map(str::to_string)));
        self.answers
            .borrow()
            .get(&r.cookie)
            .cloned()
            .unwrap_or(Locate::Anywhere)
    }
    fn cache_ttl_ms(&self) -> u64 {
        5_000
    }
}

#[test]
fn restore_locality_is_checked_again_at_dispatch_when_stale() {
    let answers = std::rc::Rc::new(std::cell::RefCell::new(std::collections::HashMap::new()));
    let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut h = H::new(Config::default());
    h.e.set_restore_locator(Box::new(ScriptedLocator {
        answers: answers.clone(),
        calls: calls.clone(),
    }));
    let a = h.mover("a", &[], t(0));
    let b = h.mover("b", &[], t(0));
    let host = |n: &str| Locate::Host(n.into());
    answers.borrow_mut().insert(0x1001, host("a"));
    answers.borrow_mut().insert(0x1002, host("a"));
    h.add(req(HsmAction::Restore, 1, 1, b""), t(0));
    h.add(req(HsmAction::Restore, 2, 1, b""), t(0));
    assert_eq!(calls.borrow().len(), 2);
    // Fresh answers are not asked again at dispatch.
    h.recv(a, limits(None, Some(1), None), t(1));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1001]);
    assert_eq!(calls.borrow().len(), 2, "cached: no call at dispatch");
    // The tape moved to b; a client connecting makes cached answers stale.
    answers.borrow_mut().insert(0x1002, host("b"));
    let _c = h.mover("c", &[], t(1));
    h.recv(a, RecvLimits::default(), t(1));
    assert!(h.deliveries().is_empty(), "restore 2 is b's now");
    assert_eq!(
        calls.borrow().last().cloned(),
        Some((0x1002, Some("a".to_string()))),
        "asked again, with the dispatching client as focus"
    );
    h.recv(b, RecvLimits::default(), t(1));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1002]);
    assert_eq!(calls.borrow().len(), 3, "b used the fresh answer");
    // a still waits (nothing was for it): a restore placed for a goes to it at once.
    answers.borrow_mut().insert(0x1003, host("a"));
    h.add(req(HsmAction::Restore, 3, 1, b""), t(2));
    let d = h.deliveries();
    assert_eq!((d[0].client, cookies(&d[0])), (a, vec![0x1003]));
    // The TTL: answers older than 5 s are asked again even if no client came or went.
    answers.borrow_mut().insert(0x1004, host("a"));
    answers.borrow_mut().insert(0x1005, host("a"));
    h.add(req(HsmAction::Restore, 4, 1, b""), t(3));
    h.add(req(HsmAction::Restore, 5, 1, b""), t(3));
    answers.borrow_mut().insert(0x1005, host("b"));
    let before = calls.borrow().len();
    h.recv(a, limits(None, Some(3), None), t(4));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1004]);
    assert_eq!(calls.borrow().len(), before, "1 s old: still fresh");
    h.recv(a, limits(None, Some(4), None), t(9));
    assert!(h.deliveries().is_empty(), "6 s old: asked again, b's now");
    assert_eq!(calls.borrow().len(), before + 1);
    h.recv(b, RecvLimits::default(), t(9));
    assert_eq!(cookies(&h.deliveries()[0]), vec![0x1005]);
}
