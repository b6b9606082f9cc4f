//! The end-to-end harness shared by the `e2e` bench and the `e2e_harness` test: a simulated
//! Lustre (the in-process daemon of `coordinatool-sim serve`) with `files` files, the real
//! `coordinatool-server` binary registered on it as the copytool through the liblustreapi
//! stand-in, and `movers` processes of `coordinatool-e2e-mover` (no data copy) under
//! `LD_PRELOAD=libcoordinatool_client.so`. Archive requests enter through the simulator's
//! socket (what `lfs hsm_archive f1 f2 ...` sends, `per_call` files per call) and the clock
//! stops when the MDT model has seen the last completion.
//!
//! What is measured, over one window from the first submission to the last completion:
//! a timeline sampled every 10 ms (MDT waiting/active/done, server received/done), the
//! admission calls, the movers' `action_begin`/`action_end` latencies (their own clocks), and
//! the CPU time of every process and thread from `/proc/<pid>/task/*/stat`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinatool_lustre::{AgentReqStatus, HsmStates, HsmUserAction, LuFid};
use coordinatool_proto::{Decoder, Reply, Request, StatusReply, StatusRequest};
use coordinatool_sim::rpc::{self, Fid};
use coordinatool_sim::server::{Daemon, ServeOptions, now_secs};

use crate::e2e_common::{bin_dir, free_port};
use crate::sim_common::{DEADLINE, Proc, lib_dir};

/// The server's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The embedded database (fsync per group commit), the default of a site.
    Embedded,
    /// No durable store (`store none`).
    None,
}

impl Store {
    /// The config file value.
    pub fn name(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::None => "none",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files, each archived once.
    pub files: usize,
    /// Mover processes.
    pub movers: usize,
    /// Worker threads per mover.
    pub threads: usize,
    /// The server's store.
    pub store: Store,
    /// Files per `hsm_archive` call (the simulated llite refuses more than 52).
    pub per_call: usize,
    /// `mdt.*.hsm.max_requests` (per MDT; the simulator has 2 MDTs).
    pub max_requests: u32,
    /// The server's `verbose` (a site's default is `normal`; `info` logs every request).
    pub verbose: String,
    /// Run the simulator in pipelined mode (`coordinatool-sim serve --pipelined`: copy
    /// starts sent one way by the stand-in, see `coordinatool_sim::rpc`).
    pub pipelined: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            files: 20_000,
            movers: 2,
            threads: 4,
            store: Store::Embedded,
            per_call: 50,
            max_requests: 1000,
            verbose: "normal".to_owned(),
            pipelined: false,
        }
    }
}

/// CPU time (ms) of one process over the window, with its live threads grouped by name.
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    /// Whole process (exited threads included), or the threads reported.
    pub total_ms: f64,
    /// The part of `total_ms` spent in the kernel (system calls, wake-ups).
    pub sys_ms: f64,
    /// Live threads by name (numbers stripped: `mover-w3` counts as `mover-w`).
    pub threads_ms: BTreeMap<String, f64>,
}

/// One mover's own figures (from its `STATS` line).
#[derive(Clone, Debug, Default)]
pub struct MoverStats {
    /// Items begun and ended.
    pub items: u64,
    /// Sum of `action_begin` times (ns).
    pub begin_ns: u64,
    /// Sum of `action_end` times (ns).
    pub end_ns: u64,
    /// Longest `action_begin` (ns).
    pub begin_max_ns: u64,
    /// Longest `action_end` (ns).
    pub end_max_ns: u64,
    /// `recv` calls that returned a list.
    pub recvs: u64,
    /// Failed begins or ends.
    pub errors: u64,
}

