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

# Threads for filesystem requests that may wait on a backend or the disk
# (a read or open that fetches, fsync, a truncate, a write waiting for cache
# space); one more thread serves every other request.
threads = 4

# Uncommitted file data kept in memory before it is written to the block
# store, in MiB, across all open files. Default: an eighth of the machine's
# memory, at most 1024.
# dirty_memory_mb = 1024

# The kernel's writeback cache: writes stay in the kernel's page cache and
# reach LOCKER in large batches (at close, fsync, or under memory pressure),
# and the kernel keeps each open file's size and times itself. close() and
# fsync() keep their promises. Only for mounts whose files change through
# the mount alone: with it on, a file changed through the HTTP API or in a
# backend may keep showing its old size and times here until the kernel
# forgets the file. Also the mount option writeback_cache (nowriteback_cache
# turns it off).
# writeback_cache = false

# FUSE over io_uring (Linux 6.14 or later, with the fuse module's
# enable_uring parameter on: `echo Y > /sys/module/fuse/parameters/enable_uring`
# or fuse.enable_uring=1 at boot): each CPU's requests go through a ring
# served by a thread pinned to that CPU, instead of one thread reading
# /dev/fuse for all. Small-file and metadata work is faster when the CPUs
# are otherwise idle (see BENCHMARKS.md); each CPU's ring holds about 4 MiB
# of buffers. Where the kernel does not offer
# it, the mount says so and uses /dev/fuse. Also the mount option io_uring
# (noio_uring turns it off).
# io_uring = false

[sync]
# A changed file is uploaded once it is closed and has been quiet this long.
upload_delay_ms = 3000
# A file held open for writing is uploaded (as last flushed) after this wait.
max_upload_wait_s = 60
# Uploads running at once, and parts of one multipart upload sent at once.
uploads = 8
parallel_parts = 4
# How often each backend is listed for files changed by others (0: at mount only).
refresh_interval_s = 60
# At unmount, wait this long for pending uploads; what is left stays queued.
drain_timeout_s = 30

[cache]
# Bound of the local block cache, in MiB. Blocks already in the backend are
# evicted, least recently used first; blocks not yet uploaded never are. A
# file larger than a quarter of it, read through the mount or by an API GET, is
# passed to its reader from memory rather than stored again.
size_mb = 10240
# A write that finds the cache full of not-yet-uploaded data waits this long
# for uploads, then fails with ENOSPC.
write_timeout_s = 60
# A sequential reader of data that is only in a backend gets it fetched ahead
# of it: a window that starts at 2 MiB and doubles up to this many MiB (at
# most an eighth of size_mb), in ranged GETs of up to 8 MiB, this many at
# once across all readers.
readahead_mb = 64
fetches = 4
# A file that exists only in a backend and is at most this many MiB is
# downloaded and checked against its SHA-256 before its first byte is
# served. A larger one is read by range as it is asked for (its first byte
# after one GET), pinned to the version listed, and checked against its
# SHA-256 once all of it has been read: a mismatch is logged, shown by
# `locker status`, and fails every later read of that version with EIO.
verify_whole_mb = 8

# The namespaces: the top-level directories of the mount. Each one is created
# at mount if missing; `mkdir` at the root of the mount adds more. A namespace
# with no backend settings (and one made with mkdir) is pushed to a local
# directory, <data_dir>/backend/<namespace>.
#
# Backend "local": a plain directory tree.
#   [namespaces.factory]
#   backend = "local"
#   path = "/srv/locker-files/factory"
#
# Backend "s3": any S3-compatible store. Credentials come from the standard
# AWS environment variables or shared profile, or from credentials_file (mode
# 0600, lines `access_key_id = ...` and `secret_access_key = ...`); never from
# this file.
#   [namespaces.corp]
#   backend = "s3"
#   endpoint = "https://<account>.r2.cloudflarestorage.com"
#   region = "auto"
#   bucket = "corp"
#   prefix = ""
#   path_style = false
#   credentials_file = "/etc/locker/r2.credentials"
#
# Backend "webdav": a folder on Nextcloud (or any WebDAV server: flavor
# "plain"). The password (a Nextcloud app password) comes from a 0600 file or
# an environment variable, never from this file. http:// is refused unless
# the host is this machine (allow_insecure_http = true overrides it).
#   [namespaces.deck]
#   backend = "webdav"
#   url = "https://cloud.example.com/remote.php/dav/files/alice/"
#   prefix = "LOCKER/deck/"
#   user = "alice"
#   password_file = "/etc/locker/nextcloud.password"   # or password_env = "NAME"
#   # flavor = "nextcloud"        # or "plain"; asked of the server when absent
#   # chunk_size_mb = 10          # larger files go up in chunks of this size

