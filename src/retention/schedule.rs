//! The retention schedule as data: one row per kind of record, saying which event its period
//! runs from, how long it is, whether a legal duty keeps it through an erasure request, and
//! where the rule comes from (docs/retention.md explains every row).
//!
//! A record's expiry day is computed from its current state whenever it changes
//! (`Office` puts it in the storage `expiry` index); the retention pass deletes every record
//! whose expiry day is on or before the pass's date. A record with no expiry (an active consent,
//! an open request, an active hold) stays until a change gives it one.

use crate::record::{ConsentRecord, Record};
use chrono::{DateTime, Months, NaiveDate, Utc};
use std::collections::BTreeMap;

/// Which event a period runs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The record's last event, but only once that event is a withdrawal (an active consent
    /// has no expiry: it is the proof the company relies on while it contacts the person).
    LastEventOnceWithdrawn,
    /// The record's last event, whatever it is.
    LastEvent,
    /// When the transfer took place.
    TransferTime,
    /// When the request was closed (open requests have no expiry).
    RequestClosed,
    /// When the hold was cleared (active holds have no expiry).
    HoldCleared,
    /// Never: the record explains something kept for ever.
    Never,
}

/// One row of the schedule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Stable id, used in tombstone policies (`retention/<id>`), answers and config overrides.
    pub id: &'static str,
    /// Which records the row covers, for people.
    pub covers: &'static str,
    pub anchor: Anchor,
    /// Default length in calendar months (0 = at the anchor event itself).
    pub months: u32,
    /// Longest period config may set (the statement's "up to").
    pub max_months: u32,
    /// A legal duty keeps these records: an erasure request does not delete them, and config may
    /// not shorten the period below the default.
    pub legal_duty: bool,
    /// Deleted as §10 child data (tombstone reason 3) rather than as retention (reason 1).
    pub child_data: bool,
    /// Where the row comes from.
    pub source: &'static str,
}

/// The built-in schedule (privacy statement §7 and §10). Order does not matter: [`classify`]
/// picks the row.
pub const RULES: &[Rule] = &[
    Rule {
        id: "consent-proof",
        covers: "consent records holding a grant under basis consent, or only withdrawals, or marketing ending in a withdrawal (an objection)",
        anchor: Anchor::LastEventOnceWithdrawn,
        months: 60,
        max_months: 120,
        legal_duty: true,
        child_data: false,
        source: "§7: proof that consent was given or withdrawn is kept 5 years",
    },
    Rule {
        id: "financial",
        covers: "billing records; transfers of payment data or to payment providers",
        anchor: Anchor::LastEvent,
        months: 120,
        max_months: 120,
        legal_duty: true,
        child_data: false,
        source: "§7: corporate and financial records up to 10 years",
    },
    Rule {
        id: "marketing",
        covers: "marketing and sales records on a basis other than consent",
        anchor: Anchor::LastEvent,
        months: 12,
        max_months: 12,
        legal_duty: false,
        child_data: false,
        source: "§7: marketing and sales data up to 12 months",
    },
    Rule {
        id: "basis-end",
        covers: "other legal-basis records (contract, legal obligation, legitimate interest)",
        anchor: Anchor::LastEventOnceWithdrawn,
        months: 0,
        max_months: 24,
        legal_duty: false,
        child_data: false,
        source:
            "§7: other services' data for the contract's duration (policy: deleted when it ends)",
    },
    Rule {
        id: "sms-voice",
        covers: "transfers of SMS and voice data only (phone number, traffic, location, content)",
        anchor: Anchor::TransferTime,
        months: 6,
        max_months: 24,
        legal_duty: false,
        child_data: false,
        source: "§7: SMS and voice data 6 months, up to 2 years where a jurisdiction requires",
    },
    Rule {
        id: "transfer-other",
        covers: "other transfer records",
        anchor: Anchor::TransferTime,
        months: 12,
        max_months: 24,
        legal_duty: false,
        child_data: false,
        source: "policy: §7 gives no period for other services' transfers; 12 months",
    },
    Rule {
        id: "request-confirmation",
        covers: "closed data-subject requests",
        anchor: Anchor::RequestClosed,
        months: 60,
        max_months: 120,
        legal_duty: true,
        child_data: false,
        source: "§7: confirmations of handled data-subject requests are kept 5 years",
    },
    Rule {
        id: "hold-record",
        covers: "cleared legal holds",
        anchor: Anchor::HoldCleared,
        months: 60,
        max_months: 120,
        legal_duty: true,
        child_data: false,
        source:
            "policy: why records outlived their schedule is kept as long as request confirmations",
    },
    Rule {
        id: "refusal",
        covers: "signed refusals to send records to an office (transfer records with status \
                 refused; ids only, no personal data)",
        anchor: Anchor::Never,
        months: 0,
        max_months: 0,
        legal_duty: true,
        child_data: false,
        source: "policy: a refusal explains log leaves every office keeps for ever (a withheld \
                 record in an audit bundle); deleted, every bundle exported elsewhere failed",
    },
    Rule {
        id: "child-data",
        covers: "consent records of a person under 18 without recorded parental consent",
        anchor: Anchor::LastEvent,
        months: 0,
        max_months: 0,
        legal_duty: false,
        child_data: true,
        source:
            "§10: data of persons under 18 received without parental consent is deleted promptly",
    },
];

