//! The metadata store: typed queries over the SQLite database (WAL mode).
//!
//! Owns the connection and the SQL. Callers group calls in a transaction
//! (`rusqlite::Transaction` derefs to `Connection`, so every helper here takes
//! `&Connection`). Statements are cached per connection.

mod ahead;
pub mod schema;
pub mod sync;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, ToSql, params};

use crate::blocks::BlockId;
use crate::types::{Attr, FileKind, InodeNo, Timestamp};

pub type MetaResult<T> = rusqlite::Result<T>;

/// Opens (creating if needed) the database at `path` and migrates it.
pub fn open(path: &Path) -> MetaResult<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&mut conn)?;
    Ok(conn)
}

/// An in-memory database, for tests of the core without a disk.
pub fn open_in_memory() -> MetaResult<Connection> {
    let mut conn = Connection::open_in_memory()?;
    configure(&mut conn)?;
    Ok(conn)
}

/// Frames (pages) in the WAL at which a commit checkpoints it: 64 MiB.
const CHECKPOINT_FRAMES: std::ffi::c_int = 16384;

fn configure(conn: &mut Connection) -> MetaResult<()> {
    // WAL: readers never block the writer and a crash loses nothing that was
    // committed. synchronous=NORMAL keeps commits durable against a daemon
    // crash (the WAL is in the page cache); fsync() asks for a full sync
    // explicitly (see `durable_barrier`).
    // One daemon owns the database (the data directory is locked), so it
    // holds SQLite's lock for good: no file-lock calls per transaction, and
    // the WAL index lives in memory instead of a shared-memory file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints (which fsync) every 64 MiB of WAL rather than every 4 MiB:
    // metadata-heavy work would otherwise pay an fsync every few hundred
    // files. The hooks that do it also read ahead the WAL pages each commit
    // overwrites (see `ahead`).
    ahead::install(conn, CHECKPOINT_FRAMES)?;
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Up to 64 MiB of metadata pages stay in memory (about 250,000 files'
    // names and inodes), so listing and removing trees read no page twice.
    // SQLite walks its page cache at the end of each write transaction;
    // with one commit per 100 ms (see `core::redo`) that walk is cheap.
    conn.pragma_update(None, "cache_size", -65536)?; // 64 MiB
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    schema::migrate(conn)?;
    Ok(())
}

/// Makes every commit so far durable on disk (not only against a crash of the
/// daemon, but against power loss): one tiny transaction under
/// synchronous=FULL syncs the whole WAL.
pub fn durable_barrier(conn: &Connection) -> MetaResult<()> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let r = conn.execute(
        "INSERT INTO settings (key, value) VALUES ('barrier', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    );
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    r.map(|_| ())
}

/// An inode row as stored.
#[derive(Debug, Clone)]
pub struct InodeRow {
    pub attr: Attr,
    pub parent: Option<InodeNo>,
    pub target: Option<Vec<u8>>,
    pub sha256: Option<Vec<u8>>,
    /// The content is only in the backend (listed there, never fetched):
    /// no block list yet; `sha256` is the backend's checksum if it gave one.
    pub remote_only: bool,
    /// Counts content commits.
    pub version: i64,
}

/// The columns `inode_from_row` reads, in its order.
macro_rules! inode_cols {
    ($p:literal) => {
        concat!(
            $p,
            "ino, ",
            $p,
            "kind, ",
            $p,
            "perm, ",
            $p,
            "uid, ",
            $p,
            "gid, ",
            $p,
            "size, ",
            $p,
            "nlink, ",
            $p,
            "rdev, ",
            $p,
            "atime_s, ",
            $p,
            "atime_ns, ",
            $p,
            "mtime_s, ",
            $p,
            "mtime_ns, ",
            $p,
            "ctime_s, ",
            $p,
            "ctime_ns, ",
            $p,
            "crtime_s, ",
            $p,
            "crtime_ns, ",
            $p,
            "parent, ",
            $p,
            "target, ",
            $p,
            "sha256, ",
            $p,
            "remote_only, ",
            $p,
            "version, ",
            $p,
            "alloc"
        )
    };
}

fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec as u32,
    }
}

