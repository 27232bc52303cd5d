//! `mount.fuse.locker`: the helper mount(8) runs for file systems of type
//! `fuse.locker`, so that `mount -t fuse.locker SOURCE DIR` and fstab lines
//! such as
//!
//! ```text
//! locker:corp  /data/corp  fuse.locker  config=/etc/locker/locker.toml,_netdev  0 0
//! ```
//!
//! work. SOURCE is `locker` (every namespace) or `locker:NS[/DIR]` (one
//! namespace, or a folder in it). The helper starts `locker mount` in its
//! own session with the same options, waits until the mount answers (the
//! daemon says `READY=1` over the sd_notify protocol on a socket of the
//! helper's), and exits 0; if the daemon fails first, it prints why and
//! exits 1. `umount DIR` ends the daemon's session: it pushes its queue and
//! exits on its own.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::mount::Options;

/// Whether this process was started as the mount helper.
pub fn invoked_as_helper(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "mount.fuse.locker")
}

/// What mount(8) passed: `SOURCE DIR [-sfnv] [-o OPTIONS]`.
#[derive(Debug, PartialEq)]
struct Call {
    source: String,
    dir: PathBuf,
    options: String,
    fake: bool,
    verbose: bool,
}

fn parse_call(args: &[OsString]) -> anyhow::Result<Call> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_str().context("arguments must be UTF-8")?;
        if s == "-o" {
            options.push(
                it.next()
                    .and_then(|o| o.to_str())
                    .context("-o needs a value")?
                    .to_string(),
            );
        } else if let Some(o) = s.strip_prefix("-o") {
            options.push(o.to_string());
        } else if s == "-t" {
            // The type is ours by definition.
            it.next();
        } else if let Some(flags) = s.strip_prefix('-').filter(|f| !f.is_empty()) {
            for f in flags.chars() {
                match f {
                    'f' => fake = true,
                    'v' => verbose = true,
                    // -n (no mtab), -s (sloppy), -r/-w are handled by mount(8) or in -o.
                    'n' | 's' => {}
                    'r' => options.push("ro".into()),
                    'w' => options.push("rw".into()),
                    _ => bail!("unknown flag -{f}"),
                }
            }
        } else {
            positional.push(s.to_string());
        }
    }
    let [source, dir] = <[String; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: mount.fuse.locker SOURCE MOUNTPOINT [-o OPTIONS]"))?;
    Ok(Call {
        source,
        dir: PathBuf::from(dir),
        options: options.join(","),
        fake,
        verbose,
    })
}

/// The folder a source names: `locker` is everything, `locker:NS[/DIR]`
/// one namespace or a folder in it.
fn source_folder(source: &str) -> anyhow::Result<Option<String>> {
    match source.split_once(':') {
        None if source == "locker" => Ok(None),
        Some(("locker", f)) if !f.trim_matches('/').is_empty() => {
            Ok(Some(f.trim_matches('/').to_string()))
        }
        _ => bail!(
            "mount source {source:?}: expected locker (every namespace) or locker:NAMESPACE[/FOLDER]"
        ),
    }
}

/// Where a daemon started from a terminal logs: its messages must not land
/// on that terminal after `mount` has returned.
fn default_log(dir: &Path) -> PathBuf {
    let name: String = dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = if name.is_empty() { "root".into() } else { name };
    let base = if crate::config::is_root() {
        PathBuf::from("/var/log/locker")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("locker")
    };
    base.join(format!("{name}.log"))
}

/// `mount -o remount,...`: changes the flags of the mount at `call.dir`
/// (ro/rw, [no]suid, [no]dev, [no]exec) in place; the daemon keeps
/// serving. A remount sets every flag anew, so those not given take the
/// values a mount starts with (nosuid and nodev, as fuser mounts), never
/// looser ones. mount(8) also hands over the mount's current kernel
/// options (user_id=, rootmode=, ...); those, and options that cannot
/// change on a live mount, are ignored, as the kernel does.
fn remount(call: &Call) -> anyhow::Result<()> {
    let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    for o in call.options.split(',') {
        match o {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            _ => {}
        }
    }
    if call.fake {
        return Ok(());
    }
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(call.dir.as_os_str().as_bytes())?;
    // SAFETY: dir is NUL-terminated; a remount needs no source, type or data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            dir.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "remount of {}: {}",
            call.dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A private directory for the notification socket.
fn socket_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    for i in 0..100 {
        let d = base.join(format!("locker-mount.{}.{i}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", d.display())),
        }
    }
    bail!(
        "cannot make a directory for the daemon's notification socket in {}",
        base.display()
    )
}

