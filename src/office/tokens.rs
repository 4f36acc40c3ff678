//! Token layouts 2 to 4: re-indexing a store written under an earlier one.
//!
//! Layout 2 (`subject::TOKEN_CLUSTER_LEN`) makes a subject's consent tokens and key owners start
//! with the first 16 bytes of the subject's token, so the storage index keeps a subject's
//! entries in one leaf and a new record dirties one index page instead of three. Layout 3 makes
//! a replication event's markers start with the id of the record they name
//! (`office::transfer_marker`), so the markers a sync writes append to the index. Layout 4
//! indexes every consent record flagged under 18 under its subject's minor token too
//! (`SubjectHasher::minor_token`), which `consent check` asks for marketing purposes. A store
//! written before holds its entries under the earlier keys, which the current derivations never
//! look up: without this pass a `consent check` would find nothing, and every record a sync had
//! already reported would be reported again.
//!
//! What changes, and so what the pass rewrites:
//! - from layout 1: a consent record's consent token (its subject token is the same in every
//!   layout); the record's index keys are recomputed exactly as a write computes them
//!   (`index_entries`) and stored with its unchanged projection;
//! - from layout 1: each subject's key owners, both classes: every key under the layout-1 owner
//!   is moved to the current owner. A wrapped key is bound to its owner (`keystore::wrap`), so it
//!   is unwrapped and wrapped again under the current KEK for the new one;
//! - from layouts 1 and 2: a transfer record's markers, recomputed and stored the same way;
//! - from layouts 1 to 3: a consent record flagged under 18 (read from its projection's plain
//!   flag: the others are not opened), re-indexed the same way.
//!
//! The pass runs at start-up, before the office serves anything, one durable batch per page of
//! [`PAGE_RECORDS`] records. It is idempotent, so a crash in the middle only repeats work: a
//! record re-indexed twice gets the same keys, and a key already moved is no longer under the
//! old owner (test: `an_interrupted_pass_is_finished_by_the_next_one`). The meta entry
//! [`META_TOKEN_LAYOUT`] is written when it has finished, and a store that has the current one
//! (every store created since) skips the pass. A layout this build does not know (a newer
//! build's) is refused rather than rewritten. A record whose key is not held here
//! (erased, or not yet received) cannot be read, so it cannot be re-indexed either; its old
//! entries stay, unreachable, until its next change rewrites them, and the pass counts it.

use std::collections::HashSet;

use consentd_storage::{RecordUpdate, WriteBatch};

use super::{Office, OfficeError, Result};
use crate::keystore::{self, KeyClass, KeyError};
use crate::record::{Record, KIND_CONSENT, KIND_TRANSFER};

/// Meta key holding the token layout the store's index was written under (absent: layout 1).
pub(crate) const META_TOKEN_LAYOUT: &str = "token_layout";
/// The layout this build writes (stored as its decimal digits).
pub(crate) const TOKEN_LAYOUT: u32 = 4;
/// Records read and re-indexed per durable batch: about 0.5 MiB of projections.
const PAGE_RECORDS: usize = 1_024;

/// What [`upgrade`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// Records read.
    pub records: u64,
    /// Consent records (from layout 1) and transfer records (from layouts 1 and 2) whose index
    /// keys were rewritten.
    pub reindexed: u64,
    /// Keys moved to their current owner (from layout 1).
    pub keys_moved: u64,
    /// Records that could not be read because their key is not held here.
    pub unreadable: u64,
}

/// Re-indexes a store written under an earlier token layout, if it is one; returns `None` when
/// the store is already at the current one. Blocking: call it before serving, outside the async
/// runtime.
/// Meta key of the check value of the index key the store is indexed under
/// ([`crate::subject::SubjectHasher::key_check`]).
const META_INDEX_KEY_CHECK: &str = "index_key_check";
/// Records tried, when a store holds no check value yet, for one whose subject opens.
const KEY_CHECK_SAMPLE_MAX: usize = 64;

