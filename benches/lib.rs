//! Cross-crate benchmarks live here; per-crate criterion benches live in each crate.
