//! The redo log: what mount operations changed since the last commit of the
//! metadata, as the SQL statements they ran (parameters written in),
//! appended to `redo.log` as each operation finishes.
//!
//! Why: a SQLite commit writes every page a change touched to the WAL (a
//! dozen 4 KiB pages or more for one small file: the inode, its name, the
//! directory, the queue mark, the block list, the block and their indexes),
//! while a record here is one `pwrite` of a few statements. Mount
//! operations leave their changes in one open transaction (`State::tx`),
//! committed every `COMMIT_INTERVAL` (pages shared by many operations are
//! written once), or sooner when anything other than a mount operation takes
//! the state lock. Each operation's record is in the log before it returns,
//! so a `kill -9` in between loses nothing: the next open replays the log.
//!
//! File format: records, each a header (generation u64, length u32, CRC-32
//! u32 of the generation, length and bytes; little-endian) and the bytes:
//! statements, each a length (u32) and its SQL text. Each write covers
//! whole pages: the record, the bytes of its first page that are already
//! in the file before it, and zeros to the end of its last page, at least
//! a header's worth (which read as the end of the log). A write over part
//! of a page the kernel no longer holds would make it read that page from
//! disk first; the log is rewritten from its start at each generation, so
//! after the page cache dropped it (memory pressure, `drop_caches`), every
//! operation waited for such a read. The database keeps
//! (`settings.redo_gen`) the generation of the last log it committed; only
//! records of the next generation are replayed, from the start of the file
//! up to the first record that is not one (a record of an older generation,
//! whose commit landed, or a torn one). Each generation is written from the
//! start of the file again.
//!
//! Statements are captured with SQLite's trace hook (`SQLITE_TRACE_STMT`,
//! `sqlite3_expanded_sql`): every statement that may write, from the start
//! of the open transaction. The metadata layer's frequent statements tell
//! the log their text and parameters themselves, binary, just before they
//! run (`note_params`), and the hook only checks that the statement is the
//! one noted: SQLite's expansion (which scans the text for parameters and
//! prints a blob one byte at a time) was a tenth of the CPU of a create,
//! rename or unlink. Replayed in order on the state the last commit
//! left, they do the same again: a statement that failed when it first ran
//! (with no effect) fails again and is skipped; an operation that fails
//! takes its statements out of the log (`rollback_to`), and if it had
//! changed rows, the open transaction is rolled back and the operations
//! before it are applied again from the log (`State::undo_op`).

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, c_int, c_uint, c_void};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, ffi};

use crate::core::CoreResult;

const HEADER: usize = 16;
/// The unit a write covers whole (the page size of every Linux platform
/// LOCKER runs on, and a multiple of every file system's block size there).
const PAGE: usize = 4096;
/// A log past this size is committed at the end of the operation that grew
/// it (replay time and memory stay bounded).
pub(crate) const MAX_LOG: u64 = 16 << 20;

/// A record of the buffer with this bit set in its length is a small
/// block's bytes (id, then data) for `block_data`, kept binary: written as
/// SQL text, 4 KiB of data would cost 8,192 formatted hex digits.
const BLOB: u32 = 1 << 31;
const BLOCK_INSERT: &[u8] = b"INSERT OR IGNORE INTO block_data";
/// A record of the buffer with this bit set in its length is a statement
/// with its parameters (see `note_params`): the text's length (u32) and
/// text, the number of parameters (u16), and each one: a type byte
/// (`P_*`) and its value (i64 or f64 little-endian; text and blobs as a
/// length, u32, and bytes).
const PARAMS: u32 = 1 << 30;
const P_NULL: u8 = 0;
const P_INT: u8 = 1;
const P_REAL: u8 = 2;
const P_TEXT: u8 = 3;
const P_BLOB: u8 = 4;

thread_local! {
    /// The capture of the transaction the thread is running an operation
    /// in (set by `Redo::active` around it), for `note_inline_block`.
    static ACTIVE: Cell<*const Capture> = const { Cell::new(std::ptr::null()) };
}

/// Called by the statement that stores a small block, just before it runs:
/// records its bytes binary in the log, and tells the trace hook to skip
/// the statement itself.
pub(crate) fn note_inline_block(id: &[u8], data: &[u8]) {
    ACTIVE.with(|a| {
        let p = a.get();
        if p.is_null() {
            return;
        }
        // SAFETY: set by `Redo::active` from a live `Capture` for the span
        // of one operation on this thread, under the state lock.
        let cap = unsafe { &*p };
        if !cap.on.get() {
            return;
        }
        let mut b = cap.buf.borrow_mut();
        b.extend_from_slice(&((id.len() + data.len()) as u32 | BLOB).to_le_bytes());
        b.extend_from_slice(id);
        b.extend_from_slice(data);
        cap.noted.set(true);
    });
}

