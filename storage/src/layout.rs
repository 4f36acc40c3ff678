//! On-disk layout: table definitions and the byte encodings of their keys and values.
//!
//! This module is the single source of truth for the file format (LAYOUT.md repeats it for readers
//! who do not read Rust). Every key is a fixed-size byte array compared with `memcmp`, so the
//! encodings below are chosen to make *byte order equal the order we need* (position order,
//! numeric due-day order, prefix grouping). Nothing domain-specific is stored here: the caller
//! hands us opaque bytes, 16-byte document ids, 32-byte change hashes and 32-byte keyed index
//! hashes (never personal data).
//!
//! | table         | key                                   | value                               |
//! |---------------|---------------------------------------|-------------------------------------|
//! | `changes`     | `doc[16] ‖ position u32 BE` (20)      | `hash[32] ‖ envelope bytes`         |
//! | `envelope_at` | `hash[32]`                            | `doc[16] ‖ position u32 BE` (20)    |
//! | `envelope_new`| sequence `u64`                        | `hash[32] ‖ doc[16] ‖ position u32 BE` (52) |
//! | `projections` | `doc[16]`                             | `kind u8 ‖ projection bytes`        |
//! | `doc_meta`    | `doc[16]`                             | `DocMeta` encoding (see below)      |
//! | `index`       | `index_key[32] ‖ doc[16]` (48), and `owner[32] ‖ key_id[16]` (48) | `()`       |
//! | `due`         | `(day i32 BE, sign bit flipped) ‖ doc[16]` (20) | `()`                      |
//! | `kinds`       | `kind u8 ‖ doc[16]` (17)              | `()`                                |
//! | `meta`        | `&str` (caller's key)                 | caller's bytes                      |
//! | `sys`         | `&str` (our own key)                  | `u64`                               |
//! | `log`         | `log_id[16] ‖ index u64 BE` (24)      | leaf bytes (caller's, ≤ 64)         |
//! | `log_sizes`   | `log_id[16]`                          | `u64` number of leaves              |
//! | `checkpoints` | `&str` (caller's key)                 | caller's bytes (≤ 16 KiB)           |
//! | `tombstones`  | `doc[16] ‖ hash[32]` (48)             | tombstone bytes (≤ 16 KiB)          |
//! | `expiry`      | `(day i32 BE, sign bit flipped) ‖ doc[16]` (20) | `()`                      |
//! | `keys`        | `key_id[16]`                          | `owner[32] ‖ wrapped key bytes`     |
//!
//! Why each choice:
//! - Composite keys are concatenated fixed-width arrays (`&[u8; N]`, compared by `memcmp`) rather
//!   than redb tuples: one comparison instead of one per element, no length prefixes, and the
//!   prefix of a key (a doc id, an index key, a kind) is a contiguous key range, so "all docs under
//!   index key K" is one seek plus a walk over exactly the matching entries.
//! - Big-endian integers sort numerically under `memcmp`; for the signed due day the sign bit is
//!   flipped (`day as u32 ^ 0x8000_0000`) so that negative days sort before positive ones.
//! - Envelopes live in `changes`, under their doc and position, and `envelope_at` finds one by
//!   hash. Doc ids are time-ordered, so the large values (an envelope is ~0.7 KiB) are appended
//!   in id order and redb packs their leaves full; only the 52-byte `envelope_at` entries land at
//!   random (hashes are random). Keyed by hash, the envelopes themselves filled their leaves to
//!   68 % (random inserts split pages evenly): about 0.3 KiB more file per record than now.
//!   A doc's history is one range read, and a walk over all changes (start-up) reads one table
//!   in order.
//! - New `envelope_at` entries go first to `envelope_new`, in commit order, and move into
//!   `envelope_at` in bulk, in hash order (format 6; the journal, `journal.rs`): inserted one
//!   commit at a time, each random hash cost a commit a whole leaf of `envelope_at`. A hash is in
//!   exactly one of the two tables; `envelope_new` holds about `journal::MERGE_MAX` entries at most.
//! - `doc_meta` exists so an update can remove the doc's *old* index, due and kind entries without
//!   scanning: those entries are keyed by the indexed value, not by the doc.
//! - `sys` is separate from `meta` so a caller's meta key can never clobber our counters.
//! - `log` is append-only: the only write is "append at `log_sizes[log_id]`", in the same
//!   transaction as the batch that carries the leaves, and a purge never touches it. So a log
//!   can never miss a leaf of an acknowledged batch, and a leaf once durable never changes
//!   (signed checkpoints of the log stay consistent). Index big-endian: a log lists in order.
//! - `tombstones` is keyed by doc first (all tombstones of a doc are one range) then the
//!   tombstone's hash, so two offices' tombstones for one doc are both kept.
//! - `expiry` is the `due` layout again: "every doc expiring before day D" is one range.
//! - `keys` holds the caller's wrapped secret keys by key id (the caller decrypts by the key id
//!   written in its ciphertext). The `index` table also groups them under the caller's keyed
//!   hash of their owner (`owner ‖ key_id`), so "every key of this owner" is one range. The
//!   storage crate never sees a plain key.
//! - Key owners share the `index` table (format 5; format 4 had a `key_owners` table of the same
//!   keys) so that a caller can place a key's owner entry in the same leaf as the index entries of
//!   the record that uses it, by giving both hashes a common prefix (consentd gives a subject's
//!   token, its consent tokens and its key owners the subject token's first 16 bytes). Every
//!   random-key table a record touches costs a commit one more leaf page: measured at 100,000
//!   records (`examples/commit_cost.rs`), a 20-record commit wrote 728 KiB with the subject's
//!   entries in three unrelated places and 451 KiB with them side by side. The caller
//!   must keep owner hashes and index keys apart (different hash domains): an owner equal to an
//!   index key would list key ids among that key's docs.
//!
//! `DocMeta` value encoding (version 2, little-endian integers, 18 + 32·n bytes):
//! ```text
//! [0]      encoding version = 2
//! [1]      kind
//! [2..6]   next change position, u32 LE (the position the next new envelope of this doc gets)
//! [6]      due flag: 0 = not in the due index, 1 = in it
//! [7..11]  due day, i32 LE (0 when the flag is 0)
//! [11]     expiry flag: 0 = not in the expiry index, 1 = in it
//! [12..16] expiry day, i32 LE (0 when the flag is 0)
//! [16..18] n = number of index keys, u16 LE
//! [18..]   n index keys of 32 bytes, sorted ascending, no duplicates
//! ```

