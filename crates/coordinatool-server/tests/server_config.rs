//! Every configuration key, end to end: the real server binary started with the key (in
//! the config file, the environment or on the command line) against the simulated Lustre,
//! and its effect observed through the protocol, the files it writes, the MDT or the logs.
//! The config module's unit tests cover parsing and errors; these cover the wiring.
//!
//! | key (env, option) | test |
//! |---|---|
//! | `host` (`COORDINATOOL_HOST`, `-H`) | [`listen_address_keys_env_and_options`] |
//! | `port` (`COORDINATOOL_PORT`, `-p`) | [`listen_address_keys_env_and_options`] |
//! | `verbose` (`COORDINATOOL_VERBOSE`, `-v`, `-q`) | [`verbose_key_env_and_options`] |
//! | `archive_id` (`-A`) | [`archive_id_key_and_option_register_those_archives`] |
//! | `redis_host`, `redis_port` (`COORDINATOOL_REDIS_*`, `--redis-*`) | `server_redis.rs`; empty host: [`store_none_and_an_empty_redis_host_keep_nothing`] |
//! | `client_grace_ms` (`COORDINATOOL_CLIENT_GRACE`, `--client-grace`) | `server_e2e.rs` (grace, takeover); env and option: [`client_grace_env_and_option`] |
//! | `archive_on_hosts` | [`archive_on_hosts_sends_tagged_archives_to_their_host_only`] |
//! | `archive_on_hosts_ch`, `archive_on_hosts_ch_hash` | [`archive_on_hosts_ch_in_both_hash_modes`] |
//! | `batch_archives_slices_sec`, `batch_archives_slots_per_client` | [`batch_keys_give_each_client_its_slots`], [`a_batch_slice_expiry_wakes_the_timer_and_frees_the_slot`] |
//! | `reporting_dir`, `reporting_hint` | `server_ops.rs` (report files) |
//! | `reporting_schedule_interval_ms` | [`reporting_interval_reports_progress_and_deletes_files`], [`reporting_interval_reports_progress_of_archives_and_removes`] |
//! | `store`, `state_dir` (`COORDINATOOL_STORE`, `COORDINATOOL_STATE_DIR`) | [`state_dir_key_and_env_place_the_embedded_store`], [`store_none_and_an_empty_redis_host_keep_nothing`] |
//! | `priority_restore`, `priority_remove`, `priority_archive` | [`priority_keys_order_the_kinds`] |
//! | `priority_tag` | [`priority_tag_orders_within_a_kind`] |
//! | `priority_aging_ms` | [`priority_aging_lets_old_work_overtake`] |
//! | `fair_share_key` (data tag), `fair_share_weight`, `fair_share_default_weight` | [`fair_share_keys_split_one_reply`] |
//! | `fair_share_key` `archive_id` | [`fair_share_by_archive_id`] |
//! | `fair_share_key` `uid`, `gid` (`projid`: same lookup, not settable on the test filesystem) | [`fair_share_by_file_owner`] |
//! | client keys (`client_id`, `max_*`, `hal_size`), unknown keys | [`client_keys_are_ignored_and_unknown_keys_warn`] |
//!
//! Not keys: the write stall timeout, the TCP keepalive and the outbox limit are constants of
//! the daemon (`WRITE_STALL`, `OUTBOX_LIMIT`), tested in `server_ops.rs`.

mod server_common;

use coordinatool_lustre::{HsmAction, LuFid};
use coordinatool_proto::{
    DoneRequest, EhloRequest, QueueRequest, RecvRequest, Reply, Request, StatusReply,
    StatusRequest, WireHai,
};
use server_common::{Client, Server, Sim, config, server_command, wait_until};
use std::path::Path;

fn hai(action: HsmAction, n: u32, archive_id: u32, data: &str) -> WireHai {
    let mut h = WireHai::new(
        action,
        LuFid::new(0x2_0000_0401, n, 0),
        1_000 + u64::from(n),
    );
    h.archive_id = archive_id;
    h.data = data.as_bytes().to_vec();
    h
}

fn archive(n: u32, data: &str) -> WireHai {
    hai(HsmAction::Archive, n, 1, data)
}

fn queue(c: &mut Client, items: Vec<WireHai>) {
    let n = items.len();
    match c.call(&Request::Queue(QueueRequest {
        items,
        fsname: None,
    })) {
        Reply::Queue(q) => assert_eq!((q.status, q.enqueued), (0, n as u64), "{q:?}"),
        other => panic!("{other:?}"),
    }
}

