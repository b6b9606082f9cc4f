//! Operational behaviour of the server binary against the simulated Lustre: report files,
//! sd_notify, the upstream binary name, a client that does not read its replies.

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
