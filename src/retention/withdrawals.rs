//! A consent is every record of one (subject, purpose) at an office, not one record: a withdrawal
//! recorded at an office the grant had not reached yet starts a record of its own (two offices
//! cannot share a record they create apart), and `consent check` answers from the latest event
//! across them. So a record whose withdrawal is that latest event decides for grants other
//! records hold, and deleting it alone turns the answer back to "granted", at every office its
//! tombstone reaches.
//!
//! Two rules keep a deletion from doing that:
//! - A pass that deletes such a withdrawal deletes with it the grants it decides for, once each is
//!   due as withdrawn at the withdrawal's time ([`plan`]); while one is not due, the withdrawal
//!   stays (the next pass looks again).
//! - Every deletion checks, holding the consent's lock, that what it deletes leaves the answer
//!   "not granted" where it was ([`turns_granted`]), and skips what would not.
//!
//! And a record holding only withdrawals is proof of a withdrawal (`schedule::classify`:
//! `consent-proof`, five years), never a basis that ended at once.

use super::pass::Deletion;
use crate::office::{Office, OfficeError};
use crate::record::{epoch_day, fmt_time, ConsentEvent, DocId, Record, KIND_CONSENT};
use crate::subject::Subject;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

type Result<T, E = OfficeError> = std::result::Result<T, E>;

/// An event as `consent check` orders them: by rank, a withdrawal after a grant of the same rank
/// (`true` sorts after `false`; [`crate::record::ConsentEvent::order`]), then its own time. The
/// maximum decides.
type Decisive = ((DateTime<Utc>, bool), DateTime<Utc>);

/// The latest event of every consent record under `token`, without opening sealed fields.
fn group(office: &Office, token: &[u8; 32]) -> Result<Vec<(DocId, Option<Decisive>)>> {
    let mut out = Vec::new();
    for (id, kind, bytes) in office.store().projections_by_key(token)? {
        if kind != KIND_CONSENT {
            continue;
        }
        let mut latest: Option<Decisive> = None;
        crate::projection::consent_events(&bytes, |e| {
            latest = latest.max(Some((e.order(), e.at)));
        })
        .map_err(OfficeError::Integrity)?;
        out.push((id, latest));
    }
    Ok(out)
}

/// The consent token of a consent record: the lock its writes take and the key of its group.
pub(crate) fn token(office: &Office, record: &Record) -> Result<Option<[u8; 32]>> {
    match record {
        Record::Consent(c) => {
            let subject = Subject::parse_stored(&c.subject)
                .map_err(|e| OfficeError::Integrity(format!("stored subject: {e}")))?;
            Ok(Some(office.hasher.consent_token(&subject, &c.purpose)))
        }
        _ => Ok(None),
    }
}

/// Whether the record's own latest event is a withdrawal: only such a record can decide
/// "not granted" for its group.
fn ends_withdrawn(record: &Record) -> bool {
    let Record::Consent(c) = record else {
        return false;
    };
    c.events
        .iter()
        .filter_map(|e| e.order())
        .max()
        .is_some_and(|(_, withdraw)| withdraw)
}

/// Whether deleting `going` turns the answer for `token`'s (subject, purpose) from "not
/// granted" to "granted". The caller holds the token's lock, or plans (and checks again under
/// it).
pub(crate) fn turns_granted(
    office: &Office,
    token: &[u8; 32],
    going: &HashSet<DocId>,
) -> Result<bool> {
    let members = group(office, token)?;
    let all = members.iter().filter_map(|m| m.1).max();
    let rest = members
        .iter()
        .filter(|m| !going.contains(&m.0))
        .filter_map(|m| m.1)
        .max();
    Ok(all.is_some_and(|((_, withdraw), _)| withdraw)
        && rest.is_some_and(|((_, withdraw), _)| !withdraw))
}

/// The deletion tokens of `todo` under which a deletion would turn an answer "granted" (the
/// consent tokens of its withdrawals that decide for grants not deleted with them).
pub(crate) fn tokens_turning_granted(
    office: &Office,
    todo: &[Deletion],
) -> Result<BTreeSet<[u8; 32]>> {
    let going: HashSet<DocId> = todo.iter().map(|d| d.id).collect();
    let mut checked = BTreeSet::new();
    let mut turning = BTreeSet::new();
    for d in todo.iter().filter(|d| ends_withdrawn(&d.record)) {
        let Some(t) = token(office, &d.record)? else {
            continue;
        };
        if checked.insert(t) && turns_granted(office, &t, &going)? {
            turning.insert(t);
        }
    }
    Ok(turning)
}

