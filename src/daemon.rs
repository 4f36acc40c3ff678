//! The office daemon: start-up checks, the control socket, signals and systemd notification.
//!
//! Start-up refuses, with one clear line, anything that would make the office's records
//! untrustworthy: a roster not signed by the pinned root key, a secret key that is missing or
//! readable by others, a key that is not the roster's key for this office, an unknown config key,
//! or a data directory that belongs to another office.

use crate::calendar::Calendars;
use crate::clock::Clock;
use crate::config::{Config, Role};
use crate::office::{Office, OfficeError, OfficeParts, Purposes, WRITE_STALL_AFTER};
use crate::protocol::{
    encode_frame, RequestFrame, RequestRefusal, ResponseFrame, REQUEST_BYTES_MAX,
};
use consentd_storage::{Store, WriteBatch};
use consentd_sync::{keys, roster::SignedRoster};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

/// Most control connections served at once. A client beyond it waits for one to end, or for one
/// idle [`IDLE_RECLAIM_AFTER`] or longer to be closed for it (its client reconnects): before,
/// 256 idle connections (a pool, or a script that never closes) held every client back for the
/// 60 s of [`IDLE_TIMEOUT`] (found by an exploratory session).
pub const CONNECTIONS_MAX: usize = 256;
/// How long a connection must have waited for its next request before a client beyond
/// [`CONNECTIONS_MAX`] may take its place. Not at once: an application that opens hundreds of
/// connections and then sends on all of them (`tests/concurrent_grants_share_commits.rs`) has
/// each idle for a moment, and closing those failed its requests.
pub const IDLE_RECLAIM_AFTER: Duration = Duration::from_secs(5);
/// Most control connections held at once by all uids without a role together (each is refused
/// after one request anyway; more are refused at once): strangers cannot crowd out the
/// operators. Uids with a role are trusted with the whole [`CONNECTIONS_MAX`] (an operator's
/// application may well run hundreds of clients; the excess waits in the listen backlog).
pub const ROLELESS_CONNECTIONS_MAX: usize = 16;
/// A connection idle this long between requests is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to read one request once its length is known.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an oversized request drained so its sender can read our refusal.
const DRAIN_BYTES_MAX: u64 = 64 << 20;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The database file inside the data directory.
pub const DB_FILE: &str = "consentd.redb";
/// How long replication waits before trying again to run (its listen address was in use).
const RUN_RETRY: Duration = Duration::from_secs(10);
/// How often the write path is checked for a stall (`liveness`); under systemd also the longest
/// time between two watchdog pings, whatever `WatchdogSec` allows.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

impl StartupError {
    /// Whether the office's database is open in another process (a running consentd): every
    /// other check passed, so `consentd check-config` reports the config valid.
    pub fn store_in_use(&self) -> bool {
        self.0.starts_with(STORE_IN_USE)
    }
}

/// How [`prepare`]'s error begins when the data directory's database is open elsewhere.
const STORE_IN_USE: &str = "the database is already open in another process";

fn fail(message: impl Into<String>) -> StartupError {
    StartupError(message.into())
}

/// An office checked and opened, ready to serve.
pub struct Prepared {
    pub config: Config,
    pub office: Arc<Office>,
    /// The QUIC transport key (checked against the roster), for replication.
    pub transport: ed25519_dalek::SigningKey,
    pub roster: Arc<consentd_sync::VerifiedRoster>,
    /// What the config leaves undone though valid (`assessment_warnings`): `check-config`
    /// prints them, the daemon logs them at start.
    pub warnings: Vec<String>,
}

