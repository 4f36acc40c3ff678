//! An allocation-free reader of Automerge change chunks that vouches only for changes Automerge
//! itself accepts.
//!
//! Why: verifying an envelope needs the change's hash, actor, dependencies and op count, and the
//! assurance that the chunk is a well-formed change. `Change::try_from` gives both, but it copies
//! the chunk and decodes every op into owned values (`verify_ops`). In the profile of
//! `consentd bench` row `audit_verify`, that cost 28 % of the verifier's CPU, against 49 % for the
//! ed25519 batch verification that is the row's whole baseline.
//!
//! # Contract
//!
//! [`read`] returns `Some(facts)` only if `automerge::Change::try_from(bytes)` succeeds, and then
//! every fact equals what Automerge reports (`hash`, `actor_id`, `deps`, `seq`, `start_op`,
//! `timestamp`, `len`). `None` means "not a layout this reader vouches for", never "invalid": the
//! caller asks Automerge, whose verdict stands. So this reader may be stricter than Automerge
//! anywhere (and is, wherever that keeps it simple), but never more lenient. Debug builds check
//! the contract on every envelope verified ([`agrees_with_automerge`]); a unit test checks it
//! over many thousands of mutated changes.
//!
//! # What it accepts
//!
//! The Automerge binary format's change chunk ("Change chunks" and "Column encodings" in the
//! format spec; automerge 0.12's `storage::change` and `columnar::encoding` are the reference):
//!
//! - header: magic, checksum (not checked here: the envelope checks it against the hash), chunk
//!   type 1 (uncompressed change), LEB128 length that covers exactly the rest of the bytes;
//! - body: dependencies (count, 32 bytes each), actor, seq, start op (1 ..= `u32::MAX`), time,
//!   message (UTF-8), other actors, column metadata, column data, extra bytes (any);
//! - every LEB128 in its minimal form and at most 9 bytes (Automerge refuses overlong forms in
//!   the header and takes them in columns; the 9-byte bound keeps values below 2^63);
//! - columns: only the fourteen op columns Automerge writes, none deflated, in strictly
//!   increasing spec order; a value column only right after its metadata; the predecessor
//!   actor and counter columns only together and only after the predecessor group;
//! - runs (RLE): positive counts with a value, negative counts of literals, null runs of at least
//!   one; counts at most [`MAX_OPS`]; every column's bytes consumed exactly by the ops the action
//!   column counts (Automerge ignores surplus bytes; a canonical encoder writes none);
//! - per op: an object that is the root or (actor, counter); a key that is a string, the list
//!   head, or (actor, counter ≥ 0); an insert flag; an action that Automerge allows with its
//!   value; a value whose type is null, a boolean, an integer, a float (8 bytes), a string
//!   (UTF-8), bytes, a counter or a timestamp; predecessors of (actor, counter ≥ 0); an optional
//!   expand flag and mark name. Every actor index names the change's actor or one of its other
//!   actors.

use sha2::{Digest, Sha256};

/// Automerge's magic bytes, first in every chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of an uncompressed change.
const CHUNK_CHANGE: u8 = 1;
/// Offset of the chunk type: magic (4), checksum (4).
const CHUNK_TYPE_AT: usize = 8;
/// Most ops a change may hold here. An envelope's change is at most 256 KiB, and a consent
/// record's first change has about twenty ops; a run-length count can claim far more ops than
/// its bytes, so the bound keeps the walk proportional to what a real change holds.
pub const MAX_OPS: u64 = 1 << 16;
/// Most other actors a change may name here (Automerge writes one per actor its ops refer to).
const MAX_OTHER_ACTORS: u64 = 256;
/// Longest actor id read here (consentd's are 40 bytes: key ‖ incarnation).
const MAX_ACTOR_BYTES: u64 = 128;
/// Most columns a change may declare here (there are fourteen kinds).
const MAX_COLUMNS: u64 = 16;
/// Action code of a put (`OpType::Put`).
const ACTION_PUT: u64 = 1;
/// Value metadata type code of a UTF-8 string.
const VALUE_STRING: u64 = 6;

/// Column specs (`id << 4 | type`), in the order Automerge's encoder writes them.
pub(crate) mod spec {
    pub const OBJ_ACTOR: u32 = 0x01;
    pub const OBJ_CTR: u32 = 0x02;
    pub const KEY_ACTOR: u32 = 0x11;
    pub const KEY_CTR: u32 = 0x13;
    pub const KEY_STR: u32 = 0x15;
    pub const INSERT: u32 = 0x34;
    pub const ACTION: u32 = 0x42;
    pub const VAL_META: u32 = 0x56;
    pub const VAL_RAW: u32 = 0x57;
    pub const PRED_GROUP: u32 = 0x70;
    pub const PRED_ACTOR: u32 = 0x71;
    pub const PRED_CTR: u32 = 0x73;
    pub const EXPAND: u32 = 0x94;
    pub const MARK_NAME: u32 = 0xa5;
    pub const ALL: [u32; 14] = [
        OBJ_ACTOR, OBJ_CTR, KEY_ACTOR, KEY_CTR, KEY_STR, INSERT, ACTION, VAL_META, VAL_RAW,
        PRED_GROUP, PRED_ACTOR, PRED_CTR, EXPAND, MARK_NAME,
    ];
}

