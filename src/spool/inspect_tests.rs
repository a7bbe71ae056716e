use std::time::{Duration, SystemTime};

use super::*;
use crate::spool::test_support::{msg, opts};
use crate::spool::{NewMessage, StartAt, Store, StoreOptions};

/// A bot message as the relay stores it: its three kinds of keys, connection 3, 120 ms late.
fn bot(tag: &str) -> NewMessage {
    NewMessage {
        dedupe_keys: vec![
            format!("mid:m-{tag}"),
            format!("msg:/v1.0/im/bot/messages/get:b-{tag}"),
        ],
        topic: "/v1.0/im/bot/messages/get".into(),
        origin: 3,
        lag_ms: Some(120),
        ..msg(tag, &[])
    }
}

fn event(tag: &str) -> NewMessage {
    NewMessage {
        dedupe_keys: vec![format!("mid:m-{tag}"), format!("evt:e-{tag}")],
        topic: "user_add_org".into(),
        origin: 4,
        ..msg(tag, &[])
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), opts()).expect("open")
}

fn one(i: &Inspector, lookup: Lookup) -> Receipt {
    let found = i.find(&lookup).expect("find");
    assert_eq!(found.receipts.len(), 1, "{lookup:?}: {found:?}");
    found.receipts.into_iter().next().expect("one")
}

fn fate<'a>(r: &'a Receipt, group: &str) -> &'a GroupFate {
    r.groups
        .iter()
        .find(|g| g.group == group)
        .unwrap_or_else(|| panic!("no group {group} in {r:?}"))
}

#[test]
fn a_message_is_found_by_seq_and_by_each_of_its_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    let now = SystemTime::now();
    store
        .append_batch(&[bot("1"), event("2")], now)
        .expect("append");
    let i = Inspector::open(dir.path()).expect("inspector");
    assert!(!i.immutable, "the daemon's WAL is read while it runs");

    let r = one(&i, Lookup::Seq(1));
    assert_eq!((r.seq, r.origin, r.lag_ms), (1, 3, Some(120)));
    assert_eq!(
        r.received_at,
        from_ms(crate::spool::types::to_ms(now)).expect("ms")
    );
    assert_eq!(r.topic, "/v1.0/im/bot/messages/get");
    assert_eq!(r.body_size, Some(msg("1", &[]).body.len() as u64));
    assert!(r.body_stored && r.forced_out_at.is_none());
    assert_eq!(r.keys, vec!["mid:m-1", "msg:/v1.0/im/bot/messages/get:b-1"]);
    for id in ["m-1", "b-1", "mid:m-1", "msg:/v1.0/im/bot/messages/get:b-1"] {
        assert_eq!(one(&i, Lookup::Id(id.into())).seq, 1, "{id}");
    }
    assert_eq!(one(&i, Lookup::Id("e-2".into())).seq, 2);
    assert_eq!(one(&i, Lookup::Id("evt:e-2".into())).seq, 2);
    for miss in [
        "m-",
        "b-1x",
        "evt:m-1",
        "/v1.0/im/bot/messages/get",
        "mid:",
        "3",
    ] {
        let f = i.find(&Lookup::Id(miss.into())).expect("find");
        assert!(f.receipts.is_empty(), "{miss} matched {f:?}");
        assert_eq!(f.searched.receipts, 2);
        assert_eq!(f.searched.newest_seq, 2);
        assert_eq!(f.searched.oldest.map(|o| o.0), Some(1));
    }
    assert!(i.find(&Lookup::Seq(3)).expect("find").receipts.is_empty());
}

