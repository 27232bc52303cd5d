//! The filesystem core: every filesystem operation, with no FUSE or HTTP
//! types. One `Locker` serves the mount (and later the HTTP API).
//!
//! Ownership: `Locker` owns the metadata connection and all in-memory state
//! behind one mutex (`state`), and the block store (internally synchronised).
//! Lock order: `state`, then the block store's descriptor cache; nothing
//! waits on the network or another lock while holding `state`.
//!
//! Invariants:
//! - A regular file's bytes are its block list (`file_blocks`) overlaid by
//!   the uncommitted changes of its `FileState` (see `file.rs`); no block's
//!   content extends past the file size.
//! - `blocks.refs` equals the number of `file_blocks` rows naming the block;
//!   a block file on disk that no row names and no `FileState` pins is
//!   garbage, collected at the next mount.
//! - A directory's `nlink` is 2 plus its subdirectories.

mod acl;
pub mod crash;
mod digest;
pub mod error;
mod file;
pub mod fsck;
mod hasher;
pub mod hot;
mod inode;
pub mod namespace;
pub mod objects;
mod recover;
mod redo;
pub mod sync;
mod wal;
mod xattr;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) type StateGuard<'a> = parking_lot::MutexGuard<'a, State>;
use std::time::Duration;

use rusqlite::Connection;

use crate::blocks::{BlockId, BlockStore};
use crate::meta;
pub use crate::types;
pub use acl::{ACL_ACCESS, ACL_DEFAULT, is_acl_name};
pub use error::{CoreError, CoreResult};
use file::FileState;
pub(crate) use redo::{note_inline_block, note_params};
pub use types::*;
pub use xattr::XATTR_SHA256;

/// Settings of the core that come from the configuration.
#[derive(Debug, Clone)]
pub struct LockerOptions {
    /// Namespaces to create at open if they do not exist yet.
    pub namespaces: Vec<String>,
    /// Uncommitted file data kept in memory before it is spilled into the
    /// block store (still uncommitted), across all open files.
    pub dirty_memory_limit: u64,
    /// Bound of the block cache in bytes.
    pub cache_limit: u64,
    /// How far writers may take the cache past its bound before they wait.
    pub cache_margin: u64,
    /// How long a write waits for cache space before ENOSPC.
    pub write_timeout: Duration,
    /// How long a changed path stays quiet before it is pushed.
    pub sync_delay: Duration,
    /// How far ahead of a sequential reader evicted blocks are fetched, at
    /// most (the window starts at two blocks and doubles while the reader
    /// stays sequential); an eighth of the cache bound caps it.
    pub readahead_limit: u64,
    /// A file that exists only in a backend and is at most this large is
    /// downloaded and checked whole before its first byte is served; a
    /// larger one is streamed (see `sync/stream.rs`).
    pub verify_whole: u64,
}

impl LockerOptions {
    /// The margin that goes with a cache bound: an eighth of it plus 16 MiB
    /// (blocks being written and hashed while writers are held back).
    pub fn margin_for(limit: u64) -> u64 {
        limit / 8 + (16 << 20)
    }
}

impl Default for LockerOptions {
    fn default() -> Self {
        LockerOptions {
            namespaces: Vec::new(),
            dirty_memory_limit: 256 << 20,
            cache_limit: 1 << 40,
            cache_margin: LockerOptions::margin_for(1 << 40),
            write_timeout: Duration::from_secs(60),
            sync_delay: Duration::from_secs(3),
            readahead_limit: 64 << 20,
            verify_whole: 8 << 20,
        }
    }
}

pub struct Locker {
    state: parking_lot::Mutex<State>,
    blocks: Arc<BlockStore>,
    opts: LockerOptions,
    /// Reads objects of the backends (set by the sidecar).
    remote: OnceLock<Arc<dyn sync::RemoteSource>>,
    /// Fetches blocks ahead of sequential readers in the background (set
    /// by the sidecar): takes the file and the blocks, never blocks.
    prefetcher: OnceLock<sync::Prefetcher>,
    /// Wakes the sidecar after a change.
    waker: OnceLock<Arc<dyn Fn() + Send + Sync>>,
    /// Tells the kernel what a change from a backend made stale.
    invalidator: OnceLock<sync::Invalidator>,
    /// Writers waiting for cache space.
    pressure: AtomicUsize,
    /// Blocks being fetched from a backend right now, so concurrent readers
    /// of one region wait for one fetch instead of each making their own.
    fetching: Arc<sync::Fetching>,
    /// Blocks fetched for readers of files too large to keep (see
    /// `sync/passing.rs`).
    passing: sync::Passing,
    /// Files that exist only in a backend being read without a whole
    /// download (see `sync/stream.rs`).
    streams: Mutex<HashMap<InodeNo, Arc<sync::Stream>>>,
    /// Versions of files (inode, version) whose streamed content did not
    /// match their SHA-256: reads of them fail.
    bad_content: Mutex<std::collections::HashSet<(InodeNo, i64)>>,
    /// Changes to the metadata so far (see `hot.rs`).
    generation: hot::Generation,
    /// Small files for the API's hot path.
    hot: hot::HotCache,
    /// Group commit: (commits known durable, a barrier is running).
    synced: Mutex<(u64, bool)>,
    synced_cv: std::sync::Condvar,
    /// Whole-file hashes of sequential writers (see `digest.rs`).
    digests: digest::Digests,
    /// Where a crash test stops this core (see `crash.rs`).
    pub crash: crash::CrashPoints,
    /// Some inode may have a `security.*` extended attribute (false only
    /// while none was ever found or set: see `getxattr`).
    security_xattrs: std::sync::atomic::AtomicBool,
    /// Some inode may have a POSIX ACL (false only while none was ever
    /// found or set): otherwise creations, chmods and the kernel's ACL
    /// lookups need no query for them.
    acls: std::sync::atomic::AtomicBool,
}

