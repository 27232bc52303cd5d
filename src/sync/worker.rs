//! The sidecar's loops: the upload queue, the remote refresh and eviction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{
    BResult, Backend, BackendError, Cond, ErrorKind, Multipart, ObjKind, ObjMeta,
};
use crate::core::sync::{Applied, FileSnap, LocalEntry, Snapshot};
use crate::meta::sync::{
    QueueEntry, REMOTE_DIR, REMOTE_FILE, REMOTE_SYMLINK, RemoteRow, UploadRec, now_ns,
};

use super::{Inner, row_of};

/// Files up to this size go up in one PUT.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Multipart part size (equal parts, the last one shorter), grown for huge
/// files to stay within 10,000 parts.
const PART_SIZE: u64 = 8 << 20;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::core::CoreResult<T> + Send + 'static,
) -> BResult<T> {
    // Failures here are of this machine's store and this path, not of the
    // backend: they must not pause the backend's queue.
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BackendError::transient(format!("local store: {e}")).for_path()),
        Err(e) => Err(BackendError::transient(format!("local task failed: {e}")).for_path()),
    }
}

pub(crate) async fn run_queue(inner: Arc<Inner>) {
    abort_orphan_uploads(&inner).await;
    // Removals looked at and kept (something is at the path again, or the
    // backend holds it), by change: not looked at again until it changes.
    let mut kept = std::collections::HashSet::new();
    let mut batches = super::batch::Batches::default();
    // Removals are batched once they stop coming for the quiet delay, and
    // never held more than a few of those.
    let quiet = Duration::from_millis(inner.cfg.upload_delay_ms.max(50));
    let max_hold = (quiet * 4).max(Duration::from_secs(1));
    // How far to read the queue. The entries in flight became ready first,
    // so they come first in its order, and a few rows per free slot past
    // them are enough to start pushes: a look runs at every timer wake
    // (every 2 ms while a burst of changes turns quiet), under the state
    // lock the mount's requests wait on. Removals and entries that need no
    // request come in runs (a tree made and removed): after a round that
    // met one, read wide, so that a batch or a forget takes hundreds at a
    // time.
    let mut wide = true;
    loop {
        // Due entries held back for a growing batch this round.
        let mut held = std::collections::HashSet::new();
        let hurry = inner.hurry();
        // Entries were finished without a request: look again at once.
        let mut more = false;
        let free = inner
            .cfg
            .uploads
            .saturating_sub(inner.inflight.lock().unwrap().len());
        // Every slot is taken: nothing can start before one comes free,
        // which wakes the loop.
        let mut busy = free == 0;
        if free > 0 {
            let core = inner.core.clone();
            // Paused namespaces are left out in the query, so a backend
            // that is down cannot crowd out the others.
            let skip = inner.paused_list();
            let limit = if wide {
                512
            } else {
                (inner.cfg.uploads + free * 4).min(512)
            };
            let due =
                tokio::task::spawn_blocking(move || core.sync_due(now_ns(), hurry, &skip, limit))
                    .await;
            match due {
                Ok(Ok(entries)) => {
                    let mut forgotten = forget_unheld(&inner, &entries, &mut kept).await;
                    // (What was forgotten has left the queue: a batch does
                    // not find it there.)
                    let round = super::batch::remove_in_batches(
                        &inner,
                        &entries,
                        &mut batches,
                        quiet,
                        max_hold,
                    )
                    .await;
                    forgotten.extend(round.finished);
                    held = round.held;
                    more = !forgotten.is_empty();
                    // (Removals held for a batch: read wide until it goes,
                    // so that what queued behind them is not kept waiting.)
                    wide = more
                        || !held.is_empty()
                        || may_go_without_push(&entries, &inner.inflight.lock().unwrap(), &kept);
                    let mut started = 0;
                    for e in entries {
                        if started >= free {
                            break;
                        }
                        let k = (e.ns.clone(), e.path.clone());
                        if inner.paused(&e.ns) || forgotten.contains(&k) || held.contains(&k) {
                            continue;
                        }
                        if !inner.inflight.lock().unwrap().insert(k) {
                            continue;
                        }
                        started += 1;
                        tokio::spawn(process(inner.clone(), e));
                    }
                    busy = started >= free;
                }
                Ok(Err(e)) => tracing::error!(error = %e, "reading the upload queue failed"),
                Err(e) => tracing::error!(error = %e, "reading the upload queue failed"),
            }
        }
        if more {
            continue;
        }
        // Sleep until a change comes in or the next entry becomes quiet
        // enough (at most half a second, for retries and pauses). While
        // every slot is taken, a slot coming free wakes the loop first:
        // the queue is not asked (a trip to the blocking pool per push).
        let next = if busy {
            None
        } else {
            let core = inner.core.clone();
            tokio::task::spawn_blocking(move || core.sync_next_ready())
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten()
        };
        let mut wait = match next {
            Some(t) => Duration::from_nanos((t - now_ns()).clamp(2_000_000, 500_000_000) as u64),
            None => Duration::from_millis(500),
        };
        if !held.is_empty() {
            // Held entries are due: look again when the batch may be
            // complete, neither at once nor only at the next other entry.
            wait = wait.clamp(quiet / 4, quiet);
        }
        tokio::select! {
            _ = inner.notify.notified() => {
                // Let a burst of changes gather before the next look.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A slot came free: the next entry goes at once (waiting here
            // for a burst left each slot idle up to 20 ms per file).
            _ = inner.freed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Whether some of `entries` may still leave the queue without a push of
/// their own (a removal or a folder never looked at: forgotten, or taken
/// by a batch), so that the next look reads the queue wide. Not those in
/// flight, nor those already looked at (`kept`, at their sequence): a
/// folder made here waits in the queue, with no bytes, until its turn,
/// and while it did, every look read 512 rows instead of a few (17 % of
/// the sidecar's CPU while 3,000 small files went up).
pub(super) fn may_go_without_push(
    entries: &[QueueEntry],
    inflight: &std::collections::HashSet<(String, Vec<u8>)>,
    kept: &std::collections::HashSet<(String, Vec<u8>, i64)>,
) -> bool {
    entries.iter().any(|e| {
        e.bytes == 0
            && e.attempts == 0
            && !inflight.contains(&(e.ns.clone(), e.path.clone()))
            && !kept.contains(&(e.ns.clone(), e.path.clone(), e.seq))
    })
}

/// Finishes the entries of `entries` (not in flight) whose push would
/// need no request, in one look at the store (`Locker::sync_forget_unheld`);
/// returns them.
async fn forget_unheld(
    inner: &Arc<Inner>,
    entries: &[QueueEntry],
    kept: &mut std::collections::HashSet<(String, Vec<u8>, i64)>,
) -> std::collections::HashSet<(String, Vec<u8>)> {
    let idle: Vec<(String, Vec<u8>, i64)> = {
        let inflight = inner.inflight.lock().unwrap();
        entries
            .iter()
            // A removal is marked with no bytes; an upload has its size.
            .filter(|e| e.bytes == 0 && !inflight.contains(&(e.ns.clone(), e.path.clone())))
            .map(|e| (e.ns.clone(), e.path.clone(), e.seq))
            .filter(|k| !kept.contains(k))
            .collect()
    };
    if idle.is_empty() {
        return Default::default();
    }
    let core = inner.core.clone();
    let asked = idle.clone();
    let forgotten: std::collections::HashSet<(String, Vec<u8>)> = match tokio::task::spawn_blocking(
        move || core.sync_forget_unheld(&idle),
    )
    .await
    {
        Ok(Ok(v)) => v.into_iter().collect(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "finishing queue entries that need no request failed; they are pushed");
            return Default::default();
        }
        Err(e) => {
            tracing::warn!(error = %e, "finishing queue entries that need no request failed; they are pushed");
            return Default::default();
        }
    };
    if kept.len() > 100_000 {
        kept.clear();
    }
    kept.extend(
        asked
            .into_iter()
            .filter(|(ns, path, _)| !forgotten.contains(&(ns.clone(), path.clone()))),
    );
    forgotten
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Done,
    /// Not yet (a file still open for writing): look again after the delay.
    Later,
    /// The file was deleted while it was being pushed: the push stopped,
    /// and the entry (queued again by the delete) is taken as it now is.
    Superseded,
    /// Read before a change or a failed push moved its time on: not pushed.
    NotDue,
    /// Waits for the entries below it (see `Locker::sync_wait_below`).
    Waiting,
    /// Landed, and looked at again later before it is confirmed (see
    /// `landed_here`).
    Unconfirmed,
}

async fn process(inner: Arc<Inner>, e: QueueEntry) {
    let t0 = Instant::now();
    let r = reconcile(&inner, &e).await;
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    let result = match &r {
        Ok(Outcome::Done | Outcome::Unconfirmed) => Some("done"),
        Ok(Outcome::Later) => Some("later"),
        Ok(Outcome::Superseded) => Some("superseded"),
        // Not handled: nothing to count.
        Ok(Outcome::NotDue | Outcome::Waiting) => None,
        Err(_) => Some("failed"),
    };
    if let Some(result) = result {
        crate::metrics::metrics()
            .pushes
            .get_or_create(&crate::metrics::NsResultLabels {
                namespace: ns.clone(),
                result,
            })
            .inc();
    }
    match r {
        Ok(Outcome::Done | Outcome::Unconfirmed) => {
            inner.note_ok(&ns);
            inner.resume(&ns);
            tracing::debug!(namespace = %ns, path = %String::from_utf8_lossy(&path), ms = t0.elapsed().as_millis() as u64, "pushed");
        }
        Ok(Outcome::NotDue) => {
            tracing::debug!(namespace = %ns, path = %String::from_utf8_lossy(&path), "no longer due; left for later");
        }
        Ok(Outcome::Waiting) => {
            tracing::debug!(namespace = %ns, path = %String::from_utf8_lossy(&path), "waits for what is queued below it");
        }
        Ok(Outcome::Superseded) => {
            tracing::debug!(namespace = %ns, path = %String::from_utf8_lossy(&path), ms = t0.elapsed().as_millis() as u64, "deleted while pushed; stopped");
        }
        Ok(Outcome::Later) => {
            let ready = now_ns() + inner.cfg.upload_delay_ms as i64 * 1_000_000;
            let _ = tokio::task::spawn_blocking(move || {
                core.sync_retry(&ns, &path, ready, None, false)
            })
            .await;
        }
        Err(err) => {
            inner.note_error(&ns, &err);
            if !err.path_only {
                // The backend as a whole is in trouble: hold its other
                // entries too, rather than send every one to fail.
                inner.pause(&ns, &err);
            }
            let refused = err.kind == ErrorKind::Permanent && err.path_only;
            let wait = if refused {
                // This store refuses this one entry (a name it cannot
                // hold, a symlink, a quota): tried again less and less
                // often, up to every ten minutes, until a change here or
                // an admin lifts the cause; `locker status` lists it.
                Duration::from_secs(30u64 << e.attempts.min(5)).min(Duration::from_secs(600))
            } else {
                crate::backend::retry::backoff(err.kind, e.attempts + 1)
            };
            tracing::warn!(
                namespace = %ns,
                path = %String::from_utf8_lossy(&path),
                attempt = e.attempts + 1,
                retry_in_s = wait.as_secs(),
                error = %err,
                "pushing a change failed; it stays queued"
            );
            let ready = now_ns() + wait.as_nanos() as i64;
            let msg = err.message.clone();
            let _ = tokio::task::spawn_blocking(move || {
                core.sync_retry(&ns, &path, ready, Some(&msg), refused)
            })
            .await;
        }
    }
    inner
        .inflight
        .lock()
        .unwrap()
        .remove(&(e.ns.clone(), e.path.clone()));
    inner.freed.notify_one();
}

/// The metadata an upload of `f` carries; `rec` is what LOCKER last knew
/// at the path (its content is the version this one replaces).
fn file_meta(f: &FileSnap, sha: [u8; 32], rec: Option<&RemoteRow>) -> ObjMeta {
    ObjMeta {
        sha256: Some(sha),
        mtime: Some(f.mtime),
        mode: Some(f.mode & 0o7777),
        base: Some(
            rec.filter(|r| r.kind == REMOTE_FILE)
                .and_then(|r| r.sha256)
                .unwrap_or(crate::backend::NO_BASE),
        ),
    }
}

pub(super) async fn reconcile(inner: &Arc<Inner>, e: &QueueEntry) -> BResult<Outcome> {
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    let hurry = inner.hurry();
    // One trip to the blocking pool for the snapshot and what must come
    // before any push of it.
    let snap = blocking(move || {
        let Some(snap) = core.sync_snapshot(&ns, &path)? else {
            return Ok(Found::Gone);
        };
        // The loop read `e` a while ago: a push of it may have failed
        // since (its retry now waits), or a change here restarted its
        // quiet delay. Only what the queue says is due now goes. What the
        // backend holds here may be the only copy of content other files
        // here still need: secured before it is replaced or deleted.
        let stop = if !snap.entry.due(now_ns(), hurry) {
            Some(Ok(Found::NotDue))
        } else {
            core.sync_secure(&ns, &path).err().map(Err)
        };
        match stop {
            // Not pushed: the snapshot's pins go now, whichever way out.
            Some(r) => {
                if let LocalEntry::File(f) = &snap.local {
                    core.sync_release(f);
                }
                r
            }
            None => Ok(Found::Due(Box::new(snap))),
        }
    })
    .await?;
    let snap = match snap {
        Found::Gone => return Ok(Outcome::Done),
        Found::NotDue => return Ok(Outcome::NotDue),
        Found::Due(snap) => *snap,
    };
    let seq = snap.entry.seq;
    match snap.local {
        LocalEntry::File(f) => {
            let f = Arc::new(f);
            let r = push_file(inner, e, seq, snap.remote, f.clone()).await;
            // (Nothing to release: no trip to the blocking pool for it.)
            if !f.pins_nothing() {
                let core = inner.core.clone();
                let _ = tokio::task::spawn_blocking(move || core.sync_release(&f)).await;
            }
            r
        }
        local => push_other(inner, e, seq, snap.remote, local).await,
    }
}

/// What `reconcile` found at a queue entry's path.
enum Found {
    /// Nothing to push: the entry is gone.
    Gone,
    /// Not due yet (or no longer).
    NotDue,
    /// Its snapshot, secured and due.
    Due(Box<Snapshot>),
}

/// The condition a write to a key lands under, from what its HEAD saw: over
/// that very file or symlink, or where there was nothing (a directory seen
/// there was removed first).
fn dest_cond(head: Option<&crate::backend::ObjInfo>) -> Cond {
    match head {
        Some(h) if h.kind != ObjKind::Dir => Cond::IfMatch(h.etag.clone()),
        Some(_) | None => Cond::IfAbsent,
    }
}

fn key_of(e: &QueueEntry) -> BResult<String> {
    String::from_utf8(e.path.clone()).map_err(|_| {
        BackendError::permanent(
            "the name is not valid UTF-8, which object stores require; kept local only",
        )
        .for_path()
    })
}

async fn done(
    inner: &Arc<Inner>,
    e: &QueueEntry,
    seq: i64,
    row: Option<RemoteRow>,
) -> BResult<Outcome> {
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_done(&ns, &path, seq, row)).await?;
    Ok(Outcome::Done)
}

/// The content a push to the entry's path was writing when it was last
/// not recorded (a crash or stop in between), if any.
async fn sent_here(inner: &Arc<Inner>, e: &QueueEntry) -> BResult<Vec<[u8; 32]>> {
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_sent(&ns, &path)).await
}

/// Whether `h` is an object such pushes were writing: a file carrying one
/// of those contents' checksums, which LOCKER put there itself.
fn landed(sent: &[[u8; 32]], h: &crate::backend::ObjInfo) -> bool {
    h.kind == ObjKind::File
        && h.meta
            .as_ref()
            .and_then(|m| m.sha256)
            .is_some_and(|s| sent.contains(&s))
}

/// The backend's entry as a remote row, with a symlink's target.
async fn head_row(
    be: &dyn Backend,
    key: &str,
    info: &crate::backend::ObjInfo,
) -> BResult<RemoteRow> {
    let target = if info.kind == ObjKind::Symlink {
        Some(be.read_symlink(key).await?)
    } else {
        None
    };
    Ok(row_of(info, target))
}

async fn conflict(inner: &Arc<Inner>, e: &QueueEntry, row: RemoteRow) -> BResult<Outcome> {
    crate::metrics::metrics()
        .conflicts
        .get_or_create(&crate::metrics::NsLabels {
            namespace: e.ns.clone(),
        })
        .inc();
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_conflict(&ns, &path, row)).await?;
    Ok(Outcome::Done)
}

