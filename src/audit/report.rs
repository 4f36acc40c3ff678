//! `consentctl audit report`: compliance tables computed only from a bundle that verified.
//!
//! - requests per office and jurisdiction: answered in time, late, extended (with notice inside
//!   the original period or not), still open (within time / overdue), refused;
//! - transfers per office and route: without a mechanism where one is needed, without a TIA
//!   where one is needed;
//! - records past their retention (§7) that still exist;
//! - consent withdrawals recorded late: `consent check` answered "granted" between the moment
//!   the person withdrew and the moment the office recorded it (the change's signed authoring
//!   time), so checks in that window would have answered differently;
//! - records a tombstone deleted whose envelopes are still held.

use std::collections::{BTreeMap, HashSet};

use automerge::Automerge;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::verify::Verified;
use crate::record::{fmt_time, Record};

/// Proof that consent was given or withdrawn is kept 5 years (§7).
pub const CONSENT_PROOF_RETENTION_DAYS: i64 = 5 * 365;
/// Confirmations of handled data-subject requests are kept 5 years (§7).
pub const REQUEST_CONFIRMATION_RETENTION_DAYS: i64 = 5 * 365;
/// A withdrawal recorded more than this after it happened opened a window of wrong answers.
pub const LATE_RECORDING_TOLERANCE_S: i64 = 60;
/// Record ids listed per finding row (all are counted).
pub const MAX_LISTED: usize = 100;
use crate::policy::EEA;
/// Mechanisms that need a transfer impact assessment beside them when data leaves the EEA or
/// the UK (Schrems II, C-311/18; the UK's transfer risk assessment).
pub const MECHANISMS_NEEDING_TIA: &[&str] = &["scc", "bcr"];

/// Whether a transfer from `from` to `to` under `mechanism` needs an impact assessment: one
/// leaving the EEA or the UK (GDPR / UK GDPR protection) under a mechanism in
/// [`MECHANISMS_NEEDING_TIA`], or one leaving China under a CN instrument (PIPL art. 55: a
/// personal-information protection impact assessment). The built-in transfer policy
/// (`policy.rs`) marks the same routes; a transfer between two offices outside both, under the
/// intra-group agreement, needs none (counted as one lacking it, every replicated move between
/// non-EEA offices was a finding no config could clear).
fn needs_tia(from: &str, to: &str, mechanism: &str) -> bool {
    let protected = |j: &str| EEA.contains(&country(j)) || country(j) == "GB";
    let leaves_protection =
        protected(from) && !protected(to) && MECHANISMS_NEEDING_TIA.contains(&mechanism);
    let leaves_cn = country(from) == "CN" && country(to) != "CN" && mechanism.starts_with("cn_");
    leaves_protection || leaves_cn
}

/// Whether a transfer from `from` to `to` under `mechanism` names none that could permit it:
/// `none_required` between two legal areas (the EEA is one; every other country its own: a
/// UK→US move under it went unflagged, found by an exploratory session), or data leaving China
/// without one of China's instruments.
fn lacks_mechanism(from: &str, to: &str, mechanism: &str) -> bool {
    fn area(j: &str) -> &str {
        match EEA.contains(&country(j)) {
            true => "EEA",
            false => country(j),
        }
    }
    let leaves_cn = country(from) == "CN" && country(to) != "CN";
    (area(from) != area(to) && mechanism == "none_required")
        || (leaves_cn && !mechanism.starts_with("cn_"))
}

