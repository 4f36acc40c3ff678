//! Crash suite (issue 8, item 1; docs/reliability.md "Crash suite").
//!
//! 64 concurrent writers drive one office over its control socket (consent grants and
//! withdrawals, request opens; each answered only after its durable commit) while a checkpointer
//! signs checkpoints; the daemon is killed with SIGKILL at a random moment, restarted, and checked,
//! cycle after cycle:
//!
//! - the database opens, and the daemon starts (it refuses to if its log no longer reproduces the
//!   checkpoint it stored);
//! - every acknowledged write is present: each acknowledged consent event (by its unique `at`) in
//!   `consent history`, each acknowledged request in `request list`; and nothing is present that
//!   was never sent (a write in flight at the kill may land or not, and is then settled: kept
//!   forever if it landed, never seen again if not); `status` counts exactly the records known;
//! - the log is consistent: every checkpoint signed before the crash is reproduced by the log the
//!   restarted daemon exports (its root at that size), a consistency proof links each of them to
//!   the new checkpoint, and `consentctl audit verify NEW --previous OLD` passes.
//!
//! One command: `cargo test --test crash_keeps_acknowledged_writes -- --nocapture`.
//! `CONSENTD_CRASH_SEED` replays a seed (the kill moments and the writers' choices; thread
//! interleaving is the machine's), `CONSENTD_CRASH_CYCLES` (default 20) and
//! `CONSENTD_CRASH_WRITERS` (default 64) scale it.
mod common;
use chrono::SecondsFormat;
use common::*;
use consentd::protocol::{self, Client, ClientError, Request};
use consentd_sync::merkle;
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PURPOSE: &str = "marketing";
/// 2025-01-01T00:00:00Z: every event gets its own second after this, so events are told apart.
const BASE: i64 = 1_735_689_600;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn at(n: u64) -> String {
    chrono::DateTime::from_timestamp(BASE + n as i64, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn normal_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("{t:?}: {e}"))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Clone, Debug)]
enum Op {
    Grant { subject: String, at: String },
    Withdraw { subject: String, at: String },
    Open { subject: String, at: String },
}

impl Op {
    fn request(&self) -> Request {
        match self {
            Op::Grant { subject, at } => Request::ConsentGrant(protocol::ConsentGrant {
                subject: subject.clone(),
                purpose: PURPOSE.into(),
                basis: "consent".into(),
                service: Some("email".into()),
                evidence: Some("web form v3".into()),
                notice: None,
                under_18: false,
                parental_consent: None,
                person: None,
                role: None,
                at: Some(at.clone()),
            }),
            Op::Withdraw { subject, at } => Request::ConsentWithdraw(protocol::ConsentWithdraw {
                subject: subject.clone(),
                purpose: PURPOSE.into(),
                at: Some(at.clone()),
            }),
            Op::Open { subject, at } => Request::RequestOpen(protocol::RequestOpen {
                subject: subject.clone(),
                kind: "access".into(),
                received: Some(at.clone()),
                jurisdiction: None,
            }),
        }
    }
}

/// What one writer saw in one cycle.
#[derive(Default)]
struct WriterRun {
    acked: Vec<(Op, String)>,
    /// The write in flight when the daemon died (sent, never answered).
    in_flight: Option<Op>,
    /// Refusals: never expected (every request is valid).
    refused: Vec<String>,
}

