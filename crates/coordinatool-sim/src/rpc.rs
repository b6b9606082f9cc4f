//! The request/response protocol between the simulator daemon and its clients (the
//! `liblustreapi.so.1` stand-in, the `lfs`/`lctl` commands, tests).
//!
//! # Transport
//! A Unix stream socket at `<mount>/.lustre_sim/sock` ([`socket_path`]). Every message is a
//! frame: a little-endian `u32` length, then that many bytes of body ([`Request`] from the
//! client, [`Response`] from the daemon). One request, one reply, in order, on any
//! connection — except a [`Request::CopyStart`] with `one_way` set, which gets no reply (see
//! "Pipelined mode" below).
//!
//! # Bodies
//! The messages of every action (copy start, progress and completion, their replies, and the
//! HSM request of `lfs hsm_*`) use a compact binary body: a tag byte, then fixed-width
//! little-endian fields ([`Message`] documents the layout). Every other message is JSON.
//! The first byte tells them apart: binary tags are below `0x20` or above `0x7f` (and not
//! JSON white space), a JSON body starts with `{` or `"`. A malformed body is an error
//! naming the message and field ([`RpcError::Malformed`], [`RpcError::Json`]), never a panic.
//!
//! # Pipelined mode
//! A daemon started with `--pipelined` ([`crate::server::ServeOptions::pipelined`]) says so
//! in its [`Reply::Hello`]. The stand-in library then makes an action's COPY_START one way
//! (`one_way` set, no reply awaited) and sends it ahead of the action's next call (progress
//! or end) in the same write, on a connection the action keeps until its end: an action
//! costs one round trip instead of two, and the daemon serves both frames with one wake-up.
//! The divergences from Lustre that follow: the MDT sees the start only with that next call
//! (until then the request's last-progress time is its dispatch time); a failed start
//! (request canceled: `ECANCELED`, unknown cookie: `ENOENT`, ...) is not returned by
//! `llapi_hsm_action_begin` but by the action's next progress or end call (the end then
//! completes the request with that error); and an ARCHIVE's data version is
//! the copytool's own reading of the file's stat ([`crate::fs::data_stamp`] of its open
//! source fd) rather than the MDT's counter: the end sends it as `start_stamp` and the
//! daemon compares it with the file's stat at the end (a change gives `EBUSY`, as in the
//! default mode).
//!
//! # Copytool streams
//! A connection whose request is [`Request::Register`] (and whose reply is `Ok`) stops being a
//! request/response connection: from then on the daemon only writes raw KUC messages on it —
//! the bytes a copytool reads from its pipe (`kuc_hdr` + `hsm_action_list`, see
//! [`kuc_action_list`], and [`kuc_shutdown`] when the daemon stops). The stand-in library can
//! therefore hand this socket to the copytool as the "pipe" read end (`get_fd`, poll,
//! `O_NONBLOCK` all work). Closing it removes that copytool from the mount's broadcast group;
//! [`Request::Unregister`] (on any connection) unregisters the whole client mount from every
//! MDT, like `MDS_HSM_CT_UNREGISTER`.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use coordinatool_lustre::LuFid;
use serde::{Deserialize, Serialize};

/// Largest frame accepted (bytes of JSON).
pub const MAX_FRAME: usize = 16 << 20;
/// `KUC_MAGIC`.
pub const KUC_MAGIC: u16 = 0x191C;
/// `KUC_TRANSPORT_GENERIC`.
pub const KUC_TRANSPORT_GENERIC: u8 = 1;
/// `KUC_TRANSPORT_HSM`.
pub const KUC_TRANSPORT_HSM: u8 = 2;
/// `KUC_MSG_SHUTDOWN` (generic transport).
pub const KUC_MSG_SHUTDOWN: u16 = 1;
/// `HMT_ACTION_LIST` (HSM transport).
pub const HMT_ACTION_LIST: u16 = 100;

/// Where the daemon of the simulated mount `mount` listens.
pub fn socket_path(mount: &Path) -> PathBuf {
    mount.join(crate::fs::STATE_DIR).join("sock")
}

/// Finds the simulated mount containing `path` (the nearest ancestor holding a daemon socket).
pub fn find_mount(path: &Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    abs.ancestors()
        .find(|p| socket_path(p).exists())
        .map(Path::to_owned)
}

/// A KUC message carrying one encoded HAL (`kuc_hdr` + `hal`).
pub fn kuc_action_list(hal: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + hal.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(8 + hal.len());
    out.extend_from_slice(&KUC_MAGIC.to_le_bytes());
    out.push(KUC_TRANSPORT_HSM);
    out.push(0);
    out.extend_from_slice(&HMT_ACTION_LIST.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(hal);
    out
}

/// The generic `KUC_MSG_SHUTDOWN` message (recv returns `-ESHUTDOWN`).
pub fn kuc_shutdown() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..2].copy_from_slice(&KUC_MAGIC.to_le_bytes());
    out[2] = KUC_TRANSPORT_GENERIC;
    out[4..6].copy_from_slice(&KUC_MSG_SHUTDOWN.to_le_bytes());
    out[6..8].copy_from_slice(&8u16.to_le_bytes());
    out
}

