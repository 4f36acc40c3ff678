//! Regression (found by tests/partition_heals.rs): a write acknowledged the moment an office is
//! ready after a (re)start replicates. Before the fix the replicator built its sets from the
//! store and only later subscribed to local commits, so a write committed in between was in
//! neither, was never offered to peers, and the offices' digests never converged (until that
//! office restarted again).
mod common;
use common::*;
use consentd::protocol::{self, Client, Request};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_write_at_readiness_reaches_the_peer() {
    let net = Net::init("de,sg");
    let _sg = net.start("sg");
    let rounds = 8;
    for round in 0..rounds {
        let mut de = Command::new(CONSENTD)
            .arg("--config")
            .arg(net.config("de"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spin until the socket accepts and write at once.
        let started = Instant::now();
        let mut client = loop {
            if let Ok(c) = Client::connect(&net.socket("de")) {
                break c;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "de not ready");
            std::thread::yield_now();
        };
        let subject = format!("ready{round}@example.com");
        client
            .call(&Request::ConsentGrant(protocol::ConsentGrant {
                subject: subject.clone(),
                purpose: "marketing".into(),
                basis: "consent".into(),
                service: None,
                evidence: Some("web form v3".into()),
                notice: None,
                under_18: false,
                parental_consent: None,
                person: None,
                role: None,
                at: None,
            }))
            .unwrap();
        let started = Instant::now();
        loop {
            let v = ok(
                &net.socket("sg"),
                &[
                    "consent",
                    "check",
                    "--subject",
                    &subject,
                    "--purpose",
                    "marketing",
                ],
            );
            if v["granted"] == true {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "round {round}: a write acknowledged at de's readiness never reached sg"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        unsafe { libc::kill(de.id() as i32, libc::SIGTERM) };
        assert!(de.wait().unwrap().success());
    }
}
