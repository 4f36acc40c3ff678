//! Per-subject keys, wrapped under a key-encryption key (KEK) that lives outside the database.
//!
//! Personal fields of records are sealed (XChaCha20-Poly1305) under a random 32-byte *subject
//! key* (see `sealed.rs`). Destroying the key makes every copy of those fields unreadable at
//! once: the Automerge history, the envelopes, projections, and copies left behind in pages redb
//! freed but did not zero (DESIGN.md 6 and 7). That is how deletion is physical.
//!
//! The subject keys themselves are stored in redb (`keys` table), *wrapped* under the KEK. A
//! destroyed subject key's wrapped bytes may also linger in a freed redb page, so once keys
//! are destroyed the KEK is **rotated**: a new KEK file is written, every remaining
//! subject key is re-wrapped under it, and the old KEK file is overwritten and removed. A stale
//! wrapped key is then sealed under a KEK that no longer exists anywhere.
//!
//! KEK files are `kek-<generation>.key` (32 bytes, mode 0600) in the data directory; the current
//! generation is the meta value [`META_KEK_GENERATION`]. Every wrapped key starts with the
//! generation it is wrapped under, so a rotation can proceed in pages and resume after a crash:
//!
//! 1. write `kek-(g+1).key` and fsync it and the directory;
//! 2. commit `kek_generation = g+1` (durable); new keys are wrapped under g+1 from now on;
//! 3. re-wrap every key still under g, in pages (each page one durable commit);
//! 4. overwrite `kek-g.key` with random bytes, fsync, unlink, fsync the directory.
//!
//! At start-up ([`KeyStore::open`]) a KEK file newer than the committed generation (crash
//! between 1 and 2) is shredded, and an older one (crash between 2 and 4) is used to finish the
//! re-wrap and then shredded.
//!
//! A batch that destroys keys also commits [`META_KEK_ROTATION_DUE`] = the current generation
//! ([`KeyStore::rotation_due_entry`]), so a crash before step 2 does not leave the destroyed
//! keys' stale wrapped copies under a KEK that stays: the rotation is due while that value is
//! not below the committed generation, and the daemon runs it at start
//! ([`KeyStore::rotation_due`]). Step 2 ends it, so nothing clears the value.
//!
//! Rotations are shared: [`KeyStore::rotate_if_due`] runs one only if a destruction is still
//! due once the rotation before it finished, so every destruction committed before a rotation
//! swapped the KEK is served by that one. A local deletion (a retention pass, an erasure) waits
//! for it before it answers; tombstones from peers, which arrive one a frame (pushes) or a few
//! hundred at a time (a round's answers) and made one rotation each (every stored key
//! re-wrapped, 2-3 s at 1,000,000 keys), only ask the daemon's rotation task for one
//! ([`KeyStore::request_rotation`]).
//!
//! Limits, stated plainly: overwriting a file does not guarantee the old blocks are gone on a
//! copy-on-write or log-structured filesystem, or on an SSD that remaps writes; backups and
//! snapshots of the data directory keep what they copied; swap may hold keys. Put the data
//! directory on an encrypted volume for defence in depth.
//!
//! **A destroyed key never comes back.** The batch that destroys keys also writes each
//! destroyed key's id to meta ([`KeyStore::destroyed_entry`], `key_destroyed/v1/<id>`, empty
//! value but the offices whose records it sealed): one entry of about 40 bytes per key ever
//! destroyed, which grows with the deletions
//! and is never pruned (a million erased subjects: about 35 MB of meta). A peer that still
//! holds the key (or took a copy before the erasure) and offers it again is refused
//! ([`KeyStore::hold_received`]) for any record but one of the office whose records it sealed
//! here (which made the key, and may still use it): the record is refused, and nothing sealed
//! under the key reads here again. Found
//! by an exploratory session: a roster office pushed an erased subject's key with a record
//! sealed under it, and the erased grant was readable again at every office.
//!
//! Replication hook: records sealed here must stay readable at the other offices allowed to
//! hold them, so a subject key has to travel with its subject's records (over the authenticated
//! peer channel, never in an envelope or a bundle). [`KeyStore::key`] gives the plain key to
//! send; the receiving office stores it with [`KeyStore::wrap_for_store`] in the same batch as
//! the records it decrypts. An office that applies a tombstone destroys the key once no record
//! it holds uses it, exactly as locally.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use consentd_storage::{IndexKey, KeyId, StorageError, Store, WriteBatch};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::subject::TOKEN_CLUSTER_LEN;