/// Refuses a store indexed under another index key than the office's `index.key`. With another
/// key every subject is looked up under tokens nothing is indexed by: every answer was "not
/// granted, no record", and an erasure completed deleting nothing, without a word (found by an
/// exploratory session). The store records the key's check value at the first start; a store
/// from before that is checked on one of its records whose subject opens (the token the key
/// gives it must index it), then given the value. Before [`upgrade`], which would re-index
/// under the wrong key.
pub(crate) fn check_index_key(office: &Office) -> Result<()> {
    let store = office.store();
    let want = office.hasher.key_check();
    match store.meta(META_INDEX_KEY_CHECK)? {
        Some(held) if held == want => return Ok(()),
        Some(_) => return Err(wrong_index_key()),
        None if !indexed_under(office, &office.hasher)? => return Err(wrong_index_key()),
        None => {}
    }
    store.commit_blocking(WriteBatch {
        meta: vec![(META_INDEX_KEY_CHECK.to_string(), want.to_vec())],
        ..Default::default()
    })?;
    Ok(())
}

/// Whether the first of the store's records whose subject opens (of the first
/// [`KEY_CHECK_SAMPLE_MAX`]) is indexed under the token `hasher` gives its subject; true when
/// none opens (nothing tells otherwise).
fn indexed_under(office: &Office, hasher: &crate::subject::SubjectHasher) -> Result<bool> {
    let store = office.store();
    for (doc, _, bytes) in store
        .snapshot()?
        .projections_after(None, KEY_CHECK_SAMPLE_MAX)?
    {
        let record = Record::from_projection(&bytes).map_err(OfficeError::Integrity)?;
        let Ok(plain) = crate::sealed::open_record(&office.keys, record) else {
            continue; // its key is not held here (yet): another record tells
        };
        let Some(Ok(subject)) = plain.subject().map(crate::subject::Subject::parse_stored) else {
            continue;
        };
        return Ok(store
            .docs_by_key(&hasher.subject_token(&subject))?
            .contains(&doc));
    }
    Ok(true)
}

fn wrong_index_key() -> OfficeError {
    OfficeError::Integrity(
        "index.key is not the key this data directory is indexed under: every subject would be looked up where nothing is indexed (answers \"not granted\", erasures finding nothing); put back the office's own index.key".into(),
    )
}

pub(crate) fn upgrade(office: &Office) -> Result<Option<Upgrade>> {
    upgrade_in_pages(office, PAGE_RECORDS, None)
}

