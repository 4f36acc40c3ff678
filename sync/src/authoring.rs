//! A new document's first change, written straight to Automerge's change chunk without Automerge.
//!
//! Why: every record the daemon creates (an import's, a single write's, a transfer event's) is a
//! new document made by one change. Authoring it through Automerge (a document, a transaction,
//! `init_root_from_hydrate`, commit, then `get_last_local_change` collecting the change back out
//! of the op set) was 36 % of an import's CPU in `consentd bench` (twenty-seventh session, 100,000
//! records), three times the ed25519 signature after it. The change a fresh document's first
//! transaction makes is the simplest there is: one actor, no dependencies, sequence 1, every op
//! new, so its chunk can be written column by column as the ops are listed.
//!
//! # Contract
//!
//! [`first_change`] returns `Some(change)` only when `change.bytes` is byte for byte the change
//! chunk Automerge writes for the same ops (so the hash every peer and auditor computes is the
//! same, and a document loaded from it and saved again re-encodes it identically), and Automerge
//! reads it as the tree given, with the conventions below. `None` means "beyond what this writer
//! does" (see [`first_change`]); the caller authors with Automerge. Debug builds check the contract
//! on every call ([`agrees_with_automerge`]: load, re-encode, compare bytes and tree); unit tests
//! check it on records of every shape and on thousands of random trees.
//!
//! # The tree
//!
//! A JSON object, written as `consentd::record`'s `write_new` writes a record: a null under a map
//! key is no entry; a null in a list is a null element; a number is an integer (`as_i64`, anything
//! else 0); strings, booleans, maps and lists are themselves. Ops are listed breadth first, each
//! map's keys in the map's order, each list's elements in order (each inserted after the one
//! before it, the first at the list's head).
//!
//! # Byte layout (automerge 0.12's `storage::change`, `columnar::encoding`)
//!
//! ```text
//! chunk   = magic 85 6f 4a 83 | checksum (first 4 bytes of hash) | 01 | uleb len | body
//! hash    = sha256(01 | uleb len | body)
//! body    = uleb 0 (deps) | uleb actor len | actor | uleb 1 (seq) | uleb 1 (start op)
//!         | sleb time | uleb 0 (message) | uleb 0 (other actors)
//!         | uleb columns | (uleb spec, uleb len) per column | column data, in spec order
//! columns = obj actor, obj ctr (RLE, null for the root), key actor (RLE), key ctr (delta),
//!           key str (RLE), insert (boolean), action (RLE), value meta (RLE), value raw,
//!           pred group (RLE, all 0); a column with no bytes is left out
//! ```
//!
//! RLE runs are Automerge's: a repeat (count ≥ 2, value), a literal (−count, values, no two
//! adjacent equal), a null run (0, count), except that nulls before any value at the end of a
//! column are not written at all.

use std::collections::VecDeque;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::change_chunk::{spec, MAX_OPS};
use crate::first_change::{DEPTH_MAX, LIST_ELEMS_MAX};
use crate::wire::put_varint;

/// Automerge's magic bytes, first in every chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of an uncompressed change.
const CHUNK_CHANGE: u8 = 1;

/// Automerge action codes (`OpType`).
const ACTION_MAKE_MAP: u64 = 0;
const ACTION_PUT: u64 = 1;
const ACTION_MAKE_LIST: u64 = 2;

/// Value metadata type codes (`len << 4 | type`).
const VALUE_NULL: u64 = 0;
const VALUE_FALSE: u64 = 1;
const VALUE_TRUE: u64 = 2;
const VALUE_INT: u64 = 4;
const VALUE_STRING: u64 = 6;

/// A first change, written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authored {
    /// The uncompressed change chunk, as Automerge writes it.
    pub bytes: Vec<u8>,
    /// Its change hash.
    pub hash: [u8; 32],
}

/// The first change of a new document by `actor` at `time` (Unix seconds), whose one
/// transaction writes `root` (conventions in the module docs).
///
/// `None` when the tree is beyond what this writer does, and Automerge should author it instead:
/// nested deeper than [`DEPTH_MAX`], a list longer than [`LIST_ELEMS_MAX`], more than
/// [`MAX_OPS`] ops, an empty map key (Automerge refuses one), or an empty actor.
pub fn first_change(actor: &[u8], time: i64, root: &Map<String, Value>) -> Option<Authored> {
    let authored = write(actor, time, root)?;
    debug_assert!(
        agrees_with_automerge(actor, &authored.bytes, root),
        "authoring::first_change wrote a change Automerge reads or writes otherwise"
    );
    Some(authored)
}

