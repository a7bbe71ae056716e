//! A consumer group's life on disk beyond acks: its idle clock (`groups.last_active`, from
//! which an ad-hoc group expires), its removal (which releases its backlog: retention may then
//! delete what only it held back), and replays (messages it had done become owed again).

use std::collections::BTreeMap;
use std::time::SystemTime;

use rusqlite::{Transaction, TransactionBehavior};

use super::error::{SpoolError, SqlContext};
use super::groups::{advance_cursor, group_cursor, unknown_group};
use super::reader;
use super::store::Store;
use super::types::{Released, Replay, Replayed, get_u64, int, to_ms};

/// Messages after the cursor (?2) that group ?1 has neither acked nor parked.
const OWED: &str = "SELECT COUNT(*) FROM messages m WHERE m.seq > ?2 \
     AND NOT EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = ?1 AND a.seq = m.seq) \
     AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq)";

impl Store {
    /// Records each group's idle clock in one transaction: `Some(t)`, it has had no member
    /// since `t`; `None`, a member is connected. Unknown groups are skipped.
    pub fn set_idle(
        &mut self,
        idle: &BTreeMap<String, Option<SystemTime>>,
    ) -> Result<(), SpoolError> {
        if idle.is_empty() {
            return Ok(());
        }
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        {
            let mut st = tx
                .prepare_cached("UPDATE groups SET last_active = ?2 WHERE name = ?1")
                .at(path)?;
            for (group, since) in idle {
                st.execute((group, since.map(to_ms))).at(path)?;
            }
        }
        tx.commit().at(path)
    }

    /// Forgets a group with its acks and parked entries, so it no longer holds messages back.
    /// Returns what it released, `None` when the spool does not know it.
    pub fn remove_group(&mut self, name: &str) -> Result<Option<Released>, SpoolError> {
        let path = self.path.as_path();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let Some(cursor) = group_cursor(&tx, name).at(path)? else {
            return Ok(None);
        };
        let backlog: u64 = tx
            .prepare_cached(OWED)
            .and_then(|mut s| s.query_row((name, int(cursor)), |r| get_u64(r, 0)))
            .at(path)?;
        tx.execute("DELETE FROM group_acks WHERE grp = ?1", [name])
            .at(path)?;
        let parked = tx
            .execute("DELETE FROM parked WHERE grp = ?1", [name])
            .at(path)?;
        tx.execute("DELETE FROM groups WHERE name = ?1", [name])
            .at(path)?;
        tx.commit().at(path)?;
        Ok(Some(Released {
            backlog,
            parked: parked as u64,
        }))
    }

    /// Makes messages `group` had done (acked or parked) owed again: its parked messages, or
    /// every message from a seq on that is still in the spool. Their parked entries go; the
    /// cursor moves back below the first of them (what lies between stays done).
    pub fn replay(&mut self, group: &str, what: Replay) -> Result<Replayed, SpoolError> {
        let path = self.path.as_path();
        let last_seq = self.last_seq;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let cursor = group_cursor(&tx, group)
            .at(path)?
            .ok_or_else(|| unknown_group(path, group))?;
        let mut out = match what {
            Replay::From(seq) => replay_from(&tx, group, cursor, seq.max(1)).at(path)?,
            Replay::Parked => replay_parked(&tx, path, group, cursor)?,
        };
        out.cursor = advance_cursor(&tx, group, out.cursor, last_seq).at(path)?;
        tx.commit().at(path)?;
        Ok(out)
    }
}

