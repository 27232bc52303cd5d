//! Opening the WebDAV backend from a namespace's settings (URL, user,
//! password, flavor, chunk size) and the look at the folder made at mount,
//! whose failures are one line for the admin.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use percent_encoding::percent_decode_str;

use super::client::Http;
use super::xml::Props;
use super::{DEFAULT_CHUNK, Flavor, WebDavBackend, encode_segments, upload};
use crate::backend::{BResult, BackendError, ErrorKind};
use crate::config::NamespaceConfig;

/// Whether `host` (of a URL's authority) is this machine.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an authority (`user@host:port`, `[::1]:80`).
fn host_of(authority: &str) -> &str {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    if a.starts_with('[') {
        return a.split(']').next().map(|h| &h[1..]).unwrap_or(a);
    }
    a.split(':').next().unwrap_or(a)
}

/// The password of a namespace: from `password_env` or `password_file`
/// (mode 0600, owned by the daemon's user), without a trailing newline.
fn read_password(cfg: &NamespaceConfig) -> Result<String, String> {
    let pw = if let Some(var) = &cfg.password_env {
        std::env::var(var)
            .map_err(|_| format!("the environment variable {var} (password_env) is not set"))?
    } else if let Some(path) = &cfg.password_file {
        crate::config::read_private_file(path, "password")?
    } else {
        return Err("backend \"webdav\" needs `password_file` or `password_env`".into());
    };
    let pw = pw.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err("the WebDAV password is empty".into());
    }
    Ok(pw)
}

