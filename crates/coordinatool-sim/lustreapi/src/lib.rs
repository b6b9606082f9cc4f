//! `liblustreapi.so.1` stand-in for the simulated Lustre of `coordinatool-sim`.
//!
//! Built as a shared object with the soname `liblustreapi.so.1`, it exports with the real C
//! ABI (prototypes, struct layouts, negative-errno results of lustre-hsm.md §5) the copytool
//! and request functions of liblustreapi, so an unmodified copytool linked with
//! `-llustreapi` runs against a simulated mount when `LD_LIBRARY_PATH` points at a directory
//! holding this library as `liblustreapi.so.1`:
//!
//! ```text
//! cargo build -p coordinatool-sim-lustreapi
//! ln -sf liblustreapi.so target/debug/liblustreapi.so.1
//! coordinatool-sim serve /tmp/fs &            # the simulated filesystem
//! LD_LIBRARY_PATH=target/debug lhsmtool_posix --hsm-root /tmp/arc /tmp/fs
//! ```
//!
//! Every call is a request to the daemon serving the mount (`coordinatool_sim::rpc`), found
//! by its socket in the mount directory. A registration's "pipe" is the daemon connection
//! that carries the KUC messages, so `llapi_hsm_copytool_get_fd`, `poll` and `O_NONBLOCK`
//! work as on Lustre; every other call goes over a connection of the calling thread (a
//! forked child opens its own), so the action functions work from any thread and from forked
//! children.
//!
//! Behaviour set: Lustre 2.17 (a signal interrupting a blocking `recv` before any byte gives
//! `-EINTR`, as the single `read()` of 2.12–2.17 does). Differences from Lustre, all
//! deliberate: a daemon that vanishes makes `recv` return `-ESHUTDOWN` (there is no kernel to
//! send `KUC_MSG_SHUTDOWN`); `restore_mdt_index` -1 puts the restore volatile on the file's
//! own MDT; no `CAP_SYS_ADMIN` check (the daemon decides who may do what); `fid2path`
//! returns the first link only.
//!
//! The client mount UUID of a registration comes from [`CLIENT_ENV`] (else the host name)
//! and the mount path: copytools of one simulated client share it, like copytools of one
//! Lustre client mount.
//!
//! Every exported function catches panics (returning `-EIO`, NULL or nothing) so that no
//! unwinding crosses into C, and internal calls never go through an exported symbol, so the
//! library keeps working under an `LD_PRELOAD` library that overrides some of its functions.

use std::os::raw::{c_char, c_int, c_longlong};

use coordinatool_lustre::ffi::bindings::{
    hsm_action_item, hsm_action_list, hsm_copyaction_private, hsm_copytool_private,
    hsm_current_action, hsm_extent, hsm_user_request, hsm_user_state, lu_fid,
};

mod action;
mod ct;
mod events;
mod misc;
mod util;

pub use util::{CLIENT_ENV, MOUNTS_ENV};

const EIO: c_int = -libc::EIO;

/// See lustre-hsm.md §5.3: registers a copytool on the simulated mount `mnt`.
///
/// # Safety
/// C API: pointers as documented for liblustreapi.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_register(
    priv_: *mut *mut hsm_copytool_private,
    mnt: *const c_char,
    archive_count: c_int,
    archives: *mut c_int,
    rfd_flags: c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        ct::register(priv_, mnt, archive_count, archives, rfd_flags)
    })
}

/// Unregisters, frees the handle and sets `*priv_` to NULL.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_unregister(
    priv_: *mut *mut hsm_copytool_private,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { ct::unregister(priv_) })
}

/// The registration's stream fd (the "pipe" read end; not a dup).
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_get_fd(ct: *mut hsm_copytool_private) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { ct::get_fd(ct) })
}

/// Receives one `hsm_action_list` into the handle's buffer.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_recv(
    ct: *mut hsm_copytool_private,
    hal: *mut *mut hsm_action_list,
    msgsize: *mut c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { ct::recv(ct, hal, msgsize) })
}

/// Starts an action.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_begin(
    phcp: *mut *mut hsm_copyaction_private,
    ct: *const hsm_copytool_private,
    hai: *const hsm_action_item,
    restore_mdt_index: c_int,
    restore_open_flags: c_int,
    is_error: bool,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        action::begin(
            phcp,
            ct,
            hai,
            restore_mdt_index,
            restore_open_flags,
            is_error,
        )
    })
}

