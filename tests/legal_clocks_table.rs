//! Every jurisdiction's legal clock, table-driven. Each row names the rule it checks and why the
//! date is what it is; the expected dates were computed independently (by hand and with a
//! separate holiday library), not by this code.
use chrono::{DateTime, NaiveDate, Utc};
use consentd::clock::{Clock, ClockError};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}
fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

struct Case {
    why: &'static str,
    jurisdiction: &'static str,
    kind: &'static str,
    received: &'static str,
    due: &'static str,
    rule: &'static str,
}

const DUE: &[Case] = &[
    Case {
        why: "GDPR month end: 31 Jan has no 31 Feb, so 28 Feb, a Saturday: Monday 2 Mar",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-01-31T10:00:00Z",
        due: "2026-03-02",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "GDPR leap year: 31 Jan 2028 gives 29 Feb, a Tuesday",
        jurisdiction: "DE",
        kind: "erasure",
        received: "2028-01-31T10:00:00Z",
        due: "2028-02-29",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "GDPR weekend: 30 May 2026 is a Saturday, 1 Jun a working Monday",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-04-30T08:00:00Z",
        due: "2026-06-01",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "GDPR public holiday: 25 Dec (Christmas), 26 (holiday, Saturday), 27 (Sunday): 28 Dec",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-11-25T08:00:00Z",
        due: "2026-12-28",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "GDPR receipt late in the day counts by the date in Berlin: 23:30 UTC on 31 Mar is 01:30 on 1 Apr (CEST); 1 May is Labour Day, a Friday, so Monday 4 May (by the UTC date it was 30 Apr)",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-03-31T23:30:00Z",
        due: "2026-05-04",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "GDPR in NL: 27 Apr is King's Day, so 28 Apr",
        jurisdiction: "NL",
        kind: "access",
        received: "2026-03-27T08:00:00Z",
        due: "2026-04-28",
        rule: "gdpr-art12-one-month",
    },
    Case {
        why: "UK GDPR: 31 Mar gives 30 Apr (no 31 Apr), a Thursday",
        jurisdiction: "GB",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "uk-gdpr-art12-one-month",
    },
    Case {
        why: "UK GDPR bank holiday: 25 May 2026 is the spring bank holiday",
        jurisdiction: "GB",
        kind: "access",
        received: "2026-04-25T09:00:00Z",
        due: "2026-05-26",
        rule: "uk-gdpr-art12-one-month",
    },
    Case {
        why: "UK read as GB",
        jurisdiction: "UK",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "uk-gdpr-art12-one-month",
    },
    Case {
        why: "CCPA: 45 calendar days, no weekend shift",
        jurisdiction: "US-CA",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-05-15",
        rule: "ccpa-45-days",
    },
    Case {
        why: "CCPA opt-out: 15 business days skipping Memorial Day (25 May)",
        jurisdiction: "US-CA",
        kind: "opt_out",
        received: "2026-05-20T09:00:00Z",
        due: "2026-06-11",
        rule: "ccpa-opt-out-15-business-days",
    },
    Case {
        why: "US outside California: company policy days (30 by default), as in China",
        jurisdiction: "US",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "us-company-policy",
    },
    Case {
        why: "PDPA access: 30 days",
        jurisdiction: "SG",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "pdpa-access-30-days",
    },
    Case {
        why: "PDPA correction: company policy 30 days",
        jurisdiction: "SG",
        kind: "rectification",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "pdpa-company-30-days",
    },
    Case {
        why: "APP 12: reasonable period, 30 days by guidance",
        jurisdiction: "AU",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "app12-reasonable-period-30-days",
    },
    Case {
        why:
            "Ley 1581 consulta: 10 business days across San José (23 Mar) and Holy Thursday/Friday",
        jurisdiction: "CO",
        kind: "access",
        received: "2026-03-20T15:00:00Z",
        due: "2026-04-08",
        rule: "ley1581-consulta-10-business-days",
    },
    Case {
        why: "Ley 1581 reclamo: 15 business days across the same holidays",
        jurisdiction: "CO",
        kind: "erasure",
        received: "2026-03-20T15:00:00Z",
        due: "2026-04-15",
        rule: "ley1581-reclamo-15-business-days",
    },
    Case {
        why: "PIPL: no statutory period; company policy 30 days",
        jurisdiction: "CN",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        due: "2026-04-30",
        rule: "pipl-company-policy",
    },
];

