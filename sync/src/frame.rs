//! Sync protocol frames: what two offices say to each other, and the exact bytes.
//!
//! A frame is one kind byte followed by its body; every integer is big-endian and every variable
//! part is length-prefixed, so decoding is exact (trailing bytes are an error). On a QUIC stream
//! each frame is preceded by its length as a u32 (see `transport`); [`FRAME_BYTES_MAX`] bounds
//! that length, and every count inside a frame has its own limit. docs/sync-protocol.md has the
//! byte layouts; this module is their source of truth.
//!
//! Decoding never panics and never allocates more than the input's length justifies: a count is
//! checked against what the remaining bytes could hold before anything is reserved.

use crate::envelope::MAX_ENVELOPE_BYTES;
use crate::item::{Item, TIMESTAMP_MAX};
use crate::logsync::{LEAVES_PER_FRAME_MAX, PROOF_HASHES_MAX};
use crate::merkle::Hash;
use crate::roster::{MAX_NETWORK_NAME_LEN, MAX_OFFICE_ID_LEN};
use crate::tlog::{LogLeaf, LEAF_LEN};
use crate::wire::{DecodeError, Reader};

/// The protocol version this build speaks, sent in [`Hello`]. Version 2 times envelope items by
/// millisecond (`envelope::item_time`); a version-1 peer would see every item as different, so
/// the Hello refuses it. Version 3 adds the sender's wall clock to the Hello
/// ([`Hello::wall_ms`]).
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest frame (kind byte and body; the u32 length prefix is extra).
pub const FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Largest item (envelope, tombstone or checkpoint) a frame may carry. Envelopes are the largest
/// kind; tombstones and checkpoints are a few hundred bytes.
pub const BLOB_BYTES_MAX: usize = MAX_ENVELOPE_BYTES;
/// Bytes of a reconciliation frame before its message: kind, set, epoch, round, length.
pub const RECON_HEADER_BYTES: usize = 1 + 1 + 4 + 4 + 4;
/// Largest reconciliation message: whatever a frame has room for.
pub const RECON_PAYLOAD_BYTES_MAX: usize = FRAME_BYTES_MAX - RECON_HEADER_BYTES;
/// Most ids one [`Frame::Want`] may ask for (32 KiB of ids).
pub const WANT_IDS_MAX: usize = 1024;
/// Most items one [`Frame::Have`] may announce (320 KiB).
pub const HAVE_ITEMS_MAX: usize = 8192;
/// Most push sequence numbers one [`Frame::Ack`] may carry.
pub const ACK_SEQS_MAX: usize = 4096;
/// Longest text in a [`Frame::Error`].
pub const ERROR_TEXT_BYTES_MAX: usize = 256;

const KIND_HELLO: u8 = 0x01;
const KIND_RECON_QUERY: u8 = 0x02;
const KIND_RECON_REPLY: u8 = 0x03;
const KIND_HAVE: u8 = 0x04;
const KIND_WANT: u8 = 0x05;
const KIND_ITEMS: u8 = 0x06;
const KIND_PUSH: u8 = 0x07;
const KIND_ACK: u8 = 0x08;
const KIND_ERROR: u8 = 0x09;
const KIND_LEAVES_WANT: u8 = 0x0A;
const KIND_LEAVES: u8 = 0x0B;

/// Encoded size of an item: timestamp u64 ‖ id.
const ITEM_BYTES: usize = 8 + 32;

/// The replicated sets, in the order a sync round reconciles them: tombstones first, so that
/// deleted documents are known before their envelopes could be fetched again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    Tombstones = 0,
    Envelopes = 1,
    Checkpoints = 2,
    /// Subject keys sealing the personal fields of records the receiver may hold. They travel
    /// only over the mutually authenticated link, before the envelopes they open; the receiver
    /// keeps one only together with a record that uses it.
    Keys = 3,
}

impl SetKind {
    /// How many sets there are (array sizes indexed by [`SetKind::index`]).
    pub const COUNT: usize = 4;

