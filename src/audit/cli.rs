//! `consentctl audit export | verify | report | checkpoint`.
//!
//! `verify` and `report` need no daemon: they read the bundle and trust only `--root-pub`.
//! `verify` prints its report (human or `--json`) on stdout and exits 0 only when every check
//! passed; otherwise it still prints the report, adds one `error: …` line on stderr naming the
//! first failure and how many there were, and exits 1. Any other error (unreadable file, bad
//! key) prints only the `error:` line.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{json, Value};

use super::verify::{self, Options, Outcome};
use crate::protocol::{Client, Empty, Request};

/// How often a progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Without a terminal, progress is a plain line this often (only for long runs).
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(10);

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Write everything an auditor needs into one file (streamed from the daemon)
    Export {
        /// The bundle's file: an earlier bundle there is replaced (atomically); a symbolic
        /// link, FIFO, device or directory is refused
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a bundle offline against the network's root public key
    Verify {
        file: PathBuf,
        /// Hex of the root public key, or a file holding it
        #[arg(long, value_name = "HEX|FILE")]
        root_pub: String,
        /// An older bundle: prove every office's log only grew since
        #[arg(long, value_name = "OLDFILE")]
        previous: Option<PathBuf>,
        /// Worker threads (default: one per core)
        #[arg(long)]
        threads: Option<usize>,
        /// Read a version-1 bundle (unsigned header, from an older consentd) instead of failing it
        #[arg(long)]
        accept_version_1: bool,
    },
    /// Compliance tables computed from a bundle that verifies
    Report {
        file: PathBuf,
        #[arg(long, value_name = "HEX|FILE")]
        root_pub: String,
        /// Long-format CSV instead of tables
        #[arg(long)]
        csv: bool,
        /// Judge deadlines and retention at this time (default: the bundle's export time)
        #[arg(long)]
        as_of: Option<String>,
        /// Read a version-1 bundle (unsigned header, from an older consentd) instead of failing it
        #[arg(long)]
        accept_version_1: bool,
    },
    /// Sign a checkpoint of the office's log now and print it
    Checkpoint,
}

/// A one-line progress indicator on stderr: redrawn in place on a terminal, an occasional plain
/// line otherwise (so logs of long runs show life), nothing for short runs.
pub struct Progress {
    enabled: bool,
    tty: bool,
    what: &'static str,
    started: Instant,
    last: Instant,
    drawn: bool,
}

impl Progress {
    pub fn new(enabled: bool, what: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            what,
            started: now,
            last: now,
            drawn: false,
        }
    }

    pub fn update(&mut self, text: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let every = if self.tty {
            PROGRESS_EVERY
        } else {
            PROGRESS_LINE_EVERY
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}: {} ({secs:.0} s)", self.what, text());
        } else {
            let _ = writeln!(err, "{}: {} ({secs:.0} s)", self.what, text());
        }
        self.drawn = true;
    }

    pub fn done(&mut self, text: impl FnOnce() -> String) {
        if self.enabled && self.drawn {
            let mut err = std::io::stderr().lock();
            let end = if self.tty { "\r\x1b[2K" } else { "" };
            let _ = writeln!(err, "{end}{}: {}", self.what, text());
        }
        self.drawn = false;
    }
}

