//! Integration tests of the public API of consentd-storage.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use consentd_storage::*;

fn doc(n: u32) -> DocId {
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&n.to_be_bytes());
    d[15] = 0xd0;
    d
}

fn hash(n: u32, salt: u8) -> Hash {
    let mut h = [salt; 32];
    h[..4].copy_from_slice(&n.to_be_bytes());
    h
}

fn ikey(n: u32) -> IndexKey {
    let mut k = [0x11u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k
}

/// One record with one envelope, one index key and a due day derived from `n`.
fn simple_update(n: u32) -> RecordUpdate {
    RecordUpdate {
        doc_id: doc(n),
        kind: 1,
        envelopes: vec![(hash(n, 0xaa), format!("env-{n}").into_bytes())],
        projection: format!("proj-{n}").into_bytes(),
        index_keys: vec![ikey(n)],
        due_day: Some(n as i32),
    }
}

fn batch(updates: Vec<RecordUpdate>) -> WriteBatch {
    WriteBatch {
        updates,
        meta: vec![],
        ..WriteBatch::default()
    }
}

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb")).unwrap();
    (dir, store)
}

#[test]
fn round_trip_update_and_idempotence() {
    let (_dir, store) = open_temp();
    let d = doc(1);
    let (h1, h2, h3) = (hash(1, 1), hash(2, 1), hash(3, 1));
    let (k_a, k_b, k_c) = (ikey(100), ikey(200), ikey(300));

    let r1 = store
        .commit_blocking(WriteBatch {
            updates: vec![RecordUpdate {
                doc_id: d,
                kind: 7,
                envelopes: vec![(h1, b"one".to_vec()), (h2, b"two".to_vec())],
                projection: b"state-1".to_vec(),
                index_keys: vec![k_a, k_b, k_a], // duplicate is ignored
                due_day: Some(-3),
            }],
            meta: vec![("peer/x".into(), b"cursor".to_vec())],
            ..WriteBatch::default()
        })
        .unwrap();

    assert_eq!(store.envelope(&h1).unwrap().as_deref(), Some(&b"one"[..]));
    assert!(store.has_envelope(&h2).unwrap());
    assert!(!store.has_envelope(&h3).unwrap());
    assert_eq!(
        store.has_envelopes(&[h3, h1, h2, h3]).unwrap(),
        vec![false, true, true, false],
        "one answer per hash, in order"
    );
    assert_eq!(
        store.envelopes(&[h2, h3, h1]).unwrap(),
        vec![Some((d, b"two".to_vec())), None, Some((d, b"one".to_vec()))],
        "one answer per hash, in order, with the doc it belongs to"
    );
    assert_eq!(store.envelope(&h3).unwrap(), None);
    assert_eq!(
        store.doc_envelopes(&d).unwrap(),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(
        store.projection(&d).unwrap(),
        Some((7, b"state-1".to_vec()))
    );
    assert_eq!(store.projection(&doc(2)).unwrap(), None);
    assert_eq!(store.docs_by_key(&k_a).unwrap(), vec![d]);
    assert_eq!(store.docs_by_key(&k_b).unwrap(), vec![d]);
    assert_eq!(store.docs_by_key(&k_c).unwrap(), Vec::<DocId>::new());
    assert_eq!(store.docs_due_before(-2, 10).unwrap(), vec![(-3, d)]);
    assert_eq!(store.docs_due_before(-3, 10).unwrap(), vec![]);
    assert_eq!(
        store.projections_of_kind(7, 10).unwrap(),
        vec![(d, b"state-1".to_vec())]
    );
    assert_eq!(
        store.meta("peer/x").unwrap().as_deref(),
        Some(&b"cursor"[..])
    );
    assert_eq!(store.meta("peer/y").unwrap(), None);
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes), (1, 2));

    // Update: h2 again (already stored) and h1 again in the same update, one new change h3;
    // new kind, index keys {b, c}, no due day.
    let r2 = store
        .commit_blocking(batch(vec![RecordUpdate {
            doc_id: d,
            kind: 8,
            envelopes: vec![
                (h2, b"two-again".to_vec()),
                (h3, b"three".to_vec()),
                (h1, b"one-again".to_vec()),
                (h3, b"three-again".to_vec()),
            ],
            projection: b"state-2".to_vec(),
            index_keys: vec![k_c, k_b],
            due_day: None,
        }]))
        .unwrap();
    assert!(r2.commit_seq > r1.commit_seq);

    assert_eq!(
        store.doc_envelopes(&d).unwrap(),
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
        "re-sent hashes must not be duplicated nor overwritten"
    );
    assert_eq!(store.doc_change_hashes(&d).unwrap(), vec![h1, h2, h3]);
    assert_eq!(
        store.projection(&d).unwrap(),
        Some((8, b"state-2".to_vec()))
    );
    assert_eq!(
        store.docs_by_key(&k_a).unwrap(),
        Vec::<DocId>::new(),
        "old key kept"
    );
    assert_eq!(store.docs_by_key(&k_b).unwrap(), vec![d]);
    assert_eq!(store.docs_by_key(&k_c).unwrap(), vec![d]);
    assert_eq!(
        store.docs_due_before(i32::MAX, 10).unwrap(),
        vec![],
        "old due kept"
    );
    assert_eq!(
        store.projections_of_kind(7, 10).unwrap(),
        vec![],
        "old kind kept"
    );
    assert_eq!(store.projections_of_kind(8, 10).unwrap().len(), 1);
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes), (1, 3));

    // The same hash offered for another doc is skipped as well (hashes are global).
    store
        .commit_blocking(batch(vec![RecordUpdate {
            doc_id: doc(2),
            kind: 8,
            envelopes: vec![(h1, b"other".to_vec())],
            ..Default::default()
        }]))
        .unwrap();
    assert_eq!(store.doc_envelopes(&doc(2)).unwrap(), Vec::<Vec<u8>>::new());
    // Many docs' envelopes from one snapshot: each list its doc's, in the order asked.
    assert_eq!(
        store.docs_envelopes(&[doc(2), d, doc(3)]).unwrap(),
        vec![
            vec![],
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
            vec![]
        ]
    );
    assert_eq!(store.envelope(&h1).unwrap().as_deref(), Some(&b"one"[..]));
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes), (2, 3));
}

