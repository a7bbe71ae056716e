//! Rules that serde cannot express: ranges, cross-field constraints, URL policy (plain http only
//! to loopback), and where the client secret comes from.

use super::{Config, ConfigError, SecretSource, SubscriptionKind};
use crate::secret::Secret;
use std::path::Path;
use std::time::Duration;

/// Linux caps TCP_KEEPCNT at 127 and TCP_KEEPIDLE/TCP_KEEPINTVL at 32767 s.
const MAX_KEEPCNT: u32 = 127;
const MAX_KEEP_SECS: u64 = 32_767;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Checks every rule not expressed by the types; errors name the key path.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(file, key, msg));
        let d = &self.dingtalk;
        if d.client_id.trim().is_empty() {
            return Err(ConfigError::NotConfigured {
                file: file.to_owned(),
            });
        }
        if d.client_id.trim() != d.client_id {
            return bad(
                "dingtalk.client_id",
                "has leading or trailing whitespace; DingTalk rejects it with 401 authFailed"
                    .into(),
            );
        }
        if d.client_secret.is_some() && d.client_secret_file.is_some() {
            return bad(
                "dingtalk.client_secret",
                "both client_secret and client_secret_file are set; keep one".into(),
            );
        }
        check_url(file, "dingtalk.open_url", &d.open_url, &["https", "http"])?;
        if d.subscriptions.is_empty() {
            return bad(
                "dingtalk.subscriptions",
                "must list at least one subscription".into(),
            );
        }
        for (i, s) in d.subscriptions.iter().enumerate() {
            if s.kind == SubscriptionKind::Event && s.topic != "*" {
                return bad(
                    &format!("dingtalk.subscriptions[{i}].topic"),
                    format!(
                        "EVENT topic must be \"*\" (events are chosen in the developer console), got {:?}",
                        s.topic
                    ),
                );
            }
            if s.topic.is_empty() {
                return bad(
                    &format!("dingtalk.subscriptions[{i}].topic"),
                    "is empty".into(),
                );
            }
        }

        let k = &self.keepalive;
        positive(file, "keepalive.ping_interval", k.ping_interval.get())?;
        positive(file, "keepalive.pong_timeout", k.pong_timeout.get())?;
        if k.pong_timeout >= k.ping_interval {
            return bad(
                "keepalive.pong_timeout",
                format!(
                    "must be shorter than keepalive.ping_interval ({} >= {})",
                    k.pong_timeout, k.ping_interval
                ),
            );
        }
        for (key, v) in [
            ("keepalive.tcp_keepalive_idle", k.tcp_keepalive_idle.get()),
            (
                "keepalive.tcp_keepalive_interval",
                k.tcp_keepalive_interval.get(),
            ),
        ] {
            if v < Duration::from_secs(1) || v.as_secs() > MAX_KEEP_SECS {
                return bad(
                    key,
                    format!("must be between 1s and {MAX_KEEP_SECS}s (whole seconds)"),
                );
            }
        }
        if !(1..=MAX_KEEPCNT).contains(&k.tcp_keepalive_count) {
            return bad(
                "keepalive.tcp_keepalive_count",
                format!("must be between 1 and {MAX_KEEPCNT}"),
            );
        }
        positive(file, "keepalive.tcp_user_timeout", k.tcp_user_timeout.get())?;
        if k.tcp_user_timeout.get().as_millis() > u128::from(u32::MAX) {
            return bad("keepalive.tcp_user_timeout", "is too large".into());
        }

        let r = &self.reconnect;
        positive(file, "reconnect.initial_delay", r.initial_delay.get())?;
        positive(file, "reconnect.connect_timeout", r.connect_timeout.get())?;
        if r.max_delay < r.initial_delay {
            return bad(
                "reconnect.max_delay",
                format!(
                    "must be at least reconnect.initial_delay ({})",
                    r.initial_delay
                ),
            );
        }

        for (key, p) in [
            ("socket.path", &self.socket.path),
            ("control.path", &self.control.path),
        ] {
            let len = p.as_os_str().len();
            if len == 0 || len > MAX_SOCKET_PATH {
                return bad(
                    key,
                    format!("must be a path of 1 to {MAX_SOCKET_PATH} bytes"),
                );
            }
        }
        if self.socket.path == self.control.path {
            return bad("control.path", "must differ from socket.path".into());
        }

        let s = &self.spool;
        if s.dir.as_os_str().is_empty() {
            return bad("spool.dir", "is empty".into());
        }
        if s.max_bytes.get() < 1024 * 1024 {
            return bad("spool.max_bytes", "must be at least 1MiB".into());
        }
        positive(file, "spool.max_age", s.max_age.get())?;
        positive(file, "spool.dedupe_window", s.dedupe_window.get())?;

        for (i, g) in self.groups.iter().enumerate() {
            check_group_name(file, &format!("groups[{i}]"), g)?;
        }
        let c = &self.consumers;
        if c.in_flight == 0 {
            return bad("consumers.in_flight", "must be at least 1".into());
        }
        if c.max_deliveries == 0 {
            return bad("consumers.max_deliveries", "must be at least 1".into());
        }
        positive(file, "consumers.ack_wait", c.ack_wait.get())?;
        positive(file, "consumers.adhoc_ttl", c.adhoc_ttl.get())?;
        for (i, cb) in self.callbacks.iter().enumerate() {
            check_group_name(file, &format!("callbacks[{i}].group"), &cb.group)?;
            positive(file, &format!("callbacks[{i}].timeout"), cb.timeout.get())?;
            if cb.topic.is_empty() {
                return bad(&format!("callbacks[{i}].topic"), "is empty".into());
            }
        }

        let l = &self.limits;
        if l.max_frame_bytes.get() < 1024 {
            return bad("limits.max_frame_bytes", "must be at least 1KiB".into());
        }
        if l.max_line_bytes.get() < 1024 {
            return bad("limits.max_line_bytes", "must be at least 1KiB".into());
        }
        if l.max_consumers == 0 {
            return bad("limits.max_consumers", "must be at least 1".into());
        }
        for (key, n) in [
            ("limits.max_groups", l.max_groups),
            (
                "limits.max_listener_connections",
                l.max_listener_connections,
            ),
            ("limits.max_pending_acks", l.max_pending_acks),
        ] {
            if n == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        self.validate_compat(file)?;
        // The compat endpoint's group counts, and each sink reads the spool through a
        // configured group of its own.
        let configured = self.configured_groups().len();
        let sinks = self.sinks.len();
        if configured + sinks > l.max_groups as usize {
            return bad(
                "groups",
                format!(
                    "lists {} groups (the compat group included){}, more than limits.max_groups ({})",
                    configured,
                    if sinks > 0 {
                        format!(" and sinks: adds {sinks} (one group each)")
                    } else {
                        String::new()
                    },
                    l.max_groups
                ),
            );
        }
        if l.max_pending_bytes.get() < l.max_frame_bytes.get() {
            return bad(
                "limits.max_pending_bytes",
                format!(
                    "must be at least limits.max_frame_bytes ({})",
                    l.max_frame_bytes.get()
                ),
            );
        }
        if l.recent_cache_bytes.get() == 0 {
            return bad(
                "limits.recent_cache_bytes",
                "must be greater than zero".into(),
            );
        }
        positive(file, "limits.request_timeout", l.request_timeout.get())?;
        positive(file, "limits.commit_stall", l.commit_stall.get())?;
        self.sinks.validate(file)?;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return bad(
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            );
        }
        Ok(())
    }
}

