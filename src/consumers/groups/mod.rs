//! Consumer groups: every group gets every message; inside a group each message goes to one
//! member at a time, in seq order, at most `in_flight` unacked per member; unacked messages come
//! again (same seq, `"redelivered":true`) after `ack_wait`, or at once to another member when
//! theirs leaves; after `max_deliveries` they are parked. Acks are persisted through the spool
//! writer, so a group that was away gets its backlog.
//!
//! Groups have a life: configured groups (`groups:`) and every group the spool knows run from
//! the start; a hello may create an ad-hoc group (unless `consumers.adhoc_groups` is false, and
//! at most `limits.max_groups` groups in all); an ad-hoc group without members for
//! `consumers.adhoc_ttl` is removed, releasing its backlog; `group rm` and `group replay`
//! reach a group through [`GroupRegistry::remove`] and [`GroupRegistry::replay`].
//!
//! Sinks (`sinks:`) read the spool as the one member of a group of their own, named
//! `sink:<name>` (a name no hello can give: the protocol allows no `:`). A sink group is
//! configured (it keeps messages from the start and never expires) and has its own settings
//! ([`GroupSettings::for_sink`]): the sink's window as `in_flight`, and no `ack_wait` expiry,
//! since the sink retries on its own, in order.
//!
//! Layout: [`book`] holds a group's rules (pure, unit-tested), [`admission`] the rule for
//! hellos (pure), [`task`] is one group's task around its book (it also performs removals and
//! replays), `admin.rs` the registry's side of `group rm` and `group replay`, and this file
//! the [`GroupRegistry`] that starts group tasks and hands members to them.

mod admin;
pub mod admission;
pub mod book;
mod task;

pub use admin::GroupError;
pub use book::{GroupSettings, MemberId};

use super::hub::Hub;
use super::protocol::LineError;
use crate::notify::Progress;
use crate::relay::callbacks::Callbacks;
use crate::spool::{GroupState, Released, Replay, SpoolHandle};
use admission::Refusal;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The name of a sink's group is this and the sink's name (`sink:nats`, `sink:webhook:0`).
pub const SINK_GROUP_PREFIX: &str = "sink:";

/// How often a hello tries again when the group it reached was removed meanwhile.
const JOIN_ATTEMPTS: usize = 3;
/// A sink group's `ack_wait`: never, in practice (a sink retries by itself, in order; a
/// redelivery would only duplicate and reorder).
const SINK_ACK_WAIT: Duration = Duration::from_secs(10 * 365 * 86_400);

impl GroupSettings {
    /// The settings of a sink's group: its window as `in_flight`, no `ack_wait` expiry and so
    /// no parking; the limits on groups stay.
    pub fn for_sink(self, window: usize) -> GroupSettings {
        GroupSettings {
            in_flight: window.max(1),
            ack_wait: SINK_ACK_WAIT,
            max_deliveries: u32::MAX,
            ..self
        }
    }
}

/// What a group task sends to a member's connection.
pub(crate) enum Out {
    /// A message line.
    Line(Arc<str>),
    /// An error reply.
    Error(LineError),
}

/// What a member's connection, the registry or the control socket tells a group task.
pub(crate) enum GroupMsg {
    /// A member joins; `joined` is answered once it is in (dropped when the group is gone).
    Join {
        id: MemberId,
        tx: mpsc::Sender<Out>,
        joined: oneshot::Sender<()>,
    },
    Ack {
        id: MemberId,
        seq: u64,
        response: Option<Box<RawValue>>,
    },
    Leave {
        id: MemberId,
    },
    /// Listed in `groups:` now, or no longer (a reload).
    Configured(bool),
    /// `group rm`: refused while members are connected.
    Remove {
        reply: oneshot::Sender<Result<Released, GroupError>>,
    },
    /// `group replay`: how many messages are owed again.
    Replay {
        what: Replay,
        reply: oneshot::Sender<Result<u64, GroupError>>,
    },
}

