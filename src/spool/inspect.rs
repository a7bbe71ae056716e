//! Proof of receipt: everything the spool knows about one message, found by its seq or by any
//! of its dedupe keys (messageId, eventId, bot msgId), read on its own read-only connection.
//!
//! The answer comes from the receipt (kept for the longer of `max_age` and the dedupe window,
//! also after the body left), the ack and park history (`acked_log`, `parked_log`, kept as long
//! as the receipts), and, while the body is stored, each group's position. Nothing here writes:
//! with no daemon running the file is opened `immutable`, so not even a `-shm` file is created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction};

use super::append::decode_keys;
use super::error::{SpoolError, SqlContext};
use super::schema::{self, SCHEMA_VERSION};
use super::store::DB_FILE;
use super::types::{from_ms, get_opt_u64, get_u64, int};

/// At most this many receipts are described for one id (a redelivery that came after the
/// dedupe window is a second message with the same keys; more than a few means a bad query).
pub const MAX_MATCHES: usize = 16;

/// The receipts' dedupe key prefixes, as `wire::Frame::dedupe_keys` writes them.
const KEY_PREFIXES: [&str; 3] = ["mid:", "evt:", "msg:"];

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The daemon's sequence number.
    Seq(u64),
    /// A DingTalk `messageId`, an `eventId` or a bot `msgId` (or a whole key such as
    /// `mid:...`).
    Id(String),
}

/// How a group stands with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In the group's backlog: after its cursor, neither acked nor parked (it may be in flight).
    Pending,
    /// Parked now (the group gave up after `deliveries` attempts); the body is kept.
    Parked { at: SystemTime, deliveries: u32 },
    /// Acked; when, if recorded (acks from before schema version 3 have no time).
    Acked { at: Option<SystemTime> },
    /// The group came after the message arrived and started after it: it never owed it.
    NotOwed,
    /// A spool bound (`max_age`, `max_bytes`) removed the body before the group acked it.
    ForcedOut,
    /// At or below the group's cursor with no record of how (acked before acks were logged).
    Done,
    /// The group no longer exists and never acked it (its history is in `parked`).
    Removed,
}

/// One group's dealings with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFate {
    pub group: String,
    /// The group still exists in the spool.
    pub exists: bool,
    /// Where it stands now.
    pub fate: Fate,
    /// Every recorded ack of this message by the group, oldest first (a replay can make a
    /// group ack it again).
    pub acked: Vec<SystemTime>,
    /// Every time the group parked it, oldest first, with the deliveries it had taken.
    pub parked: Vec<(SystemTime, u32)>,
}

/// What the spool knows about one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    /// When it was committed (and then ACKed to DingTalk).
    pub received_at: SystemTime,
    /// The daemon's connection number it came on (`c<n>`); 0 when not recorded.
    pub origin: u64,
    /// From DingTalk's `time` header to its arrival, when the header was there.
    pub lag_ms: Option<i64>,
    pub topic: String,
    /// Bytes of the stored body (the consumer line without `seq`), when known.
    pub body_size: Option<u64>,
    /// Its dedupe keys as stored (`mid:...`, `evt:...`, `msg:<topic>:...`).
    pub keys: Vec<String>,
    /// The body is still in the spool.
    pub body_stored: bool,
    /// When a spool bound removed the body (schema version 4 on).
    pub forced_out_at: Option<SystemTime>,
    /// Every group that exists or has a record of it, by name.
    pub groups: Vec<GroupFate>,
}

/// The range of receipts the spool holds: what a search covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Searched {
    /// Receipts held.
    pub receipts: u64,
    /// The oldest receipt: its seq and when it arrived.
    pub oldest: Option<(u64, SystemTime)>,
    /// The newest seq ever assigned.
    pub newest_seq: u64,
}

/// The answer to one [`Lookup`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The matching receipts, ascending, at most [`MAX_MATCHES`].
    pub receipts: Vec<Receipt>,
    /// Matches beyond those.
    pub more: u64,
    /// What was searched.
    pub searched: Searched,
}

/// A read-only connection for [`Lookup`]s. It never writes, never takes the spool's lock, and
/// reads one consistent snapshot per lookup.
pub struct Inspector {
    conn: Connection,
    path: PathBuf,
    version: i64,
    /// True when opened without the write-ahead log (no daemon had the file open).
    pub immutable: bool,
}

