//! `coordinatool-client`: the operator CLI (work in progress, see issue 7).

fn main() {
    eprintln!(
        "coordinatool-client {}: the client is not implemented yet (issue 7)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
