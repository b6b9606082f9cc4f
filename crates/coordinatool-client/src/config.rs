//! Client configuration (shared by the CLI and the movers' library): file, environment,
//! defaults.
//!
//! The file is the server's (`/etc/coordinatool.conf`): one `key value` per line, `#` starts
//! a comment line, keys are case-insensitive, the server's keys are silently ignored and
//! unknown keys are warned about. Precedence: environment > file > default; command-line
//! options are applied on top by the caller.

use std::fmt;
use std::path::{Path, PathBuf};

/// Default server host name.
pub const DEFAULT_HOST: &str = "coordinatool";
/// Default server port.
pub const DEFAULT_PORT: u16 = 5123;
/// Default `hal_size` (size of a mover's action list buffer, `max_bytes` of `recv`).
pub const DEFAULT_HAL_SIZE: u32 = 1_048_576;
/// Config file read when neither `-c` nor `COORDINATOOL_CONF` names one (optional).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coordinatool.conf";
/// Environment variable naming the config file.
pub const ENV_CONF: &str = "COORDINATOOL_CONF";

/// Keys of the server's configuration that share the file and that clients ignore silently.
const SERVER_KEYS: &[&str] = &[
    "redis_host",
    "redis_port",
    "client_grace_ms",
    "archive_on_hosts",
    "archive_on_hosts_ch",
    "batch_archives_slices_sec",
    "batch_archives_slice_sec",
    "batch_archives_slots_per_client",
    "reporting_hint",
    "reporting_dir",
    "reporting_schedule_interval_ms",
];

/// Log level, as upstream's llapi message levels (the status request's `verbose` is this
/// number, and 6 asks the server for a full dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Verbosity {
    /// `off` (0).
    Off = 0,
    /// `fatal` (1).
    Fatal = 1,
    /// `error` (2).
    Error = 2,
    /// `warn` (3).
    Warn = 3,
    /// `normal` (4), the default.
    #[default]
    Normal = 4,
    /// `info` (5).
    Info = 5,
    /// `debug` (6): a status request at this level dumps every queue.
    Debug = 6,
}

impl Verbosity {
    /// The numeric level.
    pub const fn level(self) -> i32 {
        self as i32
    }

    /// The level `n`, clamped to `off..=debug`.
    pub const fn from_level(n: i32) -> Self {
        match n {
            i32::MIN..=0 => Verbosity::Off,
            1 => Verbosity::Fatal,
            2 => Verbosity::Error,
            3 => Verbosity::Warn,
            4 => Verbosity::Normal,
            5 => Verbosity::Info,
            _ => Verbosity::Debug,
        }
    }

    /// Parses a level name (case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" => Verbosity::Off,
            "fatal" => Verbosity::Fatal,
            "error" => Verbosity::Error,
            "warn" => Verbosity::Warn,
            "normal" => Verbosity::Normal,
            "info" => Verbosity::Info,
            "debug" => Verbosity::Debug,
            _ => return None,
        })
    }
}

/// The client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `host`: server host name or address.
    pub host: String,
    /// `port`: server port.
    pub port: u16,
    /// `client_id`: id sent in `ehlo` (the CLI only sends it with `-I`).
    pub client_id: String,
    /// `max_restore`: concurrent restores per mover (`u32::MAX`: unlimited).
    pub max_restore: u32,
    /// `max_archive`: concurrent archives per mover (`u32::MAX`: unlimited).
    pub max_archive: u32,
    /// `max_remove`: concurrent removes per mover (`u32::MAX`: unlimited).
    pub max_remove: u32,
    /// `hal_size`: action list buffer size, sent as `max_bytes` in `recv`.
    pub hal_size: u32,
    /// `verbose`: log level.
    pub verbose: Verbosity,
    /// `archive_id` lines: archive ids to announce in `ehlo` when none are given otherwise
    /// (the README's knob, which the C client ignored).
    pub archive_ids: Vec<u32>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            client_id: short_hostname(),
            max_restore: u32::MAX,
            max_archive: u32::MAX,
            max_remove: u32::MAX,
            hal_size: DEFAULT_HAL_SIZE,
            verbose: Verbosity::Normal,
            archive_ids: Vec::new(),
        }
    }
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a config file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// An environment variable.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key has a bad value.
    #[error("{origin}: bad value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// Where the value was read.
        origin: Origin,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Something worth telling the user that does not stop the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where.
    pub origin: Origin,
    /// What.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Which config file to read: `explicit` (`-c`, must exist), else `$COORDINATOOL_CONF`
