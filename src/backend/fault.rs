//! A decorator that injects faults into any backend, scripted by tests:
//! fail a call, delay it, freeze every call until thawed, run an action
//! just before a call goes through (another writer landing between a HEAD
//! and the write that follows it), or corrupt the bytes a read returns.
//!
//! Rules are matched in the order they were added; each matches an
//! operation (the trait method's name, or any) and optionally keys with a
//! prefix, and fires a number of times (or forever). Every call is also
//! logged, so a test can check what reached the store and in which order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    BResult, Backend, BackendError, Capabilities, Cond, ErrorKind, Multipart, ObjInfo, ObjMeta,
    PartInfo,
};

/// What a matching rule does to the call.
#[derive(Clone)]
pub enum Fault {
    /// The call fails with this kind of error (transient errors are those of
    /// an unreachable store).
    Fail(ErrorKind),
    /// The call fails for its path alone (as a name the store cannot hold),
    /// not for the store as a whole.
    Refuse(ErrorKind),
    /// The call waits this long first.
    Delay(Duration),
    /// This runs first (for example a foreign write on the wrapped store);
    /// then the call goes through.
    Before(Arc<dyn Fn() + Send + Sync>),
    /// A read returns its bytes with one bit flipped.
    Corrupt,
    /// A read takes as long more as its bytes need at this many bytes per
    /// second (a link's bandwidth; `Delay` is its round trip).
    Throughput(u64),
}

/// What the faults fired for a call leave to its end.
#[derive(Default)]
struct Entered {
    corrupt: bool,
    rate: Option<u64>,
}

struct Rule {
    op: Option<&'static str>,
    key_prefix: Option<String>,
    fault: Fault,
    /// Firings left; `None` for every matching call.
    left: Option<u32>,
}

pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    rules: Mutex<Vec<Rule>>,
    frozen: AtomicBool,
    thawed: tokio::sync::Notify,
    log: Mutex<Vec<(&'static str, String)>>,
}

