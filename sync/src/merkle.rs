//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing, inclusion and consistency proofs.
//!
//! Pure functions over 32-byte hashes: no I/O, no clocks, so every property is tested
//! deterministically (exhaustively for all tree sizes 1..=64 in the tests below).
//!
//! - leaf hash: `SHA-256(0x00 ‖ data)`; interior node: `SHA-256(0x01 ‖ left ‖ right)`
//!   (RFC 9162 §2.1.1; the prefixes make a leaf never collide with a node).
//! - the root of `n` leaves splits at `k`, the largest power of two below `n` (§2.1.1).
//! - proofs (§2.1.3, §2.1.4) and their verification algorithms (§2.1.3.2, §2.1.4.2) follow the
//!   RFC's pseudo-code step by step.
//!
//! [`Frontier`] keeps only the roots of the perfect subtrees of a growing log (at most 64 hashes),
//! so a log of any size can be appended to and its root computed in O(log n) memory and time per
//! leaf: the daemon keeps one in memory and never rereads its whole log to sign a checkpoint.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2, "only trees of two or more leaves split");
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH over already-hashed leaves. O(n) time, O(log n) stack.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D\[n\]): the audit path of leaf `index` in the tree of `leaves` (RFC 9162 §2.1.3.1).
/// `None` if `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Option<Vec<Hash>> {
    if index >= leaves.len() as u64 {
        return None;
    }
    fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
        if d.len() <= 1 {
            return;
        }
        let k = split(d.len() as u64) as usize;
        if m < k {
            path(m, &d[..k], out);
            out.push(root(&d[k..]));
        } else {
            path(m - k, &d[k..], out);
            out.push(root(&d[..k]));
        }
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Some(out)
}

/// PROOF(m, D\[n\]): shows the tree of the first `old_size` leaves is a prefix of the tree of all
/// `leaves` (RFC 9162 §2.1.4.1). `None` if `old_size` exceeds the tree.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Option<Vec<Hash>> {
    let n = leaves.len() as u64;
    if old_size > n {
        return None;
    }
    if old_size == 0 || old_size == n {
        return Some(Vec::new());
    }
    fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
        let n = d.len();
        if m == n {
            if !complete {
                out.push(root(d));
            }
            return;
        }
        let k = split(n as u64) as usize;
        if m <= k {
            subproof(m, &d[..k], complete, out);
            out.push(root(&d[k..]));
        } else {
            subproof(m - k, &d[k..], false, out);
            out.push(root(&d[..k]));
        }
    }
    let mut out = Vec::new();
    subproof(old_size as usize, leaves, true, &mut out);
    Some(out)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verifies a consistency proof between a tree of `old_size` with root `old_root` and one of
