//! `consentd demo`: the product end to end on loopback, with a fresh temporary network.
//!
//! It runs real office daemons as child processes (this same executable with `--config`) and drives
//! them over their real control sockets, printing each step as an operator would type it.

use crate::protocol::{self, Client, Request};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the demo waits for a daemon to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

struct Daemon {
    office: String,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, the clean shutdown path; then reap.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn run(keep: bool) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("consentd-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.path().to_owned();
    println!("# consentd demo in {}", dir.display());
    let offices = crate::network::parse_offices("de,sg").map_err(|e| e.to_string())?;
    crate::network::init(&dir, &offices, None, "demo").map_err(|e| e.to_string())?;
    println!(
        "$ consentctl network init --dir {} --offices de,sg",
        dir.display()
    );

    let exe = std::env::current_exe().map_err(|e| format!("cannot find consentd itself: {e}"))?;
    let de = start(&exe, &dir, "de")?;
    let sock = dir.join("de").join("control.sock");
    let step = |line: &str, request: Request| -> Result<Value, String> {
        println!("$ consentctl --socket {} {line}", sock.display());
        let v = Client::connect(&sock)
            .and_then(|mut c| c.call(&request))
            .map_err(|e| e.to_string())?;
        println!("{}", serde_json::to_string(&v).expect("json"));
        Ok(v)
    };
    step(
        "consent grant --subject alice@example.com --purpose marketing --basis consent --service sms --evidence 'web form v3'",
        Request::ConsentGrant(protocol::ConsentGrant {
            subject: "alice@example.com".into(),
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
        }),
    )?;
    let check = |label: &str| {
        step(
            &format!("consent check --subject '{label}' --purpose marketing"),
            Request::ConsentCheck(protocol::ConsentCheck {
                subject: label.into(),
                purpose: "marketing".into(),
                at: None,
            }),
        )
    };
    let granted = check(" Alice@Example.COM ")?;
    step(
        "consent withdraw --subject alice@example.com --purpose marketing",
        Request::ConsentWithdraw(protocol::ConsentWithdraw {
            subject: "alice@example.com".into(),
            purpose: "marketing".into(),
            at: None,
        }),
    )?;
    let withdrawn = check("alice@example.com")?;
    step(
        "request open --subject alice@example.com --kind access --received 2026-03-31T10:00:00Z",
        Request::RequestOpen(protocol::RequestOpen {
            subject: "alice@example.com".into(),
            kind: "access".into(),
            received: Some("2026-03-31T10:00:00Z".into()),
            jurisdiction: None,
        }),
    )?;
    step("status", Request::Status(protocol::Empty {}))?;
    drop(de);
    println!(
        "# office de stopped cleanly; granted={} then granted={}",
        granted["granted"], withdrawn["granted"]
    );
    println!("# replication between offices arrives with the replication issue");
    if keep {
        let kept = tmp.keep();
        println!("# kept {}", kept.display());
    }
    Ok(())
}

fn start(exe: &Path, dir: &Path, office: &str) -> Result<Daemon, String> {
    let config = crate::network::office_config_path(dir, office);
    let child = Command::new(exe)
        .arg("--config")
        .arg(&config)
        .env("CONSENTD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start office {office}: {e}"))?;
    let daemon = Daemon {
        office: office.into(),
        child,
    };
    let sock = dir.join(office).join("control.sock");
    let started = Instant::now();
    while Client::connect(&sock).is_err() {
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "office {} did not become ready within {READY_TIMEOUT:?}",
                daemon.office
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("$ consentd --config {} &", config.display());
    Ok(daemon)
}
