//! Consumer groups (design.md §5): every group gets every message; inside a group each message
//! goes to one member at a time, in seq order, at most `in_flight` unacked per member. Unacked
//! messages come again (same seq, `"redelivered":true`) after `ack_wait`, or at once to another
//! member when theirs leaves; after `max_deliveries` they are parked. Acks are persisted
//! through the spool writer, so a group that was away gets its backlog.

use super::callbacks::Callbacks;
use super::hub::Hub;
use super::peer::{Lines, write_line};
use super::protocol::{self, LineError, Request};
use crate::notify::Progress;
use crate::spool::{SpoolHandle, StartAt};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Error replies queued for a member before it counts as not reading them.
const ERROR_REPLIES: usize = 64;
/// How many backlog messages are read from the spool at once.
const READ_BATCH: usize = 512;

/// The reloadable per-member limits (`consumers:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    /// Unacked messages per member.
    pub in_flight: usize,
    /// Redelivery after this.
    pub ack_wait: Duration,
    /// Parking after this many deliveries.
    pub max_deliveries: u32,
}

/// A member's socket halves.
pub struct MemberIo {
    /// Its incoming lines.
    pub lines: Lines,
    /// Its outgoing half.
    pub writer: OwnedWriteHalf,
    /// For logs.
    pub peer: String,
}

enum Out {
    Line(Arc<str>),
    Error(LineError),
}

enum GroupMsg {
    Join {
        id: u64,
        tx: mpsc::Sender<Out>,
    },
    Ack {
        id: u64,
        seq: u64,
        response: Option<Box<RawValue>>,
    },
    Leave {
        id: u64,
    },
}

/// What status shows for a group.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupSnapshot {
    /// Connected members.
    pub members: usize,
    /// Messages delivered and not yet acked.
    pub in_flight: usize,
    /// Messages waiting for redelivery.
    pub retry: usize,
    /// Every seq up to this is acked or parked.
    pub cursor: u64,
    /// Deliveries, redeliveries, acks, parked since start.
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
    progress: Arc<Progress>,
    shutdown: CancellationToken,
}

