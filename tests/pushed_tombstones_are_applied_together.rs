//! Regression: pushed items come one a frame, and a peer applied each pushed tombstone in a
//! durable commit of its own, with a key-encryption key rotation each (every stored key
//! re-wrapped). Another office's retention pass of 2,000 records took a peer 320 s at 22,000
//! records. A link now handles the frames already received before acting on them and applies
//! consecutive tombstone batches in one call, whose chunks share one rotation.
mod common;
use common::*;
use std::io::Write;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
/// Records de's retention pass deletes: two of its chunks of 256.
const EXPIRED: u64 = 300;

fn wait(what: &str, cond: impl Fn() -> bool) {
    wait_until(what, WAIT, cond)
}

#[test]
fn a_peers_retention_pass_is_applied_in_few_commits_and_rotations() {
    let net = Net::init("de,sg");
    let _de = net.start("de");
    let _sg = net.start("sg");
    let status = |o: &str| ok(&net.socket(o), &["status"]);
    // Sales records on legitimate interest whose 12 months ran out long ago.
    let path = net.path().join("expired.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..EXPIRED {
        let line = serde_json::json!({"op": "consent.grant", "subject": format!("x{i}@example.com"),
            "purpose": "sales", "basis": "legitimate_interest", "at": "2025-01-10T00:00:00Z"});
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    ok(
        &net.socket("de"),
        &["import", "--file", path.to_str().unwrap()],
    );
    wait("sg holds every record de holds", || {
        let (de, sg) = (status("de"), status("sg"));
        sg["records"].as_u64() >= Some(EXPIRED) && sg["digest"] == de["digest"]
    });
    let before = status("sg");

    let run = ok(&net.socket("de"), &["retention", "run"]);
    assert_eq!(run["deleted"].as_u64(), Some(EXPIRED), "{run}");
    wait("sg applies every tombstone and rotates its KEK", || {
        let st = status("sg");
        st["tombstones"].as_u64() == Some(EXPIRED) && st["kek_rotation_due"] == false
    });
    let after = status("sg");
    for i in [0, EXPIRED / 2, EXPIRED - 1] {
        let history = ok(
            &net.socket("sg"),
            &[
                "consent",
                "history",
                "--subject",
                &format!("x{i}@example.com"),
            ],
        );
        assert!(history.as_array().unwrap().is_empty(), "x{i}: {history}");
    }
    let commits =
        after["durable_commits"].as_u64().unwrap() - before["durable_commits"].as_u64().unwrap();
    let rotations =
        after["kek_generation"].as_u64().unwrap() - before["kek_generation"].as_u64().unwrap();
    eprintln!("sg: {commits} commits and {rotations} rotations for {EXPIRED} tombstones");
    // One each was 300 commits and 300 rotations (each rotation two commits or more).
    assert!(rotations >= 1, "sg rotated its KEK: {after}");
    assert!(
        commits < EXPIRED / 3 && rotations < EXPIRED / 10,
        "sg made {commits} commits and {rotations} rotations for {EXPIRED} tombstones"
    );
}