/// One writer: its own subjects (kept across cycles), sequential writes over one connection until
/// the connection dies.
fn writer(
    socket: PathBuf,
    mut subjects: Vec<String>,
    name: String,
    seed: u64,
    clock: Arc<AtomicU64>,
) -> (Vec<String>, WriterRun) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut run = WriterRun::default();
    let Ok(mut client) = Client::connect(&socket) else {
        return (subjects, run);
    };
    loop {
        let at = at(clock.fetch_add(1, Ordering::SeqCst));
        let roll = rng.gen_range(0..100);
        let op = if subjects.is_empty() || roll < 30 {
            let subject = format!("{name}-{}@crash.test", subjects.len());
            subjects.push(subject.clone());
            Op::Grant { subject, at }
        } else {
            let subject = subjects[rng.gen_range(0..subjects.len())].clone();
            match roll {
                30..=54 => Op::Grant { subject, at },
                55..=79 => Op::Withdraw { subject, at },
                _ => Op::Open { subject, at },
            }
        };
        match client.call(&op.request()) {
            Ok(v) => {
                let id = v["id"].as_str().expect("writes answer an id").to_string();
                run.acked.push((op, id));
            }
            Err(ClientError::Refused(e)) => {
                run.refused.push(e);
            }
            Err(_) => {
                // The daemon died with this write in flight.
                run.in_flight = Some(op);
                return (subjects, run);
            }
        }
    }
}

/// An erasable record and what became of it.
#[derive(Clone, Debug)]
enum Erasable {
    /// Granted (acknowledged): `at`, record id.
    Live(String, String),
    /// Erased (the erasure's completion acknowledged): record id.
    Erased(String),
    /// The grant was in flight at the kill.
    MaybeLive(String),
    /// The erasure's completion was in flight at the kill: `at`, record id.
    MaybeErased(String, String),
}

/// What the eraser saw in one cycle.
#[derive(Default)]
struct EraserRun {
    subjects: Vec<(String, Erasable)>,
    /// Acknowledged erasure requests.
    requests: Vec<String>,
    /// An erasure request open in flight at the kill.
    open_in_flight: bool,
    erasures: u64,
}

/// One more writer: erasable records (`support` on legitimate interest), each erased by an
/// erasure request completed at once. Every erasure destroys a subject key and rotates the
/// key-encryption key, so kills land in deletions and KEK rotations too.
fn eraser(socket: PathBuf, cycle: u64, clock: Arc<AtomicU64>) -> EraserRun {
    let mut run = EraserRun::default();
    let Ok(mut client) = Client::connect(&socket) else {
        return run;
    };
    for k in 0.. {
        let subject = format!("x{cycle}-{k}@crash.test");
        let t = at(clock.fetch_add(1, Ordering::SeqCst));
        let grant = Request::ConsentGrant(protocol::ConsentGrant {
            subject: subject.clone(),
            purpose: "support".into(),
            basis: "legitimate_interest".into(),
            service: None,
            evidence: Some("support ticket".into()),
            notice: None,
            under_18: false,
            parental_consent: None,
            person: None,
            role: None,
            at: Some(t.clone()),
        });
        let id = match client.call(&grant) {
            Ok(v) => v["id"].as_str().unwrap().to_string(),
            Err(ClientError::Refused(e)) => panic!("erasable grant refused: {e}"),
            Err(_) => {
                run.subjects.push((subject, Erasable::MaybeLive(t)));
                return run;
            }
        };
        run.subjects
            .push((subject.clone(), Erasable::Live(t.clone(), id.clone())));
        let open = Request::RequestOpen(protocol::RequestOpen {
            subject: subject.clone(),
            kind: "erasure".into(),
            received: Some(at(clock.fetch_add(1, Ordering::SeqCst))),
            jurisdiction: None,
        });
        let request = match client.call(&open) {
            Ok(v) => v["id"].as_str().unwrap().to_string(),
            Err(ClientError::Refused(e)) => panic!("erasure request refused: {e}"),
            Err(_) => {
                run.open_in_flight = true;
                return run;
            }
        };
        run.requests.push(request.clone());
        let close = Request::RequestClose(protocol::RequestClose {
            id: request,
            outcome: "completed".into(),
            note: None,
            at: None,
        });
        match client.call(&close) {
            Ok(v) => {
                assert_eq!(
                    v["erasure"]["deleted_records"],
                    serde_json::json!([id.clone()]),
                    "the erasure deletes the subject's one erasable record: {v}"
                );
                run.subjects.last_mut().unwrap().1 = Erasable::Erased(id);
                run.erasures += 1;
            }
            Err(ClientError::Refused(e)) => panic!("erasure refused: {e}"),
            Err(_) => {
                run.subjects.last_mut().unwrap().1 = Erasable::MaybeErased(t, id);
                return run;
            }
        }
    }
    run
}

