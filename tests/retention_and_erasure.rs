//! Retention and erasure, black-box: real daemons, real sockets, real consentctl.
//!
//! - records of several kinds, backdated with `--at`, are deleted by `retention run --as-of`
//!   on exactly the day the schedule says, and not a day earlier; `--dry-run` changes nothing;
//!   a held subject's records stay until the hold is cleared; a child's records go at once;
//! - an export taken after deletions verifies (tombstones account for missing leaves);
//! - a replayed envelope for a tombstoned record is dropped and counted;
//! - an erasure request deletes all but the legally kept records and lists them; afterwards no
//!   file under the data directory holds the subject or the evidence, and no 32-byte window of
//!   any file opens the old ciphertext or the old wrapped key.
mod common;

use common::audit::{export, root_pub, verify_bytes};
use common::*;
use consentd_storage::{RecordUpdate, Store, WriteBatch};
use std::path::Path;

fn run(net: &Net, as_of: &str, dry: bool) -> serde_json::Value {
    let mut args = vec!["retention", "run", "--as-of", as_of];
    if dry {
        args.push("--dry-run");
    }
    ok(&net.socket("de"), &args)
}

fn exists(net: &Net, subject: &str, id: &str) -> bool {
    let v = ok(
        &net.socket("de"),
        &["subject", "export", "--subject", subject],
    );
    ["consents", "requests", "transfers", "holds"]
        .iter()
        .flat_map(|k| v[*k].as_array().unwrap().clone())
        .any(|r| r["id"] == id)
}

