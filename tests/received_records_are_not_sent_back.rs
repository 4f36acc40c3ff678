//! A record an office received from a peer is not pushed back to that peer: the peer already
//! holds it, and the receiving office must not sign a "transferred" event naming as recipient
//! the office the data came from (found by the cold-sync benchmark: every record of a cold sync
//! came back, and the receiver logged a transfer for each of them). Nor is it relayed to a third
//! office that hears the author directly (found by the fan-out benchmark: with seven offices each
//! write became 6 pushes and 30 relays, each relay logged as a transfer by its sender).

mod common;

use common::*;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);

fn grant_five(net: &Net, office: &str) -> Vec<String> {
    (0..5)
        .map(|i| {
            let granted = ok(
                &net.socket(office),
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
            granted["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Waits until `from` has recorded moving each of `records` to office `to`.
fn wait_transferred(net: &Net, from: &str, to: &str, records: &[String]) {
    let started = Instant::now();
    loop {
        let rows: Vec<_> = transferred_rows(net, from)
            .into_iter()
            .filter(|row| row["office"] == from && row["to_office"] == to)
            .collect();
        if records.iter().all(|r| rows.iter().any(|row| names(row, r))) {
            return;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{from} never recorded moving its records to {to}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rows `office` signed about moving any of `records`.
fn sent_by(net: &Net, office: &str, records: &[String]) -> Vec<serde_json::Value> {
    transferred_rows(net, office)
        .into_iter()
        .filter(|row| row["office"] == office && records.iter().any(|r| names(row, r)))
        .collect()
}

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
    let records = grant_five(&net, "uk");
    // The real move, uk → de, is recorded at uk (positive control: events are being written).
    wait_transferred(&net, "uk", "de", &records);
    // de holds them (and uk's signed transfer record, which lists every office's records); give
    // any echo time to be pushed and its events collected (500 ms window).
    std::thread::sleep(Duration::from_secs(3));
    let echoes = sent_by(&net, "de", &records);
    assert!(
        echoes.is_empty(),
        "de recorded sending uk's own records back to uk: {echoes:?}"
    );
    let de = ok(&net.socket("de"), &["status"]);
    assert!(de["records"].as_u64().unwrap() >= 5, "{de}");
}

#[test]
fn a_received_record_is_not_relayed_to_an_office_that_hears_its_author() {
    let net = Net::init("de,nl,uk");
    let _daemons: Vec<_> = ["de", "nl", "uk"].iter().map(|o| net.start(o)).collect();
    // Every link up (and its first round done) before the writes, so each record reaches de and
    // nl by uk's own pushes; a round between de and nl would be a legitimate move.
    let started = Instant::now();
    for office in ["de", "nl", "uk"] {
        loop {
            let peers = ok(&net.socket(office), &["peers"]);
            let up = peers
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["connected"] == true && !p["last_sync"].is_null());
            if up {
                break;
            }
            assert!(started.elapsed() < TIMEOUT, "links never came up: {peers}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let records = grant_five(&net, "uk");
    wait_transferred(&net, "uk", "de", &records);
    wait_transferred(&net, "uk", "nl", &records);
    // Time for any relay to be pushed and its events collected (500 ms window).
    std::thread::sleep(Duration::from_secs(3));
    for office in ["de", "nl"] {
        let relays = sent_by(&net, office, &records);
        assert!(
            relays.is_empty(),
            "{office} relayed uk's records and logged moving them: {relays:?}"
        );
        let status = ok(&net.socket(office), &["status"]);
        assert!(status["records"].as_u64().unwrap() >= 5, "{status}");
    }
}
