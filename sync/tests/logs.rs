//! Sessions follow other offices' logs (docs/sync-protocol.md, "Logs"), sans I/O: a scripted
//! peer pushes a checkpoint and answers the session's LeavesWants; leaves that do not reproduce
//! the signed root, an inconsistent checkpoint, equivocation and oversized batches are refused
//! and nothing of them reaches the host's store.
use std::sync::Arc;
use std::time::Instant;

use consentd_sync::frame::{Frame, Hello, SetKind, PROTOCOL_VERSION};
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::logsync;
use consentd_sync::merkle::{self, Frontier, Hash};
use consentd_sync::roster::{OfficeEntry, Roster, VerifiedRoster};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, LogBatch, Session, SessionConfig};
use consentd_sync::tlog::{self, Checkpoint, LogLeaf, LEAF_LEN};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

const NET: &str = "log-net";

struct Net {
    roster: Arc<VerifiedRoster>,
    /// us, de: signing keys.
    keys: Vec<SigningKey>,
}

fn net() -> Net {
    let root = SigningKey::from_bytes(&[1; 32]);
    let mut roster = Roster::new(NET).unwrap();
    let mut keys = Vec::new();
    for (i, id) in ["us", "de"].iter().enumerate() {
        let signing = SigningKey::from_bytes(&[10 + i as u8; 32]);
        let transport = SigningKey::from_bytes(&[20 + i as u8; 32]);
        roster
            .add_office(OfficeEntry {
                id: id.to_string(),
                jurisdiction: "DE".into(),
                signing_key: hex::encode(signing.verifying_key().as_bytes()),
                transport_key: hex::encode(transport.verifying_key().as_bytes()),
                address: format!("127.0.0.1:{}", 7000 + i),
                retired: false,
            })
            .unwrap();
        keys.push(signing);
    }
    let roster = roster
        .sign(&root)
        .unwrap()
        .verify(&root.verifying_key())
        .unwrap();
    Net {
        roster: Arc::new(roster),
        keys,
    }
}

fn leaf(history: u8, i: u64) -> LogLeaf {
    let mut doc = [history; 16];
    doc[8..].copy_from_slice(&i.to_be_bytes());
    LogLeaf::envelope(doc, [i as u8; 32])
}

fn log(history: u8, n: u64) -> Vec<LogLeaf> {
    (0..n).map(|i| leaf(history, i)).collect()
}

fn hashes(leaves: &[LogLeaf]) -> Vec<Hash> {
    leaves.iter().map(LogLeaf::merkle_hash).collect()
}

fn signed(net: &Net, signer: usize, leaves: &[LogLeaf]) -> String {
    Checkpoint {
        origin: tlog::origin(NET, "us"),
        size: leaves.len() as u64,
        root: merkle::root(&hashes(leaves)),
    }
    .sign(&net.keys[signer])
}

/// The receiving office (de): what it stored of us's log.
struct Host {
    roster: Arc<VerifiedRoster>,
    leaves: Vec<LogLeaf>,
    checkpoint: Option<String>,
    evidence: Vec<Vec<u8>>,
    empty: ItemSet,
}

impl Host {
    fn frontier(&self) -> Frontier {
        let mut f = Frontier::new();
        for h in hashes(&self.leaves) {
            f.push(h);
        }
        f
    }
}

impl Local for Host {
    fn offered(&self, _peer: &str, _set: SetKind) -> Box<dyn SetView + '_> {
        Box::new(&self.empty)
    }
    fn holds(&self, _set: SetKind, _item: &Item) -> bool {
        false
    }
    fn is_tombstoned(&self, _doc: &[u8; 16]) -> bool {
        false
    }
    fn verify_blob(&self, _set: SetKind, blob: &[u8]) -> Result<BlobInfo, String> {
        let v = tlog::verify(std::str::from_utf8(blob).unwrap(), &self.roster)
            .map_err(|e| e.to_string())?;
        Ok(BlobInfo {
            item: Item::new(v.checkpoint.size, Sha256::digest(blob).into()),
            office: v.office,
            covers_doc: None,
        })
    }
    fn log_frontier(&self, office: &str) -> Option<Frontier> {
        (office == "us").then(|| self.frontier())
    }
}

struct Victim {
    host: Host,
    sess: Session,
    now: Instant,
    rejects: Vec<String>,
    /// Bytes of Leaves frames received.
    leaves_bytes: usize,
}

