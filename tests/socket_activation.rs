//! Socket activation (`systemd/consentd.socket`): the daemon serves the listening socket systemd
//! passes as fd 3 (sd_listen_fds(3)) instead of binding its own, leaves it in place on exit so
//! operators' connections queue across a restart, and refuses a socket bound to another path.
//! systemd itself is not needed: the test binds the socket and passes it the way systemd does.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts consentd with `listener` as fd 3 and LISTEN_PID/LISTEN_FDS naming the daemon's own
/// pid, as systemd does (`sh` sets LISTEN_PID=$$ and then execs, keeping its pid).
fn start_activated(config: &Path, listener: &UnixListener, log: &Path) -> Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(CONSENTD)
        .arg("--config")
        .arg(config)
        .env("CONSENTD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself keeps FD_CLOEXEC, which exec would honour: clear it.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "consentd did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn activated_daemon_serves_the_passed_socket_and_leaves_it_for_the_next_start() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let listener = UnixListener::bind(&sock).unwrap();
    let inode = std::fs::metadata(&sock).unwrap().ino();
    let log = net.path().join("de.log");

    let first = start_activated(&net.config("de"), &listener, &log);
    // Connecting succeeds at once (the socket already listens); the answer waits for the daemon.
    let granted = ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "ana@example.org",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
    assert_eq!(
        granted["id"].as_str().map(str::len),
        Some(32),
        "a record id: {granted}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("socket_activated=true"),
        "the daemon says it was activated: {log_text}"
    );
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        inode,
        "the daemon served the passed socket instead of binding a new one"
    );
    assert!(stop(first).success(), "clean exit after SIGTERM");
    assert!(
        sock.exists(),
        "the socket file belongs to consentd.socket and stays after the service stops"
    );

    // While no daemon runs, an operator's command connects and waits in the backlog; the next
    // activated start answers it, with the record written before the restart.
    let waiting = Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(&sock)
        .args([
            "--json",
            "consent",
            "check",
            "--subject",
            "ana@example.org",
            "--purpose",
            "marketing",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = start_activated(&net.config("de"), &listener, &log);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "queued command answered after the restart: {}",
        text(&out.stderr)
    );
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["granted"], true, "{check}");
    assert!(stop(second).success());
}

#[test]
fn socket_bound_elsewhere_is_refused_at_start() {
    let net = Net::init("de");
    let elsewhere = net.path().join("other.sock");
    let listener = UnixListener::bind(&elsewhere).unwrap();
    let log = net.path().join("de.log");
    let mut child = start_activated(&net.config("de"), &listener, &log);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "consentd kept running with a socket bound to the wrong path"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("make them agree") && log_text.contains("other.sock"),
        "the refusal names both paths: {log_text}"
    );
    assert!(!log_text.contains("panicked"), "{log_text}");
    assert!(
        !net.socket("de").exists(),
        "nothing bound at the configured path"
    );
}
