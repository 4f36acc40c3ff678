//! Offices replicate over real loopback QUIC: they converge to equal state digests, an office
//! that was down catches up, China-resident records never leave China, and an office of another
//! network is refused.
mod common;
use common::*;
use std::time::{Duration, Instant};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

fn digest(net: &Net, office: &str) -> String {
    ok(&net.socket(office), &["status"])["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until every office reports the same digest and at least `records` records.
fn converge(net: &Net, offices: &[&str], records: u64) {
    let started = Instant::now();
    loop {
        let digests: Vec<String> = offices.iter().map(|o| digest(net, o)).collect();
        let counts: Vec<u64> = offices
            .iter()
            .map(|o| ok(&net.socket(o), &["status"])["records"].as_u64().unwrap())
            .collect();
        if digests.iter().all(|d| *d == digests[0]) && counts.iter().all(|c| *c >= records) {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "no convergence within {CONVERGE_TIMEOUT:?}: digests {digests:?}, records {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn grant(net: &Net, office: &str, subject: &str) {
    ok(
        &net.socket(office),
        &[
            "consent",
            "grant",
            "--subject",
            subject,
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--evidence",
            "web form v3",
        ],
    );
}

#[test]
fn three_offices_converge_and_read_each_others_records() {
    let net = Net::init("de,sg,uk");
    let _d: Vec<Daemon> = ["de", "sg", "uk"].iter().map(|o| net.start(o)).collect();
    grant(&net, "de", "anna@example.de");
    grant(&net, "sg", "tan@example.sg");
    ok(
        &net.socket("uk"),
        &[
            "request",
            "open",
            "--subject",
            "ian@example.co.uk",
            "--kind",
            "access",
            "--received",
            "2026-03-31T09:00:00Z",
        ],
    );
    ok(
        &net.socket("sg"),
        &[
            "consent",
            "withdraw",
            "--subject",
            "anna@example.de",
            "--purpose",
            "marketing",
        ],
    );
    converge(&net, &["de", "sg", "uk"], 3);
    for office in ["de", "sg", "uk"] {
        let sock = net.socket(office);
        let tan = ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "tan@example.sg",
                "--purpose",
                "marketing",
            ],
        );
        assert_eq!(tan["granted"], true, "{office} reads sg's grant");
        let anna = ok(
            &sock,
            &[
                "consent",
                "check",
                "--subject",
                "anna@example.de",
                "--purpose",
                "marketing",
            ],
        );
        assert_eq!(
            anna["granted"], false,
            "{office} sees sg's withdrawal of de's grant"
        );
        let list = ok(&sock, &["request", "list"]);
        assert_eq!(list[0]["due"], "2026-04-30", "{office} reads uk's request");
    }
    let peers = ok(&net.socket("uk"), &["peers"]);
    let rows = peers.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|p| p["connected"] == true), "{peers}");
}

#[test]
fn an_office_that_was_down_catches_up() {
    let net = Net::init("de,sg,uk");
    let de = net.start("de");
    let sg = net.start("sg");
    for i in 0..20 {
        grant(
            &net,
            if i % 2 == 0 { "de" } else { "sg" },
            &format!("p{i}@example.com"),
        );
    }
    converge(&net, &["de", "sg"], 20);
    let uk = net.start("uk");
    converge(&net, &["de", "sg", "uk"], 20);
    assert!(uk.stop());
    for i in 20..30 {
        grant(&net, "de", &format!("p{i}@example.com"));
    }
    let _uk = net.start("uk");
    converge(&net, &["de", "sg", "uk"], 30);
    let check = ok(
        &net.socket("uk"),
        &[
            "consent",
            "check",
            "--subject",
            "p29@example.com",
            "--purpose",
            "marketing",
        ],
    );
    assert_eq!(check["granted"], true);
    drop((de, sg));
}

