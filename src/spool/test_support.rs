//! Helpers shared by the spool's unit tests: temporary stores, messages, a fixed clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{NewMessage, Store, StoreOptions};

/// A fixed "now" for tests, plus `secs`.
pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_769_000_000 + secs)
}

/// Options with no bounds and a 1 h dedupe window.
pub(crate) fn opts() -> StoreOptions {
    StoreOptions {
        max_bytes: 0,
        max_age: Duration::ZERO,
        dedupe_window: Duration::from_secs(3600),
        // Most tests read bodies back without creating a group first.
        bodies_without_groups: true,
    }
}

pub(crate) fn open_tmp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    (dir, store)
}

/// A message with the given dedupe keys and a body naming `tag`.
pub(crate) fn msg(tag: &str, keys: &[&str]) -> NewMessage {
    NewMessage {
        dedupe_keys: keys.iter().map(|k| k.to_string()).collect(),
        body: format!(r#"{{"type":"CALLBACK","topic":"/t","data":{{"tag":"{tag}"}}}}"#),
        topic: "/t".into(),
        ..Default::default()
    }
}

/// Appends `n` key-less messages at `now`; returns their seqs.
pub(crate) fn fill(store: &mut Store, n: usize, now: SystemTime) -> Vec<u64> {
    let batch: Vec<NewMessage> = (0..n).map(|i| msg(&i.to_string(), &[])).collect();
    store
        .append_batch(&batch, now)
        .expect("append")
        .iter()
        .map(|a| a.seq())
        .collect()
}

/// Asserts the running totals in `meta` match a full recount.
pub(crate) fn assert_accounting(store: &Store) {
    let stats = store.stats().expect("stats");
    let (bytes, messages, receipts) = store.recount();
    assert_eq!(
        (stats.bytes, stats.messages, stats.receipts),
        (bytes, messages, receipts),
        "running totals drifted from a recount"
    );
}
