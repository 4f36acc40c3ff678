//! What a durable group commit costs, by where a record's random-key entries land.
//!
//! `cargo run --release -p consentd-storage --example commit_cost -- [RECORDS] [scattered|clustered|ordered|seconds|shuffled] [PER_COMMIT]`
//!
//! Fills a store with RECORDS (default 100,000) consent-like records, then times durable commits
//! of PER_COMMIT more each (default 20, as 64 concurrent writers group them; 6,000 records in
//! all): bytes written to the disk (`/proc/self/io`), process CPU and wall time per commit. Each
//! record has one 700-byte envelope, a 200-byte projection, two index keys (subject and consent
//! token), a new key with its owner and an audit log leaf, like a consent grant of a new subject.
//! - `scattered`: the subject token, the consent token and the key owner are unrelated hashes
//!   (token layout 1), so they land in three leaves of `index`.
//! - `clustered` (the default): they share their first 16 bytes (token layout 2), so they land
//!   side by side.
//! - `ordered`: `clustered`, and each envelope hash starts with the record's number, so
//!   `envelope_at` appends as it would keyed by time. Real hashes are random; this shows what
//!   that table's random inserts cost (BENCHMARKS.md, nineteenth session).
//! - `seconds`: `clustered`, and each envelope hash starts with the second it was written in, at
//!   5,000 records a second: `envelope_at` keyed by an item's timestamp (whole seconds) and hash,
//!   at `writes_64_clients`' rate (BENCHMARKS.md, twentieth session).
//! - `shuffled`: `clustered`, but the timed records (made in id order) are committed in a random
//!   order: what a cold sync's receiver does with records that were imported within one
//!   second. A sync fetches them by item, (second, hash), so within the second the records come
//!   in hash order, at random in their id-keyed tables (`changes`, `projections`, `doc_meta`,
//!   `kinds`). Compare with `clustered` at the same PER_COMMIT (BENCHMARKS.md, twenty-fourth
//!   session).
//!
//! Since storage format 6 the store journals new `envelope_at` entries and merges them in bulk
//! (`src/journal.rs`), so `ordered` and `seconds` now differ from `clustered` only in how the
//! merges fall: 341 KiB per 20-record commit at 100,000 records for `clustered`, against 451
//! KiB before the journal and 319 KiB for `ordered` (BENCHMARKS.md, twenty-first session). Their
//! earlier figures were taken without the journal. Since format 7 new `index` entries are
//! journalled too (`src/index_journal.rs`), so `scattered` and `clustered` write the same:
//! 245 KiB per 20-record commit at 100,000 records, 222 KiB for `ordered` (twenty-second
//! session).
//!
//! The figures are in storage/LAYOUT.md ("Key owners share `index`") and BENCHMARKS.md.

use std::time::Instant;

use consentd_storage::{LogId, RecordUpdate, Store, WriteBatch};

/// Records the timed commits write in all.
const TIMED_RECORDS: usize = 6_000;
const FILL_PER_COMMIT: usize = 1_000;
/// Records per second of the `seconds` layout: about `writes_64_clients`' rate.
const SECONDS_RATE: u64 = 5_000;

/// xorshift64: reproducible random hashes without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn hash32(state: &mut u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    for c in h.chunks_mut(8) {
        c.copy_from_slice(&next(state).to_le_bytes());
    }
    h
}

/// What an envelope hash's first 8 bytes are.
#[derive(Clone, Copy)]
enum HashPrefix {
    /// Random, as real change hashes are.
    Random,
    /// The record's number (`ordered`).
    Record,
    /// The second the record was written in, at this many records a second (`seconds`).
    Second(u64),
}

struct Records {
    state: u64,
    made: u64,
    clustered: bool,
    prefix: HashPrefix,
}

impl Records {
    fn envelope_hash(&mut self) -> [u8; 32] {
        let mut h = hash32(&mut self.state);
        let prefix = match self.prefix {
            HashPrefix::Random => return h,
            HashPrefix::Record => self.made,
            HashPrefix::Second(rate) => self.made / rate,
        };
        h[..8].copy_from_slice(&prefix.to_be_bytes());
        h
    }

