//! Removals in batches: a tree removed here costs a request per thousand
//! files (and, on stores that ignore conditions, one listing per
//! directory), not one or two requests per file.
//!
//! Only where a batch is as safe as one removal at a time
//! (`Inner::batch_removal`, probed at start): on stores whose batch delete
//! honours each key's ETag, the store itself refuses a key changed since
//! LOCKER saw it; on stores that ignore every condition, a listing of the
//! directory checks the ETags first, as a HEAD does for a single removal
//! there. Folders' markers go in the same batches (on these flat stores a
//! marker holds nothing). Everything else (folders made here, files LOCKER
//! never saw there or pushed without recording, keys a listing or the
//! store found changed, failed requests) is left to the one-at-a-time
//! path, which looks, keeps another writer's version, retries and pauses
//! as it always does.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::DELETE_BATCH_MAX;
use crate::core::sync::RemovalCandidate;
use crate::meta::sync::{QueueEntry, now_ns};

use super::worker::blocking;
use super::{BatchRemoval, Inner};

/// A queue entry as a batch takes it: namespace, path, sequence.
pub(super) type Key = (String, Vec<u8>, i64);

/// The fewest removals in one directory that a listing is spent on (fewer
/// go one at a time: a listing would cost as much as their HEADs).
const LISTED_MIN: usize = 3;

/// What the queue loop keeps between rounds for batches.
#[derive(Default)]
pub(super) struct Batches {
    /// Entries a batch looked at and left to `process`, by change: not
    /// offered again until they change.
    declined: HashSet<Key>,
    /// Namespaces whose removals are held while more keep coming, since
    /// when.
    held_since: HashMap<String, Instant>,
}

/// What one round of batches did.
#[derive(Default)]
pub(super) struct Round {
    /// Entries finished.
    pub finished: HashSet<(String, Vec<u8>)>,
    /// Due entries held back for a batch that is still growing: not pushed
    /// one at a time this round.
    pub held: HashSet<(String, Vec<u8>)>,
}

/// Finishes, in batches, the removals a batch can take in the namespaces
/// where `entries` (due, none in flight) has one. A batch takes every
/// removal queued there, quiet or not; while removals keep coming (a tree
/// still being removed) it waits for them, up to `quiet` after the last
/// one and at most `max_hold` in all, unless a full batch is there.
pub(super) async fn remove_in_batches(
    inner: &Arc<Inner>,
    entries: &[QueueEntry],
    st: &mut Batches,
    quiet: Duration,
    max_hold: Duration,
) -> Round {
    let mut round = Round::default();
    let namespaces: BTreeSet<String> = {
        let inflight = inner.inflight.lock().unwrap();
        entries
            .iter()
            // A removal is marked with no bytes; an upload has its size.
            .filter(|e| e.bytes == 0 && e.attempts == 0)
            .filter(|e| !inflight.contains(&(e.ns.clone(), e.path.clone())))
            .filter(|e| !st.declined.contains(&(e.ns.clone(), e.path.clone(), e.seq)))
            .filter(|e| !inner.paused(&e.ns) && inner.batch_removal(&e.ns).is_some())
            .map(|e| e.ns.clone())
            .collect()
    };
    if st.declined.len() > 100_000 {
        st.declined.clear();
    }
    for ns in namespaces {
        let core = inner.core.clone();
        let ns2 = ns.clone();
        let queued = match blocking(move || core.sync_removals_queued(&ns2, 4 * DELETE_BATCH_MAX))
            .await
        {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "reading removals for a batch failed; they go one at a time");
                continue;
            }
        };
        let offered: Vec<Key> = {
            let inflight = inner.inflight.lock().unwrap();
            queued
                .iter()
                .filter(|e| !inflight.contains(&(e.ns.clone(), e.path.clone())))
                .map(|e| (e.ns.clone(), e.path.clone(), e.seq))
                .filter(|k| !st.declined.contains(k))
                .collect()
        };
        if offered.len() < 2 {
            st.held_since.remove(&ns);
            continue;
        }
        // Only what a batch can take counts (and is held): a folder made
        // here has no bytes either.
        let core = inner.core.clone();
        let asked = offered.clone();
        let candidates = match blocking(move || core.sync_batch_candidates(&asked)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading removals for a batch failed; they go one at a time");
                st.declined.extend(offered);
                continue;
            }
        };
        let taken: HashSet<Key> = candidates
            .iter()
            .map(|c| (c.ns.clone(), c.path.clone(), c.seq))
            .collect();
        st.declined
            .extend(offered.into_iter().filter(|k| !taken.contains(k)));
        if candidates.len() < 2 {
            st.declined.extend(taken);
            st.held_since.remove(&ns);
            continue;
        }
        let newest = queued
            .iter()
            .filter(|e| taken.contains(&(e.ns.clone(), e.path.clone(), e.seq)))
            .map(|e| e.since_ns)
            .max()
            .unwrap_or(0);
        let since = *st.held_since.entry(ns.clone()).or_insert_with(Instant::now);
        let coming = now_ns() - newest < quiet.as_nanos() as i64;
        // Unmounting (or short of room) pushes at once.
        let hold = coming && !inner.hurry() && candidates.len() < DELETE_BATCH_MAX;
        if hold && since.elapsed() < max_hold {
            round.held.extend(
                entries
                    .iter()
                    .filter(|e| taken.contains(&(e.ns.clone(), e.path.clone(), e.seq)))
                    .map(|e| (e.ns.clone(), e.path.clone())),
            );
            continue;
        }
        st.held_since.remove(&ns);
        round
            .finished
            .extend(batch(inner, &ns, candidates, &mut st.declined).await);
    }
    round
}

