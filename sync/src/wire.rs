//! Bounds-checked reading and writing of the sync protocol's primitive encodings.
//!
//! Every read checks the remaining length first and returns a [`DecodeError`]; nothing here
//! indexes past the end or allocates from a length the peer chose before checking that the bytes
//! are actually there.

/// Malformed network input: a frame or reconciliation message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is empty")]
    Empty,

    #[error("frame is {len} bytes; at most {max} are allowed")]
    TooLarge { len: usize, max: usize },

    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),

    #[error("truncated: {what} needs {need} bytes, {have} remain")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },

    #[error("malformed varint in {what}")]
    BadVarint { what: &'static str },

    #[error("{what} is {value}; at most {max} is allowed")]
    OutOfRange {
        what: &'static str,
        value: u64,
        max: u64,
    },

    #[error("invalid {what}: {detail}")]
    Invalid {
        what: &'static str,
        detail: &'static str,
    },

    #[error("{extra} trailing bytes after {what}")]
    Trailing { what: &'static str, extra: usize },
}

/// Longest LEB128 encoding of a u64.
const VARINT_BYTES_MAX: usize = 10;

/// Appends `v` as unsigned LEB128.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Encoded length of `v` as LEB128.
pub fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros()).max(1).div_ceil(7) as usize
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self
            .bytes(N, what)?
            .try_into()
            .expect("bytes(N) returns exactly N bytes"))
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A count that announces `count` elements of at least `min_each` bytes each: refused if above
    /// `max`, or if the remaining bytes cannot possibly hold them (so a caller may reserve
    /// `count` slots without letting the peer pick the allocation size).
    pub fn check_count(
        &self,
        count: u64,
        max: usize,
        min_each: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        if count > max as u64 {
            return Err(DecodeError::OutOfRange {
                what,
                value: count,
                max: max as u64,
            });
        }
        let count = count as usize;
        let need = count.saturating_mul(min_each);
        if need > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                need,
                have: self.buf.len(),
            });
        }
        Ok(count)
    }

    /// Unsigned LEB128; refuses encodings longer than needed and values above u64.
    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..VARINT_BYTES_MAX {
            let byte = self.u8(what)?;
            let low = (byte & 0x7f) as u64;
            if i == VARINT_BYTES_MAX - 1 && low > 1 {
                return Err(DecodeError::BadVarint { what });
            }
            v |= low << (7 * i);
            if byte & 0x80 == 0 {
                // A final zero byte after the first is an overlong encoding: one value, one form.
                if i > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint { what });
                }
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint { what })
    }

    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                what,
                extra: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_canonical_form() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut r = Reader::new(&b);
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.is_empty());
        }
        // Overlong zero, overlong one, 11-byte and overflowing 10-byte encodings.
        for bad in [
            &[0x80, 0x00][..],
            &[0x81, 0x00],
            &[0xff; 11],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[0x80],
        ] {
            assert!(Reader::new(bad).varint("v").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_are_checked_against_remaining_bytes() {
        let r = Reader::new(&[0u8; 10]);
        assert!(r.check_count(3, 100, 3, "x").is_ok());
        assert!(r.check_count(4, 100, 3, "x").is_err());
        assert!(r.check_count(101, 100, 0, "x").is_err());
        assert!(r.check_count(u64::MAX, usize::MAX, 32, "x").is_err());
    }
}
