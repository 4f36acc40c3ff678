//! Replication rows (issue 7 rows 4-6; issue 5's benchmark acceptance).
//!
//! Every daemon here is the real daemon (`daemon::prepare` + `daemon::run`: control socket,
//! store, replicator, QUIC on 127.0.0.1) running **in this process**, one tokio runtime for all
//! of them, with keys generated at run time by `network::init`. In-process daemons let the bench
//! watch each office's durable commits directly (`Office::subscribe_committed`, the same
//! broadcast the replicator reads), so observing an arrival adds no latency and every instant is
//! read from one clock. The processes' CPU share is the same: everything runs on the machine's
//! cores either way.
//!
//! - `cold_sync`: office `nl` imports N consents; office `de` starts empty and dials `nl` at
//!   once (`de` sorts first); timed from `de`'s start until its state digest equals `nl`'s.
//!   Baseline, in envelopes/s (every envelope `de` ends with) of the sum of: (a) the same envelope bytes over a raw quinn stream
//!   on loopback plus a raw redb insert of them (4,096 per durable commit), and (b) the design
//!   floor: batch-verifying every envelope against the roster and applying its change the way
//!   ingest does (a record's creating change read straight into its fields by
//!   `consentd_sync::first_change`, any other change applied by Automerge), on all cores,
//!   nothing else. Target: ours ≤ 1.5 × (a + b), i.e. a rate ratio ≥ 0.67.
//! - `cold_sync_vs_automerge_floor` (for scale): the same sync against (a) plus the floor as it
//!   was measured before ingest stopped loading a document per new record: every change applied
//!   to a fresh Automerge document. The floor fell with ingest's own cost, so the main row's
//!   baseline fell too; this row keeps the earlier sessions' figures comparable.
//! - `consent_check_during_sync_p99` (for scale): `consent check` over `de`'s control socket,
//!   one connection, a check every 2 ms from `de`'s start until the cold sync converged, as
//!   checks/s at p99; baseline: as many checks (at most 2,000) over the same connection right
//!   after, with both daemons idle. No issue sets a target; the row keeps visible what an
//!   operator waits for while an office takes in another's records.
//! - `delta_sync_*_daemons`: after the cold sync, `de` stops; `nl` writes 50 records and `de`
//!   (opened offline) 50 others, in a later second than `nl`'s; `de` starts again and
//!   reconciles. The counters are `de`'s last envelope-set reconciliation that found the
//!   difference (`consentctl peers --json` → `last_exchange.envelopes`; a periodic round after
//!   it finds nothing). These differences are recent (the newest timestamps), the common case
//!   of an office that was offline for a while.
//! - `delta_sync_*_core`: the sync core in process (`reconcile::Reconciler` against
//!   `reconcile::respond`), two sets of N items differing in 100 items scattered over a year:
//!   the worst case for range reconciliation, and the only level measured at 1,000,000 when
//!   loading two daemons would take too long.
//!
//!   Round trips are shown as `ours` with the baseline 1 (sending the whole id list is one
//!   round trip), ratio = baseline / ours, target 0.25 (≤ 4 round trips). Bytes are the
//!   reconciliation frames both ways (length prefixes included) against the full id list one
//!   way (N × 32 bytes), ratio = id list / ours, target 100 (≤ 1 %).
//! - `fan_out_p50/p99`: seven offices (EEA jurisdictions, all connected); `de` writes one
//!   consent at a time; a sample is the time from the write request until the record is durable
//!   at all six peers. Baseline per sample: the same job done by the raw parts together. An
//!   origin signs (ed25519) and commits one insert of the envelope's bytes durably to its own
//!   redb file; quinn carries the bytes to six endpoints; each verifies the signature, commits
//!   one insert durably to its own redb file and acks with one byte; the sample ends at the last
//!   ack. Shown in µs, ratio = baseline / ours; target p99 ≤ 3× (ratio ≥ 0.33).
//! - `fan_out_p99_vs_floors_alone` (for scale; the row's baseline up to the eighteenth
//!   session): each floor measured alone and added — a bare fan-out with acks, one signature,
//!   one verification and two durable commits one after the other. It leaves out that six
//!   offices verify and commit at the same moment on the same two cores and one disk, which on
//!   this machine costs the raw parts about as much again as all of their work alone
//!   (BENCHMARKS.md, nineteenth session).

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::office::Office;
use crate::protocol::{self, Request};
use consentd_sync::envelope::{self, Envelope};
use consentd_sync::item::{Item, ItemSet};
use consentd_sync::reconcile::{self, Reconciler};
use consentd_sync::VerifiedRoster;
use tokio::runtime::Runtime;

