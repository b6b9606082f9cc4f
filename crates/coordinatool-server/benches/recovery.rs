//! Recovery benchmark: 1M persisted requests loaded back, then handed to the engine.
//!
//! `cargo bench -p coordinatool-server --bench recovery [-- <count>]`
//! `cargo bench -p coordinatool-server --bench recovery -- convert [<count>]`
//! Prints, for the embedded store and for Redis (when `redis-server` is installed): the time
//! to write the requests (in group commits of 10,000), the time to load them back
//! (`Store::load`), and the time for `Engine::recover` of all of them ("scheduling again").
//!
//! `convert`: the first start after an upgrade from the embedded store's format 1 (a third of
//! the requests assigned, in their own table): the open that converts it, then the load.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_sched::{Config, Engine, PersistOp, Request, RequestKey, Time};
use coordinatool_server::store::{Batch, EmbeddedStore, RedisOptions, RedisStore, Store};
use std::time::{Duration, Instant};

const BATCH: usize = 10_000;

fn request(i: u64) -> Request {
    let fid = LuFid::new(0x200000401 + (i >> 20), (i & 0xfffff) as u32 + 1, 0);
    Request {
        action: if i % 10 == 0 {
            HsmAction::Restore
        } else {
            HsmAction::Archive
        },
        cookie: 0x6000_0000 + i,
        dfid: fid,
        fid,
        extent_offset: 0,
        extent_length: u64::MAX,
        gid: 0,
        archive_id: 1 + (i % 4) as u32,
        hal_flags: 0,
        data: format!("tag=n{},cr=job{}", i % 8, i % 1000)
            .into_bytes()
            .into(),
        timestamp: Time(1_700_000_000_000_000_000 + i),
        mdt_index: Some((i % 4) as u32),
        owner: None,
    }
}

fn key(i: u64) -> RequestKey {
    request(i).key()
}

fn fill(store: &mut dyn Store, n: u64) -> Duration {
    let t = Instant::now();
    let mut b = Batch::new();
    for i in 0..n {
        b.push(PersistOp::New(request(i)));
        // A third of the queue is running on some mover.
        if i % 3 == 0 {
            b.push(PersistOp::Assigned {
                key: key(i),
                client: format!("mover{}", i % 16),
            });
        }
        if b.len() >= BATCH {
            store.commit(&b).expect("commit");
            b.clear();
        }
    }
    store.commit(&b).expect("commit");
    t.elapsed()
}

