//! The sync sidecar: pushes queued changes to each namespace's backend,
//! fetches what reads need, lists the backends for changes made elsewhere,
//! keeps the cache under its bound, and answers `locker status`.
//!
//! It runs on its own tokio runtime. The FUSE threads never wait on it,
//! except a read for the block it needs (through `RemoteSource`). Core calls
//! that take the state lock or touch the disk run on the blocking pool.

mod batch;
mod listing;
mod status;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, ObjKind, local::LocalBackend, s3::S3Backend, webdav::WebDavBackend,
};
use crate::config::{BackendKind, Config, NamespaceConfig, SyncConfig};
use crate::core::Locker;
use crate::core::sync::{RemoteSource, RemoteVersion};
use crate::meta::sync::{QueueEntry, REMOTE_DIR, REMOTE_FILE, REMOTE_SYMLINK, RemoteRow, now_ns};

/// Failures after which the unmount's drain no longer waits for an entry's
/// next try (with the backoff, about 1 s, then 2 s).
const DRAIN_RETRIES: u32 = 2;

pub use status::{Status, query as query_status, socket_path};

/// What the sidecar knows of one namespace's backend.
#[derive(Debug, Clone, Default)]
pub(crate) struct NsHealth {
    pub reachable: Option<bool>,
    pub last_error: Option<String>,
    pub last_refresh: Option<Instant>,
    /// Failures in a row; while `paused_until` is ahead, the queue of the
    /// namespace waits (one failing request per pause, not one per path).
    pub failures: u32,
    pub paused_until: Option<Instant>,
    /// Whether the store refuses writes whose condition fails.
    pub conditional_writes: Option<bool>,
    /// Whether the store deletes in batches (`Some`), and whether a batch
    /// honours each key's ETag (`Some(true)`).
    pub batch_etags: Option<bool>,
}

/// How removals of files go to a namespace's store in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchRemoval {
    /// Each key only if it still has the ETag LOCKER saw, checked by the
    /// store.
    Exact,
    /// The store ignores every condition: the ETags are checked against a
    /// listing of the directory first (as a HEAD checks them for a single
    /// removal), then the batch removes those that match.
    Listed,
}

pub(crate) struct Inner {
    pub core: Arc<Locker>,
    pub cfg: SyncConfig,
    pub backends: Mutex<HashMap<String, Arc<dyn Backend>>>,
    /// Where namespaces without settings (and those made by mkdir) go.
    pub default_root: PathBuf,
    pub notify: tokio::sync::Notify,
    /// A push finished: its slot is free for the next entry at once.
    pub freed: tokio::sync::Notify,
    pub inflight: Mutex<HashSet<(String, Vec<u8>)>>,
    /// Folder listings that stand in for HEADs of new files on stores
    /// that ignore conditions.
    pub listings: listing::Listings,
    /// Unmounting: push everything now.
    pub draining: AtomicBool,
    pub health: Mutex<HashMap<String, NsHealth>>,
    pub refresh_now: tokio::sync::Notify,
    pub refresh_done: tokio::sync::Notify,
    /// Refreshes asked for, and the count that the last finished refresh
    /// had seen when it started: a request is served by a refresh that
    /// began after it, and only one.
    pub refresh_asked: std::sync::atomic::AtomicU64,
    pub refresh_served: std::sync::atomic::AtomicU64,
    pub cache_limit: u64,
}

impl Inner {
    /// The backend of namespace `ns`, made on first use for namespaces that
    /// the config does not name.
    pub fn backend_for(&self, ns: &str) -> Result<Arc<dyn Backend>, BackendError> {
        let mut map = self.backends.lock().unwrap();
        if let Some(b) = map.get(ns) {
            return Ok(b.clone());
        }
        let b: Arc<dyn Backend> =
            Arc::new(LocalBackend::open(&self.default_root.join(ns), "", true)?);
        map.insert(ns.to_string(), b.clone());
        Ok(b)
    }

    pub fn note_ok(&self, ns: &str) {
        let mut h = self.health.lock().unwrap();
        let e = h.entry(ns.to_string()).or_default();
        e.reachable = Some(true);
    }

