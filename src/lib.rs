//! LOCKER: a storage gateway. Namespaces (top-level directories of the mount)
//! hold plain files whose content lives in a content-addressed block store on
//! local disk, with metadata in SQLite.
//!
//! Dependencies point one way: `fuse`, `cli` → `core` → {`meta`, `blocks`}.
//! The core knows nothing about FUSE; the FUSE glue holds no filesystem logic.

pub mod blocks;
pub mod cli;
pub mod config;
pub mod core;
pub mod datadir;
pub mod fuse;
pub mod meta;
