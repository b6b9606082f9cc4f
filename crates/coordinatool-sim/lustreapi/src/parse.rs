//! The text parsers of liblustreapi that copytools use for their options and arguments:
//! `llapi_fid_parse` (a FID argument) and `llapi_parse_size` (`--chunk-size 4M`,
//! `--bandwidth 10`). Pure functions on bytes; the exported wrappers only do the pointers.

use coordinatool_lustre::LuFid;

/// `strtoull(s, &end, 0)` without sign handling: base from the prefix (`0x`/`0X` hex, `0`
/// octal, else decimal). Returns `(value, bytes consumed)`, `None` when no digit was read,
/// and `Some((u64::MAX, n))`-like overflow as `Err(consumed)`.
fn strtoull0(s: &[u8]) -> Option<Result<(u64, usize), usize>> {
    let (radix, start) = match s {
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => (16, 2),
        [b'0', ..] => (8, 0),
        _ => (10, 0),
    };
    let digits = s[start..]
        .iter()
        .take_while(|b| char::from(**b).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    let end = start + digits;
    let mut v: u64 = 0;
    for &b in &s[start..end] {
        let d = u64::from(char::from(b).to_digit(radix).expect("checked digit"));
        match v
            .checked_mul(u64::from(radix))
            .and_then(|x| x.checked_add(d))
        {
            Some(x) => v = x,
            None => return Some(Err(end)),
        }
    }
    Some(Ok((v, end)))
}

/// Why [`fid_parse`] failed, and where it stopped (byte offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FidParseError {
    /// `EINVAL` (not a FID) or `ERANGE` (a field too large for its type).
    pub errno: i32,
    /// Offset of the first byte not consumed.
    pub end: usize,
}

/// `llapi_fid_parse`: `[0xSEQ:0xOID:0xVER]` or the same without brackets, after optional
/// white space; each field in C notation (hex with `0x`, octal with a leading `0`, else
/// decimal). Returns the FID and the offset just past it (past the `]` when bracketed).
pub(crate) fn fid_parse(s: &[u8]) -> Result<(LuFid, usize), FidParseError> {
    let mut i = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let bracket = s.get(i) == Some(&b'[');
    if bracket {
        i += 1;
    }
    let mut fields = [0u64; 3];
    for (n, field) in fields.iter_mut().enumerate() {
        let (v, used) = match strtoull0(&s[i..]) {
            None => {
                return Err(FidParseError {
                    errno: libc::EINVAL,
                    end: i,
                });
            }
            Some(Err(used)) => {
                return Err(FidParseError {
                    errno: libc::ERANGE,
                    end: i + used,
                });
            }
            Some(Ok(x)) => x,
        };
        i += used;
        if n > 0 && v > u64::from(u32::MAX) {
            return Err(FidParseError {
                errno: libc::ERANGE,
                end: i,
            });
        }
        *field = v;
        if n < 2 {
            if s.get(i) != Some(&b':') {
                return Err(FidParseError {
                    errno: libc::EINVAL,
                    end: i,
                });
            }
            i += 1;
        }
    }
    if bracket && s.get(i) == Some(&b']') {
        i += 1;
    }
    Ok((LuFid::new(fields[0], fields[1] as u32, fields[2] as u32), i))
}

