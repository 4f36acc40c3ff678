//! `audit.export`: the daemon writes a bundle, streamed over the control socket; `consentctl
//! audit export --out FILE` writes it to the operator's file.
//!
//! Why stream over the socket rather than have the daemon write FILE: the daemon runs as its own
//! user under a hardened systemd unit (read-only file system outside its data directory), so it
//! usually cannot write where the operator or auditor wants the file, and it must not write
//! files with personal data wherever a client asks. The client, running as the operator, owns
//! the file it creates (mode 0600: the bundle holds personal data).
//!
//! Socket exchange, after the usual request frame `{"v":1,"request":{"op":"audit.export"}}`:
//!
//! 1. one response frame: `{"ok":{"stream":"audit.export","envelopes":N}}` (or `{"error":…}`,
//!    and nothing follows);
//! 2. data frames: `u32 BE length ‖ bytes` (1 ≤ length ≤ [`EXPORT_CHUNK_BYTES`]), the bundle's
//!    bytes in order;
//! 3. an empty frame (length 0);
//! 4. one response frame: `{"ok":{summary}}`, or `{"error":…}` if the export failed part way
//!    (the client then deletes its partial file).
//!
//! Memory stays bounded: the producer pages through one storage snapshot
//! ([`EXPORT_PAGE`] rows at a time) and hands chunks to the socket through a queue of
//! [`EXPORT_QUEUE_CHUNKS`]; a slow client slows the producer down. Beside it, the hashes of every
//! envelope leaf in the bundle's logs (32 bytes each: 32 MB at 1,000,000), to leave out what no
//! checkpoint covers yet (below).
//!
//! Another office's newest envelopes usually reach the exporter before the checkpoint that logs
//! them (an office signs one within a second of writing and pushes it after): such an envelope
//! would fail the verifier's `log_inclusion`, so on a network where some office is writing every
//! bundle failed verification (8 of 10 exported 0.2 s after a write elsewhere, found by an
//! exploratory session). The exporter leaves out every envelope its author's checkpoint in the
//! bundle does not cover, and every change of the same record that depends on one, and counts
//! them (`not_yet_logged` in the summary); the next export carries them.
//!
//! A tombstone from another office arrives the same way, before the checkpoint that logs it,
//! and would fail `tombstone_authority`. It cannot be left out: applying it deleted the record's
//! envelopes here, and their leaves, in the bundle without envelope or tombstone, would fail
//! `log_completeness`. So the export fails, as for a logged change on an unlogged one, and
//! `consentctl` tries again (5 of 5 bundles exported right after an erasure at another office
//! failed verification; found by an exploratory session).

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use chrono::Utc;
use consentd_storage::StoredChange;
use consentd_sync::b64;
use consentd_sync::change_chunk;
use consentd_sync::envelope::Envelope;
use consentd_sync::tlog::{LogLeaf, LEAF_ENVELOPE, LEAF_TOMBSTONE};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::bundle::{Line, Summary, Writer, FORMAT, LEAVES_PER_LINE, VERSION};
use super::AuditError;
use crate::config::Role;
use crate::office::{Office, OfficeError};
use crate::protocol::{
    encode_frame, read_frame, ClientError, Empty, Request, RequestFrame, ResponseFrame,
    CLIENT_TIMEOUT, PROTOCOL_VERSION, RESPONSE_BYTES_MAX,
};
use crate::record::fmt_time;

/// Largest data frame.
pub const EXPORT_CHUNK_BYTES: usize = 256 << 10;
/// Data chunks queued between the producer and the socket.
pub const EXPORT_QUEUE_CHUNKS: usize = 4;
/// Rows read from storage per call.
pub const EXPORT_PAGE: usize = 1024;

impl From<AuditError> for OfficeError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Storage(s) => OfficeError::Storage(s),
            AuditError::Integrity(m) => OfficeError::Integrity(m),
        }
    }
}

