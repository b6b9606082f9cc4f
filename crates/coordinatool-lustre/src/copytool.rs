//! Safe copytool API over the run-time loaded liblustreapi.
//!
//! * [`Copytool`]: a registration with the MDT coordinators ([`Copytool::register`]); its
//!   [`fd`](Copytool::fd) can be polled (tokio `AsyncFd` works on it) and
//!   [`recv`](Copytool::recv) returns an owned copy of each `hsm_action_list`. Unregistered on
//!   drop.
//! * [`ActionHandle`]: one action in progress ([`Copytool::action_begin`]), ended exactly once:
//!   by [`ActionHandle::end`], or on drop with `EIO`.
//! * Methods of [`Lustreapi`] for user requests ([`Lustreapi::hsm_request`], used to cancel),
//!   FID/path conversions and file HSM state.
//!
//! All errors are [`LustreError`]s naming the failing call; no raw negative errno escapes.
//!
//! A minimal blocking copytool:
//!
//! ```no_run
//! use std::path::Path;
//! use coordinatool_lustre::{Copytool, HsmProgressFlags, LustreError, Lustreapi};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let api = Lustreapi::global()?; // "Lustre is not available: ..." without liblustreapi
//! api.route_logs_to_tracing();
//! let ct = Copytool::register(api, Path::new("/mnt/lustre"), &[1], false)?;
//! loop {
//!     let hal = match ct.recv() {
//!         Ok(hal) => hal,
//!         Err(LustreError::Shutdown { .. }) => break,
//!         Err(e) => return Err(e.into()),
//!     };
//!     for hai in &hal.items {
//!         let action = ct.action_begin(hai, -1, 0, false)?;
//!         // ... copy the data through `action.fd()` ...
//!         action.end(hai.extent, HsmProgressFlags::default(), 0)?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Mutex;

use crate::action::{HsmAction, HsmProgressFlags, HsmRequestFlags, HsmStates, HsmUserAction};
use crate::ffi::bindings::{self, hsm_action_item, hsm_copyaction_private, hsm_copytool_private};
use crate::ffi::{LustreError, Lustreapi};
use crate::fid::LuFid;
use crate::hal::{HAI_FIXED_LEN, HsmActionItem, HsmActionList, HsmExtent};

/// errno an [`ActionHandle`] dropped without [`end`](ActionHandle::end) is ended with.
///
/// `EIO` rather than `ECANCELED`: the MDT records `ECANCELED` as a cancellation asked for by
/// someone, while a handle dropped on an early return or a panic is a failure of the copytool.
pub const DROPPED_ACTION_ERRNO: i32 = libc::EIO;

/// Largest path liblustreapi returns from `fid2path` (`PATH_MAX`).
const PATH_MAX: usize = 4096;

fn c_path(call: &'static str, path: &Path) -> Result<CString, LustreError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| LustreError::BadArgument {
        call,
        what: format!("path {} contains a NUL byte", path.display()),
    })
}

fn c_fid(fid: &LuFid) -> bindings::lu_fid {
    bindings::lu_fid {
        f_seq: fid.seq,
        f_oid: fid.oid,
        f_ver: fid.ver,
    }
}

fn from_c_fid(fid: &bindings::lu_fid) -> LuFid {
    LuFid::new(fid.f_seq, fid.f_oid, fid.f_ver)
}

fn c_extent(e: &HsmExtent) -> bindings::hsm_extent {
    bindings::hsm_extent {
        offset: e.offset,
        length: e.length,
    }
}

fn from_c_extent(e: &bindings::hsm_extent) -> HsmExtent {
    HsmExtent::new(e.offset, e.length)
}

fn to_c_int(call: &'static str, what: &str, n: usize) -> Result<c_int, LustreError> {
    c_int::try_from(n).map_err(|_| LustreError::BadArgument {
        call,
        what: format!("{what} {n} does not fit a C int"),
    })
}