/// Where an op's value goes: a key of a map, or after an element of a list.
#[derive(Clone, Copy)]
enum Key<'a> {
    Prop(&'a str),
    /// Inserted at the list's head.
    Head,
    /// Inserted after the element made by op `counter`.
    After(u64),
}

/// The columns of a change being written, one op at a time (Automerge's row-wise encoders).
struct Columns<'a> {
    obj_actor: Rle<u64>,
    obj_ctr: Rle<u64>,
    key_actor: Rle<u64>,
    key_ctr: Delta,
    key_str: Rle<&'a str>,
    insert: Bools,
    action: Rle<u64>,
    val_meta: Rle<u64>,
    val_raw: Vec<u8>,
    pred_group: Rle<u64>,
    ops: u64,
}

impl<'a> Columns<'a> {
    fn new() -> Self {
        Columns {
            obj_actor: Rle::new(),
            obj_ctr: Rle::new(),
            key_actor: Rle::new(),
            key_ctr: Delta::new(),
            key_str: Rle::new(),
            insert: Bools::new(),
            action: Rle::new(),
            val_meta: Rle::new(),
            val_raw: Vec::new(),
            pred_group: Rle::new(),
            ops: 0,
        }
    }

    /// Appends one op (no predecessors: every op of a first change is new) and returns its
    /// counter. `obj` is the counter of the op that made the object, `None` for the root.
    fn op(&mut self, obj: Option<u64>, key: Key<'a>, action: u64, value: &Value) -> u64 {
        self.ops += 1;
        let counter = self.ops; // start op 1
        match obj {
            None => {
                self.obj_actor.null();
                self.obj_ctr.null();
            }
            Some(ctr) => {
                self.obj_actor.value(0);
                self.obj_ctr.value(ctr);
            }
        }
        let insert = !matches!(key, Key::Prop(_));
        match key {
            Key::Prop(p) => {
                self.key_actor.null();
                self.key_ctr.null();
                self.key_str.value(p);
            }
            Key::Head => {
                self.key_actor.null();
                self.key_ctr.value(0);
                self.key_str.null();
            }
            Key::After(ctr) => {
                self.key_actor.value(0);
                self.key_ctr.value(ctr as i64);
                self.key_str.null();
            }
        }
        self.insert.push(insert);
        self.action.value(action);
        let meta = match value {
            Value::Bool(false) => VALUE_FALSE,
            Value::Bool(true) => VALUE_TRUE,
            Value::Number(n) => {
                let at = self.val_raw.len();
                sleb(&mut self.val_raw, n.as_i64().unwrap_or_default());
                ((self.val_raw.len() - at) as u64) << 4 | VALUE_INT
            }
            Value::String(s) => {
                self.val_raw.extend_from_slice(s.as_bytes());
                (s.len() as u64) << 4 | VALUE_STRING
            }
            // Objects carry no value (their action says what they are).
            Value::Null | Value::Array(_) | Value::Object(_) => VALUE_NULL,
        };
        self.val_meta.value(meta);
        self.pred_group.value(0);
        counter
    }
}

fn write(actor: &[u8], time: i64, root: &Map<String, Value>) -> Option<Authored> {
    if actor.is_empty() {
        return None;
    }
    let mut cols = Columns::new();
    // Breadth first: (the object's counter, its contents, its depth).
    let mut queue: VecDeque<(Option<u64>, &Value, usize)> = VecDeque::new();
    enqueue_map(&mut cols, &mut queue, None, root, 1)?;
    while let Some((obj, value, depth)) = queue.pop_front() {
        match value {
            Value::Object(map) => enqueue_map(&mut cols, &mut queue, obj, map, depth)?,
            Value::Array(items) => {
                if items.len() > LIST_ELEMS_MAX {
                    return None;
                }
                let mut key = Key::Head;
                for item in items {
                    let ctr = child(&mut cols, &mut queue, obj, key, item, depth)?;
                    key = Key::After(ctr);
                }
            }
            _ => unreachable!("only objects are queued"),
        }
        if cols.ops > MAX_OPS {
            return None;
        }
    }
    // A transaction that writes nothing makes no change at all in Automerge.
    if cols.ops == 0 || cols.ops > MAX_OPS {
        return None;
    }
    Some(assemble(actor, time, cols))
}

