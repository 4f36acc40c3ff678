//! Items of a replicated set, their fingerprints, and the sorted set the reconciliation reads.
//!
//! Every replicated set (tombstones, envelopes, checkpoints) is a set of [`Item`]s: a timestamp
//! and a 32-byte id (for an envelope, the Automerge change hash). Items sort by (timestamp, id), so
//! recent items cluster at the end of the order and a peer that was offline for an hour differs
//! from the others only in the last few ranges.
//!
//! A range's fingerprint is the one negentropy uses: the sum of its ids as 256-bit little-endian
//! integers mod 2^256, hashed with the count. Sums are incremental (add on insert, subtract on
//! remove), which is what lets [`ItemSet`] answer a range's fingerprint from per-chunk sums, and
//! lets [`Without`] subtract a hidden subset without a pass over the whole set.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// Largest timestamp an item may carry. `u64::MAX` is reserved for the "infinity" bound that
/// closes the last range of a reconciliation message.
pub const TIMESTAMP_MAX: u64 = u64::MAX - 1;
/// Length of a range fingerprint on the wire.
pub const FINGERPRINT_LEN: usize = 16;
/// Items per chunk of an [`ItemSet`] before the chunk splits in two. Small enough that an insert
/// moves at most 10 KB (256 items of 40 bytes); a million-item set then has 4,000-8,000 chunks,
/// which its chunk ranks ([`ChunkRanks`]) answer in ~13 steps. 1,024 until the thirty-fifth
/// session, when a million random inserts (a cold sync's subject keys; `examples/item_set.rs`)
/// took 1.65-1.70 s with the chunk ranks and 1,024, 1.34-1.43 s with 512, 1.10-1.26 s with 256;
/// a set filled at random holds 57 MB at 256 against 53 MB before.
pub const CHUNK_ITEMS_MAX: usize = 256;

/// One element of a replicated set. Ordered by timestamp, then id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    pub timestamp: u64,
    pub id: [u8; 32],
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Item({}, {})",
            self.timestamp,
            hex::encode(&self.id[..8])
        )
    }
}

impl Item {
    /// An item; timestamps above [`TIMESTAMP_MAX`] are clamped to it.
    pub fn new(timestamp: u64, id: [u8; 32]) -> Item {
        Item {
            timestamp: timestamp.min(TIMESTAMP_MAX),
            id,
        }
    }

    /// The lowest bound: every item is at or above it.
    pub const MIN: Item = Item {
        timestamp: 0,
        id: [0; 32],
    };

    /// The "infinity" bound: above every item (items never carry `u64::MAX`).
    pub const INFINITY: Item = Item {
        timestamp: u64::MAX,
        id: [0; 32],
    };

    pub fn is_infinity(&self) -> bool {
        self.timestamp == u64::MAX
    }
}

/// A 256-bit sum of ids (mod 2^256), as four little-endian u64 limbs.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Accumulator([u64; 4]);

impl Accumulator {
    fn limbs(id: &[u8; 32]) -> [u64; 4] {
        let mut l = [0u64; 4];
        for (i, limb) in l.iter_mut().enumerate() {
            *limb = u64::from_le_bytes(id[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        l
    }

    fn add_limbs(&mut self, o: [u64; 4]) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(o) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            *a = s2;
            carry = c1 || c2;
        }
    }

    fn sub_limbs(&mut self, o: [u64; 4]) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(o) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(borrow as u64);
            *a = d2;
            borrow = b1 || b2;
        }
    }

    pub fn add(&mut self, id: &[u8; 32]) {
        self.add_limbs(Self::limbs(id));
    }

    pub fn sub(&mut self, id: &[u8; 32]) {
        self.sub_limbs(Self::limbs(id));
    }

    pub fn add_acc(&mut self, other: &Accumulator) {
        self.add_limbs(other.0);
    }

    pub fn sub_acc(&mut self, other: &Accumulator) {
        self.sub_limbs(other.0);
    }

    /// `SHA-256(sum as 32 little-endian bytes ‖ LEB128(count))`, first 16 bytes. The count is
    /// hashed in so that sets whose sums collide by construction (e.g. `{a, b}` and `{a+b}`) still
    /// differ unless their sizes match too.
    pub fn fingerprint(&self, count: u64) -> [u8; FINGERPRINT_LEN] {
        let mut h = Sha256::new();
        for limb in self.0 {
            h.update(limb.to_le_bytes());
        }
        let mut buf = Vec::with_capacity(10);
        crate::wire::put_varint(&mut buf, count);
        h.update(&buf);
        let digest = h.finalize();
        digest[..FINGERPRINT_LEN]
            .try_into()
            .expect("SHA-256 is longer than a fingerprint")
    }
}

