//! The `lfs`-like and `lctl`-like commands, with the output text of the real tools (§11), and
//! the argument handling of the `coordinatool-sim` binary.
//!
//! The binary also behaves as `lfs` or `lctl` when invoked under that name (a symlink), so
//! scripts written for Lustre run unchanged against a simulated mount.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use coordinatool_lustre::{HsmStates, HsmUserAction, LuFid};

use crate::rpc::{self, Client, Fid, Reply, Request, RpcError};
use crate::server::{ServeOptions, serve};

/// Environment variable naming the simulated mount for `lctl` (else found from the cwd).
pub const MOUNT_ENV: &str = "COORDINATOOL_SIM_MOUNT";

/// `strerror` text without Rust's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn current_uid() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Output streams of a command.
pub struct Io<'a> {
    /// Standard input (file lists).
    pub stdin: &'a mut dyn BufRead,
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
}

fn connect_for(path: &Path) -> Result<(Client, PathBuf), String> {
    let mount = rpc::find_mount(path)
        .ok_or_else(|| format!("{}: not on a simulated Lustre mount", path.display()))?;
    let c = Client::connect(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    Ok((c, mount))
}

fn errno_of(e: &RpcError) -> i32 {
    e.errno()
}

/// Runs `lfs <args>` (args without the program name). Returns the exit status.
pub fn lfs(args: &[String], io: &mut Io<'_>) -> i32 {
    let Some(cmd) = args.first() else {
        let _ = writeln!(
            io.err,
            "usage: lfs hsm_{{archive,restore,release,remove,cancel,state,action,set,clear}} ...\n       lfs changelog [--follow] MDTNAME [STARTREC [ENDREC]] | changelog_clear MDTNAME ID ENDREC"
        );
        return 1;
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "hsm_state" => per_file(rest, io, "hsm_state", hsm_state),
        "hsm_action" => per_file(rest, io, "hsm_action", hsm_action),
        "hsm_archive" => hsm_request(HsmUserAction::Archive, rest, io),
        "hsm_restore" => hsm_request(HsmUserAction::Restore, rest, io),
        "hsm_release" => hsm_request(HsmUserAction::Release, rest, io),
        "hsm_remove" => hsm_request(HsmUserAction::Remove, rest, io),
        "hsm_cancel" => hsm_request(HsmUserAction::Cancel, rest, io),
        "hsm_set" => hsm_set(rest, io, true),
        "hsm_clear" => hsm_set(rest, io, false),
        "changelog" => changelog(rest, io),
        "changelog_clear" => changelog_clear(rest, io),
        other => {
            let _ = writeln!(io.err, "lfs: unknown command '{other}'");
            1
        }
    }
}

type PerFile = fn(&mut Client, &Path, &str, &mut dyn Write) -> Result<(), i32>;

fn per_file(files: &[String], io: &mut Io<'_>, name: &str, f: PerFile) -> i32 {
    if files.is_empty() {
        let _ = writeln!(io.err, "lfs {name}: missing file name");
        return 1;
    }
    let mut rc = 0;
    for file in files {
        let p = Path::new(file);
        let r = connect_for(p)
            .map_err(|m| (m, 0))
            .and_then(|(mut c, _)| f(&mut c, p, file, io.out).map_err(|e| (String::new(), e)));
        if let Err((msg, e)) = r {
            if e == 0 {
                let _ = writeln!(io.err, "lfs {name}: {msg}");
            } else {
                let _ = writeln!(
                    io.err,
                    "lfs {name}: cannot get {} for '{file}': {}",
                    if name == "hsm_state" {
                        "hsm state"
                    } else {
                        "hsm action"
                    },
                    strerror(e)
                );
            }
            rc = 1;
        }
    }
    rc
}

fn fid_of(c: &mut Client, p: &Path) -> Result<LuFid, i32> {
    let abs = std::path::absolute(p).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    match c.call(&Request::Path2Fid { path: abs }) {
        Ok(Reply::Fid { fid: Fid(f) }) => Ok(f),
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(errno_of(&e)),
    }
}

/// One `lfs hsm_state` line.
pub fn format_state(path: &str, states: u32, archive_id: u32) -> String {
    let mut s = format!("{path}: (0x{states:08x})");
    let order = [
        (HsmStates::RELEASED, " released"),
        (HsmStates::EXISTS, " exists"),
        (HsmStates::DIRTY, " dirty"),
        (HsmStates::ARCHIVED, " archived"),
        (HsmStates::NORELEASE, " never_release"),
        (HsmStates::NOARCHIVE, " never_archive"),
        (HsmStates::LOST, " lost_from_hsm"),
    ];
    for (bit, name) in order {
        if HsmStates(states).contains(bit) {
            s.push_str(name);
        }
    }
    if archive_id != 0 {
        s.push_str(&format!(", archive_id:{}", archive_id as i32));
    }
    s
}

fn hsm_state(c: &mut Client, p: &Path, shown: &str, out: &mut dyn Write) -> Result<(), i32> {
    let fid = fid_of(c, p)?;
    match c.call(&Request::StateGet { fid: Fid(fid) }) {
        Ok(Reply::State { states, archive_id }) => {
            let _ = writeln!(out, "{}", format_state(shown, states, archive_id));
            Ok(())
        }
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(errno_of(&e)),
    }
}

/// One `lfs hsm_action` line.
pub fn format_action(path: &str, state: u32, action: u32, offset: u64, length: u64) -> String {
    let name = HsmUserAction::from_code(action).map_or("UNKNOWN", |a| a.name());
    if action == HsmUserAction::None.code() {
        return format!("{path}: {name}");
    }
    let st = match state {
        1 => "waiting",
        2 => "running",
        3 => "done",
        _ => "unknown",
    };
    if state == 2 {
        format!("{path}: {name} {st} ({length} bytes moved)")
    } else if length == u64::MAX {
        format!("{path}: {name} {st} (from {offset} to EOF)")
    } else {
        format!(
            "{path}: {name} {st} (from {offset} to {})",
            offset.wrapping_add(length)
        )
    }
}

fn hsm_action(c: &mut Client, p: &Path, shown: &str, out: &mut dyn Write) -> Result<(), i32> {
    let fid = fid_of(c, p)?;
    match c.call(&Request::CurrentAction { fid: Fid(fid) }) {
        Ok(Reply::Action {
            state,
            action,
            offset,
            length,
        }) => {
            let _ = writeln!(
                out,
                "{}",
                format_action(shown, state, action, offset, length)
            );
            Ok(())
        }
        Ok(_) => Err(libc::EPROTO),
        Err(e) => Err(errno_of(&e)),
    }
}

/// Parsed options of `lfs hsm_{archive,restore,release,remove,cancel}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestArgs {
    /// `-a/--archive`.
    pub archive: u32,
    /// `-D/--data`.
    pub data: Vec<u8>,
    /// `-l/--filelist` (`-` = stdin).
    pub filelist: Option<String>,
    /// `-m/--mntpath` (remove by FID).
    pub mntpath: Option<String>,
    /// Files (or FIDs with `--mntpath`).
    pub files: Vec<String>,
}

