//! Rules that serde cannot express: ranges, cross-field constraints, URL policy (plain http only
//! to loopback), and where the client secret comes from.

use super::units::MAX_SIZE;
use super::{ByteSize, Config, ConfigError, HumanDuration, SecretSource, SubscriptionKind};
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
        duration(file, "keepalive.ping_interval", k.ping_interval, HOUR)?;
        duration(file, "keepalive.pong_timeout", k.pong_timeout, HOUR)?;
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
            // The kernel takes whole seconds: 500ms would become 0, which it refuses.
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
        duration(file, "keepalive.tcp_user_timeout", k.tcp_user_timeout, DAY)?;

        let r = &self.reconnect;
        duration(file, "reconnect.initial_delay", r.initial_delay, HOUR)?;
        duration(file, "reconnect.max_delay", r.max_delay, DAY)?;
        duration(file, "reconnect.stable_after", r.stable_after, DAY)?;
        duration(
            file,
            "reconnect.connect_timeout",
            r.connect_timeout,
            10 * MINUTE,
        )?;
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
        size(file, "spool.max_bytes", s.max_bytes, MAX_SIZE)?;
        duration(file, "spool.max_age", s.max_age, MAX_DAYS * DAY)?;
        duration(file, "spool.dedupe_window", s.dedupe_window, 30 * DAY)?;

        for (i, g) in self.groups.iter().enumerate() {
            check_group_name(file, &format!("groups[{i}]"), g)?;
        }
        let c = &self.consumers;
        count(file, "consumers.in_flight", c.in_flight, 1_000_000)?;
        count(
            file,
            "consumers.max_deliveries",
            c.max_deliveries,
            1_000_000,
        )?;
        duration(file, "consumers.ack_wait", c.ack_wait, 7 * DAY)?;
        duration(file, "consumers.adhoc_ttl", c.adhoc_ttl, MAX_DAYS * DAY)?;
        for (i, cb) in self.callbacks.iter().enumerate() {
            check_group_name(file, &format!("callbacks[{i}].group"), &cb.group)?;
            // DingTalk waits for the ACK: a callback answered later than this is useless.
            duration(file, &format!("callbacks[{i}].timeout"), cb.timeout, MINUTE)?;
            if cb.topic.is_empty() {
                return bad(&format!("callbacks[{i}].topic"), "is empty".into());
            }
        }

        let l = &self.limits;
        size(file, "limits.max_frame_bytes", l.max_frame_bytes, 64 << 20)?;
        size(file, "limits.max_line_bytes", l.max_line_bytes, 64 << 20)?;
        size(
            file,
            "limits.max_pending_bytes",
            l.max_pending_bytes,
            16 << 30,
        )?;
        size(
            file,
            "limits.recent_cache_bytes",
            l.recent_cache_bytes,
            16 << 30,
        )?;
        count(file, "limits.max_consumers", l.max_consumers, 100_000)?;
        count(file, "limits.max_groups", l.max_groups, 10_000)?;
        count(
            file,
            "limits.max_listener_connections",
            l.max_listener_connections,
            100_000,
        )?;
        count(
            file,
            "limits.max_pending_acks",
            l.max_pending_acks,
            10_000_000,
        )?;
        duration(
            file,
            "limits.request_timeout",
            l.request_timeout,
            10 * MINUTE,
        )?;
        duration(file, "limits.commit_stall", l.commit_stall, DAY)?;
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
        self.sinks.validate(file)?;
        if let Some(n) = &self.sinks.nats {
            duration(file, "sinks.nats.duplicate_window", n.duplicate_window, DAY)?;
        }
        for (i, w) in self.sinks.webhooks.iter().enumerate() {
            duration(
                file,
                &format!("sinks.webhooks[{i}].timeout"),
                w.timeout,
                10 * MINUTE,
            )?;
        }
        if let Err(e) = check_log_level(&self.log.level) {
            return bad("log.level", e);
        }
        Ok(())
    }
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
/// The longest any duration may be (spool retention, ad-hoc group expiry), in days.
const MAX_DAYS: u64 = 3650;

/// `max_secs` as the config would write it: `10m`, `1h`, `30d`.
fn written(max_secs: u64) -> String {
    match max_secs {
        s if s % DAY == 0 => format!("{}d", s / DAY),
        s if s % HOUR == 0 => format!("{}h", s / HOUR),
        s if s % MINUTE == 0 => format!("{}m", s / MINUTE),
        s => format!("{s}s"),
    }
}

/// A duration must be greater than zero and at most `max_secs`: the bound keeps every later
/// addition to a clock far from overflowing, and catches a unit typed wrong.
fn duration(file: &Path, key: &str, d: HumanDuration, max_secs: u64) -> Result<(), ConfigError> {
    if d.get().is_zero() {
        return Err(ConfigError::invalid(file, key, "must be greater than zero"));
    }
    if d.get() > Duration::from_secs(max_secs) {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("must be at most {} (got {d})", written(max_secs)),
        ));
    }
    Ok(())
}

/// A size must be greater than zero and at most `max` bytes.
fn size(file: &Path, key: &str, b: ByteSize, max: u64) -> Result<(), ConfigError> {
    if b.get() == 0 {
        return Err(ConfigError::invalid(file, key, "must be greater than zero"));
    }
    if b.get() > max {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("must be at most {} (got {b})", ByteSize(max)),
        ));
    }
    Ok(())
}

/// A count must be at least 1 and at most `max`.
fn count(file: &Path, key: &str, n: u32, max: u32) -> Result<(), ConfigError> {
    if !(1..=max).contains(&n) {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("must be between 1 and {max} (got {n})"),
        ));
    }
    Ok(())
}

/// The level names `log.level` accepts, alone or after `target=`.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `log.level` is a level (`info`) or a comma-separated list of `RUST_LOG`-style directives,
/// each a level or `target=level`. A bare word that is not a level (`verbose`, `warnn`) is a
/// valid filter to `EnvFilter` (it names a target and silences everything else), so it is
/// refused here: it is always a typo.
pub(crate) fn check_log_level(level: &str) -> Result<(), String> {
    const HINT: &str = "write a level (error, warn, info, debug, trace, off) or directives such as \"info,dingtalk_streamd=debug\"";
    let is_level = |w: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w.trim()));
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("is empty; {HINT}"));
    }
    for d in directives {
        match d.rsplit_once('=') {
            None if is_level(d) => {}
            None => return Err(format!("{d:?} is not a log level; {HINT}")),
            Some((target, lvl)) if !target.trim().is_empty() && is_level(lvl) => {}
            Some(_) => {
                return Err(format!("{d:?} does not end in \"=LEVEL\"; {HINT}"));
            }
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("invalid filter {level:?}: {e}; {HINT}"))
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
        // Not echoed: a URL may carry a token in its query.
        .map_err(|e| ConfigError::invalid(file, key, format!("not a valid URL: {e}")))?;
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
        let key = "dingtalk.client_secret_file";
        let read = super::private::read(p).map_err(|e| {
            ConfigError::invalid(file, key, format!("cannot read {}: {e}", p.display()))
        })?;
        if let Some(why) = super::private::too_open(p, read.mode, "the client secret") {
            return Err(ConfigError::invalid(file, key, why));
        }
        let raw = read.text;
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