# Prometheus metrics (GET /metrics, no key needed) on a listener of their
# own; the API listener, when there is one, serves /metrics too.
#   [metrics]
#   listen = "127.0.0.1:9464"

# The HTTP API (PUT/GET/DELETE /api/files/..., signed URLs, references) is
# served when an [api] section is present; `locker serve` serves it without
# a mount. Keys and the signing secret come from the environment or 0600
# files, never from this file.
#   [api]
#   listen = "127.0.0.1:7070"
#   public_url = "https://files.example.com"
#   max_body_mb = 5120
#   max_expires_in_s = 604800
#   default_expires_in_s = 3600
#   signing_key_env = "LOCKER_SIGNING_KEY"        # else signing_key_file,
#   # signing_key_file = "/etc/locker/signing.key" # else <data_dir>/signing.key
#   shutdown_grace_s = 30
#   [api.keys.invoicing]
#   namespaces = ["corp"]        # or ["*"]
#   write = true
#   key_env = "LOCKER_API_KEY_INVOICING"          # or key_file = "/etc/locker/invoicing.key"
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
    pub sync: SyncConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The HTTP API; served only when the section is present.
    pub api: Option<ApiConfig>,
    /// A listener of its own for `GET /metrics`; only when present. (The
    /// API listener serves `/metrics` too.)
    pub metrics: Option<MetricsConfig>,
}

/// Prometheus metrics on a listener of their own, without a key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port to listen on.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

/// The HTTP API. Key material and the URL-signing secret never live here:
/// they come from the environment or from 0600 files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Base of the `url` and `signed_url` the API returns (scheme, host and
    /// an optional path prefix). Default: `http://` + `listen`.
    pub public_url: Option<String>,
    /// Largest request body (file) accepted, in MiB.
    #[serde(default = "default_max_body_mb")]
    pub max_body_mb: u64,
    /// Longest lifetime of a signed URL, in seconds.
    #[serde(default = "default_max_expires")]
    pub max_expires_in_s: u64,
    /// Lifetime of a signed URL when the request does not give one.
    #[serde(default = "default_expires")]
    pub default_expires_in_s: u64,
    /// The URL-signing secret: this environment variable if set, else this
    /// file (mode 0600), else `<data_dir>/signing.key` (made at first use).
    #[serde(default = "default_signing_env")]
    pub signing_key_env: String,
    pub signing_key_file: Option<PathBuf>,
    /// At shutdown, how long requests in flight may take to finish.
    #[serde(default = "default_grace_s")]
    pub shutdown_grace_s: u64,
    /// API keys by name.
    #[serde(default)]
    pub keys: BTreeMap<String, ApiKeyConfig>,
}

/// One API key: what it may touch; its material comes from `key_env`
/// (default `LOCKER_API_KEY_<NAME>`) or `key_file` (mode 0600).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Namespaces the key may use; `"*"` for all.
    pub namespaces: Vec<String>,
    /// Whether it may PUT and DELETE (otherwise read only).
    #[serde(default)]
    pub write: bool,
    pub key_env: Option<String>,
    pub key_file: Option<PathBuf>,
}

impl ApiKeyConfig {
    /// The environment variable that holds the key, when no file is named.
    pub fn env_name(&self, name: &str) -> String {
        self.key_env.clone().unwrap_or_else(|| {
            let up: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("LOCKER_API_KEY_{up}")
        })
    }
}

