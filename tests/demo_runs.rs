//! `consentd demo` runs the product end to end (seven real daemons on loopback) and exits 0,
//! reporting convergence and the audit result.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn demo_converges_verifies_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consentd demo");
    // Read both pipes on threads so a full pipe never stalls the demo.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            // SIGTERM: the demo stops its daemons on the way out (its error path does too).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "consentd demo did not finish within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    assert!(
        status.success(),
        "consentd demo failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    for office in ["us", "sg", "de", "cn", "co", "au", "uk"] {
        assert!(
            out.contains(&format!("$D/{office}/control.sock")),
            "office {office} never appears:\n{out}"
        );
    }
    assert!(out.contains("converged in"), "no convergence line:\n{out}");
    assert!(
        out.contains("digests      equal at the six non-CN offices"),
        "no digest summary:\n{out}"
    );
    assert!(out.contains("audit verify"), "no audit verify step:\n{out}");
    assert!(
        out.contains("  audit        bundle from de verified: OK (exit 0)"),
        "the bundle exported at de does not verify (every office's log must travel):\n{out}"
    );
    assert!(
        out.contains("withheld from de by their office's signed refusal"),
        "no withheld count for cn's resident record:\n{out}"
    );
    assert!(!out.contains("KNOWN LIMITATION"), "{out}");
    // Answers read at other offices than the one that wrote.
    assert!(
        out.contains("not granted (record"),
        "au did not see sg's withdrawal of de's grant:\n{out}"
    );
    assert!(
        out.contains("not granted (no consent recorded)"),
        "sg knew cn's resident subject:\n{out}"
    );
    assert!(
        out.contains("stopped      every office with SIGTERM"),
        "{out}"
    );
}
