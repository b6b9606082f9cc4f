//! Parsers for the MDT's `hsm/active_requests` and `hsm/actions` listings.
//!
//! Both are text files the MDT coordinator prints, one request per line (lustre-hsm.md §9.8):
//!
//! ```text
//! active_requests (debugfs, or `lctl get_param mdt.*.hsm.active_requests`):
//! fid=DFID dfid=DFID compound/cookie=%#llx/%#llx action=%s archive#=%d flags=%#llx
//!     extent=%#llx-%#llx gid=%#llx data=[%s] canceled=%d uuid=%s done=%llu
//! actions:
//! lrh=[type=%X len=%d idx=%d/%d] fid=DFID dfid=DFID compound/cookie=%#llx/%#llx action=%s
//!     archive#=%d flags=%#llx extent=%#llx-%#llx gid=%#llx datalen=%d status=%s data=[%s]
//! ```
//!
//! The extent's second number is a **length**, not an end. `data` is an upper-case hex dump
//! of at most the first [`DATA_DUMP_MAX`] bytes of the request's data.
//!
//! # Rules
//!
//! * A line is a list of `key=value` fields separated by spaces, in any order. A value that
//!   starts with `[` runs to the matching `]`, spaces included, so a data dump or the
//!   `lrh=[...]` group never breaks the field scan. Unknown keys are ignored (newer Lustre
//!   versions may add fields); a known key given twice is an error.
//! * Required for an active request: `fid`, `dfid`, `compound/cookie`, `action`,
//!   `archive#`, `flags`, `extent`, `gid`, `data`. `canceled`, `uuid` and `done` are
//!   optional. An `actions` record also needs `lrh`, `datalen` and `status`. An `actions`
//!   line is therefore also accepted by the active_requests parser.
//! * Numbers are C base-0: `0x` hex, a leading `0` octal, otherwise decimal. Fields the
//!   kernel prints with `%d` (`archive#`, `datalen`, `canceled`, the `lrh` numbers) also
//!   accept a minus sign, so a value printed negative reads back as the same `u32`.
//!   `lrh` `type=` is hex (`%X`, no prefix).
//! * A FID is `[seq:oid:ver]`; a malformed FID is an error (the C parser kept a partial value).
//! * `action=` takes the names Lustre prints, including `CANCEL` and `NOOP`; deciding what
//!   to do with them is the caller's business.
//! * `data=[...]` must be pairs of hex digits (either case).
//! * `lctl get_param` prints `mdt.<fsname>-MDTxxxx.hsm.active_requests=` before each MDT's
//!   listing. Such a header line is skipped, and the MDT name is recorded in each following
//!   item ([`ActiveRequest::mdt`]). When the listing has a single line, `lctl` prints it on
//!   the header line itself (`...active_requests=fid=[...] ...`); that request is parsed.
//! * Blank lines are skipped. A trailing `\r` (CRLF line ends) is removed. Text after the
//!   last newline at the end of the input is parsed as a line like any other (the C parser
//!   rejected it); a truncated line fails on its missing fields anyway.
//! * A line longer than [`MAX_LINE_LEN`] bytes is an error.
//!
//! Errors carry the 1-based line number and the field they concern ([`ParseError`]). The
//! iterators go on after a bad line; [`parse_all`] and [`parse_all_actions`] stop at the
//! first error.
//!
//! `Display` on [`ActiveRequest`] and [`ActionRecord`] prints the kernel's format (with every
//! byte of `data`, so parsing the output gives the same value back).
//!
//! # Example
//!
//! ```rust
//! use coordinatool_lustre::active_requests::parse_all;
//!
//! let text = "mdt.fs-MDT0000.hsm.active_requests=fid=[0x200005223:0x1cce:0x0] \
//! dfid=[0x200005223:0x1cce:0x0] compound/cookie=0x0/0x617d23ef action=ARCHIVE archive#=1 \
//! flags=0x0 extent=0x0-0xffffffffffffffff gid=0x0 data=[] canceled=0 uuid=3185ca0b done=0\n";
//! let reqs = parse_all(text).unwrap();
//! assert_eq!(reqs[0].cookie, 0x617d23ef);
//! assert_eq!(reqs[0].mdt.as_deref(), Some("fs-MDT0000"));
//! // Display prints the kernel's line back.
//! assert_eq!(reqs[0].to_string(), text.split_once('=').unwrap().1.trim_end());
//!
//! let err = parse_all("fid=[0x1:0x2:0x0]\n").unwrap_err();
//! assert_eq!(err.to_string(), "line 1: missing field `dfid`");
//! ```

