//! The closed vocabularies of the privacy statement (BRIEF.md): legal bases (§2.1), kinds of people
//! (intro), roles (§1.1), services and data categories (§3), recipients (§4), transfer mechanisms (§5)
//! and data-subject rights (§8).
//!
//! Every vocabulary is a `&'static [&'static str]` checked by [`check`], so an operator's typo is a
//! one-line error naming the allowed words instead of a record nobody can query later. Words are
//! lowercase snake_case because they appear on command lines and in JSON.

/// The United States' ISO 3166-2 subdivisions (50 states, DC, and the outlying areas), sorted:
/// `US-XX` must name one (`US-ZZ` was taken under the company-policy rule).
pub const US_SUBDIVISIONS: &[&str] = &[
    "AK", "AL", "AR", "AS", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "GA", "GU", "HI", "IA", "ID",
    "IL", "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MI", "MN", "MO", "MP", "MS", "MT", "NC", "ND",
    "NE", "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "PR", "RI", "SC", "SD", "TN", "TX",
    "UM", "UT", "VA", "VI", "VT", "WA", "WI", "WV", "WY",
];

/// The officially assigned ISO 3166-1 alpha-2 country codes (249), sorted: a jurisdiction's
/// first two letters must be one of them (`XX` was taken as a transfer's destination).
pub const COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Legal bases for processing (§2.1).
pub const BASES: &[&str] = &[
    "consent",
    "contract",
    "legal_obligation",
    "legitimate_interest",
];

/// The three kinds of people the statement covers (intro).
pub const PERSONS: &[&str] = &["customer", "end_user", "visitor"];

/// The company's role for a record (§1.1): controller for its customers' data, processor for end-user
/// data handled for customers.
pub const ROLES: &[&str] = &["controller", "processor"];

/// Services that produce end-user data (§3).
pub const SERVICES: &[&str] = &[
    "sms",
    "voice",
    "email",
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
];

/// Categories of personal data (§3 and intro).
pub const CATEGORIES: &[&str] = &[
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
];

/// Kinds of third-party recipients (§4).
pub const RECIPIENT_KINDS: &[&str] = &[
    "telecom_provider",
    "technology_provider",
    "payment_provider",
    "group_company",
    "government_authority",
];

/// Transfer mechanisms (§5). `none_required` is for moves inside one legal area (e.g. within the EEA).
pub const MECHANISMS: &[&str] = &[
    "adequacy",
    "scc",
    "bcr",
    "derogation",
    "cn_standard_contract",
    "cn_security_assessment",
    "cn_certification",
    "none_required",
];

/// Data-subject rights (§8): the kinds of request; `opt_out` is the CCPA's opt-out of sale or
/// sharing, which California clocks separately.
pub const REQUEST_KINDS: &[&str] = &[
    "access",
    "rectification",
    "erasure",
    "portability",
    "withdrawal",
    "objection",
    "restriction",
    "opt_out",
];

/// Purposes of processing (§2.2: account, services, analysis, support, sales, marketing,
/// improvement and personalisation; §4.1: billing and fraud prevention; §9: cookie categories).
/// Offices add their own with `[consent] purposes` in config.
pub const PURPOSES: &[&str] = &[
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
];

/// Purposes that are marketing (§7.3, §10): refused for a person under 18 without parental consent.
pub const MARKETING_PURPOSES: &[&str] =
    &["marketing", "sales", "cookies_marketing", "personalisation"];

/// Statuses of an open request, in lifecycle order; `completed` and `refused` close it.
pub const REQUEST_STATUSES: &[&str] = &[
    "received",
    "identity_requested",
    "identity_received",
    "in_progress",
    "extended",
    "completed",
    "refused",
];

/// Statuses an operator sets with `request update` (extension and closing have their own commands).
pub const UPDATE_STATUSES: &[&str] = &["identity_requested", "identity_received", "in_progress"];

/// Whether a request may move from `from` to `to` with `request update`.
pub fn status_transition_allowed(from: &str, to: &str) -> bool {
    match to {
        // Identity, clarification or a fee can be asked for at any open stage.
        "identity_requested" => matches!(
            from,
            "received" | "identity_received" | "in_progress" | "extended"
        ),
        "identity_received" => from == "identity_requested",
        // Work starts once nothing is awaited from the person.
        "in_progress" => matches!(from, "received" | "identity_received" | "extended"),
        _ => false,
    }
}

/// The words a jurisdiction's law uses for the roles (BRIEF.md, terminology).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Terms {
    pub data_subject: &'static str,
    pub controller: &'static str,
    pub processor: &'static str,
    pub personal_data: &'static str,
}

pub fn terms(jurisdiction: &str) -> Terms {
    match jurisdiction {
        // PDPA 2012.
        "SG" => Terms {
            data_subject: "individual",
            controller: "organisation",
            processor: "data intermediary",
            personal_data: "personal data",
        },
        // CCPA 2018.
        "US-CA" => Terms {
            data_subject: "consumer",
            controller: "business",
            processor: "service provider",
            personal_data: "personal information",
        },
        _ => Terms {
            data_subject: "data subject",
            controller: "controller",
            processor: "processor",
            personal_data: "personal data",
        },
    }
}

/// Outcomes of a closed request.
pub const OUTCOMES: &[&str] = &["completed", "refused"];

