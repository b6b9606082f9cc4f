//! The `hai` (one HSM action item) and `hsm_action_list` wire objects.

use coordinatool_lustre::{HsmAction, LuFid};
use serde::de::{self, Deserializer};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::wire::{self, u32_image, u64_image};

/// The only `hal_version` the protocol knows (`HAL_VERSION`).
pub const HAL_VERSION: u32 = 1;

/// One HSM action item as it travels in JSON (the `hai` object).
///
/// Written by the server from Lustre events and by the CLI (`-Q`), sent to movers in a
/// [`WireHal`], echoed back by movers in `ehlo.hai_list`. It is always written in full (every
/// key, zeros included) because C peers unpack it as a whole. `hai_len` is not transmitted: it
/// follows from the data length.
///
/// On read, every key except `hai_action` may be missing and then reads as zero/empty; unknown
/// keys are ignored; the two fid objects are strict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireHai {
    /// `hai_action`: what the mover must do.
    pub action: HsmAction,
    /// `hai_fid`: the Lustre fid of the file.
    pub fid: LuFid,
    /// `hai_dfid`: the data fid; with [`cookie`](Self::cookie) it forms the request key.
    pub dfid: LuFid,
    /// `hai_extent_offset`: start of the extent.
    pub extent_offset: u64,
    /// `hai_extent_length`: length of the extent (`u64::MAX`, `-1` on the wire, is the whole file).
    pub extent_length: u64,
    /// `hai_cookie`: the MDT cookie, full 64 bits.
    pub cookie: u64,
    /// `hai_gid`: group lock id.
    pub gid: u64,
    /// `hal_archive_id`: archive id of the list this item came from.
    pub archive_id: u32,
    /// `hal_flags`: flags of the list this item came from.
    pub flags: u64,
    /// `hai_data`: opaque user data, any bytes (NULs and non-UTF-8 included).
    ///
    /// UTF-8 data travels as the JSON string `hai_data` (NUL as `\u0000`). Other bytes add a
    /// `hai_data_b64` key with their base64, which C peers ignore, while `hai_data` holds a
    /// lossy rendering; on read `hai_data_b64` wins when present.
    pub data: Vec<u8>,
    /// `timestamp`: nanoseconds since the epoch at which the server first received the item;
    /// 0 when unknown.
    pub timestamp: i64,
}

impl WireHai {
    /// An item for the whole file (`extent 0..-1`) with `dfid == fid` and every other field zero.
    pub fn new(action: HsmAction, fid: LuFid, cookie: u64) -> Self {
        Self {
            action,
            fid,
            dfid: fid,
            extent_offset: 0,
            extent_length: u64::MAX,
            cookie,
            gid: 0,
            archive_id: 0,
            flags: 0,
            data: Vec::new(),
            timestamp: 0,
        }
    }
}

impl Serialize for WireHai {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 11 + usize::from(wire::data::needs_b64(&self.data));
        let mut st = s.serialize_struct("WireHai", len)?;
        st.serialize_field("hai_action", &self.action.code())?;
        st.serialize_field("hai_fid", &wire::fid::Ref(&self.fid))?;
        st.serialize_field("hai_dfid", &wire::fid::Ref(&self.dfid))?;
        // i64 images: see `wire::u64_image`.
        st.serialize_field("hai_extent_offset", &(self.extent_offset as i64))?;
        st.serialize_field("hai_extent_length", &(self.extent_length as i64))?;
        st.serialize_field("hai_cookie", &(self.cookie as i64))?;
        st.serialize_field("hai_gid", &(self.gid as i64))?;
        st.serialize_field("hal_archive_id", &self.archive_id)?;
        st.serialize_field("hal_flags", &(self.flags as i64))?;
        wire::data::write(&mut st, &self.data)?;
        st.serialize_field("timestamp", &self.timestamp)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct RawHai {
    #[serde(deserialize_with = "wire::action::deserialize")]
    hai_action: HsmAction,
    #[serde(default, with = "wire::fid")]
    hai_fid: LuFid,
    #[serde(default, with = "wire::fid")]
    hai_dfid: LuFid,
    #[serde(default, with = "u64_image")]
    hai_extent_offset: u64,
    #[serde(default, with = "u64_image")]
    hai_extent_length: u64,
    #[serde(default, with = "u64_image")]
    hai_cookie: u64,
    #[serde(default, with = "u64_image")]
    hai_gid: u64,
    #[serde(default, with = "u32_image")]
    hal_archive_id: u32,
    #[serde(default, with = "u64_image")]
    hal_flags: u64,
    #[serde(default)]
    hai_data: String,
    #[serde(default)]
    hai_data_b64: Option<String>,
    #[serde(default)]
    timestamp: i64,
}

impl<'de> Deserialize<'de> for WireHai {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawHai::deserialize(d)?;
        Ok(Self {
            action: r.hai_action,
            fid: r.hai_fid,
            dfid: r.hai_dfid,
            extent_offset: r.hai_extent_offset,
            extent_length: r.hai_extent_length,
            cookie: r.hai_cookie,
            gid: r.hai_gid,
            archive_id: r.hal_archive_id,
            flags: r.hal_flags,
            data: wire::data::read(r.hai_data, r.hai_data_b64)?,
            timestamp: r.timestamp,
        })
    }
}

