//! The file side of the simulated Lustre: a plain directory stands for the mount.
//!
//! # Layout of a simulated mount `<mnt>`
//! * the user's files, anywhere below `<mnt>` (regular files and directories);
//! * `<mnt>/.lustre/fid/<seq:oid:ver>`: a **hard link** to every regular file that has a FID,
//!   so `openat(mnt_fd, ".lustre/fid/0x200000400:0x1:0x0")` opens the file itself, exactly as
//!   open-by-FID does on Lustre (same inode: reads and writes go to the file);
//! * `<mnt>/.lustre_sim/index`: the FID index (text, rewritten atomically), one line per file
//!   with its FID, inode, HSM attributes, data-version stamp and last known path — FIDs and
//!   HSM state survive a daemon restart without extended attributes;
//! * `<mnt>/.lustre_sim/volatile/`: restore targets ("volatile" files), committed into the
//!   file at `action_end`.
//!
//! # Data version and dirtiness
//! A file's data version is a counter kept in the index. It is bumped whenever the file's
//! `(mtime ns, size)` stamp differs from the recorded one; this is checked by
//! [`SimFs::refresh`], which every state query, release, archive start/end and listing calls.
//! So a write to an archived file is noticed at the next state query, which then reports it
//! `dirty` (the model sets `HS_DIRTY` on an `HS_EXISTS` file whose data version changed).
//! A write that keeps both mtime and size (e.g. with `touch -d` afterwards) goes unnoticed.
//!
//! # Release and restore
//! Release truncates the file to 0 and extends it back to its size (a sparse file that reads
//! as zeros), then restores the mtime, so `stat` is unchanged. Restore writes into a volatile
//! file; [`SimFs::commit_volatile`] copies its bytes into the file in place (the inode, hence
//! the `.lustre/fid` link, is kept) and removes it — the stand-in for the layout swap.
//!
//! Regular files are placed on MDTs round-robin in the order they are first seen (a sorted
//! walk); directories live on MDT0000.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use coordinatool_lustre::{HsmStates, LuFid};
use tracing::debug;

use crate::hash::FastMap;
use crate::mdt::{Cluster, Errno, FileAttrs};

/// Name of the directory holding the open-by-FID links (`.lustre/fid`).
pub const DOT_LUSTRE: &str = ".lustre";
/// Name of the simulator's hidden state directory.
pub const STATE_DIR: &str = ".lustre_sim";
/// FID of the mount root (Lustre's `FID_SEQ_ROOT`).
pub const ROOT_FID: LuFid = LuFid::new(0x2_0000_0007, 1, 0);
const INDEX_HEADER: &str = "# coordinatool-sim fid index v1";

/// Errors of the file side.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A filesystem call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The index file is corrupt.
    #[error("{path}:{line}: {reason}")]
    Index {
        /// Index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A path outside the simulated mount.
    #[error("{0}: not inside the simulated mount")]
    NotInMount(PathBuf),
    /// A FID the simulator does not know.
    #[error("unknown FID {0}")]
    UnknownFid(LuFid),
    /// Not a regular file.
    #[error("{0}: not a regular file")]
    NotRegular(PathBuf),
    /// The model refused the operation.
    #[error("{0}")]
    Model(#[from] Errno),
}

impl FsError {
    /// The errno a C caller would see.
    pub fn errno(&self) -> Errno {
        match self {
            FsError::Io { source, .. } => Errno(source.raw_os_error().unwrap_or(libc::EIO)),
            FsError::Index { .. } => Errno(libc::EIO),
            FsError::NotInMount(_) => Errno(libc::EXDEV),
            FsError::UnknownFid(_) => Errno::ENOENT,
            FsError::NotRegular(_) => Errno::EINVAL,
            FsError::Model(e) => *e,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError + use<> {
    let path = path.to_owned();
    move |source| FsError::Io { op, path, source }
}

/// What the index keeps per file, besides the model's HSM attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    ino: u64,
    dir: bool,
    /// Path relative to the mount, as last seen (shared: the index snapshot taken under the
    /// daemon's lock copies 100k of them).
    path: Arc<Path>,
    /// `(mtime ns, size)` at the last refresh.
    stamp: (i128, u64),
    /// Size to report while released.
    size: u64,
}

fn stamp(md: &fs::Metadata) -> (i128, u64) {
    stamp_of(md.mtime(), md.mtime_nsec(), md.size())
}

fn stamp_of(mtime: i64, mtime_nsec: i64, size: u64) -> (i128, u64) {
    (
        i128::from(mtime) * 1_000_000_000 + i128::from(mtime_nsec),
        size,
    )
}

fn fingerprint((mtime_ns, size): (i128, u64)) -> u64 {
    // splitmix64's finaliser over the three words: any change of one gives an unrelated value.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let t = mtime_ns as u128;
    let h = mix(t as u64 ^ 0x9e37_79b9_7f4a_7c15);
    let h = mix(h ^ (t >> 64) as u64);
    mix(h ^ size)
}

/// The data stamp of the pipelined mode (`coordinatool_sim::rpc`, "Pipelined mode"): a
/// 64-bit fingerprint of a file's `(mtime ns, size)` — the stamp whose change bumps the data
/// version — from the fields of its `stat` (`st_mtime`, `st_mtime_nsec`, `st_size`). The
/// stand-in computes it with `fstat` on the copy's source fd, the daemon from its own `stat`.
pub fn data_stamp(mtime: i64, mtime_nsec: i64, size: u64) -> u64 {
    fingerprint(stamp_of(mtime, mtime_nsec, size))
}

fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => o.push_str("%25"),
            '\n' => o.push_str("%0A"),
            _ => o.push(c),
        }
    }
    o
}