#[test]
fn shared_keys_due_order_and_kind_paging() {
    let (_dir, store) = open_temp();
    let shared = ikey(9);
    let days = [5, -10, 0, 5, 20_000, i32::MIN, -1];
    let updates: Vec<RecordUpdate> = days
        .iter()
        .enumerate()
        .map(|(i, &day)| RecordUpdate {
            doc_id: doc(i as u32),
            kind: 3,
            projection: vec![i as u8],
            index_keys: vec![shared, ikey(1000 + i as u32)],
            due_day: Some(day),
            ..Default::default()
        })
        .collect();
    store.commit_blocking(batch(updates)).unwrap();

    let mut by_key = store.docs_by_key(&shared).unwrap();
    by_key.sort();
    assert_eq!(by_key, (0..7).map(doc).collect::<Vec<_>>());
    let recs = store.projections_by_key(&shared).unwrap();
    assert_eq!(recs.len(), 7);
    assert!(recs
        .iter()
        .all(|(d, kind, p)| *kind == 3 && doc(u32::from(p[0])) == *d));

    let due = store.docs_due_before(6, 100).unwrap();
    let got_days: Vec<i32> = due.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        got_days,
        vec![i32::MIN, -10, -1, 0, 5, 5],
        "ascending, numeric"
    );
    assert_eq!(
        store.docs_due_before(6, 2).unwrap().len(),
        2,
        "limit honoured"
    );
    assert_eq!(store.docs_due_before(i32::MIN, 100).unwrap(), vec![]);

    let mut all = Vec::new();
    let mut after: Option<DocId> = None;
    loop {
        let page = store
            .projections_of_kind_after(3, after.as_ref(), 3)
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().0);
        all.extend(page);
    }
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(store.projections_of_kind(4, 100).unwrap(), vec![]);
}

/// Start-up reads every record once, page by page, from one snapshot.
#[test]
fn projections_page_in_doc_order_within_one_snapshot() {
    let (_dir, store) = open_temp();
    store
        .commit_blocking(batch((0..5).rev().map(simple_update).collect()))
        .unwrap();
    let snap = store.snapshot().unwrap();
    // Written after the snapshot: not seen by it.
    store
        .commit_blocking(batch(vec![simple_update(9)]))
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = snap.projections_after(after.as_ref(), 2).unwrap();
        assert!(page.len() <= 2);
        let Some(&(last, _, _)) = page.last() else {
            break;
        };
        seen.extend(page);
        after = Some(last);
    }
    let want: Vec<(DocId, u8, Vec<u8>)> = (0..5)
        .map(|n| (doc(n), 1, format!("proj-{n}").into_bytes()))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(
        store
            .snapshot()
            .unwrap()
            .projections_after(None, 100)
            .unwrap()
            .len(),
        6
    );
}

/// The hot read paths share one snapshot between commits (`Store::hot`). Every read after an
/// acknowledged commit must see that commit, however busy other readers keep a shared snapshot.
#[test]
fn hot_reads_see_every_acknowledged_commit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dir, store) = open_temp();
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    // Readers that share (and, after each commit, share again) a snapshot all the time.
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    store.projection(&doc(1)).unwrap();
                    store.docs_by_key(&ikey(0)).unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 0..300u32 {
        let update = RecordUpdate {
            doc_id: doc(1),
            kind: 1,
            envelopes: vec![(hash(i, 0xbb), vec![i as u8])],
            projection: format!("v{i}").into_bytes(),
            index_keys: vec![ikey(i)],
            due_day: None,
        };
        store.commit_blocking(batch(vec![update])).unwrap();
        let want = format!("v{i}").into_bytes();
        assert_eq!(
            store.projection(&doc(1)).unwrap(),
            Some((1, want.clone())),
            "commit {i}"
        );
        assert_eq!(
            store.projections_by_key(&ikey(i)).unwrap(),
            vec![(doc(1), 1, want)],
            "commit {i}"
        );
        if i > 0 {
            assert!(
                store.docs_by_key(&ikey(i - 1)).unwrap().is_empty(),
                "commit {i}: the key it replaced is still found"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0, "the readers never ran");
}

/// redb compacts only with no read transaction open: the shared snapshot of the hot read paths
/// must not stand in the way (nor survive it).
#[test]
fn compaction_is_not_blocked_by_the_shared_snapshot() {
    let (_dir, store) = open_temp();
    store
        .commit_blocking(batch((0..200).map(simple_update).collect()))
        .unwrap();
    store
        .commit_purge_blocking((0..190).map(doc).collect(), WriteBatch::default())
        .unwrap();
    // Read after the last commit: the snapshot is shared and open now.
    let want = Some((1, b"proj-195".to_vec()));
    assert_eq!(store.projection(&doc(195)).unwrap(), want);
    assert!(store.compact().unwrap(), "nothing was compacted");
    assert_eq!(store.projection(&doc(195)).unwrap(), want);
    assert_eq!(store.docs_by_key(&ikey(195)).unwrap(), vec![doc(195)]);
    assert_eq!(store.projection(&doc(5)).unwrap(), None);
}

#[test]
fn purge_removes_everything_of_a_doc() {
    let (_dir, store) = open_temp();
    store
        .commit_blocking(batch(vec![simple_update(1), simple_update(2)]))
        .unwrap();
    store
        .commit_purge_blocking(
            vec![doc(1), doc(99)], // unknown doc: no-op
            WriteBatch {
                updates: vec![],
                meta: vec![("tombstone/1".into(), b"t".to_vec())],
                ..WriteBatch::default()
            },
        )
        .unwrap();
    assert_eq!(store.projection(&doc(1)).unwrap(), None);
    assert!(!store.has_envelope(&hash(1, 0xaa)).unwrap());
    assert_eq!(store.doc_envelopes(&doc(1)).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(store.docs_by_key(&ikey(1)).unwrap(), Vec::<DocId>::new());
    assert_eq!(
        store.docs_due_before(i32::MAX, 10).unwrap(),
        vec![(2, doc(2))]
    );
    assert_eq!(store.projections_of_kind(1, 10).unwrap().len(), 1);
    assert_eq!(
        store.meta("tombstone/1").unwrap().as_deref(),
        Some(&b"t"[..])
    );
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes), (1, 1));
    assert!(store.has_envelope(&hash(2, 0xaa)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn group_commit_batches_concurrent_commits() {
    let (_dir, store) = open_temp();
    const N: u32 = 200;
    let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = store.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.commit(batch(vec![simple_update(i)])).await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().commit_seq);
    }
    let s = store.stats().unwrap();
    eprintln!(
        "200 concurrent commits -> {} durable commits, {} distinct receipts",
        s.commits_durable,
        {
            let mut d = seqs.clone();
            d.sort();
            d.dedup();
            d.len()
        }
    );
    assert_eq!(s.batches_committed, u64::from(N));
    assert!(
        s.commits_durable < u64::from(N),
        "no batching happened: {} commits for {N} batches",
        s.commits_durable
    );
    assert_eq!((s.records, s.envelopes), (u64::from(N), u64::from(N)));
    assert_eq!(s.last_commit_seq, *seqs.iter().max().unwrap());
    for i in 0..N {
        assert_eq!(
            store.projection(&doc(i)).unwrap(),
            Some((1, format!("proj-{i}").into_bytes()))
        );
        assert_eq!(store.docs_by_key(&ikey(i)).unwrap(), vec![doc(i)]);
    }
}

#[test]
fn data_and_counters_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let last_seq;
    {
        let store = Store::open(&path).unwrap();
        for i in 0..10 {
            store
                .commit_blocking(batch(vec![simple_update(i)]))
                .unwrap();
        }
        last_seq = store
            .commit_blocking(WriteBatch {
                updates: vec![],
                meta: vec![("k".into(), b"v".to_vec())],
                ..WriteBatch::default()
            })
            .unwrap()
            .commit_seq;
        // Opening the same file twice must fail while it is open.
        assert!(matches!(Store::open(&path), Err(StorageError::Open { .. })));
        store.shutdown();
    } // dropped here: file closed
    let store = Store::open(&path).unwrap();
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes), (10, 10));
    assert_eq!(s.last_commit_seq, last_seq);
    assert_eq!(
        (s.commits_durable, s.batches_committed),
        (0, 0),
        "since open"
    );
    assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    for i in 0..10 {
        assert_eq!(
            store.doc_envelopes(&doc(i)).unwrap(),
            vec![format!("env-{i}").into_bytes()]
        );
        assert_eq!(store.docs_due_before(i32::MAX, 100).unwrap().len(), 10);
    }
    let r = store
        .commit_blocking(batch(vec![simple_update(10)]))
        .unwrap();
    assert_eq!(
        r.commit_seq,
        last_seq + 1,
        "commit numbers continue across restarts"
    );
    assert_eq!(store.stats().unwrap().records, 11);
}