/// What a change chunk says of itself, read without expanding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkFacts<'a> {
    /// Automerge's change hash: SHA-256 over the chunk type, length and body.
    pub hash: [u8; 32],
    /// The authoring actor's id bytes.
    pub actor: &'a [u8],
    /// The dependencies' hashes, 32 bytes each.
    deps: &'a [u8],
    pub seq: u64,
    pub start_op: u64,
    /// Authoring time (ms since the epoch, as Automerge stores it).
    pub time: i64,
    /// Number of ops (`Change::len`).
    pub ops: usize,
}

impl ChunkFacts<'_> {
    /// The dependencies' hashes, in the order the change lists them.
    pub fn deps(&self) -> impl ExactSizeIterator<Item = [u8; 32]> + '_ {
        self.deps.chunks_exact(32).map(|h| {
            h.try_into()
                .expect("chunks_exact(32) yields 32-byte slices")
        })
    }
}

/// Reads `bytes` as one uncompressed Automerge change chunk; see the module doc for the contract.
pub fn read(bytes: &[u8]) -> Option<ChunkFacts<'_>> {
    let mut h = header(bytes)?;
    let columns = Columns::parse(&mut h.rest)?;
    // What follows the column data is the change's extra bytes: Automerge takes any.
    let ops = check_ops(&columns, h.other_actors)?;
    Some(ChunkFacts {
        hash: Sha256::digest(&bytes[CHUNK_TYPE_AT..]).into(),
        actor: h.actor,
        deps: h.deps,
        seq: h.seq,
        start_op: h.start_op,
        time: h.time,
        ops,
    })
}

/// The authoring time (`Change::timestamp`) in the header of `bytes`, an uncompressed change
/// chunk, read without walking its ops. For changes already verified: replication keys every
/// stored envelope by it (its reconciliation item) at start-up and whenever one becomes durable,
/// where `Change::try_from` would hash the chunk and decode every op (most of a restart's CPU at
/// 1,000,000 records). `None` when the header is not as [`read`] expects; ask Automerge then.
pub fn change_time(bytes: &[u8]) -> Option<i64> {
    header(bytes).map(|h| h.time)
}

/// Calls `f(key, value)` for each op of `bytes` (an uncompressed change chunk) that puts a string
/// at the root map, in op order. For changes already verified: `audit verify` needs, of each
/// creating change, the record type it writes and whether it writes `status: "refused"`, and
/// `Change::decode` answers that by expanding every op into owned legacy structures. `None` when
/// the chunk is not laid out as [`read`] expects; the caller then uses `Change::decode`.
pub fn for_each_root_string_put(bytes: &[u8], mut f: impl FnMut(&str, &str)) -> Option<()> {
    let mut h = header(bytes)?;
    let cols = Columns::parse(&mut h.rest)?;
    let mut obj_actor = Rle::<u64>::new(cols.obj_actor);
    let mut obj_ctr = Rle::<u64>::new(cols.obj_ctr);
    let mut key_str = Rle::<&str>::new(cols.key_str);
    let mut action = Rle::<u64>::new(cols.action);
    let mut val_meta = Rle::<u64>::new(cols.val_meta);
    let mut val_raw = Bytes(cols.val_raw);
    let mut ops = 0u64;
    while !action.finished() {
        ops += 1;
        if ops > MAX_OPS {
            return None;
        }
        let root = matches!(
            (obj_actor.next()?, obj_ctr.next()?),
            (None, None) | (_, Some(0))
        );
        let key = key_str.next()?;
        let act = action.next()?;
        let meta = val_meta.next()?.unwrap_or(0);
        let value = val_raw.take(usize::try_from(meta >> 4).ok()?)?;
        if let (true, Some(key), Some(ACTION_PUT), VALUE_STRING) = (root, key, act, meta & 0x0f) {
            f(key, std::str::from_utf8(value).ok()?);
        }
    }
    Some(())
}

/// A change chunk's header, up to its column metadata.
pub(crate) struct Header<'a> {
    pub(crate) actor: &'a [u8],
    pub(crate) deps: &'a [u8],
    pub(crate) seq: u64,
    pub(crate) start_op: u64,
    pub(crate) time: i64,
    pub(crate) other_actors: u64,
    /// From the column metadata on.
    pub(crate) rest: Bytes<'a>,
}

