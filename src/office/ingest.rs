//! Applying envelopes that other offices authored.
//!
//! The sync layer hands over envelopes it has already verified against the roster (a
//! [`VerifiedEnvelope`] cannot be obtained otherwise), together with the subject keys that seal
//! their records' personal fields: keys travel with their records, and only to offices that may
//! hold those records. Here the envelopes are grouped by record, merged into each record's
//! document, and stored, with the recomputed projection, index entries, expiry and any newly
//! received key (wrapped under this office's key-encryption key), in one durable batch; the
//! caller acknowledges to the peer only after [`Office::ingest`] returns.
//!
//! A record that cannot be read yet is stored as [`KIND_PENDING`], with no index entries, so
//! queries do not see it: either its history arrived only in part (a later change before the one
//! that created it; its projection is empty), or the key sealing it has not arrived (its
//! projection is that key's 16-byte id, so keys that arrive later re-open exactly the records
//! they seal, [`Office::reopen_pending`]). The next ingest that completes it makes it a record
//! like any other. A record a tombstone deletes is
//! never stored again (the store drops it inside the transaction; it is counted here).
//!
//! A record's origin is the office that signed its first change (the change without
//! dependencies), and the record's `office` field must name it: a roster office re-signed
//! another office's record as its own creation with `"office":"de"`, and de relayed it
//! wherever de's records go, though the signer's records must stay in China (found by an
//! exploratory session). Every office writes its own id there when it creates a record (a
//! resident office's hold copies too: their `origin` names the office whose data they are,
//! their `office` the office that wrote them), and no later change writes it. So a record whose
//! first change another office signed, or a change that names another office, is rejected
//! whole: none of its new envelopes is stored ([`IngestReport::rejected`]). The same goes for
//! a record that is not one (validly signed, but its document names another record, lacks a
//! required field such as `office`, or a sealed field does not open under its key): such a
//! record failed the whole ingest, and the link with it, at every round (found by an
//! exploratory session).
//!
//! So is a record with an event dated more than [`CLOCK_SKEW_MAX`] (60 s) ahead of this
//! office's clock (a consent event, a request's receipt or history step, a transfer, a hold's
//! setting or clearing): this office records nothing in its own future (`event_time`), a
//! withdrawal dated next year outranks every grant until then, and its signer's clock runs
//! ahead or it lies (found by an exploratory session). A later round offers it again; once
//! its time has come it is taken.

use super::{doc_lock_key, Office, OfficeError, Result};
use crate::keystore::{self, KeyClass};
use crate::record::{doc_id_hex, doc_names, doc_value, epoch_day, DocId, Record, DOC_ID_FIELD};
use crate::sealed;
use crate::subject::Subject;
use automerge::Automerge;
use consentd_storage::{KeyId, RecordUpdate, WriteBatch};
use consentd_sync::session::CLOCK_SKEW_MAX;
use consentd_sync::{first_change, VerifiedEnvelope};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use zeroize::Zeroizing;

/// Storage kind of a record that cannot be read yet (see the module docs).
pub const KIND_PENDING: u8 = 0;
/// Most records held pending (ARCHITECTURE.md, limits). A record new here that would be
/// stored pending beyond it is not stored (a later round offers it again), and a warning
/// says so, at most once a minute ([`PENDING_WARN_EVERY`]). Legitimately a record is pending
/// for moments (its key or first change on its way); one whose first change never comes is
/// never read, and a roster office pushed 300 of them, all stored, without a word (found by
/// an exploratory session). Counting them costs ~10 ms per 100,000, only when a batch leaves
/// records new here pending.
pub const PENDING_RECORDS_MAX: usize = 65_536;
/// Least time between two warnings that [`PENDING_RECORDS_MAX`] was reached.
const PENDING_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Most envelopes applied in one ingest call; the sync layer's batches are smaller.
pub const INGEST_ENVELOPES_MAX: usize = 4096;
/// Pending records read per [`Office::reopen_pending`] call, looking for those whose key is now
/// held (a read costs ~2 µs; re-opening a record, an Automerge load, ~0.5 ms).
const PENDING_SCAN_MAX: usize = 65_536;
/// Pending records read per storage read transaction.
const PENDING_PAGE: usize = 1024;
/// Envelopes from which an ingest's lookups run off the runtime's worker (`off_worker`): a
/// lookup costs a few µs, moving off the worker tens.
const OFF_WORKER_ENVELOPES_MIN: usize = 64;
/// Records per thread below which an ingest merges on the calling thread: spawning costs
/// ~20 µs, merging one record ~100 µs.
const PARALLEL_DOCS_MIN: usize = 32;

