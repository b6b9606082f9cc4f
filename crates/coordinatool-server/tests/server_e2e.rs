//! End-to-end tests of the server binary against the simulated Lustre (in-process
//! `coordinatool-sim` daemon, the `liblustreapi.so.1` stand-in loaded by the server through
//! `LD_LIBRARY_PATH`), with real TCP clients and the embedded store on disk.

mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    DoneRequest, EhloRequest, LockRequest, LockState, QueueRequest, RecvRequest, Reply, Request,
    StatusReply, StatusRequest, WireHai,
};
use coordinatool_server::store::{EmbeddedStore, Store};
use coordinatool_sim::mdt::{CL_HSM, HsmEvent, hsm_changelog_flags};
use coordinatool_sim::rpc::{Reply as SimReply, Request as SimRequest};
use server_common::{Client, Server, Sim, config, server_command, wait_until};
use std::collections::BTreeMap;

fn ehlo(id: &str) -> Request {
    Request::Ehlo(EhloRequest::new(Some(id.to_owned())))
}

fn recv() -> Request {
    Request::Recv(RecvRequest::default())
}

fn recv_max_archive(n: u32) -> Request {
    Request::Recv(RecvRequest {
        max_archive: Some(n),
        ..RecvRequest::default()
    })
}

fn done(cookie: u64, dfid: LuFid) -> Request {
    Request::Done(DoneRequest {
        cookie,
        dfid,
        status: 0,
    })
}

fn status(c: &mut Client, verbose: i32) -> StatusReply {
    match c.call(&Request::Status(StatusRequest { verbose })) {
        Reply::Status(s) => *s,
        other => panic!("status reply expected, got {other:?}"),
    }
}

fn item(n: u32) -> WireHai {
    let mut h = WireHai::new(
        HsmAction::Archive,
        LuFid::new(0x2_0000_0401, n, 0),
        1_000 + u64::from(n),
    );
    h.archive_id = 1;
    h
}

fn queue(items: Vec<WireHai>) -> Request {
    Request::Queue(QueueRequest {
        items,
        fsname: None,
    })
}

/// The hal of a recv reply.
fn hal_of(r: Reply) -> coordinatool_proto::WireHal {
    match r {
        Reply::Recv(r) => match r.hal {
            Some(h) => h,
            None => panic!(
                "recv reply without a list: status {} {:?}",
                r.status, r.error
            ),
        },
        other => panic!("recv reply expected, got {other:?}"),
    }
}

#[test]
fn every_command_round_trips_with_upstream_replies() {
    let sim = Sim::start("cmds");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut c = srv.connect();

    assert_eq!(
        c.call_text(&recv()),
        r#"{"command":"recv","status":22,"error":"Client must send EHLO first and not already be in RECV"}"#
    );
    assert_eq!(c.call_text(&ehlo("mover1")), r#"{"command":"ehlo"}"#);
    assert_eq!(
        c.call_text(&ehlo("mover1")),
        r#"{"command":"ehlo","status":22,"error":"Client cannot send EHLO twice"}"#
    );
    let mut other = srv.connect();
    assert_eq!(
        other.call_text(&ehlo("mover1")),
        r#"{"command":"ehlo","status":17,"error":"id already used by another client"}"#
    );
    let mut bad = srv.connect();
    let mut e = EhloRequest::new(Some("bad".into()));
    e.archive_ids = vec![0];
    assert_eq!(
        bad.call_text(&Request::Ehlo(e)),
        r#"{"command":"ehlo","status":22,"error":"Bad archive id in list"}"#
    );
    assert_eq!(
        c.call_text(&Request::Recv(RecvRequest {
            max_bytes: 100,
            ..RecvRequest::default()
        })),
        r#"{"command":"recv","status":22,"error":"Buffer too small"}"#
    );
    assert_eq!(
        c.call_text(&Request::Done(DoneRequest::default())),
        r#"{"command":"done","status":22,"error":"cookie or fid not set -- old client?"}"#
    );
    assert_eq!(
        c.call_text(&done(77, LuFid::new(0x200000401, 77, 0))),
        r#"{"command":"done"}"#,
        "a done for an unknown key is a success (double ack on cancel)"
    );

    // queue: no items, bad fsname, new items, duplicates, a refused item.
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue(vec![])),
        r#"{"command":"queue","status":22,"error":"No hsm_action_items set"}"#
    );
    assert_eq!(
        q.call_text(&Request::Queue(QueueRequest {
            items: vec![item(1)],
            fsname: Some("otherfs".into()),
        })),
        r#"{"command":"queue","status":22,"error":"Bad fsname"}"#
    );
    assert_eq!(
        q.call_text(&Request::Queue(QueueRequest {
            items: vec![item(1), item(2)],
            fsname: Some("lustre".into()),
        })),
        r#"{"command":"queue","enqueued":2}"#
    );
    assert_eq!(
        q.call_text(&queue(vec![item(1), item(2)])),
        r#"{"command":"queue","skipped":2}"#
    );
    let mut cancel = item(3);
    cancel.action = HsmAction::Cancel;
    assert_eq!(
        q.call_text(&queue(vec![cancel, item(4)])),
        r#"{"command":"queue","enqueued":1,"status":22,"error":"Error while parsing hsm action items"}"#
    );

    // lock: invalid value, lock, a recv stays pending, unlock answers it.
    assert_eq!(
        q.call_text(&Request::Lock(LockRequest { locked: 5 })),
        r#"{"command":"lock","status":22,"error":"invalid locked value"}"#
    );
    assert_eq!(
        q.call_text(&Request::Lock(LockRequest::new(LockState::Locked))),
        r#"{"command":"lock"}"#
    );
    c.send(&recv());
    wait_until("the mover waits while locked", || {
        let s = status(&mut q, 4);
        s.locked == 1
            && s.pending_archive == 3
            && s.clients.iter().any(|cl| {
                cl.client_id == "mover1" && cl.status == coordinatool_proto::ClientState::Waiting
            })
    });
    let st = status(&mut q, 4);
    assert_eq!(
        st.clients_connected, 4,
        "mover1, other, bad and q are connected"
    );
    assert_eq!(st.running_archive, 0);
    assert_eq!(
        q.call_text(&Request::Lock(LockRequest::new(LockState::Unlocked))),
        r#"{"command":"lock"}"#
    );
    // The unlock answers the pending recv; the engine may spread the queue over the
    // connected clients, so ask again until the three requests have come.
    let mut hal = hal_of(c.next());
    assert_eq!(hal.archive_id, 1);
    assert_eq!(hal.fsname, "lustre");
    while hal.list.len() < 3 {
        let more = hal_of(c.call(&recv()));
        hal.list.extend(more.list);
    }
    let mut got: Vec<u64> = hal.list.iter().map(|h| h.cookie).collect();
    got.sort_unstable();
    assert_eq!(got, vec![1001, 1002, 1004]);

    let st = status(&mut q, 4);
    assert_eq!((st.running_archive, st.pending_archive), (3, 0));
    let m = st.clients.iter().find(|c| c.client_id == "mover1").unwrap();
    assert_eq!(m.current_archive, 3);
    for h in &hal.list {
        assert_eq!(
            c.call_text(&done(h.cookie, h.dfid)),
            r#"{"command":"done"}"#
        );
    }
    let st = status(&mut q, 4);
    assert_eq!((st.running_archive, st.done_archive), (0, 3));
    let m = st.clients.iter().find(|c| c.client_id == "mover1").unwrap();
    assert_eq!((m.current_archive, m.done_archive), (0, 3));

    // The debug dump lists the queues (empty here) only at verbose >= 6.
    assert!(status(&mut q, 4).waiting_archive.is_none());
    assert_eq!(status(&mut q, 6).waiting_archive, Some(vec![]));
}

