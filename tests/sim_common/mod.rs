//! Shared set-up of the `sim_*` tests: a simulated Lustre mount served by an in-process
//! `coordinatool-sim` daemon (the code `coordinatool-sim serve` runs), the `lfs`/`lctl`
//! commands (the code of the `coordinatool-sim` binary, run in-process), the stand-in
//! `liblustreapi.so.1`, C programs built against it, and bounded waits on observable state.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coordinatool_sim::server::{Daemon, ServeOptions};

#[path = "../support/standin.rs"]
mod standin;
// Not every test binary uses every helper (as `dead_code` above).
#[allow(unused_imports)]
pub use standin::{DEADLINE, api, lib_dir, wait_until};

/// The same library for raw symbol look-ups (dlopen returns the same handle).
pub fn raw_lib() -> &'static libloading::Library {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    // SAFETY: the stand-in's initialisers have no preconditions.
    LIB.get_or_init(|| {
        unsafe { libloading::Library::new(lib_dir().join("liblustreapi.so.1")) }
            .expect("dlopen the stand-in")
    })
}

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The project's C header directory.
pub fn include_dir() -> PathBuf {
    workspace_dir().join("crates/coordinatool-lustre/include")
}

/// Builds a C program (or, with `-shared` in `extra`, a library) with
/// `cc -std=c99 -Wall -Wextra -Werror` against the project's header and links it with the
/// stand-in (`-llustreapi`).
///
/// The output is named after a checksum of the source, header and options, so test
/// processes share one build and old builds are simply reused.
pub fn build_c(src: &Path, out_name: &str, extra: &[&str]) -> PathBuf {
    let mut key = std::fs::read(src).expect("read C source");
    key.extend(std::fs::read(include_dir().join("lustreapi_subset.h")).expect("read header"));
    key.extend(extra.join(" ").bytes());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{out_name}-{:016x}", checksum(&key)));
    if out.exists() {
        return out;
    }
    // Built under a private name, then renamed: concurrent builders never see half a file.
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra)
        .arg("-I")
        .arg(include_dir())
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .arg("-L")
        .arg(lib_dir())
        .args(["-llustreapi", "-lpthread", "-ldl"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).expect("rename the build");
    out
}

/// FNV-1a 64 of `bytes` (content checksum).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A simulated filesystem: `<tmp>/fs` served by an in-process daemon, `<tmp>/archive` for
/// copytools. Removed on drop.
pub struct Sim {
    daemon: Option<Daemon>,
    root: PathBuf,
    mount: PathBuf,
}

impl Sim {
    /// Starts a daemon on a fresh mount (fsname `lustre`, 2 MDTs, coordinators enabled).
    pub fn start(name: &str) -> Sim {
        Sim::start_with(name, &ServeOptions::default())
    }

    /// Starts a daemon with `opts` on a fresh mount.
    pub fn start_with(name: &str, opts: &ServeOptions) -> Sim {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "sim-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let mount = root.join("fs");
        std::fs::create_dir_all(&mount).expect("create mount");
        std::fs::create_dir_all(root.join("archive")).expect("create archive dir");
        let daemon = Daemon::start(&mount, opts).expect("start the daemon");
        let mount = daemon.mount().to_path_buf();
        Sim {
            daemon: Some(daemon),
            root,
            mount,
        }
    }

    /// The mount root (canonical).
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The archive directory for copytools.
    pub fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }

    /// A scratch path outside the mount.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates a file of the mount.
    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.mount.join(name);
        std::fs::write(&p, data).expect("write file");
        p
    }

    /// Runs `coordinatool-sim <args>` in-process; returns (status, stdout, stderr).
    pub fn command(&self, args: &[&str]) -> (i32, String, String) {
        coordinatool_sim::cli::run_captured(args)
    }

    /// `lfs <args>`; panics on a non-zero status.
    pub fn lfs(&self, args: &[&str]) -> String {
        let mut a = vec!["lfs"];
        a.extend_from_slice(args);
        let (rc, out, err) = self.command(&a);
        assert_eq!(rc, 0, "lfs {args:?} failed: {err}");
        out
    }

    /// `lctl get_param -n <param>` of this mount.
    pub fn param(&self, param: &str) -> String {
        let m = self.mount.to_string_lossy().into_owned();
        let (rc, out, err) = self.command(&["lctl", "--mount", &m, "get_param", "-n", param]);
        assert_eq!(rc, 0, "lctl get_param {param} failed: {err}");
        out
    }

    /// Lines of `mdt.*.hsm.actions` mentioning `fid`.
    pub fn actions_of(&self, fid: &str) -> Vec<String> {
        self.param("mdt.*.hsm.actions")
            .lines()
            .filter(|l| l.contains(&format!("fid={fid}")))
            .map(str::to_owned)
            .collect()
    }

    /// The `status=` of the record of `action` for `fid` (the last one).
    pub fn status_of(&self, fid: &str, action: &str) -> Option<String> {
        self.actions_of(fid)
            .iter()
            .rev()
            .find(|l| l.contains(&format!("action={action} ")))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("status=")))
            .map(|w| w["status=".len()..].to_owned())
    }

    /// `lfs hsm_state` line of a file.
    pub fn state(&self, path: &Path) -> String {
        self.lfs(&["hsm_state", &path.to_string_lossy()])
    }

    /// Stops the daemon (copytools get `-ESHUTDOWN`).
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A child process whose stdout lines are collected (event lines of the copytools).
pub struct Proc {
    pub child: Child,
    lines: Arc<(Mutex<Output>, Condvar)>,
    name: String,
}

/// What the reader thread has collected from a child's stdout.
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    /// The reader saw the end of the output.
    eof: bool,
}

impl Proc {
    /// Spawns `cmd` with stdout captured line by line (stderr inherited).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let lines = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            let (m, c) = &*l2;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                m.lock().unwrap().lines.push(line);
                c.notify_all();
            }
            m.lock().unwrap().eof = true;
            c.notify_all();
        });
        Proc {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().lines.clone()
    }

    /// After the child's exit, waits (bounded) until its last output lines are read: the
    /// exit can be seen before the reader thread has taken what the child wrote last. A
    /// grandchild keeping stdout open only delays this by the bound.
    fn drain_output(&self) {
        let (m, c) = &*self.lines;
        let start = Instant::now();
        let mut g = m.lock().unwrap();
        while !g.eof {
            let Some(left) = Duration::from_secs(5).checked_sub(start.elapsed()) else {
                return;
            };
            g = c.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits for a line containing every one of `parts`; returns it.
    pub fn wait_line(&self, parts: &[&str]) -> String {
        let (m, c) = &*self.lines;
        let start = Instant::now();
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "{}: no line with {parts:?} within {DEADLINE:?}; got:\n{}",
                    self.name,
                    g.lines.join("\n")
                )
            });
            g = c.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Sends `sig` (again every 500 ms, in case it landed just before a blocking read) and
    /// waits for the exit status (bounded).
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let start = Instant::now();
        let mut last: Option<Instant> = None;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.drain_output();
                return st;
            }
            if last.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(self.child.id() as i32, sig) };
                last = Some(Instant::now());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} did not exit on signal {sig}; output:\n{}",
                self.name,
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the exit status (bounded).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.drain_output();
                return st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} did not exit; output:\n{}",
                self.name,
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
