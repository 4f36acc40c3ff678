//! Following other offices' transparency logs: the pure checks a receiver makes before it stores
//! leaves another office's checkpoint covers (docs/sync-protocol.md, "Logs").
//!
//! A receiver holds a prefix of office X's log (as a [`Frontier`]) and receives X's signed
//! checkpoint of a larger tree. It fetches the missing leaves in batches of at most
//! [`LEAVES_PER_FRAME_MAX`]; each batch `[first, end)` comes with an RFC 9162 consistency proof
//! from the tree of `end` leaves to the checkpoint's tree. [`extend`] appends the batch to the
//! held prefix, computes the root at `end` and checks the proof against the signed root:
//!
//! - so every batch is checked on its own and can be stored at once (memory stays bounded by one
//!   batch, however far behind the receiver is), and
//! - since the root at `end` is computed from the leaves already held, a passing proof shows the
//!   held prefix, the new leaves and the signed tree agree: the new checkpoint is consistent with
//!   every earlier checkpoint the held prefix reproduced (RFC 9162 consistency, by construction).
//!
//! The last batch reaches the checkpoint's size, where the proof is empty and the computed root
//! must equal the signed root. A failure means the sender's leaves are not the signed log (or
//! the log's office signed two histories); the receiver stores nothing of that batch.

use crate::merkle::{self, Frontier, Hash};
use crate::tlog::{Checkpoint, LogLeaf, LEAF_LEN};

/// Most leaves one `Leaves` frame carries (16,384 × 49 B = 784 KiB, under the 1 MiB frame).
pub const LEAVES_PER_FRAME_MAX: usize = 16_384;
/// Most hashes in one consistency proof: a proof has at most 2·log2(size) + 1 hashes, so 128
/// covers every tree a u64 can count.
pub const PROOF_HASHES_MAX: usize = 128;

const _: () = assert!(LEAVES_PER_FRAME_MAX * LEAF_LEN + PROOF_HASHES_MAX * 32 + 64 < 1 << 20);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogSyncError {
    #[error("leaves {first}..{end} overrun the checkpoint's {size} leaves")]
    Overrun { first: u64, end: u64, size: u64 },
    #[error("the batch is empty")]
    Empty,
    #[error(
        "leaves {first}..{end} with the {held} leaves held do not reproduce the signed root of size {size}"
    )]
    RootMismatch {
        held: u64,
        first: u64,
        end: u64,
        size: u64,
    },
}

/// Appends `leaves` (which start at `held.size()`) to the held prefix and checks `proof`, the
/// consistency proof from the tree of the extended prefix to `target`. Returns the extended
/// frontier; on error nothing may be stored.
pub fn extend(
    held: &Frontier,
    leaves: &[LogLeaf],
    proof: &[Hash],
    target: &Checkpoint,
) -> Result<Frontier, LogSyncError> {
    let first = held.size();
    if leaves.is_empty() {
        return Err(LogSyncError::Empty);
    }
    let end = first.saturating_add(leaves.len() as u64);
    if end > target.size {
        return Err(LogSyncError::Overrun {
            first,
            end,
            size: target.size,
        });
    }
    let mut next = held.clone();
    for l in leaves {
        next.push(l.merkle_hash());
    }
    debug_assert_eq!(next.size(), end, "one hash pushed per leaf");
    if !merkle::verify_consistency(end, target.size, &next.root(), &target.root, proof) {
        return Err(LogSyncError::RootMismatch {
            held: first,
            first,
            end,
            size: target.size,
        });
    }
    Ok(next)
}

