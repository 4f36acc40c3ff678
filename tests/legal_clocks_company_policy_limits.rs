//! The privacy statement §8.4 promises an answer within one month of receipt, two at most with
//! an extension, wherever the person is. Where no law sets the deadline (company policy), those
//! are the limits: `[clock] company_policy_days` accepted 365, and a notified extension date
//! (`--until`) up to 366 days on (found by an exploratory session).
mod common;
use common::*;
use std::process::Command;

#[test]
fn company_policy_days_longer_than_a_month_are_refused() {
    let net = Net::init("cn");
    net.edit_config("cn", |t| {
        t.replace("company_policy_days = 30", "company_policy_days = 365")
    });
    let out = Command::new(CONSENTD)
        .arg("check-config")
        .arg("--config")
        .arg(net.config("cn"))
        .env("CONSENTD_LOG", "off")
        .output()
        .unwrap();
    let e = assert_error(&out);
    assert!(
        e.contains("company_policy_days = 365") && e.contains("§8.4"),
        "{e}"
    );
    net.edit_config("cn", |t| {
        t.replace("company_policy_days = 365", "company_policy_days = 31")
    });
    let _d = net.start("cn");
    let r = ok(
        &net.socket("cn"),
        &[
            "request",
            "open",
            "--subject",
            "li@example.cn",
            "--kind",
            "access",
            "--received",
            "2026-03-01T00:00:00Z",
        ],
    );
    assert_eq!(r["due"], "2026-04-01");
}

#[test]
fn company_policy_extensions_end_two_months_after_receipt() {
    let net = Net::init("cn");
    let _d = net.start("cn");
    let sock = net.socket("cn");
    let open = || {
        ok(
            &sock,
            &[
                "request",
                "open",
                "--subject",
                "li@example.cn",
                "--kind",
                "access",
                "--received",
                "2026-03-01T00:00:00Z",
            ],
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let extend = |id: &str, until: &str| {
        ctl(
            &sock,
            &[
                "request",
                "extend",
                id,
                "--reason",
                "records in many systems",
                "--at",
                "2026-03-20T00:00:00Z",
                "--until",
                until,
            ],
        )
    };
    let id = open();
    let e = assert_error(&extend(&id, "2027-03-01"));
    assert!(
        e.contains("2026-05-01") && e.contains("privacy statement §8.4"),
        "{e}"
    );
    let e = assert_error(&extend(&id, "2026-05-02"));
    assert!(e.contains("§8.4"), "{e}");
    let ext = extend(&id, "2026-05-01");
    assert!(ext.status.success(), "{}", text(&ext.stderr));
    let ext: serde_json::Value = serde_json::from_slice(&ext.stdout).unwrap();
    assert_eq!(ext["due"], "2026-05-01");
    assert_eq!(ext["due_rule"], "pipl-company-policy-notified-date");
}