enum Handle {
    File {
        ino: InodeNo,
        mode: OpenMode,
        /// Where a sequential reader's next read starts (readahead trigger).
        next_read: u64,
        /// Streaming readahead: the first block not yet asked of the
        /// prefetcher, and the window (in blocks) it last asked for.
        ahead: u64,
        window: u64,
    },
    Dir {
        dir: InodeNo,
        /// Entries read so far ("." and ".." first); entry `i` has offset
        /// `i + 1`, stable for the handle.
        entries: Vec<DirEntry>,
        /// Every entry of the directory has been read.
        complete: bool,
    },
}

pub(crate) struct State {
    conn: Connection,
    /// The redo log of the open transaction (none for a database without a
    /// directory: then every change commits at once). Declared after the
    /// connection, which must go first (see `redo::Redo::capture`).
    redo: Option<redo::Redo>,
    /// Per-inode state of regular files that are open or have uncommitted
    /// changes.
    files: HashMap<InodeNo, FileState>,
    handles: HashMap<HandleId, Handle>,
    next_handle: u64,
    /// Blocks referenced by uncommitted changes: their bytes must stay even
    /// if no committed row names them, and are never evicted.
    pins: HashMap<BlockId, u32>,
    /// Blocks of snapshots being read (API downloads, uploads): never freed
    /// while held, but evicted like any other while a backend holds the
    /// version that names them (the reader fetches them again), so slow
    /// readers cannot hold the cache past its bound.
    read_pins: HashMap<BlockId, u32>,
    /// Snapshots not yet released of files whose content is only in a
    /// backend, per file: the stream reading such a file (open nowhere in
    /// the mount) ends with the last of them, not with the first.
    remote_snaps: HashMap<InodeNo, u32>,
    /// Blocks whose last pin went since the last `reap`: freed there unless
    /// a committed row (or a new pin) names them. Every path that drops a
    /// pin goes through `unpin`, so no stored block can be forgotten.
    unpinned: Vec<BlockId>,
    /// Bytes of uncommitted file data held in memory.
    mem_dirty: u64,
    /// `commits` known durable on disk (a barrier made them so).
    synced_upto: u64,
    /// The WAL, synced by barriers outside the lock (none in memory).
    wal: Option<wal::Wal>,
    /// `commits` when the WAL was last moved into the database file.
    checkpointed_at: u64,
    /// Transactions committed so far (for group commit: a barrier makes
    /// every one up to its count durable).
    commits: u64,
    hasher: hasher::Hasher,
    /// Sequence number of the last sync-queue mark.
    next_seq: i64,
    /// Quiet time before a marked path is pushed, in ns.
    sync_delay_ns: i64,
    /// Set while changes from a backend are applied: they are not marked.
    suppress_marks: bool,
    /// Inside `batch`: `tx` joins the open transaction.
    in_batch: bool,
    /// Block files freed inside the open batch: removed once it commits.
    free_after_batch: Vec<BlockId>,
    /// Blocks held as files in the cache, least recently used last.
    lru: lru::LruCache<BlockId, ()>,
    /// Paths whose removal (or move away) a backend confirmed lately, with
    /// when: a listing that began before that may still show them, and
    /// must not bring them back.
    gone_remote: std::collections::HashMap<(String, Vec<u8>), i64>,
    /// When the open write transaction began: the changes of mount
    /// operations made since wait in it for the next commit (see `tx`).
    open_tx: Option<std::time::Instant>,
    /// Block files freed by changes not yet committed: removed once they are
    /// (a crash before brings back rows that name them).
    free_after_commit: Vec<BlockId>,
    /// Block files freed by commits not yet durable, with the number of
    /// the commit: removed once a barrier or checkpoint made it durable. A
    /// power cut before may take the commit and bring back rows that name
    /// them (an earlier, fsynced version of a file). See `set_synced`.
    free_after_durable: Vec<(u64, BlockId)>,
    /// When the oldest of `free_after_durable` was freed.
    free_pending_since: Option<std::time::Instant>,
    /// When `retry_closed` last looked for files closed with a failed
    /// commit, and whether their commit failed then.
    closed_tried: Option<std::time::Instant>,
    closed_failing: bool,
    /// Wakes the committer when a transaction is left open.
    committer: Arc<Committer>,
    /// The block store (to remove blocks freed by a commit).
    block_store: Arc<BlockStore>,
    /// Bumped by every change (see `hot.rs`).
    generation: hot::Generation,
    /// Directory paths for queue marks, used while an operation runs.
    dir_paths: Arc<sync::DirPaths>,
    /// What was read since the last change (see `inode::Seen`).
    seen: inode::Seen,
    /// Set while operations reported done wait in the redo log, not
    /// committed: their commit failed, and so did committing them again (a
    /// disk that stays full). See `hold`.
    held: Option<Held>,
    /// The next this many commits fail as a full disk would make them
    /// (tests).
    #[cfg(test)]
    fail_commits: u32,
    /// The `fail_op`th operation from now (1: the next) fails after it
    /// ran, as one whose last step fails (tests).
    #[cfg(test)]
    fail_op: u32,
    /// Operations undone with their transaction (`undo_op`; tests).
    #[cfg(test)]
    undone_ops: u64,
}

