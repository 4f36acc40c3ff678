//! The QUIC transport on real loopback UDP (127.0.0.1 only): roster-pinned raw public keys on
//! both sides, refusals reported as values, length-prefixed frames, and a full sync session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ROOT};
use consentd_sync::envelope::{self, actor_for};
use consentd_sync::frame::{Frame, Hello, SetKind, PROTOCOL_VERSION};
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::roster::{OfficeEntry, Roster, VerifiedRoster};
use consentd_sync::session::{
    Action, BlobInfo, Limits, Local, Session, SessionConfig, SessionError,
};
use consentd_sync::transport::{Endpoint, FrameReader, FrameWriter, TransportError};
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;

const LOOPBACK: &str = "127.0.0.1:0";

struct Office {
    signing: SigningKey,
    transport: SigningKey,
}

fn roster(ids: &[&str], offices: &[Office], root: &SigningKey) -> Arc<VerifiedRoster> {
    let mut r = Roster::new("test-net").unwrap();
    for (i, (id, o)) in ids.iter().zip(offices).enumerate() {
        r.add_office(OfficeEntry {
            id: id.to_string(),
            jurisdiction: "DE".into(),
            signing_key: hex::encode(o.signing.verifying_key().as_bytes()),
            transport_key: hex::encode(o.transport.verifying_key().as_bytes()),
            address: format!("127.0.0.1:{}", 9000 + i),
            retired: false,
        })
        .unwrap();
    }
    r.serial = 1;
    Arc::new(r.sign(root).unwrap().verify(&root.verifying_key()).unwrap())
}

fn office() -> Office {
    Office {
        signing: SigningKey::generate(&mut OsRng),
        transport: SigningKey::generate(&mut OsRng),
    }
}

struct Net {
    roster: Arc<VerifiedRoster>,
    offices: Vec<Office>,
    root: SigningKey,
}

const IDS: [&str; 3] = ["us", "de", "sg"];

fn net() -> Net {
    let root = SigningKey::generate(&mut OsRng);
    let offices: Vec<Office> = IDS.iter().map(|_| office()).collect();
    Net {
        roster: roster(&IDS, &offices, &root),
        offices,
        root,
    }
}

fn bind(net: &Net, i: usize) -> Endpoint {
    Endpoint::bind(
        net.roster.clone(),
        IDS[i],
        &net.offices[i].transport,
        LOOPBACK.parse().unwrap(),
    )
    .unwrap()
}

fn addr(e: &Endpoint) -> SocketAddr {
    e.local_addr().unwrap()
}

fn hello(office: &str) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        network: "test-net".into(),
        office: office.into(),
        roster_serial: 1,
        wall_ms: 1_700_000_000_000,
    })
}

#[tokio::test]
async fn roster_offices_connect_and_exchange_frames() {
    let net = net();
    let (us, de) = (bind(&net, 0), bind(&net, 1));
    let de_addr = addr(&de);
    let server = tokio::spawn(async move {
        let mut link = de.accept().await.unwrap().finish().await.unwrap();
        assert_eq!(
            link.peer, "us",
            "identity comes from the client's roster key"
        );
        let got = link.reader.recv().await.unwrap().unwrap();
        assert_eq!(Frame::decode(&got).unwrap(), hello("us"));
        let big = link.reader.recv().await.unwrap().unwrap();
        link.writer.send(&hello("de").encode()).await.unwrap();
        link.writer.send(&big).await.unwrap();
        link.writer.finish();
        assert!(
            link.reader.recv().await.unwrap().is_none(),
            "clean end of stream"
        );
        de
    });
    let t = Instant::now();
    let mut link = us.connect_addr("de", de_addr).await.unwrap();
    let handshake = t.elapsed();
    assert_eq!(link.peer, "de");
    link.writer.send(&hello("us").encode()).await.unwrap();
    let push = Frame::Push {
        set: SetKind::Envelopes,
        seq: 1,
        blob: vec![7; 200_000],
    }
    .encode();
    link.writer.send(&push).await.unwrap();
    let got = link.reader.recv().await.unwrap().unwrap();
    assert_eq!(Frame::decode(&got).unwrap(), hello("de"));
    assert_eq!(link.reader.recv().await.unwrap().unwrap(), push);
    link.writer.finish();
    assert!(link.reader.recv().await.unwrap().is_none());
    server.await.unwrap();
    println!("QUIC + TLS 1.3 raw-public-key handshake on loopback: {handshake:?}");
}

