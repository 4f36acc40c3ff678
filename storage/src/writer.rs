//! The writer thread and group commit.
//!
//! One OS thread owns every write. It blocks for the first queued request, opens ONE redb write
//! transaction with `Durability::Immediate` and applies the request, then takes and applies
//! whatever else is queued, one request at a time (bounded by [`MAX_BATCHES_PER_COMMIT`] and
//! [`MAX_BYTES_PER_COMMIT`]), commits, and hands the answers to the syncer (`syncer.rs`), which
//! answers every waiter with the same commit number once it has written and synced the commit.
//! The fsync is the expensive part (0.4-2 ms per commit measured here), so N concurrent writers
//! share one fsync instead of paying N; and since the syncer makes it behind the writer, the
//! writer applies the next group meanwhile.
//!
//! **Lingering under load.** A commit costs about a millisecond however little it holds (the
//! pages of the ~12 tables a record touches are written and synced once per commit), plus a
//! little per record. When several requests were already waiting as the previous commit finished
//! (so writers are arriving faster than commits end) and the group is small, the writer keeps it
//! open until [`LINGER`] after its first request, looking for more every [`LINGER_POLL`] and
//! applying each as it comes. 64 clients each writing one consent then make groups of 25-40
//! instead of 4-12, and the daemon spends less CPU per record (BENCHMARKS.md, thirteenth
//! session). Applying while lingering, rather than after, takes the applying (0.3 ms a group
//! plus about 10 µs a write) out of the writer's cycle: +4-8 % for the 64 clients
//! (twenty-eighth session). A lone write never waits, nor does a sequence of dependent ones
//! ([`LINGER_WAITING_MIN`]).
//!
//! Invariants:
//! - A waiter is answered only after `WriteTransaction::commit` returned Ok for a transaction that
//!   contains its batch and the syncer made that commit durable ([`publish_when_durable`]);
//!   readers get the commit's snapshot at that moment too, before any answer.
//! - If anything in the group fails, the transaction is dropped (redb aborts it) and every waiter
//!   of the group (the requests taken so far) gets the error: no partial acknowledgements. The
//!   requests behind the failing one were not taken: they stay queued for the next group.
//! - Requests are applied in the order they were queued (a request that would overflow the byte
//!   bound is carried over to start the next group, not reordered).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use crate::budget::Permit;
use crate::index_journal::{self, IndexJournal, TxnIndex};
use crate::journal::{self, Journal, Merge, TxnJournal};
use crate::key_filter::KeyFilter;
use crate::layout::*;
use crate::syncer::{OnDurable, SyncFailed, Syncer};
use crate::{
    lock_read, lock_write, CommitReceipt, Ctx, DocId, Hash, IndexKey, LogId, RecordUpdate, Result,
    StorageError, WriteBatch, MAX_BATCHES_PER_COMMIT, MAX_BYTES_PER_COMMIT,
};

/// Whether each commit also records redb's allocator state ("quick repair", 2-phase commit).
///
/// Why off: measured here, it made every durable commit 2-20x slower (an extra fsync plus the
/// allocator-state write), while the full repair it avoids took 0.18-0.47 s to reopen a 272 MiB
/// file of 200k records after a SIGKILL/abort: a once-per-crash cost of about a second at 1M
/// records, against a cost on every commit. Revisit if the store grows far beyond that.
pub(crate) const QUICK_REPAIR: bool = false;

/// How long after its first request the writer keeps a group open for more when it is under
/// load and the group holds less than [`LINGER_BYTES_MAX`]: about the fixed cost of one commit
/// (0.9-1.4 ms measured for a one-record commit), so lingering at most doubles the commit time of
/// a group that the wait could not grow. Counted from the first request, not from when the queue
/// ran dry: applying what was queued is part of the wait (counted from the queue running dry,
/// groups stayed open 1.1-2.1 ms and the 64 clients gained half as much).
pub(crate) const LINGER: Duration = Duration::from_millis(1);
/// How often a lingering writer looks for new requests: it applies each as it comes, so the
/// wait hides the applying. The timer's slack (about 50 µs here) makes each nap 150 µs or so.
pub(crate) const LINGER_POLL: Duration = Duration::from_micros(100);
/// Groups of at least this many bytes (about 50 single consent writes) commit without lingering:
/// the per-commit cost is already shared, and bulk batches (imports, replication) never wait.
pub(crate) const LINGER_BYTES_MAX: usize = 64 << 10;

/// Requests that must have been waiting when the previous commit ended for the writer to
/// linger. One waiting request is what a short sequence of dependent writes looks like: lingering
/// on one too cost the bench's one-record fan-out to six peers about 1 ms at p50 (measured: 4.9-5.0
/// ms against 3.8-4.0). Concurrent writers leave several waiting (4-20 with 64 clients).
pub(crate) const LINGER_WAITING_MIN: usize = 2;

/// How long the writer must have had nothing to do before it merges a journal that is only half
/// due ([`merge_journals_when`] with [`MergeWhen::Quiet`]). A merge holds up every write queued
/// behind it (with 64 clients, 64 acknowledgements for 10-60 ms at 20,000-100,000 envelopes);
/// done once the writes pause, it holds up none, and the next burst starts with an emptier
/// journal. A quarter of a second: long enough that writes arriving one by one seldom find the
/// writer inside such a merge, and short enough to come before the office returns a paused
/// import's heap to the kernel (`TRIM_QUIET`, a second), which then takes the merge's freed
/// memory too. Measured: BENCHMARKS.md, thirty-second session.
pub(crate) const MERGE_QUIET: Duration = Duration::from_millis(250);
/// A journal is merged once writes pause when it holds at least this share of its merge
/// threshold: at most twice as many merges as without, each costing about the same (a merge
/// rewrites each leaf of the table it goes into about once).
const MERGE_QUIET_SHARE: usize = 2;

/// Whether the writer keeps the group it has taken so far open for more requests ([`LINGER`]):
/// only under load (`waiting` requests were queued when the previous commit ended),
/// only once per group, and only for a group of small writes.
fn should_linger(waiting: usize, lingered: bool, group_bytes: usize) -> bool {
    waiting >= LINGER_WAITING_MIN && !lingered && group_bytes < LINGER_BYTES_MAX
}

/// One caller's work, queued to the writer.
pub(crate) struct Request {
    /// Docs to delete entirely (applied before `batch`, in the same transaction).
    pub purges: Vec<DocId>,
    pub batch: WriteBatch,
    /// Estimated size, for the per-commit byte bound.
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<CommitReceipt>>,
    /// Released when the request is dropped, i.e. after it was answered.
    pub _permit: Permit,
}

/// Counters shared between the writer and `Store::stats`, and the hot read snapshot.
#[derive(Default)]
pub(crate) struct Shared {
    pub commits_durable: AtomicU64,
    pub batches_committed: AtomicU64,
    pub commits_failed: AtomicU64,
    pub last_commit_seq: AtomicU64,
    /// Tag of the current state for the hot snapshot: bumped after every durable commit and
    /// every journal merge, before anyone is told of it (`Store::hot`).
    pub snapshot_tag: AtomicU64,
    /// The snapshot the hot read paths share between commits (`Store::hot`).
    pub hot: Mutex<HotSlot>,
    /// `envelope_at`'s journal (`journal.rs`); only the writer changes it.
    pub journal: RwLock<Journal>,
    /// `index`'s journal (`index_journal.rs`); only the writer changes it.
    pub index_journal: RwLock<IndexJournal>,
    /// The journal's key filter, asked without its lock (`Store::may_hold`).
    pub key_filter: Arc<KeyFilter>,
    /// Which middle levels are being drained into their base, a step after each commit
    /// ([`DRAIN_ENVELOPES`], [`DRAIN_INDEX`]); only the writer uses it.
    pub draining: AtomicU8,
    /// Makes each commit durable behind the writer (`syncer.rs`); `None` for a database opened
    /// without it (this crate's unit tests), whose commits are durable when they return.
    pub syncer: Option<Arc<Syncer>>,
    /// The snapshot of the newest durable commit, which every read uses (`Store::read`).
    pub view: Mutex<Option<View>>,
    /// The I/O error that failed a commit (a full disk, say): redb then refuses every later
    /// write transaction ("previous I/O error") until the database is opened again, so the
    /// store can write nothing more until a restart (`Store::write_failure`).
    pub io_failure: Mutex<Option<String>>,
    /// Numbers the snapshots in commit order ([`Shared::publish`]).
    pub views_made: AtomicU64,
}

/// A snapshot readers may use: that of a commit made durable.
pub(crate) struct View {
    /// [`Shared::next_view_order`] when its commit was made: a later commit's view is newer.
    order: u64,
    txn: Arc<ReadTransaction>,
}

/// [`Shared::draining`]'s bit for `envelope_mid`.
pub(crate) const DRAIN_ENVELOPES: u8 = 1;
/// [`Shared::draining`]'s bit for `index_mid`.
pub(crate) const DRAIN_INDEX: u8 = 2;

/// The shared hot tables (opened on the durable view, [`Shared::view`]), and how many commits
/// (or compactions, or a shutdown) are running.
///
/// Why none is shared through a commit: a live read transaction keeps every page freed after its
/// snapshot out of reuse, and one shared the whole time would hold back one commit's freed pages
/// each time (8 % more file after a 30,000-record import, before the syncer). So the writer
/// empties the slot as a commit starts and readers share nothing until it ends; during a commit
/// each read opens the tables it needs on the durable view. The durable view itself lives until
/// the next commit is durable, a commit or two.
#[derive(Default)]
pub(crate) struct HotSlot {
    /// A count, not a flag: a compaction may start while the writer waits to commit.
    pub committing: u32,
    pub tables: Option<Arc<crate::HotTables>>,
}

impl Shared {
    /// The shared snapshot, if one is shared and tagged `seq`.
    pub fn shared_at(&self, seq: u64) -> Option<Arc<crate::HotTables>> {
        crate::lock(&self.hot)
            .tables
            .as_ref()
            .filter(|h| h.seq == seq)
            .cloned()
    }

    /// Shares `fresh` unless a commit runs or a newer snapshot is shared already (a slower
    /// reader must not replace it with an older one).
    pub fn offer(&self, fresh: &Arc<crate::HotTables>) {
        let replaced = {
            let mut slot = crate::lock(&self.hot);
            if slot.committing == 0 && slot.tables.as_ref().is_none_or(|h| h.seq <= fresh.seq) {
                slot.tables.replace(Arc::clone(fresh))
            } else {
                None
            }
        };
        // Outside the lock: the last reference ends a redb read transaction, which takes
        // redb's own locks.
        drop(replaced);
    }

    /// A commit, a compaction or a shutdown starts: the shared snapshot is dropped and none is
    /// shared until the matching [`Shared::resume_sharing`] (a shutdown has none).
    pub fn stop_sharing(&self) {
        let old = {
            let mut slot = crate::lock(&self.hot);
            slot.committing += 1;
            slot.tables.take()
        };
        drop(old);
    }

    /// The shared snapshot is dropped (the state changed without a commit: a merge); the next
    /// reader shares a fresh one.
    pub fn unshare(&self) {
        let old = crate::lock(&self.hot).tables.take();
        // Outside the lock, as in `offer`.
        drop(old);
    }