fn default_listen() -> String {
    "127.0.0.1:7070".into()
}
fn default_max_body_mb() -> u64 {
    5 << 10
}
fn default_max_expires() -> u64 {
    7 * 24 * 3600
}
fn default_expires() -> u64 {
    3600
}
fn default_signing_env() -> String {
    "LOCKER_SIGNING_KEY".into()
}
fn default_grace_s() -> u64 {
    30
}

impl ApiConfig {
    /// The public base URL without a trailing '/'.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    fn check(&self, namespaces: &BTreeMap<String, NamespaceConfig>) -> Result<(), String> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "api.listen = {:?}: expected an address and port such as \"127.0.0.1:7070\"",
                self.listen
            ));
        }
        if let Some(u) = &self.public_url {
            let rest = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') && !u.contains(['?', '#']) => {}
                _ => {
                    return Err(format!(
                        "api.public_url = {u:?}: expected http(s)://host[:port][/prefix]"
                    ));
                }
            }
        }
        if self.max_body_mb == 0 {
            return Err("api.max_body_mb must be at least 1".into());
        }
        if self.max_expires_in_s == 0
            || self.default_expires_in_s == 0
            || self.default_expires_in_s > self.max_expires_in_s
        {
            return Err("api: default_expires_in_s must be between 1 and max_expires_in_s".into());
        }
        for (name, k) in &self.keys {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "api.keys.{name:?}: a key name is letters, digits, '-' or '_'"
                ));
            }
            if k.key_env.is_some() && k.key_file.is_some() {
                return Err(format!(
                    "api.keys.{name}: give `key_env` or `key_file`, not both"
                ));
            }
            if k.namespaces.is_empty() {
                return Err(format!(
                    "api.keys.{name}: `namespaces` is empty; list namespaces or \"*\""
                ));
            }
            for ns in &k.namespaces {
                if ns != "*" && !namespaces.contains_key(ns) {
                    return Err(format!(
                        "api.keys.{name}: namespace {ns:?} is not configured"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub allow_other: Option<bool>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    pub dirty_memory_mb: Option<u64>,
    #[serde(default)]
    pub writeback_cache: bool,
    #[serde(default)]
    pub io_uring: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            allow_other: None,
            threads: default_threads(),
            dirty_memory_mb: None,
            writeback_cache: false,
            io_uring: false,
        }
    }
}

fn default_threads() -> usize {
    4
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

/// Settings of one namespace: the backend its files are pushed to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// `local` (default) or `s3`.
    pub backend: Option<String>,
    /// `local`: the directory the files go to. Default: `<data_dir>/backend/<namespace>`.
    pub path: Option<PathBuf>,
    /// `s3`: the endpoint URL; default: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// `s3`: the region (`auto` for Cloudflare R2). Default: `us-east-1`.
    pub region: Option<String>,
    /// `s3`: the bucket.
    pub bucket: Option<String>,
    /// Key prefix inside the bucket (or sub-directory of `path`).
    pub prefix: Option<String>,
    /// `s3`: path-style requests (`endpoint/bucket/key`), as MinIO and
    /// Garage usually need.
    #[serde(default)]
    pub path_style: bool,
    /// `s3`: a file (mode 0600) holding `access_key_id = ...` and
    /// `secret_access_key = ...` lines.
    pub credentials_file: Option<PathBuf>,
    /// `s3`: a profile of the AWS shared credentials file.
    pub profile: Option<String>,
    /// `webdav`: the user's files root, e.g.
    /// `https://cloud.example.com/remote.php/dav/files/alice/`.
    pub url: Option<String>,
    /// `webdav`: the user name.
    pub user: Option<String>,
    /// `webdav`: a file (mode 0600, owned by the daemon's user) holding the
    /// password (a Nextcloud app password).
    pub password_file: Option<PathBuf>,
    /// `webdav`: the environment variable holding the password.
    pub password_env: Option<String>,
    /// `webdav`: `nextcloud` or `plain`; asked of the server when absent.
    pub flavor: Option<String>,
    /// `webdav`: allow `http://` to a host other than this machine (the
    /// password and files then cross the network unencrypted).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// `webdav` (Nextcloud): files larger than this many MiB go up in
    /// chunks of this size. Default: 10.
    pub chunk_size_mb: Option<u64>,
}

/// The kinds of backend a namespace can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    S3,
    WebDav,
}

