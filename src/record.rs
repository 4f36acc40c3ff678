//! The three record kinds and their Automerge encoding.
//!
//! One Automerge document per record (DESIGN.md 1). A document's root map holds the record's fields
//! as plain scalars, lists and maps, so that [`Record::from_doc`] can read any merge of concurrent
//! changes back into the typed form through `AutoSerde`. The typed form, encoded by `projection.rs`, is
//! also the *projection* stored beside the envelopes: queries read projections and never load
//! documents.
//!
//! Fields hold the normalised subject identifier in plain text for now; the erasure issue encrypts
//! personal fields under per-subject keys (see ARCHITECTURE.md, "Where personal data lives").

use automerge::{transaction::Transactable, Automerge, ObjId, ObjType, ReadDoc, ROOT};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Storage kind tags (`consentd_storage::RecordUpdate::kind`). Never renumber: they are on disk.
pub const KIND_CONSENT: u8 = 1;
pub const KIND_REQUEST: u8 = 2;
pub const KIND_TRANSFER: u8 = 3;
pub const KIND_HOLD: u8 = 4;

/// A record's id: 128 random bits, shown as 32 lowercase hex characters.
pub type DocId = [u8; 16];

pub fn doc_id_hex(id: &DocId) -> String {
    hex::encode(id)
}

pub fn parse_doc_id(text: &str) -> Result<DocId, String> {
    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 16);
    match bytes {
        Some(b) => Ok(b.try_into().expect("length checked")),
        None => Err(format!(
            "invalid record id {}: expected 32 hexadecimal characters as printed by consentctl",
            crate::vocab::shown(text)
        )),
    }
}

/// Formats a time as RFC 3339 UTC with a `Z`, with sub-second digits only when present.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Days since 1970-01-01, the due index's key.
pub fn epoch_day(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    i32::try_from(d.signed_duration_since(epoch).num_days()).expect("date within i32 days")
}

/// The root field in which a document names its own record id (hex), set by its first change.
pub const DOC_ID_FIELD: &str = "id";

