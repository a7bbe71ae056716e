//! Consumer groups on disk: creation, acks, parking and the contiguous cursor (removal, replay
//! and the idle clock are in `lifecycle.rs`).
//!
//! A group's position is `cursor` (every seq at or below it is acked, parked or gone) plus the
//! out-of-order acks above it. The cursor is recomputed in the same transaction as every
//! change, skipping seqs retention already removed.

use std::time::SystemTime;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior};

use super::error::{SpoolError, SqlContext};
use super::store::Store;
use super::types::{
    AckOutcome, GroupState, ParkedEntry, StartAt, from_ms, get_opt_u64, get_u64, int, to_ms,
};

impl Store {
    /// Every known group with its acks above the cursor and its parked seqs.
    pub fn load_groups(&self) -> Result<Vec<GroupState>, SpoolError> {
        let names: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM groups ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .at(&self.path)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(state) = self.group_state(&name)? {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// Returns the group, creating it if unknown: `Oldest` starts before the oldest message
    /// still stored and marks the group configured (also when it already existed); `Newest`
    /// starts after `newest_seq`.
    pub fn ensure_group(&mut self, name: &str, start: StartAt) -> Result<GroupState, SpoolError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let existing: Option<bool> = tx
            .query_row(
                "SELECT configured FROM groups WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .at(path)?;
        match existing {
            None => {
                let cursor = match start {
                    StartAt::Newest => self.last_seq,
                    StartAt::Oldest => {
                        let oldest: Option<u64> = tx
                            .query_row("SELECT MIN(seq) FROM messages", [], |r| get_opt_u64(r, 0))
                            .at(path)?;
                        oldest.map_or(self.last_seq, |s| s.saturating_sub(1))
                    }
                };
                let configured = start == StartAt::Oldest;
                tx.execute(
                    "INSERT INTO groups (name, cursor, configured, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                    (name, int(cursor), configured, to_ms(SystemTime::now())),
                )
                .at(path)?;
                tracing::info!(group = name, cursor, configured, "consumer group created");
            }
            Some(false) if start == StartAt::Oldest => {
                tx.execute("UPDATE groups SET configured = 1 WHERE name = ?1", [name])
                    .at(path)?;
            }
            Some(_) => {}
        }
        tx.commit().at(path)?;
        self.group_state(name)?.ok_or_else(|| self.unknown(name))
    }

    /// The group's parked messages still in the spool, ascending.
    pub fn parked(&self, group: &str) -> Result<Vec<ParkedEntry>, SpoolError> {
        let path = self.path.as_path();
        if group_cursor(&self.conn, group).at(path)?.is_none() {
            return Err(self.unknown(group));
        }
        let rows: Vec<(u64, u32, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, deliveries, parked_at FROM parked WHERE grp = ?1 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map([group], |r| Ok((get_u64(r, 0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .at(path)?;
        rows.into_iter()
            .map(|(seq, deliveries, at)| {
                let parked_at = from_ms(at).ok_or_else(|| SpoolError::CorruptRow {
                    path: path.to_path_buf(),
                    seq,
                    detail: format!("parked_at {at} out of range"),
                })?;
                Ok(ParkedEntry {
                    seq,
                    deliveries,
                    parked_at,
                })
            })
            .collect()
    }

    /// Every group's parked seqs still in the spool, ascending (groups with none are absent).
    pub fn parked_by_group(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<u64>>, SpoolError> {
        let rows: Vec<(String, u64)> = self
            .conn
            .prepare_cached("SELECT grp, seq FROM parked ORDER BY grp, seq")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, get_u64(r, 1)?)))?
                    .collect()
            })
            .at(&self.path)?;
        let mut out = std::collections::BTreeMap::<String, Vec<u64>>::new();
        for (g, seq) in rows {
            out.entry(g).or_default().push(seq);
        }
        Ok(out)
    }

    fn group_state(&self, name: &str) -> Result<Option<GroupState>, SpoolError> {
        let path = self.path.as_path();
        let row: Option<(u64, bool, Option<i64>)> = self
            .conn
            .prepare_cached("SELECT cursor, configured, last_active FROM groups WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| Ok((get_u64(r, 0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .at(path)?;
        let Some((cursor, configured, last_active)) = row else {
            return Ok(None);
        };
        // A value no clock can hold reads as unknown: the idle clock then starts anew.
        let idle_since = last_active.and_then(from_ms);
        let seqs = |sql: &str| -> Result<Vec<u64>, SpoolError> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.query_map([name], |r| get_u64(r, 0))?.collect())
                .at(path)
        };
        Ok(Some(GroupState {
            name: name.to_string(),
            cursor,
            acked_above: seqs("SELECT seq FROM group_acks WHERE grp = ?1 ORDER BY seq")?,
            parked: seqs("SELECT seq FROM parked WHERE grp = ?1 ORDER BY seq")?,
            configured,
            idle_since,
        }))
    }

    fn unknown(&self, group: &str) -> SpoolError {
        unknown_group(&self.path, group)
    }
}

pub(super) fn unknown_group(path: &std::path::Path, group: &str) -> SpoolError {
    SpoolError::UnknownGroup {
        path: path.to_path_buf(),
        group: group.to_string(),
    }
}

/// [`Store::ack`] inside the caller's transaction (also used by the writer's combined commit).
pub(super) fn ack_in(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    group: &str,
    seqs: &[u64],
    last_seq: u64,
) -> Result<AckOutcome, SpoolError> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    let cursor = group_cursor(tx, group)
        .at(path)?
        .ok_or_else(|| unknown_group(path, group))?;
    let mut out = AckOutcome::default();
    // The common case, acks in order: a run starting just above the cursor moves the cursor
    // and needs no row per ack.
    let mut run_end = cursor;
    {
        let mut exists = tx
            .prepare_cached("SELECT 1 FROM messages WHERE seq = ?1")
            .at(path)?;
        let mut record = tx
            .prepare_cached("INSERT OR IGNORE INTO group_acks (grp, seq) VALUES (?1, ?2)")
            .at(path)?;
        let mut unpark = tx
            .prepare_cached("DELETE FROM parked WHERE grp = ?1 AND seq = ?2")
            .at(path)?;
        let any_parked: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM parked WHERE grp = ?1)")
            .and_then(|mut st| st.query_row([group], |r| r.get(0)))
            .at(path)?;
        for seq in seqs {
            if seq == 0 || seq > last_seq {
                out.unknown.push(seq);
                continue;
            }
            if seq == run_end + 1 {
                run_end = seq;
            } else if seq > cursor && exists.exists([int(seq)]).at(path)? {
                record.execute((group, int(seq))).at(path)?;
            }
            if any_parked {
                unpark.execute((group, int(seq))).at(path)?;
            }
            out.acked.push(seq);
        }
    }
    if run_end != cursor {
        tx.prepare_cached("UPDATE groups SET cursor = ?2 WHERE name = ?1")
            .and_then(|mut st| st.execute((group, int(run_end))))
            .at(path)?;
        tx.prepare_cached("DELETE FROM group_acks WHERE grp = ?1 AND seq <= ?2")
            .and_then(|mut st| st.execute((group, int(run_end))))
            .at(path)?;
    }
    out.cursor = advance_cursor(tx, group, run_end, last_seq).at(path)?;
    Ok(out)
}

