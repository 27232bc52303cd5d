//! Remote apply: taking changes a refresh found in a backend (new, changed
//! and vanished entries) into the local tree, unmarked, and telling the
//! kernel what they made stale.

use std::sync::Arc;

use rusqlite::Connection;

use super::marks::{mark_name, ns_path};
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Locker, State};
use crate::meta;
use crate::meta::sync::{self as msync, REMOTE_DIR, REMOTE_FILE, REMOTE_SYMLINK, RemoteRow};

/// Something the kernel may cache that a change from a backend made stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    /// The name in the directory.
    Entry(InodeNo, Vec<u8>),
    /// The inode's attributes and data.
    Inode(InodeNo),
    /// The inode's attributes only (its cached pages stay).
    Attr(InodeNo),
}

/// What tells the kernel to drop what it caches (the mount installs it).
pub type Invalidator = Arc<dyn Fn(&[Invalidate]) + Send + Sync>;

/// How a change found in the backend was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
    /// A local change is pending (or the entry is open): left for later.
    Skipped,
    /// Both sides changed: the local version was renamed to this name.
    Conflict(Vec<u8>),
}

impl Locker {
    /// Installs what tells the kernel to drop cached names and data that a
    /// change from a backend made stale.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Owner of the namespace directory: what entries made from the backend
    /// get.
    fn ns_caller(conn: &Connection, ns_ino: InodeNo) -> CoreResult<Caller> {
        let r = meta::get_inode(conn, ns_ino)?.ok_or(CoreError::NotFound)?;
        Ok(Caller {
            uid: r.attr.uid,
            gid: r.attr.gid,
            pid: 0,
            umask: 0,
        })
    }

