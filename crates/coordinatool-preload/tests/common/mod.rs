//! Test harness: a fake coordinatool server (std sockets + coordinatool-proto) and a small C
//! copytool run under the preload with a stub liblustreapi.so.1.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    AckReply, Decoder, DoneRequest, EhloRequest, RecvReply, RecvRequest, Reply, Request, WireHai,
    WireHal,
};

/// Upper bound of every wait: a failure guard, never a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What the fake server saw.
#[derive(Debug, Clone)]
pub enum Ev {
    /// A connection's ehlo.
    Ehlo(usize, EhloRequest),
    /// A recv request.
    Recv(usize, RecvRequest),
    /// A done request.
    Done(usize, DoneRequest),
    /// A connection ended.
    Closed(usize),
}

#[derive(Default)]
pub struct St {
    pub events: Vec<Ev>,
    conns: Vec<(usize, TcpStream)>,
    waiting: Option<usize>,
    hals: VecDeque<WireHal>,
    /// Answer dones (else they stay unanswered).
    pub ack_dones: bool,
    /// Close the connection abruptly on the next N dones, without answering.
    pub kill_on_done: usize,
    /// Replies given to the next ehlos instead of a success.
    pub ehlo_refusals: VecDeque<Reply>,
}

impl St {
    pub fn dones(&self) -> Vec<DoneRequest> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Done(_, d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    pub fn ehlos(&self) -> Vec<EhloRequest> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Ehlo(_, h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn recvs(&self) -> Vec<RecvRequest> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Ev::Recv(_, r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    fn reply(&mut self, conn: usize, reply: &Reply) {
        let mut out = Vec::new();
        reply.encode(&mut out);
        if let Some((_, s)) = self.conns.iter_mut().find(|(c, _)| *c == conn) {
            let _ = s.write_all(&out);
        }
    }

    fn kill(&mut self, conn: usize) {
        if let Some(pos) = self.conns.iter().position(|(c, _)| *c == conn) {
            let (_, s) = self.conns.remove(pos);
            let _ = s.shutdown(Shutdown::Both);
        }
        if self.waiting == Some(conn) {
            self.waiting = None;
        }
    }
}

struct Inner {
    st: Mutex<St>,
    cv: Condvar,
    next_conn: AtomicUsize,
    generation: AtomicUsize,
}

/// The fake server.
pub struct Fake {
    pub port: u16,
    inner: Arc<Inner>,
}

impl Fake {
    pub fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            st: Mutex::new(St {
                ack_dones: true,
                ..St::default()
            }),
            cv: Condvar::new(),
            next_conn: AtomicUsize::new(1),
            generation: AtomicUsize::new(0),
        });
        let f = Fake { port, inner };
        f.spawn_acceptor(listener);
        f
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let inner = Arc::clone(&self.inner);
        let generation = inner.generation.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if inner.generation.load(Ordering::SeqCst) != generation {
                    return; // this listener was "stopped"
                }
                let Ok(stream) = stream else { continue };
                let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
                inner
                    .st
                    .lock()
                    .unwrap()
                    .conns
                    .push((id, stream.try_clone().unwrap()));
                let inner = Arc::clone(&inner);
                std::thread::spawn(move || serve(inner, id, stream));
            }
        });
    }

    /// Stops listening and drops every connection (the server "dies").
    pub fn stop(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        // Unblock the acceptor so it drops its listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let mut st = self.lock();
        let ids: Vec<usize> = st.conns.iter().map(|(c, _)| *c).collect();
        for c in ids {
            st.kill(c);
        }
    }

    /// Listens again on the same port (the server "restarts").
    pub fn restart(&self) {
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot listen again on {}: {e}", self.port),
            }
        };
        self.spawn_acceptor(listener);
    }

    /// Drops every current connection (the listener stays).
    pub fn kill_connections(&self) {
        let mut st = self.lock();
        let ids: Vec<usize> = st.conns.iter().map(|(c, _)| *c).collect();
        for c in ids {
            st.kill(c);
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, St> {
        self.inner.st.lock().unwrap()
    }

    /// Hands a list to the pending recv, or keeps it for the next one.
    pub fn push_hal(&self, hal: WireHal) {
        let mut st = self.lock();
        st.hals.push_back(hal);
        dispatch(&mut st);
        self.inner.cv.notify_all();
    }

    /// Waits until `pred` holds (panics with the event log after [`PATIENCE`]).
    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&St) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut st = self.lock();
        while !pred(&st) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for {what}; events: {:#?}", st.events);
            }
            st = self
                .inner
                .cv
                .wait_timeout(st, left.min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dispatch(st: &mut St) {
    if let Some(conn) = st.waiting
        && let Some(hal) = st.hals.pop_front()
    {
        st.waiting = None;
        st.reply(
            conn,
            &Reply::Recv(RecvReply {
                hal: Some(hal),
                ..RecvReply::default()
            }),
        );
    }
}

fn serve(inner: Arc<Inner>, id: usize, mut stream: TcpStream) {
    let mut dec = Decoder::new();
    let mut buf = [0u8; 65536];
    'outer: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        loop {
            let req = match dec.next_message::<Request>() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => panic!("preload sent a bad message: {e}"),
            };
            let mut st = inner.st.lock().unwrap();
            if !st.conns.iter().any(|(c, _)| *c == id) {
                break 'outer; // killed meanwhile: ignore what follows
            }
            match req {
                Request::Ehlo(h) => {
                    st.events.push(Ev::Ehlo(id, h));
                    match st.ehlo_refusals.pop_front() {
                        Some(refusal) => {
                            st.reply(id, &refusal);
                            st.kill(id);
                            inner.cv.notify_all();
                            break 'outer;
                        }
                        None => st.reply(id, &Reply::Ehlo(AckReply::default())),
                    }
                }
                Request::Recv(r) => {
                    st.events.push(Ev::Recv(id, r));
                    assert!(
                        st.waiting.is_none() || st.waiting == Some(id),
                        "two recv pending"
                    );
                    st.waiting = Some(id);
                    dispatch(&mut st);
                }
                Request::Done(d) => {
                    st.events.push(Ev::Done(id, d));
                    if st.kill_on_done > 0 {
                        st.kill_on_done -= 1;
                        st.kill(id);
                        inner.cv.notify_all();
                        break 'outer;
                    }
                    if st.ack_dones {
                        st.reply(id, &Reply::Done(AckReply::default()));
                    }
                }
                other => panic!("unexpected request {other:?}"),
            }
            inner.cv.notify_all();
        }
    }
    let mut st = inner.st.lock().unwrap();
    st.kill(id);
    st.events.push(Ev::Closed(id));
    inner.cv.notify_all();
}

