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
    /// One word whose low bits (hashbrown's bucket) keep cookies of one MDT together.
    ///
    /// Cookies of one MDT increase one by one, so requests that arrive together have
    /// neighbouring cookies: each run of 64 cookies maps to one block of 64 buckets (2 KiB),
    /// chosen by hashing the cookie's upper bits with the dfid's sequence range (FID
    /// sequences are allocated to MDTs in ranges of 2^17, so MDTs whose cookie counters
    /// overlap still land in different blocks). A queue served roughly in arrival order then
    /// touches the index block by block instead of at a random bucket per operation: one
    /// cache miss less per intake and per `done` once the index outgrows the caches. The
    /// position inside the block and hashbrown's 7-bit tag come from a hash of the whole key.
    /// Many requests sharing one cookie and one sequence range (never the case with Lustre,
    /// whose cookies are unique per MDT) would crowd one block and slow down.
    fn hash<H: Hasher>(&self, h: &mut H) {
        let f = self.dfid;
        let low = u64::from(self.low);
        let block = fmix((low >> 6) ^ (f.seq >> 17).rotate_left(32));
        let fine =
            fmix(fmix(f.seq ^ low.rotate_left(40)) ^ (u64::from(f.oid) << 32 | u64::from(f.ver)));
        let word = (block << 6) | ((low ^ fine) & 63);
        // Top 7 bits: the tag, from the whole key.
        h.write_u64((word & (u64::MAX >> 7)) | (fine & !(u64::MAX >> 7)));
    }
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix(x: u64) -> u64 {
    let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
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
        let bucket = |w: u64| w & ((1 << 24) - 1);
        let fid = |n: u32| LuFid::new(0x2_0000_0400, n, 0);
        // 64 consecutive cookies of different files share one 64-bucket block.
        let base = bucket(word(0x6000_0000, fid(1))) >> 6;
        for c in 0..64u32 {
            assert_eq!(bucket(word(0x6000_0000 + u64::from(c), fid(c))) >> 6, base);
        }
        // The same cookie from another MDT (another sequence range) goes elsewhere.
        let other = LuFid::new(0x2_0000_0400 + (5 << 17), 1, 0);
        assert_ne!(bucket(word(0x6000_0000, other)) >> 6, base);
        // Requests sharing a cookie spread inside the block and differ in their tags.
        let words: std::collections::HashSet<u64> =
            (0..64).map(|n| word(0x6000_0000, fid(n)) & 63).collect();
        assert!(words.len() > 32, "{}", words.len());
        assert_ne!(
            word(0x6000_0000, fid(1)) >> 57,
            word(0x6000_0000, fid(2)) >> 57
        );
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