/// A subject key as it travels between offices (over the mutually authenticated QUIC link).
pub type TravellingKey = (KeyId, Zeroizing<[u8; 32]>);
/// Subject keys that arrived with an ingest's envelopes.
type ReceivedKeys = HashMap<KeyId, Zeroizing<[u8; 32]>>;

/// What one ingest did, for the peer's acknowledgement and the `peers` counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// New envelopes stored.
    pub stored: usize,
    /// Envelopes this office already held.
    pub duplicates: usize,
    /// Envelopes of records a tombstone deletes: dropped.
    pub tombstoned: usize,
    /// Records that cannot be read yet (incomplete history or missing key).
    pub pending: usize,
    /// Records that became readable or changed.
    pub records: usize,
    /// Subject keys stored by this ingest.
    pub keys: usize,
    /// Records whose new envelopes were refused, none of them stored: why, naming the record
    /// and offices only (no personal data). The caller logs and counts each, and acknowledges
    /// them as processed (docs/sync-protocol.md, "Verification").
    pub rejected: Vec<String>,
    /// Records new here left out for [`PENDING_RECORDS_MAX`]: not stored, offered again later.
    pub over_pending_limit: usize,
    /// Records new here stored pending by the merge (before the limit is applied).
    new_pending: Vec<DocId>,
}

impl IngestReport {
    /// Adds another part's merge counts (`keys` is counted once, after the parts are joined).
    fn add(&mut self, part: &IngestReport) {
        debug_assert_eq!(part.keys, 0, "keys are counted after the parts are joined");
        self.stored += part.stored;
        self.duplicates += part.duplicates;
        self.tombstoned += part.tombstoned;
        self.pending += part.pending;
        self.records += part.records;
        self.rejected.extend(part.rejected.iter().cloned());
        self.new_pending.extend(part.new_pending.iter().copied());
    }
}

impl Office {
    /// Stores and applies envelopes other offices authored, with the subject keys sealing their
    /// records; returns once everything is durable.
    pub async fn ingest(
        &self,
        envelopes: Vec<VerifiedEnvelope>,
        received: &HashMap<KeyId, Zeroizing<[u8; 32]>>,
    ) -> Result<IngestReport> {
        self.ingest_and_reopen(envelopes, received, &[]).await
    }

    /// Opens the pending records whose key is now held here or in `received` (at most `limit`
    /// records per call). Records waiting for another key, or for the rest of their history, are
    /// left alone: re-merging one costs an Automerge load, and a cold sync calls this once per
    /// batch of keys. Each call reads at most `PENDING_SCAN_MAX` pending records, continuing
    /// where the previous call stopped, so every pending record is looked at in turn however
    /// many there are.
    pub async fn reopen_pending(
        &self,
        received: &HashMap<KeyId, Zeroizing<[u8; 32]>>,
        limit: usize,
    ) -> Result<IngestReport> {
        // Usually nothing is pending (a record's key travels before the record): one read of
        // the kind listing says so, here. Bulk work yields to everything else (`office::bulk`),
        // so running this one off the worker would make every key a peer pushes wait behind it.
        if self.store.count_of_kind(KIND_PENDING, 1)? == 0 {
            return Ok(IngestReport::default());
        }
        // Up to PENDING_SCAN_MAX reads: off the runtime's worker.
        let pending = super::off_worker(|| self.pending_openable(received, limit))?;
        if pending.is_empty() {
            return Ok(IngestReport::default());
        }
        self.ingest_and_reopen(Vec::new(), received, &pending).await
    }

