//! The content-addressed block store on local disk.
//!
//! Owns the bytes of every block; lifetimes (refcounts) live in the metadata
//! database, not here. Layout under the data directory:
//!
//! | path                                   | what                                  |
//! |----------------------------------------|---------------------------------------|
//! | `blocks/v1/ab/ab…(64 hex)`             | one block, named by its SHA-256; 256 shard directories, all made when the store opens |
//! | `blocks/tmp/`                          | blocks being written where `O_TMPFILE` is unsupported |
//!
//! A block is written into an anonymous `O_TMPFILE` in its shard directory
//! and linked under its name only when complete, so a block file under its
//! final name is always whole (one directory operation per block).
//!
//! A block is immutable once named: the same id always holds the same bytes.
//! A missing block is `None`, never an error. Every block read in from
//! elsewhere (a backend, later) is checked against its id.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use sha2::{Digest, Sha256};

/// Size of a block: 1 MiB.
///
/// Why this size: it is the largest write the kernel hands a FUSE filesystem
/// in one request (max_write), so a sequential writer's aligned request maps
/// to exactly one block that is hashed and stored straight from the request,
/// with no copy into a staging buffer; a 1 GiB file is 1,024 rows of block
/// list, cheap to commit; and a later backend fetch of one block is one
/// ranged GET of a size object stores serve efficiently. The cost is write
/// amplification for small random writes (a 4 KiB change rewrites one 1 MiB
/// block at commit), which is bounded by the blocks touched, and dedup at
/// 1 MiB granularity, which still catches whole-file copies.
pub const BLOCK_SIZE: u64 = 1 << 20;

/// Blocks shorter than this are kept in the metadata database (table
/// `block_data`) rather than as files: a small file then costs no inode,
/// directory entry or extra fsync in the data directory, and its bytes
/// commit in the same transaction as its block list. Whether a block is
/// inline follows from its length alone.
pub const INLINE_MAX: u32 = 64 * 1024;

/// A block's identity: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    pub fn of(data: &[u8]) -> BlockId {
        BlockId(Sha256::digest(data).into())
    }

    pub fn from_slice(b: &[u8]) -> Option<BlockId> {
        <[u8; 32]>::try_from(b).ok().map(BlockId)
    }

    pub fn from_hex(s: &str) -> Option<BlockId> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(BlockId(out))
    }

    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", &self.hex()[..16])
    }
}

/// Counters for tests and status.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Blocks written to disk (new content).
    pub writes: AtomicU64,
    /// Blocks whose content was already present, so nothing was written.
    pub dedup_hits: AtomicU64,
    /// Blocks removed.
    pub removes: AtomicU64,
    /// Whole-store syncs (`syncfs`).
    pub syncs: AtomicU64,
}

pub struct BlockStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Open read handles of recently read blocks. Lock order: taken alone,
    /// never while waiting on anything else.
    fds: Mutex<LruCache<BlockId, Arc<File>>>,
    tmp_seq: AtomicU64,
    /// Blocks written since the last sync that covered them: what an fsync
    /// of a file holding them must make durable. Each with the number of
    /// the write that put it there: a sync forgets a block only if no
    /// write came since it looked (a block freed and written again while
    /// it ran is a new file that it may not have covered).
    unsynced: Mutex<HashMap<BlockId, u64>>,
    /// Numbers the writes of `unsynced`.
    writes_seq: AtomicU64,
    /// Bytes of the block files (the cache's size).
    bytes: AtomicU64,
    pub stats: BlockStats,
    /// Runs once between a sync's disk work and its bookkeeping (tests).
    #[cfg(test)]
    before_mark: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// New block files fail as on a full disk while set (tests).
    #[cfg(test)]
    pub(crate) full: std::sync::atomic::AtomicBool,
}

/// Above this many blocks to make durable, one `syncfs` is cheaper than an
/// fsync per block file.
const SYNCFS_THRESHOLD: usize = 64;

