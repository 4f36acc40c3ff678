//! Signed change envelopes: the unit of replication.
//!
//! Every Automerge change travels as an [`Envelope`] signed by the office that authored it, and
//! every office verifies every envelope against the roster before storing or applying it. The only
//! way to obtain a [`VerifiedEnvelope`] is [`verify`] or [`verify_batch`].
//!
//! # Wire encoding (`CDE1`)
//!
//! | offset | length | field       | meaning                                                        |
//! |-------:|-------:|-------------|----------------------------------------------------------------|
//! |      0 |      4 | magic       | `b"CDE1"` (consentd envelope, version 1)                       |
//! |      4 |     16 | doc_id      | the record's random 128-bit document id                        |
//! |     20 |     32 | signer      | the authoring office's ed25519 signing public key              |
//! |     52 |     64 | signature   | ed25519 signature over the signed message (below)              |
//! |    116 |      4 | change_len  | length of `change`, u32 big-endian, at most [`MAX_CHANGE_BYTES`] |
//! |    120 |      n | change      | raw (uncompressed) Automerge change chunk                      |
//!
//! The encoding is exact: `decode` rejects a buffer shorter or longer than `120 + change_len`.
//!
//! # Signed message
//!
//! `b"consentd/envelope/v1\0" ‖ doc_id (16) ‖ change_hash (32)`. The Automerge change hash is
//! SHA-256 over the change including its dependencies' hashes, so the signature covers the change's
//! whole ancestry (DESIGN.md, "Change hashes are a Merkle DAG"). It also covers `extra_bytes`,
//! which is why the signature travels beside the change rather than inside it. `doc_id` is signed
//! so an envelope cannot be replayed into another document.
//!
//! # Actor binding
//!
//! An office's Automerge actor id is 40 bytes: its signing public key (32) ‖ an 8-byte incarnation,
//! random per daemon start (a restarted daemon must never reuse (actor, seq) pairs, and it does not
//! persist its last seq). A verified envelope's change was authored under an actor bound to the
//! key that signed it, so no office can author ops in another office's name.
//!
//! Automerge's `isolate`/`transaction_at` (editing at historical heads) author under a derived
//! actor (a magic prefix ‖ level ‖ the base actor), which is not bound in this sense: the daemon
//! must author only at the current heads, or its changes will be rejected by every peer.
//!
//! # Canonical bytes
//!
//! Automerge's change hash covers the chunk body but not the 4-byte checksum in the chunk header,
//! and a deflate-compressed chunk hashes the same as its uncompressed form. We accept only the
//! uncompressed chunk with a matching checksum, so each signed change has exactly one byte string
//! (and no decompression bomb is ever inflated). The header's length field is LEB128, which
//! Automerge already refuses in overlong form.
//!
//! Errors name the office, the document and the change hash (hex), never change content: the
//! content is personal data.

use std::fmt;
use std::sync::OnceLock;

use automerge::{ActorId, Change};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, SIGNATURE_LENGTH};
use rand::rngs::OsRng;
use rand::RngCore;

use crate::authoring::Authored;
use crate::roster::{Office, VerifiedRoster};

/// Magic prefix of an encoded envelope, version 1.
pub const MAGIC: [u8; 4] = *b"CDE1";
/// Bytes before the change: magic, doc id, signer, signature, change length.
pub const HEADER_LEN: usize = 4 + 16 + 32 + SIGNATURE_LENGTH + 4;
/// Largest change an envelope may carry. A consent record's change is ~110 bytes; this leaves room
/// for long evidence text while bounding what one peer can make another allocate and hash.
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;
/// Largest encoded envelope.
pub const MAX_ENVELOPE_BYTES: usize = HEADER_LEN + MAX_CHANGE_BYTES;
/// Domain separation for envelope signatures (office keys sign nothing else under this tag).
pub const ENVELOPE_SIGN_DOMAIN: &[u8] = b"consentd/envelope/v1\0";
/// Length of the signed message.
pub const SIGNED_MESSAGE_LEN: usize = ENVELOPE_SIGN_DOMAIN.len() + 16 + 32;
/// Length of an office's Automerge actor id: signing key ‖ incarnation.
pub const ACTOR_ID_LEN: usize = 32 + INCARNATION_LEN;
/// Length of the per-start incarnation suffix of an actor id.
pub const INCARNATION_LEN: usize = 8;
/// Envelopes verified per batch signature check ([`crate::batch_sig::verify_batch`]). Batching
/// saves ~half the cost per signature (about three quarters for one signer, whose key terms
/// group into one); bounding the batch bounds the work wasted when a batch fails and every
/// member is re-verified one by one to find the culprit.
pub const MAX_VERIFY_BATCH: usize = 64;

/// Automerge chunk header: magic (4) ‖ checksum (4) ‖ chunk type (1) ‖ LEB128 length.
const AUTOMERGE_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_TYPE_OFFSET: usize = 8;
const CHUNK_TYPE_CHANGE: u8 = 1;
const CHECKSUM_RANGE: std::ops::Range<usize> = 4..8;

/// An envelope as received: nothing in it has been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    pub doc_id: [u8; 16],
    /// The authoring office's ed25519 signing public key.
    pub signer: [u8; 32],
    pub signature: [u8; SIGNATURE_LENGTH],
    /// Raw Automerge change chunk bytes.
    pub change: Vec<u8>,
}

