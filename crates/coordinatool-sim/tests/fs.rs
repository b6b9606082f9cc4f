//! The file side of the simulator against a real temporary directory.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use coordinatool_lustre::{HsmProgressFlags, HsmStates, HsmUserAction, LuFid};
use coordinatool_sim::fs::{ROOT_FID, SimFs};
use coordinatool_sim::mdt::{Caller, Cluster, Errno, HsmExtent, Progress, UserRequest};

const T0: u64 = 1_700_000_000;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "cts-fs-{}-{}",
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

fn archive(c: &mut Cluster, sfs: &mut SimFs, fid: LuFid) {
    c.register("agent", &[]).unwrap();
    c.request(
        T0,
        Caller::ROOT,
        &UserRequest::whole_files(HsmUserAction::Archive, 1, &[fid]),
    )
    .unwrap();
    c.tick(T0);
    let d = c.poll_dispatch().unwrap();
    let dv = sfs.refresh(fid, c).unwrap();
    c.progress(
        T0,
        &Progress {
            fid,
            cookie: d.items[0].cookie,
            extent: HsmExtent::WHOLE_FILE,
            flags: HsmProgressFlags::COMPLETED,
            errval: 0,
            data_version: Some(dv),
        },
    )
    .unwrap();
}

#[test]
fn fids_open_by_fid_fid2path_and_persistence() {
    let t = TempDir::new();
    fs::create_dir(t.0.join("dir")).unwrap();
    fs::write(t.0.join("dir/a"), b"hello").unwrap();
    fs::write(t.0.join("b"), b"world").unwrap();
    let mut c = Cluster::new_enabled("lustre", 2, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    assert_eq!(sfs.len(), 3, "two files and one directory");
    let fa = sfs.path2fid(&t.0.join("dir/a"), &mut c).unwrap();
    let fb = sfs.path2fid(&t.0.join("b"), &mut c).unwrap();
    assert_ne!(fa, fb);
    assert_ne!(c.mdt_of(fa), c.mdt_of(fb), "round-robin over the two MDTs");
    assert_eq!(sfs.path2fid(&t.0, &mut c).unwrap(), ROOT_FID);
    // Open by FID through the mount, the way llapi does.
    let link = t.0.join(".lustre/fid").join(format!("{fa:#}"));
    assert_eq!(fs::read(&link).unwrap(), b"hello");
    assert_eq!(sfs.path2fid(&link, &mut c).unwrap(), fa);
    assert_eq!(sfs.fid2path(fa).unwrap(), PathBuf::from("dir/a"));
    // Rename: same FID, fid2path follows.
    fs::rename(t.0.join("dir/a"), t.0.join("c")).unwrap();
    assert_eq!(sfs.fid2path(fa).unwrap(), PathBuf::from("c"));
    assert!(matches!(
        sfs.fid2path(LuFid::new(0x2_0000_0400, 999, 0)),
        Err(coordinatool_sim::fs::FsError::UnknownFid(_))
    ));
    // HSM state and FIDs survive a restart.
    archive(&mut c, &mut sfs, fb);
    sfs.save(&c).unwrap();
    drop(sfs);
    let mut c2 = Cluster::new_enabled("lustre", 2, T0 + 10);
    let mut sfs2 = SimFs::open(&t.0, &mut c2).unwrap();
    assert_eq!(sfs2.path2fid(&t.0.join("c"), &mut c2).unwrap(), fa);
    assert_eq!(sfs2.path2fid(&t.0.join("b"), &mut c2).unwrap(), fb);
    assert_eq!(
        c2.file(fb).unwrap().states,
        HsmStates::EXISTS | HsmStates::ARCHIVED
    );
    // A new file does not reuse a FID.
    fs::write(t.0.join("new"), b"x").unwrap();
    let fnew = sfs2.path2fid(&t.0.join("new"), &mut c2).unwrap();
    assert!(fnew != fa && fnew != fb);
}

#[test]
fn corrupt_index_is_reported_with_its_line() {
    let t = TempDir::new();
    fs::create_dir_all(t.0.join(".lustre_sim")).unwrap();
    fs::write(
        t.0.join(".lustre_sim/index"),
        "# coordinatool-sim fid index v1\n[0x200000400:0x1:0x0] 12 f zz 0 0 0 1 0 0 0 a\n",
    )
    .unwrap();
    let mut c = Cluster::new("lustre", 1);
    let err = SimFs::open(&t.0, &mut c).unwrap_err().to_string();
    assert!(err.contains("index:2: field states"), "{err}");
}

#[test]
fn write_after_archive_makes_the_file_dirty() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"v1").unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    let f = sfs.path2fid(&t.0.join("f"), &mut c).unwrap();
    archive(&mut c, &mut sfs, f);
    sfs.refresh(f, &mut c).unwrap();
    assert!(!c.file(f).unwrap().states.contains(HsmStates::DIRTY));
    fs::write(t.0.join("f"), b"version two").unwrap();
    sfs.refresh(f, &mut c).unwrap();
    assert!(c.file(f).unwrap().states.contains(HsmStates::DIRTY));
    // A dirty file cannot be released.
    assert!(matches!(
        sfs.release(f, &mut c),
        Err(coordinatool_sim::fs::FsError::Model(Errno::EPERM))
    ));
}

