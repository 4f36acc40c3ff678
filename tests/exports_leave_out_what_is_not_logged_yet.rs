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

/// The case leaving out cannot mend: a change logged by its author (de itself) made on another
/// office's change that no checkpoint logs yet. Left out, its leaf fails `log_completeness`;
/// carried, the change under it fails `log_inclusion`. The bundle was written anyway and failed
/// `audit verify`, with only a warning in de's log. Now the export fails with one line naming
/// the office whose checkpoint it waits for (after `consentctl` tried again for 10 s), leaves
/// no file, and succeeds once that office is back.
#[test]
fn an_export_waiting_for_another_office_s_checkpoint_fails_rather_than_write_a_bad_bundle() {
    let net = Net::init("de,uk");
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
    // uk's envelopes, and the record's subject key as replication sends it (so de can open the
    // record and write on it).
    let doc: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let mut items: Vec<(consentd_sync::SetKind, Vec<u8>)> = Vec::new();
    {
        let store =
            consentd_storage::Store::open(&net.data_dir("uk").join("consentd.redb")).unwrap();
        for e in store.doc_envelopes(&doc).unwrap() {
            items.push((consentd_sync::SetKind::Envelopes, e));
        }
        let key_ids: Vec<_> = store
            .snapshot()
            .unwrap()
            .keys_after(None, 16)
            .unwrap()
            .into_iter()
            .map(|(kid, _, _)| kid)
            .collect();
        assert_eq!(key_ids.len(), 1, "one subject, one key");
        let keys = consentd::keystore::KeyStore::open(&net.data_dir("uk"), store.clone()).unwrap();
        let key = keys.key(&key_ids[0]).unwrap();
        let mut blob = consentd::replicate::KEY_BLOB_MAGIC.to_vec();
        blob.extend_from_slice(&key_ids[0]);
        blob.extend_from_slice(&key[..]);
        items.push((consentd_sync::SetKind::Keys, blob));
        drop(keys);
        store.shutdown();
    }

    let _de = net.start("de");
    let granted = || {
        ok(
            &net.socket("de"),
            &[
                "consent",
                "check",
                "--subject",
                "lee@example.com",
                "--purpose",
                "support",
            ],
        )["granted"]
            == true
    };
    let runtime = peer::runtime();
    runtime.block_on(peer::push_items(
        net.path(),
        "uk",
        "uk",
        "de",
        items,
        granted,
    ));
    drop(runtime);
    assert!(granted(), "de opened uk's record");
    // de writes on uk's record: its change depends on uk's, which no checkpoint at de logs.
    let withdrawn = ok(
        &net.socket("de"),
        &[
            "consent",
            "withdraw",
            "--subject",
            "lee@example.com",
            "--purpose",
            "support",
        ],
    );
    assert_eq!(withdrawn["id"], id.as_str(), "the same record: {withdrawn}");

    let out = net.path().join("waiting.jsonl");
    let e = err(
        &net.socket("de"),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    assert!(
        e.contains("logged change(s) depend on changes their author's checkpoint does not log yet (office uk)"),
        "{e}"
    );
    assert!(!out.exists(), "no bundle that would not verify");
    assert!(!net.path().join("waiting.jsonl.partial").exists());

    // uk comes back: its checkpoint reaches de and the export verifies, de's change included.
    let _uk = net.start("uk");
    wait_until(
        "an export from de succeeds",
        Duration::from_secs(90),
        || {
            ctl(
                &net.socket("de"),
                &["audit", "export", "--out", out.to_str().unwrap()],
            )
            .status
            .success()
        },
    );
    let report = verified(&net, "de", &out);
    assert!(
        report["by_office"]["de"]["envelopes"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["by_office"]["uk"]["envelopes"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

/// A tombstone from another office reaches the exporter before the checkpoint that logs it, as
/// its envelopes do. Written, it failed `tombstone_authority` (5 of 5 bundles exported right
/// after an erasure at another office; found by an exploratory session); it cannot be left out,
/// as the record's envelopes are gone here and their leaves would fail `log_completeness`. Now
/// the export fails with one line naming the office (after `consentctl` tried again), leaves
/// no file, and succeeds once that office's checkpoint has arrived.
#[test]
fn an_export_holding_a_tombstone_no_checkpoint_logs_yet_fails_rather_than_write_a_bad_bundle() {
    let net = Net::init("de,uk");
    let uk = net.start("uk");
    let de = net.start("de");
    ok(
        &net.socket("de"),
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
    );
    wait_until("uk holds de's record", Duration::from_secs(60), || {
        ok(
            &net.socket("uk"),
            &[
                "consent",
                "check",
                "--subject",
                "lee@example.com",
                "--purpose",
                "support",
            ],
        )["granted"]
            == true
    });
    assert!(de.stop());
    // uk erases the record while de is down; its tombstone is taken from its store.
    let request = ok(
        &net.socket("uk"),
        &[
            "request",
            "open",
            "--subject",
            "lee@example.com",
            "--kind",
            "erasure",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = ok(
        &net.socket("uk"),
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(closed["erasure"]["deleted"], 1, "{closed}");
    assert!(uk.stop());
    let tombstones: Vec<Vec<u8>> = {
        let store =
            consentd_storage::Store::open(&net.data_dir("uk").join("consentd.redb")).unwrap();
        let all = store
            .snapshot()
            .unwrap()
            .tombstones_after(None, 16)
            .unwrap()
            .into_iter()
            .map(|(_, _, t)| t)
            .collect();
        store.shutdown();
        all
    };
    assert_eq!(tombstones.len(), 1);

    // de receives it from a peer that sends no checkpoint.
    let _de = net.start("de");
    let held = || {
        ok(&net.socket("de"), &["status"])["tombstones"]
            .as_u64()
            .unwrap()
    };
    let runtime = peer::runtime();
    runtime.block_on(peer::push_items(
        net.path(),
        "uk",
        "uk",
        "de",
        tombstones
            .into_iter()
            .map(|t| (consentd_sync::SetKind::Tombstones, t))
            .collect(),
        || held() == 1,
    ));
    drop(runtime);
    assert_eq!(held(), 1, "de applied uk's tombstone");

    let out = net.path().join("waiting.jsonl");
    let e = err(
        &net.socket("de"),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    assert!(
        e.contains("1 tombstone(s) applied here that their author's checkpoint does not log yet (office uk)"),
        "{e}"
    );
    assert!(!out.exists(), "no bundle that would not verify");

    // uk comes back: its checkpoint reaches de and the export verifies, the tombstone included.
    let _uk = net.start("uk");
    wait_until(
        "an export from de succeeds",
        Duration::from_secs(90),
        || {
            ctl(
                &net.socket("de"),
                &["audit", "export", "--out", out.to_str().unwrap()],
            )
            .status
            .success()
        },
    );
    let report = verified(&net, "de", &out);
    assert_eq!(report["counts"]["tombstones"], 1, "{report}");
}
