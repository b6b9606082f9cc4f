//! Owned and zero-copy views of `struct hsm_action_list` / `struct hsm_action_item` (binary layout).
//!
//! The MDT sends a copytool one *HAL* (hsm_action_list) per message: a 32-byte header, the
//! NUL-terminated filesystem name padded to 8 bytes, then `hal_count` *HAI*s
//! (hsm_action_item), each a 72-byte fixed part followed by its opaque data and padded to 8
//! bytes. Everything is packed and little-endian (x86_64 is the only platform Lustre ships
//! copytools for, and the layout is identical from 2.12 to master).
//!
//! ```text
//!  0  hal_version u32 | 4 hal_count u32 | 8 hal_compound_id u64 | 16 hal_flags u64
//! 24  hal_archive_id u32 | 28 padding u32 | 32 hal_fsname "lustre\0" + pad to 8
//!  first HAI at 32 + ALIGN8(strlen(fsname) + 1)
//!  HAI: 0 hai_len u32 | 4 hai_action u32 | 8 fid (16) | 24 dfid (16) | 40 extent (16)
//!       56 cookie u64 | 64 gid u64 | 72 data[hai_len - 72], next HAI at + ALIGN8(hai_len)
//! ```
//!
//! * [`HsmActionList`] / [`HsmActionItem`] are owned values; [`HsmActionList::encode`] writes
//!   the exact kernel layout (padding zeroed) and [`HsmActionList::parse`] makes an owned copy
//!   of a received buffer.
//! * [`HalView`] / [`HaiView`] read a received buffer in place. [`HalView::new`] checks every
//!   length before anything is handed out, so a malformed buffer is an error ([`HalError`],
//!   naming the byte offset and item index), never a panic or an out-of-bounds read. This
//!   module contains no `unsafe` code.
//! * [`HsmUserRequest`] encodes `struct hsm_user_request`, the payload of a user request
//!   (used to cancel requests).
//!
//! # Example
//!
//! ```rust
//! use coordinatool_lustre::{HalView, HsmAction, HsmActionItem, HsmActionList, LuFid};
//!
//! let mut hal = HsmActionList::new("lustre", 1, 0);
//! let fid = LuFid::new(0x200000401, 4, 0);
//! hal.items.push(HsmActionItem::new(HsmAction::Archive, fid, 0x6913bb97));
//! let bytes = hal.encode(); // exact kernel layout
//! assert_eq!(bytes.len(), 112);
//!
//! let view = HalView::new(&bytes).unwrap(); // checks every length once
//! for hai in view.items() {
//!     let hai = hai.unwrap();
//!     assert_eq!(hai.action().unwrap(), HsmAction::Archive);
//!     assert_eq!((hai.offset(), hai.fid(), hai.cookie()), (40, fid, 0x6913bb97));
//! }
//! assert_eq!(HsmActionList::parse(&bytes).unwrap(), hal);
//! ```

use crate::action::{HsmAction, HsmUserAction};
use crate::fid::LuFid;

/// `HAL_VERSION`: the only `hal_version` Lustre has ever used.
pub const HAL_VERSION: u32 = 1;
/// Size of the fixed `struct hsm_action_list` header, before `hal_fsname`.
pub const HAL_HEADER_LEN: usize = 32;
/// Size of the fixed part of `struct hsm_action_item`, before `hai_data`.
pub const HAI_FIXED_LEN: usize = 72;
/// `HAL_MAXSIZE` (= `LNET_MTU`): the receive buffer liblustreapi allocates for one list.
pub const HAL_MAXSIZE: usize = 1 << 20;
/// `LDLM_MAXREQSIZE`: the MDT never builds a list larger than this.
pub const LDLM_MAXREQSIZE: usize = 5 * 1024;
/// `MTI_NAME_MAXLEN`: the longest filesystem name, without its NUL terminator.
pub const MTI_NAME_MAXLEN: usize = 64;
/// `LUSTRE_EOF`: extent length meaning "up to the end of the file".
pub const LUSTRE_EOF: u64 = u64::MAX;
/// Size of `struct hsm_request`, the header of a user request.
pub const HSM_REQUEST_LEN: usize = 24;
/// Size of `struct hsm_user_item` (fid + extent, packed).
pub const HSM_USER_ITEM_LEN: usize = 32;
/// `MDS_MAXREQSIZE / 3`: llite refuses a user request whose `hur_len` reaches this (`-E2BIG`).
pub const HUR_MAX_LEN: usize = 5120 / 3;

