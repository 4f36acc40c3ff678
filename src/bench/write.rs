//! Write rows: batched ingest (issue 7 row 1), 64 concurrent clients (row 2), and memory and disk
//! per record (row 7). They share one run of the real daemon, so N records are imported once.
//!
//! **How it runs.** `consentd bench` starts the real daemon as a child process (this executable
//! with `--config`, a fresh one-office network in a temporary directory) and drives it over its
//! control socket exactly as an operator would:
//! 1. imports N consent grants with [`crate::ctl::import_requests`] (what `consentctl import`
//!    does: chunks of [`protocol::IMPORT_CHUNK_RECORDS_MAX`], each acknowledged after its durable
//!    commit), reading the daemon's `VmRSS` (`/proc/PID/status`) before and after, and the size of
//!    its redb file after;
//! 2. sends N more grants from 64 client threads, one request per grant, each acknowledged after
//!    its durable commit, timing every acknowledgement;
//! 3. stops the daemon (SIGTERM), opens its store and reads back the envelopes and the stored
//!    (sealed) records: "the same records" and "the same encoded bytes" of the baselines.
//!
//! **Baselines**, all in the same run:
//! - *design floor* (row 1): authoring and signing the same records' Automerge changes (a fresh
//!   document naming itself, the sealed record's fields, the change signed into an envelope,
//!   exactly what `Draft::create` does: `Record::first_change`, which writes the chunk without an
//!   Automerge document) on all cores, with nothing else: no storage, no socket, no sealing, no
//!   projection. Measured on up to [`FLOOR_RECORDS_MAX`] records (a rate). For scale, no target:
//!   `ingest_vs_automerge_floor` is the same floor authored through an Automerge document and
//!   transaction, as the daemon did before the twenty-seventh session.
//! - *raw redb* (rows 1, 2 and 7): the same envelope bytes under their change hashes in a plain
//!   one-table redb file with redb's default cache (as our store opens it): in commits of 1,000
//!   (the import chunk) for row 1's "for scale" row, one durable commit per insert for row 2
//!   (up to [`SINGLE_COMMITS_MAX`] inserts), and, for row 7, in a separate process
//!   (`consentd bench-raw-redb`, hidden) that streams all N envelopes in durable commits of 1,000
//!   and reports its own `VmRSS` growth and file size.
//! - *ceiling* (row 1, for scale, no target): `ingest_ceiling`, the most any import could do on
//!   these cores, from the two above: the floor's core time a record plus the CPU raw redb's
//!   batch inserts spent a record ([`Ceiling`]). Row 1's target can be met only where this bound
//!   is above 0.7 of the floor.
//!
//! **Higher is better everywhere** (`ratio = ours / baseline`, met when `ratio ≥ target`):
//! - `writes_64_clients_p99` (row 2, "p99 acknowledgement ≤ 2× the mean the rate implies"):
//!   ours is `1 / p99` and the baseline is `rate / 64` (one over the implied mean latency), in
//!   acknowledgements per second per client; so the ratio is `mean / p99` and the target 0.5.
//! - `memory_per_record` (row 7, "≤ raw redb + 100 bytes per record"): in records per MiB of
//!   resident-memory growth; ours is `2^20 / (our growth per record)`, the baseline is
//!   `2^20 / (raw growth per record + 100)`: the budget. Ratio ≥ 1 means within budget.
//! - `disk_per_record` (row 7, "≤ 2.5× the raw redb file"): records per MiB of file on disk
//!   (allocated bytes, as `du` counts them: [`disk_usage`]); the ratio is raw file / our file and
//!   the target 1 / 2.5 = 0.4. For scale, no target: `disk_per_record_file_length` is the same by
//!   file length (`ls -l`), and `disk_per_record_compacted` is after `Store::compact`, separating
//!   free pages from live bytes.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use consentd_storage::baseline::{self, RawDb};
use consentd_sync::{envelope, keys};
use ed25519_dalek::SigningKey;

use super::{percentile, Row};
use crate::protocol::{self, Client, Request};
use crate::record::{self, Record};

