//! `consentd demo`: the product end to end on loopback, with a fresh temporary network.
//!
//! It makes a network of the company's seven offices, runs each as a real office daemon (this same
//! executable with `--config`, as a child process), drives them over their real control sockets
//! and prints each step as an operator would type it: a small workload written at several
//! offices, replication until the offices agree, answers read at other offices than the one that
//! wrote, and an audit bundle exported from one office and verified offline against the root key.
//! `--keep` leaves the daemons running and prints how to reach and stop them.

use crate::ctl;
use crate::protocol::{self, Client, Empty, Request};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The offices of the demo network, in `network init` order.
pub const OFFICES: &[&str] = &["us", "sg", "de", "cn", "co", "au", "uk"];
/// Offices whose own records stay at home (China's data localisation; `[transfer] resident`).
const RESIDENT: &str = "cn";
/// How long the demo waits for a daemon to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the demo waits for the offices to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the logs must look converged (every office holding every office's same latest
/// checkpoint) before the export: longer than an office takes to sign and push a checkpoint
/// after writing, so nothing it wrote is still on its way.
const LOGS_QUIET: Duration = Duration::from_millis(2500);

/// Pids of the running daemons, for the signal handler: a demo stopped by SIGINT, SIGTERM or
/// SIGHUP passes SIGTERM on to its daemons before it dies, so none is left behind.
static PIDS: [AtomicI32; OFFICES.len()] = [const { AtomicI32::new(0) }; OFFICES.len()];

