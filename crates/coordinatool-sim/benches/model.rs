//! Throughput of the MDT model: request admission, and dispatch plus completion.
//!
//! Run: `cargo bench -p coordinatool-sim --bench model`.

use std::hint::black_box;

use coordinatool_lustre::{HsmProgressFlags, HsmUserAction, LuFid};
use coordinatool_sim::mdt::{Caller, Cluster, FileAttrs, HsmExtent, Progress, UserRequest};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const T0: u64 = 1_700_000_000;
const N: usize = 20_000;

fn cluster_with_files(n: usize) -> (Cluster, Vec<LuFid>) {
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let fids = (0..n)
        .map(|_| {
            let f = c.alloc_fid(0);
            c.put_file(f, FileAttrs::default());
            f
        })
        .collect();
    (c, fids)
}

fn admission(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("mdt");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("admit_archive_1_file", |b| {
        b.iter_batched(
            || {
                let (c, fids) = cluster_with_files(N);
                let reqs: Vec<UserRequest> = fids
                    .iter()
                    .map(|f| UserRequest::whole_files(HsmUserAction::Archive, 1, &[*f]))
                    .collect();
                (c, reqs)
            },
            |(mut c, reqs)| {
                for r in &reqs {
                    c.request(T0, Caller::ROOT, r).unwrap();
                }
                black_box(c)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn dispatch_complete(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("mdt");
    g.throughput(Throughput::Elements(N as u64));
    for max in [3u64, 100, 1000] {
        g.bench_function(format!("dispatch_and_complete_max_requests_{max}"), |b| {
            b.iter_batched(
                || {
                    let (mut c, fids) = cluster_with_files(N);
                    for (_, r) in c.set_param(T0, "mdt.*.hsm.max_requests", &max.to_string()) {
                        r.unwrap();
                    }
                    for i in 0..4 {
                        c.register(&format!("agent-{i}"), &[]).unwrap();
                    }
                    for chunk in fids.chunks(40) {
                        c.request(
                            T0,
                            Caller::ROOT,
                            &UserRequest::whole_files(HsmUserAction::Archive, 1, chunk),
                        )
                        .unwrap();
                    }
                    c
                },
                |mut c| {
                    let mut now = T0;
                    let mut done = 0;
                    while done < N {
                        now += 1;
                        c.tick(now);
                        while let Some(d) = c.poll_dispatch() {
                            for it in &d.items {
                                let p = Progress {
                                    fid: it.fid,
                                    cookie: it.cookie,
                                    extent: HsmExtent::WHOLE_FILE,
                                    flags: HsmProgressFlags::COMPLETED,
                                    errval: 0,
                                    data_version: Some(1),
                                };
                                c.progress(now, &p).unwrap();
                                done += 1;
                            }
                        }
                    }
                    black_box(c)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, admission, dispatch_complete);
criterion_main!(benches);