/// Most records the design floor authors (it measures a rate; 20,000 take ~1 s on 2 cores).
pub(crate) const FLOOR_RECORDS_MAX: usize = 20_000;
/// Most inserts of the "one durable commit per insert" baseline (each costs an fsync).
pub(crate) const SINGLE_COMMITS_MAX: usize = 2_000;
/// Concurrent clients of row 2.
pub(crate) const CLIENTS: usize = 64;
/// Raw redb inserts per durable commit for row 1's raw row and row 7's raw process: the import
/// chunk.
const RAW_BATCH: usize = protocol::IMPORT_CHUNK_RECORDS_MAX;
/// Memory allowance per record over raw redb (row 7).
const MEMORY_ALLOWANCE_BYTES: f64 = 100.0;
const MIB: f64 = (1u64 << 20) as f64;

/// Envelopes as (change hash, encoded bytes).
type Encoded = Vec<([u8; 32], Vec<u8>)>;

/// A consent grant as the bench writes it (the same shape as `consentctl consent grant`).
pub(crate) fn grant(subject: String) -> Request {
    Request::ConsentGrant(protocol::ConsentGrant {
        service: Some("sms".into()),
        evidence: Some("web form v3".into()),
        at: Some("2026-01-31T00:00:00Z".into()),
        ..protocol::ConsentGrant::new(subject, "marketing", "consent")
    })
}

/// Waits until the control socket accepts connections (the daemon is ready).
pub(crate) fn wait_for_socket(socket: &Path, child: Option<&mut Child>) -> Result<(), String> {
    let started = Instant::now();
    let mut child = child;
    loop {
        match Client::connect(socket) {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("the bench daemon did not start: {e}"))
            }
            Err(_) => {
                if let Some(c) = child.as_deref_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Err(format!("the bench daemon exited at start-up: {status}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(10))
            }
        }
    }
}

/// Resident memory of a process, in bytes (`VmRSS` of `/proc/PID/status`).
pub(crate) fn vm_rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS"))
}

/// CPU time a process has used so far, user and system, in seconds (`/proc/PID/stat`).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime and stime are fields 14 and 15 (proc(5)), in clock ticks.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("/proc/{pid}/stat has no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    let (user, system) = ticks(14)
        .zip(ticks(15))
        .ok_or_else(|| format!("/proc/{pid}/stat has no utime and stime"))?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((user + system) as f64 / hz)
}

/// A file's size on disk: `(allocated bytes, length)`.
///
/// Row 7 compares allocated bytes (`du`), not lengths (`ls -l`): redb grows a file by doubling
/// up to 4 GiB (then by 4 GiB regions) and leaves the grown tail sparse until it writes there, so
/// a length measures where the last growth step landed more than what the records take (at
/// 1,000,000 records, during the 64-client phase, our file was 4 GiB long with 2.6 GB
/// allocated).
pub(crate) fn disk_usage(path: &Path) -> Result<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // st_blocks counts 512-byte units whatever the file system's block size (stat(2)).
    Ok((m.blocks() * 512, m.len()))
}

/// The daemon child: killed if the bench fails half way.
struct Daemon(Child);

impl Daemon {
    fn stop(mut self) -> Result<(), String> {
        // SIGTERM: a clean shutdown, so the store can be opened afterwards.
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.0.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the bench daemon stopped with {status}"));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What the daemon side of the run measured.
struct Ours {
    import_rate: f64,
    rss_growth: f64,
    /// Allocated and apparent size of the file after the import ([`disk_usage`]).
    file_bytes: (u64, u64),
    concurrent_rate: f64,
    latencies: Vec<Duration>,
}

/// Rows 1, 2 and 7 (module docs).
pub(super) fn writes(n: usize) -> Result<Vec<Row>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let offices = crate::network::parse_offices("de").map_err(|e| e.to_string())?;
    crate::network::init(dir.path(), &offices, None, "bench").map_err(|e| e.to_string())?;
    let config_path = dir.path().join("de").join("consentd.toml");
    let config = crate::config::Config::load(&config_path).map_err(|e| e.to_string())?;
    let db_path = config.data_dir.join(crate::daemon::DB_FILE);
    let socket = config.control.socket.clone();

    let ours = run_daemon(&config_path, &socket, &db_path, n)?;

    // The same records and bytes, read back from the daemon's store.
    let store = consentd_storage::Store::open(&db_path).map_err(|e| e.to_string())?;
    let sample = n.clamp(1, FLOOR_RECORDS_MAX);
    let records: Vec<Record> = store
        .projections_of_kind(record::KIND_CONSENT, sample)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(_, p)| Record::from_projection(&p))
        .collect::<Result<_, _>>()?;
    let envelopes_file = dir.path().join("envelopes.bin");
    let stored = dump_envelopes(&store, &envelopes_file)?;
    // For the note on row 7: how much of our file is free pages (both phases' 2n records).
    store.compact().map_err(|e| e.to_string())?;
    store.shutdown();
    drop(store);
    let (compacted_bytes, _) = disk_usage(&db_path)?;
    if stored < 2 * n as u64 {
        return Err(format!(
            "the bench daemon stored {stored} envelopes; expected {}",
            2 * n
        ));
    }

    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let (floor_rate, envs) = floor(&records, threads, Authoring::AsDaemon)?;
    let (floor_automerge_rate, _) = floor(&records, threads, Authoring::Automerge)?;

