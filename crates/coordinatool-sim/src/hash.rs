//! A fast hasher for the model's maps keyed by FIDs, cookies and inode numbers.
//!
//! The default SipHash costs more than the rest of a lookup once a map holds 100k files, and
//! its flooding resistance buys nothing here: keys come from the simulator's own counters.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate over the key's words, then splitmix64's finaliser so that both the low
/// bits (bucket) and the top bits (hashbrown's tag) depend on every input bit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WordHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(K);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A `HashMap` with [`WordHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;
/// A `HashSet` with [`WordHasher`].
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<WordHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use coordinatool_lustre::LuFid;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_fids_spread_over_buckets_and_tags() {
        let b = BuildHasherDefault::<WordHasher>::default();
        let mut low = HashSet::new();
        let mut top = HashSet::new();
        for oid in 1..=4096u32 {
            let h = b.hash_one(LuFid {
                seq: 0x2_0000_0400,
                oid,
                ver: 0,
            });
            low.insert(h & 0xfff);
            top.insert(h >> 57);
        }
        // 4096 keys into 4096 buckets: a uniform hash fills about 63% of them.
        assert!(low.len() > 2300, "{} low-bit buckets", low.len());
        assert_eq!(top.len(), 128, "every 7-bit tag is used");
    }

    #[test]
    fn maps_behave_like_std_maps() {
        let mut m: FastMap<LuFid, u32> = FastMap::default();
        for oid in 0..1000u32 {
            m.insert(
                LuFid {
                    seq: 7,
                    oid,
                    ver: 0,
                },
                oid,
            );
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(
            m.get(&LuFid {
                seq: 7,
                oid: 999,
                ver: 0
            }),
            Some(&999)
        );
        assert_eq!(
            m.get(&LuFid {
                seq: 8,
                oid: 999,
                ver: 0
            }),
            None
        );
    }
}
