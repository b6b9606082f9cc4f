//! The embedded store: one redb database file in the state directory.
//!
//! Tables, all keyed by the 24-byte big-endian request key ([`key_bytes`]):
//! `requests` (key → binary record, [`encode_record`]) and `assigned` (key → client id).
//! `reports` holds the names of existing report files, `meta` the format version. Both
//! request tables sort identically, so a load is one merge of two sequential scans.

use super::codec::{KEY_LEN, decode_record, encode_record, key_bytes, key_from_bytes};
use super::{
    Batch, CommitStatus, CorruptEntry, Recovered, Recovery, ReportFileOp, Store, StoreError,
    StoreHealth,
};
use coordinatool_sched::PersistOp;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// Name of the database file inside the state directory.
pub const DB_FILE_NAME: &str = "coordinatool.redb";
const FORMAT_VERSION: u64 = 1;

const REQUESTS: TableDefinition<'_, &[u8; KEY_LEN], &[u8]> = TableDefinition::new("requests");
const ASSIGNED: TableDefinition<'_, &[u8; KEY_LEN], &[u8]> = TableDefinition::new("assigned");
const REPORTS: TableDefinition<'_, &str, ()> = TableDefinition::new("reports");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The default store: durable on every commit, no server needed.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    buf: Vec<u8>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `state_dir`, creating the directory (mode 0700)
    /// if needed. Fails if another process has it open.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::Io {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let path = state_dir.join(DB_FILE_NAME);
        let err = |e: redb::Error, path: &Path| StoreError::Embedded {
            path: path.to_path_buf(),
            source: e,
        };
        // The page cache is bounded so that memory stays proportional to the queue, not
        // to the database's history; scans are sequential and do not need more.
        let db = Database::builder()
            .set_cache_size(128 << 20)
            .create(&path)
            .map_err(|e| err(e.into(), &path))?;
        let store = EmbeddedStore {
            db,
            path,
            buf: Vec::new(),
        };
        store.check_format()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Embedded {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get("format")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                Some(v) if v != FORMAT_VERSION => {
                    return Err(StoreError::Format {
                        path: self.path.clone(),
                        found: v,
                        expected: FORMAT_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
            }
            // Create every table so read transactions never meet a missing one.
            tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            tx.open_table(ASSIGNED).map_err(|e| self.err(e))?;
            tx.open_table(REPORTS).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn read_all(
        &self,
        out: &mut Recovery,
        stale: &mut Vec<[u8; KEY_LEN]>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let requests = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
        let assigned = tx.open_table(ASSIGNED).map_err(|e| self.err(e))?;
        let reports = tx.open_table(REPORTS).map_err(|e| self.err(e))?;
        let hex = |k: &[u8; KEY_LEN]| super::codec::field_from_key(&key_from_bytes(k));

        // Both tables are sorted by key: merge them.
        let mut asg = assigned.iter().map_err(|e| self.err(e))?.peekable();
        let mut broken = false;
        for item in requests.iter().map_err(|e| self.err(e))? {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    // A storage error mid-scan leaves no position to resume from.
                    out.corrupt.push(CorruptEntry {
                        table: "requests",
                        key: String::new(),
                        reason: format!("unreadable, rest of the table skipped: {e}"),
                    });
                    break;
                }
            };
            let key = *k.value();
            let assigned = take_assignment(&mut asg, Some(&key), out, stale, &mut broken);
            match decode_record(key_from_bytes(&key), v.value()) {
                Ok(request) => out.requests.push(Recovered { request, assigned }),
                Err(e) => out.corrupt.push(CorruptEntry {
                    table: "requests",
                    key: hex(&key),
                    reason: e.to_string(),
                }),
            }
        }
        // Whatever is left in `assigned` has no request: stale.
        take_assignment(&mut asg, None, out, stale, &mut broken);
        for item in reports.iter().map_err(|e| self.err(e))? {
            match item {
                Ok((k, _)) => out.report_files.push(k.value().to_string()),
                Err(e) => {
                    out.corrupt.push(CorruptEntry {
                        table: "reports",
                        key: String::new(),
                        reason: format!("unreadable, rest of the table skipped: {e}"),
                    });
                    break;
                }
            }
        }
        Ok(())
    }
}

type AssignedIter<'a> = std::iter::Peekable<redb::Range<'a, &'static [u8; KEY_LEN], &'static [u8]>>;