#[tokio::test]
async fn commit_after_shutdown_is_closed() {
    let (_dir, store) = open_temp();
    let other = store.clone();
    store.commit(batch(vec![simple_update(1)])).await.unwrap();
    store.shutdown();
    store.shutdown(); // idempotent
    assert!(matches!(
        other.commit(batch(vec![simple_update(2)])).await,
        Err(StorageError::Closed)
    ));
    let blocking = other.clone();
    let r = std::thread::spawn(move || blocking.commit_blocking(WriteBatch::default()))
        .join()
        .unwrap();
    assert!(matches!(r, Err(StorageError::Closed)));
    // Reads still work on a shut-down store.
    assert!(other.projection(&doc(1)).unwrap().is_some());
    assert_eq!(other.projection(&doc(2)).unwrap(), None);
}

#[test]
fn shutdown_drains_queued_commits() {
    let (_dir, store) = open_temp();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let s = store.clone();
            std::thread::spawn(move || s.commit_blocking(batch(vec![simple_update(i)])))
        })
        .collect();
    // Every commit either ran before shutdown (Ok, durable) or after it (Closed): none is lost
    // or left hanging.
    store.shutdown();
    let mut ok = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(_) => ok += 1,
            Err(StorageError::Closed) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(store.stats().unwrap().records, ok);
}

#[test]
fn over_limit_batches_are_rejected() {
    let (_dir, store) = open_temp();
    let big_env = RecordUpdate {
        envelopes: vec![(hash(1, 1), vec![0; MAX_ENVELOPE_BYTES + 1])],
        ..simple_update(1)
    };
    let big_proj = RecordUpdate {
        projection: vec![0; MAX_PROJECTION_BYTES + 1],
        ..simple_update(2)
    };
    let many_keys = RecordUpdate {
        index_keys: (0..MAX_INDEX_KEYS as u32 + 1).map(ikey).collect(),
        ..simple_update(3)
    };
    for u in [big_env, big_proj, many_keys] {
        let err = store.commit_blocking(batch(vec![u])).unwrap_err();
        assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    }
    let big_meta = WriteBatch {
        updates: vec![],
        meta: vec![("m".into(), vec![0; MAX_META_VALUE_BYTES + 1])],
        ..WriteBatch::default()
    };
    let err = store.commit_blocking(big_meta).unwrap_err();
    assert!(err.to_string().contains("meta value bytes"), "{err}");
    // 17 envelopes of 1 MiB each: every one within limits, the batch over MAX_BATCH_BYTES.
    let huge = RecordUpdate {
        envelopes: (0..17)
            .map(|i| (hash(i, 2), vec![0; MAX_ENVELOPE_BYTES]))
            .collect(),
        ..simple_update(4)
    };
    let err = store.commit_blocking(batch(vec![huge])).unwrap_err();
    assert!(err.to_string().contains("batch bytes"), "{err}");

    // Exactly at the limits is fine.
    let at_limit = RecordUpdate {
        envelopes: vec![(hash(5, 1), vec![1; MAX_ENVELOPE_BYTES])],
        projection: vec![2; MAX_PROJECTION_BYTES],
        index_keys: (0..MAX_INDEX_KEYS as u32).map(ikey).collect(),
        ..simple_update(5)
    };
    store.commit_blocking(batch(vec![at_limit])).unwrap();
    let s = store.stats().unwrap();
    assert_eq!((s.records, s.envelopes, s.batches_committed), (1, 1, 1));
    assert_eq!(store.docs_by_key(&ikey(63)).unwrap(), vec![doc(5)]);
}

