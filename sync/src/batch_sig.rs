//! Batch ed25519 verification with the signers' terms grouped: `ed25519_dalek::verify_batch`'s
//! equation, evaluated with one point per distinct key instead of one per signature.
//!
//! # Why
//!
//! A batch of `n` signatures is checked with one multiscalar multiplication,
//!
//! ```text
//! [-Σ zᵢ·sᵢ] B  +  Σ [zᵢ] Rᵢ  +  Σ [zᵢ·hᵢ] Aᵢ  =  0        (hᵢ = SHA-512(Rᵢ ‖ Aᵢ ‖ Mᵢ) mod ℓ)
//! ```
//!
//! whose cost is about proportional to its number of points: `2n + 1`. The `zᵢ` are 128-bit, so
//! an `Rᵢ` term costs about half a full-width `Aᵢ` term. But in consentd nearly every batch comes
//! from one office (a peer's Want answer, a bundle's envelope section), so every `Aᵢ` is the same
//! point, and `Σ [zᵢ·hᵢ] A = [Σ zᵢ·hᵢ] A`: one point for the whole batch. That is the same group
//! element, computed with about half the work (`n + 2` points, the short ones).
//!
//! # Same verdict as ed25519-dalek
//!
//! Everything else is ed25519-dalek 2.2's `verify_batch`, step by step: the same Merlin transcript
//! (labels, order, and the zero "RNG" it finalises with), so the same `zᵢ`; the same canonical-`s`
//! check; the same decompression of each `Rᵢ`; the same identity test. Grouping only reorders a
//! sum in the group, so for every input this returns what `verify_batch` returns, not merely with
//! high probability. `verify_batch_agrees_with_ed25519_dalek` pins that, on valid, forged,
//! malformed and mixed-signer batches.

use core::iter::once;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signature, VerifyingKey};
use merlin::Transcript;
use sha2::{Digest, Sha512};

/// Largest batch: bounds the allocation and the work of one call. Callers batch far less
/// (`envelope::MAX_VERIFY_BATCH`).
pub const MAX_BATCH: usize = 4096;

/// Whether every signature verifies, by ed25519-dalek's batch equation with terms of equal keys
/// grouped. `false` for slices of unequal length, an empty slice is `true` (as in ed25519-dalek),
/// and more than [`MAX_BATCH`] signatures is `false`.
#[allow(non_snake_case)] // B, R and A are the points' names in every ed25519 text.
pub fn verify_batch(messages: &[&[u8]], signatures: &[Signature], keys: &[VerifyingKey]) -> bool {
    let n = signatures.len();
    if messages.len() != n || keys.len() != n || n > MAX_BATCH {
        return false;
    }
    // As ed25519-dalek: hram for each signature, all hrams then all s into the transcript.
    let hrams: Vec<[u8; 64]> = (0..n)
        .map(|i| {
            let mut h = Sha512::new();
            h.update(signatures[i].r_bytes());
            h.update(keys[i].as_bytes());
            h.update(messages[i]);
            h.finalize().into()
        })
        .collect();
    let mut transcript = Transcript::new(b"ed25519 batch verification");
    for hram in &hrams {
        transcript.append_message(b"hram", hram);
    }
    for sig in signatures {
        transcript.append_message(b"sig.s", sig.s_bytes());
    }
    let mut rng = transcript.build_rng().finalize(&mut ZeroRng);

    let mut b_coefficient = Scalar::ZERO;
    let mut zs: Vec<Scalar> = Vec::with_capacity(n);
    // (key, Σ zᵢ·hᵢ over its signatures). Linear search: a batch has a handful of signers.
    let mut groups: Vec<(&VerifyingKey, Scalar)> = Vec::new();
    // ed25519-dalek parses every s before drawing any z; the draws do not depend on s, so the
    // order within the loop changes nothing.
    for ((sig, hram), key) in signatures.iter().zip(&hrams).zip(keys) {
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes())) else {
            return false;
        };
        let mut z = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rng, &mut z);
        let z = Scalar::from(u128::from_le_bytes(z));
        b_coefficient += z * s;
        let zh = z * Scalar::from_bytes_mod_order_wide(hram);
        match groups
            .iter_mut()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
        {
            Some((_, sum)) => *sum += zh,
            None => groups.push((key, zh)),
        }
        zs.push(z);
    }
    debug_assert!(
        !groups.is_empty() || n == 0,
        "every signature's key term is in some group"
    );
    let Rs = signatures
        .iter()
        .map(|sig| CompressedEdwardsY(*sig.r_bytes()).decompress());
    let As = groups.iter().map(|(k, _)| Some(k.to_edwards()));
    let id = EdwardsPoint::optional_multiscalar_mul(
        once(-b_coefficient)
            .chain(zs)
            .chain(groups.iter().map(|(_, sum)| *sum)),
        once(Some(ED25519_BASEPOINT_POINT)).chain(Rs).chain(As),
    );
    id.is_some_and(|p| p.is_identity())
}

