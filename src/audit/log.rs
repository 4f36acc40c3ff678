//! The office's own transparency log and its signed checkpoints.
//!
//! Leaves are written by `Office::write` in the same durable batch as the envelopes they cover
//! (`WriteBatch::log`), so the log can never miss an acknowledged envelope. This module only
//! *reads* the log: it keeps a Merkle [`Frontier`] of it in memory and signs checkpoints.
//!
//! Never two inconsistent checkpoints:
//! - the log table is append-only (storage has no other write to it, and purges skip it), so any
//!   two prefixes of it are consistent;
//! - a checkpoint is signed only over leaves read from a committed snapshot (durable), under one
//!   mutex, so sizes only grow and every signed tree is a prefix of the durable log;
//! - each checkpoint is persisted (durable commit) before anyone sees it; a crash before the
//!   commit loses a signature nobody saw; a crash after it leaves the checkpoint on disk, and at
//!   the next start [`AuditLog::open`] rebuilds the frontier from the log and refuses to sign
//!   anything if the log does not reproduce that checkpoint's root at its size.
//! - ed25519 is deterministic, so re-signing the same (size, root) yields the same note.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use consentd_storage::{LogId, Snapshot, StorageError, Store, WriteBatch};
use consentd_sync::merkle::Frontier;
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

/// How often the daemon signs a checkpoint when its log has grown.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// Leaves read per storage call while catching the frontier up.
pub const LEAF_PAGE: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The stored log or checkpoint is not what this office wrote: refuse to sign.
    #[error("audit log integrity: {0}")]
    Integrity(String),
}

/// A checkpoint this office signed, with its note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub checkpoint: Checkpoint,
    pub note: String,
}

pub struct AuditLog {
    office: String,
    origin: String,
    log_id: LogId,
    state: Mutex<State>,
    /// Set with `State::contradicted` (and at `open` from meta): read by every write, which
    /// it refuses ([`AuditLog::refuses_writes`]), without taking the state's lock.
    contradicted_flag: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    /// `None` until [`AuditLog::open`] rebuilt it from the store.
    frontier: Option<Frontier>,
    latest: Option<Signed>,
    /// Why this office may sign no checkpoint: a peer holds one of its own that its log does
    /// not reproduce ([`AuditLog::contradicted_by`]).
    contradicted: Option<String>,
}

/// Meta key of the evidence that a peer holds a checkpoint signed by this office that its log
/// does not reproduce (JSON: `note`, `detail`, `received_from`, `detected_at`). It lives in the
/// database, so it goes away with this data directory and nothing else.
pub const CONTRADICTED_META: &str = "own_log_contradicted/v1";

/// What `status` (`own_log_contradicted`), the signing refusal and an export say while
/// [`CONTRADICTED_META`] is set.
pub fn contradiction_message(detail: &str) -> String {
    format!(
        "this office published a checkpoint of its own log that its data directory does not hold ({detail}; restored from an older backup?): it takes no write, signs no checkpoint and exports no bundle, as each would contradict the published one; stop it and put back a copy of the data directory at least as new as that checkpoint (docs/reliability.md, \"Restoring an office\")"
    )
}

/// The storage log id of a log origin: a hash, so storage never needs to know office names.
pub fn log_id(origin: &str) -> LogId {
    let mut h = Sha256::new();
    h.update(b"consentd/log-id/v1\0");
    h.update(origin.as_bytes());
    h.finalize()[..16].try_into().expect("16 bytes")
}