/// Large batches respect the byte bounds and still all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_concurrent_batches_split_into_bounded_commits() {
    let (_dir, store) = open_temp();
    let mut tasks = Vec::new();
    for i in 0..12u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let u = RecordUpdate {
                envelopes: (0..6)
                    .map(|j| (hash(i * 10 + j, 3), vec![j as u8; MAX_ENVELOPE_BYTES]))
                    .collect(),
                ..simple_update(i)
            };
            store.commit(batch(vec![u])).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let s = store.stats().unwrap();
    // 12 batches of ~6 MiB: at most 2 fit under 16 MiB, so at least 6 commits.
    assert!(s.commits_durable >= 6, "{s:?}");
    assert_eq!((s.records, s.envelopes, s.batches_committed), (12, 72, 12));
}

const KILL_DB_ENV: &str = "CONSENTD_STORAGE_KILL_TEST_DB";
/// Records per acknowledged batch of the kill test: 400 acks are 20,000 records, so the journal
/// has been merged into `envelope_at` at least once (at 16,384) before the kill, which may land
/// in a merge.
const KILL_BATCH_RECORDS: u32 = 50;

fn kill_batch(n: u32) -> WriteBatch {
    batch(
        (n * KILL_BATCH_RECORDS..(n + 1) * KILL_BATCH_RECORDS)
            .map(simple_update)
            .collect(),
    )
}

/// Child half of `acknowledged_commits_survive_kill`: commits forever, printing each ack.
#[test]
#[ignore = "helper run as a child process by acknowledged_commits_survive_kill"]
fn kill_test_child_writer() {
    let Ok(path) = std::env::var(KILL_DB_ENV) else {
        return;
    };
    let store = Store::open(std::path::Path::new(&path)).unwrap();
    let mut i = 0u32;
    loop {
        // Several writer threads so acks come from group commits, not only single ones.
        let handles: Vec<_> = (0..4)
            .map(|j| {
                let s = store.clone();
                let n = i * 4 + j;
                std::thread::spawn(move || {
                    s.commit_blocking(kill_batch(n)).unwrap();
                    n
                })
            })
            .collect();
        for h in handles {
            let n = h.join().unwrap();
            println!("acked {n}");
        }
        i += 1;
    }
}

