//! The retention pass, and the one deletion path it shares with erasure requests.
//!
//! A pass walks the storage `expiry` index up to its date. A record whose subject is under an
//! active legal hold is counted `held` and stays (it is looked at again by the next pass); every
//! other expired record is deleted by `delete`:
//!
//! 1. under the record's write locks, load it (verifying its envelopes) and sign a tombstone
//!    over its heads (`retention/<rule>` or `request/<id>`; no personal data);
//! 2. commit, in ONE durable batch: the purge of its envelopes, projection and index entries,
//!    the tombstone, the tombstone's log leaf (kind 2) and the anonymous counts it adds;
//! 3. destroy the subject keys no remaining record uses, then rotate the key-encryption key, so
//!    copies left in freed pages are unreadable; compact after large passes.

use super::{aggregates, schedule};
use crate::keystore::{self, KeyClass};
use crate::office::{parse_time, Office, OfficeError};
use crate::protocol;
use crate::record::{doc_id_hex, epoch_day, fmt_time, DocId, Record};
use crate::sealed;
use crate::subject::Subject;
use chrono::{DateTime, Utc};
use consentd_storage::WriteBatch;
use consentd_sync::tlog::LogLeaf;
use consentd_sync::tombstone::{Reason, Tombstone};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

type Result<T, E = OfficeError> = std::result::Result<T, E>;

/// Expiry index rows read per storage call.
pub const SCAN_PAGE: usize = 4096;
/// Records deleted per durable batch (each carries a tombstone of up to 16 KiB).
pub const DELETE_CHUNK: usize = 256;
/// Compaction waits for open read transactions this many times before giving up for this pass.
pub const COMPACT_TRIES: u32 = 20;
/// Subjects whose unused keys are decided and destroyed under one exclusive hold of the keys'
/// lock (`KeyStore::destroying`). Every write waits while it is held: a pass that deleted the
/// records of a million subjects held it, in one piece, while it read every subject's records
/// and keys and committed every key's deletion (not measured; by estimate tens of seconds), in
/// which no write moved and the write path could look stalled (`office::in_flight`). A chunk is
/// a few milliseconds of reads and one commit.
pub const DESTROY_SUBJECTS_CHUNK: usize = 1024;

/// One pass or erasure at a time: aggregates are read-modify-written and keys destroyed only
/// after a full look at what remains.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A record to delete.
pub struct Deletion {
    pub id: DocId,
    pub record: Record,
    pub reason: Reason,
    /// Tombstone policy: `retention/<rule>` or `request/<id>`.
    pub policy: String,
    /// Delete only if its expiry is still on or before this day (a change since the scan may
    /// have moved it); `None` for erasure.
    pub still_expired_by: Option<i32>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub deleted: u64,
    pub keys_destroyed: u64,
    pub compacted: bool,
    pub deleted_ids: Vec<DocId>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub deleted: u64,
    pub held: u64,
    pub kept: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub keys_destroyed: u64,
    pub compacted: bool,
    pub seconds: f64,
}

pub async fn run_request(office: &Office, a: &protocol::RetentionRun) -> Result<Value> {
    // A date in the future is allowed: it previews (with --dry-run) what a later pass deletes.
    let as_of = match &a.as_of {
        Some(t) => parse_time(t)?,
        None => Utc::now(),
    };
    let r = run(office, as_of, a.dry_run).await?;
    Ok(json!({
        "as_of": fmt_time(as_of),
        "dry_run": a.dry_run,
        "deleted": r.deleted,
        "held": r.held,
        "kept": r.kept,
        "by_reason": r.by_reason,
        "keys_destroyed": r.keys_destroyed,
        "compacted": r.compacted,
        "seconds": r.seconds,
    }))
}

/// The subject token of a plain record, if it names a subject.
pub(crate) fn subject_token(office: &Office, record: &Record) -> Result<Option<[u8; 32]>> {
    match record.subject() {
        None => Ok(None),
        Some(s) => {
            let subject = Subject::parse(s)
                .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
            Ok(Some(office.hasher.subject_token(&subject)))
        }
    }
}

/// Whether a subject is under an active legal hold.
pub(crate) fn is_held(office: &Office, token: &[u8; 32]) -> Result<bool> {
    Ok(office
        .records_by_key(token)?
        .iter()
        .any(|(_, r)| matches!(r, Record::Hold(h) if h.cleared_at.is_none())))
}

