//! Pending-request queues: intrusive FIFOs over the request slab, grouped into partitions
//! (kind, priority, archive id, hal flags) and, inside a partition, into fair-share flows
//! ordered by virtual time. Every operation is O(1) or O(log flows); nothing scans a queue.

use crate::fxhash::FxHashMap;
use crate::types::{Kind, Time};
use std::collections::BTreeSet;

pub(crate) const NIL: u32 = u32::MAX;

/// Links of one request slot (in whichever list holds it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) prev: u32,
    pub(crate) next: u32,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            prev: NIL,
            next: NIL,
        }
    }
}

/// Where the links of request slots are stored (a plain array in tests, the request slab in
/// the engine, so that a request and its links share cache lines).
pub(crate) trait LinkStore {
    fn link(&self, id: u32) -> Link;
    fn set_link(&mut self, id: u32, link: Link);
    fn set_prev(&mut self, id: u32, prev: u32) {
        let mut l = self.link(id);
        l.prev = prev;
        self.set_link(id, l);
    }
    fn set_next(&mut self, id: u32, next: u32) {
        let mut l = self.link(id);
        l.next = next;
        self.set_link(id, l);
    }
    /// Hints that slot `id` will be read soon (no effect by default).
    fn prefetch(&self, _id: u32) {}
}

impl LinkStore for [Link] {
    fn link(&self, id: u32) -> Link {
        self[id as usize]
    }
    fn set_link(&mut self, id: u32, link: Link) {
        self[id as usize] = link;
    }
}

impl LinkStore for Vec<Link> {
    fn link(&self, id: u32) -> Link {
        self[id as usize]
    }
    fn set_link(&mut self, id: u32, link: Link) {
        self[id as usize] = link;
    }
}

/// An intrusive doubly-linked list of request slots.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fifo {
    pub(crate) head: u32,
    pub(crate) tail: u32,
    pub(crate) len: u32,
}

impl Default for Fifo {
    fn default() -> Self {
        Fifo {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl Fifo {
    pub(crate) fn push_back<L: LinkStore + ?Sized>(&mut self, links: &mut L, id: u32) {
        links.set_link(
            id,
            Link {
                prev: self.tail,
                next: NIL,
            },
        );
        if self.tail == NIL {
            self.head = id;
        } else {
            links.set_next(self.tail, id);
        }
        self.tail = id;
        self.len += 1;
    }

    pub(crate) fn push_front<L: LinkStore + ?Sized>(&mut self, links: &mut L, id: u32) {
        links.set_link(
            id,
            Link {
                prev: NIL,
                next: self.head,
            },
        );
        if self.head == NIL {
            self.tail = id;
        } else {
            links.set_prev(self.head, id);
        }
        self.head = id;
        self.len += 1;
    }

    /// Removes `id` (which must be in this list).
    ///
    /// The head's `prev` is never read, so popping the head does not touch the next element:
    /// that element is usually far away in memory (fair share interleaves flows), and this
    /// saves a cache miss per dispatch. Every other element's `prev` stays exact.
    pub(crate) fn remove<L: LinkStore + ?Sized>(&mut self, links: &mut L, id: u32) {
        let Link { prev, next } = links.link(id);
        if self.head == id {
            self.head = next;
            if next == NIL {
                self.tail = NIL;
            }
            links.set_link(id, Link::default());
            self.len -= 1;
            return;
        }
        links.set_next(prev, next);
        if next == NIL {
            self.tail = prev;
        } else {
            links.set_prev(next, prev);
        }
        links.set_link(id, Link::default());
        self.len -= 1;
    }

    pub(crate) fn iter<'a, L: LinkStore + ?Sized>(&self, links: &'a L) -> FifoIter<'a, L> {
        FifoIter {
            links,
            cur: self.head,
        }
    }
}

pub(crate) struct FifoIter<'a, L: ?Sized> {
    links: &'a L,
    cur: u32,
}

impl<L: LinkStore + ?Sized> Iterator for FifoIter<'_, L> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.cur == NIL {
            return None;
        }
        let id = self.cur;
        self.cur = self.links.link(id).next;
        Some(id)
    }
}

/// What separates partitions: requests of one partition can share a reply and compete only
/// through fair share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartKey {
    pub(crate) kind: Kind,
    pub(crate) prio: i32,
    pub(crate) archive_id: u32,
    pub(crate) flags: u64,
}

/// Virtual-time unit of one request at weight 1.
const VT_UNIT: u64 = 1 << 20;