#[test]
fn long_poll_is_answered_when_lustre_sends_work_and_cancels_reach_lustre() {
    let sim = Sim::start("lustre");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut m = srv.connect();
    assert_eq!(m.call_text(&ehlo("m1")), r#"{"command":"ehlo"}"#);
    m.send(&recv());
    let mut q = srv.connect();
    wait_until("m1 waits", || {
        status(&mut q, 4)
            .clients
            .iter()
            .any(|c| c.client_id == "m1" && c.status == coordinatool_proto::ClientState::Waiting)
    });

    let (path, fid) = sim.file("f1");
    sim.archive(&path);
    let hal = hal_of(m.next());
    assert_eq!(hal.fsname, "lustre");
    assert_eq!(hal.archive_id, 1);
    assert_eq!(hal.list.len(), 1);
    let h = &hal.list[0];
    assert_eq!((h.action, h.fid, h.dfid), (HsmAction::Archive, fid, fid));
    assert!(h.timestamp > 0, "the server stamps intake time");
    let st = status(&mut q, 4);
    assert_eq!(st.running_archive, 1);
    assert_eq!(
        m.call_text(&done(h.cookie, h.dfid)),
        r#"{"command":"done"}"#
    );
    assert_eq!(status(&mut q, 4).done_archive, 1);

    // A request nobody took yet, cancelled in Lustre: the server drops it and reports
    // ECANCELED to Lustre itself. Changelog users on both MDTs record how it ends.
    let mut rpc = coordinatool_sim::rpc::Client::connect(&sim.mount).unwrap();
    for mdt in ["lustre-MDT0000", "lustre-MDT0001"] {
        rpc.call(&SimRequest::ChangelogRegister { mdt: mdt.into() })
            .unwrap();
    }
    let (path2, fid2) = sim.file("f2");
    sim.archive(&path2);
    wait_until("f2 queued", || status(&mut q, 4).pending_archive == 1);
    sim.lfs(&["hsm_cancel", &path2.to_string_lossy()]);
    wait_until("f2 cancelled in the server", || {
        status(&mut q, 4).pending_archive == 0
    });
    // The MDT marks the archive CANCELED when it sends the CANCEL to the server; only the
    // server's completion with ECANCELED ends the CANCEL (SUCCEED) and the active request.
    wait_until("Lustre sees the cancel of f2 end", || {
        sim.status_of(&fid2, "CANCEL").as_deref() == Some("SUCCEED")
    });
    assert_eq!(sim.status_of(&fid2, "ARCHIVE").as_deref(), Some("CANCELED"));
    let active = sim.param("mdt.*.hsm.active_requests");
    assert!(!active.contains(&fid2.to_string()), "{active}");
    let records: Vec<(u32, u16)> = ["lustre-MDT0000", "lustre-MDT0001"]
        .into_iter()
        .flat_map(|mdt| {
            match rpc
                .call(&SimRequest::Changelog {
                    mdt: mdt.into(),
                    start: 0,
                    end: 0,
                })
                .unwrap()
            {
                SimReply::Changelog { records } => records,
                other => panic!("{other:?}"),
            }
        })
        .filter(|r| r.tfid.0 == fid2)
        .map(|r| (r.kind, r.flags))
        .collect();
    let ecanceled_archive = hsm_changelog_flags(HsmEvent::Archive, libc::ECANCELED as u32, false);
    assert_eq!(
        records,
        vec![(CL_HSM, ecanceled_archive)],
        "one CL_HSM record: the archive ended with ECANCELED"
    );
}

#[test]
fn requests_of_a_killed_mover_go_to_another_after_the_grace() {
    let sim = Sim::start("grace");
    let srv = Server::start(&sim, &config(&sim, "client_grace_ms 300\n"));
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue(vec![item(1)])),
        r#"{"command":"queue","enqueued":1}"#
    );
    let mut m1 = srv.connect();
    m1.call(&ehlo("m1"));
    let first = hal_of(m1.call(&recv()));
    assert_eq!(first.list[0].cookie, 1001);
    drop(m1); // killed mid-transfer

    // m2 waits; the request stays with m1 (disconnected) until its grace ends.
    let mut m2 = srv.connect();
    m2.call(&ehlo("m2"));
    m2.send(&recv());
    let hal = hal_of(m2.next());
    assert_eq!(hal.list[0].cookie, 1001);
    assert_eq!(hal.list[0].dfid, first.list[0].dfid);
    let st = status(&mut q, 4);
    assert_eq!(st.running_archive, 1);
    assert!(
        st.clients.iter().all(|c| c.client_id != "m1"),
        "m1's record expired: {:?}",
        st.clients
    );
    let m = st.clients.iter().find(|c| c.client_id == "m2").unwrap();
    assert_eq!(m.current_archive, 1);
}

