//! The `s3` backend: any S3-compatible store (AWS, Cloudflare R2, Garage,
//! MinIO), through aws-sdk-s3, within the API they all share.
//!
//! - Request checksums are sent only when an operation requires them (R2
//!   rejects the SDK's default trailing checksums); every body carries
//!   Content-MD5 instead, so the store refuses a corrupted upload, and the
//!   returned ETag (the MD5, or MD5 of part MD5s for multipart) confirms it.
//! - Multipart parts are equal-sized except the last (R2 requires it).
//! - Credentials: a 0600 file named by the config, a profile, or the
//!   standard AWS environment variables then the default profile. They
//!   never appear in logs or errors.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider, retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier,
};
use base64::Engine;
use md5::{Digest, Md5};

use super::{
    BResult, Backend, BackendError, Cond, ErrorKind, Multipart, ObjInfo, ObjKind, ObjMeta,
    check_key, cond_holds, cond_refused, hex, unhex32,
};
use crate::config::NamespaceConfig;

const META_SHA: &str = "sha256";
const META_MTIME: &str = "mtime";
const META_MODE: &str = "mode";
const META_TYPE: &str = "locker-type";
/// The SHA-256 of the version an upload replaced (`ObjMeta::base`).
const META_BASE: &str = "locker-base";
/// CopyObject's limit; larger objects are copied in parts.
const COPY_MAX: u64 = 5 << 30;
/// Part size of a copy in parts (equal parts, as R2 requires).
const COPY_PART: u64 = 1 << 30;

pub struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
}

/// Reads a credentials file: `key = value` lines, `#` comments. It must not
/// be readable by group or others.
fn read_credentials_file(path: &Path) -> Result<Credentials, String> {
    let text = crate::config::read_private_file(path, "credentials")?;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "credentials file {} line {}: expected `key = value`",
                path.display(),
                n + 1
            ));
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "access_key_id" | "aws_access_key_id" => id = Some(v),
            "secret_access_key" | "aws_secret_access_key" => secret = Some(v),
            "session_token" | "aws_session_token" => token = Some(v),
            other => {
                return Err(format!(
                    "credentials file {} line {}: unknown key {other:?}",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(Credentials::new(
            id,
            secret,
            token,
            None,
            "locker-credentials-file",
        )),
        _ => Err(format!(
            "credentials file {} needs access_key_id and secret_access_key",
            path.display()
        )),
    }
}

/// Maps an SDK error to a kind and a message (no secrets: the SDK's errors
/// carry none).
fn classify<E, R>(what: &str, key: &str, e: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let mut path_only = false;
    let (kind, detail) = match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            let code = se.err().code().unwrap_or("").to_string();
            let kind = match (status, code.as_str()) {
                (404, "NoSuchBucket") => ErrorKind::Permanent,
                (404, _) => ErrorKind::NotFound,
                (_, "NoSuchKey") | (_, "NotFound") => ErrorKind::NotFound,
                (_, "RequestTimeout") | (_, "SlowDown") | (_, "InternalError") => {
                    ErrorKind::Transient
                }
                // A conditional write found the object changed: look again.
                (412, _) | (409, "ConditionalRequestConflict") => {
                    path_only = true;
                    ErrorKind::Transient
                }
                (408, _) | (429, _) => ErrorKind::Transient,
                (s, _) if s >= 500 => ErrorKind::Transient,
                (401 | 403, _) => ErrorKind::Permanent,
                _ => {
                    // A key too long, a failed precondition: this object only.
                    path_only = true;
                    ErrorKind::Permanent
                }
            };
            let msg = se.err().message().unwrap_or("").to_string();
            let detail = match (code.is_empty(), msg.is_empty()) {
                (true, _) => format!("HTTP {status}"),
                (false, true) => format!("HTTP {status} {code}"),
                (false, false) => format!("HTTP {status} {code}: {msg}"),
            };
            (kind, detail)
        }
        SdkError::ConstructionFailure(_) => {
            (ErrorKind::Permanent, format!("{}", DisplayErrorContext(&e)))
        }
        SdkError::DispatchFailure(d) => {
            // No credentials at all shows up here too: that needs the admin.
            let text = format!("{}", DisplayErrorContext(&e));
            if d.is_user() && text.contains("credentials") {
                (ErrorKind::Permanent, "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or credentials_file".to_string())
            } else {
                (ErrorKind::Transient, text)
            }
        }
        _ => (ErrorKind::Transient, format!("{}", DisplayErrorContext(&e))),
    };
    let err = BackendError::new(kind, format!("{what} {key}: {detail}"));
    if path_only { err.for_path() } else { err }
}

