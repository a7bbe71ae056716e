//! `Store`: the one writing connection: opening (directory checks, pragmas, migrations),
//! reads on the writer's connection, and O(1) stats.
//!
//! Every mutation (in `append.rs`, `groups.rs`, `retention.rs`) is one IMMEDIATE transaction
//! committed with an fsync; in-memory state changes only after a commit succeeded.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, MAIN_DB, OpenFlags, OptionalExtension};

use super::checkpoint::{CHECKPOINT_EVERY, Checkpointer};
use super::dedupe::{DedupeIndex, key_hash};
use super::error::{SpoolError, SqlContext};
use super::lock::SpoolLock;
use super::reader;
use super::schema;
use super::types::{
    SpoolStats, StoreOptions, StoredMessage, duration_ms, get_opt_u64, get_u64, int, to_ms,
};
use std::time::SystemTime;

/// The database file inside `spool.dir`.
pub const DB_FILE: &str = "spool.db";
/// Written, synced and removed at open to prove the directory is writable.
const PROBE_FILE: &str = ".spool-write-probe";

/// The durable spool. Not `Sync`: the daemon calls it from one dedicated writer thread.
#[derive(Debug)]
pub struct Store {
    /// Declared first so it stops before the writer's connection closes (the last connection
    /// to close checkpoints and removes the WAL).
    checkpointer: Option<Checkpointer>,
    /// Held while the store is open; declared last, so it is released last.
    _lock: SpoolLock,
    pub(super) conn: Connection,
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) opts: StoreOptions,
    /// Highest committed seq (mirrors `meta.last_seq`).
    pub(super) last_seq: u64,
    /// Accounted bytes (mirrors `meta.bytes`), so the writer can tell cheaply when `max_bytes`
    /// is exceeded.
    pub(super) bytes: u64,
    /// The dedupe window in memory, rebuilt from the receipts at open.
    pub(super) index: DedupeIndex,
}

impl Store {
    /// Something reached the WAL: the checkpointer runs soon (see [`Checkpointer::wrote`]).
    pub(super) fn wrote(&self) {
        if let Some(c) = &self.checkpointer {
            c.wrote();
        }
    }

