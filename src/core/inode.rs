//! Names and attributes: lookup, getattr/setattr, creation of every kind of
//! inode, link/unlink, rmdir, rename and directory listing.

use rusqlite::Connection;

use crate::core::acl::{self, ACL_ACCESS, ACL_DEFAULT};
use crate::core::file::FileState;
use crate::core::namespace;
use crate::core::types::*;
use crate::core::{CoreError, CoreResult, Handle, Locker, State, check_name, sync};
use crate::meta::{self, InodeRow};

const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;
/// Entries read per page by `readdir`.
const DIR_PAGE: usize = 1000;

/// What to create: kind and permission bits (`mode`), device number, and a
/// symlink's target.
struct Node<'a> {
    mode: u32,
    rdev: u32,
    target: Option<&'a [u8]>,
}

pub(crate) fn row(conn: &Connection, ino: InodeNo) -> CoreResult<InodeRow> {
    meta::get_inode(conn, ino)?.ok_or(CoreError::NotFound)
}

pub(crate) fn dir_row(conn: &Connection, ino: InodeNo) -> CoreResult<InodeRow> {
    let r = row(conn, ino)?;
    if r.attr.kind != FileKind::Dir {
        return Err(CoreError::NotDir);
    }
    Ok(r)
}

/// What was read since the last change: a directory's row and a name
/// found missing, each good while the change count (`hot::Generation`,
/// bumped before and after every change) stays where it was when they were
/// read. Before it makes a file, the kernel asks for its directory's
/// attributes (which the previous create made stale) and looks the name up,
/// and the create read both again: three of a create's queries.
#[derive(Default)]
pub(crate) struct Seen {
    generation: u64,
    dir: Option<InodeRow>,
    missing: Option<(InodeNo, Vec<u8>)>,
}

impl State {
    /// What `seen` holds for the current change count (emptied if it is of
    /// an older one).
    fn seen_now(&mut self) -> &mut Seen {
        let g = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if self.seen.generation != g {
            self.seen = Seen {
                generation: g,
                ..Seen::default()
            };
        }
        &mut self.seen
    }

    /// `dir_row`, answered from what was read since the last change.
    pub(crate) fn dir_row_seen(&mut self, ino: InodeNo) -> CoreResult<InodeRow> {
        if let Some(r) = &self.seen_now().dir
            && r.attr.ino == ino
        {
            return Ok(r.clone());
        }
        let r = dir_row(&self.conn, ino)?;
        self.seen_now().dir = Some(r.clone());
        Ok(r)
    }

    /// Keeps the row of directory `r`, just read.
    fn saw_dir(&mut self, r: &InodeRow) {
        if r.attr.kind == FileKind::Dir {
            self.seen_now().dir = Some(r.clone());
        }
    }

    /// Whether `name` in `parent` is taken, answered from a look-up that
    /// found it missing since the last change.
    fn name_taken(&mut self, parent: InodeNo, name: &[u8]) -> CoreResult<bool> {
        if self
            .seen_now()
            .missing
            .as_ref()
            .is_some_and(|(p, n)| *p == parent && n == name)
        {
            return Ok(false);
        }
        Ok(meta::lookup(&self.conn, parent, name)?.is_some())
    }
}

/// Updates a directory's mtime and ctime (its entries changed) and its link
/// count by `nlink_delta` (subdirectories added or removed).
pub(crate) fn touch_dir(
    conn: &Connection,
    dir: InodeNo,
    now: Timestamp,
    nlink_delta: i32,
) -> CoreResult<()> {
    meta::touch_dir(conn, dir, now, nlink_delta as i64)?;
    Ok(())
}

/// What a write, truncate or change of owner leaves of a mode, as ext4
/// on Linux leaves it (`setattr_should_drop_suidgid`): no set-user-ID,
/// and no set-group-ID where the file is group-executable or `caller` is
/// outside the file's group (without group execution it only marks
/// mandatory locking, which its group may keep). Root stands for a caller
/// with `CAP_FSETID`, who is in every group.
pub(crate) fn without_privs(perm: u16, gid: u32, caller: Option<&Caller>) -> u16 {
    let mut p = perm & !S_ISUID;
    if p & S_ISGID != 0
        && (p & 0o010 != 0 || caller.is_some_and(|c| c.uid != 0 && !caller_in_group(c, gid)))
    {
        p &= !S_ISGID;
    }
    p
}