use redb::TableDefinition;

use crate::{DocId, Hash, IndexKey, Result, StorageError};

/// Version of the whole file layout, stored in `sys` under `SYS_FORMAT_VERSION`. Bump it on any
/// incompatible change to a table or encoding; [`crate::Store::open`] refuses other versions.
/// Version 2 added `log`, `log_sizes`, `checkpoints` and `tombstones`; version 3 added `expiry`,
/// `keys`, `key_owners`, the expiry in `DocMeta` (encoding 2) and the `tombstones` and `dropped`
/// counters; version 4 moved envelopes from `envelopes` (by hash) into `changes` (by doc and
/// position), with `envelope_at` replacing `doc_changes`; version 5 moved the `key_owners` entries
/// into `index`; version 6 added `envelope_new` (the journal of `envelope_at`); version 7 added
/// `index_new` (the journal of `index`); version 8 added `envelope_mid` and `index_mid` (the
/// journals' middle level); version 9 added the hash sums to `sys` ([`HashSum`]). Version-3 to -8
/// files are migrated on open (`writer::init`).
pub const FORMAT_VERSION: u64 = 9;

/// `doc ‖ position` → `hash[32] ‖ envelope bytes`.
pub(crate) const CHANGES: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("changes");
/// `hash` → `doc ‖ position` (the key of the envelope in [`CHANGES`]).
pub(crate) const ENVELOPE_AT: TableDefinition<&[u8; 32], &[u8; 20]> =
    TableDefinition::new("envelope_at");