    /// The number of the view of a commit just made (before its durability is known).
    pub fn next_view_order(&self) -> u64 {
        self.views_made.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The snapshot of the newest durable commit.
    pub fn view(&self) -> Option<Arc<ReadTransaction>> {
        crate::lock(&self.view).as_ref().map(|v| Arc::clone(&v.txn))
    }

    /// Empties the view slot (a compaction, a shutdown): returned so that the caller drops it
    /// outside the lock.
    pub fn take_view(&self) -> Option<View> {
        crate::lock(&self.view).take()
    }

    /// Makes `txn`, the snapshot of a durable commit, the one readers use, unless a newer one is
    /// there already (callbacks of two commits may finish out of order), then tells the hot
    /// paths: the tag changes after the view, so a snapshot shared under the new tag is never
    /// older than the view.
    pub fn publish(&self, order: u64, txn: ReadTransaction, commit_seq: Option<u64>) {
        let fresh = View {
            order,
            txn: Arc::new(txn),
        };
        // The one not kept (the older), dropped outside the lock.
        let old = {
            let mut slot = crate::lock(&self.view);
            if slot.as_ref().is_some_and(|v| v.order >= order) {
                Some(fresh)
            } else {
                slot.replace(fresh)
            }
        };
        if let Some(seq) = commit_seq {
            self.last_commit_seq.fetch_max(seq, Ordering::Release);
        }
        self.snapshot_tag.fetch_add(1, Ordering::Release);
        // Outside the lock, as in `offer`.
        drop(old);
    }

    /// Waits until every commit handed to the syncer is durable and its callbacks have run (at
    /// once without a syncer).
    pub fn wait_settled(&self) -> std::result::Result<(), SyncFailed> {
        self.syncer
            .as_ref()
            .map_or(Ok(()), |s| s.wait_settled(s.submitted()))
    }

    /// Waits for every commit handed to the syncer, then drops the view, so that no read
    /// transaction of ours stays open (a compaction, a close). A failed sync is not reported
    /// here: its commits were answered with it.
    pub fn retire_view(&self) {
        let _ = self.wait_settled();
        drop(self.take_view());
    }

    /// Once everything committed is durable, makes a snapshot of it the view readers use: after
    /// `init`, a compaction, or a test's own commits around the writer. Only while nothing else
    /// commits (the caller holds off the writer), so the snapshot holds nothing undurable.
    pub fn publish_settled(&self, db: &Database) -> Result<()> {
        let settled = self.wait_settled();
        let view = db.begin_read().ctx("beginning a read transaction")?;
        self.publish(self.next_view_order(), view, None);
        settled.map_err(|e| StorageError::NotDurable(e.0.to_string()))
    }

    pub fn resume_sharing(&self) {
        let mut slot = crate::lock(&self.hot);
        debug_assert!(slot.committing > 0, "resume_sharing without stop_sharing");
        debug_assert!(
            slot.tables.is_none(),
            "a snapshot was shared during a commit"
        );
        slot.committing -= 1;
    }
}

pub(crate) fn run(db: Arc<RwLock<Database>>, mut rx: mpsc::Receiver<Request>, shared: Arc<Shared>) {
    let mut carried: Option<Request> = None;
    // The store's envelope count as of the last group commit, for the merge thresholds (0 until
    // the first: the smallest thresholds).
    let mut envelopes_stored: u64 = 0;
    // For waiting at most `MERGE_QUIET` for a request (a Tokio channel has no blocking receive
    // with a timeout): made the first time a journal is worth merging once writes pause.
    let mut quiet_timer: Option<tokio::runtime::Runtime> = None;
    // Whether the last merge tried in a pause failed: none is tried again before a commit.
    let mut quiet_merge_failed = false;
    loop {
        // Requests already waiting as the previous commit ended.
        let waiting = rx.len() + usize::from(carried.is_some());
        // How long the group stayed open after the queue first ran dry under load (`None`: it
        // did not linger), for the trace.
        let mut linger_us: Option<u64> = None;
        // Block for the first request; `None` means every sender is gone (shutdown) and the
        // queue is drained, so all accepted work has been answered.
        let idle_from = Instant::now();
        let first = match carried.take() {
            Some(r) => r,
            None => {
                // A middle level being drained takes its steps while nothing is queued too, so
                // a drain ends when the writes stop instead of waiting for the next ones. Not
                // once the queue is closed (a shutdown waits for nothing), nor after a failed
                // step (retried after the next commit, not in a loop).
                let next = loop {
                    while shared.draining.load(Ordering::Relaxed) != 0
                        && rx.is_empty()
                        && !rx.is_closed()
                        && drain_if_due(&db, &shared)
                    {}
                    // Once the writes pause, a journal half due is merged in the pause
                    // (`MERGE_QUIET`); then the drains it may have started, as above.
                    let worth =
                        !quiet_merge_failed && merge_is_worth_a_pause(&shared, envelopes_stored);
                    let timer = if worth {
                        quiet_runtime(&mut quiet_timer)
                    } else {
                        None
                    };
                    let Some(timer) = timer else {
                        break rx.blocking_recv();
                    };
                    match timer
                        .block_on(async { tokio::time::timeout(MERGE_QUIET, rx.recv()).await })
                    {
                        Ok(next) => break next,
                        // A failed merge is tried again after the next commit, not in a loop.
                        Err(_quiet) => {
                            quiet_merge_failed = !merge_journals_when(
                                &db,
                                &shared,
                                envelopes_stored,
                                MergeWhen::Quiet,
                            )
                        }
                    }
                };
                match next {
                    Some(r) => r,
                    None => break,
                }
            }
        };
        // How long the writer had nothing to do before this group: with `micros`, its
        // utilisation, which says whether a pipeline feeding it (a cold sync) is bound by it.
        // (It includes a merge or drain steps taken in a pause.)
        let idle_us = idle_from.elapsed().as_micros() as u64;
        let started = Instant::now();
        let mut bytes = first.bytes;
        // In the group before the transaction begins, so that a failure to begin it (redb after
        // an I/O error) answers it with that error too, instead of dropping it unanswered.
        let mut group: Vec<Request> = vec![first];
        shared.stop_sharing();
        // A read guard: only compaction takes the write side, and it must not run mid-commit.
        let result = {
            let db = db.read().unwrap_or_else(|p| p.into_inner());
            // Each request is applied as it is taken, so that the transaction is built while
            // the writer lingers for more instead of after: the wait hides the applying.
            let committed = commit_group_with(&db, &shared, |apply| {
                {
                    let r = group.first().expect("the group's first request");
                    apply(&r.purges, &r.batch)?;
                }
                let mut next: Option<Request> = None;
                // When the queue first ran dry under load; the linger ends when the group stops
                // taking requests.
                let mut linger_from: Option<Instant> = None;
                loop {
                    if let Some(r) = next.take() {
                        bytes += r.bytes;
                        // Kept before it is applied: a request whose batch fails is answered
                        // with the group's error like every other.
                        group.push(r);
                        let r = group.last().expect("just pushed");
                        apply(&r.purges, &r.batch)?;
                    }
                    if group.len() >= MAX_BATCHES_PER_COMMIT {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(r) if bytes + r.bytes > MAX_BYTES_PER_COMMIT => {
                            // Keep FIFO order: this one opens the next group.
                            carried = Some(r);
                            break;
                        }
                        Ok(r) => next = Some(r),
                        Err(_) => {
                            if should_linger(waiting, linger_from.is_some(), bytes) {
                                linger_from = Some(Instant::now());
                            }
                            // The window counts from the group's first request: applying what
                            // was queued already is part of the wait.
                            match linger_from.map(|_| LINGER.saturating_sub(started.elapsed())) {
                                // Keep lingering while the group is still small.
                                Some(left) if !left.is_zero() && bytes < LINGER_BYTES_MAX => {
                                    std::thread::sleep(LINGER_POLL.min(left));
                                }
                                _ => break,
                            }
                        }
                    }
                }
                linger_us = linger_from.map(|from| from.elapsed().as_micros() as u64);
                Ok(())
            });
            // The snapshot of exactly this commit: only this thread commits.
            committed.map(|c| (c, db.begin_read().ctx("beginning a read transaction")))
        };
        shared.resume_sharing();
        match result {
            Ok((
                Committed {
                    seq,
                    apply_us,
                    commit_us,
                    envelopes,
                },
                view,
            )) => {
                tracing::trace!(
                    commit_seq = seq,
                    batches = group.len(),
                    bytes,
                    lingered = linger_us.is_some(),
                    linger_us = linger_us.unwrap_or(0),
                    idle_us,
                    apply_us,
                    commit_us,
                    micros = started.elapsed().as_micros() as u64,
                    "group committed"
                );
                let answers: Vec<_> = group
                    .into_iter()
                    .map(|r| {
                        let Request {
                            purges,
                            batch,
                            reply,
                            _permit,
                            ..
                        } = r;
                        // Freed before the answer, so a caller that returns memory to the kernel
                        // once its commit is durable (an import chunk) finds the batch gone.
                        drop((purges, batch));
                        (reply, _permit)
                    })
                    .collect();
                let counters = Arc::clone(&shared);
                let answer: OnDurable = Box::new(move |durable| {
                    // Stats first, so a caller that sees its receipt also sees its commit counted.
                    let batches = answers.len() as u64;
                    match &durable {
                        Ok(()) => {
                            counters.commits_durable.fetch_add(1, Ordering::Relaxed);
                            counters
                                .batches_committed
                                .fetch_add(batches, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counters.commits_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    for (reply, permit) in answers {
                        // A dropped receiver (cancelled caller) is fine: its data is durable anyway.
                        let _ = reply.send(match &durable {
                            Ok(()) => Ok(CommitReceipt { commit_seq: seq }),
                            Err(e) => Err(StorageError::NotDurable(e.0.to_string())),
                        });
                        drop(permit);
                    }
                });
                publish_when_durable(&shared, view, Some(seq), answer);
                envelopes_stored = envelopes;
                quiet_merge_failed = false;
                // After the answers: a merge is the journals' upkeep, not part of any commit.
                merge_journals_when(&db, &shared, envelopes, MergeWhen::Due);
            }
            Err(e) => {
                shared.commits_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    batches = group.len(),
                    error = %e,
                    "group commit failed; every batch in it is rejected"
                );
                if let StorageError::Database {
                    source: redb::Error::Io(_) | redb::Error::PreviousIo,
                    ..
                } = &e
                {
                    let mut failure = shared.io_failure.lock().unwrap_or_else(|p| p.into_inner());
                    failure.get_or_insert_with(|| e.to_string());
                }
                // Once the file could not be written, part of this commit may have reached it
                // before redb saw the error: not "not written", but "may or may not be durable".
                let failure = shared.syncer.as_ref().and_then(|s| s.failure());
                let error = |msg: String| match &failure {
                    Some(f) => StorageError::NotDurable(f.0.to_string()),
                    None => StorageError::CommitFailed(msg),
                };
                let msg = e.to_string();
                for r in group {
                    let _ = r.reply.send(Err(error(msg.clone())));
                }
            }
        }
    }
    tracing::debug!("storage writer stopped");
}

/// Once the commit just made (the last one submitted to the syncer) is durable, hands readers
/// `view`, its snapshot, and then runs `then`: nothing learns of a commit before it is durable
/// (`syncer.rs`). Called after every commit the writer makes. Without a syncer the commit is
/// durable already and both happen now.
pub(crate) fn publish_when_durable(
    shared: &Arc<Shared>,
    view: Result<ReadTransaction>,
    commit_seq: Option<u64>,
    then: OnDurable,
) {
    let order = shared.next_view_order();
    let to = Arc::clone(shared);
    let publish: OnDurable = Box::new(move |durable: std::result::Result<(), SyncFailed>| {
        if durable.is_ok() {
            match view {
                Ok(txn) => to.publish(order, txn, commit_seq),
                Err(e) => {
                    // Readers then begin their own transactions until the next commit's view.
                    tracing::error!(error = %e, "no snapshot of a durable commit");
                    drop(to.take_view());
                }
            }
        }
        then(durable);
    });
    match &shared.syncer {
        Some(syncer) => syncer.on_durable(syncer.submitted(), publish),
        None => publish(Ok(())),
    }
}

/// After an upkeep commit (a merge, a drain step), still under `db`'s guard: if it committed,
/// readers get its snapshot once it is durable, as after a group commit; nobody waits for it.
fn publish_upkeep<T>(db: &Database, shared: &Arc<Shared>, committed: Result<T>) -> Result<T> {
    if committed.is_ok() {
        let view = db.begin_read().ctx("beginning a read transaction");
        publish_when_durable(shared, view, None, Box::new(|_| {}));
    }
    committed
}

/// When [`merge_journals_when`] merges a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MergeWhen {
    /// After a group commit: once the journal holds its whole threshold.
    Due,
    /// Once writes have paused for [`MERGE_QUIET`]: at [`MERGE_QUIET_SHARE`] of it.
    Quiet,
}

impl MergeWhen {
    fn divisor(self) -> usize {
        match self {
            MergeWhen::Due => 1,
            MergeWhen::Quiet => MERGE_QUIET_SHARE,
        }
    }
}

/// Which journals are due for a merge `when` (the envelopes', the index's), with `envelopes`
/// stored.
fn journals_due(j: &Journal, ix: &IndexJournal, envelopes: u64, when: MergeWhen) -> (bool, bool) {
    (
        j.live_len() >= journal::merge_at(envelopes) / when.divisor(),
        ix.len() >= index_journal::merge_at(envelopes) / when.divisor(),
    )
}

/// Whether a journal holds enough that a pause in the writes should merge it
/// ([`MergeWhen::Quiet`]).
fn merge_is_worth_a_pause(shared: &Shared, envelopes: u64) -> bool {
    let (j, ix) = (lock_read(&shared.journal), lock_read(&shared.index_journal));
    let (envelopes_due, index_due) = journals_due(&j, &ix, envelopes, MergeWhen::Quiet);
    envelopes_due || index_due
}

/// The writer's timer for [`MERGE_QUIET`], made on first use; `None` (and never a merge on a
/// pause) if the runtime cannot be made.
fn quiet_runtime(slot: &mut Option<tokio::runtime::Runtime>) -> Option<&tokio::runtime::Runtime> {
    if slot.is_none() {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => *slot = Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "no timer for merging journals while writes pause");
                return None;
            }
        }
    }
    slot.as_ref()
}

