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

/// A hold set at cn was cn's own record, kept in China: de never saw it, and de's erasure of
/// the subject deleted the held records at de and, by its tombstone, at cn too (found by two
/// exploratory sessions). Now cn copies its hold for de, whose records of the subject cn holds:
/// de's erasure keeps them, and `hold clear` at cn clears the copy too.
#[test]
fn a_hold_set_at_cn_keeps_the_subject_s_records_at_the_office_they_came_from() {
    let subject = "held@example.com";
    let net = Net::init("de,cn");
    let _de = net.start("de");
    let _cn = net.start("cn");
    ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "support",
            "--basis",
            "contract",
        ],
    );
    let holds = |office: &str| {
        ok(
            &net.socket(office),
            &["subject", "export", "--subject", subject],
        )["holds"]
            .as_array()
            .unwrap()
            .clone()
    };
    let consents = |office: &str| {
        ok(
            &net.socket(office),
            &["subject", "export", "--subject", subject],
        )["consents"]
            .as_array()
            .unwrap()
            .len()
    };
    wait_until("cn holds de's record", Duration::from_secs(120), || {
        consents("cn") == 1
    });
    ok(
        &net.socket("cn"),
        &[
            "hold",
            "set",
            "--subject",
            subject,
            "--reason",
            "PRC court preservation order 2026-77",
        ],
    );
    wait_until("cn's hold reaches de", Duration::from_secs(120), || {
        !holds("de").is_empty()
    });
    let copy = holds("de")[0].clone();
    assert_eq!(copy["office"], "cn", "{copy}");
    assert_eq!(copy["origin"], "de", "{copy}");

    // de's erasure keeps what the hold keeps, at de and so at cn.
    let id = ok(
        &net.socket("de"),
        &["request", "open", "--subject", subject, "--kind", "erasure"],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = ok(
        &net.socket("de"),
        &["request", "close", &id, "--outcome", "completed"],
    );
    assert_eq!(closed["erasure"]["deleted"], 0, "{closed}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(consents("de"), 1);
    assert_eq!(consents("cn"), 1);

    // Cleared at cn, the copy is cleared too, and de's next erasure may delete.
    ok(&net.socket("cn"), &["hold", "clear", "--subject", subject]);
    wait_until(
        "the copy is cleared at de",
        Duration::from_secs(120),
        || holds("de").iter().all(|h| !h["cleared_at"].is_null()),
    );
}
