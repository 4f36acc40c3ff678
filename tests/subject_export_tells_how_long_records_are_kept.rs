//! The right of access includes "the envisaged period for which the personal data will be
//! stored, or, if not possible, the criteria used to determine that period" (GDPR Art.
//! 15(1)(d)); `subject export` said nothing of it (found by an exploratory session). Now every
//! record carries `retention`: its rule, the day it is deleted on (`until`) or `null` with the
//! criterion while its period has not started, the rule's source, and whether a legal hold
//! keeps it. Every key the export had stays as it was.
mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

const SUBJECT: &str = "rita@example.com";

fn find<'a>(export: &'a Value, list: &str, id: &str) -> &'a Value {
    export[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}: {export}"))
}

#[test]
fn every_exported_record_says_how_long_it_is_kept() {
    let net = Net::init("de");
    let _de = net.start("de");
    let s = net.socket("de");
    let id = |v: Value| v["id"].as_str().unwrap().to_string();
    let sales = id(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "sales",
            "--basis",
            "legitimate_interest",
            "--at",
            "2025-01-10T10:00:00Z",
        ],
    ));
    let marketing = id(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
            "--at",
            "2025-01-10T10:00:00Z",
        ],
    ));
    let transfer = id(ok(
        &s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "phone_number",
            "--mechanism",
            "scc",
            "--tia",
            "TIA-1",
            "--subject",
            SUBJECT,
            "--at",
            "2025-03-01T00:00:00Z",
        ],
    ));
    let request = id(ok(
        &s,
        &[
            "request",
            "open",
            "--subject",
            SUBJECT,
            "--kind",
            "access",
            "--received",
            "2025-02-01T09:00:00Z",
        ],
    ));
    let open = ok(&s, &["subject", "export", "--subject", SUBJECT]);
    let r = &find(&open, "consents", &sales)["retention"];
    assert_eq!(r["rule"], "marketing", "{r}");
    assert_eq!(r["until"], "2026-01-10", "{r}");
    assert_eq!(r["held"], false, "{r}");
    assert!(r["source"].as_str().unwrap().contains("§7"), "{r}");
    // Consent proof runs from a withdrawal that has not happened: the criterion, no day.
    let r = &find(&open, "consents", &marketing)["retention"];
    assert_eq!(r["rule"], "consent-proof", "{r}");
    assert!(r["until"].is_null(), "{r}");
    assert!(
        r["criterion"]
            .as_str()
            .unwrap()
            .starts_with("kept 5 years after the consent is withdrawn"),
        "{r}"
    );
    let r = &find(&open, "transfers", &transfer)["retention"];
    assert_eq!(
        (r["rule"].as_str(), r["until"].as_str()),
        (Some("sms-voice"), Some("2025-09-01")),
        "{r}"
    );
    let r = &find(&open, "requests", &request)["retention"];
    assert_eq!(r["rule"], "request-confirmation", "{r}");
    assert!(r["until"].is_null(), "{r}");
    assert!(
        r["criterion"]
            .as_str()
            .unwrap()
            .contains("no end while it is open"),
        "{r}"
    );
    // The keys the export had are still there, as they were.
    let consent = find(&open, "consents", &sales);
    for key in ["id", "purpose", "events", "office", "subject"] {
        assert!(consent.get(key).is_some(), "{key}: {consent}");
    }

    ok(
        &s,
        &[
            "request",
            "close",
            &request,
            "--outcome",
            "completed",
            "--at",
            "2025-02-20T09:00:00Z",
        ],
    );
    ok(
        &s,
        &[
            "hold",
            "set",
            "--subject",
            SUBJECT,
            "--reason",
            "litigation 7",
        ],
    );
    let held = ok(&s, &["subject", "export", "--subject", SUBJECT]);
    let r = &find(&held, "requests", &request)["retention"];
    assert_eq!(r["until"], "2030-02-20", "{r}");
    for list in ["consents", "requests", "transfers", "holds"] {
        for record in held[list].as_array().unwrap() {
            let r = &record["retention"];
            assert_eq!(r["held"], true, "{list}: {record}");
            assert!(
                r["held_why"].as_str().unwrap().contains("legal hold"),
                "{r}"
            );
        }
    }
    let hold = &held["holds"][0]["retention"];
    assert_eq!(hold["rule"], "hold-record", "{hold}");

    // The human output says it too.
    let out = Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(&s)
        .args(["subject", "export", "--subject", SUBJECT])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(human.contains("kept until 2026-01-10"), "{human}");
    assert!(
        human.contains("    kept 5 years after the consent is withdrawn"),
        "{human}"
    );
    assert!(human.contains("held: a legal hold keeps it"), "{human}");
}
