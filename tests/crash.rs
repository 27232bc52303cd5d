//! kill -9 durability of the mounted filesystem: what was closed or
//! fsynced before the daemon is killed is there, byte for byte and with its
//! metadata, after a restart; the restart needs no manual repair, cleans up
//! the stale mount itself, and a second daemon on a data dir in use is
//! refused.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Mount, is_mounted, pattern};
use sha2::{Digest, Sha256};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Helpers

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn set_xattr(p: &Path, name: &str, v: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of v.len() bytes.
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid NUL-terminated strings and a buffer of buf.len() bytes.
    let r = unsafe {
        libc::lgetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODATA),
            "getxattr {}: {e}",
            p.display()
        );
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: valid path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Everything recorded of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    nlink: u64,
    size: u64,
    sha256: Option<String>,
    target: Option<String>,
    xattr: Option<Vec<u8>>,
}

fn record(root: &Path) -> BTreeMap<String, Entry> {
    fn go(dir: &Path, rel: &str, out: &mut BTreeMap<String, Entry>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = format!("{rel}/{}", n.to_string_lossy());
            let p = dir.join(&n);
            let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {r}: {e}"));
            let ft = md.file_type();
            let mut e = Entry {
                kind: if ft.is_dir() {
                    "dir"
                } else if ft.is_file() {
                    "file"
                } else if ft.is_symlink() {
                    "symlink"
                } else {
                    "other"
                },
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                nlink: md.nlink(),
                size: md.len(),
                sha256: None,
                target: None,
                xattr: None,
            };
            if ft.is_file() {
                let mut data = Vec::new();
                File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .unwrap_or_else(|e| panic!("read {r}: {e}"));
                assert_eq!(data.len() as u64, md.len(), "{r}: stat size vs bytes read");
                e.sha256 = Some(sha(&data));
            }
            if ft.is_symlink() {
                e.target = Some(fs::read_link(&p).unwrap().to_string_lossy().into_owned());
            } else {
                e.xattr = get_xattr(&p, "user.x");
            }
            out.insert(r.clone(), e);
            if ft.is_dir() {
                go(&p, &r, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, "", &mut out);
    out
}

fn assert_same(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) {
    let mut errs = Vec::new();
    for (k, b) in before {
        match after.get(k) {
            None => errs.push(format!("{k}: missing after the restart")),
            Some(a) if a != b => errs.push(format!("{k}:\n  before {b:?}\n  after  {a:?}")),
            _ => {}
        }
    }
    for k in after.keys() {
        if !before.contains_key(k) {
            errs.push(format!("{k}: appeared after the restart"));
        }
    }
    assert!(
        errs.is_empty(),
        "changed by kill -9 + restart:\n{}",
        errs.join("\n")
    );
}

/// Waits until the (re)started daemon serves corp/. `Mount::start` returns
/// as soon as the mountpoint is in /proc/mounts, which a stale mount left by
/// a killed daemon still is. readdir always reaches the daemon, so it fails
/// on the stale mount. Panics if the daemon exits.
fn wait_serving(m: &mut Mount) {
    let t0 = Instant::now();
    loop {
        if fs::read_dir(m.corp()).is_ok() {
            return;
        }
        if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
            m.child = None;
            panic!("locker exited on restart ({st}); log:\n{}", m.log_text());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "restart timed out; log:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `locker fsck` of the (stopped) daemon's data dir finds nothing damaged.
fn assert_fsck_clean(m: &Mount) {
    let out = Command::new(BIN)
        .args(["fsck", "--data-dir", m.data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0 damaged"),
        "fsck: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kill -9, then start again: `Mount::start` returns once a live daemon
/// serves the mountpoint (not the stale mount the killed one left).
fn crash_restart(m: &mut Mount) {
    m.kill9();
    m.start(&[]);
}

fn mount_count(p: &Path) -> usize {
    let want = p.as_os_str().as_bytes();
    fs::read("/proc/mounts")
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| l.split(|&b| b == b' ').nth(1) == Some(want))
        .count()
}

fn write_file(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).unwrap();
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ERROR")).collect()
}

// ---------------------------------------------------------------------------
// (a) closed and fsynced data and metadata survive kill -9

#[test]
fn kill9_closed_and_fsynced_files_and_metadata_survive() {
    let mut m = Mount::new();
    let c = m.corp();

    // Closed files of varied sizes.
    write_file(&c.join("empty"), b"");
    write_file(&c.join("one"), b"x");
    write_file(&c.join("4k"), &pattern(4 * KIB, 1));
    write_file(&c.join("1m"), &pattern(MIB, 2));
    write_file(&c.join("3.5m"), &pattern(3 * MIB + MIB / 2, 3));
    // Sparse: data, a hole spanning whole blocks, data; and a file grown by
    // truncate only.
    {
        let f = File::create(c.join("sparse")).unwrap();
        f.write_all_at(&pattern(100, 4), 0).unwrap();
        f.write_all_at(&pattern(5000, 5), 2 * MIB as u64 + MIB as u64 / 2 + 7)
            .unwrap();
    }
    File::create(c.join("grown"))
        .unwrap()
        .set_len(MIB as u64 + 3)
        .unwrap();
    // An overwritten middle of a closed file.
    write_file(&c.join("patched"), &pattern(2 * MIB, 6));
    OpenOptions::new()
        .write(true)
        .open(c.join("patched"))
        .unwrap()
        .write_all_at(&pattern(10 * KIB, 7), MIB as u64 - 5 * KIB as u64)
        .unwrap();

    // Directories, a symlink (and a dangling one), a hard link.
    fs::create_dir_all(c.join("d1/d2")).unwrap();
    write_file(&c.join("d1/d2/inner"), &pattern(12345, 8));
    std::os::unix::fs::symlink("d1/d2/inner", c.join("sym")).unwrap();
    std::os::unix::fs::symlink("no/such/target", c.join("dangling")).unwrap();
    fs::hard_link(c.join("4k"), c.join("d1/hard")).unwrap();

    // Metadata.
    fs::set_permissions(c.join("one"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(c.join("d1"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(c.join("4k"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(c.join("d1/d2"), Some(42), Some(43)).unwrap();
    set_times(
        &c.join("1m"),
        (1_500_000_000, 1),
        (1_600_000_000, 123_456_789),
    );
    set_times(
        &c.join("d1/d2"),
        (1_500_000_000, 2),
        (1_400_000_000, 999_999_999),
    );
    set_xattr(&c.join("empty"), "user.x", b"value\0with\xffbinary");
    set_xattr(&c.join("d1"), "user.x", b"on a dir");

    // Written, fsynced and still open at the kill.
    let mut open_files = Vec::new();
    for (name, len, seed) in [
        ("open-small", 4 * KIB + 1, 9u64),
        ("open-big", 2 * MIB + 5, 10),
    ] {
        let mut f = File::create(c.join(name)).unwrap();
        f.write_all(&pattern(len, seed)).unwrap();
        f.sync_all().unwrap();
        open_files.push(f);
    }
    // An existing closed file reopened, extended, fdatasynced, kept open.
    let f = OpenOptions::new().write(true).open(c.join("4k")).unwrap();
    f.write_all_at(&pattern(3000, 11), 4 * KIB as u64 - 1000)
        .unwrap();
    f.sync_data().unwrap();
    open_files.push(f);

    let before = record(&c);
    // Sanity of what is recorded: the test sees what it set.
    assert_eq!(before["/one"].mode & 0o7777, 0o640);
    assert_eq!(
        (before["/4k"].uid, before["/4k"].gid, before["/4k"].nlink),
        (1234, 5678, 2)
    );
    assert_eq!(before["/1m"].mtime, (1_600_000_000, 123_456_789));
    assert_eq!(before["/sym"].target.as_deref(), Some("d1/d2/inner"));
    assert_eq!(
        before["/empty"].xattr.as_deref(),
        Some(&b"value\0with\xffbinary"[..])
    );
    assert_eq!(before["/3.5m"].size, 3 * MIB as u64 + MIB as u64 / 2);

    crash_restart(&mut m);
    drop(open_files);
    let after = record(&m.corp());
    assert_same(&before, &after);
    // Twice: a second crash right after recovery changes nothing either.
    crash_restart(&mut m);
    assert_same(&before, &record(&m.corp()));
    let log = m.log_text();
    assert!(error_lines(&log).is_empty(), "errors in the log:\n{log}");
}

// ---------------------------------------------------------------------------
// (b) repeated crashes mid-write

/// truncate(2) by path returns only once its change is recorded, also
/// while another program holds the file open (a log reader): the kernel
/// sends that SETATTR with the size alone, which the daemon used to leave
/// to the holder's close, so a kill -9 in between gave the file back its
/// old size.
#[test]
fn kill9_after_truncate_by_path_of_a_file_held_open_keeps_the_new_size() {
    let mut m = Mount::new();
    let f = m.corp().join("log.txt");
    write_file(&f, &vec![7u8; 1 << 20]);
    let held = File::open(&f).unwrap();
    let grown = m.corp().join("grown.bin");
    write_file(&grown, b"0123456789");
    let held2 = File::open(&grown).unwrap();
    assert_eq!(unsafe { libc::truncate(cstr(&f).as_ptr(), 10) }, 0);
    assert_eq!(unsafe { libc::truncate(cstr(&grown).as_ptr(), 3 << 20) }, 0);
    crash_restart(&mut m);
    wait_serving(&mut m);
    drop((held, held2));
    let t = fs::read(&f).unwrap();
    assert_eq!(t.len(), 10, "the truncated file's size");
    assert!(t.iter().all(|&b| b == 7));
    let g = fs::read(&grown).unwrap();
    assert_eq!(g.len(), 3 << 20);
    assert_eq!(&g[..10], b"0123456789");
    assert!(g[10..].iter().all(|&b| b == 0));
    m.stop();
    assert_fsck_clean(&m);
}

#[test]
fn kill9_loop_mid_write_closed_files_intact_and_store_consistent() {
    let mut m = Mount::new();
    let mut expect: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut unclosed = Vec::new();
    for round in 0..5u64 {
        let c = m.corp();
        let dir = c.join(format!("r{round}"));
        fs::create_dir(&dir).unwrap();
        // Closed files of this round.
        for (i, len) in [0usize, 1, 4 * KIB + 3, MIB + round as usize * 77_777]
            .iter()
            .enumerate()
        {
            let name = format!("r{round}/f{i}");
            let data = pattern(*len, round * 100 + i as u64);
            write_file(&c.join(&name), &data);
            expect.insert(name, data);
        }
        // Rewrite part of a file closed in an earlier round (after its crash).
        if round > 0 {
            let name = format!("r{}/f3", round - 1);
            let patch = pattern(70_000, 1000 + round);
            let off = 900_000u64;
            OpenOptions::new()
                .write(true)
                .open(c.join(&name))
                .unwrap()
                .write_all_at(&patch, off)
                .unwrap();
            let e = expect.get_mut(&name).unwrap();
            if e.len() < off as usize + patch.len() {
                e.resize(off as usize + patch.len(), 0);
            }
            e[off as usize..off as usize + patch.len()].copy_from_slice(&patch);
        }
        // A file unlinked while open: must be gone after the restart.
        let orphan = File::create(dir.join("orphan")).unwrap();
        orphan.write_all_at(&pattern(300_000, 7), 0).unwrap();
        fs::remove_file(dir.join("orphan")).unwrap();

        // Another file written by a thread, never closed; killed mid-way.
        let name = format!("r{round}/unclosed");
        let path = c.join(&name);
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut f = match File::create(&path) {
                    Ok(f) => f,
                    Err(_) => return,
                };
                let chunk = pattern(64 * KIB, round);
                while !stop.load(Ordering::Relaxed)
                    && written.load(Ordering::Relaxed) < 64 * MIB as u64
                {
                    if f.write_all(&chunk).is_err() {
                        break;
                    }
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                drop(f); // only ever closed after the kill
            })
        };
        let t0 = Instant::now();
        while written.load(Ordering::Relaxed) < (round + 1) * 256 * KIB as u64
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        drop(orphan);
        unclosed.push(name);
        crash_restart(&mut m);

        // Every closed file of every round intact.
        let c = m.corp();
        for (name, data) in &expect {
            let got = fs::read(c.join(name))
                .unwrap_or_else(|e| panic!("round {round}: read {name}: {e}"));
            assert!(
                got.len() == data.len() && sha(&got) == sha(data),
                "round {round}: {name} changed: {} bytes, want {}",
                got.len(),
                data.len()
            );
        }
        // Every listed file readable; no orphan left; the unclosed ones
        // readable whatever they hold.
        let all = record(&c);
        for r in 0..=round {
            assert!(
                !all.contains_key(&format!("/r{r}/orphan")),
                "round {round}: r{r}/orphan survived"
            );
        }
        let files: Vec<&String> = all
            .iter()
            .filter(|(_, e)| e.kind == "file")
            .map(|(k, _)| k)
            .collect();
        for name in expect.keys() {
            assert!(
                files.contains(&&format!("/{name}")),
                "round {round}: {name} not listed"
            );
        }
        for f in &files {
            let known =
                expect.contains_key(&f[1..]) || unclosed.iter().any(|u| **f == format!("/{u}"));
            assert!(known, "round {round}: unexpected file {f}");
        }
    }
    // A clean stop and start after all that: still the same.
    let before = record(&m.corp());
    m.remount();
    assert_same(&before, &record(&m.corp()));
    let log = m.log_text();
    assert!(error_lines(&log).is_empty(), "errors in the log:\n{log}");
}

// ---------------------------------------------------------------------------
// (c) the stale mount left by kill -9 is cleaned up by the next start

#[test]
fn kill9_stale_mount_start_cleans_it_up() {
    let mut m = Mount::new();
    write_file(&m.corp().join("f"), b"kept");
    m.kill9();
    let e = fs::read_dir(&m.mnt).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "after kill -9: {e}");
    assert!(is_mounted(&m.mnt));
    m.start(&[]);
    wait_serving(&mut m);
    assert_eq!(
        mount_count(&m.mnt),
        1,
        "the stale mount is still under the new one"
    );
    assert_eq!(fs::read(m.corp().join("f")).unwrap(), b"kept");
    assert!(
        m.log_text().contains("stale mount"),
        "the daemon did not say it cleaned up"
    );
}

/// Regression: a stat of the mountpoint shortly before the kill leaves its
/// attributes in the kernel cache, so a stat-based stale-mount check was
/// fooled and the restart failed with "Transport endpoint is not connected".
#[test]
fn stale_mount_with_cached_root_attrs_start_cleans_it_up() {
    let mut m = Mount::new();
    write_file(&m.corp().join("f"), b"kept");
    fs::metadata(&m.mnt).unwrap();
    m.kill9();
    m.start(&[]);
    wait_serving(&mut m);
    assert_eq!(
        mount_count(&m.mnt),
        1,
        "the stale mount is still under the new one"
    );
    assert_eq!(fs::read(m.corp().join("f")).unwrap(), b"kept");
}

// ---------------------------------------------------------------------------
// (d) one daemon per data dir

#[test]
fn second_daemon_same_data_dir_refused_first_keeps_working() {
    let mut m = Mount::new();
    write_file(&m.corp().join("f"), b"first");
    let other = tempfile::tempdir().unwrap();
    let mnt2 = other.path().join("mnt");
    fs::create_dir(&mnt2).unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&mnt2)
        .arg("--data-dir")
        .arg(&m.data)
        .env("LOCKER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            if is_mounted(&mnt2) {
                let _ = Command::new("fusermount3").arg("-uz").arg(&mnt2).status();
            }
            panic!("the second daemon on the same data dir is still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !status.success(),
        "second daemon exited with {status}; stderr:\n{stderr}"
    );
    assert!(!is_mounted(&mnt2), "the second daemon mounted");
    let data = m.data.canonicalize().unwrap();
    assert!(
        stderr.contains(&*data.to_string_lossy()),
        "stderr does not name the data dir {}:\n{stderr}",
        data.display()
    );
    assert!(
        stderr.contains("in use"),
        "stderr does not say the data dir is in use:\n{stderr}"
    );
    let pid = m.child.as_ref().unwrap().id().to_string();
    assert!(
        stderr.contains(&pid),
        "stderr does not name the running daemon (pid {pid}):\n{stderr}"
    );

    // The first mount keeps working.
    assert_eq!(fs::read(m.corp().join("f")).unwrap(), b"first");
    let big = pattern(MIB + 17, 99);
    write_file(&m.corp().join("g"), &big);
    assert_eq!(fs::read(m.corp().join("g")).unwrap(), big);
    fs::remove_file(m.corp().join("f")).unwrap();
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the first daemon exited"
    );
}

/// The names in `dir` (hidden ones left out), sorted.
fn visible_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn the_daemon_killed_at_each_crash_point_loses_nothing_and_duplicates_nothing() {
    // LOCKER_CRASH_AT makes the daemon abort (as kill -9 would) at a named
    // point between steps that must be atomic together; after a restart
    // nothing acknowledged is lost, nothing half-done shows, and nothing is
    // there twice, in the mount or in the backend.
    let data = pattern(2 * MIB, 17);
    for point in [
        "block-stored",
        "rows-committed",
        "upload-sent",
        "remote-node",
        "remote-applied",
    ] {
        let mut m = Mount::with_config(
            "[sync]\nupload_delay_ms = 0\nrefresh_interval_s = 0\n[namespaces.corp]\n",
            &[("LOCKER_CRASH_AT".to_string(), point.to_string())],
        );
        let backend = m.data.join("backend/corp");
        // Acknowledged only if close(2) itself succeeded (a dropped File
        // ignores its result).
        let acked = {
            use std::os::fd::IntoRawFd;
            let mut f = File::create(m.corp().join("f")).unwrap();
            let wrote = f.write_all(&data).is_ok();
            // SAFETY: the descriptor comes from into_raw_fd and is closed once.
            wrote && unsafe { libc::close(f.into_raw_fd()) } == 0
        };
        // A file made in the backend by someone else, taken by the next
        // listing.
        std::thread::sleep(Duration::from_millis(300));
        fs::write(backend.join("g"), b"theirs").unwrap();
        let _ = Command::new(BIN)
            .args(["status", "--refresh", "--data-dir"])
            .arg(&m.data)
            .output();
        let t0 = Instant::now();
        while m.child.as_mut().unwrap().try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{point}: the daemon never reached the crash point"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            m.log_text()
                .contains(&format!("crash point {point} reached"))
        );
        m.kill9();
        m.env.clear();
        m.start(&[]);
        m.status(true);
        m.wait_drained(Duration::from_secs(60));
        m.status(true);
        let local = fs::read(m.corp().join("f")).unwrap_or_default();
        if acked {
            assert_eq!(
                sha(&local),
                sha(&data),
                "{point}: an acknowledged write was lost"
            );
        } else {
            assert!(local.is_empty() || local == data, "{point}: a torn file");
        }
        assert_eq!(
            fs::read(backend.join("f")).unwrap_or_default(),
            local,
            "{point}: the backend and the mount differ"
        );
        assert_eq!(fs::read(m.corp().join("g")).unwrap(), b"theirs", "{point}");
        assert_eq!(visible_names(&m.corp()), ["f", "g"], "{point}: here");
        assert_eq!(
            visible_names(&backend),
            ["f", "g"],
            "{point}: in the backend"
        );
    }
}

// ---------------------------------------------------------------------------
// (f) kill -9 under a small-file load: a writer creating and closing small
// files, renaming and unlinking others, killed at random moments. Every
// operation that returned is there after the restart (and nothing else);
// the one in flight at the kill happened entirely or not at all.

/// A writer's operation, recorded once it returned.
#[derive(Debug, Clone)]
enum Op {
    /// Created, written with `pattern(len, seed)`, closed.
    Create(String, usize, u64),
    Rename(String, String),
    Unlink(String),
}

/// Content of the names of one directory: (len, seed).
type Files = BTreeMap<String, (usize, u64)>;

fn apply(files: &mut Files, op: &Op) {
    match op {
        Op::Create(n, len, seed) => {
            files.insert(n.clone(), (*len, *seed));
        }
        Op::Rename(a, b) => {
            let v = files.remove(a).expect("renamed a live name");
            files.insert(b.clone(), v);
        }
        Op::Unlink(a) => {
            files.remove(a);
        }
    }
}

/// Runs operations in `dir` until one fails (the daemon is gone): returns
/// those that returned, and the one that was in flight.
fn small_file_writer(dir: &Path, progress: &AtomicU64, seed: u64) -> (Vec<Op>, Option<Op>) {
    let mut done = Vec::new();
    let mut live: Vec<String> = Vec::new();
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0u64.. {
        let r = rnd();
        let op = if r % 10 < 6 || live.len() < 4 {
            // Mostly a few KiB, sometimes empty, sometimes past a block.
            let len = match r % 16 {
                0 => 0,
                1 => 1_100_000 + (r % 5000) as usize,
                2..=4 => 70_000 + (r % 9000) as usize,
                _ => (r % 9000) as usize,
            };
            Op::Create(format!("f{i}"), len, seed * 1_000_000 + i)
        } else if r % 10 < 8 {
            let a = live.swap_remove((r / 16) as usize % live.len());
            Op::Rename(a, format!("r{i}"))
        } else {
            let a = live.swap_remove((r / 16) as usize % live.len());
            Op::Unlink(a)
        };
        let ok = match &op {
            Op::Create(n, len, s) => File::create(dir.join(n))
                .and_then(|mut f| f.write_all(&pattern(*len, *s)).map(|_| f))
                .is_ok_and(|f| {
                    // close(2) itself must succeed: it is what commits.
                    use std::os::fd::IntoRawFd;
                    unsafe { libc::close(f.into_raw_fd()) == 0 }
                }),
            Op::Rename(a, b) => fs::rename(dir.join(a), dir.join(b)).is_ok(),
            Op::Unlink(a) => fs::remove_file(dir.join(a)).is_ok(),
        };
        if !ok {
            return (done, Some(op));
        }
        match &op {
            Op::Create(n, ..) => live.push(n.clone()),
            Op::Rename(_, b) => live.push(b.clone()),
            Op::Unlink(_) => {}
        }
        done.push(op);
        progress.fetch_add(1, Ordering::Relaxed);
    }
    unreachable!()
}

/// The files of `dir`, each with its content's hash.
fn listing(dir: &Path) -> BTreeMap<String, (usize, String)> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let data = fs::read(e.path()).unwrap_or_else(|err| panic!("read {name}: {err}"));
            (name, (data.len(), sha(&data)))
        })
        .collect()
}

/// Checks `dir` against `files` after a crash, allowing the operation in
/// flight to have happened or not (a create: also as an empty file), and
/// returns the state found.
fn check_after_crash(dir: &Path, files: Files, inflight: Option<Op>, cycle: u32) -> Files {
    let got = listing(dir);
    let want = |f: &Files| -> BTreeMap<String, (usize, String)> {
        f.iter()
            .map(|(n, (len, s))| (n.clone(), (*len, sha(&pattern(*len, *s)))))
            .collect()
    };
    let mut options = vec![files.clone()];
    if let Some(op) = &inflight {
        let mut after = files.clone();
        apply(&mut after, op);
        options.push(after);
        if let Op::Create(n, _, s) = op {
            let mut empty = files.clone();
            empty.insert(n.clone(), (0, *s));
            options.push(empty);
        }
    }
    for o in options {
        if want(&o) == got {
            return o;
        }
    }
    // Say what differs from the state without the operation in flight.
    let w = want(&files);
    let missing: Vec<_> = w.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !w.contains_key(*k)).collect();
    let changed: Vec<_> = w
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, v)| format!("{k} ({} bytes, want {})", got[k].0, v.0))
        .collect();
    panic!(
        "cycle {cycle}: after the crash (in flight: {inflight:?}) missing {missing:?}, \
         unexpected {extra:?}, changed {changed:?}"
    );
}

