//! FUSE over io_uring (Linux 6.14+, `[mount] io_uring = true`): the kernel
//! hands each request to a ring of the CPU its caller runs on, and the
//! reply goes back on the same ring with the next fetch, instead of a
//! `read` and a `writev` on `/dev/fuse` by one thread for every CPU.
//!
//! Why: on idle CPUs each `/dev/fuse` round trip wakes the daemon's thread
//! on another CPU; a ring served by a thread pinned to the caller's CPU
//! needs no such migration (BENCHMARKS.md measures it: LOCKER creates
//! small files about twice as fast over the rings with idle CPUs; on CPUs
//! busy with other work it is slower, since each CPU's requests wait for
//! that CPU, hence opt-in).
//!
//! How (from the kernel's `fs/fuse/dev_uring.c` and `Documentation/
//! filesystems/fuse-io-uring.rst`): the INIT handshake still happens on the
//! device, where the daemon accepts `FUSE_OVER_IO_URING`; it must then
//! register entries for every possible CPU's queue (the kernel holds every
//! request until it has), each entry a header buffer and a payload buffer,
//! with `IORING_OP_URING_CMD` `FUSE_IO_URING_CMD_REGISTER` in 128-byte
//! submission entries. A completion hands an entry a request: its
//! `fuse_in_header` in the header's `in_out`, its first argument (the
//! operation's own header) in `op_in`, the rest in the payload buffer. The
//! reply goes into the same buffers (`fuse_out_header` in `in_out`, the
//! rest in the payload) and is sent with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`,
//! which also gives the entry back for the next request. FORGET, INTERRUPT
//! and notifications keep using the device.
//!
//! Each request is rebuilt as the device would give it (header, first
//! argument, payload, contiguous) in front of its payload in the same
//! buffer, so no payload is copied, and dispatched by fuser like any other.
//! Its reply may come from another thread (`Waiters`): that thread writes
//! the answer into the entry's buffers and hands the entry to the ring's
//! own thread (a list, and an eventfd the ring polls), which alone submits
//! to its ring.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Dispatcher, ExternalSender, Filesystem};

/// Where the kernel says whether it offers FUSE over io_uring.
pub const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Entries per queue: requests a CPU's ring holds at once (a request that
/// waits on a backend or the disk keeps its entry until it is answered;
/// more wait in the kernel's queue).
const DEPTH: usize = 4;
/// Bytes in front of each payload buffer, where a request's header and
/// first argument are put back in front of its payload.
const PREFIX: usize = 256;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// The header buffer: `in_out`, `op_in` (128 bytes each), then the entry's
/// `fuse_uring_ent_in_out` (flags, commit id, payload size, padding,
/// reserved).
const HEADERS: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

const IORING_SETUP_SQE128: u32 = 1 << 10;
const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
const IORING_OP_POLL_ADD: u8 = 6;
const IORING_OP_URING_CMD: u8 = 46;
thread_local! {
    /// Set on each ring's own thread.
    static ON_RING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True on a thread serving a FUSE ring.
pub fn on_ring() -> bool {
    ON_RING.with(|c| c.get())
}

/// The completion of the poll on a queue's wake-up eventfd.
const WAKE: u64 = u64::MAX;
const SQE_SIZE: usize = 128;
const CQE_SIZE: usize = 16;

/// The kernel's queue count: one per possible CPU (`num_possible_cpus()`),
/// the CPUs in `/sys/devices/system/cpu/possible` ("0-3", "0,2-5"). Queue
/// `q` takes the requests of CPU number `q`.
pub fn possible_cpus() -> std::io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    count_cpus(&text)
        .filter(|n| *n > 0)
        .ok_or_else(|| std::io::Error::other(format!("cannot read the CPU list {text:?}")))
}

