//! `locker serve`: the HTTP API (and the sidecar) without a mount, on the
//! same data directory and config, until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::mpsc;

use anyhow::bail;

use super::daemon;
use crate::notify;

pub fn run(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    if cfg.api.is_none() {
        bail!("the config has no [api] section; add one to serve the HTTP API (see `locker init`)");
    }
    let sigs = daemon::block_signals();
    let store = daemon::Store::open(&cfg, data_dir, None)?;
    tracing::info!(data_dir = %store.dir.path().display(), "serving the API without a mount");
    // The API listens once the store is open.
    notify::send("READY=1\nSTATUS=serving the HTTP API");
    let (tx, rx) = mpsc::channel();
    daemon::forward_signals(sigs, move |sig| tx.send(sig).is_ok())?;
    if let Ok(sig) = rx.recv() {
        tracing::info!(signal = sig, "stopping");
    }
    notify::send("STOPPING=1\nSTATUS=pushing what is queued");
    store.close(&cfg)?;
    tracing::info!("stopped cleanly");
    Ok(())
}
