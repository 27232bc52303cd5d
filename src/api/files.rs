//! The file endpoints: PUT (streamed into the store, placed whole), GET and
//! HEAD (streamed from a snapshot, with ranges and validators), DELETE,
//! directory listings, signed URLs and reference resolution.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::Grant;
use super::headers::{self, RangeReq};
use super::path::{self, ApiPath};
use super::{ApiError, Body, Shared, blocking, empty, full, json_response};
use crate::blocks::{BLOCK_SIZE, INLINE_MAX, hex};
use crate::core::hot::{HotFile, hot_key};
use crate::core::namespace::{REF_SCHEME, encode_ref_path};
use crate::core::objects::{ListEntry, Precondition, Tag, Upload};
use crate::core::sync::FileSnap;
use crate::core::{CoreError, FileKind, Locker};

/// Bytes handed to the core at once while a body streams in, and read from
/// it at once while one streams out.
const CHUNK: usize = BLOCK_SIZE as usize;
/// A body that sends nothing for this long is abandoned.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// Largest JSON request body.
const JSON_MAX: u64 = 64 << 10;

fn names(ap: &ApiPath) -> Vec<Vec<u8>> {
    let mut v = vec![ap.ns.as_bytes().to_vec()];
    v.extend(ap.names.iter().map(|n| n.as_bytes().to_vec()));
    v
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|n| n.as_slice()).collect()
}

fn reference(path: &[u8]) -> String {
    format!("{REF_SCHEME}{}", encode_ref_path(path))
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        _ => "other",
    }
}

/// The error of a core call on a path in namespace `ns`: a missing entry
/// whose namespace does not exist is reported as an unknown namespace.
pub(super) fn core_err(core: &Locker, ns: &str, e: CoreError) -> ApiError {
    if matches!(e, CoreError::NotFound) && !ns_exists(core, ns) {
        return unknown_ns(ns);
    }
    e.into()
}

fn ns_exists(core: &Locker, ns: &str) -> bool {
    !matches!(core.stat_names(&[ns.as_bytes()]), Err(CoreError::NotFound))
}

fn unknown_ns(ns: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_namespace",
        format!("there is no namespace {ns:?}"),
    )
}

fn not_a_file() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_a_file",
        "the path is not a regular file (the API does not follow symlinks)",
    )
}

impl Shared {
    fn public_url(&self, ap: &ApiPath) -> String {
        format!("{}/{}", self.base_url, ap.url_path())
    }

    fn api_url(&self, ap: &ApiPath) -> String {
        format!("{}/api/files/{}", self.base_url, ap.url_path())
    }
}

/// Files up to this size are read with their lookup.
const SMALL: u64 = 256 << 10;

/// What a GET found.
enum Found {
    Dir(crate::meta::InodeRow),
    /// A small file, read whole (kept for the next GET).
    Small(Arc<HotFile>),
    /// A file read from its snapshot as the response goes.
    File {
        guard: SnapGuard,
        tag: Tag,
        mime: Option<Vec<u8>>,
    },
}

/// Where a response's bytes come from.
enum Source {
    Mem(Bytes),
    Snap(SnapGuard),
}

/// Runs core work a `Drop` needs done on the blocking pool when in the
/// runtime (it takes the state lock), else right here.
fn off_the_event_loop(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(f);
        }
        Err(_) => f(),
    }
}

/// Releases a snapshot's pins when dropped (on the blocking pool when in
/// the runtime: the release takes the state lock).
struct SnapGuard {
    core: Arc<Locker>,
    snap: Option<FileSnap>,
}

impl SnapGuard {
    fn new(core: Arc<Locker>, snap: FileSnap) -> SnapGuard {
        SnapGuard {
            core,
            snap: Some(snap),
        }
    }

    fn snap(&self) -> &FileSnap {
        self.snap.as_ref().expect("taken only when dropped")
    }

    /// `len` bytes from `offset`, for a reader going on in order up to
    /// `upto` (see `Locker::snap_read`).
    fn read(&self, offset: u64, len: u64, upto: u64) -> Result<Vec<u8>, CoreError> {
        self.core.snap_read(self.snap(), offset, len, upto)
    }

    /// Releases the snapshot here and now (on the blocking pool already).
    fn release_now(mut self) {
        if let Some(snap) = self.snap.take() {
            self.core.sync_release(&snap);
        }
    }
}

