//! Regular-file data: open handles, reads, writes, truncation and commits.
//!
//! Write path: a write changes the per-inode `FileState` only. Each touched
//! block becomes a dirty entry: `Mem` (bytes in memory, for partial writes),
//! `Stored` (hashed and written to the block store but not yet in the block
//! list: whole-block writes, blocks a sequential writer just filled, and
//! spills when dirty memory passes its limit) or `Hole` (zeros). Commit —
//! on flush, fsync, release and truncate — stores the `Mem` blocks and
//! replaces the touched rows of the block list in one transaction, so its
//! cost is proportional to the blocks touched, not to the file.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::sync::Purpose;
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Handle, Locker, State, hasher};
use crate::meta::{self, BlockRef};

/// Largest file size accepted (as ext4's 16 TiB).
const MAX_FILE_SIZE: u64 = 16 << 40;

pub(crate) enum Dirty {
    /// Bytes in memory; shared with the hasher while it works on them.
    Mem(Arc<crate::buf::Owned>),
    Stored(BlockRef),
    Hole,
}

pub(crate) struct FileState {
    /// Open handles on this inode.
    pub open: u32,
    /// Those of them open for writing.
    pub writers: u32,
    /// Current logical size (what `stat` shows).
    pub size: u64,
    /// Size recorded in the metadata.
    committed_size: u64,
    dirty: BTreeMap<u64, Dirty>,
    /// Rows of the block list at or past this index are gone (a shrinking
    /// truncate not yet committed).
    cut: Option<u64>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    /// Bytes held in `Mem` entries.
    mem: u64,
    /// A name of this file was removed while it was open: at the last close,
    /// check whether it has any left.
    pub maybe_unlinked: bool,
    /// The committed content is only in a backend (see `materialize`).
    pub remote_only: bool,
    /// Set while the content is exactly what was written from offset 0 in
    /// order, up to this offset: its whole blocks went to `digests` as they
    /// were filled, and a commit at this size can have its SHA-256 without
    /// reading the file again.
    pub(crate) seq: Option<u64>,
    /// Rows of the committed block list read so far, so that reading a
    /// block again runs no SQL.
    known: std::cell::RefCell<KnownBlocks>,
}

/// Block-list rows as read while the metadata's change count was `at`:
/// any change to the metadata (of any file) moves the count and empties
/// them, so they never outlive the rows they copy.
#[derive(Default)]
struct KnownBlocks {
    at: u64,
    rows: std::collections::HashMap<u64, Option<BlockRef>>,
}

/// Rows a file keeps at most (1 GiB of content); past that it starts over.
const KNOWN_MAX: usize = 1024;

/// Whether a read at `offset` continues a sequential reader whose last
/// answered request ended at `next` and whose readahead has asked for the
/// blocks before `ahead` (a window of `window` blocks). The kernel serves
/// one reader with several requests at once: those whose blocks are here
/// are answered while an earlier one waits for its block, so a request may
/// come well behind the last one answered, or well ahead of it. Anywhere in
/// the region the readahead covers counts, as does near the last request.
pub(crate) fn in_sequence(offset: u64, next: u64, ahead: u64, window: u64) -> bool {
    offset.abs_diff(next) <= 2 * BLOCK_SIZE
        || (window > 0
            && offset < ahead.saturating_add(2).saturating_mul(BLOCK_SIZE)
            && offset.saturating_add((window + 2) * BLOCK_SIZE) >= next)
}

/// What a read needs from a backend before it can be served.
enum Miss {
    /// The whole file (it exists only in the backend).
    File(InodeNo),
    /// The range read, streamed (the file exists only in the backend and
    /// is too large to wait for).
    Stream(InodeNo),
    /// These blocks of the file (evicted from the cache).
    Blocks(InodeNo, Vec<BlockRef>),
}

impl FileState {
    fn load(st: &State, ino: InodeNo) -> CoreResult<FileState> {
        let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        match row.attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(CoreError::IsDir),
            _ => return Err(CoreError::Invalid("not a regular file")),
        }
        Ok(FileState::of(row.attr.size, row.remote_only))
    }

    /// A file of `size` committed bytes, none of them changed.
    pub(crate) fn of(size: u64, remote_only: bool) -> FileState {
        FileState {
            open: 0,
            writers: 0,
            size,
            committed_size: size,
            dirty: BTreeMap::new(),
            cut: None,
            mtime: None,
            ctime: None,
            mem: 0,
            maybe_unlinked: false,
            remote_only,
            seq: (size == 0).then_some(0),
            known: Default::default(),
        }
    }

    pub(crate) fn is_clean_pub(&self) -> bool {
        self.is_clean()
    }

    /// All of its content is only in a backend: nothing here to change.
    pub(crate) fn only_remote(&self) -> bool {
        self.remote_only && self.dirty.is_empty() && self.cut.is_none()
    }

    /// The committed content was replaced by `size` bytes only in a
    /// backend (the file holds no uncommitted change).
    pub(crate) fn now_remote(&mut self, size: u64) {
        self.size = size;
        self.committed_size = size;
        self.remote_only = true;
        self.seq = None;
    }

    /// Indices of the blocks held in memory.
    fn mem_indices(&self) -> Vec<u64> {
        self.dirty
            .iter()
            .filter(|(_, d)| matches!(d, Dirty::Mem(_)))
            .map(|(i, _)| *i)
            .collect()
    }

    pub(crate) fn dirty_indices(&self) -> Vec<u64> {
        self.dirty.keys().copied().collect()
    }

    fn is_clean(&self) -> bool {
        self.dirty.is_empty()
            && self.cut.is_none()
            && self.mtime.is_none()
            && self.ctime.is_none()
            && self.size == self.committed_size
    }

    /// The committed block at `idx`, as this state sees it.
    fn committed(&self, st: &State, ino: InodeNo, idx: u64) -> CoreResult<Option<BlockRef>> {
        if self.cut.is_some_and(|c| idx >= c) {
            return Ok(None);
        }
        let now = st.generation.load(std::sync::atomic::Ordering::SeqCst);
        let mut known = self.known.borrow_mut();
        if known.at != now || known.rows.len() >= KNOWN_MAX {
            known.rows.clear();
            known.at = now;
        }
        if let Some(r) = known.rows.get(&idx) {
            return Ok(*r);
        }
        let r = meta::file_block(&st.conn, ino, idx)?;
        known.rows.insert(idx, r);
        Ok(r)
    }
}