/// Signs checkpoints until the daemon dies; returns (size, root) of each.
fn checkpointer(socket: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> Vec<(u64, String)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = Vec::new();
    let Ok(mut client) = Client::connect(&socket) else {
        return seen;
    };
    while !stop.load(Ordering::SeqCst) {
        match client.call(&Request::AuditCheckpoint(protocol::Empty {})) {
            Ok(v) => seen.push((
                v["size"].as_u64().unwrap(),
                v["root"].as_str().unwrap().to_string(),
            )),
            Err(ClientError::Refused(e)) => panic!("checkpoint refused: {e}"),
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
    }
    seen
}

/// What the office must hold.
#[derive(Default)]
struct Model {
    /// Subject → acknowledged consent events: `at` → action.
    events: BTreeMap<String, BTreeMap<String, &'static str>>,
    /// Subject → events sent but unanswered at the last kill.
    in_flight_events: BTreeMap<String, BTreeMap<String, &'static str>>,
    consent_records: BTreeSet<String>,
    requests: BTreeSet<String>,
    in_flight_opens: usize,
    /// Subjects written since the last full check.
    touched: BTreeSet<String>,
    erasable: BTreeMap<String, Erasable>,
    erasable_touched: BTreeSet<String>,
}

#[derive(Default)]
struct Figures {
    acked: u64,
    in_flight: u64,
    in_flight_landed: u64,
    kills: u64,
    checkpoints_before_kills: u64,
    events_checked: u64,
    requests_checked: u64,
    writes_per_cycle: Vec<u64>,
    erasures: u64,
    erasures_checked: u64,
    /// Erasures whose completion was in flight at a kill, and how many of them had landed.
    erasures_in_flight: u64,
    erasures_landed: u64,
}

fn action(op: &Op) -> &'static str {
    match op {
        Op::Grant { .. } => "grant",
        Op::Withdraw { .. } => "withdraw",
        Op::Open { .. } => "open",
    }
}

impl Model {
    fn absorb(&mut self, run: WriterRun, figures: &mut Figures) {
        assert!(
            run.refused.is_empty(),
            "valid writes were refused: {:?}",
            run.refused
        );
        for (op, id) in run.acked {
            figures.acked += 1;
            match &op {
                Op::Grant { subject, at } | Op::Withdraw { subject, at } => {
                    self.events
                        .entry(subject.clone())
                        .or_default()
                        .insert(at.clone(), action(&op));
                    self.consent_records.insert(id);
                    self.touched.insert(subject.clone());
                }
                Op::Open { .. } => {
                    self.requests.insert(id);
                }
            }
        }
        if let Some(op) = run.in_flight {
            figures.in_flight += 1;
            match &op {
                Op::Grant { subject, at } | Op::Withdraw { subject, at } => {
                    self.in_flight_events
                        .entry(subject.clone())
                        .or_default()
                        .insert(at.clone(), action(&op));
                    self.touched.insert(subject.clone());
                }
                Op::Open { .. } => self.in_flight_opens += 1,
            }
        }
    }

