//! A consumer group's bookkeeping, pure: no I/O, no clock (time comes in as arguments).
//!
//! One [`Record`] per message in flight: the line, how often it was given, and who holds it
//! until when (or nobody: it waits for redelivery). The rules: each message goes to one member
//! at a time, round robin over members with room (at most `in_flight` unacked each); an ack
//! makes it done; after `ack_wait` it is given again; a member that leaves hands its messages
//! back at once, in order; after `max_deliveries` a message is parked (done, kept in the spool).
//! The group's position (`cursor`: everything at or below is done) follows the lowest message
//! not yet done. The group task around it ([`super::task`]) reads the spool and writes sockets.
//!
//! Its life: a group that is not configured (ad-hoc) expires `adhoc_ttl` after it was left
//! without members (the idle clock starts when the last member leaves, at start for a group
//! without members, and when a group stops being configured); a group with members never
//! expires. A replay makes messages that were done owed again, with their delivery counts
//! restarted: they go out marked redelivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A member, numbered by the registry.
pub type MemberId = u64;

/// The reloadable group settings (`consumers:`, `limits.max_groups`), one watch for all
/// groups and the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    /// Unacked messages per member.
    pub in_flight: usize,
    /// Redelivery after this.
    pub ack_wait: Duration,
    /// Parking after this many deliveries.
    pub max_deliveries: u32,
    /// An ad-hoc group without members this long is removed.
    pub adhoc_ttl: Duration,
    /// A hello may create a group not in `groups:` (the registry's admission).
    pub adhoc_groups: bool,
    /// Groups at most, configured and ad-hoc (the registry's admission).
    pub max_groups: usize,
}

/// A message given at least once and not done yet.
#[derive(Debug)]
struct Record {
    /// Its line as first given (`"redelivered":true` is added when given again).
    line: Arc<str>,
    /// How often it was given.
    deliveries: u32,
    /// The member holding it and until when; `None` while it waits for redelivery.
    holder: Option<(MemberId, Instant)>,
}

#[derive(Debug)]
struct Member {
    id: MemberId,
    in_flight: usize,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The message is done now.
    Done,
    /// It was done already (a repeated ack): nothing to do.
    Repeated,
    /// Never given to this group: the member gets `unknown_seq`.
    Unknown,
}

/// A delivery the task must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// To whom.
    pub member: MemberId,
    /// Which message.
    pub seq: u64,
    /// The line to send (already marked redelivered when it is one).
    pub line: Arc<str>,
    /// Given before.
    pub redelivered: bool,
}

/// Counters since start, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Redeliveries.
    pub redelivered: u64,
    /// Acks that made a message done.
    pub acked: u64,
    /// Messages parked.
    pub parked: u64,
    /// Messages a spool bound (`spool.max_bytes`, `spool.max_age`) removed before the group
    /// had them done: skipped, never given.
    pub forced_out: u64,
}

/// A consumer group's state.
#[derive(Debug)]
pub struct Book {
    settings: GroupSettings,
    members: Vec<Member>,
    /// Where the round robin goes on.
    next_member: usize,
    records: BTreeMap<u64, Record>,
    /// Records waiting for redelivery, in seq order.
    waiting: BTreeSet<u64>,
    /// Deadlines of held records.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Seqs done (acked or parked) above the cursor.
    done: BTreeSet<u64>,
    /// The lowest seq not yet given for the first time.
    next_fresh: u64,
    /// Every seq at or below it is done.
    cursor: u64,
    counts: Counts,
    /// Listed in `groups:`: never expires.
    configured: bool,
    /// Since when it has had no member (wall clock: it is persisted); `None` while it has one.
    idle_since: Option<SystemTime>,
    /// Fresh messages below this were given before a replay: they go out marked redelivered.
    replayed_below: u64,
    /// Seqs below this that a spool bound removed are counted already (a replay does not
    /// lower it, so they are not counted twice).
    forced_counted_below: u64,
}

impl Book {
    /// A group at `cursor` (from the spool) whose seqs `done_above` are acked or parked.
    pub fn new(
        settings: GroupSettings,
        cursor: u64,
        done_above: impl IntoIterator<Item = u64>,
    ) -> Book {
        Book {
            settings,
            members: Vec::new(),
            next_member: 0,
            records: BTreeMap::new(),
            waiting: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            done: done_above.into_iter().filter(|s| *s > cursor).collect(),
            next_fresh: cursor + 1,
            forced_counted_below: cursor + 1,
            cursor,
            counts: Counts::default(),
            configured: false,
            idle_since: None,
            replayed_below: 0,
        }
    }

