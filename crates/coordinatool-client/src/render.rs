//! Output: upstream's indented JSON, human tables for `status`, and the `watch` view.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use coordinatool_lustre::LuFid;
use coordinatool_proto::{DumpEntry, StatusReply};

/// Re-indents one JSON object the way upstream's CLI prints replies (jansson's
/// `JSON_INDENT(2)`: two spaces per level, `": "` after keys, empty containers as `{}`/`[]`),
/// keeping the keys in the order the server sent them.
///
/// The input must be a complete JSON value (as returned by the decoder); it is not
/// validated beyond string boundaries.
pub fn indent_json(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    let text = String::from_utf8_lossy(raw);
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                out.push_str(&text[start..(i + 1).min(bytes.len())]);
            }
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if bytes.get(j) == Some(&close) {
                    out.push(b as char);
                    out.push(close as char);
                    i = j;
                } else {
                    out.push(b as char);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(": "),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // Numbers and literals: copy up to the next structural byte.
                let start = i;
                while i + 1 < bytes.len() && !b",:{}[]\" \t\n\r".contains(&bytes[i + 1]) {
                    i += 1;
                }
                out.push_str(&text[start..=i]);
            }
        }
        i += 1;
    }
    out
}

/// Lays out rows under headers: the first column left-aligned, the others right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "  {cell:>w$}");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn lock_name(locked: i32) -> &'static str {
    match locked {
        0 => "unlocked",
        1 => "locked",
        2 => "locked, quitting when idle",
        _ => "unknown",
    }
}

fn len_of(list: &Option<Vec<DumpEntry>>) -> String {
    list.as_ref()
        .map_or_else(|| "-".to_owned(), |l| l.len().to_string())
}

