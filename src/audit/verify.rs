//! `consentctl audit verify`: checks a bundle offline, trusting only the root public key.
//!
//! Every check has a stable name (the `check` of each failure in the JSON report; the list and
//! what each means is in docs/audit-bundle.md):
//!
//! | check                 | fails when                                                          |
//! |-----------------------|---------------------------------------------------------------------|
//! | `bundle_format`       | a line is not valid JSON of a known type, sections are out of order, the header or end line is missing or wrong, the file is truncated, the exporter's log is not first, an office's leaves or a record's envelopes are not together |
//! | `roster_signature`    | the roster does not verify against the root key (nothing else is checked then) |
//! | `header_signature`    | the header (exporter, export time) and the bundle's checkpoints are not signed by the exporter (version 2 on) |
//! | `checkpoint_signature`| a checkpoint is malformed, not for a roster office, or its signature fails |
//! | `log_root`            | an office's leaves do not reproduce its checkpoint (size or root): a reordered, shortened or altered log |
//! | `envelope_encoding`   | an envelope is not valid base64 / `CDE1` / a canonical Automerge change |
//! | `envelope_signer`     | an envelope's signer is not a roster office                         |
//! | `envelope_actor`      | an envelope's change was authored under an actor not bound to its signer |
//! | `envelope_signature`  | an envelope's signature over (doc, recomputed change hash) fails    |
//! | `envelope_duplicate`  | the same change appears twice                                       |
//! | `causal_completeness` | a change depends on a change the bundle lacks, and no tombstone covers the record |
//! | `log_missing`         | an office authored envelopes in the bundle but the bundle has no log for it |
//! | `log_inclusion`       | an envelope is not in its author's checkpointed log                 |
//! | `log_completeness`    | an office's log lists an envelope or tombstone the bundle lacks, no valid tombstone covers its record, and the office did not refuse (in a signed transfer record) to send the record to the exporter |
//! | `tombstone_encoding`  | a tombstone is not valid base64 / `CDT1`                            |
//! | `tombstone_signature` | a tombstone's signer is not a roster office or its signature fails  |
//! | `tombstone_duplicate` | the same tombstone appears twice                                    |
//! | `tombstone_authority` | a tombstone is not in its signer's checkpointed log                 |
//! | `consistency`         | with `--previous`: an office's log did not only grow since the older bundle |
//!
//! **Withheld records.** Transfer policy keeps some records from some offices (CN-resident
//! records never leave cn), yet their log leaves travel everywhere, so a bundle can lack
//! envelopes its logs list. An office that refuses a record to a peer writes a signed transfer
//! record (`status: "refused"`, `records`, `to_office`, `office`; no personal data) that
//! replicates everywhere. A missing envelope leaf of office X's log is *withheld*, not dropped,
//! exactly when the bundle holds a verified refusal signed by X itself naming the record and
//! the exporting office, and no event of X's says X transferred it there: X authored the
//! change, and X says it never sent the record there. Nobody else can sign that statement for
//! X; relays honour it; and an exporter that received a record and dropped it has either no
//! such refusal (X sent it) or X's "transferred" beside a later one (X's policy changed since),
//! so a silent drop still fails `log_completeness`. Withheld leaves are reported as the
//! `withheld` count.
//!
//! Envelopes are verified in batches of [`VERIFY_BATCH`] on a pool of worker threads (one per
//! core) with batch ed25519 verification (`consentd_sync::envelope::check_batch`: every check of
//! `verify_batch`, reading each change without expanding it, and signatures checked by
//! `consentd_sync::batch_sig`, one curve term per signing office), while the main thread reads and
//! parses lines. Memory: the verifier keeps ids, hashes and dependency lists (~100 bytes per
//! change), never payloads, unless the report asked it to keep the verified changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::sync::{mpsc, Mutex};

use automerge::Change;
use consentd_sync::b64;
use consentd_sync::envelope::{self, CheckedEnvelope, Envelope, EnvelopeError};
use consentd_sync::merkle::{self, Hash};
use consentd_sync::roster::VerifiedRoster;
use consentd_sync::tlog::{self, LogLeaf, VerifiedCheckpoint, LEAF_ENVELOPE, LEAF_TOMBSTONE};
use consentd_sync::tombstone::{self, Tombstone, VerifiedTombstone};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::{json, Value};

use super::bundle::{Line, ReadError, Reader, FORMAT, VERSION};
use super::cli::Progress;

/// Every check's name, in the order of the table above and of docs/audit-bundle.md.
pub const CHECKS: &[&str] = &[
    "bundle_format",
    "roster_signature",
    "header_signature",
    "checkpoint_signature",
    "log_root",
    "envelope_encoding",
    "envelope_signer",
    "envelope_actor",
    "envelope_signature",
    "envelope_duplicate",
    "causal_completeness",
    "log_missing",
    "log_inclusion",
    "log_completeness",
    "tombstone_encoding",
    "tombstone_signature",
    "tombstone_duplicate",
    "tombstone_authority",
    "consistency",
];

/// Envelopes per work item handed to a worker thread.
pub const VERIFY_BATCH: usize = 1024;
/// Most failures listed one by one in a report (all are counted).
pub const MAX_REPORTED_FAILURES: usize = 1000;
/// Work items queued per worker: bounds the envelope text held in flight.
const QUEUE_PER_WORKER: usize = 2;

pub type DocId = [u8; 16];

/// One failed check, naming what broke.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub check: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub office: Option<String>,
    /// The record (document id, hex) the failure is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The item: a change hash, tombstone hash or leaf index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Line of the bundle, counting from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub detail: String,
}

impl Failure {
    fn new(check: &'static str, detail: impl Into<String>) -> Failure {
        debug_assert!(CHECKS.contains(&check), "undocumented check {check}");
        Failure {
            check,
            office: None,
            record: None,
            item: None,
            line: None,
            detail: detail.into(),
        }
    }
    fn office(mut self, o: &str) -> Self {
        self.office = Some(o.to_string());
        self
    }
    fn record(mut self, d: &DocId) -> Self {
        self.record = Some(hex::encode(d));
        self
    }
    fn item(mut self, i: impl Into<String>) -> Self {
        self.item = Some(i.into());
        self
    }
    fn line(mut self, l: u64) -> Self {
        self.line = Some(l);
        self
    }
}

pub struct Options {
    pub root_pub: VerifyingKey,
    /// Worker threads for envelope verification (default: one per core).
    pub threads: usize,
    /// Keep every verified change, grouped by record, for the compliance report.
    pub collect: bool,
    /// Progress on stderr.
    pub progress: bool,
    /// Read a version-1 bundle (an unsigned header) instead of failing it: `--accept-version-1`.
    pub accept_version_1: bool,
}

