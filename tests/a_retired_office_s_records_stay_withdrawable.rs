//! An office leaves the network by being retired in the roster, not removed: its key still
//! verifies what it signed, so a person whose consent it recorded can still withdraw at any
//! other office, and bundles exported there still verify. The retired office no longer runs or
//! syncs. A roster that goes back to a lower serial, drops the office outright or re-admits it is
//! refused at start with one line.
mod common;
use common::audit::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const SUBJECT: &str = "joost@example.nl";

fn start_error(net: &Net, office: &str) -> String {
    let out = Command::new(CONSENTD)
        .arg("--config")
        .arg(net.config(office))
        .env("CONSENTD_LOG", "off")
        .output()
        .unwrap();
    assert_error(&out)
}

/// `consentctl --json ARGS` offline (roster commands).
fn offline(args: &[&str]) -> Value {
    let out = Command::new(CONSENTCTL)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consentctl {args:?}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn consent(net: &Net, office: &str, action: &str) -> Value {
    let mut args = vec![
        "consent",
        action,
        "--subject",
        SUBJECT,
        "--purpose",
        "marketing",
    ];
    if action == "grant" {
        args.extend(["--basis", "consent", "--evidence", "web form v3"]);
    }
    ok(&net.socket(office), &args)
}

fn log_size(net: &Net, office: &str, of: &str) -> u64 {
    ok(&net.socket(office), &["status"])["logs"][of]
        .as_u64()
        .unwrap_or(0)
}

/// A config's text without its `[[peer]]` sections.
fn without_peers(config: String) -> String {
    let mut out = String::new();
    let mut in_peer = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_peer = line.trim() == "[[peer]]";
        }
        if !in_peer {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn sign(net: &Net, roster: &Path) {
    let root_key = net.path().join("root.key");
    offline(&[
        "roster",
        "sign",
        "--roster",
        roster.to_str().unwrap(),
        "--root-key",
        root_key.to_str().unwrap(),
    ]);
}

#[test]
fn a_retired_office_s_records_stay_withdrawable_and_its_bundles_verify() {
    let net = Net::init("de,nl");
    let roster = net.path().join("roster.json");
    let original = std::fs::read_to_string(&roster).unwrap();
    let de = net.start("de");
    let nl = net.start("nl");

    // nl records a grant; de receives it, and nl's checkpoint logging it.
    consent(&net, "nl", "grant");
    export(&net, "nl", "nl-before.jsonl"); // signs and pushes nl's checkpoint now
    let nl_log = log_size(&net, "nl", "nl");
    assert!(nl_log >= 1);
    wait_until("de holds nl's record and log", TIMEOUT, || {
        consent(&net, "de", "check")["granted"] == true && log_size(&net, "de", "nl") >= nl_log
    });
    assert!(nl.stop() && de.stop());

    // nl is retired: a new roster (serial + 1), signed and installed (one file for both here).
    let serial = serde_json::from_str::<Value>(&original).unwrap()["roster"]["serial"]
        .as_u64()
        .unwrap();
    let retired = offline(&[
        "roster",
        "retire",
        "--roster",
        roster.to_str().unwrap(),
        "--office",
        "nl",
    ]);
    assert_eq!(retired["serial"], serial + 1, "{retired}");
    sign(&net, &roster);
    let retired_roster = std::fs::read_to_string(&roster).unwrap();
    assert!(retired_roster.contains("\"retired\": true"));

    // nl does not run on it.
    let e = start_error(&net, "nl");
    assert!(e.contains("nl is retired"), "{e}");

    // At de: nl's record still reads, and the person can withdraw.
    let de = net.start("de");
    assert_eq!(consent(&net, "de", "check")["granted"], true);
    consent(&net, "de", "withdraw");
    assert_eq!(consent(&net, "de", "check")["granted"], false);
    // Bundles exported at de hold nl's checkpoint and verify offline against the root key.
    let bundle = export(&net, "de", "de-after.jsonl");
    verified(&net, "de", &bundle);
    assert!(
        de.log_text().contains("retired"),
        "de says why it does not sync with nl: {}",
        de.log_text()
    );
    assert!(de.stop());

    // The older roster (nl active, lower serial) is refused at start, with one line.
    std::fs::write(&roster, &original).unwrap();
    let e = start_error(&net, "de");
    assert!(
        e.contains(&format!("serial {serial}")) && e.contains("allow_roster_rollback"),
        "{e}"
    );

    // A roster that drops nl outright, even at a higher serial, is refused and points to retire.
    let mut dropped: Value = serde_json::from_str(&retired_roster).unwrap();
    dropped["roster"]["serial"] = (serial + 5).into();
    dropped["roster"]["offices"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["id"] != "nl");
    dropped["signature"] = Value::Null;
    std::fs::write(&roster, serde_json::to_vec_pretty(&dropped).unwrap()).unwrap();
    sign(&net, &roster);
    let config = std::fs::read_to_string(net.config("de")).unwrap();
    net.edit_config("de", without_peers);
    let e = start_error(&net, "de");
    std::fs::write(net.config("de"), config).unwrap();
    assert!(
        e.contains("drops office nl") && e.contains("roster retire --office nl"),
        "{e}"
    );

    // The retired roster starts again, and de still serves nl's (now withdrawn) record.
    std::fs::write(&roster, &retired_roster).unwrap();
    let _de = net.start("de");
    assert_eq!(consent(&net, "de", "check")["granted"], false);
}