    /// The directory that holds `path` in namespace `ns`, made (unmarked) if
    /// missing. `None` if something not a directory is in the way.
    fn ensure_parent(
        &self,
        st: &mut State,
        ns: &str,
        path: &[u8],
    ) -> CoreResult<Option<(InodeNo, Vec<u8>)>> {
        let Some(mut cur) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(None);
        };
        let caller = Locker::ns_caller(&st.conn, cur)?;
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, dirs) = comps.split_last().expect("split yields one part");
        for c in dirs {
            match meta::lookup_row(&st.conn, cur, c)? {
                Some(r) if r.attr.kind == FileKind::Dir => cur = r.attr.ino,
                Some(_) => return Ok(None),
                None => {
                    let a =
                        self.make_node_locked(st, &caller, cur, c, libc::S_IFDIR | 0o755, None)?;
                    cur = a.ino;
                }
            }
        }
        Ok(Some((cur, last.to_vec())))
    }

    /// Makes the entry described by `row` at `name` in `dir`.
    pub(super) fn create_from_remote(
        &self,
        st: &mut State,
        dir: InodeNo,
        name: &[u8],
        row: &RemoteRow,
        ns_ino: InodeNo,
    ) -> CoreResult<()> {
        let caller = Locker::ns_caller(&st.conn, ns_ino)?;
        match row.kind {
            REMOTE_DIR => {
                let mode = row.mode.unwrap_or(0o755) & 0o7777;
                self.make_node_locked(st, &caller, dir, name, libc::S_IFDIR | mode, None)?;
            }
            REMOTE_SYMLINK => {
                let target = row.target.clone().unwrap_or_default();
                self.make_node_locked(
                    st,
                    &caller,
                    dir,
                    name,
                    libc::S_IFLNK | 0o777,
                    Some(&target),
                )?;
            }
            _ => {
                let mode = row.mode.unwrap_or(0o644) & 0o7777;
                let a =
                    self.make_node_locked(st, &caller, dir, name, libc::S_IFREG | mode, None)?;
                self.crash.hit("remote-node");
                self.set_remote_content(st, a.ino, row)?;
            }
        }
        Ok(())
    }

    /// Makes file `ino` hold the backend's content described by `row`
    /// (fetched when first read).
    fn set_remote_content(&self, st: &mut State, ino: InodeNo, row: &RemoteRow) -> CoreResult<()> {
        // Where it comes from, for content listed without a checksum.
        let src = Locker::own_src(&st.conn, ino)?;
        let mtime = row.mtime.unwrap_or_else(Timestamp::now);
        self.give_remote_content(
            st,
            ino,
            row.size,
            row.sha256.as_ref().map(|s| &s[..]),
            mtime,
            row.mode.map(|m| m & 0o7777),
            src.as_deref().map(|s| (s, None)),
            true,
        )
    }

    /// `namespace/path` of one of the names of `ino`.
    pub(super) fn own_src(conn: &Connection, ino: InodeNo) -> CoreResult<Option<Vec<u8>>> {
        Ok(match meta::any_name(conn, ino)? {
            Some((parent, name)) => ns_path(conn, parent, &name)?.map(|(ns, p)| {
                let mut v = ns.into_bytes();
                v.push(b'/');
                v.extend_from_slice(&p);
                v
            }),
            None => None,
        })
    }

    /// Makes file `ino` hold `size` bytes that are only in a backend, at
    /// `src` (`ns/path`, and its version when the `remote` row does not
    /// record it); `here`: that is the file's own path.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn give_remote_content(
        &self,
        st: &mut State,
        ino: InodeNo,
        size: u64,
        sha: Option<&[u8]>,
        mtime: Timestamp,
        perm: Option<u32>,
        src: Option<(&[u8], Option<&str>)>,
        here: bool,
    ) -> CoreResult<()> {
        self.forget_file(st, ino);
        let acls = self.acls.load(std::sync::atomic::Ordering::Acquire);
        let freed = st.tx(|tx| {
            let freed = meta::drop_blocks_from(tx, ino, 0)?;
            meta::set_remote_only(tx, ino, size, sha, mtime, perm, src, here)?;
            if let Some(p) = perm.filter(|_| acls) {
                // A mode changed elsewhere: the access ACL follows, as
                // with a chmod here.
                crate::core::acl::chmod(tx, ino, p as u16)?;
            }
            Ok(freed)
        })?;
        self.free_blocks(st, &freed);
        Ok(())
    }

    /// Applies an entry found in the backend at `ns/path` (new, or changed
    /// since `remote` was recorded). `started` is when the listing began:
    /// rows recorded after it are newer than the listing and win.
    pub fn apply_remote(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        started: i64,
    ) -> CoreResult<Applied> {
        let before = self.kernel_view(ns, path)?;
        let r = self.apply_remote_inner(ns, path, row, started)?;
        self.tell_kernel(ns, path, before, &r)?;
        Ok(r)
    }

    /// A file the backend now holds at `to` that it held at `from` before
    /// (the same identity, such as Nextcloud's `oc:fileid`): someone renamed
    /// it there. It is renamed here too, unmarked, instead of being removed
    /// and downloaded again: only when the file at `from` is here, unchanged
    /// here and not open, and nothing is at `to`. Otherwise `Skipped`, and
    /// the caller takes the two paths as a new entry and a removal.
    pub fn apply_remote_rename(
        &self,
        ns: &str,
        from: &[u8],
        to: &[u8],
        row: RemoteRow,
        started: i64,
    ) -> CoreResult<Applied> {
        let mut before = self.kernel_view(ns, from)?;
        before.extend(self.kernel_view(ns, to)?);
        let r = {
            let mut st = self.lock();
            let st = &mut *st;
            if msync::get_entry(&st.conn, ns, from)?.is_some()
                || msync::get_entry(&st.conn, ns, to)?.is_some()
            {
                return Ok(Applied::Skipped);
            }
            let Some(old) = msync::get_remote(&st.conn, ns, from)? else {
                return Ok(Applied::Skipped);
            };
            if old.at_ns > started || old.kind != REMOTE_FILE || row.kind != REMOTE_FILE {
                return Ok(Applied::Skipped);
            }
            let Some((dir, name, Some(local))) = Locker::resolve_in(&st.conn, ns, from)? else {
                return Ok(Applied::Skipped);
            };
            let lsha: Option<[u8; 32]> = local.sha256.as_deref().and_then(|s| s.try_into().ok());
            let clean = local.attr.kind == FileKind::File
                && (local.remote_only || (lsha.is_some() && lsha == old.sha256))
                && !st
                    .files
                    .get(&local.attr.ino)
                    .is_some_and(|f| f.open > 0 || !f.is_clean_pub());
            if !clean || Locker::resolve_in(&st.conn, ns, to)?.is_some_and(|f| f.2.is_some()) {
                return Ok(Applied::Skipped);
            }
            st.suppress_marks = true;
            let r = self.batch(st, |st| {
                let Some((newdir, newname)) = self.ensure_parent(st, ns, to)? else {
                    return Ok(Applied::Skipped);
                };
                self.rename_locked(st, dir, &name, newdir, &newname, RenameMode::NoReplace)?;
                // What was known of the version at `from` holds at `to` (a
                // move keeps the version); one changed as well shows a new
                // ETag at the next look and is taken then.
                let at_to = RemoteRow {
                    file_id: row.file_id.clone(),
                    ..old.clone()
                };
                // Files here whose content is only in that object (this one,
                // if never read) fetch it from where it is now: at `from`
                // there may be another object, soon or already.
                let src = |p: &[u8]| [ns.as_bytes(), b"/", p].concat();
                st.tx(|tx| {
                    msync::delete_remote(tx, ns, from)?;
                    msync::put_remote(tx, ns, to, &at_to)?;
                    meta::move_remote_src(tx, &src(from), &src(to))?;
                    Ok(())
                })?;
                Ok(Applied::Updated)
            });
            st.suppress_marks = false;
            let r = r?;
            st.durable()?;
            r
        };
        if let Some(inval) = self.invalidator.get()
            && r == Applied::Updated
        {
            let mut all = before;
            for i in self
                .kernel_view(ns, from)?
                .into_iter()
                .chain(self.kernel_view(ns, to)?)
            {
                if !all.contains(&i) {
                    all.push(i);
                }
            }
            inval(&all);
        }
        Ok(r)
    }

    fn apply_remote_inner(
        &self,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        started: i64,
    ) -> CoreResult<Applied> {
        let mut st = self.lock();
        let st = &mut *st;
        if msync::get_entry(&st.conn, ns, path)?.is_some() {
            return Ok(Applied::Skipped);
        }
        let old = msync::get_remote(&st.conn, ns, path)?;
        if old.as_ref().is_some_and(|o| o.at_ns > started) {
            return Ok(Applied::Skipped);
        }
        // Removed from the backend (with what was above it) after the
        // listing began: the listing is stale there.
        if st.gone_remote_since(ns, path, started) {
            return Ok(Applied::Skipped);
        }
        let Some(ns_ino) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(Applied::Skipped);
        };
        st.suppress_marks = true;
        // One transaction: a crash leaves the entry whole or absent, never
        // an empty file (which a later refresh would take for a change
        // made here).
        let r = self.batch(st, |st| {
            self.apply_remote_locked(st, ns, path, row, old, ns_ino)
        });
        st.suppress_marks = false;
        let r = r?;
        st.durable()?;
        self.crash.hit("remote-applied");
        Ok(r)
    }

    fn apply_remote_locked(
        &self,
        st: &mut State,
        ns: &str,
        path: &[u8],
        row: RemoteRow,
        old: Option<RemoteRow>,
        ns_ino: InodeNo,
    ) -> CoreResult<Applied> {
        let Some((dir, name)) = self.ensure_parent(st, ns, path)? else {
            tracing::warn!(namespace = ns, path = %String::from_utf8_lossy(path), "a file in the backend has a non-directory in its path here; left alone");
            return Ok(Applied::Skipped);
        };
        let record = |st: &mut State, row: &RemoteRow| -> CoreResult<()> {
            st.tx(|tx| Ok(msync::put_remote(tx, ns, path, row)?))
        };
        let Some(local) = meta::lookup_row(&st.conn, dir, &name)? else {
            self.create_from_remote(st, dir, &name, &row, ns_ino)?;
            record(st, &row)?;
            return Ok(Applied::Created);
        };
        let lsha: Option<[u8; 32]> = local.sha256.as_deref().and_then(|s| s.try_into().ok());
        let is_open = st
            .files
            .get(&local.attr.ino)
            .is_some_and(|f| f.open > 0 || !f.is_clean_pub());
        // The new object was written over something other than the version
        // this host uploaded last (its writer never saw that one): two
        // writes were
        // concurrent, and the store let the later one land over the other
        // (as stores that ignore conditional writes do). The version held
        // here is kept, under a conflict name, rather than replaced.
        let concurrent = local.attr.kind == FileKind::File
            && row.kind == REMOTE_FILE
            && !local.remote_only
            && row.base.is_some()
            && old
                .as_ref()
                .is_some_and(|o| o.own && o.kind == REMOTE_FILE && o.sha256 != row.base);
        if concurrent {
            tracing::warn!(
                namespace = ns,
                path = %String::from_utf8_lossy(path),
                "the backend's new version was written without seeing the one held here: concurrent writes"
            );
        }
        // Local matches what the backend held before: it is clean.
        let clean = !concurrent
            && match (&old, local.attr.kind) {
                // Content only in the backend was never changed here.
                (Some(o), FileKind::File) => {
                    o.kind == REMOTE_FILE
                        && (local.remote_only || (lsha.is_some() && lsha == o.sha256))
                }
                (Some(o), FileKind::Symlink) => {
                    o.kind == REMOTE_SYMLINK && local.target == o.target
                }
                (Some(o), FileKind::Dir) => o.kind == REMOTE_DIR,
                _ => false,
            };
        match (local.attr.kind, row.kind) {
            (FileKind::Dir, REMOTE_DIR) => {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            // The same content (a label that says so, of the same size: a
            // label another client left behind when it rewrote the file
            // says nothing).
            (FileKind::File, REMOTE_FILE)
                if row.sha256.is_some() && lsha == row.sha256 && row.size == local.attr.size =>
            {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            (FileKind::Symlink, REMOTE_SYMLINK) if local.target == row.target => {
                record(st, &row)?;
                Ok(Applied::Unchanged)
            }
            _ if is_open => Ok(Applied::Skipped),
            (FileKind::File, REMOTE_FILE) if clean && local.attr.nlink > 1 => {
                // One name of a hard link changed in the backend: this name
                // gets the new content, the others keep theirs.
                self.unlink_locked(st, dir, &name)?;
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            (FileKind::File, REMOTE_FILE) if clean => {
                self.set_remote_content(st, local.attr.ino, &row)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            (FileKind::Dir, _) => {
                tracing::warn!(namespace = ns, path = %String::from_utf8_lossy(path), "the backend has a file where this side has a directory; left alone");
                Ok(Applied::Skipped)
            }
            (_, _) if clean && local.attr.kind != FileKind::Dir => {
                self.unlink_locked(st, dir, &name)?;
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                Ok(Applied::Updated)
            }
            _ => {
                let moved = self.move_to_conflict(st, dir, &name)?;
                tracing::warn!(
                    namespace = ns,
                    path = %String::from_utf8_lossy(path),
                    kept_as = %String::from_utf8_lossy(&moved),
                    "both this side and the backend changed a file: the backend's version keeps the name, this side's is kept under a conflict name"
                );
                self.create_from_remote(st, dir, &name, &row, ns_ino)?;
                record(st, &row)?;
                st.tx(|tx| Ok(msync::remove_entry(tx, ns, path)?))?;
                Ok(Applied::Conflict(moved))
            }
        }
    }

    /// Applies the disappearance from the backend of `ns/path`: the local
    /// entry goes too if it is unchanged since the backend had it.
    pub fn apply_remote_gone(&self, ns: &str, path: &[u8], started: i64) -> CoreResult<Applied> {
        let before = self.kernel_view(ns, path)?;
        let r = self.apply_remote_gone_inner(ns, path, started)?;
        self.tell_kernel(ns, path, before, &r)?;
        Ok(r)
    }

    fn apply_remote_gone_inner(&self, ns: &str, path: &[u8], started: i64) -> CoreResult<Applied> {
        let mut st = self.lock();
        let st = &mut *st;
        if msync::get_entry(&st.conn, ns, path)?.is_some() {
            return Ok(Applied::Skipped);
        }
        let Some(old) = msync::get_remote(&st.conn, ns, path)? else {
            return Ok(Applied::Unchanged);
        };
        if old.at_ns > started {
            return Ok(Applied::Skipped);
        }
        let found = Locker::resolve_in(&st.conn, ns, path)?;
        st.suppress_marks = true;
        let r = self.batch(st, |st| {
            if let Some((dir, name, Some(local))) = found {
                let lsha: Option<[u8; 32]> =
                    local.sha256.as_deref().and_then(|s| s.try_into().ok());
                let is_open = st
                    .files
                    .get(&local.attr.ino)
                    .is_some_and(|f| f.open > 0 || !f.is_clean_pub());
                let clean = match local.attr.kind {
                    FileKind::File => {
                        old.kind == REMOTE_FILE
                            && (local.remote_only || (lsha.is_some() && lsha == old.sha256))
                    }
                    FileKind::Symlink => old.kind == REMOTE_SYMLINK && local.target == old.target,
                    FileKind::Dir => old.kind == REMOTE_DIR,
                    _ => false,
                };
                if is_open {
                    return Ok(Applied::Skipped);
                }
                if !clean {
                    // Changed here: push it again.
                    st.suppress_marks = false;
                    let m = st.mark();
                    st.tx(|tx| {
                        msync::delete_remote(tx, ns, path)?;
                        mark_name(tx, m, dir, &name, local.attr.size)
                    })?;
                    return Ok(Applied::Skipped);
                }
                if local.attr.kind == FileKind::Dir {
                    if meta::dir_is_empty(&st.conn, local.attr.ino)? {
                        self.rmdir_locked(st, dir, &name)?;
                    }
                } else {
                    self.unlink_locked(st, dir, &name)?;
                }
            }
            st.tx(|tx| Ok(msync::delete_remote(tx, ns, path)?))?;
            Ok(Applied::Updated)
        });
        st.suppress_marks = false;
        let r = r?;
        st.durable()?;
        Ok(r)
    }

    /// The kernel's possible view of `ns/path`: each (directory, name) along
    /// it, and the inode at the end if there is one.
    pub(super) fn kernel_view(&self, ns: &str, path: &[u8]) -> CoreResult<Vec<Invalidate>> {
        let st = self.lock();
        let mut out = Vec::new();
        let Some(mut cur) = meta::lookup(&st.conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(out);
        };
        // Each directory's attributes too: a change below it alters its
        // times and links.
        out.push(Invalidate::Inode(cur));
        for comp in path.split(|&b| b == b'/') {
            out.push(Invalidate::Entry(cur, comp.to_vec()));
            match meta::lookup(&st.conn, cur, comp)? {
                Some(next) => cur = next,
                None => return Ok(out),
            }
            out.push(Invalidate::Inode(cur));
        }
        Ok(out)
    }

    /// Changes made from a backend happened behind the kernel's back: drop
    /// what it caches of the names and inodes involved (before and after),
    /// so that readers see them at once.
    pub(super) fn tell_kernel(
        &self,
        ns: &str,
        path: &[u8],
        before: Vec<Invalidate>,
        r: &Applied,
    ) -> CoreResult<()> {
        if matches!(r, Applied::Skipped | Applied::Unchanged) {
            return Ok(());
        }
        let Some(inval) = self.invalidator.get() else {
            return Ok(());
        };
        let mut all = before;
        let after = self.kernel_view(ns, path)?;
        if let (Applied::Conflict(moved), Some(Invalidate::Entry(dir, _))) = (
            r,
            after
                .iter()
                .rev()
                .find(|i| matches!(i, Invalidate::Entry(..))),
        ) {
            all.push(Invalidate::Entry(*dir, moved.clone()));
        }
        for i in after {
            if !all.contains(&i) {
                all.push(i);
            }
        }
        inval(&all);
        Ok(())
    }
}
