//! The real liblustreapi functions, found lazily with `dlsym(RTLD_NEXT)`.
//!
//! Resolution is lazy (not in a constructor) because a host that `dlopen`s liblustreapi has
//! not loaded it yet when the preload's constructors run. When `RTLD_NEXT` finds nothing the
//! library is looked up by soname as a fallback.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

/// `llapi_hsm_action_begin`.
pub type BeginFn = unsafe extern "C" fn(
    phcp: *mut *mut c_void,
    ct: *const c_void,
    hai: *const c_void,
    restore_mdt_index: c_int,
    restore_open_flags: c_int,
    is_error: bool,
) -> c_int;
/// `llapi_hsm_action_end`.
pub type EndFn = unsafe extern "C" fn(
    phcp: *mut *mut c_void,
    he: *const c_void,
    hp_flags: c_int,
    errval: c_int,
) -> c_int;
/// `llapi_error`.
pub type ErrorFn = unsafe extern "C" fn(level: c_uint, err: c_int, fmt: *const c_char, ...);
/// `llapi_msg_set_level`.
pub type SetLevelFn = unsafe extern "C" fn(level: c_int);
/// `llapi_search_fsname`.
pub type SearchFsnameFn = unsafe extern "C" fn(path: *const c_char, fsname: *mut c_char) -> c_int;

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym/dlopen with valid NUL-terminated names; a NULL result is handled.
    unsafe {
        let p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
        if !p.is_null() {
            return p;
        }
        let lib = libc::dlopen(
            c"liblustreapi.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        );
        let lib = if lib.is_null() {
            libc::dlopen(c"liblustreapi.so.1".as_ptr(), libc::RTLD_LAZY)
        } else {
            lib
        };
        if lib.is_null() {
            return std::ptr::null_mut();
        }
        libc::dlsym(lib, name.as_ptr())
    }
}

macro_rules! real_fn {
    ($(#[$doc:meta])* $fn_name:ident, $ty:ty, $sym:literal) => {
        $(#[$doc])*
        pub fn $fn_name() -> Option<$ty> {
            static CELL: OnceLock<Option<$ty>> = OnceLock::new();
            *CELL.get_or_init(|| {
                let p = lookup($sym);
                // SAFETY: the symbol has this C prototype (lustreapi.h).
                (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
            })
        }
    };
}

real_fn!(
    /// The real `llapi_hsm_action_begin`.
    action_begin, BeginFn, c"llapi_hsm_action_begin");
real_fn!(
    /// The real `llapi_hsm_action_end`.
    action_end, EndFn, c"llapi_hsm_action_end");
real_fn!(
    /// The real `llapi_error` (used for every message of the preload).
    llapi_error, ErrorFn, c"llapi_error");
real_fn!(
    /// The real `llapi_msg_set_level`.
    msg_set_level, SetLevelFn, c"llapi_msg_set_level");
real_fn!(
    /// The real `llapi_search_fsname`.
    search_fsname, SearchFsnameFn, c"llapi_search_fsname");