/// Removes a block file no row names any more. A failure only leaves
/// garbage that the next mount collects.
pub(crate) fn remove_block(blocks: &BlockStore, id: &BlockId) {
    if let Err(e) = blocks.remove(id) {
        tracing::warn!(block = %id.hex(), error = %e, "could not remove an unused block; the next mount collects it");
    }
}

/// SQLite's error for a full disk (tests).
#[cfg(test)]
fn disk_full() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None)
}

/// How often, at most, changes that wait in the redo log because they
/// could not be applied (`State::held`) are tried again.
pub(crate) const RETRY_HELD: Duration = Duration::from_millis(500);

/// How long changes may wait in the open transaction (each is in the redo
/// log meanwhile). An fsync or a durable barrier commits them sooner.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How long the metadata must go unchanged before the committer moves the
/// WAL into the database file.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// How long, at most, block files freed by commits wait for those commits
/// to be durable before the committer makes them so (`free_when_durable`).
const FREE_DELAY: Duration = Duration::from_millis(500);

/// How many freed block files may wait before the committer makes their
/// commits durable at once (256 MiB of 1 MiB blocks).
const FREE_MAX: usize = 256;

/// The committer's wake-up: set when a transaction is left open.
#[derive(Default)]
pub(crate) struct Committer {
    open: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Committer {
    fn opened(&self) {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !*g {
            *g = true;
            self.cv.notify_one();
        }
    }
}

/// Why operations wait in the redo log (`State::held`), and when applying
/// them was last tried.
struct Held {
    full: bool,
    tried: std::time::Instant,
}

impl Held {
    fn of(e: &CoreError) -> Held {
        let full = match e {
            CoreError::NoSpace => true,
            CoreError::Meta(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            CoreError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        };
        Held {
            full,
            tried: std::time::Instant::now(),
        }
    }

    /// What a change gets while they wait.
    fn error(&self) -> CoreError {
        if self.full {
            CoreError::NoSpace
        } else {
            CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO))
        }
    }
}

impl State {
    /// Runs `f` as one metadata change; nothing of it persists on error.
    /// Inside `batch`, it is part of the batch's transaction. Otherwise it
    /// joins the open write transaction, and its statements
    /// go to the redo log before it returns (so a `kill -9` loses nothing
    /// of it, as a commit would); the transaction commits every
    /// `COMMIT_INTERVAL`, at an fsync or a durable barrier, and one commit
    /// carries many changes. Without a redo log (or if writing it fails)
    /// it commits now.
    fn tx<T>(&mut self, f: impl FnOnce(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        // Before the change: a reader that sees the new count reads after
        // it. And after it: what was read while it ran is stale.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = self.tx_run(f);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }

    fn tx_run<T>(&mut self, f: impl FnOnce(&Connection) -> CoreResult<T>) -> CoreResult<T> {
        let _paths = self.dir_paths.active();
        if self.in_batch {
            return f(&self.conn);
        }
        self.recover_cancelled();
        let defer = self.redo.is_some();
        if !defer {
            let tx = self.conn.transaction()?;
            let v = f(&tx)?;
            tx.commit()?;
            self.commits += 1;
            return Ok(v);
        }
        if self.open_tx.is_none() && self.held.is_some() {
            // The operations waiting in the log are not applied (applying
            // them failed): no change on the last commit's state without
            // them. Applied again (or committed), they are joined.
            if let Err(e) = self.commit_open()
                && self.open_tx.is_none()
            {
                return Err(e);
            }
        }
        if self.open_tx.is_none() {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.open_tx = Some(std::time::Instant::now());
            if let Some(r) = &mut self.redo {
                r.begin();
            }
            self.committer.opened();
        }
        // No savepoint per operation: one that fails after it changed rows
        // (rare: the errors an operation expects are found before its first
        // write) is undone with the whole open transaction, and the
        // operations before it are applied again from the log
        // (`undo_op`). A savepoint cost every operation a copy of each page
        // an earlier one in the transaction had written, taken before it
        // wrote it again: 6-12 % of a create, rename or unlink.
        //
        // While operations wait in the log (`held`), each does take a
        // savepoint: one the log cannot take is undone alone, with no
        // application of the log again.
        let held = match &self.held {
            Some(h) => {
                if self.redo.as_ref().is_some_and(|r| r.len() >= redo::MAX_LOG) {
                    // The log, replayed at a start, stays bounded.
                    return Err(h.error());
                }
                self.conn.prepare_cached("SAVEPOINT held_op")?.execute([])?;
                true
            }
            None => false,
        };
        let mark = self.redo.as_ref().map(|r| r.mark());
        // Rows changed so far (every INSERT, UPDATE and DELETE counts, a
        // trigger's too, whether or not the log captured the statement).
        let changes = self.conn.total_changes();
        let active = self.redo.as_ref().map(|r| r.active());
        #[allow(unused_mut)]
        let mut r = f(&self.conn);
        drop(active);
        #[cfg(test)]
        if r.is_ok() && self.fail_op > 0 {
            self.fail_op -= 1;
            if self.fail_op == 0 {
                r = Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
            }
        }
        if self.conn.is_autocommit() {
            // SQLite rolled the transaction back itself (it may, after a
            // full disk or an I/O error): the operations before this one
            // are gone from it, as after a failed commit.
            if let (Some(redo), Some(m)) = (&mut self.redo, mark) {
                redo.rollback_to(m);
            }
            let e = match r {
                Err(e) => e,
                Ok(_) => CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)),
            };
            self.open_tx = None;
            if held {
                self.hold(&e);
            } else {
                tracing::warn!(error = %e, "SQLite rolled the open transaction back; applying its operations again from the redo log");
                let _ = self.commit_again();
            }
            return Err(e);
        }
        if held {
            let mut undo = r.is_err();
            if !undo && !self.redo.as_mut().is_some_and(|redo| redo.append()) {
                // Not in the log: it would be lost by a crash.
                undo = true;
                r = Err(self.held.as_ref().map_or(CoreError::NoSpace, Held::error));
            }
            if undo {
                self.conn
                    .execute_batch("ROLLBACK TO held_op; RELEASE held_op")?;
                if let (Some(redo), Some(m)) = (&mut self.redo, mark) {
                    redo.rollback_to(m);
                }
            } else {
                self.conn.prepare_cached("RELEASE held_op")?.execute([])?;
                self.commits += 1;
            }
            return r;
        }
        if r.is_err()
            && let (Some(redo), Some(m)) = (&mut self.redo, mark)
        {
            if self.conn.total_changes() != changes {
                self.undo_op(m);
                return r;
            }
            // Nothing changed (a statement that ran may have touched no
            // row: a removal of what is not there): only its record goes.
            redo.rollback_to(m);
        }
        let appended = self.redo.as_mut().is_some_and(|redo| redo.append());
        if appended && self.redo.as_ref().is_some_and(|r| r.len() < redo::MAX_LOG) {
            // Counted as a commit: a durable barrier asked for it
            // (`durable_upto`) commits the transaction, then syncs.
            self.commits += 1;
        } else if let Err(e) = self.commit_open() {
            // If its record is in the log, it waits there with those
            // before it (`held`): done, as they are. If not, it was undone.
            if !(appended && self.held.is_some()) {
                return Err(e);
            }
        }
        r
    }

