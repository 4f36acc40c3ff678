//! Bulk work (imports, a cold sync's verification and merges, a peer's Want answers) runs off
//! the runtime's workers, on a thread of lower CPU priority than the control socket's.
//!
//! Why both:
//! - **Off the workers**, so the control socket has a worker to answer on. Before this existed,
//!   `consent check` had a p99 of 77 ms (max 220 ms) during a cold sync of 100,000 records: both
//!   workers were inside ingest merges, envelope verification or Want answers.
//! - **At a lower priority** ([`BULK_NICE_STEP`] above the caller's nice value), so that a check
//!   arriving while bulk work holds the cores preempts it at once instead of waiting for its
//!   time slice. Measured at 100,000 records (BENCHMARKS.md, twentieth session): checks over the
//!   socket during a cold sync, p90 0.77-0.85 → 0.21-0.36 ms and p99 9.4-10.9 → 5.3-6.6 ms, the
//!   sync itself within its run-to-run spread. Nice values only weigh threads against each
//!   other; with nothing else runnable, bulk work runs at full speed.
//!
//! The price: bulk work also yields to other processes' normal-priority threads. With all seven
//! demo offices on one 2-core machine, an import of 30,000 records at one office took 27 s
//! instead of 18 s while the six others took it in; alone on the machine, it took as long as
//! before (`tools/checks-during-import.py`).
//!
//! A thread's nice value is its own on Linux and is inherited by the threads it starts, so the
//! threads bulk work fans out to (`std::thread::scope` in imports and merges) run at the same
//! lower priority. The runtime's workers never change priority: an unprivileged process cannot
//! raise a priority back, so the work runs on a thread started for it and ended with it
//! (a thread start and join, tens of µs, against the milliseconds that make work worth moving).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;

/// How much lower than its caller bulk work runs, in nice steps. 10 steps weigh a thread about
/// 9× less (1024 against 110 in the kernel's table): a woken check runs at once, and bulk work
/// still gets the cores whenever nothing else wants them.
pub(crate) const BULK_NICE_STEP: i32 = 10;
/// The lowest priority a thread can have.
const NICE_MAX: i32 = 19;

/// Runs `work`, milliseconds of CPU or of storage reads, without holding a runtime worker and
/// below the control socket's priority.
///
/// On the daemon's multi-threaded runtime: `tokio::task::block_in_place` moves the worker's
/// queue to another thread, and `work` runs on a thread of its own at [`BULK_NICE_STEP`] lower
/// priority, while this one waits. `spawn_blocking` would need `'static` work, and the callers
/// borrow `&self` and their batch. A panic in `work` reaches the caller as if `work` had run
/// here. On a current-thread runtime (unit tests) `block_in_place` panics, and there is no
/// other worker to keep free anyway, so `work` simply runs here, at this thread's priority.
///
/// Not for microseconds: moving the worker and starting the thread cost tens of µs.
pub(crate) fn off_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| at_bulk_priority(work)),
        _ => work(),
    }
}

/// [`off_worker`] when `heavy`, in place otherwise: for work whose cost depends on its size,
/// where moving off the worker would cost more than small work itself.
pub(crate) fn off_worker_if<R: Send>(heavy: bool, work: impl FnOnce() -> R + Send) -> R {
    if heavy {
        off_worker(work)
    } else {
        work()
    }
}

/// Parts a bulk job is split into per thread ([`in_parts`]). 8: an import chunk (1,000
/// operations on 2 threads) then has parts of ~60 operations, ~6 ms of authoring each, against
/// the chunk's ~90 ms.
pub(crate) const PARTS_PER_THREAD: usize = 8;

