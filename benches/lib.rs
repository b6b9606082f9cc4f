//! Cross-crate benchmarks live here; per-crate criterion benches live in each crate.
//!
//! * `e2e` (`benches/e2e/`): requests per second from Lustre intake to done, through the
//!   simulated Lustre, the `coordinatool-server` binary and no-copy movers
//!   (`coordinatool-e2e-mover`) under the preload library. Run it with
//!   `cargo bench -p coordinatool-benches --bench e2e -- [FILES [MOVERS [THREADS]]]`; the
//!   `e2e_harness` test runs the same harness on 200 files and checks that every request
//!   finished exactly once.
