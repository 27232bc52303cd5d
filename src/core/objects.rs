//! Whole-file operations, as the HTTP API uses them.
//!
//! - A file is stored by streaming into an inode that has no name yet
//!   (`upload_begin`/`upload_write`), then put in place in one transaction
//!   (`upload_finish`): readers of the path see the old file or the new one,
//!   whole, never a part. An upload that is abandoned, or interrupted by a
//!   crash, leaves an inode with no name, which the last close or the next
//!   mount's recovery removes.
//! - A file is read from a snapshot of its committed version (`file_snapshot`,
//!   `snap_read`): its blocks are pinned, so the read is consistent even if
//!   the file changes meanwhile, and the state lock is not held while bytes
//!   are read.
//! - Paths are name lists from the root (the first name is the namespace);
//!   symlinks are never followed.

use crate::blocks::{BLOCK_SIZE, BlockId, INLINE_MAX};
use crate::core::acl::{self, ACL_ACCESS, ACL_DEFAULT};
use crate::core::inode::{dir_row, row, touch_dir};
use crate::core::sync::{FileSnap, Invalidate, mark_name};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, OpenMode, State, check_name};
use crate::meta::{self, BlockRef, InodeRow};

/// The extended attribute that holds a file's media type (the name the
/// freedesktop.org shared MIME database and Apache's mod_mime_xattr use).
pub const MIME_XATTR: &[u8] = b"user.mime_type";

/// Committed data of an upload is flushed to the block store this often, so
/// that an upload holds at most this much in memory whatever its size.
const UPLOAD_COMMIT_EVERY: u64 = 8 * BLOCK_SIZE;

/// What `place` puts at a path.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// An upload's inode, written and still without a name.
    Upload(InodeNo),
    /// Bytes of a file not made yet, shorter than an inline block.
    Small(&'a [u8]),
}

/// The block list of a file holding `data` (shorter than an inline block):
/// one block, or none if it is all zeros (a hole, as a commit of written
/// bytes makes it).
fn small_blocks(data: &[u8]) -> Vec<(u64, BlockRef)> {
    if data.iter().all(|&b| b == 0) {
        return Vec::new();
    }
    vec![(
        0,
        BlockRef {
            id: BlockId::of(data),
            len: data.len() as u32,
        },
    )]
}

/// An upload in progress: an inode with no name, open for writing.
#[derive(Debug)]
pub struct Upload {
    ino: InodeNo,
    fh: HandleId,
    written: u64,
    committed: u64,
}

impl Upload {
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }
}

/// Where a finished upload went.
#[derive(Debug, Clone)]
pub struct Placed {
    pub ino: InodeNo,
    pub size: u64,
    /// The path replaced an earlier entry (a file) rather than being new.
    pub replaced: bool,
    /// `namespace/path` of a file that already held the same content (the
    /// replaced file itself counts), if any.
    pub existing: Option<Vec<u8>>,
}

/// Entries per page of a listing.
pub const LIST_PAGE: usize = 1000;

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: Timestamp,
    /// Known only for files whose hash has been computed.
    pub sha256: Option<[u8; 32]>,
}

/// The entity tag the API gives a file's committed content: its SHA-256
/// where known, else the version it names (inode and content commit),
/// which no other content ever has: inode numbers are never reused and
/// every content commit counts up. A file only in the backend whose hash
/// is not known gets the second, so that telling of it downloads nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Sha256([u8; 32]),
    Version(InodeNo, i64),
}

impl Tag {
    /// Whether `r` holds the content this tag was given to.
    pub fn matches(&self, r: &InodeRow) -> bool {
        match self {
            Tag::Sha256(s) => r.sha256.as_deref() == Some(&s[..]),
            Tag::Version(ino, v) => r.attr.ino == *ino && r.version == *v,
        }
    }

    /// A tag as `Display` writes it (without quotes).
    pub fn parse(s: &str) -> Option<Tag> {
        if let Some(sha) = crate::backend::unhex32(s) {
            return Some(Tag::Sha256(sha));
        }
        let (ino, v) = s.strip_prefix('v')?.split_once('.')?;
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !digits(ino) || !digits(v) {
            return None;
        }
        Some(Tag::Version(InodeNo(ino.parse().ok()?), v.parse().ok()?))
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tag::Sha256(s) => f.write_str(&crate::blocks::hex(s)),
            Tag::Version(ino, v) => write!(f, "v{}.{v}", ino.0),
        }
    }
}

