//! User requests, file HSM state, FID/path conversions and fsname lookup.
//!
//! Error conventions, as on Lustre: a function that looks for the filesystem root of a path
//! (`hsm_request`, `search_fsname`, `fid2path`) returns `-ENODEV` for a path on no simulated
//! mount; a function that issues an ioctl on a file (`state_*`, `current_action`,
//! `path2fid`, `fd2fid`, `get_mdt_index_by_fid`) returns `-ENOTTY` there; a missing file is
//! `-ENOENT` (from the `open`).

use std::os::raw::{c_char, c_int, c_longlong};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use coordinatool_lustre::LuFid;
use coordinatool_lustre::ffi::bindings::{
    hsm_current_action, hsm_extent, hsm_request, hsm_user_item, hsm_user_request, hsm_user_state,
    lu_fid,
};
use coordinatool_sim::rpc::{Fid, Reply, Request};

use crate::action::{from_fid, to_fid};
use crate::util::{self, errno};

/// `LUSTRE_MAXFSNAME`.
const MAXFSNAME: usize = 8;

fn euid_egid() -> (u32, u32) {
    // SAFETY: cannot fail, touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Opens `path` with `flags` and closes it again: the errno of a failed open (`ENOENT`, ...).
fn check_open(path: &Path, flags: c_int) -> Result<(), i32> {
    let c = util::path_cstring(path);
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the fd just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The mount and FID of an existing file (`ENOTTY` off the simulated mounts).
fn file_fid(path: &Path) -> Result<(PathBuf, LuFid), i32> {
    let mount = util::mount_of(path).ok_or(libc::ENOTTY)?;
    match util::call(
        &mount,
        &Request::Path2Fid {
            path: util::absolute(path),
        },
    )? {
        Reply::Fid { fid: Fid(f) } => Ok((mount, f)),
        _ => Err(libc::EPROTO),
    }
}

fn rc(r: Result<(), i32>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => -e,
    }
}

pub(crate) fn user_request_alloc(itemcount: c_int, data_len: c_int) -> *mut hsm_user_request {
    if itemcount < 0 || data_len < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return std::ptr::null_mut();
    }
    let len = 24usize + 32 * itemcount as usize + data_len as usize;
    // SAFETY: plain allocation; callers free() it.
    unsafe { libc::calloc(1, len).cast() }
}

pub(crate) unsafe fn hsm_request(path: *const c_char, hur: *const hsm_user_request) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(path) }) else {
        return -libc::EINVAL;
    };
    if hur.is_null() {
        return -libc::EINVAL;
    }
    let Some(mount) = util::mount_of(&path) else {
        return -libc::ENODEV;
    };
    // SAFETY: the header is 24 bytes at the start of the request (packed).
    let hdr = unsafe { hur.cast::<hsm_request>().read_unaligned() };
    let items_ptr = hur.cast::<u8>().wrapping_add(24).cast::<hsm_user_item>();
    let mut items = Vec::with_capacity(hdr.hr_itemcount as usize);
    for i in 0..hdr.hr_itemcount as usize {
        // SAFETY: the request holds hr_itemcount items (hur_len contract).
        let it = unsafe { items_ptr.add(i).read_unaligned() };
        let ext = it.hui_extent;
        items.push((Fid(to_fid(it.hui_fid)), ext.offset, ext.length));
    }
    let data_ptr = items_ptr
        .wrapping_add(hdr.hr_itemcount as usize)
        .cast::<u8>();
    // SAFETY: hr_data_len bytes follow the items.
    let data = unsafe { std::slice::from_raw_parts(data_ptr, hdr.hr_data_len as usize) }.to_vec();
    let (uid, gid) = euid_egid();
    let req = Request::HsmRequest {
        action: hdr.hr_action,
        archive_id: hdr.hr_archive_id,
        flags: hdr.hr_flags,
        items,
        data,
        uid,
        gid,
    };
    rc(util::call(&mount, &req).map(drop))
}

fn state_of(mount: &Path, fid: LuFid, hus: *mut hsm_user_state) -> Result<(), i32> {
    // The whole struct, with the running or waiting action, as LL_IOC_HSM_STATE_GET fills it.
    let out = match util::call(mount, &Request::UserState { fid: Fid(fid) })? {
        Reply::UserState {
            states,
            archive_id,
            in_progress_state,
            in_progress_action,
            in_progress_offset,
            in_progress_length,
        } => hsm_user_state {
            hus_states: states,
            hus_archive_id: archive_id,
            hus_in_progress_state: in_progress_state,
            hus_in_progress_action: in_progress_action,
            hus_in_progress_location: hsm_extent {
                offset: in_progress_offset,
                length: in_progress_length,
            },
            ..hsm_user_state::default()
        },
        _ => return Err(libc::EPROTO),
    };
    // SAFETY: the caller's buffer has the 32-byte fixed part (checked non-NULL).
    unsafe { hus.write_unaligned(out) };
    Ok(())
}