/// `audit.checkpoint`: signs a checkpoint now if the log grew; returns the latest.
pub async fn checkpoint_now(office: &Office) -> Result<Value, OfficeError> {
    // Storage's blocking commit must not run on a runtime thread.
    let (signed, _) = tokio::task::block_in_place(|| {
        office
            .audit()
            .checkpoint(office.store(), office.signing_key())
    })?;
    Ok(json!({
        "office": office.id(),
        "origin": signed.checkpoint.origin,
        "size": signed.checkpoint.size,
        "root": hex::encode(signed.checkpoint.root),
        "note": signed.note,
    }))
}

/// The daemon's checkpoint timer: signs every [`super::CHECKPOINT_INTERVAL`] if the log grew.
pub async fn checkpoint_timer(
    office: std::sync::Arc<Office>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(super::CHECKPOINT_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let o = office.clone();
        let r = tokio::task::spawn_blocking(move || {
            o.audit()
                .checkpoint(o.store(), o.signing_key())
                .map(|(s, _)| s)
        })
        .await;
        match r {
            Ok(Ok(s)) => tracing::debug!(size = s.checkpoint.size, "checkpoint signed"),
            // Said once at error level when found, not every minute since.
            Ok(Err(e)) if matches!(office.audit().contradiction(office.store()), Ok(Some(_))) => {
                tracing::debug!(error = %e, "cannot sign a checkpoint")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot sign a checkpoint"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
    }
}

/// Whether a parsed request asks for `audit.export` (which streams, so the daemon's ordinary
/// one-answer path cannot serve it).
pub fn is_export(frame: &RequestFrame) -> bool {
    matches!(frame.request, Request::AuditExport(_))
}

async fn send(stream: &mut UnixStream, frame: &ResponseFrame) -> io::Result<()> {
    let payload = serde_json::to_vec(frame).expect("responses serialise");
    stream.write_all(&encode_frame(&payload)).await
}

/// Serves one `audit.export` on `stream`. Any role may export (it is a read); a uid without a
/// role may not. Returns an error only when the connection is unusable.
pub async fn serve(
    stream: &mut UnixStream,
    uid: u32,
    role: Option<Role>,
    office: &Office,
) -> io::Result<()> {
    if role.is_none() {
        tracing::warn!(uid, "refused audit export from a uid with no role");
        let msg = format!(
            "uid {uid} has no role on office {}: add it to control.operators or control.auditors in the office's config",
            office.id()
        );
        return send(stream, &ResponseFrame::error(msg)).await;
    }
    let started = Instant::now();
    let envelopes = office.store().stats().map(|s| s.envelopes).unwrap_or(0);
    send(
        stream,
        &ResponseFrame::ok(json!({"stream": "audit.export", "envelopes": envelopes})),
    )
    .await?;
    let handle = tokio::runtime::Handle::current();
    // The producer is blocking (redb reads, a durable checkpoint commit); the socket is async.
    // Run both on this worker thread's blocking slot: the producer on a scoped thread, the
    // socket writes here through the runtime handle.
    let (result, socket) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(EXPORT_QUEUE_CHUNKS);
            let producer = s.spawn(move || {
                write_bundle(
                    office,
                    ChunkSink {
                        tx,
                        buf: Vec::new(),
                    },
                )
            });
            let mut socket: io::Result<()> = Ok(());
            for chunk in rx.iter() {
                let framed = encode_frame(&chunk);
                socket = handle.block_on(stream.write_all(&framed));
                if socket.is_err() {
                    break; // dropping rx makes the producer's next send fail: it stops
                }
            }
            drop(rx);
            let result = producer
                .join()
                .unwrap_or_else(|_| Err("the export thread panicked".to_string()));
            (result, socket)
        })
    });
    socket?;
    stream.write_all(&0u32.to_be_bytes()).await?;
    match result {
        Ok(summary) => {
            tracing::info!(
                uid,
                envelopes = summary.envelopes,
                tombstones = summary.tombstones,
                bytes = summary.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "audit export streamed"
            );
            let v = serde_json::to_value(&summary).expect("summary serialises");
            send(stream, &ResponseFrame::ok(v)).await
        }
        Err(e) => {
            tracing::error!(uid, "audit export failed");
            send(stream, &ResponseFrame::error(format!("export failed: {e}"))).await
        }
    }
}

