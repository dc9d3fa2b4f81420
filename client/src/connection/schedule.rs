//! Backoff schedules for reconnects and rejoins.

use std::time::Duration;

/// Delays for attempt 1, 2, …; the last repeats. Jitter adds up to `jitter` × the delay.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before attempt 1, 2, …; the last one repeats.
    pub steps: Vec<Duration>,
    /// Up to this share of the delay is added at random (0.1: up to 10 %).
    pub jitter: f64,
}

impl Backoff {
    /// realtime-js's reconnect schedule: 1, 2, 5, 10 s, then every 10 s; 10 % jitter.
    pub fn reconnect() -> Self {
        Backoff::of_millis(&[1000, 2000, 5000, 10000])
    }

    /// Phoenix's rejoin schedule (`rejoinAfterMs`): 1, 2, 5 s, then every 10 s; 10 % jitter.
    pub fn rejoin() -> Self {
        Backoff::of_millis(&[1000, 2000, 5000, 10000])
    }

    fn of_millis(steps: &[u64]) -> Self {
        Backoff {
            steps: steps.iter().map(|ms| Duration::from_millis(*ms)).collect(),
            jitter: 0.1,
        }
    }

    /// The delay before attempt `attempt` (1-based), `random` any u64 (the jitter's source).
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.steps.len().saturating_sub(1));
        let base = self.steps.get(index).copied().unwrap_or(Duration::from_secs(10));
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        base + base.mul_f64(self.jitter.clamp(0.0, 1.0) * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_realtime_js_then_repeats_the_last_step() {
        let b = Backoff { jitter: 0.0, ..Backoff::reconnect() };
        let secs: Vec<u64> = (1..=6).map(|a| b.delay(a, 0).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 5, 10, 10, 10]);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let b = Backoff::reconnect();
        assert_eq!(b.delay(1, 0), Duration::from_secs(1));
        let most = b.delay(1, u64::MAX);
        assert!(most > Duration::from_millis(1099) && most <= Duration::from_millis(1100), "{most:?}");
    }
}