/// Bytes of a subject key and of a KEK.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Encoded wrapped key: generation u64 BE ‖ nonce ‖ sealed key.
pub const WRAPPED_BYTES: usize = 8 + NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// Meta key holding the current KEK generation (u64 LE).
pub const META_KEK_GENERATION: &str = "kek_generation";
/// Meta key: the KEK generation a key destruction made due for rotation (module docs).
pub const META_KEK_ROTATION_DUE: &str = "kek_rotation_due";
/// Meta key prefix of a destroyed subject key's id (`<prefix><hex id>`, empty value; module
/// docs): one entry per key ever destroyed here.
pub const META_KEY_DESTROYED_PREFIX: &str = "key_destroyed/v1/";
/// Keys re-wrapped per durable commit during a rotation.
pub const REWRAP_PAGE: usize = 4096;
/// Most unwrapped subject keys kept in memory; beyond it the cache is cleared (keys are
/// unwrapped again on demand, ~1 µs each). 64 Ki keys take about 6 MiB (48 bytes and the hash
/// table's slack each). The lookups it serves follow a record's arrival or write closely
/// (ingest, the projection, pushing the key with the record); consent checks never need a key.
/// At 1 Mi it kept every subject key of a million-record office resident, in plain text: about
/// 100 MB, a quarter of the memory row's excess over raw redb at 1,000,000 records.
pub const KEY_CACHE_MAX: usize = 1 << 16;
/// The key cache's shards, each under its own lock and holding at most its share of
/// [`KEY_CACHE_MAX`]: an import's authoring threads each remember a new key a record, and under
/// one lock they waited for one another (22 ms in 1.5 s of a 100,000-record import, thirty-third
/// session).
const KEY_CACHE_SHARDS: usize = 16;
/// Reads of one wrapped key in [`KeyStore::key`] when rotations keep re-wrapping it under the
/// reader (`KeyStore::unwrap_stored`). Each extra read means a whole rotation finished during
/// the previous one, so two are already rare; the bound turns a livelock into an error.
const KEY_READ_TRIES: usize = 4;

const WRAP_DOMAIN: &[u8] = b"consentd/key-wrap/v1\0";
const OWNER_DOMAIN: &[u8] = b"consentd/key-owner/v2\0";
/// The owner's domain before token layout 2 (read only by the re-index, `office::tokens`).
const OWNER_DOMAIN_V1: &[u8] = b"consentd/key-owner/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A KEK or wrapped key is missing or does not decrypt: the keys on disk are not the ones
    /// this office wrote.
    #[error("key store integrity: {0}")]
    Integrity(String),
    /// The record's key was destroyed (the record was erased) or never reached this office.
    #[error("the key of a sealed field is not held here (erased, or not yet received)")]
    Missing,
    /// A peer offered a subject key this office destroyed (module docs).
    #[error("a subject key this office destroyed was received again; refused")]
    Destroyed,
}

type Result<T, E = KeyError> = std::result::Result<T, E>;

/// A `WriteBatch::keys` entry: (owner, key id, wrapped key).
pub type KeyEntry = (IndexKey, KeyId, Vec<u8>);

/// Which records a key seals. Records a legal duty keeps through an erasure request (consent
/// proof, request confirmations, financial records, holds) use the `Kept` key, the rest the
/// `Erasable` key, so an erasure can destroy the erasable key while the kept records stay
/// readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyClass {
    Kept = 1,
    Erasable = 2,
}

/// The storage owner of a subject's keys of one class: the subject token's first
/// [`TOKEN_CLUSTER_LEN`] bytes, then a hash of the token and the class (never the subject
/// itself). The shared start puts a new subject's key beside its record's index entries, in the
/// same index leaf (`subject::TOKEN_CLUSTER_LEN`); the hash's own domain keeps an owner apart
/// from every index key, which the storage requires (`Store::keys_of`).
pub fn owner(subject_token: &[u8; 32], class: KeyClass) -> IndexKey {
    let mut owner = *subject_token;
    let tail = owner_hash(OWNER_DOMAIN, subject_token, class);
    owner[TOKEN_CLUSTER_LEN..].copy_from_slice(&tail[..32 - TOKEN_CLUSTER_LEN]);
    owner
}

/// The owner of token layout 1, for re-indexing a store written before layout 2.
pub(crate) fn owner_v1(subject_token: &[u8; 32], class: KeyClass) -> IndexKey {
    owner_hash(OWNER_DOMAIN_V1, subject_token, class)
}

fn owner_hash(domain: &[u8], subject_token: &[u8; 32], class: KeyClass) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(subject_token);
    h.update([class as u8]);
    h.finalize().into()
}

fn destroyed_meta_key(id: &KeyId) -> String {
    format!("{META_KEY_DESTROYED_PREFIX}{}", hex::encode(id))
}

fn kek_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("kek-{generation}.key"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn wrap_aad(id: &KeyId, owner: &IndexKey) -> Vec<u8> {
    let mut aad = WRAP_DOMAIN.to_vec();
    aad.extend_from_slice(id);
    aad.extend_from_slice(owner);
    aad
}

/// Wraps a subject key under a KEK of generation `generation`.
pub fn wrap(
    kek: &[u8; KEY_BYTES],
    generation: u64,
    id: &KeyId,
    owner: &IndexKey,
    key: &[u8; KEY_BYTES],
) -> Vec<u8> {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let sealed = XChaCha20Poly1305::new(kek.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: key,
                aad: &wrap_aad(id, owner),
            },
        )
        .expect("XChaCha20-Poly1305 encryption of 32 bytes cannot fail");
    let mut out = Vec::with_capacity(WRAPPED_BYTES);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), WRAPPED_BYTES, "wrapped key has a fixed size");
    out
}

/// The KEK generation a wrapped key names.
pub fn wrapped_generation(wrapped: &[u8]) -> Option<u64> {
    (wrapped.len() == WRAPPED_BYTES)
        .then(|| u64::from_be_bytes(wrapped[..8].try_into().expect("8 bytes")))
}

