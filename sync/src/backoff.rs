//! Reconnect backoff: how long to wait before the next attempt to reach a peer.
//!
//! A pure function of the attempt count (no clock, no randomness), so the simulation and the
//! daemon compute the same schedule and tests can state it exactly. Offices are few (the roster
//! allows 256) and dial each other by a fixed rule, so there is no thundering herd to jitter away.

use std::time::Duration;

/// Delay before the first retry.
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(250);
/// Longest delay: an office that comes back is found within this long.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);

/// Delay before reconnect attempt `attempt` (0 = the first retry after a failure or a dropped
/// connection): 250 ms doubling per attempt, capped at 30 s. Reset the count after a session
/// completes a sync round.
pub fn reconnect_delay(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    RECONNECT_DELAY_MIN
        .checked_mul(factor)
        .map_or(RECONNECT_DELAY_MAX, |d| d.min(RECONNECT_DELAY_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let ms: Vec<u128> = (0..10).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(
            ms,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_DELAY_MAX);
        assert!((0..100).all(|a| reconnect_delay(a) <= reconnect_delay(a + 1)));
    }
}
