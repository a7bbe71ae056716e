//! The on-disk schema, its migrations (`PRAGMA user_version`) and the connection settings.
//!
//! Durability lives here: WAL with `synchronous=FULL`, so every commit fsyncs the WAL and
//! "ACK after commit" means "ACK after fsync". Migrations are append-only: never edit a
//! released entry of [`MIGRATIONS`], add the next one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::error::{SpoolError, SqlContext};

/// Version 1: messages, dedupe keys, consumer groups, out-of-order acks, parked messages, and
/// one `meta` row holding the seq counter and the running totals (so `stats()` is O(1)).
const V1: &str = "
CREATE TABLE meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq    INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    messages    INTEGER NOT NULL,
    dedupe_keys INTEGER NOT NULL
);
INSERT INTO meta (id, last_seq, bytes, messages, dedupe_keys) VALUES (1, 0, 0, 0, 0);
CREATE TABLE messages (
    seq       INTEGER PRIMARY KEY,
    stored_at INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    topic     TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE TABLE dedupe (
    key        TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedupe_expires ON dedupe (expires_at);
CREATE TABLE groups (
    name       TEXT PRIMARY KEY,
    cursor     INTEGER NOT NULL,
    configured INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE group_acks (
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE INDEX group_acks_seq ON group_acks (seq);
CREATE TABLE parked (
    grp        TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    parked_at  INTEGER NOT NULL,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE INDEX parked_seq ON parked (seq);
";

/// Version 2: `groups.last_active`, epoch milliseconds since which the group has had no member
/// (its idle clock: an ad-hoc group expires `consumers.adhoc_ttl` after it). NULL while a member
/// is connected, and for groups from version 1: their clock starts when the daemon starts.
const V2: &str = "ALTER TABLE groups ADD COLUMN last_active INTEGER;";

/// Version 3: a small receipt per message instead of the `dedupe` key table. The dedupe
/// window now lives in memory (hashes of the keys, rebuilt at open from the receipts), so no
/// commit searches or grows a B-tree of random text keys; the receipt keeps the keys (to confirm
/// a hash hit), when and on which connection the message arrived and its delivery lag, and it
/// outlives the body (`dingtalk-streamd inspect` answers from it for `spool.max_age`).
/// `acked_log` records, per group and commit, the run of seqs acked and when.
/// Keys are stored length-prefixed (`9:mid:a1b2c` …); existing dedupe keys become receipts.
const V3: &str = "
CREATE TABLE receipts (
    seq         INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    keys        TEXT NOT NULL,
    topic       TEXT NOT NULL,
    origin      INTEGER NOT NULL,
    lag_ms      INTEGER,
    size        INTEGER NOT NULL
);
INSERT INTO receipts (seq, received_at, keys, topic, origin, lag_ms, size)
    SELECT d.seq,
           COALESCE(m.stored_at, MIN(d.expires_at) - 3600000),
           group_concat(length(CAST(d.key AS BLOB)) || ':' || d.key, ''),
           COALESCE(m.topic, ''), 0, NULL, 0
    FROM dedupe d LEFT JOIN messages m ON m.seq = d.seq GROUP BY d.seq;
UPDATE receipts SET size = length(CAST(keys AS BLOB)) + length(CAST(topic AS BLOB)) + 48;
DROP TABLE dedupe;
ALTER TABLE meta RENAME COLUMN dedupe_keys TO receipts;
UPDATE meta SET receipts = (SELECT COUNT(*) FROM receipts),
    bytes = (SELECT COALESCE(SUM(size), 0) FROM messages)
          + (SELECT COALESCE(SUM(size), 0) FROM receipts);
CREATE TABLE acked_log (
    grp       TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    acked_at  INTEGER NOT NULL
);
CREATE INDEX acked_log_last ON acked_log (last_seq);
";

/// Version 4: what `dingtalk-streamd inspect` needs once a body is gone. `receipts.body_size`
/// (the stored body's bytes; filled in for the bodies still stored), `receipts.forced_out_at`
/// (when `max_age` / `max_bytes` removed the body, NULL otherwise), and `parked_log`, one row
/// per park, kept like `acked_log` as long as the receipts (the `parked` table only holds what
/// is parked now). `acked_log` gets an index covering the seq range, so finding the acks of one
/// seq reads the index only.
const V4: &str = "
ALTER TABLE receipts ADD COLUMN body_size INTEGER;
ALTER TABLE receipts ADD COLUMN forced_out_at INTEGER;
UPDATE receipts SET body_size =
    (SELECT length(CAST(m.body AS BLOB)) FROM messages m WHERE m.seq = receipts.seq);
CREATE TABLE parked_log (
    grp        TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    parked_at  INTEGER NOT NULL
);
CREATE INDEX parked_log_seq ON parked_log (seq);
INSERT INTO parked_log (grp, seq, deliveries, parked_at)
    SELECT grp, seq, deliveries, parked_at FROM parked;
DROP INDEX acked_log_last;
CREATE INDEX acked_log_span ON acked_log (last_seq, first_seq);
";

/// Migration `i` takes the database from `user_version` `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

/// How long a statement waits for another connection's lock (the reader's checkpoint, a
/// second daemon instance) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache per connection, KiB (negative = KiB for SQLite): keeps the hot pages cached.
const CACHE_KIB: i64 = 16 * 1024;
/// The WAL file is truncated back to this after a checkpoint, so a burst does not leave a
/// large WAL behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Settings for the writing connection: WAL, fsync at every commit, caches.
pub(crate) fn configure_writer(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SpoolError::Unusable {
            path: path.to_path_buf(),
            detail: format!("cannot enable WAL journal mode (got {mode:?})"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL").at(path)?;
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .at(path)?;
    if sync < 2 {
        return Err(SpoolError::Unusable {
            path: path.to_path_buf(),
            detail: format!("synchronous=FULL did not take effect (got {sync})"),
        });
    }
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .at(path)?;
    configure_common(conn, path)
}

/// Settings shared by the writer and the read-only connections.
pub(crate) fn configure_common(conn: &Connection, path: &Path) -> Result<(), SpoolError> {
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .at(path)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step, and checks the result.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SpoolError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .at(path)?;
    if found > SCHEMA_VERSION {
        return Err(SpoolError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .at(path)?;
        if tables > 0 {
            return Err(SpoolError::Corrupt {
                path: path.to_path_buf(),
                detail: "the database has tables but no spool schema version".into(),
            });
        }
    }
    let start = usize::try_from(found.max(0)).unwrap_or(usize::MAX);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn.transaction().at(path)?;
        tx.execute_batch(sql).at(path)?;
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        tx.pragma_update(None, "user_version", version).at(path)?;
        tx.commit().at(path)?;
        tracing::info!(path = %path.display(), version, "spool schema migrated");
    }
    let meta: Option<i64> = conn
        .query_row("SELECT id FROM meta WHERE id = 1", [], |r| r.get(0))
        .optional()
        .map_err(|e| SpoolError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("meta table unreadable: {e}"),
        })?;
    if meta.is_none() {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            detail: "meta row missing".into(),
        });
    }
    Ok(())
}

/// Creates the schema of `version` exactly in an empty database (WAL, as the writer sets it):
/// a spool as an older daemon left it, for tests of migrations and of readers.
#[cfg(test)]
pub(crate) fn create_at_version(conn: &Connection, version: usize) {
    let path = Path::new("test.db");
    configure_writer(conn, path).expect("configure");
    for sql in &MIGRATIONS[..version] {
        conn.execute_batch(sql).expect("older schema");
    }
    conn.pragma_update(None, "user_version", i64::try_from(version).expect("small"))
        .expect("user_version");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, Connection, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.db");
        let conn = Connection::open(&path).expect("open");
        (dir, conn, path)
    }

    #[test]
    fn migrate_is_idempotent_and_sets_version() {
        let (_dir, mut conn, path) = fresh();
        configure_writer(&conn, &path).expect("configure");
        migrate(&mut conn, &path).expect("first");
        migrate(&mut conn, &path).expect("second");
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_version_1_spool_is_migrated_keeping_its_groups() {
        let (dir, conn, path) = fresh();
        configure_writer(&conn, &path).expect("configure");
        conn.execute_batch(V1).expect("v1 schema");
        conn.execute_batch(
            "INSERT INTO groups (name, cursor, configured, created_at) VALUES ('old', 7, 0, 1); \
             PRAGMA user_version = 1;",
        )
        .expect("a v1 group");
        drop(conn);
        let store = crate::spool::Store::open(dir.path(), crate::spool::test_support::opts())
            .expect("open migrates");
        let v: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
        let g = store.load_groups().expect("load").remove(0);
        assert_eq!((g.name.as_str(), g.cursor, g.configured), ("old", 7, false));
        assert_eq!(
            g.idle_since, None,
            "unknown: the clock starts at the daemon's start"
        );
    }

    #[test]
    fn a_version_3_spool_gains_body_sizes_and_its_parks_as_history() {
        let (dir, conn, _path) = fresh();
        create_at_version(&conn, 3);
        conn.execute_batch(
            "INSERT INTO messages (seq, stored_at, size, topic, body) VALUES (1, 5, 50, '/t', 'abcd'); \
             INSERT INTO receipts (seq, received_at, keys, topic, origin, lag_ms, size) \
                 VALUES (1, 5, '5:mid:a', '/t', 2, 7, 60), (2, 6, '5:mid:b', '/t', 2, NULL, 60); \
             INSERT INTO groups (name, cursor, configured, created_at) VALUES ('g', 1, 1, 1); \
             INSERT INTO parked (grp, seq, deliveries, parked_at) VALUES ('g', 1, 10, 9); \
             INSERT INTO acked_log (grp, first_seq, last_seq, acked_at) VALUES ('g', 2, 2, 8); \
             UPDATE meta SET last_seq = 2, messages = 1, receipts = 2, bytes = 170;",
        )
        .expect("a v3 spool");
        drop(conn);
        let store = crate::spool::Store::open(dir.path(), crate::spool::test_support::opts())
            .expect("open migrates");
        let sizes: Vec<Option<i64>> = store
            .conn
            .prepare("SELECT body_size FROM receipts ORDER BY seq")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("sizes");
        assert_eq!(sizes, vec![Some(4), None], "known while the body is stored");
        let history: (String, i64, i64, i64) = store
            .conn
            .query_row(
                "SELECT grp, seq, deliveries, parked_at FROM parked_log",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("the park became history");
        assert_eq!(history, ("g".into(), 1, 10, 9));
        let plan: String = store
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT grp FROM acked_log WHERE last_seq >= 2 AND first_seq <= 2",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("acked_log_span"), "{plan}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let (_dir, mut conn, path) = fresh();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("set");
        let err = migrate(&mut conn, &path).expect_err("too new");
        assert!(matches!(err, SpoolError::SchemaTooNew { .. }), "{err}");
        assert!(err.is_fatal_at_start());
    }

    #[test]
    fn foreign_database_is_refused() {
        let (_dir, mut conn, path) = fresh();
        conn.execute_batch("CREATE TABLE other (x)")
            .expect("create");
        let err = migrate(&mut conn, &path).expect_err("foreign");
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    }
}
