//! Office and root keys, and the files that hold them.
//!
//! File formats (both exact, both written by this module):
//!
//! | file                      | content                                             | mode       |
//! |---------------------------|-----------------------------------------------------|------------|
//! | secret key (ed25519)      | 64 lowercase hex chars (the 32-byte seed) + `"\n"`  | 0600       |
//! | 32-byte secret (index key)| 64 lowercase hex chars + `"\n"`                     | 0600       |
//! | public key                | 64 hex chars (the 32-byte compressed point)         | any        |
//!
//! Secret files are created with `create_new` and mode 0600 so an existing key is never silently
//! replaced (losing a signing key strands every record it signed), and are refused on read when
//! group or others have any access: a key that others could read must be treated as leaked, and
//! saying so loudly at start-up is cheaper than finding out in an audit.
//!
//! This and `roster`'s load/save are the only places in the crate that touch the file system.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// Length of the hex text of a 32-byte key.
pub const KEY_HEX_LEN: usize = 64;
/// Mode secret files are created with.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Permission bits that must be clear on a secret file (any group or other access).
pub const FORBIDDEN_SECRET_MODE_BITS: u32 = 0o077;
/// Upper bound on what we read from any key file. A well-formed file is 64 or 65 bytes; the
/// slack tolerates trailing whitespace from hand editing, the bound keeps a mistaken path (say, a
/// log file) from being read whole.
pub const MAX_KEY_FILE_BYTES: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "secret key {} already exists; refusing to overwrite it (move it aside first if you really mean to replace it)",
        .path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error("key file {} does not exist", .path.display())]
    NotFound { path: PathBuf },

    #[error(
        "secret key {} is readable by group or others (mode {mode:04o}); run chmod 600 {}",
        .path.display(),
        .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error("key file {} is not a regular file", .path.display())]
    NotARegularFile { path: PathBuf },

    /// The reason never quotes the file's content: for a secret file that would leak key material
    /// into logs.
    #[error("key file {} is malformed: {reason}", .path.display())]
    MalformedFile { path: PathBuf, reason: String },

    #[error("public key is malformed: {reason}")]
    MalformedPublicKey { reason: String },

    #[error("cannot {action} key file {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A fresh ed25519 signing key from the operating system's CSPRNG.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// Lowercase hex of a public key (the roster's and `root.pub`'s spelling).
pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// Writes `key`'s 32-byte seed as a new secret file (mode 0600); refuses to replace an existing file.
pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    // `to_bytes` returns a copy of the seed; wrap it so that copy is wiped too.
    let seed = Zeroizing::new(key.to_bytes());
    write_secret_file(path, &seed)
}

/// Reads a secret key written by [`write_secret_key`], refusing group- or world-accessible files.
pub fn read_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let seed = read_secret_file(path)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A fresh 32-byte symmetric secret (e.g. the subject-index HMAC key) from the OS CSPRNG.
pub fn generate_secret32() -> [u8; 32] {
    let mut out = [0u8; 32];
    OsRng.fill_bytes(&mut out);
    out
}

/// Writes a 32-byte secret with the same format and permission rules as a secret key.
pub fn write_secret32(path: &Path, secret: &[u8; 32]) -> Result<(), KeyError> {
    write_secret_file(path, secret)
}

/// Reads a 32-byte secret written by [`write_secret32`].
pub fn read_secret32(path: &Path) -> Result<[u8; 32], KeyError> {
    // The caller takes ownership of the plain array; our own copy is wiped on drop.
    let secret = read_secret_file(path)?;
    Ok(*secret)
}

