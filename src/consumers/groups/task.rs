//! One consumer group's task: the I/O around its [`Book`]. It opens the group's position in
//! the spool, reads fresh messages (from the hub's recent cache, else from the spool), sends
//! deliveries to members' queues, persists acks, parks and its idle clock through the spool
//! writer, and answers held callbacks. It also performs its group's end (expiry, `group rm`)
//! and replays. Every decision is the book's.

use super::book::{Acked, Book, Delivery, GroupSettings, MemberId};
use super::{GroupEnv, GroupError, GroupHandle, GroupMsg, GroupSnapshot, Out};
use crate::consumers::hub::Message;
use crate::consumers::protocol::LineError;
use crate::spool::{Released, Replay, SpoolError, StartAt};
use serde_json::value::RawValue;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

/// How many backlog messages are read from the spool at once.
const READ_BATCH: usize = 512;
/// How long an expired group waits before trying its removal again after the spool failed.
const EXPIRY_RETRY: Duration = Duration::from_secs(10);

struct Group {
    name: String,
    env: Arc<GroupEnv>,
    /// How the registry knows this task (to unregister it, or register it again).
    handle: GroupHandle,
    book: Book,
    /// Each member's line queue.
    queues: HashMap<MemberId, mpsc::Sender<Out>>,
    /// Upcoming fresh messages already read.
    ahead: VecDeque<Message>,
    /// Fresh messages below this are read from the spool, never from the hub's cache: after a
    /// replay, only what is still stored is given again.
    spool_only_below: u64,
    /// No expiry attempt before this (the last one failed in the spool).
    expiry_not_before: Instant,
    /// Forced-out messages already logged.
    forced_logged: u64,
}

/// Whether the task goes on after a request.
enum Next {
    Continue,
    /// The group is gone (removed or expired): the task ends.
    End,
}

