//! Extended attributes: `user.*`, `trusted.*` and `security.*` are stored,
//! and of `system.*` the two POSIX ACLs (see `acl.rs`). Two virtual, read-only
//! attributes exist on every regular file: `user.locker.ref` (its locker://
//! reference; directories below the root have one too) and
//! `user.locker.sha256` (hex SHA-256 of its content, computed
//! when first asked and remembered until the content changes). They are not
//! listed, so `cp -a`, `rsync -X` and `tar --xattrs` do not try to copy them
//! onto other files.

use std::sync::atomic::Ordering;

use crate::blocks::hex;
use crate::core::acl::{self, ACL_ACCESS, ACL_DEFAULT, Acl};
use crate::core::inode::caller_in_group;
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, sync};
use crate::meta;

pub const XATTR_REF: &[u8] = b"user.locker.ref";
const SECURITY: &[u8] = b"security.";
pub const XATTR_SHA256: &[u8] = b"user.locker.sha256";
const XATTR_SIZE_MAX: usize = 65536;

fn check_xattr_name(name: &[u8]) -> CoreResult<()> {
    if name.is_empty() {
        return Err(CoreError::Invalid("empty attribute name"));
    }
    if name.len() > 255 {
        return Err(CoreError::Range);
    }
    if name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"security.")
        || acl::is_acl_name(name)
    {
        Ok(())
    } else {
        Err(CoreError::NotSupported("attribute namespace"))
    }
}

/// XATTR_CREATE and XATTR_REPLACE: whether `name` may be set on `ino`.
fn check_mode(
    tx: &rusqlite::Connection,
    ino: InodeNo,
    name: &[u8],
    mode: XattrMode,
) -> CoreResult<()> {
    let exists = meta::get_xattr(tx, ino, name)?.is_some();
    match mode {
        XattrMode::Create if exists => Err(CoreError::Exists),
        XattrMode::Replace if !exists => Err(CoreError::NoAttr),
        _ => Ok(()),
    }
}

/// Whether `name` is a virtual attribute of an inode of `kind` (`ino`).
fn is_virtual_of(name: &[u8], kind: FileKind, ino: InodeNo) -> bool {
    match kind {
        FileKind::File => name == XATTR_REF || name == XATTR_SHA256,
        FileKind::Dir => name == XATTR_REF && ino != InodeNo::ROOT,
        _ => false,
    }
}

impl Locker {
    pub fn getxattr(&self, ino: InodeNo, name: &[u8]) -> CoreResult<Vec<u8>> {
        check_xattr_name(name)?;
        if name == XATTR_REF || name == XATTR_SHA256 {
            let kind = self.getattr(ino)?.kind;
            if is_virtual_of(name, kind, ino) {
                return if name == XATTR_REF {
                    Ok(self.reference(ino)?.into_bytes())
                } else {
                    Ok(self.sha256_hex(ino)?.into_bytes())
                };
            }
        }
        if name.starts_with(SECURITY) && !self.security_xattrs.load(Ordering::Acquire) {
            // The kernel asks for security.capability before every write:
            // with no security.* attribute anywhere, the answer needs
            // neither the lock nor the database.
            return Err(CoreError::NoAttr);
        }
        if acl::is_acl_name(name) && !self.acls.load(Ordering::Acquire) {
            // Asked by the kernel for permission checks: the same.
            return Err(CoreError::NoAttr);
        }
        let st = self.lock();
        meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        meta::get_xattr(&st.conn, ino, name)?.ok_or(CoreError::NoAttr)
    }

    pub fn setxattr(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> CoreResult<()> {
        self.setxattr_as(ino, name, value, mode, None)
    }

    /// `setxattr` asked by `caller` (a mount's request): setting an access
    /// ACL drops set-group-ID unless the caller is root or in the file's
    /// group, as Linux's `posix_acl_update_mode` does.
    pub fn setxattr_as(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        caller: Option<&Caller>,
    ) -> CoreResult<()> {
        check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(CoreError::TooBig);
        }
        if acl::is_acl_name(name) {
            return self.set_acl(ino, name, value, mode, caller);
        }
        let mut st = self.lock();
        let kind = meta::get_inode(&st.conn, ino)?
            .ok_or(CoreError::NotFound)?
            .attr
            .kind;
        if is_virtual_of(name, kind, ino) {
            return Err(CoreError::NotPermitted("read-only attribute"));
        }
        if name.starts_with(SECURITY) {
            // Set before the attribute exists, under the lock that any
            // reader of it takes after.
            self.security_xattrs.store(true, Ordering::Release);
        }
        st.tx(|tx| {
            check_mode(tx, ino, name, mode)?;
            meta::set_xattr(tx, ino, name, value)?;
            let mut a = meta::get_inode(tx, ino)?.ok_or(CoreError::NotFound)?.attr;
            a.ctime = Timestamp::now();
            meta::update_attr(tx, &a)?;
            Ok(())
        })
    }

