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
//! stop for [`TRIM_QUIET`], or at the latest [`TRIM_DELAY_MAX`] after the first unanswered ask,
//! so memory during a long burst is still returned regularly. The trim runs on its own thread:
//! nothing waits for it.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long bulk work must have stopped asking before the trim runs.
pub(crate) const TRIM_QUIET: Duration = Duration::from_millis(100);
/// The longest an ask waits for its trim, however busy the burst: bounds how much freed memory
/// a long import or sync keeps resident between trims.
pub(crate) const TRIM_DELAY_MAX: Duration = Duration::from_secs(2);

/// Asks for free heap memory to be returned to the kernel soon. Cheap (a lock and a notify);
/// the trim runs on the trimming thread. See the module doc.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = trimmer();
        let now = Instant::now();
        let mut asks = t.asks.lock().unwrap_or_else(|p| p.into_inner());
        asks.first.get_or_insert(now);
        asks.last = Some(now);
        t.wake.notify_one();
    }
}

/// The unanswered asks: the first and the latest since the last trim.
#[derive(Default)]
struct Asks {
    first: Option<Instant>,
    last: Option<Instant>,
}

struct Trimmer {
    asks: Mutex<Asks>,
    wake: Condvar,
}

/// When the trim for these asks is due (`None`: nothing asked). Pure, so the policy is tested
/// without a clock.
fn trim_due(first: Option<Instant>, last: Option<Instant>) -> Option<Instant> {
    let (first, last) = (first?, last?);
    debug_assert!(first <= last, "the first ask cannot come after the latest");
    Some((last + TRIM_QUIET).min(first + TRIM_DELAY_MAX))
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
        match trim_due(asks.first, asks.last) {
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
                *asks = Asks::default();
                drop(asks);
                // SAFETY: malloc_trim only returns free memory to the kernel; it has no
                // preconditions, and glibc locks each arena while it walks it.
                unsafe {
                    libc::malloc_trim(0);
                }
                asks = t.asks.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_waits_for_a_pause_but_never_longer_than_the_cap() {
        let t0 = Instant::now();
        assert_eq!(trim_due(None, None), None, "nothing asked, nothing due");
        // One ask: due once the quiet period after it has passed.
        assert_eq!(trim_due(Some(t0), Some(t0)), Some(t0 + TRIM_QUIET));
        // Asks keep coming: each pushes the trim back by the quiet period...
        let later = t0 + Duration::from_millis(500);
        assert_eq!(trim_due(Some(t0), Some(later)), Some(later + TRIM_QUIET));
        // ...but never past the cap counted from the first unanswered ask.
        let busy = t0 + TRIM_DELAY_MAX;
        assert_eq!(trim_due(Some(t0), Some(busy)), Some(t0 + TRIM_DELAY_MAX));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn an_ask_is_answered_by_the_trimming_thread() {
        release_free_heap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let asks = trimmer().asks.lock().unwrap();
            if asks.first.is_none() {
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