/// What one run measured and verified.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The options run.
    pub opts_line: String,
    /// Requests submitted.
    pub requests: usize,
    /// Seconds from the first submission to the last completion seen by the MDT.
    pub secs: f64,
    /// Milestones (ms from the first submission): all admitted, all received by the server,
    /// all dispatched by the MDT, all done at the server, all done at the MDT.
    pub admitted_ms: f64,
    /// See `admitted_ms`.
    pub server_received_ms: Option<f64>,
    /// See `admitted_ms`.
    pub dispatched_ms: Option<f64>,
    /// See `admitted_ms`.
    pub server_done_ms: Option<f64>,
    /// Admission calls (`hsm_archive` with `per_call` files).
    pub admission_calls: usize,
    /// Mean time of one admission call (µs), as the submitting thread saw it.
    pub admission_call_us: f64,
    /// Largest number of requests active on the MDTs at once (sampled).
    pub max_active: u64,
    /// Per mover.
    pub movers: Vec<MoverStats>,
    /// CPU over the window: the simulator (threads `sim-*` of this process), the submitting
    /// thread, the server, each mover.
    pub cpu_sim: Cpu,
    /// See `cpu_sim`.
    pub cpu_submit_ms: f64,
    /// See `cpu_sim`.
    pub cpu_server: Cpu,
    /// See `cpu_sim`.
    pub cpu_movers: Vec<Cpu>,
    /// Load average when the run started.
    pub loadavg: String,
    /// Files without `archived` at the end.
    pub not_archived: usize,
    /// MDT records by status at the end (`SUCCEED`, `FAILED`, ...).
    pub records: BTreeMap<String, usize>,
    /// Files with a number of records other than one.
    pub files_not_once: usize,
    /// The server's `done_archive` at the end.
    pub server_done: u64,
}

impl Report {
    /// Requests per second from intake to the last completion.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    /// True when every request finished exactly once, successfully, everywhere.
    pub fn all_done_once(&self) -> bool {
        let n = self.requests;
        self.not_archived == 0
            && self.files_not_once == 0
            && self.records.get("SUCCEED") == Some(&n)
            && self.records.values().sum::<usize>() == n
            && self.movers.iter().map(|m| m.items).sum::<u64>() == n as u64
            && self.movers.iter().all(|m| m.errors == 0)
            && self.server_done == n as u64
    }

    /// Human-readable report.
    pub fn print(&self) {
        let n = self.requests as f64;
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        println!("== {}", self.opts_line);
        println!("   load average at start: {}", self.loadavg.trim());
        println!(
            "   THROUGHPUT: {} requests in {:.3} s = {:.0} requests/s (first submission to last completion seen by the MDT)",
            self.requests,
            self.secs,
            self.rate()
        );
        println!(
            "   timeline (ms): all admitted {:.0}, server received all {}, MDT dispatched all {}, server done all {}, MDT done all {:.0}; max active on the MDTs {}",
            self.admitted_ms,
            ms(self.server_received_ms),
            ms(self.dispatched_ms),
            ms(self.server_done_ms),
            self.secs * 1000.0,
            self.max_active
        );
        println!(
            "   admission: {} calls, {:.0} µs per call, {:.1} µs per request (submitting thread)",
            self.admission_calls,
            self.admission_call_us,
            self.admission_call_us * self.admission_calls as f64 / n
        );
        for (i, m) in self.movers.iter().enumerate() {
            let per = |ns: u64| ns as f64 / 1000.0 / m.items.max(1) as f64;
            println!(
                "   mover {i}: {} items in {} lists; action_begin {:.1} µs avg ({:.0} max), action_end {:.1} µs avg ({:.0} max); {} errors",
                m.items,
                m.recvs,
                per(m.begin_ns),
                m.begin_max_ns as f64 / 1000.0,
                per(m.end_ns),
                m.end_max_ns as f64 / 1000.0,
                m.errors
            );
        }
        let line = |name: &str, c: &Cpu| {
            let threads: Vec<String> = c
                .threads_ms
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            println!(
                "   CPU {name}: {:.0} ms = {:.1} µs/request ({:.0}% in the kernel) [{}]",
                c.total_ms,
                c.total_ms * 1000.0 / n,
                100.0 * c.sys_ms / c.total_ms.max(1e-9),
                threads.join(", ")
            );
        };
        line("simulator (sim-* threads)", &self.cpu_sim);
        println!(
            "   CPU submitter thread: {:.0} ms = {:.1} µs/request",
            self.cpu_submit_ms,
            self.cpu_submit_ms * 1000.0 / n
        );
        line("server", &self.cpu_server);
        for (i, c) in self.cpu_movers.iter().enumerate() {
            line(&format!("mover {i}"), c);
        }
        let total = self.cpu_sim.total_ms
            + self.cpu_submit_ms
            + self.cpu_server.total_ms
            + self.cpu_movers.iter().map(|c| c.total_ms).sum::<f64>();
        // What 2 otherwise idle cores could do at this CPU cost per request: the figure that
        // the machine's load (other work on the shared VM) moves least.
        println!(
            "   CPU all: {:.0} ms = {:.1} µs/request; {:.2} cores busy on average; ceiling on 2 free cores {:.0} requests/s",
            total,
            total * 1000.0 / n,
            total / 1000.0 / self.secs,
            2.0e6 / (total * 1000.0 / n).max(1e-9)
        );
        println!(
            "   verified: records {:?}, files not archived {}, files without exactly one record {}, server done_archive {} -> {}",
            self.records,
            self.not_archived,
            self.files_not_once,
            self.server_done,
            if self.all_done_once() {
                "every request finished exactly once"
            } else {
                "FAILED"
            }
        );
    }
}

