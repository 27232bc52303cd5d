//! FUSE glue: each callback translates its arguments, makes one core call
//! and replies exactly once. No filesystem logic lives here. Core errors
//! become errno values in one place, `errno_of`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::blocks::BLOCK_SIZE;
use crate::core::{
    AtimePolicy, Attr, Caller, CoreError, FileKind, HandleId, InodeNo, Locker, OpenMode,
    RenameMode, SetAttr, TimeSet, Timestamp, XattrMode,
};
use crate::metrics::FuseTimer;

pub mod uring;

/// Over FUSE's rings, a read at least this large is answered by a
/// `Waiters` thread rather than the ring's own. The kernel puts a request
/// on the ring of the CPU its caller runs on, the background reads of its
/// readahead included, and that ring's thread is pinned there: it would
/// read and copy the blocks on the reader's CPU, where the reader waits
/// its turn, while the other CPUs idle. A `Waiters` thread runs where the
/// scheduler finds room, so the reader consumes one range while the next
/// is read. Measured (1 GiB read cold with `dd bs=1M`, idle CPUs, three
/// rounds): 733-1,018 MiB/s on the ring's thread, 1,145-1,250 handed
/// over, against 1,160-1,407 over `/dev/fuse`. Smaller reads (a random
/// reader's 4 KiB) stay on the ring's thread: handed over too, cold
/// random 4 KiB reads fell from 7,835-8,354 to 5,692-6,340 IOPS.
const RING_READ_ELSEWHERE: u32 = 64 * 1024;

/// How long the kernel may cache attributes and names. The kernel updates
/// or drops what its own calls change, and every change made behind its
/// back (by the HTTP API, or from a backend) tells it what went stale
/// (`Locker::set_invalidator`), so a long time is safe; it saves a
/// LOOKUP or GETATTR round trip for each name a program touches again.
const TTL: Duration = Duration::from_secs(60);

pub struct LockerFs {
    core: Arc<Locker>,
    map: InoMap,
    atime: AtimePolicy,
    waiters: Waiters,
    /// The kernel enforces POSIX ACLs (`FUSE_POSIX_ACL` was granted).
    acl: bool,
    /// The kernel's writeback cache is wanted (`[mount] writeback_cache`);
    /// `writeback` says whether the kernel granted it.
    want_writeback: bool,
    writeback: bool,
    /// The kernel leaves dropping set-user-ID and set-group-ID on write,
    /// truncate and chown to LOCKER (`FUSE_HANDLE_KILLPRIV_V2` was
    /// granted). It then skips asking for `security.capability` before
    /// each write once it knows the file has none: a write is one round
    /// trip, not two.
    killpriv: bool,
    /// FUSE over io_uring is wanted (`[mount] io_uring`); `uring` says
    /// whether the kernel granted it (then the rings must be registered,
    /// `uring::Rings`, or every request waits).
    want_uring: bool,
    uring: Arc<std::sync::atomic::AtomicBool>,
}

impl LockerFs {
    /// `wait_threads` serve the requests that may wait (see `Waiters`);
    /// `map` says which directory is the mount's root; `atime` when
    /// reading moves a file's access time; `writeback` asks the kernel for
    /// its writeback cache; `uring`, if given, asks for FUSE over io_uring
    /// and is set when the kernel grants it.
    pub fn new(
        core: Arc<Locker>,
        map: InoMap,
        atime: AtimePolicy,
        wait_threads: usize,
        writeback: bool,
        uring: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> LockerFs {
        LockerFs {
            want_uring: uring.is_some(),
            uring: uring.unwrap_or_default(),
            core,
            map,
            atime,
            waiters: Waiters::start(wait_threads.max(1)),
            acl: false,
            want_writeback: writeback,
            writeback: false,
            killpriv: false,
        }
    }

    /// How a file opened with `flags` is written. With the writeback cache
    /// the kernel places appended data itself (at its own idea of the
    /// end of the file) and sends writes at explicit offsets, also through
    /// a handle opened O_APPEND.
    fn open_mode(&self, flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0 && !self.writeback,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }

    fn ino(&self, i: INodeNo) -> InodeNo {
        self.map.to_core(i.0)
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        file_attr(a, self.map.to_kernel(a.ino))
    }
}

/// Between the kernel's inode numbers and the core's. The kernel calls the
/// mount's root inode 1; a mount of one folder (`--namespace ns/dir`) has
/// that folder at its root, so the folder's inode and the store's root
/// swap numbers. The store's root is above the folder, so it never shows
/// through such a mount; every other inode keeps its number.
#[derive(Debug, Clone, Copy)]
pub struct InoMap {
    root: InodeNo,
}

impl InoMap {
    /// The mount shows the tree below `root` (`InodeNo::ROOT`: all of it).
    pub fn new(root: InodeNo) -> InoMap {
        InoMap { root }
    }

