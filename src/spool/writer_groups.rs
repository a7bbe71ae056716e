//! The writer's group lifecycle requests: idle clocks (buffered, written with the next
//! commit), and removals and replays (after committing what is buffered, answered once done,
//! with the figures for status refreshed first so the requester sees the change).

use super::Writer;
use crate::spool::{Released, Replay, Replayed, SpoolError};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::debug;

impl<T: Send + 'static> Writer<T> {
    /// Writes the buffered idle clocks (rare: members joining and leaving). On failure they
    /// stay buffered for the next commit.
    pub(super) fn flush_idle(&mut self) {
        if self.idle.is_empty() {
            return;
        }
        self.state.busy.store(true, Ordering::Relaxed);
        let result = self.store.set_idle(&self.idle);
        self.state.busy.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => self.idle.clear(),
            Err(e) => debug!(error = %e, "cannot record group idle clocks yet; will try again"),
        }
    }

    /// Refreshes the figures for status at once: a group removal or replay shows before its
    /// requester gets the answer.
    fn refresh_figures_now(&mut self) {
        self.publish_totals();
        self.refresh_figures = None;
        self.figures_at = Instant::now();
        let figures = self.store.figures();
        *self.state.figures.lock().unwrap_or_else(|p| p.into_inner()) = figures;
    }

    /// Removes a group (what is buffered is committed first).
    pub(super) fn remove_group(&mut self, name: &str) -> Result<Option<Released>, SpoolError> {
        if self.next_retry.is_none() {
            self.commit(Vec::new());
        }
        self.state.busy.store(true, Ordering::Relaxed);
        let result = self.store.remove_group(name);
        self.state.busy.store(false, Ordering::Relaxed);
        if result.is_ok() {
            // Writes still buffered for it (the spool was degraded) have nowhere to go.
            self.acks.remove(name);
            self.parks.retain(|(g, _, _)| g != name);
            self.idle.remove(name);
        }
        self.refresh_figures_now();
        result
    }

    /// Replays messages to a group (what is buffered is committed first: acks sent before
    /// the replay count before it).
    pub(super) fn replay(&mut self, group: &str, what: Replay) -> Result<Replayed, SpoolError> {
        if self.next_retry.is_none() {
            self.commit(Vec::new());
        }
        self.state.busy.store(true, Ordering::Relaxed);
        let result = self.store.replay(group, what);
        self.state.busy.store(false, Ordering::Relaxed);
        self.refresh_figures_now();
        result
    }
}