/// Hand-written so that logging an envelope never prints change content (personal data).
impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("doc_id", &hex::encode(self.doc_id))
            .field("signer", &hex::encode(self.signer))
            .field("change_len", &self.change.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is truncated: {actual} bytes, expected {expected}")]
    Truncated { expected: usize, actual: usize },

    #[error("envelope has {extra} trailing bytes after the change")]
    TrailingBytes { extra: usize },

    #[error("not a consentd envelope (bad magic; expected CDE1)")]
    BadMagic,

    #[error("envelope change is {len} bytes; at most {max} are allowed")]
    ChangeTooLarge { len: usize, max: usize },

    #[error("envelope for doc {doc} is signed by {signer}, which is not an office in the roster")]
    UnknownSigner { doc: String, signer: String },

    #[error("envelope from office {office} for doc {doc} does not carry a valid Automerge change: {reason}")]
    MalformedChange {
        office: String,
        doc: String,
        reason: String,
    },

    #[error("envelope from office {office} for doc {doc} carries a non-canonical change encoding: {reason}")]
    NonCanonicalChange {
        office: String,
        doc: String,
        reason: &'static str,
    },

    #[error(
        "envelope from office {office} for doc {doc}: change {hash} was authored by actor {actor}, which is not bound to that office's key"
    )]
    ActorNotBound {
        office: String,
        doc: String,
        hash: String,
        actor: String,
    },

    #[error(
        "envelope from office {office} for doc {doc}: signature over change {hash} does not verify"
    )]
    BadSignature {
        office: String,
        doc: String,
        hash: String,
    },
}

impl Envelope {
    /// Encodes per the table in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(
            self.change.len() <= MAX_CHANGE_BYTES,
            "encoding an envelope whose change ({} bytes) every peer will reject",
            self.change.len()
        );
        let len = u32::try_from(self.change.len())
            .expect("change length fits in u32 (MAX_CHANGE_BYTES is far below u32::MAX)");
        let mut out = Vec::with_capacity(HEADER_LEN + self.change.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.doc_id);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.change);
        debug_assert_eq!(out.len(), HEADER_LEN + self.change.len(), "header layout");
        out
    }

    /// Decodes exactly one envelope occupying all of `bytes`. Checks framing only; see [`verify`].
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < HEADER_LEN {
            return Err(EnvelopeError::Truncated {
                expected: HEADER_LEN,
                actual: bytes.len(),
            });
        }
        let (magic, rest) = bytes.split_at(4);
        if magic != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        let (doc_id, rest) = rest.split_at(16);
        let (signer, rest) = rest.split_at(32);
        let (signature, rest) = rest.split_at(SIGNATURE_LENGTH);
        let (len, change) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("split_at(4)")) as usize;
        if len > MAX_CHANGE_BYTES {
            return Err(EnvelopeError::ChangeTooLarge {
                len,
                max: MAX_CHANGE_BYTES,
            });
        }
        if change.len() < len {
            return Err(EnvelopeError::Truncated {
                expected: HEADER_LEN + len,
                actual: bytes.len(),
            });
        }
        if change.len() > len {
            return Err(EnvelopeError::TrailingBytes {
                extra: change.len() - len,
            });
        }
        Ok(Envelope {
            doc_id: doc_id.try_into().expect("split_at(16)"),
            signer: signer.try_into().expect("split_at(32)"),
            signature: signature.try_into().expect("split_at(64)"),
            change: change.to_vec(),
        })
    }
}

/// An envelope whose signer is a roster office, whose change parses, is canonically encoded and
/// was authored under that office's actor, and whose signature verifies. Only [`verify`] and
/// [`verify_batch`] make one.
///
/// The change is checked as [`check_batch`] checks it, without expanding it into Automerge's
/// `Change`, which is made on first use ([`VerifiedEnvelope::change`]): a cold sync's receiver
/// reads a record that arrives whole straight from the chunk (`first_change::new_document`) and
/// never needs it. Expanding every change when it was verified was 8 % of the receiver's
/// authoring threads' CPU (thirty-third session).
#[derive(Clone)]
pub struct VerifiedEnvelope {
    envelope: Envelope,
    /// Automerge's expansion: made by the verification when the change reader did not vouch for
    /// the change, else on first use.
    change: OnceLock<Change>,
    hash: [u8; 32],
    /// The change's authoring time (`Change::timestamp`).
    time: i64,
    /// The change has no dependencies (`Change::deps`): it starts its document.
    first: bool,
    office: String,
}

impl fmt::Debug for VerifiedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedEnvelope")
            .field("office", &self.office)
            .field("doc_id", &hex::encode(self.envelope.doc_id))
            .field("hash", &hex::encode(self.hash))
            .finish_non_exhaustive()
    }
}

impl VerifiedEnvelope {
    pub fn doc_id(&self) -> [u8; 16] {
        self.envelope.doc_id
    }

    /// The Automerge change hash (the envelope's id for storage and reconciliation).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Automerge's `Change`, expanded from the bytes on first use. `None` only if the change
    /// reader's contract were broken (`change_chunk.rs`; debug builds check it on every
    /// verification).
    pub fn change(&self) -> Option<&Change> {
        if self.change.get().is_none() {
            let _ = self.change.set(expand(&self.envelope.change, &self.hash)?);
        }
        self.change.get()
    }

    /// The change has no dependencies: it is its document's first (read without expanding it).
    pub fn is_first(&self) -> bool {
        self.first
    }

    /// [`VerifiedEnvelope::change`], taken.
    pub fn into_change(self) -> Option<Change> {
        let VerifiedEnvelope {
            envelope,
            change,
            hash,
            ..
        } = self;
        change
            .into_inner()
            .or_else(|| expand(&envelope.change, &hash))
    }

