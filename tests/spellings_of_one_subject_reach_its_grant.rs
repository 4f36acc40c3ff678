//! Different spellings of one subject were different subjects, so a withdrawal silently missed
//! the grant: `id:Acct-77` granted and `ID:Acct-77` withdrawn, `acct-991` and `id:acct-991`,
//! `kunde@bücher.de` and `kunde@xn--bcher-kva.de` each left the grant in force (found by an
//! exploratory session). A withdrawal of a consent no grant of which is held here is still
//! recorded, and now says so.
mod common;
use common::*;
use std::path::Path;

fn consent(sock: &Path, action: &str, subject: &str) -> serde_json::Value {
    let mut args = vec![
        "consent",
        action,
        "--subject",
        subject,
        "--purpose",
        "marketing",
    ];
    if action == "grant" {
        args.extend(["--basis", "consent", "--evidence", "web form v3"]);
    }
    ok(sock, &args)
}

fn granted(sock: &Path, subject: &str) -> bool {
    consent(sock, "check", subject)["granted"] == true
}

#[test]
fn a_withdrawal_under_another_spelling_reaches_the_grant() {
    let net = Net::init("de");
    let _d = net.start("de");
    let sock = net.socket("de");
    for (grant, withdraw) in [
        ("id:Acct-77", "ID:Acct-77"),
        ("acct-991", "id:acct-991"),
        ("kunde@bücher.de", "kunde@xn--bcher-kva.de"),
    ] {
        let g = consent(&sock, "grant", grant);
        assert!(granted(&sock, withdraw), "{grant} / {withdraw}");
        let w = consent(&sock, "withdraw", withdraw);
        assert_eq!(w["id"], g["id"], "one record: {grant} / {withdraw}");
        assert!(w["note"].is_null(), "{w}");
        assert!(!granted(&sock, grant), "{grant} / {withdraw}");
    }
    // The account id keeps its case: another id.
    consent(&sock, "grant", "id:Acct-78");
    assert!(!granted(&sock, "id:acct-78"));

    // Nothing granted here: recorded all the same, and said, in JSON and to a person.
    let w = consent(&sock, "withdraw", "nobody@example.com");
    assert!(w["id"].is_string(), "{w}");
    let note = w["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("no grant of this consent is held here"),
        "{w}"
    );
    let human = std::process::Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(&sock)
        .args([
            "consent",
            "withdraw",
            "--subject",
            "nobody@example.com",
            "--purpose",
            "marketing",
        ])
        .output()
        .unwrap();
    assert!(human.status.success(), "{}", text(&human.stderr));
    let out = text(&human.stdout);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("note: no grant")),
        "{out}"
    );
    // Once a grant is held, a withdrawal carries no note.
    consent(&sock, "grant", "nobody@example.com");
    assert!(consent(&sock, "withdraw", "nobody@example.com")["note"].is_null());
}
