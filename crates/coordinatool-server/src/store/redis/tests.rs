use super::*;
use crate::store::testutil::{RedisServer, request};
use coordinatool_sched::RequestKey;
use std::time::Instant;

fn opts(port: u16) -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        commit_wait: Duration::from_millis(300),
        ping_interval: Duration::from_millis(50),
        ..RedisOptions::new("127.0.0.1", port)
    }
}

fn key(cookie: u64) -> RequestKey {
    request(cookie, HsmAction::Archive, b"").key()
}

fn batch(ops: Vec<PersistOp>) -> Batch {
    let mut b = Batch::new();
    b.extend(ops);
    b
}

fn hget(con: &mut redis::Connection, hash: &str, field: &str) -> Option<Vec<u8>> {
    redis::cmd("HGET").arg(hash).arg(field).query(con).unwrap()
}

fn summary(r: &Recovery) -> Vec<(u64, Option<String>)> {
    let mut v: Vec<_> = r
        .requests
        .iter()
        .map(|x| (x.request.cookie, x.assigned.clone()))
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn layout_is_upstreams() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut s = RedisStore::connect(opts(server.port)).unwrap();
    let r = request(0x692f08f5, HsmAction::Restore, b"cr=job\0x");
    let k = r.key();
    let st = s
        .commit(&batch(vec![
            PersistOp::New(r.clone()),
            PersistOp::Assigned {
                key: k,
                client: "mover1".into(),
            },
        ]))
        .unwrap();
    assert_eq!(st, CommitStatus::Durable);
    let mut con = server.con();
    let field = field_from_key(&k);
    let json =
        hget(&mut con, REQUESTS_HASH, &field).expect("request stored under the upstream field");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["hai_action"], 21);
    assert_eq!(v["hai_cookie"], 0x692f08f5);
    assert_eq!(v["hai_dfid"]["f_oid"], 0x692f08f5u32 as u64);
    assert_eq!(v["hal_archive_id"], 1);
    assert_eq!(v["hai_extent_length"], -1);
    assert_eq!(v["hai_data"], "cr=job\u{0}x");
    assert!(
        !String::from_utf8(json).unwrap().contains(": "),
        "compact JSON"
    );
    assert_eq!(
        hget(&mut con, ASSIGNED_HASH, &field),
        Some(b"mover1".to_vec())
    );
    // Unassign, then finish: both hashes empty.
    s.commit(&batch(vec![PersistOp::Unassigned { key: k }]))
        .unwrap();
    assert_eq!(hget(&mut con, ASSIGNED_HASH, &field), None);
    assert!(hget(&mut con, REQUESTS_HASH, &field).is_some());
    s.commit(&batch(vec![
        PersistOp::Assigned {
            key: k,
            client: "m2".into(),
        },
        PersistOp::Finished { key: k },
    ]))
    .unwrap();
    assert_eq!(hget(&mut con, REQUESTS_HASH, &field), None);
    assert_eq!(hget(&mut con, ASSIGNED_HASH, &field), None);
    assert_eq!(
        s.health(),
        StoreHealth {
            backend: "redis",
            connected: true,
            pending_keys: 0,
            last_error: None,
            needs_full_resync: false,
        }
    );
}

#[test]
fn load_round_trip_and_report_files() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    {
        let mut s = RedisStore::connect(opts(server.port)).unwrap();
        let mut b = batch(vec![
            PersistOp::New(request(1, HsmAction::Archive, b"a")),
            PersistOp::New(request(2, HsmAction::Remove, b"")),
            PersistOp::Assigned {
                key: key(2),
                client: "mover9".into(),
            },
        ]);
        b.track_report_file("job1");
        b.track_report_file("job2");
        s.commit(&b).unwrap();
        let mut b = Batch::new();
        b.untrack_report_file("job1");
        s.commit(&b).unwrap();
    }
    let mut s = RedisStore::connect(opts(server.port)).unwrap();
    let r = s.load().unwrap();
    assert_eq!(summary(&r), vec![(1, None), (2, Some("mover9".into()))]);
    let one = r.requests.iter().find(|x| x.request.cookie == 1).unwrap();
    assert_eq!(one.request, request(1, HsmAction::Archive, b"a"));
    assert_eq!(r.report_files, vec!["job2"]);
    assert!(r.corrupt.is_empty());
}

