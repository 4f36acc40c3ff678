//! Erasure across offices: a subject's erasable record replicated to three offices is erased at
//! one; the tombstone reaches the others, which purge it, destroy the subject key and rotate their
//! key-encryption key. Afterwards no file under any office's data directory holds the identifier or
//! the evidence in clear, and no 32-byte window of any file unwraps the key a peer stored or
//! opens the ciphertext captured before the erasure.
mod common;
use common::*;
use consentd_storage::Store;
use std::path::Path;
use std::time::Duration;

const SUBJECT: &str = "erase.me@example.com";
const EVIDENCE: &str = "QWX-distinctive-evidence-4412";

fn windows_of(dir: &Path, f: &impl Fn(&[u8; 32]) -> bool) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            windows_of(&p, f)
        } else {
            std::fs::read(&p)
                .unwrap()
                .windows(32)
                .any(|w| f(w.try_into().unwrap()))
        }
    })
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    wait_until(what, Duration::from_secs(90), cond)
}

#[test]
fn an_erasure_leaves_nothing_readable_at_any_office() {
    let net = Net::init("de,sg,uk");
    for o in ["de", "sg", "uk"] {
        net.edit_config(o, |t| {
            t.replace(
                "compact_after_deletions = 1000",
                "compact_after_deletions = 1",
            )
        });
    }
    let de = net.start("de");
    let sg = net.start("sg");
    let uk = net.start("uk");
    let erasable = ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "support",
            "--basis",
            "legitimate_interest",
            "--evidence",
            EVIDENCE,
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let request = ok(
        &net.socket("de"),
        &["request", "open", "--subject", SUBJECT, "--kind", "erasure"],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    for o in ["sg", "uk"] {
        wait(&format!("{o} reads the record"), || {
            !ok(
                &net.socket(o),
                &["consent", "history", "--subject", SUBJECT],
            )
            .as_array()
            .unwrap()
            .is_empty()
        });
    }

    // What an attacker with a copy of sg's disk would hold: the sealed evidence, and the key as sg
    // stored it (wrapped under sg's KEK). Positive control: today sg's files unwrap it.
    assert!(sg.stop());
    let sg_data = net.data_dir("sg");
    let (sealed, key_id, owner, wrapped) = {
        let store = Store::open(&sg_data.join("consentd.redb")).unwrap();
        let doc: [u8; 16] = hex::decode(&erasable).unwrap().try_into().unwrap();
        let (_, projection) = store.projection(&doc).unwrap().unwrap();
        let consentd::record::Record::Consent(c) =
            consentd::record::Record::from_projection(&projection).unwrap()
        else {
            panic!("the erasable record is a consent record")
        };
        let evidence = c.events[0].evidence.clone().unwrap();
        let kid = consentd::sealed::key_id(&evidence).unwrap();
        let (owner, wrapped) = store
            .key(&kid)
            .unwrap()
            .expect("sg stored the key that came with the record");
        store.shutdown();
        (
            consentd::sealed::sealed_bytes(&evidence).unwrap(),
            kid,
            owner,
            wrapped,
        )
    };
    let unwraps =
        |w: &[u8; 32]| consentd::keystore::unwrap_with(w, &key_id, &owner, &wrapped).is_some();
    assert!(
        windows_of(&sg_data, &unwraps),
        "control: sg's live KEK unwraps its stored key"
    );
    let sg = net.start("sg");

    let closed = ok(
        &net.socket("de"),
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(closed["erasure"]["deleted"], 1, "{closed}");
    for o in ["sg", "uk"] {
        wait(&format!("{o} applies the tombstone"), || {
            ok(
                &net.socket(o),
                &["consent", "history", "--subject", SUBJECT],
            )
            .as_array()
            .unwrap()
            .is_empty()
        });
    }
    // Tombstones from a peer leave the rotation to sg's rotation task, which runs it at once.
    wait("sg rotates its KEK", || {
        let st = ok(&net.socket("sg"), &["status"]);
        st["kek_generation"].as_u64().unwrap() >= 2 && st["kek_rotation_due"] == false
    });
    for d in [de, sg, uk] {
        assert!(d.stop());
    }

    for o in ["de", "sg", "uk"] {
        let data = net.data_dir(o);
        assert_eq!(occurrences_under(&data, SUBJECT.as_bytes()), 0, "{o}");
        assert_eq!(occurrences_under(&data, EVIDENCE.as_bytes()), 0, "{o}");
        assert!(
            !windows_of(&data, &|w| consentd::sealed::open_bytes_with(w, &sealed)
                .is_some()),
            "a window under {o} opens the erased evidence"
        );
    }
    assert!(
        !windows_of(&sg_data, &unwraps),
        "a window under sg still unwraps the destroyed key"
    );
}