/// [`Store::replay`] of every stored message from `from` on.
fn replay_from(
    tx: &Transaction<'_>,
    group: &str,
    cursor: u64,
    from: u64,
) -> rusqlite::Result<Replayed> {
    let count: u64 = tx.query_row(
        "SELECT COUNT(*) FROM messages m WHERE m.seq >= ?2 AND (m.seq <= ?3 \
         OR EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = ?1 AND a.seq = m.seq) \
         OR EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq))",
        (group, int(from), int(cursor)),
        |r| get_u64(r, 0),
    )?;
    tx.execute(
        "DELETE FROM group_acks WHERE grp = ?1 AND seq >= ?2",
        (group, int(from)),
    )?;
    tx.execute(
        "DELETE FROM parked WHERE grp = ?1 AND seq >= ?2",
        (group, int(from)),
    )?;
    let new = cursor.min(from - 1);
    tx.execute(
        "UPDATE groups SET cursor = ?2 WHERE name = ?1",
        (group, int(new)),
    )?;
    Ok(Replayed {
        count,
        messages: Vec::new(),
        cursor: new,
    })
}

/// [`Store::replay`] of the group's parked messages.
fn replay_parked(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    group: &str,
    cursor: u64,
) -> Result<Replayed, SpoolError> {
    let seqs: Vec<u64> = tx
        .prepare_cached(
            "SELECT p.seq FROM parked p WHERE p.grp = ?1 \
             AND EXISTS (SELECT 1 FROM messages m WHERE m.seq = p.seq) ORDER BY p.seq",
        )
        .and_then(|mut s| s.query_map([group], |r| get_u64(r, 0))?.collect())
        .at(path)?;
    let mut new = cursor;
    if let Some(&low) = seqs.first()
        && low <= cursor
    {
        // The cursor goes back below the first parked message; what lies between stays done.
        new = low - 1;
        tx.execute(
            "INSERT OR IGNORE INTO group_acks (grp, seq) SELECT ?1, m.seq FROM messages m \
             WHERE m.seq > ?2 AND m.seq <= ?3 \
             AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq)",
            (group, int(new), int(cursor)),
        )
        .at(path)?;
        tx.execute(
            "UPDATE groups SET cursor = ?2 WHERE name = ?1",
            (group, int(new)),
        )
        .at(path)?;
    }
    tx.execute("DELETE FROM parked WHERE grp = ?1", [group])
        .at(path)?;
    let mut messages = Vec::with_capacity(seqs.len());
    for seq in &seqs {
        if let Some(m) = reader::read_one(tx, path, *seq)? {
            messages.push(m);
        }
    }
    Ok(Replayed {
        count: seqs.len() as u64,
        messages,
        cursor: new,
    })
}

