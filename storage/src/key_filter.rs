//! A Bloom filter over the keys `index` holds, so that a lookup of a key nobody indexed (a new
//! subject's token, its consent tokens, its key owner) skips redb.
//!
//! **Why.** Every new record looks up keys that hold nothing yet: `Office::prepare` the consent
//! token (a marketing grant's minor check), `Office::write` the same token under its locks, and
//! the draft the subject's key owner. Each is a range over `index`, a table as large as the
//! office, whose keys are random: a descent of three or four pages that finds nothing. In an
//! import of 100,000 records those lookups were 7.7 % of all CPU samples, 4 % of them on the
//! runtime thread that prepares a chunk's lines one after another (BENCHMARKS.md, twenty-eighth
//! session).
//!
//! **How.** One hash per key: [`crate::index_journal`]'s bucket (a hash of the whole 32-byte key),
//! mixed again here. A key sets [`PROBES`] bits in one 512-bit block (one cache line) of a
//! layer; [`BITS_PER_KEY`] bits a key give about 1 % false positives. When a layer holds its
//! capacity a new one twice the size of all before it is added, so a growing office never
//! saturates one; a lookup checks each layer (one cache line each). Keys are never removed: a
//! key whose entries are gone only costs the lookup it would have cost anyway. `Store` asks
//! before it takes a snapshot (`Store::may_hold`): a snapshot taken while the writer commits
//! waits on redb's own locks, and in an import that wait, not the lookup, was where the
//! authoring threads blocked most.
//!
//! **Invariant.** Once the filter is ready ([`KeyFilter::set_ready`]), every key that any
//! snapshot's `index`, `index_mid` or `index_new` holds was inserted: those stored at open by
//! the pass over all three in `IndexJournal::load` (which then sets it ready, before the writer
//! starts), and every entry appended since by the writer before its commit
//! (`TxnIndex::publish`); merges only move entries between the three. So
//! [`KeyFilter::may_hold`] answers `false` only for a key no reader can find. Before the scan it
//! answers `true` for everything.
//!
//! **Limits.** About `BITS_PER_KEY` / 8 bytes an entry of `index` (the layers double, so at most
//! twice that): 1.25-2.5 MB a million entries, about three a new subject's consent. A layer holds
//! [`LAYER_KEYS_MIN`] to [`LAYER_KEYS_MAX`] keys; past the largest, layers of that size are added,
//! [`LAYERS_MAX`] in all. A lookup reads one cache line a layer and takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Bits a key in a layer: with [`PROBES`] probes in one block, about 1 % false positives.
pub(crate) const BITS_PER_KEY: usize = 10;
/// Bits a key sets in its block.
pub(crate) const PROBES: u32 = 7;
/// The smallest layer, in keys (80 KiB).
pub(crate) const LAYER_KEYS_MIN: usize = 65_536;
/// The largest layer, in keys (320 MiB): an office past it adds layers of this size.
pub(crate) const LAYER_KEYS_MAX: usize = 1 << 28;
/// Layers at most: from the smallest, 14 doublings reach the largest, and 50 more of that size
/// hold 13 billion keys, some thousand times a large office's. Past them the last layer takes
/// every further key: more false positives, never a false negative.
pub(crate) const LAYERS_MAX: usize = 64;
const BLOCK_BITS: u64 = 512;
const BLOCK_WORDS: usize = (BLOCK_BITS / 64) as usize;

#[derive(Debug)]
struct Layer {
    blocks: Box<[[AtomicU64; BLOCK_WORDS]]>,
    capacity: usize,
    keys: AtomicUsize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        let capacity = capacity.clamp(LAYER_KEYS_MIN, LAYER_KEYS_MAX);
        let blocks = (capacity * BITS_PER_KEY)
            .div_ceil(BLOCK_BITS as usize)
            .max(1);
        Layer {
            blocks: (0..blocks)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            capacity,
            keys: AtomicUsize::new(0),
        }
    }

    /// The block and the bits of hash `h` in it.
    fn place(&self, h: u64) -> (usize, impl Iterator<Item = (usize, u64)>) {
        // Multiply-shift onto the blocks (no modulo); the bits from a second, mixed hash.
        let block = ((u128::from(h) * self.blocks.len() as u128) >> 64) as usize;
        let g = mix(h);
        let bits = (0..PROBES).map(move |i| {
            let bit = (g >> (9 * i)) & (BLOCK_BITS - 1);
            ((bit / 64) as usize, 1u64 << (bit % 64))
        });
        (block, bits)
    }

    fn full(&self) -> bool {
        self.keys.load(Ordering::Relaxed) >= self.capacity
    }

    fn insert(&self, h: u64) {
        let (block, bits) = self.place(h);
        let block = &self.blocks[block];
        for (word, mask) in bits {
            // Release: a reader that sees the bit sees what was written before the insert.
            block[word].fetch_or(mask, Ordering::Release);
        }
        self.keys.fetch_add(1, Ordering::Relaxed);
    }

    fn may_hold(&self, h: u64) -> bool {
        let (block, mut bits) = self.place(h);
        let block = &self.blocks[block];
        bits.all(|(word, mask)| block[word].load(Ordering::Acquire) & mask != 0)
    }
}

