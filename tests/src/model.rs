//! The reference model of the packet path: the specification of the verdict in plain Rust,
//! written from docs/dataplane.md and independent of the kernel program's code.
//!
//! State: the protected set, the grants, the admitted flows and the time. `step` returns the
//! verdict for a frame and updates the flows exactly as the program must (a flow is recorded
//! when a packet passes under an active grant and no flow exists yet).

use std::collections::HashMap;
use std::net::IpAddr;

use jitgate_agent::LinkLayer;
use jitgate_common::{OnExpiry, SourcePrefix};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// What the frame is, as far as the verdict is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    NotIp,
    Malformed,
    /// IP but not TCP/UDP (or an IPv6 chain ending in another header).
    Other,
    /// A non-first fragment: passes (RFC 1858/7112 policy), except TCP at offset 8 bytes.
    Fragment {
        tcp_offset8: bool,
    },
    ChainTooLong,
    L4 {
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        syn: bool,
    },
}

const MAX_EXT: usize = 8;

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Parses a packet per the specification, from the link layer `link` says it has.
pub fn parse_on(link: LinkLayer, f: &[u8]) -> Parsed {
    match link {
        LinkLayer::Ethernet => parse(f),
        // No link layer: the version nibble says what it is; nothing else is IP.
        LinkLayer::Ip => match f.first().map(|b| b >> 4) {
            Some(4) => ipv4(f, 0),
            Some(6) => ipv6(f, 0),
            _ => Parsed::Malformed,
        },
    }
}

/// Parses an Ethernet frame per the specification.
pub fn parse(f: &[u8]) -> Parsed {
    let Some(mut ethertype) = be16(f, 12) else {
        return Parsed::Malformed;
    };
    let mut off = 14;
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if tags == 2 {
            return Parsed::Malformed;
        }
        let Some(t) = be16(f, off + 2) else {
            return Parsed::Malformed;
        };
        ethertype = t;
        off += 4;
        tags += 1;
    }
    match ethertype {
        0x0800 => ipv4(f, off),
        0x86dd => ipv6(f, off),
        _ => Parsed::NotIp,
    }
}

fn ipv4(f: &[u8], off: usize) -> Parsed {
    if f.len() < off + 20 || f[off] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = usize::from(f[off] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[off + 2], f[off + 3]]));
    if ihl < 20 || total < ihl || off + total > f.len() {
        return Parsed::Malformed;
    }
    let proto = f[off + 9];
    if proto != 6 && proto != 17 {
        return Parsed::Other;
    }
    let frag = u16::from_be_bytes([f[off + 6], f[off + 7]]) & 0x1fff;
    if frag != 0 {
        return Parsed::Fragment {
            tcp_offset8: proto == 6 && frag == 1,
        };
    }
    let src = IpAddr::from(<[u8; 4]>::try_from(&f[off + 12..off + 16]).unwrap_or([0; 4]));
    let dst = IpAddr::from(<[u8; 4]>::try_from(&f[off + 16..off + 20]).unwrap_or([0; 4]));
    l4(f, off + ihl, total - ihl, proto, src, dst)
}

fn ipv6(f: &[u8], off: usize) -> Parsed {
    if f.len() < off + 40 || f[off] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload = usize::from(u16::from_be_bytes([f[off + 4], f[off + 5]]));
    if off + 40 + payload > f.len() {
        return Parsed::Malformed;
    }
    let src = IpAddr::from(<[u8; 16]>::try_from(&f[off + 8..off + 24]).unwrap_or([0; 16]));
    let dst = IpAddr::from(<[u8; 16]>::try_from(&f[off + 24..off + 40]).unwrap_or([0; 16]));
    let mut next = f[off + 6];
    let mut at = off + 40;
    let mut remaining = payload;
    for walked in 0..=MAX_EXT {
        match next {
            6 | 17 => return l4(f, at, remaining, next, src, dst),
            0 | 43 | 60 | 51 | 44 if walked == MAX_EXT => return Parsed::ChainTooLong,
            0 | 43 | 60 | 51 | 44 => {}
            _ => return Parsed::Other,
        }
        if next == 44 {
            if f.len() < at + 8 || remaining < 8 {
                return Parsed::Malformed;
            }
            let units8 = u16::from_be_bytes([f[at + 2], f[at + 3]]) >> 3;
            if units8 != 0 {
                return Parsed::Fragment {
                    tcp_offset8: f[at] == 6 && units8 == 1,
                };
            }
            next = f[at];
            at += 8;
            remaining -= 8;
        } else {
            if f.len() < at + 2 {
                return Parsed::Malformed;
            }
            let len = if next == 51 {
                (usize::from(f[at + 1]) + 2) * 4
            } else {
                (usize::from(f[at + 1]) + 1) * 8
            };
            if len > remaining {
                return Parsed::Malformed;
            }
            next = f[at];
            at += len;
            remaining -= len;
        }
    }
    Parsed::ChainTooLong
}

