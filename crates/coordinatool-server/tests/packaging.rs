//! The systemd unit and sysconfig file in packaging/systemd agree with the server.

use coordinatool_server::config::{self, Invocation, Verbosity, sysconfig};
use std::path::{Path, PathBuf};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

fn unit() -> String {
    std::fs::read_to_string(packaging().join("coordinatool@.service")).unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}

#[test]
fn unit_keeps_upstreams_interface_with_type_notify() {
    let u = unit();
    for line in [
        "Description=Lustre HSM coordinatool agent for %I",
        "Requires=%i.mount",
        "Type=notify",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/sysconfig/coordinatool",
        "EnvironmentFile=-/etc/sysconfig/coordinatool.%i",
        "ExecStart=/usr/bin/lhsmd_coordinatool $COORDINATOOL_OPTS /%I",
        "StateDirectory=coordinatool/%i",
        "WantedBy=multi-user.target",
    ] {
        assert!(has_line(&u, line), "missing {line:?}");
    }
    assert!(
        u.lines()
            .any(|l| l.starts_with("After=") && l.contains("%i.mount"))
    );
    // The embedded store's default directory is the one the unit creates.
    assert_eq!(config::DEFAULT_STATE_ROOT, "/var/lib/coordinatool");
    let cfg = config::ServerConfig::defaults("/mnt/lustre");
    assert_eq!(
        cfg.state_dir(),
        Path::new("/var/lib/coordinatool/mnt-lustre")
    );
}

#[test]
fn unit_passes_systemd_analyze_syntax_checks() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: syntax check skipped");
        return;
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("ct-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("coordinatool@.service");
    std::fs::write(&f, unit()).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Only the environment may be missing here (no Lustre mount, no installed binary).
    for l in err.lines() {
        assert!(
            l.contains(".mount") || l.contains("is not executable") || l.trim().is_empty(),
            "systemd-analyze: {l}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sysconfig_parses_and_its_example_options_are_valid() {
    let path = packaging().join("coordinatool.sysconfig");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        sysconfig::parse(&path, &text).unwrap().is_empty(),
        "everything is commented out"
    );
    // Uncomment every example: each must parse and be accepted by the server.
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# COORDINATOOL_"))
        .map(|l| format!("COORDINATOOL_{l}\n"))
        .collect();
    let vars = sysconfig::parse(&path, &uncommented).unwrap();
    assert!(vars.len() >= 8, "{vars:?}");
    let opts: Vec<String> = vars
        .iter()
        .find(|(k, _)| k == sysconfig::OPTS_VAR)
        .map(|(_, v)| v.split_whitespace().map(String::from).collect())
        .unwrap();
    let conf = std::env::temp_dir().join(format!("ct-sysconfig-conf-{}", std::process::id()));
    std::fs::write(&conf, "").unwrap();
    let env = |k: &str| {
        if k == "COORDINATOOL_CONF" {
            return Some(conf.display().to_string());
        }
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let mut args = opts;
    args.push("/mnt/lustre".into());
    let Invocation::Run(l) = config::load("lhsmd_coordinatool", &args, &env).unwrap() else {
        panic!("expected a run")
    };
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.archive_ids, vec![1, 2]);
    assert_eq!(l.config.verbosity, Verbosity::Info);
    assert_eq!(l.config.host, "0.0.0.0");
    std::fs::remove_file(&conf).unwrap();
}

#[test]
fn escaping_matches_systemd_escape() {
    for p in ["/mnt/lustre", "/mnt/a-b", "/lustre/fs 1", "/"] {
        let Ok(out) = std::process::Command::new("systemd-escape")
            .args(["--path", p])
            .output()
        else {
            eprintln!("systemd-escape not installed: check skipped");
            return;
        };
        let want = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            config::systemd_escape_path(Path::new(p)),
            want.trim_end(),
            "{p}"
        );
    }
}
