//! The daemon refuses to start, with one clear line, on anything that would make its records
//! untrustworthy.
mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn start_error(net: &Net, office: &str) -> String {
    let out = Command::new(CONSENTD)
        .arg("--config")
        .arg(net.config(office))
        .env("CONSENTD_LOG", "off")
        .output()
        .unwrap();
    assert_error(&out)
}

#[test]
fn a_roster_signed_by_another_root_is_refused() {
    let net = Net::init("de,sg");
    let other = Net::init("de,sg");
    std::fs::copy(
        other.path().join("roster.json"),
        net.path().join("roster.json"),
    )
    .unwrap();
    let e = start_error(&net, "de");
    assert!(e.contains("roster") && e.contains("does not verify"), "{e}");
}

#[test]
fn a_tampered_roster_is_refused() {
    let net = Net::init("de,sg");
    let path = net.path().join("roster.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"SG\"", "\"CN\"", 1)).unwrap();
    let e = start_error(&net, "de");
    assert!(e.contains("roster"), "{e}");
}

#[test]
fn a_world_readable_secret_key_is_refused() {
    let net = Net::init("de");
    let key = net.path().join("de/signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = start_error(&net, "de");
    assert!(e.contains("signing.key") && e.contains("chmod"), "{e}");
}

#[test]
fn a_missing_secret_key_is_refused() {
    let net = Net::init("de");
    std::fs::remove_file(net.path().join("de/index.key")).unwrap();
    let e = start_error(&net, "de");
    assert!(e.contains("index.key"), "{e}");
}

#[test]
fn a_key_that_is_not_the_rosters_is_refused() {
    let net = Net::init("de,sg");
    std::fs::remove_file(net.path().join("de/signing.key")).unwrap();
    std::fs::copy(
        net.path().join("sg/signing.key"),
        net.path().join("de/signing.key"),
    )
    .unwrap();
    let e = start_error(&net, "de");
    assert!(e.contains("not the roster's signing key"), "{e}");
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let net = Net::init("de");
    net.edit_config("de", |t| format!("retention_dayz = 30\n{t}"));
    let e = start_error(&net, "de");
    assert!(e.contains("retention_dayz"), "{e}");
}

#[test]
fn a_data_directory_of_another_office_is_refused() {
    let net = Net::init("de,sg");
    let d = net.start("sg");
    assert!(d.stop());
    let sg_data = net.data_dir("sg");
    net.edit_config("de", |t| {
        t.replace(
            net.data_dir("de").to_str().unwrap(),
            sg_data.to_str().unwrap(),
        )
    });
    let e = start_error(&net, "de");
    assert!(e.contains("belongs to office"), "{e}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let net = Net::init("de");
    let _d = net.start("de");
    let e = start_error(&net, "de");
    assert!(e.contains("already"), "{e}");
    still_ok(&net);
}

fn still_ok(net: &Net) {
    assert_eq!(ok(&net.socket("de"), &["status"])["office"], "de");
}

#[test]
fn check_config_validates_without_serving() {
    let net = Net::init("de");
    let out = Command::new(CONSENTD)
        .arg("check-config")
        .arg("--config")
        .arg(net.config("de"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!net.socket("de").exists());
}
