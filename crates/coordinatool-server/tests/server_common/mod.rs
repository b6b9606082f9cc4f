//! Shared set-up of the server end-to-end tests: a simulated Lustre mount (the code of
//! `coordinatool-sim serve`, run in-process), the real `coordinatool-server` binary started
//! against it through the `liblustreapi.so.1` stand-in, and protocol clients. Every wait is
//! bounded by [`DEADLINE`]; no test sleeps for a fixed time.
#![allow(dead_code)]

use coordinatool_lustre::LuFid;
use coordinatool_proto::{Decoder, Reply, Request};
use coordinatool_sim::server::{Daemon, ServeOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[path = "../../../../tests/support/standin.rs"]
mod standin;
// Not every test binary uses every helper (as `dead_code` above).
#[allow(unused_imports)]
pub use standin::{DEADLINE, api, lib_dir, wait_until};

/// A simulated filesystem (fsname `lustre`, 2 MDTs) with a scratch directory for the server's
/// state. Removed on drop.
pub struct Sim {
    daemon: Option<Daemon>,
    pub root: PathBuf,
    pub mount: PathBuf,
}

impl Sim {
    /// Starts a simulator daemon on a fresh mount.
    pub fn start(name: &str) -> Sim {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "srv-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let mount = root.join("fs");
        std::fs::create_dir_all(&mount).expect("create mount");
        let daemon = Daemon::start(&mount, &ServeOptions::default()).expect("start the simulator");
        let mount = daemon.mount().to_path_buf();
        Sim {
            daemon: Some(daemon),
            root,
            mount,
        }
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

    /// Creates a file on the mount and returns its path and fid.
    pub fn file(&self, name: &str) -> (PathBuf, LuFid) {
        let p = self.mount.join(name);
        std::fs::write(&p, name.as_bytes()).expect("write file");
        let fid = api().path2fid(&p).expect("path2fid");
        (p, fid)
    }

    /// `lfs hsm_archive -a 1 <file>`.
    pub fn archive(&self, path: &Path) {
        self.lfs(&["hsm_archive", "-a", "1", &path.to_string_lossy()]);
    }

    /// Archives `fid` with hsm data `data` through the simulator's RPC (its `lfs --data`
    /// takes UTF-8 only; Lustre takes any bytes).
    #[allow(dead_code)]
    pub fn archive_with_data(&self, fid: LuFid, data: &[u8]) {
        let mut rpc = coordinatool_sim::rpc::Client::connect(&self.mount).expect("sim rpc");
        rpc.call(&coordinatool_sim::rpc::Request::HsmRequest {
            action: coordinatool_lustre::HsmUserAction::Archive.code(),
            archive_id: 1,
            flags: 0,
            items: vec![(coordinatool_sim::rpc::Fid(fid), 0, u64::MAX)],
            data: data.to_vec(),
            uid: 0,
            gid: 0,
        })
        .expect("hsm_archive with data");
    }

    /// `lctl get_param -n <param>` of this mount.
    pub fn param(&self, param: &str) -> String {
        let m = self.mount.to_string_lossy().into_owned();
        let (rc, out, err) = self.command(&["lctl", "--mount", &m, "get_param", "-n", param]);
        assert_eq!(rc, 0, "lctl get_param {param} failed: {err}");
        out
    }

    /// The `status=` of the last record of `action` for `fid` in `mdt.*.hsm.actions`.
    pub fn status_of(&self, fid: &LuFid, action: &str) -> Option<String> {
        let fid = format!("fid={fid}");
        self.param("mdt.*.hsm.actions")
            .lines()
            .rev()
            .find(|l| l.contains(&fid) && l.contains(&format!("action={action} ")))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("status=")))
            .map(|w| w["status=".len()..].to_owned())
    }

    /// The state directory of the server's embedded store.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Stops the simulator, as an unmount would: registered copytools get `ESHUTDOWN`.
    #[allow(dead_code)]
    pub fn unmount(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Serves the same mount again (files and FIDs kept), as a remount would.
    #[allow(dead_code)]
    pub fn remount(&mut self) {
        assert!(self.daemon.is_none(), "mounted already");
        self.daemon = Some(
            Daemon::start(&self.mount, &ServeOptions::default()).expect("restart the simulator"),
        );
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

/// A running `coordinatool-server`, its stderr collected line by line.
pub struct Server {
    pub child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// `127.0.0.1:<port>` it listens on.
    pub addr: String,
}

/// Writes the server's config file for `sim` (embedded store in `sim.state_dir()`, an
/// ephemeral port) plus `extra` lines, and returns its path.
pub fn config(sim: &Sim, extra: &str) -> PathBuf {
    let path = sim.root.join("coordinatool.conf");
    let text = format!(
        "host 127.0.0.1\nport 0\nverbose info\nstore embedded\nstate_dir {}\n{extra}",
        sim.state_dir().display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The server command for `sim` with config `conf`, with the stand-in on `LD_LIBRARY_PATH`.
pub fn server_command(sim: &Sim, conf: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinatool-server"));
    cmd.arg("-c")
        .arg(conf)
        .arg(&sim.mount)
        .env("LD_LIBRARY_PATH", lib_dir())
        .env_remove("COORDINATOOL_LIBLUSTREAPI")
        .env_remove("NOTIFY_SOCKET");
    for (k, _) in std::env::vars() {
        if k.starts_with("COORDINATOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Server {
    /// Starts the server and waits until it listens.
    pub fn start(sim: &Sim, conf: &Path) -> Server {
        Self::spawn(server_command(sim, conf))
    }

    /// Spawns `cmd` (a server command) and waits until it listens.
    pub fn spawn(mut cmd: Command) -> Server {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn coordinatool-server");
        let err = child.stderr.take().expect("piped stderr");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SERVER_TEST_LOG").is_some() {
                    eprintln!("server: {line}");
                }
                let (m, c) = &*l2;
                m.lock().unwrap().push(line);
                c.notify_all();
            }
        });
        let mut s = Server {
            child,
            lines,
            addr: String::new(),
        };
        let line = s.wait_line(&["listening on "]);
        s.addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after \"listening on\"")
            .to_owned();
        s
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing every one of `parts`.
    pub fn wait_line(&mut self, parts: &[&str]) -> String {
        let start = Instant::now();
        let lines = self.lines.clone();
        let (m, c) = &*lines;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "server exited ({st}) before printing {parts:?}:\n{}",
                    g.join("\n")
                );
            }
            let left = DEADLINE
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no server line with {parts:?}; got:\n{}", g.join("\n")));
            g = c
                .wait_timeout(g, left.min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }

    /// A new protocol connection.
    pub fn connect(&self) -> Client {
        Client::connect(&self.addr)
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.wait()
    }

    /// Waits (bounded) for the exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "server did not exit; stderr:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A protocol client (what the preload library or the CLI would be).
pub struct Client {
    pub stream: TcpStream,
    dec: Decoder,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Client {
            stream,
            dec: Decoder::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a request.
    pub fn send(&mut self, req: &Request) {
        let mut out = Vec::new();
        req.encode(&mut out);
        self.send_raw(&out);
    }

    /// The next reply as raw bytes, or `None` once the connection is closed; panics after
    /// `limit`.
    pub fn next_raw_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let start = Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                return Some(f.to_vec());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(start.elapsed() < limit, "no reply within {limit:?}");
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next reply as raw bytes (panics after [`DEADLINE`] or on EOF).
    pub fn next_raw(&mut self) -> Vec<u8> {
        self.next_raw_within(DEADLINE)
            .expect("connection closed while waiting for a reply")
    }

    /// The next reply, as text.
    pub fn next_text(&mut self) -> String {
        String::from_utf8(self.next_raw()).expect("utf-8 reply")
    }

    /// The next reply, decoded.
    pub fn next(&mut self) -> Reply {
        Reply::decode(&self.next_raw()).expect("decode reply")
    }

    /// Sends `req` and returns the next reply.
    pub fn call(&mut self, req: &Request) -> Reply {
        self.send(req);
        self.next()
    }

    /// Sends `req` and returns the next reply as text.
    pub fn call_text(&mut self, req: &Request) -> String {
        self.send(req);
        self.next_text()
    }

    /// Waits (bounded) for the server to close the connection; returns the bytes received
    /// before the close.
    pub fn wait_closed(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(r) = self.next_raw_within(DEADLINE) {
            got.push(r);
        }
        got
    }
}
