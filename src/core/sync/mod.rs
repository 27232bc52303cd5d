//! The core's side of the sync sidecar: which paths changed (the queue, kept
//! in the same transaction as each change), consistent snapshots of what to
//! push, what the backend is known to hold (the remote table), changes found
//! in the backend by a refresh, conflicts, and the cache bound (eviction of
//! blocks the backend holds, and fetching them back).
//!
//! Marks: every change that a backend should see marks `(namespace, path)`
//! in `sync_queue` inside the transaction that makes the change, so a change
//! is never committed without its queue entry. Changes made *from* the
//! backend (refresh) are applied with marks suppressed.
//!
//! Files: `marks` (the queue marks), `snapshot` (what to push), `sidecar`
//! (the calls the sidecar makes), `apply` (changes found in a backend),
//! `conflict` (both sides changed), `cache` (the bound and eviction), `fetch`
//! (evicted blocks and backend-only files fetched back). Shared helpers are
//! here.

mod apply;
mod cache;
mod conflict;
mod fetch;
mod marks;
mod passing;
mod sidecar;
mod snapshot;
mod stream;

use rusqlite::Connection;

use crate::core::types::*;
use crate::core::{CoreResult, Locker};
use crate::meta;

pub use apply::{Applied, Invalidate, Invalidator};
pub use fetch::{FetchJob, Prefetcher, RemoteSource, RemoteVersion};
pub(crate) use fetch::{Fetching, Purpose};
pub(crate) use marks::{DirPaths, mark_ino, mark_moved, mark_name, mark_removed, ns_path};
pub(crate) use passing::Passing;
pub use sidecar::RemovalCandidate;
pub use snapshot::{FileSnap, LocalEntry, Snapshot};
pub(crate) use stream::Stream;

/// A path's directory, last name and entry (if there is one).
pub(super) type Found = (InodeNo, Vec<u8>, Option<meta::InodeRow>);

impl Locker {
    /// The directory, name and (if any) entry at `ns/path`.
    fn resolve_in(conn: &Connection, ns: &str, path: &[u8]) -> CoreResult<Option<Found>> {
        let Some(mut cur) = meta::lookup(conn, InodeNo::ROOT, ns.as_bytes())? else {
            return Ok(None);
        };
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, dirs) = comps.split_last().expect("split yields one part");
        for c in dirs {
            match meta::lookup_row(conn, cur, c)? {
                Some(r) if r.attr.kind == FileKind::Dir => cur = r.attr.ino,
                _ => return Ok(None),
            }
        }
        let row = meta::lookup_row(conn, cur, last)?;
        Ok(Some((cur, last.to_vec(), row)))
    }
}
