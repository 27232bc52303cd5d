//! A decorator that counts every request to the backend it wraps, for the
//! metrics (`locker_backend_*`): requests and failures by operation, their
//! duration, and the file bytes sent and received. Every backend a daemon
//! opens is wrapped in one, innermost, so each request that reaches the
//! store is counted once.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::{
    BResult, Backend, Capabilities, Cond, ErrorKind, Multipart, ObjInfo, ObjMeta, PartInfo,
};
use crate::metrics::{NsErrorLabels, NsLabels, NsOpLabels, metrics};

pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    ns: String,
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn Backend>, ns: &str) -> MeteredBackend {
        MeteredBackend {
            inner,
            ns: ns.to_string(),
        }
    }

    /// Runs `call` as operation `op`, counting it and its outcome; `sent`
    /// file bytes go out with it.
    async fn count<T>(
        &self,
        op: &'static str,
        sent: u64,
        call: impl Future<Output = BResult<T>>,
    ) -> BResult<T> {
        let start = Instant::now();
        let r = call.await;
        self.record(op, sent, start, &r);
        r
    }

    /// As `count`, for a call that answers `None` without a request where
    /// the store has no such request: that answer is not counted.
    async fn count_made<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = BResult<Option<T>>>,
    ) -> BResult<Option<T>> {
        let start = Instant::now();
        let r = call.await;
        if !matches!(r, Ok(None)) {
            self.record(op, 0, start, &r);
        }
        r
    }

    fn record<T>(&self, op: &'static str, sent: u64, start: Instant, r: &BResult<T>) {
        let m = metrics();
        let l = NsOpLabels {
            namespace: self.ns.clone(),
            op,
        };
        m.backend_requests.get_or_create(&l).inc();
        m.backend_seconds
            .get_or_create(&l)
            .observe(start.elapsed().as_secs_f64());
        match r {
            Ok(_) if sent > 0 => {
                m.backend_sent
                    .get_or_create(&NsLabels {
                        namespace: self.ns.clone(),
                    })
                    .inc_by(sent);
            }
            Ok(_) => {}
            Err(e) => {
                let kind = match e.kind {
                    ErrorKind::NotFound => "not_found",
                    ErrorKind::Transient => "transient",
                    ErrorKind::Permanent => "permanent",
                };
                m.backend_errors
                    .get_or_create(&NsErrorLabels {
                        namespace: self.ns.clone(),
                        op,
                        kind,
                    })
                    .inc();
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for MeteredBackend {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn check(&self) -> BResult<()> {
        self.count("check", 0, self.inner.check()).await
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        let n = data.len() as u64;
        self.count("put", n, self.inner.put(key, data, meta, cond))
            .await
    }

    async fn multipart_begin(&self, key: &str, size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        self.count(
            "multipart_begin",
            0,
            self.inner.multipart_begin(key, size, meta),
        )
        .await
    }

    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        let n = data.len() as u64;
        self.count(
            "multipart_part",
            n,
            self.inner.multipart_part(mp, number, offset, data),
        )
        .await
    }

    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String> {
        self.count(
            "multipart_finish",
            0,
            self.inner.multipart_finish(mp, parts),
        )
        .await
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        let _ = self
            .count("multipart_abort", 0, async {
                self.inner.multipart_abort(mp).await;
                Ok(())
            })
            .await;
    }

    async fn multipart_resume(&self, mp: &Multipart) -> BResult<Option<Vec<PartInfo>>> {
        self.count("multipart_resume", 0, self.inner.multipart_resume(mp))
            .await
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        let r = self
            .count(
                "get_range",
                0,
                self.inner.get_range(key, if_match, offset, len),
            )
            .await;
        if let Ok(d) = &r {
            metrics()
                .backend_received
                .get_or_create(&NsLabels {
                    namespace: self.ns.clone(),
                })
                .inc_by(d.len() as u64);
        }
        r
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        self.count("head", 0, self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        self.count("list", 0, self.inner.list(prefix)).await
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        self.count("delete", 0, self.inner.delete(key, cond)).await
    }

    async fn list_dir(&self, prefix: &str) -> BResult<Option<Vec<ObjInfo>>> {
        self.count_made("list", self.inner.list_dir(prefix)).await
    }

    async fn delete_batch(&self, items: &[(String, String)]) -> BResult<Option<Vec<BResult<()>>>> {
        self.count_made("delete_batch", self.inner.delete_batch(items))
            .await
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.count("copy", 0, self.inner.copy(src, src_etag, dst, meta, cond))
            .await
    }

    async fn rename(&self, src: &str, src_etag: Option<&str>, dst: &str) -> BResult<String> {
        // The wrapped store's own rename (a copy and a delete, or a MOVE),
        // counted as one.
        self.count("rename", 0, self.inner.rename(src, src_etag, dst))
            .await
    }

    async fn put_dir(&self, key: &str, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        self.count("put_dir", 0, self.inner.put_dir(key, meta, cond))
            .await
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        self.count("delete_dir", 0, self.inner.delete_dir(key))
            .await
    }

    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.count(
            "put_symlink",
            0,
            self.inner.put_symlink(key, target, meta, cond),
        )
        .await
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        self.count("read_symlink", 0, self.inner.read_symlink(key))
            .await
    }
}