    let raw_batch = baseline::durable_inserts(
        &dir.path().join("raw-batch.redb"),
        &envs,
        RAW_BATCH,
        thread_cpu,
    )
    .map_err(|e| e.to_string())?;
    let raw_batch_rate = envs.len() as f64 / raw_batch.wall.as_secs_f64();
    let ceiling = Ceiling::of(threads, floor_rate, raw_batch.cpu, envs.len());
    let single = &envs[..envs.len().min(SINGLE_COMMITS_MAX)];
    let raw_single =
        baseline::durable_inserts(&dir.path().join("raw-single.redb"), single, 1, thread_cpu)
            .map_err(|e| e.to_string())?;
    let raw_single_rate = single.len() as f64 / raw_single.wall.as_secs_f64();

    // Row 7's raw side: its own process, the first n stored envelopes (the import's share).
    let raw = raw_child(&dir.path().join("raw-footprint.redb"), &envelopes_file, n)?;

    let mut lat = ours.latencies;
    lat.sort_unstable();
    let p99 = percentile(&lat, 0.99);
    if super::trace() {
        // The row takes p99 alone; the spread says whether a tail is a few stragglers or a
        // wide distribution.
        let ms = |q: f64| percentile(&lat, q) * 1e3;
        eprintln!(
            "writes_64_clients acknowledgement ms: p10 {:.2} p50 {:.2} p90 {:.2} p99 {:.2} \
             max {:.2}; mean implied by the rate {:.2}",
            ms(0.10),
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(1.0),
            CLIENTS as f64 / ours.concurrent_rate * 1e3
        );
        eprintln!(
            "ingest ceiling: the floor {:.1} µs of a core a record ({threads} threads) + raw redb's \
             insert {:.1} µs of CPU ({:.1} µs of wall) = at most {:.0} records/s, {:.2} of the \
             floor's rate",
            ceiling.floor_us,
            ceiling.insert_us,
            raw_batch.wall.as_secs_f64() * 1e6 / envs.len().max(1) as f64,
            ceiling.rate,
            ceiling.rate / floor_rate
        );
    }
    let ours_mem = (ours.rss_growth / n as f64).max(1.0);
    let raw_mem = (raw.rss_growth / n as f64).max(0.0);
    let per_mib = |records: usize, bytes: u64| records as f64 / (bytes as f64 / MIB);
    Ok(vec![
        Row::new("ingest", "records/s", ours.import_rate, floor_rate, 0.7),
        Row::new(
            "ingest_vs_raw_redb",
            "records/s",
            ours.import_rate,
            raw_batch_rate,
            0.0,
        ),
        Row::new(
            "ingest_ceiling",
            "records/s",
            ours.import_rate,
            ceiling.rate,
            0.0,
        ),
        Row::new(
            "ingest_vs_automerge_floor",
            "records/s",
            ours.import_rate,
            floor_automerge_rate,
            0.0,
        ),
        Row::new(
            "writes_64_clients",
            "records/s",
            ours.concurrent_rate,
            ours.import_rate,
            0.7,
        ),
        Row::new(
            "writes_64_clients_vs_redb",
            "records/s",
            ours.concurrent_rate,
            raw_single_rate,
            3.0,
        ),
        Row::new(
            "writes_64_clients_p99",
            "acks/s",
            1.0 / p99,
            ours.concurrent_rate / CLIENTS as f64,
            0.5,
        ),
        Row::new(
            "memory_per_record",
            "records/MiB",
            MIB / ours_mem,
            MIB / (raw_mem + MEMORY_ALLOWANCE_BYTES),
            1.0,
        ),
        Row::new(
            "disk_per_record",
            "records/MiB",
            per_mib(n, ours.file_bytes.0),
            per_mib(n, raw.file_bytes.0),
            0.4,
        ),
        // For scale: the same by file length, which steps with redb's growth (`disk_usage`).
        Row::new(
            "disk_per_record_file_length",
            "records/MiB",
            per_mib(n, ours.file_bytes.1),
            per_mib(n, raw.file_bytes.1),
            0.0,
        ),
        // For scale: our file after `Store::compact` (2n records: both phases), against the
        // same raw file; the gap to `disk_per_record` is free pages of copy-on-write commits.
        Row::new(
            "disk_per_record_compacted",
            "records/MiB",
            per_mib(2 * n, compacted_bytes),
            per_mib(n, raw.file_bytes.0),
            0.0,
        ),
    ])
}

