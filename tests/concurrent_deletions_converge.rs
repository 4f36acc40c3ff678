//! Regression (found by tests/partition_heals.rs): two offices that delete the same record on
//! both sides of a partition each sign their own tombstone. After healing, each must hold both
//! tombstones, so their digests converge. Before the fix, each kept whichever tombstone it had
//! first and silently dropped the other while counting it as held, and the digests stayed
//! different forever.
mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn wait(what: &str, cond: impl Fn() -> bool) {
    wait_until(what, WAIT, cond)
}

#[test]
fn two_offices_deleting_the_same_record_while_apart_converge() {
    let net = Net::init("de,sg");
    let de = net.start("de");
    let sg = net.start("sg");
    // A sales record on legitimate interest whose 12 months ran out long ago.
    let id = ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            "both@example.com",
            "--purpose",
            "sales",
            "--basis",
            "legitimate_interest",
            "--at",
            "2025-01-10T00:00:00Z",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let history = |o: &str| {
        ok(
            &net.socket(o),
            &["consent", "history", "--subject", "both@example.com"],
        )
    };
    wait("sg holds de's record", || {
        !history("sg").as_array().unwrap().is_empty()
    });

    // Apart: each office deletes it on its own.
    assert!(sg.stop());
    let run = ok(&net.socket("de"), &["retention", "run"]);
    assert_eq!(run["deleted"], 1, "{run}");
    assert!(de.stop());
    let sg = net.start("sg");
    let run = ok(&net.socket("sg"), &["retention", "run"]);
    assert_eq!(run["deleted"], 1, "{run}");

    // Together again: both tombstones everywhere, equal digests, the record gone.
    let _de = net.start("de");
    let status = |o: &str| ok(&net.socket(o), &["status"]);
    wait(
        "both offices hold both tombstones and equal digests",
        || {
            let (a, b) = (status("de"), status("sg"));
            a["tombstones"] == 2 && b["tombstones"] == 2 && a["digest"] == b["digest"]
        },
    );
    for o in ["de", "sg"] {
        assert!(
            history(o).as_array().unwrap().is_empty(),
            "{o} shows deleted record {id}"
        );
    }
    drop(sg);
}
