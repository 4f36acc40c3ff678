//! Requests through their lifecycle on a real daemon, with each jurisdiction's clock: the issue's
//! acceptance example, the UK restart on identity, Singapore's notified date, and the ordering rules.
mod common;
use common::*;

fn open(
    sock: &std::path::Path,
    jurisdiction: &str,
    kind: &str,
    received: &str,
) -> serde_json::Value {
    ok(
        sock,
        &[
            "request",
            "open",
            "--subject",
            "amy@example.com",
            "--kind",
            kind,
            "--jurisdiction",
            jurisdiction,
            "--received",
            received,
        ],
    )
}

#[test]
fn the_acceptance_example_gb_and_california() {
    let net = Net::init("uk");
    let sock = net.socket("uk");
    let _d = net.start("uk");
    let gb = open(&sock, "GB", "access", "2026-03-31T09:00:00Z");
    assert_eq!(gb["due"], "2026-04-30");
    assert_eq!(gb["due_rule"], "uk-gdpr-art12-one-month");
    let ca = open(&sock, "US-CA", "access", "2026-03-31T09:00:00Z");
    assert_eq!(ca["due"], "2026-05-15");
    assert_eq!(ca["due_rule"], "ccpa-45-days");
    // The confirmation date is in the answer, as README shows (it was only in `request list`).
    assert_eq!(ca["confirm_by"], "2026-04-14", "{ca}");
    assert_eq!(gb["confirm_by"], serde_json::Value::Null, "{gb}");
    let ext = ok(
        &sock,
        &[
            "request",
            "extend",
            ca["id"].as_str().unwrap(),
            "--reason",
            "complex: records in 12 systems",
            "--at",
            "2026-04-20T00:00:00Z",
        ],
    );
    assert_eq!(ext["due"], "2026-06-29");
    assert_eq!(ext["due_rule"], "ccpa-45-day-extension");
    let ca2 = open(&sock, "US-CA", "access", "2026-03-31T09:00:00Z");
    let e = err(
        &sock,
        &[
            "request",
            "extend",
            ca2["id"].as_str().unwrap(),
            "--reason",
            "late",
            "--at",
            "2026-05-20T00:00:00Z",
        ],
    );
    assert!(e.contains("too late"), "{e}");

    // Due within N days means not overdue yet: both together listed nothing, silently.
    let e = err(
        &sock,
        &["request", "list", "--overdue", "--due-within", "30d"],
    );
    assert!(e.contains("cannot be used with"), "{e}");
    let overdue = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-05-01T00:00:00Z",
        ],
    );
    let ids: Vec<&str> = overdue
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [ca2["id"].as_str().unwrap(), gb["id"].as_str().unwrap()],
        "on 1 May the GB request is overdue, and the second California one for its receipt \
         confirmation (due 14 April, never recorded)"
    );
    assert_eq!(overdue[0]["confirmation_overdue"], true);
    assert_eq!(overdue[1]["confirmation_overdue"], false);

    // Closing it takes it off the overdue list; so does recording a step on the other.
    ok(
        &sock,
        &[
            "request",
            "close",
            gb["id"].as_str().unwrap(),
            "--outcome",
            "completed",
            "--at",
            "2026-05-02T00:00:00Z",
        ],
    );
    ok(
        &sock,
        &[
            "request",
            "update",
            ca2["id"].as_str().unwrap(),
            "--status",
            "in_progress",
            "--at",
            "2026-05-02T00:00:00Z",
        ],
    );
    let overdue = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-05-03T00:00:00Z",
        ],
    );
    assert!(overdue.as_array().unwrap().is_empty());
}

