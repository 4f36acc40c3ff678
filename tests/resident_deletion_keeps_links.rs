//! Regression (found by tests/partition_heals.rs): deleting a China-resident record at cn, which
//! destroys its subject key, must not break cn's replication. Policy hides the record's key from
//! every peer; the destroyed key left those hidden sets but stayed in them, so the next view of
//! the key set failed `Without`'s subset check and cn's links panicked (debug builds; a release
//! build would have offered a corrupted key-set fingerprint).
//!
//! Whether the replicator forgets the purged record after the key is destroyed is a race, and
//! this test did not make the panic happen before the fix on the machine it was written on: it
//! guards the scenario (erasures of resident records, then a new session's full round) rather
//! than reproducing it. The diagnosis is from cn's log in a partition-suite run (the panic in
//! the key-set view) and from reading `forget_doc`.
mod common;
use common::*;
use std::time::Duration;

fn wait(what: &str, cond: impl Fn() -> bool) {
    wait_until(what, Duration::from_secs(90), cond)
}

#[test]
fn erasing_a_resident_record_keeps_cn_replicating() {
    let net = Net::init("cn,sg");
    let cn = net.start("cn");
    let sg = net.start("sg");
    // Several resident records, each erased: every erasure destroys a key policy hid from sg.
    // Whether the replicator forgets the purged record before or after the key is destroyed
    // is a race; twelve rounds make the losing order likely.
    for i in 0..12 {
        let subject = format!("wang{i}.erase@example.cn");
        ok(
            &net.socket("cn"),
            &[
                "consent",
                "grant",
                "--subject",
                &subject,
                "--purpose",
                "support",
                "--basis",
                "legitimate_interest",
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
        let request = ok(
            &net.socket("cn"),
            &[
                "request",
                "open",
                "--subject",
                &subject,
                "--kind",
                "erasure",
            ],
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        let closed = ok(
            &net.socket("cn"),
            &["request", "close", &request, "--outcome", "completed"],
        );
        assert_eq!(closed["erasure"]["deleted"], 1, "{closed}");
    }
    // A new session (sg restarts) runs a full round over the key set at once.
    assert!(sg.stop());
    let _sg = net.start("sg");
    // Replication goes on both ways after the deletion.
    for (at, from, to) in [(0, "sg", "cn"), (1, "cn", "sg")] {
        let s = format!("after{at}@example.com");
        ok(
            &net.socket(from),
            &[
                "consent",
                "grant",
                "--subject",
                &s,
                "--purpose",
                "marketing",
                "--basis",
                "consent",
                "--evidence",
                "web form v3",
            ],
        );
        if to == "sg" {
            // cn's own grant is resident: it must not reach sg; use a sg-visible check instead.
            continue;
        }
        wait(&format!("{from}'s grant reaches {to}"), || {
            ok(
                &net.socket(to),
                &[
                    "consent",
                    "check",
                    "--subject",
                    &s,
                    "--purpose",
                    "marketing",
                ],
            )["granted"]
                == true
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !cn.log_text().contains("panicked"),
        "cn's replication panicked: {}",
        cn.log_text()
    );
}