pub(crate) unsafe fn state_get(path: *const c_char, hus: *mut hsm_user_state) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(path) }) else {
        return -libc::EINVAL;
    };
    if hus.is_null() {
        return -libc::EINVAL;
    }
    rc((|| {
        check_open(&path, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let (mount, fid) = file_fid(&path)?;
        state_of(&mount, fid, hus)
    })())
}

pub(crate) fn state_get_fd(fd: c_int, hus: *mut hsm_user_state) -> c_int {
    if hus.is_null() {
        return -libc::EINVAL;
    }
    rc((|| {
        let path = util::fd_path(fd)?;
        let (mount, fid) = file_fid(&path)?;
        state_of(&mount, fid, hus)
    })())
}

fn state_set_at(path: &Path, setmask: u64, clearmask: u64, archive_id: u32) -> Result<(), i32> {
    let (mount, fid) = file_fid(path)?;
    let (uid, _) = euid_egid();
    util::call(
        &mount,
        &Request::StateSet {
            fid: Fid(fid),
            set: setmask,
            clear: clearmask,
            archive_id,
            uid,
        },
    )
    .map(drop)
}

pub(crate) unsafe fn state_set(
    path: *const c_char,
    setmask: u64,
    clearmask: u64,
    archive_id: u32,
) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(path) }) else {
        return -libc::EINVAL;
    };
    rc((|| {
        check_open(&path, libc::O_WRONLY | libc::O_NONBLOCK)?;
        state_set_at(&path, setmask, clearmask, archive_id)
    })())
}

pub(crate) fn state_set_fd(fd: c_int, setmask: u64, clearmask: u64, archive_id: u32) -> c_int {
    rc((|| {
        let path = util::fd_path(fd)?;
        state_set_at(&path, setmask, clearmask, archive_id)
    })())
}

pub(crate) unsafe fn current_action(path: *const c_char, hca: *mut hsm_current_action) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(path) }) else {
        return -libc::EINVAL;
    };
    if hca.is_null() {
        return -libc::EINVAL;
    }
    rc((|| {
        check_open(&path, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let (mount, fid) = file_fid(&path)?;
        match util::call(&mount, &Request::CurrentAction { fid: Fid(fid) })? {
            Reply::Action {
                state,
                action,
                offset,
                length,
            } => {
                let mut out = hsm_current_action {
                    hca_state: state,
                    hca_action: action,
                    ..hsm_current_action::default()
                };
                out.hca_location.offset = offset;
                out.hca_location.length = length;
                // SAFETY: valid out-pointer (checked non-NULL).
                unsafe { hca.write_unaligned(out) };
                Ok(())
            }
            _ => Err(libc::EPROTO),
        }
    })())
}

pub(crate) unsafe fn search_fsname(pathname: *const c_char, fsname: *mut c_char) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(pathname) }) else {
        return -libc::EINVAL;
    };
    if fsname.is_null() {
        return -libc::EINVAL;
    }
    let Some(mount) = util::mount_of(&path) else {
        return -libc::ENODEV;
    };
    match util::fsname_of(&mount) {
        Ok(name) => {
            let bytes = &name.as_bytes()[..name.len().min(MAXFSNAME)];
            // SAFETY: the caller's buffer holds LUSTRE_MAXFSNAME + 1 bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), fsname.cast::<u8>(), bytes.len());
                *fsname.add(bytes.len()) = 0;
            }
            0
        }
        Err(e) => -e,
    }
}

pub(crate) unsafe fn mdt_index_by_fid(fd: c_int, fid: *const lu_fid, idx: *mut c_int) -> c_int {
    if fid.is_null() || idx.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: a packed 16-byte struct.
    let fid = to_fid(unsafe { fid.read_unaligned() });
    rc((|| {
        let path = util::fd_path(fd)?;
        let mount = util::mount_of(&path).ok_or(libc::ENOTTY)?;
        match util::call(&mount, &Request::FidMdt { fid: Fid(fid) })? {
            Reply::Index { index } => {
                // SAFETY: valid out-pointer (checked non-NULL).
                unsafe { *idx = index as c_int };
                Ok(())
            }
            _ => Err(libc::EPROTO),
        }
    })())
}

/// Every path of the regular file `rel` of `mount` (its hard links, the `.lustre/fid` link
/// excepted): `rel` first, then the others in name order. A walk of the mount, done only for
/// a file with more than one link.
fn links_of(mount: &Path, rel: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;

    let mut out = vec![rel.to_owned()];
    let Ok(md) = std::fs::symlink_metadata(mount.join(rel)) else {
        return out;
    };
    // One link is the open-by-FID entry under `.lustre/fid`.
    if !md.is_file() || md.nlink() <= 2 {
        return out;
    }
    let mut others = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(mount.join(&dir)) else {
            continue;
        };
        for ent in rd.filter_map(Result::ok) {
            let name = ent.file_name();
            if dir.as_os_str().is_empty()
                && (name == coordinatool_sim::fs::DOT_LUSTRE
                    || name == coordinatool_sim::fs::STATE_DIR)
            {
                continue;
            }
            let r = dir.join(&name);
            let Ok(m) = std::fs::symlink_metadata(mount.join(&r)) else {
                continue;
            };
            if m.is_dir() {
                stack.push(r);
            } else if m.ino() == md.ino() && m.dev() == md.dev() && r != rel {
                others.push(r);
            }
        }
    }
    others.sort();
    out.extend(others);
    out
}

