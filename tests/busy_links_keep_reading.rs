//! A replication link keeps reading from its peer while its own frames wait for that peer to read.
//!
//! Found by the cold sync of 1,000,000 records, which stalled for good at 159,601 with both
//! daemons idle: each link's loop awaited its own sends, so while one side's frames waited for
//! QUIC flow-control credit (its peer was not reading) it did not read either, and when both
//! sides had more in flight than a stream's window, neither ever read again. Here the test peer
//! plays the other side of that: it asks for a few MiB of envelopes and, without reading any of
//! the answers, sends a few MiB of its own. A daemon that stops reading while its answers wait
//! never takes our frames, and the send times out.

mod common;
use common::*;
use consentd_sync::frame::{Frame, SetKind};
use consentd_sync::{b64, envelope, Envelope};
use std::io::Write;
use std::time::Duration;

/// Envelopes asked for: 6 Wants of 1,024, about 4 MiB of answers, several times a QUIC stream's
/// receive window (1.25 MB), so the daemon's answers must wait for us.
const WANTS: usize = 6;
const RECORDS: usize = WANTS * 1024 + 200;
/// How long our sends may take when the daemon reads them (they take well under a second).
const SEND_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_link_keeps_reading_while_its_answers_wait_for_the_peer() {
    let net = Net::init("de,nl");
    let _de = net.start("de");
    let path = net.path().join("grants.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..RECORDS {
        let line = serde_json::json!({"op":"consent.grant","subject":format!("p{i}@example.com"),
            "purpose":"marketing","basis":"consent","evidence":"web form v3"});
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    ok(
        &net.socket("de"),
        &["import", "--file", path.to_str().unwrap()],
    );

    // The envelopes de holds, and their ids, from an audit bundle.
    let bundle = audit::export(&net, "de", "bundle.jsonl");
    let roster = peer::roster(net.path());
    let mut blobs = Vec::new();
    let mut ids = Vec::new();
    for line in audit::lines(&bundle) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "envelope" {
            let bytes = b64::decode(v["data"].as_str().unwrap()).unwrap();
            let verified = envelope::verify(Envelope::decode(&bytes).unwrap(), &roster).unwrap();
            ids.push(verified.hash());
            blobs.push(bytes);
        }
    }
    assert!(ids.len() >= WANTS * 1024, "{} envelopes", ids.len());

    let rt = peer::runtime();
    rt.block_on(async {
        let endpoint = peer::endpoint_as(net.path(), "nl");
        let link = peer::dial(&endpoint, "de", peer::address(net.path(), "de"))
            .await
            .unwrap();
        let (_connection, mut writer, mut reader) = link.split();
        // Everything we send, and not one frame read until it is all sent: Hello, the Wants,
        // then every envelope pushed back (de holds them all, so it only acknowledges).
        let sends = async {
            writer.send(&peer::hello(net.path(), "nl")).await.unwrap();
            for (request, chunk) in ids.chunks(1024).take(WANTS).enumerate() {
                let want = Frame::Want {
                    set: SetKind::Envelopes,
                    request: request as u32,
                    bytes_max: 1 << 20,
                    ids: chunk.to_vec(),
                };
                writer.send(&want.encode()).await.unwrap();
            }
            for (seq, blob) in blobs.iter().enumerate() {
                let push = Frame::Push {
                    set: SetKind::Envelopes,
                    seq: seq as u32,
                    blob: blob.clone(),
                };
                writer.send(&push.encode()).await.unwrap();
            }
        };
        tokio::time::timeout(SEND_WITHIN, sends).await.expect(
            "the daemon stopped reading our frames while its answers waited for us to read",
        );

        // Now read: every envelope asked for arrives, and every push is acknowledged.
        let mut answered = vec![0usize; WANTS];
        let mut finished = 0;
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + SEND_WITHIN;
        while finished < WANTS || acked < blobs.len() {
            let frame = tokio::time::timeout_at(deadline, reader.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("answers stopped: {answered:?}, {acked} acknowledgements")
                })
                .unwrap()
                .expect("the daemon ended the link");
            match Frame::decode(&frame).unwrap() {
                Frame::Items {
                    request,
                    last,
                    blobs,
                    ..
                } => {
                    answered[request as usize] += blobs.len();
                    finished += usize::from(last);
                }
                Frame::Ack { seqs } => acked += seqs.len(),
                Frame::Error { text, .. } => panic!("the daemon refused us: {text}"),
                _ => {}
            }
        }
        assert_eq!(answered, vec![1024; WANTS], "every envelope asked for");
        assert_eq!(acked, blobs.len());
    });
}
