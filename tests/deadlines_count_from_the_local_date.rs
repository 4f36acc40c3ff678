//! Legal clocks count from the date where the jurisdiction is, not the UTC date: a request
//! received at 20:00 in California (04:00 UTC the next day) was due a day late, and one received
//! at 07:00 in Singapore a day early. "Today" for `request list --overdue`/`--due-within` is that
//! zone's date too. Jurisdictions spanning several zones (US, AU) use the office's own,
//! `[clock] time_zone`, an IANA name checked at start.
mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn deadlines_and_overdue_lists_go_by_the_jurisdiction_s_local_date() {
    let net = Net::init("us");
    let config = std::fs::read_to_string(net.config("us")).unwrap();
    assert!(
        config.contains("time_zone = \"America/New_York\""),
        "network init names the office's zone: {config}"
    );
    let _d = net.start("us");
    let sock = net.socket("us");
    let open = |jurisdiction: &str, received: &str| {
        ok(
            &sock,
            &[
                "request",
                "open",
                "--subject",
                "amy@example.com",
                "--kind",
                "access",
                "--jurisdiction",
                jurisdiction,
                "--received",
                received,
            ],
        )
    };

    // 20:00 on 31 January in California: 45 days from 31 January.
    let ca = open("US-CA", "2026-02-01T04:00:00Z");
    assert_eq!(ca["due"], "2026-03-17", "{ca}");
    let why = ca["due_explanation"].as_str().unwrap();
    assert!(
        why.contains("received 2026-01-31 20:00 America/Los_Angeles"),
        "{why}"
    );
    let ca_id = ca["id"].as_str().unwrap().to_string();
    // Receipt confirmed, so the answer's due date is its next deadline.
    ok(
        &sock,
        &[
            "request",
            "update",
            &ca_id,
            "--status",
            "in_progress",
            "--at",
            "2026-02-02T18:00:00Z",
        ],
    );

    // 07:00 on 1 February in Singapore: 30 days from 1 February.
    let sg = open("SG", "2026-01-31T23:00:00Z");
    assert_eq!(sg["due"], "2026-03-03", "{sg}");
    let sg_id = sg["id"].as_str().unwrap().to_string();

    let list = |args: &[&str]| {
        let mut a = vec!["request", "list"];
        a.extend_from_slice(args);
        ok(&sock, &a)
    };

    // 23:59 on 17 March in California (PDT, UTC-7) is 06:59 UTC on the 18th: due today, not
    // overdue.
    let overdue = list(&["--overdue", "--as-of", "2026-03-18T06:59:00Z"]);
    assert!(!ids(&overdue).contains(&ca_id), "{overdue}");
    let due_today = list(&["--due-within", "0d", "--as-of", "2026-03-18T06:59:00Z"]);
    assert!(ids(&due_today).contains(&ca_id), "{due_today}");
    let all = list(&["--as-of", "2026-03-18T06:59:00Z"]);
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == ca_id.as_str())
        .unwrap();
    assert_eq!(row["overdue"], false, "{row}");
    // A minute later it is 18 March there.
    let overdue = list(&["--overdue", "--as-of", "2026-03-18T07:00:00Z"]);
    assert!(ids(&overdue).contains(&ca_id), "{overdue}");

    // 23:59 on 3 March in Singapore is 15:59 UTC: not overdue; at 16:00 UTC it is 4 March there,
    // though still 3 March in UTC.
    let overdue = list(&["--overdue", "--as-of", "2026-03-03T15:59:00Z"]);
    assert!(!ids(&overdue).contains(&sg_id), "{overdue}");
    let overdue = list(&["--overdue", "--as-of", "2026-03-03T16:00:00Z"]);
    assert_eq!(ids(&overdue), vec![sg_id.clone()], "{overdue}");
    let soon = list(&["--due-within", "14d", "--as-of", "2026-03-03T16:00:00Z"]);
    assert_eq!(ids(&soon), vec![ca_id.clone()], "{soon}");
}

#[test]
fn an_unknown_time_zone_stops_the_daemon_and_check_config_with_one_line() {
    let net = Net::init("au");
    let config = std::fs::read_to_string(net.config("au")).unwrap();
    assert!(
        config.contains("time_zone = \"Australia/Sydney\""),
        "{config}"
    );
    net.edit_config("au", |t| {
        t.replace("\"Australia/Sydney\"", "\"Australia/Atlantis\"")
    });
    for args in [&["check-config", "--config"][..], &["--config"][..]] {
        let out = Command::new(CONSENTD)
            .args(args)
            .arg(net.config("au"))
            .env("CONSENTD_LOG", "off")
            .output()
            .unwrap();
        let e = assert_error(&out);
        assert!(
            e.contains("clock.time_zone") && e.contains("Australia/Atlantis") && e.contains("IANA"),
            "{args:?}: {e}"
        );
    }
    // An office in Perth (UTC+8) counts Australian requests by the date there.
    net.edit_config("au", |t| {
        t.replace("\"Australia/Atlantis\"", "\"Australia/Perth\"")
    });
    let _d = net.start("au");
    let r = ok(
        &net.socket("au"),
        &[
            "request",
            "open",
            "--subject",
            "bo@example.com.au",
            "--kind",
            "access",
            "--received",
            "2026-02-28T17:00:00Z",
        ],
    );
    assert_eq!(r["due"], "2026-03-31", "30 days from 1 March in Perth: {r}");
}
