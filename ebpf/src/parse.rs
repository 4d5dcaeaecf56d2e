//! Packet parsing: Ethernet, up to two VLAN tags, IPv4 (options, fragments), IPv6 with a
//! bounded extension-header chain, then the TCP/UDP ports. Devices without a link-layer
//! header (tunnels: WireGuard, GRE, ipip, tun) start at the IP header ([`Link::Ip`]); from
//! there both share every step.
//!
//! The rule is fail closed: a packet that might be for a protected port but cannot be parsed
//! far enough to be sure is dropped. Fragment policy (RFC 1858, RFC 7112): only a first
//! fragment carries the ports, so it gets the full verdict and must hold the whole transport
//! header (and, for IPv6, the whole header chain). Non-first fragments pass: without their
//! first fragment the stack cannot reassemble them into anything, so they grant nothing. The
//! one exception is a TCP fragment at offset 8 bytes, the overlapping-fragment attack of
//! RFC 1858 section 3.2, which is dropped.

use aya_ebpf::{
    bindings::xdp_action,
    programs::{TcContext, XdpContext},
};
use jitgate_common::{
    Counter,
    event::{FAMILY_V4, FAMILY_V6},
};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Longest IPv6 extension-header chain walked. Longer chains are dropped.
pub const MAX_EXT_HDRS: usize = 8;

/// A TCP/UDP packet whose ports are known. Addresses are read only when the port turns out
/// to be protected (see [`addresses`]), so unprotected traffic never pays for them.
pub struct Parsed {
    pub family: u8,
    pub proto: u8,
    pub tcp_syn: bool,
    /// The TCP sequence number as its bytes were on the wire (0 for UDP): tells a
    /// retransmitted SYN from a new connection on the same 5-tuple.
    pub tcp_seq: u32,
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    /// Offset of the IP header.
    pub l3: usize,
}

/// An address in network order (IPv4 in the first four bytes), held as two words so that
/// building and copying it take word stores: byte arrays make LLVM emit calls to a
/// byte-at-a-time `memset`, which cost more than the rest of the path.
#[derive(Clone, Copy)]
pub struct Ip16(pub [u64; 2]);

impl Ip16 {
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        // SAFETY: same size, no invalid bit patterns.
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(self.0) }
    }

    /// Bytes 8..16 cleared: the IPv6 /64 (no-op for IPv4, whose tail is already zero).
    #[inline(always)]
    pub fn prefix64(&self) -> Ip16 {
        Ip16([self.0[0], 0])
    }
}

/// The packet a hook hands the program: bytes readable directly in `[data, data_end)`, and
/// the whole packet's length (XDP: the same span; tc: the skb, whose tail may lie beyond the
/// linear part that was pulled).
pub trait Pkt {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes of the whole packet from `data`.
    fn len(&self) -> usize;
    /// VLAN tags the hook already took off the packet into metadata (tc: 0 or 1).
    fn tags_outside(&self) -> usize;
    fn ifindex(&self) -> u32;
}

impl Pkt for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn tags_outside(&self) -> usize {
        0
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed in.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

impl Pkt for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
    #[inline(always)]
    fn tags_outside(&self) -> usize {
        // SAFETY: the context the kernel passed in.
        (unsafe { (*self.skb.skb).vlan_present } != 0) as usize
    }
    #[inline(always)]
    // The interface the packet arrived on, as XDP's ingress_ifindex: on tc ingress `ifindex`
    // is the same device, but `ingress_ifindex` stays right if the program is ever moved.
    #[allow(clippy::misnamed_getters)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context the kernel passed in.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
}