/// Merges each journal that is due, in one durable transaction: the envelope journal once it
/// holds [`journal::merge_at`] entries, the index journal once it holds
/// [`index_journal::merge_at`] (each divided by [`MERGE_QUIET_SHARE`] when the writes have
/// paused, [`MergeWhen::Quiet`]); after a commit with neither due, takes a drain step of each
/// middle level being drained ([`drain_if_due`]). A failed merge changes nothing (the entries
/// stay in the journals) and is tried again after the next commit. False if a merge failed.
fn merge_journals_when(
    db: &RwLock<Database>,
    shared: &Arc<Shared>,
    envelopes: u64,
    when: MergeWhen,
) -> bool {
    let (entries, index_due) = {
        let (j, ix) = (lock_read(&shared.journal), lock_read(&shared.index_journal));
        let (envelopes_due, index_due) = journals_due(&j, &ix, envelopes, when);
        if !envelopes_due && !index_due {
            drop((j, ix));
            if when == MergeWhen::Due {
                drain_if_due(db, shared);
            }
            return true;
        }
        (envelopes_due.then(|| j.to_merge()), index_due)
    };
    let started = Instant::now();
    // Unlike a commit, a merge leaves the shared snapshot shared while it runs: consent checks
    // keep their one-snapshot path through a merge of up to 2 s (a fresh read transaction and
    // two table opens per check cost about as much as its lookups: BENCHMARKS.md, seventeenth
    // session). That snapshot
    // holds back no page the merge reuses (it began after the last commit, which freed them),
    // and it is dropped right after the merge (`unshare` below), so it holds back the merge's
    // freed pages only from the next commit's in-flight readers.
    let result = {
        let db = db.read().unwrap_or_else(|p| p.into_inner());
        let merged = merge_journals(&db, entries.as_deref(), index_due, journal::DRAIN_STEP);
        publish_upkeep(&db, shared, merged)
    };
    if let Ok(m) = &result {
        merged(shared, entries.is_some(), index_due);
        let drain = |merge: Option<Merge>, bit: u8| match merge {
            Some(Merge::MidThenDrain) => bit,
            _ => 0,
        };
        let due = drain(m.envelopes, DRAIN_ENVELOPES) | drain(m.index, DRAIN_INDEX);
        shared.draining.fetch_or(due, Ordering::Relaxed);
    }
    let entries = entries.map_or(0, |e| e.len());
    match result {
        Ok(m) => {
            tracing::debug!(
                entries,
                index_entries = m.index_entries,
                envelopes = ?m.envelopes,
                index = ?m.index,
                commit_us = m.commit_us,
                micros = started.elapsed().as_micros() as u64,
                quiet = when == MergeWhen::Quiet,
                "journals merged"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                entries,
                index_due,
                error = %e,
                "journal merge failed; its entries stay in the journals"
            );
            false
        }
    }
}

/// One drain step of each middle level being drained ([`journal::drain_step`]), in one durable
/// transaction; a level whose middle table is empty afterwards stops draining. A failed step
/// changes nothing and is tried again after the next commit. Whether a step was taken.
fn drain_if_due(db: &RwLock<Database>, shared: &Arc<Shared>) -> bool {
    let draining = shared.draining.load(Ordering::Relaxed);
    if draining == 0 {
        return false;
    }
    let started = Instant::now();
    // The shared snapshot stays shared through the step, as through a merge (above).
    let result = {
        let db = db.read().unwrap_or_else(|p| p.into_inner());
        let drained = drain_levels(
            &db,
            draining & DRAIN_ENVELOPES != 0,
            draining & DRAIN_INDEX != 0,
            journal::DRAIN_STEP,
        );
        publish_upkeep(&db, shared, drained)
    };
    match result {
        Ok(Drained {
            envelopes_left,
            index_left,
            commit_us,
        }) => {
            merged(shared, false, false);
            let done = |left: Option<u64>, bit: u8| match left {
                Some(0) => bit,
                _ => 0,
            };
            let done = done(envelopes_left, DRAIN_ENVELOPES) | done(index_left, DRAIN_INDEX);
            shared.draining.fetch_and(!done, Ordering::Relaxed);
            tracing::debug!(
                envelopes_left,
                index_left,
                commit_us,
                micros = started.elapsed().as_micros() as u64,
                "middle levels drained a step"
            );
            true
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                "draining a middle level failed; it is tried again after the next commit"
            );
            false
        }
    }
}

/// The drain step's transaction: `step` entries of `envelope_mid` into `envelope_at` if
/// `envelopes`, and of `index_mid` into `index` if `index`; how many each then holds.
pub(crate) fn drain_levels(
    db: &Database,
    envelopes: bool,
    index: bool,
    step: usize,
) -> Result<Drained> {
    let txn = begin_durable(db)?;
    let envelopes_left = match envelopes {
        true => Some(journal::drain_step(&txn, step)?),
        false => None,
    };
    let index_left = match index {
        true => Some(index_journal::drain_step(&txn, step)?),
        false => None,
    };
    let committing = Instant::now();
    txn.commit().ctx("committing")?;
    Ok(Drained {
        envelopes_left,
        index_left,
        commit_us: committing.elapsed().as_micros() as u64,
    })
}

/// What a drain step did.
pub(crate) struct Drained {
    /// Entries `envelope_mid` holds after it, if it was drained.
    pub(crate) envelopes_left: Option<u64>,
    /// Entries `index_mid` holds after it, if it was drained.
    pub(crate) index_left: Option<u64>,
    /// How long redb's commit took (its pages handed to the syncer), for the debug line.
    pub(crate) commit_us: u64,
}

/// A write transaction whose commit is durable when it returns, with redb's quick repair as
/// [`QUICK_REPAIR`] says. Every write of this crate begins here: group commits, journal merges,
/// drain steps, `init` and migrations.
fn begin_durable(db: &Database) -> Result<WriteTransaction> {
    let mut txn = db.begin_write().ctx("beginning a write transaction")?;
    // Immediate is redb 4's default; set it explicitly because acknowledging only durable data is
    // this crate's central promise and must not depend on a library default.
    txn.set_durability(Durability::Immediate)
        .ctx("setting durability")?;
    txn.set_quick_repair(QUICK_REPAIR);
    Ok(txn)
}

/// After a merge committed: the merged journals keep its entries for older snapshots only, and
/// readers share a snapshot of the merged state from now on (one begun before the merge and
/// offered late carries the older tag and is not shared again).
pub(crate) fn merged(shared: &Shared, envelopes: bool, index: bool) {
    if envelopes {
        lock_write(&shared.journal).merged();
    }
    if index {
        lock_write(&shared.index_journal).merged();
    }
    shared.snapshot_tag.fetch_add(1, Ordering::Release);
    shared.unshare();
}

/// The merge's transaction: `entries` (all of the envelope journal, in hash order), if given, into
/// `envelope_mid` or down into `envelope_at`, and `index_new` into `index_mid` or down into
/// `index` if `index`, taking at most `step` entries down at once (`journal.rs`, "Levels").
pub(crate) fn merge_journals(
    db: &Database,
    entries: Option<&[(crate::Hash, journal::Place)]>,
    index: bool,
    step: usize,
) -> Result<Merged> {
    let txn = begin_durable(db)?;
    let envelopes = match entries {
        Some(entries) => Some(journal::merge_into(&txn, entries, step)?),
        None => None,
    };
    let (index_entries, index) = match index {
        true => {
            let (n, merge) = index_journal::merge_into(&txn, step)?;
            (n, Some(merge))
        }
        false => (0, None),
    };
    let committing = Instant::now();
    txn.commit().ctx("committing")?;
    Ok(Merged {
        index_entries,
        envelopes,
        index,
        commit_us: committing.elapsed().as_micros() as u64,
    })
}

/// What a merge of the journals did.
pub(crate) struct Merged {
    /// Entries moved out of `index_new`.
    pub(crate) index_entries: usize,
    /// Where the envelope journal's merge went, if it merged.
    pub(crate) envelopes: Option<Merge>,
    /// Where the index journal's went, if it merged.
    pub(crate) index: Option<Merge>,
    /// How long redb's commit took (its pages handed to the syncer), for the debug line.
    pub(crate) commit_us: u64,
}

