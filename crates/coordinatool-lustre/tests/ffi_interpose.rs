//! An object in the process's global scope that defines a liblustreapi function (an
//! `LD_PRELOAD` library, such as coordinatool's movers' library) interposes on it, as it would
//! for a program linked with `-llustreapi`. Its own test binary: it changes the global scope.

use std::path::PathBuf;
use std::process::Command;

use coordinatool_lustre::ffi::Lustreapi;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cc(out: &std::path::Path, src: &std::path::Path, extra: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-std=c99", "-shared", "-fPIC", "-I"])
        .arg(crate_dir().join("include"))
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(src)
        .arg("-lpthread")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "compiling {} failed", src.display());
}

#[test]
fn a_global_definition_interposes_and_the_rest_comes_from_the_library() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lustreapi-interpose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stub = dir.join("liblustreapi.so.1");
    cc(
        &stub,
        &crate_dir().join("tests/copytool_stub/liblustreapi_stub.c"),
        &["-Wl,-soname,liblustreapi.so.1"],
    );

    // Nothing interposes yet: every function is the library's.
    let plain = Lustreapi::load_from(&stub).expect("load the stub");
    assert_eq!(plain.interposed(), &[] as &[&str]);

    // An interposer defining one function, loaded into the global scope.
    let src = dir.join("interposer.c");
    std::fs::write(
        &src,
        "struct lu_fid;\nint llapi_fd2fid(int fd, struct lu_fid *fid) { (void)fd; (void)fid; return -4242; }\n",
    )
    .unwrap();
    let interposer = dir.join("libinterposer.so");
    cc(&interposer, &src, &[]);
    // SAFETY: the interposer has no initialisers.
    let _global = unsafe {
        libloading::os::unix::Library::open(
            Some(&interposer),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .expect("load the interposer globally");

    let api = Lustreapi::load_from(&stub).expect("load the stub again");
    assert_eq!(api.interposed(), &["llapi_fd2fid"]);
    let mut fid = coordinatool_lustre::ffi::bindings::lu_fid::default();
    // SAFETY: the interposer ignores its arguments.
    let rc = unsafe { (api.symbols().llapi_fd2fid)(0, &mut fid) };
    assert_eq!(rc, -4242, "the interposer's definition is called");
    // The library loaded before the interposer keeps its own functions.
    // SAFETY: as above; the stub's fd2fid on a bad fd fails with a negative errno.
    let rc = unsafe { (plain.symbols().llapi_fd2fid)(-1, &mut fid) };
    assert_ne!(rc, -4242);
    std::fs::remove_dir_all(&dir).unwrap();
}
