//! The preload inside a real C copytool process, against a fake coordinatool server.

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;

use common::{Ev, Fake, hai, hal, run_ct};
use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::DoneRequest;

fn key(cookie: u64) -> (u64, LuFid) {
    let h = hai(HsmAction::Archive, cookie, "");
    (h.cookie, h.dfid)
}

fn assert_clean_exit(status: std::process::ExitStatus, lines: &[String], stderr: &str) {
    assert!(
        status.success(),
        "copytool failed: {status:?} (signal {:?}); stdout: {lines:#?}; stderr: {stderr}",
        status.signal()
    );
    assert!(lines.iter().any(|l| l == "UNREGISTER rc=0"), "{lines:#?}");
}

#[test]
fn ehlo_recv_and_done_carry_the_documented_fields() {
    let fake = Fake::start();
    let big_cookie = 0xF000_0001_0000_0042u64;
    let ct = run_ct(
        fake.port,
        "seq",
        3,
        &[1, 2],
        &[
            ("COORDINATOOL_MAX_ARCHIVE", "7".into()),
            ("COORDINATOOL_MAX_REMOVE", "0x10".into()),
            ("COORDINATOOL_HAL_SIZE", "64k".into()),
        ],
    );
    fake.wait_for("first recv", |st| !st.recvs().is_empty());
    {
        let st = fake.lock();
        let ehlo = &st.ehlos()[0];
        assert_eq!(ehlo.id.as_deref(), Some("test-mover"));
        assert_eq!(ehlo.fsname.as_deref(), Some("testfs"));
        assert_eq!(ehlo.archive_ids, vec![1, 2]);
        assert_eq!(ehlo.version, Some(1));
        assert!(ehlo.hai_list.is_empty());
        let r = st.recvs()[0];
        assert_eq!(r.max_archive, Some(7));
        assert_eq!(r.max_remove, Some(16));
        assert_eq!(r.max_restore, None, "unlimited is -1 on the wire");
        assert_eq!(r.max_bytes, 65536);
    }
    fake.push_hal(hal(vec![
        hai(HsmAction::Archive, 11, ""),
        hai(HsmAction::Archive, big_cookie, ""),
        hai(HsmAction::Archive, 13, "errval=5"),
    ]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    assert!(
        !stderr.contains("received"),
        "no debug messages at the default level: {stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "HAL fsname=srvfs archive=1 count=3"),
        "{lines:#?}"
    );
    let dones = fake.lock().dones();
    let by_key: HashMap<_, _> = dones
        .iter()
        .map(|d| ((d.cookie, d.dfid), d.status))
        .collect();
    assert_eq!(dones.len(), 3, "{dones:?}");
    assert_eq!(by_key[&key(11)], 0);
    assert_eq!(by_key[&key(big_cookie)], 0, "full 64-bit cookie");
    assert_eq!(by_key[&key(13)], 5, "errval as a positive errno");
}

#[test]
fn failed_begin_is_reported_once_to_the_server() {
    let fake = Fake::start();
    let bad = (0xBADBADu64 << 32) | 7; // the stub's action_begin fails these with -ENOENT
    let ct = run_ct(fake.port, "seq", 2, &[], &[]);
    fake.push_hal(hal(vec![
        hai(HsmAction::Archive, 21, ""),
        hai(HsmAction::Archive, bad, ""),
    ]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    assert!(
        lines.iter().any(|l| l.starts_with("BEGINFAIL")),
        "{lines:#?}"
    );
    let dones = fake.lock().dones();
    let bad_dones: Vec<&DoneRequest> = dones.iter().filter(|d| d.cookie == bad).collect();
    assert!(!bad_dones.is_empty(), "{dones:?}");
    assert!(
        bad_dones.iter().all(|d| d.status == libc::ENOENT),
        "{bad_dones:?}"
    );
}

#[test]
fn thousands_of_threaded_completions_reach_the_server_outside_recv() {
    let fake = Fake::start();
    let per_hal = 50;
    let hals = 40;
    let total = per_hal * hals;
    let wait_file = common::mount("threads-wait").join("go");
    let ct = run_ct(
        fake.port,
        "threads",
        total,
        &[1],
        &[("CT_WAIT_FILE", wait_file.display().to_string())],
    );
    for h in 0..hals {
        let items = (0..per_hal)
            .map(|i| hai(HsmAction::Archive, 1000 + (h * per_hal + i) as u64, ""))
            .collect();
        fake.push_hal(hal(items));
    }
    // The copytool now waits outside recv: every done must still arrive.
    ct.wait_line("WAITING", |l| l == "WAITING");
    fake.wait_for("all dones", |st| st.dones().len() >= total);
    std::fs::write(&wait_file, b"").unwrap();
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    let dones = fake.lock().dones();
    let mut keys: Vec<_> = dones.iter().map(|d| d.cookie).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), total, "each action done exactly once");
    assert_eq!(dones.len(), total);
}

#[test]
fn forked_children_report_their_completions() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "fork", 40, &[1], &[]);
    for h in 0..2u64 {
        let items = (0..20u64)
            .map(|i| {
                let c = 500 + h * 20 + i;
                hai(
                    HsmAction::Restore,
                    c,
                    if c % 3 == 0 { "errval=17" } else { "" },
                )
            })
            .collect();
        fake.push_hal(hal(items));
    }
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    let dones = fake.lock().dones();
    assert_eq!(dones.len(), 40, "{dones:?}");
    for d in dones {
        let expect = if d.cookie % 3 == 0 { 17 } else { 0 };
        assert_eq!(d.status, expect, "{d:?}");
        assert_eq!((d.cookie, d.dfid), key(d.cookie));
    }
}

