//! Persistence of the request queue: the [`Store`] trait and its implementations.
//!
//! The event loop collects every [`PersistOp`] the engine emits during one turn into a
//! [`Batch`], calls [`Store::commit`] once (group commit), and only then sends the replies
//! that depend on those changes (a `recv` reply after its `Assigned`, a `done` or `queue`
//! reply after its `Finished`/`New`). At start, [`Store::load`] returns every request with
//! the client it was assigned to, for [`Engine::recover`](coordinatool_sched::Engine::recover).
//!
//! Implementations:
//!
//! * [`EmbeddedStore`]: a redb database in the state directory. A commit returns once the
//!   transaction is durable (fsync). Records are a compact versioned binary form, not JSON:
//!   about half the size, and decoding 1M of them is several times faster than parsing JSON,
//!   which is what recovery time is made of.
//! * [`RedisStore`]: upstream's two hashes (`coordinatool_requests`, `coordinatool_assigned`),
//!   same fields and JSON values, so a site can switch between the C server and this one with
//!   its queue intact. Writes are pipelined; while Redis is away they are buffered, coalesced
//!   per key, and re-synced when it returns ([`StoreHealth`] says so).
//! * [`NoStore`]: no persistence (`store none`, or `redis` with an empty host).
//!
//! The trait is synchronous and `Send`: a loop on tokio calls it from a blocking section
//! (`spawn_blocking` or `block_in_place`), once per turn.

mod codec;
mod embedded;
mod redis;

pub(crate) use codec::request_from_item;
pub use codec::{
    DecodeRecordError, KEY_LEN, decode_record, decode_record_client, encode_record, field_from_key,
    key_bytes, key_from_bytes, key_from_field, request_from_wire, request_to_wire,
    set_record_client,
};
pub use embedded::{DB_FILE_NAME, EmbeddedStore};
pub use redis::{
    ASSIGNED_HASH, REPORTS_HASH, REQUESTS_HASH, RedisOptions, RedisStore, WRITE_SEQ_KEY,
};

use coordinatool_sched::{PersistOp, Request};

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every valid request, with the id of the client it was assigned to, if any.
    pub requests: Vec<Recovered>,
    /// Report files known to exist (see [`Batch::track_report_file`]).
    pub report_files: Vec<String>,
    /// Entries that could not be decoded: skipped, and reported here.
    pub corrupt: Vec<CorruptEntry>,
    /// Assignments whose request no longer exists: removed from the store during the load.
    pub stale_assignments: usize,
}

/// One request read back from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The request.
    pub request: Request,
    /// The client id it runs on, if it was assigned.
    pub assigned: Option<String>,
}

/// An entry skipped during [`Store::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptEntry {
    /// Table or hash it came from.
    pub table: &'static str,
    /// Its key, as hex (the Redis field format) or as text.
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// A change to the set of report files the store remembers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportFileOp {
    /// The report file with this name was created.
    Track(String),
    /// The report file with this name was deleted.
    Untrack(String),
}

/// The changes of one turn of the event loop, applied atomically by [`Store::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<PersistOp>,
    reports: Vec<ReportFileOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an engine change (applied in order).
    pub fn push(&mut self, op: PersistOp) {
        self.ops.push(op);
    }

    /// Records that a report file now exists, so a restart can still delete it.
    pub fn track_report_file(&mut self, name: impl Into<String>) {
        self.reports.push(ReportFileOp::Track(name.into()));
    }

    /// Records that a report file was deleted.
    pub fn untrack_report_file(&mut self, name: impl Into<String>) {
        self.reports.push(ReportFileOp::Untrack(name.into()));
    }

    /// Adds a report-file change.
    pub fn push_report_op(&mut self, op: ReportFileOp) {
        self.reports.push(op);
    }

    /// The engine changes, in order.
    pub fn ops(&self) -> &[PersistOp] {
        &self.ops
    }

    /// The report-file changes, in order.
    pub fn report_ops(&self) -> &[ReportFileOp] {
        &self.reports
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.reports.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len() + self.reports.len()
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.reports.clear();
    }
}

impl Extend<PersistOp> for Batch {
    fn extend<T: IntoIterator<Item = PersistOp>>(&mut self, iter: T) {
        self.ops.extend(iter);
    }
}

/// What [`Store::commit`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStatus {
    /// Every change is durable (embedded: fsynced; Redis: acknowledged by the server).
    Durable,
    /// The backend is unreachable: the changes are kept in memory and will be written when
    /// it returns. The server keeps working.
    Buffered,
}

/// The backend's state, for `status` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// Backend name (`embedded`, `redis`, `none`).
    pub backend: &'static str,
    /// Whether the backend is reachable.
    pub connected: bool,
    /// Keys with changes not yet written (only non-zero while disconnected).
    pub pending_keys: usize,
    /// Last error seen, if the backend is not healthy.
    pub last_error: Option<String>,
    /// The backend came back without some acknowledged changes (Redis restarted from an
    /// old snapshot, or empty): the loop must call [`Store::full_resync`] with the whole
    /// queue.
    pub needs_full_resync: bool,
}

