//! All DDL of the metadata database, as numbered migrations.
//!
//! | table        | one row per                      | notes                                   |
//! |--------------|----------------------------------|-----------------------------------------|
//! | `inodes`     | file, directory, symlink, node   | times as (seconds, nanoseconds); `parent` is set for directories; `sha256` caches the whole-content hash until the content changes; `version` counts content commits |
//! | `dentries`   | name in a directory              | names are raw bytes (≤ 255); the root's entries are the namespaces; `kind` repeats the inode's kind (listings read names alone) |
//! | `xattrs`     | extended attribute               | names and values as bytes               |
//! | `file_blocks`| block of a regular file          | `idx` = offset / BLOCK_SIZE; a missing row is a hole; `len` ≤ BLOCK_SIZE |
//! | `blocks`     | distinct block content           | `refs` = number of `file_blocks` rows naming it; `state` 0 = dirty (only local), 1 = clean (also in a backend); `present` 1 when the bytes are on local disk |
//! | `orphans`    | unlinked inode still open        | purged on last close, or at the next mount after a crash |
//! | `block_data` | small block's bytes              | blocks shorter than `blocks::INLINE_MAX`; deleted with their `blocks` row |
//! | `sync_queue` | path changed since the backend last had it | keyed by (namespace, path); `seq` grows with every change, so a finished upload only removes the entry if nothing changed meanwhile; `after_*` names an entry that must finish first (the new name of a rename before the old one is deleted) |
//! | `uploads`    | unfinished multipart upload of a queued path | the backend's upload id, the content (SHA-256, size) and part size it is for: resumed when the same content is pushed again, aborted otherwise |
//! | `remote`     | entry the backend is known to hold | what LOCKER last confirmed or listed: kind, size, ETag, SHA-256, mtime, mode; `verified` 1 when LOCKER hashed that content itself, 2 when this host uploaded it (a listed object's SHA-256 is only its label until then) |
//!
//! `inodes.synced_version` is the content version a backend confirmed at the
//! file's own path (a file's blocks may be evicted only while it equals
//! `version` and a `remote` row holds its SHA-256); `inodes.remote_src` is
//! `namespace/path` of the object a file listed only in a backend comes from,
//! and `inodes.remote_etag` its version when the `remote` row does not say it
//! (a file that followed an object someone else replaced).
//!
//! `PRAGMA user_version` holds the number of migrations applied.

use rusqlite::Connection;

