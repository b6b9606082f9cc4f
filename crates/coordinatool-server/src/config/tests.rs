use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

/// A config file in a fresh temp path (removed on drop).
struct TempConf(PathBuf);

impl TempConf {
    fn new(text: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "ct-server-conf-{}-{}.conf",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, text).unwrap();
        TempConf(p)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Never read the machine's /etc/coordinatool.conf from tests: point at an empty file
    // unless the test sets COORDINATOOL_CONF or -c itself.
    let empty = TempConf::new("");
    let mut env2 = env.clone();
    if !env.contains_key("COORDINATOOL_CONF") && !args.contains(&"-c") {
        env2.insert("COORDINATOOL_CONF".into(), empty.path());
    }
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match load("lhsmd_coordinatool", &args, &|k| env2.get(k).cloned())? {
        Invocation::Run(l) => Ok(*l),
        other => panic!("expected a run, got {other:?}"),
    }
}

fn with_file(text: &str) -> Result<Loaded, ConfigError> {
    let f = TempConf::new(text);
    run(&["-c", &f.path(), "/mnt/lustre"], &[])
}

fn cfg(text: &str) -> ServerConfig {
    with_file(text).unwrap().config
}

fn bad_value(text: &str) -> (usize, String, String) {
    match with_file(text).unwrap_err() {
        ConfigError::BadValue {
            line, key, reason, ..
        } => (line, key, reason),
        e => panic!("expected BadValue, got {e}"),
    }
}

#[test]
fn defaults_match_upstream() {
    let c = run(&["/mnt/lustre"], &[]).unwrap().config;
    let d = ServerConfig::defaults("/mnt/lustre");
    assert_eq!(c.host, "coordinatool");
    assert_eq!(c.port, "5123");
    assert_eq!(c.verbosity, Verbosity::Normal);
    assert!(c.archive_ids.is_empty());
    assert_eq!(c.redis_host, "localhost");
    assert_eq!(c.redis_port, 6379);
    assert_eq!(c.client_grace_ms, 600_000);
    assert_eq!(
        c.batch,
        BatchConfig {
            idle_secs: 0,
            max_secs: 0,
            slots_per_client: 0
        }
    );
    assert_eq!(c.reporting_interval_ms, 60_000);
    assert_eq!(c.reporting(), None);
    assert_eq!(c.store, StoreKind::Embedded);
    assert_eq!(
        c.state_dir(),
        PathBuf::from("/var/lib/coordinatool/mnt-lustre")
    );
    assert_eq!(
        d.batch.slots_per_client, 1,
        "slots default to 1 before batching is checked"
    );
}

#[test]
fn every_upstream_key() {
    let c = cfg("# a comment\n\
         \n\
         HOST 10.0.0.1\n\
         port   5124  \n\
         Verbose DEBUG\n\
         archive_id 3\n\
         archive_id 0x10\n\
         redis_host 127.0.0.1\n\
         redis_port 6380\n\
         client_grace_ms 1000\n\
         archive_on_hosts tag=n0 mover0 mover1\n\
         archive_on_hosts_ch grouping= 10 mover0 mover1 mover2\n\
         batch_archives_slices_sec 300 3600\n\
         batch_archives_slots_per_client 2\n\
         reporting_dir .reporting\n\
         reporting_hint cr\n\
         reporting_schedule_interval_ms 5000\n");
    assert_eq!(c.host, "10.0.0.1");
    assert_eq!(c.port, "5124");
    assert_eq!(c.verbosity, Verbosity::Debug);
    assert_eq!(c.archive_ids, vec![3, 16]);
    assert_eq!(c.redis_host, "127.0.0.1");
    assert_eq!(c.redis_port, 6380);
    assert_eq!(c.client_grace_ms, 1000);
    assert_eq!(
        c.host_mappings,
        vec![
            HostMappingLine {
                tag: "tag=n0".into(),
                hash_count: None,
                hosts: vec!["mover0".into(), "mover1".into()]
            },
            HostMappingLine {
                tag: "grouping=".into(),
                hash_count: Some(10),
                hosts: vec!["mover0".into(), "mover1".into(), "mover2".into()]
            },
        ]
    );
    assert_eq!(
        c.batch,
        BatchConfig {
            idle_secs: 300,
            max_secs: 3600,
            slots_per_client: 2
        }
    );
    assert_eq!(
        c.reporting(),
        Some((PathBuf::from("/mnt/lustre/.reporting"), "cr"))
    );
    assert_eq!(c.reporting_interval_ms, 5000);
}

