//! Replays every committed fuzz corpus file (fuzz/corpus/TARGET/*) and every generated seed
//! through the fuzz targets' own entry points (`consentd::fuzzing`), on the stable toolchain:
//! a regression the fuzzer once found, or any input in the corpora, fails CI without nightly.
//!
//! Regressions the fuzzer found are also named tests below (their inputs are in
//! fuzz/regressions/TARGET/NAME).
//!
//! `CONSENTD_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus_replays` (re)writes the seed
//! files `fuzz/corpus/TARGET/seed-*` from real encoded values (`consentd::fuzzing::seeds`).

use std::path::{Path, PathBuf};

use consentd::fuzzing::{seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn target(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// Runs `f(data)`, turning a panic into an error naming the input.
fn replay(name: &str, path: &str, data: &[u8]) -> Result<(), String> {
    let f = target(name);
    std::panic::catch_unwind(|| f(data)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{name} panicked on {path}: {msg}")
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("readable corpus directory").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn every_seed_and_committed_corpus_file_replays_without_a_panic() {
    let write = std::env::var_os("CONSENTD_WRITE_FUZZ_SEEDS").is_some();
    let mut failures = Vec::new();
    let mut seen = 0;
    for (name, seed, data) in seeds() {
        if write {
            let dir = fuzz_dir().join("corpus").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{seed}")), &data).unwrap();
        }
        seen += 1;
        if let Err(e) = replay(name, &format!("seed {seed}"), &data) {
            failures.push(e);
        }
    }
    let mut per_target = Vec::new();
    for (name, _) in TARGETS {
        let mut n = 0;
        for sub in ["corpus", "regressions"] {
            for path in files(&fuzz_dir().join(sub).join(name)) {
                let data = std::fs::read(&path).unwrap();
                n += 1;
                if let Err(e) = replay(name, &path.display().to_string(), &data) {
                    failures.push(e);
                }
            }
        }
        assert!(n > 0, "fuzz/corpus/{name} is empty");
        per_target.push(format!("{name} {n}"));
        seen += n;
    }
    println!("replayed {seen} inputs ({})", per_target.join(", "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_has_a_fuzz_binary_and_a_corpus() {
    for (name, _) in TARGETS {
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
}

/// The seeds start the fuzzer deep: signed values verify, bundles pass every check, requests parse.
#[test]
fn seeds_are_real_valid_values() {
    use consentd::fuzzing::net;
    use consentd_sync::{envelope, tlog, tombstone};
    for (name, seed, data) in seeds() {
        let ok = match name {
            "envelope" => envelope::Envelope::decode(&data)
                .map_err(|e| e.to_string())
                .and_then(|e| envelope::verify(e, &net().roster).map_err(|e| e.to_string()))
                .map(|_| ()),
            "tombstone" => tombstone::Tombstone::decode(&data)
                .map_err(|e| e.to_string())
                .and_then(|t| tombstone::verify(t, &net().roster).map_err(|e| e.to_string()))
                .map(|_| ()),
            "checkpoint" if seed.starts_with("note") || seed.starts_with("empty") => {
                tlog::verify(std::str::from_utf8(&data).unwrap(), &net().roster)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            "sync_frame" => consentd_sync::Frame::decode(&data)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "audit_bundle" => {
                let root_pub =
                    ed25519_dalek::VerifyingKey::from_bytes(data[..32].try_into().unwrap())
                        .unwrap();
                let opts = consentd::audit::verify::Options {
                    root_pub,
                    threads: 1,
                    collect: false,
                    progress: false,
                    accept_version_1: true,
                };
                let out = consentd::audit::verify::verify(&data[32..], &opts);
                if out.ok() {
                    Ok(())
                } else {
                    Err(format!("{} failures", out.failures_total))
                }
            }
            "control_request" if seed != "op-13" => consentd::protocol::parse_request(&data)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        assert!(ok.is_ok(), "seed {name}/{seed}: {}", ok.unwrap_err());
    }
}

fn regression(target_name: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("regressions").join(target_name).join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    target(target_name)(&data);
    data
}

/// Found by the `checkpoint` target in its first second: a signed-note body with an extension
/// line after the root hash. C2SP allows extension lines and `tlog::parse_body` accepts (and
/// drops) them; the harness wrongly required the body to re-encode byte for byte.
#[test]
fn fuzz_regression_checkpoint_body_with_an_extension_line() {
    let data = regression("checkpoint", "extension-line-after-root");
    let text = std::str::from_utf8(&data).unwrap();
    let note = consentd_sync::tlog::parse_note(text).unwrap();
    let cp = consentd_sync::tlog::parse_body(note.text).unwrap();
    assert!(note.text.starts_with(&cp.body()) && note.text != cp.body());
}

/// Found by the `reconcile` target: `01 00 00 00`, a message whose only range is an explicit
/// skip to infinity. It is legal and means the same as the empty message `01`, which is how
/// it re-encodes (skips are implicit in our encoder); the harness wrongly required identical
/// bytes.
#[test]
fn fuzz_regression_reconcile_explicit_trailing_skip() {
    use consentd_sync::reconcile::Message;
    let data = regression("reconcile", "explicit-trailing-skip");
    let m = Message::decode(&data[1..]).unwrap();
    assert_eq!(m.encode(), vec![1]);
    assert_eq!(
        Message::decode(&[1]).unwrap().encode(),
        m.encode(),
        "both encodings mean the same"
    );
}

/// Found by the `reconcile` target (a real bug, fixed in `reconcile::process`): a reply whose
/// one id list covers a range where the initiator holds 102 items made it learn all 102 at
/// once, past its cap of 64 (`Limits::recon_items_max`). The cap now holds per item.
#[test]
fn fuzz_regression_reconcile_id_list_over_the_learning_cap() {
    regression("reconcile", "id-list-over-the-learning-cap");
}