/// Reads the chunk header and the change header of `bytes`; see the module doc.
pub(crate) fn header(bytes: &[u8]) -> Option<Header<'_>> {
    if bytes.get(..4)? != MAGIC || *bytes.get(CHUNK_TYPE_AT)? != CHUNK_CHANGE {
        return None;
    }
    // The hash covers the chunk type, the length and the body; with the length minimal and exact
    // (checked here) that is every byte from the type on.
    let mut c = Bytes(bytes.get(CHUNK_TYPE_AT + 1..)?);
    let len = c.uleb()?;
    if len != c.0.len() as u64 {
        return None;
    }
    let deps_n = c.uleb()?;
    let deps = c.take(usize::try_from(deps_n).ok()?.checked_mul(32)?)?;
    let actor = c.prefixed(MAX_ACTOR_BYTES)?;
    let seq = c.uleb()?;
    let start_op = c.uleb()?;
    if start_op == 0 || start_op > u64::from(u32::MAX) {
        return None;
    }
    let time = c.sleb()?;
    if !utf8(c.prefixed(c.0.len() as u64)?) {
        return None; // the message
    }
    let other_actors = c.uleb()?;
    if other_actors > MAX_OTHER_ACTORS {
        return None;
    }
    for _ in 0..other_actors {
        c.prefixed(MAX_ACTOR_BYTES)?;
    }
    Some(Header {
        actor,
        deps,
        seq,
        start_op,
        time,
        other_actors,
        rest: c,
    })
}

/// Whether `facts`, which [`read`] gave for `bytes`, agree with what Automerge makes of `bytes`:
/// the reader's contract, checked by debug builds on every envelope verified and by tests.
pub fn agrees_with_automerge(bytes: &[u8], facts: &ChunkFacts<'_>) -> bool {
    let Ok(change) = automerge::Change::try_from(bytes) else {
        return false;
    };
    change.hash().0 == facts.hash
        && change.actor_id().to_bytes() == facts.actor
        && change.deps().iter().map(|h| h.0).eq(facts.deps())
        && change.seq() == facts.seq
        && u64::from(change.start_op()) == facts.start_op
        && change.timestamp() == facts.time
        && change.len() == facts.ops
}

/// The op columns' bytes, by spec; an absent column is empty.
pub(crate) struct Columns<'a> {
    pub(crate) obj_actor: &'a [u8],
    pub(crate) obj_ctr: &'a [u8],
    pub(crate) key_actor: &'a [u8],
    pub(crate) key_ctr: &'a [u8],
    pub(crate) key_str: &'a [u8],
    pub(crate) insert: &'a [u8],
    pub(crate) action: &'a [u8],
    pub(crate) val_meta: &'a [u8],
    pub(crate) val_raw: &'a [u8],
    pub(crate) pred_group: &'a [u8],
    pub(crate) pred_actor: &'a [u8],
    pub(crate) pred_ctr: &'a [u8],
    pub(crate) expand: &'a [u8],
    pub(crate) mark_name: &'a [u8],
}

