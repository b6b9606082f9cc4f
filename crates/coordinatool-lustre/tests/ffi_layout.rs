//! Every struct size, alignment and offset of lustre-hsm.md §2 (2.1–2.11), checked twice:
//! on the Rust bindings (`src/ffi/bindings.rs`) and, through `_Static_assert`s compiled with
//! `cc`, on the C header they come from (`include/lustreapi_subset.h`). Also the §3 constants
//! and the §4 ioctl numbers.

use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use coordinatool_lustre::ffi::bindings as b;
use coordinatool_lustre::{HsmAction, HsmProgressFlags, HsmStates, HsmUserAction};

/// Runs the Rust checks for one struct and appends the same checks in C to `c`.
macro_rules! layout {
    ($c:ident, $t:ident, size $size:expr, align $align:expr, { $($f:ident : $off:expr),* $(,)? }) => {{
        assert_eq!(size_of::<b::$t>(), $size, concat!("size of ", stringify!($t)));
        assert_eq!(align_of::<b::$t>(), $align, concat!("alignment of ", stringify!($t)));
        $(
            assert_eq!(
                offset_of!(b::$t, $f),
                $off,
                concat!("offset of ", stringify!($t), ".", stringify!($f))
            );
        )*
        let t = stringify!($t);
        $c.push_str(&format!(
            "_Static_assert(sizeof(struct {t}) == {}, \"size of {t}\");\n\
             _Static_assert(_Alignof(struct {t}) == {}, \"alignment of {t}\");\n",
            $size, $align
        ));
        $(
            $c.push_str(&format!(
                "_Static_assert(offsetof(struct {t}, {f}) == {}, \"offset of {t}.{f}\");\n",
                $off,
                f = stringify!($f)
            ));
        )*
    }};
}

