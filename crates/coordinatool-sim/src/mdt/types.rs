//! Plain data exchanged with the MDT model.

use std::sync::Arc;

use coordinatool_lustre::{HsmProgressFlags, HsmStates, HsmUserAction, LuFid};

pub use coordinatool_lustre::active_requests::AgentReqStatus;
pub use coordinatool_lustre::hal::{HsmActionItem, HsmActionList, HsmExtent};

/// Size of the fixed part of a `hsm_action_item`.
pub use coordinatool_lustre::hal::HAI_FIXED_LEN;
/// Size of the `hsm_action_list` header before the fsname.
pub use coordinatool_lustre::hal::HAL_HEADER_LEN;
/// `LDLM_MAXREQSIZE`: the largest HAL the coordinator builds.
pub const HAL_MAX_SIZE: usize = coordinatool_lustre::hal::LDLM_MAXREQSIZE;
/// `MDS_MAXREQSIZE / 3`: llite refuses user requests at least this long (`E2BIG`).
pub const USER_REQUEST_LIMIT: usize = coordinatool_lustre::hal::HUR_MAX_LEN;

pub(crate) use coordinatool_lustre::hal::align8;

/// Inclusive last byte of an extent, `None` for an empty extent or one whose end overflows.
pub fn last_byte(e: HsmExtent) -> Option<u64> {
    if e.length == 0 {
        return None;
    }
    e.offset.checked_add(e.length - 1)
}

/// Size of a HAL for `fsname` whose items have the given data lengths (`hal_size()`).
pub fn hal_size_for(fsname: &str, data_lens: impl IntoIterator<Item = usize>) -> usize {
    coordinatool_lustre::hal::hal_size(
        fsname.len(),
        data_lens.into_iter().map(|d| HAI_FIXED_LEN + d),
    )
}

/// Position of a record in the `hsm_actions` catalog: plain log index / record index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LlogIndex {
    /// Catalog index of the plain llog (starts at 1).
    pub catalog: u32,
    /// Record index in that plain llog (starts at 1).
    pub index: u32,
}

/// Records per plain llog before the catalog index advances (8 KiB header bitmap).
pub const LLOG_RECORDS_PER_PLAIN: u32 = 64767;
/// `HSM_AGENT_REC` llog record type.
pub const HSM_AGENT_REC: u32 = 0x1068_0000;

/// One request in an MDT's `hsm_actions` log (`struct llog_agent_req_rec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it sits in the catalog.
    pub llog: LlogIndex,
    /// Current status.
    pub status: AgentReqStatus,
    /// Archive id.
    pub archive_id: u32,
    /// Request flags (`hr_flags`).
    pub flags: u64,
    /// Creation time (epoch seconds).
    pub create: u64,
    /// Time of the last status change or touch (epoch seconds).
    pub change: u64,
    /// The action item.
    pub item: HsmActionItem,
}

impl Record {
    /// `lrh_len`: 136 bytes plus data, rounded up to 8.
    pub fn lrh_len(&self) -> u32 {
        align8(136 + self.item.data.len()) as u32
    }
}

/// Who issues a request: uid 0 is the administrator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Caller {
    /// The administrator.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    /// True for uid 0 (CAP_SYS_ADMIN).
    pub const fn is_admin(self) -> bool {
        self.uid == 0
    }
}

/// A user request (`struct hsm_user_request`), as `lfs hsm_*` sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRequest {
    /// Requested action.
    pub action: HsmUserAction,
    /// Archive id (ARCHIVE/REMOVE; 0 = file's or default).
    pub archive_id: u32,
    /// `hr_flags` (`HSM_FORCE_ACTION`, ...).
    pub flags: u64,
    /// Files and ranges.
    pub items: Vec<(LuFid, HsmExtent)>,
    /// Opaque data copied into every item.
    pub data: Vec<u8>,
}

impl UserRequest {
    /// A request for whole files without data.
    pub fn whole_files(action: HsmUserAction, archive_id: u32, fids: &[LuFid]) -> Self {
        UserRequest {
            action,
            archive_id,
            flags: 0,
            items: fids.iter().map(|f| (*f, HsmExtent::WHOLE_FILE)).collect(),
            data: Vec::new(),
        }
    }

    /// `hur_len()`: 24 + 32 per item + data.
    pub fn hur_len(&self) -> usize {
        24 + 32 * self.items.len() + self.data.len()
    }
}

