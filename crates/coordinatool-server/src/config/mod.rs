//! Command line, configuration file and environment, exactly as upstream reads them.
//!
//! * Command line (`getopt_long` rules): `[options] <mountpoint>`, see [`usage`].
//! * Config file: `-c <path>` (must exist), else `$COORDINATOOL_CONF` (must exist), else
//!   `/etc/coordinatool.conf` (may be missing). One `key value` per line, keys
//!   case-insensitive, `#` comments, the value is the rest of the line, trimmed. The file is
//!   shared with the clients: their keys are ignored silently, unknown keys give a warning, a
//!   key without a value gives a warning, a bad value is an error naming the file, the line
//!   and the key.
//! * Environment: `COORDINATOOL_HOST`, `_PORT`, `_REDIS_HOST` (may be empty: no redis),
//!   `_REDIS_PORT`, `_CLIENT_GRACE` (ms), `_VERBOSE`, plus this project's `_STORE` and
//!   `_STATE_DIR`. A bad `_REDIS_PORT` or `_CLIENT_GRACE` is only a warning (the previous value
//!   stays), a bad `_VERBOSE` is an error, as upstream.
//! * Precedence: command line > environment > config file > built-in default.
//!
//! Keys added by this project (upstream ignores none of them silently, so a C server would
//! warn about them): `store`, `state_dir`, `archive_on_hosts_ch_hash`, `priority_restore`,
//! `priority_remove`, `priority_archive`, `priority_tag`, `priority_aging_ms`,
//! `fair_share_key`, `fair_share_weight`, `fair_share_default_weight`.

mod cli;
mod engine;
mod num;
pub mod sysconfig;

pub use num::{parse_c_int, parse_c_range, parse_size_u32};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tracing::level_filters::LevelFilter;

/// The config file read when neither `-c` nor `$COORDINATOOL_CONF` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coordinatool.conf";
/// Parent of the default per-mount state directory.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/coordinatool";
/// `LL_HSM_MAX_ARCHIVES_PER_AGENT`: most archive ids one agent may register.
pub const MAX_ARCHIVE_IDS: usize = 1024;
const INT_MAX: i64 = i32::MAX as i64;

/// Log verbosity, upstream's llapi levels (`off` … `debug`), shared with the clients.
pub use coordinatool_config::Verbosity;

/// The tracing filter for a verbosity: `fatal` and `error` are ERROR, `warn` is WARN,
/// `normal` is INFO, `info` is DEBUG and `debug` is TRACE (upstream's per-request INFO messages
/// are DEBUG events here, and its per-message DEBUG dumps are TRACE events).
pub fn level_filter(v: Verbosity) -> LevelFilter {
    match v {
        Verbosity::Off => LevelFilter::OFF,
        Verbosity::Fatal | Verbosity::Error => LevelFilter::ERROR,
        Verbosity::Warn => LevelFilter::WARN,
        Verbosity::Normal => LevelFilter::INFO,
        Verbosity::Info => LevelFilter::DEBUG,
        Verbosity::Debug => LevelFilter::TRACE,
    }
}

/// How the store was chosen: an upstream configuration names no `store` but sets Redis up,
/// and upstream always keeps its queue in Redis, so such a configuration keeps doing that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// Nothing said which store: the embedded one.
    #[default]
    Default,
    /// The `store` key, `COORDINATOOL_STORE`.
    Configured,
    /// No `store` key, but a non-empty Redis host or a port was given (key, environment or
    /// option): Redis, as upstream.
    ImpliedByRedis,
}

/// Where requests are persisted (`store` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// The embedded database under [`ServerConfig::state_dir`] (default).
    #[default]
    Embedded,
    /// Redis at `redis_host:redis_port`, upstream's key layout. An empty `redis_host`
    /// turns it into [`StoreKind::None`], as upstream.
    Redis,
    /// No persistence (recovery through `coordinatool-client -Q`).
    None,
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "embedded" => Ok(StoreKind::Embedded),
            "redis" => Ok(StoreKind::Redis),
            "none" => Ok(StoreKind::None),
            _ => Err("expected embedded, redis or none".into()),
        }
    }
}

/// One `archive_on_hosts` or `archive_on_hosts_ch` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMappingLine {
    /// The tag looked up in the hsm data.
    pub tag: String,
    /// `Some(hash_count)` for `archive_on_hosts_ch`, `None` for `archive_on_hosts`.
    pub hash_count: Option<u32>,
    /// Client ids of the hosts (never empty).
    pub hosts: Vec<String>,
}

