//! Writes of the WebDAV backend: files (one PUT on Nextcloud; temporary,
//! properties, read-back and MOVE on plain servers), folders, deletes,
//! copies and renames, each under its condition.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::Method;

use super::client::{self, Body, Resp, status_error};
use super::xml;
use super::{Flavor, TMP_PREFIX, WebDavBackend, if_list, parent_of};
use crate::backend::{BResult, BackendError, Cond, ErrorKind, ObjKind, ObjMeta, cond_refused, hex};

/// How old a temporary of a plain-flavor write must be before `delete_dir`
/// takes it for a left-over of a stopped upload (younger ones may be of a
/// write in flight on another host).
const STALE_TMP_SECS: i64 = 600;

impl WebDavBackend {
    /// Stores `data` at `key` under `cond`; returns the new ETag.
    pub(super) async fn put_in(
        &self,
        flavor: Flavor,
        key: &str,
        data: Bytes,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        match flavor {
            Flavor::Nextcloud => {
                let chunk = self.chunk_size.load(Ordering::Relaxed);
                if data.len() as u64 > chunk && self.chunked_uploads(flavor) {
                    return self.put_chunked(key, data, meta, cond).await;
                }
                self.nc_put(key, data, meta, cond).await
            }
            Flavor::Plain => {
                let tmp = self.tmp_key(key);
                let len = data.len() as u64;
                let mut made_parents = false;
                loop {
                    let resp = self
                        .put_body(&self.path(&tmp), client::full(data.clone()), len, &[])
                        .await?;
                    match resp.status.as_u16() {
                        200 | 201 | 204 => break,
                        409 if !made_parents => {
                            self.make_parents(key).await?;
                            made_parents = true;
                        }
                        _ => return Err(status_error("put", key, &resp)),
                    }
                }
                self.commit(&tmp, key, meta, cond, Some(len)).await
            }
        }
    }

