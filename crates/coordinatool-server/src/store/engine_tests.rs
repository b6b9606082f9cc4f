//! The store contract with the real engine: what the engine emits during a run, committed
//! turn by turn, brings a fresh engine back to the same queue after a crash.

use super::testutil::{RedisServer, TempDir, request};
use super::*;
use coordinatool_lustre::HsmAction;
use coordinatool_sched::{Action, Config, Ehlo, Engine, RecvLimits, RequestKey, Time};
use std::collections::BTreeMap;

/// Drains the engine into a batch (one turn) and commits it.
fn turn(engine: &mut Engine, store: &mut dyn Store) -> Vec<RequestKey> {
    let mut batch = Batch::new();
    let mut delivered = Vec::new();
    while let Some(a) = engine.poll_action() {
        match a {
            Action::Persist(op) => batch.push(op),
            Action::Deliver(d) => delivered.extend(d.items.iter().map(|r| r.key())),
            _ => {}
        }
    }
    assert_eq!(store.commit(&batch).unwrap(), CommitStatus::Durable);
    delivered
}

/// Where every request is: `None` queued, `Some(name)` running on that client.
fn placement(engine: &Engine, keys: &[RequestKey]) -> BTreeMap<u64, Option<String>> {
    keys.iter()
        .filter_map(|k| {
            let owner = engine.request_owner(*k)?;
            Some((
                k.cookie,
                owner.map(|c| engine.client_name(c).unwrap().to_string()),
            ))
        })
        .collect()
}

fn run_and_recover(open: &mut dyn FnMut() -> Box<dyn Store>) {
    let now = Time::from_secs(1_700_000_000);
    let mut store = open();
    let mut engine = Engine::new(Config::default()).unwrap();
    let keys: Vec<RequestKey> = (1..=40)
        .map(|c| request(c, HsmAction::Archive, b"").key())
        .collect();
    let reqs = (1..=40).map(|c| {
        let mut r = request(
            c,
            if c % 4 == 0 {
                HsmAction::Restore
            } else {
                HsmAction::Archive
            },
            b"x",
        );
        r.timestamp = now;
        r
    });
    let _ = engine.new_requests(reqs, now);
    turn(&mut engine, store.as_mut());
    // Two movers take some work; one finishes part of it.
    let mut sent = Vec::new();
    for name in ["mover1", "mover2"] {
        let c = engine.connect(&format!("{name}:1"), now);
        engine
            .ehlo(
                c,
                Ehlo {
                    id: Some(name.into()),
                    ..Ehlo::default()
                },
                now,
            )
            .unwrap();
        let limits = RecvLimits {
            max_archive: Some(5),
            max_restore: Some(2),
            max_remove: Some(1),
            max_bytes: 1 << 20,
        };
        engine.recv(c, limits, now).unwrap();
        let got = turn(&mut engine, store.as_mut());
        assert!(!got.is_empty());
        sent.push((c, got));
    }
    let (m1, got1) = &sent[0];
    for k in &got1[..2] {
        engine.done(*m1, *k, 0, now);
    }
    turn(&mut engine, store.as_mut());
    let before = placement(&engine, &keys);
    assert_eq!(before.len(), 38, "two requests are done");
    assert!(
        before.values().filter(|v| v.is_some()).count() >= 4,
        "{before:?}"
    );
    // Crash: no shutdown of anything, a new store and a new engine.
    drop(store);
    let mut store = open();
    let r = store.load().unwrap();
    assert!(r.corrupt.is_empty());
    let mut engine2 = Engine::new(Config::default()).unwrap();
    for x in r.requests {
        engine2
            .recover(x.request, x.assigned.as_deref(), now)
            .unwrap();
    }
    turn(&mut engine2, store.as_mut());
    assert_eq!(
        placement(&engine2, &keys),
        before,
        "same requests, same movers"
    );
    assert_eq!(engine2.pending(), engine.pending());
    assert_eq!(engine2.running(), engine.running());
}

#[test]
fn embedded_store_restores_the_engine_state() {
    let dir = TempDir::new("engine-emb");
    let path = dir.0.clone();
    run_and_recover(&mut || Box::new(EmbeddedStore::open(&path).unwrap()));
}

#[test]
fn redis_store_restores_the_engine_state() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let port = server.port;
    run_and_recover(&mut || {
        Box::new(RedisStore::connect(RedisOptions::new("127.0.0.1", port)).unwrap())
    });
}