/// Advances the sorted `assigned` scan up to `key` (to the end for `None`): entries before
/// it are stale, an entry equal to it is its assignment.
fn take_assignment(
    asg: &mut AssignedIter<'_>,
    key: Option<&[u8; KEY_LEN]>,
    out: &mut Recovery,
    stale: &mut Vec<[u8; KEY_LEN]>,
    broken: &mut bool,
) -> Option<String> {
    loop {
        if *broken {
            return None;
        }
        let entry = match asg.peek() {
            None => return None,
            Some(Err(e)) => {
                out.corrupt.push(CorruptEntry {
                    table: "assigned",
                    key: String::new(),
                    reason: format!("unreadable, rest of the table skipped: {e}"),
                });
                *broken = true;
                return None;
            }
            Some(Ok((k, _))) => *k.value(),
        };
        if key.is_some_and(|key| entry > *key) {
            return None;
        }
        let Some(Ok((_, v))) = asg.next() else {
            unreachable!("peeked an Ok entry")
        };
        if key != Some(&entry) {
            stale.push(entry);
            continue;
        }
        return match String::from_utf8(v.value().to_vec()) {
            Ok(s) => Some(s),
            Err(_) => {
                out.corrupt.push(CorruptEntry {
                    table: "assigned",
                    key: super::codec::field_from_key(&key_from_bytes(&entry)),
                    reason: "client id is not UTF-8: request left unassigned".into(),
                });
                None
            }
        };
    }
}

impl Store for EmbeddedStore {
    fn load(&mut self) -> Result<Recovery, StoreError> {
        let mut out = Recovery::default();
        let mut stale = Vec::new();
        self.read_all(&mut out, &mut stale)?;
        if !stale.is_empty() {
            let tx = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut t = tx.open_table(ASSIGNED).map_err(|e| self.err(e))?;
                for k in &stale {
                    t.remove(k).map_err(|e| self.err(e))?;
                }
            }
            tx.commit().map_err(|e| self.err(e))?;
        }
        out.stale_assignments = stale.len();
        Ok(out)
    }

    fn commit(&mut self, batch: &Batch) -> Result<CommitStatus, StoreError> {
        if batch.is_empty() {
            return Ok(CommitStatus::Durable);
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut req = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            let mut asg = tx.open_table(ASSIGNED).map_err(|e| self.err(e))?;
            for op in batch.ops() {
                let r = match op {
                    PersistOp::New(r) => {
                        encode_record(r, &mut self.buf);
                        req.insert(&key_bytes(&r.key()), self.buf.as_slice())
                            .map(drop)
                    }
                    PersistOp::Assigned { key, client } => {
                        asg.insert(&key_bytes(key), client.as_bytes()).map(drop)
                    }
                    PersistOp::Unassigned { key } => asg.remove(&key_bytes(key)).map(drop),
                    PersistOp::Finished { key } => {
                        let k = key_bytes(key);
                        req.remove(&k).and_then(|_| asg.remove(&k)).map(drop)
                    }
                };
                r.map_err(|e| StoreError::Embedded {
                    path: self.path.clone(),
                    source: e.into(),
                })?;
            }
            if !batch.report_ops().is_empty() {
                let mut rep = tx.open_table(REPORTS).map_err(|e| self.err(e))?;
                for op in batch.report_ops() {
                    let r = match op {
                        ReportFileOp::Track(n) => rep.insert(n.as_str(), ()).map(drop),
                        ReportFileOp::Untrack(n) => rep.remove(n.as_str()).map(drop),
                    };
                    r.map_err(|e| StoreError::Embedded {
                        path: self.path.clone(),
                        source: e.into(),
                    })?;
                }
            }
        }
        // Durability::Immediate (the default): commit() returns after fsync.
        tx.commit().map_err(|e| self.err(e))?;
        Ok(CommitStatus::Durable)
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: "embedded",
            connected: true,
            pending_keys: 0,
            last_error: None,
            needs_full_resync: false,
        }
    }
}

impl EmbeddedStore {
    /// Test and repair hook: writes raw bytes as the record of `key`, bypassing the codec.
    #[doc(hidden)]
    pub fn put_raw_record(
        &mut self,
        key: &coordinatool_sched::RequestKey,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            t.insert(&key_bytes(key), raw).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests;
