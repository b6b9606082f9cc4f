//! Archive batching (§4.10): archives waiting with the same hint (the whole hsm data) form a
//! group; a client's batch slot owns at most one group for a time slice. Groups are indexed by
//! (target queue, archive id, flags, hint) and unowned groups are ordered by age, so placement
//! and slot refill are O(1)/O(log groups), never a rescan of the archive queue. Inside a
//! group, archives are ordered like any queue (priority partitions, fair-share flows), so
//! priorities, aging and fair share also apply to what a slot sends.

use crate::fxhash::FxHashMap;
use crate::hint::fnv1a;
use crate::queue::{LinkStore, PartKey, QueueSet, Slot};
use crate::types::{Kind, Time};
use std::collections::BTreeSet;

/// `Req::slot` value of a request not sent from a batch slot.
pub(crate) const NO_SLOT: u8 = u8::MAX;

#[derive(Debug)]
pub(crate) struct Group {
    /// Queue set the group belongs to (global, or a host's own queue).
    pub(crate) target: u32,
    pub(crate) archive_id: u32,
    pub(crate) flags: u64,
    pub(crate) hint: Box<[u8]>,
    /// The waiting archives, by priority partition and fair-share flow.
    pub(crate) q: QueueSet,
    /// (client index, slot index) owning it.
    pub(crate) owner: Option<(u32, u8)>,
    /// Age order among unowned groups (first time it was queued).
    pub(crate) seq: u64,
    hash: u64,
}

impl Group {
    /// Archives waiting in the group.
    pub(crate) fn len(&self) -> u64 {
        self.q.len_by_kind[Kind::Archive.index()]
    }
}

/// One batch slot of a client.
#[derive(Clone, Debug, Default)]
pub(crate) struct BatchSlot {
    pub(crate) group: Option<u32>,
    pub(crate) expire_idle: Time,
    pub(crate) expire_max: Option<Time>,
    /// Archives sent from this slot and still running.
    pub(crate) current: u32,
    /// The deadline registered for this slot in the engine's timer set.
    pub(crate) deadline: Option<Time>,
}

impl BatchSlot {
    /// Upstream's "not reserved": the max deadline passed, or the idle deadline passed while
    /// nothing waits in the slot.
    pub(crate) fn expired(&self, group_empty: bool, now: Time) -> bool {
        self.expire_max.is_some_and(|m| m <= now) || (group_empty && self.expire_idle <= now)
    }

    /// The next time this slot may expire.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.group?;
        Some(match self.expire_max {
            Some(m) => m.min(self.expire_idle),
            None => self.expire_idle,
        })
    }
}

type GroupKey = (u32, u32, u64, u64);

#[derive(Debug, Default)]
pub(crate) struct Groups {
    pub(crate) slab: Vec<Option<Group>>,
    free: Vec<u32>,
    index: FxHashMap<GroupKey, u32>,
    /// Non-empty unowned groups: (target, seq, group).
    pub(crate) unowned: BTreeSet<(u32, u64, u32)>,
    seq: u64,
}

impl Groups {
    pub(crate) fn get(&self, g: u32) -> &Group {
        self.slab[g as usize].as_ref().expect("live group")
    }

    pub(crate) fn get_mut(&mut self, g: u32) -> &mut Group {
        self.slab[g as usize].as_mut().expect("live group")
    }

    /// The group for this key, created empty and unowned if needed.
    pub(crate) fn get_or_create(
        &mut self,
        target: u32,
        archive_id: u32,
        flags: u64,
        hint: &[u8],
    ) -> u32 {
        let hash = fnv1a(hint);
        let key = (target, archive_id, flags, hash);
        if let Some(&g) = self.index.get(&key)
            && *self.get(g).hint == *hint
        {
            return g;
        }
        self.seq += 1;
        let group = Group {
            target,
            archive_id,
            flags,
            hint: hint.into(),
            q: QueueSet::default(),
            owner: None,
            seq: self.seq,
            hash,
        };
        let g = match self.free.pop() {
            Some(g) => {
                self.slab[g as usize] = Some(group);
                g
            }
            None => {
                self.slab.push(Some(group));
                (self.slab.len() - 1) as u32
            }
        };
        // A 64-bit hash collision leaves the newer group out of the index: it still works,
        // but later arrivals with its hint start another group.
        self.index.entry(key).or_insert(g);
        g
    }

    /// Queues a request in group `g` (`share` is its fair-share flow and weight).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push<L: LinkStore + ?Sized>(
        &mut self,
        links: &mut L,
        g: u32,
        key: PartKey,
        share: (u64, u32),
        id: u32,
        front: bool,
        now: Time,
    ) -> Slot {
        let group = self.get_mut(g);
        let was_empty = group.len() == 0;
        let slot = group.q.push(links, key, share, id, front, now);
        if was_empty && group.owner.is_none() {
            let k = (group.target, group.seq, g);
            self.unowned.insert(k);
        }
        slot
    }

    /// Removes a request; frees the group when it is empty and unowned.
    pub(crate) fn remove<L: LinkStore + ?Sized>(
        &mut self,
        links: &mut L,
        g: u32,
        slot: Slot,
        id: u32,
        served: bool,
        now: Time,
    ) {
        let group = self.get_mut(g);
        group.q.remove(links, slot, id, served, now);
        if group.len() == 0 && group.owner.is_none() {
            let k = (group.target, group.seq, g);
            self.unowned.remove(&k);
            self.free_group(g);
        }
    }

    fn free_group(&mut self, g: u32) {
        let group = self.slab[g as usize].take().expect("live group");
        let key = (group.target, group.archive_id, group.flags, group.hash);
        if self.index.get(&key) == Some(&g) {
            self.index.remove(&key);
        }
        self.free.push(g);
    }

    /// A slot lets go of its group: waiting archives become claimable again (keeping their
    /// age), an empty group disappears.
    pub(crate) fn release(&mut self, g: u32) {
        let group = self.get_mut(g);
        group.owner = None;
        if group.len() == 0 {
            self.free_group(g);
        } else {
            let k = (group.target, group.seq, g);
            self.unowned.insert(k);
        }
    }

    pub(crate) fn claim(&mut self, g: u32, owner: (u32, u8)) {
        let group = self.get_mut(g);
        debug_assert!(group.owner.is_none());
        group.owner = Some(owner);
        let k = (group.target, group.seq, g);
        self.unowned.remove(&k);
    }

    /// The oldest claimable group of `target` whose archive id `accept`s. Skips only groups of
    /// archive ids the client refuses (bounded by the number of groups, not of requests).
    pub(crate) fn oldest_unowned(&self, target: u32, accept: impl Fn(u32) -> bool) -> Option<u32> {
        self.unowned
            .range((target, 0, 0)..=(target, u64::MAX, u32::MAX))
            .map(|&(_, _, g)| g)
            .find(|&g| accept(self.get(g).archive_id))
    }

    /// Every live group of a target (for frees and dumps; O(groups)).
    pub(crate) fn of_target(&self, target: u32) -> Vec<u32> {
        self.slab
            .iter()
            .enumerate()
            .filter_map(|(g, s)| {
                s.as_ref()
                    .filter(|gr| gr.target == target)
                    .map(|_| g as u32)
            })
            .collect()
    }
}
