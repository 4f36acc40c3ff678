//! What an office whose records stay home (cn) decides about a subject reaches the offices that
//! hold the subject's records: its withdrawals recorded apart, its holds, and its under-18
//! flags ([`Office::spread_minor_flags`]). (Requests other
//! offices completed are carried out on its own records: `retention::erasure::carry_out`.)
//!
//! At an office whose own records stay in its jurisdiction (`[transfer] resident`, China by
//! default), a withdrawal recorded before the grant arrived starts a record of its own
//! (`retention/withdrawals.rs`), and that record is the office's: it never leaves. The grant's
//! record, from another office, does leave, and every other office went on answering "granted"
//! for good, while the person had withdrawn (found by two exploratory sessions). A withdrawal
//! recorded at such an office onto a record that travels does reach them (the event is an
//! instruction on that record, as any office's change to it is), so once a record of the
//! consent arrives from an office whose records travel, the resident office records the same
//! withdrawal, at its original time, onto that record: [`Office::fold_resident_withdrawals`].
//!
//! A hold such an office sets is its own record too, and stayed home: another office's erasure or
//! retention pass deleted the held subject's records everywhere, the office's own copies among
//! them, while its hold was active (found by two exploratory sessions). So for each office whose
//! records of the subject it holds travel, it writes a copy of its hold marked with that
//! office as `origin` ([`crate::record::HoldRecord::origin`]): replication treats the copy as
//! that office's data, so it reaches every office that may hold them, and their passes see it
//! (`hold clear` here clears the copies too; a copy cleared elsewhere is written again while
//! the hold here stands): [`Office::spread_resident_holds`].
//!
//! Which records to look at is the replicator's to say: it knows the transfer policy and sees
//! both this office's writes and what arrives (`replicate.rs`).

use super::{Office, Result};
use crate::record::{DocId, Record, KIND_CONSENT, KIND_HOLD};
use crate::subject::Subject;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;

/// A consent record's latest event as `consent check` orders them: by time, a withdrawal after a
/// grant at the same instant (`true` sorts after `false`).
type Latest = Option<(DateTime<Utc>, bool)>;

/// Most withdrawals folded in one write.
pub const FOLD_BATCH_MAX: usize = 256;

/// What a fold pass did with the records it was given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Withdrawals recorded onto a record that travels.
    pub folded: usize,
    /// Records needing nothing more (superseded by a later event, or no longer this office's
    /// withdrawal-only record): the caller stops watching them.
    pub done: Vec<DocId>,
}

/// Whether `bytes`, a consent projection, holds withdrawals only (at least one).
pub fn withdrawals_only(bytes: &[u8]) -> bool {
    let (mut withdrawals, mut grants) = (0, 0);
    let read = crate::projection::consent_events(bytes, |e| match e.withdraw {
        true => withdrawals += 1,
        false => grants += 1,
    });
    read.is_ok() && withdrawals > 0 && grants == 0
}

/// A subject as a record stores it ([`Subject::parse_stored`]).
fn stored_subject(stored: &str) -> Result<Subject> {
    Subject::parse_stored(stored)
        .map_err(|e| super::OfficeError::Integrity(format!("stored subject does not parse: {e}")))
}

impl Office {
    /// Writes a pass's operations in one durable batch, counted in `out`.
    async fn write_folds(&self, ops: Vec<super::Op>, mut out: Folded) -> Result<Folded> {
        if !ops.is_empty() {
            out.folded = ops.len();
            self.write(ops, None).await?;
        }
        Ok(out)
    }

    /// For each of `records` (this office's records holding only withdrawals): when another
    /// record of the same consent, written by an office whose records do not stay home
    /// ([`Office::records_stay`]), still answers with a grant older than the withdrawal, records
    /// the withdrawal onto it at its original time.
    pub async fn fold_resident_withdrawals(&self, records: &[DocId]) -> Result<Folded> {
        let mut out = Folded::default();
        let mut ops = Vec::new();
        for id in records {
            if ops.len() >= FOLD_BATCH_MAX {
                break;
            }
            let Some(Record::Consent(c)) = self.read_record(id)? else {
                out.done.push(*id);
                continue;
            };
            // The latest withdrawal by rank, and the restriction request it carries out if one:
            // folded onto the travelling record it stays a restriction, which retention does not
            // delete for (GDPR Art. 18: restricted data is stored). The copy keeps its time and
            // rank (`follows`).
            let latest_withdrawal = c
                .events
                .iter()
                .filter(|e| e.action == "withdraw")
                .filter_map(|e| Some((e.rank()?, e)))
                .max_by_key(|(rank, _)| *rank);
            let copied = latest_withdrawal
                .map(|(_, e)| (e.at.clone(), e.restriction.clone(), e.follows.clone()));
            let withdrawn: Option<DateTime<Utc>> = latest_withdrawal.map(|(rank, _)| rank);
            let (Some(t_w), true, true) = (
                withdrawn,
                c.office == self.id,
                c.events.iter().all(|e| e.action == "withdraw"),
            ) else {
                out.done.push(*id);
                continue;
            };
            let subject = stored_subject(&c.subject)?;
            let token = self.hasher.consent_token(&subject, &c.purpose);
            // Every other record of the consent: its office and latest event (by rank, a
            // withdrawal after a grant of the same rank, as `consent check` orders them).
            let mut travelling: Vec<(DocId, Latest)> = Vec::new();
            let mut latest_elsewhere: Latest = None;
            for (other, kind, bytes) in self.store.projections_by_key(&token)? {
                if other == *id || kind != KIND_CONSENT {
                    continue;
                }
                let mut latest = None;
                crate::projection::consent_events(&bytes, |e| {
                    latest = latest.max(Some(e.order()));
                })
                .map_err(super::OfficeError::Integrity)?;
                latest_elsewhere = latest_elsewhere.max(latest);
                let office = crate::projection::facts(&bytes)
                    .map_err(super::OfficeError::Integrity)?
                    .office;
                if !self.records_stay(&office) {
                    travelling.push((other, latest));
                }
            }
            if latest_elsewhere.is_some_and(|l| l > (t_w, true)) {
                out.done.push(*id); // a later event decides everywhere it reaches
                continue;
            }
            // The records that travel and still answer with a grant the withdrawal followed.
            let Some(&(onto, _)) = travelling
                .iter()
                .filter(|(_, l)| l.is_some_and(|(_, withdraw)| !withdraw))
                .min_by_key(|(d, _)| *d)
            else {
                // Nothing that travels grants the consent (yet, or any more): watched on, for a
                // record of it from another office arriving later.
                continue;
            };
            let (at, restriction, follows) = copied.expect("a latest withdrawal was found");
            let mut op = self.withdraw_op(subject, c.purpose.clone(), Some(&at), restriction)?;
            if let super::Op::Consent {
                onto: target,
                event,
                ..
            } = &mut op
            {
                *target = Some(onto);
                event.follows = follows;
            }
            ops.push(op);
        }
        // Folded, still watched: a record of the consent from yet another office may arrive.
        self.write_folds(ops, out).await
    }

