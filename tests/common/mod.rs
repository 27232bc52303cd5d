//! Shared helpers of the mount tests: a real LOCKER daemon on a temporary
//! mountpoint, always unmounted when the guard drops (even when a test
//! fails or panics).

#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_locker");

/// A temporary mountpoint and data directory, and the daemon serving them.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub data: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

pub fn is_mounted(p: &Path) -> bool {
    let want = p.as_os_str().as_bytes();
    std::fs::read("/proc/mounts")
        .map(|m| {
            m.split(|&b| b == b'\n')
                .any(|l| l.split(|&b| b == b' ').nth(1) == Some(want))
        })
        .unwrap_or(false)
}

/// statfs of a FUSE mount reaches the daemon; true if it answers and the
/// file system there is FUSE.
pub fn is_fuse_live(p: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x65735546;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == FUSE_SUPER_MAGIC }
}

fn force_unmount(p: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(p)
        .stderr(Stdio::null())
        .status();
    if is_mounted(p) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stderr(Stdio::null())
            .status();
    }
}

impl Mount {
    /// Mounts a fresh store.
    pub fn new() -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        let data = dir.path().join("data");
        std::fs::create_dir(&mnt).unwrap();
        let log = dir.path().join("locker.log");
        let mut m = Mount {
            dir,
            mnt,
            data,
            child: None,
            log,
        };
        m.start(&[]);
        m
    }

    /// The namespace directory `corp` of the mount.
    pub fn corp(&self) -> PathBuf {
        self.mnt.join("corp")
    }

    /// Starts the daemon (again) on the same mountpoint and data dir.
    pub fn start(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("mount")
            .arg(&self.mnt)
            .arg("--data-dir")
            .arg(&self.data)
            .args(extra)
            .env("LOCKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn locker");
        self.child = Some(child);
        let t0 = Instant::now();
        // Ready when the mountpoint is served by a live FUSE daemon: a stale
        // mount left by a kill -9 is listed in /proc/mounts too, but its
        // statfs fails.
        while !is_mounted(&self.mnt) || !is_fuse_live(&self.mnt) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("locker exited early ({st}); log:\n{}", self.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "mount timed out; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Clean stop: SIGTERM, wait for the daemon to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t0 = Instant::now();
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }

    /// Crash: SIGKILL the daemon; the kernel mount is left stale, as after
    /// a real crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn remount(&mut self) {
        self.stop();
        self.start(&[]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        if is_mounted(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
