//! The HTTP API: files, signed URLs and references, served from the same
//! core as the mount, so a file PUT over HTTP is in the mount at once and
//! the reverse.
//!
//! It runs on its own tokio runtime (hyper, HTTP/1.1). Core calls block, so
//! they run on the runtime's blocking pool; file bodies stream in and out in
//! pieces of at most a block, so memory does not grow with file size.
//!
//! Routes:
//! - `PUT|GET|HEAD|DELETE /api/files/{path}` (a directory GET lists it;
//!   `/api/files` lists the namespaces the key may use)
//! - `POST /api/signed-url`, `GET /api/refs/resolve?ref=locker://…`
//! - `GET|HEAD {public path prefix}/{path}?token=…&expires=…`: a signed URL
//!   (or, without a token, the same with an API key)
//! - `GET /metrics`: Prometheus metrics (`crate::metrics`), without a key
//!
//! Every `/api` call needs `Authorization: Bearer <key>`; errors are JSON
//! `{"error": code, "message": text}`.

pub mod auth;
mod files;
pub mod headers;
pub mod path;
pub mod scrape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::config::ApiConfig;
use crate::core::{CoreError, Locker};
use auth::{Grant, Keys, Signer};

/// The response body: whole (JSON, small files) or streamed.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;

/// What the request handlers share.
pub(crate) struct Shared {
    core: Arc<Locker>,
    keys: Keys,
    signer: Signer,
    /// Public base URL, no trailing '/'.
    base_url: String,
    /// The path part of the base URL ("" or "/prefix"), under which signed
    /// URLs arrive.
    base_path: String,
    max_body: u64,
    max_expires: u64,
    default_expires: u64,
    closing: AtomicBool,
    active: AtomicUsize,
}

/// A running API server.
pub struct ApiServer {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    addr: SocketAddr,
    grace: Duration,
}