/// Loads and checks everything; opens the store. Touches no socket.
pub fn prepare(config_path: &Path) -> Result<Prepared, StartupError> {
    let config = Config::load(config_path).map_err(|e| fail(e.to_string()))?;
    let root_pub = keys::parse_public_key(&config.root_pub)
        .map_err(|e| fail(format!("config {}: root_pub: {e}", config_path.display())))?;
    let roster = SignedRoster::load(&config.roster)
        .and_then(|r| r.verify(&root_pub))
        .map_err(|e| fail(format!("roster {}: {e}", config.roster.display())))?;
    let entry = roster.office(&config.office).ok_or_else(|| {
        fail(format!(
            "office {:?} is not in the roster {}",
            config.office,
            config.roster.display()
        ))
    })?;
    if entry.retired {
        return Err(fail(format!(
            "office {} is retired in the roster {} (serial {}): a retired office does not run",
            config.office,
            config.roster.display(),
            roster.roster().serial
        )));
    }
    if entry.jurisdiction != config.jurisdiction {
        return Err(fail(format!(
            "config says jurisdiction {} but the roster says {} for office {}",
            config.jurisdiction, entry.jurisdiction, config.office
        )));
    }
    let signing = keys::read_secret_key(&config.signing_key).map_err(|e| fail(e.to_string()))?;
    if signing.verifying_key() != entry.signing_key {
        return Err(fail(format!(
            "signing key {} is not the roster's signing key for office {}",
            config.signing_key.display(),
            config.office
        )));
    }
    let transport =
        keys::read_secret_key(&config.transport_key).map_err(|e| fail(e.to_string()))?;
    if transport.verifying_key() != entry.transport_key {
        return Err(fail(format!(
            "transport key {} is not the roster's transport key for office {}",
            config.transport_key.display(),
            config.office
        )));
    }
    let index_key = keys::read_secret32(&config.index_key).map_err(|e| fail(e.to_string()))?;
    let mut peers_seen = std::collections::BTreeSet::new();
    for peer in &config.peers {
        if roster.office(&peer.office).is_none() {
            return Err(fail(format!(
                "peer {:?} is not in the roster {}",
                peer.office,
                config.roster.display()
            )));
        }
        if !peers_seen.insert(&peer.office) {
            return Err(fail(format!(
                "config {}: peer {:?} is listed twice",
                config_path.display(),
                peer.office
            )));
        }
    }
    // Another office's address would have this office dial itself for it, and fail to bind
    // beside that office on one host.
    if let Some(other) = roster
        .offices()
        .find(|o| o.id != config.office && o.address == config.listen)
    {
        return Err(fail(format!(
            "config {}: listen {} is office {}'s address in the roster",
            config_path.display(),
            config.listen,
            other.id
        )));
    }
    // Checked here, not only when serving starts, so `consentd check-config` finds them too
    // (found by an exploratory session: these passed it and failed later, or never).
    let policy = crate::policy::TransferPolicy::from_config(&config.transfer)
        .map_err(|e| fail(format!("config {}: {e}", config_path.display())))?;
    let mut warnings = assessment_warnings(&config, &roster, &policy);
    warnings.extend(retired_peer_warnings(&config, &roster));
    tracing_subscriber::EnvFilter::try_new(&config.log.filter).map_err(|e| {
        fail(format!(
            "config {}: [log] filter {:?}: {e}",
            config_path.display(),
            config.log.filter
        ))
    })?;
    let schedule = crate::retention::schedule::Schedule::new(&config.retention.periods)
        .map_err(|e| fail(format!("config {}: {e}", config_path.display())))?;

    let calendars = match &config.clock.calendar_dir {
        Some(dir) => Calendars::with_overrides(dir).map_err(|e| fail(e.to_string()))?,
        None => Calendars::builtin(),
    };
    let zone = config
        .time_zone()
        .map_err(|e| fail(format!("config {}: {e}", config_path.display())))?;
    let clock = Clock::new(calendars, config.clock.company_policy_days, zone);
    let purposes = Purposes::new(&config.consent.purposes, &config.consent.marketing_purposes);

    create_private_dir(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join(DB_FILE)).map_err(|e| {
        if e.is_in_use() {
            fail(format!(
                "{STORE_IN_USE}: data directory {} (a running consentd?)",
                config.data_dir.display()
            ))
        } else {
            fail(format!("data directory {}: {e}", config.data_dir.display()))
        }
    })?;
    claim_store(&store, &config, &roster.roster().network)?;
    claim_roster(&store, &config, &roster)?;

    let keys = crate::keystore::KeyStore::open(&config.data_dir, store.clone())
        .map_err(|e| fail(format!("data directory {}: {e}", config.data_dir.display())))?;
    let retention = crate::retention::Settings {
        schedule,
        compact_after: config.retention.compact_after_deletions,
        daily: config.retention.daily_pass,
        future_passes: config.retention.allow_future_passes,
    };
    let office = Office::new(OfficeParts {
        id: config.office.clone(),
        jurisdiction: config.jurisdiction.clone(),
        store,
        signing,
        roster: roster.clone(),
        index_key,
        clock,
        purposes,
        keys,
        retention,
        policy: policy.clone(),
    })
    .map_err(|e| fail(format!("data directory {}: {e}", config.data_dir.display())))?;
    // Refuse to start (and so to sign) if the log no longer reproduces the last checkpoint.
    office
        .audit()
        .open(office.store())
        .map_err(|e| fail(format!("data directory {}: {e}", config.data_dir.display())))?;
    // The index key must be the one the store is indexed under, before anything reads the
    // index or re-indexes it.
    crate::office::tokens::check_index_key(&office)
        .map_err(|e| fail(format!("data directory {}: {e}", config.data_dir.display())))?;
    // A store written before token layout 2 is re-indexed before anything reads its index.
    crate::office::tokens::upgrade(&office)
        .map_err(|e| fail(format!("data directory {}: {e}", config.data_dir.display())))?;
    Ok(Prepared {
        config,
        office: Arc::new(office),
        transport,
        roster: Arc::new(roster),
        warnings,
    })
}

/// `assessment_warnings` for a config `prepare` found valid but could not open the store of
/// (a running office holds it): `check-config` beside a running office printed none.
pub fn config_warnings(config_path: &Path) -> Vec<String> {
    let Ok(config) = Config::load(config_path) else {
        return Vec::new();
    };
    let roster = keys::parse_public_key(&config.root_pub)
        .ok()
        .and_then(|root| SignedRoster::load(&config.roster).ok()?.verify(&root).ok());
    let policy = crate::policy::TransferPolicy::from_config(&config.transfer).ok();
    match (roster, policy) {
        (Some(roster), Some(policy)) => {
            let mut warnings = assessment_warnings(&config, &roster, &policy);
            warnings.extend(retired_peer_warnings(&config, &roster));
            warnings
        }
        _ => Vec::new(),
    }
}