impl Inspector {
    /// Opens `<dir>/spool.db` read-only. When its write-ahead log and shared-memory files exist
    /// (a daemon runs, or one crashed) they are read as any reader would; when they do not (a
    /// daemon stopped cleanly, or none ever ran here) the file is opened `immutable`, so
    /// nothing is created beside it (a `-shm` file left behind by another user could stop the
    /// daemon later).
    pub fn open(dir: &Path) -> Result<Inspector, SpoolError> {
        let path = dir.join(DB_FILE);
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SpoolError::NotADirectory {
                    path: dir.to_owned(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::DirMissing {
                    path: dir.to_owned(),
                });
            }
            Err(source) => {
                return Err(SpoolError::DirUnusable {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::Unusable {
                    path,
                    detail: "no spool database here (has the daemon run with this spool.dir?)"
                        .into(),
                });
            }
            Err(source) => {
                return Err(SpoolError::DirUnusable { path, source });
            }
        }
        let beside = |ext: &str| dir.join(format!("{DB_FILE}-{ext}")).exists();
        let immutable = !(beside("wal") && beside("shm"));
        let uri = format!(
            "file:{}?mode=ro{}",
            uri_path(&path),
            if immutable { "&immutable=1" } else { "" }
        );
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&uri, flags).at(&path)?;
        schema::configure_common(&conn, &path)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .at(&path)?;
        if version > SCHEMA_VERSION {
            return Err(SpoolError::SchemaTooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 3 {
            return Err(SpoolError::Unusable {
                path,
                detail: format!(
                    "schema version {version} keeps no receipts; start the daemon once to \
                     migrate it"
                ),
            });
        }
        Ok(Inspector {
            conn,
            path,
            version,
            immutable,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Interrupts a lookup under way from another thread (it then fails).
    pub fn interrupt_handle(&self) -> rusqlite::InterruptHandle {
        self.conn.get_interrupt_handle()
    }

    /// Everything known about the message(s) `lookup` names, in one snapshot.
    pub fn find(&self, lookup: &Lookup) -> Result<Found, SpoolError> {
        let path = self.path.as_path();
        let tx = self.conn.unchecked_transaction().at(path)?;
        let searched = searched(&tx).at(path)?;
        let (seqs, more) = match lookup {
            Lookup::Seq(seq) => (vec![*seq], 0),
            Lookup::Id(id) => matching(&tx, id).at(path)?,
        };
        let mut receipts = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(r) = self.receipt(&tx, seq)? {
                receipts.push(r);
            }
        }
        Ok(Found {
            receipts,
            more,
            searched,
        })
    }

    /// The receipt of `seq` with every group's dealings with it, `None` when there is none.
    fn receipt(&self, tx: &Transaction<'_>, seq: u64) -> Result<Option<Receipt>, SpoolError> {
        let path = self.path.as_path();
        let v4 = self.version >= 4;
        let sql = if v4 {
            "SELECT received_at, origin, lag_ms, topic, keys, body_size, forced_out_at \
             FROM receipts WHERE seq = ?1"
        } else {
            "SELECT received_at, origin, lag_ms, topic, keys, NULL, NULL \
             FROM receipts WHERE seq = ?1"
        };
        type Row = (
            i64,
            u64,
            Option<i64>,
            String,
            String,
            Option<u64>,
            Option<i64>,
        );
        let row: Option<Row> = tx
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_row([int(seq)], |r| {
                    Ok((
                        r.get(0)?,
                        get_u64(r, 1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        get_opt_u64(r, 5)?,
                        r.get(6)?,
                    ))
                })
                .optional()
            })
            .at(path)?;
        let Some((received, origin, lag_ms, topic, keys, body_size, forced)) = row else {
            return Ok(None);
        };
        let corrupt = |detail: String| SpoolError::CorruptRow {
            path: path.to_path_buf(),
            seq,
            detail,
        };
        let received_at =
            from_ms(received).ok_or_else(|| corrupt(format!("received_at {received}")))?;
        let keys: Vec<String> = decode_keys(&keys)
            .ok_or_else(|| corrupt("its receipt's keys are damaged".into()))?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let stored_size: Option<u64> = tx
            .prepare_cached("SELECT length(CAST(body AS BLOB)) FROM messages WHERE seq = ?1")
            .and_then(|mut s| s.query_row([int(seq)], |r| get_u64(r, 0)).optional())
            .at(path)?;
        let mut receipt = Receipt {
            seq,
            received_at,
            origin,
            lag_ms,
            topic,
            body_size: body_size.or(stored_size),
            keys,
            body_stored: stored_size.is_some(),
            forced_out_at: forced.and_then(from_ms),
            groups: Vec::new(),
        };
        receipt.groups = self.fates(tx, &receipt).at(path)?;
        Ok(Some(receipt))
    }

    /// Each group's dealings with the message of `r`, by group name.
    fn fates(&self, tx: &Transaction<'_>, r: &Receipt) -> rusqlite::Result<Vec<GroupFate>> {
        let seq = int(r.seq);
        struct Known {
            cursor: u64,
            configured: bool,
            created_at: i64,
        }
        let known: BTreeMap<String, Known> = tx
            .prepare_cached("SELECT name, cursor, configured, created_at FROM groups")?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Known {
                        cursor: get_u64(row, 1)?,
                        configured: row.get(2)?,
                        created_at: row.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut acked: BTreeMap<String, Vec<SystemTime>> = BTreeMap::new();
        let rows: Vec<(String, i64)> = tx
            .prepare_cached(
                "SELECT grp, acked_at FROM acked_log WHERE last_seq >= ?1 AND first_seq <= ?1 \
                 ORDER BY acked_at",
            )?
            .query_map([seq], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (g, at) in rows {
            acked.entry(g).or_default().extend(from_ms(at));
        }
        let parks = |sql: &str| -> rusqlite::Result<Vec<(String, u32, i64)>> {
            tx.prepare_cached(sql)?
                .query_map([seq], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        };
        let mut parked: BTreeMap<String, Vec<(SystemTime, u32)>> = BTreeMap::new();
        if self.version >= 4 {
            let sql = "SELECT grp, deliveries, parked_at FROM parked_log WHERE seq = ?1 \
                       ORDER BY parked_at";
            for (g, n, at) in parks(sql)? {
                parked
                    .entry(g)
                    .or_default()
                    .extend(from_ms(at).map(|t| (t, n)));
            }
        }
        let mut parked_now: BTreeMap<String, (SystemTime, u32)> = BTreeMap::new();
        for (g, n, at) in parks("SELECT grp, deliveries, parked_at FROM parked WHERE seq = ?1")? {
            let at = from_ms(at).unwrap_or(r.received_at);
            let history = parked.entry(g.clone()).or_default();
            if !history.iter().any(|p| p.0 == at) {
                history.push((at, n));
            }
            parked_now.insert(g, (at, n));
        }
        let in_acks: Vec<String> = tx
            .prepare_cached("SELECT grp FROM group_acks WHERE seq = ?1")?
            .query_map([seq], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;

        let mut names: Vec<&String> = known
            .keys()
            .chain(acked.keys())
            .chain(parked.keys())
            .collect();
        names.sort();
        names.dedup();
        let received_ms = super::types::to_ms(r.received_at);
        Ok(names
            .into_iter()
            .map(|name| {
                let acks = acked.get(name).cloned().unwrap_or_default();
                let was_acked = !acks.is_empty() || in_acks.contains(name);
                let fate = match (parked_now.get(name), known.get(name)) {
                    (Some(&(at, deliveries)), _) => Fate::Parked { at, deliveries },
                    (None, Some(g)) if r.body_stored && r.seq > g.cursor && !was_acked => {
                        Fate::Pending
                    }
                    _ if was_acked => Fate::Acked {
                        at: acks.last().copied(),
                    },
                    (None, None) => Fate::Removed,
                    (None, Some(g)) if g.created_at > received_ms && !g.configured => Fate::NotOwed,
                    (None, Some(_)) if !r.body_stored && r.forced_out_at.is_some() => {
                        Fate::ForcedOut
                    }
                    (None, Some(g)) if g.created_at > received_ms => Fate::NotOwed,
                    (None, Some(_)) => Fate::Done,
                };
                GroupFate {
                    group: name.clone(),
                    exists: known.contains_key(name),
                    fate,
                    acked: acks,
                    parked: parked.get(name).cloned().unwrap_or_default(),
                }
            })
            .collect())
    }
}

/// The receipts held, the oldest, and the newest seq.
fn searched(tx: &Transaction<'_>) -> rusqlite::Result<Searched> {
    let (receipts, newest_seq) = tx
        .prepare_cached("SELECT receipts, last_seq FROM meta WHERE id = 1")?
        .query_row([], |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)))?;
    let oldest: Option<(u64, i64)> = tx
        .prepare_cached("SELECT seq, received_at FROM receipts ORDER BY seq LIMIT 1")?
        .query_row([], |r| Ok((get_u64(r, 0)?, r.get(1)?)))
        .optional()?;
    Ok(Searched {
        receipts,
        oldest: oldest.and_then(|(seq, at)| from_ms(at).map(|t| (seq, t))),
        newest_seq,
    })
}

/// The seqs whose receipt holds `id` as one of its keys (ascending, at most [`MAX_MATCHES`]),
/// and how many more there are. A bare id matches `mid:<id>`, `evt:<id>` and
/// `msg:<topic>:<id>`; an id with one of those prefixes must equal a key.
fn matching(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<(Vec<u64>, u64)> {
    let whole_key = KEY_PREFIXES.iter().any(|p| id.starts_with(p));
    let mut stmt = tx.prepare_cached(
        "SELECT seq, keys, topic FROM receipts WHERE instr(keys, ?1) > 0 ORDER BY seq",
    )?;
    let mut rows = stmt.query([id])?;
    let (mut seqs, mut more) = (Vec::new(), 0u64);
    while let Some(row) = rows.next()? {
        let keys: String = row.get(1)?;
        let topic: String = row.get(2)?;
        let hit = decode_keys(&keys).is_some_and(|keys| {
            keys.iter().any(|k| {
                if whole_key {
                    *k == id
                } else {
                    k.strip_prefix("mid:") == Some(id)
                        || k.strip_prefix("evt:") == Some(id)
                        || k.strip_prefix("msg:")
                            .and_then(|rest| rest.strip_prefix(topic.as_str()))
                            .and_then(|rest| rest.strip_prefix(':'))
                            == Some(id)
                }
            })
        });
        if !hit {
            continue;
        }
        if seqs.len() < MAX_MATCHES {
            seqs.push(get_u64(row, 0)?);
        } else {
            more += 1;
        }
    }
    Ok((seqs, more))
}

/// `path` as the path part of an SQLite `file:` URI: every byte but unreserved ones and `/`
/// percent-encoded (so `?`, `#` and `%` in a directory name cannot change the URI's meaning).
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
