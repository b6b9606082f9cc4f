//! Sans-IO model of the MDT side of Lustre HSM: one coordinator per MDT ([`Mdt`]) and the
//! client-side routing over several MDTs ([`Cluster`]).
//!
//! Behaviour set: **Lustre 2.17+** (§14 of the reference): cookies are "largest cookie in the
//! llog + 1", starting from the epoch seconds of the coordinator start when the llog is
//! empty (so MDTs started together hand out the same cookies); an item the file no longer
//! allows is failed and the rest of its HAL is still sent (partial HAL); a CANCEL only marks
//! its target CANCELED when the target is active; no duplicate suppression at admission
//! (2.14+), except the restore layout lock which drops a second RESTORE of the same file.
//!
//! Time is an argument everywhere (`now`, epoch seconds, non-decreasing). Nothing here reads
//! a clock, a file or a socket; HALs for agents are pulled with [`Cluster::poll_dispatch`].
//!
//! Also modelled: CL_HSM changelog records per MDT ([`Mdt::changelog`], recorded while a
//! changelog user is registered), read-only exports ([`Cluster::request_from`], `EROFS`), the
//! 2.17+ `max_requests` RAM cap ([`Cluster::set_ram_bytes`]), a purge that waits for the
//! coordinator thread to be idle and can be interrupted ([`Mdt::purge_status`],
//! [`Mdt::interrupt_purge`]), and the fan-out of an admin REMOVE with archive id 0 of a file
//! that no longer exists.
//!
//! CL_HSM records (§3 flag layout, [`hsm_changelog_flags`]) are emitted, as the MDT does, at
//! every completion of an ARCHIVE/RESTORE/REMOVE that the copytool reports (event of the
//! action, its errval; ENOSYS logged as ECANCELED, a failed layout swap with the swap's error,
//! an errval above 126 as overflow and refused with EINVAL; dirty flag = the file's DIRTY
//! after the update), at a timeout (error ECANCELED), at a release (HE_RELEASE), at
//! `hsm_state_set` (HE_STATE) and when a write makes an archived file dirty (HE_STATE,
//! dirty). A canceled request is logged by its own completion (event of its action, error
//! ECANCELED): since 2.17 no in-memory request is a CANCEL, so HE_CANCEL is never produced.
//! Records of a file that no longer exists are not written.
//!
//! Simplifications, all documented on the items concerned: coordinator start and stop are
//! instantaneous (`init`/`stopping` are never observed); changelog records carry whole
//! seconds.

mod core;
mod errno;
pub mod listing;
pub mod tunables;
mod types;

use coordinatool_lustre::LuFid;

pub use self::core::{FID_SEQ_BASE, FID_SEQ_STRIDE, Mdt, fid_is_sane};
pub use errno::Errno;
pub use tunables::{ActionMask, HSM_PARAMS, ParamTree, Policy, Tunables};
pub use types::*;

/// Several MDTs of one filesystem, with the routing the client does (lmv): requests split per
/// owning MDT, progress routed by FID, registrations sent to every MDT.
#[derive(Debug)]
pub struct Cluster {
    fsname: String,
    mdts: Vec<Mdt>,
    ram_bytes: u64,
}

/// Bytes of RAM one unit of `max_requests` is charged in the 2.17+ cap (one page per
/// request: the reference gives only the "1/8 of RAM" ratio, the unit is this model's).
pub const RAM_CAP_BYTES_PER_REQUEST: u64 = 4096;

/// Total RAM of this machine (`sysinfo(2)`), `u64::MAX` if it cannot be read.
pub fn machine_ram_bytes() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `si` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(u64::from(si.mem_unit.max(1)))
}

/// Matches one lctl glob component (`*`, `?`) against a name component.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

fn param_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| glob(p.as_bytes(), n.as_bytes()))
}

impl Cluster {
    /// A filesystem `fsname` with `mdt_count` MDTs (at least one), coordinators stopped.
    pub fn new(fsname: &str, mdt_count: u32) -> Self {
        Cluster {
            fsname: fsname.to_owned(),
            mdts: (0..mdt_count.max(1)).map(|i| Mdt::new(fsname, i)).collect(),
            ram_bytes: machine_ram_bytes(),
        }
    }