/// `sequence` → `hash ‖ doc ‖ position`: `envelope_at`'s newest entries, in the order they were
/// stored, until a merge moves them into [`ENVELOPE_AT`] (`journal.rs`).
pub(crate) const ENVELOPE_NEW: TableDefinition<u64, &[u8; 52]> =
    TableDefinition::new("envelope_new");
/// `hash` → `doc ‖ position`, as [`ENVELOPE_AT`]: the journal's merged entries, until there are
/// enough of them to merge down into [`ENVELOPE_AT`] (`journal.rs`, "levels").
pub(crate) const ENVELOPE_MID: TableDefinition<&[u8; 32], &[u8; 20]> =
    TableDefinition::new("envelope_mid");
/// Format 3's tables, read only by the migration to format 4.
pub(crate) const V3_ENVELOPES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("envelopes");
pub(crate) const V3_DOC_CHANGES: TableDefinition<&[u8; 20], &[u8; 32]> =
    TableDefinition::new("doc_changes");
pub(crate) const PROJECTIONS: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("projections");
pub(crate) const DOC_META: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("doc_meta");
pub(crate) const INDEX: TableDefinition<&[u8; 48], ()> = TableDefinition::new("index");
/// `sequence` → an `index` entry: `index`'s newest entries, in the order they were written, until
/// a merge moves them into [`INDEX`] (`index_journal.rs`).
pub(crate) const INDEX_NEW: TableDefinition<u64, &[u8; 48]> = TableDefinition::new("index_new");
/// An `index` entry → `()`, as [`INDEX`]: the journal's merged entries, until there are enough of
/// them to merge down into [`INDEX`] (`index_journal.rs`).
pub(crate) const INDEX_MID: TableDefinition<&[u8; 48], ()> = TableDefinition::new("index_mid");
pub(crate) const DUE: TableDefinition<&[u8; 20], ()> = TableDefinition::new("due");
pub(crate) const KINDS: TableDefinition<&[u8; 17], ()> = TableDefinition::new("kinds");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const SYS: TableDefinition<&str, u64> = TableDefinition::new("sys");
pub(crate) const LOG: TableDefinition<&[u8; 24], &[u8]> = TableDefinition::new("log");
pub(crate) const LOG_SIZES: TableDefinition<&[u8; 16], u64> = TableDefinition::new("log_sizes");
pub(crate) const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
pub(crate) const TOMBSTONES: TableDefinition<&[u8; 48], &[u8]> = TableDefinition::new("tombstones");
pub(crate) const EXPIRY: TableDefinition<&[u8; 20], ()> = TableDefinition::new("expiry");
pub(crate) const KEYS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("keys");
/// Format 4's key owners, read only by the migration to format 5 (now in [`INDEX`]).
pub(crate) const V4_KEY_OWNERS: TableDefinition<&[u8; 48], ()> = TableDefinition::new("key_owners");

/// `sys` keys. Counters are updated inside the same write transaction as the data they count,
/// so they can never disagree with the tables after a crash.
pub(crate) const SYS_FORMAT_VERSION: &str = "format_version";
pub(crate) const SYS_RECORDS: &str = "records";
pub(crate) const SYS_ENVELOPES: &str = "envelopes";
/// Number of the last durable commit; persisted so commit numbers keep increasing across restarts.
pub(crate) const SYS_COMMIT_SEQ: &str = "commit_seq";
/// Number of entries in `tombstones`.
pub(crate) const SYS_TOMBSTONES: &str = "tombstones";
/// Envelopes refused because their doc has a tombstone (tombstones win forever).
pub(crate) const SYS_DROPPED: &str = "dropped_after_tombstone";
/// The [`HashSum`] of the hashes in `envelope_at` (every stored change's), limb 0 first.
pub(crate) const SYS_ENVELOPE_SUM: [&str; 4] = [
    "envelope_sum_0",
    "envelope_sum_1",
    "envelope_sum_2",
    "envelope_sum_3",
];
/// The [`HashSum`] of the hashes in the `tombstones` keys, limb 0 first.
pub(crate) const SYS_TOMBSTONE_SUM: [&str; 4] = [
    "tombstone_sum_0",
    "tombstone_sum_1",
    "tombstone_sum_2",
    "tombstone_sum_3",
];

