//! The safe FFI API of coordinatool-lustre against the `liblustreapi.so.1` stand-in and the
//! simulated Lustre: registration, reception, the full life cycle of every action, the
//! error paths of lustre-hsm.md §5.3, many threads, and a handle built by a preload library.

mod sim_common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::raw::c_int;
use std::path::Path;
use std::ptr;

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::ffi::bindings;
use coordinatool_lustre::hal::{HsmActionItem, HsmActionList, HsmExtent, LUSTRE_EOF};
use coordinatool_lustre::{
    Copytool, HsmAction, HsmProgressFlags, HsmProgressState, HsmStates, HsmUserAction, LuFid,
    LustreError,
};
use coordinatool_sim::server::ServeOptions;
use sim_common::{Sim, api, pattern, wait_until};

fn request(sim: &Sim, action: HsmUserAction, archive_id: u32, fids: &[LuFid]) {
    let items: Vec<(LuFid, HsmExtent)> = fids.iter().map(|f| (*f, HsmExtent::WHOLE_FILE)).collect();
    api()
        .hsm_request(
            sim.mount(),
            action,
            archive_id,
            HsmRequestFlags::default(),
            &items,
            b"",
        )
        .expect("hsm_request");
}

fn poll_readable(fd: c_int) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the timeout only bounds a broken test.
    let n = unsafe { libc::poll(&mut p, 1, 30_000) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// Receives lists until `n` items arrived (blocking copytool).
fn recv_items(ct: &Copytool<'_>, n: usize) -> Vec<(HsmActionList, HsmActionItem)> {
    let mut out = Vec::new();
    while out.len() < n {
        assert!(poll_readable(ct.as_raw_fd()), "no HAL within the deadline");
        let hal = match ct.recv() {
            Ok(hal) => hal,
            Err(LustreError::WouldBlock { .. }) => continue,
            Err(e) => panic!("recv: {e}"),
        };
        for item in &hal.items {
            out.push((hal.clone(), item.clone()));
        }
    }
    out
}

fn fid(path: &Path) -> LuFid {
    api().path2fid(path).expect("path2fid")
}

/// Archives `path` through a full action life cycle; returns its FID.
fn archive_with(sim: &Sim, ct: &Copytool<'_>, path: &Path) -> LuFid {
    let f = fid(path);
    request(sim, HsmUserAction::Archive, 1, &[f]);
    let (_, hai) = recv_items(ct, 1).pop().unwrap();
    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
    h.end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    f
}

#[test]
fn register_errors() {
    let sim = Sim::start("reg-errors");
    let missing = sim.scratch("no-such-dir");
    assert!(matches!(
        Copytool::register(api(), &missing, &[], false),
        Err(LustreError::NotFound { .. })
    ));
    // A plain directory is not a Lustre mount: no .lustre/fid (the real test uses /tmp).
    let plain = sim.scratch("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert!(matches!(
        Copytool::register(api(), &plain, &[], false),
        Err(LustreError::NotFound { .. })
    ));
    // A mount whose daemon is gone: no MDT reachable.
    let dead = sim.scratch("dead");
    std::fs::create_dir_all(dead.join(".lustre/fid")).unwrap();
    assert!(matches!(
        Copytool::register(api(), &dead, &[], false),
        Err(LustreError::NotConnected { .. })
    ));

    let s = api().symbols();
    let mnt = std::ffi::CString::new(sim.mount().to_string_lossy().as_bytes()).unwrap();
    let mut ct: *mut bindings::hsm_copytool_private = ptr::null_mut();
    // SAFETY: every call below passes what the C API allows (NULLs and bad values included).
    unsafe {
        assert_eq!(
            (s.llapi_hsm_copytool_register)(ptr::null_mut(), mnt.as_ptr(), 0, ptr::null_mut(), 0),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_copytool_register)(&mut ct, mnt.as_ptr(), 2, ptr::null_mut(), 0),
            -libc::EINVAL
        );
        let mut bad = [1 as c_int, -3];
        assert_eq!(
            (s.llapi_hsm_copytool_register)(&mut ct, mnt.as_ptr(), 2, bad.as_mut_ptr(), 0),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_copytool_register)(&mut ct, ptr::null(), 0, ptr::null_mut(), 0),
            -libc::EINVAL
        );
        assert!(ct.is_null());
        // NULL and bad-magic handles.
        let mut zeroes = [0u64; 16];
        let fake = zeroes.as_mut_ptr().cast::<bindings::hsm_copytool_private>();
        let mut hal: *mut bindings::hsm_action_list = ptr::null_mut();
        let mut size: c_int = 7;
        assert_eq!(
            (s.llapi_hsm_copytool_get_fd)(ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!((s.llapi_hsm_copytool_get_fd)(fake), -libc::EINVAL);
        assert_eq!(
            (s.llapi_hsm_copytool_recv)(fake, &mut hal, &mut size),
            -libc::EINVAL
        );
        assert!(hal.is_null() && size == 0, "outputs cleared on error");
        assert_eq!(
            (s.llapi_hsm_copytool_recv)(ptr::null_mut(), &mut hal, &mut size),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_copytool_unregister)(ptr::null_mut()),
            -libc::EINVAL
        );
        let mut null_ct: *mut bindings::hsm_copytool_private = ptr::null_mut();
        assert_eq!(
            (s.llapi_hsm_copytool_unregister)(&mut null_ct),
            -libc::EINVAL
        );
        let mut fake_ct = fake;
        assert_eq!(
            (s.llapi_hsm_copytool_unregister)(&mut fake_ct),
            -libc::EINVAL
        );

        // Archive id 0 means "any"; registering twice on one mount works; unregister
        // clears the pointer.
        let mut ids = [3 as c_int, 0];
        assert_eq!(
            (s.llapi_hsm_copytool_register)(&mut ct, mnt.as_ptr(), 2, ids.as_mut_ptr(), 0),
            0
        );
        let mut ct2: *mut bindings::hsm_copytool_private = ptr::null_mut();
        assert_eq!(
            (s.llapi_hsm_copytool_register)(&mut ct2, mnt.as_ptr(), 0, ptr::null_mut(), 0),
            0
        );
        assert!(sim.param("mdt.*.hsm.agents").contains("archive_id=ANY"));
        let fd = (s.llapi_hsm_copytool_get_fd)(ct);
        assert!(fd >= 0);
        assert_eq!(
            (s.llapi_hsm_copytool_get_fd)(ct),
            fd,
            "the pipe itself, not a dup"
        );
        assert_eq!((s.llapi_hsm_copytool_unregister)(&mut ct), 0);
        assert!(ct.is_null());
        assert_eq!((s.llapi_hsm_copytool_unregister)(&mut ct2), 0);
    }
    assert_eq!(sim.param("mdt.*.hsm.agents").trim(), "");
}