/// Unwraps with a candidate KEK; `None` if it is not the right KEK or the bytes were altered.
pub fn unwrap_with(
    kek: &[u8; KEY_BYTES],
    id: &KeyId,
    owner: &IndexKey,
    wrapped: &[u8],
) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    if wrapped.len() != WRAPPED_BYTES {
        return None;
    }
    let plain = XChaCha20Poly1305::new(kek.into())
        .decrypt(
            XNonce::from_slice(&wrapped[8..8 + NONCE_BYTES]),
            Payload {
                msg: &wrapped[8 + NONCE_BYTES..],
                aad: &wrap_aad(id, owner),
            },
        )
        .ok()?;
    let plain = Zeroizing::new(plain);
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&plain);
    Some(key)
}

struct Keks {
    generation: u64,
    current: Zeroizing<[u8; KEY_BYTES]>,
    /// Older KEKs still needed while a rotation re-wraps (normally empty).
    older: Vec<(u64, Zeroizing<[u8; KEY_BYTES]>)>,
}

impl Keks {
    fn get(&self, generation: u64) -> Option<&[u8; KEY_BYTES]> {
        if generation == self.generation {
            return Some(&self.current);
        }
        self.older
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, k)| &**k)
    }
}

/// The office's subject keys.
pub struct KeyStore {
    dir: PathBuf,
    store: Store,
    /// Read by every write that wraps a new key and every unwrap; written only by a rotation.
    /// (A mutex made the wraps of an import's authoring threads wait for one another: 51 ms in
    /// 1.5 s of a 100,000-record import, thirty-third session.)
    keks: RwLock<Keks>,
    /// Shard `shard_of(id)` holds key `id` if any does.
    cache: [Mutex<HashMap<KeyId, Zeroizing<[u8; KEY_BYTES]>>>; KEY_CACHE_SHARDS],
    /// One rotation at a time. A rotation asked for while one runs waits here, then finds
    /// whether that one already retired the KEK it needed retired (`rotate_if_due`).
    rotating: tokio::sync::Mutex<()>,
    /// Wakes the office's rotation task ([`KeyStore::request_rotation`]).
    rotation_wanted: tokio::sync::Notify,
    /// Writes that seal under existing keys hold it shared until their commit is durable; key
    /// destruction holds it exclusively while it decides which keys no record uses, so a key is
    /// never destroyed under a record being written. Taken after the token locks and before any
    /// record's lock (`office::locks` gives the order and why).
    in_use: tokio::sync::RwLock<()>,
    /// Tests: the cache drops every key right after remembering it, as a full shard's clearing
    /// may at any time (`office::made_or_stored`).
    #[cfg(test)]
    pub(crate) drop_remembered: std::sync::atomic::AtomicBool,
}