/// The default role for a kind of person (§1.1): the company controls its customers' and visitors'
/// data and processes end users' data on its customers' behalf.
pub fn default_role(person: &str) -> &'static str {
    match person {
        "end_user" => "processor",
        _ => "controller",
    }
}

/// Checks that `role` can be the company's for a kind of `person` (§1.1): it is the controller
/// of its own customers' account data and of its website visitors' data (each gives it their
/// data directly), and a processor only for end users' data it handles for customers. An end
/// user's data may still be the company's own to control (§4.1: fraud prevention, billing,
/// retention the law requires), so `end_user` takes either role. `customer` and `visitor` with
/// `processor` were accepted, a record saying the company answered to someone else for data
/// it controls.
pub fn check_role(person: &str, role: &str) -> Result<(), String> {
    if role == "processor" && person != "end_user" {
        return Err(format!(
            "role processor contradicts kind of person {person}: the company is the controller of its own customers' and website visitors' data and a processor only for end users' data it handles for customers (privacy statement §1.1); drop --role or give --role controller"
        ));
    }
    Ok(())
}

/// Checks `word` against `allowed`; the error names the field and every allowed word.
pub fn check(field: &str, word: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&word) {
        Ok(())
    } else {
        Err(format!(
            "unknown {field} {}: expected one of {}",
            shown(word),
            allowed.join(", ")
        ))
    }
}

/// Most characters of an operator's input an error message quotes.
pub const SHOWN_CHARS_MAX: usize = 64;

/// Input quoted in an error message: all of it if short, else its start and its length (a
/// 100 KB `--jurisdiction` came back as a 100 KB error line; found by an exploratory session).
pub fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS_MAX) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

/// Checks a purpose name's form: a short lowercase token such as `marketing` or `billing-sms`.
/// Which purposes exist is [`PURPOSES`] plus the office's config; this checks only the spelling.
pub fn check_purpose_syntax(purpose: &str) -> Result<(), String> {
    const PURPOSE_BYTES_MAX: usize = 64;
    let ok = !purpose.is_empty()
        && purpose.len() <= PURPOSE_BYTES_MAX
        && purpose.starts_with(|c: char| c.is_ascii_lowercase())
        && purpose
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid purpose {}: use 1-{PURPOSE_BYTES_MAX} characters a-z 0-9 _ - . : starting with a letter (e.g. marketing)",
            shown(purpose)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_are_sorted_unique_iso_codes() {
        assert_eq!(COUNTRIES.len(), 249);
        assert!(
            COUNTRIES.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert!(COUNTRIES
            .iter()
            .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for c in ["DE", "SG", "CN", "CO", "AU", "GB", "NL", "US"] {
            assert!(COUNTRIES.binary_search(&c).is_ok(), "{c}");
        }
        for c in ["UK", "EU", "XX", "ZZ"] {
            assert!(COUNTRIES.binary_search(&c).is_err(), "{c}");
        }
    }

    #[test]
    fn check_names_allowed_words() {
        assert!(check("basis", "consent", BASES).is_ok());
        let err = check("basis", "vibes", BASES).unwrap_err();
        assert!(err.contains("legitimate_interest"), "{err}");
    }

    #[test]
    fn purposes_are_identifiers() {
        assert!(check_purpose_syntax("marketing").is_ok());
        assert!(check_purpose_syntax("billing-sms.v2").is_ok());
        assert!(check_purpose_syntax("Marketing").is_err());
        assert!(check_purpose_syntax("").is_err());
        assert!(check_purpose_syntax("a b").is_err());
        assert!(check_purpose_syntax(&"a".repeat(65)).is_err());
        for p in PURPOSES.iter().chain(MARKETING_PURPOSES) {
            assert!(check_purpose_syntax(p).is_ok(), "{p}");
        }
        assert!(MARKETING_PURPOSES.iter().all(|m| PURPOSES.contains(m)));
    }

    #[test]
    fn lifecycle_transitions() {
        assert!(status_transition_allowed("received", "identity_requested"));
        assert!(status_transition_allowed(
            "identity_requested",
            "identity_received"
        ));
        assert!(
            !status_transition_allowed("received", "identity_received"),
            "nothing was asked"
        );
        assert!(
            !status_transition_allowed("identity_requested", "in_progress"),
            "still waiting"
        );
        assert!(!status_transition_allowed("completed", "in_progress"));
    }

    #[test]
    fn terms_follow_the_law() {
        assert_eq!(terms("SG").processor, "data intermediary");
        assert_eq!(terms("US-CA").data_subject, "consumer");
        assert_eq!(terms("DE").controller, "controller");
    }

    #[test]
    fn roles_follow_persons() {
        for person in PERSONS {
            assert_eq!(check_role(person, default_role(person)), Ok(()), "{person}");
            assert_eq!(check_role(person, "controller"), Ok(()), "{person}");
        }
        assert_eq!(check_role("end_user", "processor"), Ok(()));
        for person in ["customer", "visitor"] {
            let e = check_role(person, "processor").unwrap_err();
            assert!(e.contains(person) && e.contains("§1.1"), "{e}");
        }
        assert_eq!(default_role("end_user"), "processor");
        assert_eq!(default_role("customer"), "controller");
    }
}