    /// New limits (reload): they apply to the next deliveries.
    pub fn set_settings(&mut self, settings: GroupSettings) {
        self.settings = settings;
    }

    /// A member joined. True when the group had none: its idle clock stops.
    pub fn join(&mut self, member: MemberId) -> bool {
        if !self.members.iter().any(|m| m.id == member) {
            self.members.push(Member {
                id: member,
                in_flight: 0,
            });
        }
        self.idle_since.take().is_some()
    }

    /// A member left at `now`: what it held waits for the next member, at once. When it was
    /// the last one the idle clock starts: returns `Some(now)`.
    pub fn leave(&mut self, member: MemberId, now: SystemTime) -> Option<SystemTime> {
        let before = self.members.len();
        self.members.retain(|m| m.id != member);
        let last_left = before > 0 && self.members.is_empty();
        if last_left {
            self.idle_since = Some(now);
        }
        let held: Vec<u64> = self
            .records
            .iter()
            .filter(|(_, r)| r.holder.is_some_and(|(m, _)| m == member))
            .map(|(s, _)| *s)
            .collect();
        for seq in held {
            self.release(seq);
        }
        last_left.then_some(now)
    }

    /// Connected members.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// A member acked `seq` (any member of the group may ack any of its messages). Below the
    /// fresh messages everything not in flight is done (acked, parked, or gone).
    pub fn ack(&mut self, seq: u64) -> Acked {
        if self.records.contains_key(&seq) {
            self.finish(seq);
            self.counts.acked += 1;
            Acked::Done
        } else if self.done.contains(&seq) || seq <= self.cursor || seq < self.next_fresh {
            Acked::Repeated
        } else {
            Acked::Unknown
        }
    }

    /// Messages whose `ack_wait` passed at `now`: given again later, or parked once given
    /// `max_deliveries` times. Returns the parked ones with their delivery counts.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, u32)> {
        let mut parked = Vec::new();
        while let Some(&(at, seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.release(seq);
            let deliveries = self.records.get(&seq).map_or(0, |r| r.deliveries);
            if deliveries >= self.settings.max_deliveries {
                self.finish(seq);
                self.counts.parked += 1;
                parked.push((seq, deliveries));
            }
        }
        parked
    }

    /// When the next held message's `ack_wait` passes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The next member to give a message to, round robin over those with room (below
    /// `in_flight` and `has_room`, e.g. its socket queue not full).
    pub fn member_with_room(&self, has_room: impl Fn(MemberId) -> bool) -> Option<MemberId> {
        let n = self.members.len();
        (0..n)
            .map(|i| &self.members[(self.next_member + i) % n])
            .find(|m| m.in_flight < self.settings.in_flight && has_room(m.id))
            .map(|m| m.id)
    }

    /// Gives the lowest message waiting for redelivery to `member`, if there is one. Messages
    /// below `forced_below` (a spool bound removed them) are dropped as done instead.
    pub fn redeliver(
        &mut self,
        member: MemberId,
        now: Instant,
        forced_below: u64,
    ) -> Option<Delivery> {
        loop {
            let seq = self.waiting.pop_first()?;
            if seq < forced_below {
                self.waiting.insert(seq);
                self.finish(seq);
                self.counts.forced_out += 1;
                continue;
            }
            let line = self.records.get(&seq)?.line.clone();
            self.hand_out(member, seq, now);
            self.counts.redelivered += 1;
            return Some(Delivery {
                member,
                seq,
                line: crate::consumers::line::redelivered(&line, seq),
                redelivered: true,
            });
        }
    }

    /// Where fresh messages start: the lowest seq not given yet.
    pub fn next_fresh(&self) -> u64 {
        self.next_fresh
    }

