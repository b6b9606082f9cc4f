//! Hsm data helpers: upstream's hint parser, tag matching and the hashes used by host mappings.

/// Finds `needle` (e.g. `b"grouping="`) in `data` at the start or right after a `,`, and returns
/// the value that follows it, up to the next `,` or the end of the data (possibly empty).
///
/// Works on raw bytes with the exact data length, so NUL bytes before the match are tolerated.
/// A false match (the needle inside another key, as in `foostuff=bar` for `stuff=`) is skipped
/// and the search goes on after it; upstream looped forever there.
pub fn parse_hint<'a>(data: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    if needle.is_empty() || needle.len() > data.len() {
        return None;
    }
    let mut from = 0;
    while from + needle.len() <= data.len() {
        let pos = from + find(&data[from..], needle)?;
        if pos == 0 || data[pos - 1] == b',' {
            let start = pos + needle.len();
            let end = data[start..]
                .iter()
                .position(|&b| b == b',')
                .map_or(data.len(), |e| start + e);
            return Some(&data[start..end]);
        }
        from = pos + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Upstream's tag test for `archive_on_hosts`: `tag` is a substring anywhere in the data, where
/// the data stops at its first NUL (C `strstr`).
pub fn data_contains_tag(data: &[u8], tag: &[u8]) -> bool {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    tag.is_empty() || find(&data[..end], tag).is_some()
}

/// The djb2 string hash exactly as upstream computes it: `h = h * 33 + c` on a wrapping u64,
/// with `c` a *signed* `char` (bytes ≥ 0x80 are sign-extended, as on x86-64).
pub fn djb2(bytes: &[u8]) -> u64 {
    let mut h: u64 = 5381;
    for &b in bytes {
        h = h.wrapping_mul(33).wrapping_add(b as i8 as i64 as u64);
    }
    h
}

/// A 64-bit FNV-1a hash, used as a stable (process- and platform-independent) hash.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous (highest random weight) hashing: the index of the host with the highest score
/// for `value`. Adding or removing a host only moves the values that host wins or won.
pub fn rendezvous<S: AsRef<str>>(value: &[u8], hosts: &[S]) -> Option<usize> {
    let hashed: Vec<u64> = hosts.iter().map(|h| fnv1a(h.as_ref().as_bytes())).collect();
    rendezvous_hashed(value, &hashed)
}

/// [`rendezvous`] with the hosts' FNV-1a hashes computed once by the caller.
pub(crate) fn rendezvous_hashed(value: &[u8], host_hashes: &[u64]) -> Option<usize> {
    let v = fnv1a(value);
    host_hashes
        .iter()
        .enumerate()
        .max_by_key(|&(i, &h)| (mix64(v ^ h), usize::MAX - i))
        .map(|(i, _)| i)
}

/// Checks a reporting value the way upstream does: at most 64 bytes of `[A-Za-z0-9_-]`.
pub(crate) fn valid_report_value(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A small deterministic PRNG (xorshift64*), so that "random" choices are reproducible from
/// the configured seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(mix64(seed) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if n == 0 { 0 } else { (r % n as u64) as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_hint_positions() {
        assert_eq!(parse_hint(b"grouping=abc", b"grouping="), Some(&b"abc"[..]));
        assert_eq!(
            parse_hint(b"x=1,grouping=abc,y=2", b"grouping="),
            Some(&b"abc"[..])
        );
        assert_eq!(parse_hint(b"x=1,grouping=", b"grouping="), Some(&b""[..]));
        assert_eq!(parse_hint(b"xgrouping=abc", b"grouping="), None);
        assert_eq!(parse_hint(b"", b"grouping="), None);
        assert_eq!(parse_hint(b"abc", b""), None);
    }

    #[test]
    fn parse_hint_false_match_does_not_loop() {
        // Upstream bug a60881f: this looped forever.
        assert_eq!(parse_hint(b"foostuff=bar", b"stuff="), None);
        assert_eq!(
            parse_hint(b"foostuff=bar,stuff=ok", b"stuff="),
            Some(&b"ok"[..])
        );
        assert_eq!(parse_hint(b"stuffstuff=1", b"stuff="), None);
    }

    #[test]
    fn parse_hint_tolerates_nul_before_match() {
        assert_eq!(parse_hint(b"\0\0,k=v", b"k="), Some(&b"v"[..]));
    }

    #[test]
    fn djb2_reference_values() {
        assert_eq!(djb2(b"test0") % 3, 0);
        assert_eq!(djb2(b"test1") % 3, 1);
        assert_eq!(djb2(b"test2") % 3, 2);
        assert_eq!(djb2(b"test0") % 10, 7);
        assert_eq!(djb2(b"test1") % 10, 8);
        assert_eq!(djb2(b"test2") % 10, 9);
        assert_eq!(djb2(b"7") % 3, 1);
        assert_eq!(djb2(b"8") % 3, 2);
        assert_eq!(djb2(b"9") % 3, 0);
    }

    #[test]
    fn djb2_sign_extends_high_bytes() {
        // 5381*33 + (-1 as u64) wraps to 5381*33 - 1.
        assert_eq!(djb2(&[0xff]), 5381 * 33 - 1);
    }

    #[test]
    fn tag_matching_stops_at_nul() {
        assert!(data_contains_tag(b"a tag=n0 b", b"tag=n0"));
        assert!(!data_contains_tag(b"a\0tag=n0", b"tag=n0"));
    }

    #[test]
    fn rendezvous_moves_only_the_removed_hosts_share() {
        let hosts = ["h0", "h1", "h2", "h3"];
        let fewer = ["h0", "h1", "h3"];
        let mut moved = 0;
        for i in 0..2000 {
            let v = format!("value{i}");
            let a = hosts[rendezvous(v.as_bytes(), &hosts).unwrap()];
            let b = fewer[rendezvous(v.as_bytes(), &fewer).unwrap()];
            if a != "h2" {
                assert_eq!(a, b, "value {v} moved although its host stayed");
            } else {
                moved += 1;
            }
        }
        // Each host should win about a quarter of the values.
        assert!((300..700).contains(&moved), "h2 won {moved} of 2000");
    }

    #[test]
    fn report_value_rules() {
        assert!(valid_report_value(b"abc-DEF_09"));
        assert!(!valid_report_value(b"a/b"));
        assert!(!valid_report_value(&[b'a'; 65]));
        assert!(!valid_report_value(b""));
    }
}