fn status(c: &mut Client, verbose: i32) -> StatusReply {
    match c.call(&Request::Status(StatusRequest { verbose })) {
        Reply::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

fn mover(srv: &Server, id: &str) -> Client {
    let mut m = srv.connect();
    assert_eq!(
        m.call_text(&Request::Ehlo(EhloRequest::new(Some(id.into())))),
        r#"{"command":"ehlo"}"#
    );
    m
}

/// One `recv`; the items of the reply.
fn recv(m: &mut Client, r: RecvRequest) -> Vec<WireHai> {
    match m.call(&Request::Recv(r)) {
        Reply::Recv(r) => r.hal.expect("a list").list,
        other => panic!("{other:?}"),
    }
}

/// A `recv` with the smallest budget: exactly one item.
fn recv_one(m: &mut Client) -> WireHai {
    let mut got = recv(
        m,
        RecvRequest {
            max_bytes: 172,
            ..RecvRequest::default()
        },
    );
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listen_address_keys_env_and_options() {
    let sim = Sim::start("listen");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    // The last `port` line wins over the harness's `port 0`.
    let conf = config(&sim, &format!("port {p1}\n"));
    let srv = Server::start(&sim, &conf);
    assert_eq!(srv.addr, format!("127.0.0.1:{p1}"));
    drop(srv);
    // Environment over file.
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_PORT", p2.to_string());
    let srv = Server::spawn(cmd);
    assert_eq!(srv.addr, format!("127.0.0.1:{p2}"));
    drop(srv);
    // Option over environment; host from the environment over the file's.
    let conf = config(&sim, &format!("host 192.0.2.1\nport {p1}\n"));
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_PORT", p2.to_string())
        .env("COORDINATOOL_HOST", "127.0.0.1")
        .args(["-p", &p3.to_string()]);
    let srv = Server::spawn(cmd);
    assert_eq!(srv.addr, format!("127.0.0.1:{p3}"));
    drop(srv);
    // -H over the environment.
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_HOST", "192.0.2.1")
        .args(["-H", "127.0.0.1", "-p", "0"]);
    let srv = Server::spawn(cmd);
    assert!(srv.addr.starts_with("127.0.0.1:"), "{}", srv.addr);
    srv.connect();
}

/// What a server logged at some level: the intake's `enqueued` line (upstream's LOG_INFO)
/// and the per-message protocol lines (upstream's LOG_DEBUG).
#[derive(Debug, PartialEq, Eq)]
struct Logged {
    intake: bool,
    protocol: bool,
}

const NEITHER: Logged = Logged {
    intake: false,
    protocol: false,
};
const INTAKE: Logged = Logged {
    intake: true,
    protocol: false,
};
const BOTH: Logged = Logged {
    intake: true,
    protocol: true,
};

/// Starts a server with `cmd`, makes one `status` call and archives a file through Lustre,
/// then waits for the WARN line of a malformed message, which comes after both; returns
/// which of the two were logged.
fn logged(sim: &Sim, cmd: std::process::Command, n: &str) -> Logged {
    let mut srv = Server::spawn(cmd);
    let mut c = srv.connect();
    status(&mut c, 4);
    let (path, fid) = sim.file(n);
    sim.archive(&path);
    // (Requests of the earlier servers on this mount come back too: look for this one.)
    wait_until("the archive request is queued", || {
        status(&mut c, 6)
            .waiting_archive
            .is_some_and(|w| w.iter().any(|e| e.fid == fid))
    });
    let mut bad = srv.connect();
    bad.send_raw(br#"{"command":"nope"}"#);
    srv.wait_line(&["malformed message"]);
    let lines = srv.lines();
    Logged {
        protocol: lines.iter().any(|l| l.contains("Got something from"))
            && lines.iter().any(|l| l.contains("Sending message to")),
        intake: lines
            .iter()
            .any(|l| l.contains("enqueued (") && l.contains(&fid.to_string())),
    }
}

#[test]
fn verbose_key_env_and_options() {
    let sim = Sim::start("verbose");
    // Each server below leaves its request active on the MDT (default max_requests 3).
    let mnt = sim.mount.to_string_lossy().into_owned();
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &mnt,
        "set_param",
        "mdt.*.hsm.max_requests=100",
    ]);
    assert_eq!(rc, 0, "{err}");
    // The harness's config says `verbose info`: intake lines, no per-message lines (a busy
    // site's journal would get two lines per recv and per done).
    let conf = config(&sim, "");
    assert_eq!(logged(&sim, server_command(&sim, &conf), "v1"), INTAKE);
    let conf = config(&sim, "verbose normal\n");
    assert_eq!(logged(&sim, server_command(&sim, &conf), "v2"), NEITHER);
    // -v raises the file's level, once per -v.
    let mut cmd = server_command(&sim, &conf);
    cmd.arg("-v");
    assert_eq!(logged(&sim, cmd, "v3"), INTAKE);
    let mut cmd = server_command(&sim, &conf);
    cmd.arg("-vv");
    assert_eq!(logged(&sim, cmd, "v4"), BOTH);
    // The environment overrides the file, -q lowers it.
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_VERBOSE", "debug");
    assert_eq!(logged(&sim, cmd, "v5"), BOTH);
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_VERBOSE", "debug").arg("-q");
    assert_eq!(logged(&sim, cmd, "v6"), INTAKE);
    let mut cmd = server_command(&sim, &conf);
    cmd.env("COORDINATOOL_VERBOSE", "info").arg("-q");
    assert_eq!(logged(&sim, cmd, "v7"), NEITHER);
}

/// The `hsm.agents` line of the server's registration.
fn agents(sim: &Sim) -> String {
    sim.param("mdt.*.hsm.agents")
}

#[test]
fn archive_id_key_and_option_register_those_archives() {
    let sim = Sim::start("archids");
    let conf = config(&sim, "archive_id 2\narchive_id 3\n");
    let mut srv = Server::start(&sim, &conf);
    assert!(agents(&sim).contains("archive_id=2,3 "), "{}", agents(&sim));
    // Lustre gives the server archive 2's requests only.
    let (p1, f1) = sim.file("a1");
    let (p2, f2) = sim.file("a2");
    sim.lfs(&["hsm_archive", "-a", "1", &p1.to_string_lossy()]);
    sim.lfs(&["hsm_archive", "-a", "2", &p2.to_string_lossy()]);
    srv.wait_line(&["enqueued (0)", &f2.to_string()]);
    let mut c = srv.connect();
    assert_eq!(status(&mut c, 4).pending_archive, 1);
    assert!(
        !srv.lines().iter().any(|l| l.contains(&f1.to_string())),
        "archive 1 is not ours"
    );
    assert!(srv.signal(libc::SIGTERM).success());
    // The first -A replaces the file's list.
    let mut cmd = server_command(&sim, &conf);
    cmd.args(["-A", "5", "-A", "7"]);
    let _srv = Server::spawn(cmd);
    assert!(agents(&sim).contains("archive_id=5,7 "), "{}", agents(&sim));
}

#[test]
fn client_grace_env_and_option() {
    let sim = Sim::start("graceenv");
    // The file says 10 minutes; the environment says 50 ms: the requests of a killed
    // mover are queued again once it expires.
    let conf = config(&sim, "client_grace_ms 600000\n");
    for (env, opt) in [(Some("50"), None), (Some("600000"), Some("50"))] {
        let mut cmd = server_command(&sim, &conf);
        if let Some(e) = env {
            cmd.env("COORDINATOOL_CLIENT_GRACE", e);
        }
        if let Some(o) = opt {
            cmd.args(["--client-grace", o]);
        }
        let srv = Server::spawn(cmd);
        let mut c = srv.connect();
        queue(&mut c, vec![archive(1, "")]);
        let mut m = mover(&srv, "gone");
        assert_eq!(recv(&mut m, RecvRequest::default()).len(), 1);
        drop(m);
        wait_until("the killed mover's request is pending again", || {
            let st = status(&mut c, 4);
            st.pending_archive == 1 && st.clients.iter().all(|c| c.client_id != "gone")
        });
        // The embedded store keeps the request for the next round: finish it.
        let mut m = mover(&srv, "next");
        let h = recv(&mut m, RecvRequest::default()).remove(0);
        m.call(&Request::Done(DoneRequest {
            cookie: h.cookie,
            dfid: h.dfid,
            status: 0,
        }));
    }
}

#[test]
fn archive_on_hosts_sends_tagged_archives_to_their_host_only() {
    let sim = Sim::start("onhosts");
    let srv = Server::start(&sim, &config(&sim, "archive_on_hosts tag=n0 m0\n"));
    let mut c = srv.connect();
    let mut m1 = mover(&srv, "m1");
    queue(&mut c, vec![archive(1, "tag=n0"), archive(2, "other")]);
    let got = recv(&mut m1, RecvRequest::default());
    assert_eq!(
        got.iter().map(|h| h.dfid.oid).collect::<Vec<_>>(),
        vec![2],
        "m1 gets the untagged archive only"
    );
    // The tagged one waits for m0 (a placeholder until it connects).
    let st = status(&mut c, 6);
    let m0 = st.clients.iter().find(|c| c.client_id == "m0").expect("m0");
    assert_eq!(m0.waiting_archive.as_ref().map(Vec::len), Some(1));
    let mut m0 = mover(&srv, "m0");
    let got = recv(&mut m0, RecvRequest::default());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"tag=n0");
}

/// The data of the archives waiting on each client, from the status dump.
fn placed(c: &mut Client) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for cl in status(c, 6).clients {
        for e in cl.waiting_archive.unwrap_or_default() {
            v.push((cl.client_id.clone(), String::from_utf8(e.data).unwrap()));
        }
    }
    v.sort();
    v
}

