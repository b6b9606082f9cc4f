//! The engine's part of the configuration.

use super::{ChHash, FairShareKey, ServerConfig};
use coordinatool_sched::{
    Batching, Config, FairShare, HashMode, HostMapping, Priorities, ShareKey,
};

impl ServerConfig {
    /// The [`coordinatool_sched::Config`] these settings describe. The reporting hint is
    /// passed only when reporting is on (both `reporting_dir` and `reporting_hint` set);
    /// unset priority and fair-share keys keep the engine's defaults.
    pub fn engine_config(&self) -> Config {
        let d = Config::default();
        let dp = Priorities::default();
        let s = &self.sched;
        Config {
            client_grace_ms: self.client_grace_ms,
            host_mappings: self
                .host_mappings
                .iter()
                .map(|m| match m.hash_count {
                    None => HostMapping::Tag {
                        tag: m.tag.clone(),
                        hosts: m.hosts.clone(),
                    },
                    Some(hash_count) => HostMapping::ConsistentHash {
                        tag: m.tag.clone(),
                        hash_count,
                        hosts: m.hosts.clone(),
                        mode: match s.ch_hash {
                            ChHash::Rendezvous => HashMode::Rendezvous,
                            ChHash::Upstream => HashMode::Upstream,
                        },
                    },
                })
                .collect(),
            batching: Batching {
                idle_secs: self.batch.idle_secs,
                max_secs: self.batch.max_secs,
                slots_per_client: self.batch.slots_per_client,
            },
            reporting_hint: self.reporting().map(|(_, hint)| hint.to_string()),
            priorities: Priorities {
                restore: s.priority_restore.unwrap_or(dp.restore),
                remove: s.priority_remove.unwrap_or(dp.remove),
                archive: s.priority_archive.unwrap_or(dp.archive),
                tag: s.priority_tag.clone().or(dp.tag),
                aging_ms: s.priority_aging_ms.unwrap_or(dp.aging_ms),
            },
            fair_share: s.fair_share_key.as_ref().map(|k| FairShare {
                key: match k {
                    FairShareKey::ArchiveId => ShareKey::ArchiveId,
                    FairShareKey::Uid => ShareKey::Uid,
                    FairShareKey::Gid => ShareKey::Gid,
                    FairShareKey::ProjId => ShareKey::ProjId,
                    FairShareKey::DataTag(t) => ShareKey::DataTag(t.clone()),
                },
                weights: s.fair_share_weights.clone(),
                default_weight: s.fair_share_default_weight.unwrap_or(1),
            }),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchConfig, HostMappingLine};

    #[test]
    fn defaults_give_the_engine_defaults() {
        let c = ServerConfig::defaults("/mnt");
        let e = c.engine_config();
        let d = Config::default();
        assert_eq!(e.priorities, d.priorities);
        assert_eq!(e.fair_share, None);
        assert_eq!(e.reporting_hint, None);
        assert_eq!(e.client_grace_ms, 600_000);
        assert_eq!(e.spread, d.spread);
        coordinatool_sched::Engine::new(e).expect("a valid engine config");
    }

    #[test]
    fn every_engine_key_is_passed() {
        let mut c = ServerConfig::defaults("/mnt");
        c.client_grace_ms = 5;
        c.host_mappings = vec![
            HostMappingLine {
                tag: "t=a".into(),
                hash_count: None,
                hosts: vec!["h1".into()],
            },
            HostMappingLine {
                tag: "g=".into(),
                hash_count: Some(10),
                hosts: vec!["h2".into(), "h3".into()],
            },
        ];
        c.batch = BatchConfig {
            idle_secs: 30,
            max_secs: 60,
            slots_per_client: 2,
        };
        c.reporting_dir = Some(".r".into());
        c.reporting_hint = Some("cr".into());
        c.sched.ch_hash = ChHash::Upstream;
        c.sched.priority_restore = Some(9);
        c.sched.priority_tag = Some("prio=".into());
        c.sched.priority_aging_ms = Some(0);
        c.sched.fair_share_key = Some(FairShareKey::DataTag("user=".into()));
        c.sched.fair_share_weights = vec![("alice".into(), 3)];
        let e = c.engine_config();
        assert_eq!(e.client_grace_ms, 5);
        assert_eq!(
            e.host_mappings,
            vec![
                HostMapping::Tag {
                    tag: "t=a".into(),
                    hosts: vec!["h1".into()]
                },
                HostMapping::ConsistentHash {
                    tag: "g=".into(),
                    hash_count: 10,
                    hosts: vec!["h2".into(), "h3".into()],
                    mode: HashMode::Upstream
                },
            ]
        );
        assert_eq!(
            e.batching,
            Batching {
                idle_secs: 30,
                max_secs: 60,
                slots_per_client: 2
            }
        );
        assert_eq!(e.reporting_hint.as_deref(), Some("cr"));
        assert_eq!(e.priorities.restore, 9);
        assert_eq!(e.priorities.remove, Priorities::default().remove);
        assert_eq!(e.priorities.tag.as_deref(), Some("prio="));
        assert_eq!(e.priorities.aging_ms, 0);
        assert_eq!(
            e.fair_share,
            Some(FairShare {
                key: ShareKey::DataTag("user=".into()),
                weights: vec![("alice".into(), 3)],
                default_weight: 1
            })
        );
        coordinatool_sched::Engine::new(e).expect("a valid engine config");
        // The hint alone does not turn reporting on.
        c.reporting_dir = None;
        assert_eq!(c.engine_config().reporting_hint, None);
    }
}
