//! Files that exist only in a backend, read without waiting for all of
//! their content.
//!
//! A file larger than `verify_whole` that is only in a backend is not
//! downloaded whole before its first byte is served (`head -c 100` of a
//! 10 GiB video would wait for all of it). Its reads are served from ranged
//! GETs of the object, every one pinned to the version (ETag) the file was
//! listed at, so bytes of two versions are never mixed; a sequential reader
//! gets the blocks ahead of it fetched in the background, in a window that
//! doubles up to the readahead bound, several GETs at once.
//!
//! What is checked before a byte is served:
//! - files up to `verify_whole`: the whole content, against its SHA-256
//!   (`materialize`);
//! - streamed files: that the bytes come from the listed version and that
//!   the object has the listed size. Their SHA-256 is computed as the
//!   blocks arrive, in order; once all of it has been read, it is compared
//!   with the one the object carries (LOCKER's own uploads, and any object
//!   with a `sha256` label). A match makes the file an ordinary one whose
//!   block names are known and checked (later reads of evicted blocks are
//!   checked block by block); a mismatch is logged, shown by `locker
//!   status`, and every later read of that version fails with EIO.
//!
//! Memory: the blocks of a stream are kept in memory only around the
//! reader (what is ahead, and what is not yet hashed): the readahead
//! window plus at most 32 MiB (`stream_trim`); a file no larger than a quarter of the cache keeps its
//! blocks in the cache once they are hashed. A stream is dropped at the
//! last close of its file, when the file changes, and when more than
//! `MAX_STREAMS` are open (least recently used first).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::fetch::Fetched;
use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, State};
use crate::meta::{self, BlockRef};

/// Streams kept at once; the least recently read goes first.
const MAX_STREAMS: usize = 16;

/// Blocks per ranged GET.
const PER_GET: usize = 8;

/// The first read of a stream, up to this long, is answered by a GET of
/// its own bytes while its block is fetched beside it. A connection new or
/// idle for a while starts with a small window (TCP's slow start, and the
/// receiver's window growing from 64 KiB), so a whole 1 MiB block takes
/// several round trips to arrive where a few KiB take one: `head -c 1`,
/// `file` or a thumbnailer would otherwise wait for all of them.
const DIRECT_MAX: u64 = 256 << 10;

/// The object version a stream's GETs ask for (`If-Match`), and those
/// that failed it.
struct Pin {
    ns: String,
    path: Vec<u8>,
    etag: String,
    failed: Vec<ObjectName>,
}

/// A namespace and a path in it.
type ObjectName = (String, Vec<u8>);

/// One file only in a backend, being read.
pub(crate) struct Stream {
    ino: InodeNo,
    /// The file's version when the stream began.
    version: i64,
    /// The object its GETs are pinned to.
    pin: Mutex<Pin>,
    size: u64,
    sha: Option<[u8; 32]>,
    /// Hashed blocks are kept in the cache (the file is small next to it).
    keep: bool,
    flow: Mutex<Flow>,
    arrived: Condvar,
    hashing: Mutex<Hashing>,
    /// Blocks hashed so far (those before it can leave memory).
    hashed: AtomicU64,
    /// Its end was handled (`stream_done` ran: the file installed, or its
    /// content found wrong).
    settled: Mutex<bool>,
    settled_cv: Condvar,
}

/// The blocks in memory and the reader's progress.
struct Flow {
    /// Each a slice of the buffer its GET filled (no copy).
    chunks: BTreeMap<u64, Bytes>,
    /// Blocks being fetched.
    inflight: HashSet<u64>,
    mem: u64,
    /// Where a sequential reader's next read starts.
    next: u64,
    /// The first block not yet asked for ahead of the reader, and the
    /// window (in blocks) last asked for.
    ahead: u64,
    window: u64,
    used: Instant,
    /// A first read was served by a GET of its own bytes (`DIRECT_MAX`).
    direct: bool,
}

/// The SHA-256 of the content so far, and the block list it gives.
struct Hashing {
    h: Sha256,
    /// Blocks hashed.
    at: u64,
    list: Vec<Fetched>,
    /// Blocks this stream stored in the cache (freed if it never ends).
    stored: Vec<BlockId>,
    /// Finished or abandoned: nothing more is hashed or stored.
    over: bool,
}