#[test]
fn an_office_of_another_network_is_refused() {
    let net = Net::init("de,sg");
    let stranger = Net::init("de,sg");
    // The office whose id sorts first dials: the stranger's de dials our sg's address, as its own
    // roster's "sg".
    let sg = net.start("sg");
    let sg_config = std::fs::read_to_string(net.config("sg")).unwrap();
    let addr = sg_config
        .lines()
        .find(|l| l.starts_with("listen"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_string();
    stranger.edit_config("de", |t| {
        let mut out = String::new();
        let mut in_peer = false;
        for line in t.lines() {
            if line.starts_with("[[peer]]") {
                in_peer = true;
            }
            if in_peer && line.starts_with("address") {
                out += &format!("address = \"{addr}\"\n");
            } else {
                out += line;
                out.push('\n');
            }
        }
        out
    });
    let stranger_de = stranger.start("de");
    grant(&stranger, "de", "mallory@example.com");
    let started = Instant::now();
    while !sg.log_text().contains("refused a replication connection") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no refusal logged: {}",
            sg.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = ok(&net.socket("sg"), &["status"]);
    assert_eq!(status["records"], 0, "nothing from the stranger was stored");
    drop(stranger_de);
}

fn check_marketing(net: &Net, office: &str, subject: &str) -> serde_json::Value {
    ok(
        &net.socket(office),
        &[
            "consent",
            "check",
            "--subject",
            subject,
            "--purpose",
            "marketing",
        ],
    )
}

/// Waits for a transfer-list row with `status` at `office`.
fn transfer_event(net: &Net, office: &str, status: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let list = ok(&net.socket(office), &["transfer", "list"]);
        if let Some(r) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["status"] == status)
        {
            return r.clone();
        }
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "no {status} event at {office}: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn china_resident_records_never_leave_china() {
    let net = Net::init("cn,sg");
    let cn = net.start("cn");
    let sg = net.start("sg");
    grant(&net, "cn", "wang@example.cn");
    grant(&net, "sg", "tan@example.sg");
    let cn_record = check_marketing(&net, "cn", "wang@example.cn")["record"]
        .as_str()
        .unwrap()
        .to_string();
    // cn receives sg's record (SG→CN under the group agreement).
    let started = Instant::now();
    while check_marketing(&net, "cn", "tan@example.sg")["granted"] != true {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "cn never received sg's record"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The refusal is a signed record at cn, shown by `transfer list`, naming the record.
    let refusal = transfer_event(&net, "cn", "refused");
    assert_eq!(refusal["records"][0], cn_record.as_str(), "{refusal}");
    assert_eq!(refusal["to_office"], "sg");
    assert_eq!(
        (refusal["from"].as_str(), refusal["to"].as_str()),
        (Some("CN"), Some("SG"))
    );
    assert!(
        refusal["reason"].as_str().unwrap().contains("stays"),
        "{refusal}"
    );
    // sg's record did move to China, and sg records that transfer with its mechanism.
    let moved = transfer_event(&net, "sg", "transferred");
    assert_eq!(
        (
            moved["from"].as_str(),
            moved["to"].as_str(),
            moved["mechanism"].as_str()
        ),
        (Some("SG"), Some("CN"), Some("bcr"))
    );
    assert_eq!(
        check_marketing(&net, "sg", "wang@example.cn"),
        serde_json::json!({"granted": false, "record": null})
    );
    // Further rounds add no second refusal.
    std::thread::sleep(Duration::from_secs(2));
    let list = ok(&net.socket("cn"), &["transfer", "list"]);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == "refused")
            .count(),
        1,
        "{list}"
    );
    // Nothing of the record is in sg's data directory: no envelope of it in sg's store.
    assert!(sg.stop());
    drop(cn);
    let store = consentd_storage::Store::open(&net.data_dir("sg").join("consentd.redb")).unwrap();
    let id: [u8; 16] = hex::decode(&cn_record).unwrap().try_into().unwrap();
    assert!(
        store.doc_envelopes(&id).unwrap().is_empty(),
        "cn's record reached sg"
    );
    assert!(store.projection(&id).unwrap().is_none());
    store.shutdown();
}

