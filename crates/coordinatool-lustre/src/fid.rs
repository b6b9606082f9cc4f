//! The Lustre file identifier (`struct lu_fid`).

use std::fmt;
use std::str::FromStr;

/// A Lustre FID: sequence, object id and version.
///
/// Displayed the way Lustre prints `DFID` (`[0x200000401:0x1:0x0]`); the alternate form
/// (`{:#}`) omits the brackets (`DFID_NOBRACE`), as used in `.lustre/fid/` paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LuFid {
    /// Sequence number.
    pub seq: u64,
    /// Object id within the sequence.
    pub oid: u32,
    /// Version (0 for regular files).
    pub ver: u32,
}

impl LuFid {
    /// Builds a FID from its three parts.
    pub const fn new(seq: u64, oid: u32, ver: u32) -> Self {
        Self { seq, oid, ver }
    }

    /// True for the all-zero FID, which Lustre uses as "no FID".
    pub const fn is_zero(&self) -> bool {
        self.seq == 0 && self.oid == 0 && self.ver == 0
    }
}

impl fmt::Display for LuFid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Kernel `%#llx` prints plain `0x0` for zero, so always use an explicit prefix.
        if f.alternate() {
            write!(f, "0x{:x}:0x{:x}:0x{:x}", self.seq, self.oid, self.ver)
        } else {
            write!(f, "[0x{:x}:0x{:x}:0x{:x}]", self.seq, self.oid, self.ver)
        }
    }
}

/// Why a FID string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FID {input:?}: {reason}")]
pub struct FidParseError {
    /// The text that was rejected (truncated to 64 bytes).
    pub input: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

fn parse_num(s: &str) -> Option<u64> {
    // Lustre accepts C base-0 numbers in `SFID`-style parsing; in practice FIDs are hex
    // with a `0x` prefix, but plain hex without prefix is also what `sscanf("%llx")` takes.
    let s = s.trim();
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

impl FromStr for LuFid {
    type Err = FidParseError;

    /// Parses `[0x200000401:0x1:0x0]` or `0x200000401:0x1:0x0` (hex, `0x` prefix optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| FidParseError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let t = s.trim();
        let inner = match (t.strip_prefix('['), t.strip_suffix(']')) {
            (Some(_), Some(_)) if t.len() >= 2 => &t[1..t.len() - 1],
            (None, None) => t,
            _ => return Err(err("unbalanced brackets")),
        };
        let mut parts = inner.split(':');
        let (Some(seq), Some(oid), Some(ver), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected three ':'-separated numbers"));
        };
        let seq = parse_num(seq).ok_or_else(|| err("bad sequence number"))?;
        let oid = parse_num(oid)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| err("bad object id"))?;
        let ver = parse_num(ver)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| err("bad version"))?;
        Ok(LuFid { seq, oid, ver })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_lustre() {
        let f = LuFid::new(0x200000401, 0x1, 0);
        assert_eq!(f.to_string(), "[0x200000401:0x1:0x0]");
        assert_eq!(format!("{f:#}"), "0x200000401:0x1:0x0");
        assert_eq!(LuFid::default().to_string(), "[0x0:0x0:0x0]");
    }

    #[test]
    fn parse_with_and_without_brackets() {
        let f = LuFid::new(0x200005223, 0x1cce, 0);
        assert_eq!("[0x200005223:0x1cce:0x0]".parse::<LuFid>().unwrap(), f);
        assert_eq!("0x200005223:0x1cce:0x0".parse::<LuFid>().unwrap(), f);
        assert_eq!("200005223:1cce:0".parse::<LuFid>().unwrap(), f);
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "[]",
            "[0x1:0x2]",
            "[0x1:0x2:0x3:0x4]",
            "[0x1:0x2:0x3",
            "0x1:0x2:0x3]",
            "[0xg:0x2:0x3]",
            "[0x1:0x100000000:0x0]",
            "[0x1::0x0]",
        ] {
            assert!(bad.parse::<LuFid>().is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(seq: u64, oid: u32, ver: u32) {
            let f = LuFid::new(seq, oid, ver);
            proptest::prop_assert_eq!(f.to_string().parse::<LuFid>().unwrap(), f);
            proptest::prop_assert_eq!(format!("{f:#}").parse::<LuFid>().unwrap(), f);
        }
    }
}