extern "C" fn on_signal(sig: libc::c_int) {
    for pid in &PIDS {
        let pid = pid.load(Ordering::SeqCst);
        if pid > 0 {
            // kill, signal and raise are async-signal-safe.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn forward_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        unsafe { libc::signal(sig, handler) };
    }
}

/// The running daemons. Dropping the fleet SIGTERMs every one, then reaps them; `detach` leaves
/// them running instead.
struct Fleet {
    children: Vec<(String, Child)>,
}

impl Fleet {
    fn detach(mut self) -> Vec<(String, u32)> {
        let out = self
            .children
            .iter()
            .map(|(o, c)| (o.clone(), c.id()))
            .collect();
        // Dropping a std Child neither kills nor waits for it.
        self.children.clear();
        for pid in &PIDS {
            pid.store(0, Ordering::SeqCst);
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM, the clean shutdown path, to all at once; then reap, killing any that hang.
        for (_, child) in &self.children {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let started = Instant::now();
        for (office, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if started.elapsed() > STOP_TIMEOUT => {
                        eprintln!(
                            "# office {office} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Prints and sends control-socket requests. Paths are shown relative to `$D`, the network directory.
struct Operator {
    dir: PathBuf,
}

impl Operator {
    fn socket(&self, office: &str) -> PathBuf {
        self.dir.join(office).join("control.sock")
    }

    /// Runs one step: prints the consentctl line and the daemon's answer.
    fn step(
        &self,
        office: &str,
        line: &str,
        request: Request,
        human: fn(&Value) -> String,
    ) -> Result<Value, String> {
        println!("$ consentctl --socket $D/{office}/control.sock {line}");
        let v = self.quiet(office, &request)?;
        for l in human(&v).lines() {
            println!("  {l}");
        }
        Ok(v)
    }

    /// Sends a request without printing it.
    fn quiet(&self, office: &str, request: &Request) -> Result<Value, String> {
        Client::connect(&self.socket(office))
            .and_then(|mut c| c.call(request))
            .map_err(|e| format!("office {office}: {}: {e}", request.op()))
    }

    fn grant(
        &self,
        office: &str,
        subject: &str,
        purpose: &str,
        service: &str,
        evidence: &str,
    ) -> Result<Value, String> {
        self.step(
            office,
            &format!(
                "consent grant --subject {subject} --purpose {purpose} --basis consent --service {service} --evidence '{evidence}'"
            ),
            Request::ConsentGrant(protocol::ConsentGrant {
                subject: subject.into(),
                purpose: purpose.into(),
                basis: "consent".into(),
                service: Some(service.into()),
                evidence: Some(evidence.into()),
                notice: None,
                under_18: false,
                parental_consent: None,
                person: None,
                role: None,
                at: None,
            }),
            ctl::human_id,
        )
    }

    fn check(&self, office: &str, subject: &str, purpose: &str) -> Result<Value, String> {
        self.step(
            office,
            &format!("consent check --subject {subject} --purpose {purpose}"),
            Request::ConsentCheck(check(subject, purpose)),
            ctl::human_check,
        )
    }

    fn open(
        &self,
        office: &str,
        subject: &str,
        received: &str,
        jurisdiction: Option<&str>,
    ) -> Result<Value, String> {
        let j = jurisdiction.map_or(String::new(), |j| format!(" --jurisdiction {j}"));
        self.step(
            office,
            &format!("request open --subject {subject} --kind access --received {received}{j}"),
            Request::RequestOpen(protocol::RequestOpen {
                subject: subject.into(),
                kind: "access".into(),
                received: Some(received.into()),
                jurisdiction: jurisdiction.map(str::to_string),
            }),
            |v| {
                let confirm = v["confirm_by"]
                    .as_str()
                    .map_or(String::new(), |c| format!(", confirm receipt by {c}"));
                format!("{}{confirm}", ctl::human_due(v))
            },
        )
    }

    fn status(&self, office: &str) -> Result<Value, String> {
        self.quiet(office, &Request::Status(Empty {}))
    }
}

fn check(subject: &str, purpose: &str) -> protocol::ConsentCheck {
    protocol::ConsentCheck {
        subject: subject.into(),
        purpose: purpose.into(),
        at: None,
    }
}

pub fn run(keep: bool) -> Result<(), String> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("consentd-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp
        .path()
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", tmp.path().display()))?;
    let list = OFFICES.join(",");
    println!("# consentd demo: seven offices on loopback, each a real daemon process");
    println!("$ D={}", dir.display());
    println!("$ consentctl network init --dir $D --offices {list}");
    let offices = crate::network::parse_offices(&list).map_err(|e| e.to_string())?;
    crate::network::init(&dir, &offices, None, "demo").map_err(|e| e.to_string())?;
    println!("  root key, signed roster, one config per office; free UDP ports on 127.0.0.1");

    // Declared after `tmp`, so on every path (error or not) the daemons stop before the
    // directory is removed.
    let fleet = start_all(&dir, keep)?;
    let op = Operator { dir: dir.clone() };
    let mut refused: Vec<String> = Vec::new();

    println!("\n# 1. Work at several offices");
    op.grant("de", "anna@example.de", "marketing", "email", "web form v3")?;
    op.grant(
        "us",
        "bob@example.com",
        "service_analytics",
        "push",
        "mobile app consent screen v2",
    )?;
    op.grant("sg", "tan@example.sg", "marketing", "sms", "web form v3")?;
    op.grant(
        "cn",
        "wang@example.cn",
        "marketing",
        "sms",
        "web form v3 (zh)",
    )?;
    // Anna withdraws through the Singapore office: sg records it once de's grant has reached it.
    wait_until(Duration::from_secs(30), "de's grant to reach sg", || {
        Ok(op
            .quiet(
                "sg",
                &Request::ConsentCheck(check("anna@example.de", "marketing")),
            )?
            .get("granted")
            == Some(&Value::Bool(true)))
    })?;
    op.step(
        "sg",
        "consent withdraw --subject anna@example.de --purpose marketing",
        Request::ConsentWithdraw(protocol::ConsentWithdraw {
            subject: "anna@example.de".into(),
            purpose: "marketing".into(),
            at: None,
        }),
        ctl::human_id,
    )?;
    op.open(
        "us",
        "carla@example.com",
        "2026-03-31T09:00:00Z",
        Some("US-CA"),
    )?;
    op.open("uk", "ian@example.co.uk", "2026-03-31T09:00:00Z", None)?;
    op.open("co", "maria@example.com.co", "2026-03-31T09:00:00Z", None)?;
    op.step(
        "de",
        "transfer record --to US --recipient 'Mailer Inc.' --categories email_address,contact_data --mechanism scc --tia TIA-2026-07 --subject anna@example.de",
        Request::TransferRecord(protocol::TransferRecordArgs {
            to: "US".into(),
            recipient: "Mailer Inc.".into(),
            categories: vec!["email_address".into(), "contact_data".into()],
            mechanism: "scc".into(),
            subject: Some("anna@example.de".into()),
            tia: Some("TIA-2026-07".into()),
            recipient_kind: None,
            at: None,
        }),
        ctl::human_id,
    )?;
    // A write the office itself refuses: consent without evidence of the notice shown.
    println!("$ consentctl --socket $D/au/control.sock consent grant --subject lee@example.com.au --purpose marketing --basis consent");
    match op.quiet(
        "au",
        &Request::ConsentGrant(protocol::ConsentGrant {
            subject: "lee@example.com.au".into(),
            purpose: "marketing".into(),
            basis: "consent".into(),
            service: None,
            evidence: None,
            notice: None,
            under_18: false,
            parental_consent: None,
            person: None,
            role: None,
            at: None,
        }),
    ) {
        Ok(v) => return Err(format!("au accepted a consent without evidence: {v}")),
        Err(e) => {
            let line = e.split_once(": consent.grant: ").map_or(&*e, |(_, m)| m);
            println!("  error: {line}");
            refused.push("au: a consent without evidence of the notice shown".into());
        }
    }

    println!("\n# 2. Replication: every office's `status` digest (a hash over what it holds)");
    let writes_done = Instant::now();
    let home: Vec<&str> = OFFICES.iter().copied().filter(|o| *o != RESIDENT).collect();
    let mut last: Vec<(&str, Value)>;
    let converged = loop {
        last = Vec::new();
        for office in OFFICES {
            last.push((*office, op.status(office)?));
        }
        let row = |o: &str| &last.iter().find(|(r, _)| *r == o).expect("every office").1;
        let equal = home
            .iter()
            .all(|o| row(o)["digest"] == row(home[0])["digest"]);
        let held_cn = row(RESIDENT)["records"].as_u64().unwrap_or(0);
        let held = row(home[0])["records"].as_u64().unwrap_or(0);
        // cn holds everything the others hold plus its own resident records.
        if equal && held_cn > held {
            break writes_done.elapsed();
        }
        if writes_done.elapsed() > CONVERGE_TIMEOUT {
            print_status(&last);
            return Err(format!(
                "the offices did not converge within {CONVERGE_TIMEOUT:?}: the six non-CN digests are {} and cn holds {held_cn} records against {held} (see the table above; daemon logs in {}/<office>/consentd.log)",
                if equal { "equal" } else { "not equal" },
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "$ for o in {}; do consentctl --socket $D/$o/control.sock --json status; done",
        OFFICES.join(" ")
    );
    print_status(&last);
    println!(
        "  converged in {:.1} s: the six non-CN offices hold the same set; cn holds theirs plus its own",
        converged.as_secs_f64()
    );
    // Links come up within moments of start; give the last ones a few seconds before showing them.
    let all_connected = |v: &Value| {
        v.as_array()
            .is_some_and(|p| p.iter().all(|r| r["connected"] == true))
    };
    let _ = wait_until(Duration::from_secs(10), "au's links", || {
        Ok(all_connected(&op.quiet("au", &Request::Peers(Empty {}))?))
    });
    let peers = op.step("au", "peers", Request::Peers(Empty {}), ctl::human_peers)?;
    if !all_connected(&peers) {
        println!("  note: not every link of au is up yet; records reached it through the others");
    }
    println!("\n# 3. Answers from other offices than the one that wrote");
    let anna = op.check("au", "anna@example.de", "marketing")?;
    let tan = op.check("uk", "tan@example.sg", "marketing")?;
    let wang_sg = op.check("sg", "wang@example.cn", "marketing")?;
    let tan_cn = op.check("cn", "tan@example.sg", "marketing")?;
    let requests = op.step(
        "de",
        "request list --as-of 2026-04-01T00:00:00Z",
        Request::RequestList(protocol::RequestList {
            as_of: Some("2026-04-01T00:00:00Z".into()),
            ..Default::default()
        }),
        ctl::human_requests,
    )?;
    let expect = |what: &str, ok: bool| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("unexpected answer: {what}"))
        }
    };
    expect(
        "au should see anna's consent as withdrawn (granted at de, withdrawn at sg)",
        anna["granted"] == false && !anna["record"].is_null(),
    )?;
    expect(
        "uk should see tan's consent granted at sg",
        tan["granted"] == true,
    )?;
    expect(
        "sg must not know wang (cn's record stays in China)",
        wang_sg["granted"] == false && wang_sg["record"].is_null(),
    )?;
    expect(
        "cn should see tan's consent granted at sg",
        tan_cn["granted"] == true,
    )?;
    expect(
        "de should list the three requests opened at us, uk and co",
        requests.as_array().map_or(0, Vec::len) == 3,
    )?;
    // Replication records each refusal (and each first cross-border move) as a signed transfer
    // record; they are written just after the sync that caused them.
    let waiting = Instant::now();
    let transfers = loop {
        let t = op.quiet("cn", &Request::TransferList(Default::default()))?;
        let refused = t
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| is_refusal(x)).count());
        if refused >= OFFICES.len() - 1 || waiting.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows = transfers.as_array().cloned().unwrap_or_default();
    let refusals: Vec<&Value> = rows.iter().filter(|t| is_refusal(t)).collect();
    let moved = rows.iter().filter(|t| t["status"] == "transferred").count();
    let manual = rows.iter().filter(|t| t.get("status").is_none()).count();
    println!(
        "$ consentctl --socket $D/cn/control.sock transfer list   ({} rows)",
        rows.len()
    );
    println!("  {manual} recorded by operators, {moved} cross-border moves recorded by replication, {} refusals:", refusals.len());
    for t in &refusals {
        println!(
            "  {} refused {} record(s) to office {} ({}): {}",
            t["office"].as_str().unwrap_or("-"),
            t["records"].as_array().map_or(0, Vec::len),
            t["to_office"].as_str().unwrap_or("-"),
            t["to"].as_str().unwrap_or("-"),
            t["reason"].as_str().unwrap_or("-")
        );
    }
    expect(
        "cn should record a signed refusal for each office wang's record was kept from",
        refusals.len() == OFFICES.len() - 1,
    )?;
    refused.push(format!(
        "cn -> every other office: wang's consent stays in China (PIPL localisation); {} signed refusals in cn's `transfer list`",
        refusals.len()
    ));

    println!("\n# 4. Audit: export a bundle from one office, verify it offline with the root key");
    // Checkpoints travel with their log leaves: wait until every office holds every office's
    // latest checkpoint (status `logs`), so de's bundle can account for every envelope it holds.
    let logs_wait = Instant::now();
    let mut quiet_since: Option<(Value, Instant)> = None;
    let logs = loop {
        let mut rows = Vec::new();
        for office in OFFICES {
            rows.push(op.status(office)?);
        }
        let first = rows[0]["logs"].clone();
        let same = rows.iter().all(|r| r["logs"] == first)
            && first.as_object().is_some_and(|m| m.len() == OFFICES.len());
        let digests = rows
            .iter()
            .zip(OFFICES)
            .filter(|(_, o)| **o != RESIDENT)
            .all(|(r, _)| r["digest"] == rows[0]["digest"]);
        if same && digests {
            match &quiet_since {
                Some((v, t)) if *v == first && t.elapsed() >= LOGS_QUIET => break first,
                Some((v, _)) if *v == first => {}
                _ => quiet_since = Some((first, Instant::now())),
            }
        } else {
            quiet_since = None;
        }
        if logs_wait.elapsed() > CONVERGE_TIMEOUT {
            return Err(format!(
                "the offices' logs did not converge within {CONVERGE_TIMEOUT:?}: `status` logs {}",
                rows.iter()
                    .zip(OFFICES)
                    .map(|(r, o)| format!("{o}={}", r["logs"]))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let sizes: Vec<String> = logs
        .as_object()
        .map(|m| m.iter().map(|(o, n)| format!("{o}:{n}")).collect())
        .unwrap_or_default();
    println!(
        "  every office holds every office's latest checkpoint and its log leaves ({}; {:.1} s)",
        sizes.join(" "),
        logs_wait.elapsed().as_secs_f64()
    );
    let bundle = dir.join("audit-de.jsonl");
    println!("$ consentctl --socket $D/de/control.sock audit export --out $D/audit-de.jsonl");
    let exported = crate::audit::export::export_to_file(&op.socket("de"), &bundle, false)?;
    println!(
        "  wrote $D/audit-de.jsonl ({} envelopes, {} tombstones, {} checkpoints, {} bytes)",
        exported["envelopes"], exported["tombstones"], exported["checkpoints"], exported["bytes"]
    );
    println!("$ consentctl audit verify $D/audit-de.jsonl --root-pub $D/root.pub");
    let audit = verify(&dir, &bundle)?;
    println!("  {}", audit.line);

    println!("\n# Summary");
    println!(
        "  offices      {} (network {})",
        OFFICES.join(" "),
        dir.display()
    );
    let counts: Vec<String> = last
        .iter()
        .map(|(o, v)| format!("{o}={}", v["records"]))
        .collect();
    println!("  records      {}", counts.join(" "));
    println!(
        "  digests      equal at the six non-CN offices ({}); cn differs by its resident records",
        short(&last[0].1["digest"])
    );
    println!(
        "  converged    {:.1} s after the last write",
        converged.as_secs_f64()
    );
    for r in &refused {
        println!("  refused      {r}");
    }
    println!("  audit        {}", audit.summary);
    println!("  total        {:.1} s", started.elapsed().as_secs_f64());

    if keep {
        let pids = fleet.detach();
        let kept = tmp.keep();
        println!(
            "\n# The network keeps running (--keep) in {}",
            kept.display()
        );
        if let Some(bin) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
        {
            println!(
                "  consentctl is next to consentd: export PATH={}:$PATH",
                bin.display()
            );
        }
        for (office, pid) in &pids {
            println!(
                "  {office}: consentctl --socket {}/{office}/control.sock status   (pid {pid}, log {}/{office}/consentd.log)",
                kept.display(),
                kept.display()
            );
        }
        let all: Vec<String> = pids.iter().map(|(_, p)| p.to_string()).collect();
        println!(
            "  stop them:  kill {}   (or: pkill -f {})",
            all.join(" "),
            kept.display()
        );
        println!("  then:       rm -r {}", kept.display());
    } else {
        drop(fleet);
        println!("  stopped      every office with SIGTERM; removed the temporary network");
    }
    Ok(())
}

/// The offline verification's outcome, in words.
struct AuditResult {
    line: String,
    summary: String,
}

fn verify(dir: &Path, bundle: &Path) -> Result<AuditResult, String> {
    let root_pub = dir.join("root.pub");
    let root_pub = consentd_sync::keys::read_public_key(&root_pub.display().to_string())
        .map_err(|e| e.to_string())?;
    let opts = crate::audit::verify::Options {
        root_pub,
        threads: 2,
        collect: false,
        progress: false,
        accept_version_1: false,
    };
    let outcome = crate::audit::cli::verify_files(bundle, None, &opts)?;
    let c = &outcome.report["counts"];
    let counted = format!(
        "{} envelopes, {} records, {} tombstones, {} checkpoints, {} log leaves",
        c["envelopes"], c["records"], c["tombstones"], c["checkpoints"], c["leaves"]
    );
    let withheld = format!(
        "{} log leaves of {} record(s) withheld from de by their office's signed refusal (transfer policy), not dropped",
        c["withheld"], c["withheld_records"]
    );
    if outcome.ok() && c["withheld_records"].as_u64().unwrap_or(0) == 0 {
        return Err(format!(
            "the bundle from de verified, but reports no record withheld: cn's resident record should be ({counted})"
        ));
    }
    if outcome.ok() {
        return Ok(AuditResult {
            line: format!("OK: every check passed ({counted}); {withheld}"),
            summary: format!(
                "bundle from de verified: OK (exit 0), every check passed, every office's log included; {withheld}"
            ),
        });
    }
    println!(
        "  FAILED: {} check(s) failed ({counted}):",
        outcome.failures_total
    );
    for f in &outcome.failures {
        println!(
            "    {} office {}: {}",
            f.check,
            f.office.as_deref().unwrap_or("-"),
            f.detail
        );
    }
    let checks: std::collections::BTreeSet<&str> =
        outcome.failures.iter().map(|f| f.check).collect();
    Err(format!(
        "the audit bundle from de does not verify: failed checks {checks:?}; see above"
    ))
}

fn is_refusal(t: &Value) -> bool {
    let text = t.to_string();
    text.contains("refus") || text.contains("forbidden")
}

fn short(digest: &Value) -> String {
    digest
        .as_str()
        .map_or("-".into(), |d| format!("{}…", &d[..d.len().min(12)]))
}

fn print_status(rows: &[(&str, Value)]) {
    println!("  OFFICE JURIS RECORDS ENVELOPES DIGEST");
    for (office, v) in rows {
        println!(
            "  {:<6} {:<5} {:>7} {:>9} {}",
            office,
            v["jurisdiction"].as_str().unwrap_or("-"),
            v["records"],
            v["envelopes"],
            short(&v["digest"])
        );
    }
}

fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts every office and waits until each control socket accepts.
fn start_all(dir: &Path, keep: bool) -> Result<Fleet, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find consentd itself: {e}"))?;
    forward_signals();
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    for office in OFFICES {
        let config = crate::network::office_config_path(dir, office);
        let log_path = dir.join(office).join("consentd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(&config)
            .env("CONSENTD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if keep {
            // Its own process group: a Ctrl-C at the demo's terminal does not reach kept offices.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start office {office}: {e}"))?;
        PIDS[fleet.children.len()].store(child.id() as i32, Ordering::SeqCst);
        fleet.children.push((office.to_string(), child));
        println!("$ consentd --config $D/{office}/consentd.toml 2>$D/{office}/consentd.log &");
    }
    for office in OFFICES {
        let sock = dir.join(office).join("control.sock");
        let started = Instant::now();
        while Client::connect(&sock).is_err() {
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "office {office} did not become ready within {READY_TIMEOUT:?} (log: {})",
                    dir.join(office).join("consentd.log").display()
                ));
            }
            let (_, child) = fleet
                .children
                .iter_mut()
                .find(|(o, _)| o == office)
                .expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "office {office} exited ({status}) before it was ready (log: {})",
                    dir.join(office).join("consentd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("  all seven control sockets accept connections");
    Ok(fleet)
}
