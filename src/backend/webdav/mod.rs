//! The `webdav` backend: a folder on a WebDAV server, in one of two
//! flavors.
//!
//! - **nextcloud** (also ownCloud): files carry their SHA-256 in
//!   `OC-Checksum` (read back from `oc:checksums`) and their mtime in
//!   `X-OC-Mtime` (whole seconds); `oc:fileid` names a file across renames;
//!   large files go up with chunked upload v2 (`uploads/<user>/<transfer>`),
//!   which survives a restart and resumes; folder ETags change when
//!   anything below changes, so a listing descends only into changed
//!   folders.
//! - **plain** (Apache mod_dav and other RFC 4918 servers): the whole
//!   `ObjMeta` travels as dead properties in [`xml::LOCKER_NS`]. A write
//!   goes to a temporary name beside its target (`.locker-tmp-…`), gets its
//!   properties, is read back (size, ETag), and is moved over the target
//!   under the write's condition: the target changes at once, with its
//!   properties, and the ETag recorded is the one of this write, never of
//!   someone else's landing in between. Multipart parts are spooled to a
//!   local file and sent as one streaming PUT (the server assembles
//!   nothing).
//!
//! Conditions: `If-Match` / `If-None-Match` on Nextcloud; on plain servers
//! tagged `If:` lists (`If: </path> (["etag"])`), because Apache answers a
//! file changed within the last second with a weak ETag, which `If-Match`
//! never matches and `If:` does. The ETags this backend hands out are
//! opaque: without `W/` and quotes.
//!
//! Symlinks are not representable: `put_symlink` fails for the path (they
//! stay local). Directory metadata (mode, mtime) is not kept. Every request
//! has a deadline (see `client`), the password is only in a sensitive
//! header, and paths never leave the configured folder.

mod client;
mod list;
mod open;
mod upload;
mod write;
pub mod xml;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hyper::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use self::client::{Http, Resp, status_error};
use self::xml::{DavEntry, Props};
use super::{
    BResult, Backend, BackendError, Capabilities, Cond, Multipart, ObjInfo, ObjKind, ObjMeta,
    PartInfo, check_key,
};
use crate::types::Timestamp;

/// What the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Nextcloud,
    Plain,
}

impl Flavor {
    pub fn parse(s: &str) -> Option<Flavor> {
        match s {
            "nextcloud" => Some(Flavor::Nextcloud),
            "plain" => Some(Flavor::Plain),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flavor::Nextcloud => "nextcloud",
            Flavor::Plain => "plain",
        }
    }
}

/// Files larger than this go up in chunks (Nextcloud), unless configured.
pub const DEFAULT_CHUNK: u64 = 10 << 20;

/// Names of the temporaries of plain-flavor writes; listings skip them.
const TMP_PREFIX: &str = ".locker-tmp-";

/// Bytes kept as they are in a path segment; everything else is
/// percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_segments(key: &str) -> String {
    key.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The listing state of one folder (Nextcloud flavor): its ETag when its
/// members were read, and those members.
#[derive(Clone)]
struct CachedDir {
    etag: String,
    members: Vec<ObjInfo>,
}

pub struct WebDavBackend {
    http: Http,
    /// Percent-encoded path of the folder (URL path plus prefix), with a
    /// trailing '/'.
    root: String,
    /// `root` decoded, to read hrefs.
    root_decoded: String,
    /// Percent-encoded path of the user's chunked-upload folder
    /// (`…/remote.php/dav/uploads/<user>/`), when the URL shows it.
    uploads: Option<String>,
    /// The URL and folder, for messages.
    shown: String,
    user: String,
    configured: Option<Flavor>,
    flavor: tokio::sync::OnceCell<Flavor>,
    chunk_size: AtomicU64,
    /// Nextcloud's chunked upload is there (checked by `check`).
    chunking: AtomicBool,
    /// The server keeps LOCKER's dead properties (plain flavor); cleared
    /// the first time it refuses them.
    dead_props: AtomicBool,
    /// Where plain-flavor multipart uploads are spooled.
    spool: PathBuf,
    /// Folder listings by folder key (Nextcloud flavor). Lock held for
    /// map operations only, never across a request.
    listing: Mutex<HashMap<String, CachedDir>>,
}