/// The C `struct hsm_action_item` (fixed part, `hai_len` 72) that `action_begin` takes, built
/// from an owned item. The data is not carried: the library only copies the fixed part.
pub fn c_action_item(item: &HsmActionItem) -> hsm_action_item {
    hsm_action_item {
        hai_len: HAI_FIXED_LEN as u32,
        hai_action: item.action.code(),
        hai_fid: c_fid(&item.fid),
        hai_dfid: c_fid(&item.dfid),
        hai_extent: c_extent(&item.extent),
        hai_cookie: item.cookie,
        hai_gid: item.gid,
        hai_data: bindings::__IncompleteArrayField::new(),
    }
}

/// The 72 bytes of [`c_action_item`] as the library reads them (lustre-hsm.md §2.3).
pub fn c_action_item_bytes(item: &HsmActionItem) -> [u8; HAI_FIXED_LEN] {
    let c = c_action_item(item);
    let mut out = [0u8; HAI_FIXED_LEN];
    // SAFETY: hsm_action_item is a packed 72-byte struct of integers (asserted at compile time
    // in the bindings), so all of its bytes are initialised; `out` has room for 72 bytes.
    unsafe {
        ptr::copy_nonoverlapping((&raw const c).cast::<u8>(), out.as_mut_ptr(), HAI_FIXED_LEN);
    }
    out
}