    /// Commits the open write transaction, if any, and removes the block
    /// files its changes freed. If SQLite undoes a commit that fails, the
    /// statements are applied again from the redo log in a new
    /// transaction and committed; if that fails too, they wait (`hold`).
    fn commit_open(&mut self) -> CoreResult<()> {
        self.recover_cancelled();
        if let Some(h) = &self.held {
            // Tried lately: it would fail again. Unless statements without
            // their record wait in the transaction (the log could not take
            // what a direct write captured): a failed commit undoes them.
            if h.tried.elapsed() < RETRY_HELD
                && !self.redo.as_ref().is_some_and(|r| r.unlogged_waiting())
            {
                return Err(h.error());
            }
            if self.open_tx.is_none() {
                // Not applied (applying them failed too): apply and commit.
                return self.commit_again();
            }
        }
        if self.open_tx.take().is_none() {
            return Ok(());
        }
        match self.seal_and_commit() {
            Ok(()) => self.committed(Ok(true)),
            Err(e) if self.redo.is_some() => {
                let e = CoreError::from(e);
                if self.held.is_some() {
                    // Failing still: applied again, uncommitted, at once.
                    self.hold(&e);
                    return Err(e);
                }
                tracing::warn!(error = %e, "a commit failed; applying its operations again from the redo log");
                self.commit_again()
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.committed(Err(e.into()))
            }
        }
    }

    /// SQLite cancels the whole open transaction itself when a statement
    /// fails on a full disk, an I/O error or lack of memory. `tx_run`
    /// checks for it after each operation, but a statement run outside
    /// one (a read, a hash the digest thread recorded) can be the one that
    /// failed: found here, before the connection is used again, the
    /// operations since the last commit are applied again from the redo
    /// log, as after a failed commit. (Unnoticed, the next operations ran
    /// with each statement saved on its own.)
    fn recover_cancelled(&mut self) {
        if self.open_tx.is_some() && self.conn.is_autocommit() {
            tracing::warn!(
                "SQLite rolled the open transaction back; applying its operations again from the redo log"
            );
            self.open_tx = None;
            let _ = self.commit_again();
        }
    }

    /// The open transaction could not commit, or an operation in it failed
    /// after it wrote: rolls it back, applies the logged operations again
    /// and commits them. If that fails too, they wait (`hold`).
    fn commit_again(&mut self) -> CoreResult<()> {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        match self.apply_again() {
            Ok(whole) => self.committed(Ok(whole)),
            Err(e) => {
                self.hold(&e);
                Err(e)
            }
        }
    }