#[test]
fn release_then_restore_through_a_volatile() {
    let t = TempDir::new();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(t.0.join("f"), &content).unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    let f = sfs.path2fid(&t.0.join("f"), &mut c).unwrap();
    let ino = fs::metadata(t.0.join("f")).unwrap().ino();
    assert!(matches!(
        sfs.release(f, &mut c),
        Err(coordinatool_sim::fs::FsError::Model(Errno::EPERM))
    ));
    archive(&mut c, &mut sfs, f);
    let before = fs::metadata(t.0.join("f")).unwrap();
    sfs.release(f, &mut c).unwrap();
    let after = fs::metadata(t.0.join("f")).unwrap();
    assert_eq!(after.len(), content.len() as u64, "size kept");
    assert_eq!(after.mtime(), before.mtime());
    assert!(fs::read(t.0.join("f")).unwrap().iter().all(|b| *b == 0));
    // The release itself is not a write.
    sfs.refresh(f, &mut c).unwrap();
    let st = c.file(f).unwrap().states;
    assert_eq!(
        st,
        HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED
    );
    // Restore: the copytool writes into a volatile, the MDT swaps at completion.
    c.request(
        T0,
        Caller::ROOT,
        &UserRequest::whole_files(HsmUserAction::Restore, 0, &[f]),
    )
    .unwrap();
    c.tick(T0 + 1);
    let d = c.poll_dispatch().unwrap();
    let vol = sfs.create_volatile(c.mdt_of(f), &mut c).unwrap();
    fs::write(t.0.join(".lustre/fid").join(format!("{vol:#}")), &content).unwrap();
    let p = Progress {
        fid: vol,
        cookie: d.items[0].cookie,
        extent: HsmExtent::WHOLE_FILE,
        flags: HsmProgressFlags::COMPLETED,
        errval: 0,
        data_version: None,
    };
    c.progress_with(T0 + 1, &p, |fid, volatile| {
        sfs.commit_volatile(fid, volatile).map_err(|e| e.errno())
    })
    .unwrap();
    assert_eq!(fs::read(t.0.join("f")).unwrap(), content);
    assert_eq!(
        fs::metadata(t.0.join("f")).unwrap().ino(),
        ino,
        "same inode"
    );
    assert!(!sfs.volatile_path(vol).exists());
    sfs.refresh(f, &mut c).unwrap();
    assert_eq!(
        c.file(f).unwrap().states,
        HsmStates::EXISTS | HsmStates::ARCHIVED
    );
}

#[test]
fn unlinked_file_leaves_the_model_with_raolu() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"data").unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    let f = sfs.path2fid(&t.0.join("f"), &mut c).unwrap();
    archive(&mut c, &mut sfs, f);
    c.set_param(T0, "mdt.*.hsm.remove_archive_on_last_unlink", "1");
    fs::remove_file(t.0.join("f")).unwrap();
    sfs.scan(T0 + 5, &mut c).unwrap();
    assert!(c.file(f).is_none());
    assert!(!t.0.join(".lustre/fid").join(format!("{f:#}")).exists());
    let last = c.mdt(0).unwrap().records().last().unwrap().clone();
    assert_eq!(last.item.action, coordinatool_lustre::HsmAction::Remove);
    assert_eq!(last.item.fid, f);
}

