//! Files that hold a secret must not be open to every user of the host: the config when it
//! holds `dingtalk.client_secret` inline, `dingtalk.client_secret_file` and
//! `compat.client_secret_file`. Their mode is read from the file as it was opened (no window
//! between the check and the read). Readable by the owner and the daemon's group is right
//! (`0640 root:dingtalk-streamd`); readable or writable by others is refused with the `chmod`
//! that fixes it. A config anyone may write is refused even without a secret in it: whoever
//! edits `open_url` or `proxy` receives the secret.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The permission bits of "others".
const OTHERS: u32 = 0o007;

/// A file's text and its permission bits.
pub(super) struct Contents {
    /// The contents.
    pub text: String,
    /// `st_mode & 0o7777`.
    pub mode: u32,
}

/// Reads `path` and the mode of the very file read.
pub(super) fn read(path: &Path) -> std::io::Result<Contents> {
    let mut f = File::open(path)?;
    let mode = f.metadata()?.permissions().mode() & 0o7777;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(Contents { text, mode })
}

/// Why a file with a secret in it is too open, and the command that fixes it; `None` when it is
/// closed to others.
pub(super) fn too_open(path: &Path, mode: u32, what: &str) -> Option<String> {
    if mode & OTHERS == 0 {
        return None;
    }
    let who = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => "readable and writable by every user",
        (true, false) => "readable by every user",
        _ => "open to every user",
    };
    Some(format!(
        "{} holds {what} and is {who} (mode {mode:04o}); run `chmod 0640 {}` (owner and the daemon's group) or `chmod 0600 {}`",
        path.display(),
        path.display(),
        path.display()
    ))
}

/// Why a config file anyone may write cannot be trusted; `None` otherwise.
pub(super) fn world_writable(path: &Path, mode: u32) -> Option<String> {
    (mode & 0o002 != 0).then(|| {
        format!(
            "{} can be changed by every user (mode {mode:04o}), who could send the client secret elsewhere; run `chmod o-w {}` (0640 is right)",
            path.display(),
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_may_read_others_may_not() {
        let p = Path::new("/etc/dingtalk-streamd/secret");
        assert_eq!(too_open(p, 0o600, "x"), None);
        assert_eq!(too_open(p, 0o640, "x"), None);
        assert_eq!(too_open(p, 0o660, "x"), None);
        let e = too_open(p, 0o644, "the client secret").unwrap();
        assert!(
            e.contains("readable by every user (mode 0644)")
                && e.contains("chmod 0640 /etc/dingtalk-streamd/secret"),
            "{e}"
        );
        assert!(too_open(p, 0o606, "x").unwrap().contains("writable"));
        assert!(too_open(p, 0o601, "x").is_some());
        assert_eq!(world_writable(p, 0o644), None);
        assert!(world_writable(p, 0o646).unwrap().contains("chmod o-w"));
    }
}
