//! `llapi_hsm_import`: creates a file of the filesystem whose data already lives in an archive
//! (released, archived, exists), as `lhsmtool_posix --import` does to rebuild a namespace
//! from an archive. A later restore (explicit, or implicit on first read) brings the data in
//! through the copytool serving that archive.

use std::os::raw::{c_char, c_int};

use coordinatool_lustre::ffi::bindings::lu_fid;
use coordinatool_sim::rpc::{Fid, Reply, Request};

use crate::action::from_fid;
use crate::util::{self, errno};

/// Seconds and nanoseconds of a `stat` time, clamped to what `hsm_user_import` carries.
fn time_of(sec: i64, nsec: i64) -> (u64, u32) {
    (
        u64::try_from(sec).unwrap_or(0),
        u32::try_from(nsec).unwrap_or(0).min(999_999_999),
    )
}

/// See [`crate::llapi_hsm_import`]. The striping arguments and the pool name are accepted
/// and ignored: the simulator has no OSTs.
///
/// # Safety
/// `dst` NULL or a C string, `st` NULL or a valid `struct stat`, `newfid` NULL or writable.
pub(crate) unsafe fn hsm_import(
    dst: *const c_char,
    archive: c_int,
    st: *const libc::stat,
    newfid: *mut lu_fid,
) -> c_int {
    // SAFETY: NULL or a C string.
    let Some(dst) = (unsafe { util::c_path(dst) }) else {
        return -libc::EINVAL;
    };
    if st.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: a valid struct stat (checked non-NULL).
    let st = unsafe { &*st };
    let Ok(archive_id) = u32::try_from(archive) else {
        return -libc::EINVAL;
    };
    // Lustre refuses to import anything but a regular file (LL_IOC_HSM_IMPORT: EINVAL).
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return -libc::EINVAL;
    }
    let Some(mount) = util::mount_of(&dst) else {
        // The layout ioctl fails off Lustre; the real library then removes what it created.
        return -libc::ENOTTY;
    };
    let c = util::path_cstring(&dst);
    // SAFETY: NUL-terminated path; a new file with the archived file's permission bits.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            (st.st_mode & 0o7777) as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = errno();
        util::log(
            util::MSG_ERROR,
            e,
            &format!("cannot create '{}' for import", dst.display()),
        );
        return -e;
    }
    let (atime, atime_ns) = time_of(st.st_atime, st.st_atime_nsec);
    let (mtime, mtime_ns) = time_of(st.st_mtime, st.st_mtime_nsec);
    let req = Request::Import {
        path: util::absolute(&dst),
        archive_id,
        size: u64::try_from(st.st_size).unwrap_or(0),
        atime,
        atime_ns,
        mtime,
        mtime_ns,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
    };
    let r = match util::call(&mount, &req) {
        Ok(Reply::Fid { fid: Fid(f) }) => Ok(f),
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(e),
    };
    // SAFETY: the fd opened above.
    unsafe { libc::close(fd) };
    match r {
        Ok(f) => {
            if !newfid.is_null() {
                // SAFETY: writable (caller's contract); lu_fid is packed.
                unsafe { newfid.write_unaligned(from_fid(f)) };
            }
            0
        }
        Err(e) => {
            util::log(
                util::MSG_ERROR,
                e,
                &format!("cannot import '{}'", dst.display()),
            );
            // SAFETY: NUL-terminated path of the file created above.
            unsafe { libc::unlink(c.as_ptr()) };
            -e
        }
    }
}