impl WebDavBackend {
    /// Opens the backend a namespace's settings describe; plain-flavor
    /// multipart uploads are spooled under `spool` (left-overs of an
    /// earlier run there are removed).
    pub fn new(cfg: &NamespaceConfig, spool: &Path) -> Result<WebDavBackend, String> {
        let url = cfg.url.as_deref().ok_or("backend \"webdav\" needs `url`")?;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| format!("url {url:?} is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("url {url:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url {url:?} has no host"))?
            .as_str();
        if authority.contains('@') {
            return Err(
                "url must not hold a user or password; use `user` and `password_file`".into(),
            );
        }
        let host = host_of(authority);
        if !https && !is_loopback(host) {
            if !cfg.allow_insecure_http {
                return Err(format!(
                    "url {url:?} is plain http to another machine: the password and files would cross the network unencrypted; use https:// (or allow_insecure_http = true)"
                ));
            }
            tracing::warn!(url = %url, "plain http to another machine, as allow_insecure_http permits: the password and files cross the network unencrypted");
        }
        let user = cfg
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or("backend \"webdav\" needs `user`")?;
        let password = read_password(cfg)?;
        let origin = format!("{}://{authority}", if https { "https" } else { "http" });
        let http = Http::new(&origin, https, &user, &password)?;
        let mut base = uri.path().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let prefix = cfg.key_prefix();
        let root = if prefix.is_empty() {
            base.clone()
        } else {
            format!("{base}{}/", encode_segments(prefix.trim_end_matches('/')))
        };
        let root_decoded = percent_decode_str(&root)
            .decode_utf8()
            .map_err(|_| format!("url {url:?}: the path is not UTF-8"))?
            .into_owned();
        let uploads = base.find("/remote.php/dav/files/").and_then(|i| {
            let rest = &base[i + "/remote.php/dav/files/".len()..];
            let owner = rest.split('/').next().filter(|s| !s.is_empty())?;
            Some(format!("{}/remote.php/dav/uploads/{owner}/", &base[..i]))
        });
        let configured = match cfg.flavor.as_deref() {
            None => None,
            Some(f) => Some(
                Flavor::parse(f)
                    .ok_or_else(|| format!("flavor {f:?}: expected \"nextcloud\" or \"plain\""))?,
            ),
        };
        let chunk_size = cfg.chunk_size_mb.map(|m| m << 20).unwrap_or(DEFAULT_CHUNK);
        // Spooled parts of a run that stopped are of no use now.
        upload::clear_spool(spool);
        let flavor = tokio::sync::OnceCell::new();
        if let Some(f) = configured {
            let _ = flavor.set(f);
        }
        Ok(WebDavBackend {
            http,
            root,
            root_decoded,
            uploads,
            shown: format!("{origin}{}", percent_decode_str(&base).decode_utf8_lossy())
                + prefix.as_str(),
            user,
            configured,
            flavor,
            chunk_size: AtomicU64::new(chunk_size),
            chunking: AtomicBool::new(true),
            dead_props: AtomicBool::new(true),
            spool: spool.to_path_buf(),
            listing: Mutex::new(HashMap::new()),
        })
    }

    /// The look at the folder `check` makes: it exists, is a folder, the
    /// credentials are taken; the flavor is learnt, and on Nextcloud whether
    /// chunked uploads are there.
    pub(super) async fn check_in(&self) -> BResult<()> {
        let entries = match self.propfind(&self.root, 0, Props::Both).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err(self.missing_root()),
            Err(e) => return Err(self.check_error(e)),
        };
        let Some(me) = entries
            .iter()
            .find(|e| self.key_of_href(&e.href).is_some_and(|k| k.is_empty()))
        else {
            return Err(BackendError::permanent(format!(
                "{} answered PROPFIND without the folder itself; is url the WebDAV folder?",
                self.shown
            )));
        };
        if !me.collection {
            return Err(BackendError::permanent(format!(
                "{} is a file, not a folder",
                self.shown
            )));
        }
        let detected = if me.fileid.is_some() {
            Flavor::Nextcloud
        } else {
            Flavor::Plain
        };
        let flavor = match self.configured {
            Some(f) => {
                if f != detected {
                    tracing::info!(url = %self.shown, configured = f.name(), detected = detected.name(), "the server looks like another flavor than configured; using the configured one");
                }
                f
            }
            None => {
                let _ = self.flavor.set(detected);
                detected
            }
        };
        if flavor == Flavor::Nextcloud {
            let usable = match &self.uploads {
                Some(up) => matches!(self.propfind(up, 0, Props::Nextcloud).await, Ok(Some(_))),
                None => false,
            };
            if !usable {
                tracing::warn!(url = %self.shown, "no chunked-upload folder (remote.php/dav/uploads/<user>/) found: large files go up in one PUT each");
            }
            self.chunking.store(usable, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A failed first look at the folder, as one line for the admin.
    fn check_error(&self, e: BackendError) -> BackendError {
        if e.kind == ErrorKind::Transient {
            return e;
        }
        if e.message.contains("HTTP 401") {
            return BackendError::permanent(format!(
                "the server refused user {}'s password (HTTP 401)",
                self.user
            ));
        }
        if e.message.contains("HTTP 403") {
            return BackendError::permanent(format!(
                "the server denies user {} this folder (HTTP 403)",
                self.user
            ));
        }
        if e.message.contains("redirected") {
            return BackendError::permanent(e.message);
        }
        BackendError::permanent(format!(
            "{} is not a WebDAV folder ({})",
            self.shown,
            e.message
                .rsplit_once(": ")
                .map(|(_, d)| d)
                .unwrap_or(&e.message)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::{test_cfg, test_open, test_password};

    fn cfg(url: &str) -> NamespaceConfig {
        test_cfg(url, "LOCKER_TEST_WEBDAV_PW_OPEN")
    }

    fn open(url: &str) -> Result<WebDavBackend, String> {
        test_open(&cfg(url))
    }

    #[test]
    fn plain_http_is_refused_unless_loopback_or_allowed() {
        assert!(open("http://127.0.0.1:8080/dav/").is_ok());
        assert!(open("http://localhost/dav/").is_ok());
        assert!(open("http://[::1]:80/dav/").is_ok());
        let e = open("http://cloud.example.com/dav/").err().unwrap();
        assert!(e.contains("allow_insecure_http"), "{e}");
        let mut c = cfg("http://cloud.example.com/dav/");
        c.allow_insecure_http = true;
        unsafe { std::env::set_var("LOCKER_TEST_WEBDAV_PW_OPEN", test_password()) };
        assert!(
            WebDavBackend::new(&c, &std::env::temp_dir().join("locker-webdav-unit-spool")).is_ok()
        );
        let pw = test_password();
        let e = open(&format!(
            "https://alice:{}@cloud.example.com/dav/",
            pw.trim()
        ))
        .err()
        .unwrap();
        assert!(!e.contains(pw.trim()) && e.contains("password_file"), "{e}");
        assert!(open("ftp://x/").is_err());
    }
}
