//! The `coordinatool-client` binary against a fake server (std TcpListener +
//! coordinatool-proto): what it sends in every mode, what it prints, and its exit status.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coordinatool_lustre::active_requests::parse_all;
use coordinatool_proto::{Decoder, LockState, Request};

const BIN: &str = env!("CARGO_BIN_EXE_coordinatool-client");
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../coordinatool-lustre/tests/golden/active_requests"
);

/// What the fake server does with a request.
enum Act {
    /// Write these bytes back.
    Reply(String),
    /// Close the connection without answering.
    Close,
}

/// One request as received: decoded, and raw (to check key names).
#[derive(Debug, Clone)]
struct Got {
    req: Request,
    raw: String,
}

/// A fake server accepting `conns` connections one after the other; the thread returns the
/// requests of each connection.
struct Fake {
    port: u16,
    thread: JoinHandle<Vec<Vec<Got>>>,
}

impl Fake {
    fn start(
        conns: usize,
        mut respond: impl FnMut(usize, &Request) -> Act + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            for n in 0..conns {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(e)
                            if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("fake server: no connection {n}: {e}"),
                    }
                };
                stream.set_nonblocking(false).unwrap();
                all.push(serve(&mut stream, n, &mut respond));
            }
            all
        });
        Fake { port, thread }
    }

    fn join(self) -> Vec<Vec<Got>> {
        self.thread.join().expect("fake server panicked")
    }
}

fn serve(
    stream: &mut TcpStream,
    n: usize,
    respond: &mut impl FnMut(usize, &Request) -> Act,
) -> Vec<Got> {
    let mut dec = Decoder::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        while let Some(frame) = dec.next_frame().unwrap() {
            let raw = String::from_utf8(frame.to_vec()).unwrap();
            let req = Request::decode(raw.as_bytes()).unwrap();
            let act = respond(n, &req);
            got.push(Got { req, raw });
            match act {
                Act::Reply(r) => {
                    if stream.write_all(r.as_bytes()).is_err() {
                        return got;
                    }
                }
                Act::Close => return got,
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(k) => dec.feed(&buf[..k]),
        }
    }
}

/// Answers like a healthy server: ehlo ok, queue counts everything, lock ok, `status`
/// with `status_json`.
fn healthy(status_json: &'static str) -> impl FnMut(usize, &Request) -> Act + Send + 'static {
    move |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            Request::Status(_) => status_json.into(),
            Request::Queue(q) => {
                format!(r#"{{"command": "queue", "enqueued": {}}}"#, q.items.len())
            }
            Request::Lock(_) => r#"{"command": "lock"}"#.into(),
            Request::Done(_) => r#"{"command": "done"}"#.into(),
            Request::Recv(_) => unreachable!("tests with recv use their own responder"),
        })
    }
}

