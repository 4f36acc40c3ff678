//! The document a record's first change makes, read straight from the change chunk.
//!
//! Why: a cold sync receives most records as one creating change each, and the receiver needs
//! only the record's fields (its projection), never a loaded document. Applying the change to a
//! new `Automerge` document and walking it back out was the largest share of a cold sync's CPU in
//! `consentd bench` (apply 21 %, the walk 5 %, each document ~17 KB of allocations; DESIGN.md).
//! The change itself already lists every op in order, and a first change by one actor is the
//! simplest history there is: no concurrency, no conflicts, every op's predecessors in the same
//! change.
//!
//! # Contract
//!
//! [`new_document`] returns `Some(root)` only when `root` is exactly what
//! `serde_json::to_value(automerge::AutoSerde::from(&doc))` gives for the document made by
//! applying this one change to an empty document; `None` means "not a change this reader vouches
//! for", and the caller applies it with Automerge, whose result stands. Debug builds check the
//! contract on every call ([`agrees_with_automerge`]); unit tests check it on real records, on
//! hand-made changes of every shape, and on thousands of mutated ones.
//!
//! # What it vouches for
//!
//! A change chunk as [`crate::change_chunk`] reads it, with no dependencies, sequence number 1,
//! no other actors, and ops that only:
//! - put a null, boolean, integer or string, or make a map or a list, under a key of a map (the
//!   root, or a map this change made), either new or replacing the value this change put there
//!   last (its one predecessor);
//! - insert such a value or object into a list this change made, at its head or right after an
//!   element this change inserted, with no predecessor.
//!
//! Anything else (deletes, text, tables, counters, increments, marks, floats, bytes,
//! timestamps, conflicts, references to other actors' ops) is left to Automerge. So is nesting
//! deeper than [`DEPTH_MAX`] and a list longer than [`LIST_ELEMS_MAX`]: both keep the work
//! proportional to the bytes and the stack bounded.
//!
//! Within one change, op ids increase, so an element inserted after another lands directly
//! after it (Automerge's list order puts an insert after its reference, before any sibling with
//! a smaller id); a put with the current value as its predecessor replaces it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::change_chunk::{header, Bools, Bytes, Columns, Delta, Rle, MAX_OPS};

/// Deepest nesting of maps and lists read here (a record nests two levels: root, events, event).
pub const DEPTH_MAX: usize = 16;
/// Longest list read here (a record's event lists hold a few entries; Automerge takes the rest).
pub const LIST_ELEMS_MAX: usize = 4096;

/// Automerge action codes (`OpType`).
const ACTION_MAKE_MAP: u64 = 0;
const ACTION_PUT: u64 = 1;
const ACTION_MAKE_LIST: u64 = 2;

/// A value as the change wrote it; objects by their index in [`Doc::objects`].
#[derive(Clone, Copy)]
enum Slot<'a> {
    Null,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Str(&'a str),
    Obj(usize),
}

