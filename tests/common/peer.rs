//! A test peer: plays a roster office with that office's own keys over real QUIC, to offer a
//! daemon exactly what a misbehaving or out-of-date office would.
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, Session, SessionConfig};
use consentd_sync::transport::Endpoint;
use consentd_sync::{keys, Hello, SetKind, SignedRoster, VerifiedRoster};
use std::path::Path;
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

pub fn roster(dir: &Path) -> Arc<VerifiedRoster> {
    let root = keys::read_public_key(dir.join("root.pub").to_str().unwrap()).unwrap();
    Arc::new(
        SignedRoster::load(&dir.join("roster.json"))
            .unwrap()
            .verify(&root)
            .unwrap(),
    )
}

/// Connects to office `to` as office `me` (with `me`'s keys from the network directory), pushes
/// each envelope, and drives the link until `done()` or 10 s.
pub async fn push_as(
    dir: &Path,
    me: &str,
    to: &str,
    envelopes: Vec<Vec<u8>>,
    done: impl Fn() -> bool,
) {
    push_claiming(dir, me, me, to, envelopes, done).await
}

/// As [`push_as`], but the session's Hello claims to be office `claim` while the transport
/// authenticates with `me`'s roster key.
pub async fn push_claiming(
    dir: &Path,
    me: &str,
    claim: &str,
    to: &str,
    envelopes: Vec<Vec<u8>>,
    done: impl Fn() -> bool,
) {
    let roster = roster(dir);
    let transport = keys::read_secret_key(&dir.join(me).join("transport.key")).unwrap();
    let endpoint = Endpoint::bind(
        roster.clone(),
        me,
        &transport,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let address = roster.office(to).unwrap().address;
    let link = endpoint.connect_addr(to, address).await.unwrap();
    let (_conn, mut writer, mut reader) = link.split();
    let mut session = Session::new(SessionConfig {
        hello: Hello {
            version: consentd_sync::frame::PROTOCOL_VERSION,
            network: roster.roster().network.clone(),
            office: claim.into(),
            roster_serial: roster.roster().serial,
        },
        peer: to.into(),
        dialer: false,
        roster: roster.clone(),
        limits: Limits::default(),
    });
    let local = Nothing(ItemSet::new());
    let mut pending = Some(envelopes);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(f) = session.poll_transmit() {
            writer.send(&f).await.unwrap();
        }
        while let Some(a) = session.poll_action() {
            if let Action::Connected { .. } = a {
                for e in pending.take().unwrap_or_default() {
                    session.push_local(Instant::now(), SetKind::Envelopes, e);
                }
            }
        }
        if pending.is_none() && done() {
            return;
        }
        tokio::select! {
            f = reader.recv() => match f {
                Ok(Some(bytes)) => { let _ = session.handle_frame(Instant::now(), &bytes, &local); }
                _ => return,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => session.handle_timeout(Instant::now(), &local),
        }
    }
}