/// Removes `candidates` (all of `ns`, none in flight) in batches; returns
/// those it finished, and adds the others to `declined`.
async fn batch(
    inner: &Arc<Inner>,
    ns: &str,
    candidates: Vec<RemovalCandidate>,
    declined: &mut HashSet<Key>,
) -> HashSet<(String, Vec<u8>)> {
    // Held as in flight while the batch runs, as `process` holds its entry.
    {
        let mut inflight = inner.inflight.lock().unwrap();
        for c in &candidates {
            inflight.insert((c.ns.clone(), c.path.clone()));
        }
    }
    let items: Vec<(Vec<u8>, i64, String, bool)> = candidates
        .iter()
        .map(|c| (c.path.clone(), c.seq, c.etag.clone(), c.dir))
        .collect();
    let mut finished = HashSet::new();
    let (done, left) = remove_ns(inner, ns, items).await;
    for (p, seq) in left {
        declined.insert((ns.to_string(), p, seq));
    }
    if !done.is_empty() {
        inner.core.crash.hit("removals-sent");
        let n = done.len() as u64;
        let core = inner.core.clone();
        let (ns2, paths) = (ns.to_string(), done.clone());
        match blocking(move || core.sync_removed(&ns2, &paths)).await {
            Ok(_) => {
                inner.note_ok(ns);
                crate::metrics::metrics()
                    .pushes
                    .get_or_create(&crate::metrics::NsResultLabels {
                        namespace: ns.to_string(),
                        result: "done",
                    })
                    .inc_by(n);
                tracing::debug!(namespace = %ns, files = n, "removed in a batch");
                finished.extend(done.into_iter().map(|(p, _)| (ns.to_string(), p)));
            }
            Err(e) => {
                // Removed in the store but not recorded: the entries
                // stay, and the one-at-a-time path finds them gone.
                tracing::warn!(namespace = %ns, error = %e, "recording removals failed; they are looked at again");
                for (p, seq) in done {
                    declined.insert((ns.to_string(), p, seq));
                }
            }
        }
    }
    {
        let mut inflight = inner.inflight.lock().unwrap();
        for c in &candidates {
            inflight.remove(&(c.ns.clone(), c.path.clone()));
        }
    }
    inner.freed.notify_one();
    finished
}

/// A removal as sent: key, path, queue sequence, the ETag LOCKER saw.
type Item = (String, Vec<u8>, i64, String);

/// Runs `work` on each of `inputs`, at most `width` at once; the outputs
/// in the order they finish (a task that panicked gives none, and what it
/// held is offered again next round).
async fn at_most<I, F, T>(width: usize, inputs: Vec<I>, work: impl Fn(I) -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(inputs.len());
    let mut inputs = inputs.into_iter();
    loop {
        while set.len() < width {
            let Some(i) = inputs.next() else { break };
            set.spawn(work(i));
        }
        match set.join_next().await {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => tracing::error!(error = %e, "a batch request task failed"),
            None => break,
        }
    }
    out
}

