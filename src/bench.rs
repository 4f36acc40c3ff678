//! `consentd bench`: measured figures beside a baseline on the same machine, one row each.
//!
//! A row is `{name, ours, baseline, unit, ratio, target, met}` (INTERFACE.md). Rows are
//! independent functions in [`BENCHES`]; the performance issue adds its own there.

use std::time::Instant;

use automerge::Automerge;
use consentd_sync::b64;
use consentd_sync::envelope;
use consentd_sync::keys;
use consentd_sync::merkle;
use consentd_sync::roster::{OfficeEntry, Roster};
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;

use crate::audit::bundle::{Line, Writer, FORMAT, VERSION};
use crate::audit::verify;
use crate::record::{ConsentEvent, ConsentRecord, Record};

/// Default number of records per benchmark.
pub const DEFAULT_RECORDS: usize = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: &'static str,
    pub ours: f64,
    pub baseline: f64,
    pub unit: &'static str,
    /// `ours / baseline` (higher is better for every unit here).
    pub ratio: f64,
    pub target: f64,
    pub met: bool,
}

impl Row {
    fn new(name: &'static str, unit: &'static str, ours: f64, baseline: f64, target: f64) -> Row {
        let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
        Row {
            name,
            ours,
            baseline,
            unit,
            ratio,
            target,
            met: ratio >= target,
        }
    }
}

type Bench = fn(usize) -> Result<Vec<Row>, String>;

/// Every benchmark, in output order.
pub const BENCHES: &[(&str, Bench)] = &[
    ("consent_check", consent_check),
    ("audit_verify", audit_verify),
];

pub fn run(records: usize) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (_, b) in BENCHES {
        rows.extend(b(records.max(1))?);
    }
    Ok(rows)
}

/// Checks timed per latency row.
const CHECK_SAMPLES: usize = 20_000;

fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