/// How `archive_on_hosts_ch` picks a host (`archive_on_hosts_ch_hash` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChHash {
    /// Rendezvous hashing (the engine's default): removing a host moves only its share.
    #[default]
    Rendezvous,
    /// Upstream's djb2 mapping with data rewriting.
    Upstream,
}

/// What fair share is computed over (`fair_share_key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FairShareKey {
    /// `archive_id`.
    ArchiveId,
    /// `uid` of the file owner.
    Uid,
    /// `gid` of the file owner.
    Gid,
    /// `projid` of the file.
    ProjId,
    /// A tag of the hsm data, written with its `=` (e.g. `user=`).
    DataTag(String),
}

/// Priority and fair-share keys, kept as typed raw values (`None` = engine default).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SchedKeys {
    /// `priority_restore`.
    pub priority_restore: Option<i32>,
    /// `priority_remove`.
    pub priority_remove: Option<i32>,
    /// `priority_archive`.
    pub priority_archive: Option<i32>,
    /// `priority_tag` (a data tag with its `=`).
    pub priority_tag: Option<String>,
    /// `priority_aging_ms` (0 = strict priorities).
    pub priority_aging_ms: Option<u64>,
    /// `fair_share_key`; `None` disables fair share.
    pub fair_share_key: Option<FairShareKey>,
    /// `fair_share_weight <value> <weight>` lines.
    pub fair_share_weights: Vec<(String, u32)>,
    /// `fair_share_default_weight` (≥ 1).
    pub fair_share_default_weight: Option<u32>,
    /// `archive_on_hosts_ch_hash`.
    pub ch_hash: ChHash,
}

/// Archive batching (`batch_archives_slices_sec`, `batch_archives_slots_per_client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Idle slice (s); 0 disables batching.
    pub idle_secs: u64,
    /// Maximum slice (s); 0 = none.
    pub max_secs: u64,
    /// Slots per client; forced to 0 when batching is disabled.
    pub slots_per_client: u32,
}

/// The complete server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The Lustre mount point (the command line's operand).
    pub mount_point: PathBuf,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Listen address (`host`, `-H`, `COORDINATOOL_HOST`).
    pub host: String,
    /// Listen port or service name (`port`, `-p`, `COORDINATOOL_PORT`).
    pub port: String,
    /// Log level.
    pub verbosity: Verbosity,
    /// Archive ids to register for; empty = every archive.
    pub archive_ids: Vec<u32>,
    /// Redis host; empty disables redis.
    pub redis_host: String,
    /// Redis port.
    pub redis_port: u16,
    /// Grace period of disconnected clients, ms.
    pub client_grace_ms: u64,
    /// Host mappings in file order (the engine checks the last one first).
    pub host_mappings: Vec<HostMappingLine>,
    /// Archive batching.
    pub batch: BatchConfig,
    /// `reporting_dir` (relative to the mount point). Reporting needs the hint too.
    pub reporting_dir: Option<String>,
    /// `reporting_hint` (without the `=`).
    pub reporting_hint: Option<String>,
    /// `reporting_schedule_interval_ms`; 0 = no periodic work.
    pub reporting_interval_ms: u64,
    /// Persistence backend.
    pub store: StoreKind,
    /// How [`ServerConfig::store`] was chosen.
    pub store_choice: StoreChoice,
    /// A config file line set `redis_host` or `redis_port` (for [`StoreChoice::ImpliedByRedis`]).
    redis_in_file: bool,
    /// `state_dir`, when set; see [`ServerConfig::state_dir`].
    pub state_dir_override: Option<PathBuf>,
    /// Priority and fair-share keys.
    pub sched: SchedKeys,
}

impl ServerConfig {
    /// The built-in defaults for a mount point.
    pub fn defaults(mount_point: impl Into<PathBuf>) -> Self {
        ServerConfig {
            mount_point: mount_point.into(),
            config_file: None,
            host: "coordinatool".into(),
            port: "5123".into(),
            verbosity: Verbosity::Normal,
            archive_ids: Vec::new(),
            redis_host: "localhost".into(),
            redis_port: 6379,
            client_grace_ms: 600_000,
            host_mappings: Vec::new(),
            batch: BatchConfig {
                idle_secs: 0,
                max_secs: 0,
                slots_per_client: 1,
            },
            reporting_dir: None,
            reporting_hint: None,
            reporting_interval_ms: 60_000,
            store: StoreKind::Embedded,
            store_choice: StoreChoice::Default,
            redis_in_file: false,
            state_dir_override: None,
            sched: SchedKeys::default(),
        }
    }

