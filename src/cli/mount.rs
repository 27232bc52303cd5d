//! `locker mount`: checks its inputs, opens the store (core, sidecar, and
//! the HTTP API if configured), mounts, and serves in the foreground until a
//! signal or an external unmount; then stops the API, commits every open
//! file, pushes what is queued and exits.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use anyhow::{Context, bail};

use super::daemon;
use crate::config::is_root;
use crate::core::sync::Invalidate;
use crate::core::{AtimePolicy, Caller, CoreError, FileKind, InodeNo, Locker};
use crate::fuse::{InoMap, LockerFs};
use crate::notify;

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

/// What `locker mount` is told on its command line and in `-o`.
#[derive(Debug, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// `NS` or `NS/DIR/...`: the folder shown at the mountpoint.
    pub namespace: Option<String>,
    /// The mount's source (`findmnt`'s SOURCE).
    pub source: Option<String>,
    /// Append the log here rather than to standard error.
    pub log: Option<PathBuf>,
    pub allow_other: Option<bool>,
    pub read_only: bool,
    /// noatime, relatime (the default), strictatime.
    pub atime: AtimePolicy,
    /// nosuid/suid, nodev/dev, noexec/exec: the last of each pair wins.
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    pub exec: Option<bool>,
    /// writeback_cache / nowriteback_cache (see `[mount] writeback_cache`).
    pub writeback_cache: Option<bool>,
    /// io_uring / noio_uring (see `[mount] io_uring`).
    pub io_uring: Option<bool>,
}

/// Options mount(8) and systemd use themselves; a helper is handed them
/// too, and ignores them.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "nodiratime",
    "diratime",
    "nolazytime",
    "lazytime",
];

impl Options {
    /// Parses fstab-style options: `key=value` or flags, comma-separated.
    pub fn parse(list: &str) -> anyhow::Result<Options> {
        let mut o = Options::default();
        for opt in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let path = |v: Option<&str>| -> anyhow::Result<PathBuf> {
                match v {
                    Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
                    _ => bail!("mount option {key} needs a value ({key}=...)"),
                }
            };
            match (key, value) {
                ("config", v) => o.config = Some(path(v)?),
                ("data_dir" | "data-dir", v) => o.data_dir = Some(path(v)?),
                ("log", v) => o.log = Some(path(v)?),
                ("namespace", v) => o.namespace = Some(path(v)?.to_string_lossy().into_owned()),
                ("source" | "fsname", v) => {
                    o.source = Some(path(v)?.to_string_lossy().into_owned())
                }
                ("allow_other", None) => o.allow_other = Some(true),
                ("noatime", None) => o.atime = AtimePolicy::Never,
                ("relatime" | "atime", None) => o.atime = AtimePolicy::Relative,
                ("strictatime", None) => o.atime = AtimePolicy::Always,
                ("ro", None) => o.read_only = true,
                ("rw", None) => o.read_only = false,
                ("suid", None) => o.suid = Some(true),
                ("nosuid", None) => o.suid = Some(false),
                ("dev", None) => o.dev = Some(true),
                ("nodev", None) => o.dev = Some(false),
                ("exec", None) => o.exec = Some(true),
                ("noexec", None) => o.exec = Some(false),
                ("writeback_cache", None) => o.writeback_cache = Some(true),
                ("nowriteback_cache", None) => o.writeback_cache = Some(false),
                ("io_uring", None) => o.io_uring = Some(true),
                ("noio_uring", None) => o.io_uring = Some(false),
                (k, _) if k.starts_with("x-") || k == "comment" || k == "user" => {}
                (k, None) if IGNORED.contains(&k) => {}
                _ => bail!(
                    "unknown mount option {opt:?} (LOCKER's are config=, data_dir=, namespace=, \
                     source=, log=, allow_other, ro, rw, [no]suid, [no]dev, [no]exec, noatime, \
                     relatime, strictatime, [no]writeback_cache, [no]io_uring)"
                ),
            }
        }
        Ok(o)
    }
}

/// `NS` or `NS/DIR/...` split into names, each checked.
fn folder_names(spec: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = spec
        .split('/')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!("--namespace {spec:?}: name a namespace, or a folder in one (NS/DIR)");
    }
    if let Some(bad) = names.iter().find(|n| *n == "." || *n == "..") {
        bail!("--namespace {spec:?}: {bad:?} is not allowed in it");
    }
    Ok(names)
}

