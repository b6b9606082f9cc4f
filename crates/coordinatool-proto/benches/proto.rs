//! Decode/encode throughput of the wire protocol.
//!
//! `cargo bench -p coordinatool-proto`. Streams are fed to the decoder in 64 KiB chunks,
//! like socket reads.

use std::hint::black_box;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{Decoder, DoneRequest, RecvReply, Reply, Request, WireHai, WireHal};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const DONES: usize = 10_000;
const CHUNK: usize = 64 * 1024;

fn dones() -> Vec<Request> {
    (0..DONES as u64)
        .map(|i| {
            Request::Done(DoneRequest {
                cookie: 1_764_690_165 + i,
                dfid: LuFid::new(0x2_0000_0bd7 + (i >> 10), (i & 0x3ff) as u32 + 1, 0),
                status: if i % 100 == 0 { 5 } else { 0 },
            })
        })
        .collect()
}

fn recv_reply(items: usize) -> Reply {
    let list = (0..items as u64)
        .map(|i| {
            let mut h = WireHai::new(
                HsmAction::Archive,
                LuFid::new(0x2_0000_0bd7, i as u32 + 1, 0),
                1_764_690_165 + i,
            );
            h.archive_id = 1;
            h.timestamp = 1_765_010_112_108_091_220 + i as i64;
            h.data = format!("tag=proj{}", i % 7).into_bytes();
            h
        })
        .collect();
    Reply::Recv(RecvReply {
        hal: Some(WireHal {
            archive_id: 1,
            flags: 0,
            fsname: "testfs0".into(),
            list,
        }),
        ..Default::default()
    })
}

fn decode_stream<M: coordinatool_proto::Message>(stream: &[u8], expect: usize) {
    let mut dec = Decoder::new();
    let mut n = 0;
    for chunk in stream.chunks(CHUNK) {
        dec.feed(chunk);
        while let Some(m) = dec.next_message::<M>().expect("valid stream") {
            black_box(&m);
            n += 1;
        }
    }
    assert_eq!(n, expect);
}

fn bench_done(c: &mut Criterion) {
    let msgs = dones();
    let mut stream = Vec::new();
    for m in &msgs {
        m.encode(&mut stream);
    }
    // The C writers' spacing, for comparison.
    let c_stream = String::from_utf8(stream.clone())
        .unwrap()
        .replace(',', ", ")
        .replace(':', ": ");
    let mut g = c.benchmark_group("done");
    g.throughput(Throughput::Elements(DONES as u64));
    g.bench_function(format!("decode {DONES} ({} bytes)", stream.len()), |b| {
        b.iter(|| decode_stream::<Request>(black_box(&stream), DONES))
    });
    g.bench_function(
        format!("decode {DONES} C-spaced ({} bytes)", c_stream.len()),
        |b| b.iter(|| decode_stream::<Request>(black_box(c_stream.as_bytes()), DONES)),
    );
    g.bench_function(format!("frame only {DONES}"), |b| {
        b.iter(|| {
            let mut dec = Decoder::new();
            let mut n = 0;
            for chunk in stream.chunks(CHUNK) {
                dec.feed(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    black_box(f);
                    n += 1;
                }
            }
            assert_eq!(n, DONES);
        })
    });
    g.bench_function(format!("encode {DONES}"), |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(stream.len()),
            |out| {
                for m in &msgs {
                    m.encode(out);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_recv(c: &mut Criterion) {
    const ITEMS: usize = 1000;
    let reply = recv_reply(ITEMS);
    let bytes = coordinatool_proto::to_vec(&reply);
    let mut g = c.benchmark_group("recv reply");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function(
        format!("decode {ITEMS} items ({} bytes)", bytes.len()),
        |b| b.iter(|| decode_stream::<Reply>(black_box(&bytes), 1)),
    );
    g.bench_function(format!("encode {ITEMS} items"), |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(bytes.len()),
            |out| reply.encode(out),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_done, bench_recv);
criterion_main!(benches);
