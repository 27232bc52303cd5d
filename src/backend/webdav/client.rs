//! The HTTP side of the WebDAV backend: one pooled HTTP/1.1 client (hyper,
//! rustls for `https://`), basic authentication, a deadline on every
//! request, and the one map from HTTP statuses to `BackendError`.
//!
//! The password lives only in the `Authorization` header value, which is
//! marked sensitive and never formatted: no error, log line or `describe`
//! can show it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::xml;
use crate::backend::{BResult, BackendError, ErrorKind, cond_refused};

/// How long a TCP (and TLS) connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a request without a body to speak of (PROPFIND, MKCOL,
/// DELETE, PROPPATCH).
pub const META_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a request the server may take long over: COPY and MOVE
/// (the MOVE that assembles a chunked upload writes the whole file).
pub const LONG_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read into memory (a PROPFIND of a folder of 100,000
/// files is about 60 MiB).
pub const MAX_ANSWER: usize = 256 << 20;

/// The deadline of a transfer of `bytes`: half a minute, plus a second per MiB
/// (so a stalled link fails, and a slow one does not).
pub fn transfer_timeout(bytes: u64) -> Duration {
    META_TIMEOUT + Duration::from_secs(bytes >> 20)
}

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A request body fed by a channel: the bytes of a file read on the
/// blocking pool as the request goes out.
pub struct ChannelBody {
    pub rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    pub len: u64,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// An answer, with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    auth: HeaderValue,
    /// `scheme://authority`, as configured.
    pub origin: String,
}

impl Http {
    pub fn new(origin: &str, https: bool, user: &str, password: &str) -> Result<Http, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = tls_config(https)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // Idle connections are dropped before Apache's default keep-alive
        // timeout (5 s) closes them under a request about to be sent.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(16)
            .build(connector);
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|_| "the user name or password holds characters HTTP cannot carry")?;
        auth.set_sensitive(true);
        Ok(Http {
            client,
            auth,
            origin: origin.to_string(),
        })
    }

    /// A request of `method` to `path` (percent-encoded, from the root of
    /// the server), authenticated.
    pub fn request(&self, method: &Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.origin))
            .header(hyper::header::AUTHORIZATION, self.auth.clone())
            .header(hyper::header::USER_AGENT, "locker")
    }

    /// Sends `req` and reads the answer (at most `limit` bytes of body),
    /// all within `timeout`.
    pub async fn send(&self, req: Request<Body>, limit: usize, timeout: Duration) -> BResult<Resp> {
        let what = format!("{} {}", req.method(), req.uri().path());
        let run = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.transport_error(&what, &e))?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    BackendError::transient(format!("{what}: the answer broke off: {e}"))
                })?;
                if let Ok(d) = frame.into_data() {
                    if buf.len() + d.len() > limit {
                        // An error page or a listing too large: what was
                        // read is enough to act on.
                        let room = limit - buf.len();
                        buf.extend_from_slice(&d[..room]);
                        break;
                    }
                    buf.extend_from_slice(&d);
                }
            }
            Ok(Resp {
                status: parts.status,
                headers: parts.headers,
                body: Bytes::from(buf),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::transient(format!(
                    "{what}: no answer from {} within {} s",
                    self.origin,
                    timeout.as_secs()
                )))
            })
    }

    /// A GET whose body is read from byte `skip` on, at most `take` bytes
    /// (a server that ignores `Range` sends the whole file: what is not
    /// wanted is read past, never kept).
    pub async fn get(
        &self,
        req: Request<Body>,
        range_asked: bool,
        skip: u64,
        take: u64,
        timeout: Duration,
    ) -> BResult<(StatusCode, HeaderMap, Vec<u8>)> {
        let what = format!("GET {}", req.uri().path());
        let run = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.transport_error(&what, &e))?;
            let (parts, mut body) = resp.into_parts();
            let ok = parts.status.is_success();
            // A 206 starts at the range; a 200 at byte 0.
            let mut skip = if parts.status == StatusCode::PARTIAL_CONTENT || !range_asked {
                0
            } else {
                skip
            };
            let take = if ok { take } else { 64 << 10 };
            let mut buf = crate::buf::take(take.min(16 << 20) as usize);
            while (buf.len() as u64) < take {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let frame = frame.map_err(|e| {
                    BackendError::transient(format!("{what}: the answer broke off: {e}"))
                })?;
                let Ok(mut d) = frame.into_data() else {
                    continue;
                };
                if skip > 0 {
                    let n = skip.min(d.len() as u64);
                    skip -= n;
                    d = d.slice(n as usize..);
                }
                let room = (take - buf.len() as u64) as usize;
                buf.extend_from_slice(&d[..d.len().min(room)]);
            }
            Ok((parts.status, parts.headers, buf))
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::transient(format!(
                    "{what}: no answer from {} within {} s",
                    self.origin,
                    timeout.as_secs()
                )))
            })
    }

    fn transport_error(&self, what: &str, e: &hyper_util::client::legacy::Error) -> BackendError {
        // The chain of causes names the failure (refused, reset, TLS); none
        // of them holds the request's headers.
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            detail = format!("{detail}: {s}");
            src = s.source();
        }
        if e.is_connect() {
            BackendError::transient(format!("cannot reach {}: {detail}", self.origin))
        } else {
            BackendError::transient(format!("{what} at {}: {detail}", self.origin))
        }
    }
}

