//! The retention pass, and the one deletion path it shares with erasure requests.
//!
//! A pass walks the storage `expiry` index up to its date. A record whose subject is under an
//! active legal hold is counted `held` and stays (it is looked at again by the next pass); every
//! other expired record is deleted by `delete`:
//!
//! 1. under the record's write locks and the subject keys held exclusively, load it (verifying
//!    its envelopes) and sign a tombstone over its heads (`retention/<rule>` or `request/<id>`;
//!    no personal data);
//! 2. commit, in ONE durable batch: the purge of its envelopes, projection and index entries,
//!    the tombstone, the tombstone's log leaf (kind 2), the anonymous counts it adds, the
//!    deletion of its subject's keys that no remaining record uses, and the key-encryption key's
//!    rotation marked due;
//! 3. rotate the key-encryption key (at the next start if a crash comes first), so copies left
//!    in freed pages are unreadable; compact after large passes. Deletions committed while a
//!    rotation ran share the next one; tombstones from peers leave it to the daemon's rotation
//!    task instead of waiting for it (`apply_remote`).

use super::{aggregates, schedule, withdrawals};
use crate::keystore::{self, KeyClass};
use crate::office::{parse_time, Office, OfficeError};
use crate::protocol;
use crate::record::{doc_id_hex, epoch_day, fmt_time, DocId, Record};
use crate::sealed;
use crate::subject::Subject;
use chrono::{DateTime, Utc};
use consentd_storage::KeyId;
use consentd_storage::WriteBatch;
use consentd_sync::tlog::LogLeaf;
use consentd_sync::tombstone::{Reason, Tombstone};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

type Result<T, E = OfficeError> = std::result::Result<T, E>;

/// Expiry index rows read per storage call.
pub const SCAN_PAGE: usize = 4096;
/// Records deleted per durable batch (each carries a tombstone of up to 16 KiB).
pub const DELETE_CHUNK: usize = 256;
/// Compaction waits for open read transactions this many times before giving up for this pass.
pub const COMPACT_TRIES: u32 = 20;

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
    // A date in the future previews (with --dry-run) what a later pass deletes. A real pass
    // as of then would delete now what is due only then, legal duties' records among them
    // (found by an exploratory session): refused unless the office allows it (staging, tests).
    let now = Utc::now();
    let as_of = match &a.as_of {
        Some(t) => parse_time(t)?,
        None => now,
    };
    if as_of > now && !a.dry_run && !office.retention.future_passes {
        return Err(OfficeError::Invalid(format!(
            "--as-of {} is in the future: a pass deletes what is due now, and as of then it would \
             delete records a legal duty still keeps; preview it with --dry-run \
             ([retention] allow_future_passes is for staging and tests)",
            fmt_time(as_of)
        )));
    }
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
            let subject = Subject::parse_stored(s)
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

