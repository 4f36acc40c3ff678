//! Returning freed heap memory to the kernel once bulk work pauses.
//!
//! glibc keeps freed chunks resident in its malloc arenas. After an import chunk or a cold sync's
//! store batch (up to about a thousand Automerge documents of ~17 KB each, freed on the
//! authoring threads, plus the batch's encoded records freed on the writer's) that is tens of
//! megabytes that would stay resident after the work ends (measured: 15 MB of a 10,000-record
//! import's 43 MB of growth). `malloc_trim` hands it back.
//!
//! **Why not trim after every batch** (as this crate did until the fourteenth session): during
//! a burst the next batch reuses that memory at once, so a trim between two batches only
//! unmaps pages the next batch faults back in. Measured in a 100,000-record cold sync: the
//! trims took 7.5 % of all CPU samples, 6.1 % of them in `madvise`, plus the page faults that
//! followed. So bulk work only *asks* for a trim, and one background thread trims once the asks
//! stop for [`TRIM_QUIET`]. The trim runs on its own thread: nothing waits for it.
//!
//! **Why a long burst is not trimmed at all** (until the thirty-fifth session it was, at the
//! latest two seconds after the first unanswered ask): whatever a trim returns in the middle of
//! a burst, the burst's next batches fault back in, so it lowered no resident size that lasts,
//! and at 1,000,000 records it cost most: during a cold sync a trim every ~2 s took 38-188 ms
//! of the trimming thread, and each page the next batches took back came through a page fault
//! the kernel zeroed. Without those trims the replication family at 1,000,000 records took 13 %
//! fewer page faults and 3 % less CPU, and `memory_per_record` read the same (BENCHMARKS.md,
//! thirty-fifth session). A burst that never pauses keeps what it freed for its own next
//! batches; the trim once it pauses returns it.
//!
//! **Why the pause is a second, and why trims are spaced.** A trim walks every free chunk of
//! every arena and unmaps what it can, so it costs more as the heap grows: 2-15 ms after a
//! 10,000-record import, 20-300 ms during a cold sync at 1,000,000 records. There a store batch
//! took longer than the first rule's 100 ms pause, so every batch's ask looked like the end of
//! the work: 331 trims in a 129 s sync, 23 s on the trimming thread, 9 % of all CPU samples
//! (BENCHMARKS.md, twenty-fifth session), besides the arena locks the bulk threads waited on and
//! the pages they faulted back in. Now the pause is [`TRIM_QUIET`] (a second, several batches
//! of any sync), and after each trim the next waits [`TRIM_SPACING`] times as long as it took,
//! at most [`TRIM_SPACING_MAX`]: the trimming thread uses at most about a twentieth of a core
//! however large the heap.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long bulk work must have stopped asking before the trim runs: longer than the gap
/// between two batches of any bulk work (a cold sync's store batches, at most a few hundred
/// milliseconds apart at 1,000,000 records, measured).
pub(crate) const TRIM_QUIET: Duration = Duration::from_secs(1);
/// After a trim that took `d`, the next starts no sooner than `TRIM_SPACING × d` after it
/// ended (at most [`TRIM_SPACING_MAX`]): the trims' share of a core stays near 1 / 20.
const TRIM_SPACING: u32 = 19;
/// The longest [`TRIM_SPACING`] defers a trim.
pub(crate) const TRIM_SPACING_MAX: Duration = Duration::from_secs(2);
/// The longest from the last ask of a burst to the end of its trim, with the trim itself taking
/// at most a second: what a reader of the process's resident memory waits once work stops.
pub(crate) const TRIM_SETTLED_MAX: Duration = Duration::from_secs(4);

/// Asks for free heap memory to be returned to the kernel soon. Cheap (a lock and a notify);
/// the trim runs on the trimming thread. See the module doc.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = trimmer();
        let now = Instant::now();
        let mut asks = t.asks.lock().unwrap_or_else(|p| p.into_inner());
        asks.last = Some(now);
        t.wake.notify_one();
    }
}

/// The latest ask since the last trim, if any; and the soonest the next trim may start
/// ([`TRIM_SPACING`]).
#[derive(Default)]
struct Asks {
    last: Option<Instant>,
    not_before: Option<Instant>,
}

struct Trimmer {
    asks: Mutex<Asks>,
    wake: Condvar,
}

/// When the trim for the asks up to `last` is due (`None`: nothing asked): once they have
/// paused for [`TRIM_QUIET`], and no sooner than `not_before`. Pure, so the policy is tested
/// without a clock.
fn trim_due(last: Option<Instant>, not_before: Option<Instant>) -> Option<Instant> {
    let due = last? + TRIM_QUIET;
    Some(not_before.map_or(due, |n| due.max(n)))
}

