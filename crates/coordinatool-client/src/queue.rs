//! `-Q` / `queue`: turning an MDT `active_requests` listing into `queue` messages.
//!
//! The whole input is parsed before anything is sent, so a bad line (named by its number)
//! means nothing reaches the server. Items are then sent in chunks (upstream sent one
//! message holding everything, [`DEFAULT_CHUNK`] items per message here) and each reply is
//! checked: an error status or `enqueued + skipped` not matching the chunk is an error.

use coordinatool_lustre::HsmAction;
use coordinatool_lustre::active_requests::{self, DATA_DUMP_MAX, ParseError};
use coordinatool_proto::{QueueReply, Reply, WireHai};

/// Items per `queue` message by default.
pub const DEFAULT_CHUNK: usize = 10_000;

/// A parsed listing, ready to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueInput {
    /// The items to queue, in input order.
    pub items: Vec<WireHai>,
    /// The 1-based input line of each item.
    pub lines: Vec<usize>,
    /// Lines holding a CANCEL (or NOOP) request, left out: the server only queues archive,
    /// restore and remove (a cancel travels from Lustre, it cannot be requeued).
    pub left_out: Vec<(usize, HsmAction)>,
    /// Lines whose data is as long as the MDT's dump (at most 5 bytes are shown), so the
    /// requeued data may be cut.
    pub maybe_truncated: Vec<usize>,
}

/// Why the input cannot be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueInputError {
    /// A line does not parse (the message starts with `line N:`).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A request with archive id 0, which the server refuses.
    #[error(
        "line {line}: field `archive#`: archive id 0 cannot be queued (the server needs a non-zero archive id)"
    )]
    ZeroArchiveId {
        /// 1-based line number.
        line: usize,
    },
}

/// Parses an `active_requests` listing (debugfs file or `lctl get_param` output).
pub fn parse_queue_input(text: &str) -> Result<QueueInput, QueueInputError> {
    let mut input = QueueInput::default();
    for req in active_requests::parse_all(text)? {
        if !matches!(
            req.action,
            HsmAction::Archive | HsmAction::Restore | HsmAction::Remove
        ) {
            input.left_out.push((req.line, req.action));
            continue;
        }
        if req.archive_id == 0 {
            return Err(QueueInputError::ZeroArchiveId { line: req.line });
        }
        if req.data.len() >= DATA_DUMP_MAX {
            input.maybe_truncated.push(req.line);
        }
        let item = req.to_action_item();
        input.items.push(WireHai {
            action: item.action,
            fid: item.fid,
            dfid: item.dfid,
            extent_offset: item.extent.offset,
            extent_length: item.extent.length,
            cookie: item.cookie,
            gid: item.gid,
            archive_id: req.archive_id,
            flags: req.flags,
            data: item.data,
            timestamp: 0,
        });
        input.lines.push(req.line);
    }
    Ok(input)
}

/// Running totals over the chunks of one queue run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueTally {
    /// `queue` messages answered.
    pub messages: usize,
    /// Items sent.
    pub sent: u64,
    /// Items the server registered.
    pub enqueued: u64,
    /// Items the server already had.
    pub skipped: u64,
    /// One message per failed chunk.
    pub errors: Vec<String>,
}

