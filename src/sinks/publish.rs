//! The NATS sink's window: lines from its group are published in seq order, many in flight at
//! once, and each PubAck is awaited in that order; only then is the line acked to the group.
//! A failed publish (a PubAck that timed out across an outage, an error from the server)
//! makes the whole window wait for the backoff and a connection, then go again from the first
//! unconfirmed message, with the same `Nats-Msg-Id`s: JetStream drops what had arrived after
//! all. A message the server can never take (above its max_payload) is skipped, counted and
//! logged as an error, so it does not hold back every message after it.

use super::SinkState;
use super::feed::{Feed, Line};
use super::subject::{self, Fields};
use crate::supervisor::backoff::Backoff;
use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// How subjects, keys and bodies are made.
pub(super) struct Naming {
    pub prefix: String,
    pub client_id: String,
    /// This host's name as a JSON string.
    pub host_json: String,
}

/// One message in the window.
struct Item {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    /// Publishes so far (a duplicate PubAck on the first one means another host had it).
    attempts: u32,
    /// Its PubAck, once published (dropped when the window goes again).
    ack: Option<AckFuture>,
    /// The server can never take it.
    rejected: bool,
}

/// How a run of the window ended.
pub(super) enum End {
    /// The daemon stops (or the group went away).
    Stop,
    /// JetStream answered that no stream takes our subjects: the stream must be set up again.
    StreamMissing,
}

/// The window, kept across runs (a missing stream keeps what it held).
pub(super) struct Publisher {
    naming: Naming,
    window: usize,
    items: VecDeque<Item>,
    connected: watch::Receiver<bool>,
    state: Arc<SinkState>,
    backoff: Backoff,
    /// No publishing before this (after a failure).
    retry_at: Option<Instant>,
    /// Items from here on are not published yet.
    unsent: usize,
}

impl Publisher {
    pub fn new(
        naming: Naming,
        window: usize,
        connected: watch::Receiver<bool>,
        state: Arc<SinkState>,
        backoff: Backoff,
    ) -> Publisher {
        Publisher {
            naming,
            window,
            items: VecDeque::with_capacity(window),
            connected,
            state,
            backoff,
            retry_at: None,
            unsent: 0,
        }
    }

