//! Conflicts: when this side and a backend both changed a path, the
//! backend's version takes the name and the local one moves to a conflict
//! name (and is pushed there).

use super::apply::Applied;
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, State};
use crate::meta;
use crate::meta::sync::{self as msync, RemoteRow};

/// `name.conflict-<when>-<host>.ext`: says what it is, sorts beside the
/// original.
fn conflict_name(name: &[u8], n: u32) -> Vec<u8> {
    let now = Timestamp::now().sec;
    // SAFETY: gmtime_r writes into the provided struct only.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
        tm
    };
    let mut host = [0u8; 64];
    // SAFETY: the buffer is writable for its length.
    unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    let hl = host.iter().position(|&c| c == 0).unwrap_or(host.len());
    let host: String = String::from_utf8_lossy(&host[..hl])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let tag = format!(
        ".conflict-{:04}{:02}{:02}-{:02}{:02}{:02}-{}{}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        host,
        if n > 0 {
            format!("-{n}")
        } else {
            String::new()
        }
    );
    let (stem, ext) = match name.iter().rposition(|&c| c == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let keep = 255usize
        .saturating_sub(tag.len() + ext.len())
        .min(stem.len());
    let mut out = stem[..keep].to_vec();
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(ext);
    out
}

impl Locker {
    /// Renames the local entry `name` of `dir` to a conflict name (marked:
    /// it is uploaded under that name). Returns the new name.
    pub(super) fn move_to_conflict(
        &self,
        st: &mut State,
        dir: InodeNo,
        name: &[u8],
    ) -> CoreResult<Vec<u8>> {
        let was = st.suppress_marks;
        st.suppress_marks = false;
        let mut n = 0;
        let r = loop {
            let cand = conflict_name(name, n);
            if meta::lookup(&st.conn, dir, &cand)?.is_none() {
                break self
                    .rename_locked(st, dir, name, dir, &cand, RenameMode::NoReplace)
                    .map(|_| cand);
            }
            n += 1;
            if n > 1000 {
                break Err(CoreError::Exists);
            }
        };
        st.suppress_marks = was;
        r
    }

    /// An upload found the backend changed since LOCKER last saw it, while
    /// this side changed too: the local version moves to a conflict name
    /// (and is uploaded there); the backend's version takes the path.
    pub fn sync_conflict(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
    ) -> CoreResult<Option<Vec<u8>>> {
        let before = self.kernel_view(ns, path)?;
        let r = self.sync_conflict_inner(ns, path, row)?;
        if let Some(moved) = &r {
            self.tell_kernel(ns, path, before, &Applied::Conflict(moved.clone()))?;
        }
        Ok(r)
    }

    fn sync_conflict_inner(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
    ) -> CoreResult<Option<Vec<u8>>> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(ns_ino) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(None);
        };
        let Some((dir, name, Some(_))) = Locker::resolve_in(&st.conn, ns, path)? else {
            return Ok(None);
        };
        let moved = self.move_to_conflict(st, dir, &name)?;
        st.suppress_marks = true;
        let r = (|| {
            self.create_from_remote(st, dir, &name, &row, ns_ino)?;
            st.tx(|tx| {
                msync::put_remote(tx, ns, path, &row)?;
                // The path now holds what the backend holds: nothing to push.
                msync::remove_entry(tx, ns, path)?;
                Ok(())
            })
        })();
        st.suppress_marks = false;
        r?;
        st.durable()?;
        tracing::warn!(
            namespace = ns,
            path = %String::from_utf8_lossy(path),
            kept_as = %String::from_utf8_lossy(&moved),
            "the backend changed this file while it changed here too: the backend's version keeps the name, this side's is kept under a conflict name"
        );
        Ok(Some(moved))
    }
}