impl Victim {
    fn new(net: &Net, held: Vec<LogLeaf>, want_bytes_max: u32) -> Victim {
        let sess = Session::new(SessionConfig {
            hello: Hello {
                version: PROTOCOL_VERSION,
                network: NET.into(),
                office: "de".into(),
                roster_serial: 0,
                wall_ms: 1_700_000_000_000,
            },
            peer: "us".into(),
            dialer: false,
            roster: net.roster.clone(),
            limits: Limits {
                want_bytes_max,
                ..Limits::default()
            },
        });
        let mut v = Victim {
            host: Host {
                roster: net.roster.clone(),
                leaves: held,
                checkpoint: None,
                evidence: Vec::new(),
                empty: ItemSet::new(),
            },
            sess,
            now: Instant::now(),
            rejects: Vec::new(),
            leaves_bytes: 0,
        };
        let hello = Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            network: NET.into(),
            office: "us".into(),
            roster_serial: 0,
            wall_ms: 1_700_000_000_000,
        });
        v.feed(hello).unwrap();
        v
    }

    /// Feeds a frame, stores what the session hands over, returns the frames it sends.
    fn feed(&mut self, f: Frame) -> Result<Vec<Frame>, String> {
        let bytes = f.encode();
        if matches!(f, Frame::Leaves { .. }) {
            self.leaves_bytes += bytes.len();
        }
        let r = self.sess.handle_frame(self.now, &bytes, &self.host);
        let out = self.settle();
        r.map_err(|e| e.to_string()).map(|()| out)
    }

    fn settle(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let mut progress = false;
            while let Some(a) = self.sess.poll_action() {
                progress = true;
                match a {
                    Action::Store(b) => {
                        match b.log {
                            Some(LogBatch::Append {
                                office,
                                first,
                                leaves,
                                checkpoint,
                            }) => {
                                assert_eq!(office, "us");
                                assert_eq!(first, self.host.leaves.len() as u64, "in order");
                                self.host.leaves.extend(leaves);
                                if let Some(c) = checkpoint {
                                    self.host.checkpoint = Some(String::from_utf8(c).unwrap());
                                }
                            }
                            Some(LogBatch::Equivocation { note, .. }) => {
                                self.host.evidence.push(note)
                            }
                            None => panic!("a checkpoint of a followed log stored as a blob"),
                        }
                        self.sess.stored(self.now, b.id, &self.host);
                    }
                    Action::Reject { reason, .. } => self.rejects.push(reason),
                    _ => {}
                }
            }
            while let Some(f) = self.sess.poll_transmit() {
                progress = true;
                out.push(Frame::decode(&f).unwrap());
            }
            if !progress {
                return out;
            }
        }
    }

    fn push_checkpoint(&mut self, note: &str) -> Vec<Frame> {
        self.feed(Frame::Push {
            set: SetKind::Checkpoints,
            seq: 1,
            blob: note.as_bytes().to_vec(),
        })
        .unwrap()
    }
}

/// Answers LeavesWants from `log` (the peer's copy of us's log) until the session asks no more;
/// `tamper` may change each answer. Returns the (first, count) asked for.
fn serve(
    v: &mut Victim,
    mut frames: Vec<Frame>,
    log: &[LogLeaf],
    mut tamper: impl FnMut(&mut Vec<LogLeaf>, &mut Vec<Hash>),
) -> Result<Vec<(u64, u32)>, String> {
    let all = hashes(log);
    let mut asked = Vec::new();
    loop {
        let Some(Frame::LeavesWant {
            request,
            office,
            size,
            first,
            count,
        }) = frames
            .iter()
            .find(|f| matches!(f, Frame::LeavesWant { .. }))
            .cloned()
        else {
            return Ok(asked);
        };
        frames.retain(|f| !matches!(f, Frame::LeavesWant { request: r, .. } if *r == request));
        assert_eq!(office, "us");
        asked.push((first, count));
        let end = first + count as u64;
        let mut leaves = log[first as usize..end as usize].to_vec();
        let mut proof = logsync::consistency_proof(end, size, &mut |a, b| {
            merkle::root(&all[a as usize..b as usize])
        });
        tamper(&mut leaves, &mut proof);
        frames.extend(v.feed(Frame::Leaves {
            request,
            first,
            leaves,
            proof,
        })?);
    }
}

#[test]
fn leaves_arrive_in_bounded_batches_and_are_stored_only_when_proven() {
    let net = net();
    let theirs = log(1, 10);
    let mut v = Victim::new(&net, theirs[..3].to_vec(), 4 * LEAF_LEN as u32);
    let note = signed(&net, 0, &theirs);
    let frames = v.push_checkpoint(&note);
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Ack { .. })),
        "{frames:?}"
    );
    let asked = serve(&mut v, frames, &theirs, |_, _| {}).unwrap();
    assert_eq!(
        asked,
        [(3, 4), (7, 3)],
        "batches bounded by the Want budget"
    );
    assert!(v.rejects.is_empty(), "{:?}", v.rejects);
    assert_eq!(v.host.leaves, theirs);
    assert_eq!(v.host.checkpoint.as_deref(), Some(note.as_str()));
    assert!(v.sess.is_idle());
    println!(
        "{} bytes of Leaves frames for 7 leaves ({:.1} per leaf)",
        v.leaves_bytes,
        v.leaves_bytes as f64 / 7.0
    );

    // Wire cost at the real batch size: 16,384 leaves in one frame.
    let big = log(2, 20_000);
    let mut v = Victim::new(&net, Vec::new(), Limits::default().want_bytes_max);
    let frames = v.push_checkpoint(&signed(&net, 0, &big));
    let asked = serve(&mut v, frames, &big, |_, _| {}).unwrap();
    assert_eq!(asked, [(0, 16_384), (16_384, 3_616)]);
    assert_eq!(v.host.leaves.len(), 20_000);
    println!(
        "{} bytes of Leaves frames for 20,000 leaves ({:.2} per leaf)",
        v.leaves_bytes,
        v.leaves_bytes as f64 / 20_000.0
    );
    assert!(v.leaves_bytes < 20_000 * (LEAF_LEN + 1));
}