/// What an API write or removal requires of the entry at its path: HTTP's
/// `If-Match` and `If-None-Match`, with the entity tags GET hands out.
/// Checked under the state lock with the change itself, so two clients
/// that read the same version cannot both replace it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    /// `If-Match`: a regular file is there whose content one of these tags
    /// names (`Some(None)`: any file, `*`). A file whose hash is not known
    /// matches no SHA-256 (its content changed since that tag was handed
    /// out).
    pub if_match: Option<Option<Vec<Tag>>>,
    /// `If-None-Match`: nothing is there (`Some(None)`, `*`), or nothing
    /// whose content one of these tags names.
    pub if_none_match: Option<Option<Vec<Tag>>>,
}

impl Precondition {
    /// No condition.
    pub fn is_none(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// Whether `entry` (what the path holds now, if anything) meets it.
    pub fn holds(&self, entry: Option<&InodeRow>) -> bool {
        let file = entry.filter(|r| r.attr.kind == FileKind::File);
        let listed = |tags: &[Tag]| file.is_some_and(|r| tags.iter().any(|t| t.matches(r)));
        let matched = match &self.if_match {
            None => true,
            Some(None) => file.is_some(),
            Some(Some(tags)) => listed(tags),
        };
        let none_matched = match &self.if_none_match {
            None => true,
            Some(None) => entry.is_none(),
            Some(Some(tags)) => !listed(tags),
        };
        matched && none_matched
    }
}

impl Locker {
    /// The entry `names` lead to from the root, without following symlinks.
    fn walk_locked(st: &State, names: &[&[u8]]) -> CoreResult<InodeRow> {
        let mut cur = row(&st.conn, InodeNo::ROOT)?;
        for n in names {
            if cur.attr.kind != FileKind::Dir {
                return Err(CoreError::NotDir);
            }
            cur = meta::lookup_row(&st.conn, cur.attr.ino, n)?.ok_or(CoreError::NotFound)?;
        }
        let mut a = cur.attr;
        Locker::overlay(st, &mut a);
        Ok(InodeRow { attr: a, ..cur })
    }

