//! Behaviour of the active_requests / actions parsers beyond the golden files, and
//! property tests (print -> parse round trip, garbage never panics).

use coordinatool_lustre::active_requests::{
    ActionRecord, ActiveRequest, AgentReqStatus, MAX_LINE_LEN, ParseErrorKind, parse_actions,
    parse_active_requests, parse_all, parse_all_actions,
};
use coordinatool_lustre::hal::{HsmExtent, LUSTRE_EOF};
use coordinatool_lustre::{HsmAction, LuFid};
use proptest::prelude::*;

const UPSTREAM_LINE_1: &str = "fid=[0x200005223:0x1cce:0x0] dfid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[] canceled=0 uuid=3185ca0b-2d34-47f6-b156-d6f9ee127a08 done=0";

const ACTIONS_LINE_215: &str = "lrh=[type=10680000 len=192 idx=520/36052] fid=[0x2000057b4:0x1d648:0x0] dfid=[0x2000057b4:0x1d648:0x0] compound/cookie=0x0/0x6913bb97 action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 datalen=50 status=STARTED data=[7461673D6D]";

#[test]
fn upstream_line_gives_the_values_of_the_c_parser() {
    // upstream §5.1: f_seq 8589955619, f_oid 7374, cookie 1635591151, extent length -1.
    let r: ActiveRequest = UPSTREAM_LINE_1.parse().unwrap();
    assert_eq!(r.fid, LuFid::new(8_589_955_619, 7374, 0));
    assert_eq!(r.dfid, r.fid);
    assert_eq!(r.cookie, 1_635_591_151);
    assert_eq!(r.compound_id, 0);
    assert_eq!(r.action, HsmAction::Archive);
    assert_eq!(r.archive_id, 1);
    assert_eq!(r.flags, 0);
    assert_eq!(r.extent, HsmExtent::new(0, LUSTRE_EOF));
    assert_eq!(r.gid, 0);
    assert!(r.data.is_empty());
    assert_eq!(r.canceled, Some(false));
    assert_eq!(
        r.uuid.as_deref(),
        Some("3185ca0b-2d34-47f6-b156-d6f9ee127a08")
    );
    assert_eq!(r.done, Some(0));
    let hai = r.to_action_item();
    assert_eq!(
        (hai.action, hai.fid, hai.cookie, hai.extent),
        (r.action, r.fid, r.cookie, r.extent)
    );
}

#[test]
fn fields_in_any_order_and_optional_tail() {
    let r: ActiveRequest = "gid=0x0 data=[0A0b] extent=0x10-0x20 action=RESTORE archive#=2 \
                            flags=0x4 compound/cookie=0/10 dfid=[0x1:0x2:0x0] fid=[0x1:0x2:0x0]"
        .parse()
        .unwrap();
    assert_eq!(r.data, [0x0a, 0x0b]);
    assert_eq!(r.extent, HsmExtent::new(0x10, 0x20));
    assert_eq!(r.cookie, 10);
    assert_eq!((r.canceled, r.uuid, r.done), (None, None, None));
}

#[test]
fn base0_numbers_in_fields() {
    let line = UPSTREAM_LINE_1
        .replace("archive#=1", "archive#=010")
        .replace("gid=0x0", "gid=17");
    let r: ActiveRequest = line.parse().unwrap();
    assert_eq!(r.archive_id, 8);
    assert_eq!(r.gid, 17);
}

#[test]
fn an_actions_line_is_also_an_active_request() {
    let r: ActiveRequest = ACTIONS_LINE_215.parse().unwrap();
    assert_eq!(r.cookie, 0x6913_bb97);
    assert_eq!(r.data, b"tag=m");
    assert!(r.data_maybe_truncated());
    let a: ActionRecord = ACTIONS_LINE_215.parse().unwrap();
    assert_eq!(a.status, AgentReqStatus::Started);
    assert_eq!(
        (a.lrh_type, a.lrh_len, a.cat_idx, a.rec_idx),
        (0x1068_0000, 192, 520, 36052)
    );
    assert_eq!(a.datalen, 50);
    assert!(a.data_truncated());
    assert_eq!(a.to_action_item(), r.to_action_item());
}

