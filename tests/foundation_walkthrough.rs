//! The Foundation acceptance walk-through, as an operator would type it: grant, check with a
//! differently written address, withdraw, open a GDPR request, restart, and get the same answers.
mod common;
use common::*;
use serde_json::json;

#[test]
fn consent_and_requests_survive_a_restart() {
    let net = Net::init("de,sg");
    let sock = net.socket("de");
    let daemon = net.start("de");

    let grant = ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--service",
            "sms",
            "--evidence",
            "web form v3",
            "--at",
            "2026-01-10T09:00:00Z",
        ],
    );
    let record = grant["id"].as_str().unwrap().to_string();
    assert_eq!(record.len(), 32, "record ids are 128-bit hex");

    let check = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            " Alice@Example.COM ",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check, json!({"granted": true, "record": record}));

    let withdraw = ok(
        &sock,
        &[
            "consent",
            "withdraw",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--at",
            "2026-02-01T00:00:00Z",
        ],
    );
    assert_eq!(withdraw["id"], record, "a withdrawal joins the same record");
    let after = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(after["granted"], false);

    // --at answers from history: between grant and withdrawal it was granted.
    let then = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--at",
            "2026-01-20T00:00:00Z",
        ],
    );
    assert_eq!(then["granted"], true);
    let before = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--at",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert_eq!(before, json!({"granted": false, "record": null}));
    let other_purpose = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "sales",
        ],
    );
    assert_eq!(other_purpose["granted"], false);

    let opened = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "alice@example.com",
            "--kind",
            "access",
            "--received",
            "2026-03-31T10:00:00Z",
        ],
    );
    assert_eq!(opened["due"], "2026-04-30");
    assert!(opened["due_rule"].as_str().unwrap().contains("gdpr"));
    let request = opened["id"].as_str().unwrap().to_string();

    let history = ok(
        &sock,
        &["consent", "history", "--subject", "alice@example.com"],
    );
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["grant", "withdraw"], "oldest first");
    let status = ok(&sock, &["status"]);
    assert_eq!(status["office"], "de");
    assert_eq!(status["jurisdiction"], "DE");
    assert_eq!(status["records"], 2);

    assert!(daemon.stop(), "clean exit on SIGTERM");
    assert!(!sock.exists(), "socket removed on shutdown");

    let _daemon = net.start("de");
    let again = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            " Alice@Example.COM ",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(again, after, "same answer after restart");
    assert_eq!(
        ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "alice@example.com",
                "--purpose",
                "marketing",
                "--at",
                "2026-01-20T00:00:00Z",
            ],
        ),
        then
    );
    let list = ok(&sock, &["request", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], request);
    assert_eq!(rows[0]["due"], "2026-04-30");
    assert_eq!(rows[0]["kind"], "access");
    assert_eq!(
        ok(
            &sock,
            &["consent", "history", "--subject", "alice@example.com"]
        ),
        history
    );
    assert_eq!(ok(&sock, &["status"])["records"], 2);
}

#[test]
fn a_withdrawal_at_the_same_instant_as_a_grant_wins() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let at = "2026-05-05T05:05:05Z";
    ok(
        &sock,
        &[
            "consent",
            "withdraw",
            "--subject",
            "+49 30 1234 5678",
            "--purpose",
            "service_delivery",
            "--at",
            at,
        ],
    );
    ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "+4930-12345678",
            "--purpose",
            "service_delivery",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
            "--at",
            at,
        ],
    );
    let check = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "0049 30 12345678",
            "--purpose",
            "service_delivery",
        ],
    );
    assert_eq!(
        check["granted"], false,
        "withdrawal wins a tie, whatever the order recorded"
    );
}