    /// Every set, in reconciliation order: deletions first, then the keys that open the
    /// envelopes that follow, then checkpoints over them.
    pub const ALL: [SetKind; SetKind::COUNT] = [
        SetKind::Tombstones,
        SetKind::Keys,
        SetKind::Envelopes,
        SetKind::Checkpoints,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetKind::Tombstones => "tombstones",
            SetKind::Envelopes => "envelopes",
            SetKind::Checkpoints => "checkpoints",
            SetKind::Keys => "keys",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn from_byte(b: u8) -> Result<SetKind, DecodeError> {
        match b {
            0 => Ok(SetKind::Tombstones),
            1 => Ok(SetKind::Envelopes),
            2 => Ok(SetKind::Checkpoints),
            3 => Ok(SetKind::Keys),
            _ => Err(DecodeError::Invalid {
                what: "set",
                detail: "unknown set kind",
            }),
        }
    }
}

/// The first frame each side sends: who it is and what it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub network: String,
    pub office: String,
    pub roster_serial: u64,
    /// The sender's wall clock when its session started, in Unix milliseconds: two offices
    /// whose clocks disagree by more than `Limits::clock_skew_max` do not sync.
    pub wall_ms: u64,
}

/// Why a session was refused or ended, as sent in [`Frame::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peer sent bytes that do not decode, or a frame out of turn.
    Protocol = 1,
    /// The peer speaks a protocol version we do not.
    Version = 2,
    /// The peer is in another network.
    Network = 3,
    /// The peer's Hello names an office other than the one its key belongs to.
    Identity = 4,
    /// Shutting down; reconnect later.
    Shutdown = 5,
    /// The two offices' clocks disagree by more than the limit.
    Clock = 6,
    /// Anything else.
    Other = 255,
}

impl ErrorCode {
    fn from_byte(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Version,
            3 => ErrorCode::Network,
            4 => ErrorCode::Identity,
            5 => ErrorCode::Shutdown,
            6 => ErrorCode::Clock,
            // Unknown codes from a newer peer are still an error, just an unnamed one.
            _ => ErrorCode::Other,
        }
    }
}

/// One protocol frame.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    /// A reconciliation message from the run's initiator. `epoch` names the run, `round` the
    /// message within it; the reply echoes both so stale or duplicated replies are recognised.
    ReconQuery {
        set: SetKind,
        epoch: u32,
        round: u32,
        message: Vec<u8>,
    },
    /// The responder's answer to a [`Frame::ReconQuery`].
    ReconReply {
        set: SetKind,
        epoch: u32,
        round: u32,
        message: Vec<u8>,
    },
    /// Items the sender holds and the receiver lacks, found by the sender's reconciliation run;
    /// the receiver fetches them with [`Frame::Want`].
    Have {
        set: SetKind,
        items: Vec<Item>,
    },
    /// Asks for items by id. The answer is one or more [`Frame::Items`] with the same `request`,
    /// together at most `bytes_max` bytes of items (but always at least one item).
    Want {
        set: SetKind,
        request: u32,
        bytes_max: u32,
        ids: Vec<[u8; 32]>,
    },
    /// Items answering a [`Frame::Want`]. The frame with `last` set ends the answer and lists
    /// the ids the sender does not hold or will not send (`missing`); any other requested id not
    /// delivered was left out for the byte budget and may be asked for again.
    Items {
        set: SetKind,
        request: u32,
        last: bool,
        blobs: Vec<Vec<u8>>,
        missing: Vec<[u8; 32]>,
    },
    /// A new item the sender just made (or received from its operator), sent at once.
    Push {
        set: SetKind,
        seq: u32,
        blob: Vec<u8>,
    },
    /// Pushes the receiver has processed (stored durably, or rejected): the sender may forget
    /// them.
    Ack {
        seqs: Vec<u32>,
    },
    /// The sender ends the session; it closes the stream after this frame.
    Error {
        code: ErrorCode,
        text: String,
    },
    /// Asks for leaves `[first, first + count)` of `office`'s log, with a consistency proof from
    /// the tree of `first + count` leaves to the tree of `size` leaves (the checkpoint the asker
    /// is verifying against). `first + count ≤ size`, `1 ≤ count ≤ LEAVES_PER_FRAME_MAX`.
    LeavesWant {
        request: u32,
        office: String,
        size: u64,
        first: u64,
        count: u32,
    },
    /// The answer to a [`Frame::LeavesWant`]: leaves from `first` on (at most the count asked
    /// for; none when the sender does not hold that log up to `size`) and the proof.
    Leaves {
        request: u32,
        first: u64,
        leaves: Vec<LogLeaf>,
        proof: Vec<Hash>,
    },
}

