//! Another office's newest envelopes reach an exporter before the checkpoint that logs them, and
//! an export carrying them failed `audit verify` (`log_inclusion`): on a network where an office
//! was writing, most bundles exported elsewhere failed (found by an exploratory session). Now the
//! exporter leaves out what its author's checkpoint in the bundle does not log yet, counts it
//! (`not_yet_logged`), and the next export, once the checkpoint has arrived, carries it.
//!
//! Deterministic: a test peer holding uk's keys pushes uk's envelopes to de and never a
//! checkpoint, as a link does in the second before uk's checkpoint follows.
mod common;
use common::audit::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn export_summary(net: &Net, name: &str) -> (Value, std::path::PathBuf) {
    let out = net.path().join(name);
    let v = ok(
        &net.socket("de"),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    (v, out)
}

#[test]
fn an_export_leaves_out_envelopes_no_checkpoint_logs_yet_and_verifies() {
    let net = Net::init("de,uk");
    // uk writes while de is down; its envelopes are taken from its store.
    let uk = net.start("uk");
    let id = ok(
        &net.socket("uk"),
        &[
            "consent",
            "grant",
            "--subject",
            "lee@example.com",
            "--purpose",
            "support",
            "--basis",
            "contract",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(uk.stop());
    let doc: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let envelopes = {
        let store =
            consentd_storage::Store::open(&net.data_dir("uk").join("consentd.redb")).unwrap();
        let all = store.doc_envelopes(&doc).unwrap();
        store.shutdown();
        all
    };
    assert!(!envelopes.is_empty());

    // de receives them from a peer that sends no checkpoint.
    let _de = net.start("de");
    let held = || {
        ok(&net.socket("de"), &["status"])["envelopes"]
            .as_u64()
            .unwrap()
    };
    let before = held();
    let runtime = peer::runtime();
    runtime.block_on(peer::push_as(
        net.path(),
        "uk",
        "de",
        envelopes.clone(),
        || held() >= before + envelopes.len() as u64,
    ));
    drop(runtime);
    assert_eq!(
        held(),
        before + envelopes.len() as u64,
        "de stored uk's envelopes"
    );

    let (summary, bundle) = export_summary(&net, "early.jsonl");
    assert_eq!(
        summary["not_yet_logged"],
        envelopes.len() as u64,
        "{summary}"
    );
    let report = verified(&net, "de", &bundle);
    assert_eq!(report["by_office"]["uk"]["envelopes"], 0, "{report}");

    // uk comes back: its checkpoint and log reach de, and the next export carries the record.
    let _uk = net.start("uk");
    wait_until("uk's log reaches de", Duration::from_secs(90), || {
        let (s, _) = export_summary(&net, "probe.jsonl");
        s["not_yet_logged"] == 0
    });
    let (summary, bundle) = export_summary(&net, "later.jsonl");
    assert_eq!(summary["not_yet_logged"], 0, "{summary}");
    let report = verified(&net, "de", &bundle);
    assert_eq!(
        report["by_office"]["uk"]["envelopes"],
        envelopes.len() as u64,
        "{report}"
    );
}
