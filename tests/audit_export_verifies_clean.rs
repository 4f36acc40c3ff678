//! A clean export verifies: thousands of records made with `consentctl import`, exported by an
//! auditor-role uid over the control socket, verify offline with exit 0, and the JSON report
//! counts them by office and kind. A planted (valid, logged) tombstone travels and verifies.
mod common;
use common::audit::*;
use common::*;
use consentd_storage::{Store, WriteBatch};
use consentd_sync::tlog::{self, LogLeaf};
use consentd_sync::tombstone::{Reason, Tombstone};

#[test]
fn a_clean_export_of_thousands_of_records_verifies_and_counts_by_office_and_kind() {
    let net = Net::init("de");
    let d = net.start("de");
    populate(&net, "de", 3000, "a");
    let bundle = export(&net, "de", "bundle.jsonl");
    // The bundle holds personal data: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let root = net.path().join("root.pub");
    let report = verified(&net, "de", &bundle);
    assert_eq!(report["ok"], true);
    assert_eq!(report["counts"]["envelopes"], 3000);
    assert_eq!(report["counts"]["records"], 3000);
    let de = &report["by_office"]["de"];
    assert_eq!(de["envelopes"], 3000);
    assert_eq!(de["records"]["consent"], 1000);
    assert_eq!(de["records"]["request"], 1000);
    assert_eq!(de["records"]["transfer"], 1000);
    assert_eq!(de["log_size"], 3000);
    assert_eq!(report["failures_total"], 0);

    // The report runs on the same bundle: every request is open and overdue as of export.
    let rep = audit_report(&net, "de", &bundle);
    assert_eq!(rep["requests"][0]["office"], "de");
    assert_eq!(rep["requests"][0]["total"], 1000);
    assert_eq!(rep["transfers"][0]["without_tia"], 0);
    // Without `ctl`'s `--json`: CSV is the output's form, and `--json --csv` is refused.
    let csv = std::process::Command::new(env!("CARGO_BIN_EXE_consentctl"))
        .arg("--socket")
        .arg(net.socket("de"))
        .args([
            "audit",
            "report",
            bundle.to_str().unwrap(),
            "--root-pub",
            root.to_str().unwrap(),
            "--csv",
        ])
        .output()
        .unwrap();
    assert!(text(&csv.stdout).starts_with("section,office,jurisdiction,record,metric,value\n"));
    drop(d);
}

#[test]
fn an_auditor_uid_may_export_and_a_planted_logged_tombstone_verifies() {
    let net = Net::init("de");
    let d = net.start("de");
    populate(&net, "de", 30, "t");
    let id = ok(&net.socket("de"), &["request", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d.stop());

    // Plant a tombstone the way the retention issue will write one: signed by the office,
    // stored, and logged in the same commit.
    let store = Store::open(&net.data_dir("de").join("consentd.redb")).unwrap();
    let doc: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let heads = store.doc_change_hashes(&doc).unwrap();
    let key = consentd_sync::keys::read_secret_key(&net.path().join("de/signing.key")).unwrap();
    let t = Tombstone::sign(
        doc,
        heads,
        Reason::Erasure,
        "request/test",
        1_780_000_000,
        &key,
    )
    .unwrap();
    let log = consentd::audit::log::log_id(&tlog::origin("local", "de"));
    store
        .commit_blocking(WriteBatch {
            tombstones: vec![(doc, t.hash(), t.encode())],
            log: vec![(log, LogLeaf::tombstone(doc, t.hash()).encode().to_vec())],
            ..WriteBatch::default()
        })
        .unwrap();
    store.shutdown();
    drop(store);

    // This test's uid becomes a read-only auditor: export is a read.
    let uid = unsafe { libc::getuid() };
    net.edit_config("de", |t| {
        t.replace(&format!("operators = [{uid}]"), "operators = []")
            .replace("auditors = []", &format!("auditors = [{uid}]"))
    });
    let _d = net.start("de");
    let bundle = export(&net, "de", "with-tombstone.jsonl");
    let outcome = verify_bytes(&std::fs::read(&bundle).unwrap(), &root_pub(&net));
    assert!(outcome.ok(), "{:?}", outcome.failures);
    assert_eq!(outcome.report["counts"]["tombstones"], 1);
    assert_eq!(outcome.report["by_office"]["de"]["tombstones"], 1);
    assert_eq!(outcome.report["by_office"]["de"]["log_size"], 31);

    // The record is still held (applying tombstones is the retention issue's work): the
    // report says so.
    let rep = ok(
        &net.socket("de"),
        &[
            "audit",
            "report",
            bundle.to_str().unwrap(),
            "--root-pub",
            net.path().join("root.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(rep["tombstoned_but_held"][0]["record"], id.as_str());
}
