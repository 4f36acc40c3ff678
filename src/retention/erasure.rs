//! Erasure requests (§8, right to erasure): completing an `erasure` request deletes every record
//! of its subject except those a legal duty keeps, and the request records what was kept and why
//! (§7: a deletion may be refused where a legal retention duty forbids it, and the refusal is
//! explained). A kept consent record is proof, not permission: every consent of the subject still
//! granted afterwards is withdrawn, in the batch that closes the request.
//!
//! Under a legal hold an erasure deletes nothing (GDPR Art. 17(3)(e)) but is postponed, not
//! dropped: its report lists what the hold alone keeps (`postponed`), and once the hold ends
//! [`after_hold_cleared`] carries it out, at every office the clearing reaches.
//!
//! The deletions run *before* the request is closed: if closing fails, the operator closes it
//! again and the erasure (now finding only the kept records) runs again, so the two never
//! disagree. Run again, it still destroys the subject's unused keys, which a crash left behind
//! under builds that destroyed keys in a commit after the deletions (`pass::delete_exclusive`).
//! Erasure runs for `request close` over the socket; an imported `request.close` line only
//! closes (bulk imports carry history, not new decisions), so one completing an open erasure
//! request is refused (`Office::refuse_imported_erasure`).

use super::pass::{self, Deletion};
use super::schedule;
use crate::office::{Office, OfficeError};
use crate::protocol;
use crate::record::{self, doc_id_hex, Record};
use crate::subject::Subject;
use consentd_sync::tombstone::Reason;
use serde_json::{json, Value};

type Result<T, E = OfficeError> = std::result::Result<T, E>;

/// Why an erasure under a legal hold keeps a record nothing else keeps: postponed, not dropped.
pub const HOLD_POSTPONES: &str = "the subject is under a legal hold: GDPR Art. 17(3)(e) postpones the erasure of this record, not drops it; it is deleted when the hold ends";
/// Why an erasure under a legal hold keeps a record another legal duty keeps as well.
pub const HOLD_KEEPS: &str = "the subject is under a legal hold";
/// The `kept` rule of a record a legal hold keeps through an erasure.
const HOLD_RULE: &str = "legal-hold";

/// Why an erasure keeps another open request of the subject.
pub const OPEN_REQUEST_KEPT: &str =
    "an open data-subject request: kept until it is answered, then 5 years (§7)";

fn kind_name(r: &Record) -> &'static str {
    match r {
        Record::Consent(_) => "consent",
        Record::Request(_) => "request",
        Record::Transfer(_) => "transfer",
        Record::Hold(_) => "hold",
    }
}

