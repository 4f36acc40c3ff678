//! Legal clocks: when a data-subject request falls due.
//!
//! Every jurisdiction's deadline is one row of [`RULES`], a static table. Each row names the
//! jurisdictions and request kinds it covers, the period it counts, the legal source it comes
//! from, and what an extension does. The functions below only look a row up and apply it, so a
//! later change that adds jurisdictions or holiday calendars adds rows (and a calendar step in
//! [`Period::apply`]), not new code paths.
//!
//! Days are counted from the **UTC calendar date** of receipt. Weekends and public holidays are
//! **not** applied yet: every period here is counted in calendar days or calendar months, and
//! each explanation says so. Where the law counts business days (Colombia), the row is labelled
//! as a calendar approximation.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use serde::Serialize;

/// A due date and what produced it, shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Due {
    /// The last day on which the answer is on time (inclusive).
    pub date: NaiveDate,
    /// Stable name of the rule that produced the date, e.g. `"gdpr-art12-one-month"`.
    pub rule: &'static str,
    /// One or two sentences for the operator: the source, the count, and its caveats.
    pub explanation: String,
}

/// Why no due date could be computed. Each message is one line and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("unknown jurisdiction {0:?}: use one of US, US-CA, SG, DE, NL, CN, CO, AU, GB or another EU member state code")]
    UnknownJurisdiction(String),
    #[error("unknown request kind {0:?}: use one of access, rectification, erasure, portability, withdrawal, objection, restriction")]
    UnknownKind(String),
    #[error("extension not allowed in {jurisdiction} (rule {rule}): {reason}")]
    ExtensionNotAllowed {
        jurisdiction: String,
        rule: &'static str,
        reason: &'static str,
    },
    #[error("due date for a request received on {received} is outside the supported date range")]
    OutOfRange { received: NaiveDate },
}

/// The request kinds the clocks know (the rights of §8 of the privacy statement).
pub const REQUEST_KINDS: &[&str] = &[
    "access",
    "rectification",
    "erasure",
    "portability",
    "withdrawal",
    "objection",
    "restriction",
];

/// A length of time counted from the day of receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The same day-of-month `n` months later, or that month's last day (see [`add_months_clamped`]).
    CalendarMonths(u32),
    /// `n` calendar days later.
    CalendarDays(u64),
}

impl Period {
    /// Applies the period to the day of receipt. `None` only beyond chrono's date range.
    pub fn apply(self, received: NaiveDate) -> Option<NaiveDate> {
        match self {
            Period::CalendarMonths(n) => received.checked_add_months(Months::new(n)),
            Period::CalendarDays(n) => received.checked_add_days(Days::new(n)),
        }
    }

    fn describe(self) -> String {
        match self {
            Period::CalendarMonths(1) => "one calendar month".to_string(),
            Period::CalendarMonths(n) => format!("{n} calendar months"),
            Period::CalendarDays(1) => "one calendar day".to_string(),
            Period::CalendarDays(n) => format!("{n} calendar days"),
        }
    }
}

/// Which jurisdiction codes a rule row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jurisdictions {
    /// Exactly these codes.
    Codes(&'static [&'static str]),
    /// `US` and every `US-xx` subdivision not matched by an earlier row (e.g. `US-CA`).
    UsFederalOrOtherState,
}

impl Jurisdictions {
    fn matches(self, code: &str) -> bool {
        match self {
            Jurisdictions::Codes(codes) => codes.contains(&code),
            Jurisdictions::UsFederalOrOtherState => {
                code == "US"
                    || code
                        .strip_prefix("US-")
                        .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()))
            }
        }
    }
}

/// Which request kinds a rule row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kinds {
    Any,
    Only(&'static [&'static str]),
}

impl Kinds {
    fn matches(self, kind: &str) -> bool {
        match self {
            Kinds::Any => true,
            Kinds::Only(kinds) => kinds.contains(&kind),
        }
    }
}

/// What `extended_due` does under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The extended deadline is `total`, counted again from the day of receipt.
    Total {
        total: Period,
        rule: &'static str,
        source: &'static str,
        note: &'static str,
    },
    /// No extension exists; `reason` tells the operator what the law asks instead.
    NotAllowed { reason: &'static str },
}