/// Parses the hex text of a public key (surrounding whitespace ignored).
///
/// Rejects points that are not valid keys, and small-order or mixed-order points: no honestly
/// generated key is one, and such keys weaken signature verification (a small-order key admits
/// forgeries; a torsion component makes batch and single verification disagree).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    if text.len() != KEY_HEX_LEN {
        return Err(KeyError::MalformedPublicKey {
            reason: format!(
                "expected {KEY_HEX_LEN} hex characters, found {} characters",
                text.chars().count()
            ),
        });
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|e| KeyError::MalformedPublicKey {
        reason: format!("not hex: {e}"),
    })?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::MalformedPublicKey {
        reason: "not a valid ed25519 public key (not a curve point)".to_string(),
    })?;
    if key.is_weak() || !key.to_edwards().is_torsion_free() {
        return Err(KeyError::MalformedPublicKey {
            reason: "not a usable ed25519 public key (small-order or mixed-order point)"
                .to_string(),
        });
    }
    Ok(key)
}

/// Accepts either the 64-hex-character key itself or the path of a file holding it, so
/// `--root-pub` can take whichever the operator has at hand.
pub fn read_public_key(path_or_hex: &str) -> Result<VerifyingKey, KeyError> {
    let trimmed = path_or_hex.trim();
    if trimmed.len() == KEY_HEX_LEN && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return parse_public_key(trimmed);
    }
    let path = Path::new(path_or_hex);
    let file = open_regular(path)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| match source.kind() {
            io::ErrorKind::InvalidData => KeyError::MalformedFile {
                path: path.to_path_buf(),
                reason: "not UTF-8 text".to_string(),
            },
            _ => KeyError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            },
        })?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::MalformedFile {
            path: path.to_path_buf(),
            reason: format!(
                "longer than {MAX_KEY_FILE_BYTES} bytes; expected {KEY_HEX_LEN} hex characters"
            ),
        });
    }
    parse_public_key(&text).map_err(|e| match e {
        KeyError::MalformedPublicKey { reason } => KeyError::MalformedFile {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    })
}

fn write_secret_file(path: &Path, secret: &[u8; 32]) -> Result<(), KeyError> {
    let mut text = Zeroizing::new([0u8; KEY_HEX_LEN + 1]);
    hex::encode_to_slice(secret, &mut text[..KEY_HEX_LEN])
        .expect("a 32-byte secret always encodes to exactly 64 hex characters");
    text[KEY_HEX_LEN] = b'\n';

    // `mode` applies only when the file is created; create_new guarantees that is now. The umask
    // can only clear bits, so the file is never more open than 0600.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_FILE_MODE)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => KeyError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => KeyError::Io {
                action: "create",
                path: path.to_path_buf(),
                source,
            },
        })?;
    let written = file.write_all(&text[..]).and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key file would make every later attempt fail with AlreadyExists and then
        // with a malformed-file error; remove it (we created it, so it holds nothing else).
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(KeyError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let file = open_regular(path)?;
    // Checked on the open file (fstat), not the path, so the file read is the file checked.
    let mode = file
        .metadata()
        .map_err(|source| KeyError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & FORBIDDEN_SECRET_MODE_BITS != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }

    let mut raw = Zeroizing::new(Vec::with_capacity(KEY_HEX_LEN + 1));
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|source| KeyError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    let malformed = |reason: String| KeyError::MalformedFile {
        path: path.to_path_buf(),
        reason,
    };
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(malformed(format!(
            "longer than {MAX_KEY_FILE_BYTES} bytes; expected {KEY_HEX_LEN} hex characters and a newline"
        )));
    }
    let body = raw.trim_ascii_end();
    if body.len() != KEY_HEX_LEN {
        return Err(malformed(format!(
            "expected {KEY_HEX_LEN} hex characters and a newline, found {} bytes",
            body.len()
        )));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    // Deliberately not quoting hex's error: it names the offending character, which is key material.
    hex::decode_to_slice(body, &mut secret[..])
        .map_err(|_| malformed("contains a character that is not a hex digit".to_string()))?;
    Ok(secret)
}

