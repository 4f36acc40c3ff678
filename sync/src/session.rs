//! One peer connection's sync protocol, as a sans-I/O state machine (the quinn-proto style).
//!
//! A [`Session`] never touches a socket, a disk or a clock. The host feeds it received frame
//! bytes ([`Session::handle_frame`]), local events ([`Session::push_local`]), completions of the
//! work it asked for ([`Session::stored`], [`Session::fetched`]) and the current time
//! ([`Session::handle_timeout`], with `now` passed in). It drains frames to send
//! ([`Session::poll_transmit`]), work to do ([`Session::poll_action`]) and the next deadline
//! ([`Session::poll_timeout`]).
//!
//! # The host's contract
//!
//! - **Local state** is read through [`Local`], passed into every call that needs it: the sorted
//!   set of each kind this office offers the peer (policy-filtered), membership, tombstone
//!   coverage, and verification of tombstones and checkpoints (envelopes the session verifies
//!   itself, in batches, against the roster).
//! - **[`Action::Store`]**: durably store the batch, then call [`Session::stored`]. Until then the
//!   batch's bytes count against [`Limits::unstored_bytes_max`], and pushes in it are not
//!   acknowledged. Within the commit, store tombstones before anything they cover and drop any
//!   envelope a stored tombstone covers (another peer may have delivered the tombstone meanwhile).
//! - **[`Action::Fetch`]**: load the requested items (only those policy lets this peer have), then
//!   call [`Session::fetched`].
//! - **[`Action::Reject`]**: log it (it names offices and ids only). Nothing rejected is stored.
//! - **[`Action::Synced`]**: a sync round finished; record the time for `consentctl peers`.
//! - Stop reading from the peer while [`Session::can_receive`] is false (it means our own
//!   frames to the peer are piling up), so a peer that does not read cannot make us buffer.
//! - After [`Session::handle_frame`] returns an error, send what [`Session::poll_transmit`] still
//!   yields (an Error frame) and close the connection.
//! - A host whose [`Local`] view needs a lock may split [`Session::handle_frame`] in two:
//!   [`Session::decode`] (`&self`: decodes the frame and verifies a Want's answer of envelopes,
//!   the costly part) without the lock, then [`Session::handle_decoded`] with it, calling
//!   nothing else on the session in between.
//!
//! # Protocol
//!
//! Both sides send [`Hello`] first. The dialer then runs a *sync round*: it reconciles the
//! tombstone set, then keys, envelopes and checkpoints; for each, it asks for what it lacks
//! ([`Frame::Want`]) and tells the peer what the peer lacks ([`Frame::Have`]), which the peer then
//! asks for. Rounds repeat every [`Limits::resync_interval`]. Either side starts a round early
//! when it may have missed something (a push that was never acknowledged, an item dropped under
//! load). New local items are pushed at once ([`Frame::Push`]) and acknowledged after their
//! durable commit ([`Frame::Ack`]).
//!
//! A checkpoint of another office's log the host follows ([`Local::log_frontier`]) is not
//! stored as a blob: the session fetches the leaves it covers from the peer that sent it
//! ([`Frame::LeavesWant`], [`Action::FetchLeaves`] on the serving side), checks each batch with
//! [`logsync::extend`] against the signed root, and hands proven batches to the host as
//! [`LogBatch`]es; a checkpoint that contradicts the leaves held is [`LogBatch::Equivocation`].
//!
//! Every request carries an id and a deadline; a stale, duplicated or reordered answer is ignored
//! (it matches no outstanding request), a lost one times out and is retried or left to the next
//! round. That is more than a QUIC stream needs (it never duplicates or reorders), and it is what
//! lets the simulation in `tests/sim.rs` throw lossy, duplicating, reordering links at sessions.
//!
//! # Memory bounds (a slow or hostile peer cannot exhaust memory)
//!
//! - received, not yet durable: at most [`Limits::unstored_bytes_max`] before new Wants stop and
//!   pushes are dropped (the next round recovers them);
//! - asked for: at most [`Limits::wants_in_flight_max`] Wants of [`Limits::want_bytes_max`] bytes
//!   each; a peer sending more than a Want's budget (plus one item) is cut off;
//! - to fetch: at most [`Limits::want_queue_items_max`] ids queued, [`Limits::recon_items_max`]
//!   learnt per reconciliation run (a longer run stops and runs again after fetching);
//! - pushed, not acknowledged: [`Limits::push_unacked_bytes_max`]; beyond it new items wait for
//!   the next round;
//! - serving: at most [`SERVE_WANTS_MAX`] of the peer's Wants at once (more are ignored), and
//!   [`SERVE_LEAF_WANTS_MAX`] of its LeavesWants;
//! - logs: one follow per roster office, [`LOG_WANTS_IN_FLIGHT_MAX`] LeavesWants in flight, each
//!   at most `want_bytes_max` of leaves and within the unstored budget;
//! - outgoing: [`Session::can_receive`] turns false past [`Limits::outgoing_bytes_max`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::envelope::{self, Envelope, VerifiedEnvelope};
use crate::frame::{
    items_overhead, ErrorCode, Frame, Hello, SetKind, ACK_SEQS_MAX, BLOB_BYTES_MAX,
    FRAME_BYTES_MAX, HAVE_ITEMS_MAX, ITEMS_BLOB_OVERHEAD, PROTOCOL_VERSION, WANT_IDS_MAX,
};
use crate::item::{Item, SetView};
use crate::logsync::{self, LEAVES_PER_FRAME_MAX};
use crate::merkle::{Frontier, Hash};
use crate::reconcile::{self, Reconciler};
use crate::roster::VerifiedRoster;
use crate::tlog::{self, LogLeaf, VerifiedCheckpoint, LEAF_LEN};
use crate::wire::DecodeError;

/// Most of a peer's Wants a session serves at once; further Wants are ignored until one is
/// answered (the peer times out and asks again). A protocol constant: a peer keeps at most this
/// many Wants in flight.
pub const SERVE_WANTS_MAX: usize = 8;
/// Times an id is asked for before the session gives up on it until the next round.
pub const WANT_ATTEMPTS_MAX: u8 = 3;
/// Most of a peer's [`Frame::LeavesWant`]s a session serves at once (each is up to 784 KiB of
/// leaves and a proof that reads the log); more are ignored until one is answered.
pub const SERVE_LEAF_WANTS_MAX: usize = 2;
/// Our [`Frame::LeavesWant`]s in flight at once (over all logs followed).
pub const LOG_WANTS_IN_FLIGHT_MAX: usize = 2;

/// Whether office `local` dials office `peer` (rather than waiting for it): the one whose id
/// sorts first dials, so each pair of offices has one connection and one sync-round initiator.
pub fn dials(local: &str, peer: &str) -> bool {
    local < peer
}

/// Tunable limits and intervals. [`Limits::default`] is what the daemon uses.
#[derive(Clone, Debug)]
pub struct Limits {
    pub wants_in_flight_max: usize,
    /// Ids per Want (at most [`WANT_IDS_MAX`]).
    pub want_ids_max: usize,
    /// Byte budget per Want's answer.
    pub want_bytes_max: u32,
    pub unstored_bytes_max: usize,
    pub push_unacked_bytes_max: usize,
    pub want_queue_items_max: usize,
    pub recon_items_max: usize,
    /// Consecutive rounds whose later sets may wait because an earlier set's differences did
    /// not fit (`recon_items_max`, `want_queue_items_max`). Bounded because waiting is only an
    /// order of arrival, not a need: the receiver holds what an earlier set fetched in bounded
    /// memory (its received keys), so after this many rounds the later sets run regardless
    /// and a set larger than that memory still cannot starve them.
    pub deferred_rounds_max: u32,
    pub outgoing_bytes_max: usize,
    /// How long a Want, a reconciliation message or a push may go unanswered.
    pub request_timeout: Duration,
    /// Time between the dialer's sync rounds.
    pub resync_interval: Duration,
    /// Least time between the start of two rounds (early rounds are rate-limited by it).
    pub resync_min_interval: Duration,
    /// Most two offices' clocks may disagree by (their Hellos' `wall_ms`) and still sync. Each
    /// office orders consent events and dates tombstones by its own clock: one running 400
    /// days ahead deleted live records at every office through its retention pass, and one a
    /// day ahead or behind made a later withdrawal lose to an earlier grant (found by an
    /// exploratory session). The sessions start within the handshake's time of each other
    /// (`transport::HELLO_TIMEOUT`, 10 s), well inside this.
    pub clock_skew_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wants_in_flight_max: 4,
            want_ids_max: WANT_IDS_MAX,
            want_bytes_max: 1024 * 1024,
            unstored_bytes_max: 16 * 1024 * 1024,
            push_unacked_bytes_max: 1024 * 1024,
            want_queue_items_max: 256 * 1024,
            recon_items_max: 256 * 1024,
            deferred_rounds_max: 3,
            outgoing_bytes_max: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            resync_interval: Duration::from_secs(60),
            resync_min_interval: Duration::from_secs(1),
            clock_skew_max: CLOCK_SKEW_MAX,
        }
    }
}

