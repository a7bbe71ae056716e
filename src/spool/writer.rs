//! The one spool writer: a thread that owns the [`Store`]. It takes messages in batches and
//! commits each batch together with the group acks and parks that arrived meanwhile (one
//! transaction, one fsync); right after a successful commit it hands the batch to the caller's
//! after-commit hook, on the same thread. What rides along with a message (`T`: for the daemon,
//! where its ACK goes) is opaque here. A batch whose commit fails (disk full) is kept and
//! retried every second; the hook only ever sees committed messages.

use super::handle::{Cmd, SpoolHandle, WriterState};
use super::{Appended, NewMessage, Reader, SpoolError, Store, StoreOptions};
use crate::notify::Progress;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, error, info, warn};

/// Most messages committed in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Most bytes of message bodies committed in one transaction (a batch of large messages ends
/// sooner): bounds the memory a batch holds and the time one commit takes.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How often retention runs at most apart while the spool changes: each pass then deletes about
/// a second's worth of acked messages, a few milliseconds of work, instead of a burst that would
/// delay ACKs.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// How often it runs while nothing changes (only time expires messages and receipts then): an
/// idle daemon stays asleep.
const RETENTION_IDLE: Duration = Duration::from_secs(60);
/// The shortest retention period (a tiny `max_age`, or `max_bytes` exceeded after a commit).
const RETENTION_MIN: Duration = Duration::from_millis(50);
/// How long group acks wait for a batch of messages to share its commit before committing alone.
const ACK_FLUSH: Duration = Duration::from_millis(50);
/// Buffered group acks and parks that are committed at once, whatever the time.
const ACK_FLUSH_COUNT: usize = 4096;
/// How often a failed commit is retried (disk full).
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How stale the spool figures of status and metrics may get while the spool changes.
const FIGURES_EVERY: Duration = Duration::from_secs(1);

/// A message on its way into the spool, with what rides along with it.
pub struct Entry<T> {
    /// What is stored.
    pub msg: NewMessage,
    /// What the after-commit hook gets back with the outcome.
    pub ride: T,
}

/// A message after its commit: stored under a new seq, or recognised as a redelivery.
pub struct Committed<T> {
    /// Stored, or a duplicate of an earlier seq.
    pub appended: Appended,
    /// The message as it was submitted.
    pub msg: NewMessage,
    /// What rode along.
    pub ride: T,
}

/// Runs on the writer thread after every successful commit of messages, in seq order.
pub type AfterCommit<T> = Box<dyn FnMut(Vec<Committed<T>>) + Send>;

pub(super) enum Input<T> {
    Message(Entry<T>),
    Cmd(Cmd),
}

/// Submits messages to the writer. Cheap to clone.
pub struct Submitter<T> {
    tx: mpsc::Sender<Input<T>>,
    state: Arc<WriterState>,
}

impl<T> Clone for Submitter<T> {
    fn clone(&self) -> Self {
        Submitter {
            tx: self.tx.clone(),
            state: self.state.clone(),
        }
    }
}