/// Parses the options of a request command (`--opt=value`, `--opt value`, `-o value`, `-ovalue`).
pub fn parse_request_args(action: HsmUserAction, args: &[String]) -> Result<RequestArgs, String> {
    let mut r = RequestArgs::default();
    let mut it = args.iter();
    let archive_ok = matches!(action, HsmUserAction::Archive | HsmUserAction::Remove);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if a.starts_with("--") => (k.to_owned(), Some(v.to_owned())),
            _ if a.starts_with('-') && !a.starts_with("--") && a.len() > 2 => {
                (a[..2].to_owned(), Some(a[2..].to_owned()))
            }
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("option '{name}' requires an argument"))
        };
        match key.as_str() {
            "-a" | "--archive" if archive_ok => {
                let v = value("--archive")?;
                r.archive = v
                    .parse()
                    .map_err(|_| format!("invalid archive number '{v}'"))?;
            }
            "-D" | "--data" => r.data = value("--data")?.into_bytes(),
            "-l" | "--filelist" => r.filelist = Some(value("--filelist")?),
            "-m" | "--mntpath" if action == HsmUserAction::Remove => {
                r.mntpath = Some(value("--mntpath")?)
            }
            "--" => {
                r.files.extend(it.by_ref().cloned());
            }
            k if k.starts_with('-') && k.len() > 1 => {
                return Err(format!("unrecognized option '{a}'"));
            }
            _ => r.files.push(a.clone()),
        }
    }
    Ok(r)
}

