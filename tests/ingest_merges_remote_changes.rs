//! Offices apply each other's verified envelopes: a grant at one office and a withdrawal at the
//! same instant at another converge to the same answer at both (the withdrawal wins), whatever
//! order the envelopes arrive in, including a later change delivered before the record's first.
//! (In-process: two offices opened from real configs; replication over QUIC is tested elsewhere.)
mod common;
use common::*;
use consentd::daemon::prepare;
use consentd::office::Office;
use consentd::protocol::{self, Request};
use consentd_sync::{envelope, Envelope, SignedRoster, VerifiedEnvelope};

fn all_envelopes(office: &Office, roster: &consentd_sync::VerifiedRoster) -> Vec<VerifiedEnvelope> {
    let store = office.store();
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.envelope_hashes_after(after.as_ref(), 1000).unwrap();
        if page.is_empty() {
            break;
        }
        for h in &page {
            let bytes = store.envelope(h).unwrap().unwrap();
            out.push(envelope::verify(Envelope::decode(&bytes).unwrap(), roster).unwrap());
        }
        after = page.last().copied();
    }
    out
}

fn roster(net: &Net) -> consentd_sync::VerifiedRoster {
    let root = consentd_sync::keys::read_public_key(net.path().join("root.pub").to_str().unwrap())
        .unwrap();
    SignedRoster::load(&net.path().join("roster.json"))
        .unwrap()
        .verify(&root)
        .unwrap()
}

type Keys = std::collections::HashMap<[u8; 16], zeroize::Zeroizing<[u8; 32]>>;

fn keys_of(office: &Office, envs: &[VerifiedEnvelope]) -> Keys {
    let docs: Vec<[u8; 16]> = envs.iter().map(|e| e.doc_id()).collect();
    office.keys_for(&docs).unwrap().into_iter().collect()
}

/// Opening and closing an office block (start-up commit, writer drain): off the async threads.
fn open_office(net: &Net, office: &str) -> std::sync::Arc<Office> {
    tokio::task::block_in_place(|| prepare(&net.config(office)).unwrap().office)
}

fn close(office: &Office) {
    tokio::task::block_in_place(|| office.store().shutdown());
}