/// What verification found. `verified` is filled only with `Options::collect`.
pub struct Outcome {
    pub failures: Vec<Failure>,
    pub failures_total: u64,
    pub report: Value,
    pub verified: Option<Verified>,
    /// Each office's checkpoint and log, for `--previous`.
    pub logs: BTreeMap<String, OfficeLog>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures_total == 0
    }
}

/// Verified data for the report: nothing here failed a check.
pub struct Verified {
    pub network: String,
    pub exported_at: String,
    pub roster: VerifiedRoster,
    /// Each record's verified changes in bundle order, with the authoring office.
    pub docs: BTreeMap<DocId, Vec<(String, Change)>>,
    pub tombstones: Vec<VerifiedTombstone>,
}

/// The header line's claims.
struct Header {
    network: String,
    exporter: String,
    exported_at: String,
    version: u32,
    /// Hex ed25519 signature by the exporter (version 2 on).
    signature: Option<String>,
}

#[derive(Clone, Debug)]
pub struct OfficeLog {
    pub checkpoint: VerifiedCheckpoint,
    pub leaves: Vec<LogLeaf>,
    /// Whether the leaves reproduced the checkpoint.
    pub root_ok: bool,
}

/// One verified envelope, reduced to what the cross-checks need.
struct EnvFact {
    line: u64,
    doc: DocId,
    hash: Hash,
    office: u16,
    deps: Vec<Hash>,
    /// The record type, when this change created the record.
    created: Option<&'static str>,
    /// When this change created a replication event the verifier reads ([`Creation::is_word_for`]):
    /// what it says of which records.
    word: Option<crate::record::TransferWord>,
    /// Boxed: a `Change` is several hundred bytes, and without `Options::collect` every fact
    /// would carry that much empty space through the workers' result vectors and `facts`.
    change: Option<Box<Change>>,
}

/// A creating change of a replication event: what its office says it did (refused, or
/// transferred) with which records, to which office. Such records hold no personal data, so
/// their fields are plain.
fn word_of(change: &Change, signer_office: &str) -> Option<crate::record::TransferWord> {
    let mut doc = automerge::Automerge::new();
    doc.apply_changes([change.clone()]).ok()?;
    let crate::record::Record::Transfer(t) = crate::record::Record::from_doc(&doc).ok()? else {
        return None;
    };
    // The record's own office field must be its signer's: an office speaks for itself only.
    if t.office != signer_office {
        return None;
    }
    crate::record::TransferWord::of(t.status.as_deref(), t.to_office.as_deref(), &t.records)
}

/// A map key that is, or ends in, a SHA-256 hash, hashed by the hash's first 8 bytes only (and
/// compared whole). Those bytes are uniform, and std's SipHash is keyed per process, so no bundle
/// can choose keys that share buckets; SipHash over all 32 or 49 bytes, field by field, made the
/// duplicate, causal and log-inclusion checks most of the single-threaded tail of `verify`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ByPrefix<K>(K);

/// Keys [`ByPrefix`] can take: where their SHA-256 hash is.
trait HashPrefix {
    fn sha256(&self) -> &Hash;
}

impl HashPrefix for Hash {
    fn sha256(&self) -> &Hash {
        self
    }
}

impl HashPrefix for LogLeaf {
    fn sha256(&self) -> &Hash {
        &self.hash
    }
}

impl<K: HashPrefix> std::hash::Hash for ByPrefix<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let h = self.0.sha256();
        state.write_u64(u64::from_le_bytes([
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
        ]));
    }
}

struct Failures {
    list: Vec<Failure>,
    total: u64,
}

impl Failures {
    fn push(&mut self, f: Failure) {
        self.total += 1;
        if self.list.len() < MAX_REPORTED_FAILURES {
            self.list.push(f);
        }
    }
}

fn envelope_check(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::UnknownSigner { .. } => "envelope_signer",
        EnvelopeError::ActorNotBound { .. } => "envelope_actor",
        EnvelopeError::BadSignature { .. } => "envelope_signature",
        _ => "envelope_encoding",
    }
}

/// For a creating change: the record type it writes at the root (`type`), and whether it writes
/// `status: "refused"`. `None` for later changes.
fn created_type(v: &CheckedEnvelope) -> Option<Creation> {
    if !v.deps().is_empty() {
        return None;
    }
    // One pass over the root's puts: the type, and whether the record says "refused" (a
    // replication refusal, decoded in full only then: they are few). Read from the op columns
    // directly (no allocation); `Change::decode` only if the columns are not laid out as that
    // reader expects.
    let mut creation = Creation::default();
    let fast = consentd_sync::change_chunk::for_each_root_string_put(v.change_bytes(), |k, val| {
        creation.see(k, val)
    });
    let slow = || {
        let mut creation = Creation::default();
        let Some(change) = v.expand() else {
            return creation;
        };
        for op in &change.decode().operations {
            if let (
                automerge::legacy::ObjectId::Root,
                automerge::legacy::Key::Map(k),
                automerge::legacy::OpType::Put(automerge::ScalarValue::Str(s)),
            ) = (&op.obj, &op.key, &op.action)
            {
                creation.see(k, s);
            }
        }
        creation
    };
    let creation = match fast {
        Some(()) => {
            debug_assert_eq!(
                creation,
                slow(),
                "the op column reader disagrees with Change::decode"
            );
            creation
        }
        None => slow(),
    };
    Some(creation)
}

/// What a creating change's root puts say: the record type, whether it is a replication
/// event (`status` refused or transferred), and the office it names (`to_office`).
#[derive(Debug, PartialEq, Eq)]
struct Creation {
    kind: &'static str,
    refused: bool,
    transferred: bool,
    to_office: Option<String>,
}

impl Default for Creation {
    fn default() -> Creation {
        Creation {
            kind: "other",
            refused: false,
            transferred: false,
            to_office: None,
        }
    }
}

impl Creation {
    /// One root string put, in op order (a later `type` wins, as it does in the document).
    fn see(&mut self, key: &str, value: &str) {
        match (key, value) {
            ("type", "consent") => self.kind = "consent",
            ("type", "request") => self.kind = "request",
            ("type", "transfer") => self.kind = "transfer",
            ("status", "refused") => self.refused = true,
            ("status", "transferred") => self.transferred = true,
            ("to_office", office) => self.to_office = Some(office.to_string()),
            _ => {}
        }
    }

