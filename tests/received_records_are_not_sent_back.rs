//! A record an office received from a peer is not pushed back to that peer: the peer already
//! holds it, and the receiving office must not sign a "transferred" event naming as recipient
//! the office the data came from (found by the cold-sync benchmark: every record of a cold sync
//! came back, and the receiver logged a transfer for each of them).

mod common;

use common::*;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);

fn transferred_rows(net: &Net, office: &str) -> Vec<serde_json::Value> {
    ok(&net.socket(office), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "transferred")
        .cloned()
        .collect()
}

fn names(row: &serde_json::Value, record: &str) -> bool {
    row.to_string().contains(record)
}

#[test]
fn a_received_record_is_not_transferred_back_to_its_sender() {
    let net = Net::init("de,uk");
    let _de = net.start("de");
    let _uk = net.start("uk");
    let mut records = Vec::new();
    for i in 0..5 {
        let granted = ok(
            &net.socket("uk"),
            &[
                "consent",
                "grant",
                "--subject",
                &format!("person{i}@example.co.uk"),
                "--purpose",
                "marketing",
                "--basis",
                "consent",
                "--evidence",
                "web form v3",
            ],
        );
        records.push(granted["id"].as_str().unwrap().to_string());
    }
    // The real move, uk → de, is recorded at uk (positive control: events are being written).
    let started = Instant::now();
    loop {
        let rows: Vec<_> = transferred_rows(&net, "uk")
            .into_iter()
            .filter(|row| row["office"] == "uk" && row["to_office"] == "de")
            .collect();
        if records.iter().all(|r| rows.iter().any(|row| names(row, r))) {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "uk never recorded moving its records to de: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // de holds them (and uk's signed transfer record, which lists every office's records); give
    // any echo time to be pushed and its events collected (500 ms window).
    std::thread::sleep(Duration::from_secs(3));
    let echoes: Vec<_> = transferred_rows(&net, "de")
        .into_iter()
        .filter(|row| row["office"] == "de" && records.iter().any(|r| names(row, r)))
        .collect();
    assert!(
        echoes.is_empty(),
        "de recorded sending uk's own records back to uk: {echoes:?}"
    );
    let de = ok(&net.socket("de"), &["status"]);
    assert!(de["records"].as_u64().unwrap() >= 5, "{de}");
}