/// The inode of the folder a `--namespace` mount shows, created (as the
/// daemon's user, mode 0755) where missing below the namespace.
fn mount_root(core: &Locker, spec: &str) -> anyhow::Result<InodeNo> {
    let names = folder_names(spec)?;
    let served = core.namespaces()?;
    if !served.contains(&names[0]) {
        bail!(
            "--namespace {spec}: namespace {:?} is not configured (the config has {})",
            names[0],
            if served.is_empty() {
                "none".to_string()
            } else {
                served.join(", ")
            }
        );
    }
    let me = Caller {
        // SAFETY: geteuid/getegid have no preconditions.
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        pid: std::process::id(),
        umask: 0,
    };
    let mut cur = InodeNo::ROOT;
    for n in &names {
        cur = match core.lookup(cur, n.as_bytes()) {
            Ok(a) if a.kind == FileKind::Dir => a.ino,
            Ok(_) => bail!("--namespace {spec}: {n:?} is not a directory"),
            Err(CoreError::NotFound) => {
                tracing::info!(folder = %spec, name = %n, "creating the folder to mount");
                core.mkdir(&me, cur, n.as_bytes(), 0o755)
                    .with_context(|| format!("--namespace {spec}: cannot create {n:?}"))?
                    .ino
            }
            Err(e) => return Err(e).with_context(|| format!("--namespace {spec}")),
        };
    }
    Ok(cur)
}

