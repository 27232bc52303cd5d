//! Backends: where each namespace's files are pushed. One plain object (or
//! file) per file, at `{prefix}{path}`, with its SHA-256, mtime and mode in
//! the object's metadata; directories as markers (`path/`), symlinks as small
//! objects whose body is the target.
//!
//! Keys given to a backend are paths inside the namespace (`a/b.txt`, no
//! leading slash); the backend adds its prefix. Every call is async and
//! bounded by timeouts: nothing here can hang a caller forever.

pub mod fault;
pub mod local;
pub mod memory;
pub mod metered;
pub mod retry;
pub mod s3;
pub mod webdav;

use std::fmt;

use crate::types::Timestamp;

/// How a failed call should be treated by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or bucket/directory) does not exist.
    NotFound,
    /// Timeouts, 5xx, 429, refused connections: retry soon.
    Transient,
    /// Denied, missing bucket, bad request: retry slowly, tell the admin.
    Permanent,
}

#[derive(Debug, Clone)]
pub struct BackendError {
    pub kind: ErrorKind,
    pub message: String,
    /// The failure concerns this one path (a name the store cannot hold, a
    /// changed source), not the backend as a whole.
    pub path_only: bool,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError {
            kind,
            message: message.into(),
            path_only: false,
        }
    }

    /// Marks the failure as one of this path only.
    pub fn for_path(mut self) -> BackendError {
        self.path_only = true;
        self
    }
    pub fn transient(message: impl Into<String>) -> BackendError {
        BackendError::new(ErrorKind::Transient, message)
    }
    pub fn permanent(message: impl Into<String>) -> BackendError {
        BackendError::new(ErrorKind::Permanent, message)
    }
    pub fn not_found(message: impl Into<String>) -> BackendError {
        BackendError::new(ErrorKind::NotFound, message)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

pub type BResult<T> = Result<T, BackendError>;

/// What an entry in the backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    File,
    Dir,
    Symlink,
}

/// Metadata that travels with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjMeta {
    pub sha256: Option<[u8; 32]>,
    pub mtime: Option<Timestamp>,
    /// Permission bits (07777).
    pub mode: Option<u32>,
    /// The SHA-256 of the version this one replaced, as its writer last saw
    /// the path (`NO_BASE`: it saw nothing there). A host that finds a new
    /// object whose base is not the version it holds knows the two writes
    /// were concurrent, even on stores that ignore conditional writes.
    pub base: Option<[u8; 32]>,
}

/// The `base` of an object written where its writer saw none.
pub const NO_BASE: [u8; 32] = [0; 32];

/// One entry as listed or headed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjInfo {
    /// Path inside the namespace, without a trailing slash.
    pub key: String,
    pub kind: ObjKind,
    pub size: u64,
    /// Changes whenever the content (or, for a local directory, the file)
    /// changes.
    pub etag: String,
    /// Filled by `head`; a listing fills it only where the store hands it
    /// over at no cost (WebDAV).
    pub meta: Option<ObjMeta>,
    /// An identity of the entry that survives renames, where the store has
    /// one (Nextcloud's `oc:fileid`): the same id at a new path after a
    /// refresh is a rename made elsewhere, not a delete and a new file.
    pub file_id: Option<String>,
}

/// What a backend can keep and do; the sidecar and the contract tests ask
/// rather than assume. `Capabilities::DEFAULT` for object stores and local
/// directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Symlinks are stored; otherwise `put_symlink` fails for the path
    /// (permanent, of that path only) and symlinks stay local.
    pub symlinks: bool,
    /// `ObjMeta::mode` travels with a file.
    pub mode: bool,
    /// `ObjMeta::base` travels with a file.
    pub base: bool,
    /// mtime is kept to the nanosecond; otherwise whole seconds.
    pub mtime_ns: bool,
    /// Multipart parts are assembled by the store; otherwise the backend
    /// spools them on local disk and sends one PUT at `multipart_finish`
    /// (a caller may then prefer one `put`).
    pub server_side_parts: bool,
    /// An unfinished multipart upload outlives this process, and
    /// `multipart_resume` lists the parts it holds.
    pub resumable_uploads: bool,
    /// `rename` is one step of the store's own (WebDAV `MOVE`): the sidecar
    /// moves an object that was renamed here instead of copying it and
    /// deleting the old one.
    pub renames: bool,
}

impl Capabilities {
    /// Everything kept, parts assembled by the store, no resumption.
    pub const DEFAULT: Capabilities = Capabilities {
        symlinks: true,
        mode: true,
        base: true,
        mtime_ns: true,
        server_side_parts: true,
        resumable_uploads: false,
        renames: false,
    };

