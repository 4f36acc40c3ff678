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
pub mod withdrawals;

use crate::office::Office;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Default number of deletions after which a pass compacts the store.
pub const COMPACT_AFTER_DEFAULT: u64 = 1000;
/// A pass compacts only once the records deleted since the last compaction are at least this
/// share of the records held before them: 1 in 4. The count survives restarts
/// ([`META_DELETED_SINCE_COMPACTION`]): an office restarted more often than it deletes a quarter
/// of its records would otherwise never compact.
///
/// Why: compaction gives freed pages back to the filesystem, and redb does it only with no
/// read transaction open, so every consent check and write waits until it ends
/// (`Store::compact`). At 1,000,000 records a pass deleting 2,000 froze consent checks for
/// 24.3 s, to shrink the file by about 0.2 %. Pages freed and not given back are reused by later
/// writes, so skipping compaction costs only file length until enough is free to be worth the
/// freeze; personal data in freed pages is unreadable either way (its keys are destroyed and
/// the KEK rotated).
pub const COMPACT_FREED_SHARE_MIN: (u64, u64) = (1, 4);
/// Meta key: the records purged here since the last compaction (u64 LE), committed with each
/// purge and set to 0 after a compaction; absent means none.
pub const META_DELETED_SINCE_COMPACTION: &str = "retention/deleted_since_compaction";
/// How often the daemon runs the pass.
pub const PASS_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
/// The first daily pass runs this long after start-up, not at once: a restart loop must not
/// turn into a deletion loop, and an operator starting an office can still set holds first.
pub const FIRST_PASS_AFTER: Duration = Duration::from_secs(60 * 60);

/// An office's retention settings (config `[retention]`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub schedule: schedule::Schedule,
    /// Compact the store after a pass or erasure that deleted at least this many records, once
    /// the deletions since the last compaction are [`COMPACT_FREED_SHARE_MIN`] of the store.
    pub compact_after: u64,
    /// Run the pass daily in the daemon.
    pub daily: bool,
    /// Allow `retention run --as-of` a future time without `--dry-run` (staging and tests;
    /// config `allow_future_passes`): such a pass deletes now what is due only then, records a
    /// legal duty keeps among them.
    pub future_passes: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            schedule: schedule::Schedule::default(),
            compact_after: COMPACT_AFTER_DEFAULT,
            daily: true,
            future_passes: false,
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
