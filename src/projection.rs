//! The byte encoding of a stored *projection* (a record's current state, beside its envelopes).
//!
//! Projections were JSON (version 1). JSON spelt every field name in every record and every
//! sealed field as base64 text: of a consent record's 479 bytes, about 260 were names, quotes,
//! vocabulary and base64 overhead (BENCHMARKS.md, twelfth session). Version 2 is a compact
//! binary form of the same JSON value; it is about half the size, and the two hot readers (the
//! consent check and the replicator's start-up walk) read it without allocating the record.
//!
//! ```text
//! projection v2 := 0xC2 value                     (v1 is JSON and starts with '{': both are read)
//! value := 0x00                                   null
//!        | 0x01 | 0x02                            false | true
//!        | 0x03 varint                            unsigned integer
//!        | 0x04 varint                            negative integer, zigzag
//!        | 0x05 f64 (8 bytes, little-endian)      other number
//!        | 0x06 varint n, n bytes                 text (UTF-8)
//!        | 0x07 u8 i                              text WORDS[i]
//!        | 0x08 varint n, n bytes                 sealed text: "cx1:" + strict base64 of the bytes
//!        | 0x09 zigzag varint s, varint ns        time text: RFC 3339 UTC as `fmt_time` writes it
//!        | 0x0A zigzag varint d                   date text: YYYY-MM-DD, d days after 1970-01-01
//!        | 0x0B varint n, n values                array
//!        | 0x0C varint n, n (key value)           object; key := u8 i < 0xFF (WORDS[i])
//!                                                         | 0xFF varint n, n bytes (text)
//! varint := unsigned LEB128, at most 10 bytes
//! ```
//!
//! A text takes the word, sealed, time or date form only when decoding it gives back exactly the
//! same text, so every projection decodes to the JSON value it was made from.
//!
//! Upgrading needs nothing (v1 stays readable; a record's projection becomes v2 when it next
//! changes). Downgrading is not supported: a build from before v2 reports a v2 projection as
//! corrupt (`0xC2` cannot start JSON) rather than misreading it.
//!
//! [`WORDS`] is on disk: never reorder or remove an entry, only append (at most 255).
//! Limits: nesting depth [`DEPTH_MAX`] (a deeper value is stored as v1 JSON instead, which
//! `serde_json` reads to depth 128), lengths bounded by the bytes present, varints by 10 bytes.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Number, Value};

use crate::record::{fmt_date, fmt_time, Record, RecordFacts, TransferWord};
use consentd_sync::b64;

mod direct;

/// First byte of a version-2 projection (a v1 projection is a JSON object: `{`).
pub const V2: u8 = 0xC2;
/// Deepest nesting of arrays and objects encoded (records nest three deep; an erasure report
/// inside a request five).
pub const DEPTH_MAX: usize = 32;

const NULL: u8 = 0x00;
const FALSE: u8 = 0x01;
const TRUE: u8 = 0x02;
const UINT: u8 = 0x03;
const NEG: u8 = 0x04;
const FLOAT: u8 = 0x05;
const TEXT: u8 = 0x06;
const WORD: u8 = 0x07;
const SEALED: u8 = 0x08;
const TIME: u8 = 0x09;
const DATE: u8 = 0x0A;
const ARRAY: u8 = 0x0B;
const OBJECT: u8 = 0x0C;
const KEY_TEXT: u8 = 0xFF;

/// Field names and vocabulary, encoded as one byte. On disk: append only. Copied from
/// `vocab.rs` rather than built from it, since the vocabularies may change and this may not.
pub const WORDS: &[&str] = &[
    // 0: field names
    "type",
    "subject",
    "subject_kind",
    "person",
    "purpose",
    "role",
    "office",
    "minor",
    "parental_consent",
    "events",
    "action",
    "at",
    "basis",
    "service",
    "evidence",
    "notice",
    "kind",
    "jurisdiction",
    "received",
    "clock_start",
    "due",
    "due_rule",
    "due_explanation",
    "confirm_by",
    "status",
    "extension",
    "outcome",
    "note",
    "history",
    "erasure",
    "reason",
    "previous_due",
    "categories",
    "from",
    "to",
    "recipient",
    "recipient_kind",
    "mechanism",
    "tia",
    "records",
    "to_office",
    "set_at",
    "cleared_at",
    "id",
    "deleted",
    "deleted_records",
    "kept",
    "keys_destroyed",
    "rule",
    "why",
    // 50: record types, actions, subject kinds
    "consent",
    "request",
    "transfer",
    "hold",
    "grant",
    "withdraw",
    "email",
    "phone",
    // 58: bases, persons, roles
    "contract",
    "legal_obligation",
    "legitimate_interest",
    "customer",
    "end_user",
    "visitor",
    "controller",
    "processor",
    // 66: services
    "sms",
    "voice",
    "numbers",
    "inbox",
    "flow_builder",
    "video",
    "omnichannel",
    "chat_apps",
    "push",
    "cdp",
    "website",
    "account",
    // 78: data categories
    "phone_number",
    "email_address",
    "traffic_data",
    "location_data",
    "content",
    "contact_data",
    "account_data",
    "payment_data",
    "device_data",
    "usage_data",
    "profile_data",
    "meeting_data",
    "marketing_data",
    // 91: recipient kinds, mechanisms
    "telecom_provider",
    "technology_provider",
    "payment_provider",
    "group_company",
    "government_authority",
    "adequacy",
    "scc",
    "bcr",
    "derogation",
    "cn_standard_contract",
    "cn_security_assessment",
    "cn_certification",
    "none_required",
    "forbidden",
    // 105: request kinds (plus "erasure" above), purposes
    "access",
    "rectification",
    "portability",
    "withdrawal",
    "objection",
    "restriction",
    "opt_out",
    "account_management",
    "service_delivery",
    "service_analytics",
    "support",
    "sales",
    "marketing",
    "product_improvement",
    "personalisation",
    "billing",
    "fraud_prevention",
    "legal_compliance",
    "cookies_performance",
    "cookies_functional",
    "cookies_marketing",
    // 126: statuses and outcomes (plus "received" above)
    "identity_requested",
    "identity_received",
    "in_progress",
    "extended",
    "completed",
    "refused",
    "transferred",
    // 133: offices and jurisdictions
    "us",
    "sg",
    "de",
    "cn",
    "co",
    "au",
    "uk",
    "nl",
    "US",
    "SG",
    "DE",
    "CN",
    "CO",
    "AU",
    "UK",
    "NL",
    "EU",
    // 150: legal clock rules
    "gdpr-art12-one-month",
    "uk-gdpr-art12-one-month",
    "ccpa-45-days",
    "ccpa-opt-out-15-business-days",
    "pdpa-access-30-days",
    "pdpa-company-30-days",
    "pipl-company-policy",
    // Retired from the clock table (now `us-company-policy`); requests opened before keep it,
    // and the word's index is part of the encoding.
    "us-company-policy-45-days",
];

