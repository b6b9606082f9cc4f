//! errno -> LustreError mapping (lustre-hsm.md §5.3 return values).

use coordinatool_lustre::LustreError;

const CALL: &str = "llapi_hsm_action_progress";

#[test]
fn every_documented_errno_has_its_variant() {
    let table: [(i32, LustreError); 10] = [
        (libc::EINVAL, LustreError::InvalidArgument { call: CALL }),
        (libc::ENOENT, LustreError::NotFound { call: CALL }),
        (
            libc::EPERM,
            LustreError::PermissionDenied {
                call: CALL,
                errno: libc::EPERM,
            },
        ),
        (
            libc::EACCES,
            LustreError::PermissionDenied {
                call: CALL,
                errno: libc::EACCES,
            },
        ),
        (libc::EAGAIN, LustreError::WouldBlock { call: CALL }),
        (libc::ESHUTDOWN, LustreError::Shutdown { call: CALL }),
        (libc::ECANCELED, LustreError::Canceled { call: CALL }),
        (
            libc::ENXIO,
            LustreError::CoordinatorNotRunning { call: CALL },
        ),
        (libc::ENOTCONN, LustreError::NotConnected { call: CALL }),
        (libc::EBUSY, LustreError::Busy { call: CALL }),
    ];
    for (errno, expected) in table {
        assert_eq!(
            LustreError::from_errno(CALL, errno),
            expected,
            "errno {errno}"
        );
        // The library returns -errno.
        assert_eq!(LustreError::check(CALL, -errno), Err(expected.clone()));
        assert_eq!(expected.errno(), errno);
        assert_eq!(expected.call(), CALL);
        assert!(expected.to_string().starts_with(CALL), "{expected}");
    }
    assert_eq!(libc::EWOULDBLOCK, libc::EAGAIN);
}

#[test]
fn other_errnos_keep_the_number_and_text() {
    let e = LustreError::from_errno("llapi_hsm_copytool_recv", -libc::EPROTO);
    assert_eq!(
        e,
        LustreError::Other {
            call: "llapi_hsm_copytool_recv",
            errno: libc::EPROTO
        }
    );
    assert_eq!(e.errno(), libc::EPROTO);
    let msg = e.to_string();
    assert!(
        msg.starts_with("llapi_hsm_copytool_recv failed: Protocol error"),
        "{msg}"
    );
    assert!(msg.contains(&format!("errno {}", libc::EPROTO)), "{msg}");
    // i32::MIN has no positive counterpart: still a positive errno, no overflow panic.
    assert!(LustreError::from_errno(CALL, i32::MIN).errno() > 0);
}

#[test]
fn success_values_pass_through() {
    assert_eq!(LustreError::check(CALL, 0), Ok(0));
    assert_eq!(LustreError::check(CALL, 17), Ok(17));
}

#[test]
fn messages_explain_the_common_cases() {
    let s = LustreError::CoordinatorNotRunning {
        call: "llapi_hsm_copytool_register",
    }
    .to_string();
    assert!(
        s.contains("coordinator is not running") && s.contains("ENXIO"),
        "{s}"
    );
    let s = LustreError::PermissionDenied {
        call: "llapi_hsm_copytool_register",
        errno: libc::EPERM,
    }
    .to_string();
    assert!(s.contains("EPERM") && s.contains("root"), "{s}");
    let s = LustreError::WouldBlock {
        call: "llapi_hsm_copytool_recv",
    }
    .to_string();
    assert!(s.contains("EAGAIN"), "{s}");
}
