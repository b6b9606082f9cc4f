//! File owners for fair share by `uid`, `gid` or `projid` (`fair_share_key`): Lustre's
//! action items carry only fids, so the owner is looked up when a request comes in
//! (`llapi_fid2path`, then `lstat`, and for the project id `FS_IOC_FSGETXATTR` on the file).
//!
//! Only done when the fair-share key needs it. It is one metadata round trip per new request,
//! inside the loop: a site that shares by owner trades some intake speed for it. Requests
//! whose file cannot be looked up (removed meanwhile, or a `remove` whose file is gone) get
//! no owner and share one bucket.

use crate::config::{FairShareKey, ServerConfig};
use coordinatool_lustre::{LuFid, Lustreapi};
use coordinatool_sched::Owner;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// Looks owners up on one mount.
pub(crate) struct OwnerLookup {
    api: &'static Lustreapi,
    mnt: PathBuf,
    projid: bool,
    failures: u64,
}

impl OwnerLookup {
    /// A lookup when `cfg`'s fair share needs owners, else `None`.
    pub(crate) fn for_config(cfg: &ServerConfig, api: &'static Lustreapi) -> Option<Self> {
        let projid = match cfg.sched.fair_share_key.as_ref()? {
            FairShareKey::Uid | FairShareKey::Gid => false,
            FairShareKey::ProjId => true,
            FairShareKey::ArchiveId | FairShareKey::DataTag(_) => return None,
        };
        Some(OwnerLookup {
            api,
            mnt: cfg.mount_point.clone(),
            projid,
            failures: 0,
        })
    }

    /// The owner of `fid`'s file, `None` when it cannot be found (logged, the first time and
    /// then every 1000th failure, so a flood of removes of deleted files does not flood the log).
    pub(crate) fn owner(&mut self, fid: &LuFid) -> Option<Owner> {
        match lookup(self.api, &self.mnt, fid, self.projid) {
            Ok(o) => Some(o),
            Err(e) => {
                self.failures += 1;
                if self.failures % 1000 == 1 {
                    warn!(%fid, failures = self.failures, "file owner for fair share: {e}");
                } else {
                    debug!(%fid, "file owner for fair share: {e}");
                }
                None
            }
        }
    }
}

fn lookup(api: &Lustreapi, mnt: &Path, fid: &LuFid, projid: bool) -> Result<Owner, String> {
    let rel = api.fid2path(mnt, fid).map_err(|e| e.to_string())?;
    let path = mnt.join(rel);
    let md = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut owner = Owner {
        uid: md.uid(),
        gid: md.gid(),
        projid: 0,
    };
    if projid && (md.is_file() || md.is_dir()) {
        owner.projid = project_id(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(owner)
}

/// The project id of `path` (`FS_IOC_FSGETXATTR`).
fn project_id(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let mut x = FsXattr::default();
    // SAFETY: the fd is open for the call's duration; `x` has the kernel's fsxattr layout
    // and size (28 bytes), which the request number encodes.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            FS_IOC_FSGETXATTR as _,
            &mut x as *mut FsXattr,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(x.projid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsxattr_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!((FS_IOC_FSGETXATTR >> 16) & 0x3fff, 28);
    }
}
