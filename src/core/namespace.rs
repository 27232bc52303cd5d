//! Namespaces and locker references.
//!
//! The root directory (inode 1) lists the namespaces; each is a directory
//! whose entry lives under the root. Only directories (namespaces) can be
//! created at the root; files, links and nodes are refused with a log line
//! saying why. A file's reference is `locker://{namespace}/{path}`.

use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, check_name};
use crate::meta;

/// The scheme of a locker reference.
pub const REF_SCHEME: &str = "locker://";

/// A namespace name: 1–63 bytes of ASCII letters, digits, '-', '_' or '.',
/// not starting with '.', so it is usable as a reference host, a bucket
/// prefix and a directory name everywhere.
pub fn valid_namespace(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name[0] != b'.'
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Refuses what may not be created directly under the root.
pub(crate) fn check_create_at(parent: InodeNo, kind: FileKind, name: &[u8]) -> CoreResult<()> {
    if parent != InodeNo::ROOT {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(name);
    if kind != FileKind::Dir {
        tracing::warn!(name = %shown, "refused: only namespaces (directories) can be created at the root of the mount; put files inside a namespace");
        return Err(CoreError::NotPermitted(
            "only namespaces can be created at the root",
        ));
    }
    if !valid_namespace(name) {
        tracing::warn!(name = %shown, "refused: a namespace name is 1-63 letters, digits, '-', '_' or '.', not starting with '.'");
        return Err(CoreError::Invalid("bad namespace name"));
    }
    Ok(())
}

/// Refuses renames that would move entries into or out of the root, or
/// rename a namespace.
pub(crate) fn check_rename(
    parent: InodeNo,
    newparent: InodeNo,
    _kind: FileKind,
    _mode: RenameMode,
) -> CoreResult<()> {
    if parent == InodeNo::ROOT || newparent == InodeNo::ROOT {
        tracing::warn!(
            "refused: namespaces cannot be renamed, and nothing can be moved into or out of the root of the mount"
        );
        return Err(CoreError::NotPermitted("rename at the root"));
    }
    Ok(())
}

/// Percent-encodes the bytes of a path that cannot appear in a reference
/// as they are (controls, space, '%', '?', '#', and non-UTF-8 bytes).
pub fn encode_ref_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    let text = String::from_utf8_lossy(path);
    let valid = matches!(text, std::borrow::Cow::Borrowed(_));
    if valid {
        for ch in text.chars() {
            if ch.is_control() || matches!(ch, ' ' | '%' | '?' | '#') {
                let mut b = [0u8; 4];
                for byte in ch.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            } else {
                out.push(ch);
            }
        }
    } else {
        for &b in path {
            if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

impl Locker {
    pub(crate) fn ensure_root(&self) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| {
            if meta::get_inode(tx, InodeNo::ROOT)?.is_none() {
                let now = Timestamp::now();
                meta::insert_inode(
                    tx,
                    &Attr::new_root_owned(InodeNo::ROOT, FileKind::Dir, 0o755, 2, now),
                    None,
                    None,
                )?;
            }
            Ok(())
        })
    }

    /// Creates namespace `name` (mode 0755, owned by root) unless it exists.
    pub fn ensure_namespace(&self, name: &str) -> CoreResult<()> {
        if !valid_namespace(name.as_bytes()) {
            return Err(CoreError::Invalid("bad namespace name"));
        }
        match self.mkdir(&Caller::ROOT, InodeNo::ROOT, name.as_bytes(), 0o755) {
            Ok(_) => {
                tracing::info!(namespace = name, "namespace created");
                Ok(())
            }
            Err(CoreError::Exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names of the namespaces, sorted.
    pub fn namespaces(&self) -> CoreResult<Vec<String>> {
        let st = self.lock();
        Ok(meta::list_dir(&st.conn, InodeNo::ROOT)?
            .into_iter()
            .map(|(n, _, _)| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    /// The path of `ino` from the root, as bytes without a leading '/'
    /// (for a hard-linked file, its oldest name).
    pub fn path_of(&self, ino: InodeNo) -> CoreResult<Vec<u8>> {
        let st = self.lock();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino;
        while cur != InodeNo::ROOT {
            let (parent, name) = meta::any_name(&st.conn, cur)?.ok_or(CoreError::NotFound)?;
            parts.push(name);
            cur = parent;
            if parts.len() > 4096 {
                return Err(CoreError::Corrupt("directory cycle".into()));
            }
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }

    /// The `locker://namespace/path` reference of `ino`.
    pub fn reference(&self, ino: InodeNo) -> CoreResult<String> {
        if ino == InodeNo::ROOT {
            return Err(CoreError::Invalid("the root has no reference"));
        }
        let path = self.path_of(ino)?;
        Ok(format!("{REF_SCHEME}{}", encode_ref_path(&path)))
    }

    /// The inode a path (`namespace/dir/file`, no leading '/') names,
    /// following no symlinks.
    pub fn resolve_path(&self, path: &[u8]) -> CoreResult<InodeNo> {
        let st = self.lock();
        let mut cur = InodeNo::ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            check_name(comp)?;
            cur = meta::lookup(&st.conn, cur, comp)?.ok_or(CoreError::NotFound)?;
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_checked() {
        assert!(valid_namespace(b"corp"));
        assert!(valid_namespace(b"my-ns_2.x"));
        assert!(!valid_namespace(b""));
        assert!(!valid_namespace(b".hidden"));
        assert!(!valid_namespace(b"a b"));
        assert!(!valid_namespace(&[b'a'; 64]));
    }

    #[test]
    fn reference_paths_are_encoded() {
        assert_eq!(
            encode_ref_path(b"corp/facturas/FAC 1.pdf"),
            "corp/facturas/FAC%201.pdf"
        );
        assert_eq!(encode_ref_path(b"corp/a\xffb"), "corp/a%FFb");
        assert_eq!(encode_ref_path("deck/año".as_bytes()), "deck/año");
    }
}
