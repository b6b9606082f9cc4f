//! Engine outputs to wire replies.

use crate::store::{StoreHealth, request_to_wire};
use coordinatool_proto::{
    BatchStatus as WireBatch, ClientState as WireState, ClientStatus as WireClient, Command,
    DumpEntry as WireDump, RecvReply, StatusReply, StoreStatus, WireHal,
};
use coordinatool_sched::{ClientState, Delivery, DumpEntry, Status, Time};

/// The `recv` reply carrying a delivery.
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
        // Filled in by the caller, which knows the store.
        store: None,
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