    /// Whether this creates a replication event whose records the verifier reads: every
    /// refusal, and a "transferred" to the exporter (which a refusal cannot then excuse).
    fn is_word_for(&self, exporter: &str) -> bool {
        self.kind == "transfer"
            && (self.refused || (self.transferred && self.to_office.as_deref() == Some(exporter)))
    }
}

/// A bundle line as the reading thread sees it: envelope lines reduced to their `data`.
enum Parsed<'a> {
    Envelope(Cow<'a, [u8]>),
    Other(Line),
}

impl Parsed<'_> {
    fn section(&self) -> u8 {
        match self {
            Parsed::Envelope(_) => Line::Envelope {
                data: String::new(),
            }
            .section(),
            Parsed::Other(l) => l.section(),
        }
    }
}

/// Envelope lines queued for one worker: their `data` (base64) packed into one buffer, so that
/// queueing a line copies its bytes once and allocates nothing per line.
#[derive(Default)]
struct EnvelopeBatch {
    text: Vec<u8>,
    /// Each line's number and the end of its `data` in `text` (it starts where the previous ends).
    lines: Vec<(u64, usize)>,
}

impl EnvelopeBatch {
    fn with_capacity(lines: usize) -> EnvelopeBatch {
        EnvelopeBatch {
            // A consent record's envelope is ~600 base64 characters.
            text: Vec::with_capacity(lines * 640),
            lines: Vec::with_capacity(lines),
        }
    }

    fn push(&mut self, line: u64, data: &[u8]) {
        self.text.extend_from_slice(data);
        self.lines.push((line, self.text.len()));
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut start = 0;
        self.lines.iter().map(move |&(line, end)| {
            debug_assert!(start <= end && end <= self.text.len(), "batch offsets");
            let data = self.text.get(start..end).unwrap_or_default();
            start = end;
            (line, data)
        })
    }
}

/// What `Writer` writes for an envelope line, around its `data`.
const ENVELOPE_PREFIX: &[u8] = br#"{"type":"envelope","data":""#;
const ENVELOPE_SUFFIX: &[u8] = br#""}"#;

/// The `data` of an envelope line laid out exactly as `Writer` writes it with nothing but base64
/// symbols inside the string (so no JSON escape can change its meaning), without a JSON parser:
/// parsing every envelope line through serde's tagged-enum buffering was a serial cost on the
/// reading thread. `None` for anything else, which then goes through serde as before.
fn envelope_data(raw: &[u8]) -> Option<&[u8]> {
    let data = raw
        .strip_prefix(ENVELOPE_PREFIX)?
        .strip_suffix(ENVELOPE_SUFFIX)?;
    b64::only_symbols(data).then_some(data)
}

/// Each byte's value as a hex digit (either case, as `hex::decode_to_slice` takes them), or 0xff.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0u8;
    while i < 10 {
        t[(b'0' + i) as usize] = i;
        i += 1;
    }
    let mut i = 0u8;
    while i < 6 {
        t[(b'a' + i) as usize] = 10 + i;
        t[(b'A' + i) as usize] = 10 + i;
        i += 1;
    }
    t
};

/// Decodes `text` (exactly `2 * out.len()` hex digits) into `out`; whether it could. A table
/// lookup per digit: the `hex` crate's decoder was ~1 % of `audit verify`'s CPU, all of it on
/// the reading thread (a million leaves of 98 digits each at the full scale).
fn hex_to_slice(text: &[u8], out: &mut [u8]) -> bool {
    if text.len() != 2 * out.len() {
        return false;
    }
    let mut bad = 0u8;
    for (pair, b) in text.chunks_exact(2).zip(out.iter_mut()) {
        let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= hi | lo;
        *b = (hi << 4) | (lo & 0x0f);
    }
    // A digit is at most 0x0f; only the 0xff sentinel sets the high bits.
    bad & 0xf0 == 0
}

/// Verifies one batch of envelope lines (run on a worker thread).
fn verify_lines(
    lines: &EnvelopeBatch,
    roster: &VerifiedRoster,
    office_index: &HashMap<String, u16>,
    exporter: &str,
    collect: bool,
) -> (Vec<EnvFact>, Vec<Failure>) {
    let mut failures = Vec::new();
    let mut envs = Vec::with_capacity(lines.len());
    let mut line_of = Vec::with_capacity(lines.len());
    let mut bytes = Vec::new();
    for (line, data) in lines.iter() {
        let decoded = if b64::decode_into(data, &mut bytes) {
            Envelope::decode(&bytes).map_err(|e| e.to_string())
        } else {
            Err("not canonical base64".to_string())
        };
        match decoded {
            Ok(env) => {
                envs.push(env);
                line_of.push(line);
            }
            Err(e) => failures.push(Failure::new("envelope_encoding", e).line(line)),
        }
    }
    let docs: Vec<DocId> = envs.iter().map(|e| e.doc_id).collect();
    let mut facts = Vec::with_capacity(envs.len());
    for (i, r) in envelope::check_batch(envs, roster).into_iter().enumerate() {
        match r {
            Ok(v) => {
                let office = roster
                    .office_at(v.office_index())
                    .expect("a checked envelope's office is in the roster");
                let creation = created_type(&v);
                // Expanded into Automerge's `Change` only where its ops are read: a replication
                // event's records, or every change when the report asked to keep them.
                let word = creation
                    .as_ref()
                    .is_some_and(|c| c.is_word_for(exporter))
                    .then(|| word_of(&v.expand()?, &office.id))
                    .flatten();
                let change = if collect {
                    match v.expand() {
                        Some(c) => Some(Box::new(c)),
                        None => {
                            failures.push(
                                Failure::new("envelope_encoding", "the change does not parse")
                                    .line(line_of[i])
                                    .record(&docs[i]),
                            );
                            continue;
                        }
                    }
                } else {
                    None
                };
                facts.push(EnvFact {
                    line: line_of[i],
                    doc: v.doc_id(),
                    hash: v.hash(),
                    office: {
                        let at = u16::from(v.office_index());
                        debug_assert_eq!(
                            office_index[&office.id], at,
                            "office_index is roster order"
                        );
                        at
                    },
                    deps: v.deps().to_vec(),
                    created: creation.map(|c| c.kind),
                    word,
                    change,
                });
            }
            Err(e) => {
                let office = match &e {
                    EnvelopeError::MalformedChange { office, .. }
                    | EnvelopeError::NonCanonicalChange { office, .. }
                    | EnvelopeError::ActorNotBound { office, .. }
                    | EnvelopeError::BadSignature { office, .. } => Some(office.clone()),
                    _ => None,
                };
                let mut f = Failure::new(envelope_check(&e), e.to_string())
                    .line(line_of[i])
                    .record(&docs[i]);
                f.office = office;
                failures.push(f);
            }
        }
    }
    (facts, failures)
}

