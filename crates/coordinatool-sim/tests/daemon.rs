//! The daemon end to end over its Unix socket: a fake copytool (raw protocol) and the
//! `lfs`/`lctl` commands.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use coordinatool_lustre::HsmAction;
use coordinatool_lustre::hal::HsmActionList;
use coordinatool_sim::cli::{self, Io};
use coordinatool_sim::rpc::{self, Client, Fid, Reply, Request, RpcError};
use coordinatool_sim::server::{Daemon, ServeOptions};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cts-d-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(f: fn(&[String], &mut Io<'_>) -> i32, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdin: &[u8] = b"";
    let rc = f(
        &args,
        &mut Io {
            stdin: &mut stdin,
            out: &mut out,
            err: &mut err,
        },
    );
    (
        rc,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn read_kuc(s: &mut UnixStream) -> (u8, u16, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[0], hdr[1]]), rpc::KUC_MAGIC);
    let len = u16::from_le_bytes([hdr[6], hdr[7]]) as usize;
    let mut body = vec![0u8; len - 8];
    s.read_exact(&mut body).unwrap();
    (hdr[2], u16::from_le_bytes([hdr[4], hdr[5]]), body)
}

fn call(mount: &Path, r: Request) -> Result<Reply, RpcError> {
    Client::connect(mount).unwrap().call(&r)
}

fn lctl(mount: &Path, args: &[&str]) -> (i32, String, String) {
    let mut v = vec!["--mount", mount.to_str().unwrap()];
    v.extend_from_slice(args);
    run(cli::lctl, &v)
}