/// A store failure that the server cannot work around.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded database failed.
    #[error("embedded store {}: {source}", path.display())]
    Embedded {
        /// The database file.
        path: std::path::PathBuf,
        /// The redb error.
        #[source]
        source: ::redb::Error,
    },
    /// A filesystem error around the embedded database.
    #[error("embedded store {}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: std::path::PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer, incompatible version.
    #[error("embedded store {}: format version {found} is not supported (expected {expected})", path.display())]
    Format {
        /// The database file.
        path: std::path::PathBuf,
        /// Version found.
        found: u64,
        /// Version this build writes.
        expected: u64,
    },
    /// Redis could not be reached or failed (at start: upstream refuses to start too).
    #[error("redis {addr}: {message}")]
    Redis {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        message: String,
    },
}

/// A persistent home for the queue.
pub trait Store: Send {
    /// Reads every request and assignment back. Called once, at start, before the server
    /// listens. Bad entries are skipped and listed in [`Recovery::corrupt`].
    fn load(&mut self) -> Result<Recovery, StoreError>;

    /// Applies `batch` atomically. Returns once the changes are durable
    /// ([`CommitStatus::Durable`]), or once they are safely buffered because the backend is
    /// away ([`CommitStatus::Buffered`]). An error means the changes may be lost (the
    /// embedded database failed): the server should stop.
    fn commit(&mut self, batch: &Batch) -> Result<CommitStatus, StoreError>;

    /// The backend's state.
    fn health(&self) -> StoreHealth;

    /// Replaces everything stored with `snapshot` (every request as `New`, every running
    /// one also as `Assigned`, every report file as tracked), when
    /// [`StoreHealth::needs_full_resync`] says the backend lost data. Same return as
    /// [`commit`](Store::commit). The default applies `snapshot` as a commit, which suits
    /// backends that never lose acknowledged data.
    fn full_resync(&mut self, snapshot: &Batch) -> Result<CommitStatus, StoreError> {
        self.commit(snapshot)
    }
}

/// No persistence: every commit is a no-op and nothing is recovered.
#[derive(Debug, Default)]
pub struct NoStore;

impl Store for NoStore {
    fn load(&mut self) -> Result<Recovery, StoreError> {
        Ok(Recovery::default())
    }

    fn commit(&mut self, _batch: &Batch) -> Result<CommitStatus, StoreError> {
        Ok(CommitStatus::Durable)
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: "none",
            connected: true,
            pending_keys: 0,
            last_error: None,
            needs_full_resync: false,
        }
    }
}

/// Opens the store `cfg` asks for: embedded in [`ServerConfig::state_dir`](crate::config::ServerConfig::state_dir),
/// Redis at `redis_host:redis_port` (refusing to start when it is unreachable, as upstream),
/// or none.
pub fn open(cfg: &crate::config::ServerConfig) -> Result<Box<dyn Store>, StoreError> {
    use crate::config::StoreKind;
    Ok(match cfg.effective_store() {
        StoreKind::Embedded => Box::new(EmbeddedStore::open(&cfg.state_dir())?),
        StoreKind::Redis => Box::new(RedisStore::connect(RedisOptions::new(
            cfg.redis_host.clone(),
            cfg.redis_port,
        ))?),
        StoreKind::None => Box::new(NoStore),
    })
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod engine_tests;

#[cfg(test)]
mod open_tests {
    use super::*;
    use crate::config::{ServerConfig, StoreKind};

    #[test]
    fn open_follows_the_config() {
        let dir = testutil::TempDir::new("open");
        let mut cfg = ServerConfig::defaults("/mnt");
        cfg.state_dir_override = Some(dir.0.join("state"));
        let s = open(&cfg).unwrap();
        assert_eq!(s.health().backend, "embedded");
        drop(s);
        assert!(dir.0.join("state").join(DB_FILE_NAME).exists());
        cfg.store = StoreKind::None;
        assert_eq!(open(&cfg).unwrap().health().backend, "none");
        cfg.store = StoreKind::Redis;
        cfg.redis_host = String::new();
        assert_eq!(
            open(&cfg).unwrap().health().backend,
            "none",
            "empty redis host: no store"
        );
        cfg.redis_host = "127.0.0.1".into();
        cfg.redis_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            matches!(open(&cfg), Err(StoreError::Redis { .. })),
            "unreachable redis refuses to start"
        );
        if let Some(server) = testutil::RedisServer::start() {
            cfg.redis_port = server.port;
            assert_eq!(open(&cfg).unwrap().health().backend, "redis");
        }
    }
}
