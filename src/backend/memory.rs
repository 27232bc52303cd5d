//! The `memory` backend: an object store held in a map, for tests and
//! fakes. It behaves like a flat S3 bucket (keys, markers for directories,
//! ETags that change with every write, conditional writes), runs through
//! the same contract suite as the real backends, and lets a test act as
//! another writer (`put_foreign`, `remove_foreign`) and read what is stored
//! (`object`, `keys`) without going through the trait.
//!
//! `ignore_conditions` makes it behave like the stores that accept
//! `If-Match`/`If-None-Match` and ignore them (Garage, some gateways);
//! `native_rename` like those with a move of their own (WebDAV `MOVE`);
//! `resumable` like those whose unfinished uploads can be listed and
//! continued (Nextcloud's chunked uploads); `batches` like S3's, with
//! batch deletes and one-level listings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{
    BResult, Backend, BackendError, Capabilities, Cond, Multipart, ObjInfo, ObjKind, ObjMeta,
    check_key, cond_holds, cond_refused,
};

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: ObjKind,
    /// The body (a symlink's target).
    pub data: Vec<u8>,
    pub meta: ObjMeta,
    pub etag: String,
}

#[derive(Default)]
struct Upload {
    key: String,
    parts: BTreeMap<u32, (u64, Vec<u8>)>,
}

