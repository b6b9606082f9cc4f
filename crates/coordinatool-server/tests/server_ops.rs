//! Operational behaviour of the server binary against the simulated Lustre: report files,
//! sd_notify, the upstream binary name, a client that does not read its replies, a client
//! reset while its replies are written (SIGPIPE), the shape of every error reply, the names of anonymous clients, the engine timer's rate limit.

mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    DoneRequest, EhloRequest, QueueRequest, RecvRequest, Reply, Request, StatusRequest, WireHai,
};
use server_common::{DEADLINE, Server, Sim, config, server_command, wait_until};
use std::os::unix::net::UnixDatagram;

fn item(n: u32, data: &[u8]) -> WireHai {
    let mut h = WireHai::new(
        HsmAction::Archive,
        LuFid::new(0x2_0000_0401, n, 0),
        1_000 + u64::from(n),
    );
    h.archive_id = 1;
    h.data = data.to_vec();
    h
}

fn queue(items: Vec<WireHai>) -> Request {
    Request::Queue(QueueRequest {
        items,
        fsname: None,
    })
}

#[test]
fn report_files_get_new_sent_and_done_lines() {
    let sim = Sim::start("report");
    let conf = config(
        &sim,
        "reporting_dir .reporting\nreporting_hint cr\nreporting_schedule_interval_ms 0\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    assert_eq!(
        q.call_text(&queue(vec![item(1, b"x=1,cr=job1"), item(2, b"nothing")])),
        r#"{"command":"queue","enqueued":2}"#
    );
    let mut m = srv.connect();
    m.call(&Request::Ehlo(EhloRequest::new(Some("m1".into()))));
    let mut got = Vec::new();
    while got.len() < 2 {
        match m.call(&Request::Recv(RecvRequest::default())) {
            Reply::Recv(r) => got.extend(r.hal.expect("a list").list),
            other => panic!("{other:?}"),
        }
    }
    for h in &got {
        m.call(&Request::Done(DoneRequest {
            cookie: h.cookie,
            dfid: h.dfid,
            status: if h.cookie == 1001 { 0 } else { 5 },
        }));
    }
    let file = sim.mount.join(".reporting").join("job1");
    let want =
        "new [0x200000401:0x1:0x0]\nsent [0x200000401:0x1:0x0] m1\ndone [0x200000401:0x1:0x0] 0\n";
    wait_until("the report file has its three lines", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t == want)
    });
    let names: Vec<_> = std::fs::read_dir(sim.mount.join(".reporting"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("job1")]);
}

#[test]
fn a_remove_gets_its_report_lines_like_an_archive() {
    let sim = Sim::start("report-rm");
    let conf = config(
        &sim,
        "reporting_dir .reporting\nreporting_hint cr\nreporting_schedule_interval_ms 0\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut q = srv.connect();
    let mut rm = item(7, b"cr=rm1");
    rm.action = HsmAction::Remove;
    assert_eq!(
        q.call_text(&queue(vec![rm])),
        r#"{"command":"queue","enqueued":1}"#
    );
    let mut m = srv.connect();
    m.call(&Request::Ehlo(EhloRequest::new(Some("m2".into()))));
    let got = match m.call(&Request::Recv(RecvRequest::default())) {
        Reply::Recv(r) => r.hal.expect("a list").list,
        other => panic!("{other:?}"),
    };
    assert_eq!((got.len(), got[0].action), (1, HsmAction::Remove));
    m.call(&Request::Done(DoneRequest {
        cookie: got[0].cookie,
        dfid: got[0].dfid,
        status: 2,
    }));
    let file = sim.mount.join(".reporting").join("rm1");
    let want =
        "new [0x200000401:0x7:0x0]\nsent [0x200000401:0x7:0x0] m2\ndone [0x200000401:0x7:0x0] 2\n";
    wait_until("the remove's report file has its three lines", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t == want)
    });
}

#[test]
fn sd_notify_ready_then_stopping() {
    let sim = Sim::start("notify");
    let sock_path = sim.root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = server_command(&sim, &config(&sim, ""));
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut srv = Server::spawn(cmd);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=listening on {}\n", srv.addr)
    );
    assert!(srv.signal(libc::SIGTERM).success());
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
}