#[test]
fn malformed_input_gets_an_error_and_drops_only_that_connection() {
    let sim = Sim::start("malformed");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut good = srv.connect();
    assert_eq!(good.call_text(&ehlo("good")), r#"{"command":"ehlo"}"#);

    let cases: [(&[u8], &str); 4] = [
        (
            br#"{"command":"status","verbose":"loud"}"#,
            r#"{"command":"status","status":22,"error":"invalid status message: "#,
        ),
        (
            br#"{"command":"fly"}"#,
            r#"{"status":22,"error":"unknown command \"fly\""}"#,
        ),
        (
            br#"{"verbose":6}"#,
            r#"{"status":22,"error":"message has no \"command\" key"}"#,
        ),
        (
            b"hello",
            r#"{"status":22,"error":"expected a JSON object at top level, found byte 0x68 (h)"}"#,
        ),
    ];
    for (input, want) in cases {
        let mut bad = srv.connect();
        bad.send_raw(input);
        let got = bad.wait_closed();
        assert_eq!(got.len(), 1, "one error reply, then close: {got:?}");
        let text = String::from_utf8(got[0].clone()).unwrap();
        assert!(text.starts_with(want), "{text} should start with {want}");
    }
    // The good connection is unaffected, and the bad ones are gone.
    let st = status(&mut good, 4);
    assert_eq!(st.clients_connected, 1);
    assert_eq!(st.clients.len(), 1);
    assert_eq!(
        good.call_text(&done(5, LuFid::new(1, 2, 3))),
        r#"{"command":"done"}"#
    );
}

/// Every request in the store: key -> assigned client.
fn stored(sim: &Sim) -> BTreeMap<(u64, LuFid), Option<String>> {
    let mut s = EmbeddedStore::open(&sim.state_dir()).expect("open the store");
    let rec = s.load().expect("load the store");
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    rec.requests
        .into_iter()
        .map(|r| ((r.request.cookie, r.request.dfid), r.assigned))
        .collect()
}

#[test]
fn kill_9_and_restart_loses_no_request() {
    let sim = Sim::start("kill9");
    let conf = config(&sim, "client_grace_ms 600000\n");
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let items: Vec<WireHai> = (1..=40).map(item).collect();
    assert_eq!(
        q.call_text(&queue(items)),
        r#"{"command":"queue","enqueued":40}"#
    );
    // Two from Lustre as well.
    let (p1, f1) = sim.file("a");
    let (p2, f2) = sim.file("b");
    sim.archive(&p1);
    sim.archive(&p2);
    wait_until("Lustre's requests queued", || {
        status(&mut q, 4).pending_archive == 42
    });
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    let running = hal_of(m.call(&recv_max_archive(5)));
    assert_eq!(running.list.len(), 5);

    // The recv reply came after the commit: the store already says who runs what.
    srv.signal(libc::SIGKILL);
    let before = stored(&sim);
    assert_eq!(before.len(), 42);
    assert!(before.contains_key(&(before.keys().find(|k| k.1 == f1).unwrap().0, f1)));
    assert!(before.keys().any(|k| k.1 == f2));
    let assigned: Vec<_> = before.iter().filter(|(_, a)| a.is_some()).collect();
    assert_eq!(assigned.len(), 5);
    for h in &running.list {
        assert_eq!(before[&(h.cookie, h.dfid)].as_deref(), Some("m1"));
    }

    // Restart: every request is queued again or still assigned to m1.
    let srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let st = status(&mut q, 6);
    assert_eq!((st.pending_archive, st.running_archive), (37, 5));
    let m1 = st
        .clients
        .iter()
        .find(|c| c.client_id == "m1")
        .expect("m1 placeholder");
    assert_eq!(m1.status, coordinatool_proto::ClientState::Disconnected);
    assert_eq!(m1.current_archive, 5);
    let mut active: Vec<u64> = m1
        .active_requests
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.cookie)
        .collect();
    active.sort_unstable();
    let mut want: Vec<u64> = running.list.iter().map(|h| h.cookie).collect();
    want.sort_unstable();
    assert_eq!(active, want);

    // m1 comes back with its work and finishes it; the rest is still there.
    let mut m = srv.connect();
    let mut e = EhloRequest::new(Some("m1".into()));
    e.hai_list = running.list.clone();
    assert_eq!(m.call_text(&Request::Ehlo(e)), r#"{"command":"ehlo"}"#);
    for h in &running.list {
        assert_eq!(
            m.call_text(&done(h.cookie, h.dfid)),
            r#"{"command":"done"}"#
        );
    }
    let st = status(&mut q, 4);
    assert_eq!(
        (st.pending_archive, st.running_archive, st.done_archive),
        (37, 0, 5)
    );
}

/// What the load threads of [`kill_9_under_load_at_varying_moments_loses_nothing_acknowledged`]
/// were told, by cookie.
#[derive(Default)]
struct Told {
    /// `queue` answered: the request is durable.
    queued: std::collections::BTreeSet<u64>,
    /// Delivered by a `recv` reply to this mover, no `done` sent yet.
    delivered: BTreeMap<u64, String>,
    /// `done` sent.
    done_sent: std::collections::BTreeSet<u64>,
    /// `done` answered: the request is finished for good.
    done_acked: std::collections::BTreeSet<u64>,
}

/// Sends `req`, then the next reply; `None` once the server is gone.
fn try_call(c: &mut Client, req: &Request) -> Option<Reply> {
    use std::io::Write;
    let mut out = Vec::new();
    req.encode(&mut out);
    c.stream.write_all(&out).ok()?;
    let raw = c.next_raw_within(server_common::DEADLINE)?;
    Some(Reply::decode(&raw).expect("decode reply"))
}

#[test]
fn kill_9_under_load_at_varying_moments_loses_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    let sim = Sim::start("kill9load");
    // Movers of earlier rounds keep what they ran for the whole test.
    let conf = config(&sim, "client_grace_ms 600000\n");
    let told = Arc::new(Mutex::new(Told::default()));
    let mut next = 1u32;
    // The kill comes once the round has this many answered `queue` calls (5 items each) and
    // `done` calls, while both keep going: a different moment of the pipeline each round.
    for (round, (kill_after, dones)) in [(2usize, 0usize), (9, 3), (4, 8), (15, 1), (1, 0)]
        .into_iter()
        .enumerate()
    {
        let mut srv = Server::start(&sim, &conf);
        let (base, base_done) = {
            let t = told.lock().unwrap();
            (t.queued.len(), t.done_acked.len())
        };
        let first = next;
        next += 5 * 200;
        let (mut q, mut m) = (srv.connect(), srv.connect());
        let t = Arc::clone(&told);
        let driver = std::thread::spawn(move || {
            for b in 0..200u32 {
                let items: Vec<WireHai> = (0..5).map(|i| item(first + b * 5 + i)).collect();
                let cookies: Vec<u64> = items.iter().map(|h| h.cookie).collect();
                match try_call(&mut q, &queue(items)) {
                    Some(Reply::Queue(r)) => {
                        assert_eq!((r.status, r.enqueued), (0, 5), "{r:?}");
                        t.lock().unwrap().queued.extend(cookies);
                    }
                    None => return,
                    Some(other) => panic!("{other:?}"),
                }
            }
        });
        let t = Arc::clone(&told);
        let id = format!("m{round}");
        let mover = std::thread::spawn(move || {
            if try_call(&mut m, &ehlo(&id)).is_none() {
                return;
            }
            loop {
                let list = match try_call(&mut m, &recv_max_archive(4)) {
                    Some(r) => hal_of(r).list,
                    None => return,
                };
                {
                    let mut t = t.lock().unwrap();
                    for h in &list {
                        t.delivered.insert(h.cookie, id.clone());
                    }
                }
                for h in &list {
                    {
                        let mut t = t.lock().unwrap();
                        t.delivered.remove(&h.cookie);
                        t.done_sent.insert(h.cookie);
                    }
                    match try_call(&mut m, &done(h.cookie, h.dfid)) {
                        Some(Reply::Done(r)) if r.status == 0 => {
                            t.lock().unwrap().done_acked.insert(h.cookie);
                        }
                        None => return,
                        Some(other) => panic!("{other:?}"),
                    }
                }
            }
        });
        wait_until("the round's queue and done calls are answered", || {
            let t = told.lock().unwrap();
            t.queued.len() >= base + 5 * kill_after && t.done_acked.len() >= base_done + dones
        });
        srv.signal(libc::SIGKILL);
        driver.join().expect("driver");
        mover.join().expect("mover");

        let store = stored(&sim);
        let by_cookie: BTreeMap<u64, Option<String>> =
            store.into_iter().map(|((c, _), a)| (c, a)).collect();
        let t = told.lock().unwrap();
        for c in &t.queued {
            if t.done_acked.contains(c) {
                assert!(
                    !by_cookie.contains_key(c),
                    "round {round}: {c:#x} done and acknowledged, yet in the store (done twice)"
                );
            } else if !t.done_sent.contains(c) {
                assert!(
                    by_cookie.contains_key(c),
                    "round {round}: {c:#x} acknowledged by `queue`, lost"
                );
            }
        }
        for (c, mover) in &t.delivered {
            assert_eq!(
                by_cookie.get(c),
                Some(&Some(mover.clone())),
                "round {round}: {c:#x} delivered to {mover}: still assigned to it"
            );
        }
    }
    // And the last restart serves exactly what the store holds.
    let mut srv = Server::start(&sim, &conf);
    let st = status(&mut srv.connect(), 4);
    assert!(srv.signal(libc::SIGTERM).success());
    assert_eq!(
        (st.pending_archive + st.running_archive) as usize,
        stored(&sim).len()
    );
}