fn inode_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InodeRow> {
    let kind_code: i64 = r.get(1)?;
    let kind = FileKind::from_code(kind_code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Integer,
            format!("unknown inode kind {kind_code}").into(),
        )
    })?;
    Ok(InodeRow {
        attr: Attr {
            ino: InodeNo(r.get::<_, i64>(0)? as u64),
            kind,
            perm: r.get::<_, i64>(2)? as u16,
            uid: r.get::<_, i64>(3)? as u32,
            gid: r.get::<_, i64>(4)? as u32,
            size: r.get::<_, i64>(5)? as u64,
            nlink: r.get::<_, i64>(6)? as u32,
            rdev: r.get::<_, i64>(7)? as u32,
            atime: ts(r.get(8)?, r.get(9)?),
            mtime: ts(r.get(10)?, r.get(11)?),
            ctime: ts(r.get(12)?, r.get(13)?),
            crtime: ts(r.get(14)?, r.get(15)?),
            // Content only in a backend: how sparse it is is not known here.
            alloc: if r.get::<_, i64>(19)? != 0 {
                r.get::<_, i64>(5)? as u64
            } else {
                r.get::<_, i64>(21)?.max(0) as u64
            },
        },
        parent: r.get::<_, Option<i64>>(16)?.map(|p| InodeNo(p as u64)),
        target: r.get(17)?,
        sha256: r.get(18)?,
        remote_only: r.get::<_, i64>(19)? != 0,
        version: r.get(20)?,
    })
}

pub fn get_inode(conn: &Connection, ino: InodeNo) -> MetaResult<Option<InodeRow>> {
    let mut st = conn.prepare_cached(concat!(
        "SELECT ",
        inode_cols!(""),
        " FROM inodes WHERE ino = ?1"
    ))?;
    st.query_row([ino.0 as i64], inode_from_row).optional()
}

/// Runs a statement that may change the database, telling the redo log its
/// text and parameters first (`note_params`), so that the log need not
/// have SQLite print them into SQL text. Every change made while a mount
/// operation runs goes through here or `put_inline_block`, or is logged
/// as text by the trace hook.
pub(crate) fn exec(conn: &Connection, sql: &str, params: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    let mut st = conn.prepare_cached(sql)?;
    crate::core::note_params(sql, params);
    st.execute(params)
}

/// Inserts a new inode; `attr.ino` is ignored unless it is the root, and the
/// new number is returned.
pub fn insert_inode(
    conn: &Connection,
    attr: &Attr,
    parent: Option<InodeNo>,
    target: Option<&[u8]>,
) -> MetaResult<InodeNo> {
    let ino: Option<i64> = if attr.ino == InodeNo::ROOT {
        Some(1)
    } else {
        None
    };
    exec(
        conn,
        "INSERT INTO inodes (ino, kind, perm, uid, gid, size, nlink, rdev, atime_s, atime_ns,
            mtime_s, mtime_ns, ctime_s, ctime_ns, crtime_s, crtime_ns, parent, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![
            ino,
            attr.kind.code(),
            attr.perm as i64,
            attr.uid as i64,
            attr.gid as i64,
            attr.size as i64,
            attr.nlink as i64,
            attr.rdev as i64,
            attr.atime.sec,
            attr.atime.nsec as i64,
            attr.mtime.sec,
            attr.mtime.nsec as i64,
            attr.ctime.sec,
            attr.ctime.nsec as i64,
            attr.crtime.sec,
            attr.crtime.nsec as i64,
            parent.map(|p| p.0 as i64),
            target,
        ],
    )?;
    Ok(InodeNo(conn.last_insert_rowid() as u64))
}

/// Writes back every attribute of `attr` (not the kind).
pub fn update_attr(conn: &Connection, attr: &Attr) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET perm = ?2, uid = ?3, gid = ?4, size = ?5, nlink = ?6, rdev = ?7,
            atime_s = ?8, atime_ns = ?9, mtime_s = ?10, mtime_ns = ?11, ctime_s = ?12, ctime_ns = ?13
         WHERE ino = ?1",
        params![
        attr.ino.0 as i64,
        attr.perm as i64,
        attr.uid as i64,
        attr.gid as i64,
        attr.size as i64,
        attr.nlink as i64,
        attr.rdev as i64,
        attr.atime.sec,
        attr.atime.nsec as i64,
        attr.mtime.sec,
        attr.mtime.nsec as i64,
        attr.ctime.sec,
        attr.ctime.nsec as i64,
    ],
    )?;
    Ok(())
}

