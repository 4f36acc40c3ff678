//! `index`'s journal: the newest index entries, appended in order and merged into `index` in bulk.
//!
//! **Why.** `index` is keyed by the caller's keyed hashes (a subject's token, its consent tokens,
//! its key owner), which are random. Written one commit at a time, each new subject's entries
//! land in a leaf of their own, and redb's copy-on-write rewrites that whole 4 KiB leaf and its
//! branch page in the commit: once `envelope_at` was journalled (`journal.rs`), that was most of
//! what a single write still cost (`examples/commit_cost.rs`: 341 KiB per 20-record commit at
//! 100,000 records, against 162 KiB had `index` been appended too). The key cannot follow time:
//! a consent check looks a subject up by its token alone.
//!
//! **How.** A commit appends each new entry (`key[32] ‖ doc-or-key-id[16]`, unchanged) to
//! `index_new` under the next sequence number: one leaf per commit, however many records. Memory
//! holds only where to look, one [`Slot`] per entry: a hash of its key ([`bucket`]), a hash of
//! its doc id and its sequence number (about 40-60 bytes in a hash map by bucket). A reader asks for the
//! sequence numbers in its key's bucket and reads each in its *own snapshot's* `index_new`: it
//! counts an entry only if that snapshot holds it there, whole. So memory may hold more than any snapshot (a commit's slots
//! are added before it commits, so that no snapshot taken after it misses one; a removed entry's
//! slot stays until the next merge, for snapshots from before the removal) and a reader is still
//! exact. The writer merges once the journal holds [`merge_at`] slots (half as many once the
//! writes pause: [`crate::writer::MERGE_QUIET`]): every entry of `index_new`
//! goes into `index` in key order, and `index_new` is dropped and recreated, in one transaction
//! (with the envelope journal's merge, when that is due too). Once the store is large the merge
//! goes into `index_mid` instead, and down into `index` with `index_mid`'s entries only when
//! `index_mid` would hold a quarter as many as `index` (at once, or drained in steps after the
//! group commits), as the envelope journal's (`journal.rs`, "Levels", and
//! [`crate::journal::MID_SHARE`]). Readers read `index_mid`'s range too.
//!
//! **Invariants.**
//! - An entry is in at most one of `index`, `index_mid` and `index_new`, and at most once in
//!   `index_new` (an insert looks in all three first; a merge moves in one transaction and
//!   refuses a file that breaks it: [`StorageError::Corrupt`]).
//! - Every entry of `index_new` has its slot in [`IndexJournal::slots`] (loaded at open, added
//!   before each commit). Sequence numbers are never reused while the store is open, so a slot
//!   names at most one entry ever.
//! - After a merge, the merged slots stay in `previous` until the next merge, for readers whose
//!   snapshot began before it. A read whose snapshot spans two merges (at least 32,768 index
//!   entries written meanwhile) could miss an entry; the hot read paths share a snapshot only
//!   between two commits.
//!
//! **Limits.** At most 262,144 slots ([`merge_at`]'s largest) in each of the two sets (a merge
//! follows the commit that reaches it): about 30 MiB for both at most. A merge rewrites at most
//! every leaf of `index_mid`, or of both levels when it goes down, once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction,
};

use crate::journal::Merge;
use crate::key_filter::KeyFilter;
use crate::layout::{doc_suffix, index_entry, INDEX, INDEX_MID, INDEX_NEW};
use crate::{Ctx, IndexKey, Result, StorageError};

/// One `index` entry: a 32-byte key (an index key or a key owner) and the 16-byte doc or key id.
pub(crate) type Entry = [u8; 48];

/// How many slots make the journal due for a merge when the store holds `envelopes` envelopes:
/// four times the envelope journal's threshold (65,536 to 262,144). A new consent of a new
/// subject adds three entries (its token, its consent token, its key's owner) to one envelope,
/// so `index` grows about three times as fast as `envelope_at`: at four times the threshold a
/// merge still adds about one entry per 16 in `index` (each merge rewrites up to every leaf of it
/// once), and the two merges, each a stall of the writes queued behind it, come about as often.
/// At 10,000 records (20,000 envelopes) `index` is not merged at all.
pub(crate) fn merge_at(envelopes: u64) -> usize {
    4 * crate::journal::merge_at(envelopes)
}