    /// Id of the office that authored and signed the change.
    pub fn office(&self) -> &str {
        &self.office
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The envelope as an item of the replicated envelope set: [`item_time`] of its record and
    /// change, and its hash. Every office derives the same item from the same envelope, which is
    /// what reconciliation needs.
    pub fn item(&self) -> crate::item::Item {
        let change_secs = self.time.max(0) as u64;
        crate::item::Item::new(item_time(&self.envelope.doc_id, change_secs), self.hash)
    }
}

/// Automerge's expansion of a change chunk already checked to have hash `hash`.
fn expand(bytes: &[u8], hash: &[u8; 32]) -> Option<Change> {
    let change = Change::try_from(bytes).ok();
    debug_assert!(
        change.as_ref().is_some_and(|c| c.hash().0 == *hash),
        "a checked envelope's change does not parse to its hash"
    );
    change
}

/// An envelope's timestamp in the replicated envelope set (sync protocol version 2), in
/// milliseconds, from signed bytes only: the record id's millisecond (its first 6 bytes,
/// big-endian, as consentd makes ids) when the change was authored in that same second, which
/// is the record's creating change; otherwise the change's authoring second × 1000.
///
/// Why not the authoring second alone (version 1): items sort by (timestamp, hash), so the
/// records written within one second came in hash order, and a cold sync's receiver wrote its
/// id-keyed tables (`changes`, `projections`, `doc_meta`, `kinds`) at random within that second:
/// 2.2× the bytes and 1.6× the CPU of a commit in id order (`storage/examples/commit_cost.rs`,
/// `shuffled`). By millisecond, a sync's batches are runs of adjacent records: at 100,000 records
/// the receiver's writer wrote 286 MB instead of 767-808, and the sync took 17-21 % less time
/// (BENCHMARKS.md, twenty-fourth session). Later changes keep the second: their record's id says nothing about when they
/// were written.
pub fn item_time(doc_id: &[u8; 16], change_secs: u64) -> u64 {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&doc_id[..6]);
    let id_ms = u64::from_be_bytes(ms);
    if id_ms / 1000 == change_secs {
        id_ms
    } else {
        change_secs.saturating_mul(1000)
    }
}

/// The Automerge actor id for an office: its signing key ‖ `incarnation`.
pub fn actor_for(signer: &VerifyingKey, incarnation: [u8; INCARNATION_LEN]) -> ActorId {
    let mut bytes = [0u8; ACTOR_ID_LEN];
    bytes[..32].copy_from_slice(signer.as_bytes());
    bytes[32..].copy_from_slice(&incarnation);
    ActorId::from(bytes)
}

/// A fresh random incarnation, drawn once per daemon start.
pub fn new_incarnation() -> [u8; INCARNATION_LEN] {
    let mut out = [0u8; INCARNATION_LEN];
    OsRng.fill_bytes(&mut out);
    out
}

/// Whether `actor` is bound to `signer` (40 bytes, the first 32 of which are the key).
pub fn actor_is_bound(actor: &ActorId, signer: &[u8; 32]) -> bool {
    actor_bytes_bound(actor.to_bytes(), signer)
}

/// [`actor_is_bound`] for an actor id's bytes.
fn actor_bytes_bound(actor: &[u8], signer: &[u8; 32]) -> bool {
    actor.len() == ACTOR_ID_LEN && actor[..32] == signer[..]
}

/// The exact bytes an office signs for a change in `doc_id`.
pub fn signed_message(doc_id: &[u8; 16], change_hash: &[u8; 32]) -> [u8; SIGNED_MESSAGE_LEN] {
    let mut msg = [0u8; SIGNED_MESSAGE_LEN];
    let (domain, rest) = msg.split_at_mut(ENVELOPE_SIGN_DOMAIN.len());
    domain.copy_from_slice(ENVELOPE_SIGN_DOMAIN);
    rest[..16].copy_from_slice(doc_id);
    rest[16..].copy_from_slice(change_hash);
    msg
}

/// Signs a change this office authored.
///
/// The caller guarantees the change was authored under [`actor_for`]`(key, _)` and is at most
/// [`MAX_CHANGE_BYTES`]; [`try_sign`] checks both instead. Automerge produces uncompressed chunks
/// with a valid checksum, which is the canonical form [`verify`] requires.
pub fn sign(doc_id: [u8; 16], change: &Change, key: &SigningKey) -> Envelope {
    debug_assert!(
        actor_is_bound(change.actor_id(), &key.verifying_key().to_bytes()),
        "signing a change whose actor is not bound to this office's key: every peer will reject it"
    );
    sign_chunk(doc_id, change.raw_bytes().to_vec(), change.hash().0, key)
}

/// [`sign`] for a first change [`crate::authoring`] wrote, given as its bytes and hash (no
/// Automerge `Change` is made for it). The same guarantees are the caller's, and debug builds
/// check them the same way, plus that the hash is the chunk's.
pub fn sign_authored(doc_id: [u8; 16], change: Authored, key: &SigningKey) -> Envelope {
    debug_assert!(
        Change::try_from(&change.bytes[..]).is_ok_and(|c| c.hash().0 == change.hash
            && actor_is_bound(c.actor_id(), &key.verifying_key().to_bytes())),
        "signing an authored change whose hash is not its own or whose actor is not bound to \
         this office's key: every peer will reject it"
    );
    sign_chunk(doc_id, change.bytes, change.hash, key)
}

/// The envelope of a change chunk (`bytes`, whose change hash is `hash`) signed by `key`: what
/// [`sign`] and [`sign_authored`] share once each has checked its own input.
fn sign_chunk(doc_id: [u8; 16], bytes: Vec<u8>, hash: [u8; 32], key: &SigningKey) -> Envelope {
    debug_assert!(
        bytes.len() <= MAX_CHANGE_BYTES,
        "signing a change larger than MAX_CHANGE_BYTES: every peer will reject it"
    );
    debug_assert!(
        canonical_encoding_problem(&bytes, &hash).is_none(),
        "signing a chunk that is not the canonical uncompressed change"
    );
    Envelope {
        doc_id,
        signer: key.verifying_key().to_bytes(),
        signature: key.sign(&signed_message(&doc_id, &hash)).to_bytes(),
        change: bytes,
    }
}

