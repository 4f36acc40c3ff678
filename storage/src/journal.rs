//! `envelope_at`'s journal: where the newest envelopes are, appended in order and merged into
//! `envelope_at` in bulk.
//!
//! **Why.** `envelope_at` is keyed by change hash, and hashes are random. Inserted one commit at a
//! time, every new envelope lands in a leaf of its own, and redb's copy-on-write rewrites that
//! whole 4 KiB leaf (and its branch path) in the commit. That was about half of what a commit
//! wrote and took (`examples/commit_cost.rs`: at 300,000 records, 500-record commits wrote
//! 6,505 KiB in 59.8 ms with random hashes, and 4,095 KiB in 28.9 ms had the hashes come in
//! order). A `Want` names envelopes by hash alone, so the key cannot be made to follow time.
//! Journalled, 64 writers acknowledged 17 % more records a second at 10,000 records, 15 % more at
//! 100,000 and 13 % more at 1,000,000; an import ran 12-17 % faster up to 100,000 and 8 % or
//! less at 1,000,000, and a cold sync no faster (BENCHMARKS.md, twenty-first session).
//!
//! **How.** A commit appends each new envelope's `hash ‖ place` to `envelope_new`, keyed by a
//! sequence number: one leaf per commit, however many envelopes. The same entries are held in
//! memory ([`Journal`]), where lookups by hash find them. Once the journal holds
//! [`merge_at`] entries, the writer moves them all into `envelope_at` in one transaction, in hash
//! order, and empties `envelope_new` in the same transaction: each leaf of `envelope_at` is then
//! rewritten once for all the entries it gains, instead of once per entry. Once the writes pause
//! for [`MERGE_QUIET`](crate::writer::MERGE_QUIET), the writer merges a journal that holds half
//! that already, so that the stall of a merge falls in the pause rather than in the next burst.
//!
//! **Levels.** Once the store is large, a merge goes into `envelope_mid` (same layout as
//! `envelope_at`) instead, and only when that would hold a quarter as many entries as
//! `envelope_at` do its entries and the journal's go down into `envelope_at` ([`MID_SHARE`] says
//! why): in the merge's transaction, emptying `envelope_mid`, if they are at most
//! [`DRAIN_STEP`]; otherwise the merge goes into `envelope_mid` and the writer then drains it
//! into `envelope_at` in key order, [`DRAIN_STEP`] entries a transaction, one after each group
//! commit and one after another while nothing is queued ([`drain_step`]). Lookups look in the
//! journal, then `envelope_mid`, then `envelope_at`.
//!
//! **Invariants.**
//! - A hash is in at most one of `envelope_at`, `envelope_mid` and `envelope_new` (a merge moves
//!   it in one transaction; a purge removes it from whichever holds it).
//! - The in-memory `live` map equals `envelope_new`, plus the entries of the commit in progress
//!   (added before it commits, removed again if it fails). Entries are added *before* their
//!   commit, so that no snapshot taken after a commit misses one; a reader therefore counts a place
//!   found here only if its own snapshot holds that change at that place
//!   ([`Journal::places`] callers check `changes`).
//! - After a merge, the merged entries stay in `merged` until the next merge, for readers whose
//!   snapshot began before the merge and so finds them neither in `live` nor in its
//!   `envelope_mid` or `envelope_at`. A read that spans two merges (at least half of
//!   [`MERGE_MIN`] envelopes written meanwhile) can miss an envelope and call it not held: the
//!   caller fetches or asks for it again, and the writer, which reads the current state, stores
//!   nothing twice.
//!
//! **Limits.** About [`MERGE_MAX`] entries in each map at most (a merge follows the commit that
//! reaches it), 80-100 bytes each in memory: 12 MiB for both. A merge rewrites at most every
//! leaf of `envelope_mid`, or of both levels when it goes down, once, and the writes queued
//! meanwhile wait for it; a drain step moves at most [`DRAIN_STEP`] entries. `envelope_mid`
//! holds about a quarter as many entries as `envelope_at` at most (one journal's more while it
//! drains). A merge that fails leaves its entries in the journal and is tried again after the
//! next commit; a store whose merges fail has failing commits too, so the journal stops growing.
//! A drain step that fails is tried again after the next commit; one a restart interrupted
//! resumes with the next merge into the middle level, which finds it due again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction,
};

