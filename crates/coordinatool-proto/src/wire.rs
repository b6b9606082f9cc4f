//! Serde helpers for the C peers' number and omission conventions.
//!
//! The C implementation packs every integer as a signed JSON integer (`json_int_t`), so a
//! `u64` above `i64::MAX` travels as its two's-complement image (`-1` for `u64::MAX`), and a
//! `u32` packed with jansson's `i` format travels as its `i32` image. Readers here accept
//! both the signed image and the plain unsigned value.

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

use coordinatool_lustre::{HsmAction, LuFid};

/// `skip_serializing_if` helper: the C writers omit every zero integer.
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `skip_serializing_if` helper: absent and empty strings are both omitted.
pub(crate) fn str_is_empty(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

/// u64 fields: written as the i64 image, read from either form.
pub(crate) mod u64_image {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        // Two's-complement reinterpretation is the whole point: C readers cast back.
        s.serialize_i64(*v as i64)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_i64(U64Visitor)
    }

    struct U64Visitor;

    impl Visitor<'_> for U64Visitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer (u64, or its signed i64 image)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            Ok(v as u64)
        }
    }
}

/// u32 fields: written as the plain value, read from the u32 value or its i32 image.
pub(crate) mod u32_image {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_i64(U32Visitor)
    }

    pub(crate) struct U32Visitor;

    impl Visitor<'_> for U32Visitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer (u32, or its signed i32 image)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            match i32::try_from(v) {
                Ok(v) => Ok(v as u32),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }
    }
}

/// `Vec<u32>` with the same leniency as [`u32_image`] for each element.
pub(crate) mod u32_list {
    use super::*;

    #[derive(Deserialize)]
    struct Elem(#[serde(with = "u32_image")] u32);

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let v: Option<Vec<Elem>> = Deserialize::deserialize(d)?;
        Ok(v.unwrap_or_default().into_iter().map(|e| e.0).collect())
    }
}

/// Error statuses: positive errnos on write, negative ones normalised on read.
pub(crate) mod errno {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(v.saturating_abs())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        d.deserialize_i64(ErrnoVisitor)
    }

    struct ErrnoVisitor;

    impl Visitor<'_> for ErrnoVisitor {
        type Value = i32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an errno (an integer whose magnitude fits in i32)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            // The C server sends -EINVAL for lock and queue errors; the sign carries nothing.
            i32::try_from(v.unsigned_abs())
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
    }
}

/// `Option<String>` where an empty string reads as absent.
pub(crate) mod opt_string {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
    }
}

/// `hai_action`: the numeric Lustre code, mapped to [`HsmAction`].
pub(crate) mod action {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HsmAction, D::Error> {
        let code = d.deserialize_i64(u32_image::U32Visitor)?;
        HsmAction::from_code(code).ok_or_else(|| {
            de::Error::invalid_value(
                Unexpected::Unsigned(code.into()),
                &"an HSM action code (10, 20, 21, 22 or 23)",
            )
        })
    }
}

/// The strict fid object: exactly `f_seq`, `f_oid` and `f_ver`.
pub(crate) mod fid {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WireFid {
        #[serde(with = "u64_image")]
        f_seq: u64,
        #[serde(with = "u32_image")]
        f_oid: u32,
        #[serde(with = "u32_image")]
        f_ver: u32,
    }

    pub(crate) fn serialize<S: Serializer>(v: &LuFid, s: S) -> Result<S::Ok, S::Error> {
        WireFid {
            f_seq: v.seq,
            f_oid: v.oid,
            f_ver: v.ver,
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LuFid, D::Error> {
        let w = WireFid::deserialize(d)?;
        Ok(LuFid::new(w.f_seq, w.f_oid, w.f_ver))
    }

    /// Borrowing adapter for hand-written `Serialize` impls.
    pub(crate) struct Ref<'a>(pub(crate) &'a LuFid);

    impl Serialize for Ref<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }
}

/// `hai_data` as bytes: a JSON string when UTF-8, plus `hai_data_b64` when not.
pub(crate) mod data {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::ser::SerializeStruct;

    /// Writes `hai_data` (and `hai_data_b64` when the bytes are not UTF-8).
    pub(crate) fn write<S: SerializeStruct>(st: &mut S, data: &[u8]) -> Result<(), S::Error> {
        match std::str::from_utf8(data) {
            // serde_json escapes NUL as \u0000, which jansson reads back (JSON_ALLOW_NUL).
            Ok(s) => st.serialize_field("hai_data", s),
            Err(_) => {
                st.serialize_field("hai_data", &String::from_utf8_lossy(data))?;
                st.serialize_field("hai_data_b64", &STANDARD.encode(data))
            }
        }
    }

    /// True when [`write`] emits the extra `hai_data_b64` key.
    pub(crate) fn needs_b64(data: &[u8]) -> bool {
        std::str::from_utf8(data).is_err()
    }

    /// Rebuilds the bytes; `hai_data_b64` wins when present.
    pub(crate) fn read<E: serde::de::Error>(
        text: String,
        b64: Option<String>,
    ) -> Result<Vec<u8>, E> {
        match b64 {
            Some(b) => STANDARD
                .decode(b.as_bytes())
                .map_err(|e| E::custom(format_args!("invalid base64 in hai_data_b64: {e}"))),
            None => Ok(text.into_bytes()),
        }
    }
}
