//! The README's production path: each office generates its own keys, the root signs a roster
//! built with `roster add`, and an office started on it serves; changing the roster without
//! signing it again stops the office from starting.
mod common;
use common::*;
use std::process::Command;

fn ctl_files(args: &[&str]) -> serde_json::Value {
    let out = Command::new(CONSENTCTL)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consentctl {args:?}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn keygen_roster_add_sign_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let root = ctl_files(&["keygen", "--root", "--out", &p("root")]);
    let de = ctl_files(&["keygen", "--out", &p("de")]);
    let sg = ctl_files(&["keygen", "--out", &p("sg")]);
    let roster = p("roster.json");
    ctl_files(&["roster", "new", "--roster", &roster, "--network", "acme"]);
    for (office, j, keys, port) in [("de", "DE", &de, "7400"), ("sg", "SG", &sg, "7401")] {
        ctl_files(&[
            "roster",
            "add",
            "--roster",
            &roster,
            "--office",
            office,
            "--jurisdiction",
            j,
            "--signing-pub",
            keys["signing_pub"].as_str().unwrap(),
            "--transport-pub",
            keys["transport_pub"].as_str().unwrap(),
            "--address",
            &format!("127.0.0.1:{port}"),
        ]);
    }
    // Unsigned: verify refuses, naming the fix.
    let out = Command::new(CONSENTCTL)
        .args([
            "roster",
            "verify",
            "--roster",
            &roster,
            "--root-pub",
            &p("root/root.pub"),
        ])
        .output()
        .unwrap();
    let e = assert_error(&out);
    assert!(e.contains("not signed"), "{e}");
    ctl_files(&[
        "roster",
        "sign",
        "--roster",
        &roster,
        "--root-key",
        &p("root/root.key"),
    ]);
    let verified = ctl_files(&[
        "roster",
        "verify",
        "--roster",
        &roster,
        "--root-pub",
        &p("root/root.pub"),
    ]);
    assert_eq!(verified["offices"].as_array().unwrap().len(), 2);

    let uid = unsafe { libc::getuid() };
    let config = format!(
        "office = \"de\"\njurisdiction = \"DE\"\ndata_dir = \"data\"\nroster = \"../roster.json\"\n\
         root_pub = \"{}\"\nsigning_key = \"signing.key\"\ntransport_key = \"transport.key\"\n\
         index_key = \"index.key\"\nlisten = \"127.0.0.1:7400\"\n\n[control]\nsocket = \"control.sock\"\n\
         operators = [{uid}]\n\n[[peer]]\noffice = \"sg\"\naddress = \"127.0.0.1:7401\"\n",
        root["root_pub"].as_str().unwrap()
    );
    let config_path = dir.path().join("de/consentd.toml");
    std::fs::write(&config_path, config).unwrap();
    let sock = dir.path().join("de/control.sock");
    let d = Daemon::start(&config_path, &sock);
    ok(
        &sock,
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
            "web form v3",
        ],
    );
    assert!(d.stop());

    // A roster changed after signing (a third office added) must be signed again before use.
    let nl = ctl_files(&["keygen", "--out", &p("nl")]);
    ctl_files(&[
        "roster",
        "add",
        "--roster",
        &roster,
        "--office",
        "nl",
        "--jurisdiction",
        "NL",
        "--signing-pub",
        nl["signing_pub"].as_str().unwrap(),
        "--transport-pub",
        nl["transport_pub"].as_str().unwrap(),
        "--address",
        "127.0.0.1:7402",
    ]);
    let out = Command::new(CONSENTD)
        .arg("--config")
        .arg(&config_path)
        .env("CONSENTD_LOG", "off")
        .output()
        .unwrap();
    let e = assert_error(&out);
    assert!(e.contains("not signed"), "{e}");
}
