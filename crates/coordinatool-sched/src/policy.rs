//! The [`Policy`] trait (ordering and placement decisions) and the built-in
//! [`ConfigPolicy`] that implements upstream's host mappings, priorities and fair share.

use crate::config::{Config, HashMode, HostMapping, ShareKey};
use crate::engine::ConfigError;
use crate::fxhash::FxHashMap;
use crate::hint::{Rng, data_contains_tag, djb2, fnv1a, parse_hint, rendezvous_hashed};
use crate::types::{ClientState, Kind, Request};
use tracing::warn;

/// The fair-share flow of a request and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Requests with the same key share one flow (one user, one project, ...).
    pub key: u64,
    /// Weight of that flow (at least 1): a flow of weight 2 gets twice the service.
    pub weight: u32,
}

/// Where a request must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Any compatible mover.
    Anywhere,
    /// Only the client with this id (connected, within grace, or a placeholder created for it).
    Host {
        /// Client id.
        host: String,
        /// Replacement hsm data the movers will see (upstream's consistent-hash rewrite);
        /// the engine keeps the original and always places from it.
        data: Option<Box<[u8]>>,
    },
}

/// Ordering and placement decisions, pluggable by an embedding tool.
///
/// The engine calls [`priority`](Policy::priority) and [`share`](Policy::share) once per
/// request at registration, and [`place`](Policy::place) each time a request is (re)placed,
/// always with its original data. Restore locality is a separate hook
/// ([`RestoreLocator`](crate::RestoreLocator)), consulted when `place` answers `Anywhere`
/// for a restore.
pub trait Policy {
    /// Priority of a request (higher goes first; aging is applied by the engine).
    fn priority(&self, request: &Request, kind: Kind) -> i32;
    /// Fair-share flow and weight of a request.
    fn share(&self, request: &Request) -> Share;
    /// Where a request must run. `client` tells the state of a client id, `None` if unknown.
    fn place(
        &mut self,
        request: &Request,
        kind: Kind,
        client: &dyn Fn(&str) -> Option<ClientState>,
    ) -> Placement;
}

/// The built-in policy: upstream's `archive_on_hosts` / `archive_on_hosts_ch`, priorities
/// per kind plus a data tag, and weighted fair share, all from [`Config`].
#[derive(Debug)]
pub struct ConfigPolicy {
    base: [i32; 3],
    prio_tag: Option<Vec<u8>>,
    share_key: Option<ShareKey>,
    weights: FxHashMap<u64, u32>,
    default_weight: u32,
    mappings: Vec<HostMapping>,
    /// FNV-1a hashes of each mapping's hosts, for rendezvous hashing.
    host_hashes: Vec<Vec<u64>>,
    rng: Rng,
}

impl ConfigPolicy {
    /// Builds the policy, checking the parts of `cfg` it uses.
    pub fn new(cfg: &Config) -> Result<Self, ConfigError> {
        for m in &cfg.host_mappings {
            let (tag, hosts) = match m {
                HostMapping::Tag { tag, hosts } => (tag, hosts),
                HostMapping::ConsistentHash { tag, hosts, .. } => (tag, hosts),
            };
            if hosts.is_empty() {
                return Err(ConfigError::NoHosts(tag.clone()));
            }
        }
        let mut weights = FxHashMap::default();
        let mut default_weight = 1;
        if let Some(fs) = &cfg.fair_share {
            default_weight = fs.default_weight.max(1);
            for (k, w) in &fs.weights {
                if *w == 0 {
                    return Err(ConfigError::ZeroWeight(k.clone()));
                }
                let share = match fs.key {
                    ShareKey::DataTag(_) => fnv1a(k.as_bytes()),
                    _ => k
                        .parse::<u64>()
                        .map_err(|_| ConfigError::BadWeightKey(k.clone()))?,
                };
                weights.insert(share, *w);
            }
        }
        let p = &cfg.priorities;
        Ok(ConfigPolicy {
            base: [p.restore, p.remove, p.archive],
            prio_tag: p.tag.clone().map(String::into_bytes),
            share_key: cfg.fair_share.as_ref().map(|f| f.key.clone()),
            weights,
            default_weight,
            // Upstream builds its list by head insertion: the last line is checked first.
            mappings: cfg.host_mappings.iter().rev().cloned().collect(),
            host_hashes: cfg
                .host_mappings
                .iter()
                .rev()
                .map(|m| match m {
                    HostMapping::Tag { hosts, .. } | HostMapping::ConsistentHash { hosts, .. } => {
                        hosts.iter().map(|h| fnv1a(h.as_bytes())).collect()
                    }
                })
                .collect(),
            rng: Rng::new(cfg.seed),
        })
    }
}