/// Records a new version of a file's content: size and, when given, times;
/// forgets the cached whole-file hash. One statement, no read of the row.
/// Returns false if the inode does not exist. `alloc_delta` is added to
/// the bytes the file holds in blocks (see `add_alloc`).
pub fn update_content(
    conn: &Connection,
    ino: InodeNo,
    size: u64,
    (mtime, ctime): (Option<Timestamp>, Option<Timestamp>),
    alloc_delta: i64,
) -> MetaResult<bool> {
    // The hash is cleared by its own statement, which writes nothing when
    // there is none: naming the column in an UPDATE rewrites its index
    // entry even when the value stays NULL.
    exec(
        conn,
        "UPDATE inodes SET sha256 = NULL WHERE ino = ?1 AND sha256 IS NOT NULL",
        params![ino.0 as i64],
    )?;
    let n = exec(
        conn,
        "UPDATE inodes SET size = ?2,
                mtime_s = coalesce(?3, mtime_s), mtime_ns = coalesce(?4, mtime_ns),
                ctime_s = coalesce(?5, ctime_s), ctime_ns = coalesce(?6, ctime_ns),
                version = version + 1, remote_only = 0, alloc = alloc + ?7
             WHERE ino = ?1",
        params![
            ino.0 as i64,
            size as i64,
            mtime.map(|t| t.sec),
            mtime.map(|t| t.nsec as i64),
            ctime.map(|t| t.sec),
            ctime.map(|t| t.nsec as i64),
            alloc_delta,
        ],
    )?;
    Ok(n > 0)
}

/// A directory's entries changed: sets its mtime and ctime and adds
/// `nlink_delta` to its link count, without reading the row.
pub fn touch_dir(
    conn: &Connection,
    dir: InodeNo,
    now: Timestamp,
    nlink_delta: i64,
) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET mtime_s = ?2, mtime_ns = ?3, ctime_s = ?2, ctime_ns = ?3,
            nlink = max(nlink + ?4, 0)
         WHERE ino = ?1",
        params![dir.0 as i64, now.sec, now.nsec as i64, nlink_delta],
    )?;
    Ok(())
}

/// Removes one link of an inode and sets its ctime; returns whether the
/// inode exists.
pub fn drop_link(conn: &Connection, ino: InodeNo, now: Timestamp) -> MetaResult<bool> {
    Ok(exec(
        conn,
        "UPDATE inodes SET nlink = max(nlink - 1, 0), ctime_s = ?2, ctime_ns = ?3
         WHERE ino = ?1",
        params![ino.0 as i64, now.sec, now.nsec as i64],
    )? == 1)
}

pub fn set_parent(conn: &Connection, ino: InodeNo, parent: InodeNo) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET parent = ?2 WHERE ino = ?1",
        params![ino.0 as i64, parent.0 as i64],
    )?;
    Ok(())
}

pub fn set_sha256(conn: &Connection, ino: InodeNo, version: i64, sha: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET sha256 = ?3 WHERE ino = ?1 AND version = ?2",
        params![ino.0 as i64, version, sha],
    )?;
    Ok(())
}

/// Named files whose cached whole-content hash is `sha` (a few at most).
pub fn inodes_with_sha(conn: &Connection, sha: &[u8]) -> MetaResult<Vec<InodeNo>> {
    let mut st = conn.prepare_cached(
        "SELECT ino FROM inodes WHERE sha256 = ?1 AND nlink > 0 AND kind = 1 LIMIT 16",
    )?;
    let rows = st.query_map([sha], |r| Ok(InodeNo(r.get::<_, i64>(0)? as u64)))?;
    rows.collect()
}

/// Files whose first block is `id` (a few at most).
pub fn inodes_with_first_block(conn: &Connection, id: &BlockId) -> MetaResult<Vec<InodeNo>> {
    let mut st =
        conn.prepare_cached("SELECT ino FROM file_blocks WHERE block = ?1 AND idx = 0 LIMIT 16")?;
    let rows = st.query_map([&id.0[..]], |r| Ok(InodeNo(r.get::<_, i64>(0)? as u64)))?;
    rows.collect()
}

pub fn content_version(conn: &Connection, ino: InodeNo) -> MetaResult<i64> {
    conn.prepare_cached("SELECT version FROM inodes WHERE ino = ?1")?
        .query_row([ino.0 as i64], |r| r.get(0))
}

