//! `locker fsck`: checks a stopped store (the data directory's lock keeps a
//! running daemon and fsck apart).

use std::path::Path;

use anyhow::Context;

use crate::config::{Config, default_data_dir};
use crate::core::{Locker, LockerOptions};
use crate::datadir::DataDir;

pub fn run(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default_config(),
    };
    let path = data_dir
        .map(Path::to_path_buf)
        .or(cfg.data_dir)
        .unwrap_or_else(default_data_dir);
    if !path.join("meta.db").exists() {
        anyhow::bail!("{} holds no LOCKER store", path.display());
    }
    let dir = DataDir::open(&path)?;
    let core = Locker::open_dir(dir.path(), LockerOptions::default())
        .with_context(|| format!("cannot open the store in {}", dir.path().display()))?;
    let r = core.fsck()?;
    println!(
        "{} blocks checked, {} damaged (removed), {} to fetch back from a backend when read",
        r.checked, r.corrupt, r.recoverable
    );
    for p in &r.lost {
        println!("lost: {p}");
    }
    core.shutdown()?;
    if r.corrupt > 0 || !r.lost.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