#[test]
fn get_fd_polls_and_nonblocking_recv_returns_eagain() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "poll", 2, &[1], &[]);
    ct.wait_line("EAGAIN before any work", |l| l == "EAGAIN");
    fake.wait_for("recv pending", |st| !st.recvs().is_empty());
    fake.push_hal(hal(vec![
        hai(HsmAction::Remove, 31, ""),
        hai(HsmAction::Remove, 32, ""),
    ]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    let first_eagain = lines.iter().position(|l| l == "EAGAIN").unwrap();
    let pollin = lines
        .iter()
        .position(|l| l == "POLLIN")
        .expect("poll woke up");
    let hal_line = lines.iter().position(|l| l.starts_with("HAL ")).unwrap();
    assert!(first_eagain < pollin && pollin < hal_line, "{lines:#?}");
    assert_eq!(fake.lock().dones().len(), 2);
}

#[test]
fn cancel_items_reach_the_copytool_and_a_double_ack_is_harmless() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "hold", 2, &[1], &[]);
    fake.push_hal(hal(vec![
        hai(HsmAction::Archive, 41, ""),
        hai(HsmAction::Archive, 42, ""),
    ]));
    ct.wait_line("second hold", |l| l.starts_with("HOLD cookie=0x2a rc=0"));
    fake.push_hal(hal(vec![hai(HsmAction::Cancel, 41, "")]));
    ct.wait_line("cancel 41", |l| l == "CANCEL cookie=0x29");
    fake.push_hal(hal(vec![hai(HsmAction::Cancel, 42, "")]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    let dones = fake.lock().dones();
    for c in [41u64, 42] {
        let n = dones.iter().filter(|d| d.cookie == c).count();
        assert_eq!(
            n, 2,
            "cancelled action and CANCEL item both acked for {c}: {dones:?}"
        );
    }
    assert!(
        dones.iter().all(|d| d.status == libc::ECANCELED),
        "{dones:?}"
    );
}

#[test]
fn reconnect_declares_running_actions_and_resends_unanswered_dones() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "hold", 2, &[1], &[]);
    fake.push_hal(hal(vec![
        hai(HsmAction::Archive, 51, ""),
        hai(HsmAction::Archive, 52, ""),
    ]));
    ct.wait_line("holds", |l| l.starts_with("HOLD cookie=0x34 rc=0"));

    // Server restart while both actions run: the new connection's ehlo lists them, as received.
    fake.stop();
    fake.restart();
    fake.wait_for("second ehlo", |st| st.ehlos().len() >= 2);
    {
        let st = fake.lock();
        let list = &st.ehlos()[1].hai_list;
        let mut cookies: Vec<u64> = list.iter().map(|h| h.cookie).collect();
        cookies.sort_unstable();
        assert_eq!(cookies, vec![51, 52]);
        assert_eq!(
            list[0],
            hai(HsmAction::Archive, list[0].cookie, ""),
            "full hai, timestamp kept"
        );
    }

    // The server does not answer the dones of 51, then restarts: they must come again.
    fake.lock().ack_dones = false;
    fake.push_hal(hal(vec![hai(HsmAction::Cancel, 51, "")]));
    fake.wait_for("dones of 51", |st| {
        st.dones().iter().filter(|d| d.cookie == 51).count() == 2
    });
    fake.stop();
    fake.lock().ack_dones = true;
    fake.restart();
    fake.wait_for("third ehlo", |st| st.ehlos().len() >= 3);
    {
        let st = fake.lock();
        let mut cookies: Vec<u64> = st.ehlos()[2].hai_list.iter().map(|h| h.cookie).collect();
        cookies.sort_unstable();
        assert_eq!(
            cookies,
            vec![51, 52],
            "51 is still running for the server until its done lands"
        );
    }
    fake.wait_for("dones of 51 resent", |st| {
        st.events
            .iter()
            .filter(|e| matches!(e, Ev::Done(c, d) if *c >= 3 && d.cookie == 51))
            .count()
            >= 1
    });
    fake.push_hal(hal(vec![hai(HsmAction::Cancel, 52, "")]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
}

#[test]
fn server_dying_mid_write_does_not_kill_the_copytool() {
    let fake = Fake::start();
    fake.lock().kill_on_done = 3;
    let n = 300u64;
    let ct = run_ct(fake.port, "seq", n as usize, &[1], &[]);
    fake.push_hal(hal((0..n)
        .map(|i| hai(HsmAction::Archive, 7000 + i, ""))
        .collect()));
    let (status, lines, stderr) = ct.wait();
    // SIGPIPE keeps its default action in ct_test: writing to the dead socket would kill it.
    assert_clean_exit(status, &lines, &stderr);
    let dones = fake.lock().dones();
    let mut keys: Vec<u64> = dones.iter().map(|d| d.cookie).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n as usize,
        "every done delivered after the reconnections"
    );
    assert!(fake.lock().ehlos().len() >= 2);
}

