//! A peer holding a real roster key (office sg, played by this test with sg's own keys) offers
//! de sg's log: leaves that do not reproduce sg's signed root are rejected and logged with the
//! sending office and never stored; honest leaves are stored with the checkpoint; a second
//! checkpoint of the same size with another root (sg signed two histories) is refused, logged
//! as equivocation and kept as evidence.
mod common;
use common::*;
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::logsync;
use consentd_sync::merkle::{self, Hash};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, Session, SessionConfig};
use consentd_sync::tlog::{self, Checkpoint, LogLeaf};
use consentd_sync::transport::Endpoint;
use consentd_sync::{keys, Hello, SetKind};
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

fn history(tag: u8, n: u64) -> Vec<LogLeaf> {
    (0..n)
        .map(|i| LogLeaf::envelope([tag; 16], [i as u8 + 1; 32]))
        .collect()
}

fn note(net: &Net, leaves: &[LogLeaf]) -> String {
    let key = keys::read_secret_key(&net.path().join("sg/signing.key")).unwrap();
    Checkpoint {
        origin: tlog::origin("local", "sg"),
        size: leaves.len() as u64,
        root: merkle::root(&leaves.iter().map(LogLeaf::merkle_hash).collect::<Vec<_>>()),
    }
    .sign(&key)
}

/// One step: push `checkpoint`, answer every LeavesWant from `served` (after `tamper`), until
/// `done()` or 15 s.
struct Step {
    checkpoint: String,
    served: Vec<LogLeaf>,
    tamper: bool,
}

async fn play_sg<'a>(net: &Net, steps: Vec<(Step, Box<dyn Fn() -> bool + 'a>)>) {
    let roster = peer::roster(net.path());
    let transport = keys::read_secret_key(&net.path().join("sg/transport.key")).unwrap();
    let endpoint = Endpoint::bind(
        roster.clone(),
        "sg",
        &transport,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let address = roster.office("de").unwrap().address;
    let link = endpoint.connect_addr("de", address).await.unwrap();
    let (_conn, mut writer, mut reader) = link.split();
    let mut session = Session::new(SessionConfig {
        hello: Hello {
            version: consentd_sync::frame::PROTOCOL_VERSION,
            network: roster.roster().network.clone(),
            office: "sg".into(),
            roster_serial: roster.roster().serial,
            wall_ms: common::peer::unix_ms_now(),
        },
        peer: "de".into(),
        dialer: false,
        roster: roster.clone(),
        limits: Limits::default(),
    });
    let local = Nothing(ItemSet::new());
    let mut connected = false;
    for (step, done) in steps {
        let mut pushed = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if connected && !pushed {
                session.push_local(
                    Instant::now(),
                    SetKind::Checkpoints,
                    step.checkpoint.clone().into_bytes(),
                );
                pushed = true;
            }
            while let Some(f) = session.poll_transmit() {
                writer.send(&f).await.unwrap();
            }
            while let Some(a) = session.poll_action() {
                match a {
                    Action::Connected { .. } => connected = true,
                    Action::FetchLeaves {
                        request,
                        size,
                        first,
                        count,
                        ..
                    } => {
                        let all: Vec<Hash> = step.served.iter().map(LogLeaf::merkle_hash).collect();
                        let end = (first + count as u64).min(step.served.len() as u64);
                        let mut leaves = step.served[first as usize..end as usize].to_vec();
                        let proof = logsync::consistency_proof(end, size, &mut |a, b| {
                            merkle::root(&all[a as usize..b as usize])
                        });
                        if step.tamper {
                            leaves[0].hash[0] ^= 1;
                        }
                        session.leaves_fetched(request, Some((leaves, proof)));
                    }
                    _ => {}
                }
            }
            if session.poll_transmit_pending() {
                continue;
            }
            if pushed && done() {
                break;
            }
            tokio::select! {
                f = reader.recv() => match f {
                    Ok(Some(bytes)) => { let _ = session.handle_frame(Instant::now(), &bytes, &local); }
                    _ => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => session.handle_timeout(Instant::now(), &local),
            }
        }
        assert!(
            done(),
            "a step of the hostile log did not happen within 15 s"
        );
    }
}

#[test]
fn forged_leaves_and_equivocation_are_refused_logged_and_never_stored() {
    let net = Net::init("de,sg");
    let de = net.start("de");
    let honest = history(1, 3);
    let other = history(2, 3);
    let sg_log = |net: &Net| ok(&net.socket("de"), &["status"])["logs"]["sg"].clone();

    let rejected = || de.log_text().matches("rejected replicated item").count();
    let stored = || sg_log(&net) == 3;
    let equivocated = || {
        ok(&net.socket("de"), &["status"])["equivocations"]
            .as_u64()
            .unwrap()
            >= 1
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(play_sg(
        &net,
        vec![
            (
                Step {
                    checkpoint: note(&net, &honest),
                    served: honest.clone(),
                    tamper: true,
                },
                Box::new(|| rejected() >= 1),
            ),
            (
                Step {
                    checkpoint: note(&net, &honest),
                    served: honest.clone(),
                    tamper: false,
                },
                Box::new(stored),
            ),
            (
                Step {
                    checkpoint: note(&net, &other),
                    served: other.clone(),
                    tamper: false,
                },
                Box::new(equivocated),
            ),
        ],
    ));
    drop(runtime);

    let log = de.log_text();
    // The forged leaves: rejected, naming the sending office, nothing stored until the honest
    // ones came.
    let line = log
        .lines()
        .find(|l| l.contains("rejected replicated item") && l.contains("do not reproduce"))
        .unwrap_or_else(|| panic!("no rejection of the forged leaves:\n{log}"));
    assert!(line.contains("sg"), "{line}");
    // The honest log is stored with its checkpoint; the second history is not.
    assert_eq!(sg_log(&net), 3);
    assert!(log.contains("EQUIVOCATION"), "{log}");
    let status = ok(&net.socket("de"), &["status"]);
    assert_eq!(status["equivocations"], 1, "{status}");
    // de goes on serving.
    ok(&net.socket("de"), &["status"]);
}