/// The record id a document names, if any.
pub fn doc_names(doc: &Automerge) -> Option<String> {
    match doc.get(ROOT, DOC_ID_FIELD).ok()?? {
        (automerge::Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Consent(ConsentRecord),
    Request(RequestRecord),
    Transfer(TransferRecord),
    Hold(HoldRecord),
}

/// A legal hold (e.g. litigation, an authority's order): while active, none of the subject's
/// records is deleted by retention or erasure. Signed like every record, so it replicates and an
/// auditor can see why records outlived their schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HoldRecord {
    pub subject: String,
    pub subject_kind: String,
    pub reason: String,
    pub set_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
    pub office: String,
    /// On a copy an office whose records stay home (cn) makes of its own hold, so that the hold
    /// reaches the offices holding office `origin`'s records of the subject: replication treats
    /// the copy as that office's data (`office/resident.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The office that cleared the hold (absent on holds cleared before it was recorded). A
    /// copy ([`HoldRecord::origin`]) cleared at another office than its own is written again
    /// while the original stands, so only its own office's clear ends it
    /// ([`HoldRecord::ended`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<String>,
}

impl HoldRecord {
    /// Whether this cleared hold has ended, so the erasures it postponed are carried out
    /// (`retention::erasure::after_hold_cleared`): cleared, and if a copy, by its own office
    /// (one cleared elsewhere is written again while the original stands).
    pub fn ended(&self) -> bool {
        self.cleared_at.is_some()
            && (self.origin.is_none() || self.cleared_by.as_deref() == Some(self.office.as_str()))
    }
}

/// Consent for one subject and one purpose, with every grant and withdrawal ever recorded for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConsentRecord {
    pub subject: String,
    pub subject_kind: String,
    pub person: String,
    pub purpose: String,
    pub role: String,
    pub office: String,
    /// The person is under 18 (§10).
    #[serde(default)]
    pub minor: bool,
    /// Another office recorded the person as under 18 in a record of its own that stays home
    /// (cn): the person's flag for `consent check` and later grants, carried on this record so
    /// it reaches the offices holding it (`office/resident.rs`). Not this record's own flag: it
    /// does not make it child data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub minor_elsewhere: bool,
    /// The office that recorded a grant on this record counted its purpose as marketing (the
    /// built-in list or its `[consent] marketing_purposes`): set at grant time, never cleared.
    /// Every office treats a purpose as marketing if its own config says so or a record of it
    /// held there says so (`Office::marketing_held`), so a purpose one office added in its
    /// config is marketing wherever its records go (objection, retention, under-18 rules).
    /// Records from builds before it lack it: their office's config alone decides, as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub marketing: bool,
    /// Evidence that a parent or guardian consented, for a minor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parental_consent: Option<String>,
    pub events: Vec<ConsentEvent>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConsentEvent {
    /// `grant` or `withdraw`.
    pub action: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How consent was collected (e.g. "web form v3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The version of the privacy notice the person was shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    pub office: String,
    /// On a withdrawal: the id of the completed restriction request (GDPR Art. 18) it carries
    /// out. Processing stops (`consent check` answers "not granted"), but restricted data is
    /// stored, not erased, so retention reads the record as it would stand without it
    /// (`retention::schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<String>,
    /// A withdrawal an erasure request's completion made (the request's id, hex), not the
    /// person's: it ends the processing but is no proof to keep (`retention::schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_erasure: Option<String>,
    /// The rank of the latest event of this consent the writing office held when it wrote this
    /// one at its own "now", set only when that rank was not before this event's `at`: this
    /// event was written knowing of that one, so it ranks just after it ([`rank_after`]).
    /// Without it a withdrawal written after a grant arrived from an office whose clock ran
    /// ahead (within the sync's 60 s skew, or further through a relay) was dated before the
    /// grant and lost to it: `consent check` answered "granted" after the person withdrew. An
    /// event with a stated time (`--at`, an import's history) is ranked by that time alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
}

/// The rank of an event at `at` written knowing of an event ranked `follows`: just after it (by
/// one nanosecond, the finest a stored time holds) when that is not before `at`, else `at`.
/// Ranks order a consent's events (a withdrawal after a grant of the same rank); `at` stays the
/// event's own time, which retention and the audit report date from.
pub fn rank_after(at: DateTime<Utc>, follows: Option<DateTime<Utc>>) -> DateTime<Utc> {
    match follows {
        Some(f) if f >= at => f + chrono::Duration::nanoseconds(1),
        _ => at,
    }
}

impl ConsentEvent {
    /// The event's rank among its consent's events ([`rank_after`]); None if a time does not
    /// parse (such an event is skipped, as before ranks).
    pub fn rank(&self) -> Option<DateTime<Utc>> {
        let parse = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        };
        let follows = match &self.follows {
            Some(f) => Some(parse(f)?),
            None => None,
        };
        Some(rank_after(parse(&self.at)?, follows))
    }

    /// The key `consent check` orders events by: the rank, then a withdrawal after a grant of
    /// the same rank (`true` sorts after `false`). The maximum decides.
    pub fn order(&self) -> Option<(DateTime<Utc>, bool)> {
        Some((self.rank()?, self.action == "withdraw"))
    }
}

/// A data-subject request (§8) and its legal clock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub subject: String,
    pub subject_kind: String,
    pub kind: String,
    pub jurisdiction: String,
    pub received: String,
    /// When the legal clock started, if not at receipt (UK: when requested identity arrived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_start: Option<String>,
    pub due: String,
    pub due_rule: String,
    pub due_explanation: String,
    /// Confirm receipt by this day (CCPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_by: Option<String>,
    /// `received` while open; `completed` or `refused` once closed.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub history: Vec<StatusEvent>,
    pub office: String,
    /// For a completed erasure request: what was deleted and what a legal duty kept, and why
    /// (record ids, kinds and rule ids only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Extension {
    pub reason: String,
    pub at: String,
    pub previous_due: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusEvent {
    pub status: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub office: String,
    /// When the office recorded the step, for a step whose time was stated (`request close
    /// --at`, entered late): `at` is when it happened, this when the office acted on it. An
    /// erasure carried out elsewhere takes the records that existed when the completion was
    /// recorded (`retention::erasure`); by `at` alone, every record made between the stated
    /// time and the recording escaped it (found by an exploratory session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
}

/// A cross-border transfer of personal data (§5).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TransferRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_kind: Option<String>,
    pub categories: Vec<String>,
    pub from: String,
    pub to: String,
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_kind: Option<String>,
    pub mechanism: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tia: Option<String>,
    pub at: String,
    pub office: String,
    /// For a transfer made by replication: the records (ids) whose personal data moved, or
    /// would have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
    /// For replication: the office the records went to (or were kept from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_office: Option<String>,
    /// For replication: `transferred`, or `refused` when policy forbade the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why a transfer was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What replication needs to know of a record: its author office, whether it holds personal data,
/// the key sealing that data and, for transfer events, its data categories. Read from a
/// projection without building the record ([`Record::from_projection`] allocates every field
/// and event; here the rest is skipped), when a record becomes durable and when a daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFacts {
    /// The office the record names as the one that wrote it.
    pub office: String,
    /// It names a subject.
    pub personal: bool,
    /// The subject key its sealed personal fields open with.
    pub key: Option<consentd_storage::KeyId>,
    /// A transfer record's data categories; `None` for the other kinds (contact data).
    pub categories: Option<Vec<String>>,
    /// A replication event's word on records it names: refused or transferred to an office.
    pub event: Option<TransferWord>,
    /// The office whose data the record is, when another than `office` (a hold's copy,
    /// [`HoldRecord::origin`]).
    pub origin: Option<String>,
    /// A consent record flagging its person under 18 (its own `minor`), read with the rest so a
    /// resident office's start-up finds its flags without decoding every record.
    pub minor: bool,
    /// A request completed of a kind every other office carries out on its own records
    /// (`retention::erasure::carried_out_elsewhere`): read with the rest, so arriving records
    /// and a start-up find them without decoding every request.
    pub completed_request: bool,
    /// Of those, an erasure request: an office that keeps its records home sweeps its own for
    /// good (`retention::erasure::sweep_late_arrivals`).
    pub completed_erasure: bool,
    /// A hold that has ended ([`HoldRecord::ended`]): the erasures of its subject it postponed
    /// are carried out (`retention::erasure::after_hold_cleared`).
    pub ended_hold: bool,
}

