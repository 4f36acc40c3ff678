//! The roster: which offices make up the network, signed by the root key.
//!
//! Offices and auditors pin only the root public key; everything else they trust (which keys may
//! sign envelopes, which transport keys may connect, where peers listen) comes from a roster whose
//! signature verifies against it. The only way to obtain a [`VerifiedRoster`] is
//! [`SignedRoster::verify`], so code holding one never sees unchecked office keys.
//!
//! # Signed bytes
//!
//! The signature is ed25519 (strict verification) over
//! `b"consentd/roster/v1\n" ‖ serde_json::to_vec(&roster)`. That JSON is canonical: serde emits
//! struct fields in declaration order, never emits whitespace in compact mode, and every string
//! that passes [`Roster::validate`] is plain ASCII with nothing to escape, so parsing a roster and
//! serializing it again reproduces the signed bytes exactly, whatever the file's pretty-printing.
//! Reordering or renaming fields of [`Roster`] or [`OfficeEntry`] changes those bytes and breaks
//! every existing signature; `tests::canonical_bytes_are_pinned` is there to catch that.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, SIGNATURE_LENGTH};
use serde::{Deserialize, Serialize};

use crate::keys;

/// Domain separation: a roster signature can never be mistaken for any other root-key signature.
pub const ROSTER_SIGN_DOMAIN: &[u8] = b"consentd/roster/v1\n";
/// Most offices a roster may list. Far above any real deployment; bounds per-peer state.
pub const MAX_OFFICES: usize = 256;
/// Largest roster file we read. 256 offices at ~300 bytes each is ~80 KB pretty-printed.
pub const MAX_ROSTER_FILE_BYTES: u64 = 1024 * 1024;
/// Longest network name.
pub const MAX_NETWORK_NAME_LEN: usize = 64;
/// Longest office id (`^[a-z][a-z0-9-]{0,31}$`).
pub const MAX_OFFICE_ID_LEN: usize = 32;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    pub network: String,
    /// Bumped by the operator on every change, so offices can refuse to go back to an older roster.
    pub serial: u64,
    pub offices: Vec<OfficeEntry>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OfficeEntry {
    pub id: String,
    pub jurisdiction: String,
    /// Hex of the ed25519 key that signs this office's envelopes.
    pub signing_key: String,
    /// Hex of the ed25519 key this office presents on QUIC connections.
    pub transport_key: String,
    /// `ip:port` the office listens on for QUIC.
    pub address: String,
    /// A retired office (`consentctl roster retire`) is no longer a peer: no session is accepted
    /// from it or dialed to it, and no checkpoint of it newer than the one an office holds is
    /// taken. Its keys still verify everything it signed (envelopes, tombstones, checkpoints,
    /// log leaves), so its records stay readable and changeable at every other office.
    ///
    /// Absent means `false` and `false` is never serialised, so the signed bytes of every roster
    /// without a retired office are exactly those of a roster written before this field existed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retired: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SignedRoster {
    pub roster: Roster,
    /// Hex of the root key's signature; `None` for an unsigned draft.
    pub signature: Option<String>,
}

