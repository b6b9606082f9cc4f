//! Client configuration: `/etc/coordinatool.conf` (or `$COORDINATOOL_CONF`) and the
//! `COORDINATOOL_*` environment, parsed by `coordinatool-config` exactly as the CLI parses
//! them (one parser, so the movers and the CLI cannot disagree on a key).
//!
//! Precedence is environment > file > default. The server's keys are skipped silently; unknown
//! keys and keys without a value are warned about. A bad value for one of the client keys is an
//! error (registration fails with its errno).

use coordinatool_lustre::LlapiLogLevel;

pub use coordinatool_config::{
    ClientConfig as Config, ConfigError, DEFAULT_HAL_SIZE, MIN_HAL_SIZE, Verbosity,
};

/// A loaded configuration and the warnings met while reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Warnings (unknown keys, keys without value, text ignored after a size suffix), each
    /// naming its file and line or environment variable.
    pub warnings: Vec<String>,
}

/// Loads the configuration of this process: `$COORDINATOOL_CONF` (must exist) or
/// `/etc/coordinatool.conf` (optional), then the environment.
pub fn load() -> Result<Loaded, ConfigError> {
    let (config, warnings) = Config::load(None, &|k| std::env::var(k).ok())?;
    Ok(Loaded {
        config,
        warnings: warnings.iter().map(ToString::to_string).collect(),
    })
}

/// The liblustreapi log level of a configured verbosity (same numbering).
pub fn log_level(v: Verbosity) -> LlapiLogLevel {
    LlapiLogLevel::from_raw(v.level() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verbosity_maps_to_the_same_llapi_level() {
        for n in 0..=6 {
            assert_eq!(log_level(Verbosity::from_level(n)) as i32, n);
        }
    }
}