fn hsm_request(action: HsmUserAction, args: &[String], io: &mut Io<'_>) -> i32 {
    let name = format!("hsm_{}", action.name().to_ascii_lowercase());
    let mut a = match parse_request_args(action, args) {
        Ok(a) => a,
        Err(m) => {
            let _ = writeln!(io.err, "lfs {name}: {m}");
            return 1;
        }
    };
    if let Some(list) = &a.filelist {
        let text = if list == "-" {
            let mut s = String::new();
            let _ = io.stdin.read_to_string(&mut s);
            Ok(s)
        } else {
            std::fs::read_to_string(list)
        };
        match text {
            Ok(t) => a.files.extend(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            ),
            Err(e) => {
                let _ = writeln!(io.err, "lfs {name}: cannot read '{list}': {e}");
                return 1;
            }
        }
    }
    if a.files.is_empty() {
        let _ = writeln!(io.err, "lfs {name}: no file specified");
        return 1;
    }
    let first = a.files[0].clone();
    let base = a.mntpath.clone().unwrap_or_else(|| first.clone());
    let (mut c, _) = match connect_for(Path::new(&base)) {
        Ok(x) => x,
        Err(m) => {
            let _ = writeln!(io.err, "lfs {name}: {m}");
            return 1;
        }
    };
    let mut fids = Vec::with_capacity(a.files.len());
    for f in &a.files {
        if a.mntpath.is_some() {
            match f.parse::<LuFid>() {
                Ok(fid) => fids.push(fid),
                Err(_) => {
                    let _ = writeln!(io.err, "lfs {name}: '{f}' is not a valid FID");
                    return 1;
                }
            }
            continue;
        }
        match std::fs::metadata(f) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                let _ = writeln!(io.err, "error: \"{f}\" is not a regular file");
                return 1;
            }
            Err(e) => {
                let _ = writeln!(
                    io.err,
                    "Cannot send HSM request (use of {f}): {}",
                    strerror(e.raw_os_error().unwrap_or(libc::EIO))
                );
                return 1;
            }
        }
        match fid_of(&mut c, Path::new(f)) {
            Ok(fid) => fids.push(fid),
            Err(e) => {
                let _ = writeln!(
                    io.err,
                    "Cannot send HSM request (use of {f}): {}",
                    strerror(e)
                );
                return 1;
            }
        }
    }
    if action == HsmUserAction::Release {
        // Release never reaches the coordinator: one close-with-intent per file.
        let mut rc = 0;
        for (f, fid) in a.files.iter().zip(&fids) {
            if let Err(e) = c.call(&Request::Release { fid: Fid(*fid) }) {
                let _ = writeln!(
                    io.err,
                    "Cannot send HSM request (use of {f}): {}",
                    strerror(errno_of(&e))
                );
                rc = 1;
            }
        }
        return rc;
    }
    let (uid, gid) = current_uid();
    let req = Request::HsmRequest {
        action: action.code(),
        archive_id: a.archive,
        flags: 0,
        items: fids.iter().map(|f| (Fid(*f), 0, u64::MAX)).collect(),
        data: a.data,
        uid,
        gid,
    };
    match c.call(&req) {
        Ok(_) => 0,
        Err(e) => {
            let _ = writeln!(
                io.err,
                "Cannot send HSM request (use of {first}): {}",
                strerror(errno_of(&e))
            );
            1
        }
    }
}