/// Rounds `x` up to a multiple of 8 (`__ALIGN_KERNEL(x, 8)`).
///
/// Saturates instead of overflowing: for `x > usize::MAX - 7` the result is
/// `usize::MAX & !7`, which is smaller than `x`. Use [`checked_align8`] where `x` comes
/// from untrusted input.
pub const fn align8(x: usize) -> usize {
    x.saturating_add(7) & !7
}

/// Rounds `x` up to a multiple of 8, or `None` if that overflows.
pub const fn checked_align8(x: usize) -> Option<usize> {
    match x.checked_add(7) {
        Some(v) => Some(v & !7),
        None => None,
    }
}

/// Offset of the first item in a list whose fsname is `fsname_len` bytes long (`hai_first`).
pub const fn hai_first_offset(fsname_len: usize) -> usize {
    HAL_HEADER_LEN + align8(fsname_len.saturating_add(1))
}

/// `hal_size()`: the size of a list with an `fsname_len`-byte fsname and items of the given
/// `hai_len`s: `32 + ALIGN8(fsname_len + 1) + Σ ALIGN8(hai_len)`.
pub fn hal_size(fsname_len: usize, hai_lens: impl IntoIterator<Item = usize>) -> usize {
    hai_lens
        .into_iter()
        .fold(hai_first_offset(fsname_len), |acc, len| {
            acc.saturating_add(align8(len))
        })
}

/// A byte range of a file (`struct hsm_extent`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HsmExtent {
    /// First byte.
    pub offset: u64,
    /// Number of bytes; [`LUSTRE_EOF`] means "to the end of the file".
    pub length: u64,
}

impl HsmExtent {
    /// The whole file: offset 0, length [`LUSTRE_EOF`].
    pub const WHOLE_FILE: HsmExtent = HsmExtent {
        offset: 0,
        length: LUSTRE_EOF,
    };

    /// Builds an extent.
    pub const fn new(offset: u64, length: u64) -> Self {
        Self { offset, length }
    }

    /// True for offset 0 and length [`LUSTRE_EOF`].
    pub const fn is_whole_file(&self) -> bool {
        self.offset == 0 && self.length == LUSTRE_EOF
    }

    /// One past the last byte, `None` when `offset + length` overflows (as it does for
    /// [`LUSTRE_EOF`] with a non-zero offset).
    pub const fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }
}

