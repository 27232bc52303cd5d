//! Reused buffers for bulk data: ranges fetched from a backend, parts
//! uploaded to one, the answers to reads through the mount and the HTTP
//! API.
//!
//! Why: these buffers are large (128 KiB to 8 MiB), and the allocator
//! serves an allocation that large from fresh pages (`mmap`) or from heap
//! memory it has given back to the kernel on an earlier free (trimmed, or
//! `MADV_DONTNEED` in a thread's arena). Every 4 KiB page of it is then
//! faulted in and zeroed by the kernel on first touch, and unmapped again
//! on free. In a cold read of a 1 GiB file from a backend that was 36 % of
//! the daemon's CPU time and half of the mount thread's (`perf record` of
//! the daemon: `do_anonymous_page`, `clear_page_erms`, `unmap_page_range`
//! under the `memmove` that fills a fetched range and the `memset` that
//! zeroes a read's answer); 530,000 page faults per GiB read. A buffer
//! given back here keeps its pages, so the next one of its size class
//! costs no fault.
//!
//! Bounded: at most `KEEP_SMALL` + `KEEP` bytes wait here unused (the rest
//! is freed as usual), and what waits longer than `IDLE` is freed by
//! `shed` (the core's committer calls it when idle), so the daemon's
//! memory is what its data in flight needs, plus at most those while data
//! flows. Buffers under `MIN` bytes are left to the allocator, which
//! reuses small chunks well.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Smaller buffers are not kept.
const MIN: usize = 64 << 10;
/// Larger buffers are not kept (a buffer this size is rare: one range of
/// eight blocks is 8 MiB).
const MAX: usize = 16 << 20;
/// Buffers up to this size (answers to reads: 128 KiB to 1 MiB) are kept
/// apart from larger ones (fetched ranges, 8 MiB), so that neither kind
/// fills the room of the other.
const SMALL: usize = 2 << 20;
/// Bytes kept unused at most, of buffers up to `SMALL`...
const KEEP_SMALL: usize = 8 << 20;
/// ... and of larger ones: the ranges of the fetches ahead of a reader
/// (`[cache] fetches`, 4 by default, of 8 MiB) and the reader's own.
const KEEP: usize = 48 << 20;
/// A buffer unused this long is freed by `shed`.
pub const IDLE: Duration = Duration::from_secs(2);

struct Pool {
    /// Each with the time it was given back.
    free: Vec<(Vec<u8>, Instant)>,
    bytes: usize,
    keep: usize,
}

impl Pool {
    const fn new(keep: usize) -> Pool {
        Pool {
            free: Vec::new(),
            bytes: 0,
            keep,
        }
    }

    /// A kept buffer that holds `len` bytes: the smallest, and at most
    /// twice that, so that a small request does not take the buffer a
    /// large one will want.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        if !(MIN..=MAX).contains(&len) {
            return None;
        }
        let i = (self.free.iter().enumerate())
            .filter(|(_, (v, _))| (len..=2 * len).contains(&v.capacity()))
            .min_by_key(|(_, (v, _))| v.capacity())
            .map(|(i, _)| i)?;
        let (v, _) = self.free.swap_remove(i);
        self.bytes -= v.capacity();
        Some(v)
    }

    fn give(&mut self, mut v: Vec<u8>, now: Instant) {
        let cap = v.capacity();
        if (MIN..=MAX).contains(&cap) && self.bytes + cap <= self.keep {
            v.clear();
            self.bytes += cap;
            self.free.push((v, now));
        }
    }

    /// Frees the buffers given back before `before`.
    fn shed(&mut self, before: Instant) -> Vec<Vec<u8>> {
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.free)
            .into_iter()
            .partition(|(_, t)| *t < before);
        self.free = keep;
        self.bytes = self.free.iter().map(|(v, _)| v.capacity()).sum();
        old.into_iter().map(|(v, _)| v).collect()
    }
}

static SMALL_POOL: Mutex<Pool> = Mutex::new(Pool::new(KEEP_SMALL));
static POOL: Mutex<Pool> = Mutex::new(Pool::new(KEEP));

/// The pool of buffers of `size` bytes.
fn pool(size: usize) -> std::sync::MutexGuard<'static, Pool> {
    let p = if size <= SMALL { &SMALL_POOL } else { &POOL };
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer that holds at least `len` bytes without growing. A new
/// one kept here later is made a power of two in size: reads come in all
/// sizes, and one of a size class serves every later request in it.
pub fn take(len: usize) -> Vec<u8> {
    if !(MIN..=MAX).contains(&len) {
        return Vec::with_capacity(len);
    }
    pool(len)
        .take(len)
        .unwrap_or_else(|| Vec::with_capacity(len.next_power_of_two()))
}

/// `len` zero bytes.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut v = take(len);
    v.resize(len, 0);
    v
}

/// Gives a buffer back for reuse (or frees it, when it is too small or
/// too large, or enough wait already).
pub fn give(v: Vec<u8>) {
    if (MIN..=MAX).contains(&v.capacity()) {
        pool(v.capacity()).give(v, Instant::now());
    }
}

/// Bytes whose buffer goes back here when dropped: a block's bytes held
/// in memory while a file is written, shared with the hasher (which
/// drops them on another thread, where the allocator would not reuse
/// them).
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Owned(Vec<u8>);

