//! Builds the C part (the variadic logging functions, which stable Rust cannot define) and
//! gives the shared object its soname.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let include = manifest.join("../../coordinatool-lustre/include");
    let src = manifest.join("src/log.c");
    let obj = out.join("log.o");
    let lib = out.join("liblustreapi_log.a");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let ar = std::env::var("AR").unwrap_or_else(|_| "ar".to_owned());
    let _ = std::fs::remove_file(&lib);
    run(Command::new(&cc)
        .args([
            "-std=c99", "-O2", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj));
    run(Command::new(&ar).arg("crs").arg(&lib).arg(&obj));
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static:+whole-archive=lustreapi_log");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblustreapi.so.1");
    // rustc's own version script keeps only Rust's #[no_mangle] functions global; this
    // second (anonymous) script adds the C-defined exports.
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        manifest.join("src/exports.map").display()
    );
    println!("cargo:rerun-if-changed=src/log.c");
    println!("cargo:rerun-if-changed=src/exports.map");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("lustreapi_subset.h").display()
    );
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=AR");
}