#[derive(Debug)]
struct Flow {
    fifo: Fifo,
    vtime: u64,
    weight: u32,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) key: PartKey,
    pub(crate) len: u64,
    /// Last time the partition was served or became non-empty (for aging).
    pub(crate) since: Time,
    flow_of: FxHashMap<u64, u32>,
    flows: Vec<Flow>,
    ready: BTreeSet<(u64, u32)>,
    vclock: u64,
}

impl Partition {
    fn new(key: PartKey) -> Self {
        Partition {
            key,
            len: 0,
            since: Time(0),
            flow_of: FxHashMap::default(),
            flows: Vec::new(),
            ready: BTreeSet::new(),
            vclock: 0,
        }
    }

    /// The request that fair share serves next.
    pub(crate) fn peek(&self) -> Option<(u32, u32)> {
        let &(_, f) = self.ready.first()?;
        Some((self.flows[f as usize].fifo.head, f))
    }

    pub(crate) fn iter<'a, L: LinkStore + ?Sized>(
        &'a self,
        links: &'a L,
    ) -> impl Iterator<Item = u32> + 'a {
        self.flows.iter().flat_map(move |f| f.fifo.iter(links))
    }
}

/// Where a queued request sits: which partition and flow of its queue set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) part: u32,
    pub(crate) flow: u32,
}

/// A set of partitions: the global queue, or one client's own queue.
#[derive(Debug, Default)]
pub(crate) struct QueueSet {
    index: FxHashMap<PartKey, u32>,
    pub(crate) parts: Vec<Partition>,
    /// Non-empty partitions (small: kinds × priorities × archive ids × flags in use).
    pub(crate) active: Vec<u32>,
    pub(crate) len_by_kind: [u64; 3],
    /// Client index owning this set (unused for the global set).
    pub(crate) owner: u32,
}