    /// A PUT of `body` (`len` bytes) to `path` with `headers`.
    pub(super) async fn put_body(
        &self,
        path: &str,
        body: Body,
        len: u64,
        headers: &[(&'static str, String)],
    ) -> BResult<Resp> {
        let mut b = self
            .http
            .request(&Method::PUT, path)
            .header("content-length", len.to_string())
            .header("content-type", "application/octet-stream");
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b
            .body(body)
            .map_err(|e| BackendError::permanent(format!("PUT: {e}")))?;
        self.http
            .send(req, 1 << 20, client::transfer_timeout(len))
            .await
    }

    /// The headers of a Nextcloud write carrying `meta`.
    pub(super) fn oc_headers(meta: &ObjMeta) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        // Nextcloud refuses (400) an X-OC-Mtime within a day of the epoch;
        // such a file keeps the upload time there.
        if let Some(t) = meta.mtime.filter(|t| t.sec > 86_400) {
            h.push(("x-oc-mtime", t.sec.to_string()));
        }
        if let Some(s) = meta.sha256 {
            h.push(("oc-checksum", format!("SHA256:{}", hex(&s))));
        }
        h
    }

    /// One PUT to Nextcloud, `X-OC-Mtime` and `OC-Checksum` with it.
    async fn nc_put(&self, key: &str, data: Bytes, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let len = data.len() as u64;
        let mut headers = Self::oc_headers(meta);
        match cond {
            Cond::Any => {}
            Cond::IfMatch(e) => headers.push(("if-match", format!("\"{e}\""))),
            Cond::IfAbsent => headers.push(("if-none-match", "*".into())),
        }
        let mut made_parents = false;
        loop {
            let resp = self
                .put_body(&self.path(key), client::full(data.clone()), len, &headers)
                .await?;
            match resp.status.as_u16() {
                200 | 201 | 204 => return self.confirm_nc(key, &resp, len, meta).await,
                // Sabre says 409 when the folder is missing; some versions 404.
                404 | 409 if !made_parents => {
                    self.make_parents(key).await?;
                    made_parents = true;
                }
                _ => return Err(status_error("put", key, &resp)),
            }
        }
    }

    /// The ETag of a Nextcloud write from its answer; if the answer has
    /// none, from a look at the file, which must have the size sent.
    pub(super) async fn confirm_nc(
        &self,
        key: &str,
        resp: &Resp,
        len: u64,
        meta: &ObjMeta,
    ) -> BResult<String> {
        if meta.mtime.is_some_and(|t| t.sec > 86_400)
            && resp.header("x-oc-mtime") != Some("accepted")
        {
            tracing::debug!(path = %key, "the server did not take X-OC-Mtime; the file keeps the upload time");
        }
        let etag = resp
            .header("oc-etag")
            .or_else(|| resp.header("etag"))
            .map(xml::normalize_etag)
            .filter(|e| !e.is_empty());
        if let Some(e) = etag {
            return Ok(e);
        }
        match self.head_in(Flavor::Nextcloud, key).await? {
            Some(h) if h.kind == ObjKind::File && h.size == len && !h.etag.is_empty() => Ok(h.etag),
            other => Err(BackendError::transient(format!(
                "write of {key}: the server holds {}; not confirmed",
                match other {
                    Some(h) => format!("{} bytes as version {:?}", h.size, h.etag),
                    None => "nothing".into(),
                }
            ))),
        }
    }

    /// A fresh temporary name beside `key`.
    pub(super) fn tmp_key(&self, key: &str) -> String {
        let name = format!("{TMP_PREFIX}{:016x}", fastrand::u64(..));
        match parent_of(key) {
            "" => name,
            p => format!("{p}/{name}"),
        }
    }

    /// Plain flavor: gives the temporary `tmp` the metadata `meta`, reads
    /// it back (it must have `len` bytes), and moves it over `key` if
    /// `cond` holds there. The temporary is removed on any failure.
    /// Returns the ETag read back, which a move keeps.
    pub(super) async fn commit(
        &self,
        tmp: &str,
        key: &str,
        meta: &ObjMeta,
        cond: &Cond,
        len: Option<u64>,
    ) -> BResult<String> {
        let tmp_path = self.path(tmp);
        let r = async {
            let h = self.head_in(Flavor::Plain, tmp).await?.ok_or_else(|| {
                BackendError::transient(format!("write of {key}: the upload vanished"))
            })?;
            if len.is_some_and(|l| l != h.size) || h.etag.is_empty() {
                return Err(BackendError::transient(format!(
                    "write of {key}: the server holds {} bytes, {} were sent; not confirmed",
                    h.size,
                    len.unwrap_or(0)
                )));
            }
            // The properties name the version they describe: another
            // client's PUT over the file keeps them (mod_dav does) but
            // changes the ETag, and then they describe nothing.
            self.proppatch_meta(&tmp_path, meta, None, Some(&h.etag))
                .await?;
            let dst = self.path(key);
            let mut b = self
                .http
                .request(&client::method("MOVE"), &tmp_path)
                .header("destination", self.url(&dst));
            b = match cond {
                Cond::Any => b.header("overwrite", "T"),
                Cond::IfAbsent => b.header("overwrite", "F"),
                Cond::IfMatch(e) => b
                    .header("overwrite", "T")
                    .header("if", if_list(&[(&dst, e)])),
            };
            let resp = self.send(b, client::LONG_TIMEOUT).await?;
            match resp.status.as_u16() {
                201 | 204 => Ok(h.etag),
                412 => Err(cond_refused(key)),
                _ => Err(status_error("put", key, &resp)),
            }
        }
        .await;
        if r.is_err() {
            self.delete_quietly(&tmp_path).await;
        }
        r
    }

    /// Sets LOCKER's dead properties on `path` (plain flavor), with `etag`
    /// as the condition. A server that does not keep them is noted once;
    /// the write goes on without them.
    async fn proppatch_meta(
        &self,
        path: &str,
        meta: &ObjMeta,
        etag: Option<&str>,
        version: Option<&str>,
    ) -> BResult<()> {
        if !self.dead_props.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut b = self
            .http
            .request(&client::method("PROPPATCH"), path)
            .header("content-type", "application/xml; charset=utf-8");
        if let Some(e) = etag {
            b = b.header("if", if_list(&[(path, e)]));
        }
        let req = b
            .body(client::full(xml::proppatch_meta_body(meta, version)))
            .map_err(|e| BackendError::permanent(format!("PROPPATCH: {e}")))?;
        let resp = self.http.send(req, 1 << 20, client::META_TIMEOUT).await?;
        let refused = match resp.status.as_u16() {
            207 => match xml::parse_multistatus(&resp.body) {
                Ok(v) => v.iter().any(|e| !e.refused.is_empty()),
                Err(_) => true,
            },
            200 | 204 => false,
            412 => return Err(cond_refused(&self.shown_path(path))),
            405 | 501 | 403 | 409 => true,
            _ => {
                return Err(status_error(
                    "set properties of",
                    &self.shown_path(path),
                    &resp,
                ));
            }
        };
        if refused && self.dead_props.swap(false, Ordering::Relaxed) {
            tracing::warn!(url = %self.shown, "the server does not keep dead properties: checksums, modes and exact mtimes are recorded on this host only");
        }
        Ok(())
    }

    /// Makes the folders above `key`, the top one first.
    pub(super) async fn make_parents(&self, key: &str) -> BResult<()> {
        let parent = parent_of(key);
        if parent.is_empty() {
            return Ok(());
        }
        let mut at = String::new();
        for seg in parent.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(seg);
            self.mkcol(&at).await?;
        }
        Ok(())
    }

