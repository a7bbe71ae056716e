//! One consumer group's task: the I/O around its [`Book`]. It opens the group's position in
//! the spool, reads fresh messages (from the hub's recent cache, else from the spool), sends
//! deliveries to members' queues, persists acks and parks through the spool writer, and
//! answers held callbacks. Every decision is the book's.

use super::book::{Acked, Book, Delivery, GroupSettings, MemberId};
use super::{GroupEnv, GroupMsg, GroupSnapshot, Out};
use crate::consumers::hub::Message;
use crate::consumers::protocol::LineError;
use crate::spool::StartAt;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::warn;

/// How many backlog messages are read from the spool at once.
const READ_BATCH: usize = 512;

struct Group {
    name: String,
    env: Arc<GroupEnv>,
    book: Book,
    /// Each member's line queue.
    queues: HashMap<MemberId, mpsc::Sender<Out>>,
    /// Upcoming fresh messages already read.
    ahead: VecDeque<Message>,
}

pub(super) async fn run(
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
    let settings: GroupSettings = *settings_rx.borrow_and_update();
    let mut g = Group {
        book: Book::new(
            settings,
            state.cursor,
            state.acked_above.iter().chain(&state.parked).copied(),
        ),
        name,
        env: env.clone(),
        queues: HashMap::new(),
        ahead: VecDeque::new(),
    };
    let mut newest = env.hub.newest();
    ready.send_replace(true);
    let mut beat = tokio::time::interval(crate::notify::heartbeat());
    loop {
        g.fill().await;
        g.publish(&snapshot);
        crate::notify::wedge_point("sink", g.book.counts().delivered > 0).await;
        progress.beat();
        let deadline = g.book.next_deadline().map(Instant::from_std);
        tokio::select! {
            _ = env.shutdown.cancelled() => return,
            msg = rx.recv() => match msg {
                None => return,
                Some(m) => g.on_msg(m),
            },
            _ = newest.changed() => {}
            _ = settings_rx.changed() => g.book.set_settings(*settings_rx.borrow_and_update()),
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => g.expire(),
            _ = beat.tick() => {}
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

impl Group {
    fn publish(&self, snapshot: &Mutex<GroupSnapshot>) {
        let c = self.book.counts();
        *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = GroupSnapshot {
            members: self.book.members(),
            in_flight: self.book.in_flight(),
            retry: self.book.waiting(),
            cursor: self.book.cursor(),
            delivered: c.delivered,
            redelivered: c.redelivered,
            acked: c.acked,
            parked: c.parked,
        };
    }

    fn on_msg(&mut self, m: GroupMsg) {
        match m {
            GroupMsg::Join { id, tx } => {
                self.queues.insert(id, tx);
                self.book.join(id);
            }
            GroupMsg::Leave { id } => {
                self.queues.remove(&id);
                self.book.leave(id);
            }
            GroupMsg::Ack { id, seq, response } => self.on_ack(id, seq, response),
        }
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
            self.book.skip_to(self.env.spool.forced_below());
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
            if let Some(recent) = self.env.hub.recent_after(after, READ_BATCH) {
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
