//! Rows of the sync queue and of the remote table (see `schema.rs`).

use rusqlite::{Connection, OptionalExtension, params};

use super::{MetaResult, exec};
use crate::types::Timestamp;

/// One change to push: the entry at `ns/path` differs from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub ns: String,
    pub path: Vec<u8>,
    pub seq: i64,
    pub since_ns: i64,
    pub ready_ns: i64,
    pub bytes: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl QueueEntry {
    /// Whether the entry is due at `now`, as `due` selects it: quiet long
    /// enough (or its retry time come), or never tried while unmounting.
    pub fn due(&self, now: i64, hurry: bool) -> bool {
        self.ready_ns <= now || (hurry && self.attempts == 0)
    }
}

/// Kind codes of the remote table (the same as `FileKind` for these).
pub const REMOTE_FILE: i64 = 1;
pub const REMOTE_DIR: i64 = 2;
pub const REMOTE_SYMLINK: i64 = 3;

/// What the backend holds at one path, as last confirmed or listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRow {
    pub kind: i64,
    pub size: u64,
    pub etag: String,
    pub sha256: Option<[u8; 32]>,
    pub mtime: Option<Timestamp>,
    pub mode: Option<u32>,
    pub target: Option<Vec<u8>>,
    /// When the row was written (ns since the epoch).
    pub at_ns: i64,
    /// The content is known to hash to `sha256` (LOCKER uploaded it, or
    /// fetched and hashed it); otherwise `sha256` is the object's label.
    pub verified: bool,
    /// This host wrote the object (an upload or copy of its own).
    pub own: bool,
    /// The version the object replaced, as its writer said (`ObjMeta::base`);
    /// read from a listing, not stored.
    pub base: Option<[u8; 32]>,
    /// The store's identity of the entry, which a rename there keeps.
    pub file_id: Option<String>,
}

pub fn now_ns() -> i64 {
    let t = Timestamp::now();
    t.sec * 1_000_000_000 + t.nsec as i64
}

/// Records a change of `ns/path`. An existing entry keeps its age and takes
/// the new sequence number and ready time; `after` (if given) names an entry
/// that must be done first.
#[allow(clippy::too_many_arguments)]
pub fn mark(
    conn: &Connection,
    ns: &str,
    path: &[u8],
    seq: i64,
    now: i64,
    ready: i64,
    bytes: u64,
    after: Option<(&str, &[u8])>,
) -> MetaResult<()> {
    exec(
        conn,
        "INSERT INTO sync_queue (ns, path, seq, since_ns, ready_ns, bytes, after_ns, after_path)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(ns, path) DO UPDATE SET seq = excluded.seq,
            ready_ns = excluded.ready_ns, bytes = excluded.bytes, attempts = 0, refused = 0,
            after_ns = excluded.after_ns, after_path = excluded.after_path",
        params![
            ns,
            path,
            seq,
            now,
            ready,
            bytes as i64,
            after.map(|a| a.0),
            after.map(|a| a.1),
        ],
    )?;
    Ok(())
}

/// When the next entry not yet ready at `now` becomes ready (ns since the
/// epoch), if any waits.
pub fn next_ready(conn: &Connection, now: i64) -> MetaResult<Option<i64>> {
    conn.query_row(
        "SELECT min(ready_ns) FROM sync_queue WHERE ready_ns > ?1",
        [now],
        |r| r.get(0),
    )
}

pub fn max_seq(conn: &Connection) -> MetaResult<i64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM sync_queue", [], |r| {
        r.get(0)
    })
}

fn entry_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueEntry> {
    Ok(QueueEntry {
        ns: r.get(0)?,
        path: r.get(1)?,
        seq: r.get(2)?,
        since_ns: r.get(3)?,
        ready_ns: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        attempts: r.get::<_, i64>(6)? as u32,
        last_error: r.get(7)?,
    })
}

const ENTRY_COLS: &str = "ns, path, seq, since_ns, ready_ns, bytes, attempts, last_error";