    /// The state directory of the embedded store: `state_dir` if set, else
    /// `/var/lib/coordinatool/<mount point escaped as systemd-escape --path does>`, which is
    /// what the unit's `StateDirectory=coordinatool/%i` creates.
    pub fn state_dir(&self) -> PathBuf {
        match &self.state_dir_override {
            Some(d) => d.clone(),
            None => Path::new(DEFAULT_STATE_ROOT).join(systemd_escape_path(&self.mount_point)),
        }
    }

    /// The store actually used: `redis` with an empty host means no store, as upstream.
    pub fn effective_store(&self) -> StoreKind {
        match self.store {
            StoreKind::Redis if self.redis_host.is_empty() => StoreKind::None,
            s => s,
        }
    }

    /// The reporting directory and hint, when both are set.
    pub fn reporting(&self) -> Option<(PathBuf, &str)> {
        match (&self.reporting_dir, &self.reporting_hint) {
            (Some(d), Some(h)) => Some((self.mount_point.join(d), h.as_str())),
            _ => None,
        }
    }
}

/// `systemd-escape --path`: trims slashes, `/` becomes `-`, bytes other than
/// `[A-Za-z0-9:_.]` (and a leading `.`) become `\xNN`; the root is `-`.
pub fn systemd_escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let parts: Vec<&str> = s.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return "-".into();
    }
    let joined = parts.join("/");
    let mut out = String::new();
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(char::from(b))
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Something wrong enough to refuse to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A bad command line (getopt's message, or a missing/extra operand).
    #[error("{0}")]
    Usage(String),
    /// An option's value is invalid.
    #[error("option {option}: invalid value {value:?}: {reason}")]
    BadOption {
        /// The option as spelled (`-A`, `--redis-port`).
        option: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A value in the config file is invalid.
    #[error("{}:{line}: invalid value {value:?} for key {key}: {reason}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The key, lower-cased.
        key: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable is invalid (and upstream treats that as fatal).
    #[error("environment variable {var}: invalid value {value:?}: {reason}")]
    BadEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Something the operator should know, which does not prevent starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where: `file:line`, an environment variable name, or `config`.
    pub location: String,
    /// What.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the server.
    Run(Box<Loaded>),
    /// `-h`: print this text on stdout and exit 0.
    Help(String),
    /// `-V`: print this text on stdout and exit 0.
    Version(String),
}

/// A loaded configuration and the warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: ServerConfig,
    /// Warnings in the order they were found.
    pub warnings: Vec<ConfigWarning>,
}

/// The `-V` text.
pub fn version_text() -> String {
    format!("Coordinatool version {}", env!("CARGO_PKG_VERSION"))
}

/// The `-h` text for program name `prog`.
pub fn usage(prog: &str) -> String {
    cli::usage(prog)
}

