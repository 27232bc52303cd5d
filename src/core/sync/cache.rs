//! The cache bound: the eviction order, dropping blocks a backend holds,
//! and holding writers back while the cache is full.

use crate::blocks::{BlockId, INLINE_MAX};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, StateGuard};
#[cfg(test)]
use crate::meta;
use crate::meta::sync as msync;

impl Locker {
    /// Whether writers are waiting for cache space: the sidecar then
    /// uploads without waiting for files to be quiet.
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Whether a write of `len` bytes may have to wait for cache space
    /// (`lock_for_write`): the cache is within the most uncommitted data
    /// can add of its bound. Read without the state lock, so only a hint.
    pub fn write_may_wait(&self, len: u64) -> bool {
        self.blocks.bytes() + self.opts.dirty_memory_limit + len
            > self.opts.cache_limit + self.opts.cache_margin
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
        if st.held.is_some() && st.open_tx.is_none() {
            // Operations waiting in the redo log, not applied, may name
            // blocks no row here shows.
            return Ok(0);
        }
        if self.blocks.bytes() <= target {
            return Ok(0);
        }
        // A block goes because a commit says a backend holds it. Made
        // durable first: a power cut could otherwise take that commit and
        // leave the file dirty here, its only copy of that version gone.
        // That also removes the block files that freed ones waited on
        // (`free_when_durable`), which go before any the backend holds.
        // While operations are held (their commit fails on a full disk),
        // what did commit is synced alone, and eviction goes on: it is
        // what gives the disk room again.
        if st.held.is_some() {
            st.sync_committed()?;
        } else {
            st.durable()?;
        }
        // A bounded pass: the state lock is held throughout.
        let mut left = st.lru.len().min(512);
        let mut dropped = 0;
        let before = self.blocks.bytes();
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
        let m = crate::metrics::metrics();
        m.evictions.inc_by(dropped);
        m.evicted_bytes
            .inc_by(before.saturating_sub(self.blocks.bytes()));
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
    pub(crate) fn lock_for_write(&self, len: u64) -> CoreResult<StateGuard<'_>> {
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

    /// Makes room for `incoming` bytes of fetched blocks.
    pub(super) fn room_for_fetch(&self, incoming: u64) -> CoreResult<()> {
        let limit = self.opts.cache_limit;
        if self.blocks.bytes() + incoming > limit {
            self.evict(limit.saturating_sub(incoming))?;
        }
        Ok(())
    }
}
