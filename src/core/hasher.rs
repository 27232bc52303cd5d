//! The block hasher: a background thread that hashes and stores whole
//! blocks while the FUSE thread goes back to the kernel for the next write,
//! so a sequential writer's hashing runs on the other core instead of
//! between its writes.
//!
//! Ownership: a queued block stays a `Dirty::Mem` entry (shared with the
//! worker through an `Arc`) until the result comes back; the core applies a
//! result only if the entry still holds the very same buffer (a later write
//! to the block copies it first), and otherwise frees the block it stored if
//! nothing references it. Commits wait for outstanding results first, so
//! nothing queued is ever left out of a commit. At most `QUEUE` blocks are in
//! flight; beyond that, writers hash inline.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::blocks::{BlockId, BlockStore};
use crate::core::InodeNo;
use crate::meta::BlockRef;

const QUEUE: usize = 4;

pub(crate) struct Job {
    pub ino: InodeNo,
    pub idx: u64,
    pub data: Arc<crate::buf::Owned>,
}

pub(crate) struct Done {
    pub ino: InodeNo,
    pub idx: u64,
    pub data: Arc<crate::buf::Owned>,
    /// The stored block, `None` for all zeros, or the error.
    pub result: std::io::Result<Option<BlockRef>>,
}

pub(crate) struct Hasher {
    jobs: SyncSender<Job>,
    pub done: Receiver<Done>,
    /// Jobs sent whose result has not been received.
    pub outstanding: usize,
    /// Every job is given back, as with a full queue (tests).
    #[cfg(test)]
    pub refuse: bool,
}

impl Hasher {
    pub fn start(blocks: Arc<BlockStore>) -> std::io::Result<Hasher> {
        let (jobs, job_rx) = sync_channel::<Job>(QUEUE);
        let (done_tx, done) = sync_channel::<Done>(QUEUE + 1);
        std::thread::Builder::new()
            .name("block-hasher".into())
            .spawn(move || {
                // Ends when the core (the sender) is dropped.
                while let Ok(job) = job_rx.recv() {
                    let result = if job.data.iter().all(|&b| b == 0) {
                        Ok(None)
                    } else {
                        let id = BlockId::of(&job.data);
                        blocks.put_with_id(&id, &job.data).map(|_| {
                            Some(BlockRef {
                                id,
                                len: job.data.len() as u32,
                            })
                        })
                    };
                    let done = Done {
                        ino: job.ino,
                        idx: job.idx,
                        data: job.data,
                        result,
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Hasher {
            jobs,
            done,
            outstanding: 0,
            #[cfg(test)]
            refuse: false,
        })
    }

    /// Queues a block; gives it back if the queue is full.
    pub fn submit(&mut self, job: Job) -> Result<(), Job> {
        #[cfg(test)]
        if self.refuse {
            return Err(job);
        }
        if self.outstanding >= QUEUE {
            return Err(job);
        }
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.outstanding += 1;
                Ok(())
            }
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
        }
    }
}