fn id_of(v: serde_json::Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn records_expire_on_the_scheduled_day_holds_keep_them_and_audit_still_verifies() {
    let net = Net::init("de");
    // Passes as of days to come (the schedule's periods end in the future).
    net.allow_future_passes("de");
    let d = net.start("de");
    let s = net.socket("de");
    // Consent proof: granted under consent, withdrawn 2021-03-15 → kept until 2026-03-15.
    let proof = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "p@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
            "--at",
            "2020-01-10T09:00:00Z",
        ],
    ));
    ok(
        &s,
        &[
            "consent",
            "withdraw",
            "--subject",
            "p@example.com",
            "--purpose",
            "marketing",
            "--at",
            "2021-03-15T18:00:00Z",
        ],
    );
    // Sales on legitimate interest → 12 months from 2025-06-10.
    let sales = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "m@example.com",
            "--purpose",
            "sales",
            "--basis",
            "legitimate_interest",
            "--at",
            "2025-06-10T12:00:00Z",
        ],
    ));
    // SMS transfer → 6 months from 2026-01-31 = 2026-07-31.
    let sms = id_of(ok(
        &s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "phone_number,content",
            "--mechanism",
            "scc",
            "--tia",
            "TIA-1",
            "--subject",
            "+4930123456",
            "--at",
            "2026-01-31T10:00:00Z",
        ],
    ));
    // A closed request → 5 years from closing, 2025-02-01 → 2030-02-01.
    let closed = id_of(ok(
        &s,
        &[
            "request",
            "open",
            "--subject",
            "r@example.com",
            "--kind",
            "access",
            "--received",
            "2025-01-06T00:00:00Z",
        ],
    ));
    ok(
        &s,
        &[
            "request",
            "close",
            &closed,
            "--outcome",
            "completed",
            "--at",
            "2025-02-01T08:00:00Z",
        ],
    );
    // An open request and an active consent never expire.
    let open = id_of(ok(
        &s,
        &[
            "request",
            "open",
            "--subject",
            "o@example.com",
            "--kind",
            "access",
            "--received",
            "2025-01-06T00:00:00Z",
        ],
    ));
    let active = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "a@example.com",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v1",
            "--at",
            "2019-01-01T00:00:00Z",
        ],
    ));
    // A held subject's SMS transfer, due the same day as the other one.
    let held = id_of(ok(
        &s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "phone_number",
            "--mechanism",
            "scc",
            "--tia",
            "TIA-1",
            "--subject",
            "h@example.com",
            "--at",
            "2026-01-31T10:00:00Z",
        ],
    ));
    ok(
        &s,
        &[
            "hold",
            "set",
            "--subject",
            "h@example.com",
            "--reason",
            "court order 17",
        ],
    );
    let before = ok(&s, &["status"]);
    assert_eq!(before["tombstones"], 0);
    let records = before["records"].as_u64().unwrap();

    // A dry run far ahead counts everything due and changes nothing.
    let dry = run(&net, "2026-12-31", true);
    assert_eq!(dry["deleted"], 3, "{dry}");
    assert_eq!(dry["held"], 1, "{dry}");
    assert_eq!(ok(&s, &["status"])["records"], records);
    assert_eq!(ok(&s, &["status"])["tombstones"], 0);

    // Each record goes on its day, not the day before.
    let steps: [(&str, &str, &str, &str, &str); 3] = [
        (
            "2026-03-14",
            "2026-03-15",
            "p@example.com",
            &proof,
            "retention/consent-proof",
        ),
        (
            "2026-06-09",
            "2026-06-10",
            "m@example.com",
            &sales,
            "retention/marketing",
        ),
        (
            "2026-07-30",
            "2026-07-31",
            "+4930123456",
            &sms,
            "retention/sms-voice",
        ),
    ];
    let mut tombstones = 0;
    for (eve, day, subject, id, rule) in steps {
        let r = run(&net, eve, false);
        assert_eq!(r["deleted"], 0, "{eve}: {r}");
        assert!(exists(&net, subject, id), "{id} must stay on {eve}");
        let r = run(&net, day, false);
        assert_eq!(r["deleted"], 1, "{day}: {r}");
        assert_eq!(r["by_reason"][rule], 1, "{day}: {r}");
        assert!(!exists(&net, subject, id), "{id} must go on {day}");
        tombstones += 1;
        assert_eq!(ok(&s, &["status"])["tombstones"], tombstones);
    }
    // The held transfer stayed through its day; it goes once the hold is cleared.
    let r = run(&net, "2026-08-01", false);
    assert_eq!(
        (r["deleted"].as_u64(), r["held"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    assert!(exists(&net, "h@example.com", &held));
    ok(&s, &["hold", "clear", "--subject", "h@example.com"]);
    let r = run(&net, "2026-08-01", false);
    assert_eq!(r["deleted"], 1, "{r}");
    assert!(!exists(&net, "h@example.com", &held));
    assert!(exists(&net, "o@example.com", &open));
    assert!(exists(&net, "a@example.com", &active));

    // A child's record without parental consent goes at the next pass.
    let child = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "kid@example.com",
            "--purpose",
            "support",
            "--basis",
            "contract",
            "--under-18",
            "--at",
            "2026-03-01T00:00:00Z",
        ],
    ));
    let r = run(&net, "2026-03-01", false);
    assert_eq!(r["by_reason"]["retention/child-data"], 1, "{r}");
    assert!(!exists(&net, "kid@example.com", &child));

    // The closed request goes five years after closing.
    let r = run(&net, "2030-01-31", false);
    assert_eq!(r["deleted"], 0, "{r}");
    assert!(exists(&net, "r@example.com", &closed));
    let r = run(&net, "2030-02-01", false);
    assert_eq!(r["by_reason"]["retention/request-confirmation"], 1, "{r}");
    assert!(!exists(&net, "r@example.com", &closed));

    // What survives identifies no one: counts by office, kind, purpose and month.
    let st = ok(&s, &["status"]);
    let agg = st["deleted_aggregates"].as_array().unwrap();
    assert!(
        agg.iter().any(|a| a["kind"] == "consent"
            && a["purpose"] == "marketing"
            && a["month"] == "2020-01"
            && a["deleted"] == 1),
        "{agg:?}"
    );
    assert!(!st.to_string().contains("example.com"));

    // The auditor's verification of an export after deletions passes.
    let bundle = export(&net, "de", "after-retention.jsonl");
    let outcome = verify_bytes(&std::fs::read(&bundle).unwrap(), &root_pub(&net));
    assert!(outcome.ok(), "{:?}", outcome.failures);
    let out = std::process::Command::new(CONSENTCTL)
        .args(["audit", "verify"])
        .arg(&bundle)
        .arg("--root-pub")
        .arg(net.path().join("root.pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(d.stop());
}

#[test]
fn a_replayed_envelope_for_a_tombstoned_record_is_dropped_and_counted() {
    let net = Net::init("de");
    let d = net.start("de");
    let s = net.socket("de");
    let id = id_of(ok(
        &s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "phone_number",
            "--mechanism",
            "scc",
            "--tia",
            "T",
            "--subject",
            "z@example.com",
            "--at",
            "2026-01-31T10:00:00Z",
        ],
    ));
    assert!(d.stop());
    let db = net.data_dir("de").join("consentd.redb");
    let doc: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let old: Vec<([u8; 32], Vec<u8>)> = {
        let store = Store::open(&db).unwrap();
        let hashes = store.doc_change_hashes(&doc).unwrap();
        let out = hashes
            .iter()
            .map(|h| (*h, store.envelope(h).unwrap().unwrap()))
            .collect();
        store.shutdown();
        out
    };
    let d = net.start("de");
    assert_eq!(run(&net, "2026-07-31", false)["deleted"], 1);
    assert!(d.stop());
    {
        // Replay the old envelope the way a peer that was offline would offer it.
        let store = Store::open(&db).unwrap();
        store
            .commit_blocking(WriteBatch {
                updates: vec![RecordUpdate {
                    doc_id: doc,
                    kind: 3,
                    envelopes: old,
                    projection: b"{}".to_vec(),
                    index_keys: vec![],
                    due_day: None,
                }],
                ..WriteBatch::default()
            })
            .unwrap();
        assert!(store.is_tombstoned(&doc).unwrap());
        assert!(store.projection(&doc).unwrap().is_none());
        store.shutdown();
    }
    let _d = net.start("de");
    let st = ok(&s, &["status"]);
    assert_eq!(st["dropped_after_tombstone"], 1, "{st}");
    assert_eq!(st["tombstones"], 1);
    assert!(!exists(&net, "z@example.com", &id));
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// Whether any 32-byte window of any file under `dir` satisfies `f`.
fn any_window(dir: &Path, f: impl Fn(&[u8; 32]) -> bool) -> bool {
    files(dir).iter().any(|(_, bytes)| {
        bytes
            .windows(32)
            .any(|w| f(w.try_into().expect("32 bytes")))
    })
}

#[test]
fn erasure_keeps_legal_duties_lists_them_and_leaves_nothing_readable() {
    const SUBJECT: &str = "victim.person@example.com";
    const EVIDENCE: &str = "ZQX-distinctive-evidence-7781";
    let net = Net::init("de");
    net.edit_config("de", |t| {
        t.replace(
            "compact_after_deletions = 1000",
            "compact_after_deletions = 1",
        )
    });
    let d = net.start("de");
    let s = net.socket("de");
    let erasable = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "support",
            "--basis",
            "legitimate_interest",
            "--evidence",
            EVIDENCE,
        ],
    ));
    let transfer = id_of(ok(
        &s,
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Acme Mail",
            "--categories",
            "email_address",
            "--mechanism",
            "scc",
            "--tia",
            "T",
            "--subject",
            SUBJECT,
        ],
    ));
    let proof = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            SUBJECT,
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    ));
    let request = id_of(ok(
        &s,
        &["request", "open", "--subject", SUBJECT, "--kind", "erasure"],
    ));
    // Another subject's records stay readable throughout.
    let other = id_of(ok(
        &s,
        &[
            "consent",
            "grant",
            "--subject",
            "other@example.com",
            "--purpose",
            "support",
            "--basis",
            "contract",
            "--evidence",
            "other evidence",
        ],
    ));
    assert!(d.stop());
    let data = net.data_dir("de");
    // Sealed from the start: neither the subject nor the evidence is ever on disk in clear.
    assert_eq!(occurrences_under(&data, SUBJECT.as_bytes()), 0);
    assert_eq!(occurrences_under(&data, EVIDENCE.as_bytes()), 0);

    // Capture the sealed evidence and its wrapped key, as an attacker with a copy would.
    let (sealed_evidence, key_id, owner, wrapped) = {
        let store = Store::open(&data.join("consentd.redb")).unwrap();
        let doc: [u8; 16] = hex::decode(&erasable).unwrap().try_into().unwrap();
        let (_, proj) = store.projection(&doc).unwrap().unwrap();
        let consentd::record::Record::Consent(c) =
            consentd::record::Record::from_projection(&proj).unwrap()
        else {
            panic!("the erasable record is a consent record")
        };
        let ev = c.events[0].evidence.clone().unwrap();
        assert!(consentd::sealed::is_sealed(&ev), "{ev}");
        let kid = consentd::sealed::key_id(&ev).unwrap();
        let (owner, wrapped) = store.key(&kid).unwrap().unwrap();
        store.shutdown();
        (
            consentd::sealed::sealed_bytes(&ev).unwrap(),
            kid,
            owner,
            wrapped,
        )
    };
    let unwraps = |w: &[u8; 32]| consentd::keystore::unwrap_with(w, &key_id, &owner, &wrapped);
    // Positive control: today the KEK file on disk unwraps the key, which opens the evidence.
    let key = files(&data)
        .iter()
        .find_map(|(_, b)| {
            b.windows(32)
                .find_map(|w| unwraps(w.try_into().expect("32 bytes")))
        })
        .expect("the search finds the live KEK");
    assert_eq!(
        consentd::sealed::open_bytes_with(&key, &sealed_evidence).as_deref(),
        Some(EVIDENCE)
    );

    let _d = net.start("de");
    let closed = ok(
        &s,
        &["request", "close", &request, "--outcome", "completed"],
    );
    let report = &closed["erasure"];
    assert_eq!(report["deleted"], 2, "{closed}");
    let kept: Vec<(String, String)> = report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().into(),
                k["rule"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        kept.contains(&(proof.clone(), "consent-proof".into())),
        "{kept:?}"
    );
    assert!(
        kept.contains(&(request.clone(), "request-confirmation".into())),
        "{kept:?}"
    );
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(report["keys_destroyed"].as_u64().unwrap() >= 1, "{closed}");
    // The consent kept as proof is no longer a permission: the erasure withdrew it (it answered
    // "granted" after an erasure, found by an exploratory session).
    assert_eq!(
        report["withdrawn"],
        serde_json::json!(["marketing"]),
        "{closed}"
    );
    let check = ok(
        &s,
        &[
            "consent",
            "check",
            "--subject",
            SUBJECT,
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check["granted"], false, "{check}");
    assert_eq!(
        check["record"],
        proof.as_str(),
        "withdrawn in the kept record"
    );
    // The kept records are still readable and list the outcome; the rest is gone.
    let export_v = ok(&s, &["subject", "export", "--subject", SUBJECT]);
    assert_eq!(export_v["consents"].as_array().unwrap().len(), 1);
    assert_eq!(export_v["consents"][0]["id"], proof.as_str());
    assert_eq!(export_v["transfers"].as_array().unwrap().len(), 0);
    assert_eq!(export_v["requests"][0]["erasure"]["deleted"], 2);
    assert!(!exists(&net, SUBJECT, &erasable) && !exists(&net, SUBJECT, &transfer));
    assert!(exists(&net, "other@example.com", &other));
    let st = ok(&s, &["status"]);
    assert_eq!(st["tombstones"], 2);
    assert!(
        st["kek_generation"].as_u64().unwrap() >= 2,
        "the KEK was rotated: {st}"
    );
    assert!(_d.stop());

    // After erasure, rotation and compaction: nothing readable is left under the data dir.
    assert_eq!(occurrences_under(&data, SUBJECT.as_bytes()), 0);
    assert_eq!(occurrences_under(&data, EVIDENCE.as_bytes()), 0);
    assert!(
        !any_window(&data, |w| unwraps(w).is_some()),
        "no window of any file unwraps the destroyed key"
    );
    assert!(
        !any_window(&data, |w| consentd::sealed::open_bytes_with(
            w,
            &sealed_evidence
        )
        .is_some()),
        "no window of any file opens the old ciphertext"
    );
    // And the office still starts and reads what it kept.
    let _d = net.start("de");
    assert!(exists(&net, SUBJECT, &proof));
    assert!(exists(&net, "other@example.com", &other));
}