/// Called by a statement that may write, just before it runs: records its
/// text and parameters binary, and tells the trace hook to check that it
/// is the statement that runs next and to log nothing more for it. A
/// parameter of another kind leaves the statement to the hook.
pub(crate) fn note_params(sql: &str, params: &[&dyn ToSql]) {
    ACTIVE.with(|a| {
        let p = a.get();
        if p.is_null() {
            return;
        }
        // SAFETY: as in `note_inline_block`.
        let cap = unsafe { &*p };
        if !cap.on.get() || cap.noted.get() {
            return;
        }
        if cap.noted_sql.get().is_some() {
            // The statement noted before never ran: its record would
            // stand for nothing, or for this one with its values.
            cap.give_up();
            return;
        }
        let mut b = cap.buf.borrow_mut();
        let start = b.len();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&(sql.len() as u32).to_le_bytes());
        let text = b.len();
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&(params.len() as u16).to_le_bytes());
        for p in params {
            let v = match p.to_sql() {
                Ok(ToSqlOutput::Borrowed(v)) => v,
                Ok(ToSqlOutput::Owned(ref v)) => {
                    put_value(&mut b, v.into());
                    continue;
                }
                _ => {
                    b.truncate(start);
                    return;
                }
            };
            put_value(&mut b, v);
        }
        let n = (b.len() - start - 4) as u32;
        b[start..start + 4].copy_from_slice(&(n | PARAMS).to_le_bytes());
        cap.noted_sql.set(Some((text, sql.len())));
    });
}

fn put_value(b: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => b.push(P_NULL),
        ValueRef::Integer(i) => {
            b.push(P_INT);
            b.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            b.push(P_REAL);
            b.extend_from_slice(&f.to_le_bytes());
        }
        ValueRef::Text(t) => put_bytes(b, P_TEXT, t),
        ValueRef::Blob(t) => put_bytes(b, P_BLOB, t),
    }
}

fn put_bytes(b: &mut Vec<u8>, tag: u8, t: &[u8]) {
    b.push(tag);
    b.extend_from_slice(&(t.len() as u32).to_le_bytes());
    b.extend_from_slice(t);
}

/// The parameters `put_value` wrote, in order; `None` if they are cut off
/// or of no known type.
fn params_of(mut p: &[u8], n: usize) -> Option<Vec<ValueRef<'_>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (&tag, rest) = p.split_first()?;
        p = rest;
        let v = match tag {
            P_NULL => ValueRef::Null,
            P_INT | P_REAL => {
                let (x, rest) = p.split_first_chunk::<8>()?;
                p = rest;
                if tag == P_INT {
                    ValueRef::Integer(i64::from_le_bytes(*x))
                } else {
                    ValueRef::Real(f64::from_le_bytes(*x))
                }
            }
            P_TEXT | P_BLOB => {
                let (len, rest) = p.split_first_chunk::<4>()?;
                let len = u32::from_le_bytes(*len) as usize;
                let bytes = rest.get(..len)?;
                p = &rest[len..];
                if tag == P_TEXT {
                    ValueRef::Text(bytes)
                } else {
                    ValueRef::Blob(bytes)
                }
            }
            _ => return None,
        };
        out.push(v);
    }
    p.is_empty().then_some(out)
}

impl Capture {
    /// The log cannot stand for the transaction's changes: it commits
    /// instead.
    fn give_up(&self) {
        self.failed.set(true);
        self.gave_up.set(self.gave_up.get() + 1);
    }
}

/// Where an operation began in the capture (`Redo::mark`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    len: usize,
    failed: bool,
}

/// Restores the thread's active capture when an operation ends.
pub(crate) struct Active(*const Capture);

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// What the trace hook fills (owned by `Redo`, handed to SQLite by address).
#[derive(Default)]
struct Capture {
    /// Times the log gave up on a transaction (`give_up`).
    gave_up: Cell<u64>,
    on: Cell<bool>,
    /// `note_inline_block` logged the statement about to run.
    noted: Cell<bool>,
    /// `note_params` logged the statement about to run: where its text is
    /// in `buf` (start, length).
    noted_sql: Cell<Option<(usize, usize)>>,
    /// A statement could not be written out (out of memory): the open
    /// transaction must commit instead of relying on the log.
    failed: Cell<bool>,
    buf: RefCell<Vec<u8>>,
    /// The next statement is not captured (tests).
    #[cfg(test)]
    fail_next: Cell<bool>,
}