#[test]
fn uk_identity_received_restarts_the_clock() {
    let net = Net::init("uk");
    let sock = net.socket("uk");
    let _d = net.start("uk");
    let r = open(&sock, "GB", "access", "2026-03-31T09:00:00Z");
    let id = r["id"].as_str().unwrap();
    let e = err(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "identity_received",
            "--at",
            "2026-04-02T00:00:00Z",
        ],
    );
    assert!(e.contains("cannot move"), "nothing was asked yet: {e}");
    ok(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "identity_requested",
            "--at",
            "2026-04-01T00:00:00Z",
            "--note",
            "passport copy asked",
        ],
    );
    let got = ok(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "identity_received",
            "--at",
            "2026-04-10T12:00:00Z",
        ],
    );
    assert_eq!(
        got["due"], "2026-05-11",
        "one month from 10 Apr is Sunday 10 May: Monday 11 May"
    );
    assert!(got["due_explanation"]
        .as_str()
        .unwrap()
        .contains("restarted"));
    ok(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "in_progress",
            "--at",
            "2026-04-11T00:00:00Z",
        ],
    );
    // The extension then counts two months from the restart (privacy statement §8.4).
    let ext = ok(
        &sock,
        &[
            "request",
            "extend",
            id,
            "--reason",
            "numerous requests",
            "--at",
            "2026-04-20T00:00:00Z",
        ],
    );
    assert_eq!(ext["due"], "2026-06-10");
    let list = ok(&sock, &["request", "list"]);
    let statuses: Vec<&str> = list[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "received",
            "identity_requested",
            "identity_received",
            "in_progress",
            "extended"
        ]
    );

    // Extended first, then restarted: the extension still holds from the new start (the
    // restart gave the one-month deadline back; found by an exploratory session).
    let r2 = open(&sock, "GB", "access", "2026-03-31T09:00:00Z");
    let id2 = r2["id"].as_str().unwrap();
    let ext = ok(
        &sock,
        &[
            "request",
            "extend",
            id2,
            "--reason",
            "numerous requests",
            "--at",
            "2026-04-05T00:00:00Z",
        ],
    );
    assert_eq!(ext["due"], "2026-06-01", "31 May is a Sunday");
    let update = |status: &str, at: &str| {
        ok(
            &sock,
            &["request", "update", id2, "--status", status, "--at", at],
        )
    };
    update("identity_requested", "2026-04-06T00:00:00Z");
    let got = update("identity_received", "2026-04-10T12:00:00Z");
    assert_eq!(
        got["due"], "2026-06-10",
        "two months from the restart: {got}"
    );
    // Explained as announced when it was (it said the day the identity arrived).
    let explanation = got["due_explanation"].as_str().unwrap();
    assert!(
        explanation.contains("announced 2026-04-05"),
        "{explanation}"
    );

    // While a UK request waits for the person's identity its clock is stopped: neither overdue
    // nor due soon (it was listed OVERDUE; found by an exploratory session).
    let r3 = open(&sock, "GB", "access", "2026-03-02T09:00:00Z");
    let id3 = r3["id"].as_str().unwrap().to_string();
    let update3 = |status: &str, at: &str| {
        ok(
            &sock,
            &["request", "update", &id3, "--status", status, "--at", at],
        )
    };
    update3("identity_requested", "2026-03-03T00:00:00Z");
    let listed = |args: &[&str]| {
        ok(&sock, args)
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id3.as_str())
            .cloned()
    };
    let july = [
        "request",
        "list",
        "--overdue",
        "--as-of",
        "2026-07-15T00:00:00Z",
    ];
    assert!(listed(&july).is_none(), "a stopped clock is not overdue");
    let row = listed(&["request", "list", "--as-of", "2026-07-15T00:00:00Z"]).unwrap();
    assert_eq!(row["overdue"], false, "{row}");
    assert_eq!(row["clock_stopped"], true, "{row}");
    update3("identity_received", "2026-07-01T00:00:00Z");
    // Asked for after the due date, the deadline was already missed: it stays overdue.
    let r4 = open(&sock, "GB", "access", "2026-03-02T09:00:00Z");
    let id4 = r4["id"].as_str().unwrap().to_string();
    ok(
        &sock,
        &[
            "request",
            "update",
            &id4,
            "--status",
            "identity_requested",
            "--at",
            "2026-05-01T00:00:00Z",
        ],
    );
    let overdue = ok(&sock, &july);
    assert!(
        overdue
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id4.as_str()),
        "{overdue}"
    );
    let august = [
        "request",
        "list",
        "--overdue",
        "--as-of",
        "2026-08-15T00:00:00Z",
    ];
    assert!(
        listed(&august).is_some(),
        "its clock runs again from 1 July"
    );

    // Elsewhere the clock runs on from receipt.
    let de = open(&sock, "DE", "access", "2026-03-31T09:00:00Z");
    let de_id = de["id"].as_str().unwrap();
    ok(
        &sock,
        &[
            "request",
            "update",
            de_id,
            "--status",
            "identity_requested",
            "--at",
            "2026-04-01T00:00:00Z",
        ],
    );
    let got = ok(
        &sock,
        &[
            "request",
            "update",
            de_id,
            "--status",
            "identity_received",
            "--at",
            "2026-04-10T00:00:00Z",
        ],
    );
    assert!(
        got.get("due").is_none(),
        "no restart under EU GDPR here: {got}"
    );
}

