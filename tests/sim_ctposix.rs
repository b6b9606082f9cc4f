//! End to end: the reference C copytool (`crates/coordinatool-sim/copytool/ctposix.c`),
//! built here with `cc -Wall -Wextra -Werror` and linked with `-llustreapi`, runs unmodified
//! against the simulated Lustre through the stand-in `liblustreapi.so.1` (found with
//! `LD_LIBRARY_PATH`). Requests go through the simulator's `lfs`; every step waits on
//! observable state (copytool event lines, `hsm_state`, the MDT's `actions` listing).

mod sim_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use coordinatool_lustre::LuFid;
use sim_common::{Proc, Sim, api, build_c, checksum, lib_dir, pattern, wait_until};

fn ctposix() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/coordinatool-sim/copytool/ctposix.c");
        build_c(&src, "ctposix", &[])
    })
}

fn spawn_ctposix(sim: &Sim, args: &[&str]) -> Proc {
    let mut cmd = Command::new(ctposix());
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .arg("--hsm-root")
        .arg(sim.archive())
        .args(args)
        .arg(sim.mount());
    let p = Proc::spawn("ctposix", cmd);
    p.wait_line(&["REGISTER"]);
    p
}

fn fid_of(path: &Path) -> LuFid {
    api().path2fid(path).expect("path2fid")
}