/// Opens `path` for reading, mapping "missing" and "not a regular file" to their own errors.
fn open_regular(path: &Path) -> Result<File, KeyError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KeyError::NotFound {
            path: path.to_path_buf(),
        },
        _ => KeyError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        },
    })?;
    let meta = file.metadata().map_err(|source| KeyError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(KeyError::NotARegularFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn secret_key_round_trip_and_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.key");
        let key = generate();
        write_secret_key(&path, &key).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", hex::encode(key.to_bytes())));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let back = read_secret_key(&path).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert_eq!(back.verifying_key(), key.verifying_key());
    }

    #[test]
    fn secret32_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.key");
        let secret = generate_secret32();
        assert_ne!(secret, [0u8; 32], "OsRng returned all zeros");
        write_secret32(&path, &secret).unwrap();
        assert_eq!(read_secret32(&path).unwrap(), secret);
    }

    #[test]
    fn group_readable_secret_is_refused_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.key");
        write_secret_key(&path, &generate()).unwrap();
        set_mode(&path, 0o644);

        let err = read_secret_key(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        let p = path.display();
        assert_eq!(
            msg,
            format!("secret key {p} is readable by group or others (mode 0644); run chmod 600 {p}")
        );

        // Any single group/other bit is enough to refuse, for both secret kinds.
        for mode in [0o604, 0o640, 0o610, 0o601, 0o620] {
            set_mode(&path, mode);
            match read_secret32(&path) {
                Err(KeyError::InsecurePermissions { mode: m, .. }) if m == mode => {}
                other => panic!("mode {mode:04o} gave {other:?}"),
            }
        }
        set_mode(&path, 0o400);
        read_secret_key(&path).expect("owner-only read access is fine");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.key");
        let err = read_secret_key(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn malformed_secret_files_are_refused_without_echoing_content() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[u8])] = &[
            ("short", b"abcd\n"),
            ("long", &[b'a'; 66]),
            (
                "nonhex",
                b"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n",
            ),
            ("empty", b""),
            ("huge", &[b'0'; 4096]),
        ];
        for (name, content) in cases {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            set_mode(&path, 0o600);
            let err = read_secret_key(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::MalformedFile { .. }),
                "{name}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(!msg.contains("zzzz"), "error quotes file content: {msg}");
        }
    }

    #[test]
    fn write_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.key");
        let first = generate();
        write_secret_key(&path, &first).unwrap();
        let err = write_secret_key(&path, &generate()).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains("refusing to overwrite"));
        // The original key is untouched.
        assert_eq!(read_secret_key(&path).unwrap().to_bytes(), first.to_bytes());
        assert!(matches!(
            write_secret32(&path, &[7u8; 32]),
            Err(KeyError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn public_key_text_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().verifying_key();
        let hex_text = public_hex(&key);
        assert_eq!(hex_text.len(), KEY_HEX_LEN);
        assert_eq!(hex_text, hex_text.to_lowercase());
        assert_eq!(parse_public_key(&format!("  {hex_text}\n")).unwrap(), key);
        assert_eq!(read_public_key(&hex_text).unwrap(), key);

        let path = dir.path().join("root.pub");
        fs::write(&path, format!("{hex_text}\n")).unwrap();
        assert_eq!(read_public_key(path.to_str().unwrap()).unwrap(), key);

        let missing = dir.path().join("missing.pub");
        assert!(matches!(
            read_public_key(missing.to_str().unwrap()),
            Err(KeyError::NotFound { .. })
        ));
        fs::write(&path, "not a key\n").unwrap();
        let err = read_public_key(path.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, KeyError::MalformedFile { .. }), "{err:?}");

        assert!(parse_public_key("abcd").is_err());
        assert!(parse_public_key(&"g".repeat(64)).is_err());
    }

    #[test]
    fn small_order_public_keys_are_refused() {
        // The identity point (y = 1) is a valid encoding of a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let err = parse_public_key(&hex::encode(identity)).unwrap_err();
        assert!(err.to_string().contains("small-order"), "{err}");
    }
}
