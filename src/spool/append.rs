//! Appending a batch inside the commit's transaction: seqs and persisted dedupe.
//!
//! One transaction (one fsync) per batch. The seq counter moves only after the commit
//! succeeded, so a failed batch (disk full) leaves no trace and can be retried as is; seqs are
//! therefore dense and never reused.

use std::collections::HashMap;
use std::time::SystemTime;

use std::path::Path;

use rusqlite::{OptionalExtension, Transaction};

use super::error::{SpoolError, SqlContext};
use super::types::{
    Appended, NewMessage, StoreOptions, duration_ms, get_u64, int, key_cost, len_u64, message_cost,
    to_ms,
};

/// What [`append_in`] did; the caller applies `last_seq` and `added_bytes` after its commit.
pub(super) struct AppendDone {
    pub(super) outcomes: Vec<Appended>,
    pub(super) last_seq: u64,
    pub(super) added_bytes: u64,
}

/// [`Store::append_batch`] inside the caller's transaction.
pub(super) fn append_in(
    tx: &Transaction<'_>,
    path: &Path,
    opts: &StoreOptions,
    last_seq: u64,
    batch: &[NewMessage],
    now: SystemTime,
) -> Result<AppendDone, SpoolError> {
    let now_ms = to_ms(now);
    let keep_keys = !opts.dedupe_window.is_zero();
    let expires = now_ms.saturating_add(duration_ms(opts.dedupe_window));
    let mut out = Vec::with_capacity(batch.len());
    let mut in_batch: HashMap<&str, u64> = HashMap::new();
    let mut seq = last_seq;
    let (mut add_bytes, mut add_msgs, mut add_keys) = (0u64, 0u64, 0u64);
    {
        let mut lookup = tx
            .prepare_cached("SELECT seq, expires_at FROM dedupe WHERE key = ?1")
            .at(path)?;
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO messages (seq, stored_at, size, topic, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .at(path)?;
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO dedupe (key, seq, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, \
                 expires_at = excluded.expires_at",
            )
            .at(path)?;
        let mut fresh: Vec<(&str, bool)> = Vec::new();
        for msg in batch {
            fresh.clear();
            let mut duplicate_of = None;
            for key in msg.dedupe_keys.iter().map(String::as_str) {
                if key.is_empty() || fresh.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                if let Some(&orig) = in_batch.get(key) {
                    duplicate_of = Some(orig);
                    break;
                }
                let row: Option<(u64, i64)> = lookup
                    .query_row([key], |r| Ok((get_u64(r, 0)?, r.get(1)?)))
                    .optional()
                    .at(path)?;
                match row {
                    Some((orig, exp)) if exp > now_ms => {
                        duplicate_of = Some(orig);
                        break;
                    }
                    Some(_) => fresh.push((key, true)),
                    None => fresh.push((key, false)),
                }
            }
            if let Some(orig) = duplicate_of {
                out.push(Appended::Duplicate { seq: orig });
                continue;
            }
            seq += 1;
            let size = message_cost(&msg.topic, &msg.body);
            insert
                .execute((int(seq), now_ms, int(size), &msg.topic, &msg.body))
                .at(path)?;
            add_msgs += 1;
            add_bytes += size;
            if keep_keys {
                for &(key, expired_row) in &fresh {
                    upsert.execute((key, int(seq), expires)).at(path)?;
                    if !expired_row {
                        add_keys += 1;
                        add_bytes += key_cost(len_u64(key));
                    }
                }
            }
            for &(key, _) in &fresh {
                in_batch.insert(key, seq);
            }
            out.push(Appended::Stored { seq });
        }
    }
    if add_msgs > 0 {
        tx.prepare_cached(
            "UPDATE meta SET last_seq = ?1, bytes = bytes + ?2, messages = messages + ?3, \
             dedupe_keys = dedupe_keys + ?4 WHERE id = 1",
        )
        .and_then(|mut s| s.execute((int(seq), int(add_bytes), int(add_msgs), int(add_keys))))
        .at(path)?;
    }
    Ok(AppendDone {
        outcomes: out,
        last_seq: seq,
        added_bytes: add_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spool::Store;
    use crate::spool::StoreOptions;
    use crate::spool::test_support::{assert_accounting, at, msg, open_tmp, opts};

    fn seqs(out: &[Appended]) -> Vec<u64> {
        out.iter().map(Appended::seq).collect()
    }

    #[test]
    fn append_and_read_back() {
        let (_dir, mut store) = open_tmp();
        let out = store
            .append_batch(&[msg("a", &["m:1"]), msg("b", &["m:2"])], at(0))
            .expect("append");
        assert_eq!(
            out,
            vec![Appended::Stored { seq: 1 }, Appended::Stored { seq: 2 }]
        );
        let all = store.read_after(0, 10).expect("read");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].seq, 1);
        assert_eq!(all[0].body, msg("a", &[]).body);
        assert_eq!(all[0].topic, "/t");
        assert_eq!(all[0].stored_at, at(0));
        assert_eq!(store.read_after(1, 10).expect("read")[0].seq, 2);
        assert_eq!(store.read_after(0, 1).expect("read").len(), 1);
        assert_eq!(store.read_one(2).expect("one").map(|m| m.seq), Some(2));
        assert_eq!(store.read_one(3).expect("one"), None);
        assert_eq!(store.newest_seq().expect("newest"), 2);
        assert!(store.append_batch(&[], at(0)).expect("empty").is_empty());
        assert_accounting(&store);
    }

    #[test]
    fn dedupe_by_each_key_kind_within_a_batch() {
        let (_dir, mut store) = open_tmp();
        let batch = [
            msg("orig", &["m:A", "b:X"]),
            msg("same messageId", &["m:A", "b:Y"]),
            msg("same msgId", &["m:B", "b:X"]),
            msg("event", &["m:C", "e:E"]),
            msg("same eventId", &["m:D", "e:E"]),
            msg("no keys", &[]),
            msg("no keys again", &[]),
        ];
        let out = store.append_batch(&batch, at(0)).expect("append");
        assert_eq!(
            out,
            vec![
                Appended::Stored { seq: 1 },
                Appended::Duplicate { seq: 1 },
                Appended::Duplicate { seq: 1 },
                Appended::Stored { seq: 2 },
                Appended::Duplicate { seq: 2 },
                Appended::Stored { seq: 3 },
                Appended::Stored { seq: 4 },
            ]
        );
        assert_eq!(store.stats().expect("stats").dedupe_keys, 4);
        assert_accounting(&store);
    }

    #[test]
    fn dedupe_persists_across_batches_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = Store::open(dir.path(), opts()).expect("open");
            store
                .append_batch(&[msg("a", &["m:1", "b:x"]), msg("e", &["e:9"])], at(0))
                .expect("append");
            let again = store
                .append_batch(&[msg("a2", &["m:1"])], at(10))
                .expect("append");
            assert_eq!(again, vec![Appended::Duplicate { seq: 1 }]);
        }
        let mut store = Store::open(dir.path(), opts()).expect("reopen");
        let out = store
            .append_batch(
                &[
                    msg("r1", &["m:7", "b:x"]),
                    msg("r2", &["e:9"]),
                    msg("new", &["m:8"]),
                ],
                at(60),
            )
            .expect("append");
        assert_eq!(
            out,
            vec![
                Appended::Duplicate { seq: 1 },
                Appended::Duplicate { seq: 2 },
                Appended::Stored { seq: 3 },
            ]
        );
        assert_eq!(store.stats().expect("stats").messages, 3);
        assert_accounting(&store);
    }

    #[test]
    fn dedupe_window_expires() {
        let (_dir, mut store) = open_tmp();
        store.append_batch(&[msg("a", &["m:1"])], at(0)).expect("a");
        let inside = store
            .append_batch(&[msg("b", &["m:1"])], at(3599))
            .expect("b");
        assert_eq!(inside, vec![Appended::Duplicate { seq: 1 }]);
        let after = store
            .append_batch(&[msg("c", &["m:1"])], at(3600))
            .expect("c");
        assert_eq!(after, vec![Appended::Stored { seq: 2 }]);
        let stats = store.stats().expect("stats");
        assert_eq!(stats.dedupe_keys, 1, "the expired key row is reused");
        assert_accounting(&store);
        let again = store
            .append_batch(&[msg("d", &["m:1"])], at(3700))
            .expect("d");
        assert_eq!(again, vec![Appended::Duplicate { seq: 2 }]);
    }

    #[test]
    fn zero_window_folds_only_within_a_batch() {
        let (_dir, mut store) = open_tmp();
        store.set_options(StoreOptions {
            dedupe_window: Duration::ZERO,
            ..opts()
        });
        let out = store
            .append_batch(&[msg("a", &["m:1"]), msg("b", &["m:1"])], at(0))
            .expect("append");
        assert_eq!(seqs(&out), vec![1, 1]);
        let out = store.append_batch(&[msg("c", &["m:1"])], at(0)).expect("c");
        assert_eq!(out, vec![Appended::Stored { seq: 2 }]);
        assert_eq!(store.stats().expect("stats").dedupe_keys, 0);
        assert_accounting(&store);
    }

    #[test]
    fn duplicate_of_a_deleted_message_still_dedupes() {
        let (_dir, mut store) = open_tmp();
        store.append_batch(&[msg("a", &["m:1"])], at(0)).expect("a");
        let report = store.enforce_retention(at(1)).expect("retention");
        assert_eq!(report.deleted_acked, 1, "no group: deletable at once");
        let out = store
            .append_batch(&[msg("a", &["m:1"])], at(2))
            .expect("again");
        assert_eq!(out, vec![Appended::Duplicate { seq: 1 }]);
        assert_accounting(&store);
    }

    #[test]
    fn disk_full_rolls_back_and_the_same_batch_succeeds_later() {
        let (_dir, mut store) = open_tmp();
        store.append_batch(&[msg("a", &["m:0"])], at(0)).expect("a");
        let before = store.stats().expect("stats");
        store.set_max_page_count_for_test(1).expect("cap");
        let big = "x".repeat(4000);
        let batch: Vec<NewMessage> = (0..50)
            .map(|i| NewMessage {
                dedupe_keys: vec![format!("m:big{i}")],
                body: big.clone(),
                topic: "/t".into(),
            })
            .collect();
        let err = store.append_batch(&batch, at(1)).expect_err("must be full");
        assert!(err.is_disk_full(), "{err:?}");
        assert!(!err.is_fatal_at_start());
        assert!(err.to_string().contains("spool.db"), "{err}");
        assert_eq!(store.newest_seq().expect("newest"), 1);
        let mut after = store.stats().expect("stats");
        after.file_bytes = before.file_bytes;
        assert_eq!(after, before, "nothing half-written");
        store.set_max_page_count_for_test(1 << 30).expect("uncap");
        let out = store.append_batch(&batch, at(2)).expect("retry succeeds");
        assert_eq!(seqs(&out), (2..52).collect::<Vec<_>>());
        assert_accounting(&store);
    }
}