/// Checks archive ids for [`Copytool::register`] and converts them to C `int`s.
///
/// An empty list means every archive. Ids must be in `1..=i32::MAX` (0 is how the library
/// spells "every archive", which would silently widen a list that also names real ids) and
/// appear once.
pub fn validate_archive_ids(ids: &[u32]) -> Result<Vec<c_int>, LustreError> {
    const CALL: &str = "llapi_hsm_copytool_register";
    to_c_int(CALL, "archive id count", ids.len())?;
    let mut out = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        if id == 0 {
            return Err(LustreError::BadArgument {
                call: CALL,
                what: format!(
                    "archive id 0 at position {i}: ids start at 1 (an empty list serves every archive)"
                ),
            });
        }
        let Ok(c) = c_int::try_from(id) else {
            return Err(LustreError::BadArgument {
                call: CALL,
                what: format!(
                    "archive id {id} at position {i} is larger than {}",
                    i32::MAX
                ),
            });
        };
        if ids[..i].contains(&id) {
            return Err(LustreError::BadArgument {
                call: CALL,
                what: format!("archive id {id} is listed twice (position {i})"),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// A copytool registration (`llapi_hsm_copytool_register`).
///
/// Thread safety: [`recv`](Self::recv) calls are serialised internally (the library keeps one
/// receive buffer per registration); the action functions only read the registration's fds,
/// so actions may run concurrently on several threads, as lhsmtool_posix does.
pub struct Copytool<'a> {
    api: &'a Lustreapi,
    /// NULL once unregistered.
    ct: *mut hsm_copytool_private,
    fd: RawFd,
    mnt: PathBuf,
    archive_ids: Vec<u32>,
    recv_lock: Mutex<()>,
}

// SAFETY: the handle is only used through liblustreapi calls that are safe from any thread
// (lustre-hsm.md §5.3 "Thread safety"); recv, the only call that mutates the handle's buffer,
// is serialised by `recv_lock`, and unregister takes `self` by value.
unsafe impl Send for Copytool<'_> {}
// SAFETY: see `Send`.
unsafe impl Sync for Copytool<'_> {}

impl std::fmt::Debug for Copytool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copytool")
            .field("mnt", &self.mnt)
            .field("archive_ids", &self.archive_ids)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl<'a> Copytool<'a> {
    /// Registers a copytool on the Lustre mount `mnt` for `archive_ids` (empty: every
    /// archive; see [`validate_archive_ids`]). With `nonblocking`, the pipe is `O_NONBLOCK`:
    /// [`recv`](Self::recv) then returns [`LustreError::WouldBlock`] when nothing is queued,
    /// and [`fd`](Self::fd) is meant for poll/epoll/tokio.
    ///
    /// Typical errors: [`LustreError::PermissionDenied`] (not root),
    /// [`LustreError::NotFound`] (not a Lustre mount), [`LustreError::CoordinatorNotRunning`],
    /// [`LustreError::NotConnected`].
    pub fn register(
        api: &'a Lustreapi,
        mnt: &Path,
        archive_ids: &[u32],
        nonblocking: bool,
    ) -> Result<Copytool<'a>, LustreError> {
        const CALL: &str = "llapi_hsm_copytool_register";
        let mut ids = validate_archive_ids(archive_ids)?;
        let cmnt = c_path(CALL, mnt)?;
        let count = to_c_int(CALL, "archive id count", ids.len())?;
        let ids_ptr = if ids.is_empty() {
            ptr::null_mut()
        } else {
            ids.as_mut_ptr()
        };
        let flags = if nonblocking { libc::O_NONBLOCK } else { 0 };
        let mut ct: *mut hsm_copytool_private = ptr::null_mut();
        // SAFETY: `ct` is a valid out-pointer, `cmnt` a NUL-terminated string and `ids_ptr`
        // points to `count` ints (or is NULL with count 0); the library copies the ids.
        let rc = unsafe {
            (api.symbols().llapi_hsm_copytool_register)(
                &mut ct,
                cmnt.as_ptr(),
                count,
                ids_ptr,
                flags,
            )
        };
        LustreError::check(CALL, rc)?;
        if ct.is_null() {
            return Err(LustreError::Other {
                call: CALL,
                errno: libc::EPROTO,
            });
        }
        let mut copytool = Copytool {
            api,
            ct,
            fd: -1,
            mnt: mnt.to_owned(),
            archive_ids: archive_ids.to_vec(),
            recv_lock: Mutex::new(()),
        };
        // SAFETY: `ct` is the live handle just returned by register.
        let fd = unsafe { (api.symbols().llapi_hsm_copytool_get_fd)(ct) };
        // On error, dropping `copytool` unregisters.
        copytool.fd = LustreError::check("llapi_hsm_copytool_get_fd", fd)?;
        tracing::debug!(mnt = %mnt.display(), ?archive_ids, nonblocking, fd, "copytool registered");
        Ok(copytool)
    }

    /// The mount point given to [`register`](Self::register).
    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// The archive ids given to [`register`](Self::register) (empty: every archive).
    pub fn archive_ids(&self) -> &[u32] {
        &self.archive_ids
    }

    /// The library this registration uses.
    pub fn api(&self) -> &'a Lustreapi {
        self.api
    }

    /// The read end of the kernel pipe, for poll/epoll (readable when a message is queued).
    /// It belongs to the library: it is never closed here and must not be closed by the
    /// caller; it stays valid until the copytool is unregistered.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as the registration, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// Receives one `hsm_action_list` and returns an owned copy of it.
    ///
    /// [`LustreError::WouldBlock`]: non-blocking and nothing queued. [`LustreError::Shutdown`]:
    /// the filesystem is being unmounted (stop using this registration).
    /// [`LustreError::Malformed`]: the list does not parse.
    pub fn recv(&self) -> Result<HsmActionList, LustreError> {
        const CALL: &str = "llapi_hsm_copytool_recv";
        let _guard = self
            .recv_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut hal: *mut bindings::hsm_action_list = ptr::null_mut();
        let mut size: c_int = 0;
        // SAFETY: live handle (not unregistered while `self` is borrowed), valid out-pointers.
        let rc =
            unsafe { (self.api.symbols().llapi_hsm_copytool_recv)(self.ct, &mut hal, &mut size) };
        LustreError::check(CALL, rc)?;
        let Ok(size) = usize::try_from(size) else {
            return Err(LustreError::Other {
                call: CALL,
                errno: libc::EPROTO,
            });
        };
        if hal.is_null() {
            return Err(LustreError::Other {
                call: CALL,
                errno: libc::EPROTO,
            });
        }
        // SAFETY: the library returns `size` readable bytes at `hal` (kuc_msglen - 8, inside
        // its receive buffer), valid until the next recv, which `recv_lock` keeps out while the
        // bytes are parsed into owned data.
        let buf = unsafe { std::slice::from_raw_parts(hal.cast::<u8>(), size) };
        HsmActionList::parse(buf).map_err(|source| LustreError::Malformed { call: CALL, source })
    }

    /// Starts an action (`llapi_hsm_action_begin`) for `hai`.
    ///
    /// `restore_mdt_index`: for RESTORE, the MDT index of the file (-1 when unknown);
    /// `restore_open_flags`: extra open flags of the volatile restore file (usually 0).
    /// With `is_error`, nothing is opened and no ioctl is made: the handle only serves to
    /// report a failure (or, with `ECANCELED`, a cancellation) through [`ActionHandle::end`].
    pub fn action_begin(
        &self,
        hai: &HsmActionItem,
        restore_mdt_index: i32,
        restore_open_flags: i32,
        is_error: bool,
    ) -> Result<ActionHandle<'_>, LustreError> {
        const CALL: &str = "llapi_hsm_action_begin";
        let c = c_action_item(hai);
        let mut hcp: *mut hsm_copyaction_private = ptr::null_mut();
        // SAFETY: live handle, valid out-pointer, `c` is a complete 72-byte item with hai_len
        // 72 (the library copies only the fixed part).
        let rc = unsafe {
            (self.api.symbols().llapi_hsm_action_begin)(
                &mut hcp,
                self.ct,
                &c,
                restore_mdt_index,
                restore_open_flags,
                is_error,
            )
        };
        LustreError::check(CALL, rc)?;
        if hcp.is_null() {
            return Err(LustreError::Other {
                call: CALL,
                errno: libc::EPROTO,
            });
        }
        Ok(ActionHandle {
            api: self.api,
            hcp,
            action: hai.action,
            fid: hai.fid,
            cookie: hai.cookie,
            extent: hai.extent,
            _copytool: std::marker::PhantomData,
        })
    }

    /// Reports `errval` (a positive errno) for `hai` without doing the work:
    /// `action_begin(is_error = true)` then `action_end(hai.extent, HP_FLAG_COMPLETED, errval)`.
    /// With `ECANCELED` this cancels a request that was never dispatched.
    pub fn report_error(&self, hai: &HsmActionItem, errval: i32) -> Result<(), LustreError> {
        self.action_begin(hai, -1, 0, true)?
            .end(hai.extent, HsmProgressFlags::COMPLETED, errval)
    }

    /// Unregisters (`llapi_hsm_copytool_unregister`). Dropping the copytool does the same but
    /// can only log a failure.
    pub fn unregister(mut self) -> Result<(), LustreError> {
        self.do_unregister()
    }

    fn do_unregister(&mut self) -> Result<(), LustreError> {
        if self.ct.is_null() {
            return Ok(());
        }
        // SAFETY: live handle; the library frees it and sets `self.ct` to NULL.
        let rc = unsafe { (self.api.symbols().llapi_hsm_copytool_unregister)(&mut self.ct) };
        // The handle is gone whatever the result (the library only fails on a bad handle).
        self.ct = ptr::null_mut();
        LustreError::check("llapi_hsm_copytool_unregister", rc).map(drop)
    }
}