    /// The pending records [`Office::reopen_pending`] re-opens, advancing its cursor.
    fn pending_openable(&self, received: &ReceivedKeys, limit: usize) -> Result<Vec<DocId>> {
        let mut cursor = self
            .pending_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut after = *cursor;
        // From the start the table is read once; from the cursor, to its end and then from the
        // start again (up to the scan bound either way).
        let mut wrapped = after.is_none();
        let mut scanned = 0;
        let mut openable = Vec::new();
        while scanned < PENDING_SCAN_MAX && openable.len() < limit {
            let page =
                self.store
                    .projections_of_kind_after(KIND_PENDING, after.as_ref(), PENDING_PAGE)?;
            if page.is_empty() {
                after = None;
                if wrapped {
                    break;
                }
                wrapped = true;
                continue;
            }
            // Keys the page's records wait for that were not received: looked up in the store
            // in one read, not a transaction (and an unwrap) per record.
            let unreceived: Vec<KeyId> = page
                .iter()
                .filter_map(|(_, w)| KeyId::try_from(w.as_slice()).ok())
                .filter(|k| !received.contains_key(k))
                .collect();
            let stored: HashSet<KeyId> = unreceived
                .iter()
                .zip(self.store.keys_present(&unreceived)?)
                .filter_map(|(k, present)| present.then_some(*k))
                .collect();
            for (id, waiting_for) in page {
                scanned += 1;
                after = Some(id);
                let Ok(key) = KeyId::try_from(waiting_for.as_slice()) else {
                    continue; // waiting for history: an ingest of its envelopes completes it
                };
                if received.contains_key(&key) || stored.contains(&key) {
                    openable.push(id);
                    if openable.len() >= limit {
                        break;
                    }
                }
            }
        }
        *cursor = after;
        Ok(openable)
    }

    async fn ingest_and_reopen(
        &self,
        envelopes: Vec<VerifiedEnvelope>,
        received: &HashMap<KeyId, Zeroizing<[u8; 32]>>,
        reopen: &[DocId],
    ) -> Result<IngestReport> {
        if envelopes.len() > INGEST_ENVELOPES_MAX {
            return Err(OfficeError::Invalid(format!(
                "an ingest holds at most {INGEST_ENVELOPES_MAX} envelopes"
            )));
        }
        let _in_flight = self.in_flight.enter(super::Work::Ingest);
        // Thousands of lookups for a cold sync's batch: off the runtime's worker (`off_worker`).
        let heavy = envelopes.len() >= OFF_WORKER_ENVELOPES_MIN;
        let (mut report, mut by_doc) = super::off_worker_if(heavy, || self.by_record(envelopes))?;
        for id in reopen {
            by_doc.entry(*id).or_default();
        }
        if by_doc.is_empty() {
            return Ok(report);
        }
        // Keys are neither destroyed nor rotated while this batch uses them. Taken before the
        // records' locks, in the one order (`office::locks` says why: taken after them, a queued
        // key destruction stopped every write at the office; test
        // `an_ingest_behind_a_key_destruction_holds_no_record_a_write_waits_for`).
        let _keys_in_use = self.keys.using().await;
        let lock_keys: Vec<[u8; 32]> = by_doc.keys().map(doc_lock_key).collect();
        let _guards = self.doc_locks.lock(&lock_keys).await;
        // A cold sync's batch is a thousand records, ~100 ms of merging: off the runtime's
        // worker, so the control socket answers meanwhile (`off_worker`).
        let docs: Vec<(DocId, Vec<VerifiedEnvelope>)> = by_doc.into_iter().collect();
        let threads = super::authoring_threads().min(docs.len() / PARALLEL_DOCS_MIN);
        let heavy = docs.len() >= PARALLEL_DOCS_MIN;
        let reopen: HashSet<DocId> = reopen.iter().copied().collect();
        let (merged, mut batch, mut stored_keys) = super::off_worker_if(heavy, || {
            self.merge_docs(docs, threads, (received, &reopen))
        })?;
        report.add(&merged);
        self.limit_pending(&mut report, &mut batch)?;
        stored_keys.sort_unstable();
        stored_keys.dedup();
        report.keys = stored_keys.len();
        if !batch.updates.is_empty() {
            let announce = self.announcement(&batch);
            self.store.commit(batch).await?;
            self.announce(announce);
        }
        if threads >= 2 {
            // A store batch of a cold sync loaded up to a thousand documents, as an import
            // chunk authors them; returned once the sync pauses (`heap`).
            super::release_free_heap();
        }
        Ok(report)
    }

