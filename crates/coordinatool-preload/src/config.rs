//! Client configuration: `/etc/coordinatool.conf` (or `$COORDINATOOL_CONF`) and the
//! `COORDINATOOL_*` environment, as the upstream client reads them.
//!
//! Precedence is environment > file > default. The file is shared with the server, whose keys
//! are silently skipped; unknown keys and keys without a value are warned about. A bad value for
//! one of the client keys is an error (registration fails).

use std::path::{Path, PathBuf};

use coordinatool_lustre::LlapiLogLevel;

/// Default server host name.
pub const DEFAULT_HOST: &str = "coordinatool";
/// Default server port.
pub const DEFAULT_PORT: &str = "5123";
/// Default HAL buffer size and `max_bytes` of `recv` (1 MiB).
pub const DEFAULT_HAL_SIZE: u32 = 1 << 20;
/// Smallest `max_bytes` the server accepts (`HAI_SIZE_MARGIN`: 72 + 100).
pub const MIN_HAL_SIZE: u32 = 172;
/// Default first reconnection delay.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 100;
/// Default cap of the reconnection delay.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
/// The config file read when `COORDINATOOL_CONF` is not set (it may be absent).
pub const DEFAULT_CONF: &str = "/etc/coordinatool.conf";
/// Most archive ids one copytool may register (`LL_HSM_MAX_ARCHIVES_PER_AGENT`).
pub const MAX_ARCHIVE_IDS: usize = 1024;

/// Keys of the shared file that belong to the server: skipped without a warning.
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

/// The client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `host` / `COORDINATOOL_HOST`: server to connect to.
    pub host: String,
    /// `port` / `COORDINATOOL_PORT`: server port.
    pub port: u16,
    /// `client_id` / `COORDINATOOL_CLIENT_ID`: id sent in `ehlo` (default: short host name).
    pub client_id: String,
    /// `max_restore` / `COORDINATOOL_MAX_RESTORE`: running restores at most; `u32::MAX` is unlimited.
    pub max_restore: u32,
    /// `max_archive` / `COORDINATOOL_MAX_ARCHIVE`.
    pub max_archive: u32,
    /// `max_remove` / `COORDINATOOL_MAX_REMOVE`.
    pub max_remove: u32,
    /// `hal_size` / `COORDINATOOL_HAL_SIZE`: `max_bytes` of each `recv`.
    pub hal_size: u32,
    /// `verbose` / `COORDINATOOL_VERBOSE`: log level.
    pub verbose: LlapiLogLevel,
    /// True when `verbose` was given (file or environment), not defaulted.
    pub verbose_set: bool,
    /// `archive_id` (repeatable): archive ids sent in `ehlo` when the copytool registers for
    /// every archive (upstream README's knob, ignored by the C client).
    pub archive_ids: Vec<u32>,
    /// `reconnect_min_ms` / `COORDINATOOL_RECONNECT_MIN_MS`: first reconnection delay
    /// (extension; upstream waits a fixed 5 s).
    pub reconnect_min_ms: u64,
    /// `reconnect_max_ms` / `COORDINATOOL_RECONNECT_MAX_MS`: cap of the exponential
    /// reconnection delay (extension).
    pub reconnect_max_ms: u64,
}