#[test]
fn due_dates_for_every_jurisdiction() {
    let clock = Clock::builtin();
    for c in DUE {
        let due = clock
            .due(c.jurisdiction, c.kind, at(c.received))
            .unwrap_or_else(|e| panic!("{}: {e}", c.why));
        assert_eq!(due.date, day(c.due), "{}", c.why);
        assert_eq!(due.rule, c.rule, "{}", c.why);
        assert!(!due.explanation.is_empty(), "{}", c.why);
    }
}

struct Ext {
    why: &'static str,
    jurisdiction: &'static str,
    kind: &'static str,
    received: &'static str,
    notice: &'static str,
    until: Option<&'static str>,
    due: Result<&'static str, &'static str>,
}

const EXTENSIONS: &[Ext] = &[
    Ext {
        why: "GDPR: two months from receipt in all (privacy statement §8.4, not Art. 12(3)'s three)",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-01-31T10:00:00Z",
        notice: "2026-02-10T00:00:00Z",
        until: None,
        due: Ok("2026-03-31"),
    },
    Ext {
        why: "GDPR: two months land on Good Friday 3 Apr 2026, then the weekend and Easter Monday: 7 Apr",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-02-03T10:00:00Z",
        notice: "2026-02-10T00:00:00Z",
        until: None,
        due: Ok("2026-04-07"),
    },
    Ext {
        why: "UK GDPR: two months from receipt land on Sunday 31 May: Monday 1 Jun",
        jurisdiction: "GB",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-20T00:00:00Z",
        until: None,
        due: Ok("2026-06-01"),
    },
    Ext {
        why: "US outside California: two months from receipt (statement §8.4), no roll",
        jurisdiction: "US",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-20T00:00:00Z",
        until: None,
        due: Ok("2026-05-31"),
    },
    Ext {
        why: "US outside California: notice after the company's period is too late",
        jurisdiction: "US",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-05-01T00:00:00Z",
        until: None,
        due: Err("too late"),
    },
    Ext {
        why: "GDPR: notice after the first month is too late",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-05-01T00:00:00Z",
        until: None,
        due: Err("too late"),
    },
    Ext {
        why: "CCPA: 45 more days with notice inside the first 45",
        jurisdiction: "US-CA",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-20T00:00:00Z",
        until: None,
        due: Ok("2026-06-29"),
    },
    Ext {
        why: "CCPA: notice after day 45 is too late",
        jurisdiction: "US-CA",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-05-20T00:00:00Z",
        until: None,
        due: Err("too late"),
    },
    Ext {
        why: "CCPA opt-out: no extension",
        jurisdiction: "US-CA",
        kind: "opt_out",
        received: "2026-05-20T09:00:00Z",
        notice: "2026-05-21T00:00:00Z",
        until: None,
        due: Err("not allowed"),
    },
    Ext {
        why: "Ley 1581 consulta: 5 more business days after the first term",
        jurisdiction: "CO",
        kind: "access",
        received: "2026-03-20T15:00:00Z",
        notice: "2026-04-01T00:00:00Z",
        until: None,
        due: Ok("2026-04-15"),
    },
    Ext {
        why: "Ley 1581 reclamo: 8 more business days after the first term",
        jurisdiction: "CO",
        kind: "erasure",
        received: "2026-03-20T15:00:00Z",
        notice: "2026-04-01T00:00:00Z",
        until: None,
        due: Ok("2026-04-27"),
    },
    Ext {
        why: "PDPA: the date told in writing",
        jurisdiction: "SG",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-25T00:00:00Z",
        until: Some("2026-05-20"),
        due: Ok("2026-05-20"),
    },
    Ext {
        why: "PDPA: a date must be given",
        jurisdiction: "SG",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-25T00:00:00Z",
        until: None,
        due: Err("--until"),
    },
    Ext {
        why: "PDPA: the date must be later than the current deadline",
        jurisdiction: "SG",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-25T00:00:00Z",
        until: Some("2026-04-29"),
        due: Err("after the current due date"),
    },
    Ext {
        why: "GDPR fixes the date; --until is refused",
        jurisdiction: "DE",
        kind: "access",
        received: "2026-03-31T09:00:00Z",
        notice: "2026-04-02T00:00:00Z",
        until: Some("2026-06-01"),
        due: Err("drop --until"),
    },
];