/// Sends standard error (the log) to `path`, appended.
fn log_to(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("log directory {}", dir.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("log file {}", path.display()))?;
    // SAFETY: both descriptors are open; dup2 replaces fd 2 atomically.
    if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
        bail!(
            "log file {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn run(mountpoint: &Path, opts: Options) -> anyhow::Result<()> {
    if let Some(log) = &opts.log {
        log_to(log)?;
    }
    let r = serve(mountpoint, &opts);
    if let Err(e) = &r {
        // Whoever waits for readiness (the mount helper) learns why not.
        notify::send(&format!("STATUS=failed: {e:#}"));
    }
    r
}

fn serve(mountpoint: &Path, opts: &Options) -> anyhow::Result<()> {
    let cfg = super::load_config(opts.config.as_deref())?;
    let source = match (&opts.source, &opts.namespace) {
        (Some(s), _) => s.clone(),
        (None, Some(ns)) => format!("locker:{}", folder_names(ns)?.join("/")),
        (None, None) => "locker".to_string(),
    };
    if source.is_empty() || source.contains([',', ' ', '\t', '\n', '\\']) {
        bail!("mount source {source:?}: use letters, digits and : / . _ - only");
    }
    check_mountpoint(mountpoint)?;
    // As /proc/self/mountinfo will name it.
    let abs = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    // Signals are taken by one thread with sigwait; block them before any
    // other thread exists so none of those receives them.
    let sigs = daemon::block_signals();
    let store = daemon::Store::open(&cfg, opts.data_dir.as_deref(), Some(&abs))?;
    let core = store.core.clone();
    let root = match &opts.namespace {
        Some(spec) => mount_root(&core, spec)?,
        None => InodeNo::ROOT,
    };
    let map = InoMap::new(root);
    let allow_other = opts
        .allow_other
        .or(cfg.mount.allow_other)
        .unwrap_or_else(is_root);
    let mut fuse_cfg = fuser::Config::default();
    use fuser::MountOption as M;
    fuse_cfg.mount_options = vec![
        M::FSName(source.clone()),
        // As a kernel option: fuser passes `Subtype` only to fusermount, so
        // a mount made as root would be of type "fuse" rather than
        // "fuse.locker" (what `mount -t`, `findmnt -t` and fstab name).
        M::CUSTOM("subtype=locker".into()),
        M::DefaultPermissions,
        if opts.read_only { M::RO } else { M::RW },
    ];
    for (set, yes, no) in [
        (opts.suid, M::Suid, M::NoSuid),
        (opts.dev, M::Dev, M::NoDev),
        (opts.exec, M::Exec, M::NoExec),
    ] {
        if let Some(on) = set {
            fuse_cfg.mount_options.push(if on { yes } else { no });
        }
    }
    fuse_cfg.acl = if allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    // One thread reads the device; requests that may wait go to
    // `mount.threads` others (see `fuse::Waiters`).
    fuse_cfg.n_threads = Some(1);
    // A read-only mount changes nothing, access times included.
    let atime = if opts.read_only {
        AtimePolicy::Never
    } else {
        opts.atime
    };
    let writeback = opts.writeback_cache.unwrap_or(cfg.mount.writeback_cache) && !opts.read_only;
    let want_uring = opts.io_uring.unwrap_or(cfg.mount.io_uring);
    let uring_granted = want_uring.then(|| Arc::new(AtomicBool::new(false)));
    let fs = LockerFs::new(
        core.clone(),
        map,
        atime,
        cfg.mount.threads,
        writeback,
        uring_granted.clone(),
    );
    let mut session = fuser::Session::new(fs, mountpoint, &fuse_cfg)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    // The handshake is done: if the kernel granted FUSE over io_uring, it
    // now holds every request until each CPU's ring is registered. A mount
    // that cannot register them cannot serve: it is undone (dropping the
    // session unmounts).
    let conn = connection_of(mountpoint);
    let rings = match uring_granted.filter(|g| g.load(Ordering::Acquire)) {
        Some(_) => {
            use std::os::fd::AsFd;
            let payload = crate::blocks::BLOCK_SIZE as usize + 4096;
            let (c, p) = (conn.clone(), mountpoint.to_path_buf());
            let dead = Arc::new(move || end_connection(c.as_deref(), &p));
            let r = crate::fuse::uring::Rings::register::<LockerFs>(session.as_fd(), payload, dead)
                .context("cannot register the FUSE rings (io_uring)")?;
            Some(r)
        }
        None => None,
    };
    let uring = rings.is_some();
    let mut unmounter = session.unmount_callable();
    let notifier = session.notifier();
    core.set_invalidator(Arc::new(move |list: &[Invalidate]| {
        for i in list {
            // ENOENT: the kernel did not cache it; nothing to drop.
            let _ = match i {
                Invalidate::Entry(dir, name) => {
                    notifier.inval_entry(map.to_kernel(*dir), std::ffi::OsStr::from_bytes(name))
                }
                Invalidate::Inode(ino) => notifier.inval_inode(map.to_kernel(*ino), 0, 0),
                // A negative offset: attributes only, no page is touched.
                Invalidate::Attr(ino) => notifier.inval_inode(map.to_kernel(*ino), -1, 0),
            };
        }
    }));
    let served = core.namespaces()?;
    if served.is_empty() {
        tracing::warn!(
            "the configuration has no [namespaces]: the mount is empty (the embedded default has five; see `locker init -o -`)"
        );
    }
    tracing::info!(
        mountpoint = %mountpoint.display(),
        source = %source,
        data_dir = %store.dir.path().display(),
        namespaces = %served.join(","),
        folder = opts.namespace.as_deref().unwrap_or("/"),
        allow_other,
        read_only = opts.read_only,
        atime = ?atime,
        writeback_cache = writeback,
        io_uring = uring,
        "serving"
    );

    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = match rings {
                Some((rings, give)) => session.run_with(move |d| {
                    give.give(d);
                    Ok(rings.into_threads())
                }),
                None => session.run(),
            };
            let _ = tx2.send(Event::SessionEnded(r));
        })?;
    if uring {
        // The rings took the requests at registration; one unanswered for
        // 10 s means they do not serve, and nothing would: the connection
        // is aborted, which ends the session (and fails what waits).
        let point = mountpoint.to_path_buf();
        let conn = conn.clone();
        std::thread::Builder::new()
            .name("ring-probe".into())
            .spawn(move || {
                let (ptx, prx) = mpsc::channel();
                let p2 = point.clone();
                let _ = std::thread::Builder::new()
                    .name("ring-probe-statfs".into())
                    .spawn(move || {
                        let _ = statfs_errno(&p2);
                        let _ = ptx.send(());
                    });
                if prx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_err()
                {
                    tracing::error!("the FUSE rings do not answer after 10 s; ending the mount");
                    end_connection(conn.as_deref(), &point);
                }
            })?;
    }
    let ready_point = mountpoint.to_path_buf();
    let ready_core = core.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let ready_stopping = stopping.clone();
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || when_answering(&ready_point, &ready_core, &ready_stopping))?;
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
                stopping.store(true, Ordering::Relaxed);
                tracing::info!(signal = sig, "unmounting");
                notify::send("STOPPING=1");
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
    stopping.store(true, Ordering::Relaxed);
    notify::send(&format!(
        "STOPPING=1\nSTATUS=unmounted; pushing {} queued changes",
        queued(&core)
    ));
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

