//! The audit bundle: one file holding everything an auditor needs (docs/audit-bundle.md is the
//! specification; this module is its source of truth and the doc's examples are tested against
//! real output).
//!
//! JSON Lines: UTF-8, one JSON object per line, each ending in `\n`, each with a `type`:
//!
//! 1. `header` — format name and version, network, exporting office, export time, and the
//!    exporter's signature over those and every checkpoint in the bundle ([`header_message`]);
//! 2. `roster` — the root-signed roster, exactly as `roster.json` holds it;
//! 3. `checkpoint` — one per office seen: its latest signed checkpoint (a C2SP signed note);
//! 4. `leaves` — every office's whole log up to its checkpoint (the exporter's first, then each
//!    other office's as replication delivered it), in order, up to [`LEAVES_PER_LINE`] leaves
//!    per line (hex of the 49-byte leaf);
//! 5. `envelope` — every envelope held (base64 of the `CDE1` bytes), grouped by record;
//! 6. `tombstone` — every tombstone held (base64 of the `CDT1` bytes);
//! 7. `end` — the number of lines before it and the SHA-256 of all their bytes (detects
//!    truncation and accidental damage; authenticity comes from the signatures, not from this).
//!
//! Sections appear in this order; a verifier refuses a bundle whose lines go back to an earlier
//! section. Writing and reading both stream: no section is held in memory whole.

use std::io::{self, BufRead, Write};

use consentd_sync::roster::SignedRoster;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `header.format`.
pub const FORMAT: &str = "consentd-audit-bundle";
/// `header.version`. Version 2 added the header's `signature`; a verifier still reads version 1
/// (reporting its header as unsigned).
pub const VERSION: u32 = 2;
/// Domain of the header signature.
const HEADER_SIGN_DOMAIN: &[u8] = b"consentd/bundle-header/v1\0";

/// The bytes an exporter signs for its header: the domain, then network, office and export
/// time, then every `checkpoint` line of the bundle in order (office, note), each field as u32
/// big-endian length ‖ bytes. The signature makes the exporter and the time (which `audit
/// report` judges deadlines at) the exporter's word rather than anyone's edit, and the
/// checkpoints bind it to this export: which offices' logs it carries, up to where. Without them
/// in it, another office's checkpoint and log removed or swapped for an older one (its envelopes
/// with them) still verified (both found by exploratory sessions).
pub fn header_message(
    network: &str,
    office: &str,
    exported_at: &str,
    checkpoints: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = HEADER_SIGN_DOMAIN.to_vec();
    let fields = [network, office, exported_at]
        .into_iter()
        .chain(checkpoints.iter().flat_map(|(o, note)| [*o, *note]));
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}
/// Longest line a reader accepts: an envelope of 1 MiB is ~1.4 MiB of base64.
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Leaves per `leaves` line.
pub const LEAVES_PER_LINE: usize = 1024;

/// One line of a bundle.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header {
        format: String,
        version: u32,
        network: String,
        /// The office that exported the bundle.
        office: String,
        /// RFC 3339 UTC.
        exported_at: String,
        /// Hex ed25519 signature by the exporter over [`header_message`] (version 2 on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    Roster {
        roster: SignedRoster,
    },
    Checkpoint {
        office: String,
        /// The signed note, newlines included.
        note: String,
    },
    Leaves {
        office: String,
        /// Index of the first leaf on this line.
        first: u64,
        /// Hex of each 49-byte leaf (kind ‖ doc ‖ hash).
        leaves: Vec<String>,
    },
    Envelope {
        /// Base64 of the encoded envelope.
        data: String,
    },
    Tombstone {
        /// Base64 of the encoded tombstone.
        data: String,
    },
    End {
        /// Lines before this one.
        lines: u64,
        /// Hex SHA-256 of every byte before this line.
        sha256: String,
    },
}

impl Line {
    /// Section number: lines must appear in non-decreasing section order.
    pub fn section(&self) -> u8 {
        match self {
            Line::Header { .. } => 0,
            Line::Roster { .. } => 1,
            Line::Checkpoint { .. } => 2,
            Line::Leaves { .. } => 3,
            Line::Envelope { .. } => 4,
            Line::Tombstone { .. } => 5,
            Line::End { .. } => 6,
        }
    }
}

/// Counts of what a writer wrote.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub bytes: u64,
    pub checkpoints: u64,
    pub leaves: u64,
    pub envelopes: u64,
    pub tombstones: u64,
    pub sha256: String,
    /// Envelopes held but left out: their author's checkpoint in the bundle does not log them
    /// yet, or they depend on one that it does not (`export.rs`).
    pub not_yet_logged: u64,
}