/// Lists the ops of one map's entries (nulls are no entry), queueing its objects.
fn enqueue_map<'a>(
    cols: &mut Columns<'a>,
    queue: &mut VecDeque<(Option<u64>, &'a Value, usize)>,
    obj: Option<u64>,
    map: &'a Map<String, Value>,
    depth: usize,
) -> Option<()> {
    for (k, v) in map {
        if k.is_empty() {
            return None;
        }
        if !v.is_null() {
            child(cols, queue, obj, Key::Prop(k), v, depth)?;
        }
    }
    Some(())
}

/// Lists one value's op, queueing it if it is an object; returns the op's counter.
fn child<'a>(
    cols: &mut Columns<'a>,
    queue: &mut VecDeque<(Option<u64>, &'a Value, usize)>,
    obj: Option<u64>,
    key: Key<'a>,
    value: &'a Value,
    depth: usize,
) -> Option<u64> {
    let action = match value {
        Value::Object(_) => ACTION_MAKE_MAP,
        Value::Array(_) => ACTION_MAKE_LIST,
        _ => ACTION_PUT,
    };
    let ctr = cols.op(obj, key, action, value);
    if action != ACTION_PUT {
        if depth >= DEPTH_MAX {
            return None;
        }
        queue.push_back((Some(ctr), value, depth + 1));
    }
    Some(ctr)
}

/// The chunk: header, body, columns.
fn assemble(actor: &[u8], time: i64, cols: Columns<'_>) -> Authored {
    let columns: [(u32, Vec<u8>); 10] = [
        (spec::OBJ_ACTOR, cols.obj_actor.finish()),
        (spec::OBJ_CTR, cols.obj_ctr.finish()),
        (spec::KEY_ACTOR, cols.key_actor.finish()),
        (spec::KEY_CTR, cols.key_ctr.finish()),
        (spec::KEY_STR, cols.key_str.finish()),
        (spec::INSERT, cols.insert.finish()),
        (spec::ACTION, cols.action.finish()),
        (spec::VAL_META, cols.val_meta.finish()),
        (spec::VAL_RAW, cols.val_raw),
        (spec::PRED_GROUP, cols.pred_group.finish()),
    ];
    debug_assert!(
        columns.windows(2).all(|w| w[0].0 < w[1].0),
        "columns are written in increasing spec order"
    );
    let data_len: usize = columns.iter().map(|(_, c)| c.len()).sum();
    let mut body = Vec::with_capacity(64 + actor.len() + data_len);
    put_varint(&mut body, 0); // no dependencies
    put_varint(&mut body, actor.len() as u64);
    body.extend_from_slice(actor);
    put_varint(&mut body, 1); // seq
    put_varint(&mut body, 1); // start op
    sleb(&mut body, time);
    put_varint(&mut body, 0); // no message
    put_varint(&mut body, 0); // no other actors
    put_varint(
        &mut body,
        columns.iter().filter(|(_, c)| !c.is_empty()).count() as u64,
    );
    for (spec, data) in columns.iter().filter(|(_, c)| !c.is_empty()) {
        put_varint(&mut body, u64::from(*spec));
        put_varint(&mut body, data.len() as u64);
    }
    for (_, data) in &columns {
        body.extend_from_slice(data);
    }
    let mut len = Vec::with_capacity(10);
    put_varint(&mut len, body.len() as u64);
    let hash: [u8; 32] = Sha256::new()
        .chain_update([CHUNK_CHANGE])
        .chain_update(&len)
        .chain_update(&body)
        .finalize()
        .into();
    let mut bytes = Vec::with_capacity(9 + len.len() + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&hash[..4]);
    bytes.push(CHUNK_CHANGE);
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&body);
    Authored { bytes, hash }
}

/// Appends `v` as signed LEB128 (Automerge's run counts, deltas, times and integers).
fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7; // arithmetic: the sign stays
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A value a run-length column holds.
trait RunValue: Copy + PartialEq {
    fn write(self, out: &mut Vec<u8>);
}

impl RunValue for u64 {
    fn write(self, out: &mut Vec<u8>) {
        put_varint(out, self);
    }
}