/// Starts the daemon, imports n records, then writes n more from 64 clients; stops it.
fn run_daemon(config: &Path, socket: &Path, db: &Path, n: usize) -> Result<Ours, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = super::daemon_log();
    let child = Command::new(exe)
        .arg("--config")
        .arg(config)
        .env("CONSENTD_LOG", log.as_deref().unwrap_or("warn"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(|e| format!("cannot start the bench daemon: {e}"))?;
    let mut daemon = Daemon(child);
    wait_for_socket(socket, Some(&mut daemon.0))?;
    let pid = daemon.0.id();
    let rss_before = vm_rss(pid)?;
    let cpu_before = cpu_seconds(pid)?;

    // Row 1: the import, as `consentctl import` sends it.
    let lines: Vec<(usize, Request)> = (0..n)
        .map(|i| (i + 1, grant(format!("user{i}@example.com"))))
        .collect();
    let started = Instant::now();
    let imported = crate::ctl::import_requests(socket, lines)?;
    let import_rate = n as f64 / started.elapsed().as_secs_f64();
    if imported != n as u64 {
        return Err(format!("imported {imported} of {n} records"));
    }
    // The daemon returns the import's freed heap to the kernel once bulk work pauses
    // (`office::heap`): read its resident memory after that, as it stays while it serves.
    std::thread::sleep(crate::office::heap::TRIM_SETTLED_MAX);
    let rss_after = vm_rss(pid)?;
    let cpu_import = cpu_seconds(pid)?;
    let file_bytes = disk_usage(db)?;

    // Row 2: 64 clients, one grant per request, each acknowledged after its durable commit.
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(n));
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    let mut client = Client::connect(socket).map_err(|e| e.to_string())?;
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let request = grant(format!("writer{i}@example.com"));
                        let t = Instant::now();
                        client.call(&request).map_err(|e| e.to_string())?;
                        mine.push(t.elapsed());
                    }
                    latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(mine);
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| "a bench client panicked".to_string())??;
        }
        Ok(())
    })?;
    let concurrent_rate = n as f64 / started.elapsed().as_secs_f64();
    if super::trace() {
        // CPU per record is steadier than a rate on a shared machine: it does not count the time
        // the daemon waited for a core.
        let cpu_concurrent = cpu_seconds(pid)?;
        eprintln!(
            "daemon CPU per record: import {:.0} µs, 64 clients {:.0} µs",
            (cpu_import - cpu_before) / n as f64 * 1e6,
            (cpu_concurrent - cpu_import) / n as f64 * 1e6
        );
    }
    daemon.stop()?;
    Ok(Ours {
        import_rate,
        rss_growth: rss_after.saturating_sub(rss_before) as f64,
        file_bytes,
        concurrent_rate,
        latencies: latencies.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// Writes every stored envelope as `hash (32) ‖ length (u32 LE) ‖ bytes`, in log order of the
/// store's hash walk; returns how many.
fn dump_envelopes(store: &consentd_storage::Store, path: &Path) -> Result<u64, String> {
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    let mut after = None;
    let mut count = 0u64;
    loop {
        let page = store
            .envelope_hashes_after(after.as_ref(), 10_000)
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last().copied() else {
            break;
        };
        for h in &page {
            let bytes = store
                .envelope(h)
                .map_err(|e| e.to_string())?
                .ok_or("a listed envelope is missing")?;
            out.write_all(h).map_err(|e| e.to_string())?;
            out.write_all(&(bytes.len() as u32).to_le_bytes())
                .map_err(|e| e.to_string())?;
            out.write_all(&bytes).map_err(|e| e.to_string())?;
            count += 1;
        }
        after = Some(last);
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(count)
}

/// How the floor authors a record's first change.
#[derive(Clone, Copy)]
pub(crate) enum Authoring {
    /// As `Draft::create` does: `Record::first_change` (the chunk written directly).
    AsDaemon,
    /// Through an Automerge document and transaction (`Record::write_new`), as the daemon did
    /// until the twenty-seventh session: the `ingest_vs_automerge_floor` row, for scale.
    Automerge,
}

/// The design floor: authors and signs every record as a new document on `threads` threads,
/// nothing else. Returns records/s and the envelopes (hash, bytes) it made.
pub(crate) fn floor(
    records: &[Record],
    threads: usize,
    authoring: Authoring,
) -> Result<(f64, Encoded), String> {
    let signing = keys::generate();
    let actor = envelope::actor_for(&signing.verifying_key(), envelope::new_incarnation());
    let per = records.len().div_ceil(threads.max(1)).max(1);
    let started = Instant::now();
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(per)
            .map(|chunk| {
                let (actor, signing) = (actor.clone(), &signing);
                s.spawn(move || author_and_sign(chunk, &actor, signing, authoring))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a floor thread panicked".to_string())?
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let rate = records.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, parts.into_iter().flatten().collect()))
}

fn author_and_sign(
    records: &[Record],
    actor: &ActorId,
    signing: &SigningKey,
    authoring: Authoring,
) -> Result<Encoded, String> {
    let mut out = Vec::with_capacity(records.len());
    let now = chrono::Utc::now().timestamp();
    for r in records {
        let id: [u8; 16] = rand::random();
        if let Authoring::AsDaemon = authoring {
            let change = r.first_change(&id, actor, now).map_err(|e| e.to_string())?;
            let hash = change.hash;
            out.push((hash, envelope::sign_authored(id, change, signing).encode()));
            continue;
        }
        let mut doc = Automerge::new().with_actor(actor.clone());
        let mut tx = doc.transaction();
        r.write_new(&mut tx, &id).map_err(|e| e.to_string())?;
        tx.commit_with(CommitOptions::default().with_time(now));
        let change = doc
            .get_last_local_change()
            .ok_or("a committed transaction has a change")?;
        let env = envelope::sign(id, &change, signing);
        out.push((change.hash().0, env.encode()));
    }
    Ok(out)
}

/// The most records/s any import could reach on these cores (`ingest_ceiling`, for scale): each
/// record costs at least the floor's work (authoring and signing, `threads / floor_rate` of a
/// core: the floor keeps every core busy) plus the CPU raw redb spends storing its envelope
/// durably (the inserting thread's CPU over the raw batch inserts: no wait for the disk
/// counted). With every core busy on nothing else, `rate ≤ threads / (floor + insert)`, so
/// row 1's ratio can reach at most `floor / (floor + insert)` whatever the number of cores.
/// Receiving the records, sealing them and indexing them come on top, so this bound is generous.
struct Ceiling {
    /// Core time a record, µs.
    floor_us: f64,
    insert_us: f64,
    rate: f64,
}

impl Ceiling {
    fn of(threads: usize, floor_rate: f64, insert_cpu: Duration, inserted: usize) -> Ceiling {
        debug_assert!(floor_rate > 0.0, "the floor authored records");
        let floor_us = threads as f64 / floor_rate * 1e6;
        let insert_us = insert_cpu.as_secs_f64() * 1e6 / inserted.max(1) as f64;
        Ceiling {
            floor_us,
            insert_us,
            rate: threads as f64 / ((floor_us + insert_us) / 1e6),
        }
    }
}

/// The calling thread's CPU time (user and system): `CLOCK_THREAD_CPUTIME_ID`.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    debug_assert_eq!(
        rc, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// What the raw redb process reported.
struct RawFootprint {
    rss_growth: f64,
    /// Allocated and apparent size ([`disk_usage`]).
    file_bytes: (u64, u64),
}

/// Runs `consentd bench-raw-redb` on the first `n` envelopes of `input`.
fn raw_child(db: &Path, input: &Path, n: usize) -> Result<RawFootprint, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("bench-raw-redb")
        .arg("--db")
        .arg(db)
        .arg("--input")
        .arg(input)
        .arg("--records")
        .arg(n.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the raw redb process: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the raw redb process failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let get = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("the raw redb process did not report {k}"))
    };
    Ok(RawFootprint {
        rss_growth: get("rss_after")?.saturating_sub(get("rss_before")?) as f64,
        file_bytes: (get("file_bytes")?, get("file_length")?),
    })
}

/// `consentd bench-raw-redb --db PATH --input FILE --records N` (hidden): the raw side of row 7.
/// Creates a plain redb file, reads its own `VmRSS`, streams the first `records` envelopes of
/// FILE (as `dump_envelopes` wrote them) into it in durable commits of 1,000, reads `VmRSS`
/// again and prints `{"rss_before", "rss_after", "file_bytes"}`.
pub fn raw_redb_child(db: &Path, input: &Path, records: usize) -> Result<(), String> {
    let raw = RawDb::create(db).map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let rss_before = vm_rss(pid)?;
    let mut reader = BufReader::new(std::fs::File::open(input).map_err(|e| e.to_string())?);
    let mut batch: Vec<([u8; 32], Vec<u8>)> = Vec::with_capacity(RAW_BATCH);
    let mut read = 0usize;
    while read < records && !reader.fill_buf().map_err(|e| e.to_string())?.is_empty() {
        let mut hash = [0u8; 32];
        let mut len = [0u8; 4];
        reader.read_exact(&mut hash).map_err(|e| e.to_string())?;
        reader.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        reader.read_exact(&mut bytes).map_err(|e| e.to_string())?;
        batch.push((hash, bytes));
        read += 1;
        if batch.len() == RAW_BATCH {
            raw.insert_durable(&batch).map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        raw.insert_durable(&batch).map_err(|e| e.to_string())?;
    }
    drop(batch);
    let rss_after = vm_rss(pid)?;
    let (file_bytes, file_length) = disk_usage(db)?;
    println!(
        "{}",
        serde_json::json!({
            "rss_before": rss_before,
            "rss_after": rss_after,
            "file_bytes": file_bytes,
            "file_length": file_length,
            "records": read,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_adds_the_insert_cpu_to_the_floor_core_time() {
        // Two threads authoring 50,000 records/s: 40 µs of a core a record; raw redb spent one
        // second of CPU on 100,000 inserts: 10 µs. At most 2 / 50 µs = 40,000 records/s, 0.8 of
        // the floor's rate.
        let c = Ceiling::of(2, 50_000.0, Duration::from_secs(1), 100_000);
        assert!((c.floor_us - 40.0).abs() < 1e-9, "{}", c.floor_us);
        assert!((c.insert_us - 10.0).abs() < 1e-9, "{}", c.insert_us);
        assert!((c.rate - 40_000.0).abs() < 1e-6, "{}", c.rate);
        // More cores raise the floor's rate and the ceiling alike: the bound on row 1's ratio,
        // floor / (floor + insert), does not move.
        let c4 = Ceiling::of(4, 100_000.0, Duration::from_secs(1), 100_000);
        assert!((c4.rate / 100_000.0 - 0.8).abs() < 1e-9, "{}", c4.rate);
    }

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work_and_not_its_sleep() {
        let before = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu() - before;
        assert!(
            slept < Duration::from_millis(25),
            "sleeping counted {slept:?}"
        );
        // Spin until the clock has counted 10 ms of work: on a loaded machine that takes longer
        // than 10 ms of wall time, never forever (a clock that does not advance fails here).
        let (mut x, started) = (0u64, Instant::now());
        while thread_cpu() - before - slept < Duration::from_millis(10) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a minute of spinning counted {:?}",
                thread_cpu() - before - slept
            );
            for _ in 0..1_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }
}