/// A commit that was acknowledged survives the process being SIGKILLed at an arbitrary point.
#[test]
fn acknowledged_commits_survive_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_test_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 400 {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked.push(n.parse::<u32>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no destructors
    child.wait().unwrap();

    let store = Store::open(&path).unwrap();
    for n in acked
        .iter()
        .flat_map(|&b| b * KILL_BATCH_RECORDS..(b + 1) * KILL_BATCH_RECORDS)
    {
        assert_eq!(
            store.projection(&doc(n)).unwrap(),
            Some((1, format!("proj-{n}").into_bytes())),
            "acknowledged doc {n} lost"
        );
        assert_eq!(
            store.envelope(&hash(n, 0xaa)).unwrap(),
            Some(format!("env-{n}").into_bytes()),
            "acknowledged envelope {n} not found"
        );
        assert_eq!(
            store.docs_by_key(&ikey(n)).unwrap(),
            [doc(n)],
            "acknowledged index entry {n} not found"
        );
    }
    let s = store.stats().unwrap();
    assert!(s.records >= acked.len() as u64 * u64::from(KILL_BATCH_RECORDS));
    assert_eq!(
        all_envelope_hashes(&store, 4096).len() as u64,
        s.envelopes,
        "every envelope listed once"
    );
    assert_eq!(
        s.records, s.envelopes,
        "counters match the data after recovery"
    );
    assert_eq!(
        store.docs_due_before(i32::MAX, usize::MAX).unwrap().len() as u64,
        s.records
    );
}

/// Not a correctness test: prints per-operation timings. Run with
/// `cargo test -p consentd-storage --release --test store -- --ignored --nocapture measure`.
#[test]
#[ignore = "measurement, prints numbers"]
fn measure_point_reads_and_commits() {
    use std::time::Instant;
    let (_dir, store) = open_temp();
    const N: u32 = 20_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        store
            .commit_blocking(batch(chunk.iter().map(|&i| simple_update(i)).collect()))
            .unwrap();
    }
    let t = Instant::now();
    for i in 0..N {
        let docs = store.docs_by_key(&ikey(i)).unwrap();
        let p = store.projection(&docs[0]).unwrap();
        assert!(p.is_some());
    }
    let e = t.elapsed();
    println!(
        "docs_by_key + projection: {:.2} µs per pair (two read txns)",
        e.as_secs_f64() * 1e6 / f64::from(N)
    );
    let t = Instant::now();
    for i in 0..N {
        assert_eq!(store.projections_by_key(&ikey(i)).unwrap().len(), 1);
    }
    println!(
        "projections_by_key: {:.2} µs per call (one read txn)",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
    );
    let t = Instant::now();
    for i in 0..N {
        assert!(store.projection(&doc(i)).unwrap().is_some());
    }
    println!(
        "projection: {:.2} µs per call",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
    );

    // Sequential single-batch commits: one fsync each.
    let t = Instant::now();
    for i in N..N + 200 {
        store
            .commit_blocking(batch(vec![simple_update(i)]))
            .unwrap();
    }
    println!(
        "sequential durable commits: {:.0} µs each",
        t.elapsed().as_secs_f64() * 1e6 / 200.0
    );

    // Concurrent commits from 64 threads.
    let before = store.stats().unwrap();
    let t = Instant::now();
    let handles: Vec<_> = (0..64u32)
        .map(|th| {
            let s = store.clone();
            std::thread::spawn(move || {
                for k in 0..100 {
                    let n = 100_000 + th * 1000 + k;
                    s.commit_blocking(batch(vec![simple_update(n)])).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let e = t.elapsed();
    let after = store.stats().unwrap();
    println!(
        "64 threads x 100 commits: {:.0} batches/s, {} durable commits for {} batches",
        6400.0 / e.as_secs_f64(),
        after.commits_durable - before.commits_durable,
        after.batches_committed - before.batches_committed
    );
}

const RECOVERY_DB_ENV: &str = "CONSENTD_STORAGE_RECOVERY_DB";

/// Child half of `measure_crash_recovery`: writes records, then aborts without closing.
#[test]
#[ignore = "helper run as a child process by measure_crash_recovery"]
fn recovery_child_writer() {
    let Ok(path) = std::env::var(RECOVERY_DB_ENV) else {
        return;
    };
    let n: u32 = std::env::var("CONSENTD_STORAGE_RECOVERY_N")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(std::path::Path::new(&path)).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let updates = chunk
            .iter()
            .map(|&i| RecordUpdate {
                envelopes: vec![(hash(i, 0xaa), vec![7; 300])],
                projection: vec![9; 200],
                ..simple_update(i)
            })
            .collect();
        store.commit_blocking(batch(updates)).unwrap();
    }
    std::process::abort();
}

/// Not a correctness test: time to reopen after a crash. Run with
/// `CONSENTD_STORAGE_RECOVERY_N=200000 cargo test -p consentd-storage --release --test store -- --ignored --nocapture measure_crash`.
#[test]
#[ignore = "measurement, prints numbers"]
fn measure_crash_recovery() {
    let n = std::env::var("CONSENTD_STORAGE_RECOVERY_N").unwrap_or_else(|_| "100000".into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "recovery_child_writer",
            "--ignored",
            "--test-threads=1",
        ])
        .env(RECOVERY_DB_ENV, &path)
        .env("CONSENTD_STORAGE_RECOVERY_N", &n)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "child must have aborted");
    let size = std::fs::metadata(&path).unwrap().len();
    let t = std::time::Instant::now();
    let store = Store::open(&path).unwrap();
    let e = t.elapsed();
    let s = store.stats().unwrap();
    println!(
        "reopen after crash: {} records, file {} MiB, open took {:.1} ms",
        s.records,
        size >> 20,
        e.as_secs_f64() * 1e3
    );
    assert_eq!(s.records.to_string(), n);
}

/// Log leaves land in the same commit as the batch, in order, and a purge of the docs they
/// describe leaves them in place (only the payload goes).
#[test]
fn log_leaves_append_in_order_and_survive_purges() {
    let (_dir, store) = open_temp();
    let (a, b) = ([0xa1; 16], [0xb2; 16]);
    for n in 0..3u32 {
        let w = WriteBatch {
            log: vec![(a, vec![n as u8; 49]), (b, vec![0xbb; 10])],
            ..batch(vec![simple_update(n)])
        };
        store.commit_blocking(w).unwrap();
    }
    let before = store.snapshot().unwrap();
    assert_eq!(store.log_size(&a).unwrap(), 3);
    assert_eq!(store.log_size(&b).unwrap(), 3);
    assert_eq!(store.log_size(&[0; 16]).unwrap(), 0);

    store
        .commit_purge_blocking(vec![doc(0), doc(1)], WriteBatch::default())
        .unwrap();
    let snap = store.snapshot().unwrap();
    let leaves = snap.log_leaves(&a, 0, 100).unwrap();
    assert_eq!(leaves, vec![vec![0u8; 49], vec![1u8; 49], vec![2u8; 49]]);
    assert_eq!(snap.log_leaves(&a, 2, 100).unwrap(), vec![vec![2u8; 49]]);
    assert_eq!(snap.log_leaves(&a, 0, 1).unwrap().len(), 1);
    // Only doc 2's envelope is left.
    let changes = snap.changes_after(None, 100).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, doc(2));
    // The older snapshot still sees the purged envelopes: one consistent view.
    assert_eq!(before.changes_after(None, 100).unwrap().len(), 3);
    assert_eq!(before.envelope_count().unwrap(), 3);

    let too_big = WriteBatch {
        log: vec![(a, vec![0; MAX_LOG_LEAF_BYTES + 1])],
        ..WriteBatch::default()
    };
    assert!(matches!(
        store.commit_blocking(too_big),
        Err(StorageError::TooLarge { .. })
    ));
}

#[test]
fn checkpoints_and_tombstones_are_stored_and_paged() {
    let (_dir, store) = open_temp();
    let w = WriteBatch {
        checkpoints: vec![("de".into(), b"cp1".to_vec()), ("us".into(), b"u".to_vec())],
        tombstones: vec![
            (doc(2), hash(1, 0), b"t-2-1".to_vec()),
            (doc(1), hash(9, 0), b"t-1-9".to_vec()),
            (doc(1), hash(3, 0), b"t-1-3".to_vec()),
        ],
        ..WriteBatch::default()
    };
    store.commit_blocking(w).unwrap();
    // A tombstone already stored is left as it is.
    let w = WriteBatch {
        checkpoints: vec![("de".into(), b"cp2".to_vec())],
        tombstones: vec![(doc(1), hash(3, 0), b"other".to_vec())],
        ..WriteBatch::default()
    };
    store.commit_blocking(w).unwrap();

    assert_eq!(store.checkpoint("de").unwrap().unwrap(), b"cp2");
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.checkpoints().unwrap().len(), 2);
    let first = snap.tombstones_after(None, 2).unwrap();
    assert_eq!(
        first.iter().map(|t| t.2.clone()).collect::<Vec<_>>(),
        vec![b"t-1-3".to_vec(), b"t-1-9".to_vec()]
    );
    let last = &first[1];
    let rest = snap.tombstones_after(Some(&(last.0, last.1)), 10).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].2, b"t-2-1");
}