    fn batch(&mut self, count: usize) -> WriteBatch {
        const LOG: LogId = [7; 16];
        // Made here, as a daemon's own writes are; `CONSENTD_COMMIT_COST_LOOKUP=1` has the writer
        // look each envelope up first, as for envelopes from a peer.
        let mut b = WriteBatch {
            envelopes_new: std::env::var_os("CONSENTD_COMMIT_COST_LOOKUP").is_none(),
            ..WriteBatch::default()
        };
        for _ in 0..count {
            self.made += 1;
            // Time-ordered ids, as consentd makes them.
            let mut doc = [0u8; 16];
            doc[..8].copy_from_slice(&self.made.to_be_bytes());
            doc[8..].copy_from_slice(&next(&mut self.state).to_le_bytes());
            let subject = hash32(&mut self.state);
            let mut consent = hash32(&mut self.state);
            let mut owner = hash32(&mut self.state);
            if self.clustered {
                consent[..16].copy_from_slice(&subject[..16]);
                owner[..16].copy_from_slice(&subject[..16]);
            }
            b.updates.push(RecordUpdate {
                doc_id: doc,
                kind: 1,
                envelopes: vec![(self.envelope_hash(), vec![0xab; 700])],
                projection: vec![0x11; 200],
                index_keys: vec![subject, consent],
                due_day: None,
            });
            b.keys.push((owner, doc, vec![0x22; 60]));
            b.log.push((LOG, vec![0x33; 64]));
        }
        b
    }
}

/// `all`'s records (one key and one log leaf each, as [`Records::batch`] makes them) in a random
/// order, `per_commit` to a batch (Fisher-Yates with [`next`]).
fn shuffled(all: WriteBatch, per_commit: usize, state: &mut u64) -> Vec<WriteBatch> {
    debug_assert!(
        all.updates.len() == all.keys.len() && all.keys.len() == all.log.len(),
        "one key and one log leaf per record"
    );
    let mut records: Vec<_> = all.updates.into_iter().zip(all.keys).zip(all.log).collect();
    for i in (1..records.len()).rev() {
        let j = usize::try_from(next(state) % (i as u64 + 1)).expect("an index");
        records.swap(i, j);
    }
    records
        .chunks(per_commit)
        .map(|part| {
            let mut b = WriteBatch::default();
            for ((update, key), leaf) in part.iter().cloned() {
                b.updates.push(update);
                b.keys.push(key);
                b.log.push(leaf);
            }
            b
        })
        .collect()
}

fn disk_bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/self/io")
}

fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .expect("a stat line")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 1000.0 / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(100_000, |a| a.parse().expect("RECORDS"));
    let layout = args.next().unwrap_or_else(|| "clustered".into());
    let (clustered, prefix) = match layout.as_str() {
        "clustered" => (true, HashPrefix::Random),
        "scattered" => (false, HashPrefix::Random),
        "ordered" => (true, HashPrefix::Record),
        "seconds" => (true, HashPrefix::Second(SECONDS_RATE)),
        "shuffled" => (true, HashPrefix::Random),
        other => {
            panic!("layout {other:?}: expected scattered, clustered, ordered, seconds or shuffled")
        }
    };
    let per_commit: usize = args.next().map_or(20, |a| a.parse().expect("PER_COMMIT"));
    assert!(
        (1..=TIMED_RECORDS).contains(&per_commit),
        "PER_COMMIT: 1 to {TIMED_RECORDS}"
    );
    let commits = TIMED_RECORDS / per_commit;
    let dir = tempfile::tempdir_in("/var/tmp").expect("a temporary directory");
    let store = Store::open(&dir.path().join("commit_cost.redb")).expect("a store");
    let mut gen = Records {
        state: 0x9e37_79b9_7f4a_7c15,
        made: 0,
        clustered,
        prefix,
    };
    while gen.made < records {
        store
            .commit_blocking(gen.batch(FILL_PER_COMMIT))
            .expect("fill");
    }
    let (written, cpu, started) = (disk_bytes_written(), cpu_ms(), Instant::now());
    if layout == "shuffled" {
        for batch in shuffled(gen.batch(TIMED_RECORDS), per_commit, &mut gen.state) {
            store.commit_blocking(batch).expect("commit");
        }
    } else {
        for _ in 0..commits {
            store
                .commit_blocking(gen.batch(per_commit))
                .expect("commit");
        }
    }
    let per = |x: f64| x / commits as f64;
    println!(
        "{records} records, {layout}: per {per_commit}-record commit {:.0} KiB written, \
         {:.2} ms CPU, {:.2} ms wall",
        per((disk_bytes_written() - written) as f64 / 1024.0),
        per(cpu_ms() - cpu),
        per(started.elapsed().as_secs_f64() * 1000.0),
    );
}
