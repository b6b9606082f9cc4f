//! End-to-end benchmark: requests per second from Lustre intake to done, through the
//! simulated Lustre, the `coordinatool-server` binary and movers copying no data under the
//! preload library (see `harness.rs`).
//!
//! `cargo bench -p coordinatool-benches --bench e2e -- [FILES [MOVERS [THREADS]]]
//! [--store embedded|none|both] [--per-call N] [--max-requests N] [--pipelined]`
//!
//! Defaults: 20,000 files, 2 movers, 4 threads each, both stores, 50 files per
//! `hsm_archive` call, `max_requests=1000` per MDT (2 MDTs).

#[path = "../../tests/sim_common/mod.rs"]
mod sim_common;

#[path = "../../tests/e2e_common/mod.rs"]
mod e2e_common;

#[path = "harness.rs"]
mod harness;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match harness::parse_args(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("e2e bench: {e}");
            eprintln!(
                "usage: e2e [FILES [MOVERS [THREADS]]] [--store embedded|none|both] [--per-call N] [--max-requests N] [--pipelined]"
            );
            std::process::exit(2);
        }
    };
    let mut ok = true;
    for opts in &runs {
        let report = harness::run(opts);
        report.print();
        ok &= report.all_done_once();
    }
    if !ok {
        eprintln!("e2e bench: some request did not finish exactly once");
        std::process::exit(1);
    }
}