/// An erasure keeps the subject's other open requests, and says so: it listed one under the
/// rule's reason for *handled* requests ("confirmations of handled data-subject requests are
/// kept 5 years"), which it is not (found by an exploratory session). A closed one keeps that
/// reason.
#[test]
fn an_erasure_says_an_open_request_is_kept_because_it_is_open() {
    const SUBJECT: &str = "still.waiting@example.com";
    let net = Net::init("de");
    let _d = net.start("de");
    let s = net.socket("de");
    let open = |kind: &str| {
        id_of(ok(
            &s,
            &["request", "open", "--subject", SUBJECT, "--kind", kind],
        ))
    };
    let access = open("access");
    let answered = open("rectification");
    ok(
        &s,
        &["request", "close", &answered, "--outcome", "completed"],
    );
    let erasure = open("erasure");
    let closed = ok(
        &s,
        &["request", "close", &erasure, "--outcome", "completed"],
    );
    let kept = closed["erasure"]["kept"].as_array().unwrap();
    let why = |id: &str| {
        let k = kept
            .iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("{id} not kept: {closed}"));
        assert_eq!(k["rule"], "request-confirmation", "{k}");
        k["why"].as_str().unwrap().to_string()
    };
    assert_eq!(
        why(&access),
        "an open data-subject request: kept until it is answered, then 5 years (§7)"
    );
    assert_eq!(
        why(&answered),
        "§7: confirmations of handled data-subject requests are kept 5 years"
    );
    assert_eq!(kept.len(), 3, "{closed}");
}

