//! Replication between offices: the daemon side of the sync protocol (docs/sync-protocol.md).
//!
//! The protocol itself lives in `consentd_sync` as a sans-I/O [`Session`]; this module is its host.
//! It keeps the replicated sets in memory (`Sets`: envelope items, subject-key items), decides
//! per peer what the transfer policy hides ([`crate::policy`]), runs one QUIC endpoint with a task
//! per peer link, and turns the session's actions into storage work:
//!
//! - `Store` (envelopes) → [`Office::ingest`] with the keys received so far, then `stored`, on a
//!   task of its own, up to [`STORES_IN_FLIGHT_MAX`] tasks per link at once; batches arriving
//!   while all are busy queue, and the next task stores every queued batch in one commit;
//! - `Store` (keys) → held in memory until a record that uses them is ingested;
//! - `Fetch` → envelopes or keys this peer may have, from the store;
//! - `Reject` → a warning naming the peer, set and ids, never content.
//!
//! What is sent is what policy allows: a record whose personal data may not go to a peer's
//! jurisdiction is hidden from that peer's view of the sets, so it is never even announced, and
//! neither is its key. Tombstones go to every peer and are reconciled first: a record a peer
//! deleted is purged here (and its unused keys destroyed) before its envelopes could return.
//!
//! Checkpoints and logs (docs/sync-protocol.md, "Logs"): the checkpoint set holds the latest
//! signed checkpoint of every office (this office's own is signed and pushed within
//! [`CHECKPOINT_PUBLISH_INTERVAL`] of its log growing). A peer's checkpoint of another office is
//! verified against that office's roster key; the session then fetches the leaves it covers in
//! batches, each proven against the signed root, and this module appends them to that office's
//! log in storage (one writer, `Replicator::log_lock`) with the checkpoint in the commit of the
//! batch that completes it. Leaves name ids and hashes only, so every office gets every log,
//! whatever the transfer policy withholds. Equivocation (an office's two signed histories) is
//! logged at error level and kept as evidence in meta (`equivocation/v1/…`).

use crate::office::{stored_facts, Committed, Office, TransferEvent, INGEST_ENVELOPES_MAX};
use crate::policy::{TransferPolicy, Verdict};
use crate::record::{DocId, RecordFacts};
use consentd_storage::KeyId;
use consentd_sync::backoff::reconnect_delay;
use consentd_sync::frame::{ErrorCode, PROTOCOL_VERSION};
use consentd_sync::item::{Item, ItemSet, SetView, Union, Without};
use consentd_sync::logsync;
use consentd_sync::merkle::{Frontier, Hash};
use consentd_sync::session::{
    dials, Action, BatchId, BlobInfo, Limits, Local, LogBatch, ReconCounters, Session,
    SessionConfig, StoreBatch, CLOCK_SKEW_MAX,
};
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use consentd_sync::tombstone::{self, Tombstone};
use consentd_sync::transport::{Endpoint, Link};
use consentd_sync::{Envelope, Hello, SetKind, VerifiedEnvelope, VerifiedRoster};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// Magic of a subject-key blob (docs/sync-protocol.md, "Subject keys").
pub const KEY_BLOB_MAGIC: &[u8; 4] = b"CDK1";
const KEY_BLOB_BYTES: usize = 4 + 16 + 32;
const KEY_ITEM_DOMAIN: &[u8] = b"consentd/key-item/v1";
/// Most received keys held in memory while waiting for their records.
pub const RECEIVED_KEYS_MAX: usize = 1 << 20;
/// Pending records re-opened when keys arrive, per batch of keys.
const PENDING_REOPEN_MAX: usize = 4096;
/// Most bytes of frames queued for one peer's writer task before the link is closed.
///
/// The link's loop hands frames to a writer task instead of awaiting each send, because both
/// peers awaiting sends deadlocked a cold sync of 1,000,000 records: each side's frames waited for
/// QUIC flow-control credit that only the other side's reading could give, and neither read while
/// it was sending (nl's 10 MB of `Have` frames one way, de's reconciliation replies the other).
/// Now both always read. What is queued is bounded by the protocol's own limits (the peer's Wants
/// served at once × their byte budget, one reconciliation reply per set, `Have` frames of one
/// bounded run, pushes within the unacknowledged budget): well under this, so only a peer that
/// stops reading while it keeps asking reaches it, and it is cut off.
pub const LINK_QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Envelope batches one link stores at once. While one batch is in its durable commit, the next
/// is verified and applied on the other core: a cold sync is a pipeline (receive, verify, apply,
/// commit), and with one batch at a time only one stage ran at once. Each batch is at most one
/// Want's answer (`Limits::want_bytes_max`), and all of them together stay within the session's
/// unstored budget, so this bounds concurrency, not memory.
pub const STORES_IN_FLIGHT_MAX: usize = 3;
/// Envelopes a link queues while all its store tasks are busy before it waits for one (see
/// `run_link`): a burst of single-envelope pushes shares one commit, while a Want's answer
/// (about a thousand envelopes) waits for a free task, as before the queue existed.
const STORE_QUEUE_ENVELOPES_MAX: usize = 1024;
/// Received frames at least this large are handled off the runtime's worker
/// (`office::off_worker`): a Want's answer costs ~30 µs per envelope to decode and verify, and a
/// large reconciliation frame at 100,000 records 30 ms against the sets (measured), while moving
/// off the worker costs tens of µs; pushes and small frames stay put.
const FRAME_OFF_WORKER_BYTES_MIN: usize = 32 * 1024;
/// Bytes of frames already received that a link handles in one turn before it acts on them
/// (the first frame always). Pushed items come one a frame: a peer's retention pass of 2,000
/// records arrived as 2,000 frames, each applied in a durable commit of its own (16 ms each,
/// 33 s in all, measured). Frames waiting to be read are now handled together and their
/// tombstones applied in one batch (up to [`TOMBSTONES_APPLIED_MAX`]). A cold sync's answers
/// (up to 1 MiB each) are still taken one at a time.
const TURN_BYTES_MAX: usize = 256 * 1024;
/// Most tombstones applied in one call (`retention::pass::apply_remote`, which commits them in
/// chunks of `DELETE_CHUNK`): consecutive tombstone batches are merged up to this.
const TOMBSTONES_APPLIED_MAX: usize = 1024;
/// Wanted items at least this many are read off the runtime's worker (a stored envelope's read
/// costs a few µs).
const FETCH_OFF_WORKER_IDS_MIN: usize = 64;
/// Envelopes and records of a local commit from which `absorb` runs off the runtime's worker
/// (each costs a decode and a few map updates, microseconds).
const ABSORB_OFF_WORKER_MIN: usize = 64;
/// Longest a stopping office waits for its QUIC connections to drain (see `Replicator::run`).
const ENDPOINT_DRAIN_MAX: Duration = Duration::from_secs(2);
/// What a store task reports: the batches it stored, and whether their commit is durable.
type StoreDone = (Vec<BatchId>, Result<(), String>);
/// Envelopes read per storage page when the sets are built at start.
const BUILD_PAGE: usize = 4096;
/// Most incoming QUIC handshakes authenticated at once (each is bounded in time by
/// `transport::HELLO_TIMEOUT`); further attempts are refused without a handshake.
pub const HANDSHAKES_MAX: usize = 64;
/// Most accepted links one peer office holds at once (one, plus room for a reconnect while an
/// old link is still timing out); more are closed at once and logged.
pub const LINKS_PER_PEER_MAX: usize = 4;

/// One accepted link counted against its office's [`LINKS_PER_PEER_MAX`]; freed when dropped.
struct LinkSlot {
    links: Arc<Mutex<HashMap<String, usize>>>,
    peer: String,
}

impl LinkSlot {
    fn take(links: &Arc<Mutex<HashMap<String, usize>>>, peer: &str) -> Option<LinkSlot> {
        let mut map = lock(links);
        let n = map.entry(peer.to_string()).or_default();
        if *n >= LINKS_PER_PEER_MAX {
            return None;
        }
        *n += 1;
        Some(LinkSlot {
            links: links.clone(),
            peer: peer.to_string(),
        })
    }
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.links);
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}
/// How often this office signs a checkpoint if its log grew, and pushes it to its peers: other
/// offices need it to account for the envelopes they already received (log_inclusion).
pub const CHECKPOINT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
const CHECKPOINT_ITEM_DOMAIN: &[u8] = b"consentd/checkpoint-item/v1\0";
/// Most ids kept in `Replicator::own_checkpoints_checked`.
const OWN_CHECKPOINTS_CHECKED_MAX: usize = 1024;

/// Meta key prefix of equivocation evidence.
pub const EQUIVOCATION_META_PREFIX: &str = "equivocation/v1/";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReplicationError(String);

/// The set item of a tombstone: its time and hash, as every office derives them.
fn tombstone_item(t: &Tombstone, hash: [u8; 32]) -> Item {
    Item::new(t.time.max(0) as u64, hash)
}

/// The set item of a checkpoint: timestamp = tree size; id = the log's storage id (16 bytes:
/// which office) ‖ 16 bytes of a hash of the checkpoint body, so `holds` can tell "an older
/// checkpoint of a log held further" without the note, and the same tree signed twice (other
/// signature lines) is one item.
pub fn checkpoint_item(cp: &Checkpoint) -> Item {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&crate::audit::log::log_id(&cp.origin));
    let mut h = Sha256::new();
    h.update(CHECKPOINT_ITEM_DOMAIN);
    h.update(cp.body().as_bytes());
    id[16..].copy_from_slice(&h.finalize()[..16]);
    Item::new(cp.size.min(consentd_sync::item::TIMESTAMP_MAX), id)
}

/// The set item of a subject key: its id hashed, so the id set says nothing about the key.
pub fn key_item(id: &KeyId) -> Item {
    let mut h = Sha256::new();
    h.update(KEY_ITEM_DOMAIN);
    h.update(id);
    Item::new(0, h.finalize().into())
}

fn key_blob(id: &KeyId, key: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(KEY_BLOB_BYTES);
    b.extend_from_slice(KEY_BLOB_MAGIC);
    b.extend_from_slice(id);
    b.extend_from_slice(key);
    b
}

fn parse_key_blob(b: &[u8]) -> Option<(KeyId, Zeroizing<[u8; 32]>)> {
    if b.len() != KEY_BLOB_BYTES || &b[..4] != KEY_BLOB_MAGIC {
        return None;
    }
    let id: KeyId = b[4..20].try_into().ok()?;
    let key: [u8; 32] = b[20..52].try_into().ok()?;
    Some((id, Zeroizing::new(key)))
}

/// What one record is, for the policy: where its personal data comes from, whether it has any,
/// its items and the key sealing it.
#[derive(Debug, Default, Clone)]
struct DocInfo {
    /// The roster position of the office the record's personal data comes from
    /// ([`VerifiedRoster::index_of`]): one byte instead of a `String` per record. Until the
    /// record's projection names its office, the office that signed its first envelope.
    origin: Option<u8>,
    personal: bool,
    /// Readable here: its first change and its key are held. Until then no transfer event is
    /// raised for it (neither a refusal nor a move): its origin is only a guess from whichever
    /// envelope arrived first, and a record whose first change never comes is never read. A
    /// roster office pushed 300 such records and the receiver signed 600 refusals for them
    /// (found by an exploratory session).
    readable: bool,
    items: Vec<Item>,
    key: Option<KeyId>,
    /// A transfer record's data categories, for transfer events; `None`: contact data (the
    /// other kinds), which costs no allocation per record.
    categories: Option<Vec<String>>,
}

/// The replicated sets and what policy hides from each peer.
#[derive(Default)]
struct Sets {
    tombstones: ItemSet,
    /// Tombstone hash → (record, bytes). Small (no personal data), kept to answer peers.
    tombstone_bytes: HashMap<[u8; 32], (DocId, Vec<u8>)>,
    envelopes: ItemSet,
    keys: ItemSet,
    docs: HashMap<DocId, DocInfo>,
    /// Key item id → key id.
    key_ids: HashMap<[u8; 32], KeyId>,
    /// Per peer: envelope items and key items policy keeps from it.
    hidden: HashMap<String, (ItemSet, ItemSet)>,
    /// Per peer: the records policy keeps from it (`peers` → `refusals`).
    hidden_docs: HashMap<String, HashSet<DocId>>,
    /// Refusals other offices signed (replication events), by record: (signer, peer) roster
    /// positions. A relay keeps a record from a peer its origin refused it to: each office has
    /// its own `[transfer]` table, and with DE→SG forbidden only in de's, cn relayed de's
    /// records to sg under its own (found by an exploratory session). Refusals signed by an
    /// office in a jurisdiction this office's policy keeps resident are not held: they refuse
    /// what this office's own residency rule refuses too, and they are the bulk (one per
    /// resident record and peer).
    origin_refusals: HashMap<DocId, Vec<(u8, u8)>>,
    /// Keys received from peers, held until a record using them is ingested. Shared with
    /// ingest by reference count (copied only if a key arrives while a batch is being stored),
    /// so storing a batch does not copy every key received so far.
    received: Arc<HashMap<KeyId, Zeroizing<[u8; 32]>>>,
    /// The set items of the `received` keys not stored here (yet): disjoint from `keys`. They
    /// count as held, in `holds` and in the keys view reconciled with peers ([`Union`]), so a
    /// sync round does not learn them again (docs/sync-protocol.md, "Subject keys").
    received_keys: ItemSet,
    /// The latest checkpoint held of every office (this one's included): one item each.
    checkpoints: ItemSet,
    /// Office → its checkpoint's item, the checkpoint and its note.
    checkpoint_of: HashMap<String, (Item, Checkpoint, Vec<u8>)>,
    /// Other offices' logs as stored: the frontier of the leaves held.
    logs: HashMap<String, Frontier>,
}

impl Sets {
    /// Makes `cp` (signed by `office`) the checkpoint held for that office.
    fn set_checkpoint(&mut self, office: &str, cp: Checkpoint, note: Vec<u8>) {
        let item = checkpoint_item(&cp);
        if let Some((old, _, _)) = self.checkpoint_of.get(office) {
            self.checkpoints.remove(old);
        }
        self.checkpoints.insert(item);
        self.checkpoint_of
            .insert(office.to_string(), (item, cp, note));
    }
}

/// The state of one peer, for `consentctl peers`.
#[derive(Debug, Default, Clone)]
struct PeerStatus {
    /// Links open with this peer. Usually 0 or 1, but a peer that restarts dials (or is
    /// dialed) again while the link to its old process is still open here, until that one is
    /// reset or idles out; "connected" is whether any is up. It was a flag that every link
    /// end cleared, so `peers` showed the peer disconnected while its new link ran
    /// (tests/partition_heals.rs, seed 2535193643).
    links: u32,
    /// The end of the last sync round with this peer that completed with everything it
    /// brought stored here ([`Replicator::run_link`]).
    last_sync: Option<chrono::DateTime<chrono::Utc>>,
    /// Envelopes this office lacked at the start of that round (fetched during it; known at
    /// the end of a round this office started): `peers` → `lag_last_round`.
    lag_envelopes: usize,
    /// The size of this office's own log at that round's end: `peers` → `lag` counts the
    /// leaves written since (this office's changes and deletions no completed round has
    /// confirmed the peer holds).
    own_log_at_sync: Option<u64>,
    /// Links opened with this peer since start (tests: the reconnect backoff).
    links_opened: u64,
    rejected: u64,
    stored: u64,
    /// Envelopes this peer offered for records a tombstone deletes, dropped by its links'
    /// sessions and by ingest, since start.
    dropped_session: u64,
    dropped_ingest: u64,
    last_error: Option<String>,
    /// Per set, the last reconciliation this office initiated on the link (round trips, bytes).
    last_recon: [ReconCounters; SetKind::COUNT],
    /// Per set, the last one of those that found a difference.
    last_exchange: [ReconCounters; SetKind::COUNT],
}

/// An item to push to connected peers: (record, set, blob, the peer it came from).
///
/// Envelopes (and subject keys) are pushed only by the office that authored them; one received
/// from a peer is not relayed. In a full mesh every other office hears the author directly, so a
/// relay is redundant: with seven offices each write became 6 pushes plus 30 relays, each relay
/// verified by its receiver (and found held) and recorded by its sender as a cross-border
/// transfer to an office that already had the record. An office that cannot reach the author
/// still gets the record from any office that can, at their next sync round (on connect and every
/// `Limits::resync_interval`). Tombstones are relayed: deletions are rare and should arrive
/// everywhere at once. The peer a tombstone came from already holds it, so it is not sent back.
type Push = (Option<DocId>, SetKind, Vec<u8>, Option<String>);
/// Most received item hashes remembered with the peer that sent them until their commit is
/// announced (then they are taken out); cleared when full, which only costs a redundant push.
const RECEIVED_FROM_MAX: usize = 65_536;