/// An office as the rest of the system sees it: keys and address already parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Office {
    pub id: String,
    pub jurisdiction: String,
    pub signing_key: VerifyingKey,
    pub transport_key: VerifyingKey,
    pub address: SocketAddr,
    /// See [`OfficeEntry::retired`].
    pub retired: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("invalid network name {name:?}: {reason}")]
    InvalidNetworkName { name: String, reason: &'static str },

    #[error("invalid office id {id:?}: must match ^[a-z][a-z0-9-]{{0,31}}$")]
    InvalidOfficeId { id: String },

    #[error(
        "office {office}: invalid jurisdiction {jurisdiction:?}: must be an ISO 3166 code such as US, DE or US-CA"
    )]
    InvalidJurisdiction {
        office: String,
        jurisdiction: String,
    },

    #[error("office {office}: invalid {field}: {reason}")]
    InvalidKey {
        office: String,
        field: &'static str,
        reason: String,
    },

    #[error("office {office}: invalid address {address:?}: {reason}")]
    InvalidAddress {
        office: String,
        address: String,
        reason: String,
    },

    #[error("office {id} is not in the roster")]
    UnknownOffice { id: String },

    #[error("office {id} is already retired in this roster")]
    AlreadyRetired { id: String },

    #[error("office id {id} appears more than once in the roster")]
    DuplicateOffice { id: String },

    /// Every key may appear once in the whole roster: two offices sharing a key could impersonate
    /// each other, and one office using a key for both roles would mix signature domains.
    #[error("office {office}: {field} is already used by office {other} ({other_field})")]
    DuplicateKey {
        office: String,
        field: &'static str,
        other: String,
        other_field: &'static str,
    },

    #[error("roster lists {count} offices; at most {max} are allowed")]
    TooManyOffices { count: usize, max: usize },

    #[error(
        "roster is not signed; run consentctl roster sign with the network's root key, then install the signed roster"
    )]
    NotSigned,

    #[error("roster signature is malformed: {reason}")]
    MalformedSignature { reason: String },

    #[error("roster signature does not verify against the configured root public key {root}")]
    BadSignature { root: String },

    #[error("roster file {} is {size} bytes; at most {max} are allowed", .path.display())]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },

    #[error("roster file {} is not valid roster JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot {action} roster file {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Roster {
    /// An empty roster for `network` (serial 0), to which offices are added.
    pub fn new(network: &str) -> Result<Roster, RosterError> {
        let roster = Roster {
            network: network.to_string(),
            serial: 0,
            offices: Vec::new(),
        };
        roster.validate()?;
        Ok(roster)
    }

    /// Checks every rule a roster must satisfy before it is signed or trusted.
    pub fn validate(&self) -> Result<(), RosterError> {
        self.parse_offices().map(|_| ())
    }

    /// Adds `entry`, refusing anything that would make the roster invalid (bad fields, duplicate
    /// id or key, too many offices). Leaves `serial` alone: the operator bumps it once per signed
    /// release, not once per edit.
    pub fn add_office(&mut self, entry: OfficeEntry) -> Result<(), RosterError> {
        self.offices.push(entry);
        let checked = self.validate();
        if checked.is_err() {
            self.offices.pop();
        }
        checked
    }

    /// Marks office `id` retired (see [`OfficeEntry::retired`]) and bumps `serial`: a retired
    /// office stays listed, so what it signed still verifies, but is no longer a peer.
    pub fn retire_office(&mut self, id: &str) -> Result<(), RosterError> {
        let entry = self
            .offices
            .iter_mut()
            .find(|o| o.id == id)
            .ok_or_else(|| RosterError::UnknownOffice { id: id.to_string() })?;
        if entry.retired {
            return Err(RosterError::AlreadyRetired { id: id.to_string() });
        }
        entry.retired = true;
        self.serial += 1;
        Ok(())
    }

    /// The exact bytes the root key signs (see the module docs for why they are canonical).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self)
            .expect("a Roster holds only strings, integers and vectors, which always serialize");
        let mut out = Vec::with_capacity(ROSTER_SIGN_DOMAIN.len() + json.len());
        out.extend_from_slice(ROSTER_SIGN_DOMAIN);
        out.extend_from_slice(&json);
        out
    }

    /// Validates, then signs with the root key.
    pub fn sign(self, root: &SigningKey) -> Result<SignedRoster, RosterError> {
        self.validate()?;
        let signature = root.sign(&self.signing_bytes());
        Ok(SignedRoster {
            roster: self,
            signature: Some(hex::encode(signature.to_bytes())),
        })
    }

    fn parse_offices(&self) -> Result<Vec<Office>, RosterError> {
        check_network_name(&self.network)?;
        if self.offices.len() > MAX_OFFICES {
            return Err(RosterError::TooManyOffices {
                count: self.offices.len(),
                max: MAX_OFFICES,
            });
        }
        let mut ids = HashSet::with_capacity(self.offices.len());
        // Every key, in either role, mapped to (office, role) for the duplicate message.
        let mut keys: HashMap<[u8; 32], (&str, &'static str)> =
            HashMap::with_capacity(self.offices.len() * 2);
        let mut offices = Vec::with_capacity(self.offices.len());
        for entry in &self.offices {
            let office = parse_entry(entry)?;
            if !ids.insert(entry.id.as_str()) {
                return Err(RosterError::DuplicateOffice {
                    id: entry.id.clone(),
                });
            }
            for (field, key) in [
                ("signing_key", &office.signing_key),
                ("transport_key", &office.transport_key),
            ] {
                if let Some((other, other_field)) = keys.insert(key.to_bytes(), (&entry.id, field))
                {
                    return Err(RosterError::DuplicateKey {
                        office: entry.id.clone(),
                        field,
                        other: other.to_string(),
                        other_field,
                    });
                }
            }
            offices.push(office);
        }
        Ok(offices)
    }
}

