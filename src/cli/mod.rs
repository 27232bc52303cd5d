//! The command line: one file per subcommand.

mod daemon;
mod fsck;
pub mod helper;
mod init;
mod mount;
mod refs;
mod serve;
mod status;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{Config, default_data_dir};

/// The configuration file, or the embedded default.
fn load_config(config: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default_config(),
    })
}

/// The data directory the command line or the config names.
fn data_path(cfg: &Config, data_dir: Option<&Path>) -> PathBuf {
    data_dir
        .map(Path::to_path_buf)
        .or_else(|| cfg.data_dir.clone())
        .unwrap_or_else(default_data_dir)
}

#[derive(Debug, Parser)]
#[command(
    name = "locker",
    version,
    about = "LOCKER storage gateway: mount namespaces backed by local disk, S3 or other stores"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount LOCKER at MOUNTPOINT and serve it in the foreground until
    /// SIGINT, SIGTERM or an unmount, then flush, push and exit.
    Mount {
        /// Directory to mount on (must exist).
        mountpoint: PathBuf,
        /// Configuration file (default: the embedded configuration).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Show only this namespace, or a folder in it (NS or NS/DIR/...),
        /// at the mountpoint. A missing folder is created.
        #[arg(long, value_name = "NS[/DIR]")]
        namespace: Option<String>,
        /// The mount's source, as findmnt and umount show it (default:
        /// locker, or locker:NS/DIR with --namespace).
        #[arg(long)]
        source: Option<String>,
        /// Mount options, comma-separated, as in fstab: config=FILE,
        /// data_dir=DIR, namespace=NS[/DIR], source=NAME, log=FILE,
        /// allow_other, ro, rw, nosuid, nodev, noexec, suid, dev, exec,
        /// noatime, relatime (the default), strictatime, writeback_cache,
        /// nowriteback_cache, io_uring, noio_uring. Options for mount(8) and systemd (_netdev,
        /// nofail, x-*, ...) are ignored.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
    },
    /// Serve the HTTP API (config section [api]) and push changes to the
    /// backends, without mounting, until SIGINT or SIGTERM.
    Serve {
        /// Configuration file (default: the embedded configuration).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the locker:// reference of a file in a LOCKER mount.
    Ref {
        /// A path inside the mount.
        path: PathBuf,
    },
    /// Print the path in the mount of a locker:// reference.
    Resolve {
        /// A reference: locker://namespace/path.
        reference: String,
        /// The LOCKER mount to use (default: the only one active).
        #[arg(long)]
        mountpoint: Option<PathBuf>,
    },
    /// Print a signed URL for a file: anyone can GET it until it expires,
    /// without an API key. Uses the daemon's public URL and signing key.
    Sign {
        /// A file in the mount, a locker:// reference, or namespace/path.
        path: String,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Configuration file (default: the embedded configuration).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the running daemon's state: per namespace its backend, whether
    /// it is reachable, the upload queue and the last error; the cache.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List every backend now (a refresh) before answering.
        #[arg(long)]
        refresh: bool,
        /// Keep showing it, every SECONDS (default 2), until interrupted:
        /// redrawn in place on a terminal, one reading after another in a
        /// pipe (JSON one per line).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// Configuration file (to find the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory of the daemon (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Re-check every block of a stopped store against its SHA-256: damaged
    /// blocks are removed (fetched back from the backend when read, if it
    /// holds them) and files whose data is lost are listed. Exits 1 if
    /// anything was damaged or missing.
    Fsck {
        /// Configuration file (to find the data directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write the default configuration, with comments, to a file.
    Init {
        /// Where to write it (default: /etc/locker/locker.toml as root,
        /// ~/.config/locker/locker.toml otherwise; "-" for standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Mount { .. } | Command::Serve { .. }) {
        // A reader that goes away (`locker status | head -1`) ends the
        // command quietly, as it does other Unix tools. (Rust ignores
        // SIGPIPE, so a write would fail and printing would panic.) The
        // daemons keep ignoring it: a client closing its connection must
        // not kill them.
        // SAFETY: setting a signal's disposition to its default is
        // async-signal-safe and affects only this process.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Mount {
            mountpoint,
            config,
            data_dir,
            namespace,
            source,
            options,
        } => {
            let mut opts = mount::Options::parse(&options.join(","))?;
            opts.config = config.or(opts.config);
            opts.data_dir = data_dir.or(opts.data_dir);
            opts.namespace = namespace.or(opts.namespace);
            opts.source = source.or(opts.source);
            mount::run(&mountpoint, opts)
        }
        Command::Serve { config, data_dir } => serve::run(config.as_deref(), data_dir.as_deref()),
        Command::Ref { path } => refs::reference(&path),
        Command::Resolve {
            reference,
            mountpoint,
        } => refs::resolve(&reference, mountpoint.as_deref()),
        Command::Sign {
            path,
            expires,
            config,
            data_dir,
        } => refs::sign(&path, &expires, config.as_deref(), data_dir.as_deref()),
        Command::Init { output, force } => init::run(output.as_deref(), force),
        Command::Fsck { config, data_dir } => fsck::run(config.as_deref(), data_dir.as_deref()),
        Command::Status {
            json,
            refresh,
            watch,
            config,
            data_dir,
        } => status::run(json, refresh, watch, config.as_deref(), data_dir.as_deref()),
    }
}