    /// The attributes the kernel may cache of every directory along
    /// `names` (which a change below them can alter: mtime, links).
    fn dirs_view(st: &State, names: &[&[u8]]) -> CoreResult<Vec<Invalidate>> {
        let mut out = Vec::new();
        let mut cur = InodeNo::ROOT;
        for n in names {
            match meta::lookup(&st.conn, cur, n)? {
                Some(next) => {
                    out.push(Invalidate::Inode(next));
                    cur = next;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// The entry at `names` (committed metadata, uncommitted size overlaid).
    pub fn stat_names(&self, names: &[&[u8]]) -> CoreResult<InodeRow> {
        Locker::walk_locked(&self.lock(), names)
    }

    /// The media type stored with a file, if any.
    pub fn mime_type(&self, ino: InodeNo) -> CoreResult<Option<Vec<u8>>> {
        Ok(meta::get_xattr(&self.lock().conn, ino, MIME_XATTR)?)
    }

    /// The entries of directory `ino`, with their attributes.
    pub fn list(&self, ino: InodeNo) -> CoreResult<Vec<ListEntry>> {
        let mut out: Vec<ListEntry> = Vec::new();
        loop {
            let page = self.list_page(ino, out.last().map(|e| e.name.as_slice()), LIST_PAGE)?;
            let more = page.len() == LIST_PAGE;
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Up to `limit` entries of directory `ino` after the name `after`, in
    /// name order. The state lock is held for one page only, so listing a
    /// huge directory (page by page) never holds up other requests for
    /// long; entries added or removed between pages may or may not appear.
    pub fn list_page(
        &self,
        ino: InodeNo,
        after: Option<&[u8]>,
        limit: usize,
    ) -> CoreResult<Vec<ListEntry>> {
        let st = self.lock();
        dir_row(&st.conn, ino)?;
        let page = meta::list_dir_page(&st.conn, ino, after, limit)?;
        Ok(page
            .into_iter()
            .map(|e| {
                let (mut size, mut mtime, mut clean) = (e.size, e.mtime, true);
                if let Some(fs) = st.files.get(&e.ino) {
                    size = fs.size;
                    mtime = fs.mtime.unwrap_or(mtime);
                    clean = fs.is_clean_pub();
                }
                ListEntry {
                    name: e.name,
                    kind: e.kind,
                    size,
                    mtime,
                    sha256: e
                        .sha256
                        .as_deref()
                        .filter(|_| clean && e.kind == FileKind::File)
                        .and_then(|s| s.try_into().ok()),
                }
            })
            .collect())
    }

    /// Starts an upload: a regular file with no name, open for writing.
    pub fn upload_begin(&self) -> CoreResult<Upload> {
        let ino = {
            let mut st = self.lock();
            st.tx(|tx| {
                let attr =
                    Attr::new_root_owned(InodeNo(0), FileKind::File, 0o644, 0, Timestamp::now());
                Ok(meta::insert_inode(tx, &attr, None, None)?)
            })?
        };
        let fh = self.open(
            ino,
            OpenMode {
                write: true,
                append: false,
                truncate: false,
            },
        );
        let fh = match fh {
            Ok(fh) => fh,
            Err(e) => {
                let mut st = self.lock();
                self.purge_locked(&mut st, ino)?;
                return Err(e);
            }
        };
        // The last close removes it unless it got a name by then. The API
        // hashes the body as it comes: no running hash here.
        if let Some(fs) = self.lock().files.get_mut(&ino) {
            fs.maybe_unlinked = true;
            fs.seq = None;
        }
        Ok(Upload {
            ino,
            fh,
            written: 0,
            committed: 0,
        })
    }

    /// Appends `data` to an upload.
    pub fn upload_write(&self, up: &mut Upload, data: &[u8]) -> CoreResult<()> {
        let mut off = 0;
        while off < data.len() {
            let n = self.write(up.fh, up.written, &data[off..])? as usize;
            if n == 0 {
                return Err(CoreError::NoSpace);
            }
            off += n;
            up.written += n as u64;
        }
        if up.written - up.committed >= UPLOAD_COMMIT_EVERY {
            self.flush(up.fh)?;
            up.committed = up.written;
        }
        Ok(())
    }

    /// Abandons an upload; nothing of it stays.
    pub fn upload_abort(&self, up: Upload) {
        if let Err(e) = self.release(up.fh) {
            tracing::warn!(error = %e, "could not drop an abandoned upload; the next mount removes it");
        }
    }

    /// `upload_finish`, if the file at the path meets `cond` (checked under
    /// the lock, with the placement).
    #[allow(clippy::too_many_arguments)]
    pub fn upload_finish_if(
        &self,
        up: Upload,
        dirs: &[&[u8]],
        name: &[u8],
        sha256: [u8; 32],
        mime: Option<&[u8]>,
        visible: &dyn Fn(&[u8]) -> bool,
        cond: &Precondition,
    ) -> CoreResult<Placed> {
        let r = self.place(
            Content::Upload(up.ino),
            dirs,
            name,
            sha256,
            mime,
            visible,
            cond,
        );
        let released = self.release(up.fh);
        let placed = r?;
        released?;
        Ok(self.invalidate_placed(placed))
    }

    /// `put_small`, if the file at the path meets `cond` (checked under
    /// the lock, with the placement).
    #[allow(clippy::too_many_arguments)]
    pub fn put_small_if(
        &self,
        data: &[u8],
        dirs: &[&[u8]],
        name: &[u8],
        sha256: [u8; 32],
        mime: Option<&[u8]>,
        visible: &dyn Fn(&[u8]) -> bool,
        cond: &Precondition,
    ) -> CoreResult<Placed> {
        if data.len() as u64 >= INLINE_MAX as u64 {
            return Err(CoreError::Invalid(
                "put_small takes less than an inline block",
            ));
        }
        let placed = self.place(
            Content::Small(data),
            dirs,
            name,
            sha256,
            mime,
            visible,
            cond,
        )?;
        Ok(self.invalidate_placed(placed))
    }

    /// Whether the entry at `names` meets `cond` now: an early answer for
    /// a large upload, before its body comes (the placement checks again).
    pub fn precondition_holds(&self, names: &[&[u8]], cond: &Precondition) -> CoreResult<bool> {
        if cond.is_none() {
            return Ok(true);
        }
        Locker::precondition_holds_locked(&self.lock(), names, cond)
    }

    /// `precondition_holds`, under the lock the caller holds.
    fn precondition_holds_locked(
        st: &State,
        names: &[&[u8]],
        cond: &Precondition,
    ) -> CoreResult<bool> {
        match Locker::walk_locked(st, names) {
            Ok(r) => Ok(cond.holds(Some(&r))),
            Err(CoreError::NotFound) => Ok(cond.holds(None)),
            Err(e) => Err(e),
        }
    }

    /// Puts a finished upload at `dirs/name` (`dirs` starts with the
    /// namespace; missing directories are made, owned like their parent),
    /// replacing a file there, and makes it durable. The new file keeps the
    /// permissions and owner of the file it replaces. `sha256` is the hash
    /// of the uploaded bytes, computed as they arrived. A file that already
    /// held the content is reported only from a namespace `visible` accepts.
    pub fn upload_finish(
        &self,
        up: Upload,
        dirs: &[&[u8]],
        name: &[u8],
        sha256: [u8; 32],
        mime: Option<&[u8]>,
        visible: &dyn Fn(&[u8]) -> bool,
    ) -> CoreResult<Placed> {
        let cond = Precondition::default();
        self.upload_finish_if(up, dirs, name, sha256, mime, visible, &cond)
    }

    /// Tells the kernel what a placement made stale; returns the placement.
    fn invalidate_placed(&self, (placed, stale): (Placed, Vec<Invalidate>)) -> Placed {
        if let Some(inval) = self.invalidator.get() {
            inval(&stale);
        }
        placed
    }

    /// Stores `data` (shorter than an inline block, so its bytes go into
    /// the metadata database) at `dirs/name` as `upload_finish` would store
    /// an upload of it, in one transaction and without an open file: the
    /// file's inode, content and name appear together or not at all.
    pub fn put_small(
        &self,
        data: &[u8],
        dirs: &[&[u8]],
        name: &[u8],
        sha256: [u8; 32],
        mime: Option<&[u8]>,
        visible: &dyn Fn(&[u8]) -> bool,
    ) -> CoreResult<Placed> {
        let cond = Precondition::default();
        self.put_small_if(data, dirs, name, sha256, mime, visible, &cond)
    }

    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        content: Content<'_>,
        dirs: &[&[u8]],
        name: &[u8],
        sha256: [u8; 32],
        mime: Option<&[u8]>,
        visible: &dyn Fn(&[u8]) -> bool,
        cond: &Precondition,
    ) -> CoreResult<(Placed, Vec<Invalidate>)> {
        check_name(name)?;
        if let Content::Upload(ino) = content {
            // The data: committed, and its blocks on disk, without holding
            // the state lock over the block syncs (the inode names them, so
            // they stay).
            let ids: Vec<BlockId> = {
                let mut st = self.lock();
                self.commit_locked(&mut st, ino)?;
                meta::file_blocks_from(&st.conn, ino, 0)?
                    .into_iter()
                    .map(|(_, b)| b.id)
                    .collect()
            };
            self.blocks.sync_blocks(&ids)?;
        }
        let mut st_guard = self.lock();
        let st = &mut *st_guard;
        if !cond.is_none() {
            // Before anything changes (no directory is made for a write
            // that is refused).
            let mut all = dirs.to_vec();
            all.push(name);
            if !Locker::precondition_holds_locked(st, &all, cond)? {
                return Err(CoreError::PreconditionFailed);
            }
        }
        // Directories made for a placement that then fails are removed
        // again, under the same hold of the lock (so still empty): a
        // refused write leaves nothing.
        let mut made = Vec::new();
        let placed = (|| {
            let dir = self.make_dirs_locked(st, dirs, &mut made)?;
            // Directories along the path may gain entries (and links): the
            // kernel must not keep their old attributes.
            let dir_attrs = Locker::dirs_view(st, dirs)?;
            let old = meta::lookup_row(&st.conn, dir, name)?;
            if let Some(o) = &old
                && o.attr.kind == FileKind::Dir
            {
                return Err(CoreError::IsDir);
            }
            let (this, size, blocks) = match content {
                Content::Upload(ino) => (
                    Some(ino),
                    row(&st.conn, ino)?.attr.size,
                    meta::file_blocks_from(&st.conn, ino, 0)?,
                ),
                Content::Small(data) => (None, data.len() as u64, small_blocks(data)),
            };
            let existing = self.same_content_locked(st, this, size, &blocks, &sha256, visible)?;
            let old_open = old
                .as_ref()
                .is_some_and(|o| Locker::is_open(st, o.attr.ino));
            let parent = row(&st.conn, dir)?.attr;
            let acls = self.acls.load(std::sync::atomic::Ordering::Acquire);
            let stats = &self.blocks.stats;
            let m = st.mark();
            let (ino, size, freed) = st.tx(|tx| {
                let now = Timestamp::now();
                let mut freed = Vec::new();
                let ino = match content {
                    Content::Upload(ino) => ino,
                    Content::Small(data) => {
                        let mut a = Attr::new_root_owned(InodeNo(0), FileKind::File, 0o644, 0, now);
                        a.size = data.len() as u64;
                        let ino = meta::insert_inode(tx, &a, None, None)?;
                        for (idx, r) in &blocks {
                            if meta::put_inline_block(tx, &r.id, data)? {
                                stats
                                    .writes
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            meta::incref_block(tx, &r.id, r.len)?;
                            meta::put_file_block(tx, ino, *idx, *r)?;
                        }
                        let bytes: i64 = blocks.iter().map(|(_, r)| r.len as i64).sum();
                        meta::add_alloc(tx, ino, bytes)?;
                        ino
                    }
                };
                let version = meta::content_version(tx, ino)?;
                let mut a = row(tx, ino)?.attr;
                a.uid = parent.uid;
                a.gid = parent.gid;
                if acls {
                    // The replaced file's ACL stays with its mode; a new file
                    // takes the directory's default ACL.
                    match &old {
                        Some(o) if o.attr.kind == FileKind::File => {
                            if let Some(v) = meta::get_xattr(tx, o.attr.ino, ACL_ACCESS)? {
                                meta::set_xattr(tx, ino, ACL_ACCESS, &v)?;
                            }
                        }
                        _ => {
                            if let Some(d) = acl::load(tx, dir, ACL_DEFAULT)? {
                                let i = acl::inherit(&d, a.perm, false);
                                a.perm = i.perm;
                                if let Some(v) = &i.access {
                                    meta::set_xattr(tx, ino, ACL_ACCESS, v)?;
                                }
                            }
                        }
                    }
                }
                if let Some(o) = &old {
                    if o.attr.kind == FileKind::File {
                        a.perm = o.attr.perm;
                        a.uid = o.attr.uid;
                        a.gid = o.attr.gid;
                    }
                    meta::delete_dentry(tx, dir, name)?;
                    if Locker::drop_link(old_open, tx, &o.attr, now)? && !old_open {
                        freed = Locker::purge_rows(tx, o.attr.ino)?;
                    }
                }
                a.nlink = 1;
                a.ctime = now;
                meta::update_attr(tx, &a)?;
                meta::insert_dentry(tx, dir, name, ino, a.kind)?;
                touch_dir(tx, dir, now, 0)?;
                meta::set_sha256(tx, ino, version, &sha256)?;
                if let Some(t) = mime {
                    meta::set_xattr(tx, ino, MIME_XATTR, t)?;
                }
                mark_name(tx, m, dir, name, a.size)?;
                Ok((ino, a.size, freed))
            })?;
            Ok((dir, dir_attrs, old, existing, m, ino, size, freed))
        })();
        let (dir, dir_attrs, old, existing, m, ino, size, freed) = match placed {
            Ok(p) => p,
            Err(e) => {
                self.unmake_dirs_locked(st, &made);
                drop(st_guard);
                // The directory they were made in changed twice (times);
                // told with the lock released, as every invalidation.
                if let (Some((parent, _)), Some(inval)) = (made.first(), self.invalidator.get()) {
                    inval(&[Invalidate::Inode(*parent)]);
                }
                return Err(e);
            }
        };
        if let Some(fs) = st.files.get_mut(&ino) {
            fs.maybe_unlinked = false;
        }
        if let Some(o) = &old {
            self.forget_file(st, o.attr.ino);
        }
        self.free_blocks(st, &freed);
        let commit = st.commits;
        if m.is_some() {
            self.wake_sync();
        }
        // The metadata: durable before the answer, in a barrier shared with
        // concurrent uploads.
        drop(st_guard);
        let mut inval = vec![Invalidate::Entry(dir, name.to_vec())];
        inval.extend(dir_attrs);
        if let Some(o) = &old {
            inval.push(Invalidate::Inode(o.attr.ino));
        }
        if let Err(e) = self.durable_upto(commit) {
            // The file is in place (a restart replays it) but not durable:
            // the request fails, and the kernel still learns of the change.
            if let Some(f) = self.invalidator.get() {
                f(&inval);
            }
            return Err(e);
        }
        Ok((
            Placed {
                ino,
                size,
                replaced: old.is_some(),
                existing,
            },
            inval,
        ))
    }

    /// Removes the directories `make_dirs_locked` made (parent and name),
    /// the deepest first; one that cannot be removed stays, logged.
    fn unmake_dirs_locked(&self, st: &mut State, made: &[(InodeNo, Vec<u8>)]) {
        for (parent, name) in made.iter().rev() {
            if let Err(e) = self.rmdir_locked(st, *parent, name) {
                tracing::warn!(
                    error = %e,
                    "a directory made for a write that failed could not be removed"
                );
                return;
            }
        }
    }

    /// Makes the directories `dirs` (from the root; the first is the
    /// namespace, which must exist) where missing, adding each one made to
    /// `made` (parent, name); returns the last one.
    fn make_dirs_locked(
        &self,
        st: &mut State,
        dirs: &[&[u8]],
        made: &mut Vec<(InodeNo, Vec<u8>)>,
    ) -> CoreResult<InodeNo> {
        let (ns, rest) = dirs
            .split_first()
            .ok_or(CoreError::Invalid("no namespace"))?;
        let mut cur = meta::lookup_row(&st.conn, InodeNo::ROOT, ns)?.ok_or(CoreError::NotFound)?;
        for n in rest {
            if cur.attr.kind != FileKind::Dir {
                return Err(CoreError::NotDir);
            }
            cur = match meta::lookup_row(&st.conn, cur.attr.ino, n)? {
                Some(r) => r,
                None => {
                    let owner = Caller {
                        uid: cur.attr.uid,
                        gid: cur.attr.gid,
                        pid: 0,
                        umask: 0,
                    };
                    let a = self.make_node_locked(st, &owner, cur.attr.ino, n, 0o040755, None)?;
                    made.push((cur.attr.ino, n.to_vec()));
                    row(&st.conn, a.ino)?
                }
            };
        }
        if cur.attr.kind != FileKind::Dir {
            return Err(CoreError::NotDir);
        }
        Ok(cur.attr.ino)
    }

    /// `namespace/path` of a named file other than `ino` whose committed
    /// content hashes to `sha256`, in a namespace `visible` accepts.
    fn same_content_locked(
        &self,
        st: &State,
        ino: Option<InodeNo>,
        size: u64,
        mine: &[(u64, BlockRef)],
        sha256: &[u8; 32],
        visible: &dyn Fn(&[u8]) -> bool,
    ) -> CoreResult<Option<Vec<u8>>> {
        let shown = |p: Option<Vec<u8>>| {
            p.filter(|p| visible(p.split(|&c| c == b'/').next().unwrap_or(b"")))
        };
        for other in meta::inodes_with_sha(&st.conn, sha256)? {
            if Some(other) == ino {
                continue;
            }
            if let Some(p) = shown(Locker::path_locked(st, other)?) {
                return Ok(Some(p));
            }
        }
        // Files whose hash was never asked for: the same content has the
        // same block list (blocks are named by their SHA-256).
        let Some((0, first)) = mine.first() else {
            return Ok(None);
        };
        for other in meta::inodes_with_first_block(&st.conn, &first.id)? {
            if Some(other) == ino {
                continue;
            }
            let Some(r) = meta::get_inode(&st.conn, other)? else {
                continue;
            };
            if r.attr.kind != FileKind::File || r.attr.size != size || r.remote_only {
                continue;
            }
            if meta::file_blocks_from(&st.conn, other, 0)? != mine {
                continue;
            }
            if let Some(p) = shown(Locker::path_locked(st, other)?) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The path of `ino` from the root, if it has a name.
    fn path_locked(st: &State, ino: InodeNo) -> CoreResult<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino;
        while cur != InodeNo::ROOT {
            let Some((parent, name)) = meta::any_name(&st.conn, cur)? else {
                return Ok(None);
            };
            parts.push(name);
            cur = parent;
            if parts.len() > 4096 {
                return Err(CoreError::Corrupt("directory cycle".into()));
            }
        }
        parts.reverse();
        Ok(Some(parts.join(&b'/')))
    }

    /// Removes the file at `names` (not a directory).
    pub fn remove_names(&self, names: &[&[u8]]) -> CoreResult<()> {
        self.remove_names_if(names, &Precondition::default())
    }

    /// `remove_names`, if the file meets `cond` (checked under the lock,
    /// with the removal).
    pub fn remove_names_if(&self, names: &[&[u8]], cond: &Precondition) -> CoreResult<()> {
        let (name, dirs) = names.split_last().ok_or(CoreError::IsDir)?;
        if dirs.is_empty() {
            return Err(CoreError::IsDir);
        }
        let (dir, gone, commit) = {
            let mut st = self.lock();
            let st = &mut *st;
            let d = Locker::walk_locked(st, dirs)?;
            if d.attr.kind != FileKind::Dir {
                return Err(CoreError::NotDir);
            }
            let target =
                meta::lookup_row(&st.conn, d.attr.ino, name)?.ok_or(CoreError::NotFound)?;
            if target.attr.kind == FileKind::Dir {
                return Err(CoreError::IsDir);
            }
            if !cond.holds(Some(&target)) {
                return Err(CoreError::PreconditionFailed);
            }
            self.unlink_locked(st, d.attr.ino, name)?;
            (d.attr.ino, target.attr.ino, st.commits)
        };
        self.durable_upto(commit)?;
        if let Some(inval) = self.invalidator.get() {
            // The name, the directory's times, and the file's links (it
            // may have other names).
            inval(&[
                Invalidate::Entry(dir, name.to_vec()),
                Invalidate::Inode(dir),
                Invalidate::Inode(gone),
            ]);
        }
        Ok(())
    }

    /// A consistent view of the committed version of file `ino`, its blocks
    /// pinned until `sync_release`. Content known only to a backend is
    /// fetched first, unless it is large enough to be streamed: then the
    /// snapshot reads it by range (see `sync/stream.rs`).
    pub fn file_snapshot(&self, ino: InodeNo) -> CoreResult<FileSnap> {
        self.snapshot_for(ino, true)
    }

    /// `file_snapshot` for a HEAD or a stat: content only in a backend is
    /// not fetched, whatever its size and whether or not its SHA-256 is
    /// known (reading the snapshot after all fetches what is read).
    pub fn file_snapshot_head(&self, ino: InodeNo) -> CoreResult<FileSnap> {
        self.snapshot_for(ino, false)
    }

    /// The entry at `names` and, for a regular file, its snapshot
    /// (`file_snapshot`, or `file_snapshot_head` unless `to_read`). A file
    /// replaced between the look-up and the snapshot (a rename over it, a
    /// PUT) is looked up again: a path that held a file throughout never
    /// reads as missing.
    pub fn snapshot_names(
        &self,
        names: &[&[u8]],
        to_read: bool,
    ) -> CoreResult<(InodeRow, Option<FileSnap>)> {
        self.snapshot_names_with(names, to_read, || {})
    }

    /// `snapshot_names`, running `between` after each look-up (tests).
    pub(crate) fn snapshot_names_with(
        &self,
        names: &[&[u8]],
        to_read: bool,
        mut between: impl FnMut(),
    ) -> CoreResult<(InodeRow, Option<FileSnap>)> {
        let mut tries = 0;
        loop {
            let row = self.stat_names(names)?;
            if row.attr.kind != FileKind::File {
                return Ok((row, None));
            }
            between();
            match self.snapshot_for(row.attr.ino, to_read) {
                Ok(s) => return Ok((row, Some(s))),
                Err(CoreError::NotFound) if tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn snapshot_for(&self, ino: InodeNo, to_read: bool) -> CoreResult<FileSnap> {
        for _ in 0..2 {
            {
                let mut st = self.lock();
                let st = &mut *st;
                let r = meta::get_inode(&st.conn, ino)?.ok_or(CoreError::NotFound)?;
                if r.attr.kind != FileKind::File {
                    return Err(CoreError::Invalid("not a regular file"));
                }
                // A file only in a backend: nothing is fetched to tell of
                // it, and one that is large, or has no SHA-256 to check
                // before serving it, is read by streaming (checked once
                // whole, if it has one), not downloaded first: a HEAD and a
                // GET then agree on its tag.
                if !r.remote_only
                    || !to_read
                    || r.sha256.is_none()
                    || self.streams_reads(r.attr.size)
                {
                    return Locker::snap_file_locked(st, &r);
                }
            }
            self.materialize(ino)?;
        }
        Err(CoreError::Corrupt(format!(
            "inode {} is still only in its backend after a fetch",
            ino.0
        )))
    }

    /// `len` bytes of a snapshot from `offset`, for a reader that goes on
    /// reading in order up to `upto`; blocks evicted from the cache are
    /// fetched from the backend first, with those after them up to `upto`
    /// (at most 8 MiB ahead), and those of a file too large to keep are
    /// passed on from memory, as for a reader through the mount.
    pub fn snap_read(
        &self,
        snap: &FileSnap,
        offset: u64,
        len: u64,
        upto: u64,
    ) -> CoreResult<Vec<u8>> {
        self.snap_read_as(snap, offset, len, upto, crate::core::sync::Purpose::Read)
    }

    /// The SHA-256 of a snapshot's content: the known one, or computed (and
    /// remembered for this version).
    pub fn snap_sha256(&self, snap: &FileSnap) -> CoreResult<[u8; 32]> {
        Ok(self
            .hash_snap(snap, false)?
            .expect("hashed to the end when not asked to stop"))
    }

    /// The entity tag of a snapshot: its SHA-256, computed now if the
    /// content is here and its hash is not known; a file only in the
    /// backend whose hash is not known is not downloaded for it, and gets
    /// its version's tag.
    pub fn snap_tag(&self, snap: &FileSnap) -> CoreResult<Tag> {
        match snap.sha256 {
            None if snap.remote_only => Ok(Tag::Version(snap.ino, snap.version)),
            _ => Ok(Tag::Sha256(self.snap_sha256(snap)?)),
        }
    }

    /// `snap_sha256` for the sidecar: `None`, without hashing the rest,
    /// once the file has no name left (deleted meanwhile: its upload would
    /// be for nothing, and a large one takes long).
    pub fn snap_sha256_while_linked(&self, snap: &FileSnap) -> CoreResult<Option<[u8; 32]>> {
        self.hash_snap(snap, true)
    }

    fn hash_snap(&self, snap: &FileSnap, while_linked: bool) -> CoreResult<Option<[u8; 32]>> {
        if let Some(h) = snap.sha256 {
            return Ok(Some(h));
        }
        // Written in order from its start: hashed as it was written.
        if self.await_digest(snap.ino, snap.version) {
            let st = self.lock();
            if let Some(row) = meta::get_inode(&st.conn, snap.ino)?
                && row.version == snap.version
                && let Some(sha) = row
                    .sha256
                    .as_deref()
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
            {
                return Ok(Some(sha));
            }
        }
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut off = 0;
        let step = 8 * BLOCK_SIZE;
        while off < snap.size {
            if while_linked && off % (8 * step) == 0 && self.sync_unlinked(snap.ino)? {
                return Ok(None);
            }
            let n = (snap.size - off).min(step);
            let d = self.sync_read(snap, off, n)?;
            h.update(&d);
            crate::buf::give(d);
            off += n;
        }
        let sha: [u8; 32] = h.finalize().into();
        let st = self.lock();
        meta::set_sha256(&st.conn, snap.ino, snap.version, &sha)?;
        Ok(Some(sha))
    }
}