impl NamespaceConfig {
    pub fn kind(&self) -> BackendKind {
        match self.backend.as_deref() {
            Some("s3") => BackendKind::S3,
            Some("webdav") => BackendKind::WebDav,
            _ => BackendKind::Local,
        }
    }

    /// The prefix as used in keys: no leading slash, and a trailing one
    /// unless empty.
    pub fn key_prefix(&self) -> String {
        let p = self.prefix.as_deref().unwrap_or("").trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    }

    fn check(&self, name: &str) -> Result<(), String> {
        let kind = self.backend.as_deref().unwrap_or("local");
        let s3_only = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("bucket", self.bucket.is_some()),
            ("path_style", self.path_style),
            ("credentials_file", self.credentials_file.is_some()),
            ("profile", self.profile.is_some()),
        ];
        let webdav_only = [
            ("url", self.url.is_some()),
            ("user", self.user.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
            ("flavor", self.flavor.is_some()),
            ("allow_insecure_http", self.allow_insecure_http),
            ("chunk_size_mb", self.chunk_size_mb.is_some()),
        ];
        if kind != "webdav"
            && let Some((key, _)) = webdav_only.iter().find(|(_, set)| *set)
        {
            return Err(format!(
                "namespace {name}: `{key}` applies to backend \"webdav\", not {kind:?}"
            ));
        }
        match kind {
            "local" => {
                if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "namespace {name}: `{key}` applies to backend \"s3\", not \"local\""
                    ));
                }
                if let Some(p) = &self.path
                    && !p.is_absolute()
                {
                    return Err(format!(
                        "namespace {name}: path {} must be absolute",
                        p.display()
                    ));
                }
            }
            "s3" => {
                if self.path.is_some() {
                    return Err(format!(
                        "namespace {name}: `path` applies to backend \"local\"; use bucket and prefix"
                    ));
                }
                match self.bucket.as_deref() {
                    None | Some("") => {
                        return Err(format!("namespace {name}: backend \"s3\" needs `bucket`"));
                    }
                    Some(_) => {}
                }
                if let Some(e) = &self.endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err(format!(
                        "namespace {name}: endpoint {e:?} must start with http:// or https://"
                    ));
                }
                if self.credentials_file.is_some() && self.profile.is_some() {
                    return Err(format!(
                        "namespace {name}: give `credentials_file` or `profile`, not both"
                    ));
                }
            }
            "webdav" => self.check_webdav(name, &s3_only)?,
            other => {
                return Err(format!(
                    "namespace {name}: unknown backend {other:?} (known: \"local\", \"s3\", \"webdav\")"
                ));
            }
        }
        if let Some(p) = &self.prefix
            && (p.split('/').any(|c| c == "." || c == "..") || p.contains('\0'))
        {
            return Err(format!(
                "namespace {name}: prefix {p:?} may not contain . or .. or NUL"
            ));
        }
        Ok(())
    }
}

