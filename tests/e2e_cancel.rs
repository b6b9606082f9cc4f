//! Issue 7, against the real server: `lfs hsm_cancel` (or `coordinatool-client cancel`) of a
//! transfer a mover holds (`ctposix --wait-file`) reaches that mover, the transfer ends with ECANCELED, the file is
//! not archived, and the server's counters return to zero.

mod e2e_common;
mod sim_common;

use e2e_common::{Server, fid_of, raise_max_requests, s};
use sim_common::{Sim, pattern, wait_until};

/// The FID sequence (the MDT) of a FID string `[0xSEQ:0xOID:0xVER]`.
fn seq(fid: &str) -> &str {
    fid.split(':').next().unwrap_or(fid)
}

/// Holds two archives, cancels one: `same_mdt` picks the other file on the same MDT as the
/// canceled one (distinct cookies), else on the other MDT (the simulated MDTs, like Lustre's,
/// number their cookies independently, so the two cookies can be equal).
fn cancel_one_of_two_held(name: &str, same_mdt: bool, via_client: bool) {
    let sim = Sim::start(name);
    raise_max_requests(&sim);
    let server = Server::start(&sim);
    let hold = sim.scratch("hold");
    std::fs::write(&hold, b"").unwrap();
    let mut mover = server.mover(&sim, "mover-a", &["--wait-file", &s(&hold)]);
    let canceled = sim.write("canceled", &pattern(20_000, 2));
    let cfid = fid_of(&canceled).to_string();
    let kept = (0..8)
        .map(|i| sim.write(&format!("other{i}"), &pattern(20_000, 10 + i)))
        .find(|p| (seq(&fid_of(p).to_string()) == seq(&cfid)) == same_mdt)
        .expect("a file on the wanted MDT");
    let kfid = fid_of(&kept).to_string();
    sim.lfs(&["hsm_archive", &s(&kept), &s(&canceled)]);
    let wait_c = mover.wait_line(&["ARCHIVE wait", &cfid]);
    mover.wait_line(&["ARCHIVE wait", &kfid]);
    let cookie = wait_c
        .split_whitespace()
        .find(|w| w.starts_with("cookie="))
        .expect("cookie in the wait line")
        .to_owned();
    assert_eq!(server.status().running_archive, 2);

    if via_client {
        let out = server.cli(&["cancel", &s(&canceled)]);
        assert!(
            out.status.success(),
            "coordinatool-client cancel: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        sim.lfs(&["hsm_cancel", &s(&canceled)]);
    }
    let cancel = mover.wait_line(&["CANCEL ", &cfid]);
    assert!(cancel.contains(&cookie), "{cancel}");
    assert!(cancel.contains("running=1"), "{cancel}");
    let end = mover.wait_line(&["ARCHIVE end", &cfid]);
    assert!(
        end.contains(&format!("rc=-{}", libc::ECANCELED)),
        "the canceled transfer ends with ECANCELED: {end}"
    );
    // The other transfer is unaffected: still held until the wait file goes.
    assert!(
        !mover
            .lines()
            .iter()
            .any(|l| l.contains("ARCHIVE end") && l.contains(&kfid)),
        "{:?}",
        mover.lines()
    );
    std::fs::remove_file(&hold).unwrap();
    let end = mover.wait_line(&["ARCHIVE end", &kfid]);
    assert!(end.contains(" rc=0 "), "{end}");
    wait_until("kept archived", || {
        sim.state(&kept).contains("exists archived")
    });
    server.wait_idle();
    let st = sim.state(&canceled);
    assert!(!st.contains("archived"), "canceled file: {st}");
    assert_eq!(
        mover
            .lines()
            .iter()
            .filter(|l| l.starts_with(&format!("ARCHIVE end {cfid} ")))
            .count(),
        1
    );
    let st = server.status();
    assert_eq!((st.running_archive, st.pending_cancel), (0, 0), "{st:?}");
    let st = mover.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "ctposix exit status {st}");
}

#[test]
fn e2e_cancel_of_a_held_transfer_reaches_the_mover() {
    cancel_one_of_two_held("e2e-cancel", true, false);
}

#[test]
fn e2e_client_cancel_subcommand_cancels_a_held_transfer() {
    cancel_one_of_two_held("e2e-cancel-cli", true, true);
}

#[test]
fn e2e_cancel_leaves_a_transfer_of_another_mdt_with_the_same_cookie() {
    cancel_one_of_two_held("e2e-cancel-mdts", false, false);
}