async fn check(office: &Office) -> serde_json::Value {
    office
        .execute(Request::ConsentCheck(protocol::ConsentCheck {
            subject: "+44 20 7946 0958".into(),
            purpose: "marketing".into(),
            at: None,
        }))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grant_and_withdrawal_converge_everywhere() {
    let net = Net::init("de,sg");
    let roster = roster(&net);
    let de = open_office(&net, "de");
    let sg = open_office(&net, "sg");
    let at = "2026-05-05T05:05:05Z";
    de.execute(Request::ConsentGrant(protocol::ConsentGrant {
        subject: "+442079460958".into(),
        purpose: "marketing".into(),
        basis: "consent".into(),
        service: Some("sms".into()),
        evidence: Some("ivr v2".into()),
        notice: None,
        under_18: false,
        parental_consent: None,
        person: None,
        role: None,
        at: Some(at.into()),
    }))
    .await
    .unwrap();
    sg.execute(Request::ConsentWithdraw(protocol::ConsentWithdraw {
        subject: "0044 20 7946 0958".into(),
        purpose: "marketing".into(),
        at: Some(at.into()),
    }))
    .await
    .unwrap();
    assert_eq!(
        check(&de).await["granted"],
        true,
        "before sync, de only knows its grant"
    );
    assert_eq!(check(&sg).await["granted"], false);

    let from_de = all_envelopes(&de, &roster);
    let from_sg = all_envelopes(&sg, &roster);
    // Without the subject key the record is stored but unreadable.
    let r = sg.ingest(from_de.clone(), &Keys::new()).await.unwrap();
    assert_eq!((r.stored, r.pending, r.records), (from_de.len(), 1, 0));
    assert_eq!(check(&sg).await["granted"], false);
    // Keys travel with their records: re-delivered with the key, it becomes readable.
    let r = sg
        .ingest(from_de.clone(), &keys_of(&de, &from_de))
        .await
        .unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.records, r.keys),
        (0, from_de.len(), 1, 1),
        "stored before; readable now"
    );
    let r = de
        .ingest(from_sg.clone(), &keys_of(&sg, &from_sg))
        .await
        .unwrap();
    assert_eq!((r.stored, r.records, r.keys), (from_sg.len(), 1, 1));
    assert_eq!(
        check(&de).await["granted"],
        false,
        "the withdrawal wins the tie at de"
    );
    assert_eq!(check(&sg).await["granted"], false);
    let again = sg.ingest(from_de, &Keys::new()).await.unwrap();
    assert_eq!(
        (again.stored, again.duplicates),
        (0, 1),
        "re-delivery is idempotent"
    );
    let status = |o: &Office| o.status().unwrap();
    assert_eq!(
        status(&de)["records"],
        2,
        "two records for the pair, read together"
    );
    assert_eq!(status(&de)["envelopes"], status(&sg)["envelopes"]);
    for office in [&de, &sg] {
        let history = office
            .execute(Request::ConsentHistory(protocol::SubjectArg {
                subject: "+442079460958".into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            history.as_array().unwrap().len(),
            2,
            "both events readable at both offices"
        );
    }
    close(&de);
    close(&sg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_change_before_the_first_waits_then_completes() {
    let net = Net::init("de,sg");
    let roster = roster(&net);
    let de = open_office(&net, "de");
    let sg = open_office(&net, "sg");
    let open = de
        .execute(Request::RequestOpen(protocol::RequestOpen {
            subject: "amy@example.com".into(),
            kind: "access".into(),
            received: Some("2026-03-31T10:00:00Z".into()),
            jurisdiction: None,
        }))
        .await
        .unwrap();
    let id = open["id"].as_str().unwrap().to_string();
    de.execute(Request::RequestClose(protocol::RequestClose {
        id: id.clone(),
        outcome: "completed".into(),
        note: None,
        at: Some("2026-04-02T00:00:00Z".into()),
    }))
    .await
    .unwrap();
    let mut envs = all_envelopes(&de, &roster);
    assert_eq!(envs.len(), 2);
    // Deliver the closing change first: it depends on the creating one.
    let first = envs.iter().position(|e| e.is_first()).unwrap();
    let creating = envs.remove(first);
    let keys = keys_of(&de, &envs);
    let r = sg.ingest(envs, &keys).await.unwrap();
    assert_eq!((r.stored, r.pending), (1, 1));
    let listed = sg
        .execute(Request::RequestList(Default::default()))
        .await
        .unwrap();
    assert!(
        listed.as_array().unwrap().is_empty(),
        "an incomplete record is not shown"
    );
    let r = sg.ingest(vec![creating], &keys).await.unwrap();
    assert_eq!((r.stored, r.pending, r.records), (1, 0, 1));
    let listed = sg
        .execute(Request::RequestList(Default::default()))
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "completed");
    close(&de);
    close(&sg);
}

fn grant_request(subject: String) -> Request {
    Request::ConsentGrant(protocol::ConsentGrant {
        service: Some("sms".into()),
        evidence: Some("web form v3".into()),
        ..protocol::ConsentGrant::new(subject, "marketing", "consent")
    })
}

/// Opens `de` with `records` grants to `{prefix}{i}@example.com`; returns it and its envelopes.
async fn office_with_grants(
    net: &Net,
    roster: &consentd_sync::VerifiedRoster,
    prefix: &str,
    records: usize,
) -> (std::sync::Arc<Office>, Vec<VerifiedEnvelope>) {
    let de = open_office(net, "de");
    de.execute(Request::Import(protocol::Import {
        records: (0..records)
            .map(|i| grant_request(format!("{prefix}{i}@example.com")))
            .collect(),
        first_line: 1,
    }))
    .await
    .unwrap();
    let envs = all_envelopes(&de, roster);
    assert_eq!(envs.len(), records);
    (de, envs)
}

/// `de` with `records` grants to `{prefix}{i}@example.com`, and `sg` holding their envelopes
/// without the keys that seal them: every record pending at `sg`.
async fn pending_at_sg(
    prefix: &str,
    records: usize,
) -> (
    Net,
    std::sync::Arc<Office>,
    std::sync::Arc<Office>,
    Vec<VerifiedEnvelope>,
) {
    let net = Net::init("de,sg");
    let roster = roster(&net);
    let (de, envs) = office_with_grants(&net, &roster, prefix, records).await;
    let sg = open_office(&net, "sg");
    let r = sg.ingest(envs.clone(), &Keys::new()).await.unwrap();
    assert_eq!(
        (r.stored, r.pending),
        (records, records),
        "no key: all pending"
    );
    (net, de, sg, envs)
}

/// Nothing pending at `sg`, the same state as `de`, and every grant readable there.
async fn every_record_open(de: &Office, sg: &Office, prefix: &str, records: usize) {
    assert_eq!(sg.status().unwrap()["pending_records"], 0);
    assert_eq!(sg.state_digest().unwrap(), de.state_digest().unwrap());
    for i in 0..records {
        assert_eq!(granted(sg, &format!("{prefix}{i}@example.com")).await, true);
    }
}

async fn granted(office: &Office, subject: &str) -> serde_json::Value {
    office
        .execute(Request::ConsentCheck(protocol::ConsentCheck {
            subject: subject.into(),
            purpose: "marketing".into(),
            at: None,
        }))
        .await
        .unwrap()["granted"]
        .clone()
}

/// A batch of hundreds of records (a cold sync's) is merged on one thread per core; a few at a
/// time, on the caller's thread. Both must store the same state and report the same counts,
/// including records whose key has not arrived and envelopes already held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_merges_on_every_core_like_small_ones() {
    let net = Net::init("de,sg,nl");
    let roster = roster(&net);
    let records = 300;
    let (de, envs) = office_with_grants(&net, &roster, "user", records).await;
    let all_keys = keys_of(&de, &envs);
    // Keys for the first two thirds of the records only (in envelope order).
    let some_keys = keys_of(&de, &envs[..records * 2 / 3]);
    assert!(some_keys.len() < all_keys.len());

    // sg: one batch, merged in parallel.
    let sg = open_office(&net, "sg");
    let big = sg.ingest(envs.clone(), &some_keys).await.unwrap();
    // nl: the same envelopes ten at a time, merged on the calling thread.
    let nl = open_office(&net, "nl");
    let mut small = consentd::office::IngestReport::default();
    for chunk in envs.chunks(10) {
        let r = nl.ingest(chunk.to_vec(), &some_keys).await.unwrap();
        small.stored += r.stored;
        small.pending += r.pending;
        small.records += r.records;
        small.keys += r.keys;
    }
    assert_eq!(big.stored, records);
    assert_eq!(
        (big.stored, big.pending, big.records, big.keys),
        (small.stored, small.pending, small.records, small.keys),
        "parallel and sequential merges report alike"
    );
    assert_eq!(big.records + big.pending, records);
    assert_eq!(big.pending, records - records * 2 / 3);
    assert_eq!(sg.state_digest().unwrap(), nl.state_digest().unwrap());
    assert_eq!(
        sg.status().unwrap()["records"],
        nl.status().unwrap()["records"]
    );

    // Re-delivered with every key: all readable, nothing stored twice.
    let again = sg.ingest(envs.clone(), &all_keys).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, records));
    assert_eq!(again.records, records - records * 2 / 3);
    assert_eq!(sg.status().unwrap()["records"], records);
    assert_eq!(sg.state_digest().unwrap(), de.state_digest().unwrap());
    for i in [0, records / 2, records - 1] {
        assert_eq!(granted(&sg, &format!("user{i}@example.com")).await, true);
    }
    close(&de);
    close(&sg);
    close(&nl);
}

