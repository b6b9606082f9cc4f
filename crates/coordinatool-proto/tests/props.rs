//! Property tests: every message round-trips, and any chunking of a stream of encoded
//! messages (with or without whitespace between them) decodes to the same messages.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    AckReply, BatchStatus, ClientState, ClientStatus, Decoder, DoneRequest, DumpEntry, EhloRequest,
    LockRequest, LustreStatus, Message, QueueReply, QueueRequest, RecvReply, RecvRequest, Reply,
    Request, StatusReply, StatusRequest, StoreStatus, WireHai, WireHal, to_vec,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

/// u64 values biased towards the extremes that matter for the i64 image.
fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(1u64 << 63),
        Just(u32::MAX as u64),
        any::<u64>(),
    ]
}

fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(i32::MAX as u32 + 1),
        any::<u32>()
    ]
}

fn errno() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), 1..200i32, Just(i32::MAX)]
}

fn fid() -> impl Strategy<Value = LuFid> {
    (any_u64(), any_u32(), any_u32()).prop_map(|(s, o, v)| LuFid::new(s, o, v))
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..24),
        ".{0,12}".prop_map(String::into_bytes),
        vec(
            prop_oneof![Just(0u8), Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}')],
            0..8
        ),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9_:.\\\\\"{}\u{e9}\u{1F600}]{1,12}"
}

fn hai() -> impl Strategy<Value = WireHai> {
    (
        proptest::sample::select(HsmAction::ALL.to_vec()),
        fid(),
        fid(),
        (any_u64(), any_u64(), any_u64(), any_u64()),
        (any_u32(), any_u64()),
        data(),
        any::<i64>(),
    )
        .prop_map(
            |(action, fid, dfid, (off, len, cookie, gid), (archive_id, flags), data, timestamp)| {
                WireHai {
                    action,
                    fid,
                    dfid,
                    extent_offset: off,
                    extent_length: len,
                    cookie,
                    gid,
                    archive_id,
                    flags,
                    data,
                    timestamp,
                }
            },
        )
}

fn dump() -> impl Strategy<Value = DumpEntry> {
    (fid(), any_u64(), data()).prop_map(|(fid, cookie, data)| DumpEntry { fid, cookie, data })
}

fn dumps() -> impl Strategy<Value = Option<Vec<DumpEntry>>> {
    option::of(vec(dump(), 0..3))
}

fn request() -> impl Strategy<Value = Request> {
    let limit = || option::of(0..u32::MAX);
    prop_oneof![
        (
            option::of(text()),
            option::of(text()),
            vec(any_u32(), 0..4),
            vec(hai(), 0..3),
            option::of(any_u32())
        )
            .prop_map(
                |(id, fsname, archive_ids, hai_list, version)| Request::Ehlo(EhloRequest {
                    id,
                    fsname,
                    archive_ids,
                    hai_list,
                    version
                })
            ),
        (limit(), limit(), limit(), any::<i32>()).prop_map(|(a, r, m, b)| Request::Recv(
            RecvRequest {
                max_archive: a,
                max_restore: r,
                max_remove: m,
                max_bytes: b
            }
        )),
        (any_u64(), fid(), errno()).prop_map(|(cookie, dfid, status)| Request::Done(DoneRequest {
            cookie,
            dfid,
            status
        })),
        (vec(hai(), 0..4), option::of(text()))
            .prop_map(|(items, fsname)| Request::Queue(QueueRequest { items, fsname })),
        any::<i32>().prop_map(|verbose| Request::Status(StatusRequest { verbose })),
        any::<i32>().prop_map(|locked| Request::Lock(LockRequest { locked })),
    ]
}

fn ack() -> impl Strategy<Value = AckReply> {
    (errno(), option::of(text())).prop_map(|(status, error)| AckReply { status, error })
}

fn client() -> impl Strategy<Value = ClientStatus> {
    let batch = (
        option::of(text()),
        any_u32(),
        any::<i64>(),
        any::<i64>(),
        dumps(),
    )
        .prop_map(
            |(hint, current_count, expire_idle_s, expire_max_s, waiting_archive)| BatchStatus {
                hint,
                current_count,
                expire_idle_s,
                expire_max_s,
                waiting_archive,
            },
        );
    (
        text(),
        (any::<i32>(), any::<i32>(), any::<i32>()),
        (any_u64(), any_u64(), any_u64()),
        proptest::sample::select(vec![
            ClientState::Init,
            ClientState::Ready,
            ClientState::Disconnected,
            ClientState::Waiting,
        ]),
        vec(batch, 0..3),
        any::<i64>(),
        (dumps(), dumps(), dumps(), dumps(), dumps()),
    )
        .prop_map(
            |(client_id, (cr, ca, cm), (dr, da, dm), status, batches, ts, (act, wr, wm, wa, c))| {
                ClientStatus {
                    client_id,
                    current_restore: cr,
                    current_archive: ca,
                    current_remove: cm,
                    done_restore: dr,
                    done_archive: da,
                    done_remove: dm,
                    status,
                    batches,
                    disconnected_timestamp: ts,
                    active_requests: act,
                    waiting_restore: wr,
                    waiting_remove: wm,
                    waiting_archive: wa,
                    cancels: c,
                }
            },
        )
}

