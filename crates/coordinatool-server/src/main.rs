//! `coordinatool-server`: the coordinatool daemon (see the library crate).

fn main() -> std::process::ExitCode {
    coordinatool_server::daemon::main()
}