#[test]
fn tombstoned_docs_refuse_updates_expiry_pages_and_keys_rewrap_only_if_present() {
    let (_dir, store) = open_temp();
    // An owner hash is never an index key (Store::keys_of): the two share the `index` table.
    let owner: IndexKey = [0xA5; 32];
    store
        .commit_blocking(WriteBatch {
            updates: vec![simple_update(1), simple_update(2)],
            expiries: vec![(doc(1), Some(100)), (doc(2), Some(50)), (doc(9), Some(1))],
            keys: vec![(owner, [7; 16], vec![1; 80])],
            ..WriteBatch::default()
        })
        .unwrap();
    assert_eq!(store.expiry_of(&doc(1)).unwrap(), Some(100));
    assert_eq!(
        store.expiry_of(&doc(9)).unwrap(),
        None,
        "unknown docs are skipped"
    );
    let due = store.docs_expiring_before(101, None, 10).unwrap();
    assert_eq!(due, vec![(50, doc(2)), (100, doc(1))]);
    assert_eq!(
        store.docs_expiring_before(101, Some(due[0]), 10).unwrap(),
        vec![(100, doc(1))]
    );
    assert!(store.docs_expiring_before(50, None, 10).unwrap().is_empty());

    // Purge doc 2 with a tombstone; a later update of it is dropped and counted.
    store
        .commit_purge_blocking(
            vec![doc(2)],
            WriteBatch {
                tombstones: vec![(doc(2), hash(2, 0), b"t".to_vec())],
                ..WriteBatch::default()
            },
        )
        .unwrap();
    assert!(store.is_tombstoned(&doc(2)).unwrap());
    assert!(!store.is_tombstoned(&doc(1)).unwrap());
    assert_eq!(
        store.are_tombstoned(&[doc(1), doc(2), doc(1)]).unwrap(),
        vec![false, true, false]
    );
    assert_eq!(store.docs_expiring_before(101, None, 10).unwrap().len(), 1);
    store
        .commit_blocking(batch(vec![simple_update(2)]))
        .unwrap();
    assert!(store.projection(&doc(2)).unwrap().is_none());
    let st = store.stats().unwrap();
    assert_eq!((st.tombstones, st.dropped_after_tombstone), (1, 1));

    // Keys: grouped by owner; a re-wrap of a deleted key does not bring it back.
    assert_eq!(store.keys_of(&owner).unwrap(), vec![[7u8; 16]]);
    store
        .commit_blocking(WriteBatch {
            key_rewraps: vec![([7; 16], vec![2; 80]), ([8; 16], vec![3; 80])],
            ..WriteBatch::default()
        })
        .unwrap();
    assert_eq!(store.key(&[7; 16]).unwrap().unwrap(), (owner, vec![2; 80]));
    assert!(store.key(&[8; 16]).unwrap().is_none());
    store
        .commit_blocking(WriteBatch {
            key_deletes: vec![(owner, [7; 16])],
            ..WriteBatch::default()
        })
        .unwrap();
    assert!(store.key(&[7; 16]).unwrap().is_none());
    assert!(store.keys_of(&owner).unwrap().is_empty());
    assert!(store.compact().is_ok());
}

/// A random-looking hash for record `n` (real change hashes are random; `hash` is ordered).
fn scrambled_hash(n: u32) -> Hash {
    let mut h = [0u8; 32];
    let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in h.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    h
}

/// Every stored change hash, paged through `envelope_hashes_after` `page` at a time.
fn all_envelope_hashes(store: &Store, page: usize) -> Vec<Hash> {
    let mut all: Vec<Hash> = Vec::new();
    loop {
        let next = store.envelope_hashes_after(all.last(), page).unwrap();
        if next.is_empty() {
            return all;
        }
        all.extend(next);
    }
}

/// Bytes of `envelope_at` and of its journal `envelope_new`, as `dump_tables` lists them.
fn envelope_table_bytes(store: &Store) -> (usize, usize) {
    let tables = store.dump_tables(TableClass::IndexOnly).unwrap();
    let size = |name: &str| tables.iter().find(|(n, _)| *n == name).unwrap().1.len();
    (size("envelope_at"), size("envelope_new"))
}

/// New envelopes go to the journal (`envelope_new`) and move into `envelope_at` in bulk once
/// 16,384 are journalled. Wherever an envelope is, it is found, listed in order, purged, and
/// still there after a reopen.
#[test]
fn journalled_and_merged_envelopes_are_found_listed_purged_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let update = |n: u32| RecordUpdate {
        doc_id: doc(n),
        kind: 1,
        envelopes: vec![(scrambled_hash(n), format!("env-{n}").into_bytes())],
        projection: vec![1],
        index_keys: vec![],
        due_day: None,
    };
    let commit_range = |store: &Store, from: u32, to: u32| {
        for start in (from..to).step_by(500) {
            let end = (start + 500).min(to);
            store
                .commit_blocking(batch((start..end).map(update).collect()))
                .unwrap();
        }
        // The merge runs after the commit that fills the journal: one more commit waits for it.
        store.commit_blocking(WriteBatch::default()).unwrap();
    };
    let check = |store: &Store, present: &[u32], absent: &[u32]| {
        let hashes: Vec<Hash> = present.iter().map(|&n| scrambled_hash(n)).collect();
        assert!(store.has_envelopes(&hashes).unwrap().iter().all(|&h| h));
        for &n in present.iter().step_by(97) {
            assert_eq!(
                store.envelope(&scrambled_hash(n)).unwrap(),
                Some(format!("env-{n}").into_bytes()),
                "envelope of {n}"
            );
        }
        for &n in absent {
            assert!(!store.has_envelope(&scrambled_hash(n)).unwrap(), "{n}");
            assert_eq!(store.envelope(&scrambled_hash(n)).unwrap(), None, "{n}");
        }
        let listed = all_envelope_hashes(store, 777);
        let mut expected = hashes.clone();
        expected.sort_unstable();
        assert_eq!(listed, expected, "every held hash, once, in order");
        assert_eq!(
            store.stats().unwrap().envelopes,
            present.len() as u64,
            "envelope counter"
        );
    };

    let store = Store::open(&path).unwrap();
    commit_range(&store, 0, 16_500);
    commit_range(&store, 16_500, 17_000);
    assert_eq!(
        envelope_table_bytes(&store),
        (16_500 * 52, 500 * 60),
        "the first 16,500 merged (the journal reached 16,384), the last 500 journalled"
    );
    let all: Vec<u32> = (0..17_000).collect();
    check(&store, &all, &[17_000, 40_000]);

    // Purged from either table; one more stored beside the purges.
    store
        .commit_purge_blocking(vec![doc(10), doc(16_999)], batch(vec![update(17_000)]))
        .unwrap();
    assert_eq!(envelope_table_bytes(&store), (16_499 * 52, 500 * 60));
    let present: Vec<u32> = (0..17_001).filter(|n| ![10, 16_999].contains(n)).collect();
    check(&store, &present, &[10, 16_999, 40_000]);

    // The journal is read back at open.
    drop(store);
    let store = Store::open(&path).unwrap();
    check(&store, &present, &[10, 16_999, 40_000]);

    // And merged again once full: everything in `envelope_at`, the journal empty.
    commit_range(&store, 20_000, 36_000);
    assert_eq!(envelope_table_bytes(&store).1, 0, "journal merged");
    let present: Vec<u32> = present.into_iter().chain(20_000..36_000).collect();
    check(&store, &present, &[10, 16_999, 40_000]);
}

/// A random-looking index key in domain `d` (real index keys are keyed hashes).
fn scrambled_key(n: u32, d: u8) -> IndexKey {
    let mut k = [d; 32];
    k[..32 - 1].copy_from_slice(&scrambled_hash(n.wrapping_mul(7) ^ u32::from(d))[..31]);
    k
}

