//! POSIX behaviour on a real FUSE mount.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

mod common;
use common::{Mount, pattern};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    let r = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn setxattr(p: &Path, name: &str, v: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    let r = unsafe { libc::setxattr(c(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) };
    if r < 0 { Err(errno()) } else { Ok(()) }
}

#[test]
fn root_lists_namespaces_and_refuses_files() {
    let m = Mount::new();
    let mut names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["corp", "deck", "emails", "factory", "hst"]);
    let e = File::create(m.mnt.join("file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    assert!(m.log_text().contains("only namespaces"));
    fs::create_dir(m.mnt.join("extra")).unwrap();
    assert!(m.mnt.join("extra").is_dir());
    fs::remove_dir(m.mnt.join("extra")).unwrap();
    assert!(!m.mnt.join("extra").exists());
}

#[test]
fn namespace_created_by_mkdir_survives_remount() {
    let mut m = Mount::new();
    fs::create_dir(m.mnt.join("archive")).unwrap();
    fs::write(m.mnt.join("archive/a"), b"x").unwrap();
    m.remount();
    assert_eq!(fs::read(m.mnt.join("archive/a")).unwrap(), b"x");
}

#[test]
fn open_flags_excl_trunc_append() {
    let m = Mount::new();
    let p = m.corp().join("f");
    fs::write(&p, b"hello world").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world!");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
}

#[test]
fn write_at_offsets_and_holes_read_zeros() {
    let m = Mount::new();
    let p = m.corp().join("sparse");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"tail").unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"head").unwrap();
    drop(f);
    let d = fs::read(&p).unwrap();
    assert_eq!(d.len(), (3 << 20) + 4);
    assert_eq!(&d[10..14], b"head");
    assert!(d[14..3 << 20].iter().all(|&b| b == 0));
    assert_eq!(&d[3 << 20..], b"tail");
}

#[test]
fn truncate_and_ftruncate_grow_and_shrink() {
    let m = Mount::new();
    let p = m.corp().join("t");
    let data = pattern(2_500_000, 1);
    fs::write(&p, &data).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1_000_001).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), &data[..1_000_001]);
    let cp = c(&p);
    assert_eq!(unsafe { libc::truncate(cp.as_ptr(), 3_000_000) }, 0);
    let d = fs::read(&p).unwrap();
    assert_eq!(d.len(), 3_000_000);
    assert_eq!(&d[..1_000_001], &data[..1_000_001]);
    assert!(d[1_000_001..].iter().all(|&b| b == 0));
}

#[test]
fn unlinked_file_stays_usable_while_open() {
    let m = Mount::new();
    let p = m.corp().join("u");
    fs::write(&p, b"abc").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"def").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abcdef");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
}

#[test]
fn directories_rmdir_enotempty_enotdir_eisdir() {
    let m = Mount::new();
    let d = m.corp().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    assert_eq!(
        fs::remove_dir(&d).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        File::open(d.join("f/x")).unwrap_err().raw_os_error(),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        OpenOptions::new()
            .write(true)
            .open(&d)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EISDIR)
    );
    assert_eq!(
        fs::create_dir(&d).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    let long = d.join("a".repeat(256));
    assert_eq!(
        File::create(&long).unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    File::create(d.join("a".repeat(255))).unwrap();
}

#[test]
fn rename_overwrite_noreplace_exchange() {
    let m = Mount::new();
    let a = m.corp().join("a");
    let b = m.corp().join("b");
    fs::write(&a, b"A").unwrap();
    fs::write(&b, b"B").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&a).as_ptr(),
            libc::AT_FDCWD,
            c(&b).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!((r, errno()), (-1, libc::EEXIST));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&a).as_ptr(),
            libc::AT_FDCWD,
            c(&b).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(fs::read(&a).unwrap(), b"B");
    assert_eq!(fs::read(&b).unwrap(), b"A");
    fs::rename(&a, &b).unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"B");
    assert!(!a.exists());
    // A directory across directories.
    fs::create_dir_all(m.corp().join("x/y")).unwrap();
    fs::create_dir(m.corp().join("z")).unwrap();
    fs::rename(m.corp().join("x/y"), m.corp().join("z/y")).unwrap();
    assert!(m.corp().join("z/y").is_dir());
    assert_eq!(fs::metadata(m.corp().join("x")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.corp().join("z")).unwrap().nlink(), 3);
}