pub struct Replicator {
    office: Arc<Office>,
    roster: Arc<VerifiedRoster>,
    me: String,
    jurisdiction: String,
    policy: TransferPolicy,
    peers: Vec<(String, SocketAddr)>,
    sets: Mutex<Sets>,
    status: Mutex<BTreeMap<String, PeerStatus>>,
    /// Locally durable items to push: (record, set, blob, source peer).
    pushes: tokio::sync::broadcast::Sender<Arc<Push>>,
    /// Bumped when an ingest left records pending (a key or part of a history not held here):
    /// every link then starts a sync round early (rate-limited by the session), instead of at
    /// the next periodic one. See [`Replicator::settle_pending`].
    rounds_wanted: tokio::sync::watch::Sender<u64>,
    /// Hashes of envelopes and tombstones being stored from a peer → that peer (see [`Push`]).
    received_from: Mutex<HashMap<[u8; 32], String>>,
    /// Transfers and refusals to record (one task writes them, so each is checked once).
    events: tokio::sync::mpsc::Sender<TransferEvent>,
    events_rx: Mutex<Option<tokio::sync::mpsc::Receiver<TransferEvent>>>,
    /// Events already queued by this process (refusals), or recorded by it (transfers), so a
    /// bulk sync queues or records each once.
    raised: Mutex<HashSet<(DocId, String, &'static str)>>,
    /// Per peer, held while recording the transfer events of records about to be sent to it
    /// ([`Replicator::record_before_sending`]).
    sent_events_lock: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tests: recording events before sending fails as on a full disk.
    #[cfg(test)]
    events_fail: std::sync::atomic::AtomicBool,
    /// Tests: every envelope store fails as on a full disk.
    #[cfg(test)]
    stores_fail: std::sync::atomic::AtomicBool,
    /// Local commits, subscribed to *before* the sets are built from the store, so a commit
    /// made between the build and `forward_commits` starting is not missed. (It was: a write
    /// acknowledged right after a restart was in neither the built sets nor the stream, and
    /// never replicated until the office restarted again; tests/partition_heals.rs.) A commit
    /// both built and received is absorbed twice, which changes nothing.
    committed_rx: Mutex<Option<tokio::sync::broadcast::Receiver<Arc<Committed>>>>,
    /// Storage log id (of each roster office's origin) → office, for checkpoint items.
    log_ids: HashMap<[u8; 16], String>,
    /// Held while appending to another office's log: sessions of several peers may deliver the
    /// same log, and storage appends at the stored size, so appends are checked and made one
    /// at a time.
    log_lock: tokio::sync::Mutex<()>,
    /// Subtree roots of logs served to peers (see `audit::log::subtree_root_cached`).
    subtrees: Arc<Mutex<crate::audit::log::SubtreeCache>>,
    /// Ids of this office's own checkpoints that peers hold and its log was found to reproduce
    /// (older ones): held, so not fetched and checked again. Cleared at
    /// [`OWN_CHECKPOINTS_CHECKED_MAX`].
    own_checkpoints_checked: Mutex<HashSet<[u8; 32]>>,
    /// The size of this office's latest checkpoint when replication started: its log
    /// reproduces every checkpoint of this office up to it (`AuditLog::open` checked).
    own_start_size: std::sync::atomic::AtomicU64,
    /// At an office whose records stay home: its records holding only withdrawals, until a
    /// record of the same consent that travels takes the withdrawal (`office/resident.rs`).
    /// Empty elsewhere. Bounded by [`RESIDENT_WITHDRAWALS_MAX`].
    resident_withdrawals: Mutex<BTreeSet<DocId>>,
    /// At an office whose records stay home: its own active holds, copied for the offices
    /// whose records of the subject arrive (`office/resident.rs`). Bounded likewise.
    resident_holds: Mutex<BTreeSet<DocId>>,
    /// Erasure (and withdrawal, objection, restriction) requests other offices completed, to
    /// carry out on this office's own records of the subject (`retention::erasure::carry_out`).
    erasures_elsewhere: Mutex<BTreeSet<DocId>>,
    /// At an office whose records stay home: erasure requests it completed itself, swept for
    /// good for records of the subject that other offices made before the completion and that
    /// arrive later (`retention::erasure::sweep_late_arrivals`). Bounded likewise.
    own_erasures: Mutex<BTreeSet<DocId>>,
    /// Holds that ended (cleared here or elsewhere, `HoldRecord::ended`): the erasures of the
    /// subject they postponed are carried out (`retention::erasure::after_hold_cleared`, once
    /// per hold). Bounded likewise.
    ended_holds: Mutex<BTreeSet<DocId>>,
    /// At an office whose records stay home: its own consent records flagging the person under
    /// 18, until the flag rides on a record that travels (`Office::spread_minor_flags`).
    resident_minors: Mutex<BTreeSet<DocId>>,
    /// At an office whose records stay home: all of its own consent records flagging the person
    /// under 18 (bounded likewise). A flag rides on one record that travels; when a tombstone
    /// deletes a record that travels (its origin's retention, say), the flag may have gone with
    /// it, so these are watched again ([`Self::forget_doc`]) and carried onto another record
    /// of the person, or onto the next to arrive.
    resident_minors_all: Mutex<BTreeSet<DocId>>,
    /// Woken when records arrive while any of them is not empty, or an erasure arrives.
    fold_wanted: tokio::sync::Notify,
}

/// The mechanism of a verdict that lets a record's changes follow it to an office it reached
/// before its transfer was forbidden ([`Replicator::verdict`]); no event is recorded under it
/// (the record's first move was).
const SENT_BEFORE: &str = "sent_before";

/// Most withdrawal-only records a resident office watches for a record to fold them onto
/// (16 bytes each); beyond it the newest are not watched (logged).
const RESIDENT_WITHDRAWALS_MAX: usize = 1 << 20;
/// How often the fold pass runs without being woken.
const FOLD_EVERY: Duration = Duration::from_secs(300);
/// Least time between two fold passes: a cold sync wakes the pass with every commit. Short: a
/// pass is what carries out an arriving erasure here, and offices converge only once it has
/// (5 s let the partition suite see a settled state change across a restart).
const FOLD_PAUSE: Duration = Duration::from_secs(1);
/// Watched records one fold pass looks at (each a read and an unsealing, ~50 µs), taken in turn
/// from where the last pass stopped: an office's suppression list (withdrawals of people who
/// never granted anywhere) stays watched for good.
const FOLD_SCAN_MAX: usize = 4096;
/// Own erasures swept per pass (`Replicator::sweep_own_erasures`), from a rotating cursor: each
/// reads the request and its subject's records (tens of µs), and a pass runs after every burst
/// of arrivals, so the whole set is gone through over several passes instead.
const SWEEP_SCAN_MAX: usize = 256;
/// Ended holds one pass looks at (`Replicator::carry_out_after_holds`); each already done is a
/// meta read, so a restart's look at every cleared hold held here spreads over passes.
const ENDED_HOLDS_SCAN_MAX: usize = 256;

/// Most remembered raised events; the set is cleared when full (the store's markers still make
/// each event durable once).
const RAISED_REMEMBERED_MAX: usize = 1 << 20;

/// Transfer events waiting to be recorded; beyond this they are dropped and raised again by
/// the next sync of the same records.
const EVENTS_QUEUED_MAX: usize = 1 << 16;
/// Pushes a link takes from the broadcast at once (their transfer events are recorded in one
/// commit before they are sent).
const PUSHES_TOGETHER_MAX: usize = 1024;
/// How recent a peer's last completed round must be for it to count as in sync: rounds run
/// every minute (`Limits::resync_interval`) on a link that stays up.
const IN_SYNC_WITHIN: Duration = Duration::from_secs(180);
/// How long after a failed recording of transfer events it is tried again.
const EVENTS_RETRY: Duration = Duration::from_secs(5);
/// Events recorded per batch.
const EVENTS_BATCH_MAX: usize = 4096;
/// How long events are collected before they are recorded together.
const EVENTS_WINDOW: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the sets usable: every update is a whole insert.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replicator {
    /// Checks this office's place in the roster and subscribes to local commits; the sets are
    /// empty until [`Replicator::build_sets`].
    pub fn new(
        office: Arc<Office>,
        roster: Arc<VerifiedRoster>,
        policy: TransferPolicy,
        peers: Vec<(String, SocketAddr)>,
    ) -> Result<Arc<Replicator>, ReplicationError> {
        let me = office.id().to_string();
        let jurisdiction = roster
            .office(&me)
            .map(|o| o.jurisdiction.clone())
            .ok_or_else(|| ReplicationError(format!("office {me} is not in the roster")))?;
        // A retired office is no longer a peer: never dialed, its sessions refused (transport).
        let peers: Vec<(String, SocketAddr)> = peers
            .into_iter()
            .filter(|(peer, _)| {
                let retired = roster.is_retired(peer);
                if retired {
                    tracing::warn!(peer = %peer, serial = roster.roster().serial, "not syncing with office {peer}: it is retired in the roster; remove its [[peer]] section");
                }
                !retired
            })
            .collect();
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENTS_QUEUED_MAX);
        let committed_rx = office.subscribe_committed();
        let network = roster.roster().network.clone();
        let log_ids = roster
            .offices()
            .map(|o| {
                (
                    crate::audit::log::log_id(&tlog::origin(&network, &o.id)),
                    o.id.clone(),
                )
            })
            .collect();
        let rep = Arc::new(Replicator {
            office,
            roster,
            me,
            jurisdiction,
            policy,
            peers,
            sets: Mutex::new(Sets::default()),
            status: Mutex::new(BTreeMap::new()),
            pushes: tokio::sync::broadcast::channel(4096).0,
            rounds_wanted: tokio::sync::watch::channel(0).0,
            received_from: Mutex::new(HashMap::new()),
            events: events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            raised: Mutex::new(HashSet::new()),
            sent_events_lock: Mutex::new(HashMap::new()),
            #[cfg(test)]
            events_fail: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            stores_fail: std::sync::atomic::AtomicBool::new(false),
            committed_rx: Mutex::new(Some(committed_rx)),
            log_ids,
            log_lock: tokio::sync::Mutex::new(()),
            subtrees: Arc::new(Mutex::new(Default::default())),
            own_checkpoints_checked: Mutex::new(HashSet::new()),
            own_start_size: std::sync::atomic::AtomicU64::new(0),
            resident_withdrawals: Mutex::new(BTreeSet::new()),
            resident_holds: Mutex::new(BTreeSet::new()),
            erasures_elsewhere: Mutex::new(BTreeSet::new()),
            own_erasures: Mutex::new(BTreeSet::new()),
            ended_holds: Mutex::new(BTreeSet::new()),
            resident_minors: Mutex::new(BTreeSet::new()),
            resident_minors_all: Mutex::new(BTreeSet::new()),
            fold_wanted: tokio::sync::Notify::new(),
        });
        Ok(rep)
    }

    /// Builds the sets from the store: every envelope, the key of every readable record,
    /// every tombstone and every office's log. Blocking, and long on a large store (a walk over
    /// every stored envelope: seconds at 100,000 records, a minute or more at 1,000,000 on a
    /// cold page cache), so the daemon runs it on a blocking thread while the control socket
    /// already serves. Commits made meanwhile are not missed: `new` subscribed to them first.
    /// Returns early with an error once `stop` is set.
    pub fn build_sets(&self, stop: &watch::Receiver<bool>) -> Result<(), ReplicationError> {
        #[cfg(test)]
        build_gate::wait(&self.roster.roster().network);
        self.build(Some(stop))?;
        self.build_logs()
    }

    /// The configured peers and their addresses.
    pub fn peer_addresses(&self) -> &[(String, SocketAddr)] {
        &self.peers
    }

    /// Adds every stored envelope, record fact and tombstone to the sets (checking `stop`, if
    /// given, between pages).
    fn build(&self, stop: Option<&watch::Receiver<bool>>) -> Result<(), ReplicationError> {
        let store = self.office.store();
        let err = |e: &dyn std::fmt::Display| ReplicationError(format!("building sets: {e}"));
        let stopped = || {
            if stop.is_some_and(|s| *s.borrow()) {
                Err(err(&"stopped"))
            } else {
                Ok(())
            }
        };
        // One read snapshot walks every stored change, record by record (a read transaction per
        // envelope cost more than parsing it at 1,000,000 records).
        let snapshot = store.snapshot().map_err(|e| err(&e))?;
        let mut after = None;
        let mut touched = HashSet::new();
        // Items go into the envelope and key sets once, at the end (`ItemSet::insert_many`):
        // nothing reads the sets before the build is done (sessions start after it, and local
        // commits wait in the subscription).
        let mut envelope_items = Vec::new();
        let mut key_items = Vec::new();
        loop {
            stopped()?;
            let page = snapshot
                .changes_after(after, BUILD_PAGE)
                .map_err(|e| err(&e))?;
            let Some(&(doc, pos, _, _)) = page.last() else {
                break;
            };
            // Nothing else runs yet: the lock is taken once per page.
            let mut sets = lock(&self.sets);
            for (_, _, h, bytes) in page {
                let env = Envelope::decode(&bytes).map_err(|e| err(&e))?;
                let item = envelope_item(&env, h).ok_or_else(|| err(&"not a change"))?;
                envelope_items.push(item);
                let info = sets.docs.entry(env.doc_id).or_default();
                info.items.push(item);
                if info.origin.is_none() {
                    info.origin = self.roster.index_by_signer(&env.signer);
                }
                touched.insert(env.doc_id);
            }
            after = Some((doc, pos));
        }
        // Every record's facts from one walk over the projections, in the same snapshot (a
        // read per record was most of a restart's time at 1,000,000 records).
        let mut after = None;
        loop {
            stopped()?;
            let page = snapshot
                .projections_after(after.as_ref(), BUILD_PAGE)
                .map_err(|e| err(&e))?;
            let Some(&(last, _, _)) = page.last() else {
                break;
            };
            for (doc, kind, bytes) in page {
                if touched.remove(&doc) {
                    let facts = stored_facts(kind, &bytes);
                    self.set_facts_collecting(&doc, facts.as_ref(), Some(&mut key_items));
                    self.watch_if_resident(&doc, kind, &bytes, facts.as_ref());
                    self.watch_if_erasure(&doc, facts.as_ref());
                }
            }
            after = Some(last);
        }
        // Changes with no projection (none is expected): unreadable here, as `refresh_doc`
        // treats them.
        for doc in touched {
            self.set_facts(&doc, None);
        }
        {
            let mut sets = lock(&self.sets);
            sets.envelopes.insert_many(envelope_items);
            sets.keys.insert_many(key_items);
        }
        let mut after = None;
        loop {
            let page = snapshot
                .tombstones_after(after.as_ref(), BUILD_PAGE)
                .map_err(|e| err(&e))?;
            let Some((doc, hash, _)) = page.last().cloned() else {
                break;
            };
            let mut sets = lock(&self.sets);
            for (d, h, bytes) in page {
                if let Ok(t) = Tombstone::decode(&bytes) {
                    sets.tombstones.insert(tombstone_item(&t, h));
                    sets.tombstone_bytes.insert(h, (d, bytes));
                }
            }
            after = Some((doc, hash));
        }
        Ok(())
    }

    fn log_id_of(&self, office: &str) -> consentd_storage::LogId {
        crate::audit::log::log_id(&tlog::origin(&self.roster.roster().network, office))
    }

    /// Loads every office's stored checkpoint and rebuilds the frontier of each other office's
    /// stored log, checking that it reproduces the stored checkpoint (as `AuditLog::open` does
    /// for this office's own log). A log that does not is not offered, and is logged.
    fn build_logs(&self) -> Result<(), ReplicationError> {
        let err = |e: &dyn std::fmt::Display| ReplicationError(format!("loading logs: {e}"));
        let snap = self.office.store().snapshot().map_err(|e| err(&e))?;
        let mut notes: HashMap<String, Vec<u8>> = snap
            .checkpoints()
            .map_err(|e| err(&e))?
            .into_iter()
            .collect();
        let mut sets = lock(&self.sets);
        for o in self.roster.offices() {
            if o.id == self.me {
                continue;
            }
            let lid = self.log_id_of(&o.id);
            let size = snap.log_size(&lid).map_err(|e| err(&e))?;
            let cp = notes.remove(&o.id).and_then(|note| {
                let v = std::str::from_utf8(&note)
                    .ok()
                    .and_then(|n| tlog::verify(n, &self.roster).ok())
                    .filter(|v| v.office == o.id && v.checkpoint.size <= size);
                if v.is_none() {
                    tracing::error!(office = %o.id, "the stored checkpoint of this office's log does not verify or exceeds its leaves; not offered");
                }
                v.map(|v| (v.checkpoint, note))
            });
            match crate::audit::log::frontier_of(&snap, &lid, size, cp.as_ref().map(|c| &c.0)) {
                Ok(f) => {
                    sets.logs.insert(o.id.clone(), f);
                    if let Some((c, note)) = cp {
                        sets.set_checkpoint(&o.id, c, note);
                    }
                }
                Err(e) => {
                    tracing::error!(office = %o.id, error = %e, "the stored log of this office does not reproduce its checkpoint; not offered");
                }
            }
        }
        if let Some(own) = self.office.audit().latest() {
            self.own_start_size
                .store(own.checkpoint.size, std::sync::atomic::Ordering::Relaxed);
            sets.set_checkpoint(&self.me, own.checkpoint, own.note.into_bytes());
        }
        Ok(())
    }