#[test]
fn registration_errors_are_negative_errnos() {
    let fake = Fake::start();
    // Not a Lustre mount: no .lustre/fid.
    let mnt = common::mount("not-lustre");
    std::fs::remove_dir_all(mnt.join(".lustre")).unwrap();
    let (status, lines, _) = common::run_ct_at(mnt, fake.port, "seq", 1, &[1], &[]).wait();
    assert!(!status.success());
    assert_eq!(lines, vec![format!("REGISTER rc=-{}", libc::ENOENT)]);

    // A bad config value names the variable and the value.
    let ct = run_ct(
        fake.port,
        "seq",
        1,
        &[1],
        &[("COORDINATOOL_MAX_ARCHIVE", "12q".into())],
    );
    let (status, lines, stderr) = ct.wait();
    assert!(!status.success());
    assert_eq!(lines, vec![format!("REGISTER rc=-{}", libc::EINVAL)]);
    assert!(
        stderr.contains("COORDINATOOL_MAX_ARCHIVE") && stderr.contains("12q"),
        "{stderr}"
    );
    assert!(
        stderr.contains("llapi: coordinatool: "),
        "through llapi_error: {stderr}"
    );

    // COORDINATOOL_CONF must exist.
    let ct = run_ct(
        fake.port,
        "seq",
        1,
        &[1],
        &[("COORDINATOOL_CONF", "/nonexistent/c.conf".into())],
    );
    let (_, lines, stderr) = ct.wait();
    assert_eq!(lines, vec![format!("REGISTER rc=-{}", libc::ENOENT)]);
    assert!(stderr.contains("/nonexistent/c.conf"), "{stderr}");
    assert!(fake.lock().events.is_empty(), "nothing reached the server");
}

