//! Ways to mount: one namespace or one folder of it (`--namespace`), the
//! mount's source name, systemd's readiness protocol (`$NOTIFY_SOCKET`),
//! and the fstab helper `mount.fuse.locker` driven by mount(8) and
//! umount(8). Each on a real mount, torn down even when a test fails.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ApiMount, BIN, Mount, is_fuse_live, is_mounted, mount_source, statfs};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

fn locker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_folder_mount_shows_that_folder_and_nothing_else() {
    let mut m = Mount::with_args(&["--namespace", "emails/adjuntos"]);
    assert_eq!(
        mount_source(&m.mnt),
        Some((
            "fuse.locker".to_string(),
            "locker:emails/adjuntos".to_string()
        ))
    );
    // The folder did not exist: it was made, empty.
    assert!(names(&m.mnt).is_empty(), "{:?}", names(&m.mnt));
    assert!(m.log_text().contains("creating the folder to mount"));

    // Files and folders are made at its root, renamed, linked, removed.
    std::fs::write(m.mnt.join("a.txt"), b"attachment").unwrap();
    std::fs::create_dir(m.mnt.join("sub")).unwrap();
    std::fs::write(m.mnt.join("sub/b.pdf"), b"pdf").unwrap();
    std::fs::write(m.mnt.join("gone"), b"x").unwrap();
    std::fs::rename(m.mnt.join("gone"), m.mnt.join("sub/gone")).unwrap();
    std::fs::remove_file(m.mnt.join("sub/gone")).unwrap();
    std::fs::hard_link(m.mnt.join("a.txt"), m.mnt.join("sub/a-link")).unwrap();
    assert_eq!(names(&m.mnt), ["a.txt", "sub"]);
    assert_eq!(names(&m.mnt.join("sub")), ["a-link", "b.pdf"]);
    assert_eq!(
        std::fs::read(m.mnt.join("sub/a-link")).unwrap(),
        b"attachment"
    );

    // The root is inode 1 and a directory; `..` in a listing of it is itself.
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(&m.mnt).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.ino(), 1);
    assert_ne!(
        std::fs::metadata(m.mnt.join("sub")).unwrap().ino(),
        1,
        "a folder below the root has its own number"
    );

    // References name the whole path; the commands map both ways.
    assert_eq!(
        getxattr(&m.mnt.join("sub/b.pdf"), "user.locker.ref").unwrap(),
        b"locker://emails/adjuntos/sub/b.pdf"
    );
    assert_eq!(
        getxattr(&m.mnt, "user.locker.ref").unwrap(),
        b"locker://emails/adjuntos"
    );
    let (ok, out, err) = locker(&["ref", m.mnt.join("sub/b.pdf").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "locker://emails/adjuntos/sub/b.pdf");
    let (ok, out, err) = locker(&[
        "resolve",
        "locker://emails/adjuntos/sub/b.pdf",
        "--mountpoint",
        m.mnt.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(PathBuf::from(out), m.mnt.join("sub/b.pdf"));
    let (ok, _, err) = locker(&[
        "resolve",
        "locker://corp/x",
        "--mountpoint",
        m.mnt.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not below the folder"), "{err}");

    // The backend holds them at their full paths.
    m.wait_drained(Duration::from_secs(30));
    let backend = m.data.join("backend/emails/adjuntos");
    assert_eq!(std::fs::read(backend.join("sub/b.pdf")).unwrap(), b"pdf");

    // Mounted whole again, the folder is where it was.
    m.stop();
    m.args.clear();
    m.start(&[]);
    assert_eq!(
        std::fs::read(m.mnt.join("emails/adjuntos/a.txt")).unwrap(),
        b"attachment"
    );
    assert_eq!(
        mount_source(&m.mnt),
        Some(("fuse.locker".to_string(), "locker".to_string()))
    );

    // A namespace mount, with its source named by the admin.
    m.stop();
    m.args = ["--namespace", "emails", "--source", "locker:mail-node1"]
        .map(String::from)
        .to_vec();
    m.start(&[]);
    assert_eq!(names(&m.mnt), ["adjuntos"]);
    assert_eq!(mount_source(&m.mnt).unwrap().1, "locker:mail-node1");
    assert!(
        m.log_text()
            .contains("namespaces=corp,deck,emails,factory,hst")
    );
}

#[test]
fn changes_made_over_http_show_in_a_folder_mount() {
    let mut a = ApiMount::start("");
    assert_eq!(a.put("corp/in/old.txt", b"one").status, 201);
    a.m.args
        .extend(["--namespace".to_string(), "corp/in".to_string()]);
    a.restart();
    let f = a.m.mnt.join("old.txt");
    assert_eq!(std::fs::read(&f).unwrap(), b"one");
    // Cached by the kernel now; a replacing PUT must show at once.
    assert_eq!(a.put("corp/in/old.txt", b"two, longer").status, 200);
    assert_eq!(std::fs::read(&f).unwrap(), b"two, longer");
    assert_eq!(a.put("corp/in/new.txt", b"new").status, 201);
    assert_eq!(names(&a.m.mnt), ["new.txt", "old.txt"]);
    assert_eq!(a.delete("corp/in/old.txt").status, 204);
    assert!(!f.exists());
    assert_eq!(names(&a.m.mnt), ["new.txt"]);
    // Written in the mount, served over HTTP at its full path.
    std::fs::write(a.m.mnt.join("w.txt"), b"from the mount").unwrap();
    assert_eq!(a.get("corp/in/w.txt").body, b"from the mount");
}

#[test]
fn a_bad_folder_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = d.path().join("data");
    let run = |args: &[&str]| {
        let mut all = vec![
            "mount",
            mnt.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        locker(&all)
    };
    let (ok, _, err) = run(&["--namespace", "nope/x"]);
    assert!(!ok);
    assert!(
        err.contains("namespace \"nope\" is not configured") && err.contains("corp, deck"),
        "{err}"
    );
    let (ok, _, err) = run(&["--namespace", "corp/../hst"]);
    assert!(!ok && err.contains("not allowed"), "{err}");
    let (ok, _, err) = run(&["-o", "config=/nonexistent.toml,bogus"]);
    assert!(
        !ok && err.contains("unknown mount option \"bogus\""),
        "{err}"
    );
    let (ok, _, err) = run(&["--source", "locker corp"]);
    assert!(!ok && err.contains("mount source"), "{err}");
    assert!(!is_mounted(&mnt));
}

/// A listener on a notification socket, as systemd has.
struct Listener {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sock: UnixDatagram,
}

impl Listener {
    fn new() -> Listener {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Listener {
            _dir: dir,
            path,
            sock,
        }
    }

    /// Every message that arrives within `timeout`.
    fn collect(&self, timeout: Duration) -> Vec<String> {
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < timeout {
            if let Ok(n) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }

    /// Messages until one has a line `want` (or the time is up).
    fn until(&self, want: &str, timeout: Duration) -> Vec<String> {
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while t0.elapsed() < timeout {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == want);
                got.push(m);
                if done {
                    return got;
                }
            }
        }
        panic!("no {want} within {timeout:?}; got {got:?}");
    }
}

#[test]
fn systemd_hears_ready_once_the_mount_answers_and_stopping_at_the_end() {
    let l = Listener::new();
    let mut m = Mount::with_config(
        "[namespaces.corp]\n",
        &[("NOTIFY_SOCKET".to_string(), l.path.display().to_string())],
    );
    let got = l.until("READY=1", Duration::from_secs(20));
    // Ready means answering: the mount is live when READY=1 arrives (the
    // test's own start waits for that too, so check the order through the
    // message: it carries the status line).
    assert!(got.last().unwrap().contains("STATUS=serving"), "{got:?}");
    assert!(is_fuse_live(&m.mnt));
    std::fs::write(m.corp().join("f"), b"x").unwrap();
    m.stop();
    let got = l.until("STOPPING=1", Duration::from_secs(20));
    assert!(!got.iter().any(|g| g.contains("READY=1")), "{got:?}");
}

#[test]
fn a_failed_start_tells_the_listener_why() {
    let l = Listener::new();
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(BIN)
        .args(["mount", mnt.to_str().unwrap(), "--namespace", "nope"])
        .arg("--data-dir")
        .arg(d.path().join("data"))
        .env("NOTIFY_SOCKET", &l.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let got = l.collect(Duration::from_millis(500)).join("");
    assert!(
        got.contains("STATUS=failed:") && got.contains("nope"),
        "{got}"
    );
}

/// `/sbin/mount.fuse.locker` linked to the binary under test while a test
/// runs (mount(8) looks for helpers only in /sbin); put back as it was.
struct Helper {
    path: PathBuf,
    before: Option<PathBuf>,
}

impl Helper {
    fn install() -> Option<Helper> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mount(8) with a helper needs root");
            return None;
        }
        let path = PathBuf::from("/sbin/mount.fuse.locker");
        let before = std::fs::read_link(&path).ok();
        if path.exists() && before.is_none() {
            panic!(
                "{} exists and is not a link; not touching it",
                path.display()
            );
        }
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(BIN, &path).unwrap();
        Some(Helper { path, before })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(b) = &self.before {
            let _ = std::os::unix::fs::symlink(b, &self.path);
        }
    }
}

/// Unmounts what a test mounted through mount(8), and waits for each
/// daemon to finish, even when the test fails.
struct Mounted(Vec<(PathBuf, PathBuf)>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for (mnt, data) in &self.0 {
            if is_mounted(mnt) {
                let _ = Command::new("umount").arg("-l").arg(mnt).status();
            }
            wait_unlocked(data, Duration::from_secs(30));
        }
    }
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped by
/// whoever inherited it, does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with(|c| c != 'Z')))
        .unwrap_or(false)
}

/// The pid in a data directory's lock file while a daemon holds it.
fn holder(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("locker.lock")).ok()?;
    let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
    alive(pid).then_some(pid)
}