fn recover(store: &mut dyn Store, n: u64, name: &str, fill_time: Duration) {
    let t = Instant::now();
    let r = store.load().expect("load");
    let load = t.elapsed();
    assert_eq!(r.requests.len() as u64, n, "every request comes back");
    assert!(r.corrupt.is_empty());
    let t = Instant::now();
    let mut engine = Engine::new(Config::default()).expect("engine");
    let now = Time(1_800_000_000_000_000_000);
    for x in r.requests {
        engine
            .recover(x.request, x.assigned.as_deref(), now)
            .expect("recover");
    }
    while engine.poll_action().is_some() {}
    let sched = t.elapsed();
    let p = engine.pending();
    let running = engine.running();
    assert_eq!(
        p.archive + p.restore + p.remove + running.archive + running.restore + running.remove,
        n
    );
    println!(
        "{name}: {n} requests: write {:.2} s ({} per commit), load {:.2} s, engine recover {:.2} s, \
         loaded and scheduling again {:.2} s",
        fill_time.as_secs_f64(),
        BATCH,
        load.as_secs_f64(),
        sched.as_secs_f64(),
        (load + sched).as_secs_f64()
    );
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Mean latency and CPU time of one group commit of `ops` changes, measured over `rounds`
/// commits after the queue holds `n` requests. Each third of a commit is a request's life
/// as the server sees it: a New, the Assigned of a request queued 500 requests earlier (or,
/// second series, of the new one: a mover was waiting), the Finished of one queued 1,000
/// earlier.
fn commit_latency(store: &mut dyn Store, name: &str) {
    const LAG: u64 = 1_000;
    let mut next = 50_000_000u64;
    let mut b = Batch::new();
    for _ in 0..LAG {
        b.push(PersistOp::New(request(next)));
        next += 1;
    }
    store.commit(&b).expect("commit");
    for (series, assign_lag) in [("assigned later", LAG / 2), ("assigned at once", 0)] {
        for ops in [3usize, 30, 300, 3000] {
            let rounds = (30_000 / ops).clamp(20, 1000);
            let t = Instant::now();
            let cpu = cpu_time();
            for _ in 0..rounds {
                let mut b = Batch::new();
                for _ in 0..ops / 3 {
                    b.push(PersistOp::New(request(next)));
                    b.push(PersistOp::Assigned {
                        key: key(next - assign_lag),
                        client: "mover1".into(),
                    });
                    b.push(PersistOp::Finished {
                        key: key(next - LAG),
                    });
                    next += 1;
                }
                store.commit(&b).expect("commit");
            }
            let per = t.elapsed() / rounds as u32;
            let cpu = (cpu_time() - cpu) / rounds as u32;
            println!(
                "{name}: {series}: group commit of {ops:>4} ops: {:>8.3} ms per commit, {:>9.0} ops/s, \
             CPU {:>6.1} µs per commit = {:>5.2} µs per request",
                per.as_secs_f64() * 1e3,
                ops as f64 / per.as_secs_f64(),
                cpu.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6 * 3.0 / ops as f64
            );
        }
    }
}

/// Writes `n` requests in the embedded store's format 1 (records in `requests`, a third of
/// them assigned in `assigned`), as that format's code did, then times the open that
/// converts it and the load.
fn convert(n: u64) {
    use coordinatool_server::store::{encode_record, key_bytes};
    use redb::TableDefinition;
    const REQUESTS: TableDefinition<'_, &[u8; 24], &[u8]> = TableDefinition::new("requests");
    const ASSIGNED: TableDefinition<'_, &[u8; 24], &[u8]> = TableDefinition::new("assigned");
    const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
    let dir = std::env::temp_dir().join(format!("ct-bench-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("state dir");
    {
        let db = redb::Database::create(dir.join(coordinatool_server::store::DB_FILE_NAME))
            .expect("create");
        let mut buf = Vec::new();
        let mut i = 0;
        while i < n {
            let tx = db.begin_write().expect("begin");
            {
                tx.open_table(META)
                    .expect("meta")
                    .insert("format", 1)
                    .expect("insert");
                let mut req = tx.open_table(REQUESTS).expect("requests");
                let mut asg = tx.open_table(ASSIGNED).expect("assigned");
                for i in i..(i + BATCH as u64).min(n) {
                    let r = request(i);
                    encode_record(&r, &mut buf);
                    let k = key_bytes(&r.key());
                    req.insert(&k, buf.as_slice()).expect("insert");
                    if i % 3 == 0 {
                        asg.insert(&k, format!("mover{}", i % 16).as_bytes())
                            .expect("insert");
                    }
                }
            }
            tx.commit().expect("commit");
            i += BATCH as u64;
        }
    }
    let t = Instant::now();
    let mut s = EmbeddedStore::open(&dir).expect("open");
    let open = t.elapsed();
    let t = Instant::now();
    let r = s.load().expect("load");
    let load = t.elapsed();
    assert_eq!(r.requests.len() as u64, n, "every request comes back");
    assert_eq!(
        r.requests.iter().filter(|x| x.assigned.is_some()).count() as u64,
        n.div_ceil(3),
        "with its assignment"
    );
    println!(
        "embedded: format 1 with {n} requests ({} assigned): converting open {:.2} s, load {:.2} s",
        n.div_ceil(3),
        open.as_secs_f64(),
        load.as_secs_f64()
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("convert") {
        let n = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        convert(n);
        return;
    }
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    let dir = std::env::temp_dir().join(format!("ct-bench-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let mut s = EmbeddedStore::open(&dir).expect("open");
        let w = fill(&mut s, n);
        drop(s);
        let size = std::fs::metadata(dir.join(coordinatool_server::store::DB_FILE_NAME))
            .map(|m| m.len())
            .unwrap_or(0);
        println!(
            "embedded: database file {:.1} MiB",
            size as f64 / (1 << 20) as f64
        );
        let mut s = EmbeddedStore::open(&dir).expect("reopen");
        recover(&mut s, n, "embedded", w);
        commit_latency(&mut s, "embedded");
    }
    let _ = std::fs::remove_dir_all(&dir);

    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("redis: SKIPPED (redis-server is not installed)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let opts = RedisOptions {
        commit_wait: Duration::from_secs(60),
        response_timeout: Duration::from_secs(60),
        ..RedisOptions::new("127.0.0.1", port)
    };
    let mut store = None;
    for _ in 0..500 {
        if let Ok(s) = RedisStore::connect(opts.clone()) {
            store = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut s = store.expect("redis did not start");
    let w = fill(&mut s, n);
    drop(s);
    let mut s = RedisStore::connect(opts.clone()).expect("reconnect");
    recover(&mut s, n, "redis", w);
    // Page size of HSCAN, compared in one run (the machine is noisy between runs).
    for count in [1_000, 2_000, 10_000] {
        let mut s = RedisStore::connect(RedisOptions {
            scan_count: count,
            ..opts.clone()
        })
        .expect("reconnect");
        let t = Instant::now();
        let r = s.load().expect("load");
        assert_eq!(r.requests.len() as u64, n);
        println!(
            "redis: load with HSCAN COUNT {count:>6}: {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
    commit_latency(&mut s, "redis");
    drop(s);
    let _ = child.kill();
    let _ = child.wait();
}
