//! Feeds arbitrary bytes, cut into arbitrary chunks, to the decoder (as requests and as
//! replies) and checks that:
//! * nothing panics and the decoder always makes progress;
//! * chunking never changes the result (same messages and errors as one single feed);
//! * every decoded message re-encodes to bytes that decode to the same message.

#![no_main]

use coordinatool_proto::{Decoder, Message, Reply, Request};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn run<M: Message + PartialEq + std::fmt::Debug>(stream: &[u8], cuts: &[u8]) -> Vec<String> {
    let mut dec = Decoder::with_max_message_size(MAX);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut k = 0;
    loop {
        let n = if cuts.is_empty() {
            rest.len()
        } else {
            usize::from(cuts[k % cuts.len()])
        };
        k += 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.feed(chunk);
        // A stream of N bytes cannot produce more than N + 1 results.
        for _ in 0..=stream.len() + 1 {
            match dec.next_message::<M>() {
                Ok(None) => break,
                Ok(Some(m)) => {
                    let bytes = coordinatool_proto::to_vec(&m);
                    let again = M::decode(&bytes).expect("re-encoded message must decode");
                    assert_eq!(again, m, "round trip changed the message");
                    out.push(format!("{m:?}"));
                }
                Err(e) => out.push(format!("error: {e}")),
            }
        }
        assert!(dec.buffered() <= MAX + chunk.len() + 1);
        if rest.is_empty() {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // First byte: number of chunk sizes that follow; then the stream.
    let (ncuts, data) = match data.split_first() {
        Some((&n, d)) => (usize::from(n % 16), d),
        None => return,
    };
    let (cuts, stream) = data.split_at(ncuts.min(data.len()));
    let cuts: Vec<u8> = cuts.iter().map(|&c| c.max(1)).collect();
    assert_eq!(run::<Request>(stream, &cuts), run::<Request>(stream, &[]));
    assert_eq!(run::<Reply>(stream, &cuts), run::<Reply>(stream, &[]));
});