/// FIDs travel as their `[0x..:0x..:0x..]` text.
mod fid_text {
    use coordinatool_lustre::LuFid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(f: &LuFid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(f)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LuFid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A FID on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fid(#[serde(with = "fid_text")] pub LuFid);

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Filesystem name and MDT count ([`Reply::Hello`]).
    Hello,
    /// `LL_IOC_HSM_CT_START` from client mount `uuid`; on success the connection becomes a
    /// copytool stream (see the module docs). Errors: `ENXIO` (a coordinator is not running).
    Register {
        /// Client mount UUID (all copytools of one mount share it).
        uuid: String,
        /// Archive ids (empty or containing 0 = any).
        archives: Vec<u32>,
    },
    /// `MDS_HSM_CT_UNREGISTER` of client mount `uuid` on every MDT.
    Unregister {
        /// Client mount UUID.
        uuid: String,
    },
    /// `LL_IOC_HSM_COPY_START`: progress `{offset, 0}` for `cookie`; for ARCHIVE, replies the
    /// file's data version ([`Reply::DataVersion`]). `ECANCELED` if a cancel was dispatched.
    CopyStart {
        /// `hai_fid`.
        fid: Fid,
        /// Cookie.
        cookie: u64,
        /// `hai_extent.offset`.
        offset: u64,
        /// True for an ARCHIVE (read the data version).
        archive: bool,
        /// Pipelined mode: no reply is sent; a failure is kept by the daemon and returned by
        /// the next progress or completion of this cookie (see the module docs).
        #[serde(default)]
        one_way: bool,
        /// ARCHIVE: the file's `stat`, taken by the copytool on the source fd it just opened
        /// (the same inode as `.lustre/fid/<fid>`); the daemon reads the data version from
        /// it instead of its own `stat` by path. `None`: the daemon stats the file.
        #[serde(default)]
        stat_now: Option<FileStat>,
    },
    /// `LL_IOC_HSM_PROGRESS` (and COPY_END with `completed`). For a successful ARCHIVE end the
    /// daemon compares the data version with `start_data_version` (mismatch: `EBUSY`); for a
    /// successful RESTORE end it commits the volatile `fid` into the file (layout swap).
    Progress {
        /// `hp_fid` (the volatile for a restore end).
        fid: Fid,
        /// Cookie.
        cookie: u64,
        /// Extent offset.
        offset: u64,
        /// Extent length.
        length: u64,
        /// `HP_FLAG_*`.
        flags: u32,
        /// Positive errno.
        errval: u16,
        /// Data version read at COPY_START (archive end only).
        start_data_version: Option<u64>,
        /// Pipelined mode: the [`crate::fs::data_stamp`] of the file when the copy started
        /// (archive end only); the daemon compares it with the file's stamp now (`EBUSY`).
        #[serde(default)]
        start_stamp: Option<u64>,
        /// Pipelined mode: the file's `stat` now, taken by the copytool on its open source fd
        /// (archive end only); the daemon uses it instead of its own `stat`.
        #[serde(default)]
        stat_now: Option<FileStat>,
    },
    /// `LL_IOC_HSM_REQUEST` (`llapi_hsm_request`).
    HsmRequest {
        /// `enum hsm_user_action` code.
        action: u32,
        /// Archive id.
        archive_id: u32,
        /// `hr_flags`.
        flags: u64,
        /// `(fid, offset, length)` per item.
        items: Vec<(Fid, u64, u64)>,
        /// Opaque data.
        data: Vec<u8>,
        /// Requesting user.
        uid: u32,
        /// Requesting group.
        gid: u32,
    },
    /// I/O on a released file: records the implicit RESTORE the kernel would (`hr_flags` =
    /// `HSM_REQ_BLOCKING`, whole file). Replies `Unit` (the caller then waits until the file
    /// is no longer released), `ENODATA` under the NonBlockingRestore policy.
    ImplicitRestore {
        /// The file.
        fid: Fid,
    },
    /// `lfs hsm_release`.
    Release {
        /// The file.
        fid: Fid,
    },
    /// `llapi_path2fid` (path absolute or relative to the mount).
    Path2Fid {
        /// Path.
        path: PathBuf,
    },
    /// `llapi_fid2path`: path relative to the mount ([`Reply::Path`]).
    Fid2Path {
        /// The FID.
        fid: Fid,
    },
    /// MDT index owning a FID ([`Reply::Index`]).
    FidMdt {
        /// The FID.
        fid: Fid,
    },
    /// `LL_IOC_HSM_STATE_GET` ([`Reply::State`]); notices writes first (dirty detection).
    StateGet {
        /// The file.
        fid: Fid,
    },
    /// `LL_IOC_HSM_STATE_SET`.
    StateSet {
        /// The file.
        fid: Fid,
        /// Bits to set.
        set: u64,
        /// Bits to clear.
        clear: u64,
        /// New archive id (0 = unchanged).
        archive_id: u32,
        /// Requesting user.
        uid: u32,
    },
    /// `LL_IOC_HSM_ACTION` ([`Reply::Action`]).
    CurrentAction {
        /// The file.
        fid: Fid,
    },
    /// Creates a restore volatile on MDT `mdt` ([`Reply::Volatile`]).
    CreateVolatile {
        /// MDT index (`restore_mdt_index`; -1 = MDT0000).
        mdt: i32,
    },
    /// Removes a volatile (restore failed or abandoned).
    DiscardVolatile {
        /// The volatile's FID.
        fid: Fid,
    },
    /// `lctl get_param [-n]` ([`Reply::Text`]).
    GetParam {
        /// Glob pattern.
        pattern: String,
        /// Print `name=` prefixes.
        show_name: bool,
    },
    /// `lctl set_param pattern=value` ([`Reply::SetParam`]).
    SetParam {
        /// Glob pattern.
        pattern: String,
        /// Value written.
        value: String,
    },
    /// `LL_IOC_HSM_IMPORT` (`llapi_hsm_import`) on a regular file just created: makes it
    /// `exists archived released` with `archive_id`, the given size (no data: it reads as
    /// zeros until restored), times, mode and owner ([`Reply::Fid`]: its FID).
    Import {
        /// The file (absolute, or relative to the mount).
        path: PathBuf,
        /// `hui_archive_id`.
        archive_id: u32,
        /// `hui_size`.
        size: u64,
        /// `hui_atime` (seconds).
        atime: u64,
        /// `hui_atime_ns`.
        atime_ns: u32,
        /// `hui_mtime` (seconds).
        mtime: u64,
        /// `hui_mtime_ns`.
        mtime_ns: u32,
        /// `hui_uid`.
        uid: u32,
        /// `hui_gid`.
        gid: u32,
        /// `hui_mode` (permission bits are applied; the file type must be regular).
        mode: u32,
    },
    /// `LL_IOC_HSM_STATE_GET` with the whole `struct hsm_user_state` ([`Reply::UserState`]):
    /// the flags plus the file's current action (`hus_in_progress_*`).
    UserState {
        /// The file.
        fid: Fid,
    },
    /// Reads MDT `mdt`'s changelog records `start..=end` (`end` 0 = to the last one)
    /// ([`Reply::Changelog`]). `ENOENT` for an unknown MDT name.
    Changelog {
        /// Target name, `<fsname>-MDT0000`.
        mdt: String,
        /// First record number.
        start: u64,
        /// Last record number, 0 for no limit.
        end: u64,
    },
    /// `lfs changelog_clear`: changelog user `user` (`cl1`) no longer needs MDT `mdt`'s
    /// records up to `endrec` (0 = all). `ENOENT` (unknown MDT or user), `EINVAL` (`endrec`
    /// past the last record, or a user name not of the form `clN`).
    ChangelogClear {
        /// Target name.
        mdt: String,
        /// User name, `cl<N>`.
        user: String,
        /// Last record to clear, 0 = all.
        endrec: u64,
    },
    /// `lctl --device <mdt> changelog_register` ([`Reply::Index`]: the new user's `N`).
    ChangelogRegister {
        /// Target name.
        mdt: String,
    },
    /// `lctl --device <mdt> changelog_deregister cl<N>`.
    ChangelogDeregister {
        /// Target name.
        mdt: String,
        /// User name, `cl<N>`.
        user: String,
    },
}

/// The fields of a file's `stat` that make its data stamp ([`crate::fs::data_stamp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// `st_mtime`.
    pub mtime: i64,
    /// `st_mtime_nsec`.
    pub mtime_nsec: i64,
    /// `st_size`.
    pub size: u64,
}

/// One changelog record on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    /// Record number.
    pub index: u64,
    /// Record type (`CL_HSM` = 16).
    pub kind: u32,
    /// Epoch seconds.
    pub time: u64,
    /// `cr_flags`.
    pub flags: u16,
    /// Target FID.
    pub tfid: Fid,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Done, nothing to return.
    Unit,
    /// [`Request::Hello`].
    Hello {
        /// Filesystem name.
        fsname: String,
        /// Number of MDTs.
        mdts: u32,
        /// The daemon runs in pipelined mode (see the module docs).
        #[serde(default)]
        pipelined: bool,
    },
    /// A data version.
    DataVersion {
        /// The value.
        version: u64,
    },
    /// A FID.
    Fid {
        /// The value.
        fid: Fid,
    },
    /// A path relative to the mount.
    Path {
        /// The value.
        path: PathBuf,
    },
    /// An index.
    Index {
        /// The value.
        index: u32,
    },
    /// HSM state of a file.
    State {
        /// `hus_states`.
        states: u32,
        /// `hus_archive_id`.
        archive_id: u32,
    },
    /// Current action of a file.
    Action {
        /// `hca_state` (`HPS_*`).
        state: u32,
        /// `hca_action` (`HUA_*`).
        action: u32,
        /// Location offset.
        offset: u64,
        /// Location length.
        length: u64,
    },
    /// A restore volatile.
    Volatile {
        /// Its FID.
        fid: Fid,
        /// Its path (absolute).
        path: PathBuf,
    },
    /// Parameter text.
    Text {
        /// The text.
        text: String,
    },
    /// Per-parameter results of a set (0 or a positive errno).
    SetParam {
        /// `(name, errno)`.
        results: Vec<(String, i32)>,
    },
    /// [`Request::UserState`]: `struct hsm_user_state`.
    UserState {
        /// `hus_states`.
        states: u32,
        /// `hus_archive_id`.
        archive_id: u32,
        /// `hus_in_progress_state` (`HPS_*`).
        in_progress_state: u32,
        /// `hus_in_progress_action` (`HUA_*`).
        in_progress_action: u32,
        /// `hus_in_progress_location.offset`.
        in_progress_offset: u64,
        /// `hus_in_progress_location.length` (bytes moved while running).
        in_progress_length: u64,
    },
    /// Changelog records, in order.
    Changelog {
        /// The records.
        records: Vec<ChangelogEntry>,
    },
}

