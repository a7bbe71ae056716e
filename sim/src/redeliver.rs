//! Redelivery of EVENT/CALLBACK frames that were not ACKed in time (docs/protocol.md §3.5, §9.5).
//!
//! One task sleeps until the earliest deadline (a heap in the state, so a burst of pushes
//! costs O(log n) each and wakes the task only when a deadline moves earlier), then pushes each
//! overdue frame again, identical (same `messageId`, same `data`), on the same connection if it
//! can still take deliveries, else on a random one. It gives up after `max_redeliveries`.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::conn::ConnCmd;
use super::events::GatewayEvent;
use super::state::{GatewayCore, State};

/// When an overdue frame finds no connection, look again this soon (capped by the delay).
const NO_CONNECTION_RETRY: Duration = Duration::from_millis(500);

/// Runs until the gateway is cancelled.
pub(crate) async fn run(shared: Arc<GatewayCore>) {
    let Some(delay) = shared.config.redeliver_after else {
        return;
    };
    loop {
        let next_due = {
            let mut st = shared.state();
            let next = st.dues.peek().map(|Reverse((due, _))| *due);
            st.redeliver_at = next;
            next
        };
        let sleep = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            () = shared.redeliver_wake.notified() => continue,
            () = sleep => {}
        }
        let events = {
            let mut st = shared.state();
            redeliver_due(&shared, &mut st, delay)
        };
        for ev in events {
            shared.emit(ev);
        }
    }
}

/// Sends every overdue frame again; returns the events to emit (outside the lock).
fn redeliver_due(shared: &GatewayCore, st: &mut State, delay: Duration) -> Vec<GatewayEvent> {
    let now = Instant::now();
    let max = shared.config.max_redeliveries;
    let mut events = Vec::new();
    while st.dues.peek().is_some_and(|Reverse((due, _))| *due <= now) {
        let Some(Reverse((due, message_id))) = st.dues.pop() else {
            break;
        };
        // ACKed since (gone), or rescheduled (another heap entry holds its deadline).
        let Some(p) = st.pending.get(&message_id).filter(|p| p.due == due) else {
            continue;
        };
        if p.attempts >= max {
            warn!(%message_id, attempts = p.attempts, "never ACKed; giving up redelivery");
            st.pending.remove(&message_id);
            continue;
        }
        let same = st
            .conns
            .get(&p.conn)
            .filter(|e| !e.draining && !e.zombie)
            .map(|_| p.conn);
        let Some(conn) = same.or_else(|| st.pick()) else {
            debug!(%message_id, "redelivery due but no connection; waiting");
            if let Some(p) = st.pending.get_mut(&message_id) {
                p.due = now + NO_CONNECTION_RETRY.min(delay);
                let due = p.due;
                st.schedule(message_id, due);
            }
            continue;
        };
        let Some(entry) = st.conns.get(&conn) else {
            continue;
        };
        let text = match st.pending.get(&message_id) {
            Some(p) => p.env.render(&entry.ticket),
            None => continue,
        };
        let Some(p) = st.pending.get_mut(&message_id) else {
            continue;
        };
        p.attempts += 1;
        p.due = now + delay;
        p.conn = conn;
        let attempt = p.attempts;
        let cmd = ConnCmd::Send {
            text,
            message_id: message_id.clone(),
            topic: p.env.topic().to_owned(),
            redelivery: attempt,
        };
        let sent = entry.tx.send(cmd).is_ok();
        st.schedule(message_id.clone(), now + delay);
        if sent {
            st.counts.redelivered += 1;
            info!(%conn, %message_id, attempt, "redelivering unACKed frame");
            events.push(GatewayEvent::Redelivered {
                conn,
                message_id,
                attempt,
            });
        }
    }
    events
}
