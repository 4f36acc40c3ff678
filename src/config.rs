//! The office daemon's TOML configuration, validated before anything starts.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt `operators` must not silently leave
//! the control socket without its intended access list. Relative paths are resolved against the
//! directory holding the config file, so a network directory can be moved as a whole.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest config file read.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;
/// Most uids in one role list.
pub const ROLE_UIDS_MAX: usize = 1024;

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This office's id in the roster (e.g. `de`).
    pub office: String,
    /// This office's jurisdiction code (e.g. `DE`); must equal the roster's.
    pub jurisdiction: String,
    pub data_dir: PathBuf,
    /// The signed roster file.
    pub roster: PathBuf,
    /// Hex of the network's root public key, pinned here: the only key trusted to sign the roster.
    pub root_pub: String,
    /// Secret key files (mode 0600).
    pub signing_key: PathBuf,
    pub transport_key: PathBuf,
    /// Secret key of the keyed hash under which subject identifiers are indexed.
    pub index_key: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Start on a roster whose serial is lower than the highest this office has run with: a
    /// deliberate rollback (off by default; an older roster could re-admit a retired office).
    /// Remove it again once the office has started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_roster_rollback: bool,
    pub control: ControlConfig,
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub consent: ConsentConfig,
    #[serde(default)]
    pub transfer: crate::policy::TransferConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// Retention schedule overrides and pass settings (docs/retention.md).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rule id → period (`6m`, `2y`), within the limits the privacy statement sets.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub periods: std::collections::BTreeMap<String, String>,
    /// Compact the store after a pass that deleted at least this many records.
    #[serde(default = "default_compact_after")]
    pub compact_after_deletions: u64,
    /// Run the retention pass daily in the daemon.
    #[serde(default = "default_true")]
    pub daily_pass: bool,
    /// Allow a real pass `--as-of` a future time (staging and tests only): it deletes now what
    /// is due only then, records a legal duty keeps among them. Off: refused, use `--dry-run`.
    #[serde(default)]
    pub allow_future_passes: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            periods: Default::default(),
            compact_after_deletions: default_compact_after(),
            daily_pass: true,
            allow_future_passes: false,
        }
    }
}

fn default_compact_after() -> u64 {
    crate::retention::COMPACT_AFTER_DEFAULT
}

fn default_true() -> bool {
    true
}

/// Legal clocks (docs/legal-clocks.md).
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// Directory of holiday calendar files (`<JURISDICTION>.txt`) replacing the built-in ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_dir: Option<PathBuf>,
    /// Days for deadlines the law leaves open (China; US outside California).
    #[serde(default = "default_policy_days")]
    pub company_policy_days: u32,
    /// The office's IANA time zone (e.g. `America/New_York`): legal dates of jurisdictions
    /// without a zone of their own (US, other US-xx, AU, unlisted) are its local dates. Default:
    /// the zone of the office's jurisdiction (`clock::office_zone_default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            calendar_dir: None,
            company_policy_days: default_policy_days(),
            time_zone: None,
        }
    }
}

fn default_policy_days() -> u32 {
    crate::clock::COMPANY_POLICY_DAYS_DEFAULT
}

/// Consent vocabulary additions.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Purposes this office uses beyond the built-in vocabulary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    /// Purposes (built-in or added) that count as marketing: refused for minors without
    /// parental consent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marketing_purposes: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Socket file mode, octal string (default "0660"): who may connect at all. Roles decide the rest.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Uids that may read and write.
    #[serde(default)]
    pub operators: Vec<u32>,
    /// Uids that may only read.
    #[serde(default)]
    pub auditors: Vec<u32>,
}

/// Longest control socket path, in bytes: `sockaddr_un.sun_path` is 108 bytes on Linux, one of
/// them the terminating NUL.
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

fn default_socket_mode() -> String {
    "0660".into()
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub office: String,
    pub address: SocketAddr,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "consentd=debug".
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: default_log_filter(),
        }
    }
}

fn default_log_filter() -> String {
    "info".into()
}