/// [`sign`], but refusing (instead of debug-asserting) a change no peer would accept: too large, or
/// authored under an actor not bound to `key`. For callers whose change size depends on user input.
pub fn try_sign(
    doc_id: [u8; 16],
    change: &Change,
    key: &SigningKey,
) -> Result<Envelope, EnvelopeError> {
    let signer = key.verifying_key().to_bytes();
    let len = change.raw_bytes().len();
    if len > MAX_CHANGE_BYTES {
        return Err(EnvelopeError::ChangeTooLarge {
            len,
            max: MAX_CHANGE_BYTES,
        });
    }
    if !actor_is_bound(change.actor_id(), &signer) {
        return Err(EnvelopeError::ActorNotBound {
            office: hex::encode(signer),
            doc: hex::encode(doc_id),
            hash: hex::encode(change.hash().0),
            actor: change.actor_id().to_hex_string(),
        });
    }
    Ok(sign(doc_id, change, key))
}

/// Verifies one envelope against the roster.
pub fn verify(env: Envelope, roster: &VerifiedRoster) -> Result<VerifiedEnvelope, EnvelopeError> {
    precheck(env, roster)?.verify_single()
}

/// Verifies many envelopes, in order, with batch signature verification as the fast path.
///
/// Each run of up to [`MAX_VERIFY_BATCH`] envelopes that pass the non-signature checks is verified
/// with one [`crate::batch_sig::verify_batch`] call (ed25519-dalek's batch equation and verdict,
/// with equal signers' terms grouped); if that fails, its members are verified one by one
/// so that exactly the bad ones are reported.
///
/// Batch verification agrees with single (strict) verification on every signature produced by
/// ed25519 signing. They can disagree only on a signature deliberately built with a small-order
/// component in R, which only the holder of the signing key can make, i.e. a roster office,
/// about its own envelopes; roster keys themselves are checked to be torsion-free.
pub fn verify_batch(
    envs: Vec<Envelope>,
    roster: &VerifiedRoster,
) -> Vec<Result<VerifiedEnvelope, EnvelopeError>> {
    verify_all(envs, roster, precheck)
}

/// Every check of [`verify_batch`], in the same order and with the same errors, for a reader that
/// needs each change's facts but not Automerge's expanded `Change`: an auditor verifying a bundle.
///
/// The change is read by [`crate::change_chunk::read`], which walks every op column without
/// allocating and vouches only for changes Automerge accepts; a change it does not vouch for is
/// parsed by Automerge, whose verdict stands. So an envelope passes here exactly when it passes
/// [`verify_batch`]. In `consentd bench`'s audit profile the expansion this skips was 28 % of the
/// verifier's CPU.
pub fn check_batch(
    envs: Vec<Envelope>,
    roster: &VerifiedRoster,
) -> Vec<Result<CheckedEnvelope, EnvelopeError>> {
    verify_all(envs, roster, precheck_unexpanded)
}

/// An envelope checked exactly as [`verify_batch`] checks one (roster signer, a canonical
/// uncompressed change that Automerge accepts, authored under the signer's actor, a signature that
/// verifies), with its change left as bytes. Only [`check_batch`] makes one.
pub struct CheckedEnvelope {
    envelope: Envelope,
    hash: [u8; 32],
    /// The signing office's roster position.
    office: u8,
    ops: usize,
    deps: Vec<[u8; 32]>,
}

impl fmt::Debug for CheckedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedEnvelope")
            .field("office", &self.office)
            .field("doc_id", &hex::encode(self.envelope.doc_id))
            .field("hash", &hex::encode(self.hash))
            .finish_non_exhaustive()
    }
}

impl CheckedEnvelope {
    pub fn doc_id(&self) -> [u8; 16] {
        self.envelope.doc_id
    }

    /// The Automerge change hash, recomputed from the bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The roster position of the office that authored and signed the change
    /// ([`VerifiedRoster::office_at`]).
    pub fn office_index(&self) -> u8 {
        self.office
    }

    /// The raw change chunk.
    pub fn change_bytes(&self) -> &[u8] {
        &self.envelope.change
    }

    /// Number of ops in the change (`Change::len`).
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// The change's dependencies' hashes (`Change::deps`).
    pub fn deps(&self) -> &[[u8; 32]] {
        &self.deps
    }

    /// The change as Automerge's `Change`, for a reader that needs its ops. `None` only if the
    /// change reader's contract were broken (debug builds assert it on every check).
    pub fn expand(&self) -> Option<Change> {
        expand(&self.envelope.change, &self.hash)
    }
}

/// Prechecks each envelope, then verifies the signatures of those that passed in runs of
/// [`MAX_VERIFY_BATCH`].
fn verify_all<'r, T>(
    envs: Vec<Envelope>,
    roster: &'r VerifiedRoster,
    precheck: fn(Envelope, &'r VerifiedRoster) -> Result<Pending<'r, T>, EnvelopeError>,
) -> Vec<Result<T, EnvelopeError>> {
    let mut results: Vec<Option<Result<T, EnvelopeError>>> = Vec::new();
    results.resize_with(envs.len(), || None);
    let mut pending: Vec<(usize, Pending<'r, T>)> = Vec::with_capacity(MAX_VERIFY_BATCH);
    for (i, env) in envs.into_iter().enumerate() {
        match precheck(env, roster) {
            Ok(checked) => pending.push((i, checked)),
            Err(e) => results[i] = Some(Err(e)),
        }
        if pending.len() == MAX_VERIFY_BATCH {
            verify_chunk(&mut pending, &mut results);
        }
    }
    verify_chunk(&mut pending, &mut results);
    results
        .into_iter()
        .map(|r| r.expect("every envelope gets a result: a precheck error or a chunk verdict"))
        .collect()
}

/// Verifies and drains `pending` into `results`.
fn verify_chunk<T>(
    pending: &mut Vec<(usize, Pending<'_, T>)>,
    results: &mut [Option<Result<T, EnvelopeError>>],
) {
    if pending.is_empty() {
        return;
    }
    let messages: Vec<&[u8]> = pending.iter().map(|(_, p)| &p.message[..]).collect();
    let signatures: Vec<Signature> = pending.iter().map(|(_, p)| p.signature).collect();
    let keys: Vec<VerifyingKey> = pending.iter().map(|(_, p)| p.key).collect();
    let batch_ok = crate::batch_sig::verify_batch(&messages, &signatures, &keys);
    for (i, checked) in pending.drain(..) {
        debug_assert!(results[i].is_none(), "envelope {i} verified twice");
        results[i] = Some(if batch_ok {
            Ok(checked.value)
        } else {
            checked.verify_single()
        });
    }
}

/// An envelope that passed every check except the signature (as `value`, what it becomes once
/// the signature verifies), with what the signature check and its error need.
struct Pending<'r, T> {
    value: T,
    office: &'r str,
    doc: [u8; 16],
    hash: [u8; 32],
    key: VerifyingKey,
    signature: Signature,
    message: [u8; SIGNED_MESSAGE_LEN],
}

impl<'r, T> Pending<'r, T> {
    /// `doc` and `signature` are the envelope's (copied out before `value` takes it).
    fn new(
        value: T,
        office: &'r Office,
        doc: [u8; 16],
        signature: &[u8; SIGNATURE_LENGTH],
        hash: [u8; 32],
    ) -> Pending<'r, T> {
        Pending {
            value,
            office: &office.id,
            doc,
            hash,
            key: office.signing_key,
            signature: Signature::from_bytes(signature),
            message: signed_message(&doc, &hash),
        }
    }

    fn verify_single(self) -> Result<T, EnvelopeError> {
        // Strict: rejects small-order R and non-canonical S, so one change has one valid signature
        // encoding per key (no malleated duplicates in storage).
        match self.key.verify_strict(&self.message, &self.signature) {
            Ok(()) => Ok(self.value),
            Err(_) => Err(EnvelopeError::BadSignature {
                office: self.office.to_string(),
                doc: hex::encode(self.doc),
                hash: hex::encode(self.hash),
            }),
        }
    }
}