    /// For each of `records` (this office's own active holds): writes a copy of the hold for
    /// every office that does not keep its records home whose records of the subject are
    /// held here, unless an active copy for it exists (one cleared elsewhere is written again:
    /// only clearing the hold here ends it). A cleared hold is `done`; an active one is watched
    /// on, for records of other offices arriving later and copies cleared elsewhere.
    pub async fn spread_resident_holds(&self, records: &[DocId]) -> Result<Folded> {
        let mut out = Folded::default();
        let mut ops = Vec::new();
        for id in records {
            if ops.len() >= FOLD_BATCH_MAX {
                break;
            }
            let Some(Record::Hold(h)) = self.read_record(id)? else {
                out.done.push(*id);
                continue;
            };
            if h.office != self.id || h.origin.is_some() || h.cleared_at.is_some() {
                out.done.push(*id);
                continue;
            }
            let subject = stored_subject(&h.subject)?;
            let token = self.hasher.subject_token(&subject);
            let (mut origins, mut copied) = (BTreeSet::new(), BTreeSet::new());
            for (other, kind, bytes) in self.store.projections_by_key(&token)? {
                if other == *id {
                    continue;
                }
                let facts =
                    crate::projection::facts(&bytes).map_err(super::OfficeError::Integrity)?;
                if kind == KIND_HOLD {
                    // This hold's copies: same office and setting time, an origin.
                    let copy =
                        Record::from_projection(&bytes).map_err(super::OfficeError::Integrity)?;
                    // Only an active copy counts: one cleared elsewhere (`hold clear` there
                    // clears every hold it holds) left the records there unprotected while this
                    // office's hold stood (found by an exploratory session); it is written again.
                    if let Record::Hold(c) = copy {
                        if let (true, true, None, Some(o)) = (
                            c.office == self.id,
                            c.set_at == h.set_at,
                            &c.cleared_at,
                            c.origin,
                        ) {
                            copied.insert(o);
                        }
                    }
                    continue; // a hold is not the data it keeps
                }
                let origin = facts.origin.unwrap_or(facts.office);
                if !self.records_stay(&origin) {
                    origins.insert(origin);
                }
            }
            for origin in origins.difference(&copied) {
                ops.push(super::Op::HoldSet(crate::record::HoldRecord {
                    origin: Some(origin.clone()),
                    ..h.clone()
                }));
            }
        }
        self.write_folds(ops, out).await
    }

    /// For each of `records` (this office's own consent records flagging the person under 18,
    /// which stay home): carries the flag onto a consent record of the person from an office
    /// that does not keep its records home (`minor_elsewhere`), so the offices holding
    /// it index the person's minor token and `consent check` refuses marketing without a
    /// parent's consent there too. The flag never left cn, and de and us answered "granted" to
    /// marketing a person only cn knew was under 18 (found by an exploratory session). One such
    /// record is enough (the token is the person's): `done` once one carries it.
    pub async fn spread_minor_flags(&self, records: &[DocId]) -> Result<Folded> {
        let mut out = Folded::default();
        let mut ops = Vec::new();
        for id in records {
            if ops.len() >= FOLD_BATCH_MAX {
                break;
            }
            let Some(Record::Consent(c)) = self.read_record(id)? else {
                out.done.push(*id);
                continue;
            };
            if c.office != self.id || !c.minor {
                out.done.push(*id);
                continue;
            }
            let subject = stored_subject(&c.subject)?;
            let token = self.hasher.subject_token(&subject);
            let mut carried = false;
            let mut onto: Option<DocId> = None;
            for (other, kind, bytes) in self.store.projections_by_key(&token)? {
                if other == *id || kind != KIND_CONSENT {
                    continue;
                }
                let Record::Consent(o) =
                    Record::from_projection(&bytes).map_err(super::OfficeError::Integrity)?
                else {
                    continue;
                };
                if self.records_stay(&o.office) {
                    continue;
                }
                if o.minor || o.minor_elsewhere {
                    carried = true;
                } else {
                    onto = Some(onto.map_or(other, |o| o.min(other)));
                }
            }
            match (carried, onto) {
                (true, _) => out.done.push(*id),
                (false, Some(onto)) => {
                    ops.push(super::Op::MarkMinorElsewhere { id: onto });
                    out.done.push(*id);
                }
                // Nothing of the person that travels yet: watched on.
                (false, None) => {}
            }
        }
        self.write_folds(ops, out).await
    }
}