impl RunValue for i64 {
    fn write(self, out: &mut Vec<u8>) {
        sleb(out, self);
    }
}

impl RunValue for &str {
    fn write(self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
}

/// Automerge's `RleEncoder`, state for state.
enum RleState<T> {
    Empty,
    /// Nulls before any value: not written if the column ends with them.
    InitialNulls(u64),
    Nulls(u64),
    Lone(T),
    Run(T, u64),
    /// The values so far (none equal to its neighbour) and the last one, not yet in the list.
    Literal(Vec<T>, T),
}

struct Rle<T> {
    out: Vec<u8>,
    state: RleState<T>,
}

impl<T: RunValue> Rle<T> {
    fn new() -> Self {
        Rle {
            out: Vec::new(),
            state: RleState::Empty,
        }
    }

    fn null(&mut self) {
        self.state = match std::mem::replace(&mut self.state, RleState::Empty) {
            RleState::Empty => RleState::InitialNulls(1),
            RleState::InitialNulls(n) => RleState::InitialNulls(n + 1),
            RleState::Nulls(n) => RleState::Nulls(n + 1),
            other => {
                self.flush(other);
                RleState::Nulls(1)
            }
        };
    }

    fn value(&mut self, v: T) {
        self.state = match std::mem::replace(&mut self.state, RleState::Empty) {
            RleState::Empty => RleState::Lone(v),
            RleState::Lone(o) if o == v => RleState::Run(v, 2),
            RleState::Lone(o) => RleState::Literal(vec![o], v),
            RleState::Run(o, n) if o == v => RleState::Run(o, n + 1),
            RleState::Literal(run, last) if last == v => {
                self.literal(&run);
                RleState::Run(v, 2)
            }
            RleState::Literal(mut run, last) => {
                run.push(last);
                RleState::Literal(run, v)
            }
            other => {
                self.flush(other);
                RleState::Lone(v)
            }
        };
    }

    fn flush(&mut self, state: RleState<T>) {
        match state {
            RleState::Empty => {}
            RleState::InitialNulls(n) | RleState::Nulls(n) => {
                sleb(&mut self.out, 0);
                put_varint(&mut self.out, n);
            }
            RleState::Lone(v) => self.literal(&[v]),
            RleState::Run(v, n) => {
                sleb(&mut self.out, n as i64);
                v.write(&mut self.out);
            }
            RleState::Literal(mut run, last) => {
                run.push(last);
                self.literal(&run);
            }
        }
    }

    fn literal(&mut self, run: &[T]) {
        sleb(&mut self.out, -(run.len() as i64));
        for v in run {
            v.write(&mut self.out);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        match std::mem::replace(&mut self.state, RleState::Empty) {
            RleState::InitialNulls(_) => {}
            other => self.flush(other),
        }
        self.out
    }
}

/// Automerge's `DeltaEncoder`: each value as its difference from the last non-null one (from 0).
struct Delta {
    rle: Rle<i64>,
    last: i64,
}

impl Delta {
    fn new() -> Self {
        Delta {
            rle: Rle::new(),
            last: 0,
        }
    }

    fn null(&mut self) {
        self.rle.null();
    }

    fn value(&mut self, v: i64) {
        self.rle.value(v.saturating_sub(self.last));
        self.last = v;
    }

    fn finish(self) -> Vec<u8> {
        self.rle.finish()
    }
}

/// Automerge's `BooleanEncoder`: alternating run lengths, falses first.
struct Bools {
    out: Vec<u8>,
    last: bool,
    count: u64,
}

impl Bools {
    fn new() -> Self {
        Bools {
            out: Vec::new(),
            last: false,
            count: 0,
        }
    }