/// An object of the document being built. Each entry keeps the counter of the op that wrote it
/// (a map value's op, a list element's insert op).
enum Node<'a> {
    Map(BTreeMap<&'a str, (u64, Slot<'a>)>),
    List(Vec<(u64, Slot<'a>)>),
}

struct Doc<'a> {
    /// Index 0 is the root map.
    objects: Vec<(Node<'a>, usize)>,
}

/// The root of the document that this one change makes, as `AutoSerde` renders it; see the
/// module docs for when it answers. For changes already verified (`bytes` may be anything: a
/// layout this reader does not vouch for gives `None`, never a panic).
pub fn new_document(bytes: &[u8]) -> Option<Map<String, Value>> {
    let root = read(bytes)?;
    debug_assert!(
        agrees_with_automerge(bytes, &root),
        "first_change vouched for a document that Automerge builds otherwise"
    );
    Some(root)
}

fn read(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut h = header(bytes)?;
    if !h.deps.is_empty() || h.seq != 1 || h.other_actors != 0 {
        return None;
    }
    let cols = Columns::parse(&mut h.rest)?;
    let mut obj_actor = Rle::<u64>::new(cols.obj_actor);
    let mut obj_ctr = Rle::<u64>::new(cols.obj_ctr);
    let mut key_actor = Rle::<u64>::new(cols.key_actor);
    let mut key_ctr = Delta::new(cols.key_ctr);
    let mut key_str = Rle::<&str>::new(cols.key_str);
    let mut insert = Bools::new(cols.insert);
    let mut action = Rle::<u64>::new(cols.action);
    let mut val_meta = Rle::<u64>::new(cols.val_meta);
    let mut val_raw = Bytes(cols.val_raw);
    let mut pred_n = Rle::<u64>::new(cols.pred_group);
    let mut pred_actor = Rle::<u64>::new(cols.pred_actor);
    let mut pred_ctr = Delta::new(cols.pred_ctr);
    let mut expand = Bools::new(cols.expand);
    let mut mark_name = Rle::<&str>::new(cols.mark_name);

    let mut doc = Doc {
        objects: vec![(Node::Map(BTreeMap::new()), 0)],
    };
    // The object each op made, by op index (ops that made none hold `None`).
    let mut made: Vec<Option<usize>> = Vec::new();
    let start = h.start_op;
    while !action.finished() {
        let i = made.len() as u64;
        if i >= MAX_OPS {
            return None;
        }
        let op = start.checked_add(i)?;
        // An op's own counter, or one it names, must be an earlier op of this change.
        let earlier = |ctr: i64| -> Option<usize> {
            let at = u64::try_from(ctr).ok()?.checked_sub(start)?;
            (at < i).then_some(at as usize)
        };
        let obj = match (obj_actor.next()?, obj_ctr.next()?) {
            (None, None) => 0,
            (Some(0), Some(ctr)) => made[earlier(i64::try_from(ctr).ok()?)?]?,
            _ => return None,
        };
        let key = (key_actor.next()?, key_ctr.next()?, key_str.next()?);
        let is_insert = insert.next()?;
        let act = action.next()??;
        let meta = val_meta.next()??;
        let value = scalar(meta, &mut val_raw)?;
        let preds = pred_n.next()??;
        let pred = match preds {
            0 => None,
            1 => match (pred_actor.next()?, pred_ctr.next()?) {
                (Some(0), Some(ctr)) => Some(u64::try_from(ctr).ok()?),
                _ => return None,
            },
            _ => return None,
        };
        if !cols.expand.is_empty() && expand.next()? {
            return None;
        }
        if mark_name.next()?.is_some() {
            return None;
        }
        let depth = doc.objects[obj].1;
        let slot = match act {
            ACTION_PUT => value,
            ACTION_MAKE_MAP | ACTION_MAKE_LIST if meta == 0 && depth < DEPTH_MAX => {
                let node = if act == ACTION_MAKE_MAP {
                    Node::Map(BTreeMap::new())
                } else {
                    Node::List(Vec::new())
                };
                doc.objects.push((node, depth + 1));
                Slot::Obj(doc.objects.len() - 1)
            }
            _ => return None,
        };
        made.push(match slot {
            Slot::Obj(o) if act != ACTION_PUT => Some(o),
            _ => None,
        });
        match &mut doc.objects[obj].0 {
            Node::Map(entries) => {
                let (None, None, Some(name)) = key else {
                    return None;
                };
                if is_insert {
                    return None;
                }
                // New, or replacing exactly the value this change put there last.
                let current = entries.get(name).map(|(ctr, _)| *ctr);
                if current != pred {
                    return None;
                }
                entries.insert(name, (op, slot));
            }
            Node::List(elems) => {
                if !is_insert || pred.is_some() || elems.len() >= LIST_ELEMS_MAX {
                    return None;
                }
                let at = match key {
                    (None, Some(0), None) => 0,
                    (Some(0), Some(ctr), None) => {
                        earlier(ctr)?;
                        let ctr = ctr as u64;
                        // Appends name the last element: search from the end.
                        elems.iter().rposition(|(c, _)| *c == ctr)? + 1
                    }
                    _ => return None,
                };
                elems.insert(at, (op, slot));
            }
        }
    }
    // Every column consumed exactly, as `change_chunk::read` requires.
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
    if !exact {
        return None;
    }
    match doc.json(0) {
        Value::Object(root) => Some(root),
        _ => unreachable!("object 0 is the root map"),
    }
}

/// A put's value from its metadata and raw bytes; `None` for types left to Automerge.
fn scalar<'a>(meta: u64, raw: &mut Bytes<'a>) -> Option<Slot<'a>> {
    let len = usize::try_from(meta >> 4).ok()?;
    let bytes = raw.take(len)?;
    let mut v = Bytes(bytes);
    let slot = match meta & 0x0f {
        0 if len == 0 => Slot::Null,
        1 if len == 0 => Slot::Bool(false),
        2 if len == 0 => Slot::Bool(true),
        3 => Slot::Uint(v.uleb()?),
        4 => Slot::Int(v.sleb()?),
        6 => return Some(Slot::Str(std::str::from_utf8(bytes).ok()?)),
        _ => return None,
    };
    v.0.is_empty().then_some(slot)
}