#[tokio::test]
async fn a_key_outside_the_roster_is_refused_on_both_sides() {
    let net = net();
    let de = bind(&net, 1);
    let de_addr = addr(&de);
    // A stranger with its own roster in which "us" has the stranger's key and "de" its real key.
    let stranger = office();
    let mut offices: Vec<Office> = Vec::new();
    offices.push(Office {
        signing: SigningKey::generate(&mut OsRng),
        transport: stranger.transport.clone(),
    });
    for o in &net.offices[1..] {
        offices.push(Office {
            signing: o.signing.clone(),
            transport: o.transport.clone(),
        });
    }
    let fake_roster = roster(&IDS, &offices, &SigningKey::generate(&mut OsRng));
    let fake_us = Endpoint::bind(
        fake_roster,
        "us",
        &stranger.transport,
        LOOPBACK.parse().unwrap(),
    )
    .unwrap();
    let server = tokio::spawn(async move { de.accept().await.unwrap().finish().await });
    let client = fake_us.connect_addr("de", de_addr).await;
    let refused = server.await.unwrap();
    let key = hex::encode(stranger.transport.verifying_key().as_bytes());
    match refused {
        Err(TransportError::Refused { reason, .. }) => {
            assert!(reason.contains("not in the roster"), "{reason}");
            assert!(reason.contains(&key), "the refusal names the key: {reason}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a key outside the roster was accepted"),
    }
    // The client learns it was refused too (or its stream dies at once).
    if let Ok(mut link) = client {
        let _ = link.writer.send(&hello("us").encode()).await;
        assert!(link.reader.recv().await.is_err());
    }
    // And the server's own key must match the roster before anything starts.
    assert!(matches!(
        Endpoint::bind(
            net.roster.clone(),
            "us",
            &stranger.transport,
            LOOPBACK.parse().unwrap()
        ),
        Err(TransportError::OwnKeyMismatch(_))
    ));
    let _ = &net.root;
}

#[tokio::test]
async fn a_server_presenting_another_offices_key_is_refused_by_the_client() {
    let net = net();
    let (us, de) = (bind(&net, 0), bind(&net, 1));
    let de_addr = addr(&de);
    let server = tokio::spawn(async move { de.accept().await.unwrap().finish().await });
    // us dials "sg" but reaches de, which presents de's (roster) key.
    match us.connect_addr("sg", de_addr).await {
        Err(TransportError::Refused { reason, .. }) => {
            assert!(
                reason.contains("office sg presented transport key")
                    && reason.contains(&hex::encode(
                        net.offices[1].transport.verifying_key().as_bytes()
                    )),
                "{reason}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("connected to the wrong office"),
    }
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn a_roster_key_whose_hello_claims_another_office_is_refused() {
    let net = net();
    let (sg, de) = (bind(&net, 2), bind(&net, 1));
    let de_addr = addr(&de);
    let roster = net.roster.clone();
    let server = tokio::spawn(async move {
        let mut link = de.accept().await.unwrap().finish().await.unwrap();
        assert_eq!(link.peer, "sg");
        let mut s = Session::new(config(&roster, "de", &link.peer, false));
        let frame = link.reader.recv().await.unwrap().unwrap();
        let local = Mem::default();
        let err = s.handle_frame(Instant::now(), &frame, &local).unwrap_err();
        // The refusal goes back to the peer before the stream closes.
        while let Some(f) = s.poll_transmit() {
            link.writer.send(&f).await.unwrap();
        }
        link.writer.finish();
        let _ = link.reader.recv().await;
        err
    });
    let mut link = sg.connect_addr("de", de_addr).await.unwrap();
    link.writer.send(&hello("us").encode()).await.unwrap();
    let mut saw_error = false;
    while let Ok(Some(f)) = link.reader.recv().await {
        saw_error |= matches!(Frame::decode(&f), Ok(Frame::Error { .. }));
    }
    link.writer.finish();
    let err = server.await.unwrap();
    assert!(
        matches!(&err, SessionError::Identity { peer, claimed } if peer == "sg" && claimed == "us"),
        "{err}"
    );
    assert!(saw_error, "the peer is told why");
}

/// Version 3 carries the sender's clock in its Hello (a version-2 Hello ends before it): a
/// version-2 peer's Hello is refused for its version, and it is told why (error code 2).
#[test]
fn a_hello_of_the_previous_protocol_version_is_refused() {
    let net = net();
    let mut s = Session::new(config(&net.roster, "de", "sg", false));
    while s.poll_transmit().is_some() {}
    let old = Frame::Hello(Hello {
        version: PROTOCOL_VERSION - 1,
        network: "test-net".into(),
        office: "sg".into(),
        roster_serial: 1,
        wall_ms: 1_700_000_000_000,
    });
    // Encoded as version 2 lays it out: without the clock.
    let bytes = old.encode();
    assert_eq!(bytes.len(), 1 + 2 + 1 + 8 + 1 + 2 + 8, "no wall_ms");
    let err = s
        .handle_frame(Instant::now(), &bytes, &Mem::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Version {
                theirs: 2,
                ours: 3,
                ..
            }
        ),
        "{err}"
    );
    let mut told = false;
    while let Some(f) = s.poll_transmit() {
        told |= matches!(
            Frame::decode(&f),
            Ok(Frame::Error {
                code: consentd_sync::frame::ErrorCode::Version,
                ..
            })
        );
    }
    assert!(told, "the peer is told why");
}

#[tokio::test]
async fn oversized_and_zero_frame_lengths_are_refused_without_allocating() {
    let net = net();
    let (us, de) = (bind(&net, 0), bind(&net, 1));
    let de_addr = addr(&de);
    let server = tokio::spawn(async move {
        let mut link = de.accept().await.unwrap().finish().await.unwrap();
        let first = link.reader.recv().await;
        let mut link2 = de.accept().await.unwrap().finish().await.unwrap();
        let second = link2.reader.recv().await;
        (first.map(|_| ()), second.map(|_| ()))
    });
    let mut a = us.connect_addr("de", de_addr).await.unwrap();
    a.writer.send_raw(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut b = us.connect_addr("de", de_addr).await.unwrap();
    b.writer.send_raw(&0u32.to_be_bytes()).await.unwrap();
    let (first, second) = server.await.unwrap();
    for r in [first, second] {
        assert!(
            matches!(r, Err(TransportError::BadFrameLength { ref office, .. }) if office == "us"),
            "{r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A whole session over QUIC: the driver loop a daemon runs, with an in-memory store.

#[derive(Default)]
struct Mem {
    envelopes: ItemSet,
    bytes: std::collections::HashMap<[u8; 32], Vec<u8>>,
    empty: ItemSet,
}

impl Local for Mem {
    fn offered(&self, _peer: &str, set: SetKind) -> Box<dyn SetView + '_> {
        match set {
            SetKind::Envelopes => Box::new(&self.envelopes),
            _ => Box::new(&self.empty),
        }
    }
    fn holds(&self, set: SetKind, item: &Item) -> bool {
        set == SetKind::Envelopes && self.envelopes.contains(item)
    }
    fn is_tombstoned(&self, _doc_id: &[u8; 16]) -> bool {
        false
    }
    fn verify_blob(&self, set: SetKind, _blob: &[u8]) -> Result<BlobInfo, String> {
        Err(format!("{} are not replicated in this test", set.name()))
    }
}

fn config(roster: &Arc<VerifiedRoster>, me: &str, peer: &str, dialer: bool) -> SessionConfig {
    SessionConfig {
        hello: Hello {
            version: PROTOCOL_VERSION,
            network: "test-net".into(),
            office: me.into(),
            roster_serial: 1,
            wall_ms: 1_700_000_000_000,
        },
        peer: peer.into(),
        dialer,
        roster: roster.clone(),
        limits: Limits::default(),
    }
}

/// Drives `session` over a link until both sides hold `target` envelopes and have completed
/// `rounds` sync rounds they initiated (counted in `done`), then finishes the stream and reads
/// until the peer finishes too.
async fn drive(
    mut session: Session,
    mut writer: FrameWriter,
    mut reader: FrameReader,
    mut local: Mem,
    (target, rounds): (usize, u64),
    done: tokio::sync::watch::Sender<usize>,
) -> (Mem, consentd_sync::session::Stats) {
    let mut rx = done.subscribe();
    let mut counted = false;
    let mut finished = false;
    loop {
        while let Some(f) = session.poll_transmit() {
            if !finished {
                writer.send(&f).await.unwrap();
            }
        }
        while let Some(a) = session.poll_action() {
            match a {
                Action::Store(b) => {
                    for v in &b.envelopes {
                        local.envelopes.insert(v.item());
                        local.bytes.insert(v.hash(), v.envelope().encode());
                    }
                    session.stored(Instant::now(), b.id, &local);
                }
                Action::Fetch { request, ids, .. } => {
                    let found = ids
                        .iter()
                        .filter_map(|id| local.bytes.get(id).map(|b| (*id, b.clone())))
                        .collect();
                    session.fetched(request, found);
                }
                Action::Reject { reason, .. } => panic!("honest item rejected: {reason}"),
                Action::Synced { .. } | Action::Connected { .. } => {}
                Action::FetchLeaves { .. } => panic!("this test follows no logs"),
            }
        }
        if session.poll_transmit_pending() {
            continue;
        }
        if !counted && local.envelopes.len() >= target && session.stats().rounds_completed >= rounds
        {
            counted = true;
            done.send_modify(|n| *n += 1);
        }
        if !finished && *rx.borrow_and_update() >= 2 {
            finished = true;
            writer.finish();
        }
        let deadline = session
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            f = reader.recv() => match f.unwrap() {
                Some(bytes) => session.handle_frame(Instant::now(), &bytes, &local).unwrap(),
                None => return (local, session.stats().clone()),
            },
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => session.handle_timeout(Instant::now(), &local),
        }
    }
}

fn envelopes(key: &SigningKey, n: usize) -> Vec<envelope::Envelope> {
    (0..n)
        .map(|i| {
            let mut doc =
                Automerge::new().with_actor(actor_for(&key.verifying_key(), [i as u8; 8]));
            doc.transact_with::<_, _, automerge::AutomergeError, _>(
                |_| CommitOptions::default().with_time(1_700_000_000_000 + i as i64),
                |tx| {
                    tx.put(ROOT, "n", i as u64)?;
                    Ok(())
                },
            )
            .unwrap();
            let mut doc_id = [0u8; 16];
            doc_id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            envelope::sign(doc_id, &doc.get_last_local_change().unwrap(), key)
        })
        .collect()
}

fn mem_with(roster: &VerifiedRoster, envs: &[envelope::Envelope]) -> Mem {
    let mut m = Mem::default();
    for e in envs {
        let v = envelope::verify(e.clone(), roster).unwrap();
        m.envelopes.insert(v.item());
        m.bytes.insert(v.hash(), e.encode());
    }
    m
}

#[tokio::test]
async fn two_sessions_reconcile_over_quic() {
    let net = net();
    let (us, de) = (bind(&net, 0), bind(&net, 1));
    let de_addr = addr(&de);
    let us_envs = envelopes(&net.offices[0].signing, 300);
    let de_envs = envelopes(&net.offices[1].signing, 200);
    // 100 in common.
    let us_mem = mem_with(&net.roster, &[&us_envs[..], &de_envs[..100]].concat());
    let de_mem = mem_with(&net.roster, &[&de_envs[..], &us_envs[..100]].concat());
    let roster = net.roster.clone();
    let (done, _) = tokio::sync::watch::channel(0usize);
    let done2 = done.clone();
    let server = tokio::spawn(async move {
        let link = de.accept().await.unwrap().finish().await.unwrap();
        let s = Session::new(config(&roster, "de", &link.peer, false));
        let (_c, w, r) = link.split();
        drive(s, w, r, de_mem, (500, 0), done2).await
    });
    let link = us.connect_addr("de", de_addr).await.unwrap();
    // A second round soon after the first: it finds nothing to exchange.
    let mut cfg = config(&net.roster, "us", "de", true);
    cfg.limits.resync_interval = Duration::from_millis(300);
    let s = Session::new(cfg);
    let (conn, w, r) = link.split();
    let t = Instant::now();
    let (us_done, us_stats) = drive(s, w, r, us_mem, (500, 2), done).await;
    let elapsed = t.elapsed();
    let (de_done, _) = server.await.unwrap();
    drop(conn);
    // us: 300 own + 100 of de's; de: 200 own + 100 of us's; the union is 500.
    assert_eq!(us_done.envelopes.len(), 500);
    assert_eq!(de_done.envelopes.len(), 500);
    assert!(us_done.envelopes.iter().eq(de_done.envelopes.iter()));
    // The dialer initiated the rounds; its counters describe the envelope reconciliations. The
    // last one found nothing; the last exchange is the first round's.
    let recon = us_stats.last_recon[SetKind::Envelopes.index()];
    assert!(recon.complete, "{recon:?}");
    assert_eq!((recon.have, recon.need), (0, 0), "{recon:?}");
    let exchange = us_stats.last_exchange[SetKind::Envelopes.index()];
    assert!(exchange.complete, "{exchange:?}");
    // us lacks de_envs[100..200]; de lacks us_envs[100..300].
    assert_eq!((exchange.have, exchange.need), (200, 100), "{exchange:?}");
    assert!(exchange.round_trips >= 1 && exchange.bytes_sent > 0 && exchange.bytes_received > 0);
    assert!(us_stats.rounds_completed >= 2);
    println!("sync round over QUIC, 200 envelopes missing each way: {elapsed:?}");
}