/// Runs a pass judging expiry at `as_of`.
pub async fn run(office: &Office, as_of: DateTime<Utc>, dry_run: bool) -> Result<Report> {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let today = epoch_day(as_of.date_naive());
    let records_before = office.store().stats()?.records;
    let marketing = |p: &str| office.purposes.is_marketing(p);
    let mut report = Report::default();
    let mut held_cache: HashMap<[u8; 32], bool> = HashMap::new();
    let mut todo: Vec<Deletion> = Vec::new();
    let mut children: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = office
            .store()
            .docs_expiring_before(today + 1, cursor, SCAN_PAGE)?;
        let Some(last) = page.last().copied() else {
            break;
        };
        cursor = Some(last);
        for (_, id) in page {
            let Some(record) = office.read_record(&id)? else {
                continue;
            };
            let token = subject_token(office, &record)?;
            if let Some(t) = token {
                let held = match held_cache.get(&t) {
                    Some(h) => *h,
                    None => {
                        let h = is_held(office, &t)?;
                        held_cache.insert(t, h);
                        h
                    }
                };
                if held {
                    report.held += 1;
                    continue;
                }
            }
            let rule = schedule::classify(&record, marketing);
            if rule.child_data {
                children.extend(token);
            }
            todo.push(Deletion {
                id,
                record,
                reason: if rule.child_data {
                    Reason::ChildData
                } else {
                    Reason::Retention
                },
                policy: format!("retention/{}", rule.id),
                still_expired_by: Some(today),
            });
        }
    }
    // §10: the rest of a child's records without parental consent go too, except those a
    // legal duty keeps.
    let queued: BTreeSet<DocId> = todo.iter().map(|d| d.id).collect();
    for t in children {
        for (id, record) in office.records_by_key(&t)? {
            if queued.contains(&id) || schedule::legally_kept(&record, marketing).is_some() {
                continue;
            }
            todo.push(Deletion {
                id,
                record,
                reason: Reason::ChildData,
                policy: "retention/child-data".into(),
                still_expired_by: None,
            });
        }
    }
    for d in &todo {
        *report.by_reason.entry(d.policy.clone()).or_default() += 1;
    }
    if report.held > 0 {
        report
            .by_reason
            .insert("held/legal-hold".into(), report.held);
    }
    if dry_run {
        report.deleted = todo.len() as u64;
    } else {
        let out = delete(office, todo).await?;
        report.deleted = out.deleted;
        report.keys_destroyed = out.keys_destroyed;
        report.compacted = out.compacted;
    }
    report.kept = records_before
        .saturating_sub(report.deleted)
        .saturating_sub(report.held);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Lock keys of a record: its id (request, transfer and hold writes) and, for a consent
/// record, its (subject, purpose) token (consent writes).
/// The consent token a deletion must hold (so no grant appends to a record being deleted).
fn lock_token(office: &Office, d: &Deletion) -> Result<Option<[u8; 32]>> {
    match &d.record {
        Record::Consent(c) => {
            let subject = Subject::parse(&c.subject)
                .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
            Ok(Some(office.hasher.consent_token(&subject, &c.purpose)))
        }
        _ => Ok(None),
    }
}

/// Deletes records through signed tombstones (module docs). Callers hold [`ONE_AT_A_TIME`]
/// (erasure takes it through [`delete_exclusive`]).
async fn delete(office: &Office, todo: Vec<Deletion>) -> Result<Outcome> {
    let mut out = Outcome::default();
    let mut subjects: BTreeSet<[u8; 32]> = BTreeSet::new();
    for chunk in todo.chunks(DELETE_CHUNK) {
        let mut tokens = Vec::new();
        for d in chunk {
            tokens.extend(lock_token(office, d)?);
        }
        tokens.sort_unstable();
        tokens.dedup();
        let ids: Vec<DocId> = chunk.iter().map(|d| d.id).collect();
        let _guards = office.lock_tokens_then_docs(&tokens, &ids).await;
        let mut batch = WriteBatch::default();
        let mut purges = Vec::with_capacity(chunk.len());
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let now = Utc::now().timestamp();
        for d in chunk {
            if let Some(day) = d.still_expired_by {
                match office.store().expiry_of(&d.id)? {
                    Some(e) if e <= day => {}
                    _ => continue, // changed since the scan: no longer expired
                }
            }
            let Some(doc) = office.load_doc(&d.id)? else {
                continue; // already gone
            };
            let heads: Vec<[u8; 32]> = doc.get_heads().into_iter().map(|h| h.0).collect();
            drop(doc);
            let t = Tombstone::sign(d.id, heads, d.reason, &d.policy, now, office.signing_key())
                .map_err(|e| {
                    OfficeError::Integrity(format!("record {}: {e}", doc_id_hex(&d.id)))
                })?;
            let hash = t.hash();
            batch.tombstones.push((d.id, hash, t.encode()));
            // The tombstone's log leaf goes in the same durable batch (audit invariant).
            batch
                .log
                .push(office.audit().entry(&LogLeaf::tombstone(d.id, hash)));
            *counts.entry(aggregates::key(&d.record)).or_default() += 1;
            purges.push(d.id);
            subjects.extend(subject_token(office, &d.record)?);
            out.deleted_ids.push(d.id);
        }
        if purges.is_empty() {
            continue;
        }
        batch.meta = aggregates::increments(office.store(), &counts)?;
        debug_assert_eq!(
            batch.tombstones.len(),
            batch.log.len(),
            "every tombstone has its log leaf in the same batch"
        );
        out.deleted += purges.len() as u64;
        let announce = batch.tombstones.clone();
        office.store().commit_purge(purges, batch).await?;
        office.announce_tombstones(announce);
    }
    out.keys_destroyed = destroy_unused_keys(office, &subjects).await?;
    if out.keys_destroyed > 0 {
        office.keys.rotate().await?;
    }
    if out.deleted > 0 && out.deleted >= office.retention.compact_after {
        out.compacted = compact(office).await;
    }
    Ok(out)
}