async fn push_other(
    inner: &Arc<Inner>,
    e: &QueueEntry,
    seq: i64,
    rec: Option<RemoteRow>,
    local: LocalEntry,
) -> BResult<Outcome> {
    let key = key_of(e)?;
    let be = inner.backend_for(&e.ns)?;
    // A file removed here that LOCKER last saw in the backend, on a store
    // that refuses a failed condition: one DELETE, only of the version
    // LOCKER saw, with no HEAD first. If another writer changed it since,
    // the store refuses, and the retry looks (below) and keeps theirs.
    if matches!(local, LocalEntry::Absent | LocalEntry::Other)
        && e.attempts == 0
        && let Some(r) = &rec
        && r.kind != REMOTE_DIR
        && inner.honours_conditions(&e.ns)
    {
        match be.delete(&key, &Cond::IfMatch(r.etag.clone())).await {
            Ok(()) => return done(inner, e, seq, None).await,
            Err(err) if err.kind == ErrorKind::NotFound => {
                return done(inner, e, seq, None).await;
            }
            Err(err) => return Err(err),
        }
    }
    let head = be.head(&key).await?;
    let mine = sent_here(inner, e).await?;
    // Someone else changed the entry since LOCKER last saw it (not an
    // object of LOCKER's own whose push was never recorded). A folder is
    // nobody's in particular: uploads of files below make it on some
    // stores, and removing one removes nothing it holds that LOCKER does
    // not know (`delete_dir` refuses).
    let foreign = match (&rec, &head) {
        (_, Some(h))
            if h.kind == ObjKind::Dir && rec.as_ref().is_none_or(|r| r.kind == REMOTE_DIR) =>
        {
            false
        }
        (Some(r), Some(h)) => r.etag != h.etag && !landed(&mine, h),
        (None, Some(h)) => !landed(&mine, h),
        _ => false,
    };
    match local {
        LocalEntry::Absent | LocalEntry::Other => {
            match &head {
                Some(_) if foreign => {
                    // Changed or made elsewhere after this side deleted it:
                    // theirs stays; a refresh brings it here.
                }
                Some(h) if h.kind == ObjKind::Dir => {
                    // Everything inside goes first: a directory removed
                    // ahead of its files would fail (or, on an object store,
                    // leave them behind).
                    let core = inner.core.clone();
                    let (ns, p) = (e.ns.clone(), e.path.clone());
                    if blocking(move || core.sync_wait_below(&ns, &p)).await? {
                        return Ok(Outcome::Waiting);
                    }
                    if let Err(err) = be.delete_dir(&key).await {
                        // A directory of a local backend empties as the
                        // deletes of its files go through.
                        let core = inner.core.clone();
                        let (ns, p) = (e.ns.clone(), e.path.clone());
                        if blocking(move || core.sync_wait_below(&ns, &p)).await? {
                            return Ok(Outcome::Waiting);
                        }
                        if err.kind == ErrorKind::Transient {
                            return Err(err);
                        }
                        tracing::warn!(namespace = %e.ns, path = %key, error = %err, "a directory removed here stays in the backend");
                    }
                }
                // Only the version LOCKER saw: a write landing meanwhile
                // survives (the next attempt finds it foreign).
                Some(h) => be.delete(&key, &Cond::IfMatch(h.etag.clone())).await?,
                None => {
                    // Nothing there yet; but a file below still on its way
                    // makes the folders it needs on some stores (a local
                    // directory, WebDAV): looked at again after it.
                    let core = inner.core.clone();
                    let (ns, p) = (e.ns.clone(), e.path.clone());
                    if blocking(move || core.sync_wait_below(&ns, &p)).await? {
                        return Ok(Outcome::Waiting);
                    }
                }
            }
            done(inner, e, seq, None).await
        }
        LocalEntry::Dir { mode, mtime } => {
            let meta = ObjMeta {
                mtime: Some(mtime),
                mode: Some(mode),
                ..Default::default()
            };
            let etag = match &head {
                Some(h) if h.kind == ObjKind::Dir => h.etag.clone(),
                Some(h) if foreign => {
                    tracing::warn!(namespace = %e.ns, path = %key, "the backend has a file where this side made a directory; the file is left alone");
                    let row = head_row(be.as_ref(), &key, h).await?;
                    return done(inner, e, seq, Some(row)).await.map(|_| Outcome::Done);
                }
                Some(h) => {
                    be.delete(&key, &Cond::IfMatch(h.etag.clone())).await?;
                    be.put_dir(&key, &meta, &Cond::IfAbsent).await?
                }
                None => be.put_dir(&key, &meta, &Cond::IfAbsent).await?,
            };
            let row = RemoteRow {
                kind: REMOTE_DIR,
                size: 0,
                etag,
                sha256: None,
                mtime: Some(mtime),
                mode: Some(mode),
                target: None,
                at_ns: now_ns(),
                verified: false,
                own: false,
                base: None,
                file_id: None,
            };
            done(inner, e, seq, Some(row)).await
        }
        LocalEntry::Symlink {
            target,
            mode,
            mtime,
        } => {
            if let Some(h) = &head
                && h.kind == ObjKind::Symlink
                && rec
                    .as_ref()
                    .is_some_and(|r| r.target.as_ref() == Some(&target))
                && !foreign
            {
                let row = head_row(be.as_ref(), &key, h).await?;
                return done(inner, e, seq, Some(row)).await;
            }
            if let Some(h) = &head
                && foreign
            {
                let row = head_row(be.as_ref(), &key, h).await?;
                if row.target.as_ref() == Some(&target) {
                    return done(inner, e, seq, Some(row)).await;
                }
                return conflict(inner, e, row).await;
            }
            let meta = ObjMeta {
                mtime: Some(mtime),
                mode: Some(mode),
                ..Default::default()
            };
            if head.as_ref().is_some_and(|h| h.kind == ObjKind::Dir) {
                be.delete_dir(&key).await?;
            }
            let etag = be
                .put_symlink(&key, &target, &meta, &dest_cond(head.as_ref()))
                .await?;
            let row = RemoteRow {
                kind: REMOTE_SYMLINK,
                size: target.len() as u64,
                etag,
                sha256: None,
                mtime: Some(mtime),
                mode: Some(mode),
                target: Some(target),
                at_ns: now_ns(),
                verified: false,
                own: false,
                base: None,
                file_id: None,
            };
            done(inner, e, seq, Some(row)).await
        }
        LocalEntry::File(_) => unreachable!("files go through push_file"),
    }
}

