//! The typed configuration (the README's configuration table): serde structs with `deny_unknown_fields`, defaults as
//! named constants, [`Config::load`] = parse + [`validate`](Config::validate) + secret
//! resolution. Every error names the file and line (and column), or the key path for
//! cross-field rules.

mod compat;
mod error;
mod instance;
mod locate;
mod private;
mod sinks;
mod units;
mod validate;
pub(crate) use validate::{check_url, is_loopback};

pub use sinks::{
    DEFAULT_DUPLICATE_WINDOW, DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, DEFAULT_WEBHOOK_TIMEOUT,
    NatsSecrets, NatsSink, SinkSecrets, Sinks, WebhookSink, shown_url,
};

pub use compat::{Compat, DEFAULT_COMPAT_GROUP, DEFAULT_COMPAT_LISTEN};
pub use error::ConfigError;
pub use instance::Instance;
pub use units::{ByteSize, FileMode, HumanDuration};

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the packaged daemon reads its config.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dingtalk-streamd/config.yml";
/// DingTalk's production ticket endpoint (docs/protocol.md §1.1).
pub const DEFAULT_OPEN_URL: &str = "https://api.dingtalk.com/v1.0/gateway/connections/open";
/// The consumer socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/dingtalk-streamd/stream.sock";
/// The control socket.
pub const DEFAULT_CONTROL_PATH: &str = "/run/dingtalk-streamd/control.sock";
/// The spool directory (systemd `StateDirectory=`).
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/dingtalk-streamd";
/// The systemd credential name that may carry the secret.
pub const CREDENTIAL_NAME: &str = "client_secret";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Credentials, endpoint and subscriptions.
    pub dingtalk: DingTalk,
    /// Extra trust anchors.
    #[serde(default)]
    pub tls: Tls,
    /// HTTP CONNECT proxy for the ticket request and the WebSocket; env vars when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyUrl>,
    /// Liveness of the DingTalk connection.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Reconnect policy.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// The consumer socket.
    #[serde(default)]
    pub socket: SocketConfig,
    /// The control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// The durable spool.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Consumer groups that keep messages before their first member ever connects.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Per-member limits of consumer groups.
    #[serde(default)]
    pub consumers: Consumers,
    /// CALLBACK topics whose ACK carries a consumer's response.
    #[serde(default)]
    pub callbacks: Vec<CallbackRoute>,
    /// Bounds on everything that comes from outside.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Optional Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Optional local DingTalk-compatible endpoint for unmodified SDK apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat: Option<Compat>,
    /// Optional destinations beyond this host (NATS JetStream, webhooks).
    #[serde(default, skip_serializing_if = "Sinks::is_empty")]
    pub sinks: Sinks,
}

/// `dingtalk:` — who we are to DingTalk and what we subscribe to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DingTalk {
    /// AppKey / SuiteKey.
    pub client_id: String,
    /// The secret inline (discouraged: prefer a file or the systemd credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// A file holding only the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The `connections/open` endpoint.
    #[serde(default = "default_open_url")]
    pub open_url: String,
    /// What to subscribe to.
    #[serde(default = "default_subscriptions")]
    pub subscriptions: Vec<Subscription>,
}

/// One `{type, topic}` subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// `EVENT` or `CALLBACK`.
    #[serde(rename = "type")]
    pub kind: SubscriptionKind,
    /// A CALLBACK topic, or `*` for EVENT (the only allowed EVENT topic).
    pub topic: String,
}

/// The two subscribable push types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SubscriptionKind {
    /// Events chosen in the developer console.
    Event,
    /// Bot messages, card callbacks, ...
    Callback,
}

fn default_open_url() -> String {
    DEFAULT_OPEN_URL.to_owned()
}

fn default_subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            kind: SubscriptionKind::Callback,
            topic: "/v1.0/im/bot/messages/get".into(),
        },
        Subscription {
            kind: SubscriptionKind::Event,
            topic: "*".into(),
        },
    ]
}

/// `tls:`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of CAs trusted in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A proxy URL; its credentials are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(pub reqwest::Url);

impl ProxyUrl {
    /// The URL as text with any password replaced, for logs and `check-config`.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl ProxyUrl {
    /// Parses the `proxy` value: an `http://` URL (HTTP CONNECT), credentials allowed.
    pub fn parse(s: &str) -> Result<ProxyUrl, String> {
        let url = reqwest::Url::parse(s.trim()).map_err(|e| {
            format!("invalid proxy URL ({e}); write e.g. http://proxy.example:3128")
        })?;
        if url.scheme() != "http" {
            return Err(format!(
                "unsupported proxy scheme {:?}: only http:// (HTTP CONNECT) proxies are supported",
                url.scheme()
            ));
        }
        Ok(ProxyUrl(url))
    }
}

