//! The WAL checkpointer: a thread with its own connection that copies committed WAL frames into
//! the database file (`PRAGMA wal_checkpoint(PASSIVE)`) a few times a second.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses `wal_autocheckpoint`, so one
//! ACK in a few hundred waited 3-9 ms for it. With this thread the writer's connection runs
//! with `wal_autocheckpoint=0`: commits only append to the WAL and fsync it, and the WAL still
//! restarts from its beginning once a checkpoint has caught up.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::{SpoolError, SqlContext};

/// How often the checkpointer runs: small enough that the WAL stays a few MiB at 20,000 msg/s,
/// large enough that an idle spool costs nothing measurable.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The running checkpointer; dropping it stops the thread (after at most one checkpoint).
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second read-write connection to `path` and starts the thread.
    pub(super) fn start(path: &Path, every: Duration) -> Result<Checkpointer, SpoolError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).at(path)?;
        // Same durability as the writer: the checkpoint fsyncs the database file before the WAL
        // may be reused.
        conn.pragma_update(None, "synchronous", "FULL").at(path)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0).at(path)?;
        let (stop, rx) = mpsc::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || run(conn, path, rx, every))
            .map_err(|e| SpoolError::Unusable {
                path: PathBuf::new(),
                detail: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, path: PathBuf, stop: mpsc::Receiver<()>, every: Duration) {
    let mut failing = false;
    loop {
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match r {
            Ok((_busy, log, done)) => {
                if failing {
                    tracing::debug!(path = %path.display(), "WAL checkpoint works again");
                    failing = false;
                }
                tracing::trace!(wal_frames = log, checkpointed = done, "WAL checkpoint");
            }
            // A full disk makes the database file unable to grow; the writer reports that.
            Err(e) if !failing => {
                tracing::debug!(path = %path.display(), error = %e, "WAL checkpoint failed; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