impl ApiServer {
    /// Loads the keys and the signing secret, binds the listen address and
    /// starts serving.
    pub fn start(core: Arc<Locker>, cfg: &ApiConfig, data_dir: &Path) -> anyhow::Result<ApiServer> {
        let keys = Keys::load(cfg).map_err(|e| anyhow::anyhow!("api: {e}"))?;
        let signer = Signer::load(cfg, data_dir).map_err(|e| anyhow::anyhow!("api: {e}"))?;
        let base_url = cfg.base_url();
        let base_path = {
            let after_scheme = base_url.split_once("://").map_or("", |(_, r)| r);
            after_scheme
                .find('/')
                .map_or(String::new(), |i| after_scheme[i..].to_string())
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("api")
            .enable_all()
            .build()?;
        let addr: SocketAddr = cfg.listen.parse().context("api.listen")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("api: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        if keys.is_empty() {
            tracing::warn!(
                "api: no keys are configured; only signed URLs can be used (add [api.keys.NAME])"
            );
        }
        let shared = Arc::new(Shared {
            core,
            keys,
            signer,
            base_url: base_url.clone(),
            base_path,
            max_body: cfg.max_body_mb << 20,
            max_expires: cfg.max_expires_in_s,
            default_expires: cfg.default_expires_in_s,
            closing: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        rt.spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::info!(listen = %addr, public_url = %base_url, keys = shared.keys.len(), "API serving");
        Ok(ApiServer {
            rt,
            shared,
            stop,
            addr,
            grace: Duration::from_secs(cfg.shutdown_grace_s),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, answers new requests with 503, and waits
    /// up to the grace period for the requests in flight (an upload that is
    /// cut off stores nothing).
    pub fn shutdown(self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        let deadline = Instant::now() + self.grace;
        while self.shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.shared.active.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                requests = left,
                "API requests still running after the grace period are cut off"
            );
        } else {
            tracing::info!("API stopped");
        }
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.notified() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = stop.notified() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let sh = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move { Ok::<_, Infallible>(handle(sh, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api: connection ended");
            }
            drop(permit);
        });
    }
}

/// Counts a request in flight while it lives (a streamed response body
/// holds one until it is sent).
pub(crate) struct Active(Arc<Shared>);

impl Active {
    pub(crate) fn new(sh: &Arc<Shared>) -> Active {
        sh.active.fetch_add(1, Ordering::SeqCst);
        Active(sh.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The route a request path takes, as the metrics name it.
fn route_label(raw: &str) -> &'static str {
    match raw {
        "/api/files" | "/api/files/" => "namespaces",
        "/api/signed-url" => "signed_url",
        "/api/refs/resolve" => "refs_resolve",
        "/metrics" => "metrics",
        _ if raw.starts_with("/api/files/") => "files",
        _ if raw == "/api" || raw.starts_with("/api/") => "unknown",
        _ => "public",
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let _active = Active::new(&sh);
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route_name = route_label(sh.strip_base(&path));
    let resp = if sh.closing.load(Ordering::SeqCst) {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry shortly",
        )
        .closing()
        .into_response()
    } else {
        match route(&sh, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    };
    tracing::debug!(%method, path = %path, status = resp.status().as_u16(), "api");
    let m = crate::metrics::metrics();
    m.api_requests
        .get_or_create(&crate::metrics::ApiLabels {
            route: route_name,
            method: method.as_str().to_string(),
            status: resp.status().as_u16(),
        })
        .inc();
    m.api_seconds
        .get_or_create(&crate::metrics::RouteLabels { route: route_name })
        .observe(start.elapsed().as_secs_f64());
    resp
}

impl Shared {
    /// A request path without the public URL's path prefix (behind a proxy
    /// that keeps it, every route arrives under it).
    fn strip_base<'a>(&self, raw: &'a str) -> &'a str {
        if !self.base_path.is_empty()
            && let Some(r) = raw.strip_prefix(self.base_path.as_str())
            && r.starts_with('/')
        {
            return r;
        }
        raw
    }
}

async fn route(sh: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let raw = sh.strip_base(req.uri().path()).to_string();
    let method = req.method().clone();
    if raw == "/metrics" {
        return match method {
            hyper::Method::GET | hyper::Method::HEAD => {
                // Reading the queue takes the core's lock.
                let core = sh.core.clone();
                blocking(move || Ok(scrape::response(Some(&core)))).await
            }
            _ => Err(ApiError::method("GET, HEAD")),
        };
    }
    if raw == "/api/files" || raw == "/api/files/" {
        return match method {
            hyper::Method::GET | hyper::Method::HEAD => {
                let grant = sh.authorize(&req)?;
                files::list_namespaces(sh, &grant).await
            }
            _ => Err(ApiError::bad_path(
                "the path names no file; it starts with a namespace",
            )),
        };
    }
    if let Some(rest) = raw.strip_prefix("/api/files/") {
        let ap = path::parse(rest.as_bytes()).map_err(|e| ApiError::bad_path(e.to_string()))?;
        let grant = sh.authorize(&req)?;
        return match method {
            hyper::Method::GET | hyper::Method::HEAD => {
                sh.grant(&grant, &ap.ns, false)?;
                files::get(sh, &ap, &req, true).await
            }
            hyper::Method::PUT => {
                sh.grant(&grant, &ap.ns, true)?;
                files::put(sh, ap, req, &grant).await
            }
            hyper::Method::DELETE => {
                sh.grant(&grant, &ap.ns, true)?;
                files::delete(sh, &ap, &req).await
            }
            _ => Err(ApiError::method("GET, HEAD, PUT, DELETE")),
        };
    }
    if raw == "/api/signed-url" {
        if method != hyper::Method::POST {
            return Err(ApiError::method("POST"));
        }
        let grant = sh.authorize(&req)?;
        return files::sign(sh, &grant, req).await;
    }
    if raw == "/api/refs/resolve" {
        if method != hyper::Method::GET {
            return Err(ApiError::method("GET"));
        }
        let grant = sh.authorize(&req)?;
        return files::resolve(sh, &grant, &req).await;
    }
    if raw == "/api" || raw.starts_with("/api/") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    }
    // A public (signed) URL: {base path}/{namespace}/{path}.
    let rest = raw
        .strip_prefix('/')
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))?;
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return Err(ApiError::method("GET, HEAD"));
    }
    let ap = path::parse(rest.as_bytes()).map_err(|e| ApiError::bad_path(e.to_string()))?;
    let query = req.uri().query().unwrap_or("");
    let token = query_param(query, "token");
    let expires = query_param(query, "expires");
    match (token, expires) {
        (Some(t), Some(x)) => sh.check_signature(&ap, &x, &t)?,
        (None, None) if req.headers().contains_key(header::AUTHORIZATION) => {
            let grant = sh.authorize(&req)?;
            sh.grant(&grant, &ap.ns, false)?;
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this URL needs a signature (token and expires) or an API key",
            ));
        }
        _ => {
            return Err(ApiError::forbidden(
                "the signed URL is incomplete: it needs both token and expires",
            ));
        }
    }
    // Files only: a signed URL names a file, never a listing.
    files::get(sh, &ap, &req, false).await
}

/// The percent-decoded value of query parameter `name`.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            path::percent_decode(v.as_bytes())
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        })
    })
}