/// Count and id sum of a range: everything a fingerprint is made of.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Summary {
    pub count: u64,
    pub sum: Accumulator,
}

impl Summary {
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        self.sum.fingerprint(self.count)
    }
}

/// What the reconciliation needs from a local set: read-only queries over half-open ranges
/// `[lo, hi)` of the (timestamp, id) order. Bounds need not be members of the set.
///
/// Implemented by [`ItemSet`] and by [`Without`] (a set minus a hidden subset, e.g. the records a
/// transfer policy keeps from one peer).
pub trait SetView {
    /// Count and id sum of the items in `[lo, hi)`.
    fn summary(&self, lo: &Item, hi: &Item) -> Summary;
    /// Calls `f` on each item in `[lo, hi)`, in order, until it returns `false`.
    fn for_each_in(&self, lo: &Item, hi: &Item, f: &mut dyn FnMut(&Item) -> bool);
    /// Up to `buckets - 1` items of `[lo, hi)` that split it into `buckets` parts of roughly
    /// equal size, in increasing order. Each returned item starts a part; the first part starts
    /// at `lo`. Fewer are returned when the range holds fewer items.
    fn split_points(&self, lo: &Item, hi: &Item, buckets: usize) -> Vec<Item>;
    /// Whether `item` is in the view.
    fn contains(&self, item: &Item) -> bool;
    /// Number of items in the view.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The item immediately before `item` in the view (the greatest item below it), if any.
    fn predecessor(&self, item: &Item) -> Option<Item>;
}

/// A borrowed view is a view, so a host can hand out `Box::new(&its_set)`.
impl<T: SetView + ?Sized> SetView for &T {
    fn summary(&self, lo: &Item, hi: &Item) -> Summary {
        (**self).summary(lo, hi)
    }
    fn for_each_in(&self, lo: &Item, hi: &Item, f: &mut dyn FnMut(&Item) -> bool) {
        (**self).for_each_in(lo, hi, f)
    }
    fn split_points(&self, lo: &Item, hi: &Item, buckets: usize) -> Vec<Item> {
        (**self).split_points(lo, hi, buckets)
    }
    fn contains(&self, item: &Item) -> bool {
        (**self).contains(item)
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn predecessor(&self, item: &Item) -> Option<Item> {
        (**self).predecessor(item)
    }
}

#[derive(Clone, Debug, Default)]
struct Chunk {
    items: Vec<Item>,
    sum: Accumulator,
}

impl Chunk {
    fn from_items(items: Vec<Item>) -> Chunk {
        let mut sum = Accumulator::default();
        for it in &items {
            sum.add(&it.id);
        }
        Chunk { items, sum }
    }
}

/// The chunks' item counts as a Fenwick tree: the rank of a chunk's first item, and the chunk
/// holding a given rank, each in O(log chunks); an item added to or taken from a chunk in
/// O(log chunks).
///
/// Why not a plain array of each chunk's first rank (until the thirty-fifth session): every
/// insert or remove then rewrote the ranks of all later chunks, O(chunks). A subject key's item
/// lands anywhere in the key set, so a cold sync of a million records (a million new keys) spent
/// 1.5-2.2 s inserting them, the last quarter at 2.1-2.3 µs each, under the lock every sync
/// session reads through; 1.0-1.1 s with these ranks and smaller chunks, 1.4-1.5 µs each
/// (`examples/item_set.rs`; BENCHMARKS.md, thirty-fifth session).
#[derive(Clone, Debug, Default)]
struct ChunkRanks {
    /// 1-based: `tree[k]` counts the items of chunks `k - (k & -k) .. k` (0-based, half open).
    tree: Vec<usize>,
}

impl ChunkRanks {
    /// The tree for chunks of these sizes, in O(chunks).
    fn build(sizes: impl ExactSizeIterator<Item = usize>) -> ChunkRanks {
        let mut tree = Vec::with_capacity(sizes.len() + 1);
        tree.push(0);
        tree.extend(sizes);
        for k in 1..tree.len() {
            let parent = k + (k & k.wrapping_neg());
            if parent < tree.len() {
                tree[parent] += tree[k];
            }
        }
        ChunkRanks { tree }
    }

