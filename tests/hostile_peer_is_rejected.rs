//! A peer holding a real roster key (office sg) that pushes a tampered envelope, and one signed by
//! a key outside the roster, gets both rejected and logged by the office daemon; neither reaches
//! storage, and the daemon goes on serving. The test process plays sg with sg's own keys.
mod common;
use automerge::{transaction::Transactable, Automerge, ROOT};
use common::*;
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, Session, SessionConfig};
use consentd_sync::transport::Endpoint;
use consentd_sync::{envelope, keys, Hello, SetKind, SignedRoster};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Nothing(ItemSet);

impl Local for Nothing {
    fn offered(&self, _peer: &str, _set: SetKind) -> Box<dyn SetView + '_> {
        Box::new(&self.0)
    }
    fn holds(&self, _set: SetKind, _item: &Item) -> bool {
        false
    }
    fn is_tombstoned(&self, _doc: &[u8; 16]) -> bool {
        false
    }
    fn verify_blob(&self, set: SetKind, _blob: &[u8]) -> Result<BlobInfo, String> {
        Err(format!("{} not wanted", set.name()))
    }
}

fn one_change(signer: &ed25519_dalek::SigningKey) -> (automerge::Change, [u8; 16]) {
    let mut doc = Automerge::new().with_actor(envelope::actor_for(&signer.verifying_key(), [1; 8]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "type", "consent").unwrap();
    tx.commit();
    (doc.get_last_local_change().unwrap(), rand::random())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_forged_envelopes_never_reach_storage() {
    let net = Net::init("de,sg");
    let de = tokio::task::block_in_place(|| net.start("de"));
    let root = keys::read_public_key(net.path().join("root.pub").to_str().unwrap()).unwrap();
    let roster = Arc::new(
        SignedRoster::load(&net.path().join("roster.json"))
            .unwrap()
            .verify(&root)
            .unwrap(),
    );
    let sg_signing = keys::read_secret_key(&net.path().join("sg/signing.key")).unwrap();
    let sg_transport = keys::read_secret_key(&net.path().join("sg/transport.key")).unwrap();
    let de_addr = roster.office("de").unwrap().address;

    // A tampered envelope: signed by sg, then one byte of the change flipped.
    let (change, doc) = one_change(&sg_signing);
    let mut tampered = envelope::sign(doc, &change, &sg_signing);
    let last = tampered.change.len() - 1;
    tampered.change[last] ^= 0x01;
    // A forged one: a key outside the roster.
    let stranger = keys::generate();
    let (change, doc) = one_change(&stranger);
    let forged = envelope::sign(doc, &change, &stranger);

    let endpoint = Endpoint::bind(
        roster.clone(),
        "sg",
        &sg_transport,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let link = endpoint.connect_addr("de", de_addr).await.unwrap();
    let (_conn, mut writer, mut reader) = link.split();
    let mut session = Session::new(SessionConfig {
        hello: Hello {
            version: consentd_sync::frame::PROTOCOL_VERSION,
            network: roster.roster().network.clone(),
            office: "sg".into(),
            roster_serial: roster.roster().serial,
        },
        peer: "de".into(),
        dialer: false,
        roster: roster.clone(),
        limits: Limits::default(),
    });
    let local = Nothing(ItemSet::new());
    let mut pushed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(f) = session.poll_transmit() {
            writer.send(&f).await.unwrap();
        }
        while let Some(a) = session.poll_action() {
            if let Action::Connected { .. } = a {
                if !pushed {
                    session.push_local(Instant::now(), SetKind::Envelopes, tampered.encode());
                    session.push_local(Instant::now(), SetKind::Envelopes, forged.encode());
                    pushed = true;
                }
            }
        }
        if pushed && de.log_text().matches("rejected replicated item").count() >= 2 {
            break;
        }
        tokio::select! {
            f = reader.recv() => match f {
                Ok(Some(bytes)) => { let _ = session.handle_frame(Instant::now(), &bytes, &local); }
                _ => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => session.handle_timeout(Instant::now(), &local),
        }
    }
    let log = de.log_text();
    assert!(pushed, "the session never opened: {log}");
    assert!(
        log.matches("rejected replicated item").count() >= 2,
        "{log}"
    );
    let status = tokio::task::block_in_place(|| ok(&net.socket("de"), &["status"]));
    assert_eq!(status["envelopes"], 0, "nothing reached storage: {status}");
    let peers = tokio::task::block_in_place(|| ok(&net.socket("de"), &["peers"]));
    assert!(peers[0]["rejected"].as_u64().unwrap() >= 2, "{peers}");
}