/// Entries ready at `now` whose `after` entry is done, earliest ready
/// first (for changes as they come, the oldest first; an entry waiting to
/// be tried again takes its turn at its new time), leaving out the
/// namespaces in `skip`. With `hurry`, entries not yet quiet count as ready
/// too (but not those waiting after a failure).
///
/// The order is the ready-time index's, so a look reads the rows it
/// returns and no others: ordered by sequence, every ready entry was read
/// and sorted to return the first few, which cost the sidecar a millisecond
/// per look, under the state lock, with thousands queued.
pub fn due(
    conn: &Connection,
    now: i64,
    hurry: bool,
    skip: &[String],
    limit: usize,
) -> MetaResult<Vec<QueueEntry>> {
    let skip = serde_json::to_string(skip).unwrap_or_else(|_| "[]".into());
    let mut st = conn.prepare_cached(&due_sql(hurry))?;
    let rows = st.query_map(params![now, limit as i64, skip], entry_from)?;
    rows.collect()
}

fn due_sql(hurry: bool) -> String {
    // Two statements: with the hurry term in it, the ready time would not
    // bound the scan.
    let ready = if hurry {
        "(q.ready_ns <= ?1 OR q.attempts = 0)"
    } else {
        "q.ready_ns <= ?1"
    };
    format!(
        "SELECT {ENTRY_COLS} FROM sync_queue q INDEXED BY sync_queue_by_ready
         WHERE {ready}
           AND q.ns NOT IN (SELECT value FROM json_each(?3))
           AND (q.after_ns IS NULL OR NOT EXISTS (
                SELECT 1 FROM sync_queue a WHERE a.ns = q.after_ns AND a.path = q.after_path))
         ORDER BY q.ready_ns LIMIT ?2"
    )
}

/// Entries of `ns` with no bytes (removals, and empty files) never tried
/// yet, whose `after` entry is done, ready or not, oldest change first.
pub fn removals_queued(conn: &Connection, ns: &str, limit: usize) -> MetaResult<Vec<QueueEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLS} FROM sync_queue q
         WHERE q.ns = ?1 AND q.bytes = 0 AND q.attempts = 0
           AND (q.after_ns IS NULL OR NOT EXISTS (
                SELECT 1 FROM sync_queue a WHERE a.ns = q.after_ns AND a.path = q.after_path))
         ORDER BY q.seq LIMIT ?2"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params![ns, limit as i64], entry_from)?;
    rows.collect()
}

pub fn get_entry(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<Option<QueueEntry>> {
    let sql = format!("SELECT {ENTRY_COLS} FROM sync_queue WHERE ns = ?1 AND path = ?2");
    conn.prepare_cached(&sql)?
        .query_row(params![ns, path], entry_from)
        .optional()
}

pub fn all_entries(conn: &Connection) -> MetaResult<Vec<QueueEntry>> {
    let sql = format!("SELECT {ENTRY_COLS} FROM sync_queue ORDER BY seq");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map([], entry_from)?;
    rows.collect()
}

/// Removes the entry if it still has sequence number `seq` (nothing changed
/// while it was being pushed). Returns whether it was removed.
pub fn finish(conn: &Connection, ns: &str, path: &[u8], seq: i64) -> MetaResult<bool> {
    Ok(exec(
        conn,
        "DELETE FROM sync_queue WHERE ns = ?1 AND path = ?2 AND seq = ?3",
        params![ns, path, seq],
    )? > 0)
}

/// An unfinished multipart upload of the file at a queued path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRec {
    /// The key it was begun for, and the backend's id of it.
    pub key: String,
    pub id: String,
    /// The content it uploads, and the size of every part but the last.
    pub sha256: [u8; 32],
    pub size: u64,
    pub part_size: u64,
}

fn upload_from(r: &rusqlite::Row, at: usize) -> rusqlite::Result<UploadRec> {
    let sha: Vec<u8> = r.get(at + 2)?;
    Ok(UploadRec {
        key: r.get(at)?,
        id: r.get(at + 1)?,
        sha256: sha.try_into().unwrap_or([0; 32]),
        size: r.get::<_, i64>(at + 3)? as u64,
        part_size: r.get::<_, i64>(at + 4)? as u64,
    })
}

