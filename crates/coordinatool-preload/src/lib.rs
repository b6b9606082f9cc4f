//! `libcoordinatool_client.so`: the LD_PRELOAD library that lets an unmodified Lustre copytool
//! take its work from the coordinatool server.
//!
//! It overrides `llapi_hsm_copytool_register`, `_unregister`, `_recv` and `_get_fd`, and wraps
//! `llapi_hsm_action_begin`/`_end`, whose real versions (found lazily with
//! `dlsym(RTLD_NEXT)`) still report progress and completion straight to Lustre:
//!
//! ```sh
//! LD_PRELOAD=/usr/lib64/libcoordinatool_client.so COORDINATOOL_HOST=coord1 lhsmtool_posix ...
//! ```
//!
//! * Work: a background IO thread per registration owns the TCP connection, keeps a `recv`
//!   long poll pending, and makes the fd of `llapi_hsm_copytool_get_fd` readable when a list
//!   is ready; `recv` hands the list over in Lustre's exact binary layout, in a buffer valid
//!   until the next `recv`. Registering with `O_NONBLOCK` makes `recv` return `-EAGAIN` when
//!   nothing is ready.
//! * Completions: `action_end` reports `done` (full 64-bit cookie, positive errno) whatever
//!   thread or forked child calls it; a done is kept until the server answers it, and every
//!   running action is declared again in `ehlo` after a reconnection (exponential backoff with
//!   jitter).
//! * Safety for the host: every export catches panics and returns a negative errno, writes use
//!   `MSG_NOSIGNAL`, internal waits retry `EINTR`, and messages go through liblustreapi's log.
//!   A blocking `recv` waits in `read(2)` like Lustre's: signals whose handler has
//!   `SA_RESTART` do not disturb it, others make it return `-EINTR`.
//! * Configuration: [`config`] (`/etc/coordinatool.conf`, `COORDINATOOL_*`).

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Once;

pub mod backoff;
pub mod config;
#[doc(hidden)]
pub mod log;

mod actions;
mod client;
mod real;

use client::{CT_MAGIC, CtHandle, Shared};

pub use actions::DoneRecord;
pub use client::encode_hal;