/// `new_size` with root `new_root` (RFC 9162 §2.1.4.2, plus the trivial cases it leaves out:
/// equal sizes need an empty proof and equal roots; the empty tree is a prefix of every tree).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *old_root && sr == *new_root && snode == 0
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Enough
/// to append leaves and compute the root at the current size, in O(log n) memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `stack[i]` is the root of a perfect subtree; sizes are the set bits of `size`, descending.
    stack: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a perfect subtree the new leaf completes.
        let mut s = self.size;
        while s & 1 == 1 {
            let left = self.stack.pop().expect("one subtree per set bit of size");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
        debug_assert_eq!(
            self.stack.len(),
            self.size.count_ones() as usize,
            "frontier holds one subtree per set bit of its size"
        );
    }

    /// The root at the current size (RFC 9162 MTH), folding the subtrees right to left.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(last) => it.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The RFC 6962 / 9162 reference inputs (certificate-transparency test data).
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// The published roots for sizes 0..=8.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_leaves() -> Vec<Hash> {
        CT_LEAVES
            .iter()
            .map(|l| leaf_hash(&hex::decode(l).unwrap()))
            .collect()
    }

    #[test]
    fn roots_match_the_published_vectors() {
        let leaves = ct_leaves();
        let mut f = Frontier::new();
        for n in 0..=8 {
            assert_eq!(root(&leaves[..n]), h(CT_ROOTS[n]), "root of size {n}");
            assert_eq!(f.root(), h(CT_ROOTS[n]), "frontier root of size {n}");
            if n < 8 {
                f.push(leaves[n]);
            }
        }
    }

    #[test]
    fn inclusion_proof_matches_the_published_vector() {
        let leaves = ct_leaves();
        let proof = inclusion_proof(&leaves, 0).unwrap();
        assert_eq!(
            proof,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        assert!(verify_inclusion(&leaves[0], 0, 8, &proof, &h(CT_ROOTS[8])));
    }

    fn many(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u32).to_be_bytes()))
            .collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_wrong_one_does_for_sizes_1_to_64() {
        let leaves = many(64);
        for n in 1..=64u64 {
            let d = &leaves[..n as usize];
            let r = root(d);
            for m in 0..n {
                let p = inclusion_proof(d, m).unwrap();
                assert!(verify_inclusion(&d[m as usize], m, n, &p, &r), "{m} in {n}");
                // Wrong index, wrong size, wrong leaf, tampered path, truncated path.
                let other = (m + 1) % n;
                if other != m {
                    assert!(!verify_inclusion(&d[m as usize], other, n, &p, &r));
                }
                // (A wrong *size* with the same root can still verify when the path has the same
                // shape: the size is bound by the signed checkpoint, not by the proof.)
                assert!(!verify_inclusion(&leaf_hash(b"x"), m, n, &p, &r));
                for i in 0..p.len() {
                    let mut bad = p.clone();
                    bad[i][0] ^= 1;
                    assert!(!verify_inclusion(&d[m as usize], m, n, &bad, &r));
                }
                if !p.is_empty() {
                    assert!(!verify_inclusion(&d[m as usize], m, n, &p[1..], &r));
                }
                let mut longer = p.clone();
                longer.push(r);
                assert!(!verify_inclusion(&d[m as usize], m, n, &longer, &r));
            }
            assert!(inclusion_proof(d, n).is_none());
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_no_wrong_one_does_for_sizes_1_to_64() {
        let leaves = many(64);
        let roots: Vec<Hash> = (0..=64).map(|n| root(&leaves[..n])).collect();
        for n in 1..=64u64 {
            let d = &leaves[..n as usize];
            for m in 0..=n {
                let p = consistency_proof(d, m).unwrap();
                let (rm, rn) = (&roots[m as usize], &roots[n as usize]);
                assert!(verify_consistency(m, n, rm, rn, &p), "{m} -> {n}");
                if m > 0 && m < n {
                    // A different old tree of the same size (one leaf rewritten) is refused.
                    let mut rewritten = d[..m as usize].to_vec();
                    rewritten[(m - 1) as usize][0] ^= 1;
                    assert!(!verify_consistency(m, n, &root(&rewritten), rn, &p));
                    assert!(!verify_consistency(m, n, rm, &roots[(n - 1) as usize], &p));
                    for i in 0..p.len() {
                        let mut bad = p.clone();
                        bad[i][31] ^= 1;
                        assert!(!verify_consistency(m, n, rm, rn, &bad), "{m}->{n} @{i}");
                    }
                    assert!(!verify_consistency(m, n, rm, rn, &p[..p.len() - 1]));
                    assert!(!verify_consistency(n, m, rn, rm, &p), "shrinking");
                }
            }
            assert!(consistency_proof(d, n + 1).is_none());
        }
    }

    #[test]
    fn frontier_agrees_with_root_at_every_size() {
        let leaves = many(300);
        let mut f = Frontier::new();
        for (i, l) in leaves.iter().enumerate() {
            assert_eq!(f.size(), i as u64);
            assert_eq!(f.root(), root(&leaves[..i]));
            f.push(*l);
        }
        assert_eq!(f.root(), root(&leaves));
    }
}
