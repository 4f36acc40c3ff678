//! Facts read straight from a verified Automerge change's bytes, without expanding it.
//!
//! Two readers, both for changes already verified (a stored envelope's, one `Change::try_from`
//! accepted, or one `consentd_sync::change_chunk` vouched for, which is the validating reader of
//! the same format), so they are readers of valid data, not validators: on
//! anything they do not expect (a compressed chunk, a deflated column, a run past the end, bad
//! UTF-8) they return `None` and the caller falls back to Automerge. They never panic on any
//! input. Layout: the Automerge binary format, "Change chunks" and "Column encodings" (RLE runs: a
//! signed LEB128 count, positive = a repeated value, negative = that many literal values, zero = a
//! run of nulls whose length follows).
//!
//! - [`change_time`]: the authoring time in the change header. Replication keys every envelope
//!   by it (its reconciliation item) when it starts and whenever an envelope becomes durable;
//!   `Change::try_from` hashes the chunk and decodes every op to answer that (the replicator's
//!   share of a cold sync's CPU, and most of a restart's at 1,000,000 records).
//! - [`for_each_root_string_put`]: `audit verify` needs, for each creating change, the record
//!   type it writes at the root and whether it writes `status: "refused"`. `Change::decode`
//!   answers that but expands every op into owned legacy structures (strings, predecessor lists,
//!   an actor map): in the profile of `consentd bench` (row `audit_verify`) it cost as much as
//!   parsing the change itself. This walks only the five columns the question needs (object, key
//!   string, action, value metadata, value bytes) without allocating.

/// Automerge column specs (`id << 4 | type`) of the columns read here.
const OBJ_ACTOR: u32 = 1; // id 0, actor
const OBJ_CTR: u32 = 2; // id 0, integer
const KEY_STR: u32 = (1 << 4) | 5; // id 1, string
const ACTION: u32 = (4 << 4) | 2; // id 4, integer
const VAL_META: u32 = (5 << 4) | 6; // id 5, value metadata
const VAL_RAW: u32 = (5 << 4) | 7; // id 5, value
/// The deflate bit of a column spec: a deflated column is not read here (canonical envelopes
/// carry uncompressed chunks).
const DEFLATE: u32 = 0b1000;
/// Action code of a put (`OpType::Put`).
const ACTION_PUT: u64 = 1;
/// Value metadata type code of a UTF-8 string.
const VALUE_STRING: u64 = 6;
/// Bytes before a change chunk's body: magic (4), checksum (4), chunk type (1).
const CHUNK_PREFIX: usize = 9;
/// Most columns a change may declare here (Automerge writes about a dozen); more is not a change
/// this reader expects.
const MAX_COLUMNS: u64 = 64;

/// Automerge's magic bytes, first in every chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of an uncompressed change.
const CHUNK_CHANGE: u8 = 1;

/// The authoring time (`Change::timestamp`) in the header of `change`, the raw bytes of an
/// uncompressed change chunk. `None` when the bytes are not laid out as expected; the caller then
/// asks Automerge.
pub fn change_time(change: &[u8]) -> Option<i64> {
    header_to_time(change).map(|(time, _)| time)
}

/// Reads a change chunk's header up to its time: the time, and the rest of the chunk's body
/// (from the message on).
fn header_to_time(change: &[u8]) -> Option<(i64, Bytes<'_>)> {
    if change.get(..4)? != MAGIC || *change.get(8)? != CHUNK_CHANGE {
        return None;
    }
    let mut body = Bytes(change.get(CHUNK_PREFIX..)?);
    let len = usize::try_from(body.uleb()?).ok()?;
    let mut c = Bytes(body.take(len)?);
    let deps = usize::try_from(c.uleb()?).ok()?;
    c.take(deps.checked_mul(32)?)?;
    c.take_prefixed()?; // actor
    c.uleb()?; // seq
    c.uleb()?; // start op
    let time = c.sleb()?;
    Some((time, c))
}