/// What a valid config still leaves undone, one line each: the peers this office's own records
/// reach under a rule that needs a transfer impact assessment none is named for (replication
/// still sends them, as the policy allows, and records each move without a TIA, which
/// `audit report` then counts).
fn assessment_warnings(
    config: &Config,
    roster: &consentd_sync::VerifiedRoster,
    policy: &crate::policy::TransferPolicy,
) -> Vec<String> {
    let peers: Vec<(&str, &str)> = config
        .peers
        .iter()
        .filter_map(|p| {
            let o = roster.office(&p.office)?;
            Some((p.office.as_str(), o.jurisdiction.as_str()))
        })
        .collect();
    policy
        .missing_assessments(&config.jurisdiction, peers)
        .into_iter()
        .map(|(office, to, mechanism)| {
            format!(
                "office {office} ({to}) receives this office's records under {mechanism}, which needs a transfer impact assessment, and [transfer.assessments] names none for {to}: each move is recorded without one"
            )
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> Result<(), StartupError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| {
            fail(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })
}

/// A data directory belongs to one office of one network forever: pointing another office's config
/// at it would mix two offices' records under one identity.
fn claim_store(store: &Store, config: &Config, network: &str) -> Result<(), StartupError> {
    let owner = format!("{network}/{}", config.office);
    match store.meta("owner").map_err(|e| fail(e.to_string()))? {
        Some(existing) if existing == owner.as_bytes() => Ok(()),
        Some(existing) => Err(fail(format!(
            "data directory {} belongs to office {}, not {owner}",
            config.data_dir.display(),
            String::from_utf8_lossy(&existing)
        ))),
        None => {
            let batch = WriteBatch {
                meta: vec![("owner".into(), owner.into_bytes())],
                ..WriteBatch::default()
            };
            store
                .commit_blocking(batch)
                .map(|_| ())
                .map_err(|e| fail(e.to_string()))
        }
    }
}

/// Meta key: the highest roster serial this office has started with (decimal).
pub const META_ROSTER_SERIAL: &str = "roster_serial";
/// Meta key: the offices of that roster, one `id` or `id retired` a line.
pub const META_ROSTER_OFFICES: &str = "roster_offices";

/// One line per `[[peer]]` the roster lists as retired: it is neither dialed nor accepted.
fn retired_peer_warnings(config: &Config, roster: &consentd_sync::VerifiedRoster) -> Vec<String> {
    config
        .peers
        .iter()
        .filter(|p| roster.is_retired(&p.office))
        .map(|p| {
            format!(
                "peer {} is retired in the roster (serial {}): it is not dialed and its connections are refused; remove its [[peer]] section",
                p.office,
                roster.roster().serial
            )
        })
        .collect()
}

/// Roster serials only go forward, an office listed once stays listed, and a retired office
/// stays retired: an older or trimmed roster could re-admit a retired office, or leave records
/// and checkpoints held here signed by a key no roster lists (every change to them refused and
/// every bundle failing). Records the roster started with in meta.
fn claim_roster(
    store: &Store,
    config: &Config,
    roster: &consentd_sync::VerifiedRoster,
) -> Result<(), StartupError> {
    let serial = roster.roster().serial;
    let path = config.roster.display();
    let meta = |key: &str| store.meta(key).map_err(|e| fail(e.to_string()));
    let held_serial = match meta(META_ROSTER_SERIAL)? {
        Some(bytes) => Some(
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    fail("data directory: meta roster_serial is not a number".to_string())
                })?,
        ),
        None => None,
    };
    let rollback = held_serial.is_some_and(|held| serial < held);
    if let Some(held) = held_serial.filter(|_| rollback && !config.allow_roster_rollback) {
        return Err(fail(format!(
            "roster {path} has serial {serial}, older than serial {held} this office has run with: install the newest signed roster (or, for a deliberate rollback, set allow_roster_rollback = true in the config)"
        )));
    }
    let held_offices = meta(META_ROSTER_OFFICES)?.unwrap_or_default();
    let held_offices = String::from_utf8_lossy(&held_offices);
    for line in held_offices.lines() {
        let mut words = line.split(' ');
        let id = words.next().unwrap_or_default();
        let was_retired = words.next() == Some("retired");
        match roster.office(id) {
            None => {
                return Err(fail(format!(
                    "roster {path} (serial {serial}) drops office {id}, which the roster this office ran with (serial {}) lists: what it signed and this office holds could no longer be verified; keep it listed and retire it instead (consentctl roster retire --office {id})",
                    held_serial.unwrap_or(0)
                )))
            }
            Some(o) if was_retired && !o.retired => {
                return Err(fail(format!(
                    "roster {path} (serial {serial}) lists office {id} as active, but it was retired in the roster this office ran with (serial {}): a retired office stays retired",
                    held_serial.unwrap_or(0)
                )))
            }
            Some(_) => {}
        }
    }
    if rollback {
        tracing::warn!(
            serial,
            held = held_serial,
            "starting on an older roster: allow_roster_rollback is set"
        );
        return Ok(());
    }
    let offices: String = roster
        .offices()
        .map(|o| match o.retired {
            true => format!("{} retired\n", o.id),
            false => format!("{}\n", o.id),
        })
        .collect();
    if held_serial == Some(serial) && held_offices == offices {
        return Ok(());
    }
    let batch = WriteBatch {
        meta: vec![
            (META_ROSTER_SERIAL.into(), serial.to_string().into_bytes()),
            (META_ROSTER_OFFICES.into(), offices.into_bytes()),
        ],
        ..WriteBatch::default()
    };
    store
        .commit_blocking(batch)
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves on either.
/// Call it inside the runtime before [`run`] binds the control socket: a handler installed only
/// when the future is first polled (after the socket accepts) left a window in which a SIGTERM
/// sent at readiness killed the daemon by the signal's default action instead of stopping it
/// cleanly (tests/sigterm_at_ready_is_clean.rs).
pub fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut only), Err(e)) | (Err(e), Ok(mut only)) => {
                tracing::error!(error = %e, "cannot install a signal handler; one of SIGTERM/SIGINT stops");
                only.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::error!(error = %e, "cannot install signal handlers; stop the daemon with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Serves the control socket until `shutdown` resolves, then stops cleanly: requests in flight
/// finish and are acknowledged, the store is closed, the socket file removed.
pub async fn run(
    prepared: Prepared,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartupError> {
    let Prepared {
        config,
        office,
        transport,
        roster,
        warnings,
    } = prepared;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let (listener, activated) = match activated_control_socket(&config)? {
        Some(listener) => (listener, true),
        None => (bind_control_socket(&config)?, false),
    };
    let socket_path = config.control.socket.clone();
    tracing::info!(
        office = %config.office,
        jurisdiction = %config.jurisdiction,
        socket = %socket_path.display(),
        socket_activated = activated,
        "consentd ready"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let (stop_tx, stop_rx) = watch::channel(false);
    let watchdog = watchdog_usec();
    let liveness = tokio::spawn(liveness(
        office.clone(),
        stop_rx.clone(),
        watchdog.map_or(LIVENESS_EVERY, |usec| {
            // At most half the interval systemd asked for, as sd_watchdog_enabled(3) recommends.
            Duration::from_micros(usec / 2).min(LIVENESS_EVERY)
        }),
        WRITE_STALL_AFTER,
        watchdog.map(|_| {
            || {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }),
    ));
    let reminders = tokio::spawn(due_soon_reminders(office.clone(), stop_rx.clone()));
    // Key-encryption key rotations that tombstones from peers asked for, and one that a crash
    // cut off from the destruction that made it due (keystore.rs).
    let rotations = tokio::spawn(rotations(office.clone(), stop_rx.clone()));
    // Replication: one QUIC endpoint, a session per peer link (replicate.rs).
    let replication = if config.peers.is_empty() {
        None
    } else {
        let policy = crate::policy::TransferPolicy::from_config(&config.transfer).map_err(fail)?;
        let peers = crate::replicate::peers_of(&config);
        let replicator =
            crate::replicate::Replicator::new(office.clone(), roster, policy, peers.clone())
                .map_err(|e| fail(e.to_string()))?;
        // The sets are built from the store off the serving path: at 1,000,000 records that
        // reads every stored envelope (39-192 s measured on a cold page cache), and consent
        // checks must not wait for it. Until then `status` says `replication: starting`.
        office.replication_starting(peers);
        let (listen, stop) = (config.listen, stop_rx.clone());
        let office = office.clone();
        Some(tokio::spawn(async move {
            let stopping = stop.clone();
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking({
                let (replicator, stop) = (replicator.clone(), stop.clone());
                move || replicator.build_sets(&stop)
            })
            .await;
            let why = match built {
                Ok(Ok(())) => {
                    tracing::info!(
                        took_ms = started.elapsed().as_millis() as u64,
                        "replication sets built"
                    );
                    // A listen address in use (an office restarted before its old socket
                    // drained, another program) is tried again every RUN_RETRY until it is
                    // free, `peers` and `status` saying why meanwhile; it was given up for good,
                    // and `peers` listed no peer (found by an exploratory session).
                    loop {
                        office.attach_replicator(&replicator);
                        let why = match replicator
                            .clone()
                            .run(transport.clone(), listen, stop.clone())
                            .await
                        {
                            Ok(()) => return,
                            Err(e) => e.to_string(),
                        };
                        if *stopping.borrow() {
                            break why;
                        }
                        tracing::error!(error = %why, retry_in_s = RUN_RETRY.as_secs(), "replication cannot run; trying again");
                        office.replication_failed(why.clone());
                        let mut stop = stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(RUN_RETRY) => {}
                            _ = stop.changed() => break why,
                        }
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("building the sets panicked: {e}"),
            };
            if *stopping.borrow() {
                tracing::info!(reason = %why, "replication stopped with the daemon");
            } else {
                tracing::error!(error = %why, "replication stopped");
            }
            office.replication_failed(why);
        }))
    };
    let checkpoints = tokio::spawn(crate::audit::export::checkpoint_timer(
        office.clone(),
        stop_rx.clone(),
    ));
    let retention = tokio::spawn(crate::retention::daily(office.clone(), stop_rx.clone()));

    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let roleless_open: Arc<OpenConnections> = Arc::default();
    // A client waits for a slot: one connection idle long enough closes for it (CONNECTIONS_MAX).
    let reclaim = Arc::new(Reclaim::default());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                reclaim
                    .wanted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                reclaim.idle.notify_waiters();
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                    _ = &mut shutdown => break,
                };
                // Served (by a closed idle connection or a finished one): no other need close.
                reclaim
                    .wanted
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                permit
            }
        };
        let (office, config, stop) = (office.clone(), config.clone(), stop_rx.clone());
        let (open, reclaim) = (roleless_open.clone(), reclaim.clone());
        tokio::spawn(async move {
            serve_connection(stream, &office, &config, stop, &open, &reclaim).await;
            drop(permit);
        });
    }

    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    drop(listener);
    // A socket systemd passed us belongs to consentd.socket: it stays, so that operators'
    // connections queue while the service restarts. Our own socket file goes with us.
    if !activated {
        use std::os::unix::fs::FileTypeExt;
        // Only if it is still a socket: what stands there now may have replaced ours.
        if std::fs::symlink_metadata(&socket_path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&socket_path);
        }
    }
    // Requests already being served finish (their writes become durable and are acknowledged).
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while permits.available_permits() < CONNECTIONS_MAX && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped before the store: a rotation cut off here is finished at the next start.
    rotations.abort();
    office.store().shutdown();
    liveness.abort();
    reminders.abort();
    if let Some(r) = replication {
        // Links close on the stop signal; give them a moment to say goodbye.
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    checkpoints.abort();
    retention.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The first file descriptor systemd passes (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: i32 = 3;

/// The control socket systemd passed us (socket activation by `consentd.socket`), if any,
/// following sd_listen_fds(3): `LISTEN_PID` is our pid and `LISTEN_FDS` counts descriptors from
/// fd 3. Exactly one is expected, and it must be a listening Unix stream socket bound to the path
/// the config names: a unit and a config that disagree would leave operators' `consentctl`
/// talking to nothing, so that is refused at start rather than discovered later. The variables
/// are left in place: removing them would race with other threads reading the environment, and
/// the daemon starts no child process that could mistake the descriptor for its own.
fn activated_control_socket(config: &Config) -> Result<Option<UnixListener>, StartupError> {
    use std::os::fd::FromRawFd;
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    match fds.parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(1) => {}
        _ => {
            return Err(fail(format!(
                "systemd passed LISTEN_FDS={fds}; consentd.socket must pass exactly one socket"
            )))
        }
    }
    let fd = SD_LISTEN_FDS_START;
    // SAFETY: sd_listen_fds(3) hands fd 3 to this process (LISTEN_PID is ours), and this is the
    // only code that takes ownership of it, once, at start.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    check_activated_socket(&std_listener, fd, &config.control.socket)?;
    std_listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(std_listener))
        .map(Some)
        .map_err(|e| fail(format!("cannot use the socket systemd passed: {e}")))
}

/// Refuses a passed descriptor that is not a listening Unix stream socket bound to `want`.
fn check_activated_socket(
    listener: &std::os::unix::net::UnixListener,
    fd: i32,
    want: &Path,
) -> Result<(), StartupError> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is open (owned by `listener`); kind/len are valid for writes of their size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err(fail(
            "the descriptor systemd passed is not a stream socket (consentd.socket needs ListenStream=)",
        ));
    }
    let bound = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    match bound {
        Some(path) if path == want => Ok(()),
        Some(path) => Err(fail(format!(
            "systemd passed a socket bound to {} but [control] socket is {}; make them agree",
            path.display(),
            want.display()
        ))),
        None => Err(fail(
            "the socket systemd passed is not a Unix socket bound to a path",
        )),
    }
}

