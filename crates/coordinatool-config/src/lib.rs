//! The configuration file shared by coordinatool's server, CLI and movers' library.
//!
//! One file (`/etc/coordinatool.conf` unless `COORDINATOOL_CONF` or a command-line option
//! names another) holds the server's keys and the clients' keys. This crate owns what the three
//! programs must agree on:
//!
//! - the line syntax ([`lines`]): `key value`, blank lines and `#` comment lines skipped, keys
//!   case-insensitive, the value being the rest of the line, trimmed;
//! - which keys belong to whom ([`SERVER_KEYS`], [`CLIENT_KEYS`]), so that a client skips the
//!   server's keys silently and the other way round, while a key nobody knows gets a warning;
//! - the client settings ([`ClientConfig`]) with upstream's precedence: environment over file
//!   over defaults (command-line options are applied by the caller on top);
//! - upstream's value syntax: C base-0 integers ([`parse_c_integer`]), sizes with `k`/`m`/`g`
//!   suffixes and `-1` for unlimited ([`parse_size_u32`]).
//!
//! ```
//! use std::path::Path;
//! use coordinatool_config::{ClientConfig, Verbosity};
//!
//! let mut cfg = ClientConfig::with_client_id("mover1");
//! let warnings = cfg
//!     .apply_file(Path::new("/etc/coordinatool.conf"), "host srv\nmax_archive 4\nredis_host r\nbogus 1\n")
//!     .unwrap();
//! assert_eq!((cfg.host.as_str(), cfg.max_archive), ("srv", 4));
//! // The server's key is skipped silently; the unknown one is named with its line.
//! assert_eq!(warnings.len(), 1);
//! assert_eq!(warnings[0].to_string(), "/etc/coordinatool.conf:4: unknown key bogus, ignored");
//! assert_eq!(cfg.verbose, Verbosity::Normal);
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// Default server host name.
pub const DEFAULT_HOST: &str = "coordinatool";
/// Default server port.
pub const DEFAULT_PORT: u16 = 5123;
/// Default `hal_size`: a mover's action list buffer, sent as `max_bytes` of `recv` (1 MiB).
pub const DEFAULT_HAL_SIZE: u32 = 1 << 20;
/// Smallest `hal_size` the server accepts (one 72-byte item header plus a 100-byte margin).
pub const MIN_HAL_SIZE: u32 = 172;
/// Default first reconnection delay of a mover.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 100;
/// Default cap of a mover's exponential reconnection delay.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
/// The config file read when nothing names another (it may be absent).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coordinatool.conf";
/// Environment variable naming the config file (which must then exist).
pub const ENV_CONF: &str = "COORDINATOOL_CONF";
/// Most archive ids one copytool may register (Lustre's per-agent limit).
pub const MAX_ARCHIVE_IDS: usize = 1024;

/// Keys read by the server only. Clients skip them without a warning.
///
/// The server's own parser must accept every key listed here (its tests check it); adding a
/// server key means adding it here, or every mover would warn about it.
pub const SERVER_KEYS: &[&str] = &[
    "redis_host",
    "redis_port",
    "client_grace_ms",
    "archive_on_hosts",
    "archive_on_hosts_ch",
    "archive_on_hosts_ch_hash",
    "batch_archives_slices_sec",
    "batch_archives_slice_sec",
    "batch_archives_slots_per_client",
    "reporting_hint",
    "reporting_dir",
    "reporting_schedule_interval_ms",
    "store",
    "state_dir",
    "priority_restore",
    "priority_remove",
    "priority_archive",
    "priority_tag",
    "priority_aging_ms",
    "fair_share_key",
    "fair_share_weight",
    "fair_share_default_weight",
];

/// Keys read by the clients only (the CLI and the movers' library). The server skips them
/// without a warning. `host`, `port`, `verbose` and `archive_id` are read by both sides and
/// are in neither list.
pub const CLIENT_KEYS: &[&str] = &[
    "client_id",
    "max_restore",
    "max_archive",
    "max_remove",
    "hal_size",
    "reconnect_min_ms",
    "reconnect_max_ms",
];

/// Keys read by both the server and the clients.
pub const SHARED_KEYS: &[&str] = &["host", "port", "verbose", "archive_id"];

/// One meaningful line of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The key, lower-cased.
    pub key: String,
    /// The rest of the line, trimmed; empty when the line has a key only.
    pub value: &'a str,
}

/// The key/value lines of a config file's text, skipping blank and `#` comment lines.
///
/// A line with a key and no value is returned with an empty `value`: what to do with it
/// (upstream warns and skips it) is the caller's choice.
pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| parse_line(i + 1, raw))
}