fn not_held(generation: u64) -> KeyError {
    KeyError::Integrity(format!(
        "a key is wrapped under KEK generation {generation}, which is not held"
    ))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guarded data is replaced whole under the lock; a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // As for `lock`.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The cache shard of key `id`: its last byte, random in a fresh id (`time_ordered_id`).
fn shard_of(id: &KeyId) -> usize {
    usize::from(id[id.len() - 1]) % KEY_CACHE_SHARDS
}

fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Overwrites a file with random bytes, syncs, and removes it (see the module's limits).
fn shred(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).map_err(io(path))?.len() as usize;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let noise: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    f.write_all(&noise).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    drop(f);
    std::fs::remove_file(path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn read_kek(path: &Path) -> Result<Zeroizing<[u8; KEY_BYTES]>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(io(path))?);
    if bytes.len() != KEY_BYTES {
        return Err(KeyError::Integrity(format!(
            "{} is {} bytes, not {KEY_BYTES}",
            path.display(),
            bytes.len()
        )));
    }
    let mut k = Zeroizing::new([0u8; KEY_BYTES]);
    k.copy_from_slice(&bytes);
    Ok(k)
}

/// Generations of the `kek-<g>.key` files in `dir`.
fn kek_files(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(g) = name
            .strip_prefix("kek-")
            .and_then(|r| r.strip_suffix(".key"))
            .and_then(|g| g.parse::<u64>().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl KeyStore {
    /// Opens the key store of the data directory `dir`: creates the first KEK for a new store,
    /// and finishes a rotation a crash interrupted. Blocking; called at start-up.
    pub fn open(dir: &Path, store: Store) -> Result<KeyStore> {
        let generation =
            match store.meta(META_KEK_GENERATION)? {
                Some(b) => u64::from_le_bytes(b.as_slice().try_into().map_err(|_| {
                    KeyError::Integrity("meta kek_generation is not 8 bytes".into())
                })?),
                None => {
                    let first = 1;
                    let path = kek_path(dir, first);
                    if path.exists() {
                        // A crash after writing the first KEK but before recording it.
                        shred(&path)?;
                    }
                    let kek: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(rand::random());
                    write_new_secret(&path, &*kek)?;
                    sync_dir(dir)?;
                    store.commit_blocking(WriteBatch {
                        meta: vec![(META_KEK_GENERATION.into(), first.to_le_bytes().to_vec())],
                        ..WriteBatch::default()
                    })?;
                    first
                }
            };
        let current = read_kek(&kek_path(dir, generation)).map_err(|e| {
            KeyError::Integrity(format!(
                "the current key-encryption key (generation {generation}) cannot be read: {e}; without it no sealed field can be read"
            ))
        })?;
        let mut older = Vec::new();
        for g in kek_files(dir)? {
            if g > generation {
                // Written by a rotation that never committed: nothing is wrapped under it.
                shred(&kek_path(dir, g))?;
            } else if g < generation {
                older.push((g, read_kek(&kek_path(dir, g))?));
            }
        }
        let ks = KeyStore {
            dir: dir.to_path_buf(),
            store,
            keks: RwLock::new(Keks {
                generation,
                current,
                older,
            }),
            cache: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            #[cfg(test)]
            drop_remembered: std::sync::atomic::AtomicBool::new(false),
            rotating: tokio::sync::Mutex::new(()),
            rotation_wanted: tokio::sync::Notify::new(),
            in_use: tokio::sync::RwLock::new(()),
        };
        if !read(&ks.keks).older.is_empty() {
            ks.rewrap_blocking()?;
        }
        Ok(ks)
    }

    /// Held by a write from choosing its keys until its commit is durable.
    pub async fn using(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.in_use.read().await
    }

    /// Held while deciding which keys to destroy and destroying them.
    pub async fn destroying(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.in_use.write().await
    }

    /// The current KEK generation.
    pub fn generation(&self) -> u64 {
        read(&self.keks).generation
    }

    /// Makes a new subject key for `owner`: `(id, key, batch entry)`. The entry must go into
    /// the same `WriteBatch` as the first record sealed under the key.
    pub fn new_key(&self, owner: &IndexKey) -> (KeyId, Zeroizing<[u8; KEY_BYTES]>, KeyEntry) {
        let id: KeyId = crate::office::time_ordered_id();
        let key: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(rand::random());
        let entry = self.wrap_for_store(owner, &id, &key);
        self.remember(id, &key);
        (id, key, entry)
    }

    /// The `WriteBatch::keys` entry storing `key` (wrapped under the current KEK). Also the
    /// replication hook: an office receiving a subject key from a peer stores it with this.
    pub fn wrap_for_store(&self, owner: &IndexKey, id: &KeyId, key: &[u8; KEY_BYTES]) -> KeyEntry {
        let keks = read(&self.keks);
        (
            *owner,
            *id,
            wrap(&keks.current, keks.generation, id, owner, key),
        )
    }

    /// Holds a subject key received from a peer in memory, so the records it arrived with can
    /// be opened before the batch that stores it (wrapped, via [`KeyStore::wrap_for_store`]) is
    /// durable. [`KeyStore::forget`] drops it again. A key this office destroyed is refused
    /// ([`KeyError::Destroyed`]): what it seals stays unreadable here.
    ///
    /// `origin` is the office that wrote the record the key arrived to open (its `office`, the
    /// first change's signer; a hold copy's too, whatever its `origin` says). A destroyed key is taken
    /// again only for a record of an office whose records it sealed here before: that office
    /// made it and still uses it (its record made while cut off from an erasure here arrives
    /// later, and the erasure's sweep must read it to delete it, `erasure::sweep_late_arrivals`).
    /// Another office cannot sign such a record, so it cannot bring the key back.
    pub fn hold_received(&self, id: KeyId, key: &[u8; KEY_BYTES], origin: &str) -> Result<()> {
        if let Some(offices) = self.destroyed_for(&id)? {
            if !offices.iter().any(|o| o == origin) {
                return Err(KeyError::Destroyed);
            }
        }
        self.remember(id, key);
        Ok(())
    }

    /// The meta entry that remembers `id` as destroyed, for the batch that deletes the key
    /// (module docs): the offices whose records it sealed here (comma-separated).
    pub fn destroyed_entry<'a>(
        id: &KeyId,
        offices: impl IntoIterator<Item = &'a String>,
    ) -> (String, Vec<u8>) {
        let offices: Vec<&str> = offices.into_iter().map(String::as_str).collect();
        (destroyed_meta_key(id), offices.join(",").into_bytes())
    }

    /// The offices whose records the subject key `id` sealed here, if this office destroyed it
    /// (an erasure or a retention pass deleted every record here sealed under it).
    pub fn destroyed_for(&self, id: &KeyId) -> Result<Option<Vec<String>>> {
        Ok(self.store.meta(&destroyed_meta_key(id))?.map(|v| {
            String::from_utf8_lossy(&v)
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect()
        }))
    }

    /// Whether this office destroyed the subject key `id`.
    pub fn was_destroyed(&self, id: &KeyId) -> Result<bool> {
        Ok(self.destroyed_for(id)?.is_some())
    }

    fn remember(&self, id: KeyId, key: &[u8; KEY_BYTES]) {
        let mut cache = lock(&self.cache[shard_of(&id)]);
        if cache.len() >= KEY_CACHE_MAX / KEY_CACHE_SHARDS {
            cache.clear();
        }
        cache.insert(id, Zeroizing::new(*key));
        #[cfg(test)]
        if self
            .drop_remembered
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            cache.clear();
        }
    }

    /// The plain subject key `id` (from memory, or unwrapped from the store). Also the
    /// replication hook for sending a key to a peer that may hold its records.
    pub fn key(&self, id: &KeyId) -> Result<Zeroizing<[u8; KEY_BYTES]>> {
        if let Some(k) = lock(&self.cache[shard_of(id)]).get(id) {
            return Ok(k.clone());
        }
        let stored = self.store.key(id)?.ok_or(KeyError::Missing)?;
        let key = self.unwrap_stored(id, stored)?;
        self.remember(*id, &key);
        Ok(key)
    }

    /// Unwraps `stored`, the `(owner, wrapped key)` of `id` as read from the store.
    ///
    /// The read and the KEKs are not taken together: a rotation may re-wrap the key and shred
    /// the KEK it was under between the two (`using` holds off only the KEK swap, not the
    /// re-wrap). The store then holds the key under a newer KEK, so a wrapped key naming a
    /// generation older than the current one and no longer held is read again. Only when the
    /// store still holds the same bytes is the key lost. Found by
    /// tests/crash_keeps_acknowledged_writes.rs ("a key is wrapped under KEK generation 12,
    /// which is not held" from a write racing an erasure's rotation).
    fn unwrap_stored(
        &self,
        id: &KeyId,
        mut stored: (IndexKey, Vec<u8>),
    ) -> Result<Zeroizing<[u8; KEY_BYTES]>> {
        for _ in 0..KEY_READ_TRIES {
            let (owner, wrapped) = &stored;
            let generation = wrapped_generation(wrapped)
                .ok_or_else(|| KeyError::Integrity("a wrapped key has the wrong length".into()))?;
            {
                let keks = read(&self.keks);
                if let Some(kek) = keks.get(generation) {
                    return unwrap_with(kek, id, owner, wrapped).ok_or_else(|| {
                        KeyError::Integrity("a wrapped key does not unwrap under its KEK".into())
                    });
                }
                if generation > keks.generation {
                    return Err(not_held(generation));
                }
            }
            let again = self.store.key(id)?.ok_or(KeyError::Missing)?;
            if again == stored {
                // Nothing re-wrapped it: it is under a KEK that is gone.
                return Err(not_held(generation));
            }
            stored = again;
        }
        Err(KeyError::Integrity(format!(
            "a key was re-wrapped {KEY_READ_TRIES} times while it was being read"
        )))
    }

    /// Ids of the keys stored for `owner`.
    pub fn keys_of(&self, owner: &IndexKey) -> Result<Vec<KeyId>> {
        Ok(self.store.keys_of(owner)?)
    }

    /// Drops destroyed keys from memory (after the commit that deleted them).
    pub fn forget(&self, ids: &[KeyId]) {
        for id in ids {
            lock(&self.cache[shard_of(id)]).remove(id);
        }
    }

    /// The meta entry a batch that destroys keys carries: the current KEK is due for rotation
    /// from its commit on (module docs). Taken while the keys are held exclusively
    /// ([`KeyStore::destroying`]), so no rotation swaps the KEK meanwhile; one that committed its
    /// generation and waits for the swap retires this KEK itself.
    pub fn rotation_due_entry(&self) -> (String, Vec<u8>) {
        (
            META_KEK_ROTATION_DUE.into(),
            self.generation().to_le_bytes().to_vec(),
        )
    }

    /// Whether a committed key destruction still waits for its KEK rotation: not yet run, or
    /// cut off from it by a crash.
    pub fn rotation_due(&self) -> Result<bool> {
        let Some(v) = self.store.meta(META_KEK_ROTATION_DUE)? else {
            return Ok(false);
        };
        let due = <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| KeyError::Integrity("the KEK rotation due has the wrong length".into()))?;
        Ok(due >= self.generation())
    }

    /// Whether a rotation is due or unfinished: a committed key destruction still waits for
    /// one, or a rotation stopped (an I/O error) before it shredded the KEK it replaced.
    /// `status` reports it as `kek_rotation_due`.
    pub fn rotation_pending(&self) -> Result<bool> {
        Ok(self.rotation_due()? || !read(&self.keks).older.is_empty())
    }

    /// Runs the rotation that committed key destructions made due, or finishes one that
    /// stopped; whether anything ran. Callers that destroyed keys call it (or, not to wait,
    /// [`KeyStore::request_rotation`]) after their commits; the daemon calls it at start, for a
    /// destruction a crash cut off from its rotation (module docs).
    ///
    /// **One rotation serves every destruction committed before it swapped the KEK.** The
    /// check is made holding `rotating`: a caller that waited for a rotation in progress finds
    /// its destruction covered (the rotation retired the KEK it was committed under) and
    /// returns, so a burst of destructions costs at most two rotations, not one each. Each
    /// rotation re-wraps every stored key and rewrites the keys table (rows of 128 bytes):
    /// measured here 0.44 s at 100,000 keys and 2.0-2.4 s at 1,000,000 (3.2 s before
    /// `KeyStore::rewrap` overlapped its pages with their commits).
    pub async fn rotate_if_due(&self) -> Result<bool> {
        let one = self.rotating.lock().await;
        if self.rotation_due()? {
            self.rotate_holding(&one).await?;
            return Ok(true);
        }
        if !read(&self.keks).older.is_empty() {
            // A rotation that stopped after its swap: finish its re-wrap and shredding.
            self.rewrap().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Asks the office's rotation task (`daemon::rotations`) to run [`KeyStore::rotate_if_due`]
    /// soon, without waiting for it: for destructions no caller waits on (tombstones from
    /// peers). The rotation is due in the store already, so a crash before it runs loses
    /// nothing; the daemon runs it at start.
    pub fn request_rotation(&self) {
        self.rotation_wanted.notify_one();
    }

    /// Resolves once a rotation has been requested since the last time it resolved.
    pub async fn rotation_requested(&self) {
        self.rotation_wanted.notified().await
    }

    /// Rotates the KEK (module docs, steps 1-4), due or not.
    pub async fn rotate(&self) -> Result<()> {
        let one = self.rotating.lock().await;
        self.rotate_holding(&one).await
    }

    /// Steps 1-4; `_one` is the `rotating` guard (one rotation at a time).
    async fn rotate_holding(&self, _one: &tokio::sync::MutexGuard<'_, ()>) -> Result<()> {
        let next = self.generation() + 1;
        let path = kek_path(&self.dir, next);
        let kek: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(rand::random());
        write_new_secret(&path, &*kek)?;
        sync_dir(&self.dir)?;
        self.store
            .commit(WriteBatch {
                meta: vec![(META_KEK_GENERATION.into(), next.to_le_bytes().to_vec())],
                ..WriteBatch::default()
            })
            .await?;
        {
            // No write may be between wrapping a key and its durable commit while the current
            // KEK changes: a key wrapped under the old KEK but committed after the re-wrap scan
            // passed its id would stay under a KEK that `shred_older` then destroys, and the
            // office could never read it again (found by tests/partition_heals.rs). Writes hold
            // `using` from wrapping until durable, so once this is held every key wrapped under
            // the old KEK is in the store, where the re-wrap below finds it.
            let _no_writes = self.in_use.write().await;
            let mut keks = write(&self.keks);
            let old = std::mem::replace(&mut keks.current, kek);
            let old_generation = std::mem::replace(&mut keks.generation, next);
            keks.older.push((old_generation, old));
        }
        self.rewrap().await
    }

    /// Steps 3-4: re-wraps every key not under the current KEK, then shreds older KEK files.
    ///
    /// Each page is re-wrapped while the one before it commits (the pages are disjoint ranges
    /// of key ids, and a commit changes only its own): with one page after the other, the
    /// rotation was the sum of both.
    async fn rewrap(&self) -> Result<()> {
        let (mut last, mut batch) = self.rewrap_page(None)?;
        while let Some(after) = last {
            let commit = async {
                match batch {
                    Some(b) => self.store.commit(b).await.map(|_| ()),
                    None => Ok(()),
                }
            };
            // The commit first: it is queued for the writer before the next page's CPU work.
            let next = async { self.rewrap_page(Some(&after)) };
            let (committed, next) = tokio::join!(biased; commit, next);
            committed?;
            (last, batch) = next?;
        }
        debug_assert!(batch.is_none(), "the last page re-wraps nothing");
        self.shred_older()
    }

    fn rewrap_blocking(&self) -> Result<()> {
        let mut cursor: Option<KeyId> = None;
        loop {
            let (page, batch) = self.rewrap_page(cursor.as_ref())?;
            if let Some(batch) = batch {
                self.store.commit_blocking(batch)?;
            }
            match page {
                Some(last) => cursor = Some(last),
                None => break,
            }
        }
        self.shred_older()
    }

    /// One page of re-wrapping: the last key id seen (None at the end) and the batch to commit.
    fn rewrap_page(&self, after: Option<&KeyId>) -> Result<(Option<KeyId>, Option<WriteBatch>)> {
        let rows = self.store.snapshot()?.keys_after(after, REWRAP_PAGE)?;
        let Some(last) = rows.last().map(|r| r.0) else {
            return Ok((None, None));
        };
        let keks = read(&self.keks);
        let mut batch = WriteBatch::default();
        for (id, owner, wrapped) in rows {
            let generation = wrapped_generation(&wrapped)
                .ok_or_else(|| KeyError::Integrity("a wrapped key has the wrong length".into()))?;
            if generation == keks.generation {
                continue;
            }
            let kek = keks.get(generation).ok_or_else(|| not_held(generation))?;
            let key = unwrap_with(kek, &id, &owner, &wrapped).ok_or_else(|| {
                KeyError::Integrity("a wrapped key does not unwrap under its KEK".into())
            })?;
            batch
                .key_rewraps
                .push((id, wrap(&keks.current, keks.generation, &id, &owner, &key)));
        }
        let batch = (!batch.key_rewraps.is_empty()).then_some(batch);
        Ok((Some(last), batch))
    }

    fn shred_older(&self) -> Result<()> {
        let older: Vec<u64> = read(&self.keks).older.iter().map(|(g, _)| *g).collect();
        for g in older {
            let path = kek_path(&self.dir, g);
            if path.exists() {
                shred(&path)?;
            }
            write(&self.keks).older.retain(|(o, _)| *o != g);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_open_only_under_their_kek_id_and_owner() {
        let kek = [7u8; 32];
        let (id, owner, key) = ([1u8; 16], [2u8; 32], [3u8; 32]);
        let w = wrap(&kek, 5, &id, &owner, &key);
        assert_eq!(wrapped_generation(&w), Some(5));
        assert_eq!(*unwrap_with(&kek, &id, &owner, &w).unwrap(), key);
        assert!(unwrap_with(&[8u8; 32], &id, &owner, &w).is_none());
        assert!(unwrap_with(&kek, &[9u8; 16], &owner, &w).is_none());
        assert!(unwrap_with(&kek, &id, &[9u8; 32], &w).is_none());
        let mut flipped = w.clone();
        flipped[40] ^= 1;
        assert!(unwrap_with(&kek, &id, &owner, &flipped).is_none());
    }

    /// A new key store in a temporary data directory (call on a multi-threaded runtime).
    fn open_key_store() -> (tempfile::TempDir, Store, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb")).unwrap();
        let ks = tokio::task::block_in_place(|| KeyStore::open(dir.path(), store.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, store, ks)
    }

    /// Commits wrapped keys, as a write's batch would.
    async fn store_keys(store: &Store, keys: Vec<KeyEntry>) {
        store
            .commit(WriteBatch {
                keys,
                ..WriteBatch::default()
            })
            .await
            .unwrap();
    }

    #[test]
    fn owners_differ_by_class_and_start_with_their_subjects_cluster() {
        let t = [4u8; 32];
        let (kept, erasable) = (owner(&t, KeyClass::Kept), owner(&t, KeyClass::Erasable));
        assert_ne!(kept, erasable);
        for o in [kept, erasable] {
            assert_eq!(o[..TOKEN_CLUSTER_LEN], t[..TOKEN_CLUSTER_LEN]);
            assert_ne!(o, t, "an owner is never the subject's own token");
        }
        assert_ne!(
            owner_v1(&t, KeyClass::Kept),
            kept,
            "layout 2 differs from layout 1"
        );
    }

    /// A key destruction committed with its rotation due, and a crash before the rotation: the
    /// rotation is due until one runs, and `rotate_if_due` runs it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_a_destruction_made_due_runs_once_at_start() {
        let (dir, store, ks) = open_key_store();
        assert!(!ks.rotation_due().unwrap(), "nothing destroyed yet");
        assert!(!ks.rotate_if_due().await.unwrap());
        store
            .commit(WriteBatch {
                meta: vec![ks.rotation_due_entry()],
                ..WriteBatch::default()
            })
            .await
            .unwrap();
        assert!(ks.rotation_due().unwrap());
        assert!(ks.rotate_if_due().await.unwrap(), "the due rotation runs");
        assert_eq!(ks.generation(), 2);
        assert!(
            !dir.path().join("kek-1.key").exists(),
            "the old KEK is shredded"
        );
        assert!(!ks.rotation_due().unwrap());
        assert!(!ks.rotate_if_due().await.unwrap(), "and only once");
        assert_eq!(ks.generation(), 2);
    }

    /// Destructions whose rotation is asked for while another rotation runs share one: each
    /// caller checks, once it holds the rotation lock, whether the rotation before it already
    /// retired the KEK its destruction was committed under. A destruction committed after a
    /// rotation still gets its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotations_asked_for_while_one_runs_are_served_by_one() {
        let (dir, store, ks) = open_key_store();
        let ks = std::sync::Arc::new(ks);
        let due = |ks: &KeyStore| WriteBatch {
            meta: vec![ks.rotation_due_entry()],
            ..WriteBatch::default()
        };
        store.commit(due(&ks)).await.unwrap();
        // A rotation in progress (its lock held) while three destructions ask for one.
        let running = ks.rotating.lock().await;
        let asked: Vec<_> = (0..3)
            .map(|_| {
                let ks = ks.clone();
                tokio::spawn(async move { ks.rotate_if_due().await.unwrap() })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(running);
        let mut ran = 0;
        for a in asked {
            ran += usize::from(a.await.unwrap());
        }
        assert_eq!(ran, 1, "one rotation for the three");
        assert_eq!(ks.generation(), 2);
        assert!(!dir.path().join("kek-1.key").exists());
        assert!(!ks.rotation_pending().unwrap());

        store.commit(due(&ks)).await.unwrap();
        assert!(ks.rotation_pending().unwrap(), "a later destruction is due");
        assert!(ks.rotate_if_due().await.unwrap());
        assert_eq!(ks.generation(), 3);
        assert!(!dir.path().join("kek-2.key").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_rewraps_every_key_and_removes_the_old_kek() {
        let (dir, store, ks) = open_key_store();
        let o = [5u8; 32];
        let (id, key, entry) = ks.new_key(&o);
        store_keys(&store, vec![entry]).await;
        let old_kek = std::fs::read(dir.path().join("kek-1.key")).unwrap();
        ks.rotate().await.unwrap();
        assert!(!dir.path().join("kek-1.key").exists());
        assert!(dir.path().join("kek-2.key").exists());
        ks.forget(&[id]);
        assert_eq!(*ks.key(&id).unwrap(), *key);
        let (_, wrapped) = store.key(&id).unwrap().unwrap();
        assert_eq!(wrapped_generation(&wrapped), Some(2));
        let old: [u8; 32] = old_kek.try_into().unwrap();
        assert!(unwrap_with(&old, &id, &o, &wrapped).is_none());
    }

    /// The re-wrap goes page by page, each page computed while the one before commits: every
    /// key of a store holding more than two pages ends under the new KEK and opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_rewraps_every_page_of_keys() {
        let (_dir, store, ks) = open_key_store();
        let mut held = Vec::new();
        let mut entries = Vec::new();
        for i in 0..(2 * REWRAP_PAGE + 1) as u32 {
            let mut owner = [0u8; 32];
            owner[..4].copy_from_slice(&i.to_le_bytes());
            let (id, key, entry) = ks.new_key(&owner);
            held.push((id, key));
            entries.push(entry);
        }
        store_keys(&store, entries).await;
        ks.rotate().await.unwrap();
        let rows = store
            .snapshot()
            .unwrap()
            .keys_after(None, 3 * REWRAP_PAGE)
            .unwrap();
        assert_eq!(rows.len(), held.len());
        for (_, _, wrapped) in &rows {
            assert_eq!(wrapped_generation(wrapped), Some(2));
        }
        let ids: Vec<KeyId> = held.iter().map(|(id, _)| *id).collect();
        ks.forget(&ids);
        for (id, key) in &held {
            assert_eq!(*ks.key(id).unwrap_or_else(|e| panic!("{e}")), **key);
        }
    }

    /// The cache keeps at most `KEY_CACHE_MAX` keys across its shards, keeps the newest, and a
    /// key it dropped is read back from the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_key_cache_stays_within_its_bound_and_what_it_drops_is_read_from_the_store() {
        let (_dir, store, ks) = open_key_store();
        let (first, first_key, entry) = ks.new_key(&[8u8; 32]);
        store_keys(&store, vec![entry]).await;
        let mut last = first;
        for i in 0..2 * KEY_CACHE_MAX as u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[15] = i as u8;
            ks.hold_received(id, &[9u8; KEY_BYTES], "nl").unwrap();
            last = id;
        }
        let cached: usize = ks.cache.iter().map(|c| lock(c).len()).sum();
        assert!(cached <= KEY_CACHE_MAX, "{cached} keys cached");
        assert!(cached > KEY_CACHE_MAX / 2, "only {cached} keys cached");
        assert_eq!(*ks.key(&last).unwrap(), [9u8; KEY_BYTES], "the newest key");
        ks.forget(&[first]);
        assert_eq!(
            *ks.key(&first).unwrap(),
            *first_key,
            "read back from the store"
        );
    }

    /// Regression (tests/partition_heals.rs): a write that wrapped a key under the old KEK and
    /// commits while a rotation runs must not leave it under a KEK the rotation shreds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_wrapped_during_a_rotation_stays_readable() {
        let (dir, store, ks) = open_key_store();
        let ks = std::sync::Arc::new(ks);
        // A write picks (and wraps) its key under generation 1, holding `using`...
        let using = ks.using().await;
        let (id, key, entry) = ks.new_key(&[6u8; 32]);
        // ...while a rotation starts.
        let rotation = tokio::spawn({
            let ks = ks.clone();
            async move { ks.rotate().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // The write commits and lets go; only then may the rotation swap KEKs and re-wrap.
        store_keys(&store, vec![entry]).await;
        drop(using);
        rotation.await.unwrap().unwrap();
        assert!(!dir.path().join("kek-1.key").exists());
        ks.forget(&[id]);
        assert_eq!(
            *ks.key(&id).unwrap_or_else(|e| panic!("{e}")),
            *key,
            "the key written during the rotation is readable"
        );
    }

    /// Regression (tests/crash_keeps_acknowledged_writes.rs): a reader that read a wrapped key
    /// just before a rotation re-wrapped it and shredded the old KEK reads it again instead of
    /// calling the key lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_read_just_before_a_rotation_is_read_again() {
        let (dir, store, ks) = open_key_store();
        let (id, key, entry) = ks.new_key(&[7u8; 32]);
        store_keys(&store, vec![entry]).await;
        // The reader's store read, under generation 1...
        let stale = store.key(&id).unwrap().unwrap();
        assert_eq!(wrapped_generation(&stale.1), Some(1));
        // ...then a whole rotation: re-wrapped under 2, KEK 1 shredded...
        ks.rotate().await.unwrap();
        assert!(!dir.path().join("kek-1.key").exists());
        // ...then the reader takes the KEKs.
        let read = ks
            .unwrap_stored(&id, stale)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*read, *key);
    }

    /// A key under a KEK that is gone, with nothing re-wrapping it, is reported, not retried
    /// forever; so is one naming a generation newer than any this office made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_under_a_kek_that_is_gone_is_reported() {
        let (_dir, store, ks) = open_key_store();
        ks.rotate().await.unwrap();
        assert_eq!(ks.generation(), 2);
        let o = [8u8; 32];
        for (generation, id) in [(1u64, [1u8; 16]), (3, [3u8; 16])] {
            let wrapped = wrap(&[9u8; 32], generation, &id, &o, &[4u8; 32]);
            store_keys(&store, vec![(o, id, wrapped)]).await;
            let err = ks.key(&id).map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("KEK generation {generation}, which is not held")),
                "{err}"
            );
        }
    }
}