/// A HAL the coordinator sends to an agent (client mount UUID).
///
/// The daemon writes it, behind a `kuc_hdr`, into every copytool pipe registered on that mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// Index of the sending MDT.
    pub mdt: u32,
    /// Client mount UUID of the chosen agent.
    pub agent: Arc<str>,
    /// `hal_archive_id`.
    pub archive_id: u32,
    /// `hal_flags`.
    pub flags: u64,
    /// `hal_fsname`.
    pub fsname: Arc<str>,
    /// The items, in log order.
    pub items: Vec<HsmActionItem>,
}

impl Dispatch {
    /// `hal_size()` of this HAL once encoded.
    pub fn hal_size(&self) -> usize {
        hal_size_for(&self.fsname, self.items.iter().map(|i| i.data.len()))
    }

    /// The HAL as [`HsmActionList`] (encode it with `encode()`).
    pub fn to_hal(&self) -> HsmActionList {
        HsmActionList {
            items: self.items.clone(),
            ..HsmActionList::new(&*self.fsname, self.archive_id, self.flags)
        }
    }
}

/// A progress or completion report (`struct hsm_progress_kernel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// `hpk_fid`: the file or, for a restore, the volatile.
    pub fid: LuFid,
    /// The request's cookie.
    pub cookie: u64,
    /// Range just processed.
    pub extent: HsmExtent,
    /// `HP_FLAG_COMPLETED`, `HP_FLAG_RETRY`.
    pub flags: HsmProgressFlags,
    /// Positive errno, 0 for success.
    pub errval: u16,
    /// Data version read at COPY_END (archive/restore), if any.
    pub data_version: Option<u64>,
}

/// HSM attributes of a file as the MDT keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileAttrs {
    /// `HS_*` flags.
    pub states: HsmStates,
    /// Archive id (0 = none yet).
    pub archive_id: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Current data version.
    pub data_version: u64,
    /// Data version of the archived copy.
    pub archive_version: u64,
}

/// Coordinator state (`hsm_control`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdtState {
    /// `CDT_STOPPED` "stopped".
    Stopped,
    /// `CDT_INIT` "init".
    Init,
    /// `CDT_RUNNING` "enabled".
    Running,
    /// `CDT_DISABLE` "disabled".
    Disable,
    /// `CDT_STOPPING` "stopping".
    Stopping,
}

impl CdtState {
    /// The text `hsm_control` reads back.
    pub const fn name(self) -> &'static str {
        match self {
            CdtState::Stopped => "stopped",
            CdtState::Init => "init",
            CdtState::Running => "enabled",
            CdtState::Disable => "disabled",
            CdtState::Stopping => "stopping",
        }
    }
}

/// A registered agent (one per client mount UUID) as listed by `hsm.agents`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// Client mount UUID.
    pub uuid: Arc<str>,
    /// Archive ids served; empty = ANY.
    pub archives: Vec<u32>,
    /// Active items.
    pub current: u64,
    /// Completed successes.
    pub ok: u64,
    /// Completed failures and timeouts.
    pub errors: u64,
}

impl AgentInfo {
    /// True if this agent serves `archive_id`.
    pub fn serves(&self, archive_id: u32) -> bool {
        self.archives.is_empty() || self.archives.contains(&archive_id)
    }
}

/// An in-memory (dispatched, unfinished) request as listed by `hsm.active_requests`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveInfo {
    /// The item (dfid updated by restore progress).
    pub item: HsmActionItem,
    /// Archive id.
    pub archive_id: u32,
    /// Request flags.
    pub flags: u64,
    /// A cancel was dispatched for it.
    pub canceled: bool,
    /// Agent it was sent to.
    pub agent: Arc<str>,
    /// Bytes covered by progress extents.
    pub done: u64,
    /// Time of the last progress (or dispatch).
    pub last_progress: u64,
}

/// Progress state of a file's current action (`enum hsm_progress_states`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// `HPS_NONE`.
    None = 0,
    /// `HPS_WAITING`.
    Waiting = 1,
    /// `HPS_RUNNING`.
    Running = 2,
    /// `HPS_DONE`.
    Done = 3,
}

impl ProgressState {
    /// Name printed by `lfs hsm_action`.
    pub const fn name(self) -> &'static str {
        match self {
            ProgressState::Waiting => "waiting",
            ProgressState::Running => "running",
            ProgressState::Done => "done",
            ProgressState::None => "unknown",
        }
    }
}

