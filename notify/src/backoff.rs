//! When to try a delivery again, and when to give up.
//!
//! [`next_attempt`] is a pure function of the policy, the attempt count, the first attempt's
//! time, the last outcome and a jitter value, so the worker's schedule is tested without a
//! clock or a random generator. Delays grow exponentially (`initial * 2^(attempts-1)`, at
//! most `max_interval`) with "equal jitter" (half fixed, half random), so retries of many
//! deliveries spread out but never come sooner than half the nominal delay. A `Retry-After`
//! from the receiver is honoured exactly (never earlier). Once the next attempt would fall
//! after `first_attempt + give_up_after` (default 24 h), or the failure is permanent
//! ([`crate::FailureKind::is_permanent`]), the delivery is dead.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;

use crate::outcome::{Failure, UnknownName};

/// The retry schedule (`notify.retry_*` and `notify.give_up_after_seconds` in the
/// configuration file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The nominal delay after the first failure.
    pub initial: Duration,
    /// The longest delay between two attempts.
    pub max_interval: Duration,
    /// No attempt starts later than this after the first one.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(10),
            max_interval: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    RetryAt(OffsetDateTime),
    Dead,
}

/// The nominal (un-jittered) delay after `attempts` failed attempts (1 = the first failure).
pub fn nominal_delay(policy: &RetryPolicy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(40);
    policy
        .initial
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(policy.max_interval)
        .min(policy.max_interval)
}

/// The next attempt after a failure. `attempts` counts attempts made so far, this one
/// included; `jitter` is uniform in `[0, 1)` (clamped).
pub fn next_attempt(
    policy: &RetryPolicy,
    first_attempt: OffsetDateTime,
    attempts: u32,
    failure: &Failure,
    now: OffsetDateTime,
    jitter: f64,
) -> Next {
    if failure.kind.is_permanent() {
        return Next::Dead;
    }
    let delay = match failure.retry_after {
        Some(asked) => asked,
        None => {
            let nominal = nominal_delay(policy, attempts);
            let j = if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.0
            };
            nominal / 2 + nominal.mul_f64(j / 2.0)
        }
    };
    let Ok(delay) = time::Duration::try_from(delay) else {
        return Next::Dead;
    };
    let Ok(limit) = time::Duration::try_from(policy.give_up_after) else {
        return Next::Dead;
    };
    let at = now + delay;
    if at > first_attempt + limit {
        Next::Dead
    } else {
        Next::RetryAt(at)
    }
}

/// Where one delivery (one event to one sink) stands; the outbox's `state` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Not attempted yet.
    Queued,
    /// Failed at least once, another attempt is scheduled.
    Retrying,
    Delivered,
    /// Given up (limit reached or permanent failure) until `jit notify retry`.
    Dead,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Queued,
        DeliveryState::Retrying,
        DeliveryState::Delivered,
        DeliveryState::Dead,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
    /// Waiting to be attempted (and blocking later events of the same request).
    pub fn is_pending(self) -> bool {
        matches!(self, DeliveryState::Queued | DeliveryState::Retrying)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownName(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureKind;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn fail(kind: FailureKind) -> Failure {
        Failure::new(kind, "test")
    }

    #[test]
    fn exponential_with_equal_jitter_capped() {
        let p = RetryPolicy::default();
        let f = fail(FailureKind::Http5xx);
        // Jitter 0 gives half the nominal delay, jitter 1 the whole of it.
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 0.0),
            Next::RetryAt(t(5))
        );
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 1.0),
            Next::RetryAt(t(10))
        );
        let Next::RetryAt(almost) = next_attempt(&p, t(0), 1, &f, t(0), 0.999) else {
            panic!()
        };
        assert!(almost > t(9) && almost < t(10), "{almost}");
        assert_eq!(
            next_attempt(&p, t(0), 2, &f, t(0), 0.0),
            Next::RetryAt(t(10))
        );
        assert_eq!(
            next_attempt(&p, t(0), 4, &f, t(0), 0.5),
            Next::RetryAt(t(60))
        );
        // 10 s * 2^9 = 5120 s > 1 h: capped.
        assert_eq!(nominal_delay(&p, 10), Duration::from_secs(3600));
        assert_eq!(nominal_delay(&p, 1_000_000), Duration::from_secs(3600));
        let Next::RetryAt(at) = next_attempt(&p, t(0), 30, &f, t(100), 0.5) else {
            panic!()
        };
        assert_eq!(at, t(100 + 2700));
        // Out-of-range jitter is clamped, never negative or larger than the nominal delay.
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), -3.0),
            Next::RetryAt(t(5))
        );
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), f64::NAN),
            Next::RetryAt(t(5))
        );
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 7.0),
            Next::RetryAt(t(10))
        );
    }

    #[test]
    fn dead_after_the_limit() {
        let p = RetryPolicy::default();
        let f = fail(FailureKind::Timeout);
        let day = 24 * 3600;
        assert_eq!(
            next_attempt(&p, t(0), 40, &f, t(day - 1800), 0.0),
            Next::RetryAt(t(day))
        );
        assert_eq!(
            next_attempt(&p, t(0), 40, &f, t(day - 1799), 0.0),
            Next::Dead
        );
        let short = RetryPolicy {
            give_up_after: Duration::from_secs(60),
            ..p
        };
        assert_eq!(next_attempt(&short, t(0), 3, &f, t(50), 0.0), Next::Dead);
    }

    #[test]
    fn retry_after_is_honoured_exactly_and_bounded_by_the_limit() {
        let p = RetryPolicy::default();
        let mut f = fail(FailureKind::RateLimited);
        f.retry_after = Some(Duration::from_secs(7));
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 0.9),
            Next::RetryAt(t(7))
        );
        f.retry_after = Some(Duration::from_secs(2 * 3600));
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 0.9),
            Next::RetryAt(t(7200))
        );
        f.retry_after = Some(Duration::from_secs(25 * 3600));
        assert_eq!(next_attempt(&p, t(0), 1, &f, t(0), 0.9), Next::Dead);
        // Without Retry-After a 429 backs off like any transient failure.
        f.retry_after = None;
        assert_eq!(
            next_attempt(&p, t(0), 1, &f, t(0), 0.0),
            Next::RetryAt(t(5))
        );
    }

    #[test]
    fn permanent_failures_are_dead_at_once() {
        let p = RetryPolicy::default();
        for k in FailureKind::ALL {
            let n = next_attempt(&p, t(0), 1, &fail(k), t(0), 0.0);
            assert_eq!(n == Next::Dead, k.is_permanent(), "{k}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
        }
        assert!("done".parse::<DeliveryState>().is_err());
    }
}