impl Owned {
    /// A copy of `data` in a reused buffer.
    pub fn copy_of(data: &[u8]) -> Owned {
        let mut v = take(data.len());
        v.extend_from_slice(data);
        Owned(v)
    }
}

impl From<Vec<u8>> for Owned {
    fn from(v: Vec<u8>) -> Owned {
        Owned(v)
    }
}

impl std::ops::Deref for Owned {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Clone for Owned {
    fn clone(&self) -> Owned {
        Owned::copy_of(&self.0)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// A buffer lent out as `Bytes`: given back when the last `Bytes` that
/// shares it is dropped.
struct Lent(Vec<u8>);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// `v` as `Bytes` (a body handed to an HTTP client or server, slices
/// shared by readers), its buffer given back here once all are dropped.
pub fn into_bytes(v: Vec<u8>) -> bytes::Bytes {
    if (MIN..=MAX).contains(&v.capacity()) {
        bytes::Bytes::from_owner(Lent(v))
    } else {
        bytes::Bytes::from(v)
    }
}

/// Frees the buffers unused for `IDLE` (outside the pool's lock).
pub fn shed() {
    let Some(before) = Instant::now().checked_sub(IDLE) else {
        return;
    };
    let old = (pool(SMALL).shed(before), pool(MAX).shed(before));
    drop(old);
}

/// Gives back every buffer of `vs`.
pub fn give_all(vs: impl IntoIterator<Item = Vec<u8>>) {
    for v in vs {
        give(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_handed_out_again_and_the_pool_stays_bounded() {
        let mut p = Pool::new(8 << 20);
        let t = Instant::now();
        let a = Vec::<u8>::with_capacity(3 << 20);
        let big = a.as_ptr();
        p.give(a, t);
        let mut b = Vec::<u8>::with_capacity(1 << 20);
        b.extend_from_slice(&[7; 1000]);
        let small = b.as_ptr();
        p.give(b, t);
        // The smallest that fits, empty.
        let got = p.take(600 << 10).unwrap();
        assert_eq!((got.as_ptr(), got.len()), (small, 0));
        assert!(p.take(4 << 20).is_none(), "nothing kept holds 4 MiB");
        assert!(p.take(1 << 20).is_none(), "3 MiB is too large for 1 MiB");
        let got = p.take(2 << 20).unwrap();
        assert_eq!(got.as_ptr(), big);
        assert!(p.take(MIN).is_none());
        // Tiny, huge and past the bound: freed, not kept.
        p.give(Vec::with_capacity(100), t);
        p.give(Vec::with_capacity(MAX + 1), t);
        for _ in 0..20 {
            p.give(Vec::with_capacity(1 << 20), t);
        }
        assert_eq!(p.bytes, 8 << 20);
        assert_eq!(p.free.len(), 8);
        assert!(p.take(100).is_none(), "small requests go to the allocator");
    }

    #[test]
    fn buffers_left_unused_are_freed() {
        let mut p = Pool::new(8 << 20);
        let t = Instant::now();
        p.give(Vec::with_capacity(1 << 20), t);
        p.give(Vec::with_capacity(2 << 20), t + Duration::from_secs(5));
        assert_eq!(p.shed(t + Duration::from_secs(1)).len(), 1);
        assert_eq!((p.free.len(), p.bytes), (1, 2 << 20));
        assert!(p.take(1 << 20).is_some(), "2 MiB serves 1 MiB");
        assert_eq!(p.bytes, 0);
    }

    #[test]
    fn bytes_lent_out_come_back_once_the_last_slice_is_dropped() {
        // A size class no other test of this process uses.
        let len = MAX - 1;
        let mut v = take(len);
        v.resize(len, 1);
        let ptr = v.as_ptr();
        let b = into_bytes(v);
        let slice = b.slice(10..20);
        drop(b);
        assert_eq!(slice.as_ptr(), ptr.wrapping_add(10));
        assert!(
            pool(len).take(len).is_none(),
            "given back while still shared"
        );
        drop(slice);
        let back = pool(len).take(len).expect("given back");
        assert_eq!((back.as_ptr(), back.len()), (ptr, 0));
    }

    #[test]
    fn owned_bytes_go_back_when_dropped_and_a_clone_is_a_copy() {
        // A size class no other test of this process uses.
        let len = MAX / 2 - 1;
        let o = Owned::copy_of(&vec![5u8; len]);
        let ptr = o.as_ptr();
        let c = o.clone();
        assert_eq!(c, o);
        assert_ne!(c.as_ptr(), ptr);
        drop(c);
        drop(o);
        // Both came back: the two buffers of this class.
        let mut p = pool(len);
        let a = p.take(len).expect("given back");
        let b = p.take(len).expect("given back");
        assert!(a.as_ptr() == ptr || b.as_ptr() == ptr);
    }

    #[test]
    fn zeroed_is_zero_even_from_a_dirty_buffer() {
        let mut v = take(MIN);
        v.resize(MIN, 0xAB);
        give(v);
        let z = zeroed(MIN);
        assert_eq!(z.len(), MIN);
        assert!(z.iter().all(|&x| x == 0));
    }
}
