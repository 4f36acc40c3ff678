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