    /// What of `meta` a file written with it keeps here.
    pub fn kept(&self, meta: &ObjMeta) -> ObjMeta {
        ObjMeta {
            sha256: meta.sha256,
            mtime: meta.mtime.map(|t| {
                if self.mtime_ns {
                    t
                } else {
                    Timestamp {
                        sec: t.sec,
                        nsec: 0,
                    }
                }
            }),
            mode: meta.mode.filter(|_| self.mode),
            base: meta.base.filter(|_| self.base),
        }
    }
}

/// One part an unfinished multipart upload holds (`multipart_resume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    /// What `multipart_finish` takes for the part.
    pub etag: String,
}

/// A condition on what the backend holds at a key when a write lands, so
/// that a change made meanwhile by someone else is never overwritten.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cond {
    #[default]
    Any,
    /// Only if the object still has this ETag.
    IfMatch(String),
    /// Only if there is no object.
    IfAbsent,
}

/// An upload in parts; parts may be sent in any order and in parallel.
#[derive(Debug, Clone)]
pub struct Multipart {
    pub key: String,
    pub id: String,
    /// Size of the whole object.
    pub size: u64,
    /// The metadata the finished object gets.
    pub meta: ObjMeta,
    /// The condition the completion is subject to.
    pub cond: Cond,
}

/// One store that namespaces push to: paths and byte ranges, nothing about
/// inodes. Implementations: `local`, `s3`, `memory` (tests and fakes), and
/// decorators that wrap any of them (`fault`, `retry`). Shared as
/// `Arc<dyn Backend>`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A human description, without secrets: `s3 bucket corp at https://…`.
    fn describe(&self) -> String;

    /// What this backend keeps and does (known for sure once `check` has
    /// run: a WebDAV server's flavor is asked of it).
    fn capabilities(&self) -> Capabilities {
        Capabilities::DEFAULT
    }

    /// Checks that the backend is reachable and usable (bucket exists,
    /// credentials accepted).
    async fn check(&self) -> BResult<()>;

    /// Stores `data` as the whole object, only if `cond` holds when it lands
    /// (else a transient error of this path: the caller looks again);
    /// returns its ETag once the backend confirmed it.
    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String>;

    async fn multipart_begin(&self, key: &str, size: u64, meta: &ObjMeta) -> BResult<Multipart>;

    /// Sends part `number` (from 1), which starts at byte `offset`.
    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String>;

    /// Completes the upload; `parts` are (number, etag) in order. Returns the
    /// object's ETag.
    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String>;

    async fn multipart_abort(&self, mp: &Multipart);

    /// The parts an unfinished upload begun earlier (perhaps by a process
    /// that was killed) already holds, so that a caller that kept `mp`
    /// (its key, id, size and metadata) sends only the missing ones and
    /// then finishes it. `None`: nothing to resume (the upload is gone, or
    /// this backend cannot resume): begin again. The default: `None`.
    async fn multipart_resume(&self, mp: &Multipart) -> BResult<Option<Vec<PartInfo>>> {
        let _ = mp;
        Ok(None)
    }

    /// `len` bytes from `offset` (fewer only at the end of the object); with
    /// `if_match`, only while the object has that ETag (else an error: never
    /// bytes of another version).
    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>>;

    /// The entry at `key` (file, symlink or directory marker), with metadata.
    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>>;

    /// Every entry under `prefix` (a path inside the namespace, "" for all),
    /// recursively.
    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>>;

    /// Removes a file or symlink, only if `cond` holds (else a transient
    /// error of this path); absent is not an error.
    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()>;

    /// The entries directly in `prefix` (one level: files and symlinks
    /// with their ETags, folders as `ObjKind::Dir`, also those only implied
    /// by deeper keys), where the store lists one level for less than
    /// `list` lists the tree; `None` where it cannot (the caller asks
    /// otherwise).
    async fn list_dir(&self, _prefix: &str) -> BResult<Option<Vec<ObjInfo>>> {
        Ok(None)
    }

    /// Removes many files or symlinks in one request (at most
    /// `DELETE_BATCH_MAX`), each only if it still has the ETag given with
    /// it, on stores that honour that (`batch_honours_etags` finds out);
    /// a key ending in `/` is a directory's marker (as `delete_dir`; its
    /// ETag is not looked at). `None` where the store has no such request
    /// (the caller deletes one by one). Answers each key in order: `Ok` if
    /// it is gone (absent is not an error), else its error (a failed ETag:
    /// transient, of that path).
    async fn delete_batch(&self, _items: &[(String, String)]) -> BResult<Option<Vec<BResult<()>>>> {
        Ok(None)
    }

    /// Copies `src` to `dst` inside the backend (never through this
    /// machine), giving `dst` the metadata `meta`; with `src_etag`, only if
    /// the source still has that ETag, and only if `cond` holds at `dst`.
    /// `src == dst` rewrites the metadata only.
    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String>;

    /// Renames the file `src` to `dst` inside the backend, only if `src`
    /// still has ETag `src_etag` (when given) and nothing is at `dst`;
    /// returns the ETag at `dst`. Errors as `copy`'s: a changed source is
    /// permanent for the path (the caller uploads instead), something at
    /// `dst` a transient refusal (look again).
    ///
    /// The default copies (with the source's metadata, "if absent") then
    /// deletes the source by its ETag: not atomic. A source changed between
    /// the two is someone else's newer write and stays; a failed delete
    /// leaves both (the caller looks again). Stores with a rename of their
    /// own (WebDAV `MOVE`) override it, and may rename directories too.
    async fn rename(&self, src: &str, src_etag: Option<&str>, dst: &str) -> BResult<String> {
        rename_by_copy(self, src, src_etag, dst).await
    }

    /// Makes the directory (marker) `key`, only if `cond` holds there (a
    /// directory already there satisfies `IfAbsent`).
    async fn put_dir(&self, key: &str, meta: &ObjMeta, cond: &Cond) -> BResult<String>;

    /// Removes the directory (marker) `key`.
    async fn delete_dir(&self, key: &str) -> BResult<()>;

    /// Stores a symlink at `key`, only if `cond` holds there.
    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String>;

    /// The target of the symlink at `key`.
    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>>;
}