impl WebDavBackend {
    /// flavor). For tests with servers that take small chunks.
    pub fn set_chunk_size(&self, bytes: u64) {
        self.chunk_size.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The flavor: as configured, else asked of the server once.
    pub async fn flavor(&self) -> BResult<Flavor> {
        self.flavor
            .get_or_try_init(|| async {
                let entries = self
                    .propfind(&self.root, 0, Props::Both)
                    .await?
                    .ok_or_else(|| self.missing_root())?;
                Ok(if entries.iter().any(|e| e.fileid.is_some()) {
                    Flavor::Nextcloud
                } else {
                    Flavor::Plain
                })
            })
            .await
            .copied()
    }

    fn missing_root(&self) -> BackendError {
        BackendError::permanent(format!(
            "the folder {} does not exist (make it, or fix url and prefix)",
            self.shown
        ))
    }

    /// The percent-encoded path of the file `key`.
    fn path(&self, key: &str) -> String {
        format!("{}{}", self.root, encode_segments(key))
    }

    /// The percent-encoded path of the folder `key` ("" for the root),
    /// with a trailing '/'.
    fn dir_path(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.clone()
        } else {
            format!("{}/", self.path(key))
        }
    }

    /// The absolute URL of a path, for `Destination`.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http.origin)
    }

    /// The key an href names ("" for the folder itself), if it is inside
    /// the folder.
    fn key_of_href(&self, href: &str) -> Option<String> {
        let path = match href.find("://") {
            Some(i) => {
                let rest = &href[i + 3..];
                &rest[rest.find('/').unwrap_or(rest.len())..]
            }
            None => href,
        };
        let decoded = percent_decode_str(path).decode_utf8().ok()?;
        let inside = decoded
            .strip_prefix(self.root_decoded.as_str())
            .or_else(|| {
                // The folder itself, named without its trailing slash.
                (decoded == self.root_decoded.trim_end_matches('/')).then_some("")
            })?;
        Some(inside.trim_end_matches('/').to_string())
    }

    /// Checks a key, and on Nextcloud the names it refuses, before any
    /// request.
    fn check_key(&self, key: &str, flavor: Flavor) -> BResult<()> {
        check_key(key)?;
        if flavor == Flavor::Nextcloud
            && let Some(why) = key.split('/').find_map(nextcloud_refuses)
        {
            return Err(BackendError::permanent(format!(
                "{key}: Nextcloud refuses this name ({why}); kept local only"
            ))
            .for_path());
        }
        Ok(())
    }

    /// PROPFIND of `path` with `depth` 0 or 1; `None` if nothing is there.
    async fn propfind(
        &self,
        path: &str,
        depth: u8,
        props: Props,
    ) -> BResult<Option<Vec<DavEntry>>> {
        let req = self
            .http
            .request(&client::method("PROPFIND"), path)
            .header("depth", depth.to_string())
            .header("content-type", "application/xml; charset=utf-8")
            .body(client::full(xml::propfind_body(props)))
            .map_err(|e| BackendError::permanent(format!("PROPFIND {path}: {e}")))?;
        let timeout = if depth == 0 {
            client::META_TIMEOUT
        } else {
            client::LONG_TIMEOUT
        };
        let resp = self.http.send(req, client::MAX_ANSWER, timeout).await?;
        match resp.status.as_u16() {
            207 => xml::parse_multistatus(&resp.body).map(Some).map_err(|e| {
                BackendError::transient(format!(
                    "PROPFIND {}: {e}",
                    percent_decode_str(path).decode_utf8_lossy()
                ))
            }),
            404 | 410 => Ok(None),
            _ => Err(status_error("list", &self.shown_path(path), &resp)),
        }
    }

    /// A path as shown in messages: decoded, inside the folder if it is.
    fn shown_path(&self, path: &str) -> String {
        match self.key_of_href(path) {
            Some(k) if !k.is_empty() => k,
            _ => percent_decode_str(path).decode_utf8_lossy().into_owned(),
        }
    }

    /// The props a PROPFIND asks for in this flavor.
    fn props(flavor: Flavor) -> Props {
        match flavor {
            Flavor::Nextcloud => Props::Nextcloud,
            Flavor::Plain => Props::Plain,
        }
    }

    /// An entry as `ObjInfo`.
    fn info(&self, flavor: Flavor, key: String, e: &DavEntry) -> ObjInfo {
        let kind = if e.collection {
            ObjKind::Dir
        } else {
            ObjKind::File
        };
        ObjInfo {
            key,
            kind,
            size: if e.collection {
                0
            } else {
                e.length.unwrap_or(0)
            },
            etag: e.etag.clone().unwrap_or_default(),
            meta: Some(meta_of(flavor, e)),
            file_id: e.fileid.clone(),
        }
    }

    /// The entry at `key` as `ObjInfo`, with its flavor known.
    async fn head_in(&self, flavor: Flavor, key: &str) -> BResult<Option<ObjInfo>> {
        let Some(entries) = self
            .propfind(&self.path(key), 0, Self::props(flavor))
            .await?
        else {
            return Ok(None);
        };
        let Some(e) = entries.iter().find(|e| e.status.is_none_or(|s| s == 200)) else {
            return Ok(None);
        };
        Ok(Some(self.info(flavor, key.to_string(), e)))
    }

    /// `If-Match` (Nextcloud) or a tagged `If:` list (plain) making a
    /// request on `path` conditional on its ETag.
    fn if_match(
        &self,
        flavor: Flavor,
        b: hyper::http::request::Builder,
        path: &str,
        etag: &str,
    ) -> hyper::http::request::Builder {
        match flavor {
            Flavor::Nextcloud => b.header("if-match", format!("\"{etag}\"")),
            Flavor::Plain => b.header("if", if_list(&[(path, etag)])),
        }
    }

    /// Sends a request without a body to speak of.
    async fn send(
        &self,
        req: hyper::http::request::Builder,
        timeout: std::time::Duration,
    ) -> BResult<Resp> {
        let req = req
            .body(client::empty())
            .map_err(|e| BackendError::permanent(format!("bad request: {e}")))?;
        self.http.send(req, 1 << 20, timeout).await
    }

    /// DELETE, ignoring the answer: a clean-up that may fail.
    async fn delete_quietly(&self, path: &str) {
        let req = self.http.request(&hyper::Method::DELETE, path);
        if let Err(e) = self.send(req, client::META_TIMEOUT).await {
            tracing::debug!(path = %self.shown_path(path), error = %e, "clean-up failed");
        }
    }
}

