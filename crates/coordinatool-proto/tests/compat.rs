//! Wire conventions, upstream fixes and error handling.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    BatchStatus, ClientState, ClientStatus, Command, DecodeError, Decoder, DoneRequest, DumpEntry,
    EhloRequest, FrameError, PROTOCOL_VERSION, QueueRequest, RecvReply, RecvRequest, Reply,
    Request, StatusReply, WireHai, WireHal, to_vec,
};

fn text<M: coordinatool_proto::Message>(m: &M) -> String {
    String::from_utf8(to_vec(m)).unwrap()
}

fn hai() -> WireHai {
    let mut h = WireHai::new(HsmAction::Restore, LuFid::new(0x200000401, 7, 0), 42);
    h.archive_id = 3;
    h
}

#[test]
fn u64_fields_are_written_as_i64_images_and_read_from_both_forms() {
    let mut h = hai();
    h.extent_offset = 1 << 63;
    h.cookie = u64::MAX - 1;
    h.gid = u64::MAX;
    h.flags = 0x8000_0000_0000_0001;
    h.fid = LuFid::new(u64::MAX, u32::MAX, 7);
    let json = serde_json::to_string(&h).unwrap();
    assert!(
        json.contains(r#""hai_extent_offset":-9223372036854775808"#),
        "{json}"
    );
    assert!(json.contains(r#""hai_extent_length":-1"#), "{json}");
    assert!(json.contains(r#""hai_cookie":-2"#), "{json}");
    assert!(json.contains(r#""hai_gid":-1"#), "{json}");
    assert!(
        json.contains(r#""hal_flags":-9223372036854775807"#),
        "{json}"
    );
    assert!(json.contains(r#""f_seq":-1,"f_oid":4294967295"#), "{json}");
    assert_eq!(serde_json::from_str::<WireHai>(&json).unwrap(), h);

    // Positive u64 forms and i32 images of u32 are accepted too.
    let positive = json
        .replace("-9223372036854775808", "9223372036854775808")
        .replace(r#""hai_gid":-1"#, r#""hai_gid":18446744073709551615"#)
        .replace(r#""f_oid":4294967295"#, r#""f_oid":-1"#);
    assert_eq!(serde_json::from_str::<WireHai>(&positive).unwrap(), h);
}

#[test]
fn zero_fields_are_omitted_except_in_hai_and_fid() {
    let d = DoneRequest {
        cookie: 5,
        dfid: LuFid::default(),
        status: 0,
    };
    assert_eq!(
        text(&Request::Done(d)),
        r#"{"command":"done","hai_cookie":5,"hai_dfid":{"f_seq":0,"f_oid":0,"f_ver":0}}"#
    );
    let h = WireHai::new(HsmAction::Archive, LuFid::default(), 0);
    assert_eq!(
        serde_json::to_string(&h).unwrap(),
        r#"{"hai_action":20,"hai_fid":{"f_seq":0,"f_oid":0,"f_ver":0},"hai_dfid":{"f_seq":0,"f_oid":0,"f_ver":0},"hai_extent_offset":0,"hai_extent_length":-1,"hai_cookie":0,"hai_gid":0,"hal_archive_id":0,"hal_flags":0,"hai_data":"","timestamp":0}"#
    );
    assert_eq!(
        text(&Reply::Queue(Default::default())),
        r#"{"command":"queue"}"#
    );
    assert_eq!(
        text(&Reply::Status(Box::default())),
        r#"{"command":"status","clients":[]}"#
    );
    let e = EhloRequest {
        id: Some(String::new()),
        fsname: None,
        ..EhloRequest::default()
    };
    assert_eq!(text(&Request::Ehlo(e)), r#"{"command":"ehlo"}"#);
}

#[test]
fn missing_keys_read_as_zero_and_unknown_keys_are_ignored() {
    let Request::Done(d) = Request::decode(br#"{"command":"done","extra":{"x":[1,2]}}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(d, DoneRequest::default());
    let h: WireHai = serde_json::from_str(r#"{"hai_action":22,"future_key":"x"}"#).unwrap();
    assert_eq!(h.fid, LuFid::default());
    assert_eq!(
        (h.extent_length, h.cookie, h.data.len(), h.timestamp),
        (0, 0, 0, 0)
    );
    // Defaults that the C server applies to absent keys.
    let Request::Recv(r) = Request::decode(br#"{"command":"recv"}"#).unwrap() else {
        panic!()
    };
    assert_eq!(r, RecvRequest::default());
    assert_eq!((r.max_archive, r.max_bytes), (None, 1048576));
    let Request::Status(s) = Request::decode(br#"{"command":"status"}"#).unwrap() else {
        panic!()
    };
    assert_eq!(s.verbose, 4);
}

#[test]
fn hai_action_is_required_and_checked() {
    let err = serde_json::from_str::<WireHai>(r#"{"hai_fid":{"f_seq":1,"f_oid":2,"f_ver":3}}"#)
        .unwrap_err();
    assert!(err.to_string().contains("hai_action"), "{err}");
    let err = serde_json::from_str::<WireHai>(r#"{"hai_action":99}"#).unwrap_err();
    assert!(err.to_string().contains("HSM action code"), "{err}");
}

#[test]
fn fid_object_is_strict() {
    let extra =
        br#"{"command":"done","hai_cookie":1,"hai_dfid":{"f_seq":1,"f_oid":2,"f_ver":0,"f_x":1}}"#;
    let err = Request::decode(extra).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Invalid {
                command: Command::Done,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("f_x"), "{err}");
    let missing = br#"{"command":"done","hai_cookie":1,"hai_dfid":{"f_seq":1,"f_oid":2}}"#;
    let err = Request::decode(missing).unwrap_err();
    assert!(err.to_string().contains("f_ver"), "{err}");
    let in_hai = r#"{"hai_action":20,"hai_fid":{"f_seq":1,"f_oid":2,"f_ver":0,"seq":1}}"#;
    assert!(serde_json::from_str::<WireHai>(in_hai).is_err());
}

#[test]
fn full_64_bit_cookies_and_truncated_c_cookies() {
    let full = 0x1_2345_6789u64;
    let d = DoneRequest {
        cookie: full,
        dfid: LuFid::new(1, 2, 0),
        status: 0,
    };
    let Request::Done(back) = Request::decode(&to_vec(&Request::Done(d))).unwrap() else {
        panic!()
    };
    assert_eq!(back.cookie, full);
    assert!(!back.cookie_may_be_truncated());
    assert!(back.cookie_matches(full) && !back.cookie_matches(full + (1 << 32)));

    // An old C client packs (int)cookie: the low 32 bits, sign-extended.
    let real = 0x0000_0001_9000_0001u64;
    let sent = real as u32 as i32; // negative
    assert!(sent < 0);
    let json = format!(
        r#"{{"command":"done","hai_cookie":{sent},"hai_dfid":{{"f_seq":1,"f_oid":2,"f_ver":0}}}}"#
    );
    let Request::Done(old) = Request::decode(json.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(old.cookie_low32(), real as u32);
    assert!(old.cookie_may_be_truncated());
    assert!(old.cookie_matches(real));
    assert!(!old.cookie_matches(real + 1));

    // A small positive cookie from an old client is either exact or truncated.
    let Request::Done(small) =
        Request::decode(br#"{"command":"done","hai_cookie":1764690165}"#).unwrap()
    else {
        panic!()
    };
    assert!(small.cookie_may_be_truncated());
    assert!(small.cookie_matches(1764690165) && small.cookie_matches((7 << 32) | 1764690165));
}

#[test]
fn hai_data_with_nul_travels_as_escaped_string() {
    let mut h = hai();
    h.data = b"ab\0cd\0\0\0".to_vec();
    let json = serde_json::to_string(&h).unwrap();
    assert!(
        json.contains(r#""hai_data":"ab\u0000cd\u0000\u0000\u0000""#),
        "{json}"
    );
    assert!(!json.contains("hai_data_b64"), "{json}");
    assert_eq!(serde_json::from_str::<WireHai>(&json).unwrap().data, h.data);
}

#[test]
fn non_utf8_hai_data_adds_base64_and_is_never_lost() {
    let mut h = hai();
    h.data = vec![0xff, b'a', 0, 0xc3];
    let json = serde_json::to_string(&h).unwrap();
    assert!(
        json.contains("\"hai_data\":\"\u{fffd}a\\u0000\u{fffd}\""),
        "{json}"
    );
    assert!(json.contains(r#""hai_data_b64":"/2EAww==""#), "{json}");
    assert_eq!(serde_json::from_str::<WireHai>(&json).unwrap(), h);
    // hai_data_b64 wins over hai_data whatever the order.
    let swapped = r#"{"hai_data_b64":"AQI=","hai_action":20,"hai_data":"zz"}"#;
    assert_eq!(
        serde_json::from_str::<WireHai>(swapped).unwrap().data,
        vec![1, 2]
    );
    let bad = r#"{"hai_action":20,"hai_data_b64":"%%%"}"#;
    let err = serde_json::from_str::<WireHai>(bad).unwrap_err();
    assert!(err.to_string().contains("hai_data_b64"), "{err}");
    // The same encoding is used in status dumps.
    let e = DumpEntry {
        fid: LuFid::new(1, 2, 3),
        cookie: u64::MAX,
        data: vec![0x80],
    };
    let json = serde_json::to_string(&e).unwrap();
    assert!(
        json.contains(r#""hai_cookie":-1"#) && json.contains("hai_data_b64"),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<DumpEntry>(&json).unwrap(), e);
}

/// A dump entry keeps upstream's `hai_fid` (holding the dfid) and adds `hai_dfid` beside it;
/// the C server's entries (no `hai_dfid`) still read.
#[test]
fn dump_entries_write_the_dfid_under_hai_fid_and_hai_dfid() {
    let e = DumpEntry {
        fid: LuFid::new(0x200000401, 7, 0),
        cookie: 5,
        data: b"x".to_vec(),
    };
    let f = r#"{"f_seq":8589935617,"f_oid":7,"f_ver":0}"#;
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        format!(r#"{{"hai_fid":{f},"hai_dfid":{f},"hai_cookie":5,"hai_data":"x"}}"#)
    );
    let c = r#"{"hai_fid": {"f_seq": 8589935617, "f_oid": 7, "f_ver": 0}, "hai_cookie": 5, "hai_data": "x"}"#;
    assert_eq!(serde_json::from_str::<DumpEntry>(c).unwrap(), e);
    let both = r#"{"hai_fid":{"f_seq":1,"f_oid":1,"f_ver":0},"hai_dfid":{"f_seq":8589935617,"f_oid":7,"f_ver":0},"hai_cookie":5,"hai_data":"x"}"#;
    assert_eq!(serde_json::from_str::<DumpEntry>(both).unwrap(), e);
    let null = r#"{"hai_fid":{"f_seq":8589935617,"f_oid":7,"f_ver":0},"hai_dfid":null,"hai_cookie":5,"hai_data":"x"}"#;
    assert_eq!(serde_json::from_str::<DumpEntry>(null).unwrap(), e);
}

#[test]
fn queue_reads_fsname_and_hal_fsname() {
    let dec = |j: &str| match Request::decode(j.as_bytes()).unwrap() {
        Request::Queue(q) => q,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        dec(r#"{"command":"queue","fsname":"a"}"#).fsname.as_deref(),
        Some("a")
    );
    assert_eq!(
        dec(r#"{"command":"queue","hal_fsname":"b"}"#)
            .fsname
            .as_deref(),
        Some("b")
    );
    assert_eq!(
        dec(r#"{"hal_fsname":"b","command":"queue","fsname":"a"}"#)
            .fsname
            .as_deref(),
        Some("a")
    );
    assert_eq!(dec(r#"{"command":"queue"}"#), QueueRequest::default());
}

#[test]
fn ehlo_version_is_written_by_us_and_optional_on_read() {
    let e = EhloRequest::new(Some("mover-1".into()));
    assert_eq!(
        text(&Request::Ehlo(e.clone())),
        format!(r#"{{"command":"ehlo","id":"mover-1","version":{PROTOCOL_VERSION}}}"#)
    );
    assert_eq!(
        Request::decode(&to_vec(&Request::Ehlo(e.clone()))).unwrap(),
        Request::Ehlo(e)
    );
    let Request::Ehlo(c) = Request::decode(br#"{"command":"ehlo","archive_ids":[-1]}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!((c.version, c.archive_ids), (None, vec![u32::MAX]));
}

#[test]
fn recv_limits_unlimited_is_minus_one_and_zero_is_kept() {
    let r = RecvRequest {
        max_archive: None,
        max_restore: Some(0),
        max_remove: Some(u32::MAX),
        max_bytes: 172,
    };
    let t = text(&Request::Recv(r));
    assert_eq!(
        t,
        r#"{"command":"recv","max_archive":-1,"max_restore":0,"max_remove":-1,"max_bytes":172}"#
    );
    let Request::Recv(back) = Request::decode(t.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(
        (back.max_archive, back.max_restore, back.max_remove),
        (None, Some(0), None)
    );
    let Request::Recv(big) =
        Request::decode(br#"{"command":"recv","max_archive":4294967295,"max_remove":-7}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!((big.max_archive, big.max_remove), (None, None));
}

#[test]
fn error_statuses_are_positive() {
    let r = Reply::error(Command::Queue, -22, "Error while parsing hsm action items");
    assert_eq!(
        text(&r),
        r#"{"command":"queue","status":22,"error":"Error while parsing hsm action items"}"#
    );
    let c = br#"{"command": "queue", "enqueued": 2, "skipped": 1, "status": -22, "error": "Error while parsing hsm action items"}"#;
    let Reply::Queue(q) = Reply::decode(c).unwrap() else {
        panic!()
    };
    assert_eq!((q.enqueued, q.skipped, q.status), (2, 1, 22));
    let Request::Done(d) = Request::decode(br#"{"command":"done","status":-5}"#).unwrap() else {
        panic!()
    };
    assert_eq!(d.status, 5);
    // The ehlo "bad archive id" error comes back as a done reply from the C server.
    let r =
        Reply::decode(br#"{"command": "done", "status": 22, "error": "Bad archive id in list"}"#)
            .unwrap();
    assert_eq!((r.command(), r.status()), (Command::Done, 22));
    for cmd in Command::ALL {
        let r = Reply::error(cmd, 17, "x");
        assert_eq!(
            (r.command(), r.status(), r.error_message()),
            (cmd, 17, Some("x"))
        );
        assert_eq!(Reply::decode(&to_vec(&r)).unwrap(), r);
        assert!(Reply::ok(cmd).is_ok());
    }
}

#[test]
fn recv_reply_requires_hal_version_1() {
    for bad in [
        r#"{"command":"recv","hsm_action_list":{"hal_version":2,"hal_archive_id":1,"list":[]}}"#,
        r#"{"command":"recv","hsm_action_list":{"hal_archive_id":1,"list":[]}}"#,
    ] {
        let err = Reply::decode(bad.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Invalid {
                    command: Command::Recv,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("hal_version"), "{err}");
    }
    let hal = WireHal {
        archive_id: 2,
        flags: u64::MAX,
        fsname: "fs".into(),
        list: vec![hai()],
    };
    let r = Reply::Recv(RecvReply {
        hal: Some(hal),
        ..Default::default()
    });
    let t = text(&r);
    assert!(t.starts_with(r#"{"command":"recv","hsm_action_list":{"hal_version":1,"hal_archive_id":2,"hal_flags":-1,"hal_fsname":"fs","list":[{"#), "{t}");
    assert_eq!(Reply::decode(t.as_bytes()).unwrap(), r);
}

#[test]
fn verbose_status_reply_round_trips() {
    let entry = |c| DumpEntry {
        fid: LuFid::new(0x200000401, c as u32, 0),
        cookie: c,
        data: b"tag=x".to_vec(),
    };
    let s = StatusReply {
        running_restore: 1,
        pending_cancel: 4,
        done_cancel: u64::MAX,
        locked: 2,
        clients: vec![ClientStatus {
            client_id: "agent_1".into(),
            current_restore: -1,
            status: ClientState::Disconnected,
            disconnected_timestamp: 1765010112108091220,
            batches: vec![BatchStatus {
                hint: Some("proj1".into()),
                current_count: 3,
                expire_idle_s: 1765010112,
                expire_max_s: 1765010200,
                waiting_archive: Some(vec![entry(9)]),
            }],
            active_requests: Some(vec![entry(1)]),
            waiting_restore: Some(vec![]),
            waiting_remove: Some(vec![]),
            waiting_archive: Some(vec![entry(2), entry(3)]),
            cancels: Some(vec![]),
            ..Default::default()
        }],
        waiting_restore: Some(vec![entry(4)]),
        waiting_remove: Some(vec![]),
        waiting_archive: Some(vec![entry(5)]),
        ..Default::default()
    };
    let r = Reply::Status(Box::new(s));
    let t = text(&r);
    assert!(
        t.contains(r#""waiting_remove":[]"#) && t.contains(r#""status":"disconnected""#),
        "{t}"
    );
    assert_eq!(Reply::decode(t.as_bytes()).unwrap(), r);
    let err =
        Reply::decode(br#"{"command":"status","clients":[{"client_id":"a","status":"sleeping"}]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("sleeping"), "{err}");
}

#[test]
fn dispatch_errors_are_typed() {
    let err = Request::decode(br#"{"verbose": 4}"#).unwrap_err();
    assert!(matches!(err, DecodeError::MissingCommand), "{err}");
    let err = Request::decode(br#"{"command": "cancel"}"#).unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnknownCommand(c) if c == "cancel"),
        "{err}"
    );
    assert_eq!(err.to_string(), r#"unknown command "cancel""#);
    let err = Request::decode(br#"{"command": 3}"#).unwrap_err();
    assert!(matches!(err, DecodeError::Json(_)), "{err}");
    let err = Request::decode(br#"{"command": "lock", "locked": "yes"}"#).unwrap_err();
    assert_eq!(err.command(), Some(Command::Lock));
    assert!(err.to_string().contains("invalid lock message"), "{err}");
    let err = Request::decode(b"{\"command\": \"done\", \"hai_cookie\": 1.5}").unwrap_err();
    assert!(err.to_string().contains("floating point"), "{err}");
    assert!(matches!(
        Request::decode(b"{\"command\":\"lo\xffck\"}"),
        Err(DecodeError::NotUtf8 { offset: 14 })
    ));
}

#[test]
fn decoder_reports_garbage_and_continues() {
    let mut dec = Decoder::new();
    dec.feed(br#"garbage{"command":"status"}[1,2]{"command":"nope"}{"command":"lock","locked":2}"#);
    assert!(matches!(
        dec.next_message::<Request>(),
        Err(DecodeError::Frame(FrameError::NotAnObject { byte: b'g' }))
    ));
    assert!(matches!(
        dec.next_message::<Request>(),
        Ok(Some(Request::Status(_)))
    ));
    assert!(matches!(
        dec.next_message::<Request>(),
        Err(DecodeError::Frame(FrameError::NotAnObject { byte: b'[' }))
    ));
    assert!(matches!(
        dec.next_message::<Request>(),
        Err(DecodeError::UnknownCommand(_))
    ));
    assert!(matches!(dec.next_message::<Request>(), Ok(Some(Request::Lock(l))) if l.locked == 2));
    assert!(matches!(dec.next_message::<Request>(), Ok(None)));
}

#[test]
fn decoder_rejects_oversize_without_buffering_it_and_continues() {
    let mut dec = Decoder::with_max_message_size(1024);
    let mut big = br#"{"command":"status","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 10_000));
    big.extend_from_slice(br#""}"#);
    let mut errors = 0;
    let mut got = Vec::new();
    let mut max_buffered = 0;
    let stream = [big.as_slice(), br#"{"command":"done","hai_cookie":9}"#].concat();
    for c in stream.chunks(100) {
        dec.feed(c);
        max_buffered = max_buffered.max(dec.buffered());
        loop {
            match dec.next_message::<Request>() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(DecodeError::Frame(FrameError::TooLarge { max: 1024 })) => errors += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(errors, 1);
    assert!(max_buffered <= 1024 + 100, "{max_buffered}");
    assert!(matches!(got.as_slice(), [Request::Done(d)] if d.cookie == 9));
}

#[test]
fn truncated_stream_yields_nothing_and_keeps_the_bytes() {
    let full = to_vec(&Request::Done(DoneRequest {
        cookie: 77,
        dfid: LuFid::new(1, 2, 3),
        status: 0,
    }));
    for cut in 0..full.len() {
        let mut dec = Decoder::new();
        dec.feed(&full[..cut]);
        assert!(
            matches!(dec.next_message::<Request>(), Ok(None)),
            "cut {cut}"
        );
        assert_eq!(dec.buffered(), cut);
        assert_eq!(dec.is_mid_message(), cut > 0);
        dec.feed(&full[cut..]);
        assert!(
            matches!(dec.next_message::<Request>(), Ok(Some(Request::Done(d))) if d.cookie == 77),
            "cut {cut}"
        );
        assert!(!dec.is_mid_message());
    }
}

#[test]
fn invalid_json_inside_an_object_is_one_error() {
    let mut dec = Decoder::new();
    dec.feed(br#"{"command":"done","hai_cookie":}{"command":"done","hai_cookie":3}"#);
    let err = dec.next_message::<Request>().unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Invalid {
                command: Command::Done,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(dec.next_message::<Request>(), Ok(Some(Request::Done(d))) if d.cookie == 3));
}
