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
const KEEP: usize = 40 << 20;
/// A buffer unused this long is freed by `shed`.
const IDLE: Duration = Duration::from_secs(2);

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

    /// A kept buffer of `len`'s size class (at least `len`, at most its
    /// next power of two): a small request does not take the buffer a
    /// large one will want, nor hold twice the memory it asked for.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        if !(MIN..=MAX).contains(&len) {
            return None;
        }
        let class = len..=len.next_power_of_two();
        let i = (self.free.iter().enumerate())
            .filter(|(_, (v, _))| class.contains(&v.capacity()))
            .min_by_key(|(_, (v, _))| v.capacity())
            .map(|(i, _)| i)?;
        let (v, _) = self.free.swap_remove(i);
        self.bytes -= v.capacity();
        Some(v)
    }

    /// Keeps `v`, or hands it back when there is no room (to be freed
    /// by the caller, outside the pool's lock).
    fn give(&mut self, mut v: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        let cap = v.capacity();
        if !(MIN..=MAX).contains(&cap) || self.bytes + cap > self.keep {
            return Some(v);
        }
        v.clear();
        self.bytes += cap;
        self.free.push((v, now));
        None
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
    let kept = pool(len).take(len);
    // (Allocated, if need be, outside the pool's lock.)
    kept.unwrap_or_else(|| Vec::with_capacity(len.next_power_of_two()))
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
    #[cfg(test)]
    GIVEN.with(|g| g.set(g.get() + 1));
    if (MIN..=MAX).contains(&v.capacity()) {
        let refused = pool(v.capacity()).give(v, Instant::now());
        // (Freed outside the pool's lock.)
        drop(refused);
    }
}

#[cfg(test)]
thread_local! {
    /// Buffers this thread has given back (tests: the pool is shared by
    /// every test of the process, so they look at their own thread's
    /// count rather than at what the pool holds).
    static GIVEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes whose buffer goes back here when dropped: a block's bytes held
/// in memory while a file is written, shared with the hasher (which
/// drops them on another thread, where the allocator would not reuse
/// them).
#[derive(Debug, PartialEq, Eq)]
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
    let small = pool(SMALL).shed(before);
    let large = pool(MAX).shed(before);
    // (Freed outside the pools' locks.)
    drop((small, large));
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
        let a = Vec::<u8>::with_capacity(4 << 20);
        let big = a.as_ptr();
        assert!(p.give(a, t).is_none());
        let mut b = Vec::<u8>::with_capacity(1 << 20);
        b.extend_from_slice(&[7; 1000]);
        let small = b.as_ptr();
        assert!(p.give(b, t).is_none());
        // Its size class, empty.
        let got = p.take(600 << 10).unwrap();
        assert_eq!((got.as_ptr(), got.len()), (small, 0));
        assert!(p.take(5 << 20).is_none(), "nothing kept holds 5 MiB");
        assert!(p.take(1 << 20).is_none(), "4 MiB is not of 1 MiB's class");
        let got = p.take(3 << 20).unwrap();
        assert_eq!(got.as_ptr(), big);
        assert!(p.take(MIN).is_none());
        // Tiny, huge and past the bound: handed back to be freed.
        assert!(p.give(Vec::with_capacity(100), t).is_some());
        assert!(p.give(Vec::with_capacity(MAX + 1), t).is_some());
        let refused = (0..20)
            .filter(|_| p.give(Vec::with_capacity(1 << 20), t).is_some())
            .count();
        assert_eq!((p.bytes, p.free.len(), refused), (8 << 20, 8, 12));
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
        assert!(p.take(1536 << 10).is_some(), "2 MiB serves 1.5 MiB");
        assert_eq!(p.bytes, 0);
    }

    fn given() -> usize {
        GIVEN.with(|g| g.get())
    }

    #[test]
    fn bytes_lent_out_come_back_once_the_last_slice_is_dropped() {
        let mut v = take(MIN);
        v.resize(MIN, 1);
        let ptr = v.as_ptr();
        let b = into_bytes(v);
        let slice = b.slice(10..20);
        let before = given();
        drop(b);
        assert_eq!(slice.as_ptr(), ptr.wrapping_add(10));
        assert_eq!(given(), before, "given back while still shared");
        drop(slice);
        assert_eq!(given(), before + 1);
    }

    #[test]
    fn owned_bytes_go_back_when_dropped_and_a_clone_is_a_copy() {
        let o = Owned::copy_of(&vec![5u8; MIN + 1]);
        let c = o.clone();
        assert_eq!(c, o);
        assert_ne!(c.as_ptr(), o.as_ptr());
        let before = given();
        drop(c);
        drop(o);
        assert_eq!(given(), before + 2);
    }

    #[test]
    fn zeroed_is_zero_even_from_a_dirty_buffer() {
        // Whatever else the shared pool holds, a buffer of this class
        // dirtied and given back here may come back: it must be zeros.
        for _ in 0..4 {
            let mut v = take(MIN);
            v.resize(MIN, 0xAB);
            give(v);
            let z = zeroed(MIN);
            assert_eq!(z.len(), MIN);
            assert!(z.iter().all(|&x| x == 0));
            give(z);
        }
        let mut p = Pool::new(1 << 20);
        let mut v = Vec::with_capacity(MIN);
        v.resize(MIN, 0xAB);
        p.give(v, Instant::now());
        let mut back = p.take(MIN).unwrap();
        assert!(back.is_empty(), "a kept buffer comes back empty");
        back.resize(MIN, 0);
        assert!(back.iter().all(|&x| x == 0));
    }
}