/// One line of a config file (line `number`, 1-based): `None` for a blank or `#` comment
/// line. For readers that must look at each line before parsing it (the server refuses a
/// line that is not UTF-8, naming it).
pub fn parse_line(number: usize, raw: &str) -> Option<Line<'_>> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((k, v)) => (k, v.trim()),
        None => (line, ""),
    };
    Some(Line {
        number,
        key: key.to_ascii_lowercase(),
        value,
    })
}

/// Log level, as liblustreapi's message levels (a status request's `verbose` is this number,
/// and 6 asks the server for a full dump).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
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
    /// `debug` (6).
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

    /// Parses a level name, any case; `warning` is accepted for `warn`.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "off" => Verbosity::Off,
            "fatal" => Verbosity::Fatal,
            "error" => Verbosity::Error,
            "warn" | "warning" => Verbosity::Warn,
            "normal" => Verbosity::Normal,
            "info" => Verbosity::Info,
            "debug" => Verbosity::Debug,
            _ => return None,
        })
    }

    /// One level more verbose (`-v`), saturating at `debug`.
    pub const fn raised(self) -> Self {
        Self::from_level(self.level() + 1)
    }

    /// One level quieter (`-q`), saturating at `off`.
    pub const fn lowered(self) -> Self {
        Self::from_level(self.level() - 1)
    }

    /// The level's name as the config file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Verbosity::Off => "off",
            Verbosity::Fatal => "fatal",
            Verbosity::Error => "error",
            Verbosity::Warn => "warn",
            Verbosity::Normal => "normal",
            Verbosity::Info => "info",
            Verbosity::Debug => "debug",
        }
    }
}

impl std::str::FromStr for Verbosity {
    type Err = String;
    /// A level name, any case (see [`Verbosity::from_name`]).
    fn from_str(s: &str) -> Result<Self, String> {
        Verbosity::from_name(s)
            .ok_or_else(|| "expected off, fatal, error, warn, normal, info or debug".to_owned())
    }
}

impl fmt::Display for Verbosity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

/// Why the configuration cannot be used.
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
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// The negative errno a C entry point (`llapi_hsm_copytool_register`) returns for it.
    pub fn errno(&self) -> i32 {
        match self {
            ConfigError::Io { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
            ConfigError::InvalidValue { .. } => -libc::EINVAL,
        }
    }
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

/// Which config file to read: `explicit` (a command-line option; must exist), else
/// `$COORDINATOOL_CONF` (must exist), else [`DEFAULT_CONFIG_PATH`] (optional). Returns the
/// path and whether it must exist.
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

/// The client settings, read by the CLI and the movers' library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `host` / `COORDINATOOL_HOST`: server host name or address.
    pub host: String,
    /// `port` / `COORDINATOOL_PORT`: server port.
    pub port: u16,
    /// `client_id` / `COORDINATOOL_CLIENT_ID`: id sent in `ehlo` (default: the short host name).
    pub client_id: String,
    /// `max_restore` / `COORDINATOOL_MAX_RESTORE`: running restores at most (`u32::MAX`:
    /// unlimited).
    pub max_restore: u32,
    /// `max_archive` / `COORDINATOOL_MAX_ARCHIVE`.
    pub max_archive: u32,
    /// `max_remove` / `COORDINATOOL_MAX_REMOVE`.
    pub max_remove: u32,
    /// `hal_size` / `COORDINATOOL_HAL_SIZE`: action list buffer size, `max_bytes` of `recv`.
    pub hal_size: u32,
    /// `verbose` / `COORDINATOOL_VERBOSE`: log level.
    pub verbose: Verbosity,
    /// True when `verbose` was given (file or environment) rather than defaulted: the movers'
    /// library only changes the host copytool's own log level then.
    pub verbose_set: bool,
    /// `archive_id` lines: archive ids announced in `ehlo` when the copytool registers for
    /// every archive (the README's knob, which the C client ignored).
    pub archive_ids: Vec<u32>,
    /// `reconnect_min_ms` / `COORDINATOOL_RECONNECT_MIN_MS`: first reconnection delay
    /// (extension; upstream waits a fixed 5 s).
    pub reconnect_min_ms: u64,
    /// `reconnect_max_ms` / `COORDINATOOL_RECONNECT_MAX_MS`: cap of the exponential
    /// reconnection delay (extension).
    pub reconnect_max_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::with_client_id(short_hostname())
    }
}

/// The environment variables of the client keys, in the order they are applied.
const ENV_VARS: &[(&str, &str)] = &[
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
];

