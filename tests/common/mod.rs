//! Shared helpers of the mount tests: a real LOCKER daemon on a temporary
//! mountpoint, always unmounted when the guard drops (even when a test
//! fails or panics).

#![allow(dead_code)]

pub mod dav;
pub mod http;

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
    /// Extra arguments of every start (e.g. `--config FILE`).
    pub args: Vec<String>,
    /// Environment of the daemon (e.g. backend credentials).
    pub env: Vec<(String, String)>,
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

/// The type and source /proc/self/mountinfo gives the mount at `p`.
pub fn mount_source(p: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = p.to_str()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4)? != want {
            return None;
        }
        let mut r = right.split(' ');
        Some((r.next()?.to_string(), r.next()?.to_string()))
    })
}

/// statfs of `p` (on a FUSE mount it always reaches the daemon), or its
/// errno.
pub fn statfs(p: &Path) -> Result<libc::statfs, i32> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0 {
        Ok(s)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// True if the daemon answers a statfs and the file system there is FUSE.
pub fn is_fuse_live(p: &Path) -> bool {
    const FUSE_SUPER_MAGIC: libc::__fsword_t = 0x65735546;
    statfs(p).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC)
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
        Mount::fresh(None, &[])
    }

    /// Mounts a fresh store with this configuration and environment.
    pub fn with_config(config: &str, env: &[(String, String)]) -> Mount {
        Mount::fresh(Some(config), env)
    }

    /// Mounts a fresh store with these arguments on every start.
    pub fn with_args(args: &[&str]) -> Mount {
        Mount::fresh_with(None, &[], args)
    }

    /// Mounts a fresh store with these arguments and this environment.
    pub fn with_args_env(args: &[&str], env: &[(String, String)]) -> Mount {
        Mount::fresh_with(None, env, args)
    }

    fn fresh(config: Option<&str>, env: &[(String, String)]) -> Mount {
        Mount::fresh_with(config, env, &[])
    }

    fn fresh_with(config: Option<&str>, env: &[(String, String)], extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        let data = dir.path().join("data");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = Vec::new();
        if let Some(config) = config {
            let cfg = dir.path().join("locker.toml");
            std::fs::write(&cfg, config).unwrap();
            args = vec!["--config".into(), cfg.display().to_string()];
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = dir.path().join("locker.log");
        let mut m = Mount {
            dir,
            mnt,
            data,
            child: None,
            log,
            args,
            env: env.to_vec(),
        };
        m.start(&[]);
        m
    }

    /// `locker status --json` of this daemon (with `refresh`, after listing
    /// every backend).
    pub fn status(&self, refresh: bool) -> serde_json::Value {
        let mut c = Command::new(BIN);
        c.arg("status")
            .arg("--json")
            .arg("--data-dir")
            .arg(&self.data);
        if refresh {
            c.arg("--refresh");
        }
        let out = c.output().expect("run locker status");
        assert!(
            out.status.success(),
            "locker status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// Total queue entries across namespaces.
    pub fn queue_len(&self) -> u64 {
        let st = self.status(false);
        st["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["queue"].as_u64().unwrap())
            .sum()
    }

    /// Waits until every queued change is in its backend.
    pub fn wait_drained(&self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let n = self.queue_len();
            if n == 0 {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "queue still holds {n} entries after {timeout:?}; status: {}\nlog:\n{}",
                self.status(false),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
            .args(&self.args)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "LOCKER_LOG",
                std::env::var("TEST_LOCKER_LOG").unwrap_or_else(|_| "info".into()),
            )
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
        // A failed test leaves the daemon's log where it was asked to.
        if std::thread::panicking()
            && let Ok(dir) = std::env::var("TEST_KEEP_LOGS")
        {
            // (One file per mount: a test may run several.)
            let mount = self.mnt.parent().and_then(|p| p.file_name());
            let name = format!(
                "{}-{}.log",
                std::process::id(),
                mount.map_or("mount".into(), |m| m.to_string_lossy())
            );
            let _ = std::fs::copy(&self.log, std::path::Path::new(&dir).join(name));
        }
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

/// SHA-256 hex of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A random token for generated credentials (never a real one).
pub fn token(n: usize) -> String {
    let mut b = [0u8; 32];
    let f = std::fs::File::open("/dev/urandom").unwrap();
    use std::io::Read;
    (&f).read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect::<String>()[..n].to_string()
}

/// A real S3 server (moto's, installed by scripts/deps.sh) on a free
/// loopback port, with generated credentials; killed when dropped.
pub struct S3Server {
    pub port: u16,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Check signatures against moto's IAM after this many requests
    /// (`None`: no checks).
    pub auth_after: Option<u32>,
    _dir: tempfile::TempDir,
}

pub fn moto_bin() -> PathBuf {
    let venv = std::env::var("LOCKER_TEST_VENV").unwrap_or_else(|_| "/opt/locker-test/venv".into());
    let p = PathBuf::from(venv).join("bin/moto_server");
    assert!(
        p.exists(),
        "{} is missing: run scripts/deps.sh (it installs moto[server])",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_with(None)
    }

    /// A server that refuses credentials it does not know (moto's IAM
    /// checks), after `free` unchecked requests.
    pub fn start_with_auth(free: u32) -> S3Server {
        S3Server::start_with(Some(free))
    }

    fn start_with(auth_after: Option<u32>) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = S3Server {
            port: free_port(),
            endpoint: String::new(),
            key_id: format!("test{}", token(12)),
            secret: token(32),
            child: None,
            log: dir.path().join("moto.log"),
            auth_after,
            _dir: dir,
        };
        s.endpoint = format!("http://127.0.0.1:{}", s.port);
        s.spawn();
        s
    }

    /// Starts the server process (again, on the same port: a restarted
    /// moto holds no buckets).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(moto_bin());
        if let Some(n) = self.auth_after {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or resumes (SIGCONT) the server: requests hang
    /// meanwhile, as with a store that stopped answering.
    pub fn freeze(&self, on: bool) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        unsafe {
            libc::kill(pid, if on { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    /// Runs scripts/lib/s3tool.py (an independent client, boto3).
    pub fn tool(&self, args: &[&str]) -> String {
        let venv =
            std::env::var("LOCKER_TEST_VENV").unwrap_or_else(|_| "/opt/locker-test/venv".into());
        let out = Command::new(format!("{venv}/bin/python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/lib/s3tool.py"
            ))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .envs(self.env())
            .output()
            .expect("run s3tool.py");
        assert!(
            out.status.success(),
            "s3tool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn mb(&self, bucket: &str) {
        self.tool(&["mb", bucket]);
    }

    /// Keys under the bucket (all of them).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.tool(&["ls", bucket])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["key"].as_str().unwrap().to_string()
            })
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("obj");
        self.tool(&["get", bucket, key, out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    }

    pub fn head(&self, bucket: &str, key: &str) -> serde_json::Value {
        serde_json::from_str(&self.tool(&["head", bucket, key])).unwrap()
    }

    pub fn put(&self, bucket: &str, key: &str, data: &[u8], meta: &[(&str, &str)]) {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("obj");
        std::fs::write(&f, data).unwrap();
        let mut args = vec!["put", bucket, key, f.to_str().unwrap()];
        let kv: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for m in &kv {
            args.push("--meta");
            args.push(m);
        }
        self.tool(&args);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A LOCKER config with namespace `corp` on `bucket` of this server.
    pub fn config(&self, bucket: &str, extra: &str) -> String {
        format!(
            "{extra}\n[namespaces.corp]\nbackend = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"{bucket}\"\npath_style = true\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

/// Keys of an API test daemon: generated per test, given through the
/// environment.
#[derive(Clone)]
pub struct ApiKeys {
    /// Every namespace, read and write.
    pub admin: String,
    /// `corp`, read only.
    pub reader: String,
    /// `deck`, read and write.
    pub deck: String,
}

impl ApiKeys {
    pub fn new() -> ApiKeys {
        ApiKeys {
            admin: token(32),
            reader: token(32),
            deck: token(32),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LOCKER_API_KEY_ADMIN".into(), self.admin.clone()),
            ("LOCKER_API_KEY_READER".into(), self.reader.clone()),
            ("LOCKER_API_KEY_DECKW".into(), self.deck.clone()),
        ]
    }
}

/// A config serving the API on `port` (body limit 64 MiB), with the
/// namespaces corp and deck and the keys of `ApiKeys`, plus `extra` TOML.
pub fn api_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[sync]
upload_delay_ms = 200
[api]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
max_body_mb = 64
max_expires_in_s = 86400
shutdown_grace_s = 20
{extra}
[api.keys.admin]
namespaces = ["*"]
write = true
[api.keys.reader]
namespaces = ["corp"]
[api.keys.deckw]
namespaces = ["deck"]
write = true
[namespaces.corp]
[namespaces.deck]
"#
    )
}

/// Waits until `addr` accepts connections, or panics with the log.
pub fn wait_port(addr: std::net::SocketAddr, child: &mut Child, log: &Path) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "locker exited early ({st}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the API did not start listening; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mounted store that also serves the API.
pub struct ApiMount {
    pub m: Mount,
    pub addr: std::net::SocketAddr,
    pub keys: ApiKeys,
    pub base: String,
}

impl ApiMount {
    pub fn start(extra: &str) -> ApiMount {
        let port = free_port();
        let keys = ApiKeys::new();
        let mut m = Mount::with_config(&api_config(port, extra), &keys.env());
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = m.log.clone();
        wait_port(addr, m.child.as_mut().unwrap(), &log);
        ApiMount {
            m,
            addr,
            keys,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A request with the admin key.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Resp {
        let auth = format!("Bearer {}", self.keys.admin);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(headers);
        http::request(self.addr, method, path.as_bytes(), &h, body)
    }

    pub fn put(&self, path: &str, body: &[u8]) -> http::Resp {
        self.call("PUT", &format!("/api/files/{path}"), &[], body)
    }

    pub fn get(&self, path: &str) -> http::Resp {
        self.call("GET", &format!("/api/files/{path}"), &[], b"")
    }

    pub fn delete(&self, path: &str) -> http::Resp {
        self.call("DELETE", &format!("/api/files/{path}"), &[], b"")
    }

    /// Restarts the daemon (same mountpoint, data and port).
    pub fn restart(&mut self) {
        self.m.stop();
        self.m.start(&[]);
        let log = self.m.log.clone();
        wait_port(self.addr, self.m.child.as_mut().unwrap(), &log);
    }
}

/// `locker serve` (the API without a mount) on a temporary data dir.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub cfg: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub addr: std::net::SocketAddr,
    pub keys: ApiKeys,
}

impl Served {
    pub fn start(extra: &str) -> Served {
        Served::start_with(|port| api_config(port, extra))
    }

    /// With the config `make` writes for the port.
    pub fn start_with(make: impl Fn(u16) -> String) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("locker.toml");
        std::fs::write(&cfg, make(port)).unwrap();
        let mut s = Served {
            data: dir.path().join("data"),
            log: dir.path().join("locker.log"),
            cfg,
            dir,
            child: None,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            keys: ApiKeys::new(),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.cfg)
            .arg("--data-dir")
            .arg(&self.data)
            .envs(self.keys.env())
            .env("LOCKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn locker serve");
        wait_port(self.addr, &mut child, &self.log);
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (at most `timeout`) for the exit status.
    pub fn stop_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            if t0.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(30));
    }
}

/// Every file under `dir`, as paths relative to it; mod_dav_fs's property
/// databases (`.DAV/` folders) left out.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".DAV" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}