/// Is the calling process a member of group `gid` (primary or supplementary)?
pub(crate) fn caller_in_group(caller: &Caller, gid: u32) -> bool {
    if caller.gid == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

impl Locker {
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> CoreResult<Attr> {
        if name.len() > 255 {
            return Err(CoreError::NameTooLong);
        }
        let mut st = self.lock();
        match meta::lookup_row(&st.conn, parent, name)? {
            Some(r) => {
                let mut a = r.attr;
                Locker::overlay(&st, &mut a);
                Ok(a)
            }
            None => {
                st.dir_row_seen(parent)?;
                st.seen_now().missing = Some((parent, name.to_vec()));
                Err(CoreError::NotFound)
            }
        }
    }

    pub(crate) fn attr_locked(st: &State, ino: InodeNo) -> CoreResult<Attr> {
        let mut a = row(&st.conn, ino)?.attr;
        Locker::overlay(st, &mut a);
        Ok(a)
    }

    pub fn getattr(&self, ino: InodeNo) -> CoreResult<Attr> {
        let mut st = self.lock();
        let r = row(&st.conn, ino)?;
        st.saw_dir(&r);
        let mut a = r.attr;
        Locker::overlay(&st, &mut a);
        Ok(a)
    }

    pub fn setattr(&self, ino: InodeNo, set: &SetAttr) -> CoreResult<Attr> {
        self.setattr_as(ino, set, None)
    }

    /// `setattr` asked by `caller` (a mount's request). A new mode keeps
    /// set-group-ID only if the caller is root or in the file's group, as
    /// Linux's `setattr_copy` has it. The kernel checks this itself for a
    /// chmod; not for the mode it sends when a write or fallocate by
    /// someone else drops set-user-ID (which must then lose set-group-ID
    /// too when that someone is outside the group).
    pub fn setattr_as(
        &self,
        ino: InodeNo,
        set: &SetAttr,
        caller: Option<&Caller>,
    ) -> CoreResult<Attr> {
        let mut tries = 0;
        // With the lock: whether there are privileges to drop.
        let (mut st, kill) = loop {
            if set.size.is_some_and(|s| s > 0) {
                self.ensure_local(ino)?;
                // The new version keeps blocks of this one: they must be here.
                self.fetch_missing(ino)?;
            }
            let mut st = self.lock();
            let now = Timestamp::now();
            let attr = row(&st.conn, ino)?.attr;
            let kind = attr.kind;
            let kill = set.drop_privs
                && kind != FileKind::Dir
                && without_privs(attr.perm, attr.gid, caller) != attr.perm;
            let Some(size) = set.size else {
                break (st, kill);
            };
            let r = match kind {
                FileKind::File => self.truncate_locked(&mut st, ino, size, now),
                FileKind::Dir => return Err(CoreError::IsDir),
                _ => return Err(CoreError::Invalid("truncate of a special file")),
            };
            match r {
                Ok(()) => break (st, kill),
                // A block evicted between the fetch and the lock: the
                // truncate changed nothing; fetch again.
                Err(CoreError::Corrupt(_)) if tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let st = &mut *st;
        let now = Timestamp::now();
        let changes_times = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.ctime.is_some()
            || kill;
        if changes_times {
            let acls = self.acls.load(std::sync::atomic::Ordering::Acquire);
            // Uncommitted writes carry their own mtime: commit them first so
            // an explicit time set here wins.
            self.commit_locked(st, ino)?;
            // Mode and mtime travel with the object; owners stay local.
            let m = if set.mode.is_some() || set.mtime.is_some() || kill {
                st.mark()
            } else {
                None
            };
            let mut a = st.tx(|tx| {
                let mut a = row(tx, ino)?.attr;
                let gid_before = a.gid;
                if let Some(m) = set.mode {
                    a.perm = (m & 0o7777) as u16;
                }
                if let Some(u) = set.uid {
                    a.uid = u;
                }
                if let Some(g) = set.gid {
                    a.gid = g;
                }
                if kill {
                    // The group the file had: a new one is checked below.
                    a.perm = without_privs(a.perm, gid_before, caller);
                }
                if set.mode.is_some() && acls {
                    acl::chmod(tx, ino, a.perm)?;
                }
                if (set.mode.is_some() || kill)
                    && a.perm & S_ISGID != 0
                    && let Some(c) = caller
                    && c.uid != 0
                    && !caller_in_group(c, a.gid)
                {
                    a.perm &= !S_ISGID;
                }
                let pick = |t: TimeSet| match t {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                if let Some(t) = set.atime {
                    a.atime = pick(t);
                }
                if let Some(t) = set.mtime {
                    a.mtime = pick(t);
                }
                a.ctime = set.ctime.unwrap_or(now);
                meta::update_attr(tx, &a)?;
                if a.kind != FileKind::Dir {
                    sync::mark_ino(tx, m, ino, a.size)?;
                }
                Ok(a)
            })?;
            if m.is_some() {
                self.wake_sync();
            }
            // The row as just written (every attribute but the kind, the
            // birth time and the bytes in blocks, which it read): no need
            // to read it again.
            Locker::overlay(st, &mut a);
            return Ok(a);
        }
        Locker::attr_locked(st, ino)
    }

    /// Drops set-user-ID and set-group-ID as a write or fallocate by
    /// `caller` (someone without `CAP_FSETID`) does on Linux, and tells the
    /// kernel the mode it holds is stale. Nothing is written when there is
    /// nothing to drop, so a writer pays one read of the inode.
    pub fn drop_privs_as(&self, ino: InodeNo, caller: &Caller) -> CoreResult<()> {
        {
            let st = self.lock();
            let a = row(&st.conn, ino)?.attr;
            if a.kind != FileKind::File || without_privs(a.perm, a.gid, Some(caller)) == a.perm {
                return Ok(());
            }
        }
        let set = SetAttr {
            drop_privs: true,
            ..SetAttr::default()
        };
        self.setattr_as(ino, &set, Some(caller))?;
        // The kernel keeps the mode it had (an answer to a write carries
        // no attributes, and a write makes only size and times stale): an
        // exec would still honour the set-user-ID just dropped.
        if let Some(inval) = self.invalidator.get() {
            inval(&[crate::core::sync::Invalidate::Attr(ino)]);
        }
        Ok(())
    }

    /// Creates an inode of any kind under `parent`. `mode` carries the kind
    /// (S_IFMT bits) and the permission bits, which the parent's default
    /// ACL masks if it has one, and the caller's umask otherwise.
    fn make_node(
        &self,
        st: &mut State,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        node: Node<'_>,
    ) -> CoreResult<Attr> {
        let Node { mode, rdev, target } = node;
        check_name(name)?;
        let kind = FileKind::from_mode(mode).ok_or(CoreError::Invalid("unknown file type"))?;
        namespace::check_create_at(parent, kind, name)?;
        let acls = self.acls.load(std::sync::atomic::Ordering::Acquire);
        // (Read before the change, under the same lock.)
        let p = st.dir_row_seen(parent)?;
        if p.attr.nlink == 0 {
            return Err(CoreError::NotFound);
        }
        if st.name_taken(parent, name)? {
            return Err(CoreError::Exists);
        }
        let m = st.mark();
        let r = st.tx(|tx| {
            let now = Timestamp::now();
            let mut perm = (mode & 0o7777) as u16;
            // Linux's posix_acl_create; symlinks take neither.
            let inherited = match kind {
                FileKind::Symlink => None,
                _ if acls => acl::load(tx, parent, ACL_DEFAULT)?
                    .map(|d| acl::inherit(&d, perm, kind == FileKind::Dir)),
                _ => None,
            };
            match &inherited {
                Some(i) => perm = i.perm,
                None if kind != FileKind::Symlink => perm &= !(caller.umask as u16 & 0o777),
                None => {}
            }
            let mut gid = caller.gid;
            if p.attr.perm & S_ISGID != 0 {
                gid = p.attr.gid;
                if kind == FileKind::Dir {
                    perm |= S_ISGID;
                }
            }
            if kind != FileKind::Dir
                && perm & S_ISGID != 0
                && caller.uid != 0
                && !caller_in_group(caller, gid)
            {
                perm &= !S_ISGID;
            }
            let attr = Attr {
                ino: InodeNo(0),
                kind,
                perm,
                nlink: if kind == FileKind::Dir { 2 } else { 1 },
                uid: caller.uid,
                gid,
                size: target.map_or(0, |t| t.len() as u64),
                rdev: match kind {
                    FileKind::CharDevice | FileKind::BlockDevice => rdev,
                    _ => 0,
                },
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                alloc: 0,
            };
            let dir_parent = (kind == FileKind::Dir).then_some(parent);
            let ino = meta::insert_inode(tx, &attr, dir_parent, target)?;
            if let Some(i) = &inherited {
                if let Some(v) = &i.access {
                    meta::set_xattr(tx, ino, ACL_ACCESS, v)?;
                }
                if let Some(v) = &i.default {
                    meta::set_xattr(tx, ino, ACL_DEFAULT, v)?;
                }
            }
            meta::insert_dentry(tx, parent, name, ino, kind)?;
            touch_dir(tx, parent, now, if kind == FileKind::Dir { 1 } else { 0 })?;
            sync::mark_name(tx, m, parent, name, 0)?;
            Ok(Attr { ino, ..attr })
        })?;
        if m.is_some() {
            self.wake_sync();
        }
        Ok(r)
    }

    /// `make_node` for the core's own callers (entries made from a backend).
    pub(crate) fn make_node_locked(
        &self,
        st: &mut State,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        target: Option<&[u8]>,
    ) -> CoreResult<Attr> {
        let rdev = 0;
        self.make_node(st, caller, parent, name, Node { mode, rdev, target })
    }

    pub fn mknod(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> CoreResult<Attr> {
        let kind = FileKind::from_mode(mode).ok_or(CoreError::Invalid("unknown file type"))?;
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(CoreError::Invalid("mknod of a directory or symlink"));
        }
        let mut st = self.lock();
        self.make_node(
            &mut st,
            caller,
            parent,
            name,
            Node {
                mode,
                rdev,
                target: None,
            },
        )
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
    ) -> CoreResult<Attr> {
        let mut st = self.lock();
        self.make_node(
            &mut st,
            caller,
            parent,
            name,
            Node {
                mode: 0o040000 | (perm & 0o7777),
                rdev: 0,
                target: None,
            },
        )
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
    ) -> CoreResult<Attr> {
        if target.is_empty() {
            return Err(CoreError::NotFound);
        }
        if target.len() > 4095 {
            return Err(CoreError::NameTooLong);
        }
        let mut st = self.lock();
        self.make_node(
            &mut st,
            caller,
            parent,
            name,
            Node {
                mode: 0o120777,
                rdev: 0,
                target: Some(target),
            },
        )
    }

    /// Creates and opens a regular file (O_CREAT); fails with `Exists` if the
    /// name is taken (the kernel only calls this when it is not).
    pub fn create(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
        mode: OpenMode,
    ) -> CoreResult<(Attr, HandleId)> {
        let mut st = self.lock();
        let attr = self.make_node(
            &mut st,
            caller,
            parent,
            name,
            Node {
                mode: 0o100000 | (perm & 0o7777),
                rdev: 0,
                target: None,
            },
        )?;
        // Opened under the same lock, as what it is: empty and only here
        // (inode numbers are never reused, so no state of an older file
        // can be in the way), with nothing to fetch or read back.
        st.files
            .entry(attr.ino)
            .or_insert_with(|| FileState::of(0, false));
        let mode = OpenMode {
            truncate: false,
            ..mode
        };
        let fh = self.open_handle_locked(&mut st, attr.ino, mode)?;
        Ok((attr, fh))
    }

    pub fn readlink(&self, ino: InodeNo) -> CoreResult<Vec<u8>> {
        let st = self.lock();
        let r = row(&st.conn, ino)?;
        if r.attr.kind != FileKind::Symlink {
            return Err(CoreError::Invalid("not a symlink"));
        }
        Ok(r.target.unwrap_or_default())
    }

    pub fn link(&self, ino: InodeNo, newparent: InodeNo, newname: &[u8]) -> CoreResult<Attr> {
        check_name(newname)?;
        let mut st = self.lock();
        let st = &mut *st;
        let kind = row(&st.conn, ino)?.attr.kind;
        namespace::check_create_at(newparent, kind, newname)?;
        if kind == FileKind::Dir {
            return Err(CoreError::NotPermitted("hard link to a directory"));
        }
        let m = st.mark();
        st.tx(|tx| {
            let p = dir_row(tx, newparent)?;
            if p.attr.nlink == 0 {
                return Err(CoreError::NotFound);
            }
            if meta::lookup(tx, newparent, newname)?.is_some() {
                return Err(CoreError::Exists);
            }
            let mut a = row(tx, ino)?.attr;
            if a.nlink == 0 {
                return Err(CoreError::NotFound);
            }
            let now = Timestamp::now();
            a.nlink += 1;
            a.ctime = now;
            meta::update_attr(tx, &a)?;
            meta::insert_dentry(tx, newparent, newname, ino, a.kind)?;
            touch_dir(tx, newparent, now, 0)?;
            sync::mark_name(tx, m, newparent, newname, a.size)?;
            Ok(())
        })?;
        self.wake_sync();
        Locker::attr_locked(st, ino)
    }

    /// Drops one link of a non-directory inode inside a transaction; returns
    /// true if the inode has no names left. The last link of a file open
    /// nowhere is left as it is: the caller deletes its rows
    /// (`purge_rows`) in the same transaction.
    pub(crate) fn drop_link(
        st_files_open: bool,
        tx: &Connection,
        attr: &Attr,
        now: Timestamp,
    ) -> CoreResult<bool> {
        // `attr` is the inode's row as read under the same lock.
        let last = attr.nlink <= 1;
        if last && !st_files_open {
            // The caller deletes the row in the same change (`purge_rows`):
            // not updated first.
            return Ok(true);
        }
        if !meta::drop_link(tx, attr.ino, now)? {
            return Err(CoreError::NotFound);
        }
        if last {
            meta::add_orphan(tx, attr.ino)?;
        }
        Ok(last)
    }

    /// Whether `ino` is open; if so, marks it for the nlink check at its
    /// last close (the caller is about to remove one of its names).
    pub(crate) fn is_open(st: &mut State, ino: InodeNo) -> bool {
        match st.files.get_mut(&ino) {
            Some(f) if f.open > 0 => {
                f.maybe_unlinked = true;
                true
            }
            _ => false,
        }
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> CoreResult<()> {
        if name.len() > 255 {
            return Err(CoreError::NameTooLong);
        }
        let mut st = self.lock();
        self.unlink_locked(&mut st, parent, name)
    }

    pub(crate) fn unlink_locked(
        &self,
        st: &mut State,
        parent: InodeNo,
        name: &[u8],
    ) -> CoreResult<()> {
        let target = match meta::lookup_row(&st.conn, parent, name)? {
            Some(r) => r.attr,
            None => {
                dir_row(&st.conn, parent)?;
                return Err(CoreError::NotFound);
            }
        };
        if target.kind == FileKind::Dir {
            return Err(CoreError::IsDir);
        }
        let ino = target.ino;
        let open = Locker::is_open(st, ino);
        let m = st.mark();
        let freed = st.tx(|tx| {
            let now = Timestamp::now();
            meta::delete_dentry(tx, parent, name)?;
            touch_dir(tx, parent, now, 0)?;
            sync::mark_removed(tx, m, parent, name)?;
            if Locker::drop_link(open, tx, &target, now)? && !open {
                return Locker::purge_rows(tx, ino);
            }
            Ok(Vec::new())
        })?;
        self.forget_file(st, ino);
        self.free_blocks(st, &freed);
        if m.is_some() {
            self.wake_sync();
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> CoreResult<()> {
        if name.len() > 255 {
            return Err(CoreError::NameTooLong);
        }
        if name == b"." {
            return Err(CoreError::Invalid("rmdir of ."));
        }
        if name == b".." {
            return Err(CoreError::NotEmpty);
        }
        let mut st = self.lock();
        self.rmdir_locked(&mut st, parent, name)
    }

    /// Directories some handle has open: removed, they stay (with no
    /// link) until closed, so `fstat` of the handle still answers.
    fn open_dirs(st: &State) -> std::collections::HashSet<InodeNo> {
        st.handles
            .values()
            .filter_map(|h| match h {
                Handle::Dir { dir, .. } => Some(*dir),
                _ => None,
            })
            .collect()
    }

    /// Removes the inode of empty directory `ino` (its name is gone); one
    /// still open keeps its row, with no link, until its last `releasedir`
    /// (or, after a crash, the next start).
    fn drop_dir_inode(tx: &Connection, ino: InodeNo, open: bool, now: Timestamp) -> CoreResult<()> {
        if !open {
            meta::delete_inode(tx, ino)?;
            return Ok(());
        }
        let mut a = row(tx, ino)?.attr;
        a.nlink = 0;
        a.ctime = now;
        meta::update_attr(tx, &a)?;
        meta::add_orphan(tx, ino)?;
        Ok(())
    }

    pub(crate) fn rmdir_locked(
        &self,
        st: &mut State,
        parent: InodeNo,
        name: &[u8],
    ) -> CoreResult<()> {
        let m = st.mark();
        let open = Locker::open_dirs(st);
        st.tx(|tx| {
            dir_row(tx, parent)?;
            let ino = meta::lookup(tx, parent, name)?.ok_or(CoreError::NotFound)?;
            let d = row(tx, ino)?;
            if d.attr.kind != FileKind::Dir {
                return Err(CoreError::NotDir);
            }
            if !meta::dir_is_empty(tx, ino)? {
                return Err(CoreError::NotEmpty);
            }
            let now = Timestamp::now();
            meta::delete_dentry(tx, parent, name)?;
            touch_dir(tx, parent, now, -1)?;
            Locker::drop_dir_inode(tx, ino, open.contains(&ino), now)?;
            sync::mark_removed(tx, m, parent, name)?;
            if parent == InodeNo::ROOT {
                tracing::info!(namespace = %String::from_utf8_lossy(name), "namespace removed");
            }
            Ok(())
        })?;
        if m.is_some() {
            self.wake_sync();
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        mode: RenameMode,
    ) -> CoreResult<()> {
        if name.len() > 255 {
            return Err(CoreError::NameTooLong);
        }
        check_name(newname)?;
        let mut st = self.lock();
        self.rename_locked(&mut st, parent, name, newparent, newname, mode)
    }

    pub(crate) fn rename_locked(
        &self,
        st: &mut State,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        mode: RenameMode,
    ) -> CoreResult<()> {
        let (src_row, dst) = {
            let c = &st.conn;
            dir_row(c, parent)?;
            if newparent != parent {
                dir_row(c, newparent)?;
            }
            let src = meta::lookup_row(c, parent, name)?.ok_or(CoreError::NotFound)?;
            (src, meta::lookup(c, newparent, newname)?)
        };
        let src = src_row.attr.ino;
        namespace::check_rename(parent, newparent, src_row.attr.kind, mode)?;
        if dst == Some(src) {
            // Two names of one inode: POSIX says do nothing.
            return Ok(());
        }
        let dst_open = dst.is_some_and(|d| Locker::is_open(st, d));
        let open_dirs = match dst {
            Some(_) => Locker::open_dirs(st),
            None => Default::default(),
        };
        let m = st.mark();
        let purge = st.tx(|tx| {
            let now = Timestamp::now();
            // (`src_row` was read above, under the same lock.)
            let dst_row = match dst {
                Some(d) => Some(row(tx, d)?),
                None => None,
            };
            let src_is_dir = src_row.attr.kind == FileKind::Dir;
            // Moving a directory under itself would detach a cycle.
            if src_is_dir && parent != newparent {
                let mut cur = newparent;
                while cur != InodeNo::ROOT {
                    if cur == src {
                        return Err(CoreError::Invalid("directory moved into itself"));
                    }
                    cur = row(tx, cur)?.parent.unwrap_or(InodeNo::ROOT);
                }
            }
            match mode {
                RenameMode::Exchange => {
                    let Some(d) = dst_row else {
                        return Err(CoreError::NotFound);
                    };
                    let dst_is_dir = d.attr.kind == FileKind::Dir;
                    if src_is_dir && parent != newparent {
                        let mut cur = parent;
                        while cur != InodeNo::ROOT {
                            if cur == d.attr.ino {
                                return Err(CoreError::Invalid("directory moved into itself"));
                            }
                            cur = row(tx, cur)?.parent.unwrap_or(InodeNo::ROOT);
                        }
                    }
                    meta::set_dentry(tx, parent, name, d.attr.ino, d.attr.kind)?;
                    meta::set_dentry(tx, newparent, newname, src, src_row.attr.kind)?;
                    if src_is_dir {
                        meta::set_parent(tx, src, newparent)?;
                    }
                    if dst_is_dir {
                        meta::set_parent(tx, d.attr.ino, parent)?;
                    }
                    let delta = src_is_dir as i32 - dst_is_dir as i32;
                    for (ino, _) in [(src, 0), (d.attr.ino, 0)] {
                        let mut a = row(tx, ino)?.attr;
                        a.ctime = now;
                        meta::update_attr(tx, &a)?;
                    }
                    if parent == newparent {
                        touch_dir(tx, parent, now, 0)?;
                    } else {
                        touch_dir(tx, parent, now, -delta)?;
                        touch_dir(tx, newparent, now, delta)?;
                    }
                    sync::mark_moved(
                        tx,
                        m,
                        (src, Some(&src_row.attr)),
                        (newparent, newname),
                        None,
                    )?;
                    sync::mark_moved(tx, m, (d.attr.ino, Some(&d.attr)), (parent, name), None)?;
                    return Ok(None);
                }
                RenameMode::NoReplace if dst_row.is_some() => return Err(CoreError::Exists),
                _ => {}
            }
            let mut gone = None;
            let mut newparent_delta = 0i32;
            if let Some(d) = &dst_row {
                let dst_is_dir = d.attr.kind == FileKind::Dir;
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return Err(CoreError::NotDir),
                    (false, true) => return Err(CoreError::IsDir),
                    (true, true) => {
                        if !meta::dir_is_empty(tx, d.attr.ino)? {
                            return Err(CoreError::NotEmpty);
                        }
                        meta::delete_dentry(tx, newparent, newname)?;
                        let open = open_dirs.contains(&d.attr.ino);
                        Locker::drop_dir_inode(tx, d.attr.ino, open, now)?;
                        newparent_delta -= 1;
                    }
                    (false, false) => {
                        meta::delete_dentry(tx, newparent, newname)?;
                        // (Its rows go in this same change: `drop_link`
                        // leaves a last link's row to the caller.)
                        if Locker::drop_link(dst_open, tx, &d.attr, now)? && !dst_open {
                            gone = Some((d.attr.ino, Locker::purge_rows(tx, d.attr.ino)?));
                        }
                    }
                }
            }
            meta::delete_dentry(tx, parent, name)?;
            meta::insert_dentry(tx, newparent, newname, src, src_row.attr.kind)?;
            let mut a = src_row.attr.clone();
            a.ctime = now;
            meta::update_attr(tx, &a)?;
            if src_is_dir && parent != newparent {
                meta::set_parent(tx, src, newparent)?;
                newparent_delta += 1;
                touch_dir(tx, parent, now, -1)?;
            } else if parent != newparent {
                touch_dir(tx, parent, now, 0)?;
            }
            touch_dir(tx, newparent, now, newparent_delta)?;
            sync::mark_moved(
                tx,
                m,
                (src, Some(&src_row.attr)),
                (newparent, newname),
                Some((parent, name)),
            )?;
            Ok(gone)
        })?;
        if let Some((ino, freed)) = purge {
            self.forget_file(st, ino);
            self.free_blocks(st, &freed);
        }
        if m.is_some() {
            self.wake_sync();
        }
        Ok(())
    }

    /// Opens a directory. Its entries are read a page at a time as
    /// `readdir` reaches them (the state lock is held one page at a time,
    /// however large the directory); each name shows at most once per
    /// handle, and a rewind (offset 0) reads the directory afresh.
    pub fn opendir(&self, ino: InodeNo) -> CoreResult<HandleId> {
        let mut st = self.lock();
        let d = dir_row(&st.conn, ino)?;
        let entries = Locker::dot_entries(ino, d.parent.unwrap_or(InodeNo::ROOT));
        let fh = HandleId(st.next_handle);
        st.next_handle += 1;
        st.handles.insert(
            fh,
            Handle::Dir {
                dir: ino,
                entries,
                complete: false,
            },
        );
        Ok(fh)
    }

    fn dot_entries(ino: InodeNo, parent: InodeNo) -> Vec<DirEntry> {
        vec![
            DirEntry {
                ino,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            },
            DirEntry {
                ino: parent,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
            },
        ]
    }

    /// Entries of an open directory from position `offset` on; each comes
    /// with the offset of the entry after it. `f` returns true when it has
    /// taken all it can.
    pub fn readdir(
        &self,
        fh: HandleId,
        offset: u64,
        mut f: impl FnMut(&DirEntry, u64) -> bool,
    ) -> CoreResult<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(Handle::Dir {
            dir,
            entries,
            complete,
        }) = st.handles.get_mut(&fh)
        else {
            return Err(CoreError::BadHandle);
        };
        if offset == 0 && entries.len() > 2 {
            // A rewind: the directory as it is now.
            entries.truncate(2);
            *complete = false;
        }
        let mut i = offset as usize;
        loop {
            while i < entries.len() {
                if f(&entries[i], i as u64 + 1) {
                    return Ok(());
                }
                i += 1;
            }
            if *complete {
                return Ok(());
            }
            let after = (entries.len() > 2).then(|| entries[entries.len() - 1].name.clone());
            let page = meta::list_names_page(&st.conn, *dir, after.as_deref(), DIR_PAGE)?;
            *complete = page.len() < DIR_PAGE;
            entries.extend(
                page.into_iter()
                    .map(|(name, ino, kind)| DirEntry { ino, kind, name }),
            );
        }
    }

    pub fn releasedir(&self, fh: HandleId) -> CoreResult<()> {
        let mut st = self.lock();
        let Some(Handle::Dir { dir, .. }) = st.handles.remove(&fh) else {
            return Ok(());
        };
        // The last handle of a directory removed while open: its row goes.
        if !Locker::open_dirs(&st).contains(&dir)
            && meta::get_inode(&st.conn, dir)?
                .is_some_and(|r| r.attr.kind == FileKind::Dir && r.attr.nlink == 0)
        {
            st.tx(|tx| Ok(meta::delete_inode(tx, dir)?))?;
        }
        Ok(())
    }

    /// Makes all metadata changes so far durable (fsync of a directory).
    pub fn fsyncdir(&self) -> CoreResult<()> {
        let commit = self.lock().commits;
        self.durable_upto(commit)
    }

    /// Removes an inode that has no names and no open handles: its block
    /// references, attributes and row.
    pub(crate) fn purge_locked(&self, st: &mut State, ino: InodeNo) -> CoreResult<()> {
        self.forget_file(st, ino);
        let freed = st.tx(|tx| Locker::purge_rows(tx, ino))?;
        self.free_blocks(st, &freed);
        self.reap_unpinned(st);
        Ok(())
    }

    /// Drops the in-memory state of a file that no longer exists, and the
    /// pins its uncommitted changes held.
    pub(crate) fn forget_file(&self, st: &mut State, ino: InodeNo) {
        if let Some(mut fs) = st.files.remove(&ino) {
            if fs.open > 0 {
                st.files.insert(ino, fs);
                return;
            }
            let idxs: Vec<u64> = fs.dirty_indices();
            for idx in idxs {
                Locker::set_dirty(st, &mut fs, idx, None);
            }
            self.stop_digest(ino, &mut fs);
        }
        self.reap_unpinned(st);
    }

    /// Deletes the rows of an inode and its block references; returns the
    /// block files to free after the commit.
    pub(crate) fn purge_rows(
        tx: &Connection,
        ino: InodeNo,
    ) -> CoreResult<Vec<crate::blocks::BlockId>> {
        meta::delete_inode(tx, ino)?;
        Ok(meta::drop_block_list(tx, ino)?)
    }
}
