//! Retention and erasure inside one office (issue 6): the schedule as data, the retention pass,
//! erasure requests, and the anonymous counts that survive deletion.
//!
//! Every deletion is a signed tombstone (`consentd_sync::tombstone`, no personal data in it)
//! applied in one durable batch with its log leaf and the purge of the record's envelopes,
//! projection and index entries; then the subject keys no remaining record uses are destroyed
//! and the key-encryption key rotated (keystore.rs), which is what makes the deletion physical.

pub mod aggregates;
pub mod erasure;
pub mod pass;
pub mod schedule;

use crate::office::Office;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Default number of deletions after which a pass compacts the store.
pub const COMPACT_AFTER_DEFAULT: u64 = 1000;
/// How often the daemon runs the pass.
pub const PASS_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
/// The first daily pass runs this long after start-up, not at once: a restart loop must not
/// turn into a deletion loop, and an operator starting an office can still set holds first.
pub const FIRST_PASS_AFTER: Duration = Duration::from_secs(60 * 60);

/// An office's retention settings (config `[retention]`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub schedule: schedule::Schedule,
    /// Compact the store after a pass or erasure that deleted at least this many records.
    pub compact_after: u64,
    /// Run the pass daily in the daemon.
    pub daily: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            schedule: schedule::Schedule::default(),
            compact_after: COMPACT_AFTER_DEFAULT,
            daily: true,
        }
    }
}

/// The daily pass: once at start-up and then every 24 hours. Logs counts only.
pub async fn daily(office: Arc<Office>, mut stop: watch::Receiver<bool>) {
    if !office.retention.daily {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(FIRST_PASS_AFTER) => {}
        _ = stop.changed() => return,
    }
    loop {
        match pass::run(&office, chrono::Utc::now(), false).await {
            Ok(r) => tracing::info!(
                deleted = r.deleted,
                held = r.held,
                kept = r.kept,
                keys_destroyed = r.keys_destroyed,
                "retention pass done"
            ),
            Err(e) => tracing::error!(error = %e, "retention pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PASS_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
