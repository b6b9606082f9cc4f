//! `coordinatool-client`: the operator CLI (see the library documentation).

fn main() -> std::process::ExitCode {
    // Like other command-line tools, die quietly when stdout is a closed pipe
    // (`coordinatool-client man | head`). Sockets are unaffected: std writes to them with
    // MSG_NOSIGNAL, so a server that went away is still an error (exit 3), not a signal.
    // SAFETY: called before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let env = |k: &str| std::env::var(k).ok();
    std::process::ExitCode::from(coordinatool_cli::app::run(std::env::args_os(), &env))
}