use std::fmt;
use std::str::FromStr;

use crate::action::HsmAction;
use crate::fid::LuFid;
use crate::hal::{HsmActionItem, HsmExtent};

/// Lines longer than this many bytes are rejected ([`ParseErrorKind::LineTooLong`]).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The kernel dumps at most this many bytes of a request's data (`hai_dump_data_field` with
/// a 12-byte buffer).
pub const DATA_DUMP_MAX: usize = 5;

/// Longest value quoted in an error message.
const ERR_VALUE_MAX: usize = 80;

/// Status of a request in the coordinator's llog (`enum agent_req_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum AgentReqStatus {
    /// `ARS_WAITING` (0): recorded, not yet sent to a copytool.
    Waiting = 0,
    /// `ARS_STARTED` (1): sent to a copytool.
    Started = 1,
    /// `ARS_FAILED` (2).
    Failed = 2,
    /// `ARS_CANCELED` (3).
    Canceled = 3,
    /// `ARS_SUCCEED` (4).
    Succeed = 4,
}

impl AgentReqStatus {
    /// Every status, in code order.
    pub const ALL: [AgentReqStatus; 5] = [
        AgentReqStatus::Waiting,
        AgentReqStatus::Started,
        AgentReqStatus::Failed,
        AgentReqStatus::Canceled,
        AgentReqStatus::Succeed,
    ];

    /// The numeric code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Maps a code back to a status.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => AgentReqStatus::Waiting,
            1 => AgentReqStatus::Started,
            2 => AgentReqStatus::Failed,
            3 => AgentReqStatus::Canceled,
            4 => AgentReqStatus::Succeed,
            _ => return None,
        })
    }

    /// The name Lustre prints (`agent_req_status2name`).
    pub const fn name(self) -> &'static str {
        match self {
            AgentReqStatus::Waiting => "WAITING",
            AgentReqStatus::Started => "STARTED",
            AgentReqStatus::Failed => "FAILED",
            AgentReqStatus::Canceled => "CANCELED",
            AgentReqStatus::Succeed => "SUCCEED",
        }
    }

    /// Parses the name Lustre prints (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        AgentReqStatus::ALL.into_iter().find(|s| s.name() == name)
    }

    /// True for SUCCEED, FAILED and CANCELED.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            AgentReqStatus::Succeed | AgentReqStatus::Failed | AgentReqStatus::Canceled
        )
    }
}

impl fmt::Display for AgentReqStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of `hsm/active_requests`: a request the MDT has sent to a copytool and that has
/// not finished yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveRequest {
    /// `fid=`: the file.
    pub fid: LuFid,
    /// `dfid=`: the data FID (a RESTORE shows the volatile file here once it progressed).
    pub dfid: LuFid,
    /// First half of `compound/cookie=`: 0 since Lustre 2.11, non-zero before.
    pub compound_id: u64,
    /// Second half of `compound/cookie=`: the request cookie.
    pub cookie: u64,
    /// `action=`.
    pub action: HsmAction,
    /// `archive#=`.
    pub archive_id: u32,
    /// `flags=`: request flags (`HSM_FORCE_ACTION`, `HSM_REQ_BLOCKING`, ...).
    pub flags: u64,
    /// `extent=offset-length`.
    pub extent: HsmExtent,
    /// `gid=`.
    pub gid: u64,
    /// `data=[..]`: the bytes shown, i.e. at most the first [`DATA_DUMP_MAX`] of the real data.
    pub data: Vec<u8>,
    /// `canceled=`: a cancel is attached to the request.
    pub canceled: Option<bool>,
    /// `uuid=`: UUID of the client (agent) running it.
    pub uuid: Option<String>,
    /// `done=`: bytes reported done by progress updates.
    pub done: Option<u64>,
    /// 1-based line number in the parsed text (not printed by `Display`).
    pub line: usize,
    /// MDT device name from the preceding `lctl` header (`fs00-MDT0000`), if any (not
    /// printed by `Display`). Cookies are only unique per MDT.
    pub mdt: Option<String>,
}

impl ActiveRequest {
    /// The action item this request corresponds to (for requeueing; the data is what the
    /// listing showed, possibly truncated).
    pub fn to_action_item(&self) -> HsmActionItem {
        HsmActionItem {
            action: self.action,
            fid: self.fid,
            dfid: self.dfid,
            extent: self.extent,
            cookie: self.cookie,
            gid: self.gid,
            data: self.data.clone(),
        }
    }