async fn push_file(
    inner: &Arc<Inner>,
    e: &QueueEntry,
    seq: i64,
    rec: Option<RemoteRow>,
    f: Arc<FileSnap>,
) -> BResult<Outcome> {
    let t0 = Instant::now();
    let key = key_of(e)?;
    let max_wait = inner.cfg.max_upload_wait_s as i64 * 1_000_000_000;
    if f.writers && !inner.hurry() && now_ns() - e.since_ns < max_wait {
        return Ok(Outcome::Later);
    }
    let be = inner.backend_for(&e.ns)?;
    if f.sha256.is_none() && f.remote_only {
        // Listed in a backend without a checksum and changed here only in
        // name: fetch it so it has one.
        let core = inner.core.clone();
        let ino = f.ino;
        blocking(move || core.materialize(ino)).await?;
        return Ok(Outcome::Later);
    }
    // The local steps before the backend is asked anything, in one trip to
    // the blocking pool (each trip is two thread switches, which for a
    // small file cost more than the steps):
    // - the content's SHA-256 (`None`: the file went meanwhile);
    // - an earlier push of other content that was never recorded: an
    //   object of it at the path is ours too;
    // - this push may write to the path: recorded first (durably), so that
    //   what lands is known as ours even if the push is never recorded;
    // - content the backend holds under another name (as LOCKER uploaded
    //   or checked it): copied (or moved) there below, not uploaded.
    let core = inner.core.clone();
    let (ns, path, f2) = (e.ns.clone(), e.path.clone(), f.clone());
    let local = blocking(move || {
        let sha = match f2.sha256 {
            Some(s) => s,
            None => match core.snap_sha256_while_linked(&f2)? {
                Some(sha) => sha,
                None => return Ok(None),
            },
        };
        let mine = core.sync_sent(&ns, &path)?;
        core.sync_sending(&ns, &path, &sha)?;
        let source = core.sync_source(&sha)?;
        Ok(Some((sha, mine, source)))
    })
    .await?;
    let Some((sha, mine, source)) = local else {
        return Ok(Outcome::Superseded);
    };
    let meta = file_meta(&f, sha, rec.as_ref());
    // A small new file at a path LOCKER never saw in the backend (nor wrote
    // to without recording it) needs no HEAD to tell whether something is
    // there yet:
    // - on a store that refuses a failed condition, the PUT's If-None-Match
    //   says it (if something is there after all, the store refuses and the
    //   retry looks, as any other push);
    // - on a store that ignores conditions, where a HEAD could only tell
    //   whether something is there yet, a recent listing of the folder
    //   tells it for all its new files at once; what is found there gets
    //   its HEAD as always.
    let new_here = rec.is_none()
        && mine.is_empty()
        && e.attempts == 0
        && f.size <= SINGLE_PUT_MAX
        && !f.remote_only
        && source.is_none();
    let blind = new_here && inner.honours_conditions(&e.ns);
    let listed_absent = new_here
        && inner.ignores_conditions(&e.ns)
        && inner
            .listings
            .absent(inner, &be, &e.ns, &key, listing_fresh(inner))
            .await;
    let head = if blind || listed_absent {
        None
    } else {
        be.head(&key).await?
    };
    // A folder is nobody's in particular (as in `push_other`): one this
    // side removed gives way to the file that took its name, whatever its
    // ETag now says (a WebDAV folder's changes as its files go).
    let foreign = match (&rec, &head) {
        (_, Some(h))
            if h.kind == ObjKind::Dir && rec.as_ref().is_none_or(|r| r.kind == REMOTE_DIR) =>
        {
            false
        }
        (Some(r), Some(h)) => r.etag != h.etag && !landed(&mine, h),
        (None, Some(h)) => !landed(&mine, h),
        _ => false,
    };
    // What LOCKER uploaded (or copied from content it uploaded or checked):
    // its content is known, not taken from a label.
    let row = |etag: String| RemoteRow {
        kind: REMOTE_FILE,
        size: f.size,
        etag,
        sha256: Some(sha),
        mtime: Some(f.mtime),
        mode: Some(f.mode & 0o7777),
        target: None,
        at_ns: now_ns(),
        verified: true,
        own: true,
        base: None,
        file_id: None,
    };
    if let Some(h) = &head {
        let hmeta = h.meta.clone().unwrap_or_default();
        // The backend may already hold this content here: as LOCKER last
        // confirmed it, or (someone else's object with the same label) as
        // reading it back shows. A label alone proves nothing.
        let same = h.kind == ObjKind::File
            && hmeta.sha256 == Some(sha)
            && h.size == f.size
            && (rec.as_ref().is_some_and(|r| {
                r.verified && r.etag == h.etag && r.sha256 == Some(sha) && r.size == h.size
            }) || holds_content(be.as_ref(), &key, &h.etag, h.size, &sha).await?);
        if same {
            // Compared as the store keeps them (some keep no mode, or
            // whole seconds), or it would be rewritten on every push.
            let kept = be.capabilities().kept(&meta);
            if hmeta.mode == kept.mode && hmeta.mtime == kept.mtime {
                // Whoever wrote it, it was not this push.
                let mut r = row(h.etag.clone());
                r.own = rec.as_ref().is_some_and(|r| r.own && r.etag == h.etag);
                return done(inner, e, seq, Some(r)).await;
            }
            let etag = be
                .copy(
                    &key,
                    Some(&h.etag),
                    &key,
                    &meta,
                    &Cond::IfMatch(h.etag.clone()),
                )
                .await?;
            return done(inner, e, seq, Some(row(etag))).await;
        }
        if foreign {
            let r = head_row(be.as_ref(), &key, h).await?;
            return conflict(inner, e, r).await;
        }
        if h.kind == ObjKind::Dir {
            // The removals below it go first (the folder empties as they
            // do); one still holding what LOCKER does not know stays, and
            // this file is kept under a conflict name.
            let core = inner.core.clone();
            let (ns, p) = (e.ns.clone(), e.path.clone());
            if blocking(move || core.sync_wait_below(&ns, &p)).await? {
                return Ok(Outcome::Waiting);
            }
            if let Err(err) = be.delete_dir(&key).await {
                if err.kind == ErrorKind::Transient {
                    return Err(err);
                }
                tracing::warn!(namespace = %e.ns, path = %key, error = %err, "the backend has a folder, not empty, where this side made a file");
                let r = head_row(be.as_ref(), &key, h).await?;
                return conflict(inner, e, r).await;
            }
        }
    }
    if let Some((sns, spath, src_row)) = source
        && sns == e.ns
        && spath != e.path
        && src_row.size == f.size
        && let Ok(src) = String::from_utf8(spath)
    {
        // Renamed here, the old path queued for its delete: a store with a
        // move of its own moves the object (never a re-upload).
        if head.is_none() && be.capabilities().renames {
            let core = inner.core.clone();
            let (ns, sp) = (e.ns.clone(), src.clone().into_bytes());
            if blocking(move || core.sync_moved_away(&ns, &sp)).await? {
                match be.rename(&src, Some(&src_row.etag), &key).await {
                    Ok(etag) => {
                        let core = inner.core.clone();
                        let (ns, sp, p) = (e.ns.clone(), src.clone().into_bytes(), e.path.clone());
                        let r = row(etag);
                        blocking(move || core.sync_renamed(&ns, &sp, &p, seq, r)).await?;
                        return Ok(Outcome::Done);
                    }
                    Err(err) if err.kind == ErrorKind::Transient => return Err(err),
                    Err(err) => {
                        tracing::debug!(from = %src, to = %key, error = %err, "move not possible; copying");
                    }
                }
            }
        }
        // Only if the source still has the ETag it had when its content
        // was confirmed; otherwise upload.
        match be
            .copy(
                &src,
                Some(&src_row.etag),
                &key,
                &meta,
                &dest_cond(head.as_ref()),
            )
            .await
        {
            Ok(etag) => return landed_here(inner, e, seq, row(etag), &f, t0).await,
            Err(err) if err.kind == ErrorKind::Transient => return Err(err),
            Err(err) => {
                tracing::debug!(from = %src, to = %key, error = %err, "server-side copy not possible; uploading");
            }
        }
    }
    if f.remote_only {
        let core = inner.core.clone();
        let ino = f.ino;
        blocking(move || core.materialize(ino)).await?;
        return Ok(Outcome::Later);
    }
    // Land only over what was just seen, so a concurrent writer elsewhere
    // is never silently overwritten (the next attempt sees its change).
    let cond = dest_cond(head.as_ref());
    let Some(etag) = upload(inner, &be, e, &key, f.clone(), &meta, cond).await? else {
        return Ok(Outcome::Superseded);
    };
    inner.core.crash.hit("upload-sent");
    landed_here(inner, e, seq, row(etag), &f, t0).await
}