impl Rule {
    /// Why config cannot set this rule's period, if it cannot: its records are kept for ever,
    /// or its limits leave one period only.
    pub fn fixed_period(&self) -> Option<String> {
        let shortest = if self.legal_duty { self.months } else { 0 };
        match self.anchor {
            Anchor::Never => Some("its records are kept for ever".into()),
            _ if shortest < self.max_months => None,
            _ if self.months == 0 => Some("its records are deleted at the first pass".into()),
            _ => Some(format!("its records are kept {} months", self.months)),
        }
    }
}

/// SMS and voice data categories (§3).
pub const SMS_VOICE_CATEGORIES: &[&str] =
    &["phone_number", "traffic_data", "location_data", "content"];
/// Purposes whose records are financial records.
pub const FINANCIAL_PURPOSES: &[&str] = &["billing"];

pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

fn must(id: &str) -> &'static Rule {
    rule(id).expect("rule ids used in classify are in RULES")
}

fn grants_consent(c: &ConsentRecord) -> bool {
    c.events
        .iter()
        .any(|e| e.action == "grant" && e.basis.as_deref() == Some("consent"))
}

/// A record of withdrawals only: made where the withdrawal was recorded before the grant had
/// arrived, so the grant (and its basis) is in another record (`retention::withdrawals`). It is
/// the proof of the withdrawal.
fn only_withdraws(c: &ConsentRecord) -> bool {
    let mut own = persons_events(c).peekable();
    own.peek().is_some() && own.all(|e| e.action == "withdraw")
}

/// The record's events but the withdrawals an erasure's completion made (`by_erasure`): those
/// end the processing, but are not the person's withdrawal or objection, so no proof to keep.
/// Counted, an erasure completed under a legal hold (which withdraws, deleting nothing) made a
/// marketing grant on legitimate interest "consent proof", and once the hold was lifted a
/// second erasure kept it five years with its evidence (found by an exploratory session).
fn persons_events(c: &ConsentRecord) -> impl Iterator<Item = &crate::record::ConsentEvent> {
    c.events.iter().filter(|e| e.by_erasure.is_none())
}

/// Whether the record's latest event of the person's (by rank, a withdrawal after a grant of
/// the same rank; an erasure's withdrawal does not count: [`persons_events`]) is a
/// withdrawal.
fn ends_withdrawn(c: &ConsentRecord) -> bool {
    persons_events(c)
        .filter_map(|e| e.order())
        .max()
        .is_some_and(|(_, withdraw)| withdraw)
}

/// The row that governs a record. `is_marketing` says whether a purpose counts as marketing
/// here (this office's config); a consent record whose granting office counted it as marketing
/// (`ConsentRecord::marketing`) is marketing too.
/// A consent record is read without the withdrawals carrying out a restriction ([`unrestricted`]).
pub fn classify(record: &Record, is_marketing: impl Fn(&str) -> bool) -> &'static Rule {
    match unrestricted(record) {
        Some(view) => classify_stored(&view, is_marketing),
        None => classify_stored(record, is_marketing),
    }
}