    /// True if `data` may be a truncated dump (it holds [`DATA_DUMP_MAX`] bytes or more).
    pub fn data_maybe_truncated(&self) -> bool {
        self.data.len() >= DATA_DUMP_MAX
    }

    /// Parses one line (no header handling); `line` and `mdt` are left as 1 and `None`.
    pub fn parse_line(text: &str) -> Result<Self, ParseError> {
        parse_request_line(text, 1, None).map_err(|kind| ParseError { line: 1, kind })
    }
}

impl FromStr for ActiveRequest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_line(s)
    }
}

impl fmt::Display for ActiveRequest {
    /// `fid=.. dfid=.. compound/cookie=.. action=.. archive#=.. flags=.. extent=..-.. gid=..
    /// data=[..]`, then ` canceled=..`, ` uuid=..`, ` done=..` for those present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_common(
            f,
            &Common {
                fid: self.fid,
                dfid: self.dfid,
                compound_id: self.compound_id,
                cookie: self.cookie,
                action: self.action,
                archive_id: self.archive_id,
                flags: self.flags,
                extent: self.extent,
                gid: self.gid,
            },
        )?;
        write!(f, " data=[{}]", HexDump(&self.data))?;
        if let Some(c) = self.canceled {
            write!(f, " canceled={}", u8::from(c))?;
        }
        if let Some(u) = &self.uuid {
            write!(f, " uuid={u}")?;
        }
        if let Some(d) = self.done {
            write!(f, " done={d}")?;
        }
        Ok(())
    }
}

/// One line of `hsm/actions`: a record of the coordinator's llog, in any status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActionRecord {
    /// `lrh=[type=..]`: llog record type (`HSM_AGENT_REC` = 0x10680000).
    pub lrh_type: u32,
    /// `lrh=[len=..]`: record length (136 + data length, rounded up to 8).
    pub lrh_len: u32,
    /// `lrh=[idx=N/..]`: catalog index of the plain llog holding the record.
    pub cat_idx: u32,
    /// `lrh=[idx=../N]`: record index in that plain llog.
    pub rec_idx: u32,
    /// `fid=`.
    pub fid: LuFid,
    /// `dfid=`.
    pub dfid: LuFid,
    /// First half of `compound/cookie=` (non-zero only in records written before 2.11).
    pub compound_id: u64,
    /// Second half of `compound/cookie=`.
    pub cookie: u64,
    /// `action=`.
    pub action: HsmAction,
    /// `archive#=`.
    pub archive_id: u32,
    /// `flags=`.
    pub flags: u64,
    /// `extent=offset-length`.
    pub extent: HsmExtent,
    /// `gid=`.
    pub gid: u64,
    /// `datalen=`: the real data length (`data` shows at most [`DATA_DUMP_MAX`] bytes).
    pub datalen: u32,
    /// `status=`.
    pub status: AgentReqStatus,
    /// `data=[..]`: the bytes shown.
    pub data: Vec<u8>,
    /// 1-based line number in the parsed text (not printed by `Display`).
    pub line: usize,
    /// MDT device name from the preceding `lctl` header, if any (not printed by `Display`).
    pub mdt: Option<String>,
}

impl ActionRecord {
    /// True if `data` shows fewer bytes than `datalen`.
    pub fn data_truncated(&self) -> bool {
        (self.datalen as usize) > self.data.len()
    }

    /// The action item of this record (data as shown, possibly truncated).
    pub fn to_action_item(&self) -> HsmActionItem {
        HsmActionItem {
            action: self.action,
            fid: self.fid,
            dfid: self.dfid,
            extent: self.extent,
            cookie: self.cookie,
            gid: self.gid,
            data: self.data.clone(),
        }
    }

    /// Parses one line (no header handling); `line` and `mdt` are left as 1 and `None`.
    pub fn parse_line(text: &str) -> Result<Self, ParseError> {
        parse_action_line(text, 1, None).map_err(|kind| ParseError { line: 1, kind })
    }
}

impl FromStr for ActionRecord {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_line(s)
    }
}