/// Gives file `ino` content that is only in a backend: its size, checksum,
/// times, permission bits (if given) and source path, as a new version
/// (which the backend holds at the file's own path if `here`).
#[allow(clippy::too_many_arguments)]
pub fn set_remote_only(
    conn: &Connection,
    ino: InodeNo,
    size: u64,
    sha256: Option<&[u8]>,
    mtime: Timestamp,
    perm: Option<u32>,
    src: Option<(&[u8], Option<&str>)>,
    here: bool,
) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET remote_only = 1, size = ?2, sha256 = ?3, mtime_s = ?4,
            mtime_ns = ?5, ctime_s = ?4, ctime_ns = ?5, perm = coalesce(?6, perm),
            version = version + 1,
            synced_version = CASE WHEN ?9 THEN version + 1 ELSE -1 END,
            remote_src = ?7, remote_etag = ?8
         WHERE ino = ?1",
        params![
            ino.0 as i64,
            size as i64,
            sha256,
            mtime.sec,
            mtime.nsec as i64,
            perm.map(|m| m as i64),
            src.map(|s| s.0),
            src.and_then(|s| s.1),
            here,
        ],
    )?;
    Ok(())
}

/// The backend object (`ns/path`) a backend-only file was listed as, and
/// its version when the `remote` row does not hold it.
pub fn remote_src(
    conn: &Connection,
    ino: InodeNo,
) -> MetaResult<Option<(Vec<u8>, Option<String>)>> {
    conn.prepare_cached("SELECT remote_src, remote_etag FROM inodes WHERE ino = ?1")?
        .query_row([ino.0 as i64], |r| {
            Ok(r.get::<_, Option<Vec<u8>>>(0)?
                .map(|s| (s, r.get(1).ok().flatten())))
        })
}

/// File `ino`'s content is here now (no longer only in a backend) and
/// hashes to `sha`.
pub fn set_materialized(conn: &Connection, ino: InodeNo, sha: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET remote_only = 0, sha256 = ?2 WHERE ino = ?1",
        params![ino.0 as i64, sha],
    )?;
    Ok(())
}

/// No version of inode `ino` is confirmed at its own path any more.
pub fn clear_synced(conn: &Connection, ino: InodeNo) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET synced_version = -1 WHERE ino = ?1 AND synced_version != -1",
        params![ino.0 as i64],
    )?;
    Ok(())
}

/// `clear_synced`, if `ino` is a regular file.
pub fn clear_synced_file(conn: &Connection, ino: InodeNo) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET synced_version = -1
         WHERE ino = ?1 AND kind = 1 AND synced_version != -1",
        params![ino.0 as i64],
    )?;
    Ok(())
}

/// The current version of `ino` is confirmed at its own path, if its
/// content still hashes to `sha`.
pub fn confirm_synced(conn: &Connection, ino: InodeNo, sha: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET synced_version = version WHERE ino = ?1 AND sha256 = ?2",
        params![ino.0 as i64, sha],
    )?;
    Ok(())
}

/// Files other than `except` whose cached whole-content hash is `sha`, each
/// with whether its content is only in a backend.
pub fn files_with_sha_except(
    conn: &Connection,
    sha: &[u8],
    except: Option<InodeNo>,
) -> MetaResult<Vec<(InodeNo, bool)>> {
    let mut q = conn.prepare_cached(
        "SELECT ino, remote_only FROM inodes WHERE sha256 = ?1 AND kind = 1 AND ino != ?2",
    )?;
    let rows = q.query_map(params![sha, except.map_or(0, |i| i.0 as i64)], |r| {
        Ok((
            InodeNo(r.get::<_, i64>(0)? as u64),
            r.get::<_, i64>(1)? != 0,
        ))
    })?;
    rows.collect()
}

/// Files whose content is only in a backend, at the object `src`
/// (`ns/path`), other than `except`.
pub fn remote_only_from(
    conn: &Connection,
    src: &[u8],
    except: Option<InodeNo>,
) -> MetaResult<Vec<InodeNo>> {
    let mut q = conn.prepare_cached(
        "SELECT ino FROM inodes WHERE remote_src = ?1 AND remote_only = 1 AND ino != ?2",
    )?;
    let rows = q.query_map(params![src, except.map_or(0, |i| i.0 as i64)], |r| {
        Ok(InodeNo(r.get::<_, i64>(0)? as u64))
    })?;
    rows.collect()
}

/// The backend moved the object at `from` (`ns/path`) to `to`: the
/// backend-only files listed as it are now listed as the object at `to`.
pub fn move_remote_src(conn: &Connection, from: &[u8], to: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE inodes SET remote_src = ?2 WHERE remote_src = ?1 AND remote_only = 1",
        params![from, to],
    )?;
    Ok(())
}

