//! Actions (`llapi_hsm_action_*`). Calls go over the calling thread's own daemon connection
//! (see `util::call`), never over the registration's stream, so actions work from any thread
//! and from forked children.
//!
//! Against a daemon in pipelined mode (`coordinatool-sim serve --pipelined`, see
//! `coordinatool_sim::rpc`) `llapi_hsm_action_begin` queues COPY_START as a one-way frame in
//! the handle, sent ahead of the action's next call (progress or end, from whatever thread)
//! in the same write, on a connection the action keeps until its end; a failed start is
//! returned by that call, and an ARCHIVE's `hc_data_version` is the data stamp of its open
//! source fd (`coordinatool_sim::fs::data_stamp`), which the end sends for the daemon's
//! check.

use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr;

use coordinatool_lustre::LuFid;
use coordinatool_lustre::ffi::bindings::{
    CP_PRIV_MAGIC, HP_FLAG_COMPLETED, HSMA_ARCHIVE, HSMA_REMOVE, HSMA_RESTORE, hsm_action_item,
    hsm_action_item_fixed, hsm_copy, hsm_copyaction_private, hsm_copyaction_private_layout,
    hsm_copytool_private, hsm_copytool_private_layout, hsm_extent, lu_fid,
};
use coordinatool_sim::rpc::{Fid, FileStat, Reply, Request};

use crate::events;
use crate::util::{self, errno};

/// The action handle: the layout of the real `struct hsm_copyaction_private` (§2.11), then
/// what the stand-in needs.
#[repr(C)]
pub(crate) struct CpPriv {
    layout: hsm_copyaction_private_layout,
    mount: PathBuf,
    /// Begun with `is_error`: no file was opened, no COPY_START was sent.
    is_error: bool,
    /// The restore volatile, once created.
    volatile: Option<LuFid>,
    /// Pipelined mode: the connection that carried the one-way start, for the later calls.
    conn: Option<util::Conn>,
    /// Pipelined mode, ARCHIVE: the source's data stamp when the copy started.
    start_stamp: Option<u64>,
    /// Pipelined mode: the one-way start's frame, sent ahead of the action's next call.
    queued: Vec<u8>,
}

impl CpPriv {
    /// A call of this action: on its own connection in pipelined mode (kept for the next
    /// call), else on the thread's.
    fn call(&mut self, req: &Request) -> Result<Reply, i32> {
        let conn = self.conn.take().or_else(|| util::take_conn(&self.mount));
        let (r, conn) = util::call_after(conn, &self.mount, &self.queued, req);
        self.queued.clear();
        self.conn = conn;
        r
    }

    /// Gives the action's connection back to the calling thread.
    fn release_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            util::put_conn(c);
        }
    }
}

/// HAI fixed part size.
const HAI_FIXED: u32 = 72;

pub(crate) fn to_fid(f: lu_fid) -> LuFid {
    LuFid::new(f.f_seq, f.f_oid, f.f_ver)
}

pub(crate) fn from_fid(f: LuFid) -> lu_fid {
    lu_fid {
        f_seq: f.seq,
        f_oid: f.oid,
        f_ver: f.ver,
    }
}

/// # Safety
/// `hcp` is NULL or points to at least the 4 readable bytes of an action handle.
unsafe fn checked<'a>(hcp: *const hsm_copyaction_private) -> Option<&'a mut CpPriv> {
    if hcp.is_null() {
        return None;
    }
    let p = hcp.cast::<CpPriv>().cast_mut();
    // SAFETY: caller's contract: the magic is the first u32 of any handle.
    let magic = unsafe { ptr::addr_of!((*p).layout.magic).read() };
    if magic != CP_PRIV_MAGIC {
        return None;
    }
    // SAFETY: the magic says it is one of ours, allocated by action_begin.
    Some(unsafe { &mut *p })
}

fn close(fd: c_int) {
    if fd >= 0 {
        // SAFETY: closing an fd this library owns.
        unsafe { libc::close(fd) };
    }
}

/// Opens `.lustre/fid/<fid>` through the handle's `open_by_fid_fd` (or the mount path).
fn open_by_fid(ct: &hsm_copytool_private_layout, mount: &Path, fid: LuFid, flags: c_int) -> c_int {
    let name = util::path_cstring(Path::new(&format!("{fid:#}")));
    if ct.open_by_fid_fd >= 0 {
        // SAFETY: a directory fd (the caller's handle) and a NUL-terminated relative path.
        let fd = unsafe { libc::openat(ct.open_by_fid_fd, name.as_ptr(), flags) };
        if fd >= 0 || errno() != libc::EBADF {
            return fd;
        }
    }
    let p = util::path_cstring(&mount.join(".lustre/fid").join(format!("{fid:#}")));
    // SAFETY: NUL-terminated path.
    unsafe { libc::open(p.as_ptr(), flags) }
}

