//! Scheduling engine benchmarks: bulk intake and dispatch, per-event cost at 10k and 1M
//! queued (with plain, fair-share and host-mapping configurations), and memory per request.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_sched::{
    Action, ClientId, Config, Ehlo, Engine, FairShare, HostMapping, Owner, RecvLimits, Request,
    ShareKey, Time,
};
use criterion::{BatchSize, Criterion, criterion_group};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts live heap bytes so the bench can report engine memory per queued request.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: Time = Time(1_700_000_000_000_000_000);

/// The cycles' virtual clock: 100 µs per cycle, so batch slices (60 s idle) end and slots
/// move on to other hints as they would in a real steady state.
static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(NOW.0);

fn request(n: u64, data: &[u8]) -> Request {
    let fid = LuFid::new(0x2_0000_0400 + (n >> 20), n as u32, 0);
    Request {
        action: if n % 10 == 0 {
            HsmAction::Restore
        } else {
            HsmAction::Archive
        },
        cookie: 0x6000_0000 + n,
        dfid: fid,
        fid,
        extent_offset: 0,
        extent_length: u64::MAX,
        gid: 0,
        archive_id: 1 + (n % 4) as u32,
        hal_flags: 0,
        data: data.into(),
        timestamp: NOW,
        mdt_index: Some(0),
        owner: Some(Owner {
            uid: (n % 50) as u32,
            gid: 0,
            projid: 0,
        }),
    }
}

fn data_for(n: u64, cfg: &str) -> Vec<u8> {
    match cfg {
        "hosts" => format!("grouping=g{}", n % 1000).into_bytes(),
        // As many tapes as movers: every slot that has a tape always has work, at any depth.
        "batch" => format!("tape=t{}", n % 100).into_bytes(),
        _ => Vec::new(),
    }
}

fn config(name: &str) -> Config {
    let mut cfg = Config::default();
    match name {
        "fair" => {
            cfg.fair_share = Some(FairShare {
                key: ShareKey::Uid,
                weights: vec![("1".into(), 4)],
                default_weight: 1,
            })
        }
        "hosts" => {
            cfg.host_mappings = vec![HostMapping::ConsistentHash {
                tag: "grouping=".into(),
                hash_count: 0,
                hosts: (0..100).map(|i| format!("mover{i}")).collect(),
                mode: Default::default(),
            }]
        }
        "batch" => {
            cfg.batching = coordinatool_sched::Batching {
                idle_secs: 60,
                max_secs: 600,
                slots_per_client: 2,
            }
        }
        _ => {}
    }
    cfg
}

fn drain(e: &mut Engine) -> Vec<Request> {
    drain_owned(e).into_iter().map(|(_, r)| r).collect()
}

/// Delivered items with the client they went to.
fn drain_owned(e: &mut Engine) -> Vec<(ClientId, Request)> {
    let mut out = Vec::new();
    while let Some(a) = e.poll_action() {
        if let Action::Deliver(d) = a {
            out.extend(d.items.into_iter().map(|r| (d.client, r)));
        }
    }
    out
}

fn movers(e: &mut Engine, n: usize) -> Vec<ClientId> {
    (0..n)
        .map(|i| {
            let c = e.connect(&format!("10.0.0.{i}:1"), NOW);
            e.ehlo(
                c,
                Ehlo {
                    id: Some(format!("mover{i}")),
                    ..Ehlo::default()
                },
                NOW,
            )
            .unwrap();
            c
        })
        .collect()
}

fn filled(cfg: &str, queued: u64) -> Engine {
    let mut e = Engine::new(config(cfg)).unwrap();
    for n in 0..queued {
        e.new_request(request(n, &data_for(n, cfg)), NOW).unwrap();
        drain(&mut e);
    }
    e
}