impl Drop for Copytool<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.do_unregister() {
            tracing::warn!(mnt = %self.mnt.display(), "copytool unregister on drop failed: {e}");
        }
    }
}

impl AsFd for Copytool<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl AsRawFd for Copytool<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// An action in progress (`struct hsm_copyaction_private`), from [`Copytool::action_begin`].
///
/// It must be ended exactly once: [`end`](Self::end) consumes it; dropping it un-ended ends
/// it with [`DROPPED_ACTION_ERRNO`] (`EIO`) and logs a warning.
pub struct ActionHandle<'ct> {
    api: &'ct Lustreapi,
    /// NULL once ended.
    hcp: *mut hsm_copyaction_private,
    action: HsmAction,
    fid: LuFid,
    cookie: u64,
    extent: HsmExtent,
    _copytool: std::marker::PhantomData<&'ct Copytool<'ct>>,
}

// SAFETY: the action handle is owned exclusively by this value and the action functions do
// not depend on the calling thread (lhsmtool_posix runs each action on its own thread). Not
// Sync: no promise is made for concurrent calls on one handle.
unsafe impl Send for ActionHandle<'_> {}

impl std::fmt::Debug for ActionHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionHandle")
            .field("action", &self.action)
            .field("fid", &self.fid)
            .field("cookie", &format_args!("{:#x}", self.cookie))
            .finish_non_exhaustive()
    }
}

