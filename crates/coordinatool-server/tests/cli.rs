//! The installed binaries: both names, help, version, and start-up errors.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin);
    c.args(args);
    for k in [
        "COORDINATOOL_CONF",
        "COORDINATOOL_VERBOSE",
        "COORDINATOOL_STORE",
        "NOTIFY_SOCKET",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

const BINS: [&str; 2] = [
    env!("CARGO_BIN_EXE_coordinatool-server"),
    env!("CARGO_BIN_EXE_lhsmd_coordinatool"),
];

#[test]
fn version_and_help_under_both_names() {
    for bin in BINS {
        let out = run(bin, &["-V"], &[]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("Coordinatool version "));
        let out = run(bin, &["--help"], &[]);
        assert!(out.status.success());
        let name = std::path::Path::new(bin)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with(&format!("Usage: {name} [options] <mountpoint>")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn missing_mount_point_exits_1() {
    let out = run(BINS[1], &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mount point specified"));
}

#[test]
fn bad_config_value_names_file_line_and_key() {
    let f = std::env::temp_dir().join(format!("ct-cli-{}.conf", std::process::id()));
    std::fs::write(&f, "# c\nredis_port 99999\n").unwrap();
    let out = run(BINS[0], &["-c", f.to_str().unwrap(), "/mnt"], &[]);
    std::fs::remove_file(&f).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2: invalid value \"99999\" for key redis_port",
            f.display()
        )),
        "{err}"
    );
}

#[test]
fn bad_environment_is_fatal() {
    let out = run(
        BINS[0],
        &["/mnt"],
        &[
            ("COORDINATOOL_VERBOSE", "loud"),
            ("COORDINATOOL_CONF", "/dev/null"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COORDINATOOL_VERBOSE"));
}