unsafe extern "C" fn trace(
    mask: c_uint,
    ctx: *mut c_void,
    p: *mut c_void,
    x: *mut c_void,
) -> c_int {
    if mask != ffi::SQLITE_TRACE_STMT {
        return 0;
    }
    // SAFETY: for SQLITE_TRACE_STMT, `x` is the statement's unexpanded text
    // or, when a trigger starts inside it, a comment naming the trigger
    // (both NUL-terminated, alive for the call).
    if !x.is_null()
        && unsafe { CStr::from_ptr(x as *const std::ffi::c_char) }
            .to_bytes()
            .starts_with(b"--")
    {
        // A trigger's program inside a statement already logged: replaying
        // that statement fires it again. (Logging it would log the outer
        // statement once more, and a relative change would be applied
        // twice over.)
        return 0;
    }
    // SAFETY: `ctx` is the `Capture` a live `Redo` owns (it unregisters the
    // hook before it goes), used only by the thread running the statement,
    // which holds the state lock; `p` is the statement being run.
    unsafe {
        let cap = &*(ctx as *const Capture);
        if !cap.on.get() {
            return 0;
        }
        let stmt = p as *mut ffi::sqlite3_stmt;
        if let Some((at, len)) = cap.noted_sql.take() {
            let raw = ffi::sqlite3_sql(stmt);
            let same = !raw.is_null()
                && cap.buf.borrow().get(at..at + len) == Some(CStr::from_ptr(raw).to_bytes());
            if same {
                #[cfg(test)]
                if cap.fail_next.take() {
                    cap.give_up();
                }
                return 0;
            }
            // Not the statement that was noted: its record stands for
            // nothing that ran. Give up on the log for this transaction.
            cap.give_up();
        }
        if ffi::sqlite3_stmt_readonly(stmt) != 0 {
            return 0;
        }
        #[cfg(test)]
        if cap.fail_next.take() {
            cap.give_up();
            return 0;
        }
        if cap.noted.get() {
            cap.noted.set(false);
            let raw = ffi::sqlite3_sql(stmt);
            if !raw.is_null() && CStr::from_ptr(raw).to_bytes().starts_with(BLOCK_INSERT) {
                return 0;
            }
            // Not the statement that was noted: its record stands for
            // nothing that ran. Give up on the log for this transaction.
            cap.give_up();
        }
        let sql = ffi::sqlite3_expanded_sql(stmt);
        if sql.is_null() {
            cap.give_up();
            return 0;
        }
        let text = CStr::from_ptr(sql).to_bytes();
        let mut b = cap.buf.borrow_mut();
        b.extend_from_slice(&(text.len() as u32).to_le_bytes());
        b.extend_from_slice(text);
        ffi::sqlite3_free(sql as *mut c_void);
    }
    0
}

pub(crate) struct Redo {
    file: File,
    /// Generation the database last committed.
    committed: u64,
    /// Bytes of the current generation in the file.
    len: u64,
    /// The bytes of the last page from its start up to `len` (what the
    /// next write repeats so that it covers that page whole).
    tail: Vec<u8>,
    /// Handed to SQLite by address: `State` declares the connection before
    /// its `Redo`, so the connection (and the hook with it) goes first.
    capture: Box<Capture>,
    #[cfg(test)]
    fail_write: Cell<bool>,
}

fn committed_gen(conn: &Connection) -> rusqlite::Result<u64> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'redo_gen'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0) as u64)
}

fn set_committed_gen(conn: &Connection, generation: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES ('redo_gen', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([generation as i64])?;
    Ok(())
}

/// One logged change: a statement, or a small block's bytes.
pub(crate) enum Entry<'a> {
    Sql(&'a [u8]),
    Block {
        id: &'a [u8],
        data: &'a [u8],
    },
    /// A statement's text and its parameters (`PARAMS`).
    Params {
        sql: &'a [u8],
        params: Vec<ValueRef<'a>>,
    },
}

/// The changes of the records of generation `want` at the start of
/// `data`, in order.
pub(crate) fn records_of(data: &[u8], want: u64) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while data.len() >= off + HEADER {
        let h = &data[off..off + HEADER];
        let generation = u64::from_le_bytes(h[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(h[12..16].try_into().unwrap());
        if generation != want || data.len() < off + HEADER + len {
            break;
        }
        let body = &data[off + HEADER..off + HEADER + len];
        let mut c = crc32fast::Hasher::new();
        c.update(&h[0..12]);
        c.update(body);
        if c.finalize() != crc {
            break;
        }
        body_entries(body, &mut out);
        off += HEADER + len;
    }
    out
}

/// The changes of a record's body (statements and small blocks), in order.
pub(crate) fn entries_of(body: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    body_entries(body, &mut out);
    out
}

fn body_entries<'a>(body: &'a [u8], out: &mut Vec<Entry<'a>>) {
    let mut p = 0;
    while p + 4 <= body.len() {
        let word = u32::from_le_bytes(body[p..p + 4].try_into().unwrap());
        let n = (word & !(BLOB | PARAMS)) as usize;
        if p + 4 + n > body.len() {
            break;
        }
        let bytes = &body[p + 4..p + 4 + n];
        if word & PARAMS != 0 {
            let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
                break;
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some(sql) = rest.get(..len) else { break };
            let Some((count, rest)) = rest[len..].split_first_chunk::<2>() else {
                break;
            };
            let Some(params) = params_of(rest, u16::from_le_bytes(*count) as usize) else {
                break;
            };
            out.push(Entry::Params { sql, params });
        } else if word & BLOB != 0 {
            if n < 32 {
                break;
            }
            out.push(Entry::Block {
                id: &bytes[..32],
                data: &bytes[32..],
            });
        } else {
            out.push(Entry::Sql(bytes));
        }
        p += 4 + n;
    }
}

fn sql_text(sql: &[u8]) -> CoreResult<&str> {
    std::str::from_utf8(sql)
        .map_err(|_| crate::core::CoreError::Corrupt("redo log: SQL is not UTF-8".into()))
}

/// Whether a statement failed for a reason of the moment (a full disk, an
/// I/O error, no memory), not for what it met when it first ran (a name
/// taken: a constraint).
fn of_the_moment(e: &crate::core::CoreError) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        crate::core::CoreError::Meta(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            C::DiskFull
                | C::SystemIoFailure
                | C::OutOfMemory
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::CannotOpen
                | C::ReadOnly
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::FileLockingProtocolFailed
                | C::OperationInterrupted
        ),
        crate::core::CoreError::Io(_) => true,
        _ => false,
    }
}

