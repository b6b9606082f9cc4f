//! `coordinatool-sim`: the simulated Lustre daemon and its `lfs`/`lctl` commands.
//! Logs go to stderr; `COORDINATOOL_SIM_LOG` takes a tracing filter (default `info`).

use std::io;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env(
            "COORDINATOOL_SIM_LOG",
        ))
        .with_writer(io::stderr)
        .init();
    let argv: Vec<String> = std::env::args().collect();
    let stdin = io::stdin();
    let mut stdin = stdin.lock();
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    let rc = coordinatool_sim::cli::main_with_args(
        &argv,
        &mut coordinatool_sim::cli::Io {
            stdin: &mut stdin,
            out: &mut out,
            err: &mut err,
        },
    );
    std::process::exit(rc);
}
