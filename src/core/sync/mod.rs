//! The core's side of the sync sidecar: which paths changed (the queue, kept
//! in the same transaction as each change), consistent snapshots of what to
//! push, what the backend is known to hold (the remote table), changes found
//! in the backend by a refresh, conflicts, and the cache bound (eviction of
//! blocks the backend holds, and fetching them back).
//!
//! Marks: every change that a backend should see marks `(namespace, path)`
//! in `sync_queue` inside the transaction that makes the change, so a change
//! is never committed without its queue entry. Changes made *from* the
//! backend (refresh) are applied with marks suppressed.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Handle, Locker, State};
use crate::meta::sync::{
    self as msync, QueueEntry, REMOTE_DIR, REMOTE_FILE, REMOTE_SYMLINK, RemoteRow,
};
use crate::meta::{self, BlockRef};

/// Reads byte ranges of objects in the backends, for the read path. The
/// sidecar implements it; the core verifies what it returns.
pub trait RemoteSource: Send + Sync {
    /// The bytes of each `(offset, len)` range of `path` in namespace `ns`
    /// (shorter only at the end of the object); with `etag`, only from that
    /// version of the object.
    fn fetch(
        &self,
        ns: &str,
        path: &[u8],
        etag: Option<&str>,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Vec<u8>>, String>;
}

/// Something the kernel may cache that a change from a backend made stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    /// The name in the directory.
    Entry(InodeNo, Vec<u8>),
    /// The inode's attributes and data.
    Inode(InodeNo),
}

/// What tells the kernel to drop what it caches (the mount installs it).
pub type Invalidator = Arc<dyn Fn(&[Invalidate]) + Send + Sync>;

/// A path's directory, last name and entry (if there is one).
type Found = (InodeNo, Vec<u8>, Option<meta::InodeRow>);

/// The sequence number and times of the marks one change makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    seq: i64,
    now: i64,
    ready: i64,
}