pub fn get_upload(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<Option<UploadRec>> {
    conn.prepare_cached(
        "SELECT key, id, sha256, size, part_size FROM uploads WHERE ns = ?1 AND path = ?2",
    )?
    .query_row(params![ns, path], |r| upload_from(r, 0))
    .optional()
}

pub fn put_upload(conn: &Connection, ns: &str, path: &[u8], u: &UploadRec) -> MetaResult<()> {
    exec(
        conn,
        "INSERT OR REPLACE INTO uploads (ns, path, key, id, sha256, size, part_size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            ns,
            path,
            u.key,
            u.id,
            &u.sha256[..],
            u.size as i64,
            u.part_size as i64
        ],
    )?;
    Ok(())
}

pub fn delete_upload(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM uploads WHERE ns = ?1 AND path = ?2",
        params![ns, path],
    )?;
    Ok(())
}

/// Uploads whose path has no queue entry any more (pushed another way,
/// or removed): nothing will finish them.
pub fn orphan_uploads(conn: &Connection) -> MetaResult<Vec<(String, Vec<u8>, UploadRec)>> {
    let mut st = conn.prepare_cached(
        "SELECT u.ns, u.path, u.key, u.id, u.sha256, u.size, u.part_size FROM uploads u
         WHERE NOT EXISTS (SELECT 1 FROM sync_queue q WHERE q.ns = u.ns AND q.path = u.path)",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, upload_from(r, 2)?)))?;
    rows.collect()
}

/// Removes the entry of `ns/path`, whatever its sequence number.
pub fn remove_entry(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM sync_queue WHERE ns = ?1 AND path = ?2",
        params![ns, path],
    )?;
    Ok(())
}

/// Whether anything below directory `ns/path` is queued.
pub fn any_below(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<bool> {
    Ok(first_below(conn, ns, path)?.is_some())
}

/// The first queued path below directory `ns/path`, if any.
pub fn first_below(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<Option<Vec<u8>>> {
    let mut lo = path.to_vec();
    lo.push(b'/');
    let mut hi = path.to_vec();
    hi.push(b'/' + 1);
    conn.prepare_cached(
        "SELECT path FROM sync_queue WHERE ns = ?1 AND path > ?2 AND path < ?3
         ORDER BY path LIMIT 1",
    )?
    .query_row(params![ns, lo, hi], |r| r.get(0))
    .optional()
}

/// Entry `ns/path` is not due before entry `ns/after` is done.
pub fn set_after(conn: &Connection, ns: &str, path: &[u8], after: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE sync_queue SET after_ns = ?1, after_path = ?3 WHERE ns = ?1 AND path = ?2",
        params![ns, path, after],
    )?;
    Ok(())
}

/// Whether the queue was seeded once with the store's existing entries (a
/// setting that cannot be read counts as not).
pub fn queue_seeded(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT value FROM settings WHERE key = 'sync_seeded'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .is_ok()
}

/// Records that the queue was seeded (see `queue_seeded`).
pub fn set_queue_seeded(conn: &Connection) -> MetaResult<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('sync_seeded', 1)",
        [],
    )?;
    Ok(())
}

/// Puts the entry back for a later try.
pub fn retry(
    conn: &Connection,
    ns: &str,
    path: &[u8],
    ready: i64,
    error: Option<&str>,
    refused: bool,
) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE sync_queue SET ready_ns = max(ready_ns, ?3),
            attempts = attempts + (?4 IS NOT NULL), last_error = ?4, refused = ?5
         WHERE ns = ?1 AND path = ?2",
        params![ns, path, ready, error, refused],
    )?;
    Ok(())
}

/// The entry at `ns/path` is looked at again at `ready`, not before, even
/// while the queue is drained in a hurry (as a retry is): a version just
/// uploaded waits there for its confirmation.
pub fn look_again_at(conn: &Connection, ns: &str, path: &[u8], ready: i64) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE sync_queue SET ready_ns = max(ready_ns, ?3), attempts = max(attempts, 1)
         WHERE ns = ?1 AND path = ?2",
        params![ns, path, ready],
    )?;
    Ok(())
}