#[test]
fn batch_key_both_spellings() {
    let a = cfg("batch_archives_slices_sec 300\n");
    let b = cfg("batch_archives_slice_sec 300\n");
    assert_eq!(
        a.batch,
        BatchConfig {
            idle_secs: 300,
            max_secs: 0,
            slots_per_client: 1
        }
    );
    assert_eq!(a.batch, b.batch);
    // idle 0 disables batching and forces the slots to 0.
    let c = cfg("batch_archives_slice_sec 0 100\nbatch_archives_slots_per_client 4\n");
    assert_eq!(
        c.batch,
        BatchConfig {
            idle_secs: 0,
            max_secs: 100,
            slots_per_client: 0
        }
    );
    let (line, key, reason) = bad_value("\nbatch_archives_slices_sec 300 x\n");
    assert_eq!((line, key.as_str()), (2, "batch_archives_slices_sec"));
    assert!(reason.contains("max seconds"), "{reason}");
    let (_, key, reason) = bad_value("batch_archives_slice_sec -1\n");
    assert_eq!(key, "batch_archives_slice_sec");
    assert!(reason.contains("idle"), "{reason}");
}

#[test]
fn new_keys() {
    let c = cfg(
        "store redis\nstate_dir /srv/ct\narchive_on_hosts_ch_hash UPSTREAM\n\
         priority_restore 5\npriority_remove -1\npriority_archive 0\npriority_tag prio=\n\
         priority_aging_ms 0\nfair_share_key user=\nfair_share_weight alice 3\n\
         fair_share_weight bob 1\nfair_share_default_weight 2\n",
    );
    assert_eq!(c.store, StoreKind::Redis);
    assert_eq!(c.state_dir(), PathBuf::from("/srv/ct"));
    let s = &c.sched;
    assert_eq!(s.ch_hash, ChHash::Upstream);
    assert_eq!(
        (s.priority_restore, s.priority_remove, s.priority_archive),
        (Some(5), Some(-1), Some(0))
    );
    assert_eq!(s.priority_tag.as_deref(), Some("prio="));
    assert_eq!(s.priority_aging_ms, Some(0));
    assert_eq!(
        s.fair_share_key,
        Some(FairShareKey::DataTag("user=".into()))
    );
    assert_eq!(
        s.fair_share_weights,
        vec![("alice".into(), 3), ("bob".into(), 1)]
    );
    assert_eq!(s.fair_share_default_weight, Some(2));
    for (k, want) in [
        ("archive_id", FairShareKey::ArchiveId),
        ("UID", FairShareKey::Uid),
        ("gid", FairShareKey::Gid),
        ("projid", FairShareKey::ProjId),
    ] {
        assert_eq!(
            cfg(&format!("fair_share_key {k}\n")).sched.fair_share_key,
            Some(want)
        );
    }
    assert_eq!(cfg("store none\n").store, StoreKind::None);
    assert_eq!(cfg("store Embedded\n").store, StoreKind::Embedded);
}