impl<'a> Columns<'a> {
    /// Parses the column metadata and takes the column data from `c`.
    pub(crate) fn parse(c: &mut Bytes<'a>) -> Option<Columns<'a>> {
        let n = c.uleb()?;
        if n > MAX_COLUMNS {
            return None;
        }
        let mut lens = [(0u32, 0usize); MAX_COLUMNS as usize];
        let mut prev: Option<u32> = None;
        let mut seen = [false; spec::ALL.len()];
        for slot in lens.iter_mut().take(n as usize) {
            let s = u32::try_from(c.uleb()?).ok()?;
            let len = usize::try_from(c.uleb()?).ok()?;
            // Known, not deflated (the deflate bit is 0x08, which no known spec has), and strictly
            // after the previous spec: no duplicates, Automerge's normal order.
            let kind = spec::ALL.iter().position(|&k| k == s)?;
            if prev.is_some_and(|p| p >= s) {
                return None;
            }
            // A raw value column must follow its metadata column directly (Automerge: "raw value
            // column without metadata column").
            if s == spec::VAL_RAW && prev != Some(spec::VAL_META) {
                return None;
            }
            seen[kind] = true;
            prev = Some(s);
            *slot = (s, len);
        }
        let has = |s: u32| seen[spec::ALL.iter().position(|&k| k == s).expect("known spec")];
        // The predecessor group's actor and counter columns: both or neither, inside the group.
        if has(spec::PRED_ACTOR) != has(spec::PRED_CTR)
            || (has(spec::PRED_ACTOR) && !has(spec::PRED_GROUP))
        {
            return None;
        }
        let mut cols = Columns {
            obj_actor: &[],
            obj_ctr: &[],
            key_actor: &[],
            key_ctr: &[],
            key_str: &[],
            insert: &[],
            action: &[],
            val_meta: &[],
            val_raw: &[],
            pred_group: &[],
            pred_actor: &[],
            pred_ctr: &[],
            expand: &[],
            mark_name: &[],
        };
        for &(s, len) in &lens[..n as usize] {
            let data = c.take(len)?;
            let field = match s {
                spec::OBJ_ACTOR => &mut cols.obj_actor,
                spec::OBJ_CTR => &mut cols.obj_ctr,
                spec::KEY_ACTOR => &mut cols.key_actor,
                spec::KEY_CTR => &mut cols.key_ctr,
                spec::KEY_STR => &mut cols.key_str,
                spec::INSERT => &mut cols.insert,
                spec::ACTION => &mut cols.action,
                spec::VAL_META => &mut cols.val_meta,
                spec::VAL_RAW => &mut cols.val_raw,
                spec::PRED_GROUP => &mut cols.pred_group,
                spec::PRED_ACTOR => &mut cols.pred_actor,
                spec::PRED_CTR => &mut cols.pred_ctr,
                spec::EXPAND => &mut cols.expand,
                spec::MARK_NAME => &mut cols.mark_name,
                _ => unreachable!("specs were checked against spec::ALL above"),
            };
            *field = data;
        }
        Some(cols)
    }
}

/// Walks every op the way `ChangeOpsIter` does and returns how many there are.
fn check_ops(cols: &Columns<'_>, other_actors: u64) -> Option<usize> {
    // Actor indices: 0 is the change's own actor, 1 ..= other_actors the others.
    let actor_ok = |a: u64| a <= other_actors;
    let mut obj_actor = Rle::<u64>::new(cols.obj_actor);
    let mut obj_ctr = Rle::<u64>::new(cols.obj_ctr);
    let mut key_actor = Rle::<u64>::new(cols.key_actor);
    let mut key_ctr = Delta::new(cols.key_ctr);
    let mut key_str = Rle::<Text>::new(cols.key_str);
    let mut insert = Bools::new(cols.insert);
    let mut action = Rle::<u64>::new(cols.action);
    let mut val_meta = Rle::<u64>::new(cols.val_meta);
    let mut val_raw = Bytes(cols.val_raw);
    let mut pred_n = Rle::<u64>::new(cols.pred_group);
    let mut pred_actor = Rle::<u64>::new(cols.pred_actor);
    let mut pred_ctr = Delta::new(cols.pred_ctr);
    let mut expand = Bools::new(cols.expand);
    let mut mark_name = Rle::<Text>::new(cols.mark_name);
    let mut ops = 0u64;
    while !action.finished() {
        ops += 1;
        if ops > MAX_OPS {
            return None;
        }
        match (obj_actor.next()?, obj_ctr.next()?) {
            (None, None) => {}
            (Some(a), Some(_)) if actor_ok(a) => {}
            _ => return None,
        }
        match (key_actor.next()?, key_ctr.next()?, key_str.next()?) {
            (None, None, Some(_)) | (None, Some(0), None) => {}
            (Some(a), Some(ctr), None) if actor_ok(a) && ctr >= 0 => {}
            _ => return None,
        }
        insert.next()?;
        let act = action.next()??;
        let numeric = value(val_meta.next()??, &mut val_raw)?;
        // Automerge's `OpType::validate_action_and_value`: actions 0 to 7, an increment (5)
        // only by an integer.
        match act {
            0..=4 | 6 | 7 => {}
            5 if numeric => {}
            _ => return None,
        }
        let preds = pred_n.next()??;
        if preds > MAX_OPS {
            return None;
        }
        for _ in 0..preds {
            match (pred_actor.next()?, pred_ctr.next()?) {
                (Some(a), Some(ctr)) if actor_ok(a) && ctr >= 0 => {}
                _ => return None,
            }
        }
        if !cols.expand.is_empty() {
            expand.next()?;
        }
        mark_name.next()?;
    }
    // Every column consumed exactly (stricter than Automerge, which ignores surplus bytes).
    let exact = obj_actor.finished()
        && obj_ctr.finished()
        && key_actor.finished()
        && key_ctr.finished()
        && key_str.finished()
        && insert.finished()
        && val_meta.finished()
        && val_raw.0.is_empty()
        && pred_n.finished()
        && pred_actor.finished()
        && pred_ctr.finished()
        && expand.finished()
        && mark_name.finished();
    exact.then_some(ops as usize)
}

/// Checks one value (its metadata `meta`, its bytes taken from `raw`); whether it is an integer
/// (Automerge's `Int` or `Uint`), which an increment needs.
fn value(meta: u64, raw: &mut Bytes<'_>) -> Option<bool> {
    let len = usize::try_from(meta >> 4).ok()?;
    match meta & 0x0f {
        // Null, false, true: no bytes (Automerge reads none whatever the length says).
        0..=2 => (len == 0).then_some(false),
        // Unsigned and signed LEB128: exactly the value's bytes, minimal (Automerge's strict
        // parser refuses overlong forms here).
        3 => {
            let mut v = Bytes(raw.take(len)?);
            v.uleb()?;
            v.0.is_empty().then_some(true)
        }
        4 => {
            let mut v = Bytes(raw.take(len)?);
            v.sleb()?;
            v.0.is_empty().then_some(true)
        }
        // Float: 8 bytes.
        5 => (len == 8 && raw.take(8).is_some()).then_some(false),
        // String: UTF-8.
        6 => utf8(raw.take(len)?).then_some(false),
        // Bytes.
        7 => raw.take(len).map(|_| false),
        // Counter, timestamp: signed LEB128.
        8 | 9 => {
            let mut v = Bytes(raw.take(len)?);
            v.sleb()?;
            v.0.is_empty().then_some(false)
        }
        // Unknown type codes: Automerge keeps them as opaque values; not vouched for here.
        _ => None,
    }
}

/// A cursor over bytes; every read is bounds-checked and returns `None` past the end.
#[derive(Clone, Copy)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl<'a> Bytes<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A LEB128 length (at most `max`) and that many bytes.
    fn prefixed(&mut self, max: u64) -> Option<&'a [u8]> {
        let n = self.uleb()?;
        if n > max {
            return None;
        }
        self.take(usize::try_from(n).ok()?)
    }

    /// Unsigned LEB128, minimal, at most 9 bytes.
    pub(crate) fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..9 {
            let byte = *self.0.get(i)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                // A last byte of zero after others is overlong.
                if i > 0 && byte == 0 {
                    return None;
                }
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// Signed LEB128, minimal, at most 9 bytes.
    pub(crate) fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        let mut prev = 0u8;
        for i in 0..9 {
            let byte = *self.0.get(i)?;
            value |= i64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                // Overlong: a last byte that only repeats the previous byte's sign bit
                // (Automerge's `leb128_i64` rule).
                if i > 0 && ((byte == 0 && prev & 0x40 == 0) || (byte == 0x7f && prev & 0x40 != 0))
                {
                    return None;
                }
                let shift = 7 * (i + 1);
                if byte & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
            prev = byte;
        }
        None
    }
}