/// (must exist), else [`DEFAULT_CONFIG_PATH`] (optional). Returns the path and whether it
/// must exist.
pub fn config_path(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (PathBuf, bool) {
    if let Some(p) = explicit {
        return (p.to_owned(), true);
    }
    match env(ENV_CONF) {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    }
}

impl ClientConfig {
    /// Loads the configuration: defaults, then the file chosen by [`config_path`], then the
    /// environment read through `env` (pass `|k| std::env::var(k).ok()` in real use).
    pub fn load(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let (path, must_exist) = config_path(explicit, env);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let mut cfg = ClientConfig::default();
        let mut warnings = Vec::new();
        if let Some(text) = text {
            warnings = cfg.apply_file(&path, &text)?;
        }
        cfg.apply_env(env)?;
        Ok((cfg, warnings))
    }

    /// Applies the text of a config file (named `path` in messages).
    pub fn apply_file(
        &mut self,
        path: &Path,
        text: &str,
    ) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin::File {
                path: path.to_owned(),
                line: i + 1,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim_start()),
                None => (line, ""),
            };
            let key = key.to_ascii_lowercase();
            if value.is_empty() {
                warnings.push(ConfigWarning {
                    origin,
                    message: format!("key {key} has no value, line ignored"),
                });
                continue;
            }
            if !self.apply_key(&key, value, &origin)? {
                warnings.push(ConfigWarning {
                    origin,
                    message: format!("unknown key {key}, ignored"),
                });
            }
        }
        Ok(warnings)
    }

    /// Applies the `COORDINATOOL_*` environment variables (an empty variable counts as unset).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        const VARS: &[(&str, &str)] = &[
            ("COORDINATOOL_HOST", "host"),
            ("COORDINATOOL_PORT", "port"),
            ("COORDINATOOL_CLIENT_ID", "client_id"),
            ("COORDINATOOL_MAX_RESTORE", "max_restore"),
            ("COORDINATOOL_MAX_ARCHIVE", "max_archive"),
            ("COORDINATOOL_MAX_REMOVE", "max_remove"),
            ("COORDINATOOL_HAL_SIZE", "hal_size"),
            ("COORDINATOOL_VERBOSE", "verbose"),
        ];
        for &(var, key) in VARS {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                self.apply_key(key, v.trim(), &Origin::Env(var))?;
            }
        }
        Ok(())
    }

    /// Applies one `key value`; `Ok(false)` for an unknown key. Server keys are accepted
    /// and ignored.
    pub fn apply_key(
        &mut self,
        key: &str,
        value: &str,
        origin: &Origin,
    ) -> Result<bool, ConfigError> {
        let bad = |reason: String| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match key {
            "host" => self.host = value.to_owned(),
            "port" => self.port = parse_port(value).map_err(bad)?,
            "client_id" => self.client_id = value.to_owned(),
            "max_restore" => self.max_restore = parse_size_u32(value).map_err(bad)?,
            "max_archive" => self.max_archive = parse_size_u32(value).map_err(bad)?,
            "max_remove" => self.max_remove = parse_size_u32(value).map_err(bad)?,
            "hal_size" => self.hal_size = parse_size_u32(value).map_err(bad)?,
            "verbose" => {
                self.verbose = Verbosity::from_name(value).ok_or_else(|| {
                    bad("expected off, fatal, error, warn, normal, info or debug".to_owned())
                })?
            }
            "archive_id" => {
                let id = parse_archive_id(value).map_err(bad)?;
                if !self.archive_ids.contains(&id) {
                    self.archive_ids.push(id);
                }
            }
            k if SERVER_KEYS.contains(&k) => {}
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses a port number (1..=65535).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a port number between 1 and 65535".to_owned()),
        Ok(p) => Ok(p),
    }
}