#[test]
fn config_archive_ids_apply_when_the_copytool_takes_any_archive() {
    let fake = Fake::start();
    let conf = common::mount("conf").with_extension("archive.conf");
    std::fs::write(&conf, "archive_id 3\narchive_id 4\nredis_host x\n").unwrap();
    let ct = run_ct(
        fake.port,
        "seq",
        1,
        &[],
        &[
            ("COORDINATOOL_CONF", conf.display().to_string()),
            ("COORDINATOOL_VERBOSE", "debug".into()),
        ],
    );
    fake.wait_for("ehlo", |st| !st.ehlos().is_empty());
    assert_eq!(fake.lock().ehlos()[0].archive_ids, vec![3, 4]);
    fake.push_hal(hal(vec![hai(HsmAction::Archive, 61, "")]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    // verbose debug raised the host's llapi level: debug messages show.
    assert!(
        stderr.contains("received 1 action(s) for archive 1"),
        "{stderr}"
    );
}

#[test]
fn blocking_recv_is_interrupted_only_by_handlers_without_sa_restart() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "signals", 2, &[1], &[]);
    fake.wait_for("recv pending", |st| !st.recvs().is_empty());
    let pid = ct.pid() as i32;
    for _ in 0..5 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
    fake.push_hal(hal(vec![hai(HsmAction::Archive, 81, "")]));
    ct.wait_line("first end", |l| l.starts_with("END cookie=0x51"));
    assert!(
        !ct.lines().iter().any(|l| l.starts_with("EINTR")),
        "SA_RESTART signals must not interrupt recv: {:?}",
        ct.lines()
    );
    // SIGUSR2 has no SA_RESTART: recv returns -EINTR (resent until seen, in case one
    // lands just before the copytool enters recv).
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !ct.lines().iter().any(|l| l.starts_with("EINTR")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no EINTR: {:?}",
            ct.lines()
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fake.push_hal(hal(vec![hai(HsmAction::Archive, 82, "")]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    assert_eq!(fake.lock().dones().len(), 2);
}

#[test]
fn refused_ehlos_are_retried_with_backoff() {
    use coordinatool_proto::{Command, Reply};
    let fake = Fake::start();
    {
        let mut st = fake.lock();
        st.ehlo_refusals.push_back(Reply::error(
            Command::Ehlo,
            libc::EEXIST,
            "id already used by another client",
        ));
        // The C server's bad-archive-id answer carries the wrong command name.
        st.ehlo_refusals.push_back(Reply::error(
            Command::Done,
            libc::EINVAL,
            "Bad archive id in list",
        ));
    }
    let ct = run_ct(fake.port, "seq", 1, &[1], &[]);
    fake.wait_for("third ehlo and a recv", |st| {
        st.ehlos().len() == 3 && !st.recvs().is_empty()
    });
    fake.push_hal(hal(vec![hai(HsmAction::Archive, 91, "")]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    assert!(
        stderr.contains("id already used by another client"),
        "{stderr}"
    );
    assert!(stderr.contains("Bad archive id in list"), "{stderr}");
    assert_eq!(fake.lock().dones().len(), 1);
}

#[test]
fn a_child_without_the_inherited_pipe_reports_over_its_own_connection() {
    let fake = Fake::start();
    let ct = run_ct(fake.port, "forkclose", 3, &[1], &[]);
    fake.push_hal(hal(vec![
        hai(HsmAction::Archive, 101, ""),
        hai(HsmAction::Archive, 102, "errval=28"),
        hai(HsmAction::Archive, 103, ""),
    ]));
    let (status, lines, stderr) = ct.wait();
    assert_clean_exit(status, &lines, &stderr);
    let st = fake.lock();
    let mut got: Vec<(u64, i32)> = st.dones().iter().map(|d| (d.cookie, d.status)).collect();
    got.sort_unstable();
    assert_eq!(got, vec![(101, 0), (102, 28), (103, 0)]);
    // Those dones came on connections that never sent ehlo (one per child).
    let ehlo_conns: Vec<usize> = st
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Ehlo(c, _) => Some(*c),
            _ => None,
        })
        .collect();
    let done_conns: Vec<usize> = st
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Done(c, _) => Some(*c),
            _ => None,
        })
        .collect();
    assert!(
        done_conns.iter().all(|c| !ehlo_conns.contains(c)),
        "{:#?}",
        st.events
    );
}