    /// Opens or creates `<dir>/spool.db`: WAL, `synchronous=FULL`, schema migrated.
    /// The directory must exist and be writable; errors name the path.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, SpoolError> {
        check_dir(dir)?;
        let lock = SpoolLock::acquire(dir)?;
        let path = dir.join(DB_FILE);
        private_files(dir, &path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags).at(&path)?;
        if conn.is_readonly(MAIN_DB).at(&path)? {
            return Err(SpoolError::NotWritable {
                path,
                source: std::io::Error::from(ErrorKind::PermissionDenied),
            });
        }
        schema::configure_writer(&conn, &path)?;
        schema::migrate(&mut conn, &path)?;
        let last_seq = reader::newest_seq(&conn, &path)?;
        let bytes: u64 = conn
            .query_row("SELECT bytes FROM meta WHERE id = 1", [], |r| get_u64(r, 0))
            .at(&path)?;
        // Checkpoints run on their own thread; commits then only append to the WAL. Without the
        // thread SQLite's automatic checkpoint stays on, so the WAL is bounded either way.
        let checkpointer = match Checkpointer::start(&path, CHECKPOINT_EVERY) {
            Ok(c) => {
                conn.pragma_update(None, "wal_autocheckpoint", 0)
                    .at(&path)?;
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no checkpoint thread: SQLite checkpoints inside commits");
                None
            }
        };
        let index = rebuild_index(&conn, &path, &opts)?;
        tracing::debug!(path = %path.display(), last_seq, keys = index.len(), "spool opened");
        Ok(Store {
            checkpointer,
            _lock: lock,
            conn,
            dir: dir.to_path_buf(),
            path,
            opts,
            last_seq,
            bytes,
            index,
        })
    }

    /// True when the accounted bytes exceed a non-zero `max_bytes`: retention should run.
    pub fn over_max_bytes(&self) -> bool {
        self.opts.max_bytes > 0 && self.bytes > self.opts.max_bytes
    }

    /// Applies reloaded `spool:` settings. Bounds take effect at the next retention pass; a new
    /// `dedupe_window` applies to keys stored from now on (stored keys keep their expiry).
    pub fn set_options(&mut self, opts: StoreOptions) {
        self.opts = opts;
    }

    /// The settings in force.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages with `seq > after`, ascending, at most `limit` (a group's backlog).
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredMessage>, SpoolError> {
        reader::read_after(&self.conn, &self.path, after, limit)
    }

    /// The message `seq`, if still in the spool.
    pub fn read_one(&self, seq: u64) -> Result<Option<StoredMessage>, SpoolError> {
        reader::read_one(&self.conn, &self.path, seq)
    }

    /// The highest seq ever assigned; 0 for a new spool. Survives deletes and restarts.
    pub fn newest_seq(&self) -> Result<u64, SpoolError> {
        Ok(self.last_seq)
    }

    /// Counts for `status` and metrics.
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let path = self.path.as_path();
        let (bytes, messages, receipts) = self.totals()?;
        let (oldest, oldest_stored_ms): (Option<u64>, Option<u64>) = self
            .conn
            .prepare_cached("SELECT seq, stored_at FROM messages ORDER BY seq LIMIT 1")
            .and_then(|mut s| {
                s.query_row([], |r| Ok((get_opt_u64(r, 0)?, get_opt_u64(r, 1)?)))
                    .optional()
            })
            .map(Option::unwrap_or_default)
            .at(path)?;
        let parked: u64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM parked")
            .and_then(|mut s| s.query_row([], |r| get_u64(r, 0)))
            .at(path)?;
        let file_len = |p: PathBuf| fs::metadata(p).map_or(0, |m| m.len());
        let file_bytes =
            file_len(self.path.clone()) + file_len(self.dir.join(format!("{DB_FILE}-wal")));
        Ok(SpoolStats {
            messages,
            bytes,
            dedupe_keys: self.index.len() as u64,
            receipts,
            oldest_seq: oldest.unwrap_or(0),
            oldest_stored_ms: oldest_stored_ms.unwrap_or(0),
            newest_seq: self.last_seq,
            parked,
            file_bytes,
        })
    }

    /// The running totals `(bytes, messages, receipts)`: one row read.
    pub fn totals(&self) -> Result<(u64, u64, u64), SpoolError> {
        self.conn
            .prepare_cached("SELECT bytes, messages, receipts FROM meta WHERE id = 1")
            .and_then(|mut s| {
                s.query_row([], |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?, get_u64(r, 2)?)))
            })
            .at(&self.path)
    }

    /// Counts, sizes and every group's parked seqs, for status: errors are reported inside.
    pub fn figures(&self) -> super::SpoolFigures {
        let parked = self.parked_by_group();
        match (self.stats(), parked) {
            (Ok(stats), Ok(parked)) => super::SpoolFigures {
                stats,
                parked,
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => super::SpoolFigures {
                error: Some(e.to_string()),
                ..Default::default()
            },
        }
    }

    /// Caps the database size in pages (`PRAGMA max_page_count`, this connection only), so
    /// tests can make SQLite answer `SQLITE_FULL` as on a full disk. Returns the cap in force.
    #[doc(hidden)]
    pub fn set_max_page_count_for_test(&mut self, pages: u64) -> Result<u64, SpoolError> {
        self.conn
            .pragma_update_and_check(None, "max_page_count", int(pages), |r| get_u64(r, 0))
            .at(&self.path)
    }

    /// Recounts `(bytes, messages, receipts)` from the tables (O(n)); tests compare it with
    /// the running totals in `meta`.
    #[cfg(test)]
    pub(crate) fn recount(&self) -> (u64, u64, u64) {
        use super::types::{MESSAGE_OVERHEAD, RECEIPT_OVERHEAD};
        let q = |sql: &str| -> u64 {
            self.conn
                .query_row(sql, [], |r| get_opt_u64(r, 0))
                .expect("recount")
                .unwrap_or(0)
        };
        let msgs = q("SELECT COUNT(*) FROM messages");
        let receipts = q("SELECT COUNT(*) FROM receipts");
        let msg_bytes = q(
            "SELECT SUM(length(CAST(topic AS BLOB)) + length(CAST(body AS BLOB))) \
             FROM messages",
        );
        let receipt_bytes = q(
            "SELECT SUM(length(CAST(keys AS BLOB)) + length(CAST(topic AS BLOB))) \
             FROM receipts",
        );
        let bytes =
            msg_bytes + msgs * MESSAGE_OVERHEAD + receipt_bytes + receipts * RECEIPT_OVERHEAD;
        (bytes, msgs, receipts)
    }
}

