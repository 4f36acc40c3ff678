//! Each office's transparency log: its leaves, and checkpoints of it as C2SP signed notes.
//!
//! # Leaves
//!
//! An office appends one leaf for every envelope and every tombstone it authors, in the same
//! durable write as the thing itself. A leaf is 49 bytes:
//!
//! | offset | length | field | meaning                                                          |
//! |-------:|-------:|-------|------------------------------------------------------------------|
//! |      0 |      1 | kind  | 1 = envelope, 2 = tombstone                                      |
//! |      1 |     16 | doc   | the record's document id                                         |
//! |     17 |     32 | hash  | envelope: the Automerge change hash; tombstone: SHA-256 of its bytes |
//!
//! The Merkle leaf hash is RFC 9162's `SHA-256(0x00 ‖ leaf)` ([`crate::merkle`]). A leaf names the
//! document, so a change whose envelope was erased is still accounted for: the verifier accepts
//! its absence only if a valid tombstone for that document exists. Leaves hold ids and hashes
//! only, never personal data, so they stay after retention and erasure.
//!
//! # Checkpoints (C2SP tlog-checkpoint in a C2SP signed note)
//!
//! ```text
//! consentd.log/<network>/<office>\n      origin: names the network and the office
//! <tree size, decimal>\n
//! <root hash, base64>\n
//! \n
//! — consentd.log/<network>/<office> <base64(key id (4) ‖ ed25519 signature (64))>\n
//! ```
//!
//! The signature is over the three body lines (with their newlines). The key name is the origin;
//! the key id is the first 4 bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)` (signed-note,
//! ed25519 = 0x01). The key is the office's envelope signing key from the roster. Domain
//! separation from envelope and tombstone signatures holds because a note's text is printable
//! ASCII lines starting `consentd.log/`, while those messages start `consentd/envelope/v1\0` and
//! `consentd/tombstone/v1\0`: no byte string is both.
//!
//! Other signature lines (e.g. witness cosignatures) are allowed and ignored; the office's own
//! signature must be present and valid.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::b64;
use crate::merkle::Hash;
use crate::roster::VerifiedRoster;

/// Length of an encoded leaf.
pub const LEAF_LEN: usize = 49;
/// Leaf kind of an envelope.
pub const LEAF_ENVELOPE: u8 = 1;
/// Leaf kind of a tombstone.
pub const LEAF_TOMBSTONE: u8 = 2;
/// Every checkpoint origin starts with this.
pub const ORIGIN_PREFIX: &str = "consentd.log/";
/// Largest signed checkpoint we parse. Ours are ~200 bytes; room for a few cosignatures.
pub const MAX_CHECKPOINT_BYTES: usize = 8 * 1024;
/// Most signature lines one note may carry (signed-note suggests verifiers bound this).
pub const MAX_NOTE_SIGNATURES: usize = 16;
/// Signed-note signature type of ed25519.
const SIG_TYPE_ED25519: u8 = 0x01;
/// The em dash (U+2014) that opens a signature line.
const SIG_LINE_PREFIX: &str = "\u{2014} ";

/// One entry of an office's log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogLeaf {
    pub kind: u8,
    pub doc: [u8; 16],
    pub hash: [u8; 32],
}

impl fmt::Debug for LogLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LogLeaf({}, doc {}, {})",
            self.kind_name(),
            hex::encode(self.doc),
            hex::encode(self.hash)
        )
    }
}

impl LogLeaf {
    pub fn envelope(doc: [u8; 16], change_hash: [u8; 32]) -> LogLeaf {
        LogLeaf {
            kind: LEAF_ENVELOPE,
            doc,
            hash: change_hash,
        }
    }

    pub fn tombstone(doc: [u8; 16], tombstone_hash: [u8; 32]) -> LogLeaf {
        LogLeaf {
            kind: LEAF_TOMBSTONE,
            doc,
            hash: tombstone_hash,
        }
    }

    pub fn encode(&self) -> [u8; LEAF_LEN] {
        let mut out = [0u8; LEAF_LEN];
        out[0] = self.kind;
        out[1..17].copy_from_slice(&self.doc);
        out[17..].copy_from_slice(&self.hash);
        out
    }

    /// Decodes exactly [`LEAF_LEN`] bytes with a known kind.
    pub fn decode(bytes: &[u8]) -> Option<LogLeaf> {
        if bytes.len() != LEAF_LEN || !matches!(bytes[0], LEAF_ENVELOPE | LEAF_TOMBSTONE) {
            return None;
        }
        Some(LogLeaf {
            kind: bytes[0],
            doc: bytes[1..17].try_into().expect("16 bytes"),
            hash: bytes[17..].try_into().expect("32 bytes"),
        })
    }

    /// RFC 9162 leaf hash of the encoding.
    pub fn merkle_hash(&self) -> Hash {
        crate::merkle::leaf_hash(&self.encode())
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            LEAF_ENVELOPE => "envelope",
            LEAF_TOMBSTONE => "tombstone",
            _ => "unknown",
        }
    }
}

