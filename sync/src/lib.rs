//! consentd-sync: the trust and replication layer of consentd.
//!
//! - [`keys`]: office/root key generation and the key file formats.
//! - [`roster`]: the root-signed list of offices; [`roster::VerifiedRoster`] is the only source of
//!   trusted office keys.
//! - [`batch_sig`]: ed25519 batch verification with equal signers' terms grouped (ed25519-dalek's
//!   equation and verdict, about half the work for one-signer batches).
//! - [`envelope`]: signed change envelopes, the unit of replication, and their verification.
//! - [`change_chunk`]: Automerge change chunks read without expanding them; [`first_change`]: the
//!   document a record's first change makes, read from the chunk without Automerge;
//!   [`authoring`]: that first change written without Automerge, byte for byte as Automerge would.
//! - [`tombstone`]: signed statements that a record is deleted for good.
//! - [`merkle`]: RFC 9162 Merkle tree hashing and proofs (pure functions).
//! - [`tlog`]: each office's transparency log: leaves and C2SP signed-note checkpoints.
//! - [`logsync`]: following other offices' logs: batches of leaves checked against a signed
//!   checkpoint with RFC 9162 consistency proofs (pure).
//! - [`b64`]: strict standard base64, as signed notes and audit bundles spell bytes.
//! - [`item`]: set items, fingerprints and the sorted [`item::ItemSet`] reconciliation reads.
//! - [`reconcile`]: range-based set reconciliation (negentropy's algorithm), sans I/O.
//! - [`frame`]: the sync protocol's frames and their byte layouts (docs/sync-protocol.md).
//! - [`session`]: one peer connection's protocol state machine, sans I/O and clock-free.
//! - [`backoff`]: reconnect delays, a pure function of the attempt count.
//! - [`transport`]: QUIC (quinn) with roster-pinned raw public keys; the only async, I/O part.
//!
//! Everything but `transport` and the explicit load/save helpers in `keys` and `roster` does no
//! I/O and reads no clock: time comes in as an argument, so a simulation can drive it.

pub mod authoring;
pub mod b64;
pub mod backoff;
pub mod baseline;
pub mod batch_sig;
pub mod change_chunk;
pub mod envelope;
pub mod first_change;
pub mod frame;
pub mod item;
pub mod keys;
pub mod logsync;
pub mod merkle;
pub mod reconcile;
pub mod roster;
pub mod session;
pub mod tlog;
pub mod tombstone;
pub mod transport;
mod wire;

pub use envelope::{Envelope, EnvelopeError, VerifiedEnvelope};
pub use frame::{Frame, Hello, SetKind};
pub use item::{Item, ItemSet, SetView, Union, Without};
pub use keys::KeyError;
pub use roster::{Office, OfficeEntry, Roster, RosterError, SignedRoster, VerifiedRoster};
pub use wire::DecodeError;
