//! Raw redb baselines for `consentd bench`: the same operations done with redb directly, so the
//! benchmark can show our figures beside the best a plain use of redb does on this machine. Lives
//! here because this is the only crate that knows redb.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::{Result, StorageError};

const TABLE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("raw");

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("baseline: {e}"))
}

/// Inserts `n` random 32-byte keys with `value_len`-byte values (one durable commit), then times
/// `samples` point lookups, each in its own read transaction and copying the value out — what a
/// consent check's storage read costs at least.
pub fn point_lookup_latencies(
    dir: &Path,
    n: usize,
    value_len: usize,
    samples: usize,
) -> Result<Vec<Duration>> {
    let db = Database::create(dir.join("raw-baseline.redb")).map_err(db_err)?;
    let mut keys = Vec::with_capacity(n);
    let value = vec![0x5a; value_len];
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut t = tx.open_table(TABLE).map_err(db_err)?;
        for i in 0..n {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            t.insert(&k, value.as_slice()).map_err(db_err)?;
            keys.push(k);
        }
    }
    tx.commit().map_err(db_err)?;
    let mut out = Vec::with_capacity(samples);
    for s in 0..samples {
        let k = &keys[(s * 7919) % keys.len().max(1)];
        let started = Instant::now();
        let r = db.begin_read().map_err(db_err)?;
        let t = r.open_table(TABLE).map_err(db_err)?;
        let v = t.get(k).map_err(db_err)?.map(|g| g.value().to_vec());
        out.push(started.elapsed());
        debug_assert!(v.is_some(), "every sampled key was inserted");
    }
    Ok(out)
}

/// A plain redb file with one table `hash (32 bytes) → bytes`, opened with redb's default cache
/// (as [`crate::Store::open`] does): the raw-parts baseline for ingest, per-write commits and
/// the memory/disk footprint rows.
pub struct RawDb {
    db: Database,
}

impl RawDb {
    /// Creates (or truncates into) a new database at `path`.
    pub fn create(path: &Path) -> Result<RawDb> {
        let _ = std::fs::remove_file(path);
        let db = Database::create(path).map_err(db_err)?;
        Ok(RawDb { db })
    }

    /// Inserts `items` in one write transaction committed with `Durability::Immediate`.
    pub fn insert_durable(&self, items: &[([u8; 32], Vec<u8>)]) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(db_err)?;
        {
            let mut t = tx.open_table(TABLE).map_err(db_err)?;
            for (k, v) in items {
                t.insert(k, v.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }
}

/// What [`durable_inserts`] took: wall time, and the calling thread's CPU time over the same
/// window.
#[derive(Clone, Copy, Debug)]
pub struct InsertTimes {
    pub wall: Duration,
    /// User and system time of the inserting thread (redb commits in the caller's thread: its
    /// page writes and `fsync`s are system time here). What the work costs a core, without the
    /// time spent waiting for the disk.
    pub cpu: Duration,
}

/// Inserts `items` into a fresh raw database at `path`, `per_commit` items per durable commit;
/// returns the time all inserts and commits took. `thread_cpu` reads the calling thread's CPU
/// clock (this crate reads no clock but the wall's; the bench passes one).
pub fn durable_inserts(
    path: &Path,
    items: &[([u8; 32], Vec<u8>)],
    per_commit: usize,
    thread_cpu: fn() -> Duration,
) -> Result<InsertTimes> {
    let db = RawDb::create(path)?;
    let (started, cpu_before) = (Instant::now(), thread_cpu());
    for chunk in items.chunks(per_commit.max(1)) {
        db.insert_durable(chunk)?;
    }
    let times = InsertTimes {
        wall: started.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu_before),
    };
    drop(db);
    Ok(times)
}