/// The longest of [`WORDS`]: a longer text (a sealed field, a time) is no word, unhashed.
const WORD_LEN_MAX: usize = 29;
/// Slots of [`word_index`]'s table: a power of two, about three per word, so that a probe
/// mostly ends at its first slot.
const WORD_SLOTS: usize = 512;

fn word_index(text: &str) -> Option<u8> {
    // A record has a few dozen texts and keys to look up, on every encoding: a linear scan of
    // the 160 words cost ~3 µs a record, a `HashMap` (SipHash) ~0.8 µs, a third of a consent
    // record's encoding (thirty-sixth session); this open-addressed table hashes at most two
    // words of the text. Slot `i` holds word `i - 1`, 0 is empty.
    static TABLE: std::sync::OnceLock<[u8; WORD_SLOTS]> = std::sync::OnceLock::new();
    let bytes = text.as_bytes();
    if bytes.len() > WORD_LEN_MAX {
        return None;
    }
    let table = TABLE.get_or_init(|| {
        debug_assert!(
            WORDS.len() < KEY_TEXT as usize && WORDS.len() < WORD_SLOTS / 2,
            "word indexes fit below KEY_TEXT, and the table stays sparse"
        );
        let mut table = [0u8; WORD_SLOTS];
        for (i, word) in WORDS.iter().enumerate() {
            debug_assert!(
                word.len() <= WORD_LEN_MAX,
                "{word} is longer than WORD_LEN_MAX"
            );
            let mut slot = word_slot(word.as_bytes());
            while table[slot] != 0 {
                slot = (slot + 1) % WORD_SLOTS;
            }
            table[slot] = i as u8 + 1;
        }
        table
    });
    let mut slot = word_slot(bytes);
    loop {
        let i = table[slot].checked_sub(1)?;
        if WORDS[usize::from(i)] == text {
            return Some(i);
        }
        slot = (slot + 1) % WORD_SLOTS;
    }
}

/// The first slot of `word` in [`word_index`]'s table: a multiplicative hash of its length and
/// its first and last eight bytes (overlapping; for a shorter word its first and last four, or
/// first, middle and last byte), read without copying.
fn word_slot(word: &[u8]) -> usize {
    let n = word.len();
    let u64_at = |i: usize| u64::from_le_bytes(word[i..i + 8].try_into().expect("eight bytes"));
    let u32_at = |i: usize| {
        u64::from(u32::from_le_bytes(
            word[i..i + 4].try_into().expect("four bytes"),
        ))
    };
    let (head, tail) = match n {
        8.. => (u64_at(0), u64_at(n - 8)),
        4..=7 => (u32_at(0), u32_at(n - 4)),
        1..=3 => (
            u64::from(word[0]) | u64::from(word[n / 2]) << 8 | u64::from(word[n - 1]) << 16,
            0,
        ),
        0 => (0, 0),
    };
    let h = (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - WORD_SLOTS.trailing_zeros())) as usize
}

// ---- encoding ----

/// A record's projection, version 2 (version 1 JSON for a value nested beyond [`DEPTH_MAX`]).
///
/// Written straight from the record ([`direct`]): the same bytes as [`encode_value`] of its
/// JSON tree, without building the tree (asserted in debug builds).
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(V2);
    if direct::put(record, &mut out).is_err() {
        // Nested too deep for version 2, or a value only the tree's rules can spell.
        return encode_value(&serde_json::to_value(record).expect("records always serialise"));
    }
    debug_assert_eq!(
        out,
        encode_value(&serde_json::to_value(record).expect("records always serialise")),
        "the direct encoding is the JSON tree's"
    );
    out
}

/// [`encode`] of a record already turned into its JSON tree (`serde_json::to_value`).
pub fn encode_value(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(V2);
    if put_value(value, &mut out, 0) {
        out
    } else {
        serde_json::to_vec(value).expect("records always serialise")
    }
}

fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_bytes(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Appends `value`; false when it nests deeper than [`DEPTH_MAX`].
fn put_value(value: &Value, out: &mut Vec<u8>, depth: usize) -> bool {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(UINT);
                put_varint(u, out);
            } else if let Some(i) = n.as_i64() {
                out.push(NEG);
                put_varint(zigzag(i), out);
            } else {
                out.push(FLOAT);
                let f = n.as_f64().expect("a JSON number is u64, i64 or f64");
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        Value::String(s) => encode_text(s, out),
        Value::Array(items) => {
            if depth >= DEPTH_MAX {
                return false;
            }
            out.push(ARRAY);
            put_varint(items.len() as u64, out);
            for item in items {
                if !put_value(item, out, depth + 1) {
                    return false;
                }
            }
        }
        Value::Object(map) => {
            if depth >= DEPTH_MAX {
                return false;
            }
            out.push(OBJECT);
            put_varint(map.len() as u64, out);
            for (k, v) in map {
                put_key(k, out);
                if !put_value(v, out, depth + 1) {
                    return false;
                }
            }
        }
    }
    true
}

/// An object's key: its word, or its text.
fn put_key(key: &str, out: &mut Vec<u8>) {
    match word_index(key) {
        Some(i) => out.push(i),
        None => put_bytes(KEY_TEXT, key.as_bytes(), out),
    }
}

fn encode_text(s: &str, out: &mut Vec<u8>) {
    if let Some(i) = word_index(s) {
        out.push(WORD);
        out.push(i);
        return;
    }
    if let Some(body) = s.strip_prefix(crate::sealed::PREFIX) {
        let mut raw = Vec::with_capacity(body.len() / 4 * 3);
        if b64::decode_into(body.as_bytes(), &mut raw) {
            debug_assert_eq!(b64::encode(&raw), body, "strict base64 has one spelling");
            put_bytes(SEALED, &raw, out);
            return;
        }
    }
    if let Some(t) = exact_time(s) {
        out.push(TIME);
        put_varint(zigzag(t.timestamp()), out);
        put_varint(u64::from(t.timestamp_subsec_nanos()), out);
        return;
    }
    if let Some(d) = exact_date(s) {
        out.push(DATE);
        put_varint(zigzag(i64::from(crate::record::epoch_day(d))), out);
        return;
    }
    put_bytes(TEXT, s.as_bytes(), out);
}

/// The time `s` spells, if `fmt_time` spells it exactly so: `YYYY-MM-DDTHH:MM:SSZ` with no,
/// 3, 6 or 9 fraction digits, as few as the nanoseconds need (chrono's `AutoSi`). Parsed by
/// hand: chrono's parser and a formatting to compare against cost ~1 µs per time.
fn exact_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if !(20..=30).contains(&b.len()) || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let shape = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if shape.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let nanos = match b.len() {
        20 => 0,
        24 | 27 | 30 if b[19] == b'.' => {
            let digits = b.len() - 21;
            num(20, 20 + digits)? * 10u32.pow(9 - digits as u32)
        }
        _ => return None,
    };
    // AutoSi's digits: none for whole seconds, else 3, 6 or 9, the fewest that are exact.
    let auto_digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    if b.len() != 20 + if auto_digits == 0 { 0 } else { auto_digits + 1 } {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    let time =
        chrono::NaiveTime::from_hms_nano_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, nanos)?;
    let t = date.and_time(time).and_utc();
    debug_assert_eq!(
        fmt_time(t),
        s,
        "exact_time accepts only fmt_time's spelling"
    );
    Some(t)
}

/// The date `s` spells, if `fmt_date` spells it exactly so.
fn exact_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    (fmt_date(d) == s).then_some(d)
}

// ---- decoding ----

/// A record from its projection (either version).
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    if bytes.first() != Some(&V2) {
        return serde_json::from_slice(bytes).map_err(|e| format!("corrupt projection: {e}"));
    }
    let value = decode_value_all(bytes)?;
    Record::from_tree(value).map_err(|e| format!("corrupt projection: {e}"))
}

/// The JSON value a version-2 projection was made from.
fn decode_value_all(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(&bytes[1..]);
    let value = r.value(0)?;
    if !r.rest().is_empty() {
        return Err(corrupt("bytes after the value"));
    }
    Ok(value)
}

fn corrupt(what: &str) -> String {
    format!("corrupt projection: {what}")
}