/// Up to `limit` entries of `ns` the store refused for their path alone,
/// with the store's reason.
pub fn refused_entries(
    conn: &Connection,
    ns: &str,
    limit: usize,
) -> MetaResult<Vec<(Vec<u8>, Option<String>)>> {
    let mut st = conn.prepare_cached(
        "SELECT path, last_error FROM sync_queue WHERE ns = ?1 AND refused = 1
         ORDER BY path LIMIT ?2",
    )?;
    let rows = st.query_map(params![ns, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The queue of one namespace, summed up.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub ns: String,
    pub entries: u64,
    pub bytes: u64,
    /// When the oldest pending change was made (ns since the epoch).
    pub oldest_ns: Option<i64>,
    pub last_error: Option<String>,
}

/// Per namespace: entries, bytes, oldest change, last error.
pub fn stats(conn: &Connection) -> MetaResult<Vec<QueueStats>> {
    let mut st = conn.prepare(
        "SELECT ns, count(*), coalesce(sum(bytes), 0), min(since_ns),
            (SELECT last_error FROM sync_queue e WHERE e.ns = q.ns AND e.last_error IS NOT NULL
             ORDER BY e.seq DESC LIMIT 1)
         FROM sync_queue q GROUP BY ns",
    )?;
    let rows = st.query_map([], |r| {
        Ok(QueueStats {
            ns: r.get(0)?,
            entries: r.get::<_, i64>(1)? as u64,
            bytes: r.get::<_, i64>(2)? as u64,
            oldest_ns: r.get(3)?,
            last_error: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// A remote row from the `REMOTE_COLS` of `r`, starting at column `at`.
fn remote_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RemoteRow> {
    let sha: Option<Vec<u8>> = r.get(at + 3)?;
    let ms: Option<i64> = r.get(at + 4)?;
    let mn: Option<i64> = r.get(at + 5)?;
    Ok(RemoteRow {
        kind: r.get(at)?,
        size: r.get::<_, i64>(at + 1)? as u64,
        etag: r.get(at + 2)?,
        sha256: sha.and_then(|s| s.try_into().ok()),
        mtime: ms.map(|sec| Timestamp {
            sec,
            nsec: mn.unwrap_or(0) as u32,
        }),
        mode: r.get::<_, Option<i64>>(at + 6)?.map(|m| m as u32),
        target: r.get(at + 7)?,
        at_ns: r.get(at + 8)?,
        verified: r.get::<_, i64>(at + 9)? >= 1,
        own: r.get::<_, i64>(at + 9)? == 2,
        base: None,
        file_id: r.get(at + 10)?,
    })
}

macro_rules! remote_cols {
    () => {
        "kind, size, etag, sha256, mtime_s, mtime_ns, mode, target, at_ns, verified, file_id"
    };
}
const REMOTE_COLS: &str = remote_cols!();

/// How many remote rows of `ns` are below the folder `dir` ("" for the
/// whole namespace), counting at most `limit`.
pub fn remote_under(conn: &Connection, ns: &str, dir: &[u8], limit: usize) -> MetaResult<usize> {
    let n: i64 = if dir.is_empty() {
        conn.prepare_cached("SELECT count(*) FROM (SELECT 1 FROM remote WHERE ns = ?1 LIMIT ?2)")?
            .query_row(params![ns, limit as i64], |r| r.get(0))?
    } else {
        // Keys below `dir/` sort from `dir/` up to `dir0` ('0' follows '/').
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'0');
        conn.prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM remote
             WHERE ns = ?1 AND path > ?2 AND path < ?3 LIMIT ?4)",
        )?
        .query_row(params![ns, lo, hi, limit as i64], |r| r.get(0))?
    };
    Ok(n as usize)
}

pub fn get_remote(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<Option<RemoteRow>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        remote_cols!(),
        " FROM remote WHERE ns = ?1 AND path = ?2"
    ))?
    .query_row(params![ns, path], |r| remote_at(r, 0))
    .optional()
}

/// Whether the backend is known to hold anything at `ns/path` (a
/// `remote` row), reading no column of it.
pub fn remote_held(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM remote WHERE ns = ?1 AND path = ?2")?
        .query_row(params![ns, path], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Every remote row of a namespace, by path.
pub fn remote_rows(conn: &Connection, ns: &str) -> MetaResult<Vec<(Vec<u8>, RemoteRow)>> {
    let sql = format!("SELECT path, {REMOTE_COLS} FROM remote WHERE ns = ?1");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map([ns], |r| Ok((r.get(0)?, remote_at(r, 1)?)))?;
    rows.collect()
}

pub fn put_remote(conn: &Connection, ns: &str, path: &[u8], row: &RemoteRow) -> MetaResult<()> {
    exec(
        conn,
        "INSERT OR REPLACE INTO remote
            (ns, path, kind, size, etag, sha256, mtime_s, mtime_ns, mode, target, at_ns, verified,
             file_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            ns,
            path,
            row.kind,
            row.size as i64,
            row.etag,
            row.sha256.as_ref().map(|s| &s[..]),
            row.mtime.map(|t| t.sec),
            row.mtime.map(|t| t.nsec as i64),
            row.mode.map(|m| m as i64),
            row.target,
            row.at_ns,
            if row.own { 2 } else { row.verified as i64 },
            row.file_id,
        ],
    )?;
    Ok(())
}

/// Records the store's identity of the entry at `ns/path` (learnt from a
/// listing after LOCKER wrote it).
pub fn set_remote_file_id(conn: &Connection, ns: &str, path: &[u8], id: &str) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE remote SET file_id = ?3 WHERE ns = ?1 AND path = ?2",
        params![ns, path, id],
    )?;
    Ok(())
}

/// A push is about to write content `sha` to `ns/path`.
pub fn put_sent(conn: &Connection, ns: &str, path: &[u8], sha: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "INSERT OR IGNORE INTO sent (ns, path, sha256) VALUES (?1, ?2, ?3)",
        params![ns, path, sha],
    )?;
    Ok(())
}

/// Every content a push to `ns/path` was writing since what the backend
/// holds there was last recorded (any of them may have landed).
pub fn get_sent(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<Vec<Vec<u8>>> {
    conn.prepare_cached("SELECT sha256 FROM sent WHERE ns = ?1 AND path = ?2")?
        .query_map(params![ns, path], |r| r.get(0))?
        .collect()
}

/// Whether a push to `ns/path` wrote anything not yet recorded.
pub fn any_sent(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<bool> {
    conn.prepare_cached("SELECT 1 FROM sent WHERE ns = ?1 AND path = ?2 LIMIT 1")?
        .exists(params![ns, path])
}

pub fn delete_sent(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM sent WHERE ns = ?1 AND path = ?2",
        params![ns, path],
    )?;
    Ok(())
}

pub fn delete_remote(conn: &Connection, ns: &str, path: &[u8]) -> MetaResult<()> {
    exec(
        conn,
        "DELETE FROM remote WHERE ns = ?1 AND path = ?2",
        params![ns, path],
    )?;
    Ok(())
}

/// Whether a path other than `ns/path` is known to hold a file with this
/// content (a label alone does not count), and will go on holding it: a
/// path with a change of its own still queued may be about to be replaced
/// or removed (two copies removed together must not each count on the
/// other). Stops at the first one.
pub fn other_copy(conn: &Connection, sha: &[u8], ns: &str, path: &[u8]) -> MetaResult<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM remote r WHERE r.sha256 = ?1 AND r.kind = 1
            AND r.verified >= 1 AND NOT (r.ns = ?2 AND r.path = ?3)
            AND NOT EXISTS (SELECT 1 FROM sync_queue q WHERE q.ns = r.ns AND q.path = r.path))",
    )?
    .query_row(params![sha, ns, path], |r| r.get(0))
}

