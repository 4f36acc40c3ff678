//! An erasure completed while a legal hold covers the subject is postponed, not dropped (GDPR
//! Art. 17(3)(e)): it deleted nothing, answered `completed`, and was never carried out once the
//! hold was lifted; the records went only at their ordinary retention a year later (found by
//! an exploratory session). Now the erasure's report lists what the hold alone keeps
//! (`postponed`), and once the hold ends (at the office that clears it, and at every office
//! its clearing reaches) the erasure is carried out: what no other legal duty keeps is deleted,
//! and a grant the person gave since stays. While another hold still covers the subject,
//! nothing is deleted.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn export(net: &Net, office: &str, subject: &str) -> Value {
    ok(
        &net.socket(office),
        &["subject", "export", "--subject", subject],
    )
}

fn holds(net: &Net, office: &str, subject: &str) -> Vec<Value> {
    export(net, office, subject)["holds"]
        .as_array()
        .unwrap()
        .clone()
}

fn consent_ids(net: &Net, office: &str, subject: &str) -> Vec<String> {
    export(net, office, subject)["consents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

fn grant(net: &Net, office: &str, subject: &str, purpose: &str, basis: &str) -> String {
    ok(
        &net.socket(office),
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
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn granted(net: &Net, office: &str, subject: &str, purpose: &str) -> bool {
    ok(
        &net.socket(office),
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

/// The exploratory session's case: the hold set at de, the erasure completed at uk, the hold
/// cleared at de. de carries out uk's erasure on its own records, and uk, the erasing office,
/// when the clearing reaches it.
#[test]
fn an_erasure_a_hold_postponed_is_carried_out_everywhere_once_the_hold_is_cleared() {
    let subject = "hank@example.com";
    let net = Net::init("de,uk");
    let _de = net.start("de");
    let _uk = net.start("uk");
    let c = |office: &str, args: &[&str]| ok(&net.socket(office), args);
    let sales = ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "sales",
            "--basis",
            "legitimate_interest",
            "--at",
            "2025-01-10T10:00:00Z",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Consent proof: a legal duty keeps it whatever the hold.
    let proof = grant(&net, "de", subject, "marketing", "consent");
    // Granted again after the erasure: the person's new dealings.
    let personal = grant(
        &net,
        "de",
        subject,
        "personalisation",
        "legitimate_interest",
    );
    wait_until("uk holds de's records", Duration::from_secs(120), || {
        consent_ids(&net, "uk", subject).len() == 3
    });
    c(
        "de",
        &[
            "hold",
            "set",
            "--subject",
            subject,
            "--reason",
            "litigation 2026-17",
        ],
    );
    wait_until("the hold reaches uk", Duration::from_secs(120), || {
        !holds(&net, "uk", subject).is_empty()
    });

    let request = c(
        "uk",
        &["request", "open", "--subject", subject, "--kind", "erasure"],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = c(
        "uk",
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(closed["status"], "completed", "{closed}");
    let erasure = &closed["erasure"];
    assert_eq!(erasure["deleted"], 0, "{erasure}");
    // What the hold alone keeps is postponed, and the reason says so.
    let postponed: Vec<&str> = erasure["postponed"]
        .as_array()
        .unwrap_or_else(|| panic!("no postponed in {erasure}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(postponed.contains(&sales.as_str()), "{erasure}");
    assert!(!postponed.contains(&proof.as_str()), "{erasure}");
    let kept_sales = erasure["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == sales.as_str())
        .unwrap_or_else(|| panic!("sales not kept: {erasure}"))
        .clone();
    assert_eq!(kept_sales["rule"], "legal-hold", "{kept_sales}");
    assert!(
        kept_sales["why"].as_str().unwrap().contains("17(3)(e)"),
        "{kept_sales}"
    );

    // de carries uk's erasure out under the hold: nothing deleted.
    wait_until(
        "de holds the completed request",
        Duration::from_secs(120),
        || {
            export(&net, "de", subject)["requests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == request.as_str() && r["status"] == "completed")
        },
    );
    wait_until(
        "uk's withdrawals reach de",
        Duration::from_secs(120),
        || !granted(&net, "de", subject, "personalisation"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(consent_ids(&net, "de", subject).len(), 3);
    // The person grants personalisation again: new dealings, onto the record made before.
    grant(
        &net,
        "de",
        subject,
        "personalisation",
        "legitimate_interest",
    );
    wait_until("uk holds the new grant", Duration::from_secs(120), || {
        granted(&net, "uk", subject, "personalisation")
    });

    let cleared = c("de", &["hold", "clear", "--subject", subject]);
    assert_eq!(cleared["held"], false, "{cleared}");
    let carried = cleared["erasures_carried_out"].as_array().unwrap();
    assert_eq!(carried.len(), 1, "{cleared}");
    assert_eq!(carried[0]["request"], request.as_str(), "{cleared}");
    assert_eq!(carried[0]["deleted"], 1, "{cleared}");

    for office in ["de", "uk"] {
        wait_until(
            &format!("the sales record goes at {office}"),
            Duration::from_secs(120),
            || !consent_ids(&net, office, subject).contains(&sales),
        );
    }
    for office in ["de", "uk"] {
        let left = consent_ids(&net, office, subject);
        assert!(left.contains(&proof), "{office}: {left:?}");
        assert!(left.contains(&personal), "{office}: {left:?}");
        assert!(
            granted(&net, office, subject, "personalisation"),
            "{office}"
        );
        assert!(!granted(&net, office, subject, "marketing"), "{office}");
    }
    // Done once: clearing again finds no hold, and a pass deletes nothing more of it.
    let _ = ctl(&net.socket("de"), &["hold", "clear", "--subject", subject]);
    c("de", &["retention", "run"]);
    assert_eq!(consent_ids(&net, "de", subject).len(), 2);
}

/// While a second hold covers the subject, nothing is deleted: cn's hold reaches de as a copy,
/// and de's `hold clear` (which clears every hold de holds) ends de's own hold but not cn's,
/// whose copy cn writes again. Once cn clears its hold, de carries its erasure out.
#[test]
fn a_postponed_erasure_waits_for_every_hold_on_the_subject() {
    let subject = "held-twice@example.com";
    let net = Net::init("de,cn");
    let de = net.start("de");
    let _cn = net.start("cn");
    let c = |office: &str, args: &[&str]| ok(&net.socket(office), args);
    let support = grant(&net, "de", subject, "support", "contract");
    wait_until("cn holds de's record", Duration::from_secs(120), || {
        consent_ids(&net, "cn", subject).len() == 1
    });
    c(
        "cn",
        &[
            "hold",
            "set",
            "--subject",
            subject,
            "--reason",
            "PRC court preservation order 2026-78",
        ],
    );
    wait_until("cn's hold reaches de", Duration::from_secs(120), || {
        !holds(&net, "de", subject).is_empty()
    });
    c(
        "de",
        &[
            "hold",
            "set",
            "--subject",
            subject,
            "--reason",
            "litigation 2026-18",
        ],
    );
    let request = c(
        "de",
        &["request", "open", "--subject", subject, "--kind", "erasure"],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = c(
        "de",
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(closed["erasure"]["deleted"], 0, "{closed}");
    assert_eq!(
        closed["erasure"]["postponed"],
        serde_json::json!([support]),
        "{closed}"
    );

    let cleared = c("de", &["hold", "clear", "--subject", subject]);
    assert_eq!(
        cleared["erasures_carried_out"],
        serde_json::json!([]),
        "{cleared}"
    );
    wait_until("cn writes its copy again", Duration::from_secs(120), || {
        holds(&net, "de", subject)
            .iter()
            .any(|h| h["cleared_at"].is_null())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        consent_ids(&net, "de", subject),
        vec![support.clone()],
        "{}",
        de.log_text()
    );

    c("cn", &["hold", "clear", "--subject", subject]);
    wait_until(
        "de carries out its erasure once cn's hold ends",
        Duration::from_secs(120),
        || consent_ids(&net, "de", subject).is_empty(),
    );
    wait_until(
        "and cn applies de's deletion",
        Duration::from_secs(120),
        || consent_ids(&net, "cn", subject).is_empty(),
    );
}
