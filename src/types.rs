//! Identifiers and attribute types shared by the core and its callers, the
//! metadata store and the backends. The bottom of the crate: it uses nothing
//! else in it, so every layer can share this vocabulary without depending on
//! the core (which re-exports it as `crate::core::types`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inode number. Inode 1 is the root directory (it lists the namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeNo(pub u64);

impl InodeNo {
    pub const ROOT: InodeNo = InodeNo(1);
}

/// An open file or directory handle, as given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandleId(pub u64);

/// The kind of an inode, stored as a small integer in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl FileKind {
    pub fn code(self) -> i64 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::CharDevice => 5,
            FileKind::BlockDevice => 6,
            FileKind::Socket => 7,
        }
    }

    pub fn from_code(code: i64) -> Option<FileKind> {
        Some(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::CharDevice,
            6 => FileKind::BlockDevice,
            7 => FileKind::Socket,
            _ => return None,
        })
    }

    /// The kind encoded in the `S_IFMT` bits of a POSIX mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 | 0 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanoseconds, as POSIX timestamps carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos();
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timestamp { sec, nsec }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.sec >= 0 {
            UNIX_EPOCH + Duration::new(self.sec as u64, self.nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs((-self.sec) as u64)
                + Duration::from_nanos(self.nsec as u64)
        }
    }
}

/// The attributes of one inode, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: InodeNo,
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (`0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// A regular file's bytes held in blocks: its holes (never written, or
    /// written as zeros) hold none. What `st_blocks` counts.
    pub alloc: u64,
}

impl Attr {
    /// A new empty inode owned by root, all its times `now`.
    pub fn new_root_owned(
        ino: InodeNo,
        kind: FileKind,
        perm: u16,
        nlink: u32,
        now: Timestamp,
    ) -> Attr {
        Attr {
            ino,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            alloc: 0,
        }
    }
}

/// A time to set: an explicit one or "now" (UTIME_NOW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The changes one `setattr` asks for; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
    /// Drop set-user-ID and set-group-ID as ext4 does when a file other
    /// than a directory is truncated by someone other than root, or
    /// changes owner or group (the kernel leaves it to LOCKER with
    /// `FUSE_HANDLE_KILLPRIV_V2`; the rule is `inode::without_privs`).
    pub drop_privs: bool,
}

/// Who is asking: the caller's credentials, used for ownership of new inodes.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Taken from the mode of what the caller creates, unless the parent
    /// directory has a default ACL (which masks it instead). 0 for callers
    /// that pass the mode they want.
    pub umask: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
        umask: 0,
    };
}

/// One directory entry as `readdir` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: InodeNo,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// When reading a file moves its access time (the mount's `relatime`,
/// `noatime` and `strictatime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimePolicy {
    /// Never.
    Never,
    /// When the access time is not after the last change of content or
    /// attributes, or is a day old: Linux's default.
    #[default]
    Relative,
    /// At every read.
    Always,
}

/// How `setxattr` treats an existing attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// Fail with `Exists` if the attribute exists (XATTR_CREATE).
    Create,
    /// Fail with `NoAttr` if it does not (XATTR_REPLACE).
    Replace,
}

/// What `rename` does with an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the destination if it exists.
    Replace,
    /// Fail with `Exists` if the destination exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and destination atomically (RENAME_EXCHANGE).
    Exchange,
}

/// Filesystem capacity, as `statfs` reports it.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
}