/// What is wrong with a binary `hsm_action_list` (or with an owned list that cannot be
/// encoded faithfully).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HalError {
    /// The buffer cannot even hold the header.
    #[error("hsm_action_list buffer is {len} bytes, shorter than the {HAL_HEADER_LEN}-byte header")]
    TooShort {
        /// Buffer length.
        len: usize,
    },
    /// `hal_version` (offset 0) is not [`HAL_VERSION`].
    #[error("hal_version at offset 0 is {version}, expected {HAL_VERSION}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The buffer ends before the NUL that terminates `hal_fsname` (offset 32).
    #[error(
        "hal_fsname at offset 32 has no NUL terminator before the end of the {len}-byte buffer"
    )]
    FsnameUnterminated {
        /// Buffer length.
        len: usize,
    },
    /// `hal_fsname` is longer than [`MTI_NAME_MAXLEN`] bytes.
    #[error("hal_fsname at offset 32 is {len} bytes or more, longer than {MTI_NAME_MAXLEN}")]
    FsnameTooLong {
        /// Its length (when parsing: the number of bytes scanned without finding a NUL).
        len: usize,
    },
    /// An owned fsname holds a NUL byte, so it cannot be written as a C string.
    #[error("fsname contains a NUL byte at index {index}")]
    FsnameContainsNul {
        /// Index of the first NUL.
        index: usize,
    },
    /// `hal_fsname` is not UTF-8 (owned parsing only; the view returns raw bytes).
    #[error("hal_fsname at offset 32 is not valid UTF-8")]
    FsnameNotUtf8,
    /// `hal_count` promises more items than the buffer holds: the fixed part of item
    /// `index` does not fit.
    #[error(
        "item {index} of {count} at offset {offset}: its {HAI_FIXED_LEN}-byte fixed part runs past the end of the {buf_len}-byte buffer"
    )]
    ItemOutOfBounds {
        /// Item index (0-based).
        index: usize,
        /// `hal_count`.
        count: u32,
        /// Byte offset of the item.
        offset: usize,
        /// Buffer length.
        buf_len: usize,
    },
    /// `hai_len` is smaller than the fixed part.
    #[error("item {index} at offset {offset}: hai_len {hai_len} is smaller than {HAI_FIXED_LEN}")]
    ItemLenTooSmall {
        /// Item index.
        index: usize,
        /// Byte offset of the item.
        offset: usize,
        /// The `hai_len` found.
        hai_len: u32,
    },
    /// `ALIGN8(hai_len)` or the next item's offset overflows (a C reader would wrap around
    /// and loop on the same item).
    #[error("item {index} at offset {offset}: hai_len {hai_len} overflows when aligned to 8")]
    ItemLenOverflow {
        /// Item index.
        index: usize,
        /// Byte offset of the item.
        offset: usize,
        /// The `hai_len` found.
        hai_len: u32,
    },
    /// `hai_len` runs past the end of the buffer.
    #[error(
        "item {index} at offset {offset}: hai_len {hai_len} runs past the end of the {buf_len}-byte buffer"
    )]
    ItemPastEnd {
        /// Item index.
        index: usize,
        /// Byte offset of the item.
        offset: usize,
        /// The `hai_len` found.
        hai_len: u32,
        /// Buffer length.
        buf_len: usize,
    },
    /// `hai_action` is not a known `enum hsm_copytool_action` value.
    #[error("item {index} at offset {offset}: unknown hai_action {code}")]
    UnknownAction {
        /// Item index.
        index: usize,
        /// Byte offset of the item.
        offset: usize,
        /// The code found.
        code: u32,
    },
    /// An owned item's data is too long for `hai_len` (a `u32`).
    #[error("item {index}: {len} bytes of data do not fit in hai_len")]
    ItemDataTooLong {
        /// Item index.
        index: usize,
        /// Data length.
        len: usize,
    },
    /// More items than `hal_count` (a `u32`) can count.
    #[error("{count} items do not fit in a u32 count")]
    TooManyItems {
        /// Number of items.
        count: usize,
    },
}

/// One action for a copytool (`struct hsm_action_item`), owned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HsmActionItem {
    /// What to do.
    pub action: HsmAction,
    /// The Lustre file.
    pub fid: LuFid,
    /// The FID to use for data access (equal to `fid` when the MDT sends it).
    pub dfid: LuFid,
    /// Byte range.
    pub extent: HsmExtent,
    /// Coordinator cookie identifying the request (unique per MDT).
    pub cookie: u64,
    /// Group-lock id (always 0 from the MDT).
    pub gid: u64,
    /// Opaque user data (`lfs hsm_* --data`), not NUL-terminated.
    pub data: Vec<u8>,
}

impl HsmActionItem {
    /// An item for the whole file, with `dfid == fid`, gid 0 and no data.
    pub fn new(action: HsmAction, fid: LuFid, cookie: u64) -> Self {
        Self {
            action,
            fid,
            dfid: fid,
            extent: HsmExtent::WHOLE_FILE,
            cookie,
            gid: 0,
            data: Vec::new(),
        }
    }

    /// `hai_len`: 72 plus the data length, *not* padded.
    pub fn hai_len(&self) -> usize {
        HAI_FIXED_LEN.saturating_add(self.data.len())
    }

    /// Bytes this item takes in a list: `ALIGN8(hai_len)`.
    pub fn encoded_len(&self) -> usize {
        align8(self.hai_len())
    }

    /// Appends the item (fixed part, data, zero padding) to `out`.
    ///
    /// Data longer than `u32::MAX - 72` bytes would not fit in `hai_len`; it is written
    /// with `hai_len` saturated at `u32::MAX` (see [`HsmActionList::validate`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let hai_len = u32::try_from(self.hai_len()).unwrap_or(u32::MAX);
        out.reserve(self.encoded_len());
        // Fill the fixed part on the stack and append it once.
        let mut fixed = [0u8; HAI_FIXED_LEN];
        fixed[0..4].copy_from_slice(&hai_len.to_le_bytes());
        fixed[4..8].copy_from_slice(&self.action.code().to_le_bytes());
        fixed[8..24].copy_from_slice(&fid_bytes(&self.fid));
        fixed[24..40].copy_from_slice(&fid_bytes(&self.dfid));
        fixed[40..48].copy_from_slice(&self.extent.offset.to_le_bytes());
        fixed[48..56].copy_from_slice(&self.extent.length.to_le_bytes());
        fixed[56..64].copy_from_slice(&self.cookie.to_le_bytes());
        fixed[64..72].copy_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&fixed);
        out.extend_from_slice(&self.data);
        pad8(out, self.hai_len());
    }
}