    fn chunks(&self) -> usize {
        self.tree.len().saturating_sub(1)
    }

    /// `n` items more in chunk `ci`.
    fn add(&mut self, ci: usize, n: usize) {
        let mut k = ci + 1;
        while k < self.tree.len() {
            self.tree[k] += n;
            k += k & k.wrapping_neg();
        }
    }

    /// `n` items fewer in chunk `ci` (which holds at least `n`).
    fn sub(&mut self, ci: usize, n: usize) {
        let mut k = ci + 1;
        while k < self.tree.len() {
            debug_assert!(self.tree[k] >= n, "a chunk's count would go negative");
            self.tree[k] -= n;
            k += k & k.wrapping_neg();
        }
    }

    /// A new last chunk of `size` items, in O(log chunks): sets that grow at their end (items
    /// made in time order) split their last chunk again and again.
    fn push(&mut self, size: usize) {
        if self.tree.is_empty() {
            self.tree.push(0);
        }
        let k = self.tree.len();
        // Node `k` counts chunks `k - lowbit(k) .. k`: the new one and those before it that
        // nodes below `k` already count.
        let covered = self.before(k - 1) - self.before(k - (k & k.wrapping_neg()));
        self.tree.push(size + covered);
    }

    /// Items in chunks before `ci`: the rank of chunk `ci`'s first item.
    fn before(&self, ci: usize) -> usize {
        debug_assert!(ci <= self.chunks(), "chunk {ci} past the end");
        let (mut k, mut sum) = (ci, 0);
        while k > 0 {
            sum += self.tree[k];
            k &= k - 1;
        }
        sum
    }

    /// The chunk holding rank `rank` (which must be below the set's length): the last chunk
    /// with fewer than `rank + 1` items before it. Empty chunks are passed over.
    fn chunk_of(&self, rank: usize) -> usize {
        let n = self.chunks();
        let (mut pos, mut left) = (0, rank);
        let mut step = if n == 0 { 0 } else { 1 << n.ilog2() };
        while step > 0 {
            if pos + step <= n && self.tree[pos + step] <= left {
                pos += step;
                left -= self.tree[pos];
            }
            step >>= 1;
        }
        debug_assert!(pos < n, "rank {rank} past the end");
        pos
    }
}

/// A sorted, de-duplicated set of items held in chunks of at most [`CHUNK_ITEMS_MAX`], each with
/// its id sum, so that an insert costs O(chunk + log chunks) (and O(chunks) once in ~128, when a
/// chunk splits anywhere but at the end) and a range fingerprint costs O(chunks + chunk) rather
/// than O(range). A million items take ~42 MB built at once
/// ([`ItemSet::from_sorted_unique`]), ~57 MB inserted one by one in random order.
///
/// The daemon keeps one per replicated set in memory (rebuilt from storage at start-up, updated on
/// every commit); the sync session reads it through [`SetView`].
#[derive(Clone, Debug, Default)]
pub struct ItemSet {
    chunks: Vec<Chunk>,
    /// How many items each chunk holds, for ranks.
    ranks: ChunkRanks,
    len: usize,
}

impl FromIterator<Item> for ItemSet {
    fn from_iter<T: IntoIterator<Item = Item>>(iter: T) -> Self {
        let mut items: Vec<Item> = iter.into_iter().collect();
        items.sort_unstable();
        items.dedup();
        ItemSet::from_sorted_unique(items)
    }
}

impl ItemSet {
    pub fn new() -> ItemSet {
        ItemSet::default()
    }

    /// Builds from items already sorted and unique (checked in debug builds).
    pub fn from_sorted_unique(items: Vec<Item>) -> ItemSet {
        debug_assert!(
            items.windows(2).all(|w| w[0] < w[1]),
            "from_sorted_unique given unsorted or duplicate items"
        );
        let len = items.len();
        let half = CHUNK_ITEMS_MAX / 2;
        let chunks: Vec<Chunk> = items
            .chunks(half.max(1))
            .map(|c| Chunk::from_items(c.to_vec()))
            .collect();
        let mut set = ItemSet {
            chunks,
            ranks: ChunkRanks::default(),
            len,
        };
        set.reindex();
        set
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All items, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Item> + '_ {
        self.chunks.iter().flat_map(|c| c.items.iter())
    }