#[test]
fn load_reads_c_server_data_and_skips_bad_entries() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.con();
    // As the C server writes it (jansson, JSON_COMPACT, its own key order, NUL as \u0000).
    let c_json = r#"{"hai_action":20,"hai_fid":{"f_seq":8589937623,"f_oid":2905,"f_ver":0},"hai_dfid":{"f_seq":8589937623,"f_oid":2905,"f_ver":0},"hai_extent_offset":0,"hai_extent_length":-1,"hai_cookie":1764690165,"hai_gid":0,"hai_data":"tag=n0\u0000","hal_archive_id":3,"hal_flags":0,"timestamp":1700000000123456789}"#;
    let good = "00000000692f08f50000000200000bd700000b5900000000";
    let bad_json = field_from_key(&key(2));
    let mismatched = field_from_key(&key(3));
    let zero_archive = field_from_key(&key(4));
    let _: () = redis::cmd("HSET")
        .arg(REQUESTS_HASH)
        .arg(good)
        .arg(c_json)
        .arg(&bad_json)
        .arg("{not json")
        .arg(&mismatched)
        .arg(serde_json::to_vec(&request_to_wire(&request(99, HsmAction::Archive, b""))).unwrap())
        .arg(&zero_archive)
        .arg(r#"{"hai_action":20,"hai_cookie":4}"#)
        .arg("not-a-field")
        .arg("{}")
        .query(&mut con)
        .unwrap();
    let stale = field_from_key(&key(7));
    let _: () = redis::cmd("HSET")
        .arg(ASSIGNED_HASH)
        .arg(good)
        .arg("mover0")
        .arg(&stale)
        .arg("gone")
        .query(&mut con)
        .unwrap();
    let mut s = RedisStore::connect(opts(server.port)).unwrap();
    let r = s.load().unwrap();
    assert_eq!(r.requests.len(), 1, "{:?}", r.corrupt);
    let got = &r.requests[0];
    assert_eq!(got.assigned.as_deref(), Some("mover0"));
    assert_eq!(got.request.cookie, 1764690165);
    assert_eq!(
        got.request.dfid,
        coordinatool_lustre::LuFid::new(0x200000bd7, 0xb59, 0)
    );
    assert_eq!(&*got.request.data, b"tag=n0\0");
    assert_eq!(got.request.archive_id, 3);
    assert_eq!(got.request.timestamp.0, 1700000000123456789);
    let mut bad: Vec<(String, String)> = r
        .corrupt
        .iter()
        .map(|c| (c.key.clone(), c.reason.clone()))
        .collect();
    bad.sort();
    assert_eq!(bad.len(), 4, "{bad:?}");
    let reason_of = |f: &str| {
        bad.iter()
            .find(|(k, _)| k == f)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert!(reason_of(&bad_json).contains("invalid JSON"));
    assert!(reason_of(&mismatched).contains("do not match"));
    assert!(reason_of(&zero_archive).contains("hal_archive_id"));
    assert!(reason_of("not-a-field").contains("48 hex"));
    assert_eq!(r.stale_assignments, 1);
    assert_eq!(
        hget(&mut con, ASSIGNED_HASH, &stale),
        None,
        "stale assignment removed"
    );
}

#[test]
fn load_pages_through_large_hashes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut s = RedisStore::connect(RedisOptions {
        scan_count: 100,
        fields_per_command: 37,
        ..opts(server.port)
    })
    .unwrap();
    let n = 5_000u64;
    let mut b = Batch::new();
    for c in 0..n {
        b.push(PersistOp::New(request(c, HsmAction::Archive, b"x")));
        if c % 3 == 0 {
            b.push(PersistOp::Assigned {
                key: key(c),
                client: format!("m{}", c % 7),
            });
        }
    }
    assert_eq!(s.commit(&b).unwrap(), CommitStatus::Durable);
    let r = s.load().unwrap();
    let got = summary(&r);
    assert_eq!(got.len(), n as usize);
    for (c, a) in got {
        assert_eq!(a, (c % 3 == 0).then(|| format!("m{}", c % 7)), "cookie {c}");
    }
}