/// The dedupe window's index, rebuilt from the receipts stored within `dedupe_window`.
fn rebuild_index(
    conn: &Connection,
    path: &Path,
    opts: &StoreOptions,
) -> Result<DedupeIndex, SpoolError> {
    let mut index = DedupeIndex::new();
    if opts.dedupe_window.is_zero() {
        return Ok(index);
    }
    // The window ends at the newest receipt (or now, if the clock says earlier): what was
    // stored just before a stop is recognised after it; the first retention pass then expires
    // by the clock.
    let newest: Option<i64> = conn
        .query_row("SELECT MAX(received_at) FROM receipts", [], |r| r.get(0))
        .at(path)?;
    let now = to_ms(SystemTime::now());
    let end = newest.map_or(now, |n| n.min(now));
    let since = end.saturating_sub(duration_ms(opts.dedupe_window));
    let mut stmt = conn
        .prepare("SELECT seq, received_at, keys FROM receipts WHERE received_at >= ?1 ORDER BY seq")
        .at(path)?;
    let mut rows = stmt.query([since]).at(path)?;
    let mut hashes = Vec::new();
    while let Some(row) = rows.next().at(path)? {
        let seq = get_u64(row, 0).at(path)?;
        let at: i64 = row.get(1).at(path)?;
        let keys: String = row.get(2).at(path)?;
        hashes.clear();
        hashes.extend(
            super::append::decode_keys(&keys)
                .unwrap_or_default()
                .into_iter()
                .map(key_hash),
        );
        let at = u32::try_from(at / 1000).unwrap_or(u32::MAX);
        index.insert(seq, &hashes, at, u64::MAX);
    }
    Ok(index)
}

/// The mode of every file the spool creates: the messages carry bearer URLs
/// (`sessionWebhook`), so only the daemon's user reads them, whatever the umask.
pub const FILE_MODE: u32 = 0o600;

/// Creates the database file with [`FILE_MODE`] before SQLite does (SQLite would create it
/// 0644 minus the umask, and gives its WAL and shared-memory files the database's mode), and
/// closes an existing database, WAL or shm file that others could read (one created by hand or
/// by an older version). A mode the operator chose that keeps others out (0640) is kept.
fn private_files(dir: &Path, db: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::PermissionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(db)
        .map_err(|e| SpoolError::from_probe(dir, e))?;
    for name in [
        DB_FILE.to_owned(),
        format!("{DB_FILE}-wal"),
        format!("{DB_FILE}-shm"),
    ] {
        let p = dir.join(name);
        match fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o027 != 0 => {
                fs::set_permissions(&p, fs::Permissions::from_mode(FILE_MODE))
                    .map_err(|e| SpoolError::from_probe(dir, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::from_probe(dir, e)),
        }
    }
    Ok(())
}

/// What `run` finds at `spool.dir`, as far as it can be known without the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolDir {
    /// An existing, writable directory.
    Ready,
    /// Missing, with its parent there: systemd's `StateDirectory=` (or the daemon run by hand)
    /// creates it at start.
    Created,
}

/// The checks `run` makes on `spool.dir` before it connects, without taking the lock or
/// touching the database, so `check-config` can make them while a daemon runs.
pub fn check_spool_dir(dir: &Path) -> Result<SpoolDir, SpoolError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => match dir.parent().map(fs::metadata) {
            Some(Ok(m)) if m.is_dir() => Ok(SpoolDir::Created),
            _ => Err(SpoolError::DirMissing {
                path: dir.to_path_buf(),
            }),
        },
        _ => check_dir(dir).map(|()| SpoolDir::Ready),
    }
}

/// Creates `spool.dir` (mode 0750, its parent must exist) when it is missing, as
/// `StateDirectory=` would; `true` when it did. Whatever else is wrong with an existing one
/// is left to [`Store::open`] (a full disk there is waited out, not fatal).
pub fn create_spool_dir(dir: &Path) -> Result<bool, SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        _ => return Ok(false),
    }
    if check_spool_dir(dir)? == SpoolDir::Ready {
        return Ok(false);
    }
    match fs::DirBuilder::new().mode(0o750).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(SpoolError::from_probe(dir, e)),
    }
}