#[test]
fn leaves_that_do_not_reproduce_the_signed_root_are_rejected_and_not_stored() {
    let net = net();
    let theirs = log(1, 10);
    for (what, tamper) in [
        (
            "a changed leaf",
            Box::new(|l: &mut Vec<LogLeaf>, _: &mut Vec<Hash>| l[0].hash[0] ^= 1)
                as Box<dyn FnMut(&mut Vec<LogLeaf>, &mut Vec<Hash>)>,
        ),
        (
            "two leaves swapped",
            Box::new(|l: &mut Vec<LogLeaf>, _: &mut Vec<Hash>| l.swap(0, 1)),
        ),
        (
            "a forged proof",
            Box::new(|_: &mut Vec<LogLeaf>, p: &mut Vec<Hash>| p[0][0] ^= 1),
        ),
        (
            "a short answer",
            Box::new(|l: &mut Vec<LogLeaf>, _: &mut Vec<Hash>| {
                l.pop();
            }),
        ),
    ] {
        let mut v = Victim::new(&net, theirs[..2].to_vec(), 4 * LEAF_LEN as u32);
        let frames = v.push_checkpoint(&signed(&net, 0, &theirs));
        serve(&mut v, frames, &theirs, tamper).unwrap();
        assert_eq!(v.host.leaves, theirs[..2], "{what}: nothing stored");
        assert!(v.host.checkpoint.is_none(), "{what}");
        assert!(
            v.rejects
                .iter()
                .any(|r| r.contains("do not reproduce the signed root")),
            "{what}: {:?}",
            v.rejects
        );
        assert!(
            v.sess.is_idle(),
            "{what}: the follow is dropped until the next round"
        );
    }
}

#[test]
fn a_checkpoint_inconsistent_with_the_leaves_held_is_rejected() {
    let net = net();
    // We hold 4 leaves of one history; us signed 8 leaves of another (the peer serves those).
    let ours = log(1, 4);
    let mut other = log(1, 8);
    other[1] = leaf(9, 1);
    let mut v = Victim::new(&net, ours.clone(), 1 << 20);
    let frames = v.push_checkpoint(&signed(&net, 0, &other));
    serve(&mut v, frames, &other, |_, _| {}).unwrap();
    assert_eq!(v.host.leaves, ours, "nothing of the other history stored");
    assert!(
        v.rejects.iter().any(|r| r.contains("do not reproduce")),
        "{:?}",
        v.rejects
    );

    // The same size, another root: us signed two histories. Evidence, and nothing stored.
    let mut v = Victim::new(&net, ours.clone(), 1 << 20);
    let forked = signed(&net, 0, &other[..4]);
    let frames = v.push_checkpoint(&forked);
    assert!(!frames.iter().any(|f| matches!(f, Frame::LeavesWant { .. })));
    assert!(
        v.rejects.iter().any(|r| r.contains("EQUIVOCATION")),
        "{:?}",
        v.rejects
    );
    assert_eq!(v.host.evidence, [forked.into_bytes()]);
    assert!(v.host.checkpoint.is_none());

    // A checkpoint of us's log signed by de's key is refused before any leaf is asked for.
    let mut v = Victim::new(&net, Vec::new(), 1 << 20);
    let frames = v.push_checkpoint(&signed(&net, 1, &other));
    assert!(!frames.iter().any(|f| matches!(f, Frame::LeavesWant { .. })));
    assert_eq!(v.rejects.len(), 1, "{:?}", v.rejects);

    // An older checkpoint than the leaves held asks for nothing and stores nothing.
    let mut v = Victim::new(&net, other.clone(), 1 << 20);
    let frames = v.push_checkpoint(&signed(&net, 0, &other[..5]));
    assert!(!frames.iter().any(|f| matches!(f, Frame::LeavesWant { .. })));
    assert!(v.rejects.is_empty() && v.host.checkpoint.is_none());
    assert_eq!(v.sess.stats().checkpoints_stale, 1);
}

#[test]
fn more_leaves_than_asked_for_end_the_session() {
    let net = net();
    let theirs = log(1, 10);
    let mut v = Victim::new(&net, Vec::new(), 4 * LEAF_LEN as u32);
    let frames = v.push_checkpoint(&signed(&net, 0, &theirs));
    let Some(Frame::LeavesWant { request, .. }) = frames
        .iter()
        .find(|f| matches!(f, Frame::LeavesWant { .. }))
        .cloned()
    else {
        panic!("no LeavesWant: {frames:?}");
    };
    let err = v
        .feed(Frame::Leaves {
            request,
            first: 0,
            leaves: theirs.clone(),
            proof: Vec::new(),
        })
        .unwrap_err();
    assert!(err.contains("other leaves than asked for"), "{err}");
    assert!(v.host.leaves.is_empty());
    assert!(v.sess.is_closed());
}
