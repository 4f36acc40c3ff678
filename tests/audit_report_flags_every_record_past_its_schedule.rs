//! `audit report` lists under past retention every record past its built-in schedule, not only
//! consent proof and request confirmations past five years: a transfer of SMS data (6 months)
//! and a marketing grant on legitimate interest (12 months) from 2025-01-01, which a retention
//! dry run would delete, were not listed (found by an exploratory session). A record tied to an
//! active legal hold in the bundle (sealed under the same subject key: consent proof) is not past
//! retention; one the report cannot tie to it offline says that it may be held; none is listed
//! twice.
mod common;
use common::audit::{audit_report, export};
use common::*;

fn id_of(v: serde_json::Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn sms(s: &std::path::Path, subject: &str) -> String {
    id_of(ok(
        s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier",
            "--categories",
            "phone_number",
            "--mechanism",
            "scc",
            "--tia",
            "TIA-1",
            "--subject",
            subject,
            "--at",
            "2025-01-01T10:00:00Z",
        ],
    ))
}

/// Consent proof of `subject`: granted 2019-01-10, withdrawn 2020-03-15, so past its 5 years.
fn proof(s: &std::path::Path, subject: &str) -> String {
    let id = id_of(ok(
        s,
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
            "--at",
            "2019-01-10T09:00:00Z",
        ],
    ));
    ok(
        s,
        &[
            "consent",
            "withdraw",
            "--subject",
            subject,
            "--purpose",
            "marketing",
            "--at",
            "2020-03-15T18:00:00Z",
        ],
    );
    id
}

#[test]
fn records_past_any_rule_of_the_schedule_are_reported_once_and_holds_keep_theirs() {
    let net = Net::init("de");
    let d = net.start("de");
    let s = net.socket("de");
    let transfer = sms(&s, "t@example.com");
    let held = sms(&s, "h@example.com");
    let held_proof = proof(&s, "h@example.com");
    ok(
        &s,
        &[
            "hold",
            "set",
            "--subject",
            "h@example.com",
            "--reason",
            "court order 17",
        ],
    );
    let marketing = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "m@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "legitimate_interest",
            "--at",
            "2025-01-01T10:00:00Z",
        ],
    ));
    let proof = proof(&s, "p@example.com");
    let dry = ok(&s, &["retention", "run", "--dry-run"]);
    assert_eq!(dry["deleted"], 3, "{dry}");
    assert_eq!(dry["held"], 2, "{dry}");

    let bundle = export(&net, "de", "bundle.jsonl");
    let rep = audit_report(&net, "de", &bundle);
    let past = rep["past_retention"].as_array().unwrap();
    let detail = |id: &str| -> Vec<String> {
        past.iter()
            .filter(|f| f["record"] == id)
            .map(|f| f["detail"].as_str().unwrap().to_string())
            .collect()
    };
    let maybe_held = " (unless its subject is under one of the bundle's 1 active legal holds: sealed subjects are tied to a hold offline only under the same key)";
    assert_eq!(
        detail(&transfer),
        [format!("past its retention under the built-in rule sms-voice (6 months): deletable from 2025-07-01{maybe_held}")],
        "{rep}"
    );
    assert_eq!(
        detail(&marketing),
        [format!("past its retention under the built-in rule marketing (12 months): deletable from 2026-01-01{maybe_held}")],
        "{rep}"
    );
    let proof = detail(&proof);
    assert_eq!(proof.len(), 1, "reported once: {rep}");
    assert!(proof[0].contains("5-year retention"), "{rep}");
    assert!(detail(&held_proof).is_empty(), "tied to the hold: {rep}");
    // The held subject's transfer is sealed under another key than the hold: not tied offline.
    assert_eq!(detail(&held).len(), 1, "{rep}");
    assert_eq!(past.len(), 4, "{rep}");
    for f in past {
        assert_eq!(f["office"], "de", "{f}");
    }
    drop(d);
}
