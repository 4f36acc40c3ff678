//! Legal clocks: when a data-subject request falls due, and why.
//!
//! Every deadline is one row of [`RULES`], a static table: which jurisdictions and request kinds
//! it covers, what it counts (calendar months, calendar days or business days), whether a
//! deadline on a non-working day moves to the next working day, what an extension does, and the
//! legal source. [`Clock`] looks a row up and applies it with the jurisdiction's holiday calendar
//! ([`crate::calendar`]); it never guesses: a jurisdiction without a calendar, or a date outside
//! the loaded years, is an error. docs/legal-clocks.md lists every row with its source.
//!
//! Days are counted from the **UTC calendar date** on which the clock starts (receipt, or for the
//! UK the day requested identity, clarification or fee arrives). The clock reads no time itself:
//! every instant is an argument, so the table is tested deterministically.

use crate::calendar::{Calendar, Calendars, DayKind};
use chrono::{DateTime, Days, Months, NaiveDate, Utc};

/// The default length of a company-policy period (China, US outside California), in days.
pub const COMPANY_POLICY_DAYS_DEFAULT: u32 = 30;
/// Longest company-policy period accepted from config: the privacy statement §8.4 promises an
/// answer within one month of receipt wherever the person is, and no month is longer than 31
/// days (it accepted 365; found by an exploratory session).
pub const COMPANY_POLICY_DAYS_MAX: u32 = 31;
/// The furthest an extension may reach where the deadline is the company's own (§8.4: "two (2)
/// months from the date of receipt"), in calendar months from the clock's start.
pub const STATEMENT_EXTENSION_MONTHS: u32 = 2;
/// Furthest an operator-notified extension date may lie beyond the original due date.
pub const NOTIFIED_EXTENSION_DAYS_MAX: u64 = 366;

/// EU member states: GDPR applies with the member state's own holiday calendar.
pub const EU_MEMBER_STATES: &[&str] = &[
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT",
    "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// A due date and what produced it, shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The last day on which the answer is on time (inclusive).
    pub date: NaiveDate,
    /// Stable name of the rule that produced the date, e.g. `gdpr-art12-one-month`.
    pub rule: &'static str,
    /// The reasoning, step by step: source, count, and any move off a non-working day.
    pub explanation: String,
    /// A second deadline some laws set: confirm receipt by this day (CCPA: 10 business days).
    pub confirm_by: Option<NaiveDate>,
}

/// Why no due date could be computed. One line each, saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("unknown jurisdiction {0:?}: use an ISO code such as DE, NL, GB, US, US-CA, SG, CN, CO or AU")]
    UnknownJurisdiction(String),
    #[error("no holiday calendar for {jurisdiction}: add {jurisdiction}.txt to the [clock] calendar_dir (see docs/legal-clocks.md)")]
    NoCalendar { jurisdiction: String },
    #[error("the {jurisdiction} holiday calendar ({origin}) covers {first}-{last}, not {date}; add that year to it rather than guess")]
    OutsideCalendar {
        jurisdiction: String,
        origin: String,
        date: NaiveDate,
        first: i32,
        last: i32,
    },
    #[error("extension not allowed under {rule}: {reason}")]
    ExtensionNotAllowed {
        rule: &'static str,
        reason: &'static str,
    },
    #[error("too late to extend: the extension must be announced by {due} (rule {rule}), and the notice is dated {notice}")]
    ExtensionWindowPassed {
        rule: &'static str,
        due: NaiveDate,
        notice: NaiveDate,
    },
    #[error(
        "rule {rule} extends to the date the person was told: give it with --until YYYY-MM-DD"
    )]
    UntilRequired { rule: &'static str },
    #[error("rule {rule} fixes the extended date itself; drop --until")]
    UntilNotAllowed { rule: &'static str },
    #[error("--until {until} must be after the current due date {due} and at most {NOTIFIED_EXTENSION_DAYS_MAX} days beyond it")]
    UntilOutOfRange { until: NaiveDate, due: NaiveDate },
    #[error("--until {until} is later than {latest}, two calendar months after receipt: under {rule} the deadline is the company's own, and its privacy statement §8.4 promises an answer within two months of receipt at most, extension included")]
    UntilBeyondStatement {
        until: NaiveDate,
        latest: NaiveDate,
        rule: &'static str,
    },
    #[error("date arithmetic overflow from {0}")]
    OutOfRange(NaiveDate),
}

/// A length of time counted from the day the clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The same day-of-month `n` months later, or that month's last day when it has none.
    CalendarMonths(u32),
    /// `n` calendar days later.
    CalendarDays(u32),
    /// The `n`-th working day after the start day (weekends and holidays skipped).
    BusinessDays(u32),
    /// `[clock] company_policy_days` calendar days.
    CompanyPolicyDays,
}