/// A file's current HSM action (`struct hsm_current_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentAction {
    /// Waiting / running / none.
    pub state: ProgressState,
    /// The action (`HUA_NONE` when idle).
    pub action: HsmUserAction,
    /// Requested range (waiting) or offset + bytes moved (running).
    pub location: HsmExtent,
}

/// `CL_HSM`: the changelog record type of HSM events.
pub const CL_HSM: u32 = 16;
/// `CLF_HSM_MAXERROR`: the largest error a CL_HSM record carries as is.
pub const CLF_HSM_MAXERROR: u16 = 0x7E;
/// `CLF_HSM_ERROVERFLOW`: the error field of a record whose error did not fit.
pub const CLF_HSM_ERROVERFLOW: u16 = 0x7F;
/// `CLF_HSM_DIRTY`: flag of a CL_HSM record whose file is dirty (bit 10 of the flags).
pub const CLF_HSM_DIRTY: u16 = 1;

/// `enum hsm_event`: what a CL_HSM changelog record reports (3 bits of its flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmEvent {
    /// `HE_ARCHIVE`: an archive finished (error 0) or failed.
    Archive = 0,
    /// `HE_RESTORE`: a restore finished or failed.
    Restore = 1,
    /// `HE_CANCEL`.
    Cancel = 2,
    /// `HE_RELEASE`: the file was released.
    Release = 3,
    /// `HE_REMOVE`: an archive copy was removed.
    Remove = 4,
    /// `HE_STATE`: the HSM flags were changed (`lfs hsm_set/clear`, a write making it dirty).
    State = 5,
}

impl HsmEvent {
    /// The event encoded in a record's flags, `None` for the two unused values.
    pub const fn from_code(code: u16) -> Option<HsmEvent> {
        Some(match code {
            0 => HsmEvent::Archive,
            1 => HsmEvent::Restore,
            2 => HsmEvent::Cancel,
            3 => HsmEvent::Release,
            4 => HsmEvent::Remove,
            5 => HsmEvent::State,
            _ => return None,
        })
    }
}

/// The flags word of a CL_HSM record: bits 0-6 the error (positive errno, `0x7F` when it
/// exceeds [`CLF_HSM_MAXERROR`]), bits 7-9 the event, bits 10-11 the flags ([`CLF_HSM_DIRTY`]).
pub fn hsm_changelog_flags(event: HsmEvent, error: u32, dirty: bool) -> u16 {
    let err = if error > u32::from(CLF_HSM_MAXERROR) {
        CLF_HSM_ERROVERFLOW
    } else {
        error as u16
    };
    let flags = if dirty { CLF_HSM_DIRTY } else { 0 };
    err | ((event as u16) << 7) | (flags << 10)
}

/// One changelog record of an MDT (the simulator only produces `CL_HSM` records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// Record number (`cr_index`), from 1, increasing per MDT.
    pub index: u64,
    /// Record type (`cr_type`), [`CL_HSM`].
    pub kind: u32,
    /// Time of the event (epoch seconds; the simulator has no finer clock).
    pub time: u64,
    /// `cr_flags`, see [`hsm_changelog_flags`].
    pub flags: u16,
    /// The file (`cr_tfid`).
    pub tfid: LuFid,
}

impl ChangelogRecord {
    /// The HSM event of a CL_HSM record.
    pub fn event(&self) -> Option<HsmEvent> {
        HsmEvent::from_code((self.flags >> 7) & 0x7)
    }

    /// The error of a CL_HSM record (positive errno, `0x7F` = overflow).
    pub fn error(&self) -> u16 {
        self.flags & 0x7F
    }

    /// True if the record carries [`CLF_HSM_DIRTY`].
    pub fn dirty(&self) -> bool {
        (self.flags >> 10) & CLF_HSM_DIRTY != 0
    }
}

/// A changelog consumer registered on an MDT (`lctl changelog_register`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangelogUser {
    /// The `N` of `clN`.
    pub id: u32,
    /// Last record number this user cleared (0 = none).
    pub cleared: u64,
}

/// What a `hsm_control=purge` write is doing ([`crate::mdt::Mdt::purge_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeStatus {
    /// No purge waiting.
    Idle,
    /// The coordinator was disabled and the purge waits for its thread to be idle; the
    /// writer blocks until the next [`crate::mdt::Mdt::tick`] (or is interrupted).
    Waiting,
}
