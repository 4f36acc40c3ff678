//! Time what a merge does with a record besides Automerge's work, each the way since the
//! thirty-sixth session and the way before: encoding its projection (written straight from the
//! record by `projection::encode`, or through its JSON tree, `encode_value(&to_value(..))`), and
//! reading the record from its document's JSON tree (`Record::from_tree`, or serde's derived
//! reading). `cargo run --release --example projection [-- records]`.

use std::hint::black_box;
use std::time::Instant;

use consentd::projection::{encode, encode_value};
use consentd::record::{ConsentEvent, ConsentRecord, Record};

/// A consent record as an import writes one: sealed subject and evidence, one grant.
fn consent(i: usize) -> Record {
    let sealed = |n: usize| {
        let raw: Vec<u8> = (0..n).map(|j| (i * 31 + j * 17) as u8).collect();
        format!(
            "{}{}",
            consentd::sealed::PREFIX,
            consentd_sync::b64::encode(&raw)
        )
    };
    Record::Consent(ConsentRecord {
        subject: sealed(60),
        subject_kind: "email".into(),
        person: "customer".into(),
        purpose: "marketing_sms".into(),
        role: "controller".into(),
        office: "de".into(),
        minor: false,
        minor_elsewhere: false,
        marketing: false,
        parental_consent: None,
        events: vec![ConsentEvent {
            action: "grant".into(),
            at: format!("2026-12-0{}T10:11:12.{:09}Z", 1 + i % 9, i),
            basis: Some("consent".into()),
            service: None,
            evidence: Some(sealed(40)),
            notice: Some("notice-v3".into()),
            office: "de".into(),
            restriction: None,
            by_erasure: None,
            follows: None,
        }],
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().expect("a record count"));
    let records: Vec<Record> = (0..n).map(consent).collect();
    let trees: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let per_record = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    for round in 0..3 {
        let t = Instant::now();
        let mut bytes = 0;
        for r in &records {
            bytes += black_box(encode(black_box(r))).len();
        }
        let direct = per_record(t);
        let t = Instant::now();
        for r in &records {
            let tree = serde_json::to_value(black_box(r)).unwrap();
            black_box(encode_value(&tree));
        }
        let through_tree = per_record(t);
        let copies = trees.clone();
        let t = Instant::now();
        for tree in copies {
            black_box(Record::from_tree(black_box(tree)).unwrap());
        }
        let from_tree = per_record(t);
        let copies = trees.clone();
        let t = Instant::now();
        for tree in copies {
            black_box(serde_json::from_value::<Record>(black_box(tree)).unwrap());
        }
        let derived = per_record(t);
        println!(
            "round {round}, {n} records of {:.0} projection bytes, µs a record: encode direct \
             {direct:.3}, through the tree {through_tree:.3}; read from the tree {from_tree:.3}, \
             serde's derived reading {derived:.3}",
            bytes as f64 / n as f64,
        );
    }
}
