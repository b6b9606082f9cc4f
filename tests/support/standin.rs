//! Test support shared by the workspace end-to-end tests (`tests/sim_common`) and the server's
//! (`crates/coordinatool-server/tests/server_common`), included by path in both: the
//! liblustreapi.so.1 stand-in built by cargo, and bounded waits.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coordinatool_lustre::Lustreapi;

/// Upper bound of every wait: only reached when something is broken (no test sleeps for a
/// fixed time).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The directory holding the stand-in (`target/<profile>/deps`, where cargo puts the
/// `liblustreapi.so` of the `coordinatool-sim-lustreapi` dev-dependency), with a
/// `liblustreapi.so.1` symlink created once (atomically: several test binaries may race).
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("deps dir").to_path_buf();
        assert!(
            dir.join("liblustreapi.so").exists(),
            "{}/liblustreapi.so missing: the coordinatool-sim-lustreapi dev-dependency builds it",
            dir.display()
        );
        let so1 = dir.join("liblustreapi.so.1");
        let tmp = dir.join(format!("liblustreapi.so.1.tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink("liblustreapi.so", &tmp).expect("symlink");
        std::fs::rename(&tmp, &so1).expect("rename symlink");
        dir
    })
}

/// The stand-in, loaded once per test binary through the project's loader.
pub fn api() -> &'static Lustreapi {
    static API: OnceLock<Lustreapi> = OnceLock::new();
    API.get_or_init(|| {
        Lustreapi::load_from(lib_dir().join("liblustreapi.so.1")).expect("load the stand-in")
    })
}

/// Polls `cond` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