/// One row of the rule table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub jurisdictions: Jurisdictions,
    pub kinds: Kinds,
    /// Stable rule name, reported as `due_rule`.
    pub rule: &'static str,
    /// Where the period comes from (statute, article, or "company policy").
    pub source: &'static str,
    pub period: Period,
    /// Caveat shown after the computation (approximations, policy vs law).
    pub note: &'static str,
    pub extension: Extension,
}

/// EU member states (ISO 3166-1 alpha-2, plus `EL`, the EU's own code for Greece).
pub const EU_MEMBER_STATES: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "EL", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

/// Alternative spellings accepted for a jurisdiction code (after ASCII upper-casing).
const ALIASES: &[(&str, &str)] = &[("UK", "GB")];

const NO_HOLIDAYS: &str =
    "Weekends and public holidays are not applied yet; the date is a plain calendar count.";

const GDPR_EXTENSION_NOTE: &str = "Art. 12(3) allows two further months for complex or numerous \
requests (three months from receipt in total); the person must be told of the extension and the \
reasons within the first month.";

/// The rule table. The first row whose jurisdictions and kinds match wins, so specific rows
/// (e.g. `US-CA`) come before general ones (`US` and other states).
///
/// Deadlines are inclusive: an answer sent on the due date is on time.
pub static RULES: &[Rule] = &[
    // --- EU and UK GDPR -----------------------------------------------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(EU_MEMBER_STATES),
        kinds: Kinds::Any,
        rule: "gdpr-art12-one-month",
        source: "GDPR (EU) 2016/679 Art. 12(3)",
        period: Period::CalendarMonths(1),
        note: NO_HOLIDAYS,
        extension: Extension::Total {
            total: Period::CalendarMonths(3),
            rule: "gdpr-art12-3-extension",
            source: "GDPR (EU) 2016/679 Art. 12(3)",
            note: GDPR_EXTENSION_NOTE,
        },
    },
    Rule {
        jurisdictions: Jurisdictions::Codes(&["GB"]),
        kinds: Kinds::Any,
        rule: "gdpr-art12-one-month",
        source: "UK GDPR Art. 12(3)",
        period: Period::CalendarMonths(1),
        note: NO_HOLIDAYS,
        extension: Extension::Total {
            total: Period::CalendarMonths(3),
            rule: "gdpr-art12-3-extension",
            source: "UK GDPR Art. 12(3)",
            note: GDPR_EXTENSION_NOTE,
        },
    },
    // --- United States ------------------------------------------------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(&["US-CA"]),
        kinds: Kinds::Any,
        rule: "ccpa-45-days",
        source: "CCPA, Cal. Civ. Code § 1798.130(a)(2)",
        period: Period::CalendarDays(45),
        note: "CCPA counts calendar days. (Opt-out requests under the CCPA regulations have \
shorter clocks, not modelled yet.)",
        extension: Extension::Total {
            total: Period::CalendarDays(90),
            rule: "ccpa-45-days-extension",
            source: "CCPA, Cal. Civ. Code § 1798.130(a)(2)",
            note: "The CCPA allows one extension of 45 more days when reasonably necessary; the \
consumer must be told within the first 45 days.",
        },
    },
    Rule {
        jurisdictions: Jurisdictions::UsFederalOrOtherState,
        kinds: Kinds::Any,
        rule: "company-policy",
        source: "company policy (no federal US deadline; mirrors the CCPA's 45 days)",
        period: Period::CalendarDays(45),
        note: "This is company policy, not a statutory deadline. Check whether the person's \
state has its own law.",
        extension: Extension::Total {
            total: Period::CalendarDays(90),
            rule: "company-policy-extension",
            source: "company policy (mirrors the CCPA's 45-day extension)",
            note: "Company policy allows one extension of 45 more days; tell the person within \
the first 45 days.",
        },
    },
    // --- Singapore ----------------------------------------------------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(&["SG"]),
        kinds: Kinds::Any,
        rule: "pdpa-30-days",
        source: "PDPA 2012 ss. 21-22; Personal Data Protection Regulations 2021 regs. 4-5",
        period: Period::CalendarDays(30),
        note: "PDPA asks for a response as soon as reasonably possible; 30 days is the point by \
which the individual must at least be told when they will get it.",
        extension: Extension::NotAllowed {
            reason: "PDPA has no extension; if the organisation cannot respond within 30 days it \
must tell the individual in writing, within those 30 days, the time by which it will respond. \
Record that date with the request instead.",
        },
    },
    // --- Australia ----------------------------------------------------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(&["AU"]),
        kinds: Kinds::Any,
        rule: "app12-reasonable-period-default-30",
        source: "Privacy Act 1988 (Cth), APP 12.4 / APP 13.5 (\"within a reasonable period\")",
        period: Period::CalendarDays(30),
        note: "The law says \"a reasonable period\"; 30 calendar days is the OAIC's guidance and \
our default.",
        extension: Extension::NotAllowed {
            reason: "the APPs have no formal extension; the 30-day default already is the \
reasonable period. If more time is genuinely needed, tell the individual why and when they will \
get a response, and record it with the request.",
        },
    },
    // --- Colombia (business days approximated as calendar days) -------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(&["CO"]),
        kinds: Kinds::Only(&["access"]),
        rule: "ley1581-art14-consulta-10-days-calendar-approximation",
        source: "Ley 1581 de 2012 Art. 14 (consultas: 10 días hábiles)",
        period: Period::CalendarDays(10),
        note: "The law counts business days; this counts calendar days (earlier, so never late) \
until business days arrive with the holiday calendars.",
        extension: Extension::Total {
            total: Period::CalendarDays(15),
            rule: "ley1581-art14-consulta-extension-calendar-approximation",
            source: "Ley 1581 de 2012 Art. 14 (5 more días hábiles)",
            note: "Art. 14 allows 5 more business days (counted here as calendar days); the \
person must be told the reasons and the new date before the first deadline.",
        },
    },
    Rule {
        jurisdictions: Jurisdictions::Codes(&["CO"]),
        kinds: Kinds::Any,
        rule: "ley1581-art15-reclamo-15-days-calendar-approximation",
        source: "Ley 1581 de 2012 Art. 15 (reclamos: 15 días hábiles)",
        period: Period::CalendarDays(15),
        note: "The law counts business days; this counts calendar days (earlier, so never late) \
until business days arrive with the holiday calendars.",
        extension: Extension::Total {
            total: Period::CalendarDays(23),
            rule: "ley1581-art15-reclamo-extension-calendar-approximation",
            source: "Ley 1581 de 2012 Art. 15 (8 more días hábiles)",
            note: "Art. 15 allows 8 more business days (counted here as calendar days); the \
person must be told the reasons and the new date before the first deadline.",
        },
    },
    // --- China --------------------------------------------------------------------------
    Rule {
        jurisdictions: Jurisdictions::Codes(&["CN"]),
        kinds: Kinds::Any,
        rule: "company-policy-pipl-art50",
        source:
            "company policy under PIPL Art. 50 (which requires timely handling, no fixed period)",
        period: Period::CalendarDays(30),
        note: "30 days is company policy, not law: PIPL Art. 50 sets no number of days.",
        extension: Extension::NotAllowed {
            reason: "PIPL Art. 50 requires timely handling and company policy grants no \
extension; if the request cannot be handled in time, tell the individual why and record it.",
        },
    },
];