#[test]
fn requests_extend_close_and_fall_overdue() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let open = |received: &str| {
        ok(
            &sock,
            &[
                "request",
                "open",
                "--subject",
                "bob@example.org",
                "--kind",
                "erasure",
                "--received",
                received,
            ],
        )
    };
    let a = open("2026-01-31T12:00:00Z");
    assert_eq!(
        a["due"], "2026-03-02",
        "2026-02-28 is a Saturday: next working day"
    );
    let b = open("2026-06-15T00:00:00Z");
    let a_id = a["id"].as_str().unwrap();
    let b_id = b["id"].as_str().unwrap();

    let ext = ok(
        &sock,
        &[
            "request",
            "extend",
            a_id,
            "--reason",
            "complex: 40 systems",
            "--at",
            "2026-02-10T00:00:00Z",
        ],
    );
    assert_eq!(
        ext["due"], "2026-03-31",
        "two months from receipt (statement §8.4)"
    );
    assert!(ext["due_rule"].as_str().is_some());
    let twice = err(
        &sock,
        &[
            "request",
            "extend",
            a_id,
            "--reason",
            "again",
            "--at",
            "2026-02-11T00:00:00Z",
        ],
    );
    assert!(twice.contains("already extended"), "{twice}");

    let overdue = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-04-01T00:00:00Z",
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
        [a_id],
        "only the extended request is past due on 2026-04-01"
    );
    let on_due_day = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-03-31T21:00:00Z",
        ],
    );
    assert!(
        on_due_day.as_array().unwrap().is_empty(),
        "not overdue on its due day (23:00 in Berlin, CEST)"
    );

    let refused = err(&sock, &["request", "close", a_id, "--outcome", "refused"]);
    assert!(refused.contains("--note"), "{refused}");
    ok(
        &sock,
        &[
            "request",
            "close",
            a_id,
            "--outcome",
            "refused",
            "--note",
            "10-year financial record retention duty",
        ],
    );
    let overdue = ok(
        &sock,
        &[
            "request",
            "list",
            "--overdue",
            "--as-of",
            "2026-12-01T00:00:00Z",
        ],
    );
    let ids: Vec<&str> = overdue
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b_id], "a closed request is never overdue");
    let all = ok(&sock, &["request", "list"]);
    let closed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == a_id)
        .unwrap();
    assert_eq!(closed["status"], "refused");
    assert_eq!(
        closed["history"].as_array().unwrap().len(),
        3,
        "received, extended, refused"
    );
    let again = err(&sock, &["request", "close", a_id, "--outcome", "completed"]);
    assert!(again.contains("already closed"), "{again}");
}

#[test]
fn transfers_and_subject_export() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "carol@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
    ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "carol@example.com",
            "--kind",
            "portability",
        ],
    );
    let t = ok(
        &sock,
        &[
            "transfer",
            "record",
            "--to",
            "SG",
            "--recipient",
            "Office SG",
            "--categories",
            "phone_number,content",
            "--mechanism",
            "bcr",
            "--subject",
            "carol@example.com",
            "--tia",
            "TIA-2026-7",
            "--recipient-kind",
            "group_company",
        ],
    );
    ok(
        &sock,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "traffic_data",
            "--mechanism",
            "scc",
        ],
    );
    let mine = ok(
        &sock,
        &["transfer", "list", "--subject", "carol@example.com"],
    );
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["id"], t["id"]);
    assert_eq!(mine[0]["from"], "DE");
    assert_eq!(mine[0]["categories"], json!(["phone_number", "content"]));
    assert_eq!(
        ok(&sock, &["transfer", "list"]).as_array().unwrap().len(),
        2
    );

    let export = ok(
        &sock,
        &["subject", "export", "--subject", "CAROL@example.com"],
    );
    assert_eq!(export["subject"], "carol@example.com");
    assert_eq!(export["consents"].as_array().unwrap().len(), 1);
    assert_eq!(export["requests"].as_array().unwrap().len(), 1);
    assert_eq!(export["transfers"].as_array().unwrap().len(), 1);
    let nobody = ok(
        &sock,
        &["subject", "export", "--subject", "dave@example.com"],
    );
    assert!(nobody["consents"].as_array().unwrap().is_empty());
}

#[test]
fn import_applies_every_line_and_reports_the_bad_one() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let file = net.path().join("records.jsonl");
    let mut lines = String::from("# consent imported from the old CRM\n");
    for i in 0..2500 {
        lines += &format!(
            "{{\"op\":\"consent.grant\",\"subject\":\"user{i}@example.com\",\"purpose\":\"marketing\",\"basis\":\"consent\",\"evidence\":\"crm import v1\",\"at\":\"2025-01-01T00:00:00Z\"}}\n"
        );
    }
    lines += "{\"op\":\"consent.withdraw\",\"subject\":\"user7@example.com\",\"purpose\":\"marketing\",\"at\":\"2025-02-01T00:00:00Z\"}\n";
    lines += "{\"op\":\"request.open\",\"subject\":\"user8@example.com\",\"kind\":\"access\",\"received\":\"2026-03-31T10:00:00Z\"}\n";
    std::fs::write(&file, lines).unwrap();
    let out = ok(&sock, &["import", "--file", file.to_str().unwrap()]);
    assert_eq!(out["imported"], 2502);
    assert_eq!(
        ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "user2499@example.com",
                "--purpose",
                "marketing"
            ]
        )["granted"],
        true
    );
    assert_eq!(
        ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "user7@example.com",
                "--purpose",
                "marketing"
            ]
        )["granted"],
        false
    );
    assert_eq!(ok(&sock, &["request", "list"])[0]["due"], "2026-04-30");

    // A byte-order mark before the first line (some editors write one) is not part of it.
    let bom = net.path().join("bom.jsonl");
    std::fs::write(&bom, "\u{feff}{\"op\":\"consent.grant\",\"subject\":\"bom@example.com\",\"purpose\":\"support\",\"basis\":\"contract\"}\n").unwrap();
    assert_eq!(
        ok(&sock, &["import", "--file", bom.to_str().unwrap()])["imported"],
        1
    );
    let bad = net.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"op\":\"consent.grant\",\"subject\":\"x@example.com\",\"purpose\":\"marketing\",\"basis\":\"vibes\"}\n").unwrap();
    let e = err(&sock, &["import", "--file", bad.to_str().unwrap()]);
    assert!(e.contains("line 1") && e.contains("basis"), "{e}");
    // An error found while applying (not parsing) still names its line, and nothing of the
    // file lands.
    let unknown = net.path().join("unknown.jsonl");
    std::fs::write(&unknown, "{\"op\":\"request.open\",\"subject\":\"y@example.com\",\"kind\":\"access\"}\n{\"op\":\"request.close\",\"id\":\"00112233445566778899aabbccddeeff\",\"outcome\":\"completed\"}\n").unwrap();
    let before = ok(&sock, &["status"])["records"].clone();
    let e = err(&sock, &["import", "--file", unknown.to_str().unwrap()]);
    assert!(e.contains("line 2") && e.contains("no request"), "{e}");
    assert!(e.contains("(nothing was imported)"), "{e}");
    assert_eq!(
        ok(&sock, &["status"])["records"],
        before,
        "the chunk is all or nothing"
    );
    let read_op = net.path().join("read.jsonl");
    std::fs::write(&read_op, "{\"op\":\"status\"}\n").unwrap();
    let e = err(&sock, &["import", "--file", read_op.to_str().unwrap()]);
    assert!(e.contains("cannot be imported"), "{e}");
    assert_eq!(
        ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "x@example.com",
                "--purpose",
                "marketing"
            ]
        )["granted"],
        false
    );
}

