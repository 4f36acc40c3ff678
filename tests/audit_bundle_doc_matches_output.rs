//! docs/audit-bundle.md is the format's specification: its example lines must have exactly the
//! shape of real export lines (same types, same keys, same JSON value kinds), and its table of
//! checks must list exactly the checks the verifier makes.
mod common;
use common::audit::*;
use common::*;
use consentd_storage::{Store, WriteBatch};
use consentd_sync::tlog::{self, LogLeaf};
use consentd_sync::tombstone::{Reason, Tombstone};
use serde_json::Value;
use std::collections::BTreeMap;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit-bundle.md")).unwrap()
}

/// The lines of the doc's ```jsonl block.
fn doc_examples() -> Vec<Value> {
    let text = doc();
    let start = text.find("```jsonl\n").expect("a jsonl example block") + 9;
    let end = start + text[start..].find("```").unwrap();
    text[start..end]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("doc example {l}: {e}")))
        .collect()
}

/// Keys and value kinds, recursively (arrays by their first element).
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

#[test]
fn the_docs_examples_have_the_shape_of_real_export_lines() {
    let net = Net::init("de");
    let d = net.start("de");
    populate(&net, "de", 6, "doc");
    let id = ok(&net.socket("de"), &["request", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d.stop());
    let store = Store::open(&net.data_dir("de").join("consentd.redb")).unwrap();
    let docid: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let key = consentd_sync::keys::read_secret_key(&net.path().join("de/signing.key")).unwrap();
    let t = Tombstone::sign(
        docid,
        store.doc_change_hashes(&docid).unwrap(),
        Reason::Erasure,
        "request/doc",
        0,
        &key,
    )
    .unwrap();
    store
        .commit_blocking(WriteBatch {
            tombstones: vec![(docid, t.hash(), t.encode())],
            log: vec![(
                consentd::audit::log::log_id(&tlog::origin("local", "de")),
                LogLeaf::tombstone(docid, t.hash()).encode().to_vec(),
            )],
            ..WriteBatch::default()
        })
        .unwrap();
    store.shutdown();
    drop(store);
    let _d = net.start("de");
    let real: BTreeMap<String, Value> = lines(&export(&net, "de", "doc.jsonl"))
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect();

    let examples = doc_examples();
    let types: Vec<&str> = examples
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "header",
            "roster",
            "checkpoint",
            "leaves",
            "envelope",
            "tombstone",
            "end"
        ],
        "the doc shows every line type, in section order"
    );
    for e in &examples {
        let ty = e["type"].as_str().unwrap();
        let r = real
            .get(ty)
            .unwrap_or_else(|| panic!("no {ty} line in a real export"));
        assert_eq!(
            shape(e),
            shape(r),
            "doc example of {ty} differs from real output"
        );
        // Each example is a line the reader accepts.
        serde_json::from_value::<consentd::audit::bundle::Line>(e.clone())
            .unwrap_or_else(|err| panic!("doc example of {ty} does not parse: {err}"));
    }
    let header = &examples[0];
    assert_eq!(header["format"], consentd::audit::bundle::FORMAT);
    assert_eq!(header["version"], consentd::audit::bundle::VERSION);
    // The example checkpoint is a well-formed signed note.
    let note = examples[2]["note"].as_str().unwrap();
    let parsed = tlog::parse_note(note).unwrap();
    assert_eq!(tlog::parse_body(parsed.text).unwrap().size, 3000);
    // The example leaves and the envelope/tombstone magics decode as documented.
    let leaf = hex::decode(examples[3]["leaves"][0].as_str().unwrap()).unwrap();
    assert!(LogLeaf::decode(&leaf).is_some());
    for (i, magic) in [(4, "CDE1"), (5, "CDT1")] {
        let prefix = examples[i]["data"]
            .as_str()
            .unwrap()
            .split('…')
            .next()
            .unwrap();
        let bytes = consentd_sync::b64::decode(&prefix[..prefix.len() / 4 * 4]).unwrap();
        assert_eq!(&bytes[..4], magic.as_bytes());
    }
}

#[test]
fn the_docs_table_of_checks_lists_exactly_the_verifiers_checks() {
    let text = doc();
    let section = &text[text.find("## Verification").unwrap()..text.find("## Report").unwrap()];
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(documented, consentd::audit::verify::CHECKS);
}