/// The shortest wait before a version uploaded to a store that ignores
/// conditional writes is looked at again (see `landed_here`).
const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// Records what a push of `f` (begun at `t0`) wrote. On a store that
/// refuses a failed condition that is the end of it. On one that ignores
/// conditions (or not known to honour them: its probe failed), another writer's upload begun before this one landed can
/// still land over it, and this side's copy is then the only one: the
/// version is recorded, but not confirmed (its blocks stay in the cache),
/// and the entry is looked at again after twice the push's time (at least
/// `CONFIRM_AFTER`), as a writer of a file this size would take. Found
/// there still, it is confirmed; replaced, the two writes were concurrent
/// and this side's version is kept under a conflict name. Files small
/// enough to live in the metadata database are never dropped from the
/// cache, and need no second look.
async fn landed_here(
    inner: &Arc<Inner>,
    e: &QueueEntry,
    seq: i64,
    row: RemoteRow,
    f: &FileSnap,
    t0: Instant,
) -> BResult<Outcome> {
    if inner.honours_conditions(&e.ns) || f.size < crate::blocks::INLINE_MAX as u64 {
        return done(inner, e, seq, Some(row)).await;
    }
    let wait = (t0.elapsed() * 2).max(CONFIRM_AFTER);
    let ready = now_ns() + wait.as_nanos() as i64;
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_landed_unconfirmed(&ns, &path, row, ready)).await?;
    Ok(Outcome::Unconfirmed)
}

