//! Writes in flight, so that a write path that stopped moving is noticed.
//!
//! Every write (`Office::write`) and every ingest of peers' envelopes registers here from its
//! start until it returns, however it returns. The daemon's liveness check (`daemon::liveness`)
//! asks for the oldest one: once it has been in flight for longer than
//! [`WRITE_STALL_AFTER`], the office logs that its write path stalled and, under systemd,
//! withholds the watchdog ping, so that systemd restarts the service.
//!
//! **Why.** A write that never finishes keeps its locks, and every later write touching them waits
//! behind it, while everything else in the daemon goes on: reads, replication links, the event
//! loop, the watchdog's own timer. A lock-order cycle between an ingest and a write
//! (`office::locks`; partition suite, seed 1254537357) left an office logging normally and
//! answering no write for two minutes. A restart loses nothing (a write is acknowledged only once
//! durable; the stuck writes' callers get an error and may retry), and it makes the office usable
//! again where an operator might notice only much later.
//!
//! **Why a minute.** The longest wait a healthy office shows is a write behind an import chunk's
//! locks and durable commit, or behind a key destruction waiting for that commit: seconds on a slow
//! disk, under a second usually. A minute is far above that and well under the two minutes
//! `consentctl` waits for an answer. The one longer pause is deliberate: a compaction after a large
//! retention pass holds the whole store while it rewrites the file (not timed at scale; at
//! 1,000,000 records minutes are plausible), so it is marked as maintenance
//! ([`InFlight::maintenance`]): while one runs nothing counts as stalled, and afterwards a write
//! that waited for it counts from its end.
//!
//! Cost: a mutex taken twice and a map entry per write or ingest batch: 142 ns alone, 266 ns
//! with two threads contending (a microbenchmark of the same code, thirty-eighth session),
//! against a write's ~130 µs of CPU.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write or ingest may stay in flight before the office's write path counts as
/// stalled.
pub const WRITE_STALL_AFTER: Duration = Duration::from_secs(60);

/// What is in flight: a write from the control socket (or the office's own, such as transfer
/// events), or an ingest of peers' envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Write,
    Ingest,
}

impl Work {
    pub fn name(self) -> &'static str {
        match self {
            Work::Write => "write",
            Work::Ingest => "ingest",
        }
    }
}

#[derive(Default)]
pub(crate) struct InFlight {
    started: Mutex<Started>,
}

#[derive(Default)]
struct Started {
    /// The next entry's sequence number.
    next: u64,
    /// Start of each write in flight, by sequence number: the first entry is the oldest.
    by_seq: BTreeMap<u64, (Instant, Work)>,
    /// Maintenance running now (compactions).
    maintenance: usize,
    /// When the last maintenance ended.
    maintenance_ended: Option<Instant>,
}

/// Maintenance that holds the store, running until dropped.
pub(crate) struct Maintenance<'a> {
    in_flight: &'a InFlight,
}

/// Registered until dropped (also when the write's future is dropped unfinished).
pub(crate) struct Entry<'a> {
    in_flight: &'a InFlight,
    seq: u64,
}

impl InFlight {
    fn started(&self) -> std::sync::MutexGuard<'_, Started> {
        // Each change is one insert or one remove: a panic cannot leave the map half done.
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn enter(&self, work: Work) -> Entry<'_> {
        let mut s = self.started();
        let seq = s.next;
        s.next += 1;
        s.by_seq.insert(seq, (Instant::now(), work));
        Entry {
            in_flight: self,
            seq,
        }
    }

    /// Marks maintenance that holds the store (a compaction) until the guard drops.
    pub(crate) fn maintenance(&self) -> Maintenance<'_> {
        self.started().maintenance += 1;
        Maintenance { in_flight: self }
    }

    /// The oldest work in flight and since when it has waited: from its start, or from the end
    /// of maintenance it waited for. `None` while maintenance runs.
    pub(crate) fn oldest(&self) -> Option<(Work, Instant)> {
        let s = self.started();
        if s.maintenance > 0 {
            return None;
        }
        // Sequence numbers grow with the start time, so the first entry started first.
        let (_, &(at, work)) = s.by_seq.first_key_value()?;
        Some((work, s.maintenance_ended.map_or(at, |end| end.max(at))))
    }
}

impl Drop for Maintenance<'_> {
    fn drop(&mut self) {
        let mut s = self.in_flight.started();
        debug_assert!(s.maintenance > 0, "maintenance ends once, by its own guard");
        s.maintenance -= 1;
        s.maintenance_ended = Some(Instant::now());
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let removed = self.in_flight.started().by_seq.remove(&self.seq);
        debug_assert!(
            removed.is_some(),
            "an entry is removed once, by its own guard"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_still_in_flight_is_reported() {
        let f = InFlight::default();
        assert!(f.oldest().is_none());
        let first = f.enter(Work::Ingest);
        let first_at = f.oldest().unwrap().1;
        std::thread::sleep(Duration::from_millis(2));
        let second = f.enter(Work::Write);
        assert_eq!(f.oldest(), Some((Work::Ingest, first_at)));
        drop(first);
        let (work, at) = f.oldest().unwrap();
        assert_eq!(work, Work::Write);
        assert!(at > first_at, "the second entry started later");
        drop(second);
        assert!(f.oldest().is_none());
    }

    /// A write waiting for a compaction is not stalled while it runs, and counts from its end.
    #[test]
    fn a_write_waiting_for_maintenance_counts_from_its_end() {
        let f = InFlight::default();
        let _write = f.enter(Work::Write);
        let started = f.oldest().unwrap().1;
        let compaction = f.maintenance();
        assert!(f.oldest().is_none(), "nothing stalls during maintenance");
        std::thread::sleep(Duration::from_millis(2));
        drop(compaction);
        let (work, since) = f.oldest().unwrap();
        assert_eq!(work, Work::Write);
        assert!(since > started, "counted from the maintenance's end");
    }

    /// A write whose future is dropped before it finishes (a cancelled task) leaves nothing
    /// behind that would read as stalled forever.
    #[test]
    fn a_dropped_unfinished_write_leaves_no_entry() {
        let f = InFlight::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiting = async {
                let _entry = f.enter(Work::Write);
                std::future::pending::<()>().await;
            };
            let r = tokio::time::timeout(Duration::from_millis(10), waiting).await;
            assert!(r.is_err(), "the write never finished");
        });
        assert!(f.oldest().is_none());
    }
}