/// New index entries and key owners go to the journal (`index_new`) and move into `index` in bulk
/// once 65,536 are journalled. Wherever an entry is, lookups by key find it, a change of a
/// record's keys, a purge and a key deletion remove it, a repeated key put stores it once, and a
/// reopen reads the journal back.
#[test]
fn journalled_and_merged_index_entries_are_found_removed_and_reopened() {
    use std::collections::{BTreeMap, BTreeSet};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    // Record n: keys of groups n % 4,000 (four or more docs a key) and n itself.
    let keys_of_record = |n: u32| vec![scrambled_key(n % 4_000, 1), scrambled_key(n, 2)];
    let owner = |n: u32| scrambled_key(n % 4_000, 3);
    let key_id = |n: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        id
    };
    let update = |n: u32, keys: Vec<IndexKey>, salt: u32| RecordUpdate {
        doc_id: doc(n),
        kind: 1,
        envelopes: vec![(scrambled_hash(n ^ salt), vec![1])],
        projection: n.to_be_bytes().to_vec(),
        index_keys: keys,
        due_day: None,
    };
    let mut docs: BTreeMap<IndexKey, BTreeSet<DocId>> = BTreeMap::new();
    let mut owned: BTreeMap<IndexKey, BTreeSet<KeyId>> = BTreeMap::new();
    let commit_range = |store: &Store,
                        docs: &mut BTreeMap<IndexKey, BTreeSet<DocId>>,
                        owned: &mut BTreeMap<IndexKey, BTreeSet<KeyId>>,
                        from: u32,
                        to: u32| {
        for start in (from..to).step_by(500) {
            let end = (start + 500).min(to);
            let mut b = batch(
                (start..end)
                    .map(|n| update(n, keys_of_record(n), 0))
                    .collect(),
            );
            for n in (start..end).filter(|n| n % 10 == 0) {
                b.keys.push((owner(n), key_id(n), vec![9; 40]));
                owned.entry(owner(n)).or_default().insert(key_id(n));
            }
            for n in start..end {
                for k in keys_of_record(n) {
                    docs.entry(k).or_default().insert(doc(n));
                }
            }
            store.commit_blocking(b).unwrap();
        }
        // The merge runs after the commit that fills the journal: one more commit waits for it.
        store.commit_blocking(WriteBatch::default()).unwrap();
    };
    let check = |store: &Store,
                 docs: &BTreeMap<IndexKey, BTreeSet<DocId>>,
                 owned: &BTreeMap<IndexKey, BTreeSet<KeyId>>| {
        for (k, expected) in docs.iter().step_by(13) {
            let expected: Vec<DocId> = expected.iter().copied().collect();
            assert_eq!(store.docs_by_key(k).unwrap(), expected);
            let with_projections = store.projections_by_key(k).unwrap();
            let listed: Vec<DocId> = with_projections.iter().map(|p| p.0).collect();
            assert_eq!(listed, expected);
            for (d, _, projection) in &with_projections {
                assert_eq!(projection[..], d[..4], "the doc's own projection");
            }
        }
        for (o, expected) in owned.iter().step_by(7) {
            let expected: Vec<KeyId> = expected.iter().copied().collect();
            assert_eq!(store.keys_of(o).unwrap(), expected);
        }
    };
    let index_rows = |store: &Store| {
        let tables = store.dump_tables(TableClass::IndexOnly).unwrap();
        let size = |name: &str| tables.iter().find(|(n, _)| *n == name).unwrap().1.len();
        (size("index") / 48, size("index_new") / 56)
    };

    // 2.1 entries a record: the journal reaches 65,536 with the commit ending at 31,500.
    let store = Store::open(&path).unwrap();
    commit_range(&store, &mut docs, &mut owned, 0, 31_500);
    commit_range(&store, &mut docs, &mut owned, 31_500, 32_000);
    assert_eq!(
        index_rows(&store),
        (31_500 * 2 + 3_150, 500 * 2 + 50),
        "the first 31,500 records' entries merged, the last 500's journalled"
    );
    check(&store, &docs, &owned);

    // Keys changed, docs purged and keys deleted, on both sides of the merge; a key put again.
    let mut b = batch(vec![
        update(5, vec![scrambled_key(77, 4)], 0xabcd),
        update(31_905, vec![scrambled_key(77, 4)], 0xabcd),
    ]);
    for n in [5, 31_905] {
        for k in keys_of_record(n) {
            docs.get_mut(&k).unwrap().remove(&doc(n));
        }
        docs.entry(scrambled_key(77, 4)).or_default().insert(doc(n));
    }
    for n in [1, 31_901] {
        for k in keys_of_record(n) {
            docs.get_mut(&k).unwrap().remove(&doc(n));
        }
    }
    for n in [30, 31_930] {
        b.key_deletes.push((owner(n), key_id(n)));
        owned.get_mut(&owner(n)).unwrap().remove(&key_id(n));
    }
    b.keys.push((owner(40), key_id(40), vec![8; 40]));
    b.keys.push((owner(31_940), key_id(31_940), vec![8; 40]));
    store
        .commit_purge_blocking(vec![doc(1), doc(31_901)], b)
        .unwrap();
    for n in [5, 31_905, 1, 31_901] {
        for k in keys_of_record(n) {
            assert!(
                !store.docs_by_key(&k).unwrap().contains(&doc(n)),
                "doc {n} under an old key"
            );
        }
    }
    assert_eq!(
        store.docs_by_key(&scrambled_key(77, 4)).unwrap(),
        [doc(5), doc(31_905)]
    );
    for n in [30, 31_930] {
        assert!(!store.keys_of(&owner(n)).unwrap().contains(&key_id(n)));
    }
    for n in [40, 31_940] {
        let ids = store.keys_of(&owner(n)).unwrap();
        assert_eq!(ids.iter().filter(|&&id| id == key_id(n)).count(), 1);
    }
    // Merged side: 2 entries moved to the new key, 2 purged, 1 key deleted; journal side: the
    // same, the new key's two entries appended.
    assert_eq!(
        index_rows(&store),
        (31_500 * 2 + 3_150 - 5, 500 * 2 + 50 - 5 + 2)
    );
    check(&store, &docs, &owned);

    // The journal is read back at open.
    drop(store);
    let store = Store::open(&path).unwrap();
    check(&store, &docs, &owned);

    // And merged again once full (1,047 + 62 × 1,050 ≥ 65,536): everything in `index`.
    commit_range(&store, &mut docs, &mut owned, 40_000, 71_000);
    assert_eq!(index_rows(&store).1, 0, "journal merged");
    check(&store, &docs, &owned);
    assert_eq!(
        index_rows(&store).0,
        docs.values().map(BTreeSet::len).sum::<usize>()
            + owned.values().map(BTreeSet::len).sum::<usize>()
    );
}