/// What a replication event (a transfer record with `status` and `to_office`) says its office
/// did with the records it names. Relays honour a refusal signed by a record's origin
/// (`replicate.rs`). No personal data: record ids and office ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferWord {
    pub refused: bool,
    pub to_office: String,
    pub records: Vec<DocId>,
}

impl TransferWord {
    /// The word of a transfer record with `status` `refused` or `transferred` naming
    /// `to_office`; `None` for operator-recorded transfers.
    pub fn of(status: Option<&str>, to_office: Option<&str>, records: &[String]) -> Option<Self> {
        let refused = match status? {
            "refused" => true,
            "transferred" => false,
            _ => return None,
        };
        Some(TransferWord {
            refused,
            to_office: to_office?.to_string(),
            records: records
                .iter()
                .filter_map(|r| parse_doc_id(r).ok())
                .collect(),
        })
    }
}

impl RecordFacts {
    pub fn of(record: &Record) -> RecordFacts {
        let (office, categories) = match record {
            Record::Consent(c) => (&c.office, None),
            Record::Request(r) => (&r.office, None),
            Record::Transfer(t) => (&t.office, Some(t.categories.clone())),
            Record::Hold(h) => (&h.office, None),
        };
        let event = match record {
            Record::Transfer(t) => {
                TransferWord::of(t.status.as_deref(), t.to_office.as_deref(), &t.records)
            }
            _ => None,
        };
        RecordFacts {
            office: office.clone(),
            personal: record.subject().is_some(),
            key: crate::sealed::record_key_id(record),
            categories,
            event,
            origin: match record {
                Record::Hold(h) => h.origin.clone(),
                _ => None,
            },
            minor: matches!(record, Record::Consent(c) if c.minor),
            completed_request: matches!(record, Record::Request(r)
                if r.outcome.as_deref() == Some("completed")
                    && crate::retention::erasure::carried_out_elsewhere(&r.kind)),
            completed_erasure: matches!(record, Record::Request(r)
                if r.outcome.as_deref() == Some("completed") && r.kind == "erasure"),
            ended_hold: matches!(record, Record::Hold(h) if h.ended()),
        }
    }

    /// The facts of a stored projection (`projection.rs`), without building the record.
    pub fn from_projection(bytes: &[u8]) -> Result<RecordFacts, String> {
        crate::projection::facts(bytes)
    }
}

pub const REQUEST_OPEN_STATUS: &str = "received";

impl RequestRecord {
    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }
}

impl Record {
    pub fn kind_tag(&self) -> u8 {
        match self {
            Record::Consent(_) => KIND_CONSENT,
            Record::Request(_) => KIND_REQUEST,
            Record::Transfer(_) => KIND_TRANSFER,
            Record::Hold(_) => KIND_HOLD,
        }
    }

