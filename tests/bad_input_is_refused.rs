//! Bad input gets one `error: …` line and a non-zero exit, and the daemon goes on serving with
//! nothing lost.
mod common;
use common::*;
use consentd::protocol::Client;
use std::os::unix::fs::PermissionsExt;

fn grant(sock: &std::path::Path) {
    ok(
        sock,
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
            "web form v3",
        ],
    );
}

fn still_serving(sock: &std::path::Path) {
    let v = ok(
        sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(
        v["granted"], true,
        "the daemon still serves and lost nothing"
    );
}

#[test]
fn each_bad_request_gets_one_error_line_and_the_daemon_keeps_serving() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    grant(&sock);

    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "marketing",
                "--basis",
                "vibes",
            ],
            "basis",
        ),
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "marketing",
                "--basis",
                "consent",
                "--evidence",
                "web form v3",
                "--at",
                "yesterday",
            ],
            "invalid time",
        ),
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "marketing",
                "--basis",
                "consent",
                "--evidence",
                "web form v3",
                "--at",
                "2999-01-01T00:00:00Z",
            ],
            "future",
        ),
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "marketing",
                "--basis",
                "consent",
                "--service",
                "telegraph",
            ],
            "service",
        ),
        (
            &[
                "consent",
                "check",
                "--subject",
                "",
                "--purpose",
                "marketing",
            ],
            "subject",
        ),
        (
            &[
                "consent",
                "check",
                "--subject",
                "12345",
                "--purpose",
                "marketing",
            ],
            "international",
        ),
        (
            &[
                "request",
                "open",
                "--subject",
                "a@example.com",
                "--kind",
                "gossip",
            ],
            "request kind",
        ),
        (
            &[
                "request",
                "open",
                "--subject",
                "a@example.com",
                "--kind",
                "access",
                "--jurisdiction",
                "XX",
            ],
            "jurisdiction",
        ),
        (
            &[
                "request",
                "close",
                "00112233445566778899aabbccddeeff",
                "--outcome",
                "completed",
            ],
            "no request",
        ),
        (
            &["request", "extend", "not-an-id", "--reason", "x"],
            "record id",
        ),
        // A command group without its subcommand printed the group's help, with no `error:`
        // line (found by an exploratory session).
        (
            &["consent"],
            "consentctl consent needs a subcommand: grant, withdraw, check, history (see consentctl consent --help)",
        ),
        (&["request"], "request needs a subcommand: open, extend, update, close, list"),
        (&["audit"], "audit needs a subcommand: export"),
        (&["roster"], "roster needs a subcommand: new"),
        (&[], "consentctl needs a command: network, keygen"),
        (
            &[
                "transfer",
                "record",
                "--to",
                "SG",
                "--recipient",
                "x",
                "--categories",
                "souls",
                "--mechanism",
                "scc",
            ],
            "category",
        ),
        (
            &[
                "transfer",
                "record",
                "--to",
                "XX",
                "--recipient",
                "x",
                "--categories",
                "email_address",
                "--mechanism",
                "scc",
            ],
            "unknown country \"XX\"",
        ),
        (
            &[
                "transfer",
                "record",
                "--to",
                "US",
                "--recipient",
                "x",
                "--categories",
                "email_address",
                "--mechanism",
                "none_required",
            ],
            "none_required is for moves inside one legal area",
        ),
        (
            &["request", "list", "--as-of", "31/12/2026"],
            "invalid time",
        ),
        (&["consent", "grnt"], "unrecognized subcommand"),
        (
            &[
                "request",
                "open",
                "--subject",
                "r@example.com",
                "--kind",
                "access",
                "--received",
                "0000-01-01T00:00:00Z",
            ],
            "before 1970-01-01",
        ),
        // Free text is one line of printable characters: a newline forged a line of the access
        // report, an escape sequence its colours (found by an exploratory session).
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "support",
                "--basis",
                "consent",
                "--evidence",
                "v3\nINJECTED LOG LINE",
            ],
            "evidence contains U+000A, a control",
        ),
        (
            &[
                "consent",
                "grant",
                "--subject",
                "a@example.com",
                "--purpose",
                "support",
                "--basis",
                "consent",
                "--evidence",
                "web form v3 \u{1b}[31mred",
            ],
            "U+001B",
        ),
        (
            &[
                "hold",
                "set",
                "--subject",
                "a@example.com",
                "--reason",
                "litigation \u{202e}dloh",
            ],
            "reason contains U+202E",
        ),
    ];
    for (args, needle) in cases {
        let e = err(&sock, args);
        assert!(
            e.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {e}"
        );
        still_serving(&sock);
    }
}

