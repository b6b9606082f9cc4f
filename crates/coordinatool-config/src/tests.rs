use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
) -> Result<(ClientConfig, Vec<String>), ConfigError> {
    let env = env_of(env);
    ClientConfig::with_client_id("node1")
        .with_sources(file.map(|t| (Path::new("/etc/c.conf"), t)), &env)
        .map(|(c, w)| (c, w.iter().map(ToString::to_string).collect()))
}

#[test]
fn defaults_without_file_or_env() {
    let (c, w) = load(None, &[]).unwrap();
    assert_eq!(c, ClientConfig::with_client_id("node1"));
    assert_eq!((c.host.as_str(), c.port), ("coordinatool", 5123));
    assert_eq!(c.hal_size, 1 << 20);
    assert_eq!(c.verbose.level(), 4);
    assert!(!c.verbose_set);
    assert_eq!(ClientConfig::limit(c.max_archive), None);
    assert_eq!(ClientConfig::limit(3), Some(3));
    assert!(w.is_empty());
    assert_eq!(
        config_path(None, &env_of(&[])),
        (PathBuf::from(DEFAULT_CONFIG_PATH), false)
    );
}

#[test]
fn sizes_suffixes_bases_and_unlimited() {
    assert_eq!(parse_size_u32("1024"), Ok((1024, None)));
    assert_eq!(parse_size_u32("4k"), Ok((4096, None)));
    assert_eq!(parse_size_u32("4K"), Ok((4096, None)));
    assert_eq!(parse_size_u32("1m"), Ok((1 << 20, None)));
    assert_eq!(parse_size_u32("3G"), Ok((3 << 30, None)));
    assert_eq!(parse_size_u32("0x10"), Ok((16, None)));
    assert_eq!(parse_size_u32("010"), Ok((8, None)));
    assert_eq!(parse_size_u32("0"), Ok((0, None)));
    assert_eq!(parse_size_u32("-1"), Ok((u32::MAX, None)));
    assert_eq!(parse_size_u32(" +7"), Ok((7, None)));
    let (v, w) = parse_size_u32("4kiB").unwrap();
    assert_eq!(v, 4096);
    assert!(w.unwrap().contains("iB"));
}

#[test]
fn bad_sizes_are_errors() {
    assert!(parse_size_u32("4G").unwrap_err().contains("above"));
    assert!(parse_size_u32("4294967296").unwrap_err().contains("above"));
    assert!(parse_size_u32("-2").unwrap_err().contains("negative"));
    assert!(parse_size_u32("-1k").unwrap_err().contains("negative"));
    assert!(parse_size_u32("12x").unwrap_err().contains("\"x\""));
    assert!(parse_size_u32("abc").unwrap_err().contains("not a number"));
    assert!(parse_size_u32("").is_err());
    assert!(parse_size_u32("k").is_err());
    assert!(parse_size_u32("99999999999999999999999").is_err());
    assert!(
        parse_size_u32("08").unwrap_err().contains("\"8\""),
        "8 is not an octal digit"
    );
}

#[test]
fn line_syntax() {
    let got: Vec<(usize, String, &str)> = lines("# c\n\n  HOST   a b  \nkeyonly\n\tport\t1\n")
        .map(|l| (l.number, l.key, l.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "host".to_owned(), "a b"),
            (4, "keyonly".to_owned(), ""),
            (5, "port".to_owned(), "1"),
        ]
    );
}

#[test]
fn file_syntax_keys_warnings_and_precedence() {
    let file = "\
# comment line
   host   server.example  \n\
PORT 6000\n\
\n\
max_archive 3\n\
max_restore -1\n\
hal_size 64k\n\
client_grace_ms 1000\n\
archive_on_hosts tag=a mover0\n\
novalue\n\
mystery 1\n\
archive_id 2\n\
archive_id 0x3\n\
archive_id 2\n\
verbose DEBUG\n\
store redis\n\
fair_share_key uid\n\
max_remove 2kB\n";
    let (c, w) = load(Some(file), &[("COORDINATOOL_MAX_ARCHIVE", "5")]).unwrap();
    assert_eq!(c.host, "server.example");
    assert_eq!(c.port, 6000);
    assert_eq!(c.max_archive, 5, "env wins over the file");
    assert_eq!(c.max_restore, u32::MAX);
    assert_eq!(c.max_remove, 2048);
    assert_eq!(c.hal_size, 65536);
    assert_eq!(c.archive_ids, vec![2, 3]);
    assert_eq!(c.verbose, Verbosity::Debug);
    assert!(c.verbose_set);
    assert_eq!(
        w,
        vec![
            "/etc/c.conf:10: key novalue has no value, line ignored",
            "/etc/c.conf:11: unknown key mystery, ignored",
            "/etc/c.conf:18: max_remove: ignored \"B\" after the suffix",
        ]
    );
}

#[test]
fn env_overrides_everything_and_empty_env_is_unset() {
    let (c, _) = load(
        Some("host a\nport 1\nclient_id x\n"),
        &[
            ("COORDINATOOL_HOST", "b"),
            ("COORDINATOOL_PORT", ""),
            ("COORDINATOOL_CLIENT_ID", "y"),
            ("COORDINATOOL_MAX_REMOVE", "1K"),
            ("COORDINATOOL_HAL_SIZE", "0x1000"),
            ("COORDINATOOL_VERBOSE", "warning"),
            ("COORDINATOOL_RECONNECT_MIN_MS", "10"),
            ("COORDINATOOL_RECONNECT_MAX_MS", "20"),
        ],
    )
    .unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.client_id.as_str()),
        ("b", 1, "y")
    );
    assert_eq!(c.max_remove, 1024);
    assert_eq!(c.hal_size, 4096);
    assert_eq!(c.verbose, Verbosity::Warn);
    assert_eq!((c.reconnect_min_ms, c.reconnect_max_ms), (10, 20));
}

