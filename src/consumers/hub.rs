//! The fan-out point between the spool writer and consumers. The relay calls
//! [`Hub::publish`] after each commit: every tap gets each line through its own bounded queue
//! (`try_send`, never waiting), a tap whose queue overflows is cut off with a logged, counted
//! reason, and group dispatchers are woken through a `watch` of the newest seq. A small cache
//! of recent lines spares caught-up groups a read from SQLite.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::line;

/// Lines a tap may have queued before it is disconnected.
pub const TAP_QUEUE_LINES: usize = 4096;
/// Bytes a tap may have queued before it is disconnected.
pub const TAP_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Recent lines kept in memory for groups that are caught up, at most (the byte bound,
/// `limits.recent_cache_bytes`, usually comes first).
const RECENT: usize = 8192;

/// A stored message, ready for consumers: its line is built once and shared by every tap,
/// group and member it goes to.
#[derive(Debug, Clone)]
pub struct Message {
    /// The daemon's sequence number.
    pub seq: u64,
    /// The consumer line without the newline: `{"seq":N,...}`.
    pub line: Arc<str>,
}

impl Message {
    /// The message `seq` with its stored `body`.
    pub fn new(seq: u64, body: &str) -> Message {
        Message {
            seq,
            line: line::line(seq, body, false).into(),
        }
    }
}

/// The recent cache: newest lines, bounded in count and bytes; older ones are read back from
/// the spool.
struct Recent {
    lines: VecDeque<Message>,
    bytes: usize,
    max_bytes: usize,
}

impl Recent {
    fn push(&mut self, m: Message) {
        self.bytes += m.line.len();
        self.lines.push_back(m);
        while self.lines.len() > RECENT || (self.bytes > self.max_bytes && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.line.len();
            }
        }
    }
}

struct Tap {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
    queued_bytes: Arc<AtomicUsize>,
    kill: CancellationToken,
}

/// What a tap's writer task receives.
pub struct TapFeed {
    /// The lines.
    pub rx: mpsc::Receiver<Arc<str>>,
    /// Bytes still queued; the writer subtracts what it wrote.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Cancelled when the tap is cut off for being too slow.
    pub kill: CancellationToken,
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Lines handed to taps.
    pub tap_lines: AtomicU64,
    /// Taps disconnected for not keeping up.
    pub taps_dropped_slow: AtomicU64,
    /// Lines from consumers that were answered with an error.
    pub bad_lines: AtomicU64,
    /// Consumers connected now.
    pub consumers: AtomicU64,
    /// Peers refused because of `limits.max_consumers`.
    pub refused: AtomicU64,
}

/// The fan-out hub.
pub struct Hub {
    taps: Mutex<Vec<Tap>>,
    recent: Mutex<Recent>,
    newest: watch::Sender<u64>,
    next_tap: AtomicU64,
    /// Counters.
    pub stats: SinkStats,
}

impl Hub {
    /// A hub whose newest seq starts at `newest` (from the spool), caching at most
    /// `cache_bytes` of recent lines.
    pub fn new(newest: u64, cache_bytes: usize) -> Arc<Hub> {
        Arc::new(Hub {
            taps: Mutex::new(Vec::new()),
            recent: Mutex::new(Recent {
                lines: VecDeque::new(),
                bytes: 0,
                max_bytes: cache_bytes,
            }),
            newest: watch::channel(newest).0,
            next_tap: AtomicU64::new(1),
            stats: SinkStats::default(),
        })
    }

    /// Registers a tap from this moment on (at accept time, so lines committed while we wait
    /// for a possible hello are held for it).
    pub fn add_tap(&self) -> (u64, TapFeed) {
        let id = self.next_tap.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TAP_QUEUE_LINES);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let kill = CancellationToken::new();
        self.lock_taps().push(Tap {
            id,
            tx,
            queued_bytes: queued_bytes.clone(),
            kill: kill.clone(),
        });
        (
            id,
            TapFeed {
                rx,
                queued_bytes,
                kill,
            },
        )
    }

    /// Unregisters a tap (it turned out to be a group member, or it left).
    pub fn remove_tap(&self, id: u64) {
        self.lock_taps().retain(|t| t.id != id);
    }

    /// Number of registered taps.
    pub fn tap_count(&self) -> usize {
        self.lock_taps().len()
    }

    fn lock_taps(&self) -> std::sync::MutexGuard<'_, Vec<Tap>> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a committed batch to every tap and wakes the groups. Never blocks on a consumer.
    pub fn publish(&self, batch: &[Message]) {
        let Some(last) = batch.last() else { return };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for c in batch {
                recent.push(c.clone());
            }
        }
        let mut taps = self.lock_taps();
        taps.retain(|tap| {
            for c in batch {
                let len = c.line.len() + 1;
                let over = tap.queued_bytes.load(Ordering::Relaxed) + len > TAP_QUEUE_BYTES;
                let sent = !over && tap.tx.try_send(c.line.clone()).is_ok();
                if !sent {
                    if tap.tx.is_closed() {
                        return false;
                    }
                    self.stats.taps_dropped_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tap = tap.id, seq = c.seq, "disconnecting a tap that does not keep up (queue full); it never slows the others");
                    tap.kill.cancel();
                    return false;
                }
                tap.queued_bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.tap_lines.fetch_add(1, Ordering::Relaxed);
            }
            true
        });
        drop(taps);
        self.newest.send_replace(last.seq);
    }

    /// The newest committed seq, watched by group dispatchers.
    pub fn newest(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// The newest committed seq now.
    pub fn newest_seq(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Recent messages with `seq > after`, at most `limit`, if the cache still covers `after+1`.
    pub fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<Message>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let recent = &recent.lines;
        let first = recent.front()?.seq;
        if after + 1 < first {
            return None;
        }
        // Ascending seqs: a binary search, not a scan, under the lock `publish` also takes.
        let start = recent.partition_point(|c| c.seq <= after);
        Some(recent.range(start..).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(seq: u64) -> Message {
        Message::new(seq, r#"{"type":"EVENT"}"#)
    }

    #[tokio::test]
    async fn slow_tap_is_cut_off_without_affecting_others() {
        let hub = Hub::new(0, 1 << 20);
        let (_slow_id, slow) = hub.add_tap();
        let (_fast_id, mut fast) = hub.add_tap();
        for seq in 1..=(TAP_QUEUE_LINES as u64 + 1) {
            hub.publish(&[c(seq)]);
            let line = fast.rx.recv().await.unwrap();
            fast.queued_bytes
                .fetch_sub(line.len() + 1, Ordering::Relaxed);
        }
        assert!(slow.kill.is_cancelled());
        assert_eq!(hub.stats.taps_dropped_slow.load(Ordering::Relaxed), 1);
        assert_eq!(hub.tap_count(), 1);
        assert_eq!(hub.newest_seq(), TAP_QUEUE_LINES as u64 + 1);
    }

    #[test]
    fn recent_cache_answers_only_when_it_covers_the_gap() {
        let hub = Hub::new(0, 1 << 20);
        hub.publish(&[c(5), c(6), c(7)]);
        assert_eq!(hub.recent_after(5, 10).unwrap().len(), 2);
        assert_eq!(hub.recent_after(4, 10).unwrap().len(), 3);
        assert!(hub.recent_after(2, 10).is_none());
        let small = Hub::new(0, 2 * c(1).line.len());
        small.publish(&[c(1), c(2), c(3)]);
        assert!(
            small.recent_after(0, 10).is_none(),
            "seq 1 left: the byte bound"
        );
        assert_eq!(small.recent_after(1, 10).unwrap().len(), 2);
    }
}
