//! `consentd bench`: measured figures beside a baseline on the same machine, one row each.
//!
//! A row is `{name, ours, baseline, unit, ratio, target, met}` (INTERFACE.md). Rows are
//! independent functions in [`BENCHES`], one module per family of rows:
//! - `write`: batched ingest against the authoring-and-signing floor, 64 concurrent clients,
//!   memory and disk per record (issue 7 rows 1, 2, 7; one daemon run, so rows 7 print early);
//! - `check`: `consent check` latency, in-process and over the socket, against raw redb;
//! - `verify`: `audit verify` throughput against a bare batch ed25519 loop on all cores;
//! - `sync`: cold sync, delta sync and fan-out between daemons (rows whose figures are
//!   lower-is-better — latency, bytes, round trips — report ratio = baseline / ours instead).

mod check;
mod sync;
mod verify;
mod write;

pub use verify::{synthetic_bundle, Synthetic};
pub use write::raw_redb_child;

use serde::Serialize;

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
    pub(crate) fn new(
        name: &'static str,
        unit: &'static str,
        ours: f64,
        baseline: f64,
        target: f64,
    ) -> Row {
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
    ("writes", write::writes),
    ("consent_check", check::consent_check),
    ("audit_verify", verify::audit_verify),
    ("replication", sync::replication),
    ("delta_sync_core", sync::delta_core),
    ("fan_out", sync::fan_out),
];

/// Runs every benchmark, or only those named in `CONSENTD_BENCH_ONLY` (comma-separated names
/// from [`BENCHES`], e.g. `replication,fan_out`). With `CONSENTD_BENCH_TRACE` set, each family's
/// rows are also printed to stderr as soon as they are measured.
pub fn run(records: usize) -> Result<Vec<Row>, String> {
    if !cfg!(poly1305_force_soft) {
        // `.cargo/config.toml` passes the cfg to every crate; a `RUSTFLAGS` in the environment
        // replaces that list, and the build, as correct, seals slower (BENCHMARKS.md, thirty-third
        // session): say so beside figures that would otherwise not be comparable.
        eprintln!(
            "warning: this build lacks .cargo/config.toml's `--cfg poly1305_force_soft` (a RUSTFLAGS \
             in the environment replaces it): every seal costs about a microsecond more, and the \
             ingest and writes rows show it"
        );
    }
    let only = std::env::var("CONSENTD_BENCH_ONLY").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    if let Some(filter) = daemon_log() {
        // The sync families run their daemons in this process (the write family's daemon is a
        // child and logs on its own); thread ids tell the offices' writers apart.
        let filter = tracing_subscriber::EnvFilter::try_new(&filter)
            .map_err(|e| format!("CONSENTD_BENCH_DAEMON_LOG: {e}"))?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .with_thread_ids(true)
            .with_ansi(false)
            .try_init();
    }
    let mut rows = Vec::new();
    for (name, b) in BENCHES {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let family = b(records.max(1)).map_err(|e| format!("{name}: {e}"))?;
        if trace() {
            // A long run (1,000,000 records takes an hour or more) keeps what it measured so far
            // even if a later family fails.
            eprint!("{}", human(&family));
        }
        rows.extend(family);
    }
    Ok(rows)
}

/// Checks timed per latency row.
pub(crate) const CHECK_SAMPLES: usize = 20_000;

/// `CONSENTD_BENCH_TRACE=1`: progress and per-sample detail on stderr.
pub(crate) fn trace() -> bool {
    std::env::var_os("CONSENTD_BENCH_TRACE").is_some()
}

/// `CONSENTD_BENCH_DAEMON_LOG=<filter>` (e.g. `consentd_storage=trace`): the daemons log at that
/// level to the bench's stderr (otherwise the write bench's logs warnings to nowhere and the sync
/// families' log nothing), e.g. to see each group commit's size, time and the writer's idle time
/// before it.
pub(crate) fn daemon_log() -> Option<String> {
    std::env::var("CONSENTD_BENCH_DAEMON_LOG").ok()
}

pub(crate) fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}
/// Human table.
pub fn human(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<30} {:>14} {:>14} {:<12} {:>6} {:>6} {:>4}\n",
        "NAME", "OURS", "BASELINE", "UNIT", "RATIO", "TARGET", "MET"
    );
    for r in rows {
        out += &format!(
            "{:<30} {:>14.0} {:>14.0} {:<12} {:>6.2} {:>6.2} {:>4}\n",
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
