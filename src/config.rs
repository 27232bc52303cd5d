//! The configuration: one TOML file, every key known (unknown keys are an
//! error, so a typo never silently does nothing). With no file, the
//! embedded default below applies; `locker init` writes it out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The embedded default configuration, with comments.
pub const DEFAULT_CONFIG: &str = r#"# LOCKER configuration.
#
# Every key is optional; an unknown key is an error.

# Where the metadata database and the block store live. Default: /var/lib/locker
# when run as root, $XDG_DATA_HOME/locker (or ~/.local/share/locker) otherwise.
# The --data-dir option overrides it.
# data_dir = "/var/lib/locker"

[mount]
# Let every user's programs use the mount, with POSIX permission checks done
# by the kernel. Default: true when run as root (non-root users need
# user_allow_other in /etc/fuse.conf).
# allow_other = true

# Threads serving filesystem requests.
threads = 2

# Uncommitted file data kept in memory before it is written to the block
# store, in MiB, across all open files. Default: an eighth of the machine's
# memory, at most 1024.
# dirty_memory_mb = 1024

# The namespaces: the top-level directories of the mount. Each one is created
# at mount if missing; `mkdir` at the root of the mount adds more.
[namespaces.corp]
[namespaces.deck]
[namespaces.emails]
[namespaces.factory]
[namespaces.hst]
"#;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub mount: MountConfig,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub allow_other: Option<bool>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    pub dirty_memory_mb: Option<u64>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            allow_other: None,
            threads: default_threads(),
            dirty_memory_mb: None,
        }
    }
}

fn default_threads() -> usize {
    2
}

impl MountConfig {
    /// The dirty-memory limit in bytes: as configured, else an eighth of the
    /// machine's memory, at most 1 GiB (and at least 64 MiB).
    pub fn dirty_memory_limit(&self) -> u64 {
        if let Some(mb) = self.dirty_memory_mb {
            return mb << 20;
        }
        // SAFETY: sysconf has no preconditions.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let total = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
        (total / 8).clamp(64 << 20, 1 << 30)
    }
}

/// Settings of one namespace. Empty for now: every namespace is stored in
/// the local block store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// The embedded default.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, "<embedded default>")
            .expect("the embedded default config parses")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a config; errors name the file, the line and what
    /// is wrong.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let message = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {}", e.message())
                }
                None => e.message().to_string(),
            };
            ConfigError::Parse {
                path: origin.to_string(),
                message,
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        for name in cfg.namespaces.keys() {
            if !crate::core::namespace::valid_namespace(name.as_bytes()) {
                return Err(invalid(format!(
                    "namespace {name:?}: a name is 1-63 letters, digits, '-', '_' or '.', not starting with '.'"
                )));
            }
        }
        if cfg.mount.threads == 0 || cfg.mount.threads > 64 {
            return Err(invalid(format!(
                "mount.threads = {}: must be 1 to 64",
                cfg.mount.threads
            )));
        }
        if cfg.mount.dirty_memory_mb == Some(0) {
            return Err(invalid("mount.dirty_memory_mb must be at least 1".into()));
        }
        Ok(cfg)
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The data directory used when neither the config nor the command line
/// names one.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/locker");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("locker");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/locker")
}

/// Where `locker init` writes the config by default.
pub fn default_config_path() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/locker/locker.toml");
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("locker/locker.toml");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/locker/locker.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_lists_the_five_namespaces() {
        let c = Config::default_config();
        let names: Vec<&str> = c.namespaces.keys().map(|s| s.as_str()).collect();
        assert_eq!(names, ["corp", "deck", "emails", "factory", "hst"]);
        assert!(c.data_dir.is_none());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let e = Config::parse("[mount]\nthreads = 2\ncolour = \"blue\"\n", "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("x.toml") && s.contains("line 3") && s.contains("colour"),
            "{s}"
        );
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let e = Config::parse("data_dir = \"/x\"\n[mount\n", "y.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("y.toml") && s.contains("line 2"), "{s}");
    }

    #[test]
    fn bad_namespace_name_is_refused() {
        let e = Config::parse("[namespaces.\"a b\"]\n", "z.toml").unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
    }

    #[test]
    fn wrong_type_is_refused() {
        let e = Config::parse("[mount]\nthreads = \"two\"\n", "w.toml").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