/// The HTTP status of a raw response, for `classify`.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn md5_b64(data: &[u8]) -> (String, [u8; 16]) {
    let d: [u8; 16] = Md5::digest(data).into();
    (base64::engine::general_purpose::STANDARD.encode(d), d)
}

/// If-Match / If-None-Match for a condition.
fn cond_headers(cond: &Cond) -> (Option<String>, Option<String>) {
    match cond {
        Cond::Any => (None, None),
        Cond::IfMatch(e) => (Some(format!("\"{e}\"")), None),
        Cond::IfAbsent => (None, Some("*".to_string())),
    }
}

/// What an error `DeleteObjects` reports for one key means, as `classify`
/// reads a request's.
fn batch_error(full: &str, code: &str, msg: &str) -> BackendError {
    let kind = match code {
        "PreconditionFailed" | "ConditionalRequestConflict" => {
            return cond_refused(full);
        }
        "InternalError" | "SlowDown" | "ServiceUnavailable" | "RequestTimeout" => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Permanent,
    };
    BackendError::new(kind, format!("delete {full}: {code}: {msg}")).for_path()
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

fn meta_map(meta: &ObjMeta) -> HashMap<String, String> {
    let mut m = HashMap::new();
    if let Some(s) = meta.sha256 {
        m.insert(META_SHA.to_string(), hex(&s));
    }
    if let Some(t) = meta.mtime {
        m.insert(META_MTIME.to_string(), super::format_mtime(t));
    }
    if let Some(mode) = meta.mode {
        m.insert(META_MODE.to_string(), format!("{:o}", mode & 0o7777));
    }
    if let Some(b) = meta.base {
        m.insert(META_BASE.to_string(), hex(&b));
    }
    m
}

fn meta_from(m: Option<&HashMap<String, String>>) -> ObjMeta {
    let get = |k: &str| m.and_then(|m| m.get(k).map(String::as_str));
    ObjMeta {
        sha256: get(META_SHA).and_then(unhex32),
        mtime: get(META_MTIME).and_then(super::parse_mtime),
        mode: get(META_MODE).and_then(|s| u32::from_str_radix(s, 8).ok()),
        base: get(META_BASE).and_then(unhex32),
    }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping '/'.
fn encode_copy_source(bucket: &str, key: &str) -> String {
    let mut s = String::with_capacity(bucket.len() + key.len() + 1);
    s.push_str(bucket);
    s.push('/');
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl S3Backend {
    pub fn new(cfg: &NamespaceConfig) -> Result<S3Backend, String> {
        let bucket = cfg.bucket.clone().ok_or("backend \"s3\" needs `bucket`")?;
        let region = cfg.region.clone().unwrap_or_else(|| "us-east-1".into());
        let creds: SharedCredentialsProvider = if let Some(path) = &cfg.credentials_file {
            SharedCredentialsProvider::new(read_credentials_file(path)?)
        } else if let Some(profile) = &cfg.profile {
            SharedCredentialsProvider::new(
                ProfileFileCredentialsProvider::builder()
                    .profile_name(profile)
                    .build(),
            )
        } else {
            SharedCredentialsProvider::new(
                CredentialsProviderChain::first_try(
                    "environment",
                    EnvironmentVariableCredentialsProvider::new(),
                )
                .or_else("profile", ProfileFileCredentialsProvider::builder().build()),
            )
        };
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .force_path_style(cfg.path_style)
            .credentials_provider(creds)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            // The upload queue retries with its own backoff; reads retry
            // here, briefly.
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        let endpoint = match &cfg.endpoint {
            Some(e) => {
                b = b.endpoint_url(e.trim_end_matches('/'));
                e.clone()
            }
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        Ok(S3Backend {
            client: Client::from_conf(b.build()),
            bucket,
            prefix: cfg.key_prefix(),
            endpoint,
        })
    }

    fn full(&self, key: &str) -> BResult<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn put_full(
        &self,
        full: &str,
        data: Vec<u8>,
        meta: HashMap<String, String>,
        cond: &Cond,
    ) -> BResult<String> {
        let (if_match, if_none) = cond_headers(cond);
        let (b64, md5) = md5_b64(&data);
        let len = data.len() as i64;
        // Its buffer goes back to `crate::buf` once the SDK is done with it.
        let body = crate::buf::into_bytes(data);
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(len)
            .content_md5(b64)
            .set_if_match(if_match)
            .set_if_none_match(if_none)
            .set_metadata(Some(meta.clone()))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("put", full, e))?;
        let etag = unquote(out.e_tag().unwrap_or(""));
        if etag == hex(&md5) {
            return Ok(etag);
        }
        // Stores that do not use the MD5 as ETag (encryption at rest, some
        // gateways): confirm that the object there is the one this write
        // made (its ETag) with the size sent. Not by the checksum label:
        // that is ours, and anyone may set it.
        self.confirm(full, len as u64, &etag).await?;
        Ok(etag)
    }

    /// Heads `full`: it must be the version with ETag `etag` (the one a
    /// write just made), of `size` bytes.
    async fn confirm(&self, full: &str, size: u64, etag: &str) -> BResult<()> {
        let Some(h) = self.head_full(full).await? else {
            return Err(BackendError::transient(format!(
                "write of {full}: the store does not hold it; not confirmed"
            )));
        };
        let got_size = h.content_length().unwrap_or(-1);
        let got_etag = unquote(h.e_tag().unwrap_or(""));
        if etag.is_empty() || got_etag != etag || got_size != size as i64 {
            return Err(BackendError::transient(format!(
                "write of {full}: the store holds {got_size} bytes as version {got_etag:?}, expected {size} as {etag:?}; not confirmed"
            )));
        }
        Ok(())
    }

    /// Starts a multipart upload of `full` (a key with the prefix).
    async fn create_upload(&self, full: &str, map: HashMap<String, String>) -> BResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .set_metadata(Some(map))
            .send()
            .await
            .map_err(|e| classify("start upload of", full, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| BackendError::transient(format!("start upload of {full}: no upload id")))
    }

    async fn abort_upload(&self, full: &str, id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(id)
            .send()
            .await;
    }

    /// Completes a multipart upload of `full`, subject to `cond`; returns
    /// the object's ETag.
    async fn complete_upload(
        &self,
        full: &str,
        id: &str,
        parts: Vec<CompletedPart>,
        cond: &Cond,
    ) -> BResult<String> {
        let (if_match, if_none) = cond_headers(cond);
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(id)
            .set_if_match(if_match)
            .set_if_none_match(if_none)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("complete upload of", full, e))?;
        Ok(unquote(out.e_tag().unwrap_or("")))
    }

    async fn head_full(
        &self,
        full: &str,
    ) -> BResult<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                let e = classify("head", full, e);
                if e.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes `full`; with `if_match`, only that version.
    /// Every entry under `prefix` (a path inside the namespace), or with
    /// `one_level` those directly in it (folders below it as `Dir`, from
    /// the common prefixes of a listing with a delimiter).
    async fn list_with(&self, prefix: &str, one_level: bool) -> BResult<Vec<ObjInfo>> {
        let p = prefix.trim_matches('/');
        let full_prefix = if p.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{p}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let usable = |key: &str, raw: &str| {
            let ok = check_key(key).is_ok();
            if !ok {
                tracing::warn!(
                    key = raw,
                    "skipping an object whose name is not a usable path"
                );
            }
            ok
        };
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_delimiter(one_level.then(|| "/".to_string()))
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| classify("list", &full_prefix, e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                let (key, kind) = match rel.strip_suffix('/') {
                    // The folder's own marker is no entry in it.
                    Some(d) if one_level && d == p => continue,
                    Some(d) => (d, ObjKind::Dir),
                    None => (rel, ObjKind::File),
                };
                if !usable(key, k) {
                    continue;
                }
                out.push(ObjInfo {
                    key: key.to_string(),
                    kind,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: unquote(o.e_tag().unwrap_or("")),
                    meta: None,
                    file_id: None,
                });
            }
            for cp in page.common_prefixes() {
                let Some(raw) = cp.prefix() else { continue };
                let Some(rel) = raw.strip_prefix(&self.prefix) else {
                    continue;
                };
                let key = rel.trim_end_matches('/');
                if usable(key, raw) {
                    out.push(ObjInfo {
                        key: key.to_string(),
                        kind: ObjKind::Dir,
                        size: 0,
                        etag: String::new(),
                        meta: None,
                        file_id: None,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete_full(&self, full: &str, if_match: Option<&str>) -> BResult<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .set_if_match(if_match.map(|e| format!("\"{e}\"")))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = classify("delete", full, e);
                if e.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A server-side copy of an object over CopyObject's 5 GiB limit: a
    /// multipart upload whose equal parts are copied from ranges of the
    /// source.
    async fn copy_parts(
        &self,
        from: &str,
        src_etag: Option<&str>,
        to: &str,
        size: u64,
        map: HashMap<String, String>,
        cond: &Cond,
    ) -> BResult<String> {
        let id = self.create_upload(to, map).await?;
        let mut parts = Vec::new();
        let mut off = 0u64;
        let mut n = 1i32;
        let r: BResult<()> = async {
            while off < size {
                let end = (off + COPY_PART).min(size) - 1;
                let p = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&id)
                    .part_number(n)
                    .copy_source(encode_copy_source(&self.bucket, from))
                    .copy_source_range(format!("bytes={off}-{end}"))
                    .set_copy_source_if_match(src_etag.map(|e| format!("\"{e}\"")))
                    .send()
                    .await
                    .map_err(|e| classify(&format!("copy part {n} of {from} to"), to, e))?;
                let etag = p
                    .copy_part_result()
                    .and_then(|c| c.e_tag())
                    .unwrap_or("")
                    .to_string();
                parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
                off = end + 1;
                n += 1;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            self.abort_upload(to, &id).await;
            return Err(e);
        }
        self.complete_upload(to, &id, parts, cond).await
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3 bucket {} at {}", self.bucket, self.endpoint)
        } else {
            format!(
                "s3 bucket {} prefix {} at {}",
                self.bucket, self.prefix, self.endpoint
            )
        }
    }

    async fn check(&self) -> BResult<()> {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            self.client.head_bucket().bucket(&self.bucket).send(),
        )
        .await
        .map_err(|_| {
            BackendError::transient(format!("no answer from {} within 20 s", self.endpoint))
        })?;
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err = classify("bucket", &self.bucket, e);
                if err.message.contains("HTTP 404") {
                    err = BackendError::permanent(format!(
                        "bucket {} does not exist at {}",
                        self.bucket, self.endpoint
                    ));
                } else if err.message.contains("HTTP 403") {
                    err = BackendError::permanent(format!(
                        "access to bucket {} denied at {} (check the credentials)",
                        self.bucket, self.endpoint
                    ));
                }
                Err(err)
            }
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let full = self.full(key)?;
        self.put_full(&full, data, meta_map(meta), cond).await
    }

    async fn multipart_begin(&self, key: &str, _size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        let full = self.full(key)?;
        let id = self.create_upload(&full, meta_map(meta)).await?;
        Ok(Multipart {
            key: key.to_string(),
            id,
            size: _size,
            meta: meta.clone(),
            cond: Cond::Any,
        })
    }

    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        _offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        let full = self.full(&mp.key)?;
        let (b64, md5) = md5_b64(&data);
        let len = data.len() as i64;
        // Its buffer goes back to `crate::buf` once the SDK is done with it.
        let body = crate::buf::into_bytes(data);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&mp.id)
            .part_number(number as i32)
            .content_length(len)
            .content_md5(b64)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(&format!("part {number} of"), &full, e))?;
        let etag = unquote(out.e_tag().unwrap_or(""));
        if !etag.is_empty() && etag.len() == 32 && etag != hex(&md5) {
            return Err(BackendError::transient(format!(
                "part {number} of {full}: ETag {etag} does not match the MD5 sent"
            )));
        }
        Ok(etag)
    }

    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String> {
        let full = self.full(&mp.key)?;
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|(n, e)| {
                CompletedPart::builder()
                    .part_number(*n as i32)
                    .e_tag(format!("\"{e}\""))
                    .build()
            })
            .collect();
        let etag = self
            .complete_upload(&full, &mp.id, completed, &mp.cond)
            .await?;
        // The ETag of a multipart object is the MD5 of the parts' MD5s,
        // "-" and the number of parts.
        let mut h = Md5::new();
        let mut ok = true;
        for (_, e) in &parts {
            match hex_to_bytes(e) {
                Some(b) => h.update(&b),
                None => ok = false,
            }
        }
        let want = format!("{}-{}", hex(&h.finalize()), parts.len());
        if ok && etag == want {
            return Ok(etag);
        }
        // Stores that compute another ETag: the object there must be the
        // one the completion made, with the size sent.
        self.confirm(&full, mp.size, &etag).await?;
        Ok(etag)
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        if let Ok(full) = self.full(&mp.key) {
            self.abort_upload(&full, &mp.id).await;
        }
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let full = self.full(key)?;
        let r = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", offset, offset + len - 1))
            .set_if_match(if_match.map(|e| format!("\"{e}\"")))
            .send()
            .await;
        let out = match r {
            Ok(o) => o,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(classify("get", &full, e)),
        };
        // Straight into one buffer of the size asked for: collecting the
        // body and then flattening it copied every byte twice more. The
        // buffer is a reused one (`crate::buf`): fresh, its every page was
        // faulted in and zeroed by the kernel as the bytes came.
        let mut body = out.body;
        let mut v = crate::buf::take(len as usize);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| BackendError::transient(format!("get {full}: {e}")))?
        {
            let room = (len as usize).saturating_sub(v.len());
            v.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(v)
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        let full = self.full(key)?;
        if let Some(h) = self.head_full(&full).await? {
            let kind = match h
                .metadata()
                .and_then(|m| m.get(META_TYPE))
                .map(String::as_str)
            {
                Some("symlink") => ObjKind::Symlink,
                _ => ObjKind::File,
            };
            return Ok(Some(ObjInfo {
                key: key.to_string(),
                kind,
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: unquote(h.e_tag().unwrap_or("")),
                meta: Some(meta_from(h.metadata())),
                file_id: None,
            }));
        }
        let marker = format!("{full}/");
        if let Some(h) = self.head_full(&marker).await? {
            return Ok(Some(ObjInfo {
                key: key.to_string(),
                kind: ObjKind::Dir,
                size: 0,
                etag: unquote(h.e_tag().unwrap_or("")),
                meta: Some(meta_from(h.metadata())),
                file_id: None,
            }));
        }
        Ok(None)
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        self.list_with(prefix, false).await
    }

    async fn list_dir(&self, prefix: &str) -> BResult<Option<Vec<ObjInfo>>> {
        self.list_with(prefix, true).await.map(Some)
    }

    async fn delete_batch(&self, items: &[(String, String)]) -> BResult<Option<Vec<BResult<()>>>> {
        if items.is_empty() {
            return Ok(Some(Vec::new()));
        }
        if items.len() > super::DELETE_BATCH_MAX {
            return Err(BackendError::permanent(format!(
                "a batch delete takes at most {} keys",
                super::DELETE_BATCH_MAX
            )));
        }
        let mut objects = Vec::with_capacity(items.len());
        let mut fulls = Vec::with_capacity(items.len());
        for (key, etag) in items {
            let (full, etag) = match key.strip_suffix('/') {
                // A directory's marker: whatever its ETag.
                Some(dir) => (format!("{}/", self.full(dir)?), None),
                None => (self.full(key)?, Some(format!("\"{etag}\""))),
            };
            let id = ObjectIdentifier::builder()
                .key(&full)
                .set_e_tag(etag)
                .build()
                .map_err(|e| BackendError::permanent(format!("batch delete of {full}: {e}")))?;
            objects.push(id);
            fulls.push(full);
        }
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| BackendError::permanent(format!("batch delete: {e}")))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify("delete", &fulls[0], e))?;
        // Quiet: only the keys that failed are named.
        let mut failed: HashMap<&str, (&str, &str)> = HashMap::new();
        for e in out.errors() {
            if let Some(k) = e.key() {
                failed.insert(k, (e.code().unwrap_or(""), e.message().unwrap_or("")));
            }
        }
        Ok(Some(
            fulls
                .iter()
                .map(|full| match failed.get(full.as_str()) {
                    // Absent is not an error.
                    None | Some(("NoSuchKey" | "NotFound", _)) => Ok(()),
                    Some((code, msg)) => Err(batch_error(full, code, msg)),
                })
                .collect(),
        ))
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        let full = self.full(key)?;
        let if_match = match cond {
            Cond::IfMatch(e) => Some(e.as_str()),
            Cond::Any | Cond::IfAbsent => None,
        };
        self.delete_full(&full, if_match).await
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let from = self.full(src)?;
        let to = self.full(dst)?;
        let mut map = meta_map(meta);
        let mut size = 0u64;
        // Keep what marks the source as a symlink.
        if let Some(h) = self.head_full(&from).await? {
            size = h.content_length().unwrap_or(0).max(0) as u64;
            if let Some(t) = h.metadata().and_then(|m| m.get(META_TYPE)) {
                map.insert(META_TYPE.to_string(), t.clone());
            }
        }
        if size > COPY_MAX {
            return self.copy_parts(&from, src_etag, &to, size, map, cond).await;
        }
        // The destination's condition goes with the request, and is checked
        // just before too, for stores that take it and ignore it on a copy
        // (a HEAD only when there is a condition).
        if from != to && *cond != Cond::Any {
            let now = self.head_full(&to).await?;
            if !cond_holds(
                cond,
                now.as_ref().and_then(|h| h.e_tag()).map(unquote).as_deref(),
            ) {
                return Err(cond_refused(dst));
            }
        }
        let (dst_match, dst_none) = cond_headers(cond);
        let out = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&to)
            .copy_source(encode_copy_source(&self.bucket, &from))
            .set_copy_source_if_match(src_etag.map(|e| format!("\"{e}\"")))
            .set_if_match(dst_match)
            .set_if_none_match(dst_none)
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(map))
            .send()
            .await
            .map_err(|e| classify(&format!("copy {from} to"), &to, e));
        let out = match out {
            Ok(o) => o,
            Err(mut err) if err.path_only && err.kind == ErrorKind::Transient => {
                // A condition failed: the source's (no copy possible: the
                // caller uploads instead) or the destination's (someone
                // wrote there meanwhile: look again).
                let now = self.head_full(&from).await?;
                let src_now = now.as_ref().and_then(|h| h.e_tag()).map(unquote);
                if src_etag.is_some_and(|want| src_now.as_deref() != Some(want)) {
                    err.kind = ErrorKind::Permanent;
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        let etag = unquote(
            out.copy_object_result()
                .and_then(|r| r.e_tag())
                .unwrap_or(""),
        );
        // Not every store honours x-amz-copy-source-if-match: check that the
        // source still has the expected ETag, so the copy is of that
        // content; otherwise take the copy back.
        if let Some(want) = src_etag
            && from != to
        {
            let now = self.head_full(&from).await?;
            if now.as_ref().and_then(|h| h.e_tag()).map(unquote).as_deref() != Some(want) {
                self.delete_full(&to, Some(&etag)).await?;
                return Err(BackendError::permanent(format!(
                    "copy {from} to {to}: the source changed; copy withdrawn"
                ))
                .for_path());
            }
        }
        Ok(etag)
    }

    async fn put_dir(&self, key: &str, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        // The marker is its own key (`key/`): it never replaces a file at
        // `key`, so only an explicit version condition needs a look there;
        // "if absent" holds for what the marker could overwrite.
        if let Cond::IfMatch(_) = cond
            && !cond_holds(
                cond,
                self.head_full(&self.full(key)?)
                    .await?
                    .as_ref()
                    .and_then(|h| h.e_tag())
                    .map(unquote)
                    .as_deref(),
            )
        {
            return Err(cond_refused(key));
        }
        let full = format!("{}/", self.full(key)?);
        self.put_full(&full, Vec::new(), meta_map(meta), &Cond::Any)
            .await
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        let full = format!("{}/", self.full(key)?);
        self.delete_full(&full, None).await
    }

    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let full = self.full(key)?;
        let mut map = meta_map(meta);
        map.insert(META_TYPE.to_string(), "symlink".to_string());
        self.put_full(&full, target.to_vec(), map, cond).await
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        self.get_range(key, None, 0, 4096).await
    }
}

fn hex_to_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_is_percent_encoded() {
        assert_eq!(
            encode_copy_source("b", "dir/a b+c%.txt"),
            "b/dir/a%20b%2Bc%25.txt"
        );
    }

    #[test]
    fn metadata_round_trips() {
        let m = ObjMeta {
            sha256: Some([3; 32]),
            mtime: Some(crate::types::Timestamp { sec: 5, nsec: 6 }),
            mode: Some(0o640),
            base: Some([4; 32]),
        };
        assert_eq!(meta_from(Some(&meta_map(&m))), m);
    }

    #[test]
    fn credentials_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c");
        std::fs::write(&p, "access_key_id = a\nsecret_access_key = b\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_credentials_file(&p).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_credentials_file(&p).is_ok());
        std::fs::write(&p, "access_key_id = a\n").unwrap();
        let e = read_credentials_file(&p).unwrap_err();
        assert!(e.contains("secret_access_key") && !e.contains("= a"), "{e}");
    }
}