/// The origin line of `office`'s log in `network`.
pub fn origin(network: &str, office: &str) -> String {
    format!("{ORIGIN_PREFIX}{network}/{office}")
}

/// Signed-note key id: `SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)[..4]`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([SIG_TYPE_ED25519]);
    h.update(key.as_bytes());
    h.finalize()[..4].try_into().expect("4 bytes")
}

/// The signed-note verifier key string `name+hex(key id)+base64(0x01 ‖ key)`, as Go's
/// `golang.org/x/mod/sumdb/note` and other signed-note tools take it.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut data = vec![SIG_TYPE_ED25519];
    data.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, key)),
        b64::encode(&data)
    )
}

/// An unsigned checkpoint: what an office commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("checkpoint origin {origin:?} is not an office of network {network}")]
    UnknownOrigin { origin: String, network: String },
    #[error("checkpoint of office {office} carries no signature by that office's key")]
    NotSigned { office: String },
    #[error("checkpoint of office {office}: signature does not verify")]
    BadSignature { office: String },
}

impl Checkpoint {
    /// The note text: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64::encode(&self.root)
        )
    }

    /// The complete signed note. Ed25519 is deterministic, so signing the same checkpoint again
    /// (e.g. after a crash between persisting and publishing) yields the same bytes.
    pub fn sign(&self, key: &SigningKey) -> String {
        debug_assert!(
            is_valid_name(&self.origin),
            "origin must be one printable token"
        );
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key_id(&self.origin, &key.verifying_key()));
        blob.extend_from_slice(&sig.to_bytes());
        format!(
            "{body}\n{SIG_LINE_PREFIX}{} {}\n",
            self.origin,
            b64::encode(&blob)
        )
    }
}

/// A checkpoint whose office signature verified against the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    pub office: String,
    /// The note as received.
    pub note: String,
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'+')
}

/// A signed note split into its text and signature lines. Checks only the note syntax.
pub struct Note<'a> {
    /// The signed text, including its final newline.
    pub text: &'a str,
    /// (key name, key id, signature).
    pub signatures: Vec<(&'a str, [u8; 4], [u8; 64])>,
}

/// Parses a signed note (C2SP signed-note): text, a blank line, then signature lines
/// `— <name> <base64(key id ‖ signature)>`, every line ending in `\n`.
pub fn parse_note(note: &str) -> Result<Note<'_>, CheckpointError> {
    let bad = |why: &str| CheckpointError::Malformed(why.to_string());
    if note.len() > MAX_CHECKPOINT_BYTES {
        return Err(bad("note is larger than the limit"));
    }
    if !note.ends_with('\n') {
        return Err(bad("note does not end with a newline"));
    }
    let split = note
        .find("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let text = &note[..split + 1];
    let sigs = &note[split + 2..];
    let mut signatures = Vec::new();
    for line in sigs.split_terminator('\n') {
        if signatures.len() == MAX_NOTE_SIGNATURES {
            return Err(bad("too many signature lines"));
        }
        let rest = line
            .strip_prefix(SIG_LINE_PREFIX)
            .ok_or_else(|| bad("signature line does not start with an em dash and a space"))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| bad("signature line has no key name"))?;
        if !is_valid_name(name) {
            return Err(bad("signature key name is not one printable token"));
        }
        let blob = b64::decode(blob).ok_or_else(|| bad("signature is not canonical base64"))?;
        // Ed25519 signature lines are exactly key id (4) ‖ signature (64); other types are
        // longer or shorter and cannot be ours.
        if blob.len() != 68 {
            continue;
        }
        signatures.push((
            name,
            blob[..4].try_into().expect("4 bytes"),
            blob[4..].try_into().expect("64 bytes"),
        ));
    }
    if sigs.is_empty() {
        return Err(bad("note has no signature lines"));
    }
    Ok(Note { text, signatures })
}

/// Parses the checkpoint body (C2SP tlog-checkpoint): origin, decimal size without leading
/// zeros, canonical base64 of a 32-byte root; further (extension) lines are allowed.
pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
    let bad = |why: &str| CheckpointError::Malformed(why.to_string());
    let mut lines = text.split_terminator('\n');
    let origin = lines.next().ok_or_else(|| bad("missing origin line"))?;
    if !is_valid_name(origin) || !origin.starts_with(ORIGIN_PREFIX) {
        return Err(bad("origin line is not a consentd log origin"));
    }
    let size = lines.next().ok_or_else(|| bad("missing tree size line"))?;
    if size.is_empty()
        || !size.bytes().all(|b| b.is_ascii_digit())
        || (size.len() > 1 && size.starts_with('0'))
    {
        return Err(bad("tree size is not a canonical decimal number"));
    }
    let size: u64 = size.parse().map_err(|_| bad("tree size overflows"))?;
    let root = lines.next().ok_or_else(|| bad("missing root hash line"))?;
    let root: Hash = b64::decode(root)
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| bad("root hash is not base64 of 32 bytes"))?;
    for ext in lines {
        if ext.is_empty() {
            return Err(bad("empty extension line"));
        }
    }
    Ok(Checkpoint {
        origin: origin.to_string(),
        size,
        root,
    })
}