/// All checks except the signature, cheapest first so junk from unknown keys costs little.
fn precheck(
    env: Envelope,
    roster: &VerifiedRoster,
) -> Result<Pending<'_, VerifiedEnvelope>, EnvelopeError> {
    let (_, office) = signer_of(&env, roster)?;
    let change = OnceLock::new();
    let (hash, time, first) = match read_change(&env, office)? {
        Read::Vouched(facts) => (facts.hash, facts.time, facts.deps().len() == 0),
        Read::Expanded(expanded) => {
            let facts = (
                expanded.hash().0,
                expanded.timestamp(),
                expanded.deps().is_empty(),
            );
            let _ = change.set(*expanded);
            facts
        }
    };
    let (doc, signature) = (env.doc_id, env.signature);
    let value = VerifiedEnvelope {
        envelope: env,
        change,
        hash,
        time,
        first,
        office: office.id.clone(),
    };
    Ok(Pending::new(value, office, doc, &signature, hash))
}

/// [`precheck`]'s checks for [`check_batch`].
fn precheck_unexpanded(
    env: Envelope,
    roster: &VerifiedRoster,
) -> Result<Pending<'_, CheckedEnvelope>, EnvelopeError> {
    let (index, office) = signer_of(&env, roster)?;
    let (hash, ops, deps) = match read_change(&env, office)? {
        Read::Vouched(facts) => (facts.hash, facts.ops, facts.deps().collect()),
        Read::Expanded(change) => (
            change.hash().0,
            change.len(),
            change.deps().iter().map(|h| h.0).collect(),
        ),
    };
    let (doc, signature) = (env.doc_id, env.signature);
    let value = CheckedEnvelope {
        envelope: env,
        hash,
        office: index,
        ops,
        deps,
    };
    Ok(Pending::new(value, office, doc, &signature, hash))
}

/// The checks before the change is parsed: a roster office's key signed it, it is within the
/// size limit, and it is not a compressed chunk. The office and its roster position.
fn signer_of<'r>(
    env: &Envelope,
    roster: &'r VerifiedRoster,
) -> Result<(u8, &'r Office), EnvelopeError> {
    let doc = || hex::encode(env.doc_id);
    let (index, office) = roster
        .index_by_signer(&env.signer)
        .and_then(|i| Some((i, roster.office_at(i)?)))
        .ok_or_else(|| EnvelopeError::UnknownSigner {
            doc: doc(),
            signer: hex::encode(env.signer),
        })?;
    debug_assert_eq!(
        office.signing_key.as_bytes(),
        &env.signer,
        "roster index maps a signer to another office's key"
    );
    if env.change.len() > MAX_CHANGE_BYTES {
        return Err(EnvelopeError::ChangeTooLarge {
            len: env.change.len(),
            max: MAX_CHANGE_BYTES,
        });
    }
    // Before parsing: a compressed chunk would be inflated by the parser, unbounded.
    if env.change.get(CHUNK_TYPE_OFFSET) != Some(&CHUNK_TYPE_CHANGE)
        && env.change.get(..4) == Some(&AUTOMERGE_MAGIC[..])
    {
        return Err(EnvelopeError::NonCanonicalChange {
            office: office.id.clone(),
            doc: doc(),
            reason: "not an uncompressed change chunk",
        });
    }
    Ok((index, office))
}

/// An envelope's change as read by [`read_change`].
enum Read<'e> {
    /// Read by [`crate::change_chunk`], which vouches that Automerge accepts it.
    Vouched(crate::change_chunk::ChunkFacts<'e>),
    /// Expanded by Automerge, where that reader does not vouch for it (boxed: a `Change` is
    /// several times the size of the facts).
    Expanded(Box<Change>),
}

/// Reads the envelope's change and checks it (canonical bytes, the signer's actor), with
/// [`crate::change_chunk`], or Automerge where that reader does not vouch for it. Either way
/// the hash is recomputed from the bytes: we never trust a hash someone else computed.
fn read_change<'e>(env: &'e Envelope, office: &Office) -> Result<Read<'e>, EnvelopeError> {
    match crate::change_chunk::read(&env.change) {
        Some(facts) => {
            debug_assert!(
                crate::change_chunk::agrees_with_automerge(&env.change, &facts),
                "change_chunk vouched for a change that Automerge refuses or reads otherwise"
            );
            check_parsed(env, office, &facts.hash, facts.actor)?;
            Ok(Read::Vouched(facts))
        }
        None => {
            let change = parse(env, office)?;
            check_parsed(env, office, &change.hash().0, change.actor_id().to_bytes())?;
            Ok(Read::Expanded(Box::new(change)))
        }
    }
}

