//! Exact-key write locks: a writer holds the 32-byte keys it touches (consent tokens, record ids)
//! from loading documents until its commit is durable.
//!
//! Why not lock shards: an import chunk touches ~1,000 keys, which cover most of any shard
//! table of practical size, so two imports (or an import and a single grant) always shared a
//! shard and ran one after the other — the next chunk could not author while the previous one
//! waited for its fsync. Here writers wait only for writers that hold one of the same keys.
//!
//! A writer takes all its keys at once or none (it never holds some while waiting for others), so
//! writers of one table cannot deadlock. Across the tables and the subject keys' lock every task
//! takes them in one order: consent tokens, then the keys (shared by writes and ingests,
//! `KeyStore::using`; exclusively by a deletion, which destroys keys in the batch that purges
//! their records, `KeyStore::destroying`), then records; a KEK rotation holds the keys
//! exclusively and neither tokens nor records. The order matters for the keys' lock because it
//! is Tokio's fair `RwLock`: once a destruction queues, new readers wait behind it, so a task
//! holding a record while it waits for `using` and a write holding `using` while it waits for
//! that record stop each other, and every later write with them (an ingest did this;
//! `office::ingest`). Waiters are woken on every release and retry.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct KeyLocks {
    held: Mutex<HashSet<[u8; 32]>>,
    released: Notify,
}

/// Keys held until dropped.
pub(crate) struct KeyGuard<'l> {
    locks: &'l KeyLocks,
    keys: Vec<[u8; 32]>,
}

impl KeyLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        // The set is only ever changed whole-guard-at-a-time; a panic cannot leave it half done.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until none of `keys` is held by another writer, then holds all of them.
    pub(crate) async fn lock(&self, keys: &[[u8; 32]]) -> KeyGuard<'_> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the await wakes us.
            notified.as_mut().enable();
            {
                let mut held = self.held();
                if keys.iter().all(|k| !held.contains(k)) {
                    held.extend(keys.iter().copied());
                    return KeyGuard { locks: self, keys };
                }
            }
            notified.await;
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        {
            let mut held = self.locks.held();
            for k in &self.keys {
                held.remove(k);
            }
        }
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disjoint_keys_do_not_wait_and_shared_keys_do() {
        let locks = std::sync::Arc::new(KeyLocks::default());
        let a = locks.lock(&[[1; 32], [2; 32]]).await;
        // Disjoint: immediate.
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock(&[[3; 32]]))
            .await
            .expect("disjoint keys do not wait");
        // Shared: waits until `a` is dropped.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(&[[2; 32], [4; 32]]).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a shared key must wait");
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("released keys wake the waiter")
            .unwrap();
        drop(b);
        assert!(locks.held().is_empty());
    }
}
