//! What is read but not yet durable, in frames and bytes, bounded by
//! `limits.max_pending_acks` and `limits.max_pending_bytes`. Above either bound the readers pause
//! (they stop reading the WebSocket, so TCP pushes back on DingTalk) until commits make room;
//! a burst is absorbed this way instead of by dropping the connection. It also tells when
//! frames have waited without any commit succeeding (a stalled disk).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The shared budget of frames waiting for the spool.
#[derive(Debug)]
pub struct Budget {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
    /// Since when frames have waited without a commit (`None`: nothing waits).
    waiting_since: Mutex<Option<Instant>>,
    /// Bumped whenever room is freed, so paused readers wake without a lost wakeup.
    freed: watch::Sender<u64>,
}

impl Budget {
    /// A budget of `max_frames` frames and `max_bytes` bytes.
    pub fn new(max_frames: usize, max_bytes: usize) -> Budget {
        Budget {
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_frames,
            max_bytes,
            waiting_since: Mutex::new(None),
            freed: watch::channel(0).0,
        }
    }

    /// Whether a reader may read another frame now.
    pub fn has_room(&self) -> bool {
        self.frames.load(Ordering::Relaxed) < self.max_frames
            && self.bytes.load(Ordering::Relaxed) < self.max_bytes
    }

    /// A receiver that changes whenever room is freed: check [`Budget::has_room`] after
    /// `borrow_and_update`, then wait on `changed`.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// A frame of `bytes` was queued for the spool.
    pub fn take(&self, bytes: usize, now: Instant) {
        if self.frames.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.lock() = Some(now);
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `frames` frames of `bytes` in all are durable (or refused): their room is free again.
    /// `committed` says a commit succeeded, which restarts the stall clock.
    pub fn give_back(&self, frames: usize, bytes: usize, committed: bool, now: Instant) {
        let left = self.frames.fetch_sub(frames, Ordering::Relaxed) - frames;
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        {
            let mut since = self.lock();
            if left == 0 {
                *since = None;
            } else if committed {
                *since = Some(now);
            }
        }
        self.freed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Frames waiting now.
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed)
    }

    /// How long frames have waited with no commit succeeding (`None`: nothing waits).
    pub fn stalled_for(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .map(|since| now.saturating_duration_since(since))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.waiting_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_at_either_bound_and_resumes_when_room_is_freed() {
        let t0 = Instant::now();
        let b = Budget::new(2, 1000);
        let mut w = b.watch();
        w.borrow_and_update();
        assert!(b.has_room());
        b.take(10, t0);
        b.take(10, t0);
        assert!(!b.has_room(), "two frames: the count bound");
        b.give_back(1, 10, true, t0);
        assert!(b.has_room());
        assert!(w.has_changed().unwrap(), "a paused reader is woken");
        b.take(995, t0);
        assert!(!b.has_room(), "the byte bound");
    }

    #[test]
    fn the_stall_clock_runs_only_while_frames_wait_without_commits() {
        let t0 = Instant::now();
        let b = Budget::new(10, 1000);
        assert_eq!(b.stalled_for(t0), None);
        b.take(1, t0);
        b.take(1, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.stalled_for(t1), Some(Duration::from_secs(5)));
        b.give_back(1, 1, true, t1);
        assert_eq!(
            b.stalled_for(t1),
            Some(Duration::ZERO),
            "a commit restarts it"
        );
        b.give_back(1, 1, true, t1);
        assert_eq!(
            b.stalled_for(t1 + Duration::from_secs(9)),
            None,
            "nothing waits"
        );
    }
}