/// Runs `work` on every part, on `threads` scoped threads that take the parts in turn until none
/// is left; returns the results in no particular order. A panic in `work` reaches the caller.
/// With one thread (or one part) the parts are worked on here, in order: no thread is started.
///
/// Why parts taken in turn rather than one part per thread: bulk threads run at lower priority
/// (module doc), so the storage writer (committing the previous batch meanwhile) and the socket
/// take their CPU from one of them. With one part each, the other thread finished its share
/// early and its core idled while the delayed one caught up. Measured on an import of 10,000
/// records (BENCHMARKS.md, twenty-third session): +13 % records/s.
pub(crate) fn in_parts<T: Send, R: Send>(
    parts: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    debug_assert!(threads >= 1, "in_parts needs a thread");
    if threads <= 1 || parts.len() <= 1 {
        return parts.into_iter().map(work).collect();
    }
    let queue = std::sync::Mutex::new(parts.into_iter());
    let take = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    // Taken under the lock, worked on outside it.
                    while let Some(part) = take() {
                        done.push(work(part));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Runs `work` on a new thread at [`BULK_NICE_STEP`] lower priority and waits for it. The
/// thread logs to the caller's subscriber and inside the caller's span, as `work` would here.
fn at_bulk_priority<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let span = tracing::Span::current();
    // Borrowed by the thread, so that `work` is still here if no thread can be started.
    let slot = std::sync::Mutex::new(Some(work));
    let take = || slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let started = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("consentd-bulk".into())
            .spawn_scoped(s, || {
                let work = take().expect("bulk work is taken once");
                tracing::dispatcher::with_default(&dispatch, || {
                    let _entered = span.enter();
                    lower_this_thread();
                    work()
                })
            })
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    started.unwrap_or_else(|e| {
        // No thread to be had (a limit on threads or memory): the work is still in its slot,
        // and it still has to be done.
        tracing::warn!(error = %e, "cannot start a thread for bulk work: running it at the worker's priority");
        take().expect("work that no thread took is still in its slot")()
    })
}

/// Lowers this thread's priority by [`BULK_NICE_STEP`]. Where that is refused (a seccomp filter
/// without `setpriority`: the shipped unit allows it), the work runs anyway, and the refusal is
/// logged once.
fn lower_this_thread() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = nice_this_thread(BULK_NICE_STEP) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot lower the CPU priority of bulk work: consent checks may wait behind imports and syncs");
        }
    }
}

