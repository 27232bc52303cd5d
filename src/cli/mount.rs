//! `locker mount`: checks its inputs, opens the store (core, sidecar, and
//! the HTTP API if configured), mounts, and serves in the foreground until a
//! signal or an external unmount; then stops the API, commits every open
//! file, pushes what is queued and exits.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, bail};

use super::daemon;
use crate::config::is_root;
use crate::core::sync::Invalidate;
use crate::fuse::LockerFs;

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

pub fn run(
    mountpoint: &Path,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    check_mountpoint(mountpoint)?;
    // Signals are taken by one thread with sigwait; block them before any
    // other thread exists so none of those receives them.
    let sigs = daemon::block_signals();
    let store = daemon::Store::open(&cfg, data_dir)?;
    let core = store.core.clone();
    let allow_other = cfg.mount.allow_other.unwrap_or_else(is_root);
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = vec![
        fuser::MountOption::FSName("locker".into()),
        fuser::MountOption::Subtype("locker".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
    ];
    fuse_cfg.acl = if allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    // One thread reads the device; requests that may wait go to
    // `mount.threads` others (see `fuse::Waiters`).
    fuse_cfg.n_threads = Some(1);
    let fs = LockerFs::new(core.clone(), cfg.mount.threads);
    let mut session = fuser::Session::new(fs, mountpoint, &fuse_cfg)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let notifier = session.notifier();
    core.set_invalidator(Arc::new(move |list: &[Invalidate]| {
        for i in list {
            // ENOENT: the kernel did not cache it; nothing to drop.
            let _ = match i {
                Invalidate::Entry(dir, name) => {
                    notifier.inval_entry(fuser::INodeNo(dir.0), std::ffi::OsStr::from_bytes(name))
                }
                Invalidate::Inode(ino) => notifier.inval_inode(fuser::INodeNo(ino.0), 0, 0),
            };
        }
    }));
    tracing::info!(
        mountpoint = %mountpoint.display(),
        data_dir = %store.dir.path().display(),
        allow_other,
        "serving"
    );

    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx2.send(Event::SessionEnded(r));
        })?;
    let ra_point = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("readahead".into())
        .spawn(move || raise_readahead(&ra_point))?;
    daemon::forward_signals(sigs, move |sig| tx.send(Event::Signal(sig)).is_ok())?;

    let mut unmount_asked = false;
    let result = loop {
        match rx.recv() {
            Ok(Event::Signal(sig)) => {
                if unmount_asked {
                    tracing::info!(
                        signal = sig,
                        "still waiting for open files to close before the unmount completes"
                    );
                    continue;
                }
                unmount_asked = true;
                tracing::info!(signal = sig, "unmounting");
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(error = %e, "the mount is busy; detaching it now, open files keep working until closed");
                    lazy_unmount(mountpoint);
                }
            }
            Ok(Event::SessionEnded(r)) => break r,
            Err(_) => break Ok(()),
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "the FUSE session ended with an error");
    }
    store.close(&cfg)?;
    tracing::info!("unmounted cleanly");
    result.context("FUSE session")?;
    Ok(())
}

/// The mountpoint must be an existing directory that is not already a live
/// FUSE mount. A stale mount left by a daemon that died ("transport endpoint
/// is not connected") is detached. The check asks the file system itself
/// (statfs always reaches a FUSE daemon), because a `stat` can be answered
/// from the kernel's attribute cache for a while after the daemon died.
fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_path_buf()
    } else {
        std::env::current_dir()?.join(mountpoint)
    };
    if let Some(fstype) = mount_type(&abs)
        && fstype.starts_with("fuse")
    {
        match statfs_errno(&abs) {
            Some(libc::ENOTCONN) => {
                tracing::warn!(mountpoint = %abs.display(), "a stale mount from a daemon that died is in the way; detaching it");
                lazy_unmount(&abs);
            }
            None => bail!(
                "mountpoint {} is already mounted ({fstype}); unmount it first",
                abs.display()
            ),
            Some(e) => bail!(
                "mountpoint {}: {}",
                abs.display(),
                std::io::Error::from_raw_os_error(e)
            ),
        }
    }
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("mountpoint {} is not a directory", abs.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mountpoint {} does not exist; create it first",
                abs.display()
            )
        }
        Err(e) => bail!("mountpoint {}: {e}", abs.display()),
    }
}

/// The file system type mounted exactly at `path`, from /proc/self/mountinfo
/// (the last mount there wins, as it is the visible one).
fn mount_type(path: &Path) -> Option<String> {
    let want = path.as_os_str().as_bytes();
    mounts()
        .into_iter()
        .rfind(|m| m.point.as_os_str().as_bytes() == want)
        .map(|m| m.fstype)
}

/// One line of /proc/self/mountinfo.
pub(super) struct MountEntry {
    /// The device number, "major:minor".
    pub dev: String,
    pub point: std::path::PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mounts this process sees, in mount order.
pub(super) fn mounts() -> Vec<MountEntry> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let dev = l.nth(2)?.to_string();
            let point = l.nth(1)?;
            let mut r = right.split(' ');
            Some(MountEntry {
                dev,
                point: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(
                    point,
                ))),
                fstype: r.next()?.to_string(),
                source: r.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The errno of statfs(path), or `None` if it succeeds.
fn statfs_errno(path: &Path) -> Option<i32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statfs is a valid out-parameter; c is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0 {
        None
    } else {
        std::io::Error::last_os_error().raw_os_error()
    }
}

/// Kernel readahead for the mount, in KiB: one block, so that a sequential
/// reader's READ requests are whole blocks (the kernel's default is 128).
const READAHEAD_KB: u32 = (crate::blocks::BLOCK_SIZE / 1024) as u32;

/// Raises the mount's readahead to `READAHEAD_KB`. The kernel caps what
/// the FUSE handshake may ask for at its default, so it is set through the
/// mount's backing device in sysfs (root only), once the kernel has
/// finished the handshake (a `statfs` is answered only after it): files
/// opened from then on read ahead that far.
fn raise_readahead(mountpoint: &Path) {
    if statfs_errno(mountpoint).is_some() {
        return;
    }
    let abs = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(_) => return,
    };
    let want = abs.as_os_str().as_bytes();
    let Some(dev) = mounts()
        .into_iter()
        .rfind(|m| m.point.as_os_str().as_bytes() == want && m.fstype.starts_with("fuse"))
        .map(|m| m.dev)
    else {
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&knob, READAHEAD_KB.to_string()) {
        Ok(()) => tracing::debug!(kib = READAHEAD_KB, "readahead raised"),
        Err(e) => {
            tracing::info!(error = %e, "cannot raise the kernel's readahead for the mount (needs root); it stays at 128 KiB")
        }
    }
}

fn lazy_unmount(mountpoint: &Path) {
    if let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: c is NUL-terminated and lives across the call.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .status();
}