fn reply() -> impl Strategy<Value = Reply> {
    let hal = (any_u32(), any_u64(), ".{0,8}", vec(hai(), 0..4)).prop_map(
        |(archive_id, flags, fsname, list)| WireHal {
            archive_id,
            flags,
            fsname,
            list,
        },
    );
    let status = (
        vec(any_u32(), 8),
        vec(any_u64(), 4),
        any::<i32>(),
        vec(client(), 0..3),
        (dumps(), dumps(), dumps()),
        ack(),
        option::of((
            prop_oneof![Just("embedded"), Just("redis"), Just("none")],
            prop_oneof![Just("ok"), Just("down")],
            any_u64(),
            option::of(".{1,12}"),
        )),
        option::of((prop_oneof![Just("ok"), Just("down")], option::of(".{1,12}"))),
    )
        .prop_map(
            |(u, d, locked, clients, (wr, wm, wa), ack, store, lustre)| {
                Reply::Status(Box::new(StatusReply {
                    running_restore: u[0],
                    running_archive: u[1],
                    running_remove: u[2],
                    pending_restore: u[3],
                    pending_archive: u[4],
                    pending_remove: u[5],
                    pending_cancel: u[6],
                    done_restore: d[0],
                    done_archive: d[1],
                    done_remove: d[2],
                    done_cancel: d[3],
                    clients_connected: u[7],
                    locked,
                    clients,
                    waiting_restore: wr,
                    waiting_remove: wm,
                    waiting_archive: wa,
                    store: store.map(|(kind, state, buffered_ops, error)| StoreStatus {
                        kind: kind.into(),
                        state: state.into(),
                        buffered_ops,
                        error,
                    }),
                    lustre: lustre.map(|(state, error)| LustreStatus {
                        state: state.into(),
                        error,
                    }),
                    status: ack.status,
                    error: ack.error,
                }))
            },
        );
    prop_oneof![
        ack().prop_map(Reply::Ehlo),
        ack().prop_map(Reply::Done),
        ack().prop_map(Reply::Lock),
        (option::of(hal), ack()).prop_map(|(hal, a)| Reply::Recv(RecvReply {
            hal,
            status: a.status,
            error: a.error
        })),
        (any_u64(), any_u64(), ack()).prop_map(|(enqueued, skipped, a)| Reply::Queue(QueueReply {
            enqueued,
            skipped,
            status: a.status,
            error: a.error
        })),
        status,
    ]
}

fn check_round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
    let bytes = to_vec(m);
    prop_assert!(!bytes.iter().any(|b| matches!(b, b'\n' | b'\r' | b'\t')));
    let back = M::decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(&back, m);
    Ok(())
}

/// Concatenates the encodings, optionally with whitespace between them, then feeds the
/// stream cut at `cuts` and collects everything decoded.
fn through_decoder<M: Message>(
    msgs: &[M],
    seps: &[&str],
    cuts: &[usize],
) -> Result<Vec<M>, String> {
    let mut stream = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        stream.extend_from_slice(seps[i % seps.len()].as_bytes());
        m.encode(&mut stream);
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        dec.feed(&stream[w[0]..w[1]]);
        while let Some(m) = dec.next_message::<M>().map_err(|e| e.to_string())? {
            out.push(m);
        }
    }
    if dec.is_mid_message() {
        return Err("partial message left".into());
    }
    Ok(out)
}

const SEPARATORS: &[&str] = &["", " ", "\n", "\r\n\t  "];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_round_trip(r in request()) {
        check_round_trip(&r)?;
    }

    #[test]
    fn reply_round_trip(r in reply()) {
        check_round_trip(&r)?;
    }

    #[test]
    fn hai_round_trip(h in hai()) {
        let json = serde_json::to_vec(&h).unwrap();
        prop_assert_eq!(serde_json::from_slice::<WireHai>(&json).unwrap(), h);
    }

    #[test]
    fn any_chunking_of_a_request_stream(
        msgs in vec(request(), 1..6),
        seps in proptest::sample::subsequence(SEPARATORS.to_vec(), 1..=4),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        prop_assert_eq!(through_decoder(&msgs, &seps, &cuts).map_err(TestCaseError::fail)?, msgs);
    }

    #[test]
    fn any_chunking_of_a_reply_stream(
        msgs in vec(reply(), 1..5),
        seps in proptest::sample::subsequence(SEPARATORS.to_vec(), 1..=4),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        prop_assert_eq!(through_decoder(&msgs, &seps, &cuts).map_err(TestCaseError::fail)?, msgs);
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once(msgs in vec(request(), 1..4)) {
        let mut stream = Vec::new();
        for m in &msgs { m.encode(&mut stream); }
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.feed(std::slice::from_ref(b));
            while let Some(m) = dec.next_message::<Request>().unwrap() { got.push(m); }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn u64_extremes_as_signed_or_unsigned(v in any_u64()) {
        for form in [(v as i64).to_string(), v.to_string()] {
            let json = format!(r#"{{"command":"done","hai_cookie":{form}}}"#);
            let Request::Done(d) = Request::decode(json.as_bytes()).unwrap() else { unreachable!() };
            prop_assert_eq!(d.cookie, v);
        }
        let d = Request::Done(DoneRequest { cookie: v, ..Default::default() });
        let text = String::from_utf8(to_vec(&d)).unwrap();
        let expected = format!(r#""hai_cookie":{}"#, v as i64);
        prop_assert!(text.contains(&expected), "{}", text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_lose_sync_of_a_valid_tail(
        junk in vec(any::<u8>(), 0..64),
        chunk in 1usize..16,
    ) {
        // Whatever precedes it, a valid message after a closing junk object still decodes
        // unless the junk left an unterminated string/object, in which case it is swallowed
        // (there is no way to tell); the decoder must simply not panic nor loop.
        let mut dec = Decoder::with_max_message_size(256);
        let mut stream = junk.clone();
        stream.extend_from_slice(br#"{"command":"status"}"#);
        for c in stream.chunks(chunk) {
            dec.feed(c);
            for _ in 0..200 {
                match dec.next_message::<Request>() {
                    Ok(None) => break,
                    _ => continue,
                }
            }
        }
        prop_assert!(dec.buffered() <= 256 + chunk);
    }
}