/// The daemon's answer: a reply or a positive errno.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success.
    Ok(Reply),
    /// Failure with a positive errno.
    Err(i32),
}

/// Protocol errors (transport, framing, JSON).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Socket error.
    #[error("simulator socket: {0}")]
    Io(#[from] io::Error),
    /// A frame larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Undecodable JSON.
    #[error("bad message: {0}")]
    Json(#[from] serde_json::Error),
    /// Undecodable binary body: what was wrong, naming the message and field.
    #[error("bad message: {0}")]
    Malformed(String),
    /// The peer closed the connection.
    #[error("connection closed by the simulator")]
    Closed,
    /// The daemon returned an errno.
    #[error("simulator returned errno {0}")]
    Errno(i32),
    /// The reply did not match the request.
    #[error("unexpected reply {0:?}")]
    Unexpected(Box<Reply>),
}

impl RpcError {
    /// The errno a C caller should see.
    pub fn errno(&self) -> i32 {
        match self {
            RpcError::Errno(e) => *e,
            RpcError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            RpcError::Closed => libc::ENOTCONN,
            _ => libc::EPROTO,
        }
    }
}

/// A message with a wire form (see "Bodies" in the module docs).
pub trait Message: Sized {
    /// Appends the body (without the length prefix) to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), RpcError>;
    /// Decodes a whole body.
    fn decode(body: &[u8]) -> Result<Self, RpcError>;
}

/// Binary tags. Requests: `CopyStart` = fid (16: seq u64, oid u32, ver u32), cookie u64,
/// offset u64, bits u8 (1 archive, 2 one way), the stat now (see `Progress`). `Progress` = fid, cookie, offset, length u64,
/// flags u32, errval u16, start data version and start stamp each as a presence byte (0/1)
/// then a u64 when present, the stat now as a presence byte then mtime i64, mtime_nsec i64,
/// size u64. `HsmRequest` = action u32, archive id u32, flags u64, uid u32,
/// gid u32, item count u32, items (fid, offset, length), data length u32, data.
/// Responses: `Ok(Unit)` (nothing), `Ok(DataVersion)` (version u64), `Err` (errno i32).
mod tag {
    pub(super) const COPY_START: u8 = 0x01;
    pub(super) const PROGRESS: u8 = 0x02;
    pub(super) const HSM_REQUEST: u8 = 0x03;
    pub(super) const OK_UNIT: u8 = 0x81;
    pub(super) const OK_DATA_VERSION: u8 = 0x82;
    pub(super) const ERR: u8 = 0x83;
}

/// True for a body in the binary form (its first byte is a binary tag).
fn is_binary(body: &[u8]) -> bool {
    matches!(body.first(), Some(&b) if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') || b >= 0x80)
}

fn put_fid(out: &mut Vec<u8>, f: LuFid) {
    out.extend_from_slice(&f.seq.to_le_bytes());
    out.extend_from_slice(&f.oid.to_le_bytes());
    out.extend_from_slice(&f.ver.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn put_stat(out: &mut Vec<u8>, st: Option<FileStat>) {
    match st {
        Some(st) => {
            out.push(1);
            out.extend_from_slice(&st.mtime.to_le_bytes());
            out.extend_from_slice(&st.mtime_nsec.to_le_bytes());
            out.extend_from_slice(&st.size.to_le_bytes());
        }
        None => out.push(0),
    }
}

/// A cursor over a binary body; errors name the message and the field.
struct Cursor<'a> {
    buf: &'a [u8],
    msg: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], RpcError> {
        if self.buf.len() < n {
            return Err(RpcError::Malformed(format!(
                "{}: truncated at field {field} (needs {n} bytes, {} left)",
                self.msg,
                self.buf.len()
            )));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }
    fn u8(&mut self, field: &str) -> Result<u8, RpcError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, RpcError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &str) -> Result<u32, RpcError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, field: &str) -> Result<u64, RpcError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn fid(&mut self, field: &str) -> Result<Fid, RpcError> {
        Ok(Fid(LuFid::new(
            self.u64(field)?,
            self.u32(field)?,
            self.u32(field)?,
        )))
    }
    fn opt(&mut self, field: &str) -> Result<Option<u64>, RpcError> {
        if self.presence(field)? {
            Ok(Some(self.u64(field)?))
        } else {
            Ok(None)
        }
    }
    fn stat(&mut self, field: &str) -> Result<Option<FileStat>, RpcError> {
        if !self.presence(field)? {
            return Ok(None);
        }
        Ok(Some(FileStat {
            mtime: self.u64(field)? as i64,
            mtime_nsec: self.u64(field)? as i64,
            size: self.u64(field)?,
        }))
    }
    fn presence(&mut self, field: &str) -> Result<bool, RpcError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(RpcError::Malformed(format!(
                "{}: field {field}: presence byte {b} (0 or 1)",
                self.msg
            ))),
        }
    }
    fn end(self) -> Result<(), RpcError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(RpcError::Malformed(format!(
                "{}: {} unexpected bytes after the last field",
                self.msg,
                self.buf.len()
            )))
        }
    }
}

