//! Consumer groups: every group gets every message; inside a group each message goes to one
//! member at a time, in seq order, at most `in_flight` unacked per member; unacked messages come
//! again (same seq, `"redelivered":true`) after `ack_wait`, or at once to another member when
//! theirs leaves; after `max_deliveries` they are parked. Acks are persisted through the spool
//! writer, so a group that was away gets its backlog.
//!
//! Layout: [`book`] holds the rules (pure, unit-tested), [`task`] is one group's task around
//! its book, and this file is the [`GroupRegistry`] that starts group tasks (configured groups
//! at startup, others on their first hello) and hands members to them.

pub mod book;
mod task;

pub use book::{GroupSettings, MemberId};

use super::hub::Hub;
use super::protocol::LineError;
use crate::notify::Progress;
use crate::relay::callbacks::Callbacks;
use crate::spool::SpoolHandle;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a group task sends to a member's connection.
pub(crate) enum Out {
    /// A message line.
    Line(Arc<str>),
    /// An error reply.
    Error(LineError),
}

/// What a member's connection tells its group task.
pub(crate) enum GroupMsg {
    Join {
        id: MemberId,
        tx: mpsc::Sender<Out>,
    },
    Ack {
        id: MemberId,
        seq: u64,
        response: Option<Box<RawValue>>,
    },
    Leave {
        id: MemberId,
    },
}

/// What status shows for a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// Connected members.
    pub members: usize,
    /// Messages delivered and not yet acked.
    pub in_flight: usize,
    /// Messages waiting for redelivery.
    pub retry: usize,
    /// Every seq up to this is acked or parked.
    pub cursor: u64,
    /// Deliveries, redeliveries included, since start.
    pub delivered: u64,
    /// Redeliveries since start.
    pub redelivered: u64,
    /// Acks since start.
    pub acked: u64,
    /// Parked since start.
    pub parked: u64,
}

struct GroupHandle {
    tx: mpsc::UnboundedSender<GroupMsg>,
    snapshot: Arc<Mutex<GroupSnapshot>>,
    /// True once the group's position is open in the spool.
    ready: watch::Receiver<bool>,
    /// The group task's own progress counter, watched by the systemd watchdog.
    progress: Arc<Progress>,
}

/// All groups, started on first use (configured groups at startup).
#[derive(Clone)]
pub struct GroupRegistry {
    inner: Arc<Mutex<HashMap<String, GroupHandle>>>,
    env: Arc<GroupEnv>,
    next_member: Arc<AtomicU64>,
}

struct GroupEnv {
    spool: SpoolHandle,
    hub: Arc<Hub>,
    callbacks: Callbacks,
    settings: watch::Receiver<GroupSettings>,
    configured: Mutex<Vec<String>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl GroupRegistry {
    /// A registry; call [`GroupRegistry::start_configured`] to start the `groups:` list.
    pub fn new(
        spool: SpoolHandle,
        hub: Arc<Hub>,
        callbacks: Callbacks,
        settings: watch::Receiver<GroupSettings>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> GroupRegistry {
        GroupRegistry {
            inner: Arc::new(Mutex::new(HashMap::new())),
            env: Arc::new(GroupEnv {
                spool,
                hub,
                callbacks,
                settings,
                configured: Mutex::new(Vec::new()),
                shutdown,
                tasks,
            }),
            next_member: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Starts the configured groups so they keep messages before any member connects.
    pub fn start_configured(&self, names: &[String]) {
        *self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = names.to_vec();
        for n in names {
            let _ = self.handle(n);
        }
    }

    fn handle(&self, name: &str) -> (mpsc::UnboundedSender<GroupMsg>, watch::Receiver<bool>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(name).filter(|h| !h.tx.is_closed()) {
            return (h.tx.clone(), h.ready.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = watch::channel(false);
        let snapshot = Arc::new(Mutex::new(GroupSnapshot::default()));
        let progress = Progress::new();
        let configured = self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|g| g == name);
        self.env.tasks.spawn(task::run(
            name.to_owned(),
            configured,
            rx,
            self.env.clone(),
            snapshot.clone(),
            ready_tx,
            progress.clone(),
        ));
        map.insert(
            name.to_owned(),
            GroupHandle {
                tx: tx.clone(),
                snapshot,
                ready: ready.clone(),
                progress,
            },
        );
        (tx, ready)
    }

    /// Each running group's progress count, for the watchdog: one wedged group among healthy
    /// ones must stop it too. A group whose task has ended is not listed (it is restarted on
    /// its next use).
    pub fn progress(&self) -> Vec<(String, u64)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, h)| !h.tx.is_closed())
            .map(|(name, h)| (name.clone(), h.progress.get()))
            .collect()
    }

    /// Status of every group.
    pub fn snapshots(&self) -> Vec<(String, GroupSnapshot)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, h)| {
                (
                    k.clone(),
                    h.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Joins a member to `group`: waits until the group's position is open in the spool
    /// (so an ad-hoc group starts exactly after what was committed before the welcome).
    /// `None` when the group cannot be opened.
    pub(crate) async fn join(
        &self,
        group: &str,
        tx: mpsc::Sender<Out>,
    ) -> Option<(MemberId, mpsc::UnboundedSender<GroupMsg>)> {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (gtx, mut ready) = self.handle(group);
        ready.wait_for(|r| *r).await.ok()?;
        gtx.send(GroupMsg::Join { id, tx }).ok()?;
        Some((id, gtx))
    }

    /// The per-member limit on unacked messages now.
    pub(crate) fn in_flight(&self) -> usize {
        self.env.settings.borrow().in_flight
    }

    /// Stops everything once the daemon stops.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.env.shutdown
    }

    /// Counts a consumer line answered with an error.
    pub(crate) fn count_bad_line(&self) {
        self.env.hub.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
    }
}