impl fmt::Display for ActionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `%d` of a u32 prints its signed image.
        write!(
            f,
            "lrh=[type={:X} len={} idx={}/{}] ",
            self.lrh_type, self.lrh_len as i32, self.cat_idx as i32, self.rec_idx as i32
        )?;
        write_common(
            f,
            &Common {
                fid: self.fid,
                dfid: self.dfid,
                compound_id: self.compound_id,
                cookie: self.cookie,
                action: self.action,
                archive_id: self.archive_id,
                flags: self.flags,
                extent: self.extent,
                gid: self.gid,
            },
        )?;
        write!(
            f,
            " datalen={} status={} data=[{}]",
            self.datalen as i32,
            self.status,
            HexDump(&self.data)
        )
    }
}

/// Fields both listings share.
struct Common {
    fid: LuFid,
    dfid: LuFid,
    compound_id: u64,
    cookie: u64,
    action: HsmAction,
    archive_id: u32,
    flags: u64,
    extent: HsmExtent,
    gid: u64,
}

fn write_common(f: &mut fmt::Formatter<'_>, c: &Common) -> fmt::Result {
    // Rust's `{:#x}` prints `0x0` for zero, like the kernel's `%#llx`.
    write!(
        f,
        "fid={} dfid={} compound/cookie={:#x}/{:#x} action={} archive#={} flags={:#x} extent={:#x}-{:#x} gid={:#x}",
        c.fid,
        c.dfid,
        c.compound_id,
        c.cookie,
        c.action,
        c.archive_id as i32,
        c.flags,
        c.extent.offset,
        c.extent.length,
        c.gid
    )
}

struct HexDump<'a>(&'a [u8]);

impl fmt::Display for HexDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// A listing line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// The field concerned, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match &self.kind {
            ParseErrorKind::LineTooLong { .. } => None,
            ParseErrorKind::MissingField { field }
            | ParseErrorKind::DuplicateField { field }
            | ParseErrorKind::InvalidValue { field, .. } => Some(field),
            ParseErrorKind::Unterminated { field } => Some(field),
        }
    }
}

/// What was wrong with a listing line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The line exceeds [`MAX_LINE_LEN`].
    #[error("line is {len} bytes long, more than the {max}-byte limit")]
    LineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field name as printed (`fid`, `compound/cookie`, `archive#`, ...).
        field: &'static str,
    },
    /// A field appears twice.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The field name.
        field: &'static str,
    },
    /// A `[` value has no matching `]` before the end of the line.
    #[error("field `{field}`: no closing ']' before the end of the line")]
    Unterminated {
        /// The key as written (it may be one this parser does not know).
        field: String,
    },
    /// A field's value is malformed.
    #[error("field `{field}`: {reason}: {value:?}")]
    InvalidValue {
        /// The field name.
        field: &'static str,
        /// The value (cut to 80 bytes).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> ParseErrorKind {
    let mut end = value.len().min(ERR_VALUE_MAX);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    ParseErrorKind::InvalidValue {
        field,
        value: value[..end].to_owned(),
        reason: reason.into(),
    }
}

/// The known keys, in the order missing ones are reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Lrh,
    Fid,
    Dfid,
    CompoundCookie,
    Action,
    Archive,
    Flags,
    Extent,
    Gid,
    Datalen,
    Status,
    Data,
    Canceled,
    Uuid,
    Done,
}

const KEYS: [(Key, &str); 15] = [
    (Key::Lrh, "lrh"),
    (Key::Fid, "fid"),
    (Key::Dfid, "dfid"),
    (Key::CompoundCookie, "compound/cookie"),
    (Key::Action, "action"),
    (Key::Archive, "archive#"),
    (Key::Flags, "flags"),
    (Key::Extent, "extent"),
    (Key::Gid, "gid"),
    (Key::Datalen, "datalen"),
    (Key::Status, "status"),
    (Key::Data, "data"),
    (Key::Canceled, "canceled"),
    (Key::Uuid, "uuid"),
    (Key::Done, "done"),
];

/// The values of the known keys found on one line.
struct Fields<'a> {
    values: [Option<&'a str>; KEYS.len()],
}

impl<'a> Fields<'a> {
    fn scan(line: &'a str) -> Result<Self, ParseErrorKind> {
        let mut fields = Fields {
            values: [None; KEYS.len()],
        };
        for (key, value) in Tokens::new(line) {
            let value = value?;
            if let Some(i) = KEYS.iter().position(|(_, name)| *name == key) {
                if fields.values[i].is_some() {
                    return Err(ParseErrorKind::DuplicateField { field: KEYS[i].1 });
                }
                fields.values[i] = Some(value);
            }
        }
        Ok(fields)
    }

    fn get(&self, key: Key) -> Option<(&'static str, &'a str)> {
        let i = KEYS.iter().position(|(k, _)| *k == key)?;
        self.values[i].map(|v| (KEYS[i].1, v))
    }