    /// Sorts a batch's envelopes: those of records a tombstone deletes are counted, the rest
    /// grouped by record. Whether an envelope is held already is looked up once, under the
    /// records' locks ([`Office::merge_docs`]), not also before them: random reads in a table as
    /// large as the office, the two lookups were 4.2 % of all CPU samples of a cold sync at
    /// 1,000,000 records, and the first found only the rare envelope two links deliver.
    fn by_record(
        &self,
        envelopes: Vec<VerifiedEnvelope>,
    ) -> Result<(IngestReport, BTreeMap<DocId, Vec<VerifiedEnvelope>>)> {
        let mut report = IngestReport::default();
        let mut by_doc: BTreeMap<DocId, Vec<VerifiedEnvelope>> = BTreeMap::new();
        // One read transaction for the batch's lookups, not one per envelope.
        let docs: Vec<DocId> = envelopes.iter().map(VerifiedEnvelope::doc_id).collect();
        let tombstoned = self.store.are_tombstoned(&docs)?;
        for (env, tombstoned) in envelopes.into_iter().zip(tombstoned) {
            if tombstoned {
                report.tombstoned += 1;
                self.dropped_replayed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                by_doc.entry(env.doc_id()).or_default().push(env);
            }
        }
        Ok((report, by_doc))
    }

    /// Merges each record's new envelopes (see [`Office::merge_doc`]) on `threads` threads (on
    /// the calling one below two); returns what was merged and the batch to commit.
    fn merge_docs(
        &self,
        docs: Vec<(DocId, Vec<VerifiedEnvelope>)>,
        threads: usize,
        (received, reopen): (&ReceivedKeys, &HashSet<DocId>),
    ) -> Result<(IngestReport, WriteBatch, Vec<KeyId>)> {
        // Looked up under the records' locks, so no concurrent ingest stores one of them before
        // this batch commits (and the writer skips any envelope it holds regardless).
        let hashes: Vec<[u8; 32]> = docs
            .iter()
            .flat_map(|(_, envs)| envs)
            .map(VerifiedEnvelope::hash)
            .collect();
        let stored_meanwhile: HashSet<[u8; 32]> = self
            .store
            .has_envelopes(&hashes)?
            .into_iter()
            .zip(hashes)
            .filter_map(|(held, h)| held.then_some(h))
            .collect();
        let held = &stored_meanwhile;

        // Each record is merged on its own (one document, one key, one projection), so large
        // batches (a cold sync's) are split into parts taken in turn by one thread per core, as
        // imports are (`bulk::in_parts`); below two threads, one part merged here.
        let docs_n = docs.len();
        let mut docs = docs.into_iter();
        let parts: Vec<Vec<(DocId, Vec<VerifiedEnvelope>)>> = if threads < 2 {
            vec![docs.collect()]
        } else {
            let per = docs_n.div_ceil(threads * super::bulk::PARTS_PER_THREAD);
            std::iter::from_fn(|| Some(docs.by_ref().take(per).collect::<Vec<_>>()))
                .take_while(|part| !part.is_empty())
                .collect()
        };
        type Part = Result<(IngestReport, WriteBatch, Vec<KeyId>)>;
        let results: Vec<Part> = super::bulk::in_parts(parts, threads.max(1), |part| -> Part {
            let mut report = IngestReport::default();
            let mut batch = WriteBatch::default();
            let mut keys = Vec::new();
            // The part's stored histories, verified in one batch (`Office::load_histories`):
            // a record absent from a batch that succeeded has none. If the batch fails, each
            // record loads alone, and the failing one fails the ingest as it did before.
            let ids: Vec<DocId> = part.iter().map(|(id, _)| *id).collect();
            debug_assert_eq!(
                ids.iter().collect::<HashSet<_>>().len(),
                ids.len(),
                "envelopes are grouped by record, so a record's history is taken once"
            );
            let mut histories = self.load_histories(&ids).ok();
            for (id, envs) in part {
                let history = match histories.as_mut() {
                    Some(h) => h
                        .remove(&id)
                        .map(|changes| self.doc_from_changes(&id, changes))
                        .transpose()?,
                    None => self.load_history(&id)?,
                };
                self.merge_doc(
                    (id, history),
                    envs,
                    (received, held, reopen),
                    &mut report,
                    &mut batch,
                    &mut keys,
                )?;
            }
            Ok((report, batch, keys))
        });
        let mut report = IngestReport::default();
        let mut batch = WriteBatch::default();
        let mut stored_keys: Vec<KeyId> = Vec::new();
        for r in results {
            let (part_report, part_batch, keys) = r?;
            report.add(&part_report);
            debug_assert!(
                part_batch.meta.is_empty() && part_batch.log.is_empty(),
                "merging records writes updates, expiries and keys only"
            );
            batch.updates.extend(part_batch.updates);
            batch.expiries.extend(part_batch.expiries);
            batch.keys.extend(part_batch.keys);
            stored_keys.extend(keys);
        }
        Ok((report, batch, stored_keys))
    }