/// A tagged `If:` header: each (path, etag) must hold.
fn if_list(lists: &[(&str, &str)]) -> String {
    lists
        .iter()
        .map(|(p, e)| format!("<{p}> ([\"{e}\"])"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why Nextcloud refuses to create a name (one path segment), if it does
/// with its default settings (`FilenameValidator`): the reserved name, the
/// forbidden extensions and characters, blank names and lengths. An admin
/// can refuse more (trailing spaces, say): the server's 400 then says so.
pub fn nextcloud_refuses(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower == ".htaccess" {
        Some(".htaccess is reserved")
    } else if lower.ends_with(".part") || lower.ends_with(".filepart") {
        Some(".part and .filepart are forbidden file types")
    } else if name.contains('\\') {
        Some("a backslash")
    } else if name.chars().any(|c| (c as u32) < 32) {
        Some("a control character")
    } else if name.trim().is_empty() {
        Some("a blank name")
    } else if name.len() > 250 {
        Some("longer than 250 bytes")
    } else {
        None
    }
}

/// The metadata of an entry: on Nextcloud its checksum and mtime (whole
/// seconds); on plain servers LOCKER's dead properties, else the server's
/// mtime.
fn meta_of(flavor: Flavor, e: &DavEntry) -> ObjMeta {
    let modified = e
        .modified
        .as_deref()
        .and_then(|m| httpdate::parse_http_date(m).ok())
        .map(Timestamp::from_system);
    match flavor {
        Flavor::Nextcloud => ObjMeta {
            sha256: e.checksums.as_deref().and_then(xml::sha256_of_checksums),
            mtime: modified,
            mode: None,
            base: None,
        },
        Flavor::Plain => {
            let get = |k: &str| e.locker.get(k).map(String::as_str);
            // Properties written for another version (another client
            // rewrote the file and the server kept them) describe nothing.
            if get("version").is_some_and(|v| Some(v) != e.etag.as_deref()) {
                return ObjMeta {
                    mtime: modified,
                    ..ObjMeta::default()
                };
            }
            ObjMeta {
                sha256: get("sha256").and_then(super::unhex32),
                mtime: get("mtime").and_then(super::parse_mtime).or(modified),
                mode: get("mode").and_then(|m| u32::from_str_radix(m, 8).ok()),
                base: get("base").and_then(super::unhex32),
            }
        }
    }
}

/// The key of the folder holding `key` ("" at the top).
fn parent_of(key: &str) -> &str {
    key.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

#[async_trait::async_trait]
impl Backend for WebDavBackend {
    fn describe(&self) -> String {
        match self.flavor.get() {
            Some(f) => format!("webdav ({}) {} as {}", f.name(), self.shown, self.user),
            None => format!("webdav {} as {}", self.shown, self.user),
        }
    }

    fn capabilities(&self) -> Capabilities {
        let flavor = self.flavor.get().copied().unwrap_or(Flavor::Plain);
        let props = flavor == Flavor::Plain && self.dead_props.load(Ordering::Relaxed);
        let chunked = self.chunked_uploads(flavor);
        Capabilities {
            symlinks: false,
            mode: props,
            base: props,
            mtime_ns: props,
            server_side_parts: chunked,
            resumable_uploads: chunked,
            renames: true,
        }
    }

    async fn check(&self) -> BResult<()> {
        self.check_in().await
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let flavor = self.flavor().await?;
        self.check_key(key, flavor)?;
        self.put_in(flavor, key, crate::buf::into_bytes(data), meta, cond)
            .await
    }

    async fn multipart_begin(&self, key: &str, size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        let flavor = self.flavor().await?;
        self.check_key(key, flavor)?;
        self.begin_upload(flavor, key, size, meta).await
    }

    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        self.send_part(mp, number, offset, data).await
    }

    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String> {
        let flavor = self.flavor().await?;
        self.finish_upload(flavor, mp, parts).await
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        self.abort_upload(mp).await
    }

    async fn multipart_resume(&self, mp: &Multipart) -> BResult<Option<Vec<PartInfo>>> {
        self.resume_upload(mp).await
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        let flavor = self.flavor().await?;
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let path = self.path(key);
        let mut b = self
            .http
            .request(&hyper::Method::GET, &path)
            .header("range", format!("bytes={}-{}", offset, offset + len - 1));
        // Apache answers If-Match on a file changed within the last second
        // with 412 (its ETag is weak then); there the version is checked
        // on the answer's ETag instead.
        if let (Some(e), Flavor::Nextcloud) = (if_match, flavor) {
            b = b.header("if-match", format!("\"{e}\""));
        }
        let req = b
            .body(client::empty())
            .map_err(|e| BackendError::permanent(format!("GET {key}: {e}")))?;
        let (status, headers, body) = self
            .http
            .get(req, true, offset, len, client::transfer_timeout(len))
            .await?;
        match status.as_u16() {
            200 | 206 => {
                if let Some(want) = if_match {
                    let got = headers
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(xml::normalize_etag);
                    let same = match (flavor, got) {
                        (_, Some(g)) => g == want,
                        // Nextcloud checked If-Match itself.
                        (Flavor::Nextcloud, None) => true,
                        (Flavor::Plain, None) => false,
                    };
                    if !same {
                        return Err(BackendError::transient(format!(
                            "{key} changed since it was listed; not read"
                        ))
                        .for_path());
                    }
                }
                Ok(body)
            }
            416 => Ok(Vec::new()),
            _ => Err(status_error(
                "get",
                key,
                &Resp {
                    status: StatusCode::from_u16(status.as_u16()).unwrap_or(status),
                    headers,
                    body: body.into(),
                },
            )),
        }
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        let flavor = self.flavor().await?;
        check_key(key)?;
        self.head_in(flavor, key).await
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        let flavor = self.flavor().await?;
        let p = prefix.trim_matches('/');
        if !p.is_empty() {
            check_key(p)?;
        }
        self.list_in(flavor, p).await
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        let flavor = self.flavor().await?;
        check_key(key)?;
        self.delete_in(flavor, key, cond).await
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let flavor = self.flavor().await?;
        check_key(src)?;
        self.check_key(dst, flavor)?;
        self.copy_in(flavor, src, src_etag, dst, meta, cond).await
    }

    async fn rename(&self, src: &str, src_etag: Option<&str>, dst: &str) -> BResult<String> {
        let flavor = self.flavor().await?;
        check_key(src)?;
        self.check_key(dst, flavor)?;
        self.rename_in(flavor, src, src_etag, dst).await
    }

    async fn put_dir(&self, key: &str, _meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let flavor = self.flavor().await?;
        self.check_key(key, flavor)?;
        self.put_dir_in(flavor, key, cond).await
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        let flavor = self.flavor().await?;
        check_key(key)?;
        self.delete_dir_in(flavor, key).await
    }

    async fn put_symlink(
        &self,
        key: &str,
        _target: &[u8],
        _meta: &ObjMeta,
        _cond: &Cond,
    ) -> BResult<String> {
        Err(BackendError::permanent(format!(
            "{key}: WebDAV cannot hold a symlink; it stays local only"
        ))
        .for_path())
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        Err(BackendError::not_found(format!("{key}: WebDAV holds no symlinks")).for_path())
    }
}

impl WebDavBackend {
    /// Whether large files go up in Nextcloud chunks.
    fn chunked_uploads(&self, flavor: Flavor) -> bool {
        flavor == Flavor::Nextcloud
            && self.uploads.is_some()
            && self.chunking.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::NamespaceConfig;

    /// A password made up for the run, the same within it.
    pub(super) fn test_password() -> String {
        static PW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PW.get_or_init(|| format!("{:016x}\n", fastrand::u64(..)))
            .clone()
    }

    /// Settings of a namespace on `url`, its password in the environment
    /// variable `env`.
    pub(super) fn test_cfg(url: &str, env: &str) -> NamespaceConfig {
        NamespaceConfig {
            backend: Some("webdav".into()),
            url: Some(url.into()),
            user: Some("alice".into()),
            password_env: Some(env.into()),
            ..Default::default()
        }
    }

    /// Opens `cfg`, whose password variable is set first (tests of each
    /// module use a variable of their own, always set to the same value).
    pub(super) fn test_open(cfg: &NamespaceConfig) -> Result<WebDavBackend, String> {
        let env = cfg.password_env.as_deref().unwrap_or_default();
        // SAFETY: each variable is set by one module's tests only, always
        // to the same value.
        unsafe { std::env::set_var(env, test_password()) };
        let d = std::env::temp_dir().join("locker-webdav-unit-spool");
        WebDavBackend::new(cfg, &d)
    }

    fn cfg(url: &str) -> NamespaceConfig {
        NamespaceConfig {
            prefix: Some("LOCKER/deck x".into()),
            ..test_cfg(url, "LOCKER_TEST_WEBDAV_PW_UNIT")
        }
    }

    fn open(url: &str) -> Result<WebDavBackend, String> {
        test_open(&cfg(url))
    }

    /// A server that answers every MKCOL with 403 (as Apache answers the
    /// one that loses when two make a folder at once) and every PROPFIND
    /// with the folder `made` there. Returns its URL and the requests'
    /// methods seen so far.
    fn refusing_server() -> (String, std::sync::Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/dav", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut words = line.split(' ');
                        let method = words.next().unwrap_or("").to_string();
                        let path = words.next().unwrap_or("").trim_end_matches('/').to_string();
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        log.lock().unwrap().push(method.clone());
                        let (status, body) = if method == "PROPFIND" && path == "/dav/made" {
                            (
                                "207 Multi-Status",
                                "<?xml version=\"1.0\"?><D:multistatus xmlns:D=\"DAV:\"><D:response>\
                                 <D:href>/dav/made/</D:href><D:propstat><D:prop>\
                                 <D:resourcetype><D:collection/></D:resourcetype>\
                                 <D:getetag>\"e1\"</D:getetag></D:prop>\
                                 <D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>\
                                 </D:multistatus>",
                            )
                        } else if method == "PROPFIND" {
                            ("404 Not Found", "")
                        } else {
                            ("403 Forbidden", "")
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if w.write_all(head.as_bytes())
                            .and_then(|_| w.write_all(body.as_bytes()))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// A folder's own push whose MKCOL the server refuses because a push
    /// of a file in it made the folder meanwhile: the folder is there,
    /// which is what was asked (the push used to fail and the entry wait
    /// its next try, 30 s later).
    #[test]
    fn a_folder_made_meanwhile_by_another_push_is_a_folder_made() {
        let (url, seen) = refusing_server();
        let mut c = test_cfg(&url, "LOCKER_TEST_WEBDAV_PW_UNIT");
        c.flavor = Some("plain".into());
        let b = test_open(&c).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(b.put_dir("made", &ObjMeta::default(), &Cond::Any));
        assert_eq!(got.unwrap(), "dir");
        assert_eq!(*seen.lock().unwrap(), ["MKCOL", "PROPFIND"]);
        // Where nothing is there after a refusal, the refusal stands.
        let got = rt.block_on(b.put_dir("other", &ObjMeta::default(), &Cond::Any));
        assert!(got.is_err());
    }

    #[test]
    fn paths_are_encoded_under_the_folder_and_hrefs_read_back() {
        let b = open("https://cloud.example.com/remote.php/dav/files/alice").unwrap();
        assert_eq!(b.root, "/remote.php/dav/files/alice/LOCKER/deck%20x/");
        assert_eq!(
            b.path("a b/ü+%.txt"),
            "/remote.php/dav/files/alice/LOCKER/deck%20x/a%20b/%C3%BC%2B%25.txt"
        );
        assert_eq!(b.uploads.as_deref(), Some("/remote.php/dav/uploads/alice/"));
        assert_eq!(
            b.key_of_href("/remote.php/dav/files/alice/LOCKER/deck%20x/a%20b/%c3%bc+%25.txt")
                .as_deref(),
            Some("a b/ü+%.txt")
        );
        assert_eq!(
            b.key_of_href(
                "https://cloud.example.com/remote.php/dav/files/alice/LOCKER/deck%20x/d/"
            )
            .as_deref(),
            Some("d")
        );
        assert_eq!(
            b.key_of_href("/remote.php/dav/files/alice/LOCKER/deck%20x/")
                .as_deref(),
            Some("")
        );
        assert_eq!(b.key_of_href("/remote.php/dav/files/alice/other"), None);
        assert!(!b.describe().contains(test_password().trim()));
    }

    #[test]
    fn nextcloud_refused_names() {
        for n in [
            ".htaccess",
            ".HTACCESS",
            "a\\b",
            "x.part",
            "y.FILEPART",
            "a\nb",
            "  ",
        ] {
            assert!(nextcloud_refuses(n).is_some(), "{n:?}");
        }
        for n in ["a.txt", "ü", ".hidden", "a b", "trailing ", "partial"] {
            assert!(nextcloud_refuses(n).is_none(), "{n:?}");
        }
        assert!(nextcloud_refuses(&"x".repeat(251)).is_some());
    }

    #[test]
    fn if_lists_are_tagged() {
        assert_eq!(
            if_list(&[("/d/a%20b", "1-2"), ("/d/c", "3")]),
            "</d/a%20b> ([\"1-2\"]) </d/c> ([\"3\"])"
        );
    }

    #[test]
    fn metadata_per_flavor() {
        let mut e = DavEntry {
            modified: Some("Tue, 14 Nov 2023 22:13:20 GMT".into()),
            checksums: Some(format!("SHA1:00 SHA256:{}", "ab".repeat(32))),
            ..Default::default()
        };
        let m = meta_of(Flavor::Nextcloud, &e);
        assert_eq!(m.sha256, Some([0xab; 32]));
        assert_eq!(
            m.mtime,
            Some(Timestamp {
                sec: 1_700_000_000,
                nsec: 0
            })
        );
        e.locker.insert("mtime".into(), "5.000000007".into());
        e.locker.insert("mode".into(), "640".into());
        let m = meta_of(Flavor::Plain, &e);
        assert_eq!(m.mtime, Some(Timestamp { sec: 5, nsec: 7 }));
        assert_eq!(m.mode, Some(0o640));
        assert_eq!(m.sha256, None, "Nextcloud's checksum is not a plain label");
    }
}