/// Parses a signed checkpoint and verifies the signature of the office its origin names.
pub fn verify(note: &str, roster: &VerifiedRoster) -> Result<VerifiedCheckpoint, CheckpointError> {
    let parsed = parse_note(note)?;
    let checkpoint = parse_body(parsed.text)?;
    let network = &roster.roster().network;
    let office = checkpoint
        .origin
        .strip_prefix(ORIGIN_PREFIX)
        .and_then(|rest| rest.strip_prefix(network.as_str()))
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|id| roster.office(id))
        .ok_or_else(|| CheckpointError::UnknownOrigin {
            origin: checkpoint.origin.clone(),
            network: network.clone(),
        })?;
    let id = key_id(&checkpoint.origin, &office.signing_key);
    let mut found = false;
    for (name, kid, sig) in &parsed.signatures {
        if *name != checkpoint.origin || *kid != id {
            continue;
        }
        found = true;
        office
            .signing_key
            .verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(sig))
            .map_err(|_| CheckpointError::BadSignature {
                office: office.id.clone(),
            })?;
    }
    if !found {
        return Err(CheckpointError::NotSigned {
            office: office.id.clone(),
        });
    }
    Ok(VerifiedCheckpoint {
        checkpoint,
        office: office.id.clone(),
        note: note.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use crate::roster::tests::roster_with;

    /// The example of Go's `golang.org/x/mod/sumdb/note` (the signed-note reference
    /// implementation): same key, same text, byte-identical signed note.
    #[test]
    fn signed_note_matches_the_go_reference_example() {
        let skey = b64::decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        assert_eq!(skey[0], 1);
        let key = SigningKey::from_bytes(&skey[1..].try_into().unwrap());
        assert_eq!(
            verifier_key("PeterNeumann", &key.verifying_key()),
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        );
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let sig = key.sign(text.as_bytes());
        let mut blob = key_id("PeterNeumann", &key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        let note = format!("{text}\n\u{2014} PeterNeumann {}\n", b64::encode(&blob));
        assert_eq!(
            note,
            "If you think cryptography is the answer to your problem,\n\
             then you don't know what your problem is.\n\
             \n\
             \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        let parsed = parse_note(&note).unwrap();
        assert_eq!(parsed.text, text);
        assert_eq!(parsed.signatures.len(), 1);
    }

    fn setup() -> (VerifiedRoster, Vec<SigningKey>) {
        let root = generate();
        let (roster, keys) = roster_with(&["us", "de"]);
        let v = roster
            .sign(&root)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
        (v, keys)
    }

    #[test]
    fn checkpoint_signs_and_verifies_and_every_byte_flip_is_refused() {
        let (roster, keys) = setup();
        let cp = Checkpoint {
            origin: origin("test-net", "de"),
            size: 1234,
            root: [7; 32],
        };
        let note = cp.sign(&keys[1]);
        assert!(note.starts_with("consentd.log/test-net/de\n1234\nBwcH"));
        assert_eq!(note, cp.sign(&keys[1]), "deterministic");
        let v = verify(&note, &roster).unwrap();
        assert_eq!((v.office.as_str(), &v.checkpoint), ("de", &cp));
        assert_eq!(parse_body(&cp.body()).unwrap(), cp);

        let bytes = note.as_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x20] {
                let mut bad = bytes.to_vec();
                bad[i] ^= bit;
                if let Ok(text) = std::str::from_utf8(&bad) {
                    assert!(
                        verify(text, &roster).is_err(),
                        "flip {bit:#x} at {i} accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn checkpoint_by_another_office_or_for_another_network_is_refused() {
        let (roster, keys) = setup();
        let cp = Checkpoint {
            origin: origin("test-net", "de"),
            size: 1,
            root: [1; 32],
        };
        // us signs de's checkpoint: no signature line with de's key id.
        assert!(matches!(
            verify(&cp.sign(&keys[0]), &roster),
            Err(CheckpointError::NotSigned { .. })
        ));
        let other = Checkpoint {
            origin: origin("other-net", "de"),
            ..cp.clone()
        };
        assert!(matches!(
            verify(&other.sign(&keys[1]), &roster),
            Err(CheckpointError::UnknownOrigin { .. })
        ));
        for bad in ["consentd.log/test-net/de\n01\nAAAA\n", "x\n1\n"] {
            assert!(parse_body(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leaves_round_trip() {
        let l = LogLeaf::envelope([1; 16], [2; 32]);
        let e = l.encode();
        assert_eq!(e[0], 1);
        assert_eq!(LogLeaf::decode(&e), Some(l));
        let mut bad = e;
        bad[0] = 9;
        assert_eq!(LogLeaf::decode(&bad), None);
        assert_eq!(LogLeaf::decode(&e[..48]), None);
    }
}