impl Drop for SnapGuard {
    fn drop(&mut self) {
        let (core, Some(snap)) = (self.core.clone(), self.snap.take()) else {
            return;
        };
        off_the_event_loop(move || core.sync_release(&snap));
    }
}

/// `GET /api/files` — the namespaces the key may use.
pub(super) async fn list_namespaces(
    sh: &Arc<Shared>,
    grant: &Grant,
) -> Result<Response<Body>, ApiError> {
    let core = sh.core.clone();
    let all = blocking(move || {
        let ns = core.list(crate::core::InodeNo::ROOT)?;
        Ok(ns)
    })
    .await?;
    let entries: Vec<serde_json::Value> = all
        .iter()
        .filter(|e| grant.allows(&String::from_utf8_lossy(&e.name)))
        .map(entry_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"path": "", "entries": entries}),
    ))
}

fn entry_json(e: &ListEntry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": String::from_utf8_lossy(&e.name),
        "type": kind_name(e.kind),
        "size": e.size,
        "mtime": headers::rfc3339(e.mtime),
    });
    if let Some(h) = &e.sha256 {
        v["sha256"] = hex(h).into();
    }
    v
}

/// `GET`/`HEAD` of a file, or, if `listings`, a directory's listing.
pub(super) async fn get(
    sh: &Arc<Shared>,
    ap: &ApiPath,
    req: &Request<Incoming>,
    listings: bool,
) -> Result<Response<Body>, ApiError> {
    let head = req.method() == hyper::Method::HEAD;
    let core = sh.core.clone();
    let n = names(ap);
    let ns = ap.ns.clone();
    let key = hot_key(&refs(&n));
    // A small file read since the last change anywhere: from memory, on
    // the event loop (see core/hot.rs).
    let found = match core.hot_get(&key) {
        Some(f) => Found::Small(f),
        // One trip to the blocking pool finds the entry, snapshots it (the
        // committed version, its blocks pinned, read without the state
        // lock), hashes it if its hash is not known, and reads it if it is
        // small.
        None => {
            blocking(move || {
                let read_at = core.generation();
                // Looked up and snapshotted as one: a file renamed over the
                // path in between is the one read, never a 404.
                let (row, snap) = core
                    .snapshot_names(&refs(&n), !head)
                    .map_err(|e| core_err(&core, &ns, e))?;
                match (row.attr.kind, snap) {
                    (FileKind::Dir, _) if listings => Ok(Found::Dir(row)),
                    (FileKind::File, Some(snap)) => {
                        let mime = core.mime_type(row.attr.ino)?;
                        let guard = SnapGuard::new(core.clone(), snap);
                        let tag = guard.core.snap_tag(guard.snap())?;
                        let size = guard.snap().size;
                        if head || size > SMALL {
                            return Ok(Found::File { guard, tag, mime });
                        }
                        let data = Bytes::from(guard.read(0, size, size)?);
                        let mtime = guard.snap().mtime;
                        guard.release_now();
                        let f = Arc::new(HotFile {
                            etag: tag,
                            mtime,
                            mime,
                            data,
                        });
                        core.hot_put(key, read_at, f.clone());
                        Ok(Found::Small(f))
                    }
                    _ => Err(not_a_file()),
                }
            })
            .await?
        }
    };
    let (tag, size, mtime, mime, source) = match found {
        Found::Dir(row) => {
            let head_json = serde_json::json!({
                "path": ap.joined(),
                "ref": reference(ap.joined().as_bytes()),
                "type": "dir",
                "mtime": headers::rfc3339(row.attr.mtime),
            });
            // For HEAD, hyper sends the headers only and drops the body,
            // which stops the listing.
            let mut r = Response::new(stream_listing(sh, row.attr.ino, head_json));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        Found::Small(f) => (
            f.etag,
            f.data.len() as u64,
            f.mtime,
            f.mime.clone(),
            Source::Mem(f.data.clone()),
        ),
        Found::File { guard, tag, mime } => {
            let (size, mtime) = (guard.snap().size, guard.snap().mtime);
            (tag, size, mtime, mime, Source::Snap(guard))
        }
    };
    let etag = format!("\"{tag}\"");
    let mime = match mime {
        Some(m) => String::from_utf8_lossy(&m).into_owned(),
        None => headers::guess_mime(ap.names.last().map_or("", |s| s.as_str())).to_string(),
    };
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::ETAG, hv(&etag));
    h.insert(header::LAST_MODIFIED, hv(&headers::http_date(mtime)));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // A stored type is served as it is, never guessed at by a browser.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let rh = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let not_modified = match rh(header::IF_NONE_MATCH) {
        Some(inm) => headers::none_match(inm, &etag),
        None => {
            rh(header::IF_MODIFIED_SINCE).is_some_and(|d| headers::not_modified_since(d, mtime))
        }
    };
    if not_modified {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = h;
        return Ok(r);
    }
    h.insert(header::CONTENT_TYPE, hv(&mime));
    // If-Range: the range only applies to the version the client names.
    let range_applies = rh(header::IF_RANGE).is_none_or(|v| v.trim() == etag);
    let (status, start, end) = match rh(header::RANGE).filter(|_| range_applies) {
        None => (StatusCode::OK, 0, size),
        Some(r) => match headers::parse_range(r, size) {
            RangeReq::Whole => (StatusCode::OK, 0, size),
            RangeReq::Part(s, e) => {
                h.insert(
                    header::CONTENT_RANGE,
                    hv(&format!("bytes {s}-{}/{size}", e - 1)),
                );
                (StatusCode::PARTIAL_CONTENT, s, e)
            }
            RangeReq::Unsatisfiable => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "bad_range",
                    format!("the range does not fit the file's {size} bytes"),
                )
                .with_header(header::CONTENT_RANGE, hv(&format!("bytes */{size}"))));
            }
        },
    };
    h.insert(header::CONTENT_LENGTH, hv(&(end - start).to_string()));
    let body = match source {
        _ if head || start == end => empty(),
        Source::Mem(all) => full(all.slice(start as usize..end as usize)),
        Source::Snap(guard) if end - start <= CHUNK as u64 => {
            let data = blocking(move || {
                let d = guard.read(start, end - start, end)?;
                Ok(d)
            })
            .await?;
            full(data)
        }
        Source::Snap(guard) => stream_body(sh, guard, start, end),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    Ok(r)
}

