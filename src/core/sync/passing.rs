//! Blocks fetched for a reader of a file too large to keep: more than a
//! quarter of the cache, the rule a stream of a file only in a backend
//! follows too (`stream.rs`). They are checked against their SHA-256 like
//! any fetched block, then held here, in memory, until the reader has read
//! them; they are never written to the block store. So one sequential read
//! of a big evicted file neither pushes the rest of the cache out nor
//! writes and reads back every byte it passes on, and the next read of it
//! fetches again, as a stream's does.
//!
//! Only reads look here. A file about to change, or an upload, needs its
//! blocks in the block store: `BlockStore::contains` does not see these,
//! so those fetch into the store as before.
//!
//! Bounded by bytes (`cap`): a block the reader has read to its end goes
//! at once (`done`); past the bound the oldest go first, and a reader that
//! reaches one of those fetches it again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::blocks::BlockId;

/// A fetched range whose blocks wait here; its buffer goes back to the
/// pool (`crate::buf`) with the last of them.
pub(crate) struct Chunk(Vec<u8>);

impl Chunk {
    pub(crate) fn new(v: Vec<u8>) -> Arc<Chunk> {
        Arc::new(Chunk(v))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        crate::buf::give(std::mem::take(&mut self.0));
    }
}

/// One block: where it is in its chunk.
struct Piece {
    chunk: Arc<Chunk>,
    at: usize,
    len: usize,
}

#[derive(Default)]
pub(crate) struct Passing {
    inner: Mutex<Inner>,
    /// Everything put is pushed out at once, as a crowd of other readers
    /// could (tests).
    #[cfg(test)]
    pub(crate) crowded: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Inner {
    blocks: HashMap<BlockId, Piece>,
    /// Blocks in the order they came (some may have gone already).
    order: VecDeque<BlockId>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: &BlockId) {
        if let Some(p) = self.blocks.remove(id) {
            self.bytes -= p.len;
        }
    }
}

impl Passing {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the blocks of `chunk` (id, offset, length each, checked
    /// already), dropping the oldest held beyond `cap` bytes.
    pub(crate) fn put(&self, cap: usize, chunk: &Arc<Chunk>, pieces: &[(BlockId, usize, usize)]) {
        let mut g = self.inner();
        for &(id, at, len) in pieces {
            g.remove(&id);
            g.blocks.insert(
                id,
                Piece {
                    chunk: chunk.clone(),
                    at,
                    len,
                },
            );
            g.bytes += len;
            g.order.push_back(id);
        }
        #[cfg(test)]
        let cap = if self.crowded.load(std::sync::atomic::Ordering::Relaxed) {
            0
        } else {
            cap
        };
        while g.bytes > cap
            && let Some(old) = g.order.pop_front()
        {
            g.remove(&old);
        }
        // Entries of blocks read since are dropped as they reach the front.
        while let Some(front) = g.order.front() {
            if g.blocks.contains_key(front) {
                break;
            }
            g.order.pop_front();
        }
    }

    /// Whether block `id` is held.
    pub(crate) fn holds(&self, id: &BlockId) -> bool {
        self.inner().blocks.contains_key(id)
    }

    /// Copies the bytes of block `id` from offset `bo` into `dst`; false if
    /// the block is not held (or shorter).
    pub(crate) fn read_at(&self, id: &BlockId, bo: u64, dst: &mut [u8]) -> bool {
        let g = self.inner();
        let Some(p) = g.blocks.get(id) else {
            return false;
        };
        let b = bo as usize;
        if b + dst.len() > p.len {
            return false;
        }
        dst.copy_from_slice(&p.chunk.0[p.at + b..p.at + b + dst.len()]);
        true
    }

    /// Lets blocks go that a reader has read to their end (once its whole
    /// read was served: a read across two blocks that finds the second
    /// missing comes back for the first after the fetch).
    pub(crate) fn done(&self, ids: &[BlockId]) {
        let mut g = self.inner();
        for id in ids {
            g.remove(id);
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.inner().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BlockId {
        BlockId::of(&[n])
    }

    #[test]
    fn a_block_read_goes_and_the_bound_drops_the_oldest() {
        let p = Passing::default();
        let chunk = Chunk::new((0..40u8).collect());
        p.put(
            30,
            &chunk,
            &[(id(1), 0, 10), (id(2), 10, 10), (id(3), 20, 10)],
        );
        assert_eq!(p.bytes(), 30);
        let mut buf = [0u8; 4];
        assert!(p.read_at(&id(2), 2, &mut buf));
        assert_eq!(buf, [12, 13, 14, 15]);
        let mut tail = [0u8; 4];
        assert!(p.read_at(&id(2), 6, &mut tail));
        assert_eq!(tail, [16, 17, 18, 19]);
        p.done(&[id(2)]);
        assert!(!p.holds(&id(2)), "read to its end: gone");
        assert_eq!(p.bytes(), 20);
        // Past its length: not served.
        assert!(!p.read_at(&id(1), 8, &mut buf));
        // Over the bound: the oldest (1) goes first.
        p.put(30, &chunk, &[(id(4), 30, 10), (id(5), 0, 10)]);
        assert!(!p.holds(&id(1)));
        assert!(p.holds(&id(3)) && p.holds(&id(4)) && p.holds(&id(5)));
        assert_eq!(p.bytes(), 30);
    }
}