#[test]
fn crlf_line_ends_are_accepted() {
    let text = format!(
        "mdt.fs-MDT0000.hsm.active_requests=\r\n{UPSTREAM_LINE_1}\r\n\r\n{UPSTREAM_LINE_1}\r\n"
    );
    let all = parse_all(&text).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].line, 4);
    assert_eq!(
        all[0].uuid.as_deref(),
        Some("3185ca0b-2d34-47f6-b156-d6f9ee127a08")
    );
    assert_eq!(all[0].mdt.as_deref(), Some("fs-MDT0000"));
}

#[test]
fn text_after_the_last_newline_is_parsed() {
    let text = format!("{UPSTREAM_LINE_1}\n{UPSTREAM_LINE_1}");
    assert_eq!(parse_all(&text).unwrap().len(), 2);
    // A line cut short at EOF fails on its missing fields, with its line number.
    let cut = format!("{UPSTREAM_LINE_1}\n{}", &UPSTREAM_LINE_1[..120]);
    let e = parse_all(&cut).unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(e.field(), Some("flags"));
}

#[test]
fn parse_all_stops_at_the_first_error_but_the_iterator_goes_on() {
    let bad = UPSTREAM_LINE_1.replace("action=ARCHIVE", "action=archive");
    let text = format!("{UPSTREAM_LINE_1}\n{bad}\n{UPSTREAM_LINE_1}\n{bad}\n");
    let e = parse_all(&text).unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(e.field(), Some("action"));
    assert!(e.to_string().starts_with("line 2: field `action`"), "{e}");
    let results: Vec<_> = parse_active_requests(&text).collect();
    assert_eq!(results.len(), 4);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
}

#[test]
fn overlong_line_is_an_error_and_the_next_line_still_parses() {
    let long = format!("{UPSTREAM_LINE_1} pad={}", "x".repeat(MAX_LINE_LEN));
    let text = format!("{long}\n{UPSTREAM_LINE_1}\n");
    let results: Vec<_> = parse_active_requests(&text).collect();
    assert_eq!(results.len(), 2);
    let e = results[0].as_ref().unwrap_err();
    assert_eq!(e.line, 1);
    assert_eq!(
        e.kind,
        ParseErrorKind::LineTooLong {
            len: long.len(),
            max: MAX_LINE_LEN
        }
    );
    assert_eq!(results[1].as_ref().unwrap().line, 2);
    // Exactly at the limit is fine (unknown `pad=` field ignored).
    let pad = MAX_LINE_LEN - UPSTREAM_LINE_1.len() - " pad=".len();
    let at_limit = format!("{UPSTREAM_LINE_1} pad={}", "x".repeat(pad));
    assert_eq!(at_limit.len(), MAX_LINE_LEN);
    assert!(parse_all(&at_limit).is_ok());
}

#[test]
fn malformed_fid_is_an_error() {
    for bad in [
        "[0x1:0x2]",
        "0x1:0x2:0x0",
        "[0x1:0x2:0x100000000]",
        "[0x1:zz:0x0]",
        "[]",
    ] {
        let line =
            UPSTREAM_LINE_1.replace("fid=[0x200005223:0x1cce:0x0] d", &format!("fid={bad} d"));
        let e = line.parse::<ActiveRequest>().unwrap_err();
        assert_eq!(e.field(), Some("fid"), "{bad}: {e}");
    }
}

#[test]
fn empty_inputs() {
    assert!(parse_all("").unwrap().is_empty());
    assert!(parse_all("\n\n  \n").unwrap().is_empty());
    assert!(
        parse_all("mdt.a-MDT0000.hsm.active_requests=\nmdt.a-MDT0001.hsm.active_requests=\n")
            .unwrap()
            .is_empty()
    );
    assert!(
        parse_all_actions("mdt.a-MDT0000.hsm.actions=\n")
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------- property tests

fn fid() -> impl Strategy<Value = LuFid> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, o, v)| LuFid::new(s, o, v))
}

