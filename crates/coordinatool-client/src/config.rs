//! Client configuration (file, environment, defaults), parsed by `coordinatool-config`, the
//! parser the movers' library uses too.
//!
//! The file is the server's (`/etc/coordinatool.conf`): one `key value` per line, `#` starts
//! a comment line, keys are case-insensitive, the server's keys are silently ignored and
//! unknown keys are warned about. Precedence: environment > file > default; command-line
//! options are applied on top by the caller.

pub use coordinatool_config::{
    ClientConfig, ConfigError, ConfigWarning, DEFAULT_CONFIG_PATH, DEFAULT_HAL_SIZE, DEFAULT_HOST,
    DEFAULT_PORT, ENV_CONF, Origin, Verbosity, config_path, short_hostname,
};
