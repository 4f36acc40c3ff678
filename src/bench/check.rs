//! `consent check` latency rows.

use std::time::Instant;

use super::{percentile, Row, CHECK_SAMPLES};

/// `consent check` latency (INTERFACE: "may we contact this person now?") for `n` stored consents:
/// in-process and over the control socket, beside a raw redb point lookup of a value of the same
/// size in its own read transaction. Reported as checks per second at p50/p99 (1 / latency), so
/// the ratio is raw latency / ours; the target (in-process p50 ≤ 4× raw) is a ratio ≥ 0.25.
pub(super) fn consent_check(n: usize) -> Result<Vec<Row>, String> {
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
