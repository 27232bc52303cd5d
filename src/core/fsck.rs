//! `fsck`: re-checks every block against its SHA-256 on demand (blocks are
//! checked when they enter the cache from a backend; this catches what the
//! local disk did to them since).
//!
//! A corrupt block file is removed. If every file holding it is confirmed
//! in a backend, the next read fetches it back (checked); otherwise the
//! data is reported as lost here, with the paths that hold it.

use crate::blocks::{BlockId, INLINE_MAX};
use crate::core::{CoreResult, InodeNo, Locker, sync::ns_path};
use crate::meta::{self, sync as msync};

/// What `fsck` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// Blocks read and hashed (files and inline).
    pub checked: u64,
    /// Blocks whose bytes did not match their name (removed).
    pub corrupt: u64,
    /// Corrupt or missing blocks that a backend holds: fetched back on the
    /// next read.
    pub recoverable: u64,
    /// `namespace/path` of files holding a corrupt or missing block that no
    /// backend holds.
    pub lost: Vec<String>,
}

/// How far `fsck` has got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsckProgress {
    pub blocks_done: u64,
    pub blocks_total: u64,
    /// Bytes of the blocks held here (evicted ones are not read).
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Locker {
    /// Checks every block of the store. Needs the store to itself (the
    /// daemon stopped).
    pub fn fsck(&self) -> CoreResult<FsckReport> {
        self.fsck_with(|_| {})
    }

    /// `fsck`, telling `progress` after each block.
    pub fn fsck_with(&self, mut progress: impl FnMut(FsckProgress)) -> CoreResult<FsckReport> {
        let mut report = FsckReport::default();
        let rows: Vec<(Vec<u8>, i64, bool)> = {
            let st = self.lock();
            let mut q = st.conn.prepare("SELECT id, size, present FROM blocks")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut done = FsckProgress {
            blocks_total: rows.len() as u64,
            bytes_total: rows.iter().filter(|r| r.2).map(|r| r.1.max(0) as u64).sum(),
            ..FsckProgress::default()
        };
        for (raw, size, present) in rows {
            done.blocks_done += 1;
            if present {
                done.bytes_done += size.max(0) as u64;
            }
            progress(done);
            let Some(id) = BlockId::from_slice(&raw) else {
                continue;
            };
            let ok = if (size as u32) < INLINE_MAX {
                let st = self.lock();
                let data = meta::get_inline_block(&st.conn, &id)?;
                report.checked += 1;
                let good = data.is_some_and(|d| d.len() as i64 == size && BlockId::of(&d) == id);
                if !good {
                    report.corrupt += 1;
                    tracing::error!(block = %id.hex(), "a small block's bytes in the database do not match its SHA-256");
                }
                good
            } else {
                match self.blocks.read(&id)? {
                    Some(d) => {
                        report.checked += 1;
                        let good = BlockId::of(&d) == id;
                        if !good {
                            report.corrupt += 1;
                            tracing::error!(block = %id.hex(), "a block's bytes do not match its SHA-256; removed");
                            self.blocks.remove(&id)?;
                            let mut st = self.lock();
                            msync::set_block_present(&st.conn, &id.0, false)?;
                            st.lru.pop(&id);
                        }
                        good
                    }
                    // Evicted (the backend holds it), or lost.
                    None => !present && self.block_in_backend(&id)?,
                }
            };
            if ok {
                continue;
            }
            if self.block_in_backend(&id)? {
                report.recoverable += 1;
                continue;
            }
            let st = self.lock();
            let mut q = st
                .conn
                .prepare_cached("SELECT DISTINCT ino FROM file_blocks WHERE block = ?1")?;
            let inos: Vec<i64> = q
                .query_map([&id.0[..]], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for ino in inos {
                if let Some((parent, name)) = meta::any_name(&st.conn, InodeNo(ino as u64))?
                    && let Some((ns, p)) = ns_path(&st.conn, parent, &name)?
                {
                    let shown = format!("{ns}/{}", String::from_utf8_lossy(&p));
                    if !report.lost.contains(&shown) {
                        tracing::error!(path = %shown, block = %id.hex(), "data lost here: a block is damaged or missing and no backend holds it");
                        report.lost.push(shown);
                    }
                }
            }
        }
        Ok(report)
    }

    fn block_in_backend(&self, id: &BlockId) -> CoreResult<bool> {
        let st = self.lock();
        Ok(msync::block_in_backend(&st.conn, &id.0)?.is_some_and(|inos| !inos.is_empty()))
    }
}