/// The tombstone reason of a deletion by schedule `rule`: §10 child data, or retention.
pub(crate) fn reason_for(rule: &schedule::Rule) -> Reason {
    if rule.child_data {
        Reason::ChildData
    } else {
        Reason::Retention
    }
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
                reason: reason_for(rule),
                policy: format!("retention/{}", rule.id),
                still_expired_by: Some(today),
            });
        }
    }
    // §10: the rest of a child's records without parental consent go too, except those a
    // legal duty keeps.
    let queued: BTreeSet<DocId> = todo.iter().map(|d| d.id).collect();
    let mut child_withdrawals = Vec::new();
    for t in &children {
        let t = *t;
        child_withdrawals.extend(child_grants_kept(office, &t, &queued)?);
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
    // A withdrawal goes with the grants it decides for, or waits for them (withdrawals.rs).
    let kept_deciding = withdrawals::plan(office, &mut todo, today)?;
    for d in &todo {
        *report.by_reason.entry(d.policy.clone()).or_default() += 1;
    }
    if kept_deciding > 0 {
        report
            .by_reason
            .insert("kept/withdrawal-decides".into(), kept_deciding);
    }
    if report.held > 0 {
        report
            .by_reason
            .insert("held/legal-hold".into(), report.held);
    }
    if !child_withdrawals.is_empty() {
        report.by_reason.insert(
            "withdrawn/child-data".into(),
            child_withdrawals.len() as u64,
        );
    }
    if dry_run {
        report.deleted = todo.len() as u64;
    } else {
        // Before the deletions: once the flagged record is gone, nothing says the person is
        // under 18, and the grants kept as proof would answer "granted".
        if !child_withdrawals.is_empty() {
            office.withdraw_all(child_withdrawals, None, None).await?;
        }
        let going: BTreeSet<DocId> = todo.iter().map(|d| d.id).collect();
        let carriers = minor_flag_carriers(office, &children, &going)?;
        if !carriers.is_empty() {
            office.mark_minor_elsewhere(carriers).await?;
        }
        let out = delete(office, todo, BTreeSet::new()).await?;
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

/// The consents of a child (subject `token`) a pass keeps as proof, not as permission: those
/// still granted, without a parent's consent, to a marketing purpose (whatever the basis) or on
/// the basis of consent. The pass deletes the child's other records, the one flagging them under
/// 18 among them, and with the flag gone `consent check` answered "granted" to marketing a child
/// (found by an exploratory session). `deleting`: records the pass deletes (their events do not
/// count). Returns (subject, purpose) to withdraw.
fn child_grants_kept(
    office: &Office,
    token: &[u8; 32],
    deleting: &BTreeSet<DocId>,
) -> Result<Vec<(Subject, String)>> {
    // Per purpose: the latest event ((rank, withdraws), basis), a parent's consent, the subject,
    // whether a record of it says it is marketing (`ConsentRecord::marketing`).
    type Latest = (
        Option<((chrono::DateTime<chrono::Utc>, bool), String)>,
        bool,
        Option<Subject>,
        bool,
    );
    let mut purposes: BTreeMap<String, Latest> = BTreeMap::new();
    for (id, record) in office.records_by_key(token)? {
        let Record::Consent(c) = record else { continue };
        let entry = purposes.entry(c.purpose.clone()).or_default();
        entry.1 |= c.parental_consent.is_some();
        entry.3 |= c.marketing;
        if deleting.contains(&id) {
            continue;
        }
        if entry.2.is_none() {
            entry.2 = Some(
                Subject::parse_stored(&c.subject)
                    .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?,
            );
        }
        for e in c.events {
            let Some(order) = e.order() else { continue };
            if entry.0.as_ref().is_none_or(|l| order >= l.0) {
                entry.0 = Some((order, e.basis.unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    for (purpose, (latest, parental, subject, flagged)) in purposes {
        let (Some(((_, false), basis)), false, Some(subject)) = (latest, parental, subject) else {
            continue;
        };
        if flagged || office.purposes.is_marketing(&purpose) || basis == "consent" {
            out.push((subject, purpose));
        }
    }
    Ok(out)
}

/// For each child (subject token) whose flagged records the pass deletes while it keeps other
/// consent records of theirs: one kept record (the smallest id) to carry the person's under-18
/// flag (`minor_elsewhere`, which indexes the minor token without making the record child
/// data). With the flag gone, this office forgot the person was under 18 and took a new
/// marketing grant without a parent's consent (found by an exploratory session); cn already
/// carries its flags so (`office::resident`). None where a kept record still carries it.
fn minor_flag_carriers(
    office: &Office,
    children: &BTreeSet<[u8; 32]>,
    going: &BTreeSet<DocId>,
) -> Result<Vec<DocId>> {
    let mut out = Vec::new();
    for t in children {
        let mut carrier: Option<DocId> = None;
        let mut carried = false;
        for (id, record) in office.records_by_key(t)? {
            let Record::Consent(c) = record else { continue };
            if going.contains(&id) {
                continue;
            }
            carried |= c.minor || c.minor_elsewhere;
            carrier = Some(carrier.map_or(id, |k| k.min(id)));
        }
        if let (false, Some(id)) = (carried, carrier) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Deletes records through signed tombstones (module docs), destroying the keys of their
/// subjects that no remaining record is sealed under in the same durable batch, then the unused
/// keys of `subjects`; then rotates the KEK if keys were destroyed. Callers hold
/// [`ONE_AT_A_TIME`] (erasure takes it through [`delete_exclusive`]).
///
/// Why the keys go in the purge's batch: as a commit of their own after the purges, a crash
/// between the two left them for good (nothing looks at a purged record's subject again), and
/// with them every stale copy of the records' personal fields in redb's freed pages readable.
/// Deciding which keys are unused needs them held exclusively (no write may pick one meanwhile),
/// so each chunk takes tokens, keys and records in the one order (`office::locks`), and writes
/// wait for one chunk at a time (up to [`DELETE_CHUNK`] records loaded, signed and committed).
async fn delete(
    office: &Office,
    todo: Vec<Deletion>,
    subjects: BTreeSet<[u8; 32]>,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    // A local deletion appends to this office's log: refused with the writes
    // (`AuditLog::refuses_writes`).
    if let Some(why) = office.audit().refuses_writes() {
        return Err(OfficeError::Integrity(why));
    }
    for chunk in todo.chunks(DELETE_CHUNK) {
        let mut tokens = Vec::new();
        for d in chunk {
            // A deletion holds its record's id and, for a consent record, its consent token
            // (consent writes take it), so no grant appends to a record being deleted.
            tokens.extend(withdrawals::token(office, &d.record)?);
        }
        tokens.sort_unstable();
        tokens.dedup();
        let ids: Vec<DocId> = chunk.iter().map(|d| d.id).collect();
        // Every subject the chunk may purge a record of (one skipped below keeps its key).
        let mut chunk_subjects = BTreeSet::new();
        for d in chunk {
            chunk_subjects.extend(subject_token(office, &d.record)?);
        }
        let shred = !chunk_subjects.is_empty();
        let _guards = office.lock_for_deletion(&tokens, &ids, shred).await;
        let mut batch = WriteBatch::default();
        let mut purges = Vec::with_capacity(chunk.len());
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let now = Utc::now().timestamp();
        // With the consents' locks held: no deletion may turn an answer "granted".
        let turning = withdrawals::tokens_turning_granted(office, chunk)?;
        for d in chunk {
            if withdrawals::token(office, &d.record)?.is_some_and(|t| turning.contains(&t)) {
                tracing::info!(
                    "a withdrawal kept: the grant it decides for is not deleted with it"
                );
                continue;
            }
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
            out.deleted_ids.push(d.id);
        }
        if purges.is_empty() {
            continue;
        }
        batch.meta = aggregates::increments(office.store(), &counts)?;
        // An erasure's deletions are noted for its request in the batch that makes them, so a
        // request closed again after a crash reports what every attempt deleted
        // ([`erasure_deleted`]).
        let erased: Vec<DocId> = chunk
            .iter()
            .filter(|d| d.reason == Reason::Erasure && purges.contains(&d.id))
            .map(|d| d.id)
            .collect();
        if let (Some(first), Some(policy)) = (erased.first(), chunk.first().map(|d| &d.policy)) {
            if let Some(request) = policy.strip_prefix("request/") {
                batch.meta.push((
                    format!("{ERASURE_DELETED_PREFIX}{request}/{}", doc_id_hex(first)),
                    erased.concat(),
                ));
            }
        }
        debug_assert_eq!(
            batch.tombstones.len(),
            batch.log.len(),
            "every tombstone has its log leaf in the same batch"
        );
        let destroyed = unused_keys(office, &chunk_subjects, &purges, &mut batch)?;
        out.deleted += purges.len() as u64;
        let announce = batch.tombstones.clone();
        out.keys_destroyed += commit_shredding(office, purges, batch, &destroyed).await?;
        office.announce_tombstones(announce);
    }
    out.keys_destroyed += destroy_unused_keys(office, &subjects).await?;
    if out.keys_destroyed > 0 {
        // Answered once the destroyed keys' stale wrapped copies are useless: shared with a
        // rotation already running or waiting, if that one covers them (keystore.rs).
        office.keys.rotate_if_due().await?;
    }
    if out.deleted > 0 && out.deleted >= office.retention.compact_after && compaction_pays(office)?
    {
        out.compacted = compact(office).await;
    }
    Ok(out)
}

/// Applies tombstones other offices signed (already verified against the roster by the caller):
/// each record is purged in the same durable batch that stores its tombstone and destroys the
/// subject keys no remaining record uses, exactly as for a local deletion; the key-encryption
/// key's rotation is left to the daemon's rotation task, which shares one among every batch
/// that arrives while it runs. No log leaf: this office did not author them. Returns the
/// records purged.
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
    for chunk in tombstones.chunks(DELETE_CHUNK) {
        let mut todo = Vec::with_capacity(chunk.len());
        let mut more = Vec::new();
        let mut tokens = Vec::new();
        let mut subjects = BTreeSet::new();
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
                if let Some(d) = withdrawals::token(office, r)? {
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
        // The keys go in the purge's batch, as in `delete` (which says why).
        let shred = !subjects.is_empty();
        let _guards = office.lock_for_deletion(&tokens, &ids, shred).await;
        todo.extend(more);
        let mut batch = WriteBatch {
            tombstones: todo,
            ..WriteBatch::default()
        };
        let destroyed = unused_keys(office, &subjects, &ids, &mut batch)?;
        out.deleted += ids.len() as u64;
        out.deleted_ids.extend(ids.iter().copied());
        out.keys_destroyed += commit_shredding(office, ids, batch, &destroyed).await?;
    }
    if out.keys_destroyed > 0 {
        // Not waited for: a peer's retention pass arrives as many calls (a pushed tombstone
        // is a frame of its own), and a rotation each (every stored key re-wrapped: 2-3 s at
        // 1,000,000 keys) held up the link and this office's passes for minutes. The rotation
        // is due in the store already (`unused_keys`), so a crash loses nothing.
        office.keys.request_rotation();
    }
    Ok(out)
}

/// Meta key prefix of the records an erasure request deleted: `<prefix><request id>/<first
/// record id>` → the ids (16 bytes each) one chunk deleted, written with that chunk.
const ERASURE_DELETED_PREFIX: &str = "erasure_deleted/";
/// Most chunk entries [`erasure_deleted`] reads (at [`DELETE_CHUNK`] records each: 25.6
/// million records).
const ERASURE_DELETED_ENTRIES_MAX: usize = 100_000;

/// Every record the erasure request `request` (its id in hex) deleted here, over every attempt
/// (a crash part way through leaves the earlier chunks deleted), sorted.
pub(crate) fn erasure_deleted(office: &Office, request: &str) -> Result<Vec<DocId>> {
    let mut ids: Vec<DocId> = office
        .store()
        .meta_with_prefix(
            &format!("{ERASURE_DELETED_PREFIX}{request}/"),
            ERASURE_DELETED_ENTRIES_MAX,
        )?
        .iter()
        .flat_map(|(_, v)| v.chunks_exact(16))
        .map(|c| c.try_into().expect("16 bytes"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// [`delete`] for callers that do not hold the pass lock (erasure), with the keys of `subject`
/// looked at whatever `todo` holds. Until the thirty-eighth session the keys were destroyed in a
/// commit after the purges; an erasure that a crash stopped between the two finds nothing left
/// to delete when the operator closes its request again, and would otherwise leave the
/// subject's key, which still opens what redb's freed pages keep of the records.
pub(crate) async fn delete_exclusive(
    office: &Office,
    todo: Vec<Deletion>,
    subject: [u8; 32],
) -> Result<Outcome> {
    let _one = ONE_AT_A_TIME.lock().await;
    delete(office, todo, BTreeSet::from([subject])).await
}

/// Destroys every key of these subjects that no remaining record is sealed under, in a batch of
/// its own (an erasure's subject, looked at again whatever was deleted: `delete_exclusive`).
async fn destroy_unused_keys(office: &Office, subjects: &BTreeSet<[u8; 32]>) -> Result<u64> {
    if subjects.is_empty() {
        return Ok(0);
    }
    // No write may pick a key while we decide which keys are unused (keystore.rs).
    let _exclusive = office.keys.destroying().await;
    let mut batch = WriteBatch::default();
    let ids = unused_keys(office, subjects, &[], &mut batch)?;
    if ids.is_empty() {
        return Ok(0);
    }
    commit_shredding(office, Vec::new(), batch, &ids).await
}

/// Commits `batch` with `purges`, then drops `destroyed` (the keys its deletions name, from
/// [`unused_keys`]) from the key cache: only once the deletion is durable, so a failed commit
/// leaves them readable. Returns how many were destroyed.
async fn commit_shredding(
    office: &Office,
    purges: Vec<DocId>,
    mut batch: WriteBatch,
    destroyed: &[KeyId],
) -> Result<u64> {
    // Callers hold `ONE_AT_A_TIME`: no other purge changes the count between the load and the
    // store.
    let deleted = office
        .deleted_since_compaction
        .load(std::sync::atomic::Ordering::Relaxed)
        + purges.len() as u64;
    if !purges.is_empty() {
        batch.meta.push((
            super::META_DELETED_SINCE_COMPACTION.to_string(),
            deleted.to_le_bytes().to_vec(),
        ));
    }
    office.store().commit_purge(purges, batch).await?;
    office
        .deleted_since_compaction
        .store(deleted, std::sync::atomic::Ordering::Relaxed);
    office.keys.forget(destroyed);
    Ok(destroyed.len() as u64)
}

/// Adds to `batch` the deletion of every key of `subjects` that no record is sealed under once
/// `purged` (purged in the same batch) are gone, and the KEK rotation that makes due; returns
/// the keys' ids. The caller holds the keys exclusively (`KeyStore::destroying`): no write picks
/// a key while this decides.
fn unused_keys(
    office: &Office,
    subjects: &BTreeSet<[u8; 32]>,
    purged: &[DocId],
    batch: &mut WriteBatch,
) -> Result<Vec<KeyId>> {
    let purged: HashSet<&DocId> = purged.iter().collect();
    let mut ids = Vec::new();
    for token in subjects {
        let mut in_use = BTreeSet::new();
        // Key → the offices whose records (purged now) it sealed, remembered with its
        // destruction (`KeyStore::hold_received` says why).
        let mut sealed_for: HashMap<KeyId, BTreeSet<String>> = HashMap::new();
        for (doc, _, bytes) in office.store().projections_by_key(token)? {
            let r = Record::from_projection(&bytes).map_err(OfficeError::Integrity)?;
            if purged.contains(&doc) {
                if let Some(k) = sealed::record_key_id(&r) {
                    // The office that wrote it (a hold copy's too, not its `origin`): the one
                    // whose signature a record under this key needs to bring it back.
                    sealed_for
                        .entry(k)
                        .or_default()
                        .insert(crate::record::RecordFacts::of(&r).office);
                }
                continue;
            }
            in_use.extend(sealed::record_key_id(&r));
        }
        for class in [KeyClass::Kept, KeyClass::Erasable] {
            let owner = keystore::owner(token, class);
            for id in office.keys.keys_of(&owner)? {
                if !in_use.contains(&id) {
                    batch.key_deletes.push((owner, id));
                    // Remembered in the same batch: a peer that offers it again is refused.
                    batch.meta.push(keystore::KeyStore::destroyed_entry(
                        &id,
                        sealed_for.get(&id).into_iter().flatten(),
                    ));
                    ids.push(id);
                }
            }
        }
    }
    if !ids.is_empty() {
        // A crash before the rotation leaves it due; the daemon runs it at start (keystore.rs).
        batch.meta.push(office.keys.rotation_due_entry());
    }
    Ok(ids)
}

/// Whether the records purged since the last compaction are at least
/// [`super::COMPACT_FREED_SHARE_MIN`] of those held before them (why: that constant's docs).
fn compaction_pays(office: &Office) -> Result<bool> {
    let deleted = office
        .deleted_since_compaction
        .load(std::sync::atomic::Ordering::Relaxed);
    let held = office.store().stats()?.records;
    let (num, den) = super::COMPACT_FREED_SHARE_MIN;
    Ok(deleted * den >= (held + deleted) * num)
}

/// Compacts the store, retrying while read transactions are open. Returns whether it ran.
async fn compact(office: &Office) -> bool {
    // It holds the whole store, so writes wait for it: not a stalled write path.
    let _maintenance = office.maintenance();
    for _ in 0..COMPACT_TRIES {
        let store = office.store().clone();
        match tokio::task::spawn_blocking(move || store.compact()).await {
            Ok(Ok(_)) => {
                // Callers hold `ONE_AT_A_TIME`: no purge was counted meanwhile. Should this
                // commit fail, the next pass that deletes compacts again, at no harm.
                let reset = WriteBatch {
                    meta: vec![(
                        super::META_DELETED_SINCE_COMPACTION.to_string(),
                        0u64.to_le_bytes().to_vec(),
                    )],
                    ..WriteBatch::default()
                };
                if let Err(e) = office.store().commit(reset).await {
                    tracing::warn!(error = %e, "the count of deletions since compaction was not reset");
                }
                office
                    .deleted_since_compaction
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
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

    /// A new one-office network's office, as the daemon prepares it, and a runtime.
    fn one_office(
        network: &str,
    ) -> (
        tempfile::TempDir,
        crate::daemon::Prepared,
        tokio::runtime::Runtime,
    ) {
        one_office_configured(network, |config| config)
    }

    /// [`one_office`] with its config text rewritten by `edit` first.
    fn one_office_configured(
        network: &str,
        edit: impl FnOnce(String) -> String,
    ) -> (
        tempfile::TempDir,
        crate::daemon::Prepared,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let offices = crate::network::parse_offices("de").unwrap();
        crate::network::init(dir.path(), &offices, None, network).unwrap();
        let config = dir.path().join("de").join("consentd.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, edit(text)).unwrap();
        let de = crate::daemon::prepare(&config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (dir, de, rt)
    }

    /// A new record granting `purpose` on `basis` for `subject`: its id and the key it is sealed
    /// under.
    fn granted(
        office: &Office,
        rt: &tokio::runtime::Runtime,
        subject: &str,
        purpose: &str,
        basis: &str,
    ) -> (DocId, consentd_storage::KeyId) {
        let answer = rt
            .block_on(
                office.execute(Request::ConsentGrant(protocol::ConsentGrant {
                    evidence: Some("web form v3".into()),
                    ..protocol::ConsentGrant::new(subject, purpose, basis)
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
        (doc, key)
    }

    /// Deletions of `docs` as a pass makes them (record read back, erasure reason).
    fn deletions(office: &Office, docs: &[DocId]) -> Vec<Deletion> {
        docs.iter()
            .map(|id| Deletion {
                id: *id,
                record: office.read_record(id).unwrap().expect("held"),
                reason: Reason::Erasure,
                policy: "test".into(),
                still_expired_by: None,
            })
            .collect()
    }

    /// A deletion destroys, in the batch that purges the records, the keys no remaining record
    /// is sealed under, and only those: a subject with a record left keeps its key until that
    /// one goes too. Each destruction then rotates the KEK, and none is left due.
    #[test]
    fn a_deletion_destroys_the_keys_its_records_leave_unused_and_rotates() {
        let (_dir, de, rt) = one_office("destroy-in-batch");
        let office = &de.office;
        let (a1, ka) = granted(office, &rt, "a@example.com", "marketing", "consent");
        let (a2, ka2) = granted(office, &rt, "a@example.com", "sales", "consent");
        assert_eq!(ka, ka2, "one subject key for the subject's consent records");
        let (b, kb) = granted(office, &rt, "b@example.com", "marketing", "consent");
        let (_c, kc) = granted(office, &rt, "c@example.com", "marketing", "consent");
        let generation = office.keys.generation();

        let out = rt
            .block_on(delete(office, deletions(office, &[a1, b]), BTreeSet::new()))
            .unwrap();
        assert_eq!((out.deleted, out.keys_destroyed), (2, 1), "{out:?}");
        assert!(office.keys.key(&kb).is_err(), "b's last record is gone");
        assert!(
            office.keys.key(&ka).is_ok(),
            "a's other record still uses a's key"
        );
        assert!(office.keys.key(&kc).is_ok(), "c is not deleted");
        assert_eq!(office.keys.generation(), generation + 1, "rotated");
        assert!(!office.keys.rotation_due().unwrap());

        let out = rt
            .block_on(delete(office, deletions(office, &[a2]), BTreeSet::new()))
            .unwrap();
        assert_eq!((out.deleted, out.keys_destroyed), (1, 1), "{out:?}");
        assert!(office.keys.key(&ka).is_err(), "a's last record is gone");
        assert!(office.keys.key(&kc).is_ok());
        assert_eq!(office.keys.generation(), generation + 2);
    }

    /// A pass compacts (which freezes every read and write) only once the deletions since the
    /// last compaction are a quarter of the store, however low `compact_after_deletions` is set;
    /// the deletions before a restart count.
    #[test]
    fn compaction_waits_until_a_quarter_of_the_records_are_deleted() {
        let (dir, mut de, rt) = one_office_configured("compact-share", |t| {
            t.replace(
                "compact_after_deletions = 1000",
                "compact_after_deletions = 1",
            )
        });
        let office = &de.office;
        assert_eq!(office.retention.compact_after, 1, "the config was edited");
        let docs: Vec<DocId> = (0..8)
            .map(|i| {
                granted(
                    office,
                    &rt,
                    &format!("c{i}@example.com"),
                    "marketing",
                    "consent",
                )
                .0
            })
            .collect();
        let held = office.store().stats().unwrap().records;
        assert!(held >= 8, "{held} records");
        // One at a time, until a quarter of what was held is gone; restarted after the first.
        let mut deleted = 0;
        for doc in &docs {
            let office = &de.office;
            let out = rt
                .block_on(delete(office, deletions(office, &[*doc]), BTreeSet::new()))
                .unwrap();
            deleted += 1;
            let due = deleted * 4 >= held;
            assert_eq!(out.compacted, due, "after {deleted} of {held}: {out:?}");
            if due {
                break;
            }
            if deleted == 1 {
                drop(de);
                de = crate::daemon::prepare(&dir.path().join("de").join("consentd.toml")).unwrap();
                let count = &de.office.deleted_since_compaction;
                assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
            }
        }
        // Read back after a restart too: 0 since the compaction.
        drop(de);
        let de = crate::daemon::prepare(&dir.path().join("de").join("consentd.toml")).unwrap();
        assert_eq!(
            de.office
                .deleted_since_compaction
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the count starts again"
        );
    }

    /// Tombstones from peers arrive in batches, and each that destroys keys used to rotate the
    /// KEK before it returned (every stored key re-wrapped). Now they only leave the rotation
    /// due, with the keys destroyed, and one rotation serves them all.
    #[test]
    fn tombstones_from_peers_leave_one_rotation_due_for_all_their_batches() {
        let (_dir, de, rt) = one_office("remote-rotations");
        let office = &de.office;
        let generation = office.keys.generation();
        let mut keys = Vec::new();
        for i in 0..3 {
            let (doc, key) = granted(
                office,
                &rt,
                &format!("p{i}@example.com"),
                "marketing",
                "consent",
            );
            let heads = office
                .load_doc(&doc)
                .unwrap()
                .unwrap()
                .get_heads()
                .into_iter()
                .map(|h| h.0)
                .collect();
            let t = Tombstone::sign(doc, heads, Reason::Erasure, "test", 0, office.signing_key())
                .unwrap();
            // One batch each, as three pushes from a peer would come.
            let applied = rt
                .block_on(apply_remote(office, vec![(doc, t.hash(), t.encode())]))
                .unwrap();
            assert_eq!((applied.deleted, applied.keys_destroyed), (1, 1));
            keys.push(key);
        }
        assert_eq!(
            office.keys.generation(),
            generation,
            "no rotation waited for"
        );
        assert!(office.keys.rotation_pending().unwrap());
        for key in &keys {
            assert!(office.keys.key(key).is_err(), "destroyed with its record");
        }
        assert!(rt.block_on(office.keys.rotate_if_due()).unwrap());
        assert_eq!(office.keys.generation(), generation + 1, "one rotation");
        assert!(!office.keys.rotation_pending().unwrap());
        assert!(!rt.block_on(office.keys.rotate_if_due()).unwrap());
    }

    /// Tombstones for records this office does not hold (deleted already, or never received)
    /// leave no key to look at: applying them does not wait for the writes in flight, as taking
    /// the keys exclusively would.
    #[test]
    fn tombstones_for_records_not_held_do_not_wait_for_writes() {
        let (_dir, de, rt) = one_office("tombstones-not-held");
        let office = &de.office;
        let doc: DocId = [7; 16];
        let t = Tombstone::sign(
            doc,
            vec![[9; 32]],
            Reason::Erasure,
            "test",
            0,
            office.signing_key(),
        )
        .unwrap();
        rt.block_on(async {
            // A write between choosing its keys and its durable commit.
            let _writing = office.keys.using().await;
            let applied = tokio::time::timeout(
                Duration::from_secs(5),
                apply_remote(office, vec![(doc, t.hash(), t.encode())]),
            )
            .await
            .expect("applied without waiting for the write")
            .unwrap();
            assert_eq!(applied.keys_destroyed, 0);
        });
        assert!(office.is_tombstoned(&doc).unwrap());
    }

    /// An erasure that a crash stopped after its deletions and before its keys' destruction
    /// destroys the key when its request is closed again, though nothing is left to delete.
    #[test]
    fn an_erasure_closed_again_after_a_crash_destroys_the_key_it_left() {
        let (_dir, de, rt) = one_office("erasure-again");
        let office = &de.office;
        let subject = "again@example.com";
        let (doc, key) = granted(office, &rt, subject, "support", "legitimate_interest");
        let open = rt
            .block_on(office.execute(Request::RequestOpen(protocol::RequestOpen {
                subject: subject.into(),
                kind: "erasure".into(),
                received: None,
                jurisdiction: None,
            })))
            .unwrap();
        // Where the crash stopped it: the record gone, its key not yet.
        rt.block_on(
            office
                .store()
                .commit_purge(vec![doc], WriteBatch::default()),
        )
        .unwrap();
        assert!(office.keys.key(&key).is_ok(), "the key outlived its record");

        let closed = rt
            .block_on(
                office.execute(Request::RequestClose(protocol::RequestClose {
                    id: open["id"].as_str().unwrap().into(),
                    outcome: "completed".into(),
                    note: None,
                    at: None,
                })),
            )
            .unwrap();
        assert_eq!(closed["erasure"]["deleted"], 0, "{closed}");
        assert_eq!(closed["erasure"]["keys_destroyed"], 1, "{closed}");
        assert!(
            office.keys.key(&key).is_err(),
            "the erasable key is destroyed"
        );
    }
}
