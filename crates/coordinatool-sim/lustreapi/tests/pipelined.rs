//! The stand-in against a daemon in pipelined mode (`serve --pipelined`): one-way copy
//! starts, failures of a start reported by the next progress or end, and the ARCHIVE data
//! version check through the data stamp; compared with the default (exact) mode.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::hal::{HsmActionItem, HsmExtent};
use coordinatool_lustre::{
    Copytool, HsmAction, HsmProgressFlags, HsmStates, HsmUserAction, LuFid, Lustreapi,
};
use coordinatool_sim::server::{Daemon, ServeOptions};

fn api() -> &'static Lustreapi {
    static API: OnceLock<Lustreapi> = OnceLock::new();
    API.get_or_init(|| {
        // Integration tests run from target/<profile>/deps, next to this package's cdylib.
        let exe = std::env::current_exe().expect("current_exe");
        let so = exe.parent().expect("deps dir").join("liblustreapi.so");
        Lustreapi::load_from(&so).expect("load the stand-in")
    })
}

struct Sim {
    root: PathBuf,
    mount: PathBuf,
    daemon: Option<Daemon>,
}

impl Sim {
    fn start(pipelined: bool, files: &[&str]) -> Sim {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "lsa-pipe-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mount = root.join("fs");
        std::fs::create_dir_all(&mount).unwrap();
        for f in files {
            std::fs::write(mount.join(f), f.as_bytes()).unwrap();
        }
        let opts = ServeOptions {
            pipelined,
            ..ServeOptions::default()
        };
        let daemon = Daemon::start(&mount, &opts).unwrap();
        let mount = daemon.mount().to_path_buf();
        Sim {
            root,
            mount,
            daemon: Some(daemon),
        }
    }

    fn request(&self, action: HsmUserAction, file: &Path) {
        let fid = api().path2fid(file).unwrap();
        api()
            .hsm_request(
                &self.mount,
                action,
                1,
                HsmRequestFlags::default(),
                &[(fid, HsmExtent::WHOLE_FILE)],
                b"",
            )
            .unwrap();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn recv_one(ct: &Copytool<'_>, fid: LuFid, action: HsmAction) -> HsmActionItem {
    let hal = ct.recv().unwrap();
    let hai = hal.items[0].clone();
    assert_eq!((hai.fid, hai.action), (fid, action));
    hai
}

fn archived(file: &Path) -> bool {
    api()
        .hsm_state_get(file)
        .unwrap()
        .states
        .contains(HsmStates::ARCHIVED)
}

/// Archives `file`, cancels it before the copy starts, then begins, progresses and ends it.
/// Returns the errnos of begin, progress and end (0 = success; no progress/end after a
/// failed begin).
fn cancel_before_start(pipelined: bool) -> (i32, i32, i32) {
    let sim = Sim::start(pipelined, &["a"]);
    let file = sim.mount.join("a");
    let fid = api().path2fid(&file).unwrap();
    let ct = Copytool::register(api(), &sim.mount, &[], false).unwrap();
    sim.request(HsmUserAction::Archive, &file);
    let hai = recv_one(&ct, fid, HsmAction::Archive);
    sim.request(HsmUserAction::Cancel, &file);
    recv_one(&ct, fid, HsmAction::Cancel);
    let h = match ct.action_begin(&hai, -1, 0, false) {
        Ok(h) => h,
        Err(e) => return (e.errno(), 0, 0),
    };
    let p = h
        .progress(HsmExtent::new(0, 1), 1, HsmProgressFlags::default())
        .err()
        .map_or(0, |e| e.errno());
    let e = h
        .end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .err()
        .map_or(0, |e| e.errno());
    assert!(!archived(&file), "a canceled archive archived the file");
    (0, p, e)
}

#[test]
fn cancel_before_start_is_reported_by_begin_or_in_pipelined_mode_by_progress_and_end() {
    assert_eq!(cancel_before_start(false), (libc::ECANCELED, 0, 0));
    assert_eq!(
        cancel_before_start(true),
        (0, libc::ECANCELED, libc::ECANCELED)
    );
}

#[test]
fn pipelined_archive_detects_a_file_modified_during_the_copy() {
    let sim = Sim::start(true, &["b", "c"]);
    let ct = Copytool::register(api(), &sim.mount, &[], false).unwrap();
    let b = sim.mount.join("b");
    let fid = api().path2fid(&b).unwrap();
    sim.request(HsmUserAction::Archive, &b);
    let hai = recv_one(&ct, fid, HsmAction::Archive);
    let h = ct.action_begin(&hai, -1, 0, false).unwrap();
    std::fs::write(&b, "b, written during the archive").unwrap();
    let e = h
        .end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    assert!(!archived(&b));
    // Again without a write: archived, the data read through the action's fd.
    sim.request(HsmUserAction::Archive, &b);
    let hai = recv_one(&ct, fid, HsmAction::Archive);
    let h = ct.action_begin(&hai, -1, 0, false).unwrap();
    let mut data = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(h.fd().unwrap()), &mut data).unwrap();
    assert_eq!(data, "b, written during the archive");
    h.end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .unwrap();
    assert!(archived(&b));
    // An unknown cookie: begin succeeds (one way), the end says ENOENT.
    let c = sim.mount.join("c");
    let cfid = api().path2fid(&c).unwrap();
    sim.request(HsmUserAction::Archive, &c);
    let mut hai = recv_one(&ct, cfid, HsmAction::Archive);
    let real = hai.cookie;
    hai.cookie = real + 1_000_000;
    let h = ct.action_begin(&hai, -1, 0, false).unwrap();
    let e = h
        .end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    // The real one still completes.
    hai.cookie = real;
    ct.action_begin(&hai, -1, 0, false)
        .unwrap()
        .end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .unwrap();
    assert!(archived(&c));
}

#[test]
fn pipelined_action_ended_on_another_thread_after_a_write_before_its_start() {
    let sim = Sim::start(true, &["d"]);
    let ct = Copytool::register(api(), &sim.mount, &[], false).unwrap();
    let d = sim.mount.join("d");
    let fid = api().path2fid(&d).unwrap();
    sim.request(HsmUserAction::Archive, &d);
    let hai = recv_one(&ct, fid, HsmAction::Archive);
    // Written after the request, before the copy starts: the copy reads the new data, so the
    // archive succeeds (the daemon learns the new stamp from the end).
    std::fs::write(&d, "d, rewritten before the start").unwrap();
    let h = ct.action_begin(&hai, -1, 0, false).unwrap();
    // The queued start travels with the end, whichever thread calls it.
    std::thread::scope(|s| {
        s.spawn(move || {
            h.end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
                .unwrap()
        })
        .join()
        .unwrap();
    });
    let st = api().hsm_state_get(&d).unwrap().states;
    assert!(st.contains(HsmStates::ARCHIVED), "{st:?}");
    assert!(!st.contains(HsmStates::DIRTY), "{st:?}");
}