    fn push(&mut self, v: bool) {
        if v == self.last {
            self.count += 1;
        } else {
            put_varint(&mut self.out, self.count);
            self.last = v;
            self.count = 1;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            put_varint(&mut self.out, self.count);
        }
        self.out
    }
}

/// Whether `bytes`, which [`first_change`] wrote for `root` by `actor`, is what the contract
/// says: Automerge takes it as a first change by `actor`, re-encodes it byte for byte from its op
/// set, and reads the document as `root` under the tree's conventions. Debug builds check this on
/// every call.
pub fn agrees_with_automerge(actor: &[u8], bytes: &[u8], root: &Map<String, Value>) -> bool {
    let Ok(doc) = automerge::Automerge::load(bytes) else {
        return false;
    };
    let changes = doc.get_changes(&[]);
    let [change] = changes.as_slice() else {
        return false;
    };
    change.raw_bytes() == bytes
        && change.actor_id().to_bytes() == actor
        && change.seq() == 1
        && serde_json::to_value(automerge::AutoSerde::from(&doc))
            .is_ok_and(|v| v == Value::Object(as_written(root)))
}

/// `root` as Automerge reads it back: map nulls dropped, numbers as integers.
fn as_written(root: &Map<String, Value>) -> Map<String, Value> {
    fn value(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(as_written(m)),
            Value::Array(items) => Value::Array(items.iter().map(value).collect()),
            Value::Number(n) => Value::from(n.as_i64().unwrap_or_default()),
            other => other.clone(),
        }
    }
    root.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), value(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ObjId, ObjType, ScalarValue, ROOT};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    const ACTOR: [u8; 40] = [7; 40];
    const TIME: i64 = 1_780_000_000;

