//! The book's rules for a group's life: whether and when it expires (configured or not, its
//! idle clock), and replays (messages that were done owed again, delivery counts restarted).

use super::{Book, Record};
use std::sync::Arc;
use std::time::SystemTime;

impl Book {
    /// Its life at start: configured or not, and (having no member yet) idle since
    /// `idle_since`: the time kept in the spool, else the daemon's start.
    pub fn with_lifecycle(mut self, configured: bool, idle_since: SystemTime) -> Book {
        self.configured = configured;
        self.idle_since = self.members.is_empty().then_some(idle_since);
        self
    }

    /// Listed in `groups:` now (a reload) or no longer. A group that stops being configured
    /// without members starts its idle clock at `now` (returned), whatever it was before.
    pub fn set_configured(&mut self, configured: bool, now: SystemTime) -> Option<SystemTime> {
        let was = std::mem::replace(&mut self.configured, configured);
        if was && !configured && self.members.is_empty() {
            self.idle_since = Some(now);
            return Some(now);
        }
        None
    }

    /// Listed in `groups:`.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// Since when it has had no member; `None` while it has one.
    pub fn idle_since(&self) -> Option<SystemTime> {
        self.idle_since
    }

    /// When it expires: `adhoc_ttl` after it was left without members, if it is ad-hoc;
    /// never (`None`) while it has members or when it is configured.
    pub fn expires_at(&self) -> Option<SystemTime> {
        if self.configured || !self.members.is_empty() {
            return None;
        }
        let since = self.idle_since?;
        Some(since.checked_add(self.settings.adhoc_ttl).unwrap_or(since))
    }

    /// Whether it has expired at `now` (see [`Book::expires_at`]).
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }

    /// Its parked messages are owed again (`group replay --parked`): each waits to be given
    /// again, marked redelivered, with its delivery count restarted; the cursor goes back
    /// below the first. Returns how many will be given again.
    pub fn replay_parked(&mut self, messages: impl IntoIterator<Item = (u64, Arc<str>)>) -> usize {
        let mut n = 0;
        for (seq, line) in messages {
            if seq == 0 || self.records.contains_key(&seq) {
                continue;
            }
            self.done.remove(&seq);
            n += 1;
            if seq >= self.next_fresh {
                // Not given yet (it was done before this run): it comes as a fresh message.
                self.replayed_below = self.replayed_below.max(seq + 1);
                continue;
            }
            self.records.insert(
                seq,
                Record {
                    line,
                    deliveries: 0,
                    holder: None,
                },
            );
            self.waiting.insert(seq);
            self.cursor = self.cursor.min(seq - 1);
        }
        n
    }

    /// Every message from `from` on is owed again (`group replay --from`): what was done is
    /// given again (from the spool, as fresh reading restarts at `from`, marked redelivered),
    /// what is in flight stays with its member, and every delivery count restarts.
    pub fn replay_from(&mut self, from: u64) {
        let from = from.max(1);
        self.done.retain(|s| *s < from);
        for r in self.records.range_mut(from..).map(|(_, r)| r) {
            r.deliveries = 0;
        }
        self.replayed_below = self.replayed_below.max(self.next_fresh);
        // What lies below next_fresh was had (or counted) already: a bound that removes it
        // before the replay reaches it does not make it forced out.
        self.raise_forced_counted(self.next_fresh);
        self.next_fresh = self.next_fresh.min(from);
        self.cursor = self.cursor.min(from - 1);
    }
}