use super::write::grant;
use super::{percentile, trace, Row};

/// Records each side writes while the other cannot hear it (delta rows): 100 differences.
const DELTA_EACH_SIDE: usize = 50;
/// Bytes of one id in "the full id list".
const ID_BYTES: usize = 32;
/// How often convergence is checked.
const POLL: Duration = Duration::from_millis(5);

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A row whose figures are lower-is-better (latency, bytes, round trips): ratio = baseline /
/// ours, so a higher ratio is better, as everywhere in the table.
fn lower_is_better(
    name: &'static str,
    unit: &'static str,
    ours: f64,
    baseline: f64,
    target: f64,
) -> Row {
    let ratio = if ours > 0.0 { baseline / ours } else { 0.0 };
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

fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(e)
}

/// A daemon running in this process.
struct Daemon {
    office: Arc<Office>,
    /// Its control socket.
    socket: std::path::PathBuf,
    roster: Arc<VerifiedRoster>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::daemon::StartupError>>,
}

fn config(dir: &Path, office: &str) -> std::path::PathBuf {
    dir.join(office).join("consentd.toml")
}

fn start(rt: &Runtime, config: &Path) -> Result<Daemon, String> {
    let prepared = crate::daemon::prepare(config).map_err(e)?;
    let office = prepared.office.clone();
    let roster = prepared.roster.clone();
    let socket = prepared.config.control.socket.clone();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(crate::daemon::run(prepared, async move {
        let _ = stop_rx.await;
    }));
    Ok(Daemon {
        office,
        socket,
        roster,
        stop,
        task,
    })
}

