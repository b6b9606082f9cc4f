//! Issue 7, against the real server: the `coordinatool-client` CLI's status (upstream output
//! and `--json`), `--lock`/`--unlock`/`--lock-quit` effects on dispatch, the `-Q` round trip
//! from the MDT's `active_requests` listing after the server lost its store, bad `-Q` input,
//! and `--drain` with `-I`.

mod e2e_common;
mod sim_common;

use std::path::PathBuf;

use coordinatool_proto::{ClientState, StatusReply};
use e2e_common::{Server, lfs_chunks, raise_max_requests, s};
use sim_common::{Proc, Sim, checksum, pattern, wait_until};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn files(sim: &Sim, prefix: &str, n: usize) -> (Vec<PathBuf>, Vec<String>) {
    let p: Vec<PathBuf> = (0..n)
        .map(|i| sim.write(&format!("{prefix}{i}"), &pattern(5000 + i, i as u64 + 3)))
        .collect();
    let s = p.iter().map(|x| s(x)).collect();
    (p, s)
}

fn ends(m: &Proc) -> usize {
    m.lines().iter().filter(|l| l.contains(" end ")).count()
}

#[test]
fn e2e_cli_status_upstream_and_json() {
    let sim = Sim::start("e2e-cli-status");
    raise_max_requests(&sim);
    let server = Server::start(&sim);
    let hold = sim.scratch("hold");
    std::fs::write(&hold, b"").unwrap();
    let _mover = server.mover(&sim, "mover-a", &["--wait-file", &s(&hold)]);
    let (paths, args) = files(&sim, "f", 2);
    lfs_chunks(&sim, "hsm_archive", &args);
    wait_until("two running archives", || {
        server.status().running_archive == 2
    });

    // Upstream mode: no flag means status, printed as the server's JSON (indented).
    let out = server.cli(&["--timeout", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let json = stdout
        .strip_prefix("Got status reply:\n")
        .unwrap_or_else(|| panic!("upstream's header line: {stdout:?}"));
    let up: StatusReply =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("upstream status {stdout:?}: {e}"));
    assert_eq!(up.running_archive, 2);
    assert_eq!(up.locked, 0);
    assert!(
        up.clients
            .iter()
            .any(|c| c.client_id == "mover-a" && c.current_archive == 2),
        "{up:?}"
    );
    // The modern subcommand with --json: one JSON object on one line.
    let out = server.cli(&["--timeout", "5", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let js: StatusReply = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((js.running_archive, js.pending_archive), (2, 0));
    // The human tables name the mover.
    let out = server.cli(&["--timeout", "5", "status"]);
    assert!(
        text(&out.stdout).contains("mover-a"),
        "{}",
        text(&out.stdout)
    );

    std::fs::remove_file(&hold).unwrap();
    for p in &paths {
        wait_until("archived", || sim.state(p).contains("exists archived"));
    }
    server.wait_idle();
    assert_eq!(server.status().done_archive, 2);
}

#[test]
fn e2e_cli_lock_unlock_and_lock_quit_govern_dispatch() {
    let sim = Sim::start("e2e-cli-lock");
    raise_max_requests(&sim);
    let mut server = Server::start(&sim);
    let out = server.cli(&["--timeout", "5", "--lock"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.status().locked, 1);

    let hold = sim.scratch("hold");
    let mover = server.mover(&sim, "mover-a", &["--wait-file", &s(&hold)]);
    let (paths, args) = files(&sim, "f", 5);
    lfs_chunks(&sim, "hsm_archive", &args);
    // Locked: the server holds all five while the mover waits for work.
    wait_until("five pending with the mover waiting", || {
        let st = server.status();
        st.pending_archive == 5
            && st
                .clients
                .iter()
                .any(|c| c.client_id == "mover-a" && c.status == ClientState::Waiting)
    });
    let st = server.status();
    assert_eq!(st.running_archive, 0, "{st:?}");
    assert!(
        !mover.lines().iter().any(|l| l.starts_with("ARCHIVE")),
        "delivered while locked: {:?}",
        mover.lines()
    );

    let out = server.cli(&["--timeout", "5", "--unlock"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for p in &paths {
        wait_until("archived after unlock", || {
            sim.state(p).contains("exists archived")
        });
    }
    server.wait_idle();
    assert_eq!(server.status().locked, 0);

    // lock-quit with a transfer held: the server stays until it is done, then exits.
    std::fs::write(&hold, b"").unwrap();
    let (held, hargs) = files(&sim, "held", 1);
    lfs_chunks(&sim, "hsm_archive", &hargs);
    mover.wait_line(&["ARCHIVE wait"]);
    let out = server.cli(&["--timeout", "5", "--lock-quit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st = server.status();
    assert_eq!((st.locked, st.running_archive), (2, 1), "{st:?}");
    assert!(server.running());
    std::fs::remove_file(&hold).unwrap();
    let st = server.wait_exit();
    assert!(st.success(), "server exit after lock-quit: {st}");
    assert!(sim.state(&held[0]).contains("exists archived"));
    assert_eq!(ends(&mover), 6);
}

#[test]
fn e2e_cli_requeue_from_active_requests_after_losing_the_store() {
    let sim = Sim::start("e2e-cli-requeue");
    raise_max_requests(&sim);
    let mut server = Server::start(&sim);
    let n = 20;
    let (paths, args) = files(&sim, "f", n);
    let sums: Vec<u64> = paths
        .iter()
        .map(|p| checksum(&std::fs::read(p).unwrap()))
        .collect();
    lfs_chunks(&sim, "hsm_archive", &args);
    wait_until("the server to hold every request", || {
        server.status().pending_archive as usize == n
    });
    let listing = sim.param("mdt.*.hsm.active_requests");
    assert_eq!(listing.lines().count(), n, "{listing}");

    server.stop(libc::SIGTERM);
    server.wipe_store();
    server.restart();
    let st = server.status();
    assert_eq!(
        (st.pending_archive, st.running_archive),
        (0, 0),
        "a wiped store: {st:?}"
    );

    // Bad input: the line is named and nothing is sent.
    let mut bad: Vec<&str> = listing.lines().collect();
    bad.insert(2, "this is not an active request");
    let bad = bad.join("\n") + "\n";
    let out = server.cli_stdin(&["--timeout", "5", "-Q"], bad.as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 3"),
        "the bad line is named: {}",
        text(&out.stderr)
    );
    assert_eq!(server.status().pending_archive, 0, "nothing sent");

    // The real listing: every request is queued again.
    let out = server.cli_stdin(&["--timeout", "5", "-Q"], listing.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.status().pending_archive as usize, n);

    let movers = [
        server.mover(&sim, "mover-a", &[]),
        server.mover(&sim, "mover-b", &[]),
    ];
    for p in &paths {
        wait_until("archived after -Q", || {
            sim.state(p).contains("exists archived")
        });
    }
    lfs_chunks(&sim, "hsm_release", &args);
    lfs_chunks(&sim, "hsm_restore", &args);
    for (p, sum) in paths.iter().zip(&sums) {
        wait_until("restored", || !sim.state(p).contains("released"));
        assert_eq!(checksum(&std::fs::read(p).unwrap()), *sum);
    }
    server.wait_idle();
    let st = server.status();
    assert_eq!((st.done_archive, st.done_restore), (n as u64, n as u64));
    assert_eq!(movers.iter().map(ends).sum::<usize>(), 2 * n);
}

#[test]
fn e2e_cli_drain_with_client_id_acknowledges_without_lustre() {
    let sim = Sim::start("e2e-cli-drain");
    raise_max_requests(&sim);
    let server = Server::start(&sim);
    let (paths, args) = files(&sim, "f", 3);
    lfs_chunks(&sim, "hsm_archive", &args);
    wait_until("three pending", || server.status().pending_archive == 3);

    // One recv reply per run (-i 1), each item acknowledged; run again while work is left.
    let mut drained = 0;
    wait_until("everything drained", || {
        if server.status().pending_archive == 0 {
            return true;
        }
        let out = server.cli(&[
            "--timeout",
            "5",
            "--json",
            "-I",
            "drainer",
            "--drain",
            "-i",
            "1",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout
                .lines()
                .next()
                .is_some_and(|l| l.contains(r#""command":"recv""#)),
            "{stdout}"
        );
        drained += stdout
            .lines()
            .filter(|l| l.contains(r#""command":"done""#))
            .count();
        false
    });
    assert_eq!(drained, 3);
    let st = server.status();
    assert_eq!(
        (st.pending_archive, st.running_archive, st.done_archive),
        (0, 0, 3),
        "{st:?}"
    );
    // The acknowledgements are counted for the client id given with -I.
    assert!(
        st.clients
            .iter()
            .any(|c| c.client_id == "drainer" && c.done_archive == 3),
        "{st:?}"
    );
    // Lustre was not told: the files are not archived.
    for p in &paths {
        assert!(!sim.state(p).contains("archived"), "{}", sim.state(p));
    }
}

#[test]
fn e2e_cli_recv_dump_and_watch_against_the_server() {
    let sim = Sim::start("e2e-cli-recv");
    raise_max_requests(&sim);
    let server = Server::start(&sim);
    let (_paths, args) = files(&sim, "f", 2);
    lfs_chunks(&sim, "hsm_archive", &args);
    wait_until("two pending", || server.status().pending_archive == 2);

    // -vv: the status dump lists both queued requests.
    let out = server.cli(&["--timeout", "5", "-vv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = text(&out.stdout);
    assert!(dump.starts_with("Got status reply:"), "{dump}");
    assert!(dump.contains("\"waiting_archive\""), "{dump}");
    assert_eq!(dump.matches("\"hai_cookie\"").count(), 2, "{dump}");

    // -R -A 1 -i 1: one recv reply with work for archive id 1, printed upstream's way; the
    // items are not acknowledged, so they go back to the queue when the CLI leaves.
    let out = server.cli(&["--timeout", "5", "-R", "-A", "1", "-i", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recv = text(&out.stdout);
    assert!(recv.starts_with("Got recv reply:"), "{recv}");
    assert!(recv.contains("\"hal_archive_id\": 1"), "{recv}");
    wait_until("the received items back in the queue", || {
        let st = server.status();
        st.pending_archive == 2 && st.running_archive == 0
    });

    // watch --json --count 2: one status object per refresh.
    let out = server.cli(&[
        "--timeout",
        "5",
        "--json",
        "watch",
        "-n",
        "0.2",
        "--count",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let frames: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(
        frames
            .iter()
            .all(|f| f.to_string().contains("pending_archive")),
        "{frames:?}"
    );
}