#[test]
fn only_index_changes_are_reported_as_changed() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"data").unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    assert!(sfs.take_changed(), "the open scan gave the file a FID");
    assert!(!sfs.take_changed(), "reported once");
    let f = sfs.path2fid(&t.0.join("f"), &mut c).unwrap();
    sfs.refresh(f, &mut c).unwrap();
    assert_eq!(sfs.fid2path(f).unwrap(), PathBuf::from("f"));
    sfs.scan(T0 + 1, &mut c).unwrap();
    assert!(
        !sfs.take_changed(),
        "lookups and an idle rescan change nothing"
    );
    fs::write(t.0.join("f"), b"more data").unwrap();
    sfs.refresh(f, &mut c).unwrap();
    assert!(sfs.take_changed(), "a new data version");
    fs::rename(t.0.join("f"), t.0.join("g")).unwrap();
    assert_eq!(sfs.fid2path(f).unwrap(), PathBuf::from("g"));
    assert!(sfs.take_changed(), "a rename");
    fs::write(t.0.join("h"), b"x").unwrap();
    sfs.path2fid(&t.0.join("h"), &mut c).unwrap();
    assert!(sfs.take_changed(), "a new FID");
    fs::remove_file(t.0.join("h")).unwrap();
    sfs.scan(T0 + 2, &mut c).unwrap();
    assert!(sfs.take_changed(), "an unlink");
}

#[test]
fn a_walk_applied_late_keeps_files_tracked_meanwhile_and_skips_vanished_ones() {
    let t = TempDir::new();
    fs::write(t.0.join("old"), b"data").unwrap();
    fs::write(t.0.join("short-lived"), b"data").unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    fs::remove_file(t.0.join("short-lived")).unwrap();
    sfs.scan(T0, &mut c).unwrap();
    fs::write(t.0.join("short-lived"), b"data").unwrap();
    let walk = SimFs::walk(sfs.root()).unwrap();
    assert_eq!(walk.len(), 2);
    // After the walk: one file created and tracked by a call, the new one unlinked.
    fs::write(t.0.join("late"), b"data").unwrap();
    let late = sfs.path2fid(&t.0.join("late"), &mut c).unwrap();
    fs::remove_file(t.0.join("short-lived")).unwrap();
    let n = sfs.len();
    sfs.apply_scan(T0 + 1, walk, &mut c).unwrap();
    assert!(
        c.file(late).is_some(),
        "tracked after the walk: not unlinked"
    );
    assert_eq!(sfs.fid2path(late).unwrap(), PathBuf::from("late"));
    assert_eq!(sfs.len(), n, "the vanished file got no FID");
    // The next full scan sees the tree as it is.
    fs::remove_file(t.0.join("late")).unwrap();
    sfs.scan(T0 + 2, &mut c).unwrap();
    assert!(c.file(late).is_none());
}

#[test]
fn a_snapshot_writes_the_index_as_it_was_when_taken() {
    let t = TempDir::new();
    fs::write(t.0.join("f"), b"data").unwrap();
    let mut c = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs = SimFs::open(&t.0, &mut c).unwrap();
    let f = sfs.path2fid(&t.0.join("f"), &mut c).unwrap();
    let snap = sfs.snapshot(&c);
    archive(&mut c, &mut sfs, f);
    snap.write().unwrap();
    let mut c2 = Cluster::new_enabled("lustre", 1, T0);
    let mut sfs2 = SimFs::open(&t.0, &mut c2).unwrap();
    assert_eq!(sfs2.path2fid(&t.0.join("f"), &mut c2).unwrap(), f);
    assert_eq!(
        c2.file(f).unwrap().states,
        HsmStates::default(),
        "not archived yet"
    );
    sfs.save(&c).unwrap();
    let mut c3 = Cluster::new_enabled("lustre", 1, T0);
    SimFs::open(&t.0, &mut c3).unwrap();
    assert!(c3.file(f).unwrap().states.contains(HsmStates::ARCHIVED));
}
