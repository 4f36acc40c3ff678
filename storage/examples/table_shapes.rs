//! Prints the shape of every table of a store: entries, B-tree height, pages and bytes.
//!
//! `cargo run --release -p consentd-storage --example table_shapes -- PATH` (a store no daemon
//! has open, e.g. a copy). A commit that writes to a table rewrites about its height in pages
//! (the path from the root to the leaf written) plus the leaves its new entries fill, so the
//! heights say most of what a small commit writes (storage/LAYOUT.md, "What a commit writes").

use consentd_storage::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: table_shapes PATH (a store no daemon has open)")?;
    let store = Store::open(std::path::Path::new(&path))?;
    println!(
        "{:<13}{:>10}{:>7}{:>9}{:>8}{:>12}{:>12}{:>8}",
        "table", "entries", "height", "leaves", "branch", "stored MB", "unused MB", "B/entry"
    );
    for t in store.table_shapes()? {
        println!(
            "{:<13}{:>10}{:>7}{:>9}{:>8}{:>12.1}{:>12.1}{:>8.0}",
            t.name,
            t.entries,
            t.height,
            t.leaf_pages,
            t.branch_pages,
            t.stored_bytes as f64 / 1e6,
            t.fragmented_bytes as f64 / 1e6,
            t.stored_bytes as f64 / t.entries.max(1) as f64,
        );
    }
    Ok(())
}