impl Config {
    /// The defaults, with `client_id` set to `client_id`.
    pub fn defaults(client_id: String) -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: 5123,
            client_id,
            max_restore: u32::MAX,
            max_archive: u32::MAX,
            max_remove: u32::MAX,
            hal_size: DEFAULT_HAL_SIZE,
            verbose: LlapiLogLevel::Normal,
            verbose_set: false,
            archive_ids: Vec::new(),
            reconnect_min_ms: DEFAULT_RECONNECT_MIN_MS,
            reconnect_max_ms: DEFAULT_RECONNECT_MAX_MS,
        }
    }

    /// A `recv` limit as sent on the wire: `None` (unlimited) for `u32::MAX`.
    pub fn limit(v: u32) -> Option<u32> {
        (v != u32::MAX).then_some(v)
    }

    /// `max_bytes` of a `recv` request (`hal_size` clamped to `i32::MAX`).
    pub fn max_bytes(&self) -> i32 {
        i32::try_from(self.hal_size).unwrap_or(i32::MAX)
    }

    /// Loads the configuration of this process: `$COORDINATOOL_CONF` (must exist) or
    /// [`DEFAULT_CONF`] (optional), then the environment.
    pub fn load() -> Result<Loaded, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        let (path, required) = match env("COORDINATOOL_CONF") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_CONF), false),
        };
        let text = match std::fs::read(&path) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_sources(
            text.as_deref().map(|t| (path.as_path(), t)),
            env,
            short_hostname(),
        )
    }

    /// Builds the configuration from a file's text (`(path, text)`, the path only names it in
    /// messages), an environment lookup and the default client id.
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<String>,
        default_client_id: String,
    ) -> Result<Loaded, ConfigError> {
        let mut cfg = Config::defaults(default_client_id);
        let mut warnings = Vec::new();
        // The environment's level also applies while the file is read (as upstream).
        if let Some(v) = env("COORDINATOOL_VERBOSE") {
            cfg.apply("verbose", &v, "COORDINATOOL_VERBOSE", &mut warnings)?;
        }
        if let Some((path, text)) = file {
            for (idx, raw) in text.lines().enumerate() {
                let line = raw.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (key, value) = match line.find(char::is_whitespace) {
                    Some(at) => (&line[..at], line[at..].trim_start()),
                    None => (line, ""),
                };
                let key = key.to_ascii_lowercase();
                let place = format!("{}:{}", path.display(), idx + 1);
                if value.is_empty() {
                    warnings.push(format!("{place}: key '{key}' has no value, skipped"));
                    continue;
                }
                if SERVER_KEYS.contains(&key.as_str()) {
                    continue;
                }
                if key == "archive_id" {
                    cfg.add_archive_id(value, &place)?;
                    continue;
                }
                if !cfg.apply(&key, value, &place, &mut warnings)? {
                    warnings.push(format!("{place}: unknown key '{key}', skipped"));
                }
            }
        }
        for (var, key) in [
            ("COORDINATOOL_HOST", "host"),
            ("COORDINATOOL_PORT", "port"),
            ("COORDINATOOL_CLIENT_ID", "client_id"),
            ("COORDINATOOL_MAX_RESTORE", "max_restore"),
            ("COORDINATOOL_MAX_ARCHIVE", "max_archive"),
            ("COORDINATOOL_MAX_REMOVE", "max_remove"),
            ("COORDINATOOL_HAL_SIZE", "hal_size"),
            ("COORDINATOOL_VERBOSE", "verbose"),
            ("COORDINATOOL_RECONNECT_MIN_MS", "reconnect_min_ms"),
            ("COORDINATOOL_RECONNECT_MAX_MS", "reconnect_max_ms"),
        ] {
            if let Some(v) = env(var) {
                cfg.apply(key, &v, var, &mut warnings)?;
            }
        }
        if cfg.reconnect_min_ms > cfg.reconnect_max_ms {
            return Err(ConfigError::BadValue {
                place: "reconnect delays".into(),
                key: "reconnect_min_ms".into(),
                value: cfg.reconnect_min_ms.to_string(),
                reason: format!("larger than reconnect_max_ms ({})", cfg.reconnect_max_ms),
            });
        }
        Ok(Loaded {
            config: cfg,
            warnings,
        })
    }

    /// Applies one client key; `Ok(false)` when the key is not a client key.
    fn apply(
        &mut self,
        key: &str,
        value: &str,
        place: &str,
        warnings: &mut Vec<String>,
    ) -> Result<bool, ConfigError> {
        let bad = |reason: String| ConfigError::BadValue {
            place: place.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let size = |warnings: &mut Vec<String>| -> Result<u32, ConfigError> {
            let (v, warning) = parse_size(value).map_err(bad)?;
            if let Some(w) = warning {
                warnings.push(format!("{place}: {key}: {w}"));
            }
            Ok(v)
        };
        match key {
            "host" => self.host = value.to_owned(),
            "port" => {
                self.port = value
                    .parse::<u16>()
                    .map_err(|_| bad("not a port number (0..65535)".into()))?
            }
            "client_id" => self.client_id = value.to_owned(),
            "max_restore" => self.max_restore = size(warnings)?,
            "max_archive" => self.max_archive = size(warnings)?,
            "max_remove" => self.max_remove = size(warnings)?,
            "hal_size" => {
                let v = size(warnings)?;
                if v < MIN_HAL_SIZE {
                    return Err(bad(format!(
                        "smaller than {MIN_HAL_SIZE}, the least the server accepts"
                    )));
                }
                self.hal_size = v;
            }
            "verbose" => {
                self.verbose = parse_verbose(value).map_err(bad)?;
                self.verbose_set = true;
            }
            "reconnect_min_ms" => {
                self.reconnect_min_ms = parse_ms(value).map_err(bad)?;
            }
            "reconnect_max_ms" => {
                self.reconnect_max_ms = parse_ms(value).map_err(bad)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn add_archive_id(&mut self, value: &str, place: &str) -> Result<(), ConfigError> {
        let bad = |reason: &str| ConfigError::BadValue {
            place: place.to_owned(),
            key: "archive_id".into(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let id = parse_c_integer(value)
            .ok()
            .filter(|(_, rest)| rest.trim().is_empty())
            .and_then(|(v, _)| u32::try_from(v).ok())
            .filter(|v| (1..=i32::MAX as u32).contains(v))
            .ok_or_else(|| bad("not an integer between 1 and 2147483647"))?;
        if self.archive_ids.len() >= MAX_ARCHIVE_IDS {
            return Err(bad("more than 1024 archive_id lines"));
        }
        if !self.archive_ids.contains(&id) {
            self.archive_ids.push(id);
        }
        Ok(())
    }
}

/// A loaded configuration and the warnings met while reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Warnings (unknown keys, keys without value, ignored characters after a suffix).
    pub warnings: Vec<String>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A client key has an invalid value.
    #[error("{place}: invalid value '{value}' for {key}: {reason}")]
    BadValue {
        /// Where: `file:line` or the environment variable.
        place: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The negative errno `llapi_hsm_copytool_register` returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ConfigError::Read { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
            ConfigError::BadValue { .. } => -libc::EINVAL,
        }
    }
}

/// Parses an integer like C's `strtoll(s, &end, 0)`: optional leading whitespace and sign,
/// `0x` hex, leading-`0` octal, else decimal. Returns the value and the unparsed rest.
fn parse_c_integer(s: &str) -> Result<(i64, &str), String> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return Err("not a number".into());
    }
    let magnitude = i128::from_str_radix(&digits[..end], radix)
        .ok()
        .filter(|v| *v <= i128::from(i64::MAX) + 1)
        .ok_or_else(|| "number out of range".to_string())?;
    let v = if neg { -magnitude } else { magnitude };
    let v = i64::try_from(v).map_err(|_| "number out of range".to_string())?;
    Ok((v, &digits[end..]))
}

/// Parses a size the way upstream's `str_suffix_to_u32` does: a base-0 integer, then an
/// optional `k`/`m`/`g` (any case) multiplying by 1024, 1024² or 1024³. `-1` is
/// `u32::MAX` (unlimited). Characters after the suffix are accepted with a warning (the
/// second value); any other trailing character, a negative value or one above `u32::MAX`
/// is an error.
pub fn parse_size(s: &str) -> Result<(u32, Option<String>), String> {
    let (v, rest) = parse_c_integer(s)?;
    let (mult, after) = match rest.as_bytes().first() {
        None => (1i128, ""),
        Some(b'k' | b'K') => (1 << 10, &rest[1..]),
        Some(b'm' | b'M') => (1 << 20, &rest[1..]),
        Some(b'g' | b'G') => (1 << 30, &rest[1..]),
        Some(_) => {
            return Err(format!(
                "unexpected '{rest}' after the number (expected nothing or k/M/G)"
            ));
        }
    };
    let total = i128::from(v) * mult;
    if total == -1 {
        return Ok((u32::MAX, None));
    }
    if total < 0 {
        return Err("negative (only -1, unlimited, is allowed)".into());
    }
    let value = u32::try_from(total).map_err(|_| format!("{total} is above 4294967295"))?;
    let warning = (!after.is_empty()).then(|| format!("ignored '{after}' after the suffix"));
    Ok((value, warning))
}

/// Parses a log level name: off, fatal, error, warn, normal, info, debug (any case).
pub fn parse_verbose(s: &str) -> Result<LlapiLogLevel, String> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "off" => LlapiLogLevel::Off,
        "fatal" => LlapiLogLevel::Fatal,
        "error" => LlapiLogLevel::Error,
        "warn" | "warning" => LlapiLogLevel::Warn,
        "normal" => LlapiLogLevel::Normal,
        "info" => LlapiLogLevel::Info,
        "debug" => LlapiLogLevel::Debug,
        _ => {
            return Err("expected off, fatal, error, warn, normal, info or debug".into());
        }
    })
}

