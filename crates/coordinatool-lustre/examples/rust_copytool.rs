//! A POSIX copytool on the safe API of coordinatool-lustre: the Rust twin of the project's
//! reference C copytool (`crates/coordinatool-sim/copytool/ctposix.c`).
//!
//! ```text
//! rust_copytool [--archive N]... --hsm-root DIR [--wait-file PATH] [--no-progress]
//!               [--chunk-size BYTES] MOUNT
//! ```
//!
//! It registers (non-blocking, polling the registration's fd), and runs every received item
//! on its own thread: ARCHIVE copies the file into `<hsm-root>/<archive id>/<fid>`, RESTORE
//! copies it back into the restore's volatile file, REMOVE deletes the archive copy, CANCEL
//! marks the running action with the same cookie as canceled. Progress is reported after
//! every chunk; a progress answered with "canceled" stops the copy, which then ends with
//! `ECANCELED`. With `--wait-file`, a transfer waits while that file exists (tests use it to
//! hold transfers in flight). One line per event goes to stdout, as with the C copytool
//! (`ARCHIVE begin [fid] cookie=0x..`, `ARCHIVE end [fid] cookie=0x.. rc=0`, ...). It exits 0
//! on SIGINT/SIGTERM (after unregistering) and when the filesystem is unmounted.
//!
//! Against the simulated Lustre: `COORDINATOOL_LIBLUSTREAPI=<path of the stand-in
//! liblustreapi.so> cargo run --example rust_copytool -- --hsm-root /tmp/arc /tmp/fs`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinatool_lustre::hal::{HsmActionItem, HsmExtent, LUSTRE_EOF};
use coordinatool_lustre::{
    ActionHandle, Copytool, HsmAction, HsmProgressFlags, LustreError, Lustreapi,
};

/// Command line options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Archive ids served (empty: all).
    pub archives: Vec<u32>,
    /// Archive root.
    pub hsm_root: PathBuf,
    /// Lustre mount point.
    pub mount: PathBuf,
    /// Hold transfers while this file exists.
    pub wait_file: Option<PathBuf>,
    /// Do not report progress.
    pub no_progress: bool,
    /// Copy chunk size.
    pub chunk: usize,
}

/// Parses the arguments (without the program name); the error names the bad argument.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut archives = Vec::new();
    let (mut hsm_root, mut mount, mut wait_file) = (None, None, None);
    let (mut no_progress, mut chunk) = (false, 1 << 20);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--archive" => {
                let v = value("--archive")?;
                let id = v
                    .parse::<u32>()
                    .map_err(|_| format!("--archive {v}: not an archive id"))?;
                archives.push(id);
            }
            "--hsm-root" => hsm_root = Some(PathBuf::from(value("--hsm-root")?)),
            "--wait-file" => wait_file = Some(PathBuf::from(value("--wait-file")?)),
            "--no-progress" => no_progress = true,
            "--chunk-size" => {
                let v = value("--chunk-size")?;
                chunk = v
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=1 << 30).contains(c))
                    .ok_or_else(|| format!("--chunk-size {v}: expected 1 to 2^30"))?;
            }
            m if !m.starts_with('-') && mount.is_none() => mount = Some(PathBuf::from(m)),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    // 0 is how liblustreapi spells "all archives"; the safe API wants an empty list.
    if archives.contains(&0) {
        archives.clear();
    }
    Ok(Options {
        archives,
        hsm_root: hsm_root.ok_or("--hsm-root is required")?,
        mount: mount.ok_or("the mount point is required")?,
        wait_file,
        no_progress,
        chunk,
    })
}

/// Where the archive copy of `hai` lives.
pub fn archive_path(root: &Path, archive_id: u32, hai: &HsmActionItem) -> PathBuf {
    root.join(archive_id.to_string())
        .join(format!("{:#}", hai.fid))
}

/// Cancel flags of the running actions, by cookie.
type Running = Mutex<HashMap<u64, Arc<AtomicBool>>>;