/// A visitor, so that an error carries the value's own line (see `units.rs`).
impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ProxyUrl;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a proxy URL such as http://proxy.example:3128")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ProxyUrl, E> {
                ProxyUrl::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for ProxyUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// `keepalive:` — how fast a dead connection is noticed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// WebSocket ping period.
    pub ping_interval: HumanDuration,
    /// A ping unanswered this long (and no other frame) means the connection is dead.
    pub pong_timeout: HumanDuration,
    /// TCP_KEEPIDLE: the backstop for an idle link.
    pub tcp_keepalive_idle: HumanDuration,
    /// TCP_KEEPINTVL.
    pub tcp_keepalive_interval: HumanDuration,
    /// TCP_KEEPCNT.
    pub tcp_keepalive_count: u32,
    /// TCP_USER_TIMEOUT: unacknowledged data older than this kills the socket (without it a
    /// busy, black-holed link is noticed only after ~15 min).
    pub tcp_user_timeout: HumanDuration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            ping_interval: HumanDuration::from_secs(10),
            pong_timeout: HumanDuration::from_secs(5),
            tcp_keepalive_idle: HumanDuration::from_secs(15),
            tcp_keepalive_interval: HumanDuration::from_secs(5),
            tcp_keepalive_count: 3,
            tcp_user_timeout: HumanDuration::from_secs(30),
        }
    }
}

/// `reconnect:` — the supervisor's backoff.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    /// First backoff ceiling; also the jitter range of the first retry after a drop.
    pub initial_delay: HumanDuration,
    /// Backoff cap.
    pub max_delay: HumanDuration,
    /// A connection up this long resets the backoff.
    pub stable_after: HumanDuration,
    /// Bound on each stage: ticket request, TCP, TLS, WebSocket upgrade.
    pub connect_timeout: HumanDuration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: HumanDuration::from_secs(1),
            max_delay: HumanDuration::from_secs(60),
            stable_after: HumanDuration::from_secs(30),
            connect_timeout: HumanDuration::from_secs(10),
        }
    }
}

/// `socket:` — where consumers connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// Path of the stream socket.
    pub path: PathBuf,
    /// Mode applied when the daemon binds the socket itself.
    pub mode: FileMode,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: DEFAULT_SOCKET_PATH.into(),
            mode: FileMode(0o660),
        }
    }
}

/// `control:` — the status socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket.
    pub path: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            path: DEFAULT_CONTROL_PATH.into(),
        }
    }
}

/// `spool:` — the durable store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the SQLite database.
    pub dir: PathBuf,
    /// Bound on messages plus dedupe keys.
    pub max_bytes: ByteSize,
    /// Bound on a message's age.
    pub max_age: HumanDuration,
    /// How long a redelivery is recognised.
    pub dedupe_window: HumanDuration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: DEFAULT_SPOOL_DIR.into(),
            max_bytes: ByteSize::gib(1),
            max_age: HumanDuration::from_secs(7 * 86400),
            dedupe_window: HumanDuration::from_secs(3600),
        }
    }
}

/// `consumers:` — group member limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Consumers {
    /// Unacked messages per member.
    pub in_flight: u32,
    /// An unacked message is given again after this.
    pub ack_wait: HumanDuration,
    /// Deliveries before a message is parked.
    pub max_deliveries: u32,
    /// A hello may name a group not listed in `groups`; when false it is refused
    /// (`unknown_group`).
    pub adhoc_groups: bool,
    /// An ad-hoc group with no member this long is removed and its backlog released.
    pub adhoc_ttl: HumanDuration,
}

impl Default for Consumers {
    fn default() -> Self {
        Consumers {
            in_flight: 100,
            ack_wait: HumanDuration::from_secs(60),
            max_deliveries: 10,
            adhoc_groups: true,
            adhoc_ttl: HumanDuration::from_secs(24 * 3600),
        }
    }
}

/// One `callbacks:` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRoute {
    /// The CALLBACK topic.
    pub topic: String,
    /// The group whose member answers.
    pub group: String,
    /// How long the ACK waits for the answer.
    #[serde(default = "default_callback_timeout")]
    pub timeout: HumanDuration,
}

fn default_callback_timeout() -> HumanDuration {
    HumanDuration::from_secs(3)
}

