//! Capped exponential backoff with full jitter: the n-th consecutive failure waits a uniformly
//! random time in `[0, min(max_delay, initial_delay · 2^n)]`, floored by a server's
//! `Retry-After` (itself capped at `max_delay`). About 40 lines of our own: the `backoff` crate
//! is unmaintained.

use rand::{Rng, RngExt};
use std::time::Duration;

/// Backoff state: the number of consecutive failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The ceiling of the n-th wait (n from 0).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The cap (`max_delay`); also the fixed wait after credentials are rejected.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next wait, drawn from `rng`, and counts one more failure.
    pub fn next_delay<R: Rng + ?Sized>(
        &mut self,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let ceiling = self.ceiling(self.failures);
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rng.random_range(0..=nanos));
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max)),
            None => jittered,
        }
    }

    /// After a connection stayed up `stable_after`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Applies new settings (reload) without losing the failure count.
    pub fn set_bounds(&mut self, initial: Duration, max: Duration) {
        self.initial = initial;
        self.max = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_in_the_full_jitter_envelope() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(i, m);
        let mut maxima = vec![Duration::ZERO; 8];
        for _round in 0..200 {
            b.reset();
            for (n, seen) in maxima.iter_mut().enumerate() {
                let d = b.next_delay(None, &mut rand::rng());
                let cap = m.min(i * 2u32.pow(n as u32));
                assert!(d <= cap, "wait {n} = {d:?} above {cap:?}");
                *seen = (*seen).max(d);
            }
        }
        // Jitter really spreads: late waits reach well past the early ceilings.
        assert!(maxima[6] > Duration::from_millis(1000), "{maxima:?}");
        assert!(maxima[0] <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_max() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        assert!(
            b.next_delay(Some(Duration::from_secs(3)), &mut rand::rng()) >= Duration::from_secs(3)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3600)), &mut rand::rng()),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn ceiling_saturates() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(200), Duration::from_secs(60));
    }
}