fn request() -> impl Strategy<Value = ActiveRequest> {
    (
        (fid(), fid(), any::<u64>(), any::<u64>()),
        prop::sample::select(HsmAction::ALL.to_vec()),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        prop::collection::vec(any::<u8>(), 0..12),
        (
            prop::option::of(any::<bool>()),
            prop::option::of("[0-9a-f-]{0,36}"),
            prop::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (fid, dfid, compound_id, cookie),
                action,
                (archive_id, flags, off, len, gid),
                data,
                (canceled, uuid, done),
            )| {
                ActiveRequest {
                    fid,
                    dfid,
                    compound_id,
                    cookie,
                    action,
                    archive_id,
                    flags,
                    extent: HsmExtent::new(off, len),
                    gid,
                    data,
                    canceled,
                    uuid,
                    done,
                    line: 1,
                    mdt: None,
                }
            },
        )
}

fn record() -> impl Strategy<Value = ActionRecord> {
    (
        request(),
        any::<(u32, u32, u32, u32)>(),
        any::<u32>(),
        prop::sample::select(AgentReqStatus::ALL.to_vec()),
    )
        .prop_map(
            |(r, (lrh_type, lrh_len, cat_idx, rec_idx), datalen, status)| ActionRecord {
                lrh_type,
                lrh_len,
                cat_idx,
                rec_idx,
                fid: r.fid,
                dfid: r.dfid,
                compound_id: r.compound_id,
                cookie: r.cookie,
                action: r.action,
                archive_id: r.archive_id,
                flags: r.flags,
                extent: r.extent,
                gid: r.gid,
                datalen,
                status,
                data: r.data,
                line: 1,
                mdt: None,
            },
        )
}

proptest! {
    #[test]
    fn active_request_print_parse_round_trip(r in request()) {
        let text = r.to_string();
        prop_assert_eq!(text.parse::<ActiveRequest>().unwrap(), r);
    }

    #[test]
    fn action_record_print_parse_round_trip(r in record()) {
        let text = r.to_string();
        prop_assert_eq!(text.parse::<ActionRecord>().unwrap(), r);
    }

    #[test]
    fn lctl_listing_round_trip(
        mdts in prop::collection::vec(prop::collection::vec(request(), 0..4), 1..4),
        crlf in any::<bool>(),
    ) {
        // One header per MDT; a single request goes on the header line, as lctl prints it.
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        let mut expected = Vec::new();
        let mut line = 0;
        for (i, reqs) in mdts.iter().enumerate() {
            let mdt = format!("fs-MDT{i:04x}");
            text.push_str(&format!("mdt.{mdt}.hsm.active_requests="));
            line += 1;
            if reqs.len() == 1 {
                text.push_str(&reqs[0].to_string());
                let mut r = reqs[0].clone();
                r.line = line;
                r.mdt = Some(mdt.clone());
                expected.push(r);
                text.push_str(nl);
                continue;
            }
            text.push_str(nl);
            for r in reqs {
                line += 1;
                text.push_str(&r.to_string());
                text.push_str(nl);
                let mut r = r.clone();
                r.line = line;
                r.mdt = Some(mdt.clone());
                expected.push(r);
            }
        }
        prop_assert_eq!(parse_all(&text).unwrap(), expected);
    }

    #[test]
    fn garbage_never_panics(text in "\\PC{0,400}") {
        for r in parse_active_requests(&text) {
            if let Err(e) = r {
                prop_assert!(e.line >= 1);
            }
        }
        for _ in parse_actions(&text) {}
    }

    #[test]
    fn mutated_lines_never_panic(
        r in record(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![' ', '[', ']', '=', '\n', '-', '/', 'x', '0', '\r'])), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut chars: Vec<char> = r.to_string().chars().collect();
        for (at, c) in edits {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        let text: String = chars.into_iter().collect();
        let text = &text[..cut.index(text.len() + 1)];
        for _ in parse_active_requests(text) {}
        for _ in parse_actions(text) {}
    }
}