/// Each entry is applied once, in order, inside one transaction.
const MIGRATIONS: &[&str] = &[
    // 1: the filesystem.
    "CREATE TABLE inodes (
        ino      INTEGER PRIMARY KEY AUTOINCREMENT,
        kind     INTEGER NOT NULL,
        perm     INTEGER NOT NULL,
        uid      INTEGER NOT NULL,
        gid      INTEGER NOT NULL,
        size     INTEGER NOT NULL DEFAULT 0,
        nlink    INTEGER NOT NULL,
        rdev     INTEGER NOT NULL DEFAULT 0,
        atime_s  INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
        mtime_s  INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        ctime_s  INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
        crtime_s INTEGER NOT NULL, crtime_ns INTEGER NOT NULL,
        parent   INTEGER,
        target   BLOB,
        sha256   BLOB,
        version  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE dentries (
        parent INTEGER NOT NULL,
        name   BLOB NOT NULL,
        ino    INTEGER NOT NULL,
        PRIMARY KEY (parent, name)
    ) WITHOUT ROWID;
    CREATE INDEX dentries_by_ino ON dentries (ino);
    CREATE TABLE xattrs (
        ino   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    ) WITHOUT ROWID;
    CREATE TABLE file_blocks (
        ino   INTEGER NOT NULL,
        idx   INTEGER NOT NULL,
        block BLOB NOT NULL,
        len   INTEGER NOT NULL,
        PRIMARY KEY (ino, idx)
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        id      BLOB PRIMARY KEY,
        size    INTEGER NOT NULL,
        refs    INTEGER NOT NULL,
        state   INTEGER NOT NULL DEFAULT 0,
        present INTEGER NOT NULL DEFAULT 1
    ) WITHOUT ROWID;
    CREATE TABLE orphans (ino INTEGER PRIMARY KEY);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;",
    // 2: small blocks inline in the database.
    "CREATE TABLE block_data (
        id   BLOB PRIMARY KEY,
        data BLOB NOT NULL
    ) WITHOUT ROWID;",
    // 3: the sync sidecar.
    "ALTER TABLE inodes ADD COLUMN remote_only INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE sync_queue (
        ns         TEXT NOT NULL,
        path       BLOB NOT NULL,
        seq        INTEGER NOT NULL,
        since_ns   INTEGER NOT NULL,
        ready_ns   INTEGER NOT NULL,
        bytes      INTEGER NOT NULL DEFAULT 0,
        after_ns   TEXT,
        after_path BLOB,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (ns, path)
    ) WITHOUT ROWID;
    CREATE INDEX sync_queue_by_ready ON sync_queue (ready_ns);
    CREATE TABLE remote (
        ns       TEXT NOT NULL,
        path     BLOB NOT NULL,
        kind     INTEGER NOT NULL,
        size     INTEGER NOT NULL,
        etag     TEXT NOT NULL,
        sha256   BLOB,
        mtime_s  INTEGER,
        mtime_ns INTEGER,
        mode     INTEGER,
        target   BLOB,
        at_ns    INTEGER NOT NULL,
        PRIMARY KEY (ns, path)
    ) WITHOUT ROWID;
    CREATE INDEX remote_by_sha ON remote (sha256);
    CREATE INDEX file_blocks_by_block ON file_blocks (block);",
    // 4: which version of a file a backend confirmed at the file's own path,
    // and where content only in a backend came from.
    "ALTER TABLE inodes ADD COLUMN synced_version INTEGER NOT NULL DEFAULT -1;
    ALTER TABLE inodes ADD COLUMN remote_src BLOB;
    CREATE INDEX inodes_by_sha ON inodes (sha256);",
    // 5: whether LOCKER knows the object's content is what its SHA-256 says
    // (it uploaded it, or hashed it after a fetch), rather than taking the
    // object's own label for it. Rows a confirmed push wrote are known.
    "ALTER TABLE remote ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    UPDATE remote SET verified = 1 WHERE kind = 1 AND sha256 IS NOT NULL AND EXISTS
        (SELECT 1 FROM inodes i WHERE i.sha256 = remote.sha256
            AND i.synced_version = i.version AND i.remote_only = 0);",
    // 6: the version of the object `remote_src` names, for a file that
    // follows an object another writer replaced (its `remote` row keeps the
    // version LOCKER last knew there, which a queued change is subject to).
    "ALTER TABLE inodes ADD COLUMN remote_etag TEXT;",
    // 7: unfinished multipart uploads of queued paths, so that one cut off
    // by a crash or an outage resumes instead of starting over (and one
    // no longer wanted is aborted in the backend).
    "CREATE TABLE uploads (
        ns        TEXT NOT NULL,
        path      BLOB NOT NULL,
        key       TEXT NOT NULL,
        id        TEXT NOT NULL,
        sha256    BLOB NOT NULL,
        size      INTEGER NOT NULL,
        part_size INTEGER NOT NULL,
        PRIMARY KEY (ns, path)
    ) WITHOUT ROWID;",
    // 8: the store's identity of an entry that survives renames (Nextcloud's
    // `oc:fileid`), so that a rename made there is a rename here.
    "ALTER TABLE remote ADD COLUMN file_id TEXT;",
    // 9: queue entries the store refuses for their path alone (a name it
    // cannot hold, a symlink, a quota): listed in `locker status`.
    "ALTER TABLE sync_queue ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;",
    // 10: content hashes are looked up by value only, so files with none
    // (most, until a push or a reader asks) need no index entry: one page
    // less to write for each file created or changed.
    "DROP INDEX inodes_by_sha;
    CREATE INDEX inodes_by_sha ON inodes (sha256) WHERE sha256 IS NOT NULL;",
    // 11: each name carries its inode's kind (which never changes), so a
    // directory listing reads the directory's names alone: a cold `find`
    // or `ls` of a big tree reads a few pages per directory instead of
    // one inode page per entry.
    "ALTER TABLE dentries ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    UPDATE dentries SET kind = (SELECT i.kind FROM inodes i WHERE i.ino = dentries.ino);",
    // 12: the bytes each file holds in blocks (its holes hold none), for
    // `st_blocks`; kept by triggers on the block list (until 16).
    "ALTER TABLE inodes ADD COLUMN alloc INTEGER NOT NULL DEFAULT 0;
    UPDATE inodes SET alloc =
        (SELECT coalesce(sum(f.len), 0) FROM file_blocks f WHERE f.ino = inodes.ino)
        WHERE kind = 1;
    CREATE TRIGGER file_blocks_alloc_ins AFTER INSERT ON file_blocks BEGIN
        UPDATE inodes SET alloc = alloc + NEW.len WHERE ino = NEW.ino;
    END;
    CREATE TRIGGER file_blocks_alloc_del AFTER DELETE ON file_blocks BEGIN
        UPDATE inodes SET alloc = alloc - OLD.len WHERE ino = OLD.ino;
    END;
    CREATE TRIGGER file_blocks_alloc_upd AFTER UPDATE OF len ON file_blocks BEGIN
        UPDATE inodes SET alloc = alloc + NEW.len - OLD.len WHERE ino = NEW.ino;
    END;",
    // 13: the content a push is writing to a path, recorded before the
    // write is sent: an object that landed there before a crash let the
    // push be recorded is known as LOCKER's own (not someone else's).
    "CREATE TABLE sent (
        ns     TEXT NOT NULL,
        path   BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        PRIMARY KEY (ns, path)
    ) WITHOUT ROWID;",
    // 14: small blocks' bytes and extended attributes' values in rowid
    // tables. A WITHOUT ROWID table keeps a row whole in its key B-tree,
    // where a row over about 1 KiB overflows, and each comparison on the
    // way down to a key copies that whole row (up to 64 KiB) from its
    // overflow pages. Measured with 4 KiB blocks: inserts, lookups and
    // deletes took 2.3-2.7x as long as in a rowid table, whose key index
    // holds the 32-byte id alone.
    "CREATE TABLE block_data_new (
        id   BLOB PRIMARY KEY,
        data BLOB NOT NULL
    );
    INSERT INTO block_data_new (id, data) SELECT id, data FROM block_data;
    DROP TABLE block_data;
    ALTER TABLE block_data_new RENAME TO block_data;
    CREATE TABLE xattrs_new (
        ino   INTEGER NOT NULL,
        name  BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ino, name)
    );
    INSERT INTO xattrs_new (ino, name, value) SELECT ino, name, value FROM xattrs;
    DROP TABLE xattrs;
    ALTER TABLE xattrs_new RENAME TO xattrs;",
    // 15: paths by content in the order they are asked for (known ones
    // first, then the newest), so that a look for a copy of some content
    // reads one row, not every path holding it: with 100,000 paths of the
    // same content (empty files, a licence in every package) each look
    // read and sorted them all, about 65 ms, once per upload.
    "CREATE INDEX remote_by_sha_rank ON remote (sha256, verified, at_ns);
    DROP INDEX remote_by_sha;",
    // 16: a file's `alloc` is kept by the writers of its block list, with
    // the statement that updates its row anyway, instead of by triggers: a
    // trigger made SQLite journal each statement and collect the rows of a
    // DELETE in a table of its own first (13 % of an unlink). Statements
    // an older build logged for replay relied on the triggers, and those
    // of a build before 11 on names without a kind: after the replay, the
    // data those migrations fixed is fixed again (`fix_after_replay`).
    "DROP TRIGGER file_blocks_alloc_ins;
    DROP TRIGGER file_blocks_alloc_del;
    DROP TRIGGER file_blocks_alloc_upd;
    INSERT INTO settings (key, value) VALUES ('fix_after_replay', 1)
        ON CONFLICT(key) DO UPDATE SET value = 1;",
    // 17: every content sent to a path since the backend's entry there was
    // last recorded, not only the last: a push whose object landed without
    // its answer, followed by a push of newer content that failed, left
    // LOCKER unable to know the first object as its own.
    "CREATE TABLE sent_new (
        ns     TEXT NOT NULL,
        path   BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        PRIMARY KEY (ns, path, sha256)
    ) WITHOUT ROWID;
    INSERT INTO sent_new (ns, path, sha256) SELECT ns, path, sha256 FROM sent;
    DROP TABLE sent;
    ALTER TABLE sent_new RENAME TO sent;",
    // 18: files only in a backend by the object they are read from, for
    // the look before that object is deleted or replaced.
    "CREATE INDEX inodes_by_remote_src ON inodes (remote_src) WHERE remote_only = 1;",
];