/// Parses the command line `args` (without the program name) together with the config file
/// and the environment (`env` looks a variable up; the binary passes `std::env::var`).
pub fn load(
    prog: &str,
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, ConfigError> {
    let parsed = cli::parse(args).map_err(ConfigError::Usage)?;
    // -h and -V act before anything can fail on the config.
    for o in &parsed.opts {
        match o.id {
            cli::OptId::Help => return Ok(Invocation::Help(usage(prog))),
            cli::OptId::Version => return Ok(Invocation::Version(version_text())),
            _ => {}
        }
    }
    let mount = match parsed.operands.as_slice() {
        [] => return Err(ConfigError::Usage("no mount point specified".into())),
        [m] => m.clone(),
        [_, extra, ..] => {
            return Err(ConfigError::Usage(format!(
                "extra argument {extra:?}: only the mount point is expected"
            )));
        }
    };
    let mut cfg = ServerConfig::defaults(mount);
    let mut warnings = Vec::new();

    // First pass: -c (the last one wins, as with getopt).
    let cli_conf = parsed
        .opts
        .iter()
        .rev()
        .find(|o| o.id == cli::OptId::Config)
        .and_then(|o| o.arg.clone());
    let (path, must_exist) = match (cli_conf, env("COORDINATOOL_CONF")) {
        (Some(p), _) => (PathBuf::from(p), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            apply_file(&mut cfg, &path, &bytes, &mut warnings)?;
            cfg.config_file = Some(path);
        }
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { path, source }),
    }
    apply_env(&mut cfg, env, &mut warnings)?;
    apply_cli(&mut cfg, &parsed)?;
    let redis_option = parsed
        .opts
        .iter()
        .any(|o| matches!(o.id, cli::OptId::RedisHost | cli::OptId::RedisPort));
    // An empty host disables Redis (upstream): that asks for no Redis, not for no store.
    if cfg.store_choice == StoreChoice::Default
        && !cfg.redis_host.is_empty()
        && (redis_option
            || env("COORDINATOOL_REDIS_HOST").is_some()
            || env("COORDINATOOL_REDIS_PORT").is_some_and(|v| parse_c_range(&v, 0, 65535).is_ok())
            || cfg.redis_in_file)
    {
        cfg.store = StoreKind::Redis;
        cfg.store_choice = StoreChoice::ImpliedByRedis;
    }
    if cfg.batch.idle_secs == 0 {
        cfg.batch.slots_per_client = 0;
    }
    if cfg.reporting_dir.is_some() != cfg.reporting_hint.is_some() {
        warnings.push(ConfigWarning {
            location: "config".into(),
            message: "reporting needs both reporting_dir and reporting_hint: reporting is off"
                .into(),
        });
    }
    if cfg.effective_store() == StoreKind::None && cfg.store == StoreKind::Redis {
        warnings.push(ConfigWarning {
            location: "config".into(),
            message:
                "redis host is empty: no persistence, recover with coordinatool-client --queue"
                    .into(),
        });
    }
    Ok(Invocation::Run(Box::new(Loaded {
        config: cfg,
        warnings,
    })))
}

// Keys of the shared file that belong to the clients: one list, shared with the clients'
// parser, so that neither side warns about the other's keys.
use coordinatool_config::CLIENT_KEYS;

