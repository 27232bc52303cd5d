//! Listings of folders, kept a short while, that stand in for a HEAD per
//! new file on stores that ignore conditional writes.
//!
//! There a HEAD before a new file's PUT only tells whether something is
//! already at the path (a write landing between the two is never refused:
//! each object's `locker-base` finds such a race later, and both versions
//! are kept). A listing of the folder tells the same for every file in it
//! at once, and `cp -r` of a tree makes many new files per folder: one
//! request instead of one per file. A listing counts for `fresh` after it
//! was taken; a file found in it, or in a folder LOCKER knows to be large,
//! still gets its HEAD.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::Backend;

use super::Inner;
use super::worker::blocking;

/// Folders with more entries than this (as LOCKER last knew the store)
/// are not listed: their listing would cost more than the HEADs.
const LIST_MAX: usize = 1000;

/// Listings kept at most (the oldest go first).
const KEPT_MAX: usize = 512;

/// One folder's listing: taken when, and the keys in it. While it is
/// being taken, the others who need it wait for it.
struct Listing {
    at: Instant,
    keys: Arc<tokio::sync::OnceCell<Option<HashSet<String>>>>,
}

#[derive(Default)]
pub(crate) struct Listings {
    by_dir: Mutex<HashMap<(String, String), Listing>>,
}

impl Listings {
    /// Whether the store of `ns` holds nothing at `key`, as a listing of
    /// its folder taken at most `fresh` ago shows (taking one if needed);
    /// `false` where that cannot be told this way (the caller HEADs).
    pub(crate) async fn absent(
        &self,
        inner: &Arc<Inner>,
        be: &Arc<dyn Backend>,
        ns: &str,
        key: &str,
        fresh: Duration,
    ) -> bool {
        let dir = key.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let cell = {
            let mut map = self.by_dir.lock().unwrap();
            let id = (ns.to_string(), dir.clone());
            match map.get(&id) {
                Some(l) if l.at.elapsed() < fresh => Some(l.keys.clone()),
                _ => {
                    if map.len() >= KEPT_MAX {
                        map.retain(|_, l| l.at.elapsed() < fresh);
                        if map.len() >= KEPT_MAX
                            && let Some(oldest) =
                                map.iter().min_by_key(|(_, l)| l.at).map(|(k, _)| k.clone())
                        {
                            map.remove(&oldest);
                        }
                    }
                    None
                }
            }
        };
        let cell = match cell {
            Some(c) => c,
            None => {
                // Only folders LOCKER knows to be small (or new) there.
                let core = inner.core.clone();
                let (ns2, d2) = (ns.to_string(), dir.clone());
                let known = blocking(move || core.sync_remote_under(&ns2, d2.as_bytes(), LIST_MAX))
                    .await
                    .unwrap_or(usize::MAX);
                if known >= LIST_MAX {
                    return false;
                }
                let mut map = self.by_dir.lock().unwrap();
                let id = (ns.to_string(), dir.clone());
                // Someone else may have started one meanwhile.
                match map.get(&id) {
                    Some(l) if l.at.elapsed() < fresh => l.keys.clone(),
                    _ => {
                        let c = Arc::new(tokio::sync::OnceCell::new());
                        map.insert(
                            id,
                            Listing {
                                at: Instant::now(),
                                keys: c.clone(),
                            },
                        );
                        c
                    }
                }
            }
        };
        let keys = cell
            .get_or_init(|| async {
                match be.list_dir(&dir).await {
                    Ok(Some(v)) => Some(v.into_iter().map(|o| o.key).collect()),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!(namespace = %ns, folder = %dir, error = %e, "listing a folder failed; its files are looked at one by one");
                        None
                    }
                }
            })
            .await;
        match keys {
            Some(k) => !k.contains(key),
            None => false,
        }
    }
}
