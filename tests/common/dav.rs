//! WebDAV servers for the tests, on loopback, with generated credentials,
//! stopped when dropped (even when a test fails): Apache httpd with
//! mod_dav (the plain flavor, `tests/webdav/apache.sh`) and the
//! Nextcloud-compatible test server (`tests/webdav/ncserver.py`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http, token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DavKind {
    Apache,
    Nextcloud,
}

pub struct DavServer {
    pub kind: DavKind,
    /// The user's files root, with a trailing '/'.
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub user: String,
    pub password: String,
    /// The password for LOCKER: mode 0600, owned by this user.
    pub password_file: PathBuf,
    /// Where the server keeps the user's files on disk.
    pub files: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
}

const APACHE_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webdav/apache.sh");

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The Python that runs the test server: the test venv's, else python3.
fn python() -> PathBuf {
    let venv = std::env::var("LOCKER_TEST_VENV").unwrap_or_else(|_| "/opt/locker-test/venv".into());
    let p = PathBuf::from(venv).join("bin/python3");
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}

impl DavServer {
    fn blank(kind: DavKind) -> DavServer {
        let dir = tempfile::tempdir().unwrap();
        let user = format!("u{}", token(8));
        let password = token(24);
        let password_file = dir.path().join("password");
        write_private(&password_file, &format!("{password}\n"));
        DavServer {
            kind,
            url: String::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            user,
            password,
            password_file,
            files: PathBuf::new(),
            log: dir.path().join("server.log"),
            child: None,
            args: Vec::new(),
            dir,
        }
    }

    /// Apache httpd with mod_dav_fs (`tests/webdav/apache.sh`), serving
    /// `/dav/` with basic auth.
    pub fn apache() -> DavServer {
        let mut s = DavServer::blank(DavKind::Apache);
        let port = free_port();
        s.args = vec![port.to_string()];
        s.addr = format!("127.0.0.1:{port}").parse().unwrap();
        s.url = format!("http://127.0.0.1:{port}/dav/");
        s.files = s.dir.path().join("apache/dav");
        s.log = s.dir.path().join("apache/error.log");
        s.spawn();
        s
    }

    /// The Nextcloud-compatible test server; `extra` are more arguments
    /// (`--quota N`, `--min-chunk BYTES`).
    pub fn nextcloud(extra: &[&str]) -> DavServer {
        let mut s = DavServer::blank(DavKind::Nextcloud);
        let d = s.dir.path().to_path_buf();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webdav/ncserver.py");
        assert!(
            Path::new(script).exists(),
            "{script} is missing (the Nextcloud test server)"
        );
        s.args = vec![
            script.into(),
            "--root".into(),
            d.join("nc").display().to_string(),
            "--port".into(),
            "0".into(),
            "--user".into(),
            s.user.clone(),
            "--password-file".into(),
            s.password_file.display().to_string(),
        ];
        s.args.extend(extra.iter().map(|a| a.to_string()));
        s.files = d.join("nc/files").join(&s.user);
        s.spawn();
        s
    }