fn hsm_set(args: &[String], io: &mut Io<'_>, set: bool) -> i32 {
    let name = if set { "hsm_set" } else { "hsm_clear" };
    let mut mask = 0u64;
    let mut archive_id = 0u32;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let bit = match a.as_str() {
            "--norelease" => HsmStates::NORELEASE,
            "--noarchive" => HsmStates::NOARCHIVE,
            "--dirty" => HsmStates::DIRTY,
            "--exists" => HsmStates::EXISTS,
            "--archived" => HsmStates::ARCHIVED,
            "--lost" => HsmStates::LOST,
            "-i" | "--archive-id" if set => {
                match it.next().and_then(|v| v.parse().ok()) {
                    Some(v) => archive_id = v,
                    None => {
                        let _ = writeln!(io.err, "lfs {name}: invalid archive id");
                        return 1;
                    }
                }
                continue;
            }
            o if o.starts_with('-') => {
                let _ = writeln!(io.err, "lfs {name}: unrecognized option '{o}'");
                return 1;
            }
            f => {
                files.push(f.to_owned());
                continue;
            }
        };
        mask |= u64::from(bit.bits());
    }
    let (uid, _) = current_uid();
    let mut rc = 0;
    for f in &files {
        let r = connect_for(Path::new(f))
            .map_err(|_| libc::ENOENT)
            .and_then(|(mut c, _)| {
                let fid = fid_of(&mut c, Path::new(f))?;
                let (s, cl) = if set { (mask, 0) } else { (0, mask) };
                c.call(&Request::StateSet {
                    fid: Fid(fid),
                    set: s,
                    clear: cl,
                    archive_id,
                    uid,
                })
                .map(|_| ())
                .map_err(|e| errno_of(&e))
            });
        if let Err(e) = r {
            let _ = writeln!(
                io.err,
                "lfs {name}: cannot set hsm state for '{f}': {}",
                strerror(e)
            );
            rc = 1;
        }
    }
    rc
}

/// `changelog_type2str`: the 5-character-or-less names `lfs changelog` prints.
fn changelog_type_name(kind: u32) -> &'static str {
    const NAMES: [&str; 23] = [
        "MARK", "CREAT", "MKDIR", "HLINK", "SLINK", "MKNOD", "UNLNK", "RMDIR", "RENME", "RNMTO",
        "OPEN", "CLOSE", "LYOUT", "TRUNC", "SATTR", "XATTR", "HSM", "MTIME", "CTIME", "ATIME",
        "MIGRT", "FLRW", "RESYNC",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("NONE")
}

/// Civil date `(year, month, day)` of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One `lfs changelog` line: `INDEX TTNAME HH:MM:SS.NNNNNNNNN YYYY.MM.DD 0xFLAGS t=[FID]`,
/// the layout of the real tool (`%llu %02d%-5s %02d:%02d:%02d.%09d %04d.%02d.%02d 0x%x
/// t=DFID`). Times are printed in UTC (the real tool uses the local time zone) and the
/// optional `ef=`/`u=`/`nid=`/`j=` fields are absent: simulated records carry none.
pub fn format_changelog(index: u64, kind: u32, time: u64, flags: u16, tfid: LuFid) -> String {
    let days = (time / 86_400) as i64;
    let secs = time % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{index} {kind:02}{:<5} {:02}:{:02}:{:02}.{:09} {y:04}.{mo:02}.{d:02} 0x{flags:x} t={tfid}",
        changelog_type_name(kind),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        0
    )
}

fn parse_rec(s: Option<&String>, what: &str) -> Result<u64, String> {
    match s {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| format!("invalid {what} '{v}'")),
    }
}

