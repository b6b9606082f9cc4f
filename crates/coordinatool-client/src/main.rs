//! `coordinatool-client`: the operator CLI (see the library documentation).

fn main() -> std::process::ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    std::process::ExitCode::from(coordinatool_client::app::run(std::env::args_os(), &env))
}