#[test]
fn nonblocking_recv_then_poll_then_the_list() {
    let sim = Sim::start("nonblock");
    let path = sim.write("f", b"abc");
    let f = fid(&path);
    let ct = Copytool::register(api(), sim.mount(), &[1], true).expect("register");
    // SAFETY: fcntl on the registration's open fd.
    let flags = unsafe { libc::fcntl(ct.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(flags & libc::O_NONBLOCK, 0);
    assert!(matches!(ct.recv(), Err(LustreError::WouldBlock { .. })));
    assert!(sim.param("mdt.*.hsm.agents").contains("archive_id=1 "));

    request(&sim, HsmUserAction::Archive, 1, &[f]);
    assert!(poll_readable(ct.as_raw_fd()));
    let hal = ct.recv().expect("recv");
    assert_eq!(hal.fsname, "lustre");
    assert_eq!(hal.archive_id, 1);
    assert_eq!(hal.items.len(), 1);
    let hai = &hal.items[0];
    assert_eq!(hai.action, HsmAction::Archive);
    assert_eq!((hai.fid, hai.dfid), (f, f));
    assert_eq!(hai.extent, HsmExtent::new(0, LUSTRE_EOF));
    assert!(matches!(ct.recv(), Err(LustreError::WouldBlock { .. })));
    // The request is running on the MDT until the copytool ends it.
    let a = api().hsm_current_action(&path).expect("current_action");
    assert_eq!(
        (a.state, a.action),
        (HsmProgressState::Running, Some(HsmUserAction::Archive))
    );
    ct.report_error(hai, libc::EIO).expect("report_error");
    wait_until("the failure to be recorded", || {
        sim.status_of(&f.to_string(), "ARCHIVE").as_deref() == Some("FAILED")
    });
}

#[test]
fn archive_life_cycle_and_finished_cookie() {
    let sim = Sim::start("archive");
    let data = pattern(200_000, 5);
    let path = sim.write("a", &data);
    let f = fid(&path);
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    request(&sim, HsmUserAction::Archive, 2, &[f]);
    let (hal, hai) = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(hal.archive_id, 2);
    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
    assert_eq!(h.dfid().unwrap(), f);
    let fd1 = h.fd().expect("fd");
    let fd2 = h.fd().expect("fd");
    assert_ne!(fd1.as_raw_fd(), fd2.as_raw_fd(), "each get_fd is a new dup");
    drop(fd2);
    let mut got = Vec::new();
    std::fs::File::from(fd1).read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
    h.progress(
        HsmExtent::new(0, 100_000),
        data.len() as u64,
        HsmProgressFlags::default(),
    )
    .expect("progress");
    let a = api().hsm_current_action(&path).unwrap();
    assert_eq!(a.state, HsmProgressState::Running);
    assert_eq!(a.location.length, 100_000, "bytes moved so far");
    // llapi_hsm_state_get fills hus_in_progress_* with the same running action.
    let st = api().hsm_state_get(&path).unwrap();
    assert_eq!(st.in_progress_state, HsmProgressState::Running, "{st:?}");
    assert_eq!(st.in_progress_action, Some(HsmUserAction::Archive));
    assert_eq!(st.in_progress_location.length, 100_000, "{st:?}");
    assert!(matches!(
        h.progress(
            HsmExtent::new(u64::MAX - 5, 100),
            0,
            HsmProgressFlags::default()
        ),
        Err(LustreError::InvalidArgument { .. })
    ));
    h.end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    let st = api().hsm_state_get(&path).unwrap();
    assert!(
        st.states.contains(HsmStates::EXISTS | HsmStates::ARCHIVED),
        "{st:?}"
    );
    assert_eq!(
        st.in_progress_state,
        HsmProgressState::None,
        "idle again: {st:?}"
    );
    assert!(
        matches!(st.in_progress_action, None | Some(HsmUserAction::None)),
        "{st:?}"
    );
    assert_eq!(st.archive_id, 2);
    assert_eq!(
        sim.status_of(&f.to_string(), "ARCHIVE").as_deref(),
        Some("SUCCEED")
    );
    // The cookie is finished: starting it again is ENOENT.
    assert!(matches!(
        ct.action_begin(&hai, -1, 0, false),
        Err(LustreError::NotFound { .. })
    ));
}

#[test]
fn restore_goes_through_a_volatile_committed_at_end() {
    let sim = Sim::start("restore");
    let data = pattern(77_777, 9);
    let path = sim.write("r", &data);
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    let f = archive_with(&sim, &ct, &path);
    sim.lfs(&["hsm_release", &path.to_string_lossy()]);
    assert!(
        api()
            .hsm_state_get(&path)
            .unwrap()
            .states
            .contains(HsmStates::RELEASED)
    );

    request(&sim, HsmUserAction::Restore, 0, &[f]);
    let (_, hai) = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(hai.action, HsmAction::Restore);
    let mnt = std::fs::File::open(sim.mount()).unwrap();
    let mdt = api().mdt_index_by_fid(mnt.as_fd(), &f).expect("mdt index");
    assert!(mdt == 0 || mdt == 1, "two MDTs: {mdt}");
    let h = ct.action_begin(&hai, mdt, 0, false).expect("begin");
    let dfid = h.dfid().unwrap();
    assert_ne!(dfid, f, "the volatile has its own FID");
    let mut vol = std::fs::File::from(h.fd().expect("fd"));
    vol.write_all(&data).unwrap();
    h.progress(
        HsmExtent::new(0, data.len() as u64),
        0,
        HsmProgressFlags::default(),
    )
    .expect("progress");
    // The volatile stays open until end has returned (layout swap).
    h.end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    drop(vol);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let st = api().hsm_state_get(&path).unwrap();
    assert!(!st.states.contains(HsmStates::RELEASED), "{st:?}");
    assert_eq!(
        sim.status_of(&f.to_string(), "RESTORE").as_deref(),
        Some("SUCCEED")
    );
}

#[test]
fn remove_has_no_data_fid_nor_fd() {
    let sim = Sim::start("remove");
    let path = sim.write("m", b"to remove");
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    let f = archive_with(&sim, &ct, &path);
    request(&sim, HsmUserAction::Remove, 1, &[f]);
    let (_, hai) = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(hai.action, HsmAction::Remove);
    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
    assert!(matches!(h.dfid(), Err(LustreError::InvalidArgument { .. })));
    assert!(matches!(h.fd(), Err(LustreError::InvalidArgument { .. })));
    h.end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    let st = api().hsm_state_get(&path).unwrap();
    assert!(
        !st.states
            .intersects(HsmStates::EXISTS | HsmStates::ARCHIVED),
        "{st:?}"
    );
}

#[test]
fn cancel_makes_progress_return_ecanceled() {
    let sim = Sim::start("cancel");
    let path = sim.write("c", &pattern(10_000, 2));
    let f = fid(&path);
    let ct = Copytool::register(api(), sim.mount(), &[], true).expect("register");
    request(&sim, HsmUserAction::Archive, 1, &[f]);
    let (_, hai) = recv_items(&ct, 1).pop().unwrap();
    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
    h.progress(HsmExtent::new(0, 10), 0, HsmProgressFlags::default())
        .expect("progress");
    request(&sim, HsmUserAction::Cancel, 0, &[f]);
    // The CANCEL item reaches the copytool running the archive...
    let (_, cancel) = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(
        (cancel.action, cancel.cookie),
        (HsmAction::Cancel, hai.cookie)
    );
    // ...and the copy learns it from its next progress.
    assert!(matches!(
        h.progress(HsmExtent::new(10, 10), 0, HsmProgressFlags::default()),
        Err(LustreError::Canceled { .. })
    ));
    h.end(hai.extent, HsmProgressFlags::default(), libc::ECANCELED)
        .expect("end");
    wait_until("the cancel to be recorded", || {
        sim.status_of(&f.to_string(), "CANCEL").as_deref() == Some("SUCCEED")
    });
    assert_eq!(
        sim.status_of(&f.to_string(), "ARCHIVE").as_deref(),
        Some("CANCELED")
    );
}

#[test]
fn action_error_paths() {
    let sim = Sim::start("action-errors");
    let path = sim.write("e", b"x");
    let f = fid(&path);
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    request(&sim, HsmUserAction::Archive, 1, &[f]);
    let (_, hai) = recv_items(&ct, 1).pop().unwrap();
    let s = api().symbols();
    let c_hai = coordinatool_lustre::copytool::c_action_item(&hai);
    let whole = bindings::hsm_extent {
        offset: 0,
        length: LUSTRE_EOF,
    };
    let mut zeroes = [0u64; 64];
    let fake = zeroes
        .as_mut_ptr()
        .cast::<bindings::hsm_copyaction_private>();
    // SAFETY: raw C calls with the NULL and bad-magic arguments the API must reject.
    unsafe {
        let mut hcp: *mut bindings::hsm_copyaction_private = ptr::null_mut();
        assert_eq!(
            (s.llapi_hsm_action_begin)(&mut hcp, ptr::null(), &c_hai, -1, 0, false),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_action_progress)(ptr::null_mut(), &whole, 0, 0),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_action_progress)(fake, &whole, 0, 0),
            -libc::EINVAL
        );
        assert_eq!((s.llapi_hsm_action_get_fd)(fake), -libc::EINVAL);
        let mut out = bindings::lu_fid::default();
        assert_eq!((s.llapi_hsm_action_get_dfid)(fake, &mut out), -libc::EINVAL);
        let mut fake_h = fake;
        assert_eq!(
            (s.llapi_hsm_action_end)(&mut fake_h, &whole, 0, 0),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_action_end)(&mut hcp, &whole, 0, 0),
            -libc::EINVAL
        );
        assert_eq!(
            (s.llapi_hsm_action_end)(ptr::null_mut(), &whole, 0, 0),
            -libc::EINVAL
        );

        // A real handle: end with a NULL extent is refused and the handle survives.
        let ct_raw = {
            // The safe API does not expose its handle: register a raw one on the same mount.
            let mnt = std::ffi::CString::new(sim.mount().to_string_lossy().as_bytes()).unwrap();
            let mut c: *mut bindings::hsm_copytool_private = ptr::null_mut();
            assert_eq!(
                (s.llapi_hsm_copytool_register)(&mut c, mnt.as_ptr(), 0, ptr::null_mut(), 0),
                0
            );
            c
        };
        assert_eq!(
            (s.llapi_hsm_action_begin)(&mut hcp, ct_raw, &c_hai, -1, 0, false),
            0
        );
        assert!(!hcp.is_null());
        assert_eq!(
            (s.llapi_hsm_action_end)(&mut hcp, ptr::null(), 0, 0),
            -libc::EINVAL
        );
        assert!(!hcp.is_null(), "not freed on invalid arguments");
        assert_eq!(
            (s.llapi_hsm_action_end)(&mut hcp, &whole, 0, -libc::EPERM),
            0
        );
        assert!(hcp.is_null(), "*phcp = NULL after end");
        let mut ct_raw = ct_raw;
        assert_eq!((s.llapi_hsm_copytool_unregister)(&mut ct_raw), 0);
    }
    // The negative errval was reported as its absolute value: a failure.
    wait_until("the failure to be recorded", || {
        sim.status_of(&f.to_string(), "ARCHIVE").as_deref() == Some("FAILED")
    });
    // Progress on a finished cookie through a second handle: ENOENT.
    assert!(matches!(
        ct.action_begin(&hai, -1, 0, false),
        Err(LustreError::NotFound { .. })
    ));
}