use crate::layout::{ENVELOPE_AT, ENVELOPE_MID, ENVELOPE_NEW};
use crate::{Ctx, Hash, Result, StorageError};

/// Where a change is stored: its `changes` key, `doc[16] ‖ position u32 BE`.
pub(crate) type Place = [u8; 20];

/// Fewest journal entries that trigger a merge. A merge's commit delays every write queued behind
/// it (with 64 writers, 64 acknowledgements), so merges rarer than one per 6,400 writes stay out
/// of the acknowledgements' p99: at 16,384, 0.4 % of them wait for one. (Not quite: those 64
/// take most of the slowest 1 % of 10,000, and push the rest's p99 up; the thirty-second
/// session measured p99 / mean 2.0-2.2 with the merge in the burst, 1.7-1.8 without. Hence
/// merges in a pause, [`crate::writer::MERGE_QUIET`].) At 20,000 envelopes (`envelope_at` of
/// about 400 leaves) such a merge rewrites each leaf once: ~0.1 KiB a record,
/// against ~4 KiB a record inserted one commit at a time. (4,096 measured the same throughput.)
pub(crate) const MERGE_MIN: usize = 16_384;
/// Most journal entries before a merge: bounds the journal's memory (two maps of at most this
/// many entries) and a merge's size (at most every leaf of `envelope_at`, ~80 MiB at 1,000,000
/// envelopes).
pub(crate) const MERGE_MAX: usize = 65_536;
/// Between those, a merge waits for one entry per this many stored envelopes: a merge rewrites
/// up to every leaf of `envelope_at` (50-70 entries a leaf), so at one new entry per 16 envelopes
/// it costs a quarter to a third of a leaf per new envelope however large the table, against a
/// whole leaf each when inserted one commit at a time.
const MERGE_EVERY_ENVELOPES: u64 = 16;

/// How many journal entries trigger a merge when the store holds `envelopes` envelopes.
pub(crate) fn merge_at(envelopes: u64) -> usize {
    let scaled = usize::try_from(envelopes / MERGE_EVERY_ENVELOPES).unwrap_or(MERGE_MAX);
    scaled.clamp(MERGE_MIN, MERGE_MAX)
}

/// A merge goes down into the base table (`envelope_at`, `index`) once the middle table would
/// hold one entry for every this many of the base's.
///
/// **Why a middle level.** A merge of J random keys into a table of L leaves rewrites about every
/// leaf once J is larger than L, so the cost of a merge grows with the table, not with J. While
/// 64 clients wrote a second million records onto a first (up to 2,000,000 envelopes and
/// 6,000,000 index entries), a merge took 0.4-0.8 s for 65,536 envelopes and 1.7-2.1 s for
/// 262,144 index entries: **26 s of the 101 s** (twenty-ninth session). Merged into a middle
/// table a quarter of the base's size at most, a merge rewrites that table instead, and the base
/// is rewritten once per several merges: with K merges between two merges down, the writes per
/// K·J entries are about J·K²/2 (the middle level, growing) plus the base once, against K bases.
/// A quarter gives K of 3-8 at those sizes; a larger share makes K larger but the middle level's
/// rewrites grow with its square (a share of an eighth measured no better). Readers look in one
/// more table, which is small and so stays in redb's cache. Measured over the writes family at
/// 1,000,000 records: merges 25 s instead of 38 s, the 64 clients and the import +10 %.
pub(crate) const MID_SHARE: u64 = 4;

/// Whether a merge of `new` journal entries goes down into the base table (with the middle
/// table's `mid` entries) rather than into the middle table: always while the base is small, so a
/// small store has one level as before.
pub(crate) fn merges_down(mid: u64, new: u64, base: u64) -> bool {
    mid.saturating_add(new).saturating_mul(MID_SHARE) >= base
}

