//! One daemon per spool: an exclusive `flock` on `spool.dir/lock`, held for the life of the
//! [`Store`](super::Store). A second daemon on the same directory (an admin running
//! `dingtalk-streamd run` by hand while the service runs, two replicas on one volume) would
//! interleave its commits with ours; it is refused at start instead, naming the holder's pid,
//! which the holder writes into the file. The lock dies with the process, so a crash never
//! leaves a stale lock behind.

use super::SpoolError;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lock file inside `spool.dir`.
pub const LOCK_FILE: &str = "lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct SpoolLock {
    _file: Flock<File>,
}

impl SpoolLock {
    /// Takes the lock on `dir`, or fails with [`SpoolError::Locked`] naming the holder.
    pub fn acquire(dir: &Path) -> Result<SpoolLock, SpoolError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpoolError::from_probe(dir, e))?;
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(SpoolError::Locked {
                    path: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err((_, errno)) => {
                return Err(SpoolError::from_probe(
                    dir,
                    std::io::Error::from_raw_os_error(errno as i32),
                ));
            }
        };
        let write = (|| {
            held.set_len(0)?;
            held.rewind()?;
            writeln!(held, "{}", std::process::id())?;
            held.sync_data()
        })();
        write.map_err(|e| SpoolError::from_probe(dir, e))?;
        Ok(SpoolLock { _file: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SpoolLock::acquire(dir.path()).expect("first");
        let err = SpoolLock::acquire(dir.path()).expect_err("second");
        match &err {
            SpoolError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(err.is_fatal_at_start());
        let text = err.to_string();
        assert!(text.contains(&*dir.path().to_string_lossy()), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        SpoolLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