    pub fn note_error(&self, ns: &str, e: &BackendError) {
        let mut h = self.health.lock().unwrap();
        let n = h.entry(ns.to_string()).or_default();
        if e.kind == crate::backend::ErrorKind::Transient {
            n.reachable = Some(false);
        }
        n.last_error = Some(e.message.clone());
    }

    /// Namespaces whose queue is paused now.
    pub fn paused_list(&self) -> Vec<String> {
        let h = self.health.lock().unwrap();
        let now = Instant::now();
        h.iter()
            .filter(|(_, n)| n.paused_until.is_some_and(|t| now < t))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether the store of `ns` was found to refuse writes whose
    /// condition fails (probed at start).
    pub fn honours_conditions(&self, ns: &str) -> bool {
        let h = self.health.lock().unwrap();
        h.get(ns).and_then(|n| n.conditional_writes) == Some(true)
    }

    /// Whether the store of `ns` was found to accept conditions and
    /// ignore them (probed at start).
    pub fn ignores_conditions(&self, ns: &str) -> bool {
        let h = self.health.lock().unwrap();
        h.get(ns).and_then(|n| n.conditional_writes) == Some(false)
    }

    /// Whether, and how, removals of files in `ns` go in batches: only
    /// where that is as safe as one removal at a time there (probed at
    /// start).
    pub fn batch_removal(&self, ns: &str) -> Option<BatchRemoval> {
        let h = self.health.lock().unwrap();
        let n = h.get(ns)?;
        match (n.batch_etags, n.conditional_writes) {
            (Some(true), _) => Some(BatchRemoval::Exact),
            (Some(false), Some(false)) => Some(BatchRemoval::Listed),
            _ => None,
        }
    }

    pub fn paused(&self, ns: &str) -> bool {
        let h = self.health.lock().unwrap();
        h.get(ns)
            .and_then(|n| n.paused_until)
            .is_some_and(|t| Instant::now() < t)
    }

    /// A request failed: pause the namespace's queue for the retry policy's
    /// delay after this many failures in a row.
    pub fn pause(&self, ns: &str, e: &BackendError) {
        let mut h = self.health.lock().unwrap();
        let n = h.entry(ns.to_string()).or_default();
        n.failures += 1;
        n.paused_until = Some(Instant::now() + crate::backend::retry::backoff(e.kind, n.failures));
    }

    pub fn resume(&self, ns: &str) {
        let mut h = self.health.lock().unwrap();
        let n = h.entry(ns.to_string()).or_default();
        n.failures = 0;
        n.paused_until = None;
    }

    /// Asks for a refresh and waits (at most `limit`) until one that began
    /// after the request has finished.
    pub async fn refresh_wait(&self, limit: Duration) {
        let want = self.refresh_asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.refresh_now.notify_one();
        let deadline = tokio::time::Instant::now() + limit;
        while self.refresh_served.load(Ordering::SeqCst) < want {
            let done = self.refresh_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.refresh_served.load(Ordering::SeqCst) >= want {
                break;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                break;
            }
        }
    }

    /// Push now rather than wait for quiet files.
    pub fn hurry(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.core.under_pressure()
    }
}

pub struct Sidecar {
    rt: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

/// Whether `be` refuses a write whose condition fails: it writes a hidden
/// object, writes it again "only if absent", and removes it. Stores that
/// accept conditions and ignore them (Garage, some gateways) take the
/// second write.
pub async fn honours_conditions(be: &dyn Backend) -> Result<bool, BackendError> {
    let key = format!(".locker-probe-{:016x}", fastrand::u64(..));
    let m = crate::backend::ObjMeta::default();
    be.put(&key, b"probe".to_vec(), &m, &crate::backend::Cond::IfAbsent)
        .await?;
    let again = be
        .put(&key, b"again".to_vec(), &m, &crate::backend::Cond::IfAbsent)
        .await;
    let _ = be.delete(&key, &crate::backend::Cond::Any).await;
    match again {
        Ok(_) => Ok(false),
        Err(e) if e.path_only && e.kind == crate::backend::ErrorKind::Transient => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether `be` deletes in batches (`None`: it has no such request, or
/// the probe failed), and whether a batch honours the ETag given for each
/// key: it writes a hidden object, asks a batch to delete it under an ETag
/// it does not have, looks whether it is still there, and removes it.
pub async fn batch_honours_etags(be: &dyn Backend) -> Result<Option<bool>, BackendError> {
    // A store without batches says so for an empty one, before anything
    // is written there.
    if be.delete_batch(&[]).await?.is_none() {
        return Ok(None);
    }
    let key = format!(".locker-probe-{:016x}", fastrand::u64(..));
    let m = crate::backend::ObjMeta::default();
    be.put(&key, b"probe".to_vec(), &m, &crate::backend::Cond::Any)
        .await?;
    let r = be
        .delete_batch(&[(key.clone(), "locker-probe-no-such-etag".to_string())])
        .await;
    let still = be.head(&key).await;
    let _ = be.delete(&key, &crate::backend::Cond::Any).await;
    let Some(answers) = r? else {
        return Ok(None);
    };
    let still = still?.is_some();
    match answers.first() {
        Some(Err(e)) if still && e.path_only && e.kind == crate::backend::ErrorKind::Transient => {
            Ok(Some(true))
        }
        Some(Ok(())) if !still => Ok(Some(false)),
        other => Err(BackendError::permanent(format!(
            "a batch delete answered {other:?} (the object {})",
            if still { "stayed" } else { "went" }
        ))),
    }
}

/// Opens the backend a namespace's settings describe.
pub fn open_backend(
    name: &str,
    ns: &NamespaceConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Backend>, String> {
    // Every request that reaches the store is counted for the metrics.
    let store = open_store(name, ns, data_dir)?;
    Ok(Arc::new(crate::backend::metered::MeteredBackend::new(
        store, name,
    )))
}

fn open_store(
    name: &str,
    ns: &NamespaceConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Backend>, String> {
    match ns.kind() {
        BackendKind::Local => {
            let (dir, create) = match &ns.path {
                Some(p) => (p.clone(), false),
                None => (data_dir.join("backend").join(name), true),
            };
            LocalBackend::open(&dir, &ns.key_prefix(), create)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| e.message)
        }
        BackendKind::S3 => S3Backend::new(ns).map(|b| Arc::new(b) as Arc<dyn Backend>),
        BackendKind::WebDav => WebDavBackend::new(ns, &data_dir.join("spool").join(name))
            .map(|b| Arc::new(b) as Arc<dyn Backend>),
    }
}

/// Fetches for the core's reads. It holds the sidecar weakly: the core
/// holds it, and the sidecar holds the core (a strong cycle would keep a
/// stopped store open).
struct Fetcher {
    inner: std::sync::Weak<Inner>,
    handle: tokio::runtime::Handle,
}

/// A path's key, the sidecar, and the backend the path is in.
type Target = (String, Arc<Inner>, Arc<dyn Backend>);

impl Fetcher {
    /// The key of `path`, the sidecar, and the backend of `ns`.
    fn target(&self, ns: &str, path: &[u8]) -> Result<Target, String> {
        let key = std::str::from_utf8(path)
            .map_err(|_| "the path is not UTF-8".to_string())?
            .to_string();
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| "the sync sidecar has stopped".to_string())?;
        let be = inner.backend_for(ns).map_err(|e| e.message)?;
        Ok((key, inner, be))
    }
}

impl RemoteSource for Fetcher {
    fn fetch(
        &self,
        ns: &str,
        path: &[u8],
        etag: Option<&str>,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Vec<u8>>, String> {
        let (key, inner, be) = self.target(ns, path)?;
        let ranges = ranges.to_vec();
        let etag = etag.map(str::to_string);
        let ns = ns.to_string();
        self.handle.block_on(async move {
            let mut tasks = Vec::new();
            for (off, len) in ranges {
                let be = be.clone();
                let key = key.clone();
                let etag = etag.clone();
                tasks.push(tokio::spawn(async move {
                    let get = be.get_range(&key, etag.as_deref(), off, len);
                    tokio::time::timeout(Duration::from_secs(120), get)
                        .await
                        .unwrap_or_else(|_| Err(BackendError::transient("no answer within 120 s")))
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                match t.await {
                    Ok(Ok(v)) => out.push(v),
                    Ok(Err(e)) => {
                        inner.note_error(&ns, &e);
                        return Err(e.message);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            inner.note_ok(&ns);
            let m = crate::metrics::metrics();
            let l = crate::metrics::NsLabels { namespace: ns };
            m.fetches.get_or_create(&l).inc();
            m.fetch_bytes
                .get_or_create(&l)
                .inc_by(out.iter().map(|v| v.len() as u64).sum());
            Ok(out)
        })
    }
    fn current(&self, ns: &str, path: &[u8]) -> Result<Option<RemoteVersion>, String> {
        let (key, _, be) = self.target(ns, path)?;
        self.handle.block_on(async move {
            let head = tokio::time::timeout(Duration::from_secs(30), be.head(&key))
                .await
                .unwrap_or_else(|_| Err(BackendError::transient("no answer within 30 s")))
                .map_err(|e| e.message)?;
            Ok(head
                .filter(|h| h.kind == ObjKind::File)
                .map(|h| RemoteVersion {
                    etag: h.etag,
                    size: h.size,
                    mtime: h.meta.and_then(|m| m.mtime),
                }))
        })
    }
    fn report(&self, ns: &str, message: &str) {
        if let Some(inner) = self.inner.upgrade() {
            inner.note_error(ns, &BackendError::permanent(message));
        }
    }
}

impl Sidecar {
    /// Opens and checks every configured backend (a clear error, never a
    /// hang, when one is unusable) and starts the sidecar.
    pub fn start(core: Arc<Locker>, cfg: &Config, data_dir: &Path) -> anyhow::Result<Sidecar> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sync")
            .enable_all()
            .build()?;
        let mut backends = HashMap::new();
        let mut conditional = HashMap::new();
        let mut batches = HashMap::new();
        for (name, ns) in &cfg.namespaces {
            let b = open_backend(name, ns, data_dir)
                .map_err(|e| anyhow::anyhow!("namespace {name}: {e}"))?;
            let r = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), b.check()).await });
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("namespace {name}: {}: {e}", b.describe()),
                Err(_) => {
                    anyhow::bail!("namespace {name}: {}: no answer within 30 s", b.describe())
                }
            }
            tracing::info!(namespace = %name, backend = %b.describe(), "backend ready");
            let probe = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), honours_conditions(b.as_ref())).await
            });
            match probe {
                Ok(Ok(true)) => {
                    conditional.insert(name.clone(), true);
                }
                Ok(Ok(false)) => {
                    tracing::warn!(namespace = %name, backend = %b.describe(), "this store ignores conditional writes: a change made meanwhile on another host is found from each object's base and kept as a conflict copy, not refused by the store");
                    conditional.insert(name.clone(), false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(namespace = %name, error = %e, "could not tell whether the store honours conditional writes")
                }
                Err(_) => {
                    tracing::warn!(namespace = %name, "could not tell whether the store honours conditional writes: no answer within 30 s")
                }
            }
            let probe = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), batch_honours_etags(b.as_ref())).await
            });
            match probe {
                Ok(Ok(Some(honoured))) => {
                    batches.insert(name.clone(), honoured);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(namespace = %name, error = %e, "batch deletes not used: the probe failed")
                }
                Err(_) => {
                    tracing::warn!(namespace = %name, "batch deletes not used: the probe had no answer within 30 s")
                }
            }
            backends.insert(name.clone(), b);
        }
        let sidecar = Sidecar::start_with(rt, core, cfg, data_dir, backends)?;
        {
            let mut h = sidecar.inner.health.lock().unwrap();
            for (name, ok) in conditional {
                h.entry(name).or_default().conditional_writes = Some(ok);
            }
            for (name, honoured) in batches {
                h.entry(name).or_default().batch_etags = Some(honoured);
            }
        }
        status::serve(sidecar.inner.clone(), data_dir, sidecar.rt.handle().clone())?;
        Ok(sidecar)
    }

    /// Starts the sidecar on backends already opened (and checked), on `rt`,
    /// without the status socket. Namespaces without a backend get a local
    /// directory under the data dir.
    pub fn start_with(
        rt: tokio::runtime::Runtime,
        core: Arc<Locker>,
        cfg: &Config,
        data_dir: &Path,
        backends: HashMap<String, Arc<dyn Backend>>,
    ) -> anyhow::Result<Sidecar> {
        let inner = Arc::new(Inner {
            core: core.clone(),
            cfg: cfg.sync.clone(),
            backends: Mutex::new(backends),
            default_root: data_dir.join("backend"),
            notify: tokio::sync::Notify::new(),
            freed: tokio::sync::Notify::new(),
            inflight: Mutex::new(HashSet::new()),
            listings: Default::default(),
            draining: AtomicBool::new(false),
            health: Mutex::new(HashMap::new()),
            refresh_now: tokio::sync::Notify::new(),
            refresh_done: tokio::sync::Notify::new(),
            refresh_asked: std::sync::atomic::AtomicU64::new(0),
            refresh_served: std::sync::atomic::AtomicU64::new(0),
            cache_limit: cfg.cache.size_mb << 20,
        });
        core.set_remote(Arc::new(Fetcher {
            inner: Arc::downgrade(&inner),
            handle: rt.handle().clone(),
        }));
        // Fetches ahead of readers: on the blocking pool, a few at once
        // (each a ranged GET of up to 8 MiB). The core is held weakly: a
        // stopped sidecar leaves nothing holding it.
        let (weak, handle) = (Arc::downgrade(&core), rt.handle().clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.cache.fetches.max(1)));
        core.set_prefetcher(Arc::new(move |job: crate::core::sync::FetchJob| {
            let (weak, slots) = (weak.clone(), slots.clone());
            handle.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(core) = weak.upgrade() {
                        job(&core);
                    }
                })
                .await;
            });
        }));
        let w = Arc::downgrade(&inner);
        core.set_waker(Arc::new(move || {
            if let Some(w) = w.upgrade() {
                w.notify.notify_one()
            }
        }));
        rt.spawn(worker::run_queue(inner.clone()));
        rt.spawn(worker::run_refresh(inner.clone()));
        rt.spawn(worker::run_evictor(inner.clone()));
        Ok(Sidecar { rt, inner })
    }

    /// Pushes everything queued, waiting at most `timeout`; returns what is
    /// still pending (it stays queued for the next mount).
    pub fn drain(&self, timeout: Duration) -> Vec<QueueEntry> {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.notify.notify_one();
        let start = Instant::now();
        loop {
            let pending = self.inner.core.sync_pending().unwrap_or_default();
            if pending.is_empty() || start.elapsed() >= timeout {
                return pending;
            }
            // Nothing being pushed and nothing left to try now: what remains
            // waits after failures. An entry that failed only a few times
            // and is tried again before the timeout is waited for (one
            // failed request, a reset connection or a 503, must not leave
            // a file out of its backend until the next start); after more
            // failures, waiting longer would not help.
            let idle = self.inner.inflight.lock().unwrap().is_empty()
                && self
                    .inner
                    .core
                    .sync_due(now_ns(), true, &[], 1)
                    .is_ok_and(|d| d.is_empty())
                && start.elapsed() > Duration::from_millis(500);
            if idle {
                let deadline = now_ns() + timeout.saturating_sub(start.elapsed()).as_nanos() as i64;
                let retried_soon = self
                    .inner
                    .core
                    .sync_due(deadline, false, &[], 64)
                    .is_ok_and(|d| d.iter().any(|e| e.attempts <= DRAIN_RETRIES));
                if !retried_soon {
                    return pending;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            self.inner.notify.notify_one();
        }
    }

    /// Lists every backend now and applies what changed there; returns
    /// when a refresh that started after this call has finished.
    pub fn refresh(&self) {
        let inner = self.inner.clone();
        self.rt
            .block_on(async move { inner.refresh_wait(Duration::from_secs(300)).await });
    }

    pub fn shutdown(self) {
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The remote row an entry found in a backend describes.
pub(crate) fn row_of(info: &crate::backend::ObjInfo, target: Option<Vec<u8>>) -> RemoteRow {
    let meta = info.meta.clone().unwrap_or_default();
    RemoteRow {
        kind: match info.kind {
            ObjKind::File => REMOTE_FILE,
            ObjKind::Dir => REMOTE_DIR,
            ObjKind::Symlink => REMOTE_SYMLINK,
        },
        size: info.size,
        etag: info.etag.clone(),
        sha256: meta.sha256,
        mtime: meta.mtime,
        mode: meta.mode,
        target,
        at_ns: now_ns(),
        // What an object's metadata says of its content is only a label.
        verified: false,
        own: false,
        base: meta.base,
        file_id: info.file_id.clone(),
    }
}