/// [`Store::park`] inside the caller's transaction; false (and nothing written) when there was
/// nothing to park.
pub(super) fn park_in(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    group: &str,
    seq: u64,
    deliveries: u32,
    last_seq: u64,
) -> Result<bool, SpoolError> {
    let cursor = group_cursor(tx, group)
        .at(path)?
        .ok_or_else(|| unknown_group(path, group))?;
    let acked: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM group_acks WHERE grp = ?1 AND seq = ?2)",
            (group, int(seq)),
            |r| r.get(0),
        )
        .at(path)?;
    let present: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE seq = ?1)",
            [int(seq)],
            |r| r.get(0),
        )
        .at(path)?;
    if seq <= cursor || acked || !present {
        return Ok(false);
    }
    let now_ms = to_ms(SystemTime::now());
    tx.execute(
        "INSERT INTO parked (grp, seq, deliveries, parked_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (grp, seq) DO UPDATE SET deliveries = excluded.deliveries",
        (group, int(seq), deliveries, now_ms),
    )
    .at(path)?;
    // The history `inspect` shows: kept after an ack, a replay or the body's removal.
    tx.prepare_cached(
        "INSERT INTO parked_log (grp, seq, deliveries, parked_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute((group, int(seq), deliveries, now_ms)))
    .at(path)?;
    advance_cursor(tx, group, cursor, last_seq).at(path)?;
    Ok(true)
}