fn state(path: &Path) -> String {
    let (rc, out, err) = run(cli::lfs, &["hsm_state", path.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    out
}

#[test]
fn archive_release_restore_through_the_daemon() {
    let t = TempDir::new();
    let file = t.0.join("data.bin");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(&file, &content).unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mount = d.mount().to_owned();
    let file = mount.join("data.bin");
    let uuid = "6a1b2c3d-0000-4000-8000-000000000001";
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register(uuid, &[1])
        .unwrap();

    let f = file.to_str().unwrap();
    assert_eq!(run(cli::lfs, &["hsm_archive", "--data", "tag=m", f]).0, 0);
    let (transport, msgtype, body) = read_kuc(&mut ct);
    assert_eq!(
        (transport, msgtype),
        (rpc::KUC_TRANSPORT_HSM, rpc::HMT_ACTION_LIST)
    );
    let hal = HsmActionList::parse(&body).unwrap();
    assert_eq!(hal.fsname, "lustre");
    assert_eq!(hal.archive_id, 1);
    let hai = hal.items[0].clone();
    assert_eq!(hai.action, HsmAction::Archive);
    assert_eq!(hai.data, b"tag=m");
    // The HAI's FID opens the file through .lustre/fid.
    let by_fid = mount.join(".lustre/fid").join(format!("{:#}", hai.fid));
    assert_eq!(fs::read(&by_fid).unwrap(), content);
    let (_, out, _) = run(cli::lfs, &["hsm_action", f]);
    assert_eq!(out, format!("{f}: ARCHIVE running (0 bytes moved)\n"));

    let Reply::DataVersion { version } = call(
        &mount,
        Request::CopyStart {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            archive: true,
            one_way: false,
            stat_now: None,
        },
    )
    .unwrap() else {
        panic!("no data version")
    };
    call(
        &mount,
        Request::Progress {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            length: content.len() as u64,
            flags: 0,
            errval: 0,
            start_data_version: None,
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    let (_, act, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.active_requests"]);
    assert!(act.contains(&format!("uuid={uuid} done=50000")), "{act}");
    call(
        &mount,
        Request::Progress {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            length: u64::MAX,
            flags: 1,
            errval: 0,
            start_data_version: Some(version),
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    assert_eq!(
        state(&file),
        format!("{f}: (0x00000009) exists archived, archive_id:1\n")
    );
    // A second completion of the same cookie: ENOENT.
    let again = call(
        &mount,
        Request::Progress {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            length: 0,
            flags: 1,
            errval: 0,
            start_data_version: None,
            start_stamp: None,
            stat_now: None,
        },
    );
    assert_eq!(again.unwrap_err().errno(), libc::ENOENT);

    assert_eq!(run(cli::lfs, &["hsm_release", f]).0, 0);
    assert_eq!(
        state(&file),
        format!("{f}: (0x0000000d) released exists archived, archive_id:1\n")
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), content.len() as u64);

    assert_eq!(run(cli::lfs, &["hsm_restore", f]).0, 0);
    let (_, _, body) = read_kuc(&mut ct);
    let hai = HsmActionList::parse(&body).unwrap().items[0].clone();
    assert_eq!(hai.action, HsmAction::Restore);
    let Reply::Index { index } = call(&mount, Request::FidMdt { fid: Fid(hai.fid) }).unwrap()
    else {
        panic!()
    };
    let Reply::Volatile { fid: vol, path } =
        call(&mount, Request::CreateVolatile { mdt: index as i32 }).unwrap()
    else {
        panic!()
    };
    call(
        &mount,
        Request::CopyStart {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            archive: false,
            one_way: false,
            stat_now: None,
        },
    )
    .unwrap();
    fs::write(&path, &content).unwrap();
    call(
        &mount,
        Request::Progress {
            fid: vol,
            cookie: hai.cookie,
            offset: 0,
            length: u64::MAX,
            flags: 1,
            errval: 0,
            start_data_version: None,
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    assert_eq!(fs::read(&file).unwrap(), content);
    assert_eq!(
        state(&file),
        format!("{f}: (0x00000009) exists archived, archive_id:1\n")
    );
    // Writing makes it dirty (noticed at the next state query).
    fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert_eq!(
        state(&file),
        format!("{f}: (0x0000000b) exists dirty archived, archive_id:1\n")
    );
    let (rc, _, err) = run(cli::lfs, &["hsm_release", f]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        format!("Cannot send HSM request (use of {f}): Operation not permitted\n")
    );
    d.stop();
    // Shutdown reaches the copytool as KUC_MSG_SHUTDOWN.
    let (transport, msgtype, body) = read_kuc(&mut ct);
    assert_eq!(
        (transport, msgtype, body.len()),
        (rpc::KUC_TRANSPORT_GENERIC, rpc::KUC_MSG_SHUTDOWN, 0)
    );
}

#[test]
fn lctl_and_lfs_errors_and_crashing_clients() {
    let t = TempDir::new();
    fs::write(t.0.join("a"), b"x").unwrap();
    fs::create_dir(t.0.join("dir")).unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mount = d.mount().to_owned();
    // A client that dies mid-frame does not disturb the daemon.
    {
        let mut s = UnixStream::connect(rpc::socket_path(&mount)).unwrap();
        s.write_all(&100u32.to_le_bytes()).unwrap();
        s.write_all(b"{\"op\":").unwrap();
    }
    {
        let mut s = UnixStream::connect(rpc::socket_path(&mount)).unwrap();
        s.write_all(&3u32.to_le_bytes()).unwrap();
        s.write_all(b"xyz").unwrap();
        let r: rpc::Response = rpc::read_frame(&mut s).unwrap().unwrap();
        assert_eq!(r, rpc::Response::Err(libc::EPROTO));
    }
    let (rc, out, _) = lctl(&mount, &["get_param", "mdt.lustre-MDT0000.hsm_control"]);
    assert_eq!(
        (rc, out.as_str()),
        (0, "mdt.lustre-MDT0000.hsm_control=enabled\n")
    );
    let (rc, out, _) = lctl(&mount, &["set_param", "mdt.*.hsm.max_requests=100"]);
    assert_eq!(rc, 0);
    assert_eq!(
        out,
        "mdt.lustre-MDT0000.hsm.max_requests=100\nmdt.lustre-MDT0001.hsm.max_requests=100\n"
    );
    let (rc, _, err) = lctl(
        &mount,
        &["set_param", "mdt.lustre-MDT0000.hsm.loop_period=0"],
    );
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        "error: set_param: setting mdt.lustre-MDT0000.hsm.loop_period=0: Invalid argument\n"
    );
    let (rc, _, err) = lctl(&mount, &["get_param", "mdt.*.hsm.nope"]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        "error: get_param: param_path 'mdt.*.hsm.nope': No such file or directory\n"
    );
    let dir = mount.join("dir");
    let (rc, _, err) = run(cli::lfs, &["hsm_archive", dir.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        format!("error: \"{}\" is not a regular file\n", dir.display())
    );
    let a = mount.join("a");
    let (rc, _, err) = run(
        cli::lfs,
        &["hsm_restore", "--archive", "1", a.to_str().unwrap()],
    );
    assert_eq!(rc, 1);
    assert!(err.contains("unrecognized option"), "{err}");
    // No copytool: requests wait, hsm_action says so.
    assert_eq!(
        run(cli::lfs, &["hsm_archive", "-a", "2", a.to_str().unwrap()]).0,
        0
    );
    let (_, out, _) = run(cli::lfs, &["hsm_action", a.to_str().unwrap()]);
    assert_eq!(
        out,
        format!("{}: ARCHIVE waiting (from 0 to EOF)\n", a.display())
    );
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert!(out.contains("action=ARCHIVE archive#=2 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 datalen=0 status=WAITING data=[]"), "{out}");
    // A copytool that goes away: its agent is unregistered at the next send, work waits.
    let ct = Client::connect(&mount)
        .unwrap()
        .register("gone", &[5])
        .unwrap();
    drop(ct);
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.agents"]);
    assert_eq!(
        out,
        "uuid=gone archive_id=5 requests=[current:0 ok:0 errors:0]\n".repeat(2)
    );
    // The daemon notices the closed stream asynchronously; the first send after that fails
    // with EPIPE and unregisters the agent from the file's MDT (the other MDT keeps it).
    let one = "uuid=gone archive_id=5 requests=[current:0 ok:0 errors:0]\n";
    let mut n = 0;
    loop {
        assert_eq!(
            run(cli::lfs, &["hsm_archive", "-a", "5", a.to_str().unwrap()]).0,
            0
        );
        std::thread::sleep(Duration::from_millis(50));
        let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.agents"]);
        if out == one {
            break;
        }
        n += 1;
        assert!(n < 200, "agent never unregistered: {out}");
    }
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert!(out.contains("status=WAITING"), "{out}");
    d.stop();
}

#[test]
fn reading_a_released_file_restores_it_first() {
    let t = TempDir::new();
    let content = b"released then read back".to_vec();
    fs::write(t.0.join("f"), &content).unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mount = d.mount().to_owned();
    let file = mount.join("f");
    let f = file.to_str().unwrap().to_owned();
    // Archive and release through the model directly.
    let fid = d.with_state(|c, sfs| {
        let fid = sfs.path2fid(&file, c).unwrap();
        let mut a = *c.file(fid).unwrap();
        a.states =
            coordinatool_lustre::HsmStates::EXISTS | coordinatool_lustre::HsmStates::ARCHIVED;
        a.archive_id = 1;
        a.archive_version = sfs.refresh(fid, c).unwrap();
        c.put_file(fid, a);
        sfs.release(fid, c).unwrap();
        fid
    });
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("ct", &[])
        .unwrap();
    let reader = std::thread::spawn(move || run(cli::cat, &[f.as_str()]));
    // The copytool sees a blocking restore and serves it.
    let (_, _, body) = read_kuc(&mut ct);
    let hal = HsmActionList::parse(&body).unwrap();
    assert_eq!(hal.flags, 4, "HSM_REQ_BLOCKING");
    let hai = hal.items[0].clone();
    assert_eq!((hai.action, hai.fid), (HsmAction::Restore, fid));
    let Reply::Volatile { fid: vol, path } =
        call(&mount, Request::CreateVolatile { mdt: -1 }).unwrap()
    else {
        panic!()
    };
    fs::write(&path, &content).unwrap();
    call(
        &mount,
        Request::Progress {
            fid: vol,
            cookie: hai.cookie,
            offset: 0,
            length: u64::MAX,
            flags: 1,
            errval: 0,
            start_data_version: None,
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    let (rc, out, err) = reader.join().unwrap();
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.as_bytes(), &content[..]);
    // Under NonBlockingRestore the read fails at once with ENODATA.
    d.with_state(|c, sfs| {
        for (_, r) in c.set_param(0, "mdt.*.hsm.policy", "+NBR") {
            r.unwrap();
        }
        sfs.release(fid, c).unwrap();
    });
    let (rc, _, err) = run(cli::cat, &[file.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert_eq!(err, format!("cat: {}: No data available\n", file.display()));
    d.stop();
}

/// Runs the real `coordinatool-sim` binary with `COORDINATOOL_SIM_MOUNT` set.
fn bin(mount: &Path, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_coordinatool-sim"))
        .args(args)
        .env("COORDINATOOL_SIM_MOUNT", mount)
        .env("COORDINATOOL_SIM_LOG", "off")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

fn one_mdt() -> ServeOptions {
    ServeOptions {
        mdts: 1,
        ..ServeOptions::default()
    }
}

/// Archives `file` through a registered fake copytool `ct` (whole life cycle over the socket).
fn archive_with(mount: &Path, ct: &mut UnixStream, file: &Path) -> coordinatool_lustre::LuFid {
    assert_eq!(run(cli::lfs, &["hsm_archive", file.to_str().unwrap()]).0, 0);
    let (_, _, body) = read_kuc(ct);
    let hai = HsmActionList::parse(&body).unwrap().items[0].clone();
    let Reply::DataVersion { version } = call(
        mount,
        Request::CopyStart {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            archive: true,
            one_way: false,
            stat_now: None,
        },
    )
    .unwrap() else {
        panic!("no data version")
    };
    call(
        mount,
        Request::Progress {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            length: u64::MAX,
            flags: 1,
            errval: 0,
            start_data_version: Some(version),
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    hai.fid
}

#[test]
fn changelog_through_the_lfs_and_lctl_binaries() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"changelog me").unwrap();
    let d = Daemon::start(&t.0, &one_mdt()).unwrap();
    let mount = d.mount().to_owned();
    let file = mount.join("f");
    let f = file.to_str().unwrap();
    let (rc, out, err) = bin(
        &mount,
        &["lctl", "--device", "lustre-MDT0000", "changelog_register"],
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out, "lustre-MDT0000: Registered changelog userid 'cl1'\n");
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("cl-ct", &[])
        .unwrap();
    let fid = archive_with(&mount, &mut ct, &file);
    assert_eq!(bin(&mount, &["lfs", "hsm_release", f]).0, 0);
    assert_eq!(bin(&mount, &["lfs", "hsm_set", "--norelease", f]).0, 0);
    let (rc, out, err) = bin(&mount, &["lfs", "changelog", "lustre-MDT0000"]);
    assert_eq!(rc, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // index, type, time, date, flags, target: archive ok, release, state change.
    for (i, (line, flags)) in lines.iter().zip(["0x0", "0x180", "0x280"]).enumerate() {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w.len(), 6, "{line}");
        assert_eq!(w[0], (i + 1).to_string());
        assert_eq!(w[1], "16HSM");
        assert_eq!(w[4], flags, "{line}");
        assert_eq!(w[5], format!("t={fid}"));
    }
    // --follow prints what is there, then new records as they come.
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_coordinatool-sim"))
        .args(["lfs", "changelog", "--follow", "lustre-MDT0000", "3"])
        .env("COORDINATOOL_SIM_MOUNT", &mount)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
    assert!(lines.next().unwrap().unwrap().starts_with("3 16HSM "));
    assert_eq!(bin(&mount, &["lfs", "hsm_clear", "--norelease", f]).0, 0);
    let next = lines.next().unwrap().unwrap();
    assert!(
        next.starts_with("4 16HSM ") && next.contains(" 0x280 "),
        "{next}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    let (_, out, _) = bin(&mount, &["lfs", "changelog", "lustre-MDT0000", "2", "2"]);
    assert!(
        out.starts_with("2 16HSM ") && out.lines().count() == 1,
        "{out}"
    );
    let (rc, _, err) = bin(
        &mount,
        &["lfs", "changelog_clear", "lustre-MDT0000", "cl9", "0"],
    );
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        "lfs changelog_clear: cannot purge records for 'cl9': No such file or directory (2)\n"
    );
    assert_eq!(
        bin(
            &mount,
            &["lfs", "changelog_clear", "lustre-MDT0000", "cl1", "2"]
        )
        .0,
        0
    );
    let (_, out, _) = bin(&mount, &["lfs", "changelog", "lustre-MDT0000"]);
    assert!(
        out.starts_with("3 16HSM ") && out.lines().count() == 2,
        "{out}"
    );
    let (rc, _, err) = bin(&mount, &["lfs", "changelog", "lustre-MDT0009"]);
    assert_eq!(rc, 1);
    assert!(err.contains("No such file or directory"), "{err}");
    let (rc, out, _) = bin(
        &mount,
        &[
            "lctl",
            "--device",
            "lustre-MDT0000",
            "changelog_deregister",
            "cl1",
        ],
    );
    assert_eq!(rc, 0);
    assert_eq!(out, "lustre-MDT0000: Deregistered changelog user 'cl1'\n");
    let (_, out, _) = bin(&mount, &["lfs", "changelog", "lustre-MDT0000"]);
    assert_eq!(out, "");
    d.stop();
}

#[test]
fn hsm_set_and_clear_through_the_binary() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"flags").unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let file = d.mount().join("f");
    let f = file.to_str().unwrap();
    let m = d.mount().to_owned();
    let st = |m: &Path| bin(m, &["lfs", "hsm_state", f]).1;
    assert_eq!(
        bin(
            &m,
            &["lfs", "hsm_set", "--norelease", "--archive-id", "5", f]
        ),
        (0, String::new(), String::new())
    );
    assert_eq!(
        st(&m),
        format!("{f}: (0x00000010) never_release, archive_id:5\n")
    );
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        // Only HSM_USER_MASK bits for non-admins.
        let (rc, _, err) = bin(&m, &["lfs", "hsm_set", "--exists", f]);
        assert_eq!(rc, 1);
        assert!(err.ends_with(": Operation not permitted\n"), "{err}");
        d.stop();
        return;
    }
    assert_eq!(
        bin(&m, &["lfs", "hsm_set", "--exists", "--archived", f]).0,
        0
    );
    assert_eq!(
        st(&m),
        format!("{f}: (0x00000019) exists archived never_release, archive_id:5\n")
    );
    assert_eq!(bin(&m, &["lfs", "hsm_clear", "--norelease", f]).0, 0);
    assert_eq!(
        st(&m),
        format!("{f}: (0x00000009) exists archived, archive_id:5\n")
    );
    // An inconsistent result (archived without exists) is refused and changes nothing.
    let (rc, _, err) = bin(&m, &["lfs", "hsm_clear", "--exists", f]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        format!("lfs hsm_clear: cannot set hsm state for '{f}': Invalid argument\n")
    );
    let (rc, _, err) = bin(&m, &["lfs", "hsm_clear", "--archive-id", "3", f]);
    assert_eq!(rc, 1);
    assert!(err.contains("unrecognized option '--archive-id'"), "{err}");
    assert_eq!(
        st(&m),
        format!("{f}: (0x00000009) exists archived, archive_id:5\n")
    );
    d.stop();
}

#[test]
fn read_only_mount_refuses_all_but_restore() {
    let t = TempDir::new();
    fs::write(t.0.join("a"), b"aaaa").unwrap();
    fs::write(t.0.join("r"), b"rrrr").unwrap();
    let opts = ServeOptions {
        read_only: true,
        ..ServeOptions::default()
    };
    let d = Daemon::start(&t.0, &opts).unwrap();
    let mount = d.mount().to_owned();
    let (a, r) = (mount.join("a"), mount.join("r"));
    // `r` archived then released behind the daemon's back (the mount itself is read-only).
    d.with_state(|c, sfs| {
        let fid = sfs.path2fid(&r, c).unwrap();
        let mut at = *c.file(fid).unwrap();
        at.states =
            coordinatool_lustre::HsmStates::EXISTS | coordinatool_lustre::HsmStates::ARCHIVED;
        at.archive_id = 1;
        at.archive_version = sfs.refresh(fid, c).unwrap();
        c.put_file(fid, at);
        sfs.release(fid, c).unwrap();
    });
    for cmd in ["hsm_archive", "hsm_release", "hsm_remove"] {
        let (rc, _, err) = run(cli::lfs, &[cmd, a.to_str().unwrap()]);
        assert_eq!(rc, 1, "{cmd}");
        assert_eq!(
            err,
            format!(
                "Cannot send HSM request (use of {}): Read-only file system\n",
                a.display()
            ),
            "{cmd}"
        );
    }
    assert_eq!(run(cli::lfs, &["hsm_restore", r.to_str().unwrap()]).0, 0);
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("action=RESTORE"), "{out}");
    d.stop();
}

#[test]
fn purge_blocks_lctl_until_the_coordinator_is_idle_and_is_interrupted_by_a_kill() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"purge").unwrap();
    let d = Daemon::start(&t.0, &one_mdt()).unwrap();
    let mount = d.mount().to_owned();
    let f = mount.join("f");
    let control = |m: &Path| lctl(m, &["get_param", "-n", "mdt.lustre-MDT0000.hsm_control"]).1;
    let wait_for = |m: &Path, want: &str| {
        for _ in 0..400 {
            if control(m) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("hsm_control never read {want:?}");
    };
    let purge = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_coordinatool-sim"))
            .args([
                "lctl",
                "--mount",
                mount.to_str().unwrap(),
                "set_param",
                "mdt.lustre-MDT0000.hsm_control=purge",
            ])
            .env("COORDINATOOL_SIM_LOG", "off")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The coordinator thread is held busy: a request flagged it and it cannot run.
    d.pause_coordinator(true);
    assert_eq!(run(cli::lfs, &["hsm_archive", f.to_str().unwrap()]).0, 0);
    let mut child = purge();
    wait_for(&mount, "disabled\n");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "lctl must still be waiting"
    );
    // Killing lctl interrupts the wait: nothing canceled, the coordinator enabled again.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(&mount, "enabled\n");
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert!(out.contains("status=WAITING"), "{out}");
    // This time the thread gets to run: the purge completes and lctl returns.
    let child = purge();
    wait_for(&mount, "disabled\n");
    d.pause_coordinator(false);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "mdt.lustre-MDT0000.hsm_control=purge\n"
    );
    assert_eq!(control(&mount), "enabled\n");
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert!(out.contains("status=CANCELED"), "{out}");
    d.stop();
}

#[test]
fn release_of_a_file_open_elsewhere_is_ebusy() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"held open").unwrap();
    let d = Daemon::start(&t.0, &one_mdt()).unwrap();
    let mount = d.mount().to_owned();
    let file = mount.join("f");
    let f = file.to_str().unwrap();
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("busy-ct", &[])
        .unwrap();
    archive_with(&mount, &mut ct, &file);
    // Another process reads the file (it stays open as its stdin).
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdin(fs::File::open(&file).unwrap())
        .spawn()
        .unwrap();
    let (rc, _, err) = run(cli::lfs, &["hsm_release", f]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        format!("Cannot send HSM request (use of {f}): Device or resource busy\n")
    );
    assert_eq!(
        state(&file),
        format!("{f}: (0x00000009) exists archived, archive_id:1\n")
    );
    assert_eq!(fs::read(&file).unwrap(), b"held open");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(
        run(cli::lfs, &["hsm_release", f]),
        (0, String::new(), String::new())
    );
    assert_eq!(
        state(&file),
        format!("{f}: (0x0000000d) released exists archived, archive_id:1\n")
    );
    d.stop();
}

#[test]
fn user_state_reports_the_action_in_progress() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), vec![7u8; 10_000]).unwrap();
    let d = Daemon::start(&t.0, &one_mdt()).unwrap();
    let mount = d.mount().to_owned();
    let file = mount.join("f");
    let f = file.to_str().unwrap();
    let Reply::Fid { fid } = call(&mount, Request::Path2Fid { path: file.clone() }).unwrap() else {
        panic!()
    };
    let us = |m: &Path| match call(m, Request::UserState { fid }).unwrap() {
        Reply::UserState {
            states,
            archive_id,
            in_progress_state,
            in_progress_action,
            in_progress_offset,
            in_progress_length,
        } => (
            states,
            archive_id,
            in_progress_state,
            in_progress_action,
            in_progress_offset,
            in_progress_length,
        ),
        r => panic!("{r:?}"),
    };
    assert_eq!(us(&mount), (0, 0, 0, 1, 0, 0), "idle: HUA_NONE");
    assert_eq!(run(cli::lfs, &["hsm_archive", f]).0, 0);
    // Waiting (no copytool yet): the requested extent.
    assert_eq!(us(&mount), (0, 0, 1, 10, 0, u64::MAX));
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("us-ct", &[])
        .unwrap();
    let (_, _, body) = read_kuc(&mut ct);
    let hai = HsmActionList::parse(&body).unwrap().items[0].clone();
    call(
        &mount,
        Request::Progress {
            fid: Fid(hai.fid),
            cookie: hai.cookie,
            offset: 0,
            length: 4096,
            flags: 0,
            errval: 0,
            start_data_version: None,
            start_stamp: None,
            stat_now: None,
        },
    )
    .unwrap();
    // Running: exists (set at dispatch), archive id, 4096 bytes moved; hsm_action agrees.
    assert_eq!(us(&mount), (1, 1, 2, 10, 0, 4096));
    let (_, out, _) = run(cli::lfs, &["hsm_action", f]);
    assert_eq!(out, format!("{f}: ARCHIVE running (4096 bytes moved)\n"));
    d.stop();
}