pub fn delete_inode(conn: &Connection, ino: InodeNo) -> MetaResult<()> {
    let i = ino.0 as i64;
    exec(conn, "DELETE FROM inodes WHERE ino = ?1", params![i])?;
    exec(conn, "DELETE FROM xattrs WHERE ino = ?1", params![i])?;
    exec(conn, "DELETE FROM orphans WHERE ino = ?1", params![i])?;
    Ok(())
}

pub fn count_inodes(conn: &Connection) -> MetaResult<u64> {
    conn.query_row("SELECT count(*) FROM inodes", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

// ---- directory entries ----

pub fn lookup(conn: &Connection, parent: InodeNo, name: &[u8]) -> MetaResult<Option<InodeNo>> {
    let mut st = conn.prepare_cached("SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2")?;
    st.query_row(params![parent.0 as i64, name], |r| r.get::<_, i64>(0))
        .optional()
        .map(|o| o.map(|i| InodeNo(i as u64)))
}

/// The inode named `name` in `parent`, in one query.
pub fn lookup_row(conn: &Connection, parent: InodeNo, name: &[u8]) -> MetaResult<Option<InodeRow>> {
    let mut st = conn.prepare_cached(concat!(
        "SELECT ",
        inode_cols!("i."),
        " FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?1 AND d.name = ?2"
    ))?;
    st.query_row(params![parent.0 as i64, name], inode_from_row)
        .optional()
}

/// Names `ino` (of kind `kind`: kept beside the name so that listing a
/// directory reads its names alone, not each entry's inode).
pub fn insert_dentry(
    conn: &Connection,
    parent: InodeNo,
    name: &[u8],
    ino: InodeNo,
    kind: FileKind,
) -> MetaResult<()> {
    exec(
        conn,
        "INSERT INTO dentries (parent, name, ino, kind) VALUES (?1, ?2, ?3, ?4)",
        params![parent.0 as i64, name, ino.0 as i64, kind.code()],
    )?;
    Ok(())
}

pub fn set_dentry(
    conn: &Connection,
    parent: InodeNo,
    name: &[u8],
    ino: InodeNo,
    kind: FileKind,
) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE dentries SET ino = ?3, kind = ?4 WHERE parent = ?1 AND name = ?2",
        params![parent.0 as i64, name, ino.0 as i64, kind.code()],
    )?;
    Ok(())
}

pub fn delete_dentry(conn: &Connection, parent: InodeNo, name: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM dentries WHERE parent = ?1 AND name = ?2",
        params![parent.0 as i64, name],
    )?;
    Ok(())
}

pub fn dir_is_empty(conn: &Connection, dir: InodeNo) -> MetaResult<bool> {
    let mut st = conn.prepare_cached("SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1")?;
    Ok(st
        .query_row([dir.0 as i64], |_| Ok(()))
        .optional()?
        .is_none())
}

/// The entries of a directory, sorted by name: (name, inode, kind).
pub fn list_dir(conn: &Connection, dir: InodeNo) -> MetaResult<Vec<(Vec<u8>, InodeNo, FileKind)>> {
    let mut st = conn
        .prepare_cached("SELECT name, ino, kind FROM dentries WHERE parent = ?1 ORDER BY name")?;
    let rows = st.query_map([dir.0 as i64], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            InodeNo(r.get::<_, i64>(1)? as u64),
            FileKind::from_code(r.get(2)?).unwrap_or(FileKind::File),
        ))
    })?;
    rows.collect()
}

/// Up to `limit` names of directory `dir` that sort after `after`, in name
/// order, with their inode and kind: the directory's own entries only,
/// no inode read (what `readdir` needs).
pub fn list_names_page(
    conn: &Connection,
    dir: InodeNo,
    after: Option<&[u8]>,
    limit: usize,
) -> MetaResult<Vec<(Vec<u8>, InodeNo, FileKind)>> {
    let mut st = conn.prepare_cached(
        "SELECT name, ino, kind FROM dentries WHERE parent = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![dir.0 as i64, after.unwrap_or(b""), limit as i64],
        |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                InodeNo(r.get::<_, i64>(1)? as u64),
                FileKind::from_code(r.get(2)?).unwrap_or(FileKind::File),
            ))
        },
    )?;
    rows.collect()
}

/// One entry of a listing page, with what a listing shows of it.
#[derive(Debug, Clone)]
pub struct PageEntry {
    pub name: Vec<u8>,
    pub ino: InodeNo,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: Timestamp,
    pub sha256: Option<Vec<u8>>,
}