fn wait_unlocked(data: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while holder(data).is_some() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

#[test]
fn fstab_lines_mount_with_mount_a_and_umount_stops_the_daemon() {
    let Some(_helper) = Helper::install() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (corp, mail) = (d.path().join("corp"), d.path().join("attachments"));
    let other = d.path().join("other");
    for m in [&corp, &mail, &other] {
        std::fs::create_dir(m).unwrap();
    }
    let (data1, data2) = (d.path().join("data1"), d.path().join("data2"));
    let (cfg1, cfg2) = (d.path().join("one.toml"), d.path().join("two.toml"));
    for (cfg, data) in [(&cfg1, &data1), (&cfg2, &data2)] {
        std::fs::write(
            cfg,
            format!(
                "data_dir = \"{}\"\n[namespaces.corp]\n[namespaces.emails]\n",
                data.display()
            ),
        )
        .unwrap();
    }
    let (log1, log2) = (d.path().join("one.log"), d.path().join("two.log"));
    let fstab = d.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\n\
             locker:corp {} fuse.locker config={},log={},_netdev,nofail,x-systemd.automount 0 0\n\
             locker:emails/adjuntos {} fuse.locker config={},log={},noexec,nosuid 0 0\n",
            corp.display(),
            cfg1.display(),
            log1.display(),
            mail.display(),
            cfg2.display(),
            log2.display()
        ),
    )
    .unwrap();
    let _mounted = Mounted(vec![
        (corp.clone(), data1.clone()),
        (mail.clone(), data2.clone()),
    ]);
    let logs = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log1).unwrap_or_default(),
            std::fs::read_to_string(&log2).unwrap_or_default()
        )
    };

    // mount -a: both are up when it returns, told apart by their sources.
    sh(Command::new("mount").arg("--fstab").arg(&fstab).arg("-a"));
    assert!(is_fuse_live(&corp) && is_fuse_live(&mail), "{}", logs());
    assert_eq!(
        mount_source(&corp),
        Some(("fuse.locker".into(), "locker:corp".into()))
    );
    assert_eq!(
        mount_source(&mail),
        Some(("fuse.locker".into(), "locker:emails/adjuntos".into()))
    );
    let opts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = opts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mail.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("nosuid") && line.contains("noexec"), "{line}");
    std::fs::write(corp.join("report.txt"), b"quarterly").unwrap();
    std::fs::write(mail.join("scan.pdf"), b"%PDF").unwrap();
    let pid = holder(&data1).expect("a daemon holds data1");

    // umount, then mount again at once: the new daemon waits for the old
    // one to push its queue and exit, and sees what it wrote.
    sh(Command::new("umount").arg(&corp));
    assert!(!is_mounted(&corp));
    sh(Command::new("mount").arg("--fstab").arg(&fstab).arg(&corp));
    assert!(is_fuse_live(&corp), "{}", logs());
    assert_eq!(
        std::fs::read(corp.join("report.txt")).unwrap(),
        b"quarterly"
    );
    assert_ne!(holder(&data1), Some(pid), "a new daemon serves it");
    assert!(!alive(pid), "the old daemon exited");
    assert!(
        logs().contains("every change is in its backend"),
        "{}",
        logs()
    );

    // A second daemon on a data directory in use is refused, by name.
    let out = Command::new("mount")
        .args(["-t", "fuse.locker", "locker:emails"])
        .arg(&other)
        .arg("-o")
        .arg(format!("config={}", cfg1.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by another locker daemon"), "{err}");
    assert!(
        err.contains(&format!("mounted at {}", corp.display())),
        "{err}"
    );
    assert!(!is_mounted(&other));

    // A remount changes the mount's flags in place; the daemon serves on.
    sh(Command::new("mount").args(["-o", "remount,ro"]).arg(&mail));
    assert!(std::fs::write(mail.join("x"), b"x").is_err());
    assert_eq!(std::fs::read(mail.join("scan.pdf")).unwrap(), b"%PDF");
    sh(Command::new("mount").args(["-o", "remount,rw"]).arg(&mail));
    std::fs::write(mail.join("x"), b"x").unwrap();
    // Flags not named keep a mount's safe defaults (no device, no set-ID).
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mail.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    // umount stops each daemon after its drain; its data is in its backend.
    sh(Command::new("umount").arg(&corp).arg(&mail));
    assert!(wait_unlocked(&data1, Duration::from_secs(30)), "{}", logs());
    assert!(wait_unlocked(&data2, Duration::from_secs(30)), "{}", logs());
    for (file, want) in [
        (data2.join("backend/emails/adjuntos/scan.pdf"), &b"%PDF"[..]),
        (data1.join("backend/corp/report.txt"), &b"quarterly"[..]),
    ] {
        match std::fs::read(&file) {
            Ok(got) => assert_eq!(got, want, "{}", file.display()),
            Err(e) => panic!("{}: {e}\n{}", file.display(), logs()),
        }
    }

    // mount -t with a source, as typed at a shell; errors reach the caller.
    sh(Command::new("mount")
        .args(["-t", "fuse.locker", "locker:corp"])
        .arg(&corp)
        .arg("-o")
        .arg(format!("config={},log={}", cfg1.display(), log1.display())));
    assert!(corp.join("report.txt").exists());
    sh(Command::new("umount").arg(&corp));
    let out = Command::new("mount")
        .args(["-t", "fuse.locker", "corp"])
        .arg(&corp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected locker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// atime, mtime and ctime of `p`, to the nanosecond.
fn times(p: &Path) -> [(i64, i64); 3] {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    [
        (m.atime(), m.atime_nsec()),
        (m.mtime(), m.mtime_nsec()),
        (m.ctime(), m.ctime_nsec()),
    ]
}

fn cat(p: &Path) {
    std::fs::read(p).unwrap();
}

/// Which of atime, mtime, ctime moved, as "YNN".
fn moved(a: [(i64, i64); 3], b: [(i64, i64); 3]) -> String {
    (0..3)
        .map(|i| if a[i] == b[i] { 'N' } else { 'Y' })
        .collect()
}

#[test]
fn reads_move_the_access_time_as_the_atime_option_says() {
    // As xfstests' generic/003 checks it.
    let step = Duration::from_millis(1100);
    let mut m = Mount::new();
    let f1 = m.corp().join("file1");
    std::fs::write(&f1, b"aaa").unwrap();
    // relatime (the default): the first read after a change moves it,
    // the next does not.
    let t0 = times(&f1);
    std::thread::sleep(step);
    cat(&f1);
    let t1 = times(&f1);
    assert_eq!(moved(t0, t1), "YNN", "first read under relatime");
    std::thread::sleep(step);
    cat(&f1);
    let t2 = times(&f1);
    assert_eq!(moved(t1, t2), "NNN", "second read under relatime");
    // Kept across a remount (it is stored).
    m.remount();
    assert_eq!(times(&f1), t2);

    // noatime: never.
    m.stop();
    m.args = vec!["-o".into(), "noatime".into()];
    m.start(&[]);
    let f3 = m.corp().join("file3");
    std::fs::write(&f3, b"ccc").unwrap();
    let t3 = times(&f3);
    std::thread::sleep(step);
    cat(&f3);
    assert_eq!(moved(t3, times(&f3)), "NNN", "read under noatime");
    // Changes still move mtime and ctime.
    std::thread::sleep(step);
    std::fs::write(&f1, b"xyz").unwrap();
    assert_eq!(moved(t2, times(&f1)), "NYY", "write under noatime");

    // strictatime: every read.
    m.stop();
    m.args = vec!["-o".into(), "strictatime".into()];
    m.start(&[]);
    let t4 = times(&f3);
    cat(&f3);
    let t5 = times(&f3);
    assert_eq!(moved(t4, t5), "YNN", "first read under strictatime");
    std::thread::sleep(step);
    cat(&f3);
    let t6 = times(&f3);
    assert_eq!(moved(t5, t6), "YNN", "second read under strictatime");
    // Opening to write is not a read.
    std::thread::sleep(step);
    drop(std::fs::OpenOptions::new().write(true).open(&f3).unwrap());
    assert_eq!(moved(t6, times(&f3)), "NNN", "open for writing");

    // Read-only: nothing changes, whatever the atime option.
    m.stop();
    m.args = vec!["-o".into(), "ro,strictatime".into()];
    m.start(&[]);
    std::thread::sleep(step);
    cat(&f3);
    assert_eq!(moved(t6, times(&f3)), "NNN", "read on a read-only mount");
    assert!(std::fs::write(m.corp().join("new"), b"x").is_err());
}

/// Turns the fuse module's `enable_uring` on while it lives and puts back
/// what it was; None where the kernel has no FUSE over io_uring. One at a
/// time: the kernel checks the switch at every ring command, so a test
/// putting it back must not do so under another's mount.
struct UringOn {
    was: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

static URING_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl UringOn {
    const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

    fn set() -> Option<UringOn> {
        let one = URING_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let was = std::fs::read_to_string(Self::PARAM).ok()?;
        std::fs::write(Self::PARAM, "Y").ok()?;
        Some(UringOn {
            was: was.trim().to_string(),
            _one: one,
        })
    }
}

impl Drop for UringOn {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PARAM, &self.was);
    }
}

/// Sends statfs requests until one fails (its errno), for at most 60 s;
/// each request reaches the daemon.
fn statfs_until_one_fails(mnt: &Path) -> i32 {
    let mnt = mnt.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..100_000 {
            if let Err(e) = statfs(&mnt) {
                let _ = tx.send(Some((i, e)));
                return;
            }
        }
        let _ = tx.send(None);
    });
    // A request left waiting would wait for good; the test's teardown
    // (the daemon stopped, then killed) ends it.
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some((_, errno))) => errno,
        Ok(None) => panic!("100,000 statfs calls all answered"),
        Err(_) => panic!("a statfs still waits after 60 s"),
    }
}