    /// MKCOL of `key`; something already there is fine (a folder; or a
    /// file, which the write below it then runs into).
    async fn mkcol(&self, key: &str) -> BResult<()> {
        let resp = self
            .send(
                self.http
                    .request(&client::method("MKCOL"), &self.dir_path(key)),
                client::META_TIMEOUT,
            )
            .await?;
        match resp.status.as_u16() {
            201 | 405 => Ok(()),
            // Several uploads into one new folder make it at once, and a
            // server may refuse the ones that lose (Apache answers 403):
            // a folder that is there now is what was asked for.
            // (A failure to look is that failure: a transient one is
            // retried.)
            _ => match self.head_in(Flavor::Plain, key).await? {
                Some(h) if h.kind == ObjKind::Dir => Ok(()),
                _ => Err(status_error("make folder", key, &resp)),
            },
        }
    }

    pub(super) async fn put_dir_in(
        &self,
        flavor: Flavor,
        key: &str,
        cond: &Cond,
    ) -> BResult<String> {
        if let Cond::IfMatch(_) = cond {
            let now = self.head_in(flavor, key).await?;
            if now.as_ref().is_some_and(|h| h.kind == ObjKind::Dir) {
                return Ok("dir".into());
            }
            if !crate::backend::cond_holds(cond, now.as_ref().map(|h| h.etag.as_str())) {
                return Err(cond_refused(key));
            }
        }
        let mut made_parents = false;
        loop {
            let resp = self
                .send(
                    self.http
                        .request(&client::method("MKCOL"), &self.dir_path(key)),
                    client::META_TIMEOUT,
                )
                .await?;
            match resp.status.as_u16() {
                201 => return Ok("dir".into()),
                405 => {
                    return match self.head_in(flavor, key).await? {
                        Some(h) if h.kind == ObjKind::Dir => Ok("dir".into()),
                        Some(_) if *cond == Cond::IfAbsent => Err(cond_refused(key)),
                        Some(_) => Err(BackendError::permanent(format!(
                            "{key}: a file is there, not a folder"
                        ))
                        .for_path()),
                        // Gone meanwhile: look again.
                        None => Err(cond_refused(key)),
                    };
                }
                409 if !made_parents => {
                    self.make_parents(key).await?;
                    made_parents = true;
                }
                // As in `mkcol`: a push of a file in this folder may be
                // making it at the same moment, and a server may refuse the
                // MKCOL that loses (Apache answers 403). A folder there now
                // is what was asked for.
                _ => {
                    return match self.head_in(flavor, key).await? {
                        Some(h) if h.kind == ObjKind::Dir => Ok("dir".into()),
                        _ => Err(status_error("make folder", key, &resp)),
                    };
                }
            }
        }
    }