/// Applies the text of a config file on top of `cfg`.
pub fn apply_file(
    cfg: &mut ServerConfig,
    path: &Path,
    bytes: &[u8],
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(), ConfigError> {
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = idx + 1;
        let bad = |key: &str, value: &str, reason: String| ConfigError::BadValue {
            path: path.to_path_buf(),
            line,
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let text =
            std::str::from_utf8(raw).map_err(|_| bad("", "", "line is not valid UTF-8".into()))?;
        let Some(coordinatool_config::Line { key, value, .. }) =
            coordinatool_config::parse_line(line, text)
        else {
            continue;
        };
        let warn = |warnings: &mut Vec<ConfigWarning>, message: String| {
            warnings.push(ConfigWarning {
                location: format!("{}:{line}", path.display()),
                message,
            })
        };
        if value.is_empty() {
            warn(warnings, format!("key {key} has no value: skipped"));
            continue;
        }
        apply_key(
            cfg,
            &key,
            value,
            |reason| bad(&key, value, reason),
            &mut |m| warn(warnings, m),
        )?;
    }
    Ok(())
}

fn apply_key(
    cfg: &mut ServerConfig,
    key: &str,
    value: &str,
    bad: impl Fn(String) -> ConfigError,
    warn: &mut dyn FnMut(String),
) -> Result<(), ConfigError> {
    let int = |min: i64, max: i64| parse_c_range(value, min, max).map_err(&bad);
    let words: Vec<&str> = value.split_ascii_whitespace().collect();
    match key {
        "host" => cfg.host = value.to_string(),
        "port" => cfg.port = value.to_string(),
        "verbose" => cfg.verbosity = value.parse().map_err(&bad)?,
        "archive_id" => {
            let id = int(1, INT_MAX)? as u32;
            if cfg.archive_ids.len() >= MAX_ARCHIVE_IDS {
                return Err(bad(format!("more than {MAX_ARCHIVE_IDS} archive ids")));
            }
            cfg.archive_ids.push(id);
        }
        "redis_host" => {
            cfg.redis_host = value.to_string();
            cfg.redis_in_file = true;
        }
        "redis_port" => {
            cfg.redis_port = int(0, 65535)? as u16;
            cfg.redis_in_file = true;
        }
        "client_grace_ms" => cfg.client_grace_ms = int(0, INT_MAX)? as u64,
        "archive_on_hosts" => {
            if words.len() < 2 {
                warn(format!(
                    "archive_on_hosts {value}: tag without hosts, ignored"
                ));
            } else {
                cfg.host_mappings.push(HostMappingLine {
                    tag: words[0].to_string(),
                    hash_count: None,
                    hosts: words[1..].iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        "archive_on_hosts_ch" => {
            let Some(count) = words.get(1) else {
                return Err(bad(
                    "expected <tag> <hash_count> <host>...: hash_count is missing".into(),
                ));
            };
            // Upstream silently reads an unparsable count as 0, which hides a forgotten
            // count (the first host then disappears): refuse it instead.
            let count = parse_c_range(count, 0, i64::from(u32::MAX))
                .map_err(|r| bad(format!("hash_count {count:?}: {r}")))?
                as u32;
            if words.len() < 3 {
                warn(format!(
                    "archive_on_hosts_ch {value}: tag without hosts, ignored"
                ));
            } else {
                cfg.host_mappings.push(HostMappingLine {
                    tag: words[0].to_string(),
                    hash_count: Some(count),
                    hosts: words[2..].iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        // The README spells it `slice`, the C code `slices`: both are accepted.
        "batch_archives_slices_sec" | "batch_archives_slice_sec" => {
            let (idle, max) = match value.split_once(' ') {
                Some((a, b)) => (a, Some(b.trim())),
                None => (value, None),
            };
            let idle =
                parse_c_range(idle, 0, i64::MAX).map_err(|r| bad(format!("idle seconds: {r}")))?;
            let max = match max {
                Some(m) => {
                    parse_c_range(m, 0, i64::MAX).map_err(|r| bad(format!("max seconds: {r}")))?
                }
                None => 0,
            };
            cfg.batch.idle_secs = idle as u64;
            cfg.batch.max_secs = max as u64;
        }
        "batch_archives_slots_per_client" => {
            cfg.batch.slots_per_client = int(0, i64::from(u32::MAX))? as u32
        }
        "reporting_dir" => cfg.reporting_dir = Some(value.to_string()),
        "reporting_hint" => cfg.reporting_hint = Some(value.to_string()),
        "reporting_schedule_interval_ms" => cfg.reporting_interval_ms = int(0, i64::MAX)? as u64,
        "store" => {
            cfg.store = value.parse().map_err(&bad)?;
            cfg.store_choice = StoreChoice::Configured;
        }
        "state_dir" => cfg.state_dir_override = Some(PathBuf::from(value)),
        "archive_on_hosts_ch_hash" => {
            cfg.sched.ch_hash = match value.to_ascii_lowercase().as_str() {
                "rendezvous" => ChHash::Rendezvous,
                "upstream" => ChHash::Upstream,
                _ => return Err(bad("expected rendezvous or upstream".into())),
            }
        }
        "priority_restore" | "priority_remove" | "priority_archive" => {
            let v = parse_c_int(value)
                .ok()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| bad("expected a 32-bit integer".into()))?;
            *match key {
                "priority_restore" => &mut cfg.sched.priority_restore,
                "priority_remove" => &mut cfg.sched.priority_remove,
                _ => &mut cfg.sched.priority_archive,
            } = Some(v);
        }
        "priority_tag" => {
            if !value.ends_with('=') || words.len() != 1 {
                return Err(bad("expected one tag ending with '=' (e.g. prio=)".into()));
            }
            cfg.sched.priority_tag = Some(value.to_string());
        }
        "priority_aging_ms" => cfg.sched.priority_aging_ms = Some(int(0, i64::MAX)? as u64),
        "fair_share_key" => {
            cfg.sched.fair_share_key = Some(match value.to_ascii_lowercase().as_str() {
                "archive_id" => FairShareKey::ArchiveId,
                "uid" => FairShareKey::Uid,
                "gid" => FairShareKey::Gid,
                "projid" => FairShareKey::ProjId,
                _ if value.ends_with('=') && words.len() == 1 => {
                    FairShareKey::DataTag(value.to_string())
                }
                _ => {
                    return Err(bad(
                        "expected archive_id, uid, gid, projid or a data tag ending with '='"
                            .into(),
                    ));
                }
            })
        }
        "fair_share_weight" => {
            let [v, w] = words.as_slice() else {
                return Err(bad("expected <value> <weight>".into()));
            };
            let w = parse_c_range(w, 1, i64::from(u32::MAX))
                .map_err(|r| bad(format!("weight: {r}")))?;
            cfg.sched.fair_share_weights.push((v.to_string(), w as u32));
        }
        "fair_share_default_weight" => {
            cfg.sched.fair_share_default_weight = Some(int(1, i64::from(u32::MAX))? as u32)
        }
        k if CLIENT_KEYS.contains(&k) => {}
        _ => warn(format!("unknown key {key}")),
    }
    Ok(())
}

/// Applies the `COORDINATOOL_*` environment variables on top of `cfg`.
pub fn apply_env(
    cfg: &mut ServerConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<(), ConfigError> {
    if let Some(v) = env("COORDINATOOL_HOST") {
        cfg.host = v;
    }
    if let Some(v) = env("COORDINATOOL_PORT") {
        cfg.port = v;
    }
    if let Some(v) = env("COORDINATOOL_REDIS_HOST") {
        cfg.redis_host = v;
    }
    let mut soft_int = |var: &str, max: i64| -> Option<i64> {
        let v = env(var)?;
        match parse_c_range(&v, 0, max) {
            Ok(n) => Some(n),
            Err(reason) => {
                // Upstream only logs these and keeps the previous value.
                warnings.push(ConfigWarning {
                    location: var.to_string(),
                    message: format!("invalid value {v:?} ({reason}): ignored"),
                });
                None
            }
        }
    };
    if let Some(n) = soft_int("COORDINATOOL_REDIS_PORT", 65535) {
        cfg.redis_port = n as u16;
    }
    if let Some(n) = soft_int("COORDINATOOL_CLIENT_GRACE", INT_MAX) {
        cfg.client_grace_ms = n as u64;
    }
    let hard = |var: &str, value: String, reason: String| ConfigError::BadEnv {
        var: var.to_string(),
        value,
        reason,
    };
    if let Some(v) = env("COORDINATOOL_VERBOSE") {
        cfg.verbosity = v
            .parse()
            .map_err(|r| hard("COORDINATOOL_VERBOSE", v.clone(), r))?;
    }
    if let Some(v) = env("COORDINATOOL_STORE") {
        cfg.store = v
            .parse()
            .map_err(|r| hard("COORDINATOOL_STORE", v.clone(), r))?;
        cfg.store_choice = StoreChoice::Configured;
    }
    if let Some(v) = env("COORDINATOOL_STATE_DIR") {
        cfg.state_dir_override = Some(PathBuf::from(v));
    }
    Ok(())
}

fn apply_cli(cfg: &mut ServerConfig, parsed: &cli::Parsed) -> Result<(), ConfigError> {
    let mut cli_archives: Option<Vec<u32>> = None;
    for o in &parsed.opts {
        let arg = o.arg.clone().unwrap_or_default();
        let bad = |reason: String| ConfigError::BadOption {
            option: o.spelled.clone(),
            value: arg.clone(),
            reason,
        };
        match o.id {
            cli::OptId::Verbose => cfg.verbosity = cfg.verbosity.raised(),
            cli::OptId::Quiet => cfg.verbosity = cfg.verbosity.lowered(),
            cli::OptId::Config | cli::OptId::Help | cli::OptId::Version => {}
            cli::OptId::Archive => {
                let id = parse_c_range(&arg, 1, INT_MAX).map_err(bad)? as u32;
                // The first -A discards the config file's archive ids.
                let ids = cli_archives.get_or_insert_with(Vec::new);
                if ids.len() >= MAX_ARCHIVE_IDS {
                    return Err(bad(format!("more than {MAX_ARCHIVE_IDS} archive ids")));
                }
                ids.push(id);
            }
            cli::OptId::Port => cfg.port = arg,
            cli::OptId::Host => cfg.host = arg,
            cli::OptId::RedisHost => cfg.redis_host = arg,
            cli::OptId::RedisPort => {
                cfg.redis_port = parse_c_range(&arg, 0, 65535).map_err(bad)? as u16
            }
            cli::OptId::ClientGrace => {
                cfg.client_grace_ms = parse_c_range(&arg, 0, INT_MAX).map_err(bad)? as u64
            }
        }
    }
    if let Some(ids) = cli_archives {
        cfg.archive_ids = ids;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
