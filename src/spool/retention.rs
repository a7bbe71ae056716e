//! Retention: what may leave the spool, and what the bounds force out.
//!
//! In one transaction: receipts older than both the dedupe window and `max_age` go; messages
//! every known group has acked go (a parked message stays); then `max_age` and `max_bytes`
//! force out the oldest messages, counting per group those it had not acked or parked, marking
//! their receipts, and warn. Receipts are evicted early only when receipts alone exceed
//! `max_bytes`. The ack and park history (`acked_log`, `parked_log`) lives exactly as long as
//! the receipts it belongs to. The in-memory dedupe window follows once the transaction
//! committed.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{Transaction, TransactionBehavior};

use super::error::{SpoolError, SqlContext};
use super::groups::advance_cursor;
use super::store::Store;
use super::types::{RetentionReport, StoreOptions, duration_ms, get_u64, int, to_ms};

/// Deletes acked by everyone: at or below every cursor, or acked above it, and parked by none.
const DELETE_ACKED_PREFIX: &str = "DELETE FROM messages WHERE seq <= ?1 \
     AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.seq = messages.seq) RETURNING size";
const DELETE_ACKED_ABOVE: &str = "DELETE FROM messages WHERE seq IN \
     (SELECT DISTINCT a0.seq FROM group_acks a0 WHERE a0.seq > ?1 \
      AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.seq = a0.seq) \
      AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.cursor < a0.seq AND NOT EXISTS \
          (SELECT 1 FROM group_acks a WHERE a.grp = g.name AND a.seq = a0.seq))) \
     RETURNING size";
/// "Group ?1 (cursor ?2) still owes message m": above its cursor, not acked, not parked.
const OWED: &str = "m.seq > ?2 \
     AND NOT EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = ?1 AND a.seq = m.seq) \
     AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq)";
/// Messages up to ?1 that at least one group still owes.
const OWED_BY_ANY: &str = "SELECT COUNT(*) FROM messages m WHERE m.seq <= ?1 AND EXISTS \
     (SELECT 1 FROM groups g WHERE m.seq > g.cursor \
      AND NOT EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = g.name AND a.seq = m.seq) \
      AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = g.name AND p.seq = m.seq))";

/// Running totals changed by one pass, applied to `meta` at the end.
#[derive(Default)]
struct Delta {
    bytes: u64,
    messages: u64,
    receipts: u64,
}

impl Store {
    /// Runs one retention pass (see the module docs) in one transaction and reports what it
    /// removed. Forced-out unacked messages are also logged here with `warn!`.
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionReport, SpoolError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let (report, evicted_through) = Pass::new(&tx, self.last_seq)
            .and_then(|pass| pass.run(to_ms(now), &self.opts))
            .at(path)?;
        tx.commit().at(path)?;
        self.wrote();
        self.bytes = report.bytes_after;
        let window = duration_ms(self.opts.dedupe_window);
        let cutoff = to_ms(now).saturating_sub(window) / 1000;
        self.index.expire(u32::try_from(cutoff).unwrap_or(u32::MAX));
        if let Some(seq) = evicted_through {
            self.index.forget_through(seq);
        }
        if report.forced_out_unacked > 0 {
            tracing::warn!(
                forced_out_unacked = report.forced_out_unacked,
                by_group = ?report.forced_by_group,
                max_bytes = self.opts.max_bytes,
                max_age = ?self.opts.max_age,
                "spool bounds forced out messages not yet acked by every group"
            );
        }
        if report.evicted_receipts > 0 {
            tracing::warn!(
                evicted_receipts = report.evicted_receipts,
                max_bytes = self.opts.max_bytes,
                "receipts alone exceed spool.max_bytes: evicted receipts still in the dedupe window or max_age"
            );
        }
        Ok(report)
    }
}

/// One retention pass inside one transaction.
struct Pass<'a, 'c> {
    tx: &'a Transaction<'c>,
    last_seq: u64,
    /// Every known group and its cursor at the start of the pass.
    groups: Vec<(String, u64)>,
    report: RetentionReport,
    per_group: BTreeMap<String, u64>,
    freed: Delta,
}

