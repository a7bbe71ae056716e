//! `SpoolError`: everything the spool can fail with, each variant naming the spool path.
//!
//! The daemon branches on two questions only: is this fatal at start (exit 78, the operator must
//! fix the directory or the file) and is the disk full (keep running degraded, retry later).

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Free space below which an SQLite I/O error is taken to be "disk full" (ENOSPC surfaces as
/// `SQLITE_IOERR_*` from fsync or truncate, and SQLite does not hand us the errno).
const NEARLY_FULL_BYTES: u64 = 1024 * 1024;

/// Errors of the spool. Every message names the directory or database file concerned.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// `spool.dir` does not exist, and neither does its parent (the daemon creates only the
    /// last component, as systemd's `StateDirectory=` does).
    #[error(
        "spool directory {path} does not exist and its parent is missing too: create it (install -d -m 0750 {path}) or correct spool.dir"
    )]
    DirMissing { path: PathBuf },
    /// `spool.dir` (or a component of it) is a file.
    #[error("spool directory {path} is not a directory: spool.dir must name a directory")]
    NotADirectory { path: PathBuf },
    /// `spool.dir` cannot be inspected (permissions on a parent, I/O error).
    #[error("spool directory {path} cannot be accessed: {source}")]
    DirUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating, writing or syncing a probe file (or the database) in `spool.dir` failed.
    #[error(
        "spool directory {path} is not writable: {source}; it must be writable by the daemon's user"
    )]
    NotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the spool's lock.
    #[error("spool directory {path} is in use by another dingtalk-streamd ({}): one daemon per spool; stop that one or give this one another spool.dir", pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")))]
    Locked { path: PathBuf, pid: Option<u32> },
    /// The database file is damaged or is not a spool database.
    #[error("spool database {path} is corrupt or not a spool: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The database was written by a newer daemon; downgrading would lose data.
    #[error(
        "spool database {path} has schema version {found}; this daemon supports up to {supported}"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The database cannot be set up as required (e.g. WAL unsupported on this filesystem).
    #[error("spool database {path} cannot be used: {detail}")]
    Unusable { path: PathBuf, detail: String },
    /// No space left (`SQLITE_FULL`, or an I/O error on a filesystem with no space left).
    /// The transaction was rolled back; the same call may be retried later.
    #[error("spool {path}: disk full: {source}")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// One stored row cannot be decoded; the rest of the spool is still readable.
    #[error("spool database {path}: message seq {seq} is corrupt: {detail}")]
    CorruptRow {
        path: PathBuf,
        seq: u64,
        detail: String,
    },
    /// An ack, park or query named a group that `ensure_group` never created.
    #[error("spool database {path}: unknown consumer group {group:?}")]
    UnknownGroup { path: PathBuf, group: String },
    /// The spool writer has stopped (the daemon is shutting down).
    #[error("the spool writer has stopped")]
    Closed,
    /// Any other SQLite failure.
    #[error("spool database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl SpoolError {
    /// True when the failure is a lack of space: the caller stops ACKing, keeps running and
    /// retries the same batch later.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::DiskFull { .. })
    }

    /// True when `Store::open` failed for a reason only the operator can fix (the daemon exits
    /// 78). Disk full and busy databases are not fatal: retry.
    pub fn is_fatal_at_start(&self) -> bool {
        match self {
            SpoolError::DirMissing { .. }
            | SpoolError::NotADirectory { .. }
            | SpoolError::DirUnusable { .. }
            | SpoolError::NotWritable { .. }
            | SpoolError::Corrupt { .. }
            | SpoolError::SchemaTooNew { .. }
            | SpoolError::Unusable { .. }
            | SpoolError::Locked { .. } => true,
            SpoolError::Closed => false,
            SpoolError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied)
            ),
            SpoolError::DiskFull { .. }
            | SpoolError::CorruptRow { .. }
            | SpoolError::UnknownGroup { .. } => false,
        }
    }

    /// Classifies an SQLite error raised while working on the database at `path`.
    pub(crate) fn from_sqlite(path: &Path, err: rusqlite::Error) -> SpoolError {
        let path = path.to_path_buf();
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => SpoolError::DiskFull {
                path,
                source: Box::new(err),
            },
            Some(ErrorCode::SystemIoFailure) if nearly_full(&path) => SpoolError::DiskFull {
                path,
                source: Box::new(err),
            },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => SpoolError::Corrupt {
                path,
                detail: err.to_string(),
            },
            _ => SpoolError::Sqlite { path, source: err },
        }
    }

    /// Classifies an I/O error from probing the directory at `path`.
    pub(crate) fn from_probe(path: &Path, err: std::io::Error) -> SpoolError {
        let path = path.to_path_buf();
        if err.kind() == std::io::ErrorKind::StorageFull {
            SpoolError::DiskFull {
                path,
                source: Box::new(err),
            }
        } else {
            SpoolError::NotWritable { path, source: err }
        }
    }
}

/// Whether the filesystem holding `path` (a file or directory) has almost no space left.
fn nearly_full(path: &Path) -> bool {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => {
            let avail = u128::from(st.blocks_available()) * u128::from(st.fragment_size());
            avail < u128::from(NEARLY_FULL_BYTES)
        }
        Err(_) => false,
    }
}

/// Attaches the database path to rusqlite results.
pub(crate) trait SqlContext<T> {
    /// Maps the error with [`SpoolError::from_sqlite`].
    fn at(self, path: &Path) -> Result<T, SpoolError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, SpoolError> {
        self.map_err(|e| SpoolError::from_sqlite(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_err(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_full_is_disk_full_and_not_fatal() {
        let e = SpoolError::from_sqlite(Path::new("/x/spool.db"), sqlite_err(13));
        assert!(e.is_disk_full());
        assert!(!e.is_fatal_at_start());
        assert!(e.to_string().contains("/x/spool.db"), "{e}");
    }

    #[test]
    fn notadb_is_corrupt_and_fatal() {
        let e = SpoolError::from_sqlite(Path::new("/x/spool.db"), sqlite_err(26));
        assert!(matches!(e, SpoolError::Corrupt { .. }));
        assert!(e.is_fatal_at_start());
    }

    #[test]
    fn enospc_probe_is_disk_full() {
        let io = std::io::Error::from_raw_os_error(28);
        assert!(SpoolError::from_probe(Path::new("/x"), io).is_disk_full());
        let io = std::io::Error::from_raw_os_error(13);
        assert!(SpoolError::from_probe(Path::new("/x"), io).is_fatal_at_start());
    }
}