/// `PROOF(end, D[size])` (RFC 9162 §2.1.4.1) for the sender of a batch, computed from subtree
/// roots: `subtree(a, b)` must return MTH of leaves `[a, b)` of the log. The host reads its
/// stored leaves for that; this function only decides which subtrees the proof needs, so a proof
/// costs O(size − end) leaf hashes plus O(log size) subtrees left of `end`.
pub fn consistency_proof(
    end: u64,
    size: u64,
    subtree: &mut dyn FnMut(u64, u64) -> Hash,
) -> Vec<Hash> {
    debug_assert!(end <= size, "a proof from a larger tree to a smaller one");
    let mut out = Vec::new();
    if end == 0 || end >= size {
        return out;
    }
    // SUBPROOF(m, D[lo:hi], complete), iteratively from the top; hashes are pushed innermost
    // first, so collect them top-down and reverse at the end.
    fn split(n: u64) -> u64 {
        1 << (63 - (n - 1).leading_zeros())
    }
    let (mut lo, mut hi, mut m, mut complete) = (0u64, size, end, true);
    let mut top_down = Vec::new();
    loop {
        let n = hi - lo;
        if m == n {
            if !complete {
                top_down.push(subtree(lo, hi));
            }
            break;
        }
        let k = split(n);
        if m <= k {
            top_down.push(subtree(lo + k, hi));
            hi = lo + k;
        } else {
            top_down.push(subtree(lo, lo + k));
            lo += k;
            m -= k;
            complete = false;
        }
    }
    top_down.reverse();
    out.extend(top_down);
    debug_assert!(
        out.len() <= PROOF_HASHES_MAX,
        "proof longer than any tree needs"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> LogLeaf {
        let mut doc = [0u8; 16];
        doc[..8].copy_from_slice(&i.to_be_bytes());
        LogLeaf::envelope(doc, [i as u8; 32])
    }

    fn hashes(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf(i).merkle_hash()).collect()
    }

    fn checkpoint(n: u64) -> Checkpoint {
        Checkpoint {
            origin: "consentd.log/t/de".into(),
            size: n,
            root: merkle::root(&hashes(n)),
        }
    }

    fn frontier(n: u64) -> Frontier {
        let mut f = Frontier::new();
        for h in hashes(n) {
            f.push(h);
        }
        f
    }

    fn prove(end: u64, size: u64) -> Vec<Hash> {
        let all = hashes(size);
        consistency_proof(end, size, &mut |a, b| {
            merkle::root(&all[a as usize..b as usize])
        })
    }

    #[test]
    fn proofs_from_subtrees_equal_the_reference_proofs() {
        for size in 1..=40u64 {
            let all = hashes(size);
            for end in 0..=size {
                assert_eq!(
                    prove(end, size),
                    merkle::consistency_proof(&all, end).unwrap(),
                    "end {end}, size {size}"
                );
            }
        }
    }

    #[test]
    fn every_batching_of_every_gap_verifies_and_reaches_the_root() {
        for size in 1..=24u64 {
            let target = checkpoint(size);
            for held in 0..size {
                for batch in 1..=(size - held) {
                    let mut f = frontier(held);
                    while f.size() < size {
                        let first = f.size();
                        let end = (first + batch).min(size);
                        let leaves: Vec<LogLeaf> = (first..end).map(leaf).collect();
                        f = extend(&f, &leaves, &prove(end, size), &target).unwrap();
                    }
                    assert_eq!(f.root(), target.root);
                }
            }
        }
    }

    #[test]
    fn leaves_that_do_not_reproduce_the_root_are_refused() {
        let target = checkpoint(10);
        let held = frontier(4);
        // A changed leaf, a reordered pair, a leaf from elsewhere: each fails the proof.
        let good: Vec<LogLeaf> = (4..7).map(leaf).collect();
        let proof = prove(7, 10);
        assert!(extend(&held, &good, &proof, &target).is_ok());
        let mut changed = good.clone();
        changed[1].hash[0] ^= 1;
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        let shifted: Vec<LogLeaf> = (5..8).map(leaf).collect();
        for bad in [changed, swapped, shifted] {
            assert!(matches!(
                extend(&held, &bad, &proof, &target),
                Err(LogSyncError::RootMismatch { .. })
            ));
        }
        // The last batch: no proof, the root itself must match.
        let last: Vec<LogLeaf> = (4..10).map(leaf).collect();
        assert!(extend(&held, &last, &[], &target).is_ok());
        let mut forged = target.clone();
        forged.root[0] ^= 1;
        assert!(extend(&held, &last, &[], &forged).is_err());
    }

    #[test]
    fn a_held_prefix_the_checkpoint_does_not_extend_is_refused() {
        // We hold 4 leaves of one history; the office signs a tree of 8 over another history
        // (its leaf 2 differs). Honest-looking leaves 4..8 cannot be proven against it.
        let mut other = hashes(8);
        other[2] = leaf(99).merkle_hash();
        let target = Checkpoint {
            origin: "consentd.log/t/de".into(),
            size: 8,
            root: merkle::root(&other),
        };
        let held = frontier(4);
        let leaves: Vec<LogLeaf> = (4..8).map(leaf).collect();
        assert!(extend(&held, &leaves, &[], &target).is_err());
        let proof = consistency_proof(6, 8, &mut |a, b| {
            merkle::root(&other[a as usize..b as usize])
        });
        assert!(extend(&held, &leaves[..2], &proof, &target).is_err());
    }

    #[test]
    fn overruns_and_empty_batches_are_refused() {
        let target = checkpoint(5);
        let held = frontier(3);
        let leaves: Vec<LogLeaf> = (3..6).map(leaf).collect();
        assert!(matches!(
            extend(&held, &leaves, &[], &target),
            Err(LogSyncError::Overrun { .. })
        ));
        assert_eq!(extend(&held, &[], &[], &target), Err(LogSyncError::Empty));
    }
}