#[test]
fn an_oversized_request_is_refused_without_harm() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    grant(&sock);
    // A single command-line argument cannot reach 1 MiB (the kernel caps it), but one import line can.
    let huge = "x".repeat(2 << 20);
    let file = net.path().join("huge.jsonl");
    std::fs::write(&file, format!("{{\"op\":\"consent.grant\",\"subject\":\"a@example.com\",\"purpose\":\"marketing\",\"basis\":\"consent\",\"evidence\":\"v1 {huge}\"}}\n")).unwrap();
    let e = err(&sock, &["import", "--file", file.to_str().unwrap()]);
    assert!(e.contains("exceeds the limit"), "{e}");
    still_serving(&sock);
    // The same through a raw frame far over the limit.
    let e = Client::connect(&sock)
        .unwrap()
        .call_raw(&vec![b' '; 8 << 20])
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the limit"), "{e}");
    still_serving(&sock);
    // Below the frame limit but over the field limit: refused by field.
    let long = "x".repeat(5000);
    let e = err(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "a@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            &long,
        ],
    );
    assert!(e.contains("evidence"), "{e}");
    still_serving(&sock);
}

#[test]
fn malformed_frames_are_refused() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    grant(&sock);
    let mut c = Client::connect(&sock).unwrap();
    for payload in [
        &b"not json"[..],
        b"{\"v\":1}",
        b"{\"v\":99,\"request\":{\"op\":\"status\"}}",
        b"{\"v\":1,\"request\":{\"op\":\"drop.tables\"}}",
        &[0xff, 0xfe, 0x00],
    ] {
        let e = c.call_raw(payload).unwrap_err().to_string();
        assert!(!e.is_empty());
    }
    let e = c
        .call_raw(b"{\"v\":99,\"request\":{\"op\":\"status\"}}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("protocol version 99"), "{e}");
    // The same connection still works after refusals.
    let v = c
        .call_raw(b"{\"v\":1,\"request\":{\"op\":\"status\"}}")
        .unwrap();
    assert_eq!(v["office"], "de");
    // A client that hangs up mid-frame does not disturb the daemon.
    {
        use std::io::Write;
        let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        raw.write_all(&[0, 0, 1, 0, b'{']).unwrap();
    }
    still_serving(&sock);
}

/// `audit export --out` names a symlink, a FIFO or a directory: refused, and what was there is
/// left as it was (the bundle was renamed over it: a symlink became a 4 MB file, and as root
/// `/dev/full` a regular file; found by an exploratory session). An earlier bundle (a regular
/// file) is replaced.
#[test]
fn an_export_refuses_to_replace_anything_but_a_regular_file() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    grant(&sock);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "kept").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, what) in [(&link, "a symbolic link"), (&fifo, "a FIFO")] {
        let e = err(&sock, &["audit", "export", "--out", path.to_str().unwrap()]);
        assert!(e.contains(what), "{e}");
    }
    let e = err(
        &sock,
        &["audit", "export", "--out", dir.path().to_str().unwrap()],
    );
    assert!(e.contains("a directory"), "{e}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
    let bundle = dir.path().join("bundle.cdab");
    std::fs::write(&bundle, "an earlier bundle").unwrap();
    ok(
        &sock,
        &["audit", "export", "--out", bundle.to_str().unwrap()],
    );
    assert_ne!(std::fs::read(&bundle).unwrap(), b"an earlier bundle");
    still_serving(&sock);
}

/// Reads are bounded: an import line with no end (`--file /dev/zero` was read until the kernel
/// killed the client at 23 GB) and a config piped in (3 GB took 11.7 GB; the size check read
/// the file's length, which a pipe has not) stop at their limit with one line (found by an
/// exploratory session).
#[test]
fn endless_input_stops_at_its_limit() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.jsonl");
    std::fs::write(&long, vec![b'a'; 2 << 20]).unwrap();
    let e = err(&sock, &["import", "--file", long.to_str().unwrap()]);
    assert!(e.contains("line 1 exceeds the limit"), "{e}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(["check-config", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'#'; 1 << 16];
        // Until the reader stops reading (a broken pipe), at most 64 MiB.
        for _ in 0..1024 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let e = assert_error(&out);
    assert!(e.contains("larger than"), "{e}");
    ok(&sock, &["status"]);
}

/// An error quotes at most the start of an over-long input (a 100 KB value came back as a 100 KB
/// error line), and `--json` with `--csv` is refused (it printed CSV, not one JSON value);
/// found by an exploratory session.
#[test]
fn errors_quote_long_input_short_and_json_is_one_value() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    let long = "X".repeat(100_000);
    for args in [
        vec![
            "request",
            "open",
            "--subject",
            "a@example.com",
            "--kind",
            "access",
            "--jurisdiction",
            &long,
        ],
        vec![
            "request",
            "open",
            "--subject",
            "a@example.com",
            "--kind",
            &long,
        ],
        vec!["request", "extend", &long, "--reason", "complex"],
        vec![
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "r",
            "--categories",
            &long,
            "--mechanism",
            "scc",
        ],
    ] {
        let e = err(&sock, &args);
        assert!(
            e.len() < 1_000 && e.contains("100000 bytes"),
            "{} bytes: {}",
            e.len(),
            &e[..200]
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .args([
            "--json",
            "audit",
            "report",
            "missing.cdab",
            "--root-pub",
            &"0".repeat(64),
            "--csv",
        ])
        .output()
        .unwrap();
    let e = assert_error(&out);
    assert!(e.contains("--csv") && e.contains("--json"), "{e}");
    ok(&sock, &["status"]);
}

#[test]
fn a_daemon_that_is_not_running_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let e = err(&sock, &["status"]);
    assert!(e.contains("nothing.sock") && e.contains("running"), "{e}");
}