/// The most keys one `Backend::delete_batch` takes (S3's `DeleteObjects`
/// limit).
pub const DELETE_BATCH_MAX: usize = 1000;

/// `Backend::rename` by a copy ("if absent", with the source's metadata)
/// and a delete of the source by its ETag: what stores without a move of
/// their own do.
pub async fn rename_by_copy<B: Backend + ?Sized>(
    be: &B,
    src: &str,
    src_etag: Option<&str>,
    dst: &str,
) -> BResult<String> {
    let Some(h) = be.head(src).await? else {
        return Err(BackendError::not_found(format!("{src} does not exist")).for_path());
    };
    if h.kind == ObjKind::Dir {
        return Err(BackendError::permanent(format!(
            "{src} is a directory; this backend renames files only"
        ))
        .for_path());
    }
    if src_etag.is_some_and(|e| e != h.etag) {
        return Err(BackendError::permanent(format!(
            "{src} changed since it was recorded; not renamed"
        ))
        .for_path());
    }
    let meta = h.meta.clone().unwrap_or_default();
    let etag = be
        .copy(src, Some(&h.etag), dst, &meta, &Cond::IfAbsent)
        .await?;
    match be.delete(src, &Cond::IfMatch(h.etag.clone())).await {
        Ok(()) => Ok(etag),
        Err(e) if e.path_only && e.kind == ErrorKind::Transient => {
            tracing::warn!(from = %src, to = %dst, "renamed by copy; the source changed meanwhile and stays");
            Ok(etag)
        }
        Err(e) => Err(e),
    }
}

/// Whether `cond` holds for what is at a key now (`etag` of a file or
/// symlink; `None` if nothing is there).
pub fn cond_holds(cond: &Cond, etag: Option<&str>) -> bool {
    match cond {
        Cond::Any => true,
        Cond::IfAbsent => etag.is_none(),
        Cond::IfMatch(e) => etag == Some(e.as_str()),
    }
}

/// The error of a write whose condition did not hold.
pub fn cond_refused(key: &str) -> BackendError {
    BackendError::transient(format!("{key} changed meanwhile; not overwritten")).for_path()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// mtime as object metadata: seconds with a nanosecond fraction, the form
/// rclone also reads and writes.
pub fn format_mtime(t: Timestamp) -> String {
    format!("{}.{:09}", t.sec, t.nsec)
}

pub fn parse_mtime(s: &str) -> Option<Timestamp> {
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nsec = format!("{digits:0<9}").parse().ok()?;
    }
    Some(Timestamp { sec, nsec })
}

/// Checks a key as a backend path: UTF-8 (the caller's job), no empty, `.`
/// or `..` segment, no leading slash.
pub fn check_key(key: &str) -> BResult<()> {
    if key.is_empty()
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(BackendError::permanent(format!("invalid path {key:?}")).for_path());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtime_round_trips_and_reads_short_fractions() {
        let t = Timestamp {
            sec: 1_700_000_000,
            nsec: 5,
        };
        assert_eq!(parse_mtime(&format_mtime(t)), Some(t));
        assert_eq!(
            parse_mtime("12.5"),
            Some(Timestamp {
                sec: 12,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_mtime("x"), None);
    }

    #[test]
    fn hex_round_trips() {
        let h = [7u8; 32];
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32("zz"), None);
    }

    #[test]
    fn bad_keys_are_refused() {
        for k in ["", "/a", "a//b", "a/./b", "../x", "a/"] {
            assert!(check_key(k).is_err(), "{k}");
        }
        assert!(check_key("a/b c/d.txt").is_ok());
    }
}