    /// Fingerprint-ready summary of the whole set (e.g. for a state digest).
    pub fn total(&self) -> Summary {
        let mut sum = Accumulator::default();
        for c in &self.chunks {
            sum.add_acc(&c.sum);
        }
        Summary {
            count: self.len as u64,
            sum,
        }
    }

    /// Index of the chunk that holds or would hold `item`.
    fn chunk_for(&self, item: &Item) -> usize {
        // The last chunk whose first item is <= item; chunk 0 when item is below all.
        let after = self
            .chunks
            .partition_point(|c| c.items.first().is_some_and(|f| f <= item));
        after.saturating_sub(1)
    }

    /// Rebuilds the chunk ranks after a chunk was inserted before the last or removed
    /// (O(chunks); a split of the last chunk pushes its rank instead, [`ChunkRanks::push`]).
    fn reindex(&mut self) {
        self.ranks = ChunkRanks::build(self.chunks.iter().map(|c| c.items.len()));
        debug_assert_eq!(
            self.ranks.before(self.chunks.len()),
            self.len,
            "chunk ranks out of step with the item count"
        );
    }

    /// Inserts `item`; returns whether it was new.
    pub fn insert(&mut self, item: Item) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::default());
            self.reindex();
        }
        let ci = self.chunk_for(&item);
        let chunk = &mut self.chunks[ci];
        match chunk.items.binary_search(&item) {
            Ok(_) => return false,
            Err(pos) => {
                chunk.items.insert(pos, item);
                chunk.sum.add(&item.id);
            }
        }
        self.len += 1;
        if chunk.items.len() > CHUNK_ITEMS_MAX {
            let tail = Chunk::from_items(chunk.items.split_off(chunk.items.len() / 2));
            // The half left behind kept the capacity it doubled to: give back all but one
            // chunk's worth, or a set filled in random order holds twice its items' memory.
            chunk.items.shrink_to(CHUNK_ITEMS_MAX);
            chunk.sum.sub_acc(&tail.sum);
            let moved = tail.items.len();
            if ci + 1 == self.chunks.len() {
                // The last chunk split: its tail becomes a new last chunk.
                self.ranks.add(ci, 1);
                self.ranks.sub(ci, moved);
                self.ranks.push(moved);
                self.chunks.push(tail);
            } else {
                self.chunks.insert(ci + 1, tail);
                self.reindex();
            }
        } else {
            self.ranks.add(ci, 1);
        }
        true
    }

    /// Inserts many items at once; returns how many were new. Sorts them and merges them with
    /// the set in one pass, O(n + m log m). One [`ItemSet::insert`] each re-indexes every later
    /// chunk and shifts half a chunk, which for a million items in random order (subject keys,
    /// at a daemon's start-up) grew faster than the count: most of a restart at 1,000,000
    /// records. For a few items into a large set, `insert` each is cheaper.
    pub fn insert_many(&mut self, mut items: Vec<Item>) -> usize {
        items.sort_unstable();
        items.dedup();
        let before = self.len;
        if items.is_empty() {
            return 0;
        }
        if before == 0 {
            *self = ItemSet::from_sorted_unique(items);
            return self.len;
        }
        let mut merged = Vec::with_capacity(before + items.len());
        let mut new = items.into_iter().peekable();
        for old in self.iter().copied() {
            while let Some(n) = new.next_if(|n| *n < old) {
                merged.push(n);
            }
            // Held already: keep one.
            new.next_if_eq(&old);
            merged.push(old);
        }
        merged.extend(new);
        *self = ItemSet::from_sorted_unique(merged);
        debug_assert!(self.len >= before, "a merge never loses items");
        self.len - before
    }

    /// Removes `item`; returns whether it was present.
    pub fn remove(&mut self, item: &Item) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let ci = self.chunk_for(item);
        let chunk = &mut self.chunks[ci];
        match chunk.items.binary_search(item) {
            Err(_) => return false,
            Ok(pos) => {
                chunk.items.remove(pos);
                chunk.sum.sub(&item.id);
            }
        }
        self.len -= 1;
        if chunk.items.is_empty() {
            self.chunks.remove(ci);
            self.reindex();
        } else {
            self.ranks.sub(ci, 1);
        }
        true
    }

    pub fn contains(&self, item: &Item) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        self.chunks[self.chunk_for(item)]
            .items
            .binary_search(item)
            .is_ok()
    }

    /// Global rank of `bound`: how many items are below it.
    pub fn rank(&self, bound: &Item) -> usize {
        if self.chunks.is_empty() {
            return 0;
        }
        let ci = self.chunk_for(bound);
        self.ranks.before(ci) + self.chunks[ci].items.partition_point(|it| it < bound)
    }

    /// The item of rank `i` (0-based).
    pub fn get(&self, i: usize) -> Option<&Item> {
        if i >= self.len {
            return None;
        }
        let ci = self.ranks.chunk_of(i);
        self.chunks[ci].items.get(i - self.ranks.before(ci))
    }

    /// Summary of the items whose ranks are in `ranks`.
    fn summary_ranks(&self, ranks: Range<usize>) -> Summary {
        let mut out = Summary::default();
        if ranks.start >= ranks.end {
            return out;
        }
        out.count = (ranks.end - ranks.start) as u64;
        let first = self.ranks.chunk_of(ranks.start);
        let last = self.ranks.chunk_of(ranks.end - 1);
        let mut start = self.ranks.before(first);
        for ci in first..=last {
            let c = &self.chunks[ci];
            let lo = ranks.start.saturating_sub(start);
            let hi = (ranks.end - start).min(c.items.len());
            start += c.items.len();
            if lo == 0 && hi == c.items.len() {
                out.sum.add_acc(&c.sum);
            } else if hi - lo <= c.items.len() / 2 {
                for it in &c.items[lo..hi] {
                    out.sum.add(&it.id);
                }
            } else {
                // Fewer additions to take the excluded ends off the chunk's sum.
                let mut s = c.sum;
                for it in c.items[..lo].iter().chain(&c.items[hi..]) {
                    s.sub(&it.id);
                }
                out.sum.add_acc(&s);
            }
        }
        out
    }
}

