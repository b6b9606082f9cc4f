//! Decodes a stream of 10,000 `done` requests `REPS` times (default 100) in 64 KiB chunks
//! and prints messages per second. A quick check outside criterion, and a deterministic
//! driver for `valgrind --tool=callgrind` (instruction counts do not depend on machine load):
//!
//! ```text
//! cargo run --release -p coordinatool-proto --example decode_throughput [frame]
//! REPS=2 valgrind --tool=callgrind target/release/examples/decode_throughput
//! ```
//!
//! With the `frame` argument only the framing is measured (no JSON parsing).

use std::hint::black_box;
use std::time::Instant;

use coordinatool_lustre::LuFid;
use coordinatool_proto::{Decoder, DoneRequest, Request};

fn main() {
    let frame_only = std::env::args().nth(1).as_deref() == Some("frame");
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut stream = Vec::new();
    for i in 0..10_000u64 {
        Request::Done(DoneRequest {
            cookie: 1_764_690_165 + i,
            dfid: LuFid::new(0x2_0000_0bd7 + (i >> 10), (i & 0x3ff) as u32 + 1, 0),
            status: if i % 100 == 0 { 5 } else { 0 },
        })
        .encode(&mut stream);
    }
    let start = Instant::now();
    let mut n = 0u64;
    for _ in 0..reps {
        let mut dec = Decoder::new();
        for chunk in stream.chunks(64 * 1024) {
            dec.feed(chunk);
            if frame_only {
                while let Some(f) = dec.next_frame().expect("valid stream") {
                    black_box(f);
                    n += 1;
                }
            } else {
                while let Some(m) = dec.next_message::<Request>().expect("valid stream") {
                    black_box(m);
                    n += 1;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (stream.len() * reps) as f64;
    println!(
        "{} {n} done messages in {secs:.3} s: {:.2} M msg/s, {:.0} MB/s",
        if frame_only { "framed" } else { "decoded" },
        n as f64 / secs / 1e6,
        bytes / secs / 1e6
    );
}
