//! `sinks:`: destinations beyond this host (a NATS JetStream stream, HTTP webhooks). The typed
//! keys with their defaults, the rules serde cannot express (URL policy, names, which
//! credentials go together), and the secret files, read at load: their contents never reach a
//! log line, an error, status or `check-config` (they are [`Secret`]s).

use super::{ConfigError, HumanDuration, check_url};
use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// Default `sinks.nats.stream`.
pub const DEFAULT_STREAM: &str = "DINGTALK";
/// Default `sinks.nats.subject_prefix`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "dingtalk";
/// Default `sinks.nats.duplicate_window`.
pub const DEFAULT_DUPLICATE_WINDOW: HumanDuration = HumanDuration::from_secs(600);
/// Default `sinks.webhooks[].timeout`.
pub const DEFAULT_WEBHOOK_TIMEOUT: HumanDuration = HumanDuration::from_secs(5);

/// `sinks:`: optional destinations, each a durable reader of the spool.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sinks {
    /// A NATS JetStream stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSink>,
    /// HTTP webhooks, each its own sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSink>,
}

impl Sinks {
    /// True when no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.nats.is_none() && self.webhooks.is_empty()
    }

    /// How many sinks there are.
    pub fn len(&self) -> usize {
        usize::from(self.nats.is_some()) + self.webhooks.len()
    }
}

/// `sinks.nats:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSink {
    /// One server URL, or a list (`nats://`, `tls://`).
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// The JetStream stream, created when missing.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects are `<subject_prefix>.<client_id>.<kind>.<topic>`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// The stream's duplicate window when the daemon creates it.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: HumanDuration,
    /// A NATS `.creds` file (user JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A file holding only a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A user name (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file holding only the user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) the servers' certificates chain to; TLS is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

/// One `sinks.webhooks:` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    /// Where to POST (https anywhere, http only to loopback). Printed by `check-config`
    /// with its query redacted (it may carry a token).
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// Topics posted (`*`: all); an event also matches by its event type.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// Bound on one request.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// A file holding only the HMAC-SHA256 key for `X-Dingtalk-Streamd-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_owned()
}

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_owned()
}

fn default_duplicate_window() -> HumanDuration {
    DEFAULT_DUPLICATE_WINDOW
}

fn default_webhook_timeout() -> HumanDuration {
    DEFAULT_WEBHOOK_TIMEOUT
}

fn all_topics() -> Vec<String> {
    vec!["*".to_owned()]
}

/// `url: nats://a:4222` or `url: [nats://a:4222, nats://b:4222]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    match Urls::deserialize(d)? {
        Urls::One(u) => Ok(vec![u]),
        Urls::Many(v) => Ok(v),
    }
}

/// The secrets the sinks read from files at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkSecrets {
    /// `sinks.nats`' credentials.
    pub nats: NatsSecrets,
    /// Each webhook's `secret_file` contents, by index.
    pub webhooks: Vec<Option<Secret>>,
}

/// What `sinks.nats` authenticates with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsSecrets {
    /// The `.creds` file's contents.
    pub credentials: Option<Secret>,
    /// The token.
    pub token: Option<Secret>,
    /// The password (for `user`).
    pub password: Option<Secret>,
}

/// True for 127.0.0.0/8, ::1 and `localhost` (a `nats://` URL's host is opaque to the URL
/// parser, so it is read here).
fn loopback_host(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The characters of a subject token or a stream name we accept.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

impl Sinks {
    /// The rules on `sinks:`; errors name the key.
    pub(super) fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if let Some(n) = &self.nats {
            n.validate(file)?;
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate(file, &format!("sinks.webhooks[{i}]"))?;
        }
        Ok(())
    }
}

impl NatsSink {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(file, key, msg));
        if self.url.is_empty() {
            return bad("sinks.nats.url", "must name at least one server".into());
        }
        for (i, text) in self.url.iter().enumerate() {
            let key = if self.url.len() == 1 {
                "sinks.nats.url".to_owned()
            } else {
                format!("sinks.nats.url[{i}]")
            };
            let url = reqwest::Url::parse(text)
                .map_err(|e| ConfigError::invalid(file, &key, format!("not a valid URL: {e}")))?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return bad(
                    &key,
                    format!(
                        "unsupported scheme {:?}: use nats:// or tls://",
                        url.scheme()
                    ),
                );
            }
            if !url.username().is_empty() || url.password().is_some() {
                return bad(
                    &key,
                    "must not carry credentials: use sinks.nats.user with password_file, token_file or credentials_file".into(),
                );
            }
            if url.host_str().is_none_or(str::is_empty) {
                return bad(&key, "names no host".into());
            }
            if url.scheme() == "nats" && self.tls_ca_file.is_none() && !loopback_host(&url) {
                return bad(
                    &key,
                    "plain nats:// is allowed only for loopback addresses; use tls:// (and sinks.nats.tls_ca_file for a private CA)".into(),
                );
            }
        }
        if self.stream.is_empty()
            || self.stream.len() > 255
            || !self.stream.chars().all(is_name_char)
        {
            return bad(
                "sinks.nats.stream",
                format!(
                    "stream name {:?} must be 1-255 characters of A-Z a-z 0-9 _ -",
                    self.stream
                ),
            );
        }
        let p = &self.subject_prefix;
        if p.is_empty()
            || p.split('.')
                .any(|t| t.is_empty() || !t.chars().all(is_name_char))
        {
            return bad(
                "sinks.nats.subject_prefix",
                format!(
                    "{p:?} must be dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards, no empty tokens)"
                ),
            );
        }
        if self.duplicate_window.get().is_zero() {
            return bad(
                "sinks.nats.duplicate_window",
                "must be greater than zero".into(),
            );
        }
        let auths = [
            self.credentials_file.is_some(),
            self.token_file.is_some(),
            self.user.is_some() || self.password_file.is_some(),
        ];
        if auths.iter().filter(|a| **a).count() > 1 {
            return bad(
                "sinks.nats",
                "give one way to authenticate: credentials_file, token_file, or user with password_file".into(),
            );
        }
        match (&self.user, &self.password_file) {
            (Some(u), Some(_)) if u.is_empty() => bad("sinks.nats.user", "is empty".into()),
            (Some(_), None) => bad(
                "sinks.nats.password_file",
                "is required with sinks.nats.user".into(),
            ),
            (None, Some(_)) => bad(
                "sinks.nats.user",
                "is required with sinks.nats.password_file".into(),
            ),
            _ => Ok(()),
        }
    }
}

