//! Protocols and port specifications as operators write them.

use std::fmt;
use std::str::FromStr;

use jitgate_common::{Port, Protocol};

/// A policy's or request's protocol: `TCP`, `UDP` or `*` (both). Case-insensitive on input
/// (`any` is `*`); written in capitals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoSel {
    Tcp,
    Udp,
    Any,
}

/// Not TCP, UDP or `*`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0:?} is invalid: use TCP, UDP or *")]
pub struct ProtoSelError(pub String);

impl ProtoSel {
    pub const fn as_str(self) -> &'static str {
        match self {
            ProtoSel::Tcp => "TCP",
            ProtoSel::Udp => "UDP",
            ProtoSel::Any => "*",
        }
    }

    /// The concrete protocols: `*` is one TCP and one UDP.
    pub const fn expand(self) -> &'static [Protocol] {
        match self {
            ProtoSel::Tcp => &[Protocol::Tcp],
            ProtoSel::Udp => &[Protocol::Udp],
            ProtoSel::Any => &[Protocol::Tcp, Protocol::Udp],
        }
    }

    pub fn covers(self, p: Protocol) -> bool {
        self.expand().contains(&p)
    }

    /// The one concrete protocol (None for `*`).
    pub const fn concrete(self) -> Option<Protocol> {
        match self {
            ProtoSel::Tcp => Some(Protocol::Tcp),
            ProtoSel::Udp => Some(Protocol::Udp),
            ProtoSel::Any => None,
        }
    }
}

impl From<Protocol> for ProtoSel {
    fn from(p: Protocol) -> ProtoSel {
        match p {
            Protocol::Tcp => ProtoSel::Tcp,
            Protocol::Udp => ProtoSel::Udp,
        }
    }
}

impl FromStr for ProtoSel {
    type Err = ProtoSelError;
    fn from_str(s: &str) -> Result<ProtoSel, ProtoSelError> {
        if s == "*" || s.eq_ignore_ascii_case("any") {
            return Ok(ProtoSel::Any);
        }
        match s.parse::<Protocol>() {
            Ok(p) => Ok(p.into()),
            Err(_) => Err(ProtoSelError(s.to_string())),
        }
    }
}

impl TryFrom<String> for ProtoSel {
    type Error = ProtoSelError;
    fn try_from(s: String) -> Result<ProtoSel, ProtoSelError> {
        s.parse()
    }
}

impl fmt::Display for ProtoSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ProtoSel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ProtoSel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ProtoSel, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `22`, `22/tcp`, `53/udp`, `3389/*`: a port, and its protocol if given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub port: Port,
    pub protocol: Option<ProtoSel>,
}

/// A port specification that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("port {0:?} is invalid: use a whole number from 1 to 65535")]
    Port(String),
    #[error("protocol {0:?} is invalid: use tcp, udp or *")]
    Protocol(String),
}

impl FromStr for PortSpec {
    type Err = PortSpecError;
    fn from_str(s: &str) -> Result<PortSpec, PortSpecError> {
        let (p, proto) = match s.split_once('/') {
            Some((p, pr)) => (p, Some(pr)),
            None => (s, None),
        };
        let port: Port = p.parse().map_err(|_| PortSpecError::Port(p.to_string()))?;
        let protocol = proto
            .map(|pr| {
                pr.parse::<ProtoSel>()
                    .map_err(|_| PortSpecError::Protocol(pr.to_string()))
            })
            .transpose()?;
        Ok(PortSpec { port, protocol })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            None => write!(f, "{}", self.port),
            Some(ProtoSel::Any) => write!(f, "{}/*", self.port),
            Some(p) => write!(f, "{}/{}", self.port, p.as_str().to_ascii_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        assert_eq!("tcp".parse(), Ok(ProtoSel::Tcp));
        assert_eq!("Any".parse(), Ok(ProtoSel::Any));
        assert_eq!("*".parse(), Ok(ProtoSel::Any));
        assert!("icmp".parse::<ProtoSel>().is_err());
        assert!(ProtoSel::Any.covers(Protocol::Udp) && !ProtoSel::Tcp.covers(Protocol::Udp));
        assert_eq!(serde_json::to_string(&ProtoSel::Any).unwrap(), "\"*\"");
    }

    #[test]
    fn port_specs() {
        let p = |s: &str| s.parse::<PortSpec>().map(|x| (x.port.get(), x.protocol));
        assert_eq!(p("22"), Ok((22, None)));
        assert_eq!(p("22/tcp"), Ok((22, Some(ProtoSel::Tcp))));
        assert_eq!(p("53/UDP"), Ok((53, Some(ProtoSel::Udp))));
        assert_eq!(p("3389/*"), Ok((3389, Some(ProtoSel::Any))));
        for bad in ["0", "65536", "x", "22/icmp", "/tcp", ""] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!("22/TCP".parse::<PortSpec>().unwrap().to_string(), "22/tcp");
    }
}