impl<'a, 'c> Pass<'a, 'c> {
    fn new(tx: &'a Transaction<'c>, last_seq: u64) -> rusqlite::Result<Self> {
        let groups = tx
            .prepare_cached("SELECT name, cursor FROM groups ORDER BY name")?
            .query_map([], |r| Ok((r.get(0)?, get_u64(r, 1)?)))?
            .collect::<rusqlite::Result<Vec<(String, u64)>>>()?;
        Ok(Pass {
            tx,
            last_seq,
            groups,
            report: RetentionReport::default(),
            per_group: BTreeMap::new(),
            freed: Delta::default(),
        })
    }

    /// Every phase in order; the caller commits. Also returns the last seq whose receipt was
    /// evicted early (the dedupe window must forget it too).
    fn run(
        mut self,
        now_ms: i64,
        opts: &StoreOptions,
    ) -> rusqlite::Result<(RetentionReport, Option<u64>)> {
        let bytes_before: u64 =
            self.tx
                .query_row("SELECT bytes FROM meta WHERE id = 1", [], |r| get_u64(r, 0))?;
        // A receipt serves dedupe for the window and `inspect` for max_age: the longer of both.
        let keep = opts.dedupe_window.max(opts.max_age);
        let cutoff = now_ms.saturating_sub(duration_ms(keep));
        if let Some(through) = receipts_before(self.tx, cutoff)? {
            let (n, bytes) = delete_receipts_through(self.tx, through)?;
            self.report.expired_receipts = n;
            self.freed.receipts += n;
            self.freed.bytes += bytes;
        }

        let min_cursor = self
            .groups
            .iter()
            .map(|g| g.1)
            .min()
            .unwrap_or(self.last_seq);
        for sql in [DELETE_ACKED_PREFIX, DELETE_ACKED_ABOVE] {
            let (n, bytes) = delete_messages(self.tx, sql, min_cursor)?;
            self.report.deleted_acked += n;
            self.freed.messages += n;
            self.freed.bytes += bytes;
        }

        if !opts.max_age.is_zero() {
            let cutoff = now_ms.saturating_sub(duration_ms(opts.max_age));
            if let Some(through) = age_cutoff(self.tx, cutoff)? {
                self.force_out(through, now_ms)?;
            }
        }
        let over = |freed: &Delta| {
            let bytes = bytes_before.saturating_sub(freed.bytes);
            (opts.max_bytes > 0 && bytes > opts.max_bytes).then(|| bytes - opts.max_bytes)
        };
        if let Some(excess) = over(&self.freed)
            && let Some(through) = bytes_cutoff(self.tx, excess)?
        {
            self.force_out(through, now_ms)?;
        }
        let mut evicted_through = None;
        if let Some(excess) = over(&self.freed)
            && let Some(through) = receipt_cutoff(self.tx, excess)?
        {
            let (n, bytes) = delete_receipts_through(self.tx, through)?;
            self.report.evicted_receipts = n;
            self.freed.receipts += n;
            self.freed.bytes += bytes;
            evicted_through = Some(through);
        }

        self.tx.execute_batch(
            "DELETE FROM group_acks WHERE NOT EXISTS \
                 (SELECT 1 FROM messages m WHERE m.seq = group_acks.seq); \
             DELETE FROM parked WHERE NOT EXISTS \
                 (SELECT 1 FROM messages m WHERE m.seq = parked.seq);",
        )?;
        for (name, cursor) in &self.groups {
            advance_cursor(self.tx, name, *cursor, self.last_seq)?;
        }
        self.tx.execute(
            "UPDATE meta SET bytes = MAX(bytes - ?1, 0), messages = MAX(messages - ?2, 0), \
             receipts = MAX(receipts - ?3, 0) WHERE id = 1",
            (
                int(self.freed.bytes),
                int(self.freed.messages),
                int(self.freed.receipts),
            ),
        )?;
        // History older than every receipt has nothing left to describe (with no receipts at
        // all, everything up to the newest seq goes).
        let keep_from = int(self.last_seq.saturating_add(1));
        for sql in [
            "DELETE FROM acked_log WHERE last_seq < (SELECT COALESCE(MIN(seq), ?1) FROM receipts)",
            "DELETE FROM parked_log WHERE seq < (SELECT COALESCE(MIN(seq), ?1) FROM receipts)",
        ] {
            self.tx.prepare_cached(sql)?.execute([keep_from])?;
        }
        self.report.bytes_after =
            self.tx
                .query_row("SELECT bytes FROM meta WHERE id = 1", [], |r| get_u64(r, 0))?;
        self.report.forced_by_group = self.per_group.into_iter().filter(|(_, n)| *n > 0).collect();
        Ok((self.report, evicted_through))
    }