impl ClientConfig {
    /// The defaults, with `client_id` as the default client id.
    pub fn with_client_id(client_id: impl Into<String>) -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            client_id: client_id.into(),
            max_restore: u32::MAX,
            max_archive: u32::MAX,
            max_remove: u32::MAX,
            hal_size: DEFAULT_HAL_SIZE,
            verbose: Verbosity::Normal,
            verbose_set: false,
            archive_ids: Vec::new(),
            reconnect_min_ms: DEFAULT_RECONNECT_MIN_MS,
            reconnect_max_ms: DEFAULT_RECONNECT_MAX_MS,
        }
    }

    /// Loads the configuration of this process: the defaults, then the file chosen by
    /// [`config_path`], then the environment read through `env` (pass
    /// `&|k| std::env::var(k).ok()` in real use).
    pub fn load(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let (path, must_exist) = config_path(explicit, env);
        let text = match std::fs::read(&path) {
            // Upstream reads bytes; a stray non-UTF-8 byte in a comment must not stop a mover.
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let file = text.as_deref().map(|t| (path.as_path(), t));
        Self::default().with_sources(file, env)
    }

    /// Applies a file's text (`(path, text)`, the path only names it in messages) and then the
    /// environment on top of `self`, and checks the settings together.
    pub fn with_sources(
        mut self,
        file: Option<(&Path, &str)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigError> {
        let mut warnings = Vec::new();
        if let Some((path, text)) = file {
            warnings = self.apply_file(path, text)?;
        }
        warnings.extend(self.apply_env(env)?);
        self.check()?;
        Ok((self, warnings))
    }

    /// Applies the text of a config file (named `path` in messages).
    pub fn apply_file(
        &mut self,
        path: &Path,
        text: &str,
    ) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        for line in lines(text) {
            let origin = Origin::File {
                path: path.to_owned(),
                line: line.number,
            };
            if line.value.is_empty() {
                warnings.push(ConfigWarning {
                    origin,
                    message: format!("key {} has no value, line ignored", line.key),
                });
                continue;
            }
            match self.apply_key(&line.key, line.value, &origin)? {
                Applied::Set | Applied::NotMine => {}
                Applied::SetWithWarning(message) => {
                    warnings.push(ConfigWarning { origin, message })
                }
                Applied::Unknown => warnings.push(ConfigWarning {
                    origin,
                    message: format!("unknown key {}, ignored", line.key),
                }),
            }
        }
        Ok(warnings)
    }

    /// Applies the `COORDINATOOL_*` environment variables (an empty variable counts as unset).
    pub fn apply_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        for &(var, key) in ENV_VARS {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                let origin = Origin::Env(var);
                if let Applied::SetWithWarning(message) = self.apply_key(key, v.trim(), &origin)? {
                    warnings.push(ConfigWarning { origin, message });
                }
            }
        }
        Ok(warnings)
    }

    /// Applies one `key value` (the key lower-cased).
    pub fn apply_key(
        &mut self,
        key: &str,
        value: &str,
        origin: &Origin,
    ) -> Result<Applied, ConfigError> {
        let bad = |reason: String| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let mut warning = None;
        let mut size = |v: &str| -> Result<u32, ConfigError> {
            let (n, w) = parse_size_u32(v).map_err(bad)?;
            if let Some(w) = w {
                warning = Some(format!("{key}: {w}"));
            }
            Ok(n)
        };
        match key {
            "host" => self.host = value.to_owned(),
            "port" => self.port = parse_port(value).map_err(bad)?,
            "client_id" => self.client_id = value.to_owned(),
            "max_restore" => self.max_restore = size(value)?,
            "max_archive" => self.max_archive = size(value)?,
            "max_remove" => self.max_remove = size(value)?,
            "hal_size" => {
                let v = size(value)?;
                if v < MIN_HAL_SIZE {
                    return Err(bad(format!(
                        "smaller than {MIN_HAL_SIZE}, the least the server accepts"
                    )));
                }
                self.hal_size = v;
            }
            "verbose" => {
                self.verbose = Verbosity::from_name(value).ok_or_else(|| {
                    bad("expected off, fatal, error, warn, normal, info or debug".to_owned())
                })?;
                self.verbose_set = true;
            }
            "archive_id" => {
                let id = parse_archive_id(value).map_err(bad)?;
                if !self.archive_ids.contains(&id) {
                    if self.archive_ids.len() >= MAX_ARCHIVE_IDS {
                        return Err(bad(format!("more than {MAX_ARCHIVE_IDS} archive ids")));
                    }
                    self.archive_ids.push(id);
                }
            }
            "reconnect_min_ms" => self.reconnect_min_ms = parse_ms(value).map_err(bad)?,
            "reconnect_max_ms" => self.reconnect_max_ms = parse_ms(value).map_err(bad)?,
            k if SERVER_KEYS.contains(&k) => return Ok(Applied::NotMine),
            _ => return Ok(Applied::Unknown),
        }
        Ok(match warning {
            Some(w) => Applied::SetWithWarning(w),
            None => Applied::Set,
        })
    }

    /// Checks the settings that depend on each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(ConfigError::InvalidValue {
                origin: Origin::Env("COORDINATOOL_RECONNECT_MIN_MS"),
                key: "reconnect_min_ms".into(),
                value: self.reconnect_min_ms.to_string(),
                reason: format!("larger than reconnect_max_ms ({})", self.reconnect_max_ms),
            });
        }
        Ok(())
    }

    /// A `recv` limit as sent on the wire: `None` (unlimited) for `u32::MAX`.
    pub fn limit(v: u32) -> Option<u32> {
        (v != u32::MAX).then_some(v)
    }

    /// `max_bytes` of a `recv` request (`hal_size` clamped to `i32::MAX`).
    pub fn max_bytes(&self) -> i32 {
        i32::try_from(self.hal_size).unwrap_or(i32::MAX)
    }
}

