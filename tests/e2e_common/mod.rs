//! Shared set-up of the `e2e_*` tests: the real `coordinatool-server` binary registered on a
//! simulated Lustre (from `sim_common`), movers running the reference C copytool `ctposix`
//! unmodified under the preload, and the real `coordinatool-client` CLI.
//!
//! The server and CLI binaries belong to other packages, so `CARGO_BIN_EXE_*` cannot name
//! them: they are looked up in `target/<profile>/` (the parent of this test's `deps` dir) and
//! built there with `cargo build` once per test process (cargo's own lock serialises the
//! parallel processes of nextest, and an up-to-date build is a no-op, so a stale binary is
//! never used).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use coordinatool_lustre::LuFid;
use coordinatool_proto::StatusReply;

use crate::sim_common::{DEADLINE, Proc, Sim, api, build_c, lib_dir, wait_until};

/// `target/<profile>` of this test executable, with the server and CLI binaries built.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile dir name")
            .to_owned();
        let target = profile_dir.parent().expect("target dir");
        // Under cargo, CARGO names the toolchain's cargo and RUSTUP_TOOLCHAIN is set. Run
        // directly (a bench binary started by hand), the compile-time path would bypass
        // rustup, and a dependency's own rust-toolchain file would then pick its rustc:
        // the rustup proxy on PATH resolves the toolchain as cargo itself would.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "-q",
                "-p",
                "coordinatool-server",
                "-p",
                "coordinatool-client",
            ])
            .env("CARGO_TARGET_DIR", target)
            .stdout(Stdio::null());
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of the server and CLI failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for bin in ["coordinatool-server", "coordinatool-client"] {
            assert!(
                profile_dir.join(bin).exists(),
                "{bin} missing in {}",
                profile_dir.display()
            );
        }
        profile_dir
    })
}

/// The reference C copytool, built once against the stand-in.
pub fn ctposix() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/coordinatool-sim/copytool/ctposix.c");
        build_c(&src, "ctposix-e2e", &[])
    })
}

/// The preload, built next to the stand-in by the `coordinatool-preload` dev-dependency.
pub fn preload() -> PathBuf {
    let p = lib_dir().join("libcoordinatool_client.so");
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// A free loopback port (kept across server restarts so that movers reconnect to it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Lossy path to string.
pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The FID of a file of the simulated mount.
pub fn fid_of(path: &Path) -> LuFid {
    api().path2fid(path).expect("path2fid")
}

/// Removes every `COORDINATOOL_*` variable of the test environment from `cmd`.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("COORDINATOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("NOTIFY_SOCKET");
}

/// The real server on a simulated mount, on a fixed loopback port, with its embedded store
/// in `<sim>/state`. Restartable; killed on drop.
pub struct Server {
    proc: Option<Child>,
    /// Port the server listens on (the same across restarts).
    pub port: u16,
    state: PathBuf,
    mount: PathBuf,
    log: PathBuf,
    starts: usize,
}

impl Server {
    /// Starts the server for `sim` and waits until the CLI gets a status from it.
    pub fn start(sim: &Sim) -> Server {
        let state = sim.scratch("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let mut s = Server {
            proc: None,
            port: free_port(),
            state,
            mount: sim.mount().to_path_buf(),
            log: sim.scratch("server"),
            starts: 0,
        };
        s.restart();
        s
    }

    /// Starts the (stopped) server again on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "server already running");
        self.starts += 1;
        let log = PathBuf::from(format!("{}-{}.log", self.log.display(), self.starts));
        let mut cmd = Command::new(bin_dir().join("coordinatool-server"));
        clean_env(&mut cmd);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .arg(&self.mount)
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("COORDINATOOL_STATE_DIR", &self.state)
            .env_remove("COORDINATOOL_LIBLUSTREAPI")
            .stderr(std::fs::File::create(&log).expect("server log"));
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        self.proc = Some(cmd.spawn().expect("spawn coordinatool-server"));
        let port = self.port;
        wait_until("the server to answer status", || {
            if let Some(st) = self.proc.as_mut().and_then(|p| p.try_wait().ok().flatten()) {
                panic!(
                    "server exited ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            cli_at(port, &["--timeout", "1", "status", "--json"])
                .status
                .success()
        });
    }

    /// The server log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}-{}.log", self.log.display(), self.starts))
            .unwrap_or_default()
    }