#[test]
fn extensions_for_every_jurisdiction() {
    let clock = Clock::builtin();
    for c in EXTENSIONS {
        let original = clock.due(c.jurisdiction, c.kind, at(c.received)).unwrap();
        let got = clock.extended(
            c.jurisdiction,
            c.kind,
            at(c.received),
            original.date,
            at(c.notice),
            c.until.map(day),
        );
        match (got, c.due) {
            (Ok(due), Ok(want)) => {
                assert_eq!(due.date, day(want), "{}", c.why);
                assert!(
                    due.rule.contains("extension") || due.rule.contains("notified"),
                    "{}: {}",
                    c.why,
                    due.rule
                );
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{}: {e}", c.why),
            (got, want) => panic!("{}: got {got:?}, want {want:?}", c.why),
        }
    }
}

#[test]
fn ccpa_receipt_is_confirmed_within_ten_business_days() {
    // 31 Mar 2026 is Cesar Chavez Day but it is the day of receipt, which is not counted.
    let due = Clock::builtin()
        .due("US-CA", "access", at("2026-03-31T09:00:00Z"))
        .unwrap();
    assert_eq!(due.confirm_by, Some(day("2026-04-14")));
    assert!(
        due.explanation.contains("confirm receipt by 2026-04-14"),
        "{}",
        due.explanation
    );
}

#[test]
fn uk_clock_restarts_on_identity_received() {
    // The restart is the rule applied again from the day identity arrives: 10 Apr gives 10 May,
    // a Sunday, so Monday 11 May.
    assert!(consentd::clock::restarts_on_identity("GB", "access"));
    assert!(!consentd::clock::restarts_on_identity("DE", "access"));
    let due = Clock::builtin()
        .due("GB", "access", at("2026-04-10T12:00:00Z"))
        .unwrap();
    assert_eq!(due.date, day("2026-05-11"));
}

#[test]
fn dates_outside_the_calendars_are_refused_not_guessed() {
    let clock = Clock::builtin();
    let e = clock
        .due("DE", "access", at("2028-12-15T00:00:00Z"))
        .unwrap_err();
    assert!(matches!(e, ClockError::OutsideCalendar { .. }), "{e}");
    assert!(e.to_string().contains("2029"), "{e}");
    let e = clock
        .due("FR", "access", at("2026-03-01T00:00:00Z"))
        .unwrap_err();
    assert!(matches!(e, ClockError::NoCalendar { .. }), "{e}");
    // Calendar-day rules need no holiday calendar beyond the CCPA's receipt confirmation.
    assert!(clock
        .due("SG", "access", at("2030-01-01T00:00:00Z"))
        .is_ok());
}

/// docs/legal-clocks.md's table against the code's: one row per rule, each naming its extension
/// rule, and an extension counted from the start says its length as the code counts it (the
/// doc and the code both said 3 months where the privacy statement promised two).
#[test]
fn the_documented_table_matches_the_rules() {
    use consentd::clock::{Extension, Period, RULES};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/legal-clocks.md"))
        .unwrap();
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .filter(|cells: &Vec<&str>| cells.len() == 8 && cells[0] != "`due_rule`")
        .collect();
    let documented: Vec<&str> = rows.iter().map(|r| r[0].trim_matches('`')).collect();
    let coded: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    assert_eq!(documented, coded, "the doc's rows are the code's, in order");
    for (rule, row) in RULES.iter().zip(&rows) {
        let extension = row[5];
        let (id, period) = match rule.extension {
            Extension::FromStart { rule, period, .. } => (Some(rule), Some(period)),
            Extension::AfterDue { rule, .. } | Extension::NotifiedDate { rule, .. } => {
                (Some(rule), None)
            }
            Extension::NotAllowed { .. } => (None, None),
        };
        match id {
            Some(id) => assert!(
                extension.contains(&format!("`{id}`")),
                "{}: {extension}",
                rule.id
            ),
            None => assert_eq!(extension, "none", "{}", rule.id),
        }
        let length = match period {
            Some(Period::CalendarMonths(n)) => Some(format!("{n} months")),
            Some(Period::CalendarDays(n)) => Some(format!("{n} days")),
            _ => None,
        };
        if let Some(length) = length {
            assert!(
                extension.replace("calendar ", "").contains(&length),
                "{}: the doc says {extension:?}, the code counts {length}",
                rule.id
            );
        }
    }
}