/// Waits up to 30 s for the daemon to exit by itself.
fn exits_by_itself(m: &mut Mount) -> std::process::ExitStatus {
    let t0 = Instant::now();
    let child = m.child.as_mut().unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon still runs 30 s after its connection ended; log:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    m.child = None;
    status
}

/// Where the kernel shows each FUSE connection; the daemon mounts it to
/// abort one where nothing has, and must unmount it after.
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// A mount over FUSE's rings with `LOCKER_TEST_RING_FAULT` = `fault`, and
/// `enable_uring` on until it is unmounted (fields drop in order).
struct RingMount {
    m: Mount,
    _on: UringOn,
    /// fusectl was mounted before the test.
    fusectl: bool,
}

impl RingMount {
    /// The daemon left fusectl as it found it.
    fn assert_fusectl_as_found(&self) {
        assert_eq!(
            is_mounted(Path::new(FUSECTL)),
            self.fusectl,
            "fusectl (mounted before: {}); log:\n{}",
            self.fusectl,
            self.m.log_text()
        );
    }
}

impl Drop for RingMount {
    /// A failed test leaves no fusectl mount behind either.
    fn drop(&mut self) {
        if !self.fusectl && is_mounted(Path::new(FUSECTL)) {
            let _ = Command::new("umount").arg("-l").arg(FUSECTL).status();
        }
    }
}