/// Asserts the §2 layouts on the bindings and returns the equivalent C assertions.
fn section_2(c: &mut String) {
    // 2.1
    layout!(c, lu_fid, size 16, align 1, { f_seq: 0, f_oid: 8, f_ver: 12 });
    // 2.2
    layout!(c, hsm_extent, size 16, align 1, { offset: 0, length: 8 });
    // 2.3
    layout!(c, hsm_action_item, size 72, align 1, {
        hai_len: 0, hai_action: 4, hai_fid: 8, hai_dfid: 24, hai_extent: 40,
        hai_cookie: 56, hai_gid: 64, hai_data: 72,
    });
    layout!(c, hsm_action_item_fixed, size 72, align 1, {
        hai_len: 0, hai_action: 4, hai_fid: 8, hai_dfid: 24, hai_extent: 40,
        hai_cookie: 56, hai_gid: 64,
    });
    // 2.4
    layout!(c, hsm_action_list, size 32, align 1, {
        hal_version: 0, hal_count: 4, hal_compound_id: 8, hal_flags: 16,
        hal_archive_id: 24, padding1: 28, hal_fsname: 32,
    });
    // 2.5
    layout!(c, hsm_progress, size 48, align 8, {
        hp_fid: 0, hp_cookie: 16, hp_extent: 24, hp_flags: 40, hp_errval: 42, padding: 44,
    });
    // 2.6
    layout!(c, hsm_copy, size 88, align 8, {
        hc_data_version: 0, hc_flags: 8, hc_errval: 10, padding: 12, hc_hai: 16,
    });
    // 2.7
    layout!(c, hsm_request, size 24, align 8, {
        hr_action: 0, hr_archive_id: 4, hr_flags: 8, hr_itemcount: 16, hr_data_len: 20,
    });
    layout!(c, hsm_user_item, size 32, align 1, { hui_fid: 0, hui_extent: 16 });
    layout!(c, hsm_user_request, size 24, align 1, { hur_request: 0, hur_user_item: 24 });
    // 2.8
    layout!(c, hsm_user_state, size 32, align 4, {
        hus_states: 0, hus_archive_id: 4, hus_in_progress_state: 8,
        hus_in_progress_action: 12, hus_in_progress_location: 16, hus_extended_info: 32,
    });
    layout!(c, hsm_current_action, size 24, align 4, {
        hca_state: 0, hca_action: 4, hca_location: 8,
    });
    layout!(c, hsm_state_set, size 24, align 8, {
        hss_valid: 0, hss_archive_id: 4, hss_setmask: 8, hss_clearmask: 16,
    });
    layout!(c, hsm_user_import, size 48, align 8, {
        hui_size: 0, hui_atime: 8, hui_mtime: 16, hui_atime_ns: 24, hui_mtime_ns: 28,
        hui_uid: 32, hui_gid: 36, hui_mode: 40, hui_archive_id: 44,
    });
    // 2.9
    layout!(c, kuc_hdr, size 8, align 8, {
        kuc_magic: 0, kuc_transport: 2, kuc_flags: 3, kuc_msgtype: 4, kuc_msglen: 6,
    });
    layout!(c, lustre_kernelcomm, size 24, align 1, {
        lk_wfd: 0, lk_rfd: 4, lk_uid: 8, lk_group: 12, lk_data_count: 16, lk_flags: 20,
        lk_data: 24,
    });
    // 2.10
    layout!(c, hsm_progress_kernel, size 64, align 1, {
        hpk_fid: 0, hpk_cookie: 16, hpk_extent: 24, hpk_flags: 40, hpk_errval: 42,
        hpk_padding1: 44, hpk_data_version: 48, hpk_padding2: 56,
    });
    layout!(c, llog_rec_hdr, size 16, align 4, {
        lrh_len: 0, lrh_index: 4, lrh_type: 8, lrh_id: 12,
    });
    layout!(c, llog_rec_tail, size 8, align 4, { lrt_len: 0, lrt_index: 4 });
    layout!(c, llog_agent_req_rec, size 136, align 1, {
        arr_hdr: 0, arr_status: 16, arr_archive_id: 20, arr_flags: 24, arr_compound_id: 32,
        arr_req_create: 40, arr_req_change: 48, arr_hai: 56, arr_tail: 128,
    });
    // 2.11
    layout!(c, hsm_copytool_private_layout, size 40, align 8, {
        magic: 0, mnt: 8, kuch: 16, mnt_fd: 24, open_by_fid_fd: 28, kuc: 32,
    });
    layout!(c, hsm_copyaction_private_layout, size 368, align 8, {
        magic: 0, source_fd: 4, data_fd: 8, ct_priv: 16, copy: 24, statx: 112,
    });
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

#[test]
fn rust_bindings_match_section_2() {
    section_2(&mut String::new());
}

#[test]
fn c_header_matches_section_2() {
    let mut c = String::from("#include \"lustreapi_subset.h\"\n");
    section_2(&mut c);
    c.push_str("int main(void) { return 0; }\n");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join(format!("layout-{}.c", std::process::id()));
    std::fs::write(&src, &c).unwrap();
    let out = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(crate_dir().join("include"))
        .arg(&src)
        .output()
        .expect("run cc");
    let _ = std::fs::remove_file(&src);
    assert!(
        out.status.success(),
        "C layout assertions failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_alone_as_strict_c99() {
    let out = Command::new(cc())
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c",
        ])
        .arg(crate_dir().join("include/lustreapi_subset.h"))
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "include/lustreapi_subset.h does not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn constants_match_section_3_and_the_crate_types() {
    for (a, c) in [
        (HsmAction::None, b::HSMA_NONE),
        (HsmAction::Archive, b::HSMA_ARCHIVE),
        (HsmAction::Restore, b::HSMA_RESTORE),
        (HsmAction::Remove, b::HSMA_REMOVE),
        (HsmAction::Cancel, b::HSMA_CANCEL),
    ] {
        assert_eq!(a.code(), c, "{a:?}");
    }
    assert_eq!(
        [
            b::HSMA_NONE,
            b::HSMA_ARCHIVE,
            b::HSMA_RESTORE,
            b::HSMA_REMOVE,
            b::HSMA_CANCEL
        ],
        [10, 20, 21, 22, 23]
    );
    for (a, c) in [
        (HsmUserAction::None, b::HUA_NONE),
        (HsmUserAction::Archive, b::HUA_ARCHIVE),
        (HsmUserAction::Restore, b::HUA_RESTORE),
        (HsmUserAction::Release, b::HUA_RELEASE),
        (HsmUserAction::Remove, b::HUA_REMOVE),
        (HsmUserAction::Cancel, b::HUA_CANCEL),
    ] {
        assert_eq!(a.code(), c, "{a:?}");
    }
    assert_eq!(
        [
            b::HUA_NONE,
            b::HUA_ARCHIVE,
            b::HUA_RESTORE,
            b::HUA_RELEASE,
            b::HUA_REMOVE,
            b::HUA_CANCEL
        ],
        [1, 10, 11, 12, 13, 14]
    );
    assert_eq!(
        [b::HPS_NONE, b::HPS_WAITING, b::HPS_RUNNING, b::HPS_DONE],
        [0, 1, 2, 3]
    );
    assert_eq!(b::HMT_ACTION_LIST, 100);
    for (s, c, v) in [
        (HsmStates::EXISTS, b::HS_EXISTS, 0x1),
        (HsmStates::DIRTY, b::HS_DIRTY, 0x2),
        (HsmStates::RELEASED, b::HS_RELEASED, 0x4),
        (HsmStates::ARCHIVED, b::HS_ARCHIVED, 0x8),
        (HsmStates::NORELEASE, b::HS_NORELEASE, 0x10),
        (HsmStates::NOARCHIVE, b::HS_NOARCHIVE, 0x20),
        (HsmStates::LOST, b::HS_LOST, 0x40),
    ] {
        assert_eq!((s.bits(), c), (v, v));
    }
    assert_eq!((b::HS_PCCRW, b::HS_PCCRO), (0x80, 0x100));
    assert_eq!(
        HsmStates::USER_MASK.bits(),
        b::HS_NORELEASE | b::HS_NOARCHIVE | b::HS_DIRTY
    );
    assert_eq!(
        (
            HsmProgressFlags::COMPLETED.bits(),
            HsmProgressFlags::RETRY.bits()
        ),
        (b::HP_FLAG_COMPLETED, b::HP_FLAG_RETRY)
    );
    assert_eq!((b::HP_FLAG_COMPLETED, b::HP_FLAG_RETRY), (1, 2));
    assert_eq!(
        (b::HSM_FORCE_ACTION, b::HSM_GHOST_COPY, b::HSM_REQ_BLOCKING),
        (1, 2, 4)
    );
    assert_eq!(b::HAL_VERSION, 1);
    assert_eq!(
        b::HAL_MAXSIZE as usize,
        coordinatool_lustre::hal::HAL_MAXSIZE
    );
    assert_eq!(b::HAL_MAXSIZE, 1 << 20);
    assert_eq!(
        b::LDLM_MAXREQSIZE as usize,
        coordinatool_lustre::hal::LDLM_MAXREQSIZE
    );
    assert_eq!(
        b::MTI_NAME_MAXLEN as usize,
        coordinatool_lustre::hal::MTI_NAME_MAXLEN
    );
    assert_eq!(
        (b::LUSTRE_MAXFSNAME, b::FID_NOBRACE_LEN, b::FID_LEN),
        (8, 40, 42)
    );
    assert_eq!(b::KUC_MAGIC, 0x191C);
    assert_eq!(
        (
            b::KUC_TRANSPORT_GENERIC,
            b::KUC_TRANSPORT_HSM,
            b::KUC_MSG_SHUTDOWN,
            b::KUC_GRP_HSM
        ),
        (1, 2, 1, 2)
    );
    assert_eq!(
        (b::LK_FLG_STOP, b::LK_FLG_DATANR, b::LK_NOFD),
        (1, 2, u32::MAX)
    );
    assert_eq!(
        (b::HSS_SETMASK, b::HSS_CLEARMASK, b::HSS_ARCHIVE_ID),
        (1, 2, 4)
    );
    assert_eq!(
        [
            b::ARS_WAITING,
            b::ARS_STARTED,
            b::ARS_FAILED,
            b::ARS_CANCELED,
            b::ARS_SUCCEED
        ],
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        [
            b::LLAPI_MSG_OFF,
            b::LLAPI_MSG_FATAL,
            b::LLAPI_MSG_ERROR,
            b::LLAPI_MSG_WARN,
            b::LLAPI_MSG_NORMAL,
            b::LLAPI_MSG_INFO,
            b::LLAPI_MSG_DEBUG,
            b::LLAPI_MSG_MAX
        ],
        [0, 1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!((b::LLAPI_MSG_MASK, b::LLAPI_MSG_NO_ERRNO), (7, 0x10));
    assert_eq!(
        (b::CT_PRIV_MAGIC, b::CP_PRIV_MAGIC, b::HSM_AGENT_REC),
        (0xC0BE2001, 0x19880429, 0x10680000)
    );
}

/// `_IOC(dir, 'f', nr, size)` on x86_64: dir (1 = write, 2 = read) << 30 | size << 16 | 'f' << 8 | nr.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'f' as u32) << 8) | nr
}

#[test]
fn ioctl_numbers_match_section_4() {
    const W: u32 = 1;
    const R: u32 = 2;
    let table = [
        (
            b::LL_IOC_HSM_STATE_GET,
            0x802066d3,
            ioc(R, 211, size_of::<b::hsm_user_state>()),
        ),
        (
            b::LL_IOC_HSM_STATE_SET,
            0x401866d4,
            ioc(W, 212, size_of::<b::hsm_state_set>()),
        ),
        (
            b::LL_IOC_HSM_CT_START,
            0x401866d5,
            ioc(W, 213, size_of::<b::lustre_kernelcomm>()),
        ),
        // The size field of COPY_START/END encodes a pointer, of PROGRESS a hsm_user_request.
        (
            b::LL_IOC_HSM_COPY_START,
            0x400866d6,
            ioc(W, 214, size_of::<*const b::hsm_copy>()),
        ),
        (
            b::LL_IOC_HSM_COPY_END,
            0x400866d7,
            ioc(W, 215, size_of::<*const b::hsm_copy>()),
        ),
        (
            b::LL_IOC_HSM_PROGRESS,
            0x401866d8,
            ioc(W, 216, size_of::<b::hsm_user_request>()),
        ),
        (
            b::LL_IOC_HSM_REQUEST,
            0x401866d9,
            ioc(W, 217, size_of::<b::hsm_user_request>()),
        ),
        (b::LL_IOC_DATA_VERSION, 0x801066da, ioc(R, 218, 16)),
        (
            b::LL_IOC_HSM_ACTION,
            0x801866dc,
            ioc(R, 220, size_of::<b::hsm_current_action>()),
        ),
        (
            b::LL_IOC_HSM_IMPORT,
            0xc03066f5,
            ioc(R | W, 245, size_of::<b::hsm_user_import>()),
        ),
        (
            b::LL_IOC_PATH2FID,
            0x800866ad,
            ioc(R, 173, size_of::<std::os::raw::c_long>()),
        ),
    ];
    for (i, (constant, reference, computed)) in table.into_iter().enumerate() {
        assert_eq!(constant, reference, "row {i}: header vs reference");
        assert_eq!(computed, reference, "row {i}: _IOC formula vs reference");
    }
}