/// A value an RLE column holds.
pub(crate) trait RleValue<'a>: Copy {
    fn read(b: &mut Bytes<'a>) -> Option<Self>;
}

impl<'a> RleValue<'a> for u64 {
    fn read(b: &mut Bytes<'a>) -> Option<u64> {
        b.uleb()
    }
}

impl<'a> RleValue<'a> for i64 {
    fn read(b: &mut Bytes<'a>) -> Option<i64> {
        b.sleb()
    }
}

impl<'a> RleValue<'a> for &'a str {
    fn read(b: &mut Bytes<'a>) -> Option<&'a str> {
        let len = usize::try_from(b.uleb()?).ok()?;
        std::str::from_utf8(b.take(len)?).ok()
    }
}

/// A string's place in a column, checked to be UTF-8 (the validator needs no more of it).
#[derive(Clone, Copy)]
struct Text;

impl<'a> RleValue<'a> for Text {
    fn read(b: &mut Bytes<'a>) -> Option<Text> {
        let len = usize::try_from(b.uleb()?).ok()?;
        utf8(b.take(len)?).then_some(Text)
    }
}

/// Whether `bytes` are UTF-8. Most strings in a record are ASCII (keys, sealed base64); checking
/// that first, a word at a time, spares them the full decoder.
fn utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// A run-length encoded column: a signed count, then a value (count > 0, a run), `-count`
/// values (count < 0, literals), or a length (count 0, a run of nulls). Past its end a column
/// reads as nulls, as Automerge's decoders do.
pub(crate) struct Rle<'a, T> {
    data: Bytes<'a>,
    left: u64,
    literal: bool,
    value: Option<T>,
}