#[test]
fn singapore_records_the_date_told_to_the_individual() {
    let net = Net::init("sg");
    let sock = net.socket("sg");
    let _d = net.start("sg");
    let r = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "tan@example.sg",
            "--kind",
            "access",
            "--received",
            "2026-03-31T09:00:00Z",
        ],
    );
    assert_eq!(r["due"], "2026-04-30");
    let id = r["id"].as_str().unwrap();
    let e = err(
        &sock,
        &[
            "request",
            "extend",
            id,
            "--reason",
            "archive retrieval",
            "--at",
            "2026-04-25T00:00:00Z",
        ],
    );
    assert!(e.contains("--until"), "{e}");
    let ext = ok(
        &sock,
        &[
            "request",
            "extend",
            id,
            "--reason",
            "archive retrieval",
            "--at",
            "2026-04-25T00:00:00Z",
            "--until",
            "2026-05-20",
        ],
    );
    assert_eq!(ext["due"], "2026-05-20");
    assert_eq!(ext["due_rule"], "pdpa-notified-date");
    // Terms of the PDPA in the export.
    let export = ok(&sock, &["subject", "export", "--subject", "tan@example.sg"]);
    assert_eq!(export["terms"]["data_subject"], "individual");
    assert_eq!(export["terms"]["processor"], "data intermediary");
    let human = ctl_human(&sock, &["subject", "export", "--subject", "tan@example.sg"]);
    assert!(human.contains("individual"), "{human}");
}

fn ctl_human(sock: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn lifecycle_times_are_ordered_and_within_bounds() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let r = open(&sock, "DE", "erasure", "2026-03-31T09:00:00Z");
    let id = r["id"].as_str().unwrap();
    let e = err(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "in_progress",
            "--at",
            "2026-03-30T00:00:00Z",
        ],
    );
    assert!(e.contains("before"), "{e}");
    ok(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "in_progress",
            "--at",
            "2026-04-05T00:00:00Z",
        ],
    );
    let e = err(
        &sock,
        &[
            "request",
            "close",
            id,
            "--outcome",
            "completed",
            "--at",
            "2026-04-02T00:00:00Z",
        ],
    );
    assert!(e.contains("in order"), "{e}");
    let e = err(
        &sock,
        &[
            "request",
            "update",
            id,
            "--status",
            "in_progress",
            "--at",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(e.contains("future"), "{e}");
    let e = err(&sock, &["request", "update", id, "--status", "completed"]);
    assert!(e.contains("status"), "{e}");
}

#[test]
fn due_within_lists_what_falls_due_soon() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let soon = open(&sock, "DE", "access", "2026-03-31T09:00:00Z"); // due 2026-04-30
    let later = open(&sock, "DE", "access", "2026-04-15T09:00:00Z"); // due 2026-05-15
    let past = open(&sock, "DE", "access", "2026-02-10T09:00:00Z"); // due 2026-03-10
    let rows = ok(
        &sock,
        &[
            "request",
            "list",
            "--due-within",
            "7d",
            "--as-of",
            "2026-04-25T00:00:00Z",
        ],
    );
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [soon["id"].as_str().unwrap()]);
    let rows = ok(
        &sock,
        &[
            "request",
            "list",
            "--due-within",
            "30",
            "--as-of",
            "2026-04-25T00:00:00Z",
        ],
    );
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(
        !rows
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == past["id"]),
        "overdue ones are --overdue's"
    );
    let _ = later;
    let e = err(&sock, &["request", "list", "--due-within", "soon"]);
    assert!(e.contains("due-within"), "{e}");
}

#[test]
fn the_daemon_warns_about_requests_falling_due_without_naming_anyone() {
    let net = Net::init("sg");
    let sock = net.socket("sg");
    let d = net.start("sg");
    // Singapore counts 30 calendar days: received 29 days ago falls due tomorrow.
    let received = (chrono::Utc::now() - chrono::Duration::days(29)).to_rfc3339();
    let soon = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "wei@example.sg",
            "--kind",
            "access",
            "--received",
            &received,
        ],
    );
    assert!(d.stop());
    let d = net.start("sg");
    // The reminder runs at start; wait for it to reach the log.
    let id = soon["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    while !d.log_text().contains(id) && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = d.log_text();
    assert!(
        log.contains("fall due within 3 days") && log.contains(id),
        "{log}"
    );
    assert!(!log.contains("wei@"), "{log}");
}

/// The start-up reminder named requests falling due but said nothing of those already overdue,
/// the most urgent case (found by an exploratory session).
#[test]
fn the_daemon_warns_about_overdue_requests_without_naming_anyone() {
    let net = Net::init("sg");
    let sock = net.socket("sg");
    let d = net.start("sg");
    // Singapore counts 30 calendar days: received 40 days ago was due 10 days ago.
    let received = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    let late = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "late.wei@example.sg",
            "--kind",
            "access",
            "--received",
            &received,
        ],
    );
    assert!(d.stop());
    let d = net.start("sg");
    let id = late["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    while !d.log_text().contains(id) && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("requests are overdue"))
        .unwrap_or_else(|| panic!("no overdue warning: {log}"));
    assert!(
        line.contains("WARN") && line.contains("count=1") && line.contains(id),
        "{line}"
    );
    assert!(!log.contains("fall due within"), "not due soon: {log}");
    assert!(!log.contains("late.wei"), "{log}");
}

