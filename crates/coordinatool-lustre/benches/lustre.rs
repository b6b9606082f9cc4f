//! Criterion benches of the HAL encoder/view and the active_requests parser.

use coordinatool_lustre::active_requests::parse_all;
use coordinatool_lustre::hal::{HalView, HsmActionItem, HsmActionList};
use coordinatool_lustre::{HsmAction, LuFid};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// A list of `n` ARCHIVE items with 5 bytes of data each.
fn list(n: u32) -> HsmActionList {
    let mut hal = HsmActionList::new("lustre", 1, 0);
    for i in 0..n {
        let mut it = HsmActionItem::new(
            HsmAction::Archive,
            LuFid::new(0x200000401, i, 0),
            0x6913_0000 + u64::from(i),
        );
        it.data = b"tag=m".to_vec();
        hal.items.push(it);
    }
    hal
}

fn benches(c: &mut Criterion) {
    let hal = list(1000);
    let bytes = hal.encode();
    let mut g = c.benchmark_group("hal_1000_items");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode", |b| b.iter(|| black_box(&hal).encode()));
    g.bench_function("view_new_and_iterate", |b| {
        b.iter(|| {
            let v = HalView::new(black_box(&bytes)).unwrap();
            v.items().map(|h| h.unwrap().cookie()).sum::<u64>()
        })
    });
    g.bench_function("parse_owned", |b| {
        b.iter(|| HsmActionList::parse(black_box(&bytes)).unwrap())
    });
    g.finish();

    let line = "fid=[0x200005223:0x1cce:0x0] dfid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[7461673D6D] canceled=0 uuid=3185ca0b-2d34-47f6-b156-d6f9ee127a08 done=0\n";
    let text = format!(
        "mdt.testfs0-MDT0000.hsm.active_requests=\n{}",
        line.repeat(10_000)
    );
    let mut g = c.benchmark_group("active_requests_10000_lines");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("parse_all", |b| {
        b.iter(|| parse_all(black_box(&text)).unwrap())
    });
    g.finish();
}

criterion_group!(b, benches);
criterion_main!(b);
