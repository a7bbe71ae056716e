//! Sinks: destinations beyond this host (`sinks:`). A sink is a durable reader of the spool,
//! like a consumer group: it is the one member of a configured group of its own
//! (`sink:nats`, `sink:webhook:<n>`, see [`crate::consumers::groups`]), so its position is
//! kept in the spool, it reads in `seq` order, its backlog is the group's, and what a spool
//! bound forces out before it was published is counted (and logged as an error) per sink. The
//! DingTalk ACK never waits for a sink: an outage of its destination only grows the spool.
//!
//! - [`nats`]: a NATS JetStream stream (async-nats): the connection, the stream (created when
//!   missing, checked when it exists); [`publish`]: the window of pipelined publishes.
//! - [`webhook`]: HTTP POSTs, one at a time per webhook.
//! - [`subject`]: the naming rules (subject, message key, body), pure and unit-tested.
//! - [`feed`]: a sink's membership in its group.
//!
//! A sink retries a failed delivery itself, with the reconnect backoff (`reconnect:`), in
//! order; its group never redelivers on `ack_wait` ([`GroupSettings::for_sink`]).
//!
//! [`GroupSettings::for_sink`]: crate::consumers::groups::GroupSettings::for_sink

pub mod feed;
mod nats;
mod publish;
pub mod subject;
mod webhook;

use crate::config::{ConfigError, Loaded, shown_url};
use crate::consumers::groups::{GroupRegistry, SINK_GROUP_PREFIX};
use crate::gateway::proxy::ProxySettings;
use crate::gateway::tls;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// PubAcks awaited at once by the NATS sink (its group's `in_flight`).
pub const NATS_WINDOW: usize = 256;
/// Lines a webhook sink holds ready (it still posts one at a time).
pub const WEBHOOK_WINDOW: usize = 16;
/// The NATS sink's name.
pub const NATS: &str = "nats";

/// A sink's live figures: written by its task, read by status without waiting.
#[derive(Debug, Default)]
pub struct SinkState {
    /// Connected to the destination now (NATS), or the last request succeeded (webhooks).
    pub connected: AtomicBool,
    /// Messages the destination confirmed since start (duplicates included).
    pub published: AtomicU64,
    /// Of those, the ones JetStream reported as duplicates (another host, or this one before a
    /// restart, had published them).
    pub duplicates: AtomicU64,
    /// Messages the destination can never take (larger than the server's max_payload),
    /// skipped and logged.
    pub rejected: AtomicU64,
    /// Failed attempts since start (each retried).
    pub failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SinkState {
    /// Records a failure; the message never holds a secret (see the callers).
    pub fn failed(&self, error: impl Into<String>) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_error(error);
    }

    /// The last error, for status.
    pub fn set_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.into());
    }

    /// The last error seen, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running sink, as status shows it.
#[derive(Debug, Clone)]
pub struct SinkInfo {
    /// `nats`, `webhook:0`, ...
    pub name: String,
    /// `nats` or `webhook`.
    pub kind: &'static str,
    /// Where it delivers, without credentials or query: the servers, or the URL.
    pub target: String,
    /// Its figures.
    pub state: Arc<SinkState>,
}

impl SinkInfo {
    /// Its group's name.
    pub fn group(&self) -> String {
        group_name(&self.name)
    }
}

/// The running sinks (none when `sinks:` is absent).
#[derive(Debug, Clone, Default)]
pub struct SinkSet {
    sinks: Arc<Vec<SinkInfo>>,
}

impl SinkSet {
    /// Each sink.
    pub fn iter(&self) -> impl Iterator<Item = &SinkInfo> {
        self.sinks.iter()
    }
}

/// The group a sink named `name` reads through.
pub fn group_name(name: &str) -> String {
    format!("{SINK_GROUP_PREFIX}{name}")
}

/// The sinks' groups and windows a config asks for: `(group, window)`.
pub fn groups(c: &crate::config::Sinks) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    if c.nats.is_some() {
        out.push((group_name(NATS), NATS_WINDOW));
    }
    for i in 0..c.webhooks.len() {
        out.push((group_name(&webhook_name(i)), WEBHOOK_WINDOW));
    }
    out
}

