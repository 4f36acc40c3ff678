//! A consent whose record is full still takes a withdrawal, and a grant after it: its next event
//! starts a new record of the consent. Its events all went to one record, and once that record's
//! projection passed the store's 1 MiB, `consent withdraw` failed "storage failure, nothing was
//! written: projection bytes: 1048595 exceeds the limit of 1048576" and `consent check` answered
//! granted for good, across restarts (found by an exploratory session).
mod common;
use common::*;

const SUBJECT: &str = "hot3@example.org";

fn check(socket: &std::path::Path) -> serde_json::Value {
    ok(
        socket,
        &[
            "consent",
            "check",
            "--subject",
            SUBJECT,
            "--purpose",
            "marketing",
        ],
    )
}

#[test]
fn a_full_consent_record_still_takes_withdrawals() {
    let net = Net::init("de");
    let daemon = net.start("de");
    let sock = net.socket("de");
    let evidence = format!("web form v3 {}", "z".repeat(4000));
    let line = serde_json::json!({
        "op": "consent.grant",
        "subject": SUBJECT,
        "purpose": "marketing",
        "basis": "consent",
        "evidence": evidence,
    })
    .to_string();
    // 320 grants with 4 KiB of evidence: more than 1 MiB of projection for one record.
    let file = net.path().join("hot.jsonl");
    std::fs::write(&file, format!("{line}\n").repeat(320)).unwrap();
    let imported = ok(&sock, &["import", "--file", file.to_str().unwrap()]);
    assert_eq!(imported["imported"], 320, "{imported}");
    let grant = [
        "consent",
        "grant",
        "--subject",
        SUBJECT,
        "--purpose",
        "marketing",
        "--basis",
        "consent",
        "--evidence",
        evidence.as_str(),
    ];
    ok(&sock, &grant);
    assert_eq!(check(&sock)["granted"], true);

    let withdraw = [
        "consent",
        "withdraw",
        "--subject",
        SUBJECT,
        "--purpose",
        "marketing",
    ];
    ok(&sock, &withdraw);
    assert_eq!(check(&sock)["granted"], false);
    ok(&sock, &grant);
    assert_eq!(check(&sock)["granted"], true);
    ok(&sock, &withdraw);
    let status = ok(&sock, &["status"]);
    assert_eq!(
        status["storage_failure"],
        serde_json::Value::Null,
        "{status}"
    );

    let history = ok(&sock, &["consent", "history", "--subject", SUBJECT]);
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(324),
        "every event is held"
    );
    let log = daemon.log_text();
    assert!(!log.contains("storage failure"), "{log}");
    assert!(daemon.stop(), "the daemon stops cleanly");

    let _daemon = net.start("de");
    assert_eq!(check(&sock)["granted"], false, "after a restart too");
}
