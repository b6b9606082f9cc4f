//! Arbitrary bytes into `HalView` / `HsmActionList::parse`: no panic, and every accepted
//! list re-encodes to itself.
#![no_main]

use coordinatool_lustre::hal::{HAL_VERSION, HalView, HsmActionList};
use libfuzzer_sys::fuzz_target;

fn check(buf: &[u8]) {
    match HalView::new(buf) {
        Ok(view) => {
            let mut n = 0usize;
            for hai in view.items() {
                let hai = hai.expect("a checked view yields only valid items");
                assert!(hai.offset() + hai.len() <= buf.len());
                assert_eq!(hai.data().len(), hai.len() - 72);
                let _ = (hai.action(), hai.fid(), hai.dfid(), hai.extent());
                let _ = (hai.cookie(), hai.gid(), hai.to_owned_item());
                n += 1;
            }
            assert_eq!(n, view.count() as usize);
            assert!(view.used_len() <= buf.len());
            if let Ok(owned) = HsmActionList::parse(buf) {
                let encoded = owned.encode();
                assert_eq!(encoded.len(), owned.encoded_len());
                assert_eq!(HsmActionList::parse(&encoded).as_ref(), Ok(&owned));
            }
        }
        Err(_) => assert!(HsmActionList::parse(buf).is_err()),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Most random inputs stop at the version check; also try them with a valid version.
    if data.len() >= 4 {
        let mut patched = data.to_vec();
        patched[..4].copy_from_slice(&HAL_VERSION.to_le_bytes());
        check(&patched);
    }
});