impl SignedRoster {
    /// An unsigned draft, as `consentctl roster` edits it before signing.
    pub fn draft(roster: Roster) -> SignedRoster {
        SignedRoster {
            roster,
            signature: None,
        }
    }

    /// Reads `roster.json`, refusing files over [`MAX_ROSTER_FILE_BYTES`] and unknown fields.
    /// Does not verify: call [`SignedRoster::verify`].
    pub fn load(path: &Path) -> Result<SignedRoster, RosterError> {
        let io_err = |action, source| RosterError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        let size = file.metadata().map_err(|e| io_err("inspect", e))?.len();
        let too_large = |size| RosterError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_ROSTER_FILE_BYTES,
        };
        if size > MAX_ROSTER_FILE_BYTES {
            return Err(too_large(size));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // `take` as well as the size check: the file may grow between fstat and read.
        file.take(MAX_ROSTER_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_err("read", e))?;
        if bytes.len() as u64 > MAX_ROSTER_FILE_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        serde_json::from_slice(&bytes).map_err(|source| RosterError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes pretty JSON (the `roster.json` format), replacing `path` atomically: readers see the
    /// old roster or the new one, never half of either.
    pub fn save(&self, path: &Path) -> Result<(), RosterError> {
        let mut json = serde_json::to_vec_pretty(self).expect(
            "a SignedRoster holds only strings, integers and vectors, which always serialize",
        );
        json.push(b'\n');
        debug_assert!(
            json.len() as u64 <= MAX_ROSTER_FILE_BYTES || self.roster.validate().is_err(),
            "a valid roster always fits in MAX_ROSTER_FILE_BYTES"
        );

        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let io_err = |action, p: &Path, source| RosterError::Io {
            action,
            path: p.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("write", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io_err("replace", path, e))
    }

    /// Checks the root signature, then the roster's rules. The signature is checked first so that
    /// a tampered roster is reported as tampered, not as whatever rule the tampering broke.
    pub fn verify(self, root_pub: &VerifyingKey) -> Result<VerifiedRoster, RosterError> {
        let sig_hex = self.signature.as_deref().ok_or(RosterError::NotSigned)?;
        let mut sig_bytes = [0u8; SIGNATURE_LENGTH];
        hex::decode_to_slice(sig_hex.trim(), &mut sig_bytes).map_err(|e| {
            RosterError::MalformedSignature {
                reason: format!("expected {} hex characters: {e}", SIGNATURE_LENGTH * 2),
            }
        })?;
        let signature = Signature::from_bytes(&sig_bytes);
        // Strict: rejects small-order keys and non-canonical signatures, so exactly one signature
        // string verifies per roster and a weak pinned key cannot be forged against.
        root_pub
            .verify_strict(&self.roster.signing_bytes(), &signature)
            .map_err(|_| RosterError::BadSignature {
                root: keys::public_hex(root_pub),
            })?;
        let offices = self.roster.parse_offices()?;
        let by_id = offices
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.clone(), i))
            .collect();
        let by_signer = offices
            .iter()
            .enumerate()
            .map(|(i, o)| (o.signing_key.to_bytes(), i))
            .collect();
        Ok(VerifiedRoster {
            roster: self.roster,
            signature,
            root_pub: *root_pub,
            offices,
            by_id,
            by_signer,
        })
    }
}

/// A roster whose root signature has been checked and whose entries have been validated and
/// parsed. Only [`SignedRoster::verify`] makes one.
#[derive(Clone, Debug)]
pub struct VerifiedRoster {
    roster: Roster,
    signature: Signature,
    root_pub: VerifyingKey,
    offices: Vec<Office>,
    by_id: HashMap<String, usize>,
    by_signer: HashMap<[u8; 32], usize>,
}

impl VerifiedRoster {
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn root_pub(&self) -> &VerifyingKey {
        &self.root_pub
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The signed form again, e.g. to ship in an audit bundle or to a peer.
    pub fn to_signed(&self) -> SignedRoster {
        SignedRoster {
            roster: self.roster.clone(),
            signature: Some(hex::encode(self.signature.to_bytes())),
        }
    }

    pub fn office(&self, id: &str) -> Option<&Office> {
        self.by_id.get(id).map(|&i| &self.offices[i])
    }

    /// The office whose envelope-signing key is `signer`.
    pub fn office_by_signer(&self, signer: &[u8; 32]) -> Option<&Office> {
        self.by_signer.get(signer).map(|&i| &self.offices[i])
    }

    /// The roster position of office `id`: a one-byte handle for tables that hold one per
    /// record (a million records' origins as `String`s cost ~32 MB of heap).
    pub fn index_of(&self, id: &str) -> Option<u8> {
        self.by_id.get(id).map(|&i| office_index(i))
    }

    /// The roster position of the office whose envelope-signing key is `signer`.
    pub fn index_by_signer(&self, signer: &[u8; 32]) -> Option<u8> {
        self.by_signer.get(signer).map(|&i| office_index(i))
    }

    /// The office at a position [`VerifiedRoster::index_of`] gave.
    pub fn office_at(&self, index: u8) -> Option<&Office> {
        self.offices.get(usize::from(index))
    }

    /// Offices in roster order, retired ones included (their keys still verify what they
    /// signed).
    pub fn offices(&self) -> impl Iterator<Item = &Office> {
        self.offices.iter()
    }

    /// Whether office `id` is listed and retired: no longer a peer (see [`OfficeEntry::retired`]).
    pub fn is_retired(&self, id: &str) -> bool {
        self.office(id).is_some_and(|o| o.retired)
    }
}

fn office_index(i: usize) -> u8 {
    const _: () = assert!(MAX_OFFICES <= 256, "office positions must fit a u8");
    u8::try_from(i).expect("a verified roster has at most MAX_OFFICES offices")
}

fn check_network_name(name: &str) -> Result<(), RosterError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NETWORK_NAME_LEN {
        "must be at most 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "may contain only a-z, 0-9 and -"
    } else {
        return Ok(());
    };
    Err(RosterError::InvalidNetworkName {
        name: name.to_string(),
        reason,
    })
}

/// `^[a-z][a-z0-9-]{0,31}$`
fn is_valid_office_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_OFFICE_ID_LEN
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// `^[A-Z]{2}(-[A-Z0-9]{1,3})?$` (ISO 3166-1 alpha-2, optionally with a 3166-2 subdivision).
fn is_valid_jurisdiction(j: &str) -> bool {
    let b = j.as_bytes();
    let country_ok = b.len() >= 2 && b[..2].iter().all(u8::is_ascii_uppercase);
    let sub_ok = match b.len() {
        2 => true,
        4..=6 => {
            b[2] == b'-'
                && b[3..]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        }
        _ => false,
    };
    country_ok && sub_ok
}

fn parse_entry(entry: &OfficeEntry) -> Result<Office, RosterError> {
    if !is_valid_office_id(&entry.id) {
        return Err(RosterError::InvalidOfficeId {
            id: entry.id.clone(),
        });
    }
    if !is_valid_jurisdiction(&entry.jurisdiction) {
        return Err(RosterError::InvalidJurisdiction {
            office: entry.id.clone(),
            jurisdiction: entry.jurisdiction.clone(),
        });
    }
    let key = |field: &'static str, text: &str| -> Result<VerifyingKey, RosterError> {
        let invalid = |reason: String| RosterError::InvalidKey {
            office: entry.id.clone(),
            field,
            reason,
        };
        // One spelling per key, so the signed roster text and `public_hex` always agree.
        if text.len() != keys::KEY_HEX_LEN
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(format!(
                "expected {} lowercase hex characters",
                keys::KEY_HEX_LEN
            )));
        }
        keys::parse_public_key(text).map_err(|e| invalid(e.to_string()))
    };
    let signing_key = key("signing_key", &entry.signing_key)?;
    let transport_key = key("transport_key", &entry.transport_key)?;
    let invalid_addr = |reason: String| RosterError::InvalidAddress {
        office: entry.id.clone(),
        address: entry.address.clone(),
        reason,
    };
    let address: SocketAddr = entry
        .address
        .parse()
        .map_err(|e| invalid_addr(format!("expected ip:port: {e}")))?;
    // Peers dial this address; a wildcard IP or port 0 is a listen-side notion, not a destination.
    if address.ip().is_unspecified() || address.port() == 0 {
        return Err(invalid_addr(
            "must be a concrete ip:port peers can connect to (not 0.0.0.0, [::] or port 0)"
                .to_string(),
        ));
    }
    Ok(Office {
        id: entry.id.clone(),
        jurisdiction: entry.jurisdiction.clone(),
        signing_key,
        transport_key,
        address,
        retired: entry.retired,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{generate, public_hex};

    pub(crate) fn entry(id: &str, jurisdiction: &str, port: u16) -> (OfficeEntry, SigningKey) {
        let signing = generate();
        let entry = OfficeEntry {
            id: id.to_string(),
            jurisdiction: jurisdiction.to_string(),
            signing_key: public_hex(&signing.verifying_key()),
            transport_key: public_hex(&generate().verifying_key()),
            address: format!("127.0.0.1:{port}"),
            retired: false,
        };
        (entry, signing)
    }

    /// A roster with the given offices; returns the office signing keys in the same order.
    pub(crate) fn roster_with(ids: &[&str]) -> (Roster, Vec<SigningKey>) {
        let mut roster = Roster::new("test-net").unwrap();
        let mut keys = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (e, k) = entry(id, "DE", 7000 + i as u16);
            roster.add_office(e).unwrap();
            keys.push(k);
        }
        roster.serial = 1;
        (roster, keys)
    }

    #[test]
    fn sign_and_verify() {
        let root = generate();
        let (roster, keys) = roster_with(&["us", "de", "sg"]);
        let verified = roster
            .clone()
            .sign(&root)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
        assert_eq!(verified.roster(), &roster);
        assert_eq!(verified.root_pub(), &root.verifying_key());
        assert_eq!(
            verified
                .offices()
                .map(|o| o.id.as_str())
                .collect::<Vec<_>>(),
            ["us", "de", "sg"]
        );
        let de = verified.office("de").unwrap();
        assert_eq!(de.signing_key, keys[1].verifying_key());
        assert_eq!(de.address, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(
            verified
                .office_by_signer(&keys[2].verifying_key().to_bytes())
                .unwrap()
                .id,
            "sg"
        );
        assert!(verified.office("nl").is_none());
        assert!(verified.office_by_signer(&[0u8; 32]).is_none());
        // Positions name the same offices as ids and signers do.
        assert_eq!(verified.index_of("de"), Some(1));
        assert_eq!(verified.office_at(1).unwrap().id, "de");
        assert_eq!(
            verified.index_by_signer(&keys[2].verifying_key().to_bytes()),
            Some(2)
        );
        assert!(verified.index_of("nl").is_none());
        assert!(verified.index_by_signer(&[0u8; 32]).is_none());
        assert!(verified.office_at(3).is_none());
        // to_signed reproduces a roster that verifies again.
        verified
            .to_signed()
            .verify(&root.verifying_key())
            .expect("re-exported roster verifies");
    }

    #[test]
    fn tampered_entry_fails() {
        let root = generate();
        let (roster, _) = roster_with(&["us", "de"]);
        let signed = roster.sign(&root).unwrap();

        let mut moved = signed.clone();
        moved.roster.offices[1].address = "10.0.0.66:7001".to_string();
        let mut rekeyed = signed.clone();
        rekeyed.roster.offices[0].signing_key = public_hex(&generate().verifying_key());
        let mut reserialed = signed.clone();
        reserialed.roster.serial += 1;
        let mut dropped = signed.clone();
        dropped.roster.offices.pop();

        for bad in [moved, rekeyed, reserialed, dropped] {
            let err = bad.verify(&root.verifying_key()).unwrap_err();
            assert!(matches!(err, RosterError::BadSignature { .. }), "{err:?}");
        }
        signed
            .verify(&root.verifying_key())
            .expect("untampered verifies");
    }

    #[test]
    fn wrong_root_fails_and_names_the_key() {
        let root = generate();
        let other = generate().verifying_key();
        let (roster, _) = roster_with(&["us"]);
        let err = roster.sign(&root).unwrap().verify(&other).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "roster signature does not verify against the configured root public key {}",
                public_hex(&other)
            )
        );
    }

    #[test]
    fn unsigned_and_malformed_signatures_fail() {
        let root = generate();
        let (roster, _) = roster_with(&["us"]);
        let err = SignedRoster::draft(roster.clone())
            .verify(&root.verifying_key())
            .unwrap_err();
        assert!(matches!(err, RosterError::NotSigned));
        assert!(err
            .to_string()
            .starts_with("roster is not signed; run consentctl roster sign"));

        let mut short = roster.sign(&root).unwrap();
        short.signature = Some("abcd".to_string());
        assert!(matches!(
            short.verify(&root.verifying_key()),
            Err(RosterError::MalformedSignature { .. })
        ));
    }

    #[test]
    fn duplicates_and_bad_fields_are_rejected() {
        let (mut roster, _) = roster_with(&["us", "de"]);
        let before = roster.clone();

        let (mut dup_id, _) = entry("us", "US", 7100);
        assert!(matches!(
            roster.add_office(dup_id.clone()),
            Err(RosterError::DuplicateOffice { .. })
        ));
        dup_id.id = "nl".to_string();
        dup_id.signing_key = roster.offices[0].signing_key.clone();
        assert!(matches!(
            roster.add_office(dup_id.clone()),
            Err(RosterError::DuplicateKey {
                field: "signing_key",
                ..
            })
        ));
        let (mut dup_transport, _) = entry("nl", "NL", 7100);
        dup_transport.transport_key = roster.offices[1].transport_key.clone();
        assert!(matches!(
            roster.add_office(dup_transport),
            Err(RosterError::DuplicateKey {
                field: "transport_key",
                ..
            })
        ));
        let (mut same_key_both_roles, _) = entry("nl", "NL", 7100);
        same_key_both_roles.transport_key = same_key_both_roles.signing_key.clone();
        assert!(matches!(
            roster.add_office(same_key_both_roles),
            Err(RosterError::DuplicateKey { .. })
        ));
        // Failed adds leave the roster as it was.
        assert_eq!(roster, before);

        for bad_id in [
            "",
            "US",
            "1us",
            "-us",
            "us_east",
            "a234567890123456789012345678901x3",
            "ü",
        ] {
            let (e, _) = entry(bad_id, "US", 7100);
            assert!(
                matches!(
                    roster.add_office(e),
                    Err(RosterError::InvalidOfficeId { .. })
                ),
                "id {bad_id:?} accepted"
            );
        }
        for good_id in ["a", "us-east-1", "a2345678901234567890123456789012"] {
            let mut r = before.clone();
            r.add_office(entry(good_id, "US", 7100).0)
                .unwrap_or_else(|e| panic!("id {good_id:?} refused: {e}"));
        }
        for bad_j in ["", "us", "USA", "US-", "US-CAXX", "U1", "US_CA", "US-ca"] {
            let (e, _) = entry("nl", bad_j, 7100);
            assert!(
                matches!(
                    roster.add_office(e),
                    Err(RosterError::InvalidJurisdiction { .. })
                ),
                "jurisdiction {bad_j:?} accepted"
            );
        }
        for good_j in ["US", "US-CA", "GB", "CN-91", "FR-75C"] {
            let mut r = before.clone();
            r.add_office(entry("nl", good_j, 7100).0)
                .unwrap_or_else(|e| panic!("jurisdiction {good_j:?} refused: {e}"));
        }
        for bad_addr in [
            "localhost:7000",
            "127.0.0.1",
            "127.0.0.1:0",
            "0.0.0.0:7000",
            "[::]:7000",
        ] {
            let (mut e, _) = entry("nl", "NL", 7100);
            e.address = bad_addr.to_string();
            assert!(
                matches!(
                    roster.add_office(e),
                    Err(RosterError::InvalidAddress { .. })
                ),
                "address {bad_addr:?} accepted"
            );
        }
        for bad_key in ["abcd", &"A".repeat(64), &"00".repeat(32)] {
            let (mut e, _) = entry("nl", "NL", 7100);
            e.signing_key = bad_key.to_string();
            assert!(
                matches!(roster.add_office(e), Err(RosterError::InvalidKey { .. })),
                "key {bad_key:?} accepted"
            );
        }
        assert_eq!(roster, before);
    }

    #[test]
    fn network_name_and_office_count_limits() {
        for bad in ["", "Test", "a b", "net_1", &"a".repeat(65)] {
            assert!(
                matches!(
                    Roster::new(bad),
                    Err(RosterError::InvalidNetworkName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        Roster::new(&"a".repeat(64)).unwrap();

        // Built directly and validated once: add_office re-validates the whole roster (two
        // scalar multiplications per key), which is quadratic and slow in debug builds.
        let mut roster = Roster::new("big").unwrap();
        roster.offices = (0..MAX_OFFICES)
            .map(|i| entry(&format!("o{i}"), "DE", 1000 + i as u16).0)
            .collect();
        roster
            .validate()
            .expect("exactly MAX_OFFICES offices is allowed");
        assert!(matches!(
            roster.add_office(entry("one-too-many", "DE", 9999).0),
            Err(RosterError::TooManyOffices { .. })
        ));
        assert_eq!(roster.offices.len(), MAX_OFFICES);
    }

    #[test]
    fn signing_invalid_roster_fails() {
        let (mut roster, _) = roster_with(&["us"]);
        roster.offices[0].id = "Bad".to_string();
        assert!(matches!(
            roster.sign(&generate()),
            Err(RosterError::InvalidOfficeId { .. })
        ));
    }

    #[test]
    fn canonical_bytes_stable_after_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roster.json");
        let root = generate();
        let (roster, _) = roster_with(&["us", "de", "cn"]);
        let before = roster.signing_bytes();
        let signed = roster.sign(&root).unwrap();
        signed.save(&path).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\n  \"roster\": {"),
            "not pretty JSON:\n{text}"
        );
        let loaded = SignedRoster::load(&path).unwrap();
        assert_eq!(loaded.roster.signing_bytes(), before);
        assert_eq!(loaded.signature, signed.signature);
        loaded.verify(&root.verifying_key()).unwrap();

        // Saving again over the old file works and leaves no temporary file behind.
        signed.save(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["roster.json"]);
    }

    #[test]
    fn canonical_bytes_are_pinned() {
        let roster = Roster {
            network: "n".into(),
            serial: 7,
            offices: vec![OfficeEntry {
                id: "us".into(),
                jurisdiction: "US-CA".into(),
                signing_key: "aa".into(),
                transport_key: "bb".into(),
                address: "127.0.0.1:1".into(),
                retired: false,
            }],
        };
        assert_eq!(
            String::from_utf8(roster.signing_bytes()).unwrap(),
            "consentd/roster/v1\n{\"network\":\"n\",\"serial\":7,\"offices\":[{\"id\":\"us\",\
             \"jurisdiction\":\"US-CA\",\"signing_key\":\"aa\",\"transport_key\":\"bb\",\
             \"address\":\"127.0.0.1:1\"}]}"
        );
    }

    #[test]
    fn canonical_bytes_of_a_retired_office_are_pinned() {
        let roster = Roster {
            network: "n".into(),
            serial: 8,
            offices: vec![OfficeEntry {
                id: "nl".into(),
                jurisdiction: "NL".into(),
                signing_key: "aa".into(),
                transport_key: "bb".into(),
                address: "127.0.0.1:1".into(),
                retired: true,
            }],
        };
        assert_eq!(
            String::from_utf8(roster.signing_bytes()).unwrap(),
            "consentd/roster/v1\n{\"network\":\"n\",\"serial\":8,\"offices\":[{\"id\":\"nl\",\
             \"jurisdiction\":\"NL\",\"signing_key\":\"aa\",\"transport_key\":\"bb\",\
             \"address\":\"127.0.0.1:1\",\"retired\":true}]}"
        );
    }

    /// A roster signed by a build without `retired` (its bytes written out here by hand, not by
    /// this build's serializer) still loads, verifies and lists every office as active.
    #[test]
    fn a_roster_signed_before_retirement_existed_still_verifies() {
        let root = generate();
        let (us, _) = entry("us", "US", 7000);
        let (de, _) = entry("de", "DE", 7001);
        let office = |e: &OfficeEntry| {
            format!(
                "{{\"id\":\"{}\",\"jurisdiction\":\"{}\",\"signing_key\":\"{}\",\"transport_key\":\"{}\",\"address\":\"{}\"}}",
                e.id, e.jurisdiction, e.signing_key, e.transport_key, e.address
            )
        };
        let old_json = format!(
            "{{\"network\":\"test-net\",\"serial\":3,\"offices\":[{},{}]}}",
            office(&us),
            office(&de)
        );
        let mut signed_bytes = ROSTER_SIGN_DOMAIN.to_vec();
        signed_bytes.extend_from_slice(old_json.as_bytes());
        let signature = hex::encode(root.sign(&signed_bytes).to_bytes());
        // As the old build saved it: pretty-printed, no `retired` anywhere.
        let file = serde_json::to_string_pretty(&serde_json::json!({
            "roster": serde_json::from_str::<serde_json::Value>(&old_json).unwrap(),
            "signature": signature,
        }))
        .unwrap();
        assert!(!file.contains("retired"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roster.json");
        std::fs::write(&path, file).unwrap();

        let loaded = SignedRoster::load(&path).unwrap();
        assert_eq!(loaded.roster.signing_bytes(), signed_bytes);
        let verified = loaded.verify(&root.verifying_key()).unwrap();
        assert!(verified.offices().all(|o| !o.retired));
        assert!(!verified.is_retired("de"));
        // Saved again by this build, it still has no `retired` and still verifies.
        verified.to_signed().save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("retired"));
        SignedRoster::load(&path)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
    }

    #[test]
    fn a_retired_office_is_signed_for_and_still_verifies_what_it_signed() {
        let root = generate();
        let (mut roster, keys) = roster_with(&["de", "nl"]);
        let serial = roster.serial;
        roster.retire_office("nl").unwrap();
        assert_eq!(
            roster.serial,
            serial + 1,
            "retiring is a new roster version"
        );
        assert!(roster.offices[1].retired && !roster.offices[0].retired);
        assert!(matches!(
            roster.clone().retire_office("nl"),
            Err(RosterError::AlreadyRetired { .. })
        ));
        assert!(matches!(
            roster.clone().retire_office("sg"),
            Err(RosterError::UnknownOffice { .. })
        ));

        let signed = roster.sign(&root).unwrap();
        let verified = signed.clone().verify(&root.verifying_key()).unwrap();
        assert!(verified.is_retired("nl"));
        assert!(!verified.is_retired("de"));
        assert!(!verified.is_retired("sg"));
        // Its signing key still names it, by id, by signer and by position.
        let nl = verified
            .office_by_signer(&keys[1].verifying_key().to_bytes())
            .unwrap();
        assert_eq!(nl.id, "nl");
        assert!(nl.retired);
        assert_eq!(verified.index_of("nl"), Some(1));

        // The flag is signed: clearing it (re-admitting the office) breaks the signature.
        let mut readmitted = signed.clone();
        readmitted.roster.offices[1].retired = false;
        assert!(matches!(
            readmitted.verify(&root.verifying_key()),
            Err(RosterError::BadSignature { .. })
        ));

        // It survives a save and a load.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roster.json");
        signed.save(&path).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"retired\": true"));
        let loaded = SignedRoster::load(&path)
            .unwrap()
            .verify(&root.verifying_key())
            .unwrap();
        assert!(loaded.is_retired("nl"));
    }

    #[test]
    fn load_rejects_unknown_fields_oversize_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (roster, _) = roster_with(&["us"]);
        let path = dir.path().join("roster.json");

        let mut value = serde_json::to_value(SignedRoster::draft(roster)).unwrap();
        value["roster"]["offices"][0]["extra"] = serde_json::json!("x");
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        let err = SignedRoster::load(&path).unwrap_err();
        assert!(matches!(err, RosterError::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("extra"), "{err}");

        std::fs::write(&path, vec![b' '; MAX_ROSTER_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            SignedRoster::load(&path),
            Err(RosterError::FileTooLarge { .. })
        ));

        let missing = dir.path().join("missing.json");
        let err = SignedRoster::load(&missing).unwrap_err();
        assert!(
            matches!(err, RosterError::Io { action: "open", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing.json"));
    }
}