/// Up to `limit` entries of directory `dir` whose names sort after
/// `after` (from the first with `None`), in name order: one query, so a
/// huge directory is listed in pages, each a short look at the database.
pub fn list_dir_page(
    conn: &Connection,
    dir: InodeNo,
    after: Option<&[u8]>,
    limit: usize,
) -> MetaResult<Vec<PageEntry>> {
    let mut st = conn.prepare_cached(
        "SELECT d.name, i.ino, i.kind, i.size, i.mtime_s, i.mtime_ns, i.sha256
         FROM dentries d JOIN inodes i ON i.ino = d.ino
         WHERE d.parent = ?1 AND d.name > ?2 ORDER BY d.name LIMIT ?3",
    )?;
    let rows = st.query_map(
        rusqlite::params![dir.0 as i64, after.unwrap_or(b""), limit as i64],
        |r| {
            Ok(PageEntry {
                name: r.get(0)?,
                ino: InodeNo(r.get::<_, i64>(1)? as u64),
                kind: FileKind::from_code(r.get(2)?).unwrap_or(FileKind::File),
                size: r.get::<_, i64>(3)? as u64,
                mtime: Timestamp {
                    sec: r.get(4)?,
                    nsec: r.get::<_, i64>(5)? as u32,
                },
                sha256: r.get(6)?,
            })
        },
    )?;
    rows.collect()
}

/// One name of `ino`: (parent, name). Hard-linked files have several; the
/// oldest is returned.
pub fn any_name(conn: &Connection, ino: InodeNo) -> MetaResult<Option<(InodeNo, Vec<u8>)>> {
    let mut st = conn.prepare_cached("SELECT parent, name FROM dentries WHERE ino = ?1 LIMIT 1")?;
    st.query_row([ino.0 as i64], |r| {
        Ok((InodeNo(r.get::<_, i64>(0)? as u64), r.get(1)?))
    })
    .optional()
}

/// Every name of `ino`: (parent, name), one per hard link.
pub fn names(conn: &Connection, ino: InodeNo) -> MetaResult<Vec<(InodeNo, Vec<u8>)>> {
    let mut st = conn.prepare_cached("SELECT parent, name FROM dentries WHERE ino = ?1")?;
    let rows = st.query_map([ino.0 as i64], |r| {
        Ok((InodeNo(r.get::<_, i64>(0)? as u64), r.get(1)?))
    })?;
    rows.collect()
}

// ---- extended attributes ----

pub fn get_xattr(conn: &Connection, ino: InodeNo, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2")?
        .query_row(params![ino.0 as i64, name], |r| r.get(0))
        .optional()
}

pub fn set_xattr(conn: &Connection, ino: InodeNo, name: &[u8], value: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3)
         ON CONFLICT(ino, name) DO UPDATE SET value = excluded.value",
        params![ino.0 as i64, name, value],
    )?;
    Ok(())
}

pub fn remove_xattr(conn: &Connection, ino: InodeNo, name: &[u8]) -> MetaResult<bool> {
    Ok(exec(
        conn,
        "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2",
        params![ino.0 as i64, name],
    )? > 0)
}

/// Whether any inode has an extended attribute whose name starts with
/// `prefix` (a scan of the table: for the open).
pub fn any_xattr_with_prefix(conn: &Connection, prefix: &[u8]) -> MetaResult<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM xattrs WHERE substr(name, 1, ?2) = ?1 LIMIT 1",
            params![prefix, prefix.len() as i64],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn list_xattrs(conn: &Connection, ino: InodeNo) -> MetaResult<Vec<Vec<u8>>> {
    let mut st = conn.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
    let rows = st.query_map([ino.0 as i64], |r| r.get(0))?;
    rows.collect()
}

// ---- block lists and block refcounts ----

/// A block of a file: its content id and how many bytes of it are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub id: BlockId,
    pub len: u32,
}

fn block_id_from(bytes: Vec<u8>) -> rusqlite::Result<BlockId> {
    BlockId::from_slice(&bytes).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "block id is not 32 bytes".into(),
        )
    })
}

/// The statement of `file_block` (tests count its runs).
pub(crate) const FILE_BLOCK_SQL: &str =
    "SELECT block, len FROM file_blocks WHERE ino = ?1 AND idx = ?2";

pub fn file_block(conn: &Connection, ino: InodeNo, idx: u64) -> MetaResult<Option<BlockRef>> {
    let mut st = conn.prepare_cached(FILE_BLOCK_SQL)?;
    st.query_row(params![ino.0 as i64, idx as i64], |r| {
        Ok(BlockRef {
            id: block_id_from(r.get(0)?)?,
            len: r.get::<_, i64>(1)? as u32,
        })
    })
    .optional()
}

