//! Held ACKs for CALLBACK topics listed under `callbacks:`: the ACK waits until a member of the
//! named group answers `{"ack":seq,"response":{...}}` (sent to DingTalk as the `response`), or
//! the topic's timeout passes (then `{"response":null}`, logged). An ack without a response
//! releases it at once with `{"response":null}`. A redelivery that arrives while the original
//! is held waits for the same answer.

use super::{AckSender, Outgoing};
use crate::config::CallbackRoute;
use crate::wire::Ack;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Where an ACK goes once it is answered: the connection's queue, and when the frame it
/// answers was read (for the ACK latency).
pub type Reply = (AckSender, std::time::Instant);

struct Pending {
    group: String,
    message_id: String,
    replies: Vec<Reply>,
    deadline: Instant,
}

/// Sends `ack` to every reply.
fn send_all(replies: Vec<Reply>, ack: &Ack) {
    for (to, read_at) in replies {
        let _ = to.send(Outgoing {
            ack: ack.clone(),
            read_at,
        });
    }
}

#[derive(Default)]
struct Inner {
    pending: HashMap<u64, Pending>,
    routes: Vec<CallbackRoute>,
}

/// The registry of held callback ACKs.
#[derive(Clone, Default)]
pub struct Callbacks {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl Callbacks {
    /// A registry with the configured routes.
    pub fn new(routes: Vec<CallbackRoute>) -> Callbacks {
        let c = Callbacks::default();
        c.set_routes(routes);
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the routes (reload).
    pub fn set_routes(&self, routes: Vec<CallbackRoute>) {
        self.lock().routes = routes;
    }

    /// The group and timeout for a topic, if its ACK waits for a response.
    pub fn route(&self, topic: &str) -> Option<(String, Duration)> {
        self.lock()
            .routes
            .iter()
            .find(|r| r.topic == topic)
            .map(|r| (r.group.clone(), r.timeout.get()))
    }

    /// Holds the ACK of a stored callback.
    pub fn hold(
        &self,
        seq: u64,
        group: String,
        message_id: String,
        reply: Reply,
        timeout: Duration,
    ) {
        self.lock().pending.insert(
            seq,
            Pending {
                group,
                message_id,
                replies: vec![reply],
                deadline: Instant::now() + timeout,
            },
        );
        self.changed.notify_one();
    }

    /// A redelivery of a held callback: it gets the same answer. False when not held.
    pub fn add_reply(&self, seq: u64, reply: Reply) -> bool {
        match self.lock().pending.get_mut(&seq) {
            Some(p) => {
                p.replies.push(reply);
                true
            }
            None => false,
        }
    }

    /// A member's answer: ACKs with its `response`, or with `{"response":null}` when it acked
    /// without one (it will not answer again: acked messages are not given again, so waiting
    /// for the timeout would only delay DingTalk). False when the seq is not held for that group.
    pub fn respond(&self, seq: u64, group: &str, response: Option<Box<RawValue>>) -> bool {
        let p = {
            let mut inner = self.lock();
            match inner.pending.get(&seq) {
                Some(p) if p.group == group => inner.pending.remove(&seq),
                _ => None,
            }
        };
        let Some(p) = p else { return false };
        if response.is_some() {
            debug!(seq, message_id = %p.message_id, "callback answered by a consumer");
        } else {
            info!(seq, message_id = %p.message_id, group = %p.group, "callback acked without a response; ACKing with a null response");
        }
        send_all(
            p.replies,
            &Ack::callback(&p.message_id, response.as_deref()),
        );
        true
    }

    /// Held callbacks now.
    pub fn held(&self) -> usize {
        self.lock().pending.len()
    }

    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let expired: Vec<(u64, Pending)> = {
            let mut inner = self.lock();
            let keys: Vec<u64> = inner
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| inner.pending.remove(&k).map(|p| (k, p)))
                .collect()
        };
        for (seq, p) in expired {
            warn!(seq, message_id = %p.message_id, group = %p.group, "no consumer answered the callback in time; ACKing with a null response");
            send_all(p.replies, &Ack::callback(&p.message_id, None));
        }
        self.lock().pending.values().map(|p| p.deadline).min()
    }

    /// Runs the timeout side until shutdown.
    pub async fn run_expiry(self, shutdown: CancellationToken) {
        loop {
            let next = self.expire();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => {}
            }
        }
    }
}
