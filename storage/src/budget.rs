//! A byte budget for batches queued to the writer.
//!
//! The writer channel is bounded in *batches*, but a batch may be up to `MAX_BATCH_BYTES`, so a
//! count bound alone would let a burst of large batches queue gigabytes. This budget bounds the
//! bytes of all batches that have been accepted but not yet answered. A commit takes a permit for
//! its batch's estimated size before it enters the channel; the permit travels with the batch and
//! is released when the writer drops the request after answering it (RAII, so cancellation and
//! every error path release it too).
//!
//! It is usable both from async code (waits on a `tokio::sync::Notify`) and from plain threads
//! (waits on a `Condvar`), because `tokio::sync::Semaphore` has no blocking acquire.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::Notify;

pub(crate) struct ByteBudget {
    used: Mutex<usize>,
    capacity: usize,
    cv: Condvar,
    notify: Notify,
}

/// Holds `n` bytes of the budget until dropped.
pub(crate) struct Permit {
    budget: Arc<ByteBudget>,
    n: usize,
}

impl ByteBudget {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            used: Mutex::new(0),
            capacity,
            cv: Condvar::new(),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // The critical sections below cannot panic, so poisoning cannot carry a broken count.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Callers guarantee `n <= capacity` (batches are size-checked first), so every request can
    /// eventually be granted once earlier permits are released.
    fn try_take(&self, n: usize) -> bool {
        debug_assert!(
            n <= self.capacity,
            "permit of {n} bytes can never be granted"
        );
        let mut used = self.lock();
        if *used + n <= self.capacity {
            *used += n;
            true
        } else {
            false
        }
    }

    pub(crate) async fn acquire(self: &Arc<Self>, n: usize) -> Permit {
        loop {
            // Register interest *before* checking, so a release between the check and the await
            // cannot be missed.
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.try_take(n) {
                return Permit {
                    budget: Arc::clone(self),
                    n,
                };
            }
            notified.await;
        }
    }

    pub(crate) fn acquire_blocking(self: &Arc<Self>, n: usize) -> Permit {
        debug_assert!(
            n <= self.capacity,
            "permit of {n} bytes can never be granted"
        );
        let mut used = self.lock();
        while *used + n > self.capacity {
            used = self.cv.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += n;
        Permit {
            budget: Arc::clone(self),
            n,
        }
    }

    fn release(&self, n: usize) {
        {
            let mut used = self.lock();
            debug_assert!(*used >= n, "byte budget released more than was taken");
            *used = used.saturating_sub(n);
        }
        self.cv.notify_all();
        self.notify.notify_waiters();
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        *self.lock()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.release(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn blocking_acquire_waits_for_release() {
        let b = ByteBudget::new(10);
        let p = b.acquire_blocking(8);
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || {
            let _p = b2.acquire_blocking(5);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !t.is_finished(),
            "second permit must wait while over capacity"
        );
        drop(p);
        t.join().unwrap();
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn async_acquire_waits_for_release() {
        let b = ByteBudget::new(10);
        let p = b.acquire(8).await;
        let b2 = Arc::clone(&b);
        let t = tokio::spawn(async move {
            let _p = b2.acquire(5).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !t.is_finished(),
            "second permit must wait while over capacity"
        );
        drop(p);
        t.await.unwrap();
        assert_eq!(b.used(), 0);
    }
}
