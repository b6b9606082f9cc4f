//! The request index: `(cookie, dfid)` → request slot, with the 32-bit cookie fallback.

use crate::fxhash::FxHashMap;
use crate::types::RequestKey;
use coordinatool_lustre::LuFid;

const OVERFLOW: u32 = u32::MAX;

/// Keyed by (dfid, low 32 bits of the cookie); the value carries the high 32 bits. Several
/// requests sharing a dfid and low cookie bits (rare) move to `overflow`. One hash lookup per
/// operation; a truncated cookie matches when its (dfid, low bits) entry is unique.
#[derive(Default)]
pub(crate) struct KeyIndex {
    map: FxHashMap<(LuFid, u32), (u32, u32)>,
    overflow: FxHashMap<(LuFid, u32), Vec<(u32, u32)>>,
    len: usize,
}

fn split(key: RequestKey) -> ((LuFid, u32), u32) {
    ((key.dfid, key.cookie as u32), (key.cookie >> 32) as u32)
}

impl KeyIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Inserts a key that is not present yet.
    pub(crate) fn insert(&mut self, key: RequestKey, id: u32) {
        let (k, high) = split(key);
        self.len += 1;
        match self.map.get_mut(&k) {
            None => {
                self.map.insert(k, (id, high));
            }
            Some(v) if v.0 == OVERFLOW => self.overflow.entry(k).or_default().push((id, high)),
            Some(v) => {
                let old = *v;
                *v = (OVERFLOW, 0);
                self.overflow.insert(k, vec![old, (id, high)]);
            }
        }
    }

    pub(crate) fn remove(&mut self, key: RequestKey) {
        let (k, high) = split(key);
        let Some(v) = self.map.get_mut(&k) else {
            return;
        };
        if v.0 != OVERFLOW {
            if v.1 == high {
                self.map.remove(&k);
                self.len -= 1;
            }
            return;
        }
        let list = self.overflow.get_mut(&k).expect("overflow entry");
        let before = list.len();
        list.retain(|&(_, h)| h != high);
        self.len -= before - list.len();
        if list.len() == 1 {
            *v = list[0];
            self.overflow.remove(&k);
        }
    }

    pub(crate) fn get(&self, key: RequestKey) -> Option<u32> {
        let (k, high) = split(key);
        match *self.map.get(&k)? {
            (OVERFLOW, _) => self.overflow[&k]
                .iter()
                .find(|&&(_, h)| h == high)
                .map(|&(id, _)| id),
            (id, h) => (h == high).then_some(id),
        }
    }

    /// The single request whose dfid and low 32 cookie bits match, if exactly one does.
    pub(crate) fn get_truncated(&self, key: RequestKey) -> Option<u32> {
        let (k, _) = split(key);
        match *self.map.get(&k)? {
            (OVERFLOW, _) => None,
            (id, _) => Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cookie: u64) -> RequestKey {
        RequestKey {
            cookie,
            dfid: LuFid::new(1, 2, 0),
        }
    }

    #[test]
    fn exact_truncated_and_overflow() {
        let mut ix = KeyIndex::default();
        ix.insert(key(0x1_0000_0005), 1);
        assert_eq!(ix.get(key(0x1_0000_0005)), Some(1));
        assert_eq!(ix.get(key(5)), None);
        assert_eq!(ix.get_truncated(key(5)), Some(1));
        ix.insert(key(0x2_0000_0005), 2);
        assert_eq!(ix.get(key(0x2_0000_0005)), Some(2));
        assert_eq!(ix.get(key(0x1_0000_0005)), Some(1));
        assert_eq!(ix.get_truncated(key(5)), None, "ambiguous");
        assert_eq!(ix.len(), 2);
        ix.remove(key(0x1_0000_0005));
        assert_eq!(ix.get_truncated(key(5)), Some(2));
        assert_eq!(ix.len(), 1);
        ix.remove(key(0x3_0000_0005));
        assert_eq!(ix.len(), 1, "removing an absent key is a no-op");
        ix.remove(key(0x2_0000_0005));
        assert_eq!((ix.len(), ix.get(key(0x2_0000_0005))), (0, None));
    }
}
