//! Exponential reconnection backoff with jitter.

use std::time::Duration;

/// Reconnection delays: the base doubles after every failure, from `min` up to `max`, and each
/// delay is drawn uniformly from `[base / 2, base]` ("equal jitter"), so movers that lost the
/// same server do not all come back in the same millisecond, and no delay is ever zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` is raised to `min` if smaller); `seed` feeds
    /// the jitter (any value, 0 included).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            base: min,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The delay to wait before the next attempt; each call doubles the base up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        let half = base / 2;
        let span = (base - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.base = self.min;
    }

    /// The current base (upper bound of the next delay).
    pub fn current_base(&self) -> Duration {
        self.base
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: good enough for jitter, no dependency.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let mut b = Backoff::new(100 * MS, 5000 * MS, 42);
        let mut base = 100 * MS;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
            base = (base * 2).min(5000 * MS);
        }
        assert_eq!(b.current_base(), 5000 * MS);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(10 * MS, 1000 * MS, 1);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= 10 * MS);
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<Duration> = (0..32)
            .map(|seed| Backoff::new(1000 * MS, 1000 * MS, seed).next_delay())
            .collect();
        assert!(delays.len() > 16, "only {} distinct delays", delays.len());
    }

    #[test]
    fn degenerate_bounds_are_fixed() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, 7);
        assert!(b.next_delay() <= MS);
        let mut b = Backoff::new(50 * MS, 10 * MS, 7);
        for _ in 0..5 {
            assert!(b.next_delay() <= 50 * MS);
        }
    }
}