#[test]
fn archive_on_hosts_ch_in_both_hash_modes() {
    let sim = Sim::start("ch");
    let items = || {
        (0..20)
            .map(|n| archive(n + 1, &format!("grouping=g{}", n % 5)))
            .collect::<Vec<_>>()
    };
    let line = "archive_on_hosts_ch grouping= 3 h1 h2 h3\n";
    for (mode, rewritten) in [("", false), ("archive_on_hosts_ch_hash upstream\n", true)] {
        let srv = Server::start(&sim, &config(&sim, &format!("{line}{mode}")));
        let mut c = srv.connect();
        queue(&mut c, items());
        let got = placed(&mut c);
        assert_eq!(got.len(), 20, "{got:?}");
        // One value, one host.
        let mut host_of = std::collections::HashMap::new();
        for (host, data) in &got {
            assert!(["h1", "h2", "h3"].contains(&host.as_str()), "{host}");
            assert_eq!(
                host_of.entry(data.clone()).or_insert(host),
                &host,
                "{got:?}"
            );
        }
        let values: std::collections::BTreeSet<&str> =
            got.iter().map(|(_, d)| d.as_str()).collect();
        if rewritten {
            // Upstream mode: the value becomes its bucket number, below hash_count.
            assert!(
                values
                    .iter()
                    .all(|v| matches!(v.strip_prefix("grouping="), Some("0" | "1" | "2"))),
                "{values:?}"
            );
        } else {
            let want: std::collections::BTreeSet<String> =
                (0..5).map(|g| format!("grouping=g{g}")).collect();
            assert_eq!(
                values,
                want.iter().map(String::as_str).collect(),
                "rendezvous keeps the data"
            );
        }
        // Clear the store for the next mode.
        drop(srv);
        let _ = std::fs::remove_dir_all(sim.state_dir());
    }
}

