//! Uploads in parts.
//!
//! **Nextcloud** (chunked upload v2): the transfer is a folder
//! `uploads/<user>/<transfer-id>` made with `MKCOL` and a `Destination`;
//! part n is the file `<transfer-id>/<n>` (five digits, so that name order
//! is number order), sent with `Destination` and `OC-Total-Length`; the
//! finish is a `MOVE` of `<transfer-id>/.file` to the destination, with
//! `OC-Total-Length`, `X-OC-Mtime`, `OC-Checksum` and the condition
//! (`Overwrite: F` for "if absent", a tagged `If:` on the destination for
//! "if match": a MOVE's `If-Match` would name the source). The transfer
//! folder lives on the server: after a restart, `multipart_resume` lists
//! the parts it holds so that only the missing ones are sent again.
//! Parts must be 5 MiB or more, except the last.
//!
//! **Plain servers** (and Nextcloud without an uploads folder): parts are
//! written at their offsets into a spool file on local disk, and the
//! finish sends it as one streaming PUT (then as any plain write: its
//! properties, a read-back, a MOVE under the condition). Nothing of it
//! survives a restart: `multipart_resume` says so.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::client::{self, ChannelBody, status_error};
use super::xml::Props;
use super::{Flavor, WebDavBackend, if_list};
use crate::backend::{BResult, BackendError, Cond, Multipart, ObjMeta, PartInfo, cond_refused};

/// Transfer ids of Nextcloud uploads start so; spool files are named so.
const NC_ID: &str = "locker-";
const SPOOL_ID: &str = "spool-";