#[test]
fn sigterm_stops_cleanly_and_keeps_assignments() {
    let sim = Sim::start("sigterm");
    let conf = config(&sim, "");
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    q.call(&queue((1..=3).map(item).collect()));
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    let got = hal_of(m.call(&recv_max_archive(2)));
    assert_eq!(got.list.len(), 2);
    let st = srv.signal(libc::SIGTERM);
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    assert!(srv.lines().iter().any(|l| l.contains("SIGTERM received")));
    let after = stored(&sim);
    assert_eq!(after.len(), 3);
    assert_eq!(
        after
            .values()
            .filter(|a| a.as_deref() == Some("m1"))
            .count(),
        2
    );
}

#[test]
fn lock_and_quit_stops_once_nothing_runs() {
    let sim = Sim::start("lockquit");
    let mut srv = Server::start(&sim, &config(&sim, ""));
    let mut q = srv.connect();
    q.call(&queue(vec![item(1)]));
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    let h = hal_of(m.call(&recv())).list.remove(0);
    assert_eq!(
        q.call_text(&Request::Lock(LockRequest::new(LockState::LockAndQuit))),
        r#"{"command":"lock"}"#
    );
    // Still running while m1 works.
    assert_eq!(status(&mut q, 4).running_archive, 1);
    assert_eq!(
        m.call_text(&done(h.cookie, h.dfid)),
        r#"{"command":"done"}"#
    );
    let st = srv.wait();
    assert!(st.success(), "lock-and-quit exits 0: {st}");
    assert!(stored(&sim).is_empty());
}

