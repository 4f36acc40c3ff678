//! Operators extend or correct holiday calendars with files named in config; a broken file stops
//! the daemon at start with the file and line, instead of computing deadlines on a bad calendar.
mod common;
use common::*;

#[test]
fn an_operator_calendar_adds_a_jurisdiction_and_replaces_a_builtin_one() {
    let net = Net::init("de");
    let sock = net.socket("de");
    let dir = net.path().join("holidays");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("FR.txt"),
        "jurisdiction FR\nyears 2026 2026\n2026-05-01 Fête du Travail\n2026-05-08 Victoire 1945\n",
    )
    .unwrap();
    // A company closure day added to the German calendar.
    let de =
        std::fs::read_to_string("data/holidays/DE.txt").unwrap() + "2026-04-30 Company closure\n";
    std::fs::write(dir.join("DE.txt"), de).unwrap();
    net.edit_config("de", |t| {
        t.replace(
            "[clock]",
            &format!("[clock]\ncalendar_dir = {:?}", dir.to_str().unwrap()),
        )
    });
    let _d = net.start("de");

    let e = err(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "a@example.fr",
            "--kind",
            "access",
            "--jurisdiction",
            "FR",
            "--received",
            "2025-11-20T00:00:00Z",
        ],
    );
    assert!(e.contains("covers 2026-2026"), "{e}");
    // 1 May 2026 is a Friday holiday, 2-3 May the weekend: 4 May.
    let fr = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "a@example.fr",
            "--kind",
            "access",
            "--jurisdiction",
            "FR",
            "--received",
            "2026-04-01T00:00:00Z",
        ],
    );
    assert_eq!(fr["due"], "2026-05-04");
    let de = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "a@example.de",
            "--kind",
            "access",
            "--received",
            "2026-03-30T00:00:00Z",
        ],
    );
    assert_eq!(
        de["due"], "2026-05-04",
        "30 Apr closure, 1 May holiday, then the weekend"
    );
}

#[test]
fn a_broken_calendar_file_stops_the_daemon_with_file_and_line() {
    let net = Net::init("de");
    let dir = net.path().join("holidays");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("DE.txt"),
        "jurisdiction DE\nyears 2026 2026\n2026-13-01 Nonsense\n",
    )
    .unwrap();
    net.edit_config("de", |t| {
        t.replace(
            "[clock]",
            &format!("[clock]\ncalendar_dir = {:?}", dir.to_str().unwrap()),
        )
    });
    let out = std::process::Command::new(CONSENTD)
        .arg("--config")
        .arg(net.config("de"))
        .env("CONSENTD_LOG", "off")
        .output()
        .unwrap();
    let e = assert_error(&out);
    assert!(e.contains("DE.txt") && e.contains("line 3"), "{e}");
}

#[test]
fn company_policy_days_come_from_config() {
    let net = Net::init("cn");
    let sock = net.socket("cn");
    net.edit_config("cn", |t| {
        t.replace("company_policy_days = 30", "company_policy_days = 15")
    });
    let _d = net.start("cn");
    let r = ok(
        &sock,
        &[
            "request",
            "open",
            "--subject",
            "li@example.cn",
            "--kind",
            "access",
            "--received",
            "2026-03-01T00:00:00Z",
        ],
    );
    assert_eq!(r["due"], "2026-03-16");
    assert_eq!(r["due_rule"], "pipl-company-policy");
    assert!(r["due_explanation"]
        .as_str()
        .unwrap()
        .contains("company policy"));
}
