//! End to end: the reference C copytool (`ctposix`, unmodified) runs under the preload
//! (`LD_PRELOAD=libcoordinatool_client.so`) on the simulated Lustre. Its work comes over TCP
//! from a minimal coordinator written here (the server crate is not ready): it registers on
//! the simulated mount as the only copytool, forwards every `hsm_action_list` it receives to
//! the mover's pending `recv`, and records the `done`s. The mover's progress and completion go
//! straight to the simulated Lustre through the stand-in's real action functions, so the
//! file states and contents prove that the work was done.

mod sim_common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use coordinatool_lustre::{Copytool, LuFid, LustreError};
use coordinatool_proto::{
    AckReply, Decoder, DoneRequest, EhloRequest, RecvReply, Reply, Request, WireHai, WireHal,
};
use sim_common::{Proc, Sim, api, build_c, checksum, lib_dir, pattern, wait_until};

fn ctposix() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/coordinatool-sim/copytool/ctposix.c");
        build_c(&src, "ctposix-preload", &[])
    })
}

/// The preload, built next to the stand-in by the `coordinatool-preload` dev-dependency.
fn preload() -> PathBuf {
    let p = lib_dir().join("libcoordinatool_client.so");
    assert!(p.exists(), "{} missing", p.display());
    p
}

#[derive(Default)]
struct Coord {
    ehlos: Vec<EhloRequest>,
    dones: Vec<DoneRequest>,
    hals: VecDeque<WireHal>,
    /// Connection with a pending recv, and every live connection.
    waiting: Option<usize>,
    conns: Vec<(usize, TcpStream)>,
    next: usize,
}

impl Coord {
    fn send(&mut self, conn: usize, reply: &Reply) {
        let mut out = Vec::new();
        reply.encode(&mut out);
        if let Some((_, s)) = self.conns.iter_mut().find(|(c, _)| *c == conn) {
            let _ = s.write_all(&out);
        }
    }

    fn dispatch(&mut self) {
        if let Some(conn) = self.waiting
            && let Some(hal) = self.hals.pop_front()
        {
            self.waiting = None;
            let reply = Reply::Recv(RecvReply {
                hal: Some(hal),
                ..RecvReply::default()
            });
            self.send(conn, &reply);
        }
    }
}

/// The minimal coordinator: Lustre intake thread + TCP server.
struct Coordinator {
    port: u16,
    state: Arc<Mutex<Coord>>,
    stop: Arc<AtomicBool>,
}