/// Ends an action, frees the handle and sets `*phcp` to NULL.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_end(
    phcp: *mut *mut hsm_copyaction_private,
    he: *const hsm_extent,
    hp_flags: c_int,
    errval: c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { action::end(phcp, he, hp_flags, errval) })
}

/// Reports progress on an action.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_progress(
    hcp: *mut hsm_copyaction_private,
    he: *const hsm_extent,
    total: u64,
    hp_flags: c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        action::progress(hcp, he, total, hp_flags)
    })
}

/// The data FID of an ARCHIVE or RESTORE (for a restore: the volatile's).
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_get_dfid(
    hcp: *const hsm_copyaction_private,
    fid: *mut lu_fid,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { action::get_dfid(hcp, fid) })
}

/// A dup of the action's data fd (caller closes it).
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_get_fd(hcp: *const hsm_copyaction_private) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { action::get_fd(hcp) })
}

/// `calloc(1, 24 + 32 * itemcount + data_len)`; NULL for negative sizes.
#[unsafe(no_mangle)]
pub extern "C" fn llapi_hsm_user_request_alloc(
    itemcount: c_int,
    data_len: c_int,
) -> *mut hsm_user_request {
    util::guard(std::ptr::null_mut(), || {
        misc::user_request_alloc(itemcount, data_len)
    })
}

/// Sends an HSM request for files of the filesystem containing `path`.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_request(
    path: *const c_char,
    request: *const hsm_user_request,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { misc::hsm_request(path, request) })
}

/// The HSM action running on `path`.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_current_action(
    path: *const c_char,
    hca: *mut hsm_current_action,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { misc::current_action(path, hca) })
}

/// The HSM state of an open file.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_state_get_fd(fd: c_int, hus: *mut hsm_user_state) -> c_int {
    util::guard(EIO, || misc::state_get_fd(fd, hus))
}

/// The HSM state of `path`.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_state_get(
    path: *const c_char,
    hus: *mut hsm_user_state,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { misc::state_get(path, hus) })
}

/// Sets/clears HSM flags of an open file (`archive_id` 0: unchanged).
#[unsafe(no_mangle)]
pub extern "C" fn llapi_hsm_state_set_fd(
    fd: c_int,
    setmask: u64,
    clearmask: u64,
    archive_id: u32,
) -> c_int {
    util::guard(EIO, || {
        misc::state_set_fd(fd, setmask, clearmask, archive_id)
    })
}

/// Sets/clears HSM flags of `path` (`archive_id` 0: unchanged).
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_state_set(
    path: *const c_char,
    setmask: u64,
    clearmask: u64,
    archive_id: u32,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        misc::state_set(path, setmask, clearmask, archive_id)
    })
}

/// Creates (if needed) and opens the event FIFO at `path`.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_register_event_fifo(path: *const c_char) -> c_int {
    util::guard(EIO, || {
        // SAFETY: NULL or a C string.
        match unsafe { util::c_path(path) } {
            Some(p) => events::register_fifo(&p),
            None => -libc::EINVAL,
        }
    })
}

/// Stops writing events to the FIFO.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_unregister_event_fifo(path: *const c_char) -> c_int {
    util::guard(EIO, || {
        // SAFETY: NULL or a C string.
        match unsafe { util::c_path(path) } {
            Some(p) => events::unregister_fifo(&p),
            None => -libc::EINVAL,
        }
    })
}

/// The filesystem name of the simulated mount containing `pathname`.
///
/// # Safety
/// C API (`fsname` holds `LUSTRE_MAXFSNAME + 1` bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_search_fsname(
    pathname: *const c_char,
    fsname: *mut c_char,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { misc::search_fsname(pathname, fsname) })
}

/// The MDT index owning `fid`, asked through any fd of the filesystem.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_get_mdt_index_by_fid(
    fd: c_int,
    fid: *const lu_fid,
    mdt_index: *mut c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        misc::mdt_index_by_fid(fd, fid, mdt_index)
    })
}

/// The path of a FID relative to the filesystem root.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_fid2path(
    device: *const c_char,
    fidstr: *const c_char,
    path: *mut c_char,
    pathlen: c_int,
    recno: *mut c_longlong,
    linkno: *mut c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        misc::fid2path(device, fidstr, path, pathlen, recno, linkno)
    })
}

/// The FID of `path`.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_path2fid(path: *const c_char, fid: *mut lu_fid) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe { misc::path2fid(path, fid) })
}

/// The FID of an open file.
///
/// # Safety
/// C API.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_fd2fid(fd: c_int, fid: *mut lu_fid) -> c_int {
    util::guard(EIO, || misc::fd2fid(fd, fid))
}