/// COPY_START; returns the data version for an ARCHIVE. In pipelined mode it is queued (one
/// way, sent with the action's next call) and the version is the source fd's data stamp.
fn copy_start(hcp: &mut CpPriv, archive: bool) -> Result<u64, i32> {
    let hai = hcp.layout.copy.hc_hai;
    let one_way = util::pipelined(&hcp.mount);
    // The source fd was opened through .lustre/fid: its fstat is the file's stat, which spares
    // the daemon a stat by path.
    let stat_now = if archive {
        Some(fd_stat(hcp.layout.source_fd)?)
    } else {
        None
    };
    let req = Request::CopyStart {
        fid: Fid(to_fid(hai.hai_fid)),
        cookie: hai.hai_cookie,
        offset: hai.hai_extent.offset,
        archive,
        one_way,
        // Pipelined mode: the daemon does not read the data version at the start.
        stat_now: stat_now.filter(|_| !one_way),
    };
    if one_way {
        let stamp =
            stat_now.map(|st| coordinatool_sim::fs::data_stamp(st.mtime, st.mtime_nsec, st.size));
        // Sent with the action's next call, in the same write: the daemon serves both with
        // one wake-up and one lock acquisition.
        coordinatool_sim::rpc::encode_frame(&mut hcp.queued, &req).map_err(|e| e.errno())?;
        hcp.start_stamp = stamp;
        return Ok(stamp.unwrap_or(0));
    }
    match util::call(&hcp.mount, &req)? {
        Reply::DataVersion { version } => Ok(version),
        Reply::Unit => Ok(0),
        _ => Err(libc::EPROTO),
    }
}

/// The stat fields of an open file that make its data stamp.
fn fd_stat(fd: c_int) -> Result<FileStat, i32> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an fd this library owns and a writable stat.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(errno());
    }
    Ok(FileStat {
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
        size: u64::try_from(st.st_size).unwrap_or(0),
    })
}

/// Creates and opens the restore volatile; returns `(fid, fd)`.
fn create_volatile(
    mount: &Path,
    hai: &hsm_action_item_fixed,
    mdt_index: c_int,
    open_flags: c_int,
) -> Result<(LuFid, c_int), i32> {
    // "-1" means the MDT of the parent directory on Lustre; the simulator puts the volatile on
    // the file's own MDT, which is what a correct caller asks for anyway (progress and the
    // layout swap are routed by FID).
    let mdt = if mdt_index >= 0 {
        mdt_index
    } else {
        match util::call(
            mount,
            &Request::FidMdt {
                fid: Fid(to_fid(hai.hai_fid)),
            },
        ) {
            Ok(Reply::Index { index }) => index as c_int,
            _ => 0,
        }
    };
    let (fid, path) = match util::call(mount, &Request::CreateVolatile { mdt })? {
        Reply::Volatile {
            fid: Fid(fid),
            path,
        } => (fid, path),
        _ => return Err(libc::EPROTO),
    };
    // The caller's flags minus those that make no sense for an existing file; O_RDWR forced.
    let keep = open_flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
    let keep = keep & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_CLOEXEC);
    let c = util::path_cstring(&path);
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOFOLLOW | keep) };
    if fd < 0 {
        let e = errno();
        let _ = util::call(mount, &Request::DiscardVolatile { fid: Fid(fid) });
        return Err(e);
    }
    Ok((fid, fd))
}

