//! CLOCK_BOOTTIME, the clock the kernel program compares grant ends against.
//!
//! Wall-clock ends (UTC) are converted to boot time once, when a grant is written. After
//! that, no change to the wall clock can lengthen or shorten the grant: boot time only moves
//! forward, including across suspend.

use std::time::{Duration, SystemTime};

/// A point on CLOCK_BOOTTIME, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(pub u64);

impl BootInstant {
    pub fn now() -> Self {
        // clock_gettime(CLOCK_BOOTTIME) cannot fail on Linux with a valid clock id.
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        BootInstant(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
    }

    /// The boot-time instant corresponding to a UTC wall-clock instant, read now. An end in
    /// the past maps to a boot time in the past (the grant is inactive at once).
    pub fn from_utc(end: SystemTime) -> Self {
        let boot = Self::now();
        let wall = SystemTime::now();
        match end.duration_since(wall) {
            Ok(ahead) => boot.saturating_add(ahead),
            Err(behind) => boot.saturating_sub(behind.duration()),
        }
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        BootInstant(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        BootInstant(
            self.0
                .saturating_sub(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    /// Time from now until this instant; zero if already past.
    pub fn remaining(self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(Self::now().0))
    }

    /// The wall-clock instant corresponding to this boot time, read now.
    pub fn to_utc(self) -> SystemTime {
        let now = Self::now();
        let wall = SystemTime::now();
        if self.0 >= now.0 {
            wall + Duration::from_nanos(self.0 - now.0)
        } else {
            wall - Duration::from_nanos(now.0 - self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_round_trip_is_close() {
        let end = SystemTime::now() + Duration::from_secs(60);
        let b = BootInstant::from_utc(end);
        let r = b.remaining();
        assert!(
            r > Duration::from_secs(59) && r <= Duration::from_secs(60),
            "{r:?}"
        );
        let past = BootInstant::from_utc(SystemTime::now() - Duration::from_secs(5));
        assert!(past < BootInstant::now());
        assert_eq!(past.remaining(), Duration::ZERO);
    }
}
