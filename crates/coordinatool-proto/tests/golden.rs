//! Every example message of the upstream protocol description (§2 of the reference),
//! verbatim with the C writers' `", "` / `": "` spacing: decoded, checked field by field,
//! re-encoded and decoded again.

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    ClientState, Command, Decoder, LockState, Message, Reply, Request, WireHai, to_vec,
};

/// Decodes `json`, re-encodes it, checks the encoding is compact and decodes to the same value.
fn round_trip<M: Message + PartialEq + std::fmt::Debug>(json: &str) -> M {
    let msg = M::decode(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
    let bytes = to_vec(&msg);
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with(&format!(r#"{{"command":"{}""#, msg.command())),
        "{text}"
    );
    assert!(
        !text.contains(": ") && !text.contains(", ") && !text.contains('\n'),
        "{text}"
    );
    let again = M::decode(&bytes).unwrap();
    assert_eq!(again, msg);
    msg
}

/// The fid used by the reference's ehlo/recv/done examples.
const FID_A: LuFid = LuFid::new(8589937623, 2905, 0);

fn check_example_hai(h: &WireHai, timestamp: i64) {
    assert_eq!(h.action, HsmAction::Archive);
    assert_eq!(h.fid, FID_A);
    assert_eq!(h.dfid, FID_A);
    assert_eq!(h.extent_offset, 0);
    assert_eq!(h.extent_length, u64::MAX);
    assert_eq!(h.cookie, 1764690165);
    assert_eq!(h.gid, 0);
    assert_eq!(h.archive_id, 1);
    assert_eq!(h.flags, 0);
    assert_eq!(h.data, b"");
    assert_eq!(h.timestamp, timestamp);
}

const EHLO_FIRST: &str =
    r#"{"command": "ehlo", "fsname": "testfs0", "archive_ids": [1, 2], "id": "agent_1"}"#;
const EHLO_RECONNECT: &str = r#"{"command": "ehlo", "fsname": "testfs0", "hai_list": [{"hai_action": 20, "hai_fid": {"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}, "hai_dfid": {"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}, "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": 1764690165, "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": "", "timestamp": 1765010112108091220}], "id": "agent_1"}"#;
const EHLO_REPLY: &str = r#"{"command": "ehlo"}"#;
const RECV_REQUEST: &str = r#"{"command": "recv", "max_archive": 3, "max_restore": 3, "max_remove": 3, "max_bytes": 1048576}"#;
const RECV_REPLY: &str = r#"{"hsm_action_list": {"hal_version": 1, "hal_archive_id": 1, "hal_fsname": "testfs0",
     "list": [{"hai_action": 20, "hai_fid": {"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0},
               "hai_dfid": {"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0},
               "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": 1764690165,
               "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": "",
               "timestamp": 1765010112108091220}]},
     "command": "recv"}"#;
const DONE_REQUEST: &str = r#"{"command": "done", "hai_cookie": 1764690165, "hai_dfid": {"f_seq": 8589937623, "f_oid": 2905, "f_ver": 0}, "status": 0}"#;
const DONE_REPLY: &str = r#"{"command": "done"}"#;
const QUEUE_REQUEST: &str = r#"{"hal_fsname": "testfs0", "hsm_action_items": [{"hai_action": 20, "hai_fid": {"f_seq": 8589955619, "f_oid": 7374, "f_ver": 0}, "hai_dfid": {"f_seq": 8589955619, "f_oid": 7374, "f_ver": 0}, "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": 1635591151, "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": ""}], "command": "queue"}"#;
const QUEUE_REPLY: &str = r#"{"command": "queue", "enqueued": 1}"#;
const STATUS_REQUEST: &str = r#"{"command": "status", "verbose": 4}"#;
const STATUS_REPLY: &str = r#"{"command": "status", "running_archive": 3, "pending_archive": 7, "done_archive": 12,
     "clients_connected": 2,
     "clients": [{"client_id": "localhost:38904", "status": "ready", "batches": []},
                 {"client_id": "agent_1", "current_archive": 3, "done_archive": 12,
                  "status": "waiting", "batches": []}]}"#;
const LOCK_REQUEST: &str = r#"{"command": "lock", "locked": 1}"#;
const LOCK_REPLY: &str = r#"{"command": "lock"}"#;
const LOCK_ERROR_REPLY: &str =
    r#"{"command": "lock", "status": -22, "error": "invalid locked value"}"#;
/// The first line of `tests/parse_active_requests.data` as the CLI's `-Q` turns it into a hai.
const CLI_QUEUE_HAI: &str = r#"{"hai_action": 20, "hai_fid": {"f_seq": 8589955619, "f_oid": 7374, "f_ver": 0}, "hai_dfid": {"f_seq": 8589955619, "f_oid": 7374, "f_ver": 0}, "hai_extent_offset": 0, "hai_extent_length": -1, "hai_cookie": 1635591151, "hai_gid": 0, "hal_archive_id": 1, "hal_flags": 0, "hai_data": ""}"#;

#[test]
fn ehlo_first_connection() {
    let Request::Ehlo(e) = round_trip::<Request>(EHLO_FIRST) else {
        panic!("not ehlo")
    };
    assert_eq!(e.id.as_deref(), Some("agent_1"));
    assert_eq!(e.fsname.as_deref(), Some("testfs0"));
    assert_eq!(e.archive_ids, vec![1, 2]);
    assert!(e.hai_list.is_empty());
    assert_eq!(e.version, None, "C peers send no version");
}

#[test]
fn ehlo_reconnect_with_running_action() {
    let Request::Ehlo(e) = round_trip::<Request>(EHLO_RECONNECT) else {
        panic!("not ehlo")
    };
    assert_eq!(e.id.as_deref(), Some("agent_1"));
    assert!(e.archive_ids.is_empty());
    assert_eq!(e.hai_list.len(), 1);
    check_example_hai(&e.hai_list[0], 1765010112108091220);
}

#[test]
fn ack_replies() {
    for (json, command) in [
        (EHLO_REPLY, Command::Ehlo),
        (DONE_REPLY, Command::Done),
        (LOCK_REPLY, Command::Lock),
    ] {
        let r = round_trip::<Reply>(json);
        assert_eq!(r.command(), command);
        assert!(r.is_ok());
        assert_eq!(r.error_message(), None);
        assert_eq!(
            to_vec(&r),
            format!(r#"{{"command":"{command}"}}"#).into_bytes()
        );
    }
}

#[test]
fn recv_request() {
    let Request::Recv(r) = round_trip::<Request>(RECV_REQUEST) else {
        panic!("not recv")
    };
    assert_eq!(
        (r.max_archive, r.max_restore, r.max_remove),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(r.max_bytes, 1048576);
}

#[test]
fn recv_reply_with_hal() {
    let Reply::Recv(r) = round_trip::<Reply>(RECV_REPLY) else {
        panic!("not recv")
    };
    assert!(r.status == 0 && r.error.is_none());
    let hal = r.hal.expect("hsm_action_list");
    assert_eq!(hal.archive_id, 1);
    assert_eq!(hal.flags, 0);
    assert_eq!(hal.fsname, "testfs0");
    assert_eq!(hal.list.len(), 1);
    check_example_hai(&hal.list[0], 1765010112108091220);
}

#[test]
fn done_request() {
    let Request::Done(d) = round_trip::<Request>(DONE_REQUEST) else {
        panic!("not done")
    };
    assert_eq!(d.cookie, 1764690165);
    assert_eq!(d.dfid, FID_A);
    assert_eq!(d.status, 0);
    assert!(d.cookie_may_be_truncated());
}

#[test]
fn queue_request_from_the_c_cli() {
    let Request::Queue(q) = round_trip::<Request>(QUEUE_REQUEST) else {
        panic!("not queue")
    };
    assert_eq!(
        q.fsname.as_deref(),
        Some("testfs0"),
        "hal_fsname read as fsname"
    );
    assert_eq!(q.items.len(), 1);
    let h = &q.items[0];
    let fid = LuFid::new(8589955619, 7374, 0);
    assert_eq!((h.action, h.fid, h.dfid), (HsmAction::Archive, fid, fid));
    assert_eq!((h.extent_offset, h.extent_length), (0, u64::MAX));
    assert_eq!(
        (h.cookie, h.gid, h.archive_id, h.flags),
        (1635591151, 0, 1, 0)
    );
    assert_eq!((h.data.as_slice(), h.timestamp), (&b""[..], 0));
    // Our encoding uses the key the C server actually checks.
    let text = String::from_utf8(to_vec(&Request::Queue(q))).unwrap();
    assert!(
        text.contains(r#""fsname":"testfs0""#) && !text.contains("hal_fsname"),
        "{text}"
    );
}

#[test]
fn cli_queue_item_matches_the_active_requests_line() {
    let h: WireHai = serde_json::from_str(CLI_QUEUE_HAI).unwrap();
    // fid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef extent=0x0-0xffffffffffffffff
    assert_eq!(h.fid, "[0x200005223:0x1cce:0x0]".parse().unwrap());
    assert_eq!(h.cookie, 0x617d23ef);
    assert_eq!(h.extent_length, 0xffffffffffffffff);
}

#[test]
fn queue_reply() {
    let Reply::Queue(q) = round_trip::<Reply>(QUEUE_REPLY) else {
        panic!("not queue")
    };
    assert_eq!((q.enqueued, q.skipped, q.status), (1, 0, 0));
}

#[test]
fn status_request() {
    let Request::Status(s) = round_trip::<Request>(STATUS_REQUEST) else {
        panic!("not status")
    };
    assert_eq!(s.verbose, 4);
}

#[test]
fn status_reply() {
    let Reply::Status(s) = round_trip::<Reply>(STATUS_REPLY) else {
        panic!("not status")
    };
    assert_eq!(
        (s.running_archive, s.pending_archive, s.done_archive),
        (3, 7, 12)
    );
    assert_eq!(
        (
            s.running_restore,
            s.pending_restore,
            s.done_restore,
            s.locked
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(s.clients_connected, 2);
    assert!(s.waiting_archive.is_none());
    assert_eq!(s.clients.len(), 2);
    let (a, b) = (&s.clients[0], &s.clients[1]);
    assert_eq!(
        (a.client_id.as_str(), a.status),
        ("localhost:38904", ClientState::Ready)
    );
    assert_eq!(
        (b.client_id.as_str(), b.status),
        ("agent_1", ClientState::Waiting)
    );
    assert_eq!((b.current_archive, b.done_archive), (3, 12));
    assert!(a.batches.is_empty() && b.batches.is_empty());
}

#[test]
fn lock_request_and_replies() {
    let Request::Lock(l) = round_trip::<Request>(LOCK_REQUEST) else {
        panic!("not lock")
    };
    assert_eq!(l.state(), Some(LockState::Locked));
    let r = round_trip::<Reply>(LOCK_ERROR_REPLY);
    assert_eq!(r.command(), Command::Lock);
    assert_eq!(r.status(), 22, "negative C status normalised");
    assert_eq!(r.error_message(), Some("invalid locked value"));
    assert_eq!(
        to_vec(&r),
        br#"{"command":"lock","status":22,"error":"invalid locked value"}"#.to_vec()
    );
}

#[test]
fn whole_conversation_through_the_decoder_in_small_chunks() {
    let requests = [
        EHLO_FIRST,
        EHLO_RECONNECT,
        RECV_REQUEST,
        DONE_REQUEST,
        QUEUE_REQUEST,
        STATUS_REQUEST,
        LOCK_REQUEST,
    ];
    let replies = [
        EHLO_REPLY,
        RECV_REPLY,
        DONE_REPLY,
        QUEUE_REPLY,
        STATUS_REPLY,
        LOCK_REPLY,
        LOCK_ERROR_REPLY,
    ];
    for chunk in [1, 2, 3, 7, 64, 4096] {
        let stream = requests.concat();
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for c in stream.as_bytes().chunks(chunk) {
            dec.feed(c);
            while let Some(m) = dec.next_message::<Request>().unwrap() {
                got.push(m);
            }
        }
        let want: Vec<Request> = requests
            .iter()
            .map(|j| Request::decode(j.as_bytes()).unwrap())
            .collect();
        assert_eq!(got, want, "chunk {chunk}");

        let stream = replies.join("\n");
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for c in stream.as_bytes().chunks(chunk) {
            dec.feed(c);
            got.extend(dec.messages::<Reply>().map(Result::unwrap));
        }
        let want: Vec<Reply> = replies
            .iter()
            .map(|j| Reply::decode(j.as_bytes()).unwrap())
            .collect();
        assert_eq!(got, want, "chunk {chunk}");
    }
}