/// The simulated mount with its files (FIDs known), served by an in-process daemon.
struct BenchSim {
    daemon: Option<Daemon>,
    root: PathBuf,
    mount: PathBuf,
    fids: Vec<LuFid>,
}

impl BenchSim {
    /// Creates `files` empty files, then starts the daemon (its start-up scan gives them
    /// their FIDs, so no call per file is needed) and sets the coordinator's tunables.
    fn start(name: &str, files: usize, max_requests: u32, pipelined: bool) -> BenchSim {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "e2e-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let mount = root.join("fs");
        let mut paths = Vec::with_capacity(files);
        for i in 0..files {
            let dir = mount.join(format!("d{}", i / 10_000));
            if i % 10_000 == 0 {
                std::fs::create_dir_all(&dir).expect("create a directory of the mount");
            }
            let p = dir.join(format!("f{i}"));
            std::fs::File::create(&p).expect("create a file of the mount");
            paths.push(p);
        }
        std::fs::create_dir_all(&mount).expect("create mount");
        let opts = ServeOptions {
            pipelined,
            ..ServeOptions::default()
        };
        let daemon = Daemon::start(&mount, &opts).expect("start the simulator");
        let mount = daemon.mount().to_path_buf();
        let fids = daemon.with_state(|cluster, fs| {
            let now = now_secs();
            for (param, value) in [
                ("mdt.*.hsm.max_requests", max_requests.to_string()),
                // Finished records stay listed until the end of the run (verification).
                ("mdt.*.hsm.grace_delay", "86400".to_owned()),
                ("mdt.*.hsm.active_request_timeout", "2678400".to_owned()),
            ] {
                for (name, r) in cluster.set_param(now, param, &value) {
                    assert!(r.is_ok(), "set_param {name}={value}: {r:?}");
                }
            }
            paths
                .iter()
                .map(|p| fs.path2fid(p, cluster).expect("path2fid"))
                .collect()
        });
        BenchSim {
            daemon: Some(daemon),
            root,
            mount,
            fids,
        }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// (waiting, active) summed over the MDTs.
    fn counts(&self) -> (u64, u64) {
        self.daemon().with_state(|cluster, _| {
            cluster.mdts().iter().fold((0, 0), |(w, a), m| {
                (w + m.waiting_count() as u64, a + m.active_count())
            })
        })
    }
}

impl Drop for BenchSim {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The server binary with a config file, its stderr kept (last lines) for errors.
struct ServerProc {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProc {
    /// Starts the server on a free loopback port (at `verbose normal` it does not log its
    /// address) and waits until it accepts connections.
    fn start(sim: &BenchSim, store: Store, verbose: &str) -> ServerProc {
        let port = free_port();
        let conf = sim.root.join("coordinatool.conf");
        std::fs::write(
            &conf,
            format!(
                "host 127.0.0.1\nport {port}\nverbose {verbose}\nstore {}\nstate_dir {}\n",
                store.name(),
                sim.root.join("state").display()
            ),
        )
        .expect("write the server config");
        let mut cmd = Command::new(bin_dir().join("coordinatool-server"));
        clean_env(&mut cmd);
        cmd.arg("-c")
            .arg(&conf)
            .arg(&sim.mount)
            .env("LD_LIBRARY_PATH", lib_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn coordinatool-server");
        let err = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut g = l2.lock().unwrap();
                if g.len() > 200 {
                    g.remove(0);
                }
                g.push(line);
            }
        });
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "the server exited ({st}):\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the server did not listen on {addr}:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ServerProc { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log (last lines) ---\n{}", self.log());
        }
    }
}