/// The bucket an entry is found by: a hash of its 32-byte key. Of the whole key, not a slice of
/// it: consentd starts all of one subject's keys with the same 16 bytes (`TOKEN_CLUSTER_LEN`)
/// so that they share a leaf of `index`, and a caller's keys may share any other bytes too; a
/// bucket shared by many keys would make every lookup of one read all their entries.
fn bucket(key: &[u8]) -> u64 {
    debug_assert!(key.len() >= 32, "a bucket is taken from a 32-byte key");
    words(&key[..32])
}

/// Whether any snapshot may hold an entry under `key` by `filter`, an index journal's
/// ([`IndexJournal::key_filter`]); `false` is certain (`key_filter.rs`).
pub(crate) fn may_hold(filter: &KeyFilter, key: &IndexKey) -> bool {
    filter.may_hold(bucket(key))
}

/// FxHash's step over 8-byte words: fast, and spread enough for a bucket (correctness never
/// depends on it, as readers check every entry they read).
fn words(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |h, word| {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        (h.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95)
    })
}

/// Where an entry was appended: `(bucket of its key, hash of its suffix, sequence number)`. Readers
/// range over a bucket; the writer, which looks for one entry, over a bucket and a suffix hash,
/// so that a key with many journalled docs does not make each of its inserts read them all.
type Slot = (u64, u32, u64);

/// The slot of entry `e` appended at `seq`.
fn slot(e: &Entry, seq: u64) -> Slot {
    (bucket(e), (words(&e[32..]) >> 32) as u32, seq)
}

/// Slots by bucket. A hash map, not an ordered set of slots: a consent check looks up two keys,
/// each in two generations, and a B-tree of 250,000 slots is a descent of five or six nodes,
/// each a likely cache miss. With an ordered set a check at 1,000,000 records took 10.8 µs
/// against 7.8 µs without the journal; one probe per lookup costs a miss or two.
#[derive(Default, Debug)]
struct Slots {
    by_bucket: HashMap<u64, Bucket>,
    len: usize,
}

/// The `(suffix hash, sequence)` of one bucket's slots: nearly always one, kept inline.
#[derive(Debug)]
enum Bucket {
    One((u32, u64)),
    Many(Vec<(u32, u64)>),
}

impl Slots {
    fn insert(&mut self, (b, s, seq): Slot) {
        match self.by_bucket.get_mut(&b) {
            None => {
                self.by_bucket.insert(b, Bucket::One((s, seq)));
            }
            Some(bucket) => {
                let mut all = match std::mem::replace(bucket, Bucket::Many(Vec::new())) {
                    Bucket::One(one) => vec![one],
                    Bucket::Many(many) => many,
                };
                debug_assert!(!all.contains(&(s, seq)), "a slot added twice");
                all.push((s, seq));
                *bucket = Bucket::Many(all);
            }
        }
        self.len += 1;
    }

    fn remove(&mut self, (b, s, seq): Slot) {
        let emptied = match self.by_bucket.get_mut(&b) {
            None => return,
            Some(Bucket::One(one)) => match *one == (s, seq) {
                true => true,
                false => return,
            },
            Some(Bucket::Many(many)) => {
                let Some(i) = many.iter().position(|x| *x == (s, seq)) else {
                    return;
                };
                many.swap_remove(i);
                many.is_empty()
            }
        };
        if emptied {
            self.by_bucket.remove(&b);
        }
        self.len -= 1;
    }

    /// The `(suffix hash, sequence)` slots of bucket `b`.
    fn in_bucket(&self, b: u64) -> &[(u32, u64)] {
        match self.by_bucket.get(&b) {
            None => &[],
            Some(Bucket::One(one)) => std::slice::from_ref(one),
            Some(Bucket::Many(many)) => many,
        }
    }
}