/// `table_shapes` names every table once and counts what each holds: a record's change, its
/// projection, meta and kind entry, its index entry (in the journal until a merge) and its due
/// entry; tables nothing was written to are empty and have no pages.
#[test]
fn table_shapes_count_every_table_s_entries() {
    let (_dir, store) = open_temp();
    store
        .commit_blocking(batch((1..=300).map(simple_update).collect()))
        .unwrap();
    let shapes = store.table_shapes().unwrap();
    let mut names: Vec<&str> = shapes.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), shapes.len(), "each table once");
    let of = |name: &str| {
        shapes
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is listed"))
    };
    for name in ["changes", "projections", "doc_meta", "kinds", "due"] {
        assert_eq!(of(name).entries, 300, "{name}");
        assert!(of(name).leaf_pages >= 1 && of(name).height >= 1, "{name}");
    }
    assert_eq!(of("index").entries + of("index_new").entries, 300);
    assert!(
        of("changes").stored_bytes >= 300 * (20 + 32 + 5),
        "keys, hashes and envelopes: {:?}",
        of("changes")
    );
    for name in ["tombstones", "expiry", "envelope_mid", "index_mid"] {
        let s = of(name);
        assert_eq!((s.entries, s.height, s.leaf_pages), (0, 0, 0), "{name}");
    }
}

/// `held_sets` summarises what a store holds, not how it got there: two stores reaching the same
/// envelopes and tombstones by different paths (other orders and groupings, duplicates offered
/// again, docs stored and then purged, a reopen) agree, and one envelope more or less, or another
/// tombstone, changes it.
#[test]
fn held_sets_depend_on_what_is_held_not_on_the_order_it_came_in() {
    // Docs with two envelopes each, scrambled hashes (so sums carry across limbs).
    let update = |n: u32| RecordUpdate {
        doc_id: doc(n),
        kind: 1,
        envelopes: vec![
            (scrambled_hash(2 * n), vec![1; 8]),
            (scrambled_hash(2 * n + 1), vec![2; 8]),
        ],
        projection: vec![3],
        index_keys: vec![ikey(n)],
        due_day: None,
    };
    let tombstone = |n: u32| (doc(n), scrambled_hash(1_000_000 + n), vec![4; 8]);
    let docs = 0..300u32;
    let kept = |n: &u32| n % 7 != 3;
    let tombstoned = |n: &u32| n % 7 == 3;

    // a: everything in order, one commit per doc; then the tombstoned docs purged, with their
    // tombstones.
    let dir = tempfile::tempdir().unwrap();
    let path_a = dir.path().join("a.redb");
    let a = Store::open(&path_a).unwrap();
    let empty = a.held_sets().unwrap();
    assert_eq!((empty.envelopes, empty.tombstones), (0, 0));
    for n in docs.clone() {
        a.commit_blocking(batch(vec![update(n)])).unwrap();
    }
    let all = a.held_sets().unwrap();
    assert_eq!(all.envelopes, 600);
    a.commit_purge_blocking(
        docs.clone().filter(tombstoned).map(doc).collect(),
        WriteBatch {
            tombstones: docs.clone().filter(tombstoned).map(tombstone).collect(),
            ..WriteBatch::default()
        },
    )
    .unwrap();

    // b: the kept docs backwards in groups of 16, each group offered twice (duplicates are
    // skipped); the tombstones first, so the tombstoned docs are never stored.
    let (_dir_b, b) = open_temp();
    b.commit_blocking(WriteBatch {
        tombstones: docs
            .clone()
            .filter(tombstoned)
            .rev()
            .map(tombstone)
            .collect(),
        ..WriteBatch::default()
    })
    .unwrap();
    let backwards: Vec<u32> = docs.clone().rev().collect();
    for group in backwards.chunks(16) {
        for _ in 0..2 {
            b.commit_blocking(batch(group.iter().map(|&n| update(n)).collect()))
                .unwrap();
        }
    }
    let held_a = a.held_sets().unwrap();
    let held_b = b.held_sets().unwrap();
    let kept_docs = docs.clone().filter(kept).count() as u64;
    assert_eq!(held_a.envelopes, 2 * kept_docs);
    assert_eq!(held_a.tombstones, 300 - kept_docs);
    assert_eq!(held_a, held_b, "same envelopes and tombstones, other paths");
    assert_ne!(held_a.envelope_sum, all.envelope_sum, "purges subtract");

    // One envelope more, then that doc purged again: different, then equal again. A different
    // tombstone for the same doc: different.
    b.commit_blocking(batch(vec![update(1_000)])).unwrap();
    let more = b.held_sets().unwrap();
    assert_eq!(more.envelopes, held_a.envelopes + 2);
    assert_ne!(more.envelope_sum, held_a.envelope_sum);
    b.commit_purge_blocking(vec![doc(1_000)], WriteBatch::default())
        .unwrap();
    assert_eq!(b.held_sets().unwrap(), held_a);
    let (_dir_c, c) = open_temp();
    c.commit_blocking(batch(docs.clone().filter(kept).map(update).collect()))
        .unwrap();
    let mut other = docs
        .clone()
        .filter(tombstoned)
        .map(tombstone)
        .collect::<Vec<_>>();
    other[0].1 = scrambled_hash(2_000_000);
    c.commit_blocking(WriteBatch {
        tombstones: other,
        ..WriteBatch::default()
    })
    .unwrap();
    let held_c = c.held_sets().unwrap();
    assert_eq!(
        (held_c.envelopes, held_c.envelope_sum, held_c.tombstones),
        (held_a.envelopes, held_a.envelope_sum, held_a.tombstones)
    );
    assert_ne!(held_c.tombstone_sum, held_a.tombstone_sum);

    // Kept across a reopen (and, in debug builds, checked against the tables by the open).
    drop(a);
    let a = Store::open(&path_a).unwrap();
    assert_eq!(a.held_sets().unwrap(), held_a);
}