impl Locker {
    /// Runs `f` on the state of file `ino`, creating it if needed; the state
    /// stays registered afterwards (commit drops it when clean and closed).
    fn with_file<T>(
        &self,
        st: &mut State,
        ino: InodeNo,
        f: impl FnOnce(&mut State, &mut FileState) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let mut fs = match st.files.remove(&ino) {
            Some(fs) => fs,
            None => FileState::load(st, ino)?,
        };
        let r = f(st, &mut fs);
        st.files.insert(ino, fs);
        r
    }

    /// Replaces the dirty entry of block `idx`, keeping pins and memory
    /// accounting right.
    pub(crate) fn set_dirty(st: &mut State, fs: &mut FileState, idx: u64, new: Option<Dirty>) {
        if let Some(Dirty::Stored(r)) = &new {
            st.pin(r.id);
        }
        if let Some(Dirty::Mem(b)) = &new {
            st.mem_dirty += b.len() as u64;
            fs.mem += b.len() as u64;
        }
        let old = match new {
            Some(d) => fs.dirty.insert(idx, d),
            None => fs.dirty.remove(&idx),
        };
        match old {
            Some(Dirty::Stored(r)) => st.unpin(&r.id),
            Some(Dirty::Mem(b)) => {
                st.mem_dirty -= b.len() as u64;
                fs.mem -= b.len() as u64;
            }
            Some(Dirty::Hole) | None => {}
        }
    }

    /// Hashes and stores one block's bytes in the block store (all zeros
    /// become a hole). Small blocks are not stored here: `None` says they
    /// stay in memory until the commit puts them in the database.
    fn store_block(&self, data: &[u8]) -> CoreResult<Option<Dirty>> {
        if data.iter().all(|&b| b == 0) {
            return Ok(Some(Dirty::Hole));
        }
        if (data.len() as u32) < INLINE_MAX {
            return Ok(None);
        }
        let (id, _) = self.blocks.put(data)?;
        Ok(Some(Dirty::Stored(BlockRef {
            id,
            len: data.len() as u32,
        })))
    }

    fn missing(r: &BlockRef) -> CoreError {
        CoreError::Corrupt(format!("block {} is missing", r.id.hex()))
    }

    /// The bytes of a block, wherever it is kept.
    pub(crate) fn read_block(&self, st: &State, r: &BlockRef) -> CoreResult<Vec<u8>> {
        let mut data = if r.len < INLINE_MAX {
            meta::get_inline_block(&st.conn, &r.id)?
        } else {
            self.blocks.read(&r.id)?
        }
        .ok_or_else(|| Locker::missing(r))?;
        data.truncate(r.len as usize);
        Ok(data)
    }

    /// Copies the block's bytes from offset `bo` into `dst` (which must not
    /// reach past the block's length).
    fn read_block_at(&self, st: &State, r: &BlockRef, bo: u64, dst: &mut [u8]) -> CoreResult<()> {
        if r.len < INLINE_MAX {
            let data =
                meta::get_inline_block(&st.conn, &r.id)?.ok_or_else(|| Locker::missing(r))?;
            let b = bo as usize;
            if b + dst.len() > data.len() {
                return Err(Locker::missing(r));
            }
            dst.copy_from_slice(&data[b..b + dst.len()]);
            return Ok(());
        }
        match self.blocks.read_at(&r.id, bo, dst)? {
            Some(n) if n == dst.len() => Ok(()),
            _ => Err(Locker::missing(r)),
        }
    }

    /// Makes block `idx` a `Mem` entry holding its current bytes.
    fn make_mem(
        &self,
        st: &mut State,
        ino: InodeNo,
        fs: &mut FileState,
        idx: u64,
    ) -> CoreResult<()> {
        let data = match fs.dirty.get(&idx) {
            Some(Dirty::Mem(_)) => return Ok(()),
            Some(Dirty::Stored(r)) => self.read_block(st, r)?,
            Some(Dirty::Hole) => Vec::new(),
            None => match fs.committed(st, ino, idx)? {
                Some(r) => self.read_block(st, &r)?,
                None => Vec::new(),
            },
        };
        Locker::set_dirty(st, fs, idx, Some(Dirty::Mem(Arc::new(data.into()))));
        Ok(())
    }

