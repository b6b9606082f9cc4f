//! Actions run by forked children (copytools that fork per item): the safe API's action
//! handles used in a child process of the registering one, against the stand-in and the
//! simulated Lustre. Alone in its binary so that no other test thread is inside the library
//! when the process forks.

mod sim_common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::hal::{HsmActionItem, HsmExtent};
use coordinatool_lustre::{Copytool, HsmAction, HsmProgressFlags, HsmStates, HsmUserAction, LuFid};
use sim_common::{Sim, api, pattern};

fn request(sim: &Sim, action: HsmUserAction, fids: &[LuFid]) {
    let items: Vec<(LuFid, HsmExtent)> = fids.iter().map(|f| (*f, HsmExtent::WHOLE_FILE)).collect();
    api()
        .hsm_request(
            sim.mount(),
            action,
            1,
            HsmRequestFlags::default(),
            &items,
            b"",
        )
        .expect("hsm_request");
}

fn recv_items(ct: &Copytool<'_>, n: usize) -> Vec<HsmActionItem> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut p = libc::pollfd {
            fd: ct.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout only bounds a broken test.
        assert_eq!(
            unsafe { libc::poll(&mut p, 1, 30_000) },
            1,
            "no HAL in time"
        );
        out.extend(ct.recv().expect("recv").items);
    }
    out
}

/// Runs `work` in a child process; returns its exit status (0: `work` returned true).
fn in_child(work: impl FnOnce() -> bool) -> libc::pid_t {
    // SAFETY: fork; the child only runs `work` and leaves with _exit (no destructors, no
    // unregistration of the parent's copytool).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or(false);
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    pid
}

fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status),
        "child {pid} did not exit normally: {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

#[test]
fn actions_begun_progressed_and_ended_in_forked_children() {
    const N: usize = 6;
    let sim = Sim::start("fork");
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &sim.mount().to_string_lossy(),
        "set_param",
        "mdt.*.hsm.max_requests=16",
    ]);
    assert_eq!(rc, 0, "{err}");
    let files: Vec<_> = (0..N)
        .map(|i| {
            let data = pattern(20_000 + i * 1000, 40 + i as u64);
            (sim.write(&format!("f{i}"), &data), data)
        })
        .collect();
    let fids: Vec<LuFid> = files
        .iter()
        .map(|(p, _)| api().path2fid(p).unwrap())
        .collect();
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");

    // Archive: one child per item.
    request(&sim, HsmUserAction::Archive, &fids);
    let archive = sim.archive();
    let pids: Vec<_> = recv_items(&ct, N)
        .into_iter()
        .map(|hai| {
            let (ct, archive) = (&ct, archive.clone());
            in_child(move || {
                let Ok(h) = ct.action_begin(&hai, -1, 0, false) else {
                    return false;
                };
                let mut data = Vec::new();
                let copied = h
                    .fd()
                    .map(std::fs::File::from)
                    .is_ok_and(|mut f| f.read_to_end(&mut data).is_ok());
                let written =
                    copied && std::fs::write(archive.join(format!("{:#}", hai.fid)), &data).is_ok();
                let progressed = h
                    .progress(
                        HsmExtent::new(0, data.len() as u64),
                        data.len() as u64,
                        HsmProgressFlags::default(),
                    )
                    .is_ok();
                let ended = h
                    .end(
                        hai.extent,
                        HsmProgressFlags::default(),
                        if written { 0 } else { libc::EIO },
                    )
                    .is_ok();
                written && progressed && ended
            })
        })
        .collect();
    for pid in pids {
        assert_eq!(wait_child(pid), 0, "archive child failed");
    }
    for ((_, data), f) in files.iter().zip(&fids) {
        assert_eq!(
            &std::fs::read(archive.join(format!("{f:#}"))).unwrap(),
            data
        );
        assert_eq!(
            sim.status_of(&f.to_string(), "ARCHIVE").as_deref(),
            Some("SUCCEED")
        );
    }

    // Restore of a released file by a child writing into the volatile.
    let (path, data) = &files[0];
    sim.lfs(&["hsm_release", &path.to_string_lossy()]);
    request(&sim, HsmUserAction::Restore, &fids[..1]);
    let hai = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(hai.action, HsmAction::Restore);
    let src = archive.join(format!("{:#}", hai.fid));
    let pid = in_child(|| {
        let Ok(h) = ct.action_begin(&hai, -1, 0, false) else {
            return false;
        };
        let Ok(fd) = h.fd() else { return false };
        let mut vol = std::fs::File::from(fd);
        let ok = std::fs::read(&src).is_ok_and(|d| vol.write_all(&d).is_ok());
        h.end(
            hai.extent,
            HsmProgressFlags::default(),
            if ok { 0 } else { libc::EIO },
        )
        .is_ok()
            && ok
    });
    assert_eq!(wait_child(pid), 0, "restore child failed");
    assert_eq!(&std::fs::read(path).unwrap(), data);
    let st = api().hsm_state_get(path).unwrap();
    assert!(!st.states.contains(HsmStates::RELEASED), "{st:?}");

    // The parent's registration still works after its children exited.
    request(&sim, HsmUserAction::Remove, &fids[1..2]);
    let hai = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(hai.action, HsmAction::Remove);
    ct.action_begin(&hai, -1, 0, false)
        .expect("begin")
        .end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    ct.unregister().expect("unregister");
}
