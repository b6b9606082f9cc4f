//! The end-to-end benchmark's harness at a small size, so that it cannot silently rot: 200
//! files, 2 movers, with each store; every request must finish exactly once (one SUCCEED
//! record per file on the MDT, `archived` set on every file, nothing failed, every item
//! begun and ended once by the movers, the server counting each done once).

#[path = "../../tests/sim_common/mod.rs"]
mod sim_common;

#[path = "../../tests/e2e_common/mod.rs"]
mod e2e_common;

#[allow(dead_code)]
#[path = "harness.rs"]
mod harness;

use harness::{Options, Store, run};

fn check(store: Store) {
    let report = run(&Options {
        files: 200,
        movers: 2,
        threads: 2,
        store,
        ..Options::default()
    });
    report.print();
    assert_eq!(report.requests, 200);
    assert_eq!(report.not_archived, 0, "files left without `archived`");
    assert_eq!(report.files_not_once, 0, "files with other than one record");
    assert_eq!(
        report.records.get("SUCCEED"),
        Some(&200),
        "{:?}",
        report.records
    );
    assert_eq!(
        report.records.values().sum::<usize>(),
        200,
        "records other than SUCCEED: {:?}",
        report.records
    );
    assert_eq!(
        report.movers.iter().map(|m| m.items).sum::<u64>(),
        200,
        "items begun and ended by the movers: {:?}",
        report.movers
    );
    assert!(
        report.movers.iter().all(|m| m.errors == 0),
        "{:?}",
        report.movers
    );
    assert_eq!(report.server_done, 200, "the server's done_archive");
    assert!(report.all_done_once());
    // The measurements the benchmark reports were taken.
    assert!(report.secs > 0.0 && report.admission_calls == 4);
    assert!(report.cpu_server.total_ms >= 0.0 && report.server_received_ms.is_some());
}

#[test]
fn e2e_harness_200_files_2_movers_embedded_store() {
    check(Store::Embedded);
}

#[test]
fn e2e_harness_200_files_2_movers_no_store() {
    check(Store::None);
}

#[test]
fn e2e_harness_arguments() {
    let a =
        |v: &[&str]| harness::parse_args(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let runs = a(&["1000", "3", "8", "--store", "none", "--per-call", "40"]).unwrap();
    assert_eq!(runs.len(), 1);
    let o = &runs[0];
    assert_eq!((o.files, o.movers, o.threads, o.per_call), (1000, 3, 8, 40));
    assert_eq!(o.store, Store::None);
    assert_eq!(a(&["--bench"]).unwrap().len(), 2);
    assert!(a(&["--store", "redis"]).unwrap_err().contains("--store"));
    assert!(a(&["0"]).unwrap_err().contains("FILES"));
    assert!(a(&["--per-call", "53"]).unwrap_err().contains("52"));
    assert!(a(&["1", "2", "3", "4"]).unwrap_err().contains("too many"));
}