    /// Committing the logged operations failed twice (`e`; a disk that
    /// stays full). They stay in the redo log, which a restart replays, and
    /// are applied again, uncommitted, in a new open transaction: what they
    /// did stays visible, later operations join them (each logged as
    /// usual), and commits are tried again at most every `RETRY_HELD`
    /// (barriers, fsyncs and API writes fail meanwhile). An operation whose
    /// record is not in the log goes (it reports the error). If even
    /// applying them fails, reads see the last commit's state and changes
    /// fail until they can be applied.
    fn hold(&mut self, e: &CoreError) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.open_tx = None;
        if self.held.is_none() {
            tracing::error!(error = %e, "committing the last operations failed; they wait in the redo log (a restart applies them), and commits are tried again");
        }
        let mut held = Held::of(e);
        if let Some(redo) = &mut self.redo {
            redo.hold();
        }
        match self.reapply(false) {
            Ok(_) => {
                if let Some(redo) = &mut self.redo {
                    redo.capture_again();
                }
                self.open_tx = Some(std::time::Instant::now());
                self.committer.opened();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the operations waiting in the redo log cannot be applied for now; until they are, reads see the last commit and changes fail");
            }
        }
        // Tried again no sooner than `RETRY_HELD` after this (which may
        // have taken a while).
        held.tried = std::time::Instant::now();
        self.held = Some(held);
    }

    /// Undoes an operation that failed after it changed rows (`mark` is
    /// where it began in the redo log's capture): the open transaction is
    /// rolled back, and the operations before it, each reported done, are
    /// applied again from the log and committed (or wait, `hold`).
    fn undo_op(&mut self, mark: redo::Mark) {
        if self.open_tx.take().is_none() {
            return;
        }
        #[cfg(test)]
        {
            self.undone_ops += 1;
        }
        if let Some(redo) = &mut self.redo {
            redo.rollback_to(mark);
        }
        tracing::warn!(
            "an operation failed after it changed rows; applying the operations before it again from the redo log"
        );
        let _ = self.commit_again();
    }

    /// After a commit, or a transaction applied again (`r`: whether the
    /// operation being committed was applied whole): marks the log spent and
    /// removes the block files the changes freed. With no redo log, a
    /// failed commit's changes are undone.
    fn committed(&mut self, r: CoreResult<bool>) -> CoreResult<()> {
        match r {
            Ok(whole) => {
                if let Some(redo) = &mut self.redo {
                    redo.committed();
                }
                if self.held.take().is_some() {
                    tracing::info!("the operations that waited in the redo log are committed");
                }
                self.commits += 1;
                // Only blocks no row names: those an undone operation
                // freed are named again.
                let freed = std::mem::take(&mut self.free_after_commit);
                self.free_when_durable(&freed);
                if whole {
                    Ok(())
                } else {
                    // The operation being committed (whose statements the
                    // log could not capture) is undone; those before it
                    // were applied again.
                    Err(CoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
                }
            }
            Err(e) => {
                // What was read since they ran is undone.
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Their rows are back: the blocks they freed are not.
                self.free_after_commit.clear();
                tracing::error!(error = %e, "committing the last operations failed; they are undone");
                Err(e)
            }
        }
    }

    /// The open transaction was rolled back (a commit failed, or an
    /// operation in it): applies the logged statements again in a new one
    /// and commits that, with those of an operation whose record could not
    /// be written (it commits at once, and here, when its statements are
    /// all captured). False when that operation's statements are not all
    /// captured: it stays undone.
    fn apply_again(&mut self) -> CoreResult<bool> {
        let whole = self.reapply(true)?;
        let r = self.seal_and_commit();
        if r.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        r?;
        Ok(whole)
    }

    /// Applies the records of the redo log again in a new transaction, left
    /// open (rolled back if applying fails), with what was captured but
    /// not logged when `unlogged`; returns false when some of that could
    /// not be captured (it is left out). Applied again, not necessarily to
    /// the same rows (a statement that fails the second time is skipped):
    /// what was read since is stale, directory paths included (whatever
    /// SQLite's rollback hook saw).
    fn reapply(&mut self, unlogged: bool) -> CoreResult<bool> {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.dir_paths.forget();
        let Some(redo) = &mut self.redo else {
            return Ok(false);
        };
        let data = redo.pending()?;
        let body = if unlogged { redo.unlogged() } else { None };
        let whole = !unlogged || body.is_some();
        let mut entries = redo::records_of(&data, redo.generation());
        if let Some(body) = &body {
            entries.extend(redo::entries_of(body));
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = redo::run_all(&self.conn, &entries);
        if r.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        r.map(|_| whole)
    }

    /// Records in the open transaction that the redo log's generation is
    /// committed, and commits it.
    fn seal_and_commit(&mut self) -> rusqlite::Result<()> {
        if let Some(redo) = &mut self.redo {
            redo.seal(&self.conn)?;
        }
        #[cfg(test)]
        self.fail_commit_now()?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    /// Fails as a full disk would, if the test asked for it.
    #[cfg(test)]
    fn fail_commit_now(&mut self) -> rusqlite::Result<()> {
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(disk_full());
        }
        Ok(())
    }

    /// Makes every committed transaction durable on disk, if any is not
    /// yet, holding the lock (`Locker::durable_upto` does not).
    fn durable(&mut self) -> CoreResult<()> {
        self.commit_open()?;
        self.sync_committed()
    }

    /// Makes the transactions committed so far durable, leaving what waits
    /// in the open transaction as it is: while operations are held (a full
    /// disk fails their commit), what did commit before still becomes
    /// durable, and the block files it freed can go.
    fn sync_committed(&mut self) -> CoreResult<()> {
        let target = self.commits;
        if self.synced_upto < target {
            let synced = match &self.wal {
                Some(w) => w.sync()?,
                None => false,
            };
            if !synced {
                if !self.conn.is_autocommit() {
                    // No WAL file to sync, and SQLite's barrier needs a
                    // transaction of its own: the next barrier does it.
                    return Ok(());
                }
                meta::durable_barrier(&self.conn)?;
            }
            self.set_synced(target);
        }
        Ok(())
    }

    /// Removes the block files no row names once the commit that freed
    /// them (the last so far) is durable. Removed at once, a power cut
    /// could take that commit and leave rows naming files that are gone:
    /// an earlier version of a file, fsynced before it was overwritten or
    /// removed, would read as EIO instead of coming back whole. The
    /// committer makes them durable within `FREE_DELAY` (or sooner, with
    /// many waiting); eviction does at once.
    pub(crate) fn free_when_durable(&mut self, ids: &[BlockId]) {
        let commit = self.commits;
        for id in ids {
            if !self.unused(id) {
                continue;
            }
            if self.wal.is_none() || self.synced_upto >= commit {
                // In memory (nothing survives a power cut), or durable.
                remove_block(&self.block_store, id);
            } else {
                self.free_after_durable.push((commit, *id));
                self.free_pending_since
                    .get_or_insert_with(std::time::Instant::now);
            }
        }
    }

    /// Every commit up to number `upto` is durable: removes the block files
    /// they freed that no row names again.
    fn set_synced(&mut self, upto: u64) {
        self.synced_upto = self.synced_upto.max(upto);
        if self.free_after_durable.is_empty() {
            return;
        }
        let upto = self.synced_upto;
        let pending = std::mem::take(&mut self.free_after_durable);
        let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(c, _)| *c <= upto);
        self.free_after_durable = later;
        self.free_pending_since = if self.free_after_durable.is_empty() {
            None
        } else {
            // Close enough: the rest were freed after the oldest was.
            self.free_pending_since
        };
        for (_, id) in now {
            // Named again since (the same content written anew): it stays.
            if self.unused(&id) {
                remove_block(&self.block_store, &id);
            }
        }
    }

    /// Whether the committer should make the commits durable now, for the
    /// block files they freed: some waited `FREE_DELAY`, or many wait.
    fn frees_due(&self) -> bool {
        self.free_pending_since
            .is_some_and(|t| t.elapsed() >= FREE_DELAY || self.free_after_durable.len() >= FREE_MAX)
    }

    fn pin(&mut self, id: BlockId) {
        *self.pins.entry(id).or_default() += 1;
    }

    fn unpin(&mut self, id: &BlockId) {
        self.release_pin(id, false);
    }

    /// A reader (snapshot) needs the block's content until it lets go.
    fn pin_read(&mut self, id: BlockId) {
        *self.read_pins.entry(id).or_default() += 1;
    }

    fn unpin_read(&mut self, id: &BlockId) {
        self.release_pin(id, true);
    }

    /// Drops one pin of `id` (a reader's or a writer's); a block nothing
    /// holds any more becomes a candidate for `reap_unpinned`.
    fn release_pin(&mut self, id: &BlockId, reader: bool) {
        let map = if reader {
            &mut self.read_pins
        } else {
            &mut self.pins
        };
        let Some(n) = map.get_mut(id) else { return };
        *n -= 1;
        if *n == 0 {
            map.remove(id);
            if !self.held(id) {
                self.unpinned.push(*id);
            }
        }
    }

    /// Whether anything holds the block (its bytes must not be freed).
    fn held(&self, id: &BlockId) -> bool {
        self.pins.contains_key(id) || self.read_pins.contains_key(id)
    }

    /// Whether the block file of `id` may go: no uncommitted change or
    /// reader holds it, and no row names it. A removal decided earlier is
    /// checked again with this when it happens, because the same bytes may
    /// have been stored again since (a file deleted, then written anew
    /// with the same content: the store keeps one file for both).
    pub(crate) fn unused(&self, id: &BlockId) -> bool {
        !self.held(id) && !meta::block_known(&self.conn, id).unwrap_or(true)
    }
}

