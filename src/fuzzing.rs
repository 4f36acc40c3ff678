//! Entry points of the fuzz targets (fuzz/fuzz_targets/*.rs) and of their stable replay test
//! (tests/fuzz_corpus_replays.rs), so both run exactly the same code on the same bytes.
//!
//! Each `fn target(data: &[u8])` feeds arbitrary bytes to one of the daemon's parsers or state
//! machines, the way hostile input reaches it, and panics only when a property the daemon relies
//! on fails (a crash is the bug the fuzzer looks for):
//!
//! | target | what it drives | properties beyond "no panic" |
//! |---|---|---|
//! | `sync_frame` | `Frame::decode` | a decoded frame re-encodes to the same bytes |
//! | `sync_session` | a `Session` fed a script of frames, timeouts, durable commits, local pushes | every frame it sends decodes and is ≤ 1 MiB; unstored bytes stay within the limit; nothing unverified is stored |
//! | `reconcile` | `reconcile::respond` and `Reconciler::reconcile` on arbitrary messages | re-encoding a decoded message is stable; replies decode and fit the limit |
//! | `envelope` | `Envelope::decode` + `envelope::verify` / `verify_batch` | decode∘encode is the identity; single and batch verification agree |
//! | `tombstone` | `Tombstone::decode` + `tombstone::verify` | decode∘encode is the identity |
//! | `checkpoint` | `tlog::parse_note`, `parse_body`, `tlog::verify`, `LogLeaf::decode`, `b64::decode` | parsed bodies (less extension lines), leaves and base64 re-encode to the same bytes |
//! | `audit_bundle` | `audit::bundle::Reader` + `audit::verify::verify` (32-byte root key ‖ bundle) | the bundle's own verdict is consistent |
//! | `control_request` | `protocol::parse_request`, `protocol::read_frame` | a parsed request is at our version, and serialises and parses again to the same operation |
//! | `authoring` | `authoring::first_change` on a JSON object (as records are written, with user text in their fields) | the chunk is Automerge's own for the same ops and reads back as the object; `first_change::new_document`, if it reads the chunk, reads what Automerge reads |
//!
//! The keys are fixed (a test network, `fuzz-net`, of offices `de` and `us`), so the seed
//! corpus (`seeds()`) holds validly signed values the fuzzer mutates from: envelopes, tombstones
//! and checkpoints that pass verification, whole sessions' worth of frames.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use consentd_sync::envelope::{self, Envelope};
use consentd_sync::frame::{Frame, Hello, SetKind, FRAME_BYTES_MAX, PROTOCOL_VERSION};
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::reconcile::{self, Message, Reconciler, RECON_MESSAGE_BYTES_MAX};
use consentd_sync::roster::{OfficeEntry, Roster, VerifiedRoster};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, Session, SessionConfig};
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use consentd_sync::tombstone::{self, Reason, Tombstone};
use consentd_sync::{b64, merkle};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every fuzz target: its name (the directory of its corpus) and its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("sync_frame", sync_frame),
    ("sync_session", sync_session),
    ("reconcile", reconcile),
    ("envelope", envelope),
    ("tombstone", tombstone),
    ("checkpoint", checkpoint),
    ("audit_bundle", audit_bundle),
    ("control_request", control_request),
    ("authoring", authoring),
];

pub const NETWORK: &str = "fuzz-net";
/// Our office (index 0) and the peer (index 1).
pub const OFFICES: [&str; 2] = ["de", "us"];

/// The fixed test network: root key, office signing keys, verified roster.
pub struct Net {
    pub root: SigningKey,
    pub signing: Vec<SigningKey>,
    pub roster: Arc<VerifiedRoster>,
}