impl ActionHandle<'_> {
    /// The action of the item this handle was begun for.
    pub fn action(&self) -> HsmAction {
        self.action
    }

    /// The FID of the item this handle was begun for.
    pub fn fid(&self) -> LuFid {
        self.fid
    }

    /// The cookie of the item this handle was begun for.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Reports progress (`llapi_hsm_action_progress`): `extent` was copied; `total` is the
    /// expected size (only used for event logs). [`LustreError::Canceled`] means the request
    /// was canceled: stop and [`end`](Self::end) with `ECANCELED`.
    pub fn progress(
        &self,
        extent: HsmExtent,
        total: u64,
        flags: HsmProgressFlags,
    ) -> Result<(), LustreError> {
        const CALL: &str = "llapi_hsm_action_progress";
        let he = c_extent(&extent);
        let flags = to_c_int(CALL, "progress flags", flags.bits() as usize)?;
        // SAFETY: live action handle (not ended while `self` exists), valid extent pointer.
        let rc =
            unsafe { (self.api.symbols().llapi_hsm_action_progress)(self.hcp, &he, total, flags) };
        LustreError::check(CALL, rc).map(drop)
    }

    /// The FID to use for data access (`llapi_hsm_action_get_dfid`); for RESTORE, the FID of
    /// the volatile file. Only for ARCHIVE and RESTORE ([`LustreError::InvalidArgument`]
    /// otherwise).
    pub fn dfid(&self) -> Result<LuFid, LustreError> {
        let mut fid = bindings::lu_fid::default();
        // SAFETY: live action handle, valid out-pointer.
        let rc = unsafe { (self.api.symbols().llapi_hsm_action_get_dfid)(self.hcp, &mut fid) };
        LustreError::check("llapi_hsm_action_get_dfid", rc)?;
        Ok(from_c_fid(&fid))
    }

    /// A new descriptor for the data (`llapi_hsm_action_get_fd`): ARCHIVE, the file to read;
    /// RESTORE, the volatile file to write. The caller owns it. For RESTORE keep it open until
    /// [`end`](Self::end) has returned (the MDT swaps layouts during end).
    pub fn fd(&self) -> Result<OwnedFd, LustreError> {
        // SAFETY: live action handle.
        let rc = unsafe { (self.api.symbols().llapi_hsm_action_get_fd)(self.hcp) };
        let fd = LustreError::check("llapi_hsm_action_get_fd", rc)?;
        // SAFETY: the library returns a dup'd descriptor that the caller owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Ends the action (`llapi_hsm_action_end`): `extent` is the range done, `errval` 0 for
    /// success or a positive errno. The library frees the handle whatever the outcome.
    pub fn end(
        mut self,
        extent: HsmExtent,
        flags: HsmProgressFlags,
        errval: i32,
    ) -> Result<(), LustreError> {
        self.do_end(extent, flags, errval)
    }

    fn do_end(
        &mut self,
        extent: HsmExtent,
        flags: HsmProgressFlags,
        errval: i32,
    ) -> Result<(), LustreError> {
        const CALL: &str = "llapi_hsm_action_end";
        if self.hcp.is_null() {
            return Ok(());
        }
        let he = c_extent(&extent);
        let flags = to_c_int(CALL, "progress flags", flags.bits() as usize)?;
        let errval = errval.checked_abs().unwrap_or(i32::MAX);
        let mut hcp = self.hcp;
        // SAFETY: live action handle and valid extent; the library frees the handle and sets
        // `hcp` to NULL, except on invalid arguments, which cannot happen here.
        let rc = unsafe { (self.api.symbols().llapi_hsm_action_end)(&mut hcp, &he, flags, errval) };
        if !hcp.is_null() {
            // Not freed by the library: never touch it again (leak rather than double-end).
            tracing::error!(
                cookie = format_args!("{:#x}", self.cookie),
                rc,
                "{CALL} kept the action handle"
            );
        }
        self.hcp = ptr::null_mut();
        LustreError::check(CALL, rc).map(drop)
    }
}

