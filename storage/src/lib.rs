//! consentd's storage layer: the only crate that knows redb.
//!
//! It stores opaque bytes keyed by 16-byte document ids ([`DocId`]), 32-byte change hashes
//! ([`type@Hash`]) and 32-byte keyed index hashes ([`IndexKey`]); it knows nothing of consent,
//! Automerge or signatures. The table layout and byte encodings are documented in [`layout`] and
//! in `LAYOUT.md`.
//!
//! Writes go through one writer thread that groups concurrent batches into one durable redb
//! transaction ("group commit", see `writer.rs`); a commit resolves only once the transaction
//! carrying its batch is durable. Reads open a fresh redb read transaction per call: redb is MVCC,
//! so reads never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

pub mod baseline;
pub mod baseline_sync;
mod budget;
mod index_journal;
mod journal;
mod key_filter;
pub mod layout;
mod syncer;
mod writer;

use budget::ByteBudget;
use layout::*;
use writer::{Request, Shared};

/// Random id of one record (one Automerge document).
pub type DocId = [u8; 16];
/// Change hash (SHA-256 of an Automerge change); identifies one envelope.
pub type Hash = [u8; 32];
/// A secondary index key: a keyed hash computed by the caller, never personal data.
pub type IndexKey = [u8; 32];
/// Id of one append-only log (the caller's choice, e.g. derived from an office's log origin).
pub type LogId = [u8; 16];
/// Id of one of the caller's wrapped secret keys.
pub type KeyId = [u8; 16];

/// One snapshot of the hot read paths (see `Store::hot`); each table is opened on first use, so
/// a read that is not shared (during a commit) opens only the table it needs.
pub(crate) struct HotTables {
    /// `snapshot_tag` read before the snapshot began: it holds at least every commit and merge
    /// that tag counts.
    seq: u64,
    txn: Arc<ReadTransaction>,
    index: std::sync::OnceLock<ReadOnlyTable<&'static [u8; 48], ()>>,
    index_mid: std::sync::OnceLock<ReadOnlyTable<&'static [u8; 48], ()>>,
    index_new: std::sync::OnceLock<ReadOnlyTable<u64, &'static [u8; 48]>>,
    projections: std::sync::OnceLock<ReadOnlyTable<&'static [u8; 16], &'static [u8]>>,
    keys: std::sync::OnceLock<ReadOnlyTable<&'static [u8; 16], &'static [u8]>>,
    tombstones: std::sync::OnceLock<ReadOnlyTable<&'static [u8; 48], &'static [u8]>>,
}

impl HotTables {
    fn keys(&self) -> Result<&ReadOnlyTable<&'static [u8; 16], &'static [u8]>> {
        open_once(&self.txn, &self.keys, KEYS, "opening table keys")
    }

    fn tombstones(&self) -> Result<&ReadOnlyTable<&'static [u8; 48], &'static [u8]>> {
        open_once(
            &self.txn,
            &self.tombstones,
            TOMBSTONES,
            "opening table tombstones",
        )
    }

    fn index(&self) -> Result<&ReadOnlyTable<&'static [u8; 48], ()>> {
        open_once(&self.txn, &self.index, INDEX, "opening table index")
    }

    fn index_mid(&self) -> Result<&ReadOnlyTable<&'static [u8; 48], ()>> {
        open_once(
            &self.txn,
            &self.index_mid,
            INDEX_MID,
            "opening table index_mid",
        )
    }

    fn index_new(&self) -> Result<&ReadOnlyTable<u64, &'static [u8; 48]>> {
        open_once(
            &self.txn,
            &self.index_new,
            INDEX_NEW,
            "opening table index_new",
        )
    }

    /// The docs (or key ids) under `key` in this snapshot, journalled ones included.
    fn under(&self, key: &IndexKey, shared: &Shared) -> Result<Vec<[u8; 16]>> {
        // After the snapshot began (it did when `self` was made): every entry it holds in
        // `index_new` was published before its commit, so its slot is in memory by now.
        // (A key nobody indexed was ruled out before the snapshot was taken: `Store::may_hold`.)
        let candidates = lock_read(&shared.index_journal).candidates(key);
        // `index_new` is opened only when the journal names something in the key's bucket.
        let index_new = match candidates.is_empty() {
            true => None,
            false => Some(self.index_new()?),
        };
        index_journal::suffixes_under(
            self.index()?,
            self.index_mid()?,
            index_new,
            &candidates,
            key,
        )
    }

    fn projections(&self) -> Result<&ReadOnlyTable<&'static [u8; 16], &'static [u8]>> {
        open_once(
            &self.txn,
            &self.projections,
            PROJECTIONS,
            "opening table projections",
        )
    }
}

/// The table in `cell`, opened from `txn` the first time. Two readers racing both open it; one
/// keeps its copy, which is harmless (same snapshot, same table).
fn open_once<'a, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    cell: &'a std::sync::OnceLock<ReadOnlyTable<K, V>>,
    def: redb::TableDefinition<'static, K, V>,
    context: &'static str,
) -> Result<&'a ReadOnlyTable<K, V>> {
    if let Some(t) = cell.get() {
        return Ok(t);
    }
    let _ = cell.set(txn.open_table(def).ctx(context)?);
    Ok(cell.get().expect("set just now, or by the racing reader"))
}

/// Tables grouped by what they may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableClass {
    /// Ids, change hashes, counters and the caller's keyed index hashes only: never personal data.
    IndexOnly,
    /// The caller's opaque payloads: envelopes, projections and meta values.
    Payload,
}

/// Largest accepted encoded envelope.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// Largest accepted projection.
pub const MAX_PROJECTION_BYTES: usize = 1 << 20;
/// Most secondary index keys one record may have.
pub const MAX_INDEX_KEYS: usize = 64;
/// Largest accepted meta value.
pub const MAX_META_VALUE_BYTES: usize = 64 << 10;
/// Longest accepted meta key.
pub const MAX_META_KEY_BYTES: usize = 256;
/// Largest accepted log leaf.
pub const MAX_LOG_LEAF_BYTES: usize = 64;
/// Largest accepted checkpoint (a signed note with a few cosignatures is well below this).
pub const MAX_CHECKPOINT_BYTES: usize = 16 << 10;
/// Longest accepted checkpoint key.
pub const MAX_CHECKPOINT_KEY_BYTES: usize = 256;
/// Largest accepted tombstone (256 heads of 32 bytes plus ~200 bytes of header).
pub const MAX_TOMBSTONE_BYTES: usize = 16 << 10;
/// Largest accepted wrapped key (a 32-byte key sealed with a nonce, a tag and a header).
pub const MAX_WRAPPED_KEY_BYTES: usize = 256;
/// Largest accepted batch (estimated in-memory size). Equal to [`MAX_BYTES_PER_COMMIT`] so that
/// every accepted batch fits in one group commit.
pub const MAX_BATCH_BYTES: usize = MAX_BYTES_PER_COMMIT;
/// At most this many batches share one durable commit.
pub const MAX_BATCHES_PER_COMMIT: usize = 4096;
/// A group stops growing once its batches reach this many bytes (a single batch may reach it).
pub const MAX_BYTES_PER_COMMIT: usize = 16 << 20;
/// Capacity of the writer channel, in batches. Twice a full group, so the next full group can
/// queue while the current one is being fsynced.
pub const CHANNEL_CAPACITY: usize = 2 * MAX_BATCHES_PER_COMMIT;
/// Bytes of batches accepted but not yet answered. Together with [`CHANNEL_CAPACITY`] this bounds
/// the memory queued for the writer; `commit` waits when it is reached.
pub const MAX_QUEUED_BYTES: usize = 4 * MAX_BYTES_PER_COMMIT;

/// Fixed per-update / per-batch overhead counted in the byte estimate (ids, kind, due day, Vec
/// headers), so that many tiny updates still count for something.
const UPDATE_OVERHEAD_BYTES: usize = 64;
const BATCH_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot start the storage writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "storage format version {found} is not supported (this build reads version {expected})"
    )]
    Format { found: u64, expected: u64 },
    #[error("{what}: {size} exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The group commit that carried this batch failed; nothing of the group was written.
    #[error("commit failed, the batch was not written: {0}")]
    CommitFailed(String),
    /// The commit was made, but writing or syncing the database file failed before it was
    /// durable: the batch may or may not have reached the disk, and no further write is accepted
    /// until a restart (`syncer.rs`).
    #[error(
        "the database file could not be written or synced ({0}); the batch may or may not be \
         durable, and no write is accepted until the daemon restarts"
    )]
    NotDurable(String),
    /// `shutdown()` was called (or the store dropped); no further writes are accepted.
    #[error("store is closed")]
    Closed,
    /// The writer thread is not running (it panicked); the batch was not written.
    #[error("storage writer thread has stopped; the batch was not written")]
    WriterGone,
    /// The writer thread stopped after accepting the batch but before answering: the batch may
    /// or may not be durable.
    #[error("storage writer thread stopped before confirming the commit; the batch may or may not be durable")]
    CommitUnconfirmed,
}

impl StorageError {
    /// Whether opening failed because another process holds the database open (a running
    /// daemon): `consentd check-config` on a running office checks all but the database.
    pub fn is_in_use(&self) -> bool {
        matches!(
            self,
            StorageError::Open {
                source: redb::DatabaseError::DatabaseAlreadyOpen,
                ..
            }
        )
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attaches what we were doing to a redb error.
pub(crate) trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|e| StorageError::Database {
            context,
            source: e.into(),
        })
    }
}

/// The new full state of one record, as the caller computed it.
#[derive(Debug, Clone, Default)]
pub struct RecordUpdate {
    pub doc_id: DocId,
    pub kind: u8,
    /// New envelopes for this document: (change hash, encoded envelope bytes). Appended to the
    /// doc's change list in this order; a hash already stored (for any doc) is skipped
    /// (idempotent), unless the batch says none can be ([`WriteBatch::envelopes_new`]).
    pub envelopes: Vec<(Hash, Vec<u8>)>,
    /// Replaces the record's projection (plain current state, opaque bytes).
    pub projection: Vec<u8>,
    /// Replaces the record's secondary index keys (the old keys of this doc are removed).
    /// Duplicates are ignored.
    pub index_keys: Vec<IndexKey>,
    /// Due day (days since 1970-01-01) in the due index; None removes the doc from the due index.
    pub due_day: Option<i32>,
}