impl Locker {
    /// Opens the store in `data_dir` (metadata `meta.db`, blocks `blocks/`),
    /// recovering from an unclean stop if needed.
    pub fn open_dir(data_dir: &Path, opts: LockerOptions) -> CoreResult<Locker> {
        let conn = meta::open(&data_dir.join("meta.db"))?;
        let blocks = BlockStore::open(&data_dir.join("blocks"))?;
        // What mount operations did after the last commit, before a crash.
        let log = data_dir.join("redo.log");
        let n = redo::replay(&conn, &log)?;
        if n > 0 {
            tracing::info!(statements = n, "applied the redo log of the last run");
        }
        // A log an older build wrote relied on what the schema migrations
        // since changed: the data they fixed is fixed again, once, after
        // the replay, whether or not this start replayed anything (a crash
        // may have come between the replay and the fix).
        meta::fix_after_replay(&conn)?;
        let redo = redo::Redo::open(&conn, &log)?;
        Locker::build(conn, Some(redo), blocks, opts)
    }

    /// Builds a core from an already opened database and block store (with
    /// no redo log: every change commits at once).
    pub fn with_parts(
        conn: Connection,
        blocks: BlockStore,
        opts: LockerOptions,
    ) -> CoreResult<Locker> {
        Locker::build(conn, None, blocks, opts)
    }

