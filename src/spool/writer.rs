//! The one spool writer: takes frames in batches, appends and commits them (one fsync for the
//! whole batch), and only then sends their ACKs to DingTalk (on the connection each came on) and
//! their lines to consumers. Redeliveries are ACKed again but not stored or delivered. Group
//! acks and parks that arrived meanwhile go into the same transaction ([`Store::commit`]), so
//! SQLite has a single writer and a consumer's acks never cost an fsync of their own. When the
//! disk is full the batch is kept and retried: nothing is ACKed, nothing new is delivered, and
//! the connection is shed once `limits.max_pending_acks` frames wait (see the connection loop).

use super::handle::{Cmd, SpoolHandle, SpoolHealth};
use super::{Appended, NewMessage, SpoolError, Store, StoreOptions};
use crate::notify::Progress;
use crate::sink::callbacks::Callbacks;
use crate::sink::hub::{Committed, Hub, line_for};
use crate::stream::Inbound;
use crate::wire::{Ack, FrameKind};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Most frames committed in one transaction.
pub const MAX_BATCH: usize = 2048;
/// How often retention runs at most apart: each pass then deletes about a second's worth of
/// acked messages, a few milliseconds of work, instead of a burst that would delay ACKs.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// The shortest retention period (a tiny `max_age`, or `max_bytes` exceeded after a commit).
const RETENTION_MIN: Duration = Duration::from_millis(50);
/// How long group acks wait for a frame batch to share its commit before committing alone.
const ACK_FLUSH: Duration = Duration::from_millis(50);
/// Buffered group acks and parks that are committed at once, whatever the time.
const ACK_FLUSH_COUNT: usize = 4096;
/// How often a failed commit is retried (disk full).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The writer's inputs and outputs.
pub struct Writer {
    /// The store (moved into blocking calls).
    pub store: Store,
    /// Frames from connections (bounded by `limits.max_pending_acks`).
    pub inbound: mpsc::Receiver<Inbound>,
    /// Where committed lines go.
    pub hub: Arc<Hub>,
    /// Held callback ACKs.
    pub callbacks: Callbacks,
    /// Watchdog progress.
    pub progress: Arc<Progress>,
}

/// Starts the writer; returns the handle the rest of the daemon uses.
pub fn spawn(
    w: Writer,
    dir: &std::path::Path,
    shutdown: CancellationToken,
) -> Result<(SpoolHandle, tokio::task::JoinHandle<()>), SpoolError> {
    let reader = Store::open_reader(dir)?;
    let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
    let health = Arc::new(SpoolHealth::default());
    let handle = SpoolHandle {
        cmds: cmds_tx,
        reader: Arc::new(Mutex::new(reader)),
        health: health.clone(),
    };
    let task = tokio::spawn(run(w, cmds_rx, health, shutdown));
    Ok((handle, task))
}

/// Time between retention passes for these bounds: [`RETENTION_EVERY`], or an eighth of
/// `max_age` when that is shorter, so nothing outlives `max_age` by much.
fn retention_period(opts: &StoreOptions) -> Duration {
    if opts.max_age.is_zero() {
        RETENTION_EVERY
    } else {
        (opts.max_age / 8).clamp(RETENTION_MIN, RETENTION_EVERY)
    }
}

/// What happens right after a successful commit, run on the thread that committed.
struct Post {
    hub: Arc<Hub>,
    callbacks: Callbacks,
    health: Arc<SpoolHealth>,
}

