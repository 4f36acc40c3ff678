//! Signed tombstones: an office's statement that a record (one document) is deleted for good.
//!
//! A tombstone names the document, its final heads (the change hashes it covered when it was
//! made), why (a closed [`Reason`]), under which policy (an ASCII rule id such as
//! `retention/sms-6-months` or `request/<id>`), when, and which office signed it. It holds no
//! personal data: ids, hashes, a rule id and a time. Applying one (deleting the record
//! everywhere) is the retention issue's work; this module defines the bytes, signing and
//! verification, so audit bundles can carry and check them already.
//!
//! # Wire encoding (`CDT1`)
//!
//! | offset | length | field       | meaning                                                    |
//! |-------:|-------:|-------------|------------------------------------------------------------|
//! |      0 |      4 | magic       | `b"CDT1"` (consentd tombstone, version 1)                  |
//! |      4 |     16 | doc_id      | the deleted record's document id                           |
//! |     20 |     32 | signer      | the signing office's ed25519 signing public key            |
//! |     52 |     64 | signature   | ed25519 over the signed message (below)                    |
//! |    116 |      8 | time        | when, Unix seconds, i64 big-endian                         |
//! |    124 |      1 | reason      | 1 retention, 2 erasure request, 3 child data without consent |
//! |    125 |      1 | policy_len  | p, 1..=64                                                  |
//! |    126 |      p | policy      | `[a-z0-9:/._-]`                                            |
//! |  126+p |      2 | heads_len   | n, u16 big-endian, 1..=256                                 |
//! |  128+p |   32·n | heads       | change hashes, strictly ascending (so the encoding is unique) |
//!
//! # Signed message
//!
//! `b"consentd/tombstone/v1\0" ‖ doc_id ‖ signer ‖ bytes[116..]` (everything but the magic and
//! the signature). The tombstone's id is `SHA-256` of its whole encoding; an office logs it as a
//! leaf of kind 2 ([`crate::tlog::LogLeaf::tombstone`]).

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, SIGNATURE_LENGTH};
use sha2::{Digest, Sha256};

use crate::roster::VerifiedRoster;

pub const MAGIC: [u8; 4] = *b"CDT1";
pub const TOMBSTONE_SIGN_DOMAIN: &[u8] = b"consentd/tombstone/v1\0";
/// Bytes before the policy.
const FIXED_LEN: usize = 4 + 16 + 32 + SIGNATURE_LENGTH + 8 + 1 + 1;
/// Longest policy id.
pub const MAX_POLICY_LEN: usize = 64;
/// Most heads one tombstone may list. A record has one head unless offices edited it
/// concurrently; this bounds what one peer can make another hash.
pub const MAX_HEADS: usize = 256;
/// Largest encoded tombstone.
pub const MAX_TOMBSTONE_BYTES: usize = FIXED_LEN + MAX_POLICY_LEN + 2 + 32 * MAX_HEADS;

/// Why a record was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Its retention period (§7) ran out.
    Retention = 1,
    /// The person asked for erasure (§8).
    Erasure = 2,
    /// Data of a minor received without parental consent (§10).
    ChildData = 3,
}

impl Reason {
    pub fn from_u8(b: u8) -> Option<Reason> {
        match b {
            1 => Some(Reason::Retention),
            2 => Some(Reason::Erasure),
            3 => Some(Reason::ChildData),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Retention => "retention",
            Reason::Erasure => "erasure",
            Reason::ChildData => "child_data",
        }
    }
}

/// A tombstone as received: nothing in it has been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub doc_id: [u8; 16],
    pub signer: [u8; 32],
    pub signature: [u8; SIGNATURE_LENGTH],
    /// Unix seconds.
    pub time: i64,
    pub reason: Reason,
    pub policy: String,
    /// Strictly ascending change hashes.
    pub heads: Vec<[u8; 32]>,
}

impl fmt::Debug for Tombstone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tombstone")
            .field("doc_id", &hex::encode(self.doc_id))
            .field("signer", &hex::encode(self.signer))
            .field("reason", &self.reason)
            .field("policy", &self.policy)
            .field("time", &self.time)
            .field("heads", &self.heads.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TombstoneError {
    #[error("tombstone is malformed: {0}")]
    Malformed(&'static str),
    #[error("tombstone for doc {doc} is signed by {signer}, which is not an office in the roster")]
    UnknownSigner { doc: String, signer: String },
    #[error("tombstone from office {office} for doc {doc}: signature does not verify")]
    BadSignature { office: String, doc: String },
}

fn valid_policy(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_POLICY_LEN
        && p.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b':' | b'/' | b'.' | b'_' | b'-')
        })
}

impl Tombstone {
    /// Makes and signs a tombstone. Heads are sorted and deduplicated here.
    pub fn sign(
        doc_id: [u8; 16],
        mut heads: Vec<[u8; 32]>,
        reason: Reason,
        policy: &str,
        time: i64,
        key: &SigningKey,
    ) -> Result<Tombstone, TombstoneError> {
        heads.sort_unstable();
        heads.dedup();
        if heads.is_empty() || heads.len() > MAX_HEADS {
            return Err(TombstoneError::Malformed(
                "a tombstone lists 1 to 256 heads",
            ));
        }
        if !valid_policy(policy) {
            return Err(TombstoneError::Malformed(
                "policy must be 1 to 64 characters of a-z 0-9 : / . _ -",
            ));
        }
        let mut t = Tombstone {
            doc_id,
            signer: key.verifying_key().to_bytes(),
            signature: [0; SIGNATURE_LENGTH],
            time,
            reason,
            policy: policy.to_string(),
            heads,
        };
        t.signature = key.sign(&t.signed_message()).to_bytes();
        Ok(t)
    }

