//! Reading messages back: the queries shared by the writer and by [`Reader`].
//!
//! A `Reader` is a second, read-only connection: under WAL it reads a consistent snapshot while
//! the writer commits, so a group's backlog can be streamed without stalling appends.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::error::{SpoolError, SqlContext};
use super::schema;
use super::store::DB_FILE;
use super::types::{Backlog, StoredMessage, from_ms, get_u64, int};

const SELECT_MESSAGE: &str = "SELECT seq, stored_at, topic, body FROM messages";

/// A read-only connection to an existing spool (open the `Store` first: it creates the file).
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    /// Opens `<dir>/spool.db` read-only.
    pub fn open(dir: &Path) -> Result<Reader, SpoolError> {
        let path = dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).at(&path)?;
        schema::configure_common(&conn, &path)?;
        Ok(Reader { conn, path })
    }

    /// Messages with `seq > after`, ascending, at most `limit`.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<StoredMessage>, SpoolError> {
        read_after(&self.conn, &self.path, after, limit)
    }

    /// The message `seq`, if still in the spool.
    pub fn read_one(&self, seq: u64) -> Result<Option<StoredMessage>, SpoolError> {
        read_one(&self.conn, &self.path, seq)
    }

    /// The highest seq ever assigned (committed), 0 for a new spool.
    pub fn newest_seq(&self) -> Result<u64, SpoolError> {
        newest_seq(&self.conn, &self.path)
    }

    /// `group`'s backlog as of the last commit, read without taking anything: the first
    /// messages after its cursor that it has neither acked nor parked, at most `limit` and at
    /// most `max_bytes` of bodies, and how many there are in all (one consistent snapshot).
    /// `None` when the spool does not know the group.
    pub fn backlog(
        &self,
        group: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<Backlog>, SpoolError> {
        let path = self.path.as_path();
        let tx = self.conn.unchecked_transaction().at(path)?;
        let Some(cursor) = super::groups::group_cursor(&tx, group).at(path)? else {
            return Ok(None);
        };
        let total: u64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM messages m WHERE {OWED_BY}"))
            .and_then(|mut s| s.query_row((group, int(cursor)), |r| get_u64(r, 0)))
            .at(path)?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT m.seq, m.stored_at, m.topic, m.body FROM messages m WHERE {OWED_BY} \
                 ORDER BY m.seq LIMIT ?3"
            ))
            .at(path)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query((group, int(cursor), limit)).at(path)?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().at(path)? {
            let m = decode(row, path)?;
            bytes = bytes.saturating_add(m.body.len());
            if bytes > max_bytes {
                break;
            }
            messages.push(m);
        }
        Ok(Some(Backlog {
            cursor,
            messages,
            total,
        }))
    }
}

/// Message `m` is owed by group ?1 at cursor ?2: after the cursor, neither acked nor parked.
const OWED_BY: &str = "m.seq > ?2 \
     AND NOT EXISTS (SELECT 1 FROM group_acks a WHERE a.grp = ?1 AND a.seq = m.seq) \
     AND NOT EXISTS (SELECT 1 FROM parked p WHERE p.grp = ?1 AND p.seq = m.seq)";

/// A backlog read returns at most this many bytes of bodies (and at least one message), so
/// reading ahead for a group is bounded in memory whatever the messages' size.
pub const READ_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Messages with `seq > after`, ascending: at most `limit`, and no more than
/// [`READ_MAX_BYTES`] of bodies beyond the first.
pub(crate) fn read_after(
    conn: &Connection,
    path: &Path,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, SpoolError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT_MESSAGE} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .at(path)?;
    let mut rows = stmt.query((after, limit)).at(path)?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next().at(path)? {
        let m = decode(row, path)?;
        bytes += m.body.len();
        out.push(m);
        if bytes >= READ_MAX_BYTES {
            break;
        }
    }
    Ok(out)
}

pub(crate) fn read_one(
    conn: &Connection,
    path: &Path,
    seq: u64,
) -> Result<Option<StoredMessage>, SpoolError> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(&format!("{SELECT_MESSAGE} WHERE seq = ?1"))
        .at(path)?;
    let mut rows = stmt.query([seq]).at(path)?;
    match rows.next().at(path)? {
        Some(row) => decode(row, path).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn newest_seq(conn: &Connection, path: &Path) -> Result<u64, SpoolError> {
    let seq: Option<u64> = conn
        .prepare_cached("SELECT last_seq FROM meta WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| get_u64(r, 0)).optional())
        .at(path)?;
    Ok(seq.unwrap_or(0))
}

/// Decodes one `SELECT_MESSAGE` row; a bad column is an error naming the seq, never a panic.
fn decode(row: &Row<'_>, path: &Path) -> Result<StoredMessage, SpoolError> {
    let seq: i64 = row.get(0).at(path)?;
    let corrupt = |detail: String| SpoolError::CorruptRow {
        path: path.to_path_buf(),
        seq: u64::try_from(seq).unwrap_or(0),
        detail,
    };
    let seq_u = u64::try_from(seq).map_err(|_| corrupt("negative seq".into()))?;
    let stored_ms: i64 = row.get(1).map_err(|e| corrupt(format!("stored_at: {e}")))?;
    let stored_at =
        from_ms(stored_ms).ok_or_else(|| corrupt(format!("stored_at {stored_ms} out of range")))?;
    let topic: String = row.get(2).map_err(|e| corrupt(format!("topic: {e}")))?;
    let body: String = row.get(3).map_err(|e| corrupt(format!("body: {e}")))?;
    Ok(StoredMessage {
        seq: seq_u,
        body,
        topic,
        stored_at,
    })
}
