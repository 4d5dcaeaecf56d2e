//! Which addresses the controller may send notifications to.
//!
//! The controller sits inside the network, so a sink URL is a way to make it send requests
//! to internal services (SSRF). Every address a sink resolves to is classified here; anything
//! that is not a public unicast address is refused unless `notify.allow_networks` (from the
//! configuration file, never from the API) contains it. Cloud metadata endpoints are refused
//! even inside an allowed network unless that network is the single address itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    UniqueLocal,
    SharedAddressSpace,
    Multicast,
    CloudMetadata,
    /// Documentation, benchmarking, protocol-assignment, reserved and broadcast ranges, and
    /// transition prefixes that embed another address.
    Reserved,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Unspecified => "unspecified",
            BlockReason::Loopback => "loopback",
            BlockReason::Private => "private",
            BlockReason::LinkLocal => "link-local",
            BlockReason::UniqueLocal => "unique-local",
            BlockReason::SharedAddressSpace => "shared address space (CGNAT)",
            BlockReason::Multicast => "multicast",
            BlockReason::CloudMetadata => "cloud metadata",
            BlockReason::Reserved => "reserved",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Instance metadata and host-agent endpoints of the big clouds.
const METADATA: &[IpAddr] = &[
    // AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS Route 53 resolver and ECS task metadata.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 253)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // Azure WireServer / host agent (a public-looking address).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Oracle Cloud.
    IpAddr::V4(Ipv4Addr::new(192, 0, 0, 192)),
    // AWS IMDS over IPv6 (Nitro).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("bad constant network"),
    }
}

const fn v6(segs: [u16; 8], len: u8) -> Ipv6Net {
    let a = Ipv6Addr::new(
        segs[0], segs[1], segs[2], segs[3], segs[4], segs[5], segs[6], segs[7],
    );
    match Ipv6Net::new(a, len) {
        Ok(n) => n,
        Err(_) => panic!("bad constant network"),
    }
}

/// IPv4 special-purpose ranges (IANA registry) that a notification never needs.
const BLOCKED_V4: &[(Ipv4Net, BlockReason)] = &[
    (v4(0, 0, 0, 0, 8), BlockReason::Unspecified),
    (v4(10, 0, 0, 0, 8), BlockReason::Private),
    (v4(100, 64, 0, 0, 10), BlockReason::SharedAddressSpace),
    (v4(127, 0, 0, 0, 8), BlockReason::Loopback),
    (v4(169, 254, 0, 0, 16), BlockReason::LinkLocal),
    (v4(172, 16, 0, 0, 12), BlockReason::Private),
    (v4(192, 0, 0, 0, 24), BlockReason::Reserved),
    (v4(192, 0, 2, 0, 24), BlockReason::Reserved),
    (v4(192, 88, 99, 0, 24), BlockReason::Reserved),
    (v4(192, 168, 0, 0, 16), BlockReason::Private),
    (v4(198, 18, 0, 0, 15), BlockReason::Reserved),
    (v4(198, 51, 100, 0, 24), BlockReason::Reserved),
    (v4(203, 0, 113, 0, 24), BlockReason::Reserved),
    (v4(224, 0, 0, 0, 4), BlockReason::Multicast),
    (v4(240, 0, 0, 0, 4), BlockReason::Reserved),
];

/// IPv6 special-purpose ranges. IPv4-mapped and NAT64 addresses are judged by the IPv4
/// address they carry (see [`classify`]).
const BLOCKED_V6: &[(Ipv6Net, BlockReason)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), BlockReason::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), BlockReason::Loopback),
    // IPv4-compatible (deprecated).
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), BlockReason::Reserved),
    // Local-use NAT64.
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        BlockReason::Reserved,
    ),
    // Discard-only.
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), BlockReason::Reserved),
    // IETF protocol assignments, Teredo, benchmarking, ORCHID.
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), BlockReason::Reserved),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        BlockReason::Reserved,
    ),
    // 6to4 (carries an IPv4 address).
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), BlockReason::Reserved),
    // Segment routing SIDs.
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), BlockReason::Reserved),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        BlockReason::UniqueLocal,
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        BlockReason::LinkLocal,
    ),
    // Site-local (deprecated).
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), BlockReason::Private),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), BlockReason::Multicast),
];

/// Why `ip` is refused by default, or `None` for a public unicast address.
pub fn classify(ip: IpAddr) -> Option<BlockReason> {
    if METADATA.contains(&ip) {
        return Some(BlockReason::CloudMetadata);
    }
    match ip {
        IpAddr::V4(a) => BLOCKED_V4
            .iter()
            .find(|(net, _)| net.contains(&a))
            .map(|(_, r)| *r),
        IpAddr::V6(a) => {
            if let Some(v4) = embedded_v4(a) {
                return classify(IpAddr::V4(v4));
            }
            BLOCKED_V6
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, r)| *r)
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or well-known NAT64
/// (`64:ff9b::a.b.c.d`) address: both reach that IPv4 host.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = a.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = a.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("notify.allow_networks entry {0:?} is not an address or CIDR network")]
    BadNetwork(String),
}