/// `request close ID --outcome completed`: erases first when the request is an erasure request.
pub async fn close(office: &Office, a: protocol::RequestClose) -> Result<Value> {
    let id = record::parse_doc_id(&a.id).map_err(OfficeError::Invalid)?;
    let target = match office.read_record(&id)? {
        Some(Record::Request(r)) if r.kind == "erasure" && r.is_open() => Some(r),
        Some(Record::Request(r)) if r.is_open() && withdraws(&r.kind) => {
            return close_withdrawing(office, a, r).await;
        }
        _ => None,
    };
    let Some(request) = target else {
        return office
            .close_with_erasure_report(a, None, Vec::new(), None)
            .await;
    };
    let marketing = |p: &str| office.purposes.is_marketing(p);
    // As stored: a request written under older input rules keeps the tokens it was indexed by.
    let subject = Subject::parse_stored(&request.subject)
        .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
    let token = pass::subject_token(office, &Record::Request(request))?
        .expect("a request names its subject");
    let held = pass::is_held(office, &token)?;
    let policy = format!("request/{}", doc_id_hex(&id));
    let mut kept = Vec::new();
    let mut todo = Vec::new();
    // Records the hold alone keeps: deleted once it ends (`after_hold_cleared`).
    let mut postponed = Vec::new();
    for (rid, r) in office.records_by_key(&token)? {
        let why = if rid == id {
            Some((
                "request-confirmation",
                "this request's confirmation (§7: 5 years)",
            ))
        } else if matches!(&r, Record::Request(other) if other.is_open()) {
            // Kept because it is still open, not as the confirmation of a handled request
            // (the rule's own reason said so of an open request; found by an exploratory
            // session). Once answered, the request-confirmation rule keeps it.
            Some(("request-confirmation", OPEN_REQUEST_KEPT))
        } else if let Some(rule) = schedule::legally_kept(&r, marketing) {
            Some((rule.id, rule.source))
        } else if schedule::legal_obligation_in_force(&r) {
            // Art. 17(3)(b): erasure does not reach what a legal obligation requires (a
            // fraud_prevention grant on legal_obligation was deleted; found by an exploratory
            // session).
            Some((
                schedule::classify(&r, marketing).id,
                schedule::LEGAL_OBLIGATION_KEPT,
            ))
        } else {
            None
        };
        // Under a hold everything is kept (GDPR Art. 17(3)(e)); what nothing else keeps is
        // postponed, not dropped: it was never deleted, even once the hold was lifted (found by
        // an exploratory session).
        let why = match why {
            None if held => {
                postponed.push(doc_id_hex(&rid));
                Some((HOLD_RULE, HOLD_POSTPONES))
            }
            Some(_) if held && rid != id => Some((HOLD_RULE, HOLD_KEEPS)),
            other => other,
        };
        match why {
            Some((rule, reason)) => kept.push(json!({
                "id": doc_id_hex(&rid),
                "kind": kind_name(&r),
                "rule": rule,
                "why": reason,
            })),
            None => todo.push(Deletion {
                id: rid,
                record: r,
                reason: Reason::Erasure,
                policy: policy.clone(),
                still_expired_by: None,
            }),
        }
    }
    let out = pass::delete_exclusive(office, todo, token).await?;
    // What a legal duty keeps is kept as proof, not as permission: erasure withdraws every
    // consent of the subject still granted (Art. 17(1)(b), §8), in the batch that closes,
    // except processing a legal obligation requires (Art. 17(3)(b)), which it kept above.
    let mut withdrawn = Vec::new();
    for (purpose, (basis, _, flagged)) in latest_grant_bases(office.records_by_key(&token)?) {
        if withdraws_purpose("erasure", flagged || marketing(&purpose), &basis)
            && office.consent_check_of(&subject, &purpose, None)?["granted"] == true
        {
            withdrawn.push(purpose);
        }
    }
    // Every record this request deleted, this attempt's and any earlier one's that a crash
    // stopped before the close (it reported only this attempt's: 2232 of 3000; found by an
    // exploratory session).
    let mut deleted = pass::erasure_deleted(office, &doc_id_hex(&id))?;
    for d in &out.deleted_ids {
        // Noted in the batch that deleted it, so always there: defensive only.
        if let Err(at) = deleted.binary_search(d) {
            deleted.insert(at, *d);
        }
    }
    let report = json!({
        "deleted": deleted.len(),
        "deleted_records": deleted.iter().map(doc_id_hex).collect::<Vec<_>>(),
        "kept": kept,
        "keys_destroyed": out.keys_destroyed,
        "withdrawn": withdrawn,
        // Kept by the hold alone: deleted when it ends (docs/retention.md).
        "postponed": postponed,
    });
    let withdrawals = withdrawn
        .iter()
        .map(|purpose| (subject.clone(), purpose.clone()))
        .collect();
    office
        .close_with_erasure_report(a, Some(report), withdrawals, None)
        .await
}

/// Carries out, on this office's own records, an erasure (or withdrawal, objection,
/// restriction: [`carried_out_elsewhere`]) request another office completed, for the records
/// the erasing office never saw: at an office whose records stay home (cn), all of them (they
/// never left: the subject was told the erasure was complete while cn kept their data); at any
/// other, those it made while cut off from the erasing office (they survived the erasure, and
/// the subject key it destroyed came back with them). Both found by exploratory sessions. The
/// erasing office's own tombstones usually arrive first (a sync reconciles tombstones before
/// envelopes, and the erasure deletes before it closes), so elsewhere this finds nothing. The same
/// rules as [`close`] keep what a legal duty or a hold keeps;
/// the deletions are this office's, signed for the request's policy (`request/<id>`), and any
/// consent one of its own kept records (made before the erasure) still grants is withdrawn.
/// Only what was there when the request was completed: a record made here since (its id's time)
/// is the person's new dealings, not the erased ones (a restart, which runs this again, deleted
/// them; partition suite, seed 604519434). Returns the records deleted. Run again, it finds
/// nothing more to do.
pub async fn carry_out(office: &Office, request_id: &record::DocId) -> Result<u64> {
    // Once per request (meta `request_carried_out/<id>`): what it finds depends on what had
    // arrived by then (a hold, another office's records), and a restart must not find it anew.
    let done_key = format!("{META_CARRIED_OUT}{}", doc_id_hex(request_id));
    if office.store().meta(&done_key)?.is_some() {
        return Ok(0);
    }
    let Some(Record::Request(request)) = office.read_record(request_id)? else {
        return Ok(0);
    };
    if !carried_out_elsewhere(&request.kind) || request.outcome.as_deref() != Some("completed") {
        return Ok(0);
    }
    let (deleted, postponed) = carry_out_once(office, request_id, request).await?;
    // `held`: an erasure a hold postponed here, carried out once it ends (`after_hold_cleared`).
    let done: &[u8] = if postponed { CARRIED_OUT_HELD } else { b"1" };
    office
        .store()
        .commit(consentd_storage::WriteBatch {
            meta: vec![(done_key, done.to_vec())],
            ..Default::default()
        })
        .await
        .map_err(OfficeError::from)?;
    Ok(deleted)
}