#[test]
fn sd_notify_watchdog_pings_while_the_unit_asks_for_them() {
    let sim = Sim::start("watchdog");
    let sock_path = sim.root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = server_command(&sim, &config(&sim, ""));
    // WatchdogSec=0.2 as systemd passes it (no WATCHDOG_PID: meant for this process).
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    let mut srv = Server::spawn(cmd);
    let mut buf = [0u8; 512];
    let mut pings = 0;
    let mut ready = false;
    while pings < 3 {
        let n = sock.recv(&mut buf).expect("a notification");
        match &buf[..n] {
            b"WATCHDOG=1\n" => pings += 1,
            m if m.starts_with(b"READY=1\n") => ready = true,
            m if m.starts_with(b"STATUS=") => {}
            m => panic!("unexpected {:?}", String::from_utf8_lossy(m)),
        }
    }
    assert!(ready, "READY before the pings");
    assert!(srv.signal(libc::SIGTERM).success());
}

#[test]
fn the_upstream_binary_name_runs_the_same_server() {
    let sim = Sim::start("alias");
    let conf = config(&sim, "");
    let base = server_command(&sim, &conf);
    let mut alias = std::process::Command::new(env!("CARGO_BIN_EXE_lhsmd_coordinatool"));
    alias.args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => alias.env(k, v),
            None => alias.env_remove(k),
        };
    }
    let srv = Server::spawn(alias);
    let mut c = srv.connect();
    assert_eq!(
        c.call_text(&Request::Ehlo(EhloRequest::new(Some("x".into())))),
        r#"{"command":"ehlo"}"#
    );
}

#[test]
fn a_client_that_does_not_read_is_disconnected_and_others_go_on() {
    let sim = Sim::start("slow");
    let mut srv = Server::start(&sim, &config(&sim, ""));
    let mut q = srv.connect();
    // 20,000 queued requests make every `status` dump about 1.5 MB.
    let items: Vec<WireHai> = (1..=20_000).map(|n| item(n, b"")).collect();
    assert_eq!(
        q.call_text(&queue(items)),
        r#"{"command":"queue","enqueued":20000}"#
    );
    let dump_len = q
        .call_text(&Request::Status(StatusRequest { verbose: 6 }))
        .len();
    let mut slow = srv.connect();
    let mut req = Vec::new();
    Request::Status(StatusRequest { verbose: 6 }).encode(&mut req);
    // Ask for far more than the outbox limit plus the socket buffers, never reading.
    let many: Vec<u8> = req.repeat(40);
    slow.send_raw(&many);
    srv.wait_line(&["client does not read its replies: disconnecting it"]);
    // Everybody else is served.
    match q.call(&Request::Status(StatusRequest { verbose: 4 })) {
        Reply::Status(s) => {
            assert_eq!(s.pending_archive, 20_000);
            assert_eq!(s.clients_connected, 1, "the slow client is gone");
        }
        other => panic!("{other:?}"),
    }
    // The slow client's stream ends (EOF or reset) once its buffered bytes are read.
    slow.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut total = 0usize;
    loop {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 20];
        match slow.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the slow client's connection should be closed, not idle")
            }
            Err(_) => break,
        }
    }
    assert!(
        total < 40 * dump_len,
        "not every reply was sent ({total} bytes)"
    );
}

/// Whether `pid` ignores SIGPIPE (`SigIgn` of `/proc/<pid>/status`).
fn ignores_sigpipe(pid: u32) -> bool {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let mask = st
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("SigIgn line");
    let mask = u64::from_str_radix(mask.trim(), 16).expect("hex mask");
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

#[test]
fn a_client_reset_while_replies_are_written_does_not_hurt_the_server() {
    let sim = Sim::start("sigpipe");
    let mut srv = Server::start(&sim, &config(&sim, ""));
    assert!(
        ignores_sigpipe(srv.child.id()),
        "a write to a reset connection must be an EPIPE error, not a fatal signal"
    );
    let mut q = srv.connect();
    let items: Vec<WireHai> = (1..=2_000).map(|n| item(n, b"")).collect();
    assert_eq!(
        q.call_text(&queue(items)),
        r#"{"command":"queue","enqueued":2000}"#
    );
    // Big replies asked for, then the connection reset (RST) before they are read, a few
    // times: writes to it fail (ECONNRESET, then EPIPE).
    for _ in 0..5 {
        let mut gone = srv.connect();
        let mut req = Vec::new();
        Request::Status(StatusRequest { verbose: 6 }).encode(&mut req);
        gone.send_raw(&req.repeat(20));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd and a `linger` of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&gone.stream),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(gone);
    }
    // The server lives on and serves the others.
    wait_until("the reset connections are gone", || {
        match q.call(&Request::Status(StatusRequest { verbose: 4 })) {
            Reply::Status(s) => {
                assert_eq!(s.pending_archive, 2_000);
                s.clients_connected == 1
            }
            other => panic!("{other:?}"),
        }
    });
    assert!(
        srv.child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
}

#[test]
fn a_mount_point_that_is_not_lustre_is_refused_with_exit_code_1() {
    let sim = Sim::start("notlustre");
    let plain = sim.root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let conf = config(&sim, "");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coordinatool-server"));
    cmd.arg("-c")
        .arg(&conf)
        .arg(&plain)
        .env("LD_LIBRARY_PATH", server_common::lib_dir())
        .env_remove("COORDINATOOL_LIBLUSTREAPI");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: not a Lustre mount point", plain.display())),
        "{err}"
    );
}

