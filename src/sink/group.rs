//! Consumer groups (design.md §5): every group gets every message; inside a group each message
//! goes to one member at a time, in seq order, at most `in_flight` unacked per member. Unacked
//! messages come again (same seq, `"redelivered":true`) after `ack_wait`, or at once to another
//! member when theirs leaves; after `max_deliveries` they are parked. Acks are persisted
//! through the spool writer, so a group that was away gets its backlog.

pub use super::members::{GroupRegistry, MemberIo};

use super::members::GroupEnv;
use super::protocol::LineError;
use crate::spool::StartAt;
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::warn;

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

pub(super) enum Out {
    Line(Arc<str>),
    Error(LineError),
}

pub(super) enum GroupMsg {
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

pub(super) async fn run_group(
    name: String,
    configured: bool,
    mut rx: mpsc::UnboundedReceiver<GroupMsg>,
    env: Arc<GroupEnv>,
    snapshot: Arc<Mutex<GroupSnapshot>>,
    ready: watch::Sender<bool>,
    progress: Arc<crate::notify::Progress>,
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
        progress.beat();
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

    /// Answers a member's unusable line (counted with the other bad consumer lines).
    fn tell(&self, id: u64, e: LineError) {
        self.env
            .hub
            .stats
            .bad_lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        // Room in the member's queue too: error replies and lines left over from expired
        // flights share it. Only this task sends lines, so the room cannot shrink before send.
        (0..n).map(|i| (self.rr + i) % n).find(|&i| {
            let m = &self.members[i];
            m.in_flight < self.settings.in_flight && m.tx.capacity() > 0
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
                // The member has just gone (its Leave follows): the message waits for the next
                // member, as a redelivery if it had been delivered before, else as new.
                if again {
                    self.retry.insert(seq);
                } else {
                    self.ahead.push_front((seq, line));
                    self.next_fresh = seq;
                }
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