/// Raises this thread's nice value by `step` (to at most [`NICE_MAX`]) and returns the new one.
#[cfg(target_os = "linux")]
fn nice_this_thread(step: i32) -> std::io::Result<i32> {
    debug_assert!(
        step >= 0,
        "an unprivileged thread can only lower its priority"
    );
    let now = this_thread_nice()?;
    let target = (now + step).min(NICE_MAX);
    if target != now {
        // SAFETY: plain syscalls on this thread's own id; no memory is passed.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(target)
}

#[cfg(not(target_os = "linux"))]
fn nice_this_thread(_step: i32) -> std::io::Result<i32> {
    Err(std::io::Error::other(
        "per-thread priorities are Linux only",
    ))
}

/// This thread's nice value (on Linux a thread's own, not the process's).
#[cfg(target_os = "linux")]
fn this_thread_nice() -> std::io::Result<i32> {
    // SAFETY: plain syscalls on this thread's own id, and this thread's errno.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // -1 is a valid nice value: only errno tells it from a failure.
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if nice == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(nice)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn runtime(workers: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Every part is worked on exactly once, whatever the number of threads, and a thread that
    /// is held up does not hold up the parts: the others take them.
    #[test]
    fn in_parts_works_every_part_once_and_shares_them_out() {
        for threads in [1, 2, 5] {
            let parts: Vec<usize> = (0..40).collect();
            let mut done = in_parts(parts, threads, |p| (p, std::thread::current().id()));
            done.sort_unstable_by_key(|(p, _)| *p);
            let worked: Vec<usize> = done.iter().map(|(p, _)| *p).collect();
            assert_eq!(worked, (0..40).collect::<Vec<_>>(), "{threads} threads");
        }
        // Part 0 is held up until every other part is done (or 10 s pass): the other thread
        // must take all of them. One part per thread would leave half of them behind part 0.
        let others_done = std::sync::atomic::AtomicUsize::new(0);
        let done = in_parts((0..40).collect::<Vec<usize>>(), 2, |p| {
            if p == 0 {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while others_done.load(Ordering::SeqCst) < 39
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            } else {
                others_done.fetch_add(1, Ordering::SeqCst);
            }
            (p, std::thread::current().id())
        });
        let slow = done.iter().find(|(p, _)| *p == 0).unwrap().1;
        let by_slow = done.iter().filter(|(_, t)| *t == slow).count();
        assert_eq!(
            by_slow, 1,
            "the held-up thread worked {by_slow} of 40 parts"
        );
        assert!(in_parts(Vec::<u8>::new(), 2, |p| p).is_empty());
    }

    /// Work run through `off_worker` leaves the runtime's only worker free: a task that can only
    /// run on it answers while the work waits for that answer. Run in place, the work would wait
    /// forever (here: until the timeout fails the test).
    #[test]
    fn work_off_the_worker_lets_other_tasks_run_meanwhile() {
        let answered = runtime(1).block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<&str>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = go_rx.await;
                let _ = tx.send("answered");
            });
            let waiting = tokio::spawn(async move {
                off_worker(move || {
                    let _ = go_tx.send(());
                    rx.recv_timeout(std::time::Duration::from_secs(10))
                })
            });
            waiting.await.unwrap()
        });
        assert_eq!(answered, Ok("answered"));
    }

    /// On a current-thread runtime (`#[tokio::test]`) there is no worker to free, and
    /// `block_in_place` would panic: the work runs in place, at this thread's priority.
    #[tokio::test]
    async fn work_off_the_worker_runs_in_place_on_a_current_thread_runtime() {
        let here = (std::thread::current().id(), this_thread_nice().unwrap());
        let there = off_worker(|| (std::thread::current().id(), this_thread_nice().unwrap()));
        assert_eq!(there, here);
    }

    /// Bulk work, and the threads it fans out to, run below the worker's priority; the worker
    /// itself keeps its own (it could not get it back).
    #[test]
    fn bulk_work_and_its_threads_run_below_the_worker_which_keeps_its_priority() {
        let (worker_before, bulk, fanned_out, worker_after) = runtime(2).block_on(async {
            tokio::spawn(async {
                let before = this_thread_nice().unwrap();
                let (bulk, fanned_out) = off_worker(|| {
                    let fanned_out = std::thread::scope(|s| {
                        s.spawn(|| this_thread_nice().unwrap()).join().unwrap()
                    });
                    (this_thread_nice().unwrap(), fanned_out)
                });
                (before, bulk, fanned_out, this_thread_nice().unwrap())
            })
            .await
            .unwrap()
        });
        let expected = (worker_before + BULK_NICE_STEP).min(NICE_MAX);
        assert_eq!(
            bulk, expected,
            "bulk work at the worker's nice value + the step"
        );
        assert_eq!(
            fanned_out, expected,
            "threads started by bulk work inherit its priority"
        );
        assert_eq!(
            worker_after, worker_before,
            "the worker's own priority is unchanged"
        );
    }

    #[test]
    fn a_panic_in_bulk_work_reaches_its_caller() {
        let joined = runtime(2).block_on(async {
            tokio::spawn(async { off_worker(|| -> u8 { panic!("bulk work failed") }) }).await
        });
        let payload = joined.unwrap_err().into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"bulk work failed"));
    }

    /// A log line written by bulk work goes where the caller's would (its subscriber, its span).
    #[test]
    fn bulk_work_logs_to_the_callers_subscriber_inside_its_span() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let c = captured.clone();
                move || c.clone()
            })
            .with_ansi(false)
            .finish();
        runtime(2).block_on(async move {
            tokio::spawn(async move {
                tracing::subscriber::with_default(subscriber, || {
                    let _span = tracing::info_span!("link", peer = "nl").entered();
                    off_worker(|| tracing::info!("merged a batch"));
                })
            })
            .await
            .unwrap()
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("link{peer=\"nl\"}") && text.contains("merged a batch"),
            "{text:?}"
        );
    }
}
