//! The `local` backend: a plain directory tree. Files are written to a
//! hidden temporary name beside their target, synced, given their mode,
//! mtime and checksum (an xattr), and renamed into place, so a reader (or a
//! sync tool watching the tree) never sees a partial file.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    BResult, BackendError, Cond, ErrorKind, Multipart, ObjInfo, ObjKind, ObjMeta, check_key, hex,
    unhex32,
};
use crate::core::Timestamp;

/// Names starting with this are temporaries of ours, never listed.
const TMP_PREFIX: &str = ".locker-tmp-";
/// xattr holding `sha256 <hex> <size> <mtime>`: the checksum is trusted only
/// while size and mtime still match (another tool changing the file changes
/// them).
const XATTR_SUM: &str = "user.locker.sum";

pub struct LocalBackend {
    root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> BackendError {
    let msg = format!("{what} {}: {e}", path.display());
    // Names the directory cannot hold, or something in the way: this path
    // only.
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

fn cstr(p: &Path) -> BResult<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| BackendError::permanent(format!("path {} contains NUL", p.display())))
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

/// Gives the open file its mode, checksum and mtime (in that order: the
/// xattr and chmod would otherwise not disturb mtime, but keep it last).
fn apply_meta(f: &File, path: &Path, meta: &ObjMeta, size: u64) -> BResult<()> {
    if let Some(mode) = meta.mode {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| io_err("chmod", path, e))?;
    }
    let mtime = meta.mtime.unwrap_or_else(Timestamp::now);
    if let Some(sha) = meta.sha256 {
        let v = format!(
            "sha256 {} {} {}",
            hex(&sha),
            size,
            super::format_mtime(mtime)
        );
        let name = CString::new(XATTR_SUM).expect("no NUL");
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd, NUL-terminated name, value pointer and length
        // from a live String. Filesystems without user xattrs refuse it:
        // the checksum is then recomputed when needed.
        unsafe {
            libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0);
        }
    }
    let ts = [
        libc::timespec {
            tv_sec: mtime.sec,
            tv_nsec: mtime.nsec as i64,
        },
        libc::timespec {
            tv_sec: mtime.sec,
            tv_nsec: mtime.nsec as i64,
        },
    ];
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd and a two-element timespec array.
    if unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) } != 0 {
        return Err(io_err("utimens", path, io::Error::last_os_error()));
    }
    Ok(())
}

fn read_sum(path: &Path, m: &fs::Metadata) -> Option<[u8; 32]> {
    let c = cstr(path).ok()?;
    let name = CString::new(XATTR_SUM).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    let s = std::str::from_utf8(&buf[..n as usize]).ok()?;
    let mut it = s.split(' ');
    if it.next()? != "sha256" {
        return None;
    }
    let sha = unhex32(it.next()?)?;
    let size: u64 = it.next()?.parse().ok()?;
    let mtime = super::parse_mtime(it.next()?)?;
    (size == m.size() && mtime == mtime_of(m)).then_some(sha)
}

fn info_of(key: String, path: &Path, m: &fs::Metadata) -> ObjInfo {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        ObjKind::Dir
    } else if ft.is_symlink() {
        ObjKind::Symlink
    } else {
        ObjKind::File
    };
    let meta = ObjMeta {
        sha256: if kind == ObjKind::File {
            read_sum(path, m)
        } else {
            None
        },
        mtime: Some(mtime_of(m)),
        mode: Some(m.mode() & 0o7777),
    };
    ObjInfo {
        key,
        kind,
        size: if kind == ObjKind::Dir { 0 } else { m.size() },
        etag: if kind == ObjKind::Dir {
            "dir".into()
        } else {
            etag_of(m)
        },
        meta: Some(meta),
    }
}