/// An index at which file `ino` holds block `id` (`None` also when the
/// lookup fails).
pub fn block_index(conn: &Connection, ino: InodeNo, id: &BlockId) -> MetaResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT idx FROM file_blocks WHERE ino = ?1 AND block = ?2 LIMIT 1")?
        .query_row(params![ino.0 as i64, &id.0[..]], |r| r.get(0))
        .ok())
}

/// The block list of a file from `from_idx` on, in order: (idx, block).
pub fn file_blocks_from(
    conn: &Connection,
    ino: InodeNo,
    from_idx: u64,
) -> MetaResult<Vec<(u64, BlockRef)>> {
    let mut st = conn.prepare_cached(
        "SELECT idx, block, len FROM file_blocks WHERE ino = ?1 AND idx >= ?2 ORDER BY idx",
    )?;
    let rows = st.query_map(params![ino.0 as i64, from_idx as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            BlockRef {
                id: block_id_from(r.get(1)?)?,
                len: r.get::<_, i64>(2)? as u32,
            },
        ))
    })?;
    rows.collect()
}

pub fn put_file_block(conn: &Connection, ino: InodeNo, idx: u64, b: BlockRef) -> MetaResult<()> {
    exec(
        conn,
        "INSERT INTO file_blocks (ino, idx, block, len) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(ino, idx) DO UPDATE SET block = excluded.block, len = excluded.len",
        params![ino.0 as i64, idx as i64, &b.id.0[..], b.len as i64],
    )?;
    Ok(())
}

pub fn delete_file_block(conn: &Connection, ino: InodeNo, idx: u64) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM file_blocks WHERE ino = ?1 AND idx = ?2",
        params![ino.0 as i64, idx as i64],
    )?;
    Ok(())
}

/// Counts one more reference to a block, registering it if new.
pub fn incref_block(conn: &Connection, id: &BlockId, size: u32) -> MetaResult<()> {
    // Every caller holds the block's bytes (just stored, or fetched).
    exec(
        conn,
        "INSERT INTO blocks (id, size, refs) VALUES (?1, ?2, 1)
         ON CONFLICT(id) DO UPDATE SET refs = refs + 1, present = 1",
        params![&id.0[..], size as i64],
    )?;
    Ok(())
}

/// Counts one more reference to a block whose bytes are not in the cache
/// (known by name only, fetched when read); a block already registered
/// keeps its presence.
pub fn incref_absent_block(conn: &Connection, id: &BlockId, size: u32) -> MetaResult<()> {
    exec(
        conn,
        "INSERT INTO blocks (id, size, refs, present) VALUES (?1, ?2, 1, 0)
         ON CONFLICT(id) DO UPDATE SET refs = refs + 1",
        params![&id.0[..], size as i64],
    )?;
    Ok(())
}

/// Drops one reference; returns true when the block is no longer referenced
/// (its row is then deleted and the caller frees its bytes after commit).
pub fn decref_block(conn: &Connection, b: &BlockRef) -> MetaResult<bool> {
    let id = &b.id.0[..];
    // The last reference (the usual case: most blocks belong to one file)
    // deletes the row in one statement; otherwise one reference less. (No
    // `RETURNING`: SQLite gathers returned rows in a table of their own,
    // which cost more than the update.)
    if exec(
        conn,
        "DELETE FROM blocks WHERE id = ?1 AND refs <= 1",
        params![id],
    )? == 0
    {
        exec(
            conn,
            "UPDATE blocks SET refs = refs - 1 WHERE id = ?1",
            params![id],
        )?;
        return Ok(false);
    }
    // A block this small keeps its bytes here; a larger one in a file,
    // removed by the caller once the change is committed.
    if b.len < crate::blocks::INLINE_MAX {
        exec(conn, "DELETE FROM block_data WHERE id = ?1", params![id])?;
    }
    Ok(true)
}

/// Drops the block list of inode `ino` from index `from` on, one
/// reference less to each block. Returns the blocks left with no
/// reference whose bytes are files (for the caller to remove once the
/// change is committed).
pub fn drop_blocks_from(conn: &Connection, ino: InodeNo, from: u64) -> MetaResult<Vec<BlockId>> {
    let (freed, bytes) = drop_block_rows(conn, ino, from)?;
    add_alloc(conn, ino, -(bytes as i64))?;
    Ok(freed)
}