/// [`Limits::clock_skew_max`]'s default: far above what NTP keeps servers within (milliseconds),
/// far below what reorders an operator's decisions.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(60);

/// Who this session is and who it talks to.
#[derive(Clone)]
pub struct SessionConfig {
    /// Our Hello (network, office id, roster serial).
    pub hello: Hello,
    /// The peer's office id, as authenticated by the transport (its key's roster entry).
    pub peer: String,
    /// The dialer runs the sync round on connect and every `resync_interval`.
    pub dialer: bool,
    pub roster: Arc<VerifiedRoster>,
    pub limits: Limits,
}

/// What the session needs to know about a tombstone or checkpoint the host verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub item: Item,
    /// The office that signed it.
    pub office: String,
    /// For a tombstone: the document it deletes.
    pub covers_doc: Option<[u8; 16]>,
}

/// Log work for the host, carried by a [`StoreBatch`] of [`SetKind::Checkpoints`].
#[derive(Debug)]
pub enum LogBatch {
    /// Leaves `[first, first + leaves.len())` of `office`'s log, each batch proven (RFC 9162
    /// consistency) to be a prefix of the signed tree `checkpoint` is on the last batch. Store
    /// them, and the checkpoint note when present, in one durable commit, and only if `first`
    /// is the number of that office's leaves held (leaves already held must be equal: a
    /// difference is equivocation by `office`).
    Append {
        office: String,
        first: u64,
        leaves: Vec<LogLeaf>,
        /// The signed note, on the batch that reaches its tree size (or alone when the leaves
        /// held already reproduce it).
        checkpoint: Option<Vec<u8>>,
    },
    /// `office` signed `note`, a checkpoint of a tree of the size of the leaves held whose root
    /// differs from theirs, while those leaves were proven against an earlier checkpoint it
    /// signed: two histories. Keep the note as evidence beside the checkpoint held, and log it.
    Equivocation { office: String, note: Vec<u8> },
}

/// A tombstone or checkpoint that passed [`Local::verify_blob`].
#[derive(Clone, Debug)]
pub struct AcceptedBlob {
    pub info: BlobInfo,
    pub bytes: Vec<u8>,
}

/// The host's local state, as the session reads it. Implementations must be cheap: the session
/// calls these while handling frames.
pub trait Local {
    /// The items of `set` this office offers `peer`: everything it holds, minus whatever policy
    /// keeps from that peer (e.g. [`crate::item::Without`]). Reconciliation runs against this, so
    /// a forbidden item is never even announced.
    fn offered(&self, peer: &str, set: SetKind) -> Box<dyn SetView + '_>;
    /// Whether this office holds `item`, whatever the policy.
    fn holds(&self, set: SetKind, item: &Item) -> bool;
    /// Whether a stored tombstone deletes document `doc_id`.
    fn is_tombstoned(&self, doc_id: &[u8; 16]) -> bool;
    /// Verifies a tombstone or checkpoint received from a peer (never called for envelopes).
    /// The error text is logged: ids and office names only.
    fn verify_blob(&self, set: SetKind, blob: &[u8]) -> Result<BlobInfo, String>;
    /// The leaves held of `office`'s log, as a Merkle frontier, if this host follows that log;
    /// `None` (the default) for its own log and for hosts that keep no logs. For a followed
    /// office, a verified checkpoint is not stored as a blob: the session fetches the leaves it
    /// covers, checks them, and hands them to the host in [`LogBatch::Append`]s.
    fn log_frontier(&self, office: &str) -> Option<Frontier> {
        let _ = office;
        None
    }
}

/// Identifies a [`StoreBatch`] in [`Session::stored`].
pub type BatchId = u64;

/// Verified items to store durably. Exactly one of `envelopes`, `blobs` and `log` is non-empty.
#[derive(Debug)]
pub struct StoreBatch {
    pub id: BatchId,
    pub set: SetKind,
    /// For [`SetKind::Envelopes`]: verified against the roster, none covered by a known tombstone.
    pub envelopes: Vec<VerifiedEnvelope>,
    /// For tombstones and checkpoints: accepted by [`Local::verify_blob`].
    pub blobs: Vec<AcceptedBlob>,
    /// For checkpoints of a followed log ([`Local::log_frontier`]): leaves and notes to store.
    pub log: Option<LogBatch>,
}

/// Work for the host.
#[derive(Debug)]
pub enum Action {
    /// The peer's Hello was accepted.
    Connected { peer: Hello },
    /// Store durably, then call [`Session::stored`] with the batch id.
    Store(StoreBatch),
    /// Load these items for the peer (as policy allows), then call [`Session::fetched`].
    Fetch {
        request: u32,
        set: SetKind,
        ids: Vec<[u8; 32]>,
        /// The answer is cut after this many bytes; the host may stop loading there.
        bytes_max: u32,
    },
    /// Something the peer sent was refused. `peer` sent it; `reason` names the authoring office
    /// and ids where known, never content.
    Reject {
        peer: String,
        set: SetKind,
        reason: String,
    },
    /// A sync round completed: both sides held the same items (as offered) when it started.
    /// `lag` is how many items per set we lacked then.
    Synced {
        at: Instant,
        lag: [usize; SetKind::COUNT],
    },
    /// The peer asks for leaves `[first, first + count)` of `office`'s log with a consistency
    /// proof to its tree of `size` leaves: load them (see [`logsync::consistency_proof`]) and
    /// call [`Session::leaves_fetched`] (`None` when this office does not hold that log up to
    /// `size`).
    FetchLeaves {
        request: u32,
        office: String,
        size: u64,
        first: u64,
        count: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer {peer} sent a malformed frame: {source}")]
    Decode {
        peer: String,
        #[source]
        source: DecodeError,
    },

    #[error("peer {peer} sent a malformed {set} reconciliation message: {source}")]
    Recon {
        peer: String,
        set: &'static str,
        #[source]
        source: DecodeError,
    },

    #[error("peer {peer} broke the protocol: {detail}")]
    Protocol { peer: String, detail: &'static str },

    #[error("peer {peer} speaks sync protocol version {theirs}; this office speaks {ours}")]
    Version {
        peer: String,
        theirs: u16,
        ours: u16,
    },

    #[error("peer {peer} is in network {theirs:?}, this office in {ours:?}")]
    Network {
        peer: String,
        theirs: String,
        ours: String,
    },

    #[error("peer authenticated as office {peer} but its hello claims office {claimed}")]
    Identity { peer: String, claimed: String },

    #[error("office {peer}'s clock is {} s {} this office's (at most {} s apart): no records are exchanged until one of the two clocks is set right (NTP)", skew_ms / 1000, if *ahead { "ahead of" } else { "behind" }, max_s)]
    Clock {
        peer: String,
        skew_ms: u64,
        ahead: bool,
        max_s: u64,
    },

    #[error("peer {peer} ended the session ({code:?}): {text}")]
    PeerClosed {
        peer: String,
        code: ErrorCode,
        text: String,
    },
}

impl SessionError {
    fn code(&self) -> ErrorCode {
        match self {
            SessionError::Version { .. } => ErrorCode::Version,
            SessionError::Network { .. } => ErrorCode::Network,
            SessionError::Identity { .. } => ErrorCode::Identity,
            SessionError::Clock { .. } => ErrorCode::Clock,
            SessionError::PeerClosed { code, .. } => *code,
            _ => ErrorCode::Protocol,
        }
    }
}

/// Counters for `consentctl peers` and for tests.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Answers that matched nothing outstanding (late, duplicated or unasked).
    pub stale_frames: u64,
    pub rejected: u64,
    pub stored_items: u64,
    /// Envelopes dropped because a tombstone covers their document.
    pub dropped_tombstoned: u64,
    /// Pushes dropped because too much was waiting to be stored.
    pub pushes_dropped: u64,
    /// Log leaves received, verified and handed to the host.
    pub leaves_received: u64,
    /// Checkpoints of a followed log older than the leaves held (nothing to fetch).
    pub checkpoints_stale: u64,
    pub rounds_completed: u64,
    pub recon_round_trips: u64,
    /// When a round we initiated last completed (the dialer's side of `last_sync`).
    pub last_sync: Option<Instant>,
    /// When we last answered the peer's reconciliation of the final set (checkpoints): the
    /// acceptor's side of `last_sync`, since the initiator alone knows when its round ended.
    pub last_answered: Option<Instant>,
    pub lag: [usize; SetKind::COUNT],
    /// Per set, the last reconciliation run this side initiated (`consentctl peers`, bench).
    pub last_recon: [ReconCounters; SetKind::COUNT],
    /// Per set, the last completed run that found a difference (`have` or `need` not empty):
    /// what catching up last cost, which a later run finding nothing does not overwrite.
    pub last_exchange: [ReconCounters; SetKind::COUNT],
}

/// One reconciliation run of one set, as its initiator counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconCounters {
    /// Replies received (one per query: a query and its reply are one round trip).
    pub round_trips: u32,
    /// ReconQuery and ReconReply frames' bytes, each with its 4-byte length prefix.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Items learnt: held here and not there, and the reverse.
    pub have: usize,
    pub need: usize,
    /// The run ended (both sides agreed, or it stopped at the learning limit).
    pub complete: bool,
}