    /// Applies `f` to the in-memory bytes of block `idx`, keeping the memory
    /// accounting right.
    fn edit_mem(
        &self,
        st: &mut State,
        ino: InodeNo,
        fs: &mut FileState,
        idx: u64,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> CoreResult<usize> {
        self.make_mem(st, ino, fs, idx)?;
        let Some(Dirty::Mem(buf)) = fs.dirty.get_mut(&idx) else {
            unreachable!("make_mem leaves a Mem entry")
        };
        // Copies the bytes first if the hasher still holds them.
        let buf = Arc::make_mut(buf);
        let before = buf.len() as u64;
        f(buf);
        let after = buf.len() as u64;
        st.mem_dirty = st.mem_dirty + after - before;
        fs.mem = fs.mem + after - before;
        Ok(after as usize)
    }

    /// Hands the whole in-memory block `idx`, just filled in order from the
    /// file's start, to the file's running hash (see `digest.rs`).
    fn digest_block(&self, ino: InodeNo, fs: &mut FileState, idx: u64) {
        if fs.seq.is_none() {
            return;
        }
        let sent = match fs.dirty.get(&idx) {
            Some(Dirty::Mem(buf)) => self.digests.block(ino, idx, buf),
            _ => false,
        };
        if !sent {
            self.stop_digest(ino, fs);
        }
    }

    /// The file is no longer written in order from its start (or its
    /// running hash fell behind): its hash is taken from its blocks.
    pub(crate) fn stop_digest(&self, ino: InodeNo, fs: &mut FileState) {
        // The thread hears of a file with its first whole block.
        if fs.seq.take().is_some_and(|end| end >= BLOCK_SIZE) {
            self.digests.forget(ino);
        }
    }

    /// Hands the whole in-memory block `idx` to the hasher, or stores it
    /// here if the hasher is busy.
    fn queue_block(
        &self,
        st: &mut State,
        ino: InodeNo,
        fs: &mut FileState,
        idx: u64,
    ) -> CoreResult<()> {
        let Some(Dirty::Mem(buf)) = fs.dirty.get(&idx) else {
            return Ok(());
        };
        let job = hasher::Job {
            ino,
            idx,
            data: buf.clone(),
        };
        match st.hasher.submit(job) {
            Ok(()) => Ok(()),
            Err(_) => self.spill_block(st, fs, idx),
        }
    }

    /// Applies the hasher's results: entries that still hold the hashed
    /// buffer become `Stored`; a block stored for a buffer since replaced is
    /// freed unless something else uses it. With `wait`, first waits for
    /// every outstanding job.
    pub(crate) fn drain_hashed(&self, st: &mut State, wait: bool) {
        loop {
            let done = if wait && st.hasher.outstanding > 0 {
                match st.hasher.done.recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            } else {
                match st.hasher.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            st.hasher.outstanding -= 1;
            let current = st
                .files
                .get(&done.ino)
                .and_then(|f| match f.dirty.get(&done.idx) {
                    Some(Dirty::Mem(b)) => Some(Arc::ptr_eq(b, &done.data)),
                    _ => None,
                })
                == Some(true);
            match done.result {
                Ok(r) if current => {
                    let mut fs = st.files.remove(&done.ino).expect("checked above");
                    let d = match r {
                        Some(r) => Dirty::Stored(r),
                        None => Dirty::Hole,
                    };
                    Locker::set_dirty(st, &mut fs, done.idx, Some(d));
                    if let Some(r) = r
                        && !self.blocks.contains(&r.id)
                    {
                        // The hasher found the content already cached, and
                        // eviction dropped it before the pin above: store it
                        // again from the buffer.
                        if let Err(e) = self.blocks.put_with_id(&r.id, &done.data[..r.len as usize])
                        {
                            tracing::warn!(error = %e, "storing a block failed; keeping it in memory");
                            Locker::set_dirty(
                                st,
                                &mut fs,
                                done.idx,
                                Some(Dirty::Mem(done.data.clone())),
                            );
                        }
                    }
                    st.files.insert(done.ino, fs);
                }
                Ok(Some(r)) => {
                    if !st.held(&r.id) && !meta::block_known(&st.conn, &r.id).unwrap_or(true) {
                        self.free_blocks(st, &[r.id]);
                    }
                }
                Ok(None) => {}
                // The entry stays in memory; the commit stores it again.
                Err(e) => {
                    tracing::warn!(error = %e, "storing a block in the background failed; retrying at commit")
                }
            }
        }
    }

    /// Stores the in-memory block `idx` (still uncommitted).
    fn spill_block(&self, st: &mut State, fs: &mut FileState, idx: u64) -> CoreResult<()> {
        if let Some(Dirty::Mem(buf)) = fs.dirty.get(&idx)
            && let Some(d) = self.store_block(buf)?
        {
            Locker::set_dirty(st, fs, idx, Some(d));
        }
        Ok(())
    }

    /// Stores in-memory blocks (this file's first, then other files') until
    /// uncommitted memory is down to `target`. Going well below the limit
    /// keeps a writer just over it from storing blocks on every write.
    fn relieve_memory(&self, st: &mut State, fs: &mut FileState, target: u64) -> CoreResult<()> {
        let idxs = fs.mem_indices();
        for idx in idxs {
            if st.mem_dirty <= target {
                return Ok(());
            }
            self.spill_block(st, fs, idx)?;
        }
        let others: Vec<InodeNo> = st
            .files
            .iter()
            .filter(|(_, f)| f.mem > 0)
            .map(|(i, _)| *i)
            .collect();
        for ino in others {
            if st.mem_dirty <= target {
                break;
            }
            if let Some(mut other) = st.files.remove(&ino) {
                let r = self.spill_all(st, &mut other);
                st.files.insert(ino, other);
                r?;
            }
        }
        Ok(())
    }

    fn spill_all(&self, st: &mut State, fs: &mut FileState) -> CoreResult<()> {
        let idxs = fs.mem_indices();
        for idx in idxs {
            self.spill_block(st, fs, idx)?;
        }
        Ok(())
    }

    fn file_handle(st: &State, fh: HandleId) -> CoreResult<(InodeNo, OpenMode)> {
        match st.handles.get(&fh) {
            Some(Handle::File { ino, mode, .. }) => Ok((*ino, *mode)),
            _ => Err(CoreError::BadHandle),
        }
    }

    /// The state lock (taken by `lock`) for a change through handle `fh`,
    /// its file's content here: a file open for writing whose content
    /// became only a backend's (another writer replaced the only object
    /// holding its version, and a fetch followed it) is fetched first. A
    /// change made to it as it is would find no bytes around it and leave
    /// zeros there.
    fn lock_local<'a>(
        &'a self,
        fh: HandleId,
        lock: impl Fn() -> CoreResult<crate::core::StateGuard<'a>>,
    ) -> CoreResult<crate::core::StateGuard<'a>> {
        for _ in 0..4 {
            let st = lock()?;
            let (ino, _) = Locker::file_handle(&st, fh)?;
            if !st.files.get(&ino).is_some_and(FileState::only_remote) {
                return Ok(st);
            }
            drop(st);
            self.fetch_missing(ino)?;
        }
        Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
    }

    /// Opens regular file `ino`.
    pub fn open(&self, ino: InodeNo, mode: OpenMode) -> CoreResult<HandleId> {
        if mode.write && !mode.truncate {
            // Writing into content that is only in a backend: fetch it.
            self.ensure_local(ino)?;
        }
        let fh = self.open_handle(ino, mode)?;
        if mode.write && !mode.truncate {
            // A file that changes becomes a new version the backend does not
            // hold, whose unchanged blocks must be here: fetch the evicted
            // ones, now that the open writer keeps them from eviction.
            if let Err(e) = self.fetch_missing(ino) {
                let _ = self.release(fh);
                return Err(e);
            }
        }
        Ok(fh)
    }

    /// A file was opened for reading: its access time becomes now if
    /// `policy` says so, and the kernel is told its cached attributes are
    /// stale (attributes only: no page is touched, so this is safe from a
    /// request thread). Returns whether it changed. Access times are
    /// local: no backend is told.
    pub fn touch_atime(&self, ino: InodeNo, policy: AtimePolicy) -> CoreResult<bool> {
        const DAY: i64 = 24 * 3600;
        if policy == AtimePolicy::Never {
            return Ok(false);
        }
        let now = Timestamp::now();
        let mut st = self.lock();
        let a = Locker::attr_locked(&st, ino)?;
        let due = match policy {
            AtimePolicy::Never => false,
            AtimePolicy::Always => a.atime != now,
            AtimePolicy::Relative => {
                a.atime <= a.mtime || a.atime <= a.ctime || now.sec - a.atime.sec >= DAY
            }
        };
        if !due {
            return Ok(false);
        }
        st.tx(|tx| {
            let mut r = meta::get_inode(tx, ino)?.ok_or(CoreError::NotFound)?.attr;
            r.atime = now;
            meta::update_attr(tx, &r)?;
            Ok(())
        })?;
        drop(st);
        if let Some(inval) = self.invalidator.get() {
            inval(&[crate::core::sync::Invalidate::Attr(ino)]);
        }
        Ok(true)
    }