impl AuditLog {
    pub fn new(network: &str, office: &str) -> AuditLog {
        let origin = tlog::origin(network, office);
        AuditLog {
            office: office.to_string(),
            log_id: log_id(&origin),
            origin,
            state: Mutex::new(State::default()),
            contradicted_flag: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn log_id(&self) -> LogId {
        self.log_id
    }

    /// The `WriteBatch::log` entry that appends `leaf` to this office's log.
    pub fn entry(&self, leaf: &LogLeaf) -> (LogId, Vec<u8>) {
        (self.log_id, leaf.encode().to_vec())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves at worst a frontier behind the log, which the
        // next catch-up repairs; never a wrong one (pushes happen one leaf at a time).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the frontier from the durable log and checks the persisted checkpoint against
    /// it. Blocking (reads the whole log once); the daemon calls it at start-up.
    pub fn open(&self, store: &Store) -> Result<Option<Signed>, AuditError> {
        let mut state = self.lock();
        self.open_locked(&mut state, &store.snapshot()?)?;
        if state.contradicted.is_none() {
            state.contradicted = persisted_contradiction(store)?;
        }
        if state.contradicted.is_some() {
            self.contradicted_flag
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(state.latest.clone())
    }

    /// Why this office takes no write that appends to its log (None when it does): its log
    /// contradicts a checkpoint it published ([`AuditLog::contradicted_by`]). Every change it
    /// made since could never be logged consistently: signed by its key, it reached the other
    /// offices, and their exports failed for good, even once a newer copy of the data directory
    /// was put back (found by an exploratory session). One atomic load while none.
    pub fn refuses_writes(&self) -> Option<String> {
        if !self
            .contradicted_flag
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        self.lock().contradicted.clone()
    }

    fn open_locked(&self, state: &mut State, snap: &Snapshot) -> Result<(), AuditError> {
        if state.frontier.is_some() {
            return Ok(());
        }
        let persisted = match snap.checkpoint(&self.office)? {
            None => None,
            Some(bytes) => Some(self.parse_own(&bytes)?),
        };
        let mut frontier = Frontier::new();
        let size = snap.log_size(&self.log_id)?;
        if let Some(p) = &persisted {
            if p.checkpoint.size > size {
                return Err(AuditError::Integrity(format!(
                    "the stored checkpoint covers {} leaves but the log holds only {size}: the database was rolled back or replaced; refusing to sign checkpoints",
                    p.checkpoint.size
                )));
            }
        }
        let check = persisted.as_ref().map(|p| &p.checkpoint);
        catch_up(&mut frontier, snap, &self.log_id, size, check)?;
        debug_assert_eq!(frontier.size(), size, "caught up to the snapshot");
        state.frontier = Some(frontier);
        state.latest = persisted;
        Ok(())
    }

    fn parse_own(&self, bytes: &[u8]) -> Result<Signed, AuditError> {
        let bad = |why: String| AuditError::Integrity(format!("stored checkpoint: {why}"));
        let note = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        let parsed = tlog::parse_note(note).map_err(|e| bad(e.to_string()))?;
        let checkpoint = tlog::parse_body(parsed.text).map_err(|e| bad(e.to_string()))?;
        if checkpoint.origin != self.origin {
            return Err(bad(format!(
                "origin {} is not this office's {}",
                checkpoint.origin, self.origin
            )));
        }
        Ok(Signed {
            checkpoint,
            note: note.to_string(),
        })
    }

    /// The latest checkpoint signed (None before the first).
    pub fn latest(&self) -> Option<Signed> {
        self.lock().latest.clone()
    }

    /// Stops all signing from now on: a peer holds a checkpoint signed by this office's key
    /// that this office's log does not reproduce (`detail` says how), so any checkpoint signed
    /// now would contradict a published one. The caller persists [`CONTRADICTED_META`], which
    /// [`AuditLog::contradiction`] reads after a restart.
    /// Returns whether it was news (not already stopped in this run).
    pub fn contradicted_by(&self, detail: &str) -> bool {
        let news = self
            .lock()
            .contradicted
            .replace(contradiction_message(detail))
            .is_none();
        self.contradicted_flag
            .store(true, std::sync::atomic::Ordering::Relaxed);
        news
    }

    /// Why this office may not sign (None when it may): set by
    /// [`AuditLog::contradicted_by`] or found in the store's [`CONTRADICTED_META`].
    pub fn contradiction(&self, store: &Store) -> Result<Option<String>, AuditError> {
        if let Some(why) = self.lock().contradicted.clone() {
            return Ok(Some(why));
        }
        persisted_contradiction(store)
    }

    /// Signs (if the log grew) and persists a checkpoint of everything durable, and returns it
    /// with the snapshot it describes, so an export can walk exactly the data it covers.
    /// Blocking: call from a blocking thread.
    pub fn checkpoint(
        &self,
        store: &Store,
        key: &SigningKey,
    ) -> Result<(Signed, Snapshot), AuditError> {
        let mut state = self.lock();
        if let Some(why) = state.contradicted.clone() {
            return Err(AuditError::Integrity(why));
        }
        if let Some(why) = persisted_contradiction(store)? {
            return Err(AuditError::Integrity(why));
        }
        // Under the lock: no other checkpoint can interleave, so this snapshot is at least as
        // new as the one the frontier was last advanced from.
        let snap = store.snapshot()?;
        self.open_locked(&mut state, &snap)?;
        let frontier = state.frontier.as_mut().expect("opened above");
        let size = snap.log_size(&self.log_id)?;
        if size < frontier.size() {
            debug_assert!(false, "log shrank from {} to {size}", frontier.size());
            return Err(AuditError::Integrity(format!(
                "the log shrank from {} to {size} leaves",
                frontier.size()
            )));
        }
        catch_up(frontier, &snap, &self.log_id, size, None)?;
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: frontier.root(),
        };
        if let Some(latest) = &state.latest {
            if latest.checkpoint == checkpoint {
                return Ok((latest.clone(), snap));
            }
            debug_assert!(
                latest.checkpoint.size < size,
                "a new checkpoint of the same size would be inconsistent with the last"
            );
        }
        let note = checkpoint.sign(key);
        // Persist before publishing (returning): see the module docs.
        store.commit_blocking(WriteBatch {
            checkpoints: vec![(self.office.clone(), note.clone().into_bytes())],
            ..WriteBatch::default()
        })?;
        let signed = Signed { checkpoint, note };
        state.latest = Some(signed.clone());
        Ok((signed, snap))
    }
}

fn persisted_contradiction(store: &Store) -> Result<Option<String>, AuditError> {
    Ok(store.meta(CONTRADICTED_META)?.map(|bytes| {
        let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_string))
            .unwrap_or_else(|| "details unreadable".into());
        contradiction_message(&detail)
    }))
}

/// The frontier of the first `size` leaves of `log` (another office's, as replication stored
/// it), checked against `check` when the frontier passes its size. Reads the log once.
pub fn frontier_of(
    snap: &Snapshot,
    log: &LogId,
    size: u64,
    check: Option<&Checkpoint>,
) -> Result<Frontier, AuditError> {
    let mut f = Frontier::new();
    catch_up(&mut f, snap, log, size, check)?;
    Ok(f)
}

/// Leaves `[from, from + count)` of `log` (fewer if the log ends first).
pub fn read_leaves(
    snap: &Snapshot,
    log: &LogId,
    from: u64,
    count: usize,
) -> Result<Vec<LogLeaf>, AuditError> {
    snap.log_leaves(log, from, count)?
        .iter()
        .enumerate()
        .map(|(i, b)| {
            LogLeaf::decode(b).ok_or_else(|| {
                AuditError::Integrity(format!("log leaf {} is malformed", from + i as u64))
            })
        })
        .collect()
}

/// RFC 9162 MTH of leaves `[a, b)` of `log`, streamed page by page (bounded memory).
pub fn subtree_root(
    snap: &Snapshot,
    log: &LogId,
    a: u64,
    b: u64,
) -> Result<consentd_sync::merkle::Hash, AuditError> {
    let mut f = Frontier::new();
    let mut next = a;
    while next < b {
        let want = usize::try_from(b - next)
            .unwrap_or(usize::MAX)
            .min(LEAF_PAGE);
        let leaves = read_leaves(snap, log, next, want)?;
        if leaves.is_empty() {
            return Err(AuditError::Integrity(format!(
                "the log is missing leaf {next}"
            )));
        }
        for l in &leaves {
            f.push(l.merkle_hash());
        }
        next += leaves.len() as u64;
    }
    Ok(f.root())
}

/// Perfect subtrees (a power of two of leaves, aligned to their size) of at least this many
/// leaves are remembered by [`subtree_root_cached`]; smaller ranges are read and hashed.
pub const SUBTREE_CACHE_MIN: u64 = 1024;
/// Most subtree roots one cache keeps (~5 MiB); it is cleared when full.
pub const SUBTREE_CACHE_MAX: usize = 65_536;

/// Remembered subtree roots: (log, first leaf, end) → MTH.
pub type SubtreeCache = std::collections::HashMap<(LogId, u64, u64), consentd_sync::merkle::Hash>;

/// [`subtree_root`] that remembers perfect aligned subtrees. Their roots never change (a log
/// only grows, and such a subtree is a node of every larger tree), so consecutive consistency
/// proofs over one log, which share most of their subtrees, cost O(log n) reads of at most
/// [`SUBTREE_CACHE_MIN`] leaves each instead of rereading the log's tail every time.
pub fn subtree_root_cached(
    snap: &Snapshot,
    log: &LogId,
    a: u64,
    b: u64,
    cache: &mut SubtreeCache,
) -> Result<consentd_sync::merkle::Hash, AuditError> {
    let n = b - a;
    if n <= SUBTREE_CACHE_MIN {
        return subtree_root(snap, log, a, b);
    }
    let perfect = n.is_power_of_two() && a.is_multiple_of(n);
    if perfect {
        if let Some(h) = cache.get(&(*log, a, b)) {
            return Ok(*h);
        }
    }
    // RFC 9162: split at the largest power of two below n.
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    let left = subtree_root_cached(snap, log, a, a + k, cache)?;
    let right = subtree_root_cached(snap, log, a + k, b, cache)?;
    let h = consentd_sync::merkle::node_hash(&left, &right);
    if perfect {
        if cache.len() >= SUBTREE_CACHE_MAX {
            cache.clear();
        }
        cache.insert((*log, a, b), h);
    }
    Ok(h)
}

/// Pushes leaves `[frontier.size(), target)` of `log` into `frontier`. With `check`, compares
/// the root when the frontier passes the checkpoint's size.
fn catch_up(
    frontier: &mut Frontier,
    snap: &Snapshot,
    log: &LogId,
    target: u64,
    check: Option<&Checkpoint>,
) -> Result<(), AuditError> {
    let verify_at = |f: &Frontier| -> Result<(), AuditError> {
        match check {
            Some(cp) if cp.size == f.size() && cp.root != f.root() => {
                Err(AuditError::Integrity(format!(
                    "the log no longer reproduces the stored checkpoint of size {}: refusing to sign checkpoints",
                    cp.size
                )))
            }
            _ => Ok(()),
        }
    };
    verify_at(frontier)?;
    while frontier.size() < target {
        let want = usize::try_from(target - frontier.size())
            .unwrap_or(usize::MAX)
            .min(LEAF_PAGE);
        let leaves = snap.log_leaves(log, frontier.size(), want)?;
        if leaves.is_empty() {
            return Err(AuditError::Integrity(format!(
                "the log is missing leaf {}",
                frontier.size()
            )));
        }
        for bytes in leaves {
            let leaf = LogLeaf::decode(&bytes).ok_or_else(|| {
                AuditError::Integrity(format!("log leaf {} is malformed", frontier.size()))
            })?;
            frontier.push(leaf.merkle_hash());
            verify_at(frontier)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use consentd_sync::merkle;

    fn leaf(i: u8) -> LogLeaf {
        LogLeaf::envelope([i; 16], [i; 32])
    }

    fn append(store: &Store, log: &AuditLog, from: u8, to: u8) {
        store
            .commit_blocking(WriteBatch {
                log: (from..to).map(|i| log.entry(&leaf(i))).collect(),
                ..WriteBatch::default()
            })
            .unwrap();
    }

    #[test]
    fn checkpoints_grow_persist_and_survive_a_restart_consistently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let key = consentd_sync::keys::generate();
        let store = Store::open(&path).unwrap();
        let log = AuditLog::new("net", "de");
        append(&store, &log, 0, 5);
        let (a, snap) = log.checkpoint(&store, &key).unwrap();
        assert_eq!(a.checkpoint.size, 5);
        assert_eq!(snap.log_size(&log.log_id()).unwrap(), 5);
        let leaves: Vec<_> = (0..5).map(|i| leaf(i).merkle_hash()).collect();
        assert_eq!(a.checkpoint.root, merkle::root(&leaves));
        // Nothing new: the same checkpoint, not a second signature of the same size.
        assert_eq!(log.checkpoint(&store, &key).unwrap().0, a);
        // Persisted before it was returned.
        assert_eq!(store.checkpoint("de").unwrap().unwrap(), a.note.as_bytes());

        // "Restart": a fresh AuditLog rebuilds from the store and extends consistently.
        store.shutdown();
        drop((store, snap));
        let store = Store::open(&path).unwrap();
        let log = AuditLog::new("net", "de");
        assert_eq!(log.open(&store).unwrap(), Some(a.clone()));
        append(&store, &log, 5, 9);
        let (b, _) = log.checkpoint(&store, &key).unwrap();
        assert_eq!(b.checkpoint.size, 9);
        let all: Vec<_> = (0..9).map(|i| leaf(i).merkle_hash()).collect();
        let proof = merkle::consistency_proof(&all, 5).unwrap();
        assert!(merkle::verify_consistency(
            5,
            9,
            &a.checkpoint.root,
            &b.checkpoint.root,
            &proof
        ));
    }

    #[test]
    fn cached_subtree_roots_equal_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let log = AuditLog::new("net", "de");
        let n = 5000u64;
        store
            .commit_blocking(WriteBatch {
                log: (0..n)
                    .map(|i| {
                        let mut doc = [0u8; 16];
                        doc[..8].copy_from_slice(&i.to_be_bytes());
                        log.entry(&LogLeaf::envelope(doc, [1; 32]))
                    })
                    .collect(),
                ..WriteBatch::default()
            })
            .unwrap();
        let snap = store.snapshot().unwrap();
        let mut cache = SubtreeCache::new();
        for (a, b) in [
            (0, n),
            (0, 4096),
            (1000, 4999),
            (2048, 5000),
            (0, n),
            (3, 2051),
        ] {
            assert_eq!(
                subtree_root_cached(&snap, &log.log_id(), a, b, &mut cache).unwrap(),
                subtree_root(&snap, &log.log_id(), a, b).unwrap(),
                "[{a}, {b})"
            );
        }
        assert!(
            cache.contains_key(&(log.log_id(), 0, 4096)),
            "perfect subtrees remembered"
        );
        assert!(cache
            .keys()
            .all(|(_, a, b)| (b - a).is_power_of_two() && a.is_multiple_of(b - a)));
    }

    /// The cost of serving a whole log in LeavesWant batches (the proofs), cached against
    /// uncached. `cargo test --lib serving_a_log -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn serving_a_log_costs_reads_of_each_batch_not_of_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let log = AuditLog::new("net", "de");
        let n = 200_000u64;
        for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
            store
                .commit_blocking(WriteBatch {
                    log: chunk
                        .iter()
                        .map(|&i| {
                            log.entry(&LogLeaf::envelope([1; 16], {
                                let mut h = [0u8; 32];
                                h[..8].copy_from_slice(&i.to_be_bytes());
                                h
                            }))
                        })
                        .collect(),
                    ..WriteBatch::default()
                })
                .unwrap();
        }
        let snap = store.snapshot().unwrap();
        let batch = consentd_sync::logsync::LEAVES_PER_FRAME_MAX as u64;
        for cached in [true, false] {
            let started = std::time::Instant::now();
            let mut cache = SubtreeCache::new();
            let mut first = 0;
            while first < n {
                let end = (first + batch).min(n);
                let leaves =
                    read_leaves(&snap, &log.log_id(), first, (end - first) as usize).unwrap();
                assert_eq!(leaves.len() as u64, end - first);
                consentd_sync::logsync::consistency_proof(end, n, &mut |a, b| {
                    if cached {
                        subtree_root_cached(&snap, &log.log_id(), a, b, &mut cache).unwrap()
                    } else {
                        subtree_root(&snap, &log.log_id(), a, b).unwrap()
                    }
                });
                first = end;
            }
            println!(
                "serving {n} leaves in batches of {batch}: {:.2} s ({})",
                started.elapsed().as_secs_f64(),
                if cached {
                    "cached subtrees"
                } else {
                    "uncached"
                }
            );
        }
    }

    #[test]
    fn a_contradiction_stops_signing_now_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let key = consentd_sync::keys::generate();
        let log = AuditLog::new("net", "de");
        append(&store, &log, 0, 3);
        log.checkpoint(&store, &key).unwrap();
        assert_eq!(log.contradiction(&store).unwrap(), None);
        assert!(log.contradicted_by("a peer holds its checkpoint of 9 leaves"));
        assert!(!log.contradicted_by("again"), "news once");
        append(&store, &log, 3, 4);
        let Err(e) = log.checkpoint(&store, &key) else {
            panic!("signed after a contradiction")
        };
        let e = e.to_string();
        assert!(e.contains("restored from an older backup"), "{e}");
        // After a restart, from the evidence in meta.
        store
            .commit_blocking(WriteBatch {
                meta: vec![(
                    CONTRADICTED_META.into(),
                    br#"{"detail":"a peer holds its checkpoint of 9 leaves"}"#.to_vec(),
                )],
                ..WriteBatch::default()
            })
            .unwrap();
        let fresh = AuditLog::new("net", "de");
        fresh.open(&store).unwrap();
        assert!(fresh
            .contradiction(&store)
            .unwrap()
            .is_some_and(|m| m.contains("checkpoint of 9 leaves")));
        assert!(matches!(
            fresh.checkpoint(&store, &key),
            Err(AuditError::Integrity(_))
        ));
    }

    #[test]
    fn a_stored_checkpoint_the_log_does_not_reproduce_stops_all_signing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let key = consentd_sync::keys::generate();
        let log = AuditLog::new("net", "de");
        append(&store, &log, 0, 3);
        // A checkpoint of size 2 over other leaves (as if the log had been rewritten).
        let forged = Checkpoint {
            origin: log.origin().to_string(),
            size: 2,
            root: [9; 32],
        };
        let bigger = Checkpoint {
            size: 7,
            ..forged.clone()
        };
        for cp in [forged, bigger] {
            store
                .commit_blocking(WriteBatch {
                    checkpoints: vec![("de".into(), cp.sign(&key).into_bytes())],
                    ..WriteBatch::default()
                })
                .unwrap();
            let fresh = AuditLog::new("net", "de");
            assert!(matches!(fresh.open(&store), Err(AuditError::Integrity(_))));
            assert!(matches!(
                fresh.checkpoint(&store, &key),
                Err(AuditError::Integrity(_))
            ));
        }
    }
}