/// `lfs changelog [--follow] MDTNAME [STARTREC [ENDREC]]`: the MDT's changelog records (the
/// mount is taken from `COORDINATOOL_SIM_MOUNT` or the current directory, like `lctl`).
/// `--follow` keeps printing new records as they come (polled every second) until killed.
fn changelog(args: &[String], io: &mut Io<'_>) -> i32 {
    let follow = args.iter().any(|a| a == "--follow" || a == "-f");
    let args: Vec<&String> = args
        .iter()
        .filter(|a| *a != "--follow" && *a != "-f")
        .collect();
    let Some(mdt) = args.first() else {
        let _ = writeln!(io.err, "lfs changelog: missing MDT name");
        return 1;
    };
    let (start, end) = match (
        parse_rec(args.get(1).copied(), "startrec"),
        parse_rec(args.get(2).copied(), "endrec"),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(m), _) | (_, Err(m)) => {
            let _ = writeln!(io.err, "lfs changelog: {m}");
            return 1;
        }
    };
    let mut c = match lctl_client() {
        Ok(c) => c,
        Err(m) => {
            let _ = writeln!(io.err, "lfs changelog: {m}");
            return 1;
        }
    };
    let mut start = start;
    loop {
        match c.call(&Request::Changelog {
            mdt: (*mdt).clone(),
            start,
            end,
        }) {
            Ok(Reply::Changelog { records }) => {
                for r in &records {
                    let _ = writeln!(
                        io.out,
                        "{}",
                        format_changelog(r.index, r.kind, r.time, r.flags, r.tfid.0)
                    );
                }
                let _ = io.out.flush();
                if let Some(last) = records.last() {
                    start = last.index + 1;
                }
            }
            Ok(_) => return 1,
            Err(e) => {
                let _ = writeln!(
                    io.err,
                    "lfs changelog: cannot access changelog for '{mdt}': {}",
                    strerror(errno_of(&e))
                );
                return 1;
            }
        }
        if !follow || (end != 0 && start > end) {
            return 0;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `lfs changelog_clear MDTNAME ID ENDREC` (`ENDREC` 0 = every record).
fn changelog_clear(args: &[String], io: &mut Io<'_>) -> i32 {
    let [mdt, user, endrec] = args else {
        let _ = writeln!(io.err, "usage: lfs changelog_clear MDTNAME ID ENDREC");
        return 1;
    };
    let endrec = match parse_rec(Some(endrec), "endrec") {
        Ok(e) => e,
        Err(m) => {
            let _ = writeln!(io.err, "lfs changelog_clear: {m}");
            return 1;
        }
    };
    let r = lctl_client().and_then(|mut c| {
        c.call(&Request::ChangelogClear {
            mdt: mdt.clone(),
            user: user.clone(),
            endrec,
        })
        .map_err(|e| {
            let n = errno_of(&e);
            format!("cannot purge records for '{user}': {} ({n})", strerror(n))
        })
    });
    match r {
        Ok(_) => 0,
        Err(m) => {
            let _ = writeln!(io.err, "lfs changelog_clear: {m}");
            1
        }
    }
}

fn lctl_client() -> Result<Client, String> {
    let mount = match std::env::var_os(MOUNT_ENV) {
        Some(m) => PathBuf::from(m),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            rpc::find_mount(&cwd).ok_or_else(|| {
                format!("no simulated Lustre: set {MOUNT_ENV} or run inside a simulated mount")
            })?
        }
    };
    Client::connect(&mount).map_err(|e| format!("{}: {e}", mount.display()))
}

/// Runs `lctl <args>` (`get_param [-n] PATTERN...`, `set_param [-n] NAME=VALUE...`).
/// A leading `--mount DIR` (simulator only) names the simulated mount explicitly.
pub fn lctl(args: &[String], io: &mut Io<'_>) -> i32 {
    let mut mount = None;
    let mut device = None;
    let mut args = args;
    while args.len() >= 2 {
        match args[0].as_str() {
            "--mount" => mount = Some(PathBuf::from(&args[1])),
            "--device" => device = Some(args[1].clone()),
            _ => break,
        }
        args = &args[2..];
    }
    let Some(cmd) = args.first() else {
        let _ = writeln!(
            io.err,
            "usage: lctl [--device MDTNAME] {{get_param|set_param|changelog_register|changelog_deregister}} ..."
        );
        return 1;
    };
    let mut show_name = true;
    let mut params = Vec::new();
    for a in &args[1..] {
        match a.as_str() {
            "-n" => show_name = false,
            "-N" | "-F" | "-R" => {}
            _ => params.push(a.clone()),
        }
    }
    let client = match mount {
        Some(m) => Client::connect(&m).map_err(|e| format!("{}: {e}", m.display())),
        None => lctl_client(),
    };
    let mut c = match client {
        Ok(c) => c,
        Err(m) => {
            let _ = writeln!(io.err, "error: {cmd}: {m}");
            return 1;
        }
    };
    let mut rc = 0;
    match cmd.as_str() {
        "get_param" => {
            for p in &params {
                match c.call(&Request::GetParam {
                    pattern: p.clone(),
                    show_name,
                }) {
                    Ok(Reply::Text { text }) => {
                        let _ = io.out.write_all(text.as_bytes());
                    }
                    Ok(_) => rc = 1,
                    Err(e) => {
                        let _ = writeln!(
                            io.err,
                            "error: get_param: param_path '{p}': {}",
                            strerror(errno_of(&e))
                        );
                        rc = 1;
                    }
                }
            }
        }
        "changelog_register" | "changelog_deregister" => {
            let Some(dev) = &device else {
                let _ = writeln!(
                    io.err,
                    "error: {cmd}: no device specified (--device MDTNAME)"
                );
                return 1;
            };
            let req = if cmd == "changelog_register" {
                Request::ChangelogRegister { mdt: dev.clone() }
            } else {
                let Some(user) = params.first() else {
                    let _ = writeln!(
                        io.err,
                        "usage: lctl --device MDTNAME changelog_deregister clN"
                    );
                    return 1;
                };
                Request::ChangelogDeregister {
                    mdt: dev.clone(),
                    user: user.clone(),
                }
            };
            match c.call(&req) {
                Ok(Reply::Index { index }) if !show_name => {
                    let _ = writeln!(io.out, "cl{index}");
                }
                Ok(Reply::Index { index }) => {
                    let _ = writeln!(io.out, "{dev}: Registered changelog userid 'cl{index}'");
                }
                Ok(_) => {
                    let _ = writeln!(
                        io.out,
                        "{dev}: Deregistered changelog user '{}'",
                        params.first().map_or("", String::as_str)
                    );
                }
                Err(e) => {
                    let _ = writeln!(io.err, "error: {cmd}: {}", strerror(errno_of(&e)));
                    rc = 1;
                }
            }
        }
        "set_param" => {
            for p in &params {
                let Some((pattern, value)) = p.split_once('=') else {
                    let _ = writeln!(
                        io.err,
                        "error: set_param: argument '{p}' does not contain '='"
                    );
                    rc = 1;
                    continue;
                };
                match c.call(&Request::SetParam {
                    pattern: pattern.to_owned(),
                    value: value.to_owned(),
                }) {
                    Ok(Reply::SetParam { results }) => {
                        for (name, e) in results {
                            if e == 0 {
                                if show_name {
                                    let _ = writeln!(io.out, "{name}={value}");
                                }
                            } else if e == libc::ENOENT && name == pattern {
                                let _ = writeln!(
                                    io.err,
                                    "error: set_param: param_path '{pattern}': {}",
                                    strerror(e)
                                );
                                rc = 1;
                            } else {
                                let _ = writeln!(
                                    io.err,
                                    "error: set_param: setting {name}={value}: {}",
                                    strerror(e)
                                );
                                rc = 1;
                            }
                        }
                    }
                    Ok(_) => rc = 1,
                    Err(e) => {
                        let _ = writeln!(io.err, "error: set_param: {}", strerror(errno_of(&e)));
                        rc = 1;
                    }
                }
            }
        }
        other => {
            let _ = writeln!(io.err, "lctl: unknown command '{other}'");
            rc = 1;
        }
    }
    rc
}

/// `coordinatool-sim cat FILE...`: reads files the way an application on a Lustre client
/// would: a released file first triggers an implicit restore and the read blocks until the
/// restore is done (or fails with `ENODATA` under the NonBlockingRestore policy).
pub fn cat(files: &[String], io: &mut Io<'_>) -> i32 {
    let mut rc = 0;
    for f in files {
        let p = Path::new(f);
        let r = connect_for(p).and_then(|(mut c, _)| {
            let fid = fid_of(&mut c, p).map_err(strerror)?;
            loop {
                c.call(&Request::ImplicitRestore { fid: Fid(fid) })
                    .map_err(|e| strerror(errno_of(&e)))?;
                match c.call(&Request::StateGet { fid: Fid(fid) }) {
                    Ok(Reply::State { states, .. })
                        if !HsmStates(states).contains(HsmStates::RELEASED) =>
                    {
                        break;
                    }
                    Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                    Err(e) => return Err(strerror(errno_of(&e))),
                }
            }
            std::fs::read(p).map_err(|e| e.to_string())
        });
        match r {
            Ok(bytes) => {
                let _ = io.out.write_all(&bytes);
            }
            Err(m) => {
                let _ = writeln!(io.err, "cat: {f}: {m}");
                rc = 1;
            }
        }
    }
    rc
}

const USAGE: &str = "usage:
  coordinatool-sim serve <mountdir> [--mdts N] [--fsname NAME] [--disabled] [--read-only] [--pipelined]
  coordinatool-sim lfs hsm_{archive,restore,release,remove,cancel,state,action,set,clear} ...
  coordinatool-sim lfs changelog [--follow] MDTNAME [STARTREC [ENDREC]] | changelog_clear MDTNAME clN ENDREC
  coordinatool-sim lctl [--mount DIR] {get_param [-n] PATTERN... | set_param NAME=VALUE...}
  coordinatool-sim lctl [--mount DIR] --device MDTNAME {changelog_register [-n] | changelog_deregister clN}
  coordinatool-sim cat FILE...   (read; a released file is restored first)
(also runs as `lfs` or `lctl` when invoked under that name)";

/// Runs `coordinatool-sim <args>` in this process with an empty stdin, capturing its output;
/// returns (exit status, stdout, stderr). For tests and tools that drive the simulator's
/// commands without spawning its binary.
pub fn run_captured(args: &[&str]) -> (i32, String, String) {
    let mut argv = vec!["coordinatool-sim".to_owned()];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let mut stdin: &[u8] = b"";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let rc = main_with_args(
        &argv,
        &mut Io {
            stdin: &mut stdin,
            out: &mut out,
            err: &mut err,
        },
    );
    (
        rc,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The whole `coordinatool-sim` command line (`argv` including the program name).
pub fn main_with_args(argv: &[String], io: &mut Io<'_>) -> i32 {
    let prog = argv
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    match prog.as_str() {
        "lfs" => return lfs(&argv[1..], io),
        "lctl" => return lctl(&argv[1..], io),
        _ => {}
    }
    match argv.get(1).map(String::as_str) {
        Some("lfs") => lfs(&argv[2..], io),
        Some("lctl") => lctl(&argv[2..], io),
        Some("cat") => cat(&argv[2..], io),
        Some("serve") => {
            let mut opts = ServeOptions::default();
            let mut mount = None;
            let mut it = argv[2..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--mdts" => match it.next().and_then(|v| v.parse().ok()) {
                        Some(n) => opts.mdts = n,
                        None => {
                            let _ = writeln!(io.err, "serve: --mdts needs a number");
                            return 2;
                        }
                    },
                    "--fsname" => match it.next() {
                        Some(v) => opts.fsname = v.clone(),
                        None => {
                            let _ = writeln!(io.err, "serve: --fsname needs a name");
                            return 2;
                        }
                    },
                    "--disabled" => opts.enabled = false,
                    "--read-only" => opts.read_only = true,
                    "--pipelined" => opts.pipelined = true,
                    m if mount.is_none() && !m.starts_with('-') => mount = Some(PathBuf::from(m)),
                    other => {
                        let _ = writeln!(io.err, "serve: unexpected argument '{other}'\n{USAGE}");
                        return 2;
                    }
                }
            }
            let Some(mount) = mount else {
                let _ = writeln!(io.err, "serve: missing <mountdir>\n{USAGE}");
                return 2;
            };
            match serve(&mount, &opts) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(io.err, "serve: {e}");
                    1
                }
            }
        }
        _ => {
            let _ = writeln!(io.err, "{USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_action_lines_match_lfs() {
        assert_eq!(
            format_state("/mnt/fs00/test", 9, 1),
            "/mnt/fs00/test: (0x00000009) exists archived, archive_id:1"
        );
        assert_eq!(format_state("f", 0, 0), "f: (0x00000000)");
        assert_eq!(
            format_state("f", 0x7f, 2),
            "f: (0x0000007f) released exists dirty archived never_release never_archive lost_from_hsm, archive_id:2"
        );
        assert_eq!(format_action("f", 0, 1, 0, 0), "f: NOOP");
        assert_eq!(
            format_action("f", 2, 10, 0, 4096),
            "f: ARCHIVE running (4096 bytes moved)"
        );
        assert_eq!(
            format_action("f", 1, 11, 0, u64::MAX),
            "f: RESTORE waiting (from 0 to EOF)"
        );
        assert_eq!(
            format_action("f", 1, 11, 10, 20),
            "f: RESTORE waiting (from 10 to 30)"
        );
    }

    #[test]
    fn request_options() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = parse_request_args(
            HsmUserAction::Archive,
            &s(&["-a", "2", "--data=tag", "f1", "f2"]),
        )
        .unwrap();
        assert_eq!(a.archive, 2);
        assert_eq!(a.data, b"tag");
        assert_eq!(a.files, vec!["f1", "f2"]);
        let a = parse_request_args(
            HsmUserAction::Archive,
            &s(&["--archive=3", "-Dx", "-l", "-"]),
        )
        .unwrap();
        assert_eq!((a.archive, a.filelist.as_deref()), (3, Some("-")));
        assert!(parse_request_args(HsmUserAction::Restore, &s(&["--archive", "1", "f"])).is_err());
        assert!(parse_request_args(HsmUserAction::Archive, &s(&["--bogus"])).is_err());
        assert!(parse_request_args(HsmUserAction::Archive, &s(&["-a"])).is_err());
        let a = parse_request_args(
            HsmUserAction::Remove,
            &s(&["-m", "/mnt", "[0x200000400:0x1:0x0]"]),
        )
        .unwrap();
        assert_eq!(a.mntpath.as_deref(), Some("/mnt"));
    }

    #[test]
    fn changelog_lines_match_lfs() {
        // 2013-10-01 13:49:47 UTC.
        let t = 1_380_635_387;
        let fid = LuFid::new(0x2_0000_0400, 1, 0);
        assert_eq!(
            format_changelog(13, 16, t, 0x280, fid),
            "13 16HSM   13:49:47.000000000 2013.10.01 0x280 t=[0x200000400:0x1:0x0]"
        );
        assert_eq!(
            format_changelog(2, 2, 0, 0, fid),
            "2 02MKDIR 00:00:00.000000000 1970.01.01 0x0 t=[0x200000400:0x1:0x0]"
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(changelog_type_name(99), "NONE");
    }

    #[test]
    fn strerror_has_no_rust_suffix() {
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert_eq!(strerror(libc::EPERM), "Operation not permitted");
    }
}