#[test]
fn shutdown_is_reported_by_recv() {
    let mut sim = Sim::start("shutdown");
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    let t = std::thread::scope(|s| {
        let h = s.spawn(|| ct.recv());
        sim.stop();
        h.join().unwrap()
    });
    assert!(matches!(t, Err(LustreError::Shutdown { .. })), "{t:?}");
}

#[test]
fn archive_filter_is_applied_per_copytool() {
    let sim = Sim::start("filter");
    let path = sim.write("x", b"x");
    let f = fid(&path);
    // Both registrations are one agent (one client mount); the agent serves the first list.
    let all = Copytool::register(api(), sim.mount(), &[1, 2], true).expect("register");
    let only2 = Copytool::register(api(), sim.mount(), &[2], true).expect("register");
    request(&sim, HsmUserAction::Archive, 1, &[f]);
    let (hal, hai) = recv_items(&all, 1).pop().unwrap();
    assert_eq!(hal.archive_id, 1);
    // The same list reached the other copytool's stream, which drops it.
    assert!(poll_readable(only2.as_raw_fd()));
    assert!(matches!(only2.recv(), Err(LustreError::WouldBlock { .. })));
    all.report_error(&hai, libc::EIO).expect("report");
}

#[test]
fn many_actions_on_many_threads() {
    const N: usize = 40;
    let sim = Sim::start("threads");
    let files: Vec<_> = (0..N)
        .map(|i| {
            let data = pattern(1000 + i * 37, i as u64);
            (sim.write(&format!("t{i}"), &data), data)
        })
        .collect();
    let fids: Vec<LuFid> = files.iter().map(|(p, _)| fid(p)).collect();
    // Let every request run at once (the default max_requests is 3).
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &sim.mount().to_string_lossy(),
        "set_param",
        "mdt.*.hsm.max_requests=64",
    ]);
    assert_eq!(rc, 0, "{err}");
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    request(&sim, HsmUserAction::Archive, 1, &fids);
    let archive = sim.archive();
    std::thread::scope(|s| {
        // One thread per item as soon as it arrives, as lhsmtool_posix does.
        let mut started = 0;
        while started < N {
            for (_, hai) in recv_items(&ct, 1) {
                started += 1;
                let (ct, archive) = (&ct, &archive);
                s.spawn(move || {
                    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
                    let mut src = std::fs::File::from(h.fd().expect("fd"));
                    let mut data = Vec::new();
                    src.read_to_end(&mut data).unwrap();
                    std::fs::write(archive.join(format!("{:#}", hai.fid)), &data).unwrap();
                    h.progress(
                        HsmExtent::new(0, data.len() as u64),
                        0,
                        HsmProgressFlags::default(),
                    )
                    .expect("progress");
                    h.end(hai.extent, HsmProgressFlags::default(), 0)
                        .expect("end");
                });
            }
        }
    });
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
}