impl<'a, T: RleValue<'a>> Rle<'a, T> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Rle {
            data: Bytes(data),
            left: 0,
            literal: false,
            value: None,
        }
    }

    /// The next value (`Some(None)` is a null); `None` if the column is not as expected.
    pub(crate) fn next(&mut self) -> Option<Option<T>> {
        if self.left == 0 {
            if self.data.0.is_empty() {
                return Some(None);
            }
            let count = self.data.sleb()?;
            if count.unsigned_abs() > MAX_OPS {
                return None;
            }
            match count {
                1.. => {
                    self.left = count as u64;
                    self.literal = false;
                    self.value = Some(T::read(&mut self.data)?);
                }
                ..=-1 => {
                    self.left = count.unsigned_abs();
                    self.literal = true;
                }
                0 => {
                    let nulls = self.data.uleb()?;
                    if nulls == 0 || nulls > MAX_OPS {
                        return None;
                    }
                    self.left = nulls;
                    self.literal = false;
                    self.value = None;
                }
            }
        }
        self.left -= 1;
        if self.literal {
            Some(Some(T::read(&mut self.data)?))
        } else {
            Some(self.value)
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.left == 0 && self.data.0.is_empty()
    }
}

/// A delta-encoded integer column: an RLE of differences from the previous non-null value
/// (starting at 0), summed saturating as Automerge does.
pub(crate) struct Delta<'a> {
    rle: Rle<'a, i64>,
    absolute: i64,
}

impl<'a> Delta<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Delta {
            rle: Rle::new(data),
            absolute: 0,
        }
    }

    pub(crate) fn next(&mut self) -> Option<Option<i64>> {
        Some(match self.rle.next()? {
            Some(d) => {
                self.absolute = self.absolute.saturating_add(d);
                Some(self.absolute)
            }
            None => None,
        })
    }

    pub(crate) fn finished(&self) -> bool {
        self.rle.finished()
    }
}

/// A boolean column: alternating run lengths, starting with `false`. Only the first run may be
/// empty (a column whose first value is `true`); each op must have a value (Automerge refuses an
/// insert column that ends early).
pub(crate) struct Bools<'a> {
    data: Bytes<'a>,
    left: u64,
    value: bool,
    started: bool,
}