#[test]
fn every_bad_value_names_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("verbose loud", "verbose"),
        ("archive_id 0", "archive_id"),
        ("archive_id 2147483648", "archive_id"),
        ("archive_id 1x", "archive_id"),
        ("redis_port 65536", "redis_port"),
        ("redis_port -1", "redis_port"),
        ("client_grace_ms 2147483648", "client_grace_ms"),
        ("archive_on_hosts_ch grouping=", "archive_on_hosts_ch"),
        (
            "archive_on_hosts_ch grouping= mover0 mover1",
            "archive_on_hosts_ch",
        ),
        (
            "batch_archives_slots_per_client -2",
            "batch_archives_slots_per_client",
        ),
        (
            "reporting_schedule_interval_ms soon",
            "reporting_schedule_interval_ms",
        ),
        ("store sqlite", "store"),
        ("archive_on_hosts_ch_hash md5", "archive_on_hosts_ch_hash"),
        ("priority_restore 3000000000", "priority_restore"),
        ("priority_archive high", "priority_archive"),
        ("priority_tag prio", "priority_tag"),
        ("priority_aging_ms -5", "priority_aging_ms"),
        ("fair_share_key user", "fair_share_key"),
        ("fair_share_weight alice", "fair_share_weight"),
        ("fair_share_weight alice 0", "fair_share_weight"),
        ("fair_share_default_weight 0", "fair_share_default_weight"),
    ];
    for (line_text, key) in cases {
        let f = TempConf::new(&format!("host h\n\n{line_text}\n"));
        let err = run(&["-c", &f.path(), "/mnt"], &[]).unwrap_err();
        let msg = err.to_string();
        match err {
            ConfigError::BadValue {
                line, key: k, path, ..
            } => {
                assert_eq!(line, 3, "{line_text}");
                assert_eq!(k, *key);
                assert_eq!(path, f.0);
            }
            e => panic!("{line_text}: expected BadValue, got {e}"),
        }
        assert!(
            msg.starts_with(&format!("{}:3: invalid value", f.path())),
            "{msg}"
        );
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn too_many_archive_ids() {
    let text: String = (1..=1025).map(|i| format!("archive_id {i}\n")).collect();
    let (line, key, reason) = bad_value(&text);
    assert_eq!((line, key.as_str()), (1025, "archive_id"));
    assert!(reason.contains("1024"));
    let text: String = (1..=1024).map(|i| format!("archive_id {i}\n")).collect();
    assert_eq!(cfg(&text).archive_ids.len(), 1024);
}

#[test]
fn non_utf8_line_is_an_error() {
    let f = TempConf::new("");
    std::fs::write(&f.0, b"host a\nhost \xff\n").unwrap();
    match run(&["-c", &f.path(), "/mnt"], &[]).unwrap_err() {
        ConfigError::BadValue { line, reason, .. } => {
            assert_eq!(line, 2);
            assert!(reason.contains("UTF-8"));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn warnings_for_unknown_keys_and_missing_values() {
    let l = with_file(
        "bogus 1\nhost\narchive_on_hosts lonely\narchive_on_hosts_ch t= 3\n\
         client_id x\nmax_restore 2\nmax_archive 3\nmax_remove 4\nhal_size 1M\n",
    )
    .unwrap();
    let msgs: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert!(msgs[0].ends_with(":1: unknown key bogus"), "{msgs:?}");
    assert!(
        msgs[1].ends_with(":2: key host has no value: skipped"),
        "{msgs:?}"
    );
    assert!(
        msgs[2].contains(":3: archive_on_hosts lonely: tag without hosts"),
        "{msgs:?}"
    );
    assert!(
        msgs[3].contains(":4: archive_on_hosts_ch t= 3: tag without hosts"),
        "{msgs:?}"
    );
    assert_eq!(
        l.config.host, "coordinatool",
        "a key without value changes nothing"
    );
    assert!(l.config.host_mappings.is_empty());
}

#[test]
fn reporting_needs_both_keys() {
    let l = with_file("reporting_dir .r\n").unwrap();
    assert_eq!(l.config.reporting(), None);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("reporting needs both"))
    );
    let l = with_file("reporting_hint cr\n").unwrap();
    assert_eq!(l.config.reporting(), None);
    assert_eq!(l.warnings.len(), 1);
}

#[test]
fn verbose_levels_case_insensitive() {
    for (name, v) in [
        ("OFF", Verbosity::Off),
        ("Fatal", Verbosity::Fatal),
        ("error", Verbosity::Error),
        ("WARN", Verbosity::Warn),
        ("normal", Verbosity::Normal),
        ("Info", Verbosity::Info),
        ("debug", Verbosity::Debug),
    ] {
        assert_eq!(cfg(&format!("verbose {name}\n")).verbosity, v);
        assert_eq!(v.name().parse::<Verbosity>(), Ok(v));
    }
    assert_eq!(level_filter(Verbosity::Off), LevelFilter::OFF);
    assert_eq!(level_filter(Verbosity::Fatal), LevelFilter::ERROR);
    assert_eq!(level_filter(Verbosity::Error), LevelFilter::ERROR);
    assert_eq!(level_filter(Verbosity::Warn), LevelFilter::WARN);
    assert_eq!(level_filter(Verbosity::Normal), LevelFilter::INFO);
    assert_eq!(level_filter(Verbosity::Info), LevelFilter::DEBUG);
    assert_eq!(level_filter(Verbosity::Debug), LevelFilter::TRACE);
}

#[test]
fn verbose_flags_step_and_saturate_in_order() {
    let v = |args: &[&str], env: &[(&str, &str)]| {
        let mut a = args.to_vec();
        a.push("/mnt");
        run(&a, env).unwrap().config.verbosity
    };
    assert_eq!(v(&["-v"], &[]), Verbosity::Info);
    assert_eq!(v(&["-vv"], &[]), Verbosity::Debug);
    assert_eq!(v(&["-vvvv"], &[]), Verbosity::Debug);
    assert_eq!(v(&["-q", "--quiet"], &[]), Verbosity::Error);
    // Each step saturates, as llapi_msg_set_level does: debug +1 -1 = info.
    assert_eq!(v(&["-vvvq"], &[]), Verbosity::Info);
    assert_eq!(v(&["-qqqqqq"], &[]), Verbosity::Off);
    assert_eq!(
        v(&["-v"], &[("COORDINATOOL_VERBOSE", "warn")]),
        Verbosity::Normal
    );
}

#[test]
fn precedence_cli_env_file_default() {
    let f = TempConf::new(
        "host filehost\nport 1111\nredis_host filer\nredis_port 1112\nclient_grace_ms 1113\n\
         verbose error\narchive_id 7\nstore none\nstate_dir /file\n",
    );
    let p = f.path();
    // File over default.
    let c = run(&["-c", &p, "/mnt"], &[]).unwrap().config;
    assert_eq!(
        (
            c.host.as_str(),
            c.port.as_str(),
            c.redis_host.as_str(),
            c.redis_port,
            c.client_grace_ms
        ),
        ("filehost", "1111", "filer", 1112, 1113)
    );
    assert_eq!(c.verbosity, Verbosity::Error);
    assert_eq!(c.archive_ids, vec![7]);
    // Environment over file.
    let env = [
        ("COORDINATOOL_HOST", "envhost"),
        ("COORDINATOOL_PORT", "2221"),
        ("COORDINATOOL_REDIS_HOST", "envr"),
        ("COORDINATOOL_REDIS_PORT", "2222"),
        ("COORDINATOOL_CLIENT_GRACE", "0x10"),
        ("COORDINATOOL_VERBOSE", "INFO"),
        ("COORDINATOOL_STORE", "redis"),
        ("COORDINATOOL_STATE_DIR", "/env"),
    ];
    let c = run(&["-c", &p, "/mnt"], &env).unwrap().config;
    assert_eq!(
        (
            c.host.as_str(),
            c.port.as_str(),
            c.redis_host.as_str(),
            c.redis_port,
            c.client_grace_ms
        ),
        ("envhost", "2221", "envr", 2222, 16)
    );
    assert_eq!(c.verbosity, Verbosity::Info);
    assert_eq!(c.store, StoreKind::Redis);
    assert_eq!(c.state_dir(), PathBuf::from("/env"));
    // Command line over environment; the first -A discards the file's ids.
    let c = run(
        &[
            "-c",
            &p,
            "-H",
            "clihost",
            "-p",
            "3331",
            "--redis-host",
            "clir",
            "--redis-port",
            "3332",
            "--client-grace",
            "3333",
            "-A",
            "1",
            "--archive=2",
            "-q",
            "/mnt",
        ],
        &env,
    )
    .unwrap()
    .config;
    assert_eq!(
        (
            c.host.as_str(),
            c.port.as_str(),
            c.redis_host.as_str(),
            c.redis_port,
            c.client_grace_ms
        ),
        ("clihost", "3331", "clir", 3332, 3333)
    );
    assert_eq!(c.archive_ids, vec![1, 2]);
    assert_eq!(
        c.verbosity,
        Verbosity::Normal,
        "-q from the environment's info"
    );
    assert_eq!(c.mount_point, PathBuf::from("/mnt"));
    assert_eq!(c.config_file.as_deref(), Some(f.0.as_path()));
}

#[test]
fn empty_redis_host_disables_redis() {
    let c = run(
        &["/mnt"],
        &[
            ("COORDINATOOL_REDIS_HOST", ""),
            ("COORDINATOOL_STORE", "redis"),
        ],
    )
    .unwrap();
    assert_eq!(c.config.redis_host, "");
    assert_eq!(c.config.effective_store(), StoreKind::None);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.contains("no persistence"))
    );
    let c = run(&["--redis-host=", "/mnt"], &[]).unwrap().config;
    assert_eq!(
        c.effective_store(),
        StoreKind::Embedded,
        "the embedded store does not need redis"
    );
}