/// Most entries a merge takes down in one transaction, and a drain step moves from a middle
/// level into its base. A larger merge down goes into the middle level as usual and then drains
/// it in steps, one after each group commit and more while nothing is queued ([`drain_step`]):
/// the writes queued behind a merge wait for it, and taken down at once, the 1.3 million entries
/// of `index_mid` at 2,000,000 records held them 3-4 s. In key order, each step rewrites only
/// its own range of the base's leaves, so the steps together rewrite each leaf about once, as
/// one merge did.
pub(crate) const DRAIN_STEP: usize = 131_072;

/// Where a journal merge went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Into the middle level.
    Mid,
    /// Into the middle level, which is due to be drained into the base ([`drain_step`]).
    MidThenDrain,
    /// Down into the base, with the middle level's entries.
    Down,
}

impl Merge {
    /// Where a merge of `new` entries goes, with `mid` entries in the middle level and `base`
    /// in the base, taking at most `step` entries down at once.
    pub(crate) fn of(mid: u64, new: u64, base: u64, step: usize) -> Merge {
        match merges_down(mid, new, base) {
            false => Merge::Mid,
            true if mid.saturating_add(new) <= step as u64 => Merge::Down,
            true => Merge::MidThenDrain,
        }
    }
}

/// The journal in memory, shared by the writer (which alone changes it) and readers.
#[derive(Default, Debug)]
pub(crate) struct Journal {
    /// `envelope_new`, by hash: sequence number and place.
    live: BTreeMap<Hash, (u64, Place)>,
    /// What the last merge moved into `envelope_at` (see the module doc).
    merged: BTreeMap<Hash, Place>,
    /// The next sequence number of `envelope_new`.
    next_seq: u64,
}

impl Journal {
    /// Reads `envelope_new` (at open).
    pub(crate) fn load(db: &Database) -> Result<Journal> {
        let r = db.begin_read().ctx("beginning a read transaction")?;
        let t = r
            .open_table(ENVELOPE_NEW)
            .ctx("opening table envelope_new")?;
        let mut j = Journal::default();
        for item in t.iter().ctx("reading table envelope_new")? {
            let (k, v) = item.ctx("reading table envelope_new")?;
            let (hash, place) = split_entry(v.value());
            if j.live.insert(hash, (k.value(), place)).is_some() {
                return Err(StorageError::Corrupt(format!(
                    "change {} is twice in envelope_new",
                    crate::hex_prefix(&hash)
                )));
            }
            j.next_seq = k.value().checked_add(1).ok_or_else(|| {
                StorageError::Corrupt("envelope_new's sequence is exhausted".into())
            })?;
        }
        Ok(j)
    }

    pub(crate) fn live_len(&self) -> usize {
        self.live.len()
    }

    /// The place the journal gives each hash, if any (the caller checks it in its snapshot).
    pub(crate) fn places(&self, hashes: &[Hash]) -> Vec<Option<Place>> {
        hashes.iter().map(|h| self.place(h)).collect()
    }

    fn place(&self, hash: &Hash) -> Option<Place> {
        self.live
            .get(hash)
            .map(|(_, p)| *p)
            .or_else(|| self.merged.get(hash).copied())
    }

