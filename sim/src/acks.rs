//! What the gateway does with a text frame from a client: parse it as an ACK, record it,
//! match it against pings and redelivery bookkeeping, remember its messageId (bounded), count
//! it, and write the first successful ACK of a pushed frame to the ACK log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};

use super::AckRecord;
use super::events::{ConnId, GatewayEvent};
use super::frames::FrameKind;
use super::state::{GatewayCore, MAX_ACKS};
use dingtalk_streamd::wire::gateway;

/// messageIds remembered as ACKed, oldest forgotten first (the binary may run for days; a
/// soak at 100 messages/s keeps the last ~40 minutes, far beyond any redelivery window).
const MAX_ACKED_IDS: usize = 250_000;

/// The messageIds that got at least one ACK, and whether one of them released the frame.
#[derive(Default)]
pub(crate) struct AckedIds {
    released: HashMap<Arc<str>, bool>,
    order: VecDeque<Arc<str>>,
}

impl AckedIds {
    /// Whether `message_id` got any ACK (while still remembered).
    pub(crate) fn contains(&self, message_id: &str) -> bool {
        self.released.contains_key(message_id)
    }

    /// Records an ACK; true when it is the first successful one for `message_id`.
    fn record(&mut self, message_id: &str, success: bool) -> bool {
        if let Some(released) = self.released.get_mut(message_id) {
            let first = success && !*released;
            *released |= success;
            return first;
        }
        let id: Arc<str> = Arc::from(message_id);
        self.released.insert(id.clone(), success);
        self.order.push_back(id);
        if self.order.len() > MAX_ACKED_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.released.remove(&old);
        }
        success
    }
}

/// Handles one text frame from the client on `conn`.
pub(crate) fn on_text(shared: &GatewayCore, conn: ConnId, text: &str) {
    let ack = match gateway::parse_ack(text) {
        Ok(ack) => ack,
        Err(detail) => {
            debug!(%conn, %detail, "unexpected frame from client");
            shared.emit(GatewayEvent::UnexpectedFrame { conn, detail });
            return;
        }
    };
    let success = gateway::ack_is_success(&ack);
    let (ping, tracked) = {
        let mut st = shared.state();
        st.acks.push_back(AckRecord {
            at: Instant::now(),
            conn,
            message_id: ack.message_id.clone(),
            code: ack.code,
            data: ack.data.clone(),
        });
        if st.acks.len() > MAX_ACKS {
            st.acks.pop_front();
        }
        st.counts.acks_received += 1;
        let ping = st.pings.remove(&ack.message_id);
        let first_success = st.acked.record(&ack.message_id, success);
        if first_success && ping.is_none() {
            st.counts.messages_acked += 1;
            if let Some(log) = &shared.ack_log {
                log.acked(&ack.message_id);
            }
        }
        let mut retry_at = None;
        let tracked = match st.pending.get_mut(&ack.message_id) {
            Some(_) if success => st.pending.remove(&ack.message_id).map(|p| p.env.frame_type),
            Some(p) => {
                if let Some(delay) = shared.config.redeliver_after {
                    p.due = Instant::now() + delay;
                    retry_at = Some(p.due);
                }
                Some(p.env.frame_type.clone())
            }
            None => None,
        };
        if let Some(due) = retry_at
            && st.schedule(ack.message_id.clone(), due)
        {
            shared.redeliver_wake.notify_one();
        }
        (ping, tracked)
    };
    let message_id = ack.message_id.clone();
    match tracked {
        Some(kind) if kind != FrameKind::System => {
            info!(%conn, %message_id, code = ack.code, success, "ACK received");
        }
        _ => debug!(%conn, %message_id, code = ack.code, "ACK received"),
    }
    let opaque_ok =
        ping.map(|expected| gateway::opaque_of(&ack.data).as_deref() == Some(&expected));
    shared.emit(GatewayEvent::Ack {
        conn,
        message_id: ack.message_id,
        code: ack.code,
        message: ack.message,
        data: ack.data,
    });
    if let Some(opaque_ok) = opaque_ok {
        shared.emit(GatewayEvent::PingAcked {
            conn,
            message_id,
            opaque_ok,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_ids_report_the_first_success_once_and_forget_the_oldest() {
        let mut ids = AckedIds::default();
        assert!(!ids.record("m1", false), "a LATER ACK does not release");
        assert!(ids.contains("m1"));
        assert!(ids.record("m1", true), "the first success does");
        assert!(!ids.record("m1", true), "a duplicate does not");
        for i in 0..MAX_ACKED_IDS {
            ids.record(&format!("x{i}"), true);
        }
        assert!(!ids.contains("m1"), "oldest forgotten");
        assert_eq!(ids.order.len(), MAX_ACKED_IDS);
    }
}
