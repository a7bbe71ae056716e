//! Appending a batch inside the commit's transaction: seqs, receipts, and dedupe against the
//! in-memory window ([`DedupeIndex`]).
//!
//! One transaction (one fsync) per batch. The seq counter moves only after the commit
//! succeeded, so a failed batch (disk full) leaves no trace and can be retried as is; seqs are
//! therefore dense and never reused. A hash hit in the index is confirmed against the keys
//! stored in the original's receipt (or, within the batch, in memory) before a message counts
//! as a redelivery.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{OptionalExtension, Transaction};

use super::dedupe::{DedupeIndex, key_hash};
use super::error::{SpoolError, SqlContext};
use super::types::{Appended, NewMessage, int, len_u64, message_cost, receipt_cost, to_ms};

/// A jump in seqs larger than this starts the in-memory window over (never happens in use:
/// seqs are dense).
const MAX_SEQ_GAP: u64 = 1 << 20;

/// What [`append_in`] did; the caller applies `last_seq` and `added_bytes` after its commit.
pub(super) struct AppendDone {
    pub(super) outcomes: Vec<Appended>,
    pub(super) last_seq: u64,
    pub(super) added_bytes: u64,
}

/// A message's dedupe keys as a receipt stores them: each `<byte length>:<key>`.
pub(super) fn encode_keys(keys: &[String]) -> String {
    let mut out = String::with_capacity(keys.iter().map(|k| k.len() + 4).sum());
    for k in keys.iter().filter(|k| !k.is_empty()) {
        out.push_str(itoa::Buffer::new().format(k.len()));
        out.push(':');
        out.push_str(k);
    }
    out
}

/// The keys of an encoded receipt (`None` for a damaged one).
pub(super) fn decode_keys(mut text: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    while !text.is_empty() {
        let colon = text.find(':')?;
        let len: usize = text[..colon].parse().ok()?;
        let key = text.get(colon + 1..colon + 1 + len)?;
        out.push(key);
        text = &text[colon + 1 + len..];
    }
    Some(out)
}

/// The distinct non-empty keys of a message with their hashes.
fn hashed(keys: &[String]) -> Vec<(&str, u64)> {
    let mut out: Vec<(&str, u64)> = Vec::with_capacity(keys.len());
    for k in keys.iter().map(String::as_str).filter(|k| !k.is_empty()) {
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k, key_hash(k)));
        }
    }
    out
}

