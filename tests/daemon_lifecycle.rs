//! The daemon's life under a service manager: READY=1 once serving, watchdog pings while alive,
//! STOPPING=1 on SIGTERM; logs that never name a data subject; replication that waits for its
//! listen address, saying why.
mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn receive_until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; saw {seen:?}");
}

#[test]
fn notifies_ready_watchdog_and_stopping() {
    let net = Net::init("de");
    let notify_path = net.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let d = net.start_with_env(
        "de",
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    receive_until(&notify, "READY=1", Duration::from_secs(10));
    // Pings come at half the interval; two in a row show the timer runs.
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(10));
    receive_until(&notify, "WATCHDOG=1", Duration::from_secs(10));
    let status = ok(&net.socket("de"), &["status"]);
    assert_eq!(status["office"], "de");
    assert_eq!(
        status["sync_protocol"],
        consentd_sync::frame::PROTOCOL_VERSION
    );
    let pid = d.pid();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    receive_until(&notify, "STOPPING=1", Duration::from_secs(10));
    assert!(d.stop(), "exit status 0 after SIGTERM");
}

#[test]
fn debug_logs_name_no_subject() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let d = net.start_with_env("de", &[("CONSENTD_LOG", "trace")]);
    ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "secret form v2",
        ],
    );
    ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
        ],
    );
    err(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "vibes",
        ],
    );
    err(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@@example.com",
            "--purpose",
            "marketing",
        ],
    );
    ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "+44 20 7946 0958",
            "--kind",
            "erasure",
        ],
    );
    ok(
        &sock,
        &["subject", "export", "--subject", "alice@example.com"],
    );
    let log = d.log_text();
    assert!(d.stop());
    assert!(
        log.contains("consentd ready"),
        "the log was captured: {log}"
    );
    // Needles must not be hex-only: the log carries change hashes, and a short digit run such as
    // "7946" turns up in one by chance (it failed CI once). The phone number is looked for in its
    // typed and normalised forms, both long enough that a hash cannot produce them by chance.
    for needle in [
        "alice",
        "example.com",
        "secret form v2",
        "7946 0958",
        "442079460958",
        "vibes",
    ] {
        assert!(!log.contains(needle), "log contains {needle:?}:\n{log}");
    }
}

/// Replication whose listen address is taken failed for good, `status` gave no reason and
/// `peers` said no peer was configured (found by an exploratory session). Now `status` says
/// why, `peers` lists the peer with the reason, and replication runs once the address is free.
#[test]
fn replication_waits_for_its_address_and_says_why_meanwhile() {
    let net = Net::init("de,uk");
    let text = std::fs::read_to_string(net.config("de")).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let taken = std::net::UdpSocket::bind(&listen).unwrap();
    let _de = net.start("de");
    wait_until("replication to fail", Duration::from_secs(60), || {
        ok(&net.socket("de"), &["status"])["replication"] == "failed"
    });
    let status = ok(&net.socket("de"), &["status"]);
    let why = status["replication_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains(&listen), "{status}");
    let peers = ok(&net.socket("de"), &["peers"]);
    assert_eq!(peers[0]["office"], "uk", "{peers}");
    assert_eq!(
        peers[0]["last_error"],
        format!("replication failed: {why}"),
        "{peers}"
    );

    drop(taken);
    wait_until("replication to run", Duration::from_secs(60), || {
        ok(&net.socket("de"), &["status"])["replication"] == "running"
    });
    assert!(ok(&net.socket("de"), &["status"])["replication_error"].is_null());
}

/// Starts office `office` without the test harness's CONSENTD_LOG, with `env` set, its stderr
/// in `log`; waits for its socket, asks `status`, and stops it with SIGTERM. Returns the log.
fn logged_run(net: &Net, office: &str, env: &[(&str, &str)], journal: bool) -> String {
    let log = net.path().join(format!("{office}.stderr"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = std::process::Command::new(CONSENTD);
    cmd.arg("--config")
        .arg(net.config(office))
        .env_remove("CONSENTD_LOG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if journal {
        // As systemd sets it: the device and inode of the stream stderr is connected to.
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let mut child = cmd.stderr(file).spawn().unwrap();
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(net.socket(office)).is_err() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && started.elapsed() < Duration::from_secs(30),
            "not ready ({exited:?}): {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&net.socket(office), &["status"]);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

/// `[log] filter` applies, and CONSENTD_LOG or RUST_LOG overrides it: the filter was validated
/// and never applied, and RUST_LOG (which docs/systemd.md suggests) was ignored (found by an
/// exploratory session). Under journald, each line carries its syslog priority.
#[test]
fn the_log_filter_applies_and_journal_lines_carry_their_priority() {
    let net = Net::init("de");
    let default = logged_run(&net, "de", &[], false);
    assert!(
        default.contains("INFO") && default.contains("ready"),
        "{default}"
    );
    net.edit_config("de", |t| {
        assert!(t.contains("filter = \"info\""), "{t}");
        t.replace("filter = \"info\"", "filter = \"warn\"")
    });
    let warn = logged_run(&net, "de", &[], false);
    assert!(
        !warn.contains("INFO"),
        "[log] filter = warn logged INFO lines: {warn}"
    );
    let env = logged_run(&net, "de", &[("RUST_LOG", "info")], false);
    assert!(
        env.contains("ready"),
        "RUST_LOG did not override the config: {env}"
    );
    net.edit_config("de", |t| {
        t.replace("filter = \"warn\"", "filter = \"info\"")
    });
    let journal = logged_run(&net, "de", &[], true);
    let ready = journal
        .lines()
        .find(|l| l.contains("ready"))
        .expect("a ready line");
    assert!(ready.starts_with("<6>"), "{journal}");
    assert!(
        !ready.contains("Z "),
        "the journal stamps lines itself: {ready}"
    );
}
