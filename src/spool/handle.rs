//! The rest of the daemon's view of the spool: [`SpoolHandle`] sends acks, parks and queries to
//! the single writer task ([`Cmd`]) and reads backlog on a second, read-only connection, so a
//! group catching up never stalls the writer. [`SpoolHealth`] carries the counters and the
//! degraded flag that STATUS, status and metrics show.

use super::{
    GroupState, ParkedEntry, Reader, SpoolError, SpoolStats, StartAt, StoreOptions, StoredMessage,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Requests to the writer other than frames.
pub enum Cmd {
    /// A group member acked a message.
    Ack {
        /// Group.
        group: String,
        /// Seq.
        seq: u64,
    },
    /// A message hit `max_deliveries`.
    Park {
        /// Group.
        group: String,
        /// Seq.
        seq: u64,
        /// How often it was delivered.
        deliveries: u32,
    },
    /// Open or create a group's position.
    EnsureGroup {
        /// Group.
        name: String,
        /// Where a new group starts.
        start: StartAt,
        /// The answer.
        reply: oneshot::Sender<Result<GroupState, SpoolError>>,
    },
    /// Sizes for status.
    Stats {
        /// The answer.
        reply: oneshot::Sender<Result<SpoolStats, SpoolError>>,
    },
    /// Parked entries of a group, for status.
    Parked {
        /// Group.
        group: String,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<ParkedEntry>, SpoolError>>,
    },
    /// New bounds (reload).
    SetOptions(StoreOptions),
}

/// Counters and the degraded flag, for STATUS, status and metrics.
#[derive(Debug, Default)]
pub struct SpoolHealth {
    /// True while a SQLite call is under way (the watchdog needs progress then).
    pub busy: AtomicBool,
    /// True while commits fail (disk full): nothing is ACKed.
    pub degraded: AtomicBool,
    /// The last commit error, for status.
    pub last_error: Mutex<Option<String>>,
    /// Messages stored.
    pub stored: AtomicU64,
    /// Redeliveries recognised and ACKed without storing.
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Unacked messages forced out by max_bytes / max_age.
    pub forced_out: AtomicU64,
    /// Frames waiting to become durable.
    pub pending: AtomicU64,
    /// No seq below this is in the spool any more because a bound forced it out: groups must
    /// not give such a message from a memory cache (it was counted as forced out).
    pub floor: AtomicU64,
}

/// A cheap handle for the rest of the daemon.
#[derive(Clone)]
pub struct SpoolHandle {
    pub(super) cmds: mpsc::UnboundedSender<Cmd>,
    pub(super) reader: Arc<Mutex<Reader>>,
    /// Counters.
    pub health: Arc<SpoolHealth>,
}

impl SpoolHandle {
    /// Records an ack (persisted in the writer's next batch).
    pub fn ack(&self, group: &str, seq: u64) {
        let _ = self.cmds.send(Cmd::Ack {
            group: group.to_owned(),
            seq,
        });
    }

    /// Parks a message for a group.
    pub fn park(&self, group: &str, seq: u64, deliveries: u32) {
        let _ = self.cmds.send(Cmd::Park {
            group: group.to_owned(),
            seq,
            deliveries,
        });
    }

    /// Opens or creates a group's position.
    pub async fn ensure_group(&self, name: &str, start: StartAt) -> Result<GroupState, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::EnsureGroup {
                name: name.to_owned(),
                start,
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Sizes and counts.
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Stats { reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Parked messages of a group.
    pub async fn parked(&self, group: &str) -> Result<Vec<ParkedEntry>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Parked {
                group: group.to_owned(),
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// New bounds.
    pub fn set_options(&self, opts: StoreOptions) {
        let _ = self.cmds.send(Cmd::SetOptions(opts));
    }

    /// The lowest seq still in the spool after bounds forced messages out (0 before that).
    pub fn floor(&self) -> u64 {
        self.health.floor.load(Ordering::Relaxed)
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