/// When `request`'s completion was recorded (its history's latest `completed` step: when the
/// office recorded it, else its time): the records there were then are the ones it erased or
/// withdrew, and a grant since is the person's new dealings. A completion entered late (`request
/// close --at` a past day) dated by its stated time alone left every record made between that
/// day and the close in force at the offices carrying it out (found by an exploratory session).
fn completed_at(request: &record::RequestRecord) -> Option<chrono::DateTime<chrono::Utc>> {
    let step = request
        .history
        .iter()
        .rev()
        .find(|h| h.status == "completed")?;
    let at = chrono::DateTime::parse_from_rfc3339(&step.at).ok()?;
    let recorded = step
        .recorded
        .as_deref()
        .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok());
    Some(
        recorded
            .map_or(at, |r| r.max(at))
            .with_timezone(&chrono::Utc),
    )
}

/// Whether `c` holds a grant ranked after `when` ([`record::ConsentEvent::rank`]): the person's
/// new dealings since a request completed, which carrying the request out leaves alone.
fn granted_since(c: &record::ConsentRecord, when: chrono::DateTime<chrono::Utc>) -> bool {
    c.events
        .iter()
        .any(|e| e.action == "grant" && e.rank().is_some_and(|t| t > when))
}

/// Whether record `id` was made by `when` (its id's first six bytes are its creation's Unix
/// milliseconds).
fn made_by(id: &record::DocId, when: chrono::DateTime<chrono::Utc>) -> bool {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id[..6]);
    i64::try_from(u64::from_be_bytes(ms)).is_ok_and(|ms| ms <= when.timestamp_millis())
}

/// At an office whose records stay home, for an erasure request it completed itself: deletes
/// the records of the subject that other offices made before the completion and that reached
/// it since, and withdraws what such a kept record still grants. Its request never leaves, so
/// no other office carries it out: a record another office made while cut off from this one
/// arrived after the erasure and stayed, everywhere, beside the completed request (found by an
/// exploratory session). The same rules as [`close`] keep what a legal duty, an open request
/// or a hold keeps; the tombstones, signed for the request's policy, and the withdrawals reach
/// the offices that made the records. Run for good, after arrivals: most runs find nothing.
/// Returns the records deleted.
pub async fn sweep_late_arrivals(office: &Office, request_id: &record::DocId) -> Result<u64> {
    let Some(Record::Request(request)) = office.read_record(request_id)? else {
        return Ok(0);
    };
    if request.kind != "erasure"
        || request.outcome.as_deref() != Some("completed")
        || request.office != office.id()
    {
        return Ok(0);
    }
    let Some(completed) = completed_at(&request) else {
        return Ok(0);
    };
    let subject = Subject::parse_stored(&request.subject)
        .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
    let token = pass::subject_token(office, &Record::Request(request))?
        .expect("a request names its subject");
    if pass::is_held(office, &token)? {
        return Ok(0);
    }
    let marketing = |p: &str| office.purposes.is_marketing(p);
    let policy = format!("request/{}", doc_id_hex(request_id));
    let mut todo = Vec::new();
    let mut kept_purposes = std::collections::BTreeSet::new();
    // A grant since the erasure is the person's new dealings: its purpose is left alone.
    let mut regranted = std::collections::BTreeSet::new();
    for (rid, r) in office.records_by_key(&token)? {
        if let Record::Consent(c) = &r {
            if granted_since(c, completed) {
                regranted.insert(c.purpose.clone());
            }
        }
        let elsewhere = match &r {
            Record::Consent(c) => c.office != office.id(),
            Record::Request(q) => q.office != office.id() && !q.is_open(),
            Record::Transfer(t) => t.office != office.id(),
            Record::Hold(_) => false,
        };
        // A grant on a legal obligation in force is neither deleted nor withdrawn, as `close`
        // keeps it (Art. 17(3)(b)).
        if !elsewhere || !made_by(&rid, completed) || schedule::legal_obligation_in_force(&r) {
            continue;
        }
        if schedule::legally_kept(&r, marketing).is_some() {
            if let Record::Consent(c) = &r {
                kept_purposes.insert(c.purpose.clone());
            }
            continue;
        }
        todo.push(Deletion {
            id: rid,
            record: r,
            reason: Reason::Erasure,
            policy: policy.clone(),
            still_expired_by: None,
        });
    }
    let deleted = if todo.is_empty() {
        0
    } else {
        pass::delete_exclusive(office, todo, token).await?.deleted
    };
    let mut withdrawals = Vec::new();
    for purpose in kept_purposes.difference(&regranted) {
        let purpose = purpose.clone();
        if office.consent_check_of(&subject, &purpose, None)?["granted"] == true {
            withdrawals.push((subject.clone(), purpose));
        }
    }
    if !withdrawals.is_empty() {
        office
            .withdraw_all(withdrawals, None, Some(doc_id_hex(request_id)))
            .await?;
    }
    Ok(deleted)
}