#[test]
fn action_functions_accept_a_handle_built_by_a_preload_library() {
    let sim = Sim::start("fake-handle");
    let data = pattern(5000, 4);
    let path = sim.write("h", &data);
    let f = fid(&path);
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    request(&sim, HsmUserAction::Archive, 1, &[f]);
    let (_, hai) = recv_items(&ct, 1).pop().unwrap();
    // What a preload library does: its own handle with the real layout's first fields (no
    // magic), handed to the library's action functions.
    let mnt = std::ffi::CString::new(sim.mount().to_string_lossy().as_bytes()).unwrap();
    let mnt_file = std::fs::File::open(sim.mount()).unwrap();
    let fid_dir = std::fs::File::open(sim.mount().join(".lustre/fid")).unwrap();
    let layout = bindings::hsm_copytool_private_layout {
        magic: 0,
        mnt: mnt.as_ptr().cast_mut(),
        kuch: ptr::null_mut(),
        mnt_fd: mnt_file.as_raw_fd(),
        open_by_fid_fd: fid_dir.as_raw_fd(),
        kuc: ptr::null_mut(),
    };
    let s = api().symbols();
    let c_hai = coordinatool_lustre::copytool::c_action_item(&hai);
    let whole = bindings::hsm_extent {
        offset: 0,
        length: LUSTRE_EOF,
    };
    let mut hcp: *mut bindings::hsm_copyaction_private = ptr::null_mut();
    // SAFETY: a handle of the documented layout, a complete item, valid out-pointers.
    unsafe {
        let ct_ptr = (&raw const layout).cast::<bindings::hsm_copytool_private>();
        assert_eq!(
            (s.llapi_hsm_action_begin)(&mut hcp, ct_ptr, &c_hai, -1, 0, false),
            0
        );
        let fd = (s.llapi_hsm_action_get_fd)(hcp);
        assert!(fd >= 0);
        let mut got = Vec::new();
        std::fs::File::from_raw_fd(fd)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
        assert_eq!((s.llapi_hsm_action_end)(&mut hcp, &whole, 0, 0), 0);
    }
    assert_eq!(
        sim.status_of(&f.to_string(), "ARCHIVE").as_deref(),
        Some("SUCCEED")
    );
}

#[test]
fn paths_fids_fsname_and_state() {
    // A filesystem name no other test uses: fid2path is also asked by name.
    let opts = ServeOptions {
        fsname: "pathtest".to_owned(),
        ..ServeOptions::default()
    };
    let sim = Sim::start_with("paths", &opts);
    std::fs::create_dir_all(sim.mount().join("d/e")).unwrap();
    let path = sim.write("d/e/file", b"content");
    let f = api().path2fid(&path).expect("path2fid");
    assert_eq!(api().path2fid(&path).unwrap(), f, "stable");
    assert_eq!(
        api().fid2path(sim.mount(), &f).unwrap(),
        Path::new("d/e/file")
    );
    // By filesystem name (a mount this process used).
    assert_eq!(
        api().fid2path(Path::new("pathtest"), &f).unwrap(),
        Path::new("d/e/file")
    );
    let file = std::fs::File::open(&path).unwrap();
    assert_eq!(api().fd2fid(file.as_fd()).unwrap(), f);
    let by_fid = std::fs::File::open(sim.mount().join(format!(".lustre/fid/{f:#}"))).unwrap();
    assert_eq!(api().fd2fid(by_fid.as_fd()).unwrap(), f, "open by FID");
    assert_eq!(
        api().search_fsname(&sim.mount().join("d")).unwrap(),
        "pathtest"
    );
    assert!(matches!(
        api().search_fsname(&sim.scratch("elsewhere")),
        Err(LustreError::Other {
            errno: libc::ENODEV,
            ..
        })
    ));
    let outside = sim.scratch("outside");
    std::fs::write(&outside, b"o").unwrap();
    assert!(matches!(
        api().path2fid(&outside),
        Err(LustreError::Other {
            errno: libc::ENOTTY,
            ..
        })
    ));
    assert!(matches!(
        api().path2fid(&sim.mount().join("missing")),
        Err(LustreError::NotFound { .. })
    ));
    assert!(matches!(
        api().fid2path(sim.mount(), &LuFid::new(0x2_0000_0400, 0x7777, 0)),
        Err(LustreError::NotFound { .. })
    ));

    api()
        .hsm_state_set(&path, HsmStates::NORELEASE, HsmStates::default(), 0)
        .expect("state_set");
    let st = api().hsm_state_get(&path).unwrap();
    assert_eq!(st.states, HsmStates::NORELEASE);
    let a = api().hsm_current_action(&path).unwrap();
    assert_eq!(a.action, Some(HsmUserAction::None));
    api()
        .hsm_state_set(&path, HsmStates::default(), HsmStates::NORELEASE, 0)
        .expect("state_set");
    assert_eq!(
        api().hsm_state_get(&path).unwrap().states,
        HsmStates::default()
    );
    // SAFETY: the raw fd variant on an open file.
    unsafe {
        let mut hus = bindings::hsm_user_state::default();
        assert_eq!(
            (api().symbols().llapi_hsm_state_set_fd)(file.as_raw_fd(), 0x20, 0, 0),
            0
        );
        assert_eq!(
            (api().symbols().llapi_hsm_state_get_fd)(file.as_raw_fd(), &mut hus),
            0
        );
        assert_eq!(hus.hus_states, 0x20);
    }
}

#[test]
fn log_level_and_user_request_alloc() {
    let s = api().symbols();
    // SAFETY: plain C calls; the request buffer is freed with free() as documented.
    unsafe {
        let old = (s.llapi_msg_get_level)();
        (s.llapi_msg_set_level)(bindings::LLAPI_MSG_DEBUG as c_int);
        assert_eq!(
            (s.llapi_msg_get_level)(),
            bindings::LLAPI_MSG_DEBUG as c_int
        );
        (s.llapi_msg_set_level)(old);
        let hur = (s.llapi_hsm_user_request_alloc)(3, 10);
        assert!(!hur.is_null());
        let bytes = std::slice::from_raw_parts(hur.cast::<u8>(), 24 + 3 * 32 + 10);
        assert!(bytes.iter().all(|&b| b == 0), "zeroed like calloc");
        libc::free(hur.cast());
        assert!((s.llapi_hsm_user_request_alloc)(-1, 0).is_null());
    }
}