/// California's 10-business-day receipt confirmation (`confirm_by`) was tracked nowhere an
/// operator looks: not in `--overdue`, `--due-within` or the reminder (found by an exploratory
/// session). While a request is still `received`, its confirmation is its next deadline.
#[test]
fn a_pending_receipt_confirmation_is_a_deadline_of_its_own() {
    let net = Net::init("us");
    let _d = net.start("us");
    let sock = net.socket("us");
    let r = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "ca@example.com",
            "--kind",
            "access",
            "--received",
            "2026-11-16T10:00:00Z",
            "--jurisdiction",
            "US-CA",
        ],
    );
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["confirm_by"], "2026-12-02", "{r}");
    let listed = |args: &[&str]| {
        ok(&sock, args)
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["id"] == id.as_str())
            .cloned()
    };
    let soon = [
        "request",
        "list",
        "--due-within",
        "3d",
        "--as-of",
        "2026-11-30T00:00:00Z",
    ];
    assert!(
        listed(&soon).is_some(),
        "the confirmation falls due within 3 days"
    );
    // Midnight on 3 December in California (PST, UTC-8): overdue by the date there.
    let late = [
        "request",
        "list",
        "--overdue",
        "--as-of",
        "2026-12-03T08:00:00Z",
    ];
    let row = listed(&late).expect("overdue by its confirmation");
    assert_eq!(row["confirmation_overdue"], true, "{row}");
    // A recorded step shows the business answered: only the answer's own deadline is left.
    ok(
        &sock,
        &[
            "request",
            "update",
            &id,
            "--status",
            "in_progress",
            "--at",
            "2026-12-03T12:00:00Z",
        ],
    );
    let later = [
        "request",
        "list",
        "--overdue",
        "--as-of",
        "2026-12-04T00:00:00Z",
    ];
    assert!(listed(&later).is_none());
    let human = ctl_human(
        &sock,
        &["request", "list", "--as-of", "2026-12-04T00:00:00Z"],
    );
    assert!(!human.contains("confirm receipt"), "{human}");

    // The export speaks the CCPA's words to a California consumer at the US office (it used
    // the office's jurisdiction, US: "data subject", "personal data").
    let export = ok(&sock, &["subject", "export", "--subject", "ca@example.com"]);
    assert_eq!(export["terms_jurisdiction"], "US-CA", "{export}");
    assert_eq!(export["terms"]["data_subject"], "consumer");
    let human = ctl_human(&sock, &["subject", "export", "--subject", "ca@example.com"]);
    assert!(
        human.starts_with("Personal information held about the consumer"),
        "{human}"
    );
}

/// A UK request asked for ID after its due date had passed: the identity arriving does not
/// restart its clock. The restart moved the due date a month on, so it dropped off `--overdue`
/// and `audit report` counted the late answer in time (found by an exploratory session).
#[test]
fn a_uk_request_asked_for_id_after_its_due_date_stays_late_once_the_id_arrives() {
    let net = Net::init("uk");
    let sock = net.socket("uk");
    let _d = net.start("uk");
    let r = open(&sock, "GB", "access", "2026-03-03T09:00:00Z");
    assert_eq!(r["due"], "2026-04-07", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let update = |status: &str, at: &str| {
        ok(
            &sock,
            &["request", "update", &id, "--status", status, "--at", at],
        )
    };
    update("identity_requested", "2026-04-10T09:00:00Z");
    let got = update("identity_received", "2026-04-15T09:00:00Z");
    assert_eq!(got["due"], "2026-04-07", "the due date stays: {got}");
    let overdue = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-04-20T00:00:00Z",
        ],
    );
    let row = overdue
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["id"] == id.as_str())
        .cloned();
    assert_eq!(
        row.as_ref().map(|row| row["due"].clone()),
        Some(serde_json::json!("2026-04-07")),
        "{overdue}"
    );
    ok(
        &sock,
        &[
            "request",
            "close",
            &id,
            "--outcome",
            "completed",
            "--at",
            "2026-05-10T09:00:00Z",
        ],
    );
    let bundle = net.path().join("uk.jsonl");
    ok(
        &sock,
        &["audit", "export", "--out", bundle.to_str().unwrap()],
    );
    let rep = ok(
        &sock,
        &[
            "audit",
            "report",
            bundle.to_str().unwrap(),
            "--root-pub",
            net.path().join("root.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(rep["requests"][0]["answered_late"], 1, "{rep}");
    assert_eq!(rep["requests"][0]["answered_in_time"], 0, "{rep}");
}