impl<T: Send + 'static> Submitter<T> {
    /// A submitter with no writer: every submit fails.
    pub fn detached() -> Submitter<T> {
        let (tx, _) = mpsc::channel();
        Submitter {
            tx,
            state: Arc::new(WriterState::default()),
        }
    }

    /// Queues a message for the next commit; false once the writer has stopped.
    pub fn submit(&self, entry: Entry<T>) -> bool {
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Input::Message(entry)).is_ok() {
            true
        } else {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// The running writer thread.
pub struct WriterThread {
    thread: Option<std::thread::JoinHandle<()>>,
    handle: SpoolHandle,
}

impl WriterThread {
    /// Stops the writer after it committed what it has (buffered acks included) and waits for
    /// it, at most `limit`. Messages whose commit keeps failing are dropped unACKed.
    pub async fn stop(mut self, limit: Duration) {
        self.handle.send(Cmd::Stop);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(limit, joined).await.is_err() {
            warn!("the spool writer did not stop in time");
        }
    }
}

/// Starts the writer thread on `store`; `after_commit` runs on it after each commit.
pub fn start<T: Send + 'static>(
    store: Store,
    after_commit: AfterCommit<T>,
    progress: Arc<Progress>,
) -> Result<(Submitter<T>, SpoolHandle, WriterThread), SpoolError> {
    let reader = Reader::open(store.dir())?;
    let (tx, rx) = mpsc::channel::<Input<T>>();
    let state = Arc::new(WriterState::default());
    let handle = SpoolHandle::new(
        {
            let tx = tx.clone();
            Arc::new(move |cmd| tx.send(Input::Cmd(cmd)).is_ok())
        },
        Arc::new(Mutex::new(reader)),
        state.clone(),
        store.dir(),
    );
    state
        .newest_seq
        .store(store.newest_seq()?, Ordering::Relaxed);
    let writer = Writer {
        opts: store.options().clone(),
        store,
        after_commit,
        state: state.clone(),
        progress,
        stuck: Vec::new(),
        next_retry: None,
        acks: BTreeMap::new(),
        parks: Vec::new(),
        idle: BTreeMap::new(),
        over_bytes: false,
        next_retention: Instant::now(),
        last_retention: Instant::now(),
        active: true,
        ack_flush: None,
        refresh_figures: Some(Instant::now()),
        figures_at: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| SpoolError::Unusable {
            path: std::path::PathBuf::new(),
            detail: format!("cannot start the spool writer thread: {e}"),
        })?;
    Ok((
        Submitter { tx, state },
        handle.clone(),
        WriterThread {
            thread: Some(thread),
            handle,
        },
    ))
}

struct Writer<T> {
    store: Store,
    after_commit: AfterCommit<T>,
    state: Arc<WriterState>,
    progress: Arc<Progress>,
    opts: StoreOptions,
    /// A batch whose commit failed, retried until it succeeds.
    stuck: Vec<Entry<T>>,
    /// When the failed commit is tried again.
    next_retry: Option<Instant>,
    /// Group acks and parks waiting for the next commit.
    acks: BTreeMap<String, Vec<u64>>,
    parks: Vec<(String, u64, u32)>,
    /// Group idle clocks waiting for the next commit.
    idle: BTreeMap<String, Option<SystemTime>>,
    /// Set by a commit that left the accounted bytes above `max_bytes`.
    over_bytes: bool,
    next_retention: Instant,
    last_retention: Instant,
    /// The spool changed since the last retention pass.
    active: bool,
    /// When buffered acks are committed on their own if no message came to carry them.
    ack_flush: Option<Instant>,
    /// When the figures for status are refreshed next (`None`: nothing changed since).
    refresh_figures: Option<Instant>,
    /// When they were refreshed last.
    figures_at: Instant,
}

/// Time between retention passes for these bounds: [`RETENTION_EVERY`] while the spool changes
/// (`active`), [`RETENTION_IDLE`] while it does not; an eighth of `max_age` or of the dedupe
/// window when that is shorter, so nothing outlives them by much.
fn retention_period(opts: &StoreOptions, active: bool) -> Duration {
    let most = if active {
        RETENTION_EVERY
    } else {
        RETENTION_IDLE
    };
    [opts.max_age, opts.dedupe_window]
        .into_iter()
        .filter(|d| !d.is_zero())
        .map(|d| d / 8)
        .fold(most, Duration::min)
        .max(RETENTION_MIN)
}