/// Waits until nothing holds `office` any more, so its database is closed and may be opened
/// again.
fn release(office: Arc<Office>) -> Result<(), String> {
    let weak: Weak<Office> = Arc::downgrade(&office);
    drop(office);
    let deadline = Instant::now() + Duration::from_secs(30);
    while weak.upgrade().is_some() {
        if Instant::now() > deadline {
            return Err("a stopped office is still held after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Daemon {
    fn stop(self, rt: &Runtime) -> Result<(), String> {
        let _ = self.stop.send(());
        rt.block_on(self.task).map_err(e)?.map_err(e)?;
        release(self.office)
    }
}

/// Imports consents for `{tag}{i}@example.com`, `i` in `range`, through the real write path.
fn load(
    rt: &Runtime,
    office: &Office,
    tag: &str,
    range: std::ops::Range<usize>,
) -> Result<(), String> {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(protocol::IMPORT_CHUNK_RECORDS_MAX) {
        let records = chunk
            .iter()
            .map(|i| grant(format!("{tag}{i}@example.com")))
            .collect();
        rt.block_on(office.execute(Request::Import(protocol::Import {
            records,
            first_line: 1,
        })))
        .map_err(e)?;
    }
    Ok(())
}

/// An envelope: (change hash, bytes).
type Blob = ([u8; 32], Vec<u8>);

/// Every envelope an office holds.
fn envelopes(office: &Office) -> Result<Vec<Blob>, String> {
    let mut out = Vec::new();
    for h in envelope_hashes(office)? {
        if let Some(b) = office.store().envelope(&h).map_err(e)? {
            out.push((h, b));
        }
    }
    Ok(out)
}

/// Waits until `b` holds exactly what `a` holds (equal envelope counts, then equal state
/// digests); returns the instant it was first seen.
fn converged(a: &Office, b: &Office, timeout: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    let mut next_trace = Instant::now();
    loop {
        let now = Instant::now();
        let (na, nb) = (
            a.store().stats().map_err(e)?.envelopes,
            b.store().stats().map_err(e)?.envelopes,
        );
        // Converged means readable too: a record stored pending (its key not yet in) is not.
        if na == nb
            && a.state_digest().map_err(e)? == b.state_digest().map_err(e)?
            && pending(a)? == 0
            && pending(b)? == 0
        {
            return Ok(now);
        }
        if trace() && now >= next_trace {
            eprintln!(
                "converging: {na} and {nb} envelopes ({} and {} records pending), {:?} left",
                pending(a)?,
                pending(b)?,
                deadline - now
            );
            next_trace = now + Duration::from_millis(250);
        }
        if now > deadline {
            // Say what differs and what each side's links report, so a failed run explains
            // itself.
            let (ha, hb) = (envelope_hashes(a)?, envelope_hashes(b)?);
            let only = |x: &std::collections::BTreeSet<[u8; 32]>,
                        y: &std::collections::BTreeSet<[u8; 32]>| {
                x.difference(y).take(4).map(hex::encode).collect::<Vec<_>>()
            };
            return Err(format!(
                "offices did not converge within {timeout:?} ({na} and {nb} envelopes, {} and {} records pending; only at the first: {:?}; only at the second: {:?}; the first's peers: {}; the second's: {})",
                pending(a)?,
                pending(b)?,
                only(&ha, &hb),
                only(&hb, &ha),
                a.peers(),
                b.peers()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Records `office` holds but cannot read yet (`status` → `pending_records`).
fn pending(office: &Office) -> Result<usize, String> {
    office.pending_records().map_err(e)
}

/// How the floor applies a record's change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// As ingest does: a creating change is read straight into the record's fields
    /// (`consentd_sync::first_change`), anything else is applied by Automerge.
    AsIngest,
    /// Every change applied to a fresh Automerge document (the floor as issue 7 first measured
    /// it, before ingest stopped loading documents for new records).
    Automerge,
}

/// Every envelope hash `office` holds.
fn envelope_hashes(office: &Office) -> Result<std::collections::BTreeSet<[u8; 32]>, String> {
    let mut out = std::collections::BTreeSet::new();
    let mut after = None;
    loop {
        let page = office
            .store()
            .envelope_hashes_after(after.as_ref(), 4096)
            .map_err(e)?;
        let Some(last) = page.last().copied() else {
            return Ok(out);
        };
        out.extend(page);
        after = Some(last);
    }
}

/// The design floor of ingest: batch-verify every envelope against the roster and apply its
/// change, split over all cores. Returns the time taken.
fn verify_apply_floor(
    blobs: &[Blob],
    roster: &VerifiedRoster,
    how: Apply,
) -> Result<Duration, String> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let per = blobs.len().div_ceil(threads).max(1);
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = blobs
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || -> Result<(), String> {
                    let envs = chunk
                        .iter()
                        .map(|(_, b)| Envelope::decode(b).map_err(e))
                        .collect::<Result<Vec<_>, _>>()?;
                    for v in envelope::verify_batch(envs, roster) {
                        let v = v.map_err(e)?;
                        let fast = match how {
                            Apply::AsIngest if v.is_first() => {
                                consentd_sync::first_change::new_document(&v.envelope().change)
                            }
                            _ => None,
                        };
                        if fast.is_none() {
                            let change = v
                                .into_change()
                                .ok_or_else(|| "a verified change does not expand".to_string())?;
                            let mut doc = automerge::Automerge::new();
                            doc.apply_changes([change]).map_err(e)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "floor thread panicked".to_string())?)
    })?;
    Ok(started.elapsed())
}

/// Cold sync and delta sync between two daemons (rows 4 and 5, daemon level).
pub(super) fn replication(n: usize) -> Result<Vec<Row>, String> {
    let dir = tempfile::tempdir().map_err(e)?;
    let offices = crate::network::parse_offices("de,nl").map_err(e)?;
    crate::network::init(dir.path(), &offices, None, "bench").map_err(e)?;
    let rt = runtime()?;
    let a = start(&rt, &config(dir.path(), "nl"))?;
    let t = Instant::now();
    load(&rt, &a.office, "cold", 0..n)?;
    if trace() {
        eprintln!("imported {n} records in {:?}", t.elapsed());
    }
    let timeout = Duration::from_secs(120) + Duration::from_millis(n as u64);

    // Cold sync: de starts empty and dials nl. Meanwhile an operator asks de's control socket
    // whether it may contact someone, as they would during any initial sync.
    let started = Instant::now();
    let b = start(&rt, &config(dir.path(), "de"))?;
    let checks = CheckPoller::start(b.socket.clone(), n);
    let done = converged(&a.office, &b.office, timeout)?;
    let cold = done - started;
    let (during, idle) = checks.finish()?;

    // Baselines over the same envelope bytes.
    let blobs = envelopes(&a.office)?;
    let raw_quic = rt.block_on(consentd_sync::baseline::transfer(
        &blobs.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
    ))?;
    let items: Vec<([u8; 32], &[u8])> = blobs.iter().map(|(h, b)| (*h, &b[..])).collect();
    let raw_redb =
        consentd_storage::baseline_sync::bulk_insert(&dir.path().join("raw-sync.redb"), &items)
            .map_err(e)?;
    let floor = verify_apply_floor(&blobs, &a.roster, Apply::AsIngest)?;
    let floor_automerge = verify_apply_floor(&blobs, &a.roster, Apply::Automerge)?;
    let base = raw_quic + raw_redb + floor;
    let base_automerge = raw_quic + raw_redb + floor_automerge;
    // Both rates count every envelope de ended with: the n records plus the transfer-event
    // records nl wrote while sending them.
    let rate = blobs.len() as f64 / cold.as_secs_f64();
    let base_rate = blobs.len() as f64 / base.as_secs_f64();
    let base_rate_automerge = blobs.len() as f64 / base_automerge.as_secs_f64();
    if trace() {
        // How the envelopes were grouped into de's durable commits (fewer, larger commits
        // rewrite fewer B-tree pages per record).
        let status = b.office.status().map_err(e)?;
        eprintln!(
            "cold sync of {n} records: {cold:?}; baseline {} envelopes: quic {raw_quic:?} + redb {raw_redb:?} + verify/apply floor {floor:?} (with Automerge applying every change: {floor_automerge:?}); de: {} durable commits of {} batches",
            blobs.len(),
            status["durable_commits"],
            status["batches_committed"],
        );
    }
    drop(items);
    drop(blobs);

    // Delta sync: 50 new records on each side while de is down, then de reconnects.
    b.stop(&rt)?;
    load(&rt, &a.office, "delta-nl", 0..DELTA_EACH_SIDE)?;
    // de writes in a later second than nl, as an office back from being offline would. Under
    // sync protocol version 1 (envelope items timed by the second) the two sides' records,
    // written back to back, often shared a second, and the row then read about 1,400 bytes less
    // than when they did not (BENCHMARKS.md, twenty-fourth session): a figure that depended on
    // where a second began.
    std::thread::sleep(until_next_second());
    {
        let offline = crate::daemon::prepare(&config(dir.path(), "de")).map_err(e)?;
        load(&rt, &offline.office, "delta-de", 0..DELTA_EACH_SIDE)?;
        offline.office.store().shutdown();
        release(offline.office)?;
    }
    if trace() {
        eprintln!("de restarting, holding {n} records");
    }
    let restarted = Instant::now();
    let b = start(&rt, &config(dir.path(), "de"))?;
    // Start-up rebuilds the replication sets from every stored envelope, on a blocking thread
    // while the control socket serves; `status` says `replication: running` once the replicator
    // is attached. A daemon that failed at start never does: say why (a silent failure here
    // read as "did not converge" after the whole timeout).
    let ready_by = Instant::now() + timeout;
    // First, the control socket: it answers while the sets are still being built.
    let serving = loop {
        let answered = crate::protocol::Client::connect(&b.socket)
            .and_then(|mut c| c.call(&crate::protocol::Request::Status(crate::protocol::Empty {})));
        if answered.is_ok() {
            break restarted.elapsed();
        }
        if Instant::now() > ready_by {
            return Err(format!(
                "de restarted but its control socket never answered: {answered:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    while b.office.replication_state() != "running" {
        if b.office.replication_state() == "failed" {
            return Err(format!(
                "de restarted but its replication failed: {}",
                b.office.peers()
            ));
        }
        if Instant::now() > ready_by {
            // The control socket serves but replication is not running (it logs why).
            return Err(format!(
                "de restarted but its replicator did not start within {timeout:?}"
            ));
        }
        if b.task.is_finished() {
            return Err(match rt.block_on(b.task) {
                Ok(Err(err)) => format!("de did not restart: {err}"),
                Ok(Ok(())) => "de stopped during its restart".to_string(),
                Err(err) => format!("de did not restart: {err}"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if trace() {
        eprintln!(
            "de restarted holding {n} records in {:?} (serving its control socket after {serving:?})",
            restarted.elapsed()
        );
    }
    converged(&a.office, &b.office, timeout)?;
    let peers = b.office.peers();
    let recon = peers
        .as_array()
        .and_then(|p| p.iter().find(|p| p["office"] == "nl"))
        .map(|p| p["last_exchange"]["envelopes"].clone())
        .ok_or("de lists no peer nl")?;
    if recon["complete"] != true {
        return Err(format!(
            "de lists no complete envelope reconciliation that found the difference: {recon}"
        ));
    }
    let round_trips = recon["round_trips"].as_f64().unwrap_or(0.0);
    let bytes = recon["bytes_sent"].as_f64().unwrap_or(0.0)
        + recon["bytes_received"].as_f64().unwrap_or(0.0);
    if trace() {
        eprintln!("delta sync between daemons: {recon}");
    }
    b.stop(&rt)?;
    a.stop(&rt)?;
    let id_list = (n * ID_BYTES) as f64;
    Ok(vec![
        Row::new("cold_sync", "envelopes/s", rate, base_rate, 1.0 / 1.5),
        Row::new(
            "cold_sync_vs_automerge_floor",
            "envelopes/s",
            rate,
            base_rate_automerge,
            0.0,
        ),
        lower_is_better(
            "delta_sync_round_trips_daemons",
            "round trips",
            round_trips,
            1.0,
            0.25,
        ),
        lower_is_better("delta_sync_bytes_daemons", "bytes", bytes, id_list, 100.0),
        Row::new(
            "consent_check_during_sync_p99",
            "checks/s",
            1.0 / percentile(&during, 0.99),
            1.0 / percentile(&idle, 0.99),
            0.0,
        ),
    ])
}

/// How long until the wall clock's next whole second, plus a margin: whatever is written after
/// this sleep is timed (in whole seconds) after whatever was written before it.
fn until_next_second() -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())) + Duration::from_millis(20)
}

/// Pause between two checks of [`CheckPoller`]: an operator's steady trickle, not a load test.
const CHECK_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Most checks timed during one sync (~2 hours at [`CHECK_POLL_INTERVAL`]; 16 bytes each).
const CHECK_POLL_SAMPLES_MAX: usize = 4 << 20;
/// Most checks timed against the idle daemon afterwards (~5 s; enough for a p99).
const CHECK_POLL_IDLE_SAMPLES_MAX: usize = 2_000;

/// Check latencies while the daemon was busy, then idle.
type BusyAndIdle = (Vec<Duration>, Vec<Duration>);

/// Times `consent check` over a daemon's control socket on its own thread (one connection,
/// as a long-lived client holds it), while something else keeps the daemon busy; then, once
/// told the busy part is over, as many checks (at most [`CHECK_POLL_IDLE_SAMPLES_MAX`]) against
/// the now idle daemon.
struct CheckPoller {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<BusyAndIdle, String>>,
}

impl CheckPoller {
    /// Starts polling `socket`, checking subjects among the `n` records `load` wrote as `cold`.
    fn start(socket: std::path::PathBuf, n: usize) -> CheckPoller {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let connect_by = Instant::now() + Duration::from_secs(60);
                let mut client = loop {
                    match protocol::Client::connect(&socket) {
                        Ok(c) => break c,
                        Err(err) if Instant::now() > connect_by => {
                            return Err(format!("de's control socket never answered: {err}"))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                };
                let mut check = |i: usize| -> Result<Duration, String> {
                    let request = Request::ConsentCheck(protocol::ConsentCheck {
                        subject: format!("cold{}@example.com", (i * 7919) % n.max(1)),
                        purpose: "marketing".into(),
                        at: None,
                    });
                    let t = Instant::now();
                    client.call(&request).map_err(e)?;
                    Ok(t.elapsed())
                };
                let mut during = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && during.len() < CHECK_POLL_SAMPLES_MAX
                {
                    during.push(check(during.len())?);
                    std::thread::sleep(CHECK_POLL_INTERVAL);
                }
                let idle_n = during.len().clamp(1, CHECK_POLL_IDLE_SAMPLES_MAX);
                let mut idle = Vec::with_capacity(idle_n);
                for i in 0..idle_n {
                    idle.push(check(i)?);
                    std::thread::sleep(CHECK_POLL_INTERVAL);
                }
                Ok((during, idle))
            }
        });
        CheckPoller { stop, thread }
    }

    /// Stops polling; returns the latencies while busy and then idle, each sorted.
    fn finish(self) -> Result<BusyAndIdle, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut during, mut idle) = self
            .thread
            .join()
            .map_err(|_| "the check poller panicked".to_string())??;
        if during.is_empty() {
            return Err("no consent check answered during the sync".into());
        }
        during.sort_unstable();
        idle.sort_unstable();
        if trace() {
            let ms = |sorted: &[Duration], p: f64| percentile(sorted, p) * 1e3;
            eprintln!(
                "consent checks over de's socket: during the sync {} checks, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; idle p50 {:.3} ms, p99 {:.3} ms",
                during.len(),
                ms(&during, 0.5),
                ms(&during, 0.9),
                ms(&during, 0.99),
                ms(&during, 1.0),
                ms(&idle, 0.5),
                ms(&idle, 0.99),
            );
        }
        Ok((during, idle))
    }
}

fn random_item(span_ms: u64, offset_ms: u64) -> Item {
    Item::new(
        offset_ms + rand::random::<u64>() % span_ms,
        rand::random::<[u8; 32]>(),
    )
}

/// Delta sync of the sync core: two sets of `n` items differing in 100 scattered items.
pub(super) fn delta_core(n: usize) -> Result<Vec<Row>, String> {
    const YEAR_MS: u64 = 365 * 86_400_000;
    const NOW_MS: u64 = 1_760_000_000_000;
    let common = n.saturating_sub(DELTA_EACH_SIDE);
    let mut a: ItemSet = (0..common).map(|_| random_item(YEAR_MS, NOW_MS)).collect();
    let mut b = a.clone();
    for _ in 0..DELTA_EACH_SIDE {
        a.insert(random_item(YEAR_MS, NOW_MS));
        b.insert(random_item(YEAR_MS, NOW_MS));
    }
    let frame = |m: &[u8]| (4 + 14 + m.len()) as f64;
    let mut rec = Reconciler::new(usize::MAX);
    let mut query = rec.initiate(&a);
    let (mut round_trips, mut bytes) = (0u32, frame(&query));
    loop {
        let reply = reconcile::respond(&b, &query).map_err(e)?;
        round_trips += 1;
        bytes += frame(&reply);
        match rec.reconcile(&a, &reply).map_err(e)? {
            Some(q) => {
                bytes += frame(&q);
                query = q;
            }
            None => break,
        }
    }
    let (have, need) = rec.into_parts();
    if have.len() != DELTA_EACH_SIDE || need.len() != DELTA_EACH_SIDE {
        return Err(format!(
            "core reconciliation learnt {} and {} differences, not {DELTA_EACH_SIDE} each",
            have.len(),
            need.len()
        ));
    }
    Ok(vec![
        lower_is_better(
            "delta_sync_round_trips_core",
            "round trips",
            round_trips as f64,
            1.0,
            0.25,
        ),
        lower_is_better(
            "delta_sync_bytes_core",
            "bytes",
            bytes,
            (n * ID_BYTES) as f64,
            100.0,
        ),
    ])
}

/// The seven fan-out offices: EEA jurisdictions, so policy lets every record go everywhere.
const FAN_OUT_OFFICES: &str = "de,dea=DE,deb=DE,dec=DE,ded=DE,dee=DE,def=DE";
/// Writes before the timed ones (connections warm, first transfer events written).
const FAN_OUT_WARMUP: usize = 10;

/// One record written at `de` reaching six peers (row 6).
pub(super) fn fan_out(n: usize) -> Result<Vec<Row>, String> {
    let samples = (n / 20).clamp(20, 500);
    let dir = tempfile::tempdir().map_err(e)?;
    let offices = crate::network::parse_offices(FAN_OUT_OFFICES).map_err(e)?;
    crate::network::init(dir.path(), &offices, None, "bench").map_err(e)?;
    let rt = runtime()?;
    let mut daemons = Vec::new();
    for (id, _) in &offices {
        daemons.push((id.clone(), start(&rt, &config(dir.path(), id))?));
    }
    // Every link up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = daemons.iter().all(|(_, d)| {
            d.office
                .peers()
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["connected"] == true))
        });
        if all {
            break;
        }
        if Instant::now() > deadline {
            return Err("fan-out offices did not all connect within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Arrivals: every durable commit at each peer, stamped as it is announced.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, [u8; 16], Instant, usize)>();
    for (peer, (_, d)) in daemons.iter().enumerate().skip(1) {
        let mut sub = d.office.subscribe_committed();
        let tx = tx.clone();
        rt.spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(c) => {
                        let at = Instant::now();
                        for (doc, _, bytes) in &c.envelopes {
                            let _ = tx.send((peer, *doc, at, bytes.len()));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
    }
    let origin = daemons[0].1.office.clone();
    let peers = daemons.len() - 1;
    let mut latencies = Vec::with_capacity(samples);
    let mut envelope_bytes = 0usize;
    for i in 0..FAN_OUT_WARMUP + samples {
        let started = Instant::now();
        let answer = rt
            .block_on(origin.execute(grant(format!("fan{i}@example.com"))))
            .map_err(e)?;
        let acked = started.elapsed();
        let doc = crate::record::parse_doc_id(answer["id"].as_str().unwrap_or(""))?;
        let mut arrivals = Vec::new();
        let mut reached = std::collections::HashSet::new();
        let mut last = started;
        while reached.len() < peers {
            let got = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), rx.recv()).await });
            match got {
                Ok(Some((peer, d, at, len))) if d == doc => {
                    if reached.insert(peer) {
                        arrivals.push((at - started).as_millis());
                        last = last.max(at);
                    }
                    envelope_bytes = len;
                }
                Ok(Some(_)) => {} // other records (transfer events) replicating meanwhile
                _ => return Err(format!("write {i} did not reach all six peers in 30 s")),
            }
        }
        if trace() {
            eprintln!("fan-out write {i}: acked {acked:?}, arrivals ms {arrivals:?}");
        }
        if i >= FAN_OUT_WARMUP {
            latencies.push(last - started);
        }
    }
    drop(origin);
    for (_, d) in daemons {
        d.stop(&rt)?;
    }
    let blob = vec![0x5a; envelope_bytes.max(1)];
    let key = consentd_sync::keys::generate();
    let message = envelope::signed_message(&[7; 16], &[9; 32]);
    // Baseline: the same work done by the raw parts, together. The origin signs and commits one
    // insert durably; quinn carries the bytes to six endpoints; each verifies the signature,
    // commits one insert durably to its own redb file, and acks. Six receivers share the cores
    // and the disk as the six offices do.
    let signature = {
        use ed25519_dalek::Signer;
        key.sign(&message)
    };
    let verifying = key.verifying_key();
    let raw = |name: String| {
        consentd_storage::baseline_sync::RawCommitter::create(&dir.path().join(name)).map_err(e)
    };
    let mut receivers = Vec::with_capacity(peers);
    for p in 0..peers {
        let mut db = raw(format!("raw-peer-{p}.redb"))?;
        receivers.push(move |bytes: &[u8]| {
            verifying
                .verify_strict(&message, &signature)
                .map_err(|_| "bench signature does not verify".to_string())?;
            db.commit_one(bytes).map_err(e)
        });
    }
    let mut origin_db = raw("raw-origin.redb".into())?;
    let together = rt.block_on(consentd_sync::baseline::fan_out_with_work(
        &blob,
        receivers,
        samples,
        |bytes: &[u8]| {
            use ed25519_dalek::Signer;
            std::hint::black_box(key.sign(&message));
            origin_db.commit_one(bytes).map_err(e)
        },
    ))?;
    // For scale, the baseline of earlier sessions: each floor measured alone and added (a bare
    // fan-out with acks, one signature, one verification, two durable commits one after the
    // other). It leaves out that six receivers verify and commit at once on shared hardware.
    let bare = rt.block_on(consentd_sync::baseline::fan_out(&blob, peers, samples))?;
    let commits = consentd_storage::baseline_sync::commit_latencies(
        &dir.path().join("raw-commit.redb"),
        &blob,
        2 * samples,
    )
    .map_err(e)?;
    let mut alone = Vec::with_capacity(samples);
    for i in 0..samples {
        use ed25519_dalek::Signer;
        let t = Instant::now();
        let sig = key.sign(&message);
        let signed = t.elapsed();
        let t = Instant::now();
        key.verifying_key()
            .verify_strict(&message, &sig)
            .map_err(|_| "bench signature does not verify")?;
        let verified = t.elapsed();
        alone.push(bare[i] + signed + verified + commits[2 * i] + commits[2 * i + 1]);
    }
    latencies.sort_unstable();
    let mut baseline = together;
    baseline.sort_unstable();
    alone.sort_unstable();
    let us = |sorted: &[Duration], p: f64| percentile(sorted, p) * 1e6;
    let row = |name: &'static str, p: f64, baseline: &[Duration], target: f64| {
        lower_is_better(name, "us", us(&latencies, p), us(baseline, p), target)
    };
    Ok(vec![
        row("fan_out_p50", 0.5, &baseline, 0.0),
        row("fan_out_p99", 0.99, &baseline, 1.0 / 3.0),
        row("fan_out_p99_vs_floors_alone", 0.99, &alone, 0.0),
    ])
}
