//! The whole-file SHA-256 of a file written from its start in order,
//! computed as it is written, on a thread of its own.
//!
//! An upload carries the file's SHA-256 in the object's metadata, which S3
//! takes when a multipart upload begins: without this, a large file is
//! read and hashed in a pass of its own before its first part goes.
//!
//! The core sends each whole block of such a writer here as it is filled
//! (the same shared buffer the block hasher gets, in the order written),
//! and at each commit whose size is what was written in order, a request
//! to finish: the hash of those blocks and the last, partial one. The
//! result is recorded for that version of the file (only if the file is
//! still at that version). Nothing waits for this thread but a push that
//! needs the hash: when it falls behind, blocks are refused and the file
//! is hashed from its blocks as before.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::blocks::BLOCK_SIZE;
use crate::core::InodeNo;

/// Blocks waiting for the thread (each a shared buffer of up to a block).
const QUEUE: usize = 16;
/// Files followed at once; beyond that the thread starts afresh.
const MAX_FILES: usize = 256;

enum Msg {
    /// Whole block `idx` of `ino` (`idx` 0 starts the file).
    Block {
        ino: InodeNo,
        idx: u64,
        data: Arc<crate::buf::Owned>,
    },
    /// `ino` at `version` is its first `blocks` whole blocks, then `tail`.
    Finish {
        ino: InodeNo,
        version: i64,
        blocks: u64,
        tail: Option<Arc<crate::buf::Owned>>,
        tail_len: usize,
    },
    /// `ino` is no longer followed.
    Forget(InodeNo),
}

#[derive(Default)]
struct Results {
    /// Finishes asked for and not yet done.
    pending: HashSet<(InodeNo, i64)>,
    /// Hashes found, to record.
    done: Vec<(InodeNo, i64, [u8; 32])>,
}

#[derive(Default)]
struct Shared {
    results: Mutex<Results>,
    changed: Condvar,
}

pub(crate) struct Digests {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl Digests {
    pub fn start() -> std::io::Result<Digests> {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("file-digest".into())
            .spawn(move || {
                // Per file: the next block expected, and the hash so far.
                let mut files: HashMap<InodeNo, (u64, Sha256)> = HashMap::new();
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Block { ino, idx, data } => {
                            if idx == 0 {
                                if files.len() >= MAX_FILES {
                                    files.clear();
                                }
                                let mut h = Sha256::new();
                                h.update(&data[..]);
                                files.insert(ino, (1, h));
                            } else {
                                match files.get_mut(&ino) {
                                    Some((next, h)) if *next == idx => {
                                        h.update(&data[..]);
                                        *next += 1;
                                    }
                                    _ => {
                                        files.remove(&ino);
                                    }
                                }
                            }
                        }
                        Msg::Finish {
                            ino,
                            version,
                            blocks,
                            tail,
                            tail_len,
                        } => {
                            let base = if blocks == 0 {
                                Some(Sha256::new())
                            } else {
                                files
                                    .get(&ino)
                                    .filter(|(next, _)| *next == blocks)
                                    .map(|(_, h)| h.clone())
                            };
                            let sha = base.and_then(|mut h| {
                                match &tail {
                                    Some(t) if t.len() == tail_len => h.update(&t[..]),
                                    Some(_) => return None,
                                    None if tail_len == 0 => {}
                                    None => return None,
                                }
                                Some(<[u8; 32]>::from(h.finalize()))
                            });
                            let mut r = sh.results.lock().unwrap();
                            r.pending.remove(&(ino, version));
                            if let Some(sha) = sha {
                                r.done.push((ino, version, sha));
                            }
                            sh.changed.notify_all();
                        }
                        Msg::Forget(ino) => {
                            files.remove(&ino);
                        }
                    }
                }
            })?;
        Ok(Digests { tx, shared })
    }

    /// Hands whole block `idx` of `ino` to the thread; false if it is too
    /// far behind (the file is then no longer followed).
    pub fn block(&self, ino: InodeNo, idx: u64, data: &Arc<crate::buf::Owned>) -> bool {
        debug_assert_eq!(data.len() as u64, BLOCK_SIZE);
        match self.tx.try_send(Msg::Block {
            ino,
            idx,
            data: data.clone(),
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Asks for the hash of `ino` at `version`: its first `blocks` whole
    /// blocks as sent, then the first `tail_len` bytes of `tail`.
    pub fn finish(
        &self,
        ino: InodeNo,
        version: i64,
        blocks: u64,
        tail: Option<Arc<crate::buf::Owned>>,
        tail_len: usize,
    ) {
        let mut r = self.shared.results.lock().unwrap();
        let msg = Msg::Finish {
            ino,
            version,
            blocks,
            tail,
            tail_len,
        };
        // Sent with the results locked: the thread cannot answer before
        // the request is known to be pending.
        if self.tx.try_send(msg).is_ok() {
            r.pending.insert((ino, version));
        }
    }

    /// Stops following `ino` (best effort: the thread also forgets a file
    /// whose blocks stop coming in order).
    pub fn forget(&self, ino: InodeNo) {
        let _ = self.tx.try_send(Msg::Forget(ino));
    }

    /// The hashes found since the last call.
    pub fn take_done(&self) -> Vec<(InodeNo, i64, [u8; 32])> {
        std::mem::take(&mut self.shared.results.lock().unwrap().done)
    }

    /// Waits up to `limit` while the hash of `ino` at `version` is being
    /// finished; true if it was asked for at all.
    pub fn wait(&self, ino: InodeNo, version: i64, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut r = self.shared.results.lock().unwrap();
        if !r.pending.contains(&(ino, version)) {
            return r.done.iter().any(|d| d.0 == ino && d.1 == version);
        }
        while r.pending.contains(&(ino, version)) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            r = self.shared.changed.wait_timeout(r, left).unwrap().0;
        }
        true
    }
}