/// Parses an archive id (1..=2147483647, as Lustre and the server accept).
pub fn parse_archive_id(s: &str) -> Result<u32, String> {
    match parse_c_integer(s) {
        Some((v, "")) if (1..=i64::from(i32::MAX)).contains(&v) => Ok(v as u32),
        _ => Err("expected an archive id between 1 and 2147483647".to_owned()),
    }
}

/// Parses a u32 with an optional `k`/`m`/`g` suffix (×1024, ×1024², ×1024³, either case),
/// the number in C base-0 notation (`0x10` hex, `010` octal). `-1` is `u32::MAX`
/// (unlimited). Characters after the suffix are tolerated (upstream warned about them); a
/// negative value or one above `u32::MAX` is an error.
pub fn parse_size_u32(s: &str) -> Result<u32, String> {
    let (v, rest) = parse_c_integer(s).ok_or_else(|| "not a number".to_owned())?;
    if v == -1 && rest.is_empty() {
        return Ok(u32::MAX);
    }
    let mult: i64 = match rest.as_bytes().first() {
        None => 1,
        Some(b'k' | b'K') => 1 << 10,
        Some(b'm' | b'M') => 1 << 20,
        Some(b'g' | b'G') => 1 << 30,
        Some(_) => {
            return Err(format!(
                "unexpected {rest:?} after the number (suffixes: k, m, g)"
            ));
        }
    };
    if v < 0 {
        return Err("negative values other than -1 (unlimited) are not allowed".to_owned());
    }
    v.checked_mul(mult)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| "value above 4294967295".to_owned())
}

