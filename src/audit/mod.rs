//! Audit: each office's transparency log and checkpoints, the one-file export, and the offline
//! verifier and compliance report (issue 4).
//!
//! - [`log`]: the office's append-only log state (an in-memory Merkle frontier over the durable
//!   `log` table) and checkpoint signing, on a timer and on demand.
//! - [`bundle`]: the export file format (JSON Lines; docs/audit-bundle.md) — writer and reader.
//! - [`export`]: the daemon side of `audit.export` (streams a bundle over the control socket)
//!   and the client side that writes it to the operator's file.
//! - [`verify`]: `consentctl audit verify`: every check, offline, on both cores.
//! - [`report`]: `consentctl audit report`: compliance tables from verified data only.
//! - [`cli`]: the `consentctl audit …` commands.
//!
//! The Merkle, checkpoint and tombstone formats themselves are pure code in the sync crate
//! (`consentd_sync::{merkle, tlog, tombstone}`): it owns every signed wire format and the trust
//! root, and keeping them free of I/O and clocks lets them be tested exhaustively.

pub mod bundle;
pub mod cli;
pub mod export;
pub mod log;
pub mod report;
pub mod verify;

pub use log::{AuditError, AuditLog, CHECKPOINT_INTERVAL};