/// Runs logged changes in order, inside the caller's transaction; stops
/// at a statement that fails for a reason of the moment.
pub(crate) fn run_all(conn: &Connection, entries: &[Entry<'_>]) -> CoreResult<()> {
    let mut failed = 0;
    for e in entries {
        let run = || -> CoreResult<()> {
            match e {
                Entry::Sql(sql) => {
                    let mut st = conn.prepare(sql_text(sql)?)?;
                    let mut rows = st.raw_query();
                    while rows.next()?.is_some() {}
                }
                Entry::Block { id, data } => {
                    conn.prepare_cached(
                        "INSERT OR IGNORE INTO block_data (id, data) VALUES (?1, ?2)",
                    )?
                    .execute(rusqlite::params![id, data])?;
                }
                Entry::Params { sql, params } => {
                    let mut st = conn.prepare_cached(sql_text(sql)?)?;
                    for (i, v) in params.iter().enumerate() {
                        st.raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(*v))?;
                    }
                    let mut rows = st.raw_query();
                    while rows.next()?.is_some() {}
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            if of_the_moment(&e) {
                // Skipped, the rest would be committed without it.
                return Err(e);
            }
            // It failed the same way when it first ran.
            tracing::debug!(error = %e, "redo log: a statement failed again");
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::debug!(failed, "redo log: statements that failed as they did first");
    }
    Ok(())
}

/// Applies what the log at `path` holds beyond the last commit, in one
/// transaction; returns the number of statements run.
pub(crate) fn replay(conn: &Connection, path: &Path) -> CoreResult<usize> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let generation = committed_gen(conn)? + 1;
    let stmts = records_of(&data, generation);
    if stmts.is_empty() {
        return Ok(0);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| -> CoreResult<usize> {
        run_all(conn, &stmts)?;
        set_committed_gen(conn, generation)?;
        Ok(stmts.len())
    })();
    match r {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            Ok(n)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Redo {
    /// Opens (creating) the log at `path` for a database whose pending log,
    /// if any, was replayed, and installs the trace hook on `conn`.
    pub(crate) fn open(conn: &Connection, path: &Path) -> CoreResult<Redo> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(0)?;
        let committed = committed_gen(conn)?;
        let capture = Box::<Capture>::default();
        // SAFETY: the connection is open; the context outlives the hook
        // (`Drop` unregisters it).
        let handle = unsafe { conn.handle() };
        let rc = unsafe {
            ffi::sqlite3_trace_v2(
                handle,
                ffi::SQLITE_TRACE_STMT,
                Some(trace),
                &*capture as *const Capture as *mut c_void,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None).into());
        }
        Ok(Redo {
            file,
            committed,
            len: 0,
            tail: Vec::with_capacity(PAGE),
            capture,
            #[cfg(test)]
            fail_write: Cell::new(false),
        })
    }

    /// A transaction begins: capture its statements from now on.
    pub(crate) fn begin(&mut self) {
        self.capture.buf.borrow_mut().clear();
        self.capture.failed.set(false);
        self.capture.noted.set(false);
        self.capture.noted_sql.set(None);
        self.capture.on.set(true);
        self.len = 0;
        self.tail.clear();
    }

    /// Where an operation begins (for `rollback_to`).
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.capture.buf.borrow().len(),
            failed: self.capture.failed.get(),
        }
    }

    /// The operation that began at `mark` was undone: what the log holds
    /// is what ran before it.
    pub(crate) fn rollback_to(&mut self, mark: Mark) {
        self.capture.buf.borrow_mut().truncate(mark.len);
        // A statement noted but never run went with it, and so did one
        // that could not be captured.
        self.capture.noted.set(false);
        self.capture.noted_sql.set(None);
        self.capture.failed.set(mark.failed);
    }

    /// Writes what the finished operations ran since the last call as one
    /// record. False if the log cannot stand for them (a statement could
    /// not be captured, or the write failed): the caller commits instead.
    pub(crate) fn append(&mut self) -> bool {
        if !self.stands() {
            return false;
        }
        let mut buf = self.capture.buf.borrow_mut();
        if buf.is_empty() {
            return true;
        }
        let generation = self.committed + 1;
        // Whole pages: the start of the last page again, the record, zeros.
        let start = self.len - self.tail.len() as u64;
        let kept = self.tail.len();
        let mut out = std::mem::take(&mut self.tail);
        out.reserve(HEADER + buf.len() + PAGE);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&(buf.len() as u32).to_le_bytes());
        let mut c = crc32fast::Hasher::new();
        c.update(&out[kept..]);
        c.update(&buf);
        out.extend_from_slice(&c.finalize().to_le_bytes());
        out.extend_from_slice(&buf);
        let end = out.len();
        // At least a header's worth of zeros after the record, even when
        // it ends on a page boundary: the log ends there whatever older
        // bytes follow.
        out.resize((end + HEADER).next_multiple_of(PAGE), 0);
        let r = self.write_at(&out, start);
        out.truncate(end);
        match r {
            Ok(()) => {
                self.len = start + end as u64;
                out.drain(..end - end % PAGE);
                self.tail = out;
                buf.clear();
                true
            }
            Err(e) => {
                out.truncate(kept);
                self.tail = out;
                // A write cut short may have left the record whole before
                // the zeros that end it: cut it off, or a replay would
                // apply an operation reported failed. (Making a file
                // shorter needs no room.)
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::error!(error = %e, "cannot cut a redo log record that failed to be written");
                }
                tracing::warn!(error = %e, "cannot write the redo log; committing instead");
                false
            }
        }
    }

    fn write_at(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_write.take() {
            // As a write cut short by a full disk: the record whole, not
            // all of the zeros after it (at least a header's worth).
            self.file.write_all_at(&data[..data.len() - HEADER], at)?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(data, at)
    }

    /// What finished operations ran that is not written to the log yet
    /// (after a failed write), as a record's body; `None` when some of it
    /// could not be captured.
    pub(crate) fn unlogged(&self) -> Option<Vec<u8>> {
        self.stands().then(|| self.capture.buf.borrow().clone())
    }

    /// Whether what the buffer holds stands for what ran: no statement
    /// failed to be captured, and none noted with its parameters is still
    /// waiting to run (an error after the note that its caller went past
    /// would leave a record of something that never ran).
    fn stands(&self) -> bool {
        if self.capture.noted_sql.get().is_some() {
            self.capture.give_up();
        }
        !self.capture.failed.get()
    }

    /// The next write to the log fails, as on a full disk (tests).
    #[cfg(test)]
    pub(crate) fn fail_next_write(&self) {
        self.fail_write.set(true);
    }

    /// The next statement that writes cannot be captured (tests).
    #[cfg(test)]
    pub(crate) fn fail_capture(&self) {
        self.capture.fail_next.set(true);
    }

    /// Times the log gave up on a transaction since it was opened.
    #[cfg(test)]
    pub(crate) fn gave_up(&self) -> u64 {
        self.capture.gave_up.get()
    }

    /// Bytes of the log so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Records in the open transaction that this generation is committed
    /// (its last statement, not captured).
    pub(crate) fn seal(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.capture.on.set(false);
        set_committed_gen(conn, self.committed + 1)
    }

    /// The transaction committed: the log is spent.
    pub(crate) fn committed(&mut self) {
        self.committed += 1;
        self.reset();
    }

    /// The transaction's records, as the log holds them (to apply them
    /// again after SQLite rolled back a commit that failed).
    pub(crate) fn pending(&self) -> std::io::Result<Vec<u8>> {
        let mut data = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut data, 0)?;
        Ok(data)
    }

    /// Generation of the open transaction's records.
    pub(crate) fn generation(&self) -> u64 {
        self.committed + 1
    }

    /// Makes this thread's next small-block statements log themselves
    /// binary (see `note_inline_block`) until the guard goes.
    pub(crate) fn active(&self) -> Active {
        let p = &*self.capture as *const Capture;
        Active(ACTIVE.with(|a| a.replace(p)))
    }

    /// The transaction was rolled back, and committing its records again
    /// failed: they stay in the log, to be applied again (`capture_again`
    /// once they are) or replayed by the next start. What was captured but
    /// not written (the operation that failed with it) goes.
    pub(crate) fn hold(&mut self) {
        self.capture.on.set(false);
        self.capture.failed.set(false);
        self.capture.noted.set(false);
        self.capture.noted_sql.set(None);
        self.capture.buf.borrow_mut().clear();
    }

    /// The records were applied again in a new open transaction: capture
    /// what runs next, appended after them.
    pub(crate) fn capture_again(&mut self) {
        self.capture.on.set(true);
    }

    /// Whether statements were captured that the log does not hold yet
    /// (or could not be captured).
    pub(crate) fn unlogged_waiting(&self) -> bool {
        self.capture.failed.get() || !self.capture.buf.borrow().is_empty()
    }

    fn reset(&mut self) {
        self.capture.on.set(false);
        self.capture.failed.set(false);
        self.capture.noted.set(false);
        self.capture.noted_sql.set(None);
        self.capture.buf.borrow_mut().clear();
        self.len = 0;
        self.tail.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(redo: &Redo) -> Vec<String> {
        let buf = redo.capture.buf.borrow();
        let mut out = Vec::new();
        let mut p = 0;
        while p + 4 <= buf.len() {
            let n = u32::from_le_bytes(buf[p..p + 4].try_into().unwrap()) as usize;
            out.push(String::from_utf8_lossy(&buf[p + 4..p + 4 + n]).into_owned());
            p += 4 + n;
        }
        out
    }

    /// A database with one table `t (k, v)`, and a log at `path` for it.
    fn table_with_log(path: &Path) -> (Connection, Redo) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
        let redo = Redo::open(&conn, path).unwrap();
        (conn, redo)
    }

    /// Bytes the calling thread had the kernel read from storage (Linux's
    /// per-task I/O accounting).
    fn thread_read_bytes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("read_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// Writes back and drops the page cache of `file`.
    fn drop_cached(file: &File) {
        use std::os::fd::AsRawFd;
        file.sync_data().unwrap();
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    /// The log is written from its start again at each generation, over
    /// pages written before. Once the kernel has dropped them from its
    /// cache (memory pressure, `drop_caches`), a write over part of such a
    /// page would first read it from disk, and every operation would wait
    /// for that read: each write covers whole pages instead.
    #[test]
    fn appends_over_pages_the_kernel_dropped_read_nothing_from_disk() {
        // On the disk the sources are on: a file system in memory reads
        // nothing whatever the writes do.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("redo.log");
        let (conn, mut redo) = table_with_log(&path);
        let filler = "x".repeat(300);
        redo.begin();
        for k in 0..100 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, &filler))
                .unwrap();
            assert!(redo.append());
        }
        assert!(redo.len() > 8 * PAGE as u64);
        redo.committed();

        // The premise: this thread's reads of dropped pages are counted.
        drop_cached(&redo.file);
        let before = thread_read_bytes();
        let mut probe = [0u8; 1];
        redo.file
            .read_exact_at(&mut probe, 6 * PAGE as u64)
            .unwrap();
        assert!(
            thread_read_bytes() > before,
            "reading a dropped page of {} read nothing from disk",
            path.display()
        );

        // The next generation: a record from the start of the first page,
        // then one from the middle of it, each after the cache dropped it.
        drop_cached(&redo.file);
        let before = thread_read_bytes();
        redo.begin();
        conn.execute("INSERT INTO t (k, v) VALUES (1000, 'first')", [])
            .unwrap();
        assert!(redo.append());
        let read = thread_read_bytes() - before;
        drop_cached(&redo.file);
        let before = thread_read_bytes();
        conn.execute("INSERT INTO t (k, v) VALUES (1001, 'second')", [])
            .unwrap();
        assert!(redo.append());
        let read = read + thread_read_bytes() - before;
        assert_eq!(read, 0, "appending to the log read {read} bytes from disk");

        // What the file holds is the two records, ended by the zeros
        // after them (the older generation's records beyond stay unread).
        let data = std::fs::read(&path).unwrap();
        let sql: Vec<String> = records_of(&data, redo.generation())
            .into_iter()
            .map(|e| match e {
                Entry::Sql(s) => String::from_utf8_lossy(s).into_owned(),
                _ => panic!("not a statement's text"),
            })
            .collect();
        assert_eq!(
            sql,
            [
                "INSERT INTO t (k, v) VALUES (1000, 'first')",
                "INSERT INTO t (k, v) VALUES (1001, 'second')"
            ]
        );
        assert_eq!(redo.pending().unwrap().len() as u64, redo.len());
    }

    /// A record that ends exactly on a page boundary is still followed by
    /// a header's worth of zeros: whatever an older attempt left after it
    /// (a log that could not be emptied after a failed commit keeps
    /// records of the generation tried again) is never read as more of it.
    #[test]
    fn a_record_ending_on_a_page_boundary_is_followed_by_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redo.log");
        let (conn, mut redo) = table_with_log(&path);
        redo.begin();
        for k in 0..30 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, "y".repeat(300)))
                .unwrap();
            assert!(redo.append());
        }
        redo.committed();
        redo.begin();
        // One record of exactly a page: header, statement length, text.
        let (prefix, suffix) = ("INSERT INTO t (k, v) VALUES (1000, '", "')");
        let n = PAGE - HEADER - 4 - prefix.len() - suffix.len();
        conn.execute(&format!("{prefix}{}{suffix}", "z".repeat(n)), [])
            .unwrap();
        assert!(redo.append());
        assert_eq!(redo.len(), PAGE as u64);
        let data = std::fs::read(&path).unwrap();
        assert!(
            data[PAGE..PAGE + HEADER].iter().all(|&b| b == 0),
            "older bytes follow the record"
        );
        assert_eq!(records_of(&data, redo.generation()).len(), 1);
    }

    /// A statement that fires a trigger is logged once: replaying it fires
    /// the trigger again, so the trigger's own start (which SQLite reports
    /// to the trace hook as well) is no statement of its own.
    #[test]
    fn a_statement_that_fires_a_trigger_is_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL);
             CREATE TABLE total (n INTEGER NOT NULL);
             INSERT INTO total VALUES (0);
             CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
                 UPDATE total SET n = n + NEW.v;
             END;",
        )
        .unwrap();
        let mut redo = Redo::open(&conn, &dir.path().join("redo.log")).unwrap();
        redo.begin();
        conn.execute("INSERT INTO t (k, v) VALUES (1, 5)", [])
            .unwrap();
        assert_eq!(statements(&redo), ["INSERT INTO t (k, v) VALUES (1, 5)"]);
        // Replayed on the state before it, it fires the trigger once more.
        assert!(redo.append());
        conn.execute_batch("DELETE FROM t; UPDATE total SET n = 0")
            .unwrap();
        assert_eq!(replay(&conn, &dir.path().join("redo.log")).unwrap(), 1);
        let n: i64 = conn
            .query_row("SELECT n FROM total", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    /// What `meta::exec` does: the statement's text and parameters go to
    /// the log binary, before it runs.
    fn exec_noted(conn: &Connection, sql: &str, params: &[&dyn ToSql]) -> rusqlite::Result<usize> {
        let mut st = conn.prepare_cached(sql)?;
        note_params(sql, params);
        st.execute(params)
    }

    /// A replay that cannot run a statement for a reason of the moment
    /// (here a full disk: SQLite's page limit), not one it failed for when
    /// it first ran, applies nothing and leaves the log for the next try.
    /// Skipping it would commit the rest without it and mark the log spent.
    #[test]
    fn a_replay_that_meets_a_full_disk_applies_nothing_and_keeps_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let log = dir.path().join("redo.log");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .unwrap();
        let mut redo = Redo::open(&conn, &log).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        redo.begin();
        conn.execute("INSERT INTO t (k, v) VALUES (1, x'00')", [])
            .unwrap();
        // Failed when it first ran, and skipped when replayed.
        assert!(
            conn.execute("INSERT INTO t (k, v) VALUES (1, x'01')", [])
                .is_err()
        );
        for k in 2..=200 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(4000))", [k])
                .unwrap();
        }
        assert!(redo.append());
        // A crash: the transaction never committed.
        drop(conn);
        drop(redo);
        let logged = std::fs::read(&log).unwrap();

        let conn = Connection::open(&db).unwrap();
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 20))
            .unwrap();
        assert!(
            replay(&conn, &log).is_err(),
            "a replay that could not write everything reported success"
        );
        assert_eq!(count(&conn), 0, "part of the log was applied");
        assert_eq!(committed_gen(&conn).unwrap(), 0, "the log was marked spent");
        assert_eq!(std::fs::read(&log).unwrap(), logged, "the log changed");

        conn.execute_batch("PRAGMA max_page_count = 1000000")
            .unwrap();
        replay(&conn, &log).unwrap();
        assert_eq!(count(&conn), 200);
        let v: Vec<u8> = conn
            .query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, [0]);
        assert_eq!(committed_gen(&conn).unwrap(), 1);
    }

    /// A table of every kind of value, and a log for it.
    fn kinds_with_log(path: &Path) -> (Connection, Redo) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE t (k INTEGER PRIMARY KEY, i, r, s, b, n);",
        )
        .unwrap();
        let redo = Redo::open(&conn, path).unwrap();
        (conn, redo)
    }

    fn rows(conn: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
        let mut st = conn
            .prepare("SELECT k, i, r, s, b, n FROM t ORDER BY k")
            .unwrap();
        st.query_map([], |r| (0..6).map(|i| r.get(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Statements noted with their parameters are logged as such (not as
    /// SQLite's text), in order with those the hook logs as text, and a
    /// replay on the state before them makes the same rows: integers
    /// (the extremes too), reals, text, blobs (empty, and bytes no text
    /// could hold) and NULL, a row number SQLite picks itself, a relative
    /// change.
    #[test]
    fn noted_parameters_are_logged_binary_and_replay_to_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redo.log");
        let (conn, mut redo) = kinds_with_log(&path);
        redo.begin();
        let blob: Vec<u8> = (0..=255u8).collect();
        {
            let _a = redo.active();
            let ins = "INSERT INTO t (k, i, r, s, b, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
            exec_noted(
                &conn,
                ins,
                rusqlite::params![1, i64::MIN, 0.1, "a'b", &blob[..], None::<i64>],
            )
            .unwrap();
            exec_noted(
                &conn,
                ins,
                rusqlite::params![None::<i64>, i64::MAX, -2.5e300, "", &[][..] as &[u8], 7],
            )
            .unwrap();
            // Logged as text by the hook, between the two.
            conn.execute("UPDATE t SET i = i - 1 WHERE k = 2", [])
                .unwrap();
            exec_noted(
                &conn,
                "UPDATE t SET i = i + ?2 WHERE k = ?1",
                rusqlite::params![1, 5],
            )
            .unwrap();
        }
        assert!(redo.append());
        let data = std::fs::read(&path).unwrap();
        let kinds: Vec<&str> = records_of(&data, redo.generation())
            .iter()
            .map(|e| match e {
                Entry::Sql(_) => "text",
                Entry::Params { .. } => "params",
                Entry::Block { .. } => "block",
            })
            .collect();
        assert_eq!(kinds, ["params", "params", "text", "params"]);
        let want = rows(&conn);
        conn.execute_batch("DELETE FROM t").unwrap();
        redo.committed();
        // The log of the generation before the commit, replayed.
        let conn2 = Connection::open_in_memory().unwrap();
        conn2
            .execute_batch(
                "CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
                 CREATE TABLE t (k INTEGER PRIMARY KEY, i, r, s, b, n);",
            )
            .unwrap();
        let path2 = dir.path().join("redo2.log");
        std::fs::write(&path2, &data).unwrap();
        assert_eq!(replay(&conn2, &path2).unwrap(), 4);
        assert_eq!(rows(&conn2), want);
        assert_eq!(want[0][2], rusqlite::types::Value::Real(0.1));
        assert_eq!(want[0][4], rusqlite::types::Value::Blob(blob));
    }

    /// A statement noted but not the one that runs next (a caller that
    /// noted one statement and ran another): the log cannot stand for
    /// what ran, so the operation commits instead.
    #[test]
    fn a_noted_statement_that_is_not_the_one_run_gives_up_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, mut redo) = kinds_with_log(&dir.path().join("redo.log"));
        redo.begin();
        {
            let _a = redo.active();
            let mut st = conn
                .prepare_cached("INSERT INTO t (k, i) VALUES (?1, ?2)")
                .unwrap();
            note_params("INSERT INTO t (k, i) VALUES (?1, 3)", rusqlite::params![1]);
            st.execute(rusqlite::params![1, 2]).unwrap();
        }
        assert!(
            !redo.append(),
            "the log stood for a statement that did not run"
        );
        // Undone operations take their notes with them.
        redo.committed();
        redo.begin();
        {
            let _a = redo.active();
            let mark = redo.mark();
            note_params(
                "INSERT INTO t (k, i) VALUES (?1, ?2)",
                rusqlite::params![2, 2],
            );
            redo.rollback_to(mark);
            exec_noted(
                &conn,
                "INSERT INTO t (k, i) VALUES (?1, ?2)",
                rusqlite::params![3, 3],
            )
            .unwrap();
        }
        assert!(redo.append());
        // Noted, then the operation went on without running it.
        {
            let _a = redo.active();
            note_params(
                "INSERT INTO t (k, i) VALUES (?1, ?2)",
                rusqlite::params![4, 4],
            );
        }
        assert!(!redo.append(), "a statement noted but never run was logged");
        redo.committed();
        redo.begin();
        // Noted twice: the first never ran.
        {
            let _a = redo.active();
            note_params(
                "INSERT INTO t (k, i) VALUES (?1, ?2)",
                rusqlite::params![5, 5],
            );
            exec_noted(
                &conn,
                "INSERT INTO t (k, i) VALUES (?1, ?2)",
                rusqlite::params![6, 6],
            )
            .unwrap();
        }
        assert!(
            !redo.append(),
            "the record of a statement that never ran was kept"
        );
    }
}