    /// Deletes every message with `seq <= through`, counting per group the ones it still owed,
    /// and marks their receipts forced out at `now_ms` (what `inspect` tells).
    fn force_out(&mut self, through: u64, now_ms: i64) -> rusqlite::Result<()> {
        for (name, cursor) in &self.groups {
            let owed: u64 = self
                .tx
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM messages m WHERE m.seq <= ?3 AND {OWED}"
                ))?
                .query_row((name, int(*cursor), int(through)), |r| get_u64(r, 0))?;
            *self.per_group.entry(name.clone()).or_default() += owed;
        }
        let owed_by_any: u64 = self
            .tx
            .prepare_cached(OWED_BY_ANY)?
            .query_row([int(through)], |r| get_u64(r, 0))?;
        self.tx
            .prepare_cached(
                "UPDATE receipts SET forced_out_at = ?2 \
                 WHERE seq IN (SELECT seq FROM messages WHERE seq <= ?1)",
            )?
            .execute((int(through), now_ms))?;
        let (n, bytes) = delete_messages(
            self.tx,
            "DELETE FROM messages WHERE seq <= ?1 RETURNING size",
            through,
        )?;
        self.report.forced_out_unacked += owed_by_any;
        self.report.forced_out_other += n.saturating_sub(owed_by_any);
        self.freed.messages += n;
        self.freed.bytes += bytes;
        Ok(())
    }
}

/// Deletes messages matching `sql` (bound to `?1 = param`); returns `(count, accounted bytes)`.
fn delete_messages(tx: &Transaction<'_>, sql: &str, param: u64) -> rusqlite::Result<(u64, u64)> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query([int(param)])?;
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        n += 1;
        bytes += get_u64(row, 0)?;
    }
    Ok((n, bytes))
}

/// Deletes the receipts up to `through`; returns `(count, accounted bytes)`.
fn delete_receipts_through(tx: &Transaction<'_>, through: u64) -> rusqlite::Result<(u64, u64)> {
    let (n, bytes): (u64, u64) = tx
        .prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM receipts WHERE seq <= ?1")?
        .query_row([int(through)], |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)))?;
    tx.prepare_cached("DELETE FROM receipts WHERE seq <= ?1")?
        .execute([int(through)])?;
    Ok((n, bytes))
}

/// The last seq of the oldest run of receipts received at or before `cutoff_ms` (in seq
/// order, as they were written).
fn receipts_before(tx: &Transaction<'_>, cutoff_ms: i64) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached("SELECT seq, received_at FROM receipts ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut through = None;
    while let Some(row) = rows.next()? {
        if row.get::<_, i64>(1)? > cutoff_ms {
            break;
        }
        through = Some(get_u64(row, 0)?);
    }
    Ok(through)
}

/// The last seq of the oldest run of messages stored before `cutoff_ms`. Messages are aged in
/// seq order: after a clock step backwards an old message may wait for the ones before it.
fn age_cutoff(tx: &Transaction<'_>, cutoff_ms: i64) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached("SELECT seq, stored_at FROM messages ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut through = None;
    while let Some(row) = rows.next()? {
        if row.get::<_, i64>(1)? >= cutoff_ms {
            break;
        }
        through = Some(get_u64(row, 0)?);
    }
    Ok(through)
}

/// The last seq of the shortest oldest run of messages whose sizes add up to `excess`
/// (all messages when they do not suffice), `None` when there are none.
fn bytes_cutoff(tx: &Transaction<'_>, excess: u64) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached("SELECT seq, size FROM messages ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let (mut through, mut sum) = (None, 0u64);
    while let Some(row) = rows.next()? {
        through = Some(get_u64(row, 0)?);
        sum += get_u64(row, 1)?;
        if sum >= excess {
            break;
        }
    }
    Ok(through)
}

