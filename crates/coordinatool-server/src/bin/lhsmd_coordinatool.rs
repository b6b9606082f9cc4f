//! `lhsmd_coordinatool`: the upstream name of the coordinatool daemon, same program.

fn main() -> std::process::ExitCode {
    coordinatool_server::daemon::main()
}