impl Stream {
    fn nblocks(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE)
    }

    fn block_len(&self, idx: u64) -> u64 {
        (self.size - idx * BLOCK_SIZE).min(BLOCK_SIZE)
    }

    fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin(&self) -> MutexGuard<'_, Pin> {
        self.pin.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Blocks of a stream marked in flight for a fetch ahead of its reader:
/// unmarked when dropped, so a job that never runs leaves no reader
/// waiting for it.
struct Ahead {
    s: Arc<Stream>,
    idxs: Vec<u64>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        let mut f = self.s.flow();
        for i in &self.idxs {
            f.inflight.remove(i);
        }
        drop(f);
        self.s.arrived.notify_all();
    }
}

fn eio() -> CoreError {
    CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO))
}

impl Locker {
    /// Whether a read of `ino` (of `size` bytes, only in a backend) is
    /// streamed rather than preceded by a whole download.
    pub(crate) fn streams_reads(&self, size: u64) -> bool {
        size > self.opts.verify_whole && self.remote.get().is_some()
    }

    /// The object the stream of `ino` reads from, if it has one (tests).
    #[cfg(test)]
    pub(crate) fn stream_pinned(&self, ino: InodeNo) -> Option<(String, Vec<u8>)> {
        let s = self.streams_map().get(&ino).cloned()?;
        let p = s.pin();
        Some((p.ns.clone(), p.path.clone()))
    }

    /// Up to `len` bytes at `offset` of `ino`, a file only in a backend
    /// (at `version`, if given), from its stream. `None` when the file is
    /// no longer only in a backend (or at that version), or cannot be
    /// streamed: the caller reads it as usual.
    pub(crate) fn stream_read(
        &self,
        ino: InodeNo,
        version: Option<i64>,
        offset: u64,
        len: u64,
    ) -> CoreResult<Option<Vec<u8>>> {
        let Some(s) = self.stream_for(ino, version)? else {
            return Ok(None);
        };
        let end = s.size.min(offset.saturating_add(len));
        if offset >= end {
            return Ok(Some(Vec::new()));
        }
        let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        for _ in 0..4 {
            let (mut mine, mut jobs) = self.plan(&s, offset, end, first, last);
            let direct = !mine.is_empty()
                && end - offset <= DIRECT_MAX
                && self.prefetcher.get().is_some()
                && !std::mem::replace(&mut s.flow().direct, true);
            if direct {
                // Its blocks are fetched beside it, for the reads after it.
                jobs.insert(0, std::mem::take(&mut mine));
            }
            for idxs in jobs {
                // Marked in flight: given back if the job never runs.
                let job = Ahead { s: s.clone(), idxs };
                if let Some(p) = self.prefetcher.get() {
                    p(Box::new(move |c: &Locker| {
                        let _ = c.stream_fetch(&job.s, &job.idxs);
                    }));
                }
            }
            if direct {
                return self.stream_direct(&s, offset, end).map(Some);
            }
            if !mine.is_empty() {
                self.stream_fetch(&s, &mine)?;
            }
            let mut f = s.flow();
            loop {
                if (first..=last).all(|i| f.chunks.contains_key(&i)) {
                    let mut out = crate::buf::take((end - offset) as usize);
                    for i in first..=last {
                        let c = &f.chunks[&i];
                        let from = offset.max(i * BLOCK_SIZE) - i * BLOCK_SIZE;
                        let to = end.min((i + 1) * BLOCK_SIZE) - i * BLOCK_SIZE;
                        out.extend_from_slice(&c[from as usize..to as usize]);
                    }
                    f.used = Instant::now();
                    return Ok(Some(out));
                }
                if (first..=last).any(|i| !f.chunks.contains_key(&i) && !f.inflight.contains(&i)) {
                    // A fetch someone else made failed, or a block left
                    // memory before this reader took it: ask again.
                    break;
                }
                f = s.arrived.wait(f).unwrap_or_else(|p| p.into_inner());
            }
        }
        tracing::error!(
            inode = ino.0,
            offset,
            "a streamed file's blocks kept leaving memory before they were read"
        );
        Err(eio())
    }