/// A text of a version-2 projection, without copying.
enum Text<'a> {
    Plain(&'a str),
    Sealed(&'a [u8]),
    Time(DateTime<Utc>),
    Date(NaiveDate),
}

impl Text<'_> {
    fn into_string(self) -> String {
        match self {
            Text::Plain(s) => s.to_string(),
            Text::Sealed(raw) => format!("{}{}", crate::sealed::PREFIX, b64::encode(raw)),
            Text::Time(t) => fmt_time(t),
            Text::Date(d) => fmt_date(d),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7F);
            if i == 9 && bits > 1 {
                return Err(corrupt("varint overflows 64 bits"));
            }
            n |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(corrupt("varint longer than 10 bytes"))
    }

    /// A length followed by that many bytes; the length is checked against what is left, so a
    /// corrupt length allocates nothing.
    fn slice(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        let left = self.bytes.len() - self.pos;
        if n > left as u64 {
            return Err(corrupt("a length runs past the end"));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.slice()?).map_err(|_| corrupt("text is not UTF-8"))
    }

    fn word(&mut self) -> Result<&'static str, String> {
        let i = self.byte()? as usize;
        WORDS.get(i).copied().ok_or_else(|| corrupt("unknown word"))
    }

    fn key(&mut self) -> Result<&'a str, String> {
        match self.byte()? {
            KEY_TEXT => self.str(),
            i => WORDS
                .get(i as usize)
                .copied()
                .ok_or_else(|| corrupt("unknown key word")),
        }
    }

    /// The text after its tag `tag`, or None when the tag is not a text's.
    fn text_after(&mut self, tag: u8) -> Result<Option<Text<'a>>, String> {
        Ok(Some(match tag {
            TEXT => Text::Plain(self.str()?),
            WORD => Text::Plain(self.word()?),
            SEALED => Text::Sealed(self.slice()?),
            TIME => {
                let secs = unzigzag(self.varint()?);
                let nanos = u32::try_from(self.varint()?)
                    .ok()
                    .filter(|n| *n < 1_000_000_000)
                    .ok_or_else(|| corrupt("nanoseconds out of range"))?;
                Text::Time(
                    DateTime::from_timestamp(secs, nanos)
                        .ok_or_else(|| corrupt("time out of range"))?,
                )
            }
            DATE => {
                let days = unzigzag(self.varint()?);
                let d = i32::try_from(days)
                    .ok()
                    .and_then(|d| {
                        NaiveDate::from_ymd_opt(1970, 1, 1)?
                            .checked_add_signed(chrono::Duration::days(i64::from(d)))
                    })
                    .ok_or_else(|| corrupt("date out of range"))?;
                Text::Date(d)
            }
            _ => return Ok(None),
        }))
    }

    fn text(&mut self) -> Result<Text<'a>, String> {
        let tag = self.byte()?;
        self.text_after(tag)?
            .ok_or_else(|| corrupt("expected a text"))
    }

    /// An array's or object's tag `tag`, then its element count.
    fn count(&mut self, tag: u8) -> Result<u64, String> {
        if self.byte()? != tag {
            return Err(corrupt(if tag == ARRAY {
                "expected an array"
            } else {
                "expected an object"
            }));
        }
        self.count_after_tag()
    }

    /// The element count after an array or object tag already read.
    fn count_after_tag(&mut self) -> Result<u64, String> {
        let n = self.varint()?;
        // Every element takes at least one byte (an object's two).
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err(corrupt("a count runs past the end"));
        }
        Ok(n)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        let tag = self.byte()?;
        if let Some(t) = self.text_after(tag)? {
            return Ok(Value::String(t.into_string()));
        }
        Ok(match tag {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.varint()?.into()),
            NEG => Value::Number(unzigzag(self.varint()?).into()),
            FLOAT => {
                let b: [u8; 8] = self
                    .rest()
                    .get(..8)
                    .ok_or_else(|| corrupt("truncated"))?
                    .try_into()
                    .expect("8 bytes");
                self.pos += 8;
                Value::Number(
                    Number::from_f64(f64::from_le_bytes(b))
                        .ok_or_else(|| corrupt("a number that is not finite"))?,
                )
            }
            ARRAY | OBJECT => {
                if depth >= DEPTH_MAX {
                    return Err(corrupt("nested too deep"));
                }
                let n = self.count_after_tag()?;
                if tag == ARRAY {
                    let mut items = Vec::with_capacity(n.min(64) as usize);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                } else {
                    let mut map = Map::new();
                    for _ in 0..n {
                        let k = self.key()?.to_string();
                        let v = self.value(depth + 1)?;
                        map.insert(k, v);
                    }
                    Value::Object(map)
                }
            }
            _ => return Err(corrupt("unknown tag")),
        })
    }

    /// Skips one value.
    fn skip(&mut self, depth: usize) -> Result<(), String> {
        let tag = self.byte()?;
        if self.text_after(tag)?.is_some() {
            return Ok(());
        }
        match tag {
            NULL | FALSE | TRUE => {}
            UINT | NEG => {
                self.varint()?;
            }
            FLOAT => {
                if self.rest().len() < 8 {
                    return Err(corrupt("truncated"));
                }
                self.pos += 8;
            }
            ARRAY | OBJECT => {
                if depth >= DEPTH_MAX {
                    return Err(corrupt("nested too deep"));
                }
                let n = self.count_after_tag()?;
                for _ in 0..n {
                    if tag == OBJECT {
                        self.key()?;
                    }
                    self.skip(depth + 1)?;
                }
            }
            _ => return Err(corrupt("unknown tag")),
        }
        Ok(())
    }

    /// Calls `field` for each key of an object, which must read or skip the key's value.
    fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Result<(), String>,
    ) -> Result<(), String> {
        let n = self.count(OBJECT)?;
        for _ in 0..n {
            let k = self.key()?;
            field(self, k)?;
        }
        Ok(())
    }
}

