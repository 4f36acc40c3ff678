//! A projection written straight from a record's `Serialize`, without its JSON tree.
//!
//! [`super::encode_value`] encodes a `serde_json::Value`. Building that tree for a record
//! (`serde_json::to_value`: a `String` for every field name and text, a B-tree node for every
//! object) and dropping it again cost more than encoding it: this serializer writes the same
//! bytes directly. "The same" is the contract, checked by the tests against
//! `encode_value(&to_value(record))` for every record kind: values are mapped exactly as
//! `serde_json::to_value` maps them (an `Option`'s `None` and a unit are null, a non-finite float
//! is null, a newtype variant is a one-entry object, …), and an object's entries are written in
//! the order of `serde_json::Map` (a `BTreeMap` by key: byte order), the last of equal keys
//! kept. A struct's fields arrive in declaration order, so each object's entries are written
//! first and reordered once complete.
//!
//! A value nested beyond [`DEPTH_MAX`], an integer beyond 64 bits (which `serde_json::to_value`
//! refuses too) and a map key that is not a text (`serde_json` spells numbers and booleans as
//! keys by rules of its own) are errors here; the caller then takes the JSON tree's path, which
//! handles each as before.

use std::borrow::Cow;
use std::ops::Range;

use serde::ser::{self, Serialize};

use super::{
    encode_text, put_key, put_varint, zigzag, ARRAY, DEPTH_MAX, FALSE, FLOAT, NEG, NULL, OBJECT,
    TRUE, UINT,
};

/// Appends `value`'s encoding (no version byte) to `out`; on an error `out` holds a partial
/// encoding, which the caller discards.
pub(super) fn put<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Refused> {
    value.serialize(Writer { out, depth: 0 })
}

/// Why a value has no direct encoding (the JSON tree's path decides what it becomes).
#[derive(Debug)]
pub(super) struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

/// Serializes one value at nesting `depth` (counted as `put_value` counts it: an array or
/// object at depth `DEPTH_MAX` is refused).
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
}

impl<'a> Writer<'a> {
    fn nested(&mut self) -> Result<usize, Refused> {
        if self.depth >= DEPTH_MAX {
            return Err(Refused(format!("nested deeper than {DEPTH_MAX}")));
        }
        Ok(self.depth + 1)
    }

