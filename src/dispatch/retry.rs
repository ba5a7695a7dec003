//! Retry timing (SPEC §5, the three-day rule) as a pure function of the policy,
//! the delivery's cycle, an injected clock and an injected random number.
//!
//! A *cycle* starts at the event's commit time, or at the moment of a manual
//! retry; every age below is measured from that start. After a failed attempt:
//!
//! 1. At or past `cycle_start + disable_after`: disable.
//! 2. With `max_attempts` (default with a `schedule`: its length + 1): disable
//!    once that many attempts of the cycle have failed.
//! 3. Delay, while the age is below `backoff_window`: with a `schedule`, entry
//!    `n-1` (the last entry repeats); otherwise
//!    `min(initial * multiplier^(n-1), max_interval)` randomised by
//!    `+-jitter` of itself. From `backoff_window` on: `then_every`, no jitter.
//!    (`n` = attempts made in this cycle, the failed one included.)
//! 4. `Retry-After` on a 429 or 503 lengthens the delay to at most `then_every`:
//!    `delay = max(delay, min(retry_after, then_every))`. It never shortens it.
//! 5. The next attempt is at `now + delay` (at least 1 ms later), moved back to
//!    exactly `cycle_start + disable_after` if it would fall after it, so the
//!    last attempt happens at the deadline and a failure then disables the
//!    delivery on time rather than a whole `then_every` later.

use std::time::Duration;

use crate::config::RetryConfig;

/// What to do with a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this time (unix milliseconds). Always later than the `now`
    /// it was computed from and never after the cycle's disable deadline.
    RetryAt(i64),
    /// Give up: the delivery becomes `disabled` (it can be retried by hand).
    Disable,
}

/// The kind of a failed attempt, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A response with a non-2xx status (redirects included).
    Status(u16),
    Timeout,
    Connect,
    Other,
}

/// A failed attempt. `retry_after` is the receiver's `Retry-After`, whatever
/// the status; the policy honours it only for 429 and 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub retry_after: Option<Duration>,
    pub kind: FailureKind,
}