impl GroupRegistry {
    /// A registry; call [`GroupRegistry::start_configured`] to start the `groups:` list.
    pub fn new(
        spool: SpoolHandle,
        hub: Arc<Hub>,
        callbacks: Callbacks,
        settings: watch::Receiver<GroupSettings>,
        progress: Arc<Progress>,
        shutdown: CancellationToken,
    ) -> GroupRegistry {
        GroupRegistry {
            inner: Arc::new(Mutex::new(HashMap::new())),
            env: Arc::new(GroupEnv {
                spool,
                hub,
                callbacks,
                settings,
                configured: Mutex::new(Vec::new()),
                progress,
                shutdown,
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
        let configured = self
            .env
            .configured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|g| g == name);
        tokio::spawn(run_group(
            name.to_owned(),
            configured,
            rx,
            self.env.clone(),
            snapshot.clone(),
            ready_tx,
        ));
        map.insert(
            name.to_owned(),
            GroupHandle {
                tx: tx.clone(),
                snapshot,
                ready: ready.clone(),
            },
        );
        (tx, ready)
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

    /// Runs a member's connection until it leaves.
    pub async fn join(&self, group: &str, mut io: MemberIo) {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let in_flight = self.env.settings.borrow().in_flight;
        let (tx, mut rx) = mpsc::channel::<Out>(in_flight + 16);
        let (gtx, mut ready) = self.handle(group);
        // Welcome only once the group's position exists: an ad-hoc group then starts exactly
        // after what was committed before the welcome, and nothing after it is missed.
        if ready.wait_for(|r| *r).await.is_err() {
            let e = LineError::new(
                "unavailable",
                format!("group {group:?} cannot be opened in the spool (see the daemon's log)"),
            );
            let _ = write_line(&mut io.writer, &e.to_line()).await;
            return;
        }
        if write_line(&mut io.writer, &protocol::welcome(group))
            .await
            .is_err()
        {
            return;
        }
        if gtx.send(GroupMsg::Join { id, tx }).is_err() {
            return;
        }
        // Lines go out from their own task, so acks are read even while a write waits for the
        // consumer: a consumer that reads and acks in one loop can never deadlock with us.
        let MemberIo {
            mut lines,
            mut writer,
            peer,
        } = io;
        let (err_tx, mut err_rx) = mpsc::channel::<LineError>(ERROR_REPLIES);
        let done = self.env.shutdown.child_token();
        let out_task = tokio::spawn({
            let done = done.clone();
            async move {
                loop {
                    let line: Arc<str> = tokio::select! {
                        _ = done.cancelled() => break,
                        out = rx.recv() => match out {
                            Some(Out::Line(l)) => l,
                            Some(Out::Error(e)) => e.to_line().into(),
                            None => break,
                        },
                        e = err_rx.recv() => match e {
                            Some(e) => e.to_line().into(),
                            None => break,
                        },
                    };
                    if write_line(&mut writer, &line).await.is_err() {
                        break;
                    }
                }
                done.cancel();
            }
        });
        let bad = &self.env.hub.stats.bad_lines;
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                incoming = lines.next() => {
                    let reply = match incoming {
                        None | Some(Err(LinesCodecError::Io(_))) => break,
                        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                            Some(LineError::new("too_long", "line longer than limits.max_line_bytes"))
                        }
                        Some(Ok(line)) if line.trim().is_empty() => None,
                        Some(Ok(line)) => match protocol::parse(&line) {
                            Ok(Request::Ack { seq, response }) => {
                                let _ = gtx.send(GroupMsg::Ack { id, seq, response });
                                None
                            }
                            Ok(Request::Hello { .. }) => Some(LineError::new("bad_hello", "already joined a group")),
                            Err(e) => Some(e),
                        },
                    };
                    if let Some(e) = reply {
                        bad.fetch_add(1, Ordering::Relaxed);
                        if err_tx.try_send(e).is_err() {
                            warn!(peer = %peer, group, "group member sends bad lines without reading the replies; disconnecting it");
                            break;
                        }
                    }
                }
            }
        }
        done.cancel();
        out_task.abort();
        info!(peer = %peer, group, "group member left");
        let _ = gtx.send(GroupMsg::Leave { id });
    }
}

struct Flight {
    member: u64,
    deadline: Instant,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Out>,
    in_flight: usize,
}

struct Group {
    name: String,
    env: Arc<GroupEnv>,
    settings: GroupSettings,
    members: Vec<Member>,
    rr: usize,
    /// Seqs acked or parked above the persisted cursor.
    done: BTreeSet<u64>,
    /// Lowest seq not yet considered for a first delivery.
    next_fresh: u64,
    /// Upcoming fresh messages already read.
    ahead: std::collections::VecDeque<(u64, Arc<str>)>,
    flights: HashMap<u64, Flight>,
    retry: BTreeSet<u64>,
    lines: HashMap<u64, Arc<str>>,
    deliveries: HashMap<u64, u32>,
    snap: GroupSnapshot,
}

async fn run_group(
    name: String,
    configured: bool,
    mut rx: mpsc::UnboundedReceiver<GroupMsg>,
    env: Arc<GroupEnv>,
    snapshot: Arc<Mutex<GroupSnapshot>>,
    ready: watch::Sender<bool>,
) {
    let start = if configured {
        StartAt::Oldest
    } else {
        StartAt::Newest
    };
    let state = match env.spool.ensure_group(&name, start).await {
        Ok(s) => s,
        Err(e) => {
            warn!(group = %name, error = %e, "cannot open the group's position in the spool");
            return;
        }
    };
    let mut settings_rx = env.settings.clone();
    let mut g = Group {
        settings: *settings_rx.borrow_and_update(),
        name,
        env: env.clone(),
        members: Vec::new(),
        rr: 0,
        done: state
            .acked_above
            .iter()
            .chain(state.parked.iter())
            .copied()
            .collect(),
        next_fresh: state.cursor + 1,
        ahead: Default::default(),
        flights: HashMap::new(),
        retry: BTreeSet::new(),
        lines: HashMap::new(),
        deliveries: HashMap::new(),
        snap: GroupSnapshot {
            cursor: state.cursor,
            ..Default::default()
        },
    };
    let mut newest = env.hub.newest();
    ready.send_replace(true);
    let mut beat = tokio::time::interval(crate::notify::heartbeat());
    loop {
        g.fill().await;
        g.publish(&snapshot);
        crate::notify::wedge_point("sink", g.snap.delivered > 0).await;
        env.progress.beat();
        let next_deadline = g.flights.values().map(|f| f.deadline).min();
        tokio::select! {
            _ = env.shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                None => return,
                Some(m) => g.on_msg(m),
            },
            _ = newest.changed() => {}
            _ = settings_rx.changed() => g.settings = *settings_rx.borrow_and_update(),
            _ = sleep_until(next_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next_deadline.is_some() => g.expire(),
            _ = beat.tick() => {}
        }
    }
}