impl SetView for ItemSet {
    fn summary(&self, lo: &Item, hi: &Item) -> Summary {
        self.summary_ranks(self.rank(lo)..self.rank(hi))
    }

    fn for_each_in(&self, lo: &Item, hi: &Item, f: &mut dyn FnMut(&Item) -> bool) {
        let (mut i, end) = (self.rank(lo), self.rank(hi));
        if i >= end {
            return;
        }
        let mut ci = self.ranks.chunk_of(i);
        // Where in chunk `ci` rank `i` is: past the first chunk, each begins at its start.
        let mut off = i - self.ranks.before(ci);
        while i < end {
            let c = &self.chunks[ci];
            let take = (c.items.len() - off).min(end - i);
            for it in &c.items[off..off + take] {
                if !f(it) {
                    return;
                }
            }
            i += take;
            ci += 1;
            off = 0;
        }
    }

    fn split_points(&self, lo: &Item, hi: &Item, buckets: usize) -> Vec<Item> {
        let (a, b) = (self.rank(lo), self.rank(hi));
        let n = b.saturating_sub(a);
        let buckets = buckets.max(1).min(n.max(1));
        (1..buckets)
            .map(|k| *self.get(a + n * k / buckets).expect("rank within the set"))
            .collect()
    }

    fn contains(&self, item: &Item) -> bool {
        ItemSet::contains(self, item)
    }

    fn len(&self) -> u64 {
        self.len as u64
    }

    fn predecessor(&self, item: &Item) -> Option<Item> {
        let r = self.rank(item);
        r.checked_sub(1).and_then(|i| self.get(i)).copied()
    }
}

/// `all` minus `hidden`: the set an office offers a peer when policy keeps some items from it.
/// `hidden` must be a subset of `all` (checked in debug builds when the view is made), so its
/// counts and sums can simply be subtracted.
pub struct Without<'a> {
    all: &'a ItemSet,
    hidden: &'a ItemSet,
}

impl<'a> Without<'a> {
    pub fn new(all: &'a ItemSet, hidden: &'a ItemSet) -> Without<'a> {
        debug_assert!(
            hidden.len() > 10_000 || hidden.iter().all(|h| all.contains(h)),
            "hidden items must be a subset of the set they are hidden from"
        );
        Without { all, hidden }
    }
}

