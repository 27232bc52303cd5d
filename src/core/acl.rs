//! POSIX access control lists, stored as the extended attributes
//! `system.posix_acl_access` and `system.posix_acl_default` in the format
//! Linux gives them to filesystems (version 2; entries of tag u16, perm
//! u16, id u32, little-endian).
//!
//! The kernel enforces them (the mount asks for `FUSE_POSIX_ACL`, which
//! implies `default_permissions`) and caches them; the core keeps them and
//! the file mode in step, as Linux filesystems do:
//! - setting an access ACL sets the mode's permission bits from it (owner,
//!   mask or owning group, others); an ACL the mode alone can say is not
//!   stored; set-group-ID is dropped when the caller is not root and not in
//!   the file's group;
//! - a chmod rewrites the access ACL's owner, mask (or owning group) and
//!   other entries;
//! - a new inode under a directory with a default ACL takes that ACL masked
//!   by the mode asked for, instead of the umask, and a new directory takes
//!   the default ACL too.
//!
//! ACLs stay on this machine with the owners; backends keep plain files
//! and their mode bits.

use rusqlite::Connection;

use crate::core::{CoreError, CoreResult};
use crate::meta;
use crate::types::InodeNo;

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// What every stored ACL's name starts with.
pub(crate) const ACL_PREFIX: &[u8] = b"system.posix_acl_";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
/// Linux's limit for an ACL passed through FUSE (one page of entries).
const MAX_ENTRIES: usize = (4096 - 4) / 8;

pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A valid ACL, entries in the canonical order Linux checks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses and checks an attribute value. `None`: the value holds no
    /// entries (which removes the ACL, as with Linux's `setxattr`).
    pub(crate) fn parse(value: &[u8]) -> CoreResult<Option<Acl>> {
        const BAD: CoreError = CoreError::Invalid("malformed POSIX ACL");
        if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
            return Err(BAD);
        }
        if u32::from_le_bytes(value[..4].try_into().unwrap()) != VERSION {
            return Err(CoreError::NotSupported("POSIX ACL version"));
        }
        let entries: Vec<Entry> = value[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        if entries.is_empty() {
            return Ok(None);
        }
        if entries.len() > MAX_ENTRIES {
            return Err(CoreError::TooBig);
        }
        let acl = Acl { entries };
        if !acl.valid() {
            return Err(BAD);
        }
        Ok(Some(acl.canonical_ids()))
    }

    /// Linux's `posix_acl_valid`: one owner, owning group and other entry;
    /// named users and groups in increasing id order, each once; a mask
    /// when there is any named entry; permissions within rwx.
    fn valid(&self) -> bool {
        let mut state = USER_OBJ;
        let mut last_id: Option<u32> = None;
        let mut named = false;
        let mut mask = false;
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return false;
            }
            match e.tag {
                USER_OBJ if state == USER_OBJ => state = USER,
                USER | GROUP if state == e.tag => {
                    if last_id.is_some_and(|l| e.id <= l) || e.id == UNDEFINED_ID {
                        return false;
                    }
                    last_id = Some(e.id);
                    named = true;
                }
                GROUP_OBJ if state == USER => {
                    state = GROUP;
                    last_id = None;
                }
                MASK if state == GROUP => {
                    state = OTHER;
                    mask = true;
                }
                OTHER if state == OTHER || state == GROUP => state = 0,
                _ => return false,
            }
        }
        state == 0 && (mask || !named)
    }

    /// Entries other than named ones carry no id.
    fn canonical_ids(mut self) -> Acl {
        for e in &mut self.entries {
            if e.tag != USER && e.tag != GROUP {
                e.id = UNDEFINED_ID;
            }
        }
        self
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 8 * self.entries.len());
        v.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn set_perm(&mut self, tag: u16, perm: u16) -> bool {
        match self.entries.iter_mut().find(|e| e.tag == tag) {
            Some(e) => {
                e.perm = perm & 7;
                true
            }
            None => false,
        }
    }

    /// Only the owner, owning group and other entries: the mode says it
    /// all (Linux's `posix_acl_equiv_mode` returning 0).
    pub(crate) fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    /// The permission bits (0o777) the ACL gives the mode: the mask stands
    /// for the group bits when there is one.
    pub(crate) fn mode_bits(&self) -> u16 {
        let group = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0);
        (self.perm_of(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | self.perm_of(OTHER).unwrap_or(0)
    }

    /// Linux's `posix_acl_chmod`: the owner, mask (or owning group) and
    /// other entries take the new mode's bits.
    pub(crate) fn chmod(&mut self, perm: u16) {
        self.set_perm(USER_OBJ, perm >> 6);
        if !self.set_perm(MASK, perm >> 3) {
            self.set_perm(GROUP_OBJ, perm >> 3);
        }
        self.set_perm(OTHER, perm);
    }

    /// Linux's `posix_acl_create_masq`: a default ACL inherited by an inode
    /// created with permission bits `perm` keeps only what `perm` allows
    /// and masks it in return. Returns the inode's new permission bits
    /// (set-ID and sticky bits kept).
    pub(crate) fn create_masq(&mut self, perm: u16) -> u16 {
        let mut mode = perm & 0o777;
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) & 7;
                    mode &= (e.perm << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= mode & 7;
                    mode &= e.perm | !0o007;
                }
                _ => {}
            }
        }
        let tag = if self.perm_of(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(e) = self.entries.iter_mut().find(|e| e.tag == tag) {
            e.perm &= (mode >> 3) & 7;
            mode &= (e.perm << 3) | !0o070;
        }
        (perm & !0o777) | (mode & 0o777)
    }
}

