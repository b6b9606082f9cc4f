//! Issue 7, against the real server on the simulated Lustre: the reference C copytool runs
//! unmodified under the preload as two movers, and a few hundred files are archived,
//! released, restored (contents checked) and removed through `coordinatool-server`.

mod e2e_common;
mod sim_common;

use std::path::PathBuf;

use e2e_common::{Server, fid_of, lfs_chunks, raise_max_requests, s};
use sim_common::{Sim, checksum, pattern, wait_until};

/// Archive, release, restore and remove of `n` files with two movers started with `args`.
fn round_trip(name: &str, args: &[&str], n: usize) {
    let sim = Sim::start(name);
    raise_max_requests(&sim);
    let server = Server::start(&sim);
    let mut movers = [
        server.mover(&sim, "mover-a", args),
        server.mover(&sim, "mover-b", args),
    ];
    let files: Vec<(PathBuf, u64)> = (0..n)
        .map(|i| {
            let data = pattern(100 + (i * 7919) % 20_000, i as u64 + 1);
            (sim.write(&format!("f{i}"), &data), checksum(&data))
        })
        .collect();
    let paths: Vec<String> = files.iter().map(|(p, _)| s(p)).collect();

    lfs_chunks(&sim, "hsm_archive", &paths);
    for (p, _) in &files {
        wait_until("archived", || sim.state(p).contains("exists archived"));
    }
    lfs_chunks(&sim, "hsm_release", &paths);
    for (p, _) in &files {
        assert!(sim.state(p).contains("released"), "{}", sim.state(p));
    }
    lfs_chunks(&sim, "hsm_restore", &paths);
    for (p, sum) in &files {
        wait_until("restored", || !sim.state(p).contains("released"));
        assert_eq!(
            checksum(&std::fs::read(p).unwrap()),
            *sum,
            "{}",
            p.display()
        );
    }
    lfs_chunks(&sim, "hsm_remove", &paths);
    for (p, _) in &files {
        wait_until("removed", || !sim.state(p).contains("exists"));
    }

    // Every action ran exactly once, successfully, and both movers took part.
    let lines: Vec<String> = movers.iter().flat_map(|m| m.lines()).collect();
    for (p, _) in &files {
        let fid = fid_of(p).to_string();
        for action in ["ARCHIVE", "RESTORE", "REMOVE"] {
            let ends: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("{action} end {fid} ")))
                .collect();
            assert_eq!(ends.len(), 1, "{action} of {fid}: {ends:?}");
            assert!(ends[0].contains(" rc=0 "), "{}", ends[0]);
        }
    }
    for m in &movers {
        assert!(
            m.lines().iter().any(|l| l.contains(" end ")),
            "a mover got no work"
        );
    }
    server.wait_idle();
    let st = server.status();
    assert_eq!(st.done_archive, n as u64);
    assert_eq!(st.done_restore, n as u64);
    assert_eq!(st.done_remove, n as u64);
    // The two movers and the CLI asking for the status.
    assert_eq!(st.clients_connected, 3);

    for m in &mut movers {
        let st = m.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "ctposix exit status {st}");
    }
}

#[test]
fn e2e_threads_300_files_two_movers() {
    round_trip("e2e-threads", &["--threads", "4"], 300);
}

#[test]
fn e2e_fork_300_files_two_movers() {
    round_trip("e2e-fork", &["--fork"], 300);
}

#[test]
fn e2e_polling_movers_300_files() {
    round_trip("e2e-poll", &["--poll", "--threads", "4"], 300);
}