/// How long a folder's listing stands in for the HEADs of new files in it:
/// about as long as a burst of new files takes to go up.
fn listing_fresh(inner: &Inner) -> Duration {
    Duration::from_millis(inner.cfg.upload_delay_ms.max(2000))
}

/// Whether the object at `key` (version `etag`, `size` bytes) holds the
/// content that hashes to `sha`, read back and hashed here.
async fn holds_content(
    be: &dyn Backend,
    key: &str,
    etag: &str,
    size: u64,
    sha: &[u8; 32],
) -> BResult<bool> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut off = 0;
    while off < size {
        let len = PART_SIZE.min(size - off);
        let data = be.get_range(key, Some(etag), off, len).await?;
        if data.len() as u64 != len {
            return Ok(false);
        }
        h.update(&data);
        crate::buf::give(data);
        off += len;
    }
    Ok(<[u8; 32]>::from(h.finalize()) == *sha)
}

async fn read_part(inner: &Arc<Inner>, f: &Arc<FileSnap>, off: u64, len: u64) -> BResult<Vec<u8>> {
    let core = inner.core.clone();
    let f = f.clone();
    blocking(move || core.sync_read(&f, off, len)).await
}

/// Whether the file of `f` has been deleted since its snapshot.
async fn unlinked(inner: &Arc<Inner>, f: &FileSnap) -> BResult<bool> {
    let (core, ino) = (inner.core.clone(), f.ino);
    blocking(move || core.sync_unlinked(ino)).await
}

