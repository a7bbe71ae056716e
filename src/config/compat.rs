//! `compat:`, the local DingTalk-compatible endpoint for unmodified SDK apps (`crate::compat`):
//! its keys, their defaults, their rules (loopback only, a group name, a client id) and the
//! local secret, read from `compat.client_secret_file` with the same rules as the DingTalk
//! secret file. The local secret is what apps present; the real one never leaves the daemon,
//! so the two must differ. Neither is ever printed.

use super::{Config, ConfigError};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the endpoint listens unless `compat.listen` says otherwise.
pub const DEFAULT_COMPAT_LISTEN: &str = "127.0.0.1:9470";
/// The consumer group SDK apps join unless `compat.group` says otherwise.
pub const DEFAULT_COMPAT_GROUP: &str = "sdk";

/// `compat:`: a DingTalk-compatible endpoint on a loopback address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compat {
    /// The HTTP and WebSocket listener (loopback only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The consumer group every SDK connection joins (a configured group).
    #[serde(default = "default_group")]
    pub group: String,
    /// The `clientId` / `appKey` local apps present.
    pub client_id: String,
    /// A file holding only the local secret apps present as `clientSecret` / `appSecret`.
    pub client_secret_file: PathBuf,
}

fn default_listen() -> SocketAddr {
    DEFAULT_COMPAT_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9470)))
}

fn default_group() -> String {
    DEFAULT_COMPAT_GROUP.to_owned()
}

impl Config {
    /// The configured groups plus the compat group (when compat is configured and the group
    /// is not listed already): the groups that keep messages before any member connects.
    pub fn configured_groups(&self) -> Vec<String> {
        let mut groups = self.groups.clone();
        if let Some(c) = &self.compat
            && !groups.contains(&c.group)
        {
            groups.push(c.group.clone());
        }
        groups
    }

    /// The `compat:` rules; errors name the key.
    pub(super) fn validate_compat(&self, file: &Path) -> Result<(), ConfigError> {
        let Some(c) = &self.compat else {
            return Ok(());
        };
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(file, key, msg));
        if !c.listen.ip().is_loopback() {
            return bad(
                "compat.listen",
                format!(
                    "{} is not a loopback address: the endpoint serves local apps only (use 127.0.0.1 or [::1])",
                    c.listen
                ),
            );
        }
        super::validate::check_group_name(file, "compat.group", &c.group)?;
        if c.client_id.trim().is_empty() {
            return bad("compat.client_id", "is empty".into());
        }
        if c.client_id.trim() != c.client_id {
            return bad(
                "compat.client_id",
                "has leading or trailing whitespace".into(),
            );
        }
        if c.client_secret_file.as_os_str().is_empty() {
            return bad("compat.client_secret_file", "is empty".into());
        }
        if self.metrics.as_ref().is_some_and(|m| m.listen == c.listen) {
            return bad(
                "compat.listen",
                "is the same address as metrics.listen".into(),
            );
        }
        Ok(())
    }
}

/// Reads the local secret of `compat` (when configured): one value, optionally followed by
/// one newline, no other whitespace, not empty, and not the DingTalk secret `real`.
pub(super) fn resolve_compat_secret(
    config: &Config,
    file: &Path,
    real: &Secret,
) -> Result<Option<Secret>, ConfigError> {
    let Some(c) = &config.compat else {
        return Ok(None);
    };
    let key = "compat.client_secret_file";
    let path = &c.client_secret_file;
    let read = super::private::read(path).map_err(|e| {
        ConfigError::invalid(file, key, format!("cannot read {}: {e}", path.display()))
    })?;
    if let Some(why) = super::private::too_open(path, read.mode, "the local secret of compat") {
        return Err(ConfigError::invalid(file, key, why));
    }
    let raw = read.text;
    let value = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if value.is_empty() {
        return Err(ConfigError::invalid(file, key, "the local secret is empty"));
    }
    if value.trim() != value {
        return Err(ConfigError::invalid(
            file,
            key,
            "the local secret has leading or trailing whitespace",
        ));
    }
    if value == real.expose() {
        return Err(ConfigError::invalid(
            file,
            key,
            "the local secret must differ from the DingTalk client secret (apps never get the real one)",
        ));
    }
    Ok(Some(Secret::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "dingtalk:\n  client_id: dingabc\n  client_secret: s3cret\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/x.yml"))
    }

    fn with_compat(keys: &str) -> String {
        format!("{MINIMAL}compat:\n{keys}")
    }

    #[test]
    fn defaults_and_the_group_is_configured() {
        let c = parse(&with_compat(
            "  client_id: local-app\n  client_secret_file: /etc/s\n",
        ))
        .unwrap();
        let compat = c.compat.as_ref().unwrap();
        assert_eq!(compat.listen.to_string(), DEFAULT_COMPAT_LISTEN);
        assert_eq!(compat.group, "sdk");
        assert_eq!(c.configured_groups(), vec!["sdk".to_string()]);
        let c = parse(&format!(
            "{}groups: [sdk, bot]\n",
            with_compat("  client_id: a\n  client_secret_file: /s\n")
        ))
        .unwrap();
        assert_eq!(c.configured_groups(), vec!["sdk".to_string(), "bot".into()]);
    }

    #[test]
    fn errors_name_the_key() {
        for (keys, key) in [
            (
                "  listen: 0.0.0.0:9470\n  client_id: a\n  client_secret_file: /s\n",
                "compat.listen",
            ),
            (
                "  listen: 192.168.1.2:9470\n  client_id: a\n  client_secret_file: /s\n",
                "compat.listen",
            ),
            (
                "  group: \"a b\"\n  client_id: a\n  client_secret_file: /s\n",
                "compat.group",
            ),
            (
                "  client_id: \" a\"\n  client_secret_file: /s\n",
                "compat.client_id",
            ),
        ] {
            let e = parse(&with_compat(keys)).unwrap_err().to_string();
            assert!(e.contains(key), "{keys}: {e}");
        }
        let e = parse(&with_compat("  client_secret_file: /s\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_id"), "{e}");
        parse(&with_compat(
            "  listen: \"[::1]:9\"\n  client_id: a\n  client_secret_file: /s\n",
        ))
        .unwrap();
    }

    #[test]
    fn the_local_secret_is_read_checked_and_never_the_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = Path::new("/etc/x.yml");
        let real = Secret::new("s3cret");
        let file = dir.path().join("compat_secret");
        let config = parse(&with_compat(&format!(
            "  client_id: a\n  client_secret_file: {}\n",
            file.display()
        )))
        .unwrap();
        let e = resolve_compat_secret(&config, f, &real)
            .unwrap_err()
            .to_string();
        assert!(e.contains("compat.client_secret_file: cannot read"), "{e}");
        let write = |text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("local\n", 0o640);
        let s = resolve_compat_secret(&config, f, &real).unwrap().unwrap();
        assert_eq!(s.expose(), "local");
        write("local\n", 0o644);
        let e = resolve_compat_secret(&config, f, &real)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("readable by every user") && e.contains("chmod 0640"),
            "{e}"
        );
        for bad in ["", " padded\n", "s3cret\n"] {
            write(bad, 0o600);
            let e = resolve_compat_secret(&config, f, &real)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("compat.client_secret_file") && !e.contains("padded"),
                "{e}"
            );
        }
        let none = parse(MINIMAL).unwrap();
        assert!(resolve_compat_secret(&none, f, &real).unwrap().is_none());
    }
}
