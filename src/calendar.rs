//! Holiday calendars: which days are working days in a jurisdiction.
//!
//! Calendars are data, not code: one text file per jurisdiction (data/holidays/*.txt, compiled in),
//! which the operator can replace with files in `[clock] calendar_dir`. A calendar covers whole
//! years; asking about a day outside them is an error, because a deadline computed on a guessed
//! calendar is worse than none.
//!
//! File format (one item per line, `#` starts a comment):
//!
//! ```text
//! jurisdiction GB
//! years 2025 2028
//! 2026-04-03 Good Friday            # a public holiday
//! workday 2026-02-14 adjusted day   # a Saturday or Sunday that is a working day (CN)
//! ```

use chrono::{Datelike, NaiveDate, Weekday};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Largest calendar file read.
pub const CALENDAR_BYTES_MAX: u64 = 256 << 10;
/// Most years one calendar may span.
pub const CALENDAR_YEARS_MAX: i32 = 100;
/// Most calendar files read from an override directory.
pub const CALENDAR_FILES_MAX: usize = 256;

/// The calendars shipped with consentd.
const BUILTIN: &[(&str, &str)] = &[
    ("AU", include_str!("../data/holidays/AU.txt")),
    ("CN", include_str!("../data/holidays/CN.txt")),
    ("CO", include_str!("../data/holidays/CO.txt")),
    ("DE", include_str!("../data/holidays/DE.txt")),
    ("GB", include_str!("../data/holidays/GB.txt")),
    ("NL", include_str!("../data/holidays/NL.txt")),
    ("SG", include_str!("../data/holidays/SG.txt")),
    ("US", include_str!("../data/holidays/US.txt")),
    ("US-CA", include_str!("../data/holidays/US-CA.txt")),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("holiday calendar {origin}, line {line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("holiday calendar {origin}: {message}")]
    Read { origin: String, message: String },
}

/// A line as quoted in an error: at most 80 characters of it.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// One jurisdiction's working days over a span of whole years.
#[derive(Debug, Clone)]
pub struct Calendar {
    jurisdiction: String,
    first_year: i32,
    last_year: i32,
    holidays: BTreeMap<NaiveDate, String>,
    weekend_workdays: BTreeSet<NaiveDate>,
    origin: String,
}

/// What a day is, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayKind<'a> {
    Working,
    Weekend(Weekday),
    Holiday(&'a str),
}

impl Calendar {
    pub fn parse(text: &str, origin: &str) -> Result<Calendar, CalendarError> {
        let err = |line: usize, message: String| CalendarError::Parse {
            origin: origin.to_string(),
            line,
            message,
        };
        let mut jurisdiction = None;
        let mut years: Option<(i32, i32)> = None;
        let mut holidays = BTreeMap::new();
        let mut weekend_workdays = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (head, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match head {
                "jurisdiction" => {
                    if rest.is_empty() || rest.len() > 8 {
                        return Err(err(n, format!("invalid jurisdiction {rest:?}")));
                    }
                    jurisdiction = Some(rest.to_string());
                }
                "years" => {
                    let parts: Vec<i32> = rest
                        .split_whitespace()
                        .map(|p| p.parse::<i32>())
                        .collect::<Result<_, _>>()
                        .map_err(|_| err(n, format!("invalid years {rest:?}")))?;
                    match parts[..] {
                        // `a > 1900` first: with it and `a <= b`, `b - a` cannot overflow.
                        [a, b] if a > 1900 && a <= b && b - a < CALENDAR_YEARS_MAX => {
                            years = Some((a, b))
                        }
                        _ => {
                            return Err(err(
                                n,
                                format!("`years FIRST LAST` expected, got {rest:?}"),
                            ))
                        }
                    }
                }
                "workday" => {
                    let (date, _) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let d =
                        parse_day(date).ok_or_else(|| err(n, format!("invalid date {date:?}")))?;
                    if !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
                        return Err(err(
                            n,
                            format!("{d} is not a Saturday or Sunday; only weekend days can be listed as workdays"),
                        ));
                    }
                    weekend_workdays.insert(d);
                }
                date => {
                    let d = parse_day(date).ok_or_else(|| {
                        err(
                            n,
                            format!("expected `YYYY-MM-DD name`, `workday …`, `years …` or `jurisdiction …`, got {:?}", shorten(line)),
                        )
                    })?;
                    let name = if rest.is_empty() {
                        "public holiday"
                    } else {
                        rest
                    };
                    holidays.insert(d, name.to_string());
                }
            }
        }
        let jurisdiction = jurisdiction.ok_or_else(|| err(0, "no `jurisdiction` line".into()))?;
        let (first_year, last_year) = years.ok_or_else(|| err(0, "no `years` line".into()))?;
        for d in holidays.keys().chain(weekend_workdays.iter()) {
            if d.year() < first_year || d.year() > last_year {
                return Err(err(
                    0,
                    format!("{d} is outside the calendar's years {first_year}-{last_year}"),
                ));
            }
        }
        Ok(Calendar {
            jurisdiction,
            first_year,
            last_year,
            holidays,
            weekend_workdays,
            origin: origin.to_string(),
        })
    }

    pub fn jurisdiction(&self) -> &str {
        &self.jurisdiction
    }

    pub fn years(&self) -> (i32, i32) {
        (self.first_year, self.last_year)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn covers(&self, d: NaiveDate) -> bool {
        (self.first_year..=self.last_year).contains(&d.year())
    }

    /// What the day is; `None` outside the calendar's years.
    pub fn day(&self, d: NaiveDate) -> Option<DayKind<'_>> {
        if !self.covers(d) {
            return None;
        }
        if let Some(name) = self.holidays.get(&d) {
            return Some(DayKind::Holiday(name));
        }
        match d.weekday() {
            w @ (Weekday::Sat | Weekday::Sun) if !self.weekend_workdays.contains(&d) => {
                Some(DayKind::Weekend(w))
            }
            _ => Some(DayKind::Working),
        }
    }
}