/// Normalises a jurisdiction code: trimmed, ASCII upper case, aliases resolved.
fn canonical_jurisdiction(jurisdiction: &str) -> String {
    let code = jurisdiction.trim().to_ascii_uppercase();
    match ALIASES.iter().find(|(alias, _)| *alias == code) {
        Some((_, canonical)) => (*canonical).to_string(),
        None => code,
    }
}

/// Finds the rule that governs a request of `kind` in `jurisdiction`.
///
/// Jurisdiction codes are matched case-insensitively; `UK` is accepted for `GB`.
pub fn rule_for(jurisdiction: &str, kind: &str) -> Result<&'static Rule, ClockError> {
    let kind_norm = kind.trim().to_ascii_lowercase();
    if !REQUEST_KINDS.contains(&kind_norm.as_str()) {
        return Err(ClockError::UnknownKind(kind.to_string()));
    }
    let code = canonical_jurisdiction(jurisdiction);
    RULES
        .iter()
        .find(|r| r.jurisdictions.matches(&code) && r.kinds.matches(&kind_norm))
        .ok_or_else(|| ClockError::UnknownJurisdiction(jurisdiction.to_string()))
}

/// Whether any rule covers `jurisdiction`.
pub fn is_known_jurisdiction(jurisdiction: &str) -> bool {
    let code = canonical_jurisdiction(jurisdiction);
    RULES.iter().any(|r| r.jurisdictions.matches(&code))
}