/// [`classify`] of a record as it is.
fn classify_stored(record: &Record, is_marketing: impl Fn(&str) -> bool) -> &'static Rule {
    match record {
        Record::Consent(c) if c.minor && c.parental_consent.is_none() => must("child-data"),
        Record::Consent(c) if FINANCIAL_PURPOSES.contains(&c.purpose.as_str()) => must("financial"),
        Record::Consent(c) if grants_consent(c) || only_withdraws(c) => must("consent-proof"),
        // An objection to marketing on another basis is the proof of it as a withdrawal is
        // (the person must not be marketed to again): kept five years from it, as the same
        // withdrawal recorded apart is. It went under `marketing`, 12 months from the
        // objection (found by an exploratory session).
        Record::Consent(c) if (c.marketing || is_marketing(&c.purpose)) && ends_withdrawn(c) => {
            must("consent-proof")
        }
        Record::Consent(c) if c.marketing || is_marketing(&c.purpose) => must("marketing"),
        Record::Consent(_) => must("basis-end"),
        Record::Request(_) => must("request-confirmation"),
        Record::Hold(_) => must("hold-record"),
        Record::Transfer(t) if t.status.as_deref() == Some("refused") => must("refusal"),
        Record::Transfer(t) => {
            let financial = t.categories.iter().any(|c| c == "payment_data")
                || t.recipient_kind.as_deref() == Some("payment_provider");
            if financial {
                must("financial")
            } else if t
                .categories
                .iter()
                .all(|c| SMS_VOICE_CATEGORIES.contains(&c.as_str()))
            {
                must("sms-voice")
            } else {
                must("transfer-other")
            }
        }
    }
}

/// Why an erasure keeps a record of processing a legal obligation requires.
pub const LEGAL_OBLIGATION_KEPT: &str = "GDPR Art. 17(3)(b): processing needed to comply with a legal obligation (granted on basis legal_obligation); kept, and not withdrawn, until that grant is withdrawn";

/// Whether a consent record is processing a legal obligation still requires: its latest event
/// is a grant on basis `legal_obligation`. An erasure neither deletes nor withdraws it (GDPR
/// Art. 17(3)(b)); once withdrawn (the obligation ended) it goes under its rule as before.
pub fn legal_obligation_in_force(record: &Record) -> bool {
    let Record::Consent(c) = record else {
        return false;
    };
    c.events
        .iter()
        .filter_map(|e| Some((e.order()?, e)))
        .max_by_key(|(k, _)| *k)
        .is_some_and(|(_, e)| e.action == "grant" && e.basis.as_deref() == Some("legal_obligation"))
}

/// Whether a legal duty keeps this record through an erasure request (§7, §8.4).
pub fn legally_kept(record: &Record, is_marketing: impl Fn(&str) -> bool) -> Option<&'static Rule> {
    let r = classify(record, is_marketing);
    r.legal_duty.then_some(r)
}

/// The schedule in force at one office: the built-in rows with the office's overrides.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    months: BTreeMap<&'static str, u32>,
}

/// Parses `6m`, `2y` or `0` into months.
fn parse_months(text: &str) -> Option<u32> {
    let t = text.trim();
    if t == "0" {
        return Some(0);
    }
    let (n, unit) = t.split_at(t.len().checked_sub(1)?);
    let n: u32 = n.parse().ok()?;
    match unit {
        "m" => Some(n),
        "y" => n.checked_mul(12),
        _ => None,
    }
}

impl Schedule {
    /// The built-in schedule with `overrides` (rule id → `6m` / `2y`) from `[retention]`.
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Schedule, String> {
        let mut months = BTreeMap::new();
        for (id, text) in overrides {
            let r = rule(id).ok_or_else(|| {
                format!(
                    "[retention] periods: unknown rule {id:?}; rules are {}",
                    RULES.iter().map(|r| r.id).collect::<Vec<_>>().join(", ")
                )
            })?;
            let m = parse_months(text).ok_or_else(|| {
                format!("[retention] periods.{id}: {text:?} is not a period such as 6m or 2y")
            })?;
            if let Some(why) = r.fixed_period() {
                // Said before the limits: "1y is longer than the 0 months the privacy
                // statement allows" read as if refusals were deleted at once (found by an
                // exploratory session). A fixed period's own value stays accepted (harmless).
                if r.anchor == Anchor::Never || m != r.months {
                    return Err(format!(
                        "[retention] periods.{id}: this rule is not configurable: {why}; {}; remove the key",
                        r.source
                    ));
                }
            }
            if m > r.max_months {
                return Err(format!(
                    "[retention] periods.{id}: {text} is longer than the {} months the privacy statement allows",
                    r.max_months
                ));
            }
            if r.legal_duty && m < r.months {
                return Err(format!(
                    "[retention] periods.{id}: {text} is shorter than the {} months a legal duty requires",
                    r.months
                ));
            }
            months.insert(r.id, m);
        }
        Ok(Schedule { months })
    }