/// Bytes a reconciliation frame carrying `message` takes on the stream: length prefix, kind,
/// set, epoch, round, message length, message.
fn recon_frame_bytes(message: &[u8]) -> u64 {
    (4 + 14 + message.len()) as u64
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    AwaitHello,
    Open,
    Closed,
}

type Key = (SetKind, [u8; 32]);

#[derive(Clone, Copy, Debug)]
struct Wanted {
    item: Item,
    attempts: u8,
}

struct InflightWant {
    set: SetKind,
    outstanding: BTreeMap<[u8; 32], Wanted>,
    deadline: Instant,
    bytes_max: u32,
    /// Bytes and count of items delivered so far (for the budget rule and flow control).
    received_bytes: usize,
    received_items: usize,
}

struct ReconRun {
    set: SetKind,
    epoch: u32,
    round: u32,
    rec: Reconciler,
    deadline: Instant,
}

struct Pending {
    bytes: usize,
    keys: Vec<Key>,
    tombstone_docs: Vec<[u8; 16]>,
    acks: Vec<u32>,
}

struct Unacked {
    bytes: usize,
    deadline: Instant,
}

struct Serving {
    set: SetKind,
    ids: Vec<[u8; 32]>,
    bytes_max: u32,
}

/// One followed office's log being brought up to a checkpoint.
struct LogFollow {
    target: VerifiedCheckpoint,
    /// The leaves held plus those received and handed to the host.
    frontier: Frontier,
    inflight: Option<LeavesRequest>,
    attempts: u8,
}

struct LeavesRequest {
    request: u32,
    first: u64,
    count: u32,
    deadline: Instant,
}

/// A received frame as [`Session::decode`] leaves it for [`Session::handle_decoded`].
pub struct DecodedFrame {
    /// The frame's length on the wire.
    bytes: usize,
    frame: Result<Frame, DecodeError>,
    /// For an answer of envelopes to a Want in flight: the envelopes that verified and why the
    /// others did not (the frame's blobs were moved here).
    verified: Option<(Vec<VerifiedEnvelope>, Vec<String>)>,
}

/// An answer's items, as received or already verified by [`Session::decode`].
enum Received {
    Raw(Vec<Vec<u8>>),
    Verified((Vec<VerifiedEnvelope>, Vec<String>)),
}

/// Decodes and batch-verifies envelopes against the roster: those that verified, in order, and
/// a reason for each that did not.
fn verify_envelopes(
    blobs: Vec<Vec<u8>>,
    roster: &VerifiedRoster,
) -> (Vec<VerifiedEnvelope>, Vec<String>) {
    let mut rejects = Vec::new();
    let mut decoded = Vec::with_capacity(blobs.len());
    for b in blobs {
        match Envelope::decode(&b) {
            Ok(e) => decoded.push(e),
            Err(e) => rejects.push(format!("malformed envelope: {e}")),
        }
    }
    let mut envs = Vec::with_capacity(decoded.len());
    for r in envelope::verify_batch(decoded, roster) {
        match r {
            Ok(v) => envs.push(v),
            Err(e) => rejects.push(e.to_string()),
        }
    }
    (envs, rejects)
}

/// One peer connection's protocol state. See the module docs.
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    outgoing: VecDeque<Vec<u8>>,
    outgoing_bytes: usize,
    actions: VecDeque<Action>,

    // Reconciliation (as initiator).
    recon: Option<ReconRun>,
    epoch: u32,
    round_sets: VecDeque<SetKind>,
    round_lag: [usize; SetKind::COUNT],
    /// Rounds in a row that ended early, their later sets left for the next round.
    deferred_rounds: u32,
    /// The round's reconciliations are done; it completes when fetching drains.
    round_fetching: bool,
    next_round_at: Option<Instant>,
    last_round_start: Option<Instant>,

    // Fetching.
    queues: [VecDeque<Wanted>; SetKind::COUNT],
    tracked: HashSet<Key>,
    inflight: BTreeMap<u32, InflightWant>,
    next_request: u32,

    // Received, waiting for the host's durable commit.
    pending: BTreeMap<BatchId, Pending>,
    pending_by_key: HashMap<Key, BatchId>,
    pending_tombstone_docs: HashMap<[u8; 16], usize>,
    next_batch: BatchId,
    unstored_bytes: usize,

    // Ordered maps wherever iteration order reaches the wire, so a seeded simulation replays
    // exactly. Pushed by us, not yet acknowledged:
    next_push_seq: u32,
    unacked: BTreeMap<u32, Unacked>,
    unacked_bytes: usize,

    // The peer's Wants we are answering.
    serving: BTreeMap<u32, Serving>,
    // The peer's LeavesWants we are answering: request → first leaf.
    serving_leaves: BTreeMap<u32, u64>,

    // Other offices' logs being fetched, by office (ordered: requests reach the wire).
    logs: BTreeMap<String, LogFollow>,

    stats: Stats,
}

impl Session {
    /// A new session; our Hello is the first frame queued.
    pub fn new(cfg: SessionConfig) -> Session {
        debug_assert!(
            cfg.limits.want_ids_max <= WANT_IDS_MAX && cfg.limits.want_ids_max > 0,
            "want_ids_max must be in 1..=WANT_IDS_MAX"
        );
        debug_assert!(
            cfg.limits.wants_in_flight_max <= SERVE_WANTS_MAX,
            "a peer serves at most SERVE_WANTS_MAX wants at once"
        );
        let hello = Frame::Hello(cfg.hello.clone());
        let mut s = Session {
            cfg,
            phase: Phase::AwaitHello,
            outgoing: VecDeque::new(),
            outgoing_bytes: 0,
            actions: VecDeque::new(),
            recon: None,
            epoch: 0,
            round_sets: VecDeque::new(),
            round_lag: [0; SetKind::COUNT],
            deferred_rounds: 0,
            round_fetching: false,
            next_round_at: None,
            last_round_start: None,
            queues: Default::default(),
            tracked: HashSet::new(),
            inflight: BTreeMap::new(),
            next_request: 0,
            pending: BTreeMap::new(),
            pending_by_key: HashMap::new(),
            pending_tombstone_docs: HashMap::new(),
            next_batch: 0,
            unstored_bytes: 0,
            next_push_seq: 0,
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
            serving: BTreeMap::new(),
            serving_leaves: BTreeMap::new(),
            logs: BTreeMap::new(),
            stats: Stats::default(),
        };
        s.send(&hello);
        s
    }

