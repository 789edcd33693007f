//! Rate limits per key (a client address, a user name): `n` a minute with a burst of `n`
//! (GCRA, from the `governor` crate). Refusals carry the wait, for `Retry-After`.
//!
//! Keys that are fully replenished are forgotten whenever the table has doubled since the
//! last sweep, so the memory follows the keys active in the last minute.

use std::{
    num::NonZeroU32,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

/// Tables smaller than this are never swept.
const SWEEP_FLOOR: usize = 4096;

/// A keyed rate limit.
#[derive(Debug)]
pub(crate) struct Throttle {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    sweep_at: AtomicUsize,
}

impl Throttle {
    /// `per_minute` events per key per minute (at least one).
    pub(crate) fn per_minute(per_minute: u32) -> Throttle {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        Throttle {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            sweep_at: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    /// Counts one event for `key`.
    ///
    /// # Errors
    /// The key is over its rate: how long until the next event is allowed (at least 1 s).
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        let len = self.limiter.len();
        if len >= self.sweep_at.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
            let kept = self.limiter.len();
            self.sweep_at.store((kept * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
        }
        self.limiter.check_key(&key.to_owned()).map_err(|not_until| {
            not_until.wait_time_from(self.clock.now()).max(Duration::from_secs(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_budget() {
        let throttle = Throttle::per_minute(3);
        for _ in 0..3 {
            assert!(throttle.check("a").is_ok());
        }
        let wait = throttle.check("a").unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(throttle.check("b").is_ok(), "another key is not affected");
    }
}