/// An item with the given cookie (fid derived from it), optional data.
pub fn hai(action: HsmAction, cookie: u64, data: &str) -> WireHai {
    let mut h = WireHai::new(
        action,
        LuFid::new(
            0x2_0000_0400 + (cookie & 0xffff),
            (cookie & 0xffff_ffff) as u32,
            0,
        ),
        cookie,
    );
    h.data = data.as_bytes().to_vec();
    h.archive_id = 1;
    h.timestamp = 1_765_010_112_108_091_220 + cookie as i64;
    h
}

pub fn hal(items: Vec<WireHai>) -> WireHal {
    WireHal {
        archive_id: 1,
        flags: 0,
        fsname: "srvfs".into(),
        list: items,
    }
}

/// Built artefacts: the stub library, the C copytool and the preload.
pub struct Bins {
    pub dir: PathBuf,
    pub ct: PathBuf,
    pub preload: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let include = manifest.join("../coordinatool-lustre/include");
        let src = manifest.join("tests/c");
        // nextest runs every test in its own process, so several processes build at once:
        // each builds in a private staging directory, then publishes it atomically under a
        // name derived from the sources; a loser of the race uses the winner's copy.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preload-tests");
        std::fs::create_dir_all(&root).unwrap();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for f in [
            src.join("stub_lustreapi.c"),
            src.join("ct_test.c"),
            include.join("lustreapi_subset.h"),
        ] {
            for b in std::fs::read(&f).unwrap() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        let final_dir = root.join(format!("{hash:016x}"));
        let staging = root.join(format!("staging-{}", std::process::id()));
        let dir = if final_dir.exists() {
            final_dir.clone()
        } else {
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).unwrap();
            staging.clone()
        };
        let cc = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("cc").args(args).output().expect("cc");
            assert!(
                out.status.success(),
                "cc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let so = dir.join("liblustreapi.so.1");
        let built = dir != final_dir;
        if built {
            cc(&[
                "-std=gnu99".as_ref(),
                "-Wall".as_ref(),
                "-Wextra".as_ref(),
                "-Werror".as_ref(),
                "-shared".as_ref(),
                "-fPIC".as_ref(),
                "-I".as_ref(),
                include.as_os_str(),
                "-Wl,-soname,liblustreapi.so.1".as_ref(),
                "-o".as_ref(),
                so.as_os_str(),
                src.join("stub_lustreapi.c").as_os_str(),
            ]);
            let link = dir.join("liblustreapi.so");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("liblustreapi.so.1", &link).unwrap();
            let ct = dir.join("ct_test");
            cc(&[
                "-std=gnu99".as_ref(),
                "-Wall".as_ref(),
                "-Wextra".as_ref(),
                "-Werror".as_ref(),
                "-I".as_ref(),
                include.as_os_str(),
                "-o".as_ref(),
                ct.as_os_str(),
                src.join("ct_test.c").as_os_str(),
                "-L".as_ref(),
                dir.as_os_str(),
                "-llustreapi".as_ref(),
                "-lpthread".as_ref(),
            ]);
        }
        let dir = if built {
            match std::fs::rename(&staging, &final_dir) {
                Ok(()) => final_dir,
                Err(_) if final_dir.exists() => {
                    let _ = std::fs::remove_dir_all(&staging);
                    final_dir
                }
                Err(e) => panic!("publishing {}: {e}", staging.display()),
            }
        } else {
            final_dir
        };
        let ct = dir.join("ct_test");
        // The cdylib sits next to the test executable (target/<profile>/deps).
        let deps = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let preload = deps.join("libcoordinatool_client.so");
        assert!(preload.exists(), "{} not built", preload.display());
        Bins { dir, ct, preload }
    })
}

