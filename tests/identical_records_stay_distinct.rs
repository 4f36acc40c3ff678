//! Regression: two records with identical content (same subject, kind and receipt time) opened by
//! one daemon are two records. Their first Automerge changes used to be byte-identical, so their
//! change hashes collided and the second record's envelope was dropped by the store.
mod common;
use common::*;

#[test]
fn two_identical_requests_are_two_records() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let args = [
        "request",
        "open",
        "--subject",
        "amy@example.com",
        "--kind",
        "access",
        "--received",
        "2026-03-31T09:00:00Z",
    ];
    let a = ok(&sock, &args);
    let b = ok(&sock, &args);
    assert_ne!(a["id"], b["id"]);
    for r in [&a, &b] {
        ok(
            &sock,
            &[
                "request",
                "close",
                r["id"].as_str().unwrap(),
                "--outcome",
                "completed",
                "--at",
                "2026-04-01T00:00:00Z",
            ],
        );
    }
    let status = ok(&sock, &["status"]);
    assert_eq!(status["records"], 2);
    assert_eq!(
        status["envelopes"], 4,
        "two changes per record, none shared"
    );
    let list = ok(&sock, &["request", "list"]);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "completed"));
}