pub(crate) unsafe fn begin(
    phcp: *mut *mut hsm_copyaction_private,
    ct: *const hsm_copytool_private,
    hai: *const hsm_action_item,
    restore_mdt_index: c_int,
    restore_open_flags: c_int,
    is_error: bool,
) -> c_int {
    if phcp.is_null() || ct.is_null() || hai.is_null() {
        return -libc::EINVAL;
    }
    // Only the layout fields are used (no magic check), see CtPriv.
    // SAFETY: a copytool handle has at least the 40 bytes of the layout.
    let ctl = unsafe { ct.cast::<hsm_copytool_private_layout>().read_unaligned() };
    // SAFETY: NULL or a C string.
    let Some(mount) = (unsafe { util::c_path(ctl.mnt.cast_const().cast::<c_char>()) }) else {
        return -libc::EINVAL;
    };
    // SAFETY: an item has at least its 72-byte fixed part; packed, so read unaligned.
    let mut fixed = unsafe { hai.cast::<hsm_action_item_fixed>().read_unaligned() };
    fixed.hai_len = HAI_FIXED;
    let mut hcp = Box::new(CpPriv {
        layout: hsm_copyaction_private_layout {
            magic: CP_PRIV_MAGIC,
            source_fd: -1,
            data_fd: -1,
            ct_priv: ct.cast::<hsm_copytool_private_layout>(),
            copy: hsm_copy {
                hc_hai: fixed,
                ..hsm_copy::default()
            },
            statx: [0; 32],
        },
        mount,
        is_error,
        volatile: None,
        conn: None,
        start_stamp: None,
        queued: Vec::new(),
    });
    if !is_error {
        if let Err(e) = start(&mut hcp, &ctl, restore_mdt_index, restore_open_flags) {
            close(hcp.layout.source_fd);
            close(hcp.layout.data_fd);
            hcp.release_conn();
            if let Some(v) = hcp.volatile {
                let _ = util::call(&hcp.mount, &Request::DiscardVolatile { fid: Fid(v) });
            }
            hcp.layout.magic = 0;
            return -e;
        }
        events::action(&hcp.mount, &hcp.layout.copy.hc_hai, "START", None, 0);
    }
    // SAFETY: valid out-pointer (checked non-NULL).
    unsafe { *phcp = Box::into_raw(hcp).cast::<hsm_copyaction_private>() };
    0
}

fn start(
    hcp: &mut CpPriv,
    ctl: &hsm_copytool_private_layout,
    restore_mdt_index: c_int,
    restore_open_flags: c_int,
) -> Result<(), i32> {
    let hai = hcp.layout.copy.hc_hai;
    match hai.hai_action {
        HSMA_ARCHIVE => {
            let dfid = to_fid(hai.hai_dfid);
            let base = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
            let mut fd = open_by_fid(ctl, &hcp.mount, dfid, base | libc::O_NOATIME);
            if fd < 0 && errno() == libc::EPERM {
                // O_NOATIME needs ownership or CAP_FOWNER.
                fd = open_by_fid(ctl, &hcp.mount, dfid, base);
            }
            if fd < 0 {
                return Err(errno());
            }
            hcp.layout.source_fd = fd;
            hcp.layout.copy.hc_data_version = copy_start(hcp, true)?;
        }
        HSMA_RESTORE => {
            let (vfid, fd) =
                create_volatile(&hcp.mount, &hai, restore_mdt_index, restore_open_flags)?;
            hcp.volatile = Some(vfid);
            hcp.layout.data_fd = fd;
            hcp.layout.copy.hc_hai.hai_dfid = from_fid(vfid);
            copy_start(hcp, false)?;
        }
        HSMA_REMOVE => {
            // Guards against a concurrent use of the file; a file already gone is fine
            // (remove after the last unlink). No COPY_START for REMOVE.
            let fd = open_by_fid(
                ctl,
                &hcp.mount,
                to_fid(hai.hai_fid),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            );
            if fd < 0 && errno() != libc::ENOENT {
                return Err(errno());
            }
            hcp.layout.source_fd = fd;
        }
        _ => {
            copy_start(hcp, false)?;
        }
    }
    Ok(())
}

fn extent_ok(he: &hsm_extent) -> bool {
    he.length == 0 || he.offset.checked_add(he.length - 1).is_some()
}

pub(crate) unsafe fn progress(
    hcp: *mut hsm_copyaction_private,
    he: *const hsm_extent,
    total: u64,
    hp_flags: c_int,
) -> c_int {
    // SAFETY: NULL or a handle, per the API.
    let Some(hcp) = (unsafe { checked(hcp) }) else {
        return -libc::EINVAL;
    };
    if he.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: a packed 16-byte struct.
    let he = unsafe { he.read_unaligned() };
    if !extent_ok(&he) {
        return -libc::EINVAL;
    }
    let hai = hcp.layout.copy.hc_hai;
    let req = Request::Progress {
        fid: Fid(to_fid(hai.hai_dfid)),
        cookie: hai.hai_cookie,
        offset: he.offset,
        length: he.length,
        flags: hp_flags as u32,
        errval: 0,
        start_data_version: None,
        start_stamp: None,
        stat_now: None,
    };
    let rc = hcp.call(&req);
    events::action(
        &hcp.mount,
        &hai,
        "RUNNING",
        Some((he.offset + he.length, total)),
        0,
    );
    match rc {
        Ok(_) => 0,
        Err(e) => -e,
    }
}