    /// Up to `limit` hashes (with places) after `after`, ascending, from both maps.
    pub(crate) fn after(&self, after: Option<&Hash>, limit: usize) -> Vec<(Hash, Place)> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let live = self
            .live
            .range::<Hash, _>((lower, Bound::Unbounded))
            .map(|(h, (_, p))| (*h, *p));
        let merged = self
            .merged
            .range::<Hash, _>((lower, Bound::Unbounded))
            .map(|(h, p)| (*h, *p));
        merge_sorted(live, merged, limit)
    }

    /// Entries that no snapshot holds, as a commit's are between its publication and its
    /// commit.
    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, entries: &[(Hash, Place)]) {
        for (h, p) in entries {
            self.live.insert(*h, (u64::MAX, *p));
        }
    }

    /// Everything in `envelope_new`, in hash order, for a merge.
    pub(crate) fn to_merge(&self) -> Vec<(Hash, Place)> {
        self.live.iter().map(|(h, (_, p))| (*h, *p)).collect()
    }

    /// A merge of everything in `live` committed: it is all in `envelope_at` now.
    pub(crate) fn merged(&mut self) {
        self.merged = std::mem::take(&mut self.live)
            .into_iter()
            .map(|(h, (_, p))| (h, p))
            .collect();
    }
}

/// Two ascending iterators merged into one ascending list without repeats, at most `limit` long.
pub(crate) fn merge_sorted<T: Copy>(
    a: impl Iterator<Item = (Hash, T)>,
    b: impl Iterator<Item = (Hash, T)>,
    limit: usize,
) -> Vec<(Hash, T)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let mut out = Vec::new();
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        };
        match next {
            Some(item) => out.push(item),
            None => break,
        }
    }
    debug_assert!(
        out.windows(2).all(|w| w[0].0 < w[1].0),
        "merged list must be strictly ascending"
    );
    out
}

fn split_entry(v: &[u8; 52]) -> (Hash, Place) {
    (
        v[..32].try_into().expect("32 bytes"),
        v[32..].try_into().expect("20 bytes"),
    )
}

fn entry(hash: &Hash, place: &Place) -> [u8; 52] {
    let mut v = [0u8; 52];
    v[..32].copy_from_slice(hash);
    v[32..].copy_from_slice(place);
    v
}

/// One write transaction's changes to the journal: applied to `envelope_new` at once, and to
/// the shared [`Journal`] around the commit ([`TxnJournal::publish`], [`TxnJournal::settle`]).
#[derive(Default)]
pub(crate) struct TxnJournal {
    added: HashMap<Hash, (u64, Place)>,
    /// Hashes taken out of the shared journal's maps by this transaction's purges.
    removed: HashSet<Hash>,
    next_seq: Option<u64>,
}

/// Where a stored hash was found by the writer.
pub(crate) enum Found {
    /// In `envelope_new`, at this sequence number.
    Journal(u64),
    /// In `envelope_mid`.
    Mid,
    /// In `envelope_at`.
    Indexed,
}

impl TxnJournal {
    /// Whether `hash` is stored, as this transaction sees it.
    pub(crate) fn find(
        &self,
        shared: &Journal,
        at: &Table<'_, &'static [u8; 32], &'static [u8; 20]>,
        mid: &Table<'_, &'static [u8; 32], &'static [u8; 20]>,
        hash: &Hash,
    ) -> Result<Option<Found>> {
        if let Some((seq, _)) = self.added.get(hash) {
            return Ok(Some(Found::Journal(*seq)));
        }
        if !self.removed.contains(hash) {
            if let Some((seq, _)) = shared.live.get(hash) {
                return Ok(Some(Found::Journal(*seq)));
            }
        }
        if mid.get(hash).ctx("reading table envelope_mid")?.is_some() {
            return Ok(Some(Found::Mid));
        }
        Ok(at
            .get(hash)
            .ctx("reading table envelope_at")?
            .map(|_| Found::Indexed))
    }

    /// Appends `hash` at `place` to `envelope_new` (the caller checked it is not stored).
    pub(crate) fn add(
        &mut self,
        shared: &Journal,
        table: &mut Table<'_, u64, &'static [u8; 52]>,
        hash: &Hash,
        place: &Place,
    ) -> Result<()> {
        let seq = self.next_seq.unwrap_or(shared.next_seq);
        table
            .insert(seq, &entry(hash, place))
            .ctx("writing table envelope_new")?;
        self.next_seq = Some(seq + 1);
        // Stored again after a purge in this transaction: the new entry must outlive the
        // purge's clean-up in `settle` (the old one is replaced in `publish`).
        self.removed.remove(hash);
        let fresh = self.added.insert(*hash, (seq, *place)).is_none();
        debug_assert!(fresh, "a hash added twice in one transaction");
        Ok(())
    }