    /// The RAM the `max_requests` cap is computed from (default: [`machine_ram_bytes`]).
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// Sets the RAM the `max_requests` cap is computed from (tests, smaller simulated
    /// servers). Values already set are kept even if now above the cap.
    pub fn set_ram_bytes(&mut self, bytes: u64) {
        self.ram_bytes = bytes;
    }

    /// The largest sum of `max_requests` over the MDTs that 2.17+ accepts: 1/8 of the RAM,
    /// counted in [`RAM_CAP_BYTES_PER_REQUEST`] units.
    pub fn max_requests_cap(&self) -> u64 {
        self.ram_bytes / RAM_CAP_BYTES_PER_REQUEST / 8
    }

    /// Index of the MDT named `name` (`<fsname>-MDT0000`).
    pub fn mdt_index(&self, name: &str) -> Option<u32> {
        self.mdts
            .iter()
            .position(|m| m.name() == name)
            .map(|i| i as u32)
    }

    /// True if some coordinator has a purge waiting for its thread.
    pub fn purge_waiting(&self) -> bool {
        self.mdts
            .iter()
            .any(|m| m.purge_status() == PurgeStatus::Waiting)
    }

    /// Like [`Cluster::new`], with every coordinator enabled at `now`.
    pub fn new_enabled(fsname: &str, mdt_count: u32, now: u64) -> Self {
        let mut c = Cluster::new(fsname, mdt_count);
        for m in &mut c.mdts {
            m.control(now, "enabled")
                .expect("enabling a stopped coordinator always succeeds");
        }
        c
    }

    /// Filesystem name.
    pub fn fsname(&self) -> &str {
        &self.fsname
    }

    /// The MDTs.
    pub fn mdts(&self) -> &[Mdt] {
        &self.mdts
    }

    /// One MDT, `None` if out of range.
    pub fn mdt(&self, index: u32) -> Option<&Mdt> {
        self.mdts.get(index as usize)
    }

    /// One MDT, mutable.
    pub fn mdt_mut(&mut self, index: u32) -> Option<&mut Mdt> {
        self.mdts.get_mut(index as usize)
    }

    /// Index of the MDT owning `fid`, from its sequence (the FLDB lookup).
    pub fn mdt_of(&self, fid: LuFid) -> u32 {
        let n = self.mdts.len() as u64;
        ((fid.seq >> 30).wrapping_sub(FID_SEQ_BASE >> 30) % n) as u32
    }

    fn owner(&mut self, fid: LuFid) -> &mut Mdt {
        let i = self.mdt_of(fid) as usize;
        &mut self.mdts[i]
    }

    /// Allocates a new FID on MDT `index` (modulo the MDT count).
    pub fn alloc_fid(&mut self, index: u32) -> LuFid {
        let n = self.mdts.len();
        self.mdts[index as usize % n].alloc_fid()
    }

    /// The HSM attributes of a file.
    pub fn file(&self, fid: LuFid) -> Option<&FileAttrs> {
        self.mdts[self.mdt_of(fid) as usize].file(fid)
    }

    /// Adds or replaces a file's attributes on its MDT.
    pub fn put_file(&mut self, fid: LuFid, attrs: FileAttrs) {
        self.owner(fid).put_file(fid, attrs);
    }

    /// See [`Mdt::file_modified`].
    pub fn file_modified(&mut self, fid: LuFid, data_version: u64) -> Result<(), Errno> {
        self.owner(fid).file_modified(fid, data_version)
    }

    /// See [`Mdt::unlink_file`].
    pub fn unlink_file(&mut self, now: u64, fid: LuFid) -> Result<(), Errno> {
        self.owner(fid).unlink_file(now, fid)
    }

    /// See [`Mdt::release`].
    pub fn release(&mut self, fid: LuFid, data_version: u64) -> Result<(), Errno> {
        self.owner(fid).release(fid, data_version)
    }

    /// See [`Mdt::state_set`].
    pub fn state_set(
        &mut self,
        caller: Caller,
        fid: LuFid,
        set: u64,
        clear: u64,
        archive_id: u32,
    ) -> Result<(), Errno> {
        self.owner(fid)
            .state_set(caller, fid, set, clear, archive_id)
    }

    /// See [`Mdt::current_action`].
    pub fn current_action(&self, fid: LuFid) -> Result<CurrentAction, Errno> {
        self.mdts[self.mdt_of(fid) as usize].current_action(fid)
    }

