//! End-to-end tests of the safe copytool API against a stand-in liblustreapi.so.1
//! (tests/copytool_stub/liblustreapi_stub.c, compiled here with `cc -shared`).
//!
//! Each test uses its own directory as the "mount point": the stub keys its state (pipe,
//! call log in `<mnt>/.stub_log`, injected errors in `<mnt>/.stub_<call>_errno`) by it, so
//! the tests run in parallel on one loaded library.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::raw::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use coordinatool_lustre::action::HsmRequestFlags;
use coordinatool_lustre::copytool::{DROPPED_ACTION_ERRNO, c_action_item_bytes};
use coordinatool_lustre::ffi::bindings;
use coordinatool_lustre::hal::{HsmActionItem, HsmActionList, HsmExtent, LUSTRE_EOF};
use coordinatool_lustre::{
    Copytool, HsmAction, HsmProgressFlags, HsmProgressState, HsmStates, HsmUserAction,
    LlapiLogLevel, LuFid, LustreError, Lustreapi,
};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the stub once per test binary and returns its path.
fn stub_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("lustreapi-stub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create stub dir");
        let out = dir.join("liblustreapi.so.1");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let status = Command::new(&cc)
            .args([
                "-std=c99", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
            ])
            .arg("-Wl,-soname,liblustreapi.so.1")
            .arg("-I")
            .arg(crate_dir().join("include"))
            .arg("-o")
            .arg(&out)
            .arg(crate_dir().join("tests/copytool_stub/liblustreapi_stub.c"))
            .arg("-lpthread")
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
        assert!(status.success(), "compiling the stub liblustreapi failed");
        out
    })
}

fn api() -> &'static Lustreapi {
    static API: OnceLock<Lustreapi> = OnceLock::new();
    API.get_or_init(|| Lustreapi::load_from(stub_path()).expect("load the stub"))
}

/// The same library opened again for the stub's test hooks (dlopen returns the same handle).
fn hooks() -> &'static libloading::Library {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    // SAFETY: the stub has no initialisers.
    LIB.get_or_init(|| unsafe { libloading::Library::new(stub_path()) }.expect("open stub"))
}

/// A per-test "mount point" directory, removed at the end.
struct Mnt(PathBuf);