    /// Removes `hash`, found at `found`, from the journal, `envelope_mid` or `envelope_at`.
    pub(crate) fn remove(
        &mut self,
        table: &mut Table<'_, u64, &'static [u8; 52]>,
        at: &mut Table<'_, &'static [u8; 32], &'static [u8; 20]>,
        mid: &mut Table<'_, &'static [u8; 32], &'static [u8; 20]>,
        hash: &Hash,
        found: Found,
    ) -> Result<()> {
        match found {
            Found::Journal(seq) => {
                let existed = table
                    .remove(seq)
                    .ctx("writing table envelope_new")?
                    .is_some();
                debug_assert!(existed, "a journal entry missing from envelope_new");
                if self.added.remove(hash).is_none() {
                    self.removed.insert(*hash);
                }
            }
            Found::Mid => {
                mid.remove(hash).ctx("writing table envelope_mid")?;
                // The last merge's map may still name it; drop it there too.
                self.removed.insert(*hash);
            }
            Found::Indexed => {
                at.remove(hash).ctx("writing table envelope_at")?;
                self.removed.insert(*hash);
            }
        }
        Ok(())
    }

    /// Before the commit: readers see the added entries from now on (and check them in their
    /// snapshot, which holds them once the commit is visible).
    pub(crate) fn publish(&self, shared: &mut Journal) {
        for (h, e) in &self.added {
            shared.live.insert(*h, *e);
        }
        if let Some(seq) = self.next_seq {
            debug_assert!(seq >= shared.next_seq, "journal sequence must grow");
            shared.next_seq = seq;
        }
    }

    /// After the commit: on success, the purged entries leave the maps; on failure, the added
    /// ones do (nothing of the transaction landed).
    pub(crate) fn settle(self, shared: &mut Journal, committed: bool) {
        if committed {
            for h in &self.removed {
                shared.live.remove(h);
                shared.merged.remove(h);
            }
        } else {
            for h in self.added.keys() {
                shared.live.remove(h);
            }
        }
    }
}

/// Moves every journal entry into `envelope_mid`, or (when [`Merge::of`] says so) every entry
/// of `envelope_mid` and of the journal into `envelope_at` and empties `envelope_mid`; and
/// empties `envelope_new`. In the caller's transaction (the writer's merge, which also merges
/// `index_journal`); where the merge went. After the commit the caller (the writer, which alone
/// changes the journal) calls [`Journal::merged`].
pub(crate) fn merge_into(
    txn: &WriteTransaction,
    entries: &[(Hash, Place)],
    step: usize,
) -> Result<Merge> {
    debug_assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "a merge inserts in hash order"
    );
    let merge = {
        let (mut mid, mut at) = levels(txn)?;
        let (mid_len, at_len) = (
            mid.len().ctx("reading table envelope_mid")?,
            at.len().ctx("reading table envelope_at")?,
        );
        let merge = Merge::of(mid_len, entries.len() as u64, at_len, step);
        if merge == Merge::Down {
            // The middle level's entries first (in hash order, read while `envelope_at` is
            // written: another table), then the journal's. A leaf both touch is rewritten once:
            // the transaction's own pages are changed in place.
            for item in mid.iter().ctx("reading table envelope_mid")? {
                let (k, v) = item.ctx("reading table envelope_mid")?;
                insert_new(&mut at, k.value(), v.value(), "envelope_mid")?;
            }
        }
        let target = if merge == Merge::Down {
            &mut at
        } else {
            &mut mid
        };
        for (hash, place) in entries {
            insert_new(target, hash, place, "envelope_new")?;
        }
        merge
    };
    // Dropping a table frees its pages at once; entry by entry would rewrite its leaves.
    if merge == Merge::Down {
        txn.delete_table(ENVELOPE_MID)
            .ctx("emptying table envelope_mid")?;
        txn.open_table(ENVELOPE_MID)
            .ctx("opening table envelope_mid")?;
    }
    txn.delete_table(ENVELOPE_NEW)
        .ctx("emptying table envelope_new")?;
    txn.open_table(ENVELOPE_NEW)
        .ctx("opening table envelope_new")?;
    Ok(merge)
}

