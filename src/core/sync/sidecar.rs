//! The calls the sidecar makes on the queue and the remote table: what is
//! due, pending or queued, what a backend confirmed, retries, securing the
//! last copy of content before a backend replaces it, and waking the sidecar
//! after a change; also the one-time seeding of the queue with a store's
//! existing files.

use std::sync::Arc;

use super::marks::mark_moved;
use crate::core::types::*;
use crate::core::{CoreResult, Locker};
use crate::meta;
use crate::meta::sync::{self as msync, QueueEntry, REMOTE_FILE, RemoteRow};

/// Whether what is at a path here (as `resolve_in` found it) is something
/// a backend would hold: a file, directory or symlink.
fn held_here(found: &Option<super::Found>) -> bool {
    found.as_ref().is_some_and(|(_, _, r)| {
        r.as_ref().is_some_and(|r| {
            matches!(
                r.attr.kind,
                FileKind::File | FileKind::Dir | FileKind::Symlink
            )
        })
    })
}

/// A queue entry a batch of removals may take (`sync_batch_candidates`).
#[derive(Debug, Clone)]
pub struct RemovalCandidate {
    pub ns: String,
    pub path: Vec<u8>,
    pub seq: i64,
    /// The ETag LOCKER last saw there.
    pub etag: String,
    /// A directory (its marker), not a file or symlink.
    pub dir: bool,
}

