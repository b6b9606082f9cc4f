//! Copytool registration and reception (`llapi_hsm_copytool_*`).
//!
//! The "pipe" of a registration is the daemon connection that became a copytool stream (see
//! `coordinatool_sim::rpc`): the daemon writes KUC messages into it exactly as the kernel
//! writes into the copytool's pipe, so `get_fd`, `poll` and `O_NONBLOCK` behave the same.

use std::os::fd::IntoRawFd;
use std::os::raw::{c_char, c_int};
use std::path::PathBuf;
use std::ptr;

use coordinatool_lustre::ffi::bindings::{
    CT_PRIV_MAGIC, HAL_MAXSIZE, KUC_GRP_HSM, KUC_MAGIC, KUC_MSG_SHUTDOWN, KUC_TRANSPORT_GENERIC,
    KUC_TRANSPORT_HSM, LK_FLG_DATANR, LK_NOFD, hsm_action_list, hsm_copytool_private,
    hsm_copytool_private_layout, kuc_hdr, lustre_kernelcomm,
};
use coordinatool_sim::rpc::{HMT_ACTION_LIST, Request};

use crate::events;
use crate::util::{self, MSG_DEBUG, MSG_ERROR, errno};

/// Size of the receive buffer: one HAL of `HAL_MAXSIZE` plus its `kuc_hdr`.
const KUCH_SIZE: usize = HAL_MAXSIZE as usize + 8;
/// `hsm_action_list` header size (a message shorter than header + this is `EPROTO`).
const HAL_HEADER: usize = 32;

/// The copytool handle. Its first fields have the layout of the real library's
/// `struct hsm_copytool_private` (§2.11), because some callers (preload libraries) build a
/// handle of that layout themselves and hand it to the action functions, which therefore
/// only use `mnt`, `mnt_fd` and `open_by_fid_fd` and never check the magic.
#[repr(C)]
pub(crate) struct CtPriv {
    pub(crate) layout: hsm_copytool_private_layout,
    /// Mount path as given to register.
    mount: PathBuf,
    /// Client mount UUID (agent identity on the MDTs).
    uuid: String,
    /// Archive ids this copytool serves; empty = any.
    archives: Vec<u32>,
    /// Allocation behind `layout.kuc` (`lustre_kernelcomm` + ids).
    kuc: Vec<u32>,
    /// Allocation behind `layout.kuch`.
    buf: Box<[u64]>,
}

/// The registration behind `ct`, if `ct` is a live handle of this library (magic checked).
///
/// # Safety
/// `ct` is NULL or points to at least the 40 readable bytes of a copytool handle.
unsafe fn checked<'a>(ct: *mut hsm_copytool_private) -> Option<&'a mut CtPriv> {
    if ct.is_null() {
        return None;
    }
    let p = ct.cast::<CtPriv>();
    // SAFETY: caller's contract: the magic is the first int of any handle.
    let magic = unsafe { ptr::addr_of!((*p).layout.magic).read() };
    if magic as u32 != CT_PRIV_MAGIC {
        return None;
    }
    // SAFETY: the magic says it is one of ours, allocated by register.
    Some(unsafe { &mut *p })
}

