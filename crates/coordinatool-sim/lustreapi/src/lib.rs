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
//! leaves `recno` unchanged (no changelog); `llapi_parse_size` returns `-EINVAL`/`-ERANGE`
//! where Lustre's returns -1; `llapi_hsm_import` ignores striping (no OSTs). Against a daemon
//! in its opt-in pipelined mode (`coordinatool-sim serve --pipelined`), `action_begin` does not
//! wait for COPY_START (sent one way ahead of the action's next call): a failed start is
//! returned by the action's next progress or end, and an ARCHIVE's data version is the data
//! stamp of the source fd
//! (`coordinatool_sim::rpc`, "Pipelined mode").
//!
//! Besides the HSM functions it exports the other `llapi_*` calls of `lhsmtool_posix`
//! (`llapi_fid2path_at`, `llapi_fid_parse`, `llapi_parse_size`, `llapi_hsm_import`, the event
//! FIFO, the logging functions), so that copytool's binary needs nothing else from it.
//!
//! The client mount UUID of a registration comes from [`CLIENT_ENV`] (else the host name)
//! and the mount path: copytools of one simulated client share it, like copytools of one
//! Lustre client mount.
//!
//! Every exported function catches panics (returning `-EIO`, NULL or nothing) so that no
//! unwinding crosses into C, and internal calls never go through an exported symbol, so the
//! library keeps working under an `LD_PRELOAD` library that overrides some of its functions.

use std::os::raw::{c_char, c_int, c_longlong, c_ulonglong};

use coordinatool_lustre::ffi::bindings::{
    hsm_action_item, hsm_action_list, hsm_copyaction_private, hsm_copytool_private,
    hsm_current_action, hsm_extent, hsm_user_request, hsm_user_state, lu_fid,
};

mod action;
mod ct;
mod events;
mod import;
mod misc;
mod parse;
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

/// The path of a FID relative to the filesystem root, the filesystem given by an open fd
/// (`mnt_fd`, usually the mount root). `linkno` (optional) selects the hard link and is
/// advanced when another link follows; `recno` is accepted and left unchanged (no changelog
/// in the simulator). `-EOVERFLOW` when the path does not fit `pathlen` bytes with its NUL,
/// `-ENOENT` for an unknown FID, `-ENOTTY` for an fd off the simulated mounts.
///
/// # Safety
/// C API: `path` holds `pathlen` bytes; `recno`/`linkno` NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_fid2path_at(
    mnt_fd: c_int,
    fid: *const lu_fid,
    path: *mut c_char,
    pathlen: c_int,
    recno: *mut c_longlong,
    linkno: *mut c_int,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        misc::fid2path_at(mnt_fd, fid, path, pathlen, recno, linkno)
    })
}

/// Parses a FID, `[0x..:0x..:0x..]` or without brackets (leading white space skipped, each
/// field in C notation). `*endptr` (if `endptr` is not NULL) points past the FID (past `]`
/// when bracketed), or where parsing stopped on error. Returns 0, `-EINVAL` (not a FID) or
/// `-ERANGE` (a field too large); `*fid` is only written on success.
///
/// # Safety
/// C API: `fidstr` NULL or a C string, `fid` NULL or writable, `endptr` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_fid_parse(
    fidstr: *const c_char,
    fid: *mut lu_fid,
    endptr: *mut *mut c_char,
) -> c_int {
    util::guard(EIO, || {
        if fidstr.is_null() || fid.is_null() {
            if !endptr.is_null() {
                // SAFETY: writable (caller's contract).
                unsafe { *endptr = fidstr.cast_mut() };
            }
            return -libc::EINVAL;
        }
        // SAFETY: a NUL-terminated string.
        let bytes = unsafe { std::ffi::CStr::from_ptr(fidstr) }.to_bytes();
        let (rc, end) = match parse::fid_parse(bytes) {
            Ok((f, end)) => {
                // SAFETY: writable (checked non-NULL); lu_fid is packed.
                unsafe { fid.write_unaligned(action::from_fid(f)) };
                (0, end)
            }
            Err(e) => (-e.errno, e.end),
        };
        if !endptr.is_null() {
            // SAFETY: `end` is within the string (at most its NUL); endptr writable.
            unsafe { *endptr = fidstr.add(end).cast_mut() };
        }
        rc
    })
}

/// Parses a size: a number (C notation, optional decimal fraction) with an optional unit
/// suffix `k`, `m`, `g`, `t`, `p`, `e` (powers of 1024, either case) or `b` (512-byte blocks,
/// or bytes when `bytes_spec` is non-zero). Without a suffix the number counts in
/// `*size_units` (0 meaning bytes); on return `*size_units` is the unit used. Returns 0,
/// `-EINVAL` for a NULL argument, a negative or malformed value, `-ERANGE` when the size does
/// not fit 64 bits (`*size` is only written on success). Lustre's own version returns -1 for
/// every error; both are negative, which is what callers test.
///
/// # Safety
/// C API: `optarg` NULL or a C string; `size` and `size_units` NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_parse_size(
    optarg: *const c_char,
    size: *mut c_ulonglong,
    size_units: *mut c_ulonglong,
    bytes_spec: c_int,
) -> c_int {
    util::guard(EIO, || {
        if optarg.is_null() || size.is_null() || size_units.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: a NUL-terminated string and valid pointers (checked non-NULL).
        unsafe {
            let bytes = std::ffi::CStr::from_ptr(optarg).to_bytes();
            match parse::parse_size(bytes, *size_units, bytes_spec != 0) {
                Ok((v, unit)) => {
                    *size = v;
                    *size_units = unit;
                    0
                }
                Err(e) => -e,
            }
        }
    })
}

/// Creates `dst` as a released copy of a file already archived in `archive` (HSM flags
/// `exists archived released`, archive id `archive`), with the size, times, mode and owner of
/// `st`, and returns its FID in `newfid` (if not NULL). A restore through a copytool of that
/// archive then brings the data in. `-EINVAL` for NULL arguments, a negative archive id or a
/// mode that is not a regular file; `-EEXIST` if `dst` exists; `-ENOTTY` off the simulated
/// mounts. On failure nothing is left behind. The striping arguments and `pool_name` are
/// accepted and ignored (the simulator has no OSTs).
///
/// # Safety
/// C API: `dst` a C string, `st` a valid `struct stat`, `newfid` NULL or writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn llapi_hsm_import(
    dst: *const c_char,
    archive: c_int,
    st: *const libc::stat,
    _stripe_size: c_ulonglong,
    _stripe_offset: c_int,
    _stripe_count: c_int,
    _stripe_pattern: c_int,
    _pool_name: *mut c_char,
    newfid: *mut lu_fid,
) -> c_int {
    // SAFETY: forwarded C contract.
    util::guard(EIO, || unsafe {
        import::hsm_import(dst, archive, st, newfid)
    })
}