impl Locker {
    /// Installs what wakes the sidecar after a change.
    pub fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }

    pub(crate) fn wake_sync(&self) {
        if let Some(w) = self.waker.get() {
            w();
        }
    }

    /// Queue entries ready at `now` (with `hurry`, also those not yet
    /// quiet).
    pub fn sync_due(
        &self,
        now: i64,
        hurry: bool,
        skip: &[String],
        limit: usize,
    ) -> CoreResult<Vec<QueueEntry>> {
        Ok(msync::due(&self.lock().conn, now, hurry, skip, limit)?)
    }

    /// Records, durably, that a push is about to write content `sha` to
    /// `ns/path`, so that an object that lands there before the push is
    /// recorded (a crash, a stop) is still known as LOCKER's own: a later
    /// removal deletes it rather than keeping it as someone else's, and a
    /// listing does not bring it back.
    pub fn sync_sending(&self, ns: &str, path: &[u8], sha: &[u8; 32]) -> CoreResult<()> {
        // The barrier commits the open transaction and syncs it once for
        // every push waiting on it (and the mount's changes with them): a
        // commit of its own for each push made the small files' uploads
        // commit a hundred times more often than the mount does, under the
        // state lock.
        let commit = {
            let mut st = self.lock();
            st.tx(|tx| Ok(msync::put_sent(tx, ns, path, &sha[..])?))?;
            // (A change left in the open transaction is counted as a
            // commit: the barrier commits it.)
            st.commits
        };
        self.durable_upto(commit)
    }

    /// Every content the unrecorded pushes to `ns/path` were writing.
    pub fn sync_sent(&self, ns: &str, path: &[u8]) -> CoreResult<Vec<[u8; 32]>> {
        let st = self.lock();
        Ok(msync::get_sent(&st.conn, ns, path)?
            .into_iter()
            .filter_map(|v| v.try_into().ok())
            .collect())
    }

    /// Whether inode `ino` has no name left (deleted, perhaps still open).
    pub fn sync_unlinked(&self, ino: InodeNo) -> CoreResult<bool> {
        let st = self.lock();
        Ok(meta::get_inode(&st.conn, ino)?.is_none_or(|r| r.attr.nlink == 0))
    }

    /// When the next queue entry becomes ready, if any waits.
    pub fn sync_next_ready(&self) -> CoreResult<Option<i64>> {
        Ok(msync::next_ready(&self.lock().conn, msync::now_ns())?)
    }

    /// Every queue entry, oldest change first.
    pub fn sync_pending(&self) -> CoreResult<Vec<QueueEntry>> {
        Ok(msync::all_entries(&self.lock().conn)?)
    }

    /// Per namespace: (name, entries, bytes, oldest change ns, last error).
    pub fn sync_stats(&self) -> CoreResult<Vec<msync::QueueStats>> {
        Ok(msync::stats(&self.lock().conn)?)
    }

    /// A path where a backend holds this content, as LOCKER uploaded or
    /// checked it (never on the strength of an object's label): a source
    /// for a server-side copy. (namespace, path, what is there.)
    pub fn sync_source(&self, sha: &[u8; 32]) -> CoreResult<Option<(String, Vec<u8>, RemoteRow)>> {
        Ok(msync::remote_with_sha(&self.lock().conn, sha, true)?)
    }

    /// The store's identities of entries LOCKER wrote, learnt from a listing
    /// (path, id).
    pub fn sync_note_file_ids(&self, ns: &str, ids: &[(Vec<u8>, String)]) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| {
            for (path, id) in ids {
                msync::set_remote_file_id(tx, ns, path, id)?;
            }
            Ok(())
        })
    }

    /// A refresh of `ns` whose listing began at `started` is done: what it
    /// had to be kept from bringing back no later listing can show.
    pub fn sync_listed(&self, ns: &str, started: i64) {
        self.lock().listed_since(ns, started);
    }

    /// The unfinished multipart upload of `ns/path`, if one was begun.
    pub fn sync_upload(&self, ns: &str, path: &[u8]) -> CoreResult<Option<msync::UploadRec>> {
        Ok(msync::get_upload(&self.lock().conn, ns, path)?)
    }

    /// A multipart upload of `ns/path` was begun (`Some`), or finished or
    /// aborted (`None`).
    pub fn sync_set_upload(
        &self,
        ns: &str,
        path: &[u8],
        rec: Option<&msync::UploadRec>,
    ) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| {
            match rec {
                Some(r) => msync::put_upload(tx, ns, path, r)?,
                None => msync::delete_upload(tx, ns, path)?,
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Unfinished uploads that nothing will finish: their paths are no
    /// longer queued.
    pub fn sync_orphan_uploads(&self) -> CoreResult<Vec<(String, Vec<u8>, msync::UploadRec)>> {
        Ok(msync::orphan_uploads(&self.lock().conn)?)
    }

    /// Whether `ns/path` is a name that was removed here (nothing is there)
    /// with its change still queued: the old name of a rename.
    pub fn sync_moved_away(&self, ns: &str, path: &[u8]) -> CoreResult<bool> {
        let st = self.lock();
        Ok(
            Locker::resolve_in(&st.conn, ns, path)?.is_none_or(|(_, _, node)| node.is_none())
                && msync::get_entry(&st.conn, ns, path)?.is_some(),
        )
    }

    /// The backend moved the object at `ns/from` to `ns/to`, which it now
    /// holds as `remote`: one transaction records both (the queue entry of
    /// `from` then finds nothing left to delete).
    pub fn sync_renamed(
        &self,
        ns: &str,
        from: &[u8],
        to: &[u8],
        seq: i64,
        remote: RemoteRow,
    ) -> CoreResult<bool> {
        let mut st = self.lock();
        let found = Locker::resolve_in(&st.conn, ns, to)?;
        let src = |p: &[u8]| [ns.as_bytes(), b"/", p].concat();
        let done = st.tx(|tx| {
            msync::delete_remote(tx, ns, from)?;
            // Files here whose content is only in that object fetch it from
            // where it is now (as after a move another client made).
            meta::move_remote_src(tx, &src(from), &src(to))?;
            Locker::record_done(tx, &found, ns, to, seq, Some(&remote))
        })?;
        st.note_gone_remote(ns, from);
        Ok(done)
    }

    /// A version uploaded to `ns/path`, on a store that ignores
    /// conditional writes, is recorded as `remote` (and as LOCKER's own),
    /// but not confirmed: the file's blocks stay in the cache, and the
    /// entry stays queued, due at `ready`, when its push looks again.
    pub fn sync_landed_unconfirmed(
        &self,
        ns: &str,
        path: &[u8],
        remote: RemoteRow,
        ready: i64,
    ) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| {
            msync::put_remote(tx, ns, path, &remote)?;
            msync::delete_sent(tx, ns, path)?;
            msync::look_again_at(tx, ns, path, ready)?;
            Ok(())
        })
    }

    /// The backend confirmed `ns/path` as `remote` (or its absence): records
    /// it, and removes the queue entry unless the path changed meanwhile.
    pub fn sync_done(
        &self,
        ns: &str,
        path: &[u8],
        seq: i64,
        remote: Option<RemoteRow>,
    ) -> CoreResult<bool> {
        let mut st = self.lock();
        let found = Locker::resolve_in(&st.conn, ns, path)?;
        let done = st.tx(|tx| Locker::record_done(tx, &found, ns, path, seq, remote.as_ref()))?;
        if remote.is_none() {
            st.note_gone_remote(ns, path);
        }
        Ok(done)
    }

    /// `sync_done` inside a transaction; `found` is what is at the path here.
    fn record_done(
        tx: &rusqlite::Connection,
        found: &Option<super::Found>,
        ns: &str,
        path: &[u8],
        seq: i64,
        remote: Option<&RemoteRow>,
    ) -> CoreResult<bool> {
        match remote {
            Some(r) => msync::put_remote(tx, ns, path, r)?,
            None => msync::delete_remote(tx, ns, path)?,
        }
        // What the backend holds at the path is recorded: nothing is
        // unrecorded there any more.
        msync::delete_sent(tx, ns, path)?;
        // The file at the path has exactly this content: its version is
        // confirmed at its own path (its checksum is only ever set for the
        // version it was computed from).
        if let (Some(r), Some((_, _, Some(local)))) = (remote, found)
            && r.kind == REMOTE_FILE
            && let Some(sha) = &r.sha256
        {
            meta::confirm_synced(tx, local.attr.ino, &sha[..])?;
        }
        Ok(msync::finish(tx, ns, path, seq)?)
    }

    /// Finishes, without a request, the queue entries of `entries` whose
    /// push could not change the backend: nothing a backend holds is at the
    /// path here (no entry, or a fifo, socket or device) and LOCKER never
    /// saw anything at the path in the backend (no `remote` row, no
    /// unfinished multipart upload). Pushing one would only look, and
    /// whatever it found would stay: someone else's object is theirs. So a
    /// file made and removed before its upload costs no request, and a
    /// removed tree's never-uploaded entries go in one transaction. The
    /// caller (the queue's only runner) passes entries not in flight.
    /// Returns those finished.
    pub fn sync_forget_unheld(
        &self,
        entries: &[(String, Vec<u8>, i64)],
    ) -> CoreResult<Vec<(String, Vec<u8>)>> {
        let mut st = self.lock();
        let st = &mut *st;
        let forgotten = st.tx(|tx| {
            let mut out = Vec::new();
            for (ns, path, seq) in entries {
                let found = Locker::resolve_in(tx, ns, path)?;
                if held_here(&found)
                    || msync::remote_held(tx, ns, path)?
                    || msync::get_upload(tx, ns, path)?.is_some()
                    || msync::any_sent(tx, ns, path)?
                    // A file below still to push (its upload may be on its
                    // way, and make this folder again on some stores).
                    || msync::any_below(tx, ns, path)?
                {
                    continue;
                }
                if Locker::record_done(tx, &found, ns, path, *seq, None)? {
                    out.push((ns.clone(), path.clone()));
                }
            }
            Ok(out)
        })?;
        for (ns, path) in &forgotten {
            st.note_gone_remote(ns, path);
        }
        Ok(forgotten)
    }

    /// How many entries LOCKER knows the backend of `ns` to hold below the
    /// folder `dir`, counting at most `limit`.
    pub fn sync_remote_under(&self, ns: &str, dir: &[u8], limit: usize) -> CoreResult<usize> {
        Ok(msync::remote_under(&self.lock().conn, ns, dir, limit)?)
    }

    /// Queue entries of `ns` that may be removals (no bytes, never tried),
    /// ready or not: what a batch of removals may take at once.
    pub fn sync_removals_queued(&self, ns: &str, limit: usize) -> CoreResult<Vec<QueueEntry>> {
        Ok(msync::removals_queued(&self.lock().conn, ns, limit)?)
    }

    /// Of `entries` (namespace, path, queue sequence), those still queued
    /// at that sequence and never tried whose push is the removal of a
    /// file, symlink or directory LOCKER last saw in the backend, with
    /// nothing pushed there since that it did not record:
    /// nothing of that kind is at the path here, and the remote row names
    /// the version (its ETag, and whether it is a directory, returned with
    /// each). A batch removes those.
    pub fn sync_batch_candidates(
        &self,
        entries: &[(String, Vec<u8>, i64)],
    ) -> CoreResult<Vec<RemovalCandidate>> {
        let st = self.lock();
        let mut out = Vec::new();
        for (ns, path, seq) in entries {
            // Read a while ago: one pushed on its own since (failed, or
            // changed here again) is no longer a batch's.
            if !msync::get_entry(&st.conn, ns, path)?
                .is_some_and(|e| e.seq == *seq && e.attempts == 0)
            {
                continue;
            }
            let found = Locker::resolve_in(&st.conn, ns, path)?;
            if held_here(&found)
                || msync::get_upload(&st.conn, ns, path)?.is_some()
                || msync::any_sent(&st.conn, ns, path)?
            {
                continue;
            }
            if let Some(r) = msync::get_remote(&st.conn, ns, path)? {
                let dir = r.kind == msync::REMOTE_DIR;
                out.push(RemovalCandidate {
                    ns: ns.clone(),
                    path: path.clone(),
                    seq: *seq,
                    etag: r.etag,
                    dir,
                });
            }
        }
        Ok(out)
    }

    /// Records that the backend of `ns` no longer holds each of `paths`
    /// (with the queue sequence its removal was pushed at), in one
    /// transaction: `sync_done` with nothing there, for many. Returns how
    /// many entries it finished (one changed again meanwhile stays queued).
    pub fn sync_removed(&self, ns: &str, paths: &[(Vec<u8>, i64)]) -> CoreResult<usize> {
        let mut st = self.lock();
        let st = &mut *st;
        let finished = st.tx(|tx| {
            let mut n = 0;
            for (path, seq) in paths {
                let found = Locker::resolve_in(tx, ns, path)?;
                if Locker::record_done(tx, &found, ns, path, *seq, None)? {
                    n += 1;
                }
            }
            Ok(n)
        })?;
        for (path, _) in paths {
            st.note_gone_remote(ns, path);
        }
        Ok(finished)
    }

    /// Before the object at `ns/path` is replaced or deleted: if it is the
    /// only copy in any backend of content that other files here still hold
    /// (a copy, the other side of an exchange), those files' evicted blocks
    /// are fetched back and kept until their own path is confirmed; so is
    /// every file here whose content is only in that object (one moved
    /// before it was ever read, whatever the order its pushes take).
    pub fn sync_secure(&self, ns: &str, path: &[u8]) -> CoreResult<()> {
        let inos: Vec<(InodeNo, bool)> = {
            let mut st = self.lock();
            // The file at the path itself, if it still has this content, is
            // not replaced by pushing it.
            let here = Locker::resolve_in(&st.conn, ns, path)?
                .and_then(|(_, _, r)| r)
                .map(|r| r.attr.ino);
            let mut src = ns.as_bytes().to_vec();
            src.push(b'/');
            src.extend_from_slice(path);
            let mut inos: Vec<(InodeNo, bool)> = meta::remote_only_from(&st.conn, &src, here)?
                .into_iter()
                .map(|i| (i, true))
                .collect();
            if let Some(row) = msync::get_remote(&st.conn, ns, path)?
                && let Some(sha) = row.sha256.filter(|_| row.kind == REMOTE_FILE)
                && !msync::other_copy(&st.conn, &sha, ns, path)?
            {
                for (ino, ro) in meta::files_with_sha_except(&st.conn, &sha[..], here)? {
                    if !inos.iter().any(|(i, _)| *i == ino) {
                        inos.push((ino, ro));
                    }
                }
            }
            if inos.is_empty() {
                return Ok(());
            }
            st.tx(|tx| {
                for (ino, _) in &inos {
                    meta::clear_synced(tx, *ino)?;
                }
                Ok(())
            })?;
            inos
        };
        for (ino, remote_only) in inos {
            if remote_only {
                self.materialize_with(ino, true)?;
            } else {
                self.fetch_missing(ino)?;
            }
        }
        Ok(())
    }

    /// Puts a queue entry back for a try at `ready` (ns since the epoch).
    pub fn sync_retry(
        &self,
        ns: &str,
        path: &[u8],
        ready: i64,
        error: Option<&str>,
        refused: bool,
    ) -> CoreResult<()> {
        let mut st = self.lock();
        st.tx(|tx| Ok(msync::retry(tx, ns, path, ready, error, refused)?))
    }

    /// Up to `limit` queued paths of `ns` its store refuses for the path
    /// alone (kept here), with the reason.
    pub fn sync_refused(
        &self,
        ns: &str,
        limit: usize,
    ) -> CoreResult<Vec<(Vec<u8>, Option<String>)>> {
        Ok(msync::refused_entries(&self.lock().conn, ns, limit)?)
    }

    pub fn remote_rows(&self, ns: &str) -> CoreResult<Vec<(Vec<u8>, RemoteRow)>> {
        Ok(msync::remote_rows(&self.lock().conn, ns)?)
    }

    /// Whether anything below directory `ns/path` has a pending change;
    /// if so, the entry of `ns/path` waits for (the first of) them: it is
    /// not due again before that one is done, however its push ends. A
    /// folder removed here goes after what it held, without being looked
    /// at over and over while one of those waits for a retry.
    pub fn sync_wait_below(&self, ns: &str, path: &[u8]) -> CoreResult<bool> {
        let mut st = self.lock();
        st.tx(|tx| match msync::first_below(tx, ns, path)? {
            Some(child) => {
                msync::set_after(tx, ns, path, &child)?;
                Ok(true)
            }
            None => Ok(false),
        })
    }

    /// Whether `ns/path`, or a directory above it, has a pending change: a
    /// listing must not bring back (or replace) what a queued change is
    /// about to remove, such as the files of a tree whose deletion is still
    /// on its way.
    pub fn sync_queued(&self, ns: &str, path: &[u8]) -> CoreResult<bool> {
        let st = self.lock();
        let mut end = path.len();
        loop {
            if msync::get_entry(&st.conn, ns, &path[..end])?.is_some() {
                return Ok(true);
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => return Ok(false),
            }
        }
    }

    /// Once per store: queues every entry of every namespace, so that files
    /// written before backends existed (a store from an older version) are
    /// pushed too. Entries the backend already holds cost a HEAD each.
    pub(crate) fn seed_sync_queue(&self) -> CoreResult<()> {
        let mut st = self.lock();
        if msync::queue_seeded(&st.conn) {
            return Ok(());
        }
        let m = st.mark();
        let n = st.tx(|tx| {
            let mut n = 0;
            for (ns_name, ns_ino, _) in meta::list_dir(tx, InodeNo::ROOT)? {
                for (name, ino, _) in meta::list_dir(tx, ns_ino)? {
                    mark_moved(tx, m, (ino, None), (ns_ino, &name), None)?;
                    n += 1;
                }
                let _ = ns_name;
            }
            msync::set_queue_seeded(tx)?;
            Ok(n)
        })?;
        if n > 0 {
            tracing::info!(entries = n, "queued the existing files for their backends");
        }
        Ok(())
    }
}