    fn required(&self, key: Key) -> Result<(&'static str, &'a str), ParseErrorKind> {
        self.get(key).ok_or_else(|| ParseErrorKind::MissingField {
            field: KEYS.iter().find(|(k, _)| *k == key).map_or("?", |(_, n)| n),
        })
    }
}

/// Splits a line into `key=value` fields: a field starts at the line start or after
/// whitespace; a value starting with `[` extends to its matching `]`. Words without `=`
/// are skipped.
struct Tokens<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a str) -> Self {
        Self { line, pos: 0 }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (&'a str, Result<&'a str, ParseErrorKind>);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.line.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.pos >= b.len() {
                return None;
            }
            let start = self.pos;
            while self.pos < b.len() && b[self.pos] != b'=' && !b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.pos >= b.len() || b[self.pos] != b'=' {
                continue; // a bare word: not a field
            }
            let key = &self.line[start..self.pos];
            self.pos += 1;
            let vstart = self.pos;
            if b.get(self.pos) == Some(&b'[') {
                let mut depth = 0usize;
                let mut closed = false;
                while self.pos < b.len() {
                    match b[self.pos] {
                        b'[' => depth += 1,
                        b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                closed = true;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
                if !closed {
                    self.pos = b.len();
                    return Some((
                        key,
                        Err(ParseErrorKind::Unterminated {
                            field: key.to_owned(),
                        }),
                    ));
                }
            }
            while self.pos < b.len() && !b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            return Some((key, Ok(&self.line[vstart..self.pos])));
        }
    }
}

/// Parses a C base-0 unsigned number (`0x` hex, leading `0` octal, else decimal).
fn parse_base0(s: &str) -> Result<u64, String> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return Err("expected a number".into());
    }
    // One pass: digit check and accumulation with overflow detection.
    let mut n: u64 = 0;
    for c in digits.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => u8::MAX,
        };
        if u32::from(d) >= radix {
            let base = match radix {
                16 => "hexadecimal",
                8 => "octal",
                _ => "decimal",
            };
            return Err(format!("not a {base} number"));
        }
        n = n
            .checked_mul(u64::from(radix))
            .and_then(|n| n.checked_add(u64::from(d)))
            .ok_or_else(|| String::from("number does not fit in 64 bits"))?;
    }
    Ok(n)
}

fn num_u64(field: &'static str, v: &str) -> Result<u64, ParseErrorKind> {
    parse_base0(v).map_err(|r| invalid(field, v, r))
}

/// A value the kernel prints with `%d` from a 32-bit field: accepts `-2^31..2^32`.
fn num_c_int(field: &'static str, v: &str) -> Result<u32, ParseErrorKind> {
    let (neg, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    let n = parse_base0(digits).map_err(|r| invalid(field, v, r))?;
    if neg {
        if n > 1 << 31 {
            return Err(invalid(field, v, "below the 32-bit range"));
        }
        Ok((n as i64).wrapping_neg() as i32 as u32)
    } else {
        u32::try_from(n).map_err(|_| invalid(field, v, "does not fit in 32 bits"))
    }
}

fn fid(field: &'static str, v: &str) -> Result<LuFid, ParseErrorKind> {
    if !(v.starts_with('[') && v.ends_with(']')) {
        return Err(invalid(field, v, "expected [seq:oid:ver]"));
    }
    // Kernel FIDs are 0x-prefixed hex; parse each part base-0 like the rest of the line.
    let inner = &v[1..v.len() - 1];
    let mut parts = inner.split(':');
    let (Some(seq), Some(oid), Some(ver), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(field, v, "expected three ':'-separated numbers"));
    };
    let seq = parse_base0(seq).map_err(|r| invalid(field, v, format!("sequence: {r}")))?;
    let part32 = |s: &str, what: &str| {
        parse_base0(s)
            .and_then(|n| u32::try_from(n).map_err(|_| "does not fit in 32 bits".into()))
            .map_err(|r| invalid(field, v, format!("{what}: {r}")))
    };
    Ok(LuFid::new(
        seq,
        part32(oid, "object id")?,
        part32(ver, "version")?,
    ))
}

fn pair<'v>(
    field: &'static str,
    v: &'v str,
    sep: char,
    shape: &str,
) -> Result<(&'v str, &'v str), ParseErrorKind> {
    v.split_once(sep)
        .ok_or_else(|| invalid(field, v, format!("expected {shape}")))
}

