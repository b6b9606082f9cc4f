//! The coordinatool server (`lhsmd_coordinatool`): configuration, persistence and reporting.
//!
//! The binaries (`coordinatool-server` and its upstream name `lhsmd_coordinatool`) are thin:
//! they call [`run_main`]. Everything else lives in modules usable from tests and benches:
//!
//! * [`config`]: command line, config file, environment and sysconfig files, as upstream.
//! * [`store`]: the [`Store`](store::Store) trait with the embedded (redb) and Redis
//!   implementations; one group commit per turn of the event loop.
//! * [`report`]: report files (`new/assign/sent/progress/done/cancel`) and their deletion
//!   schedule.
//! * [`notify`]: `sd_notify` (READY, STATUS, WATCHDOG, STOPPING) for `Type=notify` units.

pub mod config;
pub mod daemon;
pub mod notify;
pub mod report;
pub mod store;

use std::process::ExitCode;

/// The whole program: parses the configuration, sets up logging and runs the server.
pub fn run_main() -> ExitCode {
    let mut argv = std::env::args_os();
    let prog = argv
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "coordinatool-server".into());
    let mut args = Vec::new();
    for (i, a) in argv.enumerate() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(a) => {
                eprintln!("{prog}: argument {} is not valid UTF-8: {a:?}", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    let env = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let loaded = match config::load(&prog, &args, &env) {
        Ok(config::Invocation::Run(l)) => l,
        Ok(config::Invocation::Help(t) | config::Invocation::Version(t)) => {
            print!("{t}");
            if !t.ends_with('\n') {
                println!();
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            if matches!(e, config::ConfigError::Usage(_)) {
                eprint!("{}", config::usage(&prog));
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(loaded.config.verbosity);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    tracing::error!("the server event loop is not implemented yet (issue 6)");
    ExitCode::from(2)
}

fn init_logging(v: config::Verbosity) {
    tracing_subscriber::fmt()
        .with_max_level(v.level_filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
