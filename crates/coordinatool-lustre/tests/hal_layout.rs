//! Golden bytes of `hsm_action_list`, written by hand from the offsets of lustre-hsm.md §2.2–2.4
//! and §2.7 (not produced by the encoder under test).

use coordinatool_lustre::hal::{
    HAI_FIXED_LEN, HAL_HEADER_LEN, HAL_VERSION, HalView, HsmActionItem, HsmActionList, HsmExtent,
    HsmUserRequest, LUSTRE_EOF, hal_size,
};
use coordinatool_lustre::{HsmAction, HsmUserAction, LuFid};

/// Decodes a hex string; whitespace and `|` separators are ignored so the fields can be
/// laid out one per line.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'|')
        .collect();
    assert!(digits.len() % 2 == 0, "odd hex literal");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

const FID: LuFid = LuFid::new(0x2_0000_0401, 0x4, 0x0);

/// Header (offsets 0..32) + "lustre\0" padded to 8 (32..40), one ARCHIVE item (40..112).
const ONE_ARCHIVE: &str = "
    01000000 | 01000000 | 0000000000000000 | 0000000000000000 | 01000000 | 00000000
    6c75737472650000
    48000000 | 14000000
    0104000002000000 04000000 00000000
    0104000002000000 04000000 00000000
    0000000000000000 | ffffffffffffffff
    97bb136900000000 | 0000000000000000
";

fn one_archive() -> HsmActionList {
    let mut hal = HsmActionList::new("lustre", 1, 0);
    hal.items
        .push(HsmActionItem::new(HsmAction::Archive, FID, 0x6913_bb97));
    hal
}

#[test]
fn one_archive_without_data_is_112_bytes() {
    let hal = one_archive();
    let expected = hex(ONE_ARCHIVE);
    assert_eq!(expected.len(), 112);
    assert_eq!(hal.encoded_len(), 112);
    assert_eq!(hal.encode(), expected);

    let view = HalView::new(&expected).unwrap();
    assert_eq!(view.version(), HAL_VERSION);
    assert_eq!(view.count(), 1);
    assert_eq!(view.compound_id(), 0);
    assert_eq!(view.archive_id(), 1);
    assert_eq!(view.fsname(), b"lustre");
    assert_eq!(view.first_item_offset(), 40);
    assert_eq!(view.used_len(), 112);
    let hai = view.items().next().unwrap().unwrap();
    assert_eq!(hai.offset(), 40);
    assert_eq!(hai.len(), HAI_FIXED_LEN);
    assert_eq!(hai.action().unwrap(), HsmAction::Archive);
    assert_eq!(hai.fid(), FID);
    assert_eq!(hai.dfid(), FID);
    assert_eq!(hai.extent(), HsmExtent::new(0, LUSTRE_EOF));
    assert_eq!(hai.cookie(), 0x6913_bb97);
    assert_eq!(hai.gid(), 0);
    assert!(hai.data().is_empty());
    assert_eq!(HsmActionList::parse(&expected).unwrap(), hal);
}