    pub(super) async fn delete_in(&self, flavor: Flavor, key: &str, cond: &Cond) -> BResult<()> {
        let etag = match cond {
            Cond::IfMatch(e) => e.clone(),
            // A DELETE of a folder removes everything in it: look first,
            // and remove only the file seen, by its version.
            Cond::Any | Cond::IfAbsent => match self.head_in(flavor, key).await? {
                None => return Ok(()),
                Some(_) if *cond == Cond::IfAbsent => return Err(cond_refused(key)),
                Some(h) if h.kind == ObjKind::Dir => {
                    return Err(BackendError::permanent(format!(
                        "{key} is a folder in the backend; not removed as a file"
                    ))
                    .for_path());
                }
                Some(h) => h.etag,
            },
        };
        let path = self.path(key);
        let b = self.if_match(
            flavor,
            self.http.request(&Method::DELETE, &path),
            &path,
            &etag,
        );
        let resp = self.send(b, client::META_TIMEOUT).await?;
        match resp.status.as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(status_error("delete", key, &resp)),
        }
    }

    pub(super) async fn delete_dir_in(&self, flavor: Flavor, key: &str) -> BResult<()> {
        let dir = self.dir_path(key);
        let Some(entries) = self.propfind(&dir, 1, Self::props(flavor)).await? else {
            return Ok(());
        };
        let mut me = None;
        let mut stale = Vec::new();
        let now = crate::types::Timestamp::now().sec;
        for e in &entries {
            let Some(k) = self.key_of_href(&e.href) else {
                continue;
            };
            if k == key {
                me = Some(e);
                continue;
            }
            let name = k.rsplit('/').next().unwrap_or(&k);
            let age = e
                .modified
                .as_deref()
                .and_then(|m| httpdate::parse_http_date(m).ok())
                .map(|t| now - crate::types::Timestamp::from_system(t).sec)
                .unwrap_or(0);
            if name.starts_with(TMP_PREFIX) && !e.collection && age > STALE_TMP_SECS {
                stale.push(k);
                continue;
            }
            return Err(BackendError::permanent(format!(
                "{key} holds files LOCKER does not know ({k}); left in place"
            ))
            .for_path());
        }
        let Some(me) = me else {
            return Ok(());
        };
        if !me.collection {
            return Err(
                BackendError::permanent(format!("{key} is a file, not a folder")).for_path(),
            );
        }
        for k in stale {
            self.delete_quietly(&self.path(&k)).await;
        }
        // Only the empty folder just seen: on plain servers anything added
        // meanwhile changes its ETag, and the DELETE is refused. Nextcloud
        // (Sabre) matches no condition on a folder: there the window
        // between the look and the DELETE stays, and what a DELETE removes
        // goes to the user's trash bin, not away.
        let etag = me.etag.clone().unwrap_or_default();
        let mut b = self.http.request(&Method::DELETE, &dir);
        if flavor == Flavor::Plain && !etag.is_empty() {
            b = self.if_match(flavor, b, &dir, &etag);
        }
        let resp = self.send(b, client::META_TIMEOUT).await?;
        match resp.status.as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(status_error("delete folder", key, &resp)),
        }
    }

    pub(super) async fn copy_in(
        &self,
        flavor: Flavor,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        if src == dst {
            return self.rewrite_meta(flavor, src, src_etag, meta, cond).await;
        }
        let src_path = self.path(src);
        // Plain: to a temporary, which then gets the metadata and is moved
        // over the target under the condition (as a put). Nextcloud: onto
        // the target itself; the checksum is the content's, and stays.
        let (target, overwrite) = match flavor {
            Flavor::Plain => (self.tmp_key(dst), "F"),
            Flavor::Nextcloud => (
                dst.to_string(),
                if *cond == Cond::IfAbsent { "F" } else { "T" },
            ),
        };
        let target_path = self.path(&target);
        let mut made_parents = false;
        loop {
            let mut b = self
                .http
                .request(&client::method("COPY"), &src_path)
                .header("destination", self.url(&target_path))
                .header("overwrite", overwrite);
            let mut lists: Vec<(&str, &str)> = Vec::new();
            match flavor {
                Flavor::Nextcloud => {
                    if let Some(e) = src_etag {
                        b = b.header("if-match", format!("\"{e}\""));
                    }
                    if let Cond::IfMatch(e) = cond {
                        lists.push((&target_path, e));
                    }
                }
                Flavor::Plain => {
                    if let Some(e) = src_etag {
                        lists.push((&src_path, e));
                    }
                }
            }
            if !lists.is_empty() {
                b = b.header("if", if_list(&lists));
            }
            let resp = self.send(b, client::LONG_TIMEOUT).await?;
            match resp.status.as_u16() {
                201 | 204 => break,
                409 if !made_parents => {
                    self.make_parents(dst).await?;
                    made_parents = true;
                }
                412 => {
                    // The source's condition (no copy possible: the caller
                    // uploads instead) or the target's (look again).
                    let now = self.head_in(flavor, src).await?;
                    if src_etag
                        .is_some_and(|want| now.as_ref().map(|h| h.etag.as_str()) != Some(want))
                    {
                        return Err(BackendError::permanent(format!(
                            "copy {src} to {dst}: the source changed since it was recorded"
                        ))
                        .for_path());
                    }
                    return Err(cond_refused(dst));
                }
                404 => {
                    // Sabre answers an `If:` on a missing target with 404.
                    if matches!(cond, Cond::IfMatch(_))
                        && self.head_in(flavor, src).await?.is_some()
                    {
                        return Err(cond_refused(dst));
                    }
                    return Err(BackendError::not_found(format!(
                        "copy {src} to {dst}: {src} does not exist"
                    ))
                    .for_path());
                }
                _ => return Err(status_error(&format!("copy {src} to"), dst, &resp)),
            }
        }
        match flavor {
            Flavor::Plain => self.commit(&target, dst, meta, cond, None).await,
            // Nextcloud's copy is a new file without a checksum and with
            // the time of the copy: the server hashes it, and takes the
            // mtime asked for.
            Flavor::Nextcloud => self.nc_label(dst, None, meta).await,
        }
    }

    /// Gives the Nextcloud file `key` the checksum of its content (computed
    /// by the server, which must be `meta`'s) and `meta`'s mtime, where it
    /// lacks them; `etag`: only while the file has that version. Returns
    /// the file's ETag afterwards.
    async fn nc_label(&self, key: &str, etag: Option<&str>, meta: &ObjMeta) -> BResult<String> {
        let flavor = Flavor::Nextcloud;
        let h = self.head_in(flavor, key).await?.ok_or_else(|| {
            BackendError::transient(format!("{key} is not there; not confirmed")).for_path()
        })?;
        if h.kind != ObjKind::File {
            return Err(BackendError::transient(format!("{key} is not a file")).for_path());
        }
        if etag.is_some_and(|e| e != h.etag) {
            return Err(cond_refused(key));
        }
        let have = h.meta.clone().unwrap_or_default();
        let path = self.path(key);
        let mut changed = false;
        if let Some(want) = meta.sha256
            && have.sha256 != Some(want)
        {
            let b = self
                .http
                .request(&Method::PATCH, &path)
                .header("x-recalculate-hash", "sha256")
                .header("if-match", format!("\"{}\"", h.etag));
            let resp = self.send(b, client::LONG_TIMEOUT).await?;
            match resp.status.as_u16() {
                200 | 204 => {
                    let got = resp
                        .header("oc-checksum")
                        .and_then(xml::sha256_of_checksums);
                    if got.is_some_and(|g| g != want) {
                        return Err(BackendError::permanent(format!(
                            "{key}: the server hashes its content to another SHA-256 than expected"
                        ))
                        .for_path());
                    }
                    changed = true;
                }
                412 => return Err(cond_refused(key)),
                // A server without the checksum update: the file stays
                // without one (others then hash what they fetch).
                400 | 405 | 501 => {
                    tracing::debug!(path = %key, "the server cannot compute a checksum; the copy has none")
                }
                _ => return Err(status_error("hash", key, &resp)),
            }
        }
        if let Some(want) = meta.mtime.map(|t| t.sec).filter(|s| *s > 86_400)
            && have.mtime.map(|t| t.sec) != Some(want)
        {
            let etag_now = if changed {
                self.head_in(flavor, key)
                    .await?
                    .map(|h| h.etag)
                    .unwrap_or_default()
            } else {
                h.etag.clone()
            };
            let b = self
                .http
                .request(&client::method("PROPPATCH"), &path)
                .header("content-type", "application/xml; charset=utf-8")
                .header("if-match", format!("\"{etag_now}\""));
            let req = b
                .body(client::full(xml::proppatch_lastmodified_body(want)))
                .map_err(|e| BackendError::permanent(format!("PROPPATCH: {e}")))?;
            let resp = self.http.send(req, 1 << 20, client::META_TIMEOUT).await?;
            match resp.status.as_u16() {
                200 | 204 | 207 => changed = true,
                412 => return Err(cond_refused(key)),
                _ => return Err(status_error("set the mtime of", key, &resp)),
            }
        }
        if !changed {
            return Ok(h.etag);
        }
        self.head_in(flavor, key)
            .await?
            .map(|h| h.etag)
            .ok_or_else(|| BackendError::transient(format!("{key} vanished")).for_path())
    }

    /// `copy` onto itself: the metadata of `key` only (plain: its dead
    /// properties; Nextcloud: its mtime, through `DAV: lastmodified`).
    async fn rewrite_meta(
        &self,
        flavor: Flavor,
        key: &str,
        src_etag: Option<&str>,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let h = self
            .head_in(flavor, key)
            .await?
            .ok_or_else(|| BackendError::not_found(format!("{key} does not exist")).for_path())?;
        if src_etag.is_some_and(|e| e != h.etag) {
            return Err(
                BackendError::permanent(format!("{key} changed since it was recorded")).for_path(),
            );
        }
        if !crate::backend::cond_holds(cond, Some(&h.etag)) {
            return Err(cond_refused(key));
        }
        match flavor {
            Flavor::Plain => {
                self.proppatch_meta(&self.path(key), meta, Some(&h.etag), Some(&h.etag))
                    .await?;
                // The version after the change (the same, where properties
                // are not part of it).
                self.head_in(flavor, key)
                    .await?
                    .map(|h| h.etag)
                    .ok_or_else(|| BackendError::transient(format!("{key} vanished")).for_path())
            }
            Flavor::Nextcloud => self.nc_label(key, Some(&h.etag), meta).await,
        }
    }

    pub(super) async fn rename_in(
        &self,
        flavor: Flavor,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
    ) -> BResult<String> {
        let src_path = self.path(src);
        let dst_path = self.path(dst);
        let mut made_parents = false;
        loop {
            let mut b = self
                .http
                .request(&client::method("MOVE"), &src_path)
                .header("destination", self.url(&dst_path))
                .header("overwrite", "F");
            if let Some(e) = src_etag {
                b = self.if_match(flavor, b, &src_path, e);
            }
            let resp = self.send(b, client::LONG_TIMEOUT).await?;
            let status = resp.status.as_u16();
            // Apache answers a MOVE into a missing folder with 500.
            let no_parent = !made_parents
                && (status == 409
                    || (status == 500
                        && !parent_of(dst).is_empty()
                        && self.head_in(flavor, parent_of(dst)).await?.is_none()));
            match status {
                201 | 204 => break,
                _ if no_parent => {
                    self.make_parents(dst).await?;
                    made_parents = true;
                }
                412 => {
                    if self.head_in(flavor, dst).await?.is_some() {
                        return Err(cond_refused(dst));
                    }
                    return Err(BackendError::permanent(format!(
                        "rename {src} to {dst}: the source changed since it was recorded"
                    ))
                    .for_path());
                }
                404 => {
                    return Err(BackendError::not_found(format!(
                        "rename {src} to {dst}: {src} does not exist"
                    ))
                    .for_path());
                }
                _ => return Err(status_error(&format!("rename {src} to"), dst, &resp)),
            }
        }
        match self.head_in(flavor, dst).await? {
            Some(h) => Ok(h.etag),
            None => Err(BackendError::new(
                ErrorKind::Transient,
                format!("rename {src} to {dst}: the target is not there; not confirmed"),
            )),
        }
    }
}
