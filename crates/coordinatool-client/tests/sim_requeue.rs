//! `-Q` round trip from the simulated Lustre: requests dispatched by the simulator's MDTs
//! are listed with `lctl get_param mdt.*.hsm.active_requests`, fed to the client, and must
//! reach the (fake) coordinatool server as the same requests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};

use coordinatool_lustre::{HsmAction, HsmUserAction};
use coordinatool_proto::{Decoder, Request, WireHai};
use coordinatool_sim::mdt::{Caller, Cluster, FileAttrs, UserRequest};

const T0: u64 = 0x6913_bb00;

/// A simulated filesystem with two MDTs, one agent, `per_mdt` archives dispatched on each
/// MDT (with 10 bytes of data), and one restore.
fn sim_listing(per_mdt: usize) -> (Cluster, String) {
    let mut c = Cluster::new_enabled("fs00", 2, T0);
    for i in 0..2 {
        c.mdt_mut(i).unwrap().tunables_mut().max_requests = 100_000;
    }
    c.register("d19dc2fe-cec4-43a1-8996-c783b3a70e63", &[1, 2])
        .unwrap();
    let mut fids = Vec::new();
    for i in 0..2 {
        for _ in 0..per_mdt {
            let fid = c.alloc_fid(i);
            c.put_file(
                fid,
                FileAttrs {
                    uid: 500,
                    gid: 500,
                    data_version: 1,
                    ..FileAttrs::default()
                },
            );
            fids.push(fid);
        }
    }
    for chunk in fids.chunks(50) {
        let req = UserRequest {
            data: b"tag=project".to_vec(),
            ..UserRequest::whole_files(HsmUserAction::Archive, 2, chunk)
        };
        c.request(T0, Caller::ROOT, &req).unwrap();
    }
    c.tick(T0 + 1);
    let dispatched = std::iter::from_fn(|| c.poll_dispatch()).count();
    assert!(dispatched > 0);
    let text = c.get_param("mdt.*.hsm.active_requests", true).unwrap();
    (c, text)
}

#[test]
fn requeue_from_simulated_active_requests_round_trip() {
    let (cluster, listing) = sim_listing(120);
    assert!(
        listing.starts_with("mdt.fs00-MDT0000.hsm.active_requests="),
        "{}",
        &listing[..80]
    );

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut items: Vec<WireHai> = Vec::new();
        let mut messages = 0;
        loop {
            while let Some(req) = dec.next_message::<Request>().unwrap() {
                let reply = match req {
                    Request::Ehlo(_) => r#"{"command":"ehlo"}"#.to_owned(),
                    Request::Queue(q) => {
                        messages += 1;
                        let n = q.items.len();
                        items.extend(q.items);
                        format!(r#"{{"command":"queue","enqueued":{n}}}"#)
                    }
                    other => panic!("unexpected {other:?}"),
                };
                s.write_all(reply.as_bytes()).unwrap();
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return (messages, items),
                Ok(k) => dec.feed(&buf[..k]),
            }
        }
    });

    let conf = std::env::temp_dir().join(format!("ct-client-sim-{}.conf", std::process::id()));
    std::fs::write(&conf, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinatool-client"))
        .args([
            "-c",
            conf.to_str().unwrap(),
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["--timeout", "20", "-Q", "--chunk-size", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(listing.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&conf).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (messages, items) = server.join().unwrap();

    // Every active request of every MDT arrived once, as the MDT holds it.
    let mut want: Vec<_> = cluster
        .mdts()
        .iter()
        .flat_map(|m| m.active_requests())
        .collect();
    assert_eq!(want.len(), 240, "every archive dispatched, on both MDTs");
    assert_eq!(items.len(), want.len());
    assert_eq!(messages, want.len().div_ceil(100));
    want.sort_by_key(|a| (a.item.cookie, a.item.fid));
    let mut got = items.clone();
    got.sort_by_key(|i| (i.cookie, i.fid));
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.action, HsmAction::Archive);
        assert_eq!(
            (g.fid, g.dfid, g.cookie),
            (w.item.fid, w.item.dfid, w.item.cookie)
        );
        assert_eq!((g.archive_id, g.flags), (w.archive_id, w.flags));
        assert_eq!(
            (g.extent_offset, g.extent_length),
            (w.item.extent.offset, w.item.extent.length)
        );
        // The MDT prints 5 of the 11 bytes: what can be requeued is that prefix.
        assert_eq!(g.data, b"tag=p");
    }
    assert!(stderr.contains("may be truncated"), "{stderr}");
    assert!(
        stderr.contains(&format!("queued {n} of {n} request(s)", n = want.len())),
        "{stderr}"
    );
}