/// Buffers bundle bytes into chunks of at most [`EXPORT_CHUNK_BYTES`] for the socket.
struct ChunkSink {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = EXPORT_CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == EXPORT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK_BYTES));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// Writes this office's whole bundle to `out`: signs a fresh checkpoint first and walks the
/// storage snapshot that checkpoint covers, so every envelope the office authored in the bundle
/// is in the checkpointed log. Blocking.
pub fn write_bundle(office: &Office, out: impl Write) -> Result<Summary, String> {
    let (signed, snap) = office
        .audit()
        .checkpoint(office.store(), office.signing_key())
        .map_err(|e| e.to_string())?;
    let io = |e: io::Error| format!("writing the bundle: {e}");
    let st = |e: consentd_storage::StorageError| format!("reading the store: {e}");
    let mut w = Writer::new(io::BufWriter::with_capacity(EXPORT_CHUNK_BYTES, out));
    let roster = office.roster();
    let network = roster.roster().network.clone();
    let exported_at = fmt_time(Utc::now());
    // Every checkpoint the bundle carries, in its order: ours (the fresh one), then every other
    // office's as replication stored it (leaves and checkpoint commit together, so the
    // snapshot's log reaches the snapshot's checkpoint). The header's signature covers them.
    let mut checkpoints: Vec<(String, String)> =
        vec![(office.id().to_string(), signed.note.clone())];
    let mut logs = vec![(
        office.id().to_string(),
        office.audit().log_id(),
        signed.checkpoint.size,
    )];
    for (key, note) in snap.checkpoints().map_err(st)? {
        if key == office.id() {
            continue; // ours is the fresh one above
        }
        let text = String::from_utf8_lossy(&note).into_owned();
        let size = consentd_sync::tlog::parse_note(&text)
            .and_then(|n| consentd_sync::tlog::parse_body(n.text))
            .map_err(|e| format!("the stored checkpoint of office {key}: {e}"))?
            .size;
        let origin = consentd_sync::tlog::origin(&network, &key);
        logs.push((key.clone(), super::log::log_id(&origin), size));
        checkpoints.push((key, text));
    }
    let signature = {
        use ed25519_dalek::Signer as _;
        let listed: Vec<(&str, &str)> = checkpoints
            .iter()
            .map(|(o, n)| (o.as_str(), n.as_str()))
            .collect();
        let message = super::bundle::header_message(&network, office.id(), &exported_at, &listed);
        hex::encode(office.signing_key().sign(&message).to_bytes())
    };
    w.write(&Line::Header {
        format: FORMAT.into(),
        version: VERSION,
        network,
        office: office.id().to_string(),
        exported_at,
        signature: Some(signature),
    })
    .map_err(io)?;
    w.write(&Line::Roster {
        roster: roster.to_signed(),
    })
    .map_err(io)?;
    for (office, note) in checkpoints {
        w.write(&Line::Checkpoint { office, note }).map_err(io)?;
    }
    // Every envelope leaf of every log in the bundle: what `log_inclusion` accepts.
    let mut logged: Vec<[u8; 32]> = Vec::new();
    // Every tombstone leaf of every log in the bundle, with the office whose log lists it: what
    // `tombstone_authority` accepts (a tombstone is a leaf of its signer's log only). Taken out
    // as the tombstones held here are written; what is left, a log lists and this office does
    // not hold.
    let mut tombstone_logs: HashMap<[u8; 32], &str> = HashMap::new();
    for (log_office, log, size) in &logs {
        let mut next = 0u64;
        while next < *size {
            let want = usize::try_from(size - next)
                .unwrap_or(usize::MAX)
                .min(LEAVES_PER_LINE);
            let leaves = snap.log_leaves(log, next, want).map_err(st)?;
            if leaves.is_empty() {
                return Err(format!(
                    "the log of office {log_office} is missing leaf {next}"
                ));
            }
            debug_assert!(leaves.iter().all(|l| LogLeaf::decode(l).is_some()));
            for l in leaves.iter().filter_map(|l| LogLeaf::decode(l)) {
                match l.kind {
                    LEAF_ENVELOPE => logged.push(l.hash),
                    LEAF_TOMBSTONE => {
                        tombstone_logs.insert(l.hash, log_office.as_str());
                    }
                    _ => {}
                }
            }
            let n = leaves.len() as u64;
            w.write(&Line::Leaves {
                office: log_office.clone(),
                first: next,
                leaves: leaves.iter().map(hex::encode).collect(),
            })
            .map_err(io)?;
            next += n;
        }
    }
    logged.sort_unstable();
    logged.dedup();
    // One record's changes at a time (the snapshot lists them by record, in stored order).
    let mut record: Vec<StoredChange> = Vec::new();
    let mut left_out = LeftOut::default();
    let mut cursor = None;
    loop {
        let page = snap.changes_after(cursor, EXPORT_PAGE).map_err(st)?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.0, last.1));
        for change in page {
            if record.first().is_some_and(|c| c.0 != change.0) {
                write_record(&mut w, &std::mem::take(&mut record), &logged, &mut left_out)
                    .map_err(io)?;
            }
            record.push(change);
        }
    }
    write_record(&mut w, &record, &logged, &mut left_out).map_err(io)?;
    drop(logged);
    if left_out.logged > 0 {
        // A logged change on top of one not logged yet: left out, its leaf would be in the
        // bundle without it, which fails `log_completeness`; carried, the change it depends on
        // would fail `log_inclusion`. Only when a change was made on another office's change
        // before that office's checkpoint arrived. Failed rather than written (the bundle would
        // not verify): `consentctl` tries again while the checkpoint is on its way.
        let roster = office.roster();
        let offices: Vec<&str> = left_out
            .waiting_on
            .iter()
            .map(|k| roster.office_by_signer(k).map_or("?", |o| o.id.as_str()))
            .collect();
        tracing::warn!(
            changes = left_out.logged,
            offices = %offices.join(","),
            "audit export failed: logged changes depend on changes not logged yet"
        );
        return Err(format!(
            "{} logged change(s) depend on changes {NOT_LOGGED_YET} (office {}); export again once that office's checkpoint has arrived (seconds while it is connected)",
            left_out.logged,
            offices.join(", ")
        ));
    }
    let mut unlogged_tombstones = 0u64;
    let mut tombstone_signers = std::collections::BTreeSet::new();
    let mut cursor = None;
    loop {
        let page = snap
            .tombstones_after(cursor.as_ref(), EXPORT_PAGE)
            .map_err(st)?;
        let Some(last) = page.last() else { break };
        cursor = Some((last.0, last.1));
        for (_, _, t) in &page {
            let hash: [u8; 32] = Sha256::digest(t).into();
            if tombstone_logs.remove(&hash).is_none() {
                unlogged_tombstones += 1;
                // Decoded for its signer (only these: the rest are copied as stored).
                if let Ok(t) = consentd_sync::tombstone::Tombstone::decode(t) {
                    tombstone_signers.insert(t.signer);
                }
                continue;
            }
            w.write(&Line::Tombstone {
                data: b64::encode(t),
            })
            .map_err(io)?;
        }
    }
    if unlogged_tombstones > 0 {
        // Cannot be left out (module docs): fail, and `consentctl` tries again.
        let roster = office.roster();
        let offices: Vec<&str> = tombstone_signers
            .iter()
            .map(|k| roster.office_by_signer(k).map_or("?", |o| o.id.as_str()))
            .collect();
        tracing::warn!(
            tombstones = unlogged_tombstones,
            offices = %offices.join(","),
            "audit export failed: tombstones not logged yet"
        );
        return Err(format!(
            "{unlogged_tombstones} tombstone(s) applied here that {NOT_LOGGED_YET} (office {}); export again once that office's checkpoint has arrived (seconds while it is connected)",
            offices.join(", ")
        ));
    }
    if !tombstone_logs.is_empty() {
        // A log lists a tombstone this office does not hold: in the bundle, its leaf would
        // fail `log_completeness`. Either it has not arrived yet (`consentctl` tries again), or
        // this office refused it: one dated ahead of its clock is (the signer's clock ran
        // ahead, docs/sync-protocol.md), and such a bundle failed verification with nothing
        // said at export (found by an exploratory session).
        let offices: std::collections::BTreeSet<&str> = tombstone_logs.values().copied().collect();
        let offices: Vec<&str> = offices.into_iter().collect();
        tracing::warn!(
            tombstones = tombstone_logs.len(),
            offices = %offices.join(","),
            "audit export failed: logged tombstones not held here"
        );
        return Err(format!(
            "{} tombstone(s) logged by office {} {NOT_HELD_YET} (not arrived yet, or refused: this office rejects a tombstone dated ahead of its clock, and its log says so); export again once they have arrived",
            tombstone_logs.len(),
            offices.join(", ")
        ));
    }
    let (mut out, mut summary) = w.finish().map_err(io)?;
    summary.not_yet_logged = left_out.changes;
    out.flush().map_err(io)?;
    // Dropping the sink closes the channel: the socket side sees the end of the data.
    drop(out);
    Ok(summary)
}

