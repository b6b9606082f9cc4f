//! Engine configuration (the scheduling part of the server's config file).

/// How `archive_on_hosts_ch` maps a value to a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashMode {
    /// Rendezvous hashing on the value: removing a host only moves that host's share, and
    /// the data is never rewritten. `hash_count` is ignored.
    #[default]
    Rendezvous,
    /// Upstream's exact mapping: with `hash_count > 0` the value becomes
    /// `decimal(djb2(value) % hash_count)` (rewritten in the data the movers see) and the host is
    /// `hosts[djb2(new value) % n]`; with `hash_count == 0` the host is `hosts[djb2(value) % n]`.
    /// Unlike upstream, re-placement always starts from the original data, so it is idempotent.
    Upstream,
}

/// One `archive_on_hosts` / `archive_on_hosts_ch` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMapping {
    /// `archive_on_hosts <tag> <host>...`: an archive whose data contains `tag` (anywhere,
    /// up to the first NUL) goes to one of `hosts` (connected first, then disconnected, else a
    /// placeholder), never to anyone else.
    Tag {
        /// Substring looked up in the hsm data.
        tag: String,
        /// Client ids of the hosts.
        hosts: Vec<String>,
    },
    /// `archive_on_hosts_ch <tag> <hash_count> <host>...`: the value after `tag` (which
    /// includes the `=`) picks the host by hashing.
    ConsistentHash {
        /// Key looked up with the hint parser, e.g. `grouping=`.
        tag: String,
        /// Number of hash buckets (upstream mode only).
        hash_count: u32,
        /// Client ids of the hosts.
        hosts: Vec<String>,
        /// Hashing scheme.
        mode: HashMode,
    },
}

/// Archive batching (`batch_archives_slices_sec`, `batch_archives_slots_per_client`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batching {
    /// Idle slice in seconds; 0 disables batching.
    pub idle_secs: u64,
    /// Maximum slice in seconds; 0 means no maximum.
    pub max_secs: u64,
    /// Slots per client.
    pub slots_per_client: u32,
}

/// Which value of a request fair share is computed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareKey {
    /// The archive id.
    ArchiveId,
    /// The value of a tag in the hsm data, found with the hint parser (e.g. `user=`).
    DataTag(String),
    /// The file owner's uid (from [`Owner`](crate::Owner)).
    Uid,
    /// The file owner's gid.
    Gid,
    /// The file's project id.
    ProjId,
}

/// Weighted fair share among the values of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FairShare {
    /// The key whose values share the movers.
    pub key: ShareKey,
    /// Weights of specific values (the value as text: an id in decimal, or the tag's value).
    pub weights: Vec<(String, u32)>,
    /// Weight of every other value (at least 1).
    pub default_weight: u32,
}

/// Ordering between kinds of work and within them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Priorities {
    /// Base priority of restores (higher goes first).
    pub restore: i32,
    /// Base priority of removes.
    pub remove: i32,
    /// Base priority of archives.
    pub archive: i32,
    /// Tag in the hsm data (with its `=`, e.g. `prio=`) whose integer value is added to the
    /// base priority; values are clamped to ±100.
    pub tag: Option<String>,
    /// Aging: waiting this long is worth one priority level, so no class starves.
    /// 0 disables aging (strict priorities).
    pub aging_ms: u64,
}

impl Default for Priorities {
    fn default() -> Self {
        Priorities {
            restore: 2,
            remove: 1,
            archive: 0,
            tag: None,
            aging_ms: 60_000,
        }
    }
}

/// Everything the engine needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a disconnected client keeps its work (`client_grace_ms`).
    pub client_grace_ms: u64,
    /// Host mappings, in config-file order (the last line is checked first, as upstream).
    pub host_mappings: Vec<HostMapping>,
    /// Archive batching.
    pub batching: Batching,
    /// Key looked up in the hsm data for report files (`reporting_hint`, without the `=`).
    pub reporting_hint: Option<String>,
    /// Priorities between and within kinds.
    pub priorities: Priorities,
    /// Fair share; `None` serves each priority level in arrival order.
    pub fair_share: Option<FairShare>,
    /// Upstream's "leave some for other movers" rule: one reply takes at most
    /// `pending_of_kind / connected_clients + 1` items of a kind.
    pub spread: bool,
    /// Seed of the engine's deterministic random choices (host mapping start index, ties).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client_grace_ms: 600_000,
            host_mappings: Vec::new(),
            batching: Batching::default(),
            reporting_hint: None,
            priorities: Priorities::default(),
            fair_share: None,
            spread: true,
            seed: 0x5eed,
        }
    }
}
