//! Regression (found by the reliability work of issue 8, as a flaky `d.stop()` in
//! tests/startup_refusals.rs): a SIGTERM sent the moment the daemon is ready (its control socket
//! accepts) is a clean shutdown, exit 0. Before the fix the SIGTERM handler was installed only
//! when the shutdown future was first polled, after the socket was bound, so a SIGTERM in that
//! window killed the daemon by the signal's default action.
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_right_after_ready_is_a_clean_stop() {
    let net = Net::init("de,sg,uk");
    let rounds = 30;
    let mut unclean = Vec::new();
    for _ in 0..rounds {
        let mut child = Command::new(CONSENTD)
            .arg("--config")
            .arg(net.config("de"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spin (no sleep) until the socket accepts, then SIGTERM at once.
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(net.socket("de")).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "not ready");
            assert!(child.try_wait().unwrap().is_none(), "exited before ready");
            std::thread::yield_now();
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        if !status.success() {
            unclean.push(status.to_string());
        }
    }
    assert!(
        unclean.is_empty(),
        "{} of {rounds} SIGTERMs sent at readiness were not clean stops: {unclean:?}",
        unclean.len()
    );
}