#[test]
fn clients_that_stall_flood_or_overflow_do_not_hold_the_others() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"x").unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mount = d.mount().to_owned();
    let sock = rpc::socket_path(&mount);
    // Part of a frame, then silence.
    let mut hello = Vec::new();
    rpc::encode_frame(&mut hello, &Request::Hello).unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    // A regression must fail the test, not hang it.
    half.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    half.write_all(&hello[..6]).unwrap();
    // A flood of calls whose replies are not read: far more than the socket buffers hold,
    // so the daemon must stop serving this client until it reads.
    let calls = 10_000;
    let mut frames = Vec::new();
    for _ in 0..calls {
        rpc::encode_frame(
            &mut frames,
            &Request::GetParam {
                pattern: "mdt.*.hsm_control".to_owned(),
                show_name: true,
            },
        )
        .unwrap();
    }
    let mut flood = UnixStream::connect(&sock).unwrap();
    // A regression must fail the test, not hang it.
    flood
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut flood_w = flood.try_clone().unwrap();
    let writer = std::thread::spawn(move || flood_w.write_all(&frames).unwrap());
    // A frame beyond the size limit: the connection is closed without a reply.
    let mut huge = UnixStream::connect(&sock).unwrap();
    // A regression must fail the test, not hang it.
    huge.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    huge.write_all(&(rpc::MAX_FRAME as u32 + 1).to_le_bytes())
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(huge.read_to_end(&mut rest).unwrap(), 0);
    // Meanwhile an ordinary client is served, many times over.
    let mut ok = Client::connect(&mount).unwrap();
    for _ in 0..100 {
        assert!(matches!(ok.call(&Request::Hello), Ok(Reply::Hello { .. })));
    }
    // The flood's replies all come, in order, once its client reads.
    let expected =
        "mdt.lustre-MDT0000.hsm_control=enabled\nmdt.lustre-MDT0001.hsm_control=enabled\n";
    for i in 0..calls {
        match rpc::read_frame::<rpc::Response>(&mut flood).unwrap() {
            Some(rpc::Response::Ok(Reply::Text { text })) => {
                assert_eq!(text, expected, "reply {i}")
            }
            other => panic!("reply {i}: {other:?}"),
        }
    }
    writer.join().unwrap();
    // The stalled client is answered once its frame is complete.
    half.write_all(&hello[6..]).unwrap();
    assert!(matches!(
        rpc::read_frame::<rpc::Response>(&mut half).unwrap(),
        Some(rpc::Response::Ok(Reply::Hello { .. }))
    ));
    d.stop();
}