/// Sends raw bytes on a fresh connection (after `setup`) and returns the next reply, parsed.
fn reply_to(c: &mut server_common::Client, raw: &str) -> serde_json::Value {
    c.send_raw(raw.as_bytes());
    serde_json::from_slice(&c.next_raw()).expect("a JSON reply")
}

#[test]
fn every_error_reply_has_the_reference_shape() {
    use serde_json::json;
    let sim = Sim::start("errors");
    let srv = Server::start(&sim, &config(&sim, ""));
    let fid = r#"{"f_seq":1,"f_oid":2,"f_ver":0}"#;
    let hai = |action: u32| {
        format!(
            r#"{{"hai_action":{action},"hai_fid":{fid},"hai_dfid":{fid},"hai_extent_offset":0,"hai_extent_length":-1,"hai_cookie":{action},"hai_gid":0,"hal_archive_id":1,"hai_data":""}}"#
        )
    };
    let mut a = srv.connect();
    // recv before ehlo.
    let must = "Client must send EHLO first and not already be in RECV";
    assert_eq!(
        reply_to(&mut a, r#"{"command":"recv"}"#),
        json!({"command": "recv", "status": 22, "error": must})
    );
    // Bad archive id: upstream sent it as "done" (§9.4 item 13), fixed.
    assert_eq!(
        reply_to(&mut a, r#"{"command":"ehlo","id":"a","archive_ids":[0]}"#),
        json!({"command": "ehlo", "status": 22, "error": "Bad archive id in list"})
    );
    assert_eq!(
        reply_to(&mut a, r#"{"command":"ehlo","id":"a"}"#),
        json!({"command": "ehlo"})
    );
    assert_eq!(
        reply_to(&mut a, r#"{"command":"ehlo","id":"a"}"#),
        json!({"command": "ehlo", "status": 22, "error": "Client cannot send EHLO twice"})
    );
    let mut b = srv.connect();
    assert_eq!(
        reply_to(&mut b, r#"{"command":"ehlo","id":"a"}"#),
        json!({"command": "ehlo", "status": 17, "error": "id already used by another client"})
    );
    assert_eq!(
        reply_to(&mut a, r#"{"command":"recv","max_bytes":171}"#),
        json!({"command": "recv", "status": 22, "error": "Buffer too small"})
    );
    // A recv while one is pending.
    a.send_raw(br#"{"command":"recv"}"#);
    assert_eq!(
        reply_to(&mut a, r#"{"command":"recv"}"#),
        json!({"command": "recv", "status": 22, "error": must})
    );
    assert_eq!(
        reply_to(&mut b, &format!(r#"{{"command":"done","hai_dfid":{fid}}}"#)),
        json!({"command": "done", "status": 22, "error": "cookie or fid not set -- old client?"})
    );
    assert_eq!(
        reply_to(&mut b, r#"{"command":"done","hai_cookie":5}"#),
        json!({"command": "done", "status": 22, "error": "cookie or fid not set -- old client?"})
    );
    // A done for an unknown request is a success (double ack on cancel).
    assert_eq!(
        reply_to(
            &mut b,
            &format!(r#"{{"command":"done","hai_cookie":5,"hai_dfid":{fid}}}"#)
        ),
        json!({"command": "done"})
    );
    assert_eq!(
        reply_to(&mut b, r#"{"command":"queue","hsm_action_items":[]}"#),
        json!({"command": "queue", "status": 22, "error": "No hsm_action_items set"})
    );
    assert_eq!(
        reply_to(
            &mut b,
            &format!(
                r#"{{"command":"queue","fsname":"other","hsm_action_items":[{}]}}"#,
                hai(20)
            )
        ),
        json!({"command": "queue", "status": 22, "error": "Bad fsname"})
    );
    // One valid item, one cancel (refused): the valid one is registered. Upstream's status
    // is -22 (§9.4 item 13): positive here.
    assert_eq!(
        reply_to(
            &mut b,
            &format!(
                r#"{{"command":"queue","hsm_action_items":[{},{}]}}"#,
                hai(20),
                hai(23)
            )
        ),
        json!({"command": "queue", "enqueued": 1, "status": 22,
               "error": "Error while parsing hsm action items"})
    );
    // The pending recv of `a` got that archive meanwhile.
    let got: serde_json::Value = serde_json::from_slice(&a.next_raw()).unwrap();
    assert_eq!(got["command"], "recv");
    assert_eq!(got["hsm_action_list"]["list"][0]["hai_cookie"], 20);
    assert_eq!(
        reply_to(&mut b, r#"{"command":"lock","locked":3}"#),
        json!({"command": "lock", "status": 22, "error": "invalid locked value"})
    );
    // A status that cannot be decoded: no `clients` list, and the connection is closed.
    let mut c = srv.connect();
    c.send_raw(br#"{"command":"status","verbose":"loud"}"#);
    let got = c.wait_closed();
    assert_eq!(got.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["command", "error", "status"], "{v}");
    assert_eq!(
        (&v["command"], &v["status"]),
        (&json!("status"), &json!(22))
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid status message: "),
        "{v}"
    );
}

#[test]
fn anonymous_clients_are_named_by_reverse_lookup() {
    let sim = Sim::start("anon");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut a = srv.connect();
    let port = a.stream.local_addr().unwrap().port();
    // 127.0.0.1 is `localhost` in /etc/hosts, as upstream's getnameinfo finds it.
    let host = coordinatool_server_names::loopback_name();
    let want = format!("{host}:{port}");
    let names = |c: &mut server_common::Client| -> Vec<String> {
        match c.call(&Request::Status(StatusRequest { verbose: 4 })) {
            Reply::Status(s) => s.clients.into_iter().map(|c| c.client_id).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert!(names(&mut a).contains(&want), "{want}");
    assert_eq!(
        a.call_text(&Request::Ehlo(EhloRequest::new(None))),
        r#"{"command":"ehlo"}"#
    );
    assert_eq!(names(&mut a), vec![want]);
    // Later connections from the same host are named from the cache, each by its port.
    let mut b = srv.connect();
    let pb = b.stream.local_addr().unwrap().port();
    assert!(names(&mut b).contains(&format!("{host}:{pb}")));
}

/// What the server's own reverse lookup should find for 127.0.0.1 (getent, the same NSS
/// path); `localhost` on a standard /etc/hosts.
mod coordinatool_server_names {
    pub fn loopback_name() -> String {
        let out = std::process::Command::new("getent")
            .args(["hosts", "127.0.0.1"])
            .output()
            .expect("getent");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .nth(1)
            .unwrap_or("127.0.0.1")
            .to_owned()
    }
}

#[test]
fn grace_expiries_in_a_burst_wake_the_timer_about_once_a_second() {
    let sim = Sim::start("timer");
    let srv = Server::start(&sim, &config(&sim, "client_grace_ms 300\n"));
    let mut q = srv.connect();
    let n = 20;
    assert_eq!(
        q.call_text(&queue((1..=n).map(|i| item(i, b"")).collect())),
        format!(r#"{{"command":"queue","enqueued":{n}}}"#)
    );
    let mut movers = Vec::new();
    for i in 0..n {
        let mut m = srv.connect();
        m.call(&Request::Ehlo(EhloRequest::new(Some(format!("m{i}")))));
        match m.call(&Request::Recv(RecvRequest {
            max_archive: Some(1),
            ..RecvRequest::default()
        })) {
            Reply::Recv(r) => assert_eq!(r.hal.unwrap().list.len(), 1),
            other => panic!("{other:?}"),
        }
        movers.push(m);
    }
    // The movers vanish 10 ms apart: their grace periods end 10 ms apart too.
    let first = std::time::Instant::now();
    for m in movers {
        drop(m);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let spread = first.elapsed();
    wait_until("every request is pending again", || {
        match q.call(&Request::Status(StatusRequest { verbose: 4 })) {
            Reply::Status(s) => s.pending_archive == n && s.clients.len() == 1,
            other => panic!("{other:?}"),
        }
    });
    let wakes = srv
        .lines()
        .iter()
        .filter(|l| l.contains("engine timer"))
        .count();
    // One wake-up for the first expiry, then at most one per second for the rest.
    let bound = 2 + spread.as_secs() as usize;
    assert!(
        (1..=bound).contains(&wakes),
        "{wakes} timer wake-ups for {n} expiries over {spread:?}"
    );
}
