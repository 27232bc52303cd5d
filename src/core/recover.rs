//! Start-up recovery after an unclean stop (kill -9, power loss).
//!
//! SQLite recovers its own WAL. What is left to do here:
//! - inodes that were unlinked while open (`orphans`, or nlink 0) are purged;
//! - blocks with no references are deleted from the table;
//! - block files on disk that no row names (written for changes that were
//!   never committed) are removed. Uncommitted data was never promised to
//!   anyone: a program that closed or fsynced a file had its changes
//!   committed before the call returned.

use std::collections::HashSet;

use crate::core::{CoreResult, Locker};
use crate::meta;

impl Locker {
    pub(crate) fn recover(&self) -> CoreResult<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let orphans = meta::orphans(&st.conn)?;
        for ino in &orphans {
            self.purge_locked(st, *ino)?;
        }
        let known: HashSet<Vec<u8>> = {
            st.conn.execute("DELETE FROM blocks WHERE refs <= 0", [])?;
            st.conn.execute(
                "DELETE FROM block_data WHERE id NOT IN (SELECT id FROM blocks)",
                [],
            )?;
            let mut q = st.conn.prepare("SELECT id FROM blocks")?;
            let rows = q.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        // The replay's commit (and the purges above) made durable before
        // block files go on their strength: a power cut could otherwise
        // take that commit and bring back rows naming them.
        st.durable()?;
        let mut collected = 0u64;
        for id in self.blocks.list()? {
            if !known.contains(&id.0[..]) {
                self.blocks.remove(&id)?;
                collected += 1;
            }
        }
        if !orphans.is_empty() || collected > 0 {
            tracing::info!(
                orphan_inodes = orphans.len(),
                unreferenced_blocks = collected,
                "recovered from an unclean stop"
            );
        }
        Ok(())
    }
}