impl Drop for ActionHandle<'_> {
    fn drop(&mut self) {
        if self.hcp.is_null() {
            return;
        }
        tracing::warn!(
            action = %self.action,
            fid = %self.fid,
            cookie = format_args!("{:#x}", self.cookie),
            "action handle dropped without end(): ending it with EIO"
        );
        if let Err(e) = self.do_end(
            self.extent,
            HsmProgressFlags::COMPLETED,
            DROPPED_ACTION_ERRNO,
        ) {
            tracing::warn!(
                cookie = format_args!("{:#x}", self.cookie),
                "ending a dropped action handle failed: {e}"
            );
        }
    }
}

/// Progress state of a file's current HSM action (`enum hsm_progress_states`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HsmProgressState {
    /// `HPS_NONE`: no action.
    None,
    /// `HPS_WAITING`: queued on the MDT.
    Waiting,
    /// `HPS_RUNNING`: a copytool is working on it.
    Running,
    /// `HPS_DONE`: finished.
    Done,
    /// A value this crate does not know.
    Unknown(u32),
}

impl HsmProgressState {
    /// Maps the numeric value.
    pub const fn from_code(code: u32) -> Self {
        match code {
            bindings::HPS_NONE => HsmProgressState::None,
            bindings::HPS_WAITING => HsmProgressState::Waiting,
            bindings::HPS_RUNNING => HsmProgressState::Running,
            bindings::HPS_DONE => HsmProgressState::Done,
            other => HsmProgressState::Unknown(other),
        }
    }
}

/// A file's HSM state (`struct hsm_user_state`, from [`Lustreapi::hsm_state_get`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HsmUserState {
    /// HSM flags of the file.
    pub states: HsmStates,
    /// Archive the file belongs to.
    pub archive_id: u32,
    /// State of the running action.
    pub in_progress_state: HsmProgressState,
    /// The running action (`None` for an unknown code).
    pub in_progress_action: Option<HsmUserAction>,
    /// Range the running action covers.
    pub in_progress_location: HsmExtent,
}

/// A file's current HSM action (`struct hsm_current_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HsmCurrentAction {
    /// Progress state.
    pub state: HsmProgressState,
    /// The action (`None` for an unknown code).
    pub action: Option<HsmUserAction>,
    /// Range covered.
    pub location: HsmExtent,
}

/// Frees a `llapi_hsm_user_request_alloc` buffer (the library allocates with `calloc`).
struct HurGuard(*mut bindings::hsm_user_request);

impl Drop for HurGuard {
    fn drop(&mut self) {
        // SAFETY: allocated by the library with calloc in this process, freed once.
        unsafe { libc::free(self.0.cast()) }
    }
}