/// sg, cut off from de, recorded a grant of the person's; de completed their erasure without
/// ever seeing it. The grant survived everywhere once the two met again, sealed under the
/// subject key de's erasure had destroyed (found by an exploratory session). Every office now
/// carries out an erasure another office completed on its own records made before it.
#[test]
fn an_erasure_reaches_a_record_made_while_cut_off_from_the_erasing_office() {
    let subject = "cutoff@example.com";
    let net = Net::init("de,sg");
    let de = net.start("de");
    let sg = net.start("sg");
    let grant = |office: &str, purpose: &str, basis: &str| {
        id_of(ok(
            &net.socket(office),
            &[
                "consent",
                "grant",
                "--subject",
                subject,
                "--purpose",
                purpose,
                "--basis",
                basis,
            ],
        ))
    };
    let history = |office: &str| {
        ok(
            &net.socket(office),
            &["consent", "history", "--subject", subject],
        )
        .as_array()
        .unwrap()
        .len()
    };
    grant("de", "service_analytics", "legitimate_interest");
    wait_until(
        "sg holds de's grant",
        std::time::Duration::from_secs(120),
        || history("sg") == 1,
    );
    // Cut off: de stops while sg records a grant of its own, then sg stops.
    assert!(de.stop());
    let made_apart = grant("sg", "support", "contract");
    assert!(sg.stop());
    let _de = net.start("de");
    let request = id_of(ok(
        &net.socket("de"),
        &["request", "open", "--subject", subject, "--kind", "erasure"],
    ));
    let closed = ok(
        &net.socket("de"),
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(closed["erasure"]["deleted"], 1, "{closed}");
    // They meet again: sg carries the erasure out on the record de never saw.
    let _sg = net.start("sg");
    wait_until(
        "no consent record of the person is left anywhere",
        std::time::Duration::from_secs(120),
        || history("de") == 0 && history("sg") == 0,
    );
    let status = |office: &str| ok(&net.socket(office), &["status"]);
    wait_until(
        "de and sg converge",
        std::time::Duration::from_secs(120),
        || status("de")["digest"] == status("sg")["digest"],
    );
    assert!(!exists(&net, subject, &made_apart));
}

/// A marketing grant recorded before the person was flagged under 18 is kept as consent proof
/// when the pass deletes the child's other records, the flagged one among them; with the flag
/// gone, `consent check` answered "granted" to marketing a child (found by an exploratory
/// session). The pass withdraws what it keeps as proof, and a kept record carries the flag.
#[test]
fn a_child_s_kept_marketing_grant_is_withdrawn_not_granted_again() {
    let subject = "kid2@example.com";
    let net = Net::init("de");
    let _de = net.start("de");
    let sock = net.socket("de");
    let grant = |purpose: &str, extra: &[&str]| {
        let mut args = vec![
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            purpose,
            "--basis",
            "consent",
            "--evidence",
            "form v1",
        ];
        args.extend_from_slice(extra);
        ok(&sock, &args)
    };
    let check = |purpose: &str| {
        ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                subject,
                "--purpose",
                purpose,
            ],
        )["granted"]
            .clone()
    };
    grant("marketing", &["--at", "2026-11-02T00:00:00Z"]);
    grant("support", &["--under-18", "--at", "2026-11-03T00:00:00Z"]);
    assert_eq!(check("marketing"), false, "under 18");
    let preview = ok(&sock, &["retention", "run", "--dry-run"]);
    assert_eq!(preview["by_reason"]["withdrawn/child-data"], 1, "{preview}");
    assert_eq!(check("marketing"), false, "a preview withdraws nothing");
    let pass = ok(&sock, &["retention", "run"]);
    assert!(pass["deleted"].as_u64().unwrap() >= 1, "{pass}");
    assert_eq!(pass["by_reason"]["withdrawn/child-data"], 1, "{pass}");
    assert_eq!(check("marketing"), false, "the kept grant is withdrawn");
    let history = ok(&sock, &["consent", "history", "--subject", subject]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["purpose"] == "marketing" && e["action"] == "withdraw"),
        "{history}"
    );
    // The office still knows the person is under 18: a kept record carries the flag, and a new
    // marketing grant without a parent's consent is refused (it was taken, and answered
    // "granted": found by an exploratory session).
    let e = err(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "sales",
            "--basis",
            "consent",
            "--evidence",
            "form v2",
        ],
    );
    assert!(e.contains("under 18"), "{e}");
    assert_eq!(check("marketing"), false);
}