/// Removes the spool files (and only those) left in `dir` by an earlier
/// run.
pub(super) fn clear_spool(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(SPOOL_ID) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// How a chunk is named in the transfer folder.
fn chunk_name(number: u32) -> String {
    format!("{number:05}")
}

impl WebDavBackend {
    /// The percent-encoded path of transfer `id` (a folder, trailing '/').
    fn transfer_path(&self, id: &str) -> BResult<String> {
        let up = self
            .uploads
            .as_ref()
            .ok_or_else(|| BackendError::permanent("this server has no chunked-upload folder"))?;
        if !id.starts_with(NC_ID) || !id[NC_ID.len()..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BackendError::permanent(format!(
                "not a transfer id: {id:?}"
            )));
        }
        Ok(format!("{up}{id}/"))
    }

    fn spool_file(&self, id: &str) -> BResult<std::path::PathBuf> {
        if !id.starts_with(SPOOL_ID) || !id[SPOOL_ID.len()..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(BackendError::permanent(format!("not a spool id: {id:?}")));
        }
        Ok(self.spool.join(id))
    }

    pub(super) async fn begin_upload(
        &self,
        flavor: Flavor,
        key: &str,
        size: u64,
        meta: &ObjMeta,
    ) -> BResult<Multipart> {
        let id = if self.chunked_uploads(flavor) {
            let id = format!("{NC_ID}{:016x}", fastrand::u64(..));
            let b = self
                .http
                .request(&client::method("MKCOL"), &self.transfer_path(&id)?)
                .header("destination", self.url(&self.path(key)));
            let resp = self.send(b, client::META_TIMEOUT).await?;
            if resp.status.as_u16() != 201 {
                return Err(status_error("start upload of", key, &resp));
            }
            id
        } else {
            let id = format!("{SPOOL_ID}{:016x}", fastrand::u64(..));
            let file = self.spool_file(&id)?;
            let dir = self.spool.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&file)?;
                f.set_len(size)
            })
            .await
            .map_err(|e| BackendError::transient(format!("spool: {e}")))?
            .map_err(|e| {
                BackendError::transient(format!("spool file in {}: {e}", self.spool.display()))
                    .for_path()
            })?;
            id
        };
        Ok(Multipart {
            key: key.to_string(),
            id,
            size,
            meta: meta.clone(),
            cond: Cond::Any,
        })
    }

    pub(super) async fn send_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        let len = data.len() as u64;
        if mp.id.starts_with(SPOOL_ID) {
            let file = self.spool_file(&mp.id)?;
            if offset + len > mp.size {
                return Err(BackendError::permanent(format!(
                    "part {number} of {}: past the end of the upload",
                    mp.key
                )));
            }
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&file)?;
                let r = f.write_all_at(&data, offset);
                crate::buf::give(data);
                r
            })
            .await
            .map_err(|e| BackendError::transient(format!("spool: {e}")))?
            .map_err(|e| {
                BackendError::transient(format!("part {number} of {}: spool: {e}", mp.key))
                    .for_path()
            })?;
            return Ok(format!("spooled-{len}"));
        }
        let path = format!("{}{}", self.transfer_path(&mp.id)?, chunk_name(number));
        let headers = [
            ("destination", self.url(&self.path(&mp.key))),
            ("oc-total-length", mp.size.to_string()),
        ];
        let resp = self
            .put_body(
                &path,
                client::full(crate::buf::into_bytes(data)),
                len,
                &headers,
            )
            .await?;
        match resp.status.as_u16() {
            200 | 201 | 204 => Ok(resp
                .header("etag")
                .map(super::xml::normalize_etag)
                .unwrap_or_else(|| format!("len-{len}"))),
            // The transfer folder is gone (expired, or removed): the
            // upload starts again.
            404 => Err(BackendError::transient(format!(
                "part {number} of {}: the upload is gone on the server; starting again",
                mp.key
            ))
            .for_path()),
            _ => Err(status_error(&format!("part {number} of"), &mp.key, &resp)),
        }
    }

    pub(super) async fn finish_upload(
        &self,
        flavor: Flavor,
        mp: &Multipart,
        _parts: Vec<(u32, String)>,
    ) -> BResult<String> {
        if mp.id.starts_with(SPOOL_ID) {
            return self.finish_spooled(flavor, mp).await;
        }
        let from = format!("{}.file", self.transfer_path(&mp.id)?);
        let dst = self.path(&mp.key);
        let mut made_parents = false;
        loop {
            let mut b = self
                .http
                .request(&client::method("MOVE"), &from)
                .header("destination", self.url(&dst))
                .header("oc-total-length", mp.size.to_string());
            for (k, v) in Self::oc_headers(&mp.meta) {
                b = b.header(k, v);
            }
            b = match &mp.cond {
                Cond::Any => b.header("overwrite", "T"),
                Cond::IfAbsent => b.header("overwrite", "F"),
                Cond::IfMatch(e) => b
                    .header("overwrite", "T")
                    .header("if", if_list(&[(&dst, e)])),
            };
            let resp = self
                .send(b, client::LONG_TIMEOUT + client::transfer_timeout(mp.size))
                .await?;
            match resp.status.as_u16() {
                200 | 201 | 204 => {
                    let etag = self.confirm_nc(&mp.key, &resp, mp.size, &mp.meta).await?;
                    // The transfer folder goes with the MOVE; if the
                    // server kept it, it is of no use now.
                    return Ok(etag);
                }
                409 if !made_parents => {
                    self.make_parents(&mp.key).await?;
                    made_parents = true;
                }
                412 => return Err(cond_refused(&mp.key)),
                // The transfer expired or was removed, or (Sabre answers an
                // `If:` on a missing target so) the file it was to replace
                // is gone: look again, and start again.
                404 => {
                    return Err(BackendError::transient(format!(
                        "finish upload of {}: the upload or the file it replaces is gone",
                        mp.key
                    ))
                    .for_path());
                }
                _ => return Err(status_error("finish upload of", &mp.key, &resp)),
            }
        }
    }

    /// Sends a spooled upload as one streaming PUT to a temporary, then
    /// commits it as any plain write (on Nextcloud without chunking: as one
    /// PUT with its checksum).
    async fn finish_spooled(&self, flavor: Flavor, mp: &Multipart) -> BResult<String> {
        let file = self.spool_file(&mp.id)?;
        self.make_parents(&mp.key).await?;
        let (target, headers) = match flavor {
            Flavor::Plain => (self.tmp_key(&mp.key), Vec::new()),
            Flavor::Nextcloud => {
                let mut h = Self::oc_headers(&mp.meta);
                match &mp.cond {
                    Cond::Any => {}
                    Cond::IfMatch(e) => h.push(("if-match", format!("\"{e}\""))),
                    Cond::IfAbsent => h.push(("if-none-match", "*".into())),
                }
                (mp.key.clone(), h)
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let size = mp.size;
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = match std::fs::File::open(&file) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            let mut left = size;
            while left > 0 {
                let mut buf = crate::buf::zeroed((1 << 20).min(left) as usize);
                if let Err(e) = f.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(crate::buf::into_bytes(buf))).is_err() {
                    return;
                }
            }
        });
        let body = http_body_util::BodyExt::boxed(ChannelBody { rx, len: size });
        let resp = self
            .put_body(&self.path(&target), body, size, &headers)
            .await;
        let _ = reader.await;
        let resp = resp?;
        let r = match (flavor, resp.status.as_u16()) {
            (Flavor::Plain, 200 | 201 | 204) => {
                self.commit(&target, &mp.key, &mp.meta, &mp.cond, Some(size))
                    .await
            }
            (Flavor::Nextcloud, 200 | 201 | 204) => {
                self.confirm_nc(&mp.key, &resp, size, &mp.meta).await
            }
            _ => Err(status_error("put", &mp.key, &resp)),
        };
        if r.is_ok() {
            self.abort_upload(mp).await;
        }
        r
    }

    pub(super) async fn abort_upload(&self, mp: &Multipart) {
        if mp.id.starts_with(SPOOL_ID) {
            if let Ok(f) = self.spool_file(&mp.id) {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(f)).await;
            }
            return;
        }
        if let Ok(p) = self.transfer_path(&mp.id) {
            self.delete_quietly(&p).await;
        }
    }

    /// The parts a Nextcloud transfer holds; `None` if it is gone (or is a
    /// spool, which does not outlive this process).
    pub(super) async fn resume_upload(&self, mp: &Multipart) -> BResult<Option<Vec<PartInfo>>> {
        if !mp.id.starts_with(NC_ID) || self.uploads.is_none() {
            return Ok(None);
        }
        let dir = self.transfer_path(&mp.id)?;
        let Some(entries) = self.propfind(&dir, 1, Props::Nextcloud).await? else {
            return Ok(None);
        };
        let mut parts: Vec<PartInfo> = entries
            .iter()
            .filter(|e| !e.collection && e.status.is_none_or(|s| s == 200))
            .filter_map(|e| {
                let name = e.href.trim_end_matches('/').rsplit('/').next()?;
                let number: u32 = name.parse().ok()?;
                Some(PartInfo {
                    number,
                    size: e.length?,
                    etag: e
                        .etag
                        .clone()
                        .unwrap_or_else(|| format!("len-{}", e.length.unwrap_or(0))),
                })
            })
            .collect();
        parts.sort_by_key(|p| p.number);
        Ok(Some(parts))
    }

    /// A whole file of `data` sent in chunks (Nextcloud), as `put` does for
    /// files over the chunk size.
    pub(super) async fn put_chunked(
        &self,
        key: &str,
        data: Bytes,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        let chunk = self.chunk_size.load(Ordering::Relaxed).max(1) as usize;
        let mut mp = self
            .begin_upload(Flavor::Nextcloud, key, data.len() as u64, meta)
            .await?;
        mp.cond = cond.clone();
        let r = async {
            let mut parts = Vec::new();
            for (i, c) in data.chunks(chunk).enumerate() {
                let n = i as u32 + 1;
                let etag = self
                    .send_part(&mp, n, (i * chunk) as u64, c.to_vec())
                    .await?;
                parts.push((n, etag));
            }
            self.finish_upload(Flavor::Nextcloud, &mp, parts).await
        }
        .await;
        if r.is_err() {
            self.abort_upload(&mp).await;
        }
        r
    }
}
