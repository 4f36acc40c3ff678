//! An office killed with SIGKILL and restarted is dialed again at once: its first packet after
//! the restart resets the dialer's connection to the dead process (a QUIC stateless reset keyed
//! from the office's transport key), instead of the dialer holding that connection until its
//! idle timeout.
//!
//! Before, the dialer's link stayed "connected" to the dead process for 30 s (the idle timeout)
//! after every restart, and neither side dialed: the restarted office received nothing in that
//! time, and pushes to it were lost (tests/partition_heals.rs saw links down 31 s after the kill
//! round, every run).
mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Long enough for the old idle timeout too, so the test fails on the log check below, which
/// says why, rather than on a wait.
const LINK_TIMEOUT: Duration = Duration::from_secs(120);

fn connected(net: &Net, office: &str, peer: &str) -> bool {
    ok(&net.socket(office), &["peers"])
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["office"] == peer && p["connected"] == Value::Bool(true))
}

fn wait_linked(net: &Net, office: &str, peer: &str) -> Duration {
    let started = Instant::now();
    while !connected(net, office, peer) {
        assert!(
            started.elapsed() < LINK_TIMEOUT,
            "{office} lists {peer} as not connected after {LINK_TIMEOUT:?}: {}",
            ok(&net.socket(office), &["peers"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// `de` and `nl` running and linked (de dials nl: the lower office id dials).
fn linked_pair() -> (Net, Daemon, Daemon) {
    let net = Net::init("de,nl");
    let de = net.start("de");
    let nl = net.start("nl");
    wait_linked(&net, "nl", "de");
    wait_linked(&net, "de", "nl");
    (net, de, nl)
}

fn records(net: &Net, office: &str) -> u64 {
    ok(&net.socket(office), &["status"])["records"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_peer_killed_and_restarted_is_dialed_again_after_a_stateless_reset() {
    let (net, de, nl) = linked_pair();

    nl.kill9();
    let nl = net.start("nl");
    // The restarted nl lists de once de has dialed the new process.
    let took = wait_linked(&net, "nl", "de");
    eprintln!("de dialed the restarted nl {took:?} after it answered its socket");

    // de's old link ended because the new process reset it, not by idling out.
    let log = de.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("replication link failed") && l.contains("nl"))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("reset by peer")),
        "de's link to the killed nl did not end with a stateless reset; its ends: {failed:?}"
    );

    // And the new link carries writes both ways.
    ok(
        &net.socket("nl"),
        &[
            "consent",
            "grant",
            "--subject",
            "eva@example.nl",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
    let started = Instant::now();
    while records(&net, "de") < 1 {
        assert!(
            started.elapsed() < LINK_TIMEOUT,
            "nl's record did not reach de over the new link"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let check = ok(
        &net.socket("de"),
        &[
            "consent",
            "check",
            "--subject",
            "eva@example.nl",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check["granted"], true, "{check}");
    drop(nl);
    drop(de);
}

/// The dialer restarts: the listener holds the link to the old process and the new one at once
/// until the old one is reset. Its end must not make `peers` call the peer disconnected while
/// the new link runs (it did: "connected" was a flag every link's end cleared).
#[test]
fn the_end_of_a_dead_link_leaves_the_new_one_listed_as_connected() {
    let (net, de, nl) = linked_pair();

    de.kill9();
    let de = net.start("de");
    wait_linked(&net, "de", "nl");
    // nl's link to the killed de ends once nl's next packet on it draws the reset.
    let started = Instant::now();
    while !nl
        .log_text()
        .lines()
        .any(|l| l.contains("replication link failed") && l.contains("peer=de"))
    {
        assert!(
            started.elapsed() < LINK_TIMEOUT,
            "nl's link to the killed de never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peers = ok(&net.socket("nl"), &["peers"]);
    let de_entry = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["office"] == "de")
        .expect("nl lists de");
    assert_eq!(de_entry["connected"], true, "{de_entry}");
    assert_eq!(de_entry["links"], 1, "{de_entry}");
    assert_eq!(de_entry["last_error"], Value::Null, "{de_entry}");
    drop(nl);
    drop(de);
}