#[test]
fn the_auditor_role_reads_but_never_writes() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let uid = unsafe { libc::getuid() };
    // This test's own uid becomes an auditor.
    net.edit_config("de", |t| {
        t.replace(&format!("operators = [{uid}]"), "operators = []")
            .replace("auditors = []", &format!("auditors = [{uid}]"))
    });
    let _d = net.start("de");
    let e = err(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "a@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
    assert!(e.contains("auditor") && e.contains("operator"), "{e}");
    let e = err(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "a@example.com",
            "--kind",
            "access",
        ],
    );
    assert!(e.contains("auditor"), "{e}");
    let check = ok(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "a@example.com",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check["granted"], false, "nothing was written");
    assert_eq!(ok(&sock, &["status"])["records"], 0);
}

/// With root, a real second uid: one listed as auditor, one with no role at all.
#[test]
fn other_uids_get_only_their_role() {
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run consentctl as another uid");
        return;
    }
    let (auditor, stranger) = (65534u32, 65533u32);
    let net = Net::init("de");
    let sock = net.socket("de");
    net.edit_config("de", |t| {
        t.replace("auditors = []", &format!("auditors = [{auditor}]"))
            .replace("socket_mode = \"0660\"", "socket_mode = \"0666\"")
    });
    for p in [net.path(), &net.path().join("de")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _d = net.start("de");
    grant(&sock);
    let args = [
        "consent",
        "grant",
        "--subject",
        "b@example.com",
        "--purpose",
        "marketing",
        "--basis",
        "consent",
        "--evidence",
        "web form v3",
    ];
    let e = assert_error(&ctl_as(&sock, &args, Some(auditor)));
    assert!(e.contains("auditor"), "{e}");
    let read = ctl_as(
        &sock,
        &[
            "consent",
            "check",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
        ],
        Some(auditor),
    );
    assert!(read.status.success(), "{}", text(&read.stderr));
    // A retention dry run changes nothing: an auditor may preview a pass, not run one.
    let dry = ctl_as(&sock, &["retention", "run", "--dry-run"], Some(auditor));
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let e = assert_error(&ctl_as(&sock, &["retention", "run"], Some(auditor)));
    assert!(e.contains("auditor"), "{e}");
    let e = assert_error(&ctl_as(&sock, &["status"], Some(stranger)));
    assert!(e.contains("no role"), "{e}");
    still_serving(&sock);
    assert_eq!(
        ok(&sock, &["status"])["records"],
        1,
        "no write from another uid landed"
    );
}

/// A reader that goes away (`consentctl … | head -1`) ends consentctl quietly: it panicked with a
/// backtrace and exit 101 (found by an exploratory session). The pipe's read end is closed before
/// consentctl starts, so its first write fails.
#[test]
fn a_reader_that_goes_away_ends_consentctl_quietly() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let _d = net.start("de");
    grant(&sock);
    for json in [true, false] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(CONSENTCTL);
        cmd.arg("--socket").arg(&sock);
        if json {
            cmd.arg("--json");
        }
        let out = cmd
            .args(["consent", "history", "--subject", "alice@example.com"])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json {json}: {stderr}");
        assert!(stderr.is_empty(), "json {json}: {stderr}");
    }
    still_serving(&sock);
}

/// A real retention pass as of a future time would delete now what is due only then, records a
/// legal duty keeps among them (found by an exploratory session): refused, unless the office's
/// config allows it (staging, tests); a dry run previews it.
#[test]
fn a_real_retention_pass_as_of_the_future_is_refused() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let d = net.start("de");
    grant(&sock);
    ok(
        &sock,
        &[
            "consent",
            "withdraw",
            "--subject",
            "alice@example.com",
            "--purpose",
            "marketing",
        ],
    );
    let e = err(&sock, &["retention", "run", "--as-of", "2035-01-01"]);
    assert!(
        e.contains("is in the future") && e.contains("--dry-run"),
        "{e}"
    );
    let dry = ok(
        &sock,
        &["retention", "run", "--as-of", "2035-01-01", "--dry-run"],
    );
    assert_eq!(dry["deleted"], 1, "{dry}");
    assert_eq!(ok(&sock, &["status"])["records"].as_u64(), Some(1));
    assert!(d.stop());
    net.allow_future_passes("de");
    let _d = net.start("de");
    let real = ok(&sock, &["retention", "run", "--as-of", "2035-01-01"]);
    assert_eq!(real["deleted"], 1, "{real}");
}