#[test]
fn stop_closes_every_connection_and_the_mount_can_be_served_again() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"x").unwrap();
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mount = d.mount().to_owned();
    let mut idle = Client::connect(&mount).unwrap();
    assert!(matches!(
        idle.call(&Request::Hello),
        Ok(Reply::Hello { .. })
    ));
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("stop-ct", &[])
        .unwrap();
    d.stop();
    // The request/response connection is closed: EOF or a broken pipe, never an answer.
    let e = idle.call(&Request::Hello).unwrap_err();
    assert!(
        matches!(e, RpcError::Closed | RpcError::Io(_)),
        "unexpected {e:?}"
    );
    // The copytool got its shutdown message, then EOF.
    let (transport, msgtype, _) = read_kuc(&mut ct);
    assert_eq!(
        (transport, msgtype),
        (rpc::KUC_TRANSPORT_GENERIC, rpc::KUC_MSG_SHUTDOWN)
    );
    let mut rest = Vec::new();
    assert_eq!(ct.read_to_end(&mut rest).unwrap(), 0);
    // Same mount, same process: served again, FIDs kept.
    let d = Daemon::start(&t.0, &ServeOptions::default()).unwrap();
    let mut c = Client::connect(d.mount()).unwrap();
    assert!(matches!(c.call(&Request::Hello), Ok(Reply::Hello { .. })));
    assert!(idle.call(&Request::Hello).is_err());
    d.stop();
}