/// Removes `items` (path, sequence, the ETag LOCKER saw) from the store of
/// `ns`; returns those now gone there, and those left to the
/// one-at-a-time path.
async fn remove_ns(
    inner: &Arc<Inner>,
    ns: &str,
    items: Vec<(Vec<u8>, i64, String, bool)>,
) -> (Vec<(Vec<u8>, i64)>, Vec<(Vec<u8>, i64)>) {
    let mut done = Vec::new();
    let mut left = Vec::new();
    let (Some(mode), Ok(be)) = (inner.batch_removal(ns), inner.backend_for(ns)) else {
        return (done, items.into_iter().map(|(p, s, _, _)| (p, s)).collect());
    };
    // What the backend holds may be the only copy of content other files
    // here still need: secured first, as before any removal.
    let core = inner.core.clone();
    let ns2 = ns.to_string();
    let secured = blocking(move || {
        Ok(items
            .into_iter()
            .map(|it| {
                let ok = it.3 || core.sync_secure(&ns2, &it.0).is_ok();
                (it, ok)
            })
            .collect::<Vec<_>>())
    })
    .await
    .unwrap_or_default();
    let mut sendable = Vec::new();
    // Directories' markers: no ETag to check (a directory is a directory),
    // sent with the files. Only stores with batches (flat object stores)
    // get here, where a marker holds nothing: removing it before a file
    // below it is refused loses nothing.
    let mut markers = Vec::new();
    for ((p, seq, etag, dir), secured) in secured {
        match String::from_utf8(p.clone()) {
            Ok(key) if secured && dir => markers.push((format!("{key}/"), p, seq, etag)),
            Ok(key) if secured => sendable.push((key, p, seq, etag)),
            _ => left.push((p, seq)),
        }
    }
    // Requests go out as many at once as uploads do.
    let width = inner.cfg.uploads.max(1);
    if mode == BatchRemoval::Listed {
        let mut by_dir: HashMap<String, Vec<Item>> = HashMap::new();
        for it in sendable.drain(..) {
            let dir = it.0.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            by_dir.entry(dir).or_default().push(it);
        }
        let mut dirs = Vec::new();
        for (dir, its) in by_dir {
            if its.len() < LISTED_MIN {
                left.extend(its.into_iter().map(|(_, p, s, _)| (p, s)));
            } else {
                dirs.push((dir, its));
            }
        }
        let listings = at_most(width, dirs, |(dir, its)| {
            let be = be.clone();
            async move { (be.list_dir(&dir).await, its) }
        })
        .await;
        for (listed, its) in listings {
            let Ok(Some(listed)) = listed else {
                left.extend(its.into_iter().map(|(_, p, s, _)| (p, s)));
                continue;
            };
            let now: HashMap<&str, &str> = listed
                .iter()
                .map(|o| (o.key.as_str(), o.etag.as_str()))
                .collect();
            for (key, p, seq, etag) in its {
                match now.get(key.as_str()) {
                    // Already gone: nothing to send.
                    None => done.push((p, seq)),
                    Some(e) if *e == etag => sendable.push((key, p, seq, etag)),
                    // Changed elsewhere since: the one-at-a-time path
                    // keeps the other writer's version.
                    Some(_) => left.push((p, seq)),
                }
            }
        }
    }
    sendable.extend(markers);
    let chunks: Vec<Vec<Item>> = sendable
        .chunks(DELETE_BATCH_MAX)
        .map(|c| c.to_vec())
        .collect();
    let answered = at_most(width, chunks, |chunk| {
        let be = be.clone();
        async move {
            let keys: Vec<(String, String)> = chunk
                .iter()
                .map(|(k, _, _, e)| (k.clone(), e.clone()))
                .collect();
            (be.delete_batch(&keys).await, chunk)
        }
    })
    .await;
    for (r, chunk) in answered {
        match r {
            Ok(Some(answers)) if answers.len() == chunk.len() => {
                for ((_, p, seq, _), a) in chunk.into_iter().zip(answers) {
                    match a {
                        Ok(()) => done.push((p, seq)),
                        Err(_) => left.push((p, seq)),
                    }
                }
            }
            r => {
                if let Err(e) = &r {
                    tracing::warn!(namespace = %ns, error = %e, "a batch delete failed; its files go one at a time");
                }
                left.extend(chunk.into_iter().map(|(_, p, s, _)| (p, s)));
            }
        }
    }
    (done, left)
}