/// Applies tombstones other offices signed (already verified against the roster by the caller):
/// each record is purged in the same durable batch that stores its tombstone, then the subject
/// keys no remaining record uses are destroyed and the key-encryption key rotated, exactly as
/// for a local deletion. No log leaf: this office did not author them. Returns the records
/// purged.
///
/// A tombstone for a record that is already deleted (two offices deleted it independently, e.g.
/// on both sides of a partition) is stored all the same, without a second purge: every office
/// then holds the union of the tombstones, so their tombstone sets, and the digests over them,
/// converge. Dropping it instead left each office with whichever tombstone reached it first,
/// while the replicator's in-memory set counted the dropped one as held, so reconciliation saw
/// nothing to repair and the offices never converged (tests/partition_heals.rs,
/// tests/concurrent_deletions_converge.rs).
pub(crate) async fn apply_remote(
    office: &Office,
    tombstones: Vec<(DocId, [u8; 32], Vec<u8>)>,
) -> Result<Outcome> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut out = Outcome::default();
    let mut subjects: BTreeSet<[u8; 32]> = BTreeSet::new();
    for chunk in tombstones.chunks(DELETE_CHUNK) {
        let mut todo = Vec::with_capacity(chunk.len());
        let mut more = Vec::new();
        let mut tokens = Vec::new();
        for (doc, hash, bytes) in chunk {
            if office.is_tombstoned(doc)? {
                // Already deleted (tombstones win once, forever): keep this tombstone too
                // (storage ignores a (doc, hash) it holds).
                more.push((*doc, *hash, bytes.clone()));
                continue;
            }
            // Read before purging: its subject's keys may become unused.
            let record = office.read_record(doc).ok().flatten();
            if let Some(r) = &record {
                if let Some(d) = lock_token_of(office, r)? {
                    tokens.push(d);
                }
                subjects.extend(subject_token(office, r)?);
            }
            todo.push((*doc, *hash, bytes.clone()));
        }
        if todo.is_empty() && more.is_empty() {
            continue;
        }
        tokens.sort_unstable();
        tokens.dedup();
        let ids: Vec<DocId> = todo.iter().map(|t| t.0).collect();
        let _guards = office.lock_tokens_then_docs(&tokens, &ids).await;
        todo.extend(more);
        let batch = WriteBatch {
            tombstones: todo,
            ..WriteBatch::default()
        };
        out.deleted += ids.len() as u64;
        out.deleted_ids.extend(ids.iter().copied());
        office.store().commit_purge(ids, batch).await?;
    }
    out.keys_destroyed = destroy_unused_keys(office, &subjects).await?;
    if out.keys_destroyed > 0 {
        office.keys.rotate().await?;
    }
    Ok(out)
}

fn lock_token_of(office: &Office, record: &Record) -> Result<Option<[u8; 32]>> {
    match record {
        Record::Consent(c) => {
            let subject = Subject::parse(&c.subject)
                .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
            Ok(Some(office.hasher.consent_token(&subject, &c.purpose)))
        }
        _ => Ok(None),
    }
}

/// [`delete`] for callers that do not hold the pass lock (erasure).
pub(crate) async fn delete_exclusive(office: &Office, todo: Vec<Deletion>) -> Result<Outcome> {
    let _one = ONE_AT_A_TIME.lock().await;
    delete(office, todo).await
}