fn bind_control_socket(config: &Config) -> Result<UnixListener, StartupError> {
    let path = &config.control.socket;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ours to replace: `[control] socket` naming the config file, a key
        // or any other file deleted it at start (found by an exploratory session).
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(fail(format!(
                "[control] socket {} exists and is not a socket; refusing to replace it: name a path of its own",
                path.display()
            )));
        }
        // A live daemon answers; a stale file from a crash does not and is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(fail(format!(
                "another consentd is already serving {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            fail(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            fail(format!(
                "cannot create socket directory {}: {e}",
                parent.display()
            ))
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        fail(format!(
            "cannot bind control socket {}: {e}",
            path.display()
        ))
    })?;
    let mode = config.socket_mode().map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(format!("cannot set mode of {}: {e}", path.display())))?;
    Ok(listener)
}

/// The watchdog interval systemd asked for, following sd_watchdog_enabled(3): `WATCHDOG_USEC` set
/// and positive, and `WATCHDOG_PID` either unset or our own pid. (sd-notify 0.4 insists on the
/// pid being set, which systemd does not promise.)
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}

/// Every `every`, checks that the office's write path moves, and pings systemd's watchdog
/// (`ping`, when systemd asked for pings) only while it does. A write or ingest in flight for
/// `stall_after` or longer stops the pings, so systemd restarts the service, and is logged once
/// per stall; why, in `office::in_flight`. The log names what kind of work stalled and for how
/// long, nothing about whom it concerns.
async fn liveness(
    office: Arc<Office>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    stall_after: Duration,
    mut ping: Option<impl FnMut()>,
) {
    let mut stalled = false;
    let mut failed = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        // A store that can write nothing more until it is opened again (`Store::write_failure`)
        // is a stall no wait ends: reads go on, and systemd restarts the service.
        let then = if ping.is_some() {
            "withholding the watchdog ping so that systemd restarts consentd"
        } else {
            "restart consentd"
        };
        if let Some(why) = office.store().write_failure() {
            if !failed {
                failed = true;
                tracing::error!(
                    error = %why,
                    "storage can write nothing more until it is opened again; {then} (acknowledged writes are durable, reads go on)"
                );
            }
            continue;
        }
        match office.stalled(Instant::now(), stall_after) {
            None => {
                if stalled {
                    stalled = false;
                    tracing::info!("write path moving again");
                }
                if let Some(ping) = ping.as_mut() {
                    ping();
                }
            }
            Some((work, waited)) if !stalled => {
                stalled = true;
                tracing::error!(
                    oldest = work.name(),
                    waited_s = waited.as_secs(),
                    limit_s = stall_after.as_secs(),
                    "write path stalled: the oldest {} has been in flight for {} s; {then} (acknowledged writes are durable)",
                    work.name(),
                    waited.as_secs()
                );
            }
            Some(_) => {}
        }
    }
}