#[test]
fn shared_object_has_the_soname_and_only_llapi_exports() {
    let so = sim_common::lib_dir().join("liblustreapi.so");
    let out = std::process::Command::new("readelf")
        .arg("-dW")
        .arg(&so)
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Library soname: [liblustreapi.so.1]"),
        "{text}"
    );
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    for sym in coordinatool_lustre::ffi::SYMBOLS
        .iter()
        .chain(&["llapi_error", "llapi_printf"])
    {
        assert!(names.iter().any(|n| n == sym), "{sym} not exported");
    }
    let foreign: Vec<_> = names.iter().filter(|n| !n.starts_with("llapi_")).collect();
    assert!(foreign.is_empty(), "unexpected exports: {foreign:?}");
}

/// The variadic logging functions (defined in C inside the stand-in) with callbacks and
/// levels, and the library's own messages going through the error callback.
const LOG_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "lustreapi_subset.h"

static char last[512];
static int last_level, last_err, calls;

static void cb(enum llapi_message_level level, int err, const char *fmt, va_list ap)
{
	vsnprintf(last, sizeof(last), fmt, ap);
	last_level = (int)level;
	last_err = err;
	calls++;
}

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "check failed line %d: %s (last='%s')\n", __LINE__, #c, last); return 1; } } while (0)

int main(int argc, char **argv)
{
	struct hsm_copytool_private *ct = NULL;
	llapi_log_callback_t old;

	(void)argc;
	CHECK(llapi_msg_get_level() == LLAPI_MSG_NORMAL);
	old = llapi_error_callback_set(cb);
	CHECK(old != NULL);
	CHECK(llapi_error_callback_set(cb) == cb);
	llapi_error(LLAPI_MSG_ERROR, -EIO, "copy of %s failed after %d bytes", "f", 42);
	CHECK(calls == 1 && strcmp(last, "copy of f failed after 42 bytes") == 0);
	CHECK(last_level == LLAPI_MSG_ERROR && last_err == EIO);
	llapi_error(LLAPI_MSG_DEBUG, 0, "filtered");
	CHECK(calls == 1);
	llapi_msg_set_level(LLAPI_MSG_DEBUG);
	llapi_error(LLAPI_MSG_DEBUG | LLAPI_MSG_NO_ERRNO, 0, "now %s", "shown");
	CHECK(calls == 2 && strcmp(last, "now shown") == 0);
	CHECK(last_level == (LLAPI_MSG_DEBUG | LLAPI_MSG_NO_ERRNO));
	llapi_msg_set_level(LLAPI_MSG_ERROR);
	CHECK(llapi_info_callback_set(cb) != NULL);
	llapi_printf(LLAPI_MSG_INFO, "hidden %d", 1);
	CHECK(calls == 2);
	llapi_printf(LLAPI_MSG_ERROR, "info %d", 7);
	CHECK(calls == 3 && strcmp(last, "info 7") == 0 && last_err == 0);
	/* The library's own error: registering on a mount whose daemon is gone. */
	CHECK(llapi_hsm_copytool_register(&ct, argv[1], 0, NULL, 0) == -ENOTCONN);
	CHECK(calls == 4 && last_err == ENOTCONN);
	CHECK(strstr(last, "cannot start copytool interface") != NULL);
	puts("ok");
	return 0;
}
"#;

#[test]
fn variadic_logging_functions_and_callbacks() {
    let sim = Sim::start("log");
    let src = sim.scratch("log.c");
    std::fs::write(&src, LOG_C).unwrap();
    let bin = sim_common::build_c(&src, "logtest", &[]);
    let dead = sim.scratch("dead");
    std::fs::create_dir_all(dead.join(".lustre/fid")).unwrap();
    let out = std::process::Command::new(bin)
        .arg(&dead)
        .env("LD_LIBRARY_PATH", sim_common::lib_dir())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn event_fifo_gets_json_lines() {
    let sim = Sim::start("fifo");
    let fifo = sim.scratch("events");
    let cfifo = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    let s = api().symbols();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { (s.llapi_hsm_register_event_fifo)(cfifo.as_ptr()) },
        0
    );
    // Read while the test runs (other tests of this binary write events too: the FIFO is
    // process-wide); EOF comes when the library closes its end at unregistration.
    // Events written while no reader has the FIFO open are dropped (as Lustre's are): the
    // copytool starts only once the reader is there.
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut r = std::fs::File::open(&fifo).expect("open fifo");
            opened_tx.send(()).expect("signal the open");
            r.read_to_string(&mut text).expect("read fifo");
            text
        })
    };
    opened.recv().expect("the reader opened the fifo");
    let path = sim.write("e", b"event data");
    let ct = Copytool::register(api(), sim.mount(), &[], false).expect("register");
    archive_with(&sim, &ct, &path);
    drop(ct);
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { (s.llapi_hsm_unregister_event_fifo)(cfifo.as_ptr()) },
        0
    );
    let text = reader.join().unwrap();
    let mount = format!("\"mount_point\":\"{}\"", sim.mount().display());
    let mine: Vec<&str> = text.lines().filter(|l| l.contains(&mount)).collect();
    let types: Vec<&str> = mine
        .iter()
        .filter_map(|l| {
            let v = l.split("\"event_type\":\"").nth(1)?;
            v.split('"').next()
        })
        .collect();
    assert_eq!(
        types,
        ["REGISTER", "ARCHIVE_START", "ARCHIVE_FINISH", "UNREGISTER"],
        "{text}"
    );
}

type FidParseFn = unsafe extern "C" fn(
    *const libc::c_char,
    *mut bindings::lu_fid,
    *mut *mut libc::c_char,
) -> c_int;
type ParseSizeFn = unsafe extern "C" fn(*const libc::c_char, *mut u64, *mut u64, c_int) -> c_int;
type Fid2PathAtFn = unsafe extern "C" fn(
    c_int,
    *const bindings::lu_fid,
    *mut libc::c_char,
    c_int,
    *mut libc::c_longlong,
    *mut c_int,
) -> c_int;
type Fid2PathFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const libc::c_char,
    *mut libc::c_char,
    c_int,
    *mut libc::c_longlong,
    *mut c_int,
) -> c_int;
type ImportFn = unsafe extern "C" fn(
    *const libc::c_char,
    c_int,
    *const libc::stat,
    libc::c_ulonglong,
    c_int,
    c_int,
    c_int,
    *mut libc::c_char,
    *mut bindings::lu_fid,
) -> c_int;

