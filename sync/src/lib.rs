//! consentd-sync: the trust and replication layer of consentd.
//!
//! - [`keys`]: office/root key generation and the key file formats.
//! - [`roster`]: the root-signed list of offices; [`roster::VerifiedRoster`] is the only source of
//!   trusted office keys.
//! - [`envelope`]: signed change envelopes, the unit of replication, and their verification.
//! - [`tombstone`]: signed statements that a record is deleted for good.
//! - [`merkle`]: RFC 9162 Merkle tree hashing and proofs (pure functions).
//! - [`tlog`]: each office's transparency log: leaves and C2SP signed-note checkpoints.
//! - [`b64`]: strict standard base64, as signed notes and audit bundles spell bytes.
//!
//! The core does no I/O; the only file-system access is the explicit load/save helpers in `keys`
//! and `roster`. Set reconciliation and the QUIC transport will live here too.

pub mod b64;
pub mod envelope;
pub mod keys;
pub mod merkle;
pub mod roster;
pub mod tlog;
pub mod tombstone;

pub use envelope::{Envelope, EnvelopeError, VerifiedEnvelope};
pub use keys::KeyError;
pub use roster::{Office, OfficeEntry, Roster, RosterError, SignedRoster, VerifiedRoster};
