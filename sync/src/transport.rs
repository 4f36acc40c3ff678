//! QUIC transport: quinn 0.11 over rustls 0.23 (ring only), TLS 1.3, ALPN `consentd/1`, both
//! sides authenticated by the offices' roster *transport* keys as RFC 7250 raw public keys.
//!
//! # Why raw public keys
//!
//! The roster already pins one ed25519 transport key per office; a certificate would only wrap
//! that key in X.509 fields (names, validity, extensions) that we would then have to parse from
//! strangers and ignore. With raw public keys the peer presents exactly a SubjectPublicKeyInfo,
//! which we compare byte for byte with the roster, during the handshake:
//!
//! - **client side** (dialing office X): the server must present X's roster transport key; any
//!   other key, even another office's, fails the handshake.
//! - **server side**: the client must present *some* office's roster transport key (not ours);
//!   the office it belongs to is the peer's identity. A key outside the roster fails the
//!   handshake. The office the client then *claims* in its Hello must be that office, or the
//!   session refuses it ([`crate::session::SessionError::Identity`]).
//!
//! Refusals surface as [`TransportError::Refused`] on the refusing side, naming the address and
//! the key (never anything else), for the host to log. Exactly one crypto provider is used, ring,
//! passed explicitly to every config (no process-wide default is installed or needed).
//!
//! # Restarts
//!
//! An office killed and restarted comes back on the same address, but its peers' connections to
//! the old process stay open on their side until [`IDLE_TIMEOUT`] (nothing closed them), and a
//! dialer whose link to it is still "up" does not dial again: its links stayed dead for 30 s
//! after every restart (measured, tests/partition_heals.rs). So the endpoint's stateless-reset
//! key and connection-id key are derived from the office's transport secret key
//! ([`endpoint_config`]) instead of drawn at random: the restarted process recognises the old
//! connections' ids as its own and answers their next packet (a keep-alive, every
//! [`KEEP_ALIVE_INTERVAL`]) with a stateless reset (RFC 9000, 10.3) that the peer accepts, so the
//! peer drops the dead link within seconds and dials again.
//!
//! # Framing
//!
//! One bidirectional stream per connection, opened by the dialer. Each frame travels as a u32
//! big-endian length followed by the frame ([`crate::frame`]); a length of 0 or above
//! [`FRAME_BYTES_MAX`] is refused before anything is allocated.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use zeroize::Zeroizing;

use crate::frame::FRAME_BYTES_MAX;
use crate::roster::VerifiedRoster;

/// The ALPN protocol id; a peer that does not offer it fails the handshake.
pub const ALPN: &[u8] = b"consentd/1";
/// Bytes of the length prefix before each frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// A connection with no traffic for this long is closed (keep-alives run far more often).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval, well inside [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// The peer's first frame (its Hello, a few hundred bytes at most) must arrive after at most
/// this much waiting once the link is up, and a listener waits no longer than this for the dialer to open its stream.
/// QUIC keep-alives answer for an idle peer, so without it a peer that authenticates and then
/// says nothing would hold its link (and a task) forever.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a frame's first byte is here, the frame must be complete after at most this much time
/// spent waiting on the peer, plus one second per [`FRAME_MIN_BYTES_PER_SEC`] of its announced
/// length (a full 1 MiB frame gets 69 s; a 100-byte frame 5 s). A slow sender that trickles
/// bytes or never finishes a frame is cut off, and a part-frame is held only for that long.
/// Time our own host spends not reading (busy storing, or holding back while its frames to the
/// peer pile up) does not count.
pub const FRAME_TIMEOUT_BASE: Duration = Duration::from_secs(5);
/// The slowest transfer rate a frame in progress may have (16 KiB/s = 128 kbit/s).
pub const FRAME_MIN_BYTES_PER_SEC: u64 = 16 * 1024;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes: 0 unused bits ‖ key) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410): version 0, the algorithm, and an
/// OCTET STRING wrapping the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("office {0} is not in the roster")]
    UnknownOffice(String),

    #[error("office {0} is retired in the roster (roster serial {1}): a retired office is no longer a peer")]
    Retired(String, u64),

    #[error(
        "this office's transport key does not match the roster's transport key for office {0}"
    )]
    OwnKeyMismatch(String),

    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start a connection to office {office} at {addr}: {source}")]
    Connect {
        office: String,
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },

    /// The handshake failed because one side refused the other's key (or ALPN). On the side that
    /// refused, `reason` names the key and why; this is the value to log.
    #[error("connection with {addr} refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },

    #[error("connection with {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },

    #[error("peer office {office} sent a frame of {len} bytes; frames are 1 to {max} bytes")]
    BadFrameLength {
        office: String,
        len: usize,
        max: usize,
    },

    #[error("stream with office {office} failed: {reason}")]
    Stream { office: String, reason: String },

    #[error("the endpoint is closed")]
    EndpointClosed,
}