pub fn run(args: &[OsString]) -> anyhow::Result<()> {
    let call = parse_call(args)?;
    if call.options.split(',').any(|o| o == "remount") {
        return remount(&call);
    }
    let folder = source_folder(&call.source)?;
    let mut opts = Options::parse(&call.options)?;
    match (&folder, &opts.namespace) {
        (Some(f), Some(n)) if f.trim_matches('/') != n.trim_matches('/') => {
            bail!("the source names {f} but namespace= names {n}; give one")
        }
        _ => {}
    }
    let mut options = call.options.clone();
    if let Some(f) = &folder
        && opts.namespace.is_none()
    {
        options.push_str(&format!(",namespace={f}"));
        opts.namespace = Some(f.clone());
    }
    if opts.log.is_none() && std::io::stderr().is_terminal() {
        let log = default_log(&call.dir);
        eprintln!(
            "locker: the daemon for {} logs to {}",
            call.dir.display(),
            log.display()
        );
        options.push_str(&format!(",log={}", log.display()));
    }
    if call.fake {
        return Ok(());
    }
    let dir = socket_dir()?;
    let sock_path = dir.join("notify");
    let result = start_and_wait(&call, &options, &sock_path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn start_and_wait(call: &Call, options: &str, sock_path: &Path) -> anyhow::Result<()> {
    let sock = UnixDatagram::bind(sock_path)
        .with_context(|| format!("notification socket {}", sock_path.display()))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let exe = std::env::current_exe().context("cannot find the locker binary")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg0("locker")
        .arg("mount")
        .arg(&call.dir)
        .arg("--source")
        .arg(&call.source)
        .arg("-o")
        .arg(options)
        .env("NOTIFY_SOCKET", sock_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; the daemon leaves mount(8)'s
    // session and process group, so nothing aimed at them reaches it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let mut why: Option<String> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                for line in msg.lines() {
                    if line == "READY=1" {
                        if call.verbose {
                            eprintln!(
                                "locker: {} mounted on {} (pid {})",
                                call.source,
                                call.dir.display(),
                                child.id()
                            );
                        }
                        return Ok(());
                    }
                    if let Some(s) = line.strip_prefix("STATUS=failed: ") {
                        why = Some(s.to_string());
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("waiting for the daemon"),
        }
        if let Some(status) = child.try_wait()? {
            match why {
                Some(w) => bail!("{w}"),
                None => bail!("the daemon exited ({status}) before the mount was ready"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn calls_as_mount_makes_them() {
        let c = parse_call(&args(&[
            "locker:corp",
            "/data/corp",
            "-o",
            "rw,config=/etc/l.toml",
        ]))
        .unwrap();
        assert_eq!(
            c,
            Call {
                source: "locker:corp".into(),
                dir: "/data/corp".into(),
                options: "rw,config=/etc/l.toml".into(),
                fake: false,
                verbose: false,
            }
        );
        let c = parse_call(&args(&["-sfnv", "locker", "/m", "-orw", "-o", "nosuid"])).unwrap();
        assert!(c.fake && c.verbose);
        assert_eq!(c.options, "rw,nosuid");
        assert!(parse_call(&args(&["locker"])).is_err());
        assert!(parse_call(&args(&["locker", "/m", "-o"])).is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(source_folder("locker").unwrap(), None);
        assert_eq!(source_folder("locker:corp").unwrap(), Some("corp".into()));
        assert_eq!(
            source_folder("locker:/emails/adjuntos/").unwrap(),
            Some("emails/adjuntos".into())
        );
        assert!(source_folder("corp").is_err());
        assert!(source_folder("locker:").is_err());
        assert!(source_folder("sshfs:x").is_err());
    }

    #[test]
    fn logs_are_named_after_the_mountpoint() {
        let l = default_log(Path::new("/data/corp mail"));
        assert!(
            l.to_string_lossy().ends_with("/data-corp-mail.log"),
            "{}",
            l.display()
        );
    }

    #[test]
    fn only_its_own_name_makes_the_helper() {
        assert!(invoked_as_helper("/sbin/mount.fuse.locker".as_ref()));
        assert!(invoked_as_helper("mount.fuse.locker".as_ref()));
        assert!(!invoked_as_helper("/usr/local/bin/locker".as_ref()));
    }
}