#[test]
fn missing_liblustreapi_is_a_clear_error_with_exit_code_1() {
    let sim = Sim::start("nolib");
    let empty = sim.root.join("nolib");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = server_command(&sim, &config(&sim, ""));
    cmd.env("LD_LIBRARY_PATH", &empty);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("liblustreapi.so.1"), "{err}");
}

/// The raw JSON of `status` with verbose 6 (the dump), once `cond` holds.
fn wait_raw_status(c: &mut Client, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let get = |c: &mut Client| -> serde_json::Value {
        serde_json::from_str(&c.call_text(&Request::Status(StatusRequest { verbose: 6 }))).unwrap()
    };
    wait_until("the status dump to show it", || cond(&get(c)));
    get(c)
}

#[test]
fn a_cancel_for_a_running_request_goes_to_its_mover() {
    let sim = Sim::start("cancelrun");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    m.send(&recv());
    let mut q = srv.connect();
    wait_until("m1 waits", || {
        status(&mut q, 4)
            .clients
            .iter()
            .any(|c| c.client_id == "m1" && c.status == coordinatool_proto::ClientState::Waiting)
    });
    let (path, fid) = sim.file("big");
    sim.archive(&path);
    let h = hal_of(m.next()).list.remove(0);
    assert_eq!((h.action, h.dfid), (HsmAction::Archive, fid));

    sim.lfs(&["hsm_cancel", &path.to_string_lossy()]);
    // Before the mover's next recv, the dump (verbose 6) lists the cancel waiting for it.
    let fid_json = serde_json::json!({"f_seq": fid.seq, "f_oid": fid.oid, "f_ver": fid.ver});
    let raw = wait_raw_status(&mut q, |v| v["pending_cancel"] == 1);
    let m1 = raw["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "m1")
        .unwrap_or_else(|| panic!("{raw}"));
    assert_eq!(
        m1["cancels"],
        serde_json::json!([{
            "hai_fid": fid_json,
            "hai_dfid": fid_json,
            "hai_cookie": h.cookie,
            "hai_data": "",
        }]),
        "upstream's hai_fid (holding the dfid) and hai_dfid beside it: {raw}"
    );
    assert_eq!(m1["active_requests"][0]["hai_cookie"], h.cookie, "{raw}");
    let c = hal_of(m.call(&recv())).list.remove(0);
    assert_eq!(
        (c.action, c.cookie, c.dfid),
        (HsmAction::Cancel, h.cookie, h.dfid)
    );
    // The mover acks both (upstream's double ack): both are fine.
    assert_eq!(
        m.call_text(&done(h.cookie, h.dfid)),
        r#"{"command":"done"}"#
    );
    assert_eq!(
        m.call_text(&done(c.cookie, c.dfid)),
        r#"{"command":"done"}"#
    );
    let st = status(&mut q, 4);
    assert_eq!(
        (st.running_archive, st.pending_cancel, st.done_archive),
        (0, 0, 1)
    );
}

#[test]
fn a_thousand_waiting_movers_each_get_one_request() {
    const N: u32 = 1000;
    let sim = Sim::start("many");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut movers: Vec<Client> = (0..N)
        .map(|i| {
            let mut c = srv.connect();
            c.send(&ehlo(&format!("m{i}")));
            c.send(&recv_max_archive(1));
            c
        })
        .collect();
    for c in &mut movers {
        assert_eq!(c.next_text(), r#"{"command":"ehlo"}"#);
    }
    let mut q = srv.connect();
    wait_until("every mover waits", || {
        status(&mut q, 4)
            .clients
            .iter()
            .filter(|c| c.status == coordinatool_proto::ClientState::Waiting)
            .count()
            == N as usize
    });
    assert_eq!(
        q.call_text(&queue((1..=N).map(item).collect())),
        format!(r#"{{"command":"queue","enqueued":{N}}}"#)
    );
    let mut cookies: Vec<u64> = movers
        .iter_mut()
        .map(|c| {
            let hal = hal_of(c.next());
            assert_eq!(hal.list.len(), 1);
            hal.list[0].cookie
        })
        .collect();
    cookies.sort_unstable();
    cookies.dedup();
    assert_eq!(
        cookies.len(),
        N as usize,
        "every request went to exactly one mover"
    );
    let st = status(&mut q, 4);
    assert_eq!((st.running_archive, st.pending_archive), (N, 0));
    assert_eq!(st.clients_connected, N + 1);
}

#[test]
fn a_low_open_file_limit_is_raised_to_the_hard_one() {
    // Upstream's unit sets no LimitNOFILE: the server must not stop at the soft limit.
    use std::os::unix::process::CommandExt;
    const N: u32 = 600;
    let sim = Sim::start("nofile");
    let mut cmd = server_command(&sim, &config(&sim, ""));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A soft limit well under N, a hard one above it (never above what we may set).
            lim.rlim_cur = 256;
            lim.rlim_max = lim.rlim_max.min(4096);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let srv = Server::spawn(cmd);
    let mut movers: Vec<Client> = (0..N)
        .map(|i| {
            let mut c = srv.connect();
            c.send(&ehlo(&format!("m{i}")));
            c
        })
        .collect();
    for c in &mut movers {
        assert_eq!(c.next_text(), r#"{"command":"ehlo"}"#);
    }
    let mut q = srv.connect();
    assert_eq!(status(&mut q, 4).clients_connected, N + 1);
}

#[test]
fn an_unmount_stops_intake_and_a_remount_resumes_it() {
    let mut sim = Sim::start("remount");
    let mut srv = Server::start(&sim, &config(&sim, ""));
    let mut c = srv.connect();
    let lustre = |c: &mut Client| {
        let l = status(c, 4).lustre.expect("the lustre object");
        (l.state, l.error.is_some())
    };
    assert_eq!(lustre(&mut c), ("ok".to_owned(), false));
    let (p1, f1) = sim.file("before");
    sim.archive(&p1);
    srv.wait_line(&["enqueued (", &f1.to_string()]);

    sim.unmount();
    srv.wait_line(&["no more requests from Lustre"]);
    // The server goes on serving its clients and its queue, and says what is wrong.
    assert_eq!(lustre(&mut c), ("down".to_owned(), true));
    assert_eq!(status(&mut c, 4).pending_archive, 1);

    sim.remount();
    srv.wait_line(&["registered as copytool again"]);
    assert_eq!(lustre(&mut c), ("ok".to_owned(), false));
    let (p2, f2) = sim.file("after");
    sim.archive(&p2);
    srv.wait_line(&["enqueued (", &f2.to_string()]);
}

#[test]
fn a_client_that_half_closes_still_gets_its_replies() {
    let sim = Sim::start("halfclose");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut c = srv.connect();
    c.send(&queue(vec![item(1)]));
    c.send(&Request::Lock(LockRequest::new(LockState::Unlocked)));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let got: Vec<String> = c
        .wait_closed()
        .into_iter()
        .map(|r| String::from_utf8(r).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            r#"{"command":"queue","enqueued":1}"#.to_owned(),
            r#"{"command":"lock"}"#.to_owned()
        ]
    );
    let mut q = srv.connect();
    assert_eq!(status(&mut q, 4).pending_archive, 1);
}

/// Queues items 1 and 2, which mover m1 takes, then m1 disconnects (within its grace);
/// returns a status connection and what m1 took.
fn m1_takes_two_and_goes(srv: &Server) -> (Client, coordinatool_proto::WireHal) {
    let mut q = srv.connect();
    q.call(&queue(vec![item(1), item(2)]));
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    let hal = hal_of(m.call(&recv_max_archive(2)));
    assert_eq!(hal.list.len(), 2);
    drop(m);
    wait_until("m1 disconnected", || {
        status(&mut q, 4).clients.iter().any(|c| {
            c.client_id == "m1" && c.status == coordinatool_proto::ClientState::Disconnected
        })
    });
    (q, hal)
}

#[test]
fn a_mover_back_within_its_grace_keeps_what_it_still_runs() {
    let sim = Sim::start("takeover");
    let srv = Server::start(&sim, &config(&sim, "client_grace_ms 600000\n"));
    let (mut q, hal) = m1_takes_two_and_goes(&srv);
    // Back, still running the first one only: the second is queued again.
    let mut m = srv.connect();
    let mut e = EhloRequest::new(Some("m1".into()));
    e.hai_list = vec![hal.list[0].clone()];
    assert_eq!(m.call_text(&Request::Ehlo(e)), r#"{"command":"ehlo"}"#);
    let st = status(&mut q, 4);
    assert_eq!((st.running_archive, st.pending_archive), (1, 1));
    let m1 = st.clients.iter().find(|c| c.client_id == "m1").unwrap();
    assert_eq!(
        (m1.status, m1.current_archive),
        (coordinatool_proto::ClientState::Ready, 1)
    );
    let again = hal_of(m.call(&recv()));
    assert_eq!(again.list[0].cookie, hal.list[1].cookie);
}

/// What a mover coming back no longer runs is re-queued by its ehlo and goes at once to a
/// mover already waiting (upstream waited for some later trigger, §9.4.8).
#[test]
fn ehlo_leftovers_go_at_once_to_a_waiting_mover() {
    let sim = Sim::start("leftovers");
    let srv = Server::start(&sim, &config(&sim, "client_grace_ms 600000\n"));
    let (mut q, hal) = m1_takes_two_and_goes(&srv);
    let mut m2 = srv.connect();
    m2.call(&ehlo("m2"));
    m2.send(&recv());
    wait_until("m2 waits", || {
        status(&mut q, 4)
            .clients
            .iter()
            .any(|c| c.client_id == "m2" && c.status == coordinatool_proto::ClientState::Waiting)
    });
    let mut m = srv.connect();
    let mut e = EhloRequest::new(Some("m1".into()));
    e.hai_list = vec![hal.list[0].clone()];
    assert_eq!(m.call_text(&Request::Ehlo(e)), r#"{"command":"ehlo"}"#);
    let got = hal_of(m2.next());
    assert_eq!(got.list.len(), 1);
    assert_eq!(
        (got.list[0].cookie, got.list[0].dfid),
        (hal.list[1].cookie, hal.list[1].dfid)
    );
    let st = status(&mut q, 4);
    assert_eq!((st.running_archive, st.pending_archive), (2, 0));
}

#[test]
fn every_request_of_a_multi_file_lustre_request_reaches_a_mover_once() {
    let sim = Sim::start("bulk");
    let srv = Server::start(&sim, &config(&sim, ""));
    // Lustre hands a copytool at most hsm.max_requests (default 3) active requests per MDT;
    // the coordinatool needs it high (README "pitfalls").
    let m = sim.mount.to_string_lossy().into_owned();
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &m,
        "set_param",
        "mdt.*.hsm.max_requests=1000",
    ]);
    assert_eq!(rc, 0, "{err}");
    let files: Vec<_> = (0..50).map(|i| sim.file(&format!("f{i}"))).collect();
    let mut args = vec!["hsm_archive".to_owned(), "-a".into(), "1".into()];
    args.extend(files.iter().map(|(p, _)| p.to_string_lossy().into_owned()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    sim.lfs(&argv);
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    let mut got: Vec<LuFid> = Vec::new();
    while got.len() < files.len() {
        let hal = hal_of(m.call(&recv()));
        for h in &hal.list {
            assert_eq!(h.action, HsmAction::Archive);
            assert_eq!(
                m.call_text(&done(h.cookie, h.dfid)),
                r#"{"command":"done"}"#
            );
        }
        got.extend(hal.list.iter().map(|h| h.dfid));
    }
    got.sort();
    let mut want: Vec<LuFid> = files.iter().map(|(_, f)| *f).collect();
    want.sort();
    assert_eq!(got, want);
    let mut q = srv.connect();
    let st = status(&mut q, 4);
    assert_eq!(
        (st.done_archive, st.running_archive, st.pending_archive),
        (50, 0, 0)
    );
}

/// Byte-exact wire check against the C peers' forms (§2): one write holding several jansson-
/// formatted messages (`", "` and `": "` separators, `hal_fsname` in `queue`, `-1` limits, a
/// `done` whose cookie the C client truncated to a signed 32-bit int), then a half-close. The
/// replies must be exactly these objects, back to back: the C reader blocks on any byte
/// (a newline, a space) left after an object, so nothing may come between them.
#[test]
fn c_formatted_requests_in_one_write_get_exactly_the_expected_bytes() {
    let sim = Sim::start("cbytes");
    let srv = Server::start(&sim, &config(&sim, ""));
    // A cookie above 2^32: the C client sends its low 32 bits as a signed int.
    let cookie: u64 = 0x1_8000_0001;
    let c_cookie = cookie as u32 as i32;
    assert_eq!(c_cookie, -2_147_483_647);
    let fid = r#"{"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}"#;
    let hai = format!(
        r#"{{"hai_action": 20, "hai_fid": {fid}, "hai_dfid": {fid}, "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": {cookie}, "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": "tag=x\u0000", "timestamp": 1765010112108091220}}"#
    );
    let requests = [
        r#"{"command": "ehlo", "fsname": "lustre", "archive_ids": [1, 2], "id": "agent_1"}"#
            .to_owned(),
        format!(r#"{{"hal_fsname": "lustre", "hsm_action_items": [{hai}], "command": "queue"}}"#),
        r#"{"command": "recv", "max_archive": -1, "max_restore": -1, "max_remove": -1, "max_bytes": 1048576}"#
            .to_owned(),
        format!(
            r#"{{"command": "done", "hai_cookie": {c_cookie}, "hai_dfid": {fid}, "status": 0}}"#
        ),
        r#"{"command": "status", "verbose": 4}"#.to_owned(),
        r#"{"command": "lock", "locked": 0}"#.to_owned(),
    ]
    .concat();
    let mut s = std::net::TcpStream::connect(&srv.addr).unwrap();
    std::io::Write::write_all(&mut s, requests.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(server_common::DEADLINE)).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut got).unwrap();
    let cfid = r#"{"f_seq":8589937623,"f_oid":2905,"f_ver":0}"#;
    let want = [
        r#"{"command":"ehlo"}"#.to_owned(),
        r#"{"command":"queue","enqueued":1}"#.to_owned(),
        format!(
            r#"{{"command":"recv","hsm_action_list":{{"hal_version":1,"hal_archive_id":1,"hal_fsname":"lustre","list":[{{"hai_action":20,"hai_fid":{cfid},"hai_dfid":{cfid},"hai_extent_offset":0,"hai_extent_length":-1,"hai_cookie":{cookie},"hai_gid":0,"hal_archive_id":1,"hal_flags":0,"hai_data":"tag=x\u0000","timestamp":1765010112108091220}}]}}}}"#
        ),
        r#"{"command":"done"}"#.to_owned(),
        r#"{"command":"status","done_archive":1,"clients_connected":1,"clients":[{"client_id":"agent_1","done_archive":1,"status":"ready","batches":[]}],"store":{"kind":"embedded","state":"ok"},"lustre":{"state":"ok"}}"#.to_owned(),
        r#"{"command":"lock"}"#.to_owned(),
    ]
    .concat();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "exact reply bytes, nothing between the objects"
    );
}

/// Non-UTF-8 hsm data (`--data` is opaque bytes in Lustre; upstream dropped such requests,
/// §9.4.12) goes from Lustre through the embedded store, across a restart that reads the
/// record back, to a mover's `recv` unchanged: `hai_data_b64` carries the bytes.
#[test]
fn binary_hsm_data_survives_the_store_and_a_restart_to_the_mover() {
    let sim = Sim::start("bindata");
    let conf = config(&sim, "");
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let data: &[u8] = b"tag=\xff\xfe\x00bin\x80";
    let (_, fid) = sim.file("bin");
    sim.archive_with_data(fid, data);
    wait_until("the archive queued", || {
        status(&mut q, 4).pending_archive == 1
    });
    drop(q);
    assert!(srv.signal(libc::SIGTERM).success());
    drop(srv);

    // The stored record holds the exact bytes.
    let mut store = EmbeddedStore::open(&sim.state_dir()).expect("open the store");
    let rec = store.load().expect("load the store");
    assert!(rec.corrupt.is_empty(), "{:?}", rec.corrupt);
    assert_eq!(rec.requests.len(), 1);
    assert_eq!(rec.requests[0].request.dfid, fid);
    assert_eq!(&*rec.requests[0].request.data, data);
    drop(store);

    let srv = Server::start(&sim, &conf);
    let mut m = srv.connect();
    m.call(&ehlo("m1"));
    m.send(&recv());
    let text = m.next_text();
    assert!(
        text.contains(r#""hai_data_b64":"dGFnPf/+AGJpboA=""#),
        "{text}"
    );
    let h = hal_of(Reply::decode(text.as_bytes()).unwrap())
        .list
        .remove(0);
    assert_eq!((h.action, h.dfid), (HsmAction::Archive, fid));
    assert_eq!(h.data, data);
}