/// Writes lines, hashing them for the `end` line.
pub struct Writer<W: Write> {
    out: W,
    sha: Sha256,
    summary: Summary,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            sha: Sha256::new(),
            summary: Summary::default(),
        }
    }

    pub fn write(&mut self, line: &Line) -> io::Result<()> {
        debug_assert!(
            !matches!(line, Line::End { .. }),
            "the end line is written by finish"
        );
        let mut bytes = serde_json::to_vec(line).expect("bundle lines serialise");
        bytes.push(b'\n');
        self.sha.update(&bytes);
        self.out.write_all(&bytes)?;
        let s = &mut self.summary;
        s.lines += 1;
        s.bytes += bytes.len() as u64;
        match line {
            Line::Checkpoint { .. } => s.checkpoints += 1,
            Line::Leaves { leaves, .. } => s.leaves += leaves.len() as u64,
            Line::Envelope { .. } => s.envelopes += 1,
            Line::Tombstone { .. } => s.tombstones += 1,
            _ => {}
        }
        Ok(())
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Writes the `end` line and flushes; returns the output and what was written.
    pub fn finish(mut self) -> io::Result<(W, Summary)> {
        let sha256 = hex::encode(self.sha.clone().finalize());
        let end = Line::End {
            lines: self.summary.lines,
            sha256: sha256.clone(),
        };
        let mut bytes = serde_json::to_vec(&end).expect("bundle lines serialise");
        bytes.push(b'\n');
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        self.summary.bytes += bytes.len() as u64;
        self.summary.sha256 = sha256;
        Ok((self.out, self.summary))
    }
}

/// Reads raw lines (without their newline), refusing lines over [`MAX_LINE_BYTES`], and keeps
/// the running SHA-256 of every byte read before the current line.
pub struct Reader<R: BufRead> {
    inner: R,
    buf: Vec<u8>,
    /// Digest of all complete lines read so far, *excluding* the current one.
    sha_before: Sha256,
    /// The current line's bytes are hashed into `sha_before` when the next line is read.
    pending: bool,
    pub line_no: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line {line} is longer than {max} bytes")]
    TooLong { line: u64, max: usize },
    #[error("line {line} does not end with a newline (the file is truncated)")]
    Unterminated { line: u64 },
    #[error("cannot read the bundle: {0}")]
    Io(#[from] io::Error),
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            buf: Vec::new(),
            sha_before: Sha256::new(),
            pending: false,
            line_no: 0,
            bytes: 0,
        }
    }

    /// Advances to the next line (`false` at end of file); [`Reader::line`] then holds it.
    pub fn advance(&mut self) -> Result<bool, ReadError> {
        if self.pending {
            self.sha_before.update(&self.buf);
            self.pending = false;
        }
        self.buf.clear();
        let mut limited = <&mut R as io::Read>::take(&mut self.inner, MAX_LINE_BYTES as u64 + 1);
        let n = limited.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        self.bytes += n as u64;
        if self.buf.last() != Some(&b'\n') {
            return Err(if self.buf.len() > MAX_LINE_BYTES {
                ReadError::TooLong {
                    line: self.line_no,
                    max: MAX_LINE_BYTES,
                }
            } else {
                ReadError::Unterminated { line: self.line_no }
            });
        }
        self.pending = true;
        Ok(true)
    }

    /// The current line without its newline.
    pub fn line(&self) -> &[u8] {
        self.buf.strip_suffix(b"\n").unwrap_or(&self.buf)
    }

    /// The current line, or `None` at end of file.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, ReadError> {
        Ok(if self.advance()? {
            Some(self.line())
        } else {
            None
        })
    }

    /// Hex SHA-256 of every byte before the current line.
    pub fn digest_before(&self) -> String {
        hex::encode(self.sha_before.clone().finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_on_the_digest() {
        let mut w = Writer::new(Vec::new());
        w.write(&Line::Envelope {
            data: "QUJD".into(),
        })
        .unwrap();
        w.write(&Line::Tombstone {
            data: "REVG".into(),
        })
        .unwrap();
        let (bytes, summary) = w.finish().unwrap();
        assert_eq!(summary.lines, 2);
        assert_eq!(summary.bytes, bytes.len() as u64);
        let mut r = Reader::new(&bytes[..]);
        let mut checked = false;
        while r.advance().unwrap() {
            if let Ok(Line::End { lines, sha256 }) = serde_json::from_slice(r.line()) {
                assert_eq!(lines, 2);
                assert_eq!(sha256, summary.sha256);
                assert_eq!(r.digest_before(), sha256);
                checked = true;
            }
        }
        assert!(checked, "no end line");
    }

    #[test]
    fn truncated_and_overlong_lines_are_refused() {
        let mut r = Reader::new(&b"{\"a\":1}\n{\"b\""[..]);
        assert!(r.next_line().unwrap().is_some());
        assert!(matches!(
            r.next_line(),
            Err(ReadError::Unterminated { line: 2 })
        ));
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut r = Reader::new(&long[..]);
        assert!(matches!(r.next_line(), Err(ReadError::TooLong { .. })));
    }
}