/// Records that arrived before their key are re-opened by the keys that seal them, and only by
/// those: a batch of keys does not re-merge records still waiting for another key (a cold sync
/// brings keys in thousands of batches), and a small `limit` per call still reaches every
/// such record in turn (the scan continues where the last call stopped, wrapping around).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_arrive_later_reopen_exactly_the_records_they_seal() {
    let records = 40;
    let (_net, de, sg, envs) = pending_at_sg("late", records).await;
    assert_eq!(sg.status().unwrap()["pending_records"], records);

    // Keys of every third record (in envelope order) arrive.
    let thirds: Vec<VerifiedEnvelope> = envs.iter().step_by(3).cloned().collect();
    let some_keys = keys_of(&de, &thirds);
    assert_eq!(some_keys.len(), thirds.len());
    let r = sg.reopen_pending(&some_keys, 4096).await.unwrap();
    assert_eq!(
        (r.records, r.pending, r.keys),
        (thirds.len(), 0, thirds.len()),
        "exactly the records those keys seal open; the others are not re-merged"
    );
    let mut readable = 0;
    for i in 0..records {
        readable += usize::from(granted(&sg, &format!("late{i}@example.com")).await == true);
    }
    assert_eq!(readable, thirds.len(), "the others are still pending");
    assert_eq!(
        sg.status().unwrap()["pending_records"],
        records - thirds.len()
    );
    // Nothing more to open with the same keys.
    let r = sg.reopen_pending(&some_keys, 4096).await.unwrap();
    assert_eq!(r, consentd::office::IngestReport::default());

    // Every key, three records per call: every remaining record opens, each exactly once.
    let all_keys = keys_of(&de, &envs);
    let mut opened = 0;
    for call in 0..records {
        let r = sg.reopen_pending(&all_keys, 3).await.unwrap();
        assert!(r.records <= 3, "call {call} opened {} records", r.records);
        opened += r.records;
        if r.records == 0 {
            break;
        }
    }
    assert_eq!(opened, records - thirds.len());
    every_record_open(&de, &sg, "late", records).await;
    close(&de);
    close(&sg);
}

/// Envelopes delivered again (two links, or a peer that lost its acknowledgement) are counted
/// as duplicates and stored once; a pending record among them is merged again only when its key
/// comes along, and then opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_delivered_again_open_their_pending_records_only_with_the_key() {
    let records = 40;
    let (_net, de, sg, envs) = pending_at_sg("again", records).await;

    let r = sg.ingest(envs.clone(), &Keys::new()).await.unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.pending, r.records),
        (0, records, 0, 0),
        "again without keys: duplicates, and no record merged again"
    );
    assert_eq!(sg.status().unwrap()["pending_records"], records);

    let r = sg.ingest(envs.clone(), &keys_of(&de, &envs)).await.unwrap();
    assert_eq!(
        (r.stored, r.duplicates, r.pending, r.records, r.keys),
        (0, records, 0, records, records),
        "again with their keys: every record opens, nothing is stored twice"
    );
    every_record_open(&de, &sg, "again", records).await;
    close(&de);
    close(&sg);
}