    fn array(mut self, len_hint: Option<usize>) -> Result<Array<'a>, Refused> {
        let depth = self.nested()?;
        let start = self.out.len();
        // The header announces the length given; a sequence without one, or with a wrong one,
        // gets the right header in `Array::finish`.
        Ok(Array {
            out: self.out,
            depth,
            start,
            count: 0,
            len_hint,
        })
    }

    fn object(mut self) -> Result<Object<'a>, Refused> {
        let depth = self.nested()?;
        let start = self.out.len();
        Ok(Object {
            out: self.out,
            depth,
            start,
            entries: Vec::new(),
            key: None,
        })
    }

    /// A one-entry object `{variant: …}` at this depth, the entry's value one deeper: how
    /// `serde_json::to_value` writes a newtype, tuple or struct variant.
    fn variant_object(&mut self, variant: &'static str) -> Result<usize, Refused> {
        let depth = self.nested()?;
        self.out.push(OBJECT);
        put_varint(1, self.out);
        put_key(variant, self.out);
        Ok(depth)
    }
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Refused> {
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Refused> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), Refused> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<(), Refused> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i64(self, v: i64) -> Result<(), Refused> {
        // serde_json keeps a non-negative integer as unsigned: `as_u64` answers first.
        if v >= 0 {
            self.out.push(UINT);
            put_varint(v as u64, self.out);
        } else {
            self.out.push(NEG);
            put_varint(zigzag(v), self.out);
        }
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Refused> {
        match i64::try_from(v) {
            Ok(v) => self.serialize_i64(v),
            Err(_) => match u64::try_from(v) {
                Ok(v) => self.serialize_u64(v),
                Err(_) => Err(Refused("an integer beyond 64 bits".into())),
            },
        }
    }

    fn serialize_u8(self, v: u8) -> Result<(), Refused> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), Refused> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<(), Refused> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u64(self, v: u64) -> Result<(), Refused> {
        self.out.push(UINT);
        put_varint(v, self.out);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Refused> {
        match u64::try_from(v) {
            Ok(v) => self.serialize_u64(v),
            Err(_) => Err(Refused("an integer beyond 64 bits".into())),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), Refused> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), Refused> {
        // `serde_json::Number::from_f64` has no non-finite numbers: the tree holds a null.
        if v.is_finite() {
            self.out.push(FLOAT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.push(NULL);
        }
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        encode_text(v.encode_utf8(&mut [0; 4]), self.out);
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        encode_text(v, self.out);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Refused> {
        // serde_json writes bytes as an array of numbers.
        let mut array = self.array(Some(v.len()))?;
        for b in v {
            ser::SerializeSeq::serialize_element(&mut array, b)?;
        }
        ser::SerializeSeq::end(array)
    }

    fn serialize_none(self) -> Result<(), Refused> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Refused> {
        self.out.push(NULL);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Refused> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        let depth = self.variant_object(variant)?;
        value.serialize(Writer {
            out: self.out,
            depth,
        })
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Array<'a>, Refused> {
        self.array(len)
    }

    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Refused> {
        self.array(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Refused> {
        self.array(Some(len))
    }

    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Array<'a>, Refused> {
        let depth = self.variant_object(variant)?;
        Writer {
            out: self.out,
            depth,
        }
        .array(Some(len))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Refused> {
        self.object()
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Object<'a>, Refused> {
        self.object()
    }

    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Refused> {
        let depth = self.variant_object(variant)?;
        Writer {
            out: self.out,
            depth,
        }
        .object()
    }
}

/// An array being written: its header, then its items in order.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    /// The depth of the items.
    depth: usize,
    /// Where the array's header starts in `out` (written at the first item or at the end).
    start: usize,
    count: u64,
    len_hint: Option<usize>,
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        if self.count == 0 {
            self.header();
        }
        self.count += 1;
        value.serialize(Writer {
            out: self.out,
            depth: self.depth,
        })
    }

    /// Writes the header for the length announced; `finish` rewrites it if the count differs.
    fn header(&mut self) {
        debug_assert_eq!(self.out.len(), self.start, "the header comes first");
        self.out.push(ARRAY);
        put_varint(self.len_hint.unwrap_or(0) as u64, self.out);
    }

    fn finish(self) -> Result<(), Refused> {
        if self.count == 0 {
            self.out.push(ARRAY);
            put_varint(0, self.out);
            return Ok(());
        }
        if self.len_hint != Some(self.count as usize) {
            // Announced wrong or not at all: the items are moved behind the right header.
            let header_len = 1 + varint_len(self.len_hint.unwrap_or(0) as u64);
            let items = self.out.split_off(self.start + header_len);
            self.out.truncate(self.start);
            self.out.push(ARRAY);
            put_varint(self.count, self.out);
            self.out.extend_from_slice(&items);
        }
        Ok(())
    }
}

/// How many bytes `put_varint` writes for `n`.
fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// serde's four kinds of sequence are all arrays to `serde_json`.
macro_rules! array_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Refused;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
                self.element(value)
            }

            fn end(self) -> Result<(), Refused> {
                self.finish()
            }
        }
    )*};
}

array_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object being written: its entries go to `out` as they come (key, then value); `finish`
/// puts them behind the header in key order.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    /// The depth of the values.
    depth: usize,
    /// Where the object starts in `out`.
    start: usize,
    /// Each entry's key and where its bytes (key and value) lie in `out`.
    entries: Vec<(Cow<'static, str>, Range<usize>)>,
    /// A map's key given by `serialize_key`, waiting for its value.
    key: Option<String>,
}

impl Object<'_> {
    fn entry<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Refused> {
        let from = self.out.len();
        put_key(&key, self.out);
        value.serialize(Writer {
            out: self.out,
            depth: self.depth,
        })?;
        self.entries.push((key, from..self.out.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), Refused> {
        if self.entries.windows(2).all(|w| w[0].0 < w[1].0) {
            // In order already, no key twice (a map's keys usually): only the header goes in
            // front.
            let mut header = Vec::with_capacity(11);
            header.push(OBJECT);
            put_varint(self.entries.len() as u64, &mut header);
            self.out.splice(self.start..self.start, header);
            return Ok(());
        }
        // By key; `sort_by` is stable, so equal keys stay in the order written, and the last
        // of each run is the one kept, as `Map::insert` keeps the last value.
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        let last_of_key = |i: usize| {
            self.entries
                .get(i + 1)
                .is_none_or(|next| next.0 != self.entries[i].0)
        };
        let kept = (0..self.entries.len()).filter(|&i| last_of_key(i)).count();
        let bytes = self.out.split_off(self.start);
        self.out.push(OBJECT);
        put_varint(kept as u64, self.out);
        for (i, (_, range)) in self.entries.iter().enumerate() {
            if last_of_key(i) {
                self.out
                    .extend_from_slice(&bytes[range.start - self.start..range.end - self.start]);
            }
        }
        Ok(())
    }
}

/// A struct and a struct variant's fields are both an object's entries.
macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Object<'_> {
            type Ok = ();
            type Error = Refused;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Refused> {
                self.entry(Cow::Borrowed(key), value)
            }

            fn end(self) -> Result<(), Refused> {
                self.finish()
            }
        }
    )*};
}