impl SetView for Without<'_> {
    fn summary(&self, lo: &Item, hi: &Item) -> Summary {
        let mut s = self.all.summary(lo, hi);
        let h = self.hidden.summary(lo, hi);
        s.count -= h.count;
        s.sum.sub_acc(&h.sum);
        s
    }

    fn for_each_in(&self, lo: &Item, hi: &Item, f: &mut dyn FnMut(&Item) -> bool) {
        self.all.for_each_in(lo, hi, &mut |it| {
            if self.hidden.contains(it) {
                true
            } else {
                f(it)
            }
        });
    }

    fn split_points(&self, lo: &Item, hi: &Item, buckets: usize) -> Vec<Item> {
        // Any increasing bounds inside the range are valid split points; the underlying set's are
        // balanced enough when little is hidden.
        self.all.split_points(lo, hi, buckets)
    }

    fn contains(&self, item: &Item) -> bool {
        self.all.contains(item) && !self.hidden.contains(item)
    }

    fn len(&self) -> u64 {
        (self.all.len() - self.hidden.len()) as u64
    }

    fn predecessor(&self, item: &Item) -> Option<Item> {
        let mut cur = *item;
        loop {
            let p = self.all.predecessor(&cur)?;
            if !self.hidden.contains(&p) {
                return Some(p);
            }
            cur = p;
        }
    }
}

/// A view plus items held apart from it (disjoint from it): what a host holds, where part of what
/// it holds is not in the set it serves. The daemon's keys view is its stored keys plus the keys
/// received but not yet stored with a record, so reconciliation counts those as held instead of
/// learning them again every round (a run that stops at its item limit would learn the same
/// ones each time and never reach the rest).
pub struct Union<'a> {
    view: Box<dyn SetView + 'a>,
    extra: &'a ItemSet,
}

impl<'a> Union<'a> {
    pub fn new(view: Box<dyn SetView + 'a>, extra: &'a ItemSet) -> Union<'a> {
        debug_assert!(
            extra.len() > 10_000 || extra.iter().all(|e| !view.contains(e)),
            "the extra items must be disjoint from the view"
        );
        Union { view, extra }
    }
}