fn ring_mount_with(fault: &str) -> Option<RingMount> {
    let Some(on) = UringOn::set() else {
        eprintln!(
            "skipped: this kernel has no FUSE over io_uring ({})",
            UringOn::PARAM
        );
        return None;
    };
    let fusectl = is_mounted(Path::new(FUSECTL));
    let m = Mount::with_args_env(
        &["-o", "io_uring"],
        &[("LOCKER_TEST_RING_FAULT".into(), fault.into())],
    );
    assert!(m.log_text().contains("io_uring=true"), "{}", m.log_text());
    Some(RingMount {
        m,
        _on: on,
        fusectl,
    })
}

#[test]
fn a_ring_thread_that_stops_ends_the_mount_instead_of_leaving_its_requests_waiting() {
    // The ring thread that takes the 201st request stops there, as an
    // io_uring error would stop it; the requests before let the mount come up.
    let Some(mut rm) = ring_mount_with("stop:200") else {
        return;
    };
    let m = &mut rm.m;
    let errno = statfs_until_one_fails(&m.mnt);
    let log = m.log_text();
    assert!(
        [libc::ECONNABORTED, libc::ENOTCONN].contains(&errno),
        "errno {errno}; log:\n{log}"
    );
    assert!(
        log.contains("a FUSE ring stopped while the mount is in use; ending the mount"),
        "{log}"
    );
    // The daemon sees its session end and exits; the mount is gone.
    exits_by_itself(m);
    assert!(!is_mounted(&m.mnt), "{}", m.log_text());
    rm.assert_fusectl_as_found();
}

#[test]
fn a_panic_while_serving_stops_the_daemon_as_kill_9_would_and_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    // The ring thread that takes the 401st request panics before serving
    // it, where a bug in that request's handler would.
    let Some(mut rm) = ring_mount_with("panic:400") else {
        return;
    };
    let m = &mut rm.m;
    let kept = m.corp().join("kept.txt");
    std::fs::write(&kept, b"closed before the panic").unwrap();
    let errno = statfs_until_one_fails(&m.mnt);
    assert!(
        [libc::ECONNABORTED, libc::ENOTCONN].contains(&errno),
        "errno {errno}; log:\n{}",
        m.log_text()
    );
    let status = exits_by_itself(m);
    let log = m.log_text();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{status}; log:\n{log}"
    );
    assert!(log.contains("a thread panicked; stopping at once"), "{log}");
    // Started again on the mount it left, without the fault: what was
    // closed before the panic is there.
    m.env.clear();
    m.start(&[]);
    assert_eq!(std::fs::read(&kept).unwrap(), b"closed before the panic");
}