fn open_dir(path: &std::path::Path) -> Result<c_int, i32> {
    let c = util::path_cstring(path);
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn close(fd: c_int) {
    if fd >= 0 {
        // SAFETY: closing an fd this library owns.
        unsafe { libc::close(fd) };
    }
}

pub(crate) unsafe fn register(
    priv_: *mut *mut hsm_copytool_private,
    mnt: *const c_char,
    archive_count: c_int,
    archives: *mut c_int,
    rfd_flags: c_int,
) -> c_int {
    if priv_.is_null() || archive_count < 0 || (archive_count > 0 && archives.is_null()) {
        return -libc::EINVAL;
    }
    // SAFETY: NULL or a C string, per the API.
    let Some(mount) = (unsafe { util::c_path(mnt) }) else {
        return -libc::EINVAL;
    };
    let mut ids = Vec::with_capacity(archive_count as usize);
    for i in 0..archive_count as usize {
        // SAFETY: the caller passes archive_count ints.
        let id = unsafe { archives.add(i).read() };
        if id < 0 {
            return -libc::EINVAL;
        }
        ids.push(id as u32);
    }
    if ids.contains(&0) {
        // Archive id 0 anywhere means "every archive".
        ids.clear();
    }
    let mnt_fd = match open_dir(&mount) {
        Ok(fd) => fd,
        Err(e) => return -e,
    };
    let fid_dir = util::path_cstring(std::path::Path::new(".lustre/fid"));
    // SAFETY: a directory fd and a NUL-terminated relative path.
    let fid_fd = unsafe { libc::openat(mnt_fd, fid_dir.as_ptr(), libc::O_RDONLY) };
    if fid_fd < 0 {
        // Not a (simulated) Lustre mount root.
        let e = errno();
        close(mnt_fd);
        return -e;
    }
    let fail = |e: i32| {
        close(fid_fd);
        close(mnt_fd);
        -e
    };
    let uuid = util::client_uuid(&mount);
    let stream = match util::connect(&mount) {
        Ok(s) => s,
        Err(e) => {
            util::log(MSG_ERROR, e, "cannot start copytool interface");
            return fail(e);
        }
    };
    if let Err(e) = util::call_on(
        &stream,
        &Request::Register {
            uuid: uuid.clone(),
            archives: ids.clone(),
        },
    ) {
        util::log(MSG_ERROR, e, "cannot start copytool interface");
        return fail(e);
    }
    util::remember_mount(&mount);
    let rfd = stream.into_raw_fd();
    // SAFETY: fcntl on the fd just obtained; the flags are the caller's (0 or O_NONBLOCK).
    if unsafe { libc::fcntl(rfd, libc::F_SETFL, rfd_flags) } < 0 {
        let e = errno();
        close(rfd);
        return fail(e);
    }
    let mut kuc = vec![
        LK_NOFD,
        rfd as u32,
        // SAFETY: getpid cannot fail.
        unsafe { libc::getpid() } as u32,
        KUC_GRP_HSM,
        ids.len() as u32,
        LK_FLG_DATANR,
    ];
    kuc.extend_from_slice(&ids);
    let mut buf = vec![0u64; KUCH_SIZE / 8].into_boxed_slice();
    let mnt_c = util::path_cstring(&mount).into_raw();
    let mut ct = Box::new(CtPriv {
        layout: hsm_copytool_private_layout {
            magic: CT_PRIV_MAGIC as c_int,
            mnt: mnt_c,
            kuch: buf.as_mut_ptr().cast::<kuc_hdr>(),
            mnt_fd,
            open_by_fid_fd: fid_fd,
            kuc: kuc.as_mut_ptr().cast::<lustre_kernelcomm>(),
        },
        mount,
        uuid,
        archives: ids,
        kuc,
        buf,
    });
    // The Vec and Box moved into the handle keep their heap buffers: pointers stay valid.
    ct.layout.kuch = ct.buf.as_mut_ptr().cast::<kuc_hdr>();
    ct.layout.kuc = ct.kuc.as_mut_ptr().cast::<lustre_kernelcomm>();
    util::log(
        MSG_DEBUG,
        0,
        &format!(
            "copytool registered on {} as {} (archives {:?})",
            ct.mount.display(),
            ct.uuid,
            ct.archives
        ),
    );
    events::register(&ct.mount, &ct.archives, &ct.uuid);
    // SAFETY: valid out-pointer (checked non-NULL).
    unsafe { *priv_ = Box::into_raw(ct).cast::<hsm_copytool_private>() };
    0
}

/// The stream fd of a registration (lk_rfd).
fn stream_fd(ct: &CtPriv) -> c_int {
    ct.kuc[1] as c_int
}

pub(crate) unsafe fn unregister(priv_: *mut *mut hsm_copytool_private) -> c_int {
    if priv_.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: valid pointer to a handle pointer.
    let raw = unsafe { *priv_ };
    // SAFETY: NULL or a handle, per the API.
    let Some(ct) = (unsafe { checked(raw) }) else {
        return -libc::EINVAL;
    };
    // Close the stream first, as the real library closes the pipe before the ioctl.
    close(stream_fd(ct));
    let _ = util::call(
        &ct.mount,
        &Request::Unregister {
            uuid: ct.uuid.clone(),
        },
    );
    events::unregister(&ct.mount, &ct.uuid);
    close(ct.layout.open_by_fid_fd);
    close(ct.layout.mnt_fd);
    ct.layout.magic = 0;
    // SAFETY: allocated by Box::into_raw in register, magic checked, freed once (magic 0).
    let ct = unsafe { Box::from_raw(raw.cast::<CtPriv>()) };
    // SAFETY: allocated by CString::into_raw in register.
    drop(unsafe { std::ffi::CString::from_raw(ct.layout.mnt) });
    drop(ct);
    // SAFETY: valid out-pointer.
    unsafe { *priv_ = ptr::null_mut() };
    0
}

pub(crate) unsafe fn get_fd(ct: *mut hsm_copytool_private) -> c_int {
    // SAFETY: NULL or a handle, per the API.
    match unsafe { checked(ct) } {
        Some(ct) => stream_fd(ct),
        None => -libc::EINVAL,
    }
}

/// Reads the first bytes of a message: `Ok(false)` on EOF before any byte.
fn read_header(fd: c_int, hdr: &mut [u8]) -> Result<bool, i32> {
    // SAFETY: reading into `hdr`.
    let n = unsafe { libc::read(fd, hdr.as_mut_ptr().cast(), hdr.len()) };
    if n == 0 {
        return Ok(false);
    }
    if n < 0 {
        // EAGAIN (non-blocking, nothing queued) and EINTR (a signal, as with the single
        // read() of Lustre 2.12-2.17) are returned to the caller.
        return Err(errno());
    }
    // Once a message has started, it is read to its end.
    util::read_full(fd, &mut hdr[n as usize..])?;
    Ok(true)
}

pub(crate) unsafe fn recv(
    ct: *mut hsm_copytool_private,
    halh: *mut *mut hsm_action_list,
    msgsize: *mut c_int,
) -> c_int {
    if halh.is_null() || msgsize.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: valid out-pointers (checked non-NULL).
    unsafe {
        *halh = ptr::null_mut();
        *msgsize = 0;
    }
    // SAFETY: NULL or a handle, per the API.
    let Some(ct) = (unsafe { checked(ct) }) else {
        return -libc::EINVAL;
    };
    let fd = stream_fd(ct);
    let buf: &mut [u8] = {
        let len = ct.buf.len() * 8;
        // SAFETY: the u64 buffer seen as bytes (alignment only grows).
        unsafe { std::slice::from_raw_parts_mut(ct.buf.as_mut_ptr().cast::<u8>(), len) }
    };
    loop {
        buf[..8].fill(0);
        match read_header(fd, &mut buf[..8]) {
            Ok(true) => {}
            // The daemon closed the stream: the filesystem went away (an unmount sends
            // KUC_MSG_SHUTDOWN first; a vanished daemon is reported the same way).
            Ok(false) => return -libc::ESHUTDOWN,
            Err(e) => return -e,
        }
        let magic = u16::from_le_bytes([buf[0], buf[1]]);
        let transport = buf[2];
        let msgtype = u16::from_le_bytes([buf[4], buf[5]]);
        let msglen = u16::from_le_bytes([buf[6], buf[7]]) as usize;
        if magic != KUC_MAGIC as u16 || msglen < 8 {
            return -libc::EPROTO;
        }
        if msglen > buf.len() {
            return -libc::EMSGSIZE;
        }
        if let Err(e) = util::read_full(fd, &mut buf[8..msglen]) {
            return -e;
        }
        if transport != KUC_TRANSPORT_HSM as u8 && transport != KUC_TRANSPORT_GENERIC as u8 {
            // Messages of other transports are skipped by the KUC reader.
            continue;
        }
        if transport == KUC_TRANSPORT_GENERIC as u8 && msgtype == KUC_MSG_SHUTDOWN as u16 {
            return -libc::ESHUTDOWN;
        }
        if transport != KUC_TRANSPORT_HSM as u8 || msgtype != HMT_ACTION_LIST {
            return -libc::EPROTO;
        }
        if msglen < 8 + HAL_HEADER {
            return -libc::EPROTO;
        }
        let archive_id = u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]);
        if !ct.archives.is_empty() && !ct.archives.contains(&archive_id) {
            // Not for this copytool: the client-side filter drops it silently.
            continue;
        }
        // SAFETY: valid out-pointers; the HAL stays in the handle's buffer until the next
        // recv.
        unsafe {
            *halh = buf[8..].as_mut_ptr().cast::<hsm_action_list>();
            *msgsize = (msglen - 8) as c_int;
        }
        return 0;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A registration whose stream is one end of a socket pair (no daemon involved).
    fn handle(archives: &[u32], nonblock: bool) -> (Box<CtPriv>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(nonblock).unwrap();
        let rfd = ours.into_raw_fd();
        let mut buf = vec![0u64; KUCH_SIZE / 8].into_boxed_slice();
        let mut kuc = vec![LK_NOFD, rfd as u32, 0, KUC_GRP_HSM, 0, LK_FLG_DATANR];
        let ct = Box::new(CtPriv {
            layout: hsm_copytool_private_layout {
                magic: CT_PRIV_MAGIC as c_int,
                mnt: ptr::null_mut(),
                kuch: buf.as_mut_ptr().cast(),
                mnt_fd: -1,
                open_by_fid_fd: -1,
                kuc: kuc.as_mut_ptr().cast(),
            },
            mount: PathBuf::from("/nonexistent"),
            uuid: "test".to_owned(),
            archives: archives.to_vec(),
            kuc,
            buf,
        });
        (ct, theirs)
    }

    fn kuc(transport: u8, msgtype: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(KUC_MAGIC as u16).to_le_bytes());
        m.push(transport);
        m.push(0);
        m.extend_from_slice(&msgtype.to_le_bytes());
        m.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn hal(archive_id: u32) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 1;
        h[24..28].copy_from_slice(&archive_id.to_le_bytes());
        h[32..38].copy_from_slice(b"lustre");
        h
    }

    fn recv_raw(ct: &mut CtPriv) -> (c_int, Option<Vec<u8>>) {
        let mut p: *mut hsm_action_list = ptr::null_mut();
        let mut size: c_int = -1;
        let h = (ct as *mut CtPriv).cast::<hsm_copytool_private>();
        // SAFETY: a live handle and valid out-pointers.
        let rc = unsafe { recv(h, &mut p, &mut size) };
        if rc < 0 {
            assert!(p.is_null() && size == 0, "outputs cleared on error");
            return (rc, None);
        }
        // SAFETY: `size` bytes at `p` in the handle's buffer.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size as usize) };
        (rc, Some(bytes.to_vec()))
    }

    fn kuc_type(transport: u32) -> u8 {
        transport as u8
    }

    #[test]
    fn framing_filter_and_errors() {
        let (mut ct, mut peer) = handle(&[2], true);
        assert_eq!(recv_raw(&mut ct).0, -libc::EAGAIN);
        // A message for another archive is dropped, one of another transport skipped, the
        // next one returned; a message split over several writes is reassembled.
        peer.write_all(&kuc(kuc_type(KUC_TRANSPORT_HSM), HMT_ACTION_LIST, &hal(1)))
            .unwrap();
        peer.write_all(&kuc(7, 1, b"other")).unwrap();
        let m = kuc(kuc_type(KUC_TRANSPORT_HSM), HMT_ACTION_LIST, &hal(2));
        peer.write_all(&m[..5]).unwrap();
        let writer = std::thread::spawn({
            let mut peer = peer.try_clone().unwrap();
            let rest = m[5..].to_vec();
            move || peer.write_all(&rest).unwrap()
        });
        // The header is incomplete: recv waits for the rest of the message.
        let (rc, got) = loop {
            let r = recv_raw(&mut ct);
            if r.0 != -libc::EAGAIN {
                break r;
            }
        };
        writer.join().unwrap();
        assert_eq!(rc, 0);
        assert_eq!(got.unwrap(), hal(2));
        // Protocol errors.
        peer.write_all(&kuc(kuc_type(KUC_TRANSPORT_GENERIC), 9, b""))
            .unwrap();
        assert_eq!(recv_raw(&mut ct).0, -libc::EPROTO);
        peer.write_all(&kuc(kuc_type(KUC_TRANSPORT_HSM), 5, &hal(2)))
            .unwrap();
        assert_eq!(recv_raw(&mut ct).0, -libc::EPROTO);
        peer.write_all(&kuc(kuc_type(KUC_TRANSPORT_HSM), HMT_ACTION_LIST, &[0; 8]))
            .unwrap();
        assert_eq!(
            recv_raw(&mut ct).0,
            -libc::EPROTO,
            "shorter than a HAL header"
        );
        peer.write_all(&[0xff; 8]).unwrap();
        assert_eq!(recv_raw(&mut ct).0, -libc::EPROTO, "bad magic");
        // Shutdown message, then end of stream.
        peer.write_all(&kuc(
            kuc_type(KUC_TRANSPORT_GENERIC),
            KUC_MSG_SHUTDOWN as u16,
            b"",
        ))
        .unwrap();
        assert_eq!(recv_raw(&mut ct).0, -libc::ESHUTDOWN);
        drop(peer);
        assert_eq!(recv_raw(&mut ct).0, -libc::ESHUTDOWN);
        close(stream_fd(&ct));
    }

    #[test]
    fn any_archive_and_blocking_read() {
        let (mut ct, mut peer) = handle(&[], false);
        let m = kuc(kuc_type(KUC_TRANSPORT_HSM), HMT_ACTION_LIST, &hal(77));
        let writer = std::thread::spawn(move || {
            peer.write_all(&m).unwrap();
            peer
        });
        let (rc, got) = recv_raw(&mut ct);
        assert_eq!(rc, 0);
        assert_eq!(got.unwrap(), hal(77));
        drop(writer.join().unwrap());
        close(stream_fd(&ct));
    }

    #[test]
    fn client_uuid_is_per_client_and_mount() {
        let a = util::client_uuid(std::path::Path::new("/a/mount"));
        assert_eq!(a, util::client_uuid(std::path::Path::new("/a/mount")));
        assert_ne!(a, util::client_uuid(std::path::Path::new("/b/mount")));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