/// Destroys every key of these subjects that no remaining record is sealed under.
async fn destroy_unused_keys(office: &Office, subjects: &BTreeSet<[u8; 32]>) -> Result<u64> {
    destroy_unused_keys_by(office, subjects, DESTROY_SUBJECTS_CHUNK).await
}

/// [`destroy_unused_keys`], `chunk` subjects at a time.
async fn destroy_unused_keys_by(
    office: &Office,
    subjects: &BTreeSet<[u8; 32]>,
    chunk: usize,
) -> Result<u64> {
    debug_assert!(chunk > 0, "a chunk holds a subject at least");
    let subjects: Vec<&[u8; 32]> = subjects.iter().collect();
    let mut destroyed = 0;
    for part in subjects.chunks(chunk) {
        // No write may pick a key while we decide which keys are unused (keystore.rs). A
        // subject's keys are decided under one hold: its records and keys are read together.
        let _exclusive = office.keys.destroying().await;
        let mut batch = WriteBatch::default();
        let mut ids = Vec::new();
        for token in part {
            let mut in_use = BTreeSet::new();
            for (_, _, bytes) in office.store().projections_by_key(token)? {
                let r = Record::from_projection(&bytes).map_err(OfficeError::Integrity)?;
                in_use.extend(sealed::record_key_id(&r));
            }
            for class in [KeyClass::Kept, KeyClass::Erasable] {
                let owner = keystore::owner(token, class);
                for id in office.keys.keys_of(&owner)? {
                    if !in_use.contains(&id) {
                        batch.key_deletes.push((owner, id));
                        ids.push(id);
                    }
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        office.store().commit(batch).await?;
        office.keys.forget(&ids);
        destroyed += ids.len() as u64;
    }
    Ok(destroyed)
}

/// Compacts the store, retrying while read transactions are open. Returns whether it ran.
async fn compact(office: &Office) -> bool {
    // It holds the whole store, so writes wait for it: not a stalled write path.
    let _maintenance = office.maintenance();
    for _ in 0..COMPACT_TRIES {
        let store = office.store().clone();
        match tokio::task::spawn_blocking(move || store.compact()).await {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => tracing::debug!(error = %e, "compaction deferred"),
            Err(e) => {
                tracing::error!(error = %e, "compaction task failed");
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("compaction skipped: read transactions stayed open");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Request};

    /// Keys are destroyed a chunk of subjects at a time (the keys' lock is let go between
    /// chunks), and every chunk's are: those of the subjects whose records are gone, none that
    /// a remaining record is sealed under.
    #[test]
    fn unused_keys_are_destroyed_in_chunks_and_used_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let offices = crate::network::parse_offices("de").unwrap();
        crate::network::init(dir.path(), &offices, None, "destroy-chunks").unwrap();
        let de = crate::daemon::prepare(&dir.path().join("de").join("consentd.toml")).unwrap();
        let office = &de.office;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Seven subjects, a record each; the first five lose theirs.
        let mut subjects = BTreeSet::new();
        let mut records = Vec::new();
        for i in 0..7 {
            let subject = format!("s{i}@example.com");
            let answer = rt
                .block_on(
                    office.execute(Request::ConsentGrant(protocol::ConsentGrant {
                        evidence: Some("web form v3".into()),
                        ..protocol::ConsentGrant::new(&subject, "marketing", "consent")
                    })),
                )
                .unwrap();
            let doc: DocId = hex::decode(answer["id"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let (_, projection) = office.store().projection(&doc).unwrap().unwrap();
            let record = Record::from_projection(&projection).unwrap();
            let key = sealed::record_key_id(&record).expect("a grant is sealed under a key");
            subjects.insert(
                office
                    .hasher
                    .subject_token(&crate::subject::Subject::parse(&subject).unwrap()),
            );
            records.push((doc, key));
        }
        let gone: Vec<DocId> = records[..5].iter().map(|(doc, _)| *doc).collect();
        rt.block_on(office.store().commit_purge(gone, WriteBatch::default()))
            .unwrap();

        let destroyed = rt
            .block_on(destroy_unused_keys_by(office, &subjects, 2))
            .unwrap();
        assert_eq!(
            destroyed, 5,
            "one key for each subject whose record is gone"
        );
        for (i, (_, key)) in records.iter().enumerate() {
            assert_eq!(
                office.keys.key(key).is_ok(),
                i >= 5,
                "subject {i}: kept exactly while its record remains"
            );
        }
        // Nothing left to destroy.
        let again = rt
            .block_on(destroy_unused_keys_by(office, &subjects, 2))
            .unwrap();
        assert_eq!(again, 0);
    }
}
