//! What `locker mount` and `locker serve` share: the open store (data
//! directory lock, core, sidecar and, when configured, the HTTP API), the
//! signal thread, and the orderly stop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::ApiServer;
use crate::api::scrape::MetricsServer;
use crate::config::Config;
use crate::core::{Locker, LockerOptions};
use crate::datadir::{DataDir, DataDirError, Holder};
use crate::sync::Sidecar;

/// A store being served.
pub struct Store {
    pub dir: DataDir,
    pub core: Arc<Locker>,
    sidecar: Sidecar,
    api: Option<ApiServer>,
    metrics: Option<MetricsServer>,
}

impl Store {
    /// Locks the data directory, opens the core (recovering if needed),
    /// checks the backends and starts the sidecar, then the API if the
    /// config has an `[api]` section.
    /// `mountpoint`: the mount it serves, if it is one.
    pub fn open(
        cfg: &Config,
        data_dir: Option<&Path>,
        mountpoint: Option<&Path>,
    ) -> anyhow::Result<Store> {
        // A daemon that is leaving (its mount is gone, it pushes its queue
        // before it exits) is waited for, as long as its drain may take:
        // `umount` and a new mount right after work as one expects.
        let wait = Duration::from_secs(cfg.sync.drain_timeout_s + 30);
        let dir = lock_dir(&super::data_path(cfg, data_dir), mountpoint, wait)?;
        let cache_limit = cfg.cache.size_mb << 20;
        let opts = LockerOptions {
            namespaces: cfg.namespaces.keys().cloned().collect(),
            // Uncommitted data spills into the cache: keep it within the margin.
            dirty_memory_limit: cfg.mount.dirty_memory_limit().min(cache_limit / 8),
            cache_limit,
            cache_margin: LockerOptions::margin_for(cache_limit),
            write_timeout: Duration::from_secs(cfg.cache.write_timeout_s),
            sync_delay: Duration::from_millis(cfg.sync.upload_delay_ms),
            readahead_limit: cfg.cache.readahead_mb << 20,
            verify_whole: cfg.cache.verify_whole_mb << 20,
        };
        let core = Arc::new(
            Locker::open_dir(dir.path(), opts)
                .with_context(|| format!("cannot open the store in {}", dir.path().display()))?,
        );
        core.start_committer();
        let sidecar = Sidecar::start(core.clone(), cfg, dir.path())?;
        let api = match &cfg.api {
            Some(a) => Some(ApiServer::start(core.clone(), a, dir.path())?),
            None => None,
        };
        let metrics = match &cfg.metrics {
            Some(m) => Some(MetricsServer::start(core.clone(), m)?),
            None => None,
        };
        Ok(Store {
            dir,
            core,
            sidecar,
            api,
            metrics,
        })
    }

    /// Stops the API (requests in flight may finish), commits every open
    /// file, pushes what is queued for up to the drain timeout, and makes
    /// the store durable.
    pub fn close(mut self, cfg: &Config) -> anyhow::Result<()> {
        if let Err(e) = self.dir.set_state("draining") {
            tracing::warn!(error = %e, "cannot note the drain in the lock file");
        }
        if let Some(api) = self.api.take() {
            api.shutdown();
        }
        let core = &self.core;
        core.shutdown().context("flushing the store")?;
        let timeout = Duration::from_secs(cfg.sync.drain_timeout_s);
        tracing::info!(
            timeout_s = timeout.as_secs(),
            "stopped serving; pushing what is still queued"
        );
        let pending = self.sidecar.drain(timeout);
        if pending.is_empty() {
            tracing::info!("every change is in its backend");
        } else {
            tracing::warn!(
                entries = pending.len(),
                "changes still pending after the drain timeout; they stay queued for the next start"
            );
            for e in &pending {
                tracing::warn!(
                    namespace = %e.ns,
                    path = %String::from_utf8_lossy(&e.path),
                    bytes = e.bytes,
                    attempts = e.attempts,
                    last_error = e.last_error.as_deref().unwrap_or("-"),
                    "pending"
                );
            }
        }
        self.sidecar.shutdown();
        // Scrapes could follow the drain until here.
        if let Some(m) = self.metrics.take() {
            m.shutdown();
        }
        core.shutdown().context("flushing the store")?;
        drop(self.dir);
        Ok(())
    }
}

/// Locks the data directory at `path`, waiting up to `wait` while the
/// daemon that holds it is leaving.
fn lock_dir(path: &Path, mountpoint: Option<&Path>, wait: Duration) -> anyhow::Result<DataDir> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match DataDir::open_for(path, mountpoint) {
            Ok(d) => return Ok(d),
            Err(DataDirError::Locked { holder, .. })
                if leaving(&holder) && Instant::now() < deadline =>
            {
                if !told {
                    tracing::info!(
                        pid = holder.pid.unwrap_or(0),
                        "the previous daemon on this data directory is pushing its queue before it exits; waiting for it"
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the daemon holding a data directory is on its way out: it says
/// it is draining, or the mount it served is gone (it will say so soon).
fn leaving(h: &Holder) -> bool {
    h.draining
        || h.mountpoint.as_ref().is_some_and(|m| {
            !super::mount::mounts()
                .iter()
                .any(|e| &e.point == m && e.fstype.starts_with("fuse"))
        })
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and the threads it
/// spawns later, so that only the signal thread receives them.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; the mask
    // change applies to this thread and is inherited by threads it spawns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Starts the thread that waits for the blocked signals and hands each to
/// `on_signal` until it returns false.
pub fn forward_signals(
    sigs: libc::sigset_t,
    on_signal: impl Fn(i32) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: sigs is an initialised set; sig is a valid out-pointer.
                if unsafe { libc::sigwait(&sigs, &mut sig) } == 0 && !on_signal(sig) {
                    break;
                }
            }
        })?;
    Ok(())
}
