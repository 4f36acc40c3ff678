//! A withdrawal recorded at an office the grant had not reached yet is a record of its own, and
//! `consent check` answers "not granted" from it across the two records. Retention used to file
//! such a withdrawal-only record under `basis-end` (or `marketing`) and delete it at the next
//! pass, alone: the grant's record then answered "granted" again, at every office (found by an
//! exploratory session). Now the withdrawal is kept as consent proof, goes only together with the
//! grants it decides for once they are due as withdrawn, and waits while one is not.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const SUBJECT: &str = "pat@example.com";

fn granted(net: &Net, office: &str, purpose: &str) -> bool {
    let v = ok(
        &net.socket(office),
        &[
            "consent",
            "check",
            "--subject",
            SUBJECT,
            "--purpose",
            purpose,
        ],
    );
    v["granted"].as_bool().expect("granted is a boolean")
}

fn status(net: &Net, office: &str) -> Value {
    ok(&net.socket(office), &["status"])
}

fn retention_run(net: &Net, office: &str, as_of: &str) -> Value {
    ok(&net.socket(office), &["retention", "run", "--as-of", as_of])
}

fn history(net: &Net, office: &str) -> Vec<Value> {
    ok(
        &net.socket(office),
        &["consent", "history", "--subject", SUBJECT],
    )
    .as_array()
    .expect("history is an array")
    .clone()
}

fn converged(net: &Net) {
    wait_until("de and uk converge", Duration::from_secs(90), || {
        let (de, uk) = (status(net, "de"), status(net, "uk"));
        de["digest"] == uk["digest"] && de["tombstones"] == uk["tombstones"]
    });
}

fn grant(net: &Net, office: &str, purpose: &str, basis: &str, at: &str) {
    ok(
        &net.socket(office),
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            purpose,
            "--basis",
            basis,
            "--evidence",
            "web form v3",
            "--at",
            at,
        ],
    );
}

fn purposes_left(net: &Net, office: &str) -> Vec<String> {
    history(net, office)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["purpose"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_withdrawal_recorded_before_its_grant_arrived_keeps_the_consent_withdrawn() {
    let net = Net::init("de,uk");
    // Passes as of years to come.
    net.allow_future_passes("de");
    net.allow_future_passes("uk");
    // de grants while uk is down; uk records its own while de is down: two records per purpose.
    // `support`: granted under consent at de, only withdrawn at uk. `service_analytics`: granted
    // under consent at de; at uk granted earlier on legitimate interest and withdrawn, a record
    // the `basis-end` rule deletes once withdrawn, while de's grant, as withdrawn then, is
    // consent proof for five years. (A marketing purpose would not do: its record ending in an
    // objection is consent proof too.)
    let de = net.start("de");
    grant(&net, "de", "support", "consent", "2026-12-01T09:00:00Z");
    grant(
        &net,
        "de",
        "service_analytics",
        "consent",
        "2026-12-01T09:00:00Z",
    );
    assert!(de.stop());
    let uk = net.start("uk");
    grant(
        &net,
        "uk",
        "service_analytics",
        "legitimate_interest",
        "2026-11-30T09:00:00Z",
    );
    for purpose in ["support", "service_analytics"] {
        ok(
            &net.socket("uk"),
            &[
                "consent",
                "withdraw",
                "--subject",
                SUBJECT,
                "--purpose",
                purpose,
                "--at",
                "2026-12-02T09:00:00Z",
            ],
        );
    }
    let _de = net.start("de");
    converged(&net);
    for office in ["de", "uk"] {
        for purpose in ["support", "service_analytics"] {
            assert!(!granted(&net, office, purpose), "{office} {purpose}");
        }
    }
    assert_eq!(
        history(&net, "de").len(),
        5,
        "three grants, two withdrawals"
    );

    // A year and a month on: uk's service_analytics record is due, but de's grant, which its withdrawal
    // decides for, is not: both stay. `support`'s withdrawal is consent proof (not an ended
    // basis, due at once): nothing else is due.
    let year = retention_run(&net, "de", "2028-01-01T00:00:00Z");
    assert_eq!(deleted_besides_transfer_records(&year), 0, "{year}");
    assert_eq!(year["by_reason"]["kept/withdrawal-decides"], 1, "{year}");
    converged(&net);
    for office in ["de", "uk"] {
        for purpose in ["support", "service_analytics"] {
            assert!(
                !granted(&net, office, purpose),
                "{office} {purpose} after {year}"
            );
        }
    }

    // Five years after the withdrawals, de's grants are due as withdrawn then: each goes with
    // the withdrawal that decides for it, at uk's pass, and the tombstones reach de.
    let five = retention_run(&net, "uk", "2032-01-01T00:00:00Z");
    assert_eq!(deleted_besides_transfer_records(&five), 4, "{five}");
    assert_eq!(five["by_reason"]["retention/consent-proof"], 3, "{five}");
    assert_eq!(five["by_reason"]["retention/basis-end"], 1, "{five}");
    converged(&net);
    for office in ["de", "uk"] {
        for purpose in ["support", "service_analytics"] {
            assert!(
                !granted(&net, office, purpose),
                "{office} {purpose} after {five}"
            );
        }
        assert_eq!(
            purposes_left(&net, office),
            Vec::<String>::new(),
            "{office}"
        );
    }
    drop(uk);
}