fn threads_default() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, String> {
    std::fs::File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Verifies `file` (and `previous`); failures from both are merged into one outcome.
pub fn verify_files(
    file: &Path,
    previous: Option<&Path>,
    opts: &Options,
) -> Result<Outcome, String> {
    let mut outcome = verify::verify(open(file)?, opts);
    if let Some(prev) = previous {
        let old = verify::verify(
            open(prev)?,
            &Options {
                collect: false,
                progress: false,
                ..*opts
            },
        );
        let mut extra = Vec::new();
        if !old.ok() {
            extra.push(verify::Failure {
                check: "consistency",
                office: None,
                record: None,
                item: None,
                line: None,
                detail: format!(
                    "the previous bundle {} does not verify itself ({} failures)",
                    prev.display(),
                    old.failures_total
                ),
            });
        }
        extra.extend(verify::check_previous(&old.logs, &outcome.logs));
        outcome.failures_total += extra.len() as u64;
        outcome.failures.extend(extra);
        outcome.report["failures_total"] = json!(outcome.failures_total);
        outcome.report["failures"] = json!(outcome.failures);
        outcome.report["ok"] = json!(outcome.ok());
        outcome.report["previous"] = json!(prev.display().to_string());
    }
    Ok(outcome)
}

/// Runs an audit command; returns the process exit code.
pub fn main(cmd: AuditCmd, socket: &Path, json_out: bool) -> i32 {
    match run(cmd, socket, json_out) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {}", message.replace('\n', " "));
            1
        }
    }
}

fn print(json_out: bool, v: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        crate::ctl::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(v).expect("json")
        ));
    } else {
        crate::ctl::emit(&human(v));
    }
}

fn run(cmd: AuditCmd, socket: &Path, json_out: bool) -> Result<i32, String> {
    let progress = std::io::stderr().is_terminal();
    match cmd {
        AuditCmd::Export { out } => {
            let v = super::export::export_to_file(socket, &out, progress)?;
            print(json_out, &v, |v| {
                format!(
                    "wrote {} ({} envelopes, {} tombstones, {} checkpoints, {} bytes)\n",
                    v["out"].as_str().unwrap_or("-"),
                    v["envelopes"],
                    v["tombstones"],
                    v["checkpoints"],
                    v["bytes"]
                )
            });
            Ok(0)
        }
        AuditCmd::Checkpoint => {
            let v = Client::connect(socket)
                .and_then(|mut c| c.call(&Request::AuditCheckpoint(Empty {})))
                .map_err(|e| e.to_string())?;
            print(json_out, &v, |v| {
                v["note"].as_str().unwrap_or("").to_string()
            });
            Ok(0)
        }
        AuditCmd::Verify {
            file,
            root_pub,
            previous,
            threads,
            accept_version_1,
        } => {
            let root_pub =
                consentd_sync::keys::read_public_key(&root_pub).map_err(|e| e.to_string())?;
            let opts = Options {
                root_pub,
                threads: threads.unwrap_or_else(threads_default),
                collect: false,
                progress,
                accept_version_1,
            };
            let outcome = verify_files(&file, previous.as_deref(), &opts)?;
            print(json_out, &outcome.report, human_verify);
            if outcome.ok() {
                Ok(0)
            } else {
                let first = &outcome.failures[0];
                eprintln!(
                    "error: verification failed: {} check(s) failed; first: {} {}",
                    outcome.failures_total,
                    first.check,
                    describe(first)
                );
                Ok(1)
            }
        }
        AuditCmd::Report {
            file,
            root_pub,
            csv,
            as_of,
            accept_version_1,
        } => {
            // `--json` promises exactly one JSON value on stdout; CSV is not one (it printed CSV;
            // found by an exploratory session).
            if csv && json_out {
                return Err("--csv and --json each choose the output's form: give one".into());
            }
            let root_pub =
                consentd_sync::keys::read_public_key(&root_pub).map_err(|e| e.to_string())?;
            let opts = Options {
                root_pub,
                threads: threads_default(),
                collect: true,
                progress,
                accept_version_1,
            };
            let outcome = verify_files(&file, None, &opts)?;
            if !outcome.ok() {
                return Err(format!(
                    "{} does not verify ({} failed checks; first: {} {}): a report is computed only from verified data; run consentctl audit verify for the details",
                    file.display(),
                    outcome.failures_total,
                    outcome.failures[0].check,
                    describe(&outcome.failures[0])
                ));
            }
            let signed_header = outcome.report["header_signed"] == Value::Bool(true);
            let verified = outcome.verified.expect("collect was asked for");
            let as_of = match as_of {
                Some(t) => crate::office::parse_time(&t).map_err(|e| e.to_string())?,
                // A version-1 header's export time is anyone's edit: deadlines are not judged
                // at it silently (found by an exploratory session).
                None if !signed_header => {
                    return Err(format!(
                        "{} is a version-1 bundle: its export time is not signed, so the report \
                         needs --as-of",
                        file.display()
                    ))
                }
                None => crate::office::parse_time(&verified.exported_at)
                    .map_err(|e| format!("bundle export time: {e}"))?,
            };
            let report = super::report::build(&verified, as_of);
            if csv {
                crate::ctl::emit(&super::report::csv(&report));
            } else {
                print(json_out, &report, super::report::human);
            }
            Ok(0)
        }
    }
}