/// Uploads `f` to `key`; its new ETag, or `None` when the file was deleted
/// during a multipart upload (stopped between parts and aborted).
async fn upload(
    inner: &Arc<Inner>,
    be: &Arc<dyn Backend>,
    e: &QueueEntry,
    key: &str,
    f: Arc<FileSnap>,
    meta: &ObjMeta,
    cond: Cond,
) -> BResult<Option<String>> {
    if f.size <= SINGLE_PUT_MAX {
        let data = match f.inline_content() {
            Some(d) => d,
            None => read_part(inner, &f, 0, f.size).await?,
        };
        return be.put(key, data, meta, &cond).await.map(Some);
    }
    let part = PART_SIZE.max(f.size.div_ceil(9_000).next_multiple_of(1 << 20));
    let nparts = f.size.div_ceil(part);
    let size_of = |n: u64| part.min(f.size - (n - 1) * part);
    let resumable = be.capabilities().resumable_uploads;
    let sha = meta.sha256.unwrap_or_default();
    // An upload of this very content begun earlier (by a run that was
    // killed, or before an outage) goes on where it stopped: only the parts
    // the store does not hold are sent. One of other content is abandoned.
    let mut have: HashMap<u32, String> = HashMap::new();
    let mut resumed = None;
    if let Some(rec) = upload_rec(inner, e).await? {
        let old = Multipart {
            key: rec.key.clone(),
            id: rec.id.clone(),
            size: rec.size,
            meta: meta.clone(),
            cond: cond.clone(),
        };
        if resumable
            && rec.key == key
            && rec.sha256 == sha
            && rec.size == f.size
            && rec.part_size == part
        {
            match be.multipart_resume(&old).await {
                Ok(Some(held)) => {
                    for p in held {
                        if (1..=nparts).contains(&(p.number as u64))
                            && p.size == size_of(p.number as u64)
                        {
                            have.insert(p.number, p.etag);
                        }
                    }
                    resumed = Some(old);
                }
                Ok(None) => {}
                Err(err) if err.kind == ErrorKind::Transient => return Err(err),
                Err(_) => {}
            }
        } else {
            be.multipart_abort(&old).await;
        }
        if resumed.is_none() {
            set_upload_rec(inner, e, None).await?;
        }
    }
    let mut mp = match resumed {
        Some(mp) => {
            tracing::info!(path = %key, parts_held = have.len(), parts = nparts, "resuming an unfinished upload");
            mp
        }
        None => {
            let mp = be.multipart_begin(key, f.size, meta).await?;
            if resumable {
                let rec = UploadRec {
                    key: key.to_string(),
                    id: mp.id.clone(),
                    sha256: sha,
                    size: f.size,
                    part_size: part,
                };
                set_upload_rec(inner, e, Some(rec)).await?;
            }
            mp
        }
    };
    mp.cond = cond;
    let mp = Arc::new(mp);
    let mut set = tokio::task::JoinSet::new();
    let mut parts: Vec<(u32, String)> = have.iter().map(|(n, t)| (*n, t.clone())).collect();
    let mut next = 0u64;
    let mut failed: Option<BackendError> = None;
    let mut deleted = false;
    loop {
        if failed.is_none() && !deleted && next < nparts && unlinked(inner, &f).await? {
            deleted = true;
        }
        while failed.is_none() && !deleted && next < nparts && set.len() < inner.cfg.parallel_parts
        {
            let i = next;
            next += 1;
            if have.contains_key(&((i + 1) as u32)) {
                continue;
            }
            let (inner, be, mp, f) = (inner.clone(), be.clone(), mp.clone(), f.clone());
            set.spawn(async move {
                let off = i * part;
                let len = part.min(f.size - off);
                let data = read_part(&inner, &f, off, len).await?;
                let etag = be.multipart_part(&mp, (i + 1) as u32, off, data).await?;
                Ok::<_, BackendError>(((i + 1) as u32, etag))
            });
        }
        match set.join_next().await {
            None => break,
            Some(Ok(Ok(p))) => parts.push(p),
            Some(Ok(Err(err))) => failed = failed.or(Some(err)),
            Some(Err(err)) => failed = failed.or(Some(BackendError::transient(err.to_string()))),
        }
    }
    // A store that keeps unfinished uploads keeps this one for the next
    // attempt when the trouble may pass; otherwise it is aborted.
    let keep = |err: &BackendError| resumable && err.kind == ErrorKind::Transient;
    if deleted && failed.is_none() {
        be.multipart_abort(&mp).await;
        set_upload_rec(inner, e, None).await?;
        return Ok(None);
    }
    if let Some(err) = failed {
        if !keep(&err) {
            be.multipart_abort(&mp).await;
            set_upload_rec(inner, e, None).await?;
        }
        return Err(err);
    }
    parts.sort_by_key(|p| p.0);
    match be.multipart_finish(&mp, parts).await {
        Ok(etag) => {
            if resumable {
                set_upload_rec(inner, e, None).await?;
            }
            Ok(Some(etag))
        }
        Err(err) => {
            if !keep(&err) {
                be.multipart_abort(&mp).await;
                set_upload_rec(inner, e, None).await?;
            }
            Err(err)
        }
    }
}