/// A symbol of the stand-in that the safe API does not wrap.
fn sym<T: Copy>(name: &str) -> T {
    // SAFETY: the caller names the symbol's real C type.
    unsafe {
        *sim_common::raw_lib()
            .get::<T>(name.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

fn c_fid(f: LuFid) -> bindings::lu_fid {
    bindings::lu_fid {
        f_seq: f.seq,
        f_oid: f.oid,
        f_ver: f.ver,
    }
}

fn from_c_fid(f: bindings::lu_fid) -> LuFid {
    LuFid::new(f.f_seq, f.f_oid, f.f_ver)
}

#[test]
fn fid_parse_sets_endptr_and_returns_negative_errnos() {
    let parse: FidParseFn = sym("llapi_fid_parse");
    let cases: &[(&str, c_int, Option<LuFid>, usize)] = &[
        (
            "[0x200000401:0x4:0x0]",
            0,
            Some(LuFid::new(0x2_0000_0401, 4, 0)),
            21,
        ),
        (
            "0x200000401:0x4:0x1 tail",
            0,
            Some(LuFid::new(0x2_0000_0401, 4, 1)),
            19,
        ),
        ("  [0x7:0x1:0x0]x", 0, Some(LuFid::new(7, 1, 0)), 15),
        ("[0x1:0x2]", -libc::EINVAL, None, 8),
        ("nofid", -libc::EINVAL, None, 0),
        ("0x1:0x123456789:0x0", -libc::ERANGE, None, 15),
    ];
    for &(text, rc, want, end) in cases {
        let c = std::ffi::CString::new(text).unwrap();
        let mut out = c_fid(LuFid::new(9, 9, 9));
        let mut endp: *mut libc::c_char = ptr::null_mut();
        // SAFETY: a C string and valid out-pointers.
        let got = unsafe { parse(c.as_ptr(), &mut out, &mut endp) };
        assert_eq!(got, rc, "{text}");
        assert_eq!(endp as usize - c.as_ptr() as usize, end, "endptr of {text}");
        match want {
            Some(f) => assert_eq!(from_c_fid(out), f, "{text}"),
            None => assert_eq!(from_c_fid(out), LuFid::new(9, 9, 9), "untouched: {text}"),
        }
    }
    // A NULL endptr is allowed; NULL string or FID is EINVAL.
    let c = std::ffi::CString::new("[0x1:0x2:0x3]").unwrap();
    let mut out = c_fid(LuFid::new(0, 0, 0));
    // SAFETY: NULLs where the API allows or rejects them.
    unsafe {
        assert_eq!(parse(c.as_ptr(), &mut out, ptr::null_mut()), 0);
        assert_eq!(from_c_fid(out), LuFid::new(1, 2, 3));
        assert_eq!(parse(ptr::null(), &mut out, ptr::null_mut()), -libc::EINVAL);
        assert_eq!(
            parse(c.as_ptr(), ptr::null_mut(), ptr::null_mut()),
            -libc::EINVAL
        );
    }
}

#[test]
fn parse_size_units_default_unit_and_errors() {
    let parse: ParseSizeFn = sym("llapi_parse_size");
    let run = |text: &str, units: u64, bytes_spec: c_int| -> (c_int, u64, u64) {
        let c = std::ffi::CString::new(text).unwrap();
        let (mut size, mut u) = (12345u64, units);
        // SAFETY: a C string and valid out-pointers.
        let rc = unsafe { parse(c.as_ptr(), &mut size, &mut u, bytes_spec) };
        (rc, size, u)
    };
    // lhsmtool_posix's --bandwidth: a bare number counts in MiB, a suffix overrides.
    assert_eq!(run("10", 1 << 20, 0), (0, 10 << 20, 1 << 20));
    assert_eq!(run("512k", 1 << 20, 0), (0, 512 << 10, 1 << 10));
    // A zero unit means bytes.
    assert_eq!(run("4096", 0, 0), (0, 4096, 1));
    assert_eq!(run("1.5G", 0, 0), (0, 3 << 29, 1 << 30));
    assert_eq!(run("3T", 0, 0), (0, 3 << 40, 1 << 40));
    assert_eq!(run("2P", 0, 0), (0, 2 << 50, 1 << 50));
    assert_eq!(run("1e", 0, 0), (0, 1 << 60, 1 << 60));
    assert_eq!(run("0x20M", 0, 0), (0, 32 << 20, 1 << 20));
    assert_eq!(run("4b", 0, 0), (0, 2048, 512), "512-byte blocks");
    assert_eq!(run("4b", 0, 1), (0, 4, 1), "bytes when bytes_spec");
    for bad in ["-1", "", "12x", "1MB", "k"] {
        assert_eq!(run(bad, 0, 0), (-libc::EINVAL, 12345, 0), "{bad:?}");
    }
    assert_eq!(run("16E", 0, 0), (-libc::ERANGE, 12345, 0));
    let mut size = 0u64;
    let mut units = 0u64;
    // SAFETY: NULL arguments are rejected before any access.
    unsafe {
        assert_eq!(parse(ptr::null(), &mut size, &mut units, 0), -libc::EINVAL);
        assert_eq!(
            parse(c"1".as_ptr(), ptr::null_mut(), &mut units, 0),
            -libc::EINVAL
        );
    }
}

/// Calls `llapi_fid2path_at` with `linkno`; returns (rc, path, linkno after).
fn fid2path_at(fd: c_int, f: LuFid, len: c_int, linkno: c_int) -> (c_int, String, c_int) {
    let call: Fid2PathAtFn = sym("llapi_fid2path_at");
    let mut buf = vec![0 as libc::c_char; len.max(1) as usize];
    let mut recno: libc::c_longlong = -1;
    let mut link = linkno;
    let cf = c_fid(f);
    // SAFETY: a buffer of `len` bytes and valid in/out pointers.
    let rc = unsafe { call(fd, &cf, buf.as_mut_ptr(), len, &mut recno, &mut link) };
    assert_eq!(recno, -1, "recno is left as given");
    // SAFETY: NUL-terminated on success; empty otherwise.
    let path = if rc == 0 {
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    (rc, path, link)
}

#[test]
fn fid2path_at_walks_hard_links_with_linkno() {
    let sim = Sim::start("fid2path-at");
    std::fs::create_dir_all(sim.mount().join("a/b")).unwrap();
    std::fs::create_dir_all(sim.mount().join("z")).unwrap();
    let path = sim.write("a/b/file", b"linked");
    let f = fid(&path);
    let mnt = std::fs::File::open(sim.mount()).unwrap();
    let fd = mnt.as_raw_fd();

    // One link: linkno stays 0 (no more links), whatever the buffer.
    assert_eq!(fid2path_at(fd, f, 256, 0), (0, "a/b/file".into(), 0));
    // Exactly the path and its NUL fit; one byte less overflows.
    assert_eq!(fid2path_at(fd, f, 9, 0), (0, "a/b/file".into(), 0));
    assert_eq!(fid2path_at(fd, f, 8, 0).0, -libc::EOVERFLOW);

    // Two more names for the same file: lfs fid2path's loop sees all three, in order.
    std::fs::hard_link(&path, sim.mount().join("z/second")).unwrap();
    std::fs::hard_link(&path, sim.mount().join("a/third")).unwrap();
    let mut seen = Vec::new();
    let mut linkno = 0;
    loop {
        let (rc, p, next) = fid2path_at(fd, f, 256, linkno);
        assert_eq!(rc, 0);
        seen.push(p);
        if next == linkno {
            break;
        }
        assert_eq!(next, linkno + 1);
        linkno = next;
        assert!(seen.len() <= 3, "linkno loop does not end: {seen:?}");
    }
    assert_eq!(seen, ["a/b/file", "a/third", "z/second"]);
    // An index past the last link gives the first one, linkno unchanged.
    assert_eq!(fid2path_at(fd, f, 256, 7), (0, "a/b/file".into(), 7));
    // The name-based variant has the same linkno semantics.
    let by_name: Fid2PathFn = sym("llapi_fid2path");
    let dev = std::ffi::CString::new(sim.mount().to_string_lossy().as_bytes()).unwrap();
    let fidstr = std::ffi::CString::new(format!("{f:#}")).unwrap();
    let mut buf = [0 as libc::c_char; 64];
    let mut link = 1;
    // SAFETY: C strings, a 64-byte buffer, valid pointers.
    unsafe {
        assert_eq!(
            by_name(
                dev.as_ptr(),
                fidstr.as_ptr(),
                buf.as_mut_ptr(),
                64,
                ptr::null_mut(),
                &mut link
            ),
            0
        );
        assert_eq!(
            std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap(),
            "a/third"
        );
    }
    assert_eq!(link, 2);

    // The root, an fd opened anywhere in the mount, errors.
    let root = fid(sim.mount());
    assert_eq!(fid2path_at(fd, root, 16, 0), (0, String::new(), 0));
    let sub = std::fs::File::open(sim.mount().join("a")).unwrap();
    assert_eq!(fid2path_at(sub.as_raw_fd(), f, 256, 0).1, "a/b/file");
    assert_eq!(
        fid2path_at(fd, LuFid::new(0x2_0000_0400, 0x7777, 0), 256, 0).0,
        -libc::ENOENT
    );
    let outside = std::fs::File::open(sim.scratch("")).unwrap();
    assert_eq!(fid2path_at(outside.as_raw_fd(), f, 256, 0).0, -libc::ENOTTY);
    assert_eq!(fid2path_at(-1, f, 256, 0).0, -libc::EBADF);
    assert_eq!(fid2path_at(fd, f, 0, 0).0, -libc::EINVAL);
    let call: Fid2PathAtFn = sym("llapi_fid2path_at");
    // SAFETY: a NULL FID is rejected before any access.
    unsafe {
        assert_eq!(
            call(
                fd,
                ptr::null(),
                buf.as_mut_ptr(),
                64,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EINVAL
        );
    }
}

/// A `struct stat` as a copytool's import gets it from the archived file.
fn stat_of(path: &Path) -> libc::stat {
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a zeroed out-struct and a C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::stat(c.as_ptr(), &mut st), 0);
        st
    }
}

#[test]
fn hsm_import_then_restore_brings_the_archived_data_back() {
    use std::os::unix::fs::MetadataExt;

    let sim = Sim::start("import");
    let data = pattern(300_000, 21);
    let archived = sim.scratch("archived-file");
    std::fs::write(&archived, &data).unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&archived)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::set_permissions(
        &archived,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let st = stat_of(&archived);
    let import: ImportFn = sym("llapi_hsm_import");
    std::fs::create_dir_all(sim.mount().join("imported")).unwrap();
    let dst = sim.mount().join("imported/file");
    let cdst = std::ffi::CString::new(dst.to_string_lossy().as_bytes()).unwrap();
    let mut newfid = c_fid(LuFid::new(0, 0, 0));
    // SAFETY: a C string, a valid stat and out-FID; no pool.
    let rc = unsafe {
        import(
            cdst.as_ptr(),
            3,
            &st,
            0,
            -1,
            0,
            0,
            ptr::null_mut(),
            &mut newfid,
        )
    };
    assert_eq!(rc, 0);
    let f = from_c_fid(newfid);
    assert_eq!(fid(&dst), f, "newfid is the file's FID");

    // Released, archived in archive 3, with the archived file's size, mtime and mode.
    let hs = api().hsm_state_get(&dst).unwrap();
    assert_eq!(
        hs.states,
        HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED
    );
    assert_eq!(hs.archive_id, 3);
    assert!(
        sim.state(&dst)
            .contains("released exists archived, archive_id:3"),
        "{}",
        sim.state(&dst)
    );
    let md = std::fs::metadata(&dst).unwrap();
    assert_eq!(md.len(), data.len() as u64);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_ne!(std::fs::read(&dst).unwrap(), data, "no data before restore");

    // Errors: the name is taken, a directory's mode, off the mount, NULLs; nothing is left.
    // SAFETY: as above; NULLs are rejected before any access.
    unsafe {
        assert_eq!(
            import(
                cdst.as_ptr(),
                3,
                &st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EEXIST
        );
        let dir_st = stat_of(sim.mount());
        let other =
            std::ffi::CString::new(sim.mount().join("dir").to_string_lossy().as_bytes()).unwrap();
        assert_eq!(
            import(
                other.as_ptr(),
                3,
                &dir_st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EINVAL
        );
        assert_eq!(
            import(
                other.as_ptr(),
                -1,
                &st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EINVAL
        );
        let off = std::ffi::CString::new(sim.scratch("off").to_string_lossy().as_bytes()).unwrap();
        assert_eq!(
            import(
                off.as_ptr(),
                3,
                &st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::ENOTTY
        );
        assert_eq!(
            import(
                ptr::null(),
                3,
                &st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EINVAL
        );
        assert_eq!(
            import(
                other.as_ptr(),
                3,
                ptr::null(),
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::EINVAL
        );
        let missing_dir =
            std::ffi::CString::new(sim.mount().join("no/such").to_string_lossy().as_bytes())
                .unwrap();
        assert_eq!(
            import(
                missing_dir.as_ptr(),
                3,
                &st,
                0,
                -1,
                0,
                0,
                ptr::null_mut(),
                ptr::null_mut()
            ),
            -libc::ENOENT
        );
    }
    assert!(!sim.mount().join("dir").exists() && !sim.scratch("off").exists());

    // A copytool of archive 3 restores it: the item names the imported FID and archive 3.
    let ct = Copytool::register(api(), sim.mount(), &[3], false).expect("register");
    request(&sim, HsmUserAction::Restore, 0, &[f]);
    let (hal, hai) = recv_items(&ct, 1).pop().unwrap();
    assert_eq!(
        (hai.action, hai.fid, hal.archive_id),
        (HsmAction::Restore, f, 3)
    );
    let h = ct.action_begin(&hai, -1, 0, false).expect("begin");
    let mut vol = std::fs::File::from(h.fd().expect("fd"));
    vol.write_all(&data).unwrap();
    h.end(hai.extent, HsmProgressFlags::default(), 0)
        .expect("end");
    drop(vol);
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let hs = api().hsm_state_get(&dst).unwrap();
    assert_eq!(hs.states, HsmStates::EXISTS | HsmStates::ARCHIVED);
    // Still archived and clean: it can be released again without a new archive.
    sim.lfs(&["hsm_release", &dst.to_string_lossy()]);
    assert!(
        api()
            .hsm_state_get(&dst)
            .unwrap()
            .states
            .contains(HsmStates::RELEASED)
    );
}

/// A monitoring set-up as lhsmtool_posix's `-f`: an event FIFO plus `llapi_hsm_log_error` as
/// the error callback. argv[1]: a FIFO nobody reads (events must not block), argv[2]: a FIFO
/// the test reads.
const LOG_EVENTS_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include "lustreapi_subset.h"

int main(int argc, char **argv)
{
	int i;

	if (argc != 3)
		return 2;
	llapi_error_callback_set(llapi_hsm_log_error);
	/* Nobody reads: far more than a pipe holds, and no blocking. */
	if (llapi_hsm_register_event_fifo(argv[1]) != 0)
		return 3;
	for (i = 0; i < 5000; i++)
		llapi_error(LLAPI_MSG_ERROR, EIO, "unread message %d with some padding text", i);
	if (llapi_hsm_unregister_event_fifo(argv[1]) != 0)
		return 4;
	if (llapi_hsm_unregister_event_fifo(argv[1]) != -EINVAL)
		return 5;
	if (llapi_hsm_register_event_fifo(argv[2]) != 0)
		return 6;
	llapi_error(LLAPI_MSG_ERROR, -ENOSPC, "copy of %s failed", "f1");
	llapi_error(LLAPI_MSG_WARN | LLAPI_MSG_NO_ERRNO, 0, "just %d warning", 1);
	llapi_error(LLAPI_MSG_DEBUG, 0, "below the level: not logged");
	if (llapi_hsm_unregister_event_fifo(argv[2]) != 0)
		return 7;
	puts("ok");
	return 0;
}
"#;

#[test]
fn hsm_log_error_turns_messages_into_fifo_events_and_never_blocks() {
    let sim = Sim::start("log-events");
    let src = sim.scratch("log_events.c");
    std::fs::write(&src, LOG_EVENTS_C).unwrap();
    let bin = sim_common::build_c(&src, "log_events", &[]);
    let unread = sim.scratch("unread.fifo");
    let read = sim.scratch("read.fifo");
    let cread = std::ffi::CString::new(read.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a C path.
    assert_eq!(unsafe { libc::mkfifo(cread.as_ptr(), 0o600) }, 0);
    // The open blocks until the program opens its write end; EOF at its unregistration.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::fs::File::open(&read)
            .expect("open fifo")
            .read_to_string(&mut text)
            .expect("read fifo");
        text
    });
    let out = std::process::Command::new(bin)
        .arg(&unread)
        .arg(sim.scratch("read.fifo"))
        .env("LD_LIBRARY_PATH", sim_common::lib_dir())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{:?} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::symlink_metadata(&unread).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&md.file_type()),
        "created as a FIFO"
    );
    let text = reader.join().unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    for e in &events {
        assert_eq!(e["event_type"], "LOGGED_MESSAGE");
        assert!(
            e["event_time"].as_str().is_some_and(|t| t.len() >= 19),
            "{e}"
        );
    }
    assert_eq!(events[0]["message"], "copy of f1 failed");
    assert_eq!(events[0]["errno"], libc::ENOSPC);
    assert_eq!(events[0]["level"], bindings::LLAPI_MSG_ERROR);
    assert_eq!(events[1]["message"], "just 1 warning");
    assert!(events[1].get("errno").is_none(), "{}", events[1]);
}

#[test]
fn import_request_refuses_what_is_not_a_regular_file_of_the_mount() {
    use coordinatool_sim::rpc::{Client, Reply, Request, RpcError};

    let sim = Sim::start("import-rpc");
    std::fs::create_dir_all(sim.mount().join("dir")).unwrap();
    let outside = sim.scratch("outside");
    std::fs::write(&outside, b"o").unwrap();
    let import = |path: &Path| Request::Import {
        path: path.to_owned(),
        archive_id: 1,
        size: 10,
        atime: 1,
        atime_ns: 0,
        mtime: 2,
        mtime_ns: 0,
        uid: 0,
        gid: 0,
        mode: 0o100644,
    };
    let mut c = Client::connect(sim.mount()).unwrap();
    let errno = |r: Result<Reply, RpcError>| match r {
        Err(RpcError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    };
    assert_eq!(
        errno(c.call(&import(&sim.mount().join("dir")))),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.call(&import(sim.mount()))),
        libc::EINVAL,
        "the root"
    );
    assert_eq!(
        errno(c.call(&import(&sim.mount().join("missing")))),
        libc::ENOENT
    );
    assert_eq!(errno(c.call(&import(&outside))), libc::EXDEV);
    // A relative path is taken from the mount root; existing data is dropped (released).
    sim.write("dir/had-data", b"old bytes!");
    let Reply::Fid { fid: f } = c.call(&import(Path::new("dir/had-data"))).unwrap() else {
        panic!("import replies the FID");
    };
    assert_eq!(f.0, fid(&sim.mount().join("dir/had-data")));
    assert_eq!(
        std::fs::read(sim.mount().join("dir/had-data")).unwrap(),
        [0u8; 10]
    );
    assert!(
        sim.state(&sim.mount().join("dir/had-data"))
            .contains("released exists archived, archive_id:1")
    );
}

#[test]
fn hsm_import_on_a_read_only_mount_is_erofs_and_leaves_nothing() {
    let opts = ServeOptions {
        read_only: true,
        ..ServeOptions::default()
    };
    let sim = Sim::start_with("import-ro", &opts);
    let archived = sim.scratch("archived");
    std::fs::write(&archived, b"data").unwrap();
    let st = stat_of(&archived);
    let import: ImportFn = sym("llapi_hsm_import");
    let dst = sim.mount().join("f");
    let cdst = std::ffi::CString::new(dst.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a C string and a valid stat; no pool, no FID wanted.
    let rc = unsafe {
        import(
            cdst.as_ptr(),
            1,
            &st,
            0,
            -1,
            0,
            0,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(rc, -libc::EROFS);
    assert!(!dst.exists(), "the created file is removed again");
}