#[test]
fn outage_buffers_then_resyncs() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut s = RedisStore::connect(opts(server.port)).unwrap();
    assert_eq!(
        s.commit(&batch(vec![PersistOp::New(request(
            1,
            HsmAction::Archive,
            b""
        ))]))
        .unwrap(),
        CommitStatus::Durable
    );
    server.stop();
    // The first commit after the loss may wait for the failed write; later ones return at once.
    let st = s
        .commit(&batch(vec![
            PersistOp::New(request(2, HsmAction::Archive, b"")),
            PersistOp::Assigned {
                key: key(2),
                client: "m".into(),
            },
        ]))
        .unwrap();
    assert_eq!(st, CommitStatus::Buffered);
    wait_for("the outage to be noticed", || !s.health().connected);
    let t = Instant::now();
    let st = s
        .commit(&batch(vec![
            PersistOp::New(request(3, HsmAction::Archive, b"")),
            PersistOp::Finished { key: key(1) },
        ]))
        .unwrap();
    assert_eq!(st, CommitStatus::Buffered);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "no waiting while redis is known to be away"
    );
    let h = s.health();
    assert!(!h.connected);
    assert!(h.last_error.is_some());
    assert_eq!(h.pending_keys, 3, "keys 1, 2 and 3 are buffered: {h:?}");
    // Redis returns (empty: it had no persistence); the buffered changes are written, and
    // the loss of the earlier acknowledged write (key 1's New) is noticed.
    server.restart();
    wait_for("the re-sync", || {
        let h = s.health();
        h.connected && h.pending_keys == 0
    });
    assert!(s.health().needs_full_resync);
    let mut con = server.con();
    assert!(hget(&mut con, REQUESTS_HASH, &field_from_key(&key(2))).is_some());
    assert!(hget(&mut con, REQUESTS_HASH, &field_from_key(&key(3))).is_some());
    assert_eq!(
        hget(&mut con, ASSIGNED_HASH, &field_from_key(&key(2))),
        Some(b"m".to_vec())
    );
    // The loop answers with the whole queue: it replaces whatever Redis holds.
    let _: () = redis::cmd("HSET")
        .arg(REQUESTS_HASH)
        .arg("junk")
        .arg("{}")
        .query(&mut con)
        .unwrap();
    let mut snap = batch(vec![
        PersistOp::New(request(2, HsmAction::Archive, b"")),
        PersistOp::Assigned {
            key: key(2),
            client: "m".into(),
        },
        PersistOp::New(request(3, HsmAction::Archive, b"")),
    ]);
    snap.track_report_file("job");
    assert_eq!(s.full_resync(&snap).unwrap(), CommitStatus::Durable);
    assert!(!s.health().needs_full_resync);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(REQUESTS_HASH)
        .query(&mut con)
        .unwrap();
    let mut fields = fields;
    fields.sort();
    assert_eq!(
        fields,
        vec![field_from_key(&key(2)), field_from_key(&key(3))]
    );
    assert_eq!(hget(&mut con, REPORTS_HASH, "job"), Some(b"1".to_vec()));
    assert_eq!(
        s.commit(&batch(vec![PersistOp::Finished { key: key(3) }]))
            .unwrap(),
        CommitStatus::Durable
    );
    assert_eq!(
        hget(&mut con, REQUESTS_HASH, &field_from_key(&key(3))),
        None
    );
}

#[test]
fn lost_connection_without_data_loss_needs_no_full_resync() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut s = RedisStore::connect(opts(server.port)).unwrap();
    s.commit(&batch(vec![PersistOp::New(request(
        1,
        HsmAction::Archive,
        b"",
    ))]))
    .unwrap();
    let mut admin = server.con();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut admin)
        .unwrap();
    wait_for("the loss to be noticed", || !s.health().connected);
    wait_for("the reconnection", || s.health().connected);
    s.commit(&batch(vec![PersistOp::New(request(
        2,
        HsmAction::Archive,
        b"",
    ))]))
    .unwrap();
    let h = s.health();
    assert!(!h.needs_full_resync, "{h:?}");
    assert_eq!(summary(&s.load().unwrap()), vec![(1, None), (2, None)]);
}

#[test]
fn unreachable_at_start_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = RedisStore::connect(opts(port)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("redis 127.0.0.1:{port}: ")),
        "{msg}"
    );
}