    fn absorb_eraser(&mut self, run: EraserRun, figures: &mut Figures) {
        figures.erasures += run.erasures;
        figures.acked += run.requests.len() as u64;
        self.requests.extend(run.requests);
        if run.open_in_flight {
            figures.in_flight += 1;
            self.in_flight_opens += 1;
        }
        for (subject, state) in run.subjects {
            match &state {
                Erasable::Live(_, id) => {
                    figures.acked += 1;
                    self.consent_records.insert(id.clone());
                }
                Erasable::Erased(id) => {
                    figures.acked += 2;
                    self.consent_records.remove(id);
                }
                Erasable::MaybeLive(_) => figures.in_flight += 1,
                Erasable::MaybeErased(_, id) => {
                    // Held until the restart shows whether the erasure landed.
                    figures.erasures_in_flight += 1;
                    self.consent_records.insert(id.clone());
                    figures.acked += 1;
                    figures.in_flight += 1;
                }
            }
            self.erasable_touched.insert(subject.clone());
            self.erasable.insert(subject, state);
        }
    }

    /// Erasable subjects: live ones present, erased ones gone, in-flight ones settled.
    fn check_erasable(&mut self, client: &mut Client, all: bool, figures: &mut Figures) {
        let subjects: Vec<String> = if all {
            self.erasable.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.erasable_touched)
                .into_iter()
                .collect()
        };
        for subject in subjects {
            let history = client
                .call(&Request::ConsentHistory(protocol::SubjectArg {
                    subject: subject.clone(),
                }))
                .unwrap();
            let rows: Vec<(String, String)> = history
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        normal_time(r["at"].as_str().unwrap()),
                        r["id"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let state = self.erasable[&subject].clone();
            let next = match state {
                Erasable::Live(t, id) => {
                    assert_eq!(
                        rows,
                        vec![(t.clone(), id.clone())],
                        "LOST: the acknowledged erasable grant of {subject}"
                    );
                    Erasable::Live(t, id)
                }
                Erasable::Erased(id) => {
                    assert!(
                        rows.is_empty(),
                        "RESURRECTED: {subject}'s record {id} was erased (acknowledged) and is back: {history}"
                    );
                    Erasable::Erased(id)
                }
                Erasable::MaybeLive(t) => match rows.as_slice() {
                    [] => {
                        self.erasable.remove(&subject);
                        continue;
                    }
                    [(rt, id)] if *rt == t => {
                        figures.in_flight_landed += 1;
                        self.consent_records.insert(id.clone());
                        Erasable::Live(t, id.clone())
                    }
                    _ => panic!("{subject}: events nobody sent: {history}"),
                },
                Erasable::MaybeErased(t, id) => match rows.as_slice() {
                    [] => {
                        figures.in_flight_landed += 1;
                        figures.erasures_landed += 1;
                        self.consent_records.remove(&id);
                        Erasable::Erased(id)
                    }
                    [(rt, rid)] if *rt == t && *rid == id => Erasable::Live(t, id),
                    _ => panic!("{subject}: events nobody sent: {history}"),
                },
            };
            figures.erasures_checked += 1;
            self.erasable.insert(subject, next);
        }
    }