    /// Starts the server (again).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        match self.kind {
            DavKind::Apache => {
                let out = Command::new(APACHE_SH)
                    .arg("start")
                    .arg(self.dir.path().join("apache"))
                    .arg(&self.args[0])
                    .arg(&self.user)
                    .arg(&self.password_file)
                    .stdin(Stdio::null())
                    .stderr(log)
                    .output()
                    .expect("run tests/webdav/apache.sh");
                let said = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && said.starts_with("ready "),
                    "apache.sh start failed ({}): {said}{}",
                    out.status,
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                );
            }
            DavKind::Nextcloud => {
                // Once started on a port, again on the same one.
                let mut args = self.args.clone();
                if self.addr.port() != 1 {
                    let i = args.iter().position(|a| a == "--port").unwrap();
                    args[i + 1] = self.addr.port().to_string();
                }
                let mut child = Command::new(python())
                    .args(&args)
                    .stdout(Stdio::piped())
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .expect("start ncserver.py");
                let out = child.stdout.take().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(out).lines();
                    if let Some(Ok(l)) = lines.next() {
                        let _ = tx.send(l);
                    }
                    // Keep reading so the server never blocks on stdout.
                    for _ in lines {}
                });
                self.child = Some(child);
                let line = rx
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| {
                        panic!("ncserver.py did not say ready: {}", self.log_text())
                    });
                let base = line
                    .strip_prefix("ready ")
                    .unwrap_or_else(|| panic!("ncserver.py said {line:?}"))
                    .trim_end_matches('/')
                    .to_string();
                let hostport = base.trim_start_matches("http://");
                self.addr = hostport.parse().unwrap();
                self.url = format!("{base}/remote.php/dav/files/{}/", self.user);
            }
        }
    }

    /// What the server logged (Apache's error log; the test server's
    /// stderr).
    pub fn log_text(&self) -> String {
        let mut t = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        if self.kind == DavKind::Apache {
            t += &std::fs::read_to_string(&self.log).unwrap_or_default();
        }
        t
    }

    /// The pid of Apache's main process.
    fn apache_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("apache/httpd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server at once (its files stay).
    pub fn kill(&mut self) {
        if self.kind == DavKind::Apache {
            if let Some(pid) = self.apache_pid() {
                unsafe {
                    libc::kill(-pid, libc::SIGCONT);
                }
            }
            let _ = Command::new(APACHE_SH)
                .arg("stop")
                .arg(self.dir.path().join("apache"))
                .status();
            return;
        }
        if let Some(mut c) = self.child.take() {
            // The whole group: Apache's workers too.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGCONT);
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// A call to the test server's control endpoints (`/__test/...`).
    pub fn control(&self, method: &str, target: &str) -> http::Resp {
        assert_eq!(self.kind, DavKind::Nextcloud, "control endpoints");
        let r = http::request(self.addr, method, target.as_bytes(), &[], b"");
        assert!(
            (200..300).contains(&r.status),
            "{method} {target}: {}",
            r.status
        );
        r
    }

    /// DAV requests served since the last reset.
    pub fn requests(&self) -> u64 {
        self.control("GET", "/__test/stats").json()["requests"]
            .as_u64()
            .unwrap()
    }

    pub fn reset(&self) {
        self.control("POST", "/__test/reset");
    }

    /// Requests hang (as a server that stopped answering) until `thaw`.
    pub fn freeze(&self, on: bool) {
        match self.kind {
            DavKind::Nextcloud => {
                self.control("POST", if on { "/__test/freeze" } else { "/__test/thaw" });
            }
            DavKind::Apache => {
                // The main process and its workers (its own process group).
                let pid = self.apache_pid().expect("apache is running");
                unsafe {
                    libc::kill(-pid, if on { libc::SIGSTOP } else { libc::SIGCONT });
                }
                if on {
                    // kill(2) returns before every thread has stopped: one
                    // already woken for a request could still answer it.
                    // Wait until each thread of the group shows state T.
                    let t0 = std::time::Instant::now();
                    while !group_stopped(pid) {
                        assert!(
                            t0.elapsed() < std::time::Duration::from_secs(5),
                            "apache did not stop"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            }
        }
    }

    /// An authenticated request to the server (path from its root).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> http::Resp {
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password))
        );
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(headers);
        // `http::request` sends Content-Length itself when there is a body
        // (and on every PUT and POST); a second one makes Apache answer
        // 400 (it joins them into "N, N").
        if body.is_empty() && method != "PUT" && method != "POST" {
            h.push(("Content-Length", "0"));
        }
        http::request(self.addr, method, path.as_bytes(), &h, body)
    }

    /// The path of `rel` (a path under the files root) on the server.
    pub fn path_of(&self, rel: &str) -> String {
        let base = self.url.split_once("//").unwrap().1;
        let base = &base[base.find('/').unwrap()..];
        format!("{base}{rel}")
    }

    /// Makes the folder `rel` and those above it.
    pub fn mkdirs(&self, rel: &str) {
        let mut at = String::new();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            at.push_str(seg);
            at.push('/');
            let r = self.call("MKCOL", &self.path_of(&at), &[], b"");
            assert!(
                r.status == 201 || r.status == 405,
                "MKCOL {at}: {}",
                r.status
            );
        }
    }

    /// A LOCKER config of namespace `corp` on this server, under `prefix`.
    pub fn config(&self, prefix: &str, extra: &str) -> String {
        format!(
            "{extra}\n[namespaces.corp]\nbackend = \"webdav\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nuser = \"{}\"\npassword_file = \"{}\"\n",
            self.url,
            self.user,
            self.password_file.display()
        )
    }
}

impl Drop for DavServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether every thread of every process in process group `pgid` is
/// stopped (state `T` in /proc).
fn group_stopped(pgid: i32) -> bool {
    // The fields after the command name, which is in parentheses.
    fn fields(stat: &str) -> Vec<&str> {
        stat.rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect())
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // fields: state, ppid, pgrp, ...
        if fields(&stat).get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("stat");
            if let Ok(ts) = std::fs::read_to_string(&path)
                && fields(&ts).first().is_some_and(|s| *s != "T")
            {
                return false;
            }
        }
    }
    true
}
