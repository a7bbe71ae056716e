//! The WAL checkpointer: a thread with its own connection that copies committed WAL frames into
//! the database file (`PRAGMA wal_checkpoint(PASSIVE)`) a few times a second while the spool is
//! written, and sleeps while it is not.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses `wal_autocheckpoint`, so one
//! ACK in a few hundred waited 3-9 ms for it. With this thread the writer's connection runs
//! with `wal_autocheckpoint=0`: commits only append to the WAL and fsync it, and the WAL still
//! restarts from its beginning once a checkpoint has caught up. The writer wakes the thread after
//! a write ([`Checkpointer::wrote`]: one flag, and a wake-up only when the thread sleeps); the
//! thread then waits [`CHECKPOINT_EVERY`] so that the writes of that time share one checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::{SpoolError, SqlContext};

/// How often the checkpointer runs while the spool is written: small enough that the WAL stays a
/// few MiB at 20,000 msg/s, large enough that a checkpoint covers many commits.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The running checkpointer; dropping it stops the thread (after at most one checkpoint).
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// Wakes the thread; dropped to stop it.
    wake: Option<mpsc::SyncSender<()>>,
    /// Set by a write, cleared by the thread right before it checkpoints.
    due: Arc<AtomicBool>,
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
        let (wake, rx) = mpsc::sync_channel::<()>(1);
        let due = Arc::new(AtomicBool::new(false));
        let path = path.to_path_buf();
        let flag = due.clone();
        let thread = std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || run(conn, path, rx, &flag, every))
            .map_err(|e| SpoolError::Unusable {
                path: PathBuf::new(),
                detail: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Checkpointer {
            wake: Some(wake),
            due,
            thread: Some(thread),
        })
    }

    /// The writer committed something: a checkpoint is due within [`CHECKPOINT_EVERY`]. Costs
    /// one atomic swap, plus a wake-up when no checkpoint was due yet.
    pub(super) fn wrote(&self) {
        if !self.due.swap(true, Ordering::AcqRel)
            && let Some(w) = &self.wake
        {
            // Full means a wake-up is already queued: that one will do.
            let _ = w.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    conn: Connection,
    path: PathBuf,
    wake: mpsc::Receiver<()>,
    due: &AtomicBool,
    every: Duration,
) {
    let mut failing = false;
    loop {
        // Asleep until a write.
        if wake.recv().is_err() {
            return;
        }
        loop {
            // A pause, so that the writes meanwhile share the checkpoint.
            match wake.recv_timeout(every) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            due.store(false, Ordering::Release);
            let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
            match r {
                Ok((log, done)) => {
                    if failing {
                        tracing::debug!(path = %path.display(), "WAL checkpoint works again");
                        failing = false;
                    }
                    tracing::trace!(wal_frames = log, checkpointed = done, "WAL checkpoint");
                    break;
                }
                // A full disk keeps the database file from growing (the writer reports that):
                // still due, tried again after the next pause.
                Err(e) => {
                    if !failing {
                        tracing::debug!(path = %path.display(), error = %e, "WAL checkpoint failed; retrying");
                        failing = true;
                    }
                    due.store(true, Ordering::Release);
                }
            }
        }
    }
}