#[test]
fn redis_settings_without_a_store_key_mean_redis_as_upstream() {
    // Upstream keeps its queue in Redis: its config (and its unit's options) must not come
    // up on an empty embedded store.
    let c = cfg("redis_host 127.0.0.1\n");
    assert_eq!(
        (c.store, c.store_choice),
        (StoreKind::Redis, StoreChoice::ImpliedByRedis)
    );
    let c = cfg("redis_port 6380\n");
    assert_eq!(c.effective_store(), StoreKind::Redis);
    for (args, env) in [
        (&["--redis-host", "db1", "/mnt"][..], &[][..]),
        (&["--redis-port=6380", "/mnt"][..], &[][..]),
        (&["/mnt"][..], &[("COORDINATOOL_REDIS_HOST", "db1")][..]),
        (&["/mnt"][..], &[("COORDINATOOL_REDIS_PORT", "6380")][..]),
    ] {
        let c = run(args, env).unwrap().config;
        assert_eq!(c.effective_store(), StoreKind::Redis, "{args:?} {env:?}");
        assert_eq!(c.store_choice, StoreChoice::ImpliedByRedis);
    }
    // An explicit store wins, wherever it comes from.
    let c = cfg("redis_host 127.0.0.1\nstore embedded\n");
    assert_eq!(
        (c.store, c.store_choice),
        (StoreKind::Embedded, StoreChoice::Configured)
    );
    let c = run(
        &["--redis-host", "db1", "/mnt"],
        &[("COORDINATOOL_STORE", "none")],
    )
    .unwrap()
    .config;
    assert_eq!(c.effective_store(), StoreKind::None);
    // A rejected value (upstream logs it and keeps the default) says nothing.
    let c = run(&["/mnt"], &[("COORDINATOOL_REDIS_PORT", "99999")])
        .unwrap()
        .config;
    assert_eq!(c.store_choice, StoreChoice::Default);
    // Nothing about Redis: the embedded default.
    let c = cfg("host 0.0.0.0\n");
    assert_eq!(
        (c.store, c.store_choice),
        (StoreKind::Embedded, StoreChoice::Default)
    );
}