/// Calls `f(key, value)` for each op of `change` (raw bytes of an uncompressed change chunk with
/// `ops` ops) that puts a string at the root map, in op order. `None` when the bytes are not laid
/// out as this reader expects; the caller then uses `Change::decode`.
pub fn for_each_root_string_put(
    change: &[u8],
    ops: usize,
    mut f: impl FnMut(&str, &str),
) -> Option<()> {
    let (_, mut c) = header_to_time(change)?;
    c.take_prefixed()?; // message
    for _ in 0..c.uleb()? {
        c.take_prefixed()?; // other actors
    }
    let ncols = c.uleb()?;
    if ncols > MAX_COLUMNS {
        return None;
    }
    let mut specs = [(0u32, 0usize); MAX_COLUMNS as usize];
    for slot in specs.iter_mut().take(ncols as usize) {
        let spec = u32::try_from(c.uleb()?).ok()?;
        if spec & DEFLATE != 0 {
            return None;
        }
        *slot = (spec, usize::try_from(c.uleb()?).ok()?);
    }
    let specs = &specs[..ncols as usize];
    let col = |want| column(c, specs, want);
    let mut obj_actor = Rle::new(col(OBJ_ACTOR)?);
    let mut obj_ctr = Rle::new(col(OBJ_CTR)?);
    let mut key_str = Rle::new(col(KEY_STR)?);
    let mut action = Rle::new(col(ACTION)?);
    let mut val_meta = Rle::new(col(VAL_META)?);
    let mut val_raw = Bytes(col(VAL_RAW)?);
    for _ in 0..ops {
        let actor = obj_actor.next_uint()?;
        let ctr = obj_ctr.next_uint()?;
        let key = key_str.next_str()?;
        let act = action.next_uint()?;
        let meta = val_meta.next_uint()?.unwrap_or(0);
        let value = val_raw.take(usize::try_from(meta >> 4).ok()?)?;
        // Automerge's own reading of the object columns: both null, or counter 0, is the root.
        let root = matches!((actor, ctr), (None, None) | (_, Some(0)));
        if let (true, Some(key), Some(ACTION_PUT), VALUE_STRING) = (root, key, act, meta & 0xf) {
            f(key, std::str::from_utf8(value).ok()?);
        }
    }
    Some(())
}

/// The bytes of the column `want` (declared in `specs`, laid out in declaration order from
/// `data`); empty when the change does not declare it (an absent column is all nulls).
fn column<'a>(mut data: Bytes<'a>, specs: &[(u32, usize)], want: u32) -> Option<&'a [u8]> {
    let mut found: &[u8] = &[];
    for &(spec, len) in specs {
        let bytes = data.take(len)?;
        if spec == want {
            found = bytes;
        }
    }
    Some(found)
}

/// A bounds-checked cursor over bytes.
#[derive(Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn take_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.uleb()?).ok()?;
        self.take(n)
    }

    /// Unsigned LEB128, at most 10 bytes.
    fn uleb(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = *self.0.first()?;
            self.0 = &self.0[1..];
            out |= u64::from(b & 0x7f).checked_shl(7 * i)?;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }

    /// Signed LEB128, at most 10 bytes.
    fn sleb(&mut self) -> Option<i64> {
        let mut out = 0i64;
        let mut shift = 0u32;
        for _ in 0..10 {
            let b = *self.0.first()?;
            self.0 = &self.0[1..];
            out |= i64::from(b & 0x7f).checked_shl(shift)?;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    out |= -1i64 << shift;
                }
                return Some(out);
            }
        }
        None
    }
}

/// An RLE column reader: each call yields the next op's value (`Some(None)` for null; a finished
/// column yields nulls, as Automerge reads it).
struct Rle<'a> {
    data: Bytes<'a>,
    /// Values left in the current run.
    left: u64,
    /// The current run: literal (read a value each time), repeated (`value`), or nulls.
    kind: Run,
    value: Value<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Literal,
    Repeat,
    Null,
}

