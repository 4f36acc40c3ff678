//! The syncer: each redb commit made durable by a thread of its own, strictly in commit order,
//! while the writer goes on with the next group.
//!
//! **Why.** A durable redb commit writes its pages (`pwrite`) and syncs the file (`fdatasync`)
//! before it returns, and the writer thread used to wait through both: 1.0-1.2 ms of its 2.1-2.3
//! ms cycle with 64 clients, while every request queued behind it waited too. redb is given a
//! storage backend ([`Backend`]) whose `sync_data` returns at once: a commit's writes become a
//! *generation*, which the syncer thread writes and syncs after the one before it, while the
//! writer applies and commits the next group in memory. Measured with 64 clients (BENCHMARKS.md,
//! thirty-first session): the writer's cycle 1.6-1.7 ms, a sync 0.54 ms; +2-8 % records/s at
//! 100,000 records and +3-11 % at 1,000,000, none at 10,000 (the cores bound the rest).
//!
//! **Invariants.**
//! - The file holds a prefix of the generations: generation g's writes reach the file only after
//!   generation g-1's sync returned. A crash or power loss leaves the file as an ordinary
//!   sequence of durable redb commits stopped at that point would, and redb's own recovery opens
//!   it.
//! - Nothing is told of a commit before its generation is durable: the writer answers its
//!   requests, and hands readers the commit's snapshot, from [`Syncer::on_durable`]'s callbacks
//!   (`writer::publish_when_durable`).
//! - Reads through the backend see every write, synced or not: redb reads back what it wrote.
//! - After a failed write or sync nothing more is written: the generations queued behind it
//!   fail, every later `sync_data` fails (so does every commit after it), and the store keeps
//!   serving reads of its last durable snapshot. The file is as of the last durable generation,
//!   which a restart opens.
//!
//! **Limits.** At most [`QUEUED_MAX`] generations wait for the syncer; a further `sync_data`
//! (the writer's next commit) blocks until one is durable. While any wait, a generation buffers
//! at most [`BUFFERED_BYTES_MAX`] of writes in memory; past that, its writer waits for the queue
//! to empty and writes straight to the file (a journal merge rewrites up to ~80 MiB of leaves at
//! 1,000,000 records): at most 48 MiB of writes in memory in all. A generation written while
//! none waits goes straight to the file. A read
//! through the backend scans the buffered writes that overlap it (redb's cache serves most
//! reads; a buffer holds at most 4,096 page writes).

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Generations waiting for the syncer (being written or synced included) before the writer's
/// next `sync_data` waits. Two: one being synced while the next is written behind it; more only
/// adds latency to every acknowledgement.
pub(crate) const QUEUED_MAX: usize = 2;
/// Bytes one generation buffers while others wait (16 MiB: a group commit writes ~0.2 MiB, an
/// import chunk ~1.7 MiB).
pub(crate) const BUFFERED_BYTES_MAX: usize = 16 << 20;

/// Why nothing more is made durable: the first write or sync error (no personal data: an I/O
/// error's text).
#[derive(Clone, Debug)]
pub(crate) struct SyncFailed(pub Arc<str>);

impl std::fmt::Display for SyncFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the database file failed: {}", self.0)
    }
}

/// Run once the generation it waits for is durable (`Ok`), or will never be (`Err`).
pub(crate) type OnDurable = Box<dyn FnOnce(Result<(), SyncFailed>) + Send>;

#[derive(Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Op {
    /// Applies this buffered operation to `buf`, the bytes at `offset` as they were before it.
    fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        match self {
            Op::Write { offset: at, data } => {
                let (from, to) = ((*at).max(offset), (*at + data.len() as u64).min(end));
                if from < to {
                    buf[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                }
            }
            // Shrunk and grown again reads as zeros.
            Op::SetLen(len) if *len < end => buf[((*len).max(offset) - offset) as usize..].fill(0),
            Op::SetLen(_) => {}
        }
    }

    fn overlaps(&self, offset: u64, end: u64) -> bool {
        match self {
            Op::Write { offset: at, data } => *at < end && offset < *at + data.len() as u64,
            Op::SetLen(len) => *len < end,
        }
    }

    fn apply(&self, file: &FileBackend) -> std::io::Result<()> {
        match self {
            Op::Write { offset, data } => file.write(*offset, data),
            Op::SetLen(len) => file.set_len(*len),
        }
    }
}