impl<'a> Bools<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Bools {
            data: Bytes(data),
            left: 0,
            value: true,
            started: false,
        }
    }

    pub(crate) fn next(&mut self) -> Option<bool> {
        while self.left == 0 {
            let n = self.data.uleb()?;
            if n > MAX_OPS || (n == 0 && self.started) {
                return None;
            }
            self.started = true;
            self.left = n;
            self.value = !self.value;
        }
        self.left -= 1;
        Some(self.value)
    }

    pub(crate) fn finished(&self) -> bool {
        self.left == 0 && self.data.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ObjType, ReadDoc, ScalarValue, ROOT};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Changes of many shapes: maps, lists, text, every scalar type, updates with predecessors,
    /// deletes, increments, other actors, a message, dependencies.
    fn sample_changes() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut a = Automerge::new().with_actor(ActorId::from(&[7u8; 40][..]));
        a.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "type", "consent")?;
            tx.put(ROOT, "subject", "sealed:AAAA")?;
            tx.put(ROOT, "minor", false)?;
            tx.put(ROOT, "n", 42u64)?;
            tx.put(ROOT, "neg", -7i64)?;
            tx.put(ROOT, "f", 1.5f64)?;
            tx.put(ROOT, "nothing", ScalarValue::Null)?;
            tx.put(ROOT, "at", ScalarValue::Timestamp(1_767_139_200_000))?;
            tx.put(ROOT, "blob", ScalarValue::Bytes(vec![1, 2, 3]))?;
            tx.put(ROOT, "count", ScalarValue::counter(3))?;
            let events = tx.put_object(ROOT, "events", ObjType::List)?;
            let e = tx.insert_object(&events, 0, ObjType::Map)?;
            tx.put(&e, "action", "grant")?;
            tx.put(&e, "at", "2026-01-31T00:00:00Z")?;
            let t = tx.put_object(ROOT, "note", ObjType::Text)?;
            tx.splice_text(&t, 0, 0, "hello")?;
            Ok(())
        })
        .expect("first change");
        out.push(a.get_last_local_change().unwrap().raw_bytes().to_vec());
        a.transact_with::<_, _, automerge::AutomergeError, _>(
            |_| automerge::transaction::CommitOptions::default().with_message("edit"),
            |tx| {
                tx.put(ROOT, "minor", true)?;
                tx.increment(ROOT, "count", 2)?;
                tx.delete(ROOT, "nothing")?;
                let events = match tx.get(ROOT, "events")? {
                    Some((_, id)) => id,
                    None => unreachable!("events list exists"),
                };
                let e = tx.insert_object(&events, 1, ObjType::Map)?;
                tx.put(&e, "action", "withdraw")?;
                Ok(())
            },
        )
        .expect("second change");
        out.push(a.get_last_local_change().unwrap().raw_bytes().to_vec());
        // A change by another actor over the first one's ops: other actors, preds by index.
        let mut b = a.fork().with_actor(ActorId::from(&[9u8; 40][..]));
        b.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "subject", "sealed:BBBB")?;
            tx.put(ROOT, "type", "consent")?;
            Ok(())
        })
        .expect("third change");
        out.push(b.get_last_local_change().unwrap().raw_bytes().to_vec());
        // Many ops of one kind (long runs) and an empty change.
        let mut c = Automerge::new();
        c.transact::<_, _, automerge::AutomergeError>(|tx| {
            let l = tx.put_object(ROOT, "l", ObjType::List)?;
            for i in 0..300u64 {
                tx.insert(&l, i as usize, i % 3)?;
            }
            Ok(())
        })
        .expect("list change");
        out.push(c.get_last_local_change().unwrap().raw_bytes().to_vec());
        c.empty_commit(Default::default());
        out.push(c.get_last_local_change().unwrap().raw_bytes().to_vec());
        out
    }

    #[test]
    fn reads_every_sample_and_agrees_with_automerge() {
        for (i, bytes) in sample_changes().iter().enumerate() {
            let facts = read(bytes).unwrap_or_else(|| panic!("sample {i} is not read"));
            assert!(agrees_with_automerge(bytes, &facts), "sample {i} disagrees");
        }
    }

    #[test]
    fn never_vouches_for_what_automerge_refuses() {
        // Mutations of real changes: byte flips, small-value rewrites, truncations, insertions.
        // Whatever the reader vouches for, Automerge must accept, with the same facts. The count
        // of mutants it vouched for is asserted too, so the test keeps exercising the reader.
        let samples = sample_changes();
        let mut rng = StdRng::seed_from_u64(0x5eed_c4a2);
        let (mut vouched, mut total) = (0u32, 0u32);
        for _ in 0..40_000 {
            let mut m = samples[rng.gen_range(0..samples.len())].clone();
            for _ in 0..rng.gen_range(1..=3) {
                let at = rng.gen_range(0..m.len());
                match rng.gen_range(0..6) {
                    0 => m[at] ^= 1 << rng.gen_range(0..8),
                    1 => m[at] = rng.gen_range(0..4),
                    2 => m[at] = m[at].wrapping_add(1),
                    3 => m[at] = m[at].wrapping_sub(1),
                    4 => m.truncate(at.max(1)),
                    _ => m.insert(at, rng.gen()),
                }
            }
            // Keep the chunk length consistent with the bytes often enough that mutations
            // reach the body.
            if rng.gen_bool(0.7) {
                fix_length(&mut m);
            }
            total += 1;
            if let Some(facts) = read(&m) {
                vouched += 1;
                assert!(
                    agrees_with_automerge(&m, &facts),
                    "vouched for bytes Automerge refuses or reads differently: {}",
                    hex::encode(&m)
                );
            }
        }
        assert!(
            vouched > 1_000,
            "only {vouched} of {total} mutants were read"
        );
    }

    /// Rewrites the chunk header's length to cover the bytes after it (when it can).
    fn fix_length(m: &mut Vec<u8>) {
        if m.len() < CHUNK_TYPE_AT + 2 {
            return;
        }
        let mut b = Bytes(&m[CHUNK_TYPE_AT + 1..]);
        let Some(_) = b.uleb() else { return };
        let body_at = m.len() - b.0.len();
        let body = m[body_at..].to_vec();
        let mut len = Vec::new();
        let mut n = body.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                len.push(byte);
                break;
            }
            len.push(byte | 0x80);
        }
        m.truncate(CHUNK_TYPE_AT + 1);
        m.extend_from_slice(&len);
        m.extend_from_slice(&body);
    }

    #[test]
    fn compressed_or_foreign_chunks_are_left_to_automerge() {
        let mut bytes = sample_changes().remove(0);
        assert!(read(&bytes[..bytes.len() - 1]).is_none(), "truncated");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).is_none(), "trailing byte after the chunk");
        bytes[CHUNK_TYPE_AT] = 2;
        assert!(read(&bytes).is_none(), "compressed chunk type");
        assert!(read(&[]).is_none());
        assert!(read(&MAGIC).is_none());
    }

    #[test]
    fn leb128_readers_refuse_overlong_forms() {
        assert_eq!(Bytes(&[0x00]).uleb(), Some(0));
        assert_eq!(Bytes(&[0x80, 0x01]).uleb(), Some(128));
        assert_eq!(Bytes(&[0x80, 0x00]).uleb(), None, "overlong zero");
        assert_eq!(Bytes(&[0xff; 9]).uleb(), None, "more than 9 bytes");
        assert_eq!(Bytes(&[0x7f]).sleb(), Some(-1));
        assert_eq!(Bytes(&[0x40]).sleb(), Some(-64));
        assert_eq!(Bytes(&[0xc0, 0x00]).sleb(), Some(64));
        assert_eq!(Bytes(&[0xff, 0x7f]).sleb(), None, "overlong -1");
        assert_eq!(Bytes(&[0x80, 0x00]).sleb(), None, "overlong 0");
    }

    /// Root string puts as `Change::decode` sees them (the reference `for_each_root_string_put`
    /// must match).
    fn decoded(change: &automerge::Change) -> Vec<(String, String)> {
        change
            .decode()
            .operations
            .iter()
            .filter_map(|op| match (&op.obj, &op.key, &op.action) {
                (
                    automerge::legacy::ObjectId::Root,
                    automerge::legacy::Key::Map(k),
                    automerge::legacy::OpType::Put(automerge::ScalarValue::Str(s)),
                ) => Some((k.to_string(), s.to_string())),
                _ => None,
            })
            .collect()
    }

    fn root_puts(bytes: &[u8]) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        for_each_root_string_put(bytes, |k, v| out.push((k.to_string(), v.to_string())))?;
        Some(out)
    }

    #[test]
    fn root_string_puts_agree_with_automerge() {
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "type", "transfer")?;
            tx.put(ROOT, "count", 3u64)?;
            let m = tx.put_object(ROOT, "nested", ObjType::Map)?;
            tx.put(&m, "status", "not at root")?;
            let l = tx.put_object(ROOT, "list", ObjType::List)?;
            tx.insert(&l, 0, "item")?;
            tx.put(ROOT, "status", "refused")?;
            tx.put(ROOT, "empty", "")?;
            tx.put(ROOT, "bytes", ScalarValue::Bytes(vec![1, 2, 3]))?;
            tx.put(ROOT, "long", "x".repeat(300).as_str())?;
            Ok(())
        })
        .unwrap();
        // A second change overwrites a root key (predecessors, a non-root actor reference).
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "status", "sent")?;
            tx.delete(ROOT, "empty")?;
            Ok(())
        })
        .unwrap();
        let mut samples: Vec<Vec<u8>> = doc
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        samples.extend(sample_changes());
        for bytes in &samples {
            let change = automerge::Change::try_from(&bytes[..]).unwrap();
            assert_eq!(root_puts(bytes), Some(decoded(&change)), "reader disagrees");
        }
        let first = automerge::Change::try_from(&samples[0][..]).unwrap();
        assert!(decoded(&first).contains(&("type".into(), "transfer".into())));
    }

    #[test]
    fn truncated_or_garbage_bytes_give_none_not_a_panic() {
        let bytes = sample_changes().remove(0);
        let change = automerge::Change::try_from(&bytes[..]).unwrap();
        for cut in 0..bytes.len() {
            assert!(read(&bytes[..cut]).is_none(), "cut at {cut}");
            let _ = for_each_root_string_put(&bytes[..cut], |_, _| {});
            assert!(change_time(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = read(&flipped);
            let _ = for_each_root_string_put(&flipped, |_, _| {});
            let _ = change_time(&flipped);
            flipped[i] ^= 0xff;
        }
        assert!(for_each_root_string_put(&[], |_, _| {}).is_none());
        assert!(change_time(&[]).is_none());
        assert_eq!(change_time(&bytes), Some(change.timestamp()));
    }

    /// The header time as Automerge reads it, for changes with and without dependencies and
    /// messages, and for times of every sign and size a `with_time` accepts.
    #[test]
    fn change_time_agrees_with_automerge() {
        let mut doc = Automerge::new();
        // (Automerge itself overflows on times near i64::MIN and i64::MAX in debug builds.)
        let times = [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            1_735_689_600,
            1 << 40,
            -(1 << 40),
        ];
        for (i, time) in times.into_iter().enumerate() {
            let mut tx = doc.transaction();
            tx.put(ROOT, "n", i as i64).unwrap();
            let mut options = automerge::transaction::CommitOptions::default().with_time(time);
            if i % 2 == 1 {
                options = options.with_message(format!("change {i}"));
            }
            tx.commit_with(options);
            let change = doc.get_last_local_change().unwrap();
            assert_eq!(change.timestamp(), time);
            assert_eq!(change_time(change.raw_bytes()), Some(time), "time {time}");
        }
        // A change of another actor with several dependencies.
        let mut other = doc.fork();
        let mut tx = other.transaction();
        tx.put(ROOT, "other", "x").unwrap();
        tx.commit_with(automerge::transaction::CommitOptions::default().with_time(42));
        let change = other.get_last_local_change().unwrap();
        assert!(!change.deps().is_empty());
        assert_eq!(change_time(change.raw_bytes()), Some(42));
        // Another chunk type (a whole document) is not a change.
        assert_eq!(change_time(&doc.save()), None);
    }
}