impl FaultBackend {
    pub fn new(inner: Arc<dyn Backend>) -> FaultBackend {
        FaultBackend {
            inner,
            rules: Mutex::new(Vec::new()),
            frozen: AtomicBool::new(false),
            thawed: tokio::sync::Notify::new(),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Adds a rule: `op` is a method name (`"put"`, `"head"`, …) or `None`
    /// for any; `key_prefix` limits it to keys starting so; `times` is how
    /// often it fires (`None`: always).
    pub fn inject(
        &self,
        op: Option<&'static str>,
        key_prefix: Option<&str>,
        fault: Fault,
        times: Option<u32>,
    ) {
        self.rules.lock().unwrap().push(Rule {
            op,
            key_prefix: key_prefix.map(str::to_string),
            fault,
            left: times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Every call from now on waits (as a store that stopped answering)
    /// until `thaw`.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.thawed.notify_waiters();
    }

    /// The calls made so far: (operation, key).
    pub fn calls(&self) -> Vec<(&'static str, String)> {
        self.log.lock().unwrap().clone()
    }

    /// Runs the faults of a call; `Ok` lets it go through.
    async fn enter(&self, op: &'static str, key: &str) -> BResult<Entered> {
        self.log.lock().unwrap().push((op, key.to_string()));
        loop {
            let thawed = self.thawed.notified();
            if !self.frozen.load(Ordering::SeqCst) {
                break;
            }
            thawed.await;
        }
        let fired: Vec<Fault> = {
            let mut rules = self.rules.lock().unwrap();
            let mut fired = Vec::new();
            for r in rules.iter_mut() {
                let matches = r.op.is_none_or(|o| o == op)
                    && r.key_prefix.as_deref().is_none_or(|p| key.starts_with(p))
                    && r.left != Some(0);
                if matches {
                    if let Some(n) = &mut r.left {
                        *n -= 1;
                    }
                    fired.push(r.fault.clone());
                }
            }
            rules.retain(|r| r.left != Some(0));
            fired
        };
        let mut e = Entered::default();
        for f in fired {
            match f {
                Fault::Fail(kind) => {
                    return Err(BackendError::new(
                        kind,
                        format!("injected failure of {op} {key}"),
                    ));
                }
                Fault::Refuse(kind) => {
                    return Err(
                        BackendError::new(kind, format!("injected refusal of {op} {key}"))
                            .for_path(),
                    );
                }
                Fault::Delay(d) => tokio::time::sleep(d).await,
                Fault::Before(action) => action(),
                Fault::Corrupt => e.corrupt = true,
                Fault::Throughput(r) => e.rate = Some(r.max(1)),
            }
        }
        Ok(e)
    }
}

fn flip(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(b) = data.first_mut() {
        *b ^= 1;
    }
    data
}

#[async_trait::async_trait]
impl Backend for FaultBackend {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn check(&self) -> BResult<()> {
        self.enter("check", "").await?;
        self.inner.check().await
    }

    async fn put(&self, key: &str, data: Vec<u8>, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        self.enter("put", key).await?;
        self.inner.put(key, data, meta, cond).await
    }

    async fn multipart_begin(&self, key: &str, size: u64, meta: &ObjMeta) -> BResult<Multipart> {
        self.enter("multipart_begin", key).await?;
        self.inner.multipart_begin(key, size, meta).await
    }

    async fn multipart_part(
        &self,
        mp: &Multipart,
        number: u32,
        offset: u64,
        data: Vec<u8>,
    ) -> BResult<String> {
        self.enter("multipart_part", &mp.key).await?;
        self.inner.multipart_part(mp, number, offset, data).await
    }

    async fn multipart_finish(&self, mp: &Multipart, parts: Vec<(u32, String)>) -> BResult<String> {
        self.enter("multipart_finish", &mp.key).await?;
        self.inner.multipart_finish(mp, parts).await
    }

    async fn multipart_abort(&self, mp: &Multipart) {
        let _ = self.enter("multipart_abort", &mp.key).await;
        self.inner.multipart_abort(mp).await
    }

    async fn multipart_resume(&self, mp: &Multipart) -> BResult<Option<Vec<PartInfo>>> {
        self.enter("multipart_resume", &mp.key).await?;
        self.inner.multipart_resume(mp).await
    }

    async fn rename(&self, src: &str, src_etag: Option<&str>, dst: &str) -> BResult<String> {
        self.enter("rename", dst).await?;
        self.inner.rename(src, src_etag, dst).await
    }

    async fn get_range(
        &self,
        key: &str,
        if_match: Option<&str>,
        offset: u64,
        len: u64,
    ) -> BResult<Vec<u8>> {
        let e = self.enter("get_range", key).await?;
        let data = self.inner.get_range(key, if_match, offset, len).await?;
        if let Some(rate) = e.rate {
            let secs = data.len() as f64 / rate as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        Ok(if e.corrupt { flip(data) } else { data })
    }

    async fn head(&self, key: &str) -> BResult<Option<ObjInfo>> {
        self.enter("head", key).await?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> BResult<Vec<ObjInfo>> {
        self.enter("list", prefix).await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str, cond: &Cond) -> BResult<()> {
        self.enter("delete", key).await?;
        self.inner.delete(key, cond).await
    }

    async fn list_dir(&self, prefix: &str) -> BResult<Option<Vec<ObjInfo>>> {
        self.enter("list_dir", prefix).await?;
        self.inner.list_dir(prefix).await
    }

    async fn delete_batch(&self, items: &[(String, String)]) -> BResult<Option<Vec<BResult<()>>>> {
        let first = items.first().map_or("", |(k, _)| k.as_str());
        self.enter("delete_batch", first).await?;
        self.inner.delete_batch(items).await
    }

    async fn copy(
        &self,
        src: &str,
        src_etag: Option<&str>,
        dst: &str,
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.enter("copy", dst).await?;
        self.inner.copy(src, src_etag, dst, meta, cond).await
    }

    async fn put_dir(&self, key: &str, meta: &ObjMeta, cond: &Cond) -> BResult<String> {
        self.enter("put_dir", key).await?;
        self.inner.put_dir(key, meta, cond).await
    }

    async fn delete_dir(&self, key: &str) -> BResult<()> {
        self.enter("delete_dir", key).await?;
        self.inner.delete_dir(key).await
    }

    async fn put_symlink(
        &self,
        key: &str,
        target: &[u8],
        meta: &ObjMeta,
        cond: &Cond,
    ) -> BResult<String> {
        self.enter("put_symlink", key).await?;
        self.inner.put_symlink(key, target, meta, cond).await
    }

    async fn read_symlink(&self, key: &str) -> BResult<Vec<u8>> {
        let corrupt = self.enter("read_symlink", key).await?.corrupt;
        let t = self.inner.read_symlink(key).await?;
        Ok(if corrupt { flip(t) } else { t })
    }
}