#[test]
fn groups_show_pending_acked_and_parked_with_their_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    for g in ["acks", "parks", "late"] {
        store.ensure_group(g, StartAt::Oldest).expect("group");
    }
    store
        .append_batch(&[bot("1"), bot("2")], SystemTime::now())
        .expect("append");
    store.ack("acks", &[1]).expect("ack");
    assert!(store.park("parks", 1, 10).expect("park"));
    store.ensure_group("adhoc", StartAt::Newest).expect("adhoc");
    let i = Inspector::open(dir.path()).expect("inspector");
    let r = one(&i, Lookup::Seq(1));
    let names: Vec<&str> = r.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, vec!["acks", "adhoc", "late", "parks"]);
    let acks = fate(&r, "acks");
    assert!(matches!(acks.fate, Fate::Acked { at: Some(_) }), "{acks:?}");
    assert_eq!(acks.acked.len(), 1);
    let parks = fate(&r, "parks");
    assert!(
        matches!(parks.fate, Fate::Parked { deliveries: 10, .. }),
        "{parks:?}"
    );
    assert_eq!(parks.parked.len(), 1);
    assert_eq!(fate(&r, "late").fate, Fate::Pending);
    assert_eq!(
        fate(&r, "adhoc").fate,
        Fate::NotOwed,
        "created at the newest message, after this one"
    );
    // A late ack of a parked message: acked now, the park stays in its history.
    store.ack("parks", &[1]).expect("late ack");
    let r = one(&i, Lookup::Seq(1));
    let parks = fate(&r, "parks");
    assert!(matches!(parks.fate, Fate::Acked { .. }), "{parks:?}");
    assert_eq!((parks.acked.len(), parks.parked.len()), (1, 1));
    // An ack out of order (above the cursor) is a fact too.
    store.ack("late", &[2]).expect("ack 2");
    let r = one(&i, Lookup::Seq(2));
    assert!(matches!(fate(&r, "late").fate, Fate::Acked { .. }));
    assert_eq!(fate(&r, "acks").fate, Fate::Pending);
}

#[test]
fn the_receipt_outlives_the_body_and_says_how_it_went() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store.ensure_group("acks", StartAt::Oldest).expect("acks");
    store.ensure_group("parks", StartAt::Oldest).expect("parks");
    store.ensure_group("never", StartAt::Oldest).expect("never");
    store.ensure_group("gone", StartAt::Oldest).expect("gone");
    let t0 = SystemTime::now();
    store.append_batch(&[bot("1")], t0).expect("append");
    store.ack("acks", &[1]).expect("ack");
    store.ack("gone", &[1]).expect("ack");
    assert!(store.park("parks", 1, 3).expect("park"));
    store.remove_group("gone").expect("remove");
    store.set_options(StoreOptions {
        max_age: Duration::from_secs(60),
        dedupe_window: Duration::from_secs(3600),
        ..opts()
    });
    let report = store
        .enforce_retention(t0 + Duration::from_secs(61))
        .expect("retention");
    assert_eq!(report.forced_out_unacked, 1, "never owed it");
    assert_eq!(report.expired_receipts, 0, "the dedupe window keeps it");
    drop(store);

    let i = Inspector::open(dir.path()).expect("inspector");
    assert!(i.immutable, "no daemon: nothing is created beside the file");
    let r = one(&i, Lookup::Id("b-1".into()));
    assert!(!r.body_stored);
    assert!(r.forced_out_at.is_some());
    assert_eq!(r.body_size, Some(msg("1", &[]).body.len() as u64));
    assert!(matches!(fate(&r, "acks").fate, Fate::Acked { at: Some(_) }));
    let parks = fate(&r, "parks");
    assert_eq!(parks.fate, Fate::ForcedOut, "{parks:?}");
    assert_eq!(parks.parked.len(), 1, "its park is history now");
    assert_eq!(parks.parked[0].1, 3);
    assert_eq!(fate(&r, "never").fate, Fate::ForcedOut);
    let gone = fate(&r, "gone");
    assert!(!gone.exists);
    assert!(matches!(gone.fate, Fate::Acked { .. }), "{gone:?}");
    for f in ["spool.db-wal", "spool.db-shm"] {
        assert!(!dir.path().join(f).exists(), "{f} created by a reader");
    }
}