    fn tail(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 2 + self.policy.len() + 2 + 32 * self.heads.len());
        out.extend_from_slice(&self.time.to_be_bytes());
        out.push(self.reason as u8);
        out.push(u8::try_from(self.policy.len()).expect("policy ≤ 64 bytes"));
        out.extend_from_slice(self.policy.as_bytes());
        out.extend_from_slice(
            &u16::try_from(self.heads.len())
                .expect("heads ≤ 256")
                .to_be_bytes(),
        );
        for h in &self.heads {
            out.extend_from_slice(h);
        }
        out
    }

    /// The exact bytes the signer signs.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut out = TOMBSTONE_SIGN_DOMAIN.to_vec();
        out.extend_from_slice(&self.doc_id);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.tail());
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 2 + 32 * self.heads.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.doc_id);
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.tail());
        out
    }

    /// SHA-256 of the encoding: the tombstone's id and its log leaf's hash.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Decodes exactly one canonical tombstone occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Tombstone, TombstoneError> {
        let bad = TombstoneError::Malformed;
        if bytes.len() > MAX_TOMBSTONE_BYTES {
            return Err(bad("larger than the limit"));
        }
        if bytes.len() < FIXED_LEN {
            return Err(bad("truncated"));
        }
        if bytes[..4] != MAGIC {
            return Err(bad("bad magic; expected CDT1"));
        }
        let time = i64::from_be_bytes(bytes[116..124].try_into().expect("8 bytes"));
        let reason = Reason::from_u8(bytes[124]).ok_or(bad("unknown reason"))?;
        let p = usize::from(bytes[125]);
        let rest = &bytes[FIXED_LEN..];
        if rest.len() < p + 2 {
            return Err(bad("truncated"));
        }
        let policy = std::str::from_utf8(&rest[..p]).map_err(|_| bad("policy is not ASCII"))?;
        if !valid_policy(policy) {
            return Err(bad("policy is not a valid rule id"));
        }
        let n = usize::from(u16::from_be_bytes([rest[p], rest[p + 1]]));
        let heads_bytes = &rest[p + 2..];
        if n == 0 || n > MAX_HEADS || heads_bytes.len() != 32 * n {
            return Err(bad("head list length does not match its count"));
        }
        let heads: Vec<[u8; 32]> = heads_bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        if !heads.windows(2).all(|w| w[0] < w[1]) {
            return Err(bad("heads are not strictly ascending"));
        }
        Ok(Tombstone {
            doc_id: bytes[4..20].try_into().expect("16 bytes"),
            signer: bytes[20..52].try_into().expect("32 bytes"),
            signature: bytes[52..116].try_into().expect("64 bytes"),
            time,
            reason,
            policy: policy.to_string(),
            heads,
        })
    }
}

/// A tombstone signed by a roster office. Only [`verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedTombstone {
    tombstone: Tombstone,
    office: String,
    hash: [u8; 32],
}

impl VerifiedTombstone {
    pub fn tombstone(&self) -> &Tombstone {
        &self.tombstone
    }
    /// The signing office's id.
    pub fn office(&self) -> &str {
        &self.office
    }
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
}

/// Checks the signer is a roster office and the signature verifies (strictly).
pub fn verify(t: Tombstone, roster: &VerifiedRoster) -> Result<VerifiedTombstone, TombstoneError> {
    let office =
        roster
            .office_by_signer(&t.signer)
            .ok_or_else(|| TombstoneError::UnknownSigner {
                doc: hex::encode(t.doc_id),
                signer: hex::encode(t.signer),
            })?;
    office
        .signing_key
        .verify_strict(&t.signed_message(), &Signature::from_bytes(&t.signature))
        .map_err(|_| TombstoneError::BadSignature {
            office: office.id.clone(),
            doc: hex::encode(t.doc_id),
        })?;
    Ok(VerifiedTombstone {
        hash: t.hash(),
        office: office.id.clone(),
        tombstone: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use crate::roster::tests::roster_with;

    #[test]
    fn sign_encode_decode_verify_and_every_flip_is_refused() {
        let root = generate();
        let (roster, keys) = roster_with(&["us", "de"]);
        let roster = roster
            .sign(&root)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
        let t = Tombstone::sign(
            [5; 16],
            vec![[9; 32], [3; 32], [9; 32]],
            Reason::Retention,
            "retention/sms-6-months",
            1_780_000_000,
            &keys[1],
        )
        .unwrap();
        assert_eq!(t.heads, vec![[3; 32], [9; 32]], "sorted, deduplicated");
        let bytes = t.encode();
        assert_eq!(&bytes[..4], b"CDT1");
        assert_eq!(bytes.len(), FIXED_LEN + 22 + 2 + 64);
        let back = Tombstone::decode(&bytes).unwrap();
        assert_eq!(back, t);
        let v = verify(back, &roster).unwrap();
        assert_eq!(v.office(), "de");
        assert_eq!(v.hash(), t.hash());

        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = Tombstone::decode(&bad).and_then(|t| verify(t, &roster));
            assert!(ok.is_err(), "flip at {i} accepted");
        }
        assert!(Tombstone::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Tombstone::decode(&longer).is_err());
    }

    #[test]
    fn personal_looking_policies_and_empty_heads_are_refused() {
        let key = generate();
        for policy in ["alice@example.com", "", "Retention", "has space"] {
            assert!(
                Tombstone::sign([0; 16], vec![[1; 32]], Reason::Erasure, policy, 0, &key).is_err(),
                "{policy:?}"
            );
        }
        assert!(Tombstone::sign([0; 16], vec![], Reason::Erasure, "p", 0, &key).is_err());
    }
}