/// The address policy: default refusals plus the configuration file's `allow_networks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// An address refused by the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("address {address} is {reason} and not in notify.allow_networks")]
pub struct Blocked {
    pub address: IpAddr,
    pub reason: BlockReason,
}

impl EgressPolicy {
    /// `allow_networks` entries are CIDR networks or single addresses.
    pub fn new<S: AsRef<str>>(allow_networks: &[S]) -> Result<EgressPolicy, EgressError> {
        let mut allow = Vec::new();
        for n in allow_networks {
            let n = n.as_ref().trim();
            let net = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| EgressError::BadNetwork(n.chars().take(64).collect()))?;
            allow.push(net.trunc());
        }
        Ok(EgressPolicy { allow })
    }

    /// Ok for a public unicast address or one `allow_networks` contains; a cloud metadata
    /// address only when an entry is exactly that address (a broad range never opens it).
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let Some(reason) = classify(ip) else {
            return Ok(());
        };
        let allowed = if reason == BlockReason::CloudMetadata {
            self.allow
                .iter()
                .any(|n| n.addr() == ip && n.prefix_len() == n.max_prefix_len())
        } else {
            self.allow.iter().any(|n| n.contains(&ip))
        };
        if allowed {
            Ok(())
        } else {
            Err(Blocked {
                address: ip,
                reason,
            })
        }
    }

    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_refusals() {
        let p = EgressPolicy::default();
        for (a, r) in [
            ("127.0.0.1", BlockReason::Loopback),
            ("127.200.0.9", BlockReason::Loopback),
            ("::1", BlockReason::Loopback),
            ("0.0.0.0", BlockReason::Unspecified),
            ("::", BlockReason::Unspecified),
            ("10.1.2.3", BlockReason::Private),
            ("172.31.255.255", BlockReason::Private),
            ("192.168.1.1", BlockReason::Private),
            ("100.64.0.1", BlockReason::SharedAddressSpace),
            ("169.254.1.1", BlockReason::LinkLocal),
            ("fe80::1", BlockReason::LinkLocal),
            ("fd12:3456::1", BlockReason::UniqueLocal),
            ("fc00::1", BlockReason::UniqueLocal),
            ("224.0.0.1", BlockReason::Multicast),
            ("ff02::1", BlockReason::Multicast),
            ("169.254.169.254", BlockReason::CloudMetadata),
            ("fd00:ec2::254", BlockReason::CloudMetadata),
            ("168.63.129.16", BlockReason::CloudMetadata),
            ("100.100.100.200", BlockReason::CloudMetadata),
            ("::ffff:169.254.169.254", BlockReason::CloudMetadata),
            ("::ffff:127.0.0.1", BlockReason::Loopback),
            ("64:ff9b::10.0.0.1", BlockReason::Private),
            ("::127.0.0.1", BlockReason::Reserved),
            ("2002:7f00:1::", BlockReason::Reserved),
            ("2001:db8::1", BlockReason::Reserved),
            ("198.51.100.7", BlockReason::Reserved),
            ("255.255.255.255", BlockReason::Reserved),
        ] {
            assert_eq!(
                p.check(ip(a)),
                Err(Blocked {
                    address: ip(a).to_canonical(),
                    reason: r
                }),
                "{a}"
            );
        }
        for a in [
            "93.184.215.14",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn allow_networks_open_ranges_but_metadata_only_exactly() {
        let p = EgressPolicy::new(&["127.0.0.0/8", "10.20.0.0/16", "fd00::/8", "169.254.0.0/16"])
            .unwrap();
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("10.20.3.4")), Ok(()));
        assert!(p.check(ip("10.21.3.4")).is_err());
        assert_eq!(p.check(ip("169.254.1.1")), Ok(()));
        assert!(p.check(ip("169.254.169.254")).is_err());
        assert!(p.check(ip("fd00:ec2::254")).is_err());
        let exact = EgressPolicy::new(&["169.254.169.254"]).unwrap();
        assert_eq!(exact.check(ip("169.254.169.254")), Ok(()));
        let everything = EgressPolicy::new(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(everything.check(ip("169.254.169.254")).is_err());
        assert_eq!(everything.check(ip("192.168.0.1")), Ok(()));
        assert!(matches!(
            EgressPolicy::new(&["10.0.0.0/33"]),
            Err(EgressError::BadNetwork(_))
        ));
        assert!(matches!(
            EgressPolicy::new(&["localhost"]),
            Err(EgressError::BadNetwork(_))
        ));
    }
}