/// Where readers look for journalled entries; only the writer changes it.
#[derive(Default, Debug)]
pub(crate) struct IndexJournal {
    /// The slot of every entry appended to `index_new` since the last merge, including those
    /// removed since and those of the commit in progress.
    slots: Slots,
    /// The same for the entries the last merge moved into `index`.
    previous: Slots,
    /// The next sequence number of `index_new`.
    next_seq: u64,
    /// Every key either table holds (and some they no longer do): a lookup of any other key
    /// skips redb (`key_filter.rs`). Shared with the store's readers, who ask it without this
    /// journal's lock ([`IndexJournal::key_filter`]).
    filter: Arc<KeyFilter>,
}

impl IndexJournal {
    /// Reads `index_new`, and the keys of both tables into the filter (at open).
    pub(crate) fn load(db: &Database) -> Result<IndexJournal> {
        let r = db.begin_read().ctx("beginning a read transaction")?;
        let t = r.open_table(INDEX_NEW).ctx("opening table index_new")?;
        let index = r.open_table(INDEX).ctx("opening table index")?;
        let mid = r.open_table(INDEX_MID).ctx("opening table index_mid")?;
        let held = index.len().ctx("reading table index")?
            + mid.len().ctx("reading table index_mid")?
            + t.len().ctx("reading table index_new")?;
        let held = usize::try_from(held).unwrap_or(usize::MAX);
        let mut j = IndexJournal {
            // A quarter more than the entries held (many share a key): room to grow before a
            // second layer.
            filter: Arc::new(KeyFilter::with_capacity(held.saturating_add(held / 4))),
            ..IndexJournal::default()
        };
        for (level, name) in [
            (&index, "reading table index"),
            (&mid, "reading table index_mid"),
        ] {
            // In key order: the entries of one key (a subject's docs) follow one another.
            let mut last: Option<[u8; 32]> = None;
            for item in level.iter().ctx(name)? {
                let (k, _) = item.ctx(name)?;
                let key: [u8; 32] = k.value()[..32].try_into().expect("32 bytes");
                if last != Some(key) {
                    j.filter.insert(bucket(&key));
                    last = Some(key);
                }
            }
        }
        for item in t.iter().ctx("reading table index_new")? {
            let (k, v) = item.ctx("reading table index_new")?;
            j.filter.insert(bucket(v.value()));
            j.slots.insert(slot(v.value(), k.value()));
            j.next_seq = k
                .value()
                .checked_add(1)
                .ok_or_else(|| StorageError::Corrupt("index_new's sequence is exhausted".into()))?;
        }
        // All three tables as of this snapshot, and the writer, which adds every later entry before
        // its commit, has not started: the filter holds every key a reader can find.
        j.filter.set_ready();
        Ok(j)
    }

    /// The key filter, for lookups that take no lock ([`may_hold`]); it keeps growing with
    /// every commit this journal publishes.
    pub(crate) fn key_filter(&self) -> Arc<KeyFilter> {
        Arc::clone(&self.filter)
    }

    #[cfg(test)]
    fn may_hold(&self, key: &IndexKey) -> bool {
        may_hold(&self.filter, key)
    }

    /// Bytes the key filter takes, for the open's log line.
    pub(crate) fn filter_bytes(&self) -> usize {
        self.filter.bytes()
    }

    /// A slot as if an entry of `key` were appended at `seq` (which may hold anything or
    /// nothing): what readers must see through.
    #[cfg(test)]
    pub(crate) fn add_slot_for_test(&mut self, key: &IndexKey, seq: u64) {
        self.slots.insert((bucket(key), 0, seq));
    }

    /// Slots held for the current generation (what [`merge_at`] is compared with).
    pub(crate) fn len(&self) -> usize {
        self.slots.len
    }

    /// The sequence numbers under which some snapshot may hold an entry of `key` in `index_new`.
    pub(crate) fn candidates(&self, key: &IndexKey) -> Vec<u64> {
        let b = bucket(key);
        let (now, before) = (self.slots.in_bucket(b), self.previous.in_bucket(b));
        if now.is_empty() && before.is_empty() {
            // Most keys: no allocation.
            return Vec::new();
        }
        now.iter().chain(before).map(|&(_, seq)| seq).collect()
    }

