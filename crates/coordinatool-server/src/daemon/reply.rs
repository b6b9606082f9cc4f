//! Engine outputs to wire replies.

use crate::store::request_to_wire;
use coordinatool_proto::{
    BatchStatus as WireBatch, ClientState as WireState, ClientStatus as WireClient,
    DumpEntry as WireDump, RecvReply, StatusReply, WireHal,
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
        status: 0,
        error: None,
    }
}