/// Verifies the bundle read from `input`.
pub fn verify(input: impl BufRead, opts: &Options) -> Outcome {
    let mut failures = Failures {
        list: Vec::new(),
        total: 0,
    };
    let mut reader = Reader::new(input);
    let mut progress = Progress::new(opts.progress, "verifying");

    // Header and roster first: without a verified roster nothing else can be checked.
    let mut header: Option<Header> = None;
    let mut roster: Option<VerifiedRoster> = None;
    let mut lines_before_end = 0u64;
    let mut first_lines = Vec::new();
    for _ in 0..2 {
        match reader.advance() {
            Ok(true) => first_lines.push((reader.line_no, reader.line().to_vec())),
            Ok(false) => break,
            Err(e) => {
                failures.push(Failure::new("bundle_format", e.to_string()));
                break;
            }
        }
    }
    for (no, bytes) in &first_lines {
        match serde_json::from_slice::<Line>(bytes) {
            Ok(Line::Header {
                format,
                version,
                network,
                office,
                exported_at,
                signature,
            }) if *no == 1 => {
                if format != FORMAT || !(1..=VERSION).contains(&version) {
                    failures.push(
                        Failure::new(
                            "bundle_format",
                            format!(
                                "not a {FORMAT} of version 1 to {VERSION} (found {format} {version})"
                            ),
                        )
                        .line(*no),
                    );
                }
                header = Some(Header {
                    network,
                    exporter: office,
                    exported_at,
                    version,
                    signature,
                });
            }
            Ok(Line::Roster { roster: signed }) if *no == 2 => {
                match signed.verify(&opts.root_pub) {
                    Ok(r) => roster = Some(r),
                    Err(e) => {
                        failures.push(Failure::new("roster_signature", e.to_string()).line(*no))
                    }
                }
            }
            Ok(_) => failures.push(
                Failure::new(
                    "bundle_format",
                    "a bundle starts with a header line, then a roster line",
                )
                .line(*no),
            ),
            Err(e) => failures
                .push(Failure::new("bundle_format", format!("not a bundle line: {e}")).line(*no)),
        }
    }
    let (Some(header), Some(roster)) = (header, roster) else {
        if failures.total == 0 {
            failures.push(Failure::new(
                "bundle_format",
                "the bundle has no header and roster",
            ));
        }
        return Outcome {
            report: summary_json(&failures, None, &BTreeMap::new(), &Counts::default()),
            failures: failures.list,
            failures_total: failures.total,
            verified: None,
            logs: BTreeMap::new(),
        };
    };
    let (network, exporter, exported_at) = (
        header.network.clone(),
        header.exporter.clone(),
        header.exported_at.clone(),
    );
    // Every checkpoint line (office, note), in order: what the header's signature covers.
    let mut checkpoint_lines: Vec<(String, String)> = Vec::new();
    // Offices whose leaves lines were seen, and the last one's: each office's lines together.
    let mut leaves_offices: HashSet<String> = HashSet::new();
    let mut last_leaves_office: Option<String> = None;
    if network != roster.roster().network {
        failures.push(
            Failure::new(
                "bundle_format",
                format!(
                    "header names network {network}, the roster {}",
                    roster.roster().network
                ),
            )
            .line(1),
        );
    }

    let office_ids: Vec<String> = roster.offices().map(|o| o.id.clone()).collect();
    let office_index: HashMap<String, u16> = office_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i as u16))
        .collect();
    let threads = opts.threads.max(1);

    let mut logs: BTreeMap<String, OfficeLog> = BTreeMap::new();
    let mut leaf_lines: HashMap<String, u64> = HashMap::new();
    let mut tombstones: Vec<(u64, VerifiedTombstone)> = Vec::new();
    let mut facts: Vec<EnvFact> = Vec::new();
    let mut section = 1u8;
    let mut saw_end = false;
    let mut counts = Counts::default();

    let (work_tx, work_rx) = mpsc::sync_channel::<EnvelopeBatch>(threads * QUEUE_PER_WORKER);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::channel::<(Vec<EnvFact>, Vec<Failure>)>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (work_rx, done_tx) = (&work_rx, done_tx.clone());
            let (roster, office_index, exporter) = (&roster, &office_index, &exporter);
            let collect = opts.collect;
            s.spawn(move || loop {
                let item = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(lines) = item else { return };
                if done_tx
                    .send(verify_lines(
                        &lines,
                        roster,
                        office_index,
                        exporter,
                        collect,
                    ))
                    .is_err()
                {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut batch = EnvelopeBatch::with_capacity(VERIFY_BATCH);
        let drain = |facts: &mut Vec<EnvFact>, failures: &mut Failures, block: bool| {
            let mut take = |(f, fl): (Vec<EnvFact>, Vec<Failure>)| {
                facts.extend(f);
                for x in fl {
                    failures.push(x);
                }
            };
            if block {
                for r in done_rx.iter() {
                    take(r);
                }
            } else {
                while let Ok(r) = done_rx.try_recv() {
                    take(r);
                }
            }
        };

        loop {
            let more = match reader.advance() {
                Ok(more) => more,
                Err(e) => {
                    let line = match &e {
                        ReadError::TooLong { line, .. } | ReadError::Unterminated { line } => {
                            Some(*line)
                        }
                        ReadError::Io(_) => None,
                    };
                    let mut f = Failure::new("bundle_format", e.to_string());
                    f.line = line;
                    failures.push(f);
                    break;
                }
            };
            if !more {
                break;
            }
            let raw = reader.line();
            let no = reader.line_no;
            if saw_end {
                failures.push(Failure::new("bundle_format", "lines after the end line").line(no));
                break;
            }
            let line = match envelope_data(raw) {
                Some(data) => Parsed::Envelope(Cow::Borrowed(data)),
                None => match serde_json::from_slice(raw) {
                    Ok(Line::Envelope { data }) => Parsed::Envelope(Cow::Owned(data.into_bytes())),
                    Ok(l) => Parsed::Other(l),
                    Err(e) => {
                        failures.push(
                            Failure::new("bundle_format", format!("not a bundle line: {e}"))
                                .line(no),
                        );
                        continue;
                    }
                },
            };
            if line.section() < section || line.section() <= 1 {
                failures
                    .push(Failure::new("bundle_format", "line is out of section order").line(no));
                continue;
            }
            section = line.section();
            let line = match line {
                Parsed::Envelope(data) => {
                    counts.envelope_lines += 1;
                    batch.push(no, &data);
                    if batch.len() == VERIFY_BATCH {
                        let full = std::mem::replace(
                            &mut batch,
                            EnvelopeBatch::with_capacity(VERIFY_BATCH),
                        );
                        // Blocks when the workers are behind: bounded memory.
                        let _ = work_tx.send(full);
                        drain(&mut facts, &mut failures, false);
                        progress.update(|| format!("{} envelopes", counts.envelope_lines));
                    }
                    continue;
                }
                Parsed::Other(line) => line,
            };
            match line {
                Line::Header { .. } | Line::Roster { .. } => unreachable!("refused above"),
                Line::Envelope { .. } => unreachable!("parsed as Parsed::Envelope"),
                Line::Checkpoint { office, note } => {
                    counts.checkpoints += 1;
                    checkpoint_lines.push((office.clone(), note.clone()));
                    match tlog::verify(&note, &roster) {
                        Ok(v) if v.office != office => failures.push(
                            Failure::new(
                                "checkpoint_signature",
                                format!(
                                    "line names office {office} but the checkpoint is {}'s",
                                    v.office
                                ),
                            )
                            .office(&office)
                            .line(no),
                        ),
                        Ok(v) => match logs.entry(office) {
                            std::collections::btree_map::Entry::Occupied(e) => failures.push(
                                Failure::new(
                                    "bundle_format",
                                    "a second checkpoint for this office",
                                )
                                .office(e.key())
                                .line(no),
                            ),
                            std::collections::btree_map::Entry::Vacant(e) => {
                                e.insert(OfficeLog {
                                    checkpoint: v,
                                    leaves: Vec::new(),
                                    root_ok: false,
                                });
                            }
                        },
                        Err(e) => failures.push(
                            Failure::new("checkpoint_signature", e.to_string())
                                .office(&office)
                                .line(no),
                        ),
                    }
                }
                Line::Leaves {
                    office,
                    first,
                    leaves,
                } => {
                    let Some(log) = logs.get_mut(&office) else {
                        failures.push(
                            Failure::new(
                                "log_root",
                                "leaves for an office without a valid checkpoint",
                            )
                            .office(&office)
                            .line(no),
                        );
                        continue;
                    };
                    leaf_lines.entry(office.clone()).or_insert(no);
                    // One office's lines together (`first` keeps them in order).
                    if last_leaves_office.as_deref() != Some(office.as_str()) {
                        if !leaves_offices.insert(office.clone()) {
                            failures.push(
                                Failure::new(
                                    "bundle_format",
                                    "this office's leaves lines are not together",
                                )
                                .office(&office)
                                .line(no),
                            );
                        }
                        last_leaves_office = Some(office.clone());
                    }
                    if first != log.leaves.len() as u64 {
                        failures.push(
                            Failure::new(
                                "log_root",
                                format!(
                                    "leaves line starts at {first}, expected {}",
                                    log.leaves.len()
                                ),
                            )
                            .office(&office)
                            .line(no),
                        );
                    }
                    // Decoded into a stack buffer: `hex::decode` allocated per leaf, on the
                    // reading thread, for every leaf of every log.
                    let mut bytes = [0u8; tlog::LEAF_LEN];
                    for (i, hexleaf) in leaves.iter().enumerate() {
                        let leaf = hex_to_slice(hexleaf.as_bytes(), &mut bytes)
                            .then(|| LogLeaf::decode(&bytes))
                            .flatten();
                        match leaf {
                            Some(l) => log.leaves.push(l),
                            None => {
                                failures.push(
                                    Failure::new("log_root", "malformed leaf")
                                        .office(&office)
                                        .item(format!("leaf {}", first + i as u64))
                                        .line(no),
                                );
                                // Keep positions aligned: a placeholder that can match nothing.
                                log.leaves.push(LogLeaf {
                                    kind: 0,
                                    doc: [0; 16],
                                    hash: [0; 32],
                                });
                            }
                        }
                    }
                    counts.leaves += leaves.len() as u64;
                }
                Line::Tombstone { data } => {
                    counts.tombstones += 1;
                    let decoded = b64::decode(&data)
                        .ok_or_else(|| "not canonical base64".to_string())
                        .and_then(|b| Tombstone::decode(&b).map_err(|e| e.to_string()));
                    match decoded {
                        Err(e) => failures.push(Failure::new("tombstone_encoding", e).line(no)),
                        Ok(t) => {
                            let doc = t.doc_id;
                            match tombstone::verify(t, &roster) {
                                Ok(v) => tombstones.push((no, v)),
                                Err(e) => failures.push(
                                    Failure::new("tombstone_signature", e.to_string())
                                        .record(&doc)
                                        .line(no),
                                ),
                            }
                        }
                    }
                }
                Line::End { lines, sha256 } => {
                    saw_end = true;
                    lines_before_end = no - 1;
                    if lines != lines_before_end {
                        failures.push(
                            Failure::new(
                                "bundle_format",
                                format!("end line counts {lines} lines; the bundle has {lines_before_end}"),
                            )
                            .line(no),
                        );
                    }
                    if sha256 != reader.digest_before() {
                        failures.push(
                            Failure::new(
                                "bundle_format",
                                "the bundle's bytes do not match the SHA-256 in its end line (damaged or edited)",
                            )
                            .line(no),
                        );
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = work_tx.send(std::mem::take(&mut batch));
        }
        drop(work_tx);
        drain(&mut facts, &mut failures, true);
    });
    let _ = lines_before_end;
    if !saw_end {
        failures.push(Failure::new(
            "bundle_format",
            "the bundle has no end line (it is truncated)",
        ));
    }
    progress.done(|| format!("{} envelopes", counts.envelope_lines));
    // Workers finish out of order; report and cross-check in bundle order.
    facts.sort_unstable_by_key(|f| f.line);

    // ---- order: the exporter's log first, each record's envelopes together, no tombstone twice
    if let Some((first, no)) = leaf_lines.iter().min_by_key(|(_, no)| **no) {
        if *first != exporter && leaf_lines.contains_key(&exporter) {
            failures.push(
                Failure::new(
                    "bundle_format",
                    "the exporter's log must come before the others",
                )
                .office(first)
                .line(*no),
            );
        }
    }
    {
        let mut done: HashSet<DocId> = HashSet::new();
        let mut current: Option<DocId> = None;
        for f in &facts {
            if current == Some(f.doc) {
                continue;
            }
            if let Some(previous) = current.replace(f.doc) {
                done.insert(previous);
            }
            if done.contains(&f.doc) {
                failures.push(
                    Failure::new("bundle_format", "this record's envelopes are not together")
                        .record(&f.doc)
                        .line(f.line),
                );
            }
        }
        let mut seen: HashSet<[u8; 32]> = HashSet::with_capacity(tombstones.len());
        for (no, t) in &tombstones {
            if !seen.insert(t.tombstone().hash()) {
                failures.push(
                    Failure::new("tombstone_duplicate", "this tombstone appears twice")
                        .record(&t.tombstone().doc_id)
                        .line(*no),
                );
            }
        }
    }

    // ---- the header is the exporter's word -------------------------------------------------
    let header_signed = match (&header.signature, header.version) {
        // Version 1 had no signature: read, and reported unsigned, only when asked. Anyone can
        // turn a version-2 bundle into one (drop the signature, write 1): read by default, that
        // let whole offices' logs be cut out, and the export time and exporter be rewritten,
        // and the bundle still verified (found by an exploratory session).
        (None, 1) if opts.accept_version_1 => false,
        (None, 1) => {
            failures.push(
                Failure::new(
                    "header_signature",
                    "a version-1 bundle: its header is unsigned, so which offices' logs it carries and its export time are nobody's word (anyone can turn a version-2 bundle into one); only for a bundle an older consentd exported, verify with --accept-version-1",
                )
                .office(&exporter)
                .line(1),
            );
            false
        }
        (None, _) => {
            failures.push(
                Failure::new("header_signature", "the header carries no signature")
                    .office(&exporter)
                    .line(1),
            );
            false
        }
        (Some(sig), _) => {
            let has_own = checkpoint_lines.iter().any(|(o, _)| *o == exporter);
            let problem = match roster.office(&exporter) {
                None => Some(format!("office {exporter} is not in the roster")),
                Some(_) if !has_own => {
                    Some(format!("the bundle has no checkpoint of office {exporter}"))
                }
                Some(o) => {
                    let listed: Vec<(&str, &str)> = checkpoint_lines
                        .iter()
                        .map(|(o, n)| (o.as_str(), n.as_str()))
                        .collect();
                    let message =
                        super::bundle::header_message(&network, &exporter, &exported_at, &listed);
                    let signature = hex::decode(sig)
                        .ok()
                        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
                    match signature {
                        Some(s) if o.signing_key.verify_strict(&message, &s).is_ok() => None,
                        _ => Some(format!(
                            "the signature does not verify with office {exporter}'s key over \
                             the network, exporter, export time and the bundle's checkpoints \
                             (edited, or an office's checkpoint removed or replaced)"
                        )),
                    }
                }
            };
            if let Some(p) = &problem {
                failures.push(
                    Failure::new("header_signature", p.clone())
                        .office(&exporter)
                        .line(1),
                );
            }
            problem.is_none()
        }
    };

    // ---- logs reproduce their checkpoints ------------------------------------------------
    for (office, log) in logs.iter_mut() {
        let cp = &log.checkpoint.checkpoint;
        if !leaf_lines.contains_key(office) && cp.size > 0 {
            // The checkpoint verified, but the bundle does not carry this office's log.
            continue;
        }
        let hashes: Vec<Hash> = log.leaves.iter().map(LogLeaf::merkle_hash).collect();
        if hashes.len() as u64 != cp.size {
            failures.push(
                Failure::new(
                    "log_root",
                    format!(
                        "the bundle carries {} leaves; the checkpoint says {}",
                        hashes.len(),
                        cp.size
                    ),
                )
                .office(office),
            );
        } else if merkle::root(&hashes) != cp.root {
            failures.push(
                Failure::new(
                    "log_root",
                    "the leaves do not reproduce the checkpoint's root hash (a log altered, reordered or shortened)",
                )
                .office(office),
            );
        } else {
            log.root_ok = true;
        }
    }

    // ---- envelopes: duplicates, causal completeness, inclusion -------------------------------
    let tombstoned: HashSet<DocId> = tombstones
        .iter()
        .map(|(_, t)| t.tombstone().doc_id)
        .collect();
    let mut present: HashMap<ByPrefix<Hash>, (DocId, u16)> = HashMap::with_capacity(facts.len());
    for f in &facts {
        if present
            .insert(ByPrefix(f.hash), (f.doc, f.office))
            .is_some()
        {
            failures.push(
                Failure::new("envelope_duplicate", "this change appears twice")
                    .record(&f.doc)
                    .item(hex::encode(f.hash))
                    .line(f.line),
            );
        }
    }
    for f in &facts {
        for dep in &f.deps {
            let ok = matches!(present.get(&ByPrefix(*dep)), Some((d, _)) if *d == f.doc);
            if !ok && !tombstoned.contains(&f.doc) {
                failures.push(
                    Failure::new(
                        "causal_completeness",
                        format!(
                            "depends on change {} which the bundle lacks",
                            hex::encode(dep)
                        ),
                    )
                    .office(&office_ids[f.office as usize])
                    .record(&f.doc)
                    .item(hex::encode(f.hash))
                    .line(f.line),
                );
            }
        }
    }
    let log_sets: HashMap<&str, HashSet<ByPrefix<LogLeaf>>> = logs
        .iter()
        .filter(|(_, l)| l.root_ok)
        .map(|(o, l)| (o.as_str(), l.leaves.iter().copied().map(ByPrefix).collect()))
        .collect();
    let mut missing_log: BTreeMap<u16, (u64, DocId)> = BTreeMap::new();
    for f in &facts {
        let office = &office_ids[f.office as usize];
        match log_sets.get(office.as_str()) {
            Some(set) => {
                if !set.contains(&ByPrefix(LogLeaf::envelope(f.doc, f.hash))) {
                    failures.push(
                        Failure::new(
                            "log_inclusion",
                            "this envelope is not in its office's checkpointed log",
                        )
                        .office(office)
                        .record(&f.doc)
                        .item(hex::encode(f.hash))
                        .line(f.line),
                    );
                }
            }
            None => {
                let e = missing_log.entry(f.office).or_insert((0, f.doc));
                e.0 += 1;
            }
        }
    }
    for (office, (n, doc)) in missing_log {
        let office = &office_ids[office as usize];
        let why = if logs.contains_key(office.as_str()) {
            "whose log does not reproduce its checkpoint"
        } else {
            "but the bundle carries no checkpointed log for it"
        };
        failures.push(
            Failure::new(
                "log_missing",
                format!("office authored {n} envelopes in the bundle {why}"),
            )
            .office(office)
            .record(&doc),
        );
    }

    // ---- logs hold nothing the bundle lacks ------------------------------------------------
    let tomb_by_hash: HashMap<Hash, &VerifiedTombstone> =
        tombstones.iter().map(|(_, t)| (t.hash(), t)).collect();
    // Records each office refused to send to the exporter (see the module docs), less those
    // the same office says it did send there: a refusal signed after the record went (a
    // policy changed since) excuses no drop (found by an exploratory session).
    let mut refused: HashMap<DocId, HashSet<u16>> = HashMap::new();
    let mut sent: HashSet<(DocId, u16)> = HashSet::new();
    for f in &facts {
        if let Some(word) = &f.word {
            if word.to_office == exporter {
                for r in &word.records {
                    if word.refused {
                        refused.entry(*r).or_default().insert(f.office);
                    } else {
                        sent.insert((*r, f.office));
                    }
                }
            }
        }
    }
    for (record, by) in &sent {
        if let Some(offices) = refused.get_mut(record) {
            offices.remove(by);
        }
    }
    let mut withheld_records: HashSet<DocId> = HashSet::new();
    let mut withheld_by: BTreeMap<String, u64> = BTreeMap::new();
    for (office, log) in &logs {
        if !log.root_ok {
            continue;
        }
        for (i, leaf) in log.leaves.iter().enumerate() {
            let ok = match leaf.kind {
                LEAF_ENVELOPE => {
                    matches!(present.get(&ByPrefix(leaf.hash)), Some((d, o)) if *d == leaf.doc && office_ids[*o as usize] == *office)
                        || tombstoned.contains(&leaf.doc)
                }
                LEAF_TOMBSTONE => matches!(tomb_by_hash.get(&leaf.hash),
                    Some(t) if t.office() == office && t.tombstone().doc_id == leaf.doc),
                _ => false,
            };
            let withheld = !ok
                && leaf.kind == LEAF_ENVELOPE
                && refused
                    .get(&leaf.doc)
                    .zip(office_index.get(office.as_str()))
                    .is_some_and(|(by, o)| by.contains(o));
            if withheld {
                counts.withheld += 1;
                *withheld_by.entry(office.clone()).or_default() += 1;
                withheld_records.insert(leaf.doc);
            } else if !ok {
                failures.push(
                    Failure::new(
                        "log_completeness",
                        format!(
                            "the log lists {} {} which the bundle lacks, and no tombstone covers the record",
                            leaf.kind_name(),
                            hex::encode(leaf.hash)
                        ),
                    )
                    .office(office)
                    .record(&leaf.doc)
                    .item(format!("leaf {i}")),
                );
            }
        }
    }

    // ---- tombstones: authority --------------------------------------------------------------
    for (line, t) in &tombstones {
        let doc = t.tombstone().doc_id;
        let ok = log_sets
            .get(t.office())
            .is_some_and(|set| set.contains(&ByPrefix(LogLeaf::tombstone(doc, t.hash()))));
        if !ok {
            failures.push(
                Failure::new(
                    "tombstone_authority",
                    "this tombstone is not in its signing office's checkpointed log",
                )
                .office(t.office())
                .record(&doc)
                .item(hex::encode(t.hash()))
                .line(*line),
            );
        }
    }

    // ---- counts and the report ---------------------------------------------------------------
    let mut by_office: BTreeMap<String, OfficeCounts> = BTreeMap::new();
    for id in &office_ids {
        by_office.insert(id.clone(), OfficeCounts::default());
    }
    let mut records = 0u64;
    for f in &facts {
        let c = by_office
            .get_mut(&office_ids[f.office as usize])
            .expect("every office listed");
        c.envelopes += 1;
        if let Some(kind) = f.created {
            records += 1;
            *c.records.entry(kind).or_default() += 1;
        }
    }
    for (_, t) in &tombstones {
        if let Some(c) = by_office.get_mut(t.office()) {
            c.tombstones += 1;
        }
    }
    for (o, l) in &logs {
        if let Some(c) = by_office.get_mut(o) {
            c.log_size = Some(l.checkpoint.checkpoint.size);
        }
    }
    for (o, n) in withheld_by {
        if let Some(c) = by_office.get_mut(&o) {
            c.withheld = n;
        }
    }
    counts.withheld_records = withheld_records.len() as u64;
    counts.envelopes_verified = facts.len() as u64;
    counts.records = records;
    let info = Info {
        network: &network,
        exported_by: &exporter,
        exported_at: &exported_at,
        header_signed,
    };
    let report = summary_json(&failures, Some(&info), &by_office, &counts);

    let verified = opts.collect.then(|| {
        let mut docs: BTreeMap<DocId, Vec<(String, Change)>> = BTreeMap::new();
        for f in facts {
            if let Some(change) = f.change {
                docs.entry(f.doc)
                    .or_default()
                    .push((office_ids[f.office as usize].clone(), *change));
            }
        }
        Verified {
            network: network.clone(),
            exported_at: exported_at.clone(),
            roster: roster.clone(),
            docs,
            tombstones: tombstones.into_iter().map(|(_, t)| t).collect(),
        }
    });
    Outcome {
        failures: failures.list,
        failures_total: failures.total,
        report,
        verified,
        logs,
    }
}

/// `--previous`: every office's log in the older bundle must be a prefix of its log in the
/// newer one (RFC 9162 consistency proof between the two checkpoints).
pub fn check_previous(
    old: &BTreeMap<String, OfficeLog>,
    new: &BTreeMap<String, OfficeLog>,
) -> Vec<Failure> {
    let mut out = Vec::new();
    for (office, o) in old {
        let ocp = &o.checkpoint.checkpoint;
        let Some(n) = new.get(office) else {
            out.push(
                Failure::new(
                    "consistency",
                    "the older bundle has a checkpoint for this office; the newer has none",
                )
                .office(office),
            );
            continue;
        };
        let ncp = &n.checkpoint.checkpoint;
        if ocp.size > ncp.size {
            out.push(
                Failure::new(
                    "consistency",
                    format!(
                        "the log shrank: the older bundle's checkpoint has {} leaves, this one {} (an older checkpoint presented as newer?)",
                        ocp.size, ncp.size
                    ),
                )
                .office(office),
            );
            continue;
        }
        if !n.root_ok {
            out.push(
                Failure::new(
                    "consistency",
                    "this bundle's log for the office does not verify, so no proof can be built",
                )
                .office(office),
            );
            continue;
        }
        let hashes: Vec<Hash> = n.leaves.iter().map(LogLeaf::merkle_hash).collect();
        let proof = merkle::consistency_proof(&hashes, ocp.size).unwrap_or_default();
        if !merkle::verify_consistency(ocp.size, ncp.size, &ocp.root, &ncp.root, &proof) {
            out.push(
                Failure::new(
                    "consistency",
                    format!(
                        "the log of {} leaves in the older bundle is not a prefix of this one's {} leaves: the office rewrote its history",
                        ocp.size, ncp.size
                    ),
                )
                .office(office),
            );
        }
    }
    out
}

#[derive(Default, Serialize)]
struct OfficeCounts {
    envelopes: u64,
    /// Records created by this office, by type.
    records: BTreeMap<&'static str, u64>,
    tombstones: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_size: Option<u64>,
    /// Leaves of this office's log whose envelopes it refused to send to the exporter.
    withheld: u64,
}

#[derive(Default, Serialize)]
struct Counts {
    envelope_lines: u64,
    envelopes_verified: u64,
    records: u64,
    tombstones: u64,
    checkpoints: u64,
    leaves: u64,
    /// Log leaves whose envelopes the bundle lacks because their office refused, in a signed
    /// transfer record, to send their record to the exporter (policy), and those records.
    withheld: u64,
    withheld_records: u64,
}

struct Info<'a> {
    network: &'a str,
    exported_by: &'a str,
    exported_at: &'a str,
    /// Whether the exporter signed the two claims above (a version-1 bundle did not).
    header_signed: bool,
}

fn summary_json(
    failures: &Failures,
    info: Option<&Info<'_>>,
    by_office: &BTreeMap<String, OfficeCounts>,
    counts: &Counts,
) -> Value {
    json!({
        "ok": failures.total == 0,
        "network": info.map(|i| i.network),
        "exported_by": info.map(|i| i.exported_by),
        "exported_at": info.map(|i| i.exported_at),
        "header_signed": info.map(|i| i.header_signed),
        "counts": {
            "envelopes": counts.envelope_lines,
            "envelopes_verified": counts.envelopes_verified,
            "records": counts.records,
            "tombstones": counts.tombstones,
            "checkpoints": counts.checkpoints,
            "leaves": counts.leaves,
            "withheld": counts.withheld,
            "withheld_records": counts.withheld_records,
        },
        "by_office": by_office,
        "failures_total": failures.total,
        "failures": failures.list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn hex_to_slice_agrees_with_the_hex_crate() {
        let mut ours = [0u8; 4];
        let mut theirs = [0u8; 4];
        for text in [
            "00ff10aB",
            "DEADbeef",
            "0123456",
            "012345678",
            "0g000000",
            "zz000000",
            " 0000000",
            "",
        ] {
            let a = hex_to_slice(text.as_bytes(), &mut ours);
            let b = hex::decode_to_slice(text, &mut theirs).is_ok();
            assert_eq!(a, b, "{text:?}");
            if a {
                assert_eq!(ours, theirs, "{text:?}");
            }
        }
        for c in 0..=255u8 {
            let text = [b'0', c, b'0', b'0', b'0', b'0', b'0', b'0'];
            let a = hex_to_slice(&text, &mut ours);
            let b = hex::decode_to_slice(text, &mut theirs).is_ok();
            assert_eq!(a, b, "byte {c}");
        }
    }

    #[test]
    fn only_plain_envelope_lines_skip_the_json_parser() {
        assert_eq!(
            envelope_data(br#"{"type":"envelope","data":"Q0RFMQ+/=="}"#),
            Some(&b"Q0RFMQ+/=="[..])
        );
        for other in [
            &br#"{"type":"envelope","data":"Q0RF\/MQ=="}"#[..],
            br#"{"type":"envelope","data":"Q0RF","x":"MQ=="}"#,
            br#"{"type":"envelope","data":"Q0RFMQ=="}"#.as_slice().strip_suffix(b"}").unwrap(),
            b"{\"type\":\"envelope\",\"data\":\"Q0RFMQ==\"}\r",
            br#"{"data":"Q0RFMQ==","type":"envelope"}"#,
            br#"{"type":"tombstone","data":"Q0RUMQ=="}"#,
        ] {
            assert_eq!(
                envelope_data(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// Rewrites `bundle`'s end line to match its other lines.
    fn reseal(bundle: &[u8]) -> Vec<u8> {
        let body_end = bundle[..bundle.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let body = &bundle[..body_end];
        let mut out = body.to_vec();
        let end = Line::End {
            lines: body.iter().filter(|&&b| b == b'\n').count() as u64,
            sha256: hex::encode(Sha256::digest(body)),
        };
        out.extend_from_slice(&serde_json::to_vec(&end).unwrap());
        out.push(b'\n');
        out
    }

    #[test]
    fn envelope_lines_json_spells_differently_verify_the_same() {
        let s = crate::bench::synthetic_bundle(40);
        let opts = Options {
            root_pub: s.root_pub,
            threads: 2,
            collect: false,
            progress: false,
            accept_version_1: false,
        };
        assert!(
            verify(&s.bundle[..], &opts).ok(),
            "the synthetic bundle verifies"
        );
        // Escaped slashes and reordered keys: the same lines to a JSON parser, so the same verdict.
        let text = String::from_utf8(s.bundle.clone()).unwrap();
        let mut respelled = String::new();
        for line in text.lines() {
            match line.strip_prefix(r#"{"type":"envelope","data":"#) {
                Some(rest) if line.contains('/') => {
                    respelled.push_str(r#"{"data":"#);
                    respelled.push_str(&rest[..rest.len() - 1].replace('/', r"\/"));
                    respelled.push_str(r#","type":"envelope"}"#);
                }
                _ => respelled.push_str(line),
            }
            respelled.push('\n');
        }
        assert_ne!(respelled, text, "some envelope has a '/' to escape");
        let outcome = verify(&reseal(respelled.as_bytes())[..], &opts);
        assert!(outcome.ok(), "{:?}", outcome.failures.first());
        assert_eq!(outcome.report["counts"]["envelopes_verified"], 40);
        // A damaged symbol in a plain line still fails as envelope_encoding, on its line.
        let damaged = text.replacen(
            r#"{"type":"envelope","data":"Q"#,
            r#"{"type":"envelope","data":"*"#,
            1,
        );
        let outcome = verify(&reseal(damaged.as_bytes())[..], &opts);
        let encoding: Vec<_> = outcome
            .failures
            .iter()
            .filter(|f| f.check == "envelope_encoding")
            .collect();
        assert_eq!(encoding.len(), 1, "{:?}", outcome.failures);
        assert_eq!(encoding[0].line, Some(5), "the first envelope line");
    }
}