fn count_cpus(text: &str) -> Option<usize> {
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

/// A mapping of the ring's memory, unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(fd: RawFd, len: usize, offset: i64) -> std::io::Result<Map> {
        // SAFETY: a fresh shared mapping of the ring's own fd; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The `u32` the kernel shares at `off` (a ring's head, tail, mask).
    fn u32_at(&self, off: u32) -> &AtomicU32 {
        assert!(off as usize + 4 <= self.len);
        // SAFETY: inside the mapping, 4-aligned (the kernel's offsets are).
        unsafe { &*self.ptr.add(off as usize).cast::<AtomicU32>() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One io_uring instance with 128-byte submission entries.
struct Ring {
    fd: OwnedFd,
    sq: Map,
    cq: Map,
    sqes: Map,
    p: Params,
    /// Submissions (the tail and the entries) are made under this lock,
    /// from the ring's thread and from whichever thread answers.
    submit: Mutex<()>,
}

// SAFETY: the shared memory is reached only through atomics (heads and
// tails) and under `submit` (submission entries), or by the one thread
// that reaps completions.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Ring {
    fn new(entries: u32) -> std::io::Result<Ring> {
        let mut p = Params {
            flags: IORING_SETUP_SQE128,
            ..Params::default()
        };
        // SAFETY: io_uring_setup fills `p`, which outlives the call.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, entries, &mut p as *mut Params) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let raw = fd.as_raw_fd();
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * CQE_SIZE;
        let sq = Map::new(raw, sq_len, IORING_OFF_SQ_RING)?;
        let cq = Map::new(raw, cq_len, IORING_OFF_CQ_RING)?;
        let sqes = Map::new(raw, p.sq_entries as usize * SQE_SIZE, IORING_OFF_SQES)?;
        Ok(Ring {
            fd,
            sq,
            cq,
            sqes,
            p,
            submit: Mutex::new(()),
        })
    }

    /// Queues one `URING_CMD` for the FUSE device (submitted by the next
    /// `enter`). `addr` is the entry's iovec pair (registration only).
    fn push_cmd(&self, fuse: RawFd, cmd: u32, index: u64, qid: u16, commit_id: u64, addr: u64) {
        let mut sqe = [0u8; SQE_SIZE];
        sqe[0] = IORING_OP_URING_CMD;
        sqe[4..8].copy_from_slice(&fuse.to_ne_bytes());
        sqe[8..12].copy_from_slice(&cmd.to_ne_bytes()); // cmd_op
        sqe[16..24].copy_from_slice(&addr.to_ne_bytes());
        if addr != 0 {
            sqe[24..28].copy_from_slice(&2u32.to_ne_bytes()); // two iovecs
        }
        sqe[32..40].copy_from_slice(&index.to_ne_bytes()); // user_data
        // The command (fuse_uring_cmd_req): flags, commit id, queue.
        sqe[56..64].copy_from_slice(&commit_id.to_ne_bytes());
        sqe[64..66].copy_from_slice(&qid.to_ne_bytes());
        self.push(&sqe);
    }

    /// Queues a one-shot poll for input on `fd`, completing as `data`.
    fn push_poll(&self, fd: RawFd, data: u64) {
        let mut sqe = [0u8; SQE_SIZE];
        sqe[0] = IORING_OP_POLL_ADD;
        sqe[4..8].copy_from_slice(&fd.to_ne_bytes());
        sqe[28..32].copy_from_slice(&(libc::POLLIN as u32).to_ne_bytes()); // poll32_events
        sqe[32..40].copy_from_slice(&data.to_ne_bytes());
        self.push(&sqe);
    }

    /// Queues a submission entry (only the queue's own thread does).
    fn push(&self, sqe: &[u8; SQE_SIZE]) {
        let _g = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        let tail_a = self.sq.u32_at(self.p.sq_off.tail);
        let head = self.sq.u32_at(self.p.sq_off.head).load(Ordering::Acquire);
        let tail = tail_a.load(Ordering::Relaxed);
        // At most DEPTH commands and one poll are ever queued at once, and
        // the ring has room for twice as many.
        assert!(tail.wrapping_sub(head) < self.p.sq_entries);
        let mask = self
            .sq
            .u32_at(self.p.sq_off.ring_mask)
            .load(Ordering::Relaxed);
        let i = tail & mask;
        // SAFETY: entry `i` of the mapped array, not in the kernel's hands
        // (between head and tail only once the tail moves, below).
        unsafe {
            std::ptr::copy_nonoverlapping(
                sqe.as_ptr(),
                self.sqes.ptr.add(i as usize * SQE_SIZE),
                SQE_SIZE,
            );
            let array = self.sq.ptr.add(self.p.sq_off.array as usize).cast::<u32>();
            array.add(i as usize).write_volatile(i);
        }
        tail_a.store(tail.wrapping_add(1), Ordering::Release);
    }

    /// Submits what is queued and, with `wait`, waits up to `timeout` for a
    /// completion.
    fn enter(&self, wait: bool, timeout: Duration) -> std::io::Result<()> {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        #[repr(C)]
        struct GetEventsArg {
            sigmask: u64,
            sigmask_sz: u32,
            min_wait_usec: u32,
            ts: u64,
        }
        let ts = Timespec {
            sec: timeout.as_secs() as i64,
            nsec: timeout.subsec_nanos() as i64,
        };
        let arg = GetEventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: 0,
            ts: &ts as *const Timespec as u64,
        };
        let (min, flags) = if wait {
            (1u32, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG)
        } else {
            (0, IORING_ENTER_EXT_ARG)
        };
        // Exactly what is queued: asked for more, the kernel submits what
        // there is and then returns without waiting.
        let queued = {
            let _g = self.submit.lock().unwrap_or_else(|p| p.into_inner());
            let head = self.sq.u32_at(self.p.sq_off.head).load(Ordering::Acquire);
            let tail = self.sq.u32_at(self.p.sq_off.tail).load(Ordering::Relaxed);
            tail.wrapping_sub(head)
        };
        // SAFETY: `arg` and `ts` outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd.as_raw_fd(),
                queued,
                min,
                flags,
                &arg as *const GetEventsArg,
                std::mem::size_of::<GetEventsArg>(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) => return Ok(()),
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// The completions waiting: (user data, result), reaped.
    fn reap(&self, out: &mut Vec<(u64, i32)>) {
        let head_a = self.cq.u32_at(self.p.cq_off.head);
        let tail = self.cq.u32_at(self.p.cq_off.tail).load(Ordering::Acquire);
        let mask = self
            .cq
            .u32_at(self.p.cq_off.ring_mask)
            .load(Ordering::Relaxed);
        let mut head = head_a.load(Ordering::Relaxed);
        while head != tail {
            let off = self.p.cq_off.cqes as usize + (head & mask) as usize * CQE_SIZE;
            assert!(off + CQE_SIZE <= self.cq.len);
            // SAFETY: a completion the kernel published (before `tail`).
            let (data, res) = unsafe {
                let c = self.cq.ptr.add(off);
                (
                    c.cast::<u64>().read_volatile(),
                    c.add(8).cast::<i32>().read_volatile(),
                )
            };
            out.push((data, res));
            head = head.wrapping_add(1);
        }
        head_a.store(head, Ordering::Release);
    }
}

/// One entry's memory: the header buffer, and the payload buffer with
/// `PREFIX` bytes in front of it. 8-aligned (`u64`s).
struct Entry {
    headers: Box<[u64]>,
    buf: Box<[u64]>,
    iov: [libc::iovec; 2],
}

impl Entry {
    fn new(payload: usize) -> Entry {
        let mut headers = vec![0u64; HEADERS / 8].into_boxed_slice();
        let mut buf = vec![0u64; (PREFIX + payload).div_ceil(8)].into_boxed_slice();
        let iov = [
            libc::iovec {
                iov_base: headers.as_mut_ptr().cast(),
                iov_len: HEADERS,
            },
            libc::iovec {
                // SAFETY: PREFIX bytes into the buffer, payload bytes left.
                iov_base: unsafe { buf.as_mut_ptr().cast::<u8>().add(PREFIX).cast() },
                iov_len: payload,
            },
        ];
        Entry { headers, buf, iov }
    }

    fn headers(&self) -> *mut u8 {
        self.headers.as_ptr() as *mut u8
    }

    fn buf(&self) -> *mut u8 {
        self.buf.as_ptr() as *mut u8
    }
}

/// A queue's ring and its entries, shared by its thread and the replies.
struct Queue {
    qid: u16,
    fuse: RawFd,
    ring: Ring,
    entries: Vec<Entry>,
    payload: usize,
    /// The thread of this queue (a reply sent by it is submitted with its
    /// next wait, not by a system call of its own).
    owner: std::sync::OnceLock<std::thread::ThreadId>,
    /// Requests this queue served.
    served: AtomicU64,
    /// Answers written by other threads (`Waiters`), to commit: entry and
    /// commit id. Only the queue's own thread submits to its ring: a
    /// command submitted by another thread completes through that thread's
    /// task work, and the ring's thread then found its wait for
    /// completions ending at once, again and again.
    handed: Mutex<Vec<(usize, u64)>>,
    /// Written when `handed` gets an answer; polled on the ring.
    wake: OwnedFd,
}

// SAFETY: an entry's buffers are written by the kernel only while the
// entry is the kernel's (registered or committed, until its completion),
// and by the one thread that serves its request otherwise.
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

impl Queue {
    /// Queues entry `i`'s answer and the fetch of its next request.
    fn commit(&self, i: usize, commit_id: u64) {
        self.ring.push_cmd(
            self.fuse,
            CMD_COMMIT_AND_FETCH,
            i as u64,
            self.qid,
            commit_id,
            0,
        );
    }

    /// Commits the answers other threads handed over, and re-arms the poll
    /// on the wake-up eventfd once it fired.
    fn take_handed(&self, rearm: bool) {
        if rearm {
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer (non-blocking; the
            // counter may be zero if an earlier pass took everything).
            unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        }
        let handed = std::mem::take(&mut *self.handed.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, commit_id) in handed {
            self.commit(i, commit_id);
        }
        if rearm {
            self.ring.push_poll(self.wake.as_raw_fd(), WAKE);
        }
    }
}

impl Drop for Queue {
    /// The entries' buffers are not freed: the kernel may still be
    /// tearing the ring down (closing its descriptor cancels the entries
    /// asynchronously). A queue goes only as the mount ends.
    fn drop(&mut self) {
        std::mem::forget(std::mem::take(&mut self.entries));
    }
}

/// The reply to one request on one entry.
#[derive(Debug)]
struct Answer {
    queue: Arc<QueueRef>,
    index: usize,
    commit_id: u64,
    /// The request's id (an answer that is not fuser's carries it).
    unique: u64,
    sent: AtomicBool,
}

/// `Queue` behind an `Arc`, with a `Debug` for fuser's sender trait.
struct QueueRef(Queue);

impl std::fmt::Debug for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "queue {}", self.0.qid)
    }
}

