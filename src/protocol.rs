//! The control-socket protocol between `consentctl` (or any local client) and `consentd`.
//!
//! Frame layout, both directions:
//!
//! | bytes | field                                                       |
//! |-------|-------------------------------------------------------------|
//! | 4     | payload length, u32 big-endian                              |
//! | n     | payload: one UTF-8 JSON object                              |
//!
//! A request payload is `{"v": 1, "request": {"op": "consent.grant", ...args}}`; a response payload is
//! `{"ok": VALUE}` or `{"error": "one line"}`. The version lets a newer daemon refuse an older client
//! with a clear message instead of misreading it. Requests are limited to [`REQUEST_BYTES_MAX`]; the
//! daemon answers a larger one with an error without reading it into memory.

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request the daemon reads. Import files are sent in chunks below this.
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Largest response a client accepts (listings are bounded by [`LIST_ROWS_MAX`] rows).
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// Most rows a listing returns.
pub const LIST_ROWS_MAX: usize = 100_000;
/// Most records in one `import` request; consentctl splits files into chunks of this size.
pub const IMPORT_CHUNK_RECORDS_MAX: usize = 1_000;
/// Longest free text (evidence, notes, reasons) in one field.
pub const TEXT_BYTES_MAX: usize = 4096;
/// How long a client waits for a response before giving up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a client waits for the answer to a retention pass or a request's closing (which
/// erases, and waits for any pass running): they take as long as the deletions do. Measured at
/// 1,000,000 records: a pass deleting 250,000 answered in 103 s, and one deleting 260,000, which
/// then compacted the store, took longer than [`CLIENT_TIMEOUT`], so `consentctl retention run`
/// reported a failure while the pass went on and finished.
pub const DELETION_CLIENT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Defines [`Request`] from one table: each variant, its arguments and its wire names (the first
/// is the one written, the others are read too). Written by serde's derive (`{"op": name,
/// …arguments}`, `op` first); read by the `Deserialize` below, whose names come from the same
/// table.
macro_rules! requests {
    (
        $(#[$doc:meta])*
        pub enum Request {
            $($(#[$vdoc:meta])* $variant:ident($args:ty) = $name:literal $(, $alias:literal)*;)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Serialize, Debug, Clone)]
        #[serde(tag = "op")]
        pub enum Request {
            $($(#[$vdoc])* #[serde(rename = $name)] $variant($args),)*
        }

        impl Request {
            /// Every wire name, those only read too.
            pub const OPS: &'static [&'static str] = &[$($name, $($alias,)*)*];

            /// The operation's wire name, for logs and errors.
            pub fn op(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => $name,)*
                }
            }

            /// The request named `op`, its arguments read from `args`.
            fn read<'de, D: Deserializer<'de>>(op: &str, args: D) -> Result<Request, D::Error> {
                match op {
                    $($name $(| $alias)* => <$args>::deserialize(args).map(Request::$variant),)*
                    _ => Err(de::Error::unknown_variant(op, Request::OPS)),
                }
            }
        }

        /// What serde's derive reads, to check `Request`'s own reading against.
        #[cfg(test)]
        #[derive(Deserialize, Debug)]
        #[serde(tag = "op")]
        #[allow(dead_code, reason = "compared through Debug")]
        enum DerivedRequest {
            $(#[serde(rename = $name $(, alias = $alias)*)] $variant($args),)*
        }
    };
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub v: u32,
    pub request: Request,
}

requests! {
    /// Every operation of the control socket. Write operations are also the lines of an import
    /// file. Each is named on the wire by its `op` key (the first name; the others are accepted
    /// too), beside its arguments: `{"op": "consent.grant", "subject": …}`.
    pub enum Request {
        ConsentGrant(ConsentGrant) = "consent.grant", "consent grant";
        ConsentWithdraw(ConsentWithdraw) = "consent.withdraw", "consent withdraw";
        ConsentCheck(ConsentCheck) = "consent.check", "consent check";
        ConsentHistory(SubjectArg) = "consent.history", "consent history";
        RequestOpen(RequestOpen) = "request.open", "request open";
        RequestExtend(RequestExtend) = "request.extend", "request extend";
        RequestClose(RequestClose) = "request.close", "request close";
        RequestUpdate(RequestUpdate) = "request.update", "request update";
        RequestList(RequestList) = "request.list", "request list";
        TransferRecord(TransferRecordArgs) = "transfer.record", "transfer record";
        TransferList(TransferList) = "transfer.list", "transfer list";
        SubjectExport(SubjectArg) = "subject.export", "subject export";
        Import(Import) = "import";
        Status(Empty) = "status";
        Peers(Empty) = "peers";
        /// Signs a checkpoint of the office's log now (if it grew) and returns it.
        AuditCheckpoint(Empty) = "audit.checkpoint";
        /// Streams an audit bundle: see `audit::export` for the frames that follow the answer.
        AuditExport(Empty) = "audit.export";
        /// Deletes every record past its retention (retention/pass.rs).
        RetentionRun(RetentionRun) = "retention.run", "retention run";
        HoldSet(HoldSet) = "hold.set", "hold set";
        HoldClear(HoldClear) = "hold.clear", "hold clear";
    }
}

/// Why not serde's derive: an internally tagged enum copies every field of its object into
/// serde's private `Content` before the variant reads them, and an import's records, requests
/// inside the import request, were copied twice (1.7 µs of a record's ~76 µs of daemon CPU,
/// thirty-sixth session). A request whose `op` comes first, as [`Request`]'s `Serialize` writes
/// it, is read straight into its variant; one whose `op` comes later is read into a JSON object
/// first, as serde would buffer it. Either way the variant reads the other fields (all argument
/// types refuse unknown ones).
impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Request, D::Error> {
        deserializer.deserialize_map(RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> de::Visitor<'de> for RequestVisitor {
    type Value = Request;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a request: an object with its \"op\"")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Request, A::Error> {
        use de::Error;
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::missing_field("op"));
        };
        if first == "op" {
            let op: String = map.next_value()?;
            // The arguments refuse unknown fields, and no operation has an argument named
            // `op`: their "unknown field `op`" can only be a second `op`, which the slow path
            // below calls what it is. Renamed here rather than checked key by key, which would
            // cost every import line a String per field.
            return Request::read(&op, de::value::MapAccessDeserializer::new(map)).map_err(|e| {
                match e.to_string().starts_with("unknown field `op`") {
                    true => A::Error::custom("duplicate field `op`"),
                    false => e,
                }
            });
        }
        let mut fields = serde_json::Map::new();
        fields.insert(first, map.next_value()?);
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let value = map.next_value()?;
            fields.insert(key, value);
        }
        match fields.remove("op") {
            Some(Value::String(op)) => {
                Request::read(&op, Value::Object(fields)).map_err(A::Error::custom)
            }
            Some(other) => Err(A::Error::custom(format_args!(
                "invalid type: {other}, expected the name of an operation"
            ))),
            None => Err(A::Error::missing_field("op")),
        }
    }
}

impl Request {
    /// How long a client waits for this request's answer.
    pub fn answer_within(&self) -> Duration {
        match self {
            Request::RetentionRun(_) | Request::RequestClose(_) => DELETION_CLIENT_TIMEOUT,
            _ => CLIENT_TIMEOUT,
        }
    }

    /// Whether the operation changes state (refused for the auditor role). A retention dry run
    /// changes nothing: an auditor may preview what a pass would delete.
    pub fn is_write(&self) -> bool {
        match self {
            Request::RetentionRun(r) => !r.dry_run,
            _ => matches!(
                self,
                Request::ConsentGrant(_)
                    | Request::ConsentWithdraw(_)
                    | Request::RequestOpen(_)
                    | Request::RequestExtend(_)
                    | Request::RequestClose(_)
                    | Request::RequestUpdate(_)
                    | Request::TransferRecord(_)
                    | Request::Import(_)
                    | Request::HoldSet(_)
                    | Request::HoldClear(_)
            ),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SubjectArg {
    pub subject: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsentGrant {
    pub subject: String,
    pub purpose: String,
    pub basis: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub evidence: Option<String>,
    /// Version of the privacy notice shown (required with basis `consent` unless the evidence names it).
    #[serde(default)]
    pub notice: Option<String>,
    /// The person is under 18.
    #[serde(default)]
    pub under_18: bool,
    /// Evidence of a parent's or guardian's consent, for a person under 18.
    #[serde(default)]
    pub parental_consent: Option<String>,
    /// Kind of person: customer, end_user (default) or visitor.
    #[serde(default)]
    pub person: Option<String>,
    /// controller or processor; default follows the kind of person.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

impl ConsentGrant {
    /// A grant with every optional field empty (service, evidence, notice, …), to complete with
    /// struct update syntax.
    pub fn new(subject: impl Into<String>, purpose: &str, basis: &str) -> ConsentGrant {
        ConsentGrant {
            subject: subject.into(),
            purpose: purpose.into(),
            basis: basis.into(),
            service: None,
            evidence: None,
            notice: None,
            under_18: false,
            parental_consent: None,
            person: None,
            role: None,
            at: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsentWithdraw {
    pub subject: String,
    pub purpose: String,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConsentCheck {
    pub subject: String,
    pub purpose: String,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestOpen {
    pub subject: String,
    pub kind: String,
    #[serde(default)]
    pub received: Option<String>,
    #[serde(default)]
    pub jurisdiction: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestExtend {
    pub id: String,
    pub reason: String,
    /// When the person was told (default now).
    #[serde(default)]
    pub at: Option<String>,
    /// The new date told to the person, where the law fixes no extension length (SG, AU, CN).
    #[serde(default)]
    pub until: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestUpdate {
    pub id: String,
    /// identity_requested, identity_received or in_progress
    pub status: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestClose {
    pub id: String,
    pub outcome: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestList {
    #[serde(default)]
    pub overdue: bool,
    /// Only open requests due within this many days of `as_of` (`7d` or `7`).
    #[serde(default)]
    pub due_within: Option<String>,
    #[serde(default)]
    pub as_of: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TransferRecordArgs {
    pub to: String,
    pub recipient: String,
    pub categories: Vec<String>,
    pub mechanism: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub tia: Option<String>,
    #[serde(default)]
    pub recipient_kind: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct TransferList {
    #[serde(default)]
    pub subject: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionRun {
    /// Judge expiry at this time (default now; may be in the future, to preview).
    #[serde(default)]
    pub as_of: Option<String>,
    /// Count what would be deleted; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HoldSet {
    pub subject: String,
    pub reason: String,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HoldClear {
    pub subject: String,
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// Write requests, in file order. `first_line` numbers them in error messages.
    pub records: Vec<Request>,
    #[serde(default)]
    pub first_line: usize,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ResponseFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ResponseFrame {
    pub fn ok(value: Value) -> Self {
        ResponseFrame {
            ok: Some(value),
            error: None,
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        let message: String = message.into();
        // One line, always: a multi-line error would break `error: …` parsing by scripts.
        let line = message.replace(['\n', '\r'], " ");
        ResponseFrame {
            ok: None,
            error: Some(line),
        }
    }
}

/// Why a request payload was refused before it reached the office.
#[derive(Debug, thiserror::Error)]
pub enum RequestRefusal {
    /// Not JSON at all.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// JSON naming a protocol version this daemon does not speak.
    #[error("protocol version {0} is not supported; this consentd speaks version {PROTOCOL_VERSION} (use the consentctl that came with it)")]
    Version(u64),
    /// JSON that is not a known request with valid arguments.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Parses one control-socket request payload, as the daemon does for every request, once: an
/// old client gets a version error, not a parse error, whether or not the body parses. Pure, and
/// the entry point of the `control_request` fuzz target.
///
/// Why typed first: a request is parsed once on the common path. Parsing it as a `Value` first,
/// to read the version, parsed an import chunk (up to `REQUEST_BYTES_MAX`) twice (2.6 % of an
/// import's CPU with the export check's third parse, fifteenth session). The `Value` parse runs
/// only for a payload that is not a valid request, to say why.
pub fn parse_request(payload: &[u8]) -> Result<RequestFrame, RequestRefusal> {
    let typed = match serde_json::from_slice::<RequestFrame>(payload) {
        Ok(frame) if frame.v == PROTOCOL_VERSION => return Ok(frame),
        Ok(frame) => return Err(RequestRefusal::Version(u64::from(frame.v))),
        Err(e) => e,
    };
    match serde_json::from_slice::<Value>(payload) {
        Err(e) => Err(RequestRefusal::Malformed(e.to_string())),
        Ok(v) => match v.get("v").and_then(Value::as_u64) {
            Some(ver) if ver != u64::from(PROTOCOL_VERSION) => Err(RequestRefusal::Version(ver)),
            _ => Err(RequestRefusal::Invalid(typed.to_string())),
        },
    }
}

/// Encodes one frame: length prefix plus payload.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload below 4 GiB");
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What to do about a failed connection: a socket that refuses this user is not a stopped
/// daemon (the hint asked whether it was running; found by an exploratory session).
fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "this user may not use the socket: it must be in the socket's group, and its uid listed under [control] operators or auditors"
        }
        _ => "is the daemon running? set --socket or CONSENTD_SOCKET",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to consentd at {path}: {source} ({})",
        connect_hint(source)
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection to consentd failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection without an answer (it stopped, or made room for others
    /// after a long idle time): "failed to fill whole buffer" said nothing of that.
    #[error("consentd closed the connection before it answered (it may have stopped: see its log); retry once it is back")]
    Closed,
    #[error("consentd sent a malformed response: {0}")]
    Malformed(String),
    /// The daemon refused the request; the message is its own one-line explanation.
    #[error("{0}")]
    Refused(String),
}

/// A blocking control-socket client: one connection, any number of sequential calls.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(Client { stream })
    }

    pub fn call(&mut self, request: &Request) -> Result<Value, ClientError> {
        let frame = RequestFrame {
            v: PROTOCOL_VERSION,
            request: request.clone(),
        };
        let payload = serde_json::to_vec(&frame).expect("requests serialise");
        self.call_within(&payload, request.answer_within())
    }

    /// Sends an already-encoded payload. Public so tests can send what a well-behaved client never would.
    pub fn call_raw(&mut self, payload: &[u8]) -> Result<Value, ClientError> {
        self.call_within(payload, CLIENT_TIMEOUT)
    }

    /// Sends an encoded payload and waits at most `timeout` for the answer to begin.
    fn call_within(&mut self, payload: &[u8], timeout: Duration) -> Result<Value, ClientError> {
        let written = self.stream.write_all(&encode_frame(payload));
        // If the daemon refused an oversized request it answers and closes early; our write then
        // fails, but its answer is already waiting to be read, and is the better error.
        let response = wait_readable(&self.stream, timeout)
            .map_err(ClientError::Io)
            .and_then(|()| read_frame(&mut self.stream, RESPONSE_BYTES_MAX));
        match (written, response) {
            (_, Ok(bytes)) => {
                let frame: ResponseFrame = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Malformed(e.to_string()))?;
                match (frame.ok, frame.error) {
                    (_, Some(error)) => Err(ClientError::Refused(error)),
                    (Some(value), None) => Ok(value),
                    (None, None) => Err(ClientError::Malformed("neither ok nor error".into())),
                }
            }
            (Err(e), Err(_)) => Err(closed_or(e)),
            (Ok(()), Err(ClientError::Io(e))) => Err(closed_or(e)),
            (Ok(()), Err(e)) => Err(e),
        }
    }
}

/// Waits until `stream` has something to read (data, end of stream or an error), at most
/// `timeout`.
///
/// Why not a blocking `read` straight away: Linux wakes a thread blocked in `read` on a Unix
/// stream whenever the peer consumes what the thread wrote (the socket's "writable" wake-up
/// reaches every sleeper on the socket). The daemon reads a request just after it is sent, so
/// every call woke its client once for nothing, and the daemon paid for the wake-up (3 % of the
/// machine's CPU under the 64 bench clients). `poll` for `POLLIN` is woken only for input.
fn wait_readable(stream: &UnixStream, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // A signal interrupts `poll`; the wait then goes on to the same deadline, not a fresh one.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let left_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid `pollfd` for a descriptor `stream` keeps open during the call.
        match unsafe { libc::poll(&mut fd, 1, left_ms) } {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from consentd within {timeout:?}"),
                ))
            }
            n if n > 0 => return Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// [`ClientError::Closed`] for the errors of a connection the daemon closed, `Io` otherwise.
fn closed_or(e: std::io::Error) -> ClientError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
            ClientError::Closed
        }
        _ => ClientError::Io(e),
    }
}

/// Reads one frame from a blocking stream, refusing payloads over `limit` bytes.
pub fn read_frame(stream: &mut impl Read, limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(ClientError::Malformed(format!(
            "response of {len} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that closes the connection without answering reads as that, not as "failed to
    /// fill whole buffer" (found by an exploratory session).
    #[test]
    fn a_connection_closed_before_the_answer_says_so() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut theirs = theirs;
            let _ = read_frame(&mut theirs, REQUEST_BYTES_MAX);
            // Half an answer, then gone.
            theirs.write_all(&[0, 0]).unwrap();
        });
        let mut client = Client { stream: ours };
        let e = client.call_raw(b"{}").unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, ClientError::Closed), "{e:?}");
        assert!(e
            .to_string()
            .contains("closed the connection before it answered"));
    }

    #[test]
    fn requests_are_tagged_by_op_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(
            r#"{"op":"consent.grant","subject":"a@b.co","purpose":"marketing","basis":"consent"}"#,
        )
        .unwrap();
        assert_eq!(r.op(), "consent.grant");
        assert!(r.is_write());
        let bad = serde_json::from_str::<Request>(
            r#"{"op":"consent.check","subject":"a@b.co","purpose":"m","colour":"red"}"#,
        );
        assert!(bad.is_err(), "unknown field accepted");
        let spaced: Request =
            serde_json::from_str(r#"{"op":"consent withdraw","subject":"a@b.co","purpose":"m"}"#)
                .unwrap();
        assert_eq!(spaced.op(), "consent.withdraw");
        // A second `op` is a duplicate, wherever the first one stands.
        for twice in [
            r#"{"op":"consent.grant","op":"consent.withdraw","subject":"a@b.co","purpose":"m"}"#,
            r#"{"subject":"a@b.co","op":"consent.grant","purpose":"m","op":"consent.withdraw"}"#,
        ] {
            let e = serde_json::from_str::<Request>(twice)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("duplicate field `op`"), "{e}");
        }
    }

    /// One parse on the common path, and the same refusal as before for everything else: the
    /// version wins over the body, malformed JSON is malformed, a bad body at our version is
    /// invalid.
    #[test]
    fn a_request_is_refused_for_the_first_thing_wrong_with_it() {
        let status = format!(r#"{{"v":{PROTOCOL_VERSION},"request":{{"op":"status"}}}}"#);
        assert_eq!(
            parse_request(status.as_bytes()).unwrap().request.op(),
            "status"
        );
        let cases: [(&[u8], &str); 5] = [
            (br#"{"v":99,"request":{"op":"status"}}"#, "version 99"),
            (br#"{"v":99,"request":{"op":"no.such"}}"#, "version 99"),
            (br#"{"v":1,"request":{"op":"no.such"}}"#, "invalid request"),
            (br#"{"request":{"op":"status"}}"#, "invalid request"),
            (b"{not json", "malformed request"),
        ];
        for (payload, want) in cases {
            let e = parse_request(payload).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{}: {e}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    /// `Request`'s reading agrees with serde's derived one on every operation, its names, its
    /// `op` first, last or absent, and arguments right, wrong or unknown: both read the same
    /// request or both refuse.
    #[test]
    fn a_request_reads_as_serde_derives_it() {
        let args = [
            r#""#,
            r#""subject":"a@b.co""#,
            r#""subject":"a@b.co","purpose":"marketing""#,
            r#""subject":"a@b.co","purpose":"marketing","basis":"consent""#,
            r#""subject":"a@b.co","purpose":"marketing","basis":"consent","service":"sms","evidence":"web form v3","at":"2026-01-31T00:00:00Z","under_18":false"#,
            r#""subject":"a@b.co","purpose":"marketing","basis":"consent","colour":"red""#,
            r#""subject":7"#,
            r#""records":[{"op":"consent.grant","subject":"a@b.co","purpose":"m","basis":"consent"},{"purpose":"m","op":"consent withdraw","subject":"a@b.co"}],"first_line":3"#,
            r#""records":[{"op":"status","x":1}]"#,
            r#""records":[]"#,
            r#""subject":"a@b.co","subject":"c@d.co""#,
        ];
        let mut payloads = vec![
            "{}".to_owned(),
            "[]".to_owned(),
            r#""status""#.to_owned(),
            r#"{"op":1}"#.to_owned(),
            r#"{"op":null}"#.to_owned(),
            r#"{"op":"no.such"}"#.to_owned(),
            r#"{"subject":"a@b.co"}"#.to_owned(),
            r#"{"op":"status","op":"peers"}"#.to_owned(),
            r#"{"x":1,"op":"status","op":"peers"}"#.to_owned(),
        ];
        for op in Request::OPS {
            for a in args {
                let comma = if a.is_empty() { "" } else { "," };
                payloads.push(format!(r#"{{"op":"{op}"{comma}{a}}}"#));
                payloads.push(format!(r#"{{{a}{comma}"op":"{op}"}}"#));
            }
        }
        let mut read = 0;
        for payload in &payloads {
            let ours = serde_json::from_str::<Request>(payload);
            let derived = serde_json::from_str::<DerivedRequest>(payload);
            match (&ours, &derived) {
                (Ok(ours), Ok(derived)) => {
                    assert_eq!(format!("{ours:?}"), format!("{derived:?}"), "{payload}");
                    read += 1;
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{payload}: {ours:?} against serde's {derived:?}"),
            }
        }
        assert!(read >= Request::OPS.len(), "only {read} requests read");
    }

    /// Every request is written with its first name, `op` first, and read back as written.
    #[test]
    fn requests_are_written_op_first_under_their_first_name() {
        let mut checked = 0;
        for op in Request::OPS {
            let args = r#""subject":"a@b.co","purpose":"m","basis":"consent""#;
            let Ok(request) = serde_json::from_str::<Request>(&format!(r#"{{"op":"{op}"}}"#))
                .or_else(|_| serde_json::from_str(&format!(r#"{{"op":"{op}",{args}}}"#)))
            else {
                continue;
            };
            checked += 1;
            let written = serde_json::to_string(&request).unwrap();
            assert!(
                written.starts_with(&format!(r#"{{"op":"{}""#, request.op())),
                "{written}"
            );
            let back: Request = serde_json::from_str(&written).unwrap();
            assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }
        assert!(checked >= 8, "only {checked} operations checked");
    }

    #[test]
    fn errors_stay_on_one_line() {
        let f = ResponseFrame::error("first\nsecond");
        assert_eq!(f.error.as_deref(), Some("first second"));
    }

    /// The client waits for its answer with `poll` (`wait_readable`): the peer reading what it
    /// sent does not end the wait, data or the end of the stream does, and with nothing to read
    /// it gives up at the timeout with an error that says so.
    #[test]
    fn a_client_waits_for_input_only_and_gives_up_at_its_timeout() {
        use std::io::ErrorKind;
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&ours).write_all(b"request").unwrap();
        let mut got = [0u8; 7];
        (&theirs).read_exact(&mut got).unwrap();
        let e = wait_readable(&ours, Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("no answer from consentd"), "{e}");

        (&theirs).write_all(b"answer").unwrap();
        wait_readable(&ours, Duration::from_secs(60)).unwrap();
        let mut answer = [0u8; 6];
        (&ours).read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");

        drop(theirs);
        wait_readable(&ours, Duration::from_secs(60)).unwrap();
        assert_eq!((&ours).read(&mut answer).unwrap(), 0, "end of stream");
    }

    /// Deletions answer when they are done, which at scale is minutes: their callers wait an
    /// hour, everything else two minutes.
    #[test]
    fn deletions_are_waited_for_longer_than_other_requests() {
        let run = Request::RetentionRun(RetentionRun::default());
        assert_eq!(run.answer_within(), DELETION_CLIENT_TIMEOUT);
        let close: Request =
            serde_json::from_str(r#"{"op": "request.close", "id": "00", "outcome": "completed"}"#)
                .unwrap();
        assert_eq!(close.answer_within(), DELETION_CLIENT_TIMEOUT);
        assert_eq!(Request::Status(Empty {}).answer_within(), CLIENT_TIMEOUT);
        assert!(DELETION_CLIENT_TIMEOUT > CLIENT_TIMEOUT);
    }

    #[test]
    fn frames_refuse_oversized_payloads() {
        let bytes = encode_frame(&[b'x'; 10]);
        assert_eq!(read_frame(&mut &bytes[..], 10).unwrap().len(), 10);
        assert!(read_frame(&mut &bytes[..], 9).is_err());
    }
}