/// Whose word the rule is: shown in every explanation so policy is never mistaken for law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    Law,
    /// The law says "reasonable period"; the regulator's guidance gives the number.
    Guidance,
    CompanyPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The extended deadline counts `period` from the clock's start (privacy statement §8.4: two
    /// months in all).
    FromStart {
        period: Period,
        rule: &'static str,
        source: &'static str,
    },
    /// The extended deadline adds `period` after the original deadline (Colombia).
    AfterDue {
        period: Period,
        rule: &'static str,
        source: &'static str,
    },
    /// The law fixes no length: the deadline becomes the date the person was told in writing.
    NotifiedDate {
        rule: &'static str,
        source: &'static str,
    },
    NotAllowed {
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jurisdictions {
    Codes(&'static [&'static str]),
    EuMemberStates,
    /// `US` and every `US-xx` not matched by an earlier row.
    UsOther,
}

impl Jurisdictions {
    fn matches(self, code: &str) -> bool {
        match self {
            Jurisdictions::Codes(codes) => codes.contains(&code),
            Jurisdictions::EuMemberStates => EU_MEMBER_STATES.contains(&code),
            Jurisdictions::UsOther => {
                code == "US"
                    || code
                        .strip_prefix("US-")
                        .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()))
            }
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    pub jurisdictions: Jurisdictions,
    /// `None`: every kind.
    pub kinds: Option<&'static [&'static str]>,
    pub period: Period,
    /// A deadline on a weekend or holiday moves to the next working day.
    pub roll_to_working_day: bool,
    pub extension: Extension,
    /// Confirm receipt within this period (CCPA).
    pub confirm: Option<Period>,
    /// The clock restarts when requested identity, clarification or fee is received (UK).
    pub restart_on_identity: bool,
    pub authority: Authority,
    pub source: &'static str,
}

/// The extension the company's privacy statement promises (§8.4: "may be extended to two (2)
/// months from the date of receipt", the person told). Under GDPR and UK GDPR it replaces Art.
/// 12(3)'s two *further* months (three in all): the company promised less, and its promise
/// binds it (found by an exploratory session; the extension was 3 months from receipt).
const STATEMENT_EXTENSION: &str = "privacy statement §8.4: a complex request or many requests may extend the answer to two months from receipt, the person told within the first period (stricter than the law's extension, so the company's promise governs)";

