//! What an [`ItemSet`] costs as it grows: inserts in random order, appends, removes and ranks.
//!
//! `cargo run --release -p consentd-sync --example item_set -- [ITEMS]`
//!
//! ITEMS (default 1,000,000) items with random ids are inserted one by one at timestamp 0, as a
//! subject key's item lands in the key set (a cold sync's receiver adds one for every record it
//! stores), with the time per insert printed at each quarter: it grows with the set, since each
//! insert lands in a chunk no cache holds. Then the same count appended in timestamp order (an
//! envelope set during a sync), a tenth removed at random, and 100,000 ranks (what every range
//! of a reconciliation asks). The heap in use after the random inserts (`mallinfo2`) is the
//! set's own memory: chunks split as they fill, so it holds more than the 40 bytes an item.
//!
//! Figures, before and after the chunk ranks (thirty-fifth session): BENCHMARKS.md.

use std::time::Instant;

use consentd_sync::item::{Item, ItemSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The heap glibc has handed out, in MB (0 where the C library is not glibc).
fn heap_in_use_mb() -> f64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads glibc's counters.
        unsafe { libc::mallinfo2() }.uordblks as f64 / 1e6
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0.0
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())
        .unwrap_or_else(|e| {
            eprintln!("error: ITEMS must be a count of items: {e}");
            std::process::exit(2)
        })
        .max(4);
    let mut rng = StdRng::seed_from_u64(7);
    let ids: Vec<[u8; 32]> = (0..n)
        .map(|_| {
            let mut id = [0u8; 32];
            rng.fill(&mut id);
            id
        })
        .collect();

    let heap_before = heap_in_use_mb();
    let mut set = ItemSet::new();
    let started = Instant::now();
    let mut last = (0, std::time::Duration::ZERO);
    for (i, id) in ids.iter().enumerate() {
        set.insert(Item::new(0, *id));
        if (i + 1) % (n / 4) == 0 {
            let t = started.elapsed();
            println!(
                "random inserts: {:>9} in {:>8.3} s; the last {} at {:.2} µs each",
                i + 1,
                t.as_secs_f64(),
                i + 1 - last.0,
                (t - last.1).as_secs_f64() * 1e6 / (i + 1 - last.0) as f64,
            );
            last = (i + 1, t);
        }
    }
    println!(
        "the set's heap: {:.1} MB for {} items ({:.1} bytes an item)",
        heap_in_use_mb() - heap_before,
        set.len(),
        (heap_in_use_mb() - heap_before) * 1e6 / set.len() as f64
    );

    let started = Instant::now();
    let mut ranked = 0usize;
    for id in ids.iter().take(100_000) {
        ranked = ranked.wrapping_add(set.rank(&Item::new(0, *id)));
    }
    println!(
        "100,000 ranks: {:.3} s (checksum {ranked})",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    for id in ids.iter().take(n / 10) {
        set.remove(&Item::new(0, *id));
    }
    println!(
        "{} random removes: {:.3} s",
        n / 10,
        started.elapsed().as_secs_f64()
    );
    drop(set);

    let mut appended = ItemSet::new();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        appended.insert(Item::new(i as u64, *id));
    }
    println!("{} appends: {:.3} s", n, started.elapsed().as_secs_f64());
}