/// The tables one write transaction touches, opened once per transaction.
struct Tables<'t> {
    changes: Table<'t, &'static [u8; 20], &'static [u8]>,
    envelope_at: Table<'t, &'static [u8; 32], &'static [u8; 20]>,
    envelope_mid: Table<'t, &'static [u8; 32], &'static [u8; 20]>,
    envelope_new: Table<'t, u64, &'static [u8; 52]>,
    projections: Table<'t, &'static [u8; 16], &'static [u8]>,
    doc_meta: Table<'t, &'static [u8; 16], &'static [u8]>,
    index: Table<'t, &'static [u8; 48], ()>,
    index_mid: Table<'t, &'static [u8; 48], ()>,
    index_new: Table<'t, u64, &'static [u8; 48]>,
    due: Table<'t, &'static [u8; 20], ()>,
    kinds: Table<'t, &'static [u8; 17], ()>,
    meta: Table<'t, &'static str, &'static [u8]>,
    sys: Table<'t, &'static str, u64>,
    log: Table<'t, &'static [u8; 24], &'static [u8]>,
    log_sizes: Table<'t, &'static [u8; 16], u64>,
    checkpoints: Table<'t, &'static str, &'static [u8]>,
    tombstones: Table<'t, &'static [u8; 48], &'static [u8]>,
    expiry: Table<'t, &'static [u8; 20], ()>,
    keys: Table<'t, &'static [u8; 16], &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Tables {
            changes: txn.open_table(CHANGES).ctx("opening table changes")?,
            envelope_at: txn
                .open_table(ENVELOPE_AT)
                .ctx("opening table envelope_at")?,
            envelope_mid: txn
                .open_table(ENVELOPE_MID)
                .ctx("opening table envelope_mid")?,
            envelope_new: txn
                .open_table(ENVELOPE_NEW)
                .ctx("opening table envelope_new")?,
            projections: txn
                .open_table(PROJECTIONS)
                .ctx("opening table projections")?,
            doc_meta: txn.open_table(DOC_META).ctx("opening table doc_meta")?,
            index: txn.open_table(INDEX).ctx("opening table index")?,
            index_mid: txn.open_table(INDEX_MID).ctx("opening table index_mid")?,
            index_new: txn.open_table(INDEX_NEW).ctx("opening table index_new")?,
            due: txn.open_table(DUE).ctx("opening table due")?,
            kinds: txn.open_table(KINDS).ctx("opening table kinds")?,
            meta: txn.open_table(META).ctx("opening table meta")?,
            sys: txn.open_table(SYS).ctx("opening table sys")?,
            log: txn.open_table(LOG).ctx("opening table log")?,
            log_sizes: txn.open_table(LOG_SIZES).ctx("opening table log_sizes")?,
            checkpoints: txn
                .open_table(CHECKPOINTS)
                .ctx("opening table checkpoints")?,
            tombstones: txn.open_table(TOMBSTONES).ctx("opening table tombstones")?,
            expiry: txn.open_table(EXPIRY).ctx("opening table expiry")?,
            keys: txn.open_table(KEYS).ctx("opening table keys")?,
        })
    }
}

/// The journals as one transaction sees them: its own changes, and the shared state read-locked
/// for the transaction's length.
struct Journals<'a, 's> {
    envelopes: (&'a mut TxnJournal, &'s Journal),
    index: (&'a mut TxnIndex, &'s IndexJournal),
}

impl Journals<'_, '_> {
    /// Stores an `index` entry unless it is stored (appended to `index_new`).
    fn insert_index(&mut self, t: &mut Tables<'_>, e: &index_journal::Entry) -> Result<()> {
        let (ix, shared) = (&mut *self.index.0, self.index.1);
        ix.insert(shared, &t.index, &t.index_mid, &mut t.index_new, e)
    }

    /// Adds an `index` entry known to be in neither table ([`index_journal::TxnIndex::insert_absent`]).
    fn insert_absent_index(&mut self, t: &mut Tables<'_>, e: &index_journal::Entry) -> Result<()> {
        let (ix, shared) = (&mut *self.index.0, self.index.1);
        ix.insert_absent(shared, &t.index, &t.index_mid, &mut t.index_new, e)
    }

    /// Removes an `index` entry from whichever table holds it; whether it was stored.
    fn remove_index(&mut self, t: &mut Tables<'_>, e: &index_journal::Entry) -> Result<bool> {
        let (ix, shared) = (&mut *self.index.0, self.index.1);
        ix.remove(shared, &mut t.index, &mut t.index_mid, &mut t.index_new, e)
    }
}

/// The persisted counters, loaded at the start of a transaction and stored at its end.
#[derive(Default)]
struct Counters {
    records: u64,
    envelopes: u64,
    commit_seq: u64,
    tombstones: u64,
    dropped: u64,
    /// The [`HashSum`] of the stored envelopes' hashes, changed wherever `envelopes` is.
    envelope_sum: HashSum,
    /// The [`HashSum`] of the tombstones' hashes, changed wherever `tombstones` is.
    tombstone_sum: HashSum,
}

fn read_sys(sys: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    sys.get(key)
        .ctx("reading table sys")?
        .map(|g| g.value())
        .ok_or_else(|| StorageError::Corrupt(format!("sys counter {key:?} is missing")))
}

pub(crate) fn read_sum(
    sys: &impl ReadableTable<&'static str, u64>,
    keys: [&str; 4],
) -> Result<HashSum> {
    let mut limbs = [0u64; 4];
    for (limb, key) in limbs.iter_mut().zip(keys) {
        *limb = read_sys(sys, key)?;
    }
    Ok(HashSum::from_limbs(limbs))
}

fn write_sum(sys: &mut Table<'_, &'static str, u64>, keys: [&str; 4], sum: HashSum) -> Result<()> {
    for (key, limb) in keys.into_iter().zip(sum.limbs_stored()) {
        sys.insert(key, limb).ctx("writing table sys")?;
    }
    Ok(())
}

/// The envelope and tombstone [`HashSum`]s computed from the tables themselves (every change's
/// hash in `changes`, every tombstone key's hash): what `sys` must hold. O(n) in the envelopes:
/// for a file of a format before 9, and for checking the counters in debug builds.
fn sums_from_tables(
    changes: &impl ReadableTable<&'static [u8; 20], &'static [u8]>,
    tombstones: &impl ReadableTable<&'static [u8; 48], &'static [u8]>,
) -> Result<(HashSum, HashSum)> {
    let mut envelope_sum = HashSum::default();
    for item in changes.iter().ctx("reading table changes")? {
        let (k, v) = item.ctx("reading table changes")?;
        let (hash, _) = split_change_value(k.value(), v.value())?;
        envelope_sum.add(&hash);
    }
    let mut tombstone_sum = HashSum::default();
    for item in tombstones.iter().ctx("reading table tombstones")? {
        let (k, _) = item.ctx("reading table tombstones")?;
        tombstone_sum.add(k.value()[16..].try_into().expect("32 bytes"));
    }
    Ok((envelope_sum, tombstone_sum))
}

impl Counters {
    fn load(sys: &impl ReadableTable<&'static str, u64>) -> Result<Self> {
        Ok(Counters {
            records: read_sys(sys, SYS_RECORDS)?,
            envelopes: read_sys(sys, SYS_ENVELOPES)?,
            commit_seq: read_sys(sys, SYS_COMMIT_SEQ)?,
            tombstones: read_sys(sys, SYS_TOMBSTONES)?,
            dropped: read_sys(sys, SYS_DROPPED)?,
            envelope_sum: read_sum(sys, SYS_ENVELOPE_SUM)?,
            tombstone_sum: read_sum(sys, SYS_TOMBSTONE_SUM)?,
        })
    }

    fn store(&self, sys: &mut Table<'_, &'static str, u64>) -> Result<()> {
        sys.insert(SYS_RECORDS, self.records)
            .ctx("writing table sys")?;
        sys.insert(SYS_ENVELOPES, self.envelopes)
            .ctx("writing table sys")?;
        sys.insert(SYS_COMMIT_SEQ, self.commit_seq)
            .ctx("writing table sys")?;
        sys.insert(SYS_TOMBSTONES, self.tombstones)
            .ctx("writing table sys")?;
        sys.insert(SYS_DROPPED, self.dropped)
            .ctx("writing table sys")?;
        write_sum(sys, SYS_ENVELOPE_SUM, self.envelope_sum)?;
        write_sum(sys, SYS_TOMBSTONE_SUM, self.tombstone_sum)?;
        Ok(())
    }

    fn decrement(counter: &mut u64, name: &str) -> Result<()> {
        debug_assert!(*counter > 0, "{name} counter would go negative");
        *counter = counter
            .checked_sub(1)
            .ok_or_else(|| StorageError::Corrupt(format!("{name} counter would go negative")))?;
        Ok(())
    }
}

/// A durable group commit: its number, how long its transaction was open before the commit
/// (applying its batches, and for a lingering group waiting for them), and how long redb's own
/// commit took (writing the pages and syncing them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    pub seq: u64,
    pub apply_us: u64,
    pub commit_us: u64,
    /// Envelopes stored after this commit.
    pub envelopes: u64,
}

/// [`commit_group_with`] for a group known in full (tests).
#[cfg(test)]
pub(crate) fn commit_group<'a>(
    db: &Database,
    shared: &Shared,
    work: impl IntoIterator<Item = (&'a [DocId], &'a WriteBatch)>,
) -> Result<Committed> {
    commit_group_with(db, shared, |apply| {
        work.into_iter()
            .try_for_each(|(purges, batch)| apply(purges, batch))
    })
}

