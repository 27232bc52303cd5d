//! The data directory: checked writable, and locked so that only one daemon
//! uses it. The lock is an `flock` on `locker.lock`, released by the kernel
//! when the process dies, so a kill -9 never leaves a stale lock. The file
//! says who holds it: a first line `PID STATE` (`serving`, or `draining`
//! once its mount or API has stopped and it pushes what is queued before
//! exiting) and, for a mount, a second line with its mountpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is not a directory")]
    NotDir(PathBuf),
    #[error("data directory {path} is not writable: {source}")]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another locker daemon{}; stop it first", holder.describe())]
    Locked { path: PathBuf, holder: Holder },
}

/// What the lock file says about the daemon holding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub draining: bool,
    pub mountpoint: Option<PathBuf>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut lines = text.lines();
        let mut first = lines.next().unwrap_or("").split_whitespace();
        Holder {
            pid: first.next().and_then(|p| p.parse().ok()),
            draining: first.next() == Some("draining"),
            mountpoint: lines.next().filter(|l| !l.is_empty()).map(PathBuf::from),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.pid {
            parts.push(format!("pid {p}"));
        }
        if let Some(m) = &self.mountpoint {
            parts.push(format!("mounted at {}", m.display()));
        }
        if self.draining {
            parts.push("pushing its queue before it exits".into());
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// An open, locked data directory. The lock is held while this lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    lock: File,
    mountpoint: Option<PathBuf>,
}

impl DataDir {
    /// Opens and locks the data directory of a daemon that is not a mount
    /// (or of a command that needs the store to itself).
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        DataDir::open_for(path, None)
    }

    /// Opens and locks the data directory for a daemon serving
    /// `mountpoint` (recorded in the lock file).
    pub fn open_for(path: &Path, mountpoint: Option<&Path>) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(DataDirError::NotDir(path.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(|source| DataDirError::NotWritable {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Err(e) => return Err(io(e)),
        }
        let path = path.canonicalize().map_err(io)?;
        let probe = path.join(".write-probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(|source| DataDirError::NotWritable {
                path: path.clone(),
                source,
            })?;
        let _ = fs::remove_file(&probe);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join("locker.lock"))
            .map_err(io)?;
        // SAFETY: flock on an open descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut text = String::new();
            let _ = lock.read_to_string(&mut text);
            return Err(DataDirError::Locked {
                path: path.clone(),
                holder: Holder::parse(&text),
            });
        }
        let mut d = DataDir {
            path,
            lock,
            mountpoint: mountpoint.map(Path::to_path_buf),
        };
        d.set_state("serving").map_err(io)?;
        Ok(d)
    }

    /// Records this daemon's state in the lock file: `serving`, or
    /// `draining` (it will exit once its queue is pushed; a new daemon for
    /// the same data directory may wait for that).
    pub fn set_state(&mut self, state: &str) -> std::io::Result<()> {
        let mut text = format!("{} {state}\n", std::process::id());
        if let Some(m) = &self.mountpoint {
            text.push_str(&m.to_string_lossy());
            text.push('\n');
        }
        self.lock.set_len(0)?;
        self.lock.rewind()?;
        self.lock.write_all(text.as_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_a_data_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let first = DataDir::open(d.path()).unwrap();
        let e = DataDir::open(d.path()).unwrap_err();
        assert!(matches!(e, DataDirError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&std::process::id().to_string()));
        drop(first);
        DataDir::open(d.path()).unwrap();
    }

    #[test]
    fn the_lock_file_says_who_holds_it_and_whether_it_is_draining() {
        let d = tempfile::tempdir().unwrap();
        let mut first = DataDir::open_for(d.path(), Some(Path::new("/mnt/a b"))).unwrap();
        let holder = |e: DataDirError| match e {
            DataDirError::Locked { holder, .. } => holder,
            e => panic!("{e}"),
        };
        let h = holder(DataDir::open(d.path()).unwrap_err());
        assert_eq!(
            h,
            Holder {
                pid: Some(std::process::id()),
                draining: false,
                mountpoint: Some(PathBuf::from("/mnt/a b")),
            }
        );
        first.set_state("draining").unwrap();
        let e = DataDir::open(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("mounted at /mnt/a b, pushing its queue"),
            "{e}"
        );
        assert!(holder(e).draining);
    }

    #[test]
    fn a_file_as_data_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            DataDir::open(&f).unwrap_err(),
            DataDirError::NotDir(_)
        ));
    }
}