/// `consent check` latency (INTERFACE: "may we contact this person now?") for `n` stored consents:
/// in-process and over the control socket, beside a raw redb point lookup of a value of the same
/// size in its own read transaction. Reported as checks per second at p50/p99 (1 / latency), so
/// the ratio is raw latency / ours; the target (in-process p50 ≤ 4× raw) is a ratio ≥ 0.25.
fn consent_check(n: usize) -> Result<Vec<Row>, String> {
    use crate::protocol::{self, Client, Request};
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let offices = crate::network::parse_offices("de").map_err(|e| e.to_string())?;
    crate::network::init(dir.path(), &offices, None, "bench").map_err(|e| e.to_string())?;
    let config = dir.path().join("de").join("consentd.toml");
    let prepared = crate::daemon::prepare(&config).map_err(|e| e.to_string())?;
    let office = prepared.office.clone();
    let socket = prepared.config.control.socket.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(crate::daemon::run(prepared, async move {
        let _ = stop_rx.await;
    }));
    // Load n consents through the real write path, in import-sized chunks.
    for chunk in (0..n)
        .collect::<Vec<_>>()
        .chunks(protocol::IMPORT_CHUNK_RECORDS_MAX)
    {
        let records = chunk
            .iter()
            .map(|i| {
                Request::ConsentGrant(protocol::ConsentGrant {
                    subject: format!("user{i}@example.com"),
                    purpose: "marketing".into(),
                    basis: "consent".into(),
                    service: Some("sms".into()),
                    evidence: Some("web form v3".into()),
                    notice: None,
                    under_18: false,
                    parental_consent: None,
                    person: None,
                    role: None,
                    at: Some("2026-01-31T00:00:00Z".into()),
                })
            })
            .collect();
        runtime
            .block_on(office.execute(Request::Import(protocol::Import {
                records,
                first_line: 1,
            })))
            .map_err(|e| e.to_string())?;
    }
    let subject = |s: usize| format!("user{}@example.com", (s * 7919) % n);
    let mut inproc = Vec::with_capacity(CHECK_SAMPLES);
    for s in 0..CHECK_SAMPLES {
        let who = subject(s);
        let t = Instant::now();
        let v = office
            .consent_check(&who, "marketing", None)
            .map_err(|e| e.to_string())?;
        inproc.push(t.elapsed());
        if v["granted"] != true {
            return Err(format!("bench consent for {who} is not granted"));
        }
    }
    let started = Instant::now();
    let mut client = loop {
        match Client::connect(&socket) {
            Ok(c) => break c,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut socket_lat = Vec::with_capacity(CHECK_SAMPLES);
    for s in 0..CHECK_SAMPLES {
        let request = Request::ConsentCheck(protocol::ConsentCheck {
            subject: subject(s),
            purpose: "marketing".into(),
            at: None,
        });
        let t = Instant::now();
        client.call(&request).map_err(|e| e.to_string())?;
        socket_lat.push(t.elapsed());
    }
    drop(client);
    let value_len = office
        .store()
        .projections_of_kind(crate::record::KIND_CONSENT, 1)
        .map_err(|e| e.to_string())?
        .first()
        .map_or(512, |(_, p)| p.len() + 1);
    let mut raw =
        consentd_storage::baseline::point_lookup_latencies(dir.path(), n, value_len, CHECK_SAMPLES)
            .map_err(|e| e.to_string())?;
    let _ = stop_tx.send(());
    let _ = runtime.block_on(server);
    inproc.sort_unstable();
    socket_lat.sort_unstable();
    raw.sort_unstable();
    let per_s = |sorted: &[std::time::Duration], p: f64| 1.0 / percentile(sorted, p);
    Ok(vec![
        Row::new(
            "consent_check_p50",
            "checks/s",
            per_s(&inproc, 0.5),
            per_s(&raw, 0.5),
            0.25,
        ),
        Row::new(
            "consent_check_p99",
            "checks/s",
            per_s(&inproc, 0.99),
            per_s(&raw, 0.99),
            0.0,
        ),
        Row::new(
            "consent_check_socket_p50",
            "checks/s",
            per_s(&socket_lat, 0.5),
            per_s(&raw, 0.5),
            0.0,
        ),
    ])
}

/// A synthetic bundle from one office of `n` consent records (one envelope each), plus the
/// (key, signed message, signature) triples of its envelopes for a bare verification loop.
pub struct Synthetic {
    pub bundle: Vec<u8>,
    pub root_pub: VerifyingKey,
    pub triples: Vec<(VerifyingKey, Vec<u8>, Signature)>,
}

pub fn synthetic_bundle(n: usize) -> Synthetic {
    let root = keys::generate();
    let signing = keys::generate();
    let mut roster = Roster::new("bench").expect("valid name");
    roster
        .add_office(OfficeEntry {
            id: "de".into(),
            jurisdiction: "DE".into(),
            signing_key: keys::public_hex(&signing.verifying_key()),
            transport_key: keys::public_hex(&keys::generate().verifying_key()),
            address: "127.0.0.1:7400".into(),
        })
        .expect("valid office");
    roster.serial = 1;
    let signed = roster.sign(&root).expect("valid roster");
    let actor = envelope::actor_for(&signing.verifying_key(), envelope::new_incarnation());
    let mut envelopes = Vec::with_capacity(n);
    let mut leaves = Vec::with_capacity(n);
    let mut triples = Vec::with_capacity(n);
    for i in 0..n {
        let doc_id: [u8; 16] = rand::random();
        let record = Record::Consent(ConsentRecord {
            subject: format!("person{i}@example.com"),
            subject_kind: "email".into(),
            person: "end_user".into(),
            purpose: "marketing".into(),
            role: "processor".into(),
            office: "de".into(),
            minor: false,
            parental_consent: None,
            events: vec![ConsentEvent {
                action: "grant".into(),
                at: "2026-01-31T00:00:00Z".into(),
                basis: Some("consent".into()),
                service: Some("sms".into()),
                evidence: Some("web form v3".into()),
                notice: None,
                office: "de".into(),
            }],
        });
        let mut doc = Automerge::new().with_actor(actor.clone());
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            // As the office does: the document names itself in its first change.
            automerge::transaction::Transactable::put(
                tx,
                automerge::ROOT,
                crate::record::DOC_ID_FIELD,
                hex::encode(doc_id).as_str(),
            )?;
            record.write_new(tx)
        })
        .expect("writes");
        let change = doc.get_last_local_change().expect("one change");
        let env = envelope::sign(doc_id, &change, &signing);
        let hash = change.hash().0;
        triples.push((
            signing.verifying_key(),
            envelope::signed_message(&doc_id, &hash).to_vec(),
            Signature::from_bytes(&env.signature),
        ));
        leaves.push(LogLeaf::envelope(doc_id, hash));
        envelopes.push(env.encode());
    }
    let hashes: Vec<merkle::Hash> = leaves.iter().map(LogLeaf::merkle_hash).collect();
    let cp = Checkpoint {
        origin: tlog::origin("bench", "de"),
        size: n as u64,
        root: merkle::root(&hashes),
    };
    let mut w = Writer::new(Vec::new());
    let lines = [
        Line::Header {
            format: FORMAT.into(),
            version: VERSION,
            network: "bench".into(),
            office: "de".into(),
            exported_at: "2026-02-01T00:00:00Z".into(),
        },
        Line::Roster { roster: signed },
        Line::Checkpoint {
            office: "de".into(),
            note: cp.sign(&signing),
        },
    ];
    for l in &lines {
        w.write(l).expect("in memory");
    }
    for (i, chunk) in leaves
        .chunks(crate::audit::bundle::LEAVES_PER_LINE)
        .enumerate()
    {
        w.write(&Line::Leaves {
            office: "de".into(),
            first: (i * crate::audit::bundle::LEAVES_PER_LINE) as u64,
            leaves: chunk.iter().map(|l| hex::encode(l.encode())).collect(),
        })
        .expect("in memory");
    }
    for e in &envelopes {
        w.write(&Line::Envelope {
            data: b64::encode(e),
        })
        .expect("in memory");
    }
    let (bundle, _) = w.finish().expect("in memory");
    Synthetic {
        bundle,
        root_pub: root.verifying_key(),
        triples,
    }
}

