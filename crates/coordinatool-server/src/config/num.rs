//! Number parsing with the C library's rules (`strtoll` base 0, size suffixes).

/// Parses an integer the way `strtoll(s, &end, 0)` followed by a check of `*end == '\0'`
/// does: optional sign, `0x`/`0X` for hex, a leading `0` for octal, decimal otherwise.
/// Trailing characters, an empty string and overflow are errors.
pub fn parse_c_int(s: &str) -> Result<i64, String> {
    let (neg, digits_end, value) = parse_c_prefix(s)?;
    if digits_end != s.len() {
        return Err(format!("trailing characters {:?}", &s[digits_end..]));
    }
    Ok(if neg { -value } else { value })
}

/// Like [`parse_c_int`] but checked against `min..=max`; negative values are reported as
/// such (the upstream parsers reject them).
pub fn parse_c_range(s: &str, min: i64, max: i64) -> Result<i64, String> {
    let v = parse_c_int(s)?;
    if v < 0 && min >= 0 {
        return Err("negative values are not allowed".into());
    }
    if v < min || v > max {
        return Err(format!("out of range {min}..={max}"));
    }
    Ok(v)
}

/// Parses the longest `strtoll` base-0 prefix of `s`. Returns (negative, end of the digits,
/// absolute value).
fn parse_c_prefix(s: &str) -> Result<(bool, usize, i64), String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let (radix, start) = if b.len() >= i + 2
        && b[i] == b'0'
        && (b[i + 1] == b'x' || b[i + 1] == b'X')
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        (16, i + 2)
    } else if b.get(i) == Some(&b'0') {
        (8, i)
    } else {
        (10, i)
    };
    let mut end = start;
    while end < b.len() && char::from(b[end]).is_digit(radix) {
        end += 1;
    }
    if end == start {
        return Err(if s.is_empty() {
            "empty value".into()
        } else {
            "not a number".into()
        });
    }
    // A negative magnitude up to i64::MIN is not needed by any caller: every key is >= -1.
    let v = i64::from_str_radix(&s[start..end], radix).map_err(|_| "number too large")?;
    Ok((neg, end, v))
}

/// Parses a size the way upstream's `str_suffix_to_u32` does: a `strtoll` base-0 number,
/// then an optional `k`/`m`/`g` (either case, powers of 1024). `-1` means `u32::MAX`.
///
/// Returns the value and, when characters follow the suffix (accepted by upstream with a
/// warning), a warning text.
pub fn parse_size_u32(s: &str) -> Result<(u32, Option<String>), String> {
    let (neg, end, v) = parse_c_prefix(s)?;
    let v = if neg { -v } else { v };
    if v == -1 && end == s.len() {
        return Ok((u32::MAX, None));
    }
    if v < 0 {
        return Err("negative values are not allowed (except -1)".into());
    }
    let rest = &s[end..];
    let (mult, after): (i64, &str) = match rest.as_bytes().first() {
        None => (1, ""),
        Some(b'k' | b'K') => (1 << 10, &rest[1..]),
        Some(b'm' | b'M') => (1 << 20, &rest[1..]),
        Some(b'g' | b'G') => (1 << 30, &rest[1..]),
        Some(_) => return Err(format!("invalid suffix {rest:?} (expected k, m or g)")),
    };
    let total = v
        .checked_mul(mult)
        .filter(|t| *t <= i64::from(u32::MAX))
        .ok_or_else(|| format!("{s:?} is larger than {}", u32::MAX))?;
    let warning = (!after.is_empty()).then(|| format!("ignoring {after:?} after the size suffix"));
    Ok((total as u32, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_int_bases() {
        assert_eq!(parse_c_int("42"), Ok(42));
        assert_eq!(parse_c_int("0x10"), Ok(16));
        assert_eq!(parse_c_int("0X1f"), Ok(31));
        assert_eq!(parse_c_int("010"), Ok(8));
        assert_eq!(parse_c_int("0"), Ok(0));
        assert_eq!(parse_c_int("+7"), Ok(7));
        assert_eq!(parse_c_int("-3"), Ok(-3));
    }

    #[test]
    fn c_int_rejects_garbage() {
        assert!(parse_c_int("").is_err());
        assert!(parse_c_int("abc").is_err());
        assert!(parse_c_int("12a").unwrap_err().contains("trailing"));
        assert!(parse_c_int("08").is_err(), "8 is not an octal digit");
        assert!(parse_c_int("0x").is_err());
        assert!(parse_c_int("99999999999999999999").is_err());
    }

    #[test]
    fn c_range() {
        assert_eq!(parse_c_range("65535", 0, 65535), Ok(65535));
        assert!(
            parse_c_range("65536", 0, 65535)
                .unwrap_err()
                .contains("range")
        );
        assert!(parse_c_range("-1", 0, 10).unwrap_err().contains("negative"));
        assert!(parse_c_range("0", 1, 10).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_u32("1M"), Ok((1 << 20, None)));
        assert_eq!(parse_size_u32("4k"), Ok((4096, None)));
        assert_eq!(parse_size_u32("2G"), Ok((2 << 30, None)));
        assert_eq!(parse_size_u32("010"), Ok((8, None)));
        assert_eq!(parse_size_u32("-1"), Ok((u32::MAX, None)));
        let (v, w) = parse_size_u32("1MiB").unwrap();
        assert_eq!(v, 1 << 20);
        assert!(w.unwrap().contains("iB"));
        assert!(parse_size_u32("4G").is_err());
        assert!(parse_size_u32("-2").is_err());
        assert!(parse_size_u32("1x").is_err());
        assert!(parse_size_u32("").is_err());
    }
}