/// The soonest the trim after one that ended at `ended` and took `took` may start.
fn next_trim_after(ended: Instant, took: Duration) -> Instant {
    ended + (took * TRIM_SPACING).min(TRIM_SPACING_MAX)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trimmer() -> &'static Trimmer {
    static TRIMMER: OnceLock<&'static Trimmer> = OnceLock::new();
    TRIMMER.get_or_init(|| {
        let t: &'static Trimmer = Box::leak(Box::new(Trimmer {
            asks: Mutex::new(Asks::default()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("consentd-trim".into())
            .spawn(move || trim_loop(t));
        if let Err(e) = spawned {
            // Without the thread asks are only recorded: memory stays resident, nothing fails.
            tracing::warn!(error = %e, "cannot start the heap-trimming thread; freed memory stays resident");
        }
        t
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_loop(t: &'static Trimmer) {
    let mut asks = t.asks.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match trim_due(asks.last, asks.not_before) {
            None => asks = t.wake.wait(asks).unwrap_or_else(|p| p.into_inner()),
            Some(due) => {
                let now = Instant::now();
                if now < due {
                    asks = t
                        .wake
                        .wait_timeout(asks, due - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                // Due only once the asks paused (`trim_due`), so every trim is a quiet one: the
                // debug line's `quiet` field, false for the trims the removed cap forced, is gone.
                debug_assert!(
                    asks.last.is_some_and(|l| now >= l + TRIM_QUIET),
                    "a trim ran before the asks paused"
                );
                *asks = Asks::default();
                drop(asks);
                let started = Instant::now();
                // SAFETY: malloc_trim only returns free memory to the kernel; it has no
                // preconditions, and glibc locks each arena while it walks it.
                let released = unsafe { libc::malloc_trim(0) } != 0;
                let (ended, took) = (Instant::now(), started.elapsed());
                tracing::debug!(micros = took.as_micros() as u64, released, "heap trimmed");
                asks = t.asks.lock().unwrap_or_else(|p| p.into_inner());
                asks.not_before = Some(next_trim_after(ended, took));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_a_pause_in_the_asks_however_long_the_burst() {
        let t0 = Instant::now();
        assert_eq!(trim_due(None, None), None, "nothing asked, nothing due");
        // One ask: due once the quiet period after it has passed.
        assert_eq!(trim_due(Some(t0), None), Some(t0 + TRIM_QUIET));
        // Asks keep coming, every half second for an hour: each pushes the trim back by the
        // quiet period, with no cap (a trim amid a burst returns only what the burst's next
        // batches fault back in).
        for ms in (500..3_600_000).step_by(500) {
            let last = t0 + Duration::from_millis(ms);
            assert_eq!(trim_due(Some(last), None), Some(last + TRIM_QUIET));
        }
    }

    #[test]
    fn a_long_trim_defers_the_next_by_nineteen_times_its_length_at_most_two_seconds() {
        let t0 = Instant::now();
        // A trim of 50 ms ending at t0: the next waits 950 ms, though its asks were due sooner.
        let not_before = next_trim_after(t0, Duration::from_millis(50));
        assert_eq!(not_before, t0 + Duration::from_millis(950));
        assert_eq!(
            trim_due(Some(t0), Some(not_before)),
            Some(t0 + Duration::from_millis(1_000)),
            "the quiet period ends after the spacing: the quiet period rules"
        );
        let asked = t0 - Duration::from_millis(900);
        assert_eq!(
            trim_due(Some(asked), Some(not_before)),
            Some(not_before),
            "due 100 ms after t0 by the asks, deferred to the spacing"
        );
        // A trim of 180 ms (a heap of gigabytes): deferred by the cap, not 3.4 s.
        assert_eq!(
            next_trim_after(t0, Duration::from_millis(180)),
            t0 + TRIM_SPACING_MAX
        );
        // However the asks fall, a burst's last ask is answered within the settling time.
        let last_trim_took = Duration::from_secs(1);
        let due = trim_due(Some(t0), Some(next_trim_after(t0, last_trim_took))).expect("asked");
        assert!(due + last_trim_took <= t0 + TRIM_SETTLED_MAX);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn an_ask_is_answered_by_the_trimming_thread() {
        release_free_heap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let asks = trimmer().asks.lock().unwrap();
            if asks.last.is_none() {
                break;
            }
            drop(asks);
            assert!(
                Instant::now() < deadline,
                "the trimming thread never trimmed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