/// splitmix64's finaliser: the probe bits must not follow the block index.
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The filter; see the module docs. Shared by the index journal, which inserts each key the
/// writer publishes, and the store's readers, who ask it without a lock: every bit is an atomic
/// word and every layer is set once ([`OnceLock`]), so a lookup never waits for the writer.
/// (Asked under the journal's lock, lookups waited for the writer's publish behind it: 57-70 ms
/// a second of the runtime's workers with 64 clients, 103 ms in 1.5 s of an import's authoring
/// threads; thirty-third session.)
#[derive(Debug)]
pub(crate) struct KeyFilter {
    /// Filled in order; a lookup stops at the first empty one.
    layers: [OnceLock<Layer>; LAYERS_MAX],
    ready: AtomicBool,
}

impl Default for KeyFilter {
    /// No layer, not ready: it holds everything.
    fn default() -> KeyFilter {
        KeyFilter {
            layers: std::array::from_fn(|_| OnceLock::new()),
            ready: AtomicBool::new(false),
        }
    }
}

impl KeyFilter {
    /// An empty filter sized for `keys` keys (within [`LAYER_KEYS_MIN`] and [`LAYER_KEYS_MAX`]);
    /// not ready.
    pub(crate) fn with_capacity(keys: usize) -> KeyFilter {
        let f = KeyFilter::default();
        let _ = f.layers[0].set(Layer::new(keys));
        f
    }

    /// The layers made so far, oldest first.
    fn made(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter().map_while(OnceLock::get)
    }

    /// Adds the key whose hash is `h`. Concurrent inserts are safe (each bit is set atomically,
    /// a new layer made once), though only the writer, and the scan at open, insert.
    pub(crate) fn insert(&self, h: u64) {
        let made = self.made().count();
        let last = match made.checked_sub(1).map(|i| (i, &self.layers[i])) {
            Some((i, slot)) => {
                let layer = slot.get().expect("counted as made");
                if layer.full() && i + 1 < LAYERS_MAX {
                    let held: usize = self.made().map(|l| l.capacity).sum();
                    self.layers[i + 1].get_or_init(|| Layer::new(held))
                } else {
                    layer
                }
            }
            None => self.layers[0].get_or_init(|| Layer::new(LAYER_KEYS_MIN)),
        };
        debug_assert!(
            !last.full() || made == LAYERS_MAX,
            "a full layer took a key while another could be made"
        );
        last.insert(h);
    }

    /// Every key stored at open has been inserted: `false` answers may be given from now on.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether a key whose hash is `h` may be held: `false` means no snapshot holds it.
    pub(crate) fn may_hold(&self, h: u64) -> bool {
        !self.ready.load(Ordering::Acquire) || self.made().any(|l| l.may_hold(h))
    }

    /// Bytes the layers take.
    pub(crate) fn bytes(&self) -> usize {
        self.made().map(|l| l.blocks.len() * BLOCK_WORDS * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: the storage crate has no `rand`.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn every_inserted_key_is_held_across_growing_layers_and_few_others_are() {
        let f = KeyFilter::with_capacity(0);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let keys: Vec<u64> = (0..300_000).map(|_| next(&mut state)).collect();
        assert!(f.may_hold(keys[0]), "a filter not ready holds everything");
        for &k in &keys {
            f.insert(k);
        }
        assert!(f.may_hold(keys[0]), "still not ready");
        f.set_ready();
        // 300,000 keys from a first layer of 65,536: layers of 65,536, 65,536, 131,072, 262,144.
        assert_eq!(f.made().count(), 4);
        assert!(
            keys.iter().all(|&k| f.may_hold(k)),
            "an inserted key was lost"
        );
        let others = 100_000;
        let false_positives = (0..others).filter(|_| f.may_hold(next(&mut state))).count();
        // About 1 % a layer that is full; four layers, the last half full: under 3 % in all.
        assert!(
            false_positives < others * 3 / 100,
            "{false_positives} false positives in {others}"
        );
        assert!(f.bytes() <= 524_288 * BITS_PER_KEY / 8 + 4 * 64);
    }

    /// Readers ask without a lock while the writer inserts and new layers are made: every key
    /// inserted before a reader learned of it is held.
    #[test]
    fn readers_without_a_lock_find_every_key_inserted_before_they_ask() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let f = KeyFilter::with_capacity(0);
        f.set_ready();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let keys: Vec<u64> = (0..200_000).map(|_| next(&mut state)).collect();
        let inserted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..3u64)
                .map(|r| {
                    let (f, keys, inserted) = (&f, &keys, &inserted);
                    s.spawn(move || {
                        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ r;
                        let mut asked = 0usize;
                        loop {
                            let n = inserted.load(Ordering::Acquire);
                            if n > 0 {
                                let k = keys[(next(&mut state) % n as u64) as usize];
                                assert!(f.may_hold(k), "a key inserted before the lookup lost");
                                asked += 1;
                            }
                            if n == keys.len() {
                                return asked;
                            }
                        }
                    })
                })
                .collect();
            for (i, &k) in keys.iter().enumerate() {
                f.insert(k);
                inserted.store(i + 1, Ordering::Release);
            }
            for r in readers {
                assert!(r.join().unwrap() > 0, "a reader never asked");
            }
        });
        // 200,000 keys from a first layer of 65,536: three layers were made under the readers.
        assert_eq!(f.made().count(), 3);
    }

    #[test]
    fn a_ready_empty_filter_holds_nothing_and_one_key_only_itself() {
        let f = KeyFilter::with_capacity(10);
        f.set_ready();
        assert!(!f.may_hold(42));
        f.insert(42);
        assert!(f.may_hold(42));
        assert!(
            !f.may_hold(43) || !f.may_hold(44),
            "two neighbours both held"
        );
    }
}