/// What an export's error says when a logged change depends on one its author's checkpoint does
/// not log yet: `consentctl` tries again on it ([`EXPORT_ATTEMPTS_MAX`]).
const NOT_LOGGED_YET: &str = "their author's checkpoint does not log yet";
/// What it says when a log lists tombstones this office does not hold (yet): tried again too.
const NOT_HELD_YET: &str = "are not held here";
/// Most attempts `consentctl audit export` makes while changes wait for their checkpoint, one
/// `EXPORT_RETRY_PAUSE` apart: an office signs a checkpoint within a second of writing and
/// pushes it at once, so a connected one's arrives well inside this.
pub const EXPORT_ATTEMPTS_MAX: u32 = 10;
const EXPORT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Changes an export left out, how many of those were logged (see [`write_record`]), and the
/// signers of the changes not logged yet that logged ones depend on.
#[derive(Default)]
struct LeftOut {
    changes: u64,
    logged: u64,
    waiting_on: std::collections::BTreeSet<[u8; 32]>,
}

/// Writes one record's changes, except those `logged` (sorted) does not hold and every change
/// that depends on one of them, directly or not (module docs), counted in `left_out`.
fn write_record<W: Write>(
    w: &mut Writer<W>,
    changes: &[StoredChange],
    logged: &[[u8; 32]],
    left_out: &mut LeftOut,
) -> io::Result<()> {
    let is_logged = |h: &[u8; 32]| logged.binary_search(h).is_ok();
    let mut out: HashSet<[u8; 32]> = changes
        .iter()
        .filter(|c| !is_logged(&c.2))
        .map(|c| c.2)
        .collect();
    if !out.is_empty() {
        // Dependents, to a fixed point: a pending record's changes may be stored before their
        // dependencies.
        let deps: Vec<([u8; 32], Vec<[u8; 32]>)> = changes
            .iter()
            .map(|c| {
                let deps = Envelope::decode(&c.3)
                    .ok()
                    .and_then(|e| change_chunk::read(&e.change).map(|f| f.deps().collect()))
                    .unwrap_or_default();
                (c.2, deps)
            })
            .collect();
        loop {
            let before = out.len();
            for (hash, deps) in &deps {
                if !out.contains(hash) && deps.iter().any(|d| out.contains(d)) {
                    out.insert(*hash);
                }
            }
            if out.len() == before {
                break;
            }
        }
        left_out.changes += out.len() as u64;
        let logged_out = out.iter().filter(|h| is_logged(h)).count() as u64;
        if logged_out > 0 {
            left_out.logged += logged_out;
            left_out.waiting_on.extend(
                changes
                    .iter()
                    .filter(|c| !is_logged(&c.2))
                    .filter_map(|c| Envelope::decode(&c.3).ok().map(|e| e.signer)),
            );
        }
    }
    for (_, _, hash, env) in changes {
        if !out.contains(hash) {
            w.write(&Line::Envelope {
                data: b64::encode(env),
            })?;
        }
    }
    Ok(())
}

