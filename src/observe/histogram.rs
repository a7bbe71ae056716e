//! A latency histogram for the per-message path: fixed bucket bounds chosen at compile time,
//! one atomic counter per bucket and one for the sum, so an observation is a short search and
//! two relaxed atomic adds (no lock, no allocation). `/metrics` reads a [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds (inclusive, microseconds) for the ACK latency: a commit is well under a
/// millisecond of fsync, a held callback ACK waits for a consumer up to its timeout (seconds).
pub const ACK_LATENCY_US: &[u64] = &[
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Bucket upper bounds (microseconds) for the WebSocket ping round trip.
pub const PING_RTT_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000,
];
/// Bucket upper bounds (microseconds) for the delivery lag (the frame's `time` header to its
/// read): tens of milliseconds normally; a redelivery carries its first send time, so up to
/// minutes.
pub const DELIVERY_LAG_US: &[u64] = &[
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
];

/// One histogram.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in microseconds, increasing; the last bucket (`+Inf`) is implicit.
    bounds: &'static [u64],
    /// One counter per bound, plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, microseconds.
    sum_us: AtomicU64,
}

/// A histogram as read at one moment, in seconds, for the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound in seconds, observations in that bucket alone)`, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// A histogram over `bounds` (microseconds, strictly increasing).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation of `us` microseconds.
    #[inline]
    pub fn observe_us(&self, us: u64) {
        let i = self.bounds.partition_point(|b| *b < us);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The histogram now. Each counter is read once, so `count` is the sum of the buckets;
    /// the sum may include an observation whose bucket was read a moment earlier.
    pub fn snapshot(&self) -> Snapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect();
        Snapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum: self.sum_us.load(Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let h = Histogram::new(&[10, 100]);
        h.observe_us(0);
        h.observe_us(10);
        h.observe_us(11);
        h.observe_us(100);
        h.observe_us(101);
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(0.00001, 2), (0.0001, 2), (f64::INFINITY, 2)]
        );
        assert_eq!(s.count, 6);
        assert!((s.sum - (222.0 / 1e6 + 1.0)).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn the_shipped_bounds_increase() {
        for b in [ACK_LATENCY_US, PING_RTT_US, DELIVERY_LAG_US] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        }
    }
}
