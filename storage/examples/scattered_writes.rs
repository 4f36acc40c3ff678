//! What this machine's disk charges for a commit's pages: in order, or scattered over a file.
//!
//! `cargo run --release -p consentd-storage --example scattered_writes -- [FILE_MIB]`
//!
//! Makes a file of FILE_MIB (default 300) in /var/tmp, writes it once and syncs it, then for 20,
//! 500, 2,500 and 5,000 pages of 4 KiB, five times each: writes them with `pwrite` (one page per
//! call, ascending offsets) and syncs with `fdatasync`, either as one contiguous run at a random
//! place or at random pages over the whole file. Prints the milliseconds of each part.
//!
//! Why: redb copies every page a transaction changes to a free page, and the free pages of a
//! store that has been written for a while lie all over its file, so a durable commit is the
//! scattered case (BENCHMARKS.md, nineteenth session). On the benchmark machine 2,500 scattered
//! pages took 3-4 times as long as 2,500 in order.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const PAGE: u64 = 4096;
const REPEATS: usize = 5;

/// xorshift64: reproducible offsets without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() -> std::io::Result<()> {
    let file_mib: u64 = std::env::args()
        .nth(1)
        .map_or(300, |a| a.parse().expect("FILE_MIB: a number"));
    let pages_in_file = file_mib * 1024 * 1024 / PAGE;
    assert!(
        pages_in_file > 5_000,
        "FILE_MIB must hold more than 5,000 pages"
    );
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("scattered_writes.bin"))?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i as u8) ^ 0x5a;
    }
    for mib in 0..file_mib {
        file.write_at(&chunk, mib << 20)?;
    }
    file.sync_all()?;
    let page = [0xa5u8; PAGE as usize];
    println!("pages  order      pwrite ms + fdatasync ms, {REPEATS} runs");
    for pages in [20u64, 500, 2_500, 5_000] {
        for scattered in [false, true] {
            let mut runs = Vec::with_capacity(REPEATS);
            for _ in 0..REPEATS {
                let mut offsets: Vec<u64> = if scattered {
                    (0..pages)
                        .map(|_| next(&mut state) % pages_in_file * PAGE)
                        .collect()
                } else {
                    let start = next(&mut state) % (pages_in_file - pages);
                    (start..start + pages).map(|p| p * PAGE).collect()
                };
                offsets.sort_unstable();
                let started = Instant::now();
                for &o in &offsets {
                    file.write_at(&page, o)?;
                }
                let written = started.elapsed();
                file.sync_data()?;
                let synced = started.elapsed() - written;
                runs.push(format!(
                    "{:.1}+{:.1}",
                    written.as_secs_f64() * 1e3,
                    synced.as_secs_f64() * 1e3
                ));
            }
            let order = if scattered { "scattered" } else { "in order" };
            println!("{pages:>5}  {order:<9}  {}", runs.join("  "));
        }
    }
    Ok(())
}