impl Post {
    /// Sends each frame's ACK on the connection it came on (or holds it for a callback
    /// response), then hands the stored messages to consumers.
    fn dispatch(&self, batch: Vec<Inbound>, appended: Vec<Appended>, msgs: Vec<NewMessage>) {
        if batch.is_empty() {
            return;
        }
        self.health.batches.fetch_add(1, Ordering::Relaxed);
        let mut committed = Vec::with_capacity(batch.len());
        for ((inbound, appended), msg) in batch.into_iter().zip(appended).zip(msgs) {
            let mid = inbound.frame.message_id().to_owned();
            match appended {
                Appended::Stored { seq } => {
                    self.health.stored.fetch_add(1, Ordering::Relaxed);
                    committed.push(Committed {
                        seq,
                        line: line_for(seq, &msg.body, false).into(),
                        topic: msg.topic.into(),
                    });
                    let held = inbound.frame.kind == FrameKind::Callback
                        && match self.callbacks.route(inbound.frame.topic()) {
                            Some((group, timeout)) => {
                                self.callbacks.hold(
                                    seq,
                                    group,
                                    mid.clone(),
                                    inbound.reply.clone(),
                                    timeout,
                                );
                                true
                            }
                            None => false,
                        };
                    if !held {
                        let _ = inbound
                            .reply
                            .send(Ack::for_stored(&inbound.frame.kind, &mid));
                    }
                }
                Appended::Duplicate { seq } => {
                    self.health.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(connection = %inbound.conn, message_id = %mid, seq, "redelivery recognised: ACKing again, not storing");
                    if !self.callbacks.add_reply(seq, inbound.reply.clone()) {
                        let _ = inbound
                            .reply
                            .send(Ack::for_stored(&inbound.frame.kind, &mid));
                    }
                }
            }
        }
        self.hub.publish(&committed);
    }
}

struct State {
    store: Arc<Mutex<Store>>,
    hub: Arc<Hub>,
    callbacks: Callbacks,
    health: Arc<SpoolHealth>,
    opts: StoreOptions,
    /// A batch whose commit failed, retried until it succeeds.
    stuck: Vec<Inbound>,
    /// Group acks and parks waiting for the next commit.
    acks: BTreeMap<String, Vec<u64>>,
    parks: Vec<(String, u64, u32)>,
    /// Set by a commit that left the accounted bytes above `max_bytes`.
    over_bytes: bool,
    next_retention: Instant,
    last_retention: Instant,
    /// When buffered acks are committed on their own if no frame came to carry them.
    ack_flush: Option<Instant>,
}

impl State {
    /// Runs one SQLite call off the async threads, marked busy for the watchdog.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        self.health.busy.store(true, Ordering::Relaxed);
        let r = tokio::task::spawn_blocking(move || {
            f(&mut store.lock().unwrap_or_else(|p| p.into_inner()))
        })
        .await;
        self.health.busy.store(false, Ordering::Relaxed);
        match r {
            Ok(v) => v,
            // A panic inside rusqlite would be a bug; surface it instead of hiding it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn degraded(&self) -> bool {
        self.health.degraded.load(Ordering::Relaxed)
    }

    fn pending_group_writes(&self) -> usize {
        self.acks.values().map(Vec::len).sum::<usize>() + self.parks.len()
    }

    /// Something failed to commit and waits for the retry tick.
    fn must_retry(&self) -> bool {
        !self.stuck.is_empty()
            || (self.degraded() && (!self.acks.is_empty() || !self.parks.is_empty()))
    }
}