impl Failure {
    fn honoured_retry_after(&self) -> Option<Duration> {
        match self.kind {
            FailureKind::Status(429 | 503) => self.retry_after,
            _ => None,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The time (unix ms) at which a cycle that started at `cycle_start_ms` ends:
/// a delivery still failing then is disabled.
pub fn disable_at_ms(policy: &RetryConfig, cycle_start_ms: i64) -> i64 {
    cycle_start_ms.saturating_add(ms(policy.disable_after))
}

/// The attempt limit of a cycle, if any: `max_attempts`, or with a `schedule`
/// its length + 1 (the first attempt plus one per entry).
pub fn max_attempts(policy: &RetryConfig) -> Option<u32> {
    policy.max_attempts.or_else(|| {
        policy
            .schedule
            .as_ref()
            .map(|s| u32::try_from(s.len()).unwrap_or(u32::MAX).saturating_add(1))
    })
}

/// Decide what follows a failed attempt (see the module docs for the rules).
///
/// - `cycle_start_ms`: the event's commit time or the manual retry's time.
/// - `attempts_in_cycle`: attempts made in this cycle, the failed one included
///   (0 is treated as 1).
/// - `now_ms`: the current time (the end of the failed attempt).
/// - `jitter_unit`: a uniform random number in `[0, 1)`; `0.5` means no jitter.
///   Values outside `[0, 1]` are clamped.
pub fn after_failure(
    policy: &RetryConfig,
    cycle_start_ms: i64,
    attempts_in_cycle: u32,
    now_ms: i64,
    failure: &Failure,
    jitter_unit: f64,
) -> Decision {
    let deadline = disable_at_ms(policy, cycle_start_ms);
    if now_ms >= deadline {
        return Decision::Disable;
    }
    let n = attempts_in_cycle.max(1);
    if max_attempts(policy).is_some_and(|max| n >= max) {
        return Decision::Disable;
    }

    let then_every = ms(policy.then_every);
    // A commit time ahead of our clock gives a negative age: still backoff.
    let age = now_ms.saturating_sub(cycle_start_ms);
    let mut delay = if age < ms(policy.backoff_window) {
        match &policy.schedule {
            Some(schedule) => match schedule.get(n as usize - 1).or(schedule.last()) {
                Some(d) => ms(*d),
                None => then_every,
            },
            None => exponential_ms(policy, n, jitter_unit),
        }
    } else {
        then_every
    };
    if let Some(retry_after) = failure.honoured_retry_after() {
        delay = delay.max(ms(retry_after).min(then_every));
    }
    let next = now_ms.saturating_add(delay.max(1)).min(deadline);
    Decision::RetryAt(next)
}

/// `min(initial * multiplier^(n-1), max_interval)`, then `+-jitter` of it.
fn exponential_ms(policy: &RetryConfig, n: u32, jitter_unit: f64) -> i64 {
    // Past 2^1024 every finite multiplier > 1 has saturated to infinity anyway.
    let exponent = i32::try_from(n - 1).unwrap_or(i32::MAX).min(1100);
    let base = (ms(policy.initial) as f64 * policy.multiplier.powi(exponent))
        .min(ms(policy.max_interval) as f64);
    let jitter = policy.jitter.clamp(0.0, 1.0);
    let unit = if jitter_unit.is_nan() {
        0.5
    } else {
        jitter_unit.clamp(0.0, 1.0)
    };
    let jittered = base * (1.0 + jitter * (2.0 * unit - 1.0));
    if jittered.is_finite() {
        // `as` saturates, which is what we want for absurd configurations.
        jittered.round() as i64
    } else {
        ms(policy.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    const SEC: i64 = 1000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    /// An arbitrary commit time (2025-03-11T09:45:15.971Z).
    const T0: i64 = 1_741_686_315_971;

    fn fail(kind: FailureKind) -> Failure {
        Failure {
            retry_after: None,
            kind,
        }
    }

    fn status(code: u16, retry_after_secs: Option<u64>) -> Failure {
        Failure {
            retry_after: retry_after_secs.map(Duration::from_secs),
            kind: FailureKind::Status(code),
        }
    }

    /// Walk a cycle where every attempt fails instantly at the time it was
    /// scheduled (`attempt_duration` later), with jitter from `unit`. Returns the
    /// attempt start times, relative to the cycle start.
    fn walk(
        policy: &RetryConfig,
        attempt_duration: i64,
        mut unit: impl FnMut() -> f64,
    ) -> Vec<i64> {
        let mut attempts = vec![];
        let mut at = T0;
        loop {
            attempts.push(at - T0);
            assert!(attempts.len() < 10_000, "the cycle never ends");
            let now = at + attempt_duration;
            match after_failure(
                policy,
                T0,
                attempts.len() as u32,
                now,
                &fail(FailureKind::Status(500)),
                unit(),
            ) {
                Decision::RetryAt(next) => {
                    assert!(next > now, "next attempt {next} not after now {now}");
                    at = next;
                }
                Decision::Disable => return attempts,
            }
        }
    }

    #[test]
    fn default_policy_walks_three_days_without_jitter() {
        let attempts = walk(&RetryConfig::default(), 0, || 0.5);
        let expected_secs = [
            0, 30, 90, 210, 450, 930, 1890, 3810, 7650, 15330, 30690, // 30s doubling
            52290, 73890, 95490,  // capped at 6h; the last one already past 24h
            181890, // then every 24h
            259200, // the next (268290) moved to the 72h deadline
        ];
        let expected: Vec<i64> = expected_secs.iter().map(|s| s * SEC).collect();
        assert_eq!(attempts, expected);
        assert_eq!(attempts.iter().filter(|&&a| a < 24 * HOUR).count(), 13);
        assert_eq!(*attempts.last().unwrap(), 72 * HOUR);
    }

    #[test]
    fn default_policy_with_jitter_and_slow_attempts() {
        let policy = RetryConfig::default();
        for seed in 0..50 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let attempts = walk(&policy, 10 * SEC, || rng.r#gen::<f64>());
            let first_day = attempts.iter().filter(|&&a| a < 24 * HOUR).count();
            assert!((11..=16).contains(&first_day), "seed {seed}: {first_day}");
            // After the window, exactly one attempt a day (plus the attempt
            // that crossed into it), the last one at the deadline.
            let later: Vec<i64> = attempts
                .iter()
                .copied()
                .filter(|&a| a >= 24 * HOUR)
                .collect();
            assert!(later.len() <= 3, "seed {seed}: {later:?}");
            for pair in later.windows(2) {
                assert!(
                    pair[1] - pair[0] <= 24 * HOUR + 10 * SEC,
                    "seed {seed}: {later:?}"
                );
            }
            assert_eq!(*attempts.last().unwrap(), 72 * HOUR, "seed {seed}");
        }
    }

    #[test]
    fn disabled_at_the_deadline_not_before() {
        let policy = RetryConfig::default();
        let f = fail(FailureKind::Timeout);
        assert_eq!(
            after_failure(&policy, T0, 15, T0 + 72 * HOUR, &f, 0.5),
            Decision::Disable
        );
        assert_eq!(
            after_failure(&policy, T0, 15, T0 + 80 * HOUR, &f, 0.5),
            Decision::Disable
        );
        assert_eq!(
            after_failure(&policy, T0, 15, T0 + 72 * HOUR - 1, &f, 0.5),
            Decision::RetryAt(T0 + 72 * HOUR)
        );
        assert_eq!(disable_at_ms(&policy, T0), T0 + 72 * HOUR);
    }

    #[test]
    fn manual_retry_starts_a_fresh_cycle() {
        let policy = RetryConfig::default();
        // Ten days after the commit, a manual retry at `restart` failed once.
        let restart = T0 + 240 * HOUR;
        assert_eq!(
            after_failure(
                &policy,
                restart,
                1,
                restart + 100,
                &fail(FailureKind::Connect),
                0.5
            ),
            Decision::RetryAt(restart + 100 + 30 * SEC)
        );
    }

    #[test]
    fn exponential_delays_and_cap() {
        let policy = RetryConfig::default();
        let f = fail(FailureKind::Other);
        let delay = |n| match after_failure(&policy, T0, n, T0, &f, 0.5) {
            Decision::RetryAt(at) => at - T0,
            Decision::Disable => panic!("disabled"),
        };
        assert_eq!(delay(1), 30 * SEC);
        assert_eq!(delay(2), 60 * SEC);
        assert_eq!(delay(3), 120 * SEC);
        assert_eq!(delay(10), 30 * SEC * 512);
        assert_eq!(delay(11), 6 * HOUR);
        assert_eq!(delay(1000), 6 * HOUR);
        assert_eq!(delay(u32::MAX), 6 * HOUR);
        assert_eq!(delay(0), 30 * SEC);
    }

    #[test]
    fn jitter_bounds() {
        let policy = RetryConfig::default(); // jitter 0.2
        let f = fail(FailureKind::Status(500));
        let delay = |n, u| match after_failure(&policy, T0, n, T0, &f, u) {
            Decision::RetryAt(at) => at - T0,
            Decision::Disable => panic!("disabled"),
        };
        assert_eq!(delay(1, 0.0), 24 * SEC);
        assert_eq!(delay(1, 1.0), 36 * SEC);
        assert_eq!(delay(20, 0.0), 6 * HOUR * 8 / 10);
        assert_eq!(delay(20, 1.0), 6 * HOUR * 12 / 10);
        assert_eq!(delay(1, -3.0), 24 * SEC);
        assert_eq!(delay(1, 7.0), 36 * SEC);
        assert_eq!(delay(1, f64::NAN), 30 * SEC);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = (i64::MAX, i64::MIN);
        for _ in 0..2000 {
            let d = delay(3, rng.r#gen::<f64>());
            assert!((96 * SEC..=144 * SEC).contains(&d), "{d}");
            seen = (seen.0.min(d), seen.1.max(d));
        }
        // The randomisation actually spreads the delays.
        assert!(seen.0 < 100 * SEC && seen.1 > 140 * SEC, "{seen:?}");
        // No jitter after the backoff window.
        assert_eq!(
            after_failure(&policy, T0, 14, T0 + 30 * HOUR, &f, 0.0),
            Decision::RetryAt(T0 + 54 * HOUR)
        );
    }

    #[test]
    fn retry_after_lengthens_for_429_and_503_only() {
        let policy = RetryConfig::default();
        let at = |f: Failure| after_failure(&policy, T0, 1, T0, &f, 0.5);
        assert_eq!(at(status(429, Some(3600))), Decision::RetryAt(T0 + HOUR));
        assert_eq!(at(status(503, Some(7))), Decision::RetryAt(T0 + 30 * SEC));
        assert_eq!(at(status(503, Some(90))), Decision::RetryAt(T0 + 90 * SEC));
        // Clamped to then_every.
        assert_eq!(
            at(status(429, Some(5 * 24 * 3600))),
            Decision::RetryAt(T0 + 24 * HOUR)
        );
        // Ignored on other statuses.
        assert_eq!(
            at(status(500, Some(3600))),
            Decision::RetryAt(T0 + 30 * SEC)
        );
        assert_eq!(
            at(Failure {
                retry_after: Some(Duration::from_secs(3600)),
                kind: FailureKind::Timeout
            }),
            Decision::RetryAt(T0 + 30 * SEC)
        );
        // Still capped by the deadline.
        assert_eq!(
            after_failure(
                &policy,
                T0,
                9,
                T0 + 71 * HOUR,
                &status(429, Some(7200)),
                0.5
            ),
            Decision::RetryAt(T0 + 72 * HOUR)
        );
    }

    #[test]
    fn schedule_with_default_max_attempts() {
        let policy = RetryConfig {
            schedule: Some(
                [60, 300, 900, 3600]
                    .into_iter()
                    .map(Duration::from_secs)
                    .collect(),
            ),
            ..RetryConfig::default()
        };
        assert_eq!(max_attempts(&policy), Some(5));
        let attempts = walk(&policy, 0, || 0.0);
        assert_eq!(attempts, [0, MIN, 6 * MIN, 21 * MIN, 81 * MIN]);
    }

    #[test]
    fn schedule_last_entry_repeats_up_to_max_attempts() {
        let policy = RetryConfig {
            schedule: Some(vec![Duration::from_secs(60), Duration::from_secs(3600)]),
            max_attempts: Some(5),
            ..RetryConfig::default()
        };
        let attempts = walk(&policy, 0, || 0.9);
        assert_eq!(attempts, [0, MIN, 61 * MIN, 121 * MIN, 181 * MIN]);
    }

    #[test]
    fn schedule_still_capped_by_disable_after() {
        let policy = RetryConfig {
            schedule: Some(vec![Duration::from_secs(60), Duration::from_secs(3600)]),
            max_attempts: Some(10),
            disable_after: Duration::from_secs(30 * 60),
            ..RetryConfig::default()
        };
        let attempts = walk(&policy, 0, || 0.5);
        assert_eq!(attempts, [0, MIN, 30 * MIN]);
    }

    #[test]
    fn schedule_then_every_after_the_window() {
        // The schedule replaces only the exponential part: past backoff_window
        // the delay is then_every.
        let policy = RetryConfig {
            schedule: Some(vec![Duration::from_secs(3600)]),
            max_attempts: Some(100),
            backoff_window: Duration::from_secs(2 * 3600),
            then_every: Duration::from_secs(5 * 3600),
            disable_after: Duration::from_secs(20 * 3600),
            ..RetryConfig::default()
        };
        let attempts = walk(&policy, 0, || 0.5);
        assert_eq!(
            attempts,
            [0, HOUR, 2 * HOUR, 7 * HOUR, 12 * HOUR, 17 * HOUR, 20 * HOUR]
        );
    }

    #[test]
    fn fast_test_policy_in_milliseconds() {
        // The whole rule scaled down, as integration tests configure it.
        let policy = RetryConfig {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_interval: Duration::from_millis(400),
            backoff_window: Duration::from_secs(1),
            then_every: Duration::from_secs(1),
            disable_after: Duration::from_secs(3),
            jitter: 0.0,
            schedule: None,
            max_attempts: None,
        };
        let attempts = walk(&policy, 0, || 0.3);
        assert_eq!(attempts, [0, 100, 300, 700, 1100, 2100, 3000]);
    }

    #[test]
    fn next_is_always_after_now_and_within_deadline() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let policies = [
            RetryConfig::default(),
            RetryConfig {
                initial: Duration::ZERO,
                jitter: 1.0,
                ..RetryConfig::default()
            },
            RetryConfig {
                schedule: Some(vec![Duration::ZERO]),
                max_attempts: Some(u32::MAX),
                then_every: Duration::ZERO,
                ..RetryConfig::default()
            },
        ];
        for policy in &policies {
            let deadline = disable_at_ms(policy, T0);
            for _ in 0..5000 {
                let now = T0 + rng.gen_range(-HOUR..80 * HOUR);
                let n = rng.gen_range(0..40);
                let f = status(
                    [429, 503, 500, 302][rng.gen_range(0..4)],
                    Some(rng.gen_range(0..200_000)),
                );
                match after_failure(policy, T0, n, now, &f, rng.r#gen::<f64>()) {
                    Decision::RetryAt(next) => {
                        assert!(next > now, "{next} <= {now}");
                        assert!(next <= deadline);
                    }
                    // None of these policies can reach its attempt limit here.
                    Decision::Disable => assert!(now >= deadline, "disabled at {now}"),
                }
            }
        }
    }
}