pub(crate) unsafe fn end(
    phcp: *mut *mut hsm_copyaction_private,
    he: *const hsm_extent,
    hp_flags: c_int,
    errval: c_int,
) -> c_int {
    if phcp.is_null() || he.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: valid pointer to a handle pointer.
    let raw = unsafe { *phcp };
    // SAFETY: NULL or a handle, per the API.
    let Some(hcp) = (unsafe { checked(raw) }) else {
        return -libc::EINVAL;
    };
    // SAFETY: a packed 16-byte struct.
    let he = unsafe { he.read_unaligned() };
    let mut errval = errval.checked_abs().unwrap_or(i32::MAX);
    let hai = hcp.layout.copy.hc_hai;
    let data_action = hai.hai_action == HSMA_ARCHIVE || hai.hai_action == HSMA_RESTORE;
    // SAFETY: fsync on the volatile fd this handle owns.
    if hai.hai_action == HSMA_RESTORE
        && !hcp.is_error
        && errval == 0
        && unsafe { libc::fsync(hcp.layout.data_fd) } < 0
    {
        errval = errno();
    }
    // ARCHIVE/RESTORE complete with the data FID (for a restore: the volatile, which the MDT
    // swaps into the file).
    let fid = if data_action {
        hai.hai_dfid
    } else {
        hai.hai_fid
    };
    let req = Request::Progress {
        fid: Fid(to_fid(fid)),
        cookie: hai.hai_cookie,
        offset: he.offset,
        length: he.length,
        flags: hp_flags as u32 | HP_FLAG_COMPLETED,
        errval: errval.min(i32::from(u16::MAX)) as u16,
        start_data_version: (hai.hai_action == HSMA_ARCHIVE
            && !hcp.is_error
            && hcp.start_stamp.is_none())
        .then_some(hcp.layout.copy.hc_data_version),
        start_stamp: hcp.start_stamp,
        // The daemon's check reads the source's stat from here rather than by path.
        stat_now: if hai.hai_action == HSMA_ARCHIVE && !hcp.is_error && errval == 0 {
            fd_stat(hcp.layout.source_fd).ok()
        } else {
            None
        },
    };
    if hai.hai_action == HSMA_ARCHIVE {
        // The source has given its stat above and is not read again. Closed before the
        // MDT hears of the end, so whoever waits for "archived" and releases at once does
        // not find this process still holding the file open (release's lease: EBUSY).
        close(hcp.layout.source_fd);
        hcp.layout.source_fd = -1;
    }
    let rc = if extent_ok(&he) {
        hcp.call(&req).map(drop)
    } else {
        Err(libc::EINVAL)
    };
    hcp.release_conn();
    if let (Err(_), Some(v)) = (rc, hcp.volatile) {
        // Not committed: nobody else will remove the volatile.
        let _ = util::call(&hcp.mount, &Request::DiscardVolatile { fid: Fid(v) });
    }
    let outcome = if errval == 0 {
        "FINISH"
    } else if errval == libc::ECANCELED {
        "CANCEL"
    } else {
        "ERROR"
    };
    events::action(&hcp.mount, &hai, outcome, None, errval);
    close(hcp.layout.source_fd);
    close(hcp.layout.data_fd);
    hcp.layout.magic = 0;
    // SAFETY: allocated by Box::into_raw in begin, freed once (magic cleared above).
    drop(unsafe { Box::from_raw(raw.cast::<CpPriv>()) });
    // SAFETY: valid pointer.
    unsafe { *phcp = ptr::null_mut() };
    match rc {
        Ok(()) => 0,
        Err(e) => -e,
    }
}

pub(crate) unsafe fn get_dfid(hcp: *const hsm_copyaction_private, fid: *mut lu_fid) -> c_int {
    // SAFETY: NULL or a handle, per the API.
    let Some(hcp) = (unsafe { checked(hcp) }) else {
        return -libc::EINVAL;
    };
    let hai = hcp.layout.copy.hc_hai;
    if fid.is_null() || (hai.hai_action != HSMA_ARCHIVE && hai.hai_action != HSMA_RESTORE) {
        return -libc::EINVAL;
    }
    // SAFETY: valid out-pointer; lu_fid is packed.
    unsafe { fid.write_unaligned(hai.hai_dfid) };
    0
}

pub(crate) unsafe fn get_fd(hcp: *const hsm_copyaction_private) -> c_int {
    // SAFETY: NULL or a handle, per the API.
    let Some(hcp) = (unsafe { checked(hcp) }) else {
        return -libc::EINVAL;
    };
    let fd = match hcp.layout.copy.hc_hai.hai_action {
        HSMA_ARCHIVE => hcp.layout.source_fd,
        HSMA_RESTORE => hcp.layout.data_fd,
        _ => return -libc::EINVAL,
    };
    // SAFETY: dup of an fd number (EBADF if the handle has none, e.g. begun with is_error).
    let d = unsafe { libc::dup(fd) };
    if d < 0 { -errno() } else { d }
}