struct_impl!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Refused;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Refused> {
        self.key = Some(key.serialize(MapKey)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Refused("a map value without its key".into()))?;
        self.entry(Cow::Owned(key), value)
    }

    fn end(self) -> Result<(), Refused> {
        self.finish()
    }
}

/// A map's key: a text, as `serde_json` keeps it. Other keys (numbers, booleans, …), which
/// `serde_json` turns into text by rules of its own, are refused: the JSON tree's path applies
/// those rules itself.
struct MapKey;

fn key_refused() -> Refused {
    Refused("a map key that is not a text".into())
}

/// `MapKey`'s methods for the scalar keys it refuses.
macro_rules! refuse_keys {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, _: $t) -> Result<String, Refused> {
            Err(key_refused())
        }
    )*};
}

impl ser::Serializer for MapKey {
    type Ok = String;
    type Error = Refused;
    type SerializeSeq = ser::Impossible<String, Refused>;
    type SerializeTuple = ser::Impossible<String, Refused>;
    type SerializeTupleStruct = ser::Impossible<String, Refused>;
    type SerializeTupleVariant = ser::Impossible<String, Refused>;
    type SerializeMap = ser::Impossible<String, Refused>;
    type SerializeStruct = ser::Impossible<String, Refused>;
    type SerializeStructVariant = ser::Impossible<String, Refused>;

    fn serialize_str(self, v: &str) -> Result<String, Refused> {
        Ok(v.to_owned())
    }