fn hex_data(field: &'static str, v: &str) -> Result<Vec<u8>, ParseErrorKind> {
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| invalid(field, v, "expected [hex bytes]"))?;
    let b = inner.as_bytes();
    if let Some(i) = b.iter().position(|c| !c.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            v,
            format!("character {} inside [] is not a hex digit", i + 1),
        ));
    }
    if b.len() % 2 != 0 {
        return Err(invalid(field, v, "odd number of hex digits"));
    }
    Ok(b.chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            d(p[0]) << 4 | d(p[1])
        })
        .collect())
}

fn action(field: &'static str, v: &str) -> Result<HsmAction, ParseErrorKind> {
    HsmAction::from_name(v).ok_or_else(|| {
        invalid(
            field,
            v,
            "unknown action (expected NOOP, ARCHIVE, RESTORE, REMOVE or CANCEL)",
        )
    })
}

fn parse_common(f: &Fields<'_>) -> Result<Common, ParseErrorKind> {
    let (k, v) = f.required(Key::Fid)?;
    let fid_v = fid(k, v)?;
    let (k, v) = f.required(Key::Dfid)?;
    let dfid = fid(k, v)?;
    let (k, v) = f.required(Key::CompoundCookie)?;
    let (c, ck) = pair(k, v, '/', "<compound id>/<cookie>")?;
    let compound_id = num_u64(k, c)?;
    let cookie = num_u64(k, ck)?;
    let (k, v) = f.required(Key::Action)?;
    let action = action(k, v)?;
    let (k, v) = f.required(Key::Archive)?;
    let archive_id = num_c_int(k, v)?;
    let (k, v) = f.required(Key::Flags)?;
    let flags = num_u64(k, v)?;
    let (k, v) = f.required(Key::Extent)?;
    let (o, l) = pair(k, v, '-', "<offset>-<length>")?;
    let extent = HsmExtent::new(num_u64(k, o)?, num_u64(k, l)?);
    let (k, v) = f.required(Key::Gid)?;
    let gid = num_u64(k, v)?;
    Ok(Common {
        fid: fid_v,
        dfid,
        compound_id,
        cookie,
        action,
        archive_id,
        flags,
        extent,
        gid,
    })
}

fn parse_request_line(
    text: &str,
    line: usize,
    mdt: Option<&str>,
) -> Result<ActiveRequest, ParseErrorKind> {
    let f = Fields::scan(text)?;
    let c = parse_common(&f)?;
    let (k, v) = f.required(Key::Data)?;
    let data = hex_data(k, v)?;
    let canceled = match f.get(Key::Canceled) {
        None => None,
        Some((k, v)) => Some(match num_c_int(k, v)? {
            0 => false,
            1 => true,
            _ => return Err(invalid(k, v, "expected 0 or 1")),
        }),
    };
    let uuid = f.get(Key::Uuid).map(|(_, v)| v.to_owned());
    let done = f.get(Key::Done).map(|(k, v)| num_u64(k, v)).transpose()?;
    Ok(ActiveRequest {
        fid: c.fid,
        dfid: c.dfid,
        compound_id: c.compound_id,
        cookie: c.cookie,
        action: c.action,
        archive_id: c.archive_id,
        flags: c.flags,
        extent: c.extent,
        gid: c.gid,
        data,
        canceled,
        uuid,
        done,
        line,
        mdt: mdt.map(str::to_owned),
    })
}

/// Parses the inside of `lrh=[type=%X len=%d idx=%d/%d]`.
fn parse_lrh(field: &'static str, v: &str) -> Result<(u32, u32, u32, u32), ParseErrorKind> {
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| invalid(field, v, "expected [type=.. len=.. idx=../..]"))?;
    let (mut ty, mut len, mut idx) = (None, None, None);
    for (key, value) in Tokens::new(inner) {
        let value = value?;
        let slot = match key {
            "type" => &mut ty,
            "len" => &mut len,
            "idx" => &mut idx,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(invalid(field, v, format!("`{key}` appears twice")));
        }
    }
    let missing = |what: &str| invalid(field, v, format!("missing `{what}=`"));
    let ty = ty.ok_or_else(|| missing("type"))?;
    let hex = ty
        .strip_prefix("0x")
        .or_else(|| ty.strip_prefix("0X"))
        .unwrap_or(ty);
    let ty = u32::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(field, v, "type is not a 32-bit hex number"))?;
    let len = num_c_int(field, len.ok_or_else(|| missing("len"))?)?;
    let idx = idx.ok_or_else(|| missing("idx"))?;
    let (cat, rec) = idx
        .split_once('/')
        .ok_or_else(|| invalid(field, v, "expected idx=<catalog index>/<record index>"))?;
    Ok((ty, len, num_c_int(field, cat)?, num_c_int(field, rec)?))
}