fn parse_ms(s: &str) -> Result<u64, String> {
    match parse_c_integer(s)? {
        (v, rest) if rest.trim().is_empty() && v > 0 => Ok(v as u64),
        (_, rest) if !rest.trim().is_empty() => {
            Err(format!("unexpected '{rest}' after the number"))
        }
        _ => Err("must be a positive number of milliseconds".into()),
    }
}

/// `gethostname` cut at the first dot (upstream's default client id).
pub fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    name.split('.').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(
            file.map(|t| (Path::new("/etc/c.conf"), t)),
            |k| env.get(k).cloned(),
            "node1".into(),
        )
    }

    #[test]
    fn defaults_without_file_or_env() {
        let l = load(None, &[]).unwrap();
        assert_eq!(l.config, Config::defaults("node1".into()));
        assert_eq!(l.config.host, "coordinatool");
        assert_eq!(l.config.port, 5123);
        assert_eq!(l.config.hal_size, 1 << 20);
        assert_eq!(Config::limit(l.config.max_archive), None);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn suffixes_bases_and_unlimited() {
        assert_eq!(parse_size("1M").unwrap(), (1 << 20, None));
        assert_eq!(parse_size("2k").unwrap(), (2048, None));
        assert_eq!(parse_size("3G").unwrap(), (3 << 30, None));
        assert_eq!(parse_size("0x10").unwrap(), (16, None));
        assert_eq!(parse_size("010").unwrap(), (8, None));
        assert_eq!(parse_size("0").unwrap(), (0, None));
        assert_eq!(parse_size("-1").unwrap(), (u32::MAX, None));
        assert_eq!(parse_size(" +7").unwrap(), (7, None));
        let (v, w) = parse_size("4kiB").unwrap();
        assert_eq!(v, 4096);
        assert!(w.unwrap().contains("iB"));
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(parse_size("4G").unwrap_err().contains("above"));
        assert!(parse_size("-2").unwrap_err().contains("negative"));
        assert!(parse_size("-1k").unwrap_err().contains("negative"));
        assert!(parse_size("12x").unwrap_err().contains("'x'"));
        assert!(parse_size("abc").unwrap_err().contains("not a number"));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
        assert!(parse_size("08").unwrap_err().contains("'8'"));
    }

    #[test]
    fn file_syntax_and_precedence() {
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
verbose DEBUG\n";
        let l = load(Some(file), &[("COORDINATOOL_MAX_ARCHIVE", "5")]).unwrap();
        let c = &l.config;
        assert_eq!(c.host, "server.example");
        assert_eq!(c.port, 6000);
        assert_eq!(c.max_archive, 5, "env wins over the file");
        assert_eq!(c.max_restore, u32::MAX);
        assert_eq!(c.hal_size, 65536);
        assert_eq!(c.archive_ids, vec![2, 3]);
        assert_eq!(c.verbose, LlapiLogLevel::Debug);
        assert!(c.verbose_set);
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("/etc/c.conf:10") && l.warnings[0].contains("novalue"));
        assert!(l.warnings[1].contains("/etc/c.conf:11") && l.warnings[1].contains("mystery"));
    }

    #[test]
    fn env_overrides_everything() {
        let l = load(
            Some("host a\nport 1\nclient_id x\n"),
            &[
                ("COORDINATOOL_HOST", "b"),
                ("COORDINATOOL_PORT", "2"),
                ("COORDINATOOL_CLIENT_ID", "y"),
                ("COORDINATOOL_MAX_REMOVE", "1K"),
                ("COORDINATOOL_HAL_SIZE", "0x1000"),
                ("COORDINATOOL_VERBOSE", "info"),
                ("COORDINATOOL_RECONNECT_MIN_MS", "10"),
                ("COORDINATOOL_RECONNECT_MAX_MS", "20"),
            ],
        )
        .unwrap();
        let c = l.config;
        assert_eq!(
            (c.host.as_str(), c.port, c.client_id.as_str()),
            ("b", 2, "y")
        );
        assert_eq!(c.max_remove, 1024);
        assert_eq!(c.hal_size, 4096);
        assert_eq!(c.verbose, LlapiLogLevel::Info);
        assert_eq!((c.reconnect_min_ms, c.reconnect_max_ms), (10, 20));
    }

    #[test]
    fn errors_name_the_place_key_and_value() {
        let e = load(Some("host h\nmax_archive 12q\n"), &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/c.conf:2"), "{msg}");
        assert!(msg.contains("max_archive") && msg.contains("12q"), "{msg}");
        assert_eq!(e.errno(), -libc::EINVAL);

        let e = load(None, &[("COORDINATOOL_VERBOSE", "loud")]).unwrap_err();
        assert!(e.to_string().contains("COORDINATOOL_VERBOSE"), "{e}");
        let e = load(None, &[("COORDINATOOL_PORT", "70000")]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = load(None, &[("COORDINATOOL_HAL_SIZE", "100")]).unwrap_err();
        assert!(e.to_string().contains("172"), "{e}");
        let e = load(Some("archive_id 0\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("archive_id"), "{e}");
        let e = load(
            None,
            &[
                ("COORDINATOOL_RECONNECT_MIN_MS", "5000"),
                ("COORDINATOOL_RECONNECT_MAX_MS", "10"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("reconnect_max_ms"), "{e}");
    }

    #[test]
    fn max_bytes_clamps_unlimited_hal_size() {
        let mut c = Config::defaults("x".into());
        c.hal_size = u32::MAX;
        assert_eq!(c.max_bytes(), i32::MAX);
        c.hal_size = 4096;
        assert_eq!(c.max_bytes(), 4096);
    }

    #[test]
    fn load_reports_a_missing_required_file() {
        let err = ConfigError::Read {
            path: "/nonexistent".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(err.errno(), -libc::ENOENT);
        assert!(err.to_string().contains("/nonexistent"));
    }

    #[test]
    fn short_hostname_has_no_dot() {
        let h = short_hostname();
        assert!(!h.is_empty());
        assert!(!h.contains('.'));
    }
}
