//! Every office's checkpoints and log leaves replicate, so an audit bundle exported at any
//! office verifies with exit 0 — including at an office that policy keeps cn's resident records
//! from, where those records are reported as withheld (by cn's signed refusal), not dropped.
//! Tampering with a replicated leaf or checkpoint, or dropping a record, fails the right check.
mod common;
use common::audit::*;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);
/// Longer than an office takes to sign and push a checkpoint after a write.
const QUIET: Duration = Duration::from_millis(2500);
const OFFICES: [&str; 3] = ["cn", "de", "sg"];

fn status(net: &Net, office: &str) -> Value {
    ok(&net.socket(office), &["status"])
}

fn grant(net: &Net, office: &str, subject: &str) -> String {
    ok(
        &net.socket(office),
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn refusals(net: &Net, office: &str) -> usize {
    ok(&net.socket(office), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "refused")
        .count()
}

/// Waits until de and sg hold the same records, cn holds those plus its `cn_extra` own, cn
/// refused each to both, and every office holds every office's same latest checkpoint,
/// unchanged for `QUIET`.
fn converge(net: &Net, cn_extra: u64) {
    let started = Instant::now();
    let mut quiet: Option<(Value, Instant)> = None;
    loop {
        let s: Vec<Value> = OFFICES.iter().map(|o| status(net, o)).collect();
        let (cn, de, sg) = (&s[0], &s[1], &s[2]);
        let logs = &cn["logs"];
        let settled = de["digest"] == sg["digest"]
            && cn["records"].as_u64() >= de["records"].as_u64().map(|n| n + cn_extra)
            && s.iter().all(|x| x["logs"] == *logs)
            && logs.as_object().is_some_and(|m| m.len() == OFFICES.len())
            && refusals(net, "cn") >= 2 * cn_extra as usize;
        if settled {
            match &quiet {
                Some((v, t)) if v == logs && t.elapsed() >= QUIET => return,
                Some((v, _)) if v == logs => {}
                _ => quiet = Some((logs.clone(), Instant::now())),
            }
        } else {
            quiet = None;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no convergence within {TIMEOUT:?}: {}",
            s.iter()
                .map(|x| format!(
                    "{} records={} digest={} logs={}",
                    x["office"], x["records"], x["digest"], x["logs"]
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `consentctl --json audit verify FILE --root-pub KEY [--previous OLD]`: (exit code, report).
fn audit_verify_previous(
    net: &Net,
    bundle: &std::path::Path,
    previous: Option<&std::path::Path>,
) -> (i32, Value) {
    let root = net.path().join("root.pub");
    let mut args = vec![
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--root-pub",
        root.to_str().unwrap(),
    ];
    if let Some(p) = previous {
        args.extend(["--previous", p.to_str().unwrap()]);
    }
    let out = ctl(&net.socket("de"), &args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", text(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

fn audit_verify(net: &Net, bundle: &std::path::Path) -> (i32, Value) {
    audit_verify_previous(net, bundle, None)
}

fn checks(outcome: &consentd::audit::verify::Outcome) -> Vec<(&'static str, Option<String>)> {
    outcome
        .failures
        .iter()
        .map(|f| (f.check, f.office.clone()))
        .collect()
}

#[test]
fn bundles_from_every_office_verify_and_name_what_policy_withheld() {
    let net = Net::init("cn,de,sg");
    let mut daemons: Vec<Daemon> = OFFICES.iter().map(|o| net.start(o)).collect();
    // Writes at every office, cn's own resident record among them (it never leaves China).
    let wang = grant(&net, "cn", "wang@example.cn");
    grant(&net, "de", "anna@example.de");
    grant(&net, "sg", "tan@example.sg");
    ok(
        &net.socket("sg"),
        &[
            "request",
            "open",
            "--subject",
            "tan@example.sg",
            "--kind",
            "access",
        ],
    );
    converge(&net, 1);

    // The leaves of cn's resident record travelled; the record did not.
    let de_status = status(&net, "de");
    assert!(
        de_status["logs"]["cn"].as_u64().unwrap() >= 3,
        "cn's log (its record and two refusals) reached de: {de_status}"
    );
    let check = ok(
        &net.socket("de"),
        &[
            "consent",
            "check",
            "--subject",
            "wang@example.cn",
            "--purpose",
            "marketing",
        ],
    );
    assert!(check["record"].is_null(), "cn's record reached de: {check}");

    let mut bundles = Vec::new();
    for office in OFFICES {
        let bundle = export(&net, office, &format!("{office}.jsonl"));
        let (code, report) = audit_verify(&net, &bundle);
        assert_eq!(
            code, 0,
            "the bundle exported at {office} does not verify: {report}"
        );
        assert_eq!(report["ok"], true);
        assert_eq!(report["counts"]["checkpoints"], 3, "{report}");
        for o in OFFICES {
            assert!(
                report["by_office"][o]["log_size"].as_u64().unwrap() > 0,
                "{office}'s bundle lacks {o}'s log: {report}"
            );
        }
        // cn's record is withheld from de and sg (by cn's signed refusal), never from cn.
        let expected = if office == "cn" { 0 } else { 1 };
        assert_eq!(
            report["counts"]["withheld_records"], expected,
            "{office}: {report}"
        );
        assert_eq!(
            report["by_office"]["cn"]["withheld"].as_u64().unwrap() > 0,
            office != "cn",
            "{office}: {report}"
        );
        bundles.push((office, bundle));
    }

    // cn's signed refusals are not transfers: `audit report` counted each as one "without
    // mechanism" leaving China (found by an exploratory session).
    let root = net.path().join("root.pub");
    let report = audit_report(&net, "de", &bundles[1].1);
    for row in report["transfers"].as_array().unwrap() {
        if row["office"] == "cn" {
            assert_eq!(row["without_mechanism"], 0, "{row}");
        }
    }

    // The human report names the withheld count.
    let human = std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .args(["audit", "verify"])
        .arg(&bundles[1].1)
        .arg("--root-pub")
        .arg(&root)
        .output()
        .unwrap();
    assert!(human.status.success(), "{}", text(&human.stderr));
    assert!(
        text(&human.stdout).contains("withheld from de by their offices' signed refusals"),
        "{}",
        text(&human.stdout)
    );

    // Tampering with de's bundle: each edit fails the check that names it.
    let root_key = root_pub(&net);
    let de_lines = lines(&bundles[1].1);
    let office_of = |l: &str| serde_json::from_str::<Value>(l).unwrap()["office"].clone();
    let cn_leaves = (0..de_lines.len())
        .find(|&i| line_type(&de_lines[i]) == "leaves" && office_of(&de_lines[i]) == "cn")
        .expect("cn's leaves in de's bundle");
    let cn_checkpoint = (0..de_lines.len())
        .find(|&i| line_type(&de_lines[i]) == "checkpoint" && office_of(&de_lines[i]) == "cn")
        .expect("cn's checkpoint in de's bundle");

    // (a) one replicated leaf of cn's log changed: cn's log no longer reproduces its root.
    let mut edited = de_lines.clone();
    let mut v: Value = serde_json::from_str(&edited[cn_leaves]).unwrap();
    let leaf = v["leaves"][0].as_str().unwrap().to_string();
    let last = if leaf.ends_with('0') { "1" } else { "0" };
    v["leaves"][0] = Value::String(format!("{}{last}", &leaf[..leaf.len() - 1]));
    edited[cn_leaves] = v.to_string();
    let out = verify_bytes(&rebuild(&edited), &root_key);
    assert!(!out.ok());
    assert!(
        checks(&out).contains(&("log_root", Some("cn".into()))),
        "{:?}",
        out.failures
    );

    // (b) cn's replicated checkpoint altered (its tree size): its signature fails.
    let mut edited = de_lines.clone();
    let mut v: Value = serde_json::from_str(&edited[cn_checkpoint]).unwrap();
    let note = v["note"].as_str().unwrap().to_string();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    let forged = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert_ne!(forged, note);
    v["note"] = Value::String(forged);
    edited[cn_checkpoint] = v.to_string();
    let out = verify_bytes(&rebuild(&edited), &root_key);
    assert!(
        checks(&out).contains(&("checkpoint_signature", Some("cn".into()))),
        "{:?}",
        out.failures
    );

    // (c) de drops sg's record silently: sg's log still lists it, and sg refused nothing.
    let sg_env = (0..de_lines.len())
        .filter(|&i| line_type(&de_lines[i]) == "envelope")
        .find(|&i| {
            let v: Value = serde_json::from_str(&de_lines[i]).unwrap();
            let bytes = consentd_sync::b64::decode(v["data"].as_str().unwrap()).unwrap();
            let env = consentd_sync::Envelope::decode(&bytes).unwrap();
            let roster = consentd_sync::roster::SignedRoster::load(&net.path().join("roster.json"))
                .unwrap()
                .verify(&root_key)
                .unwrap();
            roster.office_by_signer(&env.signer).unwrap().id == "sg"
        })
        .expect("an envelope by sg");
    let mut edited = de_lines.clone();
    edited.remove(sg_env);
    let out = verify_bytes(&rebuild(&edited), &root_key);
    assert!(
        checks(&out).contains(&("log_completeness", Some("sg".into()))),
        "{:?}",
        out.failures
    );

    // (d) cn's refusals removed from de's bundle: cn's resident record no longer reads as
    // withheld; it is a missing record (and the refusals themselves are missing from cn's log).
    let mut edited = de_lines.clone();
    edited.retain(|l| {
        line_type(l) != "envelope" || {
            let v: Value = serde_json::from_str(l).unwrap();
            let bytes = consentd_sync::b64::decode(v["data"].as_str().unwrap()).unwrap();
            let env = consentd_sync::Envelope::decode(&bytes).unwrap();
            let change = automerge::Change::try_from(&env.change[..]).unwrap();
            !format!("{:?}", change.decode()).contains("refused")
        }
    });
    assert!(
        edited.len() < de_lines.len(),
        "the refusals were in the bundle"
    );
    let out = verify_bytes(&rebuild(&edited), &root_key);
    let wang_missing = out.failures.iter().any(|f| {
        f.check == "log_completeness"
            && f.office.as_deref() == Some("cn")
            && f.record.as_deref() == Some(wang.as_str())
    });
    assert!(wang_missing, "{:?}", out.failures);
    assert_eq!(out.report["counts"]["withheld"], 0);

    // de restarts (its followed logs are rebuilt from storage and checked against the stored
    // checkpoints), cn writes another resident record, and the logs move on: de's new bundle
    // verifies, also as a consistent successor of its first (`--previous`: every office's log,
    // cn's and sg's included, only grew).
    let de = daemons.remove(1);
    assert!(de.stop());
    daemons.push(net.start("de"));
    grant(&net, "cn", "li@example.cn");
    converge(&net, 2);
    let again = export(&net, "de", "de-2.jsonl");
    let (code, report) = audit_verify_previous(&net, &again, Some(&bundles[1].1));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["counts"]["withheld_records"], 2, "{report}");
    let before = lines(&bundles[1].1).len();
    assert!(lines(&again).len() > before);
    // And the first bundle presented as the successor of the second is caught.
    let (code, report) = audit_verify_previous(&net, &bundles[1].1, Some(&again));
    assert_ne!(code, 0);
    assert!(report.to_string().contains("consistency"), "{report}");
}