#[test]
fn soft_env_errors_keep_the_previous_value() {
    let f = TempConf::new("redis_port 7000\nclient_grace_ms 5\n");
    let l = run(
        &["-c", &f.path(), "/mnt"],
        &[
            ("COORDINATOOL_REDIS_PORT", "-3"),
            ("COORDINATOOL_CLIENT_GRACE", "12abc"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.redis_port, 7000);
    assert_eq!(l.config.client_grace_ms, 5);
    let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("COORDINATOOL_REDIS_PORT: invalid value \"-3\""),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("COORDINATOOL_CLIENT_GRACE: invalid value \"12abc\""),
        "{w:?}"
    );
    let l = run(&["/mnt"], &[("COORDINATOOL_REDIS_PORT", "65536")]).unwrap();
    assert_eq!(l.config.redis_port, 6379);
}

#[test]
fn hard_env_errors() {
    for (var, val) in [
        ("COORDINATOOL_VERBOSE", "chatty"),
        ("COORDINATOOL_STORE", "mysql"),
    ] {
        match run(&["/mnt"], &[(var, val)]).unwrap_err() {
            ConfigError::BadEnv { var: v, value, .. } => {
                assert_eq!((v.as_str(), value.as_str()), (var, val))
            }
            e => panic!("{e}"),
        }
    }
}

#[test]
fn config_file_location_rules() {
    // -c must exist.
    let e = run(&["-c", "/nonexistent/ct.conf", "/mnt"], &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/ct.conf: cannot read config file")
    );
    // So must $COORDINATOOL_CONF.
    let e = run(&["/mnt"], &[("COORDINATOOL_CONF", "/nonexistent/env.conf")]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    // -c wins over $COORDINATOOL_CONF, and the last -c wins.
    let a = TempConf::new("host from-a\n");
    let b = TempConf::new("host from-b\n");
    let c = run(
        &["-c", "/nonexistent", "-c", &a.path(), "/mnt"],
        &[("COORDINATOOL_CONF", &b.path())],
    )
    .unwrap()
    .config;
    assert_eq!(c.host, "from-a");
    let c = run(&["/mnt"], &[("COORDINATOOL_CONF", &b.path())])
        .unwrap()
        .config;
    assert_eq!(c.host, "from-b");
}

#[test]
fn missing_default_file_is_fine() {
    let mut cfg = ServerConfig::defaults("/mnt");
    let mut w = Vec::new();
    apply_file(&mut cfg, Path::new(DEFAULT_CONFIG_PATH), b"", &mut w).unwrap();
    assert!(w.is_empty());
    // load() with no -c and no COORDINATOOL_CONF reads /etc/coordinatool.conf only if it exists.
    if !Path::new(DEFAULT_CONFIG_PATH).exists() {
        let args = vec!["/mnt".to_string()];
        let inv = load("x", &args, &|_| None).unwrap();
        let Invocation::Run(l) = inv else { panic!() };
        assert_eq!(l.config.config_file, None);
    }
}

#[test]
fn command_line_errors() {
    let usage = |args: &[&str]| match run(args, &[]).unwrap_err() {
        ConfigError::Usage(m) => m,
        e => panic!("expected usage error, got {e}"),
    };
    assert_eq!(usage(&[]), "no mount point specified");
    assert!(usage(&["/a", "/b"]).contains("extra argument"));
    assert_eq!(usage(&["-Z", "/a"]), "invalid option -- 'Z'");
    let bad = |args: &[&str]| match run(args, &[]).unwrap_err() {
        ConfigError::BadOption {
            option,
            value,
            reason,
        } => (option, value, reason),
        e => panic!("expected option error, got {e}"),
    };
    assert_eq!(bad(&["-A", "0", "/m"]).0, "-A");
    assert_eq!(bad(&["--archive", "x", "/m"]).0, "--archive");
    let (o, v, r) = bad(&["--redis-port", "70000", "/m"]);
    assert_eq!((o.as_str(), v.as_str()), ("--redis-port", "70000"));
    assert!(r.contains("range"));
    assert_eq!(bad(&["--client-grace=-1", "/m"]).0, "--client-grace");
    let many: Vec<String> = (1..=1025)
        .flat_map(|i| ["-A".to_string(), i.to_string()])
        .collect();
    let mut args: Vec<&str> = many.iter().map(String::as_str).collect();
    args.push("/m");
    assert!(bad(&args).2.contains("1024"));
}

#[test]
fn help_and_version_do_not_need_a_mount_point() {
    let args = vec!["-h".to_string()];
    match load("lhsmd_coordinatool", &args, &|_| None).unwrap() {
        Invocation::Help(t) => {
            assert!(t.starts_with("Usage: lhsmd_coordinatool [options] <mountpoint>"));
            assert!(t.contains("6379") && t.contains("600000"));
        }
        other => panic!("{other:?}"),
    }
    let args = vec!["--version".to_string(), "-c".into(), "/nonexistent".into()];
    match load("x", &args, &|_| None).unwrap() {
        Invocation::Version(t) => assert!(t.starts_with("Coordinatool version ")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn escape_like_systemd() {
    assert_eq!(systemd_escape_path(Path::new("/mnt/lustre")), "mnt-lustre");
    assert_eq!(
        systemd_escape_path(Path::new("/mnt//lustre/")),
        "mnt-lustre"
    );
    assert_eq!(systemd_escape_path(Path::new("/")), "-");
    assert_eq!(systemd_escape_path(Path::new("/mnt/a-b")), "mnt-a\\x2db");
    assert_eq!(systemd_escape_path(Path::new("/.hidden")), "\\x2ehidden");
}

/// xorshift64*: deterministic pseudo-random input for the no-panic checks below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[test]
fn random_config_files_never_panic() {
    let keys = [
        "host",
        "port",
        "verbose",
        "archive_id",
        "redis_host",
        "redis_port",
        "client_grace_ms",
        "archive_on_hosts",
        "archive_on_hosts_ch",
        "batch_archives_slices_sec",
        "batch_archives_slice_sec",
        "batch_archives_slots_per_client",
        "reporting_dir",
        "reporting_hint",
        "reporting_schedule_interval_ms",
        "store",
        "state_dir",
        "archive_on_hosts_ch_hash",
        "priority_restore",
        "priority_tag",
        "priority_aging_ms",
        "fair_share_key",
        "fair_share_weight",
        "fair_share_default_weight",
        "#",
        "bogus",
    ];
    let values = [
        "",
        "0",
        "-1",
        "1",
        "0x",
        "0x10",
        "010",
        "08",
        "99999999999999999999",
        "debug",
        "a b c",
        "t= 3 h1",
        "t= x",
        "300 3600",
        "300 x",
        " ",
        "\t",
        "é",
        "redis",
        "user=",
        "alice 0",
        "-",
        "+",
        "=",
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..(rng.next() % 6) {
            let sep = rng.pick(&[" ", "\t", "  "]);
            text.push_str(&format!("{}{sep}{}\n", rng.pick(&keys), rng.pick(&values)));
        }
        let mut cfg = ServerConfig::defaults("/mnt");
        let mut w = Vec::new();
        let _ = apply_file(&mut cfg, Path::new("/f"), text.as_bytes(), &mut w);
    }
    // Raw bytes too.
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
        let mut cfg = ServerConfig::defaults("/mnt");
        let _ = apply_file(&mut cfg, Path::new("/f"), &bytes, &mut Vec::new());
        let text = String::from_utf8_lossy(&bytes);
        let _ = sysconfig::parse(Path::new("/s"), &text);
    }
}

#[test]
fn random_command_lines_never_panic() {
    let words = [
        "-v",
        "-q",
        "-vq",
        "-A",
        "-A1",
        "-A0",
        "--archive",
        "--archive=",
        "--arch",
        "-p",
        "-H",
        "--redis-host",
        "--redis-port",
        "--redis-port=70000",
        "--client-grace",
        "--client-grace=-1",
        "--",
        "-",
        "/mnt",
        "/x",
        "-x",
        "--nope",
        "--redis",
        "",
        "é",
        "-c",
        "--config=/nonexistent",
    ];
    let mut rng = Rng(0xfeed_beef_dead_cafe);
    for _ in 0..3000 {
        let args: Vec<String> = (0..(rng.next() % 6))
            .map(|_| rng.pick(&words).to_string())
            .collect();
        let _ = load("x", &args, &|_| None);
    }
}

#[test]
fn client_keys_are_skipped_and_every_server_key_of_the_shared_list_is_read() {
    // The clients skip exactly coordinatool_config::SERVER_KEYS; each must be a key here.
    let sample = |k: &str| match k {
        "redis_host" | "reporting_hint" | "priority_tag" => "x=",
        "archive_on_hosts" => "tag= host1",
        "archive_on_hosts_ch" => "tag= 1 host1",
        "archive_on_hosts_ch_hash" => "rendezvous",
        "batch_archives_slices_sec" | "batch_archives_slice_sec" => "10 20",
        "reporting_dir" => "reports",
        "store" => "none",
        "state_dir" => "/tmp/state",
        "fair_share_key" => "uid",
        "fair_share_weight" => "1000 2",
        _ => "1",
    };
    let mut text = String::new();
    for k in coordinatool_config::SERVER_KEYS {
        text.push_str(&format!("{k} {}\n", sample(k)));
    }
    for k in coordinatool_config::CLIENT_KEYS {
        text.push_str(&format!("{k} 1000\n"));
    }
    let l = with_file(&text).unwrap();
    let msgs: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert!(msgs.is_empty(), "{msgs:?}");
}