    /// The same tree authored by Automerge, op for op in this writer's order (breadth first),
    /// so the two chunks must be equal byte for byte.
    fn by_automerge(actor: &[u8], time: i64, root: &Map<String, Value>) -> Vec<u8> {
        fn scalar(v: &Value) -> ScalarValue {
            match v {
                Value::Bool(b) => ScalarValue::Boolean(*b),
                Value::Number(n) => ScalarValue::Int(n.as_i64().unwrap_or_default()),
                Value::String(s) => ScalarValue::Str(s.as_str().into()),
                _ => ScalarValue::Null,
            }
        }
        let mut doc = Automerge::new().with_actor(ActorId::from(actor));
        let mut tx = doc.transaction();
        let mut queue: VecDeque<(ObjId, &Value)> = VecDeque::new();
        let root_value = Value::Object(root.clone());
        queue.push_back((ROOT, &root_value));
        while let Some((obj, value)) = queue.pop_front() {
            match value {
                Value::Object(map) => {
                    for (k, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                        match v {
                            Value::Object(_) => {
                                queue.push_back((tx.put_object(&obj, k, ObjType::Map).unwrap(), v))
                            }
                            Value::Array(_) => {
                                queue.push_back((tx.put_object(&obj, k, ObjType::List).unwrap(), v))
                            }
                            _ => tx.put(&obj, k, scalar(v)).unwrap(),
                        }
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        match v {
                            Value::Object(_) => queue
                                .push_back((tx.insert_object(&obj, i, ObjType::Map).unwrap(), v)),
                            Value::Array(_) => queue
                                .push_back((tx.insert_object(&obj, i, ObjType::List).unwrap(), v)),
                            _ => tx.insert(&obj, i, scalar(v)).unwrap(),
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
        tx.commit_with(automerge::transaction::CommitOptions::default().with_time(time));
        doc.get_last_local_change()
            .expect("a change")
            .raw_bytes()
            .to_vec()
    }

    /// Written as Automerge writes it, with the hash Automerge computes, and read back by
    /// `first_change` (a cold sync's reader) as Automerge reads it.
    fn check(root: &Value) {
        let root = root.as_object().expect("an object");
        let ours = write(&ACTOR, TIME, root).expect("written");
        let theirs = by_automerge(&ACTOR, TIME, root);
        assert_eq!(ours.bytes, theirs, "chunk for {root:?}");
        assert!(agrees_with_automerge(&ACTOR, &ours.bytes, root));
        let change = automerge::Change::try_from(&ours.bytes[..]).expect("a change");
        assert_eq!(change.hash().0, ours.hash);
        let read = crate::first_change::new_document(&ours.bytes).expect("the reader reads it");
        assert_eq!(read, as_written(root));
    }

    #[test]
    fn a_record_shaped_tree_is_written_as_automerge_writes_it() {
        check(&json!({
            "id": "0123456789abcdef0123456789abcdef",
            "type": "consent",
            "subject": "cx1:sealed",
            "minor": false,
            "adult": true,
            "n": 42,
            "neg": -7,
            "big": 1u64 << 40,
            "huge": u64::MAX,
            "float": 1.5,
            "nothing": null,
            "ünïcode": "naïve ✓",
            "empty": "",
            "events": [
                {"action": "grant", "at": "2026-01-31T00:00:00Z", "tags": ["a", "a", "b"]},
                {"action": "withdraw", "at": "2026-02-01T00:00:00Z", "tags": []},
                null,
                "between",
                ["nested", null, 3, true, {}]
            ],
            "nested": {"k": "v", "deeper": {"x": [1, 1, 1, 2, 3, 3]}},
            "empty_map": {}
        }));
    }

    #[test]
    fn small_and_degenerate_trees_are_written_as_automerge_writes_them() {
        check(&json!({"a": 1}));
        check(&json!({"a": null, "b": false}));
        check(&json!({"l": []}));
        check(&json!({"l": [null, null, null]}));
        check(&json!({"l": [[[]]]}));
        check(&json!({"m": {"m": {"m": {}}}}));
        check(&json!({"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "z"}));
    }

    #[test]
    fn what_this_writer_does_not_do_is_left_to_automerge() {
        let tree = |v: Value| v.as_object().cloned().expect("an object");
        assert_eq!(
            write(&ACTOR, TIME, &tree(json!({}))),
            None,
            "no ops, no change"
        );
        assert_eq!(write(&ACTOR, TIME, &tree(json!({"a": null}))), None);
        assert_eq!(
            write(&ACTOR, TIME, &tree(json!({"": 1}))),
            None,
            "empty key"
        );
        assert_eq!(
            write(&[], TIME, &tree(json!({"a": 1}))),
            None,
            "empty actor"
        );
        let long: Vec<Value> = (0..=LIST_ELEMS_MAX).map(|_| Value::Null).collect();
        assert_eq!(write(&ACTOR, TIME, &tree(json!({ "l": long }))), None);
        // LIST_ELEMS_MAX elements are written (and read).
        check(&json!({ "l": long[1..] }));
        // DEPTH_MAX + 1 levels of maps (the root is the first).
        let mut deep = json!(1);
        for _ in 0..=DEPTH_MAX {
            deep = json!({ "d": deep });
        }
        assert_eq!(write(&ACTOR, TIME, deep.as_object().expect("map")), None);
        // DEPTH_MAX levels are written.
        let Value::Object(inner) = &deep["d"] else {
            unreachable!()
        };
        check(&Value::Object(inner.clone()));
    }

    fn random_value(rng: &mut StdRng, depth: usize) -> Value {
        match rng.gen_range(0..if depth > 3 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => json!(rng.gen_range(-3i64..3)),
            3 => json!(rng.gen::<i64>() >> rng.gen_range(0..64)),
            4 => json!(["", "a", "b", "ü", "long string value"][rng.gen_range(0..5)]),
            5 => json!(rng.gen_range(0u8..3).to_string()),
            6 => Value::Array(
                (0..rng.gen_range(0..6))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(random_map(rng, depth + 1)),
        }
    }

    fn random_map(rng: &mut StdRng, depth: usize) -> Map<String, Value> {
        (0..rng.gen_range(0..7))
            .map(|_| {
                let key = ["a", "b", "c", "key", "ключ", "z"][rng.gen_range(0..6)].to_string();
                (key, random_value(rng, depth))
            })
            .collect()
    }

    #[test]
    fn random_trees_are_written_as_automerge_writes_them() {
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut written, mut unread) = (0, 0);
        for _ in 0..2_000 {
            let mut root = random_map(&mut rng, 1);
            root.insert("id".into(), json!("x"));
            let root = Value::Object(root);
            let ours = write(&ACTOR, TIME, root.as_object().expect("map")).expect("written");
            let theirs = by_automerge(&ACTOR, TIME, root.as_object().expect("map"));
            assert_eq!(ours.bytes, theirs, "seed {seed}, tree {root}");
            // The reader may leave a change to Automerge (it refuses integers of 9 LEB128 bytes
            // or more, which records do not hold), but never reads it otherwise.
            match crate::first_change::new_document(&ours.bytes) {
                Some(read) => {
                    assert_eq!(
                        read,
                        as_written(root.as_object().expect("map")),
                        "seed {seed}"
                    )
                }
                None => unread += 1,
            }
            written += 1;
        }
        assert_eq!(written, 2_000);
        // Only the few trees with such an integer (7 of 2,000 for one seed) are left over.
        assert!(
            unread * 20 < written,
            "seed {seed}: {unread} of {written} trees not read back by first_change"
        );
    }
}