    /// A merge of everything in `index_new` committed: it is all in `index` now.
    pub(crate) fn merged(&mut self) {
        self.previous = std::mem::take(&mut self.slots);
    }
}

/// The 16-byte suffixes (doc ids, or key ids under a key owner) of `key`'s entries in one
/// snapshot: `index`'s and `index_mid`'s ranges, plus each of `candidates` that the snapshot's
/// `index_new` holds under `key`. Ascending, without repeats.
pub(crate) fn suffixes_under(
    index: &impl ReadableTable<&'static [u8; 48], ()>,
    index_mid: &impl ReadableTable<&'static [u8; 48], ()>,
    index_new: Option<&impl ReadableTable<u64, &'static [u8; 48]>>,
    candidates: &[u64],
    key: &IndexKey,
) -> Result<Vec<[u8; 16]>> {
    let (lo, hi) = (index_entry(key, &[0; 16]), index_entry(key, &[0xff; 16]));
    let mut out = Vec::new();
    for item in index
        .range::<&[u8; 48]>(&lo..=&hi)
        .ctx("reading table index")?
    {
        let (k, _) = item.ctx("reading table index")?;
        out.push(doc_suffix(k.value()));
    }
    let indexed = out.len();
    for item in index_mid
        .range::<&[u8; 48]>(&lo..=&hi)
        .ctx("reading table index_mid")?
    {
        let (k, _) = item.ctx("reading table index_mid")?;
        out.push(doc_suffix(k.value()));
    }
    if let Some(index_new) = index_new {
        for seq in candidates {
            if let Some(v) = index_new.get(seq).ctx("reading table index_new")? {
                if v.value()[..32] == key[..] {
                    out.push(doc_suffix(v.value()));
                }
            }
        }
    } else {
        debug_assert!(candidates.is_empty(), "candidates without index_new");
    }
    if out.len() > indexed {
        out.sort_unstable();
        let found = out.len();
        out.dedup();
        if out.len() != found {
            // The invariant above; never answered around.
            return Err(StorageError::Corrupt(
                "an index entry is in two of index, index_mid and index_new".into(),
            ));
        }
    }
    Ok(out)
}

/// Where the writer found an entry.
enum Found {
    /// In `index_new`, at this sequence number.
    Journal(u64),
    /// In `index_mid`.
    Mid,
    /// In `index`.
    Indexed,
}

/// One write transaction's entries: written to `index_new` at once, and published to the shared
/// [`IndexJournal`] around the commit ([`TxnIndex::publish`], [`TxnIndex::settle`]).
#[derive(Default)]
pub(crate) struct TxnIndex {
    /// The slots of the entries this transaction appended.
    added: BTreeSet<Slot>,
    next_seq: Option<u64>,
}

impl TxnIndex {
    /// Where `e` is, as this transaction sees it. Every slot of its bucket is checked in this
    /// transaction's `index_new`, so one removed meanwhile is not found.
    fn find(
        &self,
        shared: &IndexJournal,
        index: &Table<'_, &'static [u8; 48], ()>,
        index_mid: &Table<'_, &'static [u8; 48], ()>,
        index_new: &Table<'_, u64, &'static [u8; 48]>,
        e: &Entry,
    ) -> Result<Option<Found>> {
        let (b, s, _) = slot(e, 0);
        let shared_seqs = shared.slots.in_bucket(b).iter();
        let shared_seqs = shared_seqs.filter(|(s2, _)| *s2 == s).map(|&(_, seq)| seq);
        let added = self.added.range((b, s, 0)..=(b, s, u64::MAX));
        for seq in shared_seqs.chain(added.map(|&(_, _, seq)| seq)) {
            if let Some(v) = index_new.get(seq).ctx("reading table index_new")? {
                if v.value() == e {
                    return Ok(Some(Found::Journal(seq)));
                }
            }
        }
        if index_mid.get(e).ctx("reading table index_mid")?.is_some() {
            return Ok(Some(Found::Mid));
        }
        Ok(index
            .get(e)
            .ctx("reading table index")?
            .map(|_| Found::Indexed))
    }