/// The human view of a status reply: state line, counters table, clients table (and the
/// queue lengths when the reply carries the dump).
pub fn status_tables(s: &StatusReply) -> String {
    let mut out = format!(
        "dispatch: {}    clients connected: {}",
        lock_name(s.locked),
        s.clients_connected
    );
    if let Some(st) = &s.store {
        out.push_str(&format!("    store: {} {}", st.kind, st.state));
        if st.buffered_ops > 0 {
            out.push_str(&format!(" ({} changes buffered)", st.buffered_ops));
        }
        if let Some(e) = &st.error {
            out.push_str(&format!(": {e}"));
        }
    }
    if let Some(l) = &s.lustre {
        out.push_str(&format!("    lustre: {}", l.state));
        if let Some(e) = &l.error {
            out.push_str(&format!(": {e}"));
        }
    }
    out.push_str("\n\n");
    let dumped = s.waiting_archive.is_some();
    let mut headers = vec!["", "running", "pending", "done"];
    if dumped {
        headers.push("global queue");
    }
    let row = |name: &str, r: String, p: u32, d: u64, q: &Option<Vec<DumpEntry>>| {
        let mut v = vec![name.to_owned(), r, p.to_string(), d.to_string()];
        if dumped {
            v.push(len_of(q));
        }
        v
    };
    let rows = vec![
        row(
            "restore",
            s.running_restore.to_string(),
            s.pending_restore,
            s.done_restore,
            &s.waiting_restore,
        ),
        row(
            "archive",
            s.running_archive.to_string(),
            s.pending_archive,
            s.done_archive,
            &s.waiting_archive,
        ),
        row(
            "remove",
            s.running_remove.to_string(),
            s.pending_remove,
            s.done_remove,
            &s.waiting_remove,
        ),
        row("cancel", "-".into(), s.pending_cancel, s.done_cancel, &None),
    ];
    out.push_str(&table(&headers, &rows));
    out.push('\n');
    if s.clients.is_empty() {
        out.push_str("no clients\n");
        return out;
    }
    let mut headers = vec![
        "client",
        "status",
        "restore",
        "archive",
        "remove",
        "done r/a/rm",
        "batches",
    ];
    if dumped {
        headers.extend(["active", "waiting"]);
    }
    let rows: Vec<Vec<String>> = s
        .clients
        .iter()
        .map(|c| {
            let mut v = vec![
                c.client_id.clone(),
                c.status.as_str().to_owned(),
                c.current_restore.to_string(),
                c.current_archive.to_string(),
                c.current_remove.to_string(),
                format!("{}/{}/{}", c.done_restore, c.done_archive, c.done_remove),
                c.batches.len().to_string(),
            ];
            if dumped {
                let waiting: usize = [&c.waiting_restore, &c.waiting_archive, &c.waiting_remove]
                    .iter()
                    .map(|l| l.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
                    + c.batches
                        .iter()
                        .map(|b| b.waiting_archive.as_ref().map_or(0, Vec::len))
                        .sum::<usize>();
                v.push(len_of(&c.active_requests));
                v.push(waiting.to_string());
            }
            v
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    out
}

/// Completion rates per second, from two successive status replies.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    /// Restores done per second.
    pub restore: f64,
    /// Archives done per second.
    pub archive: f64,
    /// Removes done per second.
    pub remove: f64,
}

/// One refresh of `watch`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchFrame {
    /// Global rates (`None` on the first refresh).
    pub rates: Option<Rates>,
    /// Per-client completion rate (all kinds) in the clients' order; `None` when the client
    /// was not in the previous reply.
    pub client_rates: Vec<Option<f64>>,
    /// The waiting request seen first (in a global or client queue): its queue, dfid,
    /// cookie, and how long it has been seen. Only when the reply carries the dump, which
    /// has no timestamps, so the age counts from the first refresh that showed it.
    pub oldest: Option<(String, LuFid, u64, Duration)>,
}

/// State of `watch` across refreshes (time is passed in, so it can be tested).
#[derive(Debug, Default)]
pub struct WatchState {
    prev: Option<(Instant, StatusReply)>,
    first_seen: HashMap<(u64, LuFid), Instant>,
}

fn per_sec(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}

impl WatchState {
    /// Folds in a new status reply received at `now`.
    pub fn update(&mut self, now: Instant, s: &StatusReply) -> WatchFrame {
        let mut frame = WatchFrame {
            rates: None,
            client_rates: vec![None; s.clients.len()],
            oldest: None,
        };
        if let Some((then, prev)) = &self.prev {
            let dt = now.duration_since(*then).as_secs_f64();
            if dt > 0.0 {
                frame.rates = Some(Rates {
                    restore: per_sec(s.done_restore, prev.done_restore, dt),
                    archive: per_sec(s.done_archive, prev.done_archive, dt),
                    remove: per_sec(s.done_remove, prev.done_remove, dt),
                });
                for (rate, c) in frame.client_rates.iter_mut().zip(&s.clients) {
                    if let Some(p) = prev.clients.iter().find(|p| p.client_id == c.client_id) {
                        let total = |c: &coordinatool_proto::ClientStatus| {
                            c.done_restore + c.done_archive + c.done_remove
                        };
                        *rate = Some(per_sec(total(c), total(p), dt));
                    }
                }
            }
        }
        // Age of waiting requests: remember when each was first seen, forget those gone.
        let mut queues: Vec<(String, &Vec<DumpEntry>)> = Vec::new();
        for (name, q) in [
            ("global restore", &s.waiting_restore),
            ("global archive", &s.waiting_archive),
            ("global remove", &s.waiting_remove),
        ] {
            if let Some(q) = q {
                queues.push((name.to_owned(), q));
            }
        }
        for c in &s.clients {
            for (kind, q) in [
                ("restore", &c.waiting_restore),
                ("archive", &c.waiting_archive),
                ("remove", &c.waiting_remove),
            ] {
                if let Some(q) = q {
                    queues.push((format!("{} {kind}", c.client_id), q));
                }
            }
            for b in &c.batches {
                if let Some(q) = &b.waiting_archive {
                    queues.push((format!("{} batch archive", c.client_id), q));
                }
            }
        }
        if !queues.is_empty() {
            let mut seen = HashMap::with_capacity(self.first_seen.len());
            let mut oldest: Option<(String, LuFid, u64, Instant)> = None;
            for (name, q) in &queues {
                for e in q.iter() {
                    let key = (e.cookie, e.fid);
                    let t = *self.first_seen.get(&key).unwrap_or(&now);
                    seen.insert(key, t);
                    if oldest.as_ref().is_none_or(|o| t < o.3) {
                        oldest = Some((name.clone(), e.fid, e.cookie, t));
                    }
                }
            }
            self.first_seen = seen;
            frame.oldest = oldest.map(|(n, f, c, t)| (n, f, c, now.duration_since(t)));
        }
        self.prev = Some((now, s.clone()));
        frame
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/s"))
}

/// The text of one `watch` refresh.
pub fn watch_view(server: &str, s: &StatusReply, f: &WatchFrame) -> String {
    let mut out = format!("coordinatool {server}\n");
    out.push_str(&status_tables(s));
    let r = f.rates;
    let _ = writeln!(
        out,
        "\nrates: restore {}  archive {}  remove {}",
        rate(r.map(|r| r.restore)),
        rate(r.map(|r| r.archive)),
        rate(r.map(|r| r.remove))
    );
    if !s.clients.is_empty() {
        let parts: Vec<String> = s
            .clients
            .iter()
            .zip(&f.client_rates)
            .map(|(c, r)| format!("{} {}", c.client_id, rate(*r)))
            .collect();
        let _ = writeln!(out, "client rates: {}", parts.join(", "));
    }
    match &f.oldest {
        Some((queue, fid, cookie, age)) => {
            let _ = writeln!(
                out,
                "oldest waiting: {fid} cookie {cookie:#x} in {queue}, seen for {}s",
                age.as_secs()
            );
        }
        None if s.waiting_archive.is_some() => out.push_str("oldest waiting: none\n"),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinatool_proto::{ClientState, ClientStatus};

    #[test]
    fn indent_matches_jansson_layout() {
        let raw = br#"{"command":"status","running_archive":3,"clients":[{"client_id":"a,:{b","batches":[]}],"x":{},"s":"q\"}"}"#;
        assert_eq!(
            indent_json(raw),
            "{\n  \"command\": \"status\",\n  \"running_archive\": 3,\n  \"clients\": [\n    {\n      \"client_id\": \"a,:{b\",\n      \"batches\": []\n    }\n  ],\n  \"x\": {},\n  \"s\": \"q\\\"}\"\n}"
        );
        // A C server's spacing gives the same result.
        assert_eq!(
            indent_json(br#"{"command": "lock", "status": -22}"#),
            "{\n  \"command\": \"lock\",\n  \"status\": -22\n}"
        );
    }

    fn status(done_archive: u64, clients: Vec<ClientStatus>) -> StatusReply {
        StatusReply {
            done_archive,
            running_archive: 2,
            pending_archive: 5,
            clients_connected: 1,
            clients,
            ..Default::default()
        }
    }

    fn client(id: &str, done_archive: u64) -> ClientStatus {
        ClientStatus {
            client_id: id.into(),
            done_archive,
            current_archive: 2,
            status: ClientState::Waiting,
            ..Default::default()
        }
    }

    #[test]
    fn tables_show_counters_and_clients() {
        let t = status_tables(&status(12, vec![client("agent_1", 12)]));
        assert!(
            t.starts_with("dispatch: unlocked    clients connected: 1\n"),
            "{t}"
        );
        assert!(t.contains("archive        2        5    12\n"), "{t}");
        assert!(
            t.contains("agent_1  waiting        0        2       0       0/12/0        0\n"),
            "{t}"
        );
        let mut s = status(1, vec![]);
        s.store = Some(coordinatool_proto::StoreStatus {
            kind: "redis".into(),
            state: "down".into(),
            buffered_ops: 7,
            error: Some("connection refused".into()),
        });
        let t = status_tables(&s);
        assert!(
            t.starts_with(
                "dispatch: unlocked    clients connected: 1    store: redis down (7 changes buffered): connection refused\n\n"
            ),
            "{t}"
        );
        s.lustre = Some(coordinatool_proto::LustreStatus {
            state: "down".into(),
            error: Some("unmounted".into()),
        });
        let t = status_tables(&s);
        assert!(
            t.starts_with(
                "dispatch: unlocked    clients connected: 1    store: redis down (7 changes buffered): connection refused    lustre: down: unmounted\n\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn watch_rates_and_oldest_by_first_sight() {
        let mut w = WatchState::default();
        let t0 = Instant::now();
        let e = |c: u64| DumpEntry {
            fid: LuFid::new(0x200000400, c as u32, 0),
            cookie: c,
            data: vec![],
        };
        let mut s = status(10, vec![client("a", 10), client("b", 0)]);
        s.waiting_archive = Some(vec![e(2)]);
        let f = w.update(t0, &s);
        assert_eq!(f.rates, None);
        assert_eq!(f.oldest.as_ref().unwrap().2, 2);

        let mut s2 = status(30, vec![client("a", 30), client("c", 1)]);
        s2.waiting_archive = Some(vec![e(3), e(2)]);
        let f2 = w.update(t0 + Duration::from_secs(4), &s2);
        assert_eq!(f2.rates.unwrap().archive, 5.0);
        assert_eq!(f2.client_rates, vec![Some(5.0), None]);
        let (q, _, cookie, age) = f2.oldest.clone().unwrap();
        assert_eq!(
            (q.as_str(), cookie, age),
            ("global archive", 2, Duration::from_secs(4))
        );
        let v = watch_view("h:1", &s2, &f2);
        assert!(
            v.contains("rates: restore 0.0/s  archive 5.0/s  remove 0.0/s"),
            "{v}"
        );
        assert!(
            v.contains(
                "oldest waiting: [0x200000400:0x2:0x0] cookie 0x2 in global archive, seen for 4s"
            ),
            "{v}"
        );

        // Cookie 2 left: cookie 3 (first seen at t0+4) is now the oldest.
        let mut s3 = status(30, vec![]);
        s3.waiting_archive = Some(vec![e(3)]);
        let f3 = w.update(t0 + Duration::from_secs(6), &s3);
        assert_eq!(f3.oldest.unwrap().3, Duration::from_secs(2));
    }
}