/// Applies (purges, batch) pairs in one durable write transaction as they arrive; returns its
/// commit number. `fill` is handed the function that applies one pair inside the open
/// transaction, and calls it for each pair in order as it comes (the writer applies requests
/// while it lingers for more: [`run`]). On any error, from `fill` or from a pair, the
/// transaction is dropped, which makes redb abort it: nothing of the group lands.
pub(crate) fn commit_group_with(
    db: &Database,
    shared: &Shared,
    fill: impl FnOnce(&mut dyn FnMut(&[DocId], &WriteBatch) -> Result<()>) -> Result<()>,
) -> Result<Committed> {
    let began = Instant::now();
    let txn = begin_durable(db)?;
    let (journal, index_journal) = (&shared.journal, &shared.index_journal);
    let mut j = TxnJournal::default();
    let mut ix = TxnIndex::default();
    let (seq, envelopes) = {
        // Only this thread changes the journals, so it reads them under read locks while it
        // builds the transaction (readers keep reading them).
        let (shared, ix_shared) = (lock_read(journal), lock_read(index_journal));
        let mut js = Journals {
            envelopes: (&mut j, &shared),
            index: (&mut ix, &ix_shared),
        };
        let mut t = Tables::open(&txn)?;
        let mut c = Counters::load(&t.sys)?;
        let mut apply = |purges: &[DocId], batch: &WriteBatch| -> Result<()> {
            for doc in purges {
                purge_doc(&mut t, &mut c, &mut js, doc)?;
            }
            // In doc-id order: ids are time-ordered (`time_ordered_id` in the daemon), so in this
            // order a batch of new records appends to the id-keyed tables, and redb packs their
            // leaves full. In arrival order, ids made in the same millisecond (random low bits)
            // land out of order and every leaf split strands a half-empty page: 31 % of the
            // id-keyed tables' pages were empty before. Stable, so one doc's updates keep their
            // order; updates of different docs in one batch are independent.
            let mut order: Vec<&RecordUpdate> = batch.updates.iter().collect();
            order.sort_by_key(|u| u.doc_id);
            // A doc's expiry, when this batch sets one, is written with its update: one doc_meta
            // write per record instead of two (the last expiry listed for a doc wins, as when
            // they are applied one after another below).
            let expiry_of: HashMap<&DocId, Option<i32>> =
                batch.expiries.iter().map(|(d, day)| (d, *day)).collect();
            let mut expiry_written: HashSet<&DocId> = HashSet::new();
            for u in order {
                // Tombstones win forever: a change for a deleted doc (a late or replayed
                // envelope) is dropped here, in the transaction, whoever sent it.
                if has_tombstone(&t, &u.doc_id)? {
                    c.dropped += u.envelopes.len().max(1) as u64;
                    continue;
                }
                let expiry = expiry_of.get(&u.doc_id).copied();
                apply_update(&mut t, &mut c, &mut js, u, expiry, batch.envelopes_new)?;
                if expiry.is_some() {
                    expiry_written.insert(&u.doc_id);
                }
            }
            for (doc, day) in &batch.expiries {
                if !expiry_written.contains(doc) {
                    set_expiry(&mut t, doc, *day)?;
                }
            }
            for (owner, id) in &batch.key_deletes {
                t.keys.remove(id).ctx("writing table keys")?;
                js.remove_index(&mut t, &key_owner_key(owner, id))?;
            }
            for (id, wrapped) in &batch.key_rewraps {
                let owner = match t.keys.get(id).ctx("reading table keys")? {
                    Some(v) if v.value().len() >= 32 => v.value()[..32].to_vec(),
                    Some(_) => {
                        return Err(StorageError::Corrupt(format!(
                            "key {} is shorter than its owner",
                            hex16(id)
                        )))
                    }
                    None => continue,
                };
                let mut value = owner;
                value.extend_from_slice(wrapped);
                t.keys
                    .insert(id, value.as_slice())
                    .ctx("writing table keys")?;
            }
            // Key ids are time-ordered too: same reason as the updates above.
            let mut keys: Vec<&(IndexKey, crate::KeyId, Vec<u8>)> = batch.keys.iter().collect();
            keys.sort_by_key(|k| k.1);
            let deleted: HashSet<&crate::KeyId> =
                batch.key_deletes.iter().map(|(_, id)| id).collect();
            for (owner, id, wrapped) in keys {
                let mut value = Vec::with_capacity(32 + wrapped.len());
                value.extend_from_slice(owner);
                value.extend_from_slice(wrapped);
                let held = t
                    .keys
                    .insert(id, value.as_slice())
                    .ctx("writing table keys")?
                    .is_some();
                // A key id is made once (time-ordered, 80 random bits) and its owner entry is
                // written with it, so a key stored for the first time has none. A key held
                // already, or deleted in this batch (a token re-index moving it to a new
                // owner), may: looked up, as any entry.
                if held || deleted.contains(id) {
                    js.insert_index(&mut t, &key_owner_key(owner, id))?;
                } else {
                    js.insert_absent_index(&mut t, &key_owner_key(owner, id))?;
                }
            }
            for (k, v) in &batch.meta {
                t.meta
                    .insert(k.as_str(), v.as_slice())
                    .ctx("writing table meta")?;
            }
            for (log, leaf) in &batch.log {
                append_leaf(&mut t, log, leaf)?;
            }
            for (k, v) in &batch.checkpoints {
                t.checkpoints
                    .insert(k.as_str(), v.as_slice())
                    .ctx("writing table checkpoints")?;
            }
            for (doc, hash, bytes) in &batch.tombstones {
                let key = tombstone_key(doc, hash);
                if t.tombstones
                    .get(&key)
                    .ctx("reading table tombstones")?
                    .is_none()
                {
                    t.tombstones
                        .insert(&key, bytes.as_slice())
                        .ctx("writing table tombstones")?;
                    c.tombstones += 1;
                    c.tombstone_sum.add(hash);
                }
            }
            Ok(())
        };
        fill(&mut apply)?;
        c.commit_seq += 1;
        c.store(&mut t.sys)?;
        (c.commit_seq, c.envelopes)
    };
    let committing = Instant::now();
    // Published before the commit, so that no snapshot taken after it misses an entry (readers
    // check what the journal names in their own snapshot: `journal.rs`).
    j.publish(&mut lock_write(journal));
    ix.publish(&mut lock_write(index_journal));
    let committed = txn.commit().ctx("committing");
    j.settle(&mut lock_write(journal), committed.is_ok());
    ix.settle(&mut lock_write(index_journal), committed.is_ok());
    committed?;
    Ok(Committed {
        seq,
        apply_us: committing.duration_since(began).as_micros() as u64,
        commit_us: committing.elapsed().as_micros() as u64,
        envelopes,
    })
}

/// Whether any tombstone names `doc`.
fn has_tombstone(t: &Tables<'_>, doc: &DocId) -> Result<bool> {
    let (lo, hi) = (
        tombstone_key(doc, &[0; 32]),
        tombstone_key(doc, &[0xff; 32]),
    );
    Ok(t.tombstones
        .range::<&[u8; 48]>(&lo..=&hi)
        .ctx("reading table tombstones")?
        .next()
        .is_some())
}

/// Moves a doc in the expiry index. A doc that does not exist (purged, or dropped above) is
/// skipped: there is nothing left to expire.
fn set_expiry(t: &mut Tables<'_>, doc: &DocId, day: Option<i32>) -> Result<()> {
    let Some(mut meta) = load_doc_meta(t, doc)? else {
        return Ok(());
    };
    if meta.expiry_day == day {
        return Ok(());
    }
    move_expiry(t, doc, meta.expiry_day, day)?;
    meta.expiry_day = day;
    t.doc_meta
        .insert(doc, meta.encode().as_slice())
        .ctx("writing table doc_meta")?;
    Ok(())
}

/// Moves `doc`'s entry in the expiry index from `old` to `new` (the caller writes doc_meta).
fn move_expiry(t: &mut Tables<'_>, doc: &DocId, old: Option<i32>, new: Option<i32>) -> Result<()> {
    if old == new {
        return Ok(());
    }
    if let Some(old) = old {
        let existed = t
            .expiry
            .remove(&due_key(old, doc))
            .ctx("writing table expiry")?
            .is_some();
        debug_assert!(existed, "expiry entry listed in doc_meta was missing");
    }
    if let Some(d) = new {
        t.expiry
            .insert(&due_key(d, doc), ())
            .ctx("writing table expiry")?;
    }
    Ok(())
}

/// Appends one leaf at the end of `log`. The only write the `log` table ever sees.
fn append_leaf(t: &mut Tables<'_>, log: &LogId, leaf: &[u8]) -> Result<()> {
    let size = t
        .log_sizes
        .get(log)
        .ctx("reading table log_sizes")?
        .map_or(0, |g| g.value());
    let taken = t
        .log
        .insert(&log_key(log, size), leaf)
        .ctx("writing table log")?
        .is_some();
    if taken {
        debug_assert!(
            !taken,
            "log slot {size} already written: log_sizes is stale"
        );
        return Err(StorageError::Corrupt(format!(
            "log slot {size} is already written"
        )));
    }
    t.log_sizes
        .insert(log, size + 1)
        .ctx("writing table log_sizes")?;
    Ok(())
}

fn load_doc_meta(t: &Tables<'_>, doc: &DocId) -> Result<Option<DocMeta>> {
    match t.doc_meta.get(doc).ctx("reading table doc_meta")? {
        Some(g) => Ok(Some(DocMeta::decode(doc, g.value())?)),
        None => Ok(None),
    }
}

/// Applies one record update; `expiry`, when given, is the doc's expiry day as of this batch
/// (`WriteBatch::expiries`), written with it.
fn apply_update(
    t: &mut Tables<'_>,
    c: &mut Counters,
    js: &mut Journals<'_, '_>,
    u: &RecordUpdate,
    expiry: Option<Option<i32>>,
    envelopes_new: bool,
) -> Result<()> {
    let doc = &u.doc_id;
    let old = load_doc_meta(t, doc)?;
    let old_pos = old.as_ref().map_or(0, |m| m.next_pos);

    // Envelopes: append new ones to the doc's change list in the given order. A hash already
    // stored (for any doc, or earlier in this same update) is skipped, so re-delivery is harmless.
    let mut next_pos = old_pos;
    let mut value = Vec::new();
    let (j, shared) = (&mut *js.envelopes.0, js.envelopes.1);
    for (hash, bytes) in &u.envelopes {
        let key = change_key(doc, next_pos);
        // A lookup in `envelope_at` reads pages and writes none; the new entry is appended to
        // the journal. An envelope made for this batch is stored nowhere, so its lookup is
        // skipped: 6-13 % of the writer's CPU per commit of 30 single writes, about 7 % per
        // import chunk of 1,000 (`examples/commit_cost.rs`; BENCHMARKS.md, twenty-sixth session).
        if envelopes_new {
            debug_assert!(
                j.find(shared, &t.envelope_at, &t.envelope_mid, hash)?
                    .is_none(),
                "an envelope made for this batch is stored already"
            );
        } else if j
            .find(shared, &t.envelope_at, &t.envelope_mid, hash)?
            .is_some()
        {
            continue;
        }
        j.add(shared, &mut t.envelope_new, hash, &key)?;
        value.clear();
        value.extend_from_slice(hash);
        value.extend_from_slice(bytes);
        let slot_taken = t
            .changes
            .insert(&key, value.as_slice())
            .ctx("writing table changes")?
            .is_some();
        if slot_taken {
            // next_pos only grows, so its slot must be free; otherwise doc_meta is stale.
            debug_assert!(!slot_taken, "change position {next_pos} of doc reused");
            return Err(StorageError::Corrupt(format!(
                "doc {} change position {next_pos} already taken",
                hex16(doc)
            )));
        }
        next_pos = next_pos.checked_add(1).ok_or(StorageError::TooLarge {
            what: "changes stored for one document",
            size: u32::MAX as usize + 1,
            limit: u32::MAX as usize,
        })?;
        c.envelopes += 1;
        c.envelope_sum.add(hash);
    }
    debug_assert!(next_pos >= old_pos, "change positions must be monotonic");

    // Index keys: diff old against new (both sorted, unique) so unchanged keys cost nothing.
    let mut keys: Vec<IndexKey> = u.index_keys.clone();
    keys.sort_unstable();
    keys.dedup();
    let old_keys: &[IndexKey] = old.as_ref().map_or(&[], |m| m.index_keys.as_slice());
    for k in old_keys {
        if keys.binary_search(k).is_err() {
            let existed = js.remove_index(t, &index_entry(k, doc))?;
            debug_assert!(existed, "index entry listed in doc_meta was missing");
        }
    }
    // Every entry of a record is listed in its metadata (`doc_meta`), so one it does not list is
    // stored nowhere.
    for k in &keys {
        if old_keys.binary_search(k).is_err() {
            js.insert_absent_index(t, &index_entry(k, doc))?;
        }
    }

    // Due index.
    let old_due = old.as_ref().and_then(|m| m.due_day);
    if old_due != u.due_day {
        if let Some(d) = old_due {
            let existed = t
                .due
                .remove(&due_key(d, doc))
                .ctx("writing table due")?
                .is_some();
            debug_assert!(existed, "due entry listed in doc_meta was missing");
        }
        if let Some(d) = u.due_day {
            t.due
                .insert(&due_key(d, doc), ())
                .ctx("writing table due")?;
        }
    }

    // Kind listing.
    let old_kind = old.as_ref().map(|m| m.kind);
    if old_kind != Some(u.kind) {
        if let Some(k) = old_kind {
            let existed = t
                .kinds
                .remove(&kind_key(k, doc))
                .ctx("writing table kinds")?
                .is_some();
            debug_assert!(existed, "kind entry listed in doc_meta was missing");
        }
        t.kinds
            .insert(&kind_key(u.kind, doc), ())
            .ctx("writing table kinds")?;
    }

    // Projection: kind ‖ bytes, written in place to avoid building a concatenated copy.
    {
        let mut slot = t
            .projections
            .insert_reserve(doc, 1 + u.projection.len())
            .ctx("writing table projections")?;
        let buf = slot.as_mut();
        buf[0] = u.kind;
        buf[1..].copy_from_slice(&u.projection);
    }

    if old.is_none() {
        c.records += 1;
    }
    let old_expiry = old.as_ref().and_then(|m| m.expiry_day);
    let expiry_day = match expiry {
        Some(day) => {
            move_expiry(t, doc, old_expiry, day)?;
            day
        }
        // Not set by this batch: unchanged.
        None => old_expiry,
    };
    let meta = DocMeta {
        kind: u.kind,
        next_pos,
        due_day: u.due_day,
        expiry_day,
        index_keys: keys,
    };
    t.doc_meta
        .insert(doc, meta.encode().as_slice())
        .ctx("writing table doc_meta")?;
    Ok(())
}

