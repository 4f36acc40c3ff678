//! A purpose one office adds in its config (`[consent] purposes`, `marketing_purposes`) reaches
//! the other offices with its records; there `consent check`, `consent withdraw` and completing
//! a request refused it as an unknown purpose, the request stayed open, the granting office
//! went on answering "granted", and an objection closed elsewhere withdrew nothing (found by an
//! exploratory session). A person's withdrawal must not depend on which office received it:
//! each office now takes a purpose it holds records of for the subject, and a record says
//! whether its granting office counted the purpose as marketing.
mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

const ARRIVAL: Duration = Duration::from_secs(90);

fn grant(sock: &Path, subject: &str) {
    ok(
        sock,
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "loyalty_programme",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
}

fn check(sock: &Path, subject: &str) -> serde_json::Value {
    ok(
        sock,
        &[
            "consent",
            "check",
            "--subject",
            subject,
            "--purpose",
            "loyalty_programme",
        ],
    )
}

/// Whether `sock`'s office holds a record of `subject` (its history lists an event).
fn holds(sock: &Path, subject: &str) -> bool {
    ok(sock, &["consent", "history", "--subject", subject])
        .as_array()
        .is_some_and(|a| !a.is_empty())
}

#[test]
fn a_purpose_one_office_adds_is_checked_withdrawn_and_objected_to_everywhere() {
    let net = Net::init("de,nl");
    net.edit_config("de", |t| {
        assert!(t.contains("[consent]"), "{t}");
        t.replace(
            "[consent]",
            "[consent]\npurposes = [\"loyalty_programme\"]\nmarketing_purposes = [\"loyalty_programme\"]",
        )
    });
    let _d: Vec<Daemon> = ["de", "nl"].iter().map(|o| net.start(o)).collect();
    let (de, nl) = (net.socket("de"), net.socket("nl"));

    grant(&de, "objects@example.com");
    grant(&de, "withdraws@example.com");
    wait_until("de's grants reach nl", ARRIVAL, || {
        holds(&nl, "objects@example.com") && holds(&nl, "withdraws@example.com")
    });

    // nl's config does not name the purpose; it holds records of it for these subjects.
    assert_eq!(check(&nl, "objects@example.com")["granted"], true);

    // An objection completed at nl withdraws it: de's config counts it as marketing, and the
    // record says so (an objection to direct marketing is absolute, Art. 21(3)).
    let id = ok(
        &nl,
        &[
            "request",
            "open",
            "--subject",
            "objects@example.com",
            "--kind",
            "objection",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = ok(&nl, &["request", "close", &id, "--outcome", "completed"]);
    assert_eq!(closed["status"], "completed", "{closed}");
    assert_eq!(
        closed["withdrawn"],
        serde_json::json!(["loyalty_programme"]),
        "{closed}"
    );
    assert_eq!(check(&nl, "objects@example.com")["granted"], false);

    // A withdrawal recorded at nl.
    let withdrawn = ok(
        &nl,
        &[
            "consent",
            "withdraw",
            "--subject",
            "withdraws@example.com",
            "--purpose",
            "loyalty_programme",
        ],
    );
    assert!(withdrawn["note"].is_null(), "a grant is held: {withdrawn}");
    assert_eq!(check(&nl, "withdraws@example.com")["granted"], false);

    // Both reach the granting office, which stops answering "granted".
    wait_until("nl's withdrawals reach de", ARRIVAL, || {
        check(&de, "objects@example.com")["granted"] == false
            && check(&de, "withdraws@example.com")["granted"] == false
    });

    // A purpose nl neither configures nor holds a record of for the subject stays refused.
    for op in ["check", "withdraw"] {
        let e = err(
            &nl,
            &[
                "consent",
                op,
                "--subject",
                "nobody@example.com",
                "--purpose",
                "loyalty_programme",
            ],
        );
        assert!(
            e.contains("unknown purpose \"loyalty_programme\"") && e.contains("marketing"),
            "{e}"
        );
    }
}