/// The `hsm_action_list` object carried by a `recv` reply.
///
/// `hal_version` is always written as [`HAL_VERSION`] and must be exactly that on read.
/// `hal_count` and `hal_compound_id` are not part of the wire format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireHal {
    /// `hal_archive_id`: archive id shared by every item (never 0 in a valid reply).
    pub archive_id: u32,
    /// `hal_flags`: flags shared by every item (omitted when 0).
    pub flags: u64,
    /// `hal_fsname`: the server's Lustre fsname.
    pub fsname: String,
    /// `list`: the items (never empty in a reply from a correct server).
    pub list: Vec<WireHai>,
}

impl Serialize for WireHal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("WireHal", 5)?;
        st.serialize_field("hal_version", &HAL_VERSION)?;
        if self.archive_id != 0 {
            st.serialize_field("hal_archive_id", &self.archive_id)?;
        } else {
            st.skip_field("hal_archive_id")?;
        }
        if self.flags != 0 {
            st.serialize_field("hal_flags", &(self.flags as i64))?;
        } else {
            st.skip_field("hal_flags")?;
        }
        if !self.fsname.is_empty() {
            st.serialize_field("hal_fsname", &self.fsname)?;
        } else {
            st.skip_field("hal_fsname")?;
        }
        st.serialize_field("list", &self.list)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct RawHal {
    #[serde(default, with = "u32_image")]
    hal_version: u32,
    #[serde(default, with = "u32_image")]
    hal_archive_id: u32,
    #[serde(default, with = "u64_image")]
    hal_flags: u64,
    #[serde(default)]
    hal_fsname: String,
    #[serde(default)]
    list: Vec<WireHai>,
}

impl<'de> Deserialize<'de> for WireHal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawHal::deserialize(d)?;
        if r.hal_version != HAL_VERSION {
            return Err(de::Error::custom(format_args!(
                "unsupported hal_version {} (expected {HAL_VERSION})",
                r.hal_version
            )));
        }
        Ok(Self {
            archive_id: r.hal_archive_id,
            flags: r.hal_flags,
            fsname: r.hal_fsname,
            list: r.list,
        })
    }
}

/// One entry of a `status` debug dump (verbose ≥ 6): `{"hai_fid", "hai_dfid", "hai_cookie",
/// "hai_data"}`.
///
/// The C server puts the request's **dfid** under the `hai_fid` key (and has no `hai_dfid`),
/// and cuts the data at its first NUL. This type keeps that: [`fid`](Self::fid) is written
/// under `hai_fid` as upstream, and under `hai_dfid` too, so a reader that knows the key gets
/// it under its right name (C readers ignore unknown keys). Reading takes `hai_dfid` when
/// present, else `hai_fid`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DumpEntry {
    /// The request's data fid: `hai_dfid`, also written under `hai_fid` (the C server's key
    /// for it).
    pub fid: LuFid,
    /// `hai_cookie`.
    pub cookie: u64,
    /// `hai_data`, encoded as in [`WireHai::data`].
    pub data: Vec<u8>,
}

impl Serialize for DumpEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 4 + usize::from(wire::data::needs_b64(&self.data));
        let mut st = s.serialize_struct("DumpEntry", len)?;
        st.serialize_field("hai_fid", &wire::fid::Ref(&self.fid))?;
        st.serialize_field("hai_dfid", &wire::fid::Ref(&self.fid))?;
        st.serialize_field("hai_cookie", &(self.cookie as i64))?;
        wire::data::write(&mut st, &self.data)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct RawDump {
    #[serde(default, with = "wire::fid")]
    hai_fid: LuFid,
    #[serde(default, with = "opt_fid")]
    hai_dfid: Option<LuFid>,
    #[serde(default, with = "u64_image")]
    hai_cookie: u64,
    #[serde(default)]
    hai_data: String,
    #[serde(default)]
    hai_data_b64: Option<String>,
}