/// One commit's writes (those not written straight to the file), in the order redb made them.
struct Generation {
    id: u64,
    ops: Vec<Op>,
    /// Everything the commit wrote, straight to the file or not (for the trace).
    bytes: usize,
}

#[derive(Default)]
struct State {
    /// The generation being built: writes since the last `sync_data` that wait in memory.
    building: Vec<Op>,
    /// Bytes of `building`'s writes (bounded by [`BUFFERED_BYTES_MAX`]), and of all the
    /// generation's writes, straight to the file ones too (for the trace).
    building_bytes: usize,
    building_written: usize,
    /// Submitted and not yet durable, oldest first; the syncer works on the front one.
    queue: VecDeque<Arc<Generation>>,
    /// The last generation submitted (`sync_data`) and the last one durable.
    submitted: u64,
    durable: u64,
    /// The last generation whose callbacks have all run (`u64::MAX` after a failure's).
    settled: u64,
    /// Callbacks waiting for a generation, in the order they were registered.
    waiting: VecDeque<(u64, OnDurable)>,
    /// The storage's length as redb sees it (buffered `set_len`s included).
    len: u64,
    failed: Option<SyncFailed>,
    /// Set by `close`: the syncer stops once the queue is empty.
    stopping: bool,
    /// The syncer is writing or syncing the front generation.
    working: bool,
    #[cfg(test)]
    paused: bool,
    #[cfg(test)]
    fail_next_sync: bool,
    #[cfg(test)]
    fail_next_write: bool,
}

/// The state shared by the [`Backend`] redb writes through and the syncer thread.
pub(crate) struct Syncer {
    file: FileBackend,
    state: Mutex<State>,
    /// Signalled whenever the queue or `durable` changes.
    changed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer").finish_non_exhaustive()
    }
}

/// What redb is opened with: the file, written and synced by the [`Syncer`].
#[derive(Debug)]
pub(crate) struct Backend(pub(crate) Arc<Syncer>);

