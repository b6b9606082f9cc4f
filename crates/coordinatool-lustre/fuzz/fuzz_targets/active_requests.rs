//! Arbitrary text into the `active_requests` and `actions` parsers: no panic, errors carry a
//! line number, and whatever parses prints back to the same value.
#![no_main]

use coordinatool_lustre::active_requests::{
    ActionRecord, ActiveRequest, parse_actions, parse_active_requests,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for r in parse_active_requests(&text) {
        match r {
            Ok(req) => {
                let mut again: ActiveRequest =
                    req.to_string().parse().expect("printed line parses");
                again.line = req.line;
                again.mdt.clone_from(&req.mdt);
                assert_eq!(again, req);
            }
            Err(e) => assert!(e.line >= 1),
        }
    }
    for r in parse_actions(&text) {
        match r {
            Ok(rec) => {
                let mut again: ActionRecord = rec.to_string().parse().expect("printed line parses");
                again.line = rec.line;
                again.mdt.clone_from(&rec.mdt);
                assert_eq!(again, rec);
            }
            Err(e) => assert!(e.line >= 1),
        }
    }
});
