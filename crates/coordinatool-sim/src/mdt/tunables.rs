//! Coordinator tunables (`mdt.<mdt>.hsm.*`), their parsing and their read-back text.

use coordinatool_lustre::HsmAction;

use super::Errno;

/// Coordinator policy bits (`policy` tunable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Policy(pub u32);

impl Policy {
    /// `CDT_NONBLOCKING_RESTORE` ("NonBlockingRestore", "NBR").
    pub const NBR: Policy = Policy(1);
    /// `CDT_NORETRY_ACTION` ("NoRetryAction", "NRA").
    pub const NRA: Policy = Policy(2);
    /// `CDT_DEFAULT_POLICY` = NoRetryAction.
    pub const DEFAULT: Policy = Policy::NRA;

    const NAMES: [(Policy, &'static str, &'static str); 2] = [
        (Policy::NBR, "NonBlockingRestore", "NBR"),
        (Policy::NRA, "NoRetryAction", "NRA"),
    ];

    /// True if every bit of `p` is set.
    pub const fn contains(self, p: Policy) -> bool {
        self.0 & p.0 == p.0
    }

    /// The read-back text: each long name, bracketed when set, space separated, newline.
    pub fn render(self) -> String {
        let mut out = String::new();
        for (i, (bit, long, _)) in Self::NAMES.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            if self.contains(*bit) {
                out.push('[');
                out.push_str(long);
                out.push(']');
            } else {
                out.push_str(long);
            }
        }
        out.push('\n');
        out
    }

    /// Applies a write: bare names set the policy exactly, `+X` adds, `-X` removes.
    /// Long names and nicknames are accepted; anything else is `EINVAL`.
    pub fn parse_update(self, input: &str) -> Result<Policy, Errno> {
        let (mut set, mut add, mut del, mut any_bare) = (0u32, 0u32, 0u32, false);
        for tok in input.split_whitespace() {
            let (sign, name) = match tok.as_bytes()[0] {
                b'+' => (1, &tok[1..]),
                b'-' => (-1, &tok[1..]),
                _ => (0, tok),
            };
            let bit = Self::NAMES
                .iter()
                .find(|(_, l, s)| *l == name || *s == name)
                .map(|(b, _, _)| b.0)
                .ok_or(Errno::EINVAL)?;
            match sign {
                1 => add |= bit,
                -1 => del |= bit,
                _ => {
                    set |= bit;
                    any_bare = true;
                }
            }
        }
        let base = if any_bare { set } else { self.0 };
        Ok(Policy((base | add) & !del))
    }
}

/// A set of copytool actions (`*_request_mask` tunables); bit `1 << action code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ActionMask(pub u64);

impl ActionMask {
    /// Only RESTORE, the default of the three masks.
    pub const RESTORE_ONLY: ActionMask = ActionMask(1 << HsmAction::Restore as u32);

    /// True if `a` is in the mask.
    pub const fn contains(self, a: HsmAction) -> bool {
        self.0 & (1 << a as u32) != 0
    }

    /// The read-back text: names of the set actions in code order, single spaces, newline.
    pub fn render(self) -> String {
        let names: Vec<&str> = HsmAction::ALL
            .iter()
            .filter(|a| self.contains(**a))
            .map(|a| a.name())
            .collect();
        let mut out = names.join(" ");
        out.push('\n');
        out
    }

    /// Parses a write: action names separated by whitespace, case-insensitive.
    pub fn parse(input: &str) -> Result<ActionMask, Errno> {
        let mut m = 0u64;
        for tok in input.split_whitespace() {
            let up = tok.to_ascii_uppercase();
            let a = HsmAction::from_name(&up).ok_or(Errno::EINVAL)?;
            m |= 1 << a as u32;
        }
        Ok(ActionMask(m))
    }
}

