//! An imported `request.close` line only closes, so one completing an open erasure request would
//! mark it answered with nothing erased, and `request close` could not erase afterwards (found by
//! an exploratory session). Such a line is refused with the command that erases; the import
//! writes nothing (all or nothing); other outcomes and kinds still import.
mod common;

use common::*;
use std::path::Path;

fn import(net: &Net, name: &str, lines: &[String]) -> std::process::Output {
    let file = net.path().join(name);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    ctl(
        &net.socket("de"),
        &["import", "--file", file.to_str().unwrap()],
    )
}

fn open(sock: &Path, subject: &str, kind: &str) -> String {
    ok(
        sock,
        &["request", "open", "--subject", subject, "--kind", kind],
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn status(sock: &Path, subject: &str, id: &str) -> String {
    let v = ok(sock, &["subject", "export", "--subject", subject]);
    let r = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("request {id} not in {v}"));
    r["status"].as_str().unwrap().to_string()
}

fn close_line(id: &str, outcome: &str) -> String {
    format!(r#"{{"op":"request.close","id":"{id}","outcome":"{outcome}","note":"imported"}}"#)
}

#[test]
fn an_imported_completion_of_an_erasure_request_is_refused_and_request_close_still_erases() {
    const SUBJECT: &str = "erase.me@example.com";
    let net = Net::init("de");
    let _d = net.start("de");
    let s = net.socket("de");
    ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "support",
            "--basis",
            "legitimate_interest",
        ],
    );
    let erasure = open(&s, SUBJECT, "erasure");
    let access = open(&s, SUBJECT, "access");

    // The access request's close comes first: the refusal of the later line writes nothing.
    let out = import(
        &net,
        "complete.jsonl",
        &[
            close_line(&access, "completed"),
            close_line(&erasure, "completed"),
        ],
    );
    let e = assert_error(&out);
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("erasure request"), "{e}");
    assert!(
        e.contains(&format!(
            "consentctl request close {erasure} --outcome completed"
        )),
        "{e}"
    );
    assert_eq!(status(&s, SUBJECT, &erasure), "received");
    assert_eq!(status(&s, SUBJECT, &access), "received");

    // Other kinds, and other outcomes of an erasure request, import as before.
    let out = import(&net, "other.jsonl", &[close_line(&access, "completed")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status(&s, SUBJECT, &access), "completed");
    let refused = open(&s, SUBJECT, "erasure");
    let out = import(&net, "refused.jsonl", &[close_line(&refused, "refused")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(status(&s, SUBJECT, &refused), "refused");

    // The erasure request is still open, and closing it erases.
    let v = ok(
        &s,
        &["request", "close", &erasure, "--outcome", "completed"],
    );
    assert!(
        v["erasure"]["deleted"].as_u64().unwrap() >= 1,
        "the grant goes: {v}"
    );
}