fn webhook_name(i: usize) -> String {
    format!("webhook:{i}")
}

/// How a sink retries: the reconnect settings.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// `reconnect.initial_delay`.
    pub initial: Duration,
    /// `reconnect.max_delay`.
    pub max: Duration,
    /// `reconnect.connect_timeout`: a NATS connection attempt, a JetStream request and a
    /// PubAck each wait at most this.
    pub timeout: Duration,
}

/// What the sinks need from the daemon.
pub struct Env {
    /// Where their groups live.
    pub groups: GroupRegistry,
    /// Stops them.
    pub shutdown: CancellationToken,
    /// Tracks their tasks.
    pub tasks: TaskTracker,
    /// A sink reports a config error found only at its destination (an existing stream
    /// whose subjects do not cover ours): the daemon stops with exit code 78.
    pub fatal: mpsc::UnboundedSender<ConfigError>,
}

/// This host's name, as the published body names it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Starts the configured sinks (their groups must be declared to the registry before it
/// starts: [`groups`]). Errors are config errors naming the key (a bad CA file).
pub fn start(loaded: &Loaded, env: Env) -> Result<SinkSet, ConfigError> {
    let c = &loaded.config;
    let file = loaded.path.as_path();
    let retry = Retry {
        initial: c.reconnect.initial_delay.get(),
        max: c.reconnect.max_delay.get(),
        timeout: c.reconnect.connect_timeout.get(),
    };
    let host = hostname();
    let mut sinks = Vec::new();
    if let Some(n) = &c.sinks.nats {
        let tls = tls::client_config(n.tls_ca_file.as_deref(), &[])
            .map_err(|e| tls_error(file, "sinks.nats.tls_ca_file", &e))?;
        let state = Arc::new(SinkState::default());
        sinks.push(SinkInfo {
            name: NATS.to_owned(),
            kind: "nats",
            target: n
                .url
                .iter()
                .map(|u| shown_url(u))
                .collect::<Vec<_>>()
                .join(","),
            state: state.clone(),
        });
        let sink = nats::Nats {
            cfg: n.clone(),
            secrets: loaded.sink_secrets.nats.clone(),
            client_id: c.dingtalk.client_id.clone(),
            host_json: serde_json::to_string(&host).unwrap_or_else(|_| "\"\"".into()),
            host: host.clone(),
            tls: (*tls).clone(),
            retry,
            state,
            fatal: env.fatal.clone(),
            file: file.to_owned(),
        };
        let (groups, shutdown) = (env.groups.clone(), env.shutdown.clone());
        env.tasks.spawn(sink.run(groups, shutdown));
    }
    if !c.sinks.webhooks.is_empty() {
        let http_tls = tls::client_config(c.tls.ca_file.as_deref(), &[b"http/1.1"])
            .map_err(|e| tls_error(file, "tls.ca_file", &e))?;
        let proxies = ProxySettings::from_env(c.proxy.clone());
        for (i, w) in c.sinks.webhooks.iter().enumerate() {
            let name = webhook_name(i);
            let state = Arc::new(SinkState::default());
            let client = webhook::client(w, &http_tls, &proxies).map_err(|e| {
                ConfigError::invalid(file, &format!("sinks.webhooks[{i}]"), e.to_string())
            })?;
            sinks.push(SinkInfo {
                name: name.clone(),
                kind: "webhook",
                target: w.shown_url(),
                state: state.clone(),
            });
            let sink = webhook::Webhook {
                name,
                cfg: w.clone(),
                secret: loaded.sink_secrets.webhooks.get(i).cloned().flatten(),
                client,
                retry,
                state,
            };
            let (groups, shutdown) = (env.groups.clone(), env.shutdown.clone());
            env.tasks.spawn(sink.run(groups, shutdown));
        }
    }
    Ok(SinkSet {
        sinks: Arc::new(sinks),
    })
}

fn tls_error(file: &Path, key: &str, e: &tls::TlsError) -> ConfigError {
    let message = match e {
        tls::TlsError::CaFile { path, reason } => format!("{}: {reason}", path.display()),
        other => other.to_string(),
    };
    ConfigError::invalid(file, key, message)
}