fn l4(f: &[u8], at: usize, len: usize, proto: u8, src: IpAddr, dst: IpAddr) -> Parsed {
    let need = if proto == 6 { 20 } else { 8 };
    if f.len() < at + need || len < need {
        return Parsed::Malformed;
    }
    if proto == 6 && f[at + 12] >> 4 < 5 {
        return Parsed::Malformed;
    }
    let flags = if proto == 6 { f[at + 13] } else { 0 };
    Parsed::L4 {
        proto,
        src,
        dst,
        sport: u16::from_be_bytes([f[at], f[at + 1]]),
        dport: u16::from_be_bytes([f[at + 2], f[at + 3]]),
        syn: proto == 6 && flags & 0x02 != 0 && flags & 0x10 == 0,
    }
}

#[derive(Clone, Debug)]
pub struct ModelGrant {
    pub proto: u8,
    pub port: u16,
    pub source: SourcePrefix,
    pub expires_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    grant_end: u64,
    last_seen: u64,
}

/// Protected set + grants + admitted flows + time.
#[derive(Default)]
pub struct Model {
    pub protected: HashMap<(u8, u16), OnExpiry>,
    pub grants: Vec<ModelGrant>,
    flows: HashMap<(u8, IpAddr, IpAddr, u16, u16), Flow>,
    pub idle_ns: u64,
}

impl Model {
    pub fn new(idle_ns: u64) -> Model {
        Model {
            idle_ns,
            ..Default::default()
        }
    }

    /// The latest end of an active grant covering (proto, port, src) at `now`.
    pub fn covering(&self, proto: u8, port: u16, src: IpAddr, now: u64) -> Option<u64> {
        self.grants
            .iter()
            .filter(|g| {
                g.proto == proto
                    && g.port == port
                    && g.source.contains_addr(src)
                    && g.expires_ns > now
            })
            .map(|g| g.expires_ns)
            .max()
    }

    /// Whether the model holds an admitted flow for this 5-tuple.
    pub fn has_flow(&self, proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> bool {
        self.flows.contains_key(&(proto, src, dst, sport, dport))
    }

    /// Removes flows (as revocation does in the agent).
    pub fn clear_flows(&mut self) {
        self.flows.clear();
    }

    pub fn step(&mut self, frame: &[u8], now: u64) -> (Verdict, Parsed) {
        self.step_on(LinkLayer::Ethernet, frame, now)
    }

    /// `step` for a device with link layer `link`.
    pub fn step_on(&mut self, link: LinkLayer, frame: &[u8], now: u64) -> (Verdict, Parsed) {
        let p = parse_on(link, frame);
        let v = match &p {
            Parsed::NotIp | Parsed::Other => Verdict::Pass,
            Parsed::Malformed | Parsed::ChainTooLong => Verdict::Drop,
            Parsed::Fragment { tcp_offset8 } => {
                if *tcp_offset8 {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                }
            }
            Parsed::L4 {
                proto,
                src,
                dst,
                sport,
                dport,
                syn,
            } => match self.protected.get(&(*proto, *dport)).copied() {
                None => Verdict::Pass,
                Some(on_expiry) => {
                    let key = (*proto, *src, *dst, *sport, *dport);
                    let active = self.covering(*proto, *dport, *src, now);
                    if !syn && let Some(f) = self.flows.get_mut(&key) {
                        if now < f.grant_end {
                            Verdict::Pass
                        } else if let Some(end) = active {
                            f.grant_end = end;
                            f.last_seen = now;
                            Verdict::Pass
                        } else if on_expiry == OnExpiry::Keep && now < f.last_seen + self.idle_ns {
                            Verdict::Pass
                        } else {
                            Verdict::Drop
                        }
                    } else {
                        match active {
                            Some(end) => {
                                self.flows.entry(key).or_insert(Flow {
                                    grant_end: end,
                                    last_seen: now,
                                });
                                Verdict::Pass
                            }
                            None => Verdict::Drop,
                        }
                    }
                }
            },
        };
        (v, p)
    }
}
