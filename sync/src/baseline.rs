//! Raw QUIC baselines for `consentd bench` (cold sync and fan-out rows): the same bytes moved
//! over quinn on loopback with nothing else — no session, no reconciliation, no storage.
//!
//! Connections are made with [`Endpoint`] (so the TLS setup, congestion control and transport
//! parameters are the daemon's); the handshake is not timed. The timed part writes raw bytes
//! on the connection's one stream ([`crate::transport::FrameWriter::send_raw`]) and reads length-prefixed frames
//! back ([`crate::transport::FrameReader::recv`]), which is the least a receiver must do to split envelopes.
//! Keys are generated at run time; everything binds 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys;
use crate::roster::{OfficeEntry, Roster, VerifiedRoster};
use crate::transport::{Endpoint, Link, TransportError};

const LOOPBACK: &str = "127.0.0.1:0";

fn err(e: impl std::fmt::Display) -> String {
    format!("raw quic baseline: {e}")
}

/// `n` endpoints on loopback under a throw-away roster, named `o0`, `o1`, ….
fn endpoints(n: usize) -> Result<Vec<Endpoint>, String> {
    let root = keys::generate();
    let transport: Vec<_> = (0..n).map(|_| keys::generate()).collect();
    let mut roster = Roster::new("bench-raw").map_err(err)?;
    for (i, t) in transport.iter().enumerate() {
        roster
            .add_office(OfficeEntry {
                id: format!("o{i}"),
                jurisdiction: "DE".into(),
                signing_key: keys::public_hex(&keys::generate().verifying_key()),
                transport_key: keys::public_hex(&t.verifying_key()),
                address: "127.0.0.1:9".into(),
                retired: false,
            })
            .map_err(err)?;
    }
    roster.serial = 1;
    let roster: Arc<VerifiedRoster> = Arc::new(
        roster
            .sign(&root)
            .map_err(err)?
            .verify(&root.verifying_key())
            .map_err(err)?,
    );
    let listen: SocketAddr = LOOPBACK.parse().expect("a socket address");
    transport
        .iter()
        .enumerate()
        .map(|(i, t)| Endpoint::bind(roster.clone(), &format!("o{i}"), t, listen).map_err(err))
        .collect()
}

/// Connects `from` to `to` and exchanges one frame each way, so both links are established and
/// warm. Returns (dialer's link, acceptor's link).
async fn pair(from: &Endpoint, to: &Endpoint) -> Result<(Link, Link), String> {
    let addr = to.local_addr().map_err(err)?;
    let accepting = to.accept();
    let dialing = async {
        let mut link = from.connect_addr(to.office(), addr).await.map_err(err)?;
        // The acceptor sees the stream only once the dialer writes on it.
        link.writer.send(b"hello").await.map_err(err)?;
        Ok::<Link, String>(link)
    };
    let (accepted, dialed) = tokio::join!(
        async {
            let a = accepting.await.ok_or_else(|| err("endpoint closed"))?;
            a.finish().await.map_err(err)
        },
        dialing
    );
    let (mut dialed, mut accepted) = (dialed?, accepted?);
    recv(&mut accepted).await?;
    accepted.writer.send(b"hello").await.map_err(err)?;
    recv(&mut dialed).await?;
    Ok((dialed, accepted))
}

async fn recv(link: &mut Link) -> Result<Vec<u8>, String> {
    link.reader
        .recv()
        .await
        .map_err(|e: TransportError| err(e))?
        .ok_or_else(|| err("stream ended early"))
}

/// Length-prefixed concatenation of `blobs` (the transport's framing).
fn framed(blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blobs.iter().map(|b| b.len() + 4).sum());
    for b in blobs {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// Time to move every blob from one endpoint to another over one QUIC stream on loopback,
/// until the receiver holds each as its own buffer. Call within a multi-threaded tokio runtime.
pub async fn transfer(blobs: &[Vec<u8>]) -> Result<Duration, String> {
    let eps = endpoints(2)?;
    let (mut tx, mut rx) = pair(&eps[0], &eps[1]).await?;
    let bytes = framed(blobs);
    let n = blobs.len();
    let receiver = tokio::spawn(async move {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            got.push(recv(&mut rx).await?);
        }
        Ok::<(Instant, Vec<Vec<u8>>, Link), String>((Instant::now(), got, rx))
    });
    let started = Instant::now();
    for chunk in bytes.chunks(1 << 20) {
        tx.writer.send_raw(chunk).await.map_err(err)?;
    }
    let (done, got, _rx) = receiver.await.map_err(err)??;
    let took = done - started;
    if got.iter().map(Vec::len).sum::<usize>() != blobs.iter().map(Vec::len).sum::<usize>() {
        return Err(err("received bytes differ from those sent"));
    }
    tx.writer.finish();
    for e in &eps {
        e.close();
    }
    Ok(took)
}

