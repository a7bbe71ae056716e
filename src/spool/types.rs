//! The plain data that goes into and comes out of the spool.
//!
//! No I/O here: options, messages, group state and reports, plus the millisecond clock
//! conversions used for every timestamp column.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default `spool.max_bytes`: 1 GiB, messages and receipts together.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Default `spool.max_age`: 7 days, long enough for a group to be away over a weekend.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `spool.dedupe_window`: 1 hour, longer than any DingTalk retry schedule seen.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(3600);

/// Per-message bytes counted toward `max_bytes` on top of the topic and body lengths: the seq,
/// timestamp and size integers, the record header and the b-tree cell pointer (about what
/// SQLite spends on such a row).
pub const MESSAGE_OVERHEAD: u64 = 40;
/// Per-receipt bytes counted on top of its keys and topic: seq, times, origin, size, record
/// header and cell pointer.
pub const RECEIPT_OVERHEAD: u64 = 48;

/// The `spool:` config keys the store enforces; reloadable with `Store::set_options`.
/// A zero `max_bytes` or `max_age` means "no bound"; a zero `dedupe_window` disables persisted
/// dedupe (duplicates inside one batch are still folded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub dedupe_window: Duration,
    /// Store message bodies while no consumer group exists. Off by default: with no group,
    /// nothing can read a body back (taps get messages from memory, and retention deletes
    /// what every group has acked, which with no group is everything), so only the receipt is
    /// written. On for tools and tests that read bodies without a group.
    pub bodies_without_groups: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            bodies_without_groups: false,
        }
    }
}

/// One inbound frame to store. `dedupe_keys` should be namespaced by kind (e.g. `m:<messageId>`,
/// `b:<msgId>`, `e:<eventId>`) so kinds never collide; empty keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    pub dedupe_keys: Vec<String>,
    /// JSON object text without `"seq"`, e.g. `{"type":"CALLBACK","topic":...}`.
    pub body: String,
    pub topic: String,
    /// Where it came from (the daemon's connection number), for its receipt.
    pub origin: u64,
    /// How late it arrived (its `time` header to reception), for its receipt.
    pub lag_ms: Option<i64>,
}

/// What `append_batch` did with one message, in batch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under a new seq: ACK it and deliver it.
    Stored { seq: u64 },
    /// A redelivery of `seq` (which may already be deleted): ACK it, deliver nothing.
    Duplicate { seq: u64 },
}

impl Appended {
    /// The new seq, or the original's seq for a duplicate.
    pub fn seq(&self) -> u64 {
        match *self {
            Appended::Stored { seq } | Appended::Duplicate { seq } => seq,
        }
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub body: String,
    pub topic: String,
    pub stored_at: SystemTime,
}

/// A consumer group's durable position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    /// Every seq `<= cursor` is acked, parked or no longer in the spool.
    pub cursor: u64,
    /// Acked seqs above the cursor (acks that arrived out of order), ascending.
    pub acked_above: Vec<u64>,
    /// Parked seqs still in the spool (above or below the cursor), ascending.
    pub parked: Vec<u64>,
    /// Listed in `groups:`: keeps messages before its first member connects.
    pub configured: bool,
    /// Since when it has had no member (`groups.last_active`); `None` while a member is
    /// connected or when not known (a group from before schema version 2).
    pub idle_since: Option<SystemTime>,
}

/// What removing a group let go of (for the log and `group rm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Messages still in the spool that the group had neither acked nor parked: its backlog,
    /// now held back by no one for it.
    pub backlog: u64,
    /// Its parked messages still in the spool.
    pub parked: u64,
}

/// What a replay gives to a group again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Its parked messages.
    Parked,
    /// Every message from this seq on that is still in the spool.
    From(u64),
}

/// What [`Replay`] did in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Messages the group had done (acked or parked) and now owes again.
    pub count: u64,
    /// For [`Replay::Parked`]: those messages, ascending (the group gives them again from
    /// memory, since they may lie below where it reads fresh messages).
    pub messages: Vec<StoredMessage>,
    /// The group's cursor afterwards.
    pub cursor: u64,
}

/// A group's backlog as `group peek` shows it: what it has not acked yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// The group's cursor.
    pub cursor: u64,
    /// The first messages after the cursor the group has neither acked nor parked, ascending.
    pub messages: Vec<StoredMessage>,
    /// How many such messages there are in all.
    pub total: u64,
}