impl State {
    /// A new mark, or none while changes from the backend are applied.
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
    if dir == InodeNo::ROOT {
        return Ok(None);
    }
    let mut parts = vec![name.to_vec()];
    let mut cur = dir;
    loop {
        let (parent, n) = meta::any_name(conn, cur)?.ok_or(CoreError::NotFound)?;
        if parent == InodeNo::ROOT {
            parts.reverse();
            return Ok(Some((
                String::from_utf8_lossy(&n).into_owned(),
                parts.join(&b'/'),
            )));
        }
        parts.push(n);
        cur = parent;
        if parts.len() > 4096 {
            return Err(CoreError::Corrupt("directory cycle".into()));
        }
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
    let names: Vec<(i64, Vec<u8>)> = {
        let mut st = conn.prepare_cached("SELECT parent, name FROM dentries WHERE ino = ?1")?;
        let rows = st.query_map([ino.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (parent, name) in names {
        mark_name(conn, m, InodeNo(parent as u64), &name, bytes)?;
    }
    Ok(())
}

/// Paths below `ino` relative to it ("" for itself), with file sizes and
/// the inode of each.
fn subtree(conn: &Connection, ino: InodeNo) -> CoreResult<Vec<(Vec<u8>, u64, InodeNo)>> {
    let mut out = vec![(Vec::new(), size_of(conn, ino)?, ino)];
    let mut stack = vec![(ino, Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        if meta::get_inode(conn, dir)?.is_none_or(|r| r.attr.kind != FileKind::Dir) {
            continue;
        }
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
/// backend copies before it deletes.
pub(crate) fn mark_moved(
    conn: &Connection,
    m: Option<Mark>,
    ino: InodeNo,
    new: (InodeNo, &[u8]),
    old: Option<(InodeNo, &[u8])>,
) -> CoreResult<()> {
    let entries = subtree(conn, ino)?;
    // The content of a moved file is not at its new path in any backend
    // yet: its blocks stay (or come back) until that path is confirmed,
    // whatever happens meanwhile to the object at the old path.
    for (_, _, i) in &entries {
        conn.prepare_cached("UPDATE inodes SET synced_version = -1 WHERE ino = ?1 AND kind = 1")?
            .execute([i.0 as i64])?;
    }
    let Some(m) = m else { return Ok(()) };
    let newp = ns_path(conn, new.0, new.1)?;
    let oldp = match old {
        Some((d, n)) => ns_path(conn, d, n)?,
        None => None,
    };
    for (suffix, bytes, _) in entries {
        let np = newp.as_ref().map(|(ns, p)| (ns.clone(), join(p, &suffix)));
        if let Some((ns, p)) = &np {
            msync::mark(conn, ns, p, m.seq, m.now, m.ready, bytes, None)?;
        }
        if let Some((ons, op)) = &oldp {
            let after = np.as_ref().map(|(ns, p)| (ns.as_str(), p.as_slice()));
            msync::mark(
                conn,
                ons,
                &join(op, &suffix),
                m.seq,
                m.now,
                m.ready,
                0,
                after,
            )?;
        }
    }
    Ok(())
}

/// What is at a queued path locally.
#[derive(Debug)]
pub enum LocalEntry {
    Absent,
    Dir {
        mode: u32,
        mtime: Timestamp,
    },
    Symlink {
        target: Vec<u8>,
        mode: u32,
        mtime: Timestamp,
    },
    File(FileSnap),
    /// A device, fifo or socket: kept local only.
    Other,
}

/// A committed version of a file, with its blocks pinned until
/// `sync_release`.
#[derive(Debug)]
pub struct FileSnap {
    pub ino: InodeNo,
    pub version: i64,
    pub size: u64,
    pub mtime: Timestamp,
    pub mode: u32,
    pub sha256: Option<[u8; 32]>,
    pub remote_only: bool,
    /// Open for writing by someone.
    pub writers: bool,
    blocks: Vec<(u64, BlockRef)>,
    inline: HashMap<BlockId, Arc<Vec<u8>>>,
}

impl FileSnap {
    /// The blocks of the snapshot that overlap `len` bytes from `offset`
    /// and satisfy `pred`.
    pub(crate) fn blocks_in(
        &self,
        offset: u64,
        len: u64,
        pred: impl Fn(&BlockId) -> bool,
    ) -> Vec<BlockRef> {
        let first = offset / BLOCK_SIZE;
        let end = offset.saturating_add(len);
        self.blocks
            .iter()
            .filter(|(i, b)| {
                *i >= first && i * BLOCK_SIZE < end && b.len >= INLINE_MAX && pred(&b.id)
            })
            .map(|(_, b)| *b)
            .collect()
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub entry: QueueEntry,
    pub local: LocalEntry,
    /// What the backend is known to hold at the path.
    pub remote: Option<RemoteRow>,
}

/// How a change found in the backend was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
    /// A local change is pending (or the entry is open): left for later.
    Skipped,
    /// Both sides changed: the local version was renamed to this name.
    Conflict(Vec<u8>),
}

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
    /// Installs the reader of the backends.
    pub fn set_remote(&self, source: Arc<dyn RemoteSource>) {
        let _ = self.remote.set(source);
    }

    /// Installs what tells the kernel to drop cached names and data that a
    /// change from a backend made stale.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Installs what wakes the sidecar after a change.
    pub fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }

    pub(crate) fn wake_sync(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    /// Whether writers are waiting for cache space: the sidecar then
    /// uploads without waiting for files to be quiet.
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Queue entries ready at `now` (with `hurry`, also those not yet
    /// quiet).
    pub fn sync_due(
        &self,
        now: i64,
        hurry: bool,
        skip: &[String],
        limit: usize,
    ) -> CoreResult<Vec<QueueEntry>> {
        Ok(msync::due(&self.lock().conn, now, hurry, skip, limit)?)
    }

    /// When the next queue entry becomes ready, if any waits.
    pub fn sync_next_ready(&self) -> CoreResult<Option<i64>> {
        Ok(msync::next_ready(&self.lock().conn, msync::now_ns())?)
    }

    /// Every queue entry, oldest change first.
    pub fn sync_pending(&self) -> CoreResult<Vec<QueueEntry>> {
        Ok(msync::all_entries(&self.lock().conn)?)
    }

    /// Per namespace: (name, entries, bytes, oldest change ns, last error).
    pub fn sync_stats(&self) -> CoreResult<Vec<msync::QueueStats>> {
        Ok(msync::stats(&self.lock().conn)?)
    }

    /// The directory, name and (if any) entry at `ns/path`.
    fn resolve_in(conn: &Connection, ns: &str, path: &[u8]) -> CoreResult<Option<Found>> {
        let Some(mut cur) = meta::lookup(conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(None);
        };
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, dirs) = comps.split_last().expect("split yields one part");
        for c in dirs {
            match meta::lookup_row(conn, cur, c)? {
                Some(r) if r.attr.kind == FileKind::Dir => cur = r.attr.ino,
                _ => return Ok(None),
            }
        }
        let row = meta::lookup_row(conn, cur, last)?;
        Ok(Some((cur, last.to_vec(), row)))
    }

    /// A consistent view of a queued path: the entry, what is there locally
    /// (a file's committed version, its blocks pinned) and what the backend
    /// is known to hold. `None` if the entry is gone.
    pub fn sync_snapshot(&self, ns: &str, path: &[u8]) -> CoreResult<Option<Snapshot>> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(entry) = msync::get_entry(&st.conn, ns, path)? else {
            return Ok(None);
        };
        let remote = msync::get_remote(&st.conn, ns, path)?;
        let row = Locker::resolve_in(&st.conn, ns, path)?.and_then(|(_, _, r)| r);
        let local = match row {
            None => LocalEntry::Absent,
            Some(r) => {
                let a = &r.attr;
                match a.kind {
                    FileKind::Dir => LocalEntry::Dir {
                        mode: a.perm as u32,
                        mtime: a.mtime,
                    },
                    FileKind::Symlink => LocalEntry::Symlink {
                        target: r.target.clone().unwrap_or_default(),
                        mode: a.perm as u32,
                        mtime: a.mtime,
                    },
                    FileKind::File => LocalEntry::File(Locker::snap_file_locked(st, &r)?),
                    _ => LocalEntry::Other,
                }
            }
        };
        Ok(Some(Snapshot {
            entry,
            local,
            remote,
        }))
    }

    /// The committed version of file `r`, its blocks pinned so that they
    /// stay until `sync_release`.
    pub(crate) fn snap_file_locked(st: &mut State, r: &meta::InodeRow) -> CoreResult<FileSnap> {
        let a = &r.attr;
        let blocks = meta::file_blocks_from(&st.conn, a.ino, 0)?;
        let mut inline = HashMap::new();
        for (_, b) in &blocks {
            if b.len < INLINE_MAX {
                if let Some(d) = meta::get_inline_block(&st.conn, &b.id)? {
                    inline.insert(b.id, Arc::new(d));
                }
            } else {
                st.pin_read(b.id);
            }
        }
        let writers = st
            .handles
            .values()
            .any(|h| matches!(h, Handle::File { ino, mode, .. } if *ino == a.ino && mode.write));
        Ok(FileSnap {
            ino: a.ino,
            version: r.version,
            size: a.size,
            mtime: a.mtime,
            mode: a.perm as u32,
            sha256: r.sha256.as_deref().and_then(|s| s.try_into().ok()),
            remote_only: r.remote_only,
            writers,
            blocks,
            inline,
        })
    }

    /// Drops the pins of a snapshot; blocks no file names any more are freed.
    pub fn sync_release(&self, snap: &FileSnap) {
        let mut st = self.lock();
        let st = &mut *st;
        for (_, b) in &snap.blocks {
            if b.len >= INLINE_MAX {
                st.unpin_read(&b.id);
            }
        }
        self.reap_unpinned(st);
    }

    /// `len` bytes of the snapshot's content from `offset`. Blocks evicted
    /// since (the file was confirmed elsewhere, then moved or copied) are
    /// fetched back through the same checked path as a reader's.
    pub fn sync_read(&self, snap: &FileSnap, offset: u64, len: u64) -> CoreResult<Vec<u8>> {
        // A block fetched for this read may be evicted again before it is
        // read (the cache is small and others read too): then once more.
        let mut tries = 0;
        loop {
            let missing = snap.blocks_in(offset, len, |id| !self.blocks.contains(id));
            if !missing.is_empty() {
                self.fetch_snap_blocks(snap, &missing)?;
            }
            match self.read_snap_here(snap, offset, len) {
                Err(CoreError::Corrupt(_)) if tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    /// `sync_read` of blocks that are all in the cache (or inline).
    fn read_snap_here(&self, snap: &FileSnap, offset: u64, len: u64) -> CoreResult<Vec<u8>> {
        let end = snap.size.min(offset + len);
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        let first = offset / BLOCK_SIZE;
        let start = snap.blocks.partition_point(|(i, _)| *i < first);
        for (idx, b) in &snap.blocks[start..] {
            let bstart = idx * BLOCK_SIZE;
            if bstart >= end {
                break;
            }
            let from = offset.max(bstart);
            let to = end.min(bstart + b.len as u64);
            if from >= to {
                continue;
            }
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            let bo = from - bstart;
            if b.len < INLINE_MAX {
                let d = snap.inline.get(&b.id).ok_or_else(|| {
                    CoreError::Corrupt(format!("block {} is missing", b.id.hex()))
                })?;
                dst.copy_from_slice(&d[bo as usize..bo as usize + dst.len()]);
            } else {
                match self.blocks.read_at(&b.id, bo, dst)? {
                    Some(n) if n == dst.len() => {}
                    _ => {
                        return Err(CoreError::Corrupt(format!(
                            "block {} is not in the cache",
                            b.id.hex()
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A path where a backend holds this content, as LOCKER uploaded or
    /// checked it (never on the strength of an object's label): a source
    /// for a server-side copy. (namespace, path, what is there.)
    pub fn sync_source(&self, sha: &[u8; 32]) -> CoreResult<Option<(String, Vec<u8>, RemoteRow)>> {
        Ok(msync::remote_with_sha(&self.lock().conn, sha, true)?)
    }

    /// The backend confirmed `ns/path` as `remote` (or its absence): records
    /// it, and removes the queue entry unless the path changed meanwhile.
    pub fn sync_done(
        &self,
        ns: &str,
        path: &[u8],
        seq: i64,
        remote: Option<RemoteRow>,
    ) -> CoreResult<bool> {
        let mut st = self.lock();
        let found = Locker::resolve_in(&st.conn, ns, path)?;
        let done = st.tx(|tx| {
            match &remote {
                Some(r) => msync::put_remote(tx, ns, path, r)?,
                None => msync::delete_remote(tx, ns, path)?,
            }
            // The file at the path has exactly this content: its version is
            // confirmed at its own path (its checksum is only ever set for
            // the version it was computed from).
            if let (Some(r), Some((_, _, Some(local)))) = (&remote, &found)
                && r.kind == REMOTE_FILE
                && let Some(sha) = &r.sha256
            {
                tx.prepare_cached(
                    "UPDATE inodes SET synced_version = version WHERE ino = ?1 AND sha256 = ?2",
                )?
                .execute(rusqlite::params![local.attr.ino.0 as i64, &sha[..]])?;
            }
            Ok(msync::finish(tx, ns, path, seq)?)
        })?;
        Ok(done)
    }

    /// Before the object at `ns/path` is replaced or deleted: if it is the
    /// only copy in any backend of content that other files here still hold
    /// (a copy, the other side of an exchange), those files' evicted blocks
    /// are fetched back and kept until their own path is confirmed.
    pub fn sync_secure(&self, ns: &str, path: &[u8]) -> CoreResult<()> {
        let inos: Vec<(InodeNo, bool)> = {
            let mut st = self.lock();
            let Some(row) = msync::get_remote(&st.conn, ns, path)? else {
                return Ok(());
            };
            let Some(sha) = row.sha256.filter(|_| row.kind == REMOTE_FILE) else {
                return Ok(());
            };
            if msync::other_copies(&st.conn, &sha, ns, path)? > 0 {
                return Ok(());
            }
            // The file at the path itself, if it still has this content, is
            // not replaced by pushing it.
            let here = Locker::resolve_in(&st.conn, ns, path)?
                .and_then(|(_, _, r)| r)
                .map_or(0, |r| r.attr.ino.0 as i64);
            let inos: Vec<(InodeNo, bool)> = {
                let mut q = st.conn.prepare_cached(
                    "SELECT ino, remote_only FROM inodes WHERE sha256 = ?1 AND kind = 1 AND ino != ?2",
                )?;
                let rows = q.query_map(rusqlite::params![&sha[..], here], |r| {
                    Ok((
                        InodeNo(r.get::<_, i64>(0)? as u64),
                        r.get::<_, i64>(1)? != 0,
                    ))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            if inos.is_empty() {
                return Ok(());
            }
            st.tx(|tx| {
                for (ino, _) in &inos {
                    tx.prepare_cached("UPDATE inodes SET synced_version = -1 WHERE ino = ?1")?
                        .execute([ino.0 as i64])?;
                }
                Ok(())
            })?;
            inos
        };
        for (ino, remote_only) in inos {
            if remote_only {
                self.materialize_with(ino, true)?;
            } else {
                self.fetch_missing(ino)?;
            }
        }
        Ok(())
    }

    /// Puts a queue entry back for a try at `ready` (ns since the epoch).
    pub fn sync_retry(
        &self,
        ns: &str,
        path: &[u8],
        ready: i64,
        error: Option<&str>,
    ) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| Ok(msync::retry(tx, ns, path, ready, error)?))
    }

    pub fn remote_rows(&self, ns: &str) -> CoreResult<Vec<(Vec<u8>, RemoteRow)>> {
        Ok(msync::remote_rows(&self.lock().conn, ns)?)
    }

    /// Whether anything below directory `ns/path` has a pending change.
    pub fn sync_queued_under(&self, ns: &str, path: &[u8]) -> CoreResult<bool> {
        let mut lo = path.to_vec();
        lo.push(b'/');
        let mut hi = path.to_vec();
        hi.push(b'/' + 1);
        let st = self.lock();
        let n: i64 = st.conn.query_row(
            "SELECT count(*) FROM sync_queue WHERE ns = ?1 AND path > ?2 AND path < ?3",
            rusqlite::params![ns, lo, hi],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Whether `ns/path`, or a directory above it, has a pending change: a
    /// listing must not bring back (or replace) what a queued change is
    /// about to remove, such as the files of a tree whose deletion is still
    /// on its way.
    pub fn sync_queued(&self, ns: &str, path: &[u8]) -> CoreResult<bool> {
        let st = self.lock();
        let mut end = path.len();
        loop {
            if msync::get_entry(&st.conn, ns, &path[..end])?.is_some() {
                return Ok(true);
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return Ok(false),
            }
        }
    }

    /// Owner of the namespace directory: what entries made from the backend
    /// get.
    fn ns_caller(conn: &Connection, ns_ino: InodeNo) -> CoreResult<Caller> {
        let r = meta::get_inode(conn, ns_ino)?.ok_or(CoreError::NotFound)?;
        Ok(Caller {
            uid: r.attr.uid,
            gid: r.attr.gid,
            pid: 0,
        })
    }

    /// The directory that holds `path` in namespace `ns`, made (unmarked) if
    /// missing. `None` if something not a directory is in the way.
    fn ensure_parent(
        &self,
        st: &mut State,
        ns: &str,
        path: &[u8],
    ) -> CoreResult<Option<(InodeNo, Vec<u8>)>> {
        let Some(mut cur) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(None);
        };
        let caller = Locker::ns_caller(&st.conn, cur)?;
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, dirs) = comps.split_last().expect("split yields one part");
        for c in dirs {
            match meta::lookup_row(&st.conn, cur, c)? {
                Some(r) if r.attr.kind == FileKind::Dir => cur = r.attr.ino,
                Some(_) => return Ok(None),
                None => {
                    let a =
                        self.make_node_locked(st, &caller, cur, c, libc::S_IFDIR | 0o755, None)?;
                    cur = a.ino;
                }
            }
        }
        Ok(Some((cur, last.to_vec())))
    }

    /// Makes the entry described by `row` at `name` in `dir`.
    fn create_from_remote(
        &self,
        st: &mut State,
        dir: InodeNo,
        name: &[u8],
        row: &RemoteRow,
        ns_ino: InodeNo,
    ) -> CoreResult<()> {
        let caller = Locker::ns_caller(&st.conn, ns_ino)?;
        match row.kind {
            REMOTE_DIR => {
                let mode = row.mode.unwrap_or(0o755) & 0o7777;
                self.make_node_locked(st, &caller, dir, name, libc::S_IFDIR | mode, None)?;
            }
            REMOTE_SYMLINK => {
                let target = row.target.clone().unwrap_or_default();
                self.make_node_locked(
                    st,
                    &caller,
                    dir,
                    name,
                    libc::S_IFLNK | 0o777,
                    Some(&target),
                )?;
            }
            _ => {
                let mode = row.mode.unwrap_or(0o644) & 0o7777;
                let a =
                    self.make_node_locked(st, &caller, dir, name, libc::S_IFREG | mode, None)?;
                self.crash.hit("remote-node");
                self.set_remote_content(st, a.ino, row)?;
            }
        }
        Ok(())
    }

    /// Makes file `ino` hold the backend's content described by `row`
    /// (fetched when first read).
    fn set_remote_content(&self, st: &mut State, ino: InodeNo, row: &RemoteRow) -> CoreResult<()> {
        self.forget_file(st, ino);
        // Where it comes from, for content listed without a checksum.
        let src: Option<Vec<u8>> = match meta::any_name(&st.conn, ino)? {
            Some((parent, name)) => ns_path(&st.conn, parent, &name)?.map(|(ns, p)| {
                let mut v = ns.into_bytes();
                v.push(b'/');
                v.extend_from_slice(&p);
                v
            }),
            None => None,
        };
        let mtime = row.mtime.unwrap_or_else(Timestamp::now);
        let freed = st.tx(|tx| {
            let mut freed = Vec::new();
            for (idx, b) in meta::file_blocks_from(tx, ino, 0)? {
                if meta::decref_block(tx, &b.id)? && b.len >= INLINE_MAX {
                    freed.push(b.id);
                }
                meta::delete_file_block(tx, ino, idx)?;
            }
            tx.prepare_cached(
                "UPDATE inodes SET remote_only = 1, size = ?2, sha256 = ?3, mtime_s = ?4,
                    mtime_ns = ?5, ctime_s = ?4, ctime_ns = ?5, perm = coalesce(?6, perm),
                    version = version + 1, synced_version = version + 1, remote_src = ?7
                 WHERE ino = ?1",
            )?
            .execute(rusqlite::params![
                ino.0 as i64,
                row.size as i64,
                row.sha256.as_ref().map(|s| &s[..]),
                mtime.sec,
                mtime.nsec as i64,
                row.mode.map(|m| (m & 0o7777) as i64),
                src,
            ])?;
            Ok(freed)
        })?;
        self.free_blocks(st, &freed);
        Ok(())
    }

    /// Renames the local entry `name` of `dir` to a conflict name (marked:
    /// it is uploaded under that name). Returns the new name.
    fn move_to_conflict(&self, st: &mut State, dir: InodeNo, name: &[u8]) -> CoreResult<Vec<u8>> {
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

    /// Applies an entry found in the backend at `ns/path` (new, or changed
    /// since `remote` was recorded). `started` is when the listing began:
    /// rows recorded after it are newer than the listing and win.
    pub fn apply_remote(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        started: i64,
    ) -> CoreResult<Applied> {
        let before = self.kernel_view(ns, path)?;
        let r = self.apply_remote_inner(ns, path, row, started)?;
        self.tell_kernel(ns, path, before, &r)?;
        Ok(r)
    }

    fn apply_remote_inner(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        started: i64,
    ) -> CoreResult<Applied> {
        let mut st = self.lock();
        let st = &mut *st;
        if msync::get_entry(&st.conn, ns, path)?.is_some() {
            return Ok(Applied::Skipped);
        }
        let old = msync::get_remote(&st.conn, ns, path)?;
        if old.as_ref().is_some_and(|o| o.at_ns > started) {
            return Ok(Applied::Skipped);
        }
        let Some(ns_ino) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(Applied::Skipped);
        };
        st.suppress_marks = true;
        // One transaction: a crash leaves the entry whole or absent, never
        // an empty file (which a later refresh would take for a change
        // made here).
        let r = self.batch(st, |st| {
            self.apply_remote_locked(st, ns, path, row, old, ns_ino)
        });
        st.suppress_marks = false;
        let r = r?;
        st.durable()?;
        self.crash.hit("remote-applied");
        Ok(r)
    }

    fn apply_remote_locked(
        &self,
        st: &mut State,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        old: Option<RemoteRow>,
        ns_ino: InodeNo,
    ) -> CoreResult<Applied> {
        let Some((dir, name)) = self.ensure_parent(st, ns, path)? else {
            tracing::warn!(namespace = ns, path = %String::from_utf8_lossy(path), "a file in the backend has a non-directory in its path here; left alone");
            return Ok(Applied::Skipped);
        };
        let record = |st: &mut State, row: &RemoteRow| -> CoreResult<()> {
            st.tx(|tx| Ok(msync::put_remote(tx, ns, path, row)?))
        };
        let Some(local) = meta::lookup_row(&st.conn, dir, &name)? else {
            self.create_from_remote(st, dir, &name, &row, ns_ino)?;
            record(st, &row)?;
            return Ok(Applied::Created);
        };
        let lsha: Option<[u8; 32]> = local.sha256.as_deref().and_then(|s| s.try_into().ok());
        let is_open = st
            .files
            .get(&local.attr.ino)
            .is_some_and(|f| f.open > 0 || !f.is_clean_pub());
        // The new object was written over something other than the version
        // this host uploaded last (its writer never saw that one): two
        // writes were
        // concurrent, and the store let the later one land over the other
        // (as stores that ignore conditional writes do). The version held
        // here is kept, under a conflict name, rather than replaced.
        let concurrent = local.attr.kind == FileKind::File
            && row.kind == REMOTE_FILE
            && !local.remote_only
            && row.base.is_some()
            && old
                .as_ref()
                .is_some_and(|o| o.own && o.kind == REMOTE_FILE && o.sha256 != row.base);
        if concurrent {
            tracing::warn!(
                namespace = ns,
                path = %String::from_utf8_lossy(path),
                "the backend's new version was written without seeing the one held here: concurrent writes"
            );
        }
        // Local matches what the backend held before: it is clean.
        let clean = !concurrent
            && match (&old, local.attr.kind) {
                // Content only in the backend was never changed here.
                (Some(o), FileKind::File) => {
                    o.kind == REMOTE_FILE
                        && (local.remote_only || (lsha.is_some() && lsha == o.sha256))
                }
                (Some(o), FileKind::Symlink) => {
                    o.kind == REMOTE_SYMLINK && local.target == o.target
                }
                (Some(o), FileKind::Dir) => o.kind == REMOTE_DIR,
                _ => false,
            };
        match (local.attr.kind, row.kind) {
            (FileKind::Dir, REMOTE_DIR) => {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            (FileKind::File, REMOTE_FILE) if row.sha256.is_some() && lsha == row.sha256 => {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            (FileKind::Symlink, REMOTE_SYMLINK) if local.target == row.target => {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            _ if is_open => Ok(Applied::Skipped),
            (FileKind::File, REMOTE_FILE) if clean && local.attr.nlink > 1 => {
                // One name of a hard link changed in the backend: this name
                // gets the new content, the others keep theirs.
                self.unlink_locked(st, dir, &name)?;
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            (FileKind::File, REMOTE_FILE) if clean => {
                self.set_remote_content(st, local.attr.ino, &row)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            (FileKind::Dir, _) => {
                tracing::warn!(namespace = ns, path = %String::from_utf8_lossy(path), "the backend has a file where this side has a directory; left alone");
                Ok(Applied::Skipped)
            }
            (_, _) if clean && local.attr.kind != FileKind::Dir => {
                self.unlink_locked(st, dir, &name)?;
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            _ => {
                let moved = self.move_to_conflict(st, dir, &name)?;
                tracing::warn!(
                    namespace = ns,
                    path = %String::from_utf8_lossy(path),
                    kept_as = %String::from_utf8_lossy(&moved),
                    "both this side and the backend changed a file: the backend's version keeps the name, this side's is kept under a conflict name"
                );
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                st.tx(|tx| {
                    tx.prepare_cached("DELETE FROM sync_queue WHERE ns = ?1 AND path = ?2")?
                        .execute(rusqlite::params![ns, path])?;
                    Ok(())
                })?;
                Ok(Applied::Conflict(moved))
            }
        }
    }

    /// Applies the disappearance from the backend of `ns/path`: the local
    /// entry goes too if it is unchanged since the backend had it.
    pub fn apply_remote_gone(&self, ns: &str, path: &[u8], started: i64) -> CoreResult<Applied> {
        let before = self.kernel_view(ns, path)?;
        let r = self.apply_remote_gone_inner(ns, path, started)?;
        self.tell_kernel(ns, path, before, &r)?;
        Ok(r)
    }

    fn apply_remote_gone_inner(&self, ns: &str, path: &[u8], started: i64) -> CoreResult<Applied> {
        let mut st = self.lock();
        let st = &mut *st;
        if msync::get_entry(&st.conn, ns, path)?.is_some() {
            return Ok(Applied::Skipped);
        }
        let Some(old) = msync::get_remote(&st.conn, ns, path)? else {
            return Ok(Applied::Unchanged);
        };
        if old.at_ns > started {
            return Ok(Applied::Skipped);
        }
        let found = Locker::resolve_in(&st.conn, ns, path)?;
        st.suppress_marks = true;
        let r = self.batch(st, |st| {
            if let Some((dir, name, Some(local))) = found {
                let lsha: Option<[u8; 32]> =
                    local.sha256.as_deref().and_then(|s| s.try_into().ok());
                let is_open = st
                    .files
                    .get(&local.attr.ino)
                    .is_some_and(|f| f.open > 0 || !f.is_clean_pub());
                let clean = match local.attr.kind {
                    FileKind::File => {
                        old.kind == REMOTE_FILE
                            && (local.remote_only || (lsha.is_some() && lsha == old.sha256))
                    }
                    FileKind::Symlink => old.kind == REMOTE_SYMLINK && local.target == old.target,
                    FileKind::Dir => old.kind == REMOTE_DIR,
                    _ => false,
                };
                if is_open {
                    return Ok(Applied::Skipped);
                }
                if !clean {
                    // Changed here: push it again.
                    st.suppress_marks = false;
                    let m = st.mark();
                    st.tx(|tx| {
                        msync::delete_remote(tx, ns, path)?;
                        mark_name(tx, m, dir, &name, local.attr.size)
                    })?;
                    return Ok(Applied::Skipped);
                }
                if local.attr.kind == FileKind::Dir {
                    if meta::dir_is_empty(&st.conn, local.attr.ino)? {
                        self.rmdir_locked(st, dir, &name)?;
                    }
                } else {
                    self.unlink_locked(st, dir, &name)?;
                }
            }
            st.tx(|tx| Ok(msync::delete_remote(tx, ns, path)?))?;
            Ok(Applied::Updated)
        });
        st.suppress_marks = false;
        let r = r?;
        st.durable()?;
        Ok(r)
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

    /// The kernel's possible view of `ns/path`: each (directory, name) along
    /// it, and the inode at the end if there is one.
    fn kernel_view(&self, ns: &str, path: &[u8]) -> CoreResult<Vec<Invalidate>> {
        let st = self.lock();
        let mut out = Vec::new();
        let Some(mut cur) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(out);
        };
        for comp in path.split(|&b| b == b'/') {
            out.push(Invalidate::Entry(cur, comp.to_vec()));
            match meta::lookup(&st.conn, cur, comp)? {
                Some(next) => cur = next,
                None => return Ok(out),
            }
        }
        out.push(Invalidate::Inode(cur));
        Ok(out)
    }

    /// Changes made from a backend happened behind the kernel's back: drop
    /// what it caches of the names and inodes involved (before and after),
    /// so that readers see them at once.
    fn tell_kernel(
        &self,
        ns: &str,
        path: &[u8],
        before: Vec<Invalidate>,
        r: &Applied,
    ) -> CoreResult<()> {
        if matches!(r, Applied::Skipped | Applied::Unchanged) {
            return Ok(());
        }
        let Some(inval) = self.invalidator.get() else {
            return Ok(());
        };
        let mut all = before;
        let after = self.kernel_view(ns, path)?;
        if let (Applied::Conflict(moved), Some(Invalidate::Entry(dir, _))) = (
            r,
            after
                .iter()
                .rev()
                .find(|i| matches!(i, Invalidate::Entry(..))),
        ) {
            all.push(Invalidate::Entry(*dir, moved.clone()));
        }
        for i in after {
            if !all.contains(&i) {
                all.push(i);
            }
        }
        inval(&all);
        Ok(())
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
                tx.prepare_cached("DELETE FROM sync_queue WHERE ns = ?1 AND path = ?2")?
                    .execute(rusqlite::params![ns, path])?;
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

    /// Bytes of blocks in the cache, its bound, and the bytes not yet in a
    /// backend.
    pub fn cache_info(&self) -> CoreResult<(u64, u64, u64)> {
        let dirty = msync::dirty_bytes(&self.lock().conn, INLINE_MAX)?;
        Ok((self.blocks.bytes(), self.opts.cache_limit, dirty))
    }

    /// Drops least recently used blocks that a backend holds until the
    /// cache holds at most `target` bytes (or nothing more can go). Returns
    /// the number of blocks dropped.
    pub fn evict(&self, target: u64) -> CoreResult<u64> {
        let mut st = self.lock();
        let st = &mut *st;
        // A bounded pass: the state lock is held throughout.
        let mut left = st.lru.len().min(512);
        let mut dropped = 0;
        while self.blocks.bytes() > target && left > 0 {
            left -= 1;
            let Some((id, ())) = st.lru.pop_lru() else {
                break;
            };
            if st.pins.contains_key(&id) {
                st.lru.put(id, ());
                continue;
            }
            // Files open for writing keep their blocks (their next version
            // needs them); files open for reading only may lose blocks they
            // have read past: those come back from the backend.
            // A block only readers hold goes too while the backend holds
            // the current version of a file naming it: the reader fetches
            // it again. (One no file names any more is a reader's only
            // copy: it stays.)
            let ok = match msync::block_in_backend(&st.conn, &id.0)? {
                Some(inos) => {
                    let readers_only_copy = st.read_pins.contains_key(&id) && inos.is_empty();
                    !readers_only_copy
                        && !inos.iter().any(|i| {
                            st.files
                                .get(&InodeNo(*i as u64))
                                .is_some_and(|f| f.writers > 0 || !f.is_clean_pub())
                        })
                }
                None => false,
            };
            if !ok {
                st.lru.put(id, ());
                continue;
            }
            self.blocks.remove(&id)?;
            msync::set_block_present(&st.conn, &id.0, false)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// How many blocks of file `ino` are not in the cache (tests).
    #[cfg(test)]
    pub(crate) fn evicted_blocks(&self, ino: InodeNo) -> usize {
        let st = self.lock();
        meta::file_blocks_from(&st.conn, ino, 0)
            .unwrap()
            .into_iter()
            .filter(|(_, b)| b.len >= INLINE_MAX && !self.blocks.contains(&b.id))
            .count()
    }

    /// Once per store: queues every entry of every namespace, so that files
    /// written before backends existed (a store from an older version) are
    /// pushed too. Entries the backend already holds cost a HEAD each.
    pub(crate) fn seed_sync_queue(&self) -> CoreResult<()> {
        let mut st = self.lock();
        let seeded: Option<i64> = st
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'sync_seeded'",
                [],
                |r| r.get(0),
            )
            .ok();
        if seeded.is_some() {
            return Ok(());
        }
        let m = st.mark();
        let n = st.tx(|tx| {
            let mut n = 0;
            for (ns_name, ns_ino, _) in meta::list_dir(tx, InodeNo::ROOT)? {
                for (name, ino, _) in meta::list_dir(tx, ns_ino)? {
                    mark_moved(tx, m, ino, (ns_ino, &name), None)?;
                    n += 1;
                }
                let _ = ns_name;
            }
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('sync_seeded', 1)",
                [],
            )?;
            Ok(n)
        })?;
        if n > 0 {
            tracing::info!(entries = n, "queued the existing files for their backends");
        }
        Ok(())
    }

    /// Loads the cache's blocks into the eviction order (at open).
    pub(crate) fn load_lru(&self) -> CoreResult<()> {
        let mut st = self.lock();
        let ids = msync::present_file_blocks(&st.conn, INLINE_MAX)?;
        for id in ids {
            if let Some(id) = BlockId::from_slice(&id) {
                st.lru.put(id, ());
            }
        }
        st.next_seq = msync::max_seq(&st.conn)?;
        Ok(())
    }

    /// The state lock, once a write of `len` bytes fits in the cache bound
    /// plus its margin (blocks on disk and uncommitted data in memory,
    /// checked under the lock the write then holds, so concurrent writers
    /// cannot overshoot together). Meanwhile uploads and eviction make room;
    /// ENOSPC after the configured timeout.
    pub(crate) fn lock_for_write(&self, len: u64) -> CoreResult<std::sync::MutexGuard<'_, State>> {
        use std::sync::atomic::Ordering;
        let bound = self.opts.cache_limit + self.opts.cache_margin;
        let mut start: Option<std::time::Instant> = None;
        loop {
            let st = self.lock();
            if self.blocks.bytes() + st.mem_dirty + len <= bound {
                if start.is_some() {
                    self.pressure.fetch_sub(1, Ordering::Relaxed);
                }
                return Ok(st);
            }
            drop(st);
            let t0 = *start.get_or_insert_with(|| {
                self.pressure.fetch_add(1, Ordering::Relaxed);
                std::time::Instant::now()
            });
            if t0.elapsed() >= self.opts.write_timeout {
                self.pressure.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(
                    cache_bytes = self.blocks.bytes(),
                    bound,
                    waited_s = t0.elapsed().as_secs(),
                    "the cache is full of data not yet in the backend: a write is refused with ENOSPC (is the backend reachable? see `locker status`)"
                );
                return Err(CoreError::NoSpace);
            }
            self.wake_sync();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Fetches every committed block of `ino` that was evicted: a file
    /// about to change (or be hashed) needs all of them here.
    pub(crate) fn fetch_missing(&self, ino: InodeNo) -> CoreResult<()> {
        for _ in 0..4 {
            let need: Vec<BlockRef> = {
                let st = self.lock();
                meta::file_blocks_from(&st.conn, ino, 0)?
                    .into_iter()
                    .map(|(_, r)| r)
                    .filter(|r| r.len >= INLINE_MAX && !self.blocks.contains(&r.id))
                    .collect()
            };
            if need.is_empty() {
                return Ok(());
            }
            // In rounds, so the cache bound holds for a file larger than a
            // round.
            for chunk in need.chunks(16) {
                self.fetch_blocks(ino, chunk)?;
            }
        }
        tracing::error!(
            inode = ino.0,
            "blocks of a file could not all be fetched back"
        );
        Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
    }

    /// Makes room for `incoming` bytes of fetched blocks.
    fn room_for_fetch(&self, incoming: u64) -> CoreResult<()> {
        let limit = self.opts.cache_limit;
        if self.blocks.bytes() + incoming > limit {
            self.evict(limit.saturating_sub(incoming))?;
        }
        Ok(())
    }

    /// Fetches missing blocks `want` of file `ino` from the backend, checks
    /// each against its SHA-256 and stores it.
    pub(crate) fn fetch_blocks(&self, ino: InodeNo, want: &[BlockRef]) -> CoreResult<()> {
        self.fetch_shared(want, |mine| self.fetch_blocks_now(ino, mine))
    }

    /// Fetches missing blocks `want` of a snapshot: located by the
    /// snapshot's own content hash and block list, so they can be fetched
    /// even after the file changed or went away.
    pub(crate) fn fetch_snap_blocks(&self, snap: &FileSnap, want: &[BlockRef]) -> CoreResult<()> {
        self.fetch_shared(want, |mine| {
            let sha = snap.sha256.ok_or_else(|| {
                CoreError::Corrupt(format!(
                    "inode {} lost a block before it reached a backend",
                    snap.ino.0
                ))
            })?;
            let located = mine
                .iter()
                .map(|b| {
                    snap.blocks
                        .iter()
                        .find(|(_, r)| r.id == b.id)
                        .map(|(i, _)| (*i, *b))
                        .ok_or(CoreError::NotFound)
                })
                .collect::<CoreResult<Vec<_>>>()?;
            self.fetch_located(snap.ino, &sha, located)
        })
    }

    /// Runs `fetch` for the blocks of `want` no other reader is fetching,
    /// and waits for those others are.
    fn fetch_shared(
        &self,
        want: &[BlockRef],
        fetch: impl FnOnce(&[BlockRef]) -> CoreResult<()>,
    ) -> CoreResult<()> {
        // Blocks another reader is fetching already are waited for, not
        // fetched twice.
        let (mine, theirs): (Vec<BlockRef>, Vec<BlockRef>) = {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for b in want {
                if f.contains(&b.id) {
                    theirs.push(*b);
                } else {
                    f.insert(b.id);
                    mine.push(*b);
                }
            }
            (mine, theirs)
        };
        let r = if mine.is_empty() {
            Ok(())
        } else {
            fetch(&mine)
        };
        {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            for b in &mine {
                f.remove(&b.id);
            }
            self.fetched.notify_all();
            while theirs.iter().any(|b| f.contains(&b.id)) {
                f = self.fetched.wait(f).unwrap_or_else(|p| p.into_inner());
            }
        }
        // What the others failed to fetch, the caller's retry asks again.
        r
    }

    fn fetch_blocks_now(&self, ino: InodeNo, want: &[BlockRef]) -> CoreResult<()> {
        let (sha, idxs) = {
            let st = self.lock();
            let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
            let sha = row.sha256.clone().ok_or_else(|| {
                CoreError::Corrupt(format!(
                    "inode {} lost a block before it reached a backend",
                    ino.0
                ))
            })?;
            let mut idxs = Vec::new();
            for b in want {
                let idx: Option<i64> = st
                    .conn
                    .prepare_cached(
                        "SELECT idx FROM file_blocks WHERE ino = ?1 AND block = ?2 LIMIT 1",
                    )?
                    .query_row(rusqlite::params![ino.0 as i64, &b.id.0[..]], |r| r.get(0))
                    .ok();
                idxs.push(idx.ok_or(CoreError::NotFound)? as u64);
            }
            (sha, idxs)
        };
        self.fetch_located(
            ino,
            &sha,
            idxs.into_iter().zip(want.iter().copied()).collect(),
        )
    }

    /// Fetches blocks (index in the file, block) of the content that hashes
    /// to `sha` (of inode `ino`, for messages) from a backend holding it,
    /// checks each against its SHA-256 and stores it.
    fn fetch_located(
        &self,
        ino: InodeNo,
        sha: &[u8],
        mut order: Vec<(u64, BlockRef)>,
    ) -> CoreResult<()> {
        let source = self.remote.get().ok_or_else(|| {
            CoreError::Corrupt("a block is missing and no backend is attached".into())
        })?;
        let (ns, path, etag) = {
            let st = self.lock();
            let (ns, path, row) =
                msync::remote_with_sha(&st.conn, sha, false)?.ok_or_else(|| {
                    CoreError::Corrupt(format!("no backend holds the content of inode {}", ino.0))
                })?;
            (ns, path, row.etag)
        };
        // Neighbouring blocks go in one ranged GET (up to 8 MiB): fewer
        // requests for a sequential reader's block and its readahead.
        order.sort_by_key(|(i, _)| *i);
        order.dedup_by_key(|(i, _)| *i);
        let mut groups: Vec<Vec<(u64, BlockRef)>> = Vec::new();
        for (i, b) in order {
            match groups.last_mut() {
                Some(g)
                    if g.len() < 8
                        && g.last()
                            .is_some_and(|(li, lb)| li + 1 == i && lb.len as u64 == BLOCK_SIZE) =>
                {
                    g.push((i, b))
                }
                _ => groups.push(vec![(i, b)]),
            }
        }
        let ranges: Vec<(u64, u64)> = groups
            .iter()
            .map(|g| {
                (
                    g[0].0 * BLOCK_SIZE,
                    g.iter().map(|(_, b)| b.len as u64).sum(),
                )
            })
            .collect();
        self.room_for_fetch(ranges.iter().map(|r| r.1).sum())?;
        let got = source.fetch(&ns, &path, Some(&etag), &ranges).map_err(|e| {
            tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), error = %e, "fetching blocks from the backend failed");
            CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO))
        })?;
        let mut pieces: Vec<(BlockRef, Vec<u8>)> = Vec::new();
        for (g, chunk) in groups.iter().zip(got) {
            let mut at = 0usize;
            for (_, b) in g {
                let end = (at + b.len as usize).min(chunk.len());
                pieces.push((*b, chunk[at..end].to_vec()));
                at = end;
            }
        }
        for (b, data) in pieces {
            if data.len() != b.len as usize || BlockId::of(&data) != b.id {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), block = %b.id.hex(), "a block fetched from the backend does not match its SHA-256; refusing it");
                return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
            }
            self.blocks.put_with_id(&b.id, &data)?;
            let mut st = self.lock();
            msync::set_block_present(&st.conn, &b.id.0, true)?;
            st.lru.put(b.id, ());
        }
        Ok(())
    }

    /// Downloads the content of a file that exists only in the backend,
    /// checks it against the backend's SHA-256, and gives the file its block
    /// list.
    pub fn materialize(&self, ino: InodeNo) -> CoreResult<()> {
        self.materialize_with(ino, false)
    }

    /// `materialize`; with `keep_all`, every block is kept in the cache
    /// (the object is about to go).
    fn materialize_with(&self, ino: InodeNo, keep_all: bool) -> CoreResult<()> {
        let mut stored: Vec<BlockId> = Vec::new();
        let r = self.materialize_inner(ino, keep_all, &mut stored);
        if r.is_err() || !stored.is_empty() {
            // Blocks stored for a download that did not complete: free them
            // unless something names them now.
            let mut st = self.lock();
            let gone: Vec<BlockId> = stored
                .iter()
                .filter(|id| !st.held(id) && !meta::block_known(&st.conn, id).unwrap_or(true))
                .copied()
                .collect();
            self.free_blocks(&mut st, &gone);
        }
        r
    }

    fn materialize_inner(
        &self,
        ino: InodeNo,
        keep_all: bool,
        stored: &mut Vec<BlockId>,
    ) -> CoreResult<()> {
        use sha2::{Digest, Sha256};
        let source = self
            .remote
            .get()
            .ok_or_else(|| {
                CoreError::Corrupt("file content is in a backend but none is attached".into())
            })?
            .clone();
        let (ns, path, size, sha, version, etag) = {
            let st = self.lock();
            let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
            if !row.remote_only {
                return Ok(());
            }
            let sha: Option<[u8; 32]> = row.sha256.as_deref().and_then(|s| s.try_into().ok());
            let src = match &sha {
                Some(s) => msync::remote_with_sha(&st.conn, s, false)?.map(|(n, p, _)| (n, p)),
                None => None,
            };
            let src = match src {
                Some(s) => Some(s),
                None => {
                    // Listed without a checksum: the object it was listed as.
                    let r: Option<Vec<u8>> = st
                        .conn
                        .prepare_cached("SELECT remote_src FROM inodes WHERE ino = ?1")?
                        .query_row([ino.0 as i64], |r| r.get(0))?;
                    r.and_then(|b| {
                        let i = b.iter().position(|&c| c == b'/')?;
                        Some((
                            String::from_utf8_lossy(&b[..i]).into_owned(),
                            b[i + 1..].to_vec(),
                        ))
                    })
                }
            };
            let (ns, path) = src.ok_or(CoreError::NotFound)?;
            // Only from the version of the object that was listed.
            let etag = msync::get_remote(&st.conn, &ns, &path)?.map(|r| r.etag);
            (ns, path, row.attr.size, sha, row.version, etag)
        };
        let eio = || CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO));
        let mut h = Sha256::new();
        // (index, block, inline bytes, stored in the cache)
        let mut list: Vec<(u64, BlockRef, Option<Vec<u8>>, bool)> = Vec::new();
        // Ranges of 8 MiB, four at a time: few requests per file (stores
        // bill them, and some serve each range by reading the object).
        const RANGE: u64 = 8 * BLOCK_SIZE;
        let mut off = 0u64;
        while off < size {
            let ranges: Vec<(u64, u64)> = (0..4u64)
                .map(|k| off + k * RANGE)
                .filter(|o| *o < size)
                .map(|o| (o, (size - o).min(RANGE)))
                .collect();
            let got = source.fetch(&ns, &path, etag.as_deref(), &ranges).map_err(|e| {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), error = %e, "fetching a file from the backend failed");
                eio()
            })?;
            for (chunk, (roff, rlen)) in got.into_iter().zip(&ranges) {
                if chunk.len() as u64 != *rlen {
                    tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), "the backend's object is shorter than listed; refusing it");
                    return Err(eio());
                }
                for (k, data) in chunk.chunks(BLOCK_SIZE as usize).enumerate() {
                    h.update(data);
                    let i = roff / BLOCK_SIZE + k as u64;
                    if data.iter().all(|&b| b == 0) {
                        continue;
                    }
                    let id = BlockId::of(data);
                    let r = BlockRef {
                        id,
                        len: data.len() as u32,
                    };
                    if (data.len() as u32) < INLINE_MAX {
                        list.push((i, r, Some(data.to_vec()), false));
                    } else if keep_all
                        || self.blocks.bytes() + data.len() as u64 <= self.opts.cache_limit
                    {
                        if self.blocks.put_with_id(&id, data)? {
                            stored.push(id);
                        }
                        list.push((i, r, None, true));
                    } else {
                        // Past the cache bound: only its name is kept (now
                        // known and checked); a read fetches it by range.
                        list.push((i, r, None, false));
                    }
                }
            }
            off += ranges.iter().map(|r| r.1).sum::<u64>();
        }
        let got: [u8; 32] = h.finalize().into();
        if sha.is_some_and(|s| s != got) {
            tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), "a file fetched from the backend does not match its SHA-256; refusing it");
            let mut st = self.lock();
            let gone: Vec<BlockId> = list
                .iter()
                .filter(|(_, r, _, stored)| {
                    *stored && !meta::block_known(&st.conn, &r.id).unwrap_or(true)
                })
                .map(|(_, r, _, _)| r.id)
                .collect();
            self.free_blocks(&mut st, &gone);
            return Err(eio());
        }
        let mut st = self.lock();
        let st = &mut *st;
        let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        if !row.remote_only || row.version != version {
            // Changed meanwhile; the caller looks again.
            return Ok(());
        }
        st.tx(|tx| {
            for (i, r, data, stored) in &list {
                if let Some(d) = data {
                    meta::put_inline_block(tx, &r.id, d)?;
                }
                if data.is_some() || *stored {
                    meta::incref_block(tx, &r.id, r.len)?;
                } else {
                    meta::incref_absent_block(tx, &r.id, r.len)?;
                }
                meta::put_file_block(tx, ino, *i, *r)?;
            }
            tx.prepare_cached("UPDATE inodes SET remote_only = 0, sha256 = ?2 WHERE ino = ?1")?
                .execute(rusqlite::params![ino.0 as i64, &got[..]])?;
            // The version fetched (by its ETag) hashes to `got`: the object
            // now has a checksum LOCKER checked itself, and its blocks can be
            // evicted and fetched back like any other.
            tx.prepare_cached(
                "UPDATE remote SET sha256 = ?3, verified = max(verified, 1)
                 WHERE ns = ?1 AND path = ?2 AND kind = 1 AND (sha256 IS NULL OR sha256 = ?3)
                    AND (?4 IS NULL OR etag = ?4)",
            )?
            .execute(rusqlite::params![ns, path, &got[..], etag])?;
            Ok(())
        })?;
        for (_, r, _, stored) in &list {
            if *stored {
                st.lru.put(r.id, ());
            }
        }
        if let Some(fs) = st.files.get_mut(&ino) {
            fs.remote_only = false;
        }
        Ok(())
    }
}