/// How far ahead the daily reminder looks for requests falling due.
const REMINDER_DAYS: u64 = 3;
/// How often the reminder runs.
const REMINDER_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a failed key-encryption key rotation waits before it is tried again (sooner if
/// another destruction asks for one).
const ROTATION_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Once a day (and at start), warns in the log about open requests past their due date and
/// those due within three days. The log names record ids and counts only, never who the
/// requests are about.
async fn due_soon_reminders(office: Arc<Office>, mut stop: watch::Receiver<bool>) {
    loop {
        // The most urgent case: it went unlogged while requests due soon were (found by an
        // exploratory session).
        match office.overdue() {
            Ok(overdue) if !overdue.is_empty() => tracing::warn!(
                count = overdue.len(),
                ids = %overdue.join(","),
                "requests are overdue: still open after their due date"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot check overdue requests"),
        }
        match office.due_soon(REMINDER_DAYS) {
            Ok(due) if !due.is_empty() => tracing::warn!(
                count = due.len(),
                ids = %due.join(","),
                "requests fall due within {REMINDER_DAYS} days"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot check requests falling due"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REMINDER_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs the key-encryption key rotations that key destructions made due
/// (`KeyStore::rotate_if_due`): at start (a crash came between a destruction and its rotation),
/// then whenever asked (`KeyStore::request_rotation`: tombstones from peers destroyed keys).
/// Requests that come while one runs are served by at most one more. After a failure the
/// rotation stays due and is tried again after [`ROTATION_RETRY_AFTER`] or the next request.
async fn rotations(office: Arc<Office>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let retry_after = match office.keys.rotate_if_due().await {
            Ok(ran) => {
                if ran && first {
                    tracing::info!(
                        "finished the key-encryption key rotation a restart interrupted"
                    );
                } else if ran {
                    tracing::info!(
                        generation = office.keys.generation(),
                        "rotated the key-encryption key after keys were destroyed"
                    );
                }
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate the key-encryption key; it stays due");
                Some(ROTATION_RETRY_AFTER)
            }
        };
        first = false;
        let retry = async {
            match retry_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = office.keys.rotation_requested() => {}
            _ = retry => {}
            _ = stop.changed() => return,
        }
    }
}

/// A client waiting for a control connection slot, and the idle connections that may close for
/// it ([`CONNECTIONS_MAX`]).
#[derive(Default)]
struct Reclaim {
    /// Set while the accept loop waits for a slot; the one connection that clears it closes.
    wanted: std::sync::atomic::AtomicBool,
    /// Wakes the idle connections when a slot is wanted.
    idle: tokio::sync::Notify,
}

impl Reclaim {
    /// Returns once this connection, idle since the call, has been idle `after` and takes the
    /// wanted slot's closing on itself: the caller then closes.
    async fn claim_after(&self, after: Duration) {
        tokio::time::sleep(after).await;
        loop {
            // Registered before the check, so a notification between the two is not missed.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .wanted
                .compare_exchange(
                    true,
                    false,
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                )
                .is_ok()
            {
                return;
            }
            notified.await;
        }
    }
}

/// Control connections open from uids without a role.
type OpenConnections = std::sync::Mutex<usize>;

/// One counted connection from a uid without a role; gives its slot back when dropped.
struct Slot<'a> {
    open: &'a OpenConnections,
}

impl<'a> Slot<'a> {
    fn take(open: &'a OpenConnections) -> Option<Slot<'a>> {
        let mut n = open.lock().unwrap_or_else(|p| p.into_inner());
        if *n >= ROLELESS_CONNECTIONS_MAX {
            return None;
        }
        *n += 1;
        Some(Slot { open })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

async fn serve_connection(
    mut stream: UnixStream,
    office: &Office,
    config: &Config,
    mut stop: watch::Receiver<bool>,
    open: &OpenConnections,
    reclaim: &Reclaim,
) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let role = config.role_of(uid);
    let _slot = match role {
        Some(_) => None,
        None => match Slot::take(open) {
            Some(slot) => Some(slot),
            None => {
                tracing::warn!(uid, "refused a control connection from a uid with no role: {ROLELESS_CONNECTIONS_MAX} already open");
                let message = format!(
                    "uid {uid} has no role on office {}: add it to control.operators or control.auditors in the office's config",
                    config.office
                );
                let _ = send(&mut stream, &ResponseFrame::error(message)).await;
                return;
            }
        },
    };
    loop {
        let mut len = [0u8; 4];
        let read = tokio::select! {
            // A request already arriving wins over a reclaim.
            biased;
            r = tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut len)) => r,
            _ = stop.changed() => return,
            _ = reclaim.claim_after(IDLE_RECLAIM_AFTER) => {
                tracing::debug!(uid, "closed an idle control connection to make room");
                return;
            }
        };
        match read {
            Ok(Ok(_)) => {}
            _ => return, // closed, idle or broken: nothing to answer
        }
        let len = u32::from_be_bytes(len) as u64;
        if len > REQUEST_BYTES_MAX as u64 {
            tracing::warn!(uid, bytes = len, "refused oversized control request");
            let message = format!(
                "request of {len} bytes exceeds the limit of {REQUEST_BYTES_MAX} bytes; split it (consentctl import does this for files)"
            );
            let _ = send(&mut stream, &ResponseFrame::error(message)).await;
            // Drain (bounded) so the client's write completes and it can read the refusal.
            let mut sink = tokio::io::sink();
            let mut limited = (&mut stream).take(len.min(DRAIN_BYTES_MAX));
            let _ =
                tokio::time::timeout(READ_TIMEOUT, tokio::io::copy(&mut limited, &mut sink)).await;
            return;
        }
        let mut payload = vec![0u8; len as usize];
        match tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        // Parsed once, here; `handle` answers a request that does not parse (after the role).
        let parsed = crate::protocol::parse_request(&payload);
        drop(payload);
        if parsed.as_ref().is_ok_and(crate::audit::export::is_export) {
            // Streams many frames, so it cannot go through `handle`'s one answer.
            if crate::audit::export::serve(&mut stream, uid, role, office)
                .await
                .is_err()
            {
                return;
            }
            if role.is_none() {
                return;
            }
            continue;
        }
        let response = handle(parsed, uid, role, office, config).await;
        // A uid without a role gets its refusal and nothing more: the connection is not kept.
        if send(&mut stream, &response).await.is_err() || role.is_none() {
            return;
        }
    }
}

async fn send(stream: &mut UnixStream, frame: &ResponseFrame) -> std::io::Result<()> {
    let payload = serde_json::to_vec(frame).expect("responses serialise");
    stream.write_all(&encode_frame(&payload)).await
}

async fn handle(
    parsed: Result<RequestFrame, RequestRefusal>,
    uid: u32,
    role: Option<Role>,
    office: &Office,
    config: &Config,
) -> ResponseFrame {
    let started = Instant::now();
    let Some(role) = role else {
        tracing::warn!(uid, "refused control request from a uid with no role");
        return ResponseFrame::error(format!(
            "uid {uid} has no role on office {}: add it to control.operators or control.auditors in the office's config",
            config.office
        ));
    };
    let frame = match parsed {
        Ok(f) => f,
        Err(e) => {
            match &e {
                RequestRefusal::Malformed(_) => {
                    tracing::warn!(uid, "refused malformed control request")
                }
                RequestRefusal::Invalid(_) => {
                    tracing::warn!(uid, "refused invalid control request")
                }
                RequestRefusal::Version(_) => {}
            }
            return ResponseFrame::error(e.to_string());
        }
    };
    let op = frame.request.op();
    if frame.request.is_write() && role != Role::Operator {
        tracing::warn!(
            uid,
            op,
            role = role.name(),
            "refused write from a read-only role"
        );
        return ResponseFrame::error(format!(
            "uid {uid} has the {} role, which may only read; {op} needs the operator role",
            role.name()
        ));
    }
    let result = office.execute(frame.request).await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(value) => {
            tracing::debug!(uid, op, elapsed_us, "ok");
            ResponseFrame::ok(value)
        }
        Err(e) => {
            // The message may echo the caller's own input; the log gets only the class.
            match &e {
                OfficeError::Invalid(_) | OfficeError::NotFound(_) => {
                    tracing::info!(uid, op, elapsed_us, "refused: invalid input")
                }
                OfficeError::Full(_) => {
                    tracing::warn!(
                        uid,
                        op,
                        elapsed_us,
                        "refused: a record would pass its limit"
                    )
                }
                OfficeError::Storage(_) => {
                    tracing::error!(uid, op, error = %e, "storage failure")
                }
                OfficeError::Integrity(_) => {
                    tracing::error!(uid, op, "integrity failure in stored records")
                }
            }
            ResponseFrame::error(match e {
                OfficeError::Storage(s) => {
                    format!("storage failure, nothing was written: {s}")
                }
                other => other.to_string(),
            })
        }
    }
}

/// The environment variables that set the log filter, first found wins, over `[log] filter`.
pub const LOG_FILTER_ENV: [&str; 2] = ["CONSENTD_LOG", "RUST_LOG"];

/// The log filter in force, which the config may set once read ([`LogFilter::apply_config`]).
pub struct LogFilter {
    handle: Option<
        tracing_subscriber::reload::Handle<
            tracing_subscriber::EnvFilter,
            tracing_subscriber::Registry,
        >,
    >,
    from_env: bool,
}

impl LogFilter {
    /// Applies `[log] filter` unless the environment set one (`CONSENTD_LOG`, else `RUST_LOG`).
    /// Before, the config's filter was validated and never applied, and `RUST_LOG` (which
    /// docs/systemd.md suggests) was ignored: every setting logged the same INFO lines (found by
    /// an exploratory session).
    pub fn apply_config(&self, filter: &str) -> Result<(), String> {
        let (Some(handle), false) = (&self.handle, self.from_env) else {
            return Ok(());
        };
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| format!("[log] filter {filter:?}: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot apply [log] filter: {e}"))
    }
}

/// Whether stderr is connected to the journal (`JOURNAL_STREAM` names its device and inode):
/// lines then start with a syslog priority (`<3>` for errors), which journald reads as the
/// entry's priority, and carry no time (the journal stamps each).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let stderr = std::fs::metadata("/proc/self/fd/2").or_else(|_| std::fs::metadata("/dev/stderr"));
    stderr.is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// A log line's syslog priority prefix (sd-daemon(3)): journald files it under that priority,
/// so `journalctl -p err` finds storage failures.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Sets up logging to stderr (journald captures it under systemd), with `filter` until the
/// config's applies, unless the environment sets one ([`LOG_FILTER_ENV`]).
pub fn init_tracing(filter: &str) -> LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = LOG_FILTER_ENV
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok());
    let env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| tracing_subscriber::EnvFilter::try_new(filter).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let journal = stderr_is_journal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if journal {
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .without_time();
        registry
            .with(fmt.event_format(JournalPriority(format)))
            .try_init()
    } else {
        registry.with(fmt).try_init()
    };
    LogFilter {
        handle: installed.is_ok().then_some(handle),
        from_env: env_set,
    }
}