impl Group {
    fn publish(&mut self, snapshot: &Mutex<GroupSnapshot>) {
        self.snap.members = self.members.len();
        self.snap.in_flight = self.flights.len();
        self.snap.retry = self.retry.len();
        *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = self.snap.clone();
    }

    fn on_msg(&mut self, m: GroupMsg) {
        match m {
            GroupMsg::Join { id, tx } => self.members.push(Member {
                id,
                tx,
                in_flight: 0,
            }),
            GroupMsg::Leave { id } => {
                self.members.retain(|m| m.id != id);
                let orphaned: Vec<u64> = self
                    .flights
                    .iter()
                    .filter(|(_, f)| f.member == id)
                    .map(|(s, _)| *s)
                    .collect();
                for seq in orphaned {
                    self.flights.remove(&seq);
                    self.retry.insert(seq);
                }
            }
            GroupMsg::Ack { id, seq, response } => self.on_ack(id, seq, response),
        }
    }

    fn on_ack(&mut self, id: u64, seq: u64, response: Option<Box<RawValue>>) {
        let known = self.flights.contains_key(&seq) || self.retry.contains(&seq);
        if !known {
            if !self.done.contains(&seq) && seq > self.snap.cursor {
                self.tell(
                    id,
                    LineError::new(
                        "unknown_seq",
                        format!("seq {seq} is not delivered to this group"),
                    ),
                );
            }
            return;
        }
        if let Some(f) = self.flights.remove(&seq)
            && let Some(m) = self.members.iter_mut().find(|m| m.id == f.member)
        {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
        self.retry.remove(&seq);
        self.lines.remove(&seq);
        self.deliveries.remove(&seq);
        self.done.insert(seq);
        self.snap.acked += 1;
        self.env.spool.ack(&self.name, seq);
        let had_response = response.is_some();
        if !self.env.callbacks.respond(seq, &self.name, response) && had_response {
            self.tell(id, LineError::new("response_ignored", format!("seq {seq} is not an open callback of this group (not a callback topic, or its timeout passed)")));
        }
        self.prune();
    }

    fn tell(&self, id: u64, e: LineError) {
        if let Some(m) = self.members.iter().find(|m| m.id == id) {
            let _ = m.tx.try_send(Out::Error(e));
        }
    }

    /// Forgets `done` entries below everything still pending.
    fn prune(&mut self) {
        let low = [
            self.flights.keys().min(),
            self.retry.first(),
            Some(&self.next_fresh),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
        .unwrap_or(self.next_fresh);
        while let Some(&first) = self.done.first() {
            if first >= low {
                break;
            }
            self.done.pop_first();
        }
        self.snap.cursor = self.snap.cursor.max(low.saturating_sub(1));
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            if let Some(f) = self.flights.remove(&seq)
                && let Some(m) = self.members.iter_mut().find(|m| m.id == f.member)
            {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
            let n = self.deliveries.get(&seq).copied().unwrap_or(0);
            if n >= self.settings.max_deliveries {
                warn!(group = %self.name, seq, deliveries = n, "message parked after consumers.max_deliveries without an ack; it stays in the spool and is listed in status");
                self.env.spool.park(&self.name, seq, n);
                self.snap.parked += 1;
                self.lines.remove(&seq);
                self.deliveries.remove(&seq);
                self.done.insert(seq);
            } else {
                self.retry.insert(seq);
            }
        }
        self.prune();
    }

    fn pick_member(&mut self) -> Option<usize> {
        let n = self.members.len();
        (0..n).map(|i| (self.rr + i) % n).find(|&i| {
            self.members[i].in_flight < self.settings.in_flight && !self.members[i].tx.is_closed()
        })
    }

    async fn next_fresh_message(&mut self) -> Option<(u64, Arc<str>)> {
        loop {
            // Messages a spool bound forced out are gone (and counted): never from a cache.
            let floor = self.env.spool.floor();
            if self.next_fresh < floor {
                self.next_fresh = floor;
            }
            if let Some((seq, line)) = self.ahead.pop_front() {
                self.next_fresh = self.next_fresh.max(seq + 1);
                if seq < floor
                    || self.done.contains(&seq)
                    || self.flights.contains_key(&seq)
                    || self.retry.contains(&seq)
                {
                    continue;
                }
                return Some((seq, line));
            }
            let after = self.next_fresh - 1;
            if after >= self.env.hub.newest_seq() {
                return None;
            }
            if let Some(recent) = self.env.hub.recent_after(after, READ_BATCH) {
                self.ahead
                    .extend(recent.into_iter().map(|c| (c.seq, c.line)));
            } else {
                match self.env.spool.read_after(after, READ_BATCH).await {
                    Ok(msgs) if !msgs.is_empty() => self.ahead.extend(msgs.into_iter().map(|m| {
                        (
                            m.seq,
                            Arc::from(super::hub::line_for(m.seq, &m.body, false)),
                        )
                    })),
                    Ok(_) => {
                        // Nothing stored above `after` any more (retention): skip to the newest.
                        self.next_fresh = self.env.hub.newest_seq() + 1;
                        return None;
                    }
                    Err(e) => {
                        warn!(group = %self.name, error = %e, "cannot read the backlog from the spool; retrying");
                        return None;
                    }
                }
            }
            if self.ahead.is_empty() {
                return None;
            }
        }
    }

    async fn fill(&mut self) {
        while let Some(idx) = self.pick_member() {
            let (seq, line, again) = if let Some(seq) = self.retry.pop_first() {
                if seq < self.env.spool.floor() {
                    self.lines.remove(&seq);
                    self.deliveries.remove(&seq);
                    self.done.insert(seq);
                    continue;
                }
                let Some(line) = self.lines.get(&seq).cloned() else {
                    continue;
                };
                (seq, redelivered(&line, seq), true)
            } else if let Some((seq, line)) = self.next_fresh_message().await {
                (seq, line, false)
            } else {
                break;
            };
            let member = &mut self.members[idx];
            if member.tx.try_send(Out::Line(line.clone())).is_err() {
                // The member is gone or its queue is full; try the message again later.
                self.retry.insert(seq);
                self.lines.insert(seq, strip_redelivered(&line, seq));
                member.in_flight = self.settings.in_flight;
                break;
            }
            member.in_flight += 1;
            self.rr = idx + 1;
            self.flights.insert(
                seq,
                Flight {
                    member: member.id,
                    deadline: Instant::now() + self.settings.ack_wait,
                },
            );
            if !again {
                self.lines.insert(seq, line);
            }
            *self.deliveries.entry(seq).or_insert(0) += 1;
            self.snap.delivered += 1;
            if again {
                self.snap.redelivered += 1;
            }
        }
    }
}

fn redelivered(line: &Arc<str>, seq: u64) -> Arc<str> {
    let prefix = format!("{{\"seq\":{seq}");
    match line.strip_prefix(&prefix) {
        Some(rest) if !rest.starts_with(",\"redelivered\"") => {
            format!("{prefix},\"redelivered\":true{rest}").into()
        }
        _ => line.clone(),
    }
}

fn strip_redelivered(line: &Arc<str>, seq: u64) -> Arc<str> {
    let tagged = format!("{{\"seq\":{seq},\"redelivered\":true");
    match line.strip_prefix(&tagged) {
        Some(rest) => format!("{{\"seq\":{seq}{rest}").into(),
        None => line.clone(),
    }
}
