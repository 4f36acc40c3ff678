//! Applying envelopes that other offices authored.
//!
//! The sync layer hands over envelopes it has already verified against the roster (a
//! [`VerifiedEnvelope`] cannot be obtained otherwise). Here they are grouped by record, merged into
//! each record's document, and stored with the recomputed projection and index entries in one
//! durable batch; the caller acknowledges to the peer only after [`Office::ingest`] returns.
//!
//! A record whose history arrived only in part (a later change before the change that created
//! the record) cannot be read yet: its envelopes are stored under [`KIND_PENDING`] with no
//! projection and no index entries, so queries do not see it, and the next ingest that completes
//! its history makes it a record like any other.

use super::{doc_lock_key, Office, OfficeError, Result};
use crate::record::{doc_id_hex, doc_names, DocId, Record};
use automerge::Automerge;
use consentd_storage::{RecordUpdate, WriteBatch};
use consentd_sync::VerifiedEnvelope;
use std::collections::BTreeMap;

/// Storage kind of a record whose history is incomplete (see the module docs).
pub const KIND_PENDING: u8 = 0;
/// Most envelopes applied in one ingest call; the sync layer's batches are smaller.
pub const INGEST_ENVELOPES_MAX: usize = 4096;

/// What one ingest did, for the peer's acknowledgement and the `peers` counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// New envelopes stored.
    pub stored: usize,
    /// Envelopes this office already held.
    pub duplicates: usize,
    /// Records whose history is still incomplete after this ingest.
    pub pending: usize,
    /// Records that became readable or changed.
    pub records: usize,
}

impl Office {
    /// Stores and applies envelopes other offices authored; returns once they are durable.
    pub async fn ingest(&self, envelopes: Vec<VerifiedEnvelope>) -> Result<IngestReport> {
        if envelopes.len() > INGEST_ENVELOPES_MAX {
            return Err(OfficeError::Invalid(format!(
                "an ingest holds at most {INGEST_ENVELOPES_MAX} envelopes"
            )));
        }
        let mut report = IngestReport::default();
        let mut by_doc: BTreeMap<DocId, Vec<VerifiedEnvelope>> = BTreeMap::new();
        for env in envelopes {
            if self.store.has_envelope(&env.hash())? {
                report.duplicates += 1;
                continue;
            }
            by_doc.entry(env.doc_id()).or_default().push(env);
        }
        if by_doc.is_empty() {
            return Ok(report);
        }
        let keys: Vec<[u8; 32]> = by_doc.keys().map(doc_lock_key).collect();
        let _guards = Self::lock_shards(&self.doc_locks, &keys).await;

        let mut batch = WriteBatch::default();
        for (id, envs) in by_doc {
            let mut doc = match self.load_history(&id)? {
                Some(doc) => doc,
                None => Automerge::new(),
            };
            let mut new = Vec::with_capacity(envs.len());
            let mut changes = Vec::with_capacity(envs.len());
            for env in envs {
                // Checked again under the lock: a concurrent ingest may have stored it meanwhile.
                if self.store.has_envelope(&env.hash())? {
                    report.duplicates += 1;
                    continue;
                }
                debug_assert_eq!(env.doc_id(), id, "grouped by record");
                changes.push(env.change().clone());
                new.push((env.hash(), env.envelope().encode()));
            }
            if new.is_empty() {
                continue;
            }
            doc.apply_changes(changes)
                .map_err(|e| OfficeError::Integrity(format!("record {}: {e}", doc_id_hex(&id))))?;
            report.stored += new.len();
            let update = match doc_names(&doc) {
                None => {
                    report.pending += 1;
                    RecordUpdate {
                        doc_id: id,
                        kind: KIND_PENDING,
                        envelopes: new,
                        projection: Vec::new(),
                        index_keys: Vec::new(),
                        due_day: None,
                    }
                }
                Some(name) if name != doc_id_hex(&id) => {
                    return Err(OfficeError::Integrity(format!(
                        "record {}: the document names another record",
                        doc_id_hex(&id)
                    )))
                }
                Some(_) => {
                    let record = Record::from_doc(&doc).map_err(|e| {
                        OfficeError::Integrity(format!("record {}: {e}", doc_id_hex(&id)))
                    })?;
                    let (index_keys, due_day) = self.index_entries(&record)?;
                    report.records += 1;
                    RecordUpdate {
                        doc_id: id,
                        kind: record.kind_tag(),
                        envelopes: new,
                        projection: record.to_projection(),
                        index_keys,
                        due_day,
                    }
                }
            };
            batch.updates.push(update);
        }
        if !batch.updates.is_empty() {
            self.store.commit(batch).await?;
        }
        Ok(report)
    }
}