/// Frames carry personal data (envelope bytes); their `Debug` prints kinds, sets and sizes only.
impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Hello(h) => write!(f, "{h:?}"),
            Frame::ReconQuery {
                set,
                epoch,
                round,
                message,
            } => write!(
                f,
                "ReconQuery({}, epoch {epoch}, round {round}, {} bytes)",
                set.name(),
                message.len()
            ),
            Frame::ReconReply {
                set,
                epoch,
                round,
                message,
            } => write!(
                f,
                "ReconReply({}, epoch {epoch}, round {round}, {} bytes)",
                set.name(),
                message.len()
            ),
            Frame::Have { set, items } => write!(f, "Have({}, {} items)", set.name(), items.len()),
            Frame::Want {
                set, request, ids, ..
            } => write!(f, "Want({}, #{request}, {} ids)", set.name(), ids.len()),
            Frame::Items {
                set,
                request,
                last,
                blobs,
                missing,
            } => write!(
                f,
                "Items({}, #{request}, {} blobs, {} missing, last={last})",
                set.name(),
                blobs.len(),
                missing.len()
            ),
            Frame::Push { set, seq, blob } => {
                write!(f, "Push({}, seq {seq}, {} bytes)", set.name(), blob.len())
            }
            Frame::Ack { seqs } => write!(f, "Ack({} seqs)", seqs.len()),
            Frame::Error { code, text } => write!(f, "Error({code:?}, {text:?})"),
            Frame::LeavesWant {
                request,
                office,
                size,
                first,
                count,
            } => write!(
                f,
                "LeavesWant(#{request}, {office}, size {size}, {first}+{count})"
            ),
            Frame::Leaves {
                request,
                first,
                leaves,
                proof,
            } => write!(
                f,
                "Leaves(#{request}, {first}+{}, proof {})",
                leaves.len(),
                proof.len()
            ),
        }
    }
}

/// Office ids and network names are `[a-z0-9-]`; anything else in a Hello is refused before it
/// can reach a log line.
fn check_name(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    if bytes.is_empty()
        || !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(DecodeError::Invalid {
            what,
            detail: "must be 1 or more of a-z, 0-9 and -",
        });
    }
    Ok(String::from_utf8(bytes.to_vec()).expect("ASCII checked above"))
}

fn put_item(out: &mut Vec<u8>, it: &Item) {
    out.extend_from_slice(&it.timestamp.to_be_bytes());
    out.extend_from_slice(&it.id);
}

fn read_item(r: &mut Reader<'_>) -> Result<Item, DecodeError> {
    let timestamp = r.u64("item timestamp")?;
    if timestamp > TIMESTAMP_MAX {
        return Err(DecodeError::OutOfRange {
            what: "item timestamp",
            value: timestamp,
            max: TIMESTAMP_MAX,
        });
    }
    Ok(Item {
        timestamp,
        id: r.array("item id")?,
    })
}

fn read_blob(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = r.u32("item length")? as usize;
    if len > BLOB_BYTES_MAX {
        return Err(DecodeError::OutOfRange {
            what: "item length",
            value: len as u64,
            max: BLOB_BYTES_MAX as u64,
        });
    }
    Ok(r.bytes(len, "item")?.to_vec())
}

fn put_u32_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(
        &u32::try_from(len)
            .expect("lengths are bounded far below u32::MAX")
            .to_be_bytes(),
    );
}

