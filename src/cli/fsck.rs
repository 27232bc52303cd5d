//! `locker fsck`: checks a stopped store (the data directory's lock keeps a
//! running daemon and fsck apart).

use std::path::Path;

use anyhow::Context;

use crate::core::{Locker, LockerOptions};
use crate::datadir::DataDir;

pub fn run(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let path = super::data_path(&cfg, data_dir);
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