#[test]
fn batch_keys_give_each_client_its_slots() {
    let sim = Sim::start("batch");
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut c = srv.connect();
    let _m = mover(&srv, "m1");
    let st = status(&mut c, 4);
    assert!(st.clients[0].batches.is_empty(), "no batching by default");
    drop((c, _m, srv));

    let conf = config(
        &sim,
        "batch_archives_slices_sec 300 3600\nbatch_archives_slots_per_client 2\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut c = srv.connect();
    let mut m = mover(&srv, "m1");
    let st = status(&mut c, 4);
    let me = st.clients.iter().find(|c| c.client_id == "m1").unwrap();
    assert_eq!(me.batches.len(), 2);
    queue(&mut c, vec![archive(1, "tape=A"), archive(2, "tape=A")]);
    let got = recv(&mut m, RecvRequest::default());
    assert_eq!(got.len(), 2);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let st = status(&mut c, 4);
    let me = st.clients.iter().find(|c| c.client_id == "m1").unwrap();
    let slot = me
        .batches
        .iter()
        .find(|b| b.hint.as_deref() == Some("tape=A"))
        .unwrap_or_else(|| panic!("a slot for the hint: {:?}", me.batches));
    assert_eq!(slot.current_count, 2);
    // Idle slice 300 s, maximum 3600 s from the claim.
    assert!(
        (now_s + 200..=now_s + 300).contains(&slot.expire_idle_s),
        "{slot:?}"
    );
    assert!(
        (now_s + 3500..=now_s + 3600).contains(&slot.expire_max_s),
        "{slot:?}"
    );
}

/// The status dump (verbose 6) lists what waits in each batch slot (`batches[].waiting_archive`),
/// apart from the client's own queue and the global one (an unclaimed group's archives).
#[test]
fn status_dump_lists_the_archives_waiting_in_batch_slots() {
    let sim = Sim::start("batchdump");
    let conf = config(
        &sim,
        "batch_archives_slices_sec 300\nbatch_archives_slots_per_client 1\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut c = srv.connect();
    let mut m = mover(&srv, "m1");
    queue(
        &mut c,
        vec![
            archive(1, "tape=A"),
            archive(2, "tape=A"),
            archive(3, "tape=A"),
            archive(4, "tape=B"),
        ],
    );
    let got = recv(
        &mut m,
        RecvRequest {
            max_archive: Some(1),
            ..RecvRequest::default()
        },
    );
    assert_eq!(got.len(), 1, "{got:?}");
    let first = got[0].dfid.oid;
    let text = c.call_text(&Request::Status(StatusRequest { verbose: 6 }));
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = |n: u32| {
        let f = serde_json::json!({"f_seq": 0x2_0000_0401u64, "f_oid": n, "f_ver": 0});
        let data = if n == 4 { "tape=B" } else { "tape=A" };
        serde_json::json!({
            "hai_fid": f,
            "hai_dfid": f,
            "hai_cookie": 1_000 + n,
            "hai_data": data,
        })
    };
    let m1 = &raw["clients"][0];
    assert_eq!(m1["client_id"], "m1", "{text}");
    assert_eq!(m1["batches"][0]["hint"], "tape=A", "{text}");
    assert_eq!(m1["batches"][0]["current_count"], 1, "{text}");
    let waiting: Vec<serde_json::Value> = [1, 2, 3]
        .into_iter()
        .filter(|&n| n != first)
        .map(entry)
        .collect();
    assert_eq!(
        m1["batches"][0]["waiting_archive"],
        serde_json::Value::Array(waiting),
        "{text}"
    );
    assert_eq!(m1["waiting_archive"], serde_json::json!([]), "{text}");
    assert_eq!(
        m1["active_requests"],
        serde_json::json!([entry(first)]),
        "{text}"
    );
    assert_eq!(
        raw["waiting_archive"],
        serde_json::json!([entry(4)]),
        "{text}"
    );
    // Without the dump, the slot's list is left out.
    let st = status(&mut c, 4);
    assert_eq!(st.clients[0].batches[0].waiting_archive, None);
}

#[test]
fn reporting_interval_reports_progress_and_deletes_files() {
    let sim = Sim::start("reptick");
    let conf = config(
        &sim,
        "reporting_dir .rep\nreporting_hint cr\nreporting_schedule_interval_ms 50\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut c = srv.connect();
    queue(
        &mut c,
        vec![
            hai(HsmAction::Restore, 1, 1, "cr=job7"),
            hai(HsmAction::Restore, 2, 1, "other"),
        ],
    );
    let file = sim.mount.join(".rep").join("job7");
    wait_until("a progress line for the waiting restore", || {
        std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains("progress [0x200000401:0x1:0x0] global_queue 1/2\n"))
    });
    let mut m = mover(&srv, "m1");
    for h in recv(&mut m, RecvRequest::default()) {
        m.call(&Request::Done(DoneRequest {
            cookie: h.cookie,
            dfid: h.dfid,
            status: 0,
        }));
    }
    wait_until(
        "the report file is deleted a tick or two after its last request",
        || !file.exists(),
    );
}

/// Progress lines for archives and removes too (upstream: restores only, §9.4.17), with the
/// restores' line format: archives held in a mover's batch slot are numbered in that mover's
/// list, archives of an unclaimed batch group and removes in the global queue's.
#[test]
fn reporting_interval_reports_progress_of_archives_and_removes() {
    let sim = Sim::start("reptickar");
    let conf = config(
        &sim,
        "reporting_dir .rep\nreporting_hint cr\nreporting_schedule_interval_ms 50\n\
         batch_archives_slices_sec 300\nbatch_archives_slots_per_client 1\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut c = srv.connect();
    let mut m = mover(&srv, "m1");
    queue(
        &mut c,
        vec![
            archive(1, "cr=job8"),
            archive(2, "cr=job8"),
            archive(3, "cr=job8"),
        ],
    );
    // m1's slot claims the group and sends one: two stay in the slot.
    let got = recv(
        &mut m,
        RecvRequest {
            max_archive: Some(1),
            ..RecvRequest::default()
        },
    );
    assert_eq!(got.len(), 1, "{got:?}");
    let first = got[0].dfid.oid;
    queue(
        &mut c,
        vec![
            hai(HsmAction::Remove, 5, 1, "cr=job8"),
            // Another hint: a second group, unclaimed (m1 has one slot).
            archive(6, "cr=job8,b"),
        ],
    );
    let file = sim.mount.join(".rep").join("job8");
    let fid = |n: u32| LuFid::new(0x2_0000_0401, n, 0);
    let slot: Vec<u32> = [1, 2, 3].into_iter().filter(|&n| n != first).collect();
    let want = [
        format!("progress {} m1 1/2\n", fid(slot[0])),
        format!("progress {} m1 2/2\n", fid(slot[1])),
        format!("progress {} global_queue 1/1\n", fid(5)),
        format!("progress {} global_queue 1/1\n", fid(6)),
    ];
    wait_until(
        "progress lines for the slot's archives and the remove",
        || {
            std::fs::read_to_string(&file)
                .is_ok_and(|t| want.iter().all(|w| t.contains(w.as_str())))
        },
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&format!("progress {} ", fid(first))),
        "the running archive is not waiting: {text}"
    );
}

#[test]
fn state_dir_key_and_env_place_the_embedded_store() {
    let sim = Sim::start("statedir");
    let db = coordinatool_server::store::DB_FILE_NAME;
    let srv = Server::start(&sim, &config(&sim, ""));
    let mut c = srv.connect();
    queue(&mut c, vec![archive(1, "")]);
    let st = status(&mut c, 4);
    assert!(sim.state_dir().join(db).exists());
    assert_eq!(st.pending_archive, 1);
    drop((c, srv));
    // COORDINATOOL_STATE_DIR overrides the key: a fresh, empty store.
    let other = sim.root.join("other-state");
    let mut cmd = server_command(&sim, &config(&sim, ""));
    cmd.env("COORDINATOOL_STATE_DIR", &other);
    let srv = Server::spawn(cmd);
    let mut c = srv.connect();
    assert_eq!(status(&mut c, 4).pending_archive, 0);
    assert!(other.join(db).exists());
    drop((c, srv));
    // Back to the key's directory: the request is there.
    let srv = Server::start(&sim, &config(&sim, ""));
    assert_eq!(status(&mut srv.connect(), 4).pending_archive, 1);
}

/// Queues one archive, restarts the server with the same command, and returns what it
/// recovered.
fn pending_after_restart(sim: &Sim, mk: &dyn Fn() -> std::process::Command) -> u32 {
    let mut srv = Server::spawn(mk());
    let mut c = srv.connect();
    queue(&mut c, vec![archive(9, "")]);
    assert!(srv.signal(libc::SIGTERM).success());
    let srv = Server::spawn(mk());
    let _ = sim;
    status(&mut srv.connect(), 4).pending_archive
}

#[test]
fn store_none_and_an_empty_redis_host_keep_nothing() {
    let sim = Sim::start("nostore");
    let conf = config(&sim, "store none\n");
    assert_eq!(
        pending_after_restart(&sim, &|| server_command(&sim, &conf)),
        0
    );
    assert!(!sim.state_dir().exists());
    // The environment's store kind over the file's.
    let conf = config(&sim, "store none\n");
    let mk = || {
        let mut cmd = server_command(&sim, &conf);
        cmd.env("COORDINATOOL_STORE", "embedded");
        cmd
    };
    assert_eq!(pending_after_restart(&sim, &mk), 1);
    // Redis with an empty host (only possible through the environment or the option) is
    // no store at all, as upstream; nobody listens on the redis port.
    let conf = config(&sim, &format!("store redis\nredis_port {}\n", free_port()));
    let mk = || {
        let mut cmd = server_command(&sim, &conf);
        cmd.env("COORDINATOOL_REDIS_HOST", "");
        cmd
    };
    let mut srv = Server::spawn(mk());
    srv.wait_line(&["redis host is empty"]);
    let st = status_raw(&mut srv.connect());
    assert_eq!(
        st["store"],
        serde_json::json!({"kind": "none", "state": "ok"})
    );
    drop(srv);
    assert_eq!(pending_after_restart(&sim, &mk), 0);
    let mk = || {
        let mut cmd = server_command(&sim, &conf);
        cmd.args(["--redis-host", ""]);
        cmd
    };
    assert_eq!(pending_after_restart(&sim, &mk), 0);
}

/// A `status` reply as raw JSON (for keys the typed reply does not have).
fn status_raw(c: &mut Client) -> serde_json::Value {
    let text = c.call_text(&Request::Status(StatusRequest { verbose: 4 }));
    serde_json::from_str(&text).unwrap()
}

/// The kinds of the first `n` single-item replies to one mover, after queueing `items`.
fn order_of(extra: &str, items: Vec<WireHai>, n: usize) -> Vec<(HsmAction, u32)> {
    let sim = Sim::start("prio");
    let srv = Server::start(&sim, &config(&sim, extra));
    let mut c = srv.connect();
    queue(&mut c, items);
    let mut m = mover(&srv, "m");
    (0..n)
        .map(|_| {
            let h = recv_one(&mut m);
            (h.action, h.dfid.oid)
        })
        .collect()
}

#[test]
fn priority_keys_order_the_kinds() {
    let items = || {
        vec![
            hai(HsmAction::Archive, 1, 1, ""),
            hai(HsmAction::Remove, 2, 1, ""),
            hai(HsmAction::Restore, 3, 1, ""),
        ]
    };
    use HsmAction::{Archive, Remove, Restore};
    // Defaults: restore 2, remove 1, archive 0.
    assert_eq!(
        order_of("", items(), 3),
        vec![(Restore, 3), (Remove, 2), (Archive, 1)]
    );
    assert_eq!(
        order_of(
            "priority_archive 9\npriority_restore -1\npriority_remove 4\n",
            items(),
            3
        ),
        vec![(Archive, 1), (Remove, 2), (Restore, 3)]
    );
}

#[test]
fn priority_tag_orders_within_a_kind() {
    let items = || {
        vec![
            archive(1, "x=1"),
            archive(2, "prio=-5"),
            archive(3, "a=b,prio=7"),
        ]
    };
    let oids = |v: Vec<(HsmAction, u32)>| v.into_iter().map(|(_, o)| o).collect::<Vec<_>>();
    assert_eq!(oids(order_of("", items(), 3)), vec![1, 2, 3]);
    assert_eq!(
        oids(order_of("priority_tag prio=\n", items(), 3)),
        vec![3, 1, 2]
    );
}

#[test]
fn priority_aging_lets_old_work_overtake() {
    let sim = Sim::start("aging");
    for (aging, first) in [
        ("priority_aging_ms 0\n", HsmAction::Restore),
        ("priority_aging_ms 1\n", HsmAction::Archive),
    ] {
        let srv = Server::start(&sim, &config(&sim, aging));
        let mut c = srv.connect();
        queue(&mut c, vec![archive(1, "")]);
        // The archive must be older than a few aging units before the restore comes.
        let t = std::time::Instant::now();
        wait_until("the archive has aged", || {
            t.elapsed() > std::time::Duration::from_millis(30)
        });
        queue(&mut c, vec![hai(HsmAction::Restore, 2, 1, "")]);
        let mut m = mover(&srv, "m");
        assert_eq!(recv_one(&mut m).action, first, "{aging}");
        drop((m, c, srv));
        let _ = std::fs::remove_dir_all(sim.state_dir());
    }
}

/// How many of one reply of 20 archives carry `user=alice`, out of 40 alice archives queued
/// before 40 of bob.
fn alice_share(extra: &str) -> usize {
    let sim = Sim::start("share");
    let srv = Server::start(&sim, &config(&sim, extra));
    let mut c = srv.connect();
    let mut items: Vec<WireHai> = (1..=40).map(|n| archive(n, "user=alice")).collect();
    items.extend((41..=80).map(|n| archive(n, "user=bob")));
    queue(&mut c, items);
    let mut m = mover(&srv, "m");
    let got = recv(
        &mut m,
        RecvRequest {
            max_archive: Some(20),
            ..RecvRequest::default()
        },
    );
    assert_eq!(got.len(), 20);
    got.iter().filter(|h| h.data == b"user=alice").count()
}

#[test]
fn fair_share_keys_split_one_reply() {
    assert_eq!(alice_share(""), 20, "arrival order without fair share");
    let even = alice_share("fair_share_key user=\n");
    assert!((9..=11).contains(&even), "{even}");
    let weighted = alice_share("fair_share_key user=\nfair_share_weight alice 3\n");
    assert!((14..=16).contains(&weighted), "{weighted}");
    let default = alice_share(
        "fair_share_key user=\nfair_share_weight alice 1\nfair_share_default_weight 3\n",
    );
    assert!((4..=6).contains(&default), "{default}");
}

#[test]
fn fair_share_by_archive_id() {
    let sim = Sim::start("sharearch");
    let srv = Server::start(&sim, &config(&sim, "fair_share_key archive_id\n"));
    let mut c = srv.connect();
    let mut items: Vec<WireHai> = (1..=10)
        .map(|n| hai(HsmAction::Archive, n, 1, ""))
        .collect();
    items.extend((11..=20).map(|n| hai(HsmAction::Archive, n, 2, "")));
    queue(&mut c, items);
    let mut m = mover(&srv, "m");
    // One reply carries one archive id: alternate between them.
    let ids: Vec<u32> = (0..4).map(|_| recv_one(&mut m).archive_id).collect();
    assert_eq!(ids.iter().filter(|&&a| a == 2).count(), 2, "{ids:?}");
}

#[test]
fn client_keys_are_ignored_and_unknown_keys_warn() {
    let sim = Sim::start("keys");
    let conf = config(
        &sim,
        "client_id x\nmax_archive 3\nmax_restore 3\nmax_remove 3\nhal_size 1M\nfrobnicate 1\n",
    );
    let srv = Server::start(&sim, &conf);
    let warn: Vec<String> = srv
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    let at = format!("{}:11", Path::new(&conf).display());
    assert_eq!(warn.len(), 1, "{warn:?}");
    assert!(
        warn[0].contains(&at) && warn[0].contains("unknown key frobnicate"),
        "{warn:?}"
    );
}

/// How many of one reply of 8 archives are files of the first owner, out of 8 files of
/// owner (`uid`, `gid`) A archived before 8 of owner B, and whether the reply is the head of
/// the server's queue in arrival order (the two MDTs interleave their requests, so that order
/// is read from the status dump, not assumed); `None` when the test cannot chown.
fn first_owner_share(extra: &str, by_gid: bool) -> Option<(usize, bool)> {
    let sim = Sim::start("owner");
    let srv = Server::start(&sim, &config(&sim, extra));
    // Lustre hands a copytool at most hsm.max_requests (default 3) active requests.
    let mnt = sim.mount.to_string_lossy().into_owned();
    let (rc, _, err) = sim.command(&[
        "lctl",
        "--mount",
        &mnt,
        "set_param",
        "mdt.*.hsm.max_requests=1000",
    ]);
    assert_eq!(rc, 0, "{err}");
    for n in 0..16u32 {
        let (path, _) = sim.file(&format!("f{n}"));
        let id = if n < 8 { 4242 } else { 4343 };
        let (uid, gid) = if by_gid {
            (None, Some(id))
        } else {
            (Some(id), None)
        };
        if let Err(e) = std::os::unix::fs::chown(&path, uid, gid) {
            eprintln!("SKIPPED: cannot chown test files ({e}); needs root");
            return None;
        }
        sim.archive(&path);
    }
    let mut c = srv.connect();
    wait_until("the 16 archives reached the server", || {
        status(&mut c, 4).pending_archive == 16
    });
    let arrival: Vec<LuFid> = status(&mut c, 6)
        .waiting_archive
        .expect("a dump at verbose 6")
        .iter()
        .map(|e| e.fid)
        .collect();
    assert_eq!(arrival.len(), 16);
    let mut m = mover(&srv, "m");
    let got = recv(
        &mut m,
        RecvRequest {
            max_archive: Some(8),
            ..RecvRequest::default()
        },
    );
    assert_eq!(got.len(), 8);
    let first: std::collections::HashSet<LuFid> = (0..8)
        .map(|n| coordinatool_lustre_path2fid(&sim, &format!("f{n}")))
        .collect();
    assert!(
        !srv.lines()
            .iter()
            .any(|l| l.contains("file owner for fair share")),
        "every owner was found"
    );
    let head: std::collections::HashSet<LuFid> = arrival[..8].iter().copied().collect();
    let got_fids: std::collections::HashSet<LuFid> = got.iter().map(|h| h.fid).collect();
    Some((
        got.iter().filter(|h| first.contains(&h.fid)).count(),
        got_fids == head,
    ))
}

fn coordinatool_lustre_path2fid(sim: &Sim, name: &str) -> LuFid {
    server_common::api()
        .path2fid(&sim.mount.join(name))
        .expect("path2fid")
}

#[test]
fn fair_share_by_file_owner() {
    let Some((_, plain_is_head)) = first_owner_share("", false) else {
        return;
    };
    assert!(plain_is_head, "arrival order without fair share");
    assert_eq!(
        first_owner_share("fair_share_key uid\n", false).map(|s| s.0),
        Some(4)
    );
    assert_eq!(
        first_owner_share("fair_share_key gid\n", true).map(|s| s.0),
        Some(4)
    );
    // Shared by uid, files that differ only by group are one share: arrival order again.
    assert_eq!(
        first_owner_share("fair_share_key uid\n", true).map(|s| s.1),
        Some(true)
    );
}

#[test]
fn a_batch_slice_expiry_wakes_the_timer_and_frees_the_slot() {
    let sim = Sim::start("slice");
    let conf = config(
        &sim,
        "batch_archives_slices_sec 2\nbatch_archives_slots_per_client 1\n",
    );
    let srv = Server::start(&sim, &conf);
    let mut c = srv.connect();
    let mut m = mover(&srv, "m1");
    queue(&mut c, vec![archive(1, "tape=A")]);
    assert_eq!(recv(&mut m, RecvRequest::default()).len(), 1);
    // The only slot is tape=A's for two seconds: tape=B waits although m1 asks for work.
    queue(&mut c, vec![archive(2, "tape=B")]);
    m.send(&Request::Recv(RecvRequest::default()));
    let st = status(&mut c, 4);
    assert_eq!((st.pending_archive, st.running_archive), (1, 1), "{st:?}");
    // Once the idle slice ends (nothing else comes for tape=A), the timer hands the slot over.
    let got = match m.next() {
        Reply::Recv(r) => r.hal.expect("a list").list,
        other => panic!("{other:?}"),
    };
    assert_eq!(got[0].data, b"tape=B");
    let st = status(&mut c, 4);
    let me = st.clients.iter().find(|c| c.client_id == "m1").unwrap();
    assert_eq!(me.batches[0].hint.as_deref(), Some("tape=B"), "{me:?}");
}
