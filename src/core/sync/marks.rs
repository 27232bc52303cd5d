//! Queue marks: every change a backend should see marks its paths in
//! `sync_queue` inside the transaction that makes it (`mark_name`,
//! `mark_ino`, `mark_moved`), and the namespace paths those marks name.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use crate::core::types::*;
use crate::core::{CoreError, CoreResult, State};
use crate::meta;
use crate::meta::sync as msync;

/// The sequence number and times of the marks one change makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    seq: i64,
    now: i64,
    ready: i64,
}

impl State {
    /// A new mark, or none while changes from the backend are applied.
    /// A backend confirmed that `ns/path` is gone from it.
    pub(crate) fn note_gone_remote(&mut self, ns: &str, path: &[u8]) {
        let now = msync::now_ns();
        if self.gone_remote.len() >= 4096 {
            // Listings last seconds; ten minutes is plenty.
            self.gone_remote.retain(|_, t| *t > now - 600_000_000_000);
        }
        self.gone_remote
            .insert((ns.to_string(), path.to_vec()), now);
    }

    /// A listing of `ns` that began at `started` is done: removals
    /// confirmed before it began matter to no listing any more.
    pub(crate) fn listed_since(&mut self, ns: &str, started: i64) {
        self.gone_remote
            .retain(|(n, _), t| n != ns || *t >= started);
    }