    pub fn months(&self, r: &Rule) -> u32 {
        self.months.get(r.id).copied().unwrap_or(r.months)
    }

    /// The first day on which `record` may be deleted, and the row that says so; `None` while
    /// no period runs (active consent, open request, active hold).
    pub fn expiry(
        &self,
        record: &Record,
        is_marketing: impl Fn(&str) -> bool,
    ) -> Option<(NaiveDate, &'static Rule)> {
        let unrestricted = unrestricted(record);
        let record = unrestricted.as_ref().unwrap_or(record);
        let r = classify(record, is_marketing);
        let anchor = anchor_time(record, r.anchor)?;
        let day = anchor
            .date_naive()
            .checked_add_months(Months::new(self.months(r)))?;
        Some((day, r))
    }
}

/// A period of `months` for people: "5 years", "12 months", "0 months" reads "at once".
fn period_text(months: u32) -> String {
    match months {
        0 => "at once".into(),
        m if m % 12 == 0 && m >= 24 => format!("{} years", m / 12),
        12 => "12 months".into(),
        1 => "1 month".into(),
        m => format!("{m} months"),
    }
}

impl Schedule {
    /// The criterion that sets how long a record under `r` is kept, for people (GDPR Art.
    /// 15(1)(d): "the envisaged period …, or, if not possible, the criteria used to determine
    /// that period"), with this office's period.
    pub fn criterion(&self, r: &Rule) -> String {
        let months = self.months(r);
        let period = period_text(months);
        let after = |event: &str| match months {
            0 => format!("deleted when {event}"),
            _ => format!("kept {period} after {event}"),
        };
        match r.anchor {
            Anchor::LastEventOnceWithdrawn => format!(
                "{}; no end while the consent stands",
                after("the consent is withdrawn or the processing ends")
            ),
            Anchor::LastEvent => after("its last event"),
            Anchor::TransferTime => after("the transfer"),
            Anchor::RequestClosed => format!(
                "{}; no end while it is open",
                after("the request is answered")
            ),
            Anchor::HoldCleared => format!(
                "{}; no end while it is active",
                after("the hold is cleared")
            ),
            Anchor::Never => "kept for good".into(),
        }
    }

    /// What `subject export` tells the person of how long `record` is kept (GDPR Art.
    /// 15(1)(d)): the rule, the day it is deleted on (`until`, the first day a pass deletes
    /// it) or `null` while its period has not started, the criterion and the rule's source;
    /// `held` when a legal hold on the subject keeps it past that day, until the hold ends.
    pub fn retention_view(
        &self,
        record: &Record,
        is_marketing: impl Fn(&str) -> bool,
        held: bool,
    ) -> serde_json::Value {
        let expiry = self.expiry(record, &is_marketing);
        let rule = expiry.map_or_else(|| classify(record, &is_marketing), |(_, r)| r);
        let mut v = serde_json::json!({
            "rule": rule.id,
            "until": expiry.map(|(d, _)| crate::record::fmt_date(d)),
            "criterion": self.criterion(rule),
            "source": rule.source,
            "held": held,
        });
        if held {
            v["held_why"] = serde_json::json!(HELD_WHY);
        }
        v
    }
}

/// What a subject export says of a record a legal hold keeps.
pub const HELD_WHY: &str = "a legal hold on the subject keeps this record past its period until the hold is cleared; an erasure completed meanwhile is carried out then (GDPR Art. 17(3)(e))";

