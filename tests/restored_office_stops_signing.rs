//! An office whose data directory is put back from a copy older than a checkpoint it published
//! holds a log that does not reproduce that checkpoint. It logged a warning and carried on: it
//! signed checkpoints that did not extend the published one (which peers refused for good),
//! every bundle it exported failed `tombstone_authority`, and bundles exported elsewhere quietly
//! left out its new changes (found by an exploratory session). Now, once a peer shows it the
//! published checkpoint, it says so at error level, signs no checkpoint, exports no bundle and
//! takes no write (one-line errors; a change it made then reached the other offices and broke
//! their exports for good), and `status` says why (`own_log_contradicted`), across a restart
//! too; also when it had already signed a larger checkpoint of its own before the peer told it.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn grant(net: &Net, subject: &str) {
    ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "support",
            "--basis",
            "contract",
        ],
    );
}

/// The size of `of`'s latest checkpoint as `at` holds it.
fn log_size(net: &Net, at: &str, of: &str) -> u64 {
    ok(&net.socket(at), &["status"])["logs"][of]
        .as_u64()
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn a_restored_office_learning_of_its_newer_checkpoint_stops_signing_and_exporting() {
    let net = Net::init("de,sg");
    let sg = net.start("sg");
    let de = net.start("de");
    grant(&net, "ann@example.com");
    // (The grant's first move to sg adds a transfer record to de's log.)
    wait_until("de's log reaches sg", Duration::from_secs(60), || {
        let held = log_size(&net, "de", "de");
        held > 0 && log_size(&net, "sg", "de") == held
    });
    assert!(de.stop());
    let backup = net.path().join("de-backup");
    copy_dir(&net.data_dir("de"), &backup);

    // de goes on: two more grants, checkpointed and received by sg.
    let de = net.start("de");
    grant(&net, "bob@example.com");
    grant(&net, "cy@example.com");
    let first = log_size(&net, "sg", "de");
    wait_until("de's newer log reaches sg", Duration::from_secs(60), || {
        let held = log_size(&net, "de", "de");
        held > first && log_size(&net, "sg", "de") == held
    });
    let published = log_size(&net, "sg", "de");
    assert!(de.stop());

    // The backup goes back in place of de's data directory. While sg is down, de writes and
    // signs a checkpoint larger than the one it published: its log does not extend that one
    // all the same (it was taken for held, being smaller than de's latest).
    std::fs::remove_dir_all(net.data_dir("de")).unwrap();
    copy_dir(&backup, &net.data_dir("de"));
    assert!(sg.stop());
    let de = net.start("de");
    for i in 0..(published - first + 2) {
        grant(&net, &format!("new{i}@example.com"));
    }
    ok(&net.socket("de"), &["audit", "checkpoint"]);
    assert!(log_size(&net, "de", "de") > published);
    let _sg = net.start("sg");
    let why = || {
        ok(&net.socket("de"), &["status"])["own_log_contradicted"]
            .as_str()
            .map(str::to_string)
    };
    wait_until(
        "de learns from sg of the checkpoint its log does not hold",
        Duration::from_secs(60),
        || why().is_some(),
    );
    let why = why().unwrap();
    assert!(why.contains("restored from an older backup"), "{why}");
    assert!(!why.contains('\n'), "{why:?}");

    let out = net.path().join("restored.jsonl");
    let e = err(
        &net.socket("de"),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    assert!(e.contains("does not hold"), "{e}");
    assert!(!out.exists(), "a failed export leaves no file");
    let e = err(&net.socket("de"), &["audit", "checkpoint"]);
    assert!(e.contains("does not hold"), "{e}");
    // Writes and local deletions are refused, and no checkpoint is signed.
    let signed = log_size(&net, "de", "de");
    let e = err(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            "dee@example.com",
            "--purpose",
            "support",
            "--basis",
            "contract",
        ],
    );
    assert!(e.contains("takes no write"), "{e}");
    let e = err(&net.socket("de"), &["retention", "run"]);
    assert!(e.contains("takes no write"), "{e}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        log_size(&net, "de", "de"),
        signed,
        "no new checkpoint signed"
    );
    assert_eq!(
        log_size(&net, "sg", "de"),
        published,
        "sg keeps de's published checkpoint"
    );
    let log = de.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("contradicts a checkpoint it published")),
        "{log}"
    );

    // Kept across a restart, before any peer says it again.
    assert!(de.stop());
    let _de = net.start("de");
    let status = ok(&net.socket("de"), &["status"]);
    assert!(status["own_log_contradicted"].is_string(), "{status}");
    err(
        &net.socket("de"),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    let e = err(
        &net.socket("de"),
        &[
            "consent",
            "withdraw",
            "--subject",
            "dee@example.com",
            "--purpose",
            "support",
        ],
    );
    assert!(e.contains("takes no write"), "{e}");
}