fn fid_bytes(fid: &LuFid) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&fid.seq.to_le_bytes());
    b[8..12].copy_from_slice(&fid.oid.to_le_bytes());
    b[12..16].copy_from_slice(&fid.ver.to_le_bytes());
    b
}

fn put_fid(out: &mut Vec<u8>, fid: &LuFid) {
    out.extend_from_slice(&fid_bytes(fid));
}

/// Appends the zero bytes that round `written` up to a multiple of 8.
fn pad8(out: &mut Vec<u8>, written: usize) {
    let pad = align8(written) - written;
    out.resize(out.len() + pad, 0);
}

/// A list of actions for one archive id (`struct hsm_action_list`), owned.
///
/// `hal_compound_id` is not kept: Lustre stopped using it and always sends 0, and
/// [`encode`](Self::encode) writes 0. [`HalView::compound_id`] still shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HsmActionList {
    /// `hal_version`, normally [`HAL_VERSION`].
    pub version: u32,
    /// Request flags (`HSM_FORCE_ACTION`, ...; see [`crate::action::HsmRequestFlags`]).
    pub flags: u64,
    /// Archive (backend) id every item belongs to.
    pub archive_id: u32,
    /// Filesystem name, at most [`MTI_NAME_MAXLEN`] bytes, no NUL.
    pub fsname: String,
    /// The actions.
    pub items: Vec<HsmActionItem>,
}

impl HsmActionList {
    /// An empty version-1 list.
    pub fn new(fsname: impl Into<String>, archive_id: u32, flags: u64) -> Self {
        Self {
            version: HAL_VERSION,
            flags,
            archive_id,
            fsname: fsname.into(),
            items: Vec::new(),
        }
    }

    /// `hal_size()`: the number of bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        hal_size(self.fsname.len(), self.items.iter().map(|i| i.hai_len()))
    }

    /// Checks that the list can be encoded faithfully: fsname without NUL and at most
    /// [`MTI_NAME_MAXLEN`] bytes, item count and every `hai_len` within `u32`.
    ///
    /// [`encode`](Self::encode) does not call this (it cannot fail); a list that fails
    /// here is encoded with the fsname cut by its NUL, or with saturated lengths.
    pub fn validate(&self) -> Result<(), HalError> {
        if let Some(index) = self.fsname.bytes().position(|b| b == 0) {
            return Err(HalError::FsnameContainsNul { index });
        }
        if self.fsname.len() > MTI_NAME_MAXLEN {
            return Err(HalError::FsnameTooLong {
                len: self.fsname.len(),
            });
        }
        if u32::try_from(self.items.len()).is_err() {
            return Err(HalError::TooManyItems {
                count: self.items.len(),
            });
        }
        for (index, item) in self.items.iter().enumerate() {
            if u32::try_from(item.hai_len()).is_err() {
                return Err(HalError::ItemDataTooLong {
                    index,
                    len: item.data.len(),
                });
            }
        }
        Ok(())
    }

    /// Encodes the list in the exact kernel layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded list to `out` (header, NUL-terminated fsname padded to 8, then
    /// each item padded to 8; all padding bytes zero).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let count = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // hal_compound_id: unused since 2.11
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.archive_id.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // padding1
        out.extend_from_slice(self.fsname.as_bytes());
        out.push(0);
        pad8(out, self.fsname.len() + 1);
        for item in self.items.iter().take(count as usize) {
            item.encode_into(out);
        }
    }

    /// Parses a received buffer into an owned list (see [`HalView::new`] for the checks;
    /// additionally the fsname must be UTF-8 and every action known).
    pub fn parse(buf: &[u8]) -> Result<HsmActionList, HalError> {
        let view = HalView::new(buf)?;
        let fsname = std::str::from_utf8(view.fsname())
            .map_err(|_| HalError::FsnameNotUtf8)?
            .to_owned();
        let items = view
            .items()
            .map(|hai| hai.and_then(|hai| hai.to_owned_item()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HsmActionList {
            version: view.version(),
            flags: view.flags(),
            archive_id: view.archive_id(),
            fsname,
            items,
        })
    }
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    // Callers only pass offsets inside a slice whose length was checked; the fallback keeps
    // this total without a panic path.
    buf.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_le_bytes)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