#[test]
fn fifty_bytes_of_data_give_hai_len_122_and_hal_size_168() {
    let data: Vec<u8> = (0u8..50).collect();
    let mut hal = HsmActionList::new("lustre", 3, 0x1);
    let mut item = HsmActionItem::new(HsmAction::Restore, FID, 0x1122_3344_5566_7788);
    item.dfid = LuFid::new(0x2_0000_0402, 0x10, 0x1);
    item.extent = HsmExtent::new(0x1000, 0x2000);
    item.gid = 0xabcd;
    item.data = data.clone();
    hal.items.push(item);

    let mut expected = hex("
        01000000 | 01000000 | 0000000000000000 | 0100000000000000 | 03000000 | 00000000
        6c75737472650000
        7a000000 | 15000000
        0104000002000000 04000000 00000000
        0204000002000000 10000000 01000000
        0010000000000000 | 0020000000000000
        8877665544332211 | cdab000000000000
    ");
    expected.extend_from_slice(&data);
    expected.extend_from_slice(&[0; 6]);
    assert_eq!(expected.len(), 168);
    assert_eq!(hal_size(6, [122]), 168);
    assert_eq!(hal.items[0].hai_len(), 122);
    assert_eq!(hal.encoded_len(), 168);
    assert_eq!(hal.encode(), expected);

    let view = HalView::new(&expected).unwrap();
    assert_eq!(view.flags(), 1);
    assert_eq!(view.archive_id(), 3);
    let hai = view.items().next().unwrap().unwrap();
    assert_eq!(hai.len(), 122);
    assert_eq!(hai.data(), &data[..]);
    assert_eq!(HsmActionList::parse(&expected).unwrap(), hal);
}

#[test]
fn second_item_starts_at_align8_of_the_first_hai_len() {
    // fsname "fs00-long" (9 bytes + NUL -> 16): first item at 48; item 0 has 3 data bytes
    // (hai_len 75 -> next at +80 = 128); item 1 is a CANCEL without data.
    let mut hal = HsmActionList::new("fs00-long", 2, 0);
    let mut a = HsmActionItem::new(HsmAction::Remove, FID, 7);
    a.data = b"a,b".to_vec();
    hal.items.push(a);
    hal.items
        .push(HsmActionItem::new(HsmAction::Cancel, FID, 7));
    let bytes = hal.encode();
    assert_eq!(bytes.len(), HAL_HEADER_LEN + 16 + 80 + 72);
    assert_eq!(&bytes[32..48], b"fs00-long\0\0\0\0\0\0\0");
    assert_eq!(&bytes[48..52], &75u32.to_le_bytes());
    assert_eq!(&bytes[120..123], b"a,b");
    assert_eq!(&bytes[123..128], &[0; 5], "padding must be zero");
    assert_eq!(&bytes[128..132], &72u32.to_le_bytes());
    assert_eq!(&bytes[132..136], &23u32.to_le_bytes());
    let view = HalView::new(&bytes).unwrap();
    let offsets: Vec<usize> = view.items().map(|h| h.unwrap().offset()).collect();
    assert_eq!(offsets, [48, 128]);
}

#[test]
fn fsname_of_exactly_eight_bytes_takes_sixteen() {
    let hal = HsmActionList::new("12345678", 1, 0);
    let bytes = hal.encode();
    assert_eq!(bytes.len(), 48);
    assert_eq!(&bytes[40..48], &[0; 8]);
    let view = HalView::new(&bytes).unwrap();
    assert_eq!(view.count(), 0);
    assert_eq!(view.items().count(), 0);
}

#[test]
fn trailing_bytes_after_the_list_are_accepted() {
    let mut bytes = hex(ONE_ARCHIVE);
    bytes.extend_from_slice(&[0xee; 4096]);
    let view = HalView::new(&bytes).unwrap();
    assert_eq!(view.used_len(), 112);
    assert_eq!(view.buffer().len(), 112 + 4096);
    assert_eq!(HsmActionList::parse(&bytes).unwrap(), one_archive());
}

#[test]
fn old_compound_id_is_visible_in_the_view_and_ignored_by_the_owned_copy() {
    let mut bytes = hex(ONE_ARCHIVE);
    bytes[8..16].copy_from_slice(&0x57d8_a6dcu64.to_le_bytes());
    let view = HalView::new(&bytes).unwrap();
    assert_eq!(view.compound_id(), 0x57d8_a6dc);
    let owned = HsmActionList::parse(&bytes).unwrap();
    assert_eq!(owned, one_archive());
    assert_eq!(&owned.encode()[8..16], &[0; 8]);
}

#[test]
fn user_request_layout() {
    // hsm_request (24) + 2 * hsm_user_item (32) + 4 data bytes.
    let req = HsmUserRequest::new(HsmUserAction::Cancel, 2, 0x1)
        .with_fid(FID)
        .with_fid(LuFid::new(0x2_0000_0401, 0x5, 0))
        .with_data(b"x=1,".to_vec());
    let expected = hex("
        0e000000 | 02000000 | 0100000000000000 | 02000000 | 04000000
        0104000002000000 04000000 00000000 | 0000000000000000 | ffffffffffffffff
        0104000002000000 05000000 00000000 | 0000000000000000 | ffffffffffffffff
        783d312c
    ");
    assert_eq!(expected.len(), 24 + 64 + 4);
    assert_eq!(req.hur_len(), expected.len());
    assert_eq!(req.encode(), expected);
    assert!(req.fits_one_ioctl());
}

#[test]
fn user_request_size_limit_is_mds_maxreqsize_over_three() {
    // 52 files without data fit (24 + 52*32 = 1688 < 1706); 53 do not.
    let mut req = HsmUserRequest::new(HsmUserAction::Archive, 1, 0);
    for oid in 0..52 {
        req = req.with_fid(LuFid::new(0x2_0000_0401, oid, 0));
    }
    assert!(req.fits_one_ioctl());
    req = req.with_fid(LuFid::new(0x2_0000_0401, 99, 0));
    assert!(!req.fits_one_ioctl());
}
