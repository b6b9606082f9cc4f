//! Copytool actions, user actions, HSM file states and progress flags.

use std::fmt;

/// What a copytool is asked to do (`enum hsm_copytool_action`, the `hai_action` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum HsmAction {
    /// `HSMA_NONE` (10): no operation.
    None = 10,
    /// `HSMA_ARCHIVE` (20): copy the file to the archive.
    Archive = 20,
    /// `HSMA_RESTORE` (21): bring the file's data back from the archive.
    Restore = 21,
    /// `HSMA_REMOVE` (22): delete the archived copy.
    Remove = 22,
    /// `HSMA_CANCEL` (23): stop a running action with the same cookie.
    Cancel = 23,
}

impl HsmAction {
    /// Every action, in code order.
    pub const ALL: [HsmAction; 5] = [
        HsmAction::None,
        HsmAction::Archive,
        HsmAction::Restore,
        HsmAction::Remove,
        HsmAction::Cancel,
    ];

    /// The numeric code Lustre uses.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Maps a numeric code back to an action, `None` for an unknown code.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            10 => HsmAction::None,
            20 => HsmAction::Archive,
            21 => HsmAction::Restore,
            22 => HsmAction::Remove,
            23 => HsmAction::Cancel,
            _ => return None,
        })
    }

    /// The name Lustre prints (`hsm_copytool_action2name`): `NOOP`, `ARCHIVE`, ...
    pub const fn name(self) -> &'static str {
        match self {
            HsmAction::None => "NOOP",
            HsmAction::Archive => "ARCHIVE",
            HsmAction::Restore => "RESTORE",
            HsmAction::Remove => "REMOVE",
            HsmAction::Cancel => "CANCEL",
        }
    }

    /// Parses the name Lustre prints (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        HsmAction::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for HsmAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a user asks for (`enum hsm_user_action`, `hr_action` of an `hsm_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum HsmUserAction {
    /// `HUA_NONE` (1).
    None = 1,
    /// `HUA_ARCHIVE` (10).
    Archive = 10,
    /// `HUA_RESTORE` (11).
    Restore = 11,
    /// `HUA_RELEASE` (12).
    Release = 12,
    /// `HUA_REMOVE` (13).
    Remove = 13,
    /// `HUA_CANCEL` (14).
    Cancel = 14,
}

impl HsmUserAction {
    /// The numeric code Lustre uses.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// Maps a numeric code back to a user action.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => HsmUserAction::None,
            10 => HsmUserAction::Archive,
            11 => HsmUserAction::Restore,
            12 => HsmUserAction::Release,
            13 => HsmUserAction::Remove,
            14 => HsmUserAction::Cancel,
            _ => return None,
        })
    }

    /// The name Lustre prints (`hsm_user_action2name`).
    pub const fn name(self) -> &'static str {
        match self {
            HsmUserAction::None => "NOOP",
            HsmUserAction::Archive => "ARCHIVE",
            HsmUserAction::Restore => "RESTORE",
            HsmUserAction::Release => "RELEASE",
            HsmUserAction::Remove => "REMOVE",
            HsmUserAction::Cancel => "CANCEL",
        }
    }
}

macro_rules! bitflags_u32 {
    ($(#[$m:meta])* $name:ident : $t:ty { $($(#[$fm:meta])* $flag:ident = $v:expr, $s:literal;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub $t);

        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($v);)*
            /// Every named flag with its name.
            pub const NAMED: &'static [($name, &'static str)] = &[$(($name::$flag, $s)),*];

            /// The raw bits.
            pub const fn bits(self) -> $t { self.0 }
            /// True if every bit of `other` is set.
            pub const fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }
            /// True if any bit of `other` is set.
            pub const fn intersects(self, other: $name) -> bool { self.0 & other.0 != 0 }
            /// Sets the bits of `other`.
            pub fn insert(&mut self, other: $name) { self.0 |= other.0; }
            /// Clears the bits of `other`.
            pub fn remove(&mut self, other: $name) { self.0 &= !other.0; }
            /// True if no bit is set.
            pub const fn is_empty(self) -> bool { self.0 == 0 }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { $name(self.0 | rhs.0) }
        }
        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) { self.0 |= rhs.0; }
        }
    };
}

bitflags_u32! {
    /// Per-file HSM state bits (`enum hsm_states`, `hus_states`).
    HsmStates: u32 {
        /// `HS_EXISTS`: a copy exists (or is being made) in the archive.
        EXISTS = 0x1, "exists";
        /// `HS_DIRTY`: the file changed since it was archived.
        DIRTY = 0x2, "dirty";
        /// `HS_RELEASED`: the data was dropped from Lustre; only the archive has it.
        RELEASED = 0x4, "released";
        /// `HS_ARCHIVED`: the archive copy is complete and current.
        ARCHIVED = 0x8, "archived";
        /// `HS_NORELEASE`: never release this file.
        NORELEASE = 0x10, "never_release";
        /// `HS_NOARCHIVE`: never archive this file.
        NOARCHIVE = 0x20, "never_archive";
        /// `HS_LOST`: the archive copy is lost.
        LOST = 0x40, "lost_from_hsm";
    }
}

impl HsmStates {
    /// `HSM_USER_MASK`: the bits a user may set or clear.
    pub const USER_MASK: HsmStates = HsmStates(0x10 | 0x20 | 0x2);
}

bitflags_u32! {
    /// Progress flags (`HP_FLAG_*`) passed to `action_progress` / `action_end`.
    HsmProgressFlags: u32 {
        /// `HP_FLAG_COMPLETED`: the action is finished.
        COMPLETED = 0x1, "completed";
        /// `HP_FLAG_RETRY`: the failure is transient; the coordinator may retry.
        RETRY = 0x2, "retry";
    }
}

bitflags_u32! {
    /// Request flags (`hr_flags` of a user request, `hal_flags` of a list).
    HsmRequestFlags: u32 {
        /// `HSM_FORCE_ACTION`: ignore the file's HSM state checks.
        FORCE_ACTION = 0x1, "force";
        /// `HSM_GHOST_COPY`: copytool-internal.
        GHOST_COPY = 0x2, "ghost";
        /// `HSM_REQ_BLOCKING` (2.17+): implicit restore triggered by I/O.
        REQ_BLOCKING = 0x4, "blocking";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_and_names_round_trip() {
        for a in HsmAction::ALL {
            assert_eq!(HsmAction::from_code(a.code()), Some(a));
            assert_eq!(HsmAction::from_name(a.name()), Some(a));
        }
        assert_eq!(HsmAction::Archive.code(), 20);
        assert_eq!(HsmAction::Cancel.code(), 23);
        assert_eq!(HsmAction::from_code(24), None);
        assert_eq!(HsmAction::from_name("archive"), None);
    }

    #[test]
    fn user_action_codes() {
        for c in 0..20 {
            if let Some(a) = HsmUserAction::from_code(c) {
                assert_eq!(a.code(), c);
            }
        }
        assert_eq!(HsmUserAction::Cancel.code(), 14);
        assert_eq!(HsmUserAction::Release.name(), "RELEASE");
    }

    #[test]
    fn flags_behave() {
        let mut s = HsmStates::EXISTS | HsmStates::ARCHIVED;
        assert!(s.contains(HsmStates::EXISTS));
        assert!(!s.contains(HsmStates::EXISTS | HsmStates::DIRTY));
        s.insert(HsmStates::DIRTY);
        s.remove(HsmStates::ARCHIVED);
        assert_eq!(s.bits(), 0x3);
        assert!(HsmStates::USER_MASK.contains(HsmStates::DIRTY));
    }
}