/// The table. The first row matching (jurisdiction, kind) applies.
pub static RULES: &[Rule] = &[
    Rule {
        id: "uk-gdpr-art12-one-month",
        jurisdictions: Jurisdictions::Codes(&["GB"]),
        kinds: None,
        period: Period::CalendarMonths(1),
        roll_to_working_day: true,
        extension: Extension::FromStart {
            period: Period::CalendarMonths(2),
            rule: "uk-gdpr-art12-3-extension",
            source: STATEMENT_EXTENSION,
        },
        confirm: None,
        restart_on_identity: true,
        authority: Authority::Law,
        source: "UK GDPR Art. 12(3) and the ICO's right-of-access guidance (a deadline on a weekend or bank holiday moves to the next working day; the clock restarts when requested ID, clarification or fee arrives)",
    },
    Rule {
        id: "gdpr-art12-one-month",
        jurisdictions: Jurisdictions::EuMemberStates,
        kinds: None,
        period: Period::CalendarMonths(1),
        roll_to_working_day: true,
        extension: Extension::FromStart {
            period: Period::CalendarMonths(2),
            rule: "gdpr-art12-3-extension",
            source: STATEMENT_EXTENSION,
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Law,
        source: "GDPR (EU) 2016/679 Art. 12(3), counted per Regulation (EEC, Euratom) 1182/71 Art. 3 (a period ending on a Saturday, Sunday or public holiday ends with the next working day)",
    },
    Rule {
        id: "ccpa-opt-out-15-business-days",
        jurisdictions: Jurisdictions::Codes(&["US-CA"]),
        kinds: Some(&["opt_out"]),
        period: Period::BusinessDays(15),
        roll_to_working_day: false,
        extension: Extension::NotAllowed {
            reason: "CCPA regulations require opt-outs of sale or sharing to be acted on within 15 business days, with no extension",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Law,
        source: "Cal. Code Regs. tit. 11 § 7026(f) (opt-out of sale/sharing within 15 business days)",
    },
    Rule {
        id: "ccpa-45-days",
        jurisdictions: Jurisdictions::Codes(&["US-CA"]),
        kinds: None,
        period: Period::CalendarDays(45),
        roll_to_working_day: false,
        extension: Extension::FromStart {
            period: Period::CalendarDays(90),
            rule: "ccpa-45-day-extension",
            source: "Cal. Civ. Code § 1798.130(a)(2)(B); Cal. Code Regs. tit. 11 § 7021(b): once, by 45 more days, with notice and reasons within the first 45",
        },
        confirm: Some(Period::BusinessDays(10)),
        restart_on_identity: false,
        authority: Authority::Law,
        source: "Cal. Civ. Code § 1798.130(a)(2); Cal. Code Regs. tit. 11 § 7021 (respond within 45 calendar days; confirm receipt within 10 business days)",
    },
    // No general federal deadline: the company's own, `[clock] company_policy_days` as in China
    // (it was 45 days, 90 extended, "modelled on the CCPA", while the privacy statement §8.4
    // promises one month, two at most, and README named this period for the US; found by an
    // exploratory session). The extension is the statement's two months from receipt.
    Rule {
        id: "us-company-policy",
        jurisdictions: Jurisdictions::UsOther,
        kinds: None,
        period: Period::CompanyPolicyDays,
        roll_to_working_day: false,
        extension: Extension::FromStart {
            period: Period::CalendarMonths(2),
            rule: "us-company-policy-extension",
            source: STATEMENT_EXTENSION,
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::CompanyPolicy,
        source: "company policy for US residents outside California: no general federal deadline; the company answers within [clock] company_policy_days (privacy statement §8.4: one month)",
    },
    Rule {
        id: "pdpa-access-30-days",
        jurisdictions: Jurisdictions::Codes(&["SG"]),
        kinds: Some(&["access"]),
        period: Period::CalendarDays(30),
        roll_to_working_day: false,
        extension: Extension::NotifiedDate {
            rule: "pdpa-notified-date",
            source: "PDP Regulations 2021 reg. 5(2): if access cannot be given within 30 days, tell the individual in writing when it will be",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Law,
        source: "PDPA 2012 s. 21 and PDP Regulations 2021 reg. 5 (access as soon as reasonably possible, within 30 days)",
    },
    Rule {
        id: "pdpa-company-30-days",
        jurisdictions: Jurisdictions::Codes(&["SG"]),
        kinds: None,
        period: Period::CalendarDays(30),
        roll_to_working_day: false,
        extension: Extension::NotifiedDate {
            rule: "pdpa-notified-date",
            source: "company policy: the individual is told in writing when the answer will come",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::CompanyPolicy,
        source: "PDPA 2012 s. 22 (correction 'as soon as practicable'); the company answers within 30 days like access requests",
    },
    Rule {
        id: "app12-reasonable-period-30-days",
        jurisdictions: Jurisdictions::Codes(&["AU"]),
        kinds: None,
        period: Period::CalendarDays(30),
        roll_to_working_day: false,
        extension: Extension::NotifiedDate {
            rule: "app12-notified-date",
            source: "APP 12.4 sets a reasonable period; beyond 30 days the individual is told when the answer will come",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Guidance,
        source: "Privacy Act 1988 (Cth) APP 12.4(a)(ii) 'within a reasonable period'; OAIC APP guidelines ch. 12: generally 30 calendar days",
    },
    Rule {
        id: "ley1581-consulta-10-business-days",
        jurisdictions: Jurisdictions::Codes(&["CO"]),
        kinds: Some(&["access", "portability"]),
        period: Period::BusinessDays(10),
        roll_to_working_day: false,
        extension: Extension::AfterDue {
            period: Period::BusinessDays(5),
            rule: "ley1581-consulta-extension",
            source: "Ley 1581 de 2012 art. 14: 5 more business days, telling the person the reasons and the new date before the first term ends",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Law,
        source: "Ley 1581 de 2012 art. 14 (consultas: 10 business days from receipt)",
    },
    Rule {
        id: "ley1581-reclamo-15-business-days",
        jurisdictions: Jurisdictions::Codes(&["CO"]),
        kinds: None,
        period: Period::BusinessDays(15),
        roll_to_working_day: false,
        extension: Extension::AfterDue {
            period: Period::BusinessDays(8),
            rule: "ley1581-reclamo-extension",
            source: "Ley 1581 de 2012 art. 15: 8 more business days, telling the person the reasons and the new date before the first term ends",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::Law,
        source: "Ley 1581 de 2012 art. 15 (reclamos: 15 business days from receipt)",
    },
    Rule {
        id: "pipl-company-policy",
        jurisdictions: Jurisdictions::Codes(&["CN"]),
        kinds: None,
        period: Period::CompanyPolicyDays,
        roll_to_working_day: false,
        extension: Extension::NotifiedDate {
            rule: "pipl-company-policy-notified-date",
            source: "company policy: the person is told when the answer will come",
        },
        confirm: None,
        restart_on_identity: false,
        authority: Authority::CompanyPolicy,
        source: "PIPL art. 50 requires timely handling but sets no period; this is the company's policy ([clock] company_policy_days), not law",
    },
];

/// Normalises a jurisdiction code: upper case, `UK` read as `GB`.
pub fn normalise_jurisdiction(code: &str) -> String {
    let upper = code.trim().to_ascii_uppercase();
    if upper == "UK" {
        "GB".into()
    } else {
        upper
    }
}

pub fn rule_for(jurisdiction: &str, kind: &str) -> Result<&'static Rule, ClockError> {
    let j = normalise_jurisdiction(jurisdiction);
    RULES
        .iter()
        .find(|r| r.jurisdictions.matches(&j) && r.kinds.is_none_or(|k| k.contains(&kind)))
        .ok_or(ClockError::UnknownJurisdiction(jurisdiction.to_string()))
}

/// The legal clocks with the calendars and policy in force.
#[derive(Debug, Clone)]
pub struct Clock {
    calendars: Calendars,
    company_policy_days: u32,
}

impl Clock {
    pub fn new(calendars: Calendars, company_policy_days: u32) -> Clock {
        debug_assert!(
            (1..=COMPANY_POLICY_DAYS_MAX).contains(&company_policy_days),
            "config validation bounds the policy period"
        );
        Clock {
            calendars,
            company_policy_days,
        }
    }

    pub fn builtin() -> Clock {
        Clock::new(Calendars::builtin(), COMPANY_POLICY_DAYS_DEFAULT)
    }

    pub fn calendars(&self) -> &Calendars {
        &self.calendars
    }

    /// The deadline for a request of `kind` under `jurisdiction` whose clock starts at `start`.
    pub fn due(
        &self,
        jurisdiction: &str,
        kind: &str,
        start: DateTime<Utc>,
    ) -> Result<Due, ClockError> {
        let j = normalise_jurisdiction(jurisdiction);
        let rule = rule_for(&j, kind)?;
        let day = start.date_naive();
        let mut steps = Vec::new();
        let date = self.count(&j, rule.period, day, rule.roll_to_working_day, &mut steps)?;
        let confirm_by = match rule.confirm {
            Some(p) => Some(self.count(&j, p, day, false, &mut Vec::new())?),
            None => None,
        };
        let mut explanation = format!("{}: {}", rule.source, steps.join("; "));
        if let Some(c) = confirm_by {
            explanation += &format!("; confirm receipt by {c}");
        }
        explanation += authority_note(rule.authority);
        Ok(Due {
            date,
            rule: rule.id,
            explanation,
            confirm_by,
        })
    }

    /// The deadline after an extension announced at `notice`. `start` is when the clock started,
    /// `current_due` the deadline being extended; `until` is the date told to the person, for rules
    /// whose extension is whatever date was notified.
    pub fn extended(
        &self,
        jurisdiction: &str,
        kind: &str,
        start: DateTime<Utc>,
        current_due: NaiveDate,
        notice: DateTime<Utc>,
        until: Option<NaiveDate>,
    ) -> Result<Due, ClockError> {
        let j = normalise_jurisdiction(jurisdiction);
        let rule = rule_for(&j, kind)?;
        let (rule_id, source) = match rule.extension {
            Extension::NotAllowed { reason } => {
                return Err(ClockError::ExtensionNotAllowed {
                    rule: rule.id,
                    reason,
                })
            }
            Extension::FromStart { rule, source, .. }
            | Extension::AfterDue { rule, source, .. }
            | Extension::NotifiedDate { rule, source } => (rule, source),
        };
        // Every extension here must be announced within the period it extends.
        if notice.date_naive() > current_due {
            return Err(ClockError::ExtensionWindowPassed {
                rule: rule.id,
                due: current_due,
                notice: notice.date_naive(),
            });
        }
        let mut steps = Vec::new();
        let date = match rule.extension {
            Extension::FromStart { period, .. } => {
                if until.is_some() {
                    return Err(ClockError::UntilNotAllowed { rule: rule_id });
                }
                self.count(
                    &j,
                    period,
                    start.date_naive(),
                    rule.roll_to_working_day,
                    &mut steps,
                )?
            }
            Extension::AfterDue { period, .. } => {
                if until.is_some() {
                    return Err(ClockError::UntilNotAllowed { rule: rule_id });
                }
                self.count(&j, period, current_due, false, &mut steps)?
            }
            Extension::NotifiedDate { .. } => {
                let until = until.ok_or(ClockError::UntilRequired { rule: rule_id })?;
                let latest = current_due
                    .checked_add_days(Days::new(NOTIFIED_EXTENSION_DAYS_MAX))
                    .ok_or(ClockError::OutOfRange(current_due))?;
                if until <= current_due || until > latest {
                    return Err(ClockError::UntilOutOfRange {
                        until,
                        due: current_due,
                    });
                }
                // Where the deadline is the company's own (no law sets one), its privacy
                // statement is the only limit, and it says two months from receipt (§8.4); it
                // accepted up to 366 days (found by an exploratory session). Statutory notified
                // dates (PDPA s. 21 access, AU APP 12) keep the law's open-ended rule.
                if rule.authority == Authority::CompanyPolicy {
                    let start = start.date_naive();
                    let latest = start
                        .checked_add_months(Months::new(STATEMENT_EXTENSION_MONTHS))
                        .ok_or(ClockError::OutOfRange(start))?;
                    if until > latest {
                        return Err(ClockError::UntilBeyondStatement {
                            until,
                            latest,
                            rule: rule.id,
                        });
                    }
                }
                steps.push(format!("the person was told {until}"));
                until
            }
            Extension::NotAllowed { .. } => unreachable!("returned above"),
        };
        if date <= current_due {
            // `[clock] company_policy_days` may reach past the statement's two months already.
            return Err(ClockError::ExtensionNotAllowed {
                rule: rule.id,
                reason: "the deadline already lies at or beyond the extended period's end (two months from receipt, privacy statement §8.4)",
            });
        }
        Ok(Due {
            date,
            rule: rule_id,
            explanation: format!(
                "{source}: {} (announced {}, before {current_due}){}",
                steps.join("; "),
                notice.date_naive(),
                authority_note(rule.authority)
            ),
            confirm_by: None,
        })
    }

    fn calendar(&self, jurisdiction: &str) -> Result<&Calendar, ClockError> {
        self.calendars
            .get(jurisdiction)
            .ok_or_else(|| ClockError::NoCalendar {
                jurisdiction: jurisdiction.to_string(),
            })
    }

    fn day_kind<'c>(&self, cal: &'c Calendar, d: NaiveDate) -> Result<DayKind<'c>, ClockError> {
        cal.day(d).ok_or_else(|| {
            let (first, last) = cal.years();
            ClockError::OutsideCalendar {
                jurisdiction: cal.jurisdiction().to_string(),
                origin: cal.origin().to_string(),
                date: d,
                first,
                last,
            }
        })
    }

    /// Applies `period` from `start`, then (if asked) moves off non-working days, recording each
    /// step for the explanation.
    fn count(
        &self,
        jurisdiction: &str,
        period: Period,
        start: NaiveDate,
        roll: bool,
        steps: &mut Vec<String>,
    ) -> Result<NaiveDate, ClockError> {
        let overflow = || ClockError::OutOfRange(start);
        let mut date = match period {
            Period::CalendarMonths(n) => {
                let d = start
                    .checked_add_months(Months::new(n))
                    .ok_or_else(overflow)?;
                let what = if n == 1 {
                    "one calendar month".to_string()
                } else {
                    format!("{n} calendar months")
                };
                if d.format("%d").to_string() != start.format("%d").to_string() {
                    steps.push(format!(
                        "{what} from {start} gives {d} (that month has no day {}, so its last day)",
                        start.format("%-d")
                    ));
                } else {
                    steps.push(format!("{what} from {start} gives {d}"));
                }
                d
            }
            Period::CalendarDays(n) => {
                let d = start
                    .checked_add_days(Days::new(u64::from(n)))
                    .ok_or_else(overflow)?;
                steps.push(format!("{n} calendar days from {start} gives {d}"));
                d
            }
            Period::CompanyPolicyDays => {
                let n = self.company_policy_days;
                let d = start
                    .checked_add_days(Days::new(u64::from(n)))
                    .ok_or_else(overflow)?;
                steps.push(format!(
                    "{n} calendar days (company policy) from {start} gives {d}"
                ));
                d
            }
            Period::BusinessDays(n) => {
                let cal = self.calendar(jurisdiction)?;
                let mut d = start;
                let mut counted = 0;
                let mut skipped = Vec::new();
                while counted < n {
                    d = d.succ_opt().ok_or_else(overflow)?;
                    match self.day_kind(cal, d)? {
                        DayKind::Working => counted += 1,
                        DayKind::Holiday(name) => skipped.push(format!("{d} {name}")),
                        DayKind::Weekend(_) => {}
                    }
                }
                let holidays = if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" and the holidays {}", skipped.join(", "))
                };
                steps.push(format!(
                    "{n} business days after {start}, skipping weekends{holidays}, gives {d}"
                ));
                d
            }
        };
        if roll {
            let cal = self.calendar(jurisdiction)?;
            let original = date;
            let mut why = Vec::new();
            loop {
                match self.day_kind(cal, date)? {
                    DayKind::Working => break,
                    DayKind::Weekend(_) => why.push(format!("{date} is a {}", date.format("%A"))),
                    DayKind::Holiday(name) => why.push(format!("{date} is {name}")),
                }
                date = date.succ_opt().ok_or_else(overflow)?;
            }
            if date != original {
                steps.push(format!(
                    "{}, so the next working day {date}",
                    why.join(", ")
                ));
            } else {
                steps.push(format!("{date} is a working day in {jurisdiction}"));
            }
        }
        Ok(date)
    }
}

fn authority_note(a: Authority) -> &'static str {
    match a {
        Authority::Law => "",
        Authority::Guidance => {
            " (the number is the regulator's guidance; the law says a reasonable period)"
        }
        Authority::CompanyPolicy => " (company policy, not a statutory deadline)",
    }
}

/// Whether the clock restarts on receipt of requested identity, clarification or fee.
pub fn restarts_on_identity(jurisdiction: &str, kind: &str) -> bool {
    rule_for(jurisdiction, kind).is_ok_and(|r| r.restart_on_identity)
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

    #[test]
    fn every_row_is_reachable_and_named_uniquely() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "rule ids are unique");
        for r in RULES {
            assert!(!r.source.is_empty(), "{} names its source", r.id);
        }
    }

    #[test]
    fn explanations_show_the_reasoning() {
        let c = Clock::builtin();
        let due = c.due("GB", "access", at("2026-01-31T10:00:00Z")).unwrap();
        assert_eq!(due.date, d("2026-03-02"), "2026-02-28 is a Saturday");
        assert!(due.explanation.contains("Saturday"), "{}", due.explanation);
        assert!(due.explanation.contains("last day"), "{}", due.explanation);
        let cn = c.due("CN", "access", at("2026-03-01T00:00:00Z")).unwrap();
        assert!(
            cn.explanation.contains("company policy"),
            "{}",
            cn.explanation
        );
    }

    #[test]
    fn policy_days_come_from_config() {
        let c = Clock::new(Calendars::builtin(), 15);
        assert_eq!(
            c.due("CN", "access", at("2026-03-01T00:00:00Z"))
                .unwrap()
                .date,
            d("2026-03-16")
        );
    }

    /// The US outside California follows `[clock] company_policy_days` like China (it had 45
    /// days of its own, 90 extended); its extension is the statement's two months from receipt,
    /// refused where the configured period reaches that far already.
    #[test]
    fn us_outside_california_follows_the_company_policy_days() {
        let c = Clock::new(Calendars::builtin(), 15);
        for j in ["US", "US-NY", "us-tx"] {
            let due = c.due(j, "access", at("2026-03-01T00:00:00Z")).unwrap();
            assert_eq!((due.date, due.rule), (d("2026-03-16"), "us-company-policy"));
        }
        let ext = c
            .extended(
                "US",
                "access",
                at("2026-03-01T00:00:00Z"),
                d("2026-03-16"),
                at("2026-03-10T00:00:00Z"),
                None,
            )
            .unwrap();
        assert_eq!(
            (ext.date, ext.rule),
            (d("2026-05-01"), "us-company-policy-extension")
        );
        assert!(ext.explanation.contains("§8.4"), "{}", ext.explanation);
        // Config no longer accepts a period this long (at most 31 days, §8.4); the check stays
        // for a clock built otherwise.
        let long = Clock {
            calendars: Calendars::builtin(),
            company_policy_days: 90,
        };
        let e = long
            .extended(
                "US",
                "access",
                at("2026-03-01T00:00:00Z"),
                d("2026-05-30"),
                at("2026-03-10T00:00:00Z"),
                None,
            )
            .unwrap_err();
        assert!(
            matches!(e, ClockError::ExtensionNotAllowed { .. }) && e.to_string().contains("§8.4"),
            "{e}"
        );
    }

    /// Where the deadline is company policy (CN, SG outside access), a notified extension date
    /// may lie at most two calendar months after receipt (§8.4); it accepted 366 days. The
    /// statutory notified dates (SG access, AU) keep the wider bound.
    #[test]
    fn company_policy_extensions_end_two_months_after_receipt() {
        let c = Clock::builtin();
        let received = at("2026-03-01T10:00:00Z");
        let extend = |j: &str, kind: &str, until: &str| {
            let due = c.due(j, kind, received).unwrap().date;
            c.extended(j, kind, received, due, received, Some(d(until)))
        };
        for (j, kind) in [("CN", "access"), ("SG", "erasure")] {
            assert_eq!(extend(j, kind, "2026-05-01").unwrap().date, d("2026-05-01"));
            let e = extend(j, kind, "2026-05-02").unwrap_err();
            assert!(
                matches!(e, ClockError::UntilBeyondStatement { .. })
                    && e.to_string().contains("privacy statement §8.4"),
                "{j} {kind}: {e}"
            );
        }
        for (j, kind) in [("SG", "access"), ("AU", "access")] {
            assert_eq!(extend(j, kind, "2026-09-01").unwrap().date, d("2026-09-01"));
        }
    }

    #[test]
    fn unknown_jurisdictions_and_missing_calendars_are_errors() {
        let c = Clock::builtin();
        assert!(matches!(
            c.due("XX", "access", at("2026-03-01T00:00:00Z")),
            Err(ClockError::UnknownJurisdiction(_))
        ));
        assert!(matches!(
            c.due("FR", "access", at("2026-03-01T00:00:00Z")),
            Err(ClockError::NoCalendar { .. })
        ));
        assert!(matches!(
            c.due("DE", "access", at("2028-12-15T00:00:00Z")),
            Err(ClockError::OutsideCalendar { .. })
        ));
        assert_eq!(
            c.due("uk", "access", at("2026-03-31T09:00:00Z"))
                .unwrap()
                .rule,
            "uk-gdpr-art12-one-month"
        );
    }
}
