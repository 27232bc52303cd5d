//! systemd's service notification protocol (`sd_notify(3)`): state lines
//! such as `READY=1`, `STOPPING=1` and `STATUS=...` sent as one datagram
//! to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). Without that variable nothing is sent. The mount
//! helper (`mount.fuse.locker`) uses the same protocol to learn when the
//! daemon it started is serving.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when a send failed: the mount helper listens only until the daemon
/// is ready, and nobody else will.
static GONE: AtomicBool = AtomicBool::new(false);

/// Whether someone may listen (`$NOTIFY_SOCKET` is set and was reachable).
pub fn enabled() -> bool {
    !GONE.load(Ordering::Relaxed)
        && std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// Sends `state` (newline-separated `KEY=VALUE` lines). Returns whether it
/// was delivered; a listener that went away is not an error of ours.
pub fn send(state: &str) -> bool {
    if GONE.load(Ordering::Relaxed) {
        return false;
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match deliver(&path, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot notify the service manager");
            // Nobody listens there any more; a full queue is only a miss.
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                GONE.store(true, Ordering::Relaxed);
            }
            false
        }
    }
}

/// Sends `state` to the notification socket `path`; whether it arrived.
pub fn send_to(path: &std::ffi::OsStr, state: &str) -> bool {
    deliver(path, state).is_ok()
}

fn deliver(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None if bytes.starts_with(b"/") => {
            sock.send_to(state.as_bytes(), path)?;
        }
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor @name",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_path_socket_and_an_abstract_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        assert!(send_to(p.as_os_str(), "READY=1\nSTATUS=serving"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("locker-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(send_to(
            std::ffi::OsStr::new(&format!("@{name}")),
            "STOPPING=1"
        ));
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        drop(rx);
        assert!(!send_to(p.with_file_name("gone").as_os_str(), "READY=1"));
        assert!(!send_to(std::ffi::OsStr::new("relative"), "READY=1"));
    }
}
