//! `coordinatool-client bench` (the load generator) against the real server on the simulated
//! Lustre with its embedded store: every queued request is received and acknowledged
//! exactly once, and the server's own counters say so.

mod e2e_common;
mod sim_common;

use coordinatool_proto::StatusReply;
use e2e_common::{Server, cli_at, free_port};
use sim_common::Sim;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `bench` with `args`; returns its JSON summary line, parsed.
fn bench(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--timeout", "10", "bench", "--stall", "20"];
    a.extend_from_slice(args);
    let out = server.cli(&a);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}",
        text(&out.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("JSON line {last:?}: {e}"))
}

fn idle(st: &StatusReply) -> bool {
    [
        st.running_archive,
        st.running_restore,
        st.running_remove,
        st.pending_archive,
        st.pending_restore,
        st.pending_remove,
    ]
    .iter()
    .all(|n| *n == 0)
}

#[test]
fn e2e_bench_does_every_queued_request_exactly_once() {
    let sim = Sim::start("e2e-bench");
    let server = Server::start(&sim);

    // Several items per recv, pipelined dones: 3000 requests over 6 movers.
    let r = bench(
        &server,
        &[
            "-n",
            "6",
            "-k",
            "8",
            "--queue",
            "3000",
            "--queue-chunk",
            "700",
            "--first-cookie",
            "1000",
        ],
    );
    assert_eq!(r["queued"], 3000);
    assert_eq!(r["round_trips"], 3000, "{r}");
    assert_eq!(r["done_errors"], 0, "{r}");
    assert_eq!(r["movers"], 6);
    let recvs = r["recvs"].as_u64().unwrap();
    assert!(
        (375..=3000).contains(&recvs),
        "at most 8 items per recv: {r}"
    );
    assert!(r["round_trips_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["done_latency_us"]["count"].as_u64().unwrap() > 0, "{r}");

    let st = server.status();
    assert_eq!(st.done_archive, 3000, "the server counted every done once");
    assert!(idle(&st), "nothing left running or pending: {st:?}");

    // One item per recv, anonymous movers, human output before the JSON line.
    let out = server.cli(&[
        "--timeout",
        "10",
        "bench",
        "-n",
        "3",
        "--queue",
        "500",
        "--anonymous",
        "--first-cookie",
        "100000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("500 round trips (500 recv replies)"),
        "{stdout}"
    );
    assert!(stdout.contains("round trips/s"), "{stdout}");
    let st = server.status();
    assert_eq!(st.done_archive, 3500);
    assert!(idle(&st), "{st:?}");

    // The same cookies again: the requests are done and gone, so they are new again.
    let r = bench(
        &server,
        &[
            "-n",
            "2",
            "-k",
            "-1",
            "--queue",
            "200",
            "--first-cookie",
            "1000",
            "--json",
        ],
    );
    assert_eq!(r["round_trips"], 200);
    assert_eq!(r["max_items"], -1);
    assert_eq!(server.status().done_archive, 3700);
}

#[test]
fn e2e_bench_stops_on_count_and_reports_a_refused_queue() {
    let sim = Sim::start("e2e-bench-count");
    let server = Server::start(&sim);
    // Queue 400 with a count of 150: the run stops early, the rest stays with the server.
    let r = bench(
        &server,
        &[
            "-n",
            "2",
            "-k",
            "4",
            "--queue",
            "400",
            "--count",
            "150",
            "--first-cookie",
            "7000",
            "--json",
        ],
    );
    let rt = r["round_trips"].as_u64().unwrap();
    assert!((150..=400).contains(&rt), "{r}");
    // The movers were named: what they held stays assigned to them for their grace period;
    // everything else is still pending. Nothing is lost and nothing was done twice. Dones
    // in flight when the run stopped are done on the server without being counted by bench.
    let st = server.status();
    assert!(
        st.done_archive >= rt && st.done_archive <= rt + 8,
        "{st:?} vs {r}"
    );
    let left = u64::from(st.pending_archive) + u64::from(st.running_archive);
    assert_eq!(left + st.done_archive, 400, "{st:?}");

    // Queueing the same cookies while they are still known: skipped, so bench refuses.
    let out = server.cli(&[
        "--timeout",
        "10",
        "bench",
        "--queue",
        "10",
        "--first-cookie",
        "7390",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("skipped"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn e2e_bench_without_a_server_exits_3() {
    let port = free_port();
    let out = cli_at(port, &["bench", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}