/// Writes `data` to a temporary file in `dir`, syncs it and gives it `meta`.
fn write_tmp(dir: &Path, data: &[u8], meta: &ObjMeta) -> BResult<(PathBuf, File)> {
    let tmp = dir.join(tmp_name());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    let r = (|| {
        f.write_all(data).map_err(|e| io_err("write", &tmp, e))?;
        apply_meta(&f, &tmp, meta, data.len() as u64)?;
        f.sync_all().map_err(|e| io_err("fsync", &tmp, e))
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, f))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Renames `tmp` over `dst` (if `cond` holds) and makes the rename durable.
fn install(tmp: &Path, dst: &Path, cond: &Cond) -> BResult<String> {
    let now = fs::symlink_metadata(dst).ok();
    let ok = match cond {
        Cond::Any => true,
        Cond::IfAbsent => now.is_none(),
        Cond::IfMatch(e) => now.as_ref().is_some_and(|m| &etag_of(m) == e),
    };
    if !ok {
        let _ = fs::remove_file(tmp);
        return Err(BackendError::transient(format!(
            "{} changed meanwhile; not overwritten",
            dst.display()
        ))
        .for_path());
    }
    if let Ok(m) = fs::symlink_metadata(dst)
        && m.is_dir()
    {
        let _ = fs::remove_file(tmp);
        return Err(BackendError::permanent(format!(
            "{} is a directory in the backend",
            dst.display()
        ))
        .for_path());
    }
    fs::rename(tmp, dst).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err("rename", dst, e)
    })?;
    if let Some(d) = dst.parent() {
        sync_dir(d);
    }
    let m = fs::symlink_metadata(dst).map_err(|e| io_err("stat", dst, e))?;
    Ok(etag_of(&m))
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
        let root = dir.join(prefix.trim_matches('/'));
        fs::create_dir_all(&root).map_err(|e| io_err("create", &root, e))?;
        Ok(LocalBackend { root })
    }

    pub fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn path(&self, key: &str) -> BResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The directory a new entry at `path` goes into, created if missing.
    fn parent_of(path: &Path) -> BResult<PathBuf> {
        let dir = path
            .parent()
            .ok_or_else(|| BackendError::permanent("path without parent"))?
            .to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        Ok(dir)
    }

    pub async fn check(&self) -> BResult<()> {
        let root = self.root.clone();
        blocking(move || {
            let probe = root.join(tmp_name());
            File::create(&probe).map_err(|e| io_err("write to", &root, e))?;
            let _ = fs::remove_file(&probe);
            Ok(())
        })
        .await
    }

    pub async fn put(
        &self,
        key: &str,
        data: Vec<u8>,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let path = self.path(key)?;
        let meta = meta.clone();
        let cond = cond.clone();
        blocking(move || {
            let dir = LocalBackend::parent_of(&path)?;
            let (tmp, _f) = write_tmp(&dir, &data, &meta)?;
            install(&tmp, &path, &cond)
        })
        .await
    }

    pub async fn multipart_begin(
        &self,
        key: &str,
        size: u64,
        meta: &ObjMeta,
    ) -> BResult<Multipart> {
        let path = self.path(key)?;
        let meta = meta.clone();
        let key = key.to_string();
        blocking(move || {
            let dir = LocalBackend::parent_of(&path)?;
            let name = tmp_name();
            let tmp = dir.join(&name);
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_err("create", &tmp, e))?;
            f.set_len(size).map_err(|e| io_err("truncate", &tmp, e))?;
            Ok(Multipart {
                key,
                id: name,
                meta,
                cond: Cond::Any,
            })
        })
        .await
    }

    fn tmp_of(&self, mp: &Multipart) -> BResult<PathBuf> {
        let path = self.path(&mp.key)?;
        Ok(path
            .parent()
            .ok_or_else(|| BackendError::permanent("path without parent"))?
            .join(&mp.id))
    }

    pub async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        let tmp = self.tmp_of(mp)?;
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| io_err("open", &tmp, e))?;
            f.write_all_at(&data, offset)
                .map_err(|e| io_err("write", &tmp, e))?;
            Ok(format!("part-{number}"))
        })
        .await
    }

    /// Completes a multipart upload: sync, metadata, rename.
    pub async fn multipart_finish(
        &self,
        mp: &Multipart,
        _parts: Vec<(u32, String)>,
    ) -> BResult<String> {
        let tmp = self.tmp_of(mp)?;
        let path = self.path(&mp.key)?;
        let meta = mp.meta.clone();
        let cond = mp.cond.clone();
        blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| io_err("open", &tmp, e))?;
            let size = f.metadata().map_err(|e| io_err("stat", &tmp, e))?.size();
            apply_meta(&f, &tmp, &meta, size)?;
            f.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
            install(&tmp, &path, &cond)
        })
        .await
    }

    pub async fn multipart_abort(&self, mp: &Multipart) {
        if let Ok(tmp) = self.tmp_of(mp) {
            let _ = fs::remove_file(tmp);
        }
    }

    pub async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        let path = self.path(key)?;
        let want = if_match.map(str::to_string);
        blocking(move || {
            let f = File::open(&path).map_err(|e| io_err("open", &path, e))?;
            if let Some(want) = want {
                let m = f.metadata().map_err(|e| io_err("stat", &path, e))?;
                if etag_of(&m) != want {
                    return Err(BackendError::transient(format!(
                        "{} changed since it was listed",
                        path.display()
                    ))
                    .for_path());
                }
            }
            let mut buf = vec![0u8; len as usize];
            let mut got = 0usize;
            while got < buf.len() {
                let n = f
                    .read_at(&mut buf[got..], offset + got as u64)
                    .map_err(|e| io_err("read", &path, e))?;
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

    pub async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || match fs::symlink_metadata(&path) {
            Ok(m) => Ok(Some(info_of(key, &path, &m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path, e)),
        })
        .await
    }

    pub async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        let root = self.root.clone();
        let prefix = prefix.trim_matches('/').to_string();
        blocking(move || {
            let mut out = Vec::new();
            let start = if prefix.is_empty() {
                root.clone()
            } else {
                root.join(&prefix)
            };
            let mut stack = vec![(start, prefix)];
            while let Some((dir, rel)) = stack.pop() {
                let rd = match fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("list", &dir, e)),
                };
                for ent in rd {
                    let ent = ent.map_err(|e| io_err("list", &dir, e))?;
                    let name = ent.file_name();
                    let Some(name) = name.to_str() else {
                        tracing::warn!(dir = %dir.display(), "skipping a name that is not UTF-8");
                        continue;
                    };
                    if name.starts_with(TMP_PREFIX) {
                        continue;
                    }
                    let key = if rel.is_empty() {
                        name.to_string()
                    } else {
                        format!("{rel}/{name}")
                    };
                    let path = ent.path();
                    let m = match fs::symlink_metadata(&path) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("stat", &path, e)),
                    };
                    let ft = m.file_type();
                    if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                        continue;
                    }
                    let mut info = info_of(key.clone(), &path, &m);
                    info.meta = None;
                    if ft.is_dir() {
                        stack.push((path, key));
                    }
                    out.push(info);
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> BResult<()> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(d) = path.parent() {
                    sync_dir(d);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path, e)),
        })
        .await
    }

    pub async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
    ) -> BResult<String> {
        let from = self.path(src)?;
        let to = self.path(dst)?;
        let meta = meta.clone();
        let want = src_etag.map(str::to_string);
        blocking(move || {
            if let Some(want) = want {
                let m = fs::symlink_metadata(&from).map_err(|e| io_err("stat", &from, e))?;
                if etag_of(&m) != want {
                    return Err(BackendError::permanent(format!(
                        "{} changed since it was recorded",
                        from.display()
                    ))
                    .for_path());
                }
            }
            if from == to {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&to)
                    .map_err(|e| io_err("open", &to, e))?;
                let size = f.metadata().map_err(|e| io_err("stat", &to, e))?.size();
                apply_meta(&f, &to, &meta, size)?;
                f.sync_all().map_err(|e| io_err("fsync", &to, e))?;
                let m = fs::symlink_metadata(&to).map_err(|e| io_err("stat", &to, e))?;
                return Ok(etag_of(&m));
            }
            let dir = LocalBackend::parent_of(&to)?;
            let tmp = dir.join(tmp_name());
            // std::fs::copy uses copy_file_range: the kernel copies (or
            // reflinks) without the bytes passing through here.
            let size = fs::copy(&from, &tmp).map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_err("copy", &from, e)
            })?;
            let r = (|| {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&tmp)
                    .map_err(|e| io_err("open", &tmp, e))?;
                apply_meta(&f, &tmp, &meta, size)?;
                f.sync_all().map_err(|e| io_err("fsync", &tmp, e))
            })();
            if let Err(e) = r {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            install(&tmp, &to, &Cond::Any)
        })
        .await
    }

    pub async fn put_dir(&self, key: &str, _meta: &ObjMeta) -> BResult<String> {
        let path = self.path(key)?;
        blocking(move || {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => return Ok("dir".into()),
                Ok(_) => {
                    fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
                }
                Err(_) => {}
            }
            fs::create_dir_all(&path).map_err(|e| io_err("mkdir", &path, e))?;
            Ok("dir".into())
        })
        .await
    }

    pub async fn delete_dir(&self, key: &str) -> BResult<()> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_dir(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                Err(BackendError::permanent(format!(
                    "{} holds files LOCKER does not know; left in place",
                    path.display()
                )))
            }
            Err(e) => Err(io_err("rmdir", &path, e)),
        })
        .await
    }

    pub async fn put_symlink(&self, key: &str, target: &[u8], _meta: &ObjMeta) -> BResult<String> {
        let path = self.path(key)?;
        let target = target.to_vec();
        blocking(move || {
            let dir = LocalBackend::parent_of(&path)?;
            let tmp = dir.join(tmp_name());
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &tmp)
                .map_err(|e| io_err("symlink", &tmp, e))?;
            install(&tmp, &path, &Cond::Any)
        })
        .await
    }

    pub async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        let path = self.path(key)?;
        blocking(move || {
            fs::read_link(&path)
                .map(|t| t.as_os_str().as_bytes().to_vec())
                .map_err(|e| io_err("readlink", &path, e))
        })
        .await
    }
}