/// The test network (built once; keys are fixed so seeds stay valid across runs).
pub fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| {
        let root = SigningKey::from_bytes(&[1; 32]);
        let mut roster = Roster::new(NETWORK).expect("valid network name");
        let mut signing = Vec::new();
        for (i, id) in OFFICES.iter().enumerate() {
            let s = SigningKey::from_bytes(&[10 + i as u8; 32]);
            let t = SigningKey::from_bytes(&[20 + i as u8; 32]);
            roster
                .add_office(OfficeEntry {
                    id: id.to_string(),
                    jurisdiction: ["DE", "US"][i].into(),
                    signing_key: hex::encode(s.verifying_key().as_bytes()),
                    transport_key: hex::encode(t.verifying_key().as_bytes()),
                    address: format!("127.0.0.1:{}", 7400 + i),
                    retired: false,
                })
                .expect("valid office");
            signing.push(s);
        }
        roster.serial = 1;
        let roster = roster
            .sign(&root)
            .expect("valid roster")
            .verify(&root.verifying_key())
            .expect("verifies");
        Net {
            root,
            signing,
            roster: Arc::new(roster),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Network frames and reconciliation.

/// `Frame::decode` on arbitrary bytes; a frame that decodes re-encodes to the same bytes
/// (decoding is exact: one frame, one encoding).
pub fn sync_frame(data: &[u8]) {
    if let Ok(f) = Frame::decode(data) {
        let again = f.encode();
        match f {
            // Unknown error codes decode as `Other` and unprintable text as `?`: compare the
            // decoded frames instead.
            Frame::Error { .. } => assert!(
                Frame::decode(&again).is_ok_and(|g| g == f),
                "error frame does not round-trip"
            ),
            _ => assert_eq!(again, data, "frame {} does not re-encode", f.kind_name()),
        }
    }
}

/// A small set the reconciliation target reconciles against: items derived from the input's
/// first byte, so both sides of a run see different sets.
fn recon_set(n: u8) -> ItemSet {
    let mut s = ItemSet::new();
    for i in 0..u64::from(n) * 3 {
        let id: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
        s.insert(Item::new(i * 7 % 50, id));
    }
    s
}

/// Reconciliation messages: decode∘encode is the identity, and both the stateless responder and
/// the initiator digest any message without panicking, answering within the size limit.
pub fn reconcile(data: &[u8]) {
    let Some((&n, msg)) = data.split_first() else {
        return;
    };
    if let Ok(m) = Message::decode(msg) {
        // Explicit skips (a trailing one, consecutive ones) are legal and re-encode implicitly,
        // so the bytes may shrink; the encoding itself is canonical.
        let canonical = m.encode();
        let again = Message::decode(&canonical).expect("our own encoding decodes");
        assert_eq!(again.encode(), canonical, "re-encoding is not stable");
    }
    let set = recon_set(n % 40);
    if let Ok(reply) = reconcile::respond(&set, msg) {
        assert!(reply.len() <= RECON_MESSAGE_BYTES_MAX);
        Message::decode(&reply).expect("our own reply decodes");
    }
    let mut r = Reconciler::new(64);
    let _ = r.initiate(&set);
    if let Ok(Some(next)) = r.reconcile(&set, msg) {
        assert!(next.len() <= RECON_MESSAGE_BYTES_MAX);
        Message::decode(&next).expect("our own message decodes");
    }
    assert!(r.have().len() + r.need().len() <= 64 + 32);
}

// ---------------------------------------------------------------------------------------------
// A session fed arbitrary frames.

/// What the session host holds: durable sets and blobs, with real verifiers.
#[derive(Default)]
struct Host {
    sets: [ItemSet; SetKind::COUNT],
    bytes: BTreeMap<(usize, [u8; 32]), Vec<u8>>,
    tombstoned: BTreeSet<[u8; 16]>,
}

impl Local for Host {
    fn offered(&self, _peer: &str, set: SetKind) -> Box<dyn SetView + '_> {
        Box::new(&self.sets[set.index()])
    }
    fn holds(&self, set: SetKind, item: &Item) -> bool {
        self.sets[set.index()].contains(item)
    }
    fn is_tombstoned(&self, doc_id: &[u8; 16]) -> bool {
        self.tombstoned.contains(doc_id)
    }
    fn verify_blob(&self, set: SetKind, blob: &[u8]) -> Result<BlobInfo, String> {
        verify_blob(set, blob)
    }
}

/// The daemon's blob verification (replicate.rs) for tombstones and keys, and checkpoint
/// verification (tlog) for checkpoints.
fn verify_blob(set: SetKind, blob: &[u8]) -> Result<BlobInfo, String> {
    let roster = &net().roster;
    match set {
        SetKind::Tombstones => {
            let t = Tombstone::decode(blob).map_err(|e| e.to_string())?;
            let hash = t.hash();
            let v = tombstone::verify(t, roster).map_err(|e| e.to_string())?;
            Ok(BlobInfo {
                item: Item::new(v.tombstone().time.max(0) as u64, hash),
                office: v.office().to_string(),
                covers_doc: Some(v.tombstone().doc_id),
            })
        }
        SetKind::Checkpoints => {
            let note = std::str::from_utf8(blob).map_err(|_| "not UTF-8".to_string())?;
            let v = tlog::verify(note, roster).map_err(|e| e.to_string())?;
            Ok(BlobInfo {
                item: Item::new(v.checkpoint.size, Sha256::digest(blob).into()),
                office: v.office,
                covers_doc: None,
            })
        }
        SetKind::Keys => {
            if blob.len() != 52 || &blob[..4] != b"CDK1" {
                return Err("malformed subject key".into());
            }
            let mut h = Sha256::new();
            h.update(b"consentd/key-item/v1");
            h.update(&blob[4..20]);
            Ok(BlobInfo {
                item: Item::new(0, h.finalize().into()),
                office: String::new(),
                covers_doc: None,
            })
        }
        SetKind::Envelopes => Err("envelopes are not blobs".into()),
    }
}

/// Small limits so that back-pressure and budgets are reachable from short inputs.
fn fuzz_limits() -> Limits {
    Limits {
        wants_in_flight_max: 2,
        want_ids_max: 8,
        want_bytes_max: 4_000,
        unstored_bytes_max: 8_000,
        push_unacked_bytes_max: 4_000,
        want_queue_items_max: 64,
        recon_items_max: 64,
        deferred_rounds_max: 3,
        outgoing_bytes_max: 64 * 1024,
        request_timeout: Duration::from_millis(800),
        resync_interval: Duration::from_millis(2_000),
        resync_min_interval: Duration::from_millis(200),
        clock_skew_max: consentd_sync::session::CLOCK_SKEW_MAX,
    }
}

fn hello(office: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        network: NETWORK.into(),
        office: office.into(),
        roster_serial: 1,
        wall_ms: 1_700_000_000_000,
    }
}

