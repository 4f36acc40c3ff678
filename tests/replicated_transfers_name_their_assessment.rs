//! Replication records every cross-border move it makes, and `audit report` counts the moves
//! that lack a transfer impact assessment. Before, no config could name one: every move from
//! an EEA office under SCCs was recorded without a TIA, and every move between two offices
//! outside the EEA under the intra-group agreement was counted as lacking one too (nearly every
//! route of the demo network's report, found reviewing the report). Now `[transfer.assessments]`
//! names the assessment on file per destination, replication records it with every move whose
//! rule needs one, `check-config` and the daemon's start warn of routes left without one, and
//! the report asks for a TIA only where data leaves GDPR (or UK GDPR, or PIPL) protection.
mod common;
use common::audit::{audit_report, verified};
use common::*;
use serde_json::Value;
use std::time::Duration;

const REFERENCE: &str = "TIA-2026-07 (US, mailing and hosting)";

/// The moves `office` recorded to `to_office` (replicated records: every office lists them).
fn moves(net: &Net, at: &str, office: &str, to_office: &str) -> Vec<Value> {
    ok(&net.socket(at), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["status"] == "transferred" && t["office"] == office && t["to_office"] == to_office
        })
        .cloned()
        .collect()
}

fn check_config(net: &Net, office: &str) -> std::process::Output {
    std::process::Command::new(CONSENTD)
        .args(["check-config", "--config"])
        .arg(net.config(office))
        .output()
        .unwrap()
}

fn grant(net: &Net, office: &str, subject: &str) {
    ok(
        &net.socket(office),
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
}

#[test]
fn replicated_moves_carry_the_configured_assessment_and_the_report_asks_only_where_needed() {
    let net = Net::init("de,us,sg");
    net.edit_config("de", |t| {
        format!("{t}\n[transfer.assessments]\nUS = \"{REFERENCE}\"\n")
    });

    // check-config names the route left without an assessment (SG), and only that one.
    let checked = check_config(&net, "de");
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let warnings = text(&checked.stderr);
    assert_eq!(warnings.lines().count(), 1, "{warnings}");
    assert!(
        warnings.starts_with("warning: office sg (SG) receives this office's records under scc"),
        "{warnings}"
    );
    // A bad reference is refused with the config's name for it.
    net.edit_config("us", |t| {
        format!("{t}\n[transfer.assessments]\nUSA = \"x\"\n")
    });
    let refused = check_config(&net, "us");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).starts_with("error: ")
            && text(&refused.stderr).contains("transfer.assessments: \"USA\""),
        "{}",
        text(&refused.stderr)
    );
    net.edit_config("us", |t| {
        t.replace("\n[transfer.assessments]\nUSA = \"x\"\n", "")
    });

    let d: Vec<Daemon> = ["de", "us", "sg"].iter().map(|o| net.start(o)).collect();
    // Beside the running office too (the database is not checked then: the warning was lost).
    let beside = check_config(&net, "de");
    assert!(beside.status.success(), "{}", text(&beside.stderr));
    assert!(
        text(&beside.stdout).contains("in use"),
        "{}",
        text(&beside.stdout)
    );
    assert_eq!(text(&beside.stderr), warnings);
    grant(&net, "de", "anna@example.de");
    grant(&net, "us", "bob@example.com");

    wait_until(
        "de's moves to us and sg and us's to de and sg are recorded and replicated to de",
        Duration::from_secs(120),
        || {
            [("de", "us"), ("de", "sg"), ("us", "de"), ("us", "sg")]
                .iter()
                .all(|(from, to)| !moves(&net, "de", from, to).is_empty())
        },
    );
    let to_us = moves(&net, "de", "de", "us");
    assert_eq!(to_us[0]["mechanism"], "scc", "{to_us:?}");
    assert_eq!(to_us[0]["tia"], REFERENCE, "{to_us:?}");
    let to_sg = moves(&net, "de", "de", "sg");
    assert_eq!(to_sg[0]["mechanism"], "scc", "{to_sg:?}");
    assert_eq!(to_sg[0]["tia"], Value::Null, "{to_sg:?}");
    let us_to_de = moves(&net, "de", "us", "de");
    assert_eq!(us_to_de[0]["mechanism"], "bcr", "{us_to_de:?}");
    assert_eq!(us_to_de[0]["tia"], Value::Null, "{us_to_de:?}");

    // The daemon warned of the route at start; its log names no person.
    let log = d[0].log_text();
    assert!(
        log.contains("office sg (SG) receives this office's records under scc"),
        "{log}"
    );
    assert!(!log.contains("office us (US) receives"), "{log}");
    assert!(!log.contains("anna@"), "personal data in the log");

    // The report: de→sg lacks its assessment; de→us has one; us's intra-group moves need none.
    // Once each office's checkpoint logs its moves (until then an export leaves them out).
    let bundle = net.path().join("bundle.jsonl");
    wait_until(
        "an export from de that leaves nothing out",
        Duration::from_secs(60),
        || {
            let v = ok(
                &net.socket("de"),
                &["audit", "export", "--out", bundle.to_str().unwrap()],
            );
            v["not_yet_logged"] == 0
        },
    );
    verified(&net, "de", &bundle);
    let rep = audit_report(&net, "de", &bundle);
    let row = |office: &str, to: &str| -> Value {
        rep["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["office"] == office && r["to"] == to)
            .cloned()
            .unwrap_or_else(|| panic!("no {office}→{to} row: {rep}"))
    };
    assert_eq!(row("de", "SG")["without_tia"], 1, "{rep}");
    assert_eq!(row("de", "US")["without_tia"], 0, "{rep}");
    assert_eq!(row("us", "DE")["without_tia"], 0, "{rep}");
    assert_eq!(row("us", "SG")["without_tia"], 0, "{rep}");
    for r in rep["transfers"].as_array().unwrap() {
        assert_eq!(r["without_mechanism"], 0, "{rep}");
    }
}