/// A body fed by a blocking reader thread through a small channel: at
/// most a few chunks are in memory, and a client that goes away stops the
/// reader.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    /// Bytes still to come, when known.
    left: Option<u64>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.left = self.left.map(|l| l.saturating_sub(b.len() as u64));
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A body that a client stops reading for this long is abandoned.
const SEND_IDLE: Duration = Duration::from_secs(60);

/// Streams bytes `start..end` of a snapshot: each chunk is read on the
/// blocking pool (no thread waits on the client), at most two wait in the
/// channel, and the request counts as in flight until the last is sent.
fn stream_body(sh: &Arc<Shared>, guard: SnapGuard, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let active = super::Active::new(sh);
    tokio::spawn(async move {
        let _active = active;
        let guard = Arc::new(guard);
        let mut off = start;
        while off < end {
            // Whole blocks after the first, so each read touches one block.
            let n = (CHUNK as u64 - off % CHUNK as u64).min(end - off);
            let g = guard.clone();
            let r = match tokio::task::spawn_blocking(move || g.read(off, n, end)).await {
                Ok(Ok(v)) => Ok(crate::buf::into_bytes(v)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "api: a read failed while sending a file");
                    Err(io::Error::other(e.to_string()))
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let failed = r.is_err();
            match tokio::time::timeout(SEND_IDLE, tx.send(r)).await {
                Ok(Ok(())) if !failed => off += n,
                _ => break,
            }
        }
    });
    ChannelBody {
        rx,
        left: Some(end - start),
    }
    .boxed()
}

/// Streams a directory's listing as one JSON object: `head` (path, ref,
/// type, mtime) with `"entries": [...]` filled page by page, each page read
/// on the blocking pool with the state lock held for that page only, at
/// most two pages waiting in the channel.
fn stream_listing(sh: &Arc<Shared>, dir: crate::core::InodeNo, head: serde_json::Value) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let active = super::Active::new(sh);
    let core = sh.core.clone();
    tokio::spawn(async move {
        let _active = active;
        // The object without its closing brace, then the entries.
        let mut open = serde_json::to_vec(&head).unwrap_or_default();
        open.pop();
        open.extend_from_slice(if head.as_object().is_some_and(|o| o.is_empty()) {
            b"\"entries\":["
        } else {
            b",\"entries\":["
        });
        let mut chunk = open;
        let mut after: Option<Vec<u8>> = None;
        let mut first = true;
        loop {
            let (c, a) = (core.clone(), after.clone());
            let page = tokio::task::spawn_blocking(move || {
                c.list_page(dir, a.as_deref(), crate::core::objects::LIST_PAGE)
            })
            .await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "api: listing a directory failed midway");
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let last = page.len() < crate::core::objects::LIST_PAGE;
            after = page.last().map(|e| e.name.clone());
            for e in &page {
                if !first {
                    chunk.push(b',');
                }
                first = false;
                chunk.extend(serde_json::to_vec(&entry_json(e)).unwrap_or_default());
            }
            if last {
                chunk.extend_from_slice(b"]}\n");
            }
            let out = std::mem::take(&mut chunk);
            match tokio::time::timeout(SEND_IDLE, tx.send(Ok(Bytes::from(out)))).await {
                Ok(Ok(())) if !last => {}
                _ => return,
            }
        }
    });
    ChannelBody { rx, left: None }.boxed()
}