#[test]
fn history_goes_with_the_receipts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store.ensure_group("g", StartAt::Oldest).expect("g");
    let t0 = SystemTime::now();
    store
        .append_batch(&[bot("1"), bot("2")], t0)
        .expect("append");
    store.ack("g", &[1]).expect("ack");
    assert!(store.park("g", 2, 4).expect("park"));
    store.enforce_retention(t0).expect("acked body goes");
    let count = |store: &Store, table: &str| -> i64 {
        store
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(
        (count(&store, "acked_log"), count(&store, "parked_log")),
        (1, 1)
    );
    let i = Inspector::open(dir.path()).expect("inspector");
    let r = one(&i, Lookup::Seq(1));
    assert!(
        !r.body_stored && r.forced_out_at.is_none(),
        "released: acked by all"
    );
    assert!(matches!(fate(&r, "g").fate, Fate::Acked { .. }));
    // Past the dedupe window and max_age (both 1 h here): receipts and history go together.
    store.set_options(StoreOptions {
        max_age: Duration::from_secs(3600),
        ..opts()
    });
    let report = store
        .enforce_retention(t0 + Duration::from_secs(3601))
        .expect("retention");
    assert_eq!(report.expired_receipts, 2);
    assert_eq!(
        (count(&store, "acked_log"), count(&store, "parked_log")),
        (0, 0)
    );
    let f = i.find(&Lookup::Id("m-1".into())).expect("find");
    assert!(f.receipts.is_empty());
    assert_eq!((f.searched.receipts, f.searched.oldest), (0, None));
    assert_eq!(f.searched.newest_seq, 2);
}

#[test]
fn a_version_3_spool_is_read_without_migrating_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
    schema::create_at_version(&conn, 3);
    conn.execute_batch(
        "INSERT INTO messages (seq, stored_at, size, topic, body) VALUES (1, 5000, 50, '/t', 'abcd'); \
         INSERT INTO receipts (seq, received_at, keys, topic, origin, lag_ms, size) \
             VALUES (1, 5000, '5:mid:a', '/t', 2, 7, 60); \
         INSERT INTO groups (name, cursor, configured, created_at) VALUES ('g', 1, 1, 1); \
         INSERT INTO parked (grp, seq, deliveries, parked_at) VALUES ('g', 1, 10, 9000); \
         UPDATE meta SET last_seq = 1, messages = 1, receipts = 1;",
    )
    .expect("a v3 spool");
    let i = Inspector::open(dir.path()).expect("inspector");
    let r = one(&i, Lookup::Id("a".into()));
    assert_eq!((r.body_size, r.origin, r.lag_ms), (Some(4), 2, Some(7)));
    assert!(matches!(
        fate(&r, "g").fate,
        Fate::Parked { deliveries: 10, .. }
    ));
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(v, 3, "not migrated");
}

#[test]
fn what_cannot_be_read_is_an_error_naming_the_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let e = Inspector::open(&missing).err().expect("missing dir");
    assert!(matches!(e, SpoolError::DirMissing { .. }), "{e}");
    let e = Inspector::open(dir.path()).err().expect("no database");
    assert!(e.to_string().contains("spool.db"), "{e}");
    let conn = Connection::open(dir.path().join(DB_FILE)).expect("open");
    schema::create_at_version(&conn, 2);
    drop(conn);
    let e = Inspector::open(dir.path()).err().expect("too old");
    assert!(e.to_string().contains("schema version 2"), "{e}");
}

#[test]
fn odd_directory_names_stay_paths() {
    assert_eq!(uri_path(Path::new("/var/lib/a b")), "/var/lib/a%20b");
    assert_eq!(
        uri_path(Path::new("/x/?mode=rw#%")),
        "/x/%3Fmode%3Drw%23%25"
    );
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("sp ?#%ool");
    std::fs::create_dir(&dir).expect("dir");
    let mut store = Store::open(&dir, opts()).expect("open");
    store
        .append_batch(&[bot("1")], SystemTime::now())
        .expect("append");
    let i = Inspector::open(&dir).expect("inspector");
    assert_eq!(one(&i, Lookup::Id("m-1".into())).seq, 1);
}