/// Moves the first `step` entries of `envelope_mid` (in hash order) into `envelope_at`, in the
/// caller's transaction; how many entries `envelope_mid` holds after it. Readers need nothing
/// from memory for it: each snapshot finds an entry in exactly one of the two tables.
pub(crate) fn drain_step(txn: &WriteTransaction, step: usize) -> Result<u64> {
    let (mut mid, mut at) = levels(txn)?;
    let mut last: Option<Hash> = None;
    for item in mid.iter().ctx("reading table envelope_mid")?.take(step) {
        let (k, v) = item.ctx("reading table envelope_mid")?;
        insert_new(&mut at, k.value(), v.value(), "envelope_mid")?;
        last = Some(*k.value());
    }
    if let Some(last) = last {
        mid.retain_in::<&Hash, _>(..=&last, |_, _| false)
            .ctx("writing table envelope_mid")?;
    }
    mid.len().ctx("reading table envelope_mid")
}

/// An envelope level: `hash` → `doc ‖ position`.
type Level<'t> = Table<'t, &'static [u8; 32], &'static [u8; 20]>;

/// `envelope_mid` and `envelope_at`, opened in `txn`.
fn levels(txn: &WriteTransaction) -> Result<(Level<'_>, Level<'_>)> {
    Ok((
        txn.open_table(ENVELOPE_MID)
            .ctx("opening table envelope_mid")?,
        txn.open_table(ENVELOPE_AT)
            .ctx("opening table envelope_at")?,
    ))
}