impl Coordinator {
    fn start(mount: &Path) -> Coordinator {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Coord::default()));
        let stop = Arc::new(AtomicBool::new(false));

        // Intake: the coordinator is the simulated MDT's only registered copytool.
        let (st, stp, mnt) = (state.clone(), stop.clone(), mount.to_path_buf());
        let registered = Arc::new(AtomicBool::new(false));
        let reg = registered.clone();
        std::thread::spawn(move || {
            let ct = Copytool::register(api(), &mnt, &[], true).expect("coordinator registers");
            reg.store(true, Ordering::SeqCst);
            while !stp.load(Ordering::SeqCst) {
                let mut p = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&ct),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 50) };
                match ct.recv() {
                    Ok(hal) => {
                        let list = hal
                            .items
                            .iter()
                            .map(|i| WireHai {
                                action: i.action,
                                fid: i.fid,
                                dfid: i.dfid,
                                extent_offset: i.extent.offset,
                                extent_length: i.extent.length,
                                cookie: i.cookie,
                                gid: i.gid,
                                archive_id: hal.archive_id,
                                flags: hal.flags,
                                data: i.data.clone(),
                                timestamp: 1,
                            })
                            .collect();
                        let mut c = st.lock().unwrap();
                        c.hals.push_back(WireHal {
                            archive_id: hal.archive_id,
                            flags: hal.flags,
                            fsname: hal.fsname.clone(),
                            list,
                        });
                        c.dispatch();
                    }
                    Err(LustreError::WouldBlock { .. }) => {}
                    Err(LustreError::Shutdown { .. }) => break,
                    Err(e) => panic!("coordinator recv: {e}"),
                }
            }
        });
        wait_until("the coordinator's registration", || {
            registered.load(Ordering::SeqCst)
        });

        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let id = {
                    let mut c = st.lock().unwrap();
                    c.next += 1;
                    let id = c.next;
                    c.conns.push((id, stream.try_clone().unwrap()));
                    id
                };
                let st = st.clone();
                std::thread::spawn(move || serve(st, id, stream));
            }
        });
        Coordinator { port, state, stop }
    }

    fn dones(&self) -> Vec<DoneRequest> {
        self.state.lock().unwrap().dones.clone()
    }

    /// Drops every mover connection (a coordinator restart as seen by the movers).
    fn drop_connections(&self) {
        let mut c = self.state.lock().unwrap();
        for (_, s) in c.conns.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        c.waiting = None;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(st: Arc<Mutex<Coord>>, id: usize, mut stream: TcpStream) {
    let mut dec = Decoder::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        dec.feed(&buf[..n]);
        while let Some(req) = dec.next_message::<Request>().expect("valid request") {
            let mut c = st.lock().unwrap();
            if !c.conns.iter().any(|(k, _)| *k == id) {
                return;
            }
            match req {
                Request::Ehlo(e) => {
                    // Actions the mover still runs stay with it; nothing to requeue here
                    // because this coordinator hands every list out once.
                    c.ehlos.push(e);
                    c.send(id, &Reply::Ehlo(AckReply::default()));
                }
                Request::Recv(_) => {
                    c.waiting = Some(id);
                    c.dispatch();
                }
                Request::Done(d) => {
                    c.dones.push(d);
                    c.send(id, &Reply::Done(AckReply::default()));
                }
                other => panic!("unexpected request from the mover: {other:?}"),
            }
        }
    }
    let mut c = st.lock().unwrap();
    c.conns.retain(|(k, _)| *k != id);
    if c.waiting == Some(id) {
        c.waiting = None;
    }
}

fn spawn_mover(sim: &Sim, port: u16, args: &[&str]) -> Proc {
    let conf = sim.scratch("coordinatool.conf");
    std::fs::write(&conf, "# test\nmax_archive 4\nhal_size 1M\n").unwrap();
    let mut cmd = Command::new(ctposix());
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .env("LD_PRELOAD", preload())
        .env("COORDINATOOL_CONF", &conf)
        .env("COORDINATOOL_HOST", "127.0.0.1")
        .env("COORDINATOOL_PORT", port.to_string())
        .env("COORDINATOOL_CLIENT_ID", "mover-1")
        .env("COORDINATOOL_RECONNECT_MIN_MS", "20")
        .env("COORDINATOOL_RECONNECT_MAX_MS", "300")
        .arg("--hsm-root")
        .arg(sim.archive())
        .args(args)
        .arg(sim.mount());
    let p = Proc::spawn("ctposix+preload", cmd);
    p.wait_line(&["REGISTER"]);
    p
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn fid_of(path: &Path) -> LuFid {
    api().path2fid(path).expect("path2fid")
}

/// Archive, release, restore (contents checked) and remove of `n` files through the preload.
fn round_trip(name: &str, mover_args: &[&str], n: usize) {
    let sim = Sim::start(name);
    let coord = Coordinator::start(sim.mount());
    let mut mover = spawn_mover(&sim, coord.port, mover_args);
    let files: Vec<(PathBuf, Vec<u8>)> = (0..n)
        .map(|i| {
            let data = pattern(1000 + i * 7919, i as u64 + 1);
            (sim.write(&format!("f{i}"), &data), data)
        })
        .collect();
    let paths: Vec<String> = files.iter().map(|(p, _)| s(p)).collect();
    let fids: Vec<LuFid> = files.iter().map(|(p, _)| fid_of(p)).collect();
    // One request per 16 files (an hsm_user_request is limited in size).
    let lfs_all = |cmd: &'static str| {
        for chunk in paths.chunks(16) {
            let mut a = vec![cmd];
            a.extend(chunk.iter().map(String::as_str));
            sim.lfs(&a);
        }
    };

    lfs_all("hsm_archive");
    for (p, _) in &files {
        wait_until("archived", || sim.state(p).contains("exists archived"));
    }
    lfs_all("hsm_release");
    for (p, _) in &files {
        assert!(sim.state(p).contains("released"), "{}", sim.state(p));
    }
    lfs_all("hsm_restore");
    for (p, data) in &files {
        wait_until("restored", || !sim.state(p).contains("released"));
        assert_eq!(checksum(&std::fs::read(p).unwrap()), checksum(data));
    }
    lfs_all("hsm_remove");
    for (p, _) in &files {
        wait_until("removed", || !sim.state(p).contains("archived"));
    }

    wait_until("every done at the coordinator", || {
        coord.dones().len() >= 3 * n
    });
    let dones = coord.dones();
    assert_eq!(dones.len(), 3 * n, "{dones:?}");
    assert!(dones.iter().all(|d| d.status == 0), "{dones:?}");
    for fid in &fids {
        assert_eq!(
            dones.iter().filter(|d| d.dfid == *fid).count(),
            3,
            "archive, restore and remove of {fid}, keyed by the dfid the server sent"
        );
    }
    let ehlos = coord.state.lock().unwrap().ehlos.clone();
    assert_eq!(ehlos[0].id.as_deref(), Some("mover-1"));
    assert_eq!(ehlos[0].fsname.as_deref(), Some("lustre"));

    // SIGTERM interrupts the blocking recv (ctposix installs it without SA_RESTART).
    let st = mover.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "ctposix exit status {st}");
    mover.wait_line(&["STOP signal=15"]);
}