#[test]
fn hard_links_symlinks_fifos_and_device_nodes() {
    let m = Mount::new();
    let f = m.corp().join("f");
    fs::write(&f, b"data").unwrap();
    fs::hard_link(&f, m.corp().join("g")).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.corp().join("g")).unwrap(), b"data");
    std::os::unix::fs::symlink("f", m.corp().join("s")).unwrap();
    assert_eq!(fs::read_link(m.corp().join("s")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(m.corp().join("s")).unwrap(), b"data");
    let fifo = m.corp().join("fifo");
    assert_eq!(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o644) }, 0);
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let dev = m.corp().join("null");
    let rdev = libc::makedev(1, 3);
    assert_eq!(
        unsafe { libc::mknod(c(&dev).as_ptr(), libc::S_IFCHR | 0o600, rdev) },
        0
    );
    let md = fs::metadata(&dev).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), rdev);
}

#[test]
fn chmod_chown_utimens_with_now_and_omit() {
    let m = Mount::new();
    let p = m.corp().join("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let before = fs::metadata(&p).unwrap();
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), times.as_ptr(), 0) },
        0
    );
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), times.as_ptr(), 0) },
        0
    );
    let md2 = fs::metadata(&p).unwrap();
    assert_eq!(md2.atime(), 1_000_000_000);
    assert!(md2.mtime() >= before.mtime());
}