/// Inserts `hash` at `place` into a level that must not hold it: a hash in two levels breaks
/// the invariant above, and a file that breaks it must not be "repaired" silently.
fn insert_new(table: &mut Level<'_>, hash: &Hash, place: &Place, from: &str) -> Result<()> {
    let was = table
        .insert(hash, place)
        .ctx("writing an envelope level")?
        .is_some();
    match was {
        true => Err(StorageError::Corrupt(format!(
            "change {} is in two of envelope_at, envelope_mid and {from}",
            crate::hex_prefix(hash)
        ))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Hash {
        [b; 32]
    }

    #[test]
    fn merge_at_grows_with_the_store_between_its_bounds() {
        assert_eq!(merge_at(0), MERGE_MIN);
        assert_eq!(merge_at(100_000), MERGE_MIN);
        assert_eq!(merge_at(400_000), 25_000);
        assert_eq!(merge_at(1_000_000), 62_500);
        assert_eq!(merge_at(u64::MAX), MERGE_MAX);
    }

    #[test]
    fn a_merge_goes_down_while_the_base_is_small_and_once_the_middle_level_is_a_quarter_of_it() {
        assert!(merges_down(0, 1, 0), "an empty store has one level");
        assert!(merges_down(0, 16_384, 65_536));
        assert!(!merges_down(0, 16_384, 65_537));
        assert!(!merges_down(3 * 65_536, 65_536, 2_000_000));
        assert!(merges_down(7 * 65_536, 65_536, 2_000_000));
        assert!(merges_down(u64::MAX, u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn a_large_merge_down_goes_into_the_middle_level_and_drains_it_in_steps() {
        assert_eq!(Merge::of(0, 10, 400, 100), Merge::Mid);
        assert_eq!(Merge::of(90, 10, 400, 100), Merge::Down);
        assert_eq!(Merge::of(91, 10, 400, 100), Merge::MidThenDrain);
        assert_eq!(Merge::of(0, 101, 0, 100), Merge::MidThenDrain);

        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let put = |table, from: u8, to: u8| {
            let txn = db.begin_write().unwrap();
            let mut t = txn.open_table(table).unwrap();
            for i in from..to {
                t.insert(&h(i), &[i; 20]).unwrap();
            }
            drop(t);
            txn.commit().unwrap();
        };
        put(ENVELOPE_AT, 0, 40);
        put(ENVELOPE_MID, 100, 110);
        let journal: Vec<(Hash, Place)> = (200..205u8).map(|i| (h(i), [i; 20])).collect();
        let txn = db.begin_write().unwrap();
        assert_eq!(merge_into(&txn, &journal, 4).unwrap(), Merge::MidThenDrain);
        txn.commit().unwrap();
        let mut left = Vec::new();
        loop {
            let txn = db.begin_write().unwrap();
            let n = drain_step(&txn, 4).unwrap();
            txn.commit().unwrap();
            left.push(n);
            if n == 0 {
                break;
            }
        }
        assert_eq!(left, [11, 7, 3, 0], "four entries a step");
        let r = db.begin_read().unwrap();
        let at = r.open_table(ENVELOPE_AT).unwrap();
        assert_eq!(at.len().unwrap(), 55);
        assert_eq!(at.get(&h(203)).unwrap().unwrap().value(), &[203; 20]);
        assert_eq!(r.open_table(ENVELOPE_MID).unwrap().len().unwrap(), 0);
        assert_eq!(r.open_table(ENVELOPE_NEW).unwrap().len().unwrap(), 0);

        // A hash in both levels is refused, not moved.
        put(ENVELOPE_MID, 0, 1);
        let txn = db.begin_write().unwrap();
        assert!(matches!(drain_step(&txn, 4), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn merge_sorted_keeps_order_drops_repeats_and_stops_at_the_limit() {
        let a = [(h(1), 'a'), (h(3), 'a'), (h(5), 'a')];
        let b = [(h(2), 'b'), (h(3), 'b'), (h(6), 'b')];
        let all = merge_sorted(a.into_iter(), b.into_iter(), 10);
        let keys: Vec<u8> = all.iter().map(|(k, _)| k[0]).collect();
        assert_eq!(keys, [1, 2, 3, 5, 6]);
        assert_eq!(merge_sorted(a.into_iter(), b.into_iter(), 2).len(), 2);
        assert!(merge_sorted(a.into_iter(), b.into_iter(), 0).is_empty());
    }

    #[test]
    fn a_failed_commit_takes_its_entries_back_and_a_good_one_its_purges() {
        let mut shared = Journal::default();
        shared.live.insert(h(1), (0, [1; 20]));
        shared.next_seq = 1;

        let mut t = TxnJournal::default();
        t.added.insert(h(2), (1, [2; 20]));
        t.next_seq = Some(2);
        t.publish(&mut shared);
        assert_eq!(
            shared.places(&[h(2)]),
            [Some([2; 20])],
            "visible once published"
        );
        t.settle(&mut shared, false);
        assert_eq!(shared.places(&[h(1), h(2)]), [Some([1; 20]), None]);
        assert_eq!(
            shared.next_seq, 2,
            "a sequence number is never handed out twice"
        );

        let mut t = TxnJournal::default();
        t.removed.insert(h(1));
        t.publish(&mut shared);
        assert_eq!(shared.places(&[h(1)]), [Some([1; 20])], "until its commit");
        t.settle(&mut shared, true);
        assert_eq!(shared.places(&[h(1)]), [None]);
    }

    #[test]
    fn merged_entries_stay_findable_until_the_next_merge() {
        let mut shared = Journal::default();
        shared.live.insert(h(1), (0, [1; 20]));
        shared.merged();
        assert_eq!(shared.live_len(), 0);
        assert_eq!(shared.places(&[h(1)]), [Some([1; 20])]);
        assert_eq!(shared.after(None, 10), [(h(1), [1; 20])]);
        shared.live.insert(h(2), (1, [2; 20]));
        shared.merged();
        assert_eq!(shared.places(&[h(1), h(2)]), [None, Some([2; 20])]);
    }
}