thread_local! {
    static IN_PRELOAD: Cell<bool> = const { Cell::new(false) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = IN_PRELOAD.with(Cell::get)
                || std::thread::current().name() == Some("coordinatool-io");
            if ours {
                ct_log!(Error, 0, "internal error: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs an export's body: a panic becomes `-EIO` instead of aborting the copytool.
fn guard(name: &str, f: impl FnOnce() -> c_int) -> c_int {
    let outer = IN_PRELOAD.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_PRELOAD.with(|c| c.set(outer));
    r.unwrap_or_else(|_| {
        ct_log!(Error, 0, "{name} failed on an internal error");
        -libc::EIO
    })
}

/// The preload's handle behind `ct`, if `ct` is one.
///
/// # Safety
/// `ct` is NULL or a copytool handle pointer (ours, or another library's with a leading int).
unsafe fn handle<'a>(ct: *const c_void) -> Option<&'a CtHandle> {
    if ct.is_null() {
        return None;
    }
    // SAFETY: every copytool handle starts with an int magic.
    let magic = unsafe { ct.cast::<c_int>().read() };
    // SAFETY: the magic says it is our handle, alive until unregister.
    (magic == CT_MAGIC).then(|| unsafe { &*ct.cast::<CtHandle>() })
}

fn my_pid() -> libc::pid_t {
    actions::current_pid()
}

/// `llapi_hsm_copytool_register`: loads the client config, opens the mount and its
/// `.lustre/fid`, and starts the connection to the server in the background.
///
/// # Safety
/// C caller: `priv_` and `mnt` valid, `archives` valid for `archive_count` ints.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_register(
    priv_: *mut *mut c_void,
    mnt: *const c_char,
    archive_count: c_int,
    archives: *const c_int,
    rfd_flags: c_int,
) -> c_int {
    // SAFETY: forwarded caller contract.
    guard("llapi_hsm_copytool_register", || unsafe {
        register(priv_, mnt, archive_count, archives, rfd_flags)
    })
}

unsafe fn register(
    priv_: *mut *mut c_void,
    mnt: *const c_char,
    archive_count: c_int,
    archives: *const c_int,
    rfd_flags: c_int,
) -> c_int {
    install_panic_hook();
    actions::install_fork_handlers();
    if priv_.is_null() || mnt.is_null() || archive_count < 0 {
        return -libc::EINVAL;
    }
    if archive_count > 0 && archives.is_null() {
        return -libc::EINVAL;
    }
    let mut ids = Vec::new();
    for i in 0..archive_count as usize {
        // SAFETY: archives holds archive_count ints.
        let a = unsafe { *archives.add(i) };
        if a < 0 {
            return -libc::EINVAL;
        }
        if a == 0 {
            ids.clear();
            break;
        }
        if !ids.contains(&(a as u32)) {
            ids.push(a as u32);
        }
    }
    if real::action_begin().is_none() || real::action_end().is_none() {
        ct_log!(
            Error,
            libc::EIO,
            "liblustreapi's llapi_hsm_action_begin/end not found (is liblustreapi.so.1 loaded?)"
        );
        return -libc::EIO;
    }
    let loaded = match config::load() {
        Ok(l) => l,
        Err(e) => {
            ct_log!(Error, -e.errno(), "{e}");
            return e.errno();
        }
    };
    let cfg = loaded.config;
    log::set_level(config::log_level(cfg.verbose), cfg.verbose_set);
    for w in &loaded.warnings {
        ct_log!(Warn, 0, "{w}");
    }
    if ids.is_empty() {
        ids = cfg.archive_ids.clone();
    }

    // SAFETY: mnt is a NUL-terminated string (caller contract).
    let mnt_c: CString = unsafe { CStr::from_ptr(mnt) }.to_owned();
    // SAFETY: valid path; the fd is owned right away.
    let mnt_fd = unsafe { libc::open(mnt_c.as_ptr(), libc::O_RDONLY) };
    if mnt_fd < 0 {
        let e = std::io::Error::last_os_error();
        ct_log!(
            Error,
            e.raw_os_error().unwrap_or(0),
            "cannot open mount point {mnt_c:?}"
        );
        return -e.raw_os_error().unwrap_or(libc::EIO);
    }
    // SAFETY: fresh descriptor.
    let mnt_fd = unsafe { OwnedFd::from_raw_fd(mnt_fd) };
    // SAFETY: valid directory fd and relative path.
    let fid_fd = unsafe {
        libc::openat(
            std::os::fd::AsRawFd::as_raw_fd(&mnt_fd),
            c".lustre/fid".as_ptr(),
            libc::O_RDONLY,
        )
    };
    if fid_fd < 0 {
        let e = std::io::Error::last_os_error();
        ct_log!(
            Error,
            e.raw_os_error().unwrap_or(0),
            "cannot open {mnt_c:?}/.lustre/fid (not a Lustre mount?)"
        );
        return -e.raw_os_error().unwrap_or(libc::EIO);
    }
    // SAFETY: fresh descriptor.
    let fid_fd = unsafe { OwnedFd::from_raw_fd(fid_fd) };

    let fsname = match real::search_fsname() {
        Some(f) => {
            let mut buf = [0 as c_char; 128];
            // SAFETY: the buffer is larger than any fsname (LUSTRE_MAXFSNAME + 1).
            let rc = unsafe { f(mnt_c.as_ptr(), buf.as_mut_ptr()) };
            if rc < 0 {
                ct_log!(Warn, -rc, "cannot find the fsname of {mnt_c:?}");
                String::new()
            } else {
                // SAFETY: NUL-terminated by llapi_search_fsname.
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            }
        }
        None => String::new(),
    };

    let (shared, ready_wr) = match Shared::new(cfg, fsname, ids, rfd_flags & libc::O_NONBLOCK != 0)
    {
        Ok(x) => x,
        Err(e) => return -e,
    };
    let h = match CtHandle::start(shared, ready_wr, mnt_c, mnt_fd, fid_fd) {
        Ok(h) => h,
        Err(e) => return -e,
    };
    ct_log!(
        Info,
        0,
        "copytool registered on {:?}, work from {}:{}",
        h._mnt_str(),
        h.shared.config.host,
        h.shared.config.port
    );
    // SAFETY: priv_ is valid (checked).
    unsafe { *priv_ = Box::into_raw(h).cast() };
    0
}

/// `llapi_hsm_copytool_unregister`: delivers the pending dones (bounded wait), closes the
/// connection and frees the handle.
///
/// # Safety
/// C caller: `priv_` valid, `*priv_` a handle from register.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_unregister(priv_: *mut *mut c_void) -> c_int {
    guard("llapi_hsm_copytool_unregister", || {
        if priv_.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: priv_ is valid.
        let ct = unsafe { *priv_ };
        // SAFETY: NULL or a handle pointer.
        let Some(h) = (unsafe { handle(ct) }) else {
            return -libc::EINVAL;
        };
        if h.shared.owner_pid != my_pid() {
            // A forked child: the IO thread and the connection belong to the parent.
            // SAFETY: priv_ is valid.
            unsafe { *priv_ = std::ptr::null_mut() };
            return 0;
        }
        // SAFETY: ours, allocated by Box::into_raw in register.
        let mut h = unsafe { Box::from_raw(ct.cast::<CtHandle>()) };
        h.stop();
        h.head.magic = 0;
        drop(h);
        // SAFETY: priv_ is valid.
        unsafe { *priv_ = std::ptr::null_mut() };
        0
    })
}

/// `llapi_hsm_copytool_get_fd`: an fd that is readable while an action list is ready for
/// `recv` (never close it).
///
/// # Safety
/// C caller: `ct` NULL or a handle from register.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_get_fd(ct: *mut c_void) -> c_int {
    guard("llapi_hsm_copytool_get_fd", || {
        // SAFETY: caller contract.
        match unsafe { handle(ct) } {
            Some(h) => h.shared.ready_fd(),
            None => -libc::EINVAL,
        }
    })
}

/// `llapi_hsm_copytool_recv`: the next action list from the server, in Lustre's layout.
///
/// # Safety
/// C caller: valid out-pointers, `ct` a handle from register.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_copytool_recv(
    ct: *mut c_void,
    hal: *mut *mut c_void,
    msgsize: *mut c_int,
) -> c_int {
    guard("llapi_hsm_copytool_recv", || {
        if hal.is_null() || msgsize.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: out-pointers valid (checked).
        unsafe {
            *hal = std::ptr::null_mut();
            *msgsize = 0;
        }
        // SAFETY: caller contract.
        let Some(h) = (unsafe { handle(ct) }) else {
            return -libc::EINVAL;
        };
        if h.shared.owner_pid != my_pid() {
            ct_log!(
                Error,
                libc::EINVAL,
                "recv in a forked child: register the copytool in this process"
            );
            return -libc::EINVAL;
        }
        let shared = std::sync::Arc::clone(&h.shared);
        shared.recv(hal.cast(), msgsize)
    })
}