/// Meta key prefix marking a request carried out here ([`carry_out`]).
const META_CARRIED_OUT: &str = "request_carried_out/";

/// Whether a request of `kind` another office completed is carried out on this office's own
/// records ([`carry_out`]): an erasure, and the requests that withdraw (`withdraws`; an
/// objection completed at de left cn's own marketing grants in force: found by an exploratory
/// session).
pub fn carried_out_elsewhere(kind: &str) -> bool {
    kind == "erasure" || withdraws(kind)
}

/// [`carry_out`]'s work, for a completed request of a kind it carries out: an erasure's
/// deletions (none under a hold), then the withdrawals the kind makes, of this office's own
/// records made before the completion. Returns the records deleted, and whether a hold
/// postponed the deletions.
async fn carry_out_once(
    office: &Office,
    request_id: &record::DocId,
    request: record::RequestRecord,
) -> Result<(u64, bool)> {
    let Some(completed) = completed_at(&request) else {
        return Ok((0, false));
    };
    let made_before = |id: &record::DocId| made_by(id, completed);
    let marketing = |p: &str| office.purposes.is_marketing(p);
    let subject = Subject::parse_stored(&request.subject)
        .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
    let request_kind_is_erasure = request.kind == "erasure";
    let kind = request.kind.clone();
    // A restriction's withdrawals say so: the records are stored, not deleted for it (Art. 18).
    let restriction = (kind == "restriction").then(|| doc_id_hex(request_id));
    let token = pass::subject_token(office, &Record::Request(request))?
        .expect("a request names its subject");
    // Under a hold nothing is deleted (postponed: `after_hold_cleared` deletes once it ends),
    // but the consents are still withdrawn below, as `close` does: the erasure request stops
    // the processing even where a hold keeps the data (it returned here, and being done once,
    // never withdrew; found by an exploratory session).
    let erase = request_kind_is_erasure;
    let held = pass::is_held(office, &token)?;
    let policy = format!("request/{}", doc_id_hex(request_id));
    let mut todo = Vec::new();
    for (rid, r) in office
        .records_by_key(&token)?
        .into_iter()
        .filter(|_| erase && !held)
    {
        let own = match &r {
            Record::Consent(c) => c.office == office.id(),
            Record::Request(q) => q.office == office.id() && !q.is_open(),
            Record::Transfer(t) => t.office == office.id(),
            Record::Hold(_) => false,
        };
        if !own
            || rid == *request_id
            || !made_before(&rid)
            || schedule::legally_kept(&r, marketing).is_some()
            || schedule::legal_obligation_in_force(&r)
        {
            continue;
        }
        todo.push(Deletion {
            id: rid,
            record: r,
            reason: Reason::Erasure,
            policy: policy.clone(),
            still_expired_by: None,
        });
    }
    let deleted = if todo.is_empty() {
        0
    } else {
        pass::delete_exclusive(office, todo, token).await?.deleted
    };
    // A consent this office's own kept record (made before the erasure) still grants: withdrawn,
    // as the erasing office withdrew what its kept records granted. Only its own: whether another
    // office's record has reached this one yet is a matter of timing, and a restart (which runs
    // this again) withdrew one that had arrived since (partition suite, seed 1177221320).
    // A grant since the erasure is the person's new dealings: that purpose is left alone.
    // Per purpose: this office's own records of it, and the basis of their latest grant (an
    // objection or a restriction withdraws by basis).
    type Own = (Vec<record::DocId>, Option<(String, String)>);
    let mut own: std::collections::BTreeMap<String, Own> = Default::default();
    let mut regranted = std::collections::BTreeSet::new();
    // Purposes a record held here says are marketing (`ConsentRecord::marketing`): the granting
    // office's config counted them so, whether or not this office's does.
    let mut flagged = std::collections::BTreeSet::new();
    for (rid, r) in office.records_by_key(&token)? {
        if let Record::Consent(c) = r {
            if granted_since(&c, completed) {
                regranted.insert(c.purpose.clone());
            }
            if c.marketing {
                flagged.insert(c.purpose.clone());
            }
            if c.office == office.id() && made_before(&rid) {
                let entry = own.entry(c.purpose.clone()).or_default();
                entry.0.push(rid);
                for e in c.events.iter().filter(|e| e.action == "grant") {
                    if entry.1.as_ref().is_none_or(|(at, _)| e.at > *at) {
                        entry.1 = Some((e.at.clone(), e.basis.clone().unwrap_or_default()));
                    }
                }
            }
        }
    }
    own.retain(|purpose, (_, latest)| {
        let basis = latest.as_ref().map_or("", |(_, b)| b.as_str());
        let marketing = flagged.contains(purpose) || marketing(purpose);
        !regranted.contains(purpose) && withdraws_purpose(&kind, marketing, basis)
    });
    let restricted = latest_grant_bases(office.records_by_key(&token)?);
    let mut withdrawals = Vec::new();
    for (purpose, (records, _)) in own {
        let answer = office.consent_check_of(&subject, &purpose, None)?;
        let decided_here = answer["record"]
            .as_str()
            .and_then(|r| record::parse_doc_id(r).ok())
            .is_some_and(|r| records.contains(&r));
        // A restricted purpose is stopped, not ended: a request that ends it withdraws it for
        // good (`close_withdrawing`).
        let stopped = restriction.is_none() && restricted.get(&purpose).is_some_and(|(_, r, _)| *r);
        if (answer["granted"] == true || stopped) && decided_here {
            withdrawals.push((subject.clone(), purpose));
        }
    }
    if !withdrawals.is_empty() {
        office
            .withdraw_all(
                withdrawals,
                restriction,
                request_kind_is_erasure.then(|| doc_id_hex(request_id)),
            )
            .await?;
    }
    Ok((deleted, erase && held))
}