/// A consent record as it would stand without the withdrawals that carry out a restriction
/// request (`ConsentEvent::restriction`), if it holds any and other events besides. Restricted
/// data is stored, not erased (GDPR Art. 18(1)): the restriction stops the processing
/// (`consent check` still reads the withdrawal), but the record keeps the schedule it would
/// have without it: a grant on legitimate interest stays while it would stay active, a
/// marketing one for its 12 months from its last other event. Completing a restriction withdrew
/// the purpose, and the next pass deleted it under `basis-end`, 0 months (found by an
/// exploratory session). A later withdrawal (an objection, the operator's) ends it as before.
/// A record of restriction withdrawals only (one recorded where the grant had not arrived) is
/// left as it is: proof of the withdrawal, kept while it decides for a grant elsewhere
/// (`retention::withdrawals`).
fn unrestricted(record: &Record) -> Option<Record> {
    let Record::Consent(c) = record else {
        return None;
    };
    let restricts =
        |e: &crate::record::ConsentEvent| e.action == "withdraw" && e.restriction.is_some();
    if !c.events.iter().any(restricts) || c.events.iter().all(restricts) {
        return None;
    }
    let mut c = c.clone();
    c.events.retain(|e| !restricts(e));
    Some(Record::Consent(c))
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// The time a row's period runs from, if it runs yet.
fn anchor_time(record: &Record, anchor: Anchor) -> Option<DateTime<Utc>> {
    match (record, anchor) {
        (_, Anchor::Never) => None,
        (Record::Consent(c), Anchor::LastEvent | Anchor::LastEventOnceWithdrawn) => {
            // The latest event by rank; a withdrawal wins a tie, as in `consent check`. The
            // period runs from that rank: the event's time, or (written knowing of a later-dated
            // event, `ConsentEvent::follows`) just after that event's.
            let (t, withdraw) = c.events.iter().filter_map(|e| e.order()).max()?;
            (anchor == Anchor::LastEvent || withdraw).then_some(t)
        }
        (Record::Transfer(t), _) => parse(&t.at),
        (Record::Request(r), _) => {
            let outcome = r.outcome.as_deref()?;
            let closed = r.history.iter().rev().find(|h| h.status == outcome)?;
            parse(&closed.at)
        }
        (Record::Hold(h), _) => parse(h.cleared_at.as_deref()?),
        (Record::Consent(_), _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ConsentEvent, HoldRecord, RequestRecord, StatusEvent, TransferRecord};

    fn event(action: &str, at: &str, basis: Option<&str>) -> ConsentEvent {
        ConsentEvent {
            action: action.into(),
            at: at.into(),
            basis: basis.map(Into::into),
            service: None,
            evidence: None,
            notice: None,
            office: "de".into(),
            restriction: None,
            by_erasure: None,
            follows: None,
        }
    }

    fn consent(purpose: &str, events: Vec<ConsentEvent>) -> ConsentRecord {
        ConsentRecord {
            subject: "a@example.com".into(),
            subject_kind: "email".into(),
            person: "end_user".into(),
            purpose: purpose.into(),
            role: "processor".into(),
            office: "de".into(),
            minor: false,
            minor_elsewhere: false,
            marketing: false,
            parental_consent: None,
            events,
        }
    }

    fn transfer(categories: &[&str], recipient_kind: Option<&str>) -> Record {
        Record::Transfer(TransferRecord {
            subject: None,
            subject_kind: None,
            categories: categories.iter().map(|c| c.to_string()).collect(),
            from: "DE".into(),
            to: "US".into(),
            recipient: "Acme".into(),
            recipient_kind: recipient_kind.map(Into::into),
            mechanism: "scc".into(),
            tia: None,
            at: "2026-01-31T10:00:00Z".into(),
            office: "de".into(),
            records: vec![],
            to_office: None,
            status: None,
            reason: None,
        })
    }

    fn marketing(p: &str) -> bool {
        crate::vocab::MARKETING_PURPOSES.contains(&p)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn every_rule_is_reachable_and_ids_are_unique_policy_text() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        for r in RULES {
            assert!(r.months <= r.max_months, "{}", r.id);
            // Tombstone policies are `retention/<id>` and must be valid policy ids.
            assert!(r.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
            assert!(!r.source.is_empty());
        }
    }

    #[test]
    fn consent_proof_runs_five_years_from_the_withdrawal_and_not_while_active() {
        let s = Schedule::default();
        let active = Record::Consent(consent(
            "marketing",
            vec![event("grant", "2020-02-29T08:00:00Z", Some("consent"))],
        ));
        assert_eq!(classify(&active, marketing).id, "consent-proof");
        assert!(s.expiry(&active, marketing).is_none());
        let withdrawn = Record::Consent(consent(
            "marketing",
            vec![
                event("grant", "2020-02-29T08:00:00Z", Some("consent")),
                event("withdraw", "2021-03-15T23:59:59Z", None),
            ],
        ));
        let (d, r) = s.expiry(&withdrawn, marketing).unwrap();
        assert_eq!((d, r.id), (day("2026-03-15"), "consent-proof"));
        assert!(legally_kept(&withdrawn, marketing).is_some());
    }

    #[test]
    fn marketing_on_another_basis_runs_twelve_months_from_the_last_event() {
        let r = Record::Consent(consent(
            "sales",
            vec![event(
                "grant",
                "2025-01-31T00:00:00Z",
                Some("legitimate_interest"),
            )],
        ));
        let (d, rule) = Schedule::default().expiry(&r, marketing).unwrap();
        // Calendar months; the 31st clamps to the month's last day.
        assert_eq!((d, rule.id), (day("2026-01-31"), "marketing"));
        assert!(legally_kept(&r, marketing).is_none());
        let other = Record::Consent(consent(
            "support",
            vec![event("grant", "2025-01-31T00:00:00Z", Some("contract"))],
        ));
        assert_eq!(classify(&other, marketing).id, "basis-end");
        assert!(Schedule::default().expiry(&other, marketing).is_none());
        // An objection to it is kept as proof, 5 years from the objection, as a withdrawal
        // recorded apart is; granted again, the marketing rule applies again.
        let objected = Record::Consent(consent(
            "sales",
            vec![
                event("grant", "2025-01-31T00:00:00Z", Some("legitimate_interest")),
                event("withdraw", "2025-03-01T00:00:00Z", None),
            ],
        ));
        let (d, rule) = Schedule::default().expiry(&objected, marketing).unwrap();
        assert_eq!((d, rule.id), (day("2030-03-01"), "consent-proof"));
        let again = Record::Consent(consent(
            "sales",
            vec![
                event("grant", "2025-01-31T00:00:00Z", Some("legitimate_interest")),
                event("withdraw", "2025-03-01T00:00:00Z", None),
                event("grant", "2025-04-01T00:00:00Z", Some("legitimate_interest")),
            ],
        ));
        assert_eq!(classify(&again, marketing).id, "marketing");
        // An erasure's own withdrawal (made under a hold, which deleted nothing) is no
        // objection: the record stays under the marketing rule, which no legal duty keeps.
        let erased = Record::Consent(consent(
            "sales",
            vec![
                event("grant", "2025-01-31T00:00:00Z", Some("legitimate_interest")),
                ConsentEvent {
                    by_erasure: Some("01".repeat(16)),
                    ..event("withdraw", "2025-03-01T00:00:00Z", None)
                },
            ],
        ));
        assert_eq!(classify(&erased, marketing).id, "marketing");
        assert!(legally_kept(&erased, marketing).is_none());
    }

    #[test]
    fn transfers_by_category_and_overrides_within_limits() {
        let sms = transfer(&["phone_number", "content"], None);
        let s = Schedule::default();
        assert_eq!(s.expiry(&sms, marketing).unwrap().0, day("2026-07-31"));
        let fin = transfer(&["phone_number", "payment_data"], None);
        assert_eq!(s.expiry(&fin, marketing).unwrap().0, day("2036-01-31"));
        assert!(legally_kept(&fin, marketing).is_some());
        let pay = transfer(&["account_data"], Some("payment_provider"));
        assert_eq!(classify(&pay, marketing).id, "financial");
        assert_eq!(
            classify(&transfer(&["email_address"], None), marketing).id,
            "transfer-other"
        );

        let mut o = BTreeMap::new();
        o.insert("sms-voice".to_string(), "2y".to_string());
        let s2 = Schedule::new(&o).unwrap();
        assert_eq!(s2.expiry(&sms, marketing).unwrap().0, day("2028-01-31"));
        o.insert("sms-voice".to_string(), "25m".to_string());
        assert!(Schedule::new(&o).unwrap_err().contains("longer"));
        let mut o = BTreeMap::new();
        o.insert("consent-proof".to_string(), "1y".to_string());
        assert!(Schedule::new(&o).unwrap_err().contains("legal duty"));
        let mut o = BTreeMap::new();
        o.insert("sms".to_string(), "6m".to_string());
        assert!(Schedule::new(&o).unwrap_err().contains("unknown rule"));
        o.clear();
        o.insert("marketing".to_string(), "a year".to_string());
        assert!(Schedule::new(&o).is_err());
    }

    /// Refusals are kept for ever, child data goes at once and financial records stay 10
    /// years: config cannot change those, and says so rather than quote a limit ("1y is longer
    /// than the 0 months the privacy statement allows").
    #[test]
    fn rules_with_a_fixed_period_are_not_configurable() {
        let set = |id: &str, text: &str| {
            Schedule::new(&BTreeMap::from([(id.to_string(), text.to_string())]))
        };
        let e = set("refusal", "1y").unwrap_err();
        assert!(
            e.contains(
                "periods.refusal: this rule is not configurable: its records are kept for ever"
            ),
            "{e}"
        );
        assert!(!e.contains("longer"), "{e}");
        assert!(set("refusal", "0")
            .unwrap_err()
            .contains("not configurable"));
        let e = set("child-data", "6m").unwrap_err();
        assert!(
            e.contains("not configurable: its records are deleted at the first pass"),
            "{e}"
        );
        let e = set("financial", "5y").unwrap_err();
        assert!(
            e.contains("not configurable: its records are kept 120 months"),
            "{e}"
        );
        // A fixed period's own value is accepted, as before.
        assert!(set("financial", "10y").is_ok());
        assert!(set("child-data", "0").is_ok());
        let fixed: Vec<&str> = RULES
            .iter()
            .filter(|r| r.fixed_period().is_some())
            .map(|r| r.id)
            .collect();
        assert_eq!(fixed, ["financial", "refusal", "child-data"]);
        for r in RULES.iter().filter(|r| r.fixed_period().is_none()) {
            assert!(set(r.id, &format!("{}m", r.max_months)).is_ok(), "{}", r.id);
        }
    }

    #[test]
    fn requests_and_holds_run_from_closing_and_clearing() {
        let mut r = RequestRecord {
            subject: "a@example.com".into(),
            subject_kind: "email".into(),
            kind: "erasure".into(),
            jurisdiction: "DE".into(),
            received: "2026-01-05T00:00:00Z".into(),
            clock_start: None,
            due: "2026-02-05".into(),
            due_rule: "x".into(),
            due_explanation: "x".into(),
            confirm_by: None,
            status: "received".into(),
            extension: None,
            outcome: None,
            note: None,
            history: vec![],
            office: "de".into(),
            erasure: None,
        };
        let s = Schedule::default();
        assert!(s.expiry(&Record::Request(r.clone()), marketing).is_none());
        r.outcome = Some("completed".into());
        r.status = "completed".into();
        r.history.push(StatusEvent {
            status: "completed".into(),
            at: "2026-01-20T12:00:00Z".into(),
            note: None,
            office: "de".into(),
            recorded: None,
        });
        let (d, rule) = s.expiry(&Record::Request(r), marketing).unwrap();
        assert_eq!((d, rule.id), (day("2031-01-20"), "request-confirmation"));

        let mut h = HoldRecord {
            subject: "a@example.com".into(),
            subject_kind: "email".into(),
            reason: "litigation".into(),
            set_at: "2026-01-01T00:00:00Z".into(),
            cleared_at: None,
            office: "de".into(),
            origin: None,
            cleared_by: None,
        };
        assert!(s.expiry(&Record::Hold(h.clone()), marketing).is_none());
        h.cleared_at = Some("2026-06-01T00:00:00Z".into());
        assert_eq!(
            s.expiry(&Record::Hold(h), marketing).unwrap().0,
            day("2031-06-01")
        );
    }

    /// A signed refusal explains log leaves kept for ever: it never expires (as a transfer it
    /// went after 12 months, and every bundle exported outside cn failed from then on).
    #[test]
    fn refusals_never_expire() {
        let Record::Transfer(mut refusal) = transfer(&["email_address"], None) else {
            unreachable!("transfer() makes a transfer record")
        };
        refusal.status = Some("refused".into());
        let r = Record::Transfer(refusal);
        assert_eq!(classify(&r, marketing).id, "refusal");
        assert!(Schedule::default().expiry(&r, marketing).is_none());
    }

    /// A record of withdrawals only (the grant is in another office's record) is the proof of a
    /// withdrawal: five years, not `basis-end`'s "at once" or `marketing`'s year.
    #[test]
    fn a_record_of_withdrawals_only_is_consent_proof() {
        for purpose in ["support", "sales"] {
            let r = Record::Consent(consent(
                purpose,
                vec![event("withdraw", "2026-12-02T09:00:00Z", None)],
            ));
            let (d, rule) = Schedule::default().expiry(&r, marketing).unwrap();
            assert_eq!(
                (d, rule.id),
                (day("2031-12-02"), "consent-proof"),
                "{purpose}"
            );
        }
    }

    /// A withdrawal carrying out a restriction stops the processing but not the schedule: the
    /// record keeps the expiry it would have without it (GDPR Art. 18: stored, not erased). A
    /// later plain withdrawal ends it as before.
    #[test]
    fn a_restriction_leaves_the_schedule_as_it_was() {
        let restricted = |at: &str| ConsentEvent {
            restriction: Some("0123456789abcdef0123456789abcdef".into()),
            ..event("withdraw", at, None)
        };
        let analytics = consent(
            "service_analytics",
            vec![
                event("grant", "2026-03-01T10:00:00Z", Some("legitimate_interest")),
                restricted("2026-04-01T10:00:00Z"),
            ],
        );
        let r = Record::Consent(analytics.clone());
        assert!(Schedule::default().expiry(&r, marketing).is_none());
        assert_eq!(classify(&r, marketing).id, "basis-end");
        let sales = consent(
            "sales",
            vec![
                event("grant", "2026-03-01T10:00:00Z", Some("legitimate_interest")),
                restricted("2026-04-01T10:00:00Z"),
            ],
        );
        let (d, rule) = Schedule::default()
            .expiry(&Record::Consent(sales), marketing)
            .unwrap();
        assert_eq!((d, rule.id), (day("2027-03-01"), "marketing"));
        let mut ended = analytics;
        ended
            .events
            .push(event("withdraw", "2026-05-01T10:00:00Z", None));
        let (d, rule) = Schedule::default()
            .expiry(&Record::Consent(ended), marketing)
            .unwrap();
        assert_eq!((d, rule.id), (day("2026-05-01"), "basis-end"));
        // Restriction withdrawals only (the grant is in another record): proof, as before.
        let only = Record::Consent(consent("support", vec![restricted("2026-12-02T09:00:00Z")]));
        let (d, rule) = Schedule::default().expiry(&only, marketing).unwrap();
        assert_eq!((d, rule.id), (day("2031-12-02"), "consent-proof"));
    }

    /// `subject export` tells the person how long each record is kept (GDPR Art. 15(1)(d)):
    /// the day, or the criterion while the period has not started, and a hold.
    #[test]
    fn a_record_s_retention_names_its_day_or_its_criterion() {
        let s = Schedule::default();
        let sales = Record::Consent(consent(
            "sales",
            vec![event(
                "grant",
                "2025-01-10T10:00:00Z",
                Some("legitimate_interest"),
            )],
        ));
        let v = s.retention_view(&sales, marketing, false);
        assert_eq!(v["rule"], "marketing");
        assert_eq!(v["until"], "2026-01-10");
        assert_eq!(v["criterion"], "kept 12 months after its last event");
        assert_eq!(v["held"], false);
        assert!(v.get("held_why").is_none());
        let active = Record::Consent(consent(
            "marketing",
            vec![event("grant", "2025-01-10T10:00:00Z", Some("consent"))],
        ));
        let v = s.retention_view(&active, marketing, true);
        assert_eq!(v["rule"], "consent-proof");
        assert!(v["until"].is_null(), "{v}");
        assert_eq!(
            v["criterion"],
            "kept 5 years after the consent is withdrawn or the processing ends; no end while the consent stands"
        );
        assert_eq!(v["held"], true);
        assert!(v["held_why"].as_str().unwrap().contains("legal hold"));
        let support = Record::Consent(consent(
            "support",
            vec![event("grant", "2025-01-10T10:00:00Z", Some("contract"))],
        ));
        assert!(s.retention_view(&support, marketing, false)["criterion"]
            .as_str()
            .unwrap()
            .starts_with("deleted when the consent is withdrawn"));
        // The office's own period is the one told.
        let longer = Schedule::new(&BTreeMap::from([(
            "sms-voice".to_string(),
            "2y".to_string(),
        )]))
        .unwrap();
        let sms = transfer(&["phone_number"], None);
        let v = longer.retention_view(&sms, marketing, false);
        assert_eq!(
            (v["rule"].as_str(), v["until"].as_str()),
            (Some("sms-voice"), Some("2028-01-31"))
        );
        assert_eq!(v["criterion"], "kept 2 years after the transfer");
    }

    #[test]
    fn child_data_expires_at_once_unless_a_parent_consented() {
        let mut c = consent(
            "support",
            vec![event("grant", "2026-03-01T10:00:00Z", Some("contract"))],
        );
        c.minor = true;
        let r = Record::Consent(c.clone());
        let (d, rule) = Schedule::default().expiry(&r, marketing).unwrap();
        assert_eq!(
            (d, rule.id, rule.child_data),
            (day("2026-03-01"), "child-data", true)
        );
        c.parental_consent = Some("signed form".into());
        assert_eq!(classify(&Record::Consent(c), marketing).id, "basis-end");
    }
}
