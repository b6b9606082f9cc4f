//! The server with the Redis store (upstream's key layout) against the simulated Lustre:
//! kill -9 and restart, Redis going away and coming back empty. Needs `redis-server` (the CI
//! script installs it); without it the test says so and does nothing.

mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    DoneRequest, EhloRequest, LockRequest, QueueRequest, RecvRequest, Reply, Request, StatusReply,
    StatusRequest, WireHai,
};
use server_common::{Client, Server, Sim, config, wait_until};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A private redis-server on a loopback port, without persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path, port: u16) -> Option<Redis> {
        std::fs::create_dir_all(dir).unwrap();
        let child = match Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                // CI installs it: there, a missing redis-server is a failure, not a skip.
                assert!(
                    std::env::var_os("COORDINATOOL_REQUIRE_REDIS").is_none(),
                    "redis-server cannot be started ({e}) and COORDINATOOL_REQUIRE_REDIS is set"
                );
                eprintln!("SKIPPED: redis-server cannot be started ({e}); install redis-server");
                return None;
            }
        };
        let r = Redis { child, port };
        wait_until("redis-server answers PING", || {
            r.try_cmd("PING").is_some_and(|s| s == "+PONG")
        });
        Some(r)
    }

    /// One inline command; the first line of the reply.
    fn try_cmd(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n") {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&got).trim_end().to_owned())
    }

    fn hlen(&self, hash: &str) -> Option<i64> {
        self.try_cmd(&format!("HLEN {hash}"))?
            .strip_prefix(':')?
            .parse()
            .ok()
    }

    /// `HGET hash field`: the value, `None` when the field does not exist.
    fn hget(&self, hash: &str, field: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(format!("HGET {hash} {field}\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "redis closed the connection");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if text.starts_with("$-1\r\n") {
                return None;
            }
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n"))
                && let Ok(len) = len.parse::<usize>()
                && rest.len() >= len + 2
            {
                return Some(rest[..len].to_owned());
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A simulator, a private Redis for it, and a server config using that Redis plus `extra`
/// lines; `None` (the test skips) without redis-server.
fn with_redis(name: &str, extra: &str) -> Option<(Sim, Redis, std::path::PathBuf)> {
    let sim = Sim::start(name);
    let port = free_port();
    let redis = Redis::start(&sim.root.join("redis"), port)?;
    let conf = config(
        &sim,
        &format!("store redis\nredis_host 127.0.0.1\nredis_port {port}\n{extra}"),
    );
    Some((sim, redis, conf))
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

/// A `status` reply as raw JSON (the `store` object is not in the typed reply).
fn status_raw(c: &mut Client) -> serde_json::Value {
    serde_json::from_str(&c.call_text(&Request::Status(StatusRequest { verbose: 4 }))).unwrap()
}

/// Upstream's field name in both hashes (§4.19).
fn field(h: &WireHai) -> String {
    format!(
        "{:016x}{:016x}{:08x}{:08x}",
        h.cookie, h.dfid.seq, h.dfid.oid, h.dfid.ver
    )
}

fn ehlo(id: &str, running: Vec<WireHai>) -> Request {
    let mut e = EhloRequest::new(Some(id.into()));
    e.hai_list = running;
    Request::Ehlo(e)
}

fn done(h: &WireHai) -> Request {
    Request::Done(DoneRequest {
        cookie: h.cookie,
        dfid: h.dfid,
        status: 0,
    })
}

fn lock(locked: i32) -> Request {
    Request::Lock(LockRequest { locked })
}

fn status(c: &mut Client) -> StatusReply {
    match c.call(&Request::Status(StatusRequest { verbose: 4 })) {
        Reply::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn redis_store_survives_kill_9_and_a_redis_restart() {
    let Some((sim, mut redis, conf)) = with_redis("redis", "") else {
        return;
    };
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue((1..=3).map(item).collect())),
        r#"{"command":"queue","enqueued":3}"#
    );
    let mut m = srv.connect();
    m.call(&Request::Ehlo(EhloRequest::new(Some("m1".into()))));
    let got = match m.call(&Request::Recv(RecvRequest {
        max_archive: Some(1),
        ..RecvRequest::default()
    })) {
        Reply::Recv(r) => r.hal.unwrap().list,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 1);
    // Replies come after the write: Redis has it all already.
    assert_eq!(redis.hlen("coordinatool_requests"), Some(3));
    assert_eq!(redis.hlen("coordinatool_assigned"), Some(1));

    srv.signal(libc::SIGKILL);
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let st = status(&mut q);
    assert_eq!((st.pending_archive, st.running_archive), (2, 1));
    let m1 = st.clients.iter().find(|c| c.client_id == "m1").unwrap();
    assert_eq!(m1.current_archive, 1);

    // Redis goes away: the server keeps answering.
    redis.kill();
    assert_eq!(
        q.call_text(&queue(vec![item(4)])),
        r#"{"command":"queue","enqueued":1}"#
    );
    srv.wait_line(&["store unreachable"]);
    assert_eq!(status(&mut q).pending_archive, 3);
    let store = &status_raw(&mut q)["store"];
    assert_eq!(
        (&store["kind"], &store["state"]),
        (&"redis".into(), &"down".into()),
        "{store}"
    );
    assert!(store["buffered_ops"].as_u64() >= Some(1), "{store}");

    // Redis returns empty: the whole queue is written again, assignment included.
    let redis = Redis::start(&sim.root.join("redis"), redis.port).expect("redis restarts");
    wait_until("the queue is back in Redis", || {
        redis.hlen("coordinatool_requests") == Some(4)
            && redis.hlen("coordinatool_assigned") == Some(1)
    });
    srv.wait_line(&["writing the whole queue again"]);
    wait_until("status says the store is back", || {
        status_raw(&mut q)["store"] == serde_json::json!({"kind": "redis", "state": "ok"})
    });
}

#[test]
fn every_command_with_the_redis_store() {
    let Some((sim, redis, conf)) = with_redis("redis-cmds", "client_grace_ms 600000\n") else {
        return;
    };
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(
        status_raw(&mut q)["store"],
        serde_json::json!({"kind": "redis", "state": "ok"})
    );

    // queue: every item in coordinatool_requests under upstream's field, as its hai JSON.
    let items: Vec<WireHai> = (1..=4).map(item).collect();
    assert_eq!(
        q.call_text(&queue(items.clone())),
        r#"{"command":"queue","enqueued":4}"#
    );
    assert_eq!(
        field(&items[0]),
        "00000000000003e90000000200000401".to_owned() + "0000000100000000"
    );
    let stored: serde_json::Value = serde_json::from_str(
        &redis
            .hget("coordinatool_requests", &field(&items[0]))
            .expect("the request is in redis"),
    )
    .unwrap();
    assert_eq!(stored["hai_cookie"], 1001);
    assert_eq!(stored["hal_archive_id"], 1);
    assert_eq!(redis.hlen("coordinatool_requests"), Some(4));

    // lock: a waiting mover gets nothing until unlock.
    assert_eq!(q.call_text(&lock(1)), r#"{"command":"lock"}"#);
    let mut m = srv.connect();
    assert_eq!(m.call_text(&ehlo("m1", vec![])), r#"{"command":"ehlo"}"#);
    m.send(&Request::Recv(RecvRequest {
        max_archive: Some(2),
        ..RecvRequest::default()
    }));
    assert_eq!(status(&mut q).locked, 1);
    assert_eq!(redis.hlen("coordinatool_assigned"), Some(0));
    assert_eq!(q.call_text(&lock(0)), r#"{"command":"lock"}"#);
    // recv: the reply comes once the assignment is in redis.
    let got = match m.next() {
        Reply::Recv(r) => r.hal.unwrap().list,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 2);
    assert_eq!(redis.hlen("coordinatool_assigned"), Some(2));
    for h in &got {
        assert_eq!(
            redis.hget("coordinatool_assigned", &field(h)).as_deref(),
            Some("m1")
        );
    }

    // done: both hashes forget the request.
    assert_eq!(m.call_text(&done(&got[0])), r#"{"command":"done"}"#);
    assert_eq!(redis.hget("coordinatool_requests", &field(&got[0])), None);
    assert_eq!(redis.hget("coordinatool_assigned", &field(&got[0])), None);
    assert_eq!(redis.hlen("coordinatool_requests"), Some(3));

    // ehlo takeover: m1's connection drops, a new one claims its running request.
    drop(m);
    wait_until("m1 is disconnected", || {
        status(&mut q)
            .clients
            .iter()
            .any(|c| c.client_id == "m1" && c.status.as_str() == "disconnected")
    });
    let mut m = srv.connect();
    assert_eq!(
        m.call_text(&ehlo("m1", vec![got[1].clone()])),
        r#"{"command":"ehlo"}"#
    );
    let st = status(&mut q);
    let m1: Vec<_> = st.clients.iter().filter(|c| c.client_id == "m1").collect();
    assert_eq!(m1.len(), 1, "{st:?}");
    assert_eq!((m1[0].current_archive, m1[0].status.as_str()), (1, "ready"));
    assert_eq!(
        redis
            .hget("coordinatool_assigned", &field(&got[1]))
            .as_deref(),
        Some("m1")
    );

    // restart (clean): the queue and the assignment come back from redis.
    drop(m);
    assert!(srv.signal(libc::SIGTERM).success());
    assert_eq!(
        redis.hlen("coordinatool_assigned"),
        Some(1),
        "kept on a clean stop"
    );
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let st = status(&mut q);
    assert_eq!((st.pending_archive, st.running_archive), (2, 1));
    let mut m = srv.connect();
    assert_eq!(
        m.call_text(&ehlo("m1", vec![got[1].clone()])),
        r#"{"command":"ehlo"}"#
    );

    // lock-and-quit: the server stops after the done that leaves nothing running.
    assert_eq!(q.call_text(&lock(2)), r#"{"command":"lock"}"#);
    assert_eq!(status(&mut q).locked, 2);
    assert_eq!(m.call_text(&done(&got[1])), r#"{"command":"done"}"#);
    assert!(srv.wait().success());
    assert_eq!(redis.hlen("coordinatool_requests"), Some(2));
    assert_eq!(redis.hlen("coordinatool_assigned"), Some(0));
}

#[test]
fn owners_of_requests_recovered_from_redis_are_looked_up_again() {
    let sim = Sim::start("redis-owner");
    let port = free_port();
    let Some(_redis) = Redis::start(&sim.root.join("redis"), port) else {
        return;
    };
    // 30 files of uid 4242, then 2 of uid 4343, queued with their real fids.
    let mut items = Vec::new();
    let mut small = Vec::new();
    for n in 0..32u32 {
        let (path, fid) = sim.file(&format!("f{n}"));
        let uid = if n < 30 { 4242 } else { 4343 };
        if let Err(e) = std::os::unix::fs::chown(&path, Some(uid), None) {
            eprintln!("SKIPPED: cannot chown test files ({e}); needs root");
            return;
        }
        let mut h = WireHai::new(HsmAction::Archive, fid, 5_000 + u64::from(n));
        h.archive_id = 1;
        items.push(h);
        if uid == 4343 {
            small.push(fid);
        }
    }
    let conf = config(
        &sim,
        &format!("store redis\nredis_host 127.0.0.1\nredis_port {port}\nfair_share_key uid\n"),
    );
    let mut srv = Server::start(&sim, &conf);
    assert_eq!(
        srv.connect().call_text(&queue(items)),
        r#"{"command":"queue","enqueued":32}"#
    );
    srv.signal(libc::SIGKILL);
    // Redis keeps no owner: the restarted server looks them up again, so the two files of
    // the small owner are in the first four sent (by chance: about 1 in 80).
    let srv = Server::start(&sim, &conf);
    let mut m = srv.connect();
    m.call(&Request::Ehlo(EhloRequest::new(Some("m".into()))));
    let got = match m.call(&Request::Recv(RecvRequest {
        max_archive: Some(4),
        ..RecvRequest::default()
    })) {
        Reply::Recv(r) => r.hal.unwrap().list,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 4);
    assert_eq!(
        got.iter().filter(|h| small.contains(&h.fid)).count(),
        2,
        "{got:?}"
    );
}

#[test]
fn an_upstream_config_without_a_store_key_keeps_its_queue_in_redis() {
    // Upstream's sample config names Redis and no `store`: a site switching binaries must
    // find its queue where the C server left it, not start on an empty embedded store.
    let sim = Sim::start("redis-implied");
    let port = free_port();
    let Some(redis) = Redis::start(&sim.root.join("redis"), port) else {
        return;
    };
    // The harness's config names the embedded store: this one is an upstream one.
    let conf = sim.root.join("upstream.conf");
    std::fs::write(
        &conf,
        format!("host 127.0.0.1\nport 0\nverbose info\nredis_host 127.0.0.1\nredis_port {port}\n"),
    )
    .unwrap();
    let mut srv = Server::start(&sim, &conf);
    srv.wait_line(&["store: Redis, as upstream"]);
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue((1..=2).map(item).collect())),
        r#"{"command":"queue","enqueued":2}"#
    );
    assert_eq!(redis.hlen("coordinatool_requests"), Some(2));
    assert_eq!(status_raw(&mut q)["store"]["kind"], "redis");

    srv.signal(libc::SIGKILL);
    let srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(status(&mut q).pending_archive, 2);
}

#[test]
fn a_stop_while_redis_is_away_waits_for_it_and_writes_what_it_buffered() {
    let Some((sim, mut redis, conf)) = with_redis("redis-stop", "") else {
        return;
    };
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    redis.kill();
    // Acknowledged while Redis is away: buffered.
    assert_eq!(
        q.call_text(&queue((1..=3).map(item).collect())),
        r#"{"command":"queue","enqueued":3}"#
    );
    srv.wait_line(&["store unreachable"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    srv.wait_line(&["store unreachable at stop"]);
    // Redis comes back (empty): the server writes its queue, then exits cleanly.
    let redis = Redis::start(&sim.root.join("redis"), redis.port).expect("redis restarts");
    assert!(srv.wait().success());
    assert_eq!(redis.hlen("coordinatool_requests"), Some(3));
    let srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(status(&mut q).pending_archive, 3);
}

/// Non-UTF-8 hsm data from Lustre (upstream dropped such requests, §9.4.12) is written to
/// Redis with `hai_data_b64`, read back after a restart, and reaches a mover unchanged.
#[test]
fn binary_hsm_data_goes_through_redis_to_the_mover() {
    let Some((sim, redis, conf)) = with_redis("redisbin", "") else {
        return;
    };
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let data: &[u8] = b"tag=\xff\xfe\x00bin\x80";
    let (_, fid) = sim.file("bin");
    sim.archive_with_data(fid, data);
    wait_until("the archive queued", || status(&mut q).pending_archive == 1);
    drop(q);
    assert!(srv.signal(libc::SIGTERM).success());
    drop(srv);

    let srv = Server::start(&sim, &conf);
    let mut m = srv.connect();
    m.call(&ehlo("m1", vec![]));
    let h = match m.call(&Request::Recv(RecvRequest::default())) {
        Reply::Recv(r) => r.hal.unwrap().list.remove(0),
        other => panic!("{other:?}"),
    };
    assert_eq!((h.action, h.dfid), (HsmAction::Archive, fid));
    assert_eq!(h.data, data);
    let stored = redis
        .hget("coordinatool_requests", &field(&h))
        .expect("the request's record in Redis");
    assert!(
        stored.contains(r#""hai_data_b64":"dGFnPf/+AGJpboA=""#),
        "{stored}"
    );
}

#[test]
fn a_stop_waits_only_for_buffered_changes_and_a_second_signal_ends_the_wait() {
    let Some((sim, mut redis, conf)) = with_redis("redis-stop2", "") else {
        return;
    };
    // Redis away, nothing buffered: nothing to wait for, a clean stop.
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue(vec![item(1)])),
        r#"{"command":"queue","enqueued":1}"#
    );
    redis.kill();
    wait_until("status says the store is down", || {
        status_raw(&mut q)["store"]["state"] == "down"
    });
    assert!(srv.signal(libc::SIGTERM).success());
    assert!(
        !srv.lines()
            .iter()
            .any(|l| l.contains("store unreachable at stop")),
        "{:?}",
        srv.lines()
    );

    // Redis away with changes buffered: the stop waits, a second signal ends the wait, and
    // the exit status says the store is behind.
    let redis = Redis::start(&sim.root.join("redis"), redis.port).expect("redis restarts");
    let mut srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    drop(redis);
    assert_eq!(
        q.call_text(&queue(vec![item(2)])),
        r#"{"command":"queue","enqueued":1}"#
    );
    srv.wait_line(&["store unreachable"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    srv.wait_line(&["store unreachable at stop"]);
    let st = srv.signal(libc::SIGINT);
    assert_eq!(st.code(), Some(1), "{:?}", srv.lines());
    srv.wait_line(&["second stop signal"]);
    srv.wait_line(&["changes the redis store never took"]);
}
