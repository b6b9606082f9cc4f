//! End to end: the Rust example copytool (crates/coordinatool-lustre/examples/rust_copytool.rs,
//! compiled into this test) on the safe API, against the liblustreapi stand-in and the
//! simulated Lustre: archive, release, restore (content checksum), remove, cancel of a held
//! transfer, and the exit at unmount.

mod sim_common;

#[allow(dead_code)]
#[path = "../crates/coordinatool-lustre/examples/rust_copytool.rs"]
mod rust_copytool;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use coordinatool_lustre::LuFid;
use sim_common::{DEADLINE, Sim, api, checksum, pattern, wait_until};

/// Event lines emitted by the copytool.
#[derive(Default)]
struct Events {
    lines: Mutex<Vec<String>>,
    cond: Condvar,
}

impl Events {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.cond.notify_all();
    }

    fn wait_line(&self, parts: &[&str]) -> String {
        let start = Instant::now();
        let mut g = self.lines.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            let Some(left) = DEADLINE.checked_sub(start.elapsed()) else {
                panic!("no line with {parts:?}; got:\n{}", g.join("\n"));
            };
            g = self.cond.wait_timeout(g, left).unwrap().0;
        }
    }
}

fn fid_of(path: &Path) -> LuFid {
    api().path2fid(path).expect("path2fid")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn rust_copytool_archive_release_restore_remove_cancel() {
    let mut sim = Sim::start("rust-ct");
    let big = pattern(1_500_000, 21);
    let f1 = sim.write("big", &big);
    let f2 = sim.write("small", b"tiny\n");
    let hold = sim.scratch("hold");
    let args: Vec<String> = [
        "--archive",
        "1",
        "--chunk-size",
        "500000",
        "--wait-file",
        &s(&hold),
        "--hsm-root",
        &s(&sim.archive()),
        &s(sim.mount()),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let opts = rust_copytool::parse_args(&args).expect("options");
    assert_eq!(opts.archives, [1]);
    assert!(rust_copytool::parse_args(&["--archive".to_owned(), "x".to_owned()]).is_err());

    let events = Events::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let copytool = scope.spawn(|| rust_copytool::run(api(), &opts, &stop, &|l| events.push(l)));
        events.wait_line(&["REGISTER", "archives=1"]);
        let (fid1, fid2) = (fid_of(&f1), fid_of(&f2));

        sim.lfs(&["hsm_archive", &s(&f1), &s(&f2)]);
        events.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
        events.wait_line(&["ARCHIVE end", &fid2.to_string(), "rc=0 errval=0 end_rc=0"]);
        let copy1 = sim.archive().join("1").join(format!("{fid1:#}"));
        assert_eq!(std::fs::read(&copy1).unwrap(), big);
        let progress = events
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("ARCHIVE progress") && l.contains(&fid1.to_string()))
            .count();
        assert_eq!(progress, 3, "three 500 kB chunks");
        assert!(
            sim.state(&f1).contains("exists archived"),
            "{}",
            sim.state(&f1)
        );

        sim.lfs(&["hsm_release", &s(&f1)]);
        assert!(sim.state(&f1).contains("released"));
        sim.lfs(&["hsm_restore", &s(&f1)]);
        events.wait_line(&["RESTORE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
        assert_eq!(checksum(&std::fs::read(&f1).unwrap()), checksum(&big));
        assert!(!sim.state(&f1).contains("released"), "{}", sim.state(&f1));

        sim.lfs(&["hsm_remove", &s(&f2)]);
        events.wait_line(&["REMOVE end", &fid2.to_string(), "rc=0 errval=0 end_rc=0"]);
        assert!(!sim.archive().join("1").join(format!("{fid2:#}")).exists());

        std::fs::write(&hold, b"").unwrap();
        let f3 = sim.write("held", &pattern(1000, 22));
        let fid3 = fid_of(&f3);
        sim.lfs(&["hsm_archive", &s(&f3)]);
        events.wait_line(&["ARCHIVE wait", &fid3.to_string()]);
        sim.lfs(&["hsm_cancel", &s(&f3)]);
        events.wait_line(&["CANCEL", &fid3.to_string(), "running=1"]);
        events.wait_line(&["ARCHIVE end", &fid3.to_string(), "errval=125"]);
        wait_until("the cancel to be recorded", || {
            sim.status_of(&fid3.to_string(), "CANCEL").as_deref() == Some("SUCCEED")
        });
        assert_eq!(
            sim.status_of(&fid3.to_string(), "ARCHIVE").as_deref(),
            Some("CANCELED")
        );

        // Unmount: the copytool sees the shutdown and returns.
        sim.stop();
        events.wait_line(&["SHUTDOWN"]);
        copytool.join().unwrap().expect("copytool result");
    });
}
