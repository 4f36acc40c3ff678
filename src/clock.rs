//! Legal clocks: when a data-subject request falls due, and why.
//!
//! Every deadline is one row of [`RULES`], a static table: which jurisdictions and request kinds
//! it covers, what it counts (calendar months, calendar days or business days), whether a
//! deadline on a non-working day moves to the next working day, what an extension does, and the
//! legal source. [`Clock`] looks a row up and applies it with the jurisdiction's holiday calendar
//! ([`crate::calendar`]); it never guesses: a jurisdiction without a calendar, or a date outside
//! the loaded years, is an error. docs/legal-clocks.md lists every row with its source.
//!
//! Days are counted from the **local calendar date**, in the jurisdiction's time zone
//! ([`ZONES`], else the office's own, `[clock] time_zone`), on which the clock starts (receipt,
//! or for the UK the day requested identity, clarification or fee arrives); "today" for overdue
//! requests is that zone's date too. They counted from the UTC date: a request received at 20:00
//! in California (04:00 UTC the next day) was due a day late. The clock reads no time itself:
//! every instant is an argument, so the table is tested deterministically.

use crate::calendar::{Calendar, Calendars, DayKind};
use chrono::{DateTime, Days, Months, NaiveDate, Utc};
use chrono_tz::Tz;

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

/// The time zone whose calendar date a jurisdiction's clocks count from, one per jurisdiction
/// that lies in one zone. A jurisdiction spanning several zones (US, other US-xx, AU) or not
/// listed uses the office's own zone ([`Clock::office_zone`], `[clock] time_zone`).
pub static ZONES: &[(&str, Tz)] = &[
    ("GB", Tz::Europe__London),
    ("DE", Tz::Europe__Berlin),
    ("NL", Tz::Europe__Amsterdam),
    ("SG", Tz::Asia__Singapore),
    ("CN", Tz::Asia__Shanghai),
    ("CO", Tz::America__Bogota),
    ("US-CA", Tz::America__Los_Angeles),
];

/// The zone of a jurisdiction in [`ZONES`], if it has one of its own.
pub fn jurisdiction_zone(jurisdiction: &str) -> Option<Tz> {
    let j = normalise_jurisdiction(jurisdiction);
    ZONES.iter().find(|(code, _)| *code == j).map(|(_, z)| *z)
}

/// The default `[clock] time_zone` of an office in `office_jurisdiction`: its zone in [`ZONES`],
/// else America/New_York for the US (and any other US-xx), Australia/Sydney for AU, else UTC.
pub fn office_zone_default(office_jurisdiction: &str) -> Tz {
    let j = normalise_jurisdiction(office_jurisdiction);
    if let Some(z) = jurisdiction_zone(&j) {
        z
    } else if Jurisdictions::UsOther.matches(&j) {
        Tz::America__New_York
    } else if j == "AU" {
        Tz::Australia__Sydney
    } else {
        Tz::UTC
    }
}

/// Parses `[clock] time_zone`: an IANA zone name such as `America/New_York`.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!(
            "clock.time_zone = {name:?} is not an IANA time zone name such as \"America/New_York\" or \"Australia/Sydney\" (docs/legal-clocks.md)"
        )
    })
}

/// The zone a request under `jurisdiction` counts in at an office whose own zone is
/// `office_zone`.
pub fn zone_for(jurisdiction: &str, office_zone: Tz) -> Tz {
    jurisdiction_zone(jurisdiction).unwrap_or(office_zone)
}

/// The calendar date in `zone` at the instant `at`.
pub fn local_date(zone: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&zone).date_naive()
}

/// The earliest and latest calendar date anywhere on Earth at `at` (zones run from UTC-12 to
/// UTC+14): a search of the due index by "today" widens its bounds to these, then takes each
/// request by its own jurisdiction's date.
pub fn local_dates_anywhere(at: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let utc = at.date_naive();
    (utc.pred_opt().unwrap_or(utc), utc.succ_opt().unwrap_or(utc))
}

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
    /// The office's own zone (`[clock] time_zone`), for jurisdictions without one in [`ZONES`].
    office_zone: Tz,
}

impl Clock {
    pub fn new(calendars: Calendars, company_policy_days: u32, office_zone: Tz) -> Clock {
        debug_assert!(
            (1..=COMPANY_POLICY_DAYS_MAX).contains(&company_policy_days),
            "config validation bounds the policy period"
        );
        Clock {
            calendars,
            company_policy_days,
            office_zone,
        }
    }