/// The common part of `llapi_fid2path` and `llapi_fid2path_at`: the path of `fid` relative
/// to the root of `mount`, written NUL-terminated into `buf`.
///
/// `linkno` (if not NULL) selects the hard link (0: the first); on return it is advanced to
/// the next link when there is one, and left unchanged for the last link, so a caller loops
/// until it stops changing (as `lfs fid2path` does). An index past the last link gives the
/// first link, unchanged. `recno` (changelog record) is accepted and left as it is: the
/// simulator keeps no changelog, so paths are always the current ones.
///
/// # Safety
/// `buf` holds `buflen` bytes; `linkno` is NULL or valid.
unsafe fn fid2path_in(
    mount: &Path,
    fid: LuFid,
    buf: *mut c_char,
    buflen: c_int,
    linkno: *mut c_int,
) -> c_int {
    let rel = match util::call(mount, &Request::Fid2Path { fid: Fid(fid) }) {
        Ok(Reply::Path { path }) => path,
        Ok(_) => return -libc::EPROTO,
        Err(e) => return -e,
    };
    let links = if rel.as_os_str().is_empty() {
        vec![rel]
    } else {
        links_of(mount, &rel)
    };
    // SAFETY: NULL or valid (caller's contract).
    let asked = if linkno.is_null() {
        0
    } else {
        unsafe { *linkno }
    };
    let idx = usize::try_from(asked)
        .ok()
        .filter(|&i| i < links.len())
        .unwrap_or(0);
    let bytes = links[idx].as_os_str().as_bytes();
    if bytes.len() + 1 > buflen as usize {
        return -libc::EOVERFLOW;
    }
    // SAFETY: the caller's buffer holds buflen bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    if !linkno.is_null() && usize::try_from(asked).is_ok_and(|a| a + 1 < links.len()) {
        // SAFETY: checked non-NULL.
        unsafe { *linkno = asked + 1 };
    }
    0
}

pub(crate) unsafe fn fid2path(
    device: *const c_char,
    fidstr: *const c_char,
    buf: *mut c_char,
    buflen: c_int,
    _recno: *mut c_longlong,
    linkno: *mut c_int,
) -> c_int {
    // SAFETY: NULL or C strings.
    let (Some(device), Some(fidstr)) = (unsafe { util::c_path(device) }, unsafe {
        util::c_path(fidstr)
    }) else {
        return -libc::EINVAL;
    };
    if buf.is_null() || buflen <= 0 {
        return -libc::EINVAL;
    }
    let Ok((fid, _)) = crate::parse::fid_parse(fidstr.as_os_str().as_bytes()) else {
        return -libc::EINVAL;
    };
    let Some(mount) = util::mount_of_device(&device) else {
        return -libc::ENODEV;
    };
    // SAFETY: forwarded caller's contract.
    unsafe { fid2path_in(&mount, fid, buf, buflen, linkno) }
}

/// `llapi_fid2path_at`: like [`fid2path`], the filesystem given by any open fd on it (the
/// mount root, usually). `-EBADF` for a closed fd, `-ENOTTY` for an fd off the simulated
/// mounts (the ioctl's answer there).
pub(crate) unsafe fn fid2path_at(
    mnt_fd: c_int,
    fid: *const lu_fid,
    buf: *mut c_char,
    buflen: c_int,
    _recno: *mut c_longlong,
    linkno: *mut c_int,
) -> c_int {
    if fid.is_null() || buf.is_null() || buflen <= 0 {
        return -libc::EINVAL;
    }
    // SAFETY: a packed 16-byte struct (checked non-NULL).
    let fid = to_fid(unsafe { fid.read_unaligned() });
    let path = match util::fd_path(mnt_fd) {
        Ok(p) => p,
        Err(e) => return -e,
    };
    let Some(mount) = util::mount_of(&path) else {
        return -libc::ENOTTY;
    };
    // SAFETY: forwarded caller's contract.
    unsafe { fid2path_in(&mount, fid, buf, buflen, linkno) }
}

fn write_fid(out: *mut lu_fid, fid: LuFid) {
    // SAFETY: valid out-pointer, checked by callers; lu_fid is packed.
    unsafe { out.write_unaligned(from_fid(fid)) }
}

pub(crate) unsafe fn path2fid(path: *const c_char, fid: *mut lu_fid) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(path) = (unsafe { util::c_path(path) }) else {
        return -libc::EINVAL;
    };
    if fid.is_null() {
        return -libc::EINVAL;
    }
    rc((|| {
        check_open(&path, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let (_, f) = file_fid(&path)?;
        write_fid(fid, f);
        Ok(())
    })())
}

pub(crate) fn fd2fid(fd: c_int, fid: *mut lu_fid) -> c_int {
    if fid.is_null() {
        return -libc::EINVAL;
    }
    rc((|| {
        let path = util::fd_path(fd)?;
        let (_, f) = file_fid(&path)?;
        write_fid(fid, f);
        Ok(())
    })())
}
