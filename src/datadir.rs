//! The data directory: checked writable, and locked so that only one daemon
//! uses it. The lock is an `flock` on `locker.lock`, released by the kernel
//! when the process dies, so a kill -9 never leaves a stale lock.

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
    #[error("data directory {path} is in use by another locker daemon{pid}; stop it first")]
    Locked { path: PathBuf, pid: String },
}

/// An open, locked data directory. The lock is held while this lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
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
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(DataDirError::Locked {
                path: path.clone(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataDir { path, _lock: lock })
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
