//! Time the daemon's reading of an import request (`protocol::parse_request`): one chunk of
//! 1,000 consent grants as `consentctl import` sends it, read 100 times, per record.
//! `cargo run --release --example request_parse`.

use std::hint::black_box;
use std::time::Instant;

use consentd::protocol::{self, ConsentGrant, Request, RequestFrame, PROTOCOL_VERSION};

fn main() {
    let records: Vec<Request> = (0..protocol::IMPORT_CHUNK_RECORDS_MAX)
        .map(|i| {
            Request::ConsentGrant(ConsentGrant {
                service: Some("sms".into()),
                evidence: Some("web form v3".into()),
                at: Some("2026-01-31T00:00:00Z".into()),
                ..ConsentGrant::new(format!("user{i:07}@example.com"), "marketing", "consent")
            })
        })
        .collect();
    let n = records.len();
    let frame = RequestFrame {
        v: PROTOCOL_VERSION,
        request: Request::Import(protocol::Import {
            records,
            first_line: 1,
        }),
    };
    let payload = serde_json::to_vec(&frame).expect("requests serialise");
    let rounds = 100;
    for round in 0..3 {
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(protocol::parse_request(black_box(&payload)).expect("a valid request"));
        }
        let per_record = t.elapsed().as_secs_f64() * 1e6 / (rounds * n) as f64;
        println!(
            "round {round}: an import chunk of {n} records, {} bytes: {per_record:.3} µs a record",
            payload.len()
        );
    }
}
