//! The index tables hold keyed hashes, never the subject's identifier: no byte of the address (or
//! phone number) appears in them. Plain-text personal fields still live in envelopes and
//! projections until the erasure issue encrypts them; this test pins both facts, so the second
//! assertion fails (as it should) the day that encryption lands and this test is updated.
mod common;
use common::*;
use consentd_storage::{Store, TableClass};

#[test]
fn index_tables_hold_keyed_hashes_not_identifiers() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let d = net.start("de");
    ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            " Alice@Example.COM ",
            "--purpose",
            "marketing",
            "--basis",
            "consent",
            "--service",
            "sms",
            "--evidence",
            "web form v3",
        ],
    );
    ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "alice@example.com",
            "--kind",
            "access",
            "--received",
            "2026-03-31T10:00:00Z",
        ],
    );
    ok(
        &sock,
        &[
            "consent",
            "grant",
            "--subject",
            "+44 20 7946 0958",
            "--purpose",
            "service_delivery",
            "--basis",
            "contract",
        ],
    );
    ok(
        &sock,
        &[
            "transfer",
            "record",
            "--to",
            "SG",
            "--recipient",
            "Office SG",
            "--categories",
            "email_address",
            "--mechanism",
            "bcr",
            "--subject",
            "alice@example.com",
        ],
    );
    assert!(d.stop());

    let store = Store::open(&net.data_dir("de").join("consentd.redb")).unwrap();
    let needles: [&[u8]; 4] = [
        b"alice@example.com",
        b"Alice@Example.COM",
        b"+442079460958",
        b"442079460958",
    ];
    let index = store.dump_tables(TableClass::IndexOnly).unwrap();
    let index_bytes: usize = index.iter().map(|(_, b)| b.len()).sum();
    assert!(index_bytes > 0, "the index tables are populated");
    for (table, bytes) in &index {
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "table {table} contains {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // Since the retention issue, payload tables hold personal fields only sealed under the
    // subject's key (docs/retention.md): the scan finds vocabulary in clear, never the subject.
    let payload = store.dump_tables(TableClass::Payload).unwrap();
    let found = |needle: &[u8]| {
        payload
            .iter()
            .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
    };
    assert!(found(b"bcr"), "the scan finds what is stored in clear");
    assert!(
        found(consentd::sealed::PREFIX.as_bytes()),
        "fields are sealed"
    );
    for needle in needles {
        assert!(
            !found(needle),
            "payload holds {} in clear",
            String::from_utf8_lossy(needle)
        );
    }
    store.shutdown();
}