/// The ACL of kind `name` stored for `ino`, if any.
pub(crate) fn load(conn: &Connection, ino: InodeNo, name: &[u8]) -> CoreResult<Option<Acl>> {
    match meta::get_xattr(conn, ino, name)? {
        Some(v) => Acl::parse(&v),
        None => Ok(None),
    }
}

/// A chmod of `ino` to `perm`: its access ACL, if any, follows.
pub(crate) fn chmod(conn: &Connection, ino: InodeNo, perm: u16) -> CoreResult<()> {
    if let Some(mut acl) = load(conn, ino, ACL_ACCESS)? {
        acl.chmod(perm);
        meta::set_xattr(conn, ino, ACL_ACCESS, &acl.to_bytes())?;
    }
    Ok(())
}

/// What a new inode under a directory with default ACL `default` gets,
/// asked for with permission bits `perm`: its permission bits, its access
/// ACL (none when the mode says it all) and, for a directory, its default
/// ACL.
pub(crate) struct Inherited {
    pub perm: u16,
    pub access: Option<Vec<u8>>,
    pub default: Option<Vec<u8>>,
}

pub(crate) fn inherit(default: &Acl, perm: u16, is_dir: bool) -> Inherited {
    let mut access = default.clone();
    let perm = access.create_masq(perm);
    Inherited {
        perm,
        access: (!access.is_minimal()).then(|| access.to_bytes()),
        default: is_dir.then(|| default.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
    const U: u32 = UNDEFINED_ID;

    #[test]
    fn parses_what_linux_accepts_and_refuses_the_rest() {
        let full = acl(&[
            (USER_OBJ, 7, U),
            (USER, 5, 1000),
            (USER, 4, 1001),
            (GROUP_OBJ, 5, U),
            (GROUP, 6, 50),
            (MASK, 7, U),
            (OTHER, 0, U),
        ]);
        let a = Acl::parse(&full).unwrap().unwrap();
        assert_eq!(a.to_bytes(), full);
        assert!(!a.is_minimal());
        assert_eq!(a.mode_bits(), 0o770);
        let minimal = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]);
        let m = Acl::parse(&minimal).unwrap().unwrap();
        assert!(m.is_minimal());
        assert_eq!(m.mode_bits(), 0o644);
        assert_eq!(Acl::parse(&acl(&[])).unwrap(), None);
        for bad in [
            // named user without a mask
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 5, 1),
                (GROUP_OBJ, 5, U),
                (OTHER, 0, U),
            ]),
            // out of order
            acl(&[(GROUP_OBJ, 5, U), (USER_OBJ, 7, U), (OTHER, 0, U)]),
            // same user twice
            acl(&[
                (USER_OBJ, 7, U),
                (USER, 5, 1),
                (USER, 4, 1),
                (GROUP_OBJ, 5, U),
                (MASK, 7, U),
                (OTHER, 0, U),
            ]),
            // no other entry
            acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U)]),
            // permission beyond rwx
            acl(&[(USER_OBJ, 8, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)]),
        ] {
            assert!(Acl::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(Acl::parse(&[2, 0, 0, 0, 1]).is_err());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_err());
    }

    #[test]
    fn chmod_moves_the_mask_and_inheritance_masks_both_ways() {
        let full = acl(&[
            (USER_OBJ, 7, U),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, U),
            (MASK, 7, U),
            (OTHER, 5, U),
        ]);
        let mut a = Acl::parse(&full).unwrap().unwrap();
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        // The named user and the owning group keep their entries; the
        // mask limits them.
        assert_eq!(a.perm_of(USER), Some(7));
        assert_eq!(a.perm_of(GROUP_OBJ), Some(5));
        assert_eq!(a.perm_of(MASK), Some(4));

        let default = Acl::parse(&full).unwrap().unwrap();
        // open(O_CREAT, 0666) under it: no execute bits for anyone; the
        // umask plays no part.
        let file = inherit(&default, 0o666, false);
        assert_eq!(file.perm, 0o664);
        assert!(file.access.is_some() && file.default.is_none());
        let dir = inherit(&default, 0o2777, true);
        assert_eq!(dir.perm, 0o2775);
        assert_eq!(dir.default.as_deref(), Some(&full[..]));
        // A minimal default ACL leaves no access ACL, only the bits.
        let minimal = Acl::parse(&acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)]))
            .unwrap()
            .unwrap();
        let f = inherit(&minimal, 0o666, false);
        assert_eq!((f.perm, f.access), (0o600, None));
    }
}