impl NamespaceConfig {
    fn check_webdav(&self, name: &str, s3_only: &[(&str, bool)]) -> Result<(), String> {
        if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "namespace {name}: `{key}` applies to backend \"s3\", not \"webdav\""
            ));
        }
        if self.path.is_some() {
            return Err(format!(
                "namespace {name}: `path` applies to backend \"local\"; use url and prefix"
            ));
        }
        let url = match self.url.as_deref() {
            None | Some("") => {
                return Err(format!("namespace {name}: backend \"webdav\" needs `url`"));
            }
            Some(u) => u,
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(['?', '#']) => {
                let authority = r.split('/').next().unwrap_or(r);
                if authority.contains('@') {
                    return Err(format!(
                        "namespace {name}: url must not hold a user or password; use `user` and `password_file`"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "namespace {name}: url {url:?}: expected http(s)://host[:port]/path/"
                ));
            }
        }
        if self.user.as_deref().is_none_or(str::is_empty) {
            return Err(format!("namespace {name}: backend \"webdav\" needs `user`"));
        }
        match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "namespace {name}: give `password_file` or `password_env`, not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "namespace {name}: backend \"webdav\" needs `password_file` (mode 0600) or `password_env`"
                ));
            }
            (Some(p), None) if !p.is_absolute() => {
                return Err(format!(
                    "namespace {name}: password_file {} must be absolute",
                    p.display()
                ));
            }
            _ => {}
        }
        if let Some(f) = &self.flavor
            && f != "nextcloud"
            && f != "plain"
        {
            return Err(format!(
                "namespace {name}: flavor {f:?}: expected \"nextcloud\" or \"plain\""
            ));
        }
        if let Some(c) = self.chunk_size_mb
            && !(5..=5120).contains(&c)
        {
            return Err(format!(
                "namespace {name}: chunk_size_mb = {c}: Nextcloud takes chunks of 5 to 5120 MiB"
            ));
        }
        Ok(())
    }
}

/// The sync sidecar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// A file is uploaded once it has been closed and unchanged this long.
    #[serde(default = "default_upload_delay_ms")]
    pub upload_delay_ms: u64,
    /// A file kept open for writing is uploaded anyway (as last committed)
    /// once its change has waited this long.
    #[serde(default = "default_max_upload_wait_s")]
    pub max_upload_wait_s: u64,
    /// Uploads (and other backend changes) running at once.
    #[serde(default = "default_uploads")]
    pub uploads: usize,
    /// Parts of one multipart upload sent at once.
    #[serde(default = "default_parts")]
    pub parallel_parts: usize,
    /// How often each backend is listed for changes made by others; 0 = only
    /// at mount.
    #[serde(default = "default_refresh_s")]
    pub refresh_interval_s: u64,
    /// At unmount, how long to wait for the queue to drain.
    #[serde(default = "default_drain_s")]
    pub drain_timeout_s: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            upload_delay_ms: default_upload_delay_ms(),
            max_upload_wait_s: default_max_upload_wait_s(),
            uploads: default_uploads(),
            parallel_parts: default_parts(),
            refresh_interval_s: default_refresh_s(),
            drain_timeout_s: default_drain_s(),
        }
    }
}

fn default_upload_delay_ms() -> u64 {
    3000
}
fn default_max_upload_wait_s() -> u64 {
    60
}
fn default_uploads() -> usize {
    8
}
fn default_parts() -> usize {
    4
}
fn default_refresh_s() -> u64 {
    60
}
fn default_drain_s() -> u64 {
    30
}

/// The local cache of blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound of the block cache in MiB. Default: 10240.
    #[serde(default = "default_cache_mb")]
    pub size_mb: u64,
    /// A write that finds the cache full of not-yet-uploaded data waits this
    /// long for uploads before it fails with ENOSPC.
    #[serde(default = "default_write_timeout_s")]
    pub write_timeout_s: u64,
    /// How far ahead of a sequential reader evicted or remote data is
    /// fetched, at most, in MiB (capped at an eighth of `size_mb`).
    #[serde(default = "default_readahead_mb")]
    pub readahead_mb: u64,
    /// Ranged GETs for readers ahead of them, at once, across all files.
    #[serde(default = "default_fetches")]
    pub fetches: usize,
    /// A file that exists only in a backend and is at most this large (in
    /// MiB) is downloaded and checked against its SHA-256 before its first
    /// byte is served; a larger one is read by range as it is asked for,
    /// pinned to the version listed, and checked once it has all been read.
    #[serde(default = "default_verify_whole_mb")]
    pub verify_whole_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            size_mb: default_cache_mb(),
            write_timeout_s: default_write_timeout_s(),
            readahead_mb: default_readahead_mb(),
            fetches: default_fetches(),
            verify_whole_mb: default_verify_whole_mb(),
        }
    }
}

fn default_readahead_mb() -> u64 {
    64
}
fn default_fetches() -> usize {
    4
}
fn default_verify_whole_mb() -> u64 {
    8
}

