//! The control socket serves at most 256 connections at once. Connections left open and idle
//! (a pool, a script that never closes) used to hold every other client back until the daemon's
//! 60 s idle timeout closed them: with 256 idle, a `consent check` took 59.5 s (found by an
//! exploratory session). Now a client beyond the limit makes room by closing one idle for 5 s or
//! more (`daemon::IDLE_RECLAIM_AFTER`; sooner would fail an application that connects many
//! clients first and sends on them after, `concurrent_grants_share_commits.rs`).
mod common;
use common::*;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[test]
fn a_client_beyond_the_limit_closes_an_idle_connection_instead_of_waiting() {
    let net = Net::init("de");
    let _de = net.start("de");
    let sock = net.socket("de");
    // Every slot held by a connection that sends nothing (as the operator's own uid).
    let held: Vec<UnixStream> = (0..consentd::daemon::CONNECTIONS_MAX)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(consentd::daemon::IDLE_RECLAIM_AFTER + Duration::from_secs(1));
    // Answered while they stay open (a bounded wait, not a timing check: the alternative is the
    // daemon's 60 s idle timeout).
    let (tx, rx) = std::sync::mpsc::channel();
    let s = sock.clone();
    std::thread::spawn(move || {
        let _ = tx.send(ctl(&s, &["status"]));
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a client beyond the limit was answered while idle connections held every slot");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // An idle connection was closed for it: the daemon's end reads as closed.
    let closed = held
        .iter()
        .filter(|c| {
            let mut c = *c;
            c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            matches!(c.read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert_eq!(closed, 1, "idle connections closed for one client");
}
