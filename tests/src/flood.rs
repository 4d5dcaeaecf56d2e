//! SYN-flood generator and rule-set rendering for `cargo xtask bench flood`.
//!
//! Frames are built once (Ethernet + IPv4/IPv6 + TCP SYN, valid IP and TCP checksums, so the
//! nftables and iptables receivers see packets the stack would accept up to their hook) and
//! sent with `sendmmsg` on an AF_PACKET socket: one syscall per batch and no per-packet work
//! in user space, so the sending CPU spends its time in the kernel's send and receive paths.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;

/// The i-th flood source: even i from 198.18.0.0/16, odd i from 2001:db8:ffff::/48. Never
/// granted (grants use 198.19.0.0/16 and 2001:db8:eeee::/48).
pub fn flood_source(i: u32) -> IpAddr {
    let n = i / 2;
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (n & 0xffff)))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_ffff_u128 << 80) | u128::from(n),
        ))
    }
}

/// The i-th granted address that never sends (written into sets, maps and rules only):
/// 198.19.0.0/16 for the first 65 535 IPv4 ones, then 10.0.0.0/8 (only ever a map key, as in
/// the scale benchmark: no packet goes there).
pub fn idle_grant(v6: bool, i: u32) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_eeee_u128 << 80) | u128::from(i + 1),
        ))
    } else if i < 0xffff {
        IpAddr::V4(Ipv4Addr::from(0xc613_0000 + i + 1))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i - 0xffff)))
    }
}

/// Layer-2 and layer-3 endpoints of the link the flood crosses.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst_v4: Ipv4Addr,
    pub dst_v6: Ipv6Addr,
}

/// One's-complement sum over `data` (big-endian 16-bit words), not yet folded.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum (RFC 1071) of `data` plus a pre-summed pseudo-header.
pub fn checksum(data: &[u8], pseudo: u32) -> u16 {
    fold(sum16(data, pseudo))
}

/// A TCP SYN from `src:sport` to `dport` on the link's receiver, with valid checksums.
pub fn syn_frame(link: &Link, src: IpAddr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut f = Vec::with_capacity(74);
    f.extend_from_slice(&link.dst_mac);
    f.extend_from_slice(&link.src_mac);
    match src {
        IpAddr::V4(s) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let d = link.dst_v4;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let pseudo = sum16(&s.octets(), sum16(&d.octets(), 6 + 20));
            let c = checksum(&tcp, pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        IpAddr::V6(s) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let d = link.dst_v6;
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            let pseudo = sum16(&s.octets(), sum16(&d.octets(), 6 + 20));
            let c = checksum(&tcp, pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
    }
    f.extend_from_slice(&tcp);
    f
}

/// `n` flood frames (rounded up to a whole batch) from distinct sources, alternating IPv4
/// and IPv6, to port 22.
pub fn flood_frames(link: &Link, n: usize) -> Vec<Vec<u8>> {
    let n = n.div_ceil(BATCH) * BATCH;
    (0..n as u32)
        .map(|i| {
            let sport = 1024 + (i.wrapping_mul(7919) % 60000) as u16;
            syn_frame(
                link,
                flood_source(i),
                sport,
                22,
                i.wrapping_mul(2_654_435_761),
            )
        })
        .collect()
}

/// An AF_PACKET socket bound to one interface of the calling thread's network namespace.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket on `iface`; call from a thread inside the interface's namespace (the
    /// socket stays bound to it afterwards, from any thread).
    pub fn open(iface: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: send only, never receive (no copy of every frame on the way in).
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given length.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Sends `frames` with one `sendmmsg`; returns how many the kernel took. A frame the
    /// receiver's queue refused (ENOBUFS) ends the batch and is not counted.
    pub fn send_batch(&self, frames: &[Vec<u8>]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: msghdr is plain data; zero is valid (no name, no control).
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = v;
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: msgs points at len valid mmsghdrs whose iovecs point into `frames`, which
        // outlive the call.
        let n =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// What one flood window did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodStats {
    /// Frames the kernel accepted (handed to the receiving veth).
    pub sent: u64,
    /// Frames refused (receiver queue full), retried in later batches.
    pub refused: u64,
    pub elapsed: Duration,
}

/// Sends `frames` round-robin in batches until `duration` has passed or `max` frames were
/// sent, whichever is first.
pub fn flood(
    sock: &PacketSocket,
    frames: &[Vec<u8>],
    duration: Duration,
    max: u64,
) -> io::Result<FloodStats> {
    let start = Instant::now();
    let mut st = FloodStats::default();
    let batches: Vec<&[Vec<u8>]> = frames.chunks(BATCH).collect();
    if batches.is_empty() {
        return Ok(st);
    }
    let mut k = 0usize;
    while st.sent < max {
        let b = batches[k % batches.len()];
        k += 1;
        let n = sock.send_batch(b)?;
        st.sent += n as u64;
        st.refused += (b.len() - n) as u64;
        // Check the clock once per 16 batches (1024 frames): cheap next to the sends.
        if k.is_multiple_of(16) && start.elapsed() >= duration {
            break;
        }
    }
    st.elapsed = start.elapsed();
    Ok(st)
}

/// The committed rule-set templates (bench/flood/), rendered with a grant list.
pub mod rules {
    use std::net::IpAddr;

    pub const NFT_INET: &str = include_str!("../../bench/flood/nft-inet.nft.in");
    pub const NFT_NETDEV: &str = include_str!("../../bench/flood/nft-netdev.nft.in");
    pub const NFT_DROP_ALL: &str = include_str!("../../bench/flood/nft-netdev-drop-all.nft.in");
    pub const IPTABLES: &str = include_str!("../../bench/flood/iptables.rules.in");
    pub const IP6TABLES: &str = include_str!("../../bench/flood/ip6tables.rules.in");

    /// How long the rendered nftables elements live (the grants' duration).
    pub const TIMEOUT: &str = "4h";

    fn elements(grants: &[IpAddr], v6: bool) -> String {
        grants
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| format!("{a} . 22 timeout {TIMEOUT}"))
            .collect::<Vec<_>>()
            .join(",\n\t\t\t")
    }

    /// nftables ruleset for the `inet` input hook.
    pub fn nft_inet(grants: &[IpAddr]) -> String {
        NFT_INET
            .replace("@GRANTS4@", &elements(grants, false))
            .replace("@GRANTS6@", &elements(grants, true))
    }

    /// nftables ruleset for the `netdev` ingress hook on `dev`.
    pub fn nft_netdev(grants: &[IpAddr], dev: &str) -> String {
        NFT_NETDEV
            .replace("@GRANTS4@", &elements(grants, false))
            .replace("@GRANTS6@", &elements(grants, true))
            .replace("@DEV@", dev)
    }

    /// nftables ruleset dropping everything at netdev ingress on `dev` (the skb-path floor).
    pub fn nft_drop_all(dev: &str) -> String {
        NFT_DROP_ALL.replace("@DEV@", dev)
    }

    /// iptables-restore (or ip6tables-restore, `v6`) input: one rule per grant of that family.
    pub fn iptables(grants: &[IpAddr], v6: bool) -> String {
        let lines = grants
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(|a| format!("-A INPUT -s {a} -p tcp -m tcp --dport 22 -j ACCEPT"))
            .collect::<Vec<_>>()
            .join("\n");
        let t = if v6 { IP6TABLES } else { IPTABLES };
        t.replace("@RULES@", &lines)
    }
}