/// Client side: asks the daemon at `socket` for a bundle and writes it to `out` (mode 0600),
/// atomically: a failed export leaves no file at `out`. Tries again, up to
/// [`EXPORT_ATTEMPTS_MAX`] times, while logged changes wait for another office's checkpoint.
pub fn export_to_file(socket: &Path, out: &Path, progress: bool) -> Result<Value, String> {
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        match export_once(socket, out, progress, started) {
            Err(e)
                if (e.contains(NOT_LOGGED_YET) || e.contains(NOT_HELD_YET))
                    && attempt < EXPORT_ATTEMPTS_MAX =>
            {
                if progress {
                    eprintln!("waiting for another office's checkpoint: {e}");
                }
                attempt += 1;
                std::thread::sleep(EXPORT_RETRY_PAUSE);
            }
            result => {
                return result.map(|mut v| {
                    v["attempts"] = json!(attempt);
                    v
                })
            }
        }
    }
}

fn export_once(
    socket: &Path,
    out: &Path,
    progress: bool,
    started: Instant,
) -> Result<Value, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ClientError::Connect {
            path: socket.to_owned(),
            source,
        }
        .to_string()
    })?;
    let cerr = |e: io::Error| format!("connection to consentd failed: {e}");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(cerr)?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(cerr)?;
    let frame = RequestFrame {
        v: PROTOCOL_VERSION,
        request: Request::AuditExport(Empty {}),
    };
    let payload = serde_json::to_vec(&frame).expect("requests serialise");
    stream.write_all(&encode_frame(&payload)).map_err(cerr)?;
    let first = read_response(&mut stream)?;
    let expected = first["envelopes"].as_u64();

    let tmp = partial_path(out);
    check_replaceable(out)?;
    check_replaceable(&tmp)?;
    if tmp.exists() {
        // A partial file a killed export left behind.
        std::fs::remove_file(&tmp).map_err(|e| format!("cannot remove {}: {e}", tmp.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = receive(&mut stream, file, expected, progress, started);
    let summary = match result {
        Ok(()) => read_response(&mut stream),
        Err(e) => Err(e),
    };
    match summary {
        Ok(summary) => {
            std::fs::rename(&tmp, out).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot move {} to {}: {e}", tmp.display(), out.display())
            })?;
            let mut v = summary;
            v["out"] = json!(out.display().to_string());
            v["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Refuses a path that holds anything but a regular file: the bundle is renamed over `--out`,
/// which replaced a symlink, a FIFO or a device node (`/dev/full`, as root) with the bundle
/// (found by an exploratory session). A regular file there (an earlier bundle) is replaced.
fn check_replaceable(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            Err(format!(
                "refusing to write the bundle to {}: it is {what}; name a regular file (an earlier bundle there is replaced)",
                path.display()
            ))
        }
        _ => Ok(()),
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn read_response(stream: &mut impl Read) -> Result<Value, String> {
    let bytes = read_frame(stream, RESPONSE_BYTES_MAX).map_err(|e| e.to_string())?;
    let frame: ResponseFrame = serde_json::from_slice(&bytes)
        .map_err(|e| format!("consentd sent a malformed response: {e}"))?;
    match (frame.ok, frame.error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => Ok(v),
        (None, None) => Err("consentd sent a malformed response: neither ok nor error".into()),
    }
}

fn receive(
    stream: &mut impl Read,
    file: std::fs::File,
    expected_envelopes: Option<u64>,
    progress: bool,
    started: Instant,
) -> Result<(), String> {
    let mut out = io::BufWriter::new(file);
    let mut buf = vec![0u8; EXPORT_CHUNK_BYTES];
    let mut bytes = 0u64;
    let mut bar = super::cli::Progress::new(progress, "exporting");
    let of = expected_envelopes.map_or(String::new(), |n| format!(" ({n} envelopes)"));
    loop {
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .map_err(|e| format!("the export stream broke off: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > EXPORT_CHUNK_BYTES {
            return Err(format!(
                "consentd sent a data frame of {len} bytes; at most {EXPORT_CHUNK_BYTES} are allowed"
            ));
        }
        stream
            .read_exact(&mut buf[..len])
            .map_err(|e| format!("the export stream broke off: {e}"))?;
        out.write_all(&buf[..len])
            .map_err(|e| format!("writing the bundle: {e}"))?;
        bytes += len as u64;
        bar.update(|| format!("{:.1} MiB{of}", bytes as f64 / (1 << 20) as f64));
    }
    let file = out
        .into_inner()
        .map_err(|e| format!("writing the bundle: {}", e.error()))?;
    file.sync_all()
        .map_err(|e| format!("writing the bundle: {e}"))?;
    bar.done(|| {
        format!(
            "{:.1} MiB in {:.1} s",
            bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{transaction::Transactable, AutoCommit, ROOT};

    /// Changes `a` ← `b`, `a` ← `c` and `b, c` ← `d` of one record. With `b` not logged, `b` and
    /// `d` (on top of it) are left out, `a` and `c` written; a logged `d` is counted as such (its
    /// leaf will lack it).
    #[test]
    fn changes_on_top_of_one_not_logged_are_left_out_with_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let doc_id = [1u8; 16];
        let actor = |i: u8| consentd_sync::envelope::actor_for(&key.verifying_key(), [i; 8]);
        let mut doc = AutoCommit::new().with_actor(actor(1));
        let change = |d: &mut AutoCommit, k: &str| {
            d.put(ROOT, k, 1).unwrap();
            d.get_last_local_change().unwrap()
        };
        let a = change(&mut doc, "a");
        let mut other = doc.fork().with_actor(actor(2));
        let b = change(&mut doc, "b");
        let c = change(&mut other, "c");
        doc.merge(&mut other).unwrap();
        let d = change(&mut doc, "d");
        assert_eq!(d.deps().len(), 2, "d depends on b and c");
        let stored: Vec<StoredChange> = [&a, &b, &c, &d]
            .iter()
            .enumerate()
            .map(|(i, ch)| {
                let env = consentd_sync::envelope::sign(doc_id, ch, &key);
                (doc_id, i as u32, ch.hash().0, env.encode())
            })
            .collect();
        for (d_logged, logged_left_out) in [(false, 0), (true, 1)] {
            let mut logged: Vec<[u8; 32]> = vec![a.hash().0, c.hash().0];
            if d_logged {
                logged.push(d.hash().0);
            }
            logged.sort_unstable();
            let mut w = Writer::new(Vec::new());
            let mut left_out = LeftOut::default();
            write_record(&mut w, &stored, &logged, &mut left_out).unwrap();
            let (bytes, summary) = w.finish().unwrap();
            assert_eq!(summary.envelopes, 2);
            let written: Vec<&str> = std::str::from_utf8(&bytes)
                .unwrap()
                .lines()
                .filter(|l| l.contains("\"envelope\""))
                .collect();
            let expected: Vec<String> = [&stored[0], &stored[2]]
                .iter()
                .map(|s| b64::encode(&s.3))
                .collect();
            assert_eq!(written.len(), 2);
            for (line, data) in written.iter().zip(&expected) {
                assert!(line.contains(data.as_str()));
            }
            assert_eq!(left_out.changes, 2);
            assert_eq!(left_out.logged, logged_left_out);
        }
    }
}
