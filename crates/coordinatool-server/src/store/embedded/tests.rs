use super::*;
use crate::store::codec::{encode_record, field_from_key};
use crate::store::testutil::{TempDir, request};
use coordinatool_lustre::HsmAction;

fn new_op(cookie: u64) -> PersistOp {
    PersistOp::New(request(
        cookie,
        HsmAction::Archive,
        format!("tag={cookie}").as_bytes(),
    ))
}

fn key(cookie: u64) -> coordinatool_sched::RequestKey {
    request(cookie, HsmAction::Archive, b"").key()
}

fn batch(ops: Vec<PersistOp>) -> Batch {
    let mut b = Batch::new();
    b.extend(ops);
    b
}

fn summary(r: &Recovery) -> Vec<(u64, Option<String>)> {
    r.requests
        .iter()
        .map(|x| (x.request.cookie, x.assigned.clone()))
        .collect()
}

#[test]
fn requests_and_assignments_survive_reopen() {
    let dir = TempDir::new("emb");
    {
        let mut s = EmbeddedStore::open(&dir.0).unwrap();
        assert_eq!(s.load().unwrap().requests.len(), 0);
        let b = batch(vec![
            new_op(1),
            new_op(2),
            new_op(3),
            PersistOp::Assigned {
                key: key(2),
                client: "mover1".into(),
            },
            PersistOp::Assigned {
                key: key(3),
                client: "mover2".into(),
            },
        ]);
        assert_eq!(s.commit(&b).unwrap(), CommitStatus::Durable);
        let b = batch(vec![
            PersistOp::Unassigned { key: key(3) },
            PersistOp::Finished { key: key(1) },
        ]);
        s.commit(&b).unwrap();
    }
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    let r = s.load().unwrap();
    assert_eq!(summary(&r), vec![(2, Some("mover1".into())), (3, None)]);
    assert_eq!(
        r.requests[0].request,
        request(2, HsmAction::Archive, b"tag=2")
    );
    assert!(r.corrupt.is_empty());
    assert_eq!(r.stale_assignments, 0);
}

#[test]
fn ops_apply_in_order_within_a_batch() {
    let dir = TempDir::new("emb");
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    s.commit(&batch(vec![
        new_op(5),
        PersistOp::Assigned {
            key: key(5),
            client: "a".into(),
        },
        PersistOp::Finished { key: key(5) },
        new_op(6),
        PersistOp::Assigned {
            key: key(6),
            client: "a".into(),
        },
        PersistOp::Unassigned { key: key(6) },
        PersistOp::Assigned {
            key: key(6),
            client: "b".into(),
        },
    ]))
    .unwrap();
    assert_eq!(summary(&s.load().unwrap()), vec![(6, Some("b".into()))]);
    assert_eq!(s.commit(&Batch::new()).unwrap(), CommitStatus::Durable);
    // Keys interleaved, out of key order, over what the store already has.
    s.commit(&batch(vec![
        PersistOp::Finished { key: key(6) },
        new_op(8),
        PersistOp::Assigned {
            key: key(6),
            client: "late".into(),
        },
        new_op(7),
        PersistOp::Assigned {
            key: key(7),
            client: "c".into(),
        },
        new_op(6),
        PersistOp::Finished { key: key(8) },
        new_op(8),
    ]))
    .unwrap();
    assert_eq!(
        summary(&s.load().unwrap()),
        vec![(6, None), (7, Some("c".into())), (8, None)]
    );
    s.commit(&batch(vec![
        PersistOp::Assigned {
            key: key(8),
            client: "d".into(),
        },
        PersistOp::Unassigned { key: key(7) },
    ]))
    .unwrap();
    assert_eq!(
        summary(&s.load().unwrap()),
        vec![(6, None), (7, None), (8, Some("d".into()))]
    );
}