fn archive_copy(sim: &Sim, archive_id: u32, fid: LuFid) -> PathBuf {
    sim.archive()
        .join(archive_id.to_string())
        .join(format!("{fid:#}"))
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn archive_release_restore_remove_and_cancel_with_threads() {
    let sim = Sim::start("ct-threads");
    let big = pattern(3 * 1024 * 1024 + 123, 1);
    let f1 = sim.write("big", &big);
    let f2 = sim.write("small", b"small file\n");
    let hold = sim.scratch("hold");
    let mut ct = spawn_ctposix(
        &sim,
        &[
            "--archive",
            "1",
            "--chunk-size",
            "262144",
            "--wait-file",
            &s(&hold),
        ],
    );
    let (fid1, fid2) = (fid_of(&f1), fid_of(&f2));

    // Archive both files in one request.
    sim.lfs(&["hsm_archive", &s(&f1), &s(&f2)]);
    ct.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
    ct.wait_line(&["ARCHIVE end", &fid2.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(std::fs::read(archive_copy(&sim, 1, fid1)).unwrap(), big);
    assert_eq!(
        std::fs::read(archive_copy(&sim, 1, fid2)).unwrap(),
        b"small file\n"
    );
    let progress = ct
        .lines()
        .iter()
        .filter(|l| l.starts_with("ARCHIVE progress") && l.contains(&fid1.to_string()))
        .count();
    assert_eq!(
        progress, 13,
        "one progress per 256 KiB chunk of 3 MiB + 123 bytes"
    );
    assert_eq!(
        sim.status_of(&fid1.to_string(), "ARCHIVE").as_deref(),
        Some("SUCCEED")
    );
    assert!(
        sim.state(&f1).contains("exists archived, archive_id:1"),
        "{}",
        sim.state(&f1)
    );

    // Release drops the data but keeps the size.
    sim.lfs(&["hsm_release", &s(&f1)]);
    assert!(sim.state(&f1).contains("released"), "{}", sim.state(&f1));
    let released = std::fs::read(&f1).unwrap();
    assert_eq!(released.len(), big.len());
    assert_ne!(checksum(&released), checksum(&big));

    // Restore brings the same bytes back through the volatile file.
    sim.lfs(&["hsm_restore", &s(&f1)]);
    let begin = ct.wait_line(&["RESTORE begin", &fid1.to_string()]);
    assert!(
        !begin.ends_with(&format!("dfid={fid1}")),
        "restore writes into a volatile with its own FID: {begin}"
    );
    ct.wait_line(&["RESTORE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(checksum(&std::fs::read(&f1).unwrap()), checksum(&big));
    let st = sim.state(&f1);
    assert!(
        st.contains("exists archived") && !st.contains("released"),
        "{st}"
    );
    assert_eq!(
        sim.status_of(&fid1.to_string(), "RESTORE").as_deref(),
        Some("SUCCEED")
    );

    // Remove deletes the archive copy and the HSM flags.
    sim.lfs(&["hsm_remove", &s(&f2)]);
    ct.wait_line(&["REMOVE end", &fid2.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert!(!archive_copy(&sim, 1, fid2).exists());
    let st = sim.state(&f2);
    assert!(!st.contains("archived") && !st.contains("exists"), "{st}");

    // Cancel of a transfer held in flight by the wait file.
    std::fs::write(&hold, b"").unwrap();
    let f3 = sim.write("held", &pattern(100_000, 3));
    let fid3 = fid_of(&f3);
    sim.lfs(&["hsm_archive", &s(&f3)]);
    ct.wait_line(&["ARCHIVE wait", &fid3.to_string()]);
    assert!(
        sim.lfs(&["hsm_action", &s(&f3)])
            .contains("ARCHIVE running")
    );
    sim.lfs(&["hsm_cancel", &s(&f3)]);
    ct.wait_line(&["CANCEL", &fid3.to_string(), "running=1"]);
    ct.wait_line(&[
        "ARCHIVE end",
        &fid3.to_string(),
        "rc=-125 errval=125 end_rc=0",
    ]);
    wait_until("the cancel to be recorded", || {
        sim.status_of(&fid3.to_string(), "CANCEL").as_deref() == Some("SUCCEED")
    });
    assert_eq!(
        sim.status_of(&fid3.to_string(), "ARCHIVE").as_deref(),
        Some("CANCELED")
    );
    assert!(!archive_copy(&sim, 1, fid3).exists());
    std::fs::remove_file(&hold).unwrap();

    // SIGTERM: unregister, exit 0.
    assert!(sim.param("mdt.*.hsm.agents").contains("archive_id=1 "));
    let st = ct.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "ctposix exit status {st}");
    ct.wait_line(&["STOP signal=15"]);
    assert_eq!(sim.param("mdt.*.hsm.agents").trim(), "");
}

#[test]
fn fork_and_poll_mode_cancel_then_shutdown() {
    let mut sim = Sim::start("ct-fork");
    let data = pattern(600_000, 7);
    let f1 = sim.write("a", &data);
    let hold = sim.scratch("hold");
    let mut ct = spawn_ctposix(
        &sim,
        &[
            "--fork",
            "--poll",
            "--chunk-size",
            "65536",
            "--wait-file",
            &s(&hold),
        ],
    );
    assert!(ct.lines()[0].contains("mode=fork poll"), "{:?}", ct.lines());
    let fid1 = fid_of(&f1);

    sim.lfs(&["hsm_archive", "--archive", "3", &s(&f1)]);
    ct.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(std::fs::read(archive_copy(&sim, 3, fid1)).unwrap(), data);
    sim.lfs(&["hsm_release", &s(&f1)]);
    sim.lfs(&["hsm_restore", &s(&f1)]);
    ct.wait_line(&["RESTORE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(checksum(&std::fs::read(&f1).unwrap()), checksum(&data));

    // The child process holding the transfer learns about the cancel from the parent.
    std::fs::write(&hold, b"").unwrap();
    let f2 = sim.write("b", &pattern(10_000, 8));
    let fid2 = fid_of(&f2);
    sim.lfs(&["hsm_archive", &s(&f2)]);
    ct.wait_line(&["ARCHIVE wait", &fid2.to_string()]);
    sim.lfs(&["hsm_cancel", &s(&f2)]);
    ct.wait_line(&["ARCHIVE end", &fid2.to_string(), "errval=125"]);
    wait_until("the canceled archive to be recorded", || {
        sim.status_of(&fid2.to_string(), "ARCHIVE").as_deref() == Some("CANCELED")
    });

    // Unmount: KUC_MSG_SHUTDOWN, recv returns -ESHUTDOWN, the copytool exits 0.
    sim.stop();
    ct.wait_line(&["SHUTDOWN"]);
    let st = ct.wait();
    assert!(st.success(), "ctposix exit status {st}");
}

#[test]
fn restore_of_a_missing_archive_copy_fails_and_keeps_the_file_released() {
    let sim = Sim::start("ct-errors");
    let f1 = sim.write("x", b"data of x");
    let ct = spawn_ctposix(&sim, &["--archive", "2"]);
    let fid1 = fid_of(&f1);
    sim.lfs(&["hsm_archive", "--archive", "2", &s(&f1)]);
    ct.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0"]);
    sim.lfs(&["hsm_release", &s(&f1)]);
    // The archive copy disappears behind the copytool's back: the restore must fail with
    // ENOENT and leave the file released.
    std::fs::remove_file(archive_copy(&sim, 2, fid1)).unwrap();
    sim.lfs(&["hsm_restore", &s(&f1)]);
    ct.wait_line(&["RESTORE end", &fid1.to_string(), "rc=-2 errval=2 end_rc=0"]);
    wait_until("the failed restore to be recorded", || {
        sim.status_of(&fid1.to_string(), "RESTORE").as_deref() == Some("FAILED")
    });
    assert!(sim.state(&f1).contains("released"), "{}", sim.state(&f1));
}

/// A preload library overriding some of the stand-in's functions (calling the real ones
/// through `dlsym(RTLD_NEXT)`), as interposers like coordinatool's preload do.
const PRELOAD_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lustreapi_subset.h"

static void note(const char *what)
{
	const char *path = getenv("PRELOAD_LOG");
	int fd;

	if (path == NULL)
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd >= 0) {
		if (write(fd, what, strlen(what)) < 0) {
		}
		close(fd);
	}
}

int llapi_hsm_action_progress(struct hsm_copyaction_private *hcp, const struct hsm_extent *he,
			      uint64_t total, int hp_flags)
{
	int (*next)(struct hsm_copyaction_private *, const struct hsm_extent *, uint64_t, int) =
		(int (*)(struct hsm_copyaction_private *, const struct hsm_extent *, uint64_t, int))
			dlsym(RTLD_NEXT, "llapi_hsm_action_progress");
	note("progress\n");
	return next(hcp, he, total, hp_flags);
}

int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he,
			 int hp_flags, int errval)
{
	int (*next)(struct hsm_copyaction_private **, const struct hsm_extent *, int, int) =
		(int (*)(struct hsm_copyaction_private **, const struct hsm_extent *, int, int))
			dlsym(RTLD_NEXT, "llapi_hsm_action_end");
	note("end\n");
	return next(phcp, he, hp_flags, errval);
}

int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct)
{
	(void)ct;
	note("get_fd\n");
	return -1;
}

void llapi_error(enum llapi_message_level level, int err, const char *fmt, ...)
{
	(void)level;
	(void)err;
	(void)fmt;
	note("error\n");
}
"#;

#[test]
fn works_underneath_an_ld_preload_library() {
    let sim = Sim::start("ct-preload");
    let src = sim.scratch("preload.c");
    std::fs::write(&src, PRELOAD_C).unwrap();
    let preload = build_c(&src, "libpreload.so", &["-shared", "-fPIC"]);
    let log = sim.scratch("preload.log");
    let data = pattern(300_000, 11);
    let f1 = sim.write("p", &data);
    let mut cmd = Command::new(ctposix());
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .env("LD_PRELOAD", &preload)
        .env("PRELOAD_LOG", &log)
        .args(["--chunk-size", "100000", "--hsm-root"])
        .arg(sim.archive())
        .arg(sim.mount());
    let ct = Proc::spawn("ctposix+preload", cmd);
    ct.wait_line(&["REGISTER"]);
    let fid1 = fid_of(&f1);
    sim.lfs(&["hsm_archive", &s(&f1)]);
    ct.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(std::fs::read(archive_copy(&sim, 1, fid1)).unwrap(), data);
    // The overrides were called by the copytool, and the library itself never called its own
    // exported get_fd (which the preload breaks) nor logged through the overridden
    // llapi_error.
    let noted = std::fs::read_to_string(&log).unwrap();
    assert_eq!(noted.matches("progress\n").count(), 3, "{noted}");
    assert_eq!(noted.matches("end\n").count(), 1, "{noted}");
    assert!(!noted.contains("get_fd"), "{noted}");
    assert!(!noted.contains("error"), "{noted}");
    assert_eq!(
        sim.status_of(&fid1.to_string(), "ARCHIVE").as_deref(),
        Some("SUCCEED")
    );
}

#[test]
fn copytools_of_two_simulated_clients_are_two_agents() {
    let sim = Sim::start("ct-clients");
    let spawn = |client: &str, archive: &str| {
        let mut cmd = Command::new(ctposix());
        cmd.env("LD_LIBRARY_PATH", lib_dir())
            .env("COORDINATOOL_SIM_CLIENT", client)
            .args(["--archive", archive, "--hsm-root"])
            .arg(sim.archive())
            .arg(sim.mount());
        let p = Proc::spawn(client, cmd);
        p.wait_line(&["REGISTER"]);
        p
    };
    let mut a = spawn("node-a", "1");
    let b = spawn("node-b", "2");
    let agents = sim.param("mdt.*.hsm.agents");
    let agent_lines: Vec<&str> = agents
        .lines()
        .filter(|l| l.contains("archive_id="))
        .collect();
    // Two agents on each of the two MDTs.
    assert_eq!(agent_lines.len(), 4, "{agents}");
    let f1 = sim.write("one", b"for archive 1");
    let f2 = sim.write("two", b"for archive 2");
    let (fid1, fid2) = (fid_of(&f1), fid_of(&f2));
    sim.lfs(&["hsm_archive", "--archive", "1", &s(&f1)]);
    sim.lfs(&["hsm_archive", "--archive", "2", &s(&f2)]);
    a.wait_line(&["ARCHIVE end", &fid1.to_string(), "rc=0"]);
    b.wait_line(&["ARCHIVE end", &fid2.to_string(), "rc=0"]);
    assert!(!a.lines().iter().any(|l| l.contains(&fid2.to_string())));
    assert!(!b.lines().iter().any(|l| l.contains(&fid1.to_string())));
    // Stopping one client's copytool unregisters that client only.
    assert!(a.signal_and_wait(libc::SIGTERM).success());
    let agents = sim.param("mdt.*.hsm.agents");
    assert!(
        agents.lines().all(|l| l.contains("archive_id=2 ")),
        "{agents}"
    );
}

/// Environment variable that turns [`serve_child_entry`] into `coordinatool-sim serve <it>`.
const SERVE_ENV: &str = "SIM_CTPOSIX_SERVE_MOUNT";

/// Not a test: the entry point of the daemon process of
/// [`copytool_exits_cleanly_when_the_daemon_process_dies`] (this binary re-executed with
/// `--ignored --exact`), running the `coordinatool-sim serve` command line until SIGTERM.
#[test]
#[ignore = "entry point of a child process, run by another test"]
fn serve_child_entry() {
    let Some(mount) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    let argv = vec![
        "coordinatool-sim".to_owned(),
        "serve".to_owned(),
        mount.to_string_lossy().into_owned(),
    ];
    let mut stdin: &[u8] = b"";
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let rc = coordinatool_sim::cli::main_with_args(
        &argv,
        &mut coordinatool_sim::cli::Io {
            stdin: &mut stdin,
            out: &mut out,
            err: &mut err,
        },
    );
    std::process::exit(rc);
}

#[test]
fn copytool_exits_cleanly_when_the_daemon_process_dies() {
    // The simulated filesystem is served by another process running `serve`; when that
    // process is killed (no shutdown message), the copytool's recv still ends with
    // -ESHUTDOWN and it exits cleanly.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sim-{}-serve-process", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mount = root.join("fs");
    let archive = root.join("archive");
    std::fs::create_dir_all(&mount).unwrap();
    let mut daemon = Command::new(std::env::current_exe().unwrap());
    daemon
        .args(["--ignored", "--exact", "serve_child_entry", "--nocapture"])
        .env(SERVE_ENV, &mount);
    let mut daemon = Proc::spawn("serve", daemon);
    let sock = mount.join(".lustre_sim/sock");
    wait_until("the daemon socket", || sock.exists());
    let mount = mount.canonicalize().unwrap();
    let data = pattern(50_000, 99);
    let f = mount.join("file");
    std::fs::write(&f, &data).unwrap();

    let mut cmd = Command::new(ctposix());
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .arg("--hsm-root")
        .arg(&archive)
        .arg(&mount);
    let mut ct = Proc::spawn("ctposix", cmd);
    ct.wait_line(&["REGISTER"]);
    let fid = fid_of(&f);
    let lfs = |args: &[&str]| {
        let mut argv = vec!["lfs"];
        argv.extend_from_slice(args);
        let (rc, out, err) = coordinatool_sim::cli::run_captured(&argv);
        assert_eq!(rc, 0, "lfs {args:?}: {err}");
        out
    };
    lfs(&["hsm_archive", &s(&f)]);
    ct.wait_line(&["ARCHIVE end", &fid.to_string(), "rc=0 errval=0 end_rc=0"]);
    lfs(&["hsm_release", &s(&f)]);
    lfs(&["hsm_restore", &s(&f)]);
    ct.wait_line(&["RESTORE end", &fid.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(checksum(&std::fs::read(&f).unwrap()), checksum(&data));

    // SIGKILL: the daemon cannot say goodbye.
    let st = daemon.signal_and_wait(libc::SIGKILL);
    assert!(!st.success());
    ct.wait_line(&["SHUTDOWN"]);
    assert!(ct.wait().success());
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs a one-shot ctposix (`--import`, `--rebind`, bad options); returns (status, stdout,
/// stderr).
fn run_ctposix(sim: &Sim, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(ctposix())
        .env("LD_LIBRARY_PATH", lib_dir())
        .arg("--hsm-root")
        .arg(sim.archive())
        .args(args)
        .output()
        .expect("run ctposix");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn symbols(file: &Path, which: &str) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", which])
        .arg(file)
        .output()
        .expect("nm");
    assert!(out.status.success(), "nm {which} {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .filter(|n| n.starts_with("llapi_"))
        .collect()
}

#[test]
fn every_llapi_symbol_ctposix_needs_is_exported_by_the_standin() {
    let needed = symbols(ctposix(), "--undefined-only");
    let exported = symbols(&lib_dir().join("liblustreapi.so"), "--defined-only");
    let missing: Vec<&String> = needed.iter().filter(|n| !exported.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "not exported by the stand-in: {missing:?}"
    );
    // ctposix uses what lhsmtool_posix uses besides the copytool calls (lustre-hsm.md §10).
    for sym in [
        "llapi_search_fsname",
        "llapi_get_mdt_index_by_fid",
        "llapi_fid2path_at",
        "llapi_fid_parse",
        "llapi_parse_size",
        "llapi_msg_set_level",
        "llapi_error",
        "llapi_error_callback_set",
        "llapi_hsm_import",
        "llapi_hsm_log_error",
        "llapi_hsm_register_event_fifo",
        "llapi_hsm_unregister_event_fifo",
    ] {
        assert!(
            needed.iter().any(|n| n == sym),
            "ctposix does not use {sym}"
        );
    }
    // 2.12's lhsmtool_posix calls llapi_fid2path instead of llapi_fid2path_at.
    assert!(exported.iter().any(|n| n == "llapi_fid2path"));
}

#[test]
fn import_then_restore_brings_the_archived_content_back() {
    let sim = Sim::start("ct-import");
    let data = pattern(1_234_567, 31);
    // An archive copy made elsewhere (another filesystem, an old archive), relative to the
    // HSM root as lhsmtool_posix's --import SRC is.
    std::fs::create_dir_all(sim.archive().join("old")).unwrap();
    let src = sim.archive().join("old/copy");
    std::fs::write(&src, &data).unwrap();
    std::fs::create_dir_all(sim.mount().join("restored")).unwrap();
    let dst = sim.mount().join("restored/file");
    let (st, out, err) = run_ctposix(
        &sim,
        &[
            "--archive",
            "2",
            "--import",
            "old/copy",
            &s(&dst),
            &s(sim.mount()),
        ],
    );
    assert!(st.success(), "{out}{err}");
    let fid = fid_of(&dst);
    let line = out
        .lines()
        .find(|l| l.starts_with("IMPORT"))
        .unwrap_or_else(|| panic!("no IMPORT line: {out}"));
    assert!(
        line.starts_with(&format!("IMPORT {fid} src={}", s(&src))) && line.contains(" archive=2 "),
        "{line}"
    );
    // The copy now lives at the new FID's archive path; the file is released.
    let copy = archive_copy(&sim, 2, fid);
    assert!(!src.exists());
    assert_eq!(checksum(&std::fs::read(&copy).unwrap()), checksum(&data));
    assert!(
        sim.state(&dst)
            .contains("(0x0000000d) released exists archived, archive_id:2"),
        "{}",
        sim.state(&dst)
    );
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), data.len() as u64);
    // The shadow link names the file by its Lustre path (llapi_fid2path_at).
    let shadow = sim.archive().join("shadow/restored/file");
    assert_eq!(std::fs::read_link(&shadow).unwrap(), copy);
    assert!(
        out.contains(&format!("SHADOW {fid} path=restored/file ")),
        "{out}"
    );

    // Importing onto an existing name fails and keeps the archive copy where it was.
    std::fs::write(sim.archive().join("old/again"), b"x").unwrap();
    let (st, _, err) = run_ctposix(&sim, &["--import", "old/again", &s(&dst), &s(sim.mount())]);
    assert!(!st.success());
    assert!(
        err.contains("cannot import") && err.contains("File exists"),
        "{err}"
    );
    assert!(sim.archive().join("old/again").exists());
    let (st, _, err) = run_ctposix(
        &sim,
        &[
            "--import",
            "old/missing",
            &s(&sim.mount().join("m")),
            &s(sim.mount()),
        ],
    );
    assert!(!st.success() && err.contains("No such file"), "{err}");
    assert!(!sim.mount().join("m").exists());

    // A copytool serving archive 2 restores it: same bytes.
    let ct = spawn_ctposix(&sim, &["--archive", "2", "--chunk-size", "256k"]);
    sim.lfs(&["hsm_restore", &s(&dst)]);
    ct.wait_line(&["RESTORE end", &fid.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert_eq!(checksum(&std::fs::read(&dst).unwrap()), checksum(&data));
    let state = sim.state(&dst);
    assert!(
        state.contains("exists archived, archive_id:2") && !state.contains("released"),
        "{state}"
    );

    // An imported file read by an application is restored first (implicit restore).
    let data2 = pattern(70_000, 32);
    let src2 = sim.scratch("second-copy");
    std::fs::write(&src2, &data2).unwrap();
    let dst2 = sim.mount().join("restored/second");
    let (st, out, err) = run_ctposix(
        &sim,
        &[
            "--archive",
            "2",
            "--import",
            &s(&src2),
            &s(&dst2),
            &s(sim.mount()),
        ],
    );
    assert!(st.success(), "{out}{err}");
    let (rc, read, err) = sim.command(&["cat", &s(&dst2)]);
    assert_eq!(rc, 0, "{err}");
    // `cat` hands back text: compare with the same lossy decoding of the bytes.
    assert!(
        read == String::from_utf8_lossy(&data2),
        "cat returned other bytes"
    );
    assert_eq!(checksum(&std::fs::read(&dst2).unwrap()), checksum(&data2));
    ct.wait_line(&[
        "RESTORE end",
        &fid_of(&dst2).to_string(),
        "rc=0 errval=0 end_rc=0",
    ]);
}

/// Progress lines of `fid`'s ARCHIVE (one per chunk).
fn progress_lines(ct: &Proc, fid: LuFid) -> Vec<String> {
    ct.lines()
        .into_iter()
        .filter(|l| l.starts_with("ARCHIVE progress") && l.contains(&fid.to_string()))
        .collect()
}

#[test]
fn chunk_size_and_bandwidth_take_units() {
    let sim = Sim::start("ct-chunk");
    let data = pattern(300_000, 41);
    for (chunk, bytes) in [
        ("64k", 65_536usize),
        ("0.125M", 131_072),
        ("100000", 100_000),
    ] {
        // A new file each time: archiving an archived, clean file is a no-op.
        let f = sim.write(&format!("c{bytes}"), &data);
        let fid = fid_of(&f);
        let ct = spawn_ctposix(&sim, &["--chunk-size", chunk, "--bandwidth", "1g"]);
        sim.lfs(&["hsm_archive", &s(&f)]);
        ct.wait_line(&["ARCHIVE end", &fid.to_string(), "rc=0 errval=0 end_rc=0"]);
        let lines = progress_lines(&ct, fid);
        assert_eq!(
            lines.len(),
            data.len().div_ceil(bytes),
            "--chunk-size {chunk}: {lines:?}"
        );
        assert!(
            lines[0].contains(&format!("offset=0 length={bytes} ")),
            "{chunk}: {}",
            lines[0]
        );
        assert_eq!(
            std::fs::read(archive_copy(&sim, 1, fid)).unwrap(),
            data,
            "{chunk}"
        );
        drop(ct);
    }
    // `-c`/`-b` short forms too; bad values are refused before anything starts.
    for (args, what) in [
        (&["-c", "12q"][..], "--chunk-size 12q"),
        (&["-c", "2g"], "--chunk-size 2g"),
        (&["--chunk-size", "0"], "--chunk-size 0"),
        (&["-b", "-5"], "--bandwidth -5"),
        (&["--bandwidth", "fast"], "--bandwidth fast"),
    ] {
        let mut a = args.to_vec();
        let m = s(sim.mount());
        a.push(&m);
        let (st, _, err) = run_ctposix(&sim, &a);
        assert_eq!(st.code(), Some(1), "{args:?}");
        assert!(err.contains(what), "{args:?}: {err}");
    }
}

#[test]
fn rebind_moves_archive_copies_to_new_fids() {
    let sim = Sim::start("ct-rebind");
    let old = sim.write("old", b"old data");
    let old2 = sim.write("old2", b"second");
    let ct = spawn_ctposix(&sim, &["--no-shadow"]);
    let (fo, fo2) = (fid_of(&old), fid_of(&old2));
    sim.lfs(&["hsm_archive", &s(&old), &s(&old2)]);
    ct.wait_line(&["ARCHIVE end", &fo.to_string(), "rc=0 errval=0 end_rc=0"]);
    ct.wait_line(&["ARCHIVE end", &fo2.to_string(), "rc=0 errval=0 end_rc=0"]);
    assert!(!sim.archive().join("shadow").exists(), "--no-shadow");
    drop(ct);
    let new = sim.write("new", b"");
    let new2 = sim.write("new2", b"");
    let (fnew, fnew2) = (fid_of(&new), fid_of(&new2));

    // Two FID arguments, with and without brackets (llapi_fid_parse).
    let (st, out, err) = run_ctposix(
        &sim,
        &[
            "--rebind",
            &fo.to_string(),
            &format!("{fnew:#}"),
            &s(sim.mount()),
        ],
    );
    assert!(st.success(), "{out}{err}");
    assert!(out.contains(&format!("REBIND {fo} {fnew} copy=")), "{out}");
    assert!(!archive_copy(&sim, 1, fo).exists());
    assert_eq!(
        std::fs::read(archive_copy(&sim, 1, fnew)).unwrap(),
        b"old data"
    );
    assert_eq!(
        std::fs::read_link(sim.archive().join("shadow/new")).unwrap(),
        archive_copy(&sim, 1, fnew)
    );

    // A list: one good pair, a comment, a bad line named by its number.
    let list = sim.scratch("rebind.list");
    std::fs::write(
        &list,
        format!("# old new\n{fo2} {fnew2}\n\n[0x1:0x2] {fnew2}\n"),
    )
    .unwrap();
    let (st, out, err) = run_ctposix(&sim, &["--rebind", &s(&list), &s(sim.mount())]);
    assert_eq!(st.code(), Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("{}:4: expected two FIDs", s(&list))),
        "{err}"
    );
    assert_eq!(
        std::fs::read(archive_copy(&sim, 1, fnew2)).unwrap(),
        b"second"
    );
    assert!(!archive_copy(&sim, 1, fo2).exists());

    // Malformed FID arguments.
    for bad in ["0x1:0x2", "[0x1:0x2:0x3]x", "0x1:0x100000000:0"] {
        let (st, _, err) =
            run_ctposix(&sim, &["--rebind", bad, &fnew.to_string(), &s(sim.mount())]);
        assert_eq!(st.code(), Some(1), "{bad}");
        assert!(err.contains(&format!("bad FID '{bad}'")), "{bad}: {err}");
    }
}

#[test]
fn event_fifo_reports_actions_and_logged_errors_as_json() {
    let sim = Sim::start("ct-fifo");
    let fifo = sim.scratch("ct.fifo");
    let cfifo = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a C path.
    assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::fs::File::open(&fifo).expect("open fifo"),
                &mut text,
            )
            .expect("read fifo");
            text
        })
    };
    let data = pattern(50_000, 51);
    let f = sim.write("ev", &data);
    let fid = fid_of(&f);
    let mut ct = spawn_ctposix(&sim, &["-f", &s(&fifo), "--chunk-size", "20000"]);
    sim.lfs(&["hsm_archive", &s(&f)]);
    ct.wait_line(&["ARCHIVE end", &fid.to_string(), "rc=0 errval=0 end_rc=0"]);
    // A restore whose archive copy is gone: the copytool's error becomes an event.
    sim.lfs(&["hsm_release", &s(&f)]);
    std::fs::remove_file(archive_copy(&sim, 1, fid)).unwrap();
    sim.lfs(&["hsm_restore", &s(&f)]);
    ct.wait_line(&["RESTORE end", &fid.to_string(), "errval=2"]);
    assert!(ct.signal_and_wait(libc::SIGTERM).success());
    let text = reader.join().unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(types.first(), Some(&"REGISTER"), "{text}");
    assert_eq!(types.last(), Some(&"UNREGISTER"), "{text}");
    let start = events
        .iter()
        .find(|e| e["event_type"] == "ARCHIVE_START")
        .unwrap_or_else(|| panic!("no ARCHIVE_START: {text}"));
    assert_eq!(start["source_fid"], fid.to_string());
    assert_eq!(start["lustre_path"], "ev");
    let running: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "ARCHIVE_RUNNING")
        .collect();
    assert_eq!(running.len(), 3, "one per 20000-byte chunk: {text}");
    assert!(types.contains(&"ARCHIVE_FINISH"), "{text}");
    assert!(types.contains(&"RESTORE_ERROR"), "{text}");
    let logged = events
        .iter()
        .find(|e| {
            e["event_type"] == "LOGGED_MESSAGE"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cannot open archive copy"))
        })
        .unwrap_or_else(|| panic!("no LOGGED_MESSAGE for the missing copy: {text}"));
    assert_eq!(logged["errno"], libc::ENOENT);
}