    /// Stores `e` unless it is stored already (in any level): an insert into `index` as it
    /// was, appended to `index_new`.
    pub(crate) fn insert(
        &mut self,
        shared: &IndexJournal,
        index: &Table<'_, &'static [u8; 48], ()>,
        index_mid: &Table<'_, &'static [u8; 48], ()>,
        index_new: &mut Table<'_, u64, &'static [u8; 48]>,
        e: &Entry,
    ) -> Result<()> {
        if self.find(shared, index, index_mid, index_new, e)?.is_some() {
            return Ok(());
        }
        self.append(shared, index_new, e)
    }

    /// Stores `e`, which the caller knows is in no level: what a record's metadata does not
    /// list, or the owner entry of a key stored for the first time, is not indexed. Skips
    /// [`TxnIndex::insert`]'s lookup in `index`, a random read in a table as large as the office
    /// (3-4 % of all CPU samples of a cold sync at 1,000,000 records, most of them cache misses).
    pub(crate) fn insert_absent(
        &mut self,
        shared: &IndexJournal,
        index: &Table<'_, &'static [u8; 48], ()>,
        index_mid: &Table<'_, &'static [u8; 48], ()>,
        index_new: &mut Table<'_, u64, &'static [u8; 48]>,
        e: &Entry,
    ) -> Result<()> {
        debug_assert!(
            matches!(self.find(shared, index, index_mid, index_new, e), Ok(None)),
            "an index entry said to be absent is stored"
        );
        self.append(shared, index_new, e)
    }

    fn append(
        &mut self,
        shared: &IndexJournal,
        index_new: &mut Table<'_, u64, &'static [u8; 48]>,
        e: &Entry,
    ) -> Result<()> {
        let seq = self.next_seq.unwrap_or(shared.next_seq);
        index_new.insert(seq, e).ctx("writing table index_new")?;
        self.next_seq =
            Some(seq.checked_add(1).ok_or_else(|| {
                StorageError::Corrupt("index_new's sequence is exhausted".into())
            })?);
        self.added.insert(slot(e, seq));
        Ok(())
    }