fn le_fid(buf: &[u8], at: usize) -> LuFid {
    LuFid::new(le_u64(buf, at), le_u32(buf, at + 8), le_u32(buf, at + 12))
}

/// A checked, zero-copy view of a received `hsm_action_list`.
///
/// Construction walks the whole list once and checks every length, so the accessors and
/// the item iterator only read bytes known to be inside the buffer. Bytes after the last
/// item are ignored (receive buffers are larger than the list).
#[derive(Clone, Copy, Debug)]
pub struct HalView<'a> {
    buf: &'a [u8],
    fsname_len: usize,
    /// End of the last item's `hai_len` bytes (padding of the last item not required).
    end: usize,
}

impl<'a> HalView<'a> {
    /// Checks `buf` and returns a view of it.
    ///
    /// Errors: buffer shorter than the header, `hal_version` other than [`HAL_VERSION`],
    /// fsname without NUL in the buffer or longer than [`MTI_NAME_MAXLEN`], and for each of
    /// the `hal_count` items: fixed part past the end, `hai_len < 72`, `hai_len` past the
    /// end, `ALIGN8(hai_len)` overflowing. The padding after the last item need not be
    /// present. Unknown action codes are not an error here; see [`HaiView::action`].
    pub fn new(buf: &'a [u8]) -> Result<Self, HalError> {
        if buf.len() < HAL_HEADER_LEN {
            return Err(HalError::TooShort { len: buf.len() });
        }
        let version = le_u32(buf, 0);
        if version != HAL_VERSION {
            return Err(HalError::UnsupportedVersion { version });
        }
        let name_area = &buf[HAL_HEADER_LEN..];
        let scan = &name_area[..name_area.len().min(MTI_NAME_MAXLEN + 1)];
        let fsname_len = match scan.iter().position(|&b| b == 0) {
            Some(n) => n,
            None if scan.len() > MTI_NAME_MAXLEN => {
                return Err(HalError::FsnameTooLong { len: scan.len() });
            }
            None => return Err(HalError::FsnameUnterminated { len: buf.len() }),
        };
        let mut view = HalView {
            buf,
            fsname_len,
            end: HAL_HEADER_LEN + fsname_len + 1,
        };
        for item in view.items() {
            let item = item?;
            view.end = item.offset + item.len();
        }
        Ok(view)
    }

    /// `hal_version`.
    pub fn version(&self) -> u32 {
        le_u32(self.buf, 0)
    }

    /// `hal_count`: the number of items.
    pub fn count(&self) -> u32 {
        le_u32(self.buf, 4)
    }

    /// `hal_compound_id` (0 since Lustre 2.11; old MDTs set it).
    pub fn compound_id(&self) -> u64 {
        le_u64(self.buf, 8)
    }

    /// `hal_flags`.
    pub fn flags(&self) -> u64 {
        le_u64(self.buf, 16)
    }

    /// `hal_archive_id`.
    pub fn archive_id(&self) -> u32 {
        le_u32(self.buf, 24)
    }

    /// `hal_fsname` without its NUL terminator.
    pub fn fsname(&self) -> &'a [u8] {
        &self.buf[HAL_HEADER_LEN..HAL_HEADER_LEN + self.fsname_len]
    }

    /// Offset of the first item (`hai_first`).
    pub fn first_item_offset(&self) -> usize {
        hai_first_offset(self.fsname_len)
    }

    /// Number of bytes of the buffer the list uses, up to the last byte of the last item
    /// (without that item's padding). `hal_size()` is [`align8`] of this.
    pub fn used_len(&self) -> usize {
        self.end
    }

    /// The whole buffer the view was built on, trailing bytes included.
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// The items, in order.
    ///
    /// Every length was checked by [`new`](Self::new), so the iterator yields `Ok` for all
    /// `hal_count` items of a view; the `Result` remains so the same checks guard each step.
    pub fn items(&self) -> HaiIter<'a> {
        HaiIter {
            buf: self.buf,
            count: self.count(),
            index: 0,
            offset: self.first_item_offset(),
            failed: false,
        }
    }
}

