//! Fetching from the backends: the `RemoteSource` the sidecar installs,
//! evicted blocks fetched back (shared between concurrent readers and
//! checked against their SHA-256), and files that exist only in a backend
//! downloaded whole (`materialize`).

use std::sync::Arc;

use super::passing::Chunk;
use super::snapshot::FileSnap;
use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, State};
use crate::meta::sync as msync;
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

    /// The file at `path` in namespace `ns` now: its ETag, size and mtime,
    /// or `None` when there is none. An error when the backend cannot say.
    fn current(&self, ns: &str, path: &[u8]) -> Result<Option<RemoteVersion>, String> {
        let _ = (ns, path);
        Err("this source cannot look objects up".into())
    }

    /// Tells the admin (`locker status`) that content read from `ns` was
    /// wrong; the core has logged it already.
    fn report(&self, ns: &str, message: &str) {
        let _ = (ns, message);
    }
}

/// Why blocks are fetched: for a reader (`Read`: a file too large to keep
/// is passed on from memory, see `passing.rs`), or to be kept in the block
/// store (`Keep`: a file about to change needs all of them there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Read,
    Keep,
}

/// Work done in the background for readers (fetches ahead of a sequential
/// reader): runs the job on the sidecar's blocking pool, a few at once,
/// with the core if it is still open. Called under the state lock, so it
/// only hands the job over.
pub type Prefetcher = Arc<dyn Fn(FetchJob) + Send + Sync>;

/// A background fetch for `Prefetcher`.
pub type FetchJob = Box<dyn FnOnce(&Locker) + Send>;

/// Blocks being fetched from a backend, or queued to be: concurrent readers
/// of one region wait for that one fetch instead of each making their own.
#[derive(Default)]
pub(crate) struct Fetching {
    ids: std::sync::Mutex<std::collections::HashSet<BlockId>>,
    done: std::sync::Condvar,
}

/// Blocks this fetcher took from `Fetching`: given back when dropped,
/// whether the fetch ran, failed, or never ran (its job was dropped).
pub(crate) struct Claim {
    set: Arc<Fetching>,
    ids: Vec<BlockId>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut f = self.set.ids.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            f.remove(id);
        }
        self.set.done.notify_all();
    }
}

impl Fetching {
    /// Claims the blocks of `want` no one else has: (the claim, those
    /// blocks, the others).
    pub(crate) fn claim(
        self: &Arc<Self>,
        want: &[BlockRef],
    ) -> (Claim, Vec<BlockRef>, Vec<BlockRef>) {
        let mut f = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for b in want {
            if f.insert(b.id) {
                mine.push(*b);
            } else if !mine.iter().any(|m: &BlockRef| m.id == b.id) {
                theirs.push(*b);
            }
        }
        let claim = Claim {
            set: self.clone(),
            ids: mine.iter().map(|b| b.id).collect(),
        };
        (claim, mine, theirs)
    }

