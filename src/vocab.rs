//! The closed vocabularies of the privacy statement (BRIEF.md): legal bases (§2.1), kinds of people
//! (intro), roles (§1.1), services and data categories (§3), recipients (§4), transfer mechanisms (§5)
//! and data-subject rights (§8).
//!
//! Every vocabulary is a `&'static [&'static str]` checked by [`check`], so an operator's typo is a
//! one-line error naming the allowed words instead of a record nobody can query later. Words are
//! lowercase snake_case because they appear on command lines and in JSON.

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

/// Data-subject rights (§8): the kinds of request.
pub const REQUEST_KINDS: &[&str] = &[
    "access",
    "rectification",
    "erasure",
    "portability",
    "withdrawal",
    "objection",
    "restriction",
];

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

/// Checks `word` against `allowed`; the error names the field and every allowed word.
pub fn check(field: &str, word: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&word) {
        Ok(())
    } else {
        Err(format!(
            "unknown {field} {word:?}: expected one of {}",
            allowed.join(", ")
        ))
    }
}

/// Checks a free-form purpose name: a short lowercase token such as `marketing` or `billing-sms`.
/// Purposes are not a closed list (each office names its own), but they are identifiers, not prose.
pub fn check_purpose(purpose: &str) -> Result<(), String> {
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
            "invalid purpose {purpose:?}: use 1-{PURPOSE_BYTES_MAX} characters a-z 0-9 _ - . : starting with a letter (e.g. marketing)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_allowed_words() {
        assert!(check("basis", "consent", BASES).is_ok());
        let err = check("basis", "vibes", BASES).unwrap_err();
        assert!(err.contains("legitimate_interest"), "{err}");
    }

    #[test]
    fn purposes_are_identifiers() {
        assert!(check_purpose("marketing").is_ok());
        assert!(check_purpose("billing-sms.v2").is_ok());
        assert!(check_purpose("Marketing").is_err());
        assert!(check_purpose("").is_err());
        assert!(check_purpose("a b").is_err());
        assert!(check_purpose(&"a".repeat(65)).is_err());
    }

    #[test]
    fn roles_follow_persons() {
        assert_eq!(default_role("end_user"), "processor");
        assert_eq!(default_role("customer"), "controller");
    }
}