/// The last seq of the shortest oldest run of receipts whose sizes add up to `excess`.
fn receipt_cutoff(tx: &Transaction<'_>, excess: u64) -> rusqlite::Result<Option<u64>> {
    let mut stmt = tx.prepare_cached("SELECT seq, size FROM receipts ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let (mut through, mut sum) = (None, 0u64);
    while let Some(row) = rows.next()? {
        through = Some(get_u64(row, 0)?);
        sum += get_u64(row, 1)?;
        if sum >= excess {
            break;
        }
    }
    Ok(through)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::spool::test_support::{assert_accounting, at, fill, msg, open_tmp, opts};
    use crate::spool::{StartAt, StoreOptions};

    #[test]
    fn deletes_only_what_every_group_acked() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("a", StartAt::Oldest).expect("a");
        store.ensure_group("b", StartAt::Oldest).expect("b");
        fill(&mut store, 4, at(0));
        store.ack("a", &[1, 2, 3, 4]).expect("a");
        store.ack("b", &[1, 3]).expect("b");
        let report = store.enforce_retention(at(1)).expect("retention");
        assert_eq!(report.deleted_acked, 2);
        assert_eq!(report.forced_out_unacked, 0);
        let left: Vec<u64> = store
            .read_after(0, 10)
            .expect("read")
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(left, vec![2, 4]);
        assert_eq!(
            store.load_groups().expect("load")[1].acked_above,
            Vec::<u64>::new()
        );
        assert_eq!(store.ack("b", &[2]).expect("b").cursor, 3);
        assert_accounting(&store);
    }

    #[test]
    fn expired_receipts_go_and_bytes_follow() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("g", StartAt::Oldest).expect("g");
        store
            .append_batch(&[msg("a", &["m:1", "b:1"]), msg("b", &["m:2"])], at(0))
            .expect("append");
        assert_eq!(store.stats().expect("stats").dedupe_keys, 3);
        assert_eq!(
            store
                .enforce_retention(at(3599))
                .expect("ret")
                .expired_receipts,
            0
        );
        let report = store.enforce_retention(at(3600)).expect("ret");
        assert_eq!(report.expired_receipts, 2, "one receipt per message");
        assert_eq!(report.bytes_after, store.stats().expect("stats").bytes);
        let stats = store.stats().expect("stats");
        assert_eq!((stats.dedupe_keys, stats.receipts), (0, 0));
        assert_accounting(&store);
    }

    #[test]
    fn max_age_forces_out_unacked_with_per_group_counts() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("a", StartAt::Oldest).expect("a");
        store.ensure_group("b", StartAt::Oldest).expect("b");
        store.ensure_group("c", StartAt::Oldest).expect("c");
        fill(&mut store, 3, at(0));
        fill(&mut store, 2, at(100));
        store.ack("a", &[1, 2]).expect("a");
        store.ack("b", &[2]).expect("b");
        store.ack("c", &[1, 2, 3]).expect("c");
        store.set_options(StoreOptions {
            max_age: Duration::from_secs(50),
            ..opts()
        });
        let report = store.enforce_retention(at(120)).expect("retention");
        assert_eq!(report.deleted_acked, 1, "seq 2: acked by all");
        assert_eq!(report.forced_out_unacked, 2, "seqs 1 and 3");
        assert_eq!(
            report.forced_by_group,
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );
        let cursors: Vec<u64> = store
            .load_groups()
            .expect("load")
            .iter()
            .map(|g| g.cursor)
            .collect();
        assert_eq!(cursors, vec![3, 3, 3]);
        assert_eq!(store.read_after(0, 10).expect("read").len(), 2);
        assert_accounting(&store);
    }

    #[test]
    fn max_bytes_forces_out_oldest_first() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("a", StartAt::Oldest).expect("a");
        store.ensure_group("b", StartAt::Newest).expect("b");
        let seqs = fill(&mut store, 10, at(0));
        store.ensure_group("late", StartAt::Newest).expect("late");
        store.ack("b", &seqs[..4]).expect("b");
        // What forcing out six messages frees (their receipts stay, for dedupe and inspect).
        let m = crate::spool::types::message_cost("/t", &msg("0", &[]).body);
        let bound = store.stats().expect("stats").bytes - 6 * m;
        store.set_options(StoreOptions {
            max_bytes: bound,
            ..opts()
        });
        let report = store.enforce_retention(at(1)).expect("retention");
        assert_eq!(report.deleted_acked, 0);
        assert_eq!(report.forced_out_unacked, 6);
        assert_eq!(
            report.forced_by_group,
            vec![("a".to_string(), 6), ("b".to_string(), 2)],
            "b acked 1-4 of 1-6; late started after 10"
        );
        assert!(report.bytes_after <= bound, "{report:?}");
        assert_eq!(report.evicted_receipts, 0, "messages alone made room");
        assert_eq!(store.stats().expect("stats").oldest_seq, 7);
        assert_accounting(&store);
    }

    #[test]
    fn parked_messages_forced_out_are_not_counted_as_unacked() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("g", StartAt::Oldest).expect("g");
        fill(&mut store, 2, at(0));
        store.park("g", 1, 10).expect("park");
        store.set_options(StoreOptions {
            max_age: Duration::from_secs(10),
            ..opts()
        });
        let report = store.enforce_retention(at(60)).expect("retention");
        assert_eq!(report.forced_out_unacked, 1, "seq 2 only");
        assert_eq!(report.forced_out_other, 1, "the parked seq 1");
        assert!(store.parked("g").expect("parked").is_empty());
        assert_eq!(store.stats().expect("stats").parked, 0);
        assert_accounting(&store);
    }

    #[test]
    fn ack_and_park_history_lives_as_long_as_its_receipts() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("g", StartAt::Oldest).expect("g");
        let t0 = std::time::SystemTime::now();
        store
            .append_batch(&[msg("a", &["m:a"]), msg("b", &["m:b"])], t0)
            .expect("append");
        assert!(store.park("g", 1, 5).expect("park"));
        store.ack("g", &[2]).expect("ack");
        let rows = |store: &crate::spool::Store| -> (i64, i64) {
            let count = |t: &str| {
                store
                    .conn
                    .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                    .expect("count")
            };
            (count("acked_log"), count("parked_log"))
        };
        let report = store.enforce_retention(t0).expect("retention");
        assert_eq!(report.deleted_acked, 1);
        assert_eq!(
            rows(&store),
            (1, 1),
            "bodies go, history stays with the receipts"
        );
        // max_age forces out the parked body: its receipt is marked, history kept.
        store.set_options(StoreOptions {
            max_age: Duration::from_secs(10),
            ..opts()
        });
        store
            .enforce_retention(t0 + Duration::from_secs(11))
            .expect("retention");
        let marked: Vec<Option<i64>> = store
            .conn
            .prepare("SELECT forced_out_at FROM receipts ORDER BY seq")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("marks");
        assert!(marked[0].is_some(), "forced out by max_age");
        assert_eq!(marked[1], None, "released after every group acked it");
        assert_eq!(rows(&store), (1, 1));
        // Receipts past the window and max_age go, and all their history with them (also the
        // run that ends at the newest seq).
        let report = store
            .enforce_retention(t0 + Duration::from_secs(3601))
            .expect("retention");
        assert_eq!(report.expired_receipts, 2);
        assert_eq!(rows(&store), (0, 0));
        assert_accounting(&store);
    }

    #[test]
    fn receipts_alone_over_max_bytes_are_evicted_oldest_first() {
        let (_dir, mut store) = open_tmp();
        for i in 0..10u64 {
            store
                .append_batch(&[msg("k", &[&format!("m:{i:04}")])], at(i))
                .expect("append");
        }
        store
            .enforce_retention(at(10))
            .expect("no groups: messages go");
        let stats = store.stats().expect("stats");
        assert_eq!(
            (stats.messages, stats.receipts, stats.dedupe_keys),
            (0, 10, 10)
        );
        store.set_options(StoreOptions {
            max_bytes: stats.bytes / 2,
            ..opts()
        });
        let report = store.enforce_retention(at(11)).expect("retention");
        assert_eq!(report.evicted_receipts, 5);
        assert_eq!(
            store.stats().expect("stats").dedupe_keys,
            5,
            "the window forgets them too"
        );
        assert!(report.bytes_after <= stats.bytes / 2);
        let again = store
            .append_batch(&[msg("k", &["m:0009"])], at(12))
            .expect("dup");
        assert!(matches!(
            again[0],
            crate::spool::Appended::Duplicate { seq: 10 }
        ));
        assert_accounting(&store);
    }
}
