//! The `COORDINATOOL_LIBLUSTREAPI` override and the process-wide instance. Alone in its test
//! binary because it sets an environment variable.

use coordinatool_lustre::ffi::{ENV_LIBRARY, LoadError, Lustreapi};

#[test]
fn env_override_is_used_by_load_and_global() {
    assert_eq!(ENV_LIBRARY, "COORDINATOOL_LIBLUSTREAPI");
    let path = "/nonexistent/override/liblustreapi.so.1";
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var(ENV_LIBRARY, path) };
    let e = Lustreapi::load().unwrap_err();
    assert!(
        matches!(&e, LoadError::LibraryMissing { library, .. } if library == path),
        "{e:?}"
    );

    // A name (no slash) is searched like a soname.
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_LIBRARY, "libc.so.6") };
    let e = Lustreapi::load().unwrap_err();
    assert!(
        matches!(&e, LoadError::MissingSymbol { library, .. } if library == "libc.so.6"),
        "{e:?}"
    );

    // global() loads once and remembers the failure.
    let first = Lustreapi::global().unwrap_err();
    // SAFETY: as above.
    unsafe { std::env::set_var(ENV_LIBRARY, path) };
    let second = Lustreapi::global().unwrap_err();
    assert_eq!(first, second);
    assert!(matches!(first, LoadError::MissingSymbol { .. }));
}