/// Deletes a doc and everything keyed by it: envelopes (`changes`, `envelope_at`), projection,
/// index, due and kind entries. Returns whether the doc existed.
fn purge_doc(
    t: &mut Tables<'_>,
    c: &mut Counters,
    js: &mut Journals<'_, '_>,
    doc: &DocId,
) -> Result<bool> {
    let Some(old) = load_doc_meta(t, doc)? else {
        return Ok(false);
    };
    t.doc_meta.remove(doc).ctx("writing table doc_meta")?;

    // Collect first: redb cannot remove while a range iterator borrows the table.
    let lo = change_key(doc, 0);
    let hi = change_key(doc, u32::MAX);
    let mut changes: Vec<([u8; 20], Hash)> = Vec::new();
    for item in t
        .changes
        .range::<&[u8; 20]>(&lo..=&hi)
        .ctx("reading table changes")?
    {
        let (k, v) = item.ctx("reading table changes")?;
        let (hash, _) = split_change_value(k.value(), v.value())?;
        changes.push((*k.value(), hash));
    }
    debug_assert!(
        changes.len() <= old.next_pos as usize,
        "doc has more changes than positions handed out"
    );
    let (j, shared) = (&mut *js.envelopes.0, js.envelopes.1);
    for (k, hash) in &changes {
        t.changes.remove(k).ctx("writing table changes")?;
        let found = j.find(shared, &t.envelope_at, &t.envelope_mid, hash)?;
        debug_assert!(found.is_some(), "a stored change is in no envelope level");
        if let Some(found) = found {
            j.remove(
                &mut t.envelope_new,
                &mut t.envelope_at,
                &mut t.envelope_mid,
                hash,
                found,
            )?;
            Counters::decrement(&mut c.envelopes, "envelopes")?;
            c.envelope_sum.sub(hash);
        }
    }
    for k in &old.index_keys {
        js.remove_index(t, &index_entry(k, doc))?;
    }
    if let Some(d) = old.due_day {
        t.due.remove(&due_key(d, doc)).ctx("writing table due")?;
    }
    if let Some(d) = old.expiry_day {
        t.expiry
            .remove(&due_key(d, doc))
            .ctx("writing table expiry")?;
    }
    t.kinds
        .remove(&kind_key(old.kind, doc))
        .ctx("writing table kinds")?;
    t.projections.remove(doc).ctx("writing table projections")?;
    Counters::decrement(&mut c.records, "records")?;
    Ok(true)
}

