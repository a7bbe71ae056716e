//! Getting the listening Unix sockets: from systemd socket activation (`LISTEN_FDS`, each fd
//! known by the path it is bound to, else its `LISTEN_FDNAMES` name, else its order), or bound
//! by the daemon itself: a stale socket file is replaced, anything else at the path is an
//! error, and the mode is applied after bind.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Something other than a socket is at the path.
    #[error("{}: exists and is not a socket; refusing to replace it (move it away, or set another path)", path.display())]
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

/// What `bind` would refuse at `path` whoever listens there: anything that is not a socket.
pub fn check_path(path: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(ListenError::NotASocket {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
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

/// How an inherited socket was matched to its role, for the startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// Its bound path is the configured path.
    Path,
    /// Its `LISTEN_FDNAMES` name is the role (`stream`, `control`).
    Name,
    /// Neither: its position in `LISTEN_FDS` (first = stream, second = control).
    Order,
}

struct Fd {
    name: String,
    path: Option<PathBuf>,
    listener: std::os::unix::net::UnixListener,
}

/// The listening sockets systemd passed us (`LISTEN_FDS`), not yet claimed.
///
/// One socket unit with two `ListenStream=` lines gives both fds the same name (the unit's), so
/// each fd is identified by the path it is bound to (`getsockname`), compared with
/// `socket.path` / `control.path`; then by a `LISTEN_FDNAMES` name `stream` / `control`; then
/// by order. Inherited sockets belong to systemd: the daemon never unlinks or chmods them.
#[derive(Default)]
pub struct Inherited {
    fds: Vec<Option<Fd>>,
}

fn same_path(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    // The config may spell the directory differently (relative, symlinked): compare the
    // canonical directory plus the file name.
    let canon = |p: &Path| {
        Some((
            std::fs::canonicalize(p.parent()?).ok()?,
            p.file_name()?.to_owned(),
        ))
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

impl Inherited {
    /// Adopts the descriptors of `LISTEN_FDS` (none when not socket-activated, or when
    /// `LISTEN_PID` names another process).
    pub fn from_env() -> Result<Inherited, ListenError> {
        let fds: Vec<(i32, String)> = match sd_notify::listen_fds_with_names() {
            Ok(it) => it.collect(),
            // A LISTEN_FDNAMES that does not match LISTEN_FDS: use the fds without names.
            Err(_) => match sd_notify::listen_fds() {
                Ok(it) => it.map(|fd| (fd, String::new())).collect(),
                Err(_) => Vec::new(),
            },
        };
        let mut out = Inherited::default();
        for (fd, name) in fds {
            // SAFETY (reviewed): systemd passes these descriptors to this process (LISTEN_PID
            // is checked by sd_notify::listen_fds) and nothing else in the process owns them;
            // each fd is adopted exactly once here. We verify below that it is a listening
            // AF_UNIX stream socket before using it.
            #[allow(unsafe_code)]
            let owned =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            use nix::sys::socket::{
                SockType, SockaddrLike, SockaddrStorage, UnixAddr, getsockname, getsockopt, sockopt,
            };
            use std::os::fd::AsRawFd;
            let is_stream =
                getsockopt(&owned, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
            let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
            let addr = getsockname::<SockaddrStorage>(owned.as_raw_fd()).ok();
            let is_unix = addr.as_ref().and_then(|a| a.family())
                == Some(nix::sys::socket::AddressFamily::Unix);
            if !(is_stream && listening && is_unix) {
                return Err(ListenError::BadInherited { fd, name });
            }
            let path = addr
                .as_ref()
                .and_then(|a| a.as_unix_addr())
                .and_then(UnixAddr::path)
                .map(Path::to_owned);
            let listener = std::os::unix::net::UnixListener::from(owned);
            listener
                .set_nonblocking(true)
                .map_err(|source| ListenError::Io {
                    path: PathBuf::from(format!("LISTEN_FDS:{fd}")),
                    source,
                })?;
            out.fds.push(Some(Fd {
                name,
                path,
                listener,
            }));
        }
        Ok(out)
    }

    /// Claims the socket for `role` (`stream` or `control`, at `index` 0 or 1 in the order
    /// fallback) whose configured path is `path`; `others` are the paths of the other roles, so
    /// that the order fallback never takes a socket that plainly belongs to another role.
    pub fn take(
        &mut self,
        role: &str,
        index: usize,
        path: &Path,
        others: &[&Path],
    ) -> Option<(std::os::unix::net::UnixListener, Matched, Option<PathBuf>)> {
        let pos = self
            .fds
            .iter()
            .position(|f| {
                f.as_ref()
                    .is_some_and(|f| f.path.as_deref().is_some_and(|p| same_path(p, path)))
            })
            .map(|i| (i, Matched::Path))
            .or_else(|| {
                self.fds
                    .iter()
                    .position(|f| f.as_ref().is_some_and(|f| f.name == role))
                    .map(|i| (i, Matched::Name))
            })
            .or_else(|| {
                let f = self.fds.get(index)?.as_ref()?;
                let belongs_elsewhere = f
                    .path
                    .as_deref()
                    .is_some_and(|p| others.iter().any(|o| same_path(p, o)))
                    || ["stream", "control"].contains(&f.name.as_str());
                (!belongs_elsewhere).then_some((index, Matched::Order))
            });
        let (i, how) = pos?;
        let fd = self.fds[i].take()?;
        Some((fd.listener, how, fd.path))
    }

    /// Descriptors nobody claimed (closed when dropped), described for a warning.
    pub fn unclaimed(&self) -> Vec<String> {
        self.fds
            .iter()
            .flatten()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.path
                        .as_deref()
                        .map_or("unnamed".into(), |p| p.display().to_string()),
                    f.name
                )
            })
            .collect()
    }
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
        assert!(matches!(
            bind(&f, 0o600),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
    }
}