#[test]
fn errors_name_the_place_key_and_value() {
    let e = load(Some("host h\nmax_archive 12q\n"), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/c.conf:2: bad value \"12q\" for max_archive: unexpected \"q\" after the number (suffixes: k, m, g)"
    );
    assert_eq!(e.errno(), -libc::EINVAL);
    let e = load(None, &[("COORDINATOOL_VERBOSE", "loud")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environment variable COORDINATOOL_VERBOSE: "),
        "{e}"
    );
    let e = load(None, &[("COORDINATOOL_PORT", "70000")]).unwrap_err();
    assert!(e.to_string().contains("for port"), "{e}");
    let e = load(Some("port 0\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("for port"), "{e}");
    let e = load(None, &[("COORDINATOOL_HAL_SIZE", "100")]).unwrap_err();
    assert!(e.to_string().contains("172"), "{e}");
    let e = load(Some("archive_id 0\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("archive id"), "{e}");
    let e = load(
        None,
        &[
            ("COORDINATOOL_RECONNECT_MIN_MS", "5000"),
            ("COORDINATOOL_RECONNECT_MAX_MS", "10"),
        ],
    )
    .unwrap_err();
    assert!(e.to_string().contains("reconnect_max_ms"), "{e}");
    let e = load(Some("reconnect_min_ms 0\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("positive"), "{e}");
}

#[test]
fn too_many_archive_ids() {
    let text: String = (1..=MAX_ARCHIVE_IDS + 1)
        .map(|i| format!("archive_id {i}\n"))
        .collect();
    let e = load(Some(&text), &[]).unwrap_err();
    assert!(e.to_string().contains(":1025:"), "{e}");
    let ok: String = (1..=MAX_ARCHIVE_IDS)
        .map(|i| format!("archive_id {i}\n"))
        .collect();
    assert_eq!(
        load(Some(&ok), &[]).unwrap().0.archive_ids.len(),
        MAX_ARCHIVE_IDS
    );
}

#[test]
fn max_bytes_clamps_unlimited_hal_size() {
    let mut c = ClientConfig::with_client_id("x");
    c.hal_size = u32::MAX;
    assert_eq!(c.max_bytes(), i32::MAX);
    c.hal_size = 4096;
    assert_eq!(c.max_bytes(), 4096);
}

#[test]
fn load_reads_the_named_file_and_requires_it() {
    let dir = std::env::temp_dir().join(format!("ct-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.conf");
    std::fs::write(
        &path,
        b"host fromfile\nport 7000\n# \xff not UTF-8\nmax_restore 3\n",
    )
    .unwrap();
    let env = env_of(&[
        ("COORDINATOOL_HOST", "fromenv"),
        ("COORDINATOOL_MAX_ARCHIVE", "1M"),
    ]);
    let (c, w) = ClientConfig::load(Some(&path), &env).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!((c.host.as_str(), c.port), ("fromenv", 7000));
    assert_eq!((c.max_restore, c.max_archive), (3, 1 << 20));

    let env2 = env_of(&[(ENV_CONF, path.to_str().unwrap())]);
    assert_eq!(ClientConfig::load(None, &env2).unwrap().0.host, "fromfile");

    let missing = dir.join("missing.conf");
    let e = ClientConfig::load(Some(&missing), &env_of(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert_eq!(e.errno(), -libc::ENOENT);
    assert!(e.to_string().contains("missing.conf"));
    let env3 = env_of(&[(ENV_CONF, missing.to_str().unwrap())]);
    assert!(ClientConfig::load(None, &env3).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn key_lists_are_disjoint_and_every_client_key_is_read() {
    for k in CLIENT_KEYS.iter().chain(SHARED_KEYS) {
        assert!(!SERVER_KEYS.contains(k), "{k} is in two lists");
        let mut c = ClientConfig::with_client_id("x");
        let value = match *k {
            "host" | "client_id" => "h",
            "verbose" => "info",
            _ => "1000",
        };
        let got = c.apply_key(k, value, &Origin::Env("T")).unwrap();
        assert_eq!(got, Applied::Set, "{k}");
    }
    for k in SERVER_KEYS {
        assert!(!CLIENT_KEYS.contains(k));
        let mut c = ClientConfig::with_client_id("x");
        assert_eq!(
            c.apply_key(k, "1", &Origin::Env("T")).unwrap(),
            Applied::NotMine,
            "{k}"
        );
    }
}

#[test]
fn verbosity_names_and_levels() {
    for n in 0..=6 {
        let v = Verbosity::from_level(n);
        assert_eq!(v.level(), n);
        assert_eq!(Verbosity::from_name(v.name()), Some(v));
    }
    assert_eq!(Verbosity::from_level(-3), Verbosity::Off);
    assert_eq!(Verbosity::from_level(99), Verbosity::Debug);
    assert_eq!(Verbosity::from_name("loud"), None);
    assert_eq!("DEBUG".parse::<Verbosity>(), Ok(Verbosity::Debug));
    assert!(
        "loud"
            .parse::<Verbosity>()
            .unwrap_err()
            .contains("expected off")
    );
    assert_eq!(Verbosity::Warn.to_string(), "warn");
    assert_eq!(Verbosity::Info.raised(), Verbosity::Debug);
    assert_eq!(Verbosity::Debug.raised(), Verbosity::Debug);
    assert_eq!(Verbosity::Fatal.lowered(), Verbosity::Off);
    assert_eq!(Verbosity::Off.lowered(), Verbosity::Off);
}

#[test]
fn short_hostname_has_no_dot() {
    let h = short_hostname();
    assert!(!h.is_empty());
    assert!(!h.contains('.'));
}