/// The idle clock of `group` as stored, for tests.
#[cfg(test)]
pub(crate) fn last_active(store: &Store, group: &str) -> Option<i64> {
    use rusqlite::OptionalExtension;
    store
        .conn
        .query_row(
            "SELECT last_active FROM groups WHERE name = ?1",
            [group],
            |r| r.get(0),
        )
        .optional()
        .expect("query")
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::StartAt;
    use crate::spool::test_support::{at, fill, open_tmp};

    #[test]
    fn remove_group_releases_its_messages_and_says_how_many() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 4, at(0));
        store.ensure_group("gone", StartAt::Oldest).expect("g");
        store.ack("gone", &[2]).expect("ack");
        assert!(store.park("gone", 3, 5).expect("park"));
        assert_eq!(
            store.enforce_retention(at(1)).expect("ret").deleted_acked,
            1,
            "only 2, acked"
        );
        let released = store.remove_group("gone").expect("remove");
        assert_eq!(
            released,
            Some(Released {
                backlog: 2,
                parked: 1
            }),
            "1 and 4 were owed, 3 parked"
        );
        assert_eq!(store.remove_group("gone").expect("again"), None);
        assert_eq!(
            store.enforce_retention(at(2)).expect("ret").deleted_acked,
            3,
            "nobody holds 1, 3 and 4 any more"
        );
        assert!(store.load_groups().expect("groups").is_empty());
    }

    #[test]
    fn idle_clock_is_stored_and_read_back() {
        let (_dir, mut store) = open_tmp();
        let g = store.ensure_group("g", StartAt::Newest).expect("g");
        assert_eq!(g.idle_since, None);
        let t = at(5);
        store
            .set_idle(&BTreeMap::from([
                ("g".to_string(), Some(t)),
                ("unknown".to_string(), Some(t)),
            ]))
            .expect("set");
        assert_eq!(last_active(&store, "g"), Some(to_ms(t)));
        assert_eq!(store.load_groups().expect("load")[0].idle_since, Some(t));
        store
            .set_idle(&BTreeMap::from([("g".to_string(), None)]))
            .expect("member back");
        assert_eq!(store.load_groups().expect("load")[0].idle_since, None);
    }

    #[test]
    fn replay_from_reopens_what_was_done_and_keeps_what_is_gone() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 6, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        store.ensure_group("other", StartAt::Oldest).expect("other");
        store.ack("g", &[1, 2, 3, 5]).expect("ack");
        assert!(store.park("g", 4, 3).expect("park"));
        assert_eq!(store.load_groups().expect("load")[0].cursor, 5);
        let r = store.replay("g", Replay::From(3)).expect("replay");
        assert_eq!((r.count, r.cursor), (3, 2), "3, 4 (parked) and 5 again");
        assert!(r.messages.is_empty());
        let g = store.load_groups().expect("load").remove(0);
        assert_eq!((g.cursor, g.acked_above, g.parked), (2, vec![], vec![]));
        assert_eq!(
            store.replay("g", Replay::From(99)).expect("nothing").count,
            0
        );
        assert!(matches!(
            store.replay("nope", Replay::From(1)),
            Err(SpoolError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn replay_parked_below_the_cursor_keeps_the_rest_done() {
        let (_dir, mut store) = open_tmp();
        fill(&mut store, 5, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        store.ensure_group("other", StartAt::Oldest).expect("other");
        assert!(store.park("g", 2, 10).expect("park"));
        store.ack("g", &[1, 3, 4]).expect("ack");
        assert_eq!(store.load_groups().expect("load")[0].cursor, 4);
        let r = store.replay("g", Replay::Parked).expect("replay");
        assert_eq!((r.count, r.cursor), (1, 1));
        assert_eq!(
            r.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![2]
        );
        let g = store.load_groups().expect("load").remove(0);
        assert_eq!((g.cursor, g.acked_above, g.parked), (1, vec![3, 4], vec![]));
        store.ack("g", &[2]).expect("ack the replayed one");
        assert_eq!(store.load_groups().expect("load")[0].cursor, 4);
        let again = store.replay("g", Replay::Parked).expect("none left");
        assert_eq!((again.count, again.messages.len()), (0, 0));
    }

    #[test]
    fn backlog_is_what_the_group_owes_bounded_by_count_and_bytes() {
        let (dir, mut store) = open_tmp();
        fill(&mut store, 5, at(0));
        store.ensure_group("g", StartAt::Oldest).expect("g");
        store.ack("g", &[1, 3]).expect("ack");
        assert!(store.park("g", 4, 2).expect("park"));
        let reader = crate::spool::Reader::open(dir.path()).expect("reader");
        let b = reader
            .backlog("g", 10, usize::MAX)
            .expect("read")
            .expect("known");
        let seqs: Vec<u64> = b.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            (b.cursor, b.total, seqs),
            (1, 2, vec![2, 5]),
            "not 3 (acked), 4 (parked)"
        );
        let b = reader
            .backlog("g", 1, usize::MAX)
            .expect("read")
            .expect("known");
        assert_eq!((b.total, b.messages.len()), (2, 1));
        let one = b.messages[0].body.len();
        let b = reader.backlog("g", 10, one).expect("read").expect("known");
        assert_eq!(b.messages.len(), 1, "the second would pass max_bytes");
        assert_eq!(reader.backlog("nope", 10, usize::MAX).expect("read"), None);
    }
}
