//! The NATS JetStream sink: the connection (async-nats reconnects by itself, with the
//! reconnect backoff; its events drive `connected` in status), the stream (created when missing
//! with subjects `<subject_prefix>.>`, file storage and `duplicate_window`; an existing one is
//! used as it is, but its subjects must cover ours, else the daemon stops with exit code 78),
//! and then the publishing window ([`super::publish`]). Credentials go to the client only:
//! they are in no option that is logged, and errors from the client never carry them.

use super::feed::Feed;
use super::publish::{End, Naming, Publisher};
use super::subject;
use super::{NATS_WINDOW, Retry, SinkState, group_name};
use crate::config::{ConfigError, NatsSecrets, NatsSink};
use crate::consumers::groups::GroupRegistry;
use crate::supervisor::backoff::Backoff;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode, stream};
use async_nats::{ConnectOptions, Event};
use rand::RngExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// PubAck futures the client holds at most (the window, plus those dropped by a retry until
/// their timeout).
const MAX_ACK_INFLIGHT: usize = 16 * NATS_WINDOW;

/// The NATS sink, ready to run.
pub(super) struct Nats {
    pub cfg: NatsSink,
    pub secrets: NatsSecrets,
    pub client_id: String,
    pub host_json: String,
    pub host: String,
    pub tls: rustls::ClientConfig,
    pub retry: Retry,
    pub state: Arc<SinkState>,
    pub fatal: mpsc::UnboundedSender<ConfigError>,
    /// The config file, for errors.
    pub file: PathBuf,
}

/// Why the stream cannot be used.
enum Setup {
    /// The configuration does not fit the server: the daemon stops.
    Fatal(ConfigError),
    /// Try again after the backoff.
    Retry(String),
}

impl Nats {
    /// Connects, makes sure of the stream, and publishes until `shutdown`.
    pub async fn run(self, groups: GroupRegistry, shutdown: CancellationToken) {
        let (connected_tx, connected) = watch::channel(false);
        let options = match self.options(connected_tx) {
            Ok(o) => o,
            Err(e) => {
                let _ = self.fatal.send(e);
                return;
            }
        };
        // Returns at once (retry_on_initial_connect): the first connection, like every
        // reconnection, happens in the background.
        let client = match options.connect(self.cfg.url.as_slice()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.fatal.send(ConfigError::invalid(
                    &self.file,
                    "sinks.nats.url",
                    format!("cannot use the servers: {e}"),
                ));
                return;
            }
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(self.retry.timeout)
            .ack_timeout(self.retry.timeout)
            .max_ack_inflight(MAX_ACK_INFLIGHT)
            .build(client);
        let mut backoff = Backoff::new(self.retry.initial, self.retry.max);
        let group = group_name(super::NATS);
        let Some(mut feed) =
            Feed::join(&groups, &group, NATS_WINDOW, backoff.clone(), &shutdown).await
        else {
            return;
        };
        let naming = Naming {
            prefix: self.cfg.subject_prefix.clone(),
            client_id: self.client_id.clone(),
            host_json: self.host_json.clone(),
        };
        let mut publisher = Publisher::new(
            naming,
            NATS_WINDOW,
            connected.clone(),
            self.state.clone(),
            backoff.clone(),
        );
        loop {
            if !self
                .ensure_stream(&js, connected.clone(), &mut backoff, &shutdown)
                .await
            {
                return;
            }
            match publisher.run(&js, &mut feed, &shutdown).await {
                End::Stop => return,
                End::StreamMissing => {
                    warn!(stream = %self.cfg.stream, "the JetStream stream has gone: creating it again");
                }
            }
        }
    }

    /// The client's options: name, timeouts, reconnects with the backoff, events, TLS, auth.
    fn options(&self, connected: watch::Sender<bool>) -> Result<ConnectOptions, ConfigError> {
        let state = self.state.clone();
        let (initial, max) = (self.retry.initial, self.retry.max);
        let mut o = ConnectOptions::new()
            .name(format!("dingtalk-streamd {}", self.host))
            .connection_timeout(self.retry.timeout)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Only the configured servers: a cluster's advertised peers may be off loopback,
            // where plain nats:// (and the credentials in its CONNECT) is not allowed.
            .ignore_discovered_servers()
            .reconnect_delay_callback(move |attempts| reconnect_delay(initial, max, attempts))
            .event_callback(move |event| {
                on_event(&state, &connected, &event);
                async {}
            })
            .tls_client_config(self.tls.clone());
        let tls_url = self.cfg.url.iter().any(|u| u.starts_with("tls://"));
        if tls_url || self.cfg.tls_ca_file.is_some() {
            o = o.require_tls(true);
        }
        let s = &self.secrets;
        if let Some(creds) = &s.credentials {
            o = o.credentials(creds.expose()).map_err(|_| {
                ConfigError::invalid(
                    &self.file,
                    "sinks.nats.credentials_file",
                    "not a usable .creds file (cannot read its user JWT and NKey seed)",
                )
            })?;
        } else if let Some(token) = &s.token {
            o = o.token(token.expose().to_owned());
        } else if let (Some(user), Some(password)) = (&self.cfg.user, &s.password) {
            o = o.user_and_password(user.clone(), password.expose().to_owned());
        }
        Ok(o)
    }

