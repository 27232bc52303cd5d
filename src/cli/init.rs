//! `locker init`: writes the embedded default configuration.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::{DEFAULT_CONFIG, default_config_path};

pub fn run(output: Option<&Path>, force: bool) -> anyhow::Result<()> {
    if output == Some(Path::new("-")) {
        std::io::stdout().write_all(DEFAULT_CONFIG.as_bytes())?;
        return Ok(());
    }
    let path = output
        .map(Path::to_path_buf)
        .unwrap_or_else(default_config_path);
    if path.exists() && !force {
        bail!(
            "{} already exists; use --force to overwrite it",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, DEFAULT_CONFIG)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