/// Iterator over the items of a [`HalView`]; stops after `hal_count` items or the first
/// error.
#[derive(Clone, Debug)]
pub struct HaiIter<'a> {
    buf: &'a [u8],
    count: u32,
    index: usize,
    offset: usize,
    failed: bool,
}

impl<'a> HaiIter<'a> {
    fn step(&mut self) -> Result<HaiView<'a>, HalError> {
        let (index, offset, buf_len) = (self.index, self.offset, self.buf.len());
        let fixed_end = offset.checked_add(HAI_FIXED_LEN);
        if fixed_end.is_none_or(|e| e > buf_len) {
            return Err(HalError::ItemOutOfBounds {
                index,
                count: self.count,
                offset,
                buf_len,
            });
        }
        let hai_len = le_u32(self.buf, offset);
        let len = hai_len as usize;
        if len < HAI_FIXED_LEN {
            return Err(HalError::ItemLenTooSmall {
                index,
                offset,
                hai_len,
            });
        }
        // A C reader computes ALIGN8 in 32 bits, so a hai_len above u32::MAX - 7 wraps to a
        // small step; reject it explicitly rather than rely on usize being wider.
        let next = hai_len
            .checked_add(7)
            .map(|v| (v & !7) as usize)
            .and_then(|step| offset.checked_add(step))
            .ok_or(HalError::ItemLenOverflow {
                index,
                offset,
                hai_len,
            })?;
        let end =
            offset
                .checked_add(len)
                .filter(|&e| e <= buf_len)
                .ok_or(HalError::ItemPastEnd {
                    index,
                    offset,
                    hai_len,
                    buf_len,
                })?;
        self.index += 1;
        self.offset = next;
        Ok(HaiView {
            bytes: &self.buf[offset..end],
            index,
            offset,
        })
    }
}

impl<'a> Iterator for HaiIter<'a> {
    type Item = Result<HaiView<'a>, HalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count as usize {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed {
            return (0, Some(0));
        }
        let left = (self.count as usize).saturating_sub(self.index);
        (0, Some(left))
    }
}

impl std::iter::FusedIterator for HaiIter<'_> {}

/// A zero-copy view of one `hsm_action_item` inside a checked [`HalView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaiView<'a> {
    /// Exactly `hai_len` bytes.
    bytes: &'a [u8],
    index: usize,
    offset: usize,
}

// An item is never empty (hai_len >= 72), so an `is_empty` would always be false.
#[allow(clippy::len_without_is_empty)]
impl<'a> HaiView<'a> {
    /// `hai_len`: 72 plus the data length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Index of the item in its list (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Byte offset of the item in the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The raw `hai_action` code.
    pub fn action_code(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    /// The action, or [`HalError::UnknownAction`] for a code Lustre does not define.
    pub fn action(&self) -> Result<HsmAction, HalError> {
        let code = self.action_code();
        HsmAction::from_code(code).ok_or(HalError::UnknownAction {
            index: self.index,
            offset: self.offset,
            code,
        })
    }

    /// `hai_fid`.
    pub fn fid(&self) -> LuFid {
        le_fid(self.bytes, 8)
    }

    /// `hai_dfid`.
    pub fn dfid(&self) -> LuFid {
        le_fid(self.bytes, 24)
    }

    /// `hai_extent`.
    pub fn extent(&self) -> HsmExtent {
        HsmExtent::new(le_u64(self.bytes, 40), le_u64(self.bytes, 48))
    }

    /// `hai_cookie`.
    pub fn cookie(&self) -> u64 {
        le_u64(self.bytes, 56)
    }

    /// `hai_gid`.
    pub fn gid(&self) -> u64 {
        le_u64(self.bytes, 64)
    }

    /// `hai_data`: the `hai_len - 72` bytes after the fixed part (no padding).
    pub fn data(&self) -> &'a [u8] {
        &self.bytes[HAI_FIXED_LEN..]
    }

    /// The item's `hai_len` bytes as they are in the buffer.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// An owned copy; fails only on an unknown action code.
    pub fn to_owned_item(&self) -> Result<HsmActionItem, HalError> {
        Ok(HsmActionItem {
            action: self.action()?,
            fid: self.fid(),
            dfid: self.dfid(),
            extent: self.extent(),
            cookie: self.cookie(),
            gid: self.gid(),
            data: self.data().to_vec(),
        })
    }
}

