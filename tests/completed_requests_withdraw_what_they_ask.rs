//! Completing a withdrawal, objection or restriction request changed nothing: `consent check`
//! still answered "granted" for what the person had asked to stop (found by an exploratory
//! session). Completing one now withdraws, in the batch that closes it:
//! - withdrawal: every purpose granted on basis consent (it withdrew contract, legal-obligation
//!   and legitimate-interest processing too, which the next pass then deleted; found by an
//!   exploratory session);
//! - objection: marketing whatever its basis, and every purpose granted on legitimate interest;
//! - restriction: purposes granted on legitimate interest (consented processing may go on,
//!   GDPR Art. 18(2)).
mod common;
use common::*;
use serde_json::Value;

fn grant(sock: &std::path::Path, subject: &str, purpose: &str, basis: &str) {
    ok(
        sock,
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            purpose,
            "--basis",
            basis,
            "--evidence",
            "web form v3",
        ],
    );
}

fn granted(sock: &std::path::Path, subject: &str, purpose: &str) -> bool {
    ok(
        sock,
        &[
            "consent",
            "check",
            "--subject",
            subject,
            "--purpose",
            purpose,
        ],
    )["granted"]
        == true
}

/// Grants marketing (consent), service_analytics (legitimate interest) and support (contract),
/// then completes a request of `kind`; returns the close answer.
fn complete(sock: &std::path::Path, subject: &str, kind: &str) -> Value {
    grant(sock, subject, "marketing", "consent");
    grant(sock, subject, "service_analytics", "legitimate_interest");
    grant(sock, subject, "support", "contract");
    let id = ok(
        sock,
        &["request", "open", "--subject", subject, "--kind", kind],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(sock, &["request", "close", &id, "--outcome", "completed"])
}

#[test]
fn completed_withdrawal_objection_and_restriction_requests_withdraw_what_they_ask() {
    let net = Net::init("nl");
    let _d = net.start("nl");
    let sock = net.socket("nl");
    let states = |subject: &str| {
        ["marketing", "service_analytics", "support"].map(|p| granted(&sock, subject, p))
    };

    let closed = complete(&sock, "wd@example.com", "withdrawal");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["marketing"]),
        "{closed}"
    );
    assert_eq!(states("wd@example.com"), [false, true, true]);

    let closed = complete(&sock, "obj@example.com", "objection");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["marketing", "service_analytics"]),
        "{closed}"
    );
    assert_eq!(states("obj@example.com"), [false, false, true]);

    let closed = complete(&sock, "rs@example.com", "restriction");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["service_analytics"]),
        "{closed}"
    );
    assert_eq!(states("rs@example.com"), [true, false, true]);

    // Other kinds withdraw nothing; a refused request withdraws nothing either.
    let closed = complete(&sock, "acc@example.com", "access");
    assert!(closed["withdrawn"].is_null(), "{closed}");
    assert_eq!(states("acc@example.com"), [true, true, true]);
    grant(&sock, "no@example.com", "marketing", "consent");
    let id = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "no@example.com",
            "--kind",
            "objection",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &sock,
        &[
            "request",
            "close",
            &id,
            "--outcome",
            "refused",
            "--note",
            "not the person",
        ],
    );
    assert!(granted(&sock, "no@example.com", "marketing"));
}