impl WebhookSink {
    fn validate(&self, file: &Path, at: &str) -> Result<(), ConfigError> {
        let key = format!("{at}.url");
        let url = check_url(file, &key, &self.url, &["https", "http"])?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::invalid(
                file,
                &key,
                "must not carry credentials; use secret_file to sign the requests",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                file,
                &format!("{at}.topics"),
                "must list topics (\"*\" for all), none empty",
            ));
        }
        if self.timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                file,
                &format!("{at}.timeout"),
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The URL for logs and status: scheme, host, port and path; never a query (it may carry
    /// a token).
    pub fn shown_url(&self) -> String {
        shown_url(&self.url)
    }
}

/// A URL for `check-config`'s printout: a query and credentials are replaced by `redacted`
/// (it still parses, and names where it posts).
fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.query().is_some() {
                u.set_query(Some("redacted"));
            }
            mask_path(&mut u, "redacted");
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
            }
            u.set_fragment(None);
            s.serialize_str(u.as_str())
        }
        Err(_) => s.serialize_str("(invalid URL)"),
    }
}

/// Keeps the first path segment only: webhook services put their token in the path
/// (`/services/T0/B0/XXXX`, `/api/webhooks/ID/TOKEN`), so the rest becomes `mark`.
fn mask_path(u: &mut reqwest::Url, mark: &str) {
    let segments: Vec<String> = match u.path_segments() {
        Some(s) => s.map(str::to_owned).collect(),
        None => return,
    };
    if segments.len() > 1 {
        u.set_path(&format!("/{}/{mark}", segments[0]));
    }
}

/// A URL without its query, fragment and credentials, and with no more than its first path
/// segment, for logs and status.
pub fn shown_url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            mask_path(&mut u, "…");
            u.to_string()
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// Reads the sinks' secret files (after validation). A password, token or webhook secret file
/// holds only the value (one trailing newline is dropped); a `.creds` file is used as it is.
pub(super) fn resolve_sink_secrets(sinks: &Sinks, file: &Path) -> Result<SinkSecrets, ConfigError> {
    let mut out = SinkSecrets::default();
    if let Some(n) = &sinks.nats {
        if let Some(p) = &n.credentials_file {
            let raw = read(file, "sinks.nats.credentials_file", p)?;
            // Parsed as the client will: the user JWT and the NKey seed (errors never show
            // the contents).
            if async_nats::ConnectOptions::with_credentials(&raw).is_err() {
                return Err(ConfigError::invalid(
                    file,
                    "sinks.nats.credentials_file",
                    format!(
                        "{} is not a usable NATS .creds file (cannot read its user JWT and NKey seed)",
                        p.display()
                    ),
                ));
            }
            out.nats.credentials = Some(Secret::new(raw));
        }
        if let Some(p) = &n.token_file {
            out.nats.token = Some(value(file, "sinks.nats.token_file", p)?);
        }
        if let Some(p) = &n.password_file {
            out.nats.password = Some(value(file, "sinks.nats.password_file", p)?);
        }
    }
    for (i, w) in sinks.webhooks.iter().enumerate() {
        let secret = match &w.secret_file {
            Some(p) => Some(value(file, &format!("sinks.webhooks[{i}].secret_file"), p)?),
            None => None,
        };
        out.webhooks.push(secret);
    }
    Ok(out)
}

/// A secret file's contents; refused when every user may read or write it.
fn read(file: &Path, key: &str, p: &Path) -> Result<String, ConfigError> {
    let c = super::private::read(p).map_err(|e| {
        ConfigError::invalid(file, key, format!("cannot read {}: {e}", p.display()))
    })?;
    if let Some(why) = super::private::too_open(p, c.mode, &format!("the secret of {key}")) {
        return Err(ConfigError::invalid(file, key, why));
    }
    Ok(c.text)
}

/// A file holding one value: one trailing newline is dropped; empty or padded values are
/// refused (never printed).
fn value(file: &Path, key: &str, p: &Path) -> Result<Secret, ConfigError> {
    let raw = read(file, key, p)?;
    let v = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if v.is_empty() {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("{} is empty", p.display()),
        ));
    }
    if v.trim() != v {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("{} has leading or trailing whitespace", p.display()),
        ));
    }
    Ok(Secret::new(v))
}

#[cfg(test)]
#[path = "sinks_tests.rs"]
mod tests;