fn parse_day(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// The calendars in force: the built-in ones, each replaced by an operator's file of the same
/// jurisdiction where one is given.
#[derive(Debug, Clone)]
pub struct Calendars {
    by_jurisdiction: HashMap<String, Calendar>,
}

impl Calendars {
    pub fn builtin() -> Calendars {
        let by_jurisdiction = BUILTIN
            .iter()
            .map(|(j, text)| {
                let cal = Calendar::parse(text, &format!("built-in {j}"))
                    .expect("built-in calendars parse (tested)");
                debug_assert_eq!(
                    cal.jurisdiction(),
                    *j,
                    "built-in file names its own jurisdiction"
                );
                (j.to_string(), cal)
            })
            .collect();
        Calendars { by_jurisdiction }
    }

    /// Built-in calendars overridden by every `*.txt` in `dir`.
    pub fn with_overrides(dir: &Path) -> Result<Calendars, CalendarError> {
        let mut cals = Calendars::builtin();
        let read_err = |message: String| CalendarError::Read {
            origin: dir.display().to_string(),
            message,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| read_err(e.to_string()))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        if files.len() > CALENDAR_FILES_MAX {
            return Err(read_err(format!(
                "more than {CALENDAR_FILES_MAX} calendar files"
            )));
        }
        for path in files {
            let origin = path.display().to_string();
            let size = std::fs::metadata(&path)
                .map_err(|e| read_err(format!("{origin}: {e}")))?
                .len();
            if size > CALENDAR_BYTES_MAX {
                return Err(read_err(format!(
                    "{origin} is larger than {CALENDAR_BYTES_MAX} bytes"
                )));
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| read_err(format!("{origin}: {e}")))?;
            let cal = Calendar::parse(&text, &origin)?;
            cals.by_jurisdiction.insert(cal.jurisdiction.clone(), cal);
        }
        Ok(cals)
    }

    pub fn get(&self, jurisdiction: &str) -> Option<&Calendar> {
        self.by_jurisdiction.get(jurisdiction)
    }

    pub fn jurisdictions(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_jurisdiction.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        parse_day(s).unwrap()
    }

    #[test]
    fn builtin_calendars_parse_and_cover_2025_to_2028() {
        let cals = Calendars::builtin();
        for j in ["AU", "CN", "CO", "DE", "GB", "NL", "SG", "US", "US-CA"] {
            let c = cals.get(j).unwrap_or_else(|| panic!("{j} missing"));
            assert_eq!(c.years(), (2025, 2028), "{j}");
        }
        let gb = cals.get("GB").unwrap();
        assert_eq!(
            gb.day(d("2026-04-03")),
            Some(DayKind::Holiday("Good Friday"))
        );
        assert_eq!(
            gb.day(d("2026-04-04")),
            Some(DayKind::Weekend(Weekday::Sat))
        );
        assert_eq!(gb.day(d("2026-04-07")), Some(DayKind::Working));
        assert_eq!(gb.day(d("2029-01-02")), None, "outside the years: unknown");
        let cn = cals.get("CN").unwrap();
        assert_eq!(
            cn.day(d("2026-02-14")),
            Some(DayKind::Working),
            "adjusted working Saturday"
        );
    }

    #[test]
    fn malformed_calendars_name_the_line() {
        let e = Calendar::parse("jurisdiction XX\nyears 2026 2026\n2026-02-30 Nope\n", "t")
            .unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = Calendar::parse(
            "jurisdiction XX\nyears 2026 2026\nworkday 2026-02-16 Monday\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a Saturday"), "{e}");
        let e = Calendar::parse("jurisdiction XX\nyears 2026 2026\n2027-01-01 Later\n", "t")
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(
            Calendar::parse("years 2026 2026\n", "t").is_err(),
            "jurisdiction required"
        );
        assert!(Calendar::parse("jurisdiction XX\nyears 2028 2026\n", "t").is_err());
    }

    #[test]
    fn an_operator_file_replaces_the_builtin_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("GB.txt"),
            "jurisdiction GB\nyears 2026 2030\n2026-04-07 Extra day\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("FR.txt"),
            "jurisdiction FR\nyears 2026 2026\n2026-07-14 Fête nationale\n",
        )
        .unwrap();
        let cals = Calendars::with_overrides(dir.path()).unwrap();
        let gb = cals.get("GB").unwrap();
        assert_eq!(gb.years(), (2026, 2030));
        assert_eq!(gb.day(d("2026-04-07")), Some(DayKind::Holiday("Extra day")));
        assert_eq!(
            gb.day(d("2026-04-03")),
            Some(DayKind::Working),
            "the built-in file is replaced, not merged"
        );
        assert!(cals.get("FR").is_some());
        assert!(cals.get("DE").is_some(), "others stay built in");
    }

    /// Found by the hostile input suite: `b - a` overflowed (a panic with overflow checks)
    /// before `a` was bounded.
    #[test]
    fn years_far_apart_are_refused_not_an_overflow() {
        let e = Calendar::parse("jurisdiction XX\nyears -2147483648 2147483647\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("years"), "{e}");
    }
}
