//! The server with the Redis store (upstream's key layout) against the simulated Lustre:
//! kill -9 and restart, Redis going away and coming back empty. Needs `redis-server` (the CI
//! script installs it); without it the test says so and does nothing.

mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    EhloRequest, QueueRequest, RecvRequest, Reply, Request, StatusReply, StatusRequest, WireHai,
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

fn status(c: &mut Client) -> StatusReply {
    match c.call(&Request::Status(StatusRequest { verbose: 4 })) {
        Reply::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn redis_store_survives_kill_9_and_a_redis_restart() {
    let sim = Sim::start("redis");
    let port = free_port();
    let Some(mut redis) = Redis::start(&sim.root.join("redis"), port) else {
        return;
    };
    let conf = config(
        &sim,
        &format!("store redis\nredis_host 127.0.0.1\nredis_port {port}\n"),
    );
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

    // Redis returns empty: the whole queue is written again, assignment included.
    let redis = Redis::start(&sim.root.join("redis"), port).expect("redis restarts");
    wait_until("the queue is back in Redis", || {
        redis.hlen("coordinatool_requests") == Some(4)
            && redis.hlen("coordinatool_assigned") == Some(1)
    });
    srv.wait_line(&["writing the whole queue again"]);
}