    /// The built-in calendars and policy, at an office in UTC.
    pub fn builtin() -> Clock {
        Clock::new(Calendars::builtin(), COMPANY_POLICY_DAYS_DEFAULT, Tz::UTC)
    }

    pub fn calendars(&self) -> &Calendars {
        &self.calendars
    }

    /// The office's own zone, for jurisdictions without one in [`ZONES`].
    pub fn office_zone(&self) -> Tz {
        self.office_zone
    }

    /// The zone `jurisdiction`'s clocks count in: its own in [`ZONES`], else the office's.
    pub fn zone(&self, jurisdiction: &str) -> Tz {
        zone_for(jurisdiction, self.office_zone)
    }

    /// The legal date under `jurisdiction` at the instant `at`: its calendar date in the
    /// jurisdiction's zone (receipt, notice, "today").
    pub fn local_date(&self, jurisdiction: &str, at: DateTime<Utc>) -> NaiveDate {
        local_date(self.zone(jurisdiction), at)
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
        let zone = self.zone(&j);
        let local = start.with_timezone(&zone);
        let day = local.date_naive();
        let mut steps = vec![if day == start.date_naive() {
            format!("received {} {zone}", local.format("%Y-%m-%d %H:%M"))
        } else {
            format!(
                "received {} {zone} ({} UTC), so days count from {day}, the date there",
                local.format("%Y-%m-%d %H:%M"),
                start.format("%Y-%m-%d %H:%M")
            )
        }];
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
        // Every extension here must be announced within the period it extends, by the date in
        // the jurisdiction's zone.
        let notice_day = self.local_date(&j, notice);
        let start_day = self.local_date(&j, start);
        if notice_day > current_due {
            return Err(ClockError::ExtensionWindowPassed {
                rule: rule.id,
                due: current_due,
                notice: notice_day,
            });
        }
        let mut steps = Vec::new();
        let date = match rule.extension {
            Extension::FromStart { period, .. } => {
                if until.is_some() {
                    return Err(ClockError::UntilNotAllowed { rule: rule_id });
                }
                self.count(&j, period, start_day, rule.roll_to_working_day, &mut steps)?
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
                    let start = start_day;
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
                "{source}: {} (announced {notice_day} {}, before {current_due}){}",
                steps.join("; "),
                self.zone(&j),
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
        let c = Clock::new(Calendars::builtin(), 15, Tz::UTC);
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
        let c = Clock::new(Calendars::builtin(), 15, Tz::UTC);
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
            office_zone: Tz::UTC,
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

    /// California is UTC-8 in winter: received 20:00 on 31 January there (04:00 UTC on 1
    /// February), the 45 days count from 31 January; they counted from the UTC date, a day
    /// late. The extension's notice is judged by the date there too.
    #[test]
    fn a_california_evening_receipt_counts_from_the_local_date() {
        let c = Clock::builtin();
        let received = at("2026-02-01T04:00:00Z");
        let due = c.due("US-CA", "access", received).unwrap();
        assert_eq!((due.date, due.rule), (d("2026-03-17"), "ccpa-45-days"));
        assert!(
            due.explanation
                .contains("received 2026-01-31 20:00 America/Los_Angeles (2026-02-01 04:00 UTC)"),
            "{}",
            due.explanation
        );
        let midday = c
            .due("US-CA", "access", at("2026-01-31T20:00:00Z"))
            .unwrap();
        assert_eq!(
            due.confirm_by, midday.confirm_by,
            "confirm_by counts from 31 Jan too"
        );
        // 22:00 on 17 March in California is 05:00 UTC on the 18th: still in time to extend.
        let ext = c
            .extended(
                "US-CA",
                "access",
                received,
                due.date,
                at("2026-03-18T05:00:00Z"),
                None,
            )
            .unwrap();
        assert_eq!(ext.date, d("2026-05-01"), "90 days from 31 January");
        // Colombia (UTC-5): 22:00 on Monday 2 February is 03:00 UTC on the Tuesday.
        let co = |t: &str| c.due("CO", "access", at(t)).unwrap().date;
        assert_eq!(co("2026-02-03T03:00:00Z"), co("2026-02-02T15:00:00Z"));
        assert_ne!(co("2026-02-03T03:00:00Z"), co("2026-02-03T15:00:00Z"));
    }

    /// Singapore is UTC+8: received 07:00 on 1 February there (23:00 UTC on 31 January), the
    /// 30 days count from 1 February, not a day early from the UTC date.
    #[test]
    fn a_singapore_morning_receipt_counts_from_the_local_date() {
        let c = Clock::builtin();
        let due = c.due("SG", "access", at("2026-01-31T23:00:00Z")).unwrap();
        assert_eq!(due.date, d("2026-03-03"));
        assert!(
            due.explanation
                .contains("received 2026-02-01 07:00 Asia/Singapore (2026-01-31 23:00 UTC)"),
            "{}",
            due.explanation
        );
        // When the dates agree, the explanation still names the zone.
        let noon = c.due("SG", "access", at("2026-02-01T04:00:00Z")).unwrap();
        assert_eq!(noon.date, d("2026-03-03"));
        assert!(
            noon.explanation
                .contains("received 2026-02-01 12:00 Asia/Singapore"),
            "{}",
            noon.explanation
        );
        assert_eq!(
            c.local_date("CN", at("2026-01-31T16:30:00Z")),
            d("2026-02-01")
        );
    }

    /// Britain moves to BST (UTC+1) at 01:00 UTC on 29 March 2026: 23:30 UTC on the 28th is
    /// still the 28th there, 23:30 UTC on the 29th is already the 30th.
    #[test]
    fn the_day_british_summer_time_starts_counts_by_the_london_date() {
        let c = Clock::builtin();
        let before = c.due("GB", "access", at("2026-03-28T23:30:00Z")).unwrap();
        assert_eq!(before.date, d("2026-04-28"));
        let after = c.due("GB", "access", at("2026-03-29T23:30:00Z")).unwrap();
        assert_eq!(after.date, d("2026-04-30"), "from 30 March, not 29");
        assert!(
            after.explanation.contains("2026-03-30 00:30 Europe/London"),
            "{}",
            after.explanation
        );
        // And back to GMT on 25 October: 23:30 UTC is 23:30 in London again.
        assert_eq!(
            c.local_date("GB", at("2026-10-25T23:30:00Z")),
            d("2026-10-25")
        );
        assert_eq!(
            c.local_date("GB", at("2026-10-24T23:30:00Z")),
            d("2026-10-25")
        );
    }

    /// Jurisdictions spanning several zones count in the office's own zone, whose default
    /// follows the office's jurisdiction; US-CA keeps its own wherever the office is.
    #[test]
    fn the_us_and_australia_count_in_the_office_s_zone() {
        assert_eq!(office_zone_default("US"), Tz::America__New_York);
        assert_eq!(office_zone_default("us-ny"), Tz::America__New_York);
        assert_eq!(office_zone_default("AU"), Tz::Australia__Sydney);
        assert_eq!(office_zone_default("US-CA"), Tz::America__Los_Angeles);
        assert_eq!(office_zone_default("uk"), Tz::Europe__London);
        assert_eq!(office_zone_default("FR"), Tz::UTC);

        let us = Clock::new(Calendars::builtin(), 30, office_zone_default("US"));
        // 22:00 on 28 February in New York.
        let due = us.due("US", "access", at("2026-03-01T03:00:00Z")).unwrap();
        assert_eq!(due.date, d("2026-03-30"), "30 days from 28 February");
        assert!(
            due.explanation.contains("America/New_York"),
            "{}",
            due.explanation
        );
        assert_eq!(
            us.due("US-CA", "access", at("2026-02-01T04:00:00Z"))
                .unwrap()
                .date,
            d("2026-03-17")
        );

        let au = Clock::new(Calendars::builtin(), 30, office_zone_default("AU"));
        // 01:00 on 1 March in Sydney (daylight time, UTC+11).
        let due = au.due("AU", "access", at("2026-02-28T14:00:00Z")).unwrap();
        assert_eq!(due.date, d("2026-03-31"), "30 days from 1 March");
        assert_eq!(
            Clock::builtin()
                .due("AU", "access", at("2026-02-28T14:00:00Z"))
                .unwrap()
                .date,
            d("2026-03-30"),
            "an office in UTC counts from 28 February"
        );
    }

    /// `[clock] time_zone` takes an IANA name; anything else is a one-line error naming the key.
    #[test]
    fn an_unknown_time_zone_is_a_config_error_naming_the_key() {
        assert_eq!(parse_zone("Asia/Tokyo").unwrap(), Tz::Asia__Tokyo);
        for bad in ["Mars/Olympus", "EST-ish", "", "europe/london "] {
            let e = parse_zone(bad).unwrap_err();
            assert!(
                e.starts_with("clock.time_zone = ") && e.contains("IANA") && !e.contains('\n'),
                "{bad:?}: {e}"
            );
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
