//! A transfer forbidden from a record's origin stays forbidden through a third office: with
//! DE→US forbidden in every office's policy, a record written at de reached us through uk (DE→GB
//! under adequacy, then GB→US under SCCs), and uk's signed transfer named only that last hop
//! (found by an exploratory session). Now uk judges the onward transfer by the origin's rule
//! too and keeps the record back (de's signed refusal covers it for the network), and `peers`
//! counts what each office holds back from each peer (`refusals` was always 0).
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const SUBJECT: &str = "relay@example.de";

/// The refusals `office` signed (refusals replicate: every office lists every office's).
fn refused_to_us(net: &Net, office: &str) -> Vec<Value> {
    ok(&net.socket(office), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "refused" && t["to_office"] == "us" && t["office"] == office)
        .cloned()
        .collect()
}

#[test]
fn a_record_a_policy_keeps_from_an_office_does_not_reach_it_through_another() {
    keeps_the_record_from_us(&["de", "uk", "us"], false);
}

/// Only de's table forbids DE→US; uk's own (built-in) allows it. uk relayed de's records to us
/// under its own table, de's signed refusal notwithstanding (found by an exploratory session,
/// DE→SG through cn). A relay now honours the refusal a record's origin signed.
#[test]
fn a_relay_honours_the_refusal_the_record_s_origin_signed() {
    keeps_the_record_from_us(&["de"], false);
}

/// de signed refusals only to its own peers: with us not among them, de signed none, and uk
/// relayed de's records to us (found by an exploratory session). de now signs its refusal to
/// every office of the roster its policy forbids.
#[test]
fn the_origin_refuses_an_office_it_does_not_sync_with() {
    keeps_the_record_from_us(&["de"], true);
}

/// de writes a record; `ruled` offices' tables forbid DE→US (and with `apart`, de and us do not
/// sync directly). Neither de nor uk lets it reach us.
fn keeps_the_record_from_us(ruled: &[&str], apart: bool) {
    let net = Net::init("de,uk,us");
    if apart {
        for (office, other) in [("de", "us"), ("us", "de")] {
            net.edit_config(office, |t| {
                let start = t
                    .find(&format!("[[peer]]\noffice = \"{other}\""))
                    .expect("a peer block");
                let end = t[start + 1..]
                    .find("\n[")
                    .map_or(t.len(), |e| start + 1 + e + 1);
                format!("{}{}", &t[..start], &t[end..])
            });
        }
    }
    for office in ruled {
        net.edit_config(office, |t| {
            assert!(t.contains("[transfer]\n"), "{t}");
            t.replace(
                "[transfer]\n",
                "[transfer]\nrule = [{ from = \"DE\", to = \"US\", mechanism = \"forbidden\" }]\n",
            )
        });
    }
    let mut d: Vec<Daemon> = ["de", "uk", "us"].iter().map(|o| net.start(o)).collect();
    let id = ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "support",
            "--basis",
            "contract",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let names = |t: &Value| t["records"].as_array().unwrap().iter().any(|r| r == &id);
    // de refuses us directly, and signs it; uk, holding the record, keeps it from us too (the
    // refusal is already signed, once for the network: `peers` counts what each holds back).
    wait_until(
        "de refuses the record to us",
        Duration::from_secs(120),
        || refused_to_us(&net, "de").iter().any(names),
    );
    let held_back = |office: &str| {
        ok(&net.socket(office), &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["office"] == "us")
            .unwrap()["refusals"]
            .as_u64()
            .unwrap()
    };
    let at = |office: &str| {
        ok(
            &net.socket(office),
            &[
                "consent",
                "check",
                "--subject",
                SUBJECT,
                "--purpose",
                "support",
            ],
        )["record"]
            .clone()
    };
    wait_until(
        "uk holds the record and keeps it from us",
        Duration::from_secs(120),
        || at("uk") == id.as_str() && held_back("uk") >= 1,
    );
    if !apart {
        assert!(held_back("de") >= 1);
    }
    // us starts again and reconciles with uk and de afresh: still it is not offered the record.
    assert!(d.pop().unwrap().stop());
    let _us = net.start("us");
    wait_until("us syncs with uk and de", Duration::from_secs(120), || {
        ok(&net.socket("us"), &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["last_sync"].is_null())
    });
    // uk holds the record; us never does.
    assert_eq!(at("uk"), Value::String(id.clone()));
    assert_eq!(at("us"), Value::Null, "the record reached us");
    let to_us = ok(&net.socket("uk"), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] != "refused" && t["to"] == "US" && names(t))
        .count();
    assert_eq!(to_us, 0, "uk recorded a transfer of the record to US");
}