/// Why a peer's key was refused, carried through rustls as the handshake error.
#[derive(Debug)]
struct KeyRefusal(String);

impl fmt::Display for KeyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyRefusal {}

fn refuse(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(KeyRefusal(reason)),
    )))
}

/// The ed25519 key inside a raw-public-key "certificate", if it is exactly an ed25519 SPKI.
fn spki_key(der: &[u8]) -> Option<[u8; 32]> {
    if der.len() != ED25519_SPKI_PREFIX.len() + 32 || der[..12] != ED25519_SPKI_PREFIX {
        return None;
    }
    der[12..].try_into().ok()
}

fn spki_der(key: &[u8; 32]) -> Vec<u8> {
    let mut v = ED25519_SPKI_PREFIX.to_vec();
    v.extend_from_slice(key);
    v
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    key: &SigningKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TransportError> {
    let mut pkcs8 = Zeroizing::new(ED25519_PKCS8_PREFIX.to_vec());
    pkcs8.extend_from_slice(key.as_bytes());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TransportError::Tls(format!("transport key: {e}")))?;
    let spki = spki_der(key.verifying_key().as_bytes());
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        signer,
    )))
}

fn verify_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Client side: the server must present exactly `expected` (the dialed office's roster key).
#[derive(Debug)]
struct PinnedServer {
    office: String,
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(key) = spki_key(end_entity) else {
            return Err(refuse(format!(
                "office {} presented something other than an ed25519 raw public key",
                self.office
            )));
        };
        if !intermediates.is_empty() || key != self.expected {
            return Err(refuse(format!(
                "office {} presented transport key {}, but the roster's is {}",
                self.office,
                hex::encode(key),
                hex::encode(self.expected)
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server side: the client must present some other office's roster transport key.
#[derive(Debug)]
struct RosterClients {
    roster: Arc<VerifiedRoster>,
    own: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for RosterClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(key) = spki_key(end_entity) else {
            return Err(refuse(
                "client presented something other than an ed25519 raw public key".into(),
            ));
        };
        if !intermediates.is_empty() {
            return Err(refuse("client sent a certificate chain".into()));
        }
        if key == self.own {
            return Err(refuse(format!(
                "client presented this office's own transport key {}",
                hex::encode(key)
            )));
        }
        match self
            .roster
            .offices()
            .find(|o| o.transport_key.as_bytes() == &key)
        {
            None => {
                return Err(refuse(format!(
                    "client transport key {} is not in the roster",
                    hex::encode(key)
                )))
            }
            Some(o) if o.retired => {
                return Err(refuse(format!(
                    "client transport key {} is office {}'s, which is retired in the roster (serial {}): a retired office is no longer a peer",
                    hex::encode(key),
                    o.id,
                    self.roster.roster().serial
                )))
            }
            Some(_) => {}
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The office, not retired, whose roster transport key is `key`.
pub fn office_by_transport_key(roster: &VerifiedRoster, key: &[u8; 32]) -> Option<String> {
    roster
        .offices()
        .find(|o| !o.retired && o.transport_key.as_bytes() == key)
        .map(|o| o.id.clone())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    // One bidirectional stream per connection; a peer may open no more.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// The endpoint's keys, derived from the office's transport secret key (see "Restarts" above):
/// the HMAC key of its stateless-reset tokens, and the key its connection ids are hashed with
/// (a packet whose id does not hash right gets no reset). Domain-separated hashes of the secret,
/// so neither reveals it nor the other; whoever could forge the reset tokens holds the transport
/// key already.
pub fn endpoint_config(transport_key: &SigningKey) -> quinn::EndpointConfig {
    use sha2::{Digest, Sha256};
    let secret = Zeroizing::new(transport_key.to_bytes());
    let derive = |label: &[u8]| -> Zeroizing<[u8; 32]> {
        Zeroizing::new(
            Sha256::new()
                .chain_update(label)
                .chain_update(secret.as_slice())
                .finalize()
                .into(),
        )
    };
    let reset = derive(b"consentd/quic/stateless-reset-key/v1");
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &*reset,
    )));
    let cid = derive(b"consentd/quic/connection-id-key/v1");
    let cid_key = u64::from_le_bytes(cid[..8].try_into().expect("8 of 32 bytes"));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// An error and its sources, "connection lost: reset by peer": quinn's stream errors name only
/// their kind, and why a connection was lost (a stateless reset, an idle timeout, the peer
/// closing) is what an operator reading the log needs.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An office's QUIC endpoint: listens for peers and dials them.
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    roster: Arc<VerifiedRoster>,
    office: String,
    certified: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl Endpoint {
    /// Binds `listen` as office `office`, whose transport secret key is `transport_key` (it must
    /// match the roster). Must be called within a tokio runtime.
    pub fn bind(
        roster: Arc<VerifiedRoster>,
        office: &str,
        transport_key: &SigningKey,
        listen: SocketAddr,
    ) -> Result<Endpoint, TransportError> {
        let entry = roster
            .office(office)
            .ok_or_else(|| TransportError::UnknownOffice(office.to_string()))?;
        if entry.transport_key != transport_key.verifying_key() {
            return Err(TransportError::OwnKeyMismatch(office.to_string()));
        }
        if entry.retired {
            return Err(TransportError::Retired(
                office.to_string(),
                roster.roster().serial,
            ));
        }
        let provider = provider();
        let certified = certified_key(transport_key, &provider)?;
        let verifier = Arc::new(RosterClients {
            roster: roster.clone(),
            own: transport_key.verifying_key().to_bytes(),
            provider: provider.clone(),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified.clone()),
            ));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport_config());
        let bind = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(transport_key),
            Some(server),
            socket,
            runtime,
        )
        .map_err(bind)?;
        Ok(Endpoint {
            endpoint,
            roster,
            office: office.to_string(),
            certified,
            provider,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Dials office `peer` at its roster address.
    pub async fn connect(&self, peer: &str) -> Result<Link, TransportError> {
        let addr = self
            .roster
            .office(peer)
            .ok_or_else(|| TransportError::UnknownOffice(peer.to_string()))?
            .address;
        self.connect_addr(peer, addr).await
    }

    /// Dials office `peer` at `addr` (tests, or an address override); the server must still
    /// present `peer`'s roster transport key.
    pub async fn connect_addr(&self, peer: &str, addr: SocketAddr) -> Result<Link, TransportError> {
        let entry = self
            .roster
            .office(peer)
            .ok_or_else(|| TransportError::UnknownOffice(peer.to_string()))?;
        if entry.retired {
            return Err(TransportError::Retired(
                peer.to_string(),
                self.roster.roster().serial,
            ));
        }
        let expected = entry.transport_key.to_bytes();
        let verifier = Arc::new(PinnedServer {
            office: peer.to_string(),
            expected,
            provider: self.provider.clone(),
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(
                rustls::client::AlwaysResolvesClientRawPublicKeys::new(self.certified.clone()),
            ));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(transport_config());
        // Office ids are valid DNS labels; the server ignores the name (keys, not names, count).
        let connecting = self
            .endpoint
            .connect_with(client, addr, peer)
            .map_err(|source| TransportError::Connect {
                office: peer.to_string(),
                addr,
                source,
            })?;
        let connection = connecting.await.map_err(|e| handshake_error(addr, e))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|source| TransportError::Connection { addr, source })?;
        Ok(Link {
            peer: peer.to_string(),
            connection,
            writer: FrameWriter {
                peer: peer.to_string(),
                send,
            },
            reader: FrameReader::new(peer.to_string(), recv),
        })
    }

    /// Waits for the next incoming connection attempt. `None` once the endpoint is closed.
    ///
    /// Authenticating it ([`Accepting::finish`]) takes a handshake round trip or, for a peer
    /// that stalls, up to [`IDLE_TIMEOUT`]: spawn it, so one slow peer does not hold up others.
    pub async fn accept(&self) -> Option<Accepting> {
        let incoming = self.endpoint.accept().await?;
        Some(Accepting {
            addr: incoming.remote_address(),
            incoming,
            roster: self.roster.clone(),
        })
    }

    /// This office's id.
    pub fn office(&self) -> &str {
        &self.office
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Waits until every connection is closed cleanly.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// An incoming connection attempt, not yet authenticated.
pub struct Accepting {
    incoming: quinn::Incoming,
    addr: SocketAddr,
    roster: Arc<VerifiedRoster>,
}

impl Accepting {
    pub fn remote_address(&self) -> SocketAddr {
        self.addr
    }

    /// Turns the attempt away at once (a QUIC CONNECTION_REFUSED, no handshake, no state kept):
    /// for a listener already authenticating as many peers as it allows.
    pub fn refuse(self) {
        self.incoming.refuse();
    }

    /// Completes the handshake (within [`HELLO_TIMEOUT`]). `Err` is a refused or failed attempt,
    /// to log.
    pub async fn finish(self) -> Result<Link, TransportError> {
        let addr = self.addr;
        let connection = match tokio::time::timeout(HELLO_TIMEOUT, self.incoming).await {
            Ok(r) => r.map_err(|e| handshake_error(addr, e))?,
            Err(_) => {
                return Err(TransportError::Refused {
                    addr,
                    reason: format!(
                        "handshake not completed within {} s",
                        HELLO_TIMEOUT.as_secs()
                    ),
                })
            }
        };
        let key = connection
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(|c| spki_key(c)));
        // The verifier already required a roster key; look up whose it is.
        let Some(peer) = key.and_then(|k| office_by_transport_key(&self.roster, &k)) else {
            connection.close(1u32.into(), b"unknown key");
            return Err(TransportError::Refused {
                addr,
                reason: "peer identity missing after the handshake".into(),
            });
        };
        // The dialer opens the stream and sends its Hello first, which makes it visible here.
        let (send, recv) =
            match tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await {
                Ok(r) => r,
                Err(_) => {
                    connection.close(2u32.into(), b"no stream opened");
                    return Err(TransportError::Stream {
                        office: peer,
                        reason: format!(
                            "no stream opened within {} s of the handshake",
                            HELLO_TIMEOUT.as_secs()
                        ),
                    });
                }
            }
            .map_err(|source| TransportError::Connection { addr, source })?;
        Ok(Link {
            peer: peer.clone(),
            connection,
            writer: FrameWriter {
                peer: peer.clone(),
                send,
            },
            reader: FrameReader::new(peer, recv),
        })
    }
}

fn handshake_error(addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    match e {
        // A TLS failure (ours: the reason is our verifier's; theirs: an alert code).
        quinn::ConnectionError::TransportError(t) => TransportError::Refused {
            addr,
            reason: t.reason,
        },
        quinn::ConnectionError::ConnectionClosed(c) => TransportError::Refused {
            addr,
            reason: format!("peer closed the handshake: {}", c.error_code),
        },
        source => TransportError::Connection { addr, source },
    }
}

/// An authenticated connection to one peer office, with its frame stream.
pub struct Link {
    /// The peer's office id, from its roster transport key.
    pub peer: String,
    pub connection: quinn::Connection,
    pub writer: FrameWriter,
    pub reader: FrameReader,
}

impl Link {
    pub fn split(self) -> (quinn::Connection, FrameWriter, FrameReader) {
        (self.connection, self.writer, self.reader)
    }
}

/// Writes length-prefixed frames. [`FrameWriter::send`] is not cancel-safe (a cancelled send may
/// leave half a frame on the stream): await it to completion, e.g. in a dedicated writer task.
pub struct FrameWriter {
    peer: String,
    send: quinn::SendStream,
}

impl FrameWriter {
    /// Sends one encoded frame (from `Session::poll_transmit`).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        debug_assert!(
            !frame.is_empty() && frame.len() <= FRAME_BYTES_MAX,
            "sending a frame of {} bytes",
            frame.len()
        );
        let len = (frame.len() as u32).to_be_bytes();
        let stream_err = |e: quinn::WriteError| TransportError::Stream {
            office: self.peer.clone(),
            reason: with_causes(&e),
        };
        self.send.write_all(&len).await.map_err(stream_err)?;
        self.send.write_all(frame).await.map_err(stream_err)
    }

    /// Writes raw bytes, bypassing framing: only for tests of a peer that breaks the framing.
    #[doc(hidden)]
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| TransportError::Stream {
                office: self.peer.clone(),
                reason: with_causes(&e),
            })
    }

    /// Ends our side of the stream after the frames sent so far.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Ends our side of the stream and waits (at most `within`) until the peer has received
    /// everything sent, so a last Error frame reaches it before the connection is closed.
    pub async fn finish_and_wait(&mut self, within: Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(within, self.send.stopped()).await;
    }
}

/// Reads length-prefixed frames.
pub struct FrameReader {
    peer: String,
    recv: quinn::RecvStream,
    /// Bytes of the frame being assembled (length prefix included); never more than
    /// `LENGTH_PREFIX_BYTES + FRAME_BYTES_MAX`, because a length is checked as soon as it is here.
    buf: Vec<u8>,
    /// Whether a frame has been completed yet (the first is the peer's Hello).
    had_frame: bool,
    /// Time spent waiting on the peer for the frame in progress (or, before the first frame, for
    /// it to begin). Only time inside [`FrameReader::recv`] counts: while our host is busy and
    /// not reading, a peer held back by flow control is not slow.
    waited: Duration,
}

/// Adds the time until it is dropped (also on cancellation) to a waiting total.
struct Waiting<'a> {
    since: tokio::time::Instant,
    total: &'a mut Duration,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        *self.total += self.since.elapsed();
    }
}

impl FrameReader {
    fn new(peer: String, recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            peer,
            recv,
            buf: Vec::new(),
            had_frame: false,
            waited: Duration::ZERO,
        }
    }

    /// How long we may wait on the peer for what we await now, if there is a limit: the first
    /// frame within [`HELLO_TIMEOUT`]; a frame once begun within [`FRAME_TIMEOUT_BASE`] plus its
    /// length at [`FRAME_MIN_BYTES_PER_SEC`]. Between frames after the first, a peer may be idle.
    fn budget(&self) -> Option<Duration> {
        let frame = (!self.buf.is_empty()).then(|| {
            let len = self.announced().unwrap_or(0) as u64;
            FRAME_TIMEOUT_BASE + Duration::from_secs(len / FRAME_MIN_BYTES_PER_SEC)
        });
        let first = (!self.had_frame).then_some(HELLO_TIMEOUT);
        match (first, frame) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The announced length of the frame in progress, once its prefix is here.
    fn announced(&self) -> Option<usize> {
        let prefix: [u8; LENGTH_PREFIX_BYTES] =
            self.buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
        Some(u32::from_be_bytes(prefix) as usize)
    }

    /// Bytes still needed to complete the length prefix, or the frame.
    fn wanted(&self) -> Result<usize, TransportError> {
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(LENGTH_PREFIX_BYTES - self.buf.len());
        }
        let len = u32::from_be_bytes(
            self.buf[..LENGTH_PREFIX_BYTES]
                .try_into()
                .expect("prefix is 4 bytes"),
        ) as usize;
        if len == 0 || len > FRAME_BYTES_MAX {
            return Err(TransportError::BadFrameLength {
                office: self.peer.clone(),
                len,
                max: FRAME_BYTES_MAX,
            });
        }
        Ok(LENGTH_PREFIX_BYTES + len - self.buf.len())
    }

    /// The next frame's bytes (for `Session::handle_frame`), or `None` when the peer finished
    /// the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes read before a cancellation stay buffered for the next call, so this
    /// may race other branches in `tokio::select!`.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        loop {
            let wanted = self.wanted()?;
            if wanted == 0 {
                let frame = self.buf[LENGTH_PREFIX_BYTES..].to_vec();
                // Give the part-frame's memory back: a frame is up to 1 MiB.
                self.buf = Vec::new();
                self.had_frame = true;
                self.waited = Duration::ZERO;
                return Ok(Some(frame));
            }
            // `read_chunk` is cancel-safe (and so is a timeout around it); asking for exactly
            // what is missing keeps `buf` within one frame.
            let read = match self.budget() {
                Some(budget) => {
                    let left = budget.saturating_sub(self.waited);
                    let _waiting = Waiting {
                        since: tokio::time::Instant::now(),
                        total: &mut self.waited,
                    };
                    tokio::time::timeout(left, self.recv.read_chunk(wanted, true)).await
                }
                None => Ok(self.recv.read_chunk(wanted, true).await),
            };
            let read = match read {
                Ok(r) => r,
                Err(_) => {
                    let reason = if !self.had_frame && self.buf.is_empty() {
                        format!("sent no hello within {} s", HELLO_TIMEOUT.as_secs())
                    } else {
                        format!(
                            "slow sender: {} bytes of a frame{} arrived in time",
                            self.buf.len().saturating_sub(LENGTH_PREFIX_BYTES),
                            self.announced()
                                .map(|n| format!(" of {n} bytes"))
                                .unwrap_or_default()
                        )
                    };
                    self.buf = Vec::new();
                    return Err(TransportError::Stream {
                        office: self.peer.clone(),
                        reason,
                    });
                }
            };
            match read {
                Ok(Some(chunk)) => {
                    if self.buf.is_empty() && self.had_frame {
                        // A new frame begins: its own budget (idle time before it is free).
                        self.waited = Duration::ZERO;
                    }
                    self.buf.extend_from_slice(&chunk.bytes)
                }
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(TransportError::Stream {
                        office: self.peer.clone(),
                        reason: "stream ended inside a frame".into(),
                    })
                }
                Err(e) => {
                    return Err(TransportError::Stream {
                        office: self.peer.clone(),
                        reason: with_causes(&e),
                    })
                }
            }
        }
    }
}