impl Lustreapi {
    /// Sends an HSM request (`llapi_hsm_request`) for files of the filesystem containing
    /// `path`: `action` on each `(fid, extent)` of `items`, with `data` attached.
    /// `archive_id` is used for ARCHIVE and REMOVE. The coordinator uses
    /// [`HsmUserAction::Cancel`] to cancel requests.
    pub fn hsm_request(
        &self,
        path: &Path,
        action: HsmUserAction,
        archive_id: u32,
        flags: HsmRequestFlags,
        items: &[(LuFid, HsmExtent)],
        data: &[u8],
    ) -> Result<(), LustreError> {
        const ALLOC: &str = "llapi_hsm_user_request_alloc";
        const CALL: &str = "llapi_hsm_request";
        let cpath = c_path(CALL, path)?;
        if items.is_empty() {
            return Err(LustreError::BadArgument {
                call: CALL,
                what: "an HSM request needs at least one file".to_owned(),
            });
        }
        let count = to_c_int(ALLOC, "item count", items.len())?;
        let dlen = to_c_int(ALLOC, "data length", data.len())?;
        // SAFETY: plain ints; returns NULL or a zeroed buffer of 24 + 32 * count + dlen bytes.
        let hur = unsafe { (self.symbols().llapi_hsm_user_request_alloc)(count, dlen) };
        if hur.is_null() {
            return Err(LustreError::Other {
                call: ALLOC,
                errno: libc::ENOMEM,
            });
        }
        let guard = HurGuard(hur);
        let header = bindings::hsm_request {
            hr_action: action.code(),
            hr_archive_id: archive_id,
            hr_flags: u64::from(flags.bits()),
            hr_itemcount: count as u32,
            hr_data_len: dlen as u32,
        };
        // SAFETY: the buffer holds the 24-byte header, `count` 32-byte items and `dlen` data
        // bytes (the library's allocation contract); the struct is packed, so every write is
        // unaligned.
        unsafe {
            ptr::addr_of_mut!((*hur).hur_request).write_unaligned(header);
            let first = ptr::addr_of_mut!((*hur).hur_user_item).cast::<bindings::hsm_user_item>();
            for (i, (fid, extent)) in items.iter().enumerate() {
                first.add(i).write_unaligned(bindings::hsm_user_item {
                    hui_fid: c_fid(fid),
                    hui_extent: c_extent(extent),
                });
            }
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                first.add(items.len()).cast::<u8>(),
                data.len(),
            );
        }
        // SAFETY: NUL-terminated path, complete request.
        let rc = unsafe { (self.symbols().llapi_hsm_request)(cpath.as_ptr(), guard.0) };
        drop(guard);
        LustreError::check(CALL, rc).map(drop)
    }

    /// The path of `fid` relative to the root of the filesystem mounted at `mnt`
    /// (`llapi_fid2path`, first link).
    pub fn fid2path(&self, mnt: &Path, fid: &LuFid) -> Result<PathBuf, LustreError> {
        const CALL: &str = "llapi_fid2path";
        let cmnt = c_path(CALL, mnt)?;
        let cfid = CString::new(fid.to_string()).map_err(|_| LustreError::BadArgument {
            call: CALL,
            what: "FID text contains a NUL byte".to_owned(),
        })?;
        let mut buf = vec![0u8; PATH_MAX];
        let mut recno: std::os::raw::c_longlong = -1;
        let mut linkno: c_int = 0;
        // SAFETY: NUL-terminated strings, a buffer of PATH_MAX bytes, valid in/out pointers.
        let rc = unsafe {
            (self.symbols().llapi_fid2path)(
                cmnt.as_ptr(),
                cfid.as_ptr(),
                buf.as_mut_ptr().cast::<c_char>(),
                PATH_MAX as c_int,
                &mut recno,
                &mut linkno,
            )
        };
        LustreError::check(CALL, rc)?;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(len);
        Ok(PathBuf::from(OsStr::from_bytes(&buf)))
    }

    /// The FID of `path` (`llapi_path2fid`).
    pub fn path2fid(&self, path: &Path) -> Result<LuFid, LustreError> {
        const CALL: &str = "llapi_path2fid";
        let cpath = c_path(CALL, path)?;
        let mut fid = bindings::lu_fid::default();
        // SAFETY: NUL-terminated path, valid out-pointer.
        let rc = unsafe { (self.symbols().llapi_path2fid)(cpath.as_ptr(), &mut fid) };
        LustreError::check(CALL, rc)?;
        Ok(from_c_fid(&fid))
    }

    /// The FID of an open file (`llapi_fd2fid`).
    pub fn fd2fid(&self, fd: BorrowedFd<'_>) -> Result<LuFid, LustreError> {
        let mut fid = bindings::lu_fid::default();
        // SAFETY: an open fd, valid out-pointer.
        let rc = unsafe { (self.symbols().llapi_fd2fid)(fd.as_raw_fd(), &mut fid) };
        LustreError::check("llapi_fd2fid", rc)?;
        Ok(from_c_fid(&fid))
    }

    /// The name of the Lustre filesystem containing `path` (`llapi_search_fsname`); fails
    /// (typically [`LustreError::NotFound`]) when `path` is not on a mounted Lustre.
    pub fn search_fsname(&self, path: &Path) -> Result<String, LustreError> {
        const CALL: &str = "llapi_search_fsname";
        let cpath = c_path(CALL, path)?;
        // The library writes at most LUSTRE_MAXFSNAME + 1 bytes; be generous.
        let mut buf = [0 as c_char; 256];
        // SAFETY: NUL-terminated path and a buffer larger than the library ever fills.
        let rc = unsafe { (self.symbols().llapi_search_fsname)(cpath.as_ptr(), buf.as_mut_ptr()) };
        LustreError::check(CALL, rc)?;
        let last = buf.len() - 1;
        buf[last] = 0;
        // SAFETY: NUL-terminated (forced above).
        let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
        Ok(name.to_string_lossy().into_owned())
    }

    /// The index of the MDT holding `fid` (`llapi_get_mdt_index_by_fid`), asked through any
    /// open fd on the filesystem (usually the mount point).
    pub fn mdt_index_by_fid(&self, fd: BorrowedFd<'_>, fid: &LuFid) -> Result<i32, LustreError> {
        let cfid = c_fid(fid);
        let mut index: c_int = -1;
        // SAFETY: an open fd, valid in and out pointers.
        let rc = unsafe {
            (self.symbols().llapi_get_mdt_index_by_fid)(fd.as_raw_fd(), &cfid, &mut index)
        };
        LustreError::check("llapi_get_mdt_index_by_fid", rc)?;
        Ok(index)
    }

    /// The HSM state of `path` (`llapi_hsm_state_get`).
    pub fn hsm_state_get(&self, path: &Path) -> Result<HsmUserState, LustreError> {
        const CALL: &str = "llapi_hsm_state_get";
        let cpath = c_path(CALL, path)?;
        let mut hus = bindings::hsm_user_state::default();
        // SAFETY: NUL-terminated path, valid out-pointer (the library fills the fixed part).
        let rc = unsafe { (self.symbols().llapi_hsm_state_get)(cpath.as_ptr(), &mut hus) };
        LustreError::check(CALL, rc)?;
        Ok(HsmUserState {
            states: HsmStates(hus.hus_states),
            archive_id: hus.hus_archive_id,
            in_progress_state: HsmProgressState::from_code(hus.hus_in_progress_state),
            in_progress_action: HsmUserAction::from_code(hus.hus_in_progress_action),
            in_progress_location: from_c_extent(&{ hus.hus_in_progress_location }),
        })
    }

    /// Sets and clears HSM flags of `path` (`llapi_hsm_state_set`); `archive_id` 0 leaves the
    /// file's archive id unchanged.
    pub fn hsm_state_set(
        &self,
        path: &Path,
        set: HsmStates,
        clear: HsmStates,
        archive_id: u32,
    ) -> Result<(), LustreError> {
        const CALL: &str = "llapi_hsm_state_set";
        let cpath = c_path(CALL, path)?;
        // SAFETY: NUL-terminated path and plain integers.
        let rc = unsafe {
            (self.symbols().llapi_hsm_state_set)(
                cpath.as_ptr(),
                u64::from(set.bits()),
                u64::from(clear.bits()),
                archive_id,
            )
        };
        LustreError::check(CALL, rc).map(drop)
    }

    /// The HSM action currently running on `path` (`llapi_hsm_current_action`).
    pub fn hsm_current_action(&self, path: &Path) -> Result<HsmCurrentAction, LustreError> {
        const CALL: &str = "llapi_hsm_current_action";
        let cpath = c_path(CALL, path)?;
        let mut hca = bindings::hsm_current_action::default();
        // SAFETY: NUL-terminated path, valid out-pointer.
        let rc = unsafe { (self.symbols().llapi_hsm_current_action)(cpath.as_ptr(), &mut hca) };
        LustreError::check(CALL, rc)?;
        Ok(HsmCurrentAction {
            state: HsmProgressState::from_code(hca.hca_state),
            action: HsmUserAction::from_code(hca.hca_action),
            location: from_c_extent(&{ hca.hca_location }),
        })
    }
}