    /// The normalised subject identifier this record is about, if any.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Record::Consent(c) => Some(&c.subject),
            Record::Request(r) => Some(&r.subject),
            Record::Transfer(t) => t.subject.as_deref(),
            Record::Hold(h) => Some(&h.subject),
        }
    }

    /// The office that wrote the record (its `office` field; ingest checks it names the signer
    /// of the record's first change).
    pub fn office(&self) -> &str {
        match self {
            Record::Consent(c) => &c.office,
            Record::Request(r) => &r.office,
            Record::Transfer(t) => &t.office,
            Record::Hold(h) => &h.office,
        }
    }

    /// Reads a record back from any merge of its document's changes.
    pub fn from_doc(doc: &Automerge) -> Result<Record, String> {
        Record::from_value(doc_value(doc))
    }

    /// Reads a record from its document's root as `AutoSerde` renders it ([`doc_value`], or
    /// `consentd_sync::first_change` for a document made by one change).
    pub fn from_value(value: Value) -> Result<Record, String> {
        Record::from_tree(value).map_err(|e| format!("document is not a valid record: {e}"))
    }

    /// `serde_json::from_value::<Record>(value)`, without serde's buffering: deriving an
    /// internally tagged enum's `Deserialize` copies every field of the object into serde's
    /// private `Content` before the variant's struct reads them (about a tenth of a cold sync's
    /// merging of a record). Here the tag is taken out of the object and the variant's struct
    /// reads the rest, which it would read alike: no variant has a field named `type`. Anything
    /// else (no object, no text tag, an unknown one) goes to serde_json for its error.
    pub fn from_tree(value: Value) -> Result<Record, serde_json::Error> {
        let Value::Object(mut fields) = value else {
            return serde_json::from_value(value);
        };
        let tag = match fields.remove("type") {
            Some(Value::String(tag)) => tag,
            other => {
                fields.extend(other.map(|tag| ("type".to_owned(), tag)));
                return serde_json::from_value(Value::Object(fields));
            }
        };
        let read: fn(Value) -> Result<Record, serde_json::Error> = match tag.as_str() {
            "consent" => |rest| serde_json::from_value(rest).map(Record::Consent),
            "request" => |rest| {
                serde_json::from_value(rest).map(|mut r: RequestRecord| {
                    // Closed is final. Closed at one office while another, cut off from it,
                    // moved it on (extended it, asked for ID), the merge took the other's
                    // `status`: "identity_requested" beside outcome "completed" (found by an
                    // exploratory session). The outcome is the status.
                    if let Some(outcome) = &r.outcome {
                        if r.status != *outcome {
                            r.status = outcome.clone();
                        }
                    }
                    Record::Request(r)
                })
            },
            "transfer" => |rest| serde_json::from_value(rest).map(Record::Transfer),
            "hold" => |rest| serde_json::from_value(rest).map(Record::Hold),
            _ => {
                fields.insert("type".into(), Value::String(tag));
                return serde_json::from_value(Value::Object(fields));
            }
        };
        read(Value::Object(fields))
    }

    /// The record's projection: what is stored beside its envelopes (`projection.rs`).
    pub fn to_projection(&self) -> Vec<u8> {
        crate::projection::encode(self)
    }

    /// A record from its stored projection (either version of `projection.rs`).
    pub fn from_projection(bytes: &[u8]) -> Result<Record, String> {
        crate::projection::decode(bytes)
    }

    /// Writes a new record into an empty document's root: its fields and the document's own id
    /// ([`DOC_ID_FIELD`]), as one batch.
    ///
    /// Why one batch: a put per field splices Automerge's op set once per op (a consent record
    /// writes ~20 ops), and that splicing was most of the cost of authoring a record (an
    /// import's `Draft::create` was 64 % of the daemon's CPU, `OpSet::splice` 34 %).
    /// `init_root_from_hydrate` appends the whole tree with two splices. Measured in
    /// `consentd bench`, alternated runs: the design floor (author and sign, all cores) went
    /// from 4,005-4,424 to 12,083-13,193 records/s, the daemon's import from 2,745-2,878 to
    /// 4,879-5,392. The document is the same either way; only the op order inside the change
    /// differs (breadth first), which `consentd_sync::first_change` reads too (tested below).
    ///
    /// Why the id: without it, two records with the same content authored by one process have
    /// byte-identical first changes, hence the same change hash, and one would overwrite the
    /// other in a store keyed by hash.
    pub fn write_new(
        &self,
        tx: &mut impl Transactable,
        id: &DocId,
    ) -> Result<(), automerge::AutomergeError> {
        debug_assert_eq!(
            tx.length(ROOT),
            0,
            "init_root_from_hydrate appends after the op set's end, so the document must be empty"
        );
        tx.init_root_from_hydrate(&hydrate_map(&self.document_root(id)))
    }

    /// The first change of a new document holding this record (as [`write_new`] writes it), by
    /// `actor` at `time` (Unix seconds): its chunk and hash, ready to sign.
    ///
    /// Why not through Automerge: `consentd_sync::authoring` writes the same chunk, byte for
    /// byte, without a document, a transaction or collecting the change back out of the op set.
    /// Through Automerge, authoring was 36 % of an import's CPU and three quarters of the design
    /// floor (42-47 µs a record against the signature's 15); written directly it costs about
    /// 6 µs, the JSON tree included (BENCHMARKS.md, twenty-seventh session). A record beyond
    /// that writer's limits (a list longer than 4,096 entries, nesting deeper than 16 levels) is
    /// authored by Automerge instead, with the same result.
    ///
    /// [`write_new`]: Record::write_new
    pub fn first_change(
        &self,
        id: &DocId,
        actor: &automerge::ActorId,
        time: i64,
    ) -> Result<consentd_sync::authoring::Authored, automerge::AutomergeError> {
        first_change_of(&self.document_root(id), actor, time)
    }

    /// [`Record::first_change`] and [`Record::to_projection`] from one serialisation of the
    /// record: a new record's draft needs both, and turning the record into its JSON tree (and
    /// dropping it) was about 2 % of an import's CPU each time (BENCHMARKS.md, twenty-eighth
    /// session).
    pub fn first_change_and_projection(
        &self,
        id: &DocId,
        actor: &automerge::ActorId,
        time: i64,
    ) -> Result<(consentd_sync::authoring::Authored, Vec<u8>), automerge::AutomergeError> {
        let value = serde_json::to_value(self).expect("records always serialise");
        let projection = crate::projection::encode_value(&value);
        let root = root_of(value, id);
        Ok((first_change_of(&root, actor, time)?, projection))
    }

    /// The root of a new document holding this record: its fields and [`DOC_ID_FIELD`].
    fn document_root(&self, id: &DocId) -> serde_json::Map<String, Value> {
        root_of(
            serde_json::to_value(self).expect("records always serialise"),
            id,
        )
    }
}