/// Changes not yet pushed, over every namespace.
fn queued(core: &Locker) -> u64 {
    core.sync_stats()
        .map(|v| v.iter().map(|s| s.entries).sum())
        .unwrap_or(0)
}

/// Once the mount answers (a `statfs` is answered only after the kernel's
/// handshake): tells systemd (or the mount helper) it is ready, raises the
/// readahead, then keeps systemd's status line current.
fn when_answering(mountpoint: &Path, core: &Locker, stopping: &AtomicBool) {
    if statfs_errno(mountpoint).is_some() {
        return;
    }
    notify::send(&format!(
        "READY=1\nSTATUS=serving {}; {} changes queued",
        mountpoint.display(),
        queued(core)
    ));
    raise_readahead(mountpoint);
    if !notify::enabled() {
        return;
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        notify::send(&format!(
            "STATUS=serving {}; {} changes queued",
            mountpoint.display(),
            queued(core)
        ));
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
    let Some(dev) = connection_of(mountpoint) else {
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

/// The mount's FUSE connection (its device number, "0:N", also its
/// backing device's name in sysfs), from the mount table: nothing on the
/// mount itself is asked.
fn connection_of(mountpoint: &Path) -> Option<String> {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(mountpoint)
    };
    let abs = match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).ok()?.join(name),
        _ => abs,
    };
    let want = abs.as_os_str().as_bytes();
    mounts()
        .into_iter()
        .rfind(|m| m.point.as_os_str().as_bytes() == want && m.fstype.starts_with("fuse"))
        .map(|m| m.dev)
}

/// Ends a FUSE connection that cannot answer all its requests (a ring
/// that stopped, rings that never answered): its requests fail at once,
/// the daemon's device reads end, which ends the session, and the mount is
/// detached. Where the connection cannot be aborted, the daemon exits:
/// the kernel ends a connection whose daemon is gone, and everything it
/// acknowledged is on disk (as after a `kill -9`). Otherwise the requests
/// that wait for the stopped ring would wait for good.
fn end_connection(dev: Option<&str>, mountpoint: &Path) {
    let aborted = dev
        .and_then(|d| d.split(':').nth(1))
        .is_some_and(abort_connection);
    lazy_unmount(mountpoint);
    if !aborted {
        tracing::error!(
            "cannot abort the FUSE connection; exiting so that the kernel ends it (queued changes are pushed at the next start)"
        );
        std::process::exit(1);
    }
}

/// Where the kernel's fusectl file system shows each FUSE connection.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Aborts FUSE connection `minor` through fusectl, mounting fusectl for
/// the abort where nothing has (systemd does at boot; a container or a
/// minimal system may not), and unmounting it after. True once aborted.
fn abort_connection(minor: &str) -> bool {
    let knob = format!("{FUSECTL}/{minor}/abort");
    match std::fs::write(&knob, "1") {
        Ok(()) => return true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, knob, "cannot abort the FUSE connection");
            return false;
        }
    }
    let dir = CString::new(FUSECTL).expect("no NUL");
    // SAFETY: NUL-terminated strings that live across the call; no data.
    let r = unsafe {
        libc::mount(
            c"fusectl".as_ptr(),
            dir.as_ptr(),
            c"fusectl".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, dir = FUSECTL, "cannot mount fusectl to abort the FUSE connection");
        return false;
    }
    tracing::info!(
        dir = FUSECTL,
        "mounted fusectl to abort the FUSE connection"
    );
    let aborted = match std::fs::write(&knob, "1") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, knob, "cannot abort the FUSE connection");
            false
        }
    };
    // The system is left as it was found.
    // SAFETY: a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, dir = FUSECTL, "cannot unmount fusectl");
    }
    aborted
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