/// Where an upload stands.
enum Slot {
    /// Nothing written yet.
    Fresh,
    Active(Upload),
    /// Abandoned (the request went away) or finished: nothing more may be
    /// written or placed.
    Closed,
}

impl Slot {
    /// The upload to write to, begun if fresh.
    fn active(&mut self, core: &Locker) -> Result<&mut Upload, ApiError> {
        if matches!(self, Slot::Fresh) {
            *self = Slot::Active(core.upload_begin()?);
        }
        match self {
            Slot::Active(u) => Ok(u),
            _ => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the upload was abandoned",
            )),
        }
    }
}

/// An upload that is removed unless it is placed.
struct UploadGuard {
    core: Arc<Locker>,
    up: Arc<Mutex<Slot>>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let (core, up) = (self.core.clone(), self.up.clone());
        off_the_event_loop(move || {
            let old = std::mem::replace(
                &mut *up.lock().unwrap_or_else(|p| p.into_inner()),
                Slot::Closed,
            );
            if let Slot::Active(u) = old {
                core.upload_abort(u);
            }
        });
    }
}

/// `PUT` — streams the body into the store and places it whole.
pub(super) async fn put(
    sh: &Arc<Shared>,
    ap: ApiPath,
    req: Request<Incoming>,
    grant: &Grant,
) -> Result<Response<Body>, ApiError> {
    let Some((dirs, name)) = ap.split_last() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_directory",
            "the path is a namespace; PUT needs a file name",
        ));
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is larger than the limit of {} MiB; nothing was stored",
                sh.max_body >> 20
            ),
        )
        .closing()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > sh.max_body) {
        return Err(too_large());
    }
    let mime = match req.headers().get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => {
            let ok = v.len() <= 255 && v.as_bytes().iter().all(|&c| (0x20..0x7f).contains(&c));
            if !ok {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "Content-Type must be printable ASCII of at most 255 bytes",
                )
                .closing());
            }
            Some(v.as_bytes().to_vec())
        }
    };
    let cond = precondition(&req);
    let mut dir_names = vec![ap.ns.as_bytes().to_vec()];
    dir_names.extend(dirs.iter().map(|d| d.as_bytes().to_vec()));
    let name = name.as_bytes().to_vec();
    // A body that goes into the database whole is read first and placed in
    // one call, which refuses what the look below would. A larger one:
    // refuse early what the placement would refuse (a directory at the
    // path, or a file where a directory is needed), before its bytes come.
    let small = declared.is_some_and(|n| n < INLINE_MAX as u64);
    if !small {
        let core = sh.core.clone();
        let (d, n) = (dir_names.clone(), name.clone());
        let early = cond.clone();
        blocking(move || {
            let mut all = d.clone();
            all.push(n);
            // A condition that fails now fails the placement too: said
            // before the body comes.
            if !core.precondition_holds(&refs(&all), &early)? {
                return Err(CoreError::PreconditionFailed.into());
            }
            match core.stat_names(&refs(&all)) {
                Ok(r) if r.attr.kind == FileKind::Dir => Err(CoreError::IsDir.into()),
                Ok(_) => Ok(()),
                Err(CoreError::NotFound)
                    if !ns_exists(&core, &String::from_utf8_lossy(&all[0])) =>
                {
                    Err(unknown_ns(&String::from_utf8_lossy(&all[0])))
                }
                Err(CoreError::NotFound) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(ApiError::closing)?;
    }
    // The upload starts with the first full chunk; a small body is stored
    // with one call into the core when it has arrived whole.
    let guard = UploadGuard {
        core: sh.core.clone(),
        up: Arc::new(Mutex::new(Slot::Fresh)),
    };
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    // Chunks of reused buffers, given back when dropped.
    let mut buf = crate::buf::Owned::from(crate::buf::take(CHUNK));
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the body stalled; nothing was stored",
                )
                .closing());
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(path = %ap.joined(), error = %e, "api: an upload was cut off; nothing was stored");
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "incomplete_body",
                    "the body ended before its declared length; nothing was stored",
                )
                .closing());
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > sh.max_body {
            return Err(too_large());
        }
        hasher.update(&data);
        // Whole chunks, so that a buffer never grows past its size.
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = (CHUNK - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if buf.len() == CHUNK {
                let chunk = std::mem::replace(&mut buf, crate::buf::take(CHUNK).into());
                write_chunk(&guard, chunk).await?;
            }
        }
    }
    let sha: [u8; 32] = hasher.finalize().into();
    let core = sh.core.clone();
    let up = guard.up.clone();
    let grant = grant.clone();
    let ns = ap.ns.clone();
    let placed = blocking(move || {
        // Content found elsewhere is named only where this key may read.
        let visible = |ns: &[u8]| grant.allows(&String::from_utf8_lossy(ns));
        let mut slot = up.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*slot, Slot::Fresh) && buf.len() < INLINE_MAX as usize {
            *slot = Slot::Closed;
            return match core.put_small_if(
                &buf,
                &refs(&dir_names),
                &name,
                sha,
                mime.as_deref(),
                &visible,
                &cond,
            ) {
                Err(CoreError::NotFound) if !ns_exists(&core, &ns) => Err(unknown_ns(&ns)),
                r => Ok(r?),
            };
        }
        slot.active(&core)?;
        let Slot::Active(mut u) = std::mem::replace(&mut *slot, Slot::Closed) else {
            unreachable!("made active above")
        };
        if let Err(e) = core.upload_write(&mut u, &buf) {
            core.upload_abort(u);
            return Err(e.into());
        }
        Ok(core.upload_finish_if(
            u,
            &refs(&dir_names),
            &name,
            sha,
            mime.as_deref(),
            &visible,
            &cond,
        )?)
    })
    .await?;
    let mut body = serde_json::json!({
        "ref": reference(ap.joined().as_bytes()),
        "url": sh.public_url(&ap),
        "sha256": hex(&sha),
        "size_bytes": placed.size,
        "deduplicated": placed.existing.is_some(),
    });
    if let Some(p) = &placed.existing {
        body["existing_ref"] = reference(p).into();
    }
    tracing::debug!(path = %ap.joined(), size = placed.size, "api: stored");
    let status = if placed.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut r = json_response(status, &body);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", hex(&sha))) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

