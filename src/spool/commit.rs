//! `Store::commit`: the one write path. A batch of new messages and the group acks and parks
//! that arrived meanwhile, all in one IMMEDIATE transaction with one fsync, so consumer acks
//! never cost a commit of their own and never wait behind a stream of messages.
//! [`Store::append_batch`], [`Store::ack`] and [`Store::park`] are thin wrappers over it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::TransactionBehavior;

use super::append::append_in;
use super::error::{SpoolError, SqlContext};
use super::groups::{ack_in, park_in, unknown_group};
use super::store::Store;
use super::types::{AckOutcome, Appended, NewMessage, get_u64, int, to_ms};

/// What one [`Store::commit`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// One entry per message of the batch, in order (as from `append_batch`).
    pub appended: Vec<Appended>,
    /// What each group's acks did.
    pub acks: BTreeMap<String, AckOutcome>,
    /// `(group, seq)` actually parked (a park of something acked meanwhile is dropped).
    pub parked: Vec<(String, u64)>,
    /// Groups named by acks or parks that the spool does not know; those writes were skipped.
    pub unknown_groups: Vec<String>,
}

/// Records which seqs `group` acked at `now_ms`, one row per run of consecutive seqs (acks
/// come mostly in order, so usually one row per group and commit): what `inspect` shows.
fn log_acked(
    tx: &rusqlite::Transaction<'_>,
    path: &std::path::Path,
    group: &str,
    acked: &[u64],
    now_ms: i64,
) -> Result<(), SpoolError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO acked_log (grp, first_seq, last_seq, acked_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .at(path)?;
    let mut runs = acked.iter().copied().peekable();
    while let Some(first) = runs.next() {
        let mut last = first;
        while runs.peek() == Some(&(last + 1)) {
            last += 1;
            runs.next();
        }
        stmt.execute((group, int(first), int(last), now_ms))
            .at(path)?;
    }
    Ok(())
}

impl Store {
    /// Records `acks` (group → seqs), then `parks` (group, seq, deliveries), then appends
    /// `batch`, in one transaction. On error nothing is written and the same call can be retried
    /// (acks and parks are idempotent). An unknown group's writes are skipped, not fatal.
    pub fn commit(
        &mut self,
        batch: &[NewMessage],
        acks: &BTreeMap<String, Vec<u64>>,
        parks: &[(String, u64, u32)],
        now: SystemTime,
    ) -> Result<CommitOutcome, SpoolError> {
        let mut out = CommitOutcome::default();
        if batch.is_empty() && acks.is_empty() && parks.is_empty() {
            return Ok(out);
        }
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        // The seq counter is read inside the transaction: it is the database's, never a copy
        // another process could have moved past.
        let last_seq: u64 = tx
            .prepare_cached("SELECT last_seq FROM meta WHERE id = 1")
            .and_then(|mut s| s.query_row([], |r| get_u64(r, 0)))
            .at(path)?;
        let now_ms = to_ms(now);
        for (group, seqs) in acks {
            match ack_in(&tx, path, group, seqs, last_seq) {
                Ok(a) => {
                    log_acked(&tx, path, group, &a.acked, now_ms)?;
                    out.acks.insert(group.clone(), a);
                }
                Err(SpoolError::UnknownGroup { .. }) => out.unknown_groups.push(group.clone()),
                Err(e) => return Err(e),
            }
        }
        for (group, seq, deliveries) in parks {
            match park_in(&tx, path, group, *seq, *deliveries, last_seq) {
                Ok(true) => out.parked.push((group.clone(), *seq)),
                Ok(false) => {}
                Err(SpoolError::UnknownGroup { .. }) => out.unknown_groups.push(group.clone()),
                Err(e) => return Err(e),
            }
        }
        // Bodies are kept for consumer groups (sinks are groups too); with none, nobody could
        // read one back, and retention would delete it at its next pass.
        let bodies = batch.is_empty()
            || self.opts.bodies_without_groups
            || tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM groups)")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, bool>(0)))
                .at(path)?;
        let done = match append_in(
            &tx,
            path,
            self.opts.dedupe_window,
            &mut self.index,
            last_seq,
            batch,
            bodies,
            now,
        )
        .and_then(|done| tx.commit().at(path).map(|()| done))
        {
            Ok(done) => {
                self.wrote();
                done
            }
            Err(e) => {
                // Nothing of the batch is stored: neither is it in the dedupe window.
                self.index.truncate_from(last_seq + 1);
                return Err(e);
            }
        };
        if self.opts.dedupe_window.is_zero() {
            // No window: duplicates were folded within the batch only.
            self.index.forget_through(done.last_seq);
        }
        self.last_seq = done.last_seq;
        self.bytes += done.added_bytes;
        out.appended = done.outcomes;
        out.unknown_groups.sort();
        out.unknown_groups.dedup();
        Ok(out)
    }
}