/// Fan-out latencies: for each of `samples` rounds, `blob` is sent from one endpoint to each of
/// `peers` others (one connection each) and every receiver answers with a one-byte ack; the
/// sample is the time until the last ack arrived. Rounds are sequential.
pub async fn fan_out(blob: &[u8], peers: usize, samples: usize) -> Result<Vec<Duration>, String> {
    let none = |_: &[u8]| Ok(());
    fan_out_inner(blob, vec![none; peers], samples, none, false).await
}

/// [`fan_out`] with work at both ends: each round runs `origin` on `blob` first (e.g. sign it
/// and commit it durably), and receiver `i` runs `receivers[i]` on the bytes it got (e.g. verify
/// and commit durably) before it acks. The sample is the time from before `origin` until the
/// last ack arrived. The receivers' work runs concurrently, as six offices' would, so it
/// contends for the same cores and disk ours does. It blocks in place, so call this within a
/// multi-threaded tokio runtime.
pub async fn fan_out_with_work<O, R>(
    blob: &[u8],
    receivers: Vec<R>,
    samples: usize,
    origin: O,
) -> Result<Vec<Duration>, String>
where
    O: FnMut(&[u8]) -> Result<(), String>,
    R: FnMut(&[u8]) -> Result<(), String> + Send + 'static,
{
    fan_out_inner(blob, receivers, samples, origin, true).await
}

/// Both fan-outs. Without `blocking`, the work is run inline: a bare fan-out (no work) then
/// costs no hand-off of the worker thread.
async fn fan_out_inner<O, R>(
    blob: &[u8],
    receivers: Vec<R>,
    samples: usize,
    mut origin: O,
    blocking: bool,
) -> Result<Vec<Duration>, String>
where
    O: FnMut(&[u8]) -> Result<(), String>,
    R: FnMut(&[u8]) -> Result<(), String> + Send + 'static,
{
    fn run<T>(blocking: bool, f: impl FnOnce() -> T) -> T {
        if blocking {
            tokio::task::block_in_place(f)
        } else {
            f()
        }
    }
    let eps = endpoints(receivers.len() + 1)?;
    let mut links = Vec::with_capacity(receivers.len());
    let mut servers = Vec::with_capacity(receivers.len());
    for (to, mut work) in eps[1..].iter().zip(receivers) {
        let (dialed, mut accepted) = pair(&eps[0], to).await?;
        links.push(dialed);
        servers.push(tokio::spawn(async move {
            for _ in 0..samples {
                let got = recv(&mut accepted).await?;
                run(blocking, || work(&got))?;
                accepted.writer.send(&[1]).await.map_err(err)?;
            }
            Ok::<Link, String>(accepted)
        }));
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        run(blocking, || origin(blob))?;
        for l in links.iter_mut() {
            l.writer.send(blob).await.map_err(err)?;
        }
        for l in links.iter_mut() {
            recv(l).await?;
        }
        out.push(started.elapsed());
    }
    for s in servers {
        s.await.map_err(err)??;
    }
    for e in &eps {
        e.close();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn every_receiver_works_on_every_round_before_it_acks() {
        const ROUNDS: usize = 5;
        let done: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let receivers: Vec<_> = done
            .iter()
            .map(|d| {
                let d = d.clone();
                move |bytes: &[u8]| {
                    assert_eq!(bytes, b"blob", "a receiver got other bytes than were sent");
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .collect();
        let mut rounds = 0;
        let origin = |bytes: &[u8]| {
            assert_eq!(bytes, b"blob");
            // A round ends at the last ack, and a receiver acks only after its work: so when a
            // round starts, every receiver has worked on each earlier round.
            for d in &done {
                assert_eq!(
                    d.load(Ordering::SeqCst),
                    rounds,
                    "a round ended before a receiver's work"
                );
            }
            rounds += 1;
            Ok(())
        };
        let samples = runtime()
            .block_on(fan_out_with_work(b"blob", receivers, ROUNDS, origin))
            .expect("the fan-out runs");
        assert_eq!(samples.len(), ROUNDS);
        assert_eq!(rounds, ROUNDS, "the origin works once a round");
        for d in &done {
            assert_eq!(
                d.load(Ordering::SeqCst),
                ROUNDS,
                "each receiver works once a round"
            );
        }
    }

    #[test]
    fn a_receivers_failure_fails_the_fan_out_instead_of_hanging() {
        // The second of two receivers cannot store what it got.
        let receivers: Vec<_> = (0..2)
            .map(|i| {
                move |_: &[u8]| match i {
                    0 => Ok(()),
                    _ => Err("disk full".to_string()),
                }
            })
            .collect();
        let outcome = runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                fan_out_with_work(b"blob", receivers, 3, |_: &[u8]| Ok(())),
            )
            .await
        });
        let result = outcome.expect("the fan-out ends when a receiver fails");
        assert!(
            result.is_err(),
            "a failed receiver's work must fail the baseline"
        );
    }
}