#[test]
fn permissions_are_checked_for_other_users() {
    let m = Mount::new();
    let p = m.corp().join("secret");
    fs::write(&p, b"s").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let pub_ = m.corp().join("public");
    fs::write(&pub_, b"p").unwrap();
    fs::set_permissions(&pub_, fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["cat", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(&["cat", pub_.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"p");
    let out = as_nobody(&["touch", m.corp().join("new").to_str().unwrap()]);
    assert!(!out.status.success(), "namespace is 0755 root");
}

/// Set-user-ID and set-group-ID after a write, truncate, fallocate or
/// change of owner, as ext4 leaves them on Linux 6.x (the table was taken
/// from ext4 with the same commands): someone other than root drops
/// set-user-ID, and set-group-ID where the file is group-executable or
/// they are outside its group; root keeps both, except that a change of
/// owner drops set-user-ID and group-executable set-group-ID even for
/// root. LOCKER does this itself (`FUSE_HANDLE_KILLPRIV_V2`), with and
/// without the kernel's writeback cache.
#[test]
fn set_id_bits_drop_as_on_ext4() {
    const MODES: [u32; 10] = [
        0o6777, 0o6766, 0o6676, 0o6666, 0o4777, 0o2777, 0o2767, 0o2676, 0o2666, 0o0777,
    ];
    const KEPT: [u32; 10] = MODES;
    const BY_OTHERS: [u32; 10] = [
        0o777, 0o766, 0o676, 0o666, 0o777, 0o777, 0o767, 0o676, 0o666, 0o777,
    ];
    const BY_CHOWN: [u32; 10] = [
        0o777, 0o2766, 0o676, 0o2666, 0o777, 0o777, 0o2767, 0o676, 0o2666, 0o777,
    ];
    // (what, as nobody?, owner of the file before, script on $1, modes after)
    let cases: &[(&str, bool, u32, &str, [u32; 10])] = &[
        ("append", false, 0, "printf x >> \"$1\"", KEPT),
        ("append", true, 0, "printf x >> \"$1\"", BY_OTHERS),
        (
            "pwrite",
            true,
            0,
            "dd if=/dev/zero of=\"$1\" bs=1 count=1 seek=3 conv=notrunc status=none",
            BY_OTHERS,
        ),
        ("truncate", false, 0, "truncate -s 100 \"$1\"", KEPT),
        ("truncate", true, 0, "truncate -s 100 \"$1\"", BY_OTHERS),
        ("O_TRUNC", true, 0, ": > \"$1\"", BY_OTHERS),
        ("fallocate", false, 0, "fallocate -o 0 -l 8192 \"$1\"", KEPT),
        (
            "fallocate",
            true,
            0,
            "fallocate -o 0 -l 8192 \"$1\"",
            BY_OTHERS,
        ),
        (
            "fallocate -n",
            true,
            0,
            "fallocate -n -o 0 -l 65536 \"$1\"",
            BY_OTHERS,
        ),
        ("chown", false, 0, "chown 65534 \"$1\"", BY_CHOWN),
        ("chgrp", false, 0, "chgrp 65534 \"$1\"", BY_CHOWN),
        ("chown to itself", false, 0, "chown 0:0 \"$1\"", BY_CHOWN),
        (
            "chgrp by the owner",
            true,
            65534,
            "chgrp 65534 \"$1\"",
            BY_OTHERS,
        ),
    ];
    for extra in [&[][..], &["-o", "writeback_cache"][..]] {
        let m = Mount::with_args(extra);
        let dir = m.corp().join("k");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let p = dir.join("f");
        for (what, nobody, owner, script, after) in cases {
            for (before, want) in MODES.iter().zip(after) {
                let _ = fs::remove_file(&p);
                fs::write(&p, b"abcdef").unwrap();
                std::os::unix::fs::chown(&p, Some(*owner), Some(0)).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*before)).unwrap();
                let mut cmd = Command::new("setpriv");
                if *nobody {
                    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
                }
                let out = cmd
                    .args(["sh", "-c", script, "sh"])
                    .arg(&p)
                    .output()
                    .unwrap();
                let who = if *nobody { "nobody" } else { "root" };
                assert!(
                    out.status.success(),
                    "{extra:?} {what} by {who} on {before:o}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(
                    mode_of(&p),
                    *want,
                    "{extra:?} {what} by {who} on {before:o}: {:o}",
                    mode_of(&p)
                );
            }
        }
    }
}

/// A write by someone else drops set-user-ID in LOCKER, and the kernel
/// must not go on running the file with the mode it held before: the
/// answer to a write carries no attributes, so LOCKER tells the kernel the
/// mode is stale. Checked with an exec (which reads the kernel's mode
/// once its permission check has found it fresh), not with `stat`, which
/// asks LOCKER anyway.
#[test]
fn a_program_written_by_someone_else_no_longer_runs_set_user_id() {
    for extra in [&["-o", "suid"][..], &["-o", "suid,writeback_cache"][..]] {
        let m = Mount::with_args(extra);
        let dir = m.corp().join("x");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let prog = dir.join("id");
        fs::copy("/usr/bin/id", &prog).unwrap();
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o4777)).unwrap();
        let p = prog.to_str().unwrap();
        let euid = || {
            run(
                "setpriv",
                &["--reuid=65534", "--regid=65534", "--clear-groups", p, "-u"],
            )
            .trim()
            .to_string()
        };
        // The premise: the mount honours set-user-ID.
        assert_eq!(
            euid(),
            "0",
            "{extra:?}: the mount does not honour set-user-ID"
        );
        // The same first byte written again, without truncating.
        assert!(as_nobody(&format!(
            "head -c 1 {p} | dd of={p} bs=1 count=1 conv=notrunc status=none"
        )));
        assert_eq!(
            euid(),
            "65534",
            "{extra:?}: still run set-user-ID after the write"
        );
        assert_eq!(mode_of(&prog), 0o777);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sh -c SCRIPT` as uid/gid 65534 with no other group; its success.
fn as_nobody(script: &str) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["sh", "-c", script])
        .output()
        .unwrap()
        .status
        .success()
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// POSIX ACLs on a real mount, as setfacl/getfacl use them: the kernel
/// enforces them (including after a chmod narrowed the mask), the mode
/// follows the ACL, a directory's default ACL replaces the umask for what
/// is created in it and is inherited by subdirectories, and all of it
/// survives a remount.
#[test]
fn posix_acls_are_enforced_inherited_and_kept() {
    let mut m = Mount::new();
    let d = m.corp().join("shared");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    let f = d.join("f");
    fs::write(&f, b"secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let (fs_, ds) = (f.to_str().unwrap(), d.to_str().unwrap());
    let cat = format!("cat {fs_}");
    assert!(!as_nobody(&cat));

    run("setfacl", &["-m", "u:65534:r", fs_]);
    assert!(as_nobody(&cat), "a named-user entry grants read");
    assert!(!as_nobody(&format!("echo x >> {fs_}")));
    assert_eq!(mode_of(&f), 0o640, "the mask shows as the group bits");
    let acl = run("getfacl", &["-n", "--omit-header", fs_]);
    assert!(
        acl.contains("user:65534:r--") && acl.contains("mask::r--"),
        "{acl}"
    );

    // chmod narrows the mask; the kernel's cached ACL must not outlive it.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!as_nobody(&cat), "chmod 600 leaves the named user nothing");
    let acl = run("getfacl", &["-n", "--omit-header", fs_]);
    assert!(
        acl.contains("user:65534:r--") && acl.contains("mask::---"),
        "{acl}"
    );
    run("setfacl", &["-m", "m::r", fs_]);
    assert!(as_nobody(&cat));

    // The mode alone is no ACL: nothing stored once the extras go.
    let g = d.join("g");
    fs::write(&g, b"").unwrap();
    run("setfacl", &["-m", "u::rwx,g::r,o::-", g.to_str().unwrap()]);
    assert_eq!(mode_of(&g), 0o740);
    assert_eq!(getxattr(&g, "system.posix_acl_access"), Err(libc::ENODATA));

    // A default ACL: new files and directories take it, not the umask.
    run(
        "setfacl",
        &["-d", "-m", "u::rwx,u:65534:rwx,g::rx,o::-", ds],
    );
    run(
        "sh",
        &[
            "-c",
            &format!("umask 077 && echo new > {ds}/n && mkdir {ds}/sub"),
        ],
    );
    assert_eq!(
        mode_of(&d.join("n")),
        0o660,
        "0666 masked by the default ACL"
    );
    assert_eq!(mode_of(&d.join("sub")), 0o770);
    assert!(as_nobody(&format!("echo more >> {ds}/n")));
    let sub_default = run(
        "getfacl",
        &["-n", "-d", "--omit-header", &format!("{ds}/sub")],
    );
    assert!(sub_default.contains("user:65534:rwx"), "{sub_default}");
    // Without one, the umask applies as before.
    let plain = m.corp().join("plain");
    let ps = plain.to_str().unwrap();
    run(
        "sh",
        &["-c", &format!("umask 027 && mkdir {ps} && touch {ps}/x")],
    );
    assert_eq!(mode_of(&plain), 0o750);
    assert_eq!(mode_of(&plain.join("x")), 0o640);

    m.remount();
    let acl = run("getfacl", &["-n", "--omit-header", fs_]);
    assert!(
        acl.contains("user:65534:r--") && acl.contains("mask::r--"),
        "{acl}"
    );
    assert!(as_nobody(&cat));
    assert_eq!(fs::read(d.join("n")).unwrap(), b"new\nmore\n");
    let sub_default = run(
        "getfacl",
        &["-n", "-d", "--omit-header", &format!("{ds}/sub")],
    );
    assert!(sub_default.contains("user:65534:rwx"), "{sub_default}");
}

/// As xfstests' generic/035 checks it: a directory removed (by rmdir, or
/// replaced by a rename) while a process has it open still answers fstat
/// on that descriptor, with no link, and takes no new entries; it is gone
/// once closed.
#[test]
fn a_directory_removed_while_open_still_answers_fstat() {
    let mut m = Mount::new();
    let (a, b) = (m.corp().join("a"), m.corp().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let open_b = File::open(&b).unwrap();
    fs::rename(&a, &b).unwrap();
    let md = open_b.metadata().expect("fstat of the replaced directory");
    assert_eq!(md.nlink(), 0);
    assert!(md.is_dir());
    drop(open_b);
    let c = m.corp().join("c");
    fs::create_dir(&c).unwrap();
    let open_c = File::open(&c).unwrap();
    fs::remove_dir(&c).unwrap();
    assert_eq!(open_c.metadata().expect("fstat after rmdir").nlink(), 0);
    let r = unsafe {
        libc::openat(
            open_c.as_raw_fd(),
            c"x".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(errno(), libc::ENOENT, "no entries in a removed directory");
    drop(open_c);
    assert!(!c.exists());
    m.remount();
    let mut names: Vec<_> = fs::read_dir(m.corp())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["b"]);
}

#[test]
fn statfs_reports_the_data_disk() {
    let m = Mount::new();
    let mut a: libc::statvfs = unsafe { std::mem::zeroed() };
    let mut b: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(&m.mnt).as_ptr(), &mut a) }, 0);
    assert_eq!(unsafe { libc::statvfs(c(&m.data).as_ptr(), &mut b) }, 0);
    let total_a = a.f_blocks * a.f_frsize;
    let total_b = b.f_blocks * b.f_frsize;
    assert_eq!(total_a, total_b);
    assert!(a.f_bavail > 0);
    assert_eq!(a.f_namemax, 255);
}

#[test]
fn xattrs_user_namespace_and_virtual_ones() {
    let m = Mount::new();
    let p = m.corp().join("doc.txt");
    fs::write(&p, b"abc").unwrap();
    setxattr(&p, "user.k", b"v", libc::XATTR_CREATE).unwrap();
    assert_eq!(
        setxattr(&p, "user.k", b"v", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&p, "user.n", b"v", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(getxattr(&p, "user.k").unwrap(), b"v");
    let mut buf = vec![0u8; 1024];
    let n = unsafe { libc::listxattr(c(&p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.k\0");
    assert_eq!(
        unsafe { libc::removexattr(c(&p).as_ptr(), c(Path::new("user.k")).as_ptr()) },
        0
    );
    assert_eq!(getxattr(&p, "user.k"), Err(libc::ENODATA));
    assert_eq!(
        getxattr(&p, "user.locker.ref").unwrap(),
        b"locker://corp/doc.txt"
    );
    assert_eq!(
        getxattr(&p, "user.locker.sha256").unwrap(),
        b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    fs::write(&p, b"abcd").unwrap();
    assert_eq!(
        getxattr(&p, "user.locker.sha256").unwrap(),
        b"88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
    );
}

#[test]
fn fsync_fdatasync_and_fallocate() {
    let m = Mount::new();
    let p = m.corp().join("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    (&f).write_all(b"x").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 5 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 5 << 20);
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 9 << 20) },
        0
    );
    assert_eq!(f.metadata().unwrap().len(), 5 << 20);
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    assert_eq!((r, errno()), (-1, libc::EOPNOTSUPP));
}

#[test]
fn sparse_files_and_zeros_take_no_space() {
    use std::os::unix::fs::FileExt;
    let m = Mount::new();
    // As xfstests' _require_sparse_files checks: 4 KiB at 0 and at 16 MiB.
    let p = m.corp().join("sparse");
    let f = File::create(&p).unwrap();
    f.write_all_at(&[1u8; 4096], 0).unwrap();
    f.write_all_at(&[2u8; 4096], 16 << 20).unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), (16 << 20) + 4096);
    assert!(
        md.blocks() * 512 <= (1 << 20) + 4096,
        "st_blocks {} for two 4 KiB writes",
        md.blocks()
    );
    assert!(md.blocks() >= 16, "st_blocks {}", md.blocks());
    let mut mid = vec![9u8; 4096];
    File::open(&p)
        .unwrap()
        .read_exact_at(&mut mid, 8 << 20)
        .unwrap();
    assert!(mid.iter().all(|&b| b == 0));
    // Grown by truncate: all hole. Written as zeros: holes too.
    let g = m.corp().join("grown");
    File::create(&g).unwrap().set_len(1 << 30).unwrap();
    assert_eq!(fs::metadata(&g).unwrap().blocks(), 0);
    let z = m.corp().join("zeros");
    fs::write(&z, vec![0u8; 4 << 20]).unwrap();
    assert_eq!(fs::metadata(&z).unwrap().blocks(), 0);
    // Data takes its size, also after a remount; du agrees.
    let d = m.corp().join("data");
    fs::write(&d, pattern(3 << 20, 5)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().blocks() * 512, 3 << 20);
    let out = Command::new("du")
        .args(["-k", "--apparent-size"])
        .arg(&g)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1048576"));
    let out = Command::new("du").arg("-k").arg(&g).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("0\t"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn mmap_reads_and_writes() {
    let m = Mount::new();
    let p = m.corp().join("m");
    let data = pattern(3 << 20, 9);
    fs::write(&p, &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let len = data.len();
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(ptr as *mut u8, len);
        assert_eq!(&s[..], &data[..]);
        s[(2 << 20) + 7] = 0xAB;
        s[5] = 0xCD;
        assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(ptr, len), 0);
    }
    drop(f);
    let mut want = data.clone();
    want[(2 << 20) + 7] = 0xAB;
    want[5] = 0xCD;
    // Read back through a fresh mount: the bytes reached the store.
    let mut m = m;
    m.remount();
    assert_eq!(fs::read(&p).unwrap(), want);
}

#[test]
fn cp_tar_and_rsync_trees_round_trip() {
    let m = Mount::new();
    let src = Path::new("/usr/share/doc");
    let dst = m.corp().join("doc");
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // tar out of the mount and back in.
    let tarball = m.dir.path().join("doc.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(m.corp())
            .arg("doc")
            .status()
            .unwrap()
            .success()
    );
    fs::create_dir(m.mnt.join("factory/x")).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(m.mnt.join("factory/x"))
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(src)
        .arg(m.mnt.join("factory/x/doc"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    {
        let st = Command::new("rsync")
            .arg("-a")
            .arg("/etc/")
            .arg(m.mnt.join("deck/etc/"))
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("rsync")
            .arg("-anc")
            .arg("--itemize-changes")
            .arg("/etc/")
            .arg(m.mnt.join("deck/etc/"))
            .output()
            .unwrap();
        assert!(
            st.stdout.is_empty(),
            "rsync sees differences: {}",
            String::from_utf8_lossy(&st.stdout)
        );
    }
}

#[test]
fn copies_of_one_file_share_blocks_on_the_mount() {
    let m = Mount::new();
    let data = pattern(20 << 20, 11);
    fs::write(m.corp().join("orig"), &data).unwrap();
    for i in 0..5 {
        fs::copy(m.corp().join("orig"), m.corp().join(format!("copy{i}"))).unwrap();
    }
    let out = Command::new("du")
        .arg("-sb")
        .arg(m.data.join("blocks"))
        .output()
        .unwrap();
    let used: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        used < 22 << 20,
        "block store holds {used} bytes for 6 copies of 20 MiB"
    );
}

#[test]
fn sigterm_commits_unmounts_and_exits_cleanly() {
    let mut m = Mount::new();
    let p = m.corp().join("kept");
    fs::write(&p, b"before the stop").unwrap();
    let mut child = m.child.take().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!common::is_mounted(&m.mnt), "still mounted after SIGTERM");
    assert!(m.log_text().contains("unmounted cleanly"));
    m.start(&[]);
    assert_eq!(fs::read(&p).unwrap(), b"before the stop");
}

/// The kernel reads ahead one whole block (1 MiB) for a sequential reader,
/// not its 128 KiB default: set through the mount's device in sysfs.
#[test]
fn readahead_is_one_block() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to set the readahead");
        return;
    }
    let m = Mount::new();
    let dev = fs::metadata(&m.mnt).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    // Set by the daemon once the kernel's handshake is done: soon after
    // the mount appears.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kb = fs::read_to_string(&knob).unwrap();
        if kb.trim() == "1024" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{knob} is {}",
            kb.trim()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Once the metadata has been left alone for a moment, its write-ahead log
/// is moved into the database file (not at the log's size cap, inside a
/// commit that holds every request), and changes go on working after.
#[test]
fn an_idle_mount_checkpoints_its_metadata_log() {
    let mut m = Mount::new();
    let wal = m.data.join("meta.db-wal");
    let wal_len = || fs::metadata(&wal).map(|md| md.len()).unwrap_or(0);
    for round in 0..2 {
        for i in 0..200 {
            fs::write(m.mnt.join(format!("corp/r{round}-{i}")), b"small").unwrap();
        }
        fs::rename(
            m.mnt.join(format!("corp/r{round}-0")),
            m.mnt.join(format!("corp/moved{round}")),
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        while wal_len() > 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "round {round}: the WAL still holds {} bytes",
                wal_len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    m.remount();
    for round in 0..2 {
        assert!(m.mnt.join(format!("corp/moved{round}")).exists());
        assert_eq!(
            fs::read(m.mnt.join(format!("corp/r{round}-199"))).unwrap(),
            b"small"
        );
    }
}