/// Where a group that `ensure_group` creates starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// A configured group: everything still in the spool is its backlog. Marks it configured.
    Oldest,
    /// An ad-hoc group: only messages stored from now on.
    Newest,
}

/// Result of `Store::ack`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Seqs now acked (including ones acked before: acks are idempotent), ascending.
    pub acked: Vec<u64>,
    /// Seqs never assigned (0 or above `newest_seq`); answer `unknown_seq`.
    pub unknown: Vec<u64>,
    /// The group's cursor after these acks.
    pub cursor: u64,
}

/// A message a group gave up on after `max_deliveries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEntry {
    pub seq: u64,
    pub deliveries: u32,
    pub parked_at: SystemTime,
}

/// What one `enforce_retention` pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Messages every known group had acked (the normal case).
    pub deleted_acked: u64,
    /// Messages removed by `max_age` / `max_bytes` that at least one group had not acked.
    pub forced_out_unacked: u64,
    /// The same, per group (groups with a non-zero count only), sorted by name.
    pub forced_by_group: Vec<(String, u64)>,
    /// Messages removed by a bound that every group had acked or parked.
    pub forced_out_other: u64,
    /// Receipts past both the dedupe window and `max_age`.
    pub expired_receipts: u64,
    /// Receipts still needed, evicted because receipts alone exceeded `max_bytes`.
    pub evicted_receipts: u64,
    /// Accounted bytes (messages + receipts) after the pass.
    pub bytes_after: u64,
}

/// A snapshot for `status` and metrics; all O(1) except the parked count (small).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub messages: u64,
    /// Accounted bytes: messages and receipts, see [`MESSAGE_OVERHEAD`] and
    /// [`RECEIPT_OVERHEAD`].
    pub bytes: u64,
    /// Dedupe keys in the window (in memory).
    pub dedupe_keys: u64,
    /// Receipts kept (one per message received within `max_age` and the dedupe window).
    pub receipts: u64,
    /// 0 when the spool holds no message.
    pub oldest_seq: u64,
    /// When the oldest message was stored, epoch milliseconds; 0 when the spool holds none.
    pub oldest_stored_ms: u64,
    /// 0 before the first message; never goes backwards.
    pub newest_seq: u64,
    /// Parked (group, message) pairs.
    pub parked: u64,
    /// Size of the database file plus its WAL on disk.
    pub file_bytes: u64,
}

/// Bytes counted toward `max_bytes` for one stored message.
pub(crate) fn message_cost(topic: &str, body: &str) -> u64 {
    len_u64(topic) + len_u64(body) + MESSAGE_OVERHEAD
}

/// Bytes counted toward `max_bytes` for one receipt with these encoded keys and topic.
pub(crate) fn receipt_cost(keys: &str, topic: &str) -> u64 {
    len_u64(keys) + len_u64(topic) + RECEIPT_OVERHEAD
}

pub(crate) fn len_u64(s: &str) -> u64 {
    u64::try_from(s.len()).unwrap_or(u64::MAX)
}

/// A seq, count or size as SQLite stores it (INTEGER is i64; ours never approach i64::MAX).
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads a non-negative integer column; a negative value is an out-of-range error.
pub(crate) fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// [`get_u64`] for a nullable column (`MIN()` over no rows).
pub(crate) fn get_opt_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(v) => u64::try_from(v)
            .map(Some)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v)),
    }
}

/// Milliseconds since the Unix epoch; times before it count as 0.
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The inverse of [`to_ms`]; `None` for values no `SystemTime` can hold (a corrupt row).
pub(crate) fn from_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_round_trip_and_bad_values() {
        let t = UNIX_EPOCH + Duration::from_millis(1_769_851_697_756);
        assert_eq!(from_ms(to_ms(t)), Some(t));
        assert_eq!(from_ms(-1), None);
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(duration_ms(Duration::MAX), i64::MAX);
    }

    #[test]
    fn costs_are_documented_formula() {
        assert_eq!(message_cost("t", "abc"), 4 + MESSAGE_OVERHEAD);
        assert_eq!(receipt_cost("ab", "t"), 3 + RECEIPT_OVERHEAD);
        assert_eq!(Appended::Duplicate { seq: 7 }.seq(), 7);
    }
}