fn country(j: &str) -> &str {
    j.get(..2).unwrap_or(j)
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

#[derive(Default, Serialize)]
struct RequestRow {
    office: String,
    jurisdiction: String,
    total: u64,
    answered_in_time: u64,
    answered_late: u64,
    refused: u64,
    extended: u64,
    extended_with_timely_notice: u64,
    open_within_time: u64,
    open_overdue: u64,
}

#[derive(Default, Serialize)]
struct TransferRow {
    office: String,
    from: String,
    to: String,
    total: u64,
    without_mechanism: u64,
    without_tia: u64,
    records: Vec<String>,
}

#[derive(Serialize)]
struct Finding {
    office: String,
    record: String,
    detail: String,
}

/// Builds the report. `as_of` defaults (in the CLI) to the bundle's export time.
pub fn build(v: &Verified, as_of: DateTime<Utc>) -> Value {
    let tombstoned: HashSet<[u8; 16]> = v.tombstones.iter().map(|t| t.tombstone().doc_id).collect();
    let mut requests: BTreeMap<(String, String), RequestRow> = BTreeMap::new();
    let mut transfers: BTreeMap<(String, String, String), TransferRow> = BTreeMap::new();
    let mut retention = Vec::new();
    let mut late = Vec::new();
    let mut still_held = Vec::new();
    let mut unreadable = 0u64;
    let today = as_of.date_naive();

    for (doc, changes) in &v.docs {
        let id = hex::encode(doc);
        let mut am = Automerge::new();
        if am
            .apply_changes(changes.iter().map(|(_, c)| c.clone()))
            .is_err()
        {
            unreadable += 1;
            continue;
        }
        let Ok(record) = Record::from_doc(&am) else {
            unreadable += 1;
            continue;
        };
        if tombstoned.contains(doc) {
            still_held.push(Finding {
                office: String::new(),
                record: id.clone(),
                detail: "a tombstone deleted this record but its envelopes are still held".into(),
            });
        }
        match &record {
            Record::Request(r) => {
                let row = requests
                    .entry((r.office.clone(), r.jurisdiction.clone()))
                    .or_insert_with(|| RequestRow {
                        office: r.office.clone(),
                        jurisdiction: r.jurisdiction.clone(),
                        ..RequestRow::default()
                    });
                row.total += 1;
                let due = date(&r.due);
                if let Some(ext) = &r.extension {
                    row.extended += 1;
                    if let (Some(at), Some(prev)) = (time(&ext.at), date(&ext.previous_due)) {
                        if at.date_naive() <= prev {
                            row.extended_with_timely_notice += 1;
                        }
                    }
                }
                match &r.outcome {
                    None => {
                        if due.is_some_and(|d| today > d) {
                            row.open_overdue += 1;
                        } else {
                            row.open_within_time += 1;
                        }
                    }
                    Some(outcome) => {
                        if outcome == "refused" {
                            row.refused += 1;
                        }
                        let closed = r
                            .history
                            .iter()
                            .rev()
                            .find(|h| h.status == *outcome)
                            .and_then(|h| time(&h.at));
                        match (closed, due) {
                            (Some(c), Some(d)) if c.date_naive() <= d => row.answered_in_time += 1,
                            _ => row.answered_late += 1,
                        }
                        if let Some(c) = closed {
                            if (as_of - c).num_days() > REQUEST_CONFIRMATION_RETENTION_DAYS {
                                retention.push(Finding {
                                    office: r.office.clone(),
                                    record: id.clone(),
                                    detail: format!(
                                        "request closed {} is past its 5-year retention",
                                        fmt_time(c)
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            // A signed refusal is a transfer that did not happen (policy kept the records
            // back): counted as one "without mechanism", it gave 120 false findings on cn's
            // rows (found by an exploratory session).
            Record::Transfer(t) if t.status.as_deref() == Some("refused") => {}
            Record::Transfer(t) => {
                let row = transfers
                    .entry((t.office.clone(), t.from.clone(), t.to.clone()))
                    .or_insert_with(|| TransferRow {
                        office: t.office.clone(),
                        from: t.from.clone(),
                        to: t.to.clone(),
                        ..TransferRow::default()
                    });
                row.total += 1;
                let no_mechanism = lacks_mechanism(&t.from, &t.to, &t.mechanism);
                let no_tia = needs_tia(&t.from, &t.to, &t.mechanism)
                    && t.tia.as_deref().is_none_or(|s| s.trim().is_empty());
                if no_mechanism {
                    row.without_mechanism += 1;
                }
                if no_tia {
                    row.without_tia += 1;
                }
                if (no_mechanism || no_tia) && row.records.len() < MAX_LISTED {
                    row.records.push(id.clone());
                }
            }
            Record::Consent(c) => {
                // Consent proof runs from the withdrawal: an active consent is the proof the
                // company relies on (docs/retention.md, rule consent-proof).
                let withdrawn = c
                    .events
                    .iter()
                    .filter_map(|e| e.order())
                    .max()
                    .is_some_and(|(_, w)| w);
                if let Some(last) = c.events.iter().filter_map(|e| time(&e.at)).max() {
                    if withdrawn && (as_of - last).num_days() > CONSENT_PROOF_RETENTION_DAYS {
                        retention.push(Finding {
                            office: c.office.clone(),
                            record: id.clone(),
                            detail: format!(
                                "consent proof last changed {} is past its 5-year retention",
                                fmt_time(last)
                            ),
                        });
                    }
                }
                if c.events.iter().any(|e| e.action == "withdraw") {
                    late.extend(late_withdrawals(&id, changes));
                }
            }
            Record::Hold(_) => {}
        }
    }
    json!({
        "network": v.network,
        "as_of": fmt_time(as_of),
        "records": v.docs.len(),
        "unreadable_records": unreadable,
        "requests": requests.into_values().collect::<Vec<_>>(),
        "transfers": transfers.into_values().collect::<Vec<_>>(),
        "past_retention": retention,
        "late_withdrawals": late,
        "tombstoned_but_held": still_held,
    })
}

/// Withdrawals whose signed recording time is later than the time they say they happened.
fn late_withdrawals(id: &str, changes: &[(String, automerge::Change)]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut am = Automerge::new();
    let mut seen = 0usize;
    for (office, change) in changes {
        if am.apply_changes([change.clone()]).is_err() {
            return out;
        }
        let Ok(Record::Consent(c)) = Record::from_doc(&am) else {
            continue;
        };
        let recorded = change.timestamp();
        for e in c.events.iter().skip(seen) {
            if e.action != "withdraw" || recorded == 0 {
                continue;
            }
            if let Some(at) = time(&e.at) {
                let gap = recorded - at.timestamp();
                if gap > LATE_RECORDING_TOLERANCE_S {
                    let rec = DateTime::<Utc>::from_timestamp(recorded, 0).unwrap_or(at);
                    out.push(Finding {
                        office: office.clone(),
                        record: id.to_string(),
                        detail: format!(
                            "withdrawn {} but recorded {}: consent checks in those {} would have answered granted",
                            e.at,
                            fmt_time(rec),
                            human_duration(Duration::seconds(gap))
                        ),
                    });
                }
            }
        }
        seen = c.events.len();
    }
    out
}

fn human_duration(d: Duration) -> String {
    let s = d.num_seconds();
    if s >= 86_400 {
        format!("{} days", s / 86_400)
    } else if s >= 3600 {
        format!("{} hours", s / 3600)
    } else {
        format!("{} minutes", s / 60)
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Human tables.
pub fn human(v: &Value) -> String {
    let mut out = format!(
        "compliance report for network {} as of {} ({} records)\n\nREQUESTS\n",
        v["network"].as_str().unwrap_or("-"),
        v["as_of"].as_str().unwrap_or("-"),
        v["records"]
    );
    out += &format!(
        "{:<8} {:<6} {:>6} {:>8} {:>6} {:>8} {:>9} {:>14} {:>9} {:>8}\n",
        "OFFICE",
        "JUR",
        "TOTAL",
        "IN_TIME",
        "LATE",
        "REFUSED",
        "EXTENDED",
        "TIMELY_NOTICE",
        "OPEN_OK",
        "OVERDUE"
    );
    for r in v["requests"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<8} {:<6} {:>6} {:>8} {:>6} {:>8} {:>9} {:>14} {:>9} {:>8}\n",
            r["office"].as_str().unwrap_or("-"),
            r["jurisdiction"].as_str().unwrap_or("-"),
            n(&r["total"]),
            n(&r["answered_in_time"]),
            n(&r["answered_late"]),
            n(&r["refused"]),
            n(&r["extended"]),
            n(&r["extended_with_timely_notice"]),
            n(&r["open_within_time"]),
            n(&r["open_overdue"])
        );
    }
    out += "\nTRANSFERS\n";
    out += &format!(
        "{:<8} {:<6} {:<6} {:>6} {:>12} {:>8}\n",
        "OFFICE", "FROM", "TO", "TOTAL", "NO_MECHANISM", "NO_TIA"
    );
    for r in v["transfers"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<8} {:<6} {:<6} {:>6} {:>12} {:>8}\n",
            r["office"].as_str().unwrap_or("-"),
            r["from"].as_str().unwrap_or("-"),
            r["to"].as_str().unwrap_or("-"),
            n(&r["total"]),
            n(&r["without_mechanism"]),
            n(&r["without_tia"])
        );
    }
    for (title, key) in [
        ("PAST RETENTION", "past_retention"),
        ("LATE WITHDRAWALS", "late_withdrawals"),
        ("TOMBSTONED BUT HELD", "tombstoned_but_held"),
    ] {
        let rows = v[key].as_array().cloned().unwrap_or_default();
        out += &format!("\n{title}: {}\n", rows.len());
        for r in rows.iter().take(MAX_LISTED) {
            out += &format!(
                "  {:<8} {}  {}\n",
                r["office"].as_str().unwrap_or("-"),
                r["record"].as_str().unwrap_or("-"),
                r["detail"].as_str().unwrap_or("-")
            );
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Long-format CSV (one fact per row), for spreadsheets:
/// `section,office,jurisdiction,record,metric,value`.
pub fn csv(v: &Value) -> String {
    let mut out = String::from("section,office,jurisdiction,record,metric,value\n");
    let s = |x: &Value| x.as_str().unwrap_or("").to_string();
    let mut row = |cols: [String; 6]| {
        out += &cols
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
    };
    for r in v["requests"].as_array().into_iter().flatten() {
        for m in [
            "total",
            "answered_in_time",
            "answered_late",
            "refused",
            "extended",
            "extended_with_timely_notice",
            "open_within_time",
            "open_overdue",
        ] {
            row([
                "requests".into(),
                s(&r["office"]),
                s(&r["jurisdiction"]),
                String::new(),
                m.into(),
                r[m].to_string(),
            ]);
        }
    }
    for r in v["transfers"].as_array().into_iter().flatten() {
        for m in ["total", "without_mechanism", "without_tia"] {
            row([
                "transfers".into(),
                s(&r["office"]),
                format!("{}->{}", s(&r["from"]), s(&r["to"])),
                String::new(),
                m.into(),
                r[m].to_string(),
            ]);
        }
    }
    for key in ["past_retention", "late_withdrawals", "tombstoned_but_held"] {
        for r in v[key].as_array().into_iter().flatten() {
            row([
                key.into(),
                s(&r["office"]),
                String::new(),
                s(&r["record"]),
                "detail".into(),
                s(&r["detail"]),
            ]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{lacks_mechanism, needs_tia};

    #[test]
    fn none_required_names_no_mechanism_between_legal_areas() {
        for (from, to, mechanism, lacking) in [
            ("DE", "NL", "none_required", false),
            ("DE", "NO", "none_required", false),
            ("US", "US-CA", "none_required", false),
            ("DE", "US", "none_required", true),
            ("GB", "US", "none_required", true),
            ("US", "SG", "none_required", true),
            ("GB", "US", "scc", false),
            ("CN", "SG", "bcr", true),
            ("CN", "SG", "cn_standard_contract", false),
        ] {
            assert_eq!(
                lacks_mechanism(from, to, mechanism),
                lacking,
                "{from}→{to} under {mechanism}"
            );
        }
    }

    #[test]
    fn an_impact_assessment_is_needed_where_data_leaves_gdpr_or_pipl_protection() {
        for (from, to, mechanism, needed) in [
            ("DE", "US", "scc", true),
            ("NL", "SG", "bcr", true),
            ("GB", "US-CA", "scc", true),
            ("DE", "US", "adequacy", false),
            ("DE", "GB", "scc", false),
            ("GB", "NL", "bcr", false),
            ("US", "SG", "bcr", false),
            ("SG", "DE", "bcr", false),
            ("US", "AU", "scc", false),
            ("CN", "SG", "cn_standard_contract", true),
            ("CN", "CN", "cn_standard_contract", false),
            ("CN", "SG", "bcr", false), // no CN instrument: counted as lacking a mechanism
        ] {
            assert_eq!(
                needs_tia(from, to, mechanism),
                needed,
                "{from}→{to} under {mechanism}"
            );
        }
    }
}
