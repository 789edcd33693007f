//! Reconnect delays: exponential backoff with full jitter (AWS Architecture Blog,
//! "Exponential Backoff And Jitter"), reset after a healthy connection. No clock, no
//! randomness source: the caller passes a uniform number in [0, 1).

/// `reconnect` options of the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay, milliseconds (seed: 5,000 for the fixed delay; default 1,000).
    pub initial_ms: u32,
    /// Longest delay, milliseconds.
    pub max_ms: u32,
    /// Growth per failed attempt.
    pub multiplier: f64,
    /// Full jitter: the delay is uniform in [0, cap] instead of the cap itself.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 1000, max_ms: 30_000, multiplier: 2.0, jitter: true }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0 for the first after a drop).
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u32 {
        let growth = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let cap = (f64::from(self.initial_ms) * growth).min(f64::from(self.max_ms));
        let delay = if self.jitter { cap * unit.clamp(0.0, 1.0) } else { cap };
        delay as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_jitter_spreads_them() {
        let fixed = Backoff { jitter: false, ..Backoff::default() };
        let delays: Vec<u32> = (0..7).map(|a| fixed.delay_ms(a, 0.5)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
        let jittered = Backoff::default();
        assert_eq!(jittered.delay_ms(3, 0.0), 0);
        assert_eq!(jittered.delay_ms(3, 0.25), 2000);
        assert!(jittered.delay_ms(100, 0.999) < 30_000);
        let seed = Backoff { initial_ms: 5000, max_ms: 5000, multiplier: 1.0, jitter: false };
        assert_eq!(seed.delay_ms(9, 0.1), 5000, "the seed's fixed 5 s");
    }
}