impl QueueTally {
    /// Accounts for the reply to a chunk of `sent` items covering input lines
    /// `first_line..=last_line`; returns the error, if any, which is also kept in `errors`.
    pub fn record(
        &mut self,
        sent: usize,
        first_line: usize,
        last_line: usize,
        reply: &Reply,
    ) -> Result<(), String> {
        self.messages += 1;
        self.sent += sent as u64;
        let result = match reply {
            Reply::Queue(QueueReply {
                enqueued,
                skipped,
                status,
                error,
            }) => {
                self.enqueued += enqueued;
                self.skipped += skipped;
                if *status != 0 {
                    Err(format!(
                        "server error {status}{}",
                        error
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    ))
                } else if enqueued + skipped != sent as u64 {
                    Err(format!(
                        "didn't process all records (expected {sent}, got {enqueued}+{skipped})"
                    ))
                } else {
                    Ok(())
                }
            }
            other => Err(format!("unexpected {} reply to queue", other.command())),
        };
        result.map_err(|e| {
            let msg = format!("lines {first_line}-{last_line}: {e}");
            self.errors.push(msg.clone());
            msg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "fid=[0x200005223:0x1cce:0x0] dfid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef action=ARCHIVE archive#=1 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[] canceled=0 uuid=3185ca0b done=0";

    #[test]
    fn upstream_example_line_becomes_the_documented_item() {
        let input = parse_queue_input(&format!(
            "mdt.testfs0-MDT0000.hsm.active_requests=\n{LINE}\n"
        ))
        .unwrap();
        assert_eq!(input.lines, vec![2]);
        let item = serde_json::to_value(&input.items[0]).unwrap();
        assert_eq!(
            item,
            serde_json::json!({"hai_action": 20, "hai_fid": {"f_seq": 8589955619u64, "f_oid": 7374, "f_ver": 0},
                "hai_dfid": {"f_seq": 8589955619u64, "f_oid": 7374, "f_ver": 0}, "hai_extent_offset": 0,
                "hai_extent_length": -1, "hai_cookie": 1635591151, "hai_gid": 0, "hal_archive_id": 1,
                "hal_flags": 0, "hai_data": "", "timestamp": 0})
        );
    }

    #[test]
    fn cancel_left_out_zero_archive_refused_truncation_flagged() {
        let cancel = LINE.replace("ARCHIVE", "CANCEL");
        let long = LINE.replace("data=[]", "data=[7461673D6D]");
        let input = parse_queue_input(&format!("{cancel}\n{long}\n")).unwrap();
        assert_eq!(input.left_out, vec![(1, HsmAction::Cancel)]);
        assert_eq!(input.lines, vec![2]);
        assert_eq!(input.maybe_truncated, vec![2]);
        assert_eq!(input.items[0].data, b"tag=m");

        let zero = LINE.replace("archive#=1", "archive#=0");
        let e = parse_queue_input(&format!("{LINE}\n{zero}\n")).unwrap_err();
        assert_eq!(e, QueueInputError::ZeroArchiveId { line: 2 });
        let e = parse_queue_input(&format!(
            "{LINE}\n\n{}\n",
            LINE.replace("dfid=[0x200005223:0x1cce:0x0] ", "")
        ))
        .unwrap_err();
        assert_eq!(e.to_string(), "line 3: missing field `dfid`");
    }

    #[test]
    fn tally_checks_status_and_counts() {
        let mut t = QueueTally::default();
        let ok = Reply::Queue(QueueReply {
            enqueued: 7,
            skipped: 3,
            ..Default::default()
        });
        assert_eq!(t.record(10, 1, 10, &ok), Ok(()));
        let short = Reply::Queue(QueueReply {
            enqueued: 7,
            skipped: 2,
            ..Default::default()
        });
        assert_eq!(
            t.record(10, 11, 20, &short).unwrap_err(),
            "lines 11-20: didn't process all records (expected 10, got 7+2)"
        );
        let bad = Reply::Queue(QueueReply {
            enqueued: 9,
            status: 22,
            error: Some("Error while parsing hsm action items".into()),
            ..Default::default()
        });
        assert_eq!(
            t.record(10, 21, 30, &bad).unwrap_err(),
            "lines 21-30: server error 22 (Error while parsing hsm action items)"
        );
        let wrong = Reply::ok(coordinatool_proto::Command::Lock);
        assert!(
            t.record(1, 31, 31, &wrong)
                .unwrap_err()
                .contains("unexpected lock reply")
        );
        assert_eq!(
            (t.messages, t.sent, t.enqueued, t.skipped, t.errors.len()),
            (4, 31, 23, 5, 3)
        );
    }
}
