//! Waiting on the gateway: for an event, a condition, connections, or ACKs. Every wait is
//! woken by the event log's change counter and has a deadline; nothing polls on a timer.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::FakeGateway;
use super::events::{ConnId, GatewayEvent, TimedEvent, Timeout};

impl FakeGateway {
    /// Waits for an event matching `pred`, looking at the whole log first (so an event that
    /// already happened counts). Use [`FakeGateway::subscribe`] to wait for a *new* one.
    pub async fn wait_for<F>(&self, pred: F, timeout: Duration) -> Result<TimedEvent, Timeout>
    where
        F: FnMut(&GatewayEvent) -> bool,
    {
        self.cursor_from_start().wait_for(pred, timeout).await
    }

    /// Waits until `cond` holds, re-checking after every event (e.g. "2 ACKs for id X").
    /// `cond` runs once per batch of events: keep it cheap (for many ACKs, use
    /// [`FakeGateway::wait_acked`]).
    pub async fn wait_until<F>(&self, mut cond: F, timeout: Duration) -> Result<(), Timeout>
    where
        F: FnMut(&FakeGateway) -> bool,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut watcher = self.shared.events.watcher();
        loop {
            watcher.borrow_and_update();
            if cond(self) {
                return Ok(());
            }
            let changed = tokio::time::timeout_at(deadline, watcher.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Timeout {
                    what: "a gateway condition".into(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Waits until at least `n` connections are open at once; returns the open ones.
    pub async fn wait_connected(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ConnId>, Timeout> {
        self.wait_until(|g| g.open_connections().len() >= n, timeout)
            .await
            .map_err(|e| Timeout {
                what: format!("{n} open connection(s)"),
                ..e
            })?;
        Ok(self.open_connections())
    }

    /// Waits until every messageId in `ids` got at least one ACK (of any code; ACKs that
    /// came before the call count, as far as the last 250,000 ACKed messageIds go). Costs
    /// O(ids + events while waiting), so waiting for a burst of 20,000 is cheap. The error
    /// names a few of the messageIds still missing.
    pub async fn wait_acked<S: AsRef<str>>(
        &self,
        ids: &[S],
        timeout: Duration,
    ) -> Result<(), Timeout> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut watcher = self.shared.events.watcher();
        // Position first, then the ACKs so far: an ACK is recorded before its event.
        let mut next = self.shared.events.end();
        let mut missing: HashSet<&str> = {
            let st = self.shared.state();
            ids.iter()
                .map(AsRef::as_ref)
                .filter(|id| !st.acked.contains(id))
                .collect()
        };
        loop {
            if missing.is_empty() {
                return Ok(());
            }
            watcher.borrow_and_update();
            let (first, end) = self.shared.events.visit_since(next, |ev| {
                if let GatewayEvent::Ack { message_id, .. } = &ev.event {
                    missing.remove(message_id.as_str());
                }
            });
            if first > next {
                // The bounded log forgot events this wait had not seen: ask the ACK record.
                let st = self.shared.state();
                missing.retain(|id| !st.acked.contains(id));
            }
            next = end;
            if missing.is_empty() {
                return Ok(());
            }
            let changed = tokio::time::timeout_at(deadline, watcher.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let mut some: Vec<&str> = missing.iter().copied().take(5).collect();
                some.sort_unstable();
                return Err(Timeout {
                    what: format!(
                        "ACKs of {} messageIds ({} still missing, e.g. {some:?})",
                        ids.len(),
                        missing.len()
                    ),
                    waited: started.elapsed(),
                });
            }
        }
    }
}
