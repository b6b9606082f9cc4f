//! The embedded store: one redb database file in the state directory.
//!
//! Tables: `requests`, keyed by the 24-byte big-endian request key ([`key_bytes`]), holds
//! each request's binary record ([`encode_record`]) with the client it runs on inside it
//! ([`set_record_client`]); `reports` holds the names of existing report files, `meta` the
//! format version. So a request's life (new, assigned, finished) is one insert, one
//! rewrite and one removal in one B-tree, and a load is one sequential scan.
//!
//! Format 1 kept assignments in a second table, `assigned` (key → client id). A format-1
//! database is converted when it is opened, in one transaction: each assignment moves into
//! its request's record, the table is dropped, and assignments whose request no longer
//! exists are counted as stale in the next [`load`](Store::load).

use super::codec::{
    KEY_LEN, decode_record_client, encode_record_assigned, field_from_key, key_bytes,
    key_from_bytes, set_record_client,
};
use super::{
    Batch, CommitStatus, CorruptEntry, Recovered, Recovery, ReportFileOp, Store, StoreError,
    StoreHealth,
};
use coordinatool_sched::{PersistOp, Request};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};

/// Name of the database file inside the state directory.
pub const DB_FILE_NAME: &str = "coordinatool.redb";
const FORMAT_VERSION: u64 = 2;
/// The format with assignments in their own table, converted on open.
const FORMAT_SEPARATE_ASSIGNED: u64 = 1;

