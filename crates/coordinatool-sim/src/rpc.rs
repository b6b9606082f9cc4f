//! The request/response protocol between the simulator daemon and its clients (the
//! `liblustreapi.so.1` stand-in, the `lfs`/`lctl` commands, tests).
//!
//! # Transport
//! A Unix stream socket at `<mount>/.lustre_sim/sock` ([`socket_path`]). Every message is a
//! frame: a little-endian `u32` length, then that many bytes of JSON ([`Request`] from the
//! client, [`Reply`] from the daemon). One request, one reply, in order, on any connection.
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

use std::io::{self, Read, Write};
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

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), RpcError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(RpcError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before any byte.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, RpcError> {
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
    Ok(Some(serde_json::from_slice(&body)?))
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
    pub fn call(&mut self, req: &Request) -> Result<Reply, RpcError> {
        write_frame(&mut self.stream, req)?;
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
        assert!(String::from_utf8_lossy(&buf).contains("[0x200000400:0x1:0x0]"));
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

    #[test]
    fn kuc_headers() {
        let m = kuc_action_list(&[0u8; 112]);
        assert_eq!(&m[..8], &[0x1C, 0x19, 2, 0, 100, 0, 120, 0]);
        assert_eq!(kuc_shutdown(), [0x1C, 0x19, 1, 0, 1, 0, 8, 0]);
    }
}