fn explain(
    source: &str,
    period: Period,
    received: NaiveDate,
    due: NaiveDate,
    notes: &[&str],
) -> String {
    let mut text = format!(
        "{source}: {} from the day of receipt ({received}, UTC) gives {due}",
        period.describe()
    );
    if matches!(period, Period::CalendarMonths(_)) && due.day() != received.day() {
        // The same day-of-month does not exist there; the month's last day was used.
        text.push_str(&format!(
            " (day {} does not exist in that month, so its last day)",
            received.day()
        ));
    }
    text.push('.');
    for note in notes {
        if !note.is_empty() {
            text.push(' ');
            text.push_str(note);
        }
    }
    if !notes.contains(&NO_HOLIDAYS) {
        text.push(' ');
        text.push_str(NO_HOLIDAYS);
    }
    text
}

/// The due date of a request of `kind` (e.g. `"access"`) received at `received` in `jurisdiction`.
///
/// The count starts from the UTC calendar date of `received`.
pub fn due_date(
    jurisdiction: &str,
    kind: &str,
    received: DateTime<Utc>,
) -> Result<Due, ClockError> {
    let rule = rule_for(jurisdiction, kind)?;
    let day = received.date_naive();
    let date = rule
        .period
        .apply(day)
        .ok_or(ClockError::OutOfRange { received: day })?;
    Ok(Due {
        date,
        rule: rule.rule,
        explanation: explain(rule.source, rule.period, day, date, &[rule.note]),
    })
}

/// The due date after the extension the law allows, counted from the day of receipt.
///
/// Errors with [`ClockError::ExtensionNotAllowed`] where the jurisdiction has no extension;
/// the error's reason says what the law asks instead.
pub fn extended_due(
    jurisdiction: &str,
    kind: &str,
    received: DateTime<Utc>,
) -> Result<Due, ClockError> {
    let rule = rule_for(jurisdiction, kind)?;
    match rule.extension {
        Extension::NotAllowed { reason } => Err(ClockError::ExtensionNotAllowed {
            jurisdiction: canonical_jurisdiction(jurisdiction),
            rule: rule.rule,
            reason,
        }),
        Extension::Total {
            total,
            rule: ext_rule,
            source,
            note,
        } => {
            let day = received.date_naive();
            let date = total
                .apply(day)
                .ok_or(ClockError::OutOfRange { received: day })?;
            Ok(Due {
                date,
                rule: ext_rule,
                explanation: explain(source, total, day, date, &[note, rule.note]),
            })
        }
    }
}