    /// Checks the restarted office against the model and settles the writes that were in
    /// flight. `all`: every subject, not only those written since the last check.
    fn check(&mut self, socket: &Path, all: bool, figures: &mut Figures) {
        let mut client = Client::connect(socket).unwrap();
        let subjects: Vec<String> = if all {
            self.events
                .keys()
                .chain(self.in_flight_events.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            std::mem::take(&mut self.touched).into_iter().collect()
        };
        for subject in subjects {
            let history = client
                .call(&Request::ConsentHistory(protocol::SubjectArg {
                    subject: subject.clone(),
                }))
                .unwrap();
            let mut got = BTreeMap::new();
            for row in history.as_array().unwrap() {
                let t = normal_time(row["at"].as_str().unwrap());
                let a = row["action"].as_str().unwrap().to_string();
                assert!(
                    got.insert(t.clone(), a).is_none(),
                    "{subject}: event at {t} appears twice: {history}"
                );
                self.consent_records
                    .insert(row["id"].as_str().unwrap().to_string());
            }
            let acked = self.events.entry(subject.clone()).or_default();
            let maybe = self.in_flight_events.remove(&subject).unwrap_or_default();
            for (t, a) in acked.iter() {
                assert_eq!(
                    got.get(t).map(String::as_str),
                    Some(*a),
                    "LOST: the acknowledged {a} of {subject} at {t} is missing after the crash: {history}"
                );
                figures.events_checked += 1;
            }
            for (t, a) in &got {
                if acked.contains_key(t) {
                    continue;
                }
                match maybe.get(t) {
                    // In flight at the kill and durable: from now on it must stay.
                    Some(m) if *m == a.as_str() => {
                        figures.in_flight_landed += 1;
                        acked.insert(t.clone(), m);
                    }
                    _ => panic!("{subject}: an event nobody acknowledged or sent: {a} at {t}"),
                }
            }
        }
        self.check_erasable(&mut client, all, figures);
        let list = client
            .call(&Request::RequestList(protocol::RequestList::default()))
            .unwrap();
        let listed: BTreeSet<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        for id in &self.requests {
            assert!(
                listed.contains(id),
                "LOST: acknowledged request {id} missing"
            );
            figures.requests_checked += 1;
        }
        let extra: Vec<&String> = listed.difference(&self.requests).collect();
        assert!(
            extra.len() <= self.in_flight_opens,
            "{} requests nobody acknowledged, but only {} were in flight",
            extra.len(),
            self.in_flight_opens
        );
        figures.in_flight_landed += extra.len() as u64;
        let extra: Vec<String> = extra.into_iter().cloned().collect();
        self.requests.extend(extra);
        self.in_flight_opens = 0;
        if all {
            assert!(self.in_flight_events.is_empty());
        }
        let status = client.call(&Request::Status(protocol::Empty {})).unwrap();
        let known = (self.consent_records.len() + self.requests.len()) as u64;
        if status["records"].as_u64().unwrap() != known {
            let docs = held_docs(socket);
            let model: BTreeSet<&String> =
                self.consent_records.iter().chain(&self.requests).collect();
            let extra: Vec<_> = docs.iter().filter(|d| !model.contains(d)).collect();
            let missing: Vec<_> = model.iter().filter(|d| !docs.contains(**d)).collect();
            let list = client
                .call(&Request::RequestList(protocol::RequestList::default()))
                .unwrap();
            let rows: Vec<&serde_json::Value> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| extra.iter().any(|e| r["id"] == e.as_str()))
                .collect();
            let erasable: Vec<_> = self
                .erasable
                .iter()
                .filter(|(_, st)| {
                    let id = match st {
                        Erasable::Live(_, id)
                        | Erasable::Erased(id)
                        | Erasable::MaybeErased(_, id) => id,
                        Erasable::MaybeLive(_) => return false,
                    };
                    extra.contains(&id)
                })
                .collect();
            panic!(
                "status counts {} records, the acknowledged writes make {known}: held but unknown {extra:?} (as requests: {rows:?}; erasable: {erasable:?}), known but not held {missing:?}: {status}",
                status["records"]
            );
        }
    }
}