impl Mnt {
    fn new(name: &str) -> Mnt {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "mnt-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".lustre/fid")).expect("create mnt");
        Mnt(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join(".stub_log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn inject(&self, call: &str, errno: i32) {
        std::fs::write(
            self.0.join(format!(".stub_{call}_errno")),
            errno.to_string(),
        )
        .expect("inject");
    }

    fn push(&self, msg: &[u8]) {
        // SAFETY: signature of stub_push in the stub source.
        let push: libloading::Symbol<
            '_,
            unsafe extern "C" fn(*const c_char, *const c_void, usize) -> c_int,
        > = unsafe { hooks().get(b"stub_push\0") }.expect("stub_push");
        let mnt = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid string and buffer.
        let rc = unsafe { push(mnt.as_ptr(), msg.as_ptr().cast(), msg.len()) };
        assert_eq!(rc, 0, "stub_push failed");
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kuc_hdr (lustre-hsm.md §2.9) followed by `payload`.
fn kuc(transport: u8, msgtype: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("message fits a u16");
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&0x191Cu16.to_le_bytes());
    m.push(transport);
    m.push(0);
    m.extend_from_slice(&msgtype.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn hal_msg(hal: &HsmActionList) -> Vec<u8> {
    kuc(2, 100, &hal.encode())
}

fn sample_list(archive_id: u32) -> HsmActionList {
    let mut hal = HsmActionList::new("lustre", archive_id, 0);
    let mut a = HsmActionItem::new(
        HsmAction::Archive,
        LuFid::new(0x200000401, 0x4, 0),
        0x659d1265,
    );
    a.data = b"tag=1 with spaces, commas".to_vec();
    let mut r = HsmActionItem::new(
        HsmAction::Restore,
        LuFid::new(0x200000402, 0x1cce, 0),
        0x659d1266,
    );
    r.extent = HsmExtent::new(4096, 65536);
    hal.items = vec![a, r];
    hal
}

fn wait_readable(ct: &Copytool<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: ct.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. The timeout only bounds a broken test; it is not a speed check.
    let n = unsafe { libc::poll(&mut p, 1, 10_000) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn handles_are_send_and_sync_as_documented() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Copytool<'static>>();
    send::<coordinatool_lustre::ActionHandle<'static>>();
    send_sync::<Lustreapi>();
}

#[test]
fn register_poll_recv_returns_an_owned_list_and_unregisters_on_drop() {
    let mnt = Mnt::new("recv");
    let ct = Copytool::register(api(), mnt.path(), &[1, 2], true).expect("register");
    assert_eq!(mnt.log(), ["register count=2 ids=1,2 nonblock=1"]);
    assert_eq!(ct.archive_ids(), [1, 2]);
    assert_eq!(ct.mount_point(), mnt.path());
    // SAFETY: fcntl on an open fd.
    let flags = unsafe { libc::fcntl(ct.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(flags & libc::O_NONBLOCK, 0, "non-blocking registration");

    assert_eq!(
        ct.recv(),
        Err(LustreError::WouldBlock {
            call: "llapi_hsm_copytool_recv"
        })
    );

    let sent = sample_list(2);
    mnt.push(&hal_msg(&sent));
    assert!(wait_readable(&ct), "fd not readable after a message");
    let got = ct.recv().expect("recv");
    assert_eq!(got, sent);

    // The copy survives the next recv (the library reuses its buffer).
    let mut second = HsmActionList::new("lustre", 1, 1);
    second.items = vec![HsmActionItem::new(
        HsmAction::Remove,
        LuFid::new(7, 8, 9),
        42,
    )];
    mnt.push(&hal_msg(&second));
    assert_eq!(ct.recv().expect("recv 2"), second);
    assert_eq!(got, sent);

    drop(ct);
    assert_eq!(mnt.log().last().map(String::as_str), Some("unregister"));
}

#[test]
fn explicit_unregister_and_fd_is_not_closed_by_us() {
    let mnt = Mnt::new("unreg");
    let ct = Copytool::register(api(), mnt.path(), &[], false).expect("register");
    let fd = ct.as_raw_fd();
    {
        let _borrowed = ct.fd();
    }
    // Still open after the borrow ends: the pipe belongs to the library.
    // SAFETY: fcntl on an fd number.
    assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    ct.unregister().expect("unregister");
    assert_eq!(
        mnt.log(),
        ["register count=0 ids= nonblock=0", "unregister"]
    );
}

#[test]
fn blocking_registration_receives_a_queued_message() {
    let mnt = Mnt::new("blocking");
    let ct = Copytool::register(api(), mnt.path(), &[], false).expect("register");
    // SAFETY: fcntl on an open fd.
    let flags = unsafe { libc::fcntl(ct.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_NONBLOCK, 0);
    let sent = sample_list(9);
    mnt.push(&hal_msg(&sent));
    assert_eq!(ct.recv().expect("recv"), sent);
}

#[test]
fn recv_skips_lists_for_other_archives() {
    let mnt = Mnt::new("filter");
    let ct = Copytool::register(api(), mnt.path(), &[2], true).expect("register");
    mnt.push(&hal_msg(&sample_list(1)));
    mnt.push(&hal_msg(&sample_list(2)));
    assert_eq!(ct.recv().expect("recv").archive_id, 2);
    assert!(mnt.log().contains(&"recv filtered archive=1".to_owned()));
}

#[test]
fn shutdown_message_maps_to_shutdown() {
    let mnt = Mnt::new("shutdown");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    mnt.push(&kuc(1, 1, &[]));
    let e = ct.recv().unwrap_err();
    assert_eq!(
        e,
        LustreError::Shutdown {
            call: "llapi_hsm_copytool_recv"
        }
    );
    assert_eq!(e.errno(), libc::ESHUTDOWN);
    assert!(e.to_string().contains("unmounted"), "{e}");
}

#[test]
fn malformed_list_is_an_error_not_ub() {
    let mnt = Mnt::new("malformed");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    // A header announcing one item, then only the fsname: the item is missing.
    let mut hal = HsmActionList::new("lustre", 1, 0).encode();
    hal[4..8].copy_from_slice(&1u32.to_le_bytes());
    mnt.push(&kuc(2, 100, &hal));
    match ct.recv() {
        Err(LustreError::Malformed { call, .. }) => assert_eq!(call, "llapi_hsm_copytool_recv"),
        other => panic!("expected Malformed, got {other:?}"),
    }
    // A wrong transport is a protocol error from the library.
    mnt.push(&kuc(3, 100, &sample_list(1).encode()));
    assert_eq!(
        ct.recv(),
        Err(LustreError::Other {
            call: "llapi_hsm_copytool_recv",
            errno: libc::EPROTO
        })
    );
}

#[test]
fn register_errors_are_typed() {
    let missing = Path::new("/nonexistent/coordinatool/mnt");
    assert_eq!(
        Copytool::register(api(), missing, &[], true).unwrap_err(),
        LustreError::NotFound {
            call: "llapi_hsm_copytool_register"
        }
    );
    let mnt = Mnt::new("regerr");
    mnt.inject("register", libc::ENXIO);
    let e = Copytool::register(api(), mnt.path(), &[1], true).unwrap_err();
    assert_eq!(
        e,
        LustreError::CoordinatorNotRunning {
            call: "llapi_hsm_copytool_register"
        }
    );
    assert!(e.to_string().contains("hsm_control=enabled"), "{e}");
    mnt.inject("register", libc::EPERM);
    assert_eq!(
        Copytool::register(api(), mnt.path(), &[1], true).unwrap_err(),
        LustreError::PermissionDenied {
            call: "llapi_hsm_copytool_register",
            errno: libc::EPERM
        }
    );
    mnt.inject("register", libc::ENOTCONN);
    assert!(matches!(
        Copytool::register(api(), mnt.path(), &[1], true),
        Err(LustreError::NotConnected { .. })
    ));
    // Validation failures never reach the library.
    for ids in [&[0u32][..], &[1, 1], &[u32::MAX]] {
        assert!(matches!(
            Copytool::register(api(), mnt.path(), ids, true),
            Err(LustreError::BadArgument { .. })
        ));
    }
    assert!(matches!(
        Copytool::register(api(), Path::new("/tmp/a\0b"), &[], true),
        Err(LustreError::BadArgument { .. })
    ));
    assert!(mnt.log().is_empty(), "{:?}", mnt.log());
}

fn archive_item(mnt: &Mnt, cookie: u64) -> HsmActionItem {
    let fid = LuFid::new(0x200000401, 0x4, 0);
    std::fs::write(
        mnt.path().join(format!(".lustre/fid/{fid:#}")),
        b"hello archive",
    )
    .unwrap();
    let mut item = HsmActionItem::new(HsmAction::Archive, fid, cookie);
    item.data = b"some data the library must not see".to_vec();
    item
}

#[test]
fn archive_action_begin_progress_end() {
    let mnt = Mnt::new("archive");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    let item = archive_item(&mnt, 0x1234);
    let h = ct.action_begin(&item, -1, 0, false).expect("begin");
    assert_eq!(
        (h.action(), h.fid(), h.cookie()),
        (HsmAction::Archive, item.fid, 0x1234)
    );
    assert_eq!(h.dfid().expect("dfid"), item.dfid);
    let mut f = std::fs::File::from(h.fd().expect("fd"));
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello archive");
    h.progress(HsmExtent::new(0, 13), 13, HsmProgressFlags::default())
        .expect("progress");
    h.end(HsmExtent::new(0, 13), HsmProgressFlags::COMPLETED, 0)
        .expect("end");
    // Our dup stays usable after end: we own it.
    f.rewind().unwrap();
    assert_eq!(
        mnt.log()[1..],
        [
            "begin cookie=0x1234 action=20 hai_len=72 mdt=-1 oflags=0 is_error=0",
            "progress cookie=0x1234 offset=0 length=13 total=13 flags=0",
            "end cookie=0x1234 offset=0 length=13 flags=1 errval=0",
        ]
    );
}

#[test]
fn restore_action_uses_the_volatile_dfid_and_fd() {
    let mnt = Mnt::new("restore");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    let item = HsmActionItem::new(HsmAction::Restore, LuFid::new(0x200000401, 9, 0), 0xabcd);
    let h = ct
        .action_begin(&item, 2, libc::O_NOFOLLOW, false)
        .expect("begin");
    assert_eq!(h.dfid().expect("dfid"), LuFid::new(0xf00000000, 0xabcd, 0));
    let mut f = std::fs::File::from(h.fd().expect("fd"));
    f.write_all(b"restored").unwrap();
    h.end(HsmExtent::WHOLE_FILE, HsmProgressFlags::default(), 0)
        .expect("end");
    assert!(mnt.log()[1].contains("mdt=2"), "{:?}", mnt.log());
    assert!(
        mnt.log()[2].ends_with(&format!("length={LUSTRE_EOF} flags=0 errval=0")),
        "{:?}",
        mnt.log()
    );
}

#[test]
fn dropped_handle_is_ended_once_with_eio() {
    let mnt = Mnt::new("drop");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    let mut item = archive_item(&mnt, 0x77);
    item.extent = HsmExtent::new(100, 200);
    let h = ct.action_begin(&item, -1, 0, false).expect("begin");
    drop(h);
    let ends: Vec<_> = mnt
        .log()
        .into_iter()
        .filter(|l| l.starts_with("end "))
        .collect();
    assert_eq!(
        ends,
        [format!(
            "end cookie=0x77 offset=100 length=200 flags=1 errval={DROPPED_ACTION_ERRNO}"
        )]
    );
    assert_eq!(DROPPED_ACTION_ERRNO, libc::EIO);
}

#[test]
fn report_error_is_begin_is_error_then_end() {
    let mnt = Mnt::new("report");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    // A CANCEL item: nothing is opened with is_error, so no file is needed.
    let item = HsmActionItem::new(HsmAction::Cancel, LuFid::new(1, 2, 3), 0x99);
    ct.report_error(&item, libc::ECANCELED).expect("report");
    assert_eq!(
        mnt.log()[1..],
        [
            "begin cookie=0x99 action=23 hai_len=72 mdt=-1 oflags=0 is_error=1".to_owned(),
            format!(
                "end cookie=0x99 offset=0 length={LUSTRE_EOF} flags=1 errval={}",
                libc::ECANCELED
            ),
        ]
    );
}

#[test]
fn action_errors_are_typed_and_end_still_consumes() {
    let mnt = Mnt::new("acterr");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    // ARCHIVE of a file that does not exist: begin fails, nothing to end.
    let missing = HsmActionItem::new(HsmAction::Archive, LuFid::new(5, 5, 5), 1);
    assert_eq!(
        ct.action_begin(&missing, -1, 0, false).unwrap_err(),
        LustreError::NotFound {
            call: "llapi_hsm_action_begin"
        }
    );
    // REMOVE has no data fid nor fd.
    let remove = HsmActionItem::new(HsmAction::Remove, LuFid::new(5, 5, 5), 2);
    let h = ct
        .action_begin(&remove, -1, 0, false)
        .expect("begin remove");
    assert_eq!(
        h.dfid().unwrap_err(),
        LustreError::InvalidArgument {
            call: "llapi_hsm_action_get_dfid"
        }
    );
    assert!(matches!(h.fd(), Err(LustreError::InvalidArgument { .. })));
    // Cancel seen through progress, then the end itself fails (EBUSY): one end only.
    mnt.inject("progress", libc::ECANCELED);
    assert_eq!(
        h.progress(HsmExtent::new(0, 1), 1, HsmProgressFlags::default()),
        Err(LustreError::Canceled {
            call: "llapi_hsm_action_progress"
        })
    );
    mnt.inject("end", libc::EBUSY);
    assert_eq!(
        h.end(
            HsmExtent::new(0, 1),
            HsmProgressFlags::COMPLETED,
            libc::ECANCELED
        ),
        Err(LustreError::Busy {
            call: "llapi_hsm_action_end"
        })
    );
    let ends = mnt.log().iter().filter(|l| l.starts_with("end ")).count();
    assert_eq!(ends, 1);
    // An injected begin failure (e.g. the request was canceled meanwhile).
    mnt.inject("begin", libc::ECANCELED);
    assert!(matches!(
        ct.action_begin(&remove, -1, 0, false),
        Err(LustreError::Canceled { .. })
    ));
}

#[test]
fn actions_run_concurrently_from_threads() {
    let mnt = Mnt::new("threads");
    let ct = Copytool::register(api(), mnt.path(), &[], true).expect("register");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let ct = &ct;
            s.spawn(move || {
                for i in 0..25u64 {
                    let item = HsmActionItem::new(
                        HsmAction::Remove,
                        LuFid::new(t, i as u32, 0),
                        t * 100 + i,
                    );
                    let h = ct.action_begin(&item, -1, 0, false).expect("begin");
                    h.end(HsmExtent::WHOLE_FILE, HsmProgressFlags::COMPLETED, 0)
                        .expect("end");
                }
            });
        }
    });
    let log = mnt.log();
    assert_eq!(log.iter().filter(|l| l.starts_with("begin ")).count(), 100);
    assert_eq!(log.iter().filter(|l| l.starts_with("end ")).count(), 100);
}

#[test]
fn hsm_request_builds_the_user_request() {
    let mnt = Mnt::new("request");
    let items = [
        (LuFid::new(0x200000401, 1, 0), HsmExtent::WHOLE_FILE),
        (LuFid::new(0x200000402, 2, 0), HsmExtent::new(10, 20)),
    ];
    api()
        .hsm_request(
            mnt.path(),
            HsmUserAction::Cancel,
            3,
            HsmRequestFlags::FORCE_ACTION,
            &items,
            b"\x00ab",
        )
        .expect("request");
    assert_eq!(
        mnt.log(),
        [format!(
            "request action=14 archive=3 flags=1 items=[0x200000401:0x1:0x0]@0+{LUSTRE_EOF},\
             [0x200000402:0x2:0x0]@10+20 data=006162"
        )]
    );
    assert!(matches!(
        api().hsm_request(
            mnt.path(),
            HsmUserAction::Archive,
            1,
            HsmRequestFlags::default(),
            &[],
            b""
        ),
        Err(LustreError::BadArgument {
            call: "llapi_hsm_request",
            ..
        })
    ));
    assert_eq!(
        api().hsm_request(
            Path::new("/nonexistent/x"),
            HsmUserAction::Archive,
            1,
            HsmRequestFlags::default(),
            &items,
            b""
        ),
        Err(LustreError::NotFound {
            call: "llapi_hsm_request"
        })
    );
}

#[test]
fn path_and_fid_helpers() {
    let mnt = Mnt::new("paths");
    let api = api();
    let fid = LuFid::new(0x200000401, 0x4, 0);
    assert_eq!(
        api.fid2path(mnt.path(), &fid).unwrap(),
        Path::new("dir/200000401/4")
    );
    assert_eq!(
        api.fid2path(Path::new("/nonexistent"), &fid).unwrap_err(),
        LustreError::NotFound {
            call: "llapi_fid2path"
        }
    );
    let file = mnt.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    let expect = LuFid::new(0x200000401, ino as u32, 0);
    assert_eq!(api.path2fid(&file).unwrap(), expect);
    let f = std::fs::File::open(&file).unwrap();
    assert_eq!(api.fd2fid(f.as_fd()).unwrap(), expect);
    assert_eq!(api.search_fsname(mnt.path()).unwrap(), "stubfs");
    assert!(matches!(
        api.search_fsname(Path::new("/nonexistent")),
        Err(LustreError::NotFound { .. })
    ));
    assert_eq!(
        api.mdt_index_by_fid(f.as_fd(), &LuFid::new(6, 0, 0))
            .unwrap(),
        2
    );

    let st = api.hsm_state_get(&file).unwrap();
    assert_eq!(st.states, HsmStates::EXISTS | HsmStates::ARCHIVED);
    assert_eq!(st.archive_id, 3);
    assert_eq!(st.in_progress_state, HsmProgressState::Running);
    assert_eq!(st.in_progress_action, Some(HsmUserAction::Restore));
    assert_eq!(st.in_progress_location, HsmExtent::WHOLE_FILE);
    let ca = api.hsm_current_action(&file).unwrap();
    assert_eq!(ca.state, HsmProgressState::Waiting);
    assert_eq!(ca.action, Some(HsmUserAction::Archive));
    assert_eq!(ca.location, HsmExtent::new(4096, 8192));
    api.hsm_state_set(mnt.path(), HsmStates::NORELEASE, HsmStates::DIRTY, 0)
        .unwrap();
    assert_eq!(mnt.log(), ["state_set set=0x10 clear=0x2 archive=0"]);
}

/// A minimal subscriber that records (level, target, message) of every event.
mod capture {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<Vec<(Level, String, String)>>>);

    struct Msg(String);
    impl Visit for Msg {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut m = Msg(String::new());
            event.record(&mut m);
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((*meta.level(), meta.target().to_owned(), m.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[test]
fn library_messages_are_routed_into_tracing() {
    let api = api();
    api.set_log_level(LlapiLogLevel::Debug);
    assert_eq!(api.log_level(), LlapiLogLevel::Debug);
    api.route_logs_to_tracing();

    type LlapiError = unsafe extern "C" fn(c_int, c_int, *const c_char, ...);
    type LlapiPrintf = unsafe extern "C" fn(c_int, *const c_char, ...);
    // SAFETY: the prototypes of the header.
    let error: libloading::Symbol<'_, LlapiError> =
        unsafe { hooks().get(b"llapi_error\0") }.unwrap();
    let printf: libloading::Symbol<'_, LlapiPrintf> =
        unsafe { hooks().get(b"llapi_printf\0") }.unwrap();

    let cap = capture::Capture::default();
    let long = "x".repeat(5000);
    let long = CString::new(long).unwrap();
    tracing::subscriber::with_default(cap.clone(), || {
        // SAFETY: formats match their arguments.
        unsafe {
            error(
                bindings::LLAPI_MSG_ERROR as c_int,
                libc::ENOENT,
                c"cannot open '%s': %d".as_ptr(),
                c"/mnt/x".as_ptr(),
                42 as c_int,
            );
            error(
                (bindings::LLAPI_MSG_WARN | bindings::LLAPI_MSG_NO_ERRNO) as c_int,
                libc::EIO,
                c"no errno here %llu".as_ptr(),
                7u64,
            );
            printf(
                bindings::LLAPI_MSG_DEBUG as c_int,
                c"debug %s\n".as_ptr(),
                c"line".as_ptr(),
            );
            printf(
                bindings::LLAPI_MSG_INFO as c_int,
                c"%s".as_ptr(),
                long.as_ptr(),
            );
        }
    });
    let got = cap.0.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|(_, target, _)| target == "liblustreapi"));
    assert_eq!(
        (got[0].0, got[0].2.as_str()),
        (
            tracing::Level::ERROR,
            "cannot open '/mnt/x': 42: No such file or directory (2)"
        )
    );
    assert_eq!(
        (got[1].0, got[1].2.as_str()),
        (tracing::Level::WARN, "no errno here 7")
    );
    assert_eq!(
        (got[2].0, got[2].2.as_str()),
        (tracing::Level::DEBUG, "debug line")
    );
    assert_eq!(got[3].0, tracing::Level::INFO);
    assert!(
        got[3].2.ends_with("...(truncated)") && got[3].2.len() < 2100,
        "{}",
        got[3].2.len()
    );

    api.set_log_level(LlapiLogLevel::Warn);
    assert_eq!(api.log_level(), LlapiLogLevel::Warn);
}

#[test]
fn c_item_passed_to_begin_is_the_fixed_part_of_the_encoded_item() {
    // What action_begin receives equals the first 72 bytes of the list encoding, with
    // hai_len 72 (the data is not carried).
    let mut item = HsmActionItem::new(
        HsmAction::Restore,
        LuFid::new(0x1122334455667788, 0x99aabbcc, 0xddeeff00),
        0x0102030405060708,
    );
    item.dfid = LuFid::new(9, 8, 7);
    item.gid = 0xfeed;
    item.data = b"abc".to_vec();
    let mut enc = Vec::new();
    item.encode_into(&mut enc);
    let mut expect = [0u8; 72];
    expect.copy_from_slice(&enc[..72]);
    expect[0..4].copy_from_slice(&72u32.to_le_bytes());
    assert_eq!(c_action_item_bytes(&item), expect);
}
