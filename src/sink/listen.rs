//! Getting the listening Unix sockets: from systemd socket activation (`LISTEN_FDS`, names from
//! `LISTEN_FDNAMES`: `stream`, `control`), or bound by the daemon itself: a stale socket file
//! is replaced, anything else at the path is an error, and the mode is applied after bind.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something other than a socket is at the path.
    #[error("{}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live daemon already answers there.
    #[error("{}: another process is listening on this socket", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Bind, chmod or directory creation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An inherited descriptor is not a listening Unix stream socket.
    #[error("LISTEN_FDS: descriptor {fd} ({name}) is not a listening Unix stream socket")]
    BadInherited {
        /// The fd number.
        fd: i32,
        /// Its name.
        name: String,
    },
}

/// Binds `path` with `mode`, replacing a stale socket file only.
pub fn bind(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, ListenError> {
    let io_err = |source| ListenError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    listener.set_nonblocking(true).map_err(io_err)?;
    Ok(listener)
}

/// The sockets systemd passed us, by name (`stream`, `control`); unnamed ones in that order.
pub fn inherited() -> Result<Vec<(String, std::os::unix::net::UnixListener)>, ListenError> {
    let Ok(fds) = sd_notify::listen_fds_with_names() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, (fd, name)) in fds.enumerate() {
        let name = if name.is_empty() || name == "unknown" {
            ["stream", "control"].get(i).copied().unwrap_or("extra").to_owned()
        } else {
            name
        };
        // SAFETY (reviewed): systemd passes these descriptors to this process (LISTEN_PID is
        // checked by sd_notify::listen_fds) and nothing else in the process owns them; each fd
        // is adopted exactly once here. We verify below that it is a listening AF_UNIX stream
        // socket before using it.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        use nix::sys::socket::{SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
        use std::os::fd::AsRawFd;
        let is_stream = getsockopt(&owned, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
        let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
        let is_unix = getsockname::<SockaddrStorage>(owned.as_raw_fd())
            .ok()
            .and_then(|a| a.family())
            == Some(nix::sys::socket::AddressFamily::Unix);
        if !(is_stream && listening && is_unix) {
            return Err(ListenError::BadInherited { fd, name });
        }
        let listener = std::os::unix::net::UnixListener::from(owned);
        listener.set_nonblocking(true).map_err(|source| ListenError::Io {
            path: PathBuf::from(format!("LISTEN_FDS:{name}")),
            source,
        })?;
        out.push((name, listener));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_replaced_other_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        let l = bind(&p, 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&p, 0o600), Err(ListenError::InUse { .. })));
        drop(l);
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(bind(&f, 0o600), Err(ListenError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
    }
}
