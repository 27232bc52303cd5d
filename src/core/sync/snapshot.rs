//! Snapshots: a consistent view of a queued path (what is there locally,
//! a file's committed version with its blocks held, what the backend is
//! known to hold), and reading a snapshot's content while the file changes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::sync::Purpose;
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Handle, Locker, State};
use crate::meta::sync::{self as msync, QueueEntry, RemoteRow};
use crate::meta::{self, BlockRef};

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

/// How far past what it asks for a snapshot's reader has evicted blocks
/// fetched with those it needs (`snap_read_as`): one ranged GET's worth.
const SNAP_AHEAD: u64 = 8 << 20;

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
    pub(super) blocks: Vec<(u64, BlockRef)>,
    inline: HashMap<BlockId, Arc<Vec<u8>>>,
}

impl FileSnap {
    /// Whether the snapshot holds nothing in the core: no block pinned (a
    /// small file's blocks are in the snapshot itself) and no stream, so
    /// that `Locker::sync_release` has nothing to do for it.
    pub fn pins_nothing(&self) -> bool {
        !self.remote_only && self.blocks.iter().all(|(_, b)| b.len < INLINE_MAX)
    }

    /// The whole content, when all of it is in the snapshot itself (a
    /// small file: its blocks live in the database and were read with
    /// it), so reading it needs neither the core nor a thread that may
    /// wait. `None` otherwise.
    pub fn inline_content(&self) -> Option<Vec<u8>> {
        if !self.pins_nothing() {
            return None;
        }
        let mut out = vec![0u8; self.size as usize];
        for (idx, b) in &self.blocks {
            let start = (idx * BLOCK_SIZE) as usize;
            if start >= out.len() {
                break;
            }
            let d = self.inline.get(&b.id)?;
            let n = (b.len as usize).min(out.len() - start);
            out[start..start + n].copy_from_slice(d.get(..n)?);
        }
        Some(out)
    }

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

impl Locker {
    /// A consistent view of a queued path: the entry, what is there locally
    /// (a file's committed version, its blocks pinned) and what the backend
    /// is known to hold. `None` if the entry is gone.
    pub fn sync_snapshot(&self, ns: &str, path: &[u8]) -> CoreResult<Option<Snapshot>> {
        let mut st = self.lock();
        let st = &mut *st;
        self.record_digests(st);
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
        if r.remote_only {
            *st.remote_snaps.entry(a.ino).or_default() += 1;
        }
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

    /// Blocks pinned by readers and snapshots now (tests).
    #[cfg(test)]
    pub(crate) fn read_pinned(&self) -> usize {
        self.lock().read_pins.len()
    }

    /// Drops the pins of a snapshot; blocks no file names any more are freed.
    pub fn sync_release(&self, snap: &FileSnap) {
        if snap.pins_nothing() {
            return;
        }
        if snap.remote_only {
            self.stream_settle(snap.ino);
        }
        let mut st = self.lock();
        let st = &mut *st;
        if snap.remote_only {
            let last = match st.remote_snaps.get_mut(&snap.ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    st.remote_snaps.remove(&snap.ino);
                    true
                }
            };
            if last && !st.files.contains_key(&snap.ino) {
                // Read by streaming, by no other snapshot, and open
                // nowhere else.
                self.forget_stream(st, snap.ino);
            }
        }
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
        self.snap_read_as(snap, offset, len, offset.saturating_add(len), Purpose::Keep)
    }

    /// `sync_read` for `purpose`: a reader's (`Read`: the blocks of a file
    /// too large to keep are passed on from memory, as for a reader through
    /// the mount, see `passing.rs`) or the sidecar's. The reader goes on
    /// reading in order up to `upto`: a fetch this read needs takes the
    /// evicted blocks after it up to there too, up to `SNAP_AHEAD` (one
    /// ranged GET rather than one per block).
    pub(crate) fn snap_read_as(
        &self,
        snap: &FileSnap,
        offset: u64,
        len: u64,
        upto: u64,
        mut purpose: Purpose,
    ) -> CoreResult<Vec<u8>> {
        if snap.remote_only {
            return self.remote_snap_read(snap, offset, len);
        }
        let absent = |id: &BlockId| !self.blocks.contains(id) && !self.passing.holds(id);
        // A block fetched for this read may be evicted again before it is
        // read (the cache is small and others read too), or pushed out of
        // memory by other readers: then once more, stored this time.
        let mut tries = 0;
        loop {
            let mut missing = snap.blocks_in(offset, len, absent);
            if !missing.is_empty() {
                let end = offset.saturating_add(len);
                let ahead = upto.min(offset.saturating_add(SNAP_AHEAD));
                if ahead > end {
                    missing.extend(snap.blocks_in(end, ahead - end, absent));
                    // (A block the file holds twice is fetched once.)
                    let mut seen = std::collections::HashSet::new();
                    missing.retain(|b| seen.insert(b.id));
                }
                self.fetch_snap_blocks(snap, &missing, purpose)?;
            }
            match self.read_snap_here(snap, offset, len, purpose == Purpose::Read) {
                Err(CoreError::Corrupt(_)) if tries < 3 => {
                    tries += 1;
                    purpose = Purpose::Keep;
                }
                r => return r,
            }
        }
    }

    /// `sync_read` of a version only in a backend: streamed, or, once it
    /// is here (a whole read made it an ordinary file), from its blocks.
    fn remote_snap_read(&self, snap: &FileSnap, offset: u64, len: u64) -> CoreResult<Vec<u8>> {
        if let Some(v) = self.stream_read(snap.ino, Some(snap.version), offset, len)? {
            return Ok(v);
        }
        let mut fetched = false;
        let fresh = loop {
            {
                let mut st = self.lock();
                let st = &mut *st;
                let r = meta::get_inode(&st.conn, snap.ino)?.ok_or(CoreError::NotFound)?;
                if r.version != snap.version {
                    tracing::info!(
                        inode = snap.ino.0,
                        "a file changed while it was read from its backend; the read is cut short"
                    );
                    return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
                }
                if !r.remote_only {
                    break Locker::snap_file_locked(st, &r)?;
                }
            }
            if fetched {
                return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
            }
            // Not streamable (no object version to pin): fetched whole.
            self.materialize(snap.ino)?;
            fetched = true;
        };
        let out = self.sync_read(&fresh, offset, len);
        self.sync_release(&fresh);
        out
    }

    /// `sync_read` of blocks that are all in the cache, inline, or held in
    /// memory for readers; `reader`: those of them read to their end are
    /// done with (a reader goes through a file once).
    fn read_snap_here(
        &self,
        snap: &FileSnap,
        offset: u64,
        len: u64,
        reader: bool,
    ) -> CoreResult<Vec<u8>> {
        let mut passed = Vec::new();
        let end = snap.size.min(offset + len);
        let mut out = crate::buf::zeroed(end.saturating_sub(offset) as usize);
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
                    _ if self.passing.read_at(&b.id, bo, dst) => {
                        if bo + dst.len() as u64 == b.len as u64 {
                            passed.push(b.id);
                        }
                    }
                    _ => {
                        crate::buf::give(out);
                        return Err(CoreError::Corrupt(format!(
                            "block {} is not in the cache",
                            b.id.hex()
                        )));
                    }
                }
            }
        }
        if reader && !passed.is_empty() {
            self.passing.done(&passed);
        }
        Ok(out)
    }
}