/// A path in the backend (any namespace) holding a file with this content:
/// with `verified_only`, one whose content LOCKER uploaded or hashed itself
/// (a source for a server-side copy); otherwise also one whose label says so
/// (enough to fetch from, since what is fetched is checked). Known ones
/// first, then the newest.
pub fn remote_with_sha(
    conn: &Connection,
    sha: &[u8],
    verified_only: bool,
) -> MetaResult<Option<(String, Vec<u8>, RemoteRow)>> {
    conn.prepare_cached(&remote_with_sha_sql())?
        .query_row(params![sha, verified_only as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, remote_at(r, 2)?))
        })
        .optional()
}

fn remote_with_sha_sql() -> String {
    format!(
        "SELECT ns, path, {REMOTE_COLS} FROM remote WHERE sha256 = ?1 AND kind = 1
            AND (verified >= 1 OR ?2 = 0) ORDER BY verified DESC, at_ns DESC LIMIT 1"
    )
}

/// Every path in the backends holding a file with this content (as LOCKER
/// knows it, or as its label says): known ones first, then the newest.
pub fn remotes_with_sha(
    conn: &Connection,
    sha: &[u8],
) -> MetaResult<Vec<(String, Vec<u8>, RemoteRow)>> {
    let sql = format!(
        "SELECT ns, path, {REMOTE_COLS} FROM remote WHERE sha256 = ?1 AND kind = 1
            ORDER BY verified DESC, at_ns DESC LIMIT 16"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map([sha], |r| Ok((r.get(0)?, r.get(1)?, remote_at(r, 2)?)))?;
    rows.collect()
}

/// The version `etag` of `ns/path` is no longer there (someone replaced or
/// removed it): it is no copy source and keeps no block evictable. The row
/// itself stays, as what a queued change there is conditional on.
pub fn unverify_remote(conn: &Connection, ns: &str, path: &[u8], etag: &str) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE remote SET verified = 0 WHERE ns = ?1 AND path = ?2 AND etag = ?3",
        params![ns, path, etag],
    )?;
    Ok(())
}

