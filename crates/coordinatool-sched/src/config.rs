//! Engine configuration (the scheduling part of the server's config file).

use crate::engine::ConfigError;

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

impl Config {
    /// Applies one `key value` line of the coordinatool config file if `key` is one of the
    /// engine's (case-insensitive): `client_grace_ms`, `archive_on_hosts`,
    /// `archive_on_hosts_ch`, `batch_archives_slices_sec` (also spelled
    /// `batch_archives_slice_sec`, as in the upstream README), `batch_archives_slots_per_client`,
    /// `reporting_hint`. Returns `Ok(false)` for any other key, so the caller can handle it.
    ///
    /// Unlike upstream, an unparsable `hash_count` is an error rather than a silent 0.
    pub fn apply_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let bad = |reason: &'static str| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let value = value.trim();
        let mut words = value.split_whitespace();
        match key.to_ascii_lowercase().as_str() {
            "client_grace_ms" => {
                self.client_grace_ms = value
                    .parse()
                    .map_err(|_| bad("not a number of milliseconds"))?;
            }
            "archive_on_hosts" => {
                let tag = words.next().ok_or_else(|| bad("missing tag"))?;
                let hosts: Vec<String> = words.map(str::to_string).collect();
                if hosts.is_empty() {
                    // Upstream ignores a tag without hosts (info log).
                    tracing::info!(tag, "archive_on_hosts without host ignored");
                } else {
                    self.host_mappings.push(HostMapping::Tag {
                        tag: tag.to_string(),
                        hosts,
                    });
                }
            }
            "archive_on_hosts_ch" => {
                let tag = words.next().ok_or_else(|| bad("missing tag"))?;
                let count = words.next().ok_or_else(|| bad("missing hash_count"))?;
                let hash_count = count
                    .parse()
                    .map_err(|_| bad("hash_count is not a non-negative integer"))?;
                let hosts: Vec<String> = words.map(str::to_string).collect();
                if hosts.is_empty() {
                    return Err(bad("no host listed"));
                }
                self.host_mappings.push(HostMapping::ConsistentHash {
                    tag: tag.to_string(),
                    hash_count,
                    hosts,
                    mode: HashMode::default(),
                });
            }
            "batch_archives_slices_sec" | "batch_archives_slice_sec" => {
                let idle = words.next().ok_or_else(|| bad("missing idle seconds"))?;
                self.batching.idle_secs = idle
                    .parse()
                    .map_err(|_| bad("idle is not a number of seconds"))?;
                self.batching.max_secs = match words.next() {
                    Some(m) => m
                        .parse()
                        .map_err(|_| bad("max is not a number of seconds"))?,
                    None => 0,
                };
                if words.next().is_some() {
                    return Err(bad("expected <idle_s> [<max_s>]"));
                }
            }
            "batch_archives_slots_per_client" => {
                self.batching.slots_per_client =
                    value.parse().map_err(|_| bad("not a slot count"))?;
            }
            "reporting_hint" => self.reporting_hint = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets every consistent-hash mapping to `mode` (upstream-compatible placement is a
    /// site choice, not a config-file key upstream).
    pub fn set_hash_mode(&mut self, mode: HashMode) {
        for m in &mut self.host_mappings {
            if let HostMapping::ConsistentHash { mode: m, .. } = m {
                *m = mode;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_engine_keys_and_leaves_others() {
        let mut c = Config::default();
        assert!(c.apply_key("CLIENT_GRACE_MS", "5000").unwrap());
        assert_eq!(c.client_grace_ms, 5000);
        assert!(
            c.apply_key("archive_on_hosts", "tag=n0 mover0 mover1")
                .unwrap()
        );
        assert!(c.apply_key("archive_on_hosts", "lonely").unwrap());
        assert!(
            c.apply_key("archive_on_hosts_ch", "grouping= 10 a b c")
                .unwrap()
        );
        assert_eq!(c.host_mappings.len(), 2);
        c.set_hash_mode(HashMode::Upstream);
        assert!(
            matches!(&c.host_mappings[1], HostMapping::ConsistentHash { hash_count: 10, hosts, mode: HashMode::Upstream, .. } if hosts.len() == 3)
        );
        assert!(c.apply_key("batch_archives_slice_sec", "300 3600").unwrap());
        assert_eq!((c.batching.idle_secs, c.batching.max_secs), (300, 3600));
        assert!(c.apply_key("batch_archives_slots_per_client", "2").unwrap());
        assert!(c.apply_key("reporting_hint", "cr").unwrap());
        assert_eq!(c.reporting_hint.as_deref(), Some("cr"));
        assert!(!c.apply_key("max_archive", "3").unwrap());
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let mut c = Config::default();
        let e = c
            .apply_key("archive_on_hosts_ch", "grouping= ten a")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key archive_on_hosts_ch: bad value \"grouping= ten a\": hash_count is not a non-negative integer"
        );
        assert!(c.apply_key("archive_on_hosts_ch", "grouping=").is_err());
        assert!(c.apply_key("archive_on_hosts_ch", "grouping= 3").is_err());
        assert!(c.apply_key("client_grace_ms", "-1").is_err());
        assert!(c.apply_key("batch_archives_slices_sec", "1 2 3").is_err());
    }
}
