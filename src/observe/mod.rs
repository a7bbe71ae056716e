//! What the daemon measures about its DingTalk link, kept in one place that `status`, the
//! `STATUS=` line and `/metrics` all read: reconnects by cause, ticket requests by outcome,
//! failed connection attempts by cause, the last inbound message, the last ping round trip,
//! and the latency histograms (ACK latency, ping round trip, delivery lag). Per-message
//! updates are relaxed atomics; the tallies by cause change only when a connection does, and
//! each holds a bounded number of keys.

pub mod histogram;

use histogram::{ACK_LATENCY_US, DELIVERY_LAG_US, Histogram, PING_RTT_US};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keys a tally holds at most; further keys are counted under [`OTHER`]. Causes and outcomes
/// come from a small fixed vocabulary (plus HTTP status codes), so this is never reached in
/// practice; it bounds memory and metric series whatever a gateway answers.
pub const MAX_KEYS: usize = 64;
/// The key that counts what did not fit under [`MAX_KEYS`].
pub const OTHER: &str = "other";
/// The outcome of a ticket request that returned a ticket.
pub const TICKET_OK: &str = "ok";

/// Counts by a short textual key (a cause, an outcome).
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    /// Adds one to `key`.
    pub fn add(&self, key: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(key) {
            *n += 1;
        } else if m.len() < MAX_KEYS {
            m.insert(key.to_owned(), 1);
        } else {
            *m.entry(OTHER.to_owned()).or_default() += 1;
        }
    }

    /// Every key with its count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The measurements, shared by the supervisor, every connection, the relay and the readers.
#[derive(Debug)]
pub struct Observations {
    /// Frame read to its ACK written (held callback ACKs included: they wait for a consumer).
    pub ack_latency: Histogram,
    /// Our WebSocket ping to its pong.
    pub ping_rtt: Histogram,
    /// The frame's `time` header (DingTalk's send time) to its read; 0 when DingTalk's clock
    /// is ahead of ours.
    pub delivery_lag: Histogram,
    /// Why a serving connection was replaced: its end cause (`pong_timeout`, `eof`, ...),
    /// `server_disconnect` for a handover DingTalk asked for, `reload` for new credentials.
    pub reconnects: Tally,
    /// Ticket requests by outcome: `ok`, or the failure (`503`, `401`, `timeout`, ...).
    pub ticket_requests: Tally,
    /// Connection attempts that failed, by cause (`ticket_503`, `tcp_timeout`, `tls_error`, ...).
    pub connect_failures: Tally,
    /// Epoch milliseconds of the last EVENT or CALLBACK frame read; 0 before the first.
    last_inbound_ms: AtomicU64,
    /// The last ping round trip in microseconds; `u64::MAX` before the first pong.
    last_ping_rtt_us: AtomicU64,
}

impl Default for Observations {
    fn default() -> Self {
        Observations {
            ack_latency: Histogram::new(ACK_LATENCY_US),
            ping_rtt: Histogram::new(PING_RTT_US),
            delivery_lag: Histogram::new(DELIVERY_LAG_US),
            reconnects: Tally::default(),
            ticket_requests: Tally::default(),
            connect_failures: Tally::default(),
            last_inbound_ms: AtomicU64::new(0),
            last_ping_rtt_us: AtomicU64::new(u64::MAX),
        }
    }
}

impl Observations {
    /// An EVENT or CALLBACK frame was read at `at`.
    #[inline]
    pub fn inbound(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inbound_ms.fetch_max(ms, Relaxed);
    }

    /// When the last EVENT or CALLBACK frame was read, if one was since start.
    pub fn last_inbound(&self) -> Option<SystemTime> {
        match self.last_inbound_ms.load(Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// A pong answered our ping after `rtt`.
    pub fn ping_round_trip(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
        self.last_ping_rtt_us.store(us, Relaxed);
        self.ping_rtt.observe_us(us);
    }

    /// The last ping round trip, if a pong came since start.
    pub fn last_ping_rtt(&self) -> Option<Duration> {
        match self.last_ping_rtt_us.load(Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// A frame whose `time` header says it was sent `lag_ms` before it was read.
    #[inline]
    pub fn delivery_lag_ms(&self, lag_ms: i64) {
        let us = u64::try_from(lag_ms).unwrap_or(0).saturating_mul(1000);
        self.delivery_lag.observe_us(us);
    }

    /// A ticket request ended: `Ok` or the failure's cause (`ticket_503` is tallied as `503`).
    pub fn ticket_request(&self, outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => self.ticket_requests.add(TICKET_OK),
            Err(cause) => self
                .ticket_requests
                .add(cause.strip_prefix("ticket_").unwrap_or(cause)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_keeps_a_bounded_number_of_keys() {
        let t = Tally::default();
        for i in 0..MAX_KEYS + 10 {
            t.add(&format!("k{i}"));
        }
        t.add("k0");
        let m = t.snapshot();
        assert_eq!(m.len(), MAX_KEYS + 1);
        assert_eq!(m["k0"], 2);
        assert_eq!(m[OTHER], 10);
    }

    #[test]
    fn ticket_outcomes_drop_the_cause_prefix() {
        let o = Observations::default();
        o.ticket_request(Ok(()));
        o.ticket_request(Err("ticket_503"));
        o.ticket_request(Err("ticket_timeout"));
        let m = o.ticket_requests.snapshot();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![
                ("503".to_owned(), 1),
                ("ok".to_owned(), 1),
                ("timeout".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn last_inbound_and_ping_rtt_are_none_until_observed() {
        let o = Observations::default();
        assert_eq!(o.last_inbound(), None);
        assert_eq!(o.last_ping_rtt(), None);
        let t = UNIX_EPOCH + Duration::from_millis(1_769_851_697_756);
        o.inbound(t);
        o.inbound(t - Duration::from_secs(1));
        assert_eq!(o.last_inbound(), Some(t), "never goes backwards");
        o.ping_round_trip(Duration::from_micros(1500));
        assert_eq!(o.last_ping_rtt(), Some(Duration::from_micros(1500)));
        assert_eq!(o.ping_rtt.snapshot().count, 1);
        o.delivery_lag_ms(-20);
        assert_eq!(
            o.delivery_lag.snapshot().sum,
            0.0,
            "a clock ahead of ours is 0"
        );
    }
}