/// The same day-of-month `months` later, or that month's last day when the day does not exist
/// there (2026-01-31 + 1 → 2026-02-28). Saturates at [`NaiveDate::MAX`] beyond chrono's range.
pub fn add_months_clamped(date: NaiveDate, months: u32) -> NaiveDate {
    date.checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn due(j: &str, kind: &str, received: &str) -> Due {
        due_date(j, kind, at(received)).unwrap()
    }

    #[test]
    fn gdpr_end_of_march_clamps_to_end_of_april() {
        let due = due("DE", "access", "2026-03-31T10:00:00Z");
        assert_eq!(due.date, d("2026-04-30"));
        assert_eq!(due.rule, "gdpr-art12-one-month");
        assert!(
            due.explanation.contains("Art. 12(3)"),
            "{}",
            due.explanation
        );
        assert!(
            due.explanation.contains("not applied yet"),
            "{}",
            due.explanation
        );
        assert!(due.explanation.contains("last day"), "{}", due.explanation);
    }

    #[test]
    fn gdpr_end_of_january_clamps_to_end_of_february() {
        assert_eq!(
            due("DE", "access", "2026-01-31T09:00:00Z").date,
            d("2026-02-28")
        );
        assert_eq!(
            due("NL", "erasure", "2026-01-31T09:00:00Z").date,
            d("2026-02-28")
        );
        assert_eq!(
            due("GB", "access", "2026-01-31T09:00:00Z").date,
            d("2026-02-28")
        );
    }

    #[test]
    fn gdpr_leap_year() {
        assert_eq!(
            due("DE", "access", "2028-01-31T12:00:00Z").date,
            d("2028-02-29")
        );
        assert_eq!(
            due("DE", "access", "2028-01-29T12:00:00Z").date,
            d("2028-02-29")
        );
    }

    #[test]
    fn gdpr_crosses_year() {
        let due = due("DE", "portability", "2026-12-15T08:00:00Z");
        assert_eq!(due.date, d("2027-01-15"));
        assert!(!due.explanation.contains("last day"), "{}", due.explanation);
    }

    #[test]
    fn gdpr_other_member_states_and_aliases() {
        for j in ["FR", "fr", " ie ", "EL", "GR", "UK", "gb"] {
            assert_eq!(
                due(j, "access", "2026-02-10T00:00:00Z").date,
                d("2026-03-10"),
                "{j}"
            );
        }
    }

    #[test]
    fn late_evening_receipt_uses_utc_date() {
        assert_eq!(
            due("DE", "access", "2026-01-31T23:30:00Z").date,
            d("2026-02-28")
        );
        // 23:30 in New York on 30 January is already 31 January in UTC.
        assert_eq!(
            due("DE", "access", "2026-01-30T23:30:00-05:00").date,
            d("2026-02-28")
        );
        // 00:30 in Berlin on 1 March is still 28 February in UTC.
        assert_eq!(
            due("DE", "access", "2026-03-01T00:30:00+01:00").date,
            d("2026-03-28")
        );
    }

    #[test]
    fn gdpr_extension_is_three_months_from_receipt() {
        let due = extended_due("DE", "access", at("2026-01-31T10:00:00Z")).unwrap();
        assert_eq!(due.date, d("2026-04-30"));
        assert_eq!(due.rule, "gdpr-art12-3-extension");
        let due = extended_due("GB", "erasure", at("2026-11-30T10:00:00Z")).unwrap();
        assert_eq!(due.date, d("2027-02-28"));
    }

    #[test]
    fn california_45_days_and_extension_90() {
        let due = due("US-CA", "access", "2026-01-01T12:00:00Z");
        assert_eq!(due.date, d("2026-02-15"));
        assert_eq!(due.rule, "ccpa-45-days");
        let ext = extended_due("US-CA", "access", at("2026-01-01T12:00:00Z")).unwrap();
        assert_eq!(ext.date, d("2026-04-01"));
    }

    #[test]
    fn us_other_states_are_company_policy() {
        let due1 = due("US", "erasure", "2026-01-01T00:00:00Z");
        assert_eq!(due1.date, d("2026-02-15"));
        assert_eq!(due1.rule, "company-policy");
        assert!(
            due1.explanation.contains("company policy"),
            "{}",
            due1.explanation
        );
        assert_eq!(
            due("US-NY", "erasure", "2026-01-01T00:00:00Z").rule,
            "company-policy"
        );
        assert_eq!(
            due("us-ca", "erasure", "2026-01-01T00:00:00Z").rule,
            "ccpa-45-days"
        );
    }

    #[test]
    fn singapore_australia_china() {
        let sg = due("SG", "access", "2026-01-01T00:00:00Z");
        assert_eq!((sg.date, sg.rule), (d("2026-01-31"), "pdpa-30-days"));
        let au = due("AU", "access", "2026-01-01T00:00:00Z");
        assert_eq!(
            (au.date, au.rule),
            (d("2026-01-31"), "app12-reasonable-period-default-30")
        );
        let cn = due("CN", "access", "2026-01-01T00:00:00Z");
        assert_eq!(
            (cn.date, cn.rule),
            (d("2026-01-31"), "company-policy-pipl-art50")
        );
        assert!(cn.explanation.contains("not law"), "{}", cn.explanation);
    }

    #[test]
    fn colombia_calendar_approximation() {
        let access = due("CO", "access", "2026-01-01T00:00:00Z");
        assert_eq!(access.date, d("2026-01-11"));
        assert!(
            access.rule.starts_with("ley1581-") && access.rule.ends_with("-calendar-approximation")
        );
        assert!(
            access.explanation.contains("business days"),
            "{}",
            access.explanation
        );
        let erasure = due("CO", "erasure", "2026-01-01T00:00:00Z");
        assert_eq!(erasure.date, d("2026-01-16"));
        assert_ne!(erasure.rule, access.rule);
    }

    #[test]
    fn unknown_jurisdiction_errors() {
        let err = due_date("XX", "access", at("2026-01-01T00:00:00Z")).unwrap_err();
        assert_eq!(err, ClockError::UnknownJurisdiction("XX".into()));
        assert!(due_date("", "access", at("2026-01-01T00:00:00Z")).is_err());
        assert!(due_date("US-CALIFORNIA", "access", at("2026-01-01T00:00:00Z")).is_err());
        assert!(!is_known_jurisdiction("XX"));
        assert!(is_known_jurisdiction("DE"));
    }

    #[test]
    fn unknown_kind_errors() {
        let err = due_date("DE", "complaint", at("2026-01-01T00:00:00Z")).unwrap_err();
        assert_eq!(err, ClockError::UnknownKind("complaint".into()));
    }

    #[test]
    fn singapore_extension_errors_with_explanation() {
        let err = extended_due("SG", "access", at("2026-01-01T00:00:00Z")).unwrap_err();
        match &err {
            ClockError::ExtensionNotAllowed {
                jurisdiction,
                rule,
                reason,
            } => {
                assert_eq!(jurisdiction, "SG");
                assert_eq!(*rule, "pdpa-30-days");
                assert!(reason.contains("time by which it will respond"), "{reason}");
            }
            other => panic!("expected ExtensionNotAllowed, got {other:?}"),
        }
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn every_kind_has_a_rule_in_every_office_jurisdiction() {
        let received = at("2026-05-31T12:00:00Z");
        for j in ["US", "US-CA", "SG", "DE", "NL", "CN", "CO", "AU", "GB"] {
            for kind in REQUEST_KINDS {
                let due = due_date(j, kind, received).unwrap();
                assert!(due.date > received.date_naive(), "{j} {kind}");
                match extended_due(j, kind, received) {
                    Ok(ext) => assert!(ext.date > due.date, "{j} {kind}"),
                    Err(ClockError::ExtensionNotAllowed { .. }) => {}
                    Err(e) => panic!("{j} {kind}: {e}"),
                }
            }
        }
    }

    #[test]
    fn add_months_clamped_cases() {
        assert_eq!(add_months_clamped(d("2026-01-31"), 1), d("2026-02-28"));
        assert_eq!(add_months_clamped(d("2026-03-31"), 1), d("2026-04-30"));
        assert_eq!(add_months_clamped(d("2028-01-31"), 1), d("2028-02-29"));
        assert_eq!(add_months_clamped(d("2026-12-15"), 1), d("2027-01-15"));
        assert_eq!(add_months_clamped(d("2026-01-31"), 3), d("2026-04-30"));
        assert_eq!(add_months_clamped(d("2026-05-17"), 0), d("2026-05-17"));
        assert_eq!(add_months_clamped(d("2026-05-17"), 24), d("2028-05-17"));
        assert_eq!(add_months_clamped(NaiveDate::MAX, 1), NaiveDate::MAX);
    }
}
