//! `coordinatool-server`: the coordinatool daemon (work in progress, see issue 6).

fn main() {
    eprintln!(
        "coordinatool-server {}: the server is not implemented yet (issue 6)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