/// [`escape`] appended to `out`, without a temporary string for the common path that needs
/// no escaping (the index writer calls it once per file).
fn escape_into(out: &mut String, p: &Path) {
    match p.to_str() {
        Some(s) if !s.contains(['%', '\n']) => out.push_str(s),
        _ => out.push_str(&escape(p)),
    }
}

/// Appends `v` in decimal.
fn push_dec(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends `v` in lower-case hexadecimal, without prefix.
fn push_hex(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    // SAFETY: ASCII digits only.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&buf[i..]) });
}

/// Appends `v` in decimal (an i128 division is slow: only beyond the i64 range).
fn push_i128(out: &mut String, v: i128) {
    match i64::try_from(v) {
        Ok(x) => {
            if x < 0 {
                out.push('-');
            }
            push_dec(out, x.unsigned_abs());
        }
        Err(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v}");
        }
    }
}

/// Appends `fid` as its `Display` does (`[0xSEQ:0xOID:0xVER]`).
fn push_fid(out: &mut String, fid: LuFid) {
    out.push_str("[0x");
    push_hex(out, fid.seq);
    out.push_str(":0x");
    push_hex(out, u64::from(fid.oid));
    out.push_str(":0x");
    push_hex(out, u64::from(fid.ver));
    out.push(']');
}

fn unescape(s: &str) -> String {
    s.replace("%0A", "\n").replace("%25", "%")
}

/// The simulated mount: path ↔ FID mapping, open-by-FID links, release, volatile files.
#[derive(Debug)]
pub struct SimFs {
    root: PathBuf,
    entries: FastMap<LuFid, Entry>,
    by_ino: FastMap<u64, LuFid>,
    next_mdt: u32,
    /// Something the index records changed since [`SimFs::take_changed`] (so a daemon rewrites
    /// the index only when needed).
    changed: bool,
    /// `.lustre/fid` opened `O_PATH`: a refresh stats `<fid>` relative to it, one path
    /// component to look up instead of the whole mount path (the daemon stats every file of
    /// every HSM request).
    fid_dir: Option<OwnedFd>,
}

/// A copy of the FID index taken under the daemon's lock, written out by
/// [`IndexSnapshot::write`] without it (the fsync of a 100k-line index takes a while).
#[derive(Debug)]
pub struct IndexSnapshot {
    path: PathBuf,
    rows: Vec<(LuFid, Entry, FileAttrs)>,
}

/// What a walk of the mount found: every regular file and directory with its metadata,
/// gathered without the model (see [`SimFs::walk`] and [`SimFs::apply_scan`]).
#[derive(Debug, Default)]
pub struct ScanWalk {
    found: Vec<(PathBuf, fs::Metadata)>,
}

impl IndexSnapshot {
    /// Writes the snapshot to the index file atomically (temporary file, fsync, rename).
    pub fn write(self) -> Result<(), FsError> {
        let tmp = self.path.with_extension("tmp");
        let mut out = String::with_capacity(64 * self.rows.len() + 64);
        out.push_str(INDEX_HEADER);
        out.push('\n');
        // Sorting (FID, row number) pairs moves 24 bytes per swap instead of a whole row, and
        // compares without following a pointer (100k rows).
        let mut order: Vec<(LuFid, usize)> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.0, i))
            .collect();
        order.sort_unstable();
        for (fid, e, a) in order.iter().map(|&(_, i)| &self.rows[i]) {
            // By hand rather than `write!`: ten numbers per row, 100k rows, every 2 seconds
            // while a run changes files; the text is what `{fid} {ino} {d|f} {states:#x} ...`
            // gives.
            push_fid(&mut out, *fid);
            out.push(' ');
            push_dec(&mut out, e.ino);
            out.push_str(if e.dir { " d 0x" } else { " f 0x" });
            push_hex(&mut out, u64::from(a.states.bits()));
            for v in [
                u64::from(a.archive_id),
                u64::from(a.uid),
                u64::from(a.gid),
                a.data_version,
                a.archive_version,
            ] {
                out.push(' ');
                push_dec(&mut out, v);
            }
            out.push(' ');
            push_i128(&mut out, e.stamp.0);
            out.push(' ');
            push_dec(&mut out, e.size);
            out.push(' ');
            escape_into(&mut out, &e.path);
            out.push('\n');
        }
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(out.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err("rename", &self.path))
    }
}

