//! A peer holding a real roster key (office sg) that pushes a tampered envelope, and one signed by
//! a key outside the roster, gets both rejected and logged by the office daemon; neither reaches
//! storage, and the daemon goes on serving. The test process plays sg with sg's own keys.
mod common;
use automerge::{transaction::Transactable, Automerge, ROOT};
use common::*;
use consentd_sync::{envelope, keys};

fn one_change(signer: &ed25519_dalek::SigningKey) -> (automerge::Change, [u8; 16]) {
    let mut doc = Automerge::new().with_actor(envelope::actor_for(&signer.verifying_key(), [1; 8]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "type", "consent").unwrap();
    tx.commit();
    (doc.get_last_local_change().unwrap(), rand::random())
}

#[test]
fn tampered_and_forged_envelopes_never_reach_storage() {
    let net = Net::init("de,sg");
    let de = net.start("de");
    let sg_signing = keys::read_secret_key(&net.path().join("sg/signing.key")).unwrap();
    // A tampered envelope: signed by sg, then one byte of the change flipped.
    let (change, doc) = one_change(&sg_signing);
    let mut tampered = envelope::sign(doc, &change, &sg_signing);
    let last = tampered.change.len() - 1;
    tampered.change[last] ^= 0x01;
    // A forged one: a key outside the roster.
    let stranger = keys::generate();
    let (change, doc) = one_change(&stranger);
    let forged = envelope::sign(doc, &change, &stranger);

    let rejected = || de.log_text().matches("rejected replicated item").count();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(peer::push_as(
        net.path(),
        "sg",
        "de",
        vec![tampered.encode(), forged.encode()],
        || rejected() >= 2,
    ));
    drop(runtime);

    assert!(rejected() >= 2, "{}", de.log_text());
    let status = ok(&net.socket("de"), &["status"]);
    assert_eq!(status["envelopes"], 0, "nothing reached storage: {status}");
    let peers = ok(&net.socket("de"), &["peers"]);
    assert!(peers[0]["rejected"].as_u64().unwrap() >= 2, "{peers}");
    grant_works(&net);
}

fn grant_works(net: &Net) {
    ok(
        &net.socket("de"),
        &[
            "consent",
            "grant",
            "--subject",
            "a@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
}

#[test]
fn a_roster_key_claiming_another_office_is_refused() {
    let net = Net::init("de,sg,uk");
    let de = net.start("de");
    let sg_signing = keys::read_secret_key(&net.path().join("sg/signing.key")).unwrap();
    let (change, doc) = one_change(&sg_signing);
    let env = envelope::sign(doc, &change, &sg_signing);
    // sg's transport key authenticates the connection; its hello says it is uk.
    let refused = || de.log_text().contains("claims office uk");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(peer::push_claiming(
        net.path(),
        "sg",
        "uk",
        "de",
        vec![env.encode()],
        refused,
    ));
    drop(runtime);
    assert!(refused(), "{}", de.log_text());
    assert_eq!(
        ok(&net.socket("de"), &["status"])["envelopes"],
        0,
        "nothing from the impostor was stored"
    );
}