/// [`Store::append_batch`](super::Store::append_batch) inside the caller's transaction. The
/// new messages are added to `index` as they are stored (so a redelivery later in the same
/// batch is folded); on error the caller takes them out again.
///
/// With `bodies` false (no consumer group exists, so nobody could ever read a body back) only
/// the receipts are written: taps get the message from memory, and dedupe and `inspect` work
/// from the receipts.
#[allow(clippy::too_many_arguments)]
pub(super) fn append_in(
    tx: &Transaction<'_>,
    path: &Path,
    window: Duration,
    index: &mut DedupeIndex,
    last_seq: u64,
    batch: &[NewMessage],
    bodies: bool,
    now: SystemTime,
) -> Result<AppendDone, SpoolError> {
    let now_ms = to_ms(now);
    let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(batch.len());
    let mut seq = last_seq;
    let (mut add_bytes, mut add_msgs, mut add_receipts) = (0u64, 0u64, 0u64);
    {
        let mut stored_keys = tx
            .prepare_cached("SELECT keys FROM receipts WHERE seq = ?1")
            .at(path)?;
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO messages (seq, stored_at, size, topic, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .at(path)?;
        let mut receipt = tx
            .prepare_cached(
                "INSERT INTO receipts (seq, received_at, keys, topic, origin, lag_ms, size, \
                 body_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .at(path)?;
        for msg in batch {
            let keys = hashed(&msg.dedupe_keys);
            // A candidate from the index is the original only if it really has the key.
            let mut duplicate_of = None;
            'keys: for &(key, hash) in &keys {
                for cand in index.candidates(hash) {
                    // Past the window (retention has not run since): a new message.
                    let at = index.stored_at(cand).unwrap_or(0);
                    if u64::from(now_s.saturating_sub(at)) >= window.as_secs().max(1) {
                        continue;
                    }
                    let confirmed = if cand > last_seq {
                        // Stored earlier in this batch: its keys are in memory.
                        let earlier = usize::try_from(cand - last_seq - 1)
                            .ok()
                            .and_then(|n| stored_in_batch(batch, &out, n));
                        earlier.is_some_and(|m| m.dedupe_keys.iter().any(|k| k == key))
                    } else {
                        let text: Option<String> = stored_keys
                            .query_row([int(cand)], |r| r.get(0))
                            .optional()
                            .at(path)?;
                        text.as_deref()
                            .and_then(decode_keys)
                            .is_some_and(|ks| ks.contains(&key))
                    };
                    if confirmed {
                        duplicate_of = Some(cand);
                        break 'keys;
                    }
                }
            }
            if let Some(orig) = duplicate_of {
                out.push(Appended::Duplicate { seq: orig });
                continue;
            }
            seq += 1;
            if bodies {
                let size = message_cost(&msg.topic, &msg.body);
                insert
                    .execute((int(seq), now_ms, int(size), &msg.topic, &msg.body))
                    .at(path)?;
                add_msgs += 1;
                add_bytes += size;
            }
            let encoded = encode_keys(&msg.dedupe_keys);
            let rsize = receipt_cost(&encoded, &msg.topic);
            receipt
                .execute((
                    int(seq),
                    now_ms,
                    &encoded,
                    &msg.topic,
                    int(msg.origin),
                    msg.lag_ms,
                    int(rsize),
                    int(len_u64(&msg.body)),
                ))
                .at(path)?;
            add_receipts += 1;
            add_bytes += rsize;
            let hashes: Vec<u64> = keys.iter().map(|(_, h)| *h).collect();
            index.insert(seq, &hashes, now_s, MAX_SEQ_GAP);
            out.push(Appended::Stored { seq });
        }
    }
    if add_receipts > 0 {
        tx.prepare_cached(
            "UPDATE meta SET last_seq = ?1, bytes = bytes + ?2, messages = messages + ?3, \
             receipts = receipts + ?4 WHERE id = 1",
        )
        .and_then(|mut s| s.execute((int(seq), int(add_bytes), int(add_msgs), int(add_receipts))))
        .at(path)?;
    }
    Ok(AppendDone {
        outcomes: out,
        last_seq: seq,
        added_bytes: add_bytes,
    })
}

/// The `n`-th message stored so far in this batch (0-based), from the outcomes in order.
fn stored_in_batch<'b>(
    batch: &'b [NewMessage],
    outcomes: &[Appended],
    n: usize,
) -> Option<&'b NewMessage> {
    outcomes
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Appended::Stored { .. }))
        .nth(n)
        .and_then(|(i, _)| batch.get(i))
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
        assert_eq!(store.stats().expect("stats").dedupe_keys, 2);
        store.enforce_retention(at(3601)).expect("retention");
        assert_eq!(
            store.stats().expect("stats").dedupe_keys,
            1,
            "the expired key left the window at the next retention pass"
        );
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
    fn without_a_group_only_receipts_are_written() {
        let (_dir, mut store) = open_tmp();
        store.set_options(StoreOptions {
            bodies_without_groups: false,
            ..opts()
        });
        let out = store
            .append_batch(&[msg("a", &["m:1"]), msg("b", &["m:2"])], at(0))
            .expect("append");
        assert_eq!(
            out,
            vec![Appended::Stored { seq: 1 }, Appended::Stored { seq: 2 }]
        );
        let stats = store.stats().expect("stats");
        assert_eq!((stats.messages, stats.receipts), (0, 2));
        assert!(store.read_one(1).expect("read").is_none(), "no body kept");
        // Dedupe works from the receipts, across a reopen too.
        let again = store
            .append_batch(&[msg("a", &["m:1"])], at(1))
            .expect("again");
        assert_eq!(again, vec![Appended::Duplicate { seq: 1 }]);
        assert_accounting(&store);
        // Once a group exists, bodies are kept for it.
        store
            .ensure_group("g", crate::spool::StartAt::Newest)
            .expect("group");
        store.append_batch(&[msg("c", &["m:3"])], at(2)).expect("c");
        assert_eq!(store.read_one(3).expect("read").map(|m| m.seq), Some(3));
        assert_eq!(store.stats().expect("stats").messages, 1);
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
                ..Default::default()
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
