//! Loading liblustreapi at run time: clear errors when it is missing or incomplete.

use coordinatool_lustre::ffi::{LoadError, Lustreapi, SONAME, SYMBOLS};

#[test]
fn missing_library_says_lustre_is_not_installed_and_why() {
    let name = "liblustreapi-coordinatool-test-missing.so.1";
    let e = Lustreapi::load_from(name).unwrap_err();
    let LoadError::LibraryMissing { library, reason } = &e else {
        panic!("expected LibraryMissing, got {e:?}");
    };
    assert_eq!(library, name);
    // The dlerror() text, which libloading's own Display hides.
    assert!(
        reason.contains("cannot open shared object file"),
        "{reason}"
    );
    let msg = e.to_string();
    assert!(msg.contains("Lustre is not available"), "{msg}");
    assert!(msg.contains("liblustreapi.so.1 is not installed"), "{msg}");
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(msg.contains("COORDINATOOL_LIBLUSTREAPI"), "{msg}");
}

#[test]
fn missing_path_reports_the_path() {
    let path = "/nonexistent/dir/liblustreapi.so.1";
    let e = Lustreapi::load_from(path).unwrap_err();
    assert!(matches!(&e, LoadError::LibraryMissing { library, .. } if library == path));
    assert!(e.to_string().contains(path), "{e}");
}

#[test]
fn library_without_the_symbols_names_the_first_missing_one() {
    // libc loads fine but is not liblustreapi.
    let e = Lustreapi::load_from("libc.so.6").unwrap_err();
    match &e {
        LoadError::MissingSymbol {
            library,
            symbol,
            reason,
        } => {
            assert_eq!(library, "libc.so.6");
            assert_eq!(*symbol, "llapi_hsm_copytool_register");
            assert!(reason.contains("undefined symbol"), "{reason}");
        }
        other => panic!("expected MissingSymbol, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("llapi_hsm_copytool_register"), "{msg}");
    assert!(msg.contains("libc.so.6"), "{msg}");
}

#[test]
fn default_soname_either_loads_or_explains() {
    // On a machine with Lustre this loads; without it the error names the soname.
    match Lustreapi::load_from(SONAME) {
        Ok(api) => assert_eq!(api.library(), SONAME),
        Err(e) => {
            assert!(matches!(e, LoadError::LibraryMissing { .. }), "{e:?}");
            assert!(e.to_string().contains(SONAME), "{e}");
        }
    }
}

#[test]
fn symbol_list_matches_the_generated_loader() {
    // The pre-check list must name exactly the symbols the bindgen loader resolves.
    let bindings = include_str!("../src/ffi/bindings.rs");
    let generated: Vec<&str> = bindings
        .split("__library.get(b\"")
        .skip(1)
        .map(|rest| rest.split("\\0\"").next().unwrap())
        .collect();
    assert_eq!(generated, SYMBOLS);
    assert!(SYMBOLS.len() >= 28);
}