/// The default control socket for clients.
pub fn default_socket() -> PathBuf {
    std::env::var_os("CONSENTD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/consentd/control.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Client, Request};
    use serde_json::Value;

    fn call(socket: &Path, request: &Request) -> Value {
        Client::connect(socket)
            .and_then(|mut c| c.call(request))
            .unwrap_or_else(|e| panic!("control socket did not answer: {e}"))
    }

    fn status(socket: &Path) -> Value {
        call(socket, &Request::Status(protocol::Empty {}))
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `de` of a two-office network, running in this process with its set build held at a
    /// gate. Fields drop in order: the gate first, since the runtime's drop waits for the
    /// blocking build, which waits for the gate (a failed assertion otherwise hung the test).
    struct Gated {
        gate: Option<std::sync::mpsc::Sender<()>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        daemon: Option<tokio::task::JoinHandle<Result<(), StartupError>>>,
        office: Arc<Office>,
        socket: PathBuf,
        rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Gated {
        fn start(network: &str) -> Gated {
            let dir = tempfile::tempdir().unwrap();
            let offices = crate::network::parse_offices("de,nl").unwrap();
            crate::network::init(dir.path(), &offices, None, network).unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let gate = crate::replicate::build_gate::close(network);
            let prepared = prepare(&dir.path().join("de").join("consentd.toml")).unwrap();
            let socket = prepared.config.control.socket.clone();
            let office = prepared.office.clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let daemon = rt.spawn(run(prepared, async move {
                let _ = stopped.await;
            }));
            wait_for("the control socket", || socket.exists());
            Gated {
                gate: Some(gate),
                stop: Some(stop),
                daemon: Some(daemon),
                office,
                socket,
                rt,
                _dir: dir,
            }
        }

        fn open_gate(&mut self) {
            self.gate = None;
        }

        fn stop(&mut self) {
            let _ = self.stop.take().expect("stopped once").send(());
        }

        fn join(&mut self) {
            let daemon = self.daemon.take().expect("joined once");
            self.rt.block_on(daemon).unwrap().unwrap();
        }
    }

    /// Rebuilding the replication sets reads every stored envelope (minutes at 1,000,000
    /// records). Until this was moved off the serving path, the control socket accepted
    /// connections but answered none of them, consent checks included, until it was done.
    #[test]
    fn the_control_socket_serves_while_replication_starts() {
        let mut de = Gated::start("gate-serves");
        let socket = de.socket.clone();

        // Held at the gate: starting, and the socket answers everything meanwhile.
        let s = status(&socket);
        assert_eq!(s["replication"], "starting", "{s}");
        let subject = "anna@example.com";
        let check = || {
            call(
                &socket,
                &Request::ConsentCheck(protocol::ConsentCheck {
                    subject: subject.into(),
                    purpose: "marketing".into(),
                    at: None,
                }),
            )
        };
        let before = check();
        assert_eq!(before["granted"], false, "{before}");
        // A write is acknowledged (durable) meanwhile, and counts at once.
        call(
            &socket,
            &Request::ConsentGrant(protocol::ConsentGrant {
                service: Some("sms".into()),
                evidence: Some("web form v3".into()),
                ..protocol::ConsentGrant::new(subject, "marketing", "consent")
            }),
        );
        let after = check();
        assert_eq!(after["granted"], true, "{after}");
        let peers = call(&socket, &Request::Peers(protocol::Empty {}));
        let peers = peers.as_array().expect("peers is an array");
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0]["office"], "nl");
        assert_eq!(peers[0]["connected"], false);
        assert!(
            peers[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("starting")),
            "{peers:?}"
        );

        de.open_gate();
        wait_for("replication to run", || {
            de.office.replication_state() == "running"
        });
        assert_eq!(status(&socket)["replication"], "running");
        de.stop();
        de.join();
    }

    /// A daemon told to stop while it builds its sets stops without waiting for the build.
    #[test]
    fn a_stop_during_the_build_ends_it_early() {
        let mut de = Gated::start("gate-stops");
        assert_eq!(de.office.replication_state(), "starting");
        de.stop();
        // The stop is seen before the gate opens; the build then returns at its first page.
        wait_for("the daemon to stop serving", || !de.socket.exists());
        de.open_gate();
        de.join();
        wait_for("the build to give up", || {
            de.office.replication_state() == "failed"
        });
        let peers = de.office.peers();
        assert!(
            peers[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("stopped")),
            "{peers}"
        );
    }

    /// A write that cannot finish stops the watchdog's pings once it has been in flight for the
    /// stall limit, and they come back once it finishes (`office::in_flight`). The write waits
    /// for the keys' shared lock behind a key destruction that waits for another holder of it,
    /// which this test lets go of at the end.
    #[test]
    fn a_stalled_write_stops_the_watchdog_pings_until_it_moves() {
        const EVERY: Duration = Duration::from_millis(20);
        const STALL: Duration = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let offices = crate::network::parse_offices("de").unwrap();
        crate::network::init(dir.path(), &offices, None, "stall").unwrap();
        let office = prepare(&dir.path().join("de").join("consentd.toml"))
            .unwrap()
            .office;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (pinged, pings) = std::sync::mpsc::channel();
        let (stop, stopped) = watch::channel(false);
        let ping = move || {
            let _ = pinged.send(());
        };
        rt.spawn(liveness(office.clone(), stopped, EVERY, STALL, Some(ping)));
        let soon = Duration::from_secs(10);
        pings.recv_timeout(soon).expect("pings while writes move");

        let holder = rt.block_on(office.keys.using());
        let destroying = rt.spawn({
            let office = office.clone();
            async move { drop(office.keys.destroying().await) }
        });
        rt.block_on(async {
            // Queued once a new reader has to wait.
            let wait = Duration::from_millis(20);
            while let Ok(g) = tokio::time::timeout(wait, office.keys.using()).await {
                drop(g);
                tokio::task::yield_now().await;
            }
        });
        let write = rt.spawn({
            let office = office.clone();
            async move {
                office
                    .execute(Request::ConsentGrant(protocol::ConsentGrant {
                        evidence: Some("web form v3".into()),
                        ..protocol::ConsentGrant::new("stall@example.com", "marketing", "consent")
                    }))
                    .await
            }
        });
        // Pings go on until the write has waited `STALL`, then stop.
        let deadline = Instant::now() + soon;
        while pings.recv_timeout(2 * STALL).is_ok() {
            assert!(
                Instant::now() < deadline,
                "pings went on while a write stalled"
            );
        }
        assert!(
            pings.recv_timeout(3 * STALL).is_err(),
            "no ping while the write stalls"
        );
        let (work, waited) = office
            .stalled(Instant::now(), STALL)
            .expect("the office says its write path stalled");
        assert_eq!(work, crate::office::Work::Write);
        assert!(waited >= STALL);
        assert!(!write.is_finished());

        drop(holder);
        rt.block_on(destroying).unwrap();
        let answer = rt.block_on(write).unwrap().unwrap();
        assert!(answer["id"].is_string(), "{answer}");
        pings
            .recv_timeout(soon)
            .expect("pings again once the write finished");
        assert!(office.stalled(Instant::now(), Duration::ZERO).is_none());
        stop.send(true).unwrap();
    }
}