    /// Skips fresh messages below `seq` that are not to be given (done or in flight already,
    /// or released from the spool after every group had them). Nothing is counted.
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.next_fresh {
            self.next_fresh = seq;
            self.prune();
        }
    }

    /// Seqs below `seq` are never counted as forced out again.
    pub(super) fn raise_forced_counted(&mut self, seq: u64) {
        self.forced_counted_below = self.forced_counted_below.max(seq);
    }

    /// Skips fresh messages below `forced_below`, which a spool bound removed: those neither
    /// done nor in flight, and not counted before, count as forced out.
    pub fn forced_to(&mut self, forced_below: u64) {
        if forced_below <= self.next_fresh {
            return;
        }
        let from = self.next_fresh.max(self.forced_counted_below);
        if forced_below > from {
            let range = from..forced_below;
            let had = self.done.range(range.clone()).count() + self.records.range(range).count();
            self.counts.forced_out += (forced_below - from).saturating_sub(had as u64);
            self.forced_counted_below = forced_below;
        }
        self.skip_to(forced_below);
    }

    /// Whether message `seq` still needs its first delivery (not done, not in flight).
    pub fn wants(&self, seq: u64) -> bool {
        seq >= self.next_fresh && !self.done.contains(&seq) && !self.records.contains_key(&seq)
    }

    /// Gives fresh message `seq` to `member` for the first time (since a replay, when it was
    /// given before it: then it is marked redelivered, and undoing it makes it wait).
    pub fn deliver(
        &mut self,
        member: MemberId,
        seq: u64,
        line: Arc<str>,
        now: Instant,
    ) -> Delivery {
        self.next_fresh = self.next_fresh.max(seq + 1);
        let again = seq < self.replayed_below;
        self.records.insert(
            seq,
            Record {
                line: line.clone(),
                deliveries: 0,
                holder: None,
            },
        );
        self.hand_out(member, seq, now);
        if again {
            self.counts.redelivered += 1;
        }
        Delivery {
            member,
            seq,
            line: if again {
                crate::consumers::line::redelivered(&line, seq)
            } else {
                line
            },
            redelivered: again,
        }
    }

    /// Undoes a delivery the socket refused (the member is going away): a message given
    /// before waits for redelivery, a fresh one is fresh again.
    pub fn undo(&mut self, d: &Delivery) {
        let Some(r) = self.records.get_mut(&d.seq) else {
            return;
        };
        r.deliveries = r.deliveries.saturating_sub(1);
        self.counts.delivered = self.counts.delivered.saturating_sub(1);
        if d.redelivered {
            self.counts.redelivered = self.counts.redelivered.saturating_sub(1);
            self.release(d.seq);
        } else {
            self.unhold(d.seq);
            self.records.remove(&d.seq);
            self.next_fresh = self.next_fresh.min(d.seq);
        }
    }

    /// Every seq at or below this is done.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Messages held by members now.
    pub fn in_flight(&self) -> usize {
        self.deadlines.len()
    }

    /// Messages waiting for redelivery.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Counters since start.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn hand_out(&mut self, member: MemberId, seq: u64, now: Instant) {
        let deadline = now + self.settings.ack_wait;
        if let Some(r) = self.records.get_mut(&seq) {
            r.deliveries += 1;
            r.holder = Some((member, deadline));
        }
        self.deadlines.insert((deadline, seq));
        if let Some(i) = self.members.iter().position(|m| m.id == member) {
            self.members[i].in_flight += 1;
            self.next_member = i + 1;
        }
        self.counts.delivered += 1;
    }

    /// Takes `seq` from its holder, if any.
    fn unhold(&mut self, seq: u64) {
        let Some(r) = self.records.get_mut(&seq) else {
            return;
        };
        if let Some((member, deadline)) = r.holder.take() {
            self.deadlines.remove(&(deadline, seq));
            if let Some(m) = self.members.iter_mut().find(|m| m.id == member) {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
        }
    }

    /// `seq` goes back to the redelivery queue.
    fn release(&mut self, seq: u64) {
        self.unhold(seq);
        if self.records.contains_key(&seq) {
            self.waiting.insert(seq);
        }
    }

    /// `seq` is done (acked, parked or gone).
    fn finish(&mut self, seq: u64) {
        self.unhold(seq);
        self.waiting.remove(&seq);
        self.records.remove(&seq);
        self.done.insert(seq);
        self.prune();
    }

    /// Moves the cursor up to just below the lowest message not done and forgets the done
    /// seqs below it.
    fn prune(&mut self) {
        let low = self
            .records
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_fresh)
            .min(self.next_fresh);
        while let Some(&first) = self.done.first() {
            if first >= low {
                break;
            }
            self.done.pop_first();
        }
        self.cursor = self.cursor.max(low.saturating_sub(1));
    }
}

#[path = "book_life.rs"]
mod life;

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