/// A record's JSON tree (`serde_json::to_value`) as the root of its new document `id`: its
/// fields and [`DOC_ID_FIELD`].
fn root_of(record: Value, id: &DocId) -> serde_json::Map<String, Value> {
    let Value::Object(mut fields) = record else {
        unreachable!("records serialise to objects")
    };
    fields.insert(DOC_ID_FIELD.to_owned(), Value::String(doc_id_hex(id)));
    fields
}

/// The first change of a new document whose root is `root` ([`Record::first_change`]).
fn first_change_of(
    root: &serde_json::Map<String, Value>,
    actor: &automerge::ActorId,
    time: i64,
) -> Result<consentd_sync::authoring::Authored, automerge::AutomergeError> {
    {
        if let Some(authored) = consentd_sync::authoring::first_change(actor.to_bytes(), time, root)
        {
            return Ok(authored);
        }
    }
    let mut doc = Automerge::new().with_actor(actor.clone());
    let mut tx = doc.transaction();
    tx.init_root_from_hydrate(&hydrate_map(root))?;
    tx.commit_with(automerge::transaction::CommitOptions::default().with_time(time));
    let change = doc
        .get_last_local_change()
        .expect("a record writes at least its id, so its transaction makes a change");
    Ok(consentd_sync::authoring::Authored {
        bytes: change.raw_bytes().to_vec(),
        hash: change.hash().0,
    })
}

/// A JSON object as the tree `init_root_from_hydrate` writes, value for value as [`put_json`]
/// would put it: a null under a key is no entry at all (`put_json` deletes the key), a number is
/// an integer.
fn hydrate_map(fields: &serde_json::Map<String, Value>) -> automerge::hydrate::Map {
    fields
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), hydrate_value(v)))
        .collect::<std::collections::HashMap<_, _>>()
        .into()
}

/// One JSON value as [`insert_json`] would insert it into a list (where a null is kept).
fn hydrate_value(value: &Value) -> automerge::hydrate::Value {
    use automerge::hydrate::Value as H;
    match value {
        Value::Array(items) => items.iter().map(hydrate_value).collect::<Vec<_>>().into(),
        Value::Object(fields) => H::Map(hydrate_map(fields)),
        scalar => H::scalar(json_scalar(scalar)),
    }
}

/// The Automerge scalar a JSON scalar is written as, by every writer here (`put_json`,
/// `insert_json`, `write_new`): a number as an integer (records hold no floats; one outside
/// `i64` is 0). Containers are objects, not scalars, and map to null.
fn json_scalar(value: &Value) -> automerge::ScalarValue {
    use automerge::ScalarValue as S;
    match value {
        Value::Bool(b) => S::Boolean(*b),
        Value::Number(n) => S::Int(n.as_i64().unwrap_or_default()),
        Value::String(s) => S::Str(s.as_str().into()),
        Value::Null | Value::Array(_) | Value::Object(_) => S::Null,
    }
}

/// A document's root as JSON, exactly as `automerge::AutoSerde` renders it (see `doc_json`).
pub fn doc_value(doc: &Automerge) -> Value {
    let value = doc_json(doc, &ROOT, ObjType::Map);
    debug_assert_eq!(
        Some(&value),
        serde_json::to_value(automerge::AutoSerde::from(doc))
            .ok()
            .as_ref(),
        "the document reads as AutoSerde reads it"
    );
    value
}

/// An object of a document as JSON, the way `automerge::AutoSerde` writes it (the winning value of
/// each key, lists in order, text as a string), but walked in one pass per object: `AutoSerde`
/// seeks every key and list index again (`get`), which cost more than the walk itself on every
/// record a cold sync merges.
fn doc_json(doc: &Automerge, obj: &ObjId, ty: ObjType) -> Value {
    let value = |v: automerge::ValueRef<'_>, id: ObjId| match v {
        automerge::ValueRef::Object(ty) => doc_json(doc, &id, ty),
        automerge::ValueRef::Scalar(s) => scalar_json(&s),
    };
    match ty {
        ObjType::Map | ObjType::Table => Value::Object(
            doc.map_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    (item.key.into_owned(), value(item.value, id))
                })
                .collect(),
        ),
        ObjType::List => Value::Array(
            doc.list_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    value(item.value, id)
                })
                .collect(),
        ),
        ObjType::Text => Value::String(doc.text(obj).unwrap_or_default()),
    }
}

fn scalar_json(s: &automerge::ScalarValueRef<'_>) -> Value {
    use automerge::ScalarValueRef as S;
    match s {
        S::Str(text) => Value::String(text.to_string()),
        S::Int(i) => Value::from(*i),
        S::Uint(u) => Value::from(*u),
        S::Boolean(b) => Value::Bool(*b),
        S::Null => Value::Null,
        // Kinds records never write: exactly as Automerge serialises them.
        other => serde_json::to_value(automerge::ScalarValue::from(other)).unwrap_or(Value::Null),
    }
}

