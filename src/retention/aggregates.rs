//! What survives deletion: counts that identify no one (§7: "kept only in a form that
//! identifies no one"), by office, record kind, purpose and month.
//!
//! Stored in storage `meta` under `agg/v1/<office>/<kind>/<purpose>/<YYYY-MM>` as a u64 LE,
//! updated in the same durable batch as the deletions they count. `purpose` is the consent
//! purpose, the request kind, the transfer's destination (`to-XX`), or `-`; the month is the
//! record's first event. All of these are vocabulary, never personal data.

use crate::office::OfficeError;
use crate::record::Record;
use consentd_storage::Store;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const PREFIX: &str = "agg/v1/";
/// Most aggregate rows `status` lists.
pub const LIST_MAX: usize = 10_000;

fn month(t: &str) -> String {
    t.get(..7).unwrap_or("unknown").to_string()
}

/// The meta key counting a deleted record.
pub fn key(record: &Record) -> String {
    let (office, kind, purpose, first) = match record {
        Record::Consent(c) => (
            c.office.as_str(),
            "consent",
            c.purpose.clone(),
            c.events.first().map(|e| e.at.as_str()).unwrap_or(""),
        ),
        Record::Request(r) => (
            r.office.as_str(),
            "request",
            r.kind.clone(),
            r.received.as_str(),
        ),
        Record::Transfer(t) => (
            t.office.as_str(),
            "transfer",
            format!("to-{}", t.to),
            t.at.as_str(),
        ),
        Record::Hold(h) => (h.office.as_str(), "hold", "-".into(), h.set_at.as_str()),
    };
    format!("{PREFIX}{office}/{kind}/{purpose}/{}", month(first))
}

/// The meta puts adding `counts` to the stored aggregates.
pub fn increments(
    store: &Store,
    counts: &BTreeMap<String, u64>,
) -> Result<Vec<(String, Vec<u8>)>, OfficeError> {
    let mut out = Vec::with_capacity(counts.len());
    for (k, n) in counts {
        let old = store
            .meta(k)?
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        out.push((k.clone(), (old + n).to_le_bytes().to_vec()));
    }
    Ok(out)
}

/// Every aggregate row, for `status`.
pub fn list(store: &Store) -> Result<Value, OfficeError> {
    let mut rows = Vec::new();
    for (k, v) in store.meta_with_prefix(PREFIX, LIST_MAX)? {
        let parts: Vec<&str> = k[PREFIX.len()..].splitn(4, '/').collect();
        let n = v.try_into().ok().map(u64::from_le_bytes).unwrap_or(0);
        if let [office, kind, purpose, month] = parts[..] {
            rows.push(json!({
                "office": office, "kind": kind, "purpose": purpose, "month": month, "deleted": n,
            }));
        }
    }
    Ok(Value::Array(rows))
}