impl SetView for Union<'_> {
    fn summary(&self, lo: &Item, hi: &Item) -> Summary {
        let mut s = self.view.summary(lo, hi);
        let e = self.extra.summary(lo, hi);
        s.count += e.count;
        s.sum.add_acc(&e.sum);
        s
    }

    fn for_each_in(&self, lo: &Item, hi: &Item, f: &mut dyn FnMut(&Item) -> bool) {
        // Merged in order: before each of the view's items, the extra items below it.
        let (mut next, end) = (self.extra.rank(lo), self.extra.rank(hi));
        let mut stopped = false;
        self.view.for_each_in(lo, hi, &mut |it| {
            while next < end {
                let e = self.extra.get(next).expect("rank below len");
                if e >= it {
                    break;
                }
                next += 1;
                if !f(e) {
                    stopped = true;
                    return false;
                }
            }
            if !f(it) {
                stopped = true;
                return false;
            }
            true
        });
        while !stopped && next < end {
            let e = self.extra.get(next).expect("rank below len");
            next += 1;
            stopped = !f(e);
        }
    }

    fn split_points(&self, lo: &Item, hi: &Item, buckets: usize) -> Vec<Item> {
        // Any increasing bounds inside the range are valid; the part holding more of the range's
        // items gives the better balanced ones.
        if self.extra.summary(lo, hi).count > self.view.summary(lo, hi).count {
            self.extra.split_points(lo, hi, buckets)
        } else {
            self.view.split_points(lo, hi, buckets)
        }
    }

    fn contains(&self, item: &Item) -> bool {
        self.view.contains(item) || self.extra.contains(item)
    }

    fn len(&self) -> u64 {
        self.view.len() + self.extra.len() as u64
    }

    fn predecessor(&self, item: &Item) -> Option<Item> {
        match (self.view.predecessor(item), self.extra.predecessor(item)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    fn rand_item(rng: &mut StdRng) -> Item {
        let mut id = [0u8; 32];
        rng.fill(&mut id);
        Item::new(rng.gen_range(0..50), id)
    }

    fn naive_summary(set: &BTreeSet<Item>, lo: &Item, hi: &Item) -> Summary {
        let mut s = Summary::default();
        for it in set.range(*lo..*hi) {
            s.count += 1;
            s.sum.add(&it.id);
        }
        s
    }

    #[test]
    fn accumulator_add_sub_round_trip_and_carry() {
        let mut a = Accumulator::default();
        let ff = [0xff; 32];
        a.add(&ff);
        a.add(&[1; 32]);
        a.sub(&[1; 32]);
        assert_eq!(a, Accumulator([u64::MAX; 4]));
        let mut one = [0u8; 32];
        one[0] = 1;
        a.add(&one); // wraps to zero mod 2^256
        assert_eq!(a, Accumulator::default());
        assert_ne!(a.fingerprint(0), a.fingerprint(1));
    }

    /// `insert_many` (start-up's bulk build) gives the same set, count and sums as inserting
    /// one at a time: into an empty set, and merged into one that already holds some of them.
    #[test]
    fn insert_many_equals_inserting_one_by_one() {
        let mut rng = StdRng::seed_from_u64(11);
        for (held_n, new_n) in [(0, 5000), (3000, 5000), (5000, 10), (1, 0), (0, 0)] {
            let held: Vec<Item> = (0..held_n).map(|_| rand_item(&mut rng)).collect();
            let mut new: Vec<Item> = (0..new_n).map(|_| rand_item(&mut rng)).collect();
            // Duplicates within the batch and items already held.
            new.extend(new.clone().into_iter().take(new_n / 10));
            new.extend(held.iter().copied().take(held_n / 3));
            let mut one_by_one: ItemSet = held.iter().copied().collect();
            let mut bulk = one_by_one.clone();
            let mut added = 0;
            for it in &new {
                added += usize::from(one_by_one.insert(*it));
            }
            assert_eq!(bulk.insert_many(new), added, "held {held_n}, new {new_n}");
            assert_eq!(bulk.len(), one_by_one.len());
            assert!(bulk.iter().eq(one_by_one.iter()));
            assert_eq!(bulk.total(), one_by_one.total());
            let (a, b) = (rand_item(&mut rng), Item::INFINITY);
            assert_eq!(bulk.summary(&a, &b), one_by_one.summary(&a, &b));
            assert_eq!(bulk.rank(&a), one_by_one.rank(&a));
        }
    }

    /// The chunk ranks answer what prefix sums over the chunk sizes would, through counts added
    /// and taken, chunks pushed at the end, and rebuilds, with empty chunks among them, starting
    /// from every count of chunks up to 40 (tree sizes that are and are not powers of two).
    #[test]
    fn chunk_ranks_match_prefix_sums() {
        let mut rng = StdRng::seed_from_u64(13);
        for n in 0..=40usize {
            let mut sizes: Vec<usize> = (0..n)
                .map(|_| {
                    if rng.gen_bool(0.2) {
                        0
                    } else {
                        rng.gen_range(1..300)
                    }
                })
                .collect();
            let mut ranks = ChunkRanks::build(sizes.iter().copied());
            for round in 0..60 {
                let prefix: Vec<usize> = std::iter::once(0)
                    .chain(sizes.iter().scan(0, |acc, s| {
                        *acc += s;
                        Some(*acc)
                    }))
                    .collect();
                assert_eq!(ranks.chunks(), sizes.len());
                for (ci, want) in prefix.iter().enumerate() {
                    assert_eq!(ranks.before(ci), *want, "n {n}, round {round}, chunk {ci}");
                }
                for rank in 0..prefix[sizes.len()] {
                    let ci = ranks.chunk_of(rank);
                    assert!(
                        prefix[ci] <= rank && rank < prefix[ci + 1],
                        "n {n}, round {round}: rank {rank} placed in chunk {ci} of {sizes:?}"
                    );
                }
                let by = rng.gen_range(1..4);
                if sizes.is_empty() || rng.gen_bool(0.2) {
                    sizes.push(by);
                    ranks.push(by);
                    continue;
                }
                let ci = rng.gen_range(0..sizes.len());
                if sizes[ci] >= by && rng.gen_bool(0.5) {
                    sizes[ci] -= by;
                    ranks.sub(ci, by);
                } else {
                    sizes[ci] += by;
                    ranks.add(ci, by);
                }
                if round % 20 == 19 {
                    ranks = ChunkRanks::build(sizes.iter().copied());
                }
            }
        }
    }

    #[test]
    fn item_set_matches_btreeset_under_random_operations() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut set = ItemSet::new();
        let mut model = BTreeSet::new();
        let mut pool = Vec::new();
        for step in 0..20_000 {
            if rng.gen_bool(0.7) || pool.is_empty() {
                let it = rand_item(&mut rng);
                pool.push(it);
                assert_eq!(set.insert(it), model.insert(it));
            } else {
                let it = pool[rng.gen_range(0..pool.len())];
                assert_eq!(set.remove(&it), model.remove(&it));
            }
            assert_eq!(set.len(), model.len());
            if step % 997 == 0 {
                assert!(set.iter().copied().eq(model.iter().copied()));
                for _ in 0..20 {
                    let mut a = rand_item(&mut rng);
                    let mut b = rand_item(&mut rng);
                    if a > b {
                        std::mem::swap(&mut a, &mut b);
                    }
                    assert_eq!(set.summary(&a, &b), naive_summary(&model, &a, &b));
                    let mut seen = Vec::new();
                    set.for_each_in(&a, &b, &mut |it| {
                        seen.push(*it);
                        true
                    });
                    assert!(seen.iter().eq(model.range(a..b)));
                    assert_eq!(set.rank(&a), model.range(..a).count());
                    assert_eq!(set.predecessor(&a), model.range(..a).next_back().copied());
                    let splits = set.split_points(&a, &b, 16);
                    assert!(splits.windows(2).all(|w| w[0] < w[1]));
                    assert!(splits.iter().all(|s| a <= *s && *s < b));
                }
                assert_eq!(
                    set.total(),
                    naive_summary(&model, &Item::MIN, &Item::INFINITY)
                );
            }
        }
        for it in pool {
            set.remove(&it);
        }
        assert!(set.is_empty());
        assert_eq!(set.total(), Summary::default());
    }

    #[test]
    fn without_subtracts_hidden_items() {
        let mut rng = StdRng::seed_from_u64(9);
        let all: ItemSet = (0..5000).map(|_| rand_item(&mut rng)).collect();
        let hidden: ItemSet = all.iter().step_by(7).copied().collect();
        let visible: ItemSet = all
            .iter()
            .filter(|i| !hidden.contains(i))
            .copied()
            .collect();
        let view = Without::new(&all, &hidden);
        assert_eq!(view.len(), visible.len() as u64);
        for _ in 0..200 {
            let mut a = rand_item(&mut rng);
            let mut b = rand_item(&mut rng);
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            assert_eq!(view.summary(&a, &b), visible.summary(&a, &b));
            let mut seen = Vec::new();
            view.for_each_in(&a, &b, &mut |it| {
                seen.push(*it);
                true
            });
            let mut want = Vec::new();
            visible.for_each_in(&a, &b, &mut |it| {
                want.push(*it);
                true
            });
            assert_eq!(seen, want);
            assert_eq!(view.predecessor(&a), visible.predecessor(&a));
        }
    }

    #[test]
    fn union_adds_the_extra_items_in_order() {
        let mut rng = StdRng::seed_from_u64(11);
        let every: ItemSet = (0..5000).map(|_| rand_item(&mut rng)).collect();
        // Every third item held apart; the view hides some of the rest from this peer.
        let extra: ItemSet = every.iter().step_by(3).copied().collect();
        let stored: ItemSet = every
            .iter()
            .filter(|i| !extra.contains(i))
            .copied()
            .collect();
        let hidden: ItemSet = stored.iter().step_by(5).copied().collect();
        let want: ItemSet = every
            .iter()
            .filter(|i| !hidden.contains(i))
            .copied()
            .collect();
        let view = Union::new(Box::new(Without::new(&stored, &hidden)), &extra);
        assert_eq!(view.len(), want.len() as u64);
        assert_eq!(
            view.summary(&Item::MIN, &Item::INFINITY),
            want.summary(&Item::MIN, &Item::INFINITY)
        );
        for round in 0..300 {
            let mut a = rand_item(&mut rng);
            let mut b = rand_item(&mut rng);
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            assert_eq!(view.summary(&a, &b), want.summary(&a, &b));
            // Stopping early (as a responder's full message does) stops at the same item.
            let stop_after = round % 40;
            let collect = |v: &dyn SetView| {
                let mut seen = Vec::new();
                v.for_each_in(&a, &b, &mut |it| {
                    seen.push(*it);
                    seen.len() <= stop_after || round % 2 == 0
                });
                seen
            };
            assert_eq!(collect(&view), collect(&want));
            assert_eq!(view.predecessor(&a), want.predecessor(&a));
            let probe = every.get(rng.gen_range(0..every.len())).copied().unwrap();
            assert_eq!(view.contains(&probe), want.contains(&probe));
            let splits = view.split_points(&a, &b, 16);
            assert!(splits.windows(2).all(|w| w[0] < w[1]));
            assert!(splits.iter().all(|s| a <= *s && *s < b));
        }
    }
}