    /// Merges one record's new envelopes into its document (`history`: what is stored of it,
    /// verified) and adds what to store to `batch`.
    fn merge_doc(
        &self,
        (id, history): (DocId, Option<Automerge>),
        envs: Vec<VerifiedEnvelope>,
        (received, held, reopen): (&ReceivedKeys, &HashSet<[u8; 32]>, &HashSet<DocId>),
        report: &mut IngestReport,
        batch: &mut WriteBatch,
        stored_keys: &mut Vec<KeyId>,
    ) -> Result<()> {
        let mut new = Vec::with_capacity(envs.len());
        let mut changes = Vec::with_capacity(envs.len());
        for env in envs {
            if held.contains(&env.hash()) {
                report.duplicates += 1;
                continue;
            }
            debug_assert_eq!(env.doc_id(), id, "grouped by record");
            new.push((env.hash(), env.envelope().encode()));
            changes.push(env);
        }
        if new.is_empty() {
            // Nothing new (every envelope held already, or a record re-opened): merged again
            // only if it is pending and may open now, with a key that came along or because it
            // was re-opened for a key stored meanwhile.
            let may_open = !received.is_empty() || reopen.contains(&id);
            if !may_open || !self.is_pending(&id)? {
                return Ok(());
            }
        }
        // The offices that signed the record's first change(s) among the new envelopes, and
        // the office the record named before them (its origin, checked when it arrived).
        let first_signers: Vec<String> = changes
            .iter()
            .filter(|e| e.is_first())
            .map(|e| e.office().to_string())
            .collect();
        let office_before = history.as_ref().and_then(|d| root_string(d, "office"));
        // Whether anything of the record was held before (a record new here counts against
        // PENDING_RECORDS_MAX if it is left pending).
        let history_held = history.as_ref().map(|_| ());
        // A record arriving whole, as its one creating change (a cold sync's usual case), is
        // read straight from the change; anything else is merged by Automerge. Either way the
        // record is what the document says (first_change's contract, asserted in debug builds).
        let fast = match (&history, changes.as_slice()) {
            (None, [only]) => first_change::new_document(&only.envelope().change),
            _ => None,
        };
        let (name, value) = match fast {
            Some(root) => {
                let name = root
                    .get(DOC_ID_FIELD)
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (name, Value::Object(root))
            }
            None => {
                let mut doc = history.unwrap_or_default();
                // Expanded only here: verification checked each change without expanding it.
                let merged = changes
                    .into_iter()
                    .map(|env| super::expanded(&id, env))
                    .collect::<Result<Vec<_>>>()
                    .and_then(|changes| {
                        doc.apply_changes(changes).map_err(|e| {
                            OfficeError::Integrity(format!("record {}: {e}", doc_id_hex(&id)))
                        })
                    });
                if let Err(e) = merged {
                    report.rejected.push(e.to_string());
                    return Ok(());
                }
                (doc_names(&doc), doc_value(&doc))
            }
        };
        let stored = new.len();
        // A pending record's projection says what it waits for (see the module docs).
        let pending = |new, waiting_for: Option<KeyId>| RecordUpdate {
            doc_id: id,
            kind: KIND_PENDING,
            envelopes: new,
            projection: waiting_for.map_or_else(Vec::new, |k| k.to_vec()),
            index_keys: Vec::new(),
            due_day: None,
        };
        match name {
            None => {
                report.stored += stored;
                report.pending += 1;
                if history_held.is_none() {
                    report.new_pending.push(id);
                }
                batch.updates.push(pending(new, None));
                return Ok(());
            }
            Some(name) if name != doc_id_hex(&id) => {
                report.rejected.push(format!(
                    "record {}: the document names another record",
                    doc_id_hex(&id)
                ));
                return Ok(());
            }
            Some(_) => {}
        }
        let record = match Record::from_value(value) {
            Ok(record) => record,
            Err(e) => {
                report.rejected.push(format!(
                    "record {}: {}",
                    doc_id_hex(&id),
                    without_values(&e)
                ));
                return Ok(());
            }
        };
        let refused = foreign_origin(&id, &record, &first_signers, office_before)
            .or_else(|| dated_ahead(&id, &record, chrono::Utc::now()));
        if let Some(reason) = refused {
            report.rejected.push(reason);
            return Ok(());
        }
        // The key sealing the record: held here already, or arriving with it. A key this
        // office destroyed is refused (`KeyStore::hold_received`): the record waits for a key
        // that never comes, unreadable as its erased predecessors are.
        let kid = sealed::record_key_id(&record);
        let arriving = match kid {
            Some(k) if self.keys.key(&k).is_err() => match received.get(&k) {
                Some(key) => match self.keys.hold_received(k, key, record.office()) {
                    Ok(()) => Some((k, key)),
                    Err(keystore::KeyError::Destroyed) => {
                        report.rejected.push(format!(
                            "record {}: sealed under subject key {}, which this office destroyed (an erasure or a retention pass) and which sealed no record of office {} here",
                            doc_id_hex(&id),
                            hex::encode(k),
                            record.office()
                        ));
                        return Ok(());
                    }
                    Err(keystore::KeyError::Storage(e)) => return Err(OfficeError::Storage(e)),
                    Err(e) => return Err(e.into()),
                },
                None => {
                    report.stored += stored;
                    report.pending += 1;
                    if history_held.is_none() {
                        report.new_pending.push(id);
                    }
                    batch.updates.push(pending(new, Some(k)));
                    return Ok(());
                }
            },
            _ => None,
        };
        let (kind, projection) = (record.kind_tag(), record.to_projection());
        // The arriving key from this batch's own copy: the key cache may have dropped it since
        // `hold_received` (another write filling its shard clears the shard).
        // What fails from here on is the record's (fields that do not open under their key, a
        // subject that does not parse), refused as above; only the store's failures fail the
        // ingest. A key held for it alone is dropped from memory again.
        let refuse = |report: &mut IngestReport, reason: String| {
            if let Some((k, _)) = arriving {
                self.keys.forget(&[k]);
            }
            report
                .rejected
                .push(format!("record {}: {reason}", doc_id_hex(&id)));
        };
        let plain = match sealed::open_record_with(record, |id| match arriving {
            Some((k, key)) if k == *id => Ok(key.clone()),
            _ => self.keys.key(id),
        }) {
            Ok(plain) => plain,
            Err(keystore::KeyError::Storage(e)) => return Err(OfficeError::Storage(e)),
            Err(e) => {
                refuse(report, e.to_string());
                return Ok(());
            }
        };
        if let (Some((k, key)), Some(subject)) = (arriving, plain.subject()) {
            let subject = match Subject::parse_stored(subject) {
                Ok(subject) => subject,
                Err(_) => {
                    refuse(report, "its subject does not parse".into());
                    return Ok(());
                }
            };
            let is_marketing = |p: &str| self.purposes.is_marketing(p);
            let class = if crate::retention::schedule::legally_kept(&plain, is_marketing).is_some()
            {
                KeyClass::Kept
            } else {
                KeyClass::Erasable
            };
            let owner = keystore::owner(&self.hasher.subject_token(&subject), class);
            batch.keys.push(self.keys.wrap_for_store(&owner, &k, key));
            stored_keys.push(k);
        }
        let (index_keys, due_day) = match self.index_entries(&plain) {
            Ok(entries) => entries,
            Err(OfficeError::Integrity(_)) => {
                refuse(report, "its subject or due date does not parse".into());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let expiry = self
            .retention
            .schedule
            .expiry(&plain, |p| self.purposes.is_marketing(p))
            .map(|(day, _)| epoch_day(day));
        batch.expiries.push((id, expiry));
        report.stored += stored;
        report.records += 1;
        batch.updates.push(RecordUpdate {
            doc_id: id,
            kind,
            envelopes: new,
            projection,
            index_keys,
            due_day,
        });
        Ok(())
    }

    /// Leaves out of `batch` the records new here it would store pending beyond
    /// [`PENDING_RECORDS_MAX`] (their envelopes are not stored; a later round offers them
    /// again), and warns, at most once a minute, when it does.
    fn limit_pending(&self, report: &mut IngestReport, batch: &mut WriteBatch) -> Result<()> {
        let new: HashSet<DocId> = std::mem::take(&mut report.new_pending)
            .into_iter()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let max = self
            .pending_records_max
            .load(std::sync::atomic::Ordering::Relaxed);
        let held = self.store.count_of_kind(KIND_PENDING, max)?;
        let room = max.saturating_sub(held);
        if new.len() <= room {
            return Ok(());
        }
        let mut admitted = 0;
        let mut left_out = 0;
        batch.updates.retain(|u| {
            if u.kind != KIND_PENDING || !new.contains(&u.doc_id) {
                return true;
            }
            if admitted < room {
                admitted += 1;
                return true;
            }
            left_out += 1;
            report.stored -= u.envelopes.len();
            false
        });
        report.pending -= left_out;
        report.over_pending_limit += left_out;
        let now = std::time::Instant::now();
        let mut last = self
            .pending_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| now.duration_since(t) >= PENDING_WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                limit = max,
                left_out,
                "pending records at their limit: records whose first change or key is not held were not stored (a later round offers them again)"
            );
        }
        Ok(())
    }

