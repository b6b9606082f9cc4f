//! The exact text of the MDT's `hsm.*` listings (§9.8) and lctl's `param=value` framing.

use std::fmt::Write as _;

use coordinatool_lustre::active_requests::{ActionRecord, ActiveRequest, DATA_DUMP_MAX};

use super::types::{ActiveInfo, AgentInfo, HSM_AGENT_REC, Record};

/// The listing form of a record (`hsm.actions` line), as `coordinatool-lustre` prints it.
pub fn action_record(r: &Record) -> ActionRecord {
    let it = &r.item;
    ActionRecord {
        lrh_type: HSM_AGENT_REC,
        lrh_len: r.lrh_len(),
        cat_idx: r.llog.catalog,
        rec_idx: r.llog.index,
        fid: it.fid,
        dfid: it.dfid,
        compound_id: 0,
        cookie: it.cookie,
        action: it.action,
        archive_id: r.archive_id,
        flags: r.flags,
        extent: it.extent,
        gid: it.gid,
        datalen: it.data.len() as u32,
        status: r.status,
        data: it.data[..it.data.len().min(DATA_DUMP_MAX)].to_vec(),
        line: 0,
        mdt: None,
    }
}

/// The listing form of an active request (`hsm.active_requests` line).
pub fn active_request(a: &ActiveInfo) -> ActiveRequest {
    let it = &a.item;
    ActiveRequest {
        fid: it.fid,
        dfid: it.dfid,
        compound_id: 0,
        cookie: it.cookie,
        action: it.action,
        archive_id: a.archive_id,
        flags: a.flags,
        extent: it.extent,
        gid: it.gid,
        data: it.data[..it.data.len().min(DATA_DUMP_MAX)].to_vec(),
        canceled: Some(a.canceled),
        uuid: Some(a.agent.to_string()),
        done: Some(a.done),
        line: 0,
        mdt: None,
    }
}

/// One `hsm.actions` line (with its newline).
pub fn action_line(out: &mut String, r: &Record) {
    let _ = writeln!(out, "{}", action_record(r));
}

/// One `hsm.active_requests` line (with its newline).
pub fn active_line(out: &mut String, a: &ActiveInfo) {
    let _ = writeln!(out, "{}", active_request(a));
}

/// One `hsm.agents` line (with its newline).
pub fn agent_line(out: &mut String, a: &AgentInfo) {
    let _ = write!(out, "uuid={} archive_id=", a.uuid);
    if a.archives.is_empty() {
        out.push_str("ANY");
    } else {
        for (i, id) in a.archives.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", *id as i32);
        }
    }
    let _ = writeln!(
        out,
        " requests=[current:{} ok:{} errors:{}]",
        a.current, a.ok, a.errors
    );
}

/// Frames a value the way `lctl get_param` prints it: `name=value` when the value fits on one
/// line (no newline before its last byte and at most 80 bytes), else `name=` and a newline
/// before the value. With `show_name == false` (`-n`) only the value is printed. An empty value
/// prints `name=` and a newline.
pub fn lctl_format(out: &mut String, name: &str, value: &str, show_name: bool) {
    if show_name {
        out.push_str(name);
        out.push('=');
        let body = value.strip_suffix('\n').unwrap_or(value);
        if value.is_empty() || body.contains('\n') || value.len() > 80 {
            out.push('\n');
        }
    }
    out.push_str(value);
    if !value.is_empty() && !value.ends_with('\n') {
        out.push('\n');
    }
}
