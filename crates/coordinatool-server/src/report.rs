//! Report files (upstream §4.18): one file per value of the reporting hint, in
//! `<mount point>/<reporting_dir>`, with one line per event.
//!
//! Lines: `new <dfid>`, `assign <dfid> <client>`, `sent <dfid> <client>`,
//! `progress <dfid> <client|global_queue> <pos>/<total>`, `done <dfid> <status>`,
//! `cancel <dfid>`, each ending with a newline (upstream forgot it after `cancel`). The fid is
//! printed as upstream does (`[%#llx:0x%x:0x%x]`). A line longer than 127 bytes is dropped with
//! a warning, as upstream.
//!
//! Deletion schedule: when the engine says a value is idle (no request uses it any more),
//! the file is deleted at the second reporting tick after that, so 1 to 2 intervals later,
//! unless a new request for that value arrives first. With an interval of 0 there are no ticks
//! and files are never deleted (upstream). Existing files are tracked in the store
//! ([`Batch::track_report_file`]): after a restart, the files no recovered request uses go
//! through the same schedule, so nothing is left behind (upstream needed a cron job).
//!
//! [`Reporter`] is the pure logic (events in, [`ReportOutput`]s out); [`ReportWriter`] applies
//! the outputs to the directory.

use crate::store::Batch;
use coordinatool_lustre::LuFid;
use coordinatool_sched::{ReportEvent, ReportLine};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

/// Longest line written, newline included (upstream's 128-byte buffer with its NUL).
pub const MAX_LINE: usize = 127;
/// Longest report value (file name) accepted.
pub const MAX_VALUE: usize = 64;

/// A change to the report directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportOutput {
    /// Append `line` (newline included) to the file `file`.
    Append {
        /// File name inside the reporting directory.
        file: String,
        /// The line, with its newline.
        line: String,
    },
    /// Delete the file `file`.
    Delete {
        /// File name inside the reporting directory.
        file: String,
    },
}

/// The fid as upstream prints it in report lines: `%#llx` for the sequence (so `0`, not
/// `0x0`, for zero), `0x%x` for the others.
pub fn report_fid(f: &LuFid) -> String {
    if f.seq == 0 {
        format!("[0:0x{:x}:0x{:x}]", f.oid, f.ver)
    } else {
        format!("[{:#x}:0x{:x}:0x{:x}]", f.seq, f.oid, f.ver)
    }
}

/// The text of a report line, newline included; `None` for [`ReportLine::Idle`].
pub fn format_line(line: &ReportLine) -> Option<String> {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = match line {
        ReportLine::New { dfid } => write!(s, "new {}", report_fid(dfid)),
        ReportLine::Assign { dfid, client } => write!(s, "assign {} {client}", report_fid(dfid)),
        ReportLine::Sent { dfid, client } => write!(s, "sent {} {client}", report_fid(dfid)),
        ReportLine::Progress {
            dfid,
            queue,
            pos,
            total,
        } => write!(
            s,
            "progress {} {} {pos}/{total}",
            report_fid(dfid),
            queue.as_deref().unwrap_or("global_queue")
        ),
        ReportLine::Done { dfid, status } => write!(s, "done {} {status}", report_fid(dfid)),
        ReportLine::Cancel { dfid } => write!(s, "cancel {}", report_fid(dfid)),
        ReportLine::Idle => return None,
    };
    s.push('\n');
    Some(s)
}

/// Whether `v` may name a report file: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VALUE
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The reporting state machine (no IO).
#[derive(Debug)]
pub struct Reporter {
    interval_ms: u64,
    /// Files known to exist (mirrored in the store).
    tracked: HashSet<String>,
    /// Idle files waiting for deletion, with the ticks seen since they went idle.
    cleanup: HashMap<String, u8>,
}

impl Reporter {
    /// A reporter ticking every `interval_ms` (0 = never), which knows the files `existing`
    /// (from [`Recovery::report_files`](crate::store::Recovery::report_files)). Those files
    /// start on the deletion schedule; the recovered requests that use them take them back
    /// with their `new` events, which come before the first tick.
    pub fn new(interval_ms: u64, existing: impl IntoIterator<Item = String>) -> Self {
        let tracked: HashSet<String> = existing.into_iter().collect();
        let cleanup = if interval_ms == 0 {
            HashMap::new()
        } else {
            tracked.iter().map(|f| (f.clone(), 0)).collect()
        };
        Reporter {
            interval_ms,
            tracked,
            cleanup,
        }
    }

