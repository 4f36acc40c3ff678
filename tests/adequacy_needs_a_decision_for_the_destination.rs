//! `transfer record --mechanism adequacy` is accepted only where the exporter's law has an
//! adequacy decision for the destination (GDPR Art. 45 at an EEA office, the UK's adequacy
//! regulations at uk): DE→CN, DE→CO, DE→AU, DE→SG and GB→CN were recorded under it, and the
//! audit report counted them compliant (found by an exploratory session). A US destination is
//! accepted (the Data Privacy Framework, for certified recipients only).
mod common;
use common::*;

fn record(net: &Net, office: &str, to: &str) -> std::process::Output {
    ctl(
        &net.socket(office),
        &[
            "transfer",
            "record",
            "--to",
            to,
            "--recipient",
            "x",
            "--categories",
            "email_address",
            "--mechanism",
            "adequacy",
            "--subject",
            "t3@example.com",
        ],
    )
}

#[test]
fn adequacy_is_refused_where_the_exporter_s_law_has_no_decision() {
    let net = Net::init("de,uk");
    let de = net.start("de");
    let uk = net.start("uk");
    for to in ["CN", "CO", "AU", "SG"] {
        let e = assert_error(&record(&net, "de", to));
        assert_eq!(
            e.trim_end(),
            format!(
                "error: adequacy: the European Commission has no adequacy decision for {to} (GDPR Art. 45); use scc, bcr or a derogation (GDPR Art. 46, 47, 49)"
            )
        );
    }
    let e = assert_error(&record(&net, "uk", "CN"));
    assert!(
        e.starts_with("error: adequacy: the UK has no adequacy regulations for CN"),
        "{e}"
    );
    for (office, to) in [
        ("de", "JP"),
        ("de", "GB"),
        ("de", "US"),
        ("uk", "US"),
        ("uk", "DE"),
    ] {
        let out = record(&net, office, to);
        assert!(out.status.success(), "{office}→{to}: {}", text(&out.stderr));
    }
    // Only the accepted ones were recorded.
    let listed = ok(&net.socket("de"), &["transfer", "list"]);
    let to: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["office"] == "de")
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert!(
        !to.iter().any(|t| ["CN", "CO", "AU", "SG"].contains(t)),
        "{listed}"
    );
    drop((de, uk));
}