    fn is_pending(&self, id: &DocId) -> Result<bool> {
        Ok(matches!(
            self.store.projection(id)?,
            Some((KIND_PENDING, _))
        ))
    }

    /// The subject keys sealing these records, to send with them to a peer that may hold them.
    pub fn keys_for(&self, docs: &[DocId]) -> Result<Vec<TravellingKey>> {
        let mut out: BTreeMap<KeyId, Zeroizing<[u8; 32]>> = BTreeMap::new();
        for id in docs {
            let Some((kind, bytes)) = self.store.projection(id)? else {
                continue;
            };
            if kind == KIND_PENDING {
                continue;
            }
            let record = Record::from_projection(&bytes).map_err(OfficeError::Integrity)?;
            if let Some(k) = sealed::record_key_id(&record) {
                if let std::collections::btree_map::Entry::Vacant(e) = out.entry(k) {
                    e.insert(self.keys.key(&k)?);
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// The string at `field` of a document's root, if any.
fn root_string(doc: &Automerge, field: &str) -> Option<String> {
    use automerge::ReadDoc;
    match doc.get(automerge::ROOT, field).ok()?? {
        (automerge::Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Why `record` (merged with new envelopes whose first changes `first_signers` signed; it named
/// `office_before` before them) is refused as another office's record, if it is (module docs).
fn foreign_origin(
    id: &DocId,
    record: &Record,
    first_signers: &[String],
    office_before: Option<String>,
) -> Option<String> {
    let office = record.office();
    if let Some(signer) = first_signers.iter().find(|s| *s != office) {
        return Some(format!(
            "record {}: its first change is signed by office {signer}, but the record names office {office:?} as its origin",
            doc_id_hex(id)
        ));
    }
    match office_before {
        Some(before) if before != office => Some(format!(
            "record {}: a change names office {office:?} as the origin of office {before}'s record",
            doc_id_hex(id)
        )),
        _ => None,
    }
}

/// Why `record` is refused as dated ahead of this office's clock (`now`), if it is (module
/// docs). Times that do not parse are left to the record's readers, as before.
fn dated_ahead(id: &DocId, record: &Record, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    let times: Vec<(&str, &str)> = match record {
        Record::Consent(c) => c
            .events
            .iter()
            .map(|e| ("a consent event", e.at.as_str()))
            .collect(),
        Record::Request(r) => std::iter::once(("the request's receipt", r.received.as_str()))
            .chain(
                r.history
                    .iter()
                    .map(|h| ("a request history step", h.at.as_str())),
            )
            .collect(),
        Record::Transfer(t) => vec![("the transfer", t.at.as_str())],
        Record::Hold(h) => std::iter::once(("the hold's setting", h.set_at.as_str()))
            .chain(
                h.cleared_at
                    .iter()
                    .map(|c| ("the hold's clearing", c.as_str())),
            )
            .collect(),
    };
    let skew = chrono::Duration::from_std(CLOCK_SKEW_MAX).expect("60 s");
    times.into_iter().find_map(|(what, at)| {
        let t = super::parse_time(at).ok()?;
        let ahead = (t - now).num_seconds();
        (t - now > skew).then(|| {
            format!(
                "record {}: {what} is dated {ahead} s ahead of this office's clock (at most {} s): its signer's clock runs ahead, or it dates an event that has not happened",
                doc_id_hex(id),
                CLOCK_SKEW_MAX.as_secs()
            )
        })
    })
}

/// A record parse error's text for the log, unless it quotes a value (serde quotes what it
/// found, which may be personal data: logs carry none).
fn without_values(error: &str) -> &str {
    if error.contains('"') {
        "document is not a valid record (a field holds a value of the wrong type)"
    } else {
        error
    }
}