impl Store {
    /// Stores a batch in one transaction: [`Store::commit`] with nothing else. A message any of
    /// whose keys was stored within `dedupe_window` (earlier, or earlier in this batch) is a
    /// `Duplicate`. On error nothing of the batch is stored.
    pub fn append_batch(
        &mut self,
        batch: &[NewMessage],
        now: SystemTime,
    ) -> Result<Vec<Appended>, SpoolError> {
        Ok(self.commit(batch, &BTreeMap::new(), &[], now)?.appended)
    }

    /// Records `group`'s acks ([`Store::commit`] with nothing else) and advances its cursor over
    /// what is now contiguous. Idempotent; acking a parked message unparks it. Seqs never
    /// assigned (0, above `newest_seq`) come back as `unknown`; a seq no longer in the spool
    /// counts as acked.
    pub fn ack(&mut self, group: &str, seqs: &[u64]) -> Result<AckOutcome, SpoolError> {
        let acks = BTreeMap::from([(group.to_owned(), seqs.to_vec())]);
        self.commit(&[], &acks, &[], SystemTime::now())?
            .acks
            .remove(group)
            .ok_or_else(|| unknown_group(&self.path, group))
    }

    /// Parks `seq` for `group` after `deliveries` attempts ([`Store::commit`] with nothing
    /// else): it counts as done for the cursor and for "acked by all", but stays in the spool
    /// (until a bound removes it) and is listed by [`Store::parked`]. False when there was
    /// nothing to park (already acked or gone).
    pub fn park(&mut self, group: &str, seq: u64, deliveries: u32) -> Result<bool, SpoolError> {
        let parks = [(group.to_owned(), seq, deliveries)];
        let out = self.commit(&[], &BTreeMap::new(), &parks, SystemTime::now())?;
        if out.unknown_groups.iter().any(|g| g == group) {
            return Err(unknown_group(&self.path, group));
        }
        Ok(!out.parked.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::StartAt;
    use crate::spool::test_support::{assert_accounting, at, fill, msg, open_tmp};

    #[test]
    fn acks_parks_and_appends_share_one_transaction() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("g", StartAt::Oldest).expect("g");
        fill(&mut store, 3, at(0));
        let acks = BTreeMap::from([("g".to_string(), vec![1, 2]), ("nope".to_string(), vec![1])]);
        let parks = vec![("g".to_string(), 3, 5), ("g".to_string(), 2, 5)];
        let out = store
            .commit(&[msg("new", &["m:new"])], &acks, &parks, at(1))
            .expect("commit");
        assert_eq!(out.appended, vec![Appended::Stored { seq: 4 }]);
        assert_eq!(
            out.parked,
            vec![("g".to_string(), 3)],
            "seq 2 was acked first"
        );
        assert_eq!(out.unknown_groups, vec!["nope".to_string()]);
        let g = store.load_groups().expect("load").remove(0);
        assert_eq!((g.cursor, g.parked), (3, vec![3]));
        assert_eq!(store.newest_seq().expect("newest"), 4);
        assert_accounting(&store);
    }

    #[test]
    fn disk_full_keeps_nothing_and_the_retry_applies_everything() {
        let (_dir, mut store) = open_tmp();
        store.ensure_group("g", StartAt::Oldest).expect("g");
        fill(&mut store, 2, at(0));
        store.set_max_page_count_for_test(1).expect("cap");
        let acks = BTreeMap::from([("g".to_string(), vec![1])]);
        let big: Vec<NewMessage> = (0..50)
            .map(|i| NewMessage {
                dedupe_keys: vec![format!("m:{i}")],
                body: "x".repeat(4000),
                topic: "/t".into(),
                ..Default::default()
            })
            .collect();
        let err = store.commit(&big, &acks, &[], at(1)).expect_err("full");
        assert!(err.is_disk_full(), "{err:?}");
        assert_eq!(store.load_groups().expect("load")[0].cursor, 0);
        store.set_max_page_count_for_test(1 << 30).expect("uncap");
        let out = store.commit(&big, &acks, &[], at(2)).expect("retry");
        assert_eq!(out.appended.len(), 50);
        assert_eq!(store.load_groups().expect("load")[0].cursor, 1);
        assert_accounting(&store);
    }
}