/// The sum modulo 2^256 of a set of 32-byte hashes, each read as a little-endian integer: a
/// summary of the set that does not depend on the order its members came in, and that an insert
/// or a removal updates in O(1) (add or subtract one hash). `sys` keeps one for the stored
/// envelopes and one for the tombstones, as four `u64` limbs (limb 0 least significant), updated
/// in the same transaction as the counters beside them, so [`crate::Store::held_sets`] is O(1).
///
/// Not a commitment against a chosen set: someone able to choose many members freely can find two
/// sets with equal sums (a generalised-birthday search). Our members are hashes of envelopes and
/// tombstones that only roster keys can sign, and the sums serve to check convergence (the same
/// trust as reconciliation's range fingerprints).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct HashSum([u64; 4]);

impl HashSum {
    fn limbs(hash: &Hash) -> [u64; 4] {
        std::array::from_fn(|i| {
            u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
        })
    }

    pub(crate) fn add(&mut self, hash: &Hash) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(Self::limbs(hash)) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            *a = s2;
            carry = c1 || c2;
        }
    }

    pub(crate) fn sub(&mut self, hash: &Hash) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(Self::limbs(hash)) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(borrow as u64);
            *a = d2;
            borrow = b1 || b2;
        }
    }

    /// The sum as 32 little-endian bytes.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    pub(crate) fn from_limbs(limbs: [u64; 4]) -> Self {
        HashSum(limbs)
    }

    pub(crate) fn limbs_stored(self) -> [u64; 4] {
        self.0
    }
}

/// A key owner's entry in [`INDEX`]: the owner's keyed hash first, so all keys of one owner are
/// one range (the same shape as [`index_entry`], with the key id in the doc's place).
#[inline]
pub(crate) fn key_owner_key(owner: &IndexKey, key: &crate::KeyId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(owner);
    k[32..].copy_from_slice(key);
    k
}

/// `changes` key: doc id, then the position big-endian so a doc's changes sort in stored order.
#[inline]
pub(crate) fn change_key(doc: &DocId, position: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(doc);
    k[16..].copy_from_slice(&position.to_be_bytes());
    k
}

/// Splits a `changes` value into the change hash and the envelope bytes.
#[inline]
pub(crate) fn split_change_value<'v>(key: &[u8; 20], v: &'v [u8]) -> Result<(Hash, &'v [u8])> {
    if v.len() < 32 {
        let doc: DocId = key[..16].try_into().expect("16 bytes");
        return Err(StorageError::Corrupt(format!(
            "a change of doc {} is shorter than its hash",
            hex16(&doc)
        )));
    }
    Ok((v[..32].try_into().expect("32 bytes"), &v[32..]))
}

/// Splits a `changes` key into the doc id and the position.
#[inline]
pub(crate) fn split_change_key(k: &[u8; 20]) -> (DocId, u32) {
    let doc: DocId = k[..16].try_into().expect("16 bytes");
    (
        doc,
        u32::from_be_bytes(k[16..].try_into().expect("4 bytes")),
    )
}

/// `log` key: the log id, then the leaf index big-endian so a log's leaves sort in order.
#[inline]
pub(crate) fn log_key(log: &crate::LogId, index: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(log);
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `tombstones` key: doc id, then the tombstone's hash.
#[inline]
pub(crate) fn tombstone_key(doc: &DocId, hash: &Hash) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(doc);
    k[16..].copy_from_slice(hash);
    k
}