#[derive(Clone, Copy)]
enum Value<'a> {
    None,
    Uint(u64),
    Str(&'a str),
}

impl<'a> Rle<'a> {
    fn new(data: &'a [u8]) -> Rle<'a> {
        Rle {
            data: Bytes(data),
            left: 0,
            kind: Run::Null,
            value: Value::None,
        }
    }

    /// Advances to the next value; `read` decodes one value of the column's type.
    fn step(
        &mut self,
        read: impl Fn(&mut Bytes<'a>) -> Option<Value<'a>>,
    ) -> Option<Option<Value<'a>>> {
        while self.left == 0 {
            if self.data.0.is_empty() {
                return Some(None);
            }
            let count = self.data.sleb()?;
            if count > 0 {
                self.kind = Run::Repeat;
                self.left = count.unsigned_abs();
                self.value = read(&mut self.data)?;
            } else if count < 0 {
                self.kind = Run::Literal;
                self.left = count.unsigned_abs();
            } else {
                self.kind = Run::Null;
                self.left = self.data.uleb()?;
            }
        }
        self.left -= 1;
        Some(match self.kind {
            Run::Literal => Some(read(&mut self.data)?),
            Run::Repeat => Some(self.value),
            Run::Null => None,
        })
    }

    fn next_uint(&mut self) -> Option<Option<u64>> {
        match self.step(|b| b.uleb().map(Value::Uint))? {
            Some(Value::Uint(v)) => Some(Some(v)),
            Some(_) => None,
            None => Some(None),
        }
    }

    fn next_str(&mut self) -> Option<Option<&'a str>> {
        let read = |b: &mut Bytes<'a>| {
            let bytes = b.take_prefixed()?;
            std::str::from_utf8(bytes).ok().map(Value::Str)
        };
        match self.step(read)? {
            Some(Value::Str(s)) => Some(Some(s)),
            Some(_) => None,
            None => Some(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ObjType, ROOT};

    /// Root string puts as `Change::decode` sees them (the reference this reader must match).
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

    fn read(change: &automerge::Change) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        for_each_root_string_put(change.raw_bytes(), change.len(), |k, v| {
            out.push((k.to_string(), v.to_string()))
        })?;
        Some(out)
    }

    #[test]
    fn agrees_with_automerge_on_mixed_changes() {
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
            tx.put(ROOT, "bytes", automerge::ScalarValue::Bytes(vec![1, 2, 3]))?;
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
        for change in &doc.get_changes(&[]) {
            let want = decoded(change);
            assert_eq!(read(change).as_ref(), Some(&want), "reader disagrees");
        }
        assert!(decoded(&doc.get_changes(&[])[0]).contains(&("type".into(), "transfer".into())));
    }

    #[test]
    fn truncated_or_garbage_bytes_give_none_not_a_panic() {
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "type", "consent")?;
            tx.put(ROOT, "purpose", "marketing")?;
            Ok(())
        })
        .unwrap();
        let change = doc.get_last_local_change().unwrap();
        let bytes = change.raw_bytes();
        for cut in 0..bytes.len() {
            let _ = for_each_root_string_put(&bytes[..cut], change.len(), |_, _| {});
            let _ = change_time(&bytes[..cut]);
        }
        let mut flipped = bytes.to_vec();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = for_each_root_string_put(&flipped, change.len(), |_, _| {});
            let _ = change_time(&flipped);
            flipped[i] ^= 0xff;
        }
        assert!(for_each_root_string_put(&[], 1, |_, _| {}).is_none());
        assert!(change_time(&[]).is_none());
        assert!(
            change_time(&bytes[..bytes.len() - 1]).is_none(),
            "a chunk shorter than its declared length is not read"
        );
        assert_eq!(change_time(bytes), Some(change.timestamp()));
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