    /// Registers client mount `uuid` on every MDT, all or nothing: an MDT's `EEXIST` counts as
    /// success; any other error unregisters from the MDTs done so far and is returned.
    pub fn register(&mut self, uuid: &str, archives: &[u32]) -> Result<(), Errno> {
        for i in 0..self.mdts.len() {
            match self.mdts[i].register(uuid, archives) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    for m in &mut self.mdts[..i] {
                        let _ = m.unregister(uuid);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Unregisters client mount `uuid` from every MDT (errors ignored, as the client does).
    pub fn unregister(&mut self, uuid: &str) {
        for m in &mut self.mdts {
            let _ = m.unregister(uuid);
        }
    }

    /// `LL_IOC_HSM_REQUEST`: `E2BIG` when `hur_len() >= 1706` (llite's check), else the items
    /// go to their MDTs in order; the first error is returned after all MDTs were asked.
    pub fn request(&mut self, now: u64, caller: Caller, req: &UserRequest) -> Result<(), Errno> {
        self.request_from(now, caller, false, req)
    }

    /// [`Cluster::request`] from a client whose export is read-only: see
    /// [`Mdt::request_from`] (`EROFS` for everything but RESTORE).
    pub fn request_from(
        &mut self,
        now: u64,
        caller: Caller,
        read_only: bool,
        req: &UserRequest,
    ) -> Result<(), Errno> {
        if req.hur_len() >= USER_REQUEST_LIMIT {
            return Err(Errno::E2BIG);
        }
        if self.mdts.len() == 1 {
            return self.mdts[0].request_from(now, caller, read_only, req);
        }
        let mut per: Vec<Vec<(LuFid, HsmExtent)>> = vec![Vec::new(); self.mdts.len()];
        for &(fid, ext) in &req.items {
            per[self.mdt_of(fid) as usize].push((fid, ext));
        }
        let mut rc = Ok(());
        for (i, items) in per.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let sub = UserRequest {
                items,
                ..req.clone()
            };
            let r = self.mdts[i].request_from(now, caller, read_only, &sub);
            if rc.is_ok() {
                rc = r;
            }
        }
        rc
    }

    /// Progress/completion, routed to the MDT owning `p.fid`. See [`Mdt::progress_with`].
    pub fn progress_with<F>(&mut self, now: u64, p: &Progress, swap: F) -> Result<(), Errno>
    where
        F: FnOnce(LuFid, LuFid) -> Result<(), Errno>,
    {
        self.owner(p.fid).progress_with(now, p, swap)
    }

    /// Progress/completion with a layout swap that always succeeds.
    pub fn progress(&mut self, now: u64, p: &Progress) -> Result<(), Errno> {
        self.owner(p.fid).progress(now, p)
    }

    /// Runs every coordinator's wake-up. See [`Mdt::tick`].
    pub fn tick(&mut self, now: u64) {
        for m in &mut self.mdts {
            m.tick(now);
        }
    }

    /// True if some coordinator wants an early scan.
    pub fn wants_scan(&self) -> bool {
        self.mdts.iter().any(Mdt::wants_scan)
    }

    /// The next HAL to deliver, from any MDT.
    pub fn poll_dispatch(&mut self) -> Option<Dispatch> {
        self.mdts.iter_mut().find_map(Mdt::poll_dispatch)
    }

    /// See [`Mdt::send_failed`].
    pub fn send_failed(&mut self, now: u64, d: &Dispatch, err: Errno) {
        if let Some(m) = self.mdts.get_mut(d.mdt as usize) {
            m.send_failed(now, d, err);
        }
    }

    /// Every parameter name this filesystem exposes, in the order `lctl` lists them:
    /// sysfs entries sorted by path, then debugfs entries sorted by path.
    pub fn param_names(&self) -> Vec<String> {
        let mut sys = Vec::new();
        let mut dbg = Vec::new();
        for m in &self.mdts {
            for (p, tree, _) in HSM_PARAMS {
                let name = format!("mdt.{}.hsm.{p}", m.name());
                match tree {
                    ParamTree::Sysfs => sys.push(name),
                    ParamTree::Debugfs => dbg.push(name),
                }
            }
            sys.push(format!("mdt.{}.hsm_control", m.name()));
        }
        let key = |s: &String| s.replace('.', "/");
        sys.sort_by_key(key);
        dbg.sort_by_key(key);
        sys.extend(dbg);
        sys
    }

    fn split_name<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        let rest = name.strip_prefix("mdt.")?;
        let (mdt, param) = rest.split_once('.')?;
        let i = self.mdts.iter().position(|m| m.name() == mdt)?;
        Some((i, param))
    }

    /// The text of one exact parameter (`mdt.<mdt>.hsm.<name>` or `mdt.<mdt>.hsm_control`).
    pub fn read_param(&self, name: &str) -> Option<String> {
        let (i, param) = self.split_name(name)?;
        let m = &self.mdts[i];
        if param == "hsm_control" {
            return Some(format!("{}\n", m.state().name()));
        }
        let p = param.strip_prefix("hsm.")?;
        if let Some(v) = m.tunables().get(p) {
            return Some(v);
        }
        let mut out = String::new();
        match p {
            "archive_count" => out = format!("{}\n", m.action_counts()[0]),
            "restore_count" => out = format!("{}\n", m.action_counts()[1]),
            "remove_count" => out = format!("{}\n", m.action_counts()[2]),
            "actions" => m.records().for_each(|r| listing::action_line(&mut out, r)),
            "active_requests" => m
                .active_requests()
                .iter()
                .for_each(|a| listing::active_line(&mut out, a)),
            "agents" => m
                .agents()
                .iter()
                .for_each(|a| listing::agent_line(&mut out, a)),
            _ => return None,
        }
        Some(out)
    }

    /// `lctl get_param [-n] PATTERN`: every matching parameter framed as lctl prints it.
    /// `ENOENT` when nothing matches.
    pub fn get_param(&self, pattern: &str, show_name: bool) -> Result<String, Errno> {
        let mut out = String::new();
        let mut any = false;
        for name in self.param_names() {
            if param_matches(pattern, &name)
                && let Some(v) = self.read_param(&name)
            {
                any = true;
                listing::lctl_format(&mut out, &name, &v, show_name);
            }
        }
        if any { Ok(out) } else { Err(Errno::ENOENT) }
    }

    /// The parameter names `pattern` matches, in `lctl` order.
    pub fn matching_params(&self, pattern: &str) -> Vec<String> {
        self.param_names()
            .into_iter()
            .filter(|n| param_matches(pattern, n))
            .collect()
    }

    /// `lctl set_param PATTERN=VALUE`: writes every matching parameter, returning each name
    /// with its result (`ENOENT` alone when nothing matches). Read-only parameters are
    /// `EACCES`; `max_requests` beyond the RAM cap is `ENOMEM`. A `hsm_control=purge` that
    /// must wait for a busy coordinator reports `Ok` while still
    /// [`PurgeStatus::Waiting`]: the real writer blocks until the next tick (the daemon waits
    /// for it, and turns a writer that goes away into `EINTR` with [`Mdt::interrupt_purge`]).
    pub fn set_param(
        &mut self,
        now: u64,
        pattern: &str,
        value: &str,
    ) -> Vec<(String, Result<(), Errno>)> {
        let names: Vec<String> = self
            .param_names()
            .into_iter()
            .filter(|n| param_matches(pattern, n))
            .collect();
        if names.is_empty() {
            return vec![(pattern.to_owned(), Err(Errno::ENOENT))];
        }
        names
            .into_iter()
            .map(|name| {
                let r = self.write_param(now, &name, value);
                (name, r)
            })
            .collect()
    }

    fn write_param(&mut self, now: u64, name: &str, value: &str) -> Result<(), Errno> {
        let (i, param) = self.split_name(name).ok_or(Errno::ENOENT)?;
        let m = &mut self.mdts[i];
        if param == "hsm_control" {
            return m.control(now, value);
        }
        let p = param.strip_prefix("hsm.").ok_or(Errno::ENOENT)?;
        if p == "max_requests" {
            // 2.17+: the sum over the MDTs may not exceed 1/8 of the RAM.
            let mut t = m.tunables().clone();
            t.set(p, value)?;
            let others: u64 = self
                .mdts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| o.tunables().max_requests)
                .fold(0, u64::saturating_add);
            if others.saturating_add(t.max_requests) > self.max_requests_cap() {
                return Err(Errno::ENOMEM);
            }
            self.mdts[i].tunables_mut().max_requests = t.max_requests;
            return Ok(());
        }
        if m.tunables_mut().set(p, value)? {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

#[cfg(test)]
mod tests;