pub(super) async fn run(
    name: String,
    configured: bool,
    mut rx: mpsc::UnboundedReceiver<GroupMsg>,
    env: Arc<GroupEnv>,
    handle: GroupHandle,
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
    // The idle clock survives restarts; unknown (a member was connected, or a spool from
    // before it was kept), it starts now.
    let started = SystemTime::now();
    if state.idle_since.is_none() {
        env.spool.set_idle(&name, Some(started));
    }
    let mut settings_rx = env.settings.clone();
    let settings: GroupSettings = env.settings_for(&name, *settings_rx.borrow_and_update());
    let mut g = Group {
        book: Book::new(
            settings,
            state.cursor,
            state.acked_above.iter().chain(&state.parked).copied(),
        )
        .with_lifecycle(configured, state.idle_since.unwrap_or(started)),
        name,
        env: env.clone(),
        handle,
        queues: HashMap::new(),
        ahead: VecDeque::new(),
        spool_only_below: 0,
        expiry_not_before: Instant::now(),
        forced_logged: 0,
    };
    let mut newest = env.hub.newest();
    let mut forced = env.spool.forced_below_changes();
    // Status lists the group from here on, with real figures.
    g.publish();
    ready.send_replace(true);
    let mut beat = tokio::time::interval(crate::notify::heartbeat());
    loop {
        g.fill().await;
        g.count_forced_out();
        g.publish();
        crate::notify::wedge_point("sink", g.book.counts().delivered > 0).await;
        g.handle.progress.beat();
        let deadline = g.book.next_deadline().map(Instant::from_std);
        let expiry = g
            .book
            .expires_at()
            .map(|at| wall_to_instant(at).max(g.expiry_not_before));
        let next = tokio::select! {
            _ = env.shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                None => return,
                Some(m) => g.on_msg(m).await,
            },
            _ = newest.changed() => Next::Continue,
            // A bound removed messages: counted (and logged) now, not at the next commit.
            _ = forced.changed() => Next::Continue,
            _ = settings_rx.changed() => {
                let base = *settings_rx.borrow_and_update();
                g.book.set_settings(g.env.settings_for(&g.name, base));
                Next::Continue
            }
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                g.expire();
                Next::Continue
            }
            _ = sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                g.expire_group(&mut rx).await
            }
            _ = beat.tick() => Next::Continue,
        };
        if let Next::End = next {
            g.end(rx);
            return;
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The monotonic instant of a wall-clock time (now when it has passed). A jump of the wall
/// clock is caught when the task wakes: expiry is checked against the wall clock again.
fn wall_to_instant(at: SystemTime) -> Instant {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + left.min(Duration::from_secs(3600))
}

impl Group {
    fn publish(&self) {
        let c = self.book.counts();
        *self
            .handle
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = GroupSnapshot {
            configured: self.book.configured(),
            expires_at: self.book.expires_at(),
            members: self.book.members(),
            in_flight: self.book.in_flight(),
            retry: self.book.waiting(),
            cursor: self.book.cursor(),
            delivered: c.delivered,
            redelivered: c.redelivered,
            acked: c.acked,
            parked: c.parked,
            forced_out: c.forced_out,
        };
    }

    /// Counts what a spool bound removed before the group had it (also while no member has
    /// room, so it shows at once, not when the members catch up), and says so: an error for a
    /// sink (those messages never reach its destination), a warning for consumers.
    fn count_forced_out(&mut self) {
        self.book.forced_to(self.env.spool.forced_below());
        let total = self.book.counts().forced_out;
        if total <= self.forced_logged {
            return;
        }
        let new = total - self.forced_logged;
        self.forced_logged = total;
        if self.name.starts_with(super::SINK_GROUP_PREFIX) {
            error!(group = %self.name, forced_out = new, total, "messages forced out of the spool (spool.max_bytes or spool.max_age) before this sink published them: its destination never gets them");
        } else {
            warn!(group = %self.name, forced_out = new, total, "messages forced out of the spool (spool.max_bytes or spool.max_age) before this group acked them");
        }
    }

    async fn on_msg(&mut self, m: GroupMsg) -> Next {
        match m {
            GroupMsg::Join { id, tx, joined } => {
                self.queues.insert(id, tx);
                if self.book.join(id) {
                    self.env.spool.set_idle(&self.name, None);
                }
                let _ = joined.send(());
            }
            GroupMsg::Leave { id } => {
                self.queues.remove(&id);
                if let Some(since) = self.book.leave(id, SystemTime::now()) {
                    self.env.spool.set_idle(&self.name, Some(since));
                }
            }
            GroupMsg::Ack { id, seq, response } => self.on_ack(id, seq, response),
            GroupMsg::Configured(configured) => {
                if let Some(since) = self.book.set_configured(configured, SystemTime::now()) {
                    self.env.spool.set_idle(&self.name, Some(since));
                }
            }
            GroupMsg::Remove { reply } => {
                let (answer, next) = self.remove().await;
                let _ = reply.send(answer);
                return next;
            }
            GroupMsg::Replay { what, reply } => {
                let _ = reply.send(self.replay(what).await);
            }
        }
        Next::Continue
    }

    /// `group rm`, between two steps of this task (so no member can join halfway).
    async fn remove(&mut self) -> (Result<Released, GroupError>, Next) {
        let group = self.name.clone();
        if self.book.configured() {
            return (Err(GroupError::Configured(group)), Next::Continue);
        }
        let members = self.book.members();
        if members > 0 {
            return (
                Err(GroupError::HasMembers { group, members }),
                Next::Continue,
            );
        }
        match self.retire().await {
            Ok(released) => {
                info!(group = %self.name, backlog = released.backlog, parked = released.parked, "consumer group removed (group rm); its backlog is released");
                (Ok(released), Next::End)
            }
            Err((source, next)) => (Err(GroupError::Spool { group, source }), next),
        }
    }

    /// The idle clock ran out: an ad-hoc group without members is removed. Requests already
    /// queued (a member joining) count first.
    async fn expire_group(&mut self, rx: &mut mpsc::UnboundedReceiver<GroupMsg>) -> Next {
        while let Ok(m) = rx.try_recv() {
            if let Next::End = self.on_msg(m).await {
                return Next::End;
            }
        }
        if !self.book.expired(SystemTime::now()) {
            return Next::Continue;
        }
        match self.retire().await {
            Ok(released) => {
                info!(group = %self.name, backlog = released.backlog, parked = released.parked, ttl = ?self.env.settings.borrow().adhoc_ttl, "ad-hoc consumer group removed: no member for consumers.adhoc_ttl; its backlog is released");
                Next::End
            }
            Err((e, next)) => {
                warn!(group = %self.name, error = %e, retry_in = ?EXPIRY_RETRY, "cannot remove the expired ad-hoc group from the spool; trying again later");
                self.expiry_not_before = Instant::now() + EXPIRY_RETRY;
                next
            }
        }
    }

    /// Unregisters the group and removes it from the spool. The removal is queued under the
    /// registry's lock: a hello after it starts a new group, whose creation the writer then
    /// performs after this removal. On failure the group stays (registered again, unless a
    /// new task took its name meanwhile: then this one ends).
    async fn retire(&mut self) -> Result<Released, (SpoolError, Next)> {
        let removal = {
            let mut map = self.env.groups();
            if map.get(&self.name).is_some_and(|h| h.id == self.handle.id) {
                map.remove(&self.name);
            }
            self.env.spool.remove_group(&self.name)
        };
        match removal.await {
            Ok(released) => Ok(released.unwrap_or_default()),
            Err(e) => {
                let mut map = self.env.groups();
                let next = match map.entry(self.name.clone()) {
                    Entry::Vacant(v) => {
                        v.insert(self.handle.clone());
                        Next::Continue
                    }
                    Entry::Occupied(mut o) if !o.get().live() => {
                        o.insert(self.handle.clone());
                        Next::Continue
                    }
                    Entry::Occupied(_) => Next::End,
                };
                Err((e, next))
            }
        }
    }

    /// The group is gone: requests still queued are answered as for an unknown group, and
    /// hellos that reached it try again (their `joined` is dropped).
    fn end(self, mut rx: mpsc::UnboundedReceiver<GroupMsg>) {
        rx.close();
        let unknown = || GroupError::Unknown(self.name.clone());
        while let Ok(m) = rx.try_recv() {
            match m {
                GroupMsg::Remove { reply } => {
                    let _ = reply.send(Err(unknown()));
                }
                GroupMsg::Replay { reply, .. } => {
                    let _ = reply.send(Err(unknown()));
                }
                _ => {}
            }
        }
    }

    /// `group replay`: the spool first (acks buffered before it count before it), then the
    /// book; connected members get the messages as they have room.
    async fn replay(&mut self, what: Replay) -> Result<u64, GroupError> {
        let r = self
            .env
            .spool
            .replay(&self.name, what)
            .await
            .map_err(|source| GroupError::Spool {
                group: self.name.clone(),
                source,
            })?;
        match what {
            Replay::Parked => {
                self.book.replay_parked(
                    r.messages
                        .iter()
                        .map(|m| (m.seq, Message::new(m.seq, &m.body).line)),
                );
            }
            Replay::From(from) => {
                self.book.replay_from(from);
                self.ahead.clear();
                self.spool_only_below = self.env.hub.newest_seq() + 1;
            }
        }
        info!(group = %self.name, replay = ?what, messages = r.count, "messages given to the group again");
        Ok(r.count)
    }

    fn on_ack(&mut self, id: MemberId, seq: u64, response: Option<Box<RawValue>>) {
        match self.book.ack(seq) {
            Acked::Unknown => self.tell(
                id,
                LineError::new(
                    "unknown_seq",
                    format!("seq {seq} is not delivered to this group"),
                ),
            ),
            Acked::Repeated => {}
            Acked::Done => {
                self.env.spool.ack(&self.name, seq);
                let had_response = response.is_some();
                if !self.env.callbacks.respond(seq, &self.name, response) && had_response {
                    self.tell(id, LineError::new("response_ignored", format!("seq {seq} is not an open callback of this group (not a callback topic, or its timeout passed)")));
                }
            }
        }
    }

    /// Answers a member's unusable line (counted with the other bad consumer lines).
    fn tell(&self, id: MemberId, e: LineError) {
        self.env.hub.stats.bad_lines.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = self.queues.get(&id) {
            let _ = tx.try_send(Out::Error(e));
        }
    }

    fn expire(&mut self) {
        for (seq, deliveries) in self.book.expire(Instant::now().into_std()) {
            warn!(group = %self.name, seq, deliveries, "message parked after consumers.max_deliveries without an ack; it stays in the spool and is listed in status");
            self.env.spool.park(&self.name, seq, deliveries);
        }
    }

    /// Room in a member's queue: error replies and lines left over from expired deliveries
    /// share it. Only this task sends lines, so the room cannot shrink before the send.
    fn has_room(&self, id: MemberId) -> bool {
        self.queues.get(&id).is_some_and(|tx| tx.capacity() > 0)
    }

    /// Gives messages to members while some member has room: redeliveries first, then fresh.
    async fn fill(&mut self) {
        while let Some(member) = self.book.member_with_room(|id| self.has_room(id)) {
            let now = Instant::now().into_std();
            let forced_below = self.env.spool.forced_below();
            let delivery = match self.book.redeliver(member, now, forced_below) {
                Some(d) => d,
                None => match self.next_fresh().await {
                    Some(m) => self.book.deliver(member, m.seq, m.line, now),
                    None => break,
                },
            };
            if !self.send(&delivery) {
                // The member has just gone (its Leave follows): the message waits for the next.
                self.book.undo(&delivery);
                if !delivery.redelivered {
                    self.ahead.push_front(Message {
                        seq: delivery.seq,
                        line: delivery.line,
                    });
                }
                break;
            }
        }
    }

    fn send(&self, d: &Delivery) -> bool {
        self.queues
            .get(&d.member)
            .is_some_and(|tx| tx.try_send(Out::Line(d.line.clone())).is_ok())
    }

    /// The next message this group has not been given yet, read ahead in batches.
    async fn next_fresh(&mut self) -> Option<Message> {
        loop {
            // Messages a spool bound forced out are gone (and counted): never from a cache.
            self.book.forced_to(self.env.spool.forced_below());
            if let Some(m) = self.ahead.pop_front() {
                if self.book.wants(m.seq) {
                    return Some(m);
                }
                // Done or in flight already: fresh reading goes on after it.
                self.book.skip_to(m.seq + 1);
                continue;
            }
            let after = self.book.next_fresh() - 1;
            if after >= self.env.hub.newest_seq() {
                return None;
            }
            let recent = if after < self.spool_only_below {
                None
            } else {
                self.env.hub.recent_after(after, READ_BATCH)
            };
            if let Some(recent) = recent {
                self.ahead.extend(recent);
            } else {
                match self.env.spool.read_after(after, READ_BATCH).await {
                    Ok(msgs) if !msgs.is_empty() => self
                        .ahead
                        .extend(msgs.iter().map(|m| Message::new(m.seq, &m.body))),
                    Ok(_) => {
                        // Nothing stored above `after` any more (retention): skip to the newest.
                        self.book.skip_to(self.env.hub.newest_seq() + 1);
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
}
