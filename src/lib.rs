//! LOCKER: a storage gateway. Namespaces (top-level directories of the mount)
//! hold plain files whose content lives in a content-addressed block store on
//! local disk, with metadata in SQLite.
//!
//! Dependencies point one way: `fuse`, `api`, `cli` → `core` → {`meta`, `blocks`};
//! `sync` (the sidecar) → {`core`, `backend`}; `core`, `meta`, `backend` →
//! `types` (the shared vocabulary), which depends on nothing; so does `buf`
//! (reused buffers for bulk data). The core
//! reaches the backends only through the `RemoteSource` trait the sidecar
//! installs.
//! The core knows nothing about FUSE or HTTP; the FUSE glue and the API hold
//! no filesystem logic.

pub mod api;
pub mod backend;
pub mod blocks;
pub mod buf;
pub mod cli;
pub mod config;
pub mod core;
pub mod datadir;
pub mod fuse;
pub mod meta;
pub mod metrics;
pub mod notify;
pub mod sync;
pub mod types;
