//! Syncing the metadata WAL without the state lock.
//!
//! Commits run with `synchronous=NORMAL`: SQLite writes their frames to
//! the WAL (so a `kill -9` loses nothing) and syncs it only at checkpoints.
//! A durable barrier (fsync, an API upload, a push about to write) makes
//! every commit so far survive power loss by syncing the WAL file itself,
//! which is what `synchronous=FULL` does at each commit: the frames of
//! every commit that returned were written before the sync began, so they
//! are on disk when it returns. A checkpoint meanwhile syncs the WAL
//! before it copies frames into the database, and the database after, so
//! frames it moved (and the WAL restarted over them) are on disk too.
//!
//! The sync runs outside the state lock: every other request goes on
//! while the disk works.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The WAL of an on-disk database.
#[derive(Clone)]
pub(crate) struct Wal {
    path: PathBuf,
    /// The directory that holds it was synced once (so the file's own
    /// entry survives a power loss, as SQLite does for a new journal).
    dir_synced: Arc<AtomicBool>,
    /// Syncs done (for tests that count barriers).
    syncs: Arc<AtomicU64>,
    /// Milliseconds each sync waits first (tests of what runs meanwhile).
    #[cfg(test)]
    pub(crate) delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Wal {
    /// The WAL of the database at `db` (`None` for one in memory).
    pub(crate) fn of(db: Option<&str>) -> Option<Wal> {
        let db = db.filter(|p| !p.is_empty())?;
        Some(Wal {
            path: PathBuf::from(format!("{db}-wal")),
            dir_synced: Arc::default(),
            syncs: Arc::default(),
            #[cfg(test)]
            delay_ms: Arc::default(),
        })
    }

    /// How many syncs were done.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Syncs the WAL file's data to disk. `Ok(false)`: there is no WAL file
    /// (the caller syncs through SQLite instead).
    pub(crate) fn sync(&self) -> io::Result<bool> {
        #[cfg(test)]
        {
            let ms = self.delay_ms.load(Ordering::SeqCst);
            if ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        f.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if !self.dir_synced.load(Ordering::Acquire) {
            if let Some(d) = self.path.parent() {
                File::open(d)?.sync_all()?;
            }
            self.dir_synced.store(true, Ordering::Release);
        }
        Ok(true)
    }
}
