//! Argument checks and the C `hsm_action_item` built for `action_begin`, without a library.

use coordinatool_lustre::copytool::{c_action_item, c_action_item_bytes, validate_archive_ids};
use coordinatool_lustre::hal::{HsmActionItem, HsmExtent};
use coordinatool_lustre::{HsmAction, LuFid, LustreError};

#[test]
fn archive_ids_are_validated() {
    assert_eq!(validate_archive_ids(&[]).unwrap(), Vec::<i32>::new());
    assert_eq!(
        validate_archive_ids(&[1, 7, 0x7fff_ffff]).unwrap(),
        [1, 7, i32::MAX]
    );
    let cases: [(&[u32], &str); 3] = [
        (&[1, 0], "archive id 0 at position 1"),
        (&[3, 5, 3], "archive id 3 is listed twice"),
        (
            &[0x8000_0000],
            "archive id 2147483648 at position 0 is larger than 2147483647",
        ),
    ];
    for (ids, text) in cases {
        let e = validate_archive_ids(ids).unwrap_err();
        assert!(
            matches!(
                e,
                LustreError::BadArgument {
                    call: "llapi_hsm_copytool_register",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(text), "{e}");
        assert_eq!(e.errno(), libc::EINVAL);
    }
}

#[test]
fn c_item_matches_section_2_3_byte_for_byte() {
    let mut item = HsmActionItem::new(
        HsmAction::Archive,
        LuFid::new(0x0102_0304_0506_0708, 0x1112_1314, 0x2122_2324),
        0x3132_3334_3536_3738,
    );
    item.dfid = LuFid::new(0x4142_4344_4546_4748, 0x5152_5354, 0x6162_6364);
    item.extent = HsmExtent::new(0x7172_7374_7576_7778, 0x8182_8384_8586_8788);
    item.gid = 0x9192_9394_9596_9798;
    item.data = vec![0xaa; 50];

    let mut expect = Vec::new();
    expect.extend_from_slice(&72u32.to_le_bytes()); // 0 hai_len: fixed part only
    expect.extend_from_slice(&20u32.to_le_bytes()); // 4 hai_action: HSMA_ARCHIVE
    expect.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes()); // 8 hai_fid
    expect.extend_from_slice(&0x1112_1314u32.to_le_bytes());
    expect.extend_from_slice(&0x2122_2324u32.to_le_bytes());
    expect.extend_from_slice(&0x4142_4344_4546_4748u64.to_le_bytes()); // 24 hai_dfid
    expect.extend_from_slice(&0x5152_5354u32.to_le_bytes());
    expect.extend_from_slice(&0x6162_6364u32.to_le_bytes());
    expect.extend_from_slice(&0x7172_7374_7576_7778u64.to_le_bytes()); // 40 hai_extent
    expect.extend_from_slice(&0x8182_8384_8586_8788u64.to_le_bytes());
    expect.extend_from_slice(&0x3132_3334_3536_3738u64.to_le_bytes()); // 56 hai_cookie
    expect.extend_from_slice(&0x9192_9394_9596_9798u64.to_le_bytes()); // 64 hai_gid
    assert_eq!(expect.len(), 72);
    assert_eq!(c_action_item_bytes(&item)[..], expect[..]);

    let c = c_action_item(&item);
    assert_eq!({ c.hai_len }, 72);
    assert_eq!({ c.hai_cookie }, item.cookie);
    assert_eq!({ c.hai_dfid.f_oid }, 0x5152_5354);
}
