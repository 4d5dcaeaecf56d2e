//! Connection limits: a grant that admits only its first N new connections.

use core::fmt;
use core::num::NonZeroU16;
use core::str::FromStr;

/// How many new connections (TCP connections whose SYN was admitted, or UDP flows whose
/// first packet was) a grant admits. At least 1; a grant without one is unlimited. Two bytes,
/// so that the agent's grant row stays 72 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaxConnections(NonZeroU16);

/// Why a connection limit was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxConnectionsError;

impl fmt::Display for MaxConnectionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "maxConnections must be a whole number from 1 to {}",
            MaxConnections::MAX.get()
        )
    }
}

impl core::error::Error for MaxConnectionsError {}

impl MaxConnections {
    /// The largest limit accepted: far beyond what a limited grant is for (a handful of
    /// sessions), and it fits the agent's grant row.
    pub const MAX: MaxConnections = MaxConnections(NonZeroU16::MAX);
    pub const ONE: MaxConnections = MaxConnections(NonZeroU16::MIN);

    pub const fn new(n: u32) -> Option<Self> {
        if n > u16::MAX as u32 {
            return None;
        }
        match NonZeroU16::new(n as u16) {
            Some(v) => Some(MaxConnections(v)),
            None => None,
        }
    }

    pub const fn get(self) -> u32 {
        self.0.get() as u32
    }
}

impl TryFrom<u64> for MaxConnections {
    type Error = MaxConnectionsError;
    fn try_from(n: u64) -> Result<Self, Self::Error> {
        u32::try_from(n)
            .ok()
            .and_then(MaxConnections::new)
            .ok_or(MaxConnectionsError)
    }
}

impl fmt::Display for MaxConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for MaxConnections {
    type Err = MaxConnectionsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map_err(|_| MaxConnectionsError)
            .and_then(MaxConnections::try_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(MaxConnections::new(0), None);
        assert_eq!(MaxConnections::new(1), Some(MaxConnections::ONE));
        assert_eq!(
            MaxConnections::new(65_535).map(MaxConnections::get),
            Some(65_535)
        );
        assert_eq!(MaxConnections::new(65_536), None);
        assert_eq!("3".parse::<MaxConnections>().map(|m| m.get()), Ok(3));
        assert!("-1".parse::<MaxConnections>().is_err());
        assert!("x".parse::<MaxConnections>().is_err());
        assert!(MaxConnections::try_from(u64::MAX).is_err());
    }
}