#[test]
fn max_requests_beyond_the_ram_cap_is_enomem_and_remove_fans_out() {
    let t = TempDir::new();
    let d = Daemon::start(&t.0, &one_mdt()).unwrap();
    let mount = d.mount().to_owned();
    d.with_state(|c, _| c.set_ram_bytes(32 << 20));
    let (rc, _, err) = lctl(&mount, &["set_param", "mdt.*.hsm.max_requests=1025"]);
    assert_eq!(rc, 1);
    assert_eq!(
        err,
        "error: set_param: setting mdt.lustre-MDT0000.hsm.max_requests=1025: Cannot allocate memory\n"
    );
    assert_eq!(
        lctl(&mount, &["set_param", "mdt.*.hsm.max_requests=1024"]).0,
        0
    );
    // An admin REMOVE by FID of a file that is gone, no archive id: every archive gets one.
    let mut ct1 = Client::connect(&mount)
        .unwrap()
        .register("m1", &[1])
        .unwrap();
    let mut ct2 = Client::connect(&mount)
        .unwrap()
        .register("m2", &[2])
        .unwrap();
    let ghost = "[0x200000400:0x777:0x0]";
    let (rc, _, err) = run(
        cli::lfs,
        &["hsm_remove", "--mntpath", mount.to_str().unwrap(), ghost],
    );
    assert_eq!(rc, 0, "{err}");
    for (ct, id) in [(&mut ct1, 1), (&mut ct2, 2)] {
        let (_, _, body) = read_kuc(ct);
        let hal = HsmActionList::parse(&body).unwrap();
        assert_eq!(hal.archive_id, id);
        assert_eq!(hal.items[0].action, HsmAction::Remove);
        assert_eq!(hal.items[0].fid.to_string(), ghost);
    }
    let (_, out, _) = lctl(&mount, &["get_param", "-n", "mdt.*.hsm.actions"]);
    assert!(
        out.contains(
            "archive#=0 flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 datalen=0 status=SUCCEED"
        ),
        "{out}"
    );
    d.stop();
}