/// The writable coordinator tunables, with the Lustre defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// Seconds between housekeeping scans (default 10, never 0).
    pub loop_period: u32,
    /// Seconds a finished record stays in the log (default 60).
    pub grace_delay: u32,
    /// Seconds without progress before a STARTED request is canceled (default 3600).
    pub active_request_timeout: u32,
    /// Maximum concurrently active items on this MDT (default 3, never 0).
    pub max_requests: u64,
    /// Archive id used when neither request nor file give one (default 1, never 0).
    pub default_archive_id: u32,
    /// Create a REMOVE when the last link of an archived file goes away (default off).
    pub remove_archive_on_last_unlink: bool,
    /// Coordinator policy (default NoRetryAction).
    pub policy: Policy,
    /// Actions a non-admin owner may request.
    pub user_request_mask: ActionMask,
    /// Actions a non-admin group member may request.
    pub group_request_mask: ActionMask,
    /// Actions any other non-admin user may request.
    pub other_request_mask: ActionMask,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            loop_period: 10,
            grace_delay: 60,
            active_request_timeout: 3600,
            max_requests: 3,
            default_archive_id: 1,
            remove_archive_on_last_unlink: false,
            policy: Policy::DEFAULT,
            user_request_mask: ActionMask::RESTORE_ONLY,
            group_request_mask: ActionMask::RESTORE_ONLY,
            other_request_mask: ActionMask::RESTORE_ONLY,
        }
    }
}

/// Parses an unsigned decimal the way the kernel's `kstrtouint` does (a trailing newline is
/// allowed, a `0x` prefix is accepted).
pub(crate) fn parse_uint(input: &str) -> Result<u64, Errno> {
    let s = input.strip_suffix('\n').unwrap_or(input);
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None if s.len() > 1 && s.starts_with('0') => (&s[1..], 8),
        None => (s, 10),
    };
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || digits.starts_with('+') {
        return Err(Errno::EINVAL);
    }
    u64::from_str_radix(digits, radix).map_err(|_| Errno::EINVAL)
}

fn parse_u32(input: &str) -> Result<u32, Errno> {
    u32::try_from(parse_uint(input)?).map_err(|_| Errno::EINVAL)
}

fn parse_bool(input: &str) -> Result<bool, Errno> {
    // kstrtobool: first character decides.
    match input.trim().as_bytes() {
        [b'1' | b'y' | b'Y', ..] => Ok(true),
        [b'0' | b'n' | b'N', ..] => Ok(false),
        [b'o' | b'O', b'n' | b'N', ..] => Ok(true),
        [b'o' | b'O', b'f' | b'F', ..] => Ok(false),
        _ => Err(Errno::EINVAL),
    }
}

/// Which tree a parameter lives in: it decides the order lctl lists them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamTree {
    /// `/sys/fs/lustre/mdt/<mdt>/hsm/` (plain values).
    Sysfs,
    /// `/sys/kernel/debug/lustre/mdt/<mdt>/hsm/` (listings and text values).
    Debugfs,
}

/// Every `hsm.*` parameter name with its tree and whether it can be written.
pub const HSM_PARAMS: &[(&str, ParamTree, bool)] = &[
    ("active_request_timeout", ParamTree::Sysfs, true),
    ("archive_count", ParamTree::Sysfs, false),
    ("default_archive_id", ParamTree::Sysfs, true),
    ("grace_delay", ParamTree::Sysfs, true),
    ("loop_period", ParamTree::Sysfs, true),
    ("max_requests", ParamTree::Sysfs, true),
    ("remove_archive_on_last_unlink", ParamTree::Sysfs, true),
    ("remove_count", ParamTree::Sysfs, false),
    ("restore_count", ParamTree::Sysfs, false),
    ("actions", ParamTree::Debugfs, false),
    ("active_requests", ParamTree::Debugfs, false),
    ("agents", ParamTree::Debugfs, false),
    ("group_request_mask", ParamTree::Debugfs, true),
    ("other_request_mask", ParamTree::Debugfs, true),
    ("policy", ParamTree::Debugfs, true),
    ("user_request_mask", ParamTree::Debugfs, true),
];