/// Whether completing a request of `kind` withdraws consents (besides an erasure's):
/// [`withdraws_purpose`] says which. Before, completing one changed nothing: `consent check`
/// still answered "granted" (found by an exploratory session).
fn withdraws(kind: &str) -> bool {
    matches!(kind, "withdrawal" | "objection" | "restriction")
}

/// Whether completing a request of `kind` withdraws a purpose still granted, by whether it is
/// marketing and the basis of its latest grant:
///
/// - `erasure` (Art. 17(1)(b)): every purpose except one granted on legal obligation, which the
///   erasure keeps (Art. 17(3)(b)).
/// - `withdrawal` (withdrawal of consent, Art. 7(3), §8.2): purposes granted on basis `consent`
///   only; processing on a contract, a legal obligation or legitimate interest is not consent
///   to withdraw (it withdrew them all, and the next pass deleted contract and legal-obligation
///   records; found by an exploratory session).
/// - `objection` (Art. 21): marketing whatever its basis (Art. 21(3): an objection to direct
///   marketing is absolute), and every purpose granted on legitimate interest (Art. 21(1)).
/// - `restriction` (Art. 18): purposes granted on legitimate interest; a restricted subject's
///   data may still be processed with their consent (Art. 18(2)).
fn withdraws_purpose(kind: &str, marketing: bool, basis: &str) -> bool {
    match kind {
        "erasure" => basis != "legal_obligation",
        "withdrawal" => basis == "consent",
        "objection" => marketing || basis == "legitimate_interest",
        "restriction" => basis == "legitimate_interest",
        _ => false,
    }
}