    /// Whether `ns/path`, or a directory above it, left the backend after
    /// `since` (a listing begun then may still show it).
    pub(crate) fn gone_remote_since(&self, ns: &str, path: &[u8], since: i64) -> bool {
        if self.gone_remote.is_empty() {
            return false;
        }
        let mut end = path.len();
        loop {
            if self
                .gone_remote
                .get(&(ns.to_string(), path[..end].to_vec()))
                .is_some_and(|t| *t > since)
            {
                return true;
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    }

    pub(crate) fn mark(&mut self) -> Option<Mark> {
        if self.suppress_marks {
            return None;
        }
        self.next_seq += 1;
        let now = msync::now_ns();
        Some(Mark {
            seq: self.next_seq,
            now,
            ready: now + self.sync_delay_ns,
        })
    }
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    if a.is_empty() {
        return b.to_vec();
    }
    if b.is_empty() {
        return a.to_vec();
    }
    let mut v = a.to_vec();
    v.push(b'/');
    v.extend_from_slice(b);
    v
}

/// The namespace and path inside it of entry `name` of directory `dir`;
/// `None` for a namespace itself (an entry of the root).
pub(crate) fn ns_path(
    conn: &Connection,
    dir: InodeNo,
    name: &[u8],
) -> CoreResult<Option<(String, Vec<u8>)>> {
    Ok(dir_path(conn, dir)?.map(|(ns, p)| (ns, join(&p, name))))
}

/// The namespace of directory `dir` and its path inside it (empty for the
/// namespace's own directory); `None` for the root. One query per level
/// not in the active `DirPaths`, which keeps what it walks.
fn dir_path(conn: &Connection, dir: InodeNo) -> CoreResult<Option<(String, Vec<u8>)>> {
    if dir == InodeNo::ROOT {
        return Ok(None);
    }
    ACTIVE_PATHS.with_borrow(|paths| {
        let paths = paths.as_deref();
        // Directories walked, from `dir` up, with their names.
        let mut walked: Vec<(InodeNo, Vec<u8>)> = Vec::new();
        let mut cur = dir;
        let (ns, mut path) = loop {
            if let Some(known) = paths.and_then(|p| p.get(cur)) {
                break known;
            }
            let (parent, n) = meta::any_name(conn, cur)?.ok_or(CoreError::NotFound)?;
            if parent == InodeNo::ROOT {
                let ns = String::from_utf8_lossy(&n).into_owned();
                if let Some(p) = paths {
                    p.put(cur, &ns, b"");
                }
                break (ns, Vec::new());
            }
            walked.push((cur, n));
            cur = parent;
            if walked.len() > 4096 {
                return Err(CoreError::Corrupt("directory cycle".into()));
            }
        };
        for (ino, name) in walked.into_iter().rev() {
            path = join(&path, &name);
            if let Some(p) = paths {
                p.put(ino, &ns, &path);
            }
        }
        Ok(Some((ns, path)))
    })
}

thread_local! {
    /// The paths the operation this thread runs may use (`DirPaths::active`).
    static ACTIVE_PATHS: std::cell::RefCell<Option<Arc<DirPaths>>> =
        const { std::cell::RefCell::new(None) };
}

/// Paths of directories (namespace, path inside it), for queue marks: a
/// mark names its entry by path, and walking up from its directory was one
/// query per level, twice for each small file written (at its create and at
/// its close). Kept right by the database itself: temporary triggers on
/// `dentries` call `locker_dir_moved()` whenever a directory's name changes
/// or goes, which forgets every path (those below it changed too), and so
/// does every rollback (a path read inside an undone change may be one that
/// change made). Inode numbers are never reused.
#[derive(Default)]
pub(crate) struct DirPaths(parking_lot::Mutex<HashMap<InodeNo, (String, Vec<u8>)>>);

/// Directories whose paths are kept at most (then all are forgotten).
const DIR_PATHS_MAX: usize = 65_536;

impl DirPaths {
    /// Installs the triggers and the rollback hook that keep `paths` right
    /// on `conn` (the one connection every change goes through).
    pub(crate) fn install(paths: &Arc<DirPaths>, conn: &Connection) -> rusqlite::Result<()> {
        let p = paths.clone();
        conn.create_scalar_function(
            "locker_dir_moved",
            0,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            move |_| {
                p.forget();
                Ok(0i64)
            },
        )?;
        conn.execute_batch(
            "CREATE TEMP TRIGGER dir_renamed AFTER UPDATE ON main.dentries
                WHEN old.kind = 2 OR new.kind = 2
                BEGIN SELECT locker_dir_moved(); END;
             CREATE TEMP TRIGGER dir_removed AFTER DELETE ON main.dentries
                WHEN old.kind = 2
                BEGIN SELECT locker_dir_moved(); END;",
        )?;
        let p = paths.clone();
        conn.rollback_hook(Some(move || p.forget()));
        Ok(())
    }

    /// Lets `dir_path` use and keep these paths on this thread until the
    /// guard goes.
    pub(crate) fn active(self: &Arc<Self>) -> ActivePaths {
        ActivePaths(ACTIVE_PATHS.replace(Some(self.clone())))
    }

    fn get(&self, dir: InodeNo) -> Option<(String, Vec<u8>)> {
        self.0.lock().get(&dir).cloned()
    }

    fn put(&self, dir: InodeNo, ns: &str, path: &[u8]) {
        let mut m = self.0.lock();
        if m.len() >= DIR_PATHS_MAX {
            m.clear();
        }
        m.insert(dir, (ns.to_string(), path.to_vec()));
    }

    pub(crate) fn forget(&self) {
        let mut m = self.0.lock();
        if !m.is_empty() {
            m.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// Restores the thread's active paths when an operation ends.
pub(crate) struct ActivePaths(Option<Arc<DirPaths>>);

impl Drop for ActivePaths {
    fn drop(&mut self) {
        ACTIVE_PATHS.set(self.0.take());
    }
}

fn size_of(conn: &Connection, ino: InodeNo) -> CoreResult<u64> {
    Ok(meta::get_inode(conn, ino)?.map_or(0, |r| r.attr.size))
}

/// Marks the entry `name` of `dir`.
pub(crate) fn mark_name(
    conn: &Connection,
    m: Option<Mark>,
    dir: InodeNo,
    name: &[u8],
    bytes: u64,
) -> CoreResult<()> {
    let Some(m) = m else { return Ok(()) };
    if let Some((ns, path)) = ns_path(conn, dir, name)? {
        msync::mark(conn, &ns, &path, m.seq, m.now, m.ready, bytes, None)?;
    }
    Ok(())
}

/// Marks entry `name` of `dir`, just removed. If the backend never held
/// anything at its path (no `remote` row), the entry is ready at once
/// rather than after the quiet delay: its push needs no request
/// (`Locker::sync_forget_unheld`), so a removed tree's entries leave the
/// queue as soon as the sidecar looks.
pub(crate) fn mark_removed(
    conn: &Connection,
    m: Option<Mark>,
    dir: InodeNo,
    name: &[u8],
) -> CoreResult<()> {
    let Some(m) = m else { return Ok(()) };
    if let Some((ns, path)) = ns_path(conn, dir, name)? {
        let ready = if msync::remote_held(conn, &ns, &path)? {
            m.ready
        } else {
            m.now
        };
        msync::mark(conn, &ns, &path, m.seq, m.now, ready, 0, None)?;
    }
    Ok(())
}

/// Marks every name of inode `ino` (a file's hard links).
pub(crate) fn mark_ino(
    conn: &Connection,
    m: Option<Mark>,
    ino: InodeNo,
    bytes: u64,
) -> CoreResult<()> {
    if m.is_none() {
        return Ok(());
    }
    for (parent, name) in meta::names(conn, ino)? {
        mark_name(conn, m, parent, &name, bytes)?;
    }
    Ok(())
}

/// Paths below `ino` relative to it ("" for itself), with file sizes and
/// the inode of each; `known` is its kind and size, if the caller has its
/// row.
fn subtree(
    conn: &Connection,
    ino: InodeNo,
    known: Option<(FileKind, u64)>,
) -> CoreResult<Vec<(Vec<u8>, u64, InodeNo)>> {
    let root = match known {
        Some(k) => Some(k),
        None => meta::get_inode(conn, ino)?.map(|r| (r.attr.kind, r.attr.size)),
    };
    let mut out = vec![(Vec::new(), root.map_or(0, |r| r.1), ino)];
    if root.is_none_or(|r| r.0 != FileKind::Dir) {
        return Ok(out);
    }
    // Below the root, each name carries its inode's kind.
    let mut stack = vec![(ino, Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for (name, child, kind) in meta::list_dir(conn, dir)? {
            let p = join(&rel, &name);
            let size = if kind == FileKind::File {
                size_of(conn, child)?
            } else {
                0
            };
            out.push((p.clone(), size, child));
            if kind == FileKind::Dir {
                stack.push((child, p));
            }
        }
    }
    Ok(out)
}

/// Marks the entry now at `new` and everything below it; with `old` (a
/// rename), also every old path, each after its new path so that the
/// backend copies before it deletes. An old path the backend never held
/// (no `remote` row) has nothing to copy from or delete: its entry is ready
/// at once and waits for nothing, as `mark_removed` makes it, so a chain of
/// renames of a new file does not leave the queue one link at a time.
pub(crate) fn mark_moved(
    conn: &Connection,
    m: Option<Mark>,
    (ino, known): (InodeNo, Option<&Attr>),
    new: (InodeNo, &[u8]),
    old: Option<(InodeNo, &[u8])>,
) -> CoreResult<()> {
    let entries = subtree(conn, ino, known.map(|a| (a.kind, a.size)))?;
    // The content of a moved file is not at its new path in any backend
    // yet: its blocks stay (or come back) until that path is confirmed,
    // whatever happens meanwhile to the object at the old path.
    for (_, _, i) in &entries {
        meta::clear_synced_file(conn, *i)?;
    }
    let Some(m) = m else { return Ok(()) };
    // (A name that stays in its directory: that directory walked once.)
    let newd = dir_path(conn, new.0)?;
    let oldp = match old {
        Some((d, n)) if d == new.0 => newd.as_ref().map(|(ns, p)| (ns.clone(), join(p, n))),
        Some((d, n)) => ns_path(conn, d, n)?,
        None => None,
    };
    let newp = newd.map(|(ns, p)| (ns, join(&p, new.1)));
    for (suffix, bytes, _) in entries {
        let np = newp.as_ref().map(|(ns, p)| (ns.clone(), join(p, &suffix)));
        if let Some((ns, p)) = &np {
            msync::mark(conn, ns, p, m.seq, m.now, m.ready, bytes, None)?;
        }
        if let Some((ons, op)) = &oldp {
            let old_path = join(op, &suffix);
            let (ready, after) = if msync::remote_held(conn, ons, &old_path)? {
                let after = np.as_ref().map(|(ns, p)| (ns.as_str(), p.as_slice()));
                (m.ready, after)
            } else {
                (m.now, None)
            };
            msync::mark(conn, ons, &old_path, m.seq, m.now, ready, 0, after)?;
        }
    }
    Ok(())
}