/// Removes every `COORDINATOOL_*` variable of our environment from `cmd`.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("COORDINATOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("NOTIFY_SOCKET").env_remove("LD_PRELOAD");
}

/// A protocol connection to the server for `status`.
struct StatusClient {
    stream: TcpStream,
    dec: Decoder,
}

impl StatusClient {
    fn connect(addr: &str) -> StatusClient {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        StatusClient {
            stream,
            dec: Decoder::new(),
        }
    }

    fn status(&mut self) -> StatusReply {
        let mut out = Vec::new();
        Request::Status(StatusRequest { verbose: 0 }).encode(&mut out);
        self.stream.write_all(&out).expect("send status");
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame().expect("framing") {
                match Reply::decode(f) {
                    Ok(Reply::Status(s)) => return *s,
                    other => panic!("status reply: {other:?}"),
                }
            }
            let n = self.stream.read(&mut buf).expect("read the status reply");
            assert!(n > 0, "the server closed the status connection");
            self.dec.feed(&buf[..n]);
        }
    }
}

fn spawn_mover(sim: &BenchSim, server: &ServerProc, i: usize, threads: usize) -> Proc {
    let port = server.addr.rsplit(':').next().expect("port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinatool-e2e-mover"));
    clean_env(&mut cmd);
    cmd.arg(&sim.mount)
        .arg(threads.to_string())
        .arg(lib_dir().join("liblustreapi.so.1"))
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("LD_PRELOAD", lib_dir().join("libcoordinatool_client.so"))
        .env("COORDINATOOL_CONF", "/dev/null")
        .env("COORDINATOOL_HOST", "127.0.0.1")
        .env("COORDINATOOL_PORT", port)
        .env("COORDINATOOL_CLIENT_ID", format!("e2e-mover{i}"));
    let p = Proc::spawn(&format!("mover{i}"), cmd);
    p.wait_line(&["REGISTER"]);
    p
}

fn parse_stats(line: &str) -> MoverStats {
    let kv: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| {
            (
                k,
                v.parse().unwrap_or_else(|_| panic!("bad {k} in {line:?}")),
            )
        })
        .collect();
    let get = |k: &str| *kv.get(k).unwrap_or_else(|| panic!("no {k} in {line:?}"));
    MoverStats {
        items: get("items"),
        begin_ns: get("begin_ns"),
        end_ns: get("end_ns"),
        begin_max_ns: get("begin_max_ns"),
        end_max_ns: get("end_max_ns"),
        recvs: get("recvs"),
        errors: get("errors"),
    }
}

/// CPU ticks (user, system) of a process, and of each of its live threads: (tid, name,
/// user, system).
struct Snap {
    process: (u64, u64),
    threads: Vec<(u32, String, u64, u64)>,
}

/// CPU ticks of process `pid` and of each of its live threads.
fn cpu_ticks(pid: u32) -> Snap {
    fn parse(stat: &str) -> Option<(String, u64, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields 14 (utime) and 15 (stime) of proc_pid_stat(5); `f[0]` is field 3.
        Some((comm, f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
    }
    let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse(&s))
        .map_or((0, 0), |(_, u, s)| (u, s));
    let mut threads = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in rd.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((comm, u, s)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parse(&s))
            {
                threads.push((tid, comm, u, s));
            }
        }
    }
    Snap { process, threads }
}

