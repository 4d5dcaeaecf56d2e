//! Validated network vocabulary: protocols, ports and source prefixes, parsed once at the
//! boundary so that the rest of the code cannot hold a bad value.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::num::NonZeroU16;
use core::str::FromStr;

/// Why a protocol, port or prefix was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not `tcp` or `udp` (any case).
    Protocol,
    /// Not a whole number from 1 to 65535.
    Port,
    /// Not an IPv4 or IPv6 address.
    Address,
    /// The prefix length is not a number or exceeds 32 (IPv4) / 128 (IPv6).
    PrefixLength,
    /// The address has bits set beyond the prefix length (`203.0.113.7/24`).
    HostBits,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Protocol => "protocol must be tcp or udp",
            ParseError::Port => "port must be a whole number from 1 to 65535",
            ParseError::Address => "not an IPv4 or IPv6 address",
            ParseError::PrefixLength => "prefix length must be 0-32 for IPv4 and 0-128 for IPv6",
            ParseError::HostBits => {
                "address has bits set beyond the prefix length (use the network address)"
            }
        })
    }
}

impl core::error::Error for ParseError {}

/// A transport protocol the data plane can protect.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        self as u8
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Protocol::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Protocol::Udp)
        } else {
            Err(ParseError::Protocol)
        }
    }
}

/// A TCP or UDP port, 1..=65535. Port 0 cannot be represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    pub const fn new(p: u16) -> Option<Self> {
        match NonZeroU16::new(p) {
            Some(n) => Some(Port(n)),
            None => None,
        }
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Port {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        // u16::from_str accepts a leading '+'; a port is digits only.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Port);
        }
        s.parse::<u16>()
            .ok()
            .and_then(Port::new)
            .ok_or(ParseError::Port)
    }
}

/// A source address prefix (CIDR) in canonical form: no host bits set, so two equal
/// prefixes always have equal representations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix {
    addr: IpAddr,
    len: u8,
}

impl SourcePrefix {
    /// A prefix from an address and a length. Rejects host bits rather than masking them, so
    /// a typo such as `203.0.113.7/24` is never silently widened.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ParseError> {
        let max = Self::max_len_of(&addr);
        if len > max {
            return Err(ParseError::PrefixLength);
        }
        let addr = normalise(addr);
        let p = SourcePrefix { addr, len };
        if p.masked_addr() != addr {
            return Err(ParseError::HostBits);
        }
        Ok(p)
    }

    /// The host-length prefix of one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let addr = normalise(addr);
        SourcePrefix {
            addr,
            len: Self::max_len_of(&addr),
        }
    }

    const fn max_len_of(addr: &IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is a /32 or /128, which the data plane keeps in an exact-match hash map.
    pub const fn is_host(&self) -> bool {
        self.len == Self::max_len_of(&self.addr)
    }

    pub const fn is_ipv4(&self) -> bool {
        matches!(self.addr, IpAddr::V4(_))
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        let addr = normalise(addr);
        match (self.addr, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                SourcePrefix::host(addr).truncate(self.len) == *self
            }
            _ => false,
        }
    }

    /// Whether `other` lies entirely inside this prefix (a prefix contains itself).
    pub fn contains(&self, other: &SourcePrefix) -> bool {
        other.len >= self.len && self.contains_addr(other.addr)
    }

    /// This prefix shortened to `len` bits (no-op if already shorter).
    pub fn truncate(&self, len: u8) -> SourcePrefix {
        let len = len.min(self.len);
        let p = SourcePrefix {
            addr: self.addr,
            len,
        };
        SourcePrefix {
            addr: p.masked_addr(),
            len,
        }
    }

    fn masked_addr(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// The address bytes in network order (4 or 16 of them, left-aligned in 16).
    pub fn addr_bytes(&self) -> [u8; 16] {
        addr_bytes(self.addr)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the same host as its IPv4 address; store it as IPv4
/// so a grant for one covers the other.
pub fn normalise(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An address's bytes in network order, left-aligned in 16 bytes.
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for SourcePrefix {
    type Err = ParseError;
    /// `203.0.113.0/24`, `2001:db8::/32`, or a bare address meaning a host prefix.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s.split_once('/') {
            None => {
                let addr: IpAddr = s.parse().map_err(|_| ParseError::Address)?;
                Ok(SourcePrefix::host(addr))
            }
            Some((a, l)) => {
                let addr: IpAddr = a.parse().map_err(|_| ParseError::Address)?;
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::PrefixLength);
                }
                let len: u8 = l.parse().map_err(|_| ParseError::PrefixLength)?;
                // A mapped address's length counts over 128 bits; convert to the IPv4 length.
                let (addr, len) = match addr {
                    IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                        if len < 96 {
                            return Err(ParseError::PrefixLength);
                        }
                        (addr, len - 96)
                    }
                    _ => (addr, len),
                };
                SourcePrefix::new(addr, len)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SourcePrefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects_prefixes() {
        assert_eq!(p("203.0.113.0/24").prefix_len(), 24);
        assert_eq!(p("203.0.113.9").prefix_len(), 32);
        assert_eq!(p("2001:db8::/32").prefix_len(), 32);
        assert_eq!(p("2001:db8::1").prefix_len(), 128);
        assert_eq!(p("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(p("::ffff:203.0.113.0/120"), p("203.0.113.0/24"));
        assert_eq!(p("::ffff:203.0.113.9"), p("203.0.113.9/32"));
        for (bad, err) in [
            ("203.0.113.7/24", ParseError::HostBits),
            ("203.0.113.0/33", ParseError::PrefixLength),
            ("2001:db8::/129", ParseError::PrefixLength),
            ("203.0.113.0/", ParseError::PrefixLength),
            ("203.0.113.0/+8", ParseError::PrefixLength),
            ("203.0.113.0/-1", ParseError::PrefixLength),
            ("203.0.113/24", ParseError::Address),
            ("", ParseError::Address),
            ("example.com", ParseError::Address),
            ("2001:db8::1/64", ParseError::HostBits),
        ] {
            assert_eq!(bad.parse::<SourcePrefix>(), Err(err), "{bad}");
        }
    }

    #[test]
    fn containment() {
        let net = p("203.0.113.0/24");
        assert!(net.contains(&p("203.0.113.9")));
        assert!(net.contains(&net));
        assert!(!net.contains(&p("203.0.112.0/23")));
        assert!(!net.contains(&p("198.51.100.1")));
        assert!(!net.contains(&p("2001:db8::1")));
        assert!(p("0.0.0.0/0").contains(&p("198.51.100.1")));
        assert!(!p("0.0.0.0/0").contains(&p("2001:db8::1")));
        let v6 = p("2001:db8:1::/48");
        assert!(v6.contains(&p("2001:db8:1:2::/64")));
        assert!(!v6.contains(&p("2001:db8:2::1")));
        assert_eq!(p("203.0.113.9").truncate(24), net);
        assert!(net.contains_addr("::ffff:203.0.113.200".parse().unwrap()));
    }

    #[test]
    fn ports_and_protocols() {
        assert_eq!("22".parse::<Port>().unwrap().get(), 22);
        assert_eq!("65535".parse::<Port>().unwrap().get(), 65535);
        for bad in ["0", "65536", "-1", "+22", "", "22a", " 22"] {
            assert_eq!(bad.parse::<Port>(), Err(ParseError::Port), "{bad}");
        }
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("icmp".parse::<Protocol>(), Err(ParseError::Protocol));
    }
}