impl BlockStore {
    /// Opens the store under `dir` (normally `<data dir>/blocks`).
    pub fn open(dir: &Path) -> io::Result<BlockStore> {
        let root = dir.join("v1");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&tmp)?;
        for i in 0..=255u8 {
            match fs::create_dir(root.join(hex(&[i]))) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        // Whatever is in tmp/ was being written when the daemon stopped.
        for e in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        let mut bytes = 0u64;
        for a in fs::read_dir(&root)? {
            let a = a?;
            if a.file_type()?.is_dir() {
                for b in fs::read_dir(a.path())? {
                    bytes += b?.metadata().map_or(0, |m| m.len());
                }
            }
        }
        let store = BlockStore {
            root,
            tmp,
            fds: Mutex::new(LruCache::new(std::num::NonZeroUsize::new(512).unwrap())),
            tmp_seq: AtomicU64::new(0),
            unsynced: Mutex::new(HashMap::new()),
            writes_seq: AtomicU64::new(0),
            bytes: AtomicU64::new(bytes),
            stats: BlockStats::default(),
            #[cfg(test)]
            before_mark: Mutex::new(None),
            #[cfg(test)]
            full: std::sync::atomic::AtomicBool::new(false),
        };
        // Which blocks the last run wrote without syncing is known only to
        // that run (`unsynced` lives in memory): after a crash, an fsync
        // of a file closed before it, or of a new file whose content
        // matches such a block, would otherwise sync nothing and promise
        // what a power cut can still take. One syncfs now makes them all
        // durable (cheap after a clean stop, which synced them).
        store.sync()?;
        Ok(store)
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        let h = id.hex();
        self.root.join(&h[0..2]).join(h)
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.path(id).exists()
    }

    /// Stores `data` under its hash unless that content is already present.
    /// Returns the id and whether bytes were written.
    pub fn put(&self, data: &[u8]) -> io::Result<(BlockId, bool)> {
        let id = BlockId::of(data);
        let written = self.put_with_id(&id, data)?;
        Ok((id, written))
    }