/// A scratch directory standing for a Lustre mount (with `.lustre/fid`).
pub fn mount(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("preload-mnt")
        .join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join(".lustre/fid")).unwrap();
    d
}

/// The C copytool running under the preload.
pub struct Ct {
    child: Child,
    readers: Vec<std::thread::JoinHandle<()>>,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    pub mnt: PathBuf,
}

/// Starts `ct_test MODE MNT COUNT ARCHIVES...` against `port` with extra environment.
pub fn run_ct(port: u16, mode: &str, count: usize, archives: &[u32], env: &[(&str, String)]) -> Ct {
    run_ct_at(mount(mode), port, mode, count, archives, env)
}

/// [`run_ct`] on a given mount directory.
pub fn run_ct_at(
    mnt: PathBuf,
    port: u16,
    mode: &str,
    count: usize,
    archives: &[u32],
    env: &[(&str, String)],
) -> Ct {
    let b = bins();
    let conf = mnt.with_extension("conf");
    std::fs::write(&conf, "# empty\n").unwrap();
    let mut cmd = Command::new(&b.ct);
    cmd.arg(mode)
        .arg(&mnt)
        .arg(count.to_string())
        .args(archives.iter().map(|a| a.to_string()))
        .env("LD_LIBRARY_PATH", &b.dir)
        .env("LD_PRELOAD", &b.preload)
        .env("COORDINATOOL_CONF", &conf)
        .env("COORDINATOOL_HOST", "127.0.0.1")
        .env("COORDINATOOL_PORT", port.to_string())
        .env("COORDINATOOL_CLIENT_ID", "test-mover")
        .env("COORDINATOOL_RECONNECT_MIN_MS", "20")
        .env("COORDINATOOL_RECONNECT_MAX_MS", "200")
        .env_remove("COORDINATOOL_VERBOSE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let mut out = child.stdout.take().unwrap();
    let l2 = Arc::clone(&lines);
    let r1 = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
                buf.drain(..=pos);
                l2.0.lock().unwrap().push(line);
                l2.1.notify_all();
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let e2 = Arc::clone(&stderr);
    let r2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        e2.lock().unwrap().push_str(&s);
    });
    Ct {
        child,
        readers: vec![r1, r2],
        lines,
        stderr,
        mnt,
    }
}

impl Ct {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits until a stdout line satisfies `pred`.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut l = self.lines.0.lock().unwrap();
        while !l.iter().any(|s| pred(s)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what}; stdout: {l:#?}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            l = self
                .lines
                .1
                .wait_timeout(l, left.min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }

    /// Waits for the exit (kills and panics after [`PATIENCE`]).
    pub fn wait(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The pipes close with the process (and its children): drain them fully.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let err = self.stderr.lock().unwrap().clone();
                return (st, self.lines(), err);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "copytool did not exit; stdout: {:#?}; stderr: {}",
                    self.lines(),
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Ct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