fn tls_config(https: bool) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            return Err(
                "no trusted CA certificates found on this machine (install ca-certificates)".into(),
            );
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub fn method(name: &'static str) -> Method {
    Method::from_bytes(name.as_bytes()).expect("a valid method name")
}

/// The error of an answer with an unexpected status, for `op` on `shown`
/// (a path inside the namespace, or the server's URL). Which statuses mean
/// what:
///
/// | status            | kind      | of the path only |
/// |-------------------|-----------|------------------|
/// | 404, 410          | NotFound  | yes              |
/// | 412               | Transient | yes (changed meanwhile: look again) |
/// | 423 Locked        | Transient | yes (open in a client)              |
/// | 408, 429, 5xx but 501, 507 | Transient | no (the server is in trouble) |
/// | 501               | Permanent | no (a method the server lacks: not WebDAV) |
/// | 507 quota         | Permanent | yes              |
/// | 401               | Permanent | no (credentials) |
/// | 400, 403, 409, 413, 414, 415 and other 4xx | Permanent | yes (a name the server refuses, a denied folder) |
/// | 3xx               | Permanent | no (the URL is not the DAV root)    |
pub fn status_error(op: &str, shown: &str, resp: &Resp) -> BackendError {
    let s = resp.status.as_u16();
    let reason = resp.status.canonical_reason().unwrap_or("");
    let detail = match xml::error_message(&resp.body) {
        Some(m) => format!("HTTP {s} {reason}: {m}"),
        None => format!("HTTP {s} {reason}"),
    };
    let msg = format!("{op} {shown}: {detail}");
    match s {
        404 | 410 => BackendError::not_found(msg).for_path(),
        412 => cond_refused(shown),
        423 => BackendError::transient(format!("{msg} (open or locked in a client; retried)"))
            .for_path(),
        408 | 429 => BackendError::transient(msg),
        507 => BackendError::permanent(format!("{msg} (the account's quota is full)")).for_path(),
        // A method the server does not have: not a passing trouble.
        501 => BackendError::permanent(msg),
        500..=599 => BackendError::transient(msg),
        401 => BackendError::permanent(format!(
            "{op} {shown}: the server refused the user name or password (HTTP 401)"
        )),
        300..=399 => BackendError::permanent(format!(
            "{msg}: redirected{}; set url to the WebDAV folder itself",
            resp.header("location")
                .map(|l| format!(" to {l}"))
                .unwrap_or_default()
        )),
        _ => BackendError::new(ErrorKind::Permanent, msg).for_path(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> Resp {
        Resp {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        let e = status_error("put", "a.txt", &resp(423, ""));
        assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");
        let e = status_error("put", "a.txt", &resp(412, ""));
        assert!(e.kind == ErrorKind::Transient && e.path_only, "{e}");
        let e = status_error("put", "a.txt", &resp(503, ""));
        assert!(e.kind == ErrorKind::Transient && !e.path_only, "{e}");
        let e = status_error("put", "a.txt", &resp(429, ""));
        assert!(e.kind == ErrorKind::Transient && !e.path_only, "{e}");
        let e = status_error("put", "a.txt", &resp(507, ""));
        assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
        assert!(e.message.contains("quota"), "{e}");
        let e = status_error("put", "a.txt", &resp(403, ""));
        assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
        let e = status_error("list", "/", &resp(501, ""));
        assert!(e.kind == ErrorKind::Permanent && !e.path_only, "{e}");
        let e = status_error("put", "a.txt", &resp(401, ""));
        assert!(e.kind == ErrorKind::Permanent && !e.path_only, "{e}");
        let e = status_error("get", "a.txt", &resp(404, ""));
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn nextcloud_refusals_keep_their_message() {
        let body = r#"<?xml version="1.0"?><d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns"><s:exception>OCA\DAV\Connector\Sabre\Exception\InvalidPath</s:exception><s:message>.htaccess is a forbidden file name</s:message></d:error>"#;
        let e = status_error("put", ".htaccess", &resp(400, body));
        assert!(e.kind == ErrorKind::Permanent && e.path_only, "{e}");
        assert!(e.message.contains("forbidden file name"), "{e}");
    }

    #[test]
    fn authorization_is_sensitive_and_not_in_debug_output() {
        // Made up for the run.
        let pw = format!("{:016x}", fastrand::u64(..));
        let h = Http::new("http://127.0.0.1:1", false, "alice", &pw).unwrap();
        assert!(h.auth.is_sensitive());
        let req = h.request(&Method::GET, "/x").body(empty()).unwrap();
        let shown = format!("{req:?}");
        let token = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
        assert!(!shown.contains(&token) && !shown.contains(&pw), "{shown}");
    }
}