/// Automerge's parse of the envelope's change (which recomputes the hash from the bytes).
fn parse(env: &Envelope, office: &Office) -> Result<Change, EnvelopeError> {
    Change::try_from(&env.change[..]).map_err(|e| EnvelopeError::MalformedChange {
        office: office.id.clone(),
        doc: hex::encode(env.doc_id),
        reason: e.to_string(),
    })
}

/// The checks once the change is parsed, given its recomputed `hash` and its `actor`'s bytes:
/// canonical bytes, and an actor bound to the signer.
fn check_parsed(
    env: &Envelope,
    office: &Office,
    hash: &[u8; 32],
    actor: &[u8],
) -> Result<(), EnvelopeError> {
    if let Some(reason) = canonical_encoding_problem(&env.change, hash) {
        return Err(EnvelopeError::NonCanonicalChange {
            office: office.id.clone(),
            doc: hex::encode(env.doc_id),
            reason,
        });
    }
    // Only the change's author matters: `other_actor_ids` are actors whose ops this change
    // references (e.g. as predecessors), not actors it writes as.
    if !actor_bytes_bound(actor, &env.signer) {
        return Err(EnvelopeError::ActorNotBound {
            office: office.id.clone(),
            doc: hex::encode(env.doc_id),
            hash: hex::encode(hash),
            actor: hex::encode(actor),
        });
    }
    Ok(())
}