    /// The tick period in ms (0 = no ticks).
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Whether ticks are needed for deletions (progress lines are the loop's business).
    pub fn has_pending_cleanup(&self) -> bool {
        self.interval_ms != 0 && !self.cleanup.is_empty()
    }

    /// Files known to exist.
    pub fn tracked(&self) -> impl Iterator<Item = &str> {
        self.tracked.iter().map(String::as_str)
    }

    /// Handles one engine event: pushes the file changes to `out` and the bookkeeping to
    /// `batch` (committed with the rest of the turn).
    pub fn on_event(&mut self, ev: &ReportEvent, out: &mut Vec<ReportOutput>, batch: &mut Batch) {
        if !valid_value(&ev.value) {
            warn!(value = %ev.value, "report value is not a valid file name: not reported");
            return;
        }
        let Some(line) = format_line(&ev.line) else {
            // Idle: start the deletion countdown (never with an interval of 0).
            if self.interval_ms != 0 && self.tracked.contains(&ev.value) {
                self.cleanup.insert(ev.value.clone(), 0);
            }
            return;
        };
        if line.len() > MAX_LINE {
            warn!(file = %ev.value, len = line.len(), "report line longer than {MAX_LINE} bytes: dropped");
            return;
        }
        self.cleanup.remove(&ev.value);
        if self.tracked.insert(ev.value.clone()) {
            batch.track_report_file(ev.value.clone());
        }
        out.push(ReportOutput::Append {
            file: ev.value.clone(),
            line,
        });
    }

    /// One reporting tick: files idle for two ticks are deleted.
    pub fn tick(&mut self, out: &mut Vec<ReportOutput>, batch: &mut Batch) {
        let mut gone = Vec::new();
        for (file, ticks) in &mut self.cleanup {
            *ticks += 1;
            if *ticks >= 2 {
                gone.push(file.clone());
            }
        }
        gone.sort();
        for file in gone {
            self.cleanup.remove(&file);
            self.tracked.remove(&file);
            batch.untrack_report_file(file.clone());
            out.push(ReportOutput::Delete { file });
        }
    }
}

/// Applies [`ReportOutput`]s to the reporting directory.
#[derive(Debug)]
pub struct ReportWriter {
    dir: PathBuf,
}

impl ReportWriter {
    /// Opens `dir` (upstream: `<mount point>/<reporting_dir>`), creating it with mode 0711
    /// if it is missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o711).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        Ok(ReportWriter {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `outputs` in order. The lines of one file are written with one
    /// open/write/close (`O_APPEND`, mode 0644). Errors are logged, never fatal: reporting is
    /// informational.
    pub fn apply(&self, outputs: &[ReportOutput]) {
        let mut order: Vec<&str> = Vec::new();
        let mut pending: HashMap<&str, String> = HashMap::new();
        for o in outputs {
            match o {
                ReportOutput::Append { file, line } => {
                    pending
                        .entry(file)
                        .or_insert_with(|| {
                            order.push(file);
                            String::new()
                        })
                        .push_str(line);
                }
                ReportOutput::Delete { file } => {
                    if let Some(text) = pending.remove(file.as_str()) {
                        self.append(file, &text);
                        order.retain(|f| f != file);
                    }
                    match std::fs::remove_file(self.dir.join(file)) {
                        Ok(()) => debug!(%file, "report file deleted"),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => warn!(%file, error = %e, "cannot delete report file"),
                    }
                }
            }
        }
        for f in order {
            if let Some(text) = pending.get(f) {
                self.append(f, text);
            }
        }
    }