async fn upload_rec(inner: &Arc<Inner>, e: &QueueEntry) -> BResult<Option<UploadRec>> {
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_upload(&ns, &path)).await
}

async fn set_upload_rec(inner: &Arc<Inner>, e: &QueueEntry, rec: Option<UploadRec>) -> BResult<()> {
    let core = inner.core.clone();
    let (ns, path) = (e.ns.clone(), e.path.clone());
    blocking(move || core.sync_set_upload(&ns, &path, rec.as_ref())).await
}

/// Aborts the unfinished uploads whose paths are no longer queued (pushed
/// another way, or removed here): nothing would finish them, and the store
/// keeps their parts until it expires them.
pub(crate) async fn abort_orphan_uploads(inner: &Arc<Inner>) {
    let core = inner.core.clone();
    let Ok(orphans) = blocking(move || core.sync_orphan_uploads()).await else {
        return;
    };
    for (ns, path, rec) in orphans {
        let Ok(be) = inner.backend_for(&ns) else {
            continue;
        };
        let mp = Multipart {
            key: rec.key.clone(),
            id: rec.id.clone(),
            size: rec.size,
            meta: ObjMeta::default(),
            cond: Cond::Any,
        };
        be.multipart_abort(&mp).await;
        let core = inner.core.clone();
        let _ = blocking(move || core.sync_set_upload(&ns, &path, None)).await;
    }
}