/// `index` key: the index key first, so all docs under one key form one contiguous range.
#[inline]
pub(crate) fn index_entry(key: &IndexKey, doc: &DocId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(key);
    k[32..].copy_from_slice(doc);
    k
}

/// Encodes a signed day so that unsigned big-endian byte order equals numeric order.
#[inline]
pub(crate) fn encode_day(day: i32) -> [u8; 4] {
    ((day as u32) ^ 0x8000_0000).to_be_bytes()
}

#[inline]
pub(crate) fn decode_day(bytes: [u8; 4]) -> i32 {
    (u32::from_be_bytes(bytes) ^ 0x8000_0000) as i32
}

/// `due` key: encoded day, then doc id (ties between docs due the same day sort by doc id).
#[inline]
pub(crate) fn due_key(day: i32, doc: &DocId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&encode_day(day));
    k[4..].copy_from_slice(doc);
    k
}

#[inline]
pub(crate) fn split_due_key(k: &[u8; 20]) -> (i32, DocId) {
    let day = decode_day(k[..4].try_into().expect("4 bytes"));
    let doc: DocId = k[4..].try_into().expect("16 bytes");
    (day, doc)
}

/// `kinds` key: kind first so all docs of one kind form one contiguous range.
#[inline]
pub(crate) fn kind_key(kind: u8, doc: &DocId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind;
    k[1..].copy_from_slice(doc);
    k
}

/// Splits a `&[u8; 16 + N]`-style key suffix into a doc id.
#[inline]
pub(crate) fn doc_suffix<const N: usize>(k: &[u8; N]) -> DocId {
    k[N - 16..]
        .try_into()
        .expect("doc id is the 16-byte key suffix")
}

const DOC_META_VERSION: u8 = 2;
const DOC_META_HEADER: usize = 18;

/// What we must remember about a record to update it without scanning other tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocMeta {
    pub kind: u8,
    /// Position the next newly stored envelope of this doc gets in `changes`.
    pub next_pos: u32,
    pub due_day: Option<i32>,
    /// Day from which the record may be deleted (the `expiry` index), if any.
    pub expiry_day: Option<i32>,
    /// Sorted ascending, deduplicated.
    pub index_keys: Vec<IndexKey>,
}

impl DocMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        debug_assert!(
            self.index_keys.windows(2).all(|w| w[0] < w[1]),
            "DocMeta index keys must be sorted and unique before encoding"
        );
        let n = u16::try_from(self.index_keys.len())
            .expect("index key count is limited far below u16::MAX by MAX_INDEX_KEYS");
        let mut out = Vec::with_capacity(DOC_META_HEADER + 32 * self.index_keys.len());
        out.push(DOC_META_VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.next_pos.to_le_bytes());
        out.push(u8::from(self.due_day.is_some()));
        out.extend_from_slice(&self.due_day.unwrap_or(0).to_le_bytes());
        out.push(u8::from(self.expiry_day.is_some()));
        out.extend_from_slice(&self.expiry_day.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        for k in &self.index_keys {
            out.extend_from_slice(k);
        }
        out
    }

    pub(crate) fn decode(doc: &DocId, b: &[u8]) -> Result<DocMeta> {
        let corrupt =
            |why: &str| StorageError::Corrupt(format!("doc_meta of doc {}: {why}", hex16(doc)));
        if b.len() < DOC_META_HEADER {
            return Err(corrupt("value shorter than its header"));
        }
        if b[0] != DOC_META_VERSION {
            return Err(corrupt(&format!("unknown encoding version {}", b[0])));
        }
        let kind = b[1];
        let next_pos = u32::from_le_bytes(b[2..6].try_into().expect("4 bytes"));
        let due_day = match b[6] {
            0 => None,
            1 => Some(i32::from_le_bytes(b[7..11].try_into().expect("4 bytes"))),
            f => return Err(corrupt(&format!("bad due flag {f}"))),
        };
        let expiry_day = match b[11] {
            0 => None,
            1 => Some(i32::from_le_bytes(b[12..16].try_into().expect("4 bytes"))),
            f => return Err(corrupt(&format!("bad expiry flag {f}"))),
        };
        let n = usize::from(u16::from_le_bytes(b[16..18].try_into().expect("2 bytes")));
        let rest = &b[DOC_META_HEADER..];
        if rest.len() != 32 * n {
            return Err(corrupt("index key list length does not match its count"));
        }
        let index_keys: Vec<IndexKey> = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunk"))
            .collect();
        if !index_keys.windows(2).all(|w| w[0] < w[1]) {
            return Err(corrupt("index keys not sorted and unique"));
        }
        Ok(DocMeta {
            kind,
            next_pos,
            due_day,
            expiry_day,
            index_keys,
        })
    }
}