/// Fails with a precise error unless `dir` is an existing, writable directory. The probe
/// writes and fsyncs a file, which also fails for root on read-only mounts and pseudo-fs.
fn check_dir(dir: &Path) -> Result<(), SpoolError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(SpoolError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(SpoolError::DirMissing {
                path: dir.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => {
            return Err(SpoolError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(SpoolError::DirUnusable {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    let probe = dir.join(PROBE_FILE);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"probe\n")?;
            f.sync_all()
        });
    let removed = fs::remove_file(&probe);
    written.map_err(|e| SpoolError::from_probe(dir, e))?;
    removed.map_err(|e| SpoolError::from_probe(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Reader;
    use crate::spool::test_support::{assert_accounting, at, fill, msg, open_tmp, opts};

    #[test]
    fn open_missing_dir_names_the_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("nope");
        let err = Store::open(&dir, opts()).expect_err("missing");
        assert!(matches!(err, SpoolError::DirMissing { .. }), "{err:?}");
        assert!(err.is_fatal_at_start());
        assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
    }

    #[test]
    fn open_file_instead_of_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("file");
        fs::write(&file, b"x").expect("write");
        for dir in [file.clone(), file.join("below")] {
            let err = Store::open(&dir, opts()).expect_err("not a dir");
            assert!(matches!(err, SpoolError::NotADirectory { .. }), "{err:?}");
            assert!(err.is_fatal_at_start());
            assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
        }
    }

    /// Tests run as root, for whom a chmod 0555 directory is still writable. `/proc` is a
    /// directory in which even root cannot create a file, so the probe fails for real.
    #[test]
    fn open_unwritable_dir_fails_even_for_root() {
        let dir = Path::new("/proc");
        let err = Store::open(dir, opts()).expect_err("unwritable");
        assert!(matches!(err, SpoolError::NotWritable { .. }), "{err:?}");
        assert!(err.is_fatal_at_start());
        assert!(err.to_string().contains("/proc"), "{err}");
    }

    #[test]
    fn open_garbage_file_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join(DB_FILE), vec![0x5a; 8192]).expect("write");
        let err = Store::open(tmp.path(), opts()).expect_err("corrupt");
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err:?}");
        assert!(err.is_fatal_at_start());
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }

    #[test]
    fn seq_is_monotonic_across_reopen_and_after_deleting_everything() {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let mut store = Store::open(tmp.path(), opts()).expect("open");
            assert_eq!(store.newest_seq().expect("newest"), 0);
            assert_eq!(fill(&mut store, 3, at(0)), vec![1, 2, 3]);
        }
        let mut store = Store::open(tmp.path(), opts()).expect("reopen");
        assert_eq!(store.newest_seq().expect("newest"), 3);
        assert_eq!(fill(&mut store, 2, at(1)), vec![4, 5]);
        store.enforce_retention(at(2)).expect("retention");
        let stats = store.stats().expect("stats");
        assert_eq!(
            (stats.messages, stats.oldest_seq, stats.newest_seq),
            (0, 0, 5)
        );
        drop(store);
        let mut store = Store::open(tmp.path(), opts()).expect("reopen empty");
        assert_eq!(store.newest_seq().expect("newest"), 5);
        assert_eq!(fill(&mut store, 1, at(3)), vec![6]);
        assert_accounting(&store);
    }

    #[test]
    fn stats_match_a_recount() {
        let (_dir, mut store) = open_tmp();
        store
            .append_batch(&[msg("a", &["m:1", "b:1"]), msg("ü", &["m:2"])], at(0))
            .expect("append");
        let stats = store.stats().expect("stats");
        assert_eq!(stats.messages, 2);
        assert_eq!(stats.dedupe_keys, 3);
        assert_eq!(
            (stats.oldest_seq, stats.newest_seq, stats.parked),
            (1, 2, 0)
        );
        assert!(stats.file_bytes > 0);
        assert_accounting(&store);
    }

    #[test]
    fn reader_sees_commits_while_writer_appends() {
        let (dir, mut store) = open_tmp();
        let reader = Reader::open(dir.path()).expect("reader");
        assert_eq!(reader.newest_seq().expect("newest"), 0);
        fill(&mut store, 3, at(0));
        let got = reader.read_after(1, 10).expect("read");
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(reader.read_one(3).expect("one").map(|m| m.seq), Some(3));
        assert_eq!(reader.newest_seq().expect("newest"), 3);
    }

    #[test]
    fn reader_in_another_thread_never_blocks_or_sees_half_a_batch() {
        let (dir, mut store) = open_tmp();
        let reader = Reader::open(dir.path()).expect("reader");
        let writer = std::thread::spawn(move || {
            for i in 0..50 {
                fill(&mut store, 10, at(i));
            }
            store
        });
        let mut seen = 0;
        while seen < 500 {
            let all = reader.read_after(0, usize::MAX).expect("read");
            assert_eq!(all.len() % 10, 0, "a batch is visible whole or not at all");
            assert!(all.len() >= seen);
            seen = all.len();
        }
        let store = writer.join().expect("writer");
        assert_eq!(store.newest_seq().expect("newest"), 500);
    }

    #[test]
    fn corrupt_rows_are_errors_naming_the_seq() {
        let (dir, mut store) = open_tmp();
        fill(&mut store, 3, at(0));
        let raw = Connection::open(dir.path().join(DB_FILE)).expect("raw");
        raw.execute_batch(
            "UPDATE messages SET body = X'FFFE' WHERE seq = 2; \
             UPDATE messages SET stored_at = -5 WHERE seq = 3;",
        )
        .expect("damage");
        let err = store.read_one(2).expect_err("blob body");
        assert!(
            matches!(err, SpoolError::CorruptRow { seq: 2, .. }),
            "{err:?}"
        );
        let err = store.read_after(2, 10).expect_err("bad time");
        assert!(
            matches!(err, SpoolError::CorruptRow { seq: 3, .. }),
            "{err:?}"
        );
        assert_eq!(store.read_after(0, 1).expect("row 1 fine").len(), 1);
    }
}