impl Frame {
    /// Encodes the frame (without the transport's length prefix).
    ///
    /// The caller keeps every count and size within the limits above (the session does, by
    /// construction); a frame that breaks one is a bug, caught by a debug assertion, and the
    /// peer would refuse it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Frame::Hello(h) => {
                out.push(KIND_HELLO);
                out.extend_from_slice(&h.version.to_be_bytes());
                out.push(h.network.len() as u8);
                out.extend_from_slice(h.network.as_bytes());
                out.push(h.office.len() as u8);
                out.extend_from_slice(h.office.as_bytes());
                out.extend_from_slice(&h.roster_serial.to_be_bytes());
                // As each version lays it out (decoding reads it so): a Hello of an older
                // version re-encodes to its own bytes.
                if h.version >= 3 {
                    out.extend_from_slice(&h.wall_ms.to_be_bytes());
                }
            }
            Frame::ReconQuery {
                set,
                epoch,
                round,
                message,
            }
            | Frame::ReconReply {
                set,
                epoch,
                round,
                message,
            } => {
                out.push(if matches!(self, Frame::ReconQuery { .. }) {
                    KIND_RECON_QUERY
                } else {
                    KIND_RECON_REPLY
                });
                out.push(*set as u8);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&round.to_be_bytes());
                put_u32_len(&mut out, message.len());
                out.extend_from_slice(message);
            }
            Frame::Have { set, items } => {
                debug_assert!(items.len() <= HAVE_ITEMS_MAX, "Have over its item limit");
                out.push(KIND_HAVE);
                out.push(*set as u8);
                put_u32_len(&mut out, items.len());
                for it in items {
                    put_item(&mut out, it);
                }
            }
            Frame::Want {
                set,
                request,
                bytes_max,
                ids,
            } => {
                debug_assert!(ids.len() <= WANT_IDS_MAX, "Want over its id limit");
                out.push(KIND_WANT);
                out.push(*set as u8);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&bytes_max.to_be_bytes());
                out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(id);
                }
            }
            Frame::Items {
                set,
                request,
                last,
                blobs,
                missing,
            } => {
                debug_assert!(
                    missing.len() <= WANT_IDS_MAX,
                    "Items over its missing limit"
                );
                debug_assert!(blobs.len() <= WANT_IDS_MAX, "Items over its item limit");
                out.push(KIND_ITEMS);
                out.push(*set as u8);
                out.extend_from_slice(&request.to_be_bytes());
                out.push(u8::from(*last));
                out.extend_from_slice(&(blobs.len() as u16).to_be_bytes());
                for b in blobs {
                    debug_assert!(b.len() <= BLOB_BYTES_MAX, "item over BLOB_BYTES_MAX");
                    put_u32_len(&mut out, b.len());
                    out.extend_from_slice(b);
                }
                out.extend_from_slice(&(missing.len() as u16).to_be_bytes());
                for id in missing {
                    out.extend_from_slice(id);
                }
            }
            Frame::Push { set, seq, blob } => {
                debug_assert!(
                    blob.len() <= BLOB_BYTES_MAX,
                    "pushed item over BLOB_BYTES_MAX"
                );
                out.push(KIND_PUSH);
                out.push(*set as u8);
                out.extend_from_slice(&seq.to_be_bytes());
                put_u32_len(&mut out, blob.len());
                out.extend_from_slice(blob);
            }
            Frame::Ack { seqs } => {
                debug_assert!(seqs.len() <= ACK_SEQS_MAX, "Ack over its limit");
                out.push(KIND_ACK);
                out.extend_from_slice(&(seqs.len() as u16).to_be_bytes());
                for s in seqs {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            Frame::Error { code, text } => {
                out.push(KIND_ERROR);
                out.push(*code as u8);
                // Cut at a char boundary within the limit; error texts are ours and ASCII.
                let mut end = text.len().min(ERROR_TEXT_BYTES_MAX);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&(end as u16).to_be_bytes());
                out.extend_from_slice(&text.as_bytes()[..end]);
            }
            Frame::LeavesWant {
                request,
                office,
                size,
                first,
                count,
            } => {
                debug_assert!(
                    (1..=LEAVES_PER_FRAME_MAX as u32).contains(count),
                    "LeavesWant count out of range"
                );
                out.push(KIND_LEAVES_WANT);
                out.extend_from_slice(&request.to_be_bytes());
                out.push(office.len() as u8);
                out.extend_from_slice(office.as_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Frame::Leaves {
                request,
                first,
                leaves,
                proof,
            } => {
                debug_assert!(
                    leaves.len() <= LEAVES_PER_FRAME_MAX,
                    "Leaves over its limit"
                );
                debug_assert!(proof.len() <= PROOF_HASHES_MAX, "proof over its limit");
                out.push(KIND_LEAVES);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
                put_u32_len(&mut out, leaves.len());
                for l in leaves {
                    out.extend_from_slice(&l.encode());
                }
                out.push(proof.len() as u8);
                for h in proof {
                    out.extend_from_slice(h);
                }
            }
        }
        debug_assert!(
            out.len() <= FRAME_BYTES_MAX,
            "encoded a {}-byte frame; the limit is {FRAME_BYTES_MAX}",
            out.len()
        );
        out
    }

    /// Decodes exactly one frame occupying all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: FRAME_BYTES_MAX,
            });
        }
        let mut r = Reader::new(bytes);
        let kind = r.u8("frame kind")?;
        let frame = match kind {
            KIND_HELLO => {
                let version = r.u16("protocol version")?;
                let n = r.u8("network length")? as usize;
                if n > MAX_NETWORK_NAME_LEN {
                    return Err(DecodeError::OutOfRange {
                        what: "network name length",
                        value: n as u64,
                        max: MAX_NETWORK_NAME_LEN as u64,
                    });
                }
                let network = check_name(r.bytes(n, "network name")?, "network name")?;
                let n = r.u8("office length")? as usize;
                if n > MAX_OFFICE_ID_LEN {
                    return Err(DecodeError::OutOfRange {
                        what: "office id length",
                        value: n as u64,
                        max: MAX_OFFICE_ID_LEN as u64,
                    });
                }
                let office = check_name(r.bytes(n, "office id")?, "office id")?;
                let roster_serial = r.u64("roster serial")?;
                // Before version 3 the Hello ended here: read as such, it is refused for its
                // version (error code 2), which says what to do, not as a malformed frame.
                let wall_ms = if version >= 3 {
                    r.u64("wall clock")?
                } else {
                    0
                };
                Frame::Hello(Hello {
                    version,
                    network,
                    office,
                    roster_serial,
                    wall_ms,
                })
            }
            KIND_RECON_QUERY | KIND_RECON_REPLY => {
                let set = SetKind::from_byte(r.u8("set")?)?;
                let epoch = r.u32("epoch")?;
                let round = r.u32("round")?;
                let len = r.u32("message length")? as usize;
                if len > RECON_PAYLOAD_BYTES_MAX {
                    return Err(DecodeError::OutOfRange {
                        what: "reconciliation message length",
                        value: len as u64,
                        max: RECON_PAYLOAD_BYTES_MAX as u64,
                    });
                }
                let message = r.bytes(len, "reconciliation message")?.to_vec();
                if kind == KIND_RECON_QUERY {
                    Frame::ReconQuery {
                        set,
                        epoch,
                        round,
                        message,
                    }
                } else {
                    Frame::ReconReply {
                        set,
                        epoch,
                        round,
                        message,
                    }
                }
            }
            KIND_HAVE => {
                let set = SetKind::from_byte(r.u8("set")?)?;
                let n = r.u32("item count")?;
                let n = r.check_count(n as u64, HAVE_ITEMS_MAX, ITEM_BYTES, "Have item count")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(read_item(&mut r)?);
                }
                Frame::Have { set, items }
            }
            KIND_WANT => {
                let set = SetKind::from_byte(r.u8("set")?)?;
                let request = r.u32("request")?;
                let bytes_max = r.u32("byte budget")?;
                let n = r.u16("id count")?;
                let n = r.check_count(n as u64, WANT_IDS_MAX, 32, "Want id count")?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.array("id")?);
                }
                Frame::Want {
                    set,
                    request,
                    bytes_max,
                    ids,
                }
            }
            KIND_ITEMS => {
                let set = SetKind::from_byte(r.u8("set")?)?;
                let request = r.u32("request")?;
                let last = match r.u8("last flag")? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "last flag",
                            detail: "must be 0 or 1",
                        })
                    }
                };
                let n = r.u16("item count")?;
                let n = r.check_count(n as u64, WANT_IDS_MAX, 4, "Items item count")?;
                let mut blobs = Vec::with_capacity(n);
                for _ in 0..n {
                    blobs.push(read_blob(&mut r)?);
                }
                let m = r.u16("missing count")?;
                let m = r.check_count(m as u64, WANT_IDS_MAX, 32, "Items missing count")?;
                let mut missing = Vec::with_capacity(m);
                for _ in 0..m {
                    missing.push(r.array("missing id")?);
                }
                Frame::Items {
                    set,
                    request,
                    last,
                    blobs,
                    missing,
                }
            }
            KIND_PUSH => {
                let set = SetKind::from_byte(r.u8("set")?)?;
                let seq = r.u32("push sequence")?;
                let blob = read_blob(&mut r)?;
                Frame::Push { set, seq, blob }
            }
            KIND_ACK => {
                let n = r.u16("ack count")?;
                let n = r.check_count(n as u64, ACK_SEQS_MAX, 4, "Ack count")?;
                let mut seqs = Vec::with_capacity(n);
                for _ in 0..n {
                    seqs.push(r.u32("ack sequence")?);
                }
                Frame::Ack { seqs }
            }
            KIND_ERROR => {
                let code = ErrorCode::from_byte(r.u8("error code")?);
                let n = r.u16("error text length")? as usize;
                if n > ERROR_TEXT_BYTES_MAX {
                    return Err(DecodeError::OutOfRange {
                        what: "error text length",
                        value: n as u64,
                        max: ERROR_TEXT_BYTES_MAX as u64,
                    });
                }
                let raw = r.bytes(n, "error text")?;
                // A peer's text reaches our logs: keep printable ASCII only.
                let text = raw
                    .iter()
                    .map(|&b| {
                        if (0x20..0x7f).contains(&b) {
                            b as char
                        } else {
                            '?'
                        }
                    })
                    .collect();
                Frame::Error { code, text }
            }
            KIND_LEAVES_WANT => {
                let request = r.u32("request")?;
                let n = r.u8("office length")? as usize;
                if n > MAX_OFFICE_ID_LEN {
                    return Err(DecodeError::OutOfRange {
                        what: "office id length",
                        value: n as u64,
                        max: MAX_OFFICE_ID_LEN as u64,
                    });
                }
                let office = check_name(r.bytes(n, "office id")?, "office id")?;
                let size = r.u64("log size")?;
                let first = r.u64("first leaf")?;
                let count = r.u32("leaf count")?;
                if count == 0 || count as usize > LEAVES_PER_FRAME_MAX {
                    return Err(DecodeError::OutOfRange {
                        what: "LeavesWant leaf count",
                        value: count as u64,
                        max: LEAVES_PER_FRAME_MAX as u64,
                    });
                }
                if first.checked_add(count as u64).is_none_or(|end| end > size) {
                    return Err(DecodeError::Invalid {
                        what: "LeavesWant range",
                        detail: "first + count exceeds the log size",
                    });
                }
                Frame::LeavesWant {
                    request,
                    office,
                    size,
                    first,
                    count,
                }
            }
            KIND_LEAVES => {
                let request = r.u32("request")?;
                let first = r.u64("first leaf")?;
                let n = r.u32("leaf count")?;
                let n = r.check_count(n as u64, LEAVES_PER_FRAME_MAX, LEAF_LEN, "Leaves count")?;
                let mut leaves = Vec::with_capacity(n);
                for _ in 0..n {
                    let bytes = r.bytes(LEAF_LEN, "leaf")?;
                    leaves.push(LogLeaf::decode(bytes).ok_or(DecodeError::Invalid {
                        what: "leaf",
                        detail: "unknown leaf kind",
                    })?);
                }
                let m = r.u8("proof length")?;
                let m = r.check_count(m as u64, PROOF_HASHES_MAX, 32, "proof length")?;
                let mut proof = Vec::with_capacity(m);
                for _ in 0..m {
                    proof.push(r.array("proof hash")?);
                }
                Frame::Leaves {
                    request,
                    first,
                    leaves,
                    proof,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish("frame")?;
        Ok(frame)
    }

    /// Short name of the frame's kind, for logs and counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::ReconQuery { .. } => "recon-query",
            Frame::ReconReply { .. } => "recon-reply",
            Frame::Have { .. } => "have",
            Frame::Want { .. } => "want",
            Frame::Items { .. } => "items",
            Frame::Push { .. } => "push",
            Frame::Ack { .. } => "ack",
            Frame::Error { .. } => "error",
            Frame::LeavesWant { .. } => "leaves-want",
            Frame::Leaves { .. } => "leaves",
        }
    }
}