/// Records an office holds (envelopes, minus tombstoned), from an export: for diagnostics.
fn held_docs(socket: &Path) -> BTreeSet<String> {
    let out = socket.with_file_name("held.jsonl");
    let o = std::process::Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(socket)
        .args(["audit", "export", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (mut docs, mut gone) = (BTreeSet::new(), BTreeSet::new());
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let data = || consentd_sync::b64::decode(v["data"].as_str().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "envelope" => {
                let e = consentd_sync::envelope::Envelope::decode(&data()).unwrap();
                docs.insert(hex::encode(e.doc_id));
            }
            "tombstone" => {
                let t = consentd_sync::tombstone::Tombstone::decode(&data()).unwrap();
                gone.insert(hex::encode(t.doc_id));
            }
            _ => {}
        }
    }
    docs.difference(&gone).cloned().collect()
}

/// The log and checkpoint of an exported bundle, read without verifying the rest (cheap).
fn bundle_log(bundle: &Path) -> (Vec<merkle::Hash>, Checkpoint) {
    let mut hashes = Vec::new();
    let mut checkpoint = None;
    for line in std::fs::read_to_string(bundle).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["type"].as_str().unwrap() {
            "leaves" => {
                assert_eq!(v["first"].as_u64().unwrap(), hashes.len() as u64);
                for leaf in v["leaves"].as_array().unwrap() {
                    let bytes = hex::decode(leaf.as_str().unwrap()).unwrap();
                    hashes.push(LogLeaf::decode(&bytes).unwrap().merkle_hash());
                }
            }
            "checkpoint" => {
                let note = v["note"].as_str().unwrap();
                checkpoint = Some(tlog::parse_body(tlog::parse_note(note).unwrap().text).unwrap());
            }
            _ => {}
        }
    }
    (hashes, checkpoint.expect("the bundle has a checkpoint"))
}