/// One file of a user request (`struct hsm_user_item`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HsmUserItem {
    /// The file.
    pub fid: LuFid,
    /// Byte range (usually [`HsmExtent::WHOLE_FILE`]).
    pub extent: HsmExtent,
}

/// A user request (`struct hsm_user_request`): what `lfs hsm_archive` & co. send, and how a
/// request is canceled. Encode only.
///
/// Layout: `struct hsm_request` (24 bytes: action, archive id, flags, item count, data
/// length), then 32 bytes per item (fid + extent, packed), then the data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HsmUserRequest {
    /// `hr_action`.
    pub action: HsmUserAction,
    /// `hr_archive_id` (used by ARCHIVE and REMOVE; 0 lets the MDT choose).
    pub archive_id: u32,
    /// `hr_flags` (see [`crate::action::HsmRequestFlags`]).
    pub flags: u64,
    /// The files.
    pub items: Vec<HsmUserItem>,
    /// Opaque data copied into every resulting action item.
    pub data: Vec<u8>,
}

/// `hur_len()`: size of a user request with `itemcount` items and `data_len` bytes of data.
pub const fn hur_len(itemcount: usize, data_len: usize) -> usize {
    HSM_REQUEST_LEN
        .saturating_add(HSM_USER_ITEM_LEN.saturating_mul(itemcount))
        .saturating_add(data_len)
}

impl HsmUserRequest {
    /// An empty request.
    pub fn new(action: HsmUserAction, archive_id: u32, flags: u64) -> Self {
        Self {
            action,
            archive_id,
            flags,
            items: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Adds a file (whole-file extent) and returns the request, for chaining.
    pub fn with_fid(mut self, fid: LuFid) -> Self {
        self.items.push(HsmUserItem {
            fid,
            extent: HsmExtent::WHOLE_FILE,
        });
        self
    }

    /// Sets the data and returns the request, for chaining.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// `hur_len()` of this request: the number of bytes [`encode`](Self::encode) writes.
    pub fn hur_len(&self) -> usize {
        hur_len(self.items.len(), self.data.len())
    }

    /// True if llite accepts a request this large (`hur_len` below [`HUR_MAX_LEN`]);
    /// larger requests must be split.
    pub fn fits_one_ioctl(&self) -> bool {
        self.hur_len() < HUR_MAX_LEN
    }

    /// Encodes the request (item count and data length saturate at `u32::MAX`, far above
    /// anything Lustre accepts).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.hur_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded request to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let count = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        let data_len = u32::try_from(self.data.len()).unwrap_or(u32::MAX);
        out.reserve(self.hur_len());
        out.extend_from_slice(&self.action.code().to_le_bytes());
        out.extend_from_slice(&self.archive_id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&data_len.to_le_bytes());
        for item in self.items.iter().take(count as usize) {
            put_fid(out, &item.fid);
            out.extend_from_slice(&item.extent.offset.to_le_bytes());
            out.extend_from_slice(&item.extent.length.to_le_bytes());
        }
        out.extend_from_slice(&self.data[..data_len as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_helpers() {
        assert_eq!(align8(0), 0);
        assert_eq!(align8(1), 8);
        assert_eq!(align8(8), 8);
        assert_eq!(align8(122), 128);
        assert_eq!(checked_align8(usize::MAX), None);
        assert_eq!(checked_align8(usize::MAX - 7), Some(usize::MAX & !7));
        assert_eq!(align8(usize::MAX), usize::MAX & !7);
        assert_eq!(hai_first_offset(6), 40);
        assert_eq!(hai_first_offset(7), 40);
        assert_eq!(hai_first_offset(8), 48);
        assert_eq!(hal_size(6, [72]), 112);
        assert_eq!(hal_size(6, [122]), 168);
        assert_eq!(hur_len(2, 5), 24 + 64 + 5);
    }

    #[test]
    fn extent_helpers() {
        assert!(HsmExtent::WHOLE_FILE.is_whole_file());
        assert_eq!(HsmExtent::new(10, 5).end(), Some(15));
        assert_eq!(HsmExtent::new(1, LUSTRE_EOF).end(), None);
    }
}