    /// The blocks of `first..=last` this reader fetches itself, and the
    /// batches to fetch ahead of it (all marked in flight).
    fn plan(
        &self,
        s: &Stream,
        offset: u64,
        end: u64,
        first: u64,
        last: u64,
    ) -> (Vec<u64>, Vec<Vec<u64>>) {
        let mut f = s.flow();
        let sequential =
            offset == 0 || crate::core::file::in_sequence(offset, f.next, f.ahead, f.window);
        let mine: Vec<u64> = (first..=last)
            .filter(|i| !f.chunks.contains_key(i) && !f.inflight.contains(i))
            .collect();
        for i in &mine {
            f.inflight.insert(*i);
        }
        let mut jobs: Vec<Vec<u64>> = Vec::new();
        let nblocks = s.nblocks();
        let next = last + 1;
        if sequential && next < nblocks {
            let ahead = f.ahead.max(next);
            if f.window == 0 || ahead.saturating_sub(next) < f.window.div_ceil(2) {
                let max = self.window_max();
                let window = (f.window * 2).clamp(2.min(max), max);
                let upto = nblocks.min(next + window);
                let mut batch: Vec<u64> = Vec::new();
                for i in ahead..upto {
                    if f.chunks.contains_key(&i) || f.inflight.contains(&i) {
                        if !batch.is_empty() {
                            jobs.push(std::mem::take(&mut batch));
                        }
                        continue;
                    }
                    f.inflight.insert(i);
                    batch.push(i);
                    if batch.len() == PER_GET {
                        jobs.push(std::mem::take(&mut batch));
                    }
                }
                if !batch.is_empty() {
                    jobs.push(batch);
                }
                f.ahead = upto.max(ahead);
                f.window = window;
            }
        } else if !sequential {
            f.ahead = 0;
            f.window = 0;
        }
        f.next = if sequential { end.max(f.next) } else { end };
        f.used = Instant::now();
        (mine, jobs)
    }

    /// The readahead window's bound, in blocks. The blocks are in memory,
    /// not in the cache: the cache's size does not bound it.
    fn window_max(&self) -> u64 {
        (self.opts.readahead_limit / BLOCK_SIZE).max(1)
    }

    /// The stream of `ino`, begun if need be; `None` when the file is not
    /// (or no longer) only in a backend, is not at `version` (if given), or
    /// has no object version to pin.
    fn stream_for(&self, ino: InodeNo, version: Option<i64>) -> CoreResult<Option<Arc<Stream>>> {
        let existing = self.streams_map().get(&ino).cloned();
        let st = self.lock();
        let Some(row) = meta::get_inode(&st.conn, ino)? else {
            return Err(CoreError::NotFound);
        };
        if version.is_some_and(|v| v != row.version) {
            return Ok(None);
        }
        if let Some(s) = existing {
            if row.remote_only && row.version == s.version {
                return Ok(Some(s));
            }
            drop(st);
            let mut st = self.lock();
            self.forget_stream(&mut st, ino);
            return Ok(None);
        }
        if !row.remote_only {
            return Ok(None);
        }
        if self.is_bad(ino, row.version) {
            tracing::error!(
                inode = ino.0,
                "this version of the file did not match its SHA-256 when it was read; refusing it"
            );
            return Err(eio());
        }
        let sha: Option<[u8; 32]> = row.sha256.as_deref().and_then(|s| s.try_into().ok());
        let cands = Locker::remote_candidates(&st.conn, ino, sha.as_ref())?;
        let Some((ns, path, Some(etag))) = cands.into_iter().find(|c| c.2.is_some()) else {
            return Ok(None);
        };
        drop(st);
        let s = Arc::new(Stream {
            ino,
            version: row.version,
            pin: Mutex::new(Pin {
                ns,
                path,
                etag,
                failed: Vec::new(),
            }),
            size: row.attr.size,
            sha,
            keep: self.keeps_read(row.attr.size),
            flow: Mutex::new(Flow {
                chunks: BTreeMap::new(),
                inflight: HashSet::new(),
                mem: 0,
                next: 0,
                ahead: 0,
                window: 0,
                used: Instant::now(),
                direct: false,
            }),
            arrived: Condvar::new(),
            hashing: Mutex::new(Hashing {
                h: Sha256::new(),
                at: 0,
                list: Vec::new(),
                stored: Vec::new(),
                over: false,
            }),
            hashed: AtomicU64::new(0),
            settled: Mutex::new(false),
            settled_cv: Condvar::new(),
        });
        let (s, evict) = {
            let mut m = self.streams_map();
            if let Some(other) = m.get(&ino) {
                // Begun meanwhile by another reader.
                return Ok(Some(other.clone()));
            }
            m.insert(ino, s.clone());
            let mut evict = Vec::new();
            while m.len() > MAX_STREAMS {
                let Some(oldest) = m
                    .iter()
                    .filter(|(i, _)| **i != ino)
                    .min_by_key(|(_, x)| x.flow().used)
                    .map(|(i, _)| *i)
                else {
                    break;
                };
                m.remove(&oldest);
                evict.push(oldest);
            }
            (s, evict)
        };
        if !evict.is_empty() {
            let mut st = self.lock();
            for i in evict {
                self.forget_stream(&mut st, i);
            }
        }
        Ok(Some(s))
    }

