//! A test peer: plays a roster office with that office's own keys over real QUIC, to offer a
//! daemon exactly what a misbehaving or out-of-date office would.
use consentd_sync::frame::Frame;
use consentd_sync::item::{Item, ItemSet, SetView};
use consentd_sync::roster::{OfficeEntry, Roster};
use consentd_sync::session::{Action, BlobInfo, Limits, Local, Session, SessionConfig};
use consentd_sync::transport::{Endpoint, Link, TransportError};
use consentd_sync::{keys, Hello, SetKind, SignedRoster, VerifiedRoster};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
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
    let items = envelopes
        .into_iter()
        .map(|e| (SetKind::Envelopes, e))
        .collect();
    push_items(dir, me, claim, to, items, done).await
}

/// As [`push_claiming`], with items of any set (tombstones, envelopes, keys).
pub async fn push_items(
    dir: &Path,
    me: &str,
    claim: &str,
    to: &str,
    items: Vec<(SetKind, Vec<u8>)>,
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
            wall_ms: unix_ms_now(),
        },
        peer: to.into(),
        dialer: false,
        roster: roster.clone(),
        limits: Limits::default(),
    });
    let local = Nothing(ItemSet::new());
    let mut pending = Some(items);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(f) = session.poll_transmit() {
            writer.send(&f).await.unwrap();
        }
        while let Some(a) = session.poll_action() {
            if let Action::Connected { .. } = a {
                for (set, e) in pending.take().unwrap_or_default() {
                    session.push_local(Instant::now(), set, e);
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

/// A current-thread-free runtime for a test body.
/// The wall clock in Unix milliseconds, as a daemon's Hello carries it.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A roster like the network's, but signed by a root of our own and with `claim`'s transport key
/// replaced by a fresh one: dialing with it presents a key the daemon's roster does not hold.
pub fn stranger_roster(dir: &Path, claim: &str) -> (Arc<VerifiedRoster>, SigningKey) {
    let real = roster(dir);
    let stranger = keys::generate();
    let root = keys::generate();
    let mut r = Roster::new(&real.roster().network).unwrap();
    for o in real.offices() {
        let transport = if o.id == claim {
            stranger.verifying_key()
        } else {
            o.transport_key
        };
        r.add_office(OfficeEntry {
            id: o.id.clone(),
            jurisdiction: o.jurisdiction.clone(),
            signing_key: hex::encode(o.signing_key.as_bytes()),
            transport_key: hex::encode(transport.as_bytes()),
            address: o.address.to_string(),
            retired: false,
        })
        .unwrap();
    }
    r.serial = real.roster().serial;
    let verified = r
        .sign(&root)
        .unwrap()
        .verify(&root.verifying_key())
        .unwrap();
    (Arc::new(verified), stranger)
}

/// An endpoint on loopback for office `me` of `roster`, with transport key `key`.
pub fn endpoint(roster: Arc<VerifiedRoster>, me: &str, key: &SigningKey) -> Endpoint {
    Endpoint::bind(roster, me, key, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// The network's endpoint for office `me` (its real roster transport key).
pub fn endpoint_as(dir: &Path, me: &str) -> Endpoint {
    let transport = keys::read_secret_key(&dir.join(me).join("transport.key")).unwrap();
    endpoint(roster(dir), me, &transport)
}

/// The roster address of office `to`.
pub fn address(dir: &Path, to: &str) -> SocketAddr {
    roster(dir).office(to).unwrap().address
}

/// An encoded Hello frame claiming office `office` of the network.
pub fn hello(dir: &Path, office: &str) -> Vec<u8> {
    hello_at(dir, office, unix_ms_now())
}

/// [`hello`] from a peer whose wall clock reads `wall_ms`.
pub fn hello_at(dir: &Path, office: &str, wall_ms: u64) -> Vec<u8> {
    let roster = roster(dir);
    Frame::Hello(Hello {
        version: consentd_sync::frame::PROTOCOL_VERSION,
        network: roster.roster().network.clone(),
        office: office.into(),
        roster_serial: roster.roster().serial,
        wall_ms,
    })
    .encode()
}

/// How the daemon ended a raw link.
#[derive(Debug)]
pub struct Ended {
    /// Frames it sent (decoded where they decode), in order.
    pub frames: Vec<String>,
    /// What ended the stream: `None` for a clean end, else the transport error.
    pub error: Option<String>,
    /// Whether the daemon ended it within the wait (false: still open when we gave up).
    pub closed: bool,
}

/// Writes `bytes` (raw: no framing is added) on `link` after an optional pause, then reads
/// until the daemon ends the link or `within` passes.
pub async fn send_raw(link: Link, bytes: &[u8], within: Duration) -> Ended {
    let (_conn, mut writer, mut reader) = link.split();
    let _ = writer.send_raw(bytes).await;
    read_until_closed(&mut reader, within).await
}

/// Reads frames until the peer ends the stream or `within` passes.
pub async fn read_until_closed(
    reader: &mut consentd_sync::transport::FrameReader,
    within: Duration,
) -> Ended {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, reader.recv()).await {
            Ok(Ok(Some(f))) => frames.push(match Frame::decode(&f) {
                Ok(Frame::Error { code, text }) => format!("Error({code:?}: {text})"),
                Ok(Frame::Hello(h)) => format!("Hello({})", h.office),
                Ok(_) => format!("frame kind {}", f[0]),
                Err(e) => format!("undecodable: {e}"),
            }),
            Ok(Ok(None)) => {
                return Ended {
                    frames,
                    error: None,
                    closed: true,
                }
            }
            Ok(Err(e)) => {
                return Ended {
                    frames,
                    error: Some(e.to_string()),
                    closed: true,
                }
            }
            Err(_) => {
                return Ended {
                    frames,
                    error: None,
                    closed: false,
                }
            }
        }
    }
}

/// Dials office `to` at its roster address from `endpoint`.
pub async fn dial(endpoint: &Endpoint, to: &str, addr: SocketAddr) -> Result<Link, TransportError> {
    endpoint.connect_addr(to, addr).await
}