fn intake_and_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk_1M");
    g.sample_size(10);
    g.bench_function("intake_1M", |b| {
        b.iter_batched(
            || (0..1_000_000).map(|n| request(n, b"")).collect::<Vec<_>>(),
            |reqs| {
                let mut e = Engine::new(Config::default()).unwrap();
                for r in reqs {
                    e.new_request(r, NOW).unwrap();
                    drain(&mut e);
                }
                e
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("decisions_only_1M_to_100_clients", |b| {
        // Dispatch decisions alone: movers without limits ask until the queue is empty and
        // never report done (no done cost in the figure).
        b.iter_batched(
            || {
                let mut e = filled("plain", 1_000_000);
                let m = movers(&mut e, 100);
                (e, m)
            },
            |(mut e, m)| {
                let mut total = 0;
                while total < 1_000_000 {
                    for &c in &m {
                        e.recv(c, RecvLimits::default(), NOW).unwrap();
                        total += drain(&mut e).len();
                    }
                }
                e
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("dispatch_1M_to_100_clients", |b| {
        b.iter_batched(
            || {
                let mut e = filled("plain", 1_000_000);
                let m = movers(&mut e, 100);
                (e, m)
            },
            |(mut e, m)| {
                let mut total = 0;
                while total < 1_000_000 {
                    for &c in &m {
                        e.recv(c, RecvLimits::default(), NOW).unwrap();
                        let items = drain(&mut e);
                        total += items.len();
                        for r in items {
                            e.done(c, r.key(), 0, NOW);
                        }
                        drain(&mut e);
                    }
                }
                e
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// One steady-state cycle at a fixed queue depth: a new archive arrives, a mover takes one
/// archive (`recv` with a one-archive limit), and reports it done. Three events, queue depth kept.
fn per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle_new_recv_done");
    // 10M queued needs about 2.5 GB and a long fill: opt in with SCHED_BENCH_10M=1.
    let ten_m = std::env::var_os("SCHED_BENCH_10M").is_some();
    for cfg in ["plain", "fair", "hosts", "batch"] {
        let depths: &[u64] = if ten_m {
            &[10_000, 1_000_000, 10_000_000]
        } else {
            &[10_000, 1_000_000]
        };
        for &queued in depths {
            // Filled lazily: a benchmark left out by the command-line filter costs nothing.
            let mut state: Option<(Engine, Vec<ClientId>)> = None;
            let mut n = queued;
            let mut i = 0usize;
            g.bench_function(format!("{cfg}/{queued}"), |b| {
                let (e, m) = state.get_or_insert_with(|| {
                    let mut e = filled(cfg, queued);
                    let m = movers(&mut e, 100);
                    drain(&mut e);
                    (e, m)
                });
                b.iter(|| cycle(e, m, cfg, &mut n, &mut i))
            });
            // Free the engine (up to 2.5 GB) before filling the next one.
            drop(state);
        }
    }
    g.finish();
}

/// One steady-state cycle: a new archive, one `recv` taking exactly one archive, its `done`.
/// Every new request is an archive and each recv takes one: the queue depth stays constant.
fn cycle(e: &mut Engine, m: &[ClientId], cfg: &str, n: &mut u64, i: &mut usize) {
    let lim = RecvLimits {
        max_archive: Some(1),
        max_restore: Some(0),
        max_remove: Some(0),
        max_bytes: 1 << 20,
    };
    let now = Time(CLOCK.fetch_add(100_000, Ordering::Relaxed) + 100_000);
    if e.poll_timeout().is_some_and(|t| t <= now) {
        e.handle_timeout(now);
    }
    let mut r = request(*n, &data_for(*n, cfg));
    r.action = HsmAction::Archive;
    e.new_request(r, now).unwrap();
    *n += 1;
    let client = m[*i % m.len()];
    *i += 1;
    if e.client_state(client) == Some(coordinatool_sched::ClientState::Ready) {
        e.recv(client, lim, now).unwrap();
    }
    // The owner is whoever got it (a waiting client may take the new one).
    for (owner, r) in drain_owned(e) {
        black_box(e.done(owner, r.key(), 0, now));
    }
    drain(e);
}

/// `SCHED_CYCLES=<cfg>/<queued>/<cycles>`: fill, then run that many cycles without criterion
/// (for cachegrind: run it with 0 and with N cycles and subtract).
fn cycles_only(spec: &str) {
    let parts: Vec<&str> = spec.split('/').collect();
    let [cfg, queued, cycles] = parts[..] else {
        panic!("SCHED_CYCLES must be <cfg>/<queued>/<cycles>, got {spec:?}");
    };
    let queued: u64 = queued.parse().expect("queued: a number");
    let cycles: u64 = cycles.parse().expect("cycles: a number");
    let mut e = filled(cfg, queued);
    let m = movers(&mut e, 100);
    drain(&mut e);
    let (mut n, mut i) = (queued, 0);
    // Warm-up: the first cycles fill the movers' waiting states.
    for _ in 0..1000 {
        cycle(&mut e, &m, cfg, &mut n, &mut i);
    }
    // Chunks of 10k cycles, timed in CPU time of this thread when the kernel tells it (on a
    // shared machine wall time also counts the time other processes ran): the median and
    // the fastest chunk.
    let mut per_cycle: Vec<f64> = Vec::new();
    let mut wall: Vec<f64> = Vec::new();
    let mut done = 0;
    while done < cycles {
        let k = (cycles - done).min(10_000);
        let (t, c0) = (std::time::Instant::now(), cpu_ns());
        for _ in 0..k {
            cycle(&mut e, &m, cfg, &mut n, &mut i);
        }
        let w = t.elapsed().as_secs_f64() * 1e9;
        wall.push(w / 1e3 / k as f64);
        per_cycle.push(cpu_ns().zip(c0).map_or(w, |(a, b)| (a - b) as f64) / 1e3 / k as f64);
        done += k;
    }
    per_cycle.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    let mid = per_cycle.len() / 2;
    if !per_cycle.is_empty() {
        eprintln!(
            "{cfg}/{queued}: {cycles} cycles, µs/cycle cpu min {:.3} median {:.3}, wall median {:.3}",
            per_cycle[0], per_cycle[mid], wall[mid]
        );
    }
}

/// CPU time of this thread in nanoseconds (Linux `schedstat`), if available.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn memory() {
    let before = LIVE.load(Ordering::Relaxed);
    let e = filled("plain", 1_000_000);
    let after = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "memory: {:.1} bytes of engine heap per queued request (empty hsm data, 1M queued)",
        (after - before) as f64 / 1e6
    );
    drop(e);
}

fn all(c: &mut Criterion) {
    memory();
    intake_and_dispatch(c);
    per_event(c);
}

criterion_group!(benches, all);

fn main() {
    if let Ok(spec) = std::env::var("SCHED_CYCLES") {
        cycles_only(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
