//! The `local` backend: a plain directory tree. Files are written to a
//! hidden temporary name beside their target, synced, given their mode,
//! mtime and checksum (an xattr), and renamed into place, so a reader (or a
//! sync tool watching the tree) never sees a partial file.
//!
//! Confinement: the tree holds symlinks that users chose (`put_symlink`), so
//! no path is ever resolved by the kernel from a string. The root directory
//! is opened once and every call walks its key one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)` from that descriptor, then acts on the
//! last component with the `*at` calls relative to its parent (never
//! following it either). Keys never hold `.`, `..` or empty components
//! (`check_key`), so a walk cannot leave the root, and a symlink anywhere on
//! the way fails the call (ELOOP/ENOTDIR, an error of this path) instead of
//! being followed: LOCKER never reads or writes outside its directory, even
//! when a directory is swapped for a symlink while a call runs.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::{
    BResult, Backend, BackendError, Cond, ErrorKind, Multipart, ObjInfo, ObjKind, ObjMeta,
    check_key, cond_holds, cond_refused, hex, unhex32,
};
use crate::types::Timestamp;

/// Names starting with this are temporaries of ours, never listed.
const TMP_PREFIX: &str = ".locker-tmp-";
/// xattr holding `sha256 <hex> <size> <mtime>[ <base hex>]`: the checksum
/// (and the base it replaced) is trusted only while size and mtime still
/// match (another tool changing the file changes them).
const XATTR_SUM: &str = "user.locker.sum";

pub struct LocalBackend {
    /// For messages only: nothing is ever opened by this path after `open`.
    root: PathBuf,
    /// The root directory, opened once; every path is resolved from it.
    root_fd: Arc<OwnedFd>,
    syncer: Arc<Syncer>,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> BackendError {
    let msg = format!("{what} {}: {e}", path.display());
    // Names the directory cannot hold, or something in the way (a file or a
    // symlink where a directory should be): this path only.
    if matches!(
        e.raw_os_error(),
        Some(
            libc::ENAMETOOLONG
                | libc::EISDIR
                | libc::ENOTDIR
                | libc::ENOTEMPTY
                | libc::EEXIST
                | libc::EINVAL
                | libc::EILSEQ
                | libc::ELOOP
        )
    ) {
        return BackendError::permanent(msg).for_path();
    }
    let kind = match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    };
    BackendError::new(kind, msg)
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> BResult<T> + Send + 'static,
) -> BResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::transient(format!("local backend task failed: {e}")))?
}

fn tmp_name() -> String {
    format!("{TMP_PREFIX}{:016x}", fastrand::u64(..))
}

fn etag_of(m: &fs::Metadata) -> String {
    format!(
        "{:x}-{}.{}-{:x}",
        m.size(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    )
}

fn mtime_of(m: &fs::Metadata) -> Timestamp {
    Timestamp {
        sec: m.mtime(),
        nsec: m.mtime_nsec() as u32,
    }
}

/// How the backend makes what it writes durable.
///
/// On a file system whose `syncfs` writes back and commits everything
/// (ext4, XFS, Btrfs, F2FS), the writes going on at once share rounds of
/// one `syncfs` of the root's file system. An fsync of each file and of
/// each directory made every small file two journal commits: uploads of
/// thousands filled the journal, and every writer of that file system
/// waited for room in it (LOCKER's own requests among them when the
/// backend shares its disk, which made files created while others were
/// uploaded about 40 % slower). The order stays: a file is durable before
/// its name is given to it, and the name before the write is reported
/// done. Elsewhere, and for anything on another file system mounted below
/// the root, each file and directory is synced itself.
struct Syncer {
    /// The root, and the device its file system is on, where rounds apply.
    shared: Option<(Arc<OwnedFd>, u64)>,
    rounds: std::sync::Mutex<Rounds>,
    turn: std::sync::Condvar,
}

/// Tickets of the shared rounds: each sync asks for one, and a round
/// covers every ticket asked before it began.
#[derive(Default)]
struct Rounds {
    asked: u64,
    /// Tickets up to here are durable.
    done: u64,
    /// Tickets up to here were in a round that failed, with its error.
    failed: u64,
    error: Option<i32>,
    running: bool,
    /// Rounds run (tests).
    count: u64,
}

/// The file systems whose `syncfs` makes every write before it durable.
const SHARED_SYNC_FS: [u32; 4] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // XFS
    0x9123_683E, // Btrfs
    0xF2F5_2010, // F2FS
];

impl Syncer {
    fn new(root: &Arc<OwnedFd>) -> Syncer {
        let shared = (|| {
            let fs = rustix::fs::fstatfs(root.as_fd()).ok()?;
            if !SHARED_SYNC_FS.contains(&(fs.f_type as u32)) {
                return None;
            }
            let dev = rustix::fs::fstat(root.as_fd()).ok()?.st_dev;
            Some((root.clone(), dev))
        })();
        Syncer {
            shared,
            rounds: Default::default(),
            turn: Default::default(),
        }
    }