const REQUESTS: TableDefinition<'_, &[u8; KEY_LEN], &[u8]> = TableDefinition::new("requests");
/// Format 1 only (key → client id).
const ASSIGNED_V1: TableDefinition<'_, &[u8; KEY_LEN], &[u8]> = TableDefinition::new("assigned");
const REPORTS: TableDefinition<'_, &str, ()> = TableDefinition::new("reports");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The default store: durable on every commit, no server needed.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    buf: Vec<u8>,
    /// The batch's ops by key (key, position), reused across commits.
    order: Vec<([u8; KEY_LEN], u32)>,
    /// Assignments without a request found when converting a format-1 database, reported
    /// by the next load.
    migrated_stale: usize,
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
    /// if needed, and converts a database of the previous format. Fails if another process
    /// has it open.
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
        let mut store = EmbeddedStore {
            db,
            path,
            buf: Vec::new(),
            order: Vec::new(),
            migrated_stale: 0,
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

    fn check_format(&mut self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get("format")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(FORMAT_SEPARATE_ASSIGNED) => {
                    self.migrated_stale = self.merge_assigned_table(&tx)?;
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
                Some(v) => {
                    return Err(StoreError::Format {
                        path: self.path.clone(),
                        found: v,
                        expected: FORMAT_VERSION,
                    });
                }
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
            }
            // Create every table so read transactions never meet a missing one.
            tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            tx.open_table(REPORTS).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Format 1 → 2: moves every entry of `assigned` into its request's record and deletes
    /// the table, within `tx`. Returns the number of assignments without a request (dropped).
    /// A client id that is not UTF-8 moves as it is, for the load to report as format 1 did;
    /// an assignment of a record too damaged to rewrite is dropped with it (the load reports
    /// the record).
    fn merge_assigned_table(&self, tx: &redb::WriteTransaction) -> Result<usize, StoreError> {
        let exists = tx
            .list_tables()
            .map_err(|e| self.err(e))?
            .any(|t| t.name() == ASSIGNED_V1.name());
        if !exists {
            return Ok(0);
        }
        let mut stale = 0;
        {
            let asg = tx.open_table(ASSIGNED_V1).map_err(|e| self.err(e))?;
            let mut req = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            let mut out = Vec::new();
            for item in asg.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let key = *k.value();
                let rewritten = match req.get(&key).map_err(|e| self.err(e))? {
                    Some(found) => set_record_client(found.value(), Some(v.value()), &mut out),
                    None => {
                        stale += 1;
                        continue;
                    }
                };
                if rewritten.is_ok() {
                    req.insert(&key, out.as_slice()).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.delete_table(ASSIGNED_V1).map_err(|e| self.err(e))?;
        Ok(stale)
    }

    fn read_all(&self, out: &mut Recovery) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let requests = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
        let reports = tx.open_table(REPORTS).map_err(|e| self.err(e))?;
        let hex = |k: &[u8; KEY_LEN]| field_from_key(&key_from_bytes(k));

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
            let key = k.value();
            match decode_record_client(key_from_bytes(key), v.value()) {
                Ok((request, client)) => {
                    let assigned = match client.map(std::str::from_utf8) {
                        None => None,
                        Some(Ok(c)) => Some(c.to_owned()),
                        Some(Err(_)) => {
                            out.corrupt.push(CorruptEntry {
                                table: "requests",
                                key: hex(key),
                                reason: "client id is not UTF-8: request left unassigned".into(),
                            });
                            None
                        }
                    };
                    out.requests.push(Recovered { request, assigned });
                }
                Err(e) => out.corrupt.push(CorruptEntry {
                    table: "requests",
                    key: hex(key),
                    reason: e.to_string(),
                }),
            }
        }
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

/// Rewrites the record of `key` in `table` with `client` (`None`: not assigned). A request
/// the table does not have is left absent: its assignment would be stale. A record too
/// damaged to rewrite is left as it is, for the load to report.
fn set_client(
    table: &mut redb::Table<'_, &'static [u8; KEY_LEN], &'static [u8]>,
    key: &[u8; KEY_LEN],
    client: Option<&str>,
    buf: &mut Vec<u8>,
) -> Result<(), redb::StorageError> {
    {
        let Some(old) = table.get(key)? else {
            return Ok(());
        };
        if set_record_client(old.value(), client.map(str::as_bytes), buf).is_err()
            || buf.as_slice() == old.value()
        {
            return Ok(());
        }
    }
    table.insert(key, buf.as_slice()).map(drop)
}

/// What a batch leaves of one request, its ops folded in order.
enum Outcome<'a> {
    /// Stored with this record and assignment (a `New` in the batch).
    Put(&'a Request, Option<&'a str>),
    /// Assigned to this client (`None`: unassigned), if the store has it.
    Client(Option<&'a str>),
    /// Removed.
    Gone,
}

impl<'a> Outcome<'a> {
    /// The outcome of `op` after `prev` (`None`: the batch had not touched the key).
    fn then(prev: Option<Self>, op: &'a PersistOp) -> Self {
        use Outcome::{Client, Gone, Put};
        let client = match op {
            PersistOp::New(r) => return Put(r, None),
            PersistOp::Finished { .. } => return Gone,
            PersistOp::Assigned { client, .. } => Some(client.as_str()),
            PersistOp::Unassigned { .. } => None,
        };
        match prev {
            Some(Put(r, _)) => Put(r, client),
            // No request to assign: an assignment would be stale.
            Some(Gone) => Gone,
            Some(Client(_)) | None => Client(client),
        }
    }
}

fn op_key(op: &PersistOp) -> coordinatool_sched::RequestKey {
    match op {
        PersistOp::New(r) => r.key(),
        PersistOp::Assigned { key, .. }
        | PersistOp::Unassigned { key }
        | PersistOp::Finished { key } => *key,
    }
}

impl EmbeddedStore {
    /// Applies `ops` to `table`: each request's ops in the batch are folded into what they
    /// leave, which is written once, in key order. A request's life is New, Assigned,
    /// Finished, and the first two usually share a batch (a mover waiting in `recv` takes a
    /// new request in the turn it arrives), so most requests cost one insert and one removal;
    /// key order keeps neighbouring changes on the same pages.
    fn write_requests(
        &mut self,
        table: &mut redb::Table<'_, &'static [u8; KEY_LEN], &'static [u8]>,
        ops: &[PersistOp],
    ) -> Result<(), redb::StorageError> {
        self.order.clear();
        self.order.extend(
            ops.iter()
                .enumerate()
                .map(|(i, op)| (key_bytes(&op_key(op)), i as u32)),
        );
        // Sorting by (key, position) keeps each key's ops in batch order.
        self.order.sort_unstable();
        let mut i = 0;
        while i < self.order.len() {
            let key = self.order[i].0;
            let mut outcome = None;
            while let Some(&(k, at)) = self.order.get(i)
                && k == key
            {
                outcome = Some(Outcome::then(outcome, &ops[at as usize]));
                i += 1;
            }
            match outcome {
                Some(Outcome::Put(r, client)) => {
                    encode_record_assigned(r, client, &mut self.buf);
                    table.insert(&key, self.buf.as_slice())?;
                }
                Some(Outcome::Client(client)) => set_client(table, &key, client, &mut self.buf)?,
                Some(Outcome::Gone) => {
                    table.remove(&key)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl Store for EmbeddedStore {
    fn load(&mut self) -> Result<Recovery, StoreError> {
        let mut out = Recovery::default();
        self.read_all(&mut out)?;
        out.stale_assignments = std::mem::take(&mut self.migrated_stale);
        Ok(out)
    }

    fn commit(&mut self, batch: &Batch) -> Result<CommitStatus, StoreError> {
        if batch.is_empty() {
            return Ok(CommitStatus::Durable);
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut req = tx.open_table(REQUESTS).map_err(|e| self.err(e))?;
            self.write_requests(&mut req, batch.ops())
                .map_err(|e| self.err(e))?;
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