fn too_many(msg: &str, field: &str, n: usize) -> RpcError {
    RpcError::Malformed(format!("{msg}: {field} of {n} does not fit a frame"))
}

impl Message for Request {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), RpcError> {
        match self {
            Request::CopyStart {
                fid,
                cookie,
                offset,
                archive,
                one_way,
                stat_now,
            } => {
                out.push(tag::COPY_START);
                put_fid(out, fid.0);
                out.extend_from_slice(&cookie.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(u8::from(*archive) | (u8::from(*one_way) << 1));
                put_stat(out, *stat_now);
            }
            Request::Progress {
                fid,
                cookie,
                offset,
                length,
                flags,
                errval,
                start_data_version,
                start_stamp,
                stat_now,
            } => {
                out.push(tag::PROGRESS);
                put_fid(out, fid.0);
                out.extend_from_slice(&cookie.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&errval.to_le_bytes());
                put_opt(out, *start_data_version);
                put_opt(out, *start_stamp);
                put_stat(out, *stat_now);
            }
            Request::HsmRequest {
                action,
                archive_id,
                flags,
                items,
                data,
                uid,
                gid,
            } => {
                let n = u32::try_from(items.len())
                    .map_err(|_| too_many("hsm_request", "items", items.len()))?;
                let dl = u32::try_from(data.len())
                    .map_err(|_| too_many("hsm_request", "data", data.len()))?;
                out.reserve(33 + 32 * items.len() + data.len());
                out.push(tag::HSM_REQUEST);
                out.extend_from_slice(&action.to_le_bytes());
                out.extend_from_slice(&archive_id.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&uid.to_le_bytes());
                out.extend_from_slice(&gid.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                for (f, o, l) in items {
                    put_fid(out, f.0);
                    out.extend_from_slice(&o.to_le_bytes());
                    out.extend_from_slice(&l.to_le_bytes());
                }
                out.extend_from_slice(&dl.to_le_bytes());
                out.extend_from_slice(data);
            }
            other => serde_json::to_writer(out, other)?,
        }
        Ok(())
    }

    fn decode(body: &[u8]) -> Result<Self, RpcError> {
        if !is_binary(body) {
            return Ok(serde_json::from_slice(body)?);
        }
        let (t, rest) = (body[0], &body[1..]);
        let msg = match t {
            tag::COPY_START => "copy_start",
            tag::PROGRESS => "progress",
            tag::HSM_REQUEST => "hsm_request",
            _ => {
                return Err(RpcError::Malformed(format!("unknown request tag {t:#04x}")));
            }
        };
        let mut c = Cursor { buf: rest, msg };
        let req = match t {
            tag::COPY_START => {
                let fid = c.fid("fid")?;
                let cookie = c.u64("cookie")?;
                let offset = c.u64("offset")?;
                let bits = c.u8("bits")?;
                if bits & !3 != 0 {
                    return Err(RpcError::Malformed(format!(
                        "copy_start: field bits: unknown bits {bits:#04x}"
                    )));
                }
                Request::CopyStart {
                    fid,
                    cookie,
                    offset,
                    archive: bits & 1 != 0,
                    one_way: bits & 2 != 0,
                    stat_now: c.stat("stat_now")?,
                }
            }
            tag::PROGRESS => Request::Progress {
                fid: c.fid("fid")?,
                cookie: c.u64("cookie")?,
                offset: c.u64("offset")?,
                length: c.u64("length")?,
                flags: c.u32("flags")?,
                errval: c.u16("errval")?,
                start_data_version: c.opt("start_data_version")?,
                start_stamp: c.opt("start_stamp")?,
                stat_now: c.stat("stat_now")?,
            },
            _ => {
                let action = c.u32("action")?;
                let archive_id = c.u32("archive_id")?;
                let flags = c.u64("flags")?;
                let uid = c.u32("uid")?;
                let gid = c.u32("gid")?;
                let n = c.u32("items")? as usize;
                // Each item takes 32 bytes: a count the body cannot hold is rejected before
                // anything is allocated for it.
                if n > c.buf.len() / 32 {
                    return Err(RpcError::Malformed(format!(
                        "hsm_request: {n} items announced, the body holds at most {}",
                        c.buf.len() / 32
                    )));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push((
                        c.fid("items.fid")?,
                        c.u64("items.offset")?,
                        c.u64("items.length")?,
                    ));
                }
                let dl = c.u32("data length")? as usize;
                let data = c.take(dl, "data")?.to_vec();
                Request::HsmRequest {
                    action,
                    archive_id,
                    flags,
                    items,
                    data,
                    uid,
                    gid,
                }
            }
        };
        c.end()?;
        Ok(req)
    }
}

impl Request {
    /// False for a one-way message (no reply follows).
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Request::CopyStart { one_way: true, .. })
    }
}