impl Syncer {
    /// Starts the syncer thread for `file` (opened read-write).
    pub(crate) fn start(file: File) -> std::io::Result<Arc<Syncer>> {
        let len = file.metadata()?.len();
        let syncer = Arc::new(Syncer {
            file: FileBackend::new(file).map_err(std::io::Error::other)?,
            state: Mutex::new(State {
                len,
                ..State::default()
            }),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        let handle = std::thread::Builder::new()
            .name("consentd-storage-syncer".into())
            .spawn({
                let syncer = Arc::clone(&syncer);
                move || syncer.run()
            })?;
        *syncer.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(syncer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the last commit (the last `sync_data`); 0 before any.
    pub(crate) fn submitted(&self) -> u64 {
        self.lock().submitted
    }

    /// Runs `f` once generation `gen` is durable, or at once (on this thread) if it is already.
    /// Callbacks run in the order they were registered, on the syncer thread.
    pub(crate) fn on_durable(&self, gen: u64, f: OnDurable) {
        let mut s = self.lock();
        debug_assert!(
            gen <= s.submitted,
            "waiting for a generation never submitted"
        );
        // Callbacks are registered in commit order and the syncer runs every one of a
        // generation as it becomes durable, so those still waiting are all for later ones.
        debug_assert!(
            s.waiting.is_empty() || s.durable < gen,
            "a callback registered behind later generations' would wait for the next sync"
        );
        if s.waiting.is_empty() && s.durable >= gen {
            drop(s);
            return f(Ok(()));
        }
        if let Some(failed) = s.failed.clone() {
            if s.durable < gen {
                drop(s);
                return f(Err(failed));
            }
        }
        s.waiting.push_back((gen, f));
    }

    /// The write or sync error that stopped the syncer, if one did.
    pub(crate) fn failure(&self) -> Option<SyncFailed> {
        self.lock().failed.clone()
    }

    /// Blocks until generation `gen` is durable.
    pub(crate) fn wait_durable(&self, gen: u64) -> Result<(), SyncFailed> {
        let mut s = self.lock();
        loop {
            if s.durable >= gen {
                return Ok(());
            }
            if let Some(failed) = &s.failed {
                return Err(failed.clone());
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until generation `gen` is durable and its callbacks have run (or failed).
    pub(crate) fn wait_settled(&self, gen: u64) -> Result<(), SyncFailed> {
        let mut s = self.lock();
        while s.settled < gen {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.failed.clone().map_or(Ok(()), Err)
    }

    /// The syncer thread: writes and syncs each generation in turn.
    fn run(&self) {
        loop {
            let generation = {
                let mut s = self.lock();
                loop {
                    #[cfg(test)]
                    let paused = s.paused;
                    #[cfg(not(test))]
                    let paused = false;
                    if let (Some(front), false, None) = (s.queue.front(), paused, &s.failed) {
                        let front = Arc::clone(front);
                        s.working = true;
                        break front;
                    }
                    if s.stopping && s.queue.is_empty() {
                        return;
                    }
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            let started = Instant::now();
            // The test hook fails the generation before any of it is written.
            #[cfg(test)]
            let injected = std::mem::take(&mut self.lock().fail_next_sync);
            #[cfg(not(test))]
            let injected = false;
            let written = match injected {
                true => Err(std::io::Error::other("injected write failure")),
                false => generation
                    .ops
                    .iter()
                    .try_for_each(|op| op.apply(&self.file)),
            };
            let write_us = started.elapsed().as_micros() as u64;
            let synced = written.and_then(|()| self.file.sync_data());
            let ready = {
                let mut s = self.lock();
                debug_assert_eq!(
                    s.queue.front().map(|g| g.id),
                    Some(generation.id),
                    "only the syncer takes generations off the queue"
                );
                s.working = false;
                match synced {
                    Ok(()) => {
                        s.queue.pop_front();
                        debug_assert_eq!(s.durable + 1, generation.id, "generations in order");
                        s.durable = generation.id;
                        let durable = s.durable;
                        let n = s.waiting.iter().take_while(|(g, _)| *g <= durable).count();
                        let ready: Vec<_> = s.waiting.drain(..n).map(|(_, f)| f).collect();
                        (ready, Ok(()))
                    }
                    Err(e) => {
                        // No personal data: the I/O error and the generation's size.
                        tracing::error!(
                            generation = generation.id,
                            bytes = generation.bytes,
                            error = %e,
                            "writing or syncing the database file failed; no further commit \
                             will be made durable (restart the daemon)"
                        );
                        let failed = SyncFailed(e.to_string().into());
                        s.failed = Some(failed.clone());
                        s.queue.clear();
                        let ready: Vec<_> = s.waiting.drain(..).map(|(_, f)| f).collect();
                        (ready, Err(failed))
                    }
                }
            };
            self.changed.notify_all();
            tracing::trace!(
                generation = generation.id,
                ops = generation.ops.len(),
                bytes = generation.bytes,
                write_us,
                sync_us = started.elapsed().as_micros() as u64 - write_us,
                "generation durable"
            );
            let (ready, result) = ready;
            // The earlier ones registered first: acknowledgements and snapshots in commit order.
            for f in ready {
                f(result.clone());
            }
            self.lock().settled = match result {
                Ok(()) => generation.id,
                Err(_) => u64::MAX,
            };
            self.changed.notify_all();
        }
    }

    /// Test hooks: hold the syncer before its next generation, and fail the next generation
    /// (none of its writes reach the file).
    #[cfg(test)]
    pub(crate) fn pause(&self, paused: bool) {
        self.lock().paused = paused;
        self.changed.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Test hook: fail redb's next write through the backend (a full disk as redb meets it,
    /// inside a commit, rather than behind it in the syncer).
    #[cfg(test)]
    pub(crate) fn fail_next_write(&self) {
        self.lock().fail_next_write = true;
    }

    /// Buffers `op` or, when no generation waits, applies it to the file at once.
    fn write_op(&self, op: Op) -> std::io::Result<()> {
        let mut s = self.lock();
        if let Some(failed) = &s.failed {
            return Err(std::io::Error::other(failed.to_string()));
        }
        #[cfg(test)]
        if std::mem::take(&mut s.fail_next_write) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        match &op {
            Op::SetLen(len) => s.len = *len,
            Op::Write { data, .. } => s.building_written += data.len(),
        }
        if s.queue.is_empty() && s.building.is_empty() {
            // Every earlier generation is durable: this write cannot overtake one. Only redb's
            // single writer writes, so no generation is queued until it calls `sync_data`.
            drop(s);
            return op.apply(&self.file);
        }
        if let Op::Write { data, .. } = &op {
            s.building_bytes += data.len();
        }
        s.building.push(op);
        if s.building_bytes <= BUFFERED_BYTES_MAX {
            return Ok(());
        }
        // Too much to hold: wait for the earlier generations, then write what was buffered.
        while !s.queue.is_empty() && s.failed.is_none() {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(failed) = &s.failed {
            return Err(std::io::Error::other(failed.to_string()));
        }
        for op in &s.building {
            op.apply(&self.file)?;
        }
        s.building.clear();
        s.building_bytes = 0;
        Ok(())
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let end = offset + out.len() as u64;
        // The buffered writes that overlap, taken before the file is read: a generation the
        // syncer writes meanwhile is then applied twice, the same bytes both times.
        let (queued, building) = {
            let s = self.0.lock();
            if end > s.len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("read of {offset}..{end} past the end ({})", s.len),
                ));
            }
            let building: Vec<Op> = s
                .building
                .iter()
                .filter(|op| op.overlaps(offset, end))
                .cloned()
                .collect();
            (s.queue.iter().cloned().collect::<Vec<_>>(), building)
        };
        // The file may be shorter than redb's length while a `set_len` waits, and the syncer may
        // shrink it meanwhile (a queued `set_len`, which the overlay below applies too): read what
        // the file holds now, again if it shrank under the read.
        let mut tries = 0;
        let on_file = loop {
            let on_file = self
                .0
                .file
                .len()?
                .saturating_sub(offset)
                .min(out.len() as u64) as usize;
            match self.0.file.read(offset, &mut out[..on_file]) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && tries < 8 => tries += 1,
                read => break read.map(|()| on_file)?,
            }
        };
        out[on_file..].fill(0);
        for op in queued.iter().flat_map(|g| g.ops.iter()).chain(&building) {
            op.overlay(offset, out);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.write_op(Op::SetLen(len))
    }

    /// Submits the writes since the last call as a generation and returns: the syncer makes it
    /// durable. Waits while [`QUEUED_MAX`] generations are queued already.
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.0.lock();
        if let Some(failed) = &s.failed {
            return Err(std::io::Error::other(failed.to_string()));
        }
        s.submitted += 1;
        let generation = Generation {
            id: s.submitted,
            ops: std::mem::take(&mut s.building),
            bytes: std::mem::take(&mut s.building_written),
        };
        s.building_bytes = 0;
        s.queue.push_back(Arc::new(generation));
        self.0.changed.notify_all();
        while s.queue.len() > QUEUED_MAX && s.failed.is_none() {
            s = self.0.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write_op(Op::Write {
            offset,
            data: data.to_vec(),
        })
    }

    /// redb's last call: everything submitted is made durable (what was written after the last
    /// `sync_data` too: redb syncs before it closes a file it wrote), then the thread stops.
    fn close(&self) -> Result<(), std::io::Error> {
        let pending = {
            let s = self.0.lock();
            !s.building.is_empty() && s.failed.is_none()
        };
        // Even if this fails, the thread stops and the file's locks are released below.
        let submitted = match pending {
            true => self.sync_data(),
            false => Ok(()),
        };
        let last = self.0.submitted();
        let durable = submitted.and_then(|()| {
            self.0
                .wait_durable(last)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        self.0.lock().stopping = true;
        self.0.changed.notify_all();
        let handle = self
            .0
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        self.0.file.close()?;
        durable
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const PAGE: u64 = 4096;

    fn start(dir: &tempfile::TempDir) -> (Arc<Syncer>, Backend, std::path::PathBuf) {
        let path = dir.path().join("file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let syncer = Syncer::start(file).unwrap();
        let backend = Backend(Arc::clone(&syncer));
        (syncer, backend, path)
    }

    /// A small deterministic generator (xorshift), so a failing run replays.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random writes, lengths and syncs, with the syncer held now and then: every read through
    /// the backend equals a plain in-memory model, and the file itself always equals the model
    /// as of some generation not yet durable or the last durable one: never a later
    /// generation's write before an earlier generation's sync.
    #[test]
    fn reads_see_every_write_and_the_file_holds_a_prefix_of_the_generations() {
        for seed in 1..=20u64 {
            let dir = tempfile::tempdir().unwrap();
            let (syncer, backend, path) = start(&dir);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut model: Vec<u8> = Vec::new();
            // The model after each generation (index = generation).
            let mut at: Vec<Vec<u8>> = vec![Vec::new()];
            for step in 0..400 {
                match rng.below(10) {
                    0..=5 if !model.is_empty() => {
                        let pages = model.len() as u64 / PAGE;
                        let offset = rng.below(pages) * PAGE + rng.below(2) * 100;
                        let len = (rng.below(3 * PAGE) + 1).min(model.len() as u64 - offset);
                        let data: Vec<u8> = (0..len).map(|i| (step + i) as u8 | 1).collect();
                        backend.write(offset, &data).unwrap();
                        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                    }
                    0..=6 => {
                        // Grow mostly, shrink now and then: what redb does to its file.
                        let len = match rng.below(4) {
                            0 => model.len() as u64 / 2 / PAGE * PAGE,
                            _ => model.len() as u64 + (rng.below(8) + 1) * PAGE,
                        };
                        backend.set_len(len).unwrap();
                        model.resize(len as usize, 0);
                    }
                    7 | 8 => {
                        // A held syncer would hold this call forever.
                        if syncer.lock().queue.len() >= QUEUED_MAX {
                            syncer.pause(false);
                        }
                        backend.sync_data().unwrap();
                        at.push(model.clone());
                    }
                    _ => syncer.pause(rng.below(2) == 0),
                }
                assert_eq!(backend.len().unwrap(), model.len() as u64, "seed {seed}");
                if !model.is_empty() {
                    let offset = rng.below(model.len() as u64);
                    let len = rng.below(model.len() as u64 - offset) + 1;
                    let mut out = vec![0xAA; len as usize];
                    backend.read(offset, &mut out).unwrap();
                    assert_eq!(
                        out,
                        model[offset as usize..(offset + len) as usize],
                        "seed {seed} step {step}: a read missed a write"
                    );
                }
                // Held, the syncer cannot move the file under this check.
                let s = syncer.lock();
                if s.paused && !s.working && !s.queue.is_empty() {
                    let on_file = std::fs::read(&path).unwrap();
                    let (durable, front) = (s.durable, s.queue.front().map_or(0, |g| g.id));
                    assert!(
                        (durable..=front).any(|g| at[g as usize] == on_file),
                        "seed {seed} step {step}: the file is no generation's from {durable} \
                         to {front}"
                    );
                }
            }
            syncer.pause(false);
            backend.sync_data().unwrap();
            at.push(model.clone());
            syncer.wait_durable(syncer.submitted()).unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                model,
                "seed {seed}: at the end"
            );
            backend.close().unwrap();
        }
    }

    /// Callbacks wait for their generation, run in the order they were registered, and a
    /// generation durable already runs its callback at once.
    #[test]
    fn callbacks_run_once_their_generation_is_durable_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, backend, _) = start(&dir);
        let ran = Arc::new(Mutex::new(Vec::new()));
        let log = |n: u64| -> OnDurable {
            let ran = Arc::clone(&ran);
            Box::new(move |r| ran.lock().unwrap().push((n, r.is_ok())))
        };
        backend.set_len(PAGE).unwrap();
        backend.write(0, &[1; 10]).unwrap();
        backend.sync_data().unwrap();
        syncer.wait_durable(1).unwrap();
        syncer.on_durable(1, log(1));
        assert_eq!(
            *ran.lock().unwrap(),
            [(1, true)],
            "durable already: at once"
        );

        syncer.pause(true);
        for gen in 2..=3 {
            backend.write(0, &[gen as u8; 10]).unwrap();
            backend.sync_data().unwrap();
            syncer.on_durable(gen, log(gen));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            ran.lock().unwrap().len(),
            1,
            "ran before its generation was durable"
        );
        syncer.pause(false);
        syncer.wait_settled(3).unwrap();
        assert_eq!(*ran.lock().unwrap(), [(1, true), (2, true), (3, true)]);
        backend.close().unwrap();
    }

    /// A failed sync fails the callbacks waiting and every later write, sync and wait; what was
    /// durable stays readable.
    #[test]
    fn a_failed_sync_fails_its_generation_and_everything_after() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, backend, _) = start(&dir);
        backend.set_len(PAGE).unwrap();
        backend.write(0, &[1; 8]).unwrap();
        backend.sync_data().unwrap();
        syncer.wait_durable(1).unwrap();

        syncer.pause(true);
        syncer.fail_next_sync();
        backend.write(0, &[2; 8]).unwrap();
        backend.sync_data().unwrap();
        let failures = Arc::new(AtomicU64::new(0));
        let f = Arc::clone(&failures);
        syncer.on_durable(
            2,
            Box::new(move |r| {
                assert!(r.is_err(), "a failed generation reported durable");
                f.fetch_add(1, Ordering::SeqCst);
            }),
        );
        syncer.pause(false);
        assert!(syncer.wait_durable(2).is_err());
        assert!(syncer.wait_settled(2).is_err());
        assert_eq!(failures.load(Ordering::SeqCst), 1);
        assert!(
            backend.write(0, &[3; 8]).is_err(),
            "written after a failure"
        );
        assert!(backend.sync_data().is_err(), "synced after a failure");
        syncer.on_durable(2, Box::new(|r| assert!(r.is_err())));
        let mut out = [0; 8];
        backend.read(0, &mut out).unwrap();
        assert!(backend.close().is_err(), "closed as if durable");
    }

    /// A generation that outgrows its buffer while another waits waits for it, then writes
    /// straight to the file; nothing is lost or reordered.
    #[test]
    fn a_generation_too_large_to_buffer_waits_then_writes_through() {
        let dir = tempfile::tempdir().unwrap();
        let (syncer, backend, path) = start(&dir);
        let len = BUFFERED_BYTES_MAX as u64 + 4 * PAGE;
        backend.set_len(len).unwrap();
        backend.sync_data().unwrap();
        syncer.wait_durable(1).unwrap();
        syncer.pause(true);
        backend.write(0, &[1; 16]).unwrap();
        backend.sync_data().unwrap();
        let resume = {
            let syncer = Arc::clone(&syncer);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                syncer.pause(false);
            })
        };
        let chunk = vec![7u8; PAGE as usize];
        for page in 0..len / PAGE {
            backend.write(page * PAGE, &chunk).unwrap();
        }
        resume.join().unwrap();
        assert!(
            syncer.lock().building.is_empty(),
            "the overflow was not written through"
        );
        backend.sync_data().unwrap();
        syncer.wait_durable(3).unwrap();
        let on_file = std::fs::read(&path).unwrap();
        assert_eq!(on_file.len() as u64, len);
        assert!(
            on_file.iter().all(|&b| b == 7),
            "a write was lost or reordered"
        );
        backend.close().unwrap();
    }
}