/// One step of a session script: `op: u8 ‖ len: u16 BE ‖ body`.
pub mod script {
    /// Hand the body to `handle_frame`.
    pub const FRAME: u8 = 0;
    /// Advance the clock by `body[0] × 100 ms` and fire due timeouts.
    pub const TICK: u8 = 1;
    /// Complete every pending durable commit (`stored`).
    pub const COMMIT: u8 = 2;
    /// `push_local(set = body[0] % 4, blob = body[1..])`.
    pub const PUSH: u8 = 3;
    /// A crash of the host: pending commits are lost and the session is dropped and replaced.
    pub const CRASH: u8 = 4;

    /// Encodes one step.
    pub fn step(op: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).expect("step ≤ 64 KiB");
        let mut out = vec![op];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }
}

/// A session (office `de`, peer `us`) driven by a script: `flags: u8` (bit 0: we dial; bit 1:
/// the harness does *not* send the peer's Hello first) followed by steps ([`script`]).
///
/// Checks: every frame the session sends decodes and is at most 1 MiB; the bytes received but not
/// yet durable never exceed the limit by more than one item; only verified items reach the host.
pub fn sync_session(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let base = Instant::now();
    let mut now_ms = 0u64;
    let limits = fuzz_limits();
    let new_session = || {
        let mut s = Session::new(SessionConfig {
            hello: hello(OFFICES[0]),
            peer: OFFICES[1].into(),
            dialer: flags & 1 == 1,
            roster: net().roster.clone(),
            limits: limits.clone(),
        });
        drain_out(&mut s);
        s
    };
    let mut host = Host::default();
    let mut sess = new_session();
    let mut pending = Vec::new();
    if flags & 2 == 0 {
        let _ = sess.handle_frame(base, &Frame::Hello(hello(OFFICES[1])).encode(), &host);
    }
    settle(&mut sess, &mut host, &mut pending);
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let now = base + Duration::from_millis(now_ms);
        match op % 5 {
            script::FRAME => {
                let _ = sess.handle_frame(now, body, &host);
            }
            script::TICK => {
                now_ms += u64::from(body.first().copied().unwrap_or(1)) * 100;
                let now = base + Duration::from_millis(now_ms);
                if sess.poll_timeout().is_some_and(|t| t <= now) {
                    sess.handle_timeout(now, &host);
                }
            }
            script::COMMIT => {
                for batch in pending.drain(..) {
                    apply(&mut host, &batch);
                    sess.stored(now, batch.id, &host);
                }
            }
            script::PUSH => {
                if let Some((&set, blob)) = body.split_first() {
                    sess.push_local(now, SetKind::ALL[usize::from(set) % 4], blob.to_vec());
                }
            }
            _ => {
                pending.clear();
                sess = new_session();
                if flags & 2 == 0 {
                    let _ =
                        sess.handle_frame(now, &Frame::Hello(hello(OFFICES[1])).encode(), &host);
                }
            }
        }
        settle(&mut sess, &mut host, &mut pending);
        let slack = consentd_sync::frame::BLOB_BYTES_MAX;
        assert!(
            sess.unstored_bytes() <= limits.unstored_bytes_max + slack,
            "{} bytes received and not durable",
            sess.unstored_bytes()
        );
    }
}

