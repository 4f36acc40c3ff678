//! consentd-sync: the trust and replication layer of consentd.
//!
//! - [`keys`]: office/root key generation and the key file formats.
//! - [`roster`]: the root-signed list of offices; [`roster::VerifiedRoster`] is the only source of
//!   trusted office keys.
//! - [`envelope`]: signed change envelopes, the unit of replication, and their verification.
//!
//! The core does no I/O; the only file-system access is the explicit load/save helpers in `keys`
//! and `roster`. Set reconciliation and the QUIC transport will live here too.

pub mod envelope;
pub mod keys;
pub mod roster;

pub use envelope::{Envelope, EnvelopeError, VerifiedEnvelope};
pub use keys::KeyError;
pub use roster::{Office, OfficeEntry, Roster, RosterError, SignedRoster, VerifiedRoster};