    fn build(
        conn: Connection,
        redo: Option<redo::Redo>,
        blocks: BlockStore,
        opts: LockerOptions,
    ) -> CoreResult<Locker> {
        let blocks = Arc::new(blocks);
        let hasher = hasher::Hasher::start(blocks.clone())?;
        let wal = wal::Wal::of(conn.path());
        let generation: hot::Generation = Arc::default();
        let dir_paths = Arc::new(sync::DirPaths::default());
        sync::DirPaths::install(&dir_paths, &conn)?;
        let locker = Locker {
            state: parking_lot::Mutex::new(State {
                conn,
                redo,
                files: HashMap::new(),
                handles: HashMap::new(),
                next_handle: 1,
                pins: HashMap::new(),
                read_pins: HashMap::new(),
                remote_snaps: HashMap::new(),
                unpinned: Vec::new(),
                mem_dirty: 0,
                synced_upto: 0,
                wal,
                checkpointed_at: 0,
                // Whatever the last run left unsynced counts as one commit.
                commits: 1,
                hasher,
                next_seq: 0,
                sync_delay_ns: opts.sync_delay.as_nanos() as i64,
                suppress_marks: false,
                in_batch: false,
                free_after_batch: Vec::new(),
                lru: lru::LruCache::unbounded(),
                gone_remote: std::collections::HashMap::new(),
                open_tx: None,
                held: None,
                free_after_commit: Vec::new(),
                free_after_durable: Vec::new(),
                free_pending_since: None,
                closed_tried: None,
                closed_failing: false,
                #[cfg(test)]
                fail_commits: 0,
                #[cfg(test)]
                fail_op: 0,
                #[cfg(test)]
                undone_ops: 0,
                committer: Arc::new(Committer::default()),
                block_store: blocks.clone(),
                generation: generation.clone(),
                dir_paths,
                seen: inode::Seen::default(),
            }),
            blocks,
            opts,
            remote: OnceLock::new(),
            prefetcher: OnceLock::new(),
            waker: OnceLock::new(),
            invalidator: OnceLock::new(),
            pressure: AtomicUsize::new(0),
            fetching: Arc::default(),
            passing: sync::Passing::default(),
            generation,
            hot: hot::HotCache::default(),
            streams: Mutex::new(HashMap::new()),
            bad_content: Mutex::new(std::collections::HashSet::new()),
            synced: Mutex::new((0, false)),
            synced_cv: std::sync::Condvar::new(),
            digests: digest::Digests::start()?,
            crash: crash::CrashPoints::from_env(),
            security_xattrs: std::sync::atomic::AtomicBool::new(true),
            acls: std::sync::atomic::AtomicBool::new(true),
        };
        {
            use std::sync::atomic::Ordering::Release;
            let st = locker.lock();
            let any = meta::any_xattr_with_prefix(&st.conn, b"security.")?;
            locker.security_xattrs.store(any, Release);
            let any = meta::any_xattr_with_prefix(&st.conn, acl::ACL_PREFIX)?;
            locker.acls.store(any, Release);
        }
        locker.ensure_root()?;
        locker.recover()?;
        locker.load_lru()?;
        locker.seed_sync_queue()?;
        for ns in locker.opts.namespaces.clone() {
            locker.ensure_namespace(&ns)?;
        }
        // What the recovery did, committed (and the blocks it freed gone)
        // before anything is served.
        {
            let mut st = locker.state.lock();
            st.commit_open()?;
        }
        Ok(locker)
    }

