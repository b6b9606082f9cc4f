//! Issue 7, against the real server: the server is stopped (SIGTERM, or kill -9) while
//! transfers are held in flight by the movers (`ctposix --wait-file`) and more requests wait
//! in its queue; after the restart every request completes exactly once, with the right file
//! states and contents.

mod e2e_common;
mod sim_common;

use std::path::PathBuf;

use e2e_common::{Server, fid_of, lfs_chunks, raise_max_requests, s};
use sim_common::{Proc, Sim, checksum, pattern, wait_until};

fn count(movers: &[Proc], prefix: &str) -> usize {
    movers
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| l.starts_with(prefix))
        .count()
}

fn restart_with_transfers_in_flight(name: &str, sig: i32) {
    let sim = Sim::start(name);
    raise_max_requests(&sim);
    let mut server = Server::start(&sim);
    let hold = sim.scratch("hold");
    std::fs::write(&hold, b"").unwrap();
    let holdarg = s(&hold);
    // Each mover takes 3 archives at a time and runs them all: 6 held, 6 queued at the server.
    let args = ["--threads", "4", "--wait-file", &holdarg];
    let env = [("COORDINATOOL_MAX_ARCHIVE", "3")];
    let mut movers = vec![
        server.mover_with(&sim, "mover-a", &args, &env),
        server.mover_with(&sim, "mover-b", &args, &env),
    ];
    let n = 12;
    let files: Vec<(PathBuf, u64)> = (0..n)
        .map(|i| {
            let data = pattern(30_000 + i * 13, 70 + i as u64);
            (sim.write(&format!("held{i}"), &data), checksum(&data))
        })
        .collect();
    let paths: Vec<String> = files.iter().map(|(p, _)| s(p)).collect();
    lfs_chunks(&sim, "hsm_archive", &paths);

    // Both movers hold what they got; the rest waits in the server's queue.
    let mut before = Default::default();
    wait_until("the server to account for every request", || {
        before = server.status();
        before.running_archive == 6
            && before.pending_archive == 6
            && count(&movers, "ARCHIVE wait ") == 6
    });

    let st = server.stop(sig);
    if sig == libc::SIGTERM {
        assert!(st.success(), "server exit status after SIGTERM: {st}");
    }
    server.restart();
    // The movers come back and declare what they still run; the rest is still queued.
    let mut after = Default::default();
    wait_until("the restarted server to know every request", || {
        after = server.status();
        after.clients_connected == 3 && after.running_archive == 6
    });
    assert_eq!(after.pending_archive, 6, "after the restart: {after:?}");
    assert_eq!(count(&movers, "ARCHIVE wait "), 6, "nothing new dispatched");

    std::fs::remove_file(&hold).unwrap();
    for (p, _) in &files {
        wait_until("archived after the restart", || {
            sim.state(p).contains("exists archived")
        });
        lfs_chunks(&sim, "hsm_release", &[s(p)]);
        assert!(sim.state(p).contains("released"));
    }
    lfs_chunks(&sim, "hsm_restore", &paths);
    for (p, sum) in &files {
        wait_until("restored", || !sim.state(p).contains("released"));
        assert_eq!(checksum(&std::fs::read(p).unwrap()), *sum);
    }
    // Exactly once: one begin and one successful end per file and action.
    for (p, _) in &files {
        let fid = fid_of(p).to_string();
        for prefix in [
            format!("ARCHIVE begin {fid} "),
            format!("ARCHIVE end {fid} "),
            format!("RESTORE end {fid} "),
        ] {
            assert_eq!(count(&movers, &prefix), 1, "{prefix}");
        }
        let lines: Vec<String> = movers.iter().flat_map(|m| m.lines()).collect();
        let end = lines
            .iter()
            .find(|l| l.starts_with(&format!("ARCHIVE end {fid} ")))
            .unwrap();
        assert!(end.contains(" rc=0 "), "{end}");
    }
    server.wait_idle();
    let st = server.status();
    assert_eq!(st.done_archive, n as u64, "{st:?}");
    assert_eq!(st.done_restore, n as u64, "{st:?}");
    for m in &mut movers {
        let st = m.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "ctposix exit status {st}");
    }
}

#[test]
fn e2e_sigterm_restart_with_held_transfers_completes_each_once() {
    restart_with_transfers_in_flight("e2e-restart-term", libc::SIGTERM);
}

#[test]
fn e2e_kill9_restart_with_held_transfers_completes_each_once() {
    restart_with_transfers_in_flight("e2e-restart-kill", libc::SIGKILL);
}