pub(super) fn group_cursor(
    conn: &rusqlite::Connection,
    group: &str,
) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT cursor FROM groups WHERE name = ?1")?
        .query_row([group], |r| get_u64(r, 0))
        .optional()
}

/// Moves the cursor to just below the first stored message the group has neither acked nor
/// parked (or to `last_seq` when there is none), drops the acks it passed, returns it.
pub(super) fn advance_cursor(
    tx: &Transaction<'_>,
    group: &str,
    cursor: u64,
    last_seq: u64,
) -> rusqlite::Result<u64> {
    let first_pending: Option<u64> = tx
        .prepare_cached(
            "SELECT m.seq FROM messages m WHERE m.seq > ?2 \
             AND NOT EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = ?1 AND a.seq = m.seq) \
             AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq) \
             ORDER BY m.seq LIMIT 1",
        )?
        .query_row((group, int(cursor)), |r| get_u64(r, 0))
        .optional()?;
    let new = first_pending
        .map_or(last_seq, |s| s.saturating_sub(1))
        .max(cursor);
    if new != cursor {
        tx.prepare_cached("UPDATE groups SET cursor = ?2 WHERE name = ?1")?
            .execute((group, int(new)))?;
        tx.prepare_cached("DELETE FROM group_acks WHERE grp = ?1 AND seq <= ?2")?
            .execute((group, int(new)))?;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::test_support::{at, fill, open_tmp, opts};

    #[test]
    fn ensure_oldest_vs_newest() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        let cfg = store.ensure_group("bot", StartAt::Oldest).expect("bot");
        assert_eq!((cfg.cursor, cfg.configured), (0, true));
        let adhoc = store.ensure_group("tail", StartAt::Newest).expect("tail");
        assert_eq!((adhoc.cursor, adhoc.configured), (3, false));
        let again = store.ensure_group("tail", StartAt::Newest).expect("again");
        assert_eq!(again, adhoc);
        let promoted = store
            .ensure_group("tail", StartAt::Oldest)
            .expect("promote");
        assert_eq!((promoted.cursor, promoted.configured), (3, true));
        let kept = store
            .ensure_group("bot", StartAt::Newest)
            .expect("bot again");
        assert_eq!((kept.cursor, kept.configured), (0, true));
        let names: Vec<String> = store
            .load_groups()
            .expect("load")
            .into_iter()
            .map(|g| g.name)
            .collect();
        assert_eq!(names, vec!["bot".to_string(), "tail".to_string()]);
    }

    #[test]
    fn oldest_starts_at_what_is_still_stored() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        store
            .enforce_retention(at(1))
            .expect("no groups: all deleted");
        fill(&mut store, 2, at(2));
        let g = store.ensure_group("bot", StartAt::Oldest).expect("bot");
        assert_eq!(g.cursor, 3);
        assert_eq!(store.read_after(g.cursor, 10).expect("backlog").len(), 2);
        store.enforce_retention(at(3)).expect("retention");
        let empty = store.ensure_group("late", StartAt::Oldest).expect("late");
        assert_eq!(empty.cursor, 3, "bot still holds 4 and 5");
    }

    #[test]
    fn acks_out_of_order_advance_only_when_contiguous() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 5, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        let out = store.ack("g", &[3, 2]).expect("ack");
        assert_eq!((out.acked.clone(), out.cursor), (vec![2, 3], 0));
        let state = store.ensure_group("g", StartAt::Oldest).expect("state");
        assert_eq!(state.acked_above, vec![2, 3]);
        assert_eq!(store.ack("g", &[1]).expect("ack").cursor, 3);
        assert_eq!(store.ack("g", &[5]).expect("ack").cursor, 3);
        let out = store.ack("g", &[4]).expect("ack");
        assert_eq!(out.cursor, 5);
        let state = store.load_groups().expect("load").remove(0);
        assert!(state.acked_above.is_empty());
    }

    #[test]
    fn acks_are_idempotent_and_unknown_seqs_reported() {
        let (dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        let first = store.ack("g", &[2, 2]).expect("ack");
        let second = store.ack("g", &[2]).expect("ack again");
        assert_eq!(first, second);
        assert_eq!(first.acked, vec![2]);
        store.ack("g", &[1]).expect("ack 1");
        let out = store.ack("g", &[1, 0, 4, 99]).expect("mixed");
        assert_eq!(out.acked, vec![1]);
        assert_eq!(out.unknown, vec![0, 4, 99]);
        assert_eq!(out.cursor, 2);
        let err = store.ack("nope", &[1]).expect_err("unknown group");
        assert!(matches!(err, SpoolError::UnknownGroup { .. }), "{err:?}");
        drop(store);
        let store = Store::open(dir.path(), opts()).expect("reopen");
        let g = store.load_groups().expect("load").remove(0);
        assert_eq!((g.cursor, g.acked_above, g.configured), (2, vec![], true));
    }

    #[test]
    fn re_ack_after_retention_deleted_the_message_is_still_acked() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        store.ensure_group("a", StartAt::Oldest).expect("a");
        store.ensure_group("b", StartAt::Oldest).expect("b");
        store.ack("a", &[3]).expect("a");
        store.ack("b", &[1, 2, 3]).expect("b");
        assert_eq!(
            store.enforce_retention(at(1)).expect("ret").deleted_acked,
            1
        );
        let out = store.ack("a", &[3]).expect("re-ack");
        assert_eq!((out.acked, out.unknown, out.cursor), (vec![3], vec![], 0));
        assert_eq!(store.ack("a", &[1, 2]).expect("rest").cursor, 3);
    }

    #[test]
    fn park_counts_as_done_but_is_kept_and_listed() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        assert!(store.park("g", 1, 10).expect("park"));
        assert!(!store.park("g", 1, 11).expect("below cursor"));
        assert!(!store.park("g", 42, 10).expect("never stored"));
        store.ack("g", &[3]).expect("ack 3");
        assert!(!store.park("g", 3, 10).expect("already acked"));
        let out = store.ack("g", &[2]).expect("ack 2");
        assert_eq!(out.cursor, 3);
        let parked = store.parked("g").expect("parked");
        assert_eq!(parked.len(), 1);
        assert_eq!((parked[0].seq, parked[0].deliveries), (1, 10));
        let report = store.enforce_retention(at(1)).expect("retention");
        assert_eq!(report.deleted_acked, 2, "the parked message stays");
        assert_eq!(store.read_after(0, 10).expect("read").len(), 1);
        let state = store.load_groups().expect("load").remove(0);
        assert_eq!(state.parked, vec![1]);
        assert_eq!(store.stats().expect("stats").parked, 1);
        store.ack("g", &[1]).expect("late ack unparks");
        assert!(store.parked("g").expect("parked").is_empty());
        assert_eq!(
            store.enforce_retention(at(2)).expect("ret").deleted_acked,
            1
        );
        assert!(store.parked("nope").is_err());
    }
}
