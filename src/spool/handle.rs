//! The rest of the daemon's view of the spool: [`SpoolHandle`] sends group acks, parks and
//! queries to the single writer thread ([`Cmd`]) and reads backlog on a second, read-only
//! connection, so a group catching up never stalls the writer; `inspect` lookups get a
//! read-only connection of their own, one at a time. [`WriterState`] is what the writer
//! reports while it runs (counters, the degraded flag), read without asking it.

use super::{
    Backlog, Found, GroupState, Inspector, Lookup, Reader, Released, Replay, Replayed, SpoolError,
    SpoolStats, StartAt, StoreOptions, StoredMessage,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::oneshot;

/// Requests to the writer other than messages.
pub(super) enum Cmd {
    /// A group member acked a message.
    Ack { group: String, seq: u64 },
    /// A message hit `max_deliveries`.
    Park {
        group: String,
        seq: u64,
        deliveries: u32,
    },
    /// Open or create a group's position.
    EnsureGroup {
        name: String,
        start: StartAt,
        reply: oneshot::Sender<Result<GroupState, SpoolError>>,
    },
    /// A group's idle clock: no member since then (`Some`), or a member is connected.
    Idle {
        group: String,
        since: Option<SystemTime>,
    },
    /// Forget a group (what is buffered is committed first).
    RemoveGroup {
        name: String,
        reply: oneshot::Sender<Result<Option<Released>, SpoolError>>,
    },
    /// Make messages a group had done owed again (what is buffered is committed first).
    Replay {
        group: String,
        what: Replay,
        reply: oneshot::Sender<Result<Replayed, SpoolError>>,
    },
    /// New bounds (reload).
    SetOptions(StoreOptions),
    /// Commit what is buffered and stop.
    Stop,
}

/// What the writer reports while it runs, for STATUS, status, metrics and the watchdog.
#[derive(Debug, Default)]
pub struct WriterState {
    /// True while a SQLite call is under way (the watchdog needs progress then).
    pub busy: AtomicBool,
    /// True while commits fail (disk full, or another error): nothing is ACKed.
    pub degraded: AtomicBool,
    /// True while they fail for lack of space.
    pub disk_full: AtomicBool,
    /// The last commit error, for status.
    pub last_error: Mutex<Option<String>>,
    /// Messages stored.
    pub stored: AtomicU64,
    /// Redeliveries recognised and ACKed without storing.
    pub duplicates: AtomicU64,
    /// Transactions that committed messages.
    pub commits: AtomicU64,
    /// Unacked messages forced out by `max_bytes` / `max_age`.
    pub forced_out: AtomicU64,
    /// Messages taken by the writer that wait for a commit that failed.
    pub pending: AtomicU64,
    /// Inputs sent to the writer and not yet taken (the watchdog's "has work").
    pub queued: AtomicU64,
    /// Messages in the spool, after the last commit or retention pass.
    pub messages: AtomicU64,
    /// Accounted bytes, likewise.
    pub bytes: AtomicU64,
    /// Dedupe keys held, likewise.
    pub dedupe_keys: AtomicU64,
    /// The newest seq committed.
    pub newest_seq: AtomicU64,
    /// Figures from the spool file, refreshed by the writer at most about once a second.
    pub figures: Mutex<SpoolFigures>,
    /// No seq below this is in the spool any more because a bound forced it out, so a group
    /// must not give such a message from a memory cache (it was counted as forced out). A
    /// watch, so groups learn at once what a bound removed (a sink counts it as an error).
    pub forced_below: tokio::sync::watch::Sender<u64>,
}

/// Figures derived from the spool file, as of the writer's last refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolFigures {
    /// Counts and sizes.
    pub stats: SpoolStats,
    /// Each group's parked seqs still in the spool.
    pub parked: std::collections::BTreeMap<String, Vec<u64>>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

impl WriterState {
    /// The latest figures (at most about a second old while the spool changes).
    pub fn figures(&self) -> SpoolFigures {
        self.figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// The last commit error, if the spool is degraded.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True when the writer has nothing to do: no input waiting, no failed batch, no call under
    /// way (so it needs to show no progress to the watchdog).
    pub fn idle(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0
            && self.pending.load(Ordering::Relaxed) == 0
            && !self.busy.load(Ordering::Relaxed)
    }
}

type SendCmd = Arc<dyn Fn(Cmd) -> bool + Send + Sync>;

/// Where `inspect` lookups open their connection, and the permit that lets one run at a time
/// (a lookup by id reads every receipt: a second one waits instead of competing for the disk).
struct InspectGate {
    dir: PathBuf,
    one_at_a_time: tokio::sync::Semaphore,
}

/// A cheap handle for the rest of the daemon.
#[derive(Clone)]
pub struct SpoolHandle {
    send: SendCmd,
    reader: Arc<Mutex<Reader>>,
    inspect: Arc<InspectGate>,
    /// What the writer reports.
    pub state: Arc<WriterState>,
}

impl SpoolHandle {
    pub(super) fn new(
        send: SendCmd,
        reader: Arc<Mutex<Reader>>,
        state: Arc<WriterState>,
        dir: &Path,
    ) -> Self {
        SpoolHandle {
            send,
            reader,
            inspect: Arc::new(InspectGate {
                dir: dir.to_owned(),
                one_at_a_time: tokio::sync::Semaphore::new(1),
            }),
            state,
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inspect.dir
    }

    /// Everything the spool knows about the message(s) `lookup` names ([`Inspector::find`]),
    /// on a read-only connection of its own (the writer and backlog reads never wait for it).
    /// A lookup still running after `within` (waiting for the one before it included) is
    /// interrupted and fails.
    pub async fn inspect(
        &self,
        lookup: Lookup,
        within: std::time::Duration,
    ) -> Result<Found, SpoolError> {
        let deadline = tokio::time::Instant::now() + within;
        let gate = self.inspect.clone();
        let timeout = || SpoolError::Unusable {
            path: gate.dir.clone(),
            detail: format!(
                "the lookup did not finish within {}s (another one may be running)",
                within.as_secs()
            ),
        };
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, gate.one_at_a_time.acquire()).await
        else {
            return Err(timeout());
        };
        let inspector = {
            let dir = gate.dir.clone();
            tokio::task::spawn_blocking(move || Inspector::open(&dir))
                .await
                .map_err(|_| SpoolError::Closed)??
        };
        let interrupt = inspector.interrupt_handle();
        let mut task = tokio::task::spawn_blocking(move || inspector.find(&lookup));
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(joined) => joined.map_err(|_| SpoolError::Closed)?,
            Err(_) => {
                interrupt.interrupt();
                // The permit is held until the interrupted lookup has really stopped.
                let _ = task.await;
                Err(timeout())
            }
        }
    }

    pub(super) fn send(&self, cmd: Cmd) -> bool {
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        let sent = (self.send)(cmd);
        if !sent {
            self.state.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    async fn ask<R>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<R, SpoolError>>) -> Cmd,
    ) -> Result<R, SpoolError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(cmd(reply)) {
            return Err(SpoolError::Closed);
        }
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records an ack (persisted in the writer's next commit).
    pub fn ack(&self, group: &str, seq: u64) {
        self.send(Cmd::Ack {
            group: group.to_owned(),
            seq,
        });
    }

    /// Parks a message for a group.
    pub fn park(&self, group: &str, seq: u64, deliveries: u32) {
        self.send(Cmd::Park {
            group: group.to_owned(),
            seq,
            deliveries,
        });
    }

    /// Opens or creates a group's position.
    pub async fn ensure_group(&self, name: &str, start: StartAt) -> Result<GroupState, SpoolError> {
        let name = name.to_owned();
        self.ask(|reply| Cmd::EnsureGroup { name, start, reply })
            .await
    }

    /// Records a group's idle clock (persisted with the writer's next commit), so the expiry of
    /// an ad-hoc group survives a restart: `Some(t)` when its last member left at `t`, `None`
    /// when a member joined.
    pub fn set_idle(&self, group: &str, since: Option<SystemTime>) {
        self.send(Cmd::Idle {
            group: group.to_owned(),
            since,
        });
    }

    /// Removes a group from the spool, after committing what is buffered; `None` when the
    /// spool did not know it. The request is queued before this returns, so whatever is sent
    /// to the writer afterwards (a new group's creation) comes after the removal.
    pub fn remove_group(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Released>, SpoolError>> + Send + use<> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Cmd::RemoveGroup {
            name: name.to_owned(),
            reply,
        });
        async move {
            if !sent {
                return Err(SpoolError::Closed);
            }
            rx.await.map_err(|_| SpoolError::Closed)?
        }
    }

    /// Makes messages a group had done owed again ([`super::Store::replay`]), after committing
    /// what is buffered (acks sent before the replay count before it).
    pub async fn replay(&self, group: &str, what: Replay) -> Result<Replayed, SpoolError> {
        let group = group.to_owned();
        self.ask(|reply| Cmd::Replay { group, what, reply }).await
    }

    /// A group's backlog as of the last commit ([`Reader::backlog`]), on the read connection.
    pub async fn backlog(
        &self,
        group: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Backlog>, SpoolError> {
        let reader = self.reader.clone();
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || {
            reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .backlog(&group, limit, max_bytes)
        })
        .await
        .map_err(|_| SpoolError::Closed)?
    }

    /// New bounds.
    pub fn set_options(&self, opts: StoreOptions) {
        self.send(Cmd::SetOptions(opts));
    }

    /// The lowest seq a bound has not forced out (0 before any was).
    pub fn forced_below(&self) -> u64 {
        *self.state.forced_below.borrow()
    }

    /// Changes whenever [`SpoolHandle::forced_below`] rises.
    pub fn forced_below_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.forced_below.subscribe()
    }

    /// Messages after `after`, on the read connection (does not stall the writer).
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, SpoolError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_after(after, limit)
        })
        .await
        .map_err(|_| SpoolError::Closed)?
    }
}