/// Completes a request of `kind` for `subject`; returns the close answer.
fn open_and_complete(sock: &std::path::Path, subject: &str, kind: &str) -> Value {
    let id = ok(
        sock,
        &["request", "open", "--subject", subject, "--kind", kind],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(sock, &["request", "close", &id, "--outcome", "completed"])
}

/// A withdrawal of consent reaches processing on basis consent only (GDPR Art. 7(3), §8.2), so
/// the next pass deletes none of the contract and legal-obligation records; an erasure keeps,
/// and does not withdraw, processing a legal obligation requires (Art. 17(3)(b)), and says why.
#[test]
fn withdrawal_ends_consent_only_and_erasure_keeps_legal_obligations() {
    let net = Net::init("nl");
    let _d = net.start("nl");
    let sock = net.socket("nl");
    let s = "wd2@example.com";
    grant(&sock, s, "marketing", "consent");
    grant(&sock, s, "service_delivery", "contract");
    grant(&sock, s, "billing", "contract");
    grant(&sock, s, "fraud_prevention", "legal_obligation");
    let closed = open_and_complete(&sock, s, "withdrawal");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["marketing"]),
        "{closed}"
    );
    let pass = ok(&sock, &["retention", "run"]);
    assert_eq!(pass["deleted"], 0, "{pass}");
    for p in ["service_delivery", "billing", "fraud_prevention"] {
        assert!(
            granted(&sock, s, p),
            "{p} still in force after a withdrawal"
        );
    }
    assert!(!granted(&sock, s, "marketing"));

    let e = "er2@example.com";
    grant(&sock, e, "fraud_prevention", "legal_obligation");
    grant(&sock, e, "support", "contract");
    let closed = open_and_complete(&sock, e, "erasure");
    let erasure = &closed["erasure"];
    assert_eq!(erasure["deleted"], 1, "{closed}");
    assert_eq!(erasure["withdrawn"], serde_json::json!([]), "{closed}");
    let kept = erasure["kept"].as_array().unwrap();
    assert!(
        kept.iter().any(|k| k["kind"] == "consent"
            && k["why"].as_str().unwrap().contains("Art. 17(3)(b)")),
        "{closed}"
    );
    assert!(granted(&sock, e, "fraud_prevention"));
    let pass = ok(&sock, &["retention", "run"]);
    assert_eq!(pass["deleted"], 0, "{pass}");
    assert!(granted(&sock, e, "fraud_prevention"));
}

/// Rows of `subject`'s consent history for `purpose`.
fn history_of(sock: &std::path::Path, subject: &str, purpose: &str) -> usize {
    ok(sock, &["consent", "history", "--subject", subject])
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["purpose"] == purpose)
        .count()
}

/// Completing a restriction stops the processing but stores the data (GDPR Art. 18): it
/// withdrew the purposes and the next pass deleted service_analytics under basis-end, 0 months
/// (found by an exploratory session). The records keep the schedule they would have without the
/// restriction; an objection later ends the processing, and then retention deletes as usual.
#[test]
fn a_completed_restriction_stops_processing_but_retention_keeps_the_records() {
    let net = Net::init("nl");
    let _d = net.start("nl");
    let sock = net.socket("nl");
    let s = "restricted@example.com";
    grant(&sock, s, "service_analytics", "legitimate_interest");
    grant(&sock, s, "sales", "legitimate_interest");
    grant(&sock, s, "marketing", "consent");
    let closed = open_and_complete(&sock, s, "restriction");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["sales", "service_analytics"]),
        "{closed}"
    );
    assert!(!granted(&sock, s, "service_analytics"));
    assert!(!granted(&sock, s, "sales"));
    assert!(granted(&sock, s, "marketing"), "Art. 18(2): with consent");

    let pass = ok(&sock, &["retention", "run"]);
    assert_eq!(pass["deleted"], 0, "{pass}");
    assert_eq!(history_of(&sock, s, "service_analytics"), 2);
    assert_eq!(history_of(&sock, s, "sales"), 2);
    // Years on, only the schedule without the restriction deletes: sales as marketing data 12
    // months from its grant; service_analytics, a grant still in force but for the restriction,
    // not at all.
    let later = ok(
        &sock,
        &[
            "retention",
            "run",
            "--dry-run",
            "--as-of",
            "2029-01-01T00:00:00Z",
        ],
    );
    assert_eq!(later["deleted"], 1, "{later}");
    assert_eq!(later["by_reason"]["retention/marketing"], 1, "{later}");

    // An objection ends what the restriction stopped; the next pass deletes it as before.
    let closed = open_and_complete(&sock, s, "objection");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["marketing", "sales", "service_analytics"]),
        "{closed}"
    );
    let pass = ok(&sock, &["retention", "run"]);
    assert_eq!(pass["deleted"], 1, "{pass}");
    assert_eq!(pass["by_reason"]["retention/basis-end"], 1, "{pass}");
    assert_eq!(history_of(&sock, s, "service_analytics"), 0);
}
