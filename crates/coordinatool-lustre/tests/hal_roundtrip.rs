//! Property tests: owned -> encode -> view -> owned, and arbitrary bytes never panic.

use coordinatool_lustre::hal::{
    HAI_FIXED_LEN, HalView, HsmActionItem, HsmActionList, HsmExtent, align8, hal_size,
};
use coordinatool_lustre::{HsmAction, LuFid};
use proptest::prelude::*;

fn fid() -> impl Strategy<Value = LuFid> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, o, v)| LuFid::new(s, o, v))
}

fn item() -> impl Strategy<Value = HsmActionItem> {
    (
        prop::sample::select(HsmAction::ALL.to_vec()),
        fid(),
        fid(),
        any::<(u64, u64)>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(action, fid, dfid, (off, len), cookie, gid, data)| HsmActionItem {
                action,
                fid,
                dfid,
                extent: HsmExtent::new(off, len),
                cookie,
                gid,
                data,
            },
        )
}

fn list() -> impl Strategy<Value = HsmActionList> {
    (
        "[a-zA-Z0-9_-]{1,64}",
        any::<u64>(),
        any::<u32>(),
        prop::collection::vec(item(), 0..8),
    )
        .prop_map(|(fsname, flags, archive_id, items)| {
            let mut hal = HsmActionList::new(fsname, archive_id, flags);
            hal.items = items;
            hal
        })
}

proptest! {
    #[test]
    fn encode_view_parse_round_trip(hal in list(), trailing in 0usize..64) {
        prop_assert_eq!(hal.validate(), Ok(()));
        let mut bytes = hal.encode();
        prop_assert_eq!(bytes.len(), hal.encoded_len());
        prop_assert_eq!(
            bytes.len(),
            hal_size(hal.fsname.len(), hal.items.iter().map(|i| HAI_FIXED_LEN + i.data.len()))
        );
        prop_assert_eq!(bytes.len() % 8, 0);
        bytes.resize(bytes.len() + trailing, 0xa5);

        let view = HalView::new(&bytes).unwrap();
        prop_assert_eq!(view.fsname(), hal.fsname.as_bytes());
        prop_assert_eq!(view.count() as usize, hal.items.len());
        prop_assert_eq!(align8(view.used_len()), hal.encoded_len());
        let mut offset = view.first_item_offset();
        for (hai, item) in view.items().zip(&hal.items) {
            let hai = hai.unwrap();
            prop_assert_eq!(hai.offset(), offset);
            prop_assert_eq!(hai.len(), item.hai_len());
            // Padding after each item's data is zero.
            let pad = &bytes[offset + hai.len()..offset + align8(hai.len())];
            prop_assert!(pad.iter().all(|&b| b == 0));
            prop_assert_eq!(&hai.to_owned_item().unwrap(), item);
            offset += align8(hai.len());
        }
        prop_assert_eq!(HsmActionList::parse(&bytes).unwrap(), hal);
    }

    #[test]
    fn truncation_and_corruption_never_panic(
        hal in list(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let mut bytes = hal.encode();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let cut = cut.index(bytes.len() + 1);
        let buf = &bytes[..cut];
        if let Ok(view) = HalView::new(buf) {
            // A view only ever hands out in-bounds items.
            for hai in view.items() {
                let hai = hai.unwrap();
                prop_assert!(hai.offset() + hai.len() <= buf.len());
                let _ = (hai.action(), hai.fid(), hai.dfid(), hai.extent(), hai.data());
            }
        }
        let _ = HsmActionList::parse(buf);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = bytes;
        // Make most inputs get past the version check.
        if bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&1u32.to_le_bytes());
        }
        if let Ok(view) = HalView::new(&bytes) {
            for hai in view.items() {
                prop_assert!(hai.is_ok());
            }
        }
        let _ = HsmActionList::parse(&bytes);
    }
}