#[test]
fn threads_archive_restore_remove_through_the_preload() {
    round_trip("preload-threads", &[], 60);
}

#[test]
fn forked_mover_archive_restore_remove_through_the_preload() {
    round_trip("preload-fork", &["--fork"], 20);
}

#[test]
fn polling_mover_archive_restore_remove_through_the_preload() {
    round_trip("preload-poll", &["--poll", "--threads", "4"], 20);
}

#[test]
fn coordinator_restart_while_transfers_are_in_flight() {
    let sim = Sim::start("preload-restart");
    let coord = Coordinator::start(sim.mount());
    let hold = sim.scratch("hold");
    std::fs::write(&hold, b"").unwrap();
    let mut mover = spawn_mover(&sim, coord.port, &["--wait-file", &s(&hold)]);
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(50_000 + i, 40 + i as u64)).collect();
    let files: Vec<PathBuf> = (0..3)
        .map(|i| sim.write(&format!("held{i}"), &data[i]))
        .collect();
    let mut args = vec!["hsm_archive"];
    let paths: Vec<String> = files.iter().map(|p| s(p)).collect();
    args.extend(paths.iter().map(String::as_str));
    sim.lfs(&args);
    for p in &files {
        mover.wait_line(&["ARCHIVE wait", &fid_of(p).to_string()]);
    }

    // The connection drops while the three transfers run: the mover comes back and declares them.
    coord.drop_connections();
    wait_until("a second ehlo", || {
        coord.state.lock().unwrap().ehlos.len() >= 2
    });
    let declared: Vec<u64> = coord.state.lock().unwrap().ehlos[1]
        .hai_list
        .iter()
        .map(|h| h.cookie)
        .collect();
    assert_eq!(
        declared.len(),
        3,
        "running actions declared on reconnect: {declared:?}"
    );

    std::fs::remove_file(&hold).unwrap();
    for p in &files {
        wait_until("archived after the reconnection", || {
            sim.state(p).contains("exists archived")
        });
    }
    wait_until("three dones", || coord.dones().len() >= 3);
    let mut cookies: Vec<u64> = coord.dones().iter().map(|d| d.cookie).collect();
    cookies.sort_unstable();
    let mut expected = declared.clone();
    expected.sort_unstable();
    assert_eq!(cookies, expected);
    let st = mover.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "ctposix exit status {st}");
}