/// Source and destination addresses.
#[inline(always)]
pub fn addresses<C: Pkt>(ctx: &C, p: &Parsed) -> Option<(Ip16, Ip16)> {
    // Little-endian loads keep the bytes in memory order (bpfel).
    if p.family == FAMILY_V4 {
        let a = load::<[u8; 8]>(ctx, p.l3 + 12)?;
        let s = u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as u64;
        let d = u32::from_le_bytes([a[4], a[5], a[6], a[7]]) as u64;
        Some((Ip16([s, 0]), Ip16([d, 0])))
    } else {
        let a = load::<[u8; 32]>(ctx, p.l3 + 8)?;
        let w = |i: usize| {
            u64::from_le_bytes([
                a[i],
                a[i + 1],
                a[i + 2],
                a[i + 3],
                a[i + 4],
                a[i + 5],
                a[i + 6],
                a[i + 7],
            ])
        };
        Some((Ip16([w(0), w(8)]), Ip16([w(16), w(24)])))
    }
}

pub enum Verdict {
    /// Decided by parsing alone.
    Decided(u32, Counter),
    /// TCP/UDP with known ports: the enforcement decides.
    Inspect(Parsed),
}

const fn malformed() -> Verdict {
    Verdict::Decided(xdp_action::XDP_DROP, Counter::DroppedMalformed)
}

const fn pass(c: Counter) -> Verdict {
    Verdict::Decided(xdp_action::XDP_PASS, c)
}

#[inline(always)]
fn load<T: Copy>(ctx: &impl Pkt, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; T is a byte array (align 1).
    Some(unsafe { *((start + off) as *const T) })
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    ((a as u16) << 8) | b as u16
}

/// Where a packet handed to XDP begins, which is a property of the device's link type.
#[derive(Clone, Copy)]
pub enum Link {
    /// An Ethernet header (Ethernet, veth, VXLAN, loopback).
    Ethernet,
    /// The IP header itself, version from its first nibble: generic XDP on a device without
    /// a link-layer header points `data` at the network header.
    Ip,
}

#[inline(always)]
pub fn parse<C: Pkt>(ctx: &C, link: Link) -> Verdict {
    match link {
        Link::Ethernet => ethernet(ctx),
        Link::Ip => ip(ctx),
    }
}

/// No link-layer header. There is no protocol field to say what follows either, so a version
/// other than 4 or 6 is dropped: we cannot tell a corrupt IP packet from something else.
#[inline(always)]
fn ip<C: Pkt>(ctx: &C) -> Verdict {
    // The shortest IP header (IPv4, 20 bytes): a one-byte check compiles to `data >= end`,
    // which the verifier does not take as a bound.
    let Some(h) = load::<[u8; 20]>(ctx, 0) else {
        return malformed();
    };
    match h[0] >> 4 {
        4 => ipv4(ctx, 0),
        6 => ipv6(ctx, 0),
        _ => malformed(),
    }
}

#[inline(always)]
fn ethernet<C: Pkt>(ctx: &C) -> Verdict {
    let Some(eth) = load::<[u8; 14]>(ctx, 0) else {
        return malformed();
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut off = 14usize;
    // A tag the hook moved into metadata (tc) counts against the two walked here.
    let outside = ctx.tags_outside();
    if outside > 0 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        let Some(tag) = load::<[u8; 4]>(ctx, off) else {
            return malformed();
        };
        ethertype = be16(tag[2], tag[3]);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return malformed();
        }
    } else if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = load::<[u8; 4]>(ctx, off) else {
            return malformed();
        };
        ethertype = be16(tag[2], tag[3]);
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = load::<[u8; 4]>(ctx, off) else {
                return malformed();
            };
            ethertype = be16(tag[2], tag[3]);
            off += 4;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                // More tags than we walk: we cannot see what is inside.
                return malformed();
            }
        }
    }
    match ethertype {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => pass(Counter::PassedNonIp),
    }
}

