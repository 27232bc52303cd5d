//! The core's error type. Every filesystem failure the core can report is one
//! variant here; the FUSE glue maps each variant to an errno in one place
//! (`fuse::errno_of`), with an exhaustive match.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("attribute value too large")]
    TooBig,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("file too large")]
    FileTooLarge,
    #[error("no space left on device")]
    NoSpace,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("metadata error: {0}")]
    Meta(#[from] rusqlite::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// An API request's `If-Match` or `If-None-Match` does not hold.
    #[error("the path does not hold the version the request names")]
    PreconditionFailed,
}

pub type CoreResult<T> = Result<T, CoreError>;

impl CoreError {
    /// A full disk or quota, whichever layer found it.
    pub fn is_no_space(&self) -> bool {
        match self {
            CoreError::NoSpace => true,
            CoreError::Io(io) => {
                matches!(io.raw_os_error(), Some(c) if c == libc::ENOSPC || c == libc::EDQUOT)
            }
            CoreError::Meta(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }

    /// Errors that are part of normal operation (a lookup of a missing name)
    /// are logged at debug level; the others deserve a warning.
    pub fn is_expected(&self) -> bool {
        !matches!(
            self,
            CoreError::Io(_) | CoreError::Meta(_) | CoreError::Corrupt(_) | CoreError::NoSpace
        )
    }
}