/// Everything one caller wants written atomically.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub updates: Vec<RecordUpdate>,
    /// Meta key/value puts (applied after the updates).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Leaves appended to append-only logs, in this order, after the updates: each goes to index
    /// `log_size(log)` of its log. In the same transaction as the updates, so a log never misses
    /// a leaf for an envelope of an acknowledged batch.
    pub log: Vec<(LogId, Vec<u8>)>,
    /// Checkpoint puts (key → bytes), replacing what the key held.
    pub checkpoints: Vec<(String, Vec<u8>)>,
    /// Tombstones stored: (doc, tombstone hash, bytes). An existing (doc, hash) is left as is.
    /// Once a doc has a tombstone, every later update of it is dropped and counted
    /// ([`Stats::dropped_after_tombstone`]).
    pub tombstones: Vec<(DocId, Hash, Vec<u8>)>,
    /// Expiry days (after the updates): `Some(day)` puts the doc in the expiry index at `day`,
    /// `None` takes it out. A doc that does not exist is skipped.
    pub expiries: Vec<(DocId, Option<i32>)>,
    /// Wrapped keys stored or replaced: (owner's keyed hash, key id, wrapped bytes).
    pub keys: Vec<(IndexKey, KeyId, Vec<u8>)>,
    /// Keys removed (applied before `keys`): (owner, key id).
    pub key_deletes: Vec<(IndexKey, KeyId)>,
    /// Wrapped bytes replaced (the owner stays), only for keys still stored: a re-wrap racing
    /// a deletion must not bring the deleted key back.
    pub key_rewraps: Vec<(KeyId, Vec<u8>)>,
    /// Every envelope in `updates` was made for this batch (a change authored and signed just
    /// now), so no store holds it: the writer stores them without first looking each hash up
    /// (debug builds check that none is stored). Leave it false for envelopes from anywhere else
    /// (a peer, a file), which are skipped when held, as the updates' docs say.
    pub envelopes_new: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// Number of the durable commit that carried this batch. Increases by one per group commit
    /// and persists across restarts; batches grouped together share it.
    pub commit_seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records (docs) stored.
    pub records: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Durable group commits since open.
    pub commits_durable: u64,
    /// Batches carried by those commits since open.
    pub batches_committed: u64,
    /// Group commits that failed since open (each failed every batch in it).
    pub commits_failed: u64,
    /// Number of the last durable commit (persisted; 0 for a new store).
    pub last_commit_seq: u64,
    /// Tombstones stored.
    pub tombstones: u64,
    /// Envelopes dropped because their doc has a tombstone (persisted).
    pub dropped_after_tombstone: u64,
}

/// One table's shape ([`Store::table_shapes`]).
#[derive(Debug, Clone)]
pub struct TableShape {
    pub name: &'static str,
    pub entries: u64,
    /// Levels of the B-tree, its root to a leaf: the pages a write to one leaf rewrites.
    pub height: u32,
    pub leaf_pages: u64,
    pub branch_pages: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of its pages holding neither (half-empty leaves after splits, for example).
    pub fragmented_bytes: u64,
}

/// Handle to the store. Cheap to clone; all clones share one database and one writer thread.
/// The writer stops when [`Store::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Read-locked for every transaction begin and every commit; write-locked only by
    /// [`Store::compact`], which needs the database to itself.
    db: Arc<RwLock<Database>>,
    /// `None` once shut down. Commits clone the sender; the writer exits when every clone is gone
    /// and the queue is drained, so work accepted before shutdown is still committed and answered.
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    budget: Arc<ByteBudget>,
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These mutexes guard an Option swap only; a panic cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A journal's lock, for reading. Only the writer changes the journals, between whole map
/// operations, so a panic elsewhere cannot leave one half-changed.
pub(crate) fn lock_read<T>(j: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    j.read().unwrap_or_else(|p| p.into_inner())
}

/// A journal's lock, for the writer's changes (as [`lock_read`]).
pub(crate) fn lock_write<T>(j: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    j.write().unwrap_or_else(|p| p.into_inner())
}

/// Where a snapshot may hold a change, and who said so (see `Store::places`).
struct Located {
    /// The change's key in `changes`.
    key: journal::Place,
    /// Named by the journal, which may be ahead of the snapshot: absent there means not held.
    from_journal: bool,
}