impl ScanWalk {
    /// Number of files and directories found.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// True when the mount held nothing.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

impl SimFs {
    /// Opens (creating the hidden directories if needed) the simulated mount at `root`, loads
    /// its index into `cluster`, and scans the tree for new or vanished files.
    pub fn open(root: &Path, cluster: &mut Cluster) -> Result<SimFs, FsError> {
        let root = root.canonicalize().map_err(io_err("open mount", root))?;
        for d in [
            root.join(DOT_LUSTRE).join("fid"),
            root.join(STATE_DIR).join("volatile"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let fid_dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(root.join(DOT_LUSTRE).join("fid"))
            .ok()
            .map(OwnedFd::from);
        let mut me = SimFs {
            root,
            entries: FastMap::default(),
            by_ino: FastMap::default(),
            next_mdt: 0,
            changed: false,
            fid_dir,
        };
        me.load(cluster)?;
        me.scan(0, cluster)?;
        Ok(me)
    }

    /// The mount root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("index")
    }

    /// Path of the open-by-FID link of `fid`.
    pub fn fid_link(&self, fid: LuFid) -> PathBuf {
        self.root
            .join(DOT_LUSTRE)
            .join("fid")
            .join(format!("{fid:#}"))
    }

    /// Path of the volatile file `fid`.
    pub fn volatile_path(&self, fid: LuFid) -> PathBuf {
        self.root
            .join(STATE_DIR)
            .join("volatile")
            .join(format!("{fid:#}"))
    }

    fn load(&mut self, cluster: &mut Cluster) -> Result<(), FsError> {
        let path = self.index_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                if n == 0 && line != INDEX_HEADER {
                    return Err(FsError::Index {
                        path,
                        line: 1,
                        reason: format!("unknown header {line:?}"),
                    });
                }
                continue;
            }
            let bad = |reason: String| FsError::Index {
                path: path.clone(),
                line: n + 1,
                reason,
            };
            let f: Vec<&str> = line.splitn(12, ' ').collect();
            if f.len() != 12 {
                return Err(bad(format!("expected 12 fields, found {}", f.len())));
            }
            let num = |i: usize, what: &str| -> Result<u64, FsError> {
                f[i].parse::<u64>()
                    .map_err(|_| bad(format!("field {what}: not a number: {:?}", f[i])))
            };
            let fid: LuFid = f[0].parse().map_err(|e| bad(format!("field fid: {e}")))?;
            let dir = match f[2] {
                "d" => true,
                "f" => false,
                k => return Err(bad(format!("field kind: {k:?} is not f or d"))),
            };
            let states = u32::from_str_radix(f[3].trim_start_matches("0x"), 16)
                .map_err(|_| bad(format!("field states: not hex: {:?}", f[3])))?;
            let mtime = f[9]
                .parse::<i128>()
                .map_err(|_| bad(format!("field mtime: not a number: {:?}", f[9])))?;
            let e = Entry {
                ino: num(1, "ino")?,
                dir,
                path: Arc::from(Path::new(&unescape(f[11]))),
                stamp: (mtime, num(10, "size")?),
                size: num(10, "size")?,
            };
            let attrs = FileAttrs {
                states: HsmStates(states),
                archive_id: num(4, "archive_id")? as u32,
                uid: num(5, "uid")? as u32,
                gid: num(6, "gid")? as u32,
                data_version: num(7, "data_version")?,
                archive_version: num(8, "archive_version")?,
            };
            if !dir {
                cluster.put_file(fid, attrs);
            } else if let Some(m) = cluster.mdt_mut(cluster.mdt_of(fid)) {
                m.reserve_fid(fid);
            }
            self.by_ino.insert(e.ino, fid);
            self.entries.insert(fid, e);
        }
        self.next_mdt = self.entries.values().filter(|e| !e.dir).count() as u32;
        Ok(())
    }

    /// Writes the index (HSM attributes from `cluster`) atomically.
    pub fn save(&self, cluster: &Cluster) -> Result<(), FsError> {
        self.snapshot(cluster).write()
    }