struct Worker<'a> {
    opts: &'a Options,
    emit: &'a (dyn Fn(String) + Sync),
    running: &'a Running,
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Worker<'_> {
    /// Waits while the wait file exists; `Err(ECANCELED)` once canceled.
    fn hold(
        &self,
        hai: &HsmActionItem,
        h: &ActionHandle<'_>,
        canceled: &AtomicBool,
    ) -> Result<(), i32> {
        let Some(wait) = &self.opts.wait_file else {
            return Ok(());
        };
        let mut announced = false;
        let mut ticks = 0u32;
        while wait.exists() {
            if !announced {
                (self.emit)(format!(
                    "{} wait {} cookie={:#x} path={}",
                    hai.action.name(),
                    hai.fid,
                    hai.cookie,
                    wait.display()
                ));
                announced = true;
            }
            if canceled.load(Ordering::SeqCst) {
                return Err(libc::ECANCELED);
            }
            ticks += 1;
            if !self.opts.no_progress && ticks == 10 {
                ticks = 0;
                let ext = HsmExtent::new(hai.extent.offset, 0);
                if let Err(LustreError::Canceled { .. }) =
                    h.progress(ext, 0, HsmProgressFlags::default())
                {
                    return Err(libc::ECANCELED);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Copies the item's extent from `src` to `dst` (same offsets), reporting every chunk.
    fn copy(
        &self,
        hai: &HsmActionItem,
        h: &ActionHandle<'_>,
        canceled: &AtomicBool,
        src: &File,
        dst: &File,
    ) -> Result<(), i32> {
        let (offset, length) = (hai.extent.offset, hai.extent.length);
        let total = if length == LUSTRE_EOF {
            src.metadata()
                .map(|m| m.len().saturating_sub(offset))
                .unwrap_or(0)
        } else {
            length
        };
        let mut buf = vec![0u8; self.opts.chunk];
        let mut done = 0u64;
        while length == LUSTRE_EOF || done < length {
            if canceled.load(Ordering::SeqCst) {
                return Err(libc::ECANCELED);
            }
            let want = if length == LUSTRE_EOF {
                buf.len()
            } else {
                buf.len().min((length - done) as usize)
            };
            let n = src
                .read_at(&mut buf[..want], offset + done)
                .map_err(|e| errno_of(&e))?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], offset + done)
                .map_err(|e| errno_of(&e))?;
            if !self.opts.no_progress {
                let r = h.progress(
                    HsmExtent::new(offset + done, n as u64),
                    total,
                    HsmProgressFlags::default(),
                );
                (self.emit)(format!(
                    "{} progress {} cookie={:#x} offset={} length={n} rc={}",
                    hai.action.name(),
                    hai.fid,
                    hai.cookie,
                    offset + done,
                    r.as_ref().map_or_else(|e| -e.errno(), |()| 0)
                ));
                if let Err(LustreError::Canceled { .. }) = r {
                    return Err(libc::ECANCELED);
                }
            }
            done += n as u64;
        }
        Ok(())
    }

    fn archive(
        &self,
        hai: &HsmActionItem,
        archive_id: u32,
        h: &ActionHandle<'_>,
        c: &AtomicBool,
    ) -> Result<(), i32> {
        self.hold(hai, h, c)?;
        let src = File::from(h.fd().map_err(|e| e.errno())?);
        let dst_path = archive_path(&self.opts.hsm_root, archive_id, hai);
        if let Some(dir) = dst_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| errno_of(&e))?;
        }
        // A whole-file copy is written under a temporary name, renamed when complete.
        let whole = hai.extent == HsmExtent::WHOLE_FILE;
        let tmp = if whole {
            dst_path.with_extension("tmp")
        } else {
            dst_path.clone()
        };
        let dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(whole)
            .open(&tmp)
            .map_err(|e| errno_of(&e))?;
        let r = self
            .copy(hai, h, c, &src, &dst)
            .and_then(|()| dst.sync_all().map_err(|e| errno_of(&e)))
            .and_then(|()| {
                if whole {
                    std::fs::rename(&tmp, &dst_path).map_err(|e| errno_of(&e))
                } else {
                    Ok(())
                }
            });
        if r.is_err() && whole {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn restore(
        &self,
        hai: &HsmActionItem,
        archive_id: u32,
        h: &ActionHandle<'_>,
        c: &AtomicBool,
    ) -> Result<Option<File>, i32> {
        self.hold(hai, h, c)?;
        let src = File::open(archive_path(&self.opts.hsm_root, archive_id, hai))
            .map_err(|e| errno_of(&e))?;
        let dst = File::from(h.fd().map_err(|e| e.errno())?);
        self.copy(hai, h, c, &src, &dst)?;
        // The volatile stays open until end() has returned (the layout swap needs it).
        Ok(Some(dst))
    }

    fn run(&self, ct: &Copytool<'_>, hai: &HsmActionItem, archive_id: u32) {
        let name = hai.action.name();
        let flag = Arc::new(AtomicBool::new(false));
        let restore_mdt = if hai.action == HsmAction::Restore {
            File::open(ct.mount_point())
                .ok()
                .and_then(|m| ct.api().mdt_index_by_fid(m.as_fd(), &hai.fid).ok())
                .unwrap_or(-1)
        } else {
            -1
        };
        let h = match ct.action_begin(hai, restore_mdt, 0, false) {
            Ok(h) => h,
            Err(e) => {
                (self.emit)(format!(
                    "{name} begin {} cookie={:#x} rc={}",
                    hai.fid,
                    hai.cookie,
                    -e.errno()
                ));
                let r = ct.report_error(hai, e.errno());
                (self.emit)(format!(
                    "{name} end {} cookie={:#x} rc={} errval={} end_rc={}",
                    hai.fid,
                    hai.cookie,
                    -e.errno(),
                    e.errno(),
                    r.map_or_else(|e| -e.errno(), |()| 0)
                ));
                return;
            }
        };
        let dfid = h.dfid().map(|d| format!(" dfid={d}")).unwrap_or_default();
        (self.emit)(format!(
            "{name} begin {} cookie={:#x}{dfid}",
            hai.fid, hai.cookie
        ));
        lock(self.running).insert(hai.cookie, flag.clone());
        let mut keep_open = None;
        let r = match hai.action {
            HsmAction::Archive => self.archive(hai, archive_id, &h, &flag),
            HsmAction::Restore => self
                .restore(hai, archive_id, &h, &flag)
                .map(|f| keep_open = f),
            HsmAction::Remove => {
                std::fs::remove_file(archive_path(&self.opts.hsm_root, archive_id, hai))
                    .map_err(|e| errno_of(&e))
            }
            _ => Err(libc::EINVAL),
        };
        lock(self.running).remove(&hai.cookie);
        let errval = r.err().unwrap_or(0);
        let flags = if errval == libc::ETIMEDOUT {
            HsmProgressFlags::RETRY
        } else {
            HsmProgressFlags::default()
        };
        let end = h.end(hai.extent, flags, errval);
        drop(keep_open);
        (self.emit)(format!(
            "{name} end {} cookie={:#x} rc={} errval={errval} end_rc={}",
            hai.fid,
            hai.cookie,
            -errval,
            end.map_or_else(|e| -e.errno(), |()| 0)
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers on `opts.mount` and serves until `stop` is set or the filesystem goes away;
/// `emit` receives the event lines.
pub fn run(
    api: &Lustreapi,
    opts: &Options,
    stop: &AtomicBool,
    emit: &(dyn Fn(String) + Sync),
) -> Result<(), LustreError> {
    let ct = Copytool::register(api, &opts.mount, &opts.archives, true)?;
    let fsname = api.search_fsname(&opts.mount)?;
    let ids = if opts.archives.is_empty() {
        "ANY".to_owned()
    } else {
        opts.archives
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    emit(format!(
        "REGISTER mount={} fsname={fsname} archives={ids} mode=threads poll",
        opts.mount.display()
    ));
    let running = Running::default();
    let worker = Worker {
        opts,
        emit,
        running: &running,
    };
    let result = std::thread::scope(|s| {
        loop {
            if stop.load(Ordering::SeqCst) {
                emit("STOP".to_owned());
                return Ok(());
            }
            let mut p = libc::pollfd {
                fd: ct.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd. The timeout lets the loop notice `stop`.
            unsafe { libc::poll(&mut p, 1, 100) };
            let hal = match ct.recv() {
                Ok(hal) => hal,
                Err(LustreError::WouldBlock { .. }) => continue,
                Err(LustreError::Shutdown { .. }) => {
                    emit("SHUTDOWN".to_owned());
                    return Ok(());
                }
                Err(e) => {
                    emit(format!("RECV error rc={}", -e.errno()));
                    return Err(e);
                }
            };
            if hal.fsname != fsname {
                emit(format!("RECV ignored list for filesystem {}", hal.fsname));
                continue;
            }
            for hai in hal.items {
                if hai.action == HsmAction::Cancel {
                    let flag = lock(&running).get(&hai.cookie).cloned();
                    if let Some(f) = &flag {
                        f.store(true, Ordering::SeqCst);
                    }
                    emit(format!(
                        "CANCEL {} cookie={:#x} running={}",
                        hai.fid,
                        hai.cookie,
                        u8::from(flag.is_some())
                    ));
                    continue;
                }
                let (worker, ct) = (&worker, &ct);
                let archive_id = hal.archive_id;
                s.spawn(move || worker.run(ct, &hai, archive_id));
            }
        }
    });
    drop(ct);
    result
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rust_copytool: {e}");
            eprintln!(
                "usage: rust_copytool [--archive N]... --hsm-root DIR [--wait-file PATH] \
                 [--no-progress] [--chunk-size BYTES] MOUNT"
            );
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let api = match Lustreapi::global() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rust_copytool: {e}");
            std::process::exit(1);
        }
    };
    let emit = |line: String| println!("{line}");
    if let Err(e) = run(api, &opts, &STOP, &emit) {
        eprintln!("rust_copytool: {e}");
        std::process::exit(1);
    }
}