    /// Sends `sig` to the server and waits for it to exit.
    pub fn stop(&mut self, sig: i32) -> std::process::ExitStatus {
        let p = self.proc.as_ref().expect("server running");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(p.id() as i32, sig) };
        self.wait_exit()
    }

    /// Waits (bounded) for the server to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut p = self.proc.take().expect("server running");
        let start = Instant::now();
        loop {
            if let Some(st) = p.try_wait().expect("try_wait") {
                return st;
            }
            if start.elapsed() > DEADLINE {
                let _ = p.kill();
                let _ = p.wait();
                panic!("server did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Deletes the embedded store (the server must be stopped).
    pub fn wipe_store(&self) {
        assert!(self.proc.is_none(), "stop the server first");
        std::fs::remove_dir_all(&self.state).expect("remove the state dir");
        std::fs::create_dir_all(&self.state).expect("state dir");
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(self.port, args)
    }

    /// Runs the CLI with `stdin` as its standard input.
    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_bounded(cli_command(self.port, args), Some(stdin))
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> StatusReply {
        let out = self.cli(&["--timeout", "5", "status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("status JSON {text:?}: {e}"))
    }

    /// Waits until the server counts nothing running nor pending.
    pub fn wait_idle(&self) {
        let mut last = StatusReply::default();
        wait_until("the server's counters back to zero", || {
            last = self.status();
            [
                last.running_archive,
                last.running_restore,
                last.running_remove,
                last.pending_archive,
                last.pending_restore,
                last.pending_remove,
                last.pending_cancel,
            ]
            .iter()
            .all(|n| *n == 0)
        });
    }

    /// Starts a mover: ctposix under the preload, `--hsm-root <archive>` plus `args`.
    pub fn mover(&self, sim: &Sim, id: &str, args: &[&str]) -> Proc {
        self.mover_with(sim, id, args, &[])
    }

    /// [`Server::mover`] with extra environment variables (e.g. `COORDINATOOL_MAX_ARCHIVE`).
    pub fn mover_with(&self, sim: &Sim, id: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(ctposix());
        clean_env(&mut cmd);
        cmd.env("LD_LIBRARY_PATH", lib_dir())
            .env("LD_PRELOAD", preload())
            .env("COORDINATOOL_HOST", "127.0.0.1")
            .env("COORDINATOOL_PORT", self.port.to_string())
            .env("COORDINATOOL_CLIENT_ID", id)
            .env("COORDINATOOL_RECONNECT_MIN_MS", "20")
            .env("COORDINATOOL_RECONNECT_MAX_MS", "300")
            .envs(env.iter().copied())
            .arg("--hsm-root")
            .arg(sim.archive())
            .args(args)
            .arg(sim.mount());
        let p = Proc::spawn(id, cmd);
        p.wait_line(&["REGISTER"]);
        p
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

fn cli_command(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join("coordinatool-client"));
    clean_env(&mut cmd);
    // `cancel` goes through liblustreapi: the simulator's stand-in.
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .env_remove("COORDINATOOL_LIBLUSTREAPI");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        // No config file of the machine is read.
        .env("COORDINATOOL_CONF", "/dev/null");
    cmd
}

/// Runs the CLI against `127.0.0.1:port`.
pub fn cli_at(port: u16, args: &[&str]) -> Output {
    run_bounded(cli_command(port, args), None)
}

/// Runs `cmd` with `stdin`, collecting its output; kills it after [`DEADLINE`] (a hung CLI
/// fails the test instead of hanging it).
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    use std::io::{Read, Write};
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the command");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {DEADLINE:?}; stderr:\n{}",
                String::from_utf8_lossy(&t_err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs `lfs <cmd> <paths>` in chunks of 40 paths (a Lustre user request is bounded).
pub fn lfs_chunks(sim: &Sim, cmd: &str, paths: &[String]) {
    for chunk in paths.chunks(40) {
        let mut a = vec![cmd];
        a.extend(chunk.iter().map(String::as_str));
        sim.lfs(&a);
    }
}

/// Sets the MDT's limit of active requests and their timeout high, as the upstream README
/// recommends for a coordinatool set-up.
pub fn raise_max_requests(sim: &Sim) {
    let m = s(sim.mount());
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &m,
        "set_param",
        "mdt.*.hsm.max_requests=1000",
        "mdt.*.hsm.active_request_timeout=2678400",
    ]);
    assert_eq!(rc, 0, "set_param: {err}");
}