#[test]
fn a_deleted_record_never_comes_back_from_an_office_that_was_away() {
    let net = Net::init("de,sg,uk");
    let de = net.start("de");
    let sg = net.start("sg");
    let uk = net.start("uk");
    // SMS data moved on 2026-01-10: the schedule deletes it six months later.
    ok(
        &net.socket("de"),
        &[
            "transfer",
            "record",
            "--to",
            "US",
            "--recipient",
            "Carrier Inc",
            "--categories",
            "phone_number,traffic_data",
            "--mechanism",
            "scc",
            "--tia",
            "TIA-9",
            "--subject",
            "+49 30 1234 5678",
            "--at",
            "2026-01-10T00:00:00Z",
        ],
    );
    grant(&net, "sg", "tan@example.sg");
    let operator_transfers = |office: &str| -> usize {
        let list = ok(&net.socket(office), &["transfer", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .filter(|t| t.get("status").is_none())
            .count()
    };
    let started = Instant::now();
    while ["sg", "uk"].iter().any(|o| operator_transfers(o) != 1) {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "the transfer record did not spread"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // uk goes away holding the record; de deletes it meanwhile.
    assert!(uk.stop());
    let old_envelopes = {
        let store =
            consentd_storage::Store::open(&net.data_dir("uk").join("consentd.redb")).unwrap();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = store.envelope_hashes_after(after.as_ref(), 1000).unwrap();
            let Some(last) = page.last().copied() else {
                break;
            };
            all.extend(page.iter().map(|h| store.envelope(h).unwrap().unwrap()));
            after = Some(last);
        }
        store.shutdown();
        all
    };
    let run = ok(
        &net.socket("de"),
        &["retention", "run", "--as-of", "2026-07-11T00:00:00Z"],
    );
    assert_eq!(run["deleted"], 1, "{run}");
    let started = Instant::now();
    while ok(&net.socket("sg"), &["status"])["tombstones"] != 1 {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "sg never got the tombstone"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // An office replaying its old copy (here a test peer holding uk's keys and uk's old envelopes)
    // is counted as dropped, and nothing comes back.
    let dropped = || {
        ok(&net.socket("de"), &["status"])["dropped_after_tombstone"]
            .as_u64()
            .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(common::peer::push_as(
        net.path(),
        "uk",
        "de",
        old_envelopes,
        || dropped() >= 1,
    ));
    drop(runtime);
    assert!(
        dropped() >= 1,
        "the replayed envelope of the deleted record was not counted as dropped"
    );
    // uk returns with its old copy: the tombstone wins everywhere, and uk drops its copy too.
    let _uk = net.start("uk");
    converge(&net, &["de", "sg", "uk"], 1);
    for office in ["de", "sg", "uk"] {
        let s = ok(&net.socket(office), &["status"]);
        assert_eq!(s["tombstones"], 1, "{office}: {s}");
        assert_eq!(
            operator_transfers(office),
            0,
            "{office} still lists the deleted transfer"
        );
        assert_eq!(
            check_marketing(&net, office, "tan@example.sg")["granted"],
            true,
            "{office}"
        );
    }
    drop((de, sg));
}

#[test]
fn retention_deletes_on_the_scheduled_day_across_three_offices() {
    let net = Net::init("de,sg,uk");
    let _d: Vec<Daemon> = ["de", "sg", "uk"].iter().map(|o| net.start(o)).collect();
    let run = |as_of: &str| ok(&net.socket("de"), &["retention", "run", "--as-of", as_of]);
    // Consent proof at de: withdrawn 2021-03-15, kept 5 years → deleted on 2026-03-15.
    ok(
        &net.socket("de"),
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
    );
    ok(
        &net.socket("de"),
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
    // Sales at sg on legitimate interest, 12 months → 2026-06-10.
    ok(
        &net.socket("sg"),
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
    );
    // SMS data at uk, 6 months → 2026-07-31; its subject is put on hold at de.
    ok(
        &net.socket("uk"),
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
    );
    let started = Instant::now();
    while ok(&net.socket("de"), &["transfer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("status").is_some())
        || check_marketing(&net, "de", "p@example.com")["record"].is_null()
        || ok(
            &net.socket("de"),
            &["consent", "history", "--subject", "m@example.com"],
        )
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "records did not reach de"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(
        &net.socket("de"),
        &[
            "hold",
            "set",
            "--subject",
            "+49 30 123456",
            "--reason",
            "litigation LIT-7",
        ],
    );

    assert_eq!(
        run("2026-03-14T00:00:00Z")["deleted"],
        0,
        "one day early: kept"
    );
    assert_eq!(
        run("2026-03-15T00:00:00Z")["deleted"],
        1,
        "the consent proof, on its day"
    );
    assert_eq!(run("2026-06-09T00:00:00Z")["deleted"], 0);
    assert_eq!(
        run("2026-06-10T00:00:00Z")["deleted"],
        1,
        "the sales consent, on its day"
    );
    let held = run("2026-07-31T00:00:00Z");
    assert_eq!(
        (held["deleted"].as_u64(), held["held"].as_u64()),
        (Some(0), Some(1)),
        "{held}"
    );
    ok(
        &net.socket("de"),
        &["hold", "clear", "--subject", "+4930123456"],
    );
    assert_eq!(
        run("2026-07-31T00:00:00Z")["deleted"],
        1,
        "the SMS data once the hold is cleared"
    );

    // The deletions reach every office.
    for office in ["de", "sg", "uk"] {
        let started = Instant::now();
        while ok(&net.socket(office), &["status"])["tombstones"] != 3 {
            assert!(
                started.elapsed() < CONVERGE_TIMEOUT,
                "{office} lacks tombstones"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            check_marketing(&net, office, "p@example.com")["record"].is_null(),
            "{office}"
        );
        assert!(
            ok(
                &net.socket(office),
                &["consent", "history", "--subject", "m@example.com"]
            )
            .as_array()
            .unwrap()
            .is_empty(),
            "{office}"
        );
    }
}
