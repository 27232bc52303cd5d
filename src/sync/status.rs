//! `locker status`: the daemon answers on a Unix socket in its data
//! directory (mode 0600) with its state as JSON. Requests are one line:
//! `status`, or `refresh` (list every backend now, then answer).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Inner;
use crate::meta::sync::now_ns;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NsStatus {
    pub name: String,
    pub backend: String,
    /// `None` until the first call to it.
    pub reachable: Option<bool>,
    pub queue: u64,
    pub pending_bytes: u64,
    pub oldest_age_s: Option<f64>,
    pub last_error: Option<String>,
    pub last_refresh_age_s: Option<f64>,
    /// Whether the store refuses a write whose condition fails (checked
    /// once at start); `None` if not known.
    #[serde(default)]
    pub conditional_writes: Option<bool>,
    /// How removals go in batches (`exact`: the store checks each key's
    /// ETag; `listed`: checked against a listing first); `None`: one at a
    /// time.
    #[serde(default)]
    pub batch_removals: Option<String>,
    /// Queued paths the store refuses for the path alone (a name it cannot
    /// hold, a symlink, a quota): kept here, tried again now and then (the
    /// first 100).
    #[serde(default)]
    pub refused: Vec<RefusedPath>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusedPath {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheStatus {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub dirty_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub namespaces: Vec<NsStatus>,
    pub cache: CacheStatus,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("locker.sock")
}

fn collect(inner: &Inner) -> Status {
    let core = &inner.core;
    let stats = core.sync_stats().unwrap_or_default();
    let now = now_ns();
    let mut names = core.namespaces().unwrap_or_default();
    for s in &stats {
        if !names.contains(&s.ns) {
            names.push(s.ns.clone());
        }
    }
    let health = inner.health.lock().unwrap().clone();
    let namespaces = names
        .into_iter()
        .map(|name| {
            let st = stats.iter().find(|s| s.ns == name);
            let h = health.get(&name).cloned().unwrap_or_default();
            let backend = inner
                .backend_for(&name)
                .map(|b| b.describe())
                .unwrap_or_else(|e| format!("unavailable: {e}"));
            NsStatus {
                backend,
                reachable: h.reachable,
                queue: st.map_or(0, |s| s.entries),
                pending_bytes: st.map_or(0, |s| s.bytes),
                oldest_age_s: st
                    .and_then(|s| s.oldest_ns)
                    .map(|t| (now - t).max(0) as f64 / 1e9),
                last_error: st.and_then(|s| s.last_error.clone()).or(h.last_error),
                last_refresh_age_s: h.last_refresh.map(|t| t.elapsed().as_secs_f64()),
                conditional_writes: h.conditional_writes,
                batch_removals: inner.batch_removal(&name).map(|m| {
                    match m {
                        super::BatchRemoval::Exact => "exact",
                        super::BatchRemoval::Listed => "listed",
                    }
                    .to_string()
                }),
                refused: core
                    .sync_refused(&name, 100)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(p, e)| RefusedPath {
                        path: String::from_utf8_lossy(&p).into_owned(),
                        error: e.unwrap_or_default(),
                    })
                    .collect(),
                name,
            }
        })
        .collect();
    let (used, limit, dirty) = core.cache_info().unwrap_or((0, 0, 0));
    Status {
        pid: std::process::id(),
        namespaces,
        cache: CacheStatus {
            used_bytes: used,
            limit_bytes: limit.min(inner.cache_limit),
            dirty_bytes: dirty,
        },
    }
}

fn answer(
    inner: &Arc<Inner>,
    handle: &tokio::runtime::Handle,
    mut s: UnixStream,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    if line.trim() == "refresh" {
        let inner2 = inner.clone();
        handle.block_on(async move { inner2.refresh_wait(Duration::from_secs(300)).await });
    }
    let st = collect(inner);
    let mut out = serde_json::to_vec(&st).map_err(std::io::Error::other)?;
    out.push(b'\n');
    s.write_all(&out)
}

/// Serves the socket on a thread of its own.
pub(crate) fn serve(
    inner: Arc<Inner>,
    data_dir: &Path,
    handle: tokio::runtime::Handle,
) -> std::io::Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (inner, handle) = (inner.clone(), handle.clone());
                std::thread::spawn(move || {
                    if let Err(e) = answer(&inner, &handle, conn) {
                        tracing::debug!(error = %e, "status request failed");
                    }
                });
            }
        })?;
    Ok(())
}

/// Asks the daemon serving `data_dir`.
pub fn query(data_dir: &Path, command: &str) -> anyhow::Result<Status> {
    let path = socket_path(data_dir);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no LOCKER daemon answers at {} ({e}); is it mounted with this data directory?",
            path.display()
        )
    })?;
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(320)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        anyhow::bail!("the daemon closed the connection after {:?}", t0.elapsed());
    }
    Ok(serde_json::from_str(&line)?)
}