/// A chunk of at least 64 operations is authored in parts on several threads
/// (`Office::author_in_parallel`). The error must still name the chunk's first bad line, as the
/// sequential path would, and the chunk must land all or nothing, wherever its bad lines fall.
#[test]
fn a_parallel_import_chunk_reports_its_first_bad_line_and_lands_nothing() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let before = ok(&sock, &["status"])["records"].clone();
    let bad_lines = [57, 120, 250, 299];
    let mut lines = String::new();
    for line in 1..=300 {
        lines += &if bad_lines.contains(&line) {
            format!(
                "{{\"op\":\"request.close\",\"id\":\"{line:032x}\",\"outcome\":\"completed\"}}\n"
            )
        } else {
            format!("{{\"op\":\"consent.grant\",\"subject\":\"bulk{line}@example.com\",\"purpose\":\"marketing\",\"basis\":\"consent\",\"evidence\":\"crm import v1\",\"at\":\"2025-01-01T00:00:00Z\"}}\n")
        };
    }
    let file = net.path().join("bulk-bad.jsonl");
    std::fs::write(&file, lines).unwrap();
    let e = err(&sock, &["import", "--file", file.to_str().unwrap()]);
    assert!(e.contains("line 57:") && e.contains("no request"), "{e}");
    assert_eq!(
        ok(&sock, &["status"])["records"],
        before,
        "the chunk is all or nothing"
    );
    let check = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "bulk1@example.com",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check["granted"], false, "{check}");
}

/// Operations on one subject go to the same part of a parallel chunk, in file order: a grant
/// and its withdrawal in one chunk are two events of one record, which ends withdrawn. (In
/// different parts the withdrawal would not find the grant and would open a record of its own.)
#[test]
fn a_parallel_import_chunk_applies_each_subjects_lines_in_order() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let subjects = 150;
    let mut lines = String::new();
    for i in 0..subjects {
        lines += &format!("{{\"op\":\"consent.grant\",\"subject\":\"order{i}@example.com\",\"purpose\":\"marketing\",\"basis\":\"consent\",\"evidence\":\"crm import v1\",\"at\":\"2025-01-01T00:00:00Z\"}}\n");
    }
    for i in 0..subjects {
        lines += &format!("{{\"op\":\"consent.withdraw\",\"subject\":\"order{i}@example.com\",\"purpose\":\"marketing\",\"at\":\"2025-02-01T00:00:00Z\"}}\n");
    }
    let file = net.path().join("bulk-order.jsonl");
    std::fs::write(&file, lines).unwrap();
    assert_eq!(
        ok(&sock, &["import", "--file", file.to_str().unwrap()])["imported"],
        2 * subjects
    );
    for i in 0..subjects {
        let subject = format!("order{i}@example.com");
        let check = ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                &subject,
                "--purpose",
                "marketing",
            ],
        );
        assert_eq!(check["granted"], false, "{subject}: {check}");
        let export = ok(&sock, &["subject", "export", "--subject", &subject]);
        let consents = export["consents"].as_array().unwrap();
        assert_eq!(consents.len(), 1, "{subject}: one record: {export}");
    }
}
