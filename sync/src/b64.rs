//! Standard base64 (RFC 4648 §4, with `=` padding), as the C2SP signed-note format and the audit
//! bundle use it. Decoding is strict: no whitespace, no missing or extra padding, and the unused
//! low bits of the last symbol must be zero, so every byte string has exactly one encoding (a
//! tampered checkpoint cannot hide behind an alternative spelling of the same bytes).
//!
//! Hand-written rather than a dependency: forty lines, and the strictness is the point.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `data` as padded standard base64.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sentinel in [`DECODE`] for a byte outside the alphabet (no symbol value has bit 7 set).
const INVALID: u8 = 0x80;

/// Each byte's symbol value, or [`INVALID`]: one table lookup per symbol, since decoding envelope
/// lines is on the `audit verify` hot path.
const DECODE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Whether every byte of `text` is a base64 symbol or `=`: what may stand inside a JSON string
/// without any escape changing its meaning. One table lookup per byte and no branch, since
/// `audit verify`'s reading thread asks it of every envelope line.
pub fn only_symbols(text: &[u8]) -> bool {
    text.iter()
        .fold(0u8, |bad, &c| bad | SYMBOL_OR_PAD[c as usize])
        == 0
}

/// [`DECODE`] with `=` valid too: 0 for a symbol or `=`, [`INVALID`] for anything else.
const SYMBOL_OR_PAD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = DECODE[i] & INVALID;
        i += 1;
    }
    t[b'=' as usize] = 0;
    t
};

/// Decodes strict padded standard base64; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    decode_into(text.as_bytes(), &mut out).then_some(out)
}

/// [`decode`] into `out` (cleared first, so a caller can reuse one buffer for many decodes).
/// Returns whether `text` was strict padded standard base64; `out` is unspecified when not.
pub fn decode_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !text.len().is_multiple_of(4) {
        return false;
    }
    let Some((body, last)) = text.split_last_chunk::<4>() else {
        return true; // the empty string
    };
    // Sized once and written by index: `extend_from_slice` per quad checked the capacity each
    // time (the envelope lines of `audit verify` are ~1 KB each, a million of them).
    let full = body.len() / 4 * 3;
    out.resize(full, 0);
    let mut bad = 0u8;
    for (quad, dst) in body.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let v = [quad[0], quad[1], quad[2], quad[3]].map(|c| DECODE[c as usize]);
        bad |= v[0] | v[1] | v[2] | v[3];
        let n = (u32::from(v[0]) << 18)
            | (u32::from(v[1]) << 12)
            | (u32::from(v[2]) << 6)
            | u32::from(v[3]);
        dst.copy_from_slice(&n.to_be_bytes()[1..]);
    }
    // One test for the whole body: an invalid symbol has bit 7 set, which no valid one has.
    if bad & INVALID != 0 {
        return false;
    }
    let pad = last.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return false;
    }
    let mut n = 0u32;
    for &c in &last[..4 - pad] {
        let v = DECODE[c as usize];
        if v & INVALID != 0 {
            return false;
        }
        n = (n << 6) | u32::from(v);
    }
    n <<= 6 * pad as u32;
    let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    let keep = 3 - pad;
    // Canonical: the bits the padding hides must be zero.
    if got[keep..].iter().any(|&b| b != 0) {
        return false;
    }
    out.extend_from_slice(&got[..keep]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn decoding_is_strict() {
        for bad in [
            "Zg", "Zg=", "Zh==", "Zm9=", "Z===", "Zg==Zg==", "Zm9v\n", "Zm 9", "Zm9*",
        ] {
            assert!(decode(bad).is_none(), "{bad:?} accepted");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        // Padding or a bad symbol anywhere but the last quad, and a reused buffer.
        let mut buf = vec![7u8; 3];
        for bad in ["Zg==Zm9v", "Zm9vZg=v", "Zm*vZm9v", "Zm9v-m9v", "Zm9v=m9v"] {
            assert!(!decode_into(bad.as_bytes(), &mut buf), "{bad:?} accepted");
        }
        assert!(decode_into(b"Zm9vYmE=", &mut buf));
        assert_eq!(buf, b"fooba");
        assert!(decode_into(b"", &mut buf));
        assert!(buf.is_empty());
    }

    #[test]
    fn only_symbols_is_the_alphabet_and_padding() {
        for c in 0..=255u8 {
            let expected = ALPHABET.contains(&c) || c == b'=';
            assert_eq!(only_symbols(&[b'A', c, b'z']), expected, "byte {c}");
        }
        assert!(only_symbols(b""));
    }
}
