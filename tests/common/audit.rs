//! Helpers for the audit tests: populate an office, read and rewrite bundles, verify in process.
use super::*;
use consentd::audit::verify::{self, Outcome};
use consentd_sync::b64;
use ed25519_dalek::VerifyingKey;
use std::io::Write;

/// Imports `n` records through `consentctl import`: consents, requests and transfers in turn.
pub fn populate(net: &Net, office: &str, n: usize, tag: &str) {
    let path = net.path().join(format!("import-{tag}.jsonl"));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        let subject = format!("p{i}-{tag}@example.com");
        let line = match i % 3 {
            0 => {
                serde_json::json!({"op":"consent.grant","subject":subject,"purpose":"marketing","basis":"consent","evidence":"web form v3"})
            }
            1 => {
                serde_json::json!({"op":"request.open","subject":subject,"kind":"access","received":"2026-01-10T00:00:00Z"})
            }
            _ => {
                serde_json::json!({"op":"transfer.record","to":"US","recipient":"Acme","categories":["phone_number"],"mechanism":"scc","tia":"TIA-7","subject":subject})
            }
        };
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let v = ok(
        &net.socket(office),
        &["import", "--file", path.to_str().unwrap()],
    );
    assert_eq!(v["imported"], n as u64);
}

pub fn export(net: &Net, office: &str, name: &str) -> PathBuf {
    let out = net.path().join(name);
    let v = ok(
        &net.socket(office),
        &["audit", "export", "--out", out.to_str().unwrap()],
    );
    assert_eq!(v["out"], out.to_str().unwrap());
    out
}

/// `consentctl audit verify BUNDLE --root-pub` with the network's root key, through `office`'s
/// consentctl: asserts it succeeds and returns its JSON report.
pub fn verified(net: &Net, office: &str, bundle: &Path) -> Value {
    let root = net.path().join("root.pub");
    let out = ctl(
        &net.socket(office),
        &[
            "audit",
            "verify",
            bundle.to_str().unwrap(),
            "--root-pub",
            root.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `consentctl audit report BUNDLE --root-pub` with the network's root key, through `office`'s
/// consentctl: asserts it succeeds and returns its JSON tables.
pub fn audit_report(net: &Net, office: &str, bundle: &Path) -> Value {
    let root = net.path().join("root.pub");
    ok(
        &net.socket(office),
        &[
            "audit",
            "report",
            bundle.to_str().unwrap(),
            "--root-pub",
            root.to_str().unwrap(),
        ],
    )
}

pub fn root_pub(net: &Net) -> VerifyingKey {
    consentd_sync::keys::read_public_key(net.path().join("root.pub").to_str().unwrap()).unwrap()
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Joins lines into a bundle, rewriting the end line's count and digest so that only the
/// checks that matter can catch the edit (an unauthenticated digest proves nothing).
pub fn rebuild(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in &lines[..lines.len() - 1] {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    use sha2::Digest;
    let end = serde_json::json!({
        "type": "end",
        "lines": lines.len() - 1,
        "sha256": hex::encode(sha2::Sha256::digest(&out)),
    });
    out.extend_from_slice(end.to_string().as_bytes());
    out.push(b'\n');
    out
}

pub fn verify_bytes(bytes: &[u8], root: &VerifyingKey) -> Outcome {
    verify::verify(
        bytes,
        &verify::Options {
            root_pub: *root,
            threads: 2,
            collect: false,
            progress: false,
            accept_version_1: false,
        },
    )
}

pub fn line_type(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    v["type"].as_str().unwrap().to_string()
}

/// Index of every line of a type.
pub fn indexes_of(lines: &[String], ty: &str) -> Vec<usize> {
    (0..lines.len())
        .filter(|&i| line_type(&lines[i]) == ty)
        .collect()
}

/// Replaces the base64 `data` of an envelope or tombstone line after editing its bytes.
pub fn edit_data(line: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let mut bytes = b64::decode(v["data"].as_str().unwrap()).unwrap();
    f(&mut bytes);
    v["data"] = Value::String(b64::encode(&bytes));
    v.to_string()
}