    fn set_acl(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        caller: Option<&Caller>,
    ) -> CoreResult<()> {
        let parsed = Acl::parse(value)?;
        let mut st = self.lock();
        let kind = meta::get_inode(&st.conn, ino)?
            .ok_or(CoreError::NotFound)?
            .attr
            .kind;
        if kind == FileKind::Symlink {
            return Err(CoreError::NotSupported("ACL on a symbolic link"));
        }
        if name == ACL_DEFAULT && kind != FileKind::Dir {
            return Err(CoreError::NotPermitted("default ACL on a non-directory"));
        }
        // Set before the attribute exists, under the lock that any reader
        // of it takes after.
        self.acls.store(true, Ordering::Release);
        let m = st.mark();
        let marked = st.tx(|tx| {
            check_mode(tx, ino, name, mode)?;
            let mut a = meta::get_inode(tx, ino)?.ok_or(CoreError::NotFound)?.attr;
            let old_perm = a.perm;
            match &parsed {
                // No entries: no ACL, as a removal.
                None => {
                    meta::remove_xattr(tx, ino, name)?;
                }
                Some(acl) if name == ACL_ACCESS => {
                    a.perm = (a.perm & !0o777) | acl.mode_bits();
                    if let Some(c) = caller
                        && c.uid != 0
                        && !caller_in_group(c, a.gid)
                    {
                        a.perm &= !0o2000;
                    }
                    // What the mode says alone is not kept twice.
                    if acl.is_minimal() {
                        meta::remove_xattr(tx, ino, name)?;
                    } else {
                        meta::set_xattr(tx, ino, name, &acl.to_bytes())?;
                    }
                }
                Some(acl) => meta::set_xattr(tx, ino, name, &acl.to_bytes())?,
            }
            a.ctime = Timestamp::now();
            meta::update_attr(tx, &a)?;
            // The mode travels with the object.
            let marked = a.perm != old_perm && a.kind != FileKind::Dir;
            if marked {
                sync::mark_ino(tx, m, ino, a.size)?;
            }
            Ok(marked)
        })?;
        drop(st);
        if marked && m.is_some() {
            self.wake_sync();
        }
        Ok(())
    }

    pub fn listxattr(&self, ino: InodeNo) -> CoreResult<Vec<Vec<u8>>> {
        let st = self.lock();
        meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        Ok(meta::list_xattrs(&st.conn, ino)?)
    }

    pub fn removexattr(&self, ino: InodeNo, name: &[u8]) -> CoreResult<()> {
        check_xattr_name(name)?;
        let mut st = self.lock();
        let kind = meta::get_inode(&st.conn, ino)?
            .ok_or(CoreError::NotFound)?
            .attr
            .kind;
        if is_virtual_of(name, kind, ino) {
            return Err(CoreError::NotPermitted("read-only attribute"));
        }
        st.tx(|tx| {
            if !meta::remove_xattr(tx, ino, name)? {
                return Err(CoreError::NoAttr);
            }
            let mut a = meta::get_inode(tx, ino)?.ok_or(CoreError::NotFound)?.attr;
            a.ctime = Timestamp::now();
            meta::update_attr(tx, &a)?;
            Ok(())
        })
    }

    /// Hex SHA-256 of the file's whole current content. Cached in the
    /// metadata for committed content; uncommitted changes are hashed each
    /// time they are asked about.
    pub fn sha256_hex(&self, ino: InodeNo) -> CoreResult<String> {
        let remote_only = {
            let st = self.lock();
            let r = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
            r.remote_only && r.sha256.is_none()
        };
        if remote_only {
            // Listed in a backend without a checksum: fetch it to hash it.
            self.materialize(ino)?;
        }
        let cached = {
            let st = self.lock();
            meta::get_inode(&st.conn, ino)?.is_some_and(|r| r.sha256.is_some())
                && st.files.get(&ino).is_none_or(|f| f.is_clean_pub())
        };
        if !cached {
            self.fetch_missing(ino)?;
        }
        let st = self.lock();
        let r = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        if r.attr.kind != FileKind::File {
            return Err(CoreError::Invalid("not a regular file"));
        }
        let mut attr = r.attr.clone();
        Locker::overlay(&st, &mut attr);
        let pending = attr.size != r.attr.size || attr.mtime != r.attr.mtime;
        if !pending && let Some(h) = r.sha256.as_ref().filter(|h| h.len() == 32) {
            return Ok(hex(h));
        }
        let version = meta::content_version(&st.conn, ino)?;
        let h = self.content_sha256(&st, ino, attr.size)?;
        if !pending {
            meta::set_sha256(&st.conn, ino, version, &h)?;
        }
        Ok(hex(&h))
    }
}
