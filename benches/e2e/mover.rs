//! `coordinatool-e2e-mover`: the minimal mover of the end-to-end benchmark. It copies no data:
//! for every item it receives it calls `llapi_hsm_action_begin` then `llapi_hsm_action_end`
//! (success) through coordinatool-lustre's safe API, so what is measured is the path of a
//! request through Lustre (simulated), the server and the preload, not a copy.
//!
//! Usage: `coordinatool-e2e-mover MOUNT THREADS LIBRARY`, run under
//! `LD_PRELOAD=libcoordinatool_client.so`. `LIBRARY` is the `liblustreapi.so.1` that
//! coordinatool-lustre loads; its loader takes the copytool functions from the preload, which
//! interposes on them, as the dynamic linker does for a copytool linked with `-llustreapi`. The
//! mover refuses to run when they are not interposed, so the benchmark cannot silently bypass
//! the preload.
//!
//! One thread receives lists (`recv` is serialised by the library anyway) and queues their
//! items; `THREADS` workers begin and end them. SIGTERM (or SIGINT) interrupts `recv`; the
//! workers finish the queue, then one line goes to stdout:
//! `STATS items=N begin_ns=N end_ns=N begin_max_ns=N end_max_ns=N recvs=N errors=N`
//! (sums over items), and the copytool unregisters (the preload delivers its completions).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use coordinatool_lustre::{
    Copytool, HsmActionItem, HsmExtent, HsmProgressFlags, LustreError, Lustreapi,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Items received and not yet begun; `None` in the deque's place once receiving stopped.
struct Queue {
    items: Mutex<(VecDeque<HsmActionItem>, bool)>,
    cond: Condvar,
}

#[derive(Default)]
struct Stats {
    items: AtomicU64,
    begin_ns: AtomicU64,
    end_ns: AtomicU64,
    begin_max_ns: AtomicU64,
    end_max_ns: AtomicU64,
    errors: AtomicU64,
}

fn fail(msg: String) -> ! {
    eprintln!("coordinatool-e2e-mover: {msg}");
    std::process::exit(1);
}

/// Blocks (or unblocks) SIGTERM and SIGINT in the calling thread: only the receiving thread
/// takes them, so that they interrupt `recv`.
fn mask_signals(how: libc::c_int) {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn work(ct: &Copytool<'_>, queue: &Queue, stats: &Stats) {
    loop {
        let hai = {
            let mut g = queue.items.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(h) = g.0.pop_front() {
                    break h;
                }
                if g.1 {
                    return;
                }
                g = queue.cond.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        let t0 = Instant::now();
        let h = match ct.action_begin(&hai, -1, 0, false) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("action_begin {} cookie={:#x}: {e}", hai.fid, hai.cookie);
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let _ = ct.report_error(&hai, e.errno());
                continue;
            }
        };
        let t1 = Instant::now();
        // Nothing copied: the whole (empty) extent is reported done.
        let r = h.end(
            HsmExtent::new(hai.extent.offset, 0),
            HsmProgressFlags::default(),
            0,
        );
        let t2 = Instant::now();
        if let Err(e) = r {
            eprintln!("action_end {} cookie={:#x}: {e}", hai.fid, hai.cookie);
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let b = (t1 - t0).as_nanos() as u64;
        let e = (t2 - t1).as_nanos() as u64;
        stats.items.fetch_add(1, Ordering::Relaxed);
        stats.begin_ns.fetch_add(b, Ordering::Relaxed);
        stats.end_ns.fetch_add(e, Ordering::Relaxed);
        stats.begin_max_ns.fetch_max(b, Ordering::Relaxed);
        stats.end_max_ns.fetch_max(e, Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mount, threads, library] = &args[..] else {
        fail("usage: coordinatool-e2e-mover MOUNT THREADS LIBRARY".to_owned());
    };
    let threads: usize = match threads.parse() {
        Ok(n) if n > 0 => n,
        _ => fail(format!("THREADS {threads:?}: expected a positive number")),
    };
    let mount = PathBuf::from(mount);
    // SAFETY: the handler only stores to an atomic; no SA_RESTART, so a blocked recv returns
    // EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    // Every thread started from here on (the preload's, the workers) inherits the mask.
    mask_signals(libc::SIG_BLOCK);
    let api = Lustreapi::load_from(library).unwrap_or_else(|e| fail(e.to_string()));
    if !api.interposed().contains(&"llapi_hsm_copytool_recv") {
        fail(format!(
            "llapi_hsm_copytool_recv is not interposed (interposed: {:?}): run under LD_PRELOAD=libcoordinatool_client.so",
            api.interposed()
        ));
    }
    let ct = Copytool::register(&api, &mount, &[], false)
        .unwrap_or_else(|e| fail(format!("register on {}: {e}", mount.display())));
    let queue = Queue {
        items: Mutex::new((VecDeque::new(), false)),
        cond: Condvar::new(),
    };
    let stats = Stats::default();
    let mut recvs = 0u64;
    println!("REGISTER mount={} threads={threads}", mount.display());
    let _ = std::io::stdout().flush();
    std::thread::scope(|s| {
        for i in 0..threads {
            let (ct, queue, stats) = (&ct, &queue, &stats);
            std::thread::Builder::new()
                .name(format!("mover-w{i}"))
                .spawn_scoped(s, move || work(ct, queue, stats))
                .expect("spawning a worker");
        }
        mask_signals(libc::SIG_UNBLOCK);
        while !STOP.load(Ordering::SeqCst) {
            match ct.recv() {
                Ok(hal) => {
                    recvs += 1;
                    let n = hal.items.len();
                    let mut g = queue.items.lock().unwrap_or_else(|p| p.into_inner());
                    g.0.extend(hal.items);
                    drop(g);
                    // As many workers as there are items: waking all of them for a short list
                    // costs futex wake-ups and lock contention for nothing.
                    if n >= threads {
                        queue.cond.notify_all();
                    } else {
                        for _ in 0..n {
                            queue.cond.notify_one();
                        }
                    }
                }
                Err(LustreError::Shutdown { .. }) => break,
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => fail(format!("recv: {e}")),
            }
        }
        queue.items.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        queue.cond.notify_all();
    });
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "STATS items={} begin_ns={} end_ns={} begin_max_ns={} end_max_ns={} recvs={recvs} errors={}",
        ld(&stats.items),
        ld(&stats.begin_ns),
        ld(&stats.end_ns),
        ld(&stats.begin_max_ns),
        ld(&stats.end_max_ns),
        ld(&stats.errors)
    );
    let _ = std::io::stdout().flush();
    if let Err(e) = ct.unregister() {
        fail(format!("unregister: {e}"));
    }
}