    pub fn to_core(&self, k: u64) -> InodeNo {
        if k == InodeNo::ROOT.0 {
            self.root
        } else if k == self.root.0 {
            InodeNo::ROOT
        } else {
            InodeNo(k)
        }
    }

    pub fn to_kernel(&self, c: InodeNo) -> INodeNo {
        INodeNo(if c == self.root {
            InodeNo::ROOT.0
        } else if c == InodeNo::ROOT {
            self.root.0
        } else {
            c.0
        })
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads for the requests that may wait on a backend or the disk: a read
/// that must fetch, an open or truncate that fetches, fsync, a write held
/// back for cache space, a content hash. The mount reads the FUSE device
/// with one thread, which serves everything else itself: a second reader
/// thread made each request wake whichever thread had waited longest, on
/// whichever CPU it last ran, and cost a third of the speed of small-file
/// work (create, stat, rename, unlink); with one, requests never queue
/// behind a slow one either, since those come here.
struct Waiters {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Waiters {
    fn start(n: usize) -> Waiters {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-wait-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a thread for slow requests");
            }
        }
        Waiters { tx }
    }

    /// Runs `job` on a waiting thread. If none can take it (only while the
    /// mount is going away), its reply is dropped, which answers EIO.
    fn run(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.tx.send(Box::new(job));
    }
}

/// The errno for each core error. Exhaustive on purpose: a new variant must
/// be given its errno here.
pub fn errno_of(e: &CoreError) -> Errno {
    match e {
        CoreError::NotFound => Errno::ENOENT,
        CoreError::Exists => Errno::EEXIST,
        CoreError::NotDir => Errno::ENOTDIR,
        CoreError::IsDir => Errno::EISDIR,
        CoreError::NotEmpty => Errno::ENOTEMPTY,
        CoreError::NameTooLong => Errno::from_i32(libc::ENAMETOOLONG),
        CoreError::Invalid(_) => Errno::EINVAL,
        CoreError::NotPermitted(_) => Errno::EPERM,
        CoreError::NoAttr => Errno::from_i32(libc::ENODATA),
        CoreError::Range => Errno::from_i32(libc::ERANGE),
        CoreError::TooBig => Errno::E2BIG,
        CoreError::NotSupported(_) => Errno::from_i32(libc::EOPNOTSUPP),
        CoreError::BadHandle => Errno::EBADF,
        CoreError::FileTooLarge => Errno::EFBIG,
        e if e.is_no_space() => Errno::ENOSPC,
        CoreError::NoSpace => Errno::ENOSPC,
        CoreError::Io(_) => Errno::EIO,
        CoreError::Meta(_) => Errno::EIO,
        CoreError::Corrupt(_) => Errno::EIO,
        // (The API's alone: no mount operation carries a precondition.)
        CoreError::PreconditionFailed => Errno::EIO,
    }
}

fn fail(op: &'static str, e: CoreError) -> Errno {
    crate::metrics::fuse_error(op);
    if e.is_expected() {
        tracing::debug!(op, error = %e);
    } else {
        tracing::error!(op, error = %e, "filesystem operation failed");
    }
    errno_of(&e)
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr, ino: INodeNo) -> FileAttr {
    FileAttr {
        ino,
        size: a.size,
        // A file's holes take no space; other kinds count their size.
        blocks: if a.kind == FileKind::File {
            a.alloc.div_ceil(512)
        } else {
            a.size.div_ceil(512)
        },
        atime: a.atime.to_system(),
        mtime: a.mtime.to_system(),
        ctime: a.ctime.to_system(),
        crtime: a.crtime.to_system(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        // Programs such as cp size their buffers by st_blksize: one block
        // per write lets the core store it straight from the request.
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

fn fh(h: FileHandle) -> HandleId {
    HandleId(h.0)
}

/// `fuse_open_in.open_flags`: an `O_TRUNC` open must drop set-user-ID and
/// set-group-ID (`FUSE_HANDLE_KILLPRIV_V2`).
const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from_system(t)),
    }
}

fn reply_xattr_bytes(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl Filesystem for LockerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(BLOCK_SIZE as u32);
        let _ = config.set_max_readahead(BLOCK_SIZE as u32);
        let _ = config.set_max_background(64);
        // POSIX ACLs: the kernel checks and caches them; the umask comes
        // with each creation so a parent's default ACL can replace it.
        self.acl = config
            .add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK)
            .is_ok();
        if !self.acl {
            tracing::warn!("the kernel does not offer POSIX ACLs: system.posix_acl_* is refused");
        }
        self.killpriv = config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_ok();
        // An O_TRUNC open arrives with O_TRUNC (see `open_with`), rather
        // than as an open followed by a truncate, which made a write open
        // of a file only in a backend download it before emptying it.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        if self.want_writeback {
            self.writeback = config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
            if !self.writeback {
                tracing::warn!("the kernel does not offer its writeback cache: writes go through");
            }
        }
        if self.want_uring {
            if config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
            {
                self.uring.store(true, std::sync::atomic::Ordering::Release);
            } else {
                tracing::warn!(
                    param = uring::PARAM,
                    "the kernel does not offer FUSE over io_uring: requests go through /dev/fuse"
                );
            }
        }
        tracing::info!("mounted");
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::info!("kernel closed the session");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = FuseTimer::start("lookup");
        // Nothing above the mount's root shows through it.
        let r = if parent == INodeNo::ROOT && name.as_bytes() == b".." {
            self.core.getattr(self.ino(parent))
        } else {
            self.core.lookup(self.ino(parent), name.as_bytes())
        };
        match r {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("lookup", e)),
        }
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = FuseTimer::start("getattr");
        match self.core.getattr(self.ino(i)) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let t = FuseTimer::start("setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timestamp::from_system),
            // Root stands for a caller with CAP_FSETID, which keeps them
            // on a truncate (the kernel's flag for it is not passed on).
            drop_privs: self.killpriv
                && (uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0)),
        };
        let core = self.core.clone();
        let (i, map, who) = (self.ino(i), self.map, caller(req));
        let run = move || {
            let _t = t;
            match core.setattr_as(i, &set, Some(&who)) {
                Ok(a) => reply.attr(&TTL, &file_attr(&a, map.to_kernel(a.ino))),
                Err(e) => reply.error(fail("setattr", e)),
            }
        };
        if size.is_some() {
            // A truncate keeps blocks of the file, fetched if evicted.
            self.waiters.run(run);
        } else {
            run();
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        let _t = FuseTimer::start("readlink");
        match self.core.readlink(self.ino(i)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(fail("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = FuseTimer::start("mknod");
        let who = Caller {
            umask,
            ..caller(req)
        };
        match self
            .core
            .mknod(&who, self.ino(parent), name.as_bytes(), mode, rdev)
        {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("mknod", e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = FuseTimer::start("mkdir");
        let who = Caller {
            umask,
            ..caller(req)
        };
        match self
            .core
            .mkdir(&who, self.ino(parent), name.as_bytes(), mode)
        {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("mkdir", e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = FuseTimer::start("unlink");
        match self.core.unlink(self.ino(parent), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = FuseTimer::start("rmdir");
        match self.core.rmdir(self.ino(parent), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = FuseTimer::start("symlink");
        match self.core.symlink(
            &caller(req),
            self.ino(parent),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        ) {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("symlink", e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("rename");
        let mode = if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        } else if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return reply.error(Errno::EINVAL);
            }
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        match self.core.rename(
            self.ino(parent),
            name.as_bytes(),
            self.ino(newparent),
            newname.as_bytes(),
            mode,
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = FuseTimer::start("link");
        match self
            .core
            .link(self.ino(i), self.ino(newparent), newname.as_bytes())
        {
            Ok(a) => reply.entry(&TTL, &self.attr(&a), Generation(0)),
            Err(e) => reply.error(fail("link", e)),
        }
    }

    fn open_with(
        &self,
        req: &Request,
        i: INodeNo,
        flags: OpenFlags,
        open_flags: u32,
        reply: ReplyOpen,
    ) {
        let t = FuseTimer::start("open");
        let mut mode = self.open_mode(flags.0);
        // O_TRUNC reaches here only with FUSE_ATOMIC_O_TRUNC, and then the
        // truncation is LOCKER's to do, for any access mode (the kernel
        // checked write permission): to size 0, with new times, dropping
        // set-user-ID and set-group-ID as a truncate does when the kernel
        // says the caller may not keep them. Done before the open,
        // so a write open has nothing to fetch: overwriting a file whose
        // content is only in a backend does not download it first.
        let truncate = mode.truncate.then(|| SetAttr {
            size: Some(0),
            mtime: Some(TimeSet::Now),
            ctime: Some(Timestamp::now()),
            drop_privs: self.killpriv && open_flags & FUSE_OPEN_KILL_SUIDGID != 0,
            ..Default::default()
        });
        mode.truncate = false;
        // Reads are served from the kernel's page cache without reaching
        // here, so the access time moves when a file is opened for reading
        // (what the mount's atime option says).
        let atime = if flags.0 & libc::O_ACCMODE == libc::O_WRONLY {
            AtimePolicy::Never
        } else {
            self.atime
        };
        let core = self.core.clone();
        let i = self.ino(i);
        let fetches = mode.write && truncate.is_none();
        let who = caller(req);
        let run = move || {
            let _t = t;
            if let Some(set) = &truncate
                && let Err(e) = core.setattr_as(i, set, Some(&who))
            {
                return reply.error(fail("open", e));
            }
            match core.open(i, mode) {
                // Every change reaches the file through this mount, so the
                // kernel's page cache stays valid across opens.
                Ok(h) => {
                    if let Err(e) = core.touch_atime(i, atime) {
                        tracing::debug!(error = %e, "access time not updated");
                    }
                    reply.opened(FileHandle(h.0), FopenFlags::FOPEN_KEEP_CACHE)
                }
                Err(e) => reply.error(fail("open", e)),
            }
        };
        if fetches {
            // The file's evicted blocks (or its whole content) are fetched.
            self.waiters.run(run);
        } else {
            run();
        }
    }

    fn read(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t = FuseTimer::start("read");
        // Each answer's buffer goes back to `crate::buf` once sent.
        let cached = if size >= RING_READ_ELSEWHERE && uring::on_ring() {
            Ok(None)
        } else {
            self.core.read_cached(fh(h), offset, size)
        };
        match cached {
            Ok(Some(d)) => {
                reply.data(&d);
                crate::buf::give(d);
            }
            Ok(None) => {
                let core = self.core.clone();
                self.waiters.run(move || {
                    let _t = t;
                    match core.read(fh(h), offset, size) {
                        Ok(d) => {
                            reply.data(&d);
                            crate::buf::give(d);
                        }
                        Err(e) => reply.error(fail("read", e)),
                    }
                });
            }
            Err(e) => reply.error(fail("read", e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let t = FuseTimer::start("write");
        if self.killpriv
            && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.core.drop_privs_as(self.ino(i), &caller(req))
        {
            return reply.error(fail("write", e));
        }
        // With the writeback cache the kernel owns the file's times.
        let write = if self.writeback {
            Locker::write_cached
        } else {
            Locker::write
        };
        if self.core.write_may_wait(data.len() as u64) {
            let core = self.core.clone();
            let data = data.to_vec();
            self.waiters.run(move || {
                let _t = t;
                match write(&core, fh(h), offset, &data) {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(fail("write", e)),
                }
            });
            return;
        }
        match write(&self.core, fh(h), offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("flush");
        match self.core.flush(fh(h)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("release");
        match self.core.release(fh(h)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t = FuseTimer::start("fsync");
        let core = self.core.clone();
        self.waiters.run(move || {
            let _t = t;
            match core.fsync(fh(h)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("fsync", e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = FuseTimer::start("opendir");
        match self.core.opendir(self.ino(i)) {
            Ok(h) => reply.opened(FileHandle(h.0), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = FuseTimer::start("readdir");
        let r = self.core.readdir(fh(h), offset, |e, next| {
            // The mount's root is its own parent, whatever is above it.
            let ino = if i == INodeNo::ROOT && e.name == b".." {
                INodeNo::ROOT
            } else {
                self.map.to_kernel(e.ino)
            };
            reply.add(ino, next, file_type(e.kind), OsStr::from_bytes(&e.name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("releasedir");
        match self.core.releasedir(fh(h)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("releasedir", e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _i: INodeNo,
        _h: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t = FuseTimer::start("fsyncdir");
        let core = self.core.clone();
        self.waiters.run(move || {
            let _t = t;
            match core.fsyncdir() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("fsyncdir", e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        let _t = FuseTimer::start("statfs");
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(fail("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("setxattr");
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let name = name.as_bytes();
        if !self.acl && crate::core::is_acl_name(name) {
            // Stored but not enforced would mislead.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        match self
            .core
            .setxattr_as(self.ino(i), name, value, mode, Some(&caller(req)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", e)),
        }
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let t = FuseTimer::start("getxattr");
        let core = self.core.clone();
        let name = name.as_bytes().to_vec();
        // The content hash may read (and fetch) the whole file.
        let slow = name == crate::core::XATTR_SHA256;
        let i = self.ino(i);
        let run = move || {
            let _t = t;
            match core.getxattr(i, &name) {
                Ok(v) => reply_xattr_bytes(reply, size, &v),
                Err(e) => reply.error(fail("getxattr", e)),
            }
        };
        if slow {
            self.waiters.run(run);
        } else {
            run();
        }
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = FuseTimer::start("listxattr");
        match self.core.listxattr(self.ino(i)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr_bytes(reply, size, &buf)
            }
            Err(e) => reply.error(fail("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = FuseTimer::start("removexattr");
        match self.core.removexattr(self.ino(i), name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("removexattr", e)),
        }
    }

    fn access(&self, _req: &Request, i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _t = FuseTimer::start("access");
        // Permission checks are the kernel's (default_permissions); this
        // only confirms the inode exists.
        match self.core.getattr(self.ino(i)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = FuseTimer::start("create");
        let who = Caller {
            umask,
            ..caller(req)
        };
        match self.core.create(
            &who,
            self.ino(parent),
            name.as_bytes(),
            mode,
            self.open_mode(flags),
        ) {
            Ok((a, h)) => reply.created(
                &TTL,
                &self.attr(&a),
                Generation(0),
                FileHandle(h.0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(fail("create", e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = FuseTimer::start("fallocate");
        let keep_size = match mode {
            0 => false,
            libc::FALLOC_FL_KEEP_SIZE => true,
            _ => return reply.error(Errno::from_i32(libc::EOPNOTSUPP)),
        };
        // As a write does; the kernel asks nothing of it with
        // FUSE_HANDLE_KILLPRIV_V2 (root stands for CAP_FSETID).
        if self.killpriv
            && req.uid() != 0
            && let Err(e) = self.core.drop_privs_as(self.ino(i), &caller(req))
        {
            return reply.error(fail("fallocate", e));
        }
        match self.core.fallocate(fh(h), offset, length, keep_size) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fallocate", e)),
        }
    }
}
