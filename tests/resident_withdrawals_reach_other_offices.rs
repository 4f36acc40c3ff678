//! A withdrawal recorded at cn before the grant reached cn starts a record of cn's own, which
//! China's data localisation keeps in China: de went on answering "granted" for good, while the
//! person had withdrawn (found by two exploratory sessions). Now, once the grant's record
//! arrives at cn, cn records the same withdrawal, at its original time, onto that record, which
//! travels: de answers "not granted", and cn's own record still never leaves China.
mod common;
use common::*;
use std::time::Duration;

const SUBJECT: &str = "kim@example.com";

fn check(net: &Net, office: &str) -> serde_json::Value {
    ok(
        &net.socket(office),
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
fn a_withdrawal_cn_recorded_before_the_grant_arrived_reaches_the_granting_office() {
    let net = Net::init("de,cn");
    // de grants while cn is down.
    let de = net.start("de");
    let granted = ok(
        &net.socket("de"),
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
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(de.stop());
    // cn, cut off from de, records the withdrawal: a record of its own.
    let _cn = net.start("cn");
    let withdrawn = ok(
        &net.socket("cn"),
        &[
            "consent",
            "withdraw",
            "--subject",
            SUBJECT,
            "--purpose",
            "marketing",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(withdrawn, granted, "cn did not hold the grant's record");

    let _de = net.start("de");
    wait_until("de answers not granted", Duration::from_secs(120), || {
        check(&net, "de")["granted"] == false
    });
    // de's answer comes from its own record, which now holds cn's withdrawal; cn's record
    // stayed in China.
    assert_eq!(check(&net, "de")["record"], granted.as_str());
    let history = ok(
        &net.socket("de"),
        &["consent", "history", "--subject", SUBJECT],
    );
    let text = history.to_string();
    assert!(
        !text.contains(&withdrawn),
        "cn's own record reached de: {text}"
    );
    assert_eq!(check(&net, "cn")["granted"], false);
}