fn parse_action_line(
    text: &str,
    line: usize,
    mdt: Option<&str>,
) -> Result<ActionRecord, ParseErrorKind> {
    let f = Fields::scan(text)?;
    let (k, v) = f.required(Key::Lrh)?;
    let (lrh_type, lrh_len, cat_idx, rec_idx) = parse_lrh(k, v)?;
    let c = parse_common(&f)?;
    let (k, v) = f.required(Key::Datalen)?;
    let datalen = num_c_int(k, v)?;
    let (k, v) = f.required(Key::Status)?;
    let status = AgentReqStatus::from_name(v).ok_or_else(|| {
        invalid(
            k,
            v,
            "unknown status (expected WAITING, STARTED, FAILED, CANCELED or SUCCEED)",
        )
    })?;
    let (k, v) = f.required(Key::Data)?;
    let data = hex_data(k, v)?;
    Ok(ActionRecord {
        lrh_type,
        lrh_len,
        cat_idx,
        rec_idx,
        fid: c.fid,
        dfid: c.dfid,
        compound_id: c.compound_id,
        cookie: c.cookie,
        action: c.action,
        archive_id: c.archive_id,
        flags: c.flags,
        extent: c.extent,
        gid: c.gid,
        datalen,
        status,
        data,
        line,
        mdt: mdt.map(str::to_owned),
    })
}

/// One request line of a listing, after header and blank-line handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListingLine<'a> {
    /// 1-based line number.
    pub line: usize,
    /// The request text (for a header line carrying a request: the part after `=`).
    pub text: &'a str,
    /// MDT device name of the most recent `lctl` header.
    pub mdt: Option<&'a str>,
}

/// Splits a listing into request lines: skips blank lines and `lctl` headers (keeping the
/// request an `lctl` header line may carry), strips `\r`, rejects over-long lines.
#[derive(Clone, Debug)]
pub struct ListingLines<'a> {
    rest: &'a str,
    line: usize,
    mdt: Option<&'a str>,
}

impl<'a> ListingLines<'a> {
    /// Iterates over `text`.
    pub fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            line: 0,
            mdt: None,
        }
    }
}

/// If `line` is an `lctl get_param` header (`mdt.<dev>.hsm.<name>=...`), returns the device
/// name and what follows the `=`.
fn split_header(line: &str) -> Option<(&str, &str)> {
    let after = line.strip_prefix("mdt.")?;
    let (key, rest) = after.split_once('=')?;
    if key.is_empty() || key.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let dev = match key.split_once(".hsm.") {
        Some((dev, _)) => dev,
        None => key.rsplit_once('.').map_or(key, |(dev, _)| dev),
    };
    Some((dev, rest))
}

impl<'a> Iterator for ListingLines<'a> {
    type Item = Result<ListingLine<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (raw, rest) = match self.rest.split_once('\n') {
                Some((l, r)) => (l, r),
                None => (self.rest, ""),
            };
            self.rest = rest;
            self.line += 1;
            let line = self.line;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.len() > MAX_LINE_LEN {
                return Some(Err(ParseError {
                    line,
                    kind: ParseErrorKind::LineTooLong {
                        len: raw.len(),
                        max: MAX_LINE_LEN,
                    },
                }));
            }
            let text = match split_header(raw) {
                Some((dev, rest)) => {
                    self.mdt = Some(dev);
                    rest
                }
                None => raw,
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(Ok(ListingLine {
                line,
                text,
                mdt: self.mdt,
            }));
        }
    }
}

impl std::iter::FusedIterator for ListingLines<'_> {}

/// Iterator over the requests of an `active_requests` listing; see [`parse_active_requests`].
#[derive(Clone, Debug)]
pub struct ActiveRequests<'a> {
    lines: ListingLines<'a>,
}

impl Iterator for ActiveRequests<'_> {
    type Item = Result<ActiveRequest, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let l = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(
            parse_request_line(l.text, l.line, l.mdt)
                .map_err(|kind| ParseError { line: l.line, kind }),
        )
    }
}

impl std::iter::FusedIterator for ActiveRequests<'_> {}