    /// Signs a checkpoint whenever this office's log grew (or one was signed elsewhere, e.g. by
    /// an export) and pushes it, so peers can account for what they received from us.
    async fn publish_checkpoints(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut published: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_PUBLISH_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            let office = self.office.clone();
            let signed = tokio::task::spawn_blocking(move || {
                office
                    .audit()
                    .checkpoint(office.store(), office.signing_key())
                    .map(|(s, _)| s)
            })
            .await;
            let signed = match signed {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    // Said once at error level when found (`own_log_contradicted`), not at
                    // every write since.
                    if matches!(
                        self.office.audit().contradiction(self.office.store()),
                        Ok(Some(_))
                    ) {
                        tracing::debug!(error = %e, "cannot sign a checkpoint");
                    } else {
                        tracing::error!(error = %e, "cannot sign a checkpoint");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "checkpoint task failed");
                    continue;
                }
            };
            if published.as_deref() == Some(signed.note.as_str()) {
                continue;
            }
            published = Some(signed.note.clone());
            // Signed from our log in this run: peers holding it hold nothing to check.
            {
                let mut checked = lock(&self.own_checkpoints_checked);
                if checked.len() >= OWN_CHECKPOINTS_CHECKED_MAX {
                    checked.clear();
                }
                checked.insert(checkpoint_item(&signed.checkpoint).id);
            }
            let note = signed.note.into_bytes();
            lock(&self.sets).set_checkpoint(&self.me, signed.checkpoint, note.clone());
            let _ = self
                .pushes
                .send(Arc::new((None, SetKind::Checkpoints, note, None)));
        }
    }

    /// Appends leaves of `office`'s log that a session verified against its signed checkpoint
    /// (and the checkpoint, on the batch that completes it). Leaves already held must be equal.
    async fn store_log_leaves(
        &self,
        peer: &str,
        office: &str,
        first: u64,
        leaves: Vec<LogLeaf>,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let _one_writer = self.log_lock.lock().await;
        let lid = self.log_id_of(office);
        let held = lock(&self.sets)
            .logs
            .get(office)
            .cloned()
            .unwrap_or_default();
        if first > held.size() {
            // Another session's append of this log failed or was refused meanwhile: the
            // session's view is ahead of storage. Its next round starts from what is stored.
            tracing::warn!(peer = %peer, office = %office, first, held = held.size(), "log leaves beyond the leaves held; not stored");
            return Ok(());
        }
        let overlap = usize::try_from(held.size() - first)
            .unwrap_or(usize::MAX)
            .min(leaves.len());
        if overlap > 0 {
            let stored = {
                let snap = self
                    .office
                    .store()
                    .snapshot()
                    .map_err(|e| format!("reading the log of {office}: {e}"))?;
                crate::audit::log::read_leaves(&snap, &lid, first, overlap)
                    .map_err(|e| format!("reading the log of {office}: {e}"))?
            };
            if let Some(i) = (0..overlap).find(|&i| stored.get(i) != Some(&leaves[i])) {
                // Both runs of leaves were proven against checkpoints this office signed: it
                // signed two histories.
                let held_note = lock(&self.sets)
                    .checkpoint_of
                    .get(office)
                    .map(|c| c.2.clone())
                    .unwrap_or_default();
                self.keep_equivocation(
                    peer,
                    office,
                    held_note,
                    checkpoint.clone().unwrap_or_default(),
                    format!(
                        "leaf {} differs between two logs it signed",
                        first + i as u64
                    ),
                )
                .await;
                return Ok(());
            }
        }
        let tail = &leaves[overlap..];
        let mut next = held.clone();
        for l in tail {
            next.push(l.merkle_hash());
        }
        let cp = checkpoint.and_then(|note| {
            let v = std::str::from_utf8(&note)
                .ok()
                .and_then(|n| tlog::verify(n, &self.roster).ok())?;
            let newer = lock(&self.sets)
                .checkpoint_of
                .get(office)
                .is_none_or(|c| c.1.size < v.checkpoint.size);
            // The session proved it; check again against what storage will hold.
            let ok = v.office == office
                && v.checkpoint.size == next.size()
                && v.checkpoint.root == next.root();
            debug_assert!(
                ok || !newer,
                "a session-verified checkpoint does not match the log"
            );
            (ok && newer).then_some((v.checkpoint, note))
        });
        if tail.is_empty() && cp.is_none() {
            return Ok(());
        }
        let batch = consentd_storage::WriteBatch {
            log: tail.iter().map(|l| (lid, l.encode().to_vec())).collect(),
            checkpoints: cp
                .iter()
                .map(|(_, note)| (office.to_string(), note.clone()))
                .collect(),
            ..Default::default()
        };
        self.office
            .store()
            .commit(batch)
            .await
            .map_err(|e| format!("cannot store the log of {office} from {peer}: {e}"))?;
        let mut sets = lock(&self.sets);
        sets.logs.insert(office.to_string(), next);
        if let Some((c, note)) = cp {
            tracing::debug!(peer = %peer, office = %office, size = c.size, "stored a checkpoint and its leaves");
            sets.set_checkpoint(office, c, note);
        }
        Ok(())
    }

    /// How `cp`, a checkpoint signed by this office's key, contradicts this office's log: it is
    /// larger than the log, or the log's first `cp.size` leaves do not reproduce its root. None
    /// when the log reproduces it (an older checkpoint of ours) or the log cannot be read.
    fn own_checkpoint_contradiction(&self, cp: &tlog::Checkpoint) -> Option<String> {
        let snap = self.office.store().snapshot().ok()?;
        let lid = self.office.audit().log_id();
        let size = snap.log_size(&lid).ok()?;
        if cp.size > size {
            return Some(format!(
                "a peer holds its checkpoint of {} leaves; its log holds {size}",
                cp.size
            ));
        }
        let root = {
            let mut cache = lock(&self.subtrees);
            crate::audit::log::subtree_root_cached(&snap, &lid, 0, cp.size, &mut cache).ok()?
        };
        (root != cp.root).then(|| {
            format!(
                "a peer holds its checkpoint of {} leaves whose root its log's first {} leaves do not reproduce",
                cp.size, cp.size
            )
        })
    }

    /// This office's log contradicts a checkpoint it published (its data directory was put back
    /// from an older copy): stops all signing, says so at error level once per run, and keeps
    /// the evidence in meta ([`crate::audit::log::CONTRADICTED_META`]) so a restart, and
    /// `status`, know it too.
    fn own_log_contradicted(&self, note: &str, detail: &str) {
        if !self.office.audit().contradicted_by(detail) {
            return;
        }
        tracing::error!(detail = %detail, "this office's log contradicts a checkpoint it published (its data directory restored from an older backup?): it signs no checkpoint and exports no bundle from now on; see docs/reliability.md, \"Restoring an office\"");
        let evidence = json!({
            "note": note,
            "detail": detail,
            "detected_at": crate::record::fmt_time(chrono::Utc::now()),
        });
        let batch = consentd_storage::WriteBatch {
            meta: vec![(
                crate::audit::log::CONTRADICTED_META.to_string(),
                evidence.to_string().into_bytes(),
            )],
            ..Default::default()
        };
        let office = self.office.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = office.store().commit(batch).await {
                        tracing::error!(error = %e, "cannot store the evidence that this office's log contradicts its checkpoint");
                    }
                });
            }
            Err(_) => {
                if let Err(e) = office.store().commit_blocking(batch) {
                    tracing::error!(error = %e, "cannot store the evidence that this office's log contradicts its checkpoint");
                }
            }
        }
    }

    /// Keeps evidence that `office` signed two inconsistent histories, and says so loudly.
    async fn keep_equivocation(
        &self,
        peer: &str,
        office: &str,
        held: Vec<u8>,
        conflicting: Vec<u8>,
        detail: String,
    ) {
        tracing::error!(peer = %peer, office = %office, detail = %detail, "EQUIVOCATION: office signed two inconsistent checkpoints of its log; evidence kept, nothing of the second history stored");
        let mut h = Sha256::new();
        h.update(&held);
        h.update(&conflicting);
        let key = format!(
            "{EQUIVOCATION_META_PREFIX}{office}/{}",
            hex::encode(&h.finalize()[..16])
        );
        let evidence = json!({
            "office": office,
            "held": String::from_utf8_lossy(&held),
            "conflicting": String::from_utf8_lossy(&conflicting),
            "detail": detail,
            "received_from": peer,
            "detected_at": crate::record::fmt_time(chrono::Utc::now()),
        });
        let batch = consentd_storage::WriteBatch {
            meta: vec![(key, evidence.to_string().into_bytes())],
            ..Default::default()
        };
        if let Err(e) = self.office.store().commit(batch).await {
            tracing::error!(office = %office, error = %e, "cannot store equivocation evidence");
        }
    }

    /// Leaves `[first, first + count)` of `office`'s log (ours or a followed one) and the
    /// consistency proof from there to `size`, if the log held reaches `size`.
    async fn serve_leaves(
        &self,
        office: String,
        size: u64,
        first: u64,
        count: u32,
    ) -> Option<(Vec<LogLeaf>, Vec<Hash>)> {
        let lid = self.log_id_of(&office);
        // Only what a checkpoint we hold covers: leaves beyond it are not yet accounted for.
        let covered = lock(&self.sets)
            .checkpoint_of
            .get(&office)
            .map_or(0, |c| c.1.size);
        if size > covered {
            return None;
        }
        let o = self.office.clone();
        let cache = self.subtrees.clone();
        let r = tokio::task::spawn_blocking(move || {
            let snap = o.store().snapshot().map_err(|e| e.to_string())?;
            let leaves = crate::audit::log::read_leaves(&snap, &lid, first, count as usize)
                .map_err(|e| e.to_string())?;
            let end = first + leaves.len() as u64;
            let mut failed = None;
            let mut cache = lock(&cache);
            let proof = logsync::consistency_proof(end, size, &mut |a, b| {
                crate::audit::log::subtree_root_cached(&snap, &lid, a, b, &mut cache)
                    .unwrap_or_else(|e| {
                        failed = Some(e.to_string());
                        [0; 32]
                    })
            });
            match failed {
                Some(e) => Err(e),
                None => Ok((leaves, proof)),
            }
        })
        .await;
        match r {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => {
                tracing::error!(office = %office, error = %e, "cannot read a log to serve it");
                None
            }
            Err(_) => None,
        }
    }

    /// Takes a purged record out of the envelope set (and its key, once destroyed).
    fn forget_doc(&self, doc: &DocId, tombstone: (Item, Vec<u8>)) {
        let mut sets = lock(&self.sets);
        let sets = &mut *sets;
        let (item, bytes) = tombstone;
        sets.tombstones.insert(item);
        sets.tombstone_bytes.insert(item.id, (*doc, bytes));
        for docs in sets.hidden_docs.values_mut() {
            docs.remove(doc);
        }
        if let Some(info) = sets.docs.remove(doc) {
            if self.keeps_records_home() {
                self.rewatch_minors(doc, &info);
            }
            for i in &info.items {
                sets.envelopes.remove(i);
                for hidden in sets.hidden.values_mut() {
                    hidden.0.remove(i);
                }
            }
            if let Some(k) = info.key {
                if self.office.keys.key(&k).is_err() {
                    let item = key_item(&k);
                    sets.keys.remove(&item);
                    sets.key_ids.remove(&item.id);
                    sets.received_keys.remove(&item);
                    // A hidden set must stay a subset of the set it is hidden from
                    // (`Without`): a destroyed key policy kept from a peer (a China-resident
                    // record's) leaves that peer's hidden keys too. It did not, and cn's links
                    // panicked on `Without::new`'s check after deleting a resident record (in a
                    // release build the view would have subtracted a key it no longer held).
                    for hidden in sets.hidden.values_mut() {
                        hidden.1.remove(&item);
                    }
                }
            }
        }
    }

    /// At an office whose records stay home, after a tombstone deleted `doc`: its own under-18
    /// flags are watched again if `doc` held personal data and came from an office whose
    /// records travel (any of them may have carried a flag: which one, the deleted projection
    /// no longer says), and `doc` itself no longer if it was one of them. The next pass finds
    /// each flag still carried, carries it again, or watches for the person's next record.
    fn rewatch_minors(&self, doc: &DocId, info: &DocInfo) {
        let mut all = lock(&self.resident_minors_all);
        all.remove(doc);
        lock(&self.resident_minors).remove(doc);
        let travels = info
            .origin
            .and_then(|i| self.roster.office_at(i))
            .is_some_and(|o| !self.office.records_stay(&o.id));
        if info.personal && travels && !all.is_empty() {
            lock(&self.resident_minors).extend(all.iter().copied());
            self.fold_wanted.notify_one();
        }
    }

    /// Re-reads a record's origin, personal-data flag and key, then recomputes what each peer
    /// may see of it. Returns what it read.
    fn refresh_doc(&self, doc: &DocId) -> Result<Option<RecordFacts>, ReplicationError> {
        let projection = self
            .office
            .store()
            .projection(doc)
            .map_err(|e| ReplicationError(e.to_string()))?;
        let facts = projection.and_then(|(kind, bytes)| stored_facts(kind, &bytes));
        self.set_facts(doc, facts.as_ref());
        Ok(facts)
    }

    /// Takes in what a record is (`None`: it cannot be read here yet), then recomputes what each
    /// peer may see of it.
    fn set_facts(&self, doc: &DocId, facts: Option<&RecordFacts>) {
        self.set_facts_collecting(doc, facts, None)
    }

    /// [`Self::set_facts`]; with `new_keys`, the record's key item is pushed there instead of
    /// into the key set, for one `insert_many` after start-up's walk over every record.
    fn set_facts_collecting(
        &self,
        doc: &DocId,
        facts: Option<&RecordFacts>,
        new_keys: Option<&mut Vec<Item>>,
    ) {
        let mut sets = lock(&self.sets);
        // Split borrows: the record's info is read while the peers' hidden sets change, without
        // cloning it (and its items) for every record absorbed.
        let Sets {
            docs,
            keys,
            key_ids,
            received_keys,
            hidden: hidden_of,
            hidden_docs,
            origin_refusals,
            ..
        } = &mut *sets;
        // A replication event: the records whose refusals it changes are judged again below.
        let reconsider = match facts.and_then(|f| Some((f.office.as_str(), f.event.as_ref()?))) {
            Some((signer, word)) => self.take_word(origin_refusals, signer, word),
            None => Vec::new(),
        };
        let info = docs.entry(*doc).or_default();
        info.readable = facts.is_some();
        if let Some(f) = facts {
            info.personal = f.personal;
            info.key = f.key;
            info.categories = f.categories.clone();
            if let Some(origin) = self
                .roster
                .index_of(f.origin.as_deref().unwrap_or(&f.office))
            {
                info.origin = Some(origin);
            }
        } else {
            // Unreadable here: treat as personal, so policy is applied to it all the same.
            info.personal = true;
        }
        if let Some(k) = info.key {
            let item = key_item(&k);
            match new_keys {
                Some(later) => later.push(item),
                None => {
                    keys.insert(item);
                }
            }
            key_ids.insert(item.id, k);
            // Stored now: served from the store, no longer held apart (the two stay disjoint).
            received_keys.remove(&item);
        }
        self.apply_verdicts(doc, info, hidden_of, hidden_docs, origin_refusals);
        for other in reconsider {
            if let Some(info) = docs.get(&other) {
                self.apply_verdicts(&other, info, hidden_of, hidden_docs, origin_refusals);
            }
        }
    }

    /// Takes in a replication event `signer` signed: a refusal is held, a later "transferred"
    /// for the same record and peer lifts it. Returns the records whose refusals changed.
    ///
    /// A "transferred" that arrives before an older refusal it followed does not lift it; the
    /// origin itself then sends the record (its own policy allows it), so only relaying waits.
    fn take_word(
        &self,
        origin_refusals: &mut HashMap<DocId, Vec<(u8, u8)>>,
        signer: &str,
        word: &crate::record::TransferWord,
    ) -> Vec<DocId> {
        let (Some(by), Some(to)) = (
            self.roster.index_of(signer),
            self.roster.index_of(&word.to_office),
        ) else {
            return Vec::new();
        };
        if signer == self.office.id() || self.policy.is_resident(&self.jurisdiction_of(signer)) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for record in &word.records {
            if word.refused {
                let list = origin_refusals.entry(*record).or_default();
                if !list.contains(&(by, to)) {
                    list.push((by, to));
                    changed.push(*record);
                }
            } else if let Some(list) = origin_refusals.get_mut(record) {
                let before = list.len();
                list.retain(|&w| w != (by, to));
                if list.len() != before {
                    changed.push(*record);
                }
                if list.is_empty() {
                    origin_refusals.remove(record);
                }
            }
        }
        changed
    }

    /// Judges `doc` for every peer: hides its items and key from peers policy keeps it from,
    /// and raises a refusal event for each.
    fn apply_verdicts(
        &self,
        doc: &DocId,
        info: &DocInfo,
        hidden_of: &mut HashMap<String, (ItemSet, ItemSet)>,
        hidden_docs: &mut HashMap<String, HashSet<DocId>>,
        origin_refusals: &HashMap<DocId, Vec<(u8, u8)>>,
    ) {
        for (peer, _) in &self.peers {
            // Not `entry(peer.clone())`: that allocates the peer's name for every record.
            if !hidden_of.contains_key(peer) {
                hidden_of.insert(peer.clone(), Default::default());
            }
            let hidden = hidden_of.get_mut(peer).expect("inserted above");
            let verdict = self.verdict(doc, info, peer, origin_refusals);
            if let (Verdict::Forbidden { reason }, true) = (&verdict, info.readable) {
                self.raise(doc, info, peer, "refused", reason.clone());
            }
            if verdict.may_send() {
                if let Some(docs) = hidden_docs.get_mut(peer) {
                    docs.remove(doc);
                }
            } else {
                hidden_docs.entry(peer.clone()).or_default().insert(*doc);
            }
            for item in &info.items {
                if verdict.may_send() {
                    hidden.0.remove(item);
                } else {
                    hidden.0.insert(*item);
                }
            }
            if let Some(k) = info.key {
                if verdict.may_send() {
                    hidden.1.remove(&key_item(&k));
                } else {
                    hidden.1.insert(key_item(&k));
                }
            }
        }
        // An office this one does not sync with directly still gets this office's refusal of
        // its own records: relays honour the origin's signed refusal, and without one a relay
        // sent de's records to an office de's policy forbade, because it was not among de's
        // peers (found by an exploratory session).
        if info.readable && info.origin.is_some() && info.origin == self.roster.index_of(&self.me) {
            for office in self.roster.offices() {
                let id = office.id.as_str();
                if id == self.me || self.peers.iter().any(|(p, _)| p == id) {
                    continue;
                }
                if let Verdict::Forbidden { reason } = self.verdict(doc, info, id, origin_refusals)
                {
                    self.raise(doc, info, id, "refused", reason);
                }
            }
        }
    }

    /// Queues a transfer event for `doc` and `peer` (recorded once, by the events task).
    fn raise(&self, doc: &DocId, info: &DocInfo, peer: &str, status: &'static str, detail: String) {
        if let Some(event) = self.transfer_event(doc, info, peer, status, detail, None) {
            self.queue_events([event]);
        }
    }

    /// The transfer event for `doc` and `peer`, unless one was raised already.
    fn transfer_event(
        &self,
        doc: &DocId,
        info: &DocInfo,
        peer: &str,
        status: &'static str,
        detail: String,
        tia: Option<String>,
    ) -> Option<TransferEvent> {
        {
            let mut raised = lock(&self.raised);
            if raised.len() >= RAISED_REMEMBERED_MAX {
                raised.clear();
            }
            if !raised.insert((*doc, peer.to_string(), status)) {
                return None;
            }
        }
        Some(self.event_of(doc, info, peer, status, detail, tia))
    }

    fn event_of(
        &self,
        doc: &DocId,
        info: &DocInfo,
        peer: &str,
        status: &'static str,
        detail: String,
        tia: Option<String>,
    ) -> TransferEvent {
        TransferEvent {
            record: *doc,
            to_office: peer.to_string(),
            to_jurisdiction: self.jurisdiction_of(peer),
            status,
            detail,
            tia,
            categories: info
                .categories
                .clone()
                .unwrap_or_else(|| vec!["contact_data".into()]),
        }
    }

    /// Hands events to the events task, one after another without a pause between them: the
    /// task is woken once for the lot rather than once per event. Woken per event, a cold sync's
    /// serving office (one event per record sent to another jurisdiction) switched to the
    /// events task about 2,000 times a second: its bulk threads run at lower priority, so each
    /// wake gave the woken worker their core (twenty-eighth session).
    ///
    /// With the queue full, the events not queued are forgotten as raised, so that the next
    /// sync that moves (or refuses) the same record raises them again.
    fn queue_events(&self, events: impl IntoIterator<Item = TransferEvent>) {
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            if let Err(full) = self.events.try_send(event) {
                let mut raised = lock(&self.raised);
                let mut dropped = 0usize;
                for e in std::iter::once(full.into_inner()).chain(events.by_ref()) {
                    raised.remove(&(e.record, e.to_office, e.status));
                    dropped += 1;
                }
                tracing::warn!(
                    dropped,
                    "transfer event queue full; the next sync raises them again"
                );
                return;
            }
        }
    }

    /// The transfer event that must be durable before `doc` is sent to `peer`: sending it
    /// moves personal data across a border, and this process has not recorded it yet. It is
    /// not remembered as raised here: [`Self::record_before_sending`] does that once it is
    /// durable.
    fn note_sent(&self, doc: &DocId, peer: &str) -> Option<TransferEvent> {
        // Under the sets lock (then `raised`'s, the order `set_facts` takes them in): cloning the
        // record's info for every envelope sent cost an allocation per item and field.
        let sets = lock(&self.sets);
        let info = sets.docs.get(doc).filter(|i| i.readable)?;
        match self.verdict(doc, info, peer, &sets.origin_refusals) {
            Verdict::Allowed {
                mechanism,
                assessment,
                ..
            } if mechanism != SENT_BEFORE => {
                if lock(&self.raised).contains(&(*doc, peer.to_string(), "transferred")) {
                    return None;
                }
                Some(self.event_of(doc, info, peer, "transferred", mechanism, assessment))
            }
            _ => None,
        }
    }

    /// Makes the transfer events of records about to be sent durable first (write-ahead): a
    /// record leaves for another jurisdiction only once its signed transfer record is stored.
    /// They were recorded after sending, by the events task: with the store failing (a full
    /// disk) the records were sent, the events lost, and nothing could tell after a restart
    /// which records had left (found by an exploratory session: 15 of 191 records moved from
    /// uk had no event, for good). On an error the caller sends none of the records the events
    /// name; the peer asks for them again at its next round, which records them then.
    async fn record_before_sending(&self, events: Vec<TransferEvent>) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        // One recording at a time per peer: each checks the store's markers before it writes,
        // so two links sending the same record to one peer (a restarted peer's old and new
        // links) record it once. Links to different peers record theirs together.
        let peer_lock = lock(&self.sent_events_lock)
            .entry(events[0].to_office.clone())
            .or_default()
            .clone();
        let _one = peer_lock.lock().await;
        let keys: Vec<(DocId, String, &'static str)> = events
            .iter()
            .map(|e| (e.record, e.to_office.clone(), e.status))
            .collect();
        #[cfg(test)]
        if self.events_fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("cannot record transfer events: storage: commit failed (test)".into());
        }
        let recorded = self
            .office
            .record_transfer_events(events)
            .await
            .map_err(|e| format!("cannot record transfer events: {e}"))?;
        if recorded > 0 {
            tracing::info!(records = recorded, "recorded cross-border transfer events");
        }
        let mut raised = lock(&self.raised);
        if raised.len() + keys.len() >= RAISED_REMEMBERED_MAX {
            raised.clear();
        }
        raised.extend(keys);
        Ok(())
    }

    fn jurisdiction_of(&self, office: &str) -> String {
        self.roster
            .office(office)
            .map(|o| o.jurisdiction.clone())
            .unwrap_or_default()
    }

    /// Whether this office's own records stay in its jurisdiction (`[transfer] resident`): the
    /// office's answer, from the same policy.
    fn keeps_records_home(&self) -> bool {
        self.office.keeps_records_home()
    }

    /// At an office that keeps its records home: watches `doc` if it is this office's consent
    /// record holding only withdrawals, or its own active hold (`office/resident.rs`).
    fn watch_if_resident(&self, doc: &DocId, kind: u8, bytes: &[u8], facts: Option<&RecordFacts>) {
        if !self.keeps_records_home()
            || facts.is_none_or(|f| f.office != self.me || f.origin.is_some())
        {
            return;
        }
        if kind == crate::record::KIND_CONSENT && facts.is_some_and(|f| f.minor) {
            let mut all = lock(&self.resident_minors_all);
            if all.len() < RESIDENT_WITHDRAWALS_MAX {
                all.insert(*doc);
                lock(&self.resident_minors).insert(*doc);
            }
            drop(all);
            self.fold_wanted.notify_one();
        }
        let set = match kind {
            crate::record::KIND_CONSENT if crate::office::resident::withdrawals_only(bytes) => {
                &self.resident_withdrawals
            }
            crate::record::KIND_HOLD
                if matches!(
                    crate::record::Record::from_projection(bytes),
                    Ok(crate::record::Record::Hold(h)) if h.cleared_at.is_none()
                ) =>
            {
                &self.resident_holds
            }
            _ => return,
        };
        let mut watched = lock(set);
        if watched.len() >= RESIDENT_WITHDRAWALS_MAX {
            tracing::warn!(
                limit = RESIDENT_WITHDRAWALS_MAX,
                "too many withdrawal-only records or holds to watch; one recorded here may not reach other offices until a restart"
            );
            return;
        }
        watched.insert(*doc);
        self.fold_wanted.notify_one();
    }

    /// Watches `doc` if it is an erasure, withdrawal, objection or restriction request another
    /// office completed (`retention::erasure::carry_out`). At every office: one cut off from
    /// the erasing office kept the records it made meanwhile, which the erasing office never
    /// saw, and the subject key the erasure destroyed came back with them (found by an
    /// exploratory session); an office that keeps its records home is always in that place.
    fn watch_if_erasure(&self, doc: &DocId, facts: Option<&RecordFacts>) {
        if facts.is_some_and(|f| f.ended_hold) {
            let mut watched = lock(&self.ended_holds);
            if watched.len() < RESIDENT_WITHDRAWALS_MAX {
                watched.insert(*doc);
            }
            drop(watched);
            self.fold_wanted.notify_one();
            return;
        }
        if facts.is_some_and(|f| f.completed_erasure && f.office == self.me)
            && self.keeps_records_home()
        {
            let mut watched = lock(&self.own_erasures);
            if watched.len() < RESIDENT_WITHDRAWALS_MAX {
                watched.insert(*doc);
            }
            return;
        }
        if facts.is_some_and(|f| f.completed_request && f.office != self.me) {
            let mut watched = lock(&self.erasures_elsewhere);
            if watched.len() < RESIDENT_WITHDRAWALS_MAX {
                watched.insert(*doc);
            }
            self.fold_wanted.notify_one();
        }
    }

    /// What other offices completed is carried out on this office's own records (every office),
    /// and at an office that keeps its records home, what it decided about other offices'
    /// records reaches them (`office/resident.rs`): carries out arriving erasures, copies its
    /// holds, folds its withdrawals, sweeps its own erasures for records arriving late. Woken by
    /// arriving records, and every [`FOLD_EVERY`]; at most one pass every [`FOLD_PAUSE`].
    async fn resident_passes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut cursor: Option<DocId> = None;
        let mut sweep_cursor: Option<DocId> = None;
        loop {
            tokio::select! {
                _ = self.fold_wanted.notified() => {}
                _ = tokio::time::sleep(FOLD_EVERY) => {}
                _ = stop.changed() => return,
            }
            self.carry_out_erasures().await;
            self.carry_out_after_holds().await;
            self.spread_holds().await;
            self.spread_minor_flags().await;
            cursor = self.fold_withdrawals(cursor).await;
            sweep_cursor = self.sweep_own_erasures(sweep_cursor).await;
            tokio::select! {
                _ = tokio::time::sleep(FOLD_PAUSE) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Erasures other offices completed, carried out on this office's own records.
    async fn carry_out_erasures(&self) {
        let erasures: Vec<DocId> = lock(&self.erasures_elsewhere)
            .iter()
            .take(FOLD_SCAN_MAX)
            .copied()
            .collect();
        for request in erasures {
            match crate::retention::erasure::carry_out(&self.office, &request).await {
                Ok(deleted) => {
                    lock(&self.erasures_elsewhere).remove(&request);
                    if deleted > 0 {
                        tracing::info!(
                            deleted,
                            request = %crate::record::doc_id_hex(&request),
                            "carried out another office's erasure on this office's own records"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot carry out another office's erasure here");
                    return;
                }
            }
        }
    }

    /// Erasures the holds that ended postponed, carried out (`after_hold_cleared`; a hold
    /// already done costs a meta read).
    async fn carry_out_after_holds(&self) {
        let holds: Vec<DocId> = lock(&self.ended_holds)
            .iter()
            .take(ENDED_HOLDS_SCAN_MAX)
            .copied()
            .collect();
        for hold in holds {
            match crate::retention::erasure::after_hold_cleared(&self.office, &hold).await {
                Ok(resumed) => {
                    if resumed.done {
                        lock(&self.ended_holds).remove(&hold);
                    } else {
                        self.fold_wanted.notify_one();
                    }
                    for c in resumed.carried.iter().filter(|_| resumed.now) {
                        tracing::info!(
                            deleted = c["deleted"].as_u64().unwrap_or(0),
                            request = c["request"].as_str().unwrap_or_default(),
                            "carried out an erasure a legal hold postponed, the hold having ended"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot carry out erasures a legal hold postponed");
                    return;
                }
            }
        }
    }

    /// This office's active holds, copied for the offices whose records they keep.
    async fn spread_holds(&self) {
        let holds: Vec<DocId> = lock(&self.resident_holds)
            .iter()
            .take(FOLD_SCAN_MAX)
            .copied()
            .collect();
        if holds.is_empty() {
            return;
        }
        match self.office.spread_resident_holds(&holds).await {
            Ok(f) => {
                let mut w = lock(&self.resident_holds);
                for d in &f.done {
                    w.remove(d);
                }
                if f.folded > 0 {
                    tracing::info!(
                        holds = f.folded,
                        "holds set here copied for the offices whose records they keep"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot copy holds for other offices"),
        }
    }

    /// This office's under-18 flags, carried onto records of the person that travel.
    async fn spread_minor_flags(&self) {
        let minors: Vec<DocId> = lock(&self.resident_minors)
            .iter()
            .take(FOLD_SCAN_MAX)
            .copied()
            .collect();
        if minors.is_empty() {
            return;
        }
        match self.office.spread_minor_flags(&minors).await {
            Ok(f) => {
                let mut w = lock(&self.resident_minors);
                for d in &f.done {
                    w.remove(d);
                }
                if f.folded > 0 {
                    tracing::info!(
                        records = f.folded,
                        "under-18 flags recorded here carried onto records that reach the other offices"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot carry under-18 flags to other offices"),
        }
    }

    /// Up to [`SWEEP_SCAN_MAX`] watched own erasures after `cursor` (then from the start), swept
    /// for records other offices made before them that arrived since; returns where it stopped.
    async fn sweep_own_erasures(&self, cursor: Option<DocId>) -> Option<DocId> {
        let watched = in_turn(&lock(&self.own_erasures), cursor, SWEEP_SCAN_MAX);
        for request in &watched {
            match crate::retention::erasure::sweep_late_arrivals(&self.office, request).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    deleted,
                    request = %crate::record::doc_id_hex(request),
                    "erased records of another office's that arrived after this office's erasure"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot sweep this office's erasures");
                    return cursor;
                }
            }
        }
        watched.last().copied().or(cursor)
    }

    /// Up to [`FOLD_SCAN_MAX`] watched withdrawals after `cursor` (then from the start), folded
    /// onto records of the same consent that travel; returns where it stopped.
    async fn fold_withdrawals(&self, cursor: Option<DocId>) -> Option<DocId> {
        let watched = in_turn(&lock(&self.resident_withdrawals), cursor, FOLD_SCAN_MAX);
        for chunk in watched.chunks(crate::office::resident::FOLD_BATCH_MAX) {
            match self.office.fold_resident_withdrawals(chunk).await {
                Ok(f) => {
                    let mut w = lock(&self.resident_withdrawals);
                    for d in &f.done {
                        w.remove(d);
                    }
                    if f.folded > 0 {
                        tracing::info!(
                            records = f.folded,
                            "withdrawals recorded here apart folded onto records that reach the other offices"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot fold withdrawals onto travelling records");
                    break;
                }
            }
        }
        watched.last().copied()
    }

    /// Records queued transfer events, in batches.
    async fn record_events(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = lock(&self.events_rx).take() else {
            return;
        };
        // Events a failed recording left (a full disk): tried again, with any that came since,
        // every `EVENTS_RETRY`. Refusals come this way (a transfer is recorded before its record
        // is sent, `record_before_sending`); a restart raises every refusal again anyway
        // (`apply_verdicts` at build), and the store's markers record each once.
        let mut retry: Vec<TransferEvent> = Vec::new();
        loop {
            let first = if retry.is_empty() {
                tokio::select! {
                    e = rx.recv() => match e { Some(e) => Some(e), None => return },
                    _ = stop.changed() => return,
                }
            } else {
                tokio::select! {
                    e = rx.recv() => match e { Some(e) => Some(e), None => return },
                    _ = tokio::time::sleep(EVENTS_RETRY) => None,
                    _ = stop.changed() => return,
                }
            };
            // Collect for a moment: a sync moves records in bursts, and one signed record per
            // (peer, mechanism) per burst is far less noise than one per record.
            let mut batch = std::mem::take(&mut retry);
            batch.extend(first);
            let window = tokio::time::Instant::now() + EVENTS_WINDOW;
            while batch.len() < EVENTS_BATCH_MAX {
                match tokio::time::timeout_at(window, rx.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) | Err(_) => break,
                }
            }
            match self.office.record_transfer_events(batch.clone()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "recorded cross-border transfer events"),
                Err(e) => {
                    tracing::error!(error = %e, events = batch.len(), retry_in_s = EVENTS_RETRY.as_secs(), "cannot record transfer events; trying again");
                    if batch.len() > EVENTS_QUEUED_MAX {
                        // Bounded: the rest are forgotten as raised, so the next sync (or a
                        // restart's build) raises them again.
                        let mut raised = lock(&self.raised);
                        for e in batch.drain(EVENTS_QUEUED_MAX..) {
                            raised.remove(&(e.record, e.to_office, e.status));
                        }
                    }
                    retry = batch;
                }
            }
        }
    }

    /// May `doc` go to `peer`? This office's policy, and, for a record another office
    /// originated, that office's signed refusal to send it to `peer` (`Sets::origin_refusals`).
    fn verdict(
        &self,
        doc: &DocId,
        info: &DocInfo,
        peer: &str,
        origin_refusals: &HashMap<DocId, Vec<(u8, u8)>>,
    ) -> Verdict {
        let origin_office = info.origin.and_then(|i| self.roster.office_at(i));
        let origin = origin_office
            .map(|o| o.jurisdiction.clone())
            .unwrap_or_else(|| self.jurisdiction.clone());
        let verdict = self.policy.decide(
            &origin,
            &self.jurisdiction,
            &self.jurisdiction_of(peer),
            info.personal,
        );
        if !info.personal {
            return verdict;
        }
        let refused_by_origin = origin_refusals.get(doc).is_some_and(|list| {
            let to = self.roster.index_of(peer);
            list.iter()
                .any(|&(by, p)| Some(by) == info.origin && Some(p) == to)
        });
        let verdict = match (verdict.may_send() && refused_by_origin, origin_office) {
            (true, Some(o)) => Verdict::Forbidden {
                reason: format!(
                    "its origin office {} refused it to office {peer} (a signed transfer record)",
                    o.id
                ),
            },
            _ => verdict,
        };
        if verdict.may_send() || !self.sent_before(doc, peer) {
            return verdict;
        }
        // A record that lawfully reached the peer before its transfer was forbidden (a policy
        // changed since) keeps receiving its changes: a withdrawal must reach where the grant is.
        // Kept from it, the peer answered "granted" for good, and its honest bundles failed
        // `audit verify` on the leaves it never got (found by an exploratory session). The
        // refusal keeps every record not sent before.
        Verdict::Allowed {
            mechanism: SENT_BEFORE.into(),
            tia_required: false,
            assessment: None,
        }
    }

    /// Whether a signed replication event (this office's or another's) says `doc` was
    /// transferred to `peer`. An index lookup, answered by the key filter for records never
    /// sent there; asked only for a verdict that forbids.
    fn sent_before(&self, doc: &DocId, peer: &str) -> bool {
        let marker =
            crate::office::transfer_marker(&crate::record::doc_id_hex(doc), peer, "transferred");
        self.office
            .store()
            .docs_by_key(&marker)
            .is_ok_and(|d| !d.is_empty())
    }

    pub fn peers_json(&self) -> Value {
        // Before the status lock: no path holds the two together.
        let refusals: HashMap<String, usize> = lock(&self.sets)
            .hidden_docs
            .iter()
            .map(|(peer, docs)| (peer.clone(), docs.len()))
            .collect();
        let own_log = self.own_log_size();
        let status = lock(&self.status);
        Value::Array(
            self.peers
                .iter()
                .map(|(peer, address)| {
                    let s = status.get(peer).cloned().unwrap_or_default();
                    let lag = match (own_log, s.own_log_at_sync) {
                        (Some(now), Some(then)) => Some(now.saturating_sub(then)),
                        _ => None,
                    };
                    json!({
                        "office": peer,
                        "address": address.to_string(),
                        "connected": s.links > 0,
                        "links": s.links,
                        "last_sync": s.last_sync.map(crate::record::fmt_time),
                        "lag": lag,
                        "lag_last_round": s.lag_envelopes,
                        "in_sync": in_sync(&s),
                        "stored": s.stored,
                        "rejected": s.rejected,
                        "dropped": s.dropped_session + s.dropped_ingest,
                        "refusals": refusals.get(peer).copied().unwrap_or(0),
                        "last_error": s.last_error,
                        "last_recon": last_recon_json(&s.last_recon),
                        "last_exchange": last_recon_json(&s.last_exchange),
                    })
                })
                .collect(),
        )
    }

    /// How many peers this office is in sync with ([`in_sync`]): `status` →
    /// `replication_peers_in_sync`.
    pub fn peers_in_sync(&self) -> usize {
        let status = lock(&self.status);
        self.peers
            .iter()
            .filter(|(p, _)| status.get(p).is_some_and(in_sync))
            .count()
    }

    /// The number of leaves of this office's own log (what it authored and deleted).
    fn own_log_size(&self) -> Option<u64> {
        self.office
            .store()
            .log_size(&self.office.audit().log_id())
            .ok()
    }

    /// A sync round with `peer` completed with everything it brought stored: `last_sync`, the
    /// lag it found (`None`: not known on this side), and the link's error cleared.
    /// Returns the state it replaced (taken back if the link then fails, on the answering side).
    fn synced(&self, peer: &str, lag: Option<usize>) -> SyncMark {
        let own_log = self.own_log_size();
        let mut before = SyncMark::default();
        self.set_status(peer, |s| {
            before = SyncMark {
                last_sync: s.last_sync,
                own_log_at_sync: s.own_log_at_sync,
            };
            s.last_sync = Some(chrono::Utc::now());
            if let Some(lag) = lag {
                s.lag_envelopes = lag;
            }
            if own_log.is_some() {
                s.own_log_at_sync = own_log;
            }
            s.last_error = None;
        });
        before
    }

    fn set_status(&self, peer: &str, f: impl FnOnce(&mut PeerStatus)) {
        f(lock(&self.status).entry(peer.to_string()).or_default());
    }

    /// Runs the endpoint until `stop`: listens, dials the peers this office dials, and keeps
    /// every link's session going.
    pub async fn run(
        self: Arc<Self>,
        transport_key: SigningKey,
        listen: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Result<(), ReplicationError> {
        let endpoint = Arc::new(
            Endpoint::bind(self.roster.clone(), &self.me, &transport_key, listen)
                .map_err(|e| ReplicationError(e.to_string()))?,
        );
        tracing::info!(address = %listen, peers = self.peers.len(), "replication listening");
        let forward = tokio::spawn(self.clone().forward_commits(stop.clone()));
        let events = tokio::spawn(self.clone().record_events(stop.clone()));
        let checkpoints = tokio::spawn(self.clone().publish_checkpoints(stop.clone()));
        let folds = tokio::spawn(self.clone().resident_passes(stop.clone()));
        for (peer, address) in self.peers.clone() {
            if dials(&self.me, &peer) {
                tokio::spawn(
                    self.clone()
                        .dial_loop(endpoint.clone(), peer, address, stop.clone()),
                );
            }
        }
        let mut stop_accept = stop.clone();
        // Handshakes in progress are bounded: beyond that, attempts are turned away unhandled.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
        let links: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(accepting) = incoming else { break };
                    let from = accepting.remote_address();
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        accepting.refuse();
                        tracing::warn!(%from, "refused a replication connection: {HANDSHAKES_MAX} handshakes already in progress");
                        continue;
                    };
                    let (rep, stop, links) = (self.clone(), stop.clone(), links.clone());
                    tokio::spawn(async move {
                        let link = accepting.finish().await;
                        drop(permit);
                        match link {
                            Ok(link) => {
                                let Some(_slot) = LinkSlot::take(&links, &link.peer) else {
                                    link.connection.close(3u32.into(), b"too many links");
                                    tracing::warn!(%from, peer = %link.peer, "refused a replication connection: {LINKS_PER_PEER_MAX} links from this office already open");
                                    return;
                                };
                                rep.run_link(link, false, stop).await;
                            }
                            Err(e) => tracing::warn!(%from, error = %e, "refused a replication connection"),
                        }
                    });
                }
                _ = stop_accept.changed() => break,
            }
        }
        forward.abort();
        events.abort();
        checkpoints.abort();
        folds.abort();
        endpoint.close();
        // Closed connections drain for a few round trips before the UDP port is free again;
        // wait for that (bounded), so a stopped office has released its address when `run`
        // returns. An office restarted at once in the same process (`consentd bench`) found
        // the port still taken and ran without replication.
        let _ = tokio::time::timeout(ENDPOINT_DRAIN_MAX, endpoint.wait_idle()).await;
        Ok(())
    }

    async fn dial_loop(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        peer: String,
        address: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut attempt = 0u32;
        loop {
            match endpoint.connect_addr(&peer, address).await {
                Ok(link) => {
                    // Only a link that completed a sync round restarts the backoff: the TLS
                    // handshake completes before the peer checks our key, so a peer refusing
                    // us (not in its roster, another version) was dialed every 250 ms for good
                    // (found by an exploratory session).
                    if self.clone().run_link(link, true, stop.clone()).await {
                        attempt = 0;
                    }
                }
                Err(e) => {
                    self.set_status(&peer, |s| s.last_error = Some(e.to_string()));
                    tracing::debug!(peer = %peer, error = %e, "cannot reach peer");
                }
            }
            if *stop.borrow() {
                return;
            }
            let delay = reconnect_delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Turns each durable local commit into set updates and pushes.
    async fn forward_commits(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let subscribed = lock(&self.committed_rx).take();
        let mut rx = subscribed.unwrap_or_else(|| self.office.subscribe_committed());
        loop {
            let committed: Arc<Committed> = tokio::select! {
                c = rx.recv() => match c {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed commits are found by the next sync round's reconciliation
                        // against the store-built sets after a restart; rebuild now instead.
                        tracing::warn!(missed = n, "replication fell behind local commits; rebuilding sets");
                        // A walk over the whole store: on a blocking thread, not a worker.
                        let me = self.clone();
                        let built = tokio::task::spawn_blocking(move || me.build(None)).await;
                        match built {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::error!(error = %e, "cannot rebuild replication sets"),
                            Err(e) => tracing::error!(error = %e, "rebuilding replication sets failed"),
                        }
                        continue;
                    }
                    Err(_) => return,
                },
                _ = stop.changed() => return,
            };
            // A cold sync's commit holds a thousand envelopes to decode and add to the sets.
            let heavy =
                committed.envelopes.len() + committed.records.len() >= ABSORB_OFF_WORKER_MIN;
            crate::office::off_worker_if(heavy, || self.absorb(&committed));
        }
    }

    /// Adds durable envelopes to the sets and queues them for pushing: a record's key first,
    /// so the peer can open the record the moment its envelopes land.
    fn absorb(&self, committed: &Committed) {
        // Deletions first: they travel ahead of everything else.
        for (doc, hash, bytes) in &committed.tombstones {
            if let Ok(t) = Tombstone::decode(bytes) {
                self.forget_doc(doc, (tombstone_item(&t, *hash), bytes.clone()));
                let source = lock(&self.received_from).remove(hash);
                let _ =
                    self.pushes
                        .send(Arc::new((None, SetKind::Tombstones, bytes.clone(), source)));
            }
        }
        let mut docs = HashSet::new();
        // Records with an envelope this office authored (or whose source was forgotten): only
        // these are pushed, with their keys. See [`Push`] for why received ones are not relayed.
        let mut local_docs = HashSet::new();
        let mut pushes = Vec::new();
        for (doc, hash, bytes) in &committed.envelopes {
            let Ok(env) = Envelope::decode(bytes) else {
                continue;
            };
            let Some(item) = envelope_item(&env, *hash) else {
                continue;
            };
            {
                let mut sets = lock(&self.sets);
                if sets.envelopes.insert(item) {
                    let info = sets.docs.entry(*doc).or_default();
                    info.items.push(item);
                    if info.origin.is_none() {
                        info.origin = self.roster.index_by_signer(&env.signer);
                    }
                }
            }
            docs.insert(*doc);
            if lock(&self.received_from).remove(hash).is_none() {
                local_docs.insert(*doc);
                pushes.push((*doc, bytes.clone()));
            }
        }
        // What each record is came with the commit; a record it did not describe is read back.
        // Borrowed: only a transfer record's categories are copied into the sets.
        let mut facts: HashMap<DocId, Option<&RecordFacts>> = committed
            .records
            .iter()
            .map(|(doc, f)| (*doc, f.as_ref()))
            .collect();
        docs.extend(facts.keys().copied());
        for doc in &docs {
            let had_key = lock(&self.sets).docs.get(doc).and_then(|i| i.key);
            let arrived = !local_docs.contains(doc);
            // Arrived or written here: an erasure completed elsewhere, or here at an office
            // that keeps its records home (`watch_if_erasure`).
            match facts.remove(doc) {
                Some(f) => {
                    self.set_facts(doc, f);
                    self.watch_if_erasure(doc, f);
                }
                None => match self.refresh_doc(doc) {
                    Ok(f) => self.watch_if_erasure(doc, f.as_ref()),
                    Err(e) => tracing::error!(error = %e, "cannot update replication sets"),
                },
            }
            let key = lock(&self.sets).docs.get(doc).and_then(|i| i.key);
            if arrived {
                // Arrived from a peer: it may be the record a watched withdrawal folds onto, or
                // one a watched hold must reach (an erasure to carry out here is watched above).
                if !lock(&self.resident_withdrawals).is_empty()
                    || !lock(&self.resident_holds).is_empty()
                    || !lock(&self.resident_minors).is_empty()
                    || !lock(&self.own_erasures).is_empty()
                {
                    self.fold_wanted.notify_one();
                }
                continue;
            }
            if self.keeps_records_home() {
                if let Ok(Some((kind, bytes))) = self.office.store().projection(doc) {
                    let facts = stored_facts(kind, &bytes);
                    self.watch_if_resident(doc, kind, &bytes, facts.as_ref());
                }
            }
            if let (None, Some(kid)) = (had_key, key) {
                if let Ok(k) = self.office.keys.key(&kid) {
                    let blob = key_blob(&kid, &k);
                    let _ = self
                        .pushes
                        .send(Arc::new((Some(*doc), SetKind::Keys, blob, None)));
                }
            }
        }
        for (doc, bytes) in pushes {
            let _ = self
                .pushes
                .send(Arc::new((Some(doc), SetKind::Envelopes, bytes, None)));
        }
    }

    /// Runs one peer link until it closes or `stop`.
    /// Returns whether a sync round completed on it with everything stored, and the link did
    /// not end in a failure either side reported (the dialer's backoff restarts only then).
    async fn run_link(
        self: Arc<Self>,
        link: Link,
        dialer: bool,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let peer = link.peer.clone();
        let (connection, mut writer, mut reader) = link.split();
        // Frames go out through their own task, so this loop never waits on the network and
        // always keeps reading (see [`LINK_QUEUED_BYTES_MAX`]).
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let mut writer_task = tokio::spawn({
            let queued = queued.clone();
            async move {
                while let Some(frame) = out_rx.recv().await {
                    let sent = writer.send(&frame).await;
                    queued.fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
                    sent.map_err(|e| e.to_string())?;
                }
                // Let a last Error frame reach the peer (bounded) before closing: it says why.
                writer.finish_and_wait(Duration::from_secs(1)).await;
                Ok::<(), String>(())
            }
        });
        let send = |frame: Vec<u8>| -> Result<(), String> {
            let before = queued.fetch_add(frame.len(), std::sync::atomic::Ordering::Relaxed);
            if before + frame.len() > LINK_QUEUED_BYTES_MAX {
                return Err(format!(
                    "peer is not reading: over {LINK_QUEUED_BYTES_MAX} bytes queued for it"
                ));
            }
            out.send(frame)
                .map_err(|_| "link writer stopped".to_string())
        };
        let limits = Limits::default();
        // A cold sync learns keys for `deferred_rounds_max` rounds before it fetches envelopes
        // (a round's later sets wait while a set is cut short): the keys learnt meanwhile, plus
        // the last round's, must fit in memory, or the first are cleared before their records
        // arrive.
        debug_assert!(
            (limits.deferred_rounds_max as usize + 1) * limits.recon_items_max <= RECEIVED_KEYS_MAX,
            "received keys cannot hold what the deferred rounds learn"
        );
        let mut session = Session::new(SessionConfig {
            hello: Hello {
                version: PROTOCOL_VERSION,
                network: self.roster.roster().network.clone(),
                office: self.me.clone(),
                roster_serial: self.roster.roster().serial,
                wall_ms: unix_ms_now(),
            },
            peer: peer.clone(),
            dialer,
            roster: self.roster.clone(),
            limits,
        });
        let mut pushes = self.pushes.subscribe();
        let mut rounds_wanted = self.rounds_wanted.subscribe();
        self.set_status(&peer, |s| {
            s.links += 1;
            s.links_opened += 1;
            s.last_error = None;
        });
        tracing::info!(peer = %peer, dialer, "replication link up");
        let mut answered = None;
        let mut dropped_seen = 0u64;
        let mut last_recon = [ReconCounters::default(); SetKind::COUNT];
        // Envelope batches being stored by their own tasks (see [`STORES_IN_FLIGHT_MAX`]); each
        // task reports its batch ids here once durable. Batches that arrive while every task is
        // busy wait in `store_queue`, and the next task takes all of them into one commit: a burst of
        // single-envelope pushes costs a few durable commits, not one each.
        let (stored_tx, mut stored_rx) =
            tokio::sync::mpsc::channel::<StoreDone>(STORES_IN_FLIGHT_MAX);
        let mut storing = 0usize;
        let mut store_queue: VecDeque<StoreBatch> = VecDeque::new();
        // Handles one received frame: verified and applied to the session, which queues what
        // it asks of this office as actions.
        // The link ended because one side failed (a store here, or the peer's Error frame),
        // not because the connection did.
        let failed = std::sync::atomic::AtomicBool::new(false);
        let handle_frame = |session: &mut Session, bytes: &[u8]| -> Result<(), String> {
            let handle = |session: &mut Session| {
                // Decoding verifies a Want's answer (a thousand envelopes, ~30 ms) and needs no
                // sets: done before locking them, so the other tasks that lock them (store
                // tasks, the pushes of local commits) do not wait for it.
                let decoded = session.decode(bytes);
                let sets = lock(&self.sets);
                session.handle_decoded(Instant::now(), decoded, &self.view(&sets))
            };
            let heavy = bytes.len() >= FRAME_OFF_WORKER_BYTES_MIN;
            let result = crate::office::off_worker_if(heavy, || handle(session));
            if let Err(e) = result {
                while let Some(frame) = session.poll_transmit() {
                    let _ = send(frame);
                }
                // A peer shutting down is not a failure.
                if !matches!(
                    e,
                    consentd_sync::session::SessionError::PeerClosed {
                        code: consentd_sync::frame::ErrorCode::Shutdown,
                        ..
                    }
                ) {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return Err(e.to_string());
            }
            Ok(())
        };
        // The stream ended (or failed) while frames before it were being taken in a turn.
        let mut ended: Option<Result<(), String>> = None;
        let mut synced = false;
        // A round completed (with the lag it found, when this side started it) and waits for
        // what it brought to be stored before it counts as `last_sync`: with every store failing
        // (a full disk), `peers` showed fresh syncs at both ends (found by an exploratory
        // session).
        let mut round_done: Option<Option<usize>> = None;
        // On the answering side: the state before the last round recorded on this link.
        let mut answered_mark: Option<SyncMark> = None;
        let mut transport_ended = false;
        let outcome: Result<(), String> = async {
            loop {
                while let Some(frame) = session.poll_transmit() {
                    send(frame)?;
                }
                // An action taken while merging tombstone batches that is not one of them.
                let mut carried: Option<Action> = None;
                while let Some(action) = carried.take().or_else(|| session.poll_action()) {
                    match action {
                        Action::Store(batch) if batch.set == SetKind::Envelopes => {
                            store_queue.push_back(batch);
                            let queued: usize = store_queue.iter().map(|b| b.envelopes.len()).sum();
                            if storing < STORES_IN_FLIGHT_MAX {
                                self.start_store(&peer, &mut store_queue, &stored_tx);
                                storing += 1;
                            } else if queued >= STORE_QUEUE_ENVELOPES_MAX {
                                // Bulk (a cold sync's Want answers): wait for a store before
                                // reading on, so the pipeline stays a few batches deep instead
                                // of running ahead of the disk. Small pushes keep queueing.
                                self.finish_store(&mut session, &mut stored_rx, &mut storing)
                                    .await?;
                                self.start_store(&peer, &mut store_queue, &stored_tx);
                                storing += 1;
                            }
                        }
                        action => {
                            // Everything else sees the envelopes stored before it, as when
                            // batches were stored one at a time: keys re-open pending records,
                            // tombstones purge what they cover, logs follow their records.
                            if matches!(action, Action::Store(_)) {
                                while storing > 0 || !store_queue.is_empty() {
                                    if storing < STORES_IN_FLIGHT_MAX && !store_queue.is_empty() {
                                        self.start_store(&peer, &mut store_queue, &stored_tx);
                                        storing += 1;
                                    } else {
                                        self.finish_store(
                                            &mut session,
                                            &mut stored_rx,
                                            &mut storing,
                                        )
                                        .await?;
                                    }
                                }
                            }
                            let action = match action {
                                // Consecutive tombstone batches (pushes come one a frame) are
                                // applied in one call: one purge commit a chunk, one rotation.
                                Action::Store(mut merged) if merged.set == SetKind::Tombstones => {
                                    let mut also = Vec::new();
                                    while merged.blobs.len() < TOMBSTONES_APPLIED_MAX {
                                        match session.poll_action() {
                                            Some(Action::Store(b))
                                                if b.set == SetKind::Tombstones =>
                                            {
                                                merged.blobs.extend(b.blobs);
                                                also.push(b.id);
                                            }
                                            other => {
                                                carried = other;
                                                break;
                                            }
                                        }
                                    }
                                    self.act(&peer, &mut session, Action::Store(merged)).await?;
                                    let sets = lock(&self.sets);
                                    for id in also {
                                        session.stored(Instant::now(), id, &self.view(&sets));
                                    }
                                    continue;
                                }
                                action => action,
                            };
                            if let Action::Synced { lag, .. } = &action {
                                round_done = Some(Some(lag[SetKind::Envelopes.index()]));
                            }
                            self.act(&peer, &mut session, action).await?;
                        }
                    }
                }
                // The side that answered the round (it learns of the items it lacks after its
                // last answer) waits until nothing is in flight either. Checked after the actions: a
                // store's `stored` may complete the round.
                if round_done.is_some()
                    && storing == 0
                    && store_queue.is_empty()
                    && (dialer || session.is_idle())
                {
                    let lag = round_done.take().flatten();
                    let before = self.synced(&peer, lag);
                    if !dialer {
                        // The peer coming back for a later round confirms the earlier ones.
                        answered_mark = Some(before);
                    }
                    synced = true;
                }
                if let Some(end) = ended.take() {
                    return end;
                }
                if session.poll_transmit_pending() {
                    continue;
                }
                let dropped = session.stats().dropped_tombstoned;
                if dropped != dropped_seen {
                    let new = dropped - dropped_seen;
                    dropped_seen = dropped;
                    // Counted in `status` too: every envelope of a deleted record that came back.
                    self.office
                        .dropped_replayed
                        .fetch_add(new, std::sync::atomic::Ordering::Relaxed);
                    // Added, not set: the count is the peer's since start, over all its links
                    // (a new link's session counts from zero).
                    self.set_status(&peer, |s| s.dropped_session += new);
                }
                let recon = session.stats().last_recon;
                if recon != last_recon {
                    last_recon = recon;
                    let exchange = session.stats().last_exchange;
                    self.set_status(&peer, |s| {
                        s.last_recon = recon;
                        s.last_exchange = exchange;
                    });
                }
                // The acceptor learns a round ended when it answers the last set's query.
                if !dialer && session.stats().last_answered != answered {
                    answered = session.stats().last_answered;
                    round_done = Some(round_done.flatten());
                    continue; // recorded at the top of the loop once stored
                }
                let deadline = session
                    .poll_timeout()
                    .map(tokio::time::Instant::from_std)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    frame = reader.recv(), if session.can_receive() => match frame {
                        Ok(Some(bytes)) => {
                            handle_frame(&mut session, &bytes)?;
                            // Then the frames already here, before acting on any (see
                            // `TURN_BYTES_MAX`). A polled `recv` that is not ready is dropped:
                            // it is cancel-safe.
                            let mut turn_bytes = bytes.len();
                            while turn_bytes < TURN_BYTES_MAX && session.can_receive() {
                                let ready = tokio::select! {
                                    biased;
                                    frame = reader.recv() => Some(frame),
                                    () = std::future::ready(()) => None,
                                };
                                match ready {
                                    None => break,
                                    Some(Ok(Some(bytes))) => {
                                        turn_bytes += bytes.len();
                                        handle_frame(&mut session, &bytes)?;
                                    }
                                    // The stream's end is acted on once what came before it is.
                                    Some(end) => {
                                        transport_ended |= end.is_err();
                                        ended = Some(end.map(|_| ()).map_err(|e| e.to_string()));
                                        break;
                                    }
                                }
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            transport_ended = true;
                            return Err(e.to_string());
                        }
                    },
                    push = pushes.recv() => {
                        // The pushes already waiting go together: their transfer events are
                        // recorded in one commit before any of them is sent.
                        let mut ready = vec![push];
                        while ready.len() < PUSHES_TOGETHER_MAX {
                            match pushes.try_recv() {
                                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                                    ready.push(Err(tokio::sync::broadcast::error::RecvError::Lagged(n)));
                                }
                                Err(_) => break,
                                Ok(p) => ready.push(Ok(p)),
                            }
                        }
                        let mut sendable = Vec::new();
                        let mut events = Vec::new();
                        for push in ready {
                            if let Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) = push {
                                // More local items came than this link took in time (a bulk import
                                // while it was busy): they were not pushed, so reconcile soon.
                                tracing::warn!(peer = %peer, missed, "pushes to a busy link were dropped; a sync round will carry them");
                                session.request_round(Instant::now());
                            }
                            if let Ok(push) = push {
                                let (doc, set, _, source) = &*push;
                                let echo = source.as_deref() == Some(peer.as_str());
                                if !echo && doc.is_none_or(|d| self.may_send_doc(&d, &peer)) {
                                    if let (Some(d), SetKind::Envelopes) = (doc, set) {
                                        events.extend(self.note_sent(d, &peer));
                                    }
                                    sendable.push(push);
                                }
                            }
                        }
                        // Events of one record named twice are recorded once (markers).
                        let held = self.held_back(&peer, events).await;
                        for push in sendable {
                            let (doc, set, blob, _) = &*push;
                            if doc.is_some_and(|d| held.contains(&d)) {
                                continue; // a later round carries it, its event recorded first
                            }
                            session.push_local(Instant::now(), *set, blob.clone());
                        }
                    }
                    Some((ids, result)) = stored_rx.recv(), if storing > 0 => {
                        storing -= 1;
                        result?;
                        {
                            let sets = lock(&self.sets);
                            for id in ids {
                                session.stored(Instant::now(), id, &self.view(&sets));
                            }
                        }
                        if !store_queue.is_empty() {
                            self.start_store(&peer, &mut store_queue, &stored_tx);
                            storing += 1;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        let sets = lock(&self.sets);
                        session.handle_timeout(Instant::now(), &self.view(&sets));
                    }
                    Ok(()) = rounds_wanted.changed() => session.request_round(Instant::now()),
                    _ = out.closed() => {
                        transport_ended = true;
                        return Err("link writer stopped".to_string());
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        .await;
        // A writer that stopped early (a failed send) holds the reason the link failed. Its
        // handle is then spent: polling a finished JoinHandle again panics.
        let writer_stopped = outcome.is_err() && writer_task.is_finished();
        let outcome = match outcome {
            Err(e) if writer_stopped => match (&mut writer_task).await {
                Ok(Err(reason)) => Err(reason),
                _ => Err(e),
            },
            outcome => outcome,
        };
        // A failure of this side (a store that failed, say) is told to the peer in an Error
        // frame, so it shows the reason in `peers` and backs off, instead of seeing the link
        // merely closed and dialing again at once. The session sent one already for a frame it
        // refused.
        if let Err(e) = &outcome {
            if !session.is_closed() {
                if !writer_stopped && !transport_ended {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                session.close(ErrorCode::Other, &error_text(e));
                while let Some(frame) = session.poll_transmit() {
                    let _ = send(frame);
                }
            }
        }
        self.set_status(&peer, |s| {
            debug_assert!(s.links > 0, "a link ends that was never counted up");
            s.links = s.links.saturating_sub(1);
            // The end of an old link while a newer one runs is logged below, not shown as the
            // peer's error.
            if let (Err(e), 0) = (&outcome, s.links) {
                s.last_error = Some(e.clone());
            }
            // The side that answered the round cannot tell that the other stored what it
            // fetched: a link that ends in a failure (the peer's store failed and said so)
            // does not leave its last round as `last_sync`.
            if let (true, Some(before)) = (
                failed.load(std::sync::atomic::Ordering::Relaxed),
                answered_mark,
            ) {
                s.last_sync = before.last_sync;
                s.own_log_at_sync = before.own_log_at_sync;
            }
        });
        match outcome {
            Ok(()) => tracing::info!(peer = %peer, "replication link closed"),
            Err(e) => tracing::warn!(peer = %peer, error = %e, "replication link failed"),
        }
        // Logged first: a peer that sees the link end may look for the reason at once. Then the
        // writer sends what is queued (a last Error frame says why) and finishes the stream,
        // bounded in time.
        drop(out);
        if !writer_stopped {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
        }
        connection.close(0u32.into(), b"bye");
        synced && !failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes which peer sent the items about to be stored, so their announcement is not pushed
    /// back to it (see [`Push`]).
    fn remember_sources(&self, peer: &str, hashes: impl Iterator<Item = [u8; 32]>) {
        let mut from = lock(&self.received_from);
        for hash in hashes {
            if from.len() >= RECEIVED_FROM_MAX {
                from.clear();
            }
            from.insert(hash, peer.to_string());
        }
    }

    fn may_send_doc(&self, doc: &DocId, peer: &str) -> bool {
        let sets = lock(&self.sets);
        match sets.docs.get(doc) {
            Some(info) => self
                .verdict(doc, info, peer, &sets.origin_refusals)
                .may_send(),
            None => false,
        }
    }

    fn view<'a>(&'a self, sets: &'a Sets) -> View<'a> {
        View { rep: self, sets }
    }

    async fn act(&self, peer: &str, session: &mut Session, action: Action) -> Result<(), String> {
        match action {
            Action::Connected { .. } => {}
            Action::Store(batch) => self.store(peer, session, batch).await?,
            Action::Fetch {
                request, set, ids, ..
            } => {
                // A Want names up to a thousand envelopes to read: off the worker.
                let heavy = ids.len() >= FETCH_OFF_WORKER_IDS_MIN;
                let found = if set == SetKind::Envelopes {
                    let (found, events) =
                        crate::office::off_worker_if(heavy, || self.fetch_envelopes(peer, &ids));
                    let held = self.held_back(peer, events).await;
                    found
                        .into_iter()
                        .filter(|(_, _, doc)| !held.contains(doc))
                        .map(|(id, bytes, _)| (id, bytes))
                        .collect()
                } else {
                    crate::office::off_worker_if(heavy, || self.fetch(peer, set, &ids))
                };
                session.fetched(request, found);
            }
            Action::Reject { peer, set, reason } => {
                self.set_status(&peer, |s| s.rejected += 1);
                tracing::warn!(peer = %peer, set = set.name(), reason = %reason, "rejected replicated item");
            }
            // Recorded by `run_link` once what the round brought is stored.
            Action::Synced { .. } => {}
            Action::FetchLeaves {
                request,
                office,
                size,
                first,
                count,
            } => {
                let found = self.serve_leaves(office, size, first, count).await;
                session.leaves_fetched(request, found);
            }
        }
        Ok(())
    }

    async fn store(
        &self,
        peer: &str,
        session: &mut Session,
        batch: StoreBatch,
    ) -> Result<(), String> {
        let id = batch.id;
        match batch.set {
            SetKind::Keys => {
                let received = {
                    let mut sets = lock(&self.sets);
                    if sets.received.len() + batch.blobs.len() > RECEIVED_KEYS_MAX {
                        // Bounded memory: keys not yet used are fetched again next round.
                        sets.received = Arc::default();
                        sets.received_keys = ItemSet::new();
                    }
                    for blob in &batch.blobs {
                        if let Some((id, key)) = parse_key_blob(&blob.bytes) {
                            let item = key_item(&id);
                            if !sets.keys.contains(&item) {
                                sets.received_keys.insert(item);
                            }
                            Arc::make_mut(&mut sets.received).insert(id, key);
                        }
                    }
                    sets.received.clone()
                };
                // Records that arrived before their key can be opened now.
                self.office
                    .reopen_pending(&received, PENDING_REOPEN_MAX)
                    .await
                    .map_err(|e| format!("cannot open records from {peer}: {e}"))?;
            }
            SetKind::Envelopes => self.store_envelopes(peer, vec![batch]).await?,
            SetKind::Tombstones => {
                let mut todo = Vec::with_capacity(batch.blobs.len());
                for blob in &batch.blobs {
                    let Some(doc) = blob.info.covers_doc else {
                        continue;
                    };
                    todo.push((doc, blob.info.item.id, blob.bytes.clone()));
                }
                self.remember_sources(peer, todo.iter().map(|(_, hash, _)| *hash));
                let purged = self
                    .office
                    .apply_remote_tombstones(todo.clone())
                    .await
                    .map_err(|e| format!("cannot apply tombstones from {peer}: {e}"))?;
                for (doc, hash, bytes) in todo {
                    if let Ok(t) = Tombstone::decode(&bytes) {
                        self.forget_doc(&doc, (tombstone_item(&t, hash), bytes));
                    }
                }
                if purged > 0 {
                    tracing::info!(peer = %peer, records = purged, "applied tombstones");
                }
            }
            // Every office's log is followed (`log_frontier`), so checkpoints come as log work.
            SetKind::Checkpoints => match batch.log {
                Some(LogBatch::Append {
                    office,
                    first,
                    leaves,
                    checkpoint,
                }) => {
                    self.store_log_leaves(peer, &office, first, leaves, checkpoint)
                        .await?
                }
                Some(LogBatch::Equivocation { office, note }) => {
                    let held = lock(&self.sets)
                        .checkpoint_of
                        .get(&office)
                        .map(|c| c.2.clone())
                        .unwrap_or_default();
                    self.keep_equivocation(
                        peer,
                        &office,
                        held,
                        note,
                        "two checkpoints of one size with different roots".into(),
                    )
                    .await;
                }
                None => {}
            },
        }
        let sets = lock(&self.sets);
        session.stored(Instant::now(), id, &self.view(&sets));
        Ok(())
    }

    /// Starts a task storing the envelope batches at the front of `queued`, as many as one
    /// ingest takes ([`INGEST_ENVELOPES_MAX`]; at least one), in one durable commit; it reports
    /// their ids on `done`.
    fn start_store(
        self: &Arc<Self>,
        peer: &str,
        queued: &mut VecDeque<StoreBatch>,
        done: &tokio::sync::mpsc::Sender<StoreDone>,
    ) {
        let mut batches = Vec::new();
        let mut envelopes = 0;
        while let Some(next) = queued.front() {
            let n = next.envelopes.len();
            if !batches.is_empty() && envelopes + n > INGEST_ENVELOPES_MAX {
                break;
            }
            envelopes += n;
            batches.push(queued.pop_front().expect("front() was Some"));
        }
        debug_assert!(!batches.is_empty(), "start_store with nothing queued");
        let (rep, peer, done) = (self.clone(), peer.to_string(), done.clone());
        tokio::spawn(async move {
            let ids = batches.iter().map(|b| b.id).collect();
            let result = rep.store_envelopes(&peer, batches).await;
            let _ = done.send((ids, result)).await;
        });
    }

    /// Ingests batches of verified envelopes in one durable commit; returns once they are
    /// durable.
    async fn store_envelopes(&self, peer: &str, batches: Vec<StoreBatch>) -> Result<(), String> {
        debug_assert!(
            batches.iter().all(|b| b.set == SetKind::Envelopes),
            "envelope batches"
        );
        let envelopes: Vec<VerifiedEnvelope> =
            batches.into_iter().flat_map(|b| b.envelopes).collect();
        #[cfg(test)]
        if self.stores_fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(format!(
                "cannot store envelopes from {peer}: storage: commit failed: Previous I/O error occurred (test)"
            ));
        }
        let received = lock(&self.sets).received.clone();
        self.remember_sources(peer, envelopes.iter().map(|e| e.hash()));
        let mut report = self
            .office
            .ingest(envelopes, &received)
            .await
            .map_err(|e| format!("cannot store envelopes from {peer}: {e}"))?;
        self.settle_pending(peer, &received, &mut report).await?;
        // Refused records: reported as the session reports what fails verification, and
        // acknowledged like them (a push is not sent again; a round offers them again later).
        for reason in &report.rejected {
            tracing::warn!(peer = %peer, set = SetKind::Envelopes.name(), reason = %reason, "rejected replicated item");
        }
        self.set_status(peer, |s| {
            s.stored += report.stored as u64;
            s.dropped_ingest += report.tombstoned as u64;
            s.rejected += report.rejected.len() as u64;
        });
        Ok(())
    }

    /// After an ingest that used the received keys `received`: re-opens the records it left
    /// pending whose key arrived meanwhile, and asks every link for an early round if some are
    /// still pending.
    async fn settle_pending(
        &self,
        peer: &str,
        received: &Arc<HashMap<KeyId, Zeroizing<[u8; 32]>>>,
        report: &mut crate::office::IngestReport,
    ) -> Result<(), String> {
        // A record stored as pending for want of its key must not miss that key arriving while
        // this batch was merged: the key's own batch re-opens pending records as it arrives
        // (`store`), but it may have looked before this commit made the record pending, and the
        // key then counts as held (`received_keys`), so no peer sends it again. Each side writes
        // first (the key into `received`, the pending record into the store) and then reads the
        // other's, so one of the two sees both. While this batch held its copy, any arrival
        // replaced the map (`Arc::make_mut` copies a shared map): an unchanged pointer means
        // nothing arrived. (Seen in review while looking into the case below, not in a run.)
        if report.pending > 0 {
            let now = lock(&self.sets).received.clone();
            if !Arc::ptr_eq(&now, received) {
                let reopened = self
                    .office
                    .reopen_pending(&now, PENDING_REOPEN_MAX)
                    .await
                    .map_err(|e| format!("cannot open records from {peer}: {e}"))?;
                report.pending = report.pending.saturating_sub(reopened.records);
            }
        }
        if report.pending > 0 {
            // What the records wait for may be held by a peer already, but it arrives only with a
            // sync round: a key is pushed only by the record's author, to the peers linked to it
            // then. So ask every link for a round now rather than at the next periodic one
            // (`resync_interval`, 60 s on a link that stays up): the peer that sent the record
            // may have lacked the key itself. Seed 1536730338 of tests/partition_heals.rs: a
            // record relayed by an office that had not received its key yet was pending at uk
            // while every digest already agreed.
            self.rounds_wanted.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Waits for one envelope batch stored by its own task and tells the session.
    async fn finish_store(
        &self,
        session: &mut Session,
        stored_rx: &mut tokio::sync::mpsc::Receiver<StoreDone>,
        storing: &mut usize,
    ) -> Result<(), String> {
        debug_assert!(*storing > 0, "waiting for a store that was never started");
        let (ids, result) = stored_rx
            .recv()
            .await
            .ok_or_else(|| "a store task vanished".to_string())?;
        *storing -= 1;
        result?;
        let sets = lock(&self.sets);
        for id in ids {
            session.stored(Instant::now(), id, &self.view(&sets));
        }
        Ok(())
    }

    /// The envelopes `peer` asks for that policy lets it have, each with its record, and the
    /// transfer events to make durable before they are sent ([`Self::held_back`]).
    #[allow(clippy::type_complexity)]
    fn fetch_envelopes(
        &self,
        peer: &str,
        ids: &[[u8; 32]],
    ) -> (Vec<([u8; 32], Vec<u8>, DocId)>, Vec<TransferEvent>) {
        let found = match self.office.store().envelopes(ids) {
            Ok(found) => found,
            Err(e) => {
                // Answered as missing: the peer asks again next round.
                tracing::error!(error = %e, "cannot read envelopes a peer asked for");
                return (Vec::new(), Vec::new());
            }
        };
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut docs = HashSet::new();
        for (id, found) in ids.iter().zip(found) {
            let Some((doc, bytes)) = found else { continue };
            if !self.may_send_doc(&doc, peer) {
                continue; // policy: answered as missing
            }
            if docs.insert(doc) {
                events.extend(self.note_sent(&doc, peer));
            }
            out.push((*id, bytes, doc));
        }
        (out, events)
    }

    /// Records `events` before their records are sent to `peer` ([`Self::record_before_sending`]);
    /// returns the records that must not be sent: all those the events name if they could not
    /// be recorded (the peer still lacks them, so it asks again at its next round).
    async fn held_back(&self, peer: &str, events: Vec<TransferEvent>) -> HashSet<DocId> {
        let docs: HashSet<DocId> = events.iter().map(|e| e.record).collect();
        match self.record_before_sending(events).await {
            Ok(()) => HashSet::new(),
            Err(e) => {
                tracing::error!(peer = %peer, records = docs.len(), error = %e, "records held back: their transfer events must be recorded before they are sent");
                self.set_status(peer, |s| {
                    s.last_error = Some(format!(
                        "{} records held back from this peer until their transfer events are recorded: {e}",
                        docs.len()
                    ))
                });
                docs
            }
        }
    }

    fn fetch(&self, peer: &str, set: SetKind, ids: &[[u8; 32]]) -> Vec<([u8; 32], Vec<u8>)> {
        let mut out = Vec::new();
        match set {
            SetKind::Envelopes => {
                // The store says which record each envelope belongs to (an in-memory map of
                // every envelope's record cost ~100 bytes per record).
                let found = match self.office.store().envelopes(ids) {
                    Ok(found) => found,
                    Err(e) => {
                        // Answered as missing: the peer asks again next round.
                        tracing::error!(error = %e, "cannot read envelopes a peer asked for");
                        return out;
                    }
                };
                for (id, found) in ids.iter().zip(found) {
                    let Some((doc, bytes)) = found else { continue };
                    if !self.may_send_doc(&doc, peer) {
                        continue; // policy: answered as missing
                    }
                    out.push((*id, bytes));
                }
            }
            SetKind::Keys => {
                for id in ids {
                    let (kid, hidden) = {
                        let sets = lock(&self.sets);
                        let kid = sets.key_ids.get(id).copied();
                        let hidden = sets
                            .hidden
                            .get(peer)
                            .is_some_and(|h| h.1.contains(&Item::new(0, *id)));
                        (kid, hidden)
                    };
                    let Some(kid) = kid else { continue };
                    if hidden {
                        continue;
                    }
                    if let Ok(key) = self.office.keys.key(&kid) {
                        out.push((*id, key_blob(&kid, &key)));
                    }
                }
            }
            SetKind::Tombstones => {
                let sets = lock(&self.sets);
                for id in ids {
                    if let Some((_, bytes)) = sets.tombstone_bytes.get(id) {
                        out.push((*id, bytes.clone()));
                    }
                }
            }
            SetKind::Checkpoints => {
                let sets = lock(&self.sets);
                for id in ids {
                    if let Some((_, _, note)) = sets
                        .checkpoint_of
                        .values()
                        .find(|(item, _, _)| item.id == *id)
                    {
                        out.push((*id, note.clone()));
                    }
                }
            }
        }
        out
    }
}

/// `last_sync` and what goes with it, as before a round was recorded.
#[derive(Debug, Default, Clone, Copy)]
struct SyncMark {
    last_sync: Option<chrono::DateTime<chrono::Utc>>,
    own_log_at_sync: Option<u64>,
}

/// Whether this office is in sync with a peer: a link is up, no error since it came up, and a
/// round completed on it with everything stored within [`IN_SYNC_WITHIN`].
fn in_sync(s: &PeerStatus) -> bool {
    s.links > 0
        && s.last_error.is_none()
        && s.last_sync.is_some_and(|t| {
            chrono::Utc::now()
                .signed_duration_since(t)
                .to_std()
                .unwrap_or_default()
                <= IN_SYNC_WITHIN
        })
}

/// `{"envelopes": {"round_trips", "bytes_sent", "bytes_received", "have", "need",
/// "complete"}, …}`: the last reconciliation of each set this office initiated on a link.
/// An Error frame's text: at most `frame::ERROR_TEXT_BYTES_MAX` bytes of printable ASCII.
fn error_text(e: &str) -> String {
    let mut t: String = e
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if t.len() > consentd_sync::frame::ERROR_TEXT_BYTES_MAX {
        t.truncate(consentd_sync::frame::ERROR_TEXT_BYTES_MAX - 3);
        t.push_str("...");
    }
    t
}

fn last_recon_json(r: &[ReconCounters; SetKind::COUNT]) -> Value {
    let mut out = serde_json::Map::new();
    for set in SetKind::ALL {
        let c = r[set.index()];
        out.insert(
            set.name().to_string(),
            json!({
                "round_trips": c.round_trips,
                "bytes_sent": c.bytes_sent,
                "bytes_received": c.bytes_received,
                "have": c.have,
                "need": c.need,
                "complete": c.complete,
            }),
        );
    }
    Value::Object(out)
}

/// A stored envelope's item in the envelope set: as `VerifiedEnvelope::item` makes it, from the
/// change's authoring time read without expanding the change. `None`: not a change.
fn envelope_item(env: &Envelope, hash: [u8; 32]) -> Option<Item> {
    let secs = change_time(&env.change)?;
    Some(Item::new(
        consentd_sync::envelope::item_time(&env.doc_id, secs),
        hash,
    ))
}

/// A stored change's authoring time in seconds (negative times count as 0). Read from the
/// header without expanding the change (`change_chunk`); Automerge answers for a layout that
/// reader does not expect. `None`: not a change.
fn change_time(change: &[u8]) -> Option<u64> {
    let time = match consentd_sync::change_chunk::change_time(change) {
        Some(t) => t,
        None => automerge::Change::try_from(change).ok()?.timestamp(),
    };
    debug_assert_eq!(
        Some(time),
        automerge::Change::try_from(change)
            .ok()
            .map(|c| c.timestamp()),
        "the header reader agrees with Automerge"
    );
    Some(time.max(0) as u64)
}

/// Holds a network's set builds until a test lets them go, so a test can see the daemon while
/// its replication is starting, however small its store.
#[cfg(test)]
pub(crate) mod build_gate {
    use std::collections::HashMap;
    use std::sync::{mpsc, Mutex};

    static GATES: Mutex<Option<HashMap<String, mpsc::Receiver<()>>>> = Mutex::new(None);

    /// Builds for `network` wait until the returned sender sends or is dropped.
    pub(crate) fn close(network: &str) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        let mut gates = GATES.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .get_or_insert_with(HashMap::new)
            .insert(network.to_string(), rx);
        tx
    }

    pub(super) fn wait(network: &str) {
        let gate = {
            let mut gates = GATES.lock().unwrap_or_else(|p| p.into_inner());
            gates.as_mut().and_then(|g| g.remove(network))
        };
        if let Some(rx) = gate {
            let _ = rx.recv();
        }
    }
}

/// The session's view of this office: the sets under one lock, and the store for tombstones.
struct View<'a> {
    rep: &'a Replicator,
    sets: &'a Sets,
}

impl Local for View<'_> {
    fn offered(&self, peer: &str, set: SetKind) -> Box<dyn SetView + '_> {
        let hidden = self.sets.hidden.get(peer);
        match (set, hidden) {
            (SetKind::Envelopes, Some(h)) => Box::new(Without::new(&self.sets.envelopes, &h.0)),
            (SetKind::Envelopes, None) => Box::new(&self.sets.envelopes),
            (SetKind::Keys, hidden) => {
                let stored: Box<dyn SetView> = match hidden {
                    Some(h) => Box::new(Without::new(&self.sets.keys, &h.1)),
                    None => Box::new(&self.sets.keys),
                };
                Box::new(Union::new(stored, &self.sets.received_keys))
            }
            // Tombstones name no one: every peer gets every one.
            (SetKind::Tombstones, _) => Box::new(&self.sets.tombstones),
            // Checkpoints and leaves name no one: every peer gets every office's log.
            (SetKind::Checkpoints, _) => Box::new(&self.sets.checkpoints),
        }
    }

    fn holds(&self, set: SetKind, item: &Item) -> bool {
        match set {
            SetKind::Envelopes => self.sets.envelopes.contains(item),
            SetKind::Keys => {
                self.sets.keys.contains(item) || self.sets.received_keys.contains(item)
            }
            SetKind::Tombstones => self.sets.tombstones.contains(item),
            // Held when it is ours, or older than what we hold of that log (nothing to fetch).
            SetKind::Checkpoints => {
                let prefix: [u8; 16] = item.id[..16].try_into().expect("16 bytes");
                let Some(office) = self.rep.log_ids.get(&prefix) else {
                    return false;
                };
                if *office == self.rep.me {
                    // Ours: held when it is our latest, no larger than the one our log
                    // reproduced at start, signed in this run or found reproduced since. Any
                    // other is fetched and checked against our log (`verify_blob`): a data
                    // directory put back from an older copy signs checkpoints that do not
                    // extend what it published, larger ones included, so "older than our
                    // latest" proves nothing.
                    let start = self
                        .rep
                        .own_start_size
                        .load(std::sync::atomic::Ordering::Relaxed);
                    return self
                        .sets
                        .checkpoint_of
                        .get(office)
                        .is_some_and(|(held, _, _)| held.id == item.id)
                        || item.timestamp <= start
                        || lock(&self.rep.own_checkpoints_checked).contains(&item.id);
                }
                let held_leaves = self.sets.logs.get(office).map_or(0, Frontier::size);
                match self.sets.checkpoint_of.get(office) {
                    Some((held, _, _)) => {
                        held.id == item.id
                            || held.timestamp > item.timestamp
                            || held_leaves > item.timestamp
                    }
                    None => held_leaves > item.timestamp,
                }
            }
        }
    }

    fn is_tombstoned(&self, doc_id: &[u8; 16]) -> bool {
        self.rep.office.is_tombstoned(doc_id).unwrap_or(false)
    }

    fn verify_blob(&self, set: SetKind, blob: &[u8]) -> Result<BlobInfo, String> {
        match set {
            SetKind::Keys => {
                let (id, _) =
                    parse_key_blob(blob).ok_or_else(|| "malformed subject key".to_string())?;
                // A key an erasure or a retention pass destroyed here is refused by ingest, for
                // any record but one of the office whose records it sealed (keystore.rs).
                Ok(BlobInfo {
                    item: key_item(&id),
                    office: String::new(),
                    covers_doc: None,
                })
            }
            SetKind::Tombstones => {
                let t = Tombstone::decode(blob).map_err(|e| e.to_string())?;
                // Dated in this office's future: signed by an office whose clock runs ahead (a
                // relay passes it on), whose retention pass deleted what is due only then.
                let ahead_s = t.time.saturating_sub(unix_s_now());
                // And dated before 1970: nothing an office records happened before (local
                // times have the same floor, `office::event_time`); i64::MIN was accepted.
                if t.time < 0 {
                    return Err(format!(
                        "a tombstone dated {} s before 1970-01-01: no office deleted anything then",
                        t.time.unsigned_abs()
                    ));
                }
                if ahead_s > CLOCK_SKEW_MAX.as_secs() as i64 {
                    return Err(format!(
                        "a tombstone dated {ahead_s} s ahead of this office's clock (at most {} s): its signer's clock runs ahead, and it would delete now what is due only then",
                        CLOCK_SKEW_MAX.as_secs()
                    ));
                }
                let hash = t.hash();
                let verified = tombstone::verify(t, &self.rep.roster).map_err(|e| e.to_string())?;
                Ok(BlobInfo {
                    item: tombstone_item(verified.tombstone(), hash),
                    office: verified.office().to_string(),
                    covers_doc: Some(verified.tombstone().doc_id),
                })
            }
            SetKind::Checkpoints => {
                let note = std::str::from_utf8(blob).map_err(|_| "checkpoint is not UTF-8")?;
                let v = tlog::verify(note, &self.rep.roster).map_err(|e| e.to_string())?;
                if v.office == self.rep.me {
                    // Ours, signed by our key, yet not what `holds` calls held: either older
                    // than our latest (nothing to do) or one our log does not reproduce.
                    if let Some(detail) = self.rep.own_checkpoint_contradiction(&v.checkpoint) {
                        self.rep.own_log_contradicted(note, &detail);
                        return Err(format!(
                            "a checkpoint of this office's own log that its log does not reproduce: {detail}"
                        ));
                    }
                    let mut checked = lock(&self.rep.own_checkpoints_checked);
                    if checked.len() >= OWN_CHECKPOINTS_CHECKED_MAX {
                        checked.clear();
                    }
                    checked.insert(checkpoint_item(&v.checkpoint).id);
                    return Err(format!(
                        "an older checkpoint of this office's own log ({} leaves)",
                        v.checkpoint.size
                    ));
                }
                // A retired office's log as last checkpointed here is final: it takes part in
                // no session, so a larger checkpoint of it can only be one signed after it left
                // (or one that did not reach this office before), and is refused.
                if self.rep.roster.is_retired(&v.office) {
                    let held = self
                        .sets
                        .checkpoint_of
                        .get(&v.office)
                        .map(|(_, cp, _)| cp.size);
                    if held.is_none_or(|h| v.checkpoint.size > h) {
                        return Err(format!(
                            "a checkpoint of office {} ({} leaves), which is retired in the roster (serial {}): its log as last checkpointed here ({} leaves) is final",
                            v.office,
                            v.checkpoint.size,
                            self.rep.roster.roster().serial,
                            held.unwrap_or(0)
                        ));
                    }
                }
                Ok(BlobInfo {
                    item: checkpoint_item(&v.checkpoint),
                    office: v.office,
                    covers_doc: None,
                })
            }
            SetKind::Envelopes => Err("envelopes are not blobs".into()),
        }
    }

    fn log_frontier(&self, office: &str) -> Option<Frontier> {
        if office == self.rep.me || self.rep.roster.office(office).is_none() {
            return None;
        }
        Some(self.sets.logs.get(office).cloned().unwrap_or_default())
    }
}

/// Up to `max` ids of `watched` after `cursor`, then from the start: a pass over a watched set
/// too large for one pass takes them in turn.
fn in_turn(watched: &BTreeSet<DocId>, cursor: Option<DocId>, max: usize) -> Vec<DocId> {
    use std::ops::Bound::{Excluded, Unbounded};
    let after = cursor.map_or(Unbounded, Excluded);
    watched
        .range((after, Unbounded))
        .chain(watched.iter())
        .take(max.min(watched.len()))
        .copied()
        .collect()
}

/// This office's wall clock in Unix seconds (a clock before 1970 reads 0).
fn unix_s_now() -> i64 {
    i64::try_from(unix_ms_now() / 1000).unwrap_or(i64::MAX)
}

/// This office's wall clock in Unix milliseconds, for its Hellos (a clock before 1970 reads 0).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Resolves the peers of a config against the roster.
pub fn peers_of(config: &crate::config::Config) -> Vec<(String, SocketAddr)> {
    config
        .peers
        .iter()
        .map(|p| (p.office.clone(), p.address))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Request};

    /// `de` and `nl` of a new two-office network, as the daemon prepares them, and a runtime.
    fn two_offices(
        dir: &std::path::Path,
    ) -> (
        crate::daemon::Prepared,
        crate::daemon::Prepared,
        tokio::runtime::Runtime,
    ) {
        offices_of(dir, "de", "nl")
    }

    /// Offices `a` and `b` of a new two-office network, prepared, and a runtime.
    fn offices_of(
        dir: &std::path::Path,
        a: &str,
        b: &str,
    ) -> (
        crate::daemon::Prepared,
        crate::daemon::Prepared,
        tokio::runtime::Runtime,
    ) {
        let offices = crate::network::parse_offices(&format!("{a},{b}")).unwrap();
        crate::network::init(dir, &offices, None, "early-round").unwrap();
        let prepare = |o: &str| crate::daemon::prepare(&dir.join(o).join("consentd.toml")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        (prepare(a), prepare(b), rt)
    }

    /// The replicator of a prepared office, not started: its methods are called directly.
    fn replicator(office: &crate::daemon::Prepared) -> Arc<Replicator> {
        let policy = TransferPolicy::from_config(&office.config.transfer).unwrap();
        Replicator::new(
            office.office.clone(),
            office.roster.clone(),
            policy,
            peers_of(&office.config),
        )
        .unwrap()
    }

    /// A new subject's grant at `nl`: its record's id, its envelopes as `de` verifies them, and
    /// the subject key sealing it.
    fn granted_at_nl(
        de: &crate::daemon::Prepared,
        nl: &crate::daemon::Prepared,
        rt: &tokio::runtime::Runtime,
        subject: &str,
    ) -> (DocId, Vec<VerifiedEnvelope>, (KeyId, Zeroizing<[u8; 32]>)) {
        granted_at_nl_for(de, nl, rt, subject, "marketing")
    }

    /// [`granted_at_nl`] for `purpose`.
    fn granted_at_nl_for(
        de: &crate::daemon::Prepared,
        nl: &crate::daemon::Prepared,
        rt: &tokio::runtime::Runtime,
        subject: &str,
        purpose: &str,
    ) -> (DocId, Vec<VerifiedEnvelope>, (KeyId, Zeroizing<[u8; 32]>)) {
        let answer = rt
            .block_on(
                nl.office
                    .execute(Request::ConsentGrant(protocol::ConsentGrant {
                        evidence: Some("web form v3".into()),
                        ..protocol::ConsentGrant::new(subject, purpose, "consent")
                    })),
            )
            .unwrap();
        let doc: DocId = hex::decode(answer["id"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let envelopes = nl
            .office
            .store()
            .doc_envelopes(&doc)
            .unwrap()
            .iter()
            .map(|b| {
                consentd_sync::envelope::verify(Envelope::decode(b).unwrap(), &de.roster).unwrap()
            })
            .collect();
        // The stored projection is the sealed record, which names its key.
        let (_, projection) = nl.office.store().projection(&doc).unwrap().unwrap();
        let record = crate::record::Record::from_projection(&projection).unwrap();
        let kid = crate::sealed::record_key_id(&record).expect("a grant names its subject");
        let key = nl.office.keys.key(&kid).unwrap();
        (doc, envelopes, (kid, key))
    }

    /// A record that arrives without its key is stored pending, and every link is asked for a
    /// round at once: the key may be at another peer already, and would otherwise come with the
    /// next periodic round. A record that arrives with its key asks for nothing.
    #[test]
    fn a_record_stored_without_its_key_asks_every_link_for_a_round() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let rep = replicator(&de);
        let wanted = rep.rounds_wanted.subscribe();
        let batch = |envelopes| StoreBatch {
            id: 0,
            set: SetKind::Envelopes,
            envelopes,
            blobs: Vec::new(),
            log: None,
        };

        // With its key already received: readable, and no round asked for.
        let (_, envelopes, (kid, key)) = granted_at_nl(&de, &nl, &rt, "keyed@example.com");
        Arc::make_mut(&mut lock(&rep.sets).received).insert(kid, key);
        rt.block_on(rep.store_envelopes("nl", vec![batch(envelopes)]))
            .unwrap();
        assert_eq!(de.office.pending_records().unwrap(), 0);
        assert!(
            !wanted.has_changed().unwrap(),
            "a readable record asks for no round"
        );

        // Without it: pending, and a round asked for.
        let (doc, envelopes, _) = granted_at_nl(&de, &nl, &rt, "keyless@example.com");
        rt.block_on(rep.store_envelopes("nl", vec![batch(envelopes)]))
            .unwrap();
        assert_eq!(de.office.pending_records().unwrap(), 1);
        assert!(de.office.read_record(&doc).unwrap().is_none(), "pending");
        assert!(
            wanted.has_changed().unwrap(),
            "a pending record asks for a round"
        );
    }

    /// A subject key a deletion destroyed here is refused when a peer offers it again with a
    /// record of another office than the one whose records it sealed: the record is refused,
    /// and the erased grant stays unreadable. Found by an exploratory session: an office that
    /// kept an erased subject's key pushed it with a record sealed under it, and the erased
    /// grant was readable again at every office. The office whose records it sealed (which
    /// made the key) may still bring one it made before: an erasure's sweep must read it.
    #[test]
    fn a_subject_key_destroyed_here_is_refused_when_offered_again() {
        let dir = tempfile::tempdir().unwrap();
        let offices = crate::network::parse_offices("de,nl,uk").unwrap();
        crate::network::init(dir.path(), &offices, None, "destroyed").unwrap();
        let prepare =
            |o: &str| crate::daemon::prepare(&dir.path().join(o).join("consentd.toml")).unwrap();
        let (de, nl, uk) = (prepare("de"), prepare("nl"), prepare("uk"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (doc, envelopes, (kid, key)) = granted_at_nl(&de, &nl, &rt, "erin@example.com");
        let root =
            consentd_sync::first_change::new_document(&envelopes[0].envelope().change).unwrap();
        let heads: Vec<[u8; 32]> = envelopes.iter().map(VerifiedEnvelope::hash).collect();
        let received: HashMap<KeyId, Zeroizing<[u8; 32]>> = [(kid, key.clone())].into();
        rt.block_on(de.office.ingest(envelopes, &received)).unwrap();
        assert!(de.office.read_record(&doc).unwrap().is_some());
        // An erasure reaches de: the record goes, and the key no record here uses any more.
        let t = Tombstone::sign(
            doc,
            heads,
            tombstone::Reason::Erasure,
            "request/erasure",
            unix_s_now(),
            nl.office.signing_key(),
        )
        .unwrap();
        rt.block_on(
            de.office
                .apply_remote_tombstones(vec![(doc, t.hash(), t.encode())]),
        )
        .unwrap();
        assert!(de.office.keys.key(&kid).is_err(), "destroyed");
        assert!(de.office.keys.was_destroyed(&kid).unwrap(), "remembered");

        // uk kept the key: it signs the erased grant again as a record of its own.
        let mut forged = root.clone();
        let again: DocId = crate::office::time_ordered_id();
        forged.insert("id".into(), Value::String(hex::encode(again)));
        forged.insert("office".into(), json!("uk"));
        let signing = uk.office.signing_key();
        let actor = consentd_sync::envelope::actor_for(
            &signing.verifying_key(),
            consentd_sync::envelope::new_incarnation(),
        );
        let authored =
            consentd_sync::authoring::first_change(actor.to_bytes(), unix_s_now(), &forged)
                .unwrap();
        let env = consentd_sync::envelope::sign_authored(again, authored, signing);
        let env = consentd_sync::envelope::verify(env, &de.roster).unwrap();
        let report = rt.block_on(de.office.ingest(vec![env], &received)).unwrap();
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        assert!(de.office.store().projection(&again).unwrap().is_none());
        assert!(de.office.keys.key(&kid).is_err(), "still destroyed");
        let subject = crate::subject::Subject::parse("erin@example.com").unwrap();
        let token = de.office.hasher.subject_token(&subject);
        assert!(
            de.office.records_by_key(&token).unwrap().is_empty(),
            "nothing of the subject reads here"
        );

        // nl, whose records the key sealed, still uses it: its record opens.
        let (own, envelopes, (same, _)) =
            granted_at_nl_for(&de, &nl, &rt, "erin@example.com", "sales");
        assert_eq!(
            same, kid,
            "nl's key for the subject seals its new record too"
        );
        let report = rt.block_on(de.office.ingest(envelopes, &received)).unwrap();
        assert!(report.rejected.is_empty(), "{report:?}");
        assert!(de.office.read_record(&own).unwrap().is_some());
    }

    /// nl's grant of `subject`, authored again as a first change nl signs with `edit` made to
    /// its root, under a new record id: what a roster office
    /// holding nl's keys can push. Returns the record and its envelope as de verifies it.
    fn resigned_at_nl(
        de: &crate::daemon::Prepared,
        nl: &crate::daemon::Prepared,
        rt: &tokio::runtime::Runtime,
        subject: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> (DocId, VerifiedEnvelope, (KeyId, Zeroizing<[u8; 32]>)) {
        let (_, envelopes, key) = granted_at_nl(de, nl, rt, subject);
        let mut root =
            consentd_sync::first_change::new_document(&envelopes[0].envelope().change).unwrap();
        let doc: DocId = crate::office::time_ordered_id();
        root.insert("id".into(), Value::String(hex::encode(doc)));
        edit(&mut root);
        let signing = nl.office.signing_key();
        let actor = consentd_sync::envelope::actor_for(
            &signing.verifying_key(),
            consentd_sync::envelope::new_incarnation(),
        );
        let authored =
            consentd_sync::authoring::first_change(actor.to_bytes(), unix_s_now(), &root).unwrap();
        let env = consentd_sync::envelope::sign_authored(doc, authored, signing);
        let verified = consentd_sync::envelope::verify(env, &de.roster).unwrap();
        (doc, verified, key)
    }

    /// One envelope batch of a peer's.
    fn batch_of(envelopes: Vec<VerifiedEnvelope>) -> StoreBatch {
        StoreBatch {
            id: 0,
            set: SetKind::Envelopes,
            envelopes,
            blobs: Vec::new(),
            log: None,
        }
    }

    fn rejected_from(rep: &Replicator, peer: &str) -> u64 {
        lock(&rep.status).get(peer).map_or(0, |s| s.rejected)
    }

    /// A record's origin is the office that signed its first change: a record nl signed that
    /// names de as its office is refused (logged, counted), not stored as de's. Found by an
    /// exploratory session: cn re-signed a consent record with `"office":"de"`, and de relayed
    /// it to uk and us, though cn's records stay in China.
    #[test]
    fn a_record_naming_another_office_than_its_first_signer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let rep = replicator(&de);
        let (doc, env, (kid, key)) = resigned_at_nl(&de, &nl, &rt, "wang@example.com", |r| {
            r.insert("office".into(), json!("de"));
        });
        Arc::make_mut(&mut lock(&rep.sets).received).insert(kid, key);
        rt.block_on(rep.store_envelopes("nl", vec![batch_of(vec![env])]))
            .unwrap();
        assert!(
            de.office.store().projection(&doc).unwrap().is_none(),
            "not stored"
        );
        assert_eq!(rejected_from(&rep, "nl"), 1);

        // The same record naming nl, its signer, is nl's record.
        let (doc, env, (kid, key)) = resigned_at_nl(&de, &nl, &rt, "li@example.com", |_| {});
        Arc::make_mut(&mut lock(&rep.sets).received).insert(kid, key);
        rt.block_on(rep.store_envelopes("nl", vec![batch_of(vec![env])]))
            .unwrap();
        assert!(de.office.read_record(&doc).unwrap().is_some(), "stored");
        assert_eq!(rejected_from(&rep, "nl"), 1);
    }

    /// A record with an event dated more than `CLOCK_SKEW_MAX` ahead of this office's clock is
    /// refused (logged, counted), as a tombstone so dated is; and a tombstone dated before 1970
    /// is refused. Found by an exploratory session: a withdrawal dated 2027-11-30 was stored,
    /// and a tombstone dated i64::MIN accepted.
    #[test]
    fn records_with_events_ahead_of_the_clock_and_tombstones_before_1970_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let rep = replicator(&de);
        let dated = |subject: &str, ahead: i64| {
            resigned_at_nl(&de, &nl, &rt, subject, |r| {
                let events = r.get_mut("events").unwrap().as_array_mut().unwrap();
                let mut withdrawal = events[0].clone();
                withdrawal["action"] = json!("withdraw");
                withdrawal["at"] = json!(crate::record::fmt_time(
                    chrono::Utc::now() + chrono::Duration::seconds(ahead)
                ));
                events.push(withdrawal);
            })
        };
        let (ahead, env, (kid, key)) = dated("ahead@example.com", 86_400);
        let (within, env2, (kid2, key2)) = dated("within@example.com", 30);
        {
            let mut sets = lock(&rep.sets);
            Arc::make_mut(&mut sets.received).insert(kid, key);
            Arc::make_mut(&mut sets.received).insert(kid2, key2);
        }
        rt.block_on(rep.store_envelopes("nl", vec![batch_of(vec![env, env2])]))
            .unwrap();
        assert!(
            de.office.store().projection(&ahead).unwrap().is_none(),
            "refused"
        );
        assert!(
            de.office.read_record(&within).unwrap().is_some(),
            "within the skew"
        );
        assert_eq!(rejected_from(&rep, "nl"), 1);

        let sets = lock(&rep.sets);
        let view = rep.view(&sets);
        let tombstone = |time: i64| {
            Tombstone::sign(
                [1; 16],
                vec![[2; 32]],
                tombstone::Reason::Erasure,
                "request/x",
                time,
                nl.office.signing_key(),
            )
            .unwrap()
            .encode()
        };
        for time in [i64::MIN, -1] {
            let refused = view.verify_blob(SetKind::Tombstones, &tombstone(time));
            assert!(
                refused.as_ref().is_err_and(|e| e.contains("before 1970")),
                "{time}: {refused:?}"
            );
        }
        assert!(view.verify_blob(SetKind::Tombstones, &tombstone(0)).is_ok());
        assert!(view
            .verify_blob(SetKind::Tombstones, &tombstone(unix_s_now()))
            .is_ok());
    }

    /// A validly signed envelope whose record fails the record checks (its `id` names another
    /// record; its `office` is missing) is refused alone (logged, counted): the batch's other
    /// records are stored and the link goes on. Found by an exploratory session: such an
    /// envelope failed the whole store, and the link with it, without a word to the peer.
    #[test]
    fn an_envelope_that_is_no_record_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let rep = replicator(&de);
        let other = hex::encode(crate::office::time_ordered_id());
        let (misnamed, env1, k1) = resigned_at_nl(&de, &nl, &rt, "a@example.com", |r| {
            r.insert("id".into(), json!(other));
        });
        let (officeless, env2, k2) = resigned_at_nl(&de, &nl, &rt, "b@example.com", |r| {
            r.remove("office");
        });
        let (good, env3, k3) = resigned_at_nl(&de, &nl, &rt, "c@example.com", |_| {});
        {
            let mut sets = lock(&rep.sets);
            for (kid, key) in [k1, k2, k3] {
                Arc::make_mut(&mut sets.received).insert(kid, key);
            }
        }
        rt.block_on(rep.store_envelopes("nl", vec![batch_of(vec![env1, env2, env3])]))
            .expect("the batch is stored, its bad records refused");
        assert!(de.office.store().projection(&misnamed).unwrap().is_none());
        assert!(de.office.store().projection(&officeless).unwrap().is_none());
        assert!(de.office.read_record(&good).unwrap().is_some());
        assert_eq!(rejected_from(&rep, "nl"), 2);
    }

    /// Records whose first change never comes are held pending up to a limit (the rest are not
    /// stored), and raise no transfer event. Found by an exploratory session: cn pushed 300
    /// second changes whose first never came; de stored them all, said nothing, and signed a
    /// refusal to uk and to us for each.
    #[test]
    fn pending_records_are_bounded_and_raise_no_transfer_events() {
        let dir = tempfile::tempdir().unwrap();
        let offices = crate::network::parse_offices("cn,de,uk").unwrap();
        crate::network::init(dir.path(), &offices, None, "orphans").unwrap();
        let prepare =
            |o: &str| crate::daemon::prepare(&dir.path().join(o).join("consentd.toml")).unwrap();
        let (cn, de) = (prepare("cn"), prepare("de"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        de.office
            .pending_records_max
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let rep = replicator(&de);
        // Second changes whose first change is never sent.
        let signing = cn.office.signing_key();
        let orphans: Vec<VerifiedEnvelope> = (0..5u64)
            .map(|i| {
                let actor = consentd_sync::envelope::actor_for(
                    &signing.verifying_key(),
                    consentd_sync::envelope::new_incarnation(),
                );
                let mut doc = automerge::Automerge::new().with_actor(actor);
                for field in ["n", "m"] {
                    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
                        automerge::transaction::Transactable::put(tx, automerge::ROOT, field, i)?;
                        Ok(())
                    })
                    .unwrap();
                }
                let change = doc.get_last_local_change().unwrap().clone();
                let env = consentd_sync::envelope::sign(
                    crate::office::time_ordered_id(),
                    &change,
                    signing,
                );
                consentd_sync::envelope::verify(env, &de.roster).unwrap()
            })
            .collect();
        rt.block_on(rep.store_envelopes("cn", vec![batch_of(orphans)]))
            .unwrap();
        assert_eq!(de.office.pending_records().unwrap(), 3, "bounded");
        // Their facts, as at a restart: unreadable, they raise no event (cn's records would
        // be refused to uk).
        rep.build(None).unwrap();
        assert_eq!(lock(&rep.sets).docs.len(), 3);
        assert!(lock(&rep.raised).is_empty(), "no transfer event for them");
    }

    /// A write holds the keys shared (`KeyStore::using`) from choosing its keys to its durable
    /// commit and, within that, waits for its record's lock; a key destruction (after a tombstone
    /// or a retention pass) queues for them exclusively, and Tokio's fair `RwLock` then makes every
    /// new reader wait behind it. An ingest that took its records' locks before `using` closed a
    /// cycle: the write waited for the ingest's record, the ingest for the destruction, the
    /// destruction for the write, and every later write at the office waited forever
    /// (tests/partition_heals.rs, seed 1254537357: an office answered nothing for 120 s). An
    /// ingest must hold no record while it waits for the keys.
    #[test]
    fn an_ingest_behind_a_key_destruction_holds_no_record_a_write_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let (doc, envelopes, (kid, key)) = granted_at_nl(&de, &nl, &rt, "cycle@example.com");
        let received: HashMap<KeyId, Zeroizing<[u8; 32]>> = [(kid, key)].into();
        let office = de.office.clone();
        rt.block_on(async move {
            // A write between choosing its keys and its durable commit.
            let writing = office.keys.using().await;
            let destroying = tokio::spawn({
                let office = office.clone();
                async move {
                    drop(office.keys.destroying().await);
                }
            });
            // Queued once a new reader has to wait.
            let wait = Duration::from_millis(20);
            while let Ok(g) = tokio::time::timeout(wait, office.keys.using()).await {
                drop(g);
                tokio::task::yield_now().await;
            }
            let ingest = tokio::spawn({
                let office = office.clone();
                async move { office.ingest(envelopes, &received).await }
            });
            // Time for the ingest to take what it takes before it waits.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !ingest.is_finished(),
                "the ingest waits behind the destruction"
            );
            // The write's next step: its record's lock.
            let record = tokio::time::timeout(
                Duration::from_secs(5),
                office.lock_for_deletion(&[], &[doc], false),
            )
            .await
            .expect("the write gets its record while the ingest waits for the keys");
            drop(record);
            drop(writing);
            destroying.await.unwrap();
            let report = ingest.await.unwrap().unwrap();
            assert_eq!(report.pending, 0);
        });
        assert!(de.office.read_record(&doc).unwrap().is_some(), "ingested");
    }

    /// The key of a record arrives while the record's batch is being merged, after the batch
    /// took its copy of the received keys: the key's own re-open ran before the record was
    /// pending, so the batch must open it itself once it is stored.
    #[test]
    fn a_key_arriving_while_its_record_is_merged_still_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let rep = replicator(&de);
        let (doc, envelopes, (kid, key)) = granted_at_nl(&de, &nl, &rt, "racing@example.com");
        // The batch's copy, taken before the key came.
        let copy = lock(&rep.sets).received.clone();
        let mut report = rt.block_on(de.office.ingest(envelopes, &copy)).unwrap();
        assert_eq!(report.pending, 1);
        // The key arrives now (as `store` takes it in); its re-open found nothing pending when
        // it looked, so this test does not run it.
        Arc::make_mut(&mut lock(&rep.sets).received).insert(kid, key);
        rt.block_on(rep.settle_pending("nl", &copy, &mut report))
            .unwrap();
        assert_eq!(report.pending, 0);
        assert_eq!(de.office.pending_records().unwrap(), 0);
        assert!(de.office.read_record(&doc).unwrap().is_some(), "opened");
    }

    /// A transfer event that finds the events queue full is forgotten as raised, so the next
    /// sync raises it again rather than never (the audit trail names every move).
    #[test]
    fn a_transfer_event_the_full_queue_refused_is_raised_again() {
        let dir = tempfile::tempdir().unwrap();
        let (de, _nl, _rt) = two_offices(dir.path());
        // Not started: nothing drains the events queue.
        let rep = replicator(&de);
        let info = DocInfo::default();
        let event = |i: u32| {
            let mut doc = [0u8; 16];
            doc[..4].copy_from_slice(&i.to_le_bytes());
            rep.transfer_event(&doc, &info, "nl", "transferred", "adequacy".into(), None)
        };
        let filling: Vec<TransferEvent> = (0..EVENTS_QUEUED_MAX as u32)
            .map(|i| event(i).expect("a first move raises its event"))
            .collect();
        rep.queue_events(filling);
        assert!(event(0).is_none(), "a queued event is not raised twice");
        let late = u32::MAX;
        rep.queue_events(event(late));
        assert!(
            event(late).is_some(),
            "the refused event is raised again by the next sync"
        );
    }

    /// The transfer events of `doc` to office `to` that `office` recorded.
    fn transfers_of(office: &crate::daemon::Prepared, doc: &DocId, to: &str) -> usize {
        let id = crate::record::doc_id_hex(doc);
        office
            .office
            .transfer_list(None)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["to_office"] == to
                    && t["status"] == "transferred"
                    && t["records"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r == id.as_str()))
            })
            .count()
    }

    /// A record leaves for another jurisdiction only once its transfer event is durable. With
    /// the store failing (a full disk), events were recorded after sending, lost, and nothing
    /// told after a restart which records had left: 15 of 191 records uk moved had no transfer
    /// record, for good (found by an exploratory session). Now a record whose event cannot be
    /// recorded is held back (answered as missing: the peer asks again), and the next try, in
    /// this process or after a restart, records the event before the record leaves.
    #[test]
    fn a_record_whose_transfer_event_cannot_be_recorded_is_held_back_until_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (uk, _us, rt) = offices_of(dir.path(), "uk", "us");
        let answer = rt
            .block_on(
                uk.office
                    .execute(Request::ConsentGrant(protocol::ConsentGrant {
                        evidence: Some("web form v3".into()),
                        ..protocol::ConsentGrant::new("abroad@example.com", "marketing", "consent")
                    })),
            )
            .unwrap();
        let doc: DocId = hex::decode(answer["id"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let ids: Vec<[u8; 32]> = uk
            .office
            .store()
            .doc_envelopes(&doc)
            .unwrap()
            .iter()
            .map(|b| {
                consentd_sync::envelope::verify(Envelope::decode(b).unwrap(), &uk.roster)
                    .unwrap()
                    .hash()
            })
            .collect();
        assert!(!ids.is_empty());

        // The store cannot record the event: us's Want is answered without the record.
        let rep = replicator(&uk);
        rep.build(None).unwrap();
        rep.events_fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (found, events) = rep.fetch_envelopes("us", &ids);
        assert_eq!(found.len(), ids.len());
        assert_eq!(events.len(), 1, "one event per record: {events:?}");
        let held = rt.block_on(rep.held_back("us", events));
        assert!(held.contains(&doc), "the record is held back");
        assert_eq!(transfers_of(&uk, &doc, "us"), 0);
        let peers = rep.peers_json();
        assert!(
            peers[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("held back")),
            "{peers}"
        );

        // Still failing: asked again, it is held back again (not forgotten as raised).
        let (_, events) = rep.fetch_envelopes("us", &ids);
        assert_eq!(events.len(), 1, "raised again: {events:?}");
        assert!(rt.block_on(rep.held_back("us", events)).contains(&doc));

        // The failure passes: the event is recorded before the record is sent, once.
        rep.events_fail
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let (found, events) = rep.fetch_envelopes("us", &ids);
        assert_eq!(found.len(), ids.len());
        assert!(rt.block_on(rep.held_back("us", events)).is_empty());
        assert_eq!(transfers_of(&uk, &doc, "us"), 1);
        let (_, events) = rep.fetch_envelopes("us", &ids);
        assert!(events.is_empty(), "recorded once: {events:?}");

        // After a restart (a new replicator, nothing remembered as raised): asked again, the
        // store's marker says it is recorded, and nothing is recorded twice.
        drop(rep);
        let rep = replicator(&uk);
        rep.build(None).unwrap();
        let (_, events) = rep.fetch_envelopes("us", &ids);
        assert!(rt.block_on(rep.held_back("us", events)).is_empty());
        assert_eq!(transfers_of(&uk, &doc, "us"), 1);
    }

    /// `last_sync` is a round that completed with everything stored. With one office's store
    /// failing (a full disk), `peers` showed fresh syncs and no error at both ends while every
    /// link failed on its first store, and the dialer redialed four times a second (found by an
    /// exploratory session). Now neither end counts the round, both say why, and the backoff
    /// grows.
    #[test]
    fn a_round_whose_envelopes_cannot_be_stored_is_no_sync_and_both_ends_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        // de dials nl (the lower id dials) and must fetch nl's record.
        granted_at_nl(&de, &nl, &rt, "unstorable@example.com");
        let (de_rep, nl_rep) = (replicator(&de), replicator(&nl));
        de_rep.build(None).unwrap();
        nl_rep.build(None).unwrap();
        de_rep
            .stores_fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        for (rep, office) in [(&de_rep, &de), (&nl_rep, &nl)] {
            rt.spawn(
                rep.clone()
                    .run(office.transport.clone(), office.config.listen, stop.clone()),
            );
        }
        let peer = |rep: &Replicator| rep.peers_json()[0].clone();
        let says_why = |p: &Value| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot store envelopes from nl"))
        };
        // Both ends say why while the links fail; neither counts a sync.
        let (mut de_saw, mut nl_saw) = (false, false);
        while started.elapsed() < Duration::from_secs(8) {
            let (d, n) = (peer(&de_rep), peer(&nl_rep));
            de_saw |= says_why(&d);
            nl_saw |= says_why(&n);
            assert!(d["last_sync"].is_null(), "de counted a sync: {d}");
            assert_eq!(d["in_sync"], false, "{d}");
            if n["connected"] == false {
                assert!(n["last_sync"].is_null(), "nl counted a sync: {n}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(de_saw, "de never said why: {}", peer(&de_rep));
        assert!(
            nl_saw,
            "nl never said why (its peer's Error frame): {}",
            peer(&nl_rep)
        );
        assert_eq!(de_rep.peers_in_sync(), 0);
        // 250 ms doubling: 5 or 6 links in 8 s, not 4 a second.
        let opened = lock(&de_rep.status)["nl"].links_opened;
        assert!((2..=8).contains(&opened), "{opened} links in 8 s");

        // The store works again: the next link syncs, and both ends say so.
        de_rep
            .stores_fail
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let healed = Instant::now();
        loop {
            let (d, n) = (peer(&de_rep), peer(&nl_rep));
            if !d["last_sync"].is_null() && !n["last_sync"].is_null() {
                assert_eq!(d["last_error"], Value::Null, "{d}");
                assert_eq!(d["in_sync"], true, "{d}");
                assert_eq!(d["lag"], 0, "{d}");
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(40),
                "no sync after the store healed: {d} {n}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop_tx.send(true).unwrap();
    }

    /// A Want of keys is answered with every key held here that the peer may hold, in the
    /// Want's order; an item that names no key held here, and a key hidden from the peer, are
    /// left out.
    #[test]
    fn a_want_of_keys_is_answered_in_order_without_unknown_or_hidden_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (de, nl, rt) = two_offices(dir.path());
        let keys: Vec<(KeyId, Zeroizing<[u8; 32]>)> = (0..12)
            .map(|i| granted_at_nl(&de, &nl, &rt, &format!("subject{i}@example.com")).2)
            .collect();
        let rep = replicator(&nl);
        rep.build(None).unwrap();
        let hidden = key_item(&keys[3].0);
        lock(&rep.sets)
            .hidden
            .entry("de".to_string())
            .or_default()
            .1
            .insert(hidden);
        let unknown = [0xee; 32];
        let mut ids: Vec<[u8; 32]> = keys.iter().map(|(k, _)| key_item(k).id).collect();
        ids.insert(5, unknown);
        let blobs: HashMap<[u8; 32], Vec<u8>> = keys
            .iter()
            .map(|(k, key)| (key_item(k).id, key_blob(k, key)))
            .collect();
        for n in [1, 4, 8, ids.len()] {
            let want: Vec<([u8; 32], Vec<u8>)> = ids[..n]
                .iter()
                .filter(|id| **id != hidden.id)
                .filter_map(|id| Some((*id, blobs.get(id)?.clone())))
                .collect();
            assert_eq!(rep.fetch("de", SetKind::Keys, &ids[..n]), want, "{n} ids");
        }
        assert_eq!(
            rep.fetch("de", SetKind::Keys, &ids).len(),
            keys.len() - 1,
            "every key but the hidden one"
        );
    }

    #[test]
    fn key_blobs_round_trip_and_refuse_garbage() {
        let id = [7u8; 16];
        let blob = key_blob(&id, &[9u8; 32]);
        let (got, key) = parse_key_blob(&blob).unwrap();
        assert_eq!(got, id);
        assert_eq!(*key, [9u8; 32]);
        assert!(parse_key_blob(&blob[..51]).is_none());
        let mut bad = blob.clone();
        bad[0] = b'X';
        assert!(parse_key_blob(&bad).is_none());
        assert_ne!(
            key_item(&id).id[..16],
            id,
            "the item does not show the key id"
        );
    }
}