#[test]
fn kill9_under_a_small_file_load_loses_nothing_that_returned() {
    small_file_load_killed(&[], 8);
}

/// The same with the kernel's writeback cache: close (FLUSH) still
/// commits, after the kernel has written its cached pages and times.
#[test]
fn kill9_under_a_small_file_load_with_the_writeback_cache_loses_nothing_that_returned() {
    small_file_load_killed(&["-o", "writeback_cache"], 4);
}

/// Mounts with `args`, runs `small_file_writer` and kills the daemon at a
/// random moment, `LOCKER_CRASH_CYCLES` times (else `cycles`).
fn small_file_load_killed(args: &[&str], cycles: u32) {
    let cycles: u32 = std::env::var("LOCKER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cycles);
    let mut m = Mount::with_args(args);
    let mut dirs: Vec<(String, Files)> = Vec::new();
    let mut x: u64 = 0x5eed_1234;
    for cycle in 0..cycles {
        let name = format!("load{cycle}");
        let dir = m.corp().join(&name);
        fs::create_dir(&dir).unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let writer = {
            let (dir, progress) = (dir.clone(), progress.clone());
            std::thread::spawn(move || small_file_writer(&dir, &progress, cycle as u64 + 1))
        };
        // Kill after a random number of operations (10 to 600).
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = 10 + x % 590;
        let t0 = Instant::now();
        while progress.load(Ordering::Relaxed) < after && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_micros(200));
        }
        m.kill9();
        let (done, inflight) = writer.join().unwrap();
        let mut files = Files::new();
        for op in &done {
            apply(&mut files, op);
        }
        m.start(&[]);
        wait_serving(&mut m);
        let found = check_after_crash(&m.corp().join(&name), files, inflight, cycle);
        dirs.push((name, found));
    }
    // Every cycle's files, after all the crashes and a clean stop.
    m.remount();
    for (name, files) in &dirs {
        check_after_crash(&m.corp().join(name), files.clone(), None, cycles);
    }
    m.stop();
    assert_fsck_clean(&m);
    let log = m.log_text();
    assert!(error_lines(&log).is_empty(), "errors in the log:\n{log}");
}