/// An erasure that a crash stops part way deleted some records for good; closing the request
/// again deleted the rest and reported only those (`deleted: 2232` of 3000; found by an
/// exploratory session). Now the confirmation counts and lists every record the request
/// deleted, over every attempt.
#[test]
fn an_erasure_closed_again_after_a_crash_reports_every_record_it_deleted() {
    const RECORDS: u64 = 3000;
    let net = Net::init("de");
    let de = net.start("de");
    let subject = "many.transfers@example.com";
    let lines: String = (0..RECORDS)
        .map(|i| {
            format!(
                "{{\"op\":\"transfer.record\",\"subject\":\"{subject}\",\"to\":\"US\",\"recipient\":\"R{i}\",\"categories\":[\"email_address\"],\"mechanism\":\"scc\",\"tia\":\"T\"}}\n"
            )
        })
        .collect();
    let file = net.path().join("transfers.jsonl");
    std::fs::write(&file, lines).unwrap();
    ok(
        &net.socket("de"),
        &["import", "--file", file.to_str().unwrap()],
    );
    let request = id_of(ok(
        &net.socket("de"),
        &["request", "open", "--subject", subject, "--kind", "erasure"],
    ));

    let tombstones = || {
        ok(&net.socket("de"), &["status"])["tombstones"]
            .as_u64()
            .unwrap()
    };
    let mut close = std::process::Command::new(CONSENTCTL)
        .arg("--socket")
        .arg(net.socket("de"))
        .args([
            "--json",
            "request",
            "close",
            &request,
            "--outcome",
            "completed",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let deleted_before = loop {
        let n = tombstones();
        if n > 0 {
            break n;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the erasure deleted nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    de.kill9();
    let _ = close.wait();
    assert!(
        deleted_before < RECORDS,
        "the erasure finished before the kill"
    );

    let _de = net.start("de");
    let after_crash = tombstones();
    assert!(
        after_crash > 0 && after_crash < RECORDS,
        "part of the erasure was durable: {after_crash}"
    );
    let closed = ok(
        &net.socket("de"),
        &["request", "close", &request, "--outcome", "completed"],
    );
    assert_eq!(tombstones(), RECORDS);
    let erasure = &closed["erasure"];
    assert_eq!(erasure["deleted"], RECORDS, "{}", erasure["deleted"]);
    let listed = erasure["deleted_records"].as_array().unwrap();
    assert_eq!(listed.len() as u64, RECORDS);
    let distinct: std::collections::BTreeSet<&str> =
        listed.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(distinct.len() as u64, RECORDS);
}

/// An erasure completed under a legal hold deletes nothing but withdraws the subject's
/// consents. That withdrawal made a marketing grant on legitimate interest look like an
/// objection, "consent proof" kept five years: once the hold was lifted, a second erasure
/// deleted nothing of it and kept its evidence (found by an exploratory session). Now the
/// erasure's own withdrawal is marked (`by_erasure`) and proves nothing: lifting the hold
/// carries the postponed erasure out (tests/erasure_postponed_by_a_hold_is_carried_out_when_it_ends.rs),
/// deleting the record, as an erasure does for a subject never held.
#[test]
fn an_erasure_after_a_hold_is_lifted_deletes_what_the_held_erasure_only_withdrew() {
    let net = Net::init("de");
    let _de = net.start("de");
    let s = |args: &[&str]| ok(&net.socket("de"), args);
    let erase = |subject: &str| {
        let id = id_of(s(&[
            "request",
            "open",
            "--subject",
            subject,
            "--kind",
            "erasure",
        ]));
        s(&["request", "close", &id, "--outcome", "completed"])["erasure"].clone()
    };
    for subject in ["held@example.com", "free@example.com"] {
        s(&[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "sales",
            "--basis",
            "legitimate_interest",
            "--evidence",
            "crm import 2026-01",
        ]);
    }
    s(&[
        "hold",
        "set",
        "--subject",
        "held@example.com",
        "--reason",
        "litigation LIT-9",
    ]);
    let under_hold = erase("held@example.com");
    assert_eq!(under_hold["deleted"], 0, "{under_hold}");
    assert_eq!(under_hold["withdrawn"], serde_json::json!(["sales"]));
    let cleared = s(&["hold", "clear", "--subject", "held@example.com"]);
    assert_eq!(
        cleared["erasures_carried_out"][0]["deleted"], 1,
        "{cleared}"
    );

    for subject in ["held@example.com", "free@example.com"] {
        let e = erase(subject);
        let deleted = if subject == "free@example.com" { 1 } else { 0 };
        assert_eq!(e["deleted"], deleted, "{subject}: {e}");
        let kept_consents: Vec<_> = e["kept"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == "consent")
            .collect();
        assert!(kept_consents.is_empty(), "{subject}: {e}");
        let left = s(&["subject", "export", "--subject", subject]);
        assert_eq!(left["consents"], serde_json::json!([]), "{subject}: {left}");
    }
}
