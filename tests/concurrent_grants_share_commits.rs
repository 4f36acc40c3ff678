//! 1,000 concurrent `consent grant` calls over the socket all succeed, share durable commits
//! (group commit), and are all present after a restart.
mod common;
use common::*;
use consentd::protocol::{self, Client, Request};
use std::sync::{Arc, Barrier};

const CLIENTS: usize = 1000;

#[test]
fn a_thousand_concurrent_grants_are_all_durable() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let daemon = net.start("de");
    let commits_before = ok(&sock, &["status"])["durable_commits"].as_u64().unwrap();

    // Every client connects first, then all send at once: the daemon sees 1,000 writes in flight.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (sock, barrier) = (sock.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&sock).expect("connect");
                barrier.wait();
                client.call(&Request::ConsentGrant(protocol::ConsentGrant {
                    subject: format!("user{i}@example.com"),
                    purpose: "marketing".into(),
                    basis: "consent".into(),
                    service: Some("sms".into()),
                    evidence: Some("web form v3".into()),
                    notice: None,
                    under_18: false,
                    parental_consent: None,
                    person: None,
                    role: None,
                    at: None,
                }))
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        if let Err(e) = h.join().unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} grants failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );

    let status = ok(&sock, &["status"]);
    let commits = status["durable_commits"].as_u64().unwrap() - commits_before;
    eprintln!("{CLIENTS} concurrent grants took {commits} durable commits");
    assert_eq!(status["records"], CLIENTS as u64);
    assert!(commits >= 1);
    assert!(
        commits < CLIENTS as u64,
        "group commit: {CLIENTS} writes in flight must share commits, took {commits}"
    );

    assert!(daemon.stop());
    let _daemon = net.start("de");
    let mut client = Client::connect(&sock).unwrap();
    for i in 0..CLIENTS {
        let v = client
            .call(&Request::ConsentCheck(protocol::ConsentCheck {
                subject: format!("user{i}@example.com"),
                purpose: "marketing".into(),
                at: None,
            }))
            .unwrap();
        assert_eq!(v["granted"], true, "user{i} lost after restart");
    }
    assert_eq!(ok(&sock, &["status"])["records"], CLIENTS as u64);
}