    pub fn peer(&self) -> &str {
        &self.cfg.peer
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes received and handed to the host in [`Action::Store`] but not yet confirmed stored.
    pub fn unstored_bytes(&self) -> usize {
        self.unstored_bytes
    }

    /// Whether nothing is in flight: no reconciliation, no Want, nothing queued, pending, unacked
    /// or being served. (Tests use it to tell a quiet network from a busy one.)
    pub fn is_idle(&self) -> bool {
        self.recon.is_none()
            && self.round_sets.is_empty()
            && self.inflight.is_empty()
            && self.queues.iter().all(VecDeque::is_empty)
            && self.pending.is_empty()
            && self.unacked.is_empty()
            && self.serving.is_empty()
            && self.serving_leaves.is_empty()
            && self.logs.is_empty()
            && self.outgoing.is_empty()
    }

    /// False while our frames to the peer pile up: the host should stop reading until it has
    /// sent some.
    pub fn can_receive(&self) -> bool {
        self.outgoing_bytes < self.cfg.limits.outgoing_bytes_max
    }

    /// The next encoded frame to send (without the transport's length prefix).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let f = self.outgoing.pop_front()?;
        self.outgoing_bytes -= f.len();
        self.stats.frames_out += 1;
        self.stats.bytes_out += f.len() as u64;
        Some(f)
    }

    /// Whether [`Session::poll_transmit`] has a frame waiting.
    pub fn poll_transmit_pending(&self) -> bool {
        !self.outgoing.is_empty()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Open {
            return None;
        }
        let mut t = self.next_round_at;
        let mut min = |d: Instant| t = Some(t.map_or(d, |x| x.min(d)));
        if let Some(r) = &self.recon {
            min(r.deadline);
        }
        for w in self.inflight.values() {
            min(w.deadline);
        }
        for u in self.unacked.values() {
            min(u.deadline);
        }
        for f in self.logs.values() {
            if let Some(r) = &f.inflight {
                min(r.deadline);
            }
        }
        t
    }

    /// Ends the session from our side (e.g. shutdown): queues an Error frame and closes.
    pub fn close(&mut self, code: ErrorCode, text: &str) {
        if self.phase != Phase::Closed {
            self.send(&Frame::Error {
                code,
                text: text.to_string(),
            });
            self.phase = Phase::Closed;
        }
    }

    fn send(&mut self, f: &Frame) {
        let bytes = f.encode();
        debug_assert!(bytes.len() <= FRAME_BYTES_MAX, "frame over the limit");
        self.outgoing_bytes += bytes.len();
        self.outgoing.push_back(bytes);
    }

    fn fail(&mut self, err: SessionError) -> Result<(), SessionError> {
        if !matches!(err, SessionError::PeerClosed { .. }) {
            self.send(&Frame::Error {
                code: err.code(),
                text: err.to_string(),
            });
        }
        self.phase = Phase::Closed;
        Err(err)
    }

    fn protocol(&mut self, detail: &'static str) -> Result<(), SessionError> {
        let peer = self.cfg.peer.clone();
        self.fail(SessionError::Protocol { peer, detail })
    }