impl<T: Send + 'static> Writer<T> {
    fn run(mut self, rx: mpsc::Receiver<Input<T>>) {
        self.next_retention = Instant::now() + retention_period(&self.opts, true);
        self.publish_totals();
        let mut stopping = false;
        while !stopping {
            crate::notify::wedge_point_blocking(
                "writer",
                self.state.commits.load(Ordering::Relaxed) > 0,
            );
            self.progress.beat();
            let deadline = [
                Some(self.next_retention),
                self.next_retry,
                self.ack_flush,
                self.refresh_figures,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_retention);
            let first = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Awake with work: show progress now, not after it (the wait may have been long).
            self.progress.beat();
            // Whatever else is queued joins this round: acks ride in the same transaction as
            // the messages, and a stream of messages never starves them or a query.
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut next = first;
            while let Some(input) = next.take() {
                self.state.queued.fetch_sub(1, Ordering::Relaxed);
                match input {
                    Input::Message(e) => {
                        bytes += e.msg.body.len();
                        batch.push(e);
                    }
                    Input::Cmd(Cmd::Stop) => stopping = true,
                    Input::Cmd(cmd) => self.on_cmd(cmd),
                }
                if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES || stopping {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.round(batch, Instant::now());
        }
        // Acks a member sent before the stop still count: record them with the last commit.
        while let Ok(input) = rx.try_recv() {
            if let Input::Cmd(cmd @ (Cmd::Ack { .. } | Cmd::Park { .. } | Cmd::Idle { .. })) = input
            {
                self.on_cmd(cmd);
            }
        }
        if self.next_retry.is_none() {
            self.commit(Vec::new());
        }
        if !self.stuck.is_empty() {
            warn!(
                frames = self.stuck.len(),
                "stopping with frames that never became durable; they were not ACKed, so DingTalk delivers them again"
            );
        }
    }

    /// One round after the inputs were taken: commit what is due, then retention if due.
    fn round(&mut self, mut batch: Vec<Entry<T>>, now: Instant) {
        if let Some(at) = self.next_retry {
            // Order is kept: new messages wait behind the batch that failed.
            self.stuck.append(&mut batch);
            if now >= at {
                let stuck = std::mem::take(&mut self.stuck);
                self.commit(stuck);
            }
        } else if !batch.is_empty()
            || self.pending_group_writes() >= ACK_FLUSH_COUNT
            || self.ack_flush.is_some_and(|at| now >= at)
        {
            self.commit(batch);
        } else if self.pending_group_writes() > 0 && self.ack_flush.is_none() {
            // Acks alone wait a little for messages to share a commit with; a lost ack only
            // means a redelivery, while an fsync between two frames costs ACK latency.
            self.ack_flush = Some(now + ACK_FLUSH);
        }
        self.state
            .pending
            .store(self.stuck.len() as u64, Ordering::Relaxed);
        if self.over_bytes {
            // Bytes over the bound are looked at again soon, never in a tight loop.
            self.next_retention = self.next_retention.min(self.last_retention + RETENTION_MIN);
        }
        let now = Instant::now();
        if now >= self.next_retention {
            // A full disk cannot delete either (deletes go through the WAL): wait for recovery.
            if self.next_retry.is_none() {
                self.retention();
                self.last_retention = now;
            }
            let active = std::mem::take(&mut self.active);
            self.next_retention = now + retention_period(&self.opts, active);
        }
        if self.refresh_figures.is_some_and(|at| now >= at) {
            self.refresh_figures = None;
            self.figures_at = now;
            let figures = self.store.figures();
            *self.state.figures.lock().unwrap_or_else(|p| p.into_inner()) = figures;
        }
    }

    /// Publishes the running totals (cheap: one row) after a commit or a retention pass.
    fn publish_totals(&self) {
        if let Ok((bytes, messages, keys)) = self.store.totals() {
            self.state.bytes.store(bytes, Ordering::Relaxed);
            self.state.messages.store(messages, Ordering::Relaxed);
            self.state.dedupe_keys.store(keys, Ordering::Relaxed);
        }
        if let Ok(newest) = self.store.newest_seq() {
            self.state.newest_seq.store(newest, Ordering::Relaxed);
        }
    }

    /// Something in the spool changed: status shows it at the end of this round, or within
    /// [`FIGURES_EVERY`] of the previous refresh while changes keep coming.
    fn changed(&mut self) {
        if !self.active {
            self.active = true;
            let soon = Instant::now() + retention_period(&self.opts, true);
            self.next_retention = self.next_retention.min(soon);
        }
        if self.refresh_figures.is_none() {
            self.refresh_figures = Some(self.figures_at + FIGURES_EVERY);
        }
    }

    fn pending_group_writes(&self) -> usize {
        self.acks.values().map(Vec::len).sum::<usize>() + self.parks.len() + self.idle.len()
    }

    /// One transaction: pending acks and parks, then `batch`. On success the hook gets the
    /// batch; on failure everything is kept for the retry and the hook is not called.
    fn commit(&mut self, batch: Vec<Entry<T>>) {
        self.ack_flush = None;
        self.flush_idle();
        if batch.is_empty() && self.acks.is_empty() && self.parks.is_empty() {
            return;
        }
        let (msgs, rides): (Vec<NewMessage>, Vec<T>) =
            batch.into_iter().map(|e| (e.msg, e.ride)).unzip();
        self.state.busy.store(true, Ordering::Relaxed);
        let result = self
            .store
            .commit(&msgs, &self.acks, &self.parks, SystemTime::now());
        self.state.busy.store(false, Ordering::Relaxed);
        self.over_bytes = self.store.over_max_bytes();
        match result {
            Ok(outcome) => {
                self.changed();
                self.publish_totals();
                self.acks.clear();
                self.parks.clear();
                self.next_retry = None;
                self.state.disk_full.store(false, Ordering::Relaxed);
                if self.state.degraded.swap(false, Ordering::Relaxed) {
                    info!(
                        cause = "spool_recovered",
                        "spool writable again: ACKing and delivering resumed"
                    );
                    self.state.set_last_error(None);
                }
                if !outcome.unknown_groups.is_empty() {
                    warn!(groups = ?outcome.unknown_groups, "acks or parks for consumer groups the spool does not know were dropped");
                }
                if msgs.is_empty() {
                    return;
                }
                self.state.commits.fetch_add(1, Ordering::Relaxed);
                let committed: Vec<Committed<T>> = msgs
                    .into_iter()
                    .zip(rides)
                    .zip(outcome.appended)
                    .map(|((msg, ride), appended)| {
                        match appended {
                            Appended::Stored { .. } => &self.state.stored,
                            Appended::Duplicate { .. } => &self.state.duplicates,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                        Committed {
                            appended,
                            msg,
                            ride,
                        }
                    })
                    .collect();
                (self.after_commit)(committed);
            }
            Err(e) => {
                // The error first, so a reader that sees `degraded` also sees why.
                self.state.set_last_error(Some(e.to_string()));
                self.state
                    .disk_full
                    .store(e.is_disk_full(), Ordering::Relaxed);
                if !self.state.degraded.swap(true, Ordering::Relaxed) {
                    if e.is_disk_full() {
                        error!(cause = "spool_full", frames = msgs.len(), error = %e, "spool full: not ACKing, delivering nothing new until space returns");
                    } else {
                        error!(cause = "spool_error", frames = msgs.len(), error = %e, "spool write failed: not ACKing; retrying every second");
                    }
                }
                self.stuck = msgs
                    .into_iter()
                    .zip(rides)
                    .map(|(msg, ride)| Entry { msg, ride })
                    .collect();
                self.next_retry = Some(Instant::now() + RETRY_EVERY);
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Ack { group, seq } => self.acks.entry(group).or_default().push(seq),
            Cmd::Park {
                group,
                seq,
                deliveries,
            } => self.parks.push((group, seq, deliveries)),
            Cmd::EnsureGroup { name, start, reply } => {
                // A group's position read from disk must include the acks still buffered.
                if self.next_retry.is_none() {
                    self.commit(Vec::new());
                }
                let _ = reply.send(self.store.ensure_group(&name, start));
                self.changed();
            }
            Cmd::Idle { group, since } => {
                self.idle.insert(group, since);
            }
            Cmd::RemoveGroup { name, reply } => {
                let _ = reply.send(self.remove_group(&name));
            }
            Cmd::Replay { group, what, reply } => {
                let _ = reply.send(self.replay(&group, what));
            }
            Cmd::SetOptions(o) => {
                self.next_retention = self
                    .next_retention
                    .min(Instant::now() + retention_period(&o, true));
                self.opts = o.clone();
                self.store.set_options(o);
            }
            Cmd::Stop => {}
        }
    }

    fn retention(&mut self) {
        self.state.busy.store(true, Ordering::Relaxed);
        let result = self.store.enforce_retention(SystemTime::now());
        self.state.busy.store(false, Ordering::Relaxed);
        match result {
            Ok(r) => {
                if r.deleted_acked + r.forced_out_unacked + r.forced_out_other + r.expired_receipts
                    > 0
                {
                    self.publish_totals();
                    // More may follow: the next pass comes at the busy pace.
                    self.active = true;
                    // Now, not within a second: what a bound forced out shows at once.
                    self.refresh_figures = Some(Instant::now());
                }
                self.over_bytes = self.store.over_max_bytes();
                if r.forced_out_unacked + r.forced_out_other > 0 {
                    // The first seq still stored (or the next one to be assigned): groups must
                    // not deliver anything below it from a memory cache.
                    if let Ok(st) = self.store.stats() {
                        let first = if st.messages == 0 {
                            st.newest_seq + 1
                        } else {
                            st.oldest_seq
                        };
                        self.state.forced_below.send_if_modified(|below| {
                            let rises = first > *below;
                            if rises {
                                *below = first;
                            }
                            rises
                        });
                    }
                }
                if r.forced_out_unacked > 0 {
                    self.state
                        .forced_out
                        .fetch_add(r.forced_out_unacked, Ordering::Relaxed);
                }
                if r.deleted_acked > 0 || r.expired_receipts > 0 {
                    debug!(
                        deleted = r.deleted_acked,
                        expired_receipts = r.expired_receipts,
                        "spool retention"
                    );
                }
            }
            Err(e) => {
                self.over_bytes = false;
                warn!(error = %e, "spool retention failed; will try again");
            }
        }
    }
}

#[path = "writer_groups.rs"]
mod groups;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::StartAt;
    use crate::spool::test_support::{msg, opts};
    use std::sync::mpsc as std_mpsc;

    type Batches = std_mpsc::Receiver<Vec<(u32, Appended)>>;

    /// Starts a writer on a fresh spool; the hook reports each committed batch's seqs.
    fn writer() -> (
        tempfile::TempDir,
        Submitter<u32>,
        SpoolHandle,
        WriterThread,
        Batches,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), opts()).expect("open");
        let (tx, rx) = std_mpsc::channel();
        let hook: AfterCommit<u32> = Box::new(move |batch| {
            let _ = tx.send(batch.into_iter().map(|c| (c.ride, c.appended)).collect());
        });
        let (sub, handle, thread) = start(store, hook, Progress::new()).expect("start");
        (dir, sub, handle, thread, rx)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_hand_back_rides_in_order_and_acked_messages_leave() {
        let (_dir, sub, handle, thread, rx) = writer();
        handle
            .ensure_group("g", StartAt::Oldest)
            .await
            .expect("group");
        for (i, key) in ["m:1", "m:2", "m:1"].into_iter().enumerate() {
            assert!(sub.submit(Entry {
                msg: msg(key, &[key]),
                ride: i as u32,
            }));
        }
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.extend(rx.recv_timeout(Duration::from_secs(10)).expect("a batch"));
        }
        assert_eq!(
            seen,
            vec![
                (0, Appended::Stored { seq: 1 }),
                (1, Appended::Stored { seq: 2 }),
                (2, Appended::Duplicate { seq: 1 })
            ]
        );
        wait_for("both messages counted", || {
            handle.state.messages.load(Ordering::Relaxed) == 2
        });
        handle.ack("g", 1);
        handle.ack("g", 2);
        // Retention runs about once a second; the acked messages go.
        wait_for("retention deleted the acked messages", || {
            handle.state.messages.load(Ordering::Relaxed) == 0
        });
        thread.stop(Duration::from_secs(5)).await;
    }
}