/// Why `bytes` (already parsed by Automerge into a change with `hash`) is not the one canonical
/// encoding of that change, if it is not.
fn canonical_encoding_problem(bytes: &[u8], hash: &[u8; 32]) -> Option<&'static str> {
    if bytes.get(..4) != Some(&AUTOMERGE_MAGIC[..]) {
        return Some("missing Automerge chunk magic");
    }
    if bytes.get(CHUNK_TYPE_OFFSET) != Some(&CHUNK_TYPE_CHANGE) {
        return Some("not an uncompressed change chunk");
    }
    // Automerge's parser does not check the header checksum, which is outside the hash.
    if bytes[CHECKSUM_RANGE] != hash[..4] {
        return Some("chunk checksum does not match the change hash");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use crate::roster::tests::roster_with;
    use crate::roster::{Roster, VerifiedRoster};
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    struct Net {
        roster: VerifiedRoster,
        keys: Vec<SigningKey>,
    }

    fn net(ids: &[&str]) -> Net {
        let root = generate();
        let (roster, keys): (Roster, _) = roster_with(ids);
        let roster = roster
            .sign(&root)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
        Net { roster, keys }
    }

    /// A record id made at `ms` (consentd's layout: 6 bytes of milliseconds, then random).
    fn id_at(ms: u64, tail: u8) -> [u8; 16] {
        let mut id = [tail; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        id
    }

    #[test]
    fn an_envelope_item_is_timed_by_its_record_id_only_in_the_ids_own_second() {
        let id = id_at(1_764_800_000_123, 7);
        assert_eq!(
            item_time(&id, 1_764_800_000),
            1_764_800_000_123,
            "creating change"
        );
        assert_eq!(
            item_time(&id, 1_764_800_061),
            1_764_800_061_000,
            "a later change"
        );
        assert_eq!(
            item_time(&id, 1_764_799_999),
            1_764_799_999_000,
            "an earlier clock"
        );
        assert_eq!(item_time(&id, u64::MAX), u64::MAX, "saturates, no overflow");
        assert_eq!(item_time(&[0; 16], 0), 0);
    }

    /// Why version 2 times items by millisecond: a sync sends items in order, and the records
    /// written within one second must come in the order of their ids (version 1: hash order).
    #[test]
    fn records_created_within_one_second_sort_as_items_in_id_order() {
        let second = 1_764_800_000u64;
        let mut items: Vec<(crate::item::Item, [u8; 16])> = (0..500u64)
            .map(|i| {
                let id = id_at(second * 1000 + i * 2, (i % 251) as u8);
                let mut hash = [0u8; 32];
                OsRng.fill_bytes(&mut hash);
                (crate::item::Item::new(item_time(&id, second), hash), id)
            })
            .collect();
        items.sort();
        let ids: Vec<[u8; 16]> = items.iter().map(|(_, id)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    /// A real change authored under `actor_key`'s actor, putting `value` at ROOT.
    fn change_as(actor_key: &VerifyingKey, value: &str) -> Change {
        let mut doc = Automerge::new().with_actor(actor_for(actor_key, new_incarnation()));
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "purpose", value)?;
            tx.put(ROOT, "subject", "tok-123")?;
            Ok(())
        })
        .unwrap();
        doc.get_last_local_change().unwrap()
    }

    fn envelope(key: &SigningKey, doc_id: [u8; 16], value: &str) -> Envelope {
        sign(doc_id, &change_as(&key.verifying_key(), value), key)
    }

    #[test]
    fn sign_encode_decode_verify() {
        let n = net(&["us", "de"]);
        let change = change_as(&n.keys[1].verifying_key(), "marketing");
        let doc_id = [9u8; 16];
        let env = sign(doc_id, &change, &n.keys[1]);
        let bytes = env.encode();
        assert_eq!(&bytes[..4], b"CDE1");
        assert_eq!(bytes.len(), HEADER_LEN + change.raw_bytes().len());
        assert_eq!(
            u32::from_be_bytes(bytes[116..120].try_into().unwrap()) as usize,
            change.raw_bytes().len()
        );
        let decoded = Envelope::decode(&bytes).unwrap();
        assert_eq!(decoded, env);

        let v = verify(decoded, &n.roster).unwrap();
        assert_eq!(v.office(), "de");
        assert_eq!(v.doc_id(), doc_id);
        assert_eq!(v.hash(), change.hash().0);
        assert_eq!(v.change().map(Change::hash), Some(change.hash()));
        // The item's time is the header's, read without expanding the change.
        assert_eq!(
            v.item(),
            crate::item::Item::new(
                item_time(&doc_id, change.timestamp().max(0) as u64),
                change.hash().0
            )
        );
        assert_eq!(v.envelope(), &env);
        assert_eq!(v.is_first(), change.deps().is_empty());
        let (e, office) = (v.envelope().clone(), v.office().to_string());
        let c = v.into_change().expect("expands");
        assert_eq!((e, c.hash(), office.as_str()), (env, change.hash(), "de"));
    }

    #[test]
    fn verified_change_applies_to_a_fresh_document() {
        let n = net(&["us"]);
        let env = envelope(&n.keys[0], [1; 16], "analytics");
        let change = verify(env, &n.roster).unwrap().into_change().unwrap();
        let mut doc = Automerge::new();
        doc.apply_changes([change]).unwrap();
        use automerge::ReadDoc;
        let (value, _) = doc.get(ROOT, "purpose").unwrap().unwrap();
        assert_eq!(value.into_string().unwrap(), "analytics");
    }

    #[test]
    fn every_flipped_change_byte_is_rejected() {
        let n = net(&["us"]);
        let env = envelope(&n.keys[0], [2; 16], "x");
        for i in 0..env.change.len() {
            let mut bad = env.clone();
            bad.change[i] ^= 0x01;
            match verify(bad, &n.roster) {
                Err(
                    EnvelopeError::MalformedChange { .. }
                    | EnvelopeError::NonCanonicalChange { .. }
                    | EnvelopeError::BadSignature { .. }
                    | EnvelopeError::ActorNotBound { .. },
                ) => {}
                other => panic!("flipping change byte {i} gave {other:?}"),
            }
        }
    }

    #[test]
    fn tampered_doc_id_or_signature_is_rejected() {
        let n = net(&["us"]);
        let env = envelope(&n.keys[0], [3; 16], "x");
        let mut moved = env.clone();
        moved.doc_id[0] ^= 1;
        let mut resigned = env.clone();
        resigned.signature[10] ^= 1;
        for bad in [moved, resigned] {
            let err = verify(bad, &n.roster).unwrap_err();
            assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err:?}");
            assert!(err.to_string().contains("office us"), "{err}");
        }
        verify(env, &n.roster).unwrap();
    }

    #[test]
    fn checksum_only_tamper_is_rejected_as_non_canonical() {
        // The checksum is outside the change hash, so without our check this would verify.
        let n = net(&["us"]);
        let mut env = envelope(&n.keys[0], [4; 16], "x");
        env.change[5] ^= 0xff;
        let err = verify(env, &n.roster).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::NonCanonicalChange { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn compressed_chunk_is_rejected_before_parsing() {
        let n = net(&["us"]);
        let mut env = envelope(&n.keys[0], [4; 16], "x");
        env.change[CHUNK_TYPE_OFFSET] = 2;
        let err = verify(env, &n.roster).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::NonCanonicalChange { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn signer_not_in_roster_is_unknown() {
        let n = net(&["us"]);
        let outsider = generate();
        let env = envelope(&outsider, [5; 16], "x");
        let err = verify(env, &n.roster).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::UnknownSigner { .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains(&hex::encode(outsider.verifying_key().as_bytes())));
        assert!(err.to_string().contains(&hex::encode([5u8; 16])));
    }

    #[test]
    fn actor_bound_to_another_office_is_rejected() {
        let n = net(&["us", "de"]);
        // de signs correctly, but the change claims to be authored by us's actor.
        let change = change_as(&n.keys[0].verifying_key(), "forged");
        let doc_id = [6u8; 16];
        let hash = change.hash().0;
        let env = Envelope {
            doc_id,
            signer: n.keys[1].verifying_key().to_bytes(),
            signature: n.keys[1].sign(&signed_message(&doc_id, &hash)).to_bytes(),
            change: change.raw_bytes().to_vec(),
        };
        let err = verify(env, &n.roster).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::ActorNotBound { ref office, .. } if office == "de"),
            "{err:?}"
        );
        assert!(matches!(
            try_sign(doc_id, &change, &n.keys[1]),
            Err(EnvelopeError::ActorNotBound { .. })
        ));

        // A random (unbound, 16-byte) actor is rejected as well.
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| tx.put(ROOT, "k", "v").map(|_| ()))
            .unwrap();
        let change = doc.get_last_local_change().unwrap();
        let hash = change.hash().0;
        let env = Envelope {
            doc_id,
            signer: n.keys[1].verifying_key().to_bytes(),
            signature: n.keys[1].sign(&signed_message(&doc_id, &hash)).to_bytes(),
            change: change.raw_bytes().to_vec(),
        };
        assert!(matches!(
            verify(env, &n.roster),
            Err(EnvelopeError::ActorNotBound { .. })
        ));
    }

    #[test]
    fn framing_errors() {
        let n = net(&["us"]);
        let bytes = envelope(&n.keys[0], [7; 16], "x").encode();

        for cut in [0, 3, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            assert!(
                matches!(
                    Envelope::decode(&bytes[..cut]),
                    Err(EnvelopeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Envelope::decode(&trailing),
            Err(EnvelopeError::TrailingBytes { extra: 1 })
        );
        let mut magic = bytes.clone();
        magic[3] = b'2';
        assert_eq!(Envelope::decode(&magic), Err(EnvelopeError::BadMagic));
        let mut huge = bytes.clone();
        huge[116..120].copy_from_slice(&(MAX_CHANGE_BYTES as u32 + 1).to_be_bytes());
        assert!(matches!(
            Envelope::decode(&huge),
            Err(EnvelopeError::ChangeTooLarge { .. })
        ));
        Envelope::decode(&bytes).unwrap();
    }

    #[test]
    fn debug_output_hides_change_content() {
        let n = net(&["us"]);
        let env = envelope(&n.keys[0], [8; 16], "very-secret-purpose");
        assert!(String::from_utf8_lossy(&env.change).contains("very-secret-purpose"));
        let v = verify(env.clone(), &n.roster).unwrap();
        for text in [format!("{env:?}"), format!("{v:?}")] {
            assert!(!text.contains("very-secret"), "{text}");
            assert!(!text.contains("tok-123"), "{text}");
        }
    }

    #[test]
    fn batch_verify_isolates_exactly_the_bad_envelopes() {
        let n = net(&["us", "de", "sg"]);
        let outsider = generate();
        // More than one chunk, so both a failing and a passing chunk are exercised.
        let count = MAX_VERIFY_BATCH * 2 + 5;
        let mut envs: Vec<Envelope> = (0..count)
            .map(|i| envelope(&n.keys[i % 3], [i as u8; 16], &format!("p{i}")))
            .collect();
        let bad_sig = 17;
        let unknown = MAX_VERIFY_BATCH + 3;
        envs[bad_sig].signature[0] ^= 1;
        envs[unknown] = envelope(&outsider, [0; 16], "x");

        let results = verify_batch(envs.clone(), &n.roster);
        assert_eq!(results.len(), count);
        for (i, r) in results.iter().enumerate() {
            match i {
                _ if i == bad_sig => assert!(
                    matches!(r, Err(EnvelopeError::BadSignature { .. })),
                    "{i}: {r:?}"
                ),
                _ if i == unknown => assert!(
                    matches!(r, Err(EnvelopeError::UnknownSigner { .. })),
                    "{i}: {r:?}"
                ),
                _ => {
                    let v = r.as_ref().unwrap_or_else(|e| panic!("{i}: {e}"));
                    assert_eq!(v.envelope(), &envs[i], "results out of order at {i}");
                }
            }
        }
        assert!(verify_batch(Vec::new(), &n.roster).is_empty());
    }

    #[test]
    fn check_batch_gives_verify_batchs_verdict_on_every_envelope() {
        // One batch with every kind of envelope: good ones of several offices, a bad signature,
        // an outsider, a checksum tamper, a compressed chunk, an unbound actor, and every single
        // flipped byte of one change (malformed, non-canonical or mis-signed: many of those take
        // Automerge's path, because the change reader does not vouch for them).
        let n = net(&["us", "de", "sg"]);
        let mut envs: Vec<Envelope> = (0..MAX_VERIFY_BATCH + 7)
            .map(|i| envelope(&n.keys[i % 3], [i as u8; 16], &format!("p{i}")))
            .collect();
        envs[3].signature[0] ^= 1;
        envs[4] = envelope(&generate(), [4; 16], "x");
        envs[5].change[5] ^= 0xff;
        envs[6].change[CHUNK_TYPE_OFFSET] = 2;
        let change = change_as(&n.keys[0].verifying_key(), "forged");
        let hash = change.hash().0;
        envs[7] = Envelope {
            doc_id: [7; 16],
            signer: n.keys[1].verifying_key().to_bytes(),
            signature: n.keys[1].sign(&signed_message(&[7; 16], &hash)).to_bytes(),
            change: change.raw_bytes().to_vec(),
        };
        let base = envelope(&n.keys[2], [9; 16], "flipped");
        for i in 0..base.change.len() {
            let mut bad = base.clone();
            bad.change[i] ^= 0x01;
            envs.push(bad);
        }

        let verified = verify_batch(envs.clone(), &n.roster);
        let checked = check_batch(envs.clone(), &n.roster);
        assert_eq!(checked.len(), envs.len());
        let mut passed = 0;
        for (i, (v, c)) in verified.iter().zip(&checked).enumerate() {
            match (v, c) {
                (Ok(v), Ok(c)) => {
                    passed += 1;
                    assert_eq!(c.doc_id(), v.doc_id(), "{i}");
                    assert_eq!(c.hash(), v.hash(), "{i}");
                    assert_eq!(c.change_bytes(), &v.envelope().change[..], "{i}");
                    let expanded = v.change().expect("expands");
                    assert_eq!(c.ops(), expanded.len(), "{i}");
                    let deps: Vec<[u8; 32]> = expanded.deps().iter().map(|h| h.0).collect();
                    assert_eq!(c.deps(), &deps[..], "{i}");
                    let office = n
                        .roster
                        .office_at(c.office_index())
                        .expect("a roster office");
                    assert_eq!(office.id, v.office(), "{i}");
                    assert_eq!(c.expand().map(|x| x.hash().0), Some(v.hash()), "{i}");
                }
                (Err(v), Err(c)) => assert_eq!(v, c, "{i}: different errors"),
                (v, c) => panic!("{i}: verify_batch says {v:?}, check_batch says {c:?}"),
            }
        }
        assert_eq!(
            passed,
            MAX_VERIFY_BATCH + 7 - 5,
            "the good envelopes all pass"
        );
    }

    #[test]
    fn try_sign_refuses_oversized_changes() {
        let n = net(&["us"]);
        let key = &n.keys[0];
        let mut doc = Automerge::new().with_actor(actor_for(&key.verifying_key(), [0; 8]));
        // Random-ish text that deflate cannot shrink below the limit either way; we only
        // store uncompressed bytes anyway.
        let big: String = (0..MAX_CHANGE_BYTES + 1)
            .map(|i| char::from(b'a' + ((i * 7919) % 26) as u8))
            .collect();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "evidence", big).map(|_| ())
        })
        .unwrap();
        let change = doc.get_last_local_change().unwrap();
        assert!(matches!(
            try_sign([0; 16], &change, key),
            Err(EnvelopeError::ChangeTooLarge { .. })
        ));
    }
}