impl Policy for ConfigPolicy {
    fn priority(&self, r: &Request, kind: Kind) -> i32 {
        self.base[kind.index()]
            + self.prio_tag.as_ref().map_or(0, |t| {
                parse_hint(&r.data, t)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<i32>().ok())
                    .map_or(0, |v| v.clamp(-100, 100))
            })
    }

    fn share(&self, r: &Request) -> Share {
        let key = match &self.share_key {
            None => 0,
            Some(ShareKey::ArchiveId) => u64::from(r.archive_id),
            Some(ShareKey::DataTag(tag)) => {
                parse_hint(&r.data, tag.as_bytes()).map_or(u64::MAX, fnv1a)
            }
            Some(ShareKey::Uid) => r.owner.map_or(u64::MAX, |o| u64::from(o.uid)),
            Some(ShareKey::Gid) => r.owner.map_or(u64::MAX, |o| u64::from(o.gid)),
            Some(ShareKey::ProjId) => r.owner.map_or(u64::MAX, |o| u64::from(o.projid)),
        };
        Share {
            key,
            weight: self
                .weights
                .get(&key)
                .copied()
                .unwrap_or(self.default_weight),
        }
    }

    fn place(
        &mut self,
        r: &Request,
        kind: Kind,
        client: &dyn Fn(&str) -> Option<ClientState>,
    ) -> Placement {
        if kind != Kind::Archive {
            return Placement::Anywhere;
        }
        let data = &*r.data;
        let Some((mi, m)) = self.mappings.iter().enumerate().find(|(_, m)| {
            let tag = match m {
                HostMapping::Tag { tag, .. } | HostMapping::ConsistentHash { tag, .. } => tag,
            };
            data_contains_tag(data, tag.as_bytes())
        }) else {
            return Placement::Anywhere;
        };
        match m {
            HostMapping::Tag { hosts, .. } => {
                // Random start, then the first connected host, else the first known one,
                // else the start host (a placeholder): never anyone else.
                let n = hosts.len();
                let start = self.rng.below(n);
                let order = (0..n).map(|i| (start + i) % n);
                let connected =
                    |i: &usize| client(&hosts[*i]).is_some_and(|s| s != ClientState::Disconnected);
                let pick = order
                    .clone()
                    .find(connected)
                    .or_else(|| order.clone().find(|&i| client(&hosts[i]).is_some()))
                    .unwrap_or(start);
                Placement::Host {
                    host: hosts[pick].clone(),
                    data: None,
                }
            }
            HostMapping::ConsistentHash {
                tag,
                hash_count,
                hosts,
                mode,
            } => {
                let Some(v) = parse_hint(data, tag.as_bytes()) else {
                    warn!(tag = %tag, "archive_on_hosts_ch: value not found in hsm data");
                    return Placement::Anywhere;
                };
                let n = hosts.len() as u64;
                let (host, data) = match mode {
                    HashMode::Rendezvous => match rendezvous_hashed(v, &self.host_hashes[mi]) {
                        Some(i) => (hosts[i].clone(), None),
                        None => return Placement::Anywhere,
                    },
                    HashMode::Upstream if *hash_count > 0 => {
                        let nv = (djb2(v) % u64::from(*hash_count)).to_string();
                        let host = hosts[(djb2(nv.as_bytes()) % n) as usize].clone();
                        let start = v.as_ptr() as usize - data.as_ptr() as usize;
                        let end = start + v.len();
                        let mut d = Vec::with_capacity(data.len() + nv.len());
                        d.extend_from_slice(&data[..start]);
                        d.extend_from_slice(nv.as_bytes());
                        d.extend_from_slice(&data[end..]);
                        (host, Some(d.into_boxed_slice()))
                    }
                    HashMode::Upstream => (hosts[(djb2(v) % n) as usize].clone(), None),
                };
                Placement::Host { host, data }
            }
        }
    }
}