impl Inner {
    fn shutdown(&self) {
        // Drop our sender first: the writer drains what is queued, then sees the channel close.
        drop(lock(&self.tx).take());
        // Hold the lock while joining so a concurrent shutdown() also returns only after the drain.
        let mut writer = lock(&self.writer);
        if let Some(handle) = writer.take() {
            if handle.join().is_err() {
                tracing::error!("storage writer thread had panicked");
            }
        }
        // Every answer and snapshot of the last commits is out (they run on the syncer thread),
        // and their read transactions end before the file is closed (and may be opened again).
        self.shared.retire_view();
        self.shared.stop_sharing();
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>> {
        lock(&self.tx).clone().ok_or(StorageError::Closed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks a batch against the limits and returns its estimated size.
fn check_batch(purges: &[DocId], batch: &WriteBatch) -> Result<usize> {
    fn limit(what: &'static str, size: usize, limit: usize) -> Result<()> {
        if size > limit {
            Err(StorageError::TooLarge { what, size, limit })
        } else {
            Ok(())
        }
    }
    let mut bytes = BATCH_OVERHEAD_BYTES + 16 * purges.len();
    for u in &batch.updates {
        limit("projection bytes", u.projection.len(), MAX_PROJECTION_BYTES)?;
        limit(
            "index keys of one record",
            u.index_keys.len(),
            MAX_INDEX_KEYS,
        )?;
        for (_, e) in &u.envelopes {
            limit("envelope bytes", e.len(), MAX_ENVELOPE_BYTES)?;
            bytes = bytes.saturating_add(32 + e.len());
        }
        bytes = bytes
            .saturating_add(UPDATE_OVERHEAD_BYTES + u.projection.len() + 32 * u.index_keys.len());
    }
    for (k, v) in &batch.meta {
        limit("meta key bytes", k.len(), MAX_META_KEY_BYTES)?;
        limit("meta value bytes", v.len(), MAX_META_VALUE_BYTES)?;
        bytes = bytes.saturating_add(k.len() + v.len());
    }
    for (_, leaf) in &batch.log {
        limit("log leaf bytes", leaf.len(), MAX_LOG_LEAF_BYTES)?;
        bytes = bytes.saturating_add(16 + leaf.len());
    }
    for (k, v) in &batch.checkpoints {
        limit("checkpoint key bytes", k.len(), MAX_CHECKPOINT_KEY_BYTES)?;
        limit("checkpoint bytes", v.len(), MAX_CHECKPOINT_BYTES)?;
        bytes = bytes.saturating_add(k.len() + v.len());
    }
    for (_, _, v) in &batch.tombstones {
        limit("tombstone bytes", v.len(), MAX_TOMBSTONE_BYTES)?;
        bytes = bytes.saturating_add(48 + v.len());
    }
    for (_, _, w) in &batch.keys {
        limit("wrapped key bytes", w.len(), MAX_WRAPPED_KEY_BYTES)?;
        bytes = bytes.saturating_add(64 + w.len());
    }
    for (_, w) in &batch.key_rewraps {
        limit("wrapped key bytes", w.len(), MAX_WRAPPED_KEY_BYTES)?;
        bytes = bytes.saturating_add(16 + w.len());
    }
    bytes = bytes.saturating_add(20 * batch.expiries.len() + 48 * batch.key_deletes.len());
    limit("batch bytes", bytes, MAX_BATCH_BYTES)?;
    Ok(bytes)
}

/// `pick` of each of `doc`'s stored changes (its hash, its envelope), in the order they were
/// stored.
fn doc_changes<T>(
    changes: &impl redb::ReadableTable<&'static [u8; 20], &'static [u8]>,
    doc: &DocId,
    pick: impl Fn(Hash, &[u8]) -> T,
) -> Result<Vec<T>> {
    let (lo, hi) = (change_key(doc, 0), change_key(doc, u32::MAX));
    let mut out = Vec::new();
    for item in changes
        .range::<&[u8; 20]>(&lo..=&hi)
        .ctx("reading table changes")?
    {
        let (k, v) = item.ctx("reading table changes")?;
        let (hash, envelope) = split_change_value(k.value(), v.value())?;
        out.push(pick(hash, envelope));
    }
    Ok(out)
}

fn split_projection(doc: &DocId, v: &[u8]) -> Result<(u8, Vec<u8>)> {
    match v.split_first() {
        Some((&kind, rest)) => Ok((kind, rest.to_vec())),
        None => Err(StorageError::Corrupt(format!(
            "projection of doc {} is empty (no kind byte)",
            hex16(doc)
        ))),
    }
}

impl Store {
    /// Opens (creating if new) the database file at `path`, creates missing tables, and starts
    /// the writer thread. Fails if another process (or another `Store`) has the file open.
    pub fn open(path: &Path) -> Result<Store> {
        let open_error = |source: redb::DatabaseError| StorageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| open_error(e.into()))?;
        let syncer = syncer::Syncer::start(file).map_err(|e| open_error(e.into()))?;
        let db = redb::Builder::new()
            .create_with_backend(syncer::Backend(Arc::clone(&syncer)))
            .map_err(open_error)?;
        let last_seq = writer::init(&db)?;
        let journal = journal::Journal::load(&db)?;
        let loading = std::time::Instant::now();
        let index_journal = index_journal::IndexJournal::load(&db)?;
        tracing::debug!(
            filter_bytes = index_journal.filter_bytes(),
            micros = loading.elapsed().as_micros() as u64,
            "index journal and key filter loaded"
        );
        let db = Arc::new(RwLock::new(db));
        let shared = Arc::new(Shared {
            journal: RwLock::new(journal),
            key_filter: index_journal.key_filter(),
            index_journal: RwLock::new(index_journal),
            syncer: Some(syncer),
            ..Shared::default()
        });
        // What `init` and the migrations committed is durable before anyone reads it.
        shared.publish_settled(&db.read().unwrap_or_else(|p| p.into_inner()))?;
        shared.last_commit_seq.store(last_seq, Ordering::Release);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let handle = std::thread::Builder::new()
            .name("consentd-storage-writer".into())
            .spawn({
                let db = Arc::clone(&db);
                let shared = Arc::clone(&shared);
                move || writer::run(db, rx, shared)
            })
            .map_err(StorageError::Spawn)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                shared,
                budget: ByteBudget::new(MAX_QUEUED_BYTES),
                path: path.to_path_buf(),
            }),
        })
    }

    /// What the writer does after each commit, for tests that commit around it (a merge, a drain
    /// step): once everything is durable, readers get a snapshot of it.
    #[cfg(test)]
    fn publish_now(&self) {
        let db = self.inner.db.read().unwrap();
        self.inner.shared.publish_settled(&db).unwrap();
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes `batch` atomically. Resolves only after the durable commit that includes it.
    /// Waits (asynchronously) while the writer queue is full.
    pub async fn commit(&self, batch: WriteBatch) -> Result<CommitReceipt> {
        self.commit_purge(Vec::new(), batch).await
    }

    /// Like [`Store::commit`], but first deletes the docs in `purge` entirely (envelopes, change
    /// list, projection, index, due and kind entries), in the same transaction as `batch` — e.g.
    /// to apply a tombstone and record it in meta atomically. Purging an unknown doc is a no-op.
    /// Note: redb does not zero freed pages; deleted bytes may linger in the file until reused.
    pub async fn commit_purge(
        &self,
        purge: Vec<DocId>,
        batch: WriteBatch,
    ) -> Result<CommitReceipt> {
        let bytes = check_batch(&purge, &batch)?;
        // Budget before sender: a commit waiting for budget must not keep the writer alive
        // across a shutdown.
        let permit = self.inner.budget.acquire(bytes).await;
        let tx = self.inner.sender()?;
        let (reply, answer) = oneshot::channel();
        let req = Request {
            purges: purge,
            batch,
            bytes,
            reply,
            _permit: permit,
        };
        tx.send(req).await.map_err(|_| StorageError::WriterGone)?;
        drop(tx);
        answer.await.map_err(|_| StorageError::CommitUnconfirmed)?
    }

    /// Blocking [`Store::commit`], for plain threads.
    ///
    /// # Panics
    /// If called from within an async context of a Tokio runtime (Tokio's blocking channel
    /// operations refuse to block a runtime thread); use [`Store::commit`] there.
    pub fn commit_blocking(&self, batch: WriteBatch) -> Result<CommitReceipt> {
        self.commit_purge_blocking(Vec::new(), batch)
    }

    /// Blocking [`Store::commit_purge`]. Same panics as [`Store::commit_blocking`].
    pub fn commit_purge_blocking(
        &self,
        purge: Vec<DocId>,
        batch: WriteBatch,
    ) -> Result<CommitReceipt> {
        let bytes = check_batch(&purge, &batch)?;
        let permit = self.inner.budget.acquire_blocking(bytes);
        let tx = self.inner.sender()?;
        let (reply, answer) = oneshot::channel();
        let req = Request {
            purges: purge,
            batch,
            bytes,
            reply,
            _permit: permit,
        };
        tx.blocking_send(req)
            .map_err(|_| StorageError::WriterGone)?;
        drop(tx);
        answer
            .blocking_recv()
            .map_err(|_| StorageError::CommitUnconfirmed)?
    }

    /// The `index` and `projections` tables of a snapshot holding every commit acknowledged so
    /// far, shared by the hot read paths until the next commit. A consent check is two lookups;
    /// beginning a read transaction and opening two tables for each cost about as much as the
    /// lookups themselves (BENCHMARKS.md, seventeenth session).
    ///
    /// Why it is current: `snapshot_tag` changes after each durable view is published (before
    /// the commit's waiters are answered) and after each journal merge, and the tables are
    /// tagged with the value read *before* they were opened on the view, so shared tables whose
    /// tag equals the current one hold at least every answered commit. Why they hold back no
    /// page the view does not: they are opened on the view, none are shared while a commit runs
    /// ([`writer::HotSlot`]), and a merge drops them when it ends.
    fn hot(&self) -> Result<Arc<HotTables>> {
        let shared = &self.inner.shared;
        let seq = shared.snapshot_tag.load(Ordering::Acquire);
        if let Some(h) = shared.shared_at(seq) {
            return Ok(h);
        }
        let fresh = Arc::new(HotTables {
            seq,
            txn: self.read()?,
            index: Default::default(),
            index_mid: Default::default(),
            index_new: Default::default(),
            projections: Default::default(),
            keys: Default::default(),
            tombstones: Default::default(),
        });
        shared.offer(&fresh);
        Ok(fresh)
    }

    /// The snapshot of the newest durable commit (`writer::publish_when_durable`): a reader never
    /// sees a commit before its writer is told it is durable. Without one (only while a
    /// compaction runs, which the lock waits for), a read transaction of its own.
    fn read(&self) -> Result<Arc<ReadTransaction>> {
        if let Some(txn) = self.inner.shared.view() {
            return Ok(txn);
        }
        let txn = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .begin_read()
            .ctx("beginning a read transaction")?;
        Ok(Arc::new(txn))
    }

    /// Whether any tombstone names `doc` (tombstones win forever: the doc must never come back).
    pub fn is_tombstoned(&self, doc: &DocId) -> Result<bool> {
        Ok(self.are_tombstoned(std::slice::from_ref(doc))?[0])
    }

    /// Up to `limit` docs whose expiry day is `< day_exclusive`, ascending by day (then doc id),
    /// starting after the cursor `after` (the last row of the previous page).
    pub fn docs_expiring_before(
        &self,
        day_exclusive: i32,
        after: Option<(i32, DocId)>,
        limit: usize,
    ) -> Result<Vec<(i32, DocId)>> {
        use std::ops::Bound;
        let r = self.read()?;
        let t = r.open_table(EXPIRY).ctx("opening table expiry")?;
        let hi = due_key(day_exclusive, &[0; 16]);
        let lo = after.map(|(d, doc)| due_key(d, &doc));
        let lower = match &lo {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 20]>((lower, Bound::Excluded(&hi)))
            .ctx("reading table expiry")?
            .take(limit)
        {
            let (k, _) = item.ctx("reading table expiry")?;
            out.push(split_due_key(k.value()));
        }
        Ok(out)
    }

    /// The expiry day of a doc, if it has one.
    pub fn expiry_of(&self, doc: &DocId) -> Result<Option<i32>> {
        let r = self.read()?;
        let t = r.open_table(DOC_META).ctx("opening table doc_meta")?;
        let v = t.get(doc).ctx("reading table doc_meta")?;
        match v {
            Some(g) => Ok(DocMeta::decode(doc, g.value())?.expiry_day),
            None => Ok(None),
        }
    }

    /// A wrapped key and its owner: `(owner, wrapped bytes)`.
    pub fn key(&self, id: &KeyId) -> Result<Option<(IndexKey, Vec<u8>)>> {
        // The shared snapshot: a peer's sync asks once per record it is sent (a read
        // transaction of its own, begun while the writer commits, waits on redb's locks).
        let hot = self.hot()?;
        let v = hot.keys()?.get(id).ctx("reading table keys")?;
        v.map(|g| split_key_value(id, g.value())).transpose()
    }

    /// Which of `ids` are stored, in one read transaction (no key is read out or unwrapped).
    pub fn keys_present(&self, ids: &[KeyId]) -> Result<Vec<bool>> {
        let r = self.read()?;
        let t = r.open_table(KEYS).ctx("opening table keys")?;
        ids.iter()
            .map(|id| Ok(t.get(id).ctx("reading table keys")?.is_some()))
            .collect()
    }

    /// Ids of every key stored under `owner`.
    ///
    /// Key owners share the `index` table with index entries (format 5, `layout.rs`), so an owner
    /// must never equal an index key: the caller derives the two in different hash domains.
    pub fn keys_of(&self, owner: &IndexKey) -> Result<Vec<KeyId>> {
        debug_assert_eq!(
            key_owner_key(owner, &[7; 16]),
            index_entry(owner, &[7; 16]),
            "a key owner's entry has an index entry's shape"
        );
        // The shared snapshot, as for `docs_by_key`, not a read transaction of its own with two
        // tables opened: an import asks once per new subject (`keys_of` was 2.5 % of an
        // import's authoring samples, twenty-third session).
        self.under(owner)
    }

    /// The 16-byte suffixes under `key` in the shared snapshot, if the key filter lets any be.
    fn under(&self, key: &IndexKey) -> Result<Vec<[u8; 16]>> {
        if !self.may_hold(key) {
            return Ok(Vec::new());
        }
        self.hot()?.under(key, &self.inner.shared)
    }

    /// Whether anything may be stored under `key` (`key_filter.rs`); `false` is certain for
    /// every snapshot that could be taken from now on, since the filter only grows and a commit
    /// adds its keys before it commits. Asked before taking a snapshot, because taking one
    /// while the writer commits waits for redb's commit to let go of its locks: in an import
    /// those waits were where the authoring threads blocked most (twenty-eighth session). Takes
    /// no lock: the filter is shared with the index journal, not kept under its lock.
    fn may_hold(&self, key: &IndexKey) -> bool {
        let shared = &self.inner.shared;
        // Checked again under the journal's lock, not with `may`: a commit published between
        // the two would be in the journal and not in `may`, rightly (it was not yet there).
        debug_assert!(
            {
                let journal = lock_read(&shared.index_journal);
                index_journal::may_hold(&shared.key_filter, key)
                    || journal.candidates(key).is_empty()
            },
            "the key filter lost a journalled key"
        );
        index_journal::may_hold(&shared.key_filter, key)
    }

    /// Rewrites the file so that it holds only live pages and shrinks it (redb `compact`).
    /// Waits for the commit in progress and blocks reads while it runs. Returns `Ok(false)` when
    /// there was nothing to do, and an error when a read transaction (a snapshot, an export) is
    /// still open: try again later. Freed pages are not zeroed by this either: what must not
    /// survive has to be unreadable (encrypted under a destroyed key) before it is deleted.
    pub fn compact(&self) -> Result<bool> {
        let mut db = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        // Under the write lock, so no reader begins a read until compaction ends; and no shared
        // snapshot may stay open, as redb refuses to compact with a read transaction open.
        let shared = &self.inner.shared;
        shared.stop_sharing();
        // No snapshot may stay open: the last commits' are published first, then dropped.
        shared.retire_view();
        let compacted = db.compact();
        // Its commits are durable before anyone reads what they wrote.
        let published = shared.publish_settled(&db);
        shared.resume_sharing();
        published?;
        compacted.map_err(|e| StorageError::Database {
            context: "compacting",
            source: e.into(),
        })
    }

    /// The stored envelope with this change hash.
    pub fn envelope(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self
            .envelopes(std::slice::from_ref(hash))?
            .pop()
            .flatten()
            .map(|(_, bytes)| bytes))
    }

    pub fn has_envelope(&self, hash: &Hash) -> Result<bool> {
        Ok(self.has_envelopes(std::slice::from_ref(hash))?[0])
    }

    /// [`Store::envelope`] for many hashes in one read transaction (a peer's Want of up to 1,024:
    /// a transaction per envelope cost more than reading it), each with the doc it belongs to.
    pub fn envelopes(&self, hashes: &[Hash]) -> Result<Vec<Option<DocEnvelope>>> {
        let r = self.read()?;
        let places = self.places(&r, hashes)?;
        let changes = r.open_table(CHANGES).ctx("opening table changes")?;
        hashes
            .iter()
            .zip(places)
            .map(|(h, place)| {
                let Some(place) = place else {
                    return Ok(None);
                };
                let Some(v) = changes.get(&place.key).ctx("reading table changes")? else {
                    return match place.from_journal {
                        // Not yet (or no longer) in this snapshot.
                        true => Ok(None),
                        false => Err(StorageError::Corrupt(format!(
                            "change {} is indexed but not stored",
                            hex_prefix(h)
                        ))),
                    };
                };
                let (stored, envelope) = split_change_value(&place.key, v.value())?;
                if stored != *h {
                    return Err(StorageError::Corrupt(format!(
                        "change {} is indexed at another change's place",
                        hex_prefix(h)
                    )));
                }
                Ok(Some((split_change_key(&place.key).0, envelope.to_vec())))
            })
            .collect()
    }

    /// Where `r`'s snapshot may hold each of `hashes`: the journal's place (checked by the
    /// caller in `changes`, as the journal may be ahead of the snapshot) or `envelope_at`'s.
    fn places(&self, r: &ReadTransaction, hashes: &[Hash]) -> Result<Vec<Option<Located>>> {
        // Copied out first: the lock is not held across the table reads.
        let journalled = lock_read(&self.inner.shared.journal).places(hashes);
        let at = r.open_table(ENVELOPE_AT).ctx("opening table envelope_at")?;
        let mid = r
            .open_table(ENVELOPE_MID)
            .ctx("opening table envelope_mid")?;
        let indexed = |h: &Hash| -> Result<Option<Located>> {
            let v = match mid.get(h).ctx("reading table envelope_mid")? {
                Some(v) => Some(v),
                None => at.get(h).ctx("reading table envelope_at")?,
            };
            Ok(v.map(|v| Located {
                key: *v.value(),
                from_journal: false,
            }))
        };
        hashes
            .iter()
            .zip(journalled)
            .map(|(h, j)| match j {
                Some(key) => Ok(Some(Located {
                    key,
                    from_journal: true,
                })),
                None => indexed(h),
            })
            .collect()
    }

    /// [`Store::has_envelope`] for many hashes in one read transaction (an ingest batch's: a
    /// transaction and a table open per envelope cost more than the lookups).
    pub fn has_envelopes(&self, hashes: &[Hash]) -> Result<Vec<bool>> {
        let r = self.read()?;
        let places = self.places(&r, hashes)?;
        let changes = r.open_table(CHANGES).ctx("opening table changes")?;
        hashes
            .iter()
            .zip(places)
            .map(|(h, place)| match place {
                None => Ok(false),
                Some(Located {
                    from_journal: false,
                    ..
                }) => Ok(true),
                // The journal may be ahead of this snapshot: held if the snapshot has it there.
                Some(Located { key, .. }) => {
                    match changes.get(&key).ctx("reading table changes")? {
                        Some(v) if split_change_value(&key, v.value())?.0 == *h => Ok(true),
                        Some(_) => Err(StorageError::Corrupt(format!(
                            "change {} is indexed at another change's place",
                            hex_prefix(h)
                        ))),
                        None => Ok(false),
                    }
                }
            })
            .collect()
    }

    /// [`Store::is_tombstoned`] for many docs in one read transaction.
    pub fn are_tombstoned(&self, docs: &[DocId]) -> Result<Vec<bool>> {
        // The shared snapshot, as `Store::key`: reconciliation asks per item.
        let hot = self.hot()?;
        let t = hot.tombstones()?;
        docs.iter()
            .map(|doc| {
                let (lo, hi) = (
                    tombstone_key(doc, &[0; 32]),
                    tombstone_key(doc, &[0xff; 32]),
                );
                Ok(t.range::<&[u8; 48]>(&lo..=&hi)
                    .ctx("reading table tombstones")?
                    .next()
                    .is_some())
            })
            .collect()
    }

    /// Change hashes of a doc, in the order they were stored.
    pub fn doc_change_hashes(&self, doc: &DocId) -> Result<Vec<Hash>> {
        let r = self.read()?;
        let t = r.open_table(CHANGES).ctx("opening table changes")?;
        doc_changes(&t, doc, |hash, _| hash)
    }

    /// Envelopes of a doc, in the order they were stored (one snapshot).
    pub fn doc_envelopes(&self, doc: &DocId) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .docs_envelopes(std::slice::from_ref(doc))?
            .pop()
            .expect("one list for one doc"))
    }

    /// [`Store::doc_envelopes`] of each of `docs`, from one snapshot: a batch of records an
    /// ingest or a draft loads (their histories verified together) begins one read transaction
    /// instead of one each, which while the writer commits waits on redb's locks.
    pub fn docs_envelopes(&self, docs: &[DocId]) -> Result<Vec<Vec<Vec<u8>>>> {
        let r = self.read()?;
        let changes = r.open_table(CHANGES).ctx("opening table changes")?;
        docs.iter()
            .map(|doc| doc_changes(&changes, doc, |_, envelope| envelope.to_vec()))
            .collect()
    }

    /// The record's projection: (kind, bytes). One point lookup.
    pub fn projection(&self, doc: &DocId) -> Result<Option<(u8, Vec<u8>)>> {
        let hot = self.hot()?;
        let v = hot
            .projections()?
            .get(doc)
            .ctx("reading table projections")?;
        v.map(|g| split_projection(doc, g.value())).transpose()
    }

    /// Docs indexed under `key`: one seek to the key's range and a walk over exactly its entries,
    /// plus the journalled ones (`index_journal.rs`) this snapshot holds.
    pub fn docs_by_key(&self, key: &IndexKey) -> Result<Vec<DocId>> {
        self.under(key)
    }

    /// [`Store::docs_by_key`] plus each doc's projection, from one consistent snapshot:
    /// `(doc, kind, projection bytes)`. The "may we contact this person now?" path.
    pub fn projections_by_key(&self, key: &IndexKey) -> Result<Vec<(DocId, u8, Vec<u8>)>> {
        if !self.may_hold(key) {
            return Ok(Vec::new());
        }
        let hot = self.hot()?;
        let docs = hot.under(key, &self.inner.shared)?;
        let projections = hot.projections()?;
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            let v = projections
                .get(&doc)
                .ctx("reading table projections")?
                .ok_or_else(|| {
                    StorageError::Corrupt(format!("indexed doc {} has no projection", hex16(&doc)))
                })?;
            let (kind, bytes) = split_projection(&doc, v.value())?;
            out.push((doc, kind, bytes));
        }
        Ok(out)
    }

    /// Up to `limit` docs whose due day is `< day_exclusive`, ascending by due day (then doc id).
    pub fn docs_due_before(&self, day_exclusive: i32, limit: usize) -> Result<Vec<(i32, DocId)>> {
        let r = self.read()?;
        let t = r.open_table(DUE).ctx("opening table due")?;
        let hi = due_key(day_exclusive, &[0; 16]);
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 20]>(..&hi)
            .ctx("reading table due")?
            .take(limit)
        {
            let (k, _) = item.ctx("reading table due")?;
            out.push(split_due_key(k.value()));
        }
        Ok(out)
    }

    /// Up to `limit` records of `kind` with their projections, ascending by doc id.
    pub fn projections_of_kind(&self, kind: u8, limit: usize) -> Result<Vec<(DocId, Vec<u8>)>> {
        self.projections_of_kind_after(kind, None, limit)
    }

    /// How many records of `kind` are stored, counting at most `max` (a walk of their
    /// `kinds` entries: O(count)).
    pub fn count_of_kind(&self, kind: u8, max: usize) -> Result<usize> {
        let r = self.read()?;
        let kinds = r.open_table(KINDS).ctx("opening table kinds")?;
        let lo = kind_key(kind, &[0; 16]);
        let hi = kind_key(kind, &[0xff; 16]);
        let mut n = 0;
        for item in kinds
            .range::<&[u8; 17]>(&lo..=&hi)
            .ctx("reading table kinds")?
            .take(max)
        {
            item.ctx("reading table kinds")?;
            n += 1;
        }
        Ok(n)
    }

    /// Paging form of [`Store::projections_of_kind`]: records of `kind` with doc id strictly
    /// greater than `after` (pass the last doc id of the previous page).
    pub fn projections_of_kind_after(
        &self,
        kind: u8,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<(DocId, Vec<u8>)>> {
        use std::ops::Bound;
        let r = self.read()?;
        let kinds = r.open_table(KINDS).ctx("opening table kinds")?;
        let projections = r.open_table(PROJECTIONS).ctx("opening table projections")?;
        let lo = kind_key(kind, after.unwrap_or(&[0; 16]));
        let hi = kind_key(kind, &[0xff; 16]);
        let lower = match after {
            Some(_) => Bound::Excluded(&lo),
            None => Bound::Included(&lo),
        };
        let mut out = Vec::new();
        for item in kinds
            .range::<&[u8; 17]>((lower, Bound::Included(&hi)))
            .ctx("reading table kinds")?
            .take(limit)
        {
            let (k, _) = item.ctx("reading table kinds")?;
            let doc = doc_suffix(k.value());
            let v = projections
                .get(&doc)
                .ctx("reading table projections")?
                .ok_or_else(|| {
                    StorageError::Corrupt(format!("listed doc {} has no projection", hex16(&doc)))
                })?;
            let (stored_kind, bytes) = split_projection(&doc, v.value())?;
            debug_assert_eq!(stored_kind, kind, "kinds table disagrees with projection");
            out.push((doc, bytes));
        }
        Ok(out)
    }

    /// Up to `limit` stored change hashes greater than `after`, ascending (for walking the whole
    /// envelope set, e.g. to build a reconciliation set, without loading it all at once).
    pub fn envelope_hashes_after(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<Hash>> {
        use std::ops::Bound;
        // The snapshot first, then the journal: an entry published after the snapshot began is
        // checked against it below; one published before is in the copy.
        let r = self.read()?;
        let changes = r.open_table(CHANGES).ctx("opening table changes")?;
        let levels = [
            (
                r.open_table(ENVELOPE_AT).ctx("opening table envelope_at")?,
                "reading table envelope_at",
            ),
            (
                r.open_table(ENVELOPE_MID)
                    .ctx("opening table envelope_mid")?,
                "reading table envelope_mid",
            ),
        ];
        let mut cursor = after.copied();
        loop {
            let journalled = lock_read(&self.inner.shared.journal).after(cursor.as_ref(), limit);
            // The last hash a source was read to, if it had more: past it, that source was not
            // read, so nothing past it may be returned.
            let mut read_to = (journalled.len() == limit)
                .then(|| journalled.last().map(|(h, _)| *h))
                .flatten();
            // The journal's entries that this snapshot holds (it may be ahead of the snapshot).
            let mut held = Vec::with_capacity(journalled.len());
            for (h, key) in journalled {
                if let Some(v) = changes.get(&key).ctx("reading table changes")? {
                    if split_change_value(&key, v.value())?.0 == h {
                        held.push((h, ()));
                    }
                }
            }
            let lower = cursor.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            for (level, context) in &levels {
                let mut indexed = Vec::new();
                for item in level
                    .range::<&Hash>((lower, Bound::Unbounded))
                    .ctx(context)?
                    .take(limit)
                {
                    let (k, _) = item.ctx(context)?;
                    indexed.push((*k.value(), ()));
                }
                if indexed.len() == limit {
                    let to = indexed.last().map(|(h, ())| *h);
                    read_to = match (read_to, to) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                held = journal::merge_sorted(indexed.into_iter(), held.into_iter(), usize::MAX);
            }
            let out: Vec<Hash> = held
                .into_iter()
                .map(|(h, ())| h)
                .filter(|h| read_to.is_none_or(|to| *h <= to))
                .take(limit)
                .collect();
            match read_to {
                // Every journal entry up to `to` was missing from the snapshot, and the levels
                // have nothing before it: read on from there.
                Some(to) if out.is_empty() => cursor = Some(to),
                _ => return Ok(out),
            }
        }
    }

    /// A meta value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let r = self.read()?;
        let t = r.open_table(META).ctx("opening table meta")?;
        let v = t.get(key).ctx("reading table meta")?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// Up to `limit` meta entries whose key starts with `prefix`, ascending by key.
    pub fn meta_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let r = self.read()?;
        let t = r.open_table(META).ctx("opening table meta")?;
        let mut out = Vec::new();
        for item in t.range::<&str>(prefix..).ctx("reading table meta")? {
            let (k, v) = item.ctx("reading table meta")?;
            if !k.value().starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Counters. O(1): record and envelope counts are maintained in the write transactions.
    pub fn stats(&self) -> Result<Stats> {
        let r = self.read()?;
        let t = r.open_table(SYS).ctx("opening table sys")?;
        let get = |k: &str| -> Result<u64> {
            Ok(t.get(k).ctx("reading table sys")?.map_or(0, |g| g.value()))
        };
        let s = &self.inner.shared;
        Ok(Stats {
            records: get(SYS_RECORDS)?,
            envelopes: get(SYS_ENVELOPES)?,
            tombstones: get(SYS_TOMBSTONES)?,
            dropped_after_tombstone: get(SYS_DROPPED)?,
            commits_durable: s.commits_durable.load(Ordering::Relaxed),
            batches_committed: s.batches_committed.load(Ordering::Relaxed),
            commits_failed: s.commits_failed.load(Ordering::Relaxed),
            last_commit_seq: s.last_commit_seq.load(Ordering::Acquire),
        })
    }

    /// Why the store can write nothing more until it is opened again, if it cannot: the file
    /// could not be written or synced (`syncer.rs`), or a commit failed on an I/O error (redb
    /// then refuses every write: "previous I/O error"). Reads go on. A daemon reports it and
    /// stops pinging its watchdog, so systemd restarts it: after a full disk had space again,
    /// every write still failed until a restart, and nothing said so (found by an exploratory
    /// session).
    pub fn write_failure(&self) -> Option<String> {
        let shared = &self.inner.shared;
        if let Some(f) = shared.syncer.as_ref().and_then(|s| s.failure()) {
            return Some(f.to_string());
        }
        shared
            .io_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What the store holds for replication, in O(1) (`sys`'s counters and [`layout::HashSum`]s,
    /// kept in the write transactions), from one snapshot.
    pub fn held_sets(&self) -> Result<HeldSets> {
        let r = self.read()?;
        let t = r.open_table(SYS).ctx("opening table sys")?;
        let count = |k: &str| -> Result<u64> {
            t.get(k)
                .ctx("reading table sys")?
                .map(|g| g.value())
                .ok_or_else(|| StorageError::Corrupt(format!("sys counter {k:?} is missing")))
        };
        Ok(HeldSets {
            envelopes: count(SYS_ENVELOPES)?,
            envelope_sum: writer::read_sum(&t, SYS_ENVELOPE_SUM)?.to_bytes(),
            tombstones: count(SYS_TOMBSTONES)?,
            tombstone_sum: writer::read_sum(&t, SYS_TOMBSTONE_SUM)?.to_bytes(),
        })
    }

    /// The shape of every table, from one snapshot: entries, B-tree height and pages, bytes.
    ///
    /// For sizing and for explaining what a commit writes (each table a commit touches costs it
    /// about its height in pages: `examples/table_shapes.rs`), not for serving: redb walks every
    /// page of every table for it.
    pub fn table_shapes(&self) -> Result<Vec<TableShape>> {
        use redb::{ReadableTableMetadata, TableHandle};
        let r = self.read()?;
        let mut out = Vec::new();
        macro_rules! shape {
            ($($def:expr),* $(,)?) => {$({
                let t = r.open_table($def).ctx("opening a table")?;
                let s = t.stats().ctx("reading table stats")?;
                out.push(TableShape {
                    name: $def.name(),
                    entries: t.len().ctx("reading a table")?,
                    height: s.tree_height(),
                    leaf_pages: s.leaf_pages(),
                    branch_pages: s.branch_pages(),
                    stored_bytes: s.stored_bytes(),
                    fragmented_bytes: s.fragmented_bytes(),
                });
            })*};
        }
        shape!(
            CHANGES,
            ENVELOPE_AT,
            ENVELOPE_MID,
            ENVELOPE_NEW,
            PROJECTIONS,
            DOC_META,
            INDEX,
            INDEX_MID,
            INDEX_NEW,
            DUE,
            KINDS,
            META,
            SYS,
            LOG,
            LOG_SIZES,
            CHECKPOINTS,
            TOMBSTONES,
            EXPIRY,
            KEYS,
        );
        // A table the file holds and this list misses would go unreported.
        debug_assert_eq!(
            out.len(),
            r.list_tables().map_or(0, |t| t.count()),
            "every table of format {FORMAT_VERSION} is listed"
        );
        Ok(out)
    }

    /// A consistent read-only view of the whole store, for walks that must not see later writes
    /// halfway through (an audit export). Holds one redb read transaction until dropped.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot { txn: self.read()? })
    }

    /// Number of leaves in `log`.
    pub fn log_size(&self, log: &LogId) -> Result<u64> {
        self.snapshot()?.log_size(log)
    }

    /// The latest checkpoint stored under `key`.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.snapshot()?.checkpoint(key)
    }

    /// Every key and value byte of the tables of one [`TableClass`], per table, from one snapshot.
    ///
    /// For checking *where* data lives (tests, audits of the erasure promise), not for serving: it
    /// reads whole tables into memory.
    pub fn dump_tables(&self, class: TableClass) -> Result<Vec<(&'static str, Vec<u8>)>> {
        use redb::ReadableTable;
        let r = self.read()?;
        let mut out = Vec::new();
        macro_rules! dump {
            ($def:expr, $name:literal, |$k:ident, $v:ident, $buf:ident| $body:block) => {{
                let t = r.open_table($def).ctx(concat!("opening table ", $name))?;
                let mut $buf = Vec::new();
                for item in t.iter().ctx(concat!("reading table ", $name))? {
                    let ($k, $v) = item.ctx(concat!("reading table ", $name))?;
                    $body
                }
                out.push(($name, $buf));
            }};
        }
        match class {
            TableClass::IndexOnly => {
                dump!(ENVELOPE_AT, "envelope_at", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(ENVELOPE_MID, "envelope_mid", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(ENVELOPE_NEW, "envelope_new", |k, v, b| {
                    b.extend_from_slice(&k.value().to_be_bytes());
                    b.extend_from_slice(v.value());
                });
                dump!(DOC_META, "doc_meta", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(INDEX, "index", |k, _v, b| {
                    b.extend_from_slice(k.value())
                });
                dump!(INDEX_MID, "index_mid", |k, _v, b| {
                    b.extend_from_slice(k.value())
                });
                dump!(INDEX_NEW, "index_new", |k, v, b| {
                    b.extend_from_slice(&k.value().to_be_bytes());
                    b.extend_from_slice(v.value());
                });
                dump!(DUE, "due", |k, _v, b| { b.extend_from_slice(k.value()) });
                dump!(EXPIRY, "expiry", |k, _v, b| {
                    b.extend_from_slice(k.value())
                });
                dump!(KINDS, "kinds", |k, _v, b| {
                    b.extend_from_slice(k.value())
                });
                dump!(SYS, "sys", |k, v, b| {
                    b.extend_from_slice(k.value().as_bytes());
                    b.extend_from_slice(&v.value().to_le_bytes());
                });
            }
            TableClass::Payload => {
                dump!(CHANGES, "changes", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(PROJECTIONS, "projections", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(KEYS, "keys", |k, v, b| {
                    b.extend_from_slice(k.value());
                    b.extend_from_slice(v.value());
                });
                dump!(META, "meta", |k, v, b| {
                    b.extend_from_slice(k.value().as_bytes());
                    b.extend_from_slice(v.value());
                });
            }
        }
        Ok(out)
    }

    /// Stops accepting writes, commits and answers everything already accepted, and stops the
    /// writer thread. Idempotent; also runs when the last handle is dropped. Blocks until the
    /// writer has drained. Reads keep working until the last handle is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

fn split_key_value(id: &KeyId, v: &[u8]) -> Result<(IndexKey, Vec<u8>)> {
    if v.len() < 32 {
        return Err(StorageError::Corrupt(format!(
            "key {} is shorter than its owner",
            hex16(id)
        )));
    }
    Ok((v[..32].try_into().expect("32 bytes"), v[32..].to_vec()))
}

/// `(doc, position in the doc's change list, change hash, envelope bytes)`.
/// An envelope with the doc it belongs to: `(doc, envelope bytes)`.
pub type DocEnvelope = (DocId, Vec<u8>);

pub type StoredChange = (DocId, u32, Hash, Vec<u8>);

/// The envelopes and tombstones a store holds, summarised ([`Store::held_sets`]): each set's size
/// and the sum modulo 2^256 of its members' hashes read as little-endian integers (32 bytes,
/// little-endian). Two stores that hold the same envelopes and tombstones have equal `HeldSets`,
/// whatever order they stored them in; see [`layout::HashSum`] for what the sums do not promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSets {
    pub envelopes: u64,
    pub envelope_sum: [u8; 32],
    pub tombstones: u64,
    pub tombstone_sum: [u8; 32],
}

/// One consistent view of the store (see [`Store::snapshot`]). Paging reads: each call returns at
/// most `limit` rows after a cursor, so callers walk any table in bounded memory.
pub struct Snapshot {
    txn: Arc<ReadTransaction>,
}

impl Snapshot {
    pub fn log_size(&self, log: &LogId) -> Result<u64> {
        let t = self
            .txn
            .open_table(LOG_SIZES)
            .ctx("opening table log_sizes")?;
        Ok(t.get(log)
            .ctx("reading table log_sizes")?
            .map_or(0, |g| g.value()))
    }

    /// Up to `limit` leaves of `log` from index `from`, in order.
    pub fn log_leaves(&self, log: &LogId, from: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let t = self.txn.open_table(LOG).ctx("opening table log")?;
        let (lo, hi) = (log_key(log, from), log_key(log, u64::MAX));
        let mut out = Vec::new();
        for (i, item) in t
            .range::<&[u8; 24]>(&lo..=&hi)
            .ctx("reading table log")?
            .take(limit)
            .enumerate()
        {
            let (k, v) = item.ctx("reading table log")?;
            let index = u64::from_be_bytes(k.value()[16..].try_into().expect("8 bytes"));
            if index != from + i as u64 {
                return Err(StorageError::Corrupt(format!(
                    "log has a gap: leaf {index} follows leaf {}",
                    from + i as u64
                )));
            }
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    pub fn checkpoint(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let t = self
            .txn
            .open_table(CHECKPOINTS)
            .ctx("opening table checkpoints")?;
        let v = t.get(key).ctx("reading table checkpoints")?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    /// Every stored checkpoint, by key (bounded by the number of offices).
    pub fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>> {
        use redb::ReadableTable;
        let t = self
            .txn
            .open_table(CHECKPOINTS)
            .ctx("opening table checkpoints")?;
        let mut out = Vec::new();
        for item in t.iter().ctx("reading table checkpoints")? {
            let (k, v) = item.ctx("reading table checkpoints")?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Up to `limit` projections of docs after `after`, ascending by doc: `(doc, kind, bytes)`.
    /// For reading every record once (building replication's sets at start-up).
    pub fn projections_after(
        &self,
        after: Option<&DocId>,
        limit: usize,
    ) -> Result<Vec<(DocId, u8, Vec<u8>)>> {
        use std::ops::Bound;
        let t = self
            .txn
            .open_table(PROJECTIONS)
            .ctx("opening table projections")?;
        let lower = match after {
            Some(d) => Bound::Excluded(d),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 16]>((lower, Bound::Unbounded))
            .ctx("reading table projections")?
            .take(limit)
        {
            let (k, v) = item.ctx("reading table projections")?;
            let doc = *k.value();
            let (kind, bytes) = split_projection(&doc, v.value())?;
            out.push((doc, kind, bytes));
        }
        Ok(out)
    }

    /// Up to `limit` tombstones after the cursor `(doc, hash)`, ascending.
    pub fn tombstones_after(
        &self,
        after: Option<&(DocId, Hash)>,
        limit: usize,
    ) -> Result<Vec<(DocId, Hash, Vec<u8>)>> {
        use std::ops::Bound;
        let t = self
            .txn
            .open_table(TOMBSTONES)
            .ctx("opening table tombstones")?;
        let key = after.map(|(d, h)| tombstone_key(d, h));
        let lower = match &key {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 48]>((lower, Bound::Unbounded))
            .ctx("reading table tombstones")?
            .take(limit)
        {
            let (k, v) = item.ctx("reading table tombstones")?;
            let k = k.value();
            out.push((
                k[..16].try_into().expect("16 bytes"),
                k[16..].try_into().expect("32 bytes"),
                v.value().to_vec(),
            ));
        }
        Ok(out)
    }

    /// Up to `limit` stored envelopes after the cursor `(doc, position)`, grouped by doc and in
    /// each doc's stored order: `(doc, position, change hash, envelope bytes)`.
    pub fn changes_after(
        &self,
        after: Option<(DocId, u32)>,
        limit: usize,
    ) -> Result<Vec<StoredChange>> {
        use std::ops::Bound;
        let changes = self.txn.open_table(CHANGES).ctx("opening table changes")?;
        let key = after.map(|(d, p)| change_key(&d, p));
        let lower = match &key {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in changes
            .range::<&[u8; 20]>((lower, Bound::Unbounded))
            .ctx("reading table changes")?
            .take(limit)
        {
            let (k, v) = item.ctx("reading table changes")?;
            let (doc, pos) = split_change_key(k.value());
            let (hash, envelope) = split_change_value(k.value(), v.value())?;
            out.push((doc, pos, hash, envelope.to_vec()));
        }
        Ok(out)
    }

    /// Up to `limit` stored keys after the cursor `after`, ascending by key id:
    /// `(key id, owner, wrapped bytes)`. For re-wrapping every key under a new wrapping key.
    pub fn keys_after(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyId, IndexKey, Vec<u8>)>> {
        use std::ops::Bound;
        let t = self.txn.open_table(KEYS).ctx("opening table keys")?;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 16]>((lower, Bound::Unbounded))
            .ctx("reading table keys")?
            .take(limit)
        {
            let (k, v) = item.ctx("reading table keys")?;
            let (owner, wrapped) = split_key_value(k.value(), v.value())?;
            out.push((*k.value(), owner, wrapped));
        }
        Ok(out)
    }

    /// Number of stored envelopes (O(1)).
    pub fn envelope_count(&self) -> Result<u64> {
        let t = self.txn.open_table(SYS).ctx("opening table sys")?;
        Ok(t.get(SYS_ENVELOPES)
            .ctx("reading table sys")?
            .map_or(0, |g| g.value()))
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync + 'static>() {}
    is::<Store>();
    is::<StorageError>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(doc: u8) -> WriteBatch {
        WriteBatch {
            updates: vec![RecordUpdate {
                doc_id: [doc; 16],
                kind: 1,
                envelopes: vec![([doc; 32], vec![doc])],
                projection: vec![doc],
                index_keys: vec![[doc; 32]],
                due_day: None,
            }],
            ..WriteBatch::default()
        }
    }

    /// Waits until redb has handed the syncer generation `gen`: a commit made in memory, with
    /// the syncer held.
    fn wait_submitted(syncer: &syncer::Syncer, gen: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while syncer.submitted() < gen {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never committed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A commit is answered, and readers see it, only once the syncer made it durable: held,
    /// the syncer keeps back both the answer and the snapshot readers use; released, both come.
    #[test]
    fn a_commit_is_answered_and_seen_only_once_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.commit_blocking(grant(1)).unwrap();
        let syncer = Arc::clone(store.inner.shared.syncer.as_ref().unwrap());
        let before = syncer.submitted();
        syncer.pause(true);
        // Released however the test ends: the store's shutdown waits for the syncer.
        struct Release(Arc<syncer::Syncer>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.pause(false);
            }
        }
        let _release = Release(Arc::clone(&syncer));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || tx.send(store.commit_blocking(grant(2))).unwrap())
        };
        wait_submitted(&syncer, before + 1);
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .is_err(),
            "answered before it was durable"
        );
        assert_eq!(
            store.projection(&[2; 16]).unwrap(),
            None,
            "seen before durable"
        );
        assert!(
            store.docs_by_key(&[2; 32]).unwrap().is_empty(),
            "indexed before durable"
        );
        assert!(store.projection(&[1; 16]).unwrap().is_some());
        syncer.pause(false);
        rx.recv().unwrap().unwrap();
        assert!(
            store.projection(&[2; 16]).unwrap().is_some(),
            "answered, not seen"
        );
        assert_eq!(store.docs_by_key(&[2; 32]).unwrap(), vec![[2; 16]]);
        writer.join().unwrap();
    }

    /// A failed sync fails the commits it carried and every one after, and the store goes on
    /// serving what was durable; reopened, the file holds that, and nothing written after.
    #[test]
    fn a_failed_sync_fails_its_commits_and_the_store_keeps_what_was_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        store.commit_blocking(grant(1)).unwrap();
        let syncer = Arc::clone(store.inner.shared.syncer.as_ref().unwrap());
        syncer.fail_next_sync();
        let failed = store.commit_blocking(grant(2));
        assert!(
            matches!(failed, Err(StorageError::NotDurable(_))),
            "{failed:?}"
        );
        let after = store.commit_blocking(grant(3));
        assert!(
            matches!(after, Err(StorageError::NotDurable(_))),
            "a commit after the failure: {after:?}"
        );
        assert!(
            store.projection(&[1; 16]).unwrap().is_some(),
            "the durable state is gone"
        );
        assert_eq!(
            store.projection(&[2; 16]).unwrap(),
            None,
            "a failed commit is seen"
        );
        assert_eq!(store.stats().unwrap().commits_failed, 2);
        let why = store
            .write_failure()
            .expect("the store says it cannot write");
        assert!(why.contains("injected write failure"), "{why}");
        drop(syncer);
        store.shutdown();
        drop(store);
        // The failed commit's pages may have reached the file (written straight through while
        // nothing else waited): unanswered, it may land or not. Nothing after it was written.
        let store = Store::open(&path).unwrap();
        assert!(store.projection(&[1; 16]).unwrap().is_some());
        assert_eq!(store.projection(&[3; 16]).unwrap(), None);
        assert_eq!(store.write_failure(), None, "reopened, it writes again");
    }

    /// A commit whose write fails inside redb (a full disk as redb meets it) fails, and redb
    /// then refuses every later write ("previous I/O error") though the syncer is healthy:
    /// `write_failure` says so, so the daemon reports it and stops its watchdog pings, while
    /// reads go on. Reopened, the store writes again.
    #[test]
    fn a_commit_that_fails_on_an_io_error_leaves_the_store_saying_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        store.commit_blocking(grant(1)).unwrap();
        assert_eq!(store.write_failure(), None);
        let syncer = Arc::clone(store.inner.shared.syncer.as_ref().unwrap());
        syncer.fail_next_write();
        let failed = store.commit_blocking(grant(2));
        assert!(
            matches!(failed, Err(StorageError::CommitFailed(_))),
            "{failed:?}"
        );
        assert!(syncer.failure().is_none(), "the syncer itself is healthy");
        let why = store
            .write_failure()
            .expect("a failed commit's I/O error leaves the store unable to write");
        assert!(why.contains("No space left"), "{why}");
        let after = store.commit_blocking(grant(3));
        assert!(after.is_err(), "redb refuses writes after an I/O error");
        assert!(store.projection(&[1; 16]).unwrap().is_some(), "reads go on");
        assert_eq!(store.projection(&[2; 16]).unwrap(), None);
        drop(syncer);
        store.shutdown();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.write_failure(), None, "reopened, it writes again");
        store.commit_blocking(grant(3)).unwrap();
        assert!(store.projection(&[1; 16]).unwrap().is_some());
        assert!(store.projection(&[3; 16]).unwrap().is_some());
    }

    /// The journal may name changes a snapshot does not hold (published before their commit, or
    /// purged since). A page of `envelope_hashes_after` skips them, and a page whose journal
    /// entries were all such still ends where that source was read to, so no held hash past
    /// them is skipped and the walk does not end early.
    #[test]
    fn a_walk_over_the_hashes_skips_journal_entries_the_snapshot_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let held: Vec<Hash> = (1..=10u8).map(|i| [i; 32]).collect();
        let updates = held
            .iter()
            .map(|h| RecordUpdate {
                doc_id: [h[0]; 16],
                kind: 1,
                envelopes: vec![(*h, vec![h[0]])],
                projection: vec![1],
                ..RecordUpdate::default()
            })
            .collect();
        store
            .commit_blocking(WriteBatch {
                updates,
                ..WriteBatch::default()
            })
            .unwrap();
        // Five entries before every held hash, at places no snapshot holds.
        let lacking: Vec<(Hash, journal::Place)> = (0..5u8)
            .map(|i| {
                let mut h = [0u8; 32];
                h[1] = i;
                (h, [0xee; 20])
            })
            .collect();
        store
            .inner
            .shared
            .journal
            .write()
            .unwrap()
            .insert_for_test(&lacking);

        for limit in [1, 3, 5, 100] {
            let mut walked: Vec<Hash> = Vec::new();
            loop {
                let page = store.envelope_hashes_after(walked.last(), limit).unwrap();
                assert!(page.len() <= limit);
                if page.is_empty() {
                    break;
                }
                walked.extend(page);
            }
            assert_eq!(walked, held, "limit {limit}");
        }
        assert_eq!(
            store.has_envelopes(&[lacking[0].0, held[0]]).unwrap(),
            [false, true]
        );
        assert_eq!(store.envelopes(&[lacking[1].0]).unwrap(), [None]);
    }

    /// A reader counts a journalled index entry only where its own snapshot holds it: an entry
    /// removed (or moved by a merge) after the snapshot began is still listed by that snapshot,
    /// one added after it is not, and a slot in memory that names another key's entry (buckets
    /// may be shared) or nothing is ignored.
    #[test]
    fn index_reads_through_the_journal_are_exact_for_their_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let (key, other) = ([5u8; 32], [6u8; 32]);
        let update = |d: u8, keys: Vec<IndexKey>| RecordUpdate {
            doc_id: [d; 16],
            kind: 1,
            envelopes: vec![([d; 32], vec![d])],
            projection: vec![d],
            index_keys: keys,
            ..RecordUpdate::default()
        };
        let commit = |updates: Vec<RecordUpdate>, purges: Vec<DocId>| {
            store
                .commit_purge_blocking(
                    purges,
                    WriteBatch {
                        updates,
                        ..WriteBatch::default()
                    },
                )
                .unwrap();
        };
        commit(vec![update(1, vec![key]), update(2, vec![other])], vec![]);
        let before = store.hot().unwrap();
        let shared = &store.inner.shared;
        let journal = &shared.index_journal;
        // Slots in `key`'s bucket naming `other`'s entry (sequence 1) and nothing (99).
        journal.write().unwrap().add_slot_for_test(&key, 1);
        journal.write().unwrap().add_slot_for_test(&key, 99);
        let mut candidates = journal.read().unwrap().candidates(&key);
        candidates.sort_unstable();
        assert_eq!(candidates, [0, 1, 99]);
        assert_eq!(before.under(&key, shared).unwrap(), [[1; 16]]);
        assert_eq!(before.under(&other, shared).unwrap(), [[2; 16]]);

        // Doc 1 purged, doc 3 added, doc 2 moved to `key`: the old snapshot does not see it.
        let mut moved = update(2, vec![key]);
        moved.envelopes = vec![([22; 32], vec![22])];
        commit(vec![update(3, vec![key]), moved], vec![[1; 16]]);
        assert_eq!(before.under(&key, shared).unwrap(), [[1; 16]]);
        assert_eq!(before.under(&other, shared).unwrap(), [[2; 16]]);
        assert_eq!(store.docs_by_key(&key).unwrap(), [[2; 16], [3; 16]]);
        assert!(store.docs_by_key(&other).unwrap().is_empty());

        // Merged into `index`: the new snapshot finds them there, the old one in its journal.
        let entries = lock_read(&store.inner.shared.journal).to_merge();
        // As the writer merges: the snapshot stays shared through the merge, then is replaced.
        let current = store.hot().unwrap();
        {
            let db = store.inner.db.read().unwrap();
            assert_eq!(
                writer::merge_journals(&db, Some(&entries), true, journal::DRAIN_STEP)
                    .unwrap()
                    .index_entries,
                2
            );
        }
        assert!(
            Arc::ptr_eq(&current, &store.hot().unwrap()),
            "shared during it"
        );
        writer::merged(shared, true, true);
        store.publish_now();
        let after = store.hot().unwrap();
        assert!(!Arc::ptr_eq(&current, &after), "replaced after it");
        assert_eq!(current.under(&key, shared).unwrap(), [[2; 16], [3; 16]]);
        assert_eq!(after.under(&key, shared).unwrap(), [[2; 16], [3; 16]]);
        assert_eq!(before.under(&key, shared).unwrap(), [[1; 16]]);
        let projections = store.projections_by_key(&key).unwrap();
        assert_eq!(projections, [([2; 16], 1, vec![2]), ([3; 16], 1, vec![3])]);
        assert_eq!(
            store
                .dump_tables(TableClass::IndexOnly)
                .unwrap()
                .iter()
                .find(|(n, _)| *n == "index_new")
                .unwrap()
                .1
                .len(),
            0,
            "the merge emptied index_new"
        );
    }

    /// Once the base tables are large, a merge goes into the middle level (`envelope_mid`,
    /// `index_mid`): lookups by hash, the walk over hashes and index reads find its entries, a
    /// purge takes them out of it, and the merge that would make it a quarter of the base takes
    /// it down into the base, while a snapshot from before still reads it where it was.
    #[test]
    fn entries_in_the_middle_level_are_found_purged_and_merged_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let shared = &store.inner.shared;
        // A base of 400 entries in each of `envelope_at` and `index`, as earlier merges leave.
        let base: Vec<Hash> = (0..400u32)
            .map(|i| {
                let mut h = [0x80u8; 32];
                h[1..5].copy_from_slice(&i.to_be_bytes());
                h
            })
            .collect();
        {
            let db = store.inner.db.read().unwrap();
            let txn = db.begin_write().unwrap();
            let mut at = txn.open_table(ENVELOPE_AT).unwrap();
            let mut index = txn.open_table(INDEX).unwrap();
            for h in &base {
                at.insert(h, &[0xee; 20]).unwrap();
                index.insert(&index_entry(h, &[0xee; 16]), ()).unwrap();
            }
            drop((at, index));
            txn.commit().unwrap();
        }
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let record = |d: u32, key: IndexKey| {
            let mut doc = [0u8; 16];
            doc[..4].copy_from_slice(&d.to_be_bytes());
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&d.to_be_bytes());
            RecordUpdate {
                doc_id: doc,
                kind: 1,
                envelopes: vec![(hash, vec![1])],
                projection: vec![1],
                index_keys: vec![key],
                ..RecordUpdate::default()
            }
        };
        let write = |range: std::ops::Range<u32>, key: IndexKey| {
            let updates: Vec<RecordUpdate> = range.map(|d| record(d, key)).collect();
            let hashes: Vec<Hash> = updates.iter().map(|u| u.envelopes[0].0).collect();
            store
                .commit_blocking(WriteBatch {
                    updates,
                    ..WriteBatch::default()
                })
                .unwrap();
            hashes
        };
        // As the writer merges, taking at most `step` entries down at once.
        let merge = |step: usize| {
            let entries = lock_read(&shared.journal).to_merge();
            let m = {
                let db = store.inner.db.read().unwrap();
                writer::merge_journals(&db, Some(&entries), true, step).unwrap()
            };
            writer::merged(shared, true, true);
            store.publish_now();
            (m.envelopes.unwrap(), m.index.unwrap())
        };
        let drain = |step: usize| {
            let left = {
                let db = store.inner.db.read().unwrap();
                let d = writer::drain_levels(&db, true, true, step).unwrap();
                (d.envelopes_left, d.index_left)
            };
            writer::merged(shared, false, false);
            store.publish_now();
            left
        };
        use journal::Merge;
        let rows = |table: &str| {
            let dump = store.dump_tables(TableClass::IndexOnly).unwrap();
            let bytes = dump.iter().find(|(n, _)| *n == table).unwrap().1.len();
            bytes
                / if table.starts_with("envelope") {
                    52
                } else {
                    48
                }
        };
        let walk = || {
            let mut all: Vec<Hash> = Vec::new();
            loop {
                let page = store.envelope_hashes_after(all.last(), 7).unwrap();
                if page.is_empty() {
                    return all;
                }
                all.extend(page);
            }
        };

        let first = write(0..10, k1);
        assert_eq!(
            merge(usize::MAX),
            (Merge::Mid, Merge::Mid),
            "10 new against 400: the middle level"
        );
        assert_eq!((rows("envelope_mid"), rows("index_mid")), (10, 10));
        assert_eq!((rows("envelope_at"), rows("index")), (400, 400));
        assert!(store.has_envelopes(&first).unwrap().iter().all(|&h| h));
        assert_eq!(
            store.envelopes(&first[3..4]).unwrap()[0]
                .as_ref()
                .unwrap()
                .1,
            [1]
        );
        let mut expected: Vec<Hash> = base.iter().chain(&first).copied().collect();
        expected.sort_unstable();
        assert_eq!(walk(), expected);
        assert_eq!(store.docs_by_key(&k1).unwrap().len(), 10);

        // A purge takes a record's entries out of the middle level.
        store
            .commit_purge_blocking(vec![record(0, k1).doc_id], WriteBatch::default())
            .unwrap();
        assert_eq!((rows("envelope_mid"), rows("index_mid")), (9, 9));
        assert_eq!(store.has_envelopes(&first[..2]).unwrap(), [false, true]);
        assert_eq!(store.docs_by_key(&k1).unwrap().len(), 9);
        let before = store.hot().unwrap();

        // 9 + 100 entries are more than a quarter of 400: down into the base, in one go or, when
        // that is more than a step, drained in steps of 50 after the merge into the middle level.
        let second = write(100..200, k2);
        assert_eq!(merge(50), (Merge::MidThenDrain, Merge::MidThenDrain));
        assert_eq!((rows("envelope_mid"), rows("index_mid")), (109, 109));
        expected.extend(&second);
        expected.retain(|h| *h != first[0]);
        expected.sort_unstable();
        let mut lefts = Vec::new();
        loop {
            let (envelopes, index) = drain(50);
            assert_eq!(envelopes, index);
            assert_eq!(rows("envelope_mid"), envelopes.unwrap() as usize);
            assert!(store.has_envelopes(&second).unwrap().iter().all(|&h| h));
            assert!(store.has_envelopes(&first[1..]).unwrap().iter().all(|&h| h));
            assert_eq!(walk(), expected);
            assert_eq!(store.docs_by_key(&k1).unwrap().len(), 9);
            assert_eq!(store.docs_by_key(&k2).unwrap().len(), 100);
            lefts.push(envelopes.unwrap());
            if lefts.last() == Some(&0) {
                break;
            }
        }
        assert_eq!(lefts, [59, 9, 0]);
        assert_eq!((rows("envelope_at"), rows("index")), (509, 509));
        assert_eq!(
            before.under(&k1, shared).unwrap().len(),
            9,
            "a snapshot from before the merge reads its own middle level"
        );

        // And in one go when it is not more than a step.
        let third = write(300..310, k2);
        assert_eq!(merge(usize::MAX), (Merge::Mid, Merge::Mid));
        let fourth = write(400..600, k2);
        assert_eq!(merge(usize::MAX), (Merge::Down, Merge::Down));
        assert_eq!((rows("envelope_mid"), rows("index_mid")), (0, 0));
        assert_eq!((rows("envelope_at"), rows("index")), (719, 719));
        assert!(store.has_envelopes(&third).unwrap().iter().all(|&h| h));
        assert!(store.has_envelopes(&fourth).unwrap().iter().all(|&h| h));
        assert_eq!(store.docs_by_key(&k2).unwrap().len(), 310);
    }

    /// A middle level being drained keeps draining, a step at a time, once the writes stop:
    /// one commit takes a step, and the writer, finding nothing queued, takes the rest.
    #[test]
    fn a_drain_finishes_while_the_writer_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let shared = &store.inner.shared;
        // Two and a half steps' worth in `index_mid`, as a merge that went there leaves it.
        let entries = journal::DRAIN_STEP * 5 / 2;
        {
            let db = store.inner.db.read().unwrap();
            let txn = db.begin_write().unwrap();
            let mut mid = txn.open_table(INDEX_MID).unwrap();
            for i in 0..entries as u64 {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
                mid.insert(&index_entry(&key, &[7; 16]), ()).unwrap();
            }
            drop(mid);
            txn.commit().unwrap();
        }
        shared
            .draining
            .fetch_or(writer::DRAIN_INDEX, Ordering::Relaxed);
        let rows = |table: &str| {
            let dump = store.dump_tables(TableClass::IndexOnly).unwrap();
            dump.iter().find(|(n, _)| *n == table).unwrap().1.len() / 48
        };
        store
            .commit_blocking(WriteBatch {
                updates: vec![RecordUpdate {
                    doc_id: [1; 16],
                    kind: 1,
                    envelopes: vec![([1; 32], vec![1])],
                    projection: vec![1],
                    ..RecordUpdate::default()
                }],
                ..WriteBatch::default()
            })
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while rows("index_mid") > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} entries still in index_mid with the writer idle",
                rows("index_mid")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(rows("index"), entries);
        assert_eq!(
            shared.draining.load(Ordering::Relaxed),
            0,
            "drained: stopped"
        );
    }

    /// Once the writes pause for `MERGE_QUIET`, a journal holding half its merge threshold is
    /// merged without waiting for the next commit; one holding less is left alone.
    #[test]
    fn a_half_due_journal_is_merged_once_the_writes_pause() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let live = || lock_read(&store.inner.shared.journal).live_len();
        // An empty store merges at `journal::merge_at(0)`; the writer's thresholds count the
        // envelopes stored, which this test keeps far below where they start to grow.
        let half = journal::merge_at(0) / 2;
        let batch = |from: usize, n: usize| WriteBatch {
            updates: (from..from + n)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let mut doc = [0u8; 16];
                    doc.copy_from_slice(&id[..16]);
                    RecordUpdate {
                        doc_id: doc,
                        kind: 1,
                        envelopes: vec![(id, vec![1])],
                        projection: vec![1],
                        ..RecordUpdate::default()
                    }
                })
                .collect(),
            ..WriteBatch::default()
        };
        let pause = writer::MERGE_QUIET * 4;

        store.commit_blocking(batch(0, half - 1)).unwrap();
        std::thread::sleep(pause);
        assert_eq!(
            live(),
            half - 1,
            "less than half due: left for the next burst"
        );

        store.commit_blocking(batch(half - 1, 1)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while live() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} entries still journalled with the writes paused",
                live()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Merged, not lost: every envelope is found by its hash.
        for i in [0, half / 2, half - 1] {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert!(store.envelope(&id).unwrap().is_some(), "envelope {i}");
        }
    }

    /// A snapshot shared through a commit would keep that commit's freed pages out of reuse
    /// (measured: 8 % more file after an import), so none is shared while a commit runs.
    #[test]
    fn no_snapshot_is_shared_while_a_commit_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let shared = &store.inner.shared;
        let shared_now = || lock(&shared.hot).tables.is_some();

        let a = store.hot().unwrap();
        assert!(
            Arc::ptr_eq(&a, &store.hot().unwrap()),
            "shared between commits"
        );
        // The writer's own commit drops it, and nothing reads after.
        store.commit_blocking(WriteBatch::default()).unwrap();
        assert!(!shared_now(), "the writer's commit left a snapshot shared");
        assert!(
            !Arc::ptr_eq(&a, &store.hot().unwrap()),
            "a stale one was reused"
        );

        shared.stop_sharing();
        assert!(!shared_now(), "dropped as a commit starts");
        store.hot().unwrap();
        assert!(!shared_now(), "shared during a commit");
        // A compaction waiting for the writer's commit counts too.
        shared.stop_sharing();
        shared.resume_sharing();
        store.hot().unwrap();
        assert!(!shared_now(), "shared while a commit still runs");
        shared.resume_sharing();
        store.hot().unwrap();
        assert!(shared_now(), "not shared once the commits ended");
    }
}
