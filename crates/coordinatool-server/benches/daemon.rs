//! Protocol-level throughput of the server binary: movers doing `recv` + `done` over real TCP.
//!
//! `cargo bench -p coordinatool-server --bench daemon [-- <requests> <movers> <per_recv>]`
//! `cargo bench -p coordinatool-server --bench daemon -- mem [<requests>]`
//!
//! Starts the simulated Lustre in-process and the `coordinatool-server` binary against it
//! (the liblustreapi stand-in), queues `<requests>` archives with `queue`, then `<movers>`
//! threads loop on `recv` (`max_archive = <per_recv>`) and answer every item with `done`
//! (pipelined). Prints round trips (one item received and done) per second, for the
//! embedded store (fsync per group commit) and without a store.
//!
//! `mem`: the server's memory per queued request: its resident size (`VmRSS` of
//! `/proc/<pid>/status`) before and after queueing `<requests>` (default 1M) archives, for
//! each store. The many-mover load generator is `coordinatool-client bench`.

#[path = "../tests/server_common/mod.rs"]
mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    DoneRequest, EhloRequest, QueueRequest, RecvRequest, Reply, Request, WireHai,
};
use server_common::{Client, DEADLINE, Server, Sim, config};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn item(n: u32) -> WireHai {
    let mut h = WireHai::new(
        HsmAction::Archive,
        LuFid::new(0x2_0000_0401 + u64::from(n >> 20), (n & 0xfffff) + 1, 0),
        1_000 + u64::from(n),
    );
    h.archive_id = 1;
    h
}

/// Queues items `0..requests` through `q`, 10,000 per `queue`.
fn queue_all(q: &mut Client, requests: u32) {
    let mut n = 0;
    while n < requests {
        let end = (n + 10_000).min(requests);
        match q.call(&Request::Queue(QueueRequest {
            items: (n..end).map(item).collect(),
            fsname: None,
        })) {
            Reply::Queue(r) => assert_eq!(r.enqueued, u64::from(end - n)),
            other => panic!("{other:?}"),
        }
        n = end;
    }
}

fn run(store: &str, requests: u32, movers: u32, per_recv: u32) {
    let sim = Sim::start(&format!("bench-{store}"));
    let srv = Server::start(&sim, &config(&sim, &format!("store {store}\n")));
    let mut q = srv.connect();
    queue_all(&mut q, requests);
    let done = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..movers)
        .map(|i| {
            let mut c = srv.connect();
            let done = done.clone();
            std::thread::spawn(move || {
                c.call(&Request::Ehlo(EhloRequest::new(Some(format!("m{i}")))));
                loop {
                    c.send(&Request::Recv(RecvRequest {
                        max_archive: Some(per_recv),
                        ..RecvRequest::default()
                    }));
                    // The server is stopped once everything is done: EOF ends the mover.
                    let Some(raw) = c.next_raw_within(DEADLINE) else {
                        return;
                    };
                    let hal = match Reply::decode(&raw) {
                        Ok(Reply::Recv(r)) => r.hal.expect("a list"),
                        other => panic!("{other:?}"),
                    };
                    let mut out = Vec::new();
                    for h in &hal.list {
                        Request::Done(DoneRequest {
                            cookie: h.cookie,
                            dfid: h.dfid,
                            status: 0,
                        })
                        .encode(&mut out);
                    }
                    c.send_raw(&out);
                    for _ in &hal.list {
                        if c.next_raw_within(DEADLINE).is_none() {
                            return;
                        }
                    }
                    done.fetch_add(hal.list.len() as u32, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < requests {
        assert!(start.elapsed() < DEADLINE * 10, "benchmark stuck");
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "store {store:8} movers {movers:3} per_recv {per_recv:3}: {total} recv+done in {secs:.2} s = {:.0} round trips/s",
        f64::from(total) / secs
    );
    drop(srv);
    for t in threads {
        let _ = t.join();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}

fn memory(store: &str, requests: u32) {
    let sim = Sim::start(&format!("mem-{store}"));
    let srv = Server::start(&sim, &config(&sim, &format!("store {store}\n")));
    let mut q = srv.connect();
    // One status round trip first: the loop and a connection are set up.
    q.call(&Request::Status(Default::default()));
    let before = rss_kib(srv.child.id());
    queue_all(&mut q, requests);
    let after = rss_kib(srv.child.id());
    println!(
        "store {store:8}: {requests} queued: RSS {before} KiB -> {after} KiB = {:.0} bytes per queued request",
        (after.saturating_sub(before) * 1024) as f64 / f64::from(requests)
    );
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("mem") {
        let requests = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        for store in ["none", "embedded"] {
            memory(store, requests);
        }
        return;
    }
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(200_000);
    let movers = args.get(1).copied().unwrap_or(8);
    let per_recv = args.get(2).copied().unwrap_or(16);
    for store in ["none", "embedded"] {
        for pr in [1, per_recv] {
            run(store, requests, movers, pr);
        }
    }
}