impl Shared {
    /// The grant of the request's bearer key.
    fn authorize<B>(&self, req: &Request<B>) -> Result<Grant, ApiError> {
        let unauthorized = |m: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m).with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"locker\""),
            )
        };
        let Some(h) = req.headers().get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "an API key is needed: Authorization: Bearer <key>",
            ));
        };
        let h = h.to_str().unwrap_or("");
        let key = match h.split_once(' ') {
            Some((scheme, k)) if scheme.eq_ignore_ascii_case("bearer") => k.trim(),
            _ => return Err(unauthorized("expected Authorization: Bearer <key>")),
        };
        self.keys
            .check(key)
            .cloned()
            .ok_or_else(|| unauthorized("the API key is not valid"))
    }

    /// Checks that `grant` may use namespace `ns` (for writing if
    /// `write`). Whether the namespace exists is told by the core call that
    /// follows (`files::core_err`).
    fn grant(&self, grant: &Grant, ns: &str, write: bool) -> Result<(), ApiError> {
        if !grant.allows(ns) {
            return Err(ApiError::forbidden(format!(
                "key {:?} may not use namespace {ns:?}",
                grant.name
            )));
        }
        if write && !grant.write {
            return Err(ApiError::forbidden(format!(
                "key {:?} may only read",
                grant.name
            )));
        }
        Ok(())
    }

    fn check_signature(
        &self,
        ap: &path::ApiPath,
        expires: &str,
        token: &str,
    ) -> Result<(), ApiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.signer.verify(&ap.joined(), expires, token, now) {
            Ok(()) => Ok(()),
            Err(auth::SignError::Expired(at)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "expired",
                format!(
                    "the signed URL expired at {}",
                    headers::rfc3339_secs(at as i64)
                ),
            )),
            Err(auth::SignError::BadSignature) => Err(ApiError::forbidden(
                "the signature does not match this path and expiry",
            )),
            Err(auth::SignError::Malformed) => Err(ApiError::forbidden(
                "the signed URL's token or expiry is malformed",
            )),
        }
    }
}

/// An error answer: status, a stable code and a message for people.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A failure inside the server: its cause (which can name files of
    /// the data directory, SQLite's words, a backend's answer) goes to the
    /// log under a number, and the client gets only the number.
    pub(crate) fn internal(cause: impl std::fmt::Display) -> ApiError {
        static INCIDENTS: AtomicU64 = AtomicU64::new(0);
        let n = INCIDENTS.fetch_add(1, Ordering::Relaxed) + 1;
        let incident = format!("{:x}-{n}", std::process::id());
        tracing::warn!(%incident, error = %cause, "api: request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request failed; the server's log tells why, as incident {incident}"),
        )
    }

    pub(crate) fn bad_path(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn method(allow: &'static str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this path takes {allow}"),
        )
        .with_header(header::ALLOW, HeaderValue::from_static(allow))
    }

    pub(crate) fn with_header(mut self, name: header::HeaderName, v: HeaderValue) -> ApiError {
        self.headers.push((name, v));
        self
    }

    /// The connection closes after this answer (an unread body is left).
    pub(crate) fn closing(self) -> ApiError {
        self.with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        let mut r = json_response(self.status, &body);
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        match e {
            CoreError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such file or directory",
            ),
            CoreError::IsDir => ApiError::new(
                StatusCode::CONFLICT,
                "is_directory",
                "the path is a directory",
            ),
            CoreError::NotDir => ApiError::new(
                StatusCode::CONFLICT,
                "not_a_directory",
                "a component of the path is a file, not a directory",
            ),
            CoreError::NameTooLong => ApiError::bad_path("a name is longer than 255 bytes"),
            e if e.is_no_space() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "no room to store it: the disk is full, or the cache is full of data not yet uploaded to its backend; retry later",
            ),
            CoreError::Invalid(m) | CoreError::NotPermitted(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            CoreError::PreconditionFailed => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the path does not hold the version If-Match or If-None-Match names; nothing was changed",
            ),
            e => ApiError::internal(e),
        }
    }
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Runs a blocking core call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is 507 whichever layer found it, and says so; other
    /// failures inside are 500 and say nothing of their cause.
    #[test]
    fn a_full_disk_is_507_and_other_failures_tell_only_a_number() {
        let full = [
            CoreError::NoSpace,
            CoreError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            CoreError::Io(std::io::Error::from_raw_os_error(libc::EDQUOT)),
            CoreError::Meta(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )),
        ];
        for e in full {
            let a = ApiError::from(e);
            assert_eq!(a.status, StatusCode::INSUFFICIENT_STORAGE);
        }
        let a = ApiError::from(CoreError::Corrupt("block 0123abcd is gone".into()));
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!a.message.contains("0123abcd"), "{}", a.message);
        assert!(a.message.contains("incident"), "{}", a.message);
    }
}
