//! Small files kept in memory for the HTTP API's hot path: a warm `GET` of
//! one is answered on the server's event loop, without the blocking pool,
//! the state lock or SQLite.
//!
//! Validity: every change to the metadata (each `tx`, every batch) bumps
//! `generation`, under the state lock. An entry records the generation read
//! *before* its bytes were read, and is served only while the generation is
//! still that one: any change at all since, to any file, and it is read
//! again the slow way. So an entry can never be older than the last change
//! acknowledged before the request; the price is that a busy writer
//! elsewhere makes the cache miss, never that it serves stale bytes.
//! Bounded by `MAX_BYTES` (least recently used out first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::core::Locker;
use crate::core::objects::Tag;
use crate::core::types::*;

/// Bytes of file content kept, at most.
const MAX_BYTES: usize = 64 << 20;

/// A small file as the API serves it.
#[derive(Debug)]
pub struct HotFile {
    pub etag: Tag,
    pub mtime: Timestamp,
    pub mime: Option<Vec<u8>>,
    pub data: Bytes,
}

#[derive(Default)]
pub(crate) struct HotCache {
    inner: Mutex<Entries>,
}

struct Entries {
    map: lru::LruCache<Vec<u8>, (u64, Arc<HotFile>)>,
    bytes: usize,
}

impl Default for Entries {
    fn default() -> Self {
        Entries {
            map: lru::LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl Locker {
    /// The metadata's change count now: read before reading what a
    /// `hot_put` will keep.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The file at `key` (namespace and names, as `hot_key` joins them), if
    /// kept and nothing changed since it was read.
    pub fn hot_get(&self, key: &[u8]) -> Option<Arc<HotFile>> {
        let now = self.generation();
        let mut e = self.hot.inner.lock().unwrap_or_else(|p| p.into_inner());
        match e.map.get(key) {
            Some((g, f)) if *g == now => Some(f.clone()),
            Some(_) => {
                if let Some((_, f)) = e.map.pop(key) {
                    e.bytes -= f.data.len();
                }
                None
            }
            None => None,
        }
    }

    /// Keeps `file` at `key`, as read after the generation was `read_at`.
    pub fn hot_put(&self, key: Vec<u8>, read_at: u64, file: Arc<HotFile>) {
        if file.data.len() > MAX_BYTES / 64 || self.generation() != read_at {
            return;
        }
        let mut e = self.hot.inner.lock().unwrap_or_else(|p| p.into_inner());
        let len = file.data.len();
        if let Some((_, old)) = e.map.put(key, (read_at, file)) {
            e.bytes -= old.data.len();
        }
        e.bytes += len;
        while e.bytes > MAX_BYTES {
            match e.map.pop_lru() {
                Some((_, (_, f))) => e.bytes -= f.data.len(),
                None => break,
            }
        }
    }
}

/// The cache key of a path: its names joined by `/`.
pub fn hot_key(names: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            k.push(b'/');
        }
        k.extend_from_slice(n);
    }
    k
}

/// Counts changes: shared by the core and its state.
pub(crate) type Generation = Arc<AtomicU64>;