impl Message for Response {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), RpcError> {
        match self {
            Response::Ok(Reply::Unit) => out.push(tag::OK_UNIT),
            Response::Ok(Reply::DataVersion { version }) => {
                out.push(tag::OK_DATA_VERSION);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Response::Err(e) => {
                out.push(tag::ERR);
                out.extend_from_slice(&e.to_le_bytes());
            }
            other => serde_json::to_writer(out, other)?,
        }
        Ok(())
    }

    fn decode(body: &[u8]) -> Result<Self, RpcError> {
        if !is_binary(body) {
            return Ok(serde_json::from_slice(body)?);
        }
        let (t, rest) = (body[0], &body[1..]);
        let mut c = Cursor {
            buf: rest,
            msg: "response",
        };
        let r = match t {
            tag::OK_UNIT => Response::Ok(Reply::Unit),
            tag::OK_DATA_VERSION => Response::Ok(Reply::DataVersion {
                version: c.u64("version")?,
            }),
            tag::ERR => Response::Err(c.u32("errno")? as i32),
            _ => {
                return Err(RpcError::Malformed(format!(
                    "unknown response tag {t:#04x}"
                )));
            }
        };
        c.end()?;
        Ok(r)
    }
}

/// Appends one frame (length prefix and body) to `out`.
pub fn encode_frame<T: Message>(out: &mut Vec<u8>, msg: &T) -> Result<(), RpcError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = msg.encode(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(RpcError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Writes one frame.
pub fn write_frame<T: Message>(w: &mut impl Write, msg: &T) -> Result<(), RpcError> {
    let mut buf = Vec::with_capacity(64);
    encode_frame(&mut buf, msg)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Decodes the first frame of `buf` if it is complete: `Ok(Some((message, frame length)))`,
/// `Ok(None)` when more bytes are needed.
pub fn decode_frame<T: Message>(buf: &[u8]) -> Result<Option<(T, usize)>, RpcError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(RpcError::TooLarge(len));
    }
    match buf.get(4..4 + len) {
        Some(body) => Ok(Some((T::decode(body)?, 4 + len))),
        None => Ok(None),
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream before any byte.
pub fn read_frame<T: Message>(r: &mut impl Read) -> Result<Option<T>, RpcError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(RpcError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(RpcError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RpcError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(Some(T::decode(&body)?))
}

/// Reads one frame from a buffered reader, decoding it in place when the whole frame is
/// already buffered (no allocation, and the frames a client queued are taken one by one
/// from one `read`); `Ok(None)` on a clean end of stream before any byte.
pub fn read_frame_buffered<T: Message>(r: &mut impl BufRead) -> Result<Option<T>, RpcError> {
    let buf = loop {
        match r.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    if buf.is_empty() {
        return Ok(None);
    }
    match decode_frame::<T>(buf) {
        Ok(Some((msg, n))) => {
            r.consume(n);
            Ok(Some(msg))
        }
        Ok(None) => read_frame(r),
        Err(e) => {
            // The bad frame is dropped; the caller closes the connection anyway.
            let n = buf.len();
            r.consume(n);
            Err(e)
        }
    }
}

/// A blocking client connection.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the daemon of the simulated mount `mount`.
    pub fn connect(mount: &Path) -> Result<Client, RpcError> {
        Ok(Client {
            stream: UnixStream::connect(socket_path(mount))?,
        })
    }

    /// Sends a request and waits for its reply; a daemon errno becomes [`RpcError::Errno`].
    /// A one-way request ([`Request::expects_reply`] false) returns `Unit` once sent.
    pub fn call(&mut self, req: &Request) -> Result<Reply, RpcError> {
        write_frame(&mut self.stream, req)?;
        if !req.expects_reply() {
            return Ok(Reply::Unit);
        }
        match read_frame::<Response>(&mut self.stream)? {
            None => Err(RpcError::Closed),
            Some(Response::Ok(r)) => Ok(r),
            Some(Response::Err(e)) => Err(RpcError::Errno(e)),
        }
    }

    /// Registers a copytool and returns the stream socket on which KUC messages arrive.
    pub fn register(mut self, uuid: &str, archives: &[u32]) -> Result<UnixStream, RpcError> {
        self.call(&Request::Register {
            uuid: uuid.to_owned(),
            archives: archives.to_vec(),
        })?;
        Ok(self.stream)
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let req = Request::HsmRequest {
            action: 10,
            archive_id: 1,
            flags: 0,
            items: vec![(Fid(LuFid::new(0x200000400, 1, 0)), 0, u64::MAX)],
            data: b"x".to_vec(),
            uid: 0,
            gid: 0,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: Request = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, req);
        // Messages off the action path stay JSON, FIDs as text.
        let mut json = Vec::new();
        let fid = Request::Fid2Path {
            fid: Fid(LuFid::new(0x200000400, 1, 0)),
        };
        write_frame(&mut json, &fid).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("[0x200000400:0x1:0x0]"));
        assert_eq!(read_frame::<Request>(&mut &json[..]).unwrap(), Some(fid));
        // Truncated frame, empty stream, oversized length, bad JSON.
        assert!(matches!(
            read_frame::<Request>(&mut &buf[..buf.len() - 1]),
            Err(RpcError::Closed)
        ));
        assert!(read_frame::<Request>(&mut &b""[..]).unwrap().is_none());
        let big = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            read_frame::<Request>(&mut &big[..]),
            Err(RpcError::TooLarge(_))
        ));
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        assert!(matches!(
            read_frame::<Request>(&mut &bad[..]),
            Err(RpcError::Json(_))
        ));
    }

    fn hot_requests() -> Vec<Request> {
        let fid = Fid(LuFid::new(0x2_0000_0401, 7, 3));
        vec![
            Request::CopyStart {
                fid,
                cookie: u64::MAX,
                offset: 4096,
                archive: true,
                one_way: false,
                stat_now: Some(FileStat {
                    mtime: 1_700_000_000,
                    mtime_nsec: 5,
                    size: u64::MAX,
                }),
            },
            Request::CopyStart {
                fid,
                cookie: 1,
                offset: 0,
                archive: false,
                one_way: true,
                stat_now: None,
            },
            Request::Progress {
                fid,
                cookie: 9,
                offset: 1,
                length: u64::MAX,
                flags: 1,
                errval: 125,
                start_data_version: Some(0),
                start_stamp: Some(u64::MAX),
                stat_now: Some(FileStat {
                    mtime: -1,
                    mtime_nsec: 999_999_999,
                    size: 7,
                }),
            },
            Request::Progress {
                fid,
                cookie: 9,
                offset: 0,
                length: 0,
                flags: 0,
                errval: 0,
                start_data_version: None,
                start_stamp: None,
                stat_now: None,
            },
            Request::HsmRequest {
                action: 10,
                archive_id: 3,
                flags: 1 << 40,
                items: vec![(fid, 0, u64::MAX), (Fid(LuFid::new(1, 2, 3)), 5, 6)],
                data: b"tag=x\0".to_vec(),
                uid: 1000,
                gid: 1001,
            },
            Request::HsmRequest {
                action: 1,
                archive_id: 0,
                flags: 0,
                items: Vec::new(),
                data: Vec::new(),
                uid: 0,
                gid: 0,
            },
        ]
    }

    fn hot_responses() -> Vec<Response> {
        vec![
            Response::Ok(Reply::Unit),
            Response::Ok(Reply::DataVersion { version: 42 }),
            Response::Err(libc::ECANCELED),
            Response::Err(-1),
        ]
    }

    #[test]
    fn action_messages_are_binary_and_round_trip() {
        for req in hot_requests() {
            let mut body = Vec::new();
            req.encode(&mut body).unwrap();
            assert!(is_binary(&body), "{req:?} not binary");
            assert_eq!(Request::decode(&body).unwrap(), req);
        }
        for resp in hot_responses() {
            let mut body = Vec::new();
            resp.encode(&mut body).unwrap();
            assert!(is_binary(&body), "{resp:?} not binary");
            assert_eq!(Response::decode(&body).unwrap(), resp);
        }
        // Other messages are JSON and still decode; an old-style JSON progress without the
        // new fields gets their defaults.
        let hello = Response::Ok(Reply::Hello {
            fsname: "lustre".into(),
            mdts: 2,
            pipelined: true,
        });
        let mut body = Vec::new();
        hello.encode(&mut body).unwrap();
        assert_eq!(body[0], b'{');
        assert_eq!(Response::decode(&body).unwrap(), hello);
        let old = br#"{"op":"progress","fid":"[0x200000400:0x1:0x0]","cookie":5,"offset":0,"length":0,"flags":1,"errval":0,"start_data_version":null}"#;
        assert!(matches!(
            Request::decode(old).unwrap(),
            Request::Progress {
                cookie: 5,
                start_stamp: None,
                ..
            }
        ));
        let old = br#"{"op":"copy_start","fid":"[0x200000400:0x1:0x0]","cookie":5,"offset":0,"archive":true}"#;
        assert!(matches!(
            Request::decode(old).unwrap(),
            Request::CopyStart {
                archive: true,
                one_way: false,
                ..
            }
        ));
        // One-way starts only.
        let one_way: Vec<bool> = hot_requests().iter().map(Request::expects_reply).collect();
        assert_eq!(one_way, [true, false, true, true, true, true]);
    }

    #[test]
    fn malformed_binary_bodies_are_errors_naming_the_field() {
        let malformed = |r: Result<Request, RpcError>| match r {
            Err(RpcError::Malformed(m)) => m,
            other => panic!("expected a malformed-body error, got {other:?}"),
        };
        for req in hot_requests() {
            let mut body = Vec::new();
            req.encode(&mut body).unwrap();
            // Every truncation is an error (never a panic), naming a field.
            for cut in 1..body.len() {
                let m = malformed(Request::decode(&body[..cut]));
                assert!(
                    m.contains("truncated at field") || m.contains("items announced"),
                    "{m}"
                );
            }
            // Trailing garbage.
            body.push(0);
            let m = malformed(Request::decode(&body));
            assert!(m.contains("1 unexpected bytes"), "{m}");
        }
        let m = malformed(Request::decode(&[0x7f_u8 + 1, 0]));
        assert!(m.contains("unknown request tag 0x80"), "{m}");
        // Bad presence byte of stat_now, unknown CopyStart bits.
        let mut body = Vec::new();
        hot_requests()[3].encode(&mut body).unwrap();
        *body.last_mut().unwrap() = 2;
        let m = malformed(Request::decode(&body));
        assert!(
            m.contains("progress: field stat_now: presence byte 2"),
            "{m}"
        );
        let mut body = Vec::new();
        hot_requests()[1].encode(&mut body).unwrap();
        let bits = body.len() - 2;
        body[bits] = 4;
        let m = malformed(Request::decode(&body));
        assert!(m.contains("copy_start: field bits"), "{m}");
        // An item count the body cannot hold is refused before allocating.
        let mut body = vec![tag::HSM_REQUEST];
        body.extend_from_slice(&[0; 24]);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let m = malformed(Request::decode(&body));
        assert!(m.contains("4294967295 items announced"), "{m}");
        // Responses.
        assert!(matches!(
            Response::decode(&[tag::OK_DATA_VERSION, 1, 2]),
            Err(RpcError::Malformed(m)) if m.contains("response: truncated at field version")
        ));
        assert!(matches!(
            Response::decode(&[0x90]),
            Err(RpcError::Malformed(m)) if m.contains("unknown response tag 0x90")
        ));
        assert!(matches!(
            Response::decode(&[tag::OK_UNIT, 0]),
            Err(RpcError::Malformed(_))
        ));
        // JSON white space is not a binary tag.
        assert!(matches!(
            Request::decode(b" {\"op\":\"hello\"}"),
            Ok(Request::Hello)
        ));
    }

    #[test]
    fn buffered_reads_take_queued_frames_one_by_one() {
        let reqs = hot_requests();
        let mut buf = Vec::new();
        for r in &reqs {
            encode_frame(&mut buf, r).unwrap();
        }
        encode_frame(&mut buf, &Request::Hello).unwrap();
        let mut reader = io::BufReader::with_capacity(64, &buf[..]);
        for r in &reqs {
            assert_eq!(
                read_frame_buffered::<Request>(&mut reader)
                    .unwrap()
                    .as_ref(),
                Some(r)
            );
        }
        assert_eq!(
            read_frame_buffered::<Request>(&mut reader).unwrap(),
            Some(Request::Hello)
        );
        assert!(
            read_frame_buffered::<Request>(&mut reader)
                .unwrap()
                .is_none()
        );
        // decode_frame: incomplete frames ask for more bytes; a bad one is an error.
        let mut one = Vec::new();
        encode_frame(&mut one, &reqs[0]).unwrap();
        for cut in 0..one.len() {
            assert!(decode_frame::<Request>(&one[..cut]).unwrap().is_none());
        }
        let (r, n) = decode_frame::<Request>(&one).unwrap().unwrap();
        assert_eq!((r, n), (reqs[0].clone(), one.len()));
        let mut bad = 2u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&[tag::COPY_START, 0]);
        assert!(matches!(
            read_frame_buffered::<Request>(&mut io::BufReader::new(&bad[..])),
            Err(RpcError::Malformed(_))
        ));
    }

    #[test]
    fn kuc_headers() {
        let m = kuc_action_list(&[0u8; 112]);
        assert_eq!(&m[..8], &[0x1C, 0x19, 2, 0, 100, 0, 120, 0]);
        assert_eq!(kuc_shutdown(), [0x1C, 0x19, 1, 0, 1, 0, 8, 0]);
    }
}
