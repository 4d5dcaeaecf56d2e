//! The protected-port policy: which (protocol, port) pairs are under JIT and what happens to
//! admitted flows when their grant ends. One type, used by the agent's config, the
//! controller's policies and the map writer.

use crate::maps::port_flags;
use crate::net::{ParseError, Port, Protocol};
use core::fmt;
use core::str::FromStr;

/// What happens to flows admitted under a grant once it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OnExpiry {
    /// Admitted flows continue until idle for the flow idle timeout (Azure's behaviour).
    #[default]
    Keep,
    /// Every packet stops at the end time, and the agent closes the local sockets.
    Cut,
}

impl OnExpiry {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Keep => "keep",
            OnExpiry::Cut => "cut",
        }
    }
}

impl fmt::Display for OnExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnExpiry {
    type Err = ProtectedPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep" => Ok(OnExpiry::Keep),
            "cut" => Ok(OnExpiry::Cut),
            _ => Err(ProtectedPortError::OnExpiry),
        }
    }
}

/// One protected (protocol, port) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtectedPort {
    pub protocol: Protocol,
    pub port: Port,
    pub on_expiry: OnExpiry,
}

impl ProtectedPort {
    /// The value of this pair's `JG_PROTECTED` slot.
    pub const fn flags(&self) -> u8 {
        match self.on_expiry {
            OnExpiry::Keep => port_flags::PROTECTED,
            OnExpiry::Cut => port_flags::PROTECTED | port_flags::CUT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectedPortError {
    /// Not of the form `PORT/PROTO[:keep|cut]`.
    Syntax,
    Port(ParseError),
    Protocol(ParseError),
    OnExpiry,
}

impl fmt::Display for ProtectedPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtectedPortError::Syntax => {
                f.write_str("expected PORT/PROTO[:keep|cut], e.g. 22/tcp:keep")
            }
            ProtectedPortError::Port(e) | ProtectedPortError::Protocol(e) => e.fmt(f),
            ProtectedPortError::OnExpiry => f.write_str("on_expiry must be keep or cut"),
        }
    }
}

impl core::error::Error for ProtectedPortError {}

impl fmt::Display for ProtectedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.port, self.protocol, self.on_expiry)
    }
}

impl FromStr for ProtectedPort {
    type Err = ProtectedPortError;
    /// `22/tcp`, `22/tcp:cut`, `3389/udp:keep`. (`*` is expanded by callers into two pairs.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pp, on_expiry) = match s.split_once(':') {
            Some((pp, e)) => (pp, e.parse()?),
            None => (s, OnExpiry::default()),
        };
        let (port, proto) = pp.split_once('/').ok_or(ProtectedPortError::Syntax)?;
        Ok(ProtectedPort {
            port: port.parse().map_err(ProtectedPortError::Port)?,
            protocol: proto.parse().map_err(ProtectedPortError::Protocol)?,
            on_expiry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protected_ports() {
        let p: ProtectedPort = "22/tcp:cut".parse().unwrap();
        assert_eq!(
            (p.port.get(), p.protocol, p.on_expiry),
            (22, Protocol::Tcp, OnExpiry::Cut)
        );
        assert_eq!(p.flags(), port_flags::PROTECTED | port_flags::CUT);
        let p: ProtectedPort = "3389/udp".parse().unwrap();
        assert_eq!(p.on_expiry, OnExpiry::Keep);
        for bad in [
            "22",
            "22/icmp",
            "0/tcp",
            "22/tcp:maybe",
            "70000/udp",
            "/tcp",
        ] {
            assert!(bad.parse::<ProtectedPort>().is_err(), "{bad}");
        }
    }
}