/// What status shows for a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// Listed in `groups:` (else ad-hoc).
    pub configured: bool,
    /// When it expires (ad-hoc, without members).
    pub expires_at: Option<SystemTime>,
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
    /// Forced out by a spool bound before it was done, since start.
    pub forced_out: u64,
}

/// A running group task as the registry knows it.
#[derive(Clone)]
struct GroupHandle {
    /// Tells a task from the one that replaced it under the same name.
    id: u64,
    tx: mpsc::UnboundedSender<GroupMsg>,
    snapshot: Arc<Mutex<GroupSnapshot>>,
    /// True once the group's position is open in the spool.
    ready: watch::Receiver<bool>,
    /// The group task's own progress counter, watched by the systemd watchdog.
    progress: Arc<Progress>,
}

impl GroupHandle {
    fn live(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// All groups: configured and known ones from the start, others on their first hello.
#[derive(Clone)]
pub struct GroupRegistry {
    env: Arc<GroupEnv>,
    next_member: Arc<AtomicU64>,
}

struct GroupEnv {
    spool: SpoolHandle,
    hub: Arc<Hub>,
    callbacks: Callbacks,
    settings: watch::Receiver<GroupSettings>,
    configured: Mutex<Vec<String>>,
    /// Sink groups (configured too) and their windows, set once before the start.
    sinks: Mutex<HashMap<String, usize>>,
    /// The running groups by name. A task removes its own entry when it goes away.
    groups: Mutex<HashMap<String, GroupHandle>>,
    next_task: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl GroupEnv {
    fn groups(&self) -> MutexGuard<'_, HashMap<String, GroupHandle>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_configured(&self, name: &str) -> bool {
        self.sink_window(name).is_some()
            || self
                .configured
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|g| g == name)
    }

    /// The window of a sink's group; `None` for other groups.
    fn sink_window(&self, name: &str) -> Option<usize> {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// The settings a group runs with from `base` (the `consumers:` settings).
    fn settings_for(&self, name: &str, base: GroupSettings) -> GroupSettings {
        match self.sink_window(name) {
            Some(window) => base.for_sink(window),
            None => base,
        }
    }

    fn sink_names(&self) -> Vec<String> {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Starts a task for `name` and registers it in `map` (the caller holds the lock). Until
    /// the task has opened the group, status shows it at `cursor` (from the spool when known,
    /// else the newest seq: where an ad-hoc group starts).
    fn spawn(
        self: &Arc<Self>,
        map: &mut HashMap<String, GroupHandle>,
        name: &str,
        configured: bool,
        cursor: Option<u64>,
    ) -> GroupHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = watch::channel(false);
        let handle = GroupHandle {
            id: self.next_task.fetch_add(1, Ordering::Relaxed),
            tx,
            snapshot: Arc::new(Mutex::new(GroupSnapshot {
                configured,
                cursor: cursor.unwrap_or_else(|| self.hub.newest_seq()),
                ..GroupSnapshot::default()
            })),
            ready,
            progress: Progress::new(),
        };
        self.tasks.spawn(task::run(
            name.to_owned(),
            configured,
            rx,
            self.clone(),
            handle.clone(),
            ready_tx,
        ));
        map.insert(name.to_owned(), handle.clone());
        handle
    }
}

/// Why a hello cannot join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// Admission refused it.
    Refused(Refusal),
    /// The group's position cannot be opened in the spool.
    Unavailable,
}

impl GroupRegistry {
    /// A registry; call [`GroupRegistry::start`] to start the groups.
    pub fn new(
        spool: SpoolHandle,
        hub: Arc<Hub>,
        callbacks: Callbacks,
        settings: watch::Receiver<GroupSettings>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> GroupRegistry {
        GroupRegistry {
            env: Arc::new(GroupEnv {
                spool,
                hub,
                callbacks,
                settings,
                configured: Mutex::new(Vec::new()),
                sinks: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                next_task: AtomicU64::new(1),
                shutdown,
                tasks,
            }),
            next_member: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sets the `groups:` list on reload: starts the configured groups so they
    /// keep messages before any member connects, and tells every running group whether it is
    /// configured now (a group no longer listed becomes ad-hoc and may expire).
    /// Sink groups stay configured whatever the list says.
    pub fn start_configured(&self, names: &[String]) {
        *self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = names.to_vec();
        let mut map = self.env.groups();
        for (name, h) in map.iter().filter(|(_, h)| h.live()) {
            let _ =
                h.tx.send(GroupMsg::Configured(self.env.is_configured(name)));
        }
        for n in names {
            if !map.get(n).is_some_and(GroupHandle::live) {
                self.env.spawn(&mut map, n, true, None);
            }
        }
    }

    /// Starts the daemon's groups: every group the spool knows (`known`, so each shows in
    /// status, with its cursor from the first moment, and an ad-hoc one expires even if no
    /// member ever comes back), then the configured ones not known yet.
    pub fn start(&self, configured: &[String], known: &[GroupState]) {
        *self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = configured.to_vec();
        let mut map = self.env.groups();
        for g in known {
            let is_configured = self.env.is_configured(&g.name);
            self.env
                .spawn(&mut map, &g.name, is_configured, Some(g.cursor));
        }
        let mut sinks = self.env.sink_names();
        sinks.sort();
        for n in configured.iter().chain(&sinks) {
            if !map.contains_key(n) {
                self.env.spawn(&mut map, n, true, None);
            }
        }
        let limit = self.env.settings.borrow().max_groups;
        if map.len() > limit {
            tracing::warn!(
                groups = map.len(),
                limit,
                "more groups than limits.max_groups: no new group is admitted until some are removed"
            );
        }
    }

    /// Declares the sinks' groups (name, window) before [`GroupRegistry::start`]: they are
    /// configured from then on and run with [`GroupSettings::for_sink`].
    pub fn set_sinks(&self, sinks: &[(String, usize)]) {
        *self.env.sinks.lock().unwrap_or_else(|p| p.into_inner()) = sinks.iter().cloned().collect();
    }

    /// The running task for `group`, started if admission allows.
    fn admit(&self, group: &str) -> Result<GroupHandle, Refusal> {
        let mut map = self.env.groups();
        let configured = self.env.is_configured(group);
        let existing = map.get(group).filter(|h| h.live()).cloned();
        let running = map.values().filter(|h| h.live()).count();
        let settings = *self.env.settings.borrow();
        admission::admit(configured, existing.is_some(), running, &settings)?;
        Ok(match existing {
            Some(h) => h,
            None => self.env.spawn(&mut map, group, configured, None),
        })
    }

    /// Each running group's progress count, for the watchdog: one wedged group among healthy
    /// ones must stop it too. A group whose task has ended is not listed.
    pub fn progress(&self) -> Vec<(String, u64)> {
        self.env
            .groups()
            .iter()
            .filter(|(_, h)| h.live())
            .map(|(name, h)| (name.clone(), h.progress.get()))
            .collect()
    }

    /// Status of every running group, by name.
    pub fn snapshots(&self) -> Vec<(String, GroupSnapshot)> {
        let mut v: Vec<_> = self
            .env
            .groups()
            .iter()
            .filter(|(_, h)| h.live())
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

    /// Joins a member to `group` once admission allows it and the group's position is open in
    /// the spool (so an ad-hoc group starts exactly after what was committed before the
    /// welcome). A hello that reaches a group just being removed tries a fresh one.
    pub(crate) async fn join(
        &self,
        group: &str,
        tx: mpsc::Sender<Out>,
    ) -> Result<(MemberId, mpsc::UnboundedSender<GroupMsg>), JoinError> {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        for _ in 0..JOIN_ATTEMPTS {
            let h = self.admit(group).map_err(JoinError::Refused)?;
            let mut ready = h.ready.clone();
            if ready.wait_for(|r| *r).await.is_err() {
                return Err(JoinError::Unavailable);
            }
            let (joined_tx, joined) = oneshot::channel();
            let join = GroupMsg::Join {
                id,
                tx: tx.clone(),
                joined: joined_tx,
            };
            if h.tx.send(join).is_ok() && joined.await.is_ok() {
                return Ok((id, h.tx));
            }
        }
        Err(JoinError::Unavailable)
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