/// The CPU used between two snapshots; threads keep their tid, so a thread that started in
/// between counts from zero. `group` names the group of a thread (`None`: not reported); with
/// `whole`, the total is the process's (exited threads included), else the sum of the
/// reported threads.
fn cpu_between(
    a: &Snap,
    b: &Snap,
    whole: bool,
    group: impl Fn(u32, &str) -> Option<String>,
) -> Cpu {
    let ms = |ticks: u64| ticks as f64 * 1000.0 / clock_ticks_per_sec();
    let before: HashMap<u32, (u64, u64)> = a
        .threads
        .iter()
        .map(|(tid, _, u, s)| (*tid, (*u, *s)))
        .collect();
    let mut threads_ms = BTreeMap::new();
    let (mut user, mut sys) = (0.0, 0.0);
    for (tid, comm, u, s) in &b.threads {
        let Some(name) = group(*tid, comm) else {
            continue;
        };
        let (u0, s0) = before.get(tid).copied().unwrap_or((0, 0));
        let (du, ds) = (ms(u.saturating_sub(u0)), ms(s.saturating_sub(s0)));
        user += du;
        sys += ds;
        *threads_ms.entry(name).or_insert(0.0) += du + ds;
    }
    if whole {
        user = ms(b.process.0.saturating_sub(a.process.0));
        sys = ms(b.process.1.saturating_sub(a.process.1));
    }
    Cpu {
        total_ms: user + sys,
        sys_ms: sys,
        threads_ms,
    }
}