fn drain_out(s: &mut Session) {
    while let Some(f) = s.poll_transmit() {
        assert!(f.len() <= FRAME_BYTES_MAX, "sent a {} byte frame", f.len());
        Frame::decode(&f).expect("every frame we send decodes");
    }
}

fn settle(s: &mut Session, host: &mut Host, pending: &mut Vec<consentd_sync::session::StoreBatch>) {
    loop {
        let mut progress = false;
        while let Some(a) = s.poll_action() {
            progress = true;
            match a {
                Action::Store(b) => pending.push(b),
                Action::Fetch {
                    request, set, ids, ..
                } => {
                    let found = ids
                        .iter()
                        .filter_map(|id| Some((*id, host.bytes.get(&(set.index(), *id))?.clone())))
                        .collect();
                    s.fetched(request, found);
                }
                // The fuzzed host holds no logs: it answers a leaf request with nothing, as
                // the daemon does for a size no checkpoint it holds covers.
                Action::FetchLeaves { request, .. } => s.leaves_fetched(request, None),
                Action::Reject { .. } | Action::Synced { .. } | Action::Connected { .. } => {}
            }
        }
        while let Some(f) = s.poll_transmit() {
            progress = true;
            assert!(f.len() <= FRAME_BYTES_MAX, "sent a {} byte frame", f.len());
            Frame::decode(&f).expect("every frame we send decodes");
        }
        if !progress {
            return;
        }
    }
}