    fn open_handle(&self, ino: InodeNo, mode: OpenMode) -> CoreResult<HandleId> {
        self.open_handle_locked(&mut self.lock(), ino, mode)
    }

    pub(crate) fn open_handle_locked(
        &self,
        st: &mut State,
        ino: InodeNo,
        mode: OpenMode,
    ) -> CoreResult<HandleId> {
        self.with_file(st, ino, |_, fs| {
            fs.open += 1;
            if mode.write {
                fs.writers += 1;
            }
            Ok(())
        })?;
        if mode.truncate && mode.write {
            let now = Timestamp::now();
            if let Err(e) = self.truncate_locked(st, ino, 0, now) {
                if let Some(fs) = st.files.get_mut(&ino) {
                    fs.open -= 1;
                    fs.writers -= 1;
                }
                return Err(e);
            }
        }
        let fh = HandleId(st.next_handle);
        st.next_handle += 1;
        st.handles.insert(
            fh,
            Handle::File {
                ino,
                mode,
                next_read: 0,
                ahead: 0,
                window: 0,
            },
        );
        Ok(fh)
    }

    /// Fetches the content of `ino` from its backend if it is not local.
    pub(crate) fn ensure_local(&self, ino: InodeNo) -> CoreResult<()> {
        let remote_only = {
            let st = self.lock();
            meta::get_inode(&st.conn, ino)?.is_some_and(|r| r.remote_only)
        };
        if remote_only {
            self.materialize(ino)?;
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`; short only at the end of file.
    /// Data not in the cache is fetched from the backend first (without
    /// holding the state lock), then the read is served from the cache.
    pub fn read(&self, fh: HandleId, offset: u64, size: u32) -> CoreResult<Vec<u8>> {
        // Blocks of a file too large to keep are held in memory for the
        // reader (see `sync/passing.rs`), where many other readers could
        // push them out before this one comes back for them: fetched a
        // second time, they are stored, so the read always gets there.
        let mut purpose = Purpose::Read;
        for _ in 0..8 {
            let miss = {
                let mut st = self.lock();
                match self.read_locked(&mut st, fh, offset, size)? {
                    Ok(v) => return Ok(v),
                    Err(m) => m,
                }
            };
            match miss {
                Miss::File(ino) => self.materialize(ino)?,
                Miss::Stream(ino) => match self.stream_read(ino, None, offset, size as u64)? {
                    Some(v) => return Ok(v),
                    // No longer only in the backend, or no version to pin
                    // ranges to: read as usual.
                    None => self.materialize(ino)?,
                },
                Miss::Blocks(ino, refs) => {
                    self.fetch_blocks(ino, &refs, purpose)?;
                    purpose = Purpose::Keep;
                }
            }
        }
        tracing::error!(
            handle = fh.0,
            offset,
            "data kept disappearing from the cache while being read"
        );
        Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
    }

    /// `read`, if it needs nothing from a backend: `None` when it would
    /// have to fetch (the caller then calls `read` where waiting is fine).
    pub fn read_cached(&self, fh: HandleId, offset: u64, size: u32) -> CoreResult<Option<Vec<u8>>> {
        let mut st = self.lock();
        Ok(self.read_locked(&mut st, fh, offset, size)?.ok())
    }

    fn read_locked(
        &self,
        st: &mut State,
        fh: HandleId,
        offset: u64,
        size: u32,
    ) -> CoreResult<Result<Vec<u8>, Miss>> {
        let (ino, sequential, ahead, window) = match st.handles.get(&fh) {
            Some(Handle::File {
                ino,
                next_read,
                ahead,
                window,
                ..
            }) => (
                *ino,
                in_sequence(offset, *next_read, *ahead, *window),
                *ahead,
                *window,
            ),
            _ => return Err(CoreError::BadHandle),
        };
        let fs = st.files.get(&ino).ok_or(CoreError::BadHandle)?;
        let file_size = fs.size;
        if offset >= file_size {
            return Ok(Ok(Vec::new()));
        }
        if fs.only_remote() {
            return Ok(Err(if self.streams_reads(file_size) {
                Miss::Stream(ino)
            } else {
                Miss::File(ino)
            }));
        }
        if sequential && offset.is_multiple_of(BLOCK_SIZE) {
            // A sequential reader entering a block: have the disk read the
            // next blocks ahead, each being a file of its own.
            let idx = offset / BLOCK_SIZE;
            let first = if offset == 0 { idx } else { idx + 1 };
            for ahead in first..=idx + 2 {
                if ahead * BLOCK_SIZE >= file_size {
                    break;
                }
                let r = match fs.dirty.get(&ahead) {
                    Some(Dirty::Stored(r)) => Some(*r),
                    Some(_) => None,
                    None => fs.committed(st, ino, ahead)?,
                };
                if let Some(r) = r.filter(|r| r.len >= INLINE_MAX) {
                    self.blocks.prefetch(&r.id);
                }
            }
        }
        let end = file_size.min(offset.saturating_add(size as u64));
        let mut out = crate::buf::zeroed((end - offset) as usize);
        let mut missing: Vec<BlockRef> = Vec::new();
        let mut touched: Vec<BlockId> = Vec::new();
        // Blocks passed on from memory that this read takes to their end.
        let mut passed: Vec<BlockId> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK_SIZE;
            let bo = pos % BLOCK_SIZE;
            let n = (BLOCK_SIZE - bo).min(end - pos) as usize;
            let dst = &mut out[(pos - offset) as usize..][..n];
            let (src, committed) = match fs.dirty.get(&idx) {
                Some(Dirty::Mem(buf)) => {
                    let b = bo as usize;
                    if b < buf.len() {
                        let m = n.min(buf.len() - b);
                        dst[..m].copy_from_slice(&buf[b..b + m]);
                    }
                    (None, false)
                }
                Some(Dirty::Stored(r)) => (Some(*r), false),
                Some(Dirty::Hole) => (None, false),
                None => (fs.committed(st, ino, idx)?, true),
            };
            if let Some(r) = src
                && bo < r.len as u64
            {
                let m = n.min((r.len as u64 - bo) as usize);
                if r.len >= INLINE_MAX && committed {
                    match self.blocks.read_at(&r.id, bo, &mut dst[..m])? {
                        Some(k) if k == m => touched.push(r.id),
                        _ if self.passing.read_at(&r.id, bo, &mut dst[..m]) => {
                            if bo + m as u64 == r.len as u64 {
                                passed.push(r.id);
                            }
                        }
                        _ => missing.push(r),
                    }
                } else {
                    self.read_block_at(st, &r, bo, &mut dst[..m])?;
                }
            }
            pos += n as u64;
        }
        // Streaming readahead: evicted blocks ahead of a sequential reader
        // are fetched in the background, several ranged GETs at once, in a
        // window that doubles while the reader stays sequential. It starts
        // at the reader's first miss: a file whose blocks are all here
        // costs no lookup of the blocks ahead.
        let prefetcher = self.prefetcher.get();
        let mut stream = (0, 0);
        if let Some(p) = prefetcher
            && (sequential || offset == 0)
            && (window > 0 || !missing.is_empty())
        {
            let next = (end - 1) / BLOCK_SIZE + 1;
            let nblocks = file_size.div_ceil(BLOCK_SIZE);
            let ahead = ahead.max(next);
            stream = (ahead, window);
            if ahead < nblocks && (window == 0 || ahead - next < window.div_ceil(2)) {
                let max =
                    (self.opts.readahead_limit.min(self.opts.cache_limit / 8) / BLOCK_SIZE).max(1);
                let window = (window * 2).clamp(2.min(max), max);
                let upto = nblocks.min(next + window);
                let ahead_job = |batch: Vec<BlockRef>| {
                    if let Some(job) = self.ahead_job(ino, &batch) {
                        p(job)
                    }
                };
                let mut batch: Vec<BlockRef> = Vec::new();
                for idx in ahead..upto {
                    let r = match fs.dirty.get(&idx) {
                        Some(_) => None,
                        None => fs.committed(st, ino, idx)?,
                    };
                    let wanted = |r: &BlockRef| {
                        r.len >= INLINE_MAX
                            && !self.blocks.contains(&r.id)
                            && !self.passing.holds(&r.id)
                    };
                    match r.filter(wanted) {
                        Some(r) => batch.push(r),
                        None if !batch.is_empty() => ahead_job(std::mem::take(&mut batch)),
                        None => {}
                    }
                    // One ranged GET per eight blocks (8 MiB).
                    if batch.len() == 8 {
                        ahead_job(std::mem::take(&mut batch));
                    }
                }
                if !batch.is_empty() {
                    ahead_job(batch);
                }
                stream = (upto.max(ahead), window);
            }
        }
        if let Some(Handle::File { ahead, window, .. }) = st.handles.get_mut(&fh) {
            (*ahead, *window) = stream;
        }
        if !missing.is_empty() {
            if prefetcher.is_none() && (sequential || offset == 0) {
                // Readahead: the next blocks of a sequential reader come in
                // the same round of ranged GETs.
                let last = (end - 1) / BLOCK_SIZE;
                for ahead in last + 1..=last + 7 {
                    if ahead * BLOCK_SIZE >= file_size || fs.dirty.contains_key(&ahead) {
                        break;
                    }
                    if let Some(r) = fs.committed(st, ino, ahead)?
                        && r.len >= INLINE_MAX
                        && !self.blocks.contains(&r.id)
                        && !self.passing.holds(&r.id)
                    {
                        missing.push(r);
                    }
                }
            }
            missing.dedup_by_key(|r| r.id);
            // Filled again once the blocks are here: its pages serve then.
            crate::buf::give(out);
            return Ok(Err(Miss::Blocks(ino, missing)));
        }
        for id in touched {
            st.lru.get(&id);
        }
        if !passed.is_empty() {
            self.passing.done(&passed);
        }
        if let Some(Handle::File { next_read, .. }) = st.handles.get_mut(&fh) {
            let end = offset.saturating_add(size as u64);
            // A late request of a sequential reader does not move it back.
            *next_read = if sequential { end.max(*next_read) } else { end };
        }
        Ok(Ok(out))
    }

    /// Writes `data` at `offset` (at the end of file for append handles).
    pub fn write(&self, fh: HandleId, offset: u64, data: &[u8]) -> CoreResult<u32> {
        self.write_stamped(fh, offset, data, true)
    }

    /// `write` of data the kernel's writeback cache held: the kernel keeps
    /// the file's times itself and sends them with a `setattr` when it
    /// writes the inode back, possibly before these bytes, so the write
    /// leaves them alone.
    pub fn write_cached(&self, fh: HandleId, offset: u64, data: &[u8]) -> CoreResult<u32> {
        self.write_stamped(fh, offset, data, false)
    }

    fn write_stamped(
        &self,
        fh: HandleId,
        offset: u64,
        data: &[u8],
        stamp: bool,
    ) -> CoreResult<u32> {
        let mut st = self.lock_local(fh, || self.lock_for_write(data.len() as u64))?;
        let st = &mut *st;
        let (ino, mode) = Locker::file_handle(st, fh)?;
        if !mode.write {
            return Err(CoreError::BadHandle);
        }
        let limit = self.opts.dirty_memory_limit;
        self.drain_hashed(st, false);
        let r = self.with_file(st, ino, |st, fs| {
            let offset = if mode.append { fs.size } else { offset };
            offset
                .checked_add(data.len() as u64)
                .filter(|e| *e <= MAX_FILE_SIZE)
                .ok_or(CoreError::FileTooLarge)?;
            // Written in order from the start so far, and still.
            if fs.seq != Some(offset) {
                self.stop_digest(ino, fs);
            }
            // Bytes are in the file once in its block's memory; a failure
            // after some are (storing a block on a full disk) ends the
            // write short, with the size covering them: nothing may wait
            // past the end to show up when the file grows.
            let mut pos = 0usize;
            let mut failed = None;
            while pos < data.len() {
                let abs = offset + pos as u64;
                let idx = abs / BLOCK_SIZE;
                let bo = (abs % BLOCK_SIZE) as usize;
                let n = (BLOCK_SIZE as usize - bo).min(data.len() - pos);
                let chunk = &data[pos..pos + n];
                let r = if n == BLOCK_SIZE as usize {
                    // A whole block: the hasher stores it while the kernel
                    // brings the next write.
                    Locker::set_dirty(
                        st,
                        fs,
                        idx,
                        Some(Dirty::Mem(Arc::new(crate::buf::Owned::copy_of(chunk)))),
                    );
                    self.digest_block(ino, fs, idx);
                    self.queue_block(st, ino, fs, idx)
                } else {
                    match self.edit_mem(st, ino, fs, idx, |buf| {
                        if buf.len() < bo + n {
                            buf.resize(bo + n, 0);
                        }
                        buf[bo..bo + n].copy_from_slice(chunk);
                    }) {
                        Ok(len) if bo + n == BLOCK_SIZE as usize && len == BLOCK_SIZE as usize => {
                            // A sequential writer just filled this block:
                            // store it now rather than keep it in memory.
                            self.digest_block(ino, fs, idx);
                            self.queue_block(st, ino, fs, idx)
                        }
                        Ok(_) => Ok(()),
                        // Nothing of this chunk went in.
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                };
                pos += n;
                if let Err(e) = r {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = &failed {
                self.stop_digest(ino, fs);
                if pos == 0 {
                    return Err(failed.expect("matched"));
                }
                tracing::warn!(error = %e, "a write ends short: storing its data failed");
            }
            let end = offset + pos as u64;
            if fs.seq.is_some() {
                fs.seq = Some(end);
            }
            fs.size = fs.size.max(end);
            if stamp {
                let now = Timestamp::now();
                fs.mtime = Some(now);
                fs.ctime = Some(now);
            }
            if let Some(e) = failed
                && !stamp
            {
                // The kernel's writeback of its cached pages takes no short
                // count (it would drop the rest as written): the error goes
                // back, and the kernel keeps it for the file's fsync and
                // close.
                return Err(e);
            }
            if st.mem_dirty > limit {
                self.relieve_memory(st, fs, limit - limit / 4)?;
                if st.mem_dirty > limit {
                    // Small blocks cannot be spilled: commit them early.
                    self.commit_file(st, ino, fs)?;
                }
            }
            Ok(pos as u32)
        });
        self.reap_unpinned(st);
        r
    }

    /// Sets the size of file `ino` (called with the state lock held).
    pub(crate) fn truncate_locked(
        &self,
        st: &mut State,
        ino: InodeNo,
        size: u64,
        now: Timestamp,
    ) -> CoreResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(CoreError::FileTooLarge);
        }
        self.with_file(st, ino, |st, fs| {
            if size > 0 && fs.only_remote() {
                // (See `lock_local`.) The caller fetches it and comes back.
                return Err(CoreError::Corrupt(format!(
                    "inode {} is only in a backend",
                    ino.0
                )));
            }
            if size == 0 {
                // Emptied: written in order from here again.
                self.stop_digest(ino, fs);
                fs.seq = Some(0);
            } else if fs.seq.is_some_and(|s| size < s) {
                self.stop_digest(ino, fs);
            }
            if size < fs.size {
                let tail = (size % BLOCK_SIZE) as usize;
                // All or nothing: the one step that can fail (bringing the
                // new last block into memory, which needs its bytes here)
                // comes before anything changes; it changes nothing the
                // file shows.
                if tail != 0 {
                    self.make_mem(st, ino, fs, size / BLOCK_SIZE)?;
                }
                let cut = size.div_ceil(BLOCK_SIZE);
                let gone: Vec<u64> = fs.dirty.range(cut..).map(|(i, _)| *i).collect();
                for idx in gone {
                    Locker::set_dirty(st, fs, idx, None);
                }
                fs.cut = Some(fs.cut.map_or(cut, |c| c.min(cut)));
                if tail != 0 {
                    self.edit_mem(st, ino, fs, size / BLOCK_SIZE, |buf| buf.truncate(tail))
                        .expect("the block is in memory already");
                }
            }
            fs.size = size;
            fs.mtime = Some(now);
            fs.ctime = Some(now);
            Ok(())
        })?;
        // Committed now, open or not: a truncate(2) by path (which the
        // kernel sends with the size alone) may come from a program that
        // does not hold the file, so no close of its own would commit it,
        // and it must survive a kill -9 once it returned. (An ftruncate
        // comes with the times too, which commit anyway.)
        self.commit_locked(st, ino)
    }

    /// Commits the uncommitted changes of `ino` as a new block list, in one
    /// transaction. Drops the state if the file is not open.
    pub(crate) fn commit_locked(&self, st: &mut State, ino: InodeNo) -> CoreResult<()> {
        self.drain_hashed(st, true);
        self.record_digests(st);
        let Some(mut fs) = st.files.remove(&ino) else {
            return Ok(());
        };
        let r = self.commit_file(st, ino, &mut fs);
        if fs.open > 0 || r.is_err() || !fs.is_clean() {
            st.files.insert(ino, fs);
        } else {
            self.stop_digest(ino, &mut fs);
        }
        self.reap_unpinned(st);
        r
    }

    fn commit_file(&self, st: &mut State, ino: InodeNo, fs: &mut FileState) -> CoreResult<()> {
        if fs.is_clean() {
            return Ok(());
        }
        // Written in order from the start up to its size: the file's hash
        // is what its running hash has, then the last, partial block.
        // A file smaller than a block is not followed: the thread would
        // only hash its one block, which a push hashes as cheaply when
        // (and if) it needs the file's hash, and the round trip to it
        // cost small-file writers more than the hash itself.
        let finish = match fs.seq {
            Some(end) if end == fs.size && end >= BLOCK_SIZE => {
                let (blocks, tail_len) = (end / BLOCK_SIZE, (end % BLOCK_SIZE) as usize);
                match fs.dirty.get(&blocks) {
                    _ if tail_len == 0 => Some((blocks, None, 0)),
                    Some(Dirty::Mem(b)) => Some((blocks, Some(b.clone()), tail_len)),
                    // (Stored or committed: not kept in memory to finish with.)
                    _ => None,
                }
            }
            _ => None,
        };
        self.spill_all(st, fs)?;
        self.crash.hit("block-stored");
        // What is still in memory is small: it goes into the database with
        // the block list.
        let inline: Vec<(u64, BlockId)> = fs
            .dirty
            .iter()
            .filter_map(|(i, d)| match d {
                Dirty::Mem(b) => Some((*i, BlockId::of(b))),
                _ => None,
            })
            .collect();
        let inline: std::collections::HashMap<u64, BlockId> = inline.into_iter().collect();
        let dirty = &fs.dirty;
        let cut = fs.cut;
        let stats = &self.blocks.stats;
        let (size, mtime, ctime) = (fs.size, fs.mtime, fs.ctime);
        let m = st.mark();
        let freed = st.tx(|tx| {
            let mut freed: Vec<BlockId> = Vec::new();
            // The bytes the file holds in blocks, changed by the list.
            let mut alloc: i64 = 0;
            if let Some(cut) = cut {
                for (idx, old) in meta::file_blocks_from(tx, ino, cut)? {
                    if dirty.contains_key(&idx) {
                        continue;
                    }
                    if meta::decref_block(tx, &old)? && old.len >= INLINE_MAX {
                        freed.push(old.id);
                    }
                    meta::delete_file_block(tx, ino, idx)?;
                    alloc -= old.len as i64;
                }
            }
            for (&idx, d) in dirty {
                let old = meta::file_block(tx, ino, idx)?;
                let new = match d {
                    Dirty::Stored(r) => Some(*r),
                    Dirty::Hole => None,
                    Dirty::Mem(b) if b.iter().all(|&x| x == 0) => None,
                    Dirty::Mem(b) => {
                        let id = inline[&idx];
                        if meta::put_inline_block(tx, &id, &b[..])? {
                            stats
                                .writes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Some(BlockRef {
                            id,
                            len: b.len() as u32,
                        })
                    }
                };
                if old == new {
                    continue;
                }
                alloc += new.map_or(0, |r| r.len as i64) - old.map_or(0, |r| r.len as i64);
                if let Some(o) = old
                    && meta::decref_block(tx, &o)?
                    && o.len >= INLINE_MAX
                {
                    freed.push(o.id);
                }
                match new {
                    Some(r) => {
                        meta::incref_block(tx, &r.id, r.len)?;
                        meta::put_file_block(tx, ino, idx, r)?;
                    }
                    None => meta::delete_file_block(tx, ino, idx)?,
                }
            }
            if !meta::update_content(tx, ino, size, (mtime, ctime), alloc)? {
                return Err(CoreError::NotFound);
            }
            crate::core::sync::mark_ino(tx, m, ino, size)?;
            let mut really = Vec::new();
            for id in freed {
                if !meta::block_known(tx, &id)? {
                    really.push(id);
                }
            }
            let version = match finish {
                Some(_) => Some(meta::content_version(tx, ino)?),
                None => None,
            };
            Ok((really, version))
        })?;
        let (freed, version) = freed;
        if let (Some((blocks, tail, tail_len)), Some(version)) = (finish, version) {
            self.digests.finish(ino, version, blocks, tail, tail_len);
        }
        let idxs: Vec<u64> = fs.dirty.keys().copied().collect();
        for idx in idxs {
            if let Some(Dirty::Stored(r)) = fs.dirty.get(&idx) {
                st.lru.put(r.id, ());
            }
            Locker::set_dirty(st, fs, idx, None);
        }
        fs.remote_only = false;
        fs.cut = None;
        fs.mtime = None;
        fs.ctime = None;
        fs.committed_size = fs.size;
        self.free_blocks(st, &freed);
        if m.is_some() {
            self.wake_sync();
        }
        self.crash.hit("rows-committed");
        Ok(())
    }

    /// Records the whole-file hashes the digest thread found, each for
    /// the version it was asked for (a file changed since keeps none).
    pub(crate) fn record_digests(&self, st: &State) {
        for (ino, version, sha) in self.digests.take_done() {
            if let Err(e) = meta::set_sha256(&st.conn, ino, version, &sha) {
                tracing::warn!(error = %e, "recording a file's hash failed; it is hashed again when needed");
            }
        }
    }

    /// Waits (briefly) for the running hash of `ino` at `version` if one
    /// is being finished, and records it; true if there was one.
    pub(crate) fn await_digest(&self, ino: InodeNo, version: i64) -> bool {
        if !self
            .digests
            .wait(ino, version, std::time::Duration::from_secs(10))
        {
            return false;
        }
        self.record_digests(&self.lock());
        true
    }

    /// Frees the blocks whose last pin went (a rewritten block stored from
    /// a whole buffer, a snapshot released, a forgotten file's changes)
    /// and that no committed row names.
    pub(crate) fn reap_unpinned(&self, st: &mut State) {
        if st.unpinned.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut st.unpinned);
        let gone: Vec<BlockId> = ids
            .into_iter()
            .filter(|id| !st.held(id) && !meta::block_known(&st.conn, id).unwrap_or(true))
            .collect();
        self.free_blocks(st, &gone);
    }

    /// Removes the bytes of blocks no row names any more, unless an
    /// uncommitted change still pins them. A failure only leaves garbage that
    /// the next mount collects.
    pub(crate) fn free_blocks(&self, st: &mut State, ids: &[BlockId]) {
        if st.in_batch {
            // Rows naming them may yet come back with a rollback.
            st.free_after_batch.extend_from_slice(ids);
            return;
        }
        if st.open_tx.is_some() || st.held.is_some() {
            // Likewise until the open transaction commits (or the
            // operations waiting in the redo log, which may name them).
            st.free_after_commit.extend_from_slice(ids);
            return;
        }
        st.free_when_durable(ids);
    }

    /// Commits the changes made through this handle's file (close(2)).
    pub fn flush(&self, fh: HandleId) -> CoreResult<()> {
        let mut st = self.lock();
        let (ino, _) = Locker::file_handle(&st, fh)?;
        self.commit_locked(&mut st, ino)
    }

    /// Commits and makes the file durable on disk: its blocks, then its
    /// metadata.
    pub fn fsync(&self, fh: HandleId) -> CoreResult<()> {
        // The disk's work runs without the state lock: the committed rows
        // name the blocks, so they stay (a block replaced meanwhile is
        // gone and needs no sync).
        let (ids, commit) = {
            let mut st = self.lock();
            let (ino, _) = Locker::file_handle(&st, fh)?;
            self.commit_locked(&mut st, ino)?;
            let ids: Vec<BlockId> = meta::file_blocks_from(&st.conn, ino, 0)?
                .into_iter()
                .map(|(_, b)| b.id)
                .collect();
            (ids, st.commits)
        };
        self.blocks.sync_blocks(&ids)?;
        self.durable_upto(commit)
    }

    /// Closes a handle: commits, and removes the file for good if it was
    /// unlinked and this was its last handle.
    pub fn release(&self, fh: HandleId) -> CoreResult<()> {
        // A file read whole by streaming is kept (where it fits) before its
        // stream can go with this close.
        if self.streams_active() {
            let ino = Locker::file_handle(&self.state.lock(), fh).map(|(i, _)| i);
            if let Ok(ino) = ino {
                self.stream_settle(ino);
            }
        }
        let mut st = self.lock();
        let st = &mut *st;
        let (ino, mode) = Locker::file_handle(st, fh)?;
        st.handles.remove(&fh);
        let r = self.commit_locked(st, ino);
        let last = match st.files.get_mut(&ino) {
            Some(fs) => {
                fs.open = fs.open.saturating_sub(1);
                if mode.write {
                    fs.writers = fs.writers.saturating_sub(1);
                }
                fs.open == 0
            }
            None => true,
        };
        if last {
            // (A snapshot still reading it, an API download, keeps its
            // stream: it ends with the last of them.)
            if !st.remote_snaps.contains_key(&ino) {
                self.forget_stream(st, ino);
            }
            let mut check = true;
            if let Some(mut fs) = st.files.remove(&ino) {
                if !fs.is_clean() {
                    // The commit failed: keep the changes for a later try.
                    st.files.insert(ino, fs);
                    return r;
                }
                self.stop_digest(ino, &mut fs);
                check = fs.maybe_unlinked;
            }
            if check
                && let Some(row) = meta::get_inode(&st.conn, ino)?
                && row.attr.nlink == 0
            {
                self.purge_locked(st, ino)?;
            }
        }
        r
    }

    /// Commits again, at most every `RETRY_HELD`, the changes of files
    /// whose commit failed at their last close (a full disk): they wait in
    /// memory, where neither the sidecar nor a restart sees them, and
    /// would otherwise wait for the next open of the file or the unmount.
    /// The committer calls it (the open files are looked through no more
    /// often than that either).
    pub(crate) fn retry_closed(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        if st
            .closed_tried
            .is_some_and(|t| t.elapsed() < crate::core::RETRY_HELD)
        {
            return;
        }
        st.closed_tried = Some(std::time::Instant::now());
        let inos: Vec<(InodeNo, bool)> = st
            .files
            .iter()
            .filter(|(_, f)| f.open == 0 && !f.is_clean())
            .map(|(i, f)| (*i, f.maybe_unlinked))
            .collect();
        let first = !std::mem::take(&mut st.closed_failing);
        for (ino, unlinked) in inos {
            if let Err(e) = self.commit_locked(st, ino) {
                st.closed_failing = true;
                if first {
                    tracing::warn!(error = %e, inode = ino.0, "committing a closed file's changes failed again; tried again every 500 ms");
                } else {
                    tracing::debug!(error = %e, inode = ino.0, "committing a closed file's changes failed again");
                }
                return;
            }
            if st
                .files
                .get(&ino)
                .is_some_and(|f| f.open == 0 && f.is_clean())
            {
                st.files.remove(&ino);
            }
            tracing::info!(inode = ino.0, "a closed file's changes are committed");
            // Removed while open, and this was what kept it (as `release`).
            if unlinked
                && !st.files.contains_key(&ino)
                && let Ok(Some(row)) = meta::get_inode(&st.conn, ino)
                && row.attr.nlink == 0
                && let Err(e) = self.purge_locked(st, ino)
            {
                tracing::warn!(error = %e, inode = ino.0, "removing an unlinked file failed; the next mount does");
            }
        }
    }

    /// fallocate(2) mode 0 (allocate, may grow the file) and KEEP_SIZE. The
    /// range reads as zeros where nothing was written; space is checked, not
    /// reserved.
    pub fn fallocate(
        &self,
        fh: HandleId,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> CoreResult<()> {
        let mut st = self.lock_local(fh, || Ok(self.lock()))?;
        let st = &mut *st;
        let (ino, _) = Locker::file_handle(st, fh)?;
        let end = offset.checked_add(len).ok_or(CoreError::FileTooLarge)?;
        if end > MAX_FILE_SIZE {
            return Err(CoreError::FileTooLarge);
        }
        let s = self.blocks.statvfs()?;
        let cur = st.files.get(&ino).map_or(0, |f| f.size);
        if end.saturating_sub(cur) > s.f_bavail * s.f_frsize.max(1) {
            return Err(CoreError::NoSpace);
        }
        if keep_size {
            return Ok(());
        }
        self.with_file(st, ino, |_, fs| {
            if end > fs.size {
                fs.size = end;
                let now = Timestamp::now();
                fs.mtime = Some(now);
                fs.ctime = Some(now);
            }
            Ok(())
        })
    }

    /// Overlays uncommitted size and times on attributes read from the
    /// metadata.
    pub(crate) fn overlay(st: &State, attr: &mut Attr) {
        if let Some(fs) = st.files.get(&attr.ino) {
            if !fs.is_clean() {
                // Uncommitted blocks may replace committed ones: count both,
                // within the size (exact again once committed).
                let pending: u64 = fs
                    .dirty
                    .values()
                    .map(|d| match d {
                        Dirty::Mem(b) => b.len() as u64,
                        Dirty::Stored(r) => r.len as u64,
                        Dirty::Hole => 0,
                    })
                    .sum();
                attr.alloc = (attr.alloc + pending).min(fs.size);
            }
            attr.size = fs.size;
            if let Some(m) = fs.mtime {
                attr.mtime = m;
            }
            if let Some(c) = fs.ctime {
                attr.ctime = c;
            }
        }
    }

    /// The whole current content of `ino` in order, block by block, for
    /// hashing. Reads committed and uncommitted data alike.
    pub(crate) fn content_sha256(
        &self,
        st: &State,
        ino: InodeNo,
        size: u64,
    ) -> CoreResult<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let fs = st.files.get(&ino);
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let nblocks = size.div_ceil(BLOCK_SIZE);
        for idx in 0..nblocks {
            let want = (size - idx * BLOCK_SIZE).min(BLOCK_SIZE) as usize;
            let (bytes, src): (Vec<u8>, _) = match fs.and_then(|f| f.dirty.get(&idx)) {
                Some(Dirty::Mem(b)) => (b.to_vec(), None),
                Some(Dirty::Stored(r)) => (Vec::new(), Some(*r)),
                Some(Dirty::Hole) => (Vec::new(), None),
                None => {
                    let r = match fs {
                        Some(f) => f.committed(st, ino, idx)?,
                        None => meta::file_block(&st.conn, ino, idx)?,
                    };
                    (Vec::new(), r)
                }
            };
            let bytes = match src {
                Some(r) => self.read_block(st, &r)?,
                None => bytes,
            };
            let m = bytes.len().min(want);
            h.update(&bytes[..m]);
            h.update(&zeros[..want - m]);
        }
        Ok(h.finalize().into())
    }
}