#[inline(always)]
fn ipv4<C: Pkt>(ctx: &C, off: usize) -> Verdict {
    let Some(h) = load::<[u8; 20]>(ctx, off) else {
        return malformed();
    };
    if h[0] >> 4 != 4 {
        return malformed();
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16(h[2], h[3]) as usize;
    if ihl < 20 || total < ihl || off + total > ctx.len() {
        return malformed();
    }
    let proto = h[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return pass(Counter::PassedNotTcpUdp);
    }
    let frag_off = be16(h[6], h[7]) & 0x1fff;
    if frag_off != 0 {
        return non_first_fragment(proto, frag_off);
    }
    transport(ctx, off, off + ihl, total - ihl, proto, FAMILY_V4)
}

/// `units8`: the fragment offset in 8-byte units.
#[inline(always)]
fn non_first_fragment(proto: u8, units8: u16) -> Verdict {
    if proto == IPPROTO_TCP && units8 == 1 {
        Verdict::Decided(xdp_action::XDP_DROP, Counter::DroppedTinyFragment)
    } else {
        pass(Counter::PassedFragment)
    }
}

#[inline(always)]
fn ipv6<C: Pkt>(ctx: &C, off: usize) -> Verdict {
    let Some(h) = load::<[u8; 40]>(ctx, off) else {
        return malformed();
    };
    if h[0] >> 4 != 6 {
        return malformed();
    }
    let payload = be16(h[4], h[5]) as usize;
    // A jumbogram (payload length 0 with a hop-by-hop jumbo option) fails the extension
    // walk below: its headers cannot fit in a zero-length payload. No management protocol
    // needs one.
    if off + 40 + payload > ctx.len() {
        return malformed();
    }
    let mut next = h[6];
    let mut l4 = off + 40;
    let mut remaining = payload;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => {
                return transport(ctx, off, l4, remaining, next, FAMILY_V6);
            }
            // Hop-by-hop, routing, destination options, AH.
            0 | 43 | 60 | 51 => {
                let Some(e) = load::<[u8; 2]>(ctx, l4) else {
                    return malformed();
                };
                let len = if next == 51 {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                };
                if len > remaining {
                    return malformed();
                }
                next = e[0];
                l4 += len;
                remaining -= len;
            }
            // Fragment header.
            44 => {
                let Some(e) = load::<[u8; 8]>(ctx, l4) else {
                    return malformed();
                };
                if remaining < 8 {
                    return malformed();
                }
                let units8 = be16(e[2], e[3]) >> 3;
                if units8 != 0 {
                    return non_first_fragment(e[0], units8);
                }
                next = e[0];
                l4 += 8;
                remaining -= 8;
            }
            _ => return pass(Counter::PassedNotTcpUdp),
        }
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP => transport(ctx, off, l4, remaining, next, FAMILY_V6),
        0 | 43 | 44 | 51 | 60 => Verdict::Decided(xdp_action::XDP_DROP, Counter::DroppedExtChain),
        _ => pass(Counter::PassedNotTcpUdp),
    }
}

/// `l4_len`: bytes of transport header and payload as the IP header declares them.
#[inline(always)]
fn transport<C: Pkt>(
    ctx: &C,
    l3: usize,
    l4: usize,
    l4_len: usize,
    proto: u8,
    family: u8,
) -> Verdict {
    if proto == IPPROTO_TCP {
        let Some(t) = load::<[u8; 20]>(ctx, l4) else {
            return malformed();
        };
        if l4_len < 20 || t[12] >> 4 < 5 {
            return malformed();
        }
        let flags = t[13];
        Verdict::Inspect(Parsed {
            family,
            proto,
            tcp_syn: flags & 0x02 != 0 && flags & 0x10 == 0,
            tcp_seq: u32::from_ne_bytes([t[4], t[5], t[6], t[7]]),
            sport: be16(t[0], t[1]),
            dport: be16(t[2], t[3]),
            l3,
        })
    } else {
        let Some(u) = load::<[u8; 8]>(ctx, l4) else {
            return malformed();
        };
        if l4_len < 8 {
            return malformed();
        }
        Verdict::Inspect(Parsed {
            family,
            proto,
            tcp_syn: false,
            tcp_seq: 0,
            sport: be16(u[0], u[1]),
            dport: be16(u[2], u[3]),
            l3,
        })
    }
}