impl QueueSet {
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len_by_kind.iter().sum()
    }

    pub(crate) fn push<L: LinkStore + ?Sized>(
        &mut self,
        links: &mut L,
        key: PartKey,
        (share, weight): (u64, u32),
        id: u32,
        front: bool,
        now: Time,
    ) -> Slot {
        let p = match self.index.get(&key) {
            Some(&p) => p,
            None => {
                let p = self.parts.len() as u32;
                self.parts.push(Partition::new(key));
                self.index.insert(key, p);
                p
            }
        };
        let part = &mut self.parts[p as usize];
        if part.len == 0 {
            self.active.push(p);
            part.since = now;
        }
        let f = match part.flow_of.get(&share) {
            Some(&f) => f,
            None => {
                let f = part.flows.len() as u32;
                part.flows.push(Flow {
                    fifo: Fifo::default(),
                    vtime: 0,
                    weight: weight.max(1),
                });
                part.flow_of.insert(share, f);
                f
            }
        };
        let flow = &mut part.flows[f as usize];
        if flow.fifo.len == 0 {
            // A flow that was idle does not bank credit for the time it had nothing queued.
            flow.vtime = flow.vtime.max(part.vclock);
            part.ready.insert((flow.vtime, f));
        }
        if front {
            flow.fifo.push_front(links, id);
        } else {
            flow.fifo.push_back(links, id);
        }
        part.len += 1;
        self.len_by_kind[key.kind.index()] += 1;
        Slot { part: p, flow: f }
    }

    /// Removes a request from wherever it is in this set. `served` charges its flow's
    /// virtual time (it was dispatched) rather than just dropping it.
    pub(crate) fn remove<L: LinkStore + ?Sized>(
        &mut self,
        links: &mut L,
        slot: Slot,
        id: u32,
        served: bool,
        now: Time,
    ) {
        let part = &mut self.parts[slot.part as usize];
        let flow = &mut part.flows[slot.flow as usize];
        let was_ready = (flow.vtime, slot.flow);
        flow.fifo.remove(links, id);
        if served {
            part.vclock = part.vclock.max(flow.vtime);
            flow.vtime += VT_UNIT / u64::from(flow.weight);
            part.since = now;
        }
        if served && flow.fifo.head != NIL {
            // This flow's next request is read when the flow is served again, after the
            // other flows had their turn: start loading it now (with fair share, heads are
            // far apart in memory and each would otherwise be a cache miss).
            links.prefetch(flow.fifo.head);
        }
        let flow_vtime = flow.vtime;
        let flow_len = flow.fifo.len;
        if served || flow_len == 0 {
            part.ready.remove(&was_ready);
            if flow_len > 0 {
                part.ready.insert((flow_vtime, slot.flow));
            }
        }
        part.len -= 1;
        self.len_by_kind[part.key.kind.index()] -= 1;
        if part.len == 0 {
            let pos = self.active.iter().position(|&p| p == slot.part);
            if let Some(pos) = pos {
                self.active.swap_remove(pos);
            }
        }
    }

    /// Every queued request of one kind, partition by partition.
    pub(crate) fn iter_kind<'a, L: LinkStore + ?Sized>(
        &'a self,
        links: &'a L,
        kind: Kind,
    ) -> impl Iterator<Item = u32> + 'a {
        self.parts
            .iter()
            .filter(move |p| p.key.kind == kind)
            .flat_map(move |p| p.iter(links))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartKey {
        PartKey {
            kind: Kind::Archive,
            prio: 0,
            archive_id: 1,
            flags: 0,
        }
    }

    #[test]
    fn fifo_push_remove_keeps_order() {
        let mut links = vec![Link::default(); 5];
        let mut f = Fifo::default();
        for i in 0..5 {
            f.push_back(&mut links, i);
        }
        f.remove(&mut links, 2);
        f.remove(&mut links, 0);
        f.push_front(&mut links, 0);
        assert_eq!(f.iter(&links).collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        assert_eq!(f.len, 4);
    }

    proptest::proptest! {
        /// The list matches a `Vec` model under any mix of pushes at both ends and removals
        /// anywhere (head removals leave the new head's `prev` stale on purpose).
        #[test]
        fn fifo_matches_a_vec(ops in proptest::collection::vec((0u8..3, 0usize..64), 1..200)) {
            let mut links = vec![Link::default(); 64];
            let mut f = Fifo::default();
            let mut model: Vec<u32> = Vec::new();
            let mut next_id = 0u32;
            for (op, pick) in ops {
                match op {
                    0 | 1 if next_id < 64 => {
                        if op == 0 {
                            f.push_back(&mut links, next_id);
                            model.push(next_id);
                        } else {
                            f.push_front(&mut links, next_id);
                            model.insert(0, next_id);
                        }
                        next_id += 1;
                    }
                    _ if !model.is_empty() => {
                        let id = model.remove(pick % model.len());
                        f.remove(&mut links, id);
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(f.iter(&links).collect::<Vec<_>>(), model.clone());
                proptest::prop_assert_eq!(f.len as usize, model.len());
                proptest::prop_assert_eq!(f.tail, model.last().copied().unwrap_or(NIL));
            }
        }
    }

    fn serve(q: &mut QueueSet, links: &mut [Link], slots: &[Slot]) -> u32 {
        let p = q.active[0];
        let (id, _) = q.parts[p as usize].peek().unwrap();
        q.remove(links, slots[id as usize], id, true, Time(0));
        id
    }

    #[test]
    fn weighted_fair_share_interleaves_flows() {
        let mut links = vec![Link::default(); 400];
        let mut q = QueueSet::default();
        let mut slots = Vec::new();
        // 300 requests of share 1 (weight 2) queued before 100 of share 2 (weight 1).
        for i in 0..400u32 {
            let (share, w) = if i < 300 { (1, 2) } else { (2, 1) };
            slots.push(q.push(&mut links, key(), (share, w), i, false, Time(0)));
        }
        let mut first = [0u32; 2];
        for _ in 0..150 {
            let id = serve(&mut q, &mut links, &slots);
            first[(id >= 300) as usize] += 1;
        }
        // Weight 2 vs 1: about 100 and 50 of the first 150.
        assert!((95..=105).contains(&first[0]), "{first:?}");
        assert_eq!(q.len(), 250);
    }

    #[test]
    fn idle_flow_does_not_bank_credit() {
        let mut links = vec![Link::default(); 300];
        let mut q = QueueSet::default();
        let mut slots = vec![Slot { part: 0, flow: 0 }; 300];
        for i in 0..200u32 {
            slots[i as usize] = q.push(&mut links, key(), (1, 1), i, false, Time(0));
        }
        for _ in 0..100 {
            serve(&mut q, &mut links, &slots);
        }
        // Share 2 arrives late: it alternates with share 1 instead of taking 100 in a row.
        for i in 200..300u32 {
            slots[i as usize] = q.push(&mut links, key(), (2, 1), i, false, Time(0));
        }
        let late = (0..20)
            .filter(|_| serve(&mut q, &mut links, &slots) >= 200)
            .count();
        assert!((9..=11).contains(&late), "{late}");
    }
}