    /// Copies what the index records (cheap next to [`IndexSnapshot::write`], so a daemon
    /// takes it under its lock and writes it after releasing the lock).
    pub fn snapshot(&self, cluster: &Cluster) -> IndexSnapshot {
        IndexSnapshot {
            path: self.index_path(),
            rows: self
                .entries
                .iter()
                .map(|(fid, e)| {
                    (
                        *fid,
                        e.clone(),
                        cluster.file(*fid).copied().unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }

    /// True (once) if something the index records changed since the last call: a new FID, a
    /// rename, an unlink, a data version bump, a release, an import, a committed restore.
    /// HSM attributes changed by the model alone (a completed archive) are not seen here.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Walks the mount: gives a FID (and an open-by-FID link) to every new regular file and
    /// directory, follows renames, and unlinks from the model the files whose last name is
    /// gone (only the `.lustre/fid` link is left). Same as [`SimFs::walk`] then
    /// [`SimFs::apply_scan`].
    pub fn scan(&mut self, now: u64, cluster: &mut Cluster) -> Result<(), FsError> {
        let walk = SimFs::walk(&self.root)?;
        self.apply_scan(now, walk, cluster)
    }

    /// The file-system half of a scan: lists and stats everything below `root` (a mount
    /// root, [`SimFs::root`]), in sorted order. Needs no model, so a daemon runs it without
    /// its lock.
    pub fn walk(root: &Path) -> Result<ScanWalk, FsError> {
        let mut stack = vec![PathBuf::new()];
        let mut found = Vec::new();
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            let rd = fs::read_dir(&dir).map_err(io_err("read dir", &dir))?;
            let mut names: Vec<_> = rd.filter_map(Result::ok).map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                if rel.as_os_str().is_empty() && (name == DOT_LUSTRE || name == STATE_DIR) {
                    continue;
                }
                let r = rel.join(&name);
                let md = match fs::symlink_metadata(root.join(&r)) {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                if md.is_dir() {
                    stack.push(r.clone());
                } else if !md.is_file() {
                    continue;
                }
                found.push((r, md));
            }
        }
        Ok(ScanWalk { found })
    }

    /// The model half of a scan: applies what `walk` found. The tree may have changed since
    /// the walk (files created, renamed, unlinked, tracked by a call meanwhile), so a new
    /// file is stat'ed again before it gets a FID, and a tracked file the walk did not see is
    /// unlinked only if it is not at its recorded path either.
    pub fn apply_scan(
        &mut self,
        now: u64,
        walk: ScanWalk,
        cluster: &mut Cluster,
    ) -> Result<(), FsError> {
        let mut seen = std::collections::HashSet::with_capacity(walk.found.len());
        for (r, md) in walk.found {
            seen.insert(md.ino());
            if !self.by_ino.contains_key(&md.ino()) {
                // Unknown inode: it must still be there, as the same kind of file.
                match fs::symlink_metadata(self.root.join(&r)) {
                    Ok(now_md) if now_md.ino() == md.ino() && now_md.is_dir() == md.is_dir() => {
                        self.track(&r, &now_md, cluster)?;
                    }
                    _ => continue,
                }
            } else {
                self.track(&r, &md, cluster)?;
            }
        }
        let gone: Vec<LuFid> = self
            .entries
            .iter()
            .filter(|(_, e)| !seen.contains(&e.ino))
            .filter(|(_, e)| {
                !fs::symlink_metadata(self.root.join(&e.path)).is_ok_and(|m| m.ino() == e.ino)
            })
            .map(|(f, _)| *f)
            .collect();
        for fid in gone {
            let e = self.entries.remove(&fid).expect("listed above");
            self.by_ino.remove(&e.ino);
            self.changed = true;
            let _ = fs::remove_file(self.fid_link(fid));
            if !e.dir {
                let _ = cluster.unlink_file(now, fid);
            }
            debug!(%fid, path = %e.path.display(), "file gone");
        }
        Ok(())
    }

    fn track(
        &mut self,
        rel: &Path,
        md: &fs::Metadata,
        cluster: &mut Cluster,
    ) -> Result<LuFid, FsError> {
        if let Some(fid) = self.by_ino.get(&md.ino()).copied() {
            let e = self
                .entries
                .get_mut(&fid)
                .expect("by_ino and entries agree");
            if *e.path != *rel {
                e.path = Arc::from(rel);
                self.changed = true;
            }
            return Ok(fid);
        }
        let dir = md.is_dir();
        let mdt = if dir {
            0
        } else {
            self.next_mdt = self.next_mdt.wrapping_add(1);
            (self.next_mdt - 1) % cluster.mdts().len() as u32
        };
        let fid = cluster.alloc_fid(mdt);
        if !dir {
            let link = self.fid_link(fid);
            let _ = fs::remove_file(&link);
            fs::hard_link(self.root.join(rel), &link).map_err(io_err("link", &link))?;
            cluster.put_file(
                fid,
                FileAttrs {
                    uid: md.uid(),
                    gid: md.gid(),
                    data_version: 1,
                    ..FileAttrs::default()
                },
            );
        }
        self.changed = true;
        self.by_ino.insert(md.ino(), fid);
        self.entries.insert(
            fid,
            Entry {
                ino: md.ino(),
                dir,
                path: Arc::from(rel),
                stamp: stamp(md),
                size: md.size(),
            },
        );
        Ok(fid)
    }

    fn rel(&self, path: &Path) -> Result<PathBuf, FsError> {
        let abs = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .map_err(io_err("getcwd", path))?
                .join(path)
        };
        // Canonicalize the parent only, so the last component may be a file being created.
        let parent = abs.parent().unwrap_or(&abs);
        let canon = parent
            .canonicalize()
            .map_err(io_err("resolve", parent))?
            .join(abs.file_name().unwrap_or_default());
        let canon = if abs.file_name().is_none() {
            abs.canonicalize().map_err(io_err("resolve", &abs))?
        } else {
            canon
        };
        canon
            .strip_prefix(&self.root)
            .map(Path::to_owned)
            .map_err(|_| FsError::NotInMount(path.to_owned()))
    }

    /// `llapi_path2fid`: the FID of a file or directory of the mount (assigned on first use).
    pub fn path2fid(&mut self, path: &Path, cluster: &mut Cluster) -> Result<LuFid, FsError> {
        let rel = self.rel(path)?;
        if rel.as_os_str().is_empty() {
            return Ok(ROOT_FID);
        }
        if rel.starts_with(DOT_LUSTRE) {
            // `.lustre/fid/<fid>` names the file itself.
            let name = rel.file_name().unwrap_or_default().to_string_lossy();
            if let Ok(fid) = name.parse::<LuFid>()
                && self.entries.contains_key(&fid)
            {
                return Ok(fid);
            }
        }
        let p = self.root.join(&rel);
        let md = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        self.track(&rel, &md, cluster)
    }

    /// `llapi_fid2path`: the path of `fid` relative to the mount (found again by inode if the
    /// file was renamed).
    pub fn fid2path(&mut self, fid: LuFid) -> Result<PathBuf, FsError> {
        if fid == ROOT_FID {
            return Ok(PathBuf::new());
        }
        let e = self.entries.get(&fid).ok_or(FsError::UnknownFid(fid))?;
        let p = self.root.join(&e.path);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.ino() == e.ino) {
            return Ok(e.path.to_path_buf());
        }
        let ino = e.ino;
        let found = self.find_ino(ino)?;
        match found {
            Some(rel) => {
                self.entries.get_mut(&fid).expect("present").path = Arc::from(rel.as_path());
                self.changed = true;
                Ok(rel)
            }
            None => Err(FsError::UnknownFid(fid)),
        }
    }

    fn find_ino(&self, ino: u64) -> Result<Option<PathBuf>, FsError> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.join(&rel);
            let rd = fs::read_dir(&dir).map_err(io_err("read dir", &dir))?;
            for ent in rd.filter_map(Result::ok) {
                let name = ent.file_name();
                if rel.as_os_str().is_empty() && (name == DOT_LUSTRE || name == STATE_DIR) {
                    continue;
                }
                let r = rel.join(&name);
                let Ok(md) = ent.metadata() else { continue };
                if md.ino() == ino {
                    return Ok(Some(r));
                }
                if md.is_dir() {
                    stack.push(r);
                }
            }
        }
        Ok(None)
    }

    /// Re-reads the file's stamp; if it changed, bumps its data version (a write to an
    /// `HS_EXISTS` file makes it dirty). Returns the current data version.
    pub fn refresh(&mut self, fid: LuFid, cluster: &mut Cluster) -> Result<u64, FsError> {
        let e = self.entries.get(&fid).ok_or(FsError::UnknownFid(fid))?;
        if e.dir {
            return Err(FsError::NotRegular(e.path.to_path_buf()));
        }
        let (mtime, mtime_nsec, size) = self.stat_fid(fid)?;
        self.refresh_from(fid, mtime, mtime_nsec, size, cluster)
    }

    /// `stat` of `.lustre/fid/<fid>`: `(st_mtime, st_mtime_nsec, st_size)`.
    fn stat_fid(&self, fid: LuFid) -> Result<(i64, i64, u64), FsError> {
        if let Some(dir) = &self.fid_dir {
            let mut name = [0u8; 80];
            let mut w = &mut name[..];
            if write!(w, "{fid:#}\0").is_ok() {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: a directory fd we own, a NUL-terminated name, a writable stat.
                let rc = unsafe {
                    libc::fstatat(dir.as_raw_fd(), name.as_ptr().cast(), st.as_mut_ptr(), 0)
                };
                if rc != 0 {
                    return Err(io_err("stat", &self.fid_link(fid))(
                        io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fstatat succeeded, so it filled the struct.
                let st = unsafe { st.assume_init() };
                return Ok((st.st_mtime, st.st_mtime_nsec, st.st_size as u64));
            }
        }
        let link = self.fid_link(fid);
        let md = fs::metadata(&link).map_err(io_err("stat", &link))?;
        Ok((md.mtime(), md.mtime_nsec(), md.size()))
    }

    /// [`SimFs::refresh`] from a `stat` of the file taken by the caller (`st_mtime`,
    /// `st_mtime_nsec`, `st_size`): the pipelined mode's copytool sends the `fstat` of its
    /// open source fd, the same inode as `.lustre/fid/<fid>`, which spares the daemon a path
    /// lookup.
    pub fn refresh_from(
        &mut self,
        fid: LuFid,
        mtime: i64,
        mtime_nsec: i64,
        size: u64,
        cluster: &mut Cluster,
    ) -> Result<u64, FsError> {
        let e = self.entries.get_mut(&fid).ok_or(FsError::UnknownFid(fid))?;
        if e.dir {
            return Err(FsError::NotRegular(e.path.to_path_buf()));
        }
        let attrs = *cluster.file(fid).ok_or(FsError::UnknownFid(fid))?;
        let st = stamp_of(mtime, mtime_nsec, size);
        if st != e.stamp {
            e.stamp = st;
            e.size = size;
            self.changed = true;
            cluster.file_modified(fid, attrs.data_version + 1)?;
            return Ok(attrs.data_version + 1);
        }
        Ok(attrs.data_version)
    }

    /// The [`data_stamp`] of the file at its last [`SimFs::refresh`].
    pub fn data_stamp(&self, fid: LuFid) -> Option<u64> {
        self.entries.get(&fid).map(|e| fingerprint(e.stamp))
    }

    /// Apparent size of the file (kept while released).
    pub fn size(&self, fid: LuFid) -> Option<u64> {
        self.entries.get(&fid).map(|e| e.size)
    }

    /// `lfs hsm_release`: takes a write lease on the file (`EBUSY` if another process has it
    /// open, as an open breaks llite's lease), checks with the model (archived, clean, same
    /// data version), then drops the data and keeps the size and mtime.
    pub fn release(&mut self, fid: LuFid, cluster: &mut Cluster) -> Result<(), FsError> {
        let dv = self.refresh(fid, cluster)?;
        let was = cluster
            .file(fid)
            .is_some_and(|a| a.states.contains(HsmStates::RELEASED));
        if was {
            cluster.release(fid, dv)?;
            return Ok(());
        }
        let link = self.fid_link(fid);
        let f = OpenOptions::new()
            .write(true)
            .open(&link)
            .map_err(io_err("open", &link))?;
        let _lease = WriteLease::take(&f)?;
        cluster.release(fid, dv)?;
        let md = f.metadata().map_err(io_err("stat", &link))?;
        let size = md.size();
        let mtime = UNIX_EPOCH
            + Duration::new(
                u64::try_from(md.mtime()).unwrap_or(0),
                u32::try_from(md.mtime_nsec()).unwrap_or(0),
            );
        f.set_len(0)
            .and_then(|()| f.set_len(size))
            .and_then(|()| f.set_times(FileTimes::new().set_modified(mtime)))
            .map_err(io_err("release", &link))?;
        let md = f.metadata().map_err(io_err("stat", &link))?;
        let e = self.entries.get_mut(&fid).expect("refresh found it");
        e.stamp = stamp(&md);
        e.size = size;
        self.changed = true;
        Ok(())
    }

    /// Creates an empty volatile file on MDT `mdt` (a restore target) and returns its FID; it
    /// is reachable at [`SimFs::volatile_path`] and through `.lustre/fid/<fid>`.
    pub fn create_volatile(&mut self, mdt: u32, cluster: &mut Cluster) -> Result<LuFid, FsError> {
        let fid = cluster.alloc_fid(mdt);
        let p = self.volatile_path(fid);
        File::options()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err("create", &p))?;
        let link = self.fid_link(fid);
        let _ = fs::remove_file(&link);
        fs::hard_link(&p, &link).map_err(io_err("link", &link))?;
        Ok(fid)
    }

    /// The layout swap of a successful restore: copies the volatile's bytes into `fid` in
    /// place (the new content is not counted as a user write), then removes the volatile.
    pub fn commit_volatile(&mut self, fid: LuFid, volatile: LuFid) -> Result<(), FsError> {
        let vp = self.volatile_path(volatile);
        let link = self.fid_link(fid);
        let mut src = File::open(&vp).map_err(io_err("open", &vp))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&link)
            .map_err(io_err("open", &link))?;
        io::copy(&mut src, &mut dst).map_err(io_err("copy", &link))?;
        dst.sync_data().map_err(io_err("sync", &link))?;
        let md = dst.metadata().map_err(io_err("stat", &link))?;
        if let Some(e) = self.entries.get_mut(&fid) {
            e.stamp = stamp(&md);
            e.size = md.size();
            self.changed = true;
        }
        self.discard_volatile(volatile);
        Ok(())
    }

    /// Removes a volatile file (failed or abandoned restore).
    pub fn discard_volatile(&mut self, volatile: LuFid) {
        let _ = fs::remove_file(self.volatile_path(volatile));
        let _ = fs::remove_file(self.fid_link(volatile));
    }

    /// Number of tracked files and directories.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Attributes of an imported file (`struct hsm_user_import`, `LL_IOC_HSM_IMPORT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportAttrs {
    /// Archive holding the file's data.
    pub archive_id: u32,
    /// Size of the archived data (the file reads as zeros of that size until restored).
    pub size: u64,
    /// Access time (seconds, nanoseconds).
    pub atime: (u64, u32),
    /// Modification time (seconds, nanoseconds).
    pub mtime: (u64, u32),
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_mode`: the permission bits are applied.
    pub mode: u32,
}

impl SimFs {
    /// `LL_IOC_HSM_IMPORT`: turns the regular file at `path` into a released copy of a file
    /// already in archive `attrs.archive_id` (`exists archived released`, data version =
    /// archive version), with the given size, times, mode and owner, so that a later restore
    /// through a copytool brings the data in. Any data it had is dropped. The owner is set
    /// only where the daemon's privileges allow it (Lustre's MDT always can); the model
    /// records it in any case.
    pub fn import(
        &mut self,
        path: &Path,
        attrs: &ImportAttrs,
        cluster: &mut Cluster,
    ) -> Result<LuFid, FsError> {
        use std::os::unix::fs::PermissionsExt;

        let rel = self.rel(path)?;
        let p = self.root.join(&rel);
        let md = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        if rel.as_os_str().is_empty() || rel.starts_with(DOT_LUSTRE) || !md.is_file() {
            return Err(FsError::NotRegular(rel));
        }
        let fid = self.track(&rel, &md, cluster)?;
        let link = self.fid_link(fid);
        let f = OpenOptions::new()
            .write(true)
            .open(&link)
            .map_err(io_err("open", &link))?;
        let time = |(s, ns): (u64, u32)| UNIX_EPOCH + Duration::new(s, ns.min(999_999_999));
        f.set_len(0)
            .and_then(|()| f.set_len(attrs.size))
            .and_then(|()| f.set_permissions(fs::Permissions::from_mode(attrs.mode & 0o7777)))
            .and_then(|()| {
                f.set_times(
                    FileTimes::new()
                        .set_accessed(time(attrs.atime))
                        .set_modified(time(attrs.mtime)),
                )
            })
            .map_err(io_err("import", &link))?;
        if (md.uid(), md.gid()) != (attrs.uid, attrs.gid)
            && let Err(e) = std::os::unix::fs::fchown(&f, Some(attrs.uid), Some(attrs.gid))
        {
            debug!(%fid, error = %e, "import: owner not changed on disk");
        }
        let md = f.metadata().map_err(io_err("stat", &link))?;
        let prev = cluster.file(fid).copied().unwrap_or_default();
        cluster.put_file(
            fid,
            FileAttrs {
                states: HsmStates::EXISTS | HsmStates::ARCHIVED | HsmStates::RELEASED,
                archive_id: attrs.archive_id,
                uid: attrs.uid,
                gid: attrs.gid,
                data_version: prev.data_version,
                archive_version: prev.data_version,
            },
        );
        let e = self.entries.get_mut(&fid).expect("tracked above");
        e.stamp = stamp(&md);
        e.size = attrs.size;
        self.changed = true;
        Ok(fid)
    }
}

/// A write lease (`F_SETLEASE F_WRLCK`) on a file the daemon opened, released on drop; the
/// stand-in for llite's lease during a release: it can only be taken while no other open file
/// description of the inode exists.
struct WriteLease<'a> {
    file: Option<&'a File>,
}

impl<'a> WriteLease<'a> {
    /// `Err(EBUSY)` if the file is open elsewhere. Where leases are not available (filesystem
    /// without lease support, a daemon that neither owns the file nor has CAP_LEASE) the
    /// other opens are looked for in `/proc/*/fd` instead.
    fn take(file: &'a File) -> Result<WriteLease<'a>, FsError> {
        use std::os::fd::AsRawFd as _;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, integer arguments only.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) };
        if rc == 0 {
            // Nobody to signal when an open breaks it: we give it back right away anyway, and
            // the default SIGIO would kill the daemon.
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETOWN, 0) };
            return Ok(WriteLease { file: Some(file) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) => Err(FsError::Model(Errno::EBUSY)),
            _ => {
                let md = file.metadata().map_err(|source| FsError::Io {
                    op: "stat",
                    path: PathBuf::from(format!("/proc/self/fd/{fd}")),
                    source,
                })?;
                if open_elsewhere(md.dev(), md.ino(), fd) {
                    Err(FsError::Model(Errno::EBUSY))
                } else {
                    Ok(WriteLease { file: None })
                }
            }
        }
    }
}

impl Drop for WriteLease<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        if let Some(f) = self.file {
            // SAFETY: fcntl on a descriptor that is still open (borrowed).
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        }
    }
}

/// True if a descriptor other than our own `own_fd` refers to inode `(dev, ino)` in any
/// process we may inspect.
fn open_elsewhere(dev: u64, ino: u64, own_fd: i32) -> bool {
    let me = std::process::id().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.filter_map(Result::ok) {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if pid == me && fd.file_name().to_str() == Some(&own_fd.to_string()) {
                continue;
            }
            if fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn opens_by_other_processes_are_found_in_proc_and_block_the_lease() {
        let p = std::env::temp_dir().join(format!("cts-lease-{}", std::process::id()));
        fs::write(&p, b"x").unwrap();
        let md = fs::metadata(&p).unwrap();
        let mine = OpenOptions::new().write(true).open(&p).unwrap();
        use std::os::fd::AsRawFd as _;
        let own = mine.as_raw_fd();
        assert!(
            !open_elsewhere(md.dev(), md.ino(), own),
            "only our own descriptor"
        );
        {
            let _lease = WriteLease::take(&mine).unwrap();
        }
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .stdin(File::open(&p).unwrap())
            .spawn()
            .unwrap();
        assert!(open_elsewhere(md.dev(), md.ino(), own));
        assert!(matches!(
            WriteLease::take(&mine),
            Err(FsError::Model(Errno::EBUSY))
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!open_elsewhere(md.dev(), md.ino(), own));
        assert!(WriteLease::take(&mine).is_ok());
        let _ = fs::remove_file(&p);
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn hand_formatted_numbers_match_the_standard_formatting() {
        let mut out = String::new();
        let mut want = String::new();
        for v in [
            0,
            1,
            9,
            10,
            0xf,
            0x10,
            255,
            1_000_000_007,
            u64::MAX - 1,
            u64::MAX,
        ] {
            push_dec(&mut out, v);
            push_hex(&mut out, v);
            out.push(' ');
            want.push_str(&format!("{v}{v:x} "));
        }
        for v in [
            0,
            -1,
            1_733_000_000_123_456_789,
            i128::from(i64::MIN),
            i128::from(i64::MAX),
            i128::from(i64::MAX) + 1,
            i128::MIN,
            i128::MAX,
        ] {
            push_i128(&mut out, v);
            out.push(' ');
            want.push_str(&format!("{v} "));
        }
        for f in [
            LuFid::new(0, 0, 0),
            LuFid::new(0x2_0000_0400, 0x1234, 7),
            LuFid::new(u64::MAX, u32::MAX, u32::MAX),
        ] {
            push_fid(&mut out, f);
            want.push_str(&format!("{f}"));
        }
        assert_eq!(out, want);
    }

    #[test]
    fn index_rows_are_sorted_by_fid_and_odd_names_escaped_and_read_back() {
        let root = std::env::temp_dir().join(format!("cts-index-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        let names = ["plain", "50%done", "two\nlines", "z%0A"];
        for (i, n) in names.iter().enumerate() {
            fs::write(root.join(n), [i as u8]).unwrap();
        }
        let mut c = Cluster::new_enabled("lustre", 2, 1_700_000_000);
        let mut sfs = SimFs::open(&root, &mut c).unwrap();
        let before: Vec<LuFid> = names
            .iter()
            .map(|n| sfs.path2fid(&root.join(n), &mut c).unwrap())
            .collect();
        sfs.save(&c).unwrap();
        let text = fs::read_to_string(sfs.index_path()).unwrap();
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), names.len(), "one row per file: {text}");
        let fids: Vec<LuFid> = rows
            .iter()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(fids.windows(2).all(|w| w[0] < w[1]), "sorted: {fids:?}");
        assert!(text.contains(" 50%25done\n"), "{text}");
        assert!(text.contains(" two%0Alines\n"), "{text}");
        assert!(text.contains(" z%250A\n"), "{text}");
        assert!(text.contains(" plain\n"), "{text}");
        // Read back: every name maps to the FID it had.
        let mut c2 = Cluster::new_enabled("lustre", 2, 1_700_000_010);
        let mut back = SimFs::open(&root, &mut c2).unwrap();
        for (n, fid) in names.iter().zip(before) {
            assert_eq!(back.path2fid(&root.join(n), &mut c2).unwrap(), fid, "{n:?}");
            assert_eq!(back.fid2path(fid).unwrap(), PathBuf::from(n));
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