/// The version of the file at `ns/path` fetched by its ETag (any, without
/// one) hashes to `sha`: the row takes that checksum as checked by LOCKER,
/// unless it names another.
pub fn verify_remote(
    conn: &Connection,
    ns: &str,
    path: &[u8],
    sha: &[u8],
    etag: Option<&str>,
) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE remote SET sha256 = ?3, verified = max(verified, 1)
         WHERE ns = ?1 AND path = ?2 AND kind = 1 AND (sha256 IS NULL OR sha256 = ?3)
            AND (?4 IS NULL OR etag = ?4)",
        params![ns, path, sha, etag],
    )?;
    Ok(())
}

/// Whether the block may be dropped from the cache: every file naming it
/// has content the backend is known to hold. Returns the inodes naming it
/// when it may (the caller also checks they are not open).
pub fn block_in_backend(conn: &Connection, id: &[u8]) -> MetaResult<Option<Vec<i64>>> {
    let mut st = conn.prepare_cached(
        "SELECT fb.ino, (i.synced_version = i.version AND i.sha256 IS NOT NULL AND EXISTS
                 (SELECT 1 FROM remote r WHERE r.sha256 = i.sha256 AND r.kind = 1
                    AND r.verified >= 1))
         FROM file_blocks fb JOIN inodes i ON i.ino = fb.ino WHERE fb.block = ?1",
    )?;
    let mut inos = Vec::new();
    let mut rows = st.query([id])?;
    while let Some(r) = rows.next()? {
        let ok: bool = r.get(1)?;
        if !ok {
            return Ok(None);
        }
        inos.push(r.get(0)?);
    }
    Ok(Some(inos))
}

pub fn set_block_present(conn: &Connection, id: &[u8], present: bool) -> MetaResult<()> {
    exec(
        conn,
        "UPDATE blocks SET present = ?2 WHERE id = ?1",
        params![id, present as i64],
    )?;
    Ok(())
}

/// Ids of blocks held as files (not inline) and present.
pub fn present_file_blocks(conn: &Connection, inline_max: u32) -> MetaResult<Vec<Vec<u8>>> {
    let mut st = conn.prepare("SELECT id FROM blocks WHERE present = 1 AND size >= ?1")?;
    let rows = st.query_map([inline_max as i64], |r| r.get(0))?;
    rows.collect()
}