async fn write_chunk(guard: &UploadGuard, chunk: crate::buf::Owned) -> Result<(), ApiError> {
    let core = guard.core.clone();
    let up = guard.up.clone();
    blocking(move || {
        let mut slot = up.lock().unwrap_or_else(|p| p.into_inner());
        let u = slot.active(&core)?;
        Ok(core.upload_write(u, &chunk)?)
    })
    .await
    .map_err(ApiError::closing)
}

/// The condition a write or a removal carries: `If-Match` and
/// `If-None-Match`, whose entity tags are the SHA-256s GET hands out.
fn precondition<B>(req: &Request<B>) -> Precondition {
    let tags = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(headers::condition_tags)
    };
    Precondition {
        if_match: tags(header::IF_MATCH),
        if_none_match: tags(header::IF_NONE_MATCH),
    }
}

/// `DELETE` — removes a file (if it meets the request's `If-Match` /
/// `If-None-Match`).
pub(super) async fn delete<B>(
    sh: &Arc<Shared>,
    ap: &ApiPath,
    req: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let core = sh.core.clone();
    let n = names(ap);
    let ns = ap.ns.clone();
    let cond = precondition(req);
    blocking(move || {
        core.remove_names_if(&refs(&n), &cond)
            .map_err(|e| core_err(&core, &ns, e))
    })
    .await?;
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    path: String,
    expires_in: Option<u64>,
}