fn progress(fid: Fid, cookie: u64, flags: u32, start_stamp: Option<u64>) -> Request {
    Request::Progress {
        fid,
        cookie,
        offset: 0,
        length: if flags & 1 != 0 { u64::MAX } else { 1 },
        flags,
        errval: 0,
        start_data_version: None,
        start_stamp,
        stat_now: None,
    }
}

fn one_way_start(fid: Fid, cookie: u64, archive: bool) -> Request {
    Request::CopyStart {
        fid,
        cookie,
        offset: 0,
        archive,
        one_way: true,
        stat_now: None,
    }
}

fn stamp_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(path).unwrap();
    coordinatool_sim::fs::data_stamp(md.mtime(), md.mtime_nsec(), md.size())
}

#[test]
fn pipelined_one_way_starts_report_failures_at_the_next_call() {
    let t = TempDir::new();
    for (n, c) in [("a", "one"), ("b", "two"), ("c", "three")] {
        fs::write(t.0.join(n), c).unwrap();
    }
    let opts = ServeOptions {
        pipelined: true,
        ..one_mdt()
    };
    let d = Daemon::start(&t.0, &opts).unwrap();
    let mount = d.mount().to_owned();
    assert!(matches!(
        call(&mount, Request::Hello),
        Ok(Reply::Hello {
            pipelined: true,
            ..
        })
    ));
    let mut ct = Client::connect(&mount)
        .unwrap()
        .register("uuid-pipe", &[])
        .unwrap();
    let recv = |ct: &mut UnixStream| {
        let (_, _, body) = read_kuc(ct);
        HsmActionList::parse(&body).unwrap().items[0].clone()
    };
    let mut c = Client::connect(&mount).unwrap();

    // Canceled before its start: the one-way start gets no reply; the next progress and the
    // end report ECANCELED, and the end completes the request.
    let a = mount.join("a");
    assert_eq!(run(cli::lfs, &["hsm_archive", a.to_str().unwrap()]).0, 0);
    let hai = recv(&mut ct);
    assert_eq!(run(cli::lfs, &["hsm_cancel", a.to_str().unwrap()]).0, 0);
    assert_eq!(recv(&mut ct).action, HsmAction::Cancel);
    let fid = Fid(hai.fid);
    assert!(matches!(
        c.call(&one_way_start(fid, hai.cookie, true)),
        Ok(Reply::Unit)
    ));
    let e = |r: Result<Reply, RpcError>| match r {
        Err(RpcError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    };
    assert_eq!(
        e(c.call(&progress(fid, hai.cookie, 0, None))),
        libc::ECANCELED
    );
    let stamp = stamp_of(&a);
    assert_eq!(
        e(c.call(&progress(fid, hai.cookie, 1, Some(stamp)))),
        libc::ECANCELED
    );
    assert_eq!(
        e(c.call(&progress(fid, hai.cookie, 1, Some(stamp)))),
        libc::ENOENT,
        "the end completed the request"
    );
    assert!(!state(&a).contains("archived"), "{}", state(&a));

    // Modified while being archived: the stamp read at the start differs at the end: EBUSY.
    let b = mount.join("b");
    assert_eq!(run(cli::lfs, &["hsm_archive", b.to_str().unwrap()]).0, 0);
    let hai = recv(&mut ct);
    let stamp = stamp_of(&b);
    c.call(&one_way_start(Fid(hai.fid), hai.cookie, true))
        .unwrap();
    fs::write(&b, "two, longer").unwrap();
    assert_eq!(
        e(c.call(&progress(Fid(hai.fid), hai.cookie, 1, Some(stamp)))),
        libc::EBUSY
    );
    assert!(!state(&b).contains("archived"), "{}", state(&b));

    // Unchanged: archived. The start and the end queued in one write are both served (one
    // reply, for the end).
    let cf = mount.join("c");
    assert_eq!(run(cli::lfs, &["hsm_archive", cf.to_str().unwrap()]).0, 0);
    let hai = recv(&mut ct);
    let mut frames = Vec::new();
    rpc::encode_frame(&mut frames, &one_way_start(Fid(hai.fid), hai.cookie, true)).unwrap();
    rpc::encode_frame(
        &mut frames,
        &progress(Fid(hai.fid), hai.cookie, 1, Some(stamp_of(&cf))),
    )
    .unwrap();
    let mut s = UnixStream::connect(rpc::socket_path(&mount)).unwrap();
    s.write_all(&frames).unwrap();
    let r: rpc::Response = rpc::read_frame(&mut s).unwrap().unwrap();
    assert_eq!(r, rpc::Response::Ok(Reply::Unit));
    assert_eq!(
        state(&cf),
        format!(
            "{}: (0x00000009) exists archived, archive_id:1\n",
            cf.display()
        )
    );

    // Unknown cookie: the one-way start fails silently, the next call says ENOENT.
    c.call(&one_way_start(Fid(hai.fid), 999_999, false))
        .unwrap();
    assert_eq!(
        e(c.call(&progress(Fid(hai.fid), 999_999, 0, None))),
        libc::ENOENT
    );
    // The daemon survives a truncated binary frame (EPROTO, connection closed).
    let mut s = UnixStream::connect(rpc::socket_path(&mount)).unwrap();
    s.write_all(&2u32.to_le_bytes()).unwrap();
    s.write_all(&[0x02, 0]).unwrap();
    let r: rpc::Response = rpc::read_frame(&mut s).unwrap().unwrap();
    assert_eq!(r, rpc::Response::Err(libc::EPROTO));
    assert!(matches!(
        call(&mount, Request::Hello),
        Ok(Reply::Hello { .. })
    ));
    d.stop();
}

/// Out of fds, the daemon keeps serving the connections it has, and accepts the waiting ones
/// once fds are free again.
#[test]
fn out_of_fds_the_daemon_serves_its_clients_and_accepts_later() {
    use std::os::unix::process::CommandExt;
    let t = TempDir::new();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coordinatool-sim"));
    cmd.args(["serve", t.0.to_str().unwrap()])
        .env("COORDINATOOL_SIM_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = std::sync::Arc::new(std::sync::Mutex::new(cmd.spawn().unwrap()));
    // A regression must fail the test, not hang it: the daemon is killed after a minute, and
    // a call then fails instead of waiting.
    let watchdog = {
        let child = child.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            let _ = child.lock().unwrap().kill();
        })
    };
    let sock = rpc::socket_path(&t.0);
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let hello = |c: &mut Client| matches!(c.call(&Request::Hello), Ok(Reply::Hello { .. }));
    let mut first = Client::connect(&t.0).unwrap();
    assert!(hello(&mut first));
    // More connections than the daemon has fds: the kernel queues the rest.
    let more: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // The daemon is out of fds now, and still answers.
    assert!(hello(&mut first));
    // Fds come back: the waiting connections are accepted, and new ones are served.
    drop(more);
    let mut late: Vec<Client> = (0..5).map(|_| Client::connect(&t.0).unwrap()).collect();
    for c in &mut late {
        assert!(hello(c), "a connection made after fds came back is served");
    }
    let mut child = child.lock().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(watchdog);
}