/// What [`ClientConfig::apply_key`] did with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A client key, set.
    Set,
    /// A client key, set, with something worth a warning (text ignored after a suffix).
    SetWithWarning(String),
    /// A server key: skipped without a warning.
    NotMine,
    /// A key nobody reads.
    Unknown,
}

/// Parses a port number (1..=65535).
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a port number between 1 and 65535".to_owned()),
        Ok(p) => Ok(p),
    }
}

/// Parses an archive id (1..=2147483647, as Lustre accepts).
pub fn parse_archive_id(s: &str) -> Result<u32, String> {
    match parse_c_integer(s) {
        Ok((v, rest)) if rest.trim().is_empty() && (1..=i64::from(i32::MAX)).contains(&v) => {
            Ok(v as u32)
        }
        _ => Err("expected an archive id between 1 and 2147483647".to_owned()),
    }
}

/// Parses a positive number of milliseconds.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    match parse_c_integer(s)? {
        (v, rest) if rest.trim().is_empty() && v > 0 => Ok(v as u64),
        (_, rest) if !rest.trim().is_empty() => {
            Err(format!("unexpected {rest:?} after the number"))
        }
        _ => Err("must be a positive number of milliseconds".into()),
    }
}

/// Parses a size the way upstream does: a C base-0 integer (`0x10` hex, `010` octal), then an
/// optional `k`/`m`/`g` (any case) multiplying by 1024, 1024² or 1024³. `-1` is `u32::MAX`
/// (unlimited). Text after the suffix is accepted and described in the second value (upstream
/// warned about it); any other trailing character, a negative value other than `-1` or a value
/// above `u32::MAX` is an error.
pub fn parse_size_u32(s: &str) -> Result<(u32, Option<String>), String> {
    let (v, rest) = parse_c_integer(s)?;
    let rest = rest.trim_end();
    let (mult, after): (i128, &str) = match rest.as_bytes().first() {
        None => (1, ""),
        Some(b'k' | b'K') => (1 << 10, &rest[1..]),
        Some(b'm' | b'M') => (1 << 20, &rest[1..]),
        Some(b'g' | b'G') => (1 << 30, &rest[1..]),
        Some(_) => {
            return Err(format!(
                "unexpected {rest:?} after the number (suffixes: k, m, g)"
            ));
        }
    };
    let total = i128::from(v) * mult;
    if total == -1 {
        return Ok((u32::MAX, None));
    }
    if total < 0 {
        return Err("negative values other than -1 (unlimited) are not allowed".into());
    }
    let value = u32::try_from(total).map_err(|_| format!("{total} is above 4294967295"))?;
    let warning = (!after.is_empty()).then(|| format!("ignored {after:?} after the suffix"));
    Ok((value, warning))
}

/// Parses an integer like C's `strtoll(s, &end, 0)`: optional leading whitespace and sign,
/// `0x` hex, leading-`0` octal, else decimal. Returns the value and the unparsed rest.
pub fn parse_c_integer(s: &str) -> Result<(i64, &str), String> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t.as_bytes().get(2).is_some_and(u8::is_ascii_hexdigit)
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .bytes()
        .position(|b| !(b as char).is_digit(radix))
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

/// The host name up to its first dot (upstream's default client id); `localhost` when the
/// name cannot be read.
pub fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length minus one, so the result stays NUL-terminated.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    match name.split('.').next() {
        Some(short) if !short.is_empty() => short.to_owned(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests;