/// `llapi_hsm_action_begin`: the real function, then the handle's key is remembered.
///
/// # Safety
/// C caller, as the real function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_begin(
    phcp: *mut *mut c_void,
    ct: *const c_void,
    hai: *const c_void,
    restore_mdt_index: c_int,
    restore_open_flags: c_int,
    is_error: bool,
) -> c_int {
    guard("llapi_hsm_action_begin", || {
        let Some(real) = real::action_begin() else {
            return -libc::ENOSYS;
        };
        // SAFETY: forwarded arguments.
        let rc = unsafe {
            real(
                phcp,
                ct,
                hai,
                restore_mdt_index,
                restore_open_flags,
                is_error,
            )
        };
        // SAFETY: caller contract.
        if let Some(h) = unsafe { handle(ct) } {
            // SAFETY: arguments as given to the real function.
            unsafe { actions::after_begin(&h.shared, rc, phcp, hai, is_error) };
        }
        rc
    })
}

/// `llapi_hsm_action_end`: the real function, then the `done` goes to the server with
/// `errval` (or the real function's error when `errval` is 0).
///
/// # Safety
/// C caller, as the real function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn llapi_hsm_action_end(
    phcp: *mut *mut c_void,
    he: *const c_void,
    hp_flags: c_int,
    errval: c_int,
) -> c_int {
    guard("llapi_hsm_action_end", || {
        let Some(real) = real::action_end() else {
            return -libc::ENOSYS;
        };
        let hcp = if phcp.is_null() {
            std::ptr::null_mut()
        } else {
            // SAFETY: phcp is valid.
            unsafe { *phcp }
        };
        let entry = if hcp.is_null() {
            None
        } else {
            actions::take(hcp)
        };
        // SAFETY: forwarded arguments.
        let rc = unsafe { real(phcp, he, hp_flags, errval) };
        if let Some((key, shared)) = entry {
            // SAFETY: phcp is valid (hcp came from it).
            let kept = rc < 0 && unsafe { *phcp } == hcp;
            if kept {
                // Refused without freeing (bad arguments): the copytool may call again.
                actions::put_back(hcp, key, shared);
            } else {
                let status = if errval != 0 {
                    errval.saturating_abs()
                } else {
                    rc.saturating_neg().max(0)
                };
                actions::report(&shared, key, status, false);
            }
        }
        rc
    })
}

impl CtHandle {
    fn _mnt_str(&self) -> String {
        // SAFETY: head.mnt points to the owned CString.
        unsafe { CStr::from_ptr(self.head.mnt) }
            .to_string_lossy()
            .into_owned()
    }
}
