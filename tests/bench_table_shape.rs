//! `consentd bench --json` prints one row per benchmark with the keys INTERFACE.md names. A tiny
//! run: this checks the table's shape, not the machine's speed.
mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn bench_prints_rows_with_the_interface_keys() {
    let out = Command::new(CONSENTD)
        .args(["bench", "--records", "64", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().expect("an array of rows");
    for name in [
        "ingest",
        "ingest_vs_raw_redb",
        "ingest_ceiling",
        "writes_64_clients",
        "writes_64_clients_vs_redb",
        "writes_64_clients_p99",
        "consent_check_p50",
        "memory_per_record",
        "disk_per_record",
        "disk_per_record_file_length",
        "audit_verify",
        "audit_verify_vs_bare_loop",
        "audit_verify_vs_grouped_batch",
        "cold_sync",
        "cold_sync_vs_automerge_floor",
        "delta_sync_round_trips_daemons",
        "delta_sync_bytes_daemons",
        "delta_sync_round_trips_core",
        "delta_sync_bytes_core",
        "fan_out_p50",
        "fan_out_p99",
        "fan_out_p99_vs_floors_alone",
    ] {
        assert!(rows.iter().any(|r| r["name"] == name), "no row {name}");
    }
    for r in rows {
        for key in ["name", "ours", "baseline", "unit", "ratio", "target", "met"] {
            assert!(r.get(key).is_some(), "row {r} lacks {key}");
        }
        assert!(r["ours"].as_f64().unwrap() > 0.0);
        assert!(
            r["baseline"].as_f64().unwrap() > 0.0,
            "row {r} has no baseline"
        );
        assert!(r["met"].is_boolean());
    }
}