fn default_cache_mb() -> u64 {
    10240
}
fn default_write_timeout_s() -> u64 {
    60
}

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
        for (name, ns) in &cfg.namespaces {
            if !crate::core::namespace::valid_namespace(name.as_bytes()) {
                return Err(invalid(format!(
                    "namespace {name:?}: a name is 1-63 letters, digits, '-', '_' or '.', not starting with '.'"
                )));
            }
            ns.check(name).map_err(invalid)?;
        }
        if cfg.cache.size_mb < 16 {
            return Err(invalid(format!(
                "cache.size_mb = {}: must be at least 16",
                cfg.cache.size_mb
            )));
        }
        if cfg.sync.uploads == 0 || cfg.sync.parallel_parts == 0 {
            return Err(invalid(
                "sync.uploads and sync.parallel_parts must be at least 1".into(),
            ));
        }
        if cfg.mount.threads == 0 || cfg.mount.threads > 64 {
            return Err(invalid(format!(
                "mount.threads = {}: must be 1 to 64",
                cfg.mount.threads
            )));
        }
        if let Some(api) = &cfg.api {
            api.check(&cfg.namespaces).map_err(invalid)?;
        }
        if cfg.mount.dirty_memory_mb == Some(0) {
            return Err(invalid("mount.dirty_memory_mb must be at least 1".into()));
        }
        Ok(cfg)
    }
}

/// Refuses a file holding secrets (`what`) that group or others can read.
/// Reads a file holding a secret. The file is opened once, without
/// following a symlink, and the open file itself is checked (so nothing can
/// be swapped in between): a regular file, owned by the user the daemon
/// runs as, with no group or other permission bits.
pub fn read_private_file(path: &Path, what: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                format!("{what} file {shown} is a symlink; name the file itself")
            }
            _ => format!("{what} file {shown}: {e}"),
        })?;
    let m = f
        .metadata()
        .map_err(|e| format!("{what} file {shown}: {e}"))?;
    if !m.is_file() {
        return Err(format!("{what} file {shown} is not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "{what} file {shown} is owned by uid {}, not by the daemon's user (uid {me}); chown it",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{what} file {shown} is readable by group or others (mode {:o}); chmod 600 it",
            m.mode() & 0o777
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("{what} file {shown}: {e}"))?;
    Ok(text)
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
    fn webdav_settings_are_checked() {
        let base = "[namespaces.deck]\nbackend = \"webdav\"\nurl = \"https://cloud.example.com/remote.php/dav/files/alice/\"\nuser = \"alice\"\n";
        let ok =
            format!("{base}password_env = \"NC_PW\"\nflavor = \"nextcloud\"\nchunk_size_mb = 10\n");
        let c = Config::parse(&ok, "w.toml").unwrap();
        assert_eq!(c.namespaces["deck"].kind(), BackendKind::WebDav);
        for (extra, want) in [
            ("", "password_file"),
            ("password_env = \"A\"\npassword_file = \"/x\"\n", "not both"),
            ("password_file = \"rel\"\n", "absolute"),
            ("password_env = \"A\"\nflavor = \"owncloud\"\n", "flavor"),
            ("password_env = \"A\"\nchunk_size_mb = 1\n", "chunk_size_mb"),
            ("password_env = \"A\"\nbucket = \"b\"\n", "bucket"),
            ("password_env = \"A\"\npassword = \"x\"\n", "unknown field"),
        ] {
            let e = Config::parse(&format!("{base}{extra}"), "w.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = Config::parse(
            "[namespaces.x]\nbackend = \"webdav\"\nurl = \"https://a:b@h/\"\nuser = \"u\"\npassword_env = \"P\"\n",
            "w.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must not hold") && !e.contains("a:b"), "{e}");
        let e = Config::parse("[namespaces.x]\nurl = \"https://h/\"\n", "w.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("applies to backend \"webdav\""), "{e}");
    }

    #[test]
    fn wrong_type_is_refused() {
        let e = Config::parse("[mount]\nthreads = \"two\"\n", "w.toml").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