/// Iterator over the records of an `actions` listing; see [`parse_actions`].
#[derive(Clone, Debug)]
pub struct ActionRecords<'a> {
    lines: ListingLines<'a>,
}

impl Iterator for ActionRecords<'_> {
    type Item = Result<ActionRecord, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let l = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(
            parse_action_line(l.text, l.line, l.mdt)
                .map_err(|kind| ParseError { line: l.line, kind }),
        )
    }
}

impl std::iter::FusedIterator for ActionRecords<'_> {}

/// Parses an `active_requests` listing (debugfs file or `lctl get_param` output), one
/// result per request line; bad lines yield an error and parsing goes on.
pub fn parse_active_requests(text: &str) -> ActiveRequests<'_> {
    ActiveRequests {
        lines: ListingLines::new(text),
    }
}

/// Parses a whole `active_requests` listing, failing on the first bad line.
pub fn parse_all(text: &str) -> Result<Vec<ActiveRequest>, ParseError> {
    parse_active_requests(text).collect()
}

/// Parses an `actions` listing, one result per record line.
pub fn parse_actions(text: &str) -> ActionRecords<'_> {
    ActionRecords {
        lines: ListingLines::new(text),
    }
}

/// Parses a whole `actions` listing, failing on the first bad line.
pub fn parse_all_actions(text: &str) -> Result<Vec<ActionRecord>, ParseError> {
    parse_actions(text).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base0_numbers() {
        assert_eq!(parse_base0("0x1f"), Ok(31));
        assert_eq!(parse_base0("0X1F"), Ok(31));
        assert_eq!(parse_base0("017"), Ok(15));
        assert_eq!(parse_base0("0"), Ok(0));
        assert_eq!(parse_base0("42"), Ok(42));
        assert_eq!(parse_base0("0xffffffffffffffff"), Ok(u64::MAX));
        assert!(parse_base0("0x").is_err());
        assert!(parse_base0("08").is_err());
        assert!(parse_base0("").is_err());
        assert!(parse_base0("+1").is_err());
        assert!(parse_base0("0x10000000000000000").is_err());
        assert!(parse_base0("1a").is_err());
    }

    #[test]
    fn c_int_numbers() {
        assert_eq!(num_c_int("x", "1"), Ok(1));
        assert_eq!(num_c_int("x", "-1"), Ok(u32::MAX));
        assert_eq!(num_c_int("x", "-2147483648"), Ok(0x8000_0000));
        assert!(num_c_int("x", "-2147483649").is_err());
        assert_eq!(num_c_int("x", "4294967295"), Ok(u32::MAX));
        assert!(num_c_int("x", "4294967296").is_err());
        assert!(num_c_int("x", "-").is_err());
    }

    #[test]
    fn tokens_keep_brackets_whole() {
        let t: Vec<_> = Tokens::new("lrh=[type=1 len=2 idx=3/4] word data=[a b] k=v x=[[y]]z")
            .map(|(k, v)| (k, v.unwrap()))
            .collect();
        assert_eq!(
            t,
            [
                ("lrh", "[type=1 len=2 idx=3/4]"),
                ("data", "[a b]"),
                ("k", "v"),
                ("x", "[[y]]z"),
            ]
        );
        let mut t = Tokens::new("a=1 data=[0102 b=2");
        assert_eq!(t.next(), Some(("a", Ok("1"))));
        assert_eq!(
            t.next(),
            Some((
                "data",
                Err(ParseErrorKind::Unterminated {
                    field: "data".into()
                })
            ))
        );
        assert_eq!(t.next(), None);
    }

    #[test]
    fn header_detection() {
        assert_eq!(
            split_header("mdt.fs-MDT0000.hsm.active_requests="),
            Some(("fs-MDT0000", ""))
        );
        assert_eq!(
            split_header("mdt.fs-MDT0001.hsm.actions=lrh=[type=1]"),
            Some(("fs-MDT0001", "lrh=[type=1]"))
        );
        assert_eq!(split_header("fid=[0x1:0x2:0x0]"), None);
        assert_eq!(split_header("mdt. x=1"), None);
    }

    #[test]
    fn status_names() {
        for s in AgentReqStatus::ALL {
            assert_eq!(AgentReqStatus::from_name(s.name()), Some(s));
            assert_eq!(AgentReqStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(AgentReqStatus::from_name("UNKNOWN"), None);
        assert!(AgentReqStatus::Canceled.is_final());
        assert!(!AgentReqStatus::Started.is_final());
    }
}