    /// Makes `fd` (a file or directory under the root) durable.
    fn sync(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match &self.shared {
            Some((root, dev)) if rustix::fs::fstat(fd).is_ok_and(|st| st.st_dev == *dev) => {
                self.round(|| Ok(rustix::fs::syncfs(root.as_fd())?))
            }
            _ => Ok(rustix::fs::fsync(fd)?),
        }
    }

    /// Waits for a round of `sync` that begins after this call, running it
    /// if none is running.
    fn round(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut g = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        g.asked += 1;
        let ticket = g.asked;
        loop {
            if ticket <= g.failed {
                return Err(match g.error {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::other("syncfs failed"),
                });
            }
            if ticket <= g.done {
                return Ok(());
            }
            if !g.running {
                break;
            }
            g = self.turn.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.running = true;
        let upto = g.asked;
        drop(g);
        let r = sync();
        let mut g = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        g.running = false;
        g.count += 1;
        match &r {
            Ok(()) => g.done = g.done.max(upto),
            Err(e) => {
                g.failed = upto;
                g.error = e.raw_os_error();
            }
        }
        self.turn.notify_all();
        r
    }
}

/// A directory of the tree, opened without following symlinks, with its
/// path for messages.
struct DirAt {
    fd: OwnedFd,
    path: PathBuf,
    syncer: Arc<Syncer>,
}

impl DirAt {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path of `name` in this directory, for messages.
    fn show(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` in this directory with `flags`, never following a
    /// symlink there.
    fn open(&self, name: &str, flags: OFlags, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            self.fd(),
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// The entry `name` itself (a symlink is not followed); NotFound if
    /// absent.
    fn lstat(&self, name: &str) -> io::Result<fs::Metadata> {
        // An O_PATH descriptor of the entry (of the link itself, for a
        // symlink) answers fstat like lstat would.
        self.open(name, OFlags::PATH, 0)?.metadata()
    }

    fn lstat_opt(&self, name: &str) -> BResult<Option<fs::Metadata>> {
        match self.lstat(name) {
            Ok(m) => Ok(Some(m)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_err("stat", &self.show(name), e)),
        }
    }

    /// Opens the subdirectory `name` (never a symlink to one).
    fn subdir(&self, name: &str) -> io::Result<DirAt> {
        let fd = rustix::fs::openat(
            self.fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirAt {
            fd,
            path: self.show(name),
            syncer: self.syncer.clone(),
        })
    }

    fn unlink(&self, name: &str, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        Ok(rustix::fs::unlinkat(self.fd(), name, flags)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(self.fd(), from, self.fd(), to)?)
    }

    /// Makes the directory's entries durable.
    fn sync(&self) {
        let _ = self.syncer.sync(self.fd());
    }

    /// Makes `f`, a file in this directory, durable: its data and its
    /// attributes (not its name).
    fn sync_file(&self, f: &File) -> io::Result<()> {
        self.syncer.sync(f.as_fd())
    }

    fn remove_quietly(&self, name: &str) {
        let _ = self.unlink(name, false);
    }
}

/// Gives the open file its mode, checksum and mtime (in that order: the
/// xattr and chmod would otherwise not disturb mtime, but keep it last).
fn apply_meta(f: &File, path: &Path, meta: &ObjMeta, size: u64) -> BResult<()> {
    if let Some(mode) = meta.mode {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| io_err("chmod", path, e))?;
    }
    let mtime = meta.mtime.unwrap_or_else(Timestamp::now);
    if let Some(sha) = meta.sha256 {
        let mut v = format!(
            "sha256 {} {} {}",
            hex(&sha),
            size,
            super::format_mtime(mtime)
        );
        if let Some(b) = meta.base {
            v.push(' ');
            v.push_str(&hex(&b));
        }
        // Filesystems without user xattrs refuse it: the checksum is then
        // recomputed when needed.
        let _ = rustix::fs::fsetxattr(f, XATTR_SUM, v.as_bytes(), rustix::fs::XattrFlags::empty());
    }
    let t = rustix::fs::Timespec {
        tv_sec: mtime.sec,
        tv_nsec: mtime.nsec as _,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::futimens(f, &ts).map_err(|e| io_err("utimens", path, e.into()))
}

/// The checksum (and base) recorded on the regular file `name` of `dir`, if
/// size and mtime still match what it was recorded for.
fn read_sum(dir: &DirAt, name: &str, m: &fs::Metadata) -> Option<([u8; 32], Option<[u8; 32]>)> {
    let f = dir.open(name, OFlags::RDONLY | OFlags::NONBLOCK, 0).ok()?;
    let mut buf = [0u8; 256];
    let n = rustix::fs::fgetxattr(&f, XATTR_SUM, &mut buf).ok()?;
    let s = std::str::from_utf8(&buf[..n]).ok()?;
    let mut it = s.split(' ');
    if it.next()? != "sha256" {
        return None;
    }
    let sha = unhex32(it.next()?)?;
    let size: u64 = it.next()?.parse().ok()?;
    let mtime = super::parse_mtime(it.next()?)?;
    let base = it.next().and_then(unhex32);
    (size == m.size() && mtime == mtime_of(m)).then_some((sha, base))
}

fn kind_of(m: &fs::Metadata) -> Option<ObjKind> {
    let ft = m.file_type();
    if ft.is_dir() {
        Some(ObjKind::Dir)
    } else if ft.is_symlink() {
        Some(ObjKind::Symlink)
    } else if ft.is_file() {
        Some(ObjKind::File)
    } else {
        None
    }
}

/// The entry `name` of `dir` as an object; `with_meta` reads the checksum
/// (a listing does not carry metadata).
fn info_of(key: String, dir: &DirAt, name: &str, m: &fs::Metadata, with_meta: bool) -> ObjInfo {
    let kind = kind_of(m).unwrap_or(ObjKind::File);
    let meta = with_meta.then(|| {
        let sum = if kind == ObjKind::File {
            read_sum(dir, name, m)
        } else {
            None
        };
        ObjMeta {
            sha256: sum.map(|s| s.0),
            mtime: Some(mtime_of(m)),
            mode: Some(m.mode() & 0o7777),
            base: sum.and_then(|s| s.1),
        }
    });
    ObjInfo {
        key,
        kind,
        size: if kind == ObjKind::Dir { 0 } else { m.size() },
        etag: if kind == ObjKind::Dir {
            "dir".into()
        } else {
            etag_of(m)
        },
        meta,
        file_id: None,
    }
}

/// Writes `data` to a new temporary file in `dir`, syncs it and gives it
/// `meta`; returns the temporary's name.
/// The unit of holes: a range of this many zero bytes, at a multiple of it
/// in the file, is left unwritten.
const HOLE_UNIT: usize = 4096;

fn all_zero(b: &[u8]) -> bool {
    // In 64-byte steps the OR vectorises and a non-zero byte ends it early.
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Writes `data` at `off` in `f` (whose unwritten ranges read as zeros),
/// leaving out its all-zero 4 KiB blocks: a sparse file stays sparse in the
/// backend, as `cp --sparse=auto` keeps it, instead of taking its apparent
/// size in disk space.
fn write_sparse(f: &File, data: &[u8], off: u64) -> io::Result<()> {
    let unit = HOLE_UNIT as u64;
    // A run of data blocks not yet written: where it starts in `data`.
    let mut run: Option<usize> = None;
    let mut a = 0;
    while a < data.len() {
        // Blocks are counted from the file's start, so holes line up with
        // the file system's.
        let boundary = ((off + a as u64) / unit + 1) * unit;
        let b = ((boundary - off) as usize).min(data.len());
        match (all_zero(&data[a..b]), run) {
            (false, None) => run = Some(a),
            (true, Some(s)) => {
                f.write_all_at(&data[s..a], off + s as u64)?;
                run = None;
            }
            _ => {}
        }
        a = b;
    }
    if let Some(s) = run {
        f.write_all_at(&data[s..], off + s as u64)?;
    }
    Ok(())
}

/// Copies `from` (of `size` bytes) into the empty `to`: only its data
/// ranges (`SEEK_DATA`/`SEEK_HOLE`), each with `copy_file_range` (the
/// kernel copies or reflinks without the bytes passing through here), so
/// holes stay holes.
fn copy_sparse(from: &File, to: &File, size: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(from, SeekFrom::Data(pos)) {
            Ok(s) => s,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(from, SeekFrom::Hole(start))?.min(size);
        let (mut i, mut o) = (start, start);
        while i < end {
            let len = (end - i).min(1 << 30) as usize;
            let n = rustix::fs::copy_file_range(from, Some(&mut i), to, Some(&mut o), len)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source shrank while it was copied",
                ));
            }
        }
        pos = end;
    }
    to.set_len(size)
}

fn write_tmp(dir: &DirAt, data: &[u8], meta: &ObjMeta) -> BResult<String> {
    let tmp = tmp_name();
    let f = dir
        .open(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
        .map_err(|e| io_err("create", &dir.show(&tmp), e))?;
    let r = (|| {
        write_sparse(&f, data, 0)
            .and_then(|()| f.set_len(data.len() as u64))
            .map_err(|e| io_err("write", &dir.show(&tmp), e))?;
        apply_meta(&f, &dir.show(&tmp), meta, data.len() as u64)?;
        dir.sync_file(&f)
            .map_err(|e| io_err("fsync", &dir.show(&tmp), e))
    })();
    if let Err(e) = r {
        dir.remove_quietly(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Renames the temporary `tmp` over `name` in `dir` (if `cond` holds) and
/// makes the rename durable.
fn install(dir: &DirAt, tmp: &str, name: &str, cond: &Cond) -> BResult<String> {
    let now = match dir.lstat_opt(name) {
        Ok(m) => m,
        Err(e) => {
            dir.remove_quietly(tmp);
            return Err(e);
        }
    };
    let ok = match cond {
        Cond::Any => true,
        Cond::IfAbsent => now.is_none(),
        Cond::IfMatch(e) => now.as_ref().is_some_and(|m| &etag_of(m) == e),
    };
    if !ok {
        dir.remove_quietly(tmp);
        return Err(BackendError::transient(format!(
            "{} changed meanwhile; not overwritten",
            dir.show(name).display()
        ))
        .for_path());
    }
    if now.as_ref().is_some_and(|m| m.is_dir()) {
        dir.remove_quietly(tmp);
        return Err(BackendError::permanent(format!(
            "{} is a directory in the backend",
            dir.show(name).display()
        ))
        .for_path());
    }
    dir.rename(tmp, name).map_err(|e| {
        dir.remove_quietly(tmp);
        io_err("rename", &dir.show(name), e)
    })?;
    dir.sync();
    let m = dir
        .lstat(name)
        .map_err(|e| io_err("stat", &dir.show(name), e))?;
    Ok(etag_of(&m))
}

/// Splits a checked key into its parent's components and its last name.
fn split_key(key: &str) -> BResult<(Vec<&str>, &str)> {
    check_key(key)?;
    let mut comps: Vec<&str> = key.split('/').collect();
    let name = comps.pop().expect("a checked key has a component");
    Ok((comps, name))
}

impl LocalBackend {
    /// `dir` must exist unless `create` (the default location under the
    /// data directory); the prefix below it is created.
    pub fn open(dir: &Path, prefix: &str, create: bool) -> BResult<LocalBackend> {
        if create {
            fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        }
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(BackendError::permanent(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BackendError::permanent(format!(
                    "backend directory {} does not exist",
                    dir.display()
                )));
            }
            Err(e) => return Err(io_err("stat", dir, e)),
        }
        // The configured directory and prefix are the admin's: they are
        // resolved as given, once, here.
        let root = dir.join(prefix.trim_matches('/'));
        fs::create_dir_all(&root).map_err(|e| io_err("create", &root, e))?;
        let root_fd = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", &root, e.into()))?;
        let root_fd = Arc::new(root_fd);
        Ok(LocalBackend {
            root,
            syncer: Arc::new(Syncer::new(&root_fd)),
            root_fd,
        })
    }

    /// A handle for a blocking task.
    fn walker(&self) -> Walker {
        Walker {
            root: self.root.clone(),
            root_fd: self.root_fd.clone(),
            syncer: self.syncer.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn check(&self) -> BResult<()> {
        let w = self.walker();
        blocking(move || {
            let root = w.root_dir()?;
            let probe = tmp_name();
            root.open(
                &probe,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                0o600,
            )
            .map_err(|e| io_err("write to", &w.root, e))?;
            root.remove_quietly(&probe);
            Ok(())
        })
        .await
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let (w, key) = (self.walker(), key.to_string());
        let meta = meta.clone();
        let cond = cond.clone();
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let dir = w.dir(&parent, true)?;
            let tmp = write_tmp(&dir, &data, &meta)?;
            install(&dir, &tmp, name, &cond)
        })
        .await
    }

    async fn multipart_begin(&self, key: &str, size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        let (w, key) = (self.walker(), key.to_string());
        let meta = meta.clone();
        blocking(move || {
            let (parent, _) = split_key(&key)?;
            let dir = w.dir(&parent, true)?;
            let name = tmp_name();
            let f = dir
                .open(&name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
                .map_err(|e| io_err("create", &dir.show(&name), e))?;
            f.set_len(size)
                .map_err(|e| io_err("truncate", &dir.show(&name), e))?;
            Ok(Multipart {
                key,
                id: name,
                size,
                meta,
                cond: Cond::Any,
            })
        })
        .await
    }

    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        let (w, mp) = (self.walker(), mp.clone());
        blocking(move || {
            let (parent, _) = split_key(&mp.key)?;
            let dir = w.dir(&parent, false)?;
            let f = dir
                .open(&mp.id, OFlags::WRONLY, 0)
                .map_err(|e| io_err("open", &dir.show(&mp.id), e))?;
            // Made at its full size: holes need no write.
            write_sparse(&f, &data, offset).map_err(|e| io_err("write", &dir.show(&mp.id), e))?;
            Ok(format!("part-{number}"))
        })
        .await
    }

    /// Completes a multipart upload: sync, metadata, rename.
    async fn multipart_finish(
        &self,
        mp: &Multipart,
        _parts: Vec<(u32, String)>,
    ) -> BResult<String> {
        let (w, mp) = (self.walker(), mp.clone());
        blocking(move || {
            let (parent, name) = split_key(&mp.key)?;
            let dir = w.dir(&parent, false)?;
            let shown = dir.show(&mp.id);
            let f = dir
                .open(&mp.id, OFlags::WRONLY, 0)
                .map_err(|e| io_err("open", &shown, e))?;
            let size = f.metadata().map_err(|e| io_err("stat", &shown, e))?.size();
            apply_meta(&f, &shown, &mp.meta, size)?;
            dir.sync_file(&f).map_err(|e| io_err("fsync", &shown, e))?;
            install(&dir, &mp.id, name, &mp.cond)
        })
        .await
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        let (w, mp) = (self.walker(), mp.clone());
        let _ = blocking(move || {
            let (parent, _) = split_key(&mp.key)?;
            w.dir(&parent, false)?.remove_quietly(&mp.id);
            Ok(())
        })
        .await;
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        let (w, key) = (self.walker(), key.to_string());
        let want = if_match.map(str::to_string);
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let dir = w.dir(&parent, false)?;
            let shown = dir.show(name);
            let f = dir
                .open(name, OFlags::RDONLY, 0)
                .map_err(|e| io_err("open", &shown, e))?;
            if let Some(want) = want {
                let m = f.metadata().map_err(|e| io_err("stat", &shown, e))?;
                if etag_of(&m) != want {
                    return Err(BackendError::transient(format!(
                        "{} changed since it was listed",
                        shown.display()
                    ))
                    .for_path());
                }
            }
            let mut buf = crate::buf::zeroed(len as usize);
            let mut got = 0usize;
            while got < buf.len() {
                let n = f
                    .read_at(&mut buf[got..], offset + got as u64)
                    .map_err(|e| io_err("read", &shown, e))?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(buf)
        })
        .await
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        let (w, key) = (self.walker(), key.to_string());
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let Some(dir) = w.dir_opt(&parent)? else {
                return Ok(None);
            };
            Ok(dir
                .lstat_opt(name)?
                .map(|m| info_of(key.clone(), &dir, name, &m, true)))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        let w = self.walker();
        let prefix = prefix.trim_matches('/').to_string();
        blocking(move || {
            let mut out = Vec::new();
            let start = if prefix.is_empty() {
                Some(w.root_dir()?)
            } else {
                check_key(&prefix)?;
                w.dir_opt(&prefix.split('/').collect::<Vec<_>>())?
            };
            if let Some(start) = start {
                list_into(&start, &prefix, &mut out)?;
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        let (w, key, cond) = (self.walker(), key.to_string(), cond.clone());
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let Some(dir) = w.dir_opt(&parent)? else {
                return Ok(());
            };
            let now = dir.lstat_opt(name)?;
            if now.is_some() && !cond_holds(&cond, now.as_ref().map(etag_of).as_deref()) {
                return Err(cond_refused(&key));
            }
            match dir.unlink(name, false) {
                Ok(()) => {
                    dir.sync();
                    Ok(())
                }
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(io_err("remove", &dir.show(name), e)),
            }
        })
        .await
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let w = self.walker();
        let (src, dst, cond) = (src.to_string(), dst.to_string(), cond.clone());
        let meta = meta.clone();
        let want = src_etag.map(str::to_string);
        blocking(move || {
            let (sparent, sname) = split_key(&src)?;
            let sdir = w.dir(&sparent, false)?;
            let shown = sdir.show(sname);
            let check = |m: &fs::Metadata| -> BResult<()> {
                match &want {
                    Some(want) if &etag_of(m) != want => Err(BackendError::permanent(format!(
                        "{} changed since it was recorded",
                        shown.display()
                    ))
                    .for_path()),
                    _ => Ok(()),
                }
            };
            if src == dst {
                let f = sdir
                    .open(sname, OFlags::WRONLY, 0)
                    .map_err(|e| io_err("open", &shown, e))?;
                let m = f.metadata().map_err(|e| io_err("stat", &shown, e))?;
                check(&m)?;
                apply_meta(&f, &shown, &meta, m.size())?;
                sdir.sync_file(&f).map_err(|e| io_err("fsync", &shown, e))?;
                let m = f.metadata().map_err(|e| io_err("stat", &shown, e))?;
                return Ok(etag_of(&m));
            }
            let from = sdir
                .open(sname, OFlags::RDONLY, 0)
                .map_err(|e| io_err("open", &shown, e))?;
            let m = from.metadata().map_err(|e| io_err("stat", &shown, e))?;
            check(&m)?;
            let (dparent, dname) = split_key(&dst)?;
            let ddir = w.dir(&dparent, true)?;
            let tmp = tmp_name();
            let tshown = ddir.show(&tmp);
            let to = ddir
                .open(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
                .map_err(|e| io_err("create", &tshown, e))?;
            let r = (|| {
                copy_sparse(&from, &to, m.size()).map_err(|e| io_err("copy", &shown, e))?;
                apply_meta(&to, &tshown, &meta, m.size())?;
                ddir.sync_file(&to).map_err(|e| io_err("fsync", &tshown, e))
            })();
            if let Err(e) = r {
                ddir.remove_quietly(&tmp);
                return Err(e);
            }
            install(&ddir, &tmp, dname, &cond)
        })
        .await
    }

    async fn put_dir(&self, key: &str, _meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let (w, key, cond) = (self.walker(), key.to_string(), cond.clone());
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let dir = w.dir(&parent, true)?;
            match dir.lstat_opt(name)? {
                Some(m) if m.is_dir() => return Ok("dir".into()),
                Some(m) if !cond_holds(&cond, Some(&etag_of(&m))) => {
                    return Err(cond_refused(&key));
                }
                // A file or symlink in the way is replaced (never followed).
                Some(_) => dir
                    .unlink(name, false)
                    .map_err(|e| io_err("remove", &dir.show(name), e))?,
                None => {}
            }
            match rustix::fs::mkdirat(dir.fd(), name, Mode::from_raw_mode(0o755)) {
                Ok(()) => dir.sync(),
                Err(rustix::io::Errno::EXIST) if dir.subdir(name).is_ok() => {}
                Err(e) => return Err(io_err("mkdir", &dir.show(name), e.into())),
            }
            Ok("dir".into())
        })
        .await
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        let (w, key) = (self.walker(), key.to_string());
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let Some(dir) = w.dir_opt(&parent)? else {
                return Ok(());
            };
            // Temporaries of ours left inside by an upload that a stop cut
            // short are not files anyone knows: they must not keep the
            // directory (which a listing would then bring back empty).
            if let Ok(sub) = dir.subdir(name) {
                let mut stale = Vec::new();
                if let Ok(rd) = rustix::fs::Dir::read_from(sub.fd()) {
                    for ent in rd.flatten() {
                        let n = ent.file_name().to_bytes();
                        if n.starts_with(TMP_PREFIX.as_bytes()) {
                            stale.push(String::from_utf8_lossy(n).into_owned());
                        }
                    }
                }
                for n in stale {
                    sub.remove_quietly(&n);
                }
            }
            match dir.unlink(name, true) {
                Ok(()) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    Err(BackendError::permanent(format!(
                        "{} holds files LOCKER does not know; left in place",
                        dir.show(name).display()
                    )))
                }
                Err(e) => Err(io_err("rmdir", &dir.show(name), e)),
            }
        })
        .await
    }

    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        _meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let (w, key, cond) = (self.walker(), key.to_string(), cond.clone());
        let target = target.to_vec();
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let dir = w.dir(&parent, true)?;
            let tmp = tmp_name();
            rustix::fs::symlinkat(OsStr::from_bytes(&target), dir.fd(), tmp.as_str())
                .map_err(|e| io_err("symlink", &dir.show(&tmp), e.into()))?;
            install(&dir, &tmp, name, &cond)
        })
        .await
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        let (w, key) = (self.walker(), key.to_string());
        blocking(move || {
            let (parent, name) = split_key(&key)?;
            let dir = w.dir(&parent, false)?;
            rustix::fs::readlinkat(dir.fd(), name, Vec::new())
                .map(CString::into_bytes)
                .map_err(|e| io_err("readlink", &dir.show(name), e.into()))
        })
        .await
    }
}

/// The root descriptor and path, movable into a blocking task.
struct Walker {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    syncer: Arc<Syncer>,
}

impl Walker {
    fn root_dir(&self) -> BResult<DirAt> {
        let fd = self
            .root_fd
            .try_clone()
            .map_err(|e| io_err("open", &self.root, e))?;
        Ok(DirAt {
            fd,
            path: self.root.clone(),
            syncer: self.syncer.clone(),
        })
    }

    /// The directory `comps` below the root, one component at a time and
    /// never through a symlink; with `create`, missing ones are made. A
    /// file or symlink in the way is, for a write, an error of this path
    /// that a queued change may clear (retried soon); for anything else, the
    /// key names nothing (NotFound).
    fn dir(&self, comps: &[&str], create: bool) -> BResult<DirAt> {
        let mut cur = self.root_dir()?;
        for c in comps {
            let next = match cur.subdir(c) {
                Err(e) if create && not_found(&e) => {
                    match rustix::fs::mkdirat(cur.fd(), *c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io_err("mkdir", &cur.show(c), e.into())),
                    }
                    cur.sync();
                    cur.subdir(c)
                }
                r => r,
            };
            cur = match next {
                Ok(d) => d,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let msg = format!(
                        "{} is not a directory in the backend (a file or symlink is in the way)",
                        cur.show(c).display()
                    );
                    return Err(if create {
                        BackendError::transient(msg).for_path()
                    } else {
                        BackendError::not_found(msg)
                    });
                }
                Err(e) => return Err(io_err("open", &cur.show(c), e)),
            };
        }
        Ok(cur)
    }

    /// `dir` without creating; `None` if the key's directory is missing.
    fn dir_opt(&self, comps: &[&str]) -> BResult<Option<DirAt>> {
        match self.dir(comps, false) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Appends every entry below `dir` (whose key is `rel`) to `out`, depth
/// first; only directories (never symlinks to them) are descended, and at
/// most one descriptor per level is open.
fn list_into(dir: &DirAt, rel: &str, out: &mut Vec<ObjInfo>) -> BResult<()> {
    let names: Vec<CString> = {
        let rd = rustix::fs::Dir::read_from(dir.fd())
            .map_err(|e| io_err("list", &dir.path, e.into()))?;
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_err("list", &dir.path, e.into()))?;
            let n: &CStr = ent.file_name();
            if n.to_bytes() != b"." && n.to_bytes() != b".." {
                names.push(n.to_owned());
            }
        }
        names
    };
    for name in names {
        let Ok(name) = name.into_string() else {
            tracing::warn!(dir = %dir.path.display(), "skipping a name that is not UTF-8");
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let m = match dir.lstat(&name) {
            Ok(m) => m,
            Err(e) if not_found(&e) => continue,
            Err(e) => return Err(io_err("stat", &dir.show(&name), e)),
        };
        let Some(kind) = kind_of(&m) else {
            continue;
        };
        out.push(info_of(key.clone(), dir, &name, &m, false));
        if kind == ObjKind::Dir {
            match dir.subdir(&name) {
                Ok(sub) => list_into(&sub, &key, out)?,
                // Removed or replaced by a symlink since the stat above.
                Err(e)
                    if not_found(&e)
                        || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {}
                Err(e) => return Err(io_err("list", &dir.show(&name), e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Every name below `dir`, recursively (symlinks not followed).
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Syncs asked at once share rounds: one runs, the others wait for the
    /// next, which covers them all. A failed round fails every sync it
    /// covered, and the next one runs afresh.
    #[test]
    fn syncs_asked_at_once_share_rounds_and_a_failure_reaches_each() {
        let dir = tempfile::tempdir().unwrap();
        let root = rustix::fs::open(
            dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let syncer = Arc::new(Syncer::new(&Arc::new(root)));
        let start = Arc::new(std::sync::Barrier::new(16));
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (syncer, start, ran) = (syncer.clone(), start.clone(), ran.clone());
                std::thread::spawn(move || {
                    start.wait();
                    syncer.round(|| {
                        ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(())
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let ran = ran.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=3).contains(&ran), "16 syncs took {ran} rounds");
        // A round that fails: each sync waiting on it gets the error.
        let start = Arc::new(std::sync::Barrier::new(2));
        let first = {
            let (syncer, start) = (syncer.clone(), start.clone());
            std::thread::spawn(move || {
                syncer.round(|| {
                    start.wait();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    Err(io::Error::from_raw_os_error(libc::EIO))
                })
            })
        };
        start.wait();
        let second = syncer.round(|| Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(
            first.join().unwrap().unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(second.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(syncer.round(|| Ok(())).is_ok());
    }

    /// Small files written at once: on a file system where rounds apply,
    /// far fewer syncs than files; elsewhere, none (each file is synced
    /// itself). Every file is whole at its name.
    #[test]
    fn files_written_at_once_share_their_syncs() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .enable_all()
            .build()
            .unwrap();
        let base = tempfile::tempdir().unwrap();
        let be = Arc::new(LocalBackend::open(base.path(), "corp", false).unwrap());
        rt.block_on(async {
            let puts: Vec<_> = (0..64)
                .map(|i| {
                    let be = be.clone();
                    tokio::spawn(async move {
                        let data = format!("file {i}").into_bytes();
                        be.put(
                            &format!("d{}/f{i}", i % 4),
                            data,
                            &ObjMeta::default(),
                            &Cond::Any,
                        )
                        .await
                    })
                })
                .collect();
            for p in puts {
                p.await.unwrap().unwrap();
            }
        });
        for i in 0..64 {
            let got = fs::read(base.path().join(format!("corp/d{}/f{i}", i % 4))).unwrap();
            assert_eq!(got, format!("file {i}").into_bytes());
        }
        let rounds = be.syncer.rounds.lock().unwrap().count;
        if be.syncer.shared.is_some() {
            // Two per file (the file, then its name) if none were shared.
            assert!(rounds < 64, "{rounds} rounds for 64 files");
        } else {
            assert_eq!(rounds, 0);
        }
    }

    #[test]
    fn symlink_in_backend_is_never_followed() {
        let rt = rt();
        let base = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        fs::write(canary.path().join("secret"), b"outside").unwrap();
        fs::create_dir(canary.path().join("sub")).unwrap();
        fs::write(canary.path().join("sub/inner"), b"deep").unwrap();
        let before = tree(canary.path());
        let be = LocalBackend::open(base.path(), "corp", false).unwrap();
        let m = ObjMeta::default();
        rt.block_on(async {
            // A user's symlink, absolute and relative, to the canary.
            be.put_symlink("x", canary.path().as_os_str().as_bytes(), &m, &Cond::Any)
                .await
                .unwrap();
            let rel = format!("../../..{}", canary.path().display());
            be.put_symlink("r", rel.as_bytes(), &m, &Cond::Any)
                .await
                .unwrap();
            for link in ["x", "r"] {
                let e = be
                    .put(&format!("{link}/evil"), b"data".to_vec(), &m, &Cond::Any)
                    .await
                    .unwrap_err();
                assert_eq!(e.kind, ErrorKind::Transient, "{e}");
                assert!(e.path_only, "{e}");
                assert!(
                    be.put_dir(&format!("{link}/s"), &m, &Cond::Any)
                        .await
                        .is_err()
                );
                assert!(
                    be.put_dir(&format!("{link}/s/t"), &m, &Cond::Any)
                        .await
                        .is_err()
                );
                assert!(
                    be.put_symlink(&format!("{link}/l"), b"/etc", &m, &Cond::Any)
                        .await
                        .is_err()
                );
                assert!(
                    be.get_range(&format!("{link}/secret"), None, 0, 10)
                        .await
                        .is_err()
                );
                assert!(
                    be.get_range(&format!("{link}/sub/inner"), None, 0, 10)
                        .await
                        .is_err()
                );
                assert!(be.read_symlink(&format!("{link}/secret")).await.is_err());
                // Through a link, a key names nothing: absent, and deleting
                // it removes nothing.
                assert_eq!(be.head(&format!("{link}/secret")).await.unwrap(), None);
                be.delete(&format!("{link}/secret"), &Cond::Any)
                    .await
                    .unwrap();
                be.delete(&format!("{link}/sub/inner"), &Cond::Any)
                    .await
                    .unwrap();
                be.delete_dir(&format!("{link}/sub")).await.unwrap();
                assert!(
                    be.copy(&format!("{link}/secret"), None, "stolen", &m, &Cond::Any)
                        .await
                        .is_err()
                );
                assert!(
                    be.copy("x", None, &format!("{link}/evil"), &m, &Cond::Any)
                        .await
                        .is_err()
                );
                let mp = be.multipart_begin(&format!("{link}/big"), 10, &m).await;
                assert!(mp.is_err());
                assert!(be.list(link).await.unwrap_or_default().is_empty());
            }
            // The listing shows the links as links, not what they point at.
            let all = be.list("").await.unwrap();
            let keys: Vec<_> = all.iter().map(|o| (o.key.as_str(), o.kind)).collect();
            assert_eq!(keys, [("r", ObjKind::Symlink), ("x", ObjKind::Symlink)]);
            // The link itself is an object like any other: replaced, read
            // and deleted as a link.
            assert_eq!(
                be.read_symlink("x").await.unwrap(),
                canary.path().as_os_str().as_bytes()
            );
            be.put_dir("x", &m, &Cond::Any).await.unwrap();
            be.put("x/evil", b"data".to_vec(), &m, &Cond::Any)
                .await
                .unwrap();
            be.delete("r", &Cond::Any).await.unwrap();
        });
        assert_eq!(tree(canary.path()), before, "the canary changed");
        assert_eq!(fs::read(canary.path().join("secret")).unwrap(), b"outside");
        assert_eq!(
            fs::read(base.path().join("corp/x/evil")).unwrap(),
            b"data",
            "the directory that replaced the link holds the file"
        );
    }

    #[test]
    fn directory_swapped_for_symlink_mid_walk_is_not_followed() {
        // A directory of the tree replaced by a symlink between calls (what a
        // rename-exchange pushed in two steps looks like) stops the walk.
        let rt = rt();
        let base = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        let be = LocalBackend::open(base.path(), "", false).unwrap();
        let m = ObjMeta::default();
        rt.block_on(async {
            be.put("d/f", b"one".to_vec(), &m, &Cond::Any)
                .await
                .unwrap();
            fs::rename(base.path().join("d"), base.path().join("moved")).unwrap();
            std::os::unix::fs::symlink(canary.path(), base.path().join("d")).unwrap();
            assert!(
                be.put("d/f", b"two".to_vec(), &m, &Cond::Any)
                    .await
                    .is_err()
            );
            assert!(
                be.put("d/g/h", b"two".to_vec(), &m, &Cond::Any)
                    .await
                    .is_err()
            );
        });
        assert!(tree(canary.path()).is_empty(), "{:?}", tree(canary.path()));
    }
}