fn positive(file: &Path, key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(file, key, "must be greater than zero"));
    }
    Ok(())
}

pub(super) fn check_group_name(file: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            file,
            key,
            format!("group name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

/// Accepts `https://` (or the given schemes); plain `http://`/`ws://` only for loopback hosts,
/// because TLS verification is never switched off.
pub(crate) fn check_url(
    file: &Path,
    key: &str,
    text: &str,
    schemes: &[&str],
) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| ConfigError::invalid(file, key, format!("invalid URL {text:?}: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("unsupported scheme {:?}", url.scheme()),
        ));
    }
    if matches!(url.scheme(), "http" | "ws") && !is_loopback(&url) {
        return Err(ConfigError::invalid(
            file,
            key,
            "plain http:// is allowed only for loopback addresses; use https://".to_string(),
        ));
    }
    Ok(url)
}

/// True for 127.0.0.0/8, ::1 and `localhost`.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Finds the secret: inline, `client_secret_file`, or `$CREDENTIALS_DIRECTORY/client_secret`.
pub(super) fn resolve_secret(
    config: &Config,
    file: &Path,
    credentials_dir: Option<&Path>,
) -> Result<(Secret, SecretSource), ConfigError> {
    let d = &config.dingtalk;
    let (raw, source, key) = if let Some(s) = &d.client_secret {
        (
            s.expose().to_owned(),
            SecretSource::Inline,
            "dingtalk.client_secret",
        )
    } else if let Some(p) = &d.client_secret_file {
        let raw = std::fs::read_to_string(p).map_err(|e| {
            ConfigError::invalid(
                file,
                "dingtalk.client_secret_file",
                format!("cannot read {}: {e}", p.display()),
            )
        })?;
        (
            raw,
            SecretSource::File(p.clone()),
            "dingtalk.client_secret_file",
        )
    } else if let Some(dir) = credentials_dir {
        let p = dir.join(super::CREDENTIAL_NAME);
        let raw = std::fs::read_to_string(&p).map_err(|e| {
            ConfigError::invalid(
                file,
                "dingtalk.client_secret",
                format!(
                    "not set, and the systemd credential {} cannot be read: {e}",
                    p.display()
                ),
            )
        })?;
        (raw, SecretSource::Credential(p), "dingtalk.client_secret")
    } else {
        return Err(ConfigError::invalid(
            file,
            "dingtalk.client_secret",
            "not set: give client_secret, client_secret_file, or the systemd credential \
             \"client_secret\" (LoadCredential=)",
        ));
    };
    // A file conventionally ends with one newline; anything else around the value is a mistake
    // DingTalk answers only with 401 authFailed (docs/protocol.md §1.2), so say it here instead.
    let value = match source {
        SecretSource::Inline => raw.as_str(),
        _ => raw
            .strip_suffix("\r\n")
            .or_else(|| raw.strip_suffix('\n'))
            .unwrap_or(&raw),
    };
    if value.is_empty() {
        return Err(ConfigError::invalid(
            file,
            key,
            "the client secret is empty",
        ));
    }
    if value.trim() != value {
        return Err(ConfigError::invalid(
            file,
            key,
            "the client secret has leading or trailing whitespace; DingTalk rejects it with 401 authFailed",
        ));
    }
    Ok((Secret::new(value), source))
}