impl ExternalSender for Answer {
    fn send(&self, data: &[IoSlice<'_>]) -> std::io::Result<()> {
        if self.sent.swap(true, Ordering::AcqRel) {
            return Err(std::io::Error::other("a request answered twice"));
        }
        let q = &self.queue.0;
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total < OUT_HEADER || total - OUT_HEADER > q.payload {
            // Not an answer the entry can carry: the request fails (EIO)
            // rather than keep its entry, and its caller, waiting.
            tracing::error!(
                queue = q.qid,
                bytes = total,
                "a FUSE answer does not fit its ring entry"
            );
            let h = error_header(libc::EIO, self.unique);
            self.place(&[IoSlice::new(&h)], OUT_HEADER);
            let _ = self.hand_over();
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.place(data, total);
        self.hand_over()
    }
}

impl Answer {
    /// Writes an answer of `total` bytes (checked to fit) into the entry:
    /// the fuse_out_header into `in_out`, the rest into the payload buffer,
    /// in order.
    fn place(&self, data: &[IoSlice<'_>], total: usize) {
        let q = &self.queue.0;
        let e = &q.entries[self.index];
        let mut header = [0u8; OUT_HEADER];
        let mut at = 0usize;
        // SAFETY: the entry is ours until it is handed over; `total` fits.
        unsafe {
            let payload = e.buf().add(PREFIX);
            for d in data {
                let mut s: &[u8] = d;
                while !s.is_empty() {
                    if at < OUT_HEADER {
                        let n = s.len().min(OUT_HEADER - at);
                        header[at..at + n].copy_from_slice(&s[..n]);
                        at += n;
                        s = &s[n..];
                    } else {
                        std::ptr::copy_nonoverlapping(
                            s.as_ptr(),
                            payload.add(at - OUT_HEADER),
                            s.len(),
                        );
                        at += s.len();
                        s = &[];
                    }
                }
            }
            std::ptr::copy_nonoverlapping(header.as_ptr(), e.headers(), OUT_HEADER);
            e.headers()
                .add(ENT_PAYLOAD_SZ)
                .cast::<u32>()
                .write_unaligned((total - OUT_HEADER) as u32);
        }
    }

    /// Gives the entry, its answer written, back to the kernel: directly on
    /// the queue's own thread, else through that thread.
    fn hand_over(&self) -> std::io::Result<()> {
        let q = &self.queue.0;
        if q.owner.get() == Some(&std::thread::current().id()) {
            // Submitted with the thread's next wait.
            q.commit(self.index, self.commit_id);
            return Ok(());
        }
        q.handed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.index, self.commit_id));
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes from a live buffer to an eventfd.
        if unsafe { libc::write(q.wake.as_raw_fd(), one.as_ptr().cast(), 8) } < 0 {
            let e = std::io::Error::last_os_error();
            // EAGAIN: the counter is full, so the thread is woken anyway.
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for Answer {
    /// A request fuser did not answer (only FORGET has no reply, and it
    /// never comes on a ring; on a ring every request must be committed to
    /// give its entry back): EIO.
    fn drop(&mut self) {
        if !self.sent.load(Ordering::Acquire) {
            let _ = fail(self, libc::EIO);
        }
    }
}

/// Hands the queues' threads the dispatcher once fuser runs the session;
/// dropped without it (the mount gave up), the threads end.
pub struct Give<FS: Filesystem> {
    start: Option<Start<FS>>,
}

impl<FS: Filesystem> Give<FS> {
    pub fn give(mut self, d: Dispatcher<FS>) {
        if let Some(start) = self.start.take() {
            set_go(&start, Go::Serve(d));
        }
    }
}

impl<FS: Filesystem> Drop for Give<FS> {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            set_go(&start, Go::Cancel);
        }
    }
}

fn set_go<FS: Filesystem>(start: &Start<FS>, go: Go<FS>) {
    let (slot, cv) = &**start;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = go;
    cv.notify_all();
}

/// The rings of a mount, registered and served by one pinned thread each.
pub struct Rings {
    threads: Vec<JoinHandle<()>>,
}

/// What a queue's thread needs before it serves: the dispatcher, given once
/// fuser runs the session.
type Start<FS> = Arc<(Mutex<Go<FS>>, std::sync::Condvar)>;

enum Go<FS: Filesystem> {
    Wait,
    Serve(Dispatcher<FS>),
    /// The mount gave up (a queue could not register): the threads end.
    Cancel,
}

impl Rings {
    /// Registers `DEPTH` entries on every queue of the connection on
    /// `fuse` (the session's device) for payloads of `payload` bytes, and
    /// starts each queue's thread; the function returned gives them the
    /// dispatcher. The kernel serves requests over the rings once every
    /// queue has entries.
    /// `dead` is called if a queue's thread ends while the connection
    /// lives (an io_uring error; a panic stops the whole daemon, see
    /// `main`): that CPU's requests would wait
    /// forever, so the caller ends the connection.
    pub fn register<FS: Filesystem>(
        fuse: BorrowedFd<'_>,
        payload: usize,
        dead: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<(Rings, Give<FS>)> {
        let n = possible_cpus()?;
        if n > u16::MAX as usize {
            return Err(std::io::Error::other("too many CPUs"));
        }
        let start: Start<FS> = Arc::new((Mutex::new(Go::Wait), std::sync::Condvar::new()));
        let registered = Arc::new(AtomicUsize::new(0));
        let failed: Arc<Mutex<Option<std::io::Error>>> = Arc::new(Mutex::new(None));
        let cancel = |start: &Start<FS>| set_go(start, Go::Cancel);
        let mut threads = Vec::with_capacity(n);
        for cpu in 0..n {
            let made = (|| -> std::io::Result<JoinHandle<()>> {
                let queue = Queue {
                    qid: cpu as u16,
                    fuse: fuse.as_raw_fd(),
                    ring: Ring::new((DEPTH * 2) as u32)?,
                    entries: (0..DEPTH).map(|_| Entry::new(payload)).collect(),
                    payload,
                    owner: std::sync::OnceLock::new(),
                    served: AtomicU64::new(0),
                    handed: Mutex::new(Vec::new()),
                    wake: eventfd()?,
                };
                let queue = Arc::new(QueueRef(queue));
                let (start, registered, failed, dead) = (
                    start.clone(),
                    registered.clone(),
                    failed.clone(),
                    dead.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("fuse-ring-{cpu}"))
                    .spawn(move || serve_queue(queue, cpu, start, registered, failed, dead))
            })();
            match made {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The queues already started end.
                    cancel(&start);
                    return Err(e);
                }
            }
        }
        // Registration is a submission per entry; a refusal completes at
        // once with an error.
        let deadline = Instant::now() + Duration::from_secs(5);
        while registered.load(Ordering::Acquire) < n && Instant::now() < deadline {
            if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        let error = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = error {
            cancel(&start);
            return Err(e);
        }
        if registered.load(Ordering::Acquire) < n {
            cancel(&start);
            return Err(std::io::Error::other("the rings did not register in 5 s"));
        }
        Ok((Rings { threads }, Give { start: Some(start) }))
    }

    /// The queues' threads, for the session to join once the connection
    /// ends (each ends when its entries are all given back by the kernel).
    pub fn into_threads(self) -> Vec<JoinHandle<()>> {
        self.threads
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned from here.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays in bounds
    // for any cpu below CPU_SETSIZE, which is checked.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        // A possible CPU that is not online refuses: the thread then runs
        // anywhere (its queue only gets requests if the CPU comes online).
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn serve_queue<FS: Filesystem>(
    queue: Arc<QueueRef>,
    cpu: usize,
    start: Start<FS>,
    registered: Arc<AtomicUsize>,
    failed: Arc<Mutex<Option<std::io::Error>>>,
    dead: Arc<dyn Fn() + Send + Sync>,
) {
    pin_to(cpu);
    let q = &queue.0;
    let _ = q.owner.set(std::thread::current().id());
    ON_RING.with(|c| c.set(true));
    for (i, e) in q.entries.iter().enumerate() {
        q.ring.push_cmd(
            q.fuse,
            CMD_REGISTER,
            i as u64,
            q.qid,
            0,
            e.iov.as_ptr() as u64,
        );
    }
    q.ring.push_poll(q.wake.as_raw_fd(), WAKE);
    let mut done = Vec::new();
    if let Err(e) = q.ring.enter(false, Duration::ZERO) {
        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        return;
    }
    q.ring.reap(&mut done);
    if let Some((_, res)) = done.iter().find(|(_, r)| *r < 0) {
        *failed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::io::Error::from_raw_os_error(-res));
        return;
    }
    registered.fetch_add(1, Ordering::AcqRel);
    let dispatcher = {
        let (slot, cv) = &*start;
        let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*g {
                Go::Serve(d) => break d.clone(),
                Go::Cancel => return,
                Go::Wait => {}
            }
            let (ng, _) = cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            g = ng;
        }
    };
    drop(start);
    let mut watch = Watch {
        q,
        ended: false,
        dispatcher: &dispatcher,
        dead,
    };
    let mut gone = vec![false; q.entries.len()];
    let mut pending = done;
    loop {
        let mut woken = false;
        for (data, res) in pending.drain(..) {
            if data == WAKE {
                woken = true;
                continue;
            }
            let i = data as usize;
            if i >= q.entries.len() {
                continue;
            }
            if res < 0 {
                // The connection ends (ENOTCONN, ECONNABORTED after an
                // abort) or the entry was refused.
                if ![libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&-res) {
                    tracing::warn!(queue = q.qid, error = %std::io::Error::from_raw_os_error(-res), "a FUSE ring entry failed");
                }
                gone[i] = true;
                continue;
            }
            match test_fault_due() {
                Some(TestFault::Stop) => {
                    tracing::error!(queue = q.qid, "LOCKER_TEST_RING_FAULT: the ring stops");
                    return;
                }
                Some(TestFault::Panic) => panic!("LOCKER_TEST_RING_FAULT: a ring's thread panics"),
                None => serve_entry(&queue, i, &dispatcher),
            }
        }
        q.take_handed(woken);
        if gone.iter().all(|g| *g) {
            watch.ended = true;
            return;
        }
        if let Err(e) = q.ring.enter(true, Duration::from_secs(1)) {
            tracing::error!(queue = q.qid, error = %e, "a FUSE ring failed");
            return;
        }
        q.ring.reap(&mut pending);
        if pending.is_empty() && dispatcher.connection_ended() {
            // The device says the connection is gone: nothing more comes.
            // An answer still being worked on only lands in `handed` (the
            // entries outlive the queue), and closing the ring (when this
            // thread returns) takes back what the kernel has not.
            watch.ended = true;
            return;
        }
    }
}

/// Says, as a queue's thread ends, how many requests it served; and if
/// it ends while the connection lives (an io_uring error), calls `dead`:
/// that CPU's requests would wait forever.
struct Watch<'a, FS: Filesystem> {
    q: &'a Queue,
    ended: bool,
    dispatcher: &'a Dispatcher<FS>,
    dead: Arc<dyn Fn() + Send + Sync>,
}

impl<FS: Filesystem> Drop for Watch<'_, FS> {
    fn drop(&mut self) {
        tracing::info!(
            queue = self.q.qid,
            requests = self.q.served.load(Ordering::Relaxed),
            "a FUSE ring ends"
        );
        if !self.ended && !self.dispatcher.connection_ended() {
            tracing::error!(
                queue = self.q.qid,
                "a FUSE ring stopped while the mount is in use; ending the mount"
            );
            (self.dead)();
        }
    }
}

/// What a test (tests/mounting.rs) makes a ring's thread do.
#[derive(Clone, Copy)]
enum TestFault {
    /// Stop serving, as an io_uring error stops it.
    Stop,
    /// Panic, as a bug in a request's handler would.
    Panic,
}

/// A test hook: with `LOCKER_TEST_RING_FAULT=stop:N` (or `panic:N`) in the
/// daemon's environment, the ring thread that takes the request after the
/// first N stops (or panics) before serving it.
fn test_fault_due() -> Option<TestFault> {
    static FAULT: std::sync::OnceLock<Option<(TestFault, u64)>> = std::sync::OnceLock::new();
    static TAKEN: AtomicU64 = AtomicU64::new(0);
    let fault = FAULT.get_or_init(|| {
        let v = std::env::var("LOCKER_TEST_RING_FAULT").ok()?;
        let (kind, after) = v.split_once(':')?;
        let kind = match kind {
            "stop" => TestFault::Stop,
            "panic" => TestFault::Panic,
            _ => return None,
        };
        Some((kind, after.parse().ok()?))
    });
    let (kind, after) = (*fault)?;
    (TAKEN.fetch_add(1, Ordering::Relaxed) == after).then_some(kind)
}

/// Rebuilds entry `i`'s request as the device gives it, in front of its
/// payload, and dispatches it.
fn serve_entry<FS: Filesystem>(queue: &Arc<QueueRef>, i: usize, dispatcher: &Dispatcher<FS>) {
    let q = &queue.0;
    let e = &q.entries[i];
    // SAFETY: the completion gave the entry to this thread; every read is
    // within the header buffer, and the copies stay inside `buf` (the
    // request's length is checked against what the buffers hold).
    let (slice, commit_id, unique) = unsafe {
        let h = e.headers();
        let mut in_header = [0u8; IN_HEADER];
        std::ptr::copy_nonoverlapping(h, in_header.as_mut_ptr(), IN_HEADER);
        let len = u32::from_ne_bytes(in_header[0..4].try_into().unwrap()) as usize;
        let unique = u64::from_ne_bytes(in_header[8..16].try_into().unwrap());
        let commit_id = h.add(ENT_COMMIT_ID).cast::<u64>().read_unaligned();
        let payload_sz = h.add(ENT_PAYLOAD_SZ).cast::<u32>().read_unaligned() as usize;
        // The header's length counts every argument: what is not in the
        // payload is the first argument, in `op_in`.
        let op = len.checked_sub(IN_HEADER + payload_sz);
        match op {
            Some(op) if op <= OP_IN && payload_sz <= q.payload => {
                let start = PREFIX - op - IN_HEADER;
                let b = e.buf();
                std::ptr::copy_nonoverlapping(in_header.as_ptr(), b.add(start), IN_HEADER);
                std::ptr::copy_nonoverlapping(h.add(128), b.add(start + IN_HEADER), op);
                (
                    Some(std::slice::from_raw_parts(b.add(start), len)),
                    commit_id,
                    unique,
                )
            }
            _ => (None, commit_id, unique),
        }
    };
    q.served.fetch_add(1, Ordering::Relaxed);
    let answer = Arc::new(Answer {
        queue: queue.clone(),
        index: i,
        commit_id,
        unique,
        sent: AtomicBool::new(false),
    });
    // fuser reads the arguments in place and wants them 8-aligned, as the
    // device's buffer is; an operation header of another size (none today)
    // is served from an aligned copy.
    let copy: Vec<u64>;
    let slice = match slice {
        Some(s) if !(s.as_ptr() as usize).is_multiple_of(8) => {
            let mut v = vec![0u64; s.len().div_ceil(8)];
            // SAFETY: `v` holds at least s.len() bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(s.as_ptr(), v.as_mut_ptr().cast::<u8>(), s.len())
            };
            copy = v;
            // SAFETY: the bytes just copied.
            Some(unsafe { std::slice::from_raw_parts(copy.as_ptr().cast::<u8>(), s.len()) })
        }
        s => s,
    };
    match slice {
        Some(s) => {
            if !dispatcher.dispatch(s, answer.clone()) {
                tracing::warn!(queue = q.qid, "a request on a FUSE ring could not be read");
                let _ = fail(&answer, libc::EIO);
            }
        }
        None => {
            tracing::warn!(
                queue = q.qid,
                "a request on a FUSE ring has an impossible length"
            );
            let _ = fail(&answer, libc::EIO);
        }
    }
}

fn fail(a: &Answer, errno: i32) -> std::io::Result<()> {
    ExternalSender::send(a, &[IoSlice::new(&error_header(errno, a.unique))])
}

/// A fuse_out_header that fails request `unique` with `errno`.
fn error_header(errno: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[0..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_possible_cpus_are_counted_from_every_form_of_the_list() {
        assert_eq!(count_cpus("0\n"), Some(1));
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0,2-5"), Some(5));
        assert_eq!(count_cpus("0-3,8-11\n"), Some(8));
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("x"), None);
        assert_eq!(count_cpus("3-1"), None);
    }
}