/// `limits:` — bounds on input.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket frame or message accepted.
    pub max_frame_bytes: ByteSize,
    /// Longest consumer line accepted.
    pub max_line_bytes: ByteSize,
    /// Consumer connections at once.
    pub max_consumers: u32,
    /// Consumer groups at once, configured and ad-hoc; a hello beyond gets `too_many_groups`.
    pub max_groups: u32,
    /// Connections per listener (metrics, control); at the cap the oldest connection that
    /// has not sent a whole request is closed to make room.
    pub max_listener_connections: u32,
    /// A metrics or control client must send its request within this.
    pub request_timeout: HumanDuration,
    /// Frames read but not yet durable: above it the reader pauses (TCP pushes back).
    pub max_pending_acks: u32,
    /// The same bound in bytes.
    pub max_pending_bytes: ByteSize,
    /// Frames waiting and no commit this long: only then the connection is given up.
    pub commit_stall: HumanDuration,
    /// Committed messages kept in memory for fan-out; older ones are read back from the spool.
    pub recent_cache_bytes: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: ByteSize::mib(1),
            max_line_bytes: ByteSize::mib(1),
            max_consumers: 64,
            max_groups: 64,
            max_listener_connections: 64,
            request_timeout: HumanDuration::from_secs(1),
            max_pending_acks: 10_000,
            max_pending_bytes: ByteSize::mib(64),
            commit_stall: HumanDuration::from_secs(30),
            recent_cache_bytes: ByteSize::mib(16),
        }
    }
}

/// `log:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level or RUST_LOG-style filter list.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// `metrics:`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address of the Prometheus text endpoint.
    pub listen: SocketAddr,
}

/// Where the client secret came from (shown by `check-config`, never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `dingtalk.client_secret`.
    Inline,
    /// `dingtalk.client_secret_file`.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/client_secret`.
    Credential(PathBuf),
}

/// A validated config together with its resolved secret.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed, validated file.
    pub config: Config,
    /// The secret to send to `connections/open`.
    pub secret: Secret,
    /// Where it came from.
    pub secret_source: SecretSource,
    /// The local secret SDK apps present to `compat:` (from `compat.client_secret_file`).
    pub compat_secret: Option<Secret>,
    /// The file it was read from.
    pub path: PathBuf,
    /// The sinks' secret files, read at load.
    pub sink_secrets: SinkSecrets,
    /// The instance it runs as (`--instance`): a reload reads the file as that instance again.
    pub instance: Option<Instance>,
}

impl Config {
    /// Parses YAML text; `file` is used in error messages only.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::parse_as(text, file, None)
    }

    /// [`Config::parse`] for an instance: paths left at the single-app defaults become the
    /// instance's ([`Instance::apply`]) before validation.
    pub fn parse_as(
        text: &str,
        file: &Path,
        instance: Option<&Instance>,
    ) -> Result<Config, ConfigError> {
        if text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---"
        }) {
            return Err(ConfigError::NotConfigured {
                file: file.to_owned(),
            });
        }
        let mut config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::from_yaml(file, text, e))?;
        if let Some(i) = instance {
            i.apply(&mut config);
        }
        config.validate(file).map_err(|e| e.located(text))?;
        Ok(config)
    }

    /// Reads, parses, validates and resolves the secret (inline, file, or systemd credential).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        Config::load_as(path, None)
    }

    /// [`Config::load`] for an instance (see [`Config::parse_as`]).
    pub fn load_as(path: &Path, instance: Option<&Instance>) -> Result<Loaded, ConfigError> {
        let private::Contents { text, mode } =
            private::read(path).map_err(|source| ConfigError::Read {
                file: path.to_owned(),
                source,
            })?;
        let config = Config::parse_as(&text, path, instance)?;
        if let Some(message) = private::world_writable(path, mode) {
            return Err(ConfigError::Unsafe {
                file: path.to_owned(),
                message,
            });
        }
        if config.dingtalk.client_secret.is_some()
            && let Some(why) = private::too_open(path, mode, "the client secret inline")
        {
            let message = format!("{why}, or move the secret to dingtalk.client_secret_file");
            return Err(
                ConfigError::invalid(path, "dingtalk.client_secret", message).located(&text),
            );
        }
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let (secret, secret_source) =
            validate::resolve_secret(&config, path, credentials_dir.as_deref())
                .map_err(|e| e.located(&text))?;
        let compat_secret =
            compat::resolve_compat_secret(&config, path, &secret).map_err(|e| e.located(&text))?;
        let sink_secrets =
            sinks::resolve_sink_secrets(&config.sinks, path).map_err(|e| e.located(&text))?;
        Ok(Loaded {
            config,
            secret,
            secret_source,
            compat_secret,
            path: path.to_owned(),
            sink_secrets,
            instance: instance.cloned(),
        })
    }

    /// The effective config as YAML, every secret redacted.
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
