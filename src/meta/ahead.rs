//! Reading ahead the part of the WAL that the next commit overwrites.
//!
//! SQLite writes a commit's pages to the WAL as frames of `page_size + 24`
//! bytes after a 32-byte header, so nearly every frame covers part of a
//! page of the file. After a checkpoint the WAL starts again from its
//! beginning, over pages written long before. Once the kernel has dropped
//! those from its cache (memory pressure, `drop_caches`), each partial
//! write waits for a read of the page it covers, one page at a time, inside
//! the commit and under the state lock that every request waits on.
//!
//! Two hooks on the connection avoid that: the WAL hook (called after each
//! commit with the number of frames in the WAL) notes where the next
//! commit will write, and the commit hook (called before a commit writes)
//! asks the kernel to read that stretch (`POSIX_FADV_WILLNEED`): one
//! request for all of it, started before the first write needs it. Pages
//! still cached cost a look-up each.
//!
//! Installing a WAL hook replaces SQLite's own, which is what runs
//! `wal_autocheckpoint`: this one does the same (a passive checkpoint once
//! the WAL holds `checkpoint_frames` frames).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::fs::File;
use std::os::fd::AsRawFd;

use rusqlite::{Connection, ffi};

const NAME: &CStr = c"locker.wal_ahead";
/// Bytes read ahead at least, and at most.
const MIN_AHEAD: u64 = 1 << 20;
const MAX_AHEAD: u64 = 16 << 20;
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

struct Ahead {
    wal: std::path::PathBuf,
    /// Opened at the first commit (the WAL exists from then on); `None`
    /// after it could not be, so that no commit tries again.
    file: Option<Option<File>>,
    frame: u64,
    checkpoint_frames: c_int,
    /// Where the next commit's frames start, and how many frames the last
    /// commit wrote.
    next_frame: u64,
    last_frames: u64,
}