/// ed25519-dalek's `ZeroRng`: its batch verifier's randomness comes from the transcript alone
/// (deterministic batch verification), and reproducing its `zᵢ` means doing the same.
struct ZeroRng;

impl rand_core::RngCore for ZeroRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, _dest: &mut [u8]) {}

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for ZeroRng {}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use rand::{Rng, SeedableRng};

    struct Batch {
        messages: Vec<Vec<u8>>,
        signatures: Vec<Signature>,
        keys: Vec<VerifyingKey>,
    }

    impl Batch {
        fn signed(rng: &mut rand::rngs::StdRng, signers: &[SigningKey], n: usize) -> Batch {
            let mut b = Batch {
                messages: Vec::new(),
                signatures: Vec::new(),
                keys: Vec::new(),
            };
            for _ in 0..n {
                let k = &signers[rng.gen_range(0..signers.len())];
                let len = rng.gen_range(0..80);
                let m: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                b.signatures.push(k.sign(&m));
                b.keys.push(k.verifying_key());
                b.messages.push(m);
            }
            b
        }

        fn ours(&self) -> bool {
            let m: Vec<&[u8]> = self.messages.iter().map(Vec::as_slice).collect();
            verify_batch(&m, &self.signatures, &self.keys)
        }

        fn dalek(&self) -> bool {
            let m: Vec<&[u8]> = self.messages.iter().map(Vec::as_slice).collect();
            ed25519_dalek::verify_batch(&m, &self.signatures, &self.keys).is_ok()
        }
    }

    fn signers(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<SigningKey> {
        (0..n).map(|_| SigningKey::from_bytes(&rng.gen())).collect()
    }

    /// A point of order 8: a valid encoding that a batch equation without the cofactor can
    /// absorb (so the two verifiers must handle it identically, not merely both reject it).
    fn small_order_r() -> [u8; 32] {
        hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    /// Each way a batch can go wrong, applied at a random member.
    fn spoil(rng: &mut rand::rngs::StdRng, b: &mut Batch, how: usize, others: &[SigningKey]) {
        if b.signatures.is_empty() {
            return;
        }
        let i = rng.gen_range(0..b.signatures.len());
        let mut sig = b.signatures[i].to_bytes();
        match how {
            // Another message.
            0 => b.messages[i].push(0x55),
            // A flipped bit in R or in s.
            1 => sig[rng.gen_range(0..32)] ^= 1 << rng.gen_range(0..8),
            2 => sig[32 + rng.gen_range(0..31)] ^= 1 << rng.gen_range(0..8),
            // A non-canonical s: with the top bits set, s > ℓ.
            3 => sig[63] |= 0xf0,
            // An R that is not a curve point (y = 2 has no x on edwards25519).
            4 => {
                sig[..32].copy_from_slice(&[0u8; 32]);
                sig[0] = 2;
            }
            // A small-order R.
            5 => sig[..32].copy_from_slice(&small_order_r()),
            // Claimed by a different (valid) key.
            6 => b.keys[i] = others[rng.gen_range(0..others.len())].verifying_key(),
            // Two signatures swapped between members.
            _ => {
                let j = rng.gen_range(0..b.signatures.len());
                b.signatures.swap(i, j);
                return;
            }
        }
        b.signatures[i] = Signature::from_bytes(&sig);
    }

    #[test]
    fn verify_batch_agrees_with_ed25519_dalek() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0ba7c4);
        let mut disagreements = Vec::new();
        let mut verdicts = [0usize; 2];
        for round in 0..400 {
            let keys = signers(&mut rng, 1 + round % 4);
            let n = rng.gen_range(0..70);
            let mut b = Batch::signed(&mut rng, &keys, n);
            if round % 3 != 0 {
                let others = signers(&mut rng, 2);
                spoil(&mut rng, &mut b, round % 8, &others);
            }
            let (ours, dalek) = (b.ours(), b.dalek());
            verdicts[usize::from(dalek)] += 1;
            if ours != dalek {
                disagreements.push((round, ours, dalek));
            }
        }
        assert!(
            disagreements.is_empty(),
            "(round, ours, dalek): {disagreements:?}"
        );
        // Both verdicts are exercised, so agreement is not a constant answer.
        assert!(verdicts[0] > 100 && verdicts[1] > 100, "{verdicts:?}");
    }

    /// A signature that verifies with the cofactor but not without it: R = rB + T for a point T
    /// of order 8, signed honestly over that R (only a key's holder can make one). An equation
    /// without the cofactor then leaves [z]T, which vanishes exactly when 8 divides z, so whether
    /// a batch holding it passes depends on the zᵢ the transcript draws.
    fn torsioned(rng: &mut rand::rngs::StdRng, m: &[u8]) -> (VerifyingKey, Signature) {
        let a = Scalar::from_bytes_mod_order(rng.gen());
        let big_a = EdwardsPoint::mul_base(&a).compress();
        let key = VerifyingKey::from_bytes(big_a.as_bytes()).expect("a curve point");
        let r = Scalar::from_bytes_mod_order(rng.gen());
        let t = CompressedEdwardsY(small_order_r())
            .decompress()
            .expect("a curve point");
        let big_r = (EdwardsPoint::mul_base(&r) + t).compress();
        let mut h = Sha512::new();
        h.update(big_r.as_bytes());
        h.update(big_a.as_bytes());
        h.update(m);
        let h = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let sig = Signature::from_components(big_r.to_bytes(), (r + h * a).to_bytes());
        (key, sig)
    }

    #[test]
    fn torsioned_signatures_get_dalek_s_verdict_batch_by_batch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let keys = signers(&mut rng, 2);
        let mut accepted = 0;
        for round in 0..240 {
            let mut b = Batch::signed(&mut rng, &keys, 1 + round % 40);
            let i = rng.gen_range(0..b.signatures.len());
            let (k, sig) = torsioned(&mut rng, &b.messages[i]);
            (b.keys[i], b.signatures[i]) = (k, sig);
            let dalek = b.dalek();
            assert_eq!(b.ours(), dalek, "round {round}");
            accepted += usize::from(dalek);
        }
        // About one in eight pass (8 | z): the verdict really turns on the drawn zᵢ.
        assert!((10..=60).contains(&accepted), "{accepted} of 240 accepted");
    }

    #[test]
    fn one_signer_batches_verify_and_any_forgery_fails_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = signers(&mut rng, 1);
        let b = Batch::signed(&mut rng, &keys, 64);
        assert!(b.ours() && b.dalek());
        for how in 0..8 {
            let mut bad = Batch::signed(&mut rng, &keys, 64);
            assert!(bad.ours(), "a fresh batch verifies");
            let other = signers(&mut rng, 1);
            spoil(&mut rng, &mut bad, how, &other);
            assert!(
                !bad.ours(),
                "spoiled by way {how}, the batch still verified"
            );
        }
    }

    #[test]
    fn unequal_lengths_and_oversized_batches_are_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let keys = signers(&mut rng, 1);
        let b = Batch::signed(&mut rng, &keys, 3);
        let m: Vec<&[u8]> = b.messages.iter().map(Vec::as_slice).collect();
        assert!(!verify_batch(&m[..2], &b.signatures, &b.keys));
        assert!(!verify_batch(&m, &b.signatures[..2], &b.keys));
        assert!(!verify_batch(&m, &b.signatures, &b.keys[..2]));
        assert!(verify_batch(&[], &[], &[]));
        let big = Batch::signed(&mut rng, &keys, 1);
        let m = vec![big.messages[0].as_slice(); MAX_BATCH + 1];
        let s = vec![big.signatures[0]; MAX_BATCH + 1];
        let k = vec![big.keys[0]; MAX_BATCH + 1];
        assert!(!verify_batch(&m, &s, &k));
        assert!(verify_batch(
            &m[..MAX_BATCH],
            &s[..MAX_BATCH],
            &k[..MAX_BATCH]
        ));
    }
}