/// Number of migrations this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to `SCHEMA_VERSION`. A database written by a newer
/// build is refused rather than guessed at.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(rusqlite::Error::ToSqlConversionFailure(
            format!(
                "metadata schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
            )
            .into(),
        ));
    }
    for (i, ddl) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(ddl)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta;
    use crate::types::{Attr, FileKind, InodeNo, Timestamp};

    /// An in-memory database with the first `n` migrations applied.
    fn database_at(n: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for (i, ddl) in MIGRATIONS.iter().enumerate().take(n) {
            conn.execute_batch(ddl).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        conn
    }

    /// A database written before names carried their kind gets each one's
    /// kind from its inode.
    #[test]
    fn names_written_before_migration_11_get_their_inodes_kind() {
        let mut conn = database_at(10);
        let now = Timestamp::now();
        let mut names = Vec::new();
        for (n, kind) in [
            (&b"dir"[..], FileKind::Dir),
            (b"file", FileKind::File),
            (b"link", FileKind::Symlink),
            (b"fifo", FileKind::Fifo),
        ] {
            let a = Attr::new_root_owned(InodeNo(0), kind, 0o644, 0, now);
            let target = (kind == FileKind::Symlink).then_some(&b"file"[..]);
            let ino = meta::insert_inode(&conn, &a, None, target).unwrap();
            conn.execute(
                "INSERT INTO dentries (parent, name, ino) VALUES (1, ?1, ?2)",
                rusqlite::params![n, ino.0 as i64],
            )
            .unwrap();
            names.push((n.to_vec(), ino, kind));
        }
        migrate(&mut conn).unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(meta::list_dir(&conn, InodeNo::ROOT).unwrap(), names);
        assert_eq!(
            meta::list_names_page(&conn, InodeNo::ROOT, Some(b"fifo"), 10).unwrap(),
            names[2..].to_vec()
        );
    }

    /// A database written before files counted their blocks' bytes gets
    /// each file's count, and the count follows the block list after.
    #[test]
    fn files_written_before_migration_12_get_their_allocation() {
        use crate::blocks::BlockId;
        let mut conn = database_at(11);
        let now = Timestamp::now();
        let mut a = Attr::new_root_owned(InodeNo(0), FileKind::File, 0o644, 1, now);
        a.size = 16 << 20;
        let ino = meta::insert_inode(&conn, &a, None, None).unwrap();
        for (idx, len) in [(0i64, 1i64 << 20), (16, 4096)] {
            conn.execute(
                "INSERT INTO file_blocks (ino, idx, block, len) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![ino.0 as i64, idx, &[idx as u8; 32][..], len],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let alloc = |c: &Connection| meta::get_inode(c, ino).unwrap().unwrap().attr.alloc;
        assert_eq!(alloc(&conn), (1 << 20) + 4096);
        // From 16 on, the writers of the list keep the count, not triggers.
        let r = |len: u32| meta::BlockRef {
            id: BlockId([7; 32]),
            len,
        };
        meta::put_file_block(&conn, ino, 3, r(100)).unwrap();
        assert_eq!(alloc(&conn), (1 << 20) + 4096);
        assert!(meta::fix_after_replay(&conn).unwrap());
        assert_eq!(alloc(&conn), (1 << 20) + 4196);
        assert!(!meta::fix_after_replay(&conn).unwrap(), "asked twice");
        meta::drop_blocks_from(&conn, ino, 3).unwrap();
        assert_eq!(alloc(&conn), 1 << 20);
    }

    /// Small blocks and extended attributes stored before migration 14
    /// moved them to rowid tables are all there after it, and stay
    /// unique by their keys.
    #[test]
    fn blocks_and_xattrs_written_before_migration_14_survive_it() {
        use crate::blocks::BlockId;
        let mut conn = database_at(13);
        let data = |i: u8| vec![i; 1000 * i as usize + 1];
        for i in 0..40u8 {
            meta::put_inline_block(&conn, &BlockId([i; 32]), &data(i)).unwrap();
            meta::set_xattr(&conn, InodeNo(7), &[b'n', i], &data(i)).unwrap();
        }
        migrate(&mut conn).unwrap();
        let without_rowid: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN ('block_data', 'xattrs')
                 AND sql LIKE '%WITHOUT ROWID%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(without_rowid, 0);
        for i in 0..40u8 {
            let id = BlockId([i; 32]);
            assert_eq!(meta::get_inline_block(&conn, &id).unwrap(), Some(data(i)));
            assert!(!meta::put_inline_block(&conn, &id, b"other").unwrap());
            assert_eq!(
                meta::get_xattr(&conn, InodeNo(7), &[b'n', i]).unwrap(),
                Some(data(i))
            );
        }
        meta::set_xattr(&conn, InodeNo(7), b"n\x01", b"new").unwrap();
        assert_eq!(
            meta::get_xattr(&conn, InodeNo(7), b"n\x01").unwrap(),
            Some(b"new".to_vec())
        );
        assert_eq!(meta::list_xattrs(&conn, InodeNo(7)).unwrap().len(), 40);
    }
}