impl Ahead {
    fn read_ahead(&mut self) {
        let file = self
            .file
            .get_or_insert_with(|| File::open(&self.wal).ok())
            .as_ref();
        let Some(f) = file else { return };
        let start = if self.next_frame == 0 {
            0
        } else {
            WAL_HEADER + self.next_frame * self.frame
        };
        let len = (2 * self.last_frames * self.frame).clamp(MIN_AHEAD, MAX_AHEAD);
        // SAFETY: plain system call on a descriptor this struct owns.
        unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                start as i64,
                len as i64,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
}

unsafe extern "C" fn on_commit(ctx: *mut c_void) -> c_int {
    // SAFETY: `ctx` is the connection's `Ahead` (freed only when the
    // connection closes); SQLite calls the hooks of one connection from
    // the thread running its statement, one at a time.
    let a = unsafe { &mut *(ctx as *mut Ahead) };
    a.read_ahead();
    0 // the commit goes on
}

unsafe extern "C" fn on_wal(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: as in `on_commit`.
    let a = unsafe { &mut *(ctx as *mut Ahead) };
    let frames = frames.max(0) as u64;
    // A WAL that started again (after a checkpoint) holds only this
    // commit's frames.
    a.last_frames = if frames >= a.next_frame {
        frames - a.next_frame
    } else {
        frames
    }
    .max(1);
    a.next_frame = frames;
    if frames >= a.checkpoint_frames as u64 {
        // What SQLite's own hook does; a checkpoint that fails or stops
        // short is tried again after the next commit.
        let (mut log, mut done) = (0, 0);
        // SAFETY: called by SQLite on this connection, as its own hook
        // calls `sqlite3_wal_checkpoint`.
        let rc = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                &mut log,
                &mut done,
            )
        };
        if rc == ffi::SQLITE_OK && log >= 0 && done == log {
            // Every frame is in the database: the next commit writes the
            // WAL from its start.
            a.next_frame = 0;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn free_ahead(p: *mut c_void) {
    // SAFETY: the pointer `install` leaked, handed back once by SQLite
    // when the connection closes (or the data is replaced).
    drop(unsafe { Box::from_raw(p as *mut Ahead) });
}

/// Installs the hooks on `conn` (a database in WAL mode on disk; nothing
/// for one in memory), checkpointing once the WAL holds
/// `checkpoint_frames` frames.
pub(crate) fn install(conn: &Connection, checkpoint_frames: c_int) -> rusqlite::Result<()> {
    let Some(db_path) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let a = Box::new(Ahead {
        wal: format!("{db_path}-wal").into(),
        file: None,
        frame: page.max(512) as u64 + FRAME_HEADER,
        checkpoint_frames,
        next_frame: 0,
        last_frames: 1,
    });
    let p = Box::into_raw(a) as *mut c_void;
    // SAFETY: the connection is open. SQLite owns `p` from here and frees
    // it with `free_ahead` when the connection closes (after which it
    // calls no hook), or at once if it cannot keep it.
    unsafe {
        let db = conn.handle();
        let rc = ffi::sqlite3_set_clientdata(db, NAME.as_ptr(), p, Some(free_ahead));
        if rc != ffi::SQLITE_OK {
            // SQLite has already freed `p` with `free_ahead`.
            return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
        }
        ffi::sqlite3_commit_hook(db, Some(on_commit), p);
        ffi::sqlite3_wal_hook(db, Some(on_wal), p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the page of `file` at `offset` is in the page cache
    /// (`mincore` of a mapping of it).
    fn cached(file: &File, offset: u64) -> bool {
        let page = 4096usize;
        let at = (offset as usize / page) * page;
        // SAFETY: a read-only shared mapping of one page of an open file,
        // unmapped before returning; `mincore` writes one byte per page.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                at as i64,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = 0u8;
            let rc = libc::mincore(p, page, &mut v);
            libc::munmap(p, page);
            assert_eq!(rc, 0);
            v & 1 == 1
        }
    }

    /// After a checkpoint the WAL is written again from its start. A commit
    /// then has the kernel read the stretch it overwrites in one go
    /// (pages the cache dropped would otherwise be read one by one as each
    /// partial write needs them), and the hooks still checkpoint as
    /// `wal_autocheckpoint` did.
    #[test]
    fn a_commit_reads_ahead_the_wal_it_overwrites_and_the_wal_stays_bounded() {
        // On a disk: in memory no page is ever dropped.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let db = dir.path().join("m.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        let checkpoint_frames = 64;
        install(&conn, checkpoint_frames).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        let wal_path = dir.path().join("m.db-wal");
        let frame = 4096 + FRAME_HEADER;
        let full = WAL_HEADER + checkpoint_frames as u64 * frame;
        // Commits until the WAL reaches the checkpoint's size: the hook
        // then moves it into the database, and the next commit starts it
        // again from the beginning.
        let mut k = 0;
        while std::fs::metadata(&wal_path).map_or(0, |m| m.len()) < full {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [k])
                .unwrap();
            k += 1;
            assert!(k < 1000, "the WAL never reached {full} bytes");
        }
        let size = std::fs::metadata(&wal_path).unwrap().len();
        let wal = File::open(&wal_path).unwrap();
        wal.sync_data().unwrap();
        // SAFETY: plain system call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(wal.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        // A page well past what the next commit writes (a few frames).
        let probe = size - 2 * frame;
        assert!(!cached(&wal, probe), "the kernel kept the WAL's pages");

        conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [k])
            .unwrap();
        k += 1;
        assert_eq!(
            std::fs::metadata(&wal_path).unwrap().len(),
            size,
            "the commit did not write the WAL again from its start"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cached(&wal, probe) {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit did not read ahead the WAL it overwrites"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        // Bounded as `wal_autocheckpoint` keeps it, and nothing lost.
        for _ in 0..500 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(3000))", [k])
                .unwrap();
            k += 1;
        }
        assert!(std::fs::metadata(&wal_path).unwrap().len() < 2 * full);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, k);
    }
}