/// `strtoll(s, &end, 0)`: optional sign, then `0x` hex, leading `0` octal or decimal;
/// returns the value and the unparsed rest, `None` when there are no digits or it overflows.
fn parse_c_integer(s: &str) -> Option<(i64, &str)> {
    let s = s.trim_start();
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if (s.starts_with("0x") || s.starts_with("0X"))
        && s.as_bytes().get(2).is_some_and(u8::is_ascii_hexdigit)
    {
        (16, &s[2..])
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let end = digits
        .bytes()
        .position(|b| !(b as char).is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let v = i64::from_str_radix(&digits[..end], radix).ok()?;
    Some((if neg { -v } else { v }, &digits[end..]))
}

/// The host name up to its first dot (upstream's default client id).
pub fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `len` bytes; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    name.split('.').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn suffixes_and_bases() {
        assert_eq!(parse_size_u32("1024"), Ok(1024));
        assert_eq!(parse_size_u32("4k"), Ok(4096));
        assert_eq!(parse_size_u32("4K"), Ok(4096));
        assert_eq!(parse_size_u32("1m"), Ok(1 << 20));
        assert_eq!(parse_size_u32("3G"), Ok(3 << 30));
        assert_eq!(parse_size_u32("0x10"), Ok(16));
        assert_eq!(parse_size_u32("010"), Ok(8));
        assert_eq!(parse_size_u32("0"), Ok(0));
        assert_eq!(parse_size_u32("-1"), Ok(u32::MAX));
        assert_eq!(
            parse_size_u32("1kB"),
            Ok(1024),
            "text after the suffix is tolerated"
        );
        assert!(parse_size_u32("4G").unwrap_err().contains("above"));
        assert!(parse_size_u32("4294967296").unwrap_err().contains("above"));
        assert!(parse_size_u32("-2").unwrap_err().contains("negative"));
        assert!(parse_size_u32("-1k").unwrap_err().contains("negative"));
        assert!(parse_size_u32("12x").unwrap_err().contains("\"x\""));
        assert!(parse_size_u32("08").is_err(), "8 is not an octal digit");
        assert!(parse_size_u32("").is_err());
        assert!(parse_size_u32("k").is_err());
    }

    #[test]
    fn file_syntax_keys_and_warnings() {
        let text = "# comment\n\n  HOST   server1  \nport 6000\nmax_archive 2k\nhal_size 0x1000\n\
                    verbose DEBUG\narchive_id 3\narchive_id 5\nredis_host r\nclient_id\nbogus 1\n";
        let mut c = ClientConfig::default();
        let w = c.apply_file(Path::new("/x.conf"), text).unwrap();
        assert_eq!(c.host, "server1");
        assert_eq!(c.port, 6000);
        assert_eq!(c.max_archive, 2048);
        assert_eq!(c.max_restore, u32::MAX);
        assert_eq!(c.hal_size, 4096);
        assert_eq!(c.verbose, Verbosity::Debug);
        assert_eq!(c.archive_ids, vec![3, 5]);
        let msgs: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            vec![
                "/x.conf:11: key client_id has no value, line ignored",
                "/x.conf:12: unknown key bogus, ignored"
            ]
        );
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let mut c = ClientConfig::default();
        let e = c
            .apply_file(Path::new("/x.conf"), "host a\nmax_remove 5q\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x.conf:2: bad value \"5q\" for max_remove: unexpected \"q\" after the number (suffixes: k, m, g)"
        );
        let e = c
            .apply_file(Path::new("/x.conf"), "port 70000\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/x.conf:1: bad value \"70000\" for port")
        );
        let e = c
            .apply_file(Path::new("/x.conf"), "verbose loud\n")
            .unwrap_err();
        assert!(e.to_string().contains("for verbose"));
        let e = c
            .apply_file(Path::new("/x.conf"), "archive_id 0\n")
            .unwrap_err();
        assert!(e.to_string().contains("archive id"));
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("ct-client-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.conf");
        std::fs::write(&path, "host fromfile\nport 7000\nmax_restore 3\n").unwrap();
        let env = env_of(&[
            ("COORDINATOOL_HOST", "fromenv"),
            ("COORDINATOOL_MAX_ARCHIVE", "1M"),
            ("COORDINATOOL_PORT", ""),
        ]);
        let (c, w) = ClientConfig::load(Some(&path), &env).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.host, "fromenv");
        assert_eq!(c.port, 7000, "an empty variable does not override");
        assert_eq!(c.max_restore, 3);
        assert_eq!(c.max_archive, 1 << 20);
        assert_eq!(c.hal_size, DEFAULT_HAL_SIZE);

        // COORDINATOOL_CONF names the file when -c is absent.
        let env2 = env_of(&[(ENV_CONF, path.to_str().unwrap())]);
        let (c2, _) = ClientConfig::load(None, &env2).unwrap();
        assert_eq!(c2.host, "fromfile");

        // A named file must exist; the env error names the variable.
        let missing = dir.join("missing.conf");
        assert!(matches!(
            ClientConfig::load(Some(&missing), &env_of(&[])),
            Err(ConfigError::Io { .. })
        ));
        let env3 = env_of(&[(ENV_CONF, missing.to_str().unwrap())]);
        assert!(ClientConfig::load(None, &env3).is_err());
        let env4 = env_of(&[("COORDINATOOL_HAL_SIZE", "big")]);
        let e = ClientConfig::load(Some(&path), &env4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable COORDINATOOL_HAL_SIZE: bad value \"big\" for hal_size: not a number"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults() {
        let c = ClientConfig::default();
        assert_eq!((c.host.as_str(), c.port), ("coordinatool", 5123));
        assert_eq!(c.verbose.level(), 4);
        assert!(!c.client_id.contains('.'));
        assert_eq!(
            config_path(None, &env_of(&[])),
            (PathBuf::from(DEFAULT_CONFIG_PATH), false)
        );
    }
}