async fn run(
    w: Writer,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    health: Arc<SpoolHealth>,
    shutdown: CancellationToken,
) {
    let Writer {
        store,
        mut inbound,
        hub,
        callbacks,
        progress,
    } = w;
    let opts = store.options().clone();
    let mut st = State {
        store: Arc::new(Mutex::new(store)),
        hub,
        callbacks,
        health,
        next_retention: Instant::now() + retention_period(&opts),
        last_retention: Instant::now(),
        ack_flush: None,
        opts,
        stuck: Vec::new(),
        acks: BTreeMap::new(),
        parks: Vec::new(),
        over_bytes: false,
    };
    let mut retry = tokio::time::interval(RETRY_EVERY);
    // Polled only while a commit is stuck: ticks missed meanwhile must not come as a burst.
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(crate::notify::heartbeat());
    loop {
        crate::notify::wedge_point("writer", st.health.batches.load(Ordering::Relaxed) > 0).await;
        progress.beat();
        st.health.pending.store(
            inbound.len() as u64 + st.stuck.len() as u64,
            Ordering::Relaxed,
        );
        let must_retry = st.must_retry();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(first) = inbound.recv(), if st.stuck.is_empty() => {
                let mut batch = Vec::with_capacity(64);
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match inbound.try_recv() {
                        Ok(i) => batch.push(i),
                        Err(_) => break,
                    }
                }
                // Acks that arrived meanwhile ride along in the same transaction; a stream of
                // frames can never starve them (or a status query).
                st.drain_cmds(&mut cmds).await;
                st.commit(batch).await;
            }
            Some(cmd) = cmds.recv() => {
                st.on_cmd(cmd).await;
                st.drain_cmds(&mut cmds).await;
                // Acks alone wait a little for frames to share a commit with; a lost ack only
                // means a redelivery, while an fsync between two frames costs ACK latency.
                if st.ack_flush.is_none() && !(st.acks.is_empty() && st.parks.is_empty()) {
                    st.ack_flush = Some(Instant::now() + ACK_FLUSH);
                }
                if st.pending_group_writes() >= ACK_FLUSH_COUNT && !st.must_retry() {
                    st.commit(Vec::new()).await;
                }
            }
            _ = tokio::time::sleep_until(st.ack_flush.unwrap_or(st.next_retention)), if st.ack_flush.is_some() && !must_retry => {
                st.commit(Vec::new()).await;
            }
            _ = retry.tick(), if must_retry => {
                let batch = std::mem::take(&mut st.stuck);
                st.commit(batch).await;
            }
            _ = tokio::time::sleep_until(st.next_retention) => {}
            _ = beat.tick() => {}
        }
        let now = Instant::now();
        if st.over_bytes {
            // Bytes over the bound are looked at again soon, never in a tight loop.
            st.next_retention = st.next_retention.min(st.last_retention + RETENTION_MIN);
        }
        if now >= st.next_retention {
            // A full disk cannot delete either (deletes go through the WAL): wait for recovery.
            if !st.degraded() {
                st.retention().await;
                st.last_retention = now;
            }
            st.next_retention = now + retention_period(&st.opts);
        }
    }
    // Acks a member sent before the stop still count: record them with the last commit.
    while let Ok(cmd) = cmds.try_recv() {
        match cmd {
            Cmd::Ack { .. } | Cmd::Park { .. } => st.on_cmd(cmd).await,
            _ => {}
        }
    }
    if !st.degraded() {
        st.commit(Vec::new()).await;
    }
    if !st.stuck.is_empty() {
        warn!(
            frames = st.stuck.len(),
            "stopping with frames that never became durable; they were not ACKed, so DingTalk delivers them again"
        );
    }
}

impl State {
    async fn drain_cmds(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>) {
        while let Ok(cmd) = cmds.try_recv() {
            self.on_cmd(cmd).await;
        }
    }