    /// Stores `data`, already known to hash to `id`.
    pub fn put_with_id(&self, id: &BlockId, data: &[u8]) -> io::Result<bool> {
        let path = self.path(id);
        if path.exists() {
            self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        #[cfg(test)]
        if self.full.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        match self.write_linked(&path, data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Written by someone else meanwhile: same name, same bytes.
                self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                self.write_renamed(&path, data)?
            }
            Err(e) => return Err(e),
        }
        let seq = self.writes_seq.fetch_add(1, Ordering::Relaxed);
        self.unsynced.lock().unwrap().insert(*id, seq);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Bytes held in block files: what the cache bound applies to.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Writes `data` into an anonymous file in the block's directory and
    /// links it under `path` once complete.
    fn write_linked(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path.parent().expect("block path has a parent");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)?;
        f.write_all(data)?;
        let from =
            std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("no NUL");
        let to = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        // SAFETY: both paths are NUL-terminated and live across the call.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The portable way: a named temporary file renamed into place.
    fn write_renamed(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = self.tmp.join(format!(
            "{}.{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    fn handle(&self, id: &BlockId) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.fds.lock().unwrap().get(id) {
            return Ok(Some(f.clone()));
        }
        match File::open(self.path(id)) {
            Ok(f) => {
                let f = Arc::new(f);
                self.fds.lock().unwrap().put(*id, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset` of a block. Returns `None`
    /// when the block is not present, else the number of bytes read (short at
    /// the block's end).
    pub fn read_at(&self, id: &BlockId, offset: u64, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(f) = self.handle(id)? else {
            return Ok(None);
        };
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(done))
    }

    /// Asks the kernel to start reading a block into the page cache (for
    /// sequential readers); a missing block is ignored.
    pub fn prefetch(&self, id: &BlockId) {
        if let Ok(Some(f)) = self.handle(id) {
            // SAFETY: advisory call on a descriptor we hold open.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
            }
        }
    }

    /// The whole block, or `None` when it is not present.
    pub fn read(&self, id: &BlockId) -> io::Result<Option<Vec<u8>>> {
        match File::open(self.path(id)) {
            Ok(mut f) => {
                let mut v = Vec::with_capacity(BLOCK_SIZE as usize);
                f.read_to_end(&mut v)?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Frees a block's bytes. Removing a missing block is not an error.
    pub fn remove(&self, id: &BlockId) -> io::Result<()> {
        self.fds.lock().unwrap().pop(id);
        let path = self.path(id);
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        match fs::remove_file(path) {
            Ok(()) => {
                self.bytes
                    .fetch_sub(len.min(self.bytes()), Ordering::Relaxed);
                self.stats.removes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every block present on disk (for garbage collection and fsck).
    pub fn list(&self) -> io::Result<Vec<BlockId>> {
        let mut out = Vec::new();
        for a in fs::read_dir(&self.root)? {
            let a = a?;
            if !a.file_type()?.is_dir() {
                continue;
            }
            for b in fs::read_dir(a.path())? {
                if let Some(id) = b?.file_name().to_str().and_then(BlockId::from_hex) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Makes every block written so far durable: one `syncfs` of the file
    /// system that holds the store (blocks and their directory entries).
    pub fn sync(&self) -> io::Result<()> {
        let pending: Vec<(BlockId, u64)> = self
            .unsynced
            .lock()
            .unwrap()
            .iter()
            .map(|(id, seq)| (*id, *seq))
            .collect();
        let d = File::open(&self.root)?;
        // SAFETY: syncfs only reads the descriptor, which stays open for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.mark_synced(&pending);
        Ok(())
    }

    /// Forgets the blocks a sync covered, unless written again since.
    fn mark_synced(&self, done: &[(BlockId, u64)]) {
        let mut u = self.unsynced.lock().unwrap();
        for (id, seq) in done {
            if u.get(id) == Some(seq) {
                u.remove(id);
            }
        }
    }

    /// Makes the given blocks durable (those of them not yet synced): an
    /// fsync of each block file and of its directory, or one `syncfs` when
    /// there are many.
    pub fn sync_blocks(&self, ids: &[BlockId]) -> io::Result<()> {
        let todo: Vec<(BlockId, u64)> = {
            let u = self.unsynced.lock().unwrap();
            ids.iter()
                .filter_map(|id| u.get(id).map(|seq| (*id, *seq)))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        if todo.len() > SYNCFS_THRESHOLD {
            return self.sync();
        }
        let mut dirs = HashSet::new();
        for (id, _) in &todo {
            let path = self.path(id);
            match File::open(&path) {
                Ok(f) => f.sync_all()?,
                // Freed meanwhile: nothing to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            File::open(&d)?.sync_all()?;
        }
        #[cfg(test)]
        if let Some(f) = self.before_mark.lock().unwrap().take() {
            f();
        }
        self.mark_synced(&todo);
        Ok(())
    }

    /// Bytes used on disk by the store, as the file system accounts them.
    pub fn disk_usage(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for id in self.list()? {
            if let Ok(m) = fs::metadata(self.path(&id)) {
                total += m.blocks() * 512;
            }
        }
        Ok(total)
    }

    /// Capacity of the file system that holds the store.
    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::other("path with NUL"))?;
        // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks a run wrote and never synced (it was killed) are made
    /// durable when the store is opened again, before anything relies on
    /// a later fsync: that run's list of them is gone.
    #[test]
    fn opening_the_store_syncs_what_the_last_run_left_unsynced() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let (id, _) = s.put(&vec![3u8; 100_000]).unwrap();
        drop(s);
        let s = BlockStore::open(d.path()).unwrap();
        assert_eq!(s.stats.syncs.load(Ordering::Relaxed), 1);
        assert!(s.contains(&id));
    }

    /// A block freed and written again while an fsync ran stays to be
    /// synced: that fsync made durable (or found gone) the old file, not
    /// the new one.
    #[test]
    fn a_block_written_again_during_a_sync_stays_unsynced() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(BlockStore::open(d.path()).unwrap());
        let data = vec![5u8; 100_000];
        let (id, _) = s.put(&data).unwrap();
        let s2 = s.clone();
        *s.before_mark.lock().unwrap() = Some(Box::new(move || {
            s2.remove(&id).unwrap();
            assert!(s2.put(&data).unwrap().1);
        }));
        s.sync_blocks(&[id]).unwrap();
        assert!(s.unsynced.lock().unwrap().contains_key(&id));
        // The next sync covers it.
        s.sync_blocks(&[id]).unwrap();
        assert!(!s.unsynced.lock().unwrap().contains_key(&id));
    }

    #[test]
    fn put_same_content_twice_writes_once() {
        let d = tempfile::tempdir().unwrap();
        let s = BlockStore::open(d.path()).unwrap();
        let (a, w1) = s.put(b"hello").unwrap();
        let (b, w2) = s.put(b"hello").unwrap();
        assert_eq!(a, b);
        assert!(w1 && !w2);
        assert_eq!(s.read(&a).unwrap().unwrap(), b"hello");
        let mut buf = [0u8; 3];
        assert_eq!(s.read_at(&a, 2, &mut buf).unwrap(), Some(3));
        assert_eq!(&buf, b"llo");
        s.remove(&a).unwrap();
        assert!(s.read(&a).unwrap().is_none());
    }

    #[test]
    fn hex_round_trip() {
        let id = BlockId::of(b"x");
        assert_eq!(BlockId::from_hex(&id.hex()), Some(id));
        assert_eq!(BlockId::from_hex("zz"), None);
    }
}
