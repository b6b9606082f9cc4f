//! Engine outputs to wire replies.

use crate::store::{StoreHealth, request_to_wire};
use coordinatool_proto::{
    BatchStatus as WireBatch, ClientState as WireState, ClientStatus as WireClient, Command,
    DumpEntry as WireDump, StatusReply, StoreStatus,
};
#[cfg(test)]
use coordinatool_proto::{RecvReply, WireHal};
use coordinatool_sched::{ClientState, Delivery, DumpEntry, Status, Time};

/// The `recv` reply carrying a delivery, as wire objects: the reference [`encode_recv`] is
/// tested against.
#[cfg(test)]
pub(crate) fn recv_reply(d: &Delivery, fsname: &str) -> RecvReply {
    RecvReply {
        hal: Some(WireHal {
            archive_id: d.archive_id,
            flags: d.hal_flags,
            fsname: fsname.to_owned(),
            list: d.items.iter().map(request_to_wire).collect(),
        }),
        status: 0,
        error: None,
    }
}

/// Appends the `recv` reply carrying `d`, byte for byte what [`coordinatool_proto::encode`]
/// writes for [`recv_reply`]`(d, fsname)`, without building the wire objects (a copy of every
/// item and its data) and with the keys as literals: the reply every request goes out in.
/// Items whose data is not UTF-8 (written with a base64 key) go through the proto encoder.
pub(crate) fn encode_recv(d: &Delivery, fsname: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"command":"recv","hsm_action_list":{"hal_version":"#);
    push_u64(out, u64::from(coordinatool_proto::HAL_VERSION));
    if d.archive_id != 0 {
        out.extend_from_slice(br#","hal_archive_id":"#);
        push_u64(out, u64::from(d.archive_id));
    }
    if d.hal_flags != 0 {
        out.extend_from_slice(br#","hal_flags":"#);
        push_i64(out, d.hal_flags as i64);
    }
    if !fsname.is_empty() {
        out.extend_from_slice(br#","hal_fsname":"#);
        push_str(out, fsname);
    }
    out.extend_from_slice(br#","list":["#);
    for (i, r) in d.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Ok(data) = std::str::from_utf8(&r.data) else {
            serde_json::to_writer(&mut *out, &request_to_wire(r))
                .expect("serializing a hai into a Vec cannot fail");
            continue;
        };
        out.extend_from_slice(br#"{"hai_action":"#);
        push_u64(out, u64::from(r.action.code()));
        out.extend_from_slice(br#","hai_fid":"#);
        push_fid(out, &r.fid);
        out.extend_from_slice(br#","hai_dfid":"#);
        push_fid(out, &r.dfid);
        // i64 images of the u64 fields, as the proto encoder writes them.
        out.extend_from_slice(br#","hai_extent_offset":"#);
        push_i64(out, r.extent_offset as i64);
        out.extend_from_slice(br#","hai_extent_length":"#);
        push_i64(out, r.extent_length as i64);
        out.extend_from_slice(br#","hai_cookie":"#);
        push_i64(out, r.cookie as i64);
        out.extend_from_slice(br#","hai_gid":"#);
        push_i64(out, r.gid as i64);
        out.extend_from_slice(br#","hal_archive_id":"#);
        push_u64(out, u64::from(r.archive_id));
        out.extend_from_slice(br#","hal_flags":"#);
        push_i64(out, r.hal_flags as i64);
        out.extend_from_slice(br#","hai_data":"#);
        push_str(out, data);
        out.extend_from_slice(br#","timestamp":"#);
        push_i64(out, i64::try_from(r.timestamp.0).unwrap_or(i64::MAX));
        out.push(b'}');
    }
    out.extend_from_slice(b"]}}");
}

/// The successful `done` reply, as the proto encoder writes `Reply::ok(Command::Done)`.
pub(crate) const DONE_OK: &[u8] = br#"{"command":"done"}"#;

fn push_fid(out: &mut Vec<u8>, f: &coordinatool_lustre::LuFid) {
    out.extend_from_slice(br#"{"f_seq":"#);
    push_i64(out, f.seq as i64);
    out.extend_from_slice(br#","f_oid":"#);
    push_u64(out, u64::from(f.oid));
    out.extend_from_slice(br#","f_ver":"#);
    push_u64(out, u64::from(f.ver));
    out.push(b'}');
}

/// A JSON string, escaped exactly as the proto encoder (serde_json) escapes it.
fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("serializing a str into a Vec cannot fail");
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

fn dump(v: &[DumpEntry]) -> Vec<WireDump> {
    v.iter()
        .map(|e| WireDump {
            // Upstream writes the dfid under `hai_fid`.
            fid: e.dfid,
            cookie: e.cookie,
            data: e.data.as_bytes().to_vec(),
        })
        .collect()
}

fn secs(t: Option<Time>) -> i64 {
    t.map_or(0, |t| {
        i64::try_from(t.0 / 1_000_000_000).unwrap_or(i64::MAX)
    })
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The `status` reply for an engine status (`dump`: verbose ≥ 6).
pub(crate) fn status_reply(st: &Status) -> StatusReply {
    let queues = st.queues.as_ref();
    StatusReply {
        running_restore: clamp32(st.running.restore),
        running_archive: clamp32(st.running.archive),
        running_remove: clamp32(st.running.remove),
        pending_restore: clamp32(st.pending.restore),
        pending_archive: clamp32(st.pending.archive),
        pending_remove: clamp32(st.pending.remove),
        pending_cancel: clamp32(st.pending_cancel),
        done_restore: st.done.restore,
        done_archive: st.done.archive,
        done_remove: st.done.remove,
        done_cancel: st.done_cancel,
        clients_connected: st.clients_connected,
        locked: st.locked as i32,
        clients: st
            .clients
            .iter()
            .map(|c| WireClient {
                client_id: c.client_id.clone(),
                current_restore: i32::try_from(c.current.restore).unwrap_or(i32::MAX),
                current_archive: i32::try_from(c.current.archive).unwrap_or(i32::MAX),
                current_remove: i32::try_from(c.current.remove).unwrap_or(i32::MAX),
                done_restore: c.done.restore,
                done_archive: c.done.archive,
                done_remove: c.done.remove,
                status: match c.state {
                    ClientState::Init => WireState::Init,
                    ClientState::Ready => WireState::Ready,
                    ClientState::Waiting => WireState::Waiting,
                    ClientState::Disconnected => WireState::Disconnected,
                },
                batches: c
                    .batches
                    .iter()
                    .map(|b| WireBatch {
                        hint: b.hint.clone(),
                        current_count: b.current_count,
                        expire_idle_s: secs(b.expire_idle),
                        expire_max_s: secs(b.expire_max),
                        waiting_archive: b.waiting_archive.as_deref().map(dump),
                    })
                    .collect(),
                disconnected_timestamp: c
                    .disconnected_at
                    .map_or(0, |t| i64::try_from(t.0).unwrap_or(i64::MAX)),
                active_requests: c.dump.as_ref().map(|d| dump(&d.active)),
                waiting_restore: c.dump.as_ref().map(|d| dump(&d.waiting.restore)),
                waiting_remove: c.dump.as_ref().map(|d| dump(&d.waiting.remove)),
                waiting_archive: c.dump.as_ref().map(|d| dump(&d.waiting.archive)),
                cancels: c.dump.as_ref().map(|d| dump(&d.cancels)),
            })
            .collect(),
        waiting_restore: queues.map(|q| dump(&q.restore)),
        waiting_remove: queues.map(|q| dump(&q.remove)),
        waiting_archive: queues.map(|q| dump(&q.archive)),
        // Filled in by the caller, which knows the store and the registration.
        store: None,
        lustre: None,
        status: 0,
        error: None,
    }
}

/// An error reply exactly as §2.1 describes it: the command name, `status` (a positive
/// errno) and `error` (omitted when empty), nothing else. `Reply::error` would give a
/// `status` error reply the `clients` list that a success always carries.
pub(crate) fn error_reply(command: Command, status: i32, message: &str) -> Vec<u8> {
    let mut out = format!(
        r#"{{"command":"{}","status":{}"#,
        command.as_str(),
        status.saturating_abs()
    );
    if !message.is_empty() {
        out.push_str(r#","error":"#);
        out.push_str(&serde_json::Value::String(message.to_owned()).to_string());
    }
    out.push('}');
    out.into_bytes()
}

/// The `store` object of a successful `status` reply: kind, `ok` or `down`, the changes
/// waiting for the backend and, while it is down, its last error. The C CLI prints the reply
/// as it comes, so it shows the new key; the preload never asks for `status`; C and Rust
/// readers ignore keys they do not know.
pub(crate) fn store_status(h: &StoreHealth) -> StoreStatus {
    StoreStatus {
        kind: h.backend.to_owned(),
        state: if h.connected { "ok" } else { "down" }.to_owned(),
        buffered_ops: h.pending_keys as u64,
        error: h
            .last_error
            .clone()
            .filter(|e| !h.connected && !e.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinatool_proto::Reply;

    fn delivery(items: Vec<coordinatool_sched::Request>, archive_id: u32, flags: u64) -> Delivery {
        let mut e =
            coordinatool_sched::Engine::new(coordinatool_sched::Config::default()).expect("engine");
        Delivery {
            client: e.connect("m:1", Time(1)),
            archive_id,
            hal_flags: flags,
            items,
        }
    }

    fn item(n: u64, data: &[u8]) -> coordinatool_sched::Request {
        use coordinatool_lustre::{HsmAction, LuFid};
        let mut w = coordinatool_proto::WireHai::new(
            HsmAction::Archive,
            LuFid::new(0x2_0000_0401 + n, n as u32, 0),
            n,
        );
        w.data = data.to_vec();
        crate::store::request_from_wire(w)
    }

    #[test]
    fn the_recv_writer_matches_the_proto_encoder_byte_for_byte() {
        use coordinatool_lustre::{HsmAction, LuFid};
        let mut odd = item(3, b"q\"u\\o\te\n\0\x01 \xc3\xa9 </\xe2\x80\xa8 \x7f");
        odd.action = HsmAction::Restore;
        odd.dfid = LuFid::new(u64::MAX, u32::MAX, 7);
        odd.fid = LuFid::new(0, 0, u32::MAX);
        odd.extent_offset = 1 << 40;
        odd.extent_length = u64::MAX;
        odd.cookie = u64::MAX - 5;
        odd.gid = i64::MAX as u64 + 1;
        odd.archive_id = u32::MAX;
        odd.hal_flags = u64::MAX;
        odd.timestamp = Time(u64::MAX);
        let mut mid = item(4, b"");
        mid.timestamp = Time(1_700_000_000_123_456_789);
        let cases = [
            (delivery(vec![item(1, b"")], 1, 0), "fs0"),
            (delivery(vec![item(1, b"tag=1"), item(2, b"x,y")], 0, 0), ""),
            (
                delivery(
                    vec![odd.clone(), mid.clone()],
                    u32::MAX,
                    0x8000_0000_0000_0001,
                ),
                "a\"b",
            ),
            // Not UTF-8: the base64 form, through the proto encoder.
            (
                delivery(vec![mid, item(5, &[0xff, 0, b'z']), odd], 7, 4),
                "lustre",
            ),
        ];
        for (d, fsname) in &cases {
            let mut fast = b"prefix".to_vec();
            encode_recv(d, fsname, &mut fast);
            let mut want = b"prefix".to_vec();
            coordinatool_proto::encode(&Reply::Recv(recv_reply(d, fsname)), &mut want);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&want)
            );
            assert_eq!(fast, want);
        }
    }

    #[test]
    fn the_done_reply_constant_is_the_proto_encoding() {
        assert_eq!(
            DONE_OK,
            coordinatool_proto::to_vec(&Reply::ok(Command::Done)).as_slice()
        );
    }

    #[test]
    fn error_replies_carry_command_status_and_error_only() {
        assert_eq!(
            error_reply(Command::Status, 22, "bad \"verbose\""),
            br#"{"command":"status","status":22,"error":"bad \"verbose\""}"#
        );
        assert_eq!(
            error_reply(Command::Lock, -22, ""),
            br#"{"command":"lock","status":22}"#
        );
    }

    #[test]
    fn the_store_object_of_a_status_reply() {
        let down = StoreHealth {
            backend: "redis",
            connected: false,
            pending_keys: 3,
            last_error: Some("connection refused".into()),
            needs_full_resync: false,
        };
        let body = StatusReply {
            store: Some(store_status(&down)),
            ..StatusReply::default()
        };
        let got = coordinatool_proto::to_vec(&Reply::Status(Box::new(body)));
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command": "status", "clients": [], "store":
                {"kind": "redis", "state": "down", "buffered_ops": 3, "error": "connection refused"}})
        );
        let ok = StoreHealth {
            backend: "embedded",
            connected: true,
            pending_keys: 0,
            last_error: Some("old".into()),
            needs_full_resync: false,
        };
        let v = serde_json::to_value(store_status(&ok)).unwrap();
        assert_eq!(v, serde_json::json!({"kind": "embedded", "state": "ok"}));
    }
}