/// Per purpose among `records`' consent records: the basis of its latest grant, whether
/// its latest event (as `consent check` orders them) is a withdrawal carrying out a restriction
/// (the purpose is restricted: stopped and stored, GDPR Art. 18), and whether a record of it
/// says it is marketing (`ConsentRecord::marketing`: the granting office's config counted it
/// so; an objection elsewhere withdrew nothing of a purpose only that office's config named).
fn latest_grant_bases(
    records: Vec<(record::DocId, Record)>,
) -> std::collections::BTreeMap<String, (String, bool, bool)> {
    type Latest = Option<((chrono::DateTime<chrono::Utc>, bool), bool)>;
    // Per purpose: the latest grant's rank and basis (ranks, not the time texts, which compare
    // wrongly as text when one has sub-second digits and the other none).
    let mut grants: std::collections::BTreeMap<String, (chrono::DateTime<chrono::Utc>, String)> =
        Default::default();
    let mut latest: std::collections::BTreeMap<String, Latest> = Default::default();
    let mut flagged = std::collections::BTreeSet::new();
    for (_, r) in records {
        if let Record::Consent(c) = r {
            if c.marketing {
                flagged.insert(c.purpose.clone());
            }
            for e in &c.events {
                let withdraw = e.action == "withdraw";
                if let Some(order) = e.order() {
                    let entry = latest.entry(c.purpose.clone()).or_default();
                    if entry.is_none_or(|(k, _)| order >= k) {
                        *entry = Some((order, withdraw && e.restriction.is_some()));
                    }
                }
                let (false, Some(rank)) = (withdraw, e.rank()) else {
                    continue;
                };
                let basis = e.basis.clone().unwrap_or_default();
                let entry = grants
                    .entry(c.purpose.clone())
                    .or_insert_with(|| (rank, basis.clone()));
                if rank > entry.0 {
                    *entry = (rank, basis);
                }
            }
        }
    }
    grants
        .into_iter()
        .map(|(p, (_, basis))| {
            let restricted = latest.get(&p).copied().flatten().is_some_and(|(_, r)| r);
            let marketing = flagged.contains(&p);
            (p, (basis, restricted, marketing))
        })
        .collect()
}

/// `request close ID --outcome completed` of an open withdrawal, objection or restriction
/// request: withdraws what [`withdraws`] says, in the batch that closes it; the answer lists
/// the purposes withdrawn (`withdrawn`).
async fn close_withdrawing(
    office: &Office,
    a: protocol::RequestClose,
    request: record::RequestRecord,
) -> Result<Value> {
    let kind = request.kind.clone();
    // A restriction's withdrawals say so: the records are stored, not deleted for it (Art. 18).
    let restriction = match kind.as_str() {
        "restriction" => Some(doc_id_hex(
            &record::parse_doc_id(&a.id).map_err(OfficeError::Invalid)?,
        )),
        _ => None,
    };
    let subject = Subject::parse_stored(&request.subject)
        .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
    let token = pass::subject_token(office, &Record::Request(request))?
        .expect("a request names its subject");
    let mut withdrawn = Vec::new();
    for (purpose, (basis, restricted, flagged)) in
        latest_grant_bases(office.records_by_key(&token)?)
    {
        // A restricted purpose is stopped and stored, not ended: a later objection (or other
        // request that ends it) withdraws it for good, so retention then deletes it as usual.
        let stopped = restricted && restriction.is_none();
        let marketing = flagged || office.purposes.is_marketing(&purpose);
        if withdraws_purpose(&kind, marketing, &basis)
            && (stopped || office.consent_check_of(&subject, &purpose, None)?["granted"] == true)
        {
            withdrawn.push(purpose);
        }
    }
    let withdrawals = withdrawn
        .iter()
        .map(|purpose| (subject.clone(), purpose.clone()))
        .collect();
    let mut answer = office
        .close_with_erasure_report(a, None, withdrawals, restriction)
        .await?;
    answer["withdrawn"] = json!(withdrawn);
    Ok(answer)
}

/// Meta value of `request_carried_out/<id>` for an erasure a hold postponed here.
const CARRIED_OUT_HELD: &[u8] = b"held";
/// Meta key prefix marking a completed erasure carried out here after the hold that postponed
/// it ended ([`after_hold_cleared`]).
const META_RESUMED: &str = "erasure_resumed/";
/// Meta key prefix marking an ended hold whose postponed erasures were carried out here; the
/// value lists them (`[{"request", "deleted"}]`, ids and counts).
const META_HOLD_ENDED: &str = "hold_ended/";
/// Most postponed erasure requests one call of [`after_hold_cleared`] carries out; the hold is
/// marked done only once none is left, so the next call goes on.
pub const RESUMED_PER_HOLD_MAX: usize = 64;

/// What [`after_hold_cleared`] did for a hold.
#[derive(Debug, Default)]
pub struct Resumed {
    /// `{"request", "deleted"}` per erasure carried out for this hold (by this call, or by an
    /// earlier one, as noted).
    pub carried: Vec<Value>,
    /// Carried out by this call (not only noted earlier).
    pub now: bool,
    /// Nothing more to do for this hold.
    pub done: bool,
}

