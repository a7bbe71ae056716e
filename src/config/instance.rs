//! Several DingTalk apps on one host: one daemon per app, each an *instance* with a name
//! (the template units `dingtalk-streamd@NAME.service` and `.socket`). Instance `NAME` reads
//! `/etc/dingtalk-streamd/NAME.yml`, listens on `/run/dingtalk-streamd/NAME/stream.sock` and
//! `control.sock`, and keeps its spool in `/var/lib/dingtalk-streamd/NAME/`; `--instance NAME`
//! on the command line is the shorthand for those paths.

use super::{Config, DEFAULT_CONTROL_PATH, DEFAULT_SOCKET_PATH, DEFAULT_SPOOL_DIR};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where instance configs live (`NAME.yml`).
pub const CONFIG_DIR: &str = "/etc/dingtalk-streamd";
/// Where the sockets of all instances live (`NAME/stream.sock`, `NAME/control.sock`).
pub const RUNTIME_DIR: &str = "/run/dingtalk-streamd";
/// The longest instance name: keeps `/run/dingtalk-streamd/NAME/control.sock` well inside
/// the 107 bytes a Unix socket path may have.
pub const MAX_NAME: usize = 64;

/// A valid instance name: letters, digits, `-`, `_` and `.`, starting with a letter or digit,
/// at most [`MAX_NAME`] bytes. It becomes a file name and a directory name, and systemd passes
/// it as `%i`, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance(String);

impl Instance {
    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `/etc/dingtalk-streamd/NAME.yml`
    pub fn config_path(&self) -> PathBuf {
        Path::new(CONFIG_DIR).join(format!("{}.yml", self.0))
    }

    /// `/run/dingtalk-streamd/NAME/stream.sock`
    pub fn socket_path(&self) -> PathBuf {
        Path::new(RUNTIME_DIR).join(&self.0).join("stream.sock")
    }

    /// `/run/dingtalk-streamd/NAME/control.sock`
    pub fn control_path(&self) -> PathBuf {
        Path::new(RUNTIME_DIR).join(&self.0).join("control.sock")
    }

    /// `/var/lib/dingtalk-streamd/NAME`
    pub fn spool_dir(&self) -> PathBuf {
        Path::new(DEFAULT_SPOOL_DIR).join(&self.0)
    }

    /// Gives `config` this instance's socket, control socket and spool paths wherever it
    /// leaves them at the single-app defaults (an instance never shares those); paths the file
    /// sets to anything else are kept.
    pub fn apply(&self, config: &mut Config) {
        if config.socket.path == Path::new(DEFAULT_SOCKET_PATH) {
            config.socket.path = self.socket_path();
        }
        if config.control.path == Path::new(DEFAULT_CONTROL_PATH) {
            config.control.path = self.control_path();
        }
        if config.spool.dir == Path::new(DEFAULT_SPOOL_DIR) {
            config.spool.dir = self.spool_dir();
        }
    }
}

impl FromStr for Instance {
    type Err = String;

    fn from_str(name: &str) -> Result<Instance, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if name.is_empty() || name.len() > MAX_NAME || !first_ok || !name.chars().all(allowed) {
            return Err(format!(
                "instance name {name:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ));
        }
        // Names of the single-app layout's own files beside the instances' directories.
        const RESERVED: &[&str] = &[
            "config",
            "lock",
            "spool.db",
            "spool.db-wal",
            "spool.db-shm",
            "stream.sock",
            "control.sock",
        ];
        if RESERVED.contains(&name) {
            return Err(format!(
                "instance name {name:?} is reserved: the single-app files use it"
            ));
        }
        Ok(Instance(name.to_owned()))
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names_and_nothing_else() {
        for ok in ["a", "bot-a", "App_2", "x.y", &"n".repeat(MAX_NAME)] {
            assert_eq!(ok.parse::<Instance>().map(|i| i.0), Ok(ok.to_string()));
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "a\\x2db",
            "ä",
            &"n".repeat(MAX_NAME + 1),
        ] {
            let e = bad.parse::<Instance>().expect_err(bad);
            assert!(e.contains("instance name"), "{e}");
        }
    }

    #[test]
    fn paths_of_an_instance() {
        let i: Instance = "bot-a".parse().expect("name");
        assert_eq!(
            i.config_path(),
            Path::new("/etc/dingtalk-streamd/bot-a.yml")
        );
        assert_eq!(
            i.socket_path(),
            Path::new("/run/dingtalk-streamd/bot-a/stream.sock")
        );
        assert_eq!(
            i.control_path(),
            Path::new("/run/dingtalk-streamd/bot-a/control.sock")
        );
        assert_eq!(i.spool_dir(), Path::new("/var/lib/dingtalk-streamd/bot-a"));
    }

    #[test]
    fn only_default_paths_become_the_instances() {
        let yaml = "dingtalk:\n  client_id: x\n  client_secret: y\n";
        let mut c = Config::parse(yaml, Path::new("t.yml")).expect("parse");
        let i: Instance = "a".parse().expect("name");
        i.apply(&mut c);
        assert_eq!(c.socket.path, i.socket_path());
        assert_eq!(c.control.path, i.control_path());
        assert_eq!(c.spool.dir, i.spool_dir());
        let yaml = format!("{yaml}socket:\n  path: /tmp/mine.sock\nspool:\n  dir: /srv/spool\n");
        let mut c = Config::parse(&yaml, Path::new("t.yml")).expect("parse");
        i.apply(&mut c);
        assert_eq!(c.socket.path, Path::new("/tmp/mine.sock"));
        assert_eq!(c.control.path, i.control_path());
        assert_eq!(c.spool.dir, Path::new("/srv/spool"));
    }
}