/// Encoded size of an [`Frame::Items`] with no blobs and `missing` ids: what is left of
/// [`FRAME_BYTES_MAX`] for blobs is the difference.
pub fn items_overhead(missing: usize) -> usize {
    1 + 1 + 4 + 1 + 2 + 2 + 32 * missing
}

/// Per-blob overhead inside [`Frame::Items`].
pub const ITEMS_BLOB_OVERHEAD: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(crate) fn samples() -> Vec<Frame> {
        let item = Item::new(1_700_000_000_000, [3; 32]);
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                network: "test-net".into(),
                office: "de".into(),
                roster_serial: 7,
                wall_ms: 1_700_000_000_000,
            }),
            Frame::ReconQuery {
                set: SetKind::Envelopes,
                epoch: 3,
                round: 1,
                message: vec![1, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
            },
            Frame::ReconReply {
                set: SetKind::Tombstones,
                epoch: 3,
                round: 1,
                message: vec![1],
            },
            Frame::Have {
                set: SetKind::Checkpoints,
                items: vec![item, Item::new(0, [0; 32])],
            },
            Frame::Want {
                set: SetKind::Envelopes,
                request: 9,
                bytes_max: 1 << 20,
                ids: vec![[1; 32], [2; 32]],
            },
            Frame::Items {
                set: SetKind::Envelopes,
                request: 9,
                last: true,
                blobs: vec![vec![5; 40], vec![], vec![6; 3]],
                missing: vec![[2; 32]],
            },
            Frame::Push {
                set: SetKind::Tombstones,
                seq: 77,
                blob: vec![8; 100],
            },
            Frame::Ack {
                seqs: vec![1, 2, 77],
            },
            Frame::Error {
                code: ErrorCode::Identity,
                text: "office de presented the key of office us".into(),
            },
            Frame::LeavesWant {
                request: 4,
                office: "cn".into(),
                size: 100,
                first: 90,
                count: 10,
            },
            Frame::Leaves {
                request: 4,
                first: 90,
                leaves: vec![
                    LogLeaf::envelope([1; 16], [2; 32]),
                    LogLeaf::tombstone([3; 16], [4; 32]),
                ],
                proof: vec![[5; 32]],
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let bytes = f.encode();
            assert_eq!(Frame::decode(&bytes).unwrap(), f, "{f:?}");
        }
    }

    #[test]
    fn every_truncation_and_extension_of_valid_frames_is_an_error() {
        for f in samples() {
            let bytes = f.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Frame::decode(&bytes[..cut]).is_err(),
                    "{f:?} cut at {cut} decoded"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Frame::decode(&longer),
                Err(DecodeError::Trailing { .. })
            ));
        }
    }

    #[test]
    fn every_single_byte_flip_decodes_or_errs_without_panic() {
        for f in samples() {
            let bytes = f.encode();
            for i in 0..bytes.len() {
                for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] = v;
                    let _ = Frame::decode(&b);
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(99);
        for _ in 0..200_000 {
            let len = rng.gen_range(0..64);
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if !b.is_empty() {
                b[0] = rng.gen_range(0..12); // mostly known kinds, so bodies get exercised
            }
            let _ = Frame::decode(&b);
        }
        // Random mutations of valid frames reach deeper into each body.
        let samples: Vec<Vec<u8>> = samples().iter().map(Frame::encode).collect();
        let mut decoded = 0;
        for _ in 0..100_000 {
            let mut b = samples[rng.gen_range(0..samples.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            decoded += Frame::decode(&b).is_ok() as u32;
        }
        assert!(
            decoded > 0,
            "no mutated frame decoded: the fuzzing is too shallow"
        );
    }

    #[test]
    fn oversized_input_and_counts_are_refused_before_allocation() {
        let big = vec![KIND_PUSH; FRAME_BYTES_MAX + 1];
        assert!(matches!(
            Frame::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        // A Push announcing a 4 GiB item.
        let mut push = vec![KIND_PUSH, 1, 0, 0, 0, 1];
        push.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Frame::decode(&push),
            Err(DecodeError::OutOfRange { .. })
        ));
        // A Have announcing more items than its limit, and more than the bytes hold.
        let mut have = vec![KIND_HAVE, 1];
        have.extend_from_slice(&(HAVE_ITEMS_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            Frame::decode(&have),
            Err(DecodeError::OutOfRange { .. })
        ));
        let mut have = vec![KIND_HAVE, 1];
        have.extend_from_slice(&100u32.to_be_bytes());
        assert!(matches!(
            Frame::decode(&have),
            Err(DecodeError::Truncated { .. })
        ));
        // Items frames with more blobs than Want allows.
        let mut items = vec![KIND_ITEMS, 1, 0, 0, 0, 1, 1];
        items.extend_from_slice(&(WANT_IDS_MAX as u16 + 1).to_be_bytes());
        assert!(Frame::decode(&items).is_err());
    }

    #[test]
    fn oversized_and_impossible_leaf_batches_are_refused() {
        // More leaves than a frame may carry (checked before the bytes are read).
        let mut leaves = vec![KIND_LEAVES, 0, 0, 0, 1];
        leaves.extend_from_slice(&0u64.to_be_bytes());
        leaves.extend_from_slice(&(LEAVES_PER_FRAME_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            Frame::decode(&leaves),
            Err(DecodeError::OutOfRange { .. })
        ));
        // A leaf of an unknown kind.
        let good = Frame::Leaves {
            request: 1,
            first: 0,
            leaves: vec![LogLeaf::envelope([1; 16], [2; 32])],
            proof: vec![],
        }
        .encode();
        let mut bad = good.clone();
        bad[1 + 4 + 8 + 4] = 7;
        assert!(Frame::decode(&bad).is_err());
        // A proof longer than any tree needs.
        let mut long = good.clone();
        *long.last_mut().unwrap() = (PROOF_HASHES_MAX + 1) as u8;
        long.extend(std::iter::repeat_n(0u8, 32 * (PROOF_HASHES_MAX + 1)));
        assert!(Frame::decode(&long).is_err());
        // Asking for nothing, for too much, or past the log's size.
        for (size, first, count) in [
            (10u64, 0u64, 0u32),
            (1 << 20, 0, LEAVES_PER_FRAME_MAX as u32 + 1),
            (10, 5, 6),
            (u64::MAX, u64::MAX, 1),
        ] {
            let mut f = vec![KIND_LEAVES_WANT, 0, 0, 0, 1, 2, b'c', b'n'];
            f.extend_from_slice(&size.to_be_bytes());
            f.extend_from_slice(&first.to_be_bytes());
            f.extend_from_slice(&count.to_be_bytes());
            assert!(Frame::decode(&f).is_err(), "{size} {first} {count}");
        }
    }

    #[test]
    fn hello_names_are_checked() {
        for (network, office) in [("Test", "de"), ("t", "d e"), ("", "de"), ("t", "")] {
            let f = Frame::Hello(Hello {
                version: 1,
                network: network.into(),
                office: office.into(),
                roster_serial: 0,
                wall_ms: 1_700_000_000_000,
            });
            assert!(
                Frame::decode(&f.encode()).is_err(),
                "{network:?} {office:?}"
            );
        }
        let mut long = vec![KIND_HELLO, 0, 1, 65];
        long.extend_from_slice(&[b'a'; 65]);
        assert!(Frame::decode(&long).is_err());
    }

    #[test]
    fn unknown_kinds_and_sets_are_errors() {
        assert_eq!(Frame::decode(&[0x00]), Err(DecodeError::UnknownKind(0)));
        assert_eq!(Frame::decode(&[0x42]), Err(DecodeError::UnknownKind(0x42)));
        let mut push = vec![KIND_PUSH, 4, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(Frame::decode(&push).is_err(), "set 4 does not exist");
        push[1] = 1;
        assert!(Frame::decode(&push).is_ok());
    }

    #[test]
    fn error_text_from_a_peer_is_sanitised() {
        let mut b = vec![KIND_ERROR, 1, 0, 3];
        b.extend_from_slice(b"a\nb");
        match Frame::decode(&b).unwrap() {
            Frame::Error { text, .. } => assert_eq!(text, "a?b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_never_prints_item_bytes() {
        let f = Frame::Push {
            set: SetKind::Envelopes,
            seq: 1,
            blob: b"alice@example.com".to_vec(),
        };
        assert!(!format!("{f:?}").contains("alice"));
    }
}