/// One at a time: the local `hold clear` and the replicator's pass may look at the same hold.
static RESUMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether this office postponed, under a legal hold, the erasure `request` (completed): at the
/// office that completed it, its report keeps records for the hold; elsewhere, this office
/// carried it out under a hold ([`carry_out`] notes `held`; one noted by an older build counts
/// when the report shows the erasing office held too).
fn postponed_here(
    office: &Office,
    request_id: &record::DocId,
    request: &record::RequestRecord,
) -> Result<bool> {
    let report_held = request
        .erasure
        .as_ref()
        .and_then(|e| e["kept"].as_array())
        .is_some_and(|kept| kept.iter().any(|k| k["rule"] == HOLD_RULE));
    if request.office == office.id() {
        return Ok(report_held);
    }
    let done_key = format!("{META_CARRIED_OUT}{}", doc_id_hex(request_id));
    Ok(match office.store().meta(&done_key)? {
        Some(v) if v == CARRIED_OUT_HELD => true,
        Some(_) => report_held,
        None => false, // not carried out yet: `carry_out` will, with the hold ended
    })
}

/// Once hold `hold_id` has ended ([`record::HoldRecord::ended`]: cleared here, or its clearing
/// arrived from another office), carries out every completed erasure of its subject that a
/// hold postponed here (GDPR Art. 17(3)(e) postpones an erasure while a legal claim needs the
/// data; it does not drop it). An erasure completed under a hold deleted nothing, answered
/// `completed`, and was never carried out once the hold was lifted (found by an exploratory
/// session). Deletes what the erasure's completion would have deleted without the hold: at the
/// office that completed it, every record of the subject made by then, elsewhere this office's
/// own (as [`carry_out`]), except what another legal duty keeps, a legal obligation in force,
/// an open request, and a consent record holding a grant since the completion (the person's new
/// dealings). While another hold covers the subject, nothing (its end carries them out).
/// Once per erasure and per hold (meta), at most [`RESUMED_PER_HOLD_MAX`] erasures a call.
pub async fn after_hold_cleared(office: &Office, hold_id: &record::DocId) -> Result<Resumed> {
    let _one = RESUMING.lock().await;
    let hold_key = format!("{META_HOLD_ENDED}{}", doc_id_hex(hold_id));
    if let Some(done) = office.store().meta(&hold_key)? {
        // Done already (by the replicator's pass, say, before `hold clear` answered): what it
        // carried out, as noted.
        let carried: Vec<Value> = serde_json::from_slice(&done).unwrap_or_default();
        return Ok(Resumed {
            carried,
            now: false,
            done: true,
        });
    }
    let mark = |key: String, value: Vec<u8>| async move {
        office
            .store()
            .commit(consentd_storage::WriteBatch {
                meta: vec![(key, value)],
                ..Default::default()
            })
            .await
            .map_err(OfficeError::from)
    };
    let hold = match office.read_record(hold_id)? {
        Some(Record::Hold(h)) => h,
        // Deleted, or not a hold: nothing to end.
        _ => {
            return Ok(Resumed {
                done: true,
                ..Default::default()
            })
        }
    };
    if !hold.ended() {
        // Active, or a copy cleared away from its own office (written again while the
        // original stands): nothing ends here.
        if hold.cleared_at.is_some() {
            mark(hold_key, b"[]".to_vec()).await?;
        }
        return Ok(Resumed {
            done: true,
            ..Default::default()
        });
    }
    let token =
        pass::subject_token(office, &Record::Hold(hold))?.expect("a hold names its subject");
    let records = office.records_by_key(&token)?;
    if a_hold_stands(&records) {
        // Another hold still covers the subject: its end carries the erasures out.
        mark(hold_key, b"[]".to_vec()).await?;
        return Ok(Resumed {
            done: true,
            ..Default::default()
        });
    }
    let mut due = Vec::new();
    for (rid, r) in &records {
        let Record::Request(q) = r else { continue };
        if q.kind != "erasure" || q.outcome.as_deref() != Some("completed") {
            continue;
        }
        let resumed = format!("{META_RESUMED}{}", doc_id_hex(rid));
        if office.store().meta(&resumed)?.is_some() || !postponed_here(office, rid, q)? {
            continue;
        }
        due.push((*rid, q.clone(), resumed));
    }
    let more = due.len() > RESUMED_PER_HOLD_MAX;
    let mut out = Vec::new();
    for (request_id, request, resumed) in due.into_iter().take(RESUMED_PER_HOLD_MAX) {
        let deleted = resume(office, &request_id, &request, &records, token).await?;
        mark(resumed, b"1".to_vec()).await?;
        out.push(json!({"request": doc_id_hex(&request_id), "deleted": deleted}));
    }
    if !more {
        // Ids and counts only: nothing personal.
        mark(hold_key, serde_json::to_vec(&out).expect("json")).await?;
    }
    Ok(Resumed {
        carried: out,
        now: true,
        done: !more,
    })
}