static CONF_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A config file for one test run.
fn conf(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ct-client-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!(
        "c{}.conf",
        CONF_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the client with a clean environment and an empty config (unless `args` says -c).
fn run_with(port: u16, args: &[&str], stdin: Option<&str>, conf_text: &str) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("COORDINATOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("COORDINATOOL_CONF", conf(conf_text));
    cmd.args([
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--timeout",
        "20",
    ]);
    cmd.args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        let mut input = child.stdin.take().unwrap();
        let text = text.to_owned();
        // A writer thread, so a client that exits early cannot block the test.
        std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
    }
    child.wait_with_output().unwrap()
}

fn run(port: u16, args: &[&str], stdin: Option<&str>) -> Output {
    run_with(port, args, stdin, "")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// A port with no listener behind it, and the listener to check later that nobody connected.
fn silent_port() -> (u16, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    (l.local_addr().unwrap().port(), l)
}

fn assert_nobody_connected(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the client connected although it should not have: {other:?}"),
    }
}

const STATUS: &str = r#"{"command": "status", "running_archive": 3, "pending_archive": 7, "done_archive": 12, "clients_connected": 2, "clients": [{"client_id": "localhost:38904", "status": "ready", "batches": []}, {"client_id": "agent_1", "current_archive": 3, "done_archive": 12, "status": "waiting", "batches": []}]}"#;

#[test]
fn status_is_the_default_and_prints_upstream_output() {
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(fake.port, &[], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let reqs: Vec<&Request> = got[0].iter().map(|g| &g.req).collect();
    match reqs.as_slice() {
        [Request::Ehlo(e), Request::Status(s)] => {
            assert_eq!(e.id, None, "anonymous unless -I");
            assert!(e.archive_ids.is_empty());
            assert_eq!(s.verbose, 4);
        }
        other => panic!("{other:?}"),
    }
    let expected = "Got status reply:\n{\n  \"command\": \"status\",\n  \"running_archive\": 3,\n  \"pending_archive\": 7,\n  \"done_archive\": 12,\n  \"clients_connected\": 2,\n  \"clients\": [\n    {\n      \"client_id\": \"localhost:38904\",\n      \"status\": \"ready\",\n      \"batches\": []\n    },\n    {\n      \"client_id\": \"agent_1\",\n      \"current_archive\": 3,\n      \"done_archive\": 12,\n      \"status\": \"waiting\",\n      \"batches\": []\n    }\n  ]\n}\n";
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn verbose_flags_set_the_status_level_and_dump() {
    for (args, level) in [
        (&["-v"][..], 5),
        (&["-vv"][..], 6),
        (&["-q"][..], 3),
        (&["status", "--dump"][..], 6),
        (&["status"][..], 4),
    ] {
        let fake = Fake::start(1, healthy(STATUS));
        let out = run(fake.port, args, None);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out.stderr));
        let got = fake.join();
        match &got[0][1].req {
            Request::Status(s) => assert_eq!(s.verbose, level, "{args:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn status_subcommand_prints_tables_or_json() {
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(fake.port, &["status"], None);
    assert_eq!(code(&out), 0);
    let s = text(&out.stdout);
    assert!(
        s.starts_with("dispatch: unlocked    clients connected: 2\n"),
        "{s}"
    );
    assert!(s.contains("archive        3        7    12\n"), "{s}");
    assert!(
        s.contains("agent_1          waiting        0        3       0       0/12/0"),
        "{s}"
    );
    fake.join();

    let fake = Fake::start(1, healthy(STATUS));
    let out = run(fake.port, &["status", "--json"], None);
    assert_eq!(code(&out), 0);
    assert_eq!(text(&out.stdout), format!("{STATUS}\n"));
    fake.join();
}

#[test]
fn status_error_reply_exits_2() {
    let fake = Fake::start(
        1,
        healthy(r#"{"command": "status", "status": 5, "error": "io"}"#),
    );
    let out = run(fake.port, &["status"], None);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out.stderr).contains("status 5 (io)"),
        "{}",
        text(&out.stderr)
    );
    fake.join();
}

#[test]
fn lock_modes_send_the_right_value_and_print_ok() {
    for (args, state, want) in [
        (&["--lock"][..], LockState::Locked, "ok\n"),
        (&["--unlock"][..], LockState::Unlocked, "ok\n"),
        (&["--lock-quit"][..], LockState::LockAndQuit, "ok\n"),
        (&["lock"][..], LockState::Locked, "dispatch paused\n"),
        (&["unlock"][..], LockState::Unlocked, "dispatch resumed\n"),
        (
            &["lock-quit"][..],
            LockState::LockAndQuit,
            "dispatch paused; the server stops once nothing is running\n",
        ),
    ] {
        let fake = Fake::start(1, healthy(STATUS));
        let out = run(fake.port, args, None);
        assert_eq!(code(&out), 0, "{args:?}");
        assert_eq!(text(&out.stdout), want);
        let got = fake.join();
        match &got[0][1].req {
            Request::Lock(l) => assert_eq!(l.state(), Some(state)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn lock_error_prints_upstream_message_and_exits_2() {
    let fake = Fake::start(1, |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            _ => r#"{"command": "lock", "status": -22, "error": "invalid locked value"}"#.into(),
        })
    });
    let out = run(fake.port, &["--lock"], None);
    assert_eq!(text(&out.stdout), "error locking: invalid locked value\n");
    assert_eq!(code(&out), 2, "upstream exited 0 here");
    fake.join();
}

/// `n` distinct ARCHIVE lines in the kernel's format, with an lctl header.
fn listing(n: usize) -> String {
    let mut s = String::from("mdt.fs0-MDT0000.hsm.active_requests=\n");
    for i in 0..n {
        s.push_str(&format!(
            "fid=[0x200000400:{:#x}:0x0] dfid=[0x200000400:{:#x}:0x0] compound/cookie=0x0/{:#x} action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[] canceled=0 uuid=u done=0\n",
            i + 1,
            i + 1,
            0x6000_0000 + i
        ));
    }
    s
}

fn queued(got: &[Vec<Got>]) -> Vec<&coordinatool_proto::QueueRequest> {
    got.iter()
        .flatten()
        .filter_map(|g| match &g.req {
            Request::Queue(q) => Some(q),
            _ => None,
        })
        .collect()
}

#[test]
fn queue_25000_lines_goes_in_3_chunks_with_a_summary() {
    let input = listing(25_000);
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(fake.port, &["-Q"], Some(&input));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let q = queued(&got);
    let sizes: Vec<usize> = q.iter().map(|q| q.items.len()).collect();
    assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
    let cookies: Vec<u64> = q
        .iter()
        .flat_map(|q| q.items.iter().map(|i| i.cookie))
        .collect();
    assert_eq!(
        cookies,
        (0..25_000).map(|i| 0x6000_0000 + i).collect::<Vec<u64>>(),
        "order kept"
    );
    assert!(
        q[0].items
            .iter()
            .all(|i| i.archive_id == 1 && i.extent_length == u64::MAX)
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout
            .matches("Got queue reply:\n{\n  \"command\": \"queue\",\n  \"enqueued\": ")
            .count(),
        3
    );
    assert!(
        text(&out.stderr).contains(
            "queued 25000 of 25000 request(s) in 3 message(s): 25000 enqueued, 0 already known"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn queue_subcommand_reads_golden_file_sends_fsname_and_chunk_size() {
    let file = format!("{GOLDEN}/2.15.txt");
    let want: Vec<_> = parse_all(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(
        fake.port,
        &["queue", &file, "--fsname", "fs0", "--chunk-size", "2"],
        None,
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let q = queued(&got);
    assert_eq!(q.len(), want.len().div_ceil(2));
    let items: Vec<_> = q.iter().flat_map(|q| q.items.iter()).collect();
    assert_eq!(items.len(), want.len());
    for (item, w) in items.iter().zip(&want) {
        assert_eq!(
            (item.fid, item.dfid, item.cookie, item.action),
            (w.fid, w.dfid, w.cookie, w.action)
        );
        assert_eq!(
            (item.archive_id, item.flags, &item.data),
            (w.archive_id, w.flags, &w.data)
        );
    }
    let raw: Vec<&str> = got[0]
        .iter()
        .filter(|g| matches!(g.req, Request::Queue(_)))
        .map(|g| g.raw.as_str())
        .collect();
    assert!(
        raw.iter()
            .all(|r| r.contains(r#""fsname":"fs0""#) && !r.contains("hal_fsname")),
        "{raw:?}"
    );
    assert!(
        text(&out.stdout).starts_with(&format!("queued {n} of {n} request(s)", n = want.len()))
    );
    // 2.15.txt has real 5-byte data dumps: the user is warned they may be cut.
    assert!(
        text(&out.stderr).contains("may be truncated (lines 1, 3"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn queue_bad_input_names_the_line_and_sends_nothing() {
    let (port, listener) = silent_port();
    let input = std::fs::read_to_string(format!("{GOLDEN}/errors.txt")).unwrap();
    let out = run(port, &["-Q"], Some(&input));
    assert_eq!(code(&out), 1);
    assert_eq!(
        text(&out.stderr),
        "coordinatool-client: bad input, nothing sent: line 3: missing field `data`\n"
    );
    assert_nobody_connected(&listener);

    // A bad line after thousands of good ones: still nothing sent.
    let mut input = listing(15_000);
    input.push_str("fid=[0x1:0x2:0x0] garbage\n");
    let out = run(port, &["queue", "-"], Some(&input));
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("line 15002: missing field `dfid`"),
        "{}",
        text(&out.stderr)
    );
    assert_nobody_connected(&listener);
}

#[test]
fn queue_empty_input_exits_0_without_connecting() {
    let (port, listener) = silent_port();
    for f in ["empty.txt", "empty-lctl.txt"] {
        let out = run(port, &["-Q", &format!("{GOLDEN}/{f}")], None);
        assert_eq!(code(&out), 0, "{f}: {}", text(&out.stderr));
    }
    assert_nobody_connected(&listener);
}

#[test]
fn queue_cancel_lines_are_left_out_with_a_warning() {
    let file = format!("{GOLDEN}/master.txt");
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(fake.port, &["queue", &file], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let q = queued(&got);
    assert!(
        q.iter()
            .flat_map(|q| &q.items)
            .all(|i| i.action != coordinatool_lustre::HsmAction::Cancel)
    );
    assert!(
        text(&out.stderr).contains("1 CANCEL/NOOP request(s) not queued"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn queue_error_status_exits_2_even_when_negative() {
    let fake = Fake::start(1, |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            Request::Queue(q) => format!(
                r#"{{"command": "queue", "enqueued": {}, "status": -22, "error": "Error while parsing hsm action items"}}"#,
                q.items.len()
            ),
            _ => unreachable!(),
        })
    });
    let out = run(fake.port, &["-Q"], Some(&listing(3)));
    assert_eq!(code(&out), 2, "upstream exited 0 on a negative status");
    assert!(
        text(&out.stderr)
            .contains("lines 2-4: server error 22 (Error while parsing hsm action items)"),
        "{}",
        text(&out.stderr)
    );
    fake.join();
}

#[test]
fn queue_count_mismatch_exits_2_and_later_chunks_are_still_sent() {
    let fake = Fake::start(1, |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            Request::Queue(q) if q.items[0].cookie == 0x6000_0000 => {
                format!(
                    r#"{{"command": "queue", "enqueued": {}, "skipped": 1}}"#,
                    q.items.len() - 2
                )
            }
            Request::Queue(q) => format!(r#"{{"command": "queue", "skipped": {}}}"#, q.items.len()),
            _ => unreachable!(),
        })
    });
    let out = run(
        fake.port,
        &["queue", "--chunk-size", "4", "--json"],
        Some(&listing(6)),
    );
    assert_eq!(code(&out), 2);
    let got = fake.join();
    assert_eq!(queued(&got).len(), 2);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["messages"], 2);
    assert_eq!(summary["enqueued"], 2);
    assert_eq!(summary["skipped"], 3);
    assert_eq!(
        summary["errors"],
        serde_json::json!(["lines 2-5: didn't process all records (expected 4, got 2+1)"])
    );
}

fn recv_reply(cookie: u64) -> String {
    format!(
        r#"{{"hsm_action_list": {{"hal_version": 1, "hal_archive_id": 1, "hal_fsname": "testfs0", "list": [{{"hai_action": 20, "hai_fid": {{"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}}, "hai_dfid": {{"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}}, "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": {cookie}, "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": ""}}]}}, "command": "recv"}}"#
    )
}

fn mover() -> impl FnMut(usize, &Request) -> Act + Send + 'static {
    let mut cookie = 1_764_690_165u64;
    move |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            Request::Recv(_) => {
                cookie += 1;
                recv_reply(cookie)
            }
            Request::Done(_) => r#"{"command": "done"}"#.into(),
            _ => unreachable!(),
        })
    }
}

#[test]
fn recv_sends_id_archives_and_config_limits() {
    let fake = Fake::start(1, mover());
    let out = run_with(
        fake.port,
        &["-R", "-i", "2", "-I", "agent_9", "-A", "3", "-A", "4"],
        None,
        "max_archive 3\nhal_size 64k\narchive_id 7\n",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    match &got[0][0].req {
        Request::Ehlo(e) => {
            assert_eq!(e.id.as_deref(), Some("agent_9"));
            assert_eq!(e.archive_ids, vec![3, 4], "-A wins over the config");
        }
        other => panic!("{other:?}"),
    }
    let recvs: Vec<_> = got[0][1..].iter().map(|g| &g.req).collect();
    assert_eq!(recvs.len(), 2);
    for r in recvs {
        match r {
            Request::Recv(r) => {
                assert_eq!(r.max_archive, Some(3));
                assert_eq!(r.max_restore, None);
                assert_eq!(r.max_bytes, 65536);
            }
            other => panic!("{other:?}"),
        }
    }
    let s = text(&out.stdout);
    assert_eq!(
        s.matches("Got recv reply:\n{\n  \"hsm_action_list\": {\n    \"hal_version\": 1,")
            .count(),
        2,
        "{s}"
    );
}

#[test]
fn recv_takes_archive_ids_from_config_but_status_does_not() {
    let fake = Fake::start(1, mover());
    let out = run_with(
        fake.port,
        &["recv", "-i", "1"],
        None,
        "archive_id 7\narchive_id 8\n",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ARCHIVE [0x200000bd7:0xb59:0x0] dfid=[0x200000bd7:0xb59:0x0] cookie=0x692f08f6 archive=1"), "{}", text(&out.stdout));
    let got = fake.join();
    assert!(
        matches!(&got[0][0].req, Request::Ehlo(e) if e.archive_ids == [7, 8] && e.id.is_none())
    );

    let fake = Fake::start(1, healthy(STATUS));
    let out = run_with(fake.port, &[], None, "archive_id 7\n");
    assert_eq!(code(&out), 0);
    let got = fake.join();
    assert!(matches!(&got[0][0].req, Request::Ehlo(e) if e.archive_ids.is_empty()));
}

#[test]
fn drain_acks_every_item_with_its_cookie_and_dfid() {
    let fake = Fake::start(1, mover());
    let out = run(fake.port, &["--drain", "-i", "2"], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let dones: Vec<_> = got[0]
        .iter()
        .filter_map(|g| match &g.req {
            Request::Done(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(dones.len(), 2);
    assert_eq!(dones[0].cookie, 1_764_690_166);
    assert_eq!(dones[1].cookie, 1_764_690_167);
    assert_eq!(dones[0].dfid.to_string(), "[0x200000bd7:0xb59:0x0]");
    assert_eq!(dones[0].status, 0);
    let s = text(&out.stdout);
    assert_eq!(
        s.matches("Got done reply:\n{\n  \"command\": \"done\"\n}\n")
            .count(),
        2,
        "{s}"
    );
    // Order on the wire: ehlo, recv, done, recv, done.
    let kinds: Vec<_> = got[0].iter().map(|g| g.req.command().as_str()).collect();
    assert_eq!(kinds, ["ehlo", "recv", "done", "recv", "done"]);
}

#[test]
fn drain_refuses_items_without_cookie() {
    let fake = Fake::start(1, |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            _ => recv_reply(0),
        })
    });
    let out = run(fake.port, &["drain", "-i", "1"], None);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("cookie/dfid not set - version mismatch?"));
    fake.join();
}

#[test]
fn connection_refused_with_timeout_exits_3() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(port, &["status", "--timeout", "0.3"], None);
    assert_eq!(code(&out), 3);
    assert!(
        text(&out.stderr).contains("could not connect to 127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn server_closing_without_reply_exits_3() {
    let fake = Fake::start(1, |_, req| match req {
        Request::Ehlo(_) => Act::Reply(r#"{"command": "ehlo"}"#.into()),
        _ => Act::Close,
    });
    let out = run(fake.port, &["--lock"], None);
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("server closed the connection"));
    fake.join();
}

#[test]
fn refused_ehlo_is_retried_on_a_new_connection() {
    let fake = Fake::start(2, |conn, req| {
        Act::Reply(match (conn, req) {
            (0, Request::Ehlo(_)) => {
                r#"{"command": "ehlo", "status": 17, "error": "id already used by another client"}"#
                    .into()
            }
            (_, Request::Ehlo(_)) => r#"{"command": "ehlo"}"#.into(),
            _ => STATUS.into(),
        })
    });
    let out = run(fake.port, &["-I", "agent_1", "status"], None);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("id already used by another client"));
    let got = fake.join();
    assert_eq!(got[0].len(), 1);
    assert_eq!(got[1].len(), 2);
}

#[test]
fn long_config_option_works_and_sets_host_and_port() {
    let fake = Fake::start(1, healthy(STATUS));
    let file = conf(&format!("host 127.0.0.1\nport {}\n", fake.port));
    let out = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--timeout",
            "20",
            "status",
            "--json",
        ])
        .env_remove("COORDINATOOL_HOST")
        .env_remove("COORDINATOOL_PORT")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    fake.join();
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/c.conf"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("cannot read config file /nonexistent/c.conf"));
}

#[test]
fn bad_config_value_exits_1_naming_line() {
    let (port, listener) = silent_port();
    let out = run_with(port, &[], None, "# x\nmax_archive 4G\n");
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains(".conf:2: bad value \"4G\" for max_archive"),
        "{}",
        text(&out.stderr)
    );
    assert_nobody_connected(&listener);
}

#[test]
fn usage_errors_exit_1_and_version_is_upstreams() {
    let out = Command::new(BIN)
        .args(["--lock", "--unlock"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let out = Command::new(BIN)
        .args(["status", "--lock"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let out = Command::new(BIN).arg("-V").output().unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(
        text(&out.stdout),
        format!(
            "Coordinatool client version {}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(code(&out), 0);
    assert!(text(&out.stdout).contains("Exit status: 0 success"));
}

#[test]
fn completions_and_man_page_come_from_the_clap_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{shell}");
        let s = text(&out.stdout);
        assert!(
            s.contains("coordinatool-client") && s.contains("lock-quit") && s.contains("fsname"),
            "{shell}"
        );
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(code(&out), 0);
    let s = text(&out.stdout);
    assert!(
        s.starts_with(".ie") || s.contains(".TH coordinatool-client"),
        "{}",
        &s[..200.min(s.len())]
    );
    assert!(
        s.contains("lock\\-quit") && s.contains("Exit status"),
        "man page lacks subcommands or exit codes"
    );
}

#[test]
fn watch_polls_status_and_shows_rates_and_oldest() {
    let mut n = 0u64;
    let fake = Fake::start(1, move |_, req| {
        Act::Reply(match req {
            Request::Ehlo(_) => r#"{"command": "ehlo"}"#.into(),
            Request::Status(_) => {
                n += 1;
                format!(
                    r#"{{"command": "status", "done_archive": {}, "clients": [], "waiting_restore": [], "waiting_remove": [], "waiting_archive": [{{"hai_fid": {{"f_seq": 1, "f_oid": 2, "f_ver": 0}}, "hai_cookie": 9, "hai_data": ""}}]}}"#,
                    n * 10
                )
            }
            _ => unreachable!(),
        })
    });
    let out = run(
        fake.port,
        &["watch", "--count", "3", "--interval", "0.05", "--dump"],
        None,
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let got = fake.join();
    let levels: Vec<i32> = got[0]
        .iter()
        .filter_map(|g| match &g.req {
            Request::Status(s) => Some(s.verbose),
            _ => None,
        })
        .collect();
    assert_eq!(levels, vec![6, 6, 6]);
    let s = text(&out.stdout);
    assert_eq!(s.matches("coordinatool 127.0.0.1:").count(), 3);
    assert!(
        s.contains("rates: restore -  archive -  remove -"),
        "first frame has no rate: {s}"
    );
    assert!(
        s.contains("oldest waiting: [0x1:0x2:0x0] cookie 0x9 in global archive"),
        "{s}"
    );
    // 10 more archives done per refresh: a positive archive rate on frames 2 and 3.
    let rates: Vec<f64> = s
        .lines()
        .filter_map(|l| l.strip_prefix("rates: restore 0.0/s  archive "))
        .map(|r| r.split("/s").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 2, "{s}");
    assert!(rates.iter().all(|&r| r > 0.0), "{rates:?}");
}

#[test]
fn watch_json_prints_one_object_per_refresh() {
    let fake = Fake::start(1, healthy(STATUS));
    let out = run(
        fake.port,
        &["watch", "--count", "2", "--interval", "0.05", "--json"],
        None,
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    fake.join();
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["status"]["done_archive"], 12);
    assert!(lines[0]["rates"].is_null());
    assert_eq!(lines[1]["rates"]["archive"], 0.0);
    assert!(lines[1]["client_rates"]["agent_1"].is_number());
}