    /// The state lock. parking_lot's is eventually fair: a thread that
    /// releases and takes it again in a loop (a listing read page by page,
    /// a stream of writes) hands it over to one that has waited 0.5 ms,
    /// where std's can keep a `stat` waiting for the whole loop. A panic
    /// while holding it leaves state that may be half updated in memory,
    /// but every durable change is a transaction, so continuing is safe.
    ///
    /// Whoever takes it sees every change whose operation returned, each
    /// already in the redo log or committed (so the sidecar never pushes a
    /// change a crash could undo); a transaction open for `COMMIT_INTERVAL`
    /// is committed first.
    fn lock(&self) -> StateGuard<'_> {
        let mut st = self.state.lock();
        st.recover_cancelled();
        if st.open_tx.is_some() {
            let logged = st.redo.as_mut().is_some_and(|r| r.append());
            if !logged || st.open_tx.is_some_and(|t| t.elapsed() >= COMMIT_INTERVAL) {
                // A failure is logged and leaves the changes waiting
                // (`State::hold`); the caller's own work goes on.
                let _ = st.commit_open();
            }
        } else if st.held.is_some() {
            // Operations wait in the log, not applied: try again (a read
            // goes on with the last commit's state if they still cannot).
            let _ = st.commit_open();
        }
        st
    }

    /// Commits what waits in the open transaction now (tests, and callers
    /// that measure what a commit frees).
    #[cfg(test)]
    pub(crate) fn commit_now(&self) {
        let mut st = self.state.lock();
        st.commit_open().unwrap();
    }

    /// Commits what waits in the open transaction and makes every commit
    /// durable, which removes the block files they freed (tests that
    /// measure what is left in the store).
    #[cfg(test)]
    pub(crate) fn commit_durable(&self) {
        self.commit_now();
        let c = self.state.lock().commits;
        self.durable_upto(c).unwrap();
    }

    /// Starts the thread that commits what mount operations left in the
    /// open transaction once it has waited `COMMIT_INTERVAL`. It ends with
    /// the core.
    pub fn start_committer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let signal = self.state.lock().committer.clone();
        let spawned = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                loop {
                    {
                        let mut g = signal.open.lock().unwrap_or_else(|p| p.into_inner());
                        while !*g {
                            let (ng, timeout) = signal
                                .cv
                                .wait_timeout(g, IDLE_CHECKPOINT)
                                .unwrap_or_else(|p| p.into_inner());
                            g = ng;
                            let Some(core) = weak.upgrade() else { return };
                            if timeout.timed_out() && !*g {
                                drop(g);
                                core.checkpoint_idle();
                                core.durable_for_frees();
                                core.retry_closed();
                                crate::buf::shed();
                                g = signal.open.lock().unwrap_or_else(|p| p.into_inner());
                            }
                        }
                        *g = false;
                    }
                    std::thread::sleep(COMMIT_INTERVAL);
                    let Some(core) = weak.upgrade() else { return };
                    let mut st = core.state.lock();
                    match st.open_tx {
                        Some(t) if t.elapsed() < COMMIT_INTERVAL => {
                            // Committed and reopened meanwhile: look again.
                            st.committer.opened();
                        }
                        Some(_) => {
                            // What direct writes left in the capture is
                            // logged first: if the commit fails, it waits
                            // with the rest (`State::hold`).
                            if let Some(r) = &mut st.redo {
                                r.append();
                            }
                            let _ = st.commit_open();
                        }
                        None => {}
                    }
                    drop(st);
                    core.durable_for_frees();
                    core.retry_closed();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the committer; every operation commits at once");
        }
    }

    /// Makes the commits durable when block files they freed have waited
    /// long enough (`State::frees_due`), which removes those files. The
    /// WAL's sync runs without the state lock.
    fn durable_for_frees(&self) {
        let upto = {
            let mut st = self.state.lock();
            if !st.frees_due() {
                return;
            }
            if st.held.is_some() {
                // A barrier would fail on the held operations: what did
                // commit is synced alone.
                if let Err(e) = st.sync_committed() {
                    tracing::warn!(error = %e, "syncing the metadata WAL failed; freed block files wait for the next try");
                }
                return;
            }
            st.commits
        };
        if let Err(e) = self.durable_upto(upto) {
            tracing::warn!(error = %e, "making the metadata durable failed; freed block files wait for the next try");
        }
    }

    /// Runs `f`, whose every `tx` becomes part of one transaction: all of it
    /// persists or none (after an error, or a crash anywhere inside). Block
    /// files it frees are removed only once it committed.
    pub(crate) fn batch<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut State) -> CoreResult<T>,
    ) -> CoreResult<T> {
        assert!(!st.in_batch, "batches do not nest");
        st.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        st.commit_open()?;
        st.conn.execute_batch("BEGIN IMMEDIATE")?;
        st.in_batch = true;
        let r = f(st);
        st.in_batch = false;
        st.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let freed = std::mem::take(&mut st.free_after_batch);
        let r = r.and_then(|v| {
            st.conn.execute_batch("COMMIT")?;
            Ok(v)
        });
        match r {
            Ok(v) => {
                st.commits += 1;
                self.free_blocks(st, &freed);
                Ok(v)
            }
            Err(e) => {
                if let Err(re) = st.conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %re, "rolling back a batch failed");
                }
                Err(e)
            }
        }
    }

    /// Makes every transaction up to number `upto` durable. Concurrent
    /// callers share barriers (group commit): one that finds a barrier
    /// running waits for it, and the next barrier covers every commit made
    /// meanwhile, so N waiters cost about two barriers, not N.
    pub(crate) fn durable_upto(&self, upto: u64) -> CoreResult<()> {
        let mut g = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.0 >= upto {
                return Ok(());
            }
            if !g.1 {
                break;
            }
            g = self.synced_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 = true;
        drop(g);
        let r = self.barrier();
        let mut g = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = false;
        if let Ok(t) = r {
            g.0 = g.0.max(t);
        }
        self.synced_cv.notify_all();
        r.map(|_| ())
    }

    /// Makes every commit so far durable; returns their count. The WAL's
    /// sync runs without the state lock (see `wal`).
    fn barrier(&self) -> CoreResult<u64> {
        let (target, wal) = {
            let mut st = self.lock();
            st.commit_open()?;
            let target = st.commits;
            if st.synced_upto >= target {
                return Ok(target);
            }
            match st.wal.clone() {
                Some(w) => (target, w),
                None => {
                    st.durable()?;
                    return Ok(target);
                }
            }
        };
        if !wal.sync()? {
            // No WAL file: through SQLite, under the lock.
            self.lock().durable()?;
            return Ok(target);
        }
        let mut st = self.state.lock();
        st.set_synced(target);
        Ok(target)
    }

    /// Moves the WAL into the database file once the metadata has been
    /// left alone for `IDLE_CHECKPOINT` (the committer calls it). Readers
    /// then find each page in one place, and SQLite's own checkpoint at
    /// the WAL's size cap, which runs inside a commit and holds every
    /// request meanwhile, is reached only under sustained writing.
    pub(crate) fn checkpoint_idle(&self) {
        let mut st = self.state.lock();
        if st.held.is_some() {
            // Operations waiting in the log are tried again here too, when
            // nothing else comes.
            let _ = st.commit_open();
            return;
        }
        if st.open_tx.is_some() || st.in_batch || st.checkpointed_at == st.commits {
            return;
        }
        let r = st
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        match r {
            Ok(busy) => {
                st.checkpointed_at = st.commits;
                if busy == 0 {
                    // A whole checkpoint synced the WAL, then the database
                    // file: every commit is durable.
                    let c = st.commits;
                    st.set_synced(c);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the metadata WAL failed; SQLite checkpoints it later")
            }
        }
    }

    /// The block store (for tests, fsck and status).
    pub fn block_store(&self) -> &BlockStore {
        &self.blocks
    }

    /// Commits every file's uncommitted changes and makes everything durable.
    /// Called at unmount.
    pub fn shutdown(&self) -> CoreResult<()> {
        let mut st = self.lock();
        let inos: Vec<InodeNo> = st.files.keys().copied().collect();
        for ino in inos {
            self.commit_locked(&mut st, ino)?;
        }
        self.blocks.sync()?;
        st.durable()?;
        st.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }

    /// Capacity of the disk that holds the data, and inode counts.
    pub fn statfs(&self) -> CoreResult<FsStats> {
        let s = self.blocks.statvfs()?;
        let files = meta::count_inodes(&self.lock().conn)?;
        let frsize = if s.f_frsize > 0 {
            s.f_frsize
        } else {
            s.f_bsize
        };
        Ok(FsStats {
            block_size: frsize as u32,
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_avail: s.f_bavail,
            files: files + s.f_ffree,
            files_free: s.f_ffree,
            name_max: 255,
        })
    }
}

/// Checks one path component: not empty, no '/', no NUL, at most 255 bytes.
pub(crate) fn check_name(name: &[u8]) -> CoreResult<()> {
    if name.len() > 255 {
        return Err(CoreError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(CoreError::Invalid("bad file name"));
    }
    Ok(())
}

#[cfg(test)]
mod sync_tests;
#[cfg(test)]
pub(crate) mod tests;