    /// Waits until none of `blocks` is being fetched.
    fn wait_for(&self, blocks: &[BlockRef]) {
        let mut f = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        while blocks.iter().any(|b| f.contains(&b.id)) {
            f = self.done.wait(f).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A block of content fetched from a backend: its index in the file, the
/// block, its bytes if it is stored inline, whether it was stored in the
/// cache.
pub(super) type Fetched = (u64, BlockRef, Option<Vec<u8>>, bool);

/// An object that may hold a file's content: namespace, path, version.
pub(super) type Candidate = (String, Vec<u8>, Option<String>);

/// A version of an object, as a backend shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion {
    pub etag: String,
    pub size: u64,
    pub mtime: Option<Timestamp>,
}

impl Locker {
    /// Installs the reader of the backends.
    pub fn set_remote(&self, source: Arc<dyn RemoteSource>) {
        let _ = self.remote.set(source);
    }

    /// Installs what runs fetches ahead of sequential readers.
    pub fn set_prefetcher(&self, p: Prefetcher) {
        let _ = self.prefetcher.set(p);
    }

    /// Claims the blocks of `want` (of file `ino`) no one is fetching, for
    /// a fetch ahead of a reader: the job to hand to the prefetcher, or
    /// `None` when there is nothing to fetch. A reader that reaches one of
    /// them waits for this fetch rather than making its own, even while the
    /// job still waits for its turn.
    pub(crate) fn ahead_job(&self, ino: InodeNo, want: &[BlockRef]) -> Option<FetchJob> {
        let (claim, mine, _) = self.fetching.claim(want);
        if mine.is_empty() {
            return None;
        }
        Some(Box::new(move |c: &Locker| c.fetch_ahead(ino, mine, claim)))
    }

    /// A prefetcher's work: those of `want` (blocks of `ino`, claimed by
    /// `claim`) not here yet are fetched. A failure is only logged: the
    /// reader that reaches the block fetches it itself.
    fn fetch_ahead(&self, ino: InodeNo, mut want: Vec<BlockRef>, claim: Claim) {
        want.retain(|b| !self.blocks.contains(&b.id) && !self.passing.holds(&b.id));
        if !want.is_empty()
            && let Err(e) = self.fetch_blocks_now(ino, &want, Purpose::Read)
        {
            tracing::debug!(inode = ino.0, error = %e, "fetching ahead of a reader failed");
        }
        drop(claim);
    }

    /// Fetches every committed block of `ino` that was evicted: a file
    /// about to change (or be hashed) needs all of them here.
    pub(crate) fn fetch_missing(&self, ino: InodeNo) -> CoreResult<()> {
        for _ in 0..4 {
            let (remote_only, need) = {
                let st = self.lock();
                let remote_only = meta::get_inode(&st.conn, ino)?.is_some_and(|r| r.remote_only);
                let need: Vec<BlockRef> = meta::file_blocks_from(&st.conn, ino, 0)?
                    .into_iter()
                    .map(|(_, r)| r)
                    .filter(|r| r.len >= INLINE_MAX && !self.blocks.contains(&r.id))
                    .collect();
                (remote_only, need)
            };
            if remote_only {
                // Only in a backend now: a fetch found the version it
                // looked for replaced there and followed (`follow_replaced`),
                // or the caller asks this of such a file. Downloaded whole,
                // as the caller needs every block here.
                self.materialize(ino)?;
                continue;
            }
            if need.is_empty() {
                return Ok(());
            }
            // In rounds, so the cache bound holds for a file larger than a
            // round.
            for chunk in need.chunks(16) {
                self.fetch_blocks(ino, chunk, Purpose::Keep)?;
            }
        }
        tracing::error!(
            inode = ino.0,
            "blocks of a file could not all be fetched back"
        );
        Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
    }

    /// Fetches missing blocks `want` of file `ino` from the backend, checks
    /// each against its SHA-256 and stores it (for `Purpose::Read`, of a
    /// file too large to keep: holds it in `passing` instead).
    pub(crate) fn fetch_blocks(
        &self,
        ino: InodeNo,
        want: &[BlockRef],
        purpose: Purpose,
    ) -> CoreResult<()> {
        self.fetch_shared(want, |mine| self.fetch_blocks_now(ino, mine, purpose))
    }

    /// Fetches missing blocks `want` of a snapshot: located by the
    /// snapshot's own content hash and block list, so they can be fetched
    /// even after the file changed or went away.
    pub(crate) fn fetch_snap_blocks(
        &self,
        snap: &FileSnap,
        want: &[BlockRef],
        purpose: Purpose,
    ) -> CoreResult<()> {
        let keep = match purpose {
            Purpose::Keep => true,
            Purpose::Read => self.keeps_read(snap.size),
        };
        self.fetch_shared(want, |mine| {
            let r = match snap.sha256 {
                Some(sha) => mine
                    .iter()
                    .map(|b| {
                        snap.blocks
                            .iter()
                            .find(|(_, r)| r.id == b.id)
                            .map(|(i, _)| (*i, *b))
                            .ok_or(CoreError::NotFound)
                    })
                    .collect::<CoreResult<Vec<_>>>()
                    .and_then(|located| self.fetch_located(snap.ino, &sha, located, keep)),
                None => Err(CoreError::Corrupt(format!(
                    "inode {} lost a block before it reached a backend",
                    snap.ino.0
                ))),
            };
            // What is still missing: the snapshot's version is in no backend
            // any more (replaced there since). A block goes from the cache
            // only while a backend holds the current version of every file
            // naming it, so such a file's object has it.
            let still: Vec<BlockRef> = mine
                .iter()
                .filter(|b| !self.blocks.contains(&b.id) && !self.passing.holds(&b.id))
                .copied()
                .collect();
            for b in &still {
                let holder = {
                    let st = self.lock();
                    msync::block_in_backend(&st.conn, &b.id.0)?
                        .and_then(|inos| inos.first().copied())
                };
                match holder {
                    Some(ino) => self.fetch_blocks_now(InodeNo(ino as u64), &[*b], purpose)?,
                    None => return r,
                }
            }
            if still.is_empty() { r } else { Ok(()) }
        })
    }

    /// Runs `fetch` for the blocks of `want` no other reader is fetching,
    /// and waits for those others are.
    fn fetch_shared(
        &self,
        want: &[BlockRef],
        fetch: impl FnOnce(&[BlockRef]) -> CoreResult<()>,
    ) -> CoreResult<()> {
        // Blocks another reader (or a fetch ahead of one) is fetching
        // already are waited for, not fetched twice.
        let (claim, mine, theirs) = self.fetching.claim(want);
        let r = if mine.is_empty() {
            Ok(())
        } else {
            fetch(&mine)
        };
        drop(claim);
        self.fetching.wait_for(&theirs);
        // What the others failed to fetch, the caller's retry asks again.
        r
    }

    fn fetch_blocks_now(
        &self,
        ino: InodeNo,
        want: &[BlockRef],
        purpose: Purpose,
    ) -> CoreResult<()> {
        let (sha, located, keep) = {
            let st = self.lock();
            let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
            if row.remote_only {
                // Changed since the blocks were asked for (a concurrent
                // fetch found the object replaced, and the file took the
                // new version): nothing of the old content is wanted, and
                // the caller looks again.
                return Ok(());
            }
            let sha = row.sha256.clone().ok_or_else(|| {
                CoreError::Corrupt(format!(
                    "inode {} lost a block before it reached a backend",
                    ino.0
                ))
            })?;
            let mut located = Vec::new();
            for b in want {
                // A block the file no longer holds is not fetched: the
                // caller looks again at what the file holds now.
                if let Some(idx) = meta::block_index(&st.conn, ino, &b.id)? {
                    located.push((idx as u64, *b));
                }
            }
            let keep = match purpose {
                Purpose::Keep => true,
                Purpose::Read => self.keeps_read(row.attr.size),
            };
            (sha, located, keep)
        };
        if located.is_empty() {
            return Ok(());
        }
        self.fetch_located(ino, &sha, located, keep)
    }

    /// Whether a reader's fetches of a file of `size` bytes go into the
    /// block store: not for a file larger than a quarter of the cache,
    /// which one pass would otherwise push the rest out of (its blocks are
    /// passed on from memory, see `passing.rs`, or streamed).
    pub(super) fn keeps_read(&self, size: u64) -> bool {
        size <= self.opts.cache_limit / 4
    }

    /// Bytes held for readers of files too large to keep (tests).
    #[cfg(test)]
    pub(crate) fn passing_bytes(&self) -> usize {
        self.passing.bytes()
    }

    /// Blocks held for readers are pushed out as soon as they arrive
    /// (tests).
    #[cfg(test)]
    pub(crate) fn crowd_passing(&self) {
        self.passing
            .crowded
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes `passing` holds at most: twice the largest window ahead of a
    /// sequential reader, and a reader's own fetch.
    fn passing_cap(&self) -> usize {
        let window = self.opts.readahead_limit.min(self.opts.cache_limit / 8);
        (window * 2 + (16 << 20)) as usize
    }

    /// Fetches blocks (index in the file, block) of the content that hashes
    /// to `sha` (of inode `ino`, for messages) from a backend holding it,
    /// checks each against its SHA-256 and stores it, or (not `keep`) holds
    /// it in `passing` for the reader.
    fn fetch_located(
        &self,
        ino: InodeNo,
        sha: &[u8],
        mut order: Vec<(u64, BlockRef)>,
        keep: bool,
    ) -> CoreResult<()> {
        let source = self.remote.get().ok_or_else(|| {
            CoreError::Corrupt("a block is missing and no backend is attached".into())
        })?;
        let holders = {
            let st = self.lock();
            msync::remotes_with_sha(&st.conn, sha)?
        };
        if holders.is_empty() {
            // A concurrent fetch (a reader's, or one ahead of it) may have
            // just found the only object replaced, and the file taken the
            // new version: then the caller looks again.
            let st = self.lock();
            if meta::get_inode(&st.conn, ino)?
                .is_some_and(|r| r.remote_only || r.sha256.as_deref() != Some(sha))
            {
                return Ok(());
            }
            return Err(CoreError::Corrupt(format!(
                "no backend holds the content of inode {}",
                ino.0
            )));
        }
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
        if keep {
            self.room_for_fetch(ranges.iter().map(|r| r.1).sum())?;
        }
        // From the first object that still holds the content. One that
        // another writer replaced or removed holds it no more.
        let mut gone: Vec<(String, Vec<u8>, String, Option<RemoteVersion>)> = Vec::new();
        let mut fetched = None;
        for (ns, path, row) in &holders {
            match source.fetch(ns, path, Some(&row.etag), &ranges) {
                Ok(got) => {
                    fetched = Some((ns, path, got));
                    break;
                }
                Err(e) => match source.current(ns, path) {
                    Ok(now) if now.as_ref().is_none_or(|v| v.etag != row.etag) => {
                        gone.push((ns.clone(), path.clone(), row.etag.clone(), now));
                    }
                    _ => {
                        tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(path), error = %e, "fetching blocks from the backend failed");
                        return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
                    }
                },
            }
        }
        let Some((ns, path, got)) = fetched else {
            // Every object that held it was replaced or removed: the file
            // follows what replaced the one it came from (the caller looks
            // again and finds it only in the backend).
            return self.follow_replaced(ino, sha, &gone);
        };
        // Every block is checked before any is kept or passed on.
        let mut pieces: Vec<Vec<(BlockRef, usize, usize)>> = Vec::new();
        for (g, chunk) in groups.iter().zip(&got) {
            let mut at = 0usize;
            let mut list = Vec::new();
            for (_, b) in g {
                let end = (at + b.len as usize).min(chunk.len());
                let data = &chunk[at..end];
                if data.len() != b.len as usize || BlockId::of(data) != b.id {
                    tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(path), block = %b.id.hex(), "a block fetched from the backend does not match its SHA-256; refusing it");
                    return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
                }
                list.push((*b, at, end - at));
                at = end;
            }
            pieces.push(list);
        }
        if !keep {
            let cap = self.passing_cap();
            for (chunk, list) in got.into_iter().zip(pieces) {
                let ids: Vec<_> = list.iter().map(|(b, at, n)| (b.id, *at, *n)).collect();
                self.passing.put(cap, &Chunk::new(chunk), &ids);
            }
            return Ok(());
        }
        for (chunk, list) in got.iter().zip(&pieces) {
            for (b, at, n) in list {
                self.blocks.put_with_id(&b.id, &chunk[*at..*at + *n])?;
                let mut st = self.lock();
                msync::set_block_present(&st.conn, &b.id.0, true)?;
                st.lru.put(b.id, ());
            }
        }
        crate::buf::give_all(got);
        Ok(())
    }

    /// The content `sha` of file `ino` is in none of the objects that held
    /// it (`gone`: namespace, path, the version that held it, what is there
    /// now), each replaced or removed by another writer. If the file still
    /// has that content, unchanged here, it takes the version that replaced
    /// the first of them, as if that write had come before the change here
    /// not yet pushed (a move, say), rather than failing every read and
    /// push for good. What replaced it stays where its writer put it.
    fn follow_replaced(
        &self,
        ino: InodeNo,
        sha: &[u8],
        gone: &[(String, Vec<u8>, String, Option<RemoteVersion>)],
    ) -> CoreResult<()> {
        let eio = || CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO));
        let mut st = self.lock();
        let st = &mut *st;
        for (ns, path, etag, _) in gone {
            msync::unverify_remote(&st.conn, ns, path, etag)?;
        }
        let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        if row.remote_only || row.sha256.as_deref() != Some(sha) {
            // Changed meanwhile: the caller looks again.
            return Ok(());
        }
        if st.files.get(&ino).is_some_and(|fs| !fs.is_clean_pub()) {
            tracing::error!(
                inode = ino.0,
                "a file being changed here lost the rest of its content: another writer replaced the only object holding it"
            );
            return Err(eio());
        }
        let Some((ns, path, _, Some(now))) = gone.iter().find(|g| g.3.is_some()) else {
            tracing::error!(
                inode = ino.0,
                "the content of a file is gone: another writer removed every object holding it before the change here reached the backend"
            );
            return Err(eio());
        };
        tracing::warn!(
            namespace = %ns,
            path = %String::from_utf8_lossy(path),
            inode = ino.0,
            "a file's content was only at this path, which another writer replaced before the change here reached the backend: the file now holds that version"
        );
        let mut src = ns.as_bytes().to_vec();
        src.push(b'/');
        src.extend_from_slice(path);
        let here = Locker::own_src(&st.conn, ino)?.as_deref() == Some(&src[..]);
        self.give_remote_content(
            st,
            ino,
            now.size,
            None,
            now.mtime.unwrap_or_else(Timestamp::now),
            None,
            Some((&src, Some(&now.etag))),
            here,
        )?;
        if let Some(fs) = st.files.get_mut(&ino) {
            fs.now_remote(now.size);
        }
        // Durable, as every change a refresh applies: the API may hand out
        // a tag naming this version (`objects::Tag::Version`), which a
        // power cut must not give to other content.
        st.durable()?;
        // The kernel may cache the old size and pages. Told from another
        // thread: a read of this file may be what runs this.
        if let Some(inval) = self.invalidator.get().cloned() {
            std::thread::spawn(move || inval(&[super::Invalidate::Inode(ino)]));
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
    pub(super) fn materialize_with(&self, ino: InodeNo, keep_all: bool) -> CoreResult<()> {
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

    /// Downloads the whole object `ns/path` (version `etag`) of `size` bytes
    /// and checks it against `sha` (when known): its block list (index,
    /// block, inline bytes, stored in the cache) and its SHA-256. Blocks it
    /// stored are added to `stored`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn download_whole(
        &self,
        source: &dyn RemoteSource,
        ns: &str,
        path: &[u8],
        etag: Option<&str>,
        size: u64,
        sha: Option<[u8; 32]>,
        keep_all: bool,
        stored: &mut Vec<BlockId>,
    ) -> CoreResult<(Vec<Fetched>, [u8; 32])> {
        use sha2::{Digest, Sha256};
        let eio = || CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO));
        let mut h = Sha256::new();
        // (index, block, inline bytes, stored in the cache)
        let mut list: Vec<Fetched> = Vec::new();
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
            let got = source.fetch(ns, path, etag, &ranges).map_err(|e| {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(path), error = %e, "fetching a file from the backend failed");
                eio()
            })?;
            for (chunk, (roff, rlen)) in got.into_iter().zip(&ranges) {
                if chunk.len() as u64 != *rlen {
                    tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(path), "the backend's object is shorter than listed; refusing it");
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
                crate::buf::give(chunk);
            }
            off += ranges.iter().map(|r| r.1).sum::<u64>();
        }
        let got: [u8; 32] = h.finalize().into();
        if sha.is_some_and(|s| s != got) {
            tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(path), "a file fetched from the backend does not match its SHA-256; refusing it");
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
        Ok((list, got))
    }

    fn materialize_inner(
        &self,
        ino: InodeNo,
        keep_all: bool,
        stored: &mut Vec<BlockId>,
    ) -> CoreResult<()> {
        let source = self
            .remote
            .get()
            .ok_or_else(|| {
                CoreError::Corrupt("file content is in a backend but none is attached".into())
            })?
            .clone();
        let (cands, size, sha, version) = {
            let st = self.lock();
            let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
            if !row.remote_only {
                return Ok(());
            }
            let sha: Option<[u8; 32]> = row.sha256.as_deref().and_then(|s| s.try_into().ok());
            let cands = Locker::remote_candidates(&st.conn, ino, sha.as_ref())?;
            if cands.is_empty() {
                return Err(CoreError::NotFound);
            }
            (cands, row.attr.size, sha, row.version)
        };
        let mut fetched = None;
        for (ns, path, etag) in cands {
            // Blocks past the cache bound are left to be fetched again by
            // range from the objects recorded as holding the content. An
            // object at a version LOCKER has not recorded at its path (one
            // another writer replaced) will not be one: its blocks are all
            // kept, or they could not be read back.
            let recorded = {
                let st = self.lock();
                msync::get_remote(&st.conn, &ns, &path)?
                    .is_some_and(|r| etag.as_deref().is_none_or(|e| r.etag == e))
            };
            // A failure is logged where it happened; the next holder is tried.
            if let Ok(d) = self.download_whole(
                &*source,
                &ns,
                &path,
                etag.as_deref(),
                size,
                sha,
                keep_all || !recorded,
                stored,
            ) {
                fetched = Some((ns, path, etag, d));
                break;
            }
        }
        let Some((ns, path, etag, (list, got))) = fetched else {
            return Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        };
        let mut st = self.lock();
        self.install_fetched(
            &mut st,
            ino,
            version,
            &list,
            &got,
            &ns,
            &path,
            etag.as_deref(),
        )?;
        Ok(())
    }

    /// The objects that may hold the content of `ino`, a file only in a
    /// backend (namespace, path, version): every object holding content
    /// `sha` (by its checksum), then the object the file was listed as (at
    /// the version it was seen at, if the `remote` row does not say). One
    /// another writer replaced or moved away leaves the others.
    pub(super) fn remote_candidates(
        conn: &rusqlite::Connection,
        ino: InodeNo,
        sha: Option<&[u8; 32]>,
    ) -> CoreResult<Vec<Candidate>> {
        let mut cands: Vec<Candidate> = match sha {
            Some(s) => msync::remotes_with_sha(conn, s)?
                .into_iter()
                .map(|(n, p, r)| (n, p, Some(r.etag)))
                .collect(),
            None => Vec::new(),
        };
        if let Some((b, seen)) = meta::remote_src(conn, ino)?
            && let Some(i) = b.iter().position(|&c| c == b'/')
        {
            let (ns, path) = (
                String::from_utf8_lossy(&b[..i]).into_owned(),
                b[i + 1..].to_vec(),
            );
            let etag = match seen {
                Some(e) => Some(e),
                None => msync::get_remote(conn, &ns, &path)?.map(|r| r.etag),
            };
            if !cands.iter().any(|c| c.0 == ns && c.1 == path) {
                cands.push((ns, path, etag));
            }
        }
        Ok(cands)
    }

    /// Gives `ino`, a file only in a backend at `version`, the content
    /// fetched from `ns/path` (at `etag`): its block list `list`, hashing
    /// to `got`. False, and nothing done, when the file changed meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn install_fetched(
        &self,
        st: &mut State,
        ino: InodeNo,
        version: i64,
        list: &[Fetched],
        got: &[u8; 32],
        ns: &str,
        path: &[u8],
        etag: Option<&str>,
    ) -> CoreResult<bool> {
        let row = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
        if !row.remote_only || row.version != version {
            return Ok(false);
        }
        // Stored outside the lock: a block whose file was already there
        // (the same content, freed and waiting to go, `free_when_durable`)
        // may have gone since. It is recorded as absent, fetched again
        // when read, not as present with no file behind it.
        let here: Vec<bool> = list
            .iter()
            .map(|(_, r, _, stored)| *stored && self.blocks.contains(&r.id))
            .collect();
        st.tx(|tx| {
            for ((i, r, data, _), stored) in list.iter().zip(&here) {
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
            // (A file only in the backend had no block list.)
            let bytes: i64 = list.iter().map(|(_, r, _, _)| r.len as i64).sum();
            meta::add_alloc(tx, ino, bytes)?;
            meta::set_materialized(tx, ino, &got[..])?;
            // The version fetched (by its ETag) hashes to `got`: the object
            // now has a checksum LOCKER checked itself, and its blocks can be
            // evicted and fetched back like any other.
            msync::verify_remote(tx, ns, path, &got[..], etag)?;
            Ok(())
        })?;
        for ((_, r, _, _), stored) in list.iter().zip(&here) {
            if *stored {
                st.lru.put(r.id, ());
            }
        }
        if let Some(fs) = st.files.get_mut(&ino) {
            fs.remote_only = false;
        }
        Ok(true)
    }
}