    /// One transaction: pending acks and parks, then `batch`. On success the batch's ACKs go
    /// out (or are held for a callback response) and its lines are published; on failure
    /// everything is kept for the retry and nothing is ACKed.
    async fn commit(&mut self, batch: Vec<Inbound>) {
        if batch.is_empty() && self.acks.is_empty() && self.parks.is_empty() {
            return;
        }
        let msgs: Vec<NewMessage> = batch
            .iter()
            .map(|i| NewMessage {
                dedupe_keys: i.frame.dedupe_keys(),
                body: i.frame.consumer_body(&i.conn.to_string()),
                topic: i.frame.topic().to_owned(),
            })
            .collect();
        let acks = std::mem::take(&mut self.acks);
        let parks = std::mem::take(&mut self.parks);
        self.ack_flush = None;
        // ACKs and consumer lines go out from the blocking thread as soon as the commit
        // returned: no hop back through the writer task, whose wakeup can queue behind other
        // tasks on a busy runtime (it was most of the ACK latency tail).
        let post = Post {
            hub: self.hub.clone(),
            callbacks: self.callbacks.clone(),
            health: self.health.clone(),
        };
        let (batch, acks, parks, res, over) = self
            .blocking(move |s| {
                let r = s.commit(&msgs, &acks, &parks, SystemTime::now());
                let over = s.over_max_bytes();
                match r {
                    Ok(outcome) => {
                        post.dispatch(batch, outcome.appended, msgs);
                        (Vec::new(), acks, parks, Ok(outcome.unknown_groups), over)
                    }
                    Err(e) => (batch, acks, parks, Err(e), over),
                }
            })
            .await;
        self.over_bytes = over;
        let unknown_groups = match res {
            Ok(u) => u,
            Err(e) => {
                let first = !self.health.degraded.swap(true, Ordering::Relaxed);
                if first {
                    if e.is_disk_full() {
                        error!(cause = "spool_full", frames = batch.len(), error = %e, "spool full: not ACKing, delivering nothing new until space returns");
                    } else {
                        error!(cause = "spool_error", frames = batch.len(), error = %e, "spool write failed: not ACKing; retrying every second");
                    }
                }
                *self
                    .health
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                self.stuck = batch;
                self.acks = acks;
                self.parks = parks;
                return;
            }
        };
        if self.health.degraded.swap(false, Ordering::Relaxed) {
            info!(
                cause = "spool_recovered",
                "spool writable again: ACKing and delivering resumed"
            );
            *self
                .health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        if !unknown_groups.is_empty() {
            warn!(groups = ?unknown_groups, "acks or parks for consumer groups the spool does not know were dropped");
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Ack { group, seq } => self.acks.entry(group).or_default().push(seq),
            Cmd::Park {
                group,
                seq,
                deliveries,
            } => self.parks.push((group, seq, deliveries)),
            Cmd::EnsureGroup { name, start, reply } => {
                // A group's position read from disk must include the acks still buffered.
                if !self.must_retry() {
                    self.commit(Vec::new()).await;
                }
                let r = self.blocking(move |s| s.ensure_group(&name, start)).await;
                let _ = reply.send(r);
            }
            Cmd::Stats { reply } => {
                let r = self.blocking(|s| s.stats()).await;
                let _ = reply.send(r);
            }
            Cmd::Parked { group, reply } => {
                let r = self.blocking(move |s| s.parked(&group)).await;
                let _ = reply.send(r);
            }
            Cmd::SetOptions(o) => {
                self.next_retention = self
                    .next_retention
                    .min(Instant::now() + retention_period(&o));
                self.opts = o.clone();
                self.blocking(move |s| s.set_options(o)).await
            }
        }
    }

    async fn retention(&mut self) {
        let pass = self
            .blocking(|s| {
                let r = s.enforce_retention(SystemTime::now());
                let forced = r
                    .as_ref()
                    .is_ok_and(|r| r.forced_out_unacked + r.forced_out_other > 0);
                // The first seq still stored (or the next one to be assigned).
                let floor = if forced {
                    s.stats().ok().map(|st| {
                        if st.messages == 0 {
                            st.newest_seq + 1
                        } else {
                            st.oldest_seq
                        }
                    })
                } else {
                    None
                };
                (r, s.over_max_bytes(), floor)
            })
            .await;
        if let (_, _, Some(floor)) = pass {
            self.health.floor.fetch_max(floor, Ordering::Relaxed);
        }
        match (pass.0, pass.1) {
            (Ok(r), over) => {
                self.over_bytes = over;
                if r.forced_out_unacked > 0 {
                    self.health
                        .forced_out
                        .fetch_add(r.forced_out_unacked, Ordering::Relaxed);
                }
                if r.deleted_acked > 0 || r.expired_keys > 0 {
                    debug!(
                        deleted = r.deleted_acked,
                        expired_keys = r.expired_keys,
                        "spool retention"
                    );
                }
            }
            (Err(e), _) => {
                self.over_bytes = false;
                warn!(error = %e, "spool retention failed; will try again");
            }
        }
    }
}