pub(crate) async fn run_refresh(inner: Arc<Inner>) {
    use std::sync::atomic::Ordering;
    let interval = inner.cfg.refresh_interval_s;
    loop {
        let asked = inner.refresh_asked.load(Ordering::SeqCst);
        let core = inner.core.clone();
        let names = tokio::task::spawn_blocking(move || core.namespaces())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        for ns in names {
            match refresh_ns(&inner, &ns).await {
                Ok(n) => {
                    inner.note_ok(&ns);
                    let mut h = inner.health.lock().unwrap();
                    h.entry(ns.clone()).or_default().last_refresh = Some(Instant::now());
                    if n > 0 {
                        tracing::info!(namespace = %ns, changes = n, "took changes from the backend");
                    }
                }
                Err(e) => {
                    inner.note_error(&ns, &e);
                    tracing::warn!(namespace = %ns, error = %e, "listing the backend failed");
                }
            }
        }
        inner.refresh_served.store(asked, Ordering::SeqCst);
        inner.refresh_done.notify_waiters();
        let wait = if interval == 0 {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            Duration::from_secs(interval)
        };
        let timer = tokio::time::sleep(wait);
        tokio::pin!(timer);
        // Until the interval passes or a refresh is asked for that this
        // one did not serve (a stale wake-up does not start another).
        while inner.refresh_asked.load(Ordering::SeqCst) == asked {
            tokio::select! {
                _ = inner.refresh_now.notified() => {}
                _ = &mut timer => break,
            }
        }
    }
}

/// Lists one namespace's backend and applies what changed there. Returns
/// the number of entries changed here.
async fn refresh_ns(inner: &Arc<Inner>, ns: &str) -> BResult<usize> {
    let be = inner.backend_for(ns)?;
    let started = now_ns();
    let listed = be.list("").await?;
    let core = inner.core.clone();
    let ns2 = ns.to_string();
    let rows: HashMap<Vec<u8>, RemoteRow> = blocking(move || core.remote_rows(&ns2))
        .await?
        .into_iter()
        .collect();
    let mut seen: std::collections::HashSet<Vec<u8>> =
        listed.iter().map(|o| o.key.clone().into_bytes()).collect();
    // Files that left their path, by the identity a rename in the store
    // keeps (Nextcloud's `oc:fileid`).
    let left: HashMap<String, Vec<u8>> = rows
        .iter()
        .filter(|(p, r)| r.kind == REMOTE_FILE && !seen.contains(*p))
        .filter_map(|(p, r)| Some((r.file_id.clone()?, p.clone())))
        .collect();
    let mut ids_learnt: Vec<(Vec<u8>, String)> = Vec::new();
    let mut changes = 0;
    for obj in listed {
        let path = obj.key.clone().into_bytes();
        if let Some(r) = rows.get(&path)
            && (r.etag == obj.etag || (r.kind == REMOTE_DIR && obj.kind == ObjKind::Dir))
        {
            if r.file_id.is_none()
                && let Some(id) = &obj.file_id
            {
                ids_learnt.push((path, id.clone()));
            }
            continue;
        }
        let core = inner.core.clone();
        let (ns2, p2) = (ns.to_string(), path.clone());
        if blocking(move || core.sync_queued(&ns2, &p2)).await? {
            continue;
        }
        let info = if obj.kind == ObjKind::Dir || obj.meta.is_some() {
            // A directory, or a listing that carried the metadata (WebDAV).
            obj.clone()
        } else {
            match be.head(&obj.key).await? {
                Some(h) => h,
                None => continue,
            }
        };
        let row = head_row(be.as_ref(), &obj.key, &info).await?;
        // Renamed in the store: renamed here (no download), when the file
        // is unchanged here.
        if !rows.contains_key(&path)
            && obj.kind == ObjKind::File
            && let Some(from) = obj.file_id.as_ref().and_then(|id| left.get(id).cloned())
        {
            let core = inner.core.clone();
            let (ns2, f2, p2, r2) = (ns.to_string(), from.clone(), path.clone(), row.clone());
            match blocking(move || core.apply_remote_rename(&ns2, &f2, &p2, r2, started)).await {
                Ok(Applied::Updated) => {
                    changes += 1;
                    // Its old path is no removal to take; a version changed
                    // as well is taken now, as any change.
                    let same = rows.get(&from).is_some_and(|r| r.etag == obj.etag);
                    seen.insert(from);
                    if same {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(namespace = %ns, path = %obj.key, error = %err, "a rename in the backend could not be taken here as one; taking it as a new file")
                }
            }
        }
        let core = inner.core.clone();
        let (ns2, p2) = (ns.to_string(), path.clone());
        match blocking(move || core.apply_remote(&ns2, &p2, row, started)).await {
            Ok(Applied::Skipped | Applied::Unchanged) => {}
            Ok(a) => {
                tracing::debug!(namespace = %ns, path = %obj.key, applied = ?a, "took a change from the backend");
                changes += 1
            }
            // One entry this side cannot hold (a name too long) must not
            // stop the rest of the listing.
            Err(err) => {
                tracing::warn!(namespace = %ns, path = %obj.key, error = %err, "an entry of the backend could not be taken here; skipped")
            }
        }
    }
    if !ids_learnt.is_empty() {
        let core = inner.core.clone();
        let ns2 = ns.to_string();
        blocking(move || core.sync_note_file_ids(&ns2, &ids_learnt)).await?;
    }
    let mut gone: Vec<Vec<u8>> = rows
        .keys()
        .filter(|p| !seen.contains(*p))
        .cloned()
        .collect();
    // Children before their directories.
    gone.sort_by(|a, b| b.cmp(a));
    for path in gone {
        let core = inner.core.clone();
        let ns2 = ns.to_string();
        let shown = String::from_utf8_lossy(&path).into_owned();
        match blocking(move || core.apply_remote_gone(&ns2, &path, started)).await {
            Ok(Applied::Updated) => changes += 1,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(namespace = %ns, path = %shown, error = %err, "a removal in the backend could not be taken here; skipped")
            }
        }
    }
    let core = inner.core.clone();
    let ns2 = ns.to_string();
    blocking(move || {
        core.sync_listed(&ns2, started);
        Ok(())
    })
    .await?;
    Ok(changes)
}

pub(crate) async fn run_evictor(inner: Arc<Inner>) {
    let limit = inner.cache_limit;
    loop {
        let (used, _, _) = (inner.core.block_store().bytes(), 0, 0);
        if used > limit {
            let core = inner.core.clone();
            let target = limit - limit / 10;
            match tokio::task::spawn_blocking(move || core.evict(target)).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::debug!(blocks = n, "evicted blocks the backend holds")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "eviction failed"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