/// An optional fid object (`hai_dfid` of a dump entry, absent from the C server's).
mod opt_fid {
    use super::wire;
    use coordinatool_lustre::LuFid;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    struct Fid(#[serde(with = "wire::fid")] LuFid);

    /// `null` reads as absent, as an absent key does.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LuFid>, D::Error> {
        Ok(Option::<Fid>::deserialize(d)?.map(|f| f.0))
    }
}

impl<'de> Deserialize<'de> for DumpEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawDump::deserialize(d)?;
        Ok(Self {
            fid: r.hai_dfid.unwrap_or(r.hai_fid),
            cookie: r.hai_cookie,
            data: wire::data::read(r.hai_data, r.hai_data_b64)?,
        })
    }
}

/// Conversions between the wire objects and the binary-layout types of
/// [`coordinatool_lustre::hal`]: the server turns Lustre's lists into wire items at intake, the
/// preload turns a `recv` reply back into the exact `hsm_action_list` a copytool expects.
mod convert {
    use super::{WireHai, WireHal};
    use coordinatool_lustre::hal::{HAL_VERSION, HsmActionItem, HsmActionList, HsmExtent};

    impl WireHai {
        /// The wire item for one item of a Lustre list, carrying the list's archive id and
        /// flags, and the time (ns since the epoch) at which it was received.
        pub fn from_item(
            item: &HsmActionItem,
            archive_id: u32,
            flags: u64,
            timestamp: i64,
        ) -> Self {
            Self {
                action: item.action,
                fid: item.fid,
                dfid: item.dfid,
                extent_offset: item.extent.offset,
                extent_length: item.extent.length,
                cookie: item.cookie,
                gid: item.gid,
                archive_id,
                flags,
                data: item.data.clone(),
                timestamp,
            }
        }

        /// The binary-layout item; the list-level fields (archive id, flags, timestamp) stay
        /// with the caller.
        pub fn to_item(&self) -> HsmActionItem {
            HsmActionItem {
                action: self.action,
                fid: self.fid,
                dfid: self.dfid,
                extent: HsmExtent {
                    offset: self.extent_offset,
                    length: self.extent_length,
                },
                cookie: self.cookie,
                gid: self.gid,
                data: self.data.clone(),
            }
        }
    }

    impl WireHal {
        /// The wire list for a Lustre list received at `timestamp` (ns since the epoch).
        pub fn from_list(list: &HsmActionList, timestamp: i64) -> Self {
            Self {
                archive_id: list.archive_id,
                flags: list.flags,
                fsname: list.fsname.clone(),
                list: list
                    .items
                    .iter()
                    .map(|it| WireHai::from_item(it, list.archive_id, list.flags, timestamp))
                    .collect(),
            }
        }

        /// The `hsm_action_list` a copytool receives, ready for
        /// [`HsmActionList::encode`]. The list's archive id and flags are the reply's, as in
        /// Lustre, where every item of a list shares them.
        pub fn to_list(&self) -> HsmActionList {
            HsmActionList {
                version: HAL_VERSION,
                flags: self.flags,
                archive_id: self.archive_id,
                fsname: self.fsname.clone(),
                items: self.list.iter().map(WireHai::to_item).collect(),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use coordinatool_lustre::{HsmAction, LuFid};

        #[test]
        fn list_round_trips_through_the_wire_form_and_bytes() {
            let mut list = HsmActionList::new("testfs0", 3, 0x4);
            let mut a =
                HsmActionItem::new(HsmAction::Archive, LuFid::new(0x200000401, 7, 0), 1 << 40);
            a.data = vec![0, 0xff, b'x'];
            a.extent = HsmExtent {
                offset: 4096,
                length: 8192,
            };
            a.gid = 9;
            list.items.push(a);
            list.items.push(HsmActionItem::new(
                HsmAction::Restore,
                LuFid::new(0x200000402, 1, 0),
                5,
            ));

            let wire = WireHal::from_list(&list, 1_765_010_112_108_091_220);
            assert_eq!(wire.list.len(), 2);
            assert!(
                wire.list
                    .iter()
                    .all(|h| h.archive_id == 3 && h.flags == 0x4)
            );
            assert_eq!(wire.list[0].timestamp, 1_765_010_112_108_091_220);
            assert_eq!(wire.list[0].extent_offset, 4096);

            let back = wire.to_list();
            assert_eq!(back, list);
            assert_eq!(HsmActionList::parse(&back.encode()).unwrap(), list);
        }
    }
}