/// What a uid may do on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Operator,
    Auditor,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {CONFIG_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        // Read through the limit, not by the file's size: a pipe (`--config /dev/stdin`) has
        // none, and 3 GB piped in took 11.7 GB of memory (found by an exploratory session).
        let mut text = String::new();
        {
            use std::io::Read;
            std::fs::File::open(path)
                .map_err(read_err)?
                .take(CONFIG_BYTES_MAX + 1)
                .read_to_string(&mut text)
                .map_err(read_err)?;
        }
        if text.len() as u64 > CONFIG_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut config: Config =
            toml::from_str(&text).map_err(|e| invalid(one_line(&e.to_string())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.roster,
            &mut self.signing_key,
            &mut self.transport_key,
            &mut self.index_key,
            &mut self.control.socket,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(dir) = &mut self.clock.calendar_dir {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    /// Checks what can be checked without touching other files.
    pub fn validate(&self) -> Result<(), String> {
        if !is_office_id(&self.office) {
            return Err(format!(
                "office {:?} is not a valid office id (a-z, 0-9, -; starting with a letter)",
                self.office
            ));
        }
        if self.jurisdiction.is_empty() || self.jurisdiction.len() > 8 {
            return Err(format!("jurisdiction {:?} is not valid", self.jurisdiction));
        }
        self.socket_mode()?;
        // A Unix socket's path must fit `sockaddr_un.sun_path` with its NUL: longer ones passed
        // `check-config` and failed at start with "path must be shorter than SUN_LEN".
        let socket_len = self.control.socket.as_os_str().len();
        if socket_len > SOCKET_PATH_BYTES_MAX {
            return Err(format!(
                "control.socket {} is {socket_len} bytes long; a Unix socket path is at most {SOCKET_PATH_BYTES_MAX} bytes (sockaddr_un): choose a shorter path",
                self.control.socket.display()
            ));
        }
        for (name, list) in [
            ("control.operators", &self.control.operators),
            ("control.auditors", &self.control.auditors),
        ] {
            if list.len() > ROLE_UIDS_MAX {
                return Err(format!("{name} lists more than {ROLE_UIDS_MAX} uids"));
            }
        }
        if let Some(uid) = self
            .control
            .operators
            .iter()
            .find(|u| self.control.auditors.contains(u))
        {
            return Err(format!(
                "uid {uid} is listed as both operator and auditor; give it one role"
            ));
        }
        let days = self.clock.company_policy_days;
        if !(1..=crate::clock::COMPANY_POLICY_DAYS_MAX).contains(&days) {
            return Err(format!(
                "clock.company_policy_days = {days} is outside 1..={}: the privacy statement §8.4 promises an answer within one month of receipt",
                crate::clock::COMPANY_POLICY_DAYS_MAX
            ));
        }
        self.time_zone()?;
        for p in self
            .consent
            .purposes
            .iter()
            .chain(&self.consent.marketing_purposes)
        {
            crate::vocab::check_purpose_syntax(p).map_err(|e| format!("consent: {e}"))?;
        }
        for p in &self.consent.marketing_purposes {
            if !crate::vocab::PURPOSES.contains(&p.as_str()) && !self.consent.purposes.contains(p) {
                return Err(format!(
                    "consent.marketing_purposes names {p:?}, which is neither built in nor in consent.purposes"
                ));
            }
        }
        crate::policy::TransferPolicy::from_config(&self.transfer)?;
        for peer in &self.peers {
            if peer.office == self.office {
                return Err(format!("peer {:?} is this office itself", peer.office));
            }
        }
        Ok(())
    }

    pub fn socket_mode(&self) -> Result<u32, String> {
        let text = self.control.socket_mode.trim_start_matches("0o");
        u32::from_str_radix(text, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "control.socket_mode {:?} is not an octal file mode such as \"0660\"",
                    self.control.socket_mode
                )
            })
    }

    /// The office's time zone: `[clock] time_zone`, else the default for its jurisdiction.
    pub fn time_zone(&self) -> Result<chrono_tz::Tz, String> {
        match &self.clock.time_zone {
            Some(name) => crate::clock::parse_zone(name),
            None => Ok(crate::clock::office_zone_default(&self.jurisdiction)),
        }
    }

    pub fn role_of(&self, uid: u32) -> Option<Role> {
        if self.control.operators.contains(&uid) {
            Some(Role::Operator)
        } else if self.control.auditors.contains(&uid) {
            Some(Role::Auditor)
        } else {
            None
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

pub fn is_office_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Longest parser message kept in an error: the parser quotes the offending line, which may be
/// as long as the file.
const MESSAGE_CHARS_MAX: usize = 300;

fn one_line(s: &str) -> String {
    let line = s
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && l.trim_matches('^').trim() != "")
        .collect::<Vec<_>>()
        .join("; ");
    match line.char_indices().nth(MESSAGE_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
office = "de"
jurisdiction = "DE"
data_dir = "data"
roster = "../roster.json"
root_pub = "00"
signing_key = "signing.key"
transport_key = "transport.key"
index_key = "index.key"
listen = "127.0.0.1:7400"

[control]
socket = "control.sock"
operators = [1000]
auditors = [1001]

[[peer]]
office = "sg"
address = "127.0.0.1:7401"
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("consentd.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.role_of(1000), Some(Role::Operator));
        assert_eq!(c.role_of(1001), Some(Role::Auditor));
        assert_eq!(c.role_of(1002), None);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.peers.len(), 1);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("[control]", "colour = \"red\"\n[control]");
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    /// `[clock] time_zone` must name an IANA zone; without it, the office's jurisdiction's.
    #[test]
    fn time_zone_is_validated_and_defaults_to_the_jurisdiction_s() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(c.time_zone().unwrap(), chrono_tz::Tz::Europe__Berlin);
        let text = GOOD.replace(
            "[control]",
            "[clock]\ntime_zone = \"Asia/Tokyo\"\n[control]",
        );
        let c = Config::load(&write(dir.path(), &text)).unwrap();
        assert_eq!(c.time_zone().unwrap(), chrono_tz::Tz::Asia__Tokyo);
        let text = GOOD.replace(
            "[control]",
            "[clock]\ntime_zone = \"Mars/Olympus\"\n[control]",
        );
        let err = Config::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clock.time_zone") && err.contains("Mars/Olympus"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn a_uid_cannot_hold_two_roles() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("auditors = [1001]", "auditors = [1000]");
        assert!(Config::load(&write(dir.path(), &text)).is_err());
    }
}