    fn append(&self, file: &str, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(file);
        let r = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = r {
            warn!(path = %path.display(), error = %e, "cannot write report file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ReportFileOp;

    fn fid(oid: u32) -> LuFid {
        LuFid::new(0x200000401, oid, 0)
    }

    fn ev(value: &str, line: ReportLine) -> ReportEvent {
        ReportEvent {
            value: value.into(),
            line,
        }
    }

    fn tmpdir() -> crate::store::testutil::TempDir {
        crate::store::testutil::TempDir::new("report")
    }

    #[test]
    fn lines_are_upstreams_with_newlines() {
        let d = fid(0xb59);
        let c = || "mover1".to_string();
        let cases = [
            (ReportLine::New { dfid: d }, "new [0x200000401:0xb59:0x0]\n"),
            (
                ReportLine::Assign {
                    dfid: d,
                    client: c(),
                },
                "assign [0x200000401:0xb59:0x0] mover1\n",
            ),
            (
                ReportLine::Sent {
                    dfid: d,
                    client: c(),
                },
                "sent [0x200000401:0xb59:0x0] mover1\n",
            ),
            (
                ReportLine::Progress {
                    dfid: d,
                    queue: Some(c()),
                    pos: 2,
                    total: 7,
                },
                "progress [0x200000401:0xb59:0x0] mover1 2/7\n",
            ),
            (
                ReportLine::Progress {
                    dfid: d,
                    queue: None,
                    pos: 1,
                    total: 1,
                },
                "progress [0x200000401:0xb59:0x0] global_queue 1/1\n",
            ),
            (
                ReportLine::Done {
                    dfid: d,
                    status: -2,
                },
                "done [0x200000401:0xb59:0x0] -2\n",
            ),
            (
                ReportLine::Cancel { dfid: d },
                "cancel [0x200000401:0xb59:0x0]\n",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(format_line(&line).as_deref(), Some(want));
        }
        assert_eq!(format_line(&ReportLine::Idle), None);
        assert_eq!(report_fid(&LuFid::new(0, 1, 2)), "[0:0x1:0x2]");
    }

    #[test]
    fn values_must_be_safe_file_names() {
        assert!(valid_value("job_1-A"));
        assert!(valid_value(&"a".repeat(64)));
        assert!(!valid_value(&"a".repeat(65)));
        for v in ["", "../x", "a/b", "a b", "é", "."] {
            assert!(!valid_value(v), "{v:?}");
        }
        let mut r = Reporter::new(1000, []);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(
            &ev("../etc", ReportLine::New { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        assert!(out.is_empty() && b.is_empty());
    }

    #[test]
    fn long_lines_are_dropped() {
        let mut r = Reporter::new(1000, []);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        let client = "m".repeat(100);
        r.on_event(
            &ev(
                "j",
                ReportLine::Sent {
                    dfid: fid(1),
                    client,
                },
            ),
            &mut out,
            &mut b,
        );
        assert!(out.is_empty());
        // 127 bytes with the newline is still fine.
        let base = "sent [0x200000401:0x1:0x0] \n".len();
        let client = "m".repeat(MAX_LINE - base);
        r.on_event(
            &ev(
                "j",
                ReportLine::Sent {
                    dfid: fid(1),
                    client,
                },
            ),
            &mut out,
            &mut b,
        );
        assert_eq!(out.len(), 1);
        let ReportOutput::Append { line, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(line.len(), MAX_LINE);
    }

    #[test]
    fn deletion_schedule_one_to_two_intervals() {
        let mut r = Reporter::new(1000, []);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(
            &ev("job", ReportLine::New { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        assert_eq!(b.report_ops(), &[ReportFileOp::Track("job".into())]);
        r.on_event(
            &ev(
                "job",
                ReportLine::Done {
                    dfid: fid(1),
                    status: 0,
                },
            ),
            &mut out,
            &mut b,
        );
        assert_eq!(b.report_ops().len(), 1, "tracked once");
        assert!(!r.has_pending_cleanup());
        r.on_event(&ev("job", ReportLine::Idle), &mut out, &mut b);
        assert!(r.has_pending_cleanup());
        out.clear();
        r.tick(&mut out, &mut b);
        assert!(out.is_empty(), "not at the first tick");
        r.tick(&mut out, &mut b);
        assert_eq!(out, vec![ReportOutput::Delete { file: "job".into() }]);
        assert_eq!(
            b.report_ops().last(),
            Some(&ReportFileOp::Untrack("job".into()))
        );
        assert!(!r.has_pending_cleanup());
        assert_eq!(r.tracked().count(), 0);
        out.clear();
        r.tick(&mut out, &mut b);
        assert!(out.is_empty());
    }

    #[test]
    fn a_new_request_takes_the_file_back() {
        let mut r = Reporter::new(1000, []);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(
            &ev("job", ReportLine::New { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        r.on_event(&ev("job", ReportLine::Idle), &mut out, &mut b);
        r.tick(&mut out, &mut b);
        r.on_event(
            &ev("job", ReportLine::New { dfid: fid(2) }),
            &mut out,
            &mut b,
        );
        out.clear();
        r.tick(&mut out, &mut b);
        r.tick(&mut out, &mut b);
        assert!(out.is_empty(), "{out:?}");
        // Idle again: the countdown restarts from zero.
        r.on_event(&ev("job", ReportLine::Idle), &mut out, &mut b);
        r.tick(&mut out, &mut b);
        assert!(out.is_empty());
        r.tick(&mut out, &mut b);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn interval_zero_never_deletes() {
        let mut r = Reporter::new(0, ["old".to_string()]);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(
            &ev("job", ReportLine::New { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        r.on_event(&ev("job", ReportLine::Idle), &mut out, &mut b);
        out.clear();
        for _ in 0..5 {
            r.tick(&mut out, &mut b);
        }
        assert!(out.is_empty());
        assert!(!r.has_pending_cleanup());
    }

    #[test]
    fn files_left_by_a_restart_are_cleaned() {
        // "used" has a recovered request, "orphan" has none.
        let mut r = Reporter::new(1000, ["used".to_string(), "orphan".to_string()]);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(
            &ev("used", ReportLine::New { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        assert!(b.is_empty(), "already tracked");
        out.clear();
        r.tick(&mut out, &mut b);
        r.tick(&mut out, &mut b);
        assert_eq!(
            out,
            vec![ReportOutput::Delete {
                file: "orphan".into()
            }]
        );
        assert_eq!(b.report_ops(), &[ReportFileOp::Untrack("orphan".into())]);
    }

    #[test]
    fn writer_appends_and_deletes() {
        let d = tmpdir();
        let dir = d.0.join(".reporting");
        let w = ReportWriter::open(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o711, 0, "at most rwx--x--x: {mode:o}");
        ReportWriter::open(&dir).expect("an existing directory is fine");
        let mut r = Reporter::new(1000, []);
        let (mut out, mut b) = (Vec::new(), Batch::new());
        r.on_event(&ev("a", ReportLine::New { dfid: fid(1) }), &mut out, &mut b);
        r.on_event(&ev("b", ReportLine::New { dfid: fid(2) }), &mut out, &mut b);
        r.on_event(
            &ev("a", ReportLine::Cancel { dfid: fid(1) }),
            &mut out,
            &mut b,
        );
        w.apply(&out);
        out.clear();
        r.on_event(&ev("a", ReportLine::New { dfid: fid(3) }), &mut out, &mut b);
        w.apply(&out);
        assert_eq!(
            std::fs::read_to_string(dir.join("a")).unwrap(),
            "new [0x200000401:0x1:0x0]\ncancel [0x200000401:0x1:0x0]\nnew [0x200000401:0x3:0x0]\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("b")).unwrap(),
            "new [0x200000401:0x2:0x0]\n"
        );
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & !0o644, 0, "at most rw-r--r--: {mode:o}");
        // Lines before a deletion in the same batch are written first, then the file goes.
        w.apply(&[
            ReportOutput::Append {
                file: "b".into(),
                line: "x\n".into(),
            },
            ReportOutput::Delete { file: "b".into() },
            ReportOutput::Delete {
                file: "never-existed".into(),
            },
        ]);
        assert!(!dir.join("b").exists());
        assert!(dir.join("a").exists());
    }

    #[test]
    fn writer_refuses_a_file_as_directory() {
        let d = tmpdir();
        let f = d.0.join("file");
        std::fs::write(&f, "").unwrap();
        assert!(ReportWriter::open(&f).is_err());
    }
}