/// Whole-bundle verification (every check, all cores, batch signatures) against a bare
/// single-threaded `verify_strict` loop over the same signatures.
fn audit_verify(n: usize) -> Result<Vec<Row>, String> {
    let s = synthetic_bundle(n);
    let opts = verify::Options {
        root_pub: s.root_pub,
        threads: std::thread::available_parallelism().map_or(2, |p| p.get()),
        collect: false,
        progress: false,
    };
    // Warm up once (page cache, allocator), then take the best of three.
    let mut best_ours = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let outcome = verify::verify(&s.bundle[..], &opts);
        let rate = n as f64 / t.elapsed().as_secs_f64();
        if !outcome.ok() {
            return Err(format!(
                "the benchmark bundle does not verify: {:?}",
                outcome.failures.first()
            ));
        }
        best_ours = best_ours.max(rate);
    }
    let mut best_base = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for (k, m, sig) in &s.triples {
            k.verify_strict(m, sig)
                .map_err(|_| "bench signature does not verify".to_string())?;
        }
        best_base = best_base.max(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(vec![Row::new(
        "audit_verify",
        "envelopes/s",
        best_ours,
        best_base,
        0.8,
    )])
}

/// Human table.
pub fn human(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<26} {:>14} {:>14} {:<12} {:>6} {:>6} {:>4}\n",
        "NAME", "OURS", "BASELINE", "UNIT", "RATIO", "TARGET", "MET"
    );
    for r in rows {
        out += &format!(
            "{:<26} {:>14.0} {:>14.0} {:<12} {:>6.2} {:>6.2} {:>4}\n",
            r.name,
            r.ours,
            r.baseline,
            r.unit,
            r.ratio,
            r.target,
            if r.met { "yes" } else { "no" }
        );
    }
    out
}