/// Bytes of file-held blocks that no backend holds yet (dirty).
pub fn dirty_bytes(conn: &Connection, inline_max: u32) -> MetaResult<u64> {
    conn.query_row(
        "SELECT coalesce(sum(b.size), 0) FROM blocks b WHERE b.size >= ?1 AND b.present = 1
           AND EXISTS (SELECT 1 FROM file_blocks fb JOIN inodes i ON i.ino = fb.ino
                WHERE fb.block = b.id AND (i.sha256 IS NULL OR i.synced_version != i.version
                    OR NOT EXISTS (SELECT 1 FROM remote r WHERE r.sha256 = i.sha256 AND r.kind = 1
                        AND r.verified >= 1)))",
        [inline_max as i64],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A look at the queue reads the rows it returns, not every ready
    /// entry: the sidecar looks every few milliseconds while a burst of
    /// changes turns quiet, under the state lock the mount waits on.
    #[test]
    fn a_look_at_a_long_queue_reads_only_what_it_returns() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::meta::schema::migrate(&mut conn).unwrap();
        // 2,000 entries ready, then 8,000 not yet quiet; the ready ones in
        // an order their sequence numbers do not follow.
        for i in 0..10_000i64 {
            let ready = if i < 2_000 {
                1_000 + (i * 7919) % 2_000
            } else {
                10_000 + i
            };
            mark(
                &conn,
                "corp",
                format!("f{i}").as_bytes(),
                i,
                0,
                ready,
                4096,
                None,
            )
            .unwrap();
        }
        for hurry in [false, true] {
            let mut st = conn.prepare_cached(&due_sql(hurry)).unwrap();
            st.reset_status(rusqlite::StatementStatus::Sort);
            st.reset_status(rusqlite::StatementStatus::FullscanStep);
            let n = st
                .query_map(params![5_000, 40, "[]"], entry_from)
                .unwrap()
                .count();
            assert_eq!(n, 40);
            assert_eq!(st.get_status(rusqlite::StatementStatus::Sort), 0, "sorted");
            let steps = st.get_status(rusqlite::StatementStatus::FullscanStep);
            assert!(
                steps < 100,
                "{steps} rows stepped over to return 40 (hurry {hurry})"
            );
            let got = due(&conn, 5_000, hurry, &[], 40).unwrap();
            assert_eq!(got.len(), 40);
            assert!(got.windows(2).all(|w| w[0].ready_ns <= w[1].ready_ns));
            assert_eq!(got[0].ready_ns, 1_000);
        }
        // Not ready, with no hurry: nothing, and nothing read.
        assert!(due(&conn, 999, false, &[], 40).unwrap().is_empty());
    }

    /// A look for a copy of some content reads the row it returns, however
    /// many paths hold that content (empty files, a licence in every
    /// package): it runs once per upload.
    #[test]
    fn a_look_for_a_copy_reads_one_row_however_many_paths_hold_the_content() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::meta::schema::migrate(&mut conn).unwrap();
        let sha = [5u8; 32];
        let row = |i: i64, verified: bool, own: bool| RemoteRow {
            kind: REMOTE_FILE,
            size: 0,
            etag: format!("e{i}"),
            sha256: Some(sha),
            mtime: None,
            mode: None,
            target: None,
            at_ns: i,
            verified,
            own,
            base: None,
            file_id: None,
        };
        // Labels, hashed ones and this host's own uploads, mixed; the
        // newest of this host's is number 2,999.
        for i in 0..3_000i64 {
            let r = row(i, i % 3 != 0, i % 3 == 2);
            put_remote(&conn, "corp", format!("f{i:04}").as_bytes(), &r).unwrap();
        }
        put_remote(&conn, "corp", b"label", &row(9_999, false, false)).unwrap();
        let mut st = conn.prepare_cached(&remote_with_sha_sql()).unwrap();
        st.reset_status(rusqlite::StatementStatus::Sort);
        st.reset_status(rusqlite::StatementStatus::VmStep);
        st.query_row(params![&sha[..], 1], |_| Ok(())).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::Sort), 0, "sorted");
        let steps = st.get_status(rusqlite::StatementStatus::VmStep);
        assert!(steps < 500, "{steps} steps to find one of 3,001 paths");
        drop(st);
        let (_, path, got) = remote_with_sha(&conn, &sha, true).unwrap().unwrap();
        assert_eq!(
            (path.as_slice(), got.at_ns, got.own),
            (&b"f2999"[..], 2_999, true)
        );
        let (_, path, _) = remote_with_sha(&conn, &sha, false).unwrap().unwrap();
        assert_eq!(path, b"f2999", "a label is never preferred to a known copy");
        assert!(other_copy(&conn, &sha, "corp", b"f2999").unwrap());
        let lone = [6u8; 32];
        let mut r = row(1, true, true);
        r.sha256 = Some(lone);
        put_remote(&conn, "corp", b"lone", &r).unwrap();
        assert!(!other_copy(&conn, &lone, "corp", b"lone").unwrap());
        assert!(other_copy(&conn, &lone, "deck", b"lone").unwrap());
    }
}