/// [`RecordFacts`] of a projection (either version), without building the record.
pub fn facts(bytes: &[u8]) -> Result<RecordFacts, String> {
    if bytes.first() != Some(&V2) {
        return facts_v1(bytes);
    }
    let mut r = Reader::new(&bytes[1..]);
    let mut kind: Option<&str> = None;
    let mut subject: Option<Option<consentd_storage::KeyId>> = None;
    let mut office: Option<String> = None;
    let mut categories: Option<Vec<String>> = None;
    // A transfer's replication event fields (`TransferWord`); other kinds' `status` is ignored.
    let mut status: Option<String> = None;
    let mut to_office: Option<String> = None;
    let mut records: Vec<String> = Vec::new();
    let mut origin: Option<String> = None;
    // A hold's clearing (`RecordFacts::ended_hold`).
    let mut cleared = false;
    let mut cleared_by: Option<String> = None;
    let mut minor = false;
    // A request's kind and outcome (`RecordFacts::completed_request`).
    let mut request_kind: Option<String> = None;
    let mut outcome: Option<String> = None;
    r.fields(|r, k| {
        match k {
            "type" => match r.text()? {
                Text::Plain(s) => kind = Some(s),
                _ => return Err(corrupt("record type is not a word")),
            },
            "status" | "to_office" if r.rest().first() == Some(&NULL) => {
                r.byte()?;
            }
            "status" => status = Some(r.text()?.into_string()),
            "origin" => origin = Some(r.text()?.into_string()),
            "cleared_at" | "cleared_by" if r.rest().first() == Some(&NULL) => {
                r.byte()?;
            }
            "cleared_at" => {
                r.text()?;
                cleared = true;
            }
            "cleared_by" => cleared_by = Some(r.text()?.into_string()),
            "minor" => minor = r.byte()? == TRUE,
            "kind" => request_kind = Some(r.text()?.into_string()),
            "outcome" if r.rest().first() == Some(&NULL) => {
                r.byte()?;
            }
            "outcome" => outcome = Some(r.text()?.into_string()),
            "to_office" => to_office = Some(r.text()?.into_string()),
            "records" => {
                let n = r.count(ARRAY)?;
                records.reserve(n.min(64) as usize);
                for _ in 0..n {
                    records.push(r.text()?.into_string());
                }
            }
            "subject" => {
                // Null for a transfer that names nobody.
                if r.rest().first() == Some(&NULL) {
                    r.byte()?;
                } else {
                    subject = Some(match r.text()? {
                        Text::Sealed(raw) => crate::sealed::key_id_raw(raw),
                        _ => None,
                    });
                }
            }
            "office" => office = Some(r.text()?.into_string()),
            "categories" => {
                let n = r.count(ARRAY)?;
                let mut c = Vec::with_capacity(n.min(64) as usize);
                for _ in 0..n {
                    c.push(r.text()?.into_string());
                }
                categories = Some(c);
            }
            _ => r.skip(1)?,
        }
        Ok(())
    })?;
    if !r.rest().is_empty() {
        return Err(corrupt("bytes after the value"));
    }
    let kind = kind.ok_or_else(|| corrupt("no record type"))?;
    let office = office.ok_or_else(|| corrupt("no office"))?;
    let mut facts = facts_from(kind, subject, office, categories)?;
    if kind == "transfer" {
        facts.event = TransferWord::of(status.as_deref(), to_office.as_deref(), &records);
    }
    if kind == "hold" {
        facts.ended_hold = hold_ended(cleared, &origin, cleared_by.as_deref(), &facts.office);
        facts.origin = origin;
    }
    facts.minor = kind == "consent" && minor;
    facts.completed_request =
        kind == "request" && completed_request(request_kind.as_deref(), outcome.as_deref());
    facts.completed_erasure = facts.completed_request && request_kind.as_deref() == Some("erasure");
    Ok(facts)
}

/// [`crate::record::HoldRecord::ended`] of a hold's fields.
fn hold_ended(
    cleared: bool,
    origin: &Option<String>,
    cleared_by: Option<&str>,
    office: &str,
) -> bool {
    cleared && (origin.is_none() || cleared_by == Some(office))
}

/// Whether a request of `kind` with `outcome` is one every other office carries out.
fn completed_request(kind: Option<&str>, outcome: Option<&str>) -> bool {
    outcome == Some("completed")
        && kind.is_some_and(crate::retention::erasure::carried_out_elsewhere)
}

/// The v1 (JSON) form of [`facts`].
fn facts_v1(bytes: &[u8]) -> Result<RecordFacts, String> {
    /// The fields of a projection that [`RecordFacts`] reads; serde skips the others.
    #[derive(serde::Deserialize)]
    struct FactFields {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        subject: Option<String>,
        office: String,
        #[serde(default)]
        categories: Option<Vec<String>>,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        to_office: Option<String>,
        #[serde(default)]
        records: Vec<String>,
        #[serde(default)]
        origin: Option<String>,
        #[serde(default)]
        cleared_at: Option<String>,
        #[serde(default)]
        cleared_by: Option<String>,
        #[serde(default)]
        minor: bool,
        #[serde(default, rename = "kind")]
        request_kind: Option<String>,
        #[serde(default)]
        outcome: Option<String>,
    }
    let f: FactFields = serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()))?;
    let subject = f.subject.as_deref().map(|s| {
        Some(s)
            .filter(|s| crate::sealed::is_sealed(s))
            .and_then(crate::sealed::key_id)
    });
    let mut facts = facts_from(&f.kind, subject, f.office, f.categories)?;
    if f.kind == "transfer" {
        facts.event = TransferWord::of(f.status.as_deref(), f.to_office.as_deref(), &f.records);
    }
    if f.kind == "hold" {
        facts.ended_hold = hold_ended(
            f.cleared_at.is_some(),
            &f.origin,
            f.cleared_by.as_deref(),
            &facts.office,
        );
        facts.origin = f.origin;
    }
    facts.minor = f.kind == "consent" && f.minor;
    facts.completed_request =
        f.kind == "request" && completed_request(f.request_kind.as_deref(), f.outcome.as_deref());
    facts.completed_erasure =
        facts.completed_request && f.request_kind.as_deref() == Some("erasure");
    Ok(facts)
}

/// `subject`: None when the record names nobody, Some(key) when it does (key None when the
/// subject is not sealed).
fn facts_from(
    kind: &str,
    subject: Option<Option<consentd_storage::KeyId>>,
    office: String,
    categories: Option<Vec<String>>,
) -> Result<RecordFacts, String> {
    let transfer = match kind {
        "transfer" => true,
        "consent" | "request" | "hold" => false,
        other => return Err(corrupt(&format!("unknown record type {other:?}"))),
    };
    if transfer && categories.is_none() {
        return Err(corrupt("a transfer without categories"));
    }
    Ok(RecordFacts {
        office,
        personal: subject.is_some(),
        key: subject.flatten(),
        categories: if transfer { categories } else { None },
        event: None,
        origin: None,
        minor: false,
        completed_request: false,
        completed_erasure: false,
        ended_hold: false,
    })
}

/// A consent event as the consent check reads it: whether it withdraws, when, and its rank
/// among the consent's events ([`crate::record::rank_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decisive {
    pub withdraw: bool,
    pub at: DateTime<Utc>,
    pub rank: DateTime<Utc>,
}