impl Doc<'_> {
    fn json(&self, obj: usize) -> Value {
        let slot = |s: &Slot<'_>| match *s {
            Slot::Null => Value::Null,
            Slot::Bool(b) => Value::Bool(b),
            Slot::Uint(u) => Value::from(u),
            Slot::Int(i) => Value::from(i),
            Slot::Str(s) => Value::String(s.to_owned()),
            Slot::Obj(o) => self.json(o),
        };
        match &self.objects[obj].0 {
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, (_, s))| ((*k).to_owned(), slot(s)))
                    .collect(),
            ),
            Node::List(elems) => Value::Array(elems.iter().map(|(_, s)| slot(s)).collect()),
        }
    }
}

/// Whether `root`, which [`new_document`] gave for `bytes`, is what Automerge makes of `bytes`
/// applied to an empty document: the reader's contract, checked by debug builds on every call.
pub fn agrees_with_automerge(bytes: &[u8], root: &Map<String, Value>) -> bool {
    let Ok(change) = automerge::Change::try_from(bytes) else {
        return false;
    };
    let mut doc = automerge::Automerge::new();
    if doc.apply_changes([change]).is_err() {
        return false;
    }
    serde_json::to_value(automerge::AutoSerde::from(&doc))
        .is_ok_and(|v| v.as_object() == Some(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ObjType, ScalarValue, ROOT};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn first_change(
        f: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
        ) -> Result<(), automerge::AutomergeError>,
    ) -> Vec<u8> {
        let mut doc = Automerge::new().with_actor(ActorId::from(&[7u8; 40][..]));
        doc.transact(|tx| f(tx)).expect("change");
        doc.get_last_local_change()
            .expect("a change")
            .raw_bytes()
            .to_vec()
    }

    /// A record-like first change: every shape a consentd record writes.
    fn record_like() -> Vec<u8> {
        first_change(|tx| {
            tx.put(ROOT, "id", "0123456789abcdef0123456789abcdef")?;
            tx.put(ROOT, "type", "consent")?;
            tx.put(ROOT, "subject", "cx1:sealed")?;
            tx.put(ROOT, "minor", false)?;
            tx.put(ROOT, "adult", true)?;
            tx.put(ROOT, "n", 42i64)?;
            tx.put(ROOT, "neg", -7i64)?;
            tx.put(ROOT, "u", 7u64)?;
            tx.put(ROOT, "nothing", ScalarValue::Null)?;
            tx.put(ROOT, "ünïcode", "naïve ✓")?;
            let events = tx.put_object(ROOT, "events", ObjType::List)?;
            for i in 0..3 {
                let e = tx.insert_object(&events, i, ObjType::Map)?;
                tx.put(&e, "action", if i % 2 == 0 { "grant" } else { "withdraw" })?;
                tx.put(&e, "at", "2026-01-31T00:00:00Z")?;
                let tags = tx.put_object(&e, "tags", ObjType::List)?;
                tx.insert(&tags, 0, "b")?;
                tx.insert(&tags, 0, "a")?; // at the head, before "b"
                tx.insert(&tags, 1, "a2")?; // between
            }
            tx.insert(&events, 1, "between")?;
            let m = tx.put_object(ROOT, "nested", ObjType::Map)?;
            tx.put(&m, "k", "v")?;
            tx.put(&m, "k", "replaced")?; // a predecessor in the same change
            tx.put(ROOT, "empty_list", ScalarValue::Null)?;
            tx.put_object(ROOT, "empty_list", ObjType::List)?; // an object replacing a scalar
            Ok(())
        })
    }

    #[test]
    fn record_like_changes_are_read_as_automerge_reads_them() {
        let bytes = record_like();
        let root = read(&bytes).expect("a record-like first change is vouched for");
        assert!(agrees_with_automerge(&bytes, &root));
        assert_eq!(root["nested"]["k"], "replaced");
        assert_eq!(
            root["events"][0]["tags"],
            serde_json::json!(["a", "a2", "b"])
        );
        assert_eq!(root["events"][1], "between");
        assert_eq!(root["events"].as_array().map(Vec::len), Some(4));
    }

    /// consentd writes a new record with `init_root_from_hydrate`: one batch, breadth first, so
    /// every object's ops come after all of its parent's (not depth first as puts make them).
    #[test]
    fn batch_written_changes_are_read_as_automerge_reads_them() {
        use automerge::hydrate::Value as H;
        let event = |action: &str| {
            H::Map(
                std::collections::HashMap::from([
                    ("action", H::from(action)),
                    ("at", H::from("2026-01-31T00:00:00Z")),
                    ("tags", vec![H::from("a"), H::from("b")].into()),
                ])
                .into(),
            )
        };
        let root: automerge::hydrate::Map = std::collections::HashMap::from([
            ("id", H::from("0123456789abcdef0123456789abcdef")),
            ("type", H::from("consent")),
            ("minor", H::scalar(false)),
            ("n", H::from(-7i64)),
            ("nothing", H::scalar(ScalarValue::Null)),
            (
                "events",
                vec![
                    event("grant"),
                    H::scalar(ScalarValue::Null),
                    event("withdraw"),
                ]
                .into(),
            ),
            (
                "nested",
                H::Map(std::collections::HashMap::from([("k", H::from("v"))]).into()),
            ),
            ("empty", Vec::<H>::new().into()),
        ])
        .into();
        let bytes = first_change(|tx| tx.init_root_from_hydrate(&root));
        let read_root = read(&bytes).expect("a batch-written first change is vouched for");
        assert!(agrees_with_automerge(&bytes, &read_root));
        assert_eq!(read_root["events"][2]["action"], "withdraw");
        assert_eq!(
            read_root["events"][0]["tags"],
            serde_json::json!(["a", "b"])
        );
        assert_eq!(read_root["nested"]["k"], "v");
    }

    #[test]
    fn what_it_does_not_vouch_for_is_left_to_automerge() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "text",
                first_change(|tx| {
                    let t = tx.put_object(ROOT, "t", ObjType::Text)?;
                    tx.splice_text(&t, 0, 0, "hi")
                }),
            ),
            ("float", first_change(|tx| tx.put(ROOT, "f", 1.5f64))),
            (
                "bytes",
                first_change(|tx| tx.put(ROOT, "b", ScalarValue::Bytes(vec![1]))),
            ),
            (
                "counter",
                first_change(|tx| tx.put(ROOT, "c", ScalarValue::counter(1))),
            ),
            (
                "timestamp",
                first_change(|tx| tx.put(ROOT, "t", ScalarValue::Timestamp(5))),
            ),
            (
                "delete",
                first_change(|tx| {
                    tx.put(ROOT, "k", "v")?;
                    tx.delete(ROOT, "k")
                }),
            ),
            (
                "list update",
                first_change(|tx| {
                    let l = tx.put_object(ROOT, "l", ObjType::List)?;
                    tx.insert(&l, 0, "a")?;
                    tx.put(&l, 0, "b")
                }),
            ),
            (
                "too deep",
                first_change(|tx| {
                    let mut m = ROOT;
                    for _ in 0..=DEPTH_MAX {
                        m = tx.put_object(&m, "m", ObjType::Map)?;
                    }
                    Ok(())
                }),
            ),
        ];
        for (what, bytes) in cases {
            assert!(read(&bytes).is_none(), "{what}: vouched for");
            assert!(
                automerge::Change::try_from(&bytes[..]).is_ok(),
                "{what}: a valid change"
            );
        }
        // A second change (dependencies, sequence number 2) is not a first change.
        let mut doc = Automerge::new();
        doc.transact(|tx| tx.put(ROOT, "a", 1i64)).unwrap();
        doc.transact(|tx| tx.put(ROOT, "a", 2i64)).unwrap();
        let second = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert!(read(&second).is_none(), "a change with dependencies");
    }

    #[test]
    fn never_vouches_for_a_document_automerge_builds_otherwise() {
        // Mutations of a real first change: whatever the reader vouches for, Automerge must
        // build the same document. The mutants vouched for are counted, so the test keeps
        // reaching the reader's op walk.
        let base = record_like();
        let mut rng = StdRng::seed_from_u64(0xf1_257c);
        let (mut vouched, mut total) = (0u32, 0u32);
        for _ in 0..20_000 {
            let mut m = base.clone();
            // Past the chunk header, so that most mutants reach the ops.
            let at = rng.gen_range(12..m.len());
            match rng.gen_range(0..4) {
                0 => m[at] ^= 1 << rng.gen_range(0..8),
                1 => m[at] = rng.gen_range(0..4),
                2 => m[at] = m[at].wrapping_add(1),
                _ => m[at] = m[at].wrapping_sub(1),
            }
            total += 1;
            if let Some(root) = read(&m) {
                vouched += 1;
                // A mutant Automerge refuses (its checksum no longer matches) says nothing;
                // one it accepts must build what the reader read.
                if automerge::Change::try_from(&m[..]).is_ok() {
                    assert!(agrees_with_automerge(&m, &root), "mutant {m:?}");
                }
            }
        }
        assert!(
            vouched > total / 100,
            "only {vouched} of {total} mutants read"
        );
    }

    #[test]
    fn garbage_gives_none_not_a_panic() {
        let bytes = record_like();
        for len in 0..bytes.len() {
            assert!(read(&bytes[..len]).is_none());
        }
        assert!(read(&[0xff; 64]).is_none());
    }
}
