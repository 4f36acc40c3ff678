//! Shared harness for black-box tests: real `consentd` processes, real Unix sockets, and the real
//! `consentctl` binary. Nothing here reaches into the daemon's memory.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod peer;

use serde_json::Value;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CONSENTD: &str = env!("CARGO_BIN_EXE_consentd");
pub const CONSENTCTL: &str = env!("CARGO_BIN_EXE_consentctl");
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A local network made by `consentctl network init` in a temporary directory.
pub struct Net {
    pub dir: tempfile::TempDir,
}

impl Net {
    pub fn init(offices: &str) -> Net {
        let dir = tempfile::Builder::new()
            .prefix("consentd-test-")
            .tempdir()
            .unwrap();
        let out = Command::new(CONSENTCTL)
            .args(["--json", "network", "init", "--dir"])
            .arg(dir.path())
            .args(["--offices", offices])
            .output()
            .unwrap();
        assert!(out.status.success(), "network init: {}", text(&out.stderr));
        Net { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn config(&self, office: &str) -> PathBuf {
        self.path().join(office).join("consentd.toml")
    }
    pub fn socket(&self, office: &str) -> PathBuf {
        self.path().join(office).join("control.sock")
    }
    pub fn data_dir(&self, office: &str) -> PathBuf {
        self.path().join(office).join("data")
    }
    pub fn start(&self, office: &str) -> Daemon {
        Daemon::start(&self.config(office), &self.socket(office))
    }
    pub fn start_with_env(&self, office: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.config(office), &self.socket(office), env)
    }
    /// Rewrites one office's config text.
    pub fn edit_config(&self, office: &str, f: impl FnOnce(String) -> String) {
        let path = self.config(office);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(text)).unwrap();
    }

    /// Lets `office` run real retention passes `--as-of` a future time (off by default: such a
    /// pass deletes now what is due only then).
    pub fn allow_future_passes(&self, office: &str) {
        self.edit_config(office, |t| {
            assert!(t.contains("allow_future_passes = false"), "{t}");
            t.replace("allow_future_passes = false", "allow_future_passes = true")
        });
    }
}

/// A running daemon process. Dropping it kills the process.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, socket: &Path) -> Daemon {
        Daemon::start_with_env(config, socket, &[])
    }

    pub fn start_with_env(config: &Path, socket: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_wrapped(config, socket, env, &[])
    }

    /// Starts the daemon under `wrapper` (e.g. `ip netns exec NS`), which must exec it in place
    /// so that the pid is the daemon's.
    pub fn start_wrapped(
        config: &Path,
        socket: &Path,
        env: &[(&str, &str)],
        wrapper: &[String],
    ) -> Daemon {
        let log = config.with_extension(format!("log.{}", std::process::id()));
        let mut cmd = match wrapper.split_first() {
            None => Command::new(CONSENTD),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(CONSENTD);
                c
            }
        };
        let child = cmd
            .arg("--config")
            .arg(config)
            .env("CONSENTD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Appended: a restarted daemon's log follows its predecessor's.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            socket: socket.to_owned(),
            log,
        };
        let started = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return d;
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "consentd exited with {status} before ready: {}",
                    d.log_text()
                );
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "consentd not ready: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` to the daemon (e.g. SIGSTOP/SIGCONT to pause and resume it).
    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// `kill -9`: no shutdown path at all. Waits until the process is gone.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }

    /// Resident memory of the daemon process (VmRSS from /proc), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: the clean shutdown path. Returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("consentd did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `consentctl --socket S --json ARGS`.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    ctl_as(socket, args, None)
}

/// Runs consentctl as another uid (needs root).
pub fn ctl_as(socket: &Path, args: &[&str], uid: Option<u32>) -> Output {
    let mut cmd = Command::new(CONSENTCTL);
    cmd.arg("--socket").arg(socket).arg("--json").args(args);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// Polls `cond` every 100 ms until it holds; fails the test, naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs consentctl and expects success and one JSON value on stdout.
pub fn ok(socket: &Path, args: &[&str]) -> Value {
    let out = ctl(socket, args);
    assert!(
        out.status.success(),
        "consentctl {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", text(&out.stdout)))
}

/// Checks the error contract: non-zero exit, nothing on stdout, one `error: ` line on stderr.
pub fn assert_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got success");
    assert!(
        out.stdout.is_empty(),
        "stdout not empty on error: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.starts_with("error: "), "stderr: {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

pub fn err(socket: &Path, args: &[&str]) -> String {
    assert_error(&ctl(socket, args))
}

/// Counts occurrences of `needle` in every file under `dir`.
pub fn occurrences_under(dir: &Path, needle: &[u8]) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            count += occurrences_under(&path, needle);
        } else {
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            count += bytes.windows(needle.len()).filter(|w| *w == needle).count();
        }
    }
    count
}
pub mod audit;

/// The records a `retention run` answer says it deleted, but the transfer records (replication's
/// signed transfer events, 12 months: `retention/transfer-other`, `sms-voice`, `refusal`): how
/// many of those a sync leaves depends on how its moves were batched, and since each is made
/// durable before its records leave, they are there by the time offices have converged.
pub fn deleted_besides_transfer_records(run: &Value) -> u64 {
    let transfers: u64 = ["transfer-other", "sms-voice", "refusal"]
        .iter()
        .filter_map(|rule| run["by_reason"][format!("retention/{rule}")].as_u64())
        .sum();
    run["deleted"].as_u64().expect("a retention run answer") - transfers
}