/// Puts a JSON value under `key` of map `obj`, creating nested maps and lists as Automerge objects.
pub fn put_json(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        Value::Null => tx.delete(obj, key),
        Value::Array(items) => {
            let list = tx.put_object(obj, key, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &list, i, item)?;
            }
            Ok(())
        }
        Value::Object(fields) => {
            let map = tx.put_object(obj, key, ObjType::Map)?;
            for (k, v) in fields {
                put_json(tx, &map, k, v)?;
            }
            Ok(())
        }
        scalar => tx.put(obj, key, json_scalar(scalar)),
    }
}

/// Inserts a JSON value at `index` of list `list`.
pub fn insert_json(
    tx: &mut impl Transactable,
    list: &ObjId,
    index: usize,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        Value::Object(fields) => {
            let map = tx.insert_object(list, index, ObjType::Map)?;
            for (k, v) in fields {
                put_json(tx, &map, k, v)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let inner = tx.insert_object(list, index, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(tx, &inner, i, item)?;
            }
            Ok(())
        }
        scalar => tx.insert(list, index, json_scalar(scalar)),
    }
}

/// Appends a JSON value to the list stored under `key` at the root.
pub fn append_to_root_list(
    tx: &mut automerge::transaction::Transaction<'_>,
    key: &str,
    value: &Value,
) -> Result<(), String> {
    let list = match tx.get(ROOT, key).map_err(|e| e.to_string())? {
        Some((automerge::Value::Object(ObjType::List), id)) => id,
        _ => return Err(format!("document has no list {key:?}")),
    };
    let len = tx.length(&list);
    insert_json(tx, &list, len, value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent() -> Record {
        Record::Consent(ConsentRecord {
            subject: "alice@example.com".into(),
            subject_kind: "email".into(),
            person: "end_user".into(),
            purpose: "marketing".into(),
            role: "processor".into(),
            office: "de".into(),
            minor: false,
            minor_elsewhere: false,
            marketing: false,
            parental_consent: None,
            events: vec![ConsentEvent {
                action: "grant".into(),
                at: "2026-01-31T00:00:00Z".into(),
                basis: Some("consent".into()),
                service: Some("sms".into()),
                evidence: Some("web form v3".into()),
                notice: None,
                office: "de".into(),
                restriction: None,
                by_erasure: None,
                follows: None,
            }],
        })
    }

    /// Two offices apart: one closed the request, the other asked for ID; the merge keeps
    /// the outcome, and the request reads closed.
    #[test]
    fn a_closed_request_reads_closed_whatever_status_a_merge_kept() {
        let tree = serde_json::json!({
            "type": "request",
            "subject": "alice@example.com",
            "subject_kind": "email",
            "kind": "access",
            "jurisdiction": "DE",
            "received": "2026-03-03T00:00:00Z",
            "due": "2026-04-07",
            "due_rule": "gdpr-art12-one-month",
            "due_explanation": "…",
            "status": "identity_requested",
            "outcome": "completed",
            "history": [],
            "office": "us",
        });
        let Record::Request(r) = Record::from_tree(tree).unwrap() else {
            panic!("a request")
        };
        assert_eq!(r.status, "completed");
        assert!(!r.is_open());
    }

    #[test]
    fn a_record_round_trips_through_its_document() {
        let record = consent();
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| record.write_new(tx, &[7; 16]))
            .unwrap();
        assert_eq!(Record::from_doc(&doc).unwrap(), record);
        assert_eq!(doc_names(&doc), Some(doc_id_hex(&[7; 16])));
    }

    /// A record marked marketing by its granting office (`ConsentRecord::marketing`) keeps the
    /// mark through its document, its first change and its projection; unmarked, the key is
    /// left out, so records written before it read as they did.
    #[test]
    fn the_marketing_mark_travels_with_the_record() {
        let mut record = consent();
        if let Record::Consent(c) = &mut record {
            c.purpose = "loyalty_programme".into();
            c.marketing = true;
        }
        let mut doc = Automerge::new();
        doc.transact::<_, _, automerge::AutomergeError>(|tx| record.write_new(tx, &[5; 16]))
            .unwrap();
        assert_eq!(Record::from_doc(&doc).unwrap(), record);
        let change = doc.get_last_local_change().unwrap();
        let fast = consentd_sync::first_change::new_document(change.raw_bytes()).unwrap();
        assert_eq!(fast["marketing"], serde_json::json!(true));
        assert_eq!(
            Record::from_projection(&record.to_projection()).unwrap(),
            record
        );
        let plain = consent();
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("marketing")
            .is_none());
        assert_eq!(
            Record::from_projection(&plain.to_projection()).unwrap(),
            plain
        );
    }

    /// `write_new` writes the tree in one batch; the document must be the one a put per field
    /// writes (`put_json`, which appends use), nulls and all, and its creating change must stay
    /// one that `first_change` reads without Automerge (a cold sync's fast path).
    #[test]
    fn a_batch_written_record_is_the_document_puts_write_and_first_change_reads_it() {
        let mut record = consent();
        if let Record::Consent(c) = &mut record {
            c.parental_consent = None;
            c.events[0].notice = None;
            c.events.push(c.events[0].clone());
            c.events[1].action = "withdraw".into();
            c.events[1].basis = None;
        }
        let id = [9; 16];
        let mut batch = Automerge::new();
        batch
            .transact::<_, _, automerge::AutomergeError>(|tx| record.write_new(tx, &id))
            .unwrap();
        let mut puts = Automerge::new();
        puts.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, DOC_ID_FIELD, doc_id_hex(&id).as_str())?;
            let Value::Object(fields) = serde_json::to_value(&record).unwrap() else {
                unreachable!()
            };
            for (key, value) in &fields {
                put_json(tx, &ROOT, key, value)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(doc_value(&batch), doc_value(&puts));
        assert_eq!(Record::from_doc(&batch).unwrap(), record);
        let change = batch.get_last_local_change().unwrap();
        let fast = consentd_sync::first_change::new_document(change.raw_bytes())
            .expect("first_change reads a batch-written record");
        assert_eq!(Value::Object(fast), doc_value(&batch));
    }

    /// `first_change` writes the change `write_new` would make in a fresh document (a chunk
    /// Automerge takes as that record's document, whose hash is the chunk's), directly for a
    /// record within `consentd_sync::authoring`'s limits and through Automerge beyond them.
    #[test]
    fn a_first_change_is_the_document_write_new_makes_directly_or_beyond_limits() {
        let transfer = |records: usize| {
            Record::Transfer(TransferRecord {
                subject: None,
                subject_kind: None,
                categories: vec!["contact".into(), "consent".into()],
                from: "DE".into(),
                to: "US".into(),
                recipient: "office us".into(),
                recipient_kind: None,
                mechanism: "SCCs".into(),
                tia: None,
                at: "2026-12-06T05:00:00Z".into(),
                office: "de".into(),
                records: (0..records).map(|i| format!("{i:032x}")).collect(),
                to_office: Some("us".into()),
                status: Some("transferred".into()),
                reason: None,
            })
        };
        let hold = Record::Hold(HoldRecord {
            subject: "cx1:sealed".into(),
            subject_kind: "email".into(),
            reason: "litigation".into(),
            set_at: "2026-12-06T05:00:00Z".into(),
            cleared_at: None,
            office: "de".into(),
            origin: None,
            cleared_by: None,
        });
        let actor = automerge::ActorId::from(&[3u8; 40][..]);
        let beyond = consentd_sync::first_change::LIST_ELEMS_MAX + 1;
        for (record, direct) in [
            (consent(), true),
            (hold, true),
            (transfer(3), true),
            (transfer(beyond), false),
        ] {
            let id = [5; 16];
            let root = record.document_root(&id);
            assert_eq!(
                consentd_sync::authoring::first_change(actor.to_bytes(), 1_780_000_000, &root)
                    .is_some(),
                direct,
                "which way {record:?} is authored"
            );
            let change = record.first_change(&id, &actor, 1_780_000_000).unwrap();
            let doc = Automerge::load(&change.bytes).unwrap();
            assert_eq!(doc.get_changes(&[])[0].hash().0, change.hash);
            assert_eq!(Record::from_doc(&doc).unwrap(), record);
            assert_eq!(doc_names(&doc), Some(doc_id_hex(&id)));
            let mut batch = Automerge::new();
            batch
                .transact::<_, _, automerge::AutomergeError>(|tx| record.write_new(tx, &id))
                .unwrap();
            assert_eq!(doc_value(&doc), doc_value(&batch));
            // A draft takes both from one serialisation: the same change, the same projection.
            let (shared, projection) = record
                .first_change_and_projection(&id, &actor, 1_780_000_000)
                .unwrap();
            assert_eq!(
                (shared.bytes, shared.hash),
                (change.bytes.clone(), change.hash)
            );
            assert_eq!(projection, record.to_projection());
        }
    }

    #[test]
    fn appended_events_merge_from_two_replicas() {
        let record = consent();
        let mut a = Automerge::new();
        a.transact::<_, _, automerge::AutomergeError>(|tx| record.write_new(tx, &[1; 16]))
            .unwrap();
        let mut b = a.fork();
        let withdraw =
            serde_json::json!({"action":"withdraw","at":"2026-02-01T00:00:00Z","office":"sg"});
        let mut tx = b.transaction();
        append_to_root_list(&mut tx, "events", &withdraw).unwrap();
        tx.commit();
        let regrant =
            serde_json::json!({"action":"grant","at":"2026-02-02T00:00:00Z","office":"de"});
        let mut tx = a.transaction();
        append_to_root_list(&mut tx, "events", &regrant).unwrap();
        tx.commit();
        a.merge(&mut b).unwrap();
        let Record::Consent(merged) = Record::from_doc(&a).unwrap() else {
            panic!("kind changed")
        };
        assert_eq!(merged.events.len(), 3, "both concurrent appends survive");
    }

    /// `from_doc` walks documents itself; it must read every value as `AutoSerde` does, including
    /// concurrent puts (one winner), list edits, nested objects and scalar kinds records never
    /// write.
    #[test]
    fn a_document_reads_as_autoserde_reads_it() {
        use automerge::ScalarValue;
        let mut a = Automerge::new();
        a.transact::<_, _, automerge::AutomergeError>(|tx| {
            consent().write_new(tx, &[2; 16]).unwrap();
            tx.put(ROOT, "counter", ScalarValue::counter(5))?;
            tx.put(ROOT, "when", ScalarValue::Timestamp(1_700_000_000))?;
            tx.put(ROOT, "blob", ScalarValue::Bytes(vec![1, 2, 3]))?;
            tx.put(ROOT, "ratio", 0.5f64)?;
            tx.put(ROOT, "big", u64::MAX)?;
            tx.put(ROOT, "nothing", ScalarValue::Null)?;
            let text = tx.put_object(ROOT, "text", ObjType::Text)?;
            tx.splice_text(&text, 0, 0, "héllo")?;
            let l = tx.put_object(ROOT, "nested", ObjType::List)?;
            let m = tx.insert_object(&l, 0, ObjType::Map)?;
            tx.put(&m, "k", -3i64)?;
            tx.insert(&l, 1, "second")?;
            Ok(())
        })
        .unwrap();
        let mut b = a.fork();
        a.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "purpose", "from a")?;
            let (_, l) = tx.get(ROOT, "nested")?.unwrap();
            tx.delete(&l, 1)?;
            Ok(())
        })
        .unwrap();
        b.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, "purpose", "from b")?;
            let (_, l) = tx.get(ROOT, "nested")?.unwrap();
            tx.insert(&l, 0, "first")?;
            Ok(())
        })
        .unwrap();
        a.merge(&mut b).unwrap();
        for doc in [&a, &b] {
            let ours = doc_json(doc, &ROOT, ObjType::Map);
            let theirs = serde_json::to_value(automerge::AutoSerde::from(doc)).unwrap();
            assert_eq!(ours, theirs);
            assert_eq!(ours["text"], "héllo");
        }
        let merged = doc_json(&a, &ROOT, ObjType::Map);
        assert_eq!(merged["nested"].as_array().unwrap().len(), 2, "{merged}");
    }

    /// Replication reads these facts from projections; they must be what the record says.
    #[test]
    fn facts_read_from_a_projection_are_the_records() {
        let sealed = crate::sealed::seal(&[9; 16], &[3; 32], "alice@example.com");
        let mut sealed_consent = consent();
        if let Record::Consent(c) = &mut sealed_consent {
            c.subject = sealed.clone();
        }
        let transfer = |subject: Option<String>, categories: Vec<String>| {
            Record::Transfer(TransferRecord {
                subject,
                subject_kind: None,
                categories,
                from: "DE".into(),
                to: "US".into(),
                recipient: "a processor".into(),
                recipient_kind: None,
                mechanism: "scc".into(),
                tia: None,
                at: "2026-01-31T00:00:00Z".into(),
                office: "nl".into(),
                records: vec![],
                to_office: None,
                status: None,
                reason: None,
            })
        };
        let hold = Record::Hold(HoldRecord {
            subject: sealed.clone(),
            subject_kind: "email".into(),
            reason: "court order".into(),
            set_at: "2026-01-31T00:00:00Z".into(),
            cleared_at: None,
            office: "uk".into(),
            origin: None,
            cleared_by: None,
        });
        let records = [
            consent(),
            sealed_consent,
            transfer(None, vec!["billing_data".into(), "contact_data".into()]),
            transfer(Some(sealed.clone()), vec![]),
            hold,
        ];
        for r in &records {
            let facts = RecordFacts::from_projection(&r.to_projection()).unwrap();
            assert_eq!(facts, RecordFacts::of(r), "{r:?}");
        }
        let of = |r: &Record| RecordFacts::of(r);
        assert_eq!(of(&records[0]).key, None, "a plain subject has no key");
        assert_eq!(of(&records[1]).key, Some([9; 16]));
        assert!(!of(&records[2]).personal && of(&records[3]).personal);
        assert_eq!(of(&records[2]).categories.unwrap().len(), 2);
        assert_eq!(of(&records[4]).office, "uk");
        for bad in [
            &b"{}"[..],
            br#"{"type":"letter","office":"de"}"#,
            br#"{"type":"transfer","office":"de"}"#,
            b"not json",
        ] {
            assert!(RecordFacts::from_projection(bad).is_err());
        }
    }

    #[test]
    fn doc_ids_parse_only_as_printed() {
        let id = [7u8; 16];
        assert_eq!(parse_doc_id(&doc_id_hex(&id)).unwrap(), id);
        assert!(parse_doc_id("xyz").is_err());
        assert!(parse_doc_id("0707").is_err());
    }

    #[test]
    fn epoch_days_order_dates() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(epoch_day(d("1970-01-02")), 1);
        assert!(epoch_day(d("2026-04-30")) > epoch_day(d("2026-03-31")));
    }
}