/// Creates all tables and the `sys` counters in a new file, or checks the format of an existing one.
pub(crate) fn init(db: &Database) -> Result<u64> {
    let mut old = 0;
    let txn = begin_durable(db)?;
    let seq = {
        let t = Tables::open(&txn)?; // creates missing tables
        let mut sys = t.sys;
        let version = sys
            .get(SYS_FORMAT_VERSION)
            .ctx("reading table sys")?
            .map(|g| g.value());
        match version {
            None => {
                // A fresh file: only accept it if it really is empty, so we never adopt (and
                // then miscount) someone else's redb file.
                if !t.changes.is_empty_table()? || !t.doc_meta.is_empty_table()? {
                    return Err(StorageError::Corrupt(
                        "tables hold data but the format version is missing".into(),
                    ));
                }
                sys.insert(SYS_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("writing table sys")?;
                for k in [
                    SYS_RECORDS,
                    SYS_ENVELOPES,
                    SYS_COMMIT_SEQ,
                    SYS_TOMBSTONES,
                    SYS_DROPPED,
                ] {
                    sys.insert(k, 0).ctx("writing table sys")?;
                }
                write_sum(&mut sys, SYS_ENVELOPE_SUM, HashSum::default())?;
                write_sum(&mut sys, SYS_TOMBSTONE_SUM, HashSum::default())?;
                Some(0)
            }
            Some(v) if v == FORMAT_VERSION => {
                // The sums are only ever added to and subtracted from, so a missed update would
                // go unnoticed until two offices' digests disagreed forever: check them against
                // the tables at every open of a debug build (every test's restart).
                #[cfg(debug_assertions)]
                {
                    let held = sums_from_tables(&t.changes, &t.tombstones)?;
                    let kept = (
                        read_sum(&sys, SYS_ENVELOPE_SUM)?,
                        read_sum(&sys, SYS_TOMBSTONE_SUM)?,
                    );
                    debug_assert_eq!(kept, held, "sys's hash sums disagree with the tables");
                }
                Some(read_sys(&sys, SYS_COMMIT_SEQ)?)
            }
            // Formats 6, 7 and 8 only added `envelope_new`, `index_new`, `envelope_mid` and
            // `index_mid`, created empty above: empty journals and levels are a format-5 file's
            // state. Format 9 added the hash sums, computed here from the tables in one pass
            // (a read of every stored change: a start 2.5 s slower at 1,000,000; a crash before the
            // commit just computes them again at the next open).
            Some(v @ 5..=8) => {
                // Every stored change is read: say why this start is slow.
                tracing::info!(from = v, to = FORMAT_VERSION, "migrating the storage file");
                let (envelopes, tombstones) = sums_from_tables(&t.changes, &t.tombstones)?;
                write_sum(&mut sys, SYS_ENVELOPE_SUM, envelopes)?;
                write_sum(&mut sys, SYS_TOMBSTONE_SUM, tombstones)?;
                sys.insert(SYS_FORMAT_VERSION, FORMAT_VERSION)
                    .ctx("writing table sys")?;
                Some(read_sys(&sys, SYS_COMMIT_SEQ)?)
            }
            // Formats 3 and 4 have the same tables but for the envelopes (3) and the key owners
            // (3 and 4): migrated below, one format at a time.
            Some(v @ (3 | 4)) => {
                old = v;
                None
            }
            Some(v) => {
                return Err(StorageError::Format {
                    found: v,
                    expected: FORMAT_VERSION,
                })
            }
        }
    };
    txn.commit().ctx("committing")?;
    match seq {
        Some(seq) => Ok(seq),
        None => {
            debug_assert!(old == 3 || old == 4, "only formats 3 and 4 migrate");
            if old == 3 {
                migrate_v3(db, MIGRATE_CHUNK)?;
            } else {
                migrate_v4(db, MIGRATE_CHUNK)?;
            }
            init(db)
        }
    }
}

/// Changes moved per transaction by [`migrate_v3`]: about 3 MiB of envelopes, so a migration
/// holds little in memory and a crash loses at most one chunk's work (none of its data).
const MIGRATE_CHUNK: usize = 4_096;

/// Moves a format-3 file's envelopes into format 4's tables, `chunk` changes per durable
/// transaction, then drops the old tables and writes version 4 ([`migrate_in_steps`]).
fn migrate_v3(db: &Database, chunk: usize) -> Result<()> {
    debug_assert!(chunk > 0, "a migration chunk must move something");
    migrate_in_steps(
        db,
        (3, 4),
        "changes",
        |txn| {
            let mut old_changes = txn
                .open_table(V3_DOC_CHANGES)
                .ctx("opening table doc_changes")?;
            let mut old_envelopes = txn
                .open_table(V3_ENVELOPES)
                .ctx("opening table envelopes")?;
            let mut changes = txn.open_table(CHANGES).ctx("opening table changes")?;
            let mut envelope_at = txn
                .open_table(ENVELOPE_AT)
                .ctx("opening table envelope_at")?;
            let batch: Vec<([u8; 20], Hash)> = old_changes
                .iter()
                .ctx("reading table doc_changes")?
                .take(chunk)
                .map(|r| r.map(|(k, v)| (*k.value(), *v.value())))
                .collect::<std::result::Result<_, _>>()
                .ctx("reading table doc_changes")?;
            let mut value = Vec::new();
            for (key, hash) in &batch {
                let envelope = old_envelopes
                    .remove(hash)
                    .ctx("writing table envelopes")?
                    .ok_or_else(|| {
                        StorageError::Corrupt(format!(
                            "format 3: change {} is listed but its envelope is missing",
                            hex_prefix(hash)
                        ))
                    })?;
                value.clear();
                value.extend_from_slice(hash);
                value.extend_from_slice(envelope.value());
                drop(envelope);
                changes
                    .insert(key, value.as_slice())
                    .ctx("writing table changes")?;
                envelope_at
                    .insert(hash, key)
                    .ctx("writing table envelope_at")?;
                old_changes.remove(key).ctx("writing table doc_changes")?;
            }
            if batch.is_empty() && !old_envelopes.is_empty_table()? {
                // Format 3 stored every envelope with a change-list entry, in one transaction.
                return Err(StorageError::Corrupt(
                    "format 3: envelopes stored without a change-list entry".into(),
                ));
            }
            Ok(batch.len())
        },
        |txn| {
            txn.delete_table(V3_DOC_CHANGES)
                .ctx("deleting table doc_changes")?;
            txn.delete_table(V3_ENVELOPES)
                .ctx("deleting table envelopes")?;
            Ok(())
        },
    )
}

/// Moves a format-4 file's `key_owners` entries into `index`, `chunk` per durable transaction,
/// then drops `key_owners` and writes version 5.
fn migrate_v4(db: &Database, chunk: usize) -> Result<()> {
    debug_assert!(chunk > 0, "a migration chunk must move something");
    migrate_in_steps(
        db,
        (4, 5),
        "key owners",
        |txn| {
            let mut owners = txn
                .open_table(V4_KEY_OWNERS)
                .ctx("opening table key_owners")?;
            let mut index = txn.open_table(INDEX).ctx("opening table index")?;
            let batch: Vec<[u8; 48]> = owners
                .iter()
                .ctx("reading table key_owners")?
                .take(chunk)
                .map(|r| r.map(|(k, _)| *k.value()))
                .collect::<std::result::Result<_, _>>()
                .ctx("reading table key_owners")?;
            for key in &batch {
                index.insert(key, ()).ctx("writing table index")?;
                owners.remove(key).ctx("writing table key_owners")?;
            }
            Ok(batch.len())
        },
        |txn| {
            txn.delete_table(V4_KEY_OWNERS)
                .ctx("deleting table key_owners")?;
            Ok(())
        },
    )
}

/// Runs one format migration as a sequence of durable transactions. Each runs `step`, which
/// *moves* a chunk of entries (inserts them in the new layout and removes them from the old, in
/// the same transaction) and returns how many; the first step that moves nothing also runs
/// `finish` (drop the old tables) and writes the new version, in that same transaction.
///
/// So a migration stopped by a crash resumes where it stopped: every entry is in exactly one of
/// the two layouts at every commit, and the version changes only with the last one. Readers never
/// see a half-migrated file because `Store::open` runs this before it returns.
fn migrate_in_steps(
    db: &Database,
    (from, to): (u64, u64),
    what: &str,
    mut step: impl FnMut(&WriteTransaction) -> Result<usize>,
    finish: impl FnOnce(&WriteTransaction) -> Result<()>,
) -> Result<()> {
    debug_assert_eq!(from + 1, to, "migrations go one format at a time");
    // Every entry is rewritten once: say why this start is slow.
    tracing::info!(from, to, "migrating the storage file");
    let mut moved = 0u64;
    loop {
        let txn = begin_durable(db)?;
        let n = step(&txn)?;
        moved += n as u64;
        if n == 0 {
            finish(&txn)?;
            txn.open_table(SYS)
                .ctx("opening table sys")?
                .insert(SYS_FORMAT_VERSION, to)
                .ctx("writing table sys")?;
            txn.commit().ctx("committing")?;
            tracing::info!(from, to, moved, what, "storage file migrated");
            return Ok(());
        }
        txn.commit().ctx("committing")?;
    }
}

trait IsEmpty {
    fn is_empty_table(&self) -> Result<bool>;
}

impl<T: redb::ReadableTableMetadata> IsEmpty for T {
    fn is_empty_table(&self) -> Result<bool> {
        self.is_empty().ctx("reading table length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    fn update(doc: u8, hash: u8) -> RecordUpdate {
        RecordUpdate {
            doc_id: [doc; 16],
            kind: 1,
            envelopes: vec![([hash; 32], vec![hash; 10])],
            projection: vec![doc],
            index_keys: vec![[doc; 32]],
            due_day: Some(i32::from(doc)),
        }
    }

    #[test]
    fn only_a_group_of_small_writes_under_load_lingers_and_only_once() {
        // A lone write (nothing was waiting when the writer took it) commits at once, and so
        // does the next of a sequence of dependent writes (one was waiting).
        assert!(!should_linger(0, false, 1_337));
        assert!(!should_linger(1, false, 1_337));
        // Under load, a small group waits once for company...
        assert!(should_linger(LINGER_WAITING_MIN, false, 1_337));
        assert!(should_linger(64, false, LINGER_BYTES_MAX - 1));
        // ...and never twice, however small it stayed.
        assert!(!should_linger(64, true, 1_337));
        // A group already holding a bulk batch (an import chunk, an ingest batch) does not wait.
        assert!(!should_linger(64, false, LINGER_BYTES_MAX));
        assert!(!should_linger(64, false, 1_271_064));
    }

    /// A new store whose doc_meta for doc 2 is corrupt, so that updating doc 2 fails inside the
    /// transaction.
    fn store_failing_doc_2() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        init(&db).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(DOC_META)
            .unwrap()
            .insert(&[2u8; 16], &[0xee_u8, 1, 2][..])
            .unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    /// A group containing one bad batch must fail as a whole: the good batch in the same group
    /// must not land either (no partial commits, so no partial acks are even possible).
    #[test]
    fn failing_batch_aborts_whole_group() {
        let (_dir, db) = store_failing_doc_2();
        let good = WriteBatch {
            updates: vec![update(1, 1)],
            log: vec![([1; 16], vec![1; 49])],
            ..WriteBatch::default()
        };
        let bad = WriteBatch {
            updates: vec![update(2, 2)],
            ..WriteBatch::default()
        };
        let shared = Shared::default();
        let err = commit_group(&db, &shared, [(&[][..], &good), (&[][..], &bad)]).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");

        let r = db.begin_read().unwrap();
        let env = r.open_table(ENVELOPE_AT).unwrap();
        assert!(env.get(&[1u8; 32]).unwrap().is_none(), "good batch leaked");
        assert_eq!(r.open_table(ENVELOPE_NEW).unwrap().len().unwrap(), 0);
        assert_eq!(r.open_table(INDEX_NEW).unwrap().len().unwrap(), 0);
        assert!(
            shared
                .index_journal
                .read()
                .unwrap()
                .candidates(&[1; 32])
                .is_empty(),
            "the failed group's index entry stayed in the journal"
        );
        assert_eq!(
            shared.journal.read().unwrap().places(&[[1; 32]]),
            [None],
            "the failed group's envelope stayed in the journal"
        );
        let sys = r.open_table(SYS).unwrap();
        assert_eq!(read_sys(&sys, SYS_COMMIT_SEQ).unwrap(), 0);
        assert_eq!(read_sys(&sys, SYS_ENVELOPES).unwrap(), 0);

        // The good batch alone commits.
        assert_eq!(
            commit_group(&db, &shared, [(&[][..], &good)]).unwrap().seq,
            1
        );
        assert!(shared.journal.read().unwrap().places(&[[1; 32]])[0].is_some());
        assert_eq!(
            shared
                .index_journal
                .read()
                .unwrap()
                .candidates(&[1; 32])
                .len(),
            1
        );
    }

    /// The writer applies each request as it takes it (so it can apply while it lingers). A
    /// request whose batch fails ends the group there: the requests taken before it share its
    /// error and left nothing behind, and those still queued open the next group unharmed.
    #[test]
    fn a_failing_request_fails_its_group_and_the_queue_behind_it_commits() {
        let (_dir, db) = store_failing_doc_2();
        let budget = crate::budget::ByteBudget::new(1 << 20);
        let (tx, rx) = mpsc::channel(8);
        let mut replies = Vec::new();
        // All three are queued before the writer starts, so the first group would drain them all.
        for (doc, hash) in [(1, 1), (2, 2), (3, 3)] {
            let (reply, answer) = oneshot::channel();
            tx.try_send(Request {
                purges: Vec::new(),
                batch: WriteBatch {
                    updates: vec![update(doc, hash)],
                    ..WriteBatch::default()
                },
                bytes: 100,
                reply,
                _permit: budget.acquire_blocking(100),
            })
            .unwrap();
            replies.push(answer);
        }
        drop(tx);
        let db = Arc::new(RwLock::new(db));
        let shared = Arc::new(Shared::default());
        run(Arc::clone(&db), rx, Arc::clone(&shared));

        let answers: Vec<_> = replies
            .into_iter()
            .map(|a| a.blocking_recv().expect("every request is answered"))
            .collect();
        assert!(
            matches!(&answers[0], Err(StorageError::CommitFailed(_))),
            "{:?}",
            answers[0]
        );
        assert!(
            matches!(&answers[1], Err(StorageError::CommitFailed(_))),
            "{:?}",
            answers[1]
        );
        assert_eq!(answers[2].as_ref().unwrap().commit_seq, 1);
        let db = db.read().unwrap();
        let r = db.begin_read().unwrap();
        let projections = r.open_table(PROJECTIONS).unwrap();
        assert!(
            projections.get(&[1u8; 16]).unwrap().is_none(),
            "doc 1 leaked"
        );
        assert!(projections.get(&[3u8; 16]).unwrap().is_some(), "doc 3 lost");
        assert_eq!(shared.commits_failed.load(Ordering::Relaxed), 1);
        assert_eq!(shared.commits_durable.load(Ordering::Relaxed), 1);
    }

    /// New records' ids are time-ordered but arrive out of order within a batch (ids made in one
    /// millisecond differ only in random bits). Applied in id order, each batch appends to the
    /// id-keyed tables, and their leaves are packed; applied in arrival order, leaf splits leave
    /// pages about a third empty (measured: 31 % of `projections` before the sort).
    #[test]
    fn batches_of_new_records_pack_the_id_keyed_tables() {
        // xorshift64: the storage crate has no `rand`; any fixed scramble will do.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        init(&db).unwrap();
        let shared = Shared::default();
        for batch_no in 0u32..40 {
            let mut updates: Vec<RecordUpdate> = (0u32..250)
                .map(|i| {
                    // Time-ordered like `time_ordered_id`: batch, then a few records per
                    // "millisecond", then random bits.
                    let mut doc = [0u8; 16];
                    doc[..4].copy_from_slice(&batch_no.to_be_bytes());
                    doc[4..8].copy_from_slice(&(i / 5).to_be_bytes());
                    doc[8..].copy_from_slice(&next().to_le_bytes());
                    let mut hash = [0u8; 32];
                    for chunk in hash.chunks_exact_mut(8) {
                        chunk.copy_from_slice(&next().to_le_bytes());
                    }
                    RecordUpdate {
                        doc_id: doc,
                        kind: 1,
                        envelopes: vec![(hash, vec![7; 700])],
                        projection: vec![9; 480],
                        index_keys: vec![],
                        due_day: None,
                    }
                })
                .collect();
            // Fisher-Yates: the batch arrives in no particular order.
            for i in (1..updates.len()).rev() {
                updates.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let batch = WriteBatch {
                updates,
                ..WriteBatch::default()
            };
            commit_group(&db, &shared, [(&[][..], &batch)]).unwrap();
        }
        let r = db.begin_read().unwrap();
        for (name, stats) in [
            (
                "projections",
                r.open_table(PROJECTIONS).unwrap().stats().unwrap(),
            ),
            ("changes", r.open_table(CHANGES).unwrap().stats().unwrap()),
        ] {
            let leaf_bytes = stats.leaf_pages() * 4096;
            // A leaf holds a whole number of ~500- or ~750-byte entries, so even a packed one
            // leaves up to one entry's bytes free: allow 20 %, against about 33 % unsorted.
            assert!(
                stats.fragmented_bytes() * 5 < leaf_bytes,
                "{name}: {} of {leaf_bytes} leaf bytes unused",
                stats.fragmented_bytes()
            );
        }
    }

    /// A format-3 file: `n` changes of doc `[1; 16]` at positions 0.., the first `moved` of them
    /// already in format 4's tables (a migration stopped by a crash), the rest in format 3's.
    fn format_3_file(db: &Database, n: u8, moved: u8) -> Vec<(Hash, Vec<u8>)> {
        let doc = [1u8; 16];
        let changes: Vec<(Hash, Vec<u8>)> = (0..n)
            .map(|i| ([i; 32], vec![i; 100 + usize::from(i)]))
            .collect();
        let txn = db.begin_write().unwrap();
        {
            let mut sys = txn.open_table(SYS).unwrap();
            sys.insert(SYS_FORMAT_VERSION, 3).unwrap();
            Counters {
                records: 1,
                envelopes: u64::from(n),
                commit_seq: 7,
                tombstones: 0,
                dropped: 0,
                ..Counters::default()
            }
            .store(&mut sys)
            .unwrap();
            let mut old_env = txn.open_table(V3_ENVELOPES).unwrap();
            let mut old_changes = txn.open_table(V3_DOC_CHANGES).unwrap();
            let mut new_changes = txn.open_table(CHANGES).unwrap();
            let mut at = txn.open_table(ENVELOPE_AT).unwrap();
            // Format 3 had key owners too (format 5 moves them into `index`).
            let mut owners = txn.open_table(V4_KEY_OWNERS).unwrap();
            owners
                .insert(&key_owner_key(&[9; 32], &[1; 16]), ())
                .unwrap();
            for (i, (hash, bytes)) in changes.iter().enumerate() {
                let key = change_key(&doc, i as u32);
                if i < usize::from(moved) {
                    let mut v = hash.to_vec();
                    v.extend_from_slice(bytes);
                    new_changes.insert(&key, v.as_slice()).unwrap();
                    at.insert(hash, &key).unwrap();
                } else {
                    old_env.insert(hash, bytes.as_slice()).unwrap();
                    old_changes.insert(&key, hash).unwrap();
                }
            }
        }
        txn.commit().unwrap();
        changes
    }

    #[test]
    fn format_3_files_migrate_in_chunks_and_resume() {
        for moved in [0, 4] {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("db.redb")).unwrap();
            let changes = format_3_file(&db, 10, moved);
            migrate_v3(&db, 3).unwrap();
            assert_eq!(init(&db).unwrap(), 7, "the commit sequence survives");

            let r = db.begin_read().unwrap();
            let sys = r.open_table(SYS).unwrap();
            assert_eq!(read_sys(&sys, SYS_FORMAT_VERSION).unwrap(), FORMAT_VERSION);
            assert_eq!(read_sys(&sys, SYS_ENVELOPES).unwrap(), 10);
            assert!(
                r.open_table(V3_ENVELOPES).is_err(),
                "old tables are dropped"
            );
            assert!(
                r.open_table(V3_DOC_CHANGES).is_err(),
                "old tables are dropped"
            );
            let stored = r.open_table(CHANGES).unwrap();
            let at = r.open_table(ENVELOPE_AT).unwrap();
            for (i, (hash, bytes)) in changes.iter().enumerate() {
                let key = change_key(&[1; 16], i as u32);
                assert_eq!(*at.get(hash).unwrap().unwrap().value(), key);
                let v = stored.get(&key).unwrap().unwrap();
                let (h, envelope) = split_change_value(&key, v.value()).unwrap();
                assert_eq!((&h, envelope), (hash, bytes.as_slice()), "change {i}");
            }
            assert_eq!(stored.len().unwrap(), 10);
            assert!(
                r.open_table(V4_KEY_OWNERS).is_err(),
                "format 4's key owners table is dropped on the way to format 5"
            );
            let index = r.open_table(INDEX).unwrap();
            assert!(index
                .get(&key_owner_key(&[9; 32], &[1; 16]))
                .unwrap()
                .is_some());
        }
    }

    /// A format-4 file with `n` key owners (owner `[9; 32]`, key ids `[i; 16]`) and one record's
    /// index entry (key `[8; 32]`), the first `moved` owners already in `index` (a migration stopped by a crash).
    fn format_4_file(db: &Database, n: u8, moved: u8) {
        let txn = db.begin_write().unwrap();
        {
            let mut sys = txn.open_table(SYS).unwrap();
            sys.insert(SYS_FORMAT_VERSION, 4).unwrap();
            Counters {
                records: 0,
                envelopes: 0,
                commit_seq: 5,
                tombstones: 0,
                dropped: 0,
                ..Counters::default()
            }
            .store(&mut sys)
            .unwrap();
            let mut owners = txn.open_table(V4_KEY_OWNERS).unwrap();
            let mut index = txn.open_table(INDEX).unwrap();
            index
                .insert(&index_entry(&[8; 32], &[200; 16]), ())
                .unwrap();
            for i in 0..n {
                let key = key_owner_key(&[9; 32], &[i; 16]);
                if i < moved {
                    index.insert(&key, ()).unwrap();
                } else {
                    owners.insert(&key, ()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn format_4_key_owners_move_into_the_index_in_chunks_and_resume() {
        for moved in [0, 3] {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("db.redb")).unwrap();
            format_4_file(&db, 7, moved);
            migrate_v4(&db, 2).unwrap();
            assert_eq!(init(&db).unwrap(), 5, "the commit sequence survives");
            let r = db.begin_read().unwrap();
            let sys = r.open_table(SYS).unwrap();
            assert_eq!(read_sys(&sys, SYS_FORMAT_VERSION).unwrap(), FORMAT_VERSION);
            assert!(
                r.open_table(V4_KEY_OWNERS).is_err(),
                "the old table is dropped"
            );
            let index = r.open_table(INDEX).unwrap();
            let entries: Vec<[u8; 48]> = index
                .iter()
                .unwrap()
                .map(|e| *e.unwrap().0.value())
                .collect();
            let mut expected = vec![index_entry(&[8; 32], &[200; 16])];
            expected.extend((0..7).map(|i| key_owner_key(&[9; 32], &[i; 16])));
            assert_eq!(
                entries, expected,
                "every owner moved once; the record's entry kept"
            );
        }
    }

    #[test]
    fn a_format_4_file_migrates_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        format_4_file(&Database::create(&path).unwrap(), 2, 0);
        let store = crate::Store::open(&path).unwrap();
        assert_eq!(store.keys_of(&[9; 32]).unwrap(), vec![[0; 16], [1; 16]]);
    }

    /// Formats 6, 7 and 8 only added the journals (`envelope_new`, `index_new`) and their middle
    /// levels (`envelope_mid`, `index_mid`), format 9 the hash sums in `sys`: a format-5 to -8
    /// file gets what it lacks (empty tables, the sums of what it holds) and keeps everything else.
    #[test]
    fn a_format_5_to_8_file_gains_empty_journals_and_levels_and_its_sums_when_opened() {
        for version in [5, 6, 7, 8] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db.redb");
            {
                let db = Database::create(&path).unwrap();
                init(&db).unwrap();
                let shared = Shared::default();
                let stored = WriteBatch {
                    updates: vec![update(1, 1)],
                    ..WriteBatch::default()
                };
                let tombstone = WriteBatch {
                    tombstones: vec![([2; 16], [0xff; 32], vec![2])],
                    ..WriteBatch::default()
                };
                commit_group(&db, &shared, [(&[][..], &stored), (&[][..], &tombstone)]).unwrap();
                // Back to the old format: the envelope in `envelope_at` (format 5 only), the
                // index entry in `index` (formats 5 and 6), no table the format lacks, no sums.
                let txn = db.begin_write().unwrap();
                {
                    let mut sys = txn.open_table(SYS).unwrap();
                    for key in SYS_ENVELOPE_SUM.into_iter().chain(SYS_TOMBSTONE_SUM) {
                        sys.remove(key).unwrap();
                    }
                    drop(sys);
                    if version == 5 {
                        let mut at = txn.open_table(ENVELOPE_AT).unwrap();
                        at.insert(&[1; 32], &change_key(&[1; 16], 0)).unwrap();
                    }
                    if version < 7 {
                        let mut index = txn.open_table(INDEX).unwrap();
                        index.insert(&index_entry(&[1; 32], &[1; 16]), ()).unwrap();
                    }
                    txn.open_table(SYS)
                        .unwrap()
                        .insert(SYS_FORMAT_VERSION, version)
                        .unwrap();
                }
                if version == 5 {
                    txn.delete_table(ENVELOPE_NEW).unwrap();
                }
                if version < 7 {
                    txn.delete_table(INDEX_NEW).unwrap();
                }
                if version < 8 {
                    txn.delete_table(ENVELOPE_MID).unwrap();
                    txn.delete_table(INDEX_MID).unwrap();
                }
                txn.commit().unwrap();
            }
            let store = crate::Store::open(&path).unwrap();
            assert_eq!(
                store.held_sets().unwrap(),
                crate::HeldSets {
                    envelopes: 1,
                    envelope_sum: [1; 32],
                    tombstones: 1,
                    tombstone_sum: [0xff; 32],
                },
                "format {version}"
            );
            assert_eq!(store.envelope(&[1; 32]).unwrap(), Some(vec![1; 10]));
            assert_eq!(store.docs_by_key(&[1; 32]).unwrap(), [[1; 16]]);
            let r = store.read().unwrap();
            let sys = r.open_table(SYS).unwrap();
            assert_eq!(read_sys(&sys, SYS_FORMAT_VERSION).unwrap(), FORMAT_VERSION);
            let journalled = r.open_table(ENVELOPE_NEW).unwrap().len().unwrap();
            assert_eq!(journalled, u64::from(version >= 6), "format {version}");
            let journalled = r.open_table(INDEX_NEW).unwrap().len().unwrap();
            assert_eq!(journalled, u64::from(version >= 7), "format {version}");
            assert_eq!(r.open_table(ENVELOPE_MID).unwrap().len().unwrap(), 0);
            assert_eq!(r.open_table(INDEX_MID).unwrap().len().unwrap(), 0);
        }
    }

    /// One group may store an envelope and purge its doc (two requests): neither table nor the
    /// journal keeps a trace, and the counter is back to zero. And one may purge a journalled
    /// envelope's doc and store it again: the new entry stays.
    #[test]
    fn a_purge_in_the_storing_group_leaves_no_trace_and_a_store_after_a_purge_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        init(&db).unwrap();
        let shared = Shared::default();
        let stored = WriteBatch {
            updates: vec![update(1, 1)],
            ..WriteBatch::default()
        };
        let nothing = WriteBatch::default();
        commit_group(
            &db,
            &shared,
            [(&[][..], &stored), (&[[1u8; 16]][..], &nothing)],
        )
        .unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(r.open_table(ENVELOPE_NEW).unwrap().len().unwrap(), 0);
        assert_eq!(r.open_table(ENVELOPE_AT).unwrap().len().unwrap(), 0);
        assert_eq!(
            read_sys(&r.open_table(SYS).unwrap(), SYS_ENVELOPES).unwrap(),
            0
        );
        assert_eq!(shared.journal.read().unwrap().places(&[[1; 32]]), [None]);

        // Stored, then purged and stored again in one group: the new entry stays, in the table
        // and in the journal (the purge's clean-up of the old one must not take it).
        drop(r);
        commit_group(&db, &shared, [(&[][..], &stored)]).unwrap();
        commit_group(
            &db,
            &shared,
            [(&[[1u8; 16]][..], &nothing), (&[][..], &stored)],
        )
        .unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(r.open_table(ENVELOPE_NEW).unwrap().len().unwrap(), 1);
        assert_eq!(
            shared.journal.read().unwrap().places(&[[1; 32]]),
            [Some(change_key(&[1; 16], 0))]
        );
    }

    #[test]
    fn a_format_3_change_without_its_envelope_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        format_3_file(&db, 3, 0);
        let txn = db.begin_write().unwrap();
        txn.open_table(V3_ENVELOPES)
            .unwrap()
            .remove(&[1u8; 32])
            .unwrap();
        txn.commit().unwrap();
        assert!(matches!(init(&db), Err(StorageError::Corrupt(_))));
        let r = db.begin_read().unwrap();
        let sys = r.open_table(SYS).unwrap();
        assert_eq!(
            read_sys(&sys, SYS_FORMAT_VERSION).unwrap(),
            3,
            "not marked migrated"
        );
    }

    #[test]
    fn init_rejects_other_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        init(&db).unwrap();
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(SYS)
                .unwrap()
                .insert(SYS_FORMAT_VERSION, FORMAT_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(init(&db), Err(StorageError::Format { .. })));
    }
}
