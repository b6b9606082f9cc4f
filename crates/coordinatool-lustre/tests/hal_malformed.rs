//! Every malformed `hsm_action_list` is an error naming what is wrong and where.

use coordinatool_lustre::hal::{HalError, HalView, HsmActionItem, HsmActionList};
use coordinatool_lustre::{HsmAction, LuFid};

fn two_items() -> Vec<u8> {
    let fid = LuFid::new(0x2_0000_0401, 0x4, 0);
    let mut hal = HsmActionList::new("lustre", 1, 0);
    let mut a = HsmActionItem::new(HsmAction::Archive, fid, 1);
    a.data = vec![0x74, 0x61, 0x67];
    hal.items.push(a);
    hal.items
        .push(HsmActionItem::new(HsmAction::Restore, fid, 2));
    // item 0 at 40 (hai_len 75, next +80), item 1 at 120, total 192.
    hal.encode()
}

fn set_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn err(buf: &[u8]) -> HalError {
    let e = HalView::new(buf).expect_err("malformed buffer accepted");
    // The owned parser must agree with the view.
    assert_eq!(HsmActionList::parse(buf).unwrap_err(), e);
    e
}

#[test]
fn short_header() {
    assert_eq!(err(&[]), HalError::TooShort { len: 0 });
    assert_eq!(err(&two_items()[..31]), HalError::TooShort { len: 31 });
}

#[test]
fn wrong_version() {
    let mut b = two_items();
    set_u32(&mut b, 0, 2);
    assert_eq!(err(&b), HalError::UnsupportedVersion { version: 2 });
}

#[test]
fn fsname_without_nul() {
    let b = two_items();
    // Cut inside "lustre": no NUL before the end.
    assert_eq!(err(&b[..36]), HalError::FsnameUnterminated { len: 36 });
    assert_eq!(err(&b[..32]), HalError::FsnameUnterminated { len: 32 });
}

#[test]
fn fsname_longer_than_64() {
    let mut b = vec![0u8; 32];
    set_u32(&mut b, 0, 1);
    b.extend_from_slice(&[b'a'; 65]);
    b.extend_from_slice(&[0; 64]);
    assert_eq!(err(&b), HalError::FsnameTooLong { len: 65 });
    // 64 characters is the maximum and fine.
    let mut ok = vec![0u8; 32];
    set_u32(&mut ok, 0, 1);
    ok.extend_from_slice(&[b'a'; 64]);
    ok.extend_from_slice(&[0; 8]);
    assert_eq!(HalView::new(&ok).unwrap().fsname().len(), 64);
}

#[test]
fn fsname_not_utf8_only_fails_the_owned_parse() {
    let mut b = two_items();
    b[33] = 0xff;
    assert!(HalView::new(&b).is_ok());
    assert_eq!(
        HsmActionList::parse(&b).unwrap_err(),
        HalError::FsnameNotUtf8
    );
}

#[test]
fn count_larger_than_the_items_present() {
    let mut b = two_items();
    set_u32(&mut b, 4, 3);
    let e = err(&b);
    assert_eq!(
        e,
        HalError::ItemOutOfBounds {
            index: 2,
            count: 3,
            offset: 192,
            buf_len: 192
        }
    );
    assert!(e.to_string().contains("item 2 of 3 at offset 192"), "{e}");
    set_u32(&mut b, 4, u32::MAX);
    assert!(matches!(
        err(&b),
        HalError::ItemOutOfBounds { index: 2, .. }
    ));
}

#[test]
fn hai_len_smaller_than_fixed_part() {
    let mut b = two_items();
    set_u32(&mut b, 120, 71);
    let e = err(&b);
    assert_eq!(
        e,
        HalError::ItemLenTooSmall {
            index: 1,
            offset: 120,
            hai_len: 71
        }
    );
    assert_eq!(
        e.to_string(),
        "item 1 at offset 120: hai_len 71 is smaller than 72"
    );
    set_u32(&mut b, 40, 0);
    assert!(matches!(
        err(&b),
        HalError::ItemLenTooSmall {
            index: 0,
            offset: 40,
            hai_len: 0
        }
    ));
}

#[test]
fn hai_len_past_the_end() {
    let mut b = two_items();
    set_u32(&mut b, 120, 73);
    assert_eq!(
        err(&b),
        HalError::ItemPastEnd {
            index: 1,
            offset: 120,
            hai_len: 73,
            buf_len: 192
        }
    );
    // Item 0 claiming more than the buffer.
    let mut b = two_items();
    set_u32(&mut b, 40, 10_000);
    assert!(matches!(err(&b), HalError::ItemPastEnd { index: 0, .. }));
}

#[test]
fn hai_len_whose_align8_wraps_a_u32() {
    for bad in [u32::MAX, u32::MAX - 6] {
        let mut b = two_items();
        set_u32(&mut b, 40, bad);
        assert_eq!(
            err(&b),
            HalError::ItemLenOverflow {
                index: 0,
                offset: 40,
                hai_len: bad
            }
        );
    }
    // u32::MAX - 7 aligns to itself without wrapping: just past the end.
    let mut b = two_items();
    set_u32(&mut b, 40, u32::MAX - 7);
    assert!(matches!(err(&b), HalError::ItemPastEnd { index: 0, .. }));
}

#[test]
fn unknown_action_fails_only_when_asked() {
    let mut b = two_items();
    set_u32(&mut b, 124, 99);
    let view = HalView::new(&b).unwrap();
    let hai = view.items().nth(1).unwrap().unwrap();
    assert_eq!(hai.action_code(), 99);
    let e = HalError::UnknownAction {
        index: 1,
        offset: 120,
        code: 99,
    };
    assert_eq!(hai.action().unwrap_err(), e);
    assert_eq!(hai.to_owned_item().unwrap_err(), e);
    assert_eq!(HsmActionList::parse(&b).unwrap_err(), e);
}

#[test]
fn last_item_padding_is_optional_but_its_bytes_are_not() {
    let b = two_items();
    // Item 0 ends at 40+75 = 115; its padding up to 120 may be missing only if it is last.
    let mut one = b[..115].to_vec();
    set_u32(&mut one, 4, 1);
    assert_eq!(HalView::new(&one).unwrap().used_len(), 115);
    assert!(matches!(
        err(&one[..114]),
        HalError::ItemPastEnd { index: 0, .. }
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let b = two_items();
    for len in 0..b.len() {
        let r = HalView::new(&b[..len]);
        // The full list needs all 192 bytes (item 1 ends exactly there).
        assert!(r.is_err(), "truncated to {len} accepted");
        let _ = HsmActionList::parse(&b[..len]);
    }
    assert!(HalView::new(&b).is_ok());
}

#[test]
fn owned_list_validation() {
    let mut hal = HsmActionList::new("a\0b", 1, 0);
    assert_eq!(
        hal.validate().unwrap_err(),
        HalError::FsnameContainsNul { index: 1 }
    );
    hal.fsname = "x".repeat(65);
    assert_eq!(
        hal.validate().unwrap_err(),
        HalError::FsnameTooLong { len: 65 }
    );
    hal.fsname = "x".repeat(64);
    assert_eq!(hal.validate(), Ok(()));
}