/// Stores a batch as the daemon would, re-checking that everything in it was verified.
fn apply(host: &mut Host, b: &consentd_sync::session::StoreBatch) {
    for v in &b.envelopes {
        // The session hands over only verified envelopes: verifying again must succeed.
        envelope::verify(v.envelope().clone(), &net().roster)
            .expect("the session stored an envelope that does not verify");
        let doc = v.doc_id();
        if host.tombstoned.contains(&doc) {
            continue;
        }
        let item = v.item();
        host.sets[SetKind::Envelopes.index()].insert(item);
        host.bytes
            .insert((SetKind::Envelopes.index(), item.id), v.envelope().encode());
    }
    for blob in &b.blobs {
        let info = verify_blob(b.set, &blob.bytes)
            .expect("the session stored a blob its verifier refuses");
        assert_eq!(info.item, blob.info.item);
        host.sets[b.set.index()].insert(info.item);
        host.bytes
            .insert((b.set.index(), info.item.id), blob.bytes.clone());
        if let Some(doc) = info.covers_doc {
            host.tombstoned.insert(doc);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signed formats.

/// Envelopes: decode∘encode is the identity; verification never panics, and single and batch
/// verification reach the same verdict, as does `check_batch` (which reads the change without
/// Automerge where it can), with the same op count and dependencies; the grouped batch equation
/// (`batch_sig`) agrees with ed25519-dalek's on the envelope's signature bytes.
pub fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    assert_eq!(env.encode(), data, "envelope does not re-encode");
    let roster = &net().roster;
    let single = envelope::verify(env.clone(), roster);
    let batch = envelope::verify_batch(vec![env.clone(), env.clone()], roster);
    for b in &batch {
        assert_eq!(
            single.as_ref().map(|v| v.hash()).map_err(|e| e.to_string()),
            b.as_ref().map(|v| v.hash()).map_err(|e| e.to_string()),
            "single and batch verification disagree"
        );
    }
    // The grouped batch equation gives ed25519-dalek's verdict on any bytes, not only on the
    // signatures the roster's offices make: over the signed message (the seeds' signatures
    // verify) and over the change itself (never signed).
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&env.signer) {
        let sig = ed25519_dalek::Signature::from_bytes(&env.signature);
        let signed = single
            .as_ref()
            .map(|v| envelope::signed_message(&env.doc_id, &v.hash()).to_vec())
            .unwrap_or_default();
        for messages in [[&signed[..], &signed[..]], [&signed[..], &env.change[..]]] {
            assert_eq!(
                consentd_sync::batch_sig::verify_batch(&messages, &[sig, sig], &[key, key]),
                ed25519_dalek::verify_batch(&messages, &[sig, sig], &[key, key]).is_ok(),
                "grouped and ed25519-dalek batch verification disagree"
            );
        }
    }
    for c in envelope::check_batch(vec![env], roster) {
        let want = single
            .as_ref()
            .map(|v| {
                let change = v.change().expect("a verified change expands");
                let deps: Vec<[u8; 32]> = change.deps().iter().map(|h| h.0).collect();
                assert_eq!(v.is_first(), deps.is_empty(), "first without expanding");
                (change.len(), deps, v.hash())
            })
            .map_err(|e| e.to_string());
        let got = c
            .as_ref()
            .map(|c| (c.ops(), c.deps().to_vec(), c.hash()))
            .map_err(|e| e.to_string());
        assert_eq!(want, got, "verify and check_batch disagree");
    }
    if let Ok(v) = single {
        assert!(envelope::actor_is_bound(
            v.change().expect("a verified change expands").actor_id(),
            &v.envelope().signer
        ));
    }
}

/// Tombstones: decode∘encode is the identity; verification never panics.
pub fn tombstone(data: &[u8]) {
    let Ok(t) = Tombstone::decode(data) else {
        return;
    };
    assert_eq!(t.encode(), data, "tombstone does not re-encode");
    if let Ok(v) = tombstone::verify(t, &net().roster) {
        assert!(OFFICES.contains(&v.office()));
    }
}

/// Checkpoints (C2SP signed notes), log leaves and base64: parse, verify, re-encode.
pub fn checkpoint(data: &[u8]) {
    if let Ok(leaf) = LogLeaf::decode(data).ok_or(()) {
        assert_eq!(&leaf.encode()[..], data, "log leaf does not re-encode");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(bytes) = b64::decode(text) {
        assert_eq!(b64::encode(&bytes), text, "base64 is not canonical");
    }
    if let Ok(note) = tlog::parse_note(text) {
        assert!(text.starts_with(note.text));
        if let Ok(cp) = tlog::parse_body(note.text) {
            // Extension lines after the root are allowed (C2SP tlog-checkpoint) and not kept.
            assert!(
                note.text.starts_with(&cp.body()),
                "checkpoint body does not re-encode"
            );
        }
    }
    if let Ok(v) = tlog::verify(text, &net().roster) {
        assert_eq!(v.note, text);
        assert!(OFFICES.contains(&v.office.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// The audit export format.

/// `root public key (32) ‖ bundle`: the bundle reader over every line, then the whole offline
/// verifier (every check) against that root key.
pub fn audit_bundle(data: &[u8]) {
    if data.len() < 32 {
        return;
    }
    let (key, bundle) = data.split_at(32);
    let mut reader = crate::audit::bundle::Reader::new(bundle);
    while let Ok(Some(line)) = reader.next_line() {
        let _ = serde_json::from_slice::<crate::audit::bundle::Line>(line);
    }
    let Ok(root_pub) = VerifyingKey::from_bytes(key.try_into().expect("32 bytes")) else {
        return;
    };
    let opts = crate::audit::verify::Options {
        root_pub,
        threads: 1,
        collect: true,
        progress: false,
        // Both header versions reach the checks after the header's.
        accept_version_1: true,
    };
    let outcome = crate::audit::verify::verify(bundle, &opts);
    assert_eq!(outcome.ok(), outcome.failures.is_empty());
    if outcome.ok() {
        assert!(outcome.verified.is_some(), "a clean bundle yields its data");
    }
}

// ---------------------------------------------------------------------------------------------
// Control-socket requests.

/// A control-socket payload: the daemon's one parse (request and version) and a framed read of
/// the same bytes. A parsed request is at our version, and serialises and parses back to the same
/// op.
pub fn control_request(data: &[u8]) {
    let parsed = crate::protocol::parse_request(data);
    if let Ok(frame) = &parsed {
        assert_eq!(
            frame.v,
            crate::protocol::PROTOCOL_VERSION,
            "parsed at another version"
        );
        let _ = frame.request.is_write();
        let again = serde_json::to_vec(frame).expect("requests serialise");
        let back = crate::protocol::parse_request(&again).expect("a serialised request parses");
        assert_eq!(back.request.op(), frame.request.op());
    }
    let _ = crate::protocol::read_frame(&mut &data[..], crate::protocol::REQUEST_BYTES_MAX);
}

/// `authoring`: bytes that parse as a JSON object are written as a new document's first change.
pub fn authoring(data: &[u8]) {
    let Ok(serde_json::Value::Object(root)) = serde_json::from_slice(data) else {
        return;
    };
    let actor = [7u8; 40];
    let Some(change) = consentd_sync::authoring::first_change(&actor, 1_700_000_000, &root) else {
        return;
    };
    assert!(
        consentd_sync::authoring::agrees_with_automerge(&actor, &change.bytes, &root),
        "the writer's chunk is not Automerge's, or does not read back as the object"
    );
    // The reader may leave the change to Automerge (it is stricter in places), never misread it.
    if let Some(read) = consentd_sync::first_change::new_document(&change.bytes) {
        assert!(
            consentd_sync::first_change::agrees_with_automerge(&change.bytes, &read),
            "the first-change reader reads the writer's change otherwise than Automerge"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: real encoded values for every target.

/// A one-change document authored by office `office` of the test network.
pub fn test_envelope(office: usize, doc_id: [u8; 16], time_ms: i64, n: u64) -> Envelope {
    use automerge::transaction::{CommitOptions, Transactable};
    let key = &net().signing[office];
    let actor = envelope::actor_for(&key.verifying_key(), [office as u8; 8]);
    let mut doc = automerge::Automerge::new().with_actor(actor);
    doc.transact_with::<_, _, automerge::AutomergeError, _>(
        |_| CommitOptions::default().with_time(time_ms),
        |tx| {
            tx.put(automerge::ROOT, "n", n)?;
            tx.put(automerge::ROOT, "doc", hex::encode(doc_id))?;
            Ok(())
        },
    )
    .expect("writes");
    let change = doc.get_last_local_change().expect("one change");
    envelope::sign(doc_id, &change, key)
}

/// A tombstone signed by `office` of the test network.
pub fn test_tombstone(office: usize, doc_id: [u8; 16], time: i64) -> Tombstone {
    Tombstone::sign(
        doc_id,
        vec![[7; 32], [3; 32]],
        Reason::Retention,
        "consent/proof:5y",
        time,
        &net().signing[office],
    )
    .expect("valid tombstone")
}

/// A checkpoint note signed by `office` over `leaves`.
pub fn test_checkpoint(office: usize, leaves: &[LogLeaf]) -> String {
    let hashes: Vec<merkle::Hash> = leaves.iter().map(LogLeaf::merkle_hash).collect();
    Checkpoint {
        origin: tlog::origin(NETWORK, OFFICES[office]),
        size: leaves.len() as u64,
        root: merkle::root(&hashes),
    }
    .sign(&net().signing[office])
}

/// Real encoded values for every target: (target, name, bytes). Written to fuzz/corpus by
/// `CONSENTD_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus_replays` and replayed by it always.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let peer = 1;
    let envs: Vec<Envelope> = (0..4u8)
        .map(|i| {
            test_envelope(
                peer,
                [i; 16],
                1_700_000_000_000 + i64::from(i),
                u64::from(i),
            )
        })
        .collect();
    let verified: Vec<_> = envs
        .iter()
        .map(|e| envelope::verify(e.clone(), &net().roster).expect("verifies"))
        .collect();
    let tomb = test_tombstone(peer, [2; 16], 1_700_000_100);
    let leaves: Vec<LogLeaf> = verified
        .iter()
        .map(|v| LogLeaf::envelope(v.doc_id(), v.hash()))
        .chain([LogLeaf::tombstone(tomb.doc_id, tomb.hash())])
        .collect();
    let note = test_checkpoint(peer, &leaves);
    let mut key_blob = b"CDK1".to_vec();
    key_blob.extend_from_slice(&[5; 16]);
    key_blob.extend_from_slice(&[6; 32]);

    // Envelopes, tombstones, checkpoints.
    for (i, e) in envs.iter().enumerate() {
        out.push(("envelope", format!("valid-{i}"), e.encode()));
    }
    out.push((
        "envelope",
        "ours".into(),
        test_envelope(0, [9; 16], 1, 1).encode(),
    ));
    out.push(("tombstone", "valid".into(), tomb.encode()));
    out.push((
        "tombstone",
        "ours".into(),
        test_tombstone(0, [8; 16], 5).encode(),
    ));
    out.push(("checkpoint", "note".into(), note.clone().into_bytes()));
    out.push((
        "checkpoint",
        "empty-log".into(),
        test_checkpoint(0, &[]).into_bytes(),
    ));
    out.push(("checkpoint", "leaf".into(), leaves[0].encode().to_vec()));
    out.push((
        "checkpoint",
        "base64".into(),
        b64::encode(&leaves[4].encode()).into_bytes(),
    ));

    // Frames: one of each kind, with real payloads.
    let items: Vec<Item> = verified.iter().map(|v| v.item()).collect();
    let set = {
        let mut s = ItemSet::new();
        for it in &items {
            s.insert(*it);
        }
        s
    };
    let query = Reconciler::new(64).initiate(&set);
    let reply = reconcile::respond(&recon_set(5), &query).expect("valid query");
    let frames = vec![
        ("hello", Frame::Hello(hello(OFFICES[1]))),
        (
            "recon-query",
            Frame::ReconQuery {
                set: SetKind::Envelopes,
                epoch: 1,
                round: 1,
                message: query.clone(),
            },
        ),
        (
            "recon-reply",
            Frame::ReconReply {
                set: SetKind::Envelopes,
                epoch: 1,
                round: 1,
                message: reply.clone(),
            },
        ),
        (
            "have",
            Frame::Have {
                set: SetKind::Envelopes,
                items: items.clone(),
            },
        ),
        (
            "want",
            Frame::Want {
                set: SetKind::Envelopes,
                request: 0,
                bytes_max: 4_000,
                ids: items.iter().map(|i| i.id).collect(),
            },
        ),
        (
            "items",
            Frame::Items {
                set: SetKind::Envelopes,
                request: 0,
                last: true,
                blobs: envs.iter().take(2).map(Envelope::encode).collect(),
                missing: vec![items[3].id],
            },
        ),
        (
            "push-envelope",
            Frame::Push {
                set: SetKind::Envelopes,
                seq: 0,
                blob: envs[0].encode(),
            },
        ),
        (
            "push-tombstone",
            Frame::Push {
                set: SetKind::Tombstones,
                seq: 1,
                blob: tomb.encode(),
            },
        ),
        (
            "push-checkpoint",
            Frame::Push {
                set: SetKind::Checkpoints,
                seq: 2,
                blob: note.clone().into_bytes(),
            },
        ),
        (
            "push-key",
            Frame::Push {
                set: SetKind::Keys,
                seq: 3,
                blob: key_blob.clone(),
            },
        ),
        (
            "ack",
            Frame::Ack {
                seqs: vec![0, 1, 2],
            },
        ),
        (
            "error",
            Frame::Error {
                code: consentd_sync::frame::ErrorCode::Protocol,
                text: "peer sent a malformed frame".into(),
            },
        ),
    ];
    for (name, f) in &frames {
        out.push(("sync_frame", name.to_string(), f.encode()));
    }
    out.push(("reconcile", "query".into(), [&[5u8][..], &query].concat()));
    out.push(("reconcile", "reply".into(), [&[0u8][..], &reply].concat()));

    // Session scripts.
    let f = |fr: &Frame| script::step(script::FRAME, &fr.encode());
    let commit = script::step(script::COMMIT, &[]);
    let tick = |n: u8| script::step(script::TICK, &[n]);
    let frame_named = |n: &str| &frames.iter().find(|(k, _)| *k == n).expect("named").1;
    let sessions: Vec<(&str, u8, Vec<Vec<u8>>)> = vec![
        (
            "pushes",
            0,
            vec![
                f(frame_named("push-envelope")),
                f(frame_named("push-tombstone")),
                f(frame_named("push-checkpoint")),
                f(frame_named("push-key")),
                commit.clone(),
                tick(10),
            ],
        ),
        (
            "have-want-items",
            0,
            vec![
                f(frame_named("have")),
                f(frame_named("items")),
                commit.clone(),
                tick(20),
                commit.clone(),
            ],
        ),
        (
            "recon-responder",
            0,
            vec![f(frame_named("recon-query")), tick(5)],
        ),
        (
            "dialer-round",
            1,
            vec![
                f(frame_named("recon-reply")),
                tick(10),
                f(frame_named("want")),
                tick(100),
            ],
        ),
        (
            "local-push-ack-crash",
            0,
            vec![
                script::step(
                    script::PUSH,
                    &[1u8]
                        .iter()
                        .chain(&envs[1].encode())
                        .copied()
                        .collect::<Vec<_>>(),
                ),
                f(&Frame::Ack { seqs: vec![0] }),
                f(frame_named("push-envelope")),
                script::step(script::CRASH, &[]),
                f(frame_named("push-envelope")),
                commit.clone(),
            ],
        ),
        (
            "no-hello",
            2,
            vec![f(frame_named("have")), f(frame_named("hello"))],
        ),
    ];
    for (name, flags, steps) in sessions {
        let mut bytes = vec![flags];
        for s in steps {
            bytes.extend_from_slice(&s);
        }
        out.push(("sync_session", name.into(), bytes));
    }

    // Audit bundles: root public key ‖ bundle.
    for n in [1usize, 3] {
        let syn = crate::bench::synthetic_bundle(n);
        let mut bytes = syn.root_pub.to_bytes().to_vec();
        bytes.extend_from_slice(&syn.bundle);
        out.push(("audit_bundle", format!("synthetic-{n}"), bytes));
    }

    // Control requests: every operation's shape.
    for (i, r) in [
        r#"{"v":1,"request":{"op":"consent.grant","subject":"a@b.co","purpose":"marketing","basis":"consent","service":"sms","evidence":"web form"}}"#,
        r#"{"v":1,"request":{"op":"consent.withdraw","subject":"+4915112345678","purpose":"marketing"}}"#,
        r#"{"v":1,"request":{"op":"consent.check","subject":"a@b.co","purpose":"marketing","at":"2026-01-01T00:00:00Z"}}"#,
        r#"{"v":1,"request":{"op":"consent.history","subject":"a@b.co"}}"#,
        r#"{"v":1,"request":{"op":"request.open","subject":"a@b.co","kind":"access","jurisdiction":"DE","received":"2026-01-05"}}"#,
        r#"{"v":1,"request":{"op":"request.list"}}"#,
        r#"{"v":1,"request":{"op":"transfer.list"}}"#,
        r#"{"v":1,"request":{"op":"status"}}"#,
        r#"{"v":1,"request":{"op":"peers"}}"#,
        r#"{"v":1,"request":{"op":"audit.export"}}"#,
        r#"{"v":1,"request":{"op":"audit.checkpoint"}}"#,
        r#"{"v":1,"request":{"op":"retention.run"}}"#,
        r#"{"v":1,"request":{"op":"import","records":[{"op":"consent grant","subject":"a@b.co","purpose":"m","basis":"consent"}]}}"#,
        r#"{"v":2,"request":{"op":"status"}}"#,
    ]
    .iter()
    .enumerate()
    {
        out.push(("control_request", format!("op-{i:02}"), r.as_bytes().to_vec()));
    }

    // Authoring: a record's document root as `Record::first_change` writes it, and small trees
    // of every value kind.
    for (i, tree) in [
        r#"{"type":"consent","id":"0123456789abcdef0123456789abcdef","subject":"cx1:AAAA","subject_kind":"email","person":"cx1:BBBB","purpose":"marketing","role":"controller","office":"de","minor":false,"events":[{"action":"grant","at":"2026-01-31T00:00:00Z","basis":"consent","service":"sms","office":"de"}]}"#,
        r#"{"a":1,"b":-1,"c":1.5,"d":null,"e":true,"f":"x","g":[null,[],{}],"h":{"i":{"j":[1,1,2]}}}"#,
        r#"{"l":["a","a","b","b","b","c"],"ü":"ünïcode"}"#,
    ]
    .iter()
    .enumerate()
    {
        out.push(("authoring", format!("tree-{i}"), tree.as_bytes().to_vec()));
    }
    out
}