/// With the kernel's writeback cache, writes wait in the kernel, which
/// places appends and keeps the file's times itself: close still commits
/// everything first, so a kill -9 after it loses nothing, and what the
/// kernel showed (content, size, mtime) is what the restarted daemon has.
#[test]
fn with_the_writeback_cache_close_commits_what_the_kernel_showed() {
    let mut m = Mount::with_args(&["-o", "writeback_cache"]);
    assert!(
        m.log_text().contains("writeback_cache=true"),
        "{}",
        m.log_text()
    );
    let c = m.corp();
    // Part of a page through a write-only handle: the kernel reads the
    // rest of the page through it first.
    let mut base = pattern(3 * 4096 + 100, 1);
    write_file(&c.join("w"), &base);
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    {
        let f = OpenOptions::new().write(true).open(c.join("w")).unwrap();
        f.write_all_at(b"XYZ", 5000).unwrap();
    }
    base[5000..5003].copy_from_slice(b"XYZ");
    // Appends through two handles, in turn.
    let mut a = OpenOptions::new()
        .append(true)
        .create(true)
        .open(c.join("log"))
        .unwrap();
    let mut b = OpenOptions::new().append(true).open(c.join("log")).unwrap();
    let mut log = Vec::new();
    for i in 0..200 {
        let line = format!("line {i}\n");
        if i % 2 == 0 { &mut a } else { &mut b }
            .write_all(line.as_bytes())
            .unwrap();
        log.extend_from_slice(line.as_bytes());
    }
    drop(a);
    drop(b);
    let seen = sizes_and_mtimes(&c, &["w", "log"]);
    assert_eq!(fs::read(c.join("w")).unwrap(), base);
    assert_eq!(fs::read(c.join("log")).unwrap(), log);
    m.kill9();
    m.start(&[]);
    wait_serving(&mut m);
    let c = m.corp();
    assert_eq!(sha(&fs::read(c.join("w")).unwrap()), sha(&base));
    assert_eq!(fs::read(c.join("log")).unwrap(), log);
    let after = sizes_and_mtimes(&c, &["w", "log"]);
    assert_eq!(after, seen, "size and mtime after the restart");
}