#[test]
fn an_assignment_without_its_request_is_not_stored() {
    let dir = TempDir::new("emb");
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    s.commit(&batch(vec![
        PersistOp::Assigned {
            key: key(1),
            client: "gone".into(),
        },
        new_op(2),
        PersistOp::Assigned {
            key: key(3),
            client: "gone".into(),
        },
        PersistOp::Unassigned { key: key(3) },
        new_op(4),
        PersistOp::Assigned {
            key: key(4),
            client: "m".into(),
        },
        PersistOp::Finished { key: key(9) },
    ]))
    .unwrap();
    let r = s.load().unwrap();
    assert_eq!(summary(&r), vec![(2, None), (4, Some("m".into()))]);
    assert_eq!(r.stale_assignments, 0);
    // A request registered again starts unassigned, as the engine's state does.
    s.commit(&batch(vec![new_op(4)])).unwrap();
    assert_eq!(summary(&s.load().unwrap()), vec![(2, None), (4, None)]);
}

/// Writes a format-1 database as the code of that format did: records in `requests`,
/// client ids in `assigned`, report names in `reports`, `format = 1` in `meta`.
fn write_v1(dir: &Path, records: &[(u64, &[u8])], assigned: &[(u64, &[u8])], reports: &[&str]) {
    const V1_ASSIGNED: TableDefinition<'_, &[u8; KEY_LEN], &[u8]> =
        TableDefinition::new("assigned");
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::create(dir.join(DB_FILE_NAME)).unwrap();
    let tx = db.begin_write().unwrap();
    {
        tx.open_table(META).unwrap().insert("format", 1).unwrap();
        let mut req = tx.open_table(REQUESTS).unwrap();
        let mut buf = Vec::new();
        for (cookie, raw) in records {
            let k = key_bytes(&key(*cookie));
            if raw.is_empty() {
                let PersistOp::New(r) = new_op(*cookie) else {
                    unreachable!()
                };
                encode_record(&r, &mut buf);
                req.insert(&k, buf.as_slice()).unwrap();
            } else {
                req.insert(&k, *raw).unwrap();
            }
        }
        let mut asg = tx.open_table(V1_ASSIGNED).unwrap();
        for (cookie, client) in assigned {
            asg.insert(&key_bytes(&key(*cookie)), *client).unwrap();
        }
        let mut rep = tx.open_table(REPORTS).unwrap();
        for n in reports {
            rep.insert(*n, ()).unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn a_format_1_database_is_converted_with_its_assignments() {
    let dir = TempDir::new("emb-v1");
    write_v1(
        &dir.0,
        &[
            (1, b""),
            (2, b""),
            (3, b""),
            (4, b"\x01\x14\x00garb"),
            (5, b""),
        ],
        &[
            (0, b"gone"),
            (2, b"mover1"),
            (3, b"\xff\xfe"),
            (4, b"m"),
            (5, b"mover2@host"),
            (7, b"gone"),
        ],
        &["job1"],
    );
    {
        let mut s = EmbeddedStore::open(&dir.0).unwrap();
        let r = s.load().unwrap();
        assert_eq!(
            summary(&r),
            vec![
                (1, None),
                (2, Some("mover1".into())),
                (3, None),
                (5, Some("mover2@host".into()))
            ]
        );
        assert_eq!(
            r.requests[1].request,
            request(2, HsmAction::Archive, b"tag=2")
        );
        assert_eq!(r.stale_assignments, 2, "cookies 0 and 7 have no request");
        assert_eq!(r.report_files, vec!["job1"]);
        let mut corrupt: Vec<_> = r
            .corrupt
            .iter()
            .map(|c| (c.key.clone(), c.reason.clone()))
            .collect();
        corrupt.sort();
        assert_eq!(corrupt.len(), 2, "{corrupt:?}");
        assert_eq!(corrupt[0].0, field_from_key(&key(3)));
        assert!(corrupt[0].1.contains("not UTF-8"), "{corrupt:?}");
        assert_eq!(corrupt[1].0, field_from_key(&key(4)));
        assert!(corrupt[1].1.contains("truncated"), "{corrupt:?}");
        // The converted database takes the new format's changes.
        s.commit(&batch(vec![
            PersistOp::Finished { key: key(2) },
            PersistOp::Assigned {
                key: key(1),
                client: "m3".into(),
            },
        ]))
        .unwrap();
    }
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    let r = s.load().unwrap();
    assert_eq!(
        summary(&r),
        vec![
            (1, Some("m3".into())),
            (3, None),
            (5, Some("mover2@host".into()))
        ]
    );
    assert_eq!(r.stale_assignments, 0, "converted once");
    let tx = s.db.begin_read().unwrap();
    assert_eq!(
        tx.open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .value(),
        FORMAT_VERSION
    );
    assert!(
        tx.list_tables().unwrap().all(|t| t.name() != "assigned"),
        "the format-1 table is gone"
    );
}

#[test]
fn a_newer_format_is_refused() {
    let dir = TempDir::new("emb-v9");
    {
        let db = Database::create(dir.0.join(DB_FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("format", 9).unwrap();
        tx.commit().unwrap();
    }
    let e = EmbeddedStore::open(&dir.0).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Format {
                found: 9,
                expected: FORMAT_VERSION,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn corrupt_record_is_reported_and_skipped() {
    let dir = TempDir::new("emb");
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    s.commit(&batch(vec![new_op(1), new_op(2), new_op(3)]))
        .unwrap();
    s.put_raw_record(&key(2), b"\x01\x14\x00garb").unwrap();
    let r = s.load().unwrap();
    assert_eq!(summary(&r), vec![(1, None), (3, None)]);
    assert_eq!(r.corrupt.len(), 1);
    assert_eq!(r.corrupt[0].table, "requests");
    assert_eq!(r.corrupt[0].key, crate::store::field_from_key(&key(2)));
    assert!(r.corrupt[0].reason.contains("truncated"), "{:?}", r.corrupt);
}

#[test]
fn report_files_are_tracked() {
    let dir = TempDir::new("emb");
    {
        let mut s = EmbeddedStore::open(&dir.0).unwrap();
        let mut b = Batch::new();
        b.track_report_file("job1");
        b.track_report_file("job2");
        s.commit(&b).unwrap();
        let mut b = Batch::new();
        b.untrack_report_file("job1");
        b.push_report_op(ReportFileOp::Track("job3".into()));
        s.commit(&b).unwrap();
    }
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    assert_eq!(s.load().unwrap().report_files, vec!["job2", "job3"]);
}

#[test]
fn second_open_is_refused() {
    let dir = TempDir::new("emb");
    let _s = EmbeddedStore::open(&dir.0).unwrap();
    let e = EmbeddedStore::open(&dir.0).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(DB_FILE_NAME), "{msg}");
}

#[test]
fn unusable_state_dir_is_an_error() {
    let dir = TempDir::new("emb");
    let file = dir.0.join("file");
    std::fs::write(&file, "x").unwrap();
    let e = EmbeddedStore::open(&file.join("sub")).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
}

const CRASH_ENV: &str = "CT_EMBEDDED_CRASH_DIR";

/// Runs in a child process: commit, then die without any cleanup (like kill -9).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let mut s = EmbeddedStore::open(Path::new(&dir)).unwrap();
    s.commit(&batch(vec![
        new_op(1),
        new_op(2),
        PersistOp::Assigned {
            key: key(2),
            client: "m".into(),
        },
    ]))
    .unwrap();
    s.commit(&batch(vec![PersistOp::Finished { key: key(1) }]))
        .unwrap();
    std::process::abort();
}

#[test]
fn committed_batches_survive_a_crash() {
    let dir = TempDir::new("emb-crash");
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "store::embedded::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, &dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die by abort");
    let mut s = EmbeddedStore::open(&dir.0).unwrap();
    assert_eq!(summary(&s.load().unwrap()), vec![(2, Some("m".into()))]);
}