/// After a restart: a new checkpoint, an export, and the log checked against every checkpoint
/// signed before the crash (its root reproduced; a consistency proof to the new checkpoint).
/// With `full_against`, also `consentctl audit verify NEW --previous OLD` (every signature, the
/// whole log, the consistency of the two bundles). Returns the export's path.
fn check_log(
    net: &Net,
    cycle: u64,
    before: &[(u64, String)],
    full_against: Option<&Path>,
) -> PathBuf {
    let sock = net.socket("de");
    let latest = ok(&sock, &["audit", "checkpoint"]);
    let latest_size = latest["size"].as_u64().unwrap();
    for (size, _) in before {
        assert!(
            *size <= latest_size,
            "the log shrank: a checkpoint of {size} leaves was signed before the crash, the restarted office signs {latest_size}"
        );
    }
    let bundle = common::audit::export(net, "de", &format!("crash-{cycle}.jsonl"));
    let (hashes, new) = bundle_log(&bundle);
    assert_eq!(
        hashes.len() as u64,
        new.size,
        "the bundle holds the whole log"
    );
    assert_eq!(
        merkle::root(&hashes),
        new.root,
        "the log reproduces the new checkpoint"
    );
    for (size, root) in before {
        assert_eq!(
            hex::encode(merkle::root(&hashes[..*size as usize])),
            *root,
            "the log no longer reproduces the checkpoint of size {size} signed before the crash"
        );
        let proof = merkle::consistency_proof(&hashes, *size).unwrap();
        let old_root: merkle::Hash = hex::decode(root).unwrap().try_into().unwrap();
        assert!(
            merkle::verify_consistency(*size, new.size, &old_root, &new.root, &proof),
            "no consistency proof from the checkpoint of size {size} to {}",
            new.size
        );
    }
    if let Some(prev) = full_against {
        let out = std::process::Command::new(CONSENTCTL)
            .args(["--json", "audit", "verify"])
            .arg(&bundle)
            .arg("--previous")
            .arg(prev)
            .arg("--root-pub")
            .arg(net.path().join("root.pub"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit verify --previous after restart {cycle}: {}",
            text(&out.stderr)
        );
    }
    bundle
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let seed = env_u64("CONSENTD_CRASH_SEED", rand::random::<u32>() as u64);
    let cycles = env_u64("CONSENTD_CRASH_CYCLES", 20);
    let writers = env_u64("CONSENTD_CRASH_WRITERS", 64) as usize;
    // `audit verify NEW --previous FIRST` after every restart (else after the last only).
    let full_verify = env_u64("CONSENTD_CRASH_FULL_VERIFY", 0) == 1;
    eprintln!("crash suite: seed={seed} cycles={cycles} writers={writers} (replay: CONSENTD_CRASH_SEED={seed})");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let net = Net::init("de");
    let sock = net.socket("de");
    let clock = Arc::new(AtomicU64::new(0));
    let mut subjects: Vec<Vec<String>> = vec![Vec::new(); writers];
    let mut model = Model::default();
    let mut figures = Figures::default();
    let mut before: Vec<(u64, String)> = Vec::new();
    // The bundle exported after the first start: every later log must extend it.
    let mut first_bundle: Option<PathBuf> = None;
    let mut kill_delays = Vec::new();

    for cycle in 0..cycles {
        let daemon = net.start("de");
        if cycle > 0 {
            model.check(&sock, false, &mut figures);
        }
        let full = if full_verify {
            first_bundle.as_deref()
        } else {
            None
        };
        let bundle = check_log(&net, cycle, &before, full);
        if first_bundle.is_none() {
            first_bundle = Some(bundle);
        } else {
            std::fs::remove_file(bundle).unwrap();
        }
        before.clear();

        // Mostly mid-stream; sometimes right after start-up.
        let delay = if rng.gen_range(0..5) == 0 {
            rng.gen_range(0..30)
        } else {
            rng.gen_range(80..900)
        };
        kill_delays.push(delay);
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (sock, clock) = (sock.clone(), clock.clone());
                let mine = std::mem::take(&mut subjects[w]);
                let wseed = rng.gen();
                std::thread::spawn(move || writer(sock, mine, format!("w{w}"), wseed, clock))
            })
            .collect();
        let er = {
            let (sock, clock) = (sock.clone(), clock.clone());
            std::thread::spawn(move || eraser(sock, cycle, clock))
        };
        let cp = {
            let (sock, stop, cseed) = (sock.clone(), stop.clone(), rng.gen());
            std::thread::spawn(move || checkpointer(sock, cseed, stop))
        };
        std::thread::sleep(Duration::from_millis(delay));
        daemon.kill9();
        figures.kills += 1;
        stop.store(true, Ordering::SeqCst);
        let acked_before = figures.acked;
        for (w, h) in handles.into_iter().enumerate() {
            let (mine, run) = h.join().unwrap();
            subjects[w] = mine;
            model.absorb(run, &mut figures);
        }
        model.absorb_eraser(er.join().unwrap(), &mut figures);
        figures.writes_per_cycle.push(figures.acked - acked_before);
        before = cp.join().unwrap();
        figures.checkpoints_before_kills += before.len() as u64;
    }

    // The last restart: everything, then a clean stop and one more open.
    let daemon = net.start("de");
    model.check(&sock, false, &mut figures);
    check_log(&net, cycles, &before, first_bundle.as_deref());
    model.check(&sock, true, &mut figures);
    assert!(daemon.stop(), "clean stop after the crashes");
    let daemon = net.start("de");
    model.check(&sock, true, &mut figures);
    assert!(daemon.stop());

    let w = &figures.writes_per_cycle;
    eprintln!(
        "crash suite seed={seed} cycles={cycles} writers={writers}: kills={} (SIGKILL after {:?} ms), \
         restarts={} all opened; acknowledged writes={} (per cycle {:?}), in flight at a kill={} \
         (landed {}, settled); {} erasures acknowledged (each destroys a key and rotates the KEK) and {} in flight at a kill ({} had landed), \
         {} erasable-record checks (erased stay gone, live stay readable); checked {} consent events and {} requests per restart in total, all present, \
         nothing unsent present, record counts exact; checkpoints signed before kills={} all reproduced \
         with consistency proofs to the next; audit verify --previous ok ({}); \
         wall time {:.1}s",
        figures.kills,
        kill_delays,
        cycles + 1,
        figures.acked,
        w,
        figures.in_flight,
        figures.in_flight_landed,
        figures.erasures,
        figures.erasures_in_flight,
        figures.erasures_landed,
        figures.erasures_checked,
        figures.events_checked,
        figures.requests_checked,
        figures.checkpoints_before_kills,
        if full_verify { "after every restart" } else { "after the last restart" },
        started.elapsed().as_secs_f64()
    );
}
