//! Every envelope is verified when a document is loaded: an envelope planted in the database by
//! someone who is not an office in the roster makes the record refuse changes (an integrity error),
//! and the daemon goes on serving everything else.
mod common;
use automerge::{transaction::Transactable, Automerge, ROOT};
use common::*;
use consentd_storage::{RecordUpdate, Store, WriteBatch};
use consentd_sync::{envelope, keys, Envelope};

#[test]
fn an_envelope_from_a_stranger_is_caught_on_load() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let d = net.start("de");
    let opened = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "eve@example.com",
            "--kind",
            "access",
        ],
    );
    let id_hex = opened["id"].as_str().unwrap().to_string();
    let other = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "frank@example.com",
            "--kind",
            "access",
        ],
    );
    assert!(d.stop());

    // Forge: a stranger's key authors a change on top of the record and stores it.
    let db = net.data_dir("de").join("consentd.redb");
    let store = Store::open(&db).unwrap();
    let doc_id: [u8; 16] = hex::decode(&id_hex).unwrap().try_into().unwrap();
    let mut doc = Automerge::new();
    for bytes in store.doc_envelopes(&doc_id).unwrap() {
        let env = Envelope::decode(&bytes).unwrap();
        doc.apply_changes([automerge::Change::try_from(&env.change[..]).unwrap()])
            .unwrap();
    }
    let stranger = keys::generate();
    doc.set_actor(envelope::actor_for(&stranger.verifying_key(), [9; 8]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "status", "completed").unwrap();
    tx.put(ROOT, "outcome", "completed").unwrap();
    tx.commit();
    let change = doc.get_last_local_change().unwrap();
    let forged = envelope::sign(doc_id, &change, &stranger);
    let (kind, projection) = store.projection(&doc_id).unwrap().unwrap();
    store
        .commit_blocking(WriteBatch {
            updates: vec![RecordUpdate {
                doc_id,
                kind,
                envelopes: vec![(change.hash().0, forged.encode())],
                projection,
                index_keys: vec![],
                due_day: None,
            }],
            meta: vec![],
            ..WriteBatch::default()
        })
        .unwrap();
    store.shutdown();
    drop(store);

    let _d = net.start("de");
    let e = err(
        &sock,
        &["request", "close", &id_hex, "--outcome", "completed"],
    );
    assert!(e.contains("integrity") && e.contains(&id_hex), "{e}");
    // Other records are unaffected.
    let other_id = other["id"].as_str().unwrap();
    ok(
        &sock,
        &["request", "close", other_id, "--outcome", "completed"],
    );
}