/// Hex of a doc id, for error messages (doc ids are random, not personal data).
pub(crate) fn hex16(doc: &DocId) -> String {
    doc.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex of a hash prefix, for error messages.
pub(crate) fn hex_prefix(h: &Hash) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_encoding_orders_numerically() {
        let days = [i32::MIN, -100_000, -1, 0, 1, 19_000, 20_000, i32::MAX];
        for w in days.windows(2) {
            assert!(
                encode_day(w[0]) < encode_day(w[1]),
                "{} must sort before {}",
                w[0],
                w[1]
            );
        }
        for d in days {
            assert_eq!(decode_day(encode_day(d)), d);
        }
    }

    #[test]
    fn due_key_round_trips() {
        let doc = [7u8; 16];
        assert_eq!(split_due_key(&due_key(-3, &doc)), (-3, doc));
        assert!(due_key(-1, &[0xff; 16]) < due_key(0, &[0; 16]));
    }

    #[test]
    fn log_keys_sort_by_index_within_log() {
        let log = [3u8; 16];
        assert!(log_key(&log, 255) < log_key(&log, 256));
        assert!(log_key(&log, u64::MAX) < log_key(&[4u8; 16], 0));
        assert!(tombstone_key(&[1; 16], &[0xff; 32]) < tombstone_key(&[2; 16], &[0; 32]));
    }

    #[test]
    fn change_keys_sort_by_position_within_doc() {
        let doc = [1u8; 16];
        assert!(change_key(&doc, 255) < change_key(&doc, 256));
        assert!(change_key(&doc, u32::MAX) < change_key(&[2u8; 16], 0));
    }

    #[test]
    fn doc_meta_round_trips_and_rejects_garbage() {
        let doc = [9u8; 16];
        let m = DocMeta {
            kind: 3,
            next_pos: 70_000,
            due_day: Some(-5),
            expiry_day: Some(20_000),
            index_keys: vec![[1; 32], [2; 32]],
        };
        let enc = m.encode();
        assert_eq!(enc.len(), 18 + 64);
        assert_eq!(DocMeta::decode(&doc, &enc).unwrap(), m);

        let none = DocMeta {
            kind: 0,
            next_pos: 0,
            due_day: None,
            expiry_day: None,
            index_keys: vec![],
        };
        assert_eq!(DocMeta::decode(&doc, &none.encode()).unwrap(), none);

        assert!(DocMeta::decode(&doc, &enc[..enc.len() - 1]).is_err());
        assert!(DocMeta::decode(&doc, &[1, 2, 3]).is_err());
        let mut bad_version = enc.clone();
        bad_version[0] = 1;
        assert!(DocMeta::decode(&doc, &bad_version).is_err());
        let mut bad_flag = enc.clone();
        bad_flag[6] = 7;
        assert!(DocMeta::decode(&doc, &bad_flag).is_err());
        let mut bad_expiry = enc.clone();
        bad_expiry[11] = 9;
        assert!(DocMeta::decode(&doc, &bad_expiry).is_err());
        let mut unsorted = enc;
        unsorted[18] = 5; // first key now sorts after the second
        assert!(DocMeta::decode(&doc, &unsorted).is_err());
    }
}
