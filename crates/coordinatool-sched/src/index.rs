//! The request index: `(cookie, dfid)` → request slot, with the 32-bit cookie fallback.

use crate::types::RequestKey;
use coordinatool_lustre::LuFid;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

const OVERFLOW: u32 = u32::MAX;

/// The map key: (dfid, low 32 bits of the cookie).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    dfid: LuFid,
    low: u32,
}

impl Hash for Key {
    /// One word: the low cookie bits in the low half, a mix of the dfid in the high half.
    ///
    /// hashbrown picks the bucket from the low bits and a tag from the top 7 bits. Cookies of
    /// one MDT increase one by one, so requests that arrive together land in neighbouring
    /// buckets, and a queue served roughly in arrival order touches the index sequentially
    /// instead of at a random bucket per operation (one cache miss less per intake and per
    /// `done` once the index outgrows the caches). The dfid mix keeps the tags discriminating.
    fn hash<H: Hasher>(&self, h: &mut H) {
        let f = self.dfid;
        let mix = (f.seq ^ (u64::from(f.oid) << 32 | u64::from(f.ver)).rotate_left(17))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h.write_u64(u64::from(self.low) | (mix & 0xffff_ffff_0000_0000));
    }
}

/// Passes [`Key`]'s precomputed word through unchanged.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; anything else still hashes deterministically.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<PassThrough>>;

/// Keyed by (dfid, low 32 bits of the cookie); the value carries the high 32 bits. Several
/// requests sharing a dfid and low cookie bits (rare) move to `overflow`. One hash lookup per
/// operation; a truncated cookie matches when its (dfid, low bits) entry is unique.
#[derive(Default)]
pub(crate) struct KeyIndex {
    map: KeyMap<(u32, u32)>,
    overflow: KeyMap<Vec<(u32, u32)>>,
    len: usize,
}

fn split(key: RequestKey) -> (Key, u32) {
    (
        Key {
            dfid: key.dfid,
            low: key.cookie as u32,
        },
        (key.cookie >> 32) as u32,
    )
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

    fn word(cookie: u64, dfid: LuFid) -> u64 {
        let (k, _) = split(RequestKey { cookie, dfid });
        let mut h = PassThrough::default();
        k.hash(&mut h);
        h.finish()
    }

    #[test]
    fn sequential_cookies_hash_to_neighbouring_buckets() {
        let (f1, f2) = (LuFid::new(0x200000400, 7, 0), LuFid::new(0x200000401, 9, 0));
        let (a, b) = (word(0x6000_0000, f1), word(0x6000_0001, f2));
        // Same low bits (bucket) pattern as the cookie, different dfid mix in the tag bits.
        assert_eq!((a as u32, b as u32), (0x6000_0000, 0x6000_0001));
        assert_ne!(a >> 57, word(0x6000_0000, f2) >> 57);
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