/// For a pass at `today` (an epoch day): adds to `todo`, after each withdrawal that decides for
/// grants held in other records, those grants, when each is due as withdrawn at the
/// withdrawal's time (`retention/<its rule>`); where one is not, takes the withdrawal's group out
/// of `todo` instead. Returns how many records were taken out.
pub(crate) fn plan(office: &Office, todo: &mut Vec<Deletion>, today: i32) -> Result<u64> {
    let marketing = |p: &str| office.purposes.is_marketing(p);
    let turning = tokens_turning_granted(office, todo)?;
    if turning.is_empty() {
        return Ok(0);
    }
    let mut going: HashSet<DocId> = todo.iter().map(|d| d.id).collect();
    // Each deletion's consent token, once (a pass may hold hundreds of thousands).
    let tokens: Vec<Option<[u8; 32]>> = todo
        .iter()
        .map(|d| token(office, &d.record))
        .collect::<Result<_>>()?;
    let mut first_of: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if let Some(t) = t {
            first_of.entry(*t).or_insert(i);
        }
    }
    let mut with: BTreeMap<usize, Vec<Deletion>> = BTreeMap::new(); // after todo[i], the grants
    let mut kept_tokens = BTreeSet::new();
    for t in &turning {
        // The withdrawal that decides: the group's latest event.
        let members = group(office, t)?;
        let Some(((withdrawn_rank, true), withdrawn_at)) = members.iter().filter_map(|m| m.1).max()
        else {
            continue;
        };
        let at = *first_of.get(t).expect("a turning token is a deletion's");
        let mut grants = Vec::new();
        let mut due = true;
        let records = office.records_by_key(t)?;
        // A deciding withdrawal that carries out a restriction restricts the grants too: as if
        // withdrawn by it, they keep their schedule (GDPR Art. 18: stored, not erased). Each
        // grant is read as withdrawn by it: same time, same rank.
        let decider = records
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Consent(c) => Some(&c.events),
                _ => None,
            })
            .flatten()
            .find(|e| e.action == "withdraw" && e.rank() == Some(withdrawn_rank));
        let restriction = decider.and_then(|e| e.restriction.clone());
        let follows = decider.and_then(|e| e.follows.clone());
        for (id, record) in records {
            let Record::Consent(c) = &record else {
                continue;
            };
            if going.contains(&id) || ends_withdrawn(&record) {
                continue;
            }
            let mut withdrawn = c.clone();
            withdrawn.events.push(ConsentEvent {
                action: "withdraw".into(),
                at: fmt_time(withdrawn_at),
                basis: None,
                service: None,
                evidence: None,
                notice: None,
                office: office.id().to_string(),
                restriction: restriction.clone(),
                by_erasure: None,
                follows: follows.clone(),
            });
            match office
                .retention
                .schedule
                .expiry(&Record::Consent(withdrawn), marketing)
            {
                Some((day, rule)) if epoch_day(day) <= today => grants.push(Deletion {
                    id,
                    record,
                    reason: super::pass::reason_for(rule),
                    policy: format!("retention/{}", rule.id),
                    still_expired_by: None,
                }),
                _ => due = false,
            }
        }
        if due {
            going.extend(grants.iter().map(|g| g.id));
            with.entry(at).or_default().extend(grants);
        } else {
            kept_tokens.insert(*t);
        }
    }
    // Each grant right after its withdrawal, so the two usually share a deletion chunk (the
    // check under the lock keeps the withdrawal back when they do not).
    let mut planned = Vec::with_capacity(todo.len() + with.values().map(Vec::len).sum::<usize>());
    let mut kept = 0;
    for (i, (d, t)) in std::mem::take(todo).into_iter().zip(tokens).enumerate() {
        if t.is_some_and(|t| kept_tokens.contains(&t)) {
            kept += 1;
            continue;
        }
        planned.push(d);
        planned.extend(with.remove(&i).unwrap_or_default());
    }
    *todo = planned;
    if kept > 0 {
        tracing::info!(
            records = kept,
            "kept withdrawals that still decide for grants other records hold, not due yet"
        );
    }
    Ok(kept)
}
