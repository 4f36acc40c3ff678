//! Raw redb baselines for the replication rows of `consentd bench` (cold sync, fan-out): the
//! same bytes stored with redb directly, nothing else. Beside `baseline` (consent-check rows);
//! lives here because this is the only crate that knows redb.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, TableDefinition};

use crate::{Result, StorageError};

const TABLE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("raw_sync");

/// Items per durable transaction in [`bulk_insert`]: as many as one group commit may carry.
pub const BULK_COMMIT_ITEMS: usize = 4096;

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("sync baseline: {e}"))
}

/// Inserts `items` (key → bytes) into a fresh database at `path`, [`BULK_COMMIT_ITEMS`] per
/// durable (`Immediate`) transaction, and returns the time taken: what storing a cold sync's
/// envelopes costs redb at least.
pub fn bulk_insert(path: &Path, items: &[([u8; 32], &[u8])]) -> Result<Duration> {
    let db = Database::create(path).map_err(db_err)?;
    let started = Instant::now();
    for chunk in items.chunks(BULK_COMMIT_ITEMS) {
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(db_err)?;
            for (k, v) in chunk {
                t.insert(k, *v).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
    }
    Ok(started.elapsed())
}

/// A fresh raw database that takes one durable single-insert transaction at a time: one office's
/// durable-commit floor for one replicated record.
pub struct RawCommitter {
    db: Database,
    next_key: u64,
}

impl RawCommitter {
    /// Creates the database at `path`, or opens the one already there (redb refuses a file that
    /// another open database holds). The fan-out baseline gives each office a fresh path.
    pub fn create(path: &Path) -> Result<RawCommitter> {
        Ok(RawCommitter {
            db: Database::create(path).map_err(db_err)?,
            next_key: 0,
        })
    }

    /// Inserts `value` under a fresh (scattered) key in one `Immediate` transaction.
    pub fn commit_one(&mut self, value: &[u8]) -> Result<()> {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(
            &self
                .next_key
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_be_bytes(),
        );
        self.next_key += 1;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(db_err)?;
            t.insert(&k, value).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}

/// Times `samples` durable transactions of one insert each (`value` under a fresh key) in a
/// fresh database at `path`: the durable-commit floor of one replicated record, alone.
pub fn commit_latencies(path: &Path, value: &[u8], samples: usize) -> Result<Vec<Duration>> {
    let mut db = RawCommitter::create(path)?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        db.commit_one(value)?;
        out.push(started.elapsed());
    }
    Ok(out)
}