/// Reads a small body whole.
async fn read_small(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a JSON body is at most {} KiB", JSON_MAX >> 10),
        )
        .closing()
    };
    let limited = http_body_util::Limited::new(req.into_body(), JSON_MAX as usize);
    match tokio::time::timeout(BODY_IDLE, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            "the body could not be read",
        )
        .closing()),
    }
}

/// `POST /api/signed-url` — `{path, expires_in}` → `{signed_url}`.
pub(super) async fn sign(
    sh: &Arc<Shared>,
    grant: &Grant,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = read_small(req).await?;
    let r: SignRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("expected {{\"path\": \"ns/dir/file\", \"expires_in\": seconds}}: {e}"),
        )
    })?;
    let ap = if r.path.starts_with(REF_SCHEME) {
        path::parse_ref(&r.path)
    } else {
        path::parse_plain(&r.path)
    }
    .map_err(|e| ApiError::bad_path(e.to_string()))?;
    let expires_in = r.expires_in.unwrap_or(sh.default_expires);
    if expires_in == 0 || expires_in > sh.max_expires {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_expiry",
            format!("expires_in must be 1 to {} seconds", sh.max_expires),
        ));
    }
    sh.grant(grant, &ap.ns, false)?;
    let core = sh.core.clone();
    let n = names(&ap);
    let ns = ap.ns.clone();
    blocking(move || {
        let row = core
            .stat_names(&refs(&n))
            .map_err(|e| core_err(&core, &ns, e))?;
        match row.attr.kind {
            FileKind::File => Ok(()),
            _ => Err(not_a_file()),
        }
    })
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + expires_in;
    let url = signed_url(sh, &ap, expires);
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "signed_url": url,
            "expires": expires,
            "expires_at": headers::rfc3339_secs(expires as i64),
        }),
    ))
}

/// The signed URL of `ap` valid until `expires`.
fn signed_url(sh: &Shared, ap: &ApiPath, expires: u64) -> String {
    let token = sh.signer.sign(&ap.joined(), expires);
    format!("{}?token={token}&expires={expires}", sh.public_url(ap))
}

/// `GET /api/refs/resolve?ref=locker://ns/path` — the entry's metadata and
/// URLs.
pub(super) async fn resolve(
    sh: &Arc<Shared>,
    grant: &Grant,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let r = req
        .uri()
        .query()
        .and_then(|q| super::query_param(q, "ref"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give the reference: ?ref=locker://namespace/path",
            )
        })?;
    let ap = path::parse_ref(&r)
        .map_err(|e| ApiError::bad_path(format!("not a locker://namespace/path reference: {e}")))?;
    sh.grant(grant, &ap.ns, false)?;
    let core = sh.core.clone();
    let n = names(&ap);
    let ns = ap.ns.clone();
    let (row, tag, mime) = blocking(move || {
        let (row, snap) = core
            .snapshot_names(&refs(&n), false)
            .map_err(|e| core_err(&core, &ns, e))?;
        let Some(snap) = snap else {
            return Ok((row, None, None));
        };
        let g = SnapGuard::new(core, snap);
        let tag = g.core.snap_tag(g.snap())?;
        let mime = g.core.mime_type(row.attr.ino)?;
        Ok((row, Some(tag), mime))
    })
    .await?;
    let mut v = serde_json::json!({
        "ref": reference(ap.joined().as_bytes()),
        "path": ap.joined(),
        "type": kind_name(row.attr.kind),
        "size_bytes": row.attr.size,
        "mtime": headers::rfc3339(row.attr.mtime),
        "url": sh.public_url(&ap),
        "api_url": sh.api_url(&ap),
    });
    if let Some(tag) = tag {
        if let Tag::Sha256(h) = tag {
            v["sha256"] = hex(&h).into();
        }
        v["content_type"] = match mime {
            Some(m) => String::from_utf8_lossy(&m).into_owned(),
            None => headers::guess_mime(ap.names.last().map_or("", |s| s.as_str())).to_string(),
        }
        .into();
    }
    Ok(json_response(StatusCode::OK, &v))
}