    /// Handles one received frame (its bytes, without the length prefix). An error closes the
    /// session; an Error frame for the peer is then queued.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        bytes: &[u8],
        local: &dyn Local,
    ) -> Result<(), SessionError> {
        let decoded = self.decode(bytes);
        self.handle_decoded(now, decoded, local)
    }

    /// The first half of [`Session::handle_frame`]: decodes a frame and, for an answer of
    /// envelopes to a Want in flight, decodes and batch-verifies them against the roster (~30 µs
    /// an envelope, a thousand to a full frame). It reads only the session, so a host can run it
    /// while it holds nothing its [`Local`] view needs, then pass the result to
    /// [`Session::handle_decoded`] with nothing else done to the session in between.
    pub fn decode(&self, bytes: &[u8]) -> DecodedFrame {
        let mut frame = Frame::decode(bytes);
        let mut verified = None;
        if let Ok(Frame::Items {
            set: SetKind::Envelopes,
            request,
            blobs,
            ..
        }) = &mut frame
        {
            // The same cheap checks `handle_items` makes before verifying: a stale answer, or
            // one over its budget, is not worth verifying (and fails the same way there).
            let within_budget = |req: &InflightWant| {
                req.set == SetKind::Envelopes
                    && blobs.iter().map(Vec::len).sum::<usize>()
                        <= req.bytes_max as usize + BLOB_BYTES_MAX
            };
            if self.phase == Phase::Open && self.inflight.get(request).is_some_and(within_budget) {
                verified = Some(verify_envelopes(std::mem::take(blobs), &self.cfg.roster));
            }
        }
        DecodedFrame {
            bytes: bytes.len(),
            frame,
            verified,
        }
    }

    /// The second half of [`Session::handle_frame`], for a frame [`Session::decode`] returned.
    pub fn handle_decoded(
        &mut self,
        now: Instant,
        decoded: DecodedFrame,
        local: &dyn Local,
    ) -> Result<(), SessionError> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        let DecodedFrame {
            bytes,
            frame,
            mut verified,
        } = decoded;
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes as u64;
        let frame = match frame {
            Ok(f) => f,
            Err(source) => {
                let peer = self.cfg.peer.clone();
                return self.fail(SessionError::Decode { peer, source });
            }
        };
        if let Frame::Error { code, text } = frame {
            let peer = self.cfg.peer.clone();
            return self.fail(SessionError::PeerClosed { peer, code, text });
        }
        if self.phase == Phase::AwaitHello {
            return match frame {
                Frame::Hello(h) => self.handle_hello(now, h, local),
                _ => self.protocol("sent a frame before its hello"),
            };
        }
        match frame {
            Frame::Hello(_) => return self.protocol("sent a second hello"),
            Frame::Error { .. } => unreachable!("handled above"),
            Frame::ReconQuery {
                set,
                epoch,
                round,
                message,
            } => {
                let reply = {
                    let view = local.offered(&self.cfg.peer, set);
                    reconcile::respond(&*view, &message)
                };
                if set == SetKind::Checkpoints {
                    self.stats.last_answered = Some(now);
                }
                match reply {
                    Ok(message) => self.send(&Frame::ReconReply {
                        set,
                        epoch,
                        round,
                        message,
                    }),
                    Err(source) => {
                        let peer = self.cfg.peer.clone();
                        return self.fail(SessionError::Recon {
                            peer,
                            set: set.name(),
                            source,
                        });
                    }
                }
            }
            Frame::ReconReply {
                set,
                epoch,
                round,
                message,
            } => self.handle_recon_reply(now, set, epoch, round, &message, local)?,
            Frame::Have { set, items } => {
                let mut overflow = false;
                for it in items {
                    overflow |= !self.enqueue(set, it, local);
                }
                if overflow {
                    self.want_round(now);
                }
            }
            Frame::Want {
                set,
                request,
                bytes_max,
                ids,
            } => {
                if self.serving.len() >= SERVE_WANTS_MAX || self.serving.contains_key(&request) {
                    self.stats.stale_frames += 1;
                } else {
                    let bytes_max = bytes_max.clamp(1, FRAME_BYTES_MAX as u32 * 4);
                    self.serving.insert(
                        request,
                        Serving {
                            set,
                            ids: ids.clone(),
                            bytes_max,
                        },
                    );
                    self.actions.push_back(Action::Fetch {
                        request,
                        set,
                        ids,
                        bytes_max,
                    });
                }
            }
            Frame::Items {
                set,
                request,
                last,
                blobs,
                missing,
            } => {
                let received = match verified.take() {
                    Some(v) => Received::Verified(v),
                    None => Received::Raw(blobs),
                };
                self.handle_items(now, set, request, last, received, missing, local)?
            }
            Frame::Push { set, seq, blob } => self.handle_push(now, set, seq, blob, local),
            Frame::LeavesWant {
                request,
                office,
                size,
                first,
                count,
            } => {
                if self.serving_leaves.len() >= SERVE_LEAF_WANTS_MAX
                    || self.serving_leaves.contains_key(&request)
                {
                    self.stats.stale_frames += 1;
                } else {
                    self.serving_leaves.insert(request, first);
                    self.actions.push_back(Action::FetchLeaves {
                        request,
                        office,
                        size,
                        first,
                        count,
                    });
                }
            }
            Frame::Leaves {
                request,
                first,
                leaves,
                proof,
            } => self.handle_leaves(request, first, leaves, proof)?,
            Frame::Ack { seqs } => {
                for s in seqs {
                    if let Some(u) = self.unacked.remove(&s) {
                        self.unacked_bytes -= u.bytes;
                    }
                }
            }
        }
        self.pump(now, local);
        Ok(())
    }

    fn handle_hello(
        &mut self,
        now: Instant,
        h: Hello,
        local: &dyn Local,
    ) -> Result<(), SessionError> {
        let peer = self.cfg.peer.clone();
        if h.version != PROTOCOL_VERSION {
            return self.fail(SessionError::Version {
                peer,
                theirs: h.version,
                ours: PROTOCOL_VERSION,
            });
        }
        if h.network != self.cfg.hello.network {
            let ours = self.cfg.hello.network.clone();
            return self.fail(SessionError::Network {
                peer,
                theirs: h.network,
                ours,
            });
        }
        if h.office != self.cfg.peer {
            return self.fail(SessionError::Identity {
                peer,
                claimed: h.office,
            });
        }
        let skew_ms = h.wall_ms.abs_diff(self.cfg.hello.wall_ms);
        if u128::from(skew_ms) > self.cfg.limits.clock_skew_max.as_millis() {
            return self.fail(SessionError::Clock {
                peer,
                skew_ms,
                ahead: h.wall_ms > self.cfg.hello.wall_ms,
                max_s: self.cfg.limits.clock_skew_max.as_secs(),
            });
        }
        self.phase = Phase::Open;
        self.actions.push_back(Action::Connected { peer: h });
        if self.cfg.dialer {
            self.next_round_at = Some(now);
        }
        self.pump(now, local);
        Ok(())
    }

    /// Asks for an early round (rate-limited by `resync_min_interval`).
    fn want_round(&mut self, now: Instant) {
        let earliest = self
            .last_round_start
            .map_or(now, |t| (t + self.cfg.limits.resync_min_interval).max(now));
        self.next_round_at = Some(self.next_round_at.map_or(earliest, |t| t.min(earliest)));
    }

    fn fetch_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.queues.iter().all(VecDeque::is_empty)
            && self.logs.is_empty()
    }

    /// Starts due rounds, sends Wants, completes rounds.
    fn pump(&mut self, now: Instant, local: &dyn Local) {
        if self.phase != Phase::Open {
            return;
        }
        self.pump_wants(now, local);
        self.pump_logs(now);
        if self.round_fetching && self.fetch_idle() && self.recon.is_none() {
            self.round_fetching = false;
            self.stats.rounds_completed += 1;
            self.stats.last_sync = Some(now);
            self.stats.lag = self.round_lag;
            self.actions.push_back(Action::Synced {
                at: now,
                lag: self.round_lag,
            });
            if self.cfg.dialer {
                let next = now + self.cfg.limits.resync_interval;
                self.next_round_at = Some(self.next_round_at.map_or(next, |t| t.min(next)));
            }
        }
        let due = self.next_round_at.is_some_and(|t| now >= t);
        if due && self.recon.is_none() && self.round_sets.is_empty() && self.fetch_idle() {
            self.next_round_at = None;
            self.last_round_start = Some(now);
            self.round_sets = SetKind::ALL.into_iter().collect();
            self.round_lag = [0; SetKind::COUNT];
            self.start_next_recon(now, local);
        }
    }

    fn start_next_recon(&mut self, now: Instant, local: &dyn Local) {
        let Some(set) = self.round_sets.pop_front() else {
            self.round_fetching = true;
            return;
        };
        self.epoch = self.epoch.wrapping_add(1);
        let mut rec = Reconciler::new(self.cfg.limits.recon_items_max);
        let message = {
            let view = local.offered(&self.cfg.peer, set);
            rec.initiate(&*view)
        };
        self.stats.last_recon[set.index()] = ReconCounters {
            bytes_sent: recon_frame_bytes(&message),
            ..ReconCounters::default()
        };
        self.send(&Frame::ReconQuery {
            set,
            epoch: self.epoch,
            round: 1,
            message,
        });
        self.recon = Some(ReconRun {
            set,
            epoch: self.epoch,
            round: 1,
            rec,
            deadline: now + self.cfg.limits.request_timeout,
        });
    }

    fn handle_recon_reply(
        &mut self,
        now: Instant,
        set: SetKind,
        epoch: u32,
        round: u32,
        message: &[u8],
        local: &dyn Local,
    ) -> Result<(), SessionError> {
        let matches = self
            .recon
            .as_ref()
            .is_some_and(|r| r.set == set && r.epoch == epoch && r.round == round);
        if !matches {
            self.stats.stale_frames += 1;
            return Ok(());
        }
        let mut run = self.recon.take().expect("matched above");
        self.stats.recon_round_trips += 1;
        let counters = &mut self.stats.last_recon[set.index()];
        counters.round_trips += 1;
        counters.bytes_received += recon_frame_bytes(message);
        let next = {
            let view = local.offered(&self.cfg.peer, set);
            run.rec.reconcile(&*view, message)
        };
        match next {
            Err(source) => {
                let peer = self.cfg.peer.clone();
                self.fail(SessionError::Recon {
                    peer,
                    set: set.name(),
                    source,
                })
            }
            Ok(Some(query)) => {
                run.round += 1;
                run.deadline = now + self.cfg.limits.request_timeout;
                self.stats.last_recon[set.index()].bytes_sent += recon_frame_bytes(&query);
                self.send(&Frame::ReconQuery {
                    set,
                    epoch,
                    round: run.round,
                    message: query,
                });
                self.recon = Some(run);
                Ok(())
            }
            Ok(None) => {
                let truncated = run.rec.truncated();
                let (have, need) = run.rec.into_parts();
                self.round_lag[set.index()] = need.len();
                let counters = &mut self.stats.last_recon[set.index()];
                counters.have = have.len();
                counters.need = need.len();
                counters.complete = true;
                if counters.have + counters.need > 0 {
                    self.stats.last_exchange[set.index()] = *counters;
                }
                for chunk in have.chunks(HAVE_ITEMS_MAX) {
                    self.send(&Frame::Have {
                        set,
                        items: chunk.to_vec(),
                    });
                }
                let mut overflow = false;
                for it in need {
                    overflow |= !self.enqueue(set, it, local);
                }
                if truncated || overflow {
                    self.want_round(now);
                }
                if (truncated || overflow)
                    && self.deferred_rounds < self.cfg.limits.deferred_rounds_max
                {
                    // Only part of this set's differences are queued. The sets after it wait
                    // for the next round (requested above), so what comes first still lands
                    // first: a record fetched before its key would sit unreadable (pending),
                    // an envelope before its tombstone would be fetched only to be dropped.
                    self.deferred_rounds += 1;
                    for skipped in self.round_sets.drain(..) {
                        // Not reconciled this round: the last known lag stands.
                        self.round_lag[skipped.index()] = self.stats.lag[skipped.index()];
                    }
                } else if self.round_sets.is_empty() {
                    // Every set was reconciled this round.
                    self.deferred_rounds = 0;
                }
                self.start_next_recon(now, local);
                Ok(())
            }
        }
    }

    /// Queues `item` for fetching unless held, tracked or the queue is full (returns false then).
    fn enqueue(&mut self, set: SetKind, item: Item, local: &dyn Local) -> bool {
        let key = (set, item.id);
        if self.tracked.contains(&key) || local.holds(set, &item) {
            return true;
        }
        let queued: usize = self.queues.iter().map(VecDeque::len).sum();
        if queued >= self.cfg.limits.want_queue_items_max {
            return false;
        }
        self.tracked.insert(key);
        self.queues[set.index()].push_back(Wanted { item, attempts: 0 });
        true
    }

    fn requeue(&mut self, set: SetKind, w: Wanted) {
        if w.attempts + 1 >= WANT_ATTEMPTS_MAX {
            // The peer keeps failing to deliver it: leave it to the next round.
            self.tracked.remove(&(set, w.item.id));
            return;
        }
        self.queues[set.index()].push_back(Wanted {
            item: w.item,
            attempts: w.attempts + 1,
        });
    }

    fn pump_wants(&mut self, now: Instant, local: &dyn Local) {
        let l = self.cfg.limits.clone();
        loop {
            if self.inflight.len() >= l.wants_in_flight_max || !self.can_receive() {
                return;
            }
            let budget_in_flight: usize = self
                .inflight
                .values()
                .map(|w| (w.bytes_max as usize).saturating_sub(w.received_bytes))
                .sum();
            if self.unstored_bytes + budget_in_flight + l.want_bytes_max as usize
                > l.unstored_bytes_max
            {
                return;
            }
            let Some(set) = SetKind::ALL
                .into_iter()
                .find(|s| !self.queues[s.index()].is_empty())
            else {
                return;
            };
            let mut outstanding = BTreeMap::new();
            let mut ids = Vec::new();
            while ids.len() < l.want_ids_max {
                let Some(w) = self.queues[set.index()].pop_front() else {
                    break;
                };
                if local.holds(set, &w.item) || self.pending_by_key.contains_key(&(set, w.item.id))
                {
                    self.tracked.remove(&(set, w.item.id));
                    continue;
                }
                ids.push(w.item.id);
                outstanding.insert(w.item.id, w);
            }
            if ids.is_empty() {
                continue;
            }
            let request = self.next_request;
            self.next_request = self.next_request.wrapping_add(1);
            let bytes_max = l.want_bytes_max;
            self.inflight.insert(
                request,
                InflightWant {
                    set,
                    outstanding,
                    deadline: now + l.request_timeout,
                    bytes_max,
                    received_bytes: 0,
                    received_items: 0,
                },
            );
            self.send(&Frame::Want {
                set,
                request,
                bytes_max,
                ids,
            });
        }
    }

    /// Verifies received items: envelopes in batches against the roster, others via the host.
    fn verify(
        &mut self,
        set: SetKind,
        blobs: Vec<Vec<u8>>,
        local: &dyn Local,
    ) -> (Vec<VerifiedEnvelope>, Vec<AcceptedBlob>) {
        let mut envs = Vec::new();
        let mut accepted = Vec::new();
        let mut rejects = Vec::new();
        match set {
            SetKind::Envelopes => {
                (envs, rejects) = verify_envelopes(blobs, &self.cfg.roster);
            }
            _ => {
                for bytes in blobs {
                    match local.verify_blob(set, &bytes) {
                        Ok(info) => accepted.push(AcceptedBlob { info, bytes }),
                        Err(reason) => rejects.push(reason),
                    }
                }
            }
        }
        self.reject_all(set, rejects);
        (envs, accepted)
    }

    /// Counts and reports received items that failed verification.
    fn reject_all(&mut self, set: SetKind, rejects: Vec<String>) {
        for reason in rejects {
            self.stats.rejected += 1;
            self.actions.push_back(Action::Reject {
                peer: self.cfg.peer.clone(),
                set,
                reason,
            });
        }
    }

    fn covered(&self, doc: &[u8; 16], local: &dyn Local) -> bool {
        self.pending_tombstone_docs.contains_key(doc) || local.is_tombstoned(doc)
    }

    /// Hands verified items to the host as one batch; returns its id, or None if nothing was new.
    fn store(
        &mut self,
        set: SetKind,
        mut envs: Vec<VerifiedEnvelope>,
        mut blobs: Vec<AcceptedBlob>,
        acks: Vec<u32>,
        local: &dyn Local,
    ) -> Option<BatchId> {
        let before = envs.len();
        envs.retain(|e| !self.covered(&e.doc_id(), local));
        let dropped = before - envs.len();
        self.stats.dropped_tombstoned += dropped as u64;
        envs.retain(|e| !self.pending_by_key.contains_key(&(set, e.hash())));
        blobs.retain(|b| !self.pending_by_key.contains_key(&(set, b.info.item.id)));
        if envs.is_empty() && blobs.is_empty() {
            return None;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        let bytes: usize = envs
            .iter()
            .map(|e| e.envelope().change.len())
            .sum::<usize>()
            + blobs.iter().map(|b| b.bytes.len()).sum::<usize>();
        let keys: Vec<Key> = envs
            .iter()
            .map(|e| (set, e.hash()))
            .chain(blobs.iter().map(|b| (set, b.info.item.id)))
            .collect();
        let tombstone_docs: Vec<[u8; 16]> =
            blobs.iter().filter_map(|b| b.info.covers_doc).collect();
        if set == SetKind::Tombstones {
            for d in &tombstone_docs {
                *self.pending_tombstone_docs.entry(*d).or_default() += 1;
            }
        }
        for k in &keys {
            self.pending_by_key.insert(*k, id);
        }
        self.unstored_bytes += bytes;
        self.stats.stored_items += keys.len() as u64;
        self.pending.insert(
            id,
            Pending {
                bytes,
                keys,
                tombstone_docs: if set == SetKind::Tombstones {
                    tombstone_docs
                } else {
                    Vec::new()
                },
                acks,
            },
        );
        self.actions.push_back(Action::Store(StoreBatch {
            id,
            set,
            envelopes: envs,
            blobs,
            log: None,
        }));
        Some(id)
    }

    /// Hands the host one [`LogBatch`], counted against the unstored budget like items.
    fn store_log(&mut self, log: LogBatch) {
        let bytes = match &log {
            LogBatch::Append {
                leaves, checkpoint, ..
            } => leaves.len() * LEAF_LEN + checkpoint.as_ref().map_or(0, Vec::len),
            LogBatch::Equivocation { note, .. } => note.len(),
        };
        let id = self.next_batch;
        self.next_batch += 1;
        self.unstored_bytes += bytes;
        self.pending.insert(
            id,
            Pending {
                bytes,
                keys: Vec::new(),
                tombstone_docs: Vec::new(),
                acks: Vec::new(),
            },
        );
        self.actions.push_back(Action::Store(StoreBatch {
            id,
            set: SetKind::Checkpoints,
            envelopes: Vec::new(),
            blobs: Vec::new(),
            log: Some(log),
        }));
    }

    /// Takes the checkpoints of followed logs out of `accepted` and starts (or retargets)
    /// fetching their leaves; returns the rest, to be stored as blobs.
    fn follow_logs(
        &mut self,
        now: Instant,
        set: SetKind,
        accepted: Vec<AcceptedBlob>,
        local: &dyn Local,
    ) -> Vec<AcceptedBlob> {
        if set != SetKind::Checkpoints {
            return accepted;
        }
        let mut rest = Vec::new();
        for blob in accepted {
            let Some(held) = local.log_frontier(&blob.info.office) else {
                rest.push(blob);
                continue;
            };
            // The host verified it; verify again here, so what the session follows is exactly
            // a checkpoint the roster's key for that office signed.
            let verified = std::str::from_utf8(&blob.bytes)
                .map_err(|_| "checkpoint is not UTF-8".to_string())
                .and_then(|n| tlog::verify(n, &self.cfg.roster).map_err(|e| e.to_string()));
            match verified {
                Ok(vc) if vc.office == blob.info.office => self.follow(now, vc, held),
                Ok(vc) => self.reject(
                    SetKind::Checkpoints,
                    format!(
                        "checkpoint verified as office {}'s, the host says {}'s",
                        vc.office, blob.info.office
                    ),
                ),
                Err(e) => self.reject(SetKind::Checkpoints, e),
            }
        }
        rest
    }

    fn reject(&mut self, set: SetKind, reason: String) {
        self.stats.rejected += 1;
        self.actions.push_back(Action::Reject {
            peer: self.cfg.peer.clone(),
            set,
            reason,
        });
    }

    /// Starts bringing `vc.office`'s log (of which `held` is held) up to `vc`.
    fn follow(&mut self, now: Instant, vc: VerifiedCheckpoint, held: Frontier) {
        let cp = &vc.checkpoint;
        if let Some(f) = self.logs.get_mut(&vc.office) {
            if cp.size > f.target.checkpoint.size {
                // A newer tree: aim for it. An answer to the old request is stale now (it was
                // proven against the old size); ask again.
                f.target = vc;
                f.inflight = None;
                f.attempts = 0;
            }
            self.pump_logs(now);
            return;
        }
        match cp.size.cmp(&held.size()) {
            std::cmp::Ordering::Less => {
                // Older than the leaves held: nothing to fetch. (Its consistency with them is
                // the auditor's `--previous` check; the session keeps no old leaves.)
                self.stats.checkpoints_stale += 1;
            }
            std::cmp::Ordering::Equal if cp.root == held.root() => {
                self.store_log(LogBatch::Append {
                    office: vc.office.clone(),
                    first: held.size(),
                    leaves: Vec::new(),
                    checkpoint: Some(vc.note.into_bytes()),
                });
            }
            std::cmp::Ordering::Equal => {
                let reason = format!(
                    "EQUIVOCATION: office {} signed a checkpoint of {} leaves whose root differs from the {} leaves held, which an earlier checkpoint it signed covers",
                    vc.office, cp.size, cp.size
                );
                self.reject(SetKind::Checkpoints, reason);
                self.store_log(LogBatch::Equivocation {
                    office: vc.office.clone(),
                    note: vc.note.into_bytes(),
                });
            }
            std::cmp::Ordering::Greater => {
                self.logs.insert(
                    vc.office.clone(),
                    LogFollow {
                        target: vc,
                        frontier: held,
                        inflight: None,
                        attempts: 0,
                    },
                );
                self.pump_logs(now);
            }
        }
    }

    /// Sends LeavesWants for followed logs, within the in-flight and unstored limits.
    fn pump_logs(&mut self, now: Instant) {
        if self.phase != Phase::Open {
            return;
        }
        // The Want byte budget bounds leaf batches too.
        let per_want =
            (self.cfg.limits.want_bytes_max as usize / LEAF_LEN).clamp(1, LEAVES_PER_FRAME_MAX);
        let mut frames = Vec::new();
        let mut in_flight = self.logs.values().filter(|f| f.inflight.is_some()).count();
        // Leaves asked for and not yet received count against the unstored budget.
        let mut reserved: usize = self
            .logs
            .values()
            .filter_map(|f| f.inflight.as_ref())
            .map(|r| r.count as usize * LEAF_LEN)
            .sum();
        let can_receive = self.can_receive();
        for (office, f) in self.logs.iter_mut() {
            if in_flight >= LOG_WANTS_IN_FLIGHT_MAX || !can_receive {
                break;
            }
            if f.inflight.is_some() {
                continue;
            }
            let first = f.frontier.size();
            let size = f.target.checkpoint.size;
            debug_assert!(first < size, "a finished follow is removed");
            // Within what may wait for the disk; what is pending frees room when stored.
            let room = self
                .cfg
                .limits
                .unstored_bytes_max
                .saturating_sub(self.unstored_bytes + reserved)
                / LEAF_LEN;
            let count = (size - first).min(per_want.min(room) as u64) as u32;
            if count == 0 {
                break;
            }
            let bytes = count as usize * LEAF_LEN;
            reserved += bytes;
            let request = self.next_request;
            self.next_request = self.next_request.wrapping_add(1);
            f.inflight = Some(LeavesRequest {
                request,
                first,
                count,
                deadline: now + self.cfg.limits.request_timeout,
            });
            in_flight += 1;
            frames.push(Frame::LeavesWant {
                request,
                office: office.clone(),
                size,
                first,
                count,
            });
        }
        for f in frames {
            self.send(&f);
        }
    }

    fn handle_leaves(
        &mut self,
        request: u32,
        first: u64,
        leaves: Vec<LogLeaf>,
        proof: Vec<Hash>,
    ) -> Result<(), SessionError> {
        let Some(office) = self
            .logs
            .iter()
            .find(|(_, f)| f.inflight.as_ref().is_some_and(|r| r.request == request))
            .map(|(o, _)| o.clone())
        else {
            self.stats.stale_frames += 1;
            return Ok(());
        };
        let f = self.logs.get_mut(&office).expect("found above");
        let asked = f.inflight.take().expect("found above");
        if first != asked.first || leaves.len() > asked.count as usize {
            return self.protocol("answered a LeavesWant with other leaves than asked for");
        }
        let size = f.target.checkpoint.size;
        if leaves.is_empty() {
            // The peer offered (or relayed) this checkpoint but does not hold its leaves.
            self.logs.remove(&office);
            self.reject(
                SetKind::Checkpoints,
                format!("did not serve leaves {first}.. of office {office}'s log up to its checkpoint of {size}"),
            );
            return Ok(());
        }
        match logsync::extend(&f.frontier, &leaves, &proof, &f.target.checkpoint) {
            Err(e) => {
                self.logs.remove(&office);
                self.reject(
                    SetKind::Checkpoints,
                    format!("office {office}'s log: {e}; nothing of it stored"),
                );
            }
            Ok(next) => {
                self.stats.leaves_received += leaves.len() as u64;
                let done = next.size() == size;
                f.frontier = next;
                f.attempts = 0;
                let checkpoint = done.then(|| f.target.note.clone().into_bytes());
                if done {
                    self.logs.remove(&office);
                }
                self.store_log(LogBatch::Append {
                    office,
                    first,
                    leaves,
                    checkpoint,
                });
            }
        }
        Ok(())
    }

    /// The host loaded what the peer asked for in [`Action::FetchLeaves`] `request`: the leaves
    /// from the first asked for on and the consistency proof, or `None` if it does not hold
    /// that log up to the size asked for.
    pub fn leaves_fetched(&mut self, request: u32, found: Option<(Vec<LogLeaf>, Vec<Hash>)>) {
        let Some(first) = self.serving_leaves.remove(&request) else {
            debug_assert!(false, "leaves_fetched() for unknown request {request}");
            return;
        };
        if self.phase != Phase::Open {
            return;
        }
        let (mut leaves, mut proof) = found.unwrap_or_default();
        if leaves.len() > LEAVES_PER_FRAME_MAX || proof.len() > logsync::PROOF_HASHES_MAX {
            debug_assert!(false, "the host loaded more leaves than asked for");
            leaves.clear();
            proof.clear();
        }
        self.send(&Frame::Leaves {
            request,
            first,
            leaves,
            proof,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_items(
        &mut self,
        now: Instant,
        set: SetKind,
        request: u32,
        last: bool,
        received: Received,
        missing: Vec<[u8; 32]>,
        local: &dyn Local,
    ) -> Result<(), SessionError> {
        let Some(req) = self.inflight.get_mut(&request) else {
            debug_assert!(
                matches!(received, Received::Raw(_)),
                "decode() verifies answers to Wants in flight only"
            );
            self.stats.stale_frames += 1;
            return Ok(());
        };
        if req.set != set {
            return self.protocol("answered a Want with items of another set");
        }
        let (envs, accepted) = match received {
            Received::Raw(blobs) => {
                // Cheap bound before any verification: no honest frame carries more than the
                // budget plus the one item allowed to exceed it.
                if blobs.iter().map(Vec::len).sum::<usize>()
                    > req.bytes_max as usize + BLOB_BYTES_MAX
                {
                    return self.protocol("sent more than a Want's byte budget");
                }
                self.verify(set, blobs, local)
            }
            // Checked against the same bound by `decode`.
            Received::Verified((envs, rejects)) => {
                self.reject_all(set, rejects);
                (envs, Vec::new())
            }
        };
        let req = self.inflight.get_mut(&request).expect("checked above");
        // Keep only what this request asked for and has not yet received.
        let envs: Vec<VerifiedEnvelope> = envs
            .into_iter()
            .filter(|e| req.outstanding.remove(&e.hash()).is_some())
            .collect();
        let accepted: Vec<AcceptedBlob> = accepted
            .into_iter()
            .filter(|b| req.outstanding.remove(&b.info.item.id).is_some())
            .collect();
        let delivered: Vec<Key> = envs
            .iter()
            .map(|e| (set, e.hash()))
            .chain(accepted.iter().map(|b| (set, b.info.item.id)))
            .collect();
        // Exact rule on what was newly delivered (duplicated frames add nothing): the budget may
        // be exceeded only by a single item.
        req.received_bytes += envs
            .iter()
            .map(|e| e.envelope().change.len() + crate::envelope::HEADER_LEN)
            .chain(accepted.iter().map(|b| b.bytes.len()))
            .sum::<usize>();
        req.received_items += delivered.len();
        if req.received_items > 1 && req.received_bytes > req.bytes_max as usize {
            return self.protocol("sent more than a Want's byte budget");
        }
        let accepted = self.follow_logs(now, set, accepted, local);
        self.store(set, envs, accepted, Vec::new(), local);
        // Delivered items that are not now pending were dropped (tombstoned): forget them.
        for k in delivered
            .iter()
            .filter(|k| !self.pending_by_key.contains_key(k))
        {
            self.tracked.remove(k);
        }
        if last {
            let mut req = self.inflight.remove(&request).expect("checked above");
            for id in missing {
                if req.outstanding.remove(&id).is_some() {
                    self.tracked.remove(&(set, id));
                }
            }
            for (_, w) in std::mem::take(&mut req.outstanding) {
                self.requeue(set, w);
            }
        }
        Ok(())
    }

    fn handle_push(
        &mut self,
        now: Instant,
        set: SetKind,
        seq: u32,
        blob: Vec<u8>,
        local: &dyn Local,
    ) {
        if self.unstored_bytes + blob.len() > self.cfg.limits.unstored_bytes_max {
            // Too much waiting for the disk: drop it unacknowledged; the pusher times out and
            // the next round brings it.
            self.stats.pushes_dropped += 1;
            return;
        }
        let (envs, accepted) = self.verify(set, vec![blob], local);
        let followed = accepted.len();
        let accepted = self.follow_logs(now, set, accepted, local);
        if followed > accepted.len() {
            // A checkpoint of a followed log: its leaves are fetched by request, and a lost
            // fetch is retried by the next round, so the push itself is done with.
            self.ack_now(vec![seq]);
            return;
        }
        let key = envs
            .first()
            .map(|e| (set, e.item()))
            .or_else(|| accepted.first().map(|b| (set, b.info.item)));
        let Some((_, item)) = key else {
            // Rejected (and reported): acknowledge so the peer does not push it again.
            self.ack_now(vec![seq]);
            return;
        };
        let key = (set, item.id);
        if let Some(batch) = self.pending_by_key.get(&key) {
            let batch = *batch;
            self.pending
                .get_mut(&batch)
                .expect("pending_by_key points at a pending batch")
                .acks
                .push(seq);
            return;
        }
        if local.holds(set, &item) {
            self.ack_now(vec![seq]);
            return;
        }
        if self.store(set, envs, accepted, vec![seq], local).is_none() {
            // Covered by a tombstone: processed, nothing to store.
            self.ack_now(vec![seq]);
        }
    }

    fn ack_now(&mut self, seqs: Vec<u32>) {
        for chunk in seqs.chunks(ACK_SEQS_MAX) {
            self.send(&Frame::Ack {
                seqs: chunk.to_vec(),
            });
        }
    }

    /// The host has durably stored batch `id` (from [`Action::Store`]).
    pub fn stored(&mut self, now: Instant, id: BatchId, local: &dyn Local) {
        let Some(p) = self.pending.remove(&id) else {
            debug_assert!(false, "stored() for unknown batch {id}");
            return;
        };
        self.unstored_bytes -= p.bytes;
        for k in &p.keys {
            if self.pending_by_key.get(k) == Some(&id) {
                self.pending_by_key.remove(k);
            }
            self.tracked.remove(k);
        }
        for d in &p.tombstone_docs {
            if let Some(n) = self.pending_tombstone_docs.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    self.pending_tombstone_docs.remove(d);
                }
            }
        }
        if self.phase == Phase::Open && !p.acks.is_empty() {
            self.ack_now(p.acks);
        }
        self.pump(now, local);
    }

    /// The host loaded what the peer asked for in [`Action::Fetch`] `request`: `found` pairs each
    /// id with its bytes (any order; ids not found are simply absent, and so are ids policy keeps
    /// from this peer).
    pub fn fetched(&mut self, request: u32, found: Vec<([u8; 32], Vec<u8>)>) {
        let Some(s) = self.serving.remove(&request) else {
            debug_assert!(false, "fetched() for unknown request {request}");
            return;
        };
        if self.phase != Phase::Open {
            return;
        }
        let mut by_id: HashMap<[u8; 32], Vec<u8>> = found
            .into_iter()
            .filter(|(_, b)| b.len() <= BLOB_BYTES_MAX)
            .collect();
        let mut missing = Vec::new();
        let mut frames: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut frame_bytes = items_overhead(0);
        let mut sent = 0usize;
        for id in &s.ids {
            let Some(blob) = by_id.remove(id) else {
                missing.push(*id);
                continue;
            };
            if sent > 0 && sent + blob.len() > s.bytes_max as usize {
                // Over budget: left out, neither sent nor missing; the peer asks again.
                continue;
            }
            let cost = blob.len() + ITEMS_BLOB_OVERHEAD;
            if frame_bytes + cost > FRAME_BYTES_MAX - items_overhead(WANT_IDS_MAX) {
                frames.push(Vec::new());
                frame_bytes = items_overhead(0);
            }
            frame_bytes += cost;
            sent += blob.len();
            frames.last_mut().expect("never empty").push(blob);
        }
        let n = frames.len();
        for (i, blobs) in frames.into_iter().enumerate() {
            let last = i + 1 == n;
            self.send(&Frame::Items {
                set: s.set,
                request,
                last,
                blobs,
                missing: if last {
                    std::mem::take(&mut missing)
                } else {
                    Vec::new()
                },
            });
        }
    }

    /// The host lost local items it meant to push (its queue of them overflowed while this
    /// link was busy): a round soon finds them, instead of the next periodic one
    /// (`resync_interval`). Rate-limited by `resync_min_interval`; nothing before `Open`, whose
    /// first round covers everything anyway.
    pub fn request_round(&mut self, now: Instant) {
        if self.phase == Phase::Open {
            self.want_round(now);
        }
    }

    /// A new local item: pushed at once if the push window has room, else left to the next
    /// round (which is requested).
    pub fn push_local(&mut self, now: Instant, set: SetKind, blob: Vec<u8>) {
        if self.phase != Phase::Open {
            return; // the sync round on (re)connect carries it
        }
        debug_assert!(
            blob.len() <= BLOB_BYTES_MAX,
            "pushing an item over BLOB_BYTES_MAX"
        );
        if self.unacked_bytes + blob.len() > self.cfg.limits.push_unacked_bytes_max
            || !self.can_receive()
        {
            self.want_round(now);
            return;
        }
        let seq = self.next_push_seq;
        self.next_push_seq = self.next_push_seq.wrapping_add(1);
        self.unacked_bytes += blob.len();
        self.unacked.insert(
            seq,
            Unacked {
                bytes: blob.len(),
                deadline: now + self.cfg.limits.request_timeout,
            },
        );
        self.send(&Frame::Push { set, seq, blob });
    }

    /// Expires what is overdue and starts due rounds.
    pub fn handle_timeout(&mut self, now: Instant, local: &dyn Local) {
        if self.phase != Phase::Open {
            return;
        }
        if self.recon.as_ref().is_some_and(|r| now >= r.deadline) {
            // The peer did not answer: abandon this round and try again later.
            self.recon = None;
            self.round_sets.clear();
            self.round_fetching = false;
            self.want_round(now);
        }
        let expired: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(r, _)| *r)
            .collect();
        for r in expired {
            let mut w = self.inflight.remove(&r).expect("listed above");
            for (_, wanted) in std::mem::take(&mut w.outstanding) {
                self.requeue(w.set, wanted);
            }
        }
        let mut dropped = Vec::new();
        for (office, f) in self.logs.iter_mut() {
            if f.inflight.as_ref().is_some_and(|r| now >= r.deadline) {
                f.inflight = None;
                f.attempts += 1;
                if f.attempts >= WANT_ATTEMPTS_MAX {
                    dropped.push(office.clone());
                }
            }
        }
        for office in dropped {
            // The peer keeps not answering: leave this log to the next round.
            self.logs.remove(&office);
            self.want_round(now);
        }
        let late: Vec<u32> = self
            .unacked
            .iter()
            .filter(|(_, u)| now >= u.deadline)
            .map(|(s, _)| *s)
            .collect();
        if !late.is_empty() {
            for s in late {
                let u = self.unacked.remove(&s).expect("listed above");
                self.unacked_bytes -= u.bytes;
            }
            // A push may have been lost: reconcile to be sure.
            self.want_round(now);
        }
        self.pump(now, local);
    }
}