/// Whether a hold among `records` (a subject's) still stands: one active, or a resident
/// office's hold whose copies here were cleared only elsewhere than at that office (each is
/// written again while the original stands; `office/resident.rs`). A hold and its copies share
/// their office and setting time; they have ended once all are cleared and one has ended
/// ([`record::HoldRecord::ended`]). A copy cleared at de while cn's hold stood left de without
/// an active hold until cn's copy came again, and de's postponed erasure would have deleted
/// meanwhile what cn's hold keeps.
fn a_hold_stands(records: &[(record::DocId, Record)]) -> bool {
    // (office, set at) → (all cleared, one ended)
    let mut holds: std::collections::BTreeMap<(&str, &str), (bool, bool)> = Default::default();
    for (_, r) in records {
        if let Record::Hold(h) = r {
            let e = holds
                .entry((h.office.as_str(), h.set_at.as_str()))
                .or_insert((true, false));
            e.0 &= h.cleared_at.is_some();
            e.1 |= h.ended();
        }
    }
    holds.values().any(|&(cleared, ended)| !(cleared && ended))
}

/// [`after_hold_cleared`]'s deletions for one postponed erasure, among `records` (the
/// subject's). Returns the records deleted.
async fn resume(
    office: &Office,
    request_id: &record::DocId,
    request: &record::RequestRecord,
    records: &[(record::DocId, Record)],
    token: [u8; 32],
) -> Result<u64> {
    let Some(completed) = completed_at(request) else {
        return Ok(0);
    };
    let marketing = |p: &str| office.purposes.is_marketing(p);
    let erasing_office = request.office == office.id();
    let policy = format!("request/{}", doc_id_hex(request_id));
    let mut todo = Vec::new();
    for (rid, r) in records {
        let own = match r {
            Record::Consent(c) => c.office == office.id(),
            Record::Request(q) => q.office == office.id(),
            Record::Transfer(t) => t.office == office.id(),
            Record::Hold(_) => false,
        };
        if rid == request_id
            || !(erasing_office || own)
            || !made_by(rid, completed)
            || matches!(r, Record::Request(q) if q.is_open())
            || matches!(r, Record::Consent(c) if granted_since(c, completed))
            || schedule::legally_kept(r, marketing).is_some()
            || schedule::legal_obligation_in_force(r)
        {
            continue;
        }
        todo.push(Deletion {
            id: *rid,
            record: r.clone(),
            reason: Reason::Erasure,
            policy: policy.clone(),
            still_expired_by: None,
        });
    }
    if todo.is_empty() {
        return Ok(0);
    }
    Ok(pass::delete_exclusive(office, todo, token).await?.deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::HoldRecord;

    fn hold(office: &str, origin: Option<&str>, cleared_by: Option<&str>) -> Record {
        Record::Hold(HoldRecord {
            subject: "a@example.com".into(),
            subject_kind: "email".into(),
            reason: "court order".into(),
            set_at: "2026-01-01T00:00:00Z".into(),
            cleared_at: cleared_by.map(|_| "2026-02-01T00:00:00Z".into()),
            office: office.into(),
            origin: origin.map(Into::into),
            cleared_by: cleared_by.map(Into::into),
        })
    }

    fn stands(holds: &[Record]) -> bool {
        let records: Vec<_> = holds.iter().map(|h| ([0u8; 16], h.clone())).collect();
        a_hold_stands(&records)
    }

    /// A hold stands while active; a resident office's copy cleared elsewhere (written again
    /// while the original stands) keeps standing until that office clears one; a hold cleared
    /// before the clearing office was recorded still ends if it is no copy.
    #[test]
    fn a_hold_ends_when_cleared_and_a_copy_only_when_its_own_office_clears_it() {
        assert!(!stands(&[]));
        assert!(stands(&[hold("de", None, None)]));
        assert!(!stands(&[hold("de", None, Some("uk"))]));
        let mut legacy = hold("de", None, Some("de"));
        if let Record::Hold(h) = &mut legacy {
            h.cleared_by = None;
        }
        assert!(!stands(&[legacy]));
        // cn's copy for de, cleared at de: cn's hold stands.
        assert!(stands(&[hold("cn", Some("de"), Some("de"))]));
        // Written again by cn and cleared by cn: ended.
        assert!(!stands(&[
            hold("cn", Some("de"), Some("de")),
            hold("cn", Some("de"), Some("cn")),
        ]));
        // Written again and still active: stands.
        assert!(stands(&[
            hold("cn", Some("de"), Some("de")),
            hold("cn", Some("de"), None),
        ]));
        // de's own hold cleared, cn's copy cleared at de only: cn's stands.
        assert!(stands(&[
            hold("de", None, Some("de")),
            hold("cn", Some("de"), Some("de")),
        ]));
    }
}