/// [`upgrade`] in durable pages of `page_records`, stopping without the done-mark after
/// `pages_max` pages if given (how the tests interrupt it, as a crash would).
fn upgrade_in_pages(
    office: &Office,
    page_records: usize,
    pages_max: Option<usize>,
) -> Result<Option<Upgrade>> {
    debug_assert!(page_records > 0, "a page must hold a record");
    let store = office.store();
    let from = stored_layout(store.meta(META_TOKEN_LAYOUT)?.as_deref())?;
    if from == TOKEN_LAYOUT {
        return Ok(None);
    }
    let records = store.stats()?.records;
    if records > 0 {
        // Every consent or transfer record is rewritten once: say why this start is slow.
        tracing::info!(
            records,
            from,
            to = TOKEN_LAYOUT,
            "re-indexing the store's tokens"
        );
    }
    let mut done = Upgrade::default();
    // What to read: every record from layout 1; from layout 2 the transfer records, then the
    // consent records; from layout 3 the consent records. `None`: every kind.
    let mut kinds: Vec<Option<u8>> = match from {
        1 => vec![None],
        2 => vec![Some(KIND_TRANSFER), Some(KIND_CONSENT)],
        _ => vec![Some(KIND_CONSENT)],
    };
    kinds.reverse(); // popped from the end
    let mut after = None;
    let mut finished = false;
    for _ in 0..pages_max.unwrap_or(usize::MAX) {
        let Some(&reading) = kinds.last() else {
            finished = true;
            break;
        };
        let page = match reading {
            None => store
                .snapshot()?
                .projections_after(after.as_ref(), page_records)?,
            Some(kind) => store
                .projections_of_kind_after(kind, after.as_ref(), page_records)?
                .into_iter()
                .map(|(doc, bytes)| (doc, kind, bytes))
                .collect(),
        };
        let Some(&(last, _, _)) = page.last() else {
            kinds.pop();
            after = None;
            continue;
        };
        let mut batch = WriteBatch::default();
        // Subjects whose keys this batch already moves (many records share a subject).
        let mut subjects = HashSet::new();
        for (doc, kind, bytes) in page {
            done.records += 1;
            let record = Record::from_projection(&bytes).map_err(OfficeError::Integrity)?;
            // From layout 2 on, a consent record changes only if flagged under 18: the others
            // are not opened (a million of them would be a million unsealings).
            if from >= 2 && matches!(&record, Record::Consent(c) if !c.minor) {
                continue;
            }
            let plain = match crate::sealed::open_record(&office.keys, record) {
                Ok(plain) => plain,
                Err(KeyError::Missing) => {
                    done.unreadable += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let subject_token = if from < 2 {
                crate::retention::pass::subject_token(office, &plain)?
            } else {
                None
            };
            if let Some(token) = subject_token {
                if subjects.insert(token) {
                    for class in [KeyClass::Kept, KeyClass::Erasable] {
                        let (old, new) = (
                            keystore::owner_v1(&token, class),
                            keystore::owner(&token, class),
                        );
                        for id in store.keys_of(&old)? {
                            // A wrapped key is bound to its owner (the wrap's associated data),
                            // so it moves unwrapped and wrapped again for the new owner.
                            let key = office.keys.key(&id)?;
                            batch.key_deletes.push((old, id));
                            batch.keys.push(office.keys.wrap_for_store(&new, &id, &key));
                            done.keys_moved += 1;
                        }
                    }
                }
            }
            // Only consent tokens (layout 2), transfer markers (layout 3) and minor tokens
            // (layout 4) changed.
            let changed = match &plain {
                Record::Consent(c) => from < 2 || c.minor,
                Record::Transfer(_) => from < 3,
                _ => false,
            };
            if changed {
                let (index_keys, due_day) = office.index_entries(&plain)?;
                batch.updates.push(RecordUpdate {
                    doc_id: doc,
                    kind,
                    envelopes: Vec::new(),
                    projection: bytes,
                    index_keys,
                    due_day,
                });
                done.reindexed += 1;
            }
        }
        store.commit_blocking(batch)?;
        after = Some(last);
    }
    if !finished {
        return Ok(Some(done)); // interrupted: no mark, the next start runs the pass again
    }
    store.commit_blocking(WriteBatch {
        meta: vec![(
            META_TOKEN_LAYOUT.into(),
            TOKEN_LAYOUT.to_string().into_bytes(),
        )],
        ..WriteBatch::default()
    })?;
    if records > 0 {
        tracing::info!(
            records = done.records,
            reindexed = done.reindexed,
            keys_moved = done.keys_moved,
            unreadable = done.unreadable,
            "store's tokens re-indexed"
        );
    }
    Ok(Some(done))
}

/// The layout a store's meta entry names: 1 when absent; an error for one newer than this
/// build's, whose keys this build would not know how to rewrite.
fn stored_layout(mark: Option<&[u8]>) -> Result<u32> {
    let Some(mark) = mark else { return Ok(1) };
    let layout = std::str::from_utf8(mark)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|l| *l >= 1)
        .ok_or_else(|| {
            OfficeError::Integrity(format!(
                "meta {META_TOKEN_LAYOUT} is {:?}, not a token layout",
                String::from_utf8_lossy(mark)
            ))
        })?;
    if layout > TOKEN_LAYOUT {
        return Err(OfficeError::Integrity(format!(
            "the store's index uses token layout {layout}, written by a newer consentd; this one \
             knows layouts up to {TOKEN_LAYOUT} (run the newer consentd)"
        )));
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Request};
    use crate::subject::{Subject, SubjectHasher};

    const GRANTS: [(&str, &str); 3] = [
        ("anna@example.com", "marketing"),
        ("anna@example.com", "sales"),
        ("+31 20 555 0100", "marketing"),
    ];

    fn subject(s: &str) -> Subject {
        Subject::parse(s).unwrap()
    }

    /// Rewrites a layout-2 store the way a build before layout 2 wrote it: consent entries under
    /// the layout-1 consent token, keys under the layout-1 owner, no layout mark.
    fn downgrade_to_layout_1(office: &Office) -> u64 {
        let (store, hasher): (_, &SubjectHasher) = (office.store(), &office.hasher);
        let mut batch = WriteBatch::default();
        let mut moved = 0;
        for (s, purpose) in GRANTS {
            let subject = subject(s);
            let token = hasher.subject_token(&subject);
            for (doc, kind, projection) in store
                .projections_by_key(&hasher.consent_token(&subject, purpose))
                .unwrap()
            {
                batch.updates.push(RecordUpdate {
                    doc_id: doc,
                    kind,
                    envelopes: Vec::new(),
                    projection,
                    index_keys: vec![token, hasher.consent_token_v1(&subject, purpose)],
                    due_day: None,
                });
            }
        }
        for s in ["anna@example.com", "+31 20 555 0100"] {
            let token = hasher.subject_token(&subject(s));
            for class in [KeyClass::Kept, KeyClass::Erasable] {
                let new = keystore::owner(&token, class);
                for id in store.keys_of(&new).unwrap() {
                    let key = office.keys.key(&id).unwrap();
                    let old = keystore::owner_v1(&token, class);
                    batch.key_deletes.push((new, id));
                    batch.keys.push(office.keys.wrap_for_store(&old, &id, &key));
                    moved += 1;
                }
            }
        }
        batch.meta.push((META_TOKEN_LAYOUT.into(), b"1".to_vec()));
        store.commit_blocking(batch).unwrap();
        moved
    }

    /// A two-office network in `dir`; returns `de`'s config.
    fn network(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let offices = crate::network::parse_offices("de,nl").unwrap();
        crate::network::init(dir, &offices, None, name).unwrap();
        dir.join("de").join("consentd.toml")
    }

    /// `de` of a new two-office network in `dir`, prepared as the daemon prepares it.
    fn new_office(dir: &std::path::Path, name: &str) -> std::sync::Arc<Office> {
        crate::daemon::prepare(&network(dir, name)).unwrap().office
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn grant_all(office: &Office) {
        let rt = runtime();
        for (s, purpose) in GRANTS {
            rt.block_on(
                office.execute(Request::ConsentGrant(protocol::ConsentGrant {
                    evidence: Some("web form v3".into()),
                    ..protocol::ConsentGrant::new(s, purpose, "consent")
                })),
            )
            .unwrap();
        }
    }

    /// An office of a new network holding [`GRANTS`], turned back into layout 1; with the
    /// number of keys moved to layout-1 owners.
    fn layout_1_office(dir: &std::path::Path, name: &str) -> (std::sync::Arc<Office>, u64) {
        let office = new_office(dir, name);
        grant_all(&office);
        let moved = downgrade_to_layout_1(&office);
        (office, moved)
    }

    fn granted(office: &Office) -> Vec<bool> {
        GRANTS
            .iter()
            .map(|(s, p)| office.consent_check(s, p, None).unwrap()["granted"] == true)
            .collect()
    }

    #[test]
    fn a_layout_1_store_is_reindexed_at_start_and_its_consents_and_keys_are_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = network(dir.path(), "tokens-upgrade");

        let moved = {
            let office = crate::daemon::prepare(&config).unwrap().office;
            assert_eq!(
                upgrade(&office).unwrap(),
                None,
                "a new store is marked layout 2 when it is first opened"
            );
            grant_all(&office);
            assert_eq!(granted(&office), [true; 3]);
            let moved = downgrade_to_layout_1(&office);
            assert!(moved >= 2, "each subject has a key to move: {moved}");
            assert_eq!(
                granted(&office),
                [false; 3],
                "layout-1 entries are invisible to layout-2 lookups"
            );
            moved
        };

        // The daemon's start re-indexes; the pass itself is checked again below.
        let office = crate::daemon::prepare(&config).unwrap().office;
        assert_eq!(granted(&office), [true; 3]);
        let store = office.store();
        assert_eq!(
            store.meta(META_TOKEN_LAYOUT).unwrap(),
            Some(TOKEN_LAYOUT.to_string().into_bytes())
        );
        for (s, purpose) in GRANTS {
            let subject = subject(s);
            let old = office.hasher.consent_token_v1(&subject, purpose);
            assert!(store.docs_by_key(&old).unwrap().is_empty(), "{s} {purpose}");
        }
        let mut keys_now = 0;
        for s in ["anna@example.com", "+31 20 555 0100"] {
            let token = office.hasher.subject_token(&subject(s));
            for class in [KeyClass::Kept, KeyClass::Erasable] {
                assert!(store
                    .keys_of(&keystore::owner_v1(&token, class))
                    .unwrap()
                    .is_empty());
                let ids = store.keys_of(&keystore::owner(&token, class)).unwrap();
                for id in &ids {
                    let (owner, _) = store.key(id).unwrap().unwrap();
                    assert_eq!(owner, keystore::owner(&token, class));
                    // A fresh office holds no key in memory: this unwraps the moved key, which
                    // is bound to its new owner.
                    office.keys.key(id).unwrap();
                }
                keys_now += ids.len() as u64;
            }
        }
        assert_eq!(keys_now, moved, "every key moved, none lost");
        assert_eq!(upgrade(&office).unwrap(), None, "done once");
    }

    /// A pass stopped after two of three one-record pages (as a crash would stop it) leaves no
    /// mark; the next pass finishes the job, and nothing is lost or left under layout 1.
    #[test]
    fn an_interrupted_pass_is_finished_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (office, moved) = layout_1_office(dir.path(), "tokens-resume");
        let first = upgrade_in_pages(&office, 1, Some(2)).unwrap().unwrap();
        assert_eq!(first.records, 2, "two pages of one record");
        assert_eq!(
            office.store().meta(META_TOKEN_LAYOUT).unwrap().as_deref(),
            Some(&b"1"[..]),
            "an interrupted pass does not mark the store done"
        );
        assert_eq!(
            granted(&office).iter().filter(|g| **g).count(),
            2,
            "the first two records are re-indexed, the third is not yet"
        );
        let second = upgrade(&office).unwrap().expect("the pass runs again");
        assert_eq!(second.records, 3, "the whole store is read again");
        assert_eq!(
            first.keys_moved + second.keys_moved,
            moved,
            "each key moved exactly once across the two passes"
        );
        assert_eq!(granted(&office), [true; 3]);
        assert_eq!(upgrade(&office).unwrap(), None, "marked done");
    }

    /// Replication events for the first two consent records: "sent to nl".
    fn sent_to_nl(office: &Office) -> Vec<crate::office::TransferEvent> {
        let docs = office
            .store()
            .projections_of_kind(crate::record::KIND_CONSENT, 2)
            .unwrap();
        assert_eq!(docs.len(), 2);
        docs.into_iter()
            .map(|(doc, _)| crate::office::TransferEvent {
                record: doc,
                to_office: "nl".into(),
                to_jurisdiction: "NL".into(),
                status: "transferred",
                detail: "adequacy".into(),
                tia: None,
                categories: vec!["contact".into()],
            })
            .collect()
    }

    /// A store written under layout 2 holds its replication events' markers under the plain
    /// hash. The pass moves them to the markers led by the record's id, reading only transfer
    /// records, so a record reported before the upgrade is not reported again after it.
    #[test]
    fn a_layout_2_store_has_its_transfer_markers_reindexed() {
        let dir = tempfile::tempdir().unwrap();
        let office = new_office(dir.path(), "tokens-transfers");
        grant_all(&office);
        let rt = runtime();
        let events = sent_to_nl(&office);
        assert_eq!(
            rt.block_on(office.record_transfer_events(events.clone()))
                .unwrap(),
            2
        );
        let store = office.store();
        let marker = |e: &crate::office::TransferEvent, layout_2: bool| {
            let id = crate::record::doc_id_hex(&e.record);
            if layout_2 {
                crate::office::transfer_marker_layout_2(&id, &e.to_office, e.status)
            } else {
                crate::office::transfer_marker(&id, &e.to_office, e.status)
            }
        };
        for e in &events {
            assert_eq!(
                &marker(e, false)[..16],
                &e.record[..],
                "led by the record's id"
            );
            assert_eq!(store.docs_by_key(&marker(e, false)).unwrap().len(), 1);
        }

        // Downgrade: the transfer record indexed as layout 2 wrote it.
        let transfers = store
            .projections_of_kind(crate::record::KIND_TRANSFER, 10)
            .unwrap();
        assert_eq!(transfers.len(), 1, "one event record names both");
        let mut batch = WriteBatch::default();
        for (doc, projection) in transfers {
            batch.updates.push(RecordUpdate {
                doc_id: doc,
                kind: crate::record::KIND_TRANSFER,
                envelopes: Vec::new(),
                projection,
                index_keys: events.iter().map(|e| marker(e, true)).collect(),
                due_day: None,
            });
        }
        batch.meta.push((META_TOKEN_LAYOUT.into(), b"2".to_vec()));
        store.commit_blocking(batch).unwrap();
        for e in &events {
            assert!(
                store.docs_by_key(&marker(e, false)).unwrap().is_empty(),
                "layout-2 markers are invisible to layout-3 lookups"
            );
        }

        let done = upgrade(&office).unwrap().expect("layout 2 is upgraded");
        assert_eq!(
            done,
            Upgrade {
                records: 4,
                reindexed: 1,
                keys_moved: 0,
                unreadable: 0,
            },
            "the transfer record re-indexed; the consent records read, none flagged under 18"
        );
        for e in &events {
            assert_eq!(store.docs_by_key(&marker(e, false)).unwrap().len(), 1);
            assert!(store.docs_by_key(&marker(e, true)).unwrap().is_empty());
        }
        assert_eq!(
            rt.block_on(office.record_transfer_events(events)).unwrap(),
            0,
            "reported before the upgrade, so not again"
        );
        assert_eq!(granted(&office), [true; 3], "consent entries untouched");
        assert_eq!(upgrade(&office).unwrap(), None, "done once");
    }

    #[test]
    fn a_layout_from_a_newer_build_or_no_layout_at_all_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let office = new_office(dir.path(), "tokens-newer");
        for (mark, says) in [
            (&b"5"[..], "newer consentd"),
            (b"two", "not a token layout"),
        ] {
            office
                .store()
                .commit_blocking(WriteBatch {
                    meta: vec![(META_TOKEN_LAYOUT.into(), mark.to_vec())],
                    ..WriteBatch::default()
                })
                .unwrap();
            let err = upgrade(&office).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    /// A store indexed under another key than the office's `index.key` is refused at start:
    /// by the check value it holds, or, from before that value, by one of its records.
    #[test]
    fn a_store_indexed_under_another_index_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let office = new_office(dir.path(), "tokens-index-key");
        grant_all(&office);
        assert!(indexed_under(&office, &office.hasher).unwrap());
        let other = crate::subject::SubjectHasher::new(rand::random());
        assert!(!indexed_under(&office, &other).unwrap());
        drop(office);
        let config = dir.path().join("de").join("consentd.toml");
        let key = dir.path().join("de").join("index.key");
        let own = dir.path().join("index.key.own");
        std::fs::rename(&key, &own).unwrap();
        consentd_sync::keys::write_secret32(&key, &rand::random()).unwrap();
        let err = crate::daemon::prepare(&config).err().unwrap().to_string();
        assert!(err.contains("index.key is not the key"), "{err}");
        std::fs::rename(&own, &key).unwrap();
        let office = crate::daemon::prepare(&config).unwrap().office;
        assert!(granted(&office).iter().all(|g| *g));
    }

    /// A layout-3 store indexed a consent record flagged under 18 without the subject's minor
    /// token: the pass adds it (opening that record only), and `consent check` then refuses
    /// marketing granted without a parent's consent.
    #[test]
    fn a_layout_3_store_has_its_minor_flags_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let office = new_office(dir.path(), "tokens-minor");
        grant_all(&office);
        let rt = runtime();
        let kid = "kid@example.test";
        rt.block_on(
            office.execute(Request::ConsentGrant(protocol::ConsentGrant {
                under_18: true,
                ..protocol::ConsentGrant::new(kid, "support", "contract")
            })),
        )
        .unwrap();
        let subject = crate::subject::Subject::parse(kid).unwrap();
        let minor = office.hasher.minor_token(&subject);
        let flagged = office.store().docs_by_key(&minor).unwrap();
        assert_eq!(flagged.len(), 1, "written with the minor token");

        // Downgrade: the record indexed as layout 3 wrote it.
        let (kind, projection) = office.store().projection(&flagged[0]).unwrap().unwrap();
        let record = office.read_record(&flagged[0]).unwrap().unwrap();
        let (keys, due_day) = office.index_entries(&record).unwrap();
        let mut batch = WriteBatch::default();
        batch.updates.push(RecordUpdate {
            doc_id: flagged[0],
            kind,
            envelopes: Vec::new(),
            projection,
            index_keys: keys.into_iter().filter(|k| *k != minor).collect(),
            due_day,
        });
        batch.meta.push((META_TOKEN_LAYOUT.into(), b"3".to_vec()));
        office.store().commit_blocking(batch).unwrap();
        assert!(office.store().docs_by_key(&minor).unwrap().is_empty());

        let done = upgrade(&office).unwrap().expect("layout 3 is upgraded");
        assert_eq!(
            (done.records, done.reindexed),
            (4, 1),
            "every consent record read, the flagged one re-indexed"
        );
        assert_eq!(office.store().docs_by_key(&minor).unwrap(), flagged);
        assert_eq!(granted(&office), [true; 3], "the others untouched");
    }

    #[test]
    fn the_pass_counts_what_it_rewrote() {
        let dir = tempfile::tempdir().unwrap();
        let (office, moved) = layout_1_office(dir.path(), "tokens-count");
        let done = upgrade(&office).unwrap().expect("layout 1 is upgraded");
        assert_eq!(
            done,
            Upgrade {
                records: 3,
                reindexed: 3,
                keys_moved: moved,
                unreadable: 0,
            }
        );
        assert_eq!(granted(&office), [true; 3]);
    }
}