    /// Waits for a connection, then finds the stream (checking its subjects) or creates it.
    /// False when the daemon stops first, or the stream cannot fit the config (reported as
    /// fatal).
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        mut connected: watch::Receiver<bool>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = connected.wait_for(|c| *c) => if r.is_err() { return false },
            }
            let setup = tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = self.check_or_create(js) => r,
            };
            match setup {
                Ok(created) => {
                    info!(stream = %self.cfg.stream, created, "JetStream stream ready; publishing");
                    backoff.reset();
                    return true;
                }
                Err(Setup::Fatal(e)) => {
                    error!(error = %e, "the NATS sink cannot use the stream");
                    self.state.set_error(e.to_string());
                    let _ = self.fatal.send(e);
                    return false;
                }
                Err(Setup::Retry(why)) => {
                    let wait = backoff.next_delay(None, &mut rand::rng());
                    warn!(stream = %self.cfg.stream, error = %why, retry_in = ?wait, "JetStream stream not ready; trying again");
                    self.state.failed(why);
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// `Ok(true)` when the stream was created, `Ok(false)` when it existed and covers ours.
    async fn check_or_create(&self, js: &jetstream::Context) -> Result<bool, Setup> {
        let name = &self.cfg.stream;
        let need = subject::required(&self.cfg.subject_prefix, &self.client_id);
        match js.get_stream(name).await {
            Ok(s) => {
                let have = &s.cached_info().config.subjects;
                if subject::all_covered(have, &need) {
                    return Ok(false);
                }
                return Err(Setup::Fatal(ConfigError::invalid(
                    &self.file,
                    "sinks.nats.stream",
                    format!(
                        "the existing stream {name:?} has subjects {have:?}, which do not cover {} and {}: add \"{}.>\" to its subjects, or set sinks.nats.stream or sinks.nats.subject_prefix to fit it",
                        need[0], need[1], self.cfg.subject_prefix
                    ),
                )));
            }
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {}
            Err(e) => return Err(Setup::Retry(format!("looking up stream {name:?}: {e}"))),
        }
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", self.cfg.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: self.cfg.duplicate_window.get(),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => {
                info!(stream = %name, subjects = %format!("{}.>", self.cfg.subject_prefix), duplicate_window = %self.cfg.duplicate_window, "JetStream stream created");
                Ok(true)
            }
            Err(e) if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP) => {
                Err(Setup::Fatal(ConfigError::invalid(
                    &self.file,
                    "sinks.nats.subject_prefix",
                    format!(
                        "cannot create stream {name:?}: its subjects \"{}.>\" overlap with another stream on the server; set sinks.nats.stream to that stream, or choose another subject_prefix",
                        self.cfg.subject_prefix
                    ),
                )))
            }
            // Another host may have created it meanwhile: look again after the backoff.
            Err(e) => Err(Setup::Retry(format!("creating stream {name:?}: {e}"))),
        }
    }
}

/// async-nats counts attempts from 1 (the first connection too): the first goes at once, then
/// full jitter under the reconnect backoff's ceiling.
fn reconnect_delay(initial: Duration, max: Duration, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let n = u32::try_from(attempts - 2).unwrap_or(u32::MAX);
    let ceiling = Backoff::new(initial, max).ceiling(n);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The client's events: `connected` for status and the publisher, errors for status and the
/// log (client errors repeat on every failed attempt: debug only).
fn on_event(state: &SinkState, connected: &watch::Sender<bool>, event: &Event) {
    match event {
        Event::Connected => {
            info!(sink = super::NATS, "connected to NATS");
            state.connected.store(true, Ordering::Relaxed);
            connected.send_replace(true);
        }
        Event::Disconnected => {
            warn!(
                sink = super::NATS,
                "disconnected from NATS; reconnecting (messages wait in the spool)"
            );
            state.connected.store(false, Ordering::Relaxed);
            connected.send_replace(false);
        }
        Event::ServerError(e) => {
            warn!(sink = super::NATS, error = %e, "NATS server error");
            state.set_error(format!("server error: {e}"));
        }
        Event::ClientError(e) => {
            tracing::debug!(sink = super::NATS, error = %e, "NATS client error");
            state.set_error(format!("client error: {e}"));
        }
        other => info!(sink = super::NATS, event = %other, "NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_stay_under_the_backoff() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(
            reconnect_delay(i, m, 1),
            Duration::ZERO,
            "the first at once"
        );
        for _ in 0..100 {
            assert!(reconnect_delay(i, m, 2) <= i);
            assert!(reconnect_delay(i, m, 50) <= m);
        }
    }
}