    /// Publishes what the group gives until the daemon stops or the stream is missing.
    pub async fn run(
        &mut self,
        js: &jetstream::Context,
        feed: &mut Feed,
        shutdown: &CancellationToken,
    ) -> End {
        loop {
            self.confirm_rejected(feed);
            let ready = self.retry_at.is_none() && *self.connected.borrow_and_update();
            if ready {
                // A publish may wait for room in the client while it reconnects: stopping
                // does not wait for that.
                let sent = tokio::select! {
                    _ = shutdown.cancelled() => return End::Stop,
                    r = self.send_waiting(js) => r,
                };
                if let Err(e) = sent
                    && let Some(end) = self.fail(&e)
                {
                    return end;
                }
            }
            let waiting_ack =
                self.retry_at.is_none() && self.items.front().is_some_and(|i| i.ack.is_some());
            let retry_at = self.retry_at;
            let room = self.items.len() < self.window;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Stop,
                r = front_ack(&mut self.items), if waiting_ack => {
                    match r {
                        Ok(ack) => self.confirmed(&ack, feed),
                        Err(e) => {
                            if let Some(end) = self.fail(&e) {
                                return end;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
                r = self.connected.changed() => if r.is_err() { return End::Stop },
                line = feed.recv(), if room => match line {
                    Some(line) => self.push(line),
                    None => return End::Stop,
                },
            }
        }
    }

    /// Adds a line to the window (to be published in order).
    fn push(&mut self, line: Line) {
        let n = &self.naming;
        let item = match Fields::parse(&line.text) {
            Ok(f) => {
                let mut headers = HeaderMap::new();
                let msg_id = format!("{}:{}", n.client_id, f.key());
                headers.insert(async_nats::header::NATS_MESSAGE_ID, header(&msg_id));
                headers.insert("DingTalk-Type", header(&f.kind));
                headers.insert("DingTalk-Topic", header(&f.topic));
                headers.insert("DingTalk-Message-Id", header(&f.message_id));
                Item {
                    seq: line.seq,
                    subject: subject::subject(&n.prefix, &n.client_id, &f),
                    headers,
                    payload: Bytes::from(subject::with_host(&line.text, line.seq, &n.host_json)),
                    attempts: 0,
                    ack: None,
                    rejected: false,
                }
            }
            Err(e) => {
                error!(seq = line.seq, error = %e, "a consumer line the NATS sink cannot read; skipped");
                self.state.rejected.fetch_add(1, Ordering::Relaxed);
                Item {
                    seq: line.seq,
                    subject: String::new(),
                    headers: HeaderMap::new(),
                    payload: Bytes::new(),
                    attempts: 0,
                    ack: None,
                    rejected: true,
                }
            }
        };
        self.items.push_back(item);
    }

    /// Publishes every message of the window not yet in flight, in order.
    async fn send_waiting(&mut self, js: &jetstream::Context) -> Result<(), PublishError> {
        while let Some(item) = self.items.get_mut(self.unsent) {
            self.unsent += 1;
            if item.rejected {
                continue;
            }
            let msg = PublishMessage::build()
                .payload(item.payload.clone())
                .headers(item.headers.clone());
            match js.send_publish(item.subject.clone(), msg).await {
                Ok(f) => {
                    item.attempts += 1;
                    item.ack = Some(Box::pin(f.into_future()));
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    error!(seq = item.seq, bytes = item.payload.len(), error = %e, "message larger than the NATS server's max_payload: skipped (it stays in the spool and reaches local consumers)");
                    self.state.rejected.fetch_add(1, Ordering::Relaxed);
                    self.state.set_error(format!("seq {}: {e}", item.seq));
                    item.rejected = true;
                }
                Err(e) => {
                    self.unsent -= 1;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Acks skipped messages that reached the front.
    fn confirm_rejected(&mut self, feed: &Feed) {
        while self.unsent > 0 && self.items.front().is_some_and(|i| i.rejected) {
            if let Some(i) = self.items.pop_front() {
                self.unsent -= 1;
                feed.ack(i.seq);
            }
        }
    }

    /// The front message's PubAck arrived: the group may forget it.
    fn confirmed(&mut self, ack: &PublishAck, feed: &Feed) {
        let Some(item) = self.items.pop_front() else {
            return;
        };
        self.unsent = self.unsent.saturating_sub(1);
        self.state.published.fetch_add(1, Ordering::Relaxed);
        if ack.duplicate && item.attempts == 1 {
            self.state.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if self.backoff.failures() > 0 {
            info!(seq = item.seq, "NATS sink publishing again");
            self.backoff.reset();
        }
        feed.ack(item.seq);
    }

    /// A publish failed: the whole window goes again after the backoff (and a connection).
    /// `Some` when the stream must be set up again first.
    fn fail(&mut self, e: &PublishError) -> Option<End> {
        let first = self.items.front().map_or(0, |i| i.seq);
        let wait = self.backoff.next_delay(None, &mut rand::rng());
        if self.backoff.failures() == 1 {
            warn!(seq = first, error = %e, retry_in = ?wait, "publishing to NATS failed; the window goes again from this seq (JetStream drops what it already has)");
        } else {
            tracing::debug!(seq = first, error = %e, retry_in = ?wait, "publishing to NATS failed again");
        }
        self.state.failed(format!("publishing seq {first}: {e}"));
        for item in &mut self.items {
            item.ack = None;
        }
        self.unsent = 0;
        self.retry_at = Some(Instant::now() + wait);
        (e.kind() == PublishErrorKind::StreamNotFound).then_some(End::StreamMissing)
    }
}

/// The PubAck of the front message (pending forever when it has none).
async fn front_ack(items: &mut VecDeque<Item>) -> Result<PublishAck, PublishError> {
    match items.front_mut().and_then(|i| i.ack.as_mut()) {
        Some(f) => {
            let r = f.await;
            if let Some(i) = items.front_mut() {
                i.ack = None;
            }
            r
        }
        None => std::future::pending().await,
    }
}

/// A header value from DingTalk's text: no line breaks.
fn header(v: &str) -> String {
    v.replace(['\r', '\n'], " ")
}