    /// Removes `e` from whichever level holds it; whether it was stored.
    pub(crate) fn remove(
        &mut self,
        shared: &IndexJournal,
        index: &mut Table<'_, &'static [u8; 48], ()>,
        index_mid: &mut Table<'_, &'static [u8; 48], ()>,
        index_new: &mut Table<'_, u64, &'static [u8; 48]>,
        e: &Entry,
    ) -> Result<bool> {
        match self.find(shared, index, index_mid, index_new, e)? {
            // Its slot stays in memory: snapshots from before this commit still hold it.
            Some(Found::Journal(seq)) => {
                index_new.remove(seq).ctx("writing table index_new")?;
                Ok(true)
            }
            Some(Found::Mid) => {
                index_mid.remove(e).ctx("writing table index_mid")?;
                Ok(true)
            }
            Some(Found::Indexed) => {
                index.remove(e).ctx("writing table index")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Before the commit: readers find the added entries from now on (and read them in their
    /// own snapshot, which holds them once the commit is visible).
    pub(crate) fn publish(&self, shared: &mut IndexJournal) {
        for slot in &self.added {
            shared.slots.insert(*slot);
            shared.filter.insert(slot.0);
        }
        if let Some(seq) = self.next_seq {
            debug_assert!(seq >= shared.next_seq, "index_new's sequence must grow");
            shared.next_seq = seq;
        }
    }

    /// After the commit: a failed one's slots leave memory (nothing of it landed; its sequence
    /// numbers are not handed out again).
    pub(crate) fn settle(self, shared: &mut IndexJournal, committed: bool) {
        if !committed {
            for slot in &self.added {
                shared.slots.remove(*slot);
            }
        }
    }
}

/// Moves every entry of `index_new` into `index_mid`, or (when [`Merge::of`] says so) every
/// entry of `index_mid` and of `index_new` into `index` and empties `index_mid`; in key order;
/// and empties `index_new`. In the caller's transaction; how many entries left `index_new`, and
/// where they went. After the commit the caller calls [`IndexJournal::merged`].
pub(crate) fn merge_into(txn: &WriteTransaction, step: usize) -> Result<(usize, Merge)> {
    let mut entries: Vec<Entry> = {
        let t = txn.open_table(INDEX_NEW).ctx("opening table index_new")?;
        let mut out = Vec::new();
        for item in t.iter().ctx("reading table index_new")? {
            out.push(*item.ctx("reading table index_new")?.1.value());
        }
        out
    };
    entries.sort_unstable();
    if entries.windows(2).any(|w| w[0] == w[1]) {
        return Err(StorageError::Corrupt(
            "an index entry is twice in index_new".into(),
        ));
    }
    let merge = {
        let mut mid = txn.open_table(INDEX_MID).ctx("opening table index_mid")?;
        let mut index = txn.open_table(INDEX).ctx("opening table index")?;
        let (mid_len, index_len) = (
            mid.len().ctx("reading table index_mid")?,
            index.len().ctx("reading table index")?,
        );
        let merge = Merge::of(mid_len, entries.len() as u64, index_len, step);
        if merge == Merge::Down {
            // As `journal::merge_into`: the middle level's entries first, then the journal's.
            for item in mid.iter().ctx("reading table index_mid")? {
                insert_new(&mut index, item.ctx("reading table index_mid")?.0.value())?;
            }
        }
        let target = if merge == Merge::Down {
            &mut index
        } else {
            &mut mid
        };
        for e in &entries {
            insert_new(target, e)?;
        }
        merge
    };
    // Dropping a table frees its pages at once; entry by entry would rewrite its leaves.
    if merge == Merge::Down {
        txn.delete_table(INDEX_MID)
            .ctx("emptying table index_mid")?;
        txn.open_table(INDEX_MID).ctx("opening table index_mid")?;
    }
    txn.delete_table(INDEX_NEW)
        .ctx("emptying table index_new")?;
    txn.open_table(INDEX_NEW).ctx("opening table index_new")?;
    Ok((entries.len(), merge))
}

/// Moves the first `step` entries of `index_mid` (in key order) into `index`, in the caller's
/// transaction; how many entries `index_mid` holds after it (`journal::drain_step`).
pub(crate) fn drain_step(txn: &WriteTransaction, step: usize) -> Result<u64> {
    let mut mid = txn.open_table(INDEX_MID).ctx("opening table index_mid")?;
    let mut index = txn.open_table(INDEX).ctx("opening table index")?;
    let mut last: Option<Entry> = None;
    for item in mid.iter().ctx("reading table index_mid")?.take(step) {
        let e = *item.ctx("reading table index_mid")?.0.value();
        insert_new(&mut index, &e)?;
        last = Some(e);
    }
    if let Some(last) = last {
        mid.retain_in::<&Entry, _>(..=&last, |_, _| false)
            .ctx("writing table index_mid")?;
    }
    mid.len().ctx("reading table index_mid")
}

/// Inserts `e` into a level that must not hold it (the invariant above; a file that breaks it
/// is refused, not repaired).
fn insert_new(level: &mut Table<'_, &'static [u8; 48], ()>, e: &Entry) -> Result<()> {
    match level.insert(e, ()).ctx("writing an index level")?.is_some() {
        true => Err(StorageError::Corrupt(
            "an index entry is in two of index, index_mid and index_new".into(),
        )),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_at_is_four_times_the_envelope_journals_between_its_bounds() {
        assert_eq!(merge_at(0), 65_536);
        assert_eq!(merge_at(1_000_000), 250_000);
        assert_eq!(merge_at(u64::MAX), 262_144);
    }

    #[test]
    fn slots_of_a_bucket_are_found_counted_and_removed_one_by_one() {
        let mut slots = Slots::default();
        slots.insert((7, 1, 10));
        assert_eq!(slots.in_bucket(7), [(1, 10)]);
        slots.insert((7, 2, 11));
        slots.insert((8, 1, 12));
        assert_eq!(slots.in_bucket(7), [(1, 10), (2, 11)]);
        assert_eq!(slots.len, 3);
        slots.remove((7, 1, 99)); // not there: nothing changes
        slots.remove((7, 1, 10));
        assert_eq!(slots.in_bucket(7), [(2, 11)]);
        slots.remove((7, 2, 11));
        slots.remove((8, 1, 12));
        assert!(slots.in_bucket(7).is_empty() && slots.in_bucket(8).is_empty());
        assert_eq!(
            (slots.len, slots.by_bucket.len()),
            (0, 0),
            "emptied buckets are dropped"
        );
    }

    #[test]
    fn keys_differing_in_any_byte_fall_in_different_buckets() {
        let key = [7u8; 32];
        let mut buckets = std::collections::HashSet::new();
        for i in 0..32 {
            for v in [0u8, 1, 0x80, 0xff] {
                let mut k = key;
                k[i] = v;
                buckets.insert(bucket(&k));
            }
        }
        // 32 positions × 4 values, none of them `key`'s own 7: 128 distinct keys.
        assert_eq!(buckets.len(), 128);
        let entry = index_entry(&key, &[9; 16]);
        assert_eq!(
            bucket(&entry),
            bucket(&key),
            "an entry's bucket is its key's"
        );
    }

    /// The key filter at open holds every key of `index`, `index_mid` and `index_new` (the
    /// invariant that lets a lookup skip redb), and a published commit's keys from then on.
    #[test]
    fn the_filter_loaded_at_open_holds_every_levels_keys_and_each_published_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        let key = |i: u32| -> IndexKey {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[4..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
            k
        };
        {
            let txn = db.begin_write().unwrap();
            let mut index = txn.open_table(INDEX).unwrap();
            let mut index_mid = txn.open_table(INDEX_MID).unwrap();
            let mut index_new = txn.open_table(INDEX_NEW).unwrap();
            for i in 0..2_000u32 {
                // Two docs under each key, as a subject's records are; the last quarter's in
                // the middle level.
                let level = if i < 1_500 {
                    &mut index
                } else {
                    &mut index_mid
                };
                level.insert(&index_entry(&key(i), &[1; 16]), ()).unwrap();
                level.insert(&index_entry(&key(i), &[2; 16]), ()).unwrap();
            }
            for i in 2_000..3_000u32 {
                index_new
                    .insert(u64::from(i), &index_entry(&key(i), &[3; 16]))
                    .unwrap();
            }
            drop((index, index_mid, index_new));
            txn.commit().unwrap();
        }
        let mut j = IndexJournal::load(&db).unwrap();
        assert!(
            (0..3_000).all(|i| j.may_hold(&key(i))),
            "a stored key is missing"
        );
        let strangers = (10_000..20_000).filter(|&i| j.may_hold(&key(i))).count();
        assert!(strangers < 300, "{strangers} of 10,000 unknown keys held");

        let fresh = key(50_000);
        let mut t = TxnIndex::default();
        t.added.insert(slot(&index_entry(&fresh, &[4; 16]), 3_000));
        t.next_seq = Some(3_001);
        t.publish(&mut j);
        assert!(j.may_hold(&fresh), "a published key is missing");
    }

    #[test]
    fn candidates_come_from_both_generations_and_a_failed_commit_takes_its_own_back() {
        let key = [3u8; 32];
        let mut shared = IndexJournal::default();
        let mut t = TxnIndex::default();
        t.added.insert(slot(&index_entry(&key, &[1; 16]), 0));
        t.next_seq = Some(1);
        t.publish(&mut shared);
        assert_eq!(shared.candidates(&key), [0]);
        t.settle(&mut shared, true);
        shared.merged();
        assert_eq!(shared.len(), 0);
        assert_eq!(shared.candidates(&key), [0], "kept for older snapshots");

        let mut t = TxnIndex::default();
        t.added.insert(slot(&index_entry(&key, &[2; 16]), 1));
        t.next_seq = Some(2);
        t.publish(&mut shared);
        assert_eq!(shared.candidates(&key), [1, 0]);
        t.settle(&mut shared, false);
        assert_eq!(shared.candidates(&key), [0]);
        assert_eq!(
            shared.next_seq, 2,
            "a sequence number is never handed out twice"
        );
        shared.merged();
        assert!(shared.candidates(&key).is_empty());
    }
}