impl Tunables {
    /// Reads a writable tunable's text (with its newline); `None` for other names.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "loop_period" => format!("{}\n", self.loop_period),
            "grace_delay" => format!("{}\n", self.grace_delay),
            "active_request_timeout" => format!("{}\n", self.active_request_timeout as i32),
            "max_requests" => format!("{}\n", self.max_requests),
            "default_archive_id" => format!("{}\n", self.default_archive_id),
            "remove_archive_on_last_unlink" => {
                format!("{}\n", u32::from(self.remove_archive_on_last_unlink))
            }
            "policy" => self.policy.render(),
            "user_request_mask" => self.user_request_mask.render(),
            "group_request_mask" => self.group_request_mask.render(),
            "other_request_mask" => self.other_request_mask.render(),
            _ => return None,
        })
    }

    /// Writes a tunable. `Ok(false)` means the name is not a writable tunable.
    /// Invalid values are `EINVAL` and leave the tunable unchanged.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, Errno> {
        match name {
            "loop_period" => {
                let v = parse_u32(value)?;
                if v == 0 {
                    return Err(Errno::EINVAL);
                }
                self.loop_period = v;
            }
            "grace_delay" => self.grace_delay = parse_u32(value)?,
            "active_request_timeout" => {
                let v = parse_u32(value)?;
                if v > i32::MAX as u32 {
                    return Err(Errno::EINVAL);
                }
                self.active_request_timeout = v;
            }
            "max_requests" => {
                let v = parse_uint(value)?;
                if v == 0 {
                    return Err(Errno::EINVAL);
                }
                self.max_requests = v;
            }
            "default_archive_id" => {
                let v = parse_u32(value)?;
                if v == 0 {
                    return Err(Errno::EINVAL);
                }
                self.default_archive_id = v;
            }
            "remove_archive_on_last_unlink" => {
                self.remove_archive_on_last_unlink = parse_bool(value)?
            }
            "policy" => self.policy = self.policy.parse_update(value)?,
            "user_request_mask" => self.user_request_mask = ActionMask::parse(value)?,
            "group_request_mask" => self.group_request_mask = ActionMask::parse(value)?,
            "other_request_mask" => self.other_request_mask = ActionMask::parse(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_read_back_like_lustre() {
        let t = Tunables::default();
        assert_eq!(
            t.get("policy").unwrap(),
            "NonBlockingRestore [NoRetryAction]\n"
        );
        assert_eq!(t.get("user_request_mask").unwrap(), "RESTORE\n");
        assert_eq!(t.get("max_requests").unwrap(), "3\n");
        assert_eq!(t.get("active_request_timeout").unwrap(), "3600\n");
        assert_eq!(t.get("loop_period").unwrap(), "10\n");
    }

    #[test]
    fn zero_is_rejected_where_lustre_rejects_it() {
        let mut t = Tunables::default();
        for name in ["loop_period", "max_requests", "default_archive_id"] {
            assert_eq!(t.set(name, "0\n"), Err(Errno::EINVAL), "{name}");
        }
        assert_eq!(t, Tunables::default());
        assert_eq!(t.set("grace_delay", "0"), Ok(true));
        assert_eq!(t.set("max_requests", "abc"), Err(Errno::EINVAL));
        assert_eq!(t.set("max_requests", "-1"), Err(Errno::EINVAL));
        assert_eq!(t.set("max_requests", "1000\n"), Ok(true));
        assert_eq!(t.max_requests, 1000);
        assert_eq!(t.set("archive_count", "1"), Ok(false));
    }

    #[test]
    fn policy_updates() {
        let p = Policy::DEFAULT;
        assert_eq!(p.parse_update("NBR").unwrap(), Policy::NBR);
        assert_eq!(p.parse_update("+NonBlockingRestore").unwrap().0, 3);
        assert_eq!(p.parse_update("-NRA").unwrap().0, 0);
        assert_eq!(p.parse_update("NBR NRA -NBR").unwrap(), Policy::NRA);
        assert_eq!(p.parse_update("bogus"), Err(Errno::EINVAL));
        assert_eq!(Policy(3).render(), "[NonBlockingRestore] [NoRetryAction]\n");
        assert_eq!(Policy(0).render(), "NonBlockingRestore NoRetryAction\n");
    }

    #[test]
    fn masks_parse_case_insensitive() {
        let m = ActionMask::parse("archive restore\n").unwrap();
        assert_eq!(m.render(), "ARCHIVE RESTORE\n");
        assert_eq!(ActionMask::parse("").unwrap().render(), "\n");
        assert_eq!(ActionMask::parse("RELEASE"), Err(Errno::EINVAL));
    }

    #[test]
    fn bool_and_uint_parsing() {
        let mut t = Tunables::default();
        t.set("remove_archive_on_last_unlink", "1\n").unwrap();
        assert!(t.remove_archive_on_last_unlink);
        assert_eq!(t.get("remove_archive_on_last_unlink").unwrap(), "1\n");
        assert_eq!(
            t.set("remove_archive_on_last_unlink", "x"),
            Err(Errno::EINVAL)
        );
        assert_eq!(parse_uint("0x10"), Ok(16));
        assert_eq!(parse_uint(""), Err(Errno::EINVAL));
    }
}