impl Decisive {
    /// What `consent check` orders events by ([`crate::record::ConsentEvent::order`]).
    pub fn order(&self) -> (DateTime<Utc>, bool) {
        (self.rank, self.withdraw)
    }
}

/// Each event of a consent record's projection (either version), as [`Decisive`]: the consent
/// check's hot path, which opens no sealed field and builds no record.
pub fn consent_events(bytes: &[u8], mut each: impl FnMut(Decisive)) -> Result<(), String> {
    let parse_at = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| corrupt(&format!("stored time {text:?}: {e}")))
    };
    if bytes.first() != Some(&V2) {
        #[derive(serde::Deserialize)]
        struct Events {
            events: Vec<Event>,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            action: String,
            at: String,
            #[serde(default)]
            follows: Option<String>,
        }
        let c: Events = serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()))?;
        for e in &c.events {
            let at = parse_at(&e.at)?;
            let follows = e.follows.as_deref().map(parse_at).transpose()?;
            each(Decisive {
                withdraw: e.action == "withdraw",
                at,
                rank: crate::record::rank_after(at, follows),
            });
        }
        return Ok(());
    }
    let mut r = Reader::new(&bytes[1..]);
    let mut seen = false;
    r.fields(|r, k| {
        if k != "events" {
            return r.skip(1);
        }
        seen = true;
        let n = r.count(ARRAY)?;
        for _ in 0..n {
            let (mut withdraw, mut at, mut follows) = (None, None, None);
            let time =
                |r: &mut Reader, parse_at: &dyn Fn(&str) -> Result<DateTime<Utc>, String>| {
                    Ok(match r.text()? {
                        Text::Time(t) => t,
                        Text::Plain(s) => parse_at(s)?,
                        _ => return Err(corrupt("an event's time is not a time")),
                    })
                };
            r.fields(|r, k| {
                match k {
                    "action" => {
                        withdraw = Some(matches!(r.text()?, Text::Plain(a) if a == "withdraw"))
                    }
                    "at" => at = Some(time(r, &parse_at)?),
                    "follows" => follows = Some(time(r, &parse_at)?),
                    _ => r.skip(2)?,
                }
                Ok(())
            })?;
            match (withdraw, at) {
                (Some(withdraw), Some(at)) => each(Decisive {
                    withdraw,
                    at,
                    rank: crate::record::rank_after(at, follows),
                }),
                _ => return Err(corrupt("an event without action or time")),
            }
        }
        Ok(())
    })?;
    if seen {
        Ok(())
    } else {
        Err(corrupt("a consent record without events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::*;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn sealed(n: usize) -> String {
        let raw: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        format!("{}{}", crate::sealed::PREFIX, b64::encode(&raw))
    }

    /// One record of each kind, with every optional field that changes the encoding.
    pub(super) fn records() -> Vec<Record> {
        let event = |action: &str, at: &str| ConsentEvent {
            action: action.into(),
            at: at.into(),
            basis: Some("consent".into()),
            service: Some("sms".into()),
            evidence: Some(sealed(67)),
            notice: Some("notice 2026-01".into()),
            office: "de".into(),
            restriction: None,
            by_erasure: None,
            follows: None,
        };
        vec![
            Record::Consent(ConsentRecord {
                subject: sealed(80),
                subject_kind: "email".into(),
                person: "end_user".into(),
                purpose: "marketing".into(),
                role: "processor".into(),
                office: "de".into(),
                minor: true,
                minor_elsewhere: false,
                marketing: false,
                parental_consent: Some(sealed(70)),
                events: vec![
                    event("grant", "2026-01-31T00:00:00Z"),
                    event("withdraw", "2026-02-01T10:11:12.123456789Z"),
                ],
            }),
            Record::Request(RequestRecord {
                subject: sealed(76),
                subject_kind: "phone".into(),
                kind: "erasure".into(),
                jurisdiction: "DE".into(),
                received: "2026-12-03T15:49:03.854570384Z".into(),
                clock_start: Some("2026-12-04T00:00:00Z".into()),
                due: "2027-01-04".into(),
                due_rule: "gdpr-art12-one-month".into(),
                due_explanation: "GDPR Art. 12(3): one calendar month…".into(),
                confirm_by: Some("2026-12-13".into()),
                status: "completed".into(),
                extension: Some(Extension {
                    reason: sealed(60),
                    at: "2026-12-20T00:00:00Z".into(),
                    previous_due: "2027-01-04".into(),
                }),
                outcome: Some("completed".into()),
                note: None,
                history: vec![StatusEvent {
                    status: "received".into(),
                    at: "2026-12-03T15:49:03.854570384Z".into(),
                    note: Some(sealed(58)),
                    office: "de".into(),
                    recorded: None,
                }],
                office: "de".into(),
                erasure: Some(serde_json::json!({
                    "deleted": 3,
                    "deleted_records": ["00112233445566778899aabbccddeeff"],
                    "kept": [{"id": "ff", "kind": "consent", "rule": "r", "why": "proof"}],
                    "keys_destroyed": 1,
                    "odd": [-5, 1.5, null, true, "ünïcode", {"nested": []}],
                })),
            }),
            Record::Transfer(TransferRecord {
                subject: None,
                subject_kind: None,
                categories: vec!["contact_data".into(), "a_new_category".into()],
                from: "DE".into(),
                to: "SG".into(),
                recipient: "sg".into(),
                recipient_kind: Some("group_company".into()),
                mechanism: "scc".into(),
                tia: None,
                at: "2026-03-01T00:00:00Z".into(),
                office: "de".into(),
                records: vec!["0011".into(), "00112233445566778899aabbccddeeff".into()],
                to_office: Some("sg".into()),
                status: Some("transferred".into()),
                reason: None,
            }),
            Record::Hold(HoldRecord {
                subject: "plain-not-sealed".into(),
                subject_kind: "id".into(),
                reason: sealed(90),
                set_at: "2026-04-01T00:00:00Z".into(),
                cleared_at: None,
                office: "an-office-not-in-the-words".into(),
                origin: None,
                cleared_by: None,
            }),
            // A copy of a resident office's hold, cleared by that office (it ends the hold:
            // `RecordFacts::ended_hold`), and one cleared elsewhere (it does not).
            Record::Hold(HoldRecord {
                subject: "plain-not-sealed".into(),
                subject_kind: "id".into(),
                reason: sealed(90),
                set_at: "2026-04-01T00:00:00Z".into(),
                cleared_at: Some("2026-05-01T00:00:00Z".into()),
                office: "cn".into(),
                origin: Some("de".into()),
                cleared_by: Some("cn".into()),
            }),
            Record::Hold(HoldRecord {
                subject: "plain-not-sealed".into(),
                subject_kind: "id".into(),
                reason: sealed(90),
                set_at: "2026-04-01T00:00:00Z".into(),
                cleared_at: Some("2026-05-01T00:00:00Z".into()),
                office: "cn".into(),
                origin: Some("de".into()),
                cleared_by: Some("de".into()),
            }),
        ]
    }

    #[test]
    fn every_record_kind_round_trips_and_shrinks() {
        for record in records() {
            let v2 = encode(&record);
            let v1 = serde_json::to_vec(&record).unwrap();
            assert_eq!(v2[0], V2);
            assert_eq!(decode(&v2).unwrap(), record);
            assert_eq!(decode(&v1).unwrap(), record, "v1 (JSON) is still read");
            assert!(
                v2.len() * 10 < v1.len() * 7,
                "{} bytes against JSON's {}",
                v2.len(),
                v1.len()
            );
            let want = RecordFacts::of(&record);
            assert_eq!(facts(&v2).unwrap(), want);
            assert_eq!(facts(&v1).unwrap(), want);
            if let Record::Hold(h) = &record {
                assert_eq!(
                    want.ended_hold,
                    h.cleared_by.as_deref() == Some("cn"),
                    "{h:?}"
                );
            }
            if let Record::Transfer(_) = record {
                // A replication event's word, its one well-formed record id kept.
                let word = want.event.expect("a transfer event's word");
                assert_eq!((word.refused, word.to_office.as_str()), (false, "sg"));
                assert_eq!(
                    word.records,
                    vec![[
                        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                        0xcc, 0xdd, 0xee, 0xff
                    ]]
                );
            }
        }
    }

    #[test]
    fn texts_that_only_look_like_times_dates_or_sealed_stay_as_written() {
        for text in [
            "2026-01-31T00:00:00.000Z", // fmt_time drops zero fractions
            "2026-01-31T00:00:00+00:00",
            "2026-01-31t00:00:00Z",
            "2026-1-31",
            "2026-02-30",
            "cx1:",
            "cx1:not base64!",
            "cx1:QQ",   // unpadded
            "cx1:QR==", // non-canonical trailing bits
            "",
            "consent ",
        ] {
            let record = Record::Hold(HoldRecord {
                subject: text.into(),
                subject_kind: text.into(),
                reason: text.into(),
                set_at: text.into(),
                cleared_at: Some(text.into()),
                office: text.into(),
                origin: None,
                cleared_by: None,
            });
            assert_eq!(decode(&encode(&record)).unwrap(), record, "{text:?}");
        }
    }

    /// The consent check's events of `record` from its version-2 projection and from its
    /// version-1 (JSON) one.
    fn events_of_both_versions(record: &Record) -> [Vec<Decisive>; 2] {
        [encode(record), serde_json::to_vec(record).unwrap()].map(|bytes| {
            let mut events = Vec::new();
            consent_events(&bytes, |e| events.push(e)).unwrap();
            events
        })
    }

    #[test]
    fn the_consent_check_reads_the_same_events_from_either_version() {
        let record = &records()[0];
        let from = events_of_both_versions(record);
        assert_eq!(from[0], from[1]);
        assert_eq!(from[0].len(), 2);
        assert!(!from[0][0].withdraw && from[0][1].withdraw);
        assert_eq!(fmt_time(from[0][1].at), "2026-02-01T10:11:12.123456789Z");
        let not_consent = encode(&records()[2]);
        assert!(consent_events(&not_consent, |_| {}).is_err());
    }

    /// An event's `follows` ranks it just after that time, read alike from either version; an
    /// event without one, or following an earlier time, ranks at its own time.
    #[test]
    fn an_event_ranks_after_the_event_it_follows() {
        let Record::Consent(mut c) = records()[0].clone() else {
            unreachable!("the first record is a consent")
        };
        c.events[0].follows = Some("2026-01-30T00:00:00Z".into()); // before its own time
        c.events[1].follows = Some("2026-02-01T10:11:13Z".into()); // after its own time
        let record = Record::Consent(c.clone());
        let from = events_of_both_versions(&record);
        assert_eq!(from[0], from[1]);
        assert_eq!(from[0][0].rank, from[0][0].at);
        assert_eq!(fmt_time(from[0][1].at), "2026-02-01T10:11:12.123456789Z");
        assert_eq!(fmt_time(from[0][1].rank), "2026-02-01T10:11:13.000000001Z");
        for (e, d) in c.events.iter().zip(&from[0]) {
            assert_eq!(
                e.rank(),
                Some(d.rank),
                "the record's and the hot path's rank agree"
            );
        }
        assert_eq!(decode(&encode(&record)).unwrap(), record);
    }

    /// The layout and [`WORDS`] are on disk: this pins both.
    #[test]
    fn the_encoding_of_a_small_record_is_fixed() {
        let record = Record::Hold(HoldRecord {
            subject: "x".into(),
            subject_kind: "id".into(),
            reason: "r".into(),
            set_at: "1970-01-01T00:00:01Z".into(),
            cleared_at: Some("1970-01-02".into()),
            office: "de".into(),
            origin: None,
            cleared_by: None,
        });
        assert_eq!(
            hex::encode(encode(&record)),
            [
                "c2",       // version 2
                "0c07",     // object of 7, keys in serde_json's (sorted) order:
                "2a0a02",   // cleared_at: date, day 1
                "060787",   // office: word 135, "de"
                "1e060172", // reason: text "r"
                "29090200", // set_at: time, second 1, 0 ns
                "01060178", // subject: text "x"
                "02072b",   // subject_kind: word 43, "id"
                "000735",   // type: word 53, "hold"
            ]
            .concat()
        );
    }

    /// `Record::from_tree` (what `decode` and a merge read records with) reads what serde's
    /// derived reading reads, and refuses what it refuses, with the same message.
    #[test]
    fn a_record_reads_from_its_tree_as_serde_reads_it() {
        let serde = |tree: &Value| serde_json::from_value::<Record>(tree.clone());
        let mut trees = vec![json!(null), json!([]), json!("consent"), json!({})];
        for record in records() {
            let tree = serde_json::to_value(&record).unwrap();
            let fields = tree.as_object().unwrap().clone();
            trees.push(tree);
            for key in fields.keys() {
                let mut without = fields.clone();
                without.remove(key);
                trees.push(Value::Object(without));
                let mut odd = fields.clone();
                odd.insert(key.clone(), json!(3));
                trees.push(Value::Object(odd));
            }
            for tag in [json!("unknown"), json!(1), json!(null), json!("Consent")] {
                let mut odd = fields.clone();
                odd.insert("type".into(), tag);
                trees.push(Value::Object(odd));
            }
            let mut extra = fields.clone();
            extra.insert("_doc".into(), json!("an id"));
            extra.insert("later_field".into(), json!({"a": [1]}));
            trees.push(Value::Object(extra));
        }
        let mut read = 0;
        for tree in &trees {
            match (Record::from_tree(tree.clone()), serde(tree)) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours, theirs, "{tree}");
                    read += 1;
                }
                (Err(ours), Err(theirs)) => {
                    assert_eq!(ours.to_string(), theirs.to_string(), "{tree}")
                }
                (ours, theirs) => panic!("{tree}: {ours:?} against serde's {theirs:?}"),
            }
        }
        assert!(
            read > 10,
            "only {read} of {} trees were records",
            trees.len()
        );
    }

    /// The table finds every word at its index and nothing else: what a scan of [`WORDS`]
    /// finds, for the words, their neighbours and texts longer than any word.
    #[test]
    fn word_index_finds_what_a_scan_finds() {
        let scan = |text: &str| WORDS.iter().position(|w| *w == text).map(|i| i as u8);
        let mut texts = vec![String::new(), "x".repeat(WORD_LEN_MAX + 1), sealed(40)];
        for word in WORDS {
            texts.push(word.to_string());
            texts.push(format!("{word}s"));
            texts.push(format!("_{word}"));
            texts.push(word[..word.len() - 1].to_string());
            texts.push(word.to_uppercase());
            texts.push(format!(
                "{word}{}",
                "-".repeat(WORD_LEN_MAX - word.len() + 1)
            ));
        }
        for text in &texts {
            assert_eq!(word_index(text), scan(text), "{text:?}");
        }
        assert_eq!(
            WORDS.iter().map(|w| w.len()).max(),
            Some(WORD_LEN_MAX),
            "WORD_LEN_MAX is the longest word's length"
        );
    }

    #[test]
    fn words_are_distinct_and_fit_a_byte() {
        assert!(WORDS.len() < KEY_TEXT as usize);
        let distinct: std::collections::HashSet<_> = WORDS.iter().collect();
        assert_eq!(distinct.len(), WORDS.len());
    }

    #[test]
    fn a_value_nested_too_deep_is_stored_as_json() {
        let mut deep = serde_json::json!("bottom");
        for _ in 0..DEPTH_MAX + 1 {
            deep = serde_json::json!([deep]);
        }
        let Record::Request(mut r) = records()[1].clone() else {
            unreachable!()
        };
        r.erasure = Some(deep);
        let record = Record::Request(r);
        let bytes = encode(&record);
        assert_eq!(bytes[0], b'{');
        assert_eq!(decode(&bytes).unwrap(), record);
    }

    /// Corrupt projections (a torn or flipped page) are errors, never panics or huge
    /// allocations: every truncation and many random mutations of real encodings.
    #[test]
    fn corrupt_projections_are_errors_not_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for record in records() {
            let good = encode(&record);
            for n in 0..good.len() {
                assert!(decode(&good[..n]).is_err(), "a {n}-byte prefix decoded");
                let _ = facts(&good[..n]);
                let _ = consent_events(&good[..n], |_| {});
            }
            for _ in 0..2000 {
                let mut bad = good.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(1..bad.len());
                    bad[i] = rng.gen();
                }
                let _ = decode(&bad);
                let _ = facts(&bad);
                let _ = consent_events(&bad, |_| {});
            }
        }
        // A length or count far beyond the bytes present.
        for bad in [
            &[V2, TEXT, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F][..],
            &[V2, ARRAY, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            &[
                V2, UINT, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
            ],
        ] {
            assert!(decode(bad).is_err());
        }
    }
}