/// `drop_blocks_from(0)` for an inode whose row is already deleted (no
/// count to keep).
pub fn drop_block_list(conn: &Connection, ino: InodeNo) -> MetaResult<Vec<BlockId>> {
    Ok(drop_block_rows(conn, ino, 0)?.0)
}

/// Deletes the block list from `from` on: the blocks freed (whose bytes
/// are files) and the bytes the rows counted.
fn drop_block_rows(conn: &Connection, ino: InodeNo, from: u64) -> MetaResult<(Vec<BlockId>, u64)> {
    let blocks = file_blocks_from(conn, ino, from)?;
    if blocks.is_empty() {
        return Ok((Vec::new(), 0));
    }
    exec(
        conn,
        "DELETE FROM file_blocks WHERE ino = ?1 AND idx >= ?2",
        params![ino.0 as i64, from as i64],
    )?;
    let mut freed = Vec::new();
    let mut bytes = 0;
    for (_, b) in blocks {
        bytes += b.len as u64;
        if decref_block(conn, &b)? && b.len >= crate::blocks::INLINE_MAX {
            freed.push(b.id);
        }
    }
    Ok((freed, bytes))
}

/// Adds `delta` to the bytes `ino` holds in blocks (`alloc`, for
/// `st_blocks`). `put_file_block` and `delete_file_block` leave the count
/// to their callers, which add up what they changed and write it once
/// (`update_content` takes it with the rest of the row).
pub fn add_alloc(conn: &Connection, ino: InodeNo, delta: i64) -> MetaResult<()> {
    if delta != 0 {
        exec(
            conn,
            "UPDATE inodes SET alloc = alloc + ?2 WHERE ino = ?1",
            params![ino.0 as i64, delta],
        )?;
    }
    Ok(())
}

/// After the redo log is replayed on a database this build migrated (16
/// asks for it once, for whatever log an older build left): counts every
/// file's `alloc` again from its block list (a log from before 16 relied
/// on triggers) and gives each name its inode's kind (a log from before 11
/// stored none), then clears the request in the same transaction. True if
/// it was asked.
pub fn fix_after_replay(conn: &Connection) -> MetaResult<bool> {
    let tx = conn.unchecked_transaction()?;
    if tx.execute("DELETE FROM settings WHERE key = 'fix_after_replay'", [])? == 0 {
        return Ok(false);
    }
    tx.execute_batch(
        "UPDATE inodes SET alloc =
            (SELECT coalesce(sum(f.len), 0) FROM file_blocks f WHERE f.ino = inodes.ino)
         WHERE kind = 1;
         UPDATE dentries SET kind = (SELECT i.kind FROM inodes i WHERE i.ino = dentries.ino)
         WHERE kind = 0;",
    )?;
    tx.commit()?;
    Ok(true)
}

/// Stores the bytes of a small block unless present; true if inserted.
pub fn put_inline_block(conn: &Connection, id: &BlockId, data: &[u8]) -> MetaResult<bool> {
    let mut st =
        conn.prepare_cached("INSERT OR IGNORE INTO block_data (id, data) VALUES (?1, ?2)")?;
    // Logged binary by itself (its bytes, not a statement).
    crate::core::note_inline_block(&id.0, data);
    Ok(st.execute(params![&id.0[..], data])? > 0)
}

pub fn get_inline_block(conn: &Connection, id: &BlockId) -> MetaResult<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT data FROM block_data WHERE id = ?1")?
        .query_row([&id.0[..]], |r| r.get(0))
        .optional()
}

pub fn block_known(conn: &Connection, id: &BlockId) -> MetaResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM blocks WHERE id = ?1")?
        .query_row([&id.0[..]], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Total bytes of distinct blocks referenced by files.
pub fn block_bytes(conn: &Connection) -> MetaResult<u64> {
    conn.query_row("SELECT coalesce(sum(size), 0) FROM blocks", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

// ---- orphans (unlinked while open) ----

pub fn add_orphan(conn: &Connection, ino: InodeNo) -> MetaResult<()> {
    exec(
        conn,
        "INSERT OR IGNORE INTO orphans (ino) VALUES (?1)",
        params![ino.0 as i64],
    )?;
    Ok(())
}

pub fn orphans(conn: &Connection) -> MetaResult<Vec<InodeNo>> {
    let mut st =
        conn.prepare("SELECT ino FROM orphans UNION SELECT ino FROM inodes WHERE nlink = 0")?;
    let rows = st.query_map([], |r| Ok(InodeNo(r.get::<_, i64>(0)? as u64)))?;
    rows.collect()
}
