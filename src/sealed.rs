//! Sealed personal fields: which fields of a record are personal data, and how they are sealed
//! under the subject's key (XChaCha20-Poly1305).
//!
//! A sealed field is the text `cx1:` followed by strict base64 of
//! `key_id[16] ‖ nonce[24] ‖ ciphertext ‖ tag[16]`, with associated data `consentd/field/v1`.
//! The key id says which subject key opens it, so a field can be opened anywhere the key is
//! held (another office, once keys travel with records). Documents and projections hold only the
//! sealed text; the plain text exists in memory while a request is served.
//!
//! Personal fields: the subject identifier of every record; a consent record's evidence and
//! parental consent; a request's notes and extension reason; a transfer's recipient when the
//! transfer names a subject; a hold's reason. Everything else (purposes, kinds, dates, rule ids,
//! jurisdictions, mechanisms) is vocabulary or time and stays plain so it can be counted.

use crate::keystore::{KeyError, KeyStore, KEY_BYTES};
use crate::record::Record;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use consentd_storage::KeyId;
use consentd_sync::b64;

/// Prefix of a sealed field.
pub const PREFIX: &str = "cx1:";
const AAD: &[u8] = b"consentd/field/v1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;

pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Seals `plain` under subject key `id`.
pub fn seal(id: &KeyId, key: &[u8; KEY_BYTES], plain: &str) -> String {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain.as_bytes(),
                aad: AAD,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of a bounded text cannot fail");
    let mut raw = Vec::with_capacity(16 + NONCE_BYTES + sealed.len());
    raw.extend_from_slice(id);
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&sealed);
    format!("{PREFIX}{}", b64::encode(&raw))
}

fn raw(text: &str) -> Option<Vec<u8>> {
    let raw = b64::decode(text.strip_prefix(PREFIX)?)?;
    (raw.len() >= 16 + NONCE_BYTES + TAG_BYTES).then_some(raw)
}

/// The id of the key that opens a sealed field.
pub fn key_id(text: &str) -> Option<KeyId> {
    raw(text).and_then(|r| key_id_raw(&r))
}

/// [`key_id`] of a sealed field's decoded bytes (the projection's binary form keeps them so).
pub fn key_id_raw(raw: &[u8]) -> Option<KeyId> {
    (raw.len() >= 16 + NONCE_BYTES + TAG_BYTES).then(|| raw[..16].try_into().expect("16 bytes"))
}

/// The sealed bytes (nonce ‖ ciphertext ‖ tag) of a field, for tests that try keys on them.
pub fn sealed_bytes(text: &str) -> Option<Vec<u8>> {
    raw(text).map(|r| r[16..].to_vec())
}

/// Opens sealed bytes (as from [`sealed_bytes`]) with a candidate key.
pub fn open_bytes_with(key: &[u8; KEY_BYTES], sealed: &[u8]) -> Option<String> {
    if sealed.len() < NONCE_BYTES + TAG_BYTES {
        return None;
    }
    let plain = XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&sealed[..NONCE_BYTES]),
            Payload {
                msg: &sealed[NONCE_BYTES..],
                aad: AAD,
            },
        )
        .ok()?;
    String::from_utf8(plain).ok()
}

/// Opens a sealed field with a candidate key.
pub fn open_with(key: &[u8; KEY_BYTES], text: &str) -> Option<String> {
    open_bytes_with(key, &sealed_bytes(text)?)
}

/// Calls `f` on every personal text field of a record.
pub fn for_each_personal<E>(
    record: &mut Record,
    mut f: impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    match record {
        Record::Consent(c) => {
            f(&mut c.subject)?;
            if let Some(p) = &mut c.parental_consent {
                f(p)?;
            }
            for e in &mut c.events {
                if let Some(ev) = &mut e.evidence {
                    f(ev)?;
                }
            }
        }
        Record::Request(r) => {
            f(&mut r.subject)?;
            if let Some(n) = &mut r.note {
                f(n)?;
            }
            if let Some(x) = &mut r.extension {
                f(&mut x.reason)?;
            }
            for h in &mut r.history {
                if let Some(n) = &mut h.note {
                    f(n)?;
                }
            }
        }
        Record::Transfer(t) => {
            // A transfer that names nobody holds a company's name, not personal data.
            if let Some(s) = &mut t.subject {
                f(s)?;
                f(&mut t.recipient)?;
            }
        }
        Record::Hold(h) => {
            f(&mut h.subject)?;
            f(&mut h.reason)?;
        }
    }
    Ok(())
}

/// Seals every personal field of a new record under one key.
pub fn seal_record(record: &mut Record, id: &KeyId, key: &[u8; KEY_BYTES]) {
    let _ = for_each_personal::<()>(record, |text| {
        debug_assert!(!is_sealed(text), "a new record's fields are plain");
        *text = seal(id, key, text);
        Ok(())
    });
}

/// Opens every sealed personal field of a record with the keys held here.
pub fn open_record(keys: &KeyStore, record: Record) -> Result<Record, KeyError> {
    open_record_with(record, |id| keys.key(id))
}

/// [`open_record`] with the keys `key_of` gives (a write's own new keys first: they are not
/// durable yet, and the key cache may have dropped them).
pub fn open_record_with(
    mut record: Record,
    key_of: impl Fn(&KeyId) -> Result<zeroize::Zeroizing<[u8; KEY_BYTES]>, KeyError>,
) -> Result<Record, KeyError> {
    for_each_personal::<KeyError>(&mut record, |text| {
        if !is_sealed(text) {
            return Ok(());
        }
        let id =
            key_id(text).ok_or_else(|| KeyError::Integrity("malformed sealed field".into()))?;
        let key = key_of(&id)?;
        *text = open_with(&key, text).ok_or_else(|| {
            KeyError::Integrity("a sealed field does not open under its key".into())
        })?;
        Ok(())
    })?;
    Ok(record)
}

/// The id of the key sealing a record's subject, if the record is sealed.
pub fn record_key_id(record: &Record) -> Option<KeyId> {
    record.subject().filter(|s| is_sealed(s)).and_then(key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_open_only_under_their_key() {
        let (id, key) = ([1u8; 16], [2u8; 32]);
        let s = seal(&id, &key, "alice@example.com");
        assert!(is_sealed(&s));
        assert!(!s.contains("alice"));
        assert_eq!(key_id(&s), Some(id));
        assert_eq!(open_with(&key, &s).as_deref(), Some("alice@example.com"));
        assert!(open_with(&[3u8; 32], &s).is_none());
        // Two seals of the same text differ (random nonce): no equality leaks.
        assert_ne!(s, seal(&id, &key, "alice@example.com"));
    }
}