    fn serialize_char(self, v: char) -> Result<String, Refused> {
        Ok(v.to_string())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, Refused> {
        Ok(variant.to_owned())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, Refused> {
        value.serialize(self)
    }

    refuse_keys!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_f32: f32,
        serialize_f64: f64,
        serialize_bytes: &[u8],
        serialize_unit_struct: &'static str
    );
    fn serialize_none(self) -> Result<String, Refused> {
        Err(key_refused())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Refused> {
        Err(key_refused())
    }
    fn serialize_unit(self) -> Result<String, Refused> {
        Err(key_refused())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Refused> {
        Err(key_refused())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Refused> {
        Err(key_refused())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Refused> {
        Err(key_refused())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Refused> {
        Err(key_refused())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Refused> {
        Err(key_refused())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Refused> {
        Err(key_refused())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Refused> {
        Err(key_refused())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Refused> {
        Err(key_refused())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::ser::{SerializeMap, SerializeSeq, Serializer};
    use serde::Serialize;
    use serde_json::json;

    use super::super::{put_value, tests::records};
    use super::*;
    use crate::record::Record;

    /// `value`'s direct encoding, or `None` where it is refused.
    fn direct<T: Serialize + ?Sized>(value: &T) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        put(value, &mut out).ok().map(|()| out)
    }

    /// The encoding of `value`'s JSON tree, or `None` where `put_value` refuses it.
    fn through_tree<T: Serialize + ?Sized>(value: &T) -> Option<Vec<u8>> {
        let tree = serde_json::to_value(value).ok()?;
        let mut out = Vec::new();
        put_value(&tree, &mut out, 0).then_some(out)
    }

    #[track_caller]
    fn same<T: Serialize + ?Sized>(value: &T) {
        let want = through_tree(value);
        assert!(want.is_some(), "the tree's path encodes the case itself");
        assert_eq!(direct(value), want);
    }

    #[test]
    fn every_record_kind_encodes_as_its_json_tree() {
        let mut optional = 0;
        for record in records() {
            same(&record);
            // And without each optional field in turn.
            let tree = serde_json::to_value(&record).unwrap();
            for key in tree.as_object().unwrap().keys() {
                let mut without = tree.clone();
                without.as_object_mut().unwrap().remove(key);
                if let Ok(record) = Record::from_value(without) {
                    same(&record);
                    optional += 1;
                }
            }
        }
        assert!(optional >= 10, "{optional} optional fields dropped");
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Newtype(i32);

    #[derive(Serialize)]
    struct Pair(u8, &'static str);

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(Vec<u8>),
        Tuple(i8, f32),
        Struct { zeta: bool, alpha: Option<char> },
    }

    /// Declared out of key order, with an unknown key, a flattened map and a null.
    #[derive(Serialize)]
    struct Fields {
        zebra: u64,
        type_: (),
        office: &'static str,
        #[serde(flatten)]
        more: BTreeMap<String, i64>,
        apple: Option<Unit>,
    }

    /// Serialized through `serialize_bytes`.
    struct Bytes(&'static [u8]);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// A sequence announcing `announced` items (or none) and giving `items`.
    struct Seq {
        announced: Option<usize>,
        items: Vec<u32>,
    }

    impl Serialize for Seq {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(self.announced)?;
            for item in &self.items {
                seq.serialize_element(item)?;
            }
            seq.end()
        }
    }

    /// A map giving these entries in this order, keys repeated as they come.
    struct Entries(Vec<(&'static str, i32)>);

    impl Serialize for Entries {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            for (k, v) in &self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }

    #[test]
    fn every_serde_shape_encodes_as_its_json_tree() {
        same(&Unit);
        same(&Newtype(-7));
        same(&Pair(3, "de"));
        same(&(1u8, -2i16, 3u32, -4i64, 5u128, -6i128, 'x', "marketing"));
        same(&[i64::MIN, -1, 0, 1, i64::MAX]);
        same(&[u64::MAX]);
        same(&[
            0.5f64,
            -0.0,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        same(&[f32::MIN_POSITIVE, f32::NAN, 0.1]);
        same(&Shape::Unit);
        same(&Shape::Newtype(vec![1, 2, 3]));
        same(&Shape::Tuple(-1, 2.5));
        same(&Shape::Struct {
            zeta: true,
            alpha: Some('ü'),
        });
        same(&Shape::Struct {
            zeta: false,
            alpha: None,
        });
        let more = [("mango", -1), ("bee", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        same(&Fields {
            zebra: 1,
            type_: (),
            office: "2026-01-31T00:00:00Z",
            more,
            apple: None,
        });
        same(&Bytes(b"\x00\x01\xff"));
        same(&Bytes(b""));
        for announced in [None, Some(0), Some(2), Some(3), Some(200)] {
            for n in [0, 2, 3, 130] {
                same(&Seq {
                    announced,
                    items: (0..n).collect(),
                });
            }
        }
        same(&Entries(vec![]));
        same(&Entries(vec![("b", 1), ("a", 2)]));
        same(&Entries(vec![
            ("a", 1),
            ("b", 2),
            ("a", 3),
            ("c", 4),
            ("b", 5),
        ]));
        same(&Entries(vec![("a", 1), ("a", 2)]));
        let hashed: HashMap<String, Vec<Option<bool>>> = (0..40)
            .map(|i| (format!("k{i}"), vec![Some(i % 2 == 0), None]))
            .collect();
        same(&hashed);
        same(&json!({"nested": {"z": [], "a": {}, "": null}, "text": "cx1:AAEC"}));
        same(&json!([{"b": 1, "a": 2}, [[[]]], "ünïcode"]));
    }

    /// Nesting up to the limit is encoded; one deeper is refused, as `put_value` refuses it
    /// (the caller then stores JSON).
    #[test]
    fn nesting_beyond_the_limit_is_refused_as_the_tree_refuses_it() {
        for depth in DEPTH_MAX - 2..DEPTH_MAX + 2 {
            let mut array = json!(1);
            let mut object = json!("bottom");
            for _ in 0..depth {
                array = json!([array]);
                object = json!({ "k": object });
            }
            for value in [&array, &object] {
                assert_eq!(direct(value), through_tree(value), "depth {depth}");
                assert_eq!(direct(value).is_some(), depth <= DEPTH_MAX, "depth {depth}");
            }
        }
    }

    /// Keys `serde_json` spells by rules of its own, and integers beyond 64 bits, are refused
    /// (the caller takes the tree's path); nothing else is.
    #[test]
    fn what_only_the_tree_can_spell_is_refused() {
        let numbered: BTreeMap<u32, bool> = [(2, true), (10, false)].into_iter().collect();
        assert!(through_tree(&numbered).is_some());
        assert!(direct(&numbered).is_none());
        assert!(direct(&u128::MAX).is_none());
        assert!(direct(&i128::MIN).is_none());
        assert!(serde_json::to_value(u128::MAX).is_err());
    }
}