/// Size and mtime (seconds, nanoseconds) of each of `names` in `dir`.
fn sizes_and_mtimes(dir: &Path, names: &[&str]) -> Vec<(u64, i64, i64)> {
    names
        .iter()
        .map(|n| {
            let md = fs::metadata(dir.join(n)).unwrap();
            (md.len(), md.mtime(), md.mtime_nsec())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A full disk under the data directory

/// A tmpfs mounted over a directory; lazily unmounted when dropped (after
/// or before the daemon using it stops).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Creates `p` with `data` and closes it; Err if any step fails (the
/// error `close(2)` gives included, which dropping a `File` ignores).
fn write_and_close(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = File::create(p)?;
    let w = f.write_all(data);
    let fd = f.into_raw_fd();
    // SAFETY: the descriptor was just taken from the File, closed once.
    let c = unsafe { libc::close(fd) };
    w?;
    if c != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The disk under the data directory fills up while files are written:
/// writes and closes fail (ENOSPC) rather than report done what was not
/// kept. Once there is room again, writing and fsync work again, without
/// a restart; every file whose `close` returned is intact, then and after
/// a kill -9 and a restart, and fsck finds nothing damaged.
#[test]
fn a_full_disk_fails_writes_and_loses_no_closed_file() {
    let mut m = Mount::new();
    m.stop();
    let data = m.data.clone();
    fs::remove_dir_all(&data).unwrap();
    fs::create_dir(&data).unwrap();
    let _disk = Tmpfs::mount(&data, "64m");
    m.start(&[]);
    // Leave the daemon 6 MiB.
    let filler = data.join("filler");
    {
        let room = room(&data);
        let keep = 6 * MIB as u64;
        let mut f = File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; MIB];
        let mut left = room.saturating_sub(keep);
        while left > 0 {
            let n = left.min(MIB as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    let c = m.corp();
    let dir = c.join("full");
    fs::create_dir(&dir).unwrap();
    let mut kept: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let sizes = [700usize, 40 * KIB, 300 * KIB, MIB + 5];
    let (mut failures, mut refused) = (0, 0);
    for i in 0..400u64 {
        let name = format!("f{i}");
        let body = pattern(sizes[i as usize % sizes.len()], i);
        match write_and_close(&dir.join(&name), &body) {
            Ok(()) => {
                kept.insert(name, body);
                failures = 0;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{name}: {e}");
                refused += 1;
                failures += 1;
                if failures >= 20 {
                    break;
                }
            }
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert!(kept.len() > 5, "only {} files fit", kept.len());
    // Room again: writing works again (once the daemon tries again).
    fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    let mut after = 0u64;
    while after < 20 {
        let name = format!("after{after}");
        let body = pattern(sizes[after as usize % sizes.len()], 1000 + after);
        match write_and_close(&dir.join(&name), &body) {
            Ok(()) => {
                kept.insert(name, body);
                after += 1;
            }
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "writes still fail with room again: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // And so does an fsync (the metadata committed and synced).
    let last = File::open(dir.join("after19")).unwrap();
    while let Err(e) = last.sync_all() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "fsync still fails with room again: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(last);
    let check = |m: &Mount, when: &str| {
        let dir = m.corp().join("full");
        for (name, body) in &kept {
            let got =
                fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{when}: read {name}: {e}"));
            assert!(
                got.len() == body.len() && sha(&got) == sha(body),
                "{when}: {name} changed: {} bytes, want {}",
                got.len(),
                body.len()
            );
        }
    };
    check(&m, "with room again");
    crash_restart(&mut m);
    wait_serving(&mut m);
    check(&m, "after kill -9");
    m.stop();
    assert_fsck_clean(&m);
}

/// Bytes free for anyone on the file system holding `p`.
fn room(p: &Path) -> u64 {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill.
    let r = unsafe { libc::statvfs(cstr(p).as_ptr(), &mut s) };
    assert_eq!(r, 0, "statvfs {}", p.display());
    s.f_frsize as u64 * s.f_bavail as u64
}