#[derive(Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Object>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next: AtomicU64,
    ignore_conditions: AtomicBool,
    native_rename: AtomicBool,
    resumable: AtomicBool,
    batches: AtomicBool,
    batch_ignores_etags: AtomicBool,
    /// Identities that survive renames (given out, with `native_rename`, as
    /// Nextcloud's `oc:fileid`), by key.
    ids: Mutex<HashMap<String, String>>,
    /// Requests served, by operation name, for tests that count them.
    calls: Mutex<HashMap<&'static str, u64>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// Accept conditions and ignore them, as some S3-compatible stores do.
    pub fn set_ignore_conditions(&self, on: bool) {
        self.ignore_conditions.store(on, Ordering::SeqCst);
    }

    /// Offer batch deletes and one-level listings (`delete_batch`,
    /// `list_dir`), as S3 stores do.
    pub fn set_batches(&self, on: bool) {
        self.batches.store(on, Ordering::SeqCst);
    }

    /// Take the ETags of a batch delete and ignore them, as stores do that
    /// honour a single request's conditions but not a batch's.
    pub fn set_batch_ignores_etags(&self, on: bool) {
        self.batch_ignores_etags.store(on, Ordering::SeqCst);
    }

    /// Rename files in one step under the lock, and say so in
    /// `capabilities`, as a store with a move of its own does.
    pub fn set_native_rename(&self, on: bool) {
        self.native_rename.store(on, Ordering::SeqCst);
    }

    /// Let unfinished uploads be listed and continued (`multipart_resume`).
    pub fn set_resumable(&self, on: bool) {
        self.resumable.store(on, Ordering::SeqCst);
    }

    /// Uploads begun and neither finished nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    fn etag(&self) -> String {
        format!("m{:08x}", self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
    }

    /// How many requests of `op` (the trait method's name) were served.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// How many requests of any kind were served.
    pub fn total_calls(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }

    /// The entry at `key`, as stored.
    pub fn object(&self, key: &str) -> Option<Object> {
        self.objects.lock().unwrap().get(key).cloned()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    /// Another writer stores a file at `key` (no condition).
    pub fn put_foreign(&self, key: &str, data: &[u8], meta: ObjMeta) -> String {
        let etag = self.etag();
        self.objects.lock().unwrap().insert(
            key.to_string(),
            Object {
                kind: ObjKind::File,
                data: data.to_vec(),
                meta,
                etag: etag.clone(),
            },
        );
        etag
    }

    /// Another writer removes `key`.
    pub fn remove_foreign(&self, key: &str) {
        self.objects.lock().unwrap().remove(key);
        self.ids.lock().unwrap().remove(key);
    }

    /// Another client renames `from` to `to` (the entry keeps its identity).
    pub fn rename_foreign(&self, from: &str, to: &str) {
        let mut map = self.objects.lock().unwrap();
        if let Some(o) = map.remove(from) {
            map.insert(to.to_string(), o);
        }
        let mut ids = self.ids.lock().unwrap();
        if let Some(id) = ids.remove(from) {
            ids.insert(to.to_string(), id);
        }
    }

    /// The identity of the entry at `key`, given out when first asked for.
    fn id_of(&self, key: &str) -> Option<String> {
        if !self.native_rename.load(Ordering::SeqCst) {
            return None;
        }
        let mut ids = self.ids.lock().unwrap();
        if let Some(id) = ids.get(key) {
            return Some(id.clone());
        }
        let id = format!("id{}", self.next.fetch_add(1, Ordering::SeqCst) + 1);
        ids.insert(key.to_string(), id.clone());
        Some(id)
    }

    /// Stores `obj` at `key` if `cond` holds (or conditions are ignored).
    fn store(&self, key: &str, mut obj: Object, cond: &Cond) -> BResult<String> {
        let mut map = self.objects.lock().unwrap();
        let now = map.get(key);
        if !self.holds(cond, now) {
            return Err(cond_refused(key));
        }
        if now.is_some_and(|o| o.kind == ObjKind::Dir) && obj.kind != ObjKind::Dir {
            return Err(
                BackendError::permanent(format!("{key} is a directory in the backend")).for_path(),
            );
        }
        obj.etag = self.etag();
        let etag = obj.etag.clone();
        map.insert(key.to_string(), obj);
        Ok(etag)
    }

    /// Whether `cond` holds for `now` (always, when conditions are ignored).
    fn holds(&self, cond: &Cond, now: Option<&Object>) -> bool {
        self.ignore_conditions.load(Ordering::SeqCst)
            || cond_holds(cond, now.map(|o| o.etag.as_str()))
    }

    fn info(key: &str, o: &Object, with_meta: bool) -> ObjInfo {
        ObjInfo {
            key: key.to_string(),
            kind: o.kind,
            size: if o.kind == ObjKind::Dir {
                0
            } else {
                o.data.len() as u64
            },
            etag: if o.kind == ObjKind::Dir {
                "dir".into()
            } else {
                o.etag.clone()
            },
            meta: with_meta.then(|| o.meta.clone()),
            file_id: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            renames: self.native_rename.load(Ordering::SeqCst),
            resumable_uploads: self.resumable.load(Ordering::SeqCst),
            ..Capabilities::DEFAULT
        }
    }

    async fn check(&self) -> BResult<()> {
        self.count("check");
        Ok(())
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        self.count("put");
        check_key(key)?;
        let obj = Object {
            kind: ObjKind::File,
            data,
            meta: meta.clone(),
            etag: String::new(),
        };
        self.store(key, obj, cond)
    }

    async fn multipart_begin(&self, key: &str, _size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        self.count("multipart_begin");
        check_key(key)?;
        let id = self.etag();
        self.uploads.lock().unwrap().insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                parts: BTreeMap::new(),
            },
        );
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
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        self.count("multipart_part");
        let mut ups = self.uploads.lock().unwrap();
        let up = ups
            .get_mut(&mp.id)
            .ok_or_else(|| BackendError::not_found(format!("no upload {}", mp.id)))?;
        up.parts.insert(number, (offset, data));
        Ok(format!("part-{number}"))
    }

    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String> {
        self.count("multipart_finish");
        let up = self
            .uploads
            .lock()
            .unwrap()
            .remove(&mp.id)
            .ok_or_else(|| BackendError::not_found(format!("no upload {}", mp.id)))?;
        let mut data = Vec::new();
        for (n, _) in &parts {
            let (off, bytes) = up
                .parts
                .get(n)
                .ok_or_else(|| BackendError::permanent(format!("part {n} was never sent")))?;
            if *off != data.len() as u64 {
                return Err(BackendError::permanent(format!(
                    "part {n} starts at {off}, not {}",
                    data.len()
                )));
            }
            data.extend_from_slice(bytes);
        }
        let obj = Object {
            kind: ObjKind::File,
            data,
            meta: mp.meta.clone(),
            etag: String::new(),
        };
        self.store(&up.key, obj, &mp.cond)
    }

    async fn multipart_resume(&self, mp: &Multipart) -> BResult<Option<Vec<super::PartInfo>>> {
        if !self.resumable.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.count("multipart_resume");
        let ups = self.uploads.lock().unwrap();
        Ok(ups.get(&mp.id).filter(|u| u.key == mp.key).map(|u| {
            u.parts
                .iter()
                .map(|(n, (_, d))| super::PartInfo {
                    number: *n,
                    size: d.len() as u64,
                    etag: format!("part-{n}"),
                })
                .collect()
        }))
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        self.count("multipart_abort");
        self.uploads.lock().unwrap().remove(&mp.id);
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        self.count("get_range");
        check_key(key)?;
        let map = self.objects.lock().unwrap();
        let o = map
            .get(key)
            .filter(|o| o.kind == ObjKind::File)
            .ok_or_else(|| BackendError::not_found(format!("{key} does not exist")))?;
        if if_match.is_some_and(|e| e != o.etag) {
            return Err(
                BackendError::transient(format!("{key} changed since it was listed")).for_path(),
            );
        }
        let start = (offset as usize).min(o.data.len());
        let end = (offset.saturating_add(len) as usize).min(o.data.len());
        Ok(o.data[start..end].to_vec())
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        self.count("head");
        check_key(key)?;
        let map = self.objects.lock().unwrap();
        Ok(map.get(key).map(|o| ObjInfo {
            file_id: self.id_of(key),
            ..MemoryBackend::info(key, o, true)
        }))
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        self.count("list");
        let prefix = prefix.trim_matches('/');
        let under = format!("{prefix}/");
        // A store with a move of its own (WebDAV) lists metadata and ids.
        let webdav_like = self.native_rename.load(Ordering::SeqCst);
        let map = self.objects.lock().unwrap();
        Ok(map
            .iter()
            .filter(|(k, _)| prefix.is_empty() || k.starts_with(&under))
            .map(|(k, o)| ObjInfo {
                file_id: self.id_of(k),
                ..MemoryBackend::info(k, o, webdav_like)
            })
            .collect())
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        self.count("delete");
        check_key(key)?;
        let mut map = self.objects.lock().unwrap();
        let now = map.get(key);
        if now.is_some_and(|o| o.kind == ObjKind::Dir) {
            return Err(BackendError::permanent(format!("{key} is a directory")).for_path());
        }
        if now.is_some() && !self.holds(cond, now) {
            return Err(cond_refused(key));
        }
        map.remove(key);
        self.ids.lock().unwrap().remove(key);
        Ok(())
    }

    async fn list_dir(&self, prefix: &str) -> BResult<Option<Vec<ObjInfo>>> {
        if !self.batches.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.count("list_dir");
        let prefix = prefix.trim_matches('/');
        let map = self.objects.lock().unwrap();
        let mut out: BTreeMap<String, ObjInfo> = BTreeMap::new();
        for (k, o) in map.iter() {
            let rest = if prefix.is_empty() {
                Some(k.as_str())
            } else {
                k.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
            };
            let Some(rest) = rest else { continue };
            let (child, deeper) = match rest.split_once('/') {
                Some((c, _)) => (c, true),
                None => (rest, false),
            };
            let key = if prefix.is_empty() {
                child.to_string()
            } else {
                format!("{prefix}/{child}")
            };
            let info = if deeper || o.kind == ObjKind::Dir {
                ObjInfo {
                    key: key.clone(),
                    kind: ObjKind::Dir,
                    size: 0,
                    etag: String::new(),
                    meta: None,
                    file_id: None,
                }
            } else {
                MemoryBackend::info(k, o, false)
            };
            out.entry(key).or_insert(info);
        }
        Ok(Some(out.into_values().collect()))
    }

    async fn delete_batch(&self, items: &[(String, String)]) -> BResult<Option<Vec<BResult<()>>>> {
        if !self.batches.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // An empty batch is no request (as on S3).
        if items.is_empty() {
            return Ok(Some(Vec::new()));
        }
        self.count("delete_batch");
        if items.len() > super::DELETE_BATCH_MAX {
            return Err(BackendError::permanent(
                "too many keys for one batch delete",
            ));
        }
        let ignore = self.ignore_conditions.load(Ordering::SeqCst)
            || self.batch_ignores_etags.load(Ordering::SeqCst);
        let mut map = self.objects.lock().unwrap();
        let mut out = Vec::with_capacity(items.len());
        for (key, etag) in items {
            if let Some(dir) = key.strip_suffix('/') {
                // A directory's marker, as `delete_dir` removes it.
                if let Err(e) = check_key(dir) {
                    out.push(Err(e.for_path()));
                    continue;
                }
                if map.get(dir).is_some_and(|o| o.kind == ObjKind::Dir) {
                    map.remove(dir);
                }
                out.push(Ok(()));
                continue;
            }
            if let Err(e) = check_key(key) {
                out.push(Err(e.for_path()));
                continue;
            }
            let r = match map.get(key) {
                None => Ok(()),
                Some(o) if o.kind == ObjKind::Dir => {
                    Err(BackendError::permanent(format!("{key} is a directory")).for_path())
                }
                Some(o) if !ignore && &o.etag != etag => Err(cond_refused(key)),
                Some(_) => {
                    map.remove(key);
                    self.ids.lock().unwrap().remove(key);
                    Ok(())
                }
            };
            out.push(r);
        }
        Ok(Some(out))
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.count("copy");
        check_key(src)?;
        check_key(dst)?;
        let o = self
            .objects
            .lock()
            .unwrap()
            .get(src)
            .filter(|o| o.kind == ObjKind::File)
            .cloned()
            .ok_or_else(|| BackendError::not_found(format!("{src} does not exist")))?;
        if src_etag.is_some_and(|e| e != o.etag) {
            return Err(
                BackendError::permanent(format!("{src} changed since it was recorded")).for_path(),
            );
        }
        let obj = Object {
            meta: meta.clone(),
            ..o
        };
        self.store(dst, obj, cond)
    }

    async fn rename(&self, src: &str, src_etag: Option<&str>, dst: &str) -> BResult<String> {
        if !self.native_rename.load(Ordering::SeqCst) {
            return super::rename_by_copy(self, src, src_etag, dst).await;
        }
        self.count("rename");
        check_key(src)?;
        check_key(dst)?;
        let mut map = self.objects.lock().unwrap();
        let o = map
            .get(src)
            .filter(|o| o.kind == ObjKind::File)
            .cloned()
            .ok_or_else(|| BackendError::not_found(format!("{src} does not exist")).for_path())?;
        if src_etag.is_some_and(|e| e != o.etag) {
            return Err(BackendError::permanent(format!(
                "{src} changed since it was recorded; not renamed"
            ))
            .for_path());
        }
        if !self.holds(&Cond::IfAbsent, map.get(dst)) {
            return Err(cond_refused(dst));
        }
        map.remove(src);
        let etag = o.etag.clone();
        map.insert(dst.to_string(), o);
        let mut ids = self.ids.lock().unwrap();
        if let Some(id) = ids.remove(src) {
            ids.insert(dst.to_string(), id);
        }
        Ok(etag)
    }

    async fn put_dir(&self, key: &str, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        self.count("put_dir");
        check_key(key)?;
        let mut map = self.objects.lock().unwrap();
        let now = map.get(key);
        if now.is_some_and(|o| o.kind == ObjKind::Dir) {
            return Ok("dir".into());
        }
        if !self.holds(cond, now) {
            return Err(cond_refused(key));
        }
        map.insert(
            key.to_string(),
            Object {
                kind: ObjKind::Dir,
                data: Vec::new(),
                meta: meta.clone(),
                etag: "dir".into(),
            },
        );
        Ok("dir".into())
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        self.count("delete_dir");
        check_key(key)?;
        let mut map = self.objects.lock().unwrap();
        if map.get(key).is_some_and(|o| o.kind == ObjKind::Dir) {
            map.remove(key);
        }
        Ok(())
    }

    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.count("put_symlink");
        check_key(key)?;
        let obj = Object {
            kind: ObjKind::Symlink,
            data: target.to_vec(),
            meta: meta.clone(),
            etag: String::new(),
        };
        self.store(key, obj, cond)
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        self.count("read_symlink");
        check_key(key)?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .filter(|o| o.kind == ObjKind::Symlink)
            .map(|o| o.data.clone())
            .ok_or_else(|| BackendError::not_found(format!("{key} is not a symlink")))
    }
}