fn describe(f: &verify::Failure) -> String {
    let mut parts = Vec::new();
    if let Some(o) = &f.office {
        parts.push(format!("office {o}"));
    }
    if let Some(r) = &f.record {
        parts.push(format!("record {r}"));
    }
    if let Some(i) = &f.item {
        parts.push(format!("item {i}"));
    }
    if let Some(l) = f.line {
        parts.push(format!("line {l}"));
    }
    parts.push(f.detail.clone());
    parts.join(", ")
}

fn human_verify(v: &Value) -> String {
    let ok = v["ok"] == Value::Bool(true);
    let c = &v["counts"];
    let mut out = format!(
        "{}: network {}, exported by {} at {}{}\n{} envelopes, {} records, {} tombstones, {} checkpoints, {} log leaves\n",
        if ok { "OK" } else { "FAILED" },
        v["network"].as_str().unwrap_or("-"),
        v["exported_by"].as_str().unwrap_or("-"),
        v["exported_at"].as_str().unwrap_or("-"),
        if v["header_signed"] == Value::Bool(false) {
            " (unsigned: a version-1 bundle, these two are its header's claims)"
        } else {
            ""
        },
        c["envelopes"],
        c["records"],
        c["tombstones"],
        c["checkpoints"],
        c["leaves"]
    );
    let withheld = c["withheld"].as_u64().unwrap_or(0);
    if withheld > 0 {
        out += &format!(
            "{withheld} log leaves ({} records) withheld from {} by their offices' signed refusals (transfer policy), not dropped\n",
            c["withheld_records"],
            v["exported_by"].as_str().unwrap_or("-")
        );
    }
    out += &format!(
        "\n{:<8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>9} {:>9}\n",
        "OFFICE",
        "ENVELOPES",
        "CONSENT",
        "REQUEST",
        "TRANSFER",
        "TOMBSTONES",
        "LOG_SIZE",
        "WITHHELD"
    );
    if let Some(offices) = v["by_office"].as_object() {
        for (id, o) in offices {
            let n = |k: &str| o["records"][k].as_u64().unwrap_or(0);
            out += &format!(
                "{:<8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>9} {:>9}\n",
                id,
                o["envelopes"].as_u64().unwrap_or(0),
                n("consent"),
                n("request"),
                n("transfer"),
                o["tombstones"].as_u64().unwrap_or(0),
                o["log_size"].as_u64().map_or("-".into(), |s| s.to_string()),
                o["withheld"].as_u64().unwrap_or(0)
            );
        }
    }
    let failures = v["failures"].as_array().cloned().unwrap_or_default();
    if !failures.is_empty() {
        out += &format!("\n{} FAILED CHECKS:\n", v["failures_total"]);
        for f in failures {
            let f: verify::Failure = verify::Failure {
                check: "",
                office: f["office"].as_str().map(str::to_string),
                record: f["record"].as_str().map(str::to_string),
                item: f["item"].as_str().map(str::to_string),
                line: f["line"].as_u64(),
                detail: format!(
                    "{}: {}",
                    f["check"].as_str().unwrap_or("-"),
                    f["detail"].as_str().unwrap_or("-")
                ),
            };
            out += &format!("  {}\n", describe(&f));
        }
    }
    out
}