/// Thread names without their number (`mover-w3` counts as `mover-w`).
fn by_name(_: u32, comm: &str) -> Option<String> {
    Some(
        comm.trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned(),
    )
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Tids of this process's threads named `name`.
fn tids_named(name: &str) -> Vec<u32> {
    cpu_ticks(std::process::id())
        .threads
        .into_iter()
        .filter(|(_, c, _, _)| c == name)
        .map(|(t, _, _, _)| t)
        .collect()
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One run: sets everything up, submits `opts.files` archives, waits for the last
/// completion, stops the movers and the server, and verifies that every request finished
/// exactly once.
pub fn run(opts: &Options) -> Report {
    assert!(
        (1..=52).contains(&opts.per_call),
        "per_call: 1 to 52 files (llite's request size limit)"
    );
    let k = opts.files;
    let sim = BenchSim::start(opts.store.name(), k, opts.max_requests, opts.pipelined);
    let server = ServerProc::start(&sim, opts.store, &opts.verbose);
    let mut movers: Vec<Proc> = (0..opts.movers)
        .map(|i| spawn_mover(&sim, &server, i, opts.threads))
        .collect();
    let mut status = StatusClient::connect(&server.addr);
    // The movers are known to the server before anything is submitted.
    let start_wait = Instant::now();
    while status.status().clients_connected < opts.movers as u32 + 1 {
        assert!(start_wait.elapsed() < DEADLINE, "movers did not connect");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut report = Report {
        opts_line: format!(
            "e2e store={} files={} movers={} threads={} per_call={} max_requests={} verbose={}{}",
            opts.store.name(),
            k,
            opts.movers,
            opts.threads,
            opts.per_call,
            opts.max_requests,
            opts.verbose,
            if opts.pipelined { " sim=pipelined" } else { "" }
        ),
        requests: k,
        loadavg: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        ..Report::default()
    };
    let me = std::process::id();
    let server_pid = server.child.id();
    let mover_pids: Vec<u32> = movers.iter().map(|m| m.child.id()).collect();
    let snap = || {
        (
            cpu_ticks(me),
            cpu_ticks(server_pid),
            mover_pids.iter().map(|p| cpu_ticks(*p)).collect::<Vec<_>>(),
        )
    };

    // Older simulators served each connection on its own `sim-conn` thread: the one that
    // appears now would serve the admission calls, and its CPU is shown apart as the intake's.
    // The event loop (`sim-loop`) serves them with every other call: then none appears, and
    // the intake's cost is inside `sim-loop`'s.
    let conns_before = tids_named("sim-conn");
    let mut client = rpc::Client::connect(&sim.mount).expect("connect to the sim");
    client
        .call(&rpc::Request::Hello)
        .expect("hello to the simulator");
    let intake_tid = tids_named("sim-conn")
        .into_iter()
        .find(|t| !conns_before.contains(t));
    let admitted = Arc::new(AtomicU64::new(0));
    let admitted_all = Arc::new(AtomicBool::new(false));
    let cpu0 = snap();
    let t0 = Instant::now();
    let (calls, call_ns) = std::thread::scope(|s| {
        let submitter = std::thread::Builder::new()
            .name("bench-submit".into())
            .spawn_scoped(s, || {
                let c0 = thread_cpu();
                let mut calls = 0usize;
                for chunk in sim.fids.chunks(opts.per_call) {
                    let req = rpc::Request::HsmRequest {
                        action: HsmUserAction::Archive.code(),
                        archive_id: 1,
                        flags: 0,
                        items: chunk.iter().map(|f| (Fid(*f), 0, u64::MAX)).collect(),
                        data: Vec::new(),
                        uid: 0,
                        gid: 0,
                    };
                    client
                        .call(&req)
                        .expect("hsm_archive through the simulator");
                    calls += 1;
                    admitted.fetch_add(chunk.len() as u64, Ordering::Release);
                }
                let ns = t0.elapsed().as_nanos() as u64;
                admitted_all.store(true, Ordering::Release);
                (calls, ns, thread_cpu() - c0)
            })
            .expect("spawn the submitter");
        // The sampler: this thread.
        let mut status_every = 0u32;
        let cpu1 = loop {
            let adm = admitted.load(Ordering::Acquire);
            let (waiting, active) = sim.counts();
            let now_ms = t0.elapsed().as_secs_f64() * 1000.0;
            report.max_active = report.max_active.max(active);
            let all_in = admitted_all.load(Ordering::Acquire);
            if all_in && report.admitted_ms == 0.0 {
                report.admitted_ms = now_ms;
            }
            if all_in && waiting == 0 && report.dispatched_ms.is_none() {
                report.dispatched_ms = Some(now_ms);
            }
            if all_in && waiting == 0 && active == 0 && adm == k as u64 {
                let cpu = snap();
                report.secs = t0.elapsed().as_secs_f64();
                break cpu;
            }
            // The status costs the server a reply: every 5th sample (50 ms).
            if status_every.is_multiple_of(5)
                && (report.server_received_ms.is_none() || report.server_done_ms.is_none())
            {
                let st = status.status();
                let received =
                    u64::from(st.pending_archive) + u64::from(st.running_archive) + st.done_archive;
                if received >= k as u64 && report.server_received_ms.is_none() {
                    report.server_received_ms = Some(now_ms);
                }
                if st.done_archive >= k as u64 && report.server_done_ms.is_none() {
                    report.server_done_ms = Some(now_ms);
                }
            }
            status_every += 1;
            assert!(
                t0.elapsed() < DEADLINE * 20,
                "benchmark stuck: admitted {adm}, waiting {waiting}, active {active}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let (calls, ns, submit_cpu) = submitter.join().expect("submitter");
        report.cpu_submit_ms = submit_cpu.as_secs_f64() * 1000.0;
        report.cpu_sim = cpu_between(&cpu0.0, &cpu1.0, false, |tid, c| {
            if Some(tid) == intake_tid {
                Some("sim-conn(intake)".to_owned())
            } else if c.starts_with("sim-") {
                Some(c.to_owned())
            } else {
                None
            }
        });
        report.cpu_server = cpu_between(&cpu0.1, &cpu1.1, true, by_name);
        report.cpu_movers = cpu0
            .2
            .iter()
            .zip(&cpu1.2)
            .map(|(a, b)| cpu_between(a, b, true, by_name))
            .collect();
        (calls, ns)
    });
    report.admission_calls = calls;
    report.admission_call_us = call_ns as f64 / 1000.0 / calls.max(1) as f64;

    // The server learns of the last completions from the movers' preloads, just after the
    // MDT: wait for its count (bounded) before asking the movers to stop.
    let wait = Instant::now();
    loop {
        let st = status.status();
        report.server_done = st.done_archive;
        if st.done_archive >= k as u64 {
            if report.server_done_ms.is_none() {
                report.server_done_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
            }
            if report.server_received_ms.is_none() {
                report.server_received_ms = report.server_done_ms;
            }
            break;
        }
        if wait.elapsed() > DEADLINE {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for m in &mut movers {
        let st = m.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "mover exit status {st}: {:?}", m.lines());
        let line = m
            .lines()
            .into_iter()
            .find(|l| l.starts_with("STATS "))
            .expect("the mover's STATS line");
        report.movers.push(parse_stats(&line));
    }

    // Exactly once, from the MDT's side: one record per file, its status, the file's flags.
    let (records, files_not_once, not_archived) = sim.daemon().with_state(|cluster, _| {
        let mut by_status = BTreeMap::new();
        let mut per_fid: HashMap<LuFid, usize> = HashMap::new();
        for m in cluster.mdts() {
            for r in m.records() {
                let name = match r.status {
                    AgentReqStatus::Waiting => "WAITING",
                    AgentReqStatus::Started => "STARTED",
                    AgentReqStatus::Failed => "FAILED",
                    AgentReqStatus::Canceled => "CANCELED",
                    AgentReqStatus::Succeed => "SUCCEED",
                };
                *by_status.entry(name.to_owned()).or_insert(0) += 1;
                *per_fid.entry(r.item.fid).or_insert(0) += 1;
            }
        }
        let not_once = sim
            .fids
            .iter()
            .filter(|f| per_fid.get(f).copied() != Some(1))
            .count();
        let not_archived = sim
            .fids
            .iter()
            .filter(|f| {
                !cluster
                    .file(**f)
                    .is_some_and(|a| a.states.contains(HsmStates::ARCHIVED))
            })
            .count();
        (by_status, not_once, not_archived)
    });
    report.records = records;
    report.files_not_once = files_not_once;
    report.not_archived = not_archived;
    drop((status, client));
    drop(server);
    report
}

/// Parses `[FILES [MOVERS [THREADS]]]` and `--store embedded|none|both`, `--per-call N`,
/// `--max-requests N`, `--pipelined`; returns the runs to do.
pub fn parse_args(args: &[String]) -> Result<Vec<Options>, String> {
    let mut base = Options::default();
    let mut stores = vec![Store::Embedded, Store::None];
    let mut positional = Vec::new();
    let mut it = args.iter();
    let num = |flag: &str, v: Option<&String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag}: missing value"))?;
        v.parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} {v:?}: expected a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => {
                stores = match it.next().map(String::as_str) {
                    Some("embedded") => vec![Store::Embedded],
                    Some("none") => vec![Store::None],
                    Some("both") => vec![Store::Embedded, Store::None],
                    other => return Err(format!("--store {other:?}: embedded, none or both")),
                }
            }
            "--per-call" => base.per_call = num(a, it.next())?,
            "--verbose" => {
                base.verbose = it
                    .next()
                    .ok_or_else(|| "--verbose: missing value".to_owned())?
                    .clone();
            }
            "--max-requests" => {
                base.max_requests = u32::try_from(num(a, it.next())?)
                    .map_err(|_| "--max-requests: too large".to_owned())?;
            }
            "--pipelined" => base.pipelined = true,
            // What cargo bench passes to every bench binary.
            "--bench" => {}
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s => positional.push(s.to_owned()),
        }
    }
    let names = ["FILES", "MOVERS", "THREADS"];
    if positional.len() > names.len() {
        return Err(format!("too many arguments: {positional:?}"));
    }
    for (i, v) in positional.iter().enumerate() {
        let n = num(names[i], Some(v))?;
        match i {
            0 => base.files = n,
            1 => base.movers = n,
            _ => base.threads = n,
        }
    }
    if base.per_call > 52 {
        return Err("--per-call: at most 52 files per call (llite's request size limit)".into());
    }
    Ok(stores
        .into_iter()
        .map(|store| Options {
            store,
            ..base.clone()
        })
        .collect())
}