    fn streams_map(&self) -> MutexGuard<'_, std::collections::HashMap<InodeNo, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_bad(&self, ino: InodeNo, version: i64) -> bool {
        self.bad_content
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(ino, version))
    }

    /// Whether any file is being streamed now.
    pub(crate) fn streams_active(&self) -> bool {
        !self.streams_map().is_empty()
    }

    /// Before the last close of `ino` (without the state lock): a stream
    /// whose blocks have all arrived is hashed to its end here, and its
    /// end handled, so the file is kept (where it fits) rather than dropped
    /// with the stream while another thread was still to hash its last
    /// block. Waits at most a second for a hash another thread is doing.
    pub(crate) fn stream_settle(&self, ino: InodeNo) {
        let Some(s) = self.streams_map().get(&ino).cloned() else {
            return;
        };
        let all_here = {
            let f = s.flow();
            let from = s.hashed.load(Ordering::Acquire);
            (from..s.nblocks()).all(|i| f.chunks.contains_key(&i))
        };
        if !all_here {
            return;
        }
        self.stream_hash(&s);
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let mut done = s.settled.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = s
                .settled_cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Drops the stream of `ino`, if any: what it stored in the cache for a
    /// block list it never finished is freed.
    pub(crate) fn forget_stream(&self, st: &mut State, ino: InodeNo) {
        let Some(s) = self.streams_map().remove(&ino) else {
            return;
        };
        let stored = {
            let mut h = s.hashing.lock().unwrap_or_else(|p| p.into_inner());
            h.over = true;
            std::mem::take(&mut h.stored)
        };
        self.free_unknown(st, &stored);
    }

    /// Frees blocks of `ids` that nothing names or holds.
    fn free_unknown(&self, st: &mut State, ids: &[BlockId]) {
        let gone: Vec<BlockId> = ids
            .iter()
            .filter(|id| !st.held(id) && !meta::block_known(&st.conn, id).unwrap_or(true))
            .copied()
            .collect();
        self.free_blocks(st, &gone);
    }

    /// Fetches blocks `idxs` of a stream (marked in flight by the caller)
    /// by ranged GETs of the version it is pinned to, and hands them to
    /// readers and the hash.
    /// Bytes `offset..end` of a stream by a GET of their own, pinned to
    /// its version like every other (see `DIRECT_MAX`).
    fn stream_direct(&self, s: &Stream, offset: u64, end: u64) -> CoreResult<Vec<u8>> {
        let len = end - offset;
        let (got, (ns, path)) = self.stream_get(s, &[(offset, len)]);
        match got.map(|mut v| v.pop()) {
            Ok(Some(v)) if v.len() as u64 == len => Ok(v),
            Ok(_) => {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), "the backend's object is shorter than listed; refusing it");
                Err(eio())
            }
            Err(e) => {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), error = %e, "fetching part of a file from the backend failed");
                Err(eio())
            }
        }
    }

    /// `ranges` of the object the stream is pinned to, and which object
    /// that was. When the GET fails and the file's content is known (its
    /// SHA-256), another object listed with that content takes over, each
    /// tried once: the object may have been replaced or removed by another
    /// writer while a copy stays. The whole-file check at the end covers
    /// the bytes whichever object gave them.
    fn stream_get(
        &self,
        s: &Stream,
        ranges: &[(u64, u64)],
    ) -> (Result<Vec<Vec<u8>>, String>, ObjectName) {
        loop {
            let (ns, path, etag) = {
                let p = s.pin();
                (p.ns.clone(), p.path.clone(), p.etag.clone())
            };
            let got = match self.remote.get() {
                Some(source) => source.fetch(&ns, &path, Some(&etag), ranges),
                None => return (Err("no backend is attached".into()), (ns, path)),
            };
            let e = match got {
                Ok(v) => return (Ok(v), (ns, path)),
                Err(e) => e,
            };
            let Some(sha) = s.sha else {
                return (Err(e), (ns, path));
            };
            let cands = Locker::remote_candidates(&self.lock().conn, s.ino, Some(&sha));
            let mut p = s.pin();
            if p.ns != ns || p.path != path {
                // Another reader moved it on meanwhile.
                continue;
            }
            p.failed.push((ns.clone(), path.clone()));
            let next = cands.ok().and_then(|c| {
                c.into_iter().find(|(n, pa, et)| {
                    et.is_some() && !p.failed.iter().any(|(fn_, fp)| fn_ == n && fp == pa)
                })
            });
            let Some((n, pa, Some(et))) = next else {
                return (Err(e), (ns, path));
            };
            tracing::info!(namespace = %ns, path = %String::from_utf8_lossy(&path), error = %e, copy = %format!("{n}/{}", String::from_utf8_lossy(&pa)), "a streamed file's object failed; going on from a copy with the same content");
            p.ns = n;
            p.path = pa;
            p.etag = et;
        }
    }

    fn stream_fetch(&self, s: &Arc<Stream>, idxs: &[u64]) -> CoreResult<()> {
        let mut groups: Vec<Vec<u64>> = Vec::new();
        for &i in idxs {
            match groups.last_mut() {
                Some(g) if g.len() < PER_GET && g.last() == Some(&(i - 1)) => g.push(i),
                _ => groups.push(vec![i]),
            }
        }
        let ranges: Vec<(u64, u64)> = groups
            .iter()
            .map(|g| {
                let end = g.last().map_or(0, |l| l * BLOCK_SIZE + s.block_len(*l));
                (g[0] * BLOCK_SIZE, end - g[0] * BLOCK_SIZE)
            })
            .collect();
        let (got, (ns, path)) = self.stream_get(s, &ranges);
        let mut pieces: Vec<(u64, Bytes)> = Vec::new();
        let r = match got {
            Ok(chunks) => {
                let mut short = false;
                for ((g, (_, rlen)), chunk) in groups.iter().zip(&ranges).zip(chunks) {
                    if chunk.len() as u64 != *rlen {
                        short = true;
                        break;
                    }
                    let chunk = crate::buf::into_bytes(chunk);
                    let bs = BLOCK_SIZE as usize;
                    for (k, at) in (0..chunk.len()).step_by(bs).enumerate() {
                        pieces.push((g[k], chunk.slice(at..(at + bs).min(chunk.len()))));
                    }
                }
                if short {
                    tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), "the backend's object is shorter than listed; refusing it");
                    Err(eio())
                } else {
                    Ok(())
                }
            }
            Err(e) => {
                tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), error = %e, "fetching part of a file from the backend failed");
                Err(eio())
            }
        };
        {
            let mut f = s.flow();
            for i in idxs {
                f.inflight.remove(i);
            }
            if r.is_ok() {
                for (i, data) in pieces {
                    f.mem += data.len() as u64;
                    if let Some(old) = f.chunks.insert(i, data) {
                        f.mem -= old.len() as u64;
                    }
                }
            }
        }
        s.arrived.notify_all();
        if r.is_ok() {
            self.stream_hash(s);
            self.stream_trim(s);
        }
        r
    }

    /// Keeps a stream's memory near the readahead window: past it plus
    /// 16 MiB, blocks hashed and behind the reader go; past that plus
    /// another 16 MiB, blocks not yet hashed too (the hash then completes
    /// only if they are read again), farthest from the reader first.
    fn stream_trim(&self, s: &Stream) {
        let soft = (self.window_max() + 2 * PER_GET as u64) * BLOCK_SIZE;
        let hard = soft + 2 * PER_GET as u64 * BLOCK_SIZE;
        let hashed = s.hashed.load(Ordering::Acquire);
        let mut f = s.flow();
        let here = (f.next / BLOCK_SIZE).saturating_sub(1);
        while f.mem > soft {
            let victim = match f.chunks.keys().next() {
                Some(&i) if i < hashed.min(here) => i,
                _ if f.mem > hard => {
                    let lo = f.chunks.keys().next().copied();
                    let hi = f.chunks.keys().next_back().copied();
                    match (lo, hi) {
                        (Some(lo), Some(hi)) if here.abs_diff(lo) >= here.abs_diff(hi) => lo,
                        (_, Some(hi)) => hi,
                        _ => break,
                    }
                }
                _ => break,
            };
            if let Some(c) = f.chunks.remove(&victim) {
                f.mem -= c.len() as u64;
            }
        }
    }

    /// Hashes the blocks that arrived in order; at the end of the content,
    /// checks it and makes the file an ordinary one.
    fn stream_hash(&self, s: &Arc<Stream>) {
        loop {
            let at = {
                // One hasher at a time; the others' blocks are seen below.
                let Ok(mut h) = s.hashing.try_lock() else {
                    return;
                };
                if h.over {
                    return;
                }
                loop {
                    let next = s.flow().chunks.get(&h.at).cloned();
                    let Some(data) = next else {
                        break;
                    };
                    h.h.update(&data[..]);
                    let i = h.at;
                    h.at += 1;
                    s.hashed.store(h.at, Ordering::Release);
                    if data.iter().any(|&b| b != 0) {
                        let r = BlockRef {
                            id: BlockId::of(&data),
                            len: data.len() as u32,
                        };
                        if (data.len() as u32) < INLINE_MAX {
                            h.list.push((i, r, Some(data.to_vec()), false));
                        } else {
                            let room = self.blocks.bytes() + data.len() as u64
                                <= self.opts.cache_limit / 4 * 3;
                            let stored = s.keep
                                && room
                                && match self.blocks.put_with_id(&r.id, &data) {
                                    Ok(new) => {
                                        if new {
                                            h.stored.push(r.id);
                                        }
                                        true
                                    }
                                    Err(_) => false,
                                };
                            h.list.push((i, r, None, stored));
                        }
                    }
                    if h.at == s.nblocks() {
                        h.over = true;
                        let got: [u8; 32] = std::mem::take(&mut h.h).finalize().into();
                        let list = std::mem::take(&mut h.list);
                        let stored = std::mem::take(&mut h.stored);
                        drop(h);
                        self.stream_done(s, got, list, stored);
                        return;
                    }
                }
                h.at
            };
            // A block may have arrived while the hash was taken.
            if !s.flow().chunks.contains_key(&at) {
                return;
            }
        }
    }

    /// All of a stream's content was read and hashed to `got`.
    fn stream_done(&self, s: &Stream, got: [u8; 32], list: Vec<Fetched>, stored: Vec<BlockId>) {
        self.stream_end(s, got, list, stored);
        *s.settled.lock().unwrap_or_else(|p| p.into_inner()) = true;
        s.settled_cv.notify_all();
    }

    fn stream_end(&self, s: &Stream, got: [u8; 32], list: Vec<Fetched>, stored: Vec<BlockId>) {
        let mut st = self.lock();
        let st = &mut *st;
        if self
            .streams_map()
            .get(&s.ino)
            .is_some_and(|x| std::ptr::eq(&**x, s))
        {
            self.streams_map().remove(&s.ino);
        }
        let (ns, path, etag) = {
            let p = s.pin();
            (p.ns.clone(), p.path.clone(), p.etag.clone())
        };
        if s.sha.is_some_and(|want| want != got) {
            tracing::error!(namespace = %ns, path = %String::from_utf8_lossy(&path), inode = s.ino.0, "a file read from the backend does not match its SHA-256: what was read of it may be wrong, and later reads fail");
            self.bad_content
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((s.ino, s.version));
            if let Some(source) = self.remote.get() {
                source.report(
                    &ns,
                    &format!(
                        "{}: the object does not match its SHA-256",
                        String::from_utf8_lossy(&path)
                    ),
                );
            }
            self.free_unknown(st, &stored);
            // The kernel keeps the pages it was given (the file is opened
            // with FOPEN_KEEP_CACHE): they go, so that every later read
            // reaches the daemon and fails. Told from another thread: a
            // read of this file may be what runs this.
            if let Some(inval) = self.invalidator.get().cloned() {
                let ino = s.ino;
                std::thread::spawn(move || inval(&[super::Invalidate::Inode(ino)]));
            }
            return;
        }
        match self.install_fetched(st, s.ino, s.version, &list, &got, &ns, &path, Some(&etag)) {
            Ok(true) => {}
            Ok(false) => self.free_unknown(st, &stored),
            Err(e) => {
                tracing::warn!(inode = s.ino.0, error = %e, "could not record a streamed file's content; it stays only in the backend");
                self.free_unknown(st, &stored);
            }
        }
    }
}