/// `llapi_parse_size`: a size with an optional decimal fraction and an optional unit suffix
/// (`k`, `m`, `g`, `t`, `p`, `e` in either case: powers of 1024; `b`: 512-byte blocks, or
/// bytes when `bytes_spec` is true). A number without a suffix is counted in `units` (the
/// caller's default unit, 0 meaning bytes). Returns `(size, unit used)`; `EINVAL` for a
/// negative or malformed value, `ERANGE` when the result does not fit 64 bits.
pub(crate) fn parse_size(s: &[u8], units: u64, bytes_spec: bool) -> Result<(u64, u64), i32> {
    let lead = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let s = &s[lead..];
    if s.first() == Some(&b'-') {
        return Err(libc::EINVAL);
    }
    let s = s.strip_prefix(b"+").unwrap_or(s);
    let (whole, mut i) = match strtoull0(s) {
        None => return Err(libc::EINVAL),
        Some(Err(_)) => return Err(libc::ERANGE),
        Some(Ok(x)) => x,
    };
    // The fraction is decimal whatever the base of the integer part (as C's parser does).
    let (mut frac, mut frac_d) = (0u128, 1u128);
    if s.get(i) == Some(&b'.') {
        i += 1;
        for &b in s[i..].iter().take_while(|b| b.is_ascii_digit()) {
            // Digits past 10^30 change nothing a 64-bit size can show.
            if frac_d < 10u128.pow(30) {
                frac = frac * 10 + u128::from(b - b'0');
                frac_d *= 10;
            }
            i += 1;
        }
    }
    let unit: u64 = match &s[i..] {
        [] => {
            if units == 0 {
                1
            } else {
                units
            }
        }
        [b'b'] => {
            if bytes_spec {
                1
            } else {
                512
            }
        }
        [c] => match c.to_ascii_lowercase() {
            b'k' => 1 << 10,
            b'm' => 1 << 20,
            b'g' => 1 << 30,
            b't' => 1 << 40,
            b'p' => 1 << 50,
            b'e' => 1 << 60,
            _ => return Err(libc::EINVAL),
        },
        _ => return Err(libc::EINVAL),
    };
    let total = u128::from(whole) * u128::from(unit) + frac * u128::from(unit) / frac_d;
    let size = u64::try_from(total).map_err(|_| libc::ERANGE)?;
    Ok((size, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fids_with_and_without_brackets() {
        let f = LuFid::new(0x2_0000_0401, 0x4, 0);
        assert_eq!(fid_parse(b"[0x200000401:0x4:0x0]"), Ok((f, 21)));
        assert_eq!(fid_parse(b"0x200000401:0x4:0x0"), Ok((f, 19)));
        assert_eq!(fid_parse(b"  [0x200000401:0x4:0x0] rest"), Ok((f, 23)));
        assert_eq!(fid_parse(b"0x200000401:4:0/x"), Ok((f, 15)));
        // Octal and decimal fields, as strtoull with base 0 reads them.
        assert_eq!(
            fid_parse(b"10:010:0"),
            Ok((LuFid::new(10, 8, 0), 8)),
            "decimal seq, octal oid"
        );
        assert_eq!(fid_parse(b"[0x1:0x2:0x3"), Ok((LuFid::new(1, 2, 3), 12)));
    }

    #[test]
    fn bad_fids_say_where() {
        let e = |errno, end| Err(FidParseError { errno, end });
        assert_eq!(fid_parse(b""), e(libc::EINVAL, 0));
        assert_eq!(fid_parse(b"[zz:1:2]"), e(libc::EINVAL, 1));
        assert_eq!(fid_parse(b"0x1:0x2"), e(libc::EINVAL, 7));
        assert_eq!(fid_parse(b"0x1;0x2:0x3"), e(libc::EINVAL, 3));
        assert_eq!(fid_parse(b"0x1:0x100000000:0"), e(libc::ERANGE, 15));
        assert_eq!(fid_parse(b"0x1:0:0x100000000"), e(libc::ERANGE, 17));
        assert_eq!(
            fid_parse(b"0x10000000000000000:0:0"),
            e(libc::ERANGE, 19),
            "seq over 64 bits"
        );
        assert_eq!(fid_parse(b"-1:0:0"), e(libc::EINVAL, 0));
    }

    #[test]
    fn sizes_with_units_fractions_and_defaults() {
        assert_eq!(parse_size(b"4096", 0, false), Ok((4096, 1)));
        assert_eq!(parse_size(b"10", 1 << 20, false), Ok((10 << 20, 1 << 20)));
        assert_eq!(parse_size(b"4k", 1 << 20, false), Ok((4096, 1024)));
        assert_eq!(parse_size(b"4K", 0, false), Ok((4096, 1024)));
        assert_eq!(parse_size(b"1.5M", 0, false), Ok((3 << 19, 1 << 20)));
        assert_eq!(parse_size(b"2g", 0, false), Ok((2 << 30, 1 << 30)));
        assert_eq!(parse_size(b"1T", 0, false), Ok((1 << 40, 1 << 40)));
        assert_eq!(parse_size(b"1p", 0, false), Ok((1 << 50, 1 << 50)));
        assert_eq!(parse_size(b"15E", 0, false), Ok((15 << 60, 1 << 60)));
        assert_eq!(parse_size(b"0x10k", 0, false), Ok((16 << 10, 1024)));
        assert_eq!(parse_size(b"8b", 0, false), Ok((4096, 512)), "blocks");
        assert_eq!(parse_size(b"8b", 0, true), Ok((8, 1)), "bytes");
        assert_eq!(parse_size(b" +7", 0, false), Ok((7, 1)));
        assert_eq!(parse_size(b"0.25k", 0, false), Ok((256, 1024)));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            &b""[..],
            b"-1",
            b" -1k",
            b"k",
            b"12q",
            b"1kk",
            b"1 k",
            b"1.5.5",
        ] {
            assert_eq!(
                parse_size(bad, 0, false),
                Err(libc::EINVAL),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_size(b"16E", 0, false), Err(libc::ERANGE));
        assert_eq!(
            parse_size(b"18446744073709551616", 0, false),
            Err(libc::ERANGE)
        );
        assert_eq!(parse_size(b"17179869184G", 0, false), Err(libc::ERANGE));
        assert_eq!(
            parse_size(b"18446744073709551615", 0, false),
            Ok((u64::MAX, 1))
        );
    }
}
